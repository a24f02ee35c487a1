//! Private PostgreSQL clusters for tests that take the database away: a primary, a streaming
//! standby made from its base backup, crashes (`kill -9` of every server process), restarts and
//! promotion. Each cluster lives in its own temporary folder on its own loopback port, so these
//! tests never touch the machine's shared PostgreSQL.
//!
//! Invariant: a cluster is stopped (immediately) and its folder removed when it is dropped, so a
//! failed test leaves no server running. The PostgreSQL server binaries come from
//! `HOARD_TEST_POSTGRES_BIN` or the newest `/usr/lib/postgresql/<major>/bin`. These tests follow
//! the workspace's PostgreSQL rule (`backends`): never green without PostgreSQL — missing binaries
//! fail the test with what to do — and ignored under the explicit opt-out
//! `HOARD_TEST_POSTGRES_URL=skip` (`cfg(hoard_postgres_tests_skipped)`).
//!
//! As root (CI), every command runs as the `postgres` user through `runuser`: `initdb` refuses to
//! run as root.

#![allow(dead_code)] // the server's tests include this file and use part of it

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a cluster may take to start, stop or promote before the test fails.
pub const CLUSTER_STEP_TIMEOUT_MS: u64 = 60_000;

/// One private PostgreSQL server.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    folder: tempfile::TempDir,
    /// The data directory (`<folder>/data`), as text for argument lists.
    data: String,
    port: u16,
    name: String,
}

/// Where the server binaries are, or why a test must skip.
pub fn server_binaries() -> Option<PathBuf> {
    if let Ok(bin) = std::env::var("HOARD_TEST_POSTGRES_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

/// The binaries; their absence fails the test with what to do (the PostgreSQL rule).
pub fn binaries_or_skip(test: &str) -> Option<PathBuf> {
    match server_binaries() {
        Some(bin) => Some(bin),
        None => panic!(
            "{test}: PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql, set \
             HOARD_TEST_POSTGRES_BIN, or opt out of PostgreSQL tests with HOARD_TEST_POSTGRES_URL=skip"
        ),
    }
}

pub fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl PrivateCluster {
    /// `initdb`, configured for streaming replication and started.
    pub fn start_primary(bin: &Path, name: &str) -> PrivateCluster {
        let cluster = PrivateCluster::empty(bin, name);
        cluster
            .run_checked("initdb", &["-D", &cluster.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
        cluster.append_config(&[
            "wal_level = replica",
            "max_wal_senders = 8",
            "hot_standby = on",
            "fsync = on",
            "synchronous_commit = on",
            "max_connections = 100",
        ]);
        // Replication connections from loopback, without a password (as the rest of the file).
        std::fs::write(
            cluster.folder.path().join("data/pg_hba.conf"),
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\nlocal replication all trust\n",
        )
        .expect("write pg_hba.conf");
        cluster.start();
        cluster
    }

    /// A hot standby streaming from `primary` under `application_name = name`, started.
    pub fn start_standby_of(primary: &PrivateCluster, name: &str) -> PrivateCluster {
        let cluster = PrivateCluster::empty(&primary.bin, name);
        let primary_port = primary.port.to_string();
        cluster.run_checked(
            "pg_basebackup",
            &["-D", &cluster.data, "-h", "127.0.0.1", "-p", &primary_port, "-U", "postgres", "-X", "stream", "-R"],
        );
        cluster.append_config(&[&format!(
            "primary_conninfo = 'host=127.0.0.1 port={primary_port} user=postgres application_name={name}'"
        )]);
        cluster.start();
        cluster
    }

    fn empty(bin: &Path, name: &str) -> PrivateCluster {
        let folder = tempfile::Builder::new().prefix(&format!("hoard-pg-{name}-")).tempdir().expect("temporary folder");
        std::fs::create_dir(folder.path().join("data")).expect("data folder");
        // The server refuses a data directory others can read (pg_basebackup keeps the mode).
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(folder.path().join("data"), std::fs::Permissions::from_mode(0o700))
            .expect("data folder mode");
        if running_as_root() {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(folder.path()).status().expect("run chown");
            assert!(status.success(), "chown the cluster folder to postgres");
        }
        let data = folder.path().join("data").to_str().expect("temporary paths are UTF-8").to_string();
        PrivateCluster { bin: bin.to_path_buf(), folder, data, port: free_port(), name: name.to_string() }
    }

    fn data(&self) -> &str {
        &self.data
    }

    fn append_config(&self, lines: &[&str]) {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.folder.path().join("data/postgresql.auto.conf"))
            .expect("open postgresql.auto.conf");
        for line in lines {
            writeln!(file, "{line}").expect("append configuration");
        }
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.args(args);
        command
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program, args).output().unwrap_or_else(|error| panic!("run {program}: {error}"))
    }

    fn run_checked(&self, program: &str, args: &[&str]) {
        let output = self.run(program, args);
        assert!(
            output.status.success(),
            "{program} {args:?} failed for cluster {}: {}{}",
            self.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` for a connection URL.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A URL to this cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.folder.path().display());
        let log = self.folder.path().join("server.log");
        let log = log.to_str().expect("UTF-8 path");
        let timeout = (CLUSTER_STEP_TIMEOUT_MS / 1_000).to_string();
        let output = self.run("pg_ctl", &["-D", self.data(), "-o", &options, "-l", log, "-w", "-t", &timeout, "start"]);
        assert!(
            output.status.success(),
            "cluster {} did not start: {}\nserver log:\n{}",
            self.name,
            String::from_utf8_lossy(&output.stdout),
            self.log()
        );
    }

    /// A crash: every server process is stopped at once with no checkpoint (`-m immediate`, the
    /// same effect on disk as `kill -9` of the postmaster and its children).
    pub fn crash(&self) {
        self.run_checked("pg_ctl", &["-D", self.data(), "-m", "immediate", "-w", "stop"]);
    }

    /// A clean stop (checkpoint, then exit), as an operator's restart does.
    pub fn stop(&self) {
        self.run_checked("pg_ctl", &["-D", self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Promotes a standby to primary and waits until it accepts writes.
    pub fn promote(&self) {
        let timeout = (CLUSTER_STEP_TIMEOUT_MS / 1_000).to_string();
        self.run_checked("pg_ctl", &["-D", self.data(), "-w", "-t", &timeout, "promote"]);
    }

    /// Runs SQL on this cluster's `postgres` database with psql; returns its unaligned output.
    pub fn sql(&self, statement: &str) -> String {
        let port = self.port.to_string();
        let output = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                statement,
            ],
        );
        assert!(
            output.status.success(),
            "psql {statement:?} on {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Makes `standby_name` the synchronous standby: a commit is acknowledged only once that
    /// standby has flushed its WAL. Waits until the standby is streaming as `sync`.
    pub fn require_synchronous_standby(&self, standby_name: &str) {
        self.sql(&format!("ALTER SYSTEM SET synchronous_standby_names = '{standby_name}'"));
        self.sql("SELECT pg_reload_conf()");
        self.wait_for_replication_state(standby_name, "sync");
    }

    /// Waits until `standby_name` streams with `sync_state = state` (`sync` or `async`).
    pub fn wait_for_replication_state(&self, standby_name: &str, state: &str) {
        let started = Instant::now();
        loop {
            let found = self.sql(&format!(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{standby_name}' AND state = 'streaming'"
            ));
            if found == state {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_millis(CLUSTER_STEP_TIMEOUT_MS),
                "standby {standby_name} never reached sync_state {state} (last: {found:?})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Best effort: the server may already be stopped.
        let _ = self.run("pg_ctl", &["-D", self.data(), "-m", "immediate", "-w", "stop"]);
    }
}
