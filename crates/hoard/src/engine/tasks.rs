//! The engine's task set: every background task the engine starts is spawned here.
//!
//! Invariants:
//! - Bounded: at most `tasks_max` tasks at once; past it a spawn is refused (`TaskSetFull`) and
//!   the caller counts and logs it. The bound is derived from `sessions_max` (a few tasks per
//!   session, a few per engine), so reaching it means the accounting is wrong, not the load.
//! - Nothing outlives the engine: shutdown and crash abort every task, and so does dropping the
//!   set (tokio's `JoinSet` aborts its tasks on drop).
//! - A task that panicked is logged and counted when it is reaped, never lost.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// Tasks one session may have at once: autosave, its load, its end, a save, a transaction
/// commit and an inbox check.
pub const TASKS_PER_SESSION_MAX: usize = 6;
/// Tasks of the engine itself: lease renewal, listener, interval flush, announcer, lease
/// confirmation, and room for a few short-lived ones.
pub const ENGINE_TASKS_MAX: usize = 64;

/// The set was full (or closed by shutdown or crash): the task was not started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the engine's task set is full ({tasks_max} tasks) or closed; the {what} task was not started")]
pub(crate) struct TaskSetFull {
    what: &'static str,
    tasks_max: usize,
}

#[derive(Debug)]
pub(crate) struct TaskSet {
    // A std mutex: held only to spawn, reap or abort, never across an await.
    tasks: Mutex<JoinSet<()>>,
    tasks_max: usize,
    closed: AtomicBool,
    panicked: AtomicU64,
}

impl TaskSet {
    pub fn for_sessions(sessions_max: usize) -> TaskSet {
        let tasks_max = sessions_max.saturating_mul(TASKS_PER_SESSION_MAX).saturating_add(ENGINE_TASKS_MAX);
        TaskSet {
            tasks: Mutex::new(JoinSet::new()),
            tasks_max,
            closed: AtomicBool::new(false),
            panicked: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, JoinSet<()>> {
        // A panic while holding this lock can only come from tokio itself; the set stays usable.
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops finished tasks, logging and counting any that panicked.
    fn reap(&self, tasks: &mut JoinSet<()>) {
        while let Some(finished) = tasks.try_join_next() {
            if let Err(error) = finished
                && error.is_panic()
            {
                self.panicked.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "an engine task panicked");
            }
        }
    }

    /// Starts `task` unless the set is full or closed.
    pub fn spawn(
        &self,
        what: &'static str,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), TaskSetFull> {
        let mut tasks = self.lock();
        self.reap(&mut tasks);
        if self.closed.load(Ordering::SeqCst) || tasks.len() >= self.tasks_max {
            return Err(TaskSetFull { what, tasks_max: self.tasks_max });
        }
        tasks.spawn(task);
        Ok(())
    }

    /// Starts `task` and returns where its answer arrives. If the caller stops waiting, the task
    /// still runs to its end; if the task is aborted (crash), the receiver sees the sender gone.
    pub fn spawn_answering<T: Send + 'static>(
        &self,
        what: &'static str,
        task: impl Future<Output = T> + Send + 'static,
    ) -> Result<oneshot::Receiver<T>, TaskSetFull> {
        let (answer, answered) = oneshot::channel();
        self.spawn(what, async move {
            // Nobody waiting is fine: the work is done either way.
            let _ = answer.send(task.await);
        })?;
        Ok(answered)
    }

    /// Aborts every task and refuses new ones (shutdown's last step, or a crash).
    pub fn abort_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let mut tasks = self.lock();
        tasks.abort_all();
        self.reap(&mut tasks);
    }

    pub fn panicked(&self) -> u64 {
        self.panicked.load(Ordering::Relaxed)
    }
}
