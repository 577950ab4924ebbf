//! How a kind's watcher tries again after an error: a jittered exponential backoff, and at
//! least [`MIN_RELIST`] between the starts of two full lists of the kind. Must not depend on
//! the store or the watch loop: it only paces the watcher's stream.
//!
//! The watcher itself resumes a failed or ended watch from its last resource version (a cheap
//! request, served from the API server's watch cache) and lists only after a 410 Gone or a
//! failed list. Lists of every pod are what an API server pays for (uncached quorum reads from
//! etcd with paging), and a fleet of appliances that relisted together after a control-plane
//! rollout (429, 503 on watch starts) would be a storm: hence the spacing, and the jitter that
//! keeps the fleet's retries apart.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::time::Instant;

use super::watch::WatchStream;

/// Least time between the starts of two full lists of one kind, once one has completed.
pub(super) const MIN_RELIST: Duration = Duration::from_secs(30);
/// The first wait after an error; each error in a row doubles it, up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);

/// Exponential backoff with jitter: each wait is drawn from the upper half of the current
/// step, so that appliances that failed together do not retry together.
#[derive(Debug)]
pub(super) struct Backoff {
    step: Duration,
    cap: Duration,
    random: RandomState,
    draws: u64,
}

impl Backoff {
    pub(super) fn new(cap: Duration) -> Backoff {
        Backoff {
            step: BACKOFF_FIRST,
            cap: cap.max(BACKOFF_FIRST),
            random: RandomState::new(),
            draws: 0,
        }
    }

    /// The wait before the next try.
    pub(super) fn next_wait(&mut self) -> Duration {
        self.draws += 1;
        let unit = (self.random.hash_one(self.draws) >> 11) as f64 / (1u64 << 53) as f64;
        let wait = self.step.mul_f64(0.5 + unit / 2.0);
        self.step = (self.step * 2).min(self.cap);
        wait
    }

    pub(super) fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
    }
}

/// `period` shortened by up to a quarter at random: periodic work (the version probe) of many
/// appliances does not fall into step, nor into step with a periodic fault of the API server.
pub(super) fn jittered(period: Duration) -> Duration {
    let unit = (RandomState::new().hash_one(Instant::now()) >> 11) as f64 / (1u64 << 53) as f64;
    period.mul_f64(1.0 - unit / 4.0)
}

/// Whether the watcher's next step after `error` is a full list.
fn lists_next(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion => true,
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::WatchStartFailed(_) | watcher::Error::WatchFailed(_) => false,
    }
}

/// When the watcher is polled again after an error.
#[derive(Debug)]
struct Pace {
    backoff: Backoff,
    /// When the last list that completed began.
    listed_at: Option<Instant>,
    /// When the current list began.
    listing_since: Option<Instant>,
}

impl Pace {
    /// Takes one item of the watcher; returns how long to wait before polling it again.
    fn on_item<K>(&mut self, item: &Result<Event<K>, watcher::Error>, now: Instant) -> Duration {
        match item {
            Ok(Event::Init) => {
                self.listing_since = Some(now);
                Duration::ZERO
            }
            Ok(event) => {
                if matches!(event, Event::InitDone) {
                    self.listed_at = self.listing_since.take();
                }
                self.backoff.reset();
                Duration::ZERO
            }
            Err(error) => {
                let wait = self.backoff.next_wait();
                match self.listed_at {
                    Some(at) if lists_next(error) => {
                        wait.max((at + MIN_RELIST).saturating_duration_since(now))
                    }
                    _ => wait,
                }
            }
        }
    }
}

/// `watcher` paced: after an error it is polled again only after the backoff, and a full
/// list starts at least [`MIN_RELIST`] after the start of the last completed one.
pub(super) fn paced<K: Send + 'static>(
    watcher: WatchStream<K>,
    backoff_cap: Duration,
) -> WatchStream<K> {
    let pace = Pace { backoff: Backoff::new(backoff_cap), listed_at: None, listing_since: None };
    futures::stream::unfold(
        (watcher, pace, None::<Instant>),
        |(mut watcher, mut pace, resume_at)| async move {
            if let Some(at) = resume_at {
                tokio::time::sleep_until(at).await;
            }
            let item = watcher.next().await?;
            let now = Instant::now();
            let wait = pace.on_item(&item, now);
            let resume_at = (!wait.is_zero()).then(|| now + wait);
            Some((item, (watcher, pace, resume_at)))
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gone() -> watcher::Error {
        let status =
            kube::core::Status::failure("too old resource version", "Expired").with_code(410);
        watcher::Error::WatchError(Box::new(status))
    }

    fn start_failed() -> watcher::Error {
        let status =
            kube::core::Status::failure("the server is currently unable", "ServiceUnavailable")
                .with_code(503);
        watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn waits_grow_with_jitter_up_to_the_cap_and_start_over_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_secs(4));
        let waits: Vec<_> = (0..6).map(|_| backoff.next_wait()).collect();
        let steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0];
        for (wait, step) in waits.iter().zip(steps) {
            let step = Duration::from_secs_f64(step);
            assert!(*wait >= step / 2 && *wait <= step, "{wait:?} for a step of {step:?}");
        }
        backoff.reset();
        assert!(backoff.next_wait() <= BACKOFF_FIRST);
        // Two appliances that fail together do not retry together.
        let (mut a, mut b) =
            (Backoff::new(Duration::from_secs(30)), Backoff::new(Duration::from_secs(30)));
        let apart = (0..8).filter(|_| a.next_wait() != b.next_wait()).count();
        assert!(apart >= 7, "{apart}");
    }

    #[test]
    fn jittered_periods_are_between_three_quarters_and_all_of_the_period_and_vary() {
        let period = Duration::from_secs(10);
        let draws: Vec<Duration> = (0..32).map(|_| jittered(period)).collect();
        assert!(draws.iter().all(|d| *d >= period * 3 / 4 && *d <= period), "{draws:?}");
        let first = draws[0];
        assert!(draws.iter().any(|d| *d != first), "{draws:?}");
    }

    #[test]
    fn failed_watch_starts_back_off_but_never_relist_and_gone_relists_no_sooner_than_min_relist() {
        let start = Instant::now();
        let mut pace = Pace {
            backoff: Backoff::new(Duration::from_secs(30)),
            listed_at: None,
            listing_since: None,
        };
        let ok = |event| Ok::<Event<()>, watcher::Error>(event);
        assert_eq!(pace.on_item(&ok(Event::Init), start), Duration::ZERO);
        assert_eq!(
            pace.on_item(&ok(Event::InitDone), start + Duration::from_secs(2)),
            Duration::ZERO
        );
        // A failing watch start: the backoff alone (the watcher resumes from its version).
        let wait =
            pace.on_item(&Err::<Event<()>, _>(start_failed()), start + Duration::from_secs(3));
        assert!(wait <= BACKOFF_FIRST, "{wait:?}");
        // A 410 Gone 5 s after the list began: the relist waits until 30 s after it.
        let now = start + Duration::from_secs(5);
        let wait = pace.on_item(&Err::<Event<()>, _>(gone()), now);
        assert_eq!(now + wait, start + MIN_RELIST);
        // Long after the last list, a 410 relists after the backoff only.
        let now = start + Duration::from_secs(300);
        let wait = pace.on_item(&Err::<Event<()>, _>(gone()), now);
        assert!(wait < Duration::from_secs(30) && now + wait < start + Duration::from_secs(331));
    }
}
