//! Standard output and standard error of the `hoard` command.
//!
//! Invariant: nothing the command prints can panic. Rust ignores SIGPIPE, so a reader that went
//! away (`hoard history … | head`) turns every later write into an `EPIPE` error, which `println!`
//! turns into a panic; here it becomes `StandardOutputClosed`, which `main` ends the command on,
//! quietly and with the outcome the command already had (the reader chose to stop reading, and
//! whatever the command did is done).

use std::io::Write;

/// The reader of standard output went away (a closed pipe): the command ends quietly.
#[derive(Debug)]
pub struct StandardOutputClosed;

impl std::fmt::Display for StandardOutputClosed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for StandardOutputClosed {}

/// Writes `text` to standard output and flushes it. A closed pipe is `StandardOutputClosed`;
/// any other failure (a full disk behind a redirection) is an error that says so.
pub fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(StandardOutputClosed.into()),
        Err(error) => Err(anyhow::Error::new(error).context("cannot write to standard output")),
    }
}

/// Writes one line to standard error. A closed standard error has nowhere left to report to, so
/// a failure is dropped here by design.
pub fn print_stderr(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// True when `error` is (or was caused by) a closed standard output.
pub fn is_standard_output_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<StandardOutputClosed>())
}

/// `location` for messages: a PostgreSQL URL's password is replaced by `***` (in the user part
/// and in a `password=` parameter), so errors and `status` never print it.
pub fn redacted_location(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else { return location.to_string() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{hosts}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|parameter| match parameter.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
                    _ => parameter.to_string(),
                })
                .collect();
            format!("{path}?{}", parameters.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}
