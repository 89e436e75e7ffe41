//! The reply order: what the client is owed, in command order (upstream replies and respipe's own
//! answers), taking the replies as they arrive, and the limits on unsent reply bytes.

use bytes::Bytes;
use tracing::{debug, warn};

use crate::outflow::{Breach, READ_PAUSE_OWED_BYTES};
use crate::reply::Response;
use crate::spare;

use super::{redirect, Close, Pending, Session, Streaming};

impl Session {
    /// True when the replies owed (unsent ones, and those of the commands in flight plus `more`
    /// about to be sent, at this client's reply weight) are too heavy to send another command:
    /// throttling that keeps a client that reads slowly far from `max_client_reply_bytes`. One
    /// command always may go when nothing is owed, however large its reply.
    pub(super) fn owes_too_much(&self, more: usize) -> bool {
        let commands = self.inflight + more;
        commands > 0 && self.out.bytes() + self.outflow.owed(commands) >= READ_PAUSE_OWED_BYTES
    }

    /// Answers a command locally (subject to `CLIENT REPLY`), counting it as a local answer.
    pub(super) fn answer(&mut self, line: Bytes) -> Result<(), Close> {
        if self.state.take_shown() {
            self.local_counted(line);
        }
        Ok(())
    }

    pub(super) fn local_counted(&mut self, line: Bytes) {
        self.shared.metrics.local.increment(1);
        self.local(line);
    }

    /// Queues a locally produced answer behind the replies still owed before it.
    pub(super) fn local(&mut self, answer: Bytes) {
        if self.pending.is_empty() {
            self.out.push(answer);
        } else {
            self.owed(Pending::Local(answer));
        }
    }

    /// Records that `count` replies are owed for commands sent upstream.
    pub(super) fn owe(&mut self, count: u32, shown: bool) {
        if self.lane != 0 {
            if let Some(policy) = self.pool.layout().replicas() {
                policy.count(self.lane, count);
            }
        }
        let follow = self.follow.take();
        self.undecided += usize::from(follow.is_some());
        self.owe_as(
            Pending::Upstream {
                count,
                shown,
                follow,
                lane: self.lane,
                again: None,
            },
            count,
        );
    }

    /// Records `pending` for `count` commands sent upstream.
    pub(super) fn owe_as(&mut self, pending: Pending, count: u32) {
        self.owed(pending);
        self.inflight += count as usize;
        self.lane_state(self.lane).inflight += count as usize;
        if self.state.in_multi {
            self.state.queued += count as usize;
        }
    }

    /// Queues an answer the client is owed, in command order.
    pub(super) fn owed(&mut self, pending: Pending) {
        spare::push_back(&mut self.pending, pending);
    }

    /// Takes replies (or failures) for the oldest pending request and releases any local answers
    /// queued behind it; with nothing pending, a frame of the lease's stream.
    pub(super) fn on_response(&mut self, response: Response) -> Result<(), Close> {
        if let Response::Stream { bytes, lost } = response {
            return self.on_stream(bytes, lost);
        }
        if matches!(response, Response::Failed { .. }) && self.state.tracking {
            // The tracking lease failed: Redis may have lost the client's tracked keys with it.
            // Close once what is owed is written, as Redis closing the connection would.
            self.closing = true;
        }
        if matches!(response, Response::Failed { .. }) && self.user_gone() {
            // Redis closes a deleted user's connections: so does respipe, without a reply.
            debug!(
                session = self.id,
                "Redis refuses the session's user; closing client"
            );
            return Err(Close);
        }
        let response = self.checked(response);
        let Some(&mut Pending::Upstream {
            count: ref mut owed,
            shown,
            ref mut follow,
            lane,
            ..
        }) = self.pending.front_mut()
        else {
            // A reply nobody asked for would break every later reply's routing: close.
            warn!(
                session = self.id,
                "reply with nothing pending; closing client"
            );
            return Err(Close);
        };
        let count = match response {
            Response::Replies { bytes, count } => {
                if let Some(follow) = follow.take() {
                    // Only ever on a one-command request: `bytes` is its reply.
                    self.undecided -= 1;
                    for change in follow.accepted(&bytes) {
                        self.state.apply(change);
                    }
                }
                self.shared.metrics.forwarded.increment(u64::from(count));
                self.outflow.replies(bytes.len(), count);
                if shown {
                    self.out.push(bytes);
                }
                count
            }
            Response::Failed { count, error } => {
                if follow.take().is_some() {
                    self.undecided -= 1;
                }
                self.shared.metrics.failed.increment(u64::from(count));
                if shown {
                    for _ in 0..count {
                        self.out.push(error.clone());
                    }
                }
                count
            }
            Response::Stream { .. } | Response::Wake => 0,
        };
        if *owed < count {
            // A reply nobody asked for would break every later reply's routing: close.
            warn!(
                session = self.id,
                "reply accounting mismatch; closing client"
            );
            return Err(Close);
        }
        *owed -= count;
        if *owed == 0 {
            self.pending.pop_front();
            self.release_locals();
        }
        self.inflight -= count as usize;
        if !redirect::is_ticket(lane) {
            // A ticket left its node lane when its reply came (`redirect.rs`).
            let on_lane = self.lane_state(lane);
            on_lane.inflight -= count as usize;
            if on_lane.inflight == 0 {
                on_lane.conn = None;
            }
        }
        if self.inflight == 0 && !self.lease_needed() {
            // A blocking command's lease, or a transaction's after EXEC/DISCARD: give it back
            // (idle and out of any transaction or stream, so it can be scrubbed and reused).
            if let Some(lease) = self.lease.take() {
                self.shared.pools.give_back(lease);
            }
        }
        self.check_reply_limit()
    }

    /// Writes the local answers that waited for the slot just completed.
    pub(super) fn release_locals(&mut self) {
        while let Some(Pending::Local(_)) = self.pending.front() {
            if let Some(Pending::Local(answer)) = self.pending.pop_front() {
                self.out.push(answer);
            }
        }
    }

    /// Closes a client whose unsent replies went past a limit: a subscriber's pubsub output limit
    /// (as Redis would close it), anyone's `max_client_reply_bytes`. The log says which limit and
    /// how fast the client was reading.
    pub(super) fn check_reply_limit(&mut self) -> Result<(), Close> {
        let unsent = self.out.bytes();
        let now = tokio::time::Instant::now;
        if let Some(limit) = self
            .pubsub_limit
            .filter(|_| self.state.streaming == Some(Streaming::Subscribe))
        {
            if let Some(breach) = self.outflow.check(unsent, &limit, now()) {
                let (which, bytes) = match breach {
                    Breach::Hard => ("hard", limit.hard),
                    Breach::Soft => ("soft", limit.soft),
                };
                warn!(
                    session = self.id,
                    unsent_bytes = unsent,
                    limit = bytes,
                    soft_seconds = limit.soft_for.as_secs(),
                    read_bytes_per_sec = self.outflow.read_rate(now()),
                    "subscriber past the {which} limit of Redis's client-output-buffer-limit pubsub; closing it"
                );
                self.shared.metrics.closed_pubsub_limit.increment(1);
                return Err(Close);
            }
        }
        if unsent > self.limits.max_reply_bytes {
            warn!(
                session = self.id,
                unsent_bytes = unsent,
                limit = self.limits.max_reply_bytes,
                read_bytes_per_sec = self.outflow.read_rate(now()),
                "client reads its replies slower than they come; closing it at max_client_reply_bytes"
            );
            self.shared.metrics.closed_reply_limit.increment(1);
            return Err(Close);
        }
        Ok(())
    }
}
