//! A real `hoard serve` process for this crate's tests: started from the built binary with a
//! clean `HOARD_*` environment, found by the address it prints, its standard error kept so a test
//! can read its logs, and killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long a `hoard serve` may take to say where it listens.
const SERVE_START_WAIT_S: u64 = 60;

/// A running `hoard serve`; killed when dropped.
pub struct Served {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub address: std::net::SocketAddr,
    /// Every line it wrote to standard error so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `hoard serve --listen 127.0.0.1:0 --db DB` in `folder` with only the given `HOARD_*`
    /// variables; panics with its output if it does not start.
    pub fn start(folder: &std::path::Path, db: &str, environment: &[(&str, &str)]) -> Served {
        Served::start_at(folder, db, "127.0.0.1:0", environment)
    }

    /// As `start`, listening on `listen` (a restarted server takes its predecessor's address).
    pub fn start_at(folder: &std::path::Path, db: &str, listen: &str, environment: &[(&str, &str)]) -> Served {
        let mut command = Command::new(env!("CARGO_BIN_EXE_hoard"));
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("HOARD_")) {
            command.env_remove(name);
        }
        // Plain log lines (no colour codes) for the tests that read them.
        command.current_dir(folder).env("NO_COLOR", "1").args(["serve", "--listen", listen, "--db", db]);
        for (name, value) in environment {
            command.env(name, value);
        }
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("start hoard serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (listening, listening_line) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("hoard serve listening on ") {
                    let _ = listening.send(line.clone());
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        let line = match listening_line.recv_timeout(Duration::from_secs(SERVE_START_WAIT_S)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                let printed = log.lock().expect("log lock").join("\n");
                panic!("hoard serve did not start ({status:?}):\n{printed}");
            }
        };
        let url = line
            .trim_start_matches("hoard serve listening on ")
            .split_whitespace()
            .next()
            .expect("an address")
            .to_string();
        let address = url.trim_start_matches("http://").parse().expect("a socket address");
        Served { child, url, address, log }
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits up to `wait` for a log line containing `needle`; returns it.
    pub fn wait_for_log(&self, needle: &str, wait: Duration) -> Option<String> {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log().into_iter().find(|line| line.contains(needle)) {
                return Some(line);
            }
            if started.elapsed() > wait {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `hoard serve` with these arguments and environment and waits for it to exit (it must
/// refuse to start); returns its output, or panics if it is still running after `wait`.
pub fn serve_must_exit(folder: &std::path::Path, args: &[&str], wait: Duration) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hoard"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("HOARD_")) {
        command.env_remove(name);
    }
    let mut child = command
        .current_dir(folder)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hoard serve");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > wait {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "hoard serve {args:?} kept running instead of refusing: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
