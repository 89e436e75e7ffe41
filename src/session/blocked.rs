//! A blocking command on a Redis Cluster follows its slot (TOPOLOGY.md section 3, "Stateful").
//!
//! A blocking command (`BLPOP`, `BLMOVE`, `BZPOPMIN`, `BLMPOP`, `XREAD BLOCK`...) runs on a lease
//! to its slot's owner. When the slot moves while it blocks, Redis unblocks it with `-MOVED` (a
//! stale map meets `-MOVED`/`-ASK` at once). When nothing else of the session is in flight (the
//! usual case: a blocked client waits), the lease goes back, a lease to the node named is taken
//! and the command is sent there again (after `ASKING` for an `ASK`, nothing between them: the
//! lease is the session's alone), its timeout cut to what remains of the first one (0 stays 0,
//! forever); when nothing remains the client gets what Redis answers on a timeout (a null array).
//! The map is patched on `MOVED`, as for any command, and at most
//! [`MAX_REDIRECTS`](super::redirect::MAX_REDIRECTS) are followed. Otherwise (commands pipelined
//! behind it on the lease, a transaction or `WATCH` holding the lease, a command respipe cannot
//! read the timeout of) the client gets respipe's `-TRYAGAIN`, as in a transaction.
//!
//! Only a lease's `MOVED`/`ASK` comes here: nothing of this is on the path of other replies.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::command::{Args, Shape};
use crate::metrics;
use crate::reply::{self, Lane, Response};
use crate::resp;
use crate::upstream::Request;

use super::identity::{Check, Op};
use super::redirect::{self, Again};
use super::{Pending, Session};

/// The blocking command last sent on a lease of a cluster session (its slot and bytes are in its
/// pending entry's `again`, which marks it: no other entry on a lease has one).
pub(super) struct Blocked {
    /// When it was first sent: its timeout counts from here.
    since: Instant,
    /// Redirects followed so far.
    redirects: u8,
}

/// What a blocking command sent again is.
#[derive(Debug, PartialEq, Eq)]
enum Rest {
    /// The command, its timeout cut to what remains.
    Send(Bytes),
    /// Nothing remains: it has timed out.
    TimedOut,
}

/// The unit of a blocking command's timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Seconds,
    Millis,
}

/// Where a blocking command's timeout is, and its unit.
fn timeout_at(args: &[&[u8]]) -> Option<(usize, Unit)> {
    let name = args.first()?.to_ascii_uppercase();
    let last = args.len().checked_sub(1).filter(|&i| i > 0)?;
    match &name[..] {
        b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BZPOPMIN" | b"BZPOPMAX" => {
            Some((last, Unit::Seconds))
        }
        b"BLMPOP" | b"BZMPOP" => Some((1, Unit::Seconds)),
        b"XREAD" | b"XREADGROUP" => {
            // `XREADGROUP GROUP group consumer`, then the options up to `STREAMS`.
            let mut i = if name == b"XREAD" { 1 } else { 4 };
            while let Some(option) = args.get(i) {
                match &option.to_ascii_uppercase()[..] {
                    b"BLOCK" => return (i < last).then_some((i + 1, Unit::Millis)),
                    b"COUNT" => i += 2,
                    b"NOACK" => i += 1,
                    _ => return None,
                }
            }
            None
        }
        _ => None,
    }
}

/// The blocking command `request` sent again `elapsed` after it first was; `None` when its timeout
/// cannot be read.
fn rest(request: &[u8], elapsed: Duration) -> Option<Rest> {
    let args: Vec<&[u8]> = Args::Resp(request).iter().collect();
    let (at, unit) = timeout_at(&args)?;
    let text = std::str::from_utf8(args[at]).ok()?;
    let total = match unit {
        Unit::Seconds => Duration::try_from_secs_f64(text.parse().ok()?).ok()?,
        Unit::Millis => Duration::from_millis(text.parse().ok()?),
    };
    if total.is_zero() {
        // Forever.
        return Some(Rest::Send(Bytes::copy_from_slice(request)));
    }
    let left = total.saturating_sub(elapsed).as_millis();
    if left == 0 {
        return Some(Rest::TimedOut);
    }
    let left = match unit {
        Unit::Seconds => format!("{}.{:03}", left / 1000, left % 1000),
        Unit::Millis => left.to_string(),
    };
    let mut args = args;
    args[at] = left.as_bytes();
    Some(Rest::Send(resp::encode_request(&args)))
}

impl Session {
    /// Notes a blocking command just sent on a lease of a cluster session, so that a `MOVED` or
    /// `ASK` for it can send it again (not when a transaction or `WATCH` holds the lease).
    pub(super) fn note_blocked(&mut self, bytes: Bytes) {
        if self.lease.is_none() || !self.clustered() || self.lease_needed() {
            return;
        }
        let Some(slot) = redirect::slot_of(&bytes) else {
            return;
        };
        self.keep(Again { slot, bytes });
        self.blocked = Some(Blocked {
            since: Instant::now(),
            redirects: 0,
        });
    }

    /// A `MOVED` (or an `ASK`) to node lane `to` for the entry `index` of `pending`, answered on
    /// the lease on `from`: when that entry is a blocking command and nothing else is in flight,
    /// it is sent there again (`Some(true)`: the response is taken), or `response` becomes its
    /// answer (`Some(false)`: nothing of its timeout remains, or no lease to `to` can be had).
    /// `None` when it cannot follow (the caller shows respipe's error).
    pub(super) fn follow_blocked(
        &mut self,
        index: usize,
        slot: u16,
        (to, ask): (Lane, bool),
        from: Lane,
        response: &mut Response,
    ) -> Option<bool> {
        let Some(Pending::Upstream {
            again: Some(again), ..
        }) = self.pending.get(index)
        else {
            return None;
        };
        let blocked = self.blocked.as_ref()?;
        if self.inflight != 1
            || self.lease_needed()
            || self.pool_outdated()
            || blocked.redirects >= redirect::MAX_REDIRECTS
        {
            return None;
        }
        let rest = rest(&again.bytes, blocked.since.elapsed())?;
        metrics::cluster_redirect(if ask { "ask" } else { "moved" });
        if let Some(cluster) = self.pool.layout().cluster().filter(|_| !ask) {
            cluster.moved(slot, to);
        }
        let command = match rest {
            Rest::Send(command) => command,
            Rest::TimedOut => {
                let bytes = if self.state.resp3 {
                    reply::NULL
                } else {
                    Bytes::from_static(b"*-1\r\n")
                };
                *response = Response::Replies { bytes, count: 1 };
                return Some(false);
            }
        };
        // The old lease is idle (its one command answered): back to the pool.
        if let Some(lease) = self.lease.take() {
            self.shared.pools.give_back(lease);
        }
        let lease = match self.shared.pools.lease(&self.state.key(), to) {
            Ok(lease) => lease,
            Err(line) => {
                *response = Response::Replies {
                    bytes: line,
                    count: 1,
                };
                return Some(false);
            }
        };
        if let Some(blocked) = &mut self.blocked {
            blocked.redirects += 1;
        }
        let handle = lease.handle().clone();
        self.client.snapshot().blocked = Some((handle.downgrade(), None, to));
        self.lease = Some(lease);
        self.off_lane(from);
        // Before the command, in its order on the new lease: its `CLIENT ID` (for `CLIENT
        // UNBLOCK`) and `ASKING`, their replies unseen.
        let mut ahead = vec![(
            resp::encode_request(&[&b"CLIENT"[..], b"ID"]),
            Pending::Check(
                Box::new(Check {
                    op: Op::LeaseId,
                    shown: false,
                }),
                to,
            ),
        )];
        if ask {
            let asking = Pending::Upstream {
                count: 1,
                shown: false,
                follow: None,
                lane: to,
                again: None,
            };
            ahead.push((Bytes::from_static(redirect::ASKING), asking));
        }
        let mut requests = Vec::with_capacity(ahead.len() + 1);
        for (at, (bytes, pending)) in ahead.into_iter().enumerate() {
            self.pending.insert(index + at, pending);
            requests.push(bytes);
        }
        if let Some(Pending::Upstream { lane, .. }) = self.pending.get_mut(index + requests.len()) {
            *lane = to;
        }
        requests.push(command);
        self.inflight += requests.len() - 1;
        self.lane_state(to).inflight += requests.len();
        let mut requests = requests.into_iter().map(|bytes| Request {
            bytes,
            count: 1,
            shape: Shape::One,
            reply: self.tx.on_lane(to),
            stream: false,
        });
        // A fresh lease's queue has room; a closed one answers each request with the reason.
        while let Some(request) = requests.next() {
            if let Err(full_or_closed) = handle.try_send(request) {
                let rest: Vec<Request> = std::iter::once(full_or_closed.into_inner())
                    .chain(requests)
                    .collect();
                let (timeout, since) = (self.limits.command_timeout, Instant::now());
                let handle = handle.clone();
                tokio::spawn(async move {
                    for request in rest {
                        redirect::send_within(handle.clone(), request, timeout, since).await;
                    }
                });
                break;
            }
        }
        Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest_of(words: &[&str], elapsed_ms: u64) -> Option<Rest> {
        rest(
            &resp::encode_request(words),
            Duration::from_millis(elapsed_ms),
        )
    }

    fn sent(words: &[&str]) -> Option<Rest> {
        Some(Rest::Send(resp::encode_request(words)))
    }

    #[test]
    fn the_timeout_left_replaces_the_first() {
        // The command, where its timeout is, and what is left of it 1.25 s on.
        let group = "XREADGROUP GROUP BLOCK c NOACK block 2000 STREAMS s >";
        let cases = [
            ("BLPOP a b 5", 3, "3.750"),
            ("brpop a 2.5", 2, "1.250"),
            ("BLMOVE a b LEFT RIGHT 10", 5, "8.750"),
            ("BZPOPMIN z 2", 2, "0.750"),
            ("BLMPOP 3 1 a LEFT COUNT 2", 1, "1.750"),
            ("XREAD COUNT 2 BLOCK 5000 STREAMS s $", 4, "3750"),
            (group, 6, "750"),
        ];
        for (first, at, left) in cases {
            let first: Vec<&str> = first.split(' ').collect();
            let mut again = first.clone();
            again[at] = left;
            assert_eq!(rest_of(&first, 1250), sent(&again), "{first:?}");
        }
    }

    #[test]
    fn zero_blocks_forever_and_an_elapsed_timeout_is_over() {
        assert_eq!(
            rest_of(&["BLPOP", "a", "0"], 9000),
            sent(&["BLPOP", "a", "0"])
        );
        let forever = ["XREAD", "BLOCK", "0", "STREAMS", "s", "$"];
        assert_eq!(rest_of(&forever, 9000), sent(&forever));
        assert_eq!(rest_of(&["BLPOP", "a", "1"], 1000), Some(Rest::TimedOut));
        assert_eq!(rest_of(&["BLPOP", "a", "1"], 5000), Some(Rest::TimedOut));
        let stream = ["XREAD", "BLOCK", "100", "STREAMS", "s", "$"];
        assert_eq!(rest_of(&stream, 100), Some(Rest::TimedOut));
    }

    #[test]
    fn unreadable_timeouts_are_not_followed() {
        for words in [
            &["BLPOP", "a", "soon"][..],
            &["BLPOP", "a", "-1"],
            &["BLPOP"],
            &["XREAD", "STREAMS", "s", "BLOCK", "5"],
            &["XREAD", "COUNT", "1", "BLOCK"],
            &["GET", "a"],
        ] {
            assert_eq!(rest_of(words, 0), None, "{words:?}");
        }
    }
}
