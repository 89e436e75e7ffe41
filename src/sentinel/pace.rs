//! When the next discovery runs: triggered ones are coalesced and rate limited, with jitter (so
//! many proxies told of one failover at the same moment do not ask the sentinels all at once);
//! without a trigger, the poll; after a primary that did not say `ROLE master`, a short retry.

use std::time::Duration;

use tokio::time::Instant;

use super::Trigger;

/// Without a trigger, the sentinels are asked this often: the backstop for events missed (the
/// subscriptions are down, or a sentinel did not publish).
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Up to this much is added to each poll interval, at random.
pub const POLL_JITTER: Duration = Duration::from_millis(200);
/// Triggered discoveries start at most this often; triggers in between are coalesced into one.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Discoveries triggered by failed connections to the primary start at most this often: while
/// the primary is down and not yet failed over (Sentinel's `down-after-milliseconds` and more)
/// every reconnect fails, and the sentinels, asked by every proxy, have nothing new to say
/// before they publish `+switch-master`.
pub const CONNECT_FAILURE_INTERVAL: Duration = Duration::from_millis(500);
/// Up to this much is added to a triggered discovery's start, at random.
pub const JITTER: Duration = Duration::from_millis(50);
/// The first retry after the primary named did not say `ROLE master` (it may be being promoted:
/// the client spec's "a few hundred milliseconds"); doubled at each further miss, up to
/// [`POLL_INTERVAL`].
pub const ROLE_RETRY: Duration = Duration::from_millis(300);

/// How a discovery ended, for the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A primary was found, or the sentinels could not be asked: the next poll is due as usual.
    Settled,
    /// The primary named did not say `ROLE master`: retry soon.
    WrongRole,
}

/// The schedule of one watch's discoveries.
#[derive(Debug)]
pub struct Pace {
    /// When the last discovery started.
    last: Instant,
    /// The next retry after a wrong role.
    retry: Duration,
}

impl Pace {
    /// A schedule whose first discovery starts at `now`.
    pub fn new(now: Instant) -> Pace {
        Pace {
            last: now,
            retry: ROLE_RETRY,
        }
    }

    /// A discovery starts at `now`.
    pub fn started(&mut self, now: Instant) {
        self.last = now;
    }

    /// A discovery ended at `now` with `outcome`: when the next one is due without a trigger
    /// (`jitter` in `0..=1` picks the poll's jitter).
    pub fn due(&mut self, now: Instant, outcome: Outcome, jitter: f64) -> Instant {
        match outcome {
            Outcome::Settled => {
                self.retry = ROLE_RETRY;
                now + POLL_INTERVAL + POLL_JITTER.mul_f64(jitter)
            }
            Outcome::WrongRole => {
                let wait = self.retry;
                self.retry = (wait * 2).min(POLL_INTERVAL);
                now + wait
            }
        }
    }

    /// When a discovery triggered by `trigger` at `now` starts: at once, unless the last one
    /// started less than [`MIN_INTERVAL`] ago ([`CONNECT_FAILURE_INTERVAL`] for a failed
    /// connection); then some jitter (`jitter` in `0..=1`).
    pub fn triggered(&self, trigger: Trigger, now: Instant, jitter: f64) -> Instant {
        let interval = match trigger {
            Trigger::ConnectFailure => CONNECT_FAILURE_INTERVAL,
            _ => MIN_INTERVAL,
        };
        now.max(self.last + interval) + JITTER.mul_f64(jitter)
    }
}

/// The trigger a discovery waits for once `new` arrives while `pending` waits: the first,
/// unless that was a failed connection's (which waits longer: any other takes its place).
pub fn coalesce(pending: Option<Trigger>, new: Trigger) -> Trigger {
    match pending {
        None | Some(Trigger::ConnectFailure) => new,
        Some(first) => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_wait_for_their_minimum_interval_then_jitter() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        pace.started(t0);
        // Right after a discovery: held until the interval has passed.
        let soon = t0 + Duration::from_millis(10);
        assert_eq!(pace.triggered(Trigger::Event, soon, 0.0), t0 + MIN_INTERVAL);
        assert_eq!(
            pace.triggered(Trigger::ConnectFailure, soon, 0.0),
            t0 + CONNECT_FAILURE_INTERVAL
        );
        // Long after: at once, plus at most the jitter.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(pace.triggered(Trigger::Readonly, later, 0.0), later);
        assert_eq!(pace.triggered(Trigger::Event, later, 1.0), later + JITTER);
    }

    #[test]
    fn triggers_coalesce_into_the_first_unless_it_was_a_failed_connection() {
        assert_eq!(
            coalesce(None, Trigger::ConnectFailure),
            Trigger::ConnectFailure
        );
        assert_eq!(
            coalesce(Some(Trigger::Event), Trigger::Readonly),
            Trigger::Event
        );
        assert_eq!(
            coalesce(Some(Trigger::ConnectFailure), Trigger::Event),
            Trigger::Event
        );
        assert_eq!(
            coalesce(Some(Trigger::Readonly), Trigger::ConnectFailure),
            Trigger::Readonly
        );
    }

    #[test]
    fn polls_are_due_after_the_interval_and_wrong_roles_retry_sooner_backing_off() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        assert_eq!(pace.due(t0, Outcome::Settled, 0.0), t0 + POLL_INTERVAL);
        assert_eq!(
            pace.due(t0, Outcome::Settled, 1.0),
            t0 + POLL_INTERVAL + POLL_JITTER
        );
        let waits: Vec<Duration> = (0..6)
            .map(|_| pace.due(t0, Outcome::WrongRole, 0.0) - t0)
            .collect();
        assert_eq!(waits[0], ROLE_RETRY);
        assert_eq!(waits[1], ROLE_RETRY * 2);
        assert_eq!(*waits.last().unwrap(), POLL_INTERVAL);
        // A found primary resets the retry.
        pace.due(t0, Outcome::Settled, 0.0);
        assert_eq!(pace.due(t0, Outcome::WrongRole, 0.0), t0 + ROLE_RETRY);
    }
}
