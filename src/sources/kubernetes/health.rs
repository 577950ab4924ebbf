//! Watch errors: for each kind, which errors are logged (spaced out, the rest counted) and the
//! last one, which the watch loop names when the source is lost. Must not depend on the store
//! or the watch loop. Whether the source is lost is not decided here but by the evidence of
//! answers (`connection`): an error alone does not lose a source, only `timeout` without an
//! answer does, and the watcher retries by itself (`retry`).

use std::time::Duration;

use kube::runtime::watcher;
use tokio::time::Instant;

use super::objects::Kind;

/// At most one error line per kind and cluster in this interval; the rest are counted.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The errors of one kind's watcher.
#[derive(Debug, Default)]
pub(super) struct KindHealth {
    /// The last error since the last event, and when it came.
    last_error: Option<(Instant, String)>,
    errors: u64,
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl KindHealth {
    /// The last error since the kind's last event, if it came after `answered` (the kind's
    /// last good answer, such as a watch that started again and stayed quiet).
    pub(super) fn last_error(&self, answered: Instant) -> Option<&str> {
        self.last_error.as_ref().filter(|(at, _)| *at >= answered).map(|(_, e)| e.as_str())
    }

    /// An event of the kind's watcher.
    pub(super) fn on_event(&mut self) {
        self.last_error = None;
    }

    /// An error of the kind's watcher: logged, or counted while logging is spaced out.
    pub(super) fn on_error(&mut self, source: &str, kind: Kind, error: &watcher::Error) {
        if matches!(error, watcher::Error::WatchError(status) if status.code == 410) {
            // The history moved past the watch (compaction): routine, the watcher lists again.
            tracing::info!(source, %kind, "watch expired (410 Gone), listing again");
            return;
        }
        self.errors += 1;
        let now = Instant::now();
        self.last_error = Some((now, format!("{kind}: {error}")));
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
    }
}
