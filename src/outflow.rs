//! The flow of replies out to one client: how much its replies weigh (to stop reading its requests
//! before large replies pile up), how fast it reads them (for the log when it is closed), and
//! Redis's `client-output-buffer-limit pubsub` applied to subscribers.

use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::resp;

/// Unsent reply bytes plus the estimated weight of the replies still owed for commands in flight:
/// past this respipe stops reading the client's requests until they drain (throttling, long before
/// `max_client_reply_bytes` closes it).
pub const READ_PAUSE_OWED_BYTES: usize = 8 * 1024 * 1024;
/// The weight assumed for each reply before the client's first reply has shown what its replies
/// weigh: a new client's first pipeline goes 16 commands at a time until then (one round trip).
const UNKNOWN_WEIGHT: usize = READ_PAUSE_OWED_BYTES / 16;
/// The read rate reported when a client is closed covers at least this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// An output buffer limit as Redis's `client-output-buffer-limit` states one class's: closed at once
/// past `hard` bytes, or after `soft_for` spent continuously past `soft` bytes (0 disables either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    pub hard: usize,
    pub soft: usize,
    pub soft_for: Duration,
}

/// Which limit a client went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// The hard limit.
    Hard,
    /// The soft limit, for longer than its seconds.
    Soft,
}

/// The server's pubsub output limit, read once per proxy when the first client subscribes.
#[derive(Debug, Default)]
pub struct ServerLimit(OnceCell<OutputLimit>);

/// One client's reply flow.
#[derive(Debug)]
pub struct Outflow {
    /// Estimated bytes of one reply, `None` until the first reply: jumps to a larger response's
    /// average at once, decays by an eighth per smaller response (so a client that starts fetching
    /// large values is throttled from its first large reply on).
    weight: Option<usize>,
    /// Bytes written to the client since `window_start`, and in the window before it.
    window_start: Instant,
    window_bytes: u64,
    previous: (u64, Duration),
    /// Since when the unsent bytes have been past the pubsub soft limit (Redis resets it whenever
    /// it finds them under).
    soft_since: Option<Instant>,
}

impl OutputLimit {
    /// Redis's default for pubsub clients: `32mb 8mb 60`.
    pub const PUBSUB_DEFAULT: OutputLimit = OutputLimit {
        hard: 32 * 1024 * 1024,
        soft: 8 * 1024 * 1024,
        soft_for: Duration::from_secs(60),
    };

    /// The pubsub class of a `CONFIG GET client-output-buffer-limit` value
    /// (`normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60`).
    pub fn parse_pubsub(value: &str) -> Option<OutputLimit> {
        let words: Vec<&str> = value.split_ascii_whitespace().collect();
        let at = words
            .iter()
            .position(|w| w.eq_ignore_ascii_case("pubsub"))?;
        let number = |i: usize| u64::try_from(resp::parse_int(words.get(at + i)?.as_bytes())?).ok();
        Some(OutputLimit {
            hard: usize::try_from(number(1)?).ok()?,
            soft: usize::try_from(number(2)?).ok()?,
            soft_for: Duration::from_secs(number(3)?),
        })
    }
}

impl ServerLimit {
    /// The limit, read with `read` until it once succeeds (`read` gives Redis's default itself when
    /// Redis answers but does not tell, e.g. `CONFIG` denied to the configured user). While Redis
    /// cannot be reached (`Err`), Redis's default applies and the next call asks again.
    pub async fn get<F, Fut>(&self, read: F) -> OutputLimit
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<OutputLimit, ()>>,
    {
        self.0
            .get_or_try_init(read)
            .await
            .copied()
            .unwrap_or(OutputLimit::PUBSUB_DEFAULT)
    }
}

impl Outflow {
    pub fn new(now: Instant) -> Self {
        Outflow {
            weight: None,
            window_start: now,
            window_bytes: 0,
            previous: (0, Duration::ZERO),
            soft_since: None,
        }
    }

    /// `count` replies of `bytes` in all arrived.
    pub fn replies(&mut self, bytes: usize, count: u32) {
        let average = bytes / (count.max(1) as usize);
        self.weight = Some(match self.weight {
            Some(weight) => average.max(weight - weight / 8),
            None => average,
        });
    }

    /// The estimated bytes of the replies owed for `inflight` commands.
    pub fn owed(&self, inflight: usize) -> usize {
        self.weight
            .unwrap_or(UNKNOWN_WEIGHT)
            .saturating_mul(inflight)
    }

    /// `n` bytes were written to the client.
    pub fn wrote(&mut self, n: usize, now: Instant) {
        self.window_bytes += n as u64;
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            self.previous = (self.window_bytes, elapsed);
            self.window_bytes = 0;
            self.window_start = now;
        }
    }

    /// Bytes per second written to the client over the last window and the current one.
    pub fn read_rate(&self, now: Instant) -> u64 {
        let bytes = self.previous.0 + self.window_bytes;
        let time = self.previous.1 + now.saturating_duration_since(self.window_start);
        if time.is_zero() {
            return 0;
        }
        (bytes as f64 / time.as_secs_f64()) as u64
    }

    /// Checks `unsent` bytes against `limit` as Redis checks a client's output buffer when it
    /// grows: past the hard limit at once, past the soft one for longer than its seconds.
    pub fn check(&mut self, unsent: usize, limit: &OutputLimit, now: Instant) -> Option<Breach> {
        if limit.hard > 0 && unsent >= limit.hard {
            return Some(Breach::Hard);
        }
        if limit.soft == 0 || unsent < limit.soft {
            self.soft_since = None;
            return None;
        }
        let since = *self.soft_since.get_or_insert(now);
        (now.saturating_duration_since(since) > limit.soft_for).then_some(Breach::Soft)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubsub_class_is_read_from_config_get() {
        let value = "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60";
        assert_eq!(
            OutputLimit::parse_pubsub(value),
            Some(OutputLimit::PUBSUB_DEFAULT)
        );
        let value = "normal 0 0 0 slave 0 0 0 pubsub 262144 0 0";
        assert_eq!(
            OutputLimit::parse_pubsub(value),
            Some(OutputLimit {
                hard: 262_144,
                soft: 0,
                soft_for: Duration::ZERO
            })
        );
        assert_eq!(OutputLimit::parse_pubsub("normal 0 0 0"), None);
        assert_eq!(OutputLimit::parse_pubsub("pubsub 1 2"), None);
    }

    #[test]
    fn weight_jumps_up_and_decays_slowly() {
        let mut flow = Outflow::new(Instant::now());
        assert_eq!(flow.owed(16), READ_PAUSE_OWED_BYTES, "unknown: heavy");
        flow.replies(1000, 10);
        assert_eq!(flow.owed(3), 300);
        flow.replies(1_000_000, 1);
        assert_eq!(flow.owed(2), 2_000_000);
        flow.replies(5, 1);
        assert_eq!(flow.owed(1), 875_000);
    }

    #[test]
    fn hard_limit_at_once_soft_limit_after_its_seconds() {
        let limit = OutputLimit {
            hard: 100,
            soft: 50,
            soft_for: Duration::from_secs(2),
        };
        let t0 = Instant::now();
        let mut flow = Outflow::new(t0);
        assert_eq!(flow.check(100, &limit, t0), Some(Breach::Hard));
        assert_eq!(flow.check(60, &limit, t0), None);
        assert_eq!(flow.check(60, &limit, t0 + Duration::from_secs(2)), None);
        // Back under: the soft clock starts over.
        assert_eq!(flow.check(10, &limit, t0 + Duration::from_secs(3)), None);
        assert_eq!(flow.check(60, &limit, t0 + Duration::from_secs(4)), None);
        assert_eq!(
            flow.check(60, &limit, t0 + Duration::from_secs(7)),
            Some(Breach::Soft)
        );
        let off = OutputLimit {
            hard: 0,
            soft: 0,
            soft_for: Duration::ZERO,
        };
        assert_eq!(flow.check(usize::MAX, &off, t0), None);
    }

    #[test]
    fn read_rate_covers_the_last_window() {
        let t0 = Instant::now();
        let mut flow = Outflow::new(t0);
        flow.wrote(500, t0 + Duration::from_millis(500));
        flow.wrote(500, t0 + Duration::from_secs(1));
        assert_eq!(flow.read_rate(t0 + Duration::from_secs(1)), 1000);
        flow.wrote(1000, t0 + Duration::from_secs(2));
        assert_eq!(flow.read_rate(t0 + Duration::from_secs(2)), 1000);
        assert_eq!(flow.read_rate(t0 + Duration::from_secs(3)), 500);
    }
}
