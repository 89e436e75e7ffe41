//! The coalescing policy as pure logic: when does an upstream connection write what it has queued.

use std::time::{Duration, Instant};

/// The knobs of the coalescing policy (`--max-batch-commands`, `--max-batch-bytes`,
/// `--batch-window-us`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// A batch with this many commands is written at once, and takes no more.
    pub max_commands: usize,
    /// A batch with this many bytes is written at once, and takes no more.
    pub max_bytes: usize,
    /// A latency budget: while earlier commands are still on the wire, the oldest queued command
    /// may wait this long for company; when nothing is in flight it is written at once, so a lone
    /// client never waits. Zero is *adaptive*: whatever is queued is written as soon as the socket
    /// can take it, and a busy proxy batches what piles up while the previous write is in flight.
    pub window: Duration,
}

/// Why a batch was written; exported as `respipe_batch_flushes_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// Adaptive mode: the socket was free and something was queued.
    Adaptive,
    /// The batch reached `max_commands`.
    Commands,
    /// The batch reached `max_bytes`.
    Bytes,
    /// The oldest command waited the whole window.
    Window,
    /// Nothing was in flight upstream, so waiting could only add latency.
    Idle,
}

/// The batch being collected: counts and the age of its oldest command. The bytes themselves live
/// with the upstream driver; this decides only *when* to write them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    commands: usize,
    bytes: usize,
    oldest: Option<Instant>,
}

impl FlushReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [FlushReason; 5] = [
        FlushReason::Adaptive,
        FlushReason::Commands,
        FlushReason::Bytes,
        FlushReason::Window,
        FlushReason::Idle,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Adaptive => "adaptive",
            FlushReason::Commands => "max_commands",
            FlushReason::Bytes => "max_bytes",
            FlushReason::Window => "window",
            FlushReason::Idle => "idle",
        }
    }
}

impl Batch {
    /// Adds a request of `commands` commands and `bytes` bytes, queued at `now`.
    pub fn push(&mut self, commands: usize, bytes: usize, now: Instant) {
        self.commands += commands;
        self.bytes += bytes;
        self.oldest.get_or_insert(now);
    }

    /// Commands in the batch.
    pub fn commands(&self) -> usize {
        self.commands
    }

    /// Bytes in the batch.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the oldest command of the batch was queued (`None` when empty).
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.commands == 0
    }

    /// True when the batch has reached a cap and must take no more requests until written.
    pub fn is_full(&self, policy: &BatchPolicy) -> bool {
        self.commands >= policy.max_commands || self.bytes >= policy.max_bytes
    }

    /// `Some(reason)` when the batch must be written now (the socket being free); `None` to wait.
    /// `upstream_idle`: no earlier command is waiting for its reply.
    pub fn flush_reason(
        &self,
        policy: &BatchPolicy,
        now: Instant,
        upstream_idle: bool,
    ) -> Option<FlushReason> {
        let oldest = self.oldest?;
        if self.commands >= policy.max_commands {
            Some(FlushReason::Commands)
        } else if self.bytes >= policy.max_bytes {
            Some(FlushReason::Bytes)
        } else if policy.window.is_zero() {
            Some(FlushReason::Adaptive)
        } else if upstream_idle {
            Some(FlushReason::Idle)
        } else if now >= oldest + policy.window {
            Some(FlushReason::Window)
        } else {
            None
        }
    }

    /// When the window of a non-empty batch runs out (`None` when empty or adaptive).
    pub fn deadline(&self, policy: &BatchPolicy) -> Option<Instant> {
        if policy.window.is_zero() {
            return None;
        }
        self.oldest.map(|t| t + policy.window)
    }

    /// Starts a new, empty batch; returns the finished one.
    pub fn take(&mut self) -> Batch {
        std::mem::take(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(window_us: u64) -> BatchPolicy {
        BatchPolicy {
            max_commands: 4,
            max_bytes: 100,
            window: Duration::from_micros(window_us),
        }
    }

    #[test]
    fn empty_batch_never_flushes() {
        let b = Batch::default();
        assert_eq!(b.flush_reason(&policy(0), Instant::now(), false), None);
        assert_eq!(b.deadline(&policy(50)), None);
    }

    #[test]
    fn adaptive_flushes_anything_at_once() {
        let now = Instant::now();
        let mut b = Batch::default();
        b.push(1, 10, now);
        assert_eq!(
            b.flush_reason(&policy(0), now, false),
            Some(FlushReason::Adaptive)
        );
        assert_eq!(b.deadline(&policy(0)), None);
    }

    #[test]
    fn window_holds_until_the_oldest_command_is_due() {
        let p = policy(100);
        let t0 = Instant::now();
        let mut b = Batch::default();
        b.push(1, 10, t0);
        b.push(1, 10, t0 + Duration::from_micros(60));
        assert_eq!(
            b.flush_reason(&p, t0 + Duration::from_micros(99), false),
            None
        );
        assert_eq!(b.deadline(&p), Some(t0 + Duration::from_micros(100)));
        assert_eq!(
            b.flush_reason(&p, t0 + Duration::from_micros(100), false),
            Some(FlushReason::Window)
        );
    }

    #[test]
    fn a_window_never_holds_a_batch_when_nothing_is_in_flight() {
        let p = policy(100);
        let t0 = Instant::now();
        let mut b = Batch::default();
        b.push(1, 10, t0);
        assert_eq!(b.flush_reason(&p, t0, true), Some(FlushReason::Idle));
        assert_eq!(b.flush_reason(&p, t0, false), None);
    }

    #[test]
    fn caps_flush_before_the_window_and_stop_intake() {
        let p = policy(1_000_000);
        let t0 = Instant::now();
        let mut b = Batch::default();
        b.push(3, 30, t0);
        assert!(!b.is_full(&p));
        b.push(1, 10, t0);
        assert!(b.is_full(&p));
        assert_eq!(b.flush_reason(&p, t0, false), Some(FlushReason::Commands));

        let mut b = Batch::default();
        b.push(1, 100, t0);
        assert!(b.is_full(&p));
        assert_eq!(b.flush_reason(&p, t0, false), Some(FlushReason::Bytes));
    }

    #[test]
    fn take_resets() {
        let mut b = Batch::default();
        b.push(2, 20, Instant::now());
        let old = b.take();
        assert_eq!((old.commands(), old.bytes()), (2, 20));
        assert!(b.is_empty());
        assert_eq!(b.bytes(), 0);
    }
}
