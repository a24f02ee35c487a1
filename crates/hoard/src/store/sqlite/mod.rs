//! The SQLite backend: the embedded default store, one file on one machine, shared safely by
//! every process that opens it.
//!
//! Invariant: all writes of this process go through one writer thread (`writer`) that owns the
//! only write connection and group-commits them with `BEGIN IMMEDIATE` (so other processes are
//! excluded by SQLite's write lock and wait up to `busy_timeout_ms`); reads go through a pool of
//! read-only connections (`reads`); conditions and new states come from `store::apply` only.
//! Every commit is validated (`validate_commit`) before it is queued, so the writer only ever
//! sees commits that can fail by a condition or by the database.
//!
//! Opening never harms a file that is not hoard's: `identify` tells what the file is first, and
//! another application's SQLite file (or a file that is not SQLite) is refused untouched; with
//! `must_exist`, so is a missing or empty one.
//!
//! Files: `identify` (what a file is), `connection` (pragmas, error texts), `schema` +
//! `schema_v*.sql` (migrations), `rows` (docs rows), `history` (superseded versions: deltas,
//! rebuilds, pruning), `writer` (group commit), `reads` (read pool and queries), `notifications`
//! (poller), `clock`.

mod clock;
mod connection;
mod history;
mod identify;
mod indexes;
mod notifications;
mod reads;
mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, oneshot};

use self::connection::{ConnectionSettings, open_read_connection, open_write_connection};
use self::reads::ReadPool;
use self::writer::{WriteRequest, WriterContext, WriterStats};
use crate::store::encoded::EncodedCommit;
use crate::store::limits::{HistoryPolicy, Limits};
use crate::store::types::{
    Commit, CommitOutcome, DocId, Document, HolderId, HolderLease, KeyPage, ListQuery, Notification, StoreName,
    VersionInfo, VersionQuery, VersionRecord,
};
use crate::store::validate::{validate_doc_id, validate_notification};
use crate::store::{GroupCommitStats, NOTIFICATION_CHANNEL_CAPACITY, PrunedPage, Store, StoreError, Subscription};

pub(crate) use self::connection::describe_error;
pub use self::identify::HOARD_SQLITE_APPLICATION_ID;
pub use self::schema::SCHEMA_VERSION_LATEST as SQLITE_SCHEMA_VERSION;

/// How hard SQLite pushes each commit to the disk (`PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// The WAL is fsynced at every COMMIT: an acknowledged commit survives a power loss.
    #[default]
    Full,
    /// The WAL is fsynced only at checkpoints: survives a process crash, but a power loss or OS
    /// crash may lose the last acknowledged commits (the file stays consistent).
    Normal,
}

/// Default for `SqliteOptions::busy_timeout_ms`.
pub const BUSY_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default for `SqliteOptions::read_connections`.
pub const READ_CONNECTIONS_DEFAULT: usize = 4;
/// Default for `SqliteOptions::commit_queue_depth_max`.
pub const COMMIT_QUEUE_DEPTH_MAX_DEFAULT: usize = 10_000;
/// Default for `SqliteOptions::group_commit_max_commits`.
pub const GROUP_COMMIT_MAX_COMMITS_DEFAULT: usize = 256;
/// Default for `SqliteOptions::notification_poll_interval_ms`.
pub const NOTIFICATION_POLL_INTERVAL_MS_DEFAULT: u64 = 25;
/// Default for `SqliteOptions::notification_retention_ms`.
pub const NOTIFICATION_RETENTION_MS_DEFAULT: i64 = 60_000;
/// Default for `SqliteOptions::wal_autocheckpoint_pages` (SQLite's own default).
pub const WAL_AUTOCHECKPOINT_PAGES_DEFAULT: u32 = 1_000;

#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file; it and its parent folders are created when missing (unless
    /// `must_exist`). A file that is not a hoard database is refused, never changed.
    pub path: PathBuf,
    /// Refuse a missing or empty file instead of creating a database (operators' reads: a typo
    /// in a path must not conjure an empty database that answers "not found").
    pub must_exist: bool,
    pub limits: Limits,
    pub history_policy: HistoryPolicy,
    pub synchronous: SqliteSynchronous,
    /// How long to wait for another process's write lock before answering `Unavailable`.
    pub busy_timeout_ms: u64,
    /// Read-only connections reads run on at once.
    pub read_connections: usize,
    /// Write requests waiting for the writer thread; when the queue is full, callers wait (their
    /// future stays pending) until the writer frees a place: back-pressure, never a drop.
    pub commit_queue_depth_max: usize,
    /// Most write requests carried by one SQLite transaction (one fsync).
    pub group_commit_max_commits: usize,
    /// Pause between two polls of the notifications table.
    pub notification_poll_interval_ms: u64,
    /// Notifications older than this are deleted; a process paused longer may miss some.
    pub notification_retention_ms: i64,
    /// `PRAGMA wal_autocheckpoint`: WAL pages after which SQLite checkpoints.
    pub wal_autocheckpoint_pages: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            path: PathBuf::from("hoard-data/hoard.sqlite3"),
            must_exist: false,
            limits: Limits::default(),
            history_policy: HistoryPolicy::default(),
            synchronous: SqliteSynchronous::Full,
            busy_timeout_ms: BUSY_TIMEOUT_MS_DEFAULT,
            read_connections: READ_CONNECTIONS_DEFAULT,
            commit_queue_depth_max: COMMIT_QUEUE_DEPTH_MAX_DEFAULT,
            group_commit_max_commits: GROUP_COMMIT_MAX_COMMITS_DEFAULT,
            notification_poll_interval_ms: NOTIFICATION_POLL_INTERVAL_MS_DEFAULT,
            notification_retention_ms: NOTIFICATION_RETENTION_MS_DEFAULT,
            wal_autocheckpoint_pages: WAL_AUTOCHECKPOINT_PAGES_DEFAULT,
        }
    }
}

/// The store on one SQLite file. Dropping it lets the writer thread finish and answer everything
/// already queued, then close; `close` does the same and waits for it.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    limits: Limits,
    /// `None` once closed. Callers clone the sender, so an in-flight send finishes after a close.
    write_queue: Mutex<Option<mpsc::Sender<WriteRequest>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    writer_stats: Arc<WriterStats>,
    reads: Arc<ReadPool>,
    notifications: broadcast::Sender<Notification>,
    /// Dropping it stops the poller thread at once.
    poller_stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    poller_thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // These mutexes guard handles only (no invariant spans a panic), so a poisoned one is usable.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn create_parent_folder(path: &Path) -> Result<(), StoreError> {
    let Some(folder) = path.parent().filter(|folder| !folder.as_os_str().is_empty()) else {
        return Ok(());
    };
    std::fs::create_dir_all(folder).map_err(|error| {
        let reason = match error.kind() {
            std::io::ErrorKind::ReadOnlyFilesystem => connection::read_only_file_system(folder),
            std::io::ErrorKind::PermissionDenied => {
                format!("this user may not create it ({error}): choose a folder it may write, or change permissions")
            }
            _ => error.to_string(),
        };
        StoreError::unavailable(format!(
            "cannot create the folder {} for the SQLite file {}: {reason}",
            folder.display(),
            path.display()
        ))
    })
}

/// What `open` prepares off the async threads.
struct Opened {
    write_connection: rusqlite::Connection,
    poll_connection: rusqlite::Connection,
    largest_notification_id: i64,
}

fn open_blocking(path: &Path, settings: &ConnectionSettings, must_exist: bool) -> Result<Opened, StoreError> {
    let kind = identify::identify(path)?;
    if let Some(refusal) = identify::refusal(path, &kind) {
        return Err(refusal);
    }
    if must_exist && let Some(refusal) = identify::missing_refusal(path, &kind) {
        return Err(refusal);
    }
    if kind == identify::FileKind::Missing {
        create_parent_folder(path)?;
    }
    let write_connection = open_write_connection(path, settings)?;
    if kind != (identify::FileKind::Hoard { application_id_stamped: true }) {
        connection::stamp_application_id(path, &write_connection)?;
    }
    schema::migrate(&write_connection)?;
    let poll_connection = open_read_connection(path, settings)?;
    let largest_notification_id = notifications::largest_notification_id(&poll_connection)?;
    Ok(Opened { write_connection, poll_connection, largest_notification_id })
}

impl SqliteStore {
    /// Opens (creating if needed, unless `must_exist`) the file, applies migrations, and starts
    /// the writer thread and the notification poller. A file that is not a hoard database is
    /// refused with `StoreError::WrongDatabase` and left as it was. Must be called inside a tokio
    /// runtime.
    pub async fn open(options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        options.history_policy.check()?;
        let settings = ConnectionSettings {
            busy_timeout_ms: options.busy_timeout_ms,
            synchronous: options.synchronous,
            wal_autocheckpoint_pages: options.wal_autocheckpoint_pages,
        };
        let path = options.path.clone();
        let open_settings = settings.clone();
        let must_exist = options.must_exist;
        let opened = tokio::task::spawn_blocking(move || open_blocking(&path, &open_settings, must_exist))
            .await
            .map_err(|error| StoreError::unavailable(format!("opening the SQLite store failed: {error}")))??;

        let (write_queue, write_receiver) = mpsc::channel(options.commit_queue_depth_max.max(1));
        let writer_stats = Arc::new(WriterStats::default());
        let context = WriterContext {
            limits: options.limits.clone(),
            history_policy: options.history_policy.clone(),
            group_commit_max_commits: options.group_commit_max_commits,
            notification_retention_ms: options.notification_retention_ms,
            stats: Arc::clone(&writer_stats),
        };
        let write_connection = opened.write_connection;
        let writer_thread = std::thread::Builder::new()
            .name("hoard-sqlite-writer".into())
            .spawn(move || writer::run_writer(write_connection, write_receiver, context))
            .map_err(|error| StoreError::unavailable(format!("cannot start the SQLite writer thread: {error}")))?;

        let (notifications, _) = broadcast::channel(NOTIFICATION_CHANNEL_CAPACITY);
        let (poller_stop, poller_stop_receiver) = std::sync::mpsc::channel();
        let poll_interval = Duration::from_millis(options.notification_poll_interval_ms.max(1));
        let poll_connection = opened.poll_connection;
        let largest_notification_id = opened.largest_notification_id;
        let subscribers = notifications.clone();
        let poller_thread = std::thread::Builder::new()
            .name("hoard-sqlite-notifications".into())
            .spawn(move || {
                notifications::run_poller(
                    poll_connection,
                    largest_notification_id,
                    poll_interval,
                    poller_stop_receiver,
                    subscribers,
                )
            })
            .map_err(|error| {
                StoreError::unavailable(format!("cannot start the SQLite notification thread: {error}"))
            })?;

        Ok(SqliteStore {
            reads: Arc::new(ReadPool::new(options.path.clone(), settings, options.read_connections)),
            path: options.path,
            limits: options.limits,
            write_queue: Mutex::new(Some(write_queue)),
            writer_thread: Mutex::new(Some(writer_thread)),
            writer_stats,
            notifications,
            poller_stop: Mutex::new(Some(poller_stop)),
            poller_thread: Mutex::new(Some(poller_thread)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's schema version (see `SQLITE_SCHEMA_VERSION`).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        self.reads.read(schema::schema_version).await
    }

    /// Stops accepting writes, waits until the writer has written and answered everything queued
    /// before, and stops the notification poller. Later calls answer `StoreError::Closed`.
    pub async fn close(&self) {
        lock(&self.write_queue).take();
        lock(&self.poller_stop).take();
        let writer_thread = lock(&self.writer_thread).take();
        let poller_thread = lock(&self.poller_thread).take();
        // Joining blocks, so it happens off the async threads. A panicked thread has nothing left
        // to report: every request it held was answered or sees its reply dropped.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(thread) = writer_thread {
                let _ = thread.join();
            }
            if let Some(thread) = poller_thread {
                let _ = thread.join();
            }
        })
        .await;
    }

    /// Sends a request to the writer thread and waits for its answer.
    async fn write<T>(&self, request: impl FnOnce(writer::Reply<T>) -> WriteRequest) -> Result<T, StoreError> {
        let sender = lock(&self.write_queue).clone().ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        // A full queue makes this wait (back-pressure); a closed one means the writer is gone and
        // the request was never queued.
        sender.send(request(reply)).await.map_err(|_| StoreError::Closed)?;
        drop(sender);
        // The writer dropped the reply without answering only if it died mid-batch, possibly
        // after COMMIT: the request may have applied.
        answer.await.map_err(|_| StoreError::outcome_unknown("the SQLite writer thread stopped before answering"))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Dropping the senders is enough: the writer drains the queue (every queued request is
        // written and answered) and then ends; the poller ends at once. Not joined here, so a
        // drop never blocks an async thread; use `close` to wait.
        lock(&self.write_queue).take();
        lock(&self.poller_stop).take();
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend_name(&self) -> &'static str {
        "sqlite"
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn now_ms(&self) -> Result<i64, StoreError> {
        Ok(clock::now_ms())
    }

    async fn get_many(&self, ids: &[DocId]) -> Result<Vec<Document>, StoreError> {
        for id in ids {
            validate_doc_id(id, &self.limits)?;
        }
        let ids = ids.to_vec();
        let limits = self.limits.clone();
        self.reads.read(move |connection| reads::get_many(connection, &ids, &limits)).await
    }

    async fn list_keys(&self, store: &StoreName, query: &ListQuery) -> Result<KeyPage, StoreError> {
        let (store, query, limits) = (store.clone(), query.clone(), self.limits.clone());
        self.reads.read(move |connection| reads::list_keys(connection, &store, &query, &limits)).await
    }

    async fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError> {
        let mut encoded = EncodedCommit::new(commit, &self.limits)?;
        // The writer judges each commit against rows it reads afresh, and a put never reads the
        // value it replaces, so no put value is needed there: it stores the text.
        encoded.strip_put_values(|_| false);
        self.write(|reply| WriteRequest::Commit { encoded, reply }).await
    }

    async fn list_versions(&self, id: &DocId, query: &VersionQuery) -> Result<Vec<VersionInfo>, StoreError> {
        validate_doc_id(id, &self.limits)?;
        let (id, query, limits) = (id.clone(), query.clone(), self.limits.clone());
        self.reads.read(move |connection| history::list_versions(connection, &id, &query, &limits)).await
    }

    async fn get_version(&self, id: &DocId, version: u64) -> Result<Option<VersionRecord>, StoreError> {
        validate_doc_id(id, &self.limits)?;
        let id = id.clone();
        self.reads.read(move |connection| history::read_version(connection, &id, version)).await
    }

    async fn prune_history(&self) -> Result<u64, StoreError> {
        crate::store::prune_every_page(self).await
    }

    async fn prune_history_page(&self, after: Option<DocId>, rows_max: usize) -> Result<PrunedPage, StoreError> {
        // Transaction by transaction (each at most `PRUNE_HISTORY_ROWS_PER_TRANSACTION` rows, in
        // the writer's group commit), so a large history never holds the write lock for long; see
        // `history::prune_history_page` for the rule.
        let mut cursor = after.map(|id| (id.store.as_str().to_string(), id.key.as_str().to_string()));
        let mut done = PrunedPage::default();
        loop {
            let remaining = usize::try_from(done.rows_examined).map_or(0, |examined| rows_max.saturating_sub(examined));
            let (after, rows_max) = (cursor.clone(), remaining.max(1));
            let page = self.write(|reply| WriteRequest::PruneHistoryPage { after, rows_max, reply }).await?;
            done.pruned += page.pruned;
            done.rows_examined += page.rows_examined;
            cursor = page.next_after;
            let Some((store, key)) = &cursor else {
                done.next_after = None;
                return Ok(done);
            };
            if usize::try_from(done.rows_examined).unwrap_or(usize::MAX) >= rows_max || page.rows_examined == 0 {
                let id = DocId::parse(store, key)
                    .map_err(|error| StoreError::corrupt(format!("history key {store}/{key}: {error}")))?;
                done.next_after = Some(id);
                return Ok(done);
            }
        }
    }

    async fn renew_holder(&self, holder: &HolderId, ttl_ms: u64) -> Result<HolderLease, StoreError> {
        let ttl_ms = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let holder = holder.clone();
        self.write(|reply| WriteRequest::RenewHolder { holder, ttl_ms, reply }).await
    }

    async fn release_holder(&self, holder: &HolderId) -> Result<(), StoreError> {
        let holder = holder.clone();
        self.write(|reply| WriteRequest::ReleaseHolder { holder, reply }).await
    }

    async fn holder_lease(&self, holder: &HolderId) -> Result<Option<HolderLease>, StoreError> {
        let holder = holder.clone();
        self.reads.read(move |connection| reads::holder_lease(connection, &holder)).await
    }

    async fn notify(&self, notification: Notification) -> Result<(), StoreError> {
        validate_notification(&notification, &self.limits)?;
        self.write(|reply| WriteRequest::Notify { notification, reply }).await
    }

    fn subscribe(&self) -> Subscription {
        self.notifications.subscribe()
    }

    fn group_commit_stats(&self) -> Option<GroupCommitStats> {
        Some(self.writer_stats.snapshot())
    }

    fn operator(&self) -> Option<&dyn crate::store::OperatorStore> {
        Some(self)
    }
}
