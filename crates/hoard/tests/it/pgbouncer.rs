//! A private PgBouncer in transaction mode in front of the test PostgreSQL, for the tests (and
//! the conformance suite) that run hoard through a transaction-mode pooler.
//!
//! Invariant: each `Pgbouncer` is its own process on its own loopback port with its own folder,
//! killed (by its pid file, since `runuser` may sit between) and removed when dropped, so a
//! failed test leaves no pooler running. `pool_mode = transaction` with a small pool, so that
//! consecutive transactions of one client really land on different server connections.
//! PgBouncer refuses to run as root: as root (CI) it runs as `postgres` through `runuser`. A
//! missing `pgbouncer` binary fails the test with what to do (the PostgreSQL rule of `backends`).

#![allow(dead_code)] // the server's tests include this file and may use part of it

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pg_cluster::{free_port, running_as_root};

/// How long PgBouncer may take to listen before the test fails.
pub const PGBOUNCER_START_TIMEOUT_MS: u64 = 10_000;

/// Server connections PgBouncer keeps per database and user: fewer than hoard's pool, so client
/// connections share server connections and transactions move between them.
pub const PGBOUNCER_SERVER_CONNECTIONS: u32 = 4;

#[derive(Debug)]
pub struct Pgbouncer {
    folder: tempfile::TempDir,
    child: Child,
    port: u16,
    user: String,
    database: String,
}

fn pgbouncer_binary() -> PathBuf {
    let candidates = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"];
    match candidates.iter().map(PathBuf::from).find(|path| path.exists()) {
        Some(path) => path,
        None => panic!(
            "pgbouncer not found (looked in {candidates:?}): install it (Debian: apt-get install pgbouncer; \
             .ci/run does), or opt out of PostgreSQL tests with HOARD_TEST_POSTGRES_URL=skip"
        ),
    }
}

impl Pgbouncer {
    /// A transaction-mode PgBouncer in front of the server `postgres_url` points at.
    pub fn start_in_front_of(postgres_url: &str) -> Pgbouncer {
        let config: tokio_postgres::Config = postgres_url.parse().expect("the test PostgreSQL URL parses");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            other => panic!("the pooler tests need a TCP host in HOARD_TEST_POSTGRES_URL, not {other:?}"),
        };
        let server_port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_string();
        let database = config.get_dbname().unwrap_or(&user).to_string();
        let folder = tempfile::Builder::new().prefix("hoard-pgbouncer-").tempdir().expect("temporary folder");
        let port = free_port();
        let path = |name: &str| folder.path().join(name).to_str().expect("temporary paths are UTF-8").to_string();
        std::fs::write(path("userlist.txt"), format!("\"{user}\" \"\"\n")).expect("write userlist");
        let ini = format!(
            "[databases]\n\
             * = host={host} port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {userlist}\n\
             pool_mode = transaction\n\
             default_pool_size = {PGBOUNCER_SERVER_CONNECTIONS}\n\
             max_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            userlist = path("userlist.txt"),
            log = path("pgbouncer.log"),
            pid = path("pgbouncer.pid"),
        );
        std::fs::write(path("pgbouncer.ini"), ini).expect("write pgbouncer.ini");
        let mut command = if running_as_root() {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(folder.path()).status().expect("run chown");
            assert!(status.success(), "chown the pgbouncer folder to postgres");
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(pgbouncer_binary());
            command
        } else {
            Command::new(pgbouncer_binary())
        };
        let child = command
            .arg(path("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("start pgbouncer: {error}"));
        let pooler = Pgbouncer { folder, child, port, user, database };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_millis(PGBOUNCER_START_TIMEOUT_MS),
                "pgbouncer did not listen on {port} within {PGBOUNCER_START_TIMEOUT_MS} ms; its log: {}",
                pooler.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pooler
    }

    /// A URL that connects through the pooler to the same database and user.
    pub fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:{}/{}", self.user, self.port, self.database)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.folder.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
