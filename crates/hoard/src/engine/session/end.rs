//! Ending a session: the final save that also releases the key, then the announcement.
//!
//! Invariants:
//! - A session counts as closing from the call of `end` on, synchronously, so a start of the
//!   same key that comes after it waits for the final save instead of joining a session about
//!   to end (Nevermore's trap).
//! - The final save runs in an engine task: dropping the caller's future cannot leave the
//!   session half closed.
//! - On failure the session is `Active` again (and dirty), so nothing acknowledged to the game is
//!   dropped; the caller (or shutdown) may try again.

use std::sync::Arc;

use super::super::counters::Counter;
use super::super::error::SessionError;
use super::{Profile, SaveKind, SessionCore, SessionEvent, SessionStatus};

impl<P: Profile> SessionCore<P> {
    /// Marks the session closing, at once. Returns whether a final save is needed.
    fn begin_end(&self) -> Result<bool, SessionError> {
        let mut state = self.lock();
        match &state.status {
            SessionStatus::Active => {
                state.status = SessionStatus::Closing;
                Ok(true)
            }
            SessionStatus::Errored { .. } => {
                state.status = SessionStatus::Ended;
                drop(state);
                self.finish(false);
                Ok(false)
            }
            SessionStatus::Closing | SessionStatus::Ended => Err(SessionError::Ended),
            SessionStatus::FencedOut => Err(SessionError::FencedOut),
            SessionStatus::HandedOff => Err(SessionError::HandedOff),
            SessionStatus::LeaseLapsed => unreachable!("LeaseLapsed is reported, never stored"),
        }
    }

    /// The final save and release, in the key's write turn.
    async fn complete_end(self: &Arc<Self>, handed_off: bool) -> Result<(), SessionError> {
        let turn = self.write_turn().await;
        let result = match self.save_in_turn(turn, SaveKind::Final).await {
            Ok(_) => {
                if handed_off {
                    self.lock().status = SessionStatus::HandedOff;
                }
                self.finish(handed_off);
                Ok(())
            }
            Err(error) => {
                let mut state = self.lock();
                if state.status == SessionStatus::Closing {
                    state.status = SessionStatus::Active;
                }
                Err(error)
            }
        };
        self.end_finished.notify_waiters();
        result
    }

    /// Ends now, or, when an end is already in flight, waits for it (shutdown and handoff use
    /// this: a session the game began ending is still saved and reported). Runs in the caller.
    pub(crate) async fn end_or_join(self: &Arc<Self>, handed_off: bool) -> Result<(), SessionError> {
        let finished = self.end_finished.notified();
        tokio::pin!(finished);
        // Registered before the status is read, so an end finishing in between is not missed.
        finished.as_mut().enable();
        match self.begin_end() {
            Ok(true) => return self.complete_end(handed_off).await,
            Ok(false) => return Ok(()),
            Err(SessionError::Ended) if self.lock().status == SessionStatus::Closing => finished.await,
            Err(error) => return Err(error),
        }
        let status = self.lock().status.clone();
        match status {
            SessionStatus::Ended | SessionStatus::HandedOff => Ok(()),
            // The end in flight failed and left the session open: one more try.
            SessionStatus::Active if self.begin_end()? => self.complete_end(handed_off).await,
            SessionStatus::FencedOut => Err(SessionError::FencedOut),
            _ => Err(SessionError::Ended),
        }
    }

    /// `end` for the game: marks the session closing now and finishes in an engine task.
    pub(crate) fn end_detached(
        self: &Arc<Self>,
    ) -> impl std::future::Future<Output = Result<(), SessionError>> + Send + 'static {
        let begun = self.begin_end();
        let session = self.clone();
        let answered = match (&begun, self.engine()) {
            (Ok(true), Some(core)) => {
                let answered = core.spawn_answering("end", async move { session.complete_end(false).await });
                if answered.is_err() {
                    self.abort_end();
                }
                Some(answered)
            }
            (Ok(true), None) => {
                self.abort_end();
                None
            }
            _ => None,
        };
        async move {
            match (begun, answered) {
                (Err(error), _) => Err(error),
                (Ok(false), _) => Ok(()),
                // The engine is gone: nothing can save any more.
                (Ok(true), None) => Err(SessionError::Ended),
                (Ok(true), Some(Err(refused))) => Err(SessionError::Store { message: refused.to_string() }),
                // The sender is gone only when the task was aborted (a crash).
                (Ok(true), Some(Ok(answered))) => answered.await.unwrap_or(Err(SessionError::Ended)),
            }
        }
    }

    /// The final save could not start: the session is open again, as after a failed end.
    fn abort_end(&self) {
        let mut state = self.lock();
        if state.status == SessionStatus::Closing {
            state.status = SessionStatus::Active;
        }
        drop(state);
        self.end_finished.notify_waiters();
    }

    fn finish(&self, handed_off: bool) {
        if let Some(core) = self.engine() {
            core.registry().forget(&self.id, self.epoch);
            core.announce_released(&self.id);
            if handed_off {
                core.counters().one(Counter::HandoffsGiven);
            }
        }
        self.emit(if handed_off { SessionEvent::HandedOff } else { SessionEvent::Ended });
    }
}
