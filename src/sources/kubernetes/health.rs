//! Watch health: for each kind, whether its watcher has lost the API server, when a lost
//! watcher is restarted, and which of its errors are logged. Must not depend on the store or
//! the watch loop: the loop reports every event and error here and asks when to restart, so
//! that the rules for losing and regaining the server sit in one place.
//!
//! A failed list or watch start, or `FAILED_WATCHES_LOST` failed watches in a row with no
//! event between, means the API server is out of reach: the kind stays lost until a full list
//! succeeds, and its watcher is restarted (a fresh list) after `RESTART_FIRST`, the wait
//! doubling up to `RESTART_MAX`. A 410 Gone is routine: the watcher lists again by itself.

use std::time::Duration;

use kube::runtime::watcher;
use tokio::time::Instant;

use super::objects::Kind;

/// First and longest wait before a watcher that lost the API server is restarted.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(10);
/// Failed watches in a row (without an event in between) that count as losing the server.
const FAILED_WATCHES_LOST: u32 = 3;
/// At most one error line per kind and cluster in this interval; the rest are counted.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Health of one kind's watcher.
#[derive(Debug)]
pub(super) struct KindHealth {
    /// Out of reach since this error (the source was reported lost for it).
    lost: Option<String>,
    /// Failed watches since the last event.
    failed_watches: u32,
    /// When a lost watcher is restarted with a fresh list.
    restart_at: Option<Instant>,
    restart_delay: Duration,
    errors: u64,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl KindHealth {
    pub(super) fn new() -> KindHealth {
        KindHealth {
            lost: None,
            failed_watches: 0,
            restart_at: None,
            restart_delay: RESTART_FIRST,
            errors: 0,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// The error the kind was lost for, while the API server is out of its reach.
    pub(super) fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    /// When the lost watcher is to be restarted.
    pub(super) fn restart_at(&self) -> Option<Instant> {
        self.restart_at
    }

    /// An event of the kind's watcher; `listed` when it completed a full list, which tells
    /// that the API server is reachable again.
    pub(super) fn on_event(&mut self, source: &str, kind: Kind, listed: bool) {
        self.failed_watches = 0;
        if listed {
            // A full list: the kind is reachable again.
            if let Some(error) = self.lost.take() {
                tracing::info!(source, %kind, error, "listed again after losing the API server");
            }
            self.restart_at = None;
            self.restart_delay = RESTART_FIRST;
        }
    }

    /// An error of the kind's watcher: logged (or counted while logging is spaced out); when
    /// it means the API server is out of reach, the kind is lost and its restart scheduled.
    pub(super) fn on_error(&mut self, source: &str, kind: Kind, error: &watcher::Error) {
        let class = classify(error);
        let now = Instant::now();
        if class == ErrorClass::Gone {
            // The history moved past the watch (compaction): routine, the watcher lists again.
            tracing::info!(source, %kind, "watch expired (410 Gone), listing again");
            return;
        }
        self.errors += 1;
        if self.last_logged.is_none_or(|at| now.duration_since(at) >= ERROR_LOG_INTERVAL) {
            tracing::warn!(
                source,
                %kind,
                errors = self.errors,
                not_logged = self.unlogged,
                "watch error: {error}"
            );
            self.last_logged = Some(now);
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        let unreachable = match class {
            ErrorClass::Unreachable => true,
            ErrorClass::WatchFailed => {
                self.failed_watches += 1;
                self.failed_watches >= FAILED_WATCHES_LOST
            }
            ErrorClass::Gone => false,
        };
        if unreachable {
            if self.lost.is_none() {
                self.lost = Some(format!("{kind}: {error}"));
            }
            if self.restart_at.is_none() {
                self.restart_at = Some(now + self.restart_delay);
                self.restart_delay = (self.restart_delay * 2).min(RESTART_MAX);
            }
        }
    }

    /// Whether the watcher's restart is due at `now`; if so, it counts as restarted.
    pub(super) fn take_restart(&mut self, now: Instant) -> bool {
        if self.restart_at.is_none_or(|at| at > now) {
            return false;
        }
        self.restart_at = None;
        self.failed_watches = 0;
        true
    }
}

/// What one error of a watcher means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    /// The API server could not be reached or refused a list or a watch.
    Unreachable,
    /// A watch ended badly; the watcher resumes it from the last resource version.
    WatchFailed,
    /// 410 Gone: the watcher lists again.
    Gone,
}

fn classify(error: &watcher::Error) -> ErrorClass {
    match error {
        watcher::Error::InitialListFailed(_)
        | watcher::Error::WatchStartFailed(_)
        | watcher::Error::NoResourceVersion => ErrorClass::Unreachable,
        watcher::Error::WatchError(status) if status.code == 410 => ErrorClass::Gone,
        watcher::Error::WatchError(_) | watcher::Error::WatchFailed(_) => ErrorClass::WatchFailed,
    }
}
