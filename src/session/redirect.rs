//! Redis Cluster redirects and retries, absorbed by the session (TOPOLOGY.md section 3): a client
//! never sees `-MOVED`/`-ASK`, and commands a node could not serve for a moment are tried again.
//!
//! In cluster mode every command leaves as a request of its own, and its pending slot keeps the
//! command's hash slot and bytes (an [`Again`]: a refcount, no copy). A reply on lane L answers the
//! first entry on L that has no reply yet (responses on a lane come in its send order; those that
//! came before their turn wait in its `early` queue). When that reply is a redirect or a retryable
//! error, the command is sent again under a *ticket*: a lane number of its own (`TICKET | n`, above
//! every node lane) carried by the reply tag, so its reply is matched to it alone, not by the new
//! node's order (where it lands behind commands already in flight). A ticket sent on a node lane's
//! connection counts in that lane's in-flight commands, which keep the connection, as any command.
//!
//! * `MOVED`: sent to the node named, the slot patched in the map (which refreshes).
//! * `ASK`: `ASKING` and the command as one request on one connection (ASKING is a one-shot
//!   connection flag: nothing may come between); the map stays.
//! * At most [`MAX_REDIRECTS`], then the client gets the last one as a `-TRYAGAIN` of respipe's
//!   (never node addresses): e.g. a multi-key command whose keys are split by a migration
//!   bounces between `ASK` and `TRYAGAIN` until the slot has moved.
//! * `TRYAGAIN`, `CLUSTERDOWN` (the map refreshed), `LOADING`, `READONLY` (a primary demoted: the
//!   map refreshed), and a node respipe could not reach (the command was never written): sent
//!   again after a pause (25 ms doubling to 100 ms; a timer wakes the session with
//!   [`Response::Wake`]), to the slot's owner then, within `command_timeout` of the first redirect
//!   or retry and at most [`MAX_RETRIES`] times; past it the client gets the last error. A command
//!   lost with its connection may have run: never sent again.
//!
//! Order: a ticket leaves (`release`) only once no earlier command of the session for its slot is
//! unanswered anywhere but where it goes, so commands sent again keep command order. The
//! **redirect fence** does the same for new commands: before a command for slot s goes to lane X,
//! the session waits while one of its commands for slot s is unanswered anywhere but on X (another
//! lane, a ticket waiting out a pause): a pipelining client reads its own writes while slots move.
//! When everything the session has in flight is on X, nothing is looked at. What no proxy can undo:
//! commands already on a node behind one that node refuses for a moment (`TRYAGAIN`, `LOADING`)
//! run there before the refused one is retried.
//!
//! A `MOVED`/`ASK` on a dedicated connection (a transaction) is not followed: the client gets a
//! `-TRYAGAIN` saying why, never node addresses (in a transaction Redis then aborts it at `EXEC`).
//! A blocking command alone on its lease follows its slot to the new node (`blocked.rs`).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use crate::cluster::{self, Source};
use crate::command::{self, Args, Shape};
use crate::config::Endpoint;
use crate::metrics;
use crate::reply::{self, ErrorReply, Lane, RedisError, Response};
use crate::resp::ReplyScanner;
use crate::upstream::{Request, UpstreamHandle};

use super::{Close, Pending, Route, Session};

/// Set in a ticket's lane number: node lanes are below [`cluster::MAX_NODES`].
pub(super) const TICKET: Lane = 0x8000;
/// Redirects one command follows; the next one reaches the client.
pub(super) const MAX_REDIRECTS: u8 = 5;
/// Retries of one command at most (each also within `command_timeout`).
const MAX_RETRIES: u8 = 30;
/// The first pause before a retry; doubled per retry up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(25);
/// The longest pause before a retry.
const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// `ASKING` as a request.
pub(super) const ASKING: &[u8] = b"*1\r\n$6\r\nASKING\r\n";

/// What a cluster command needs to be sent again.
#[derive(Debug, Clone)]
pub(super) struct Again {
    /// Its hash slot.
    pub(super) slot: u16,
    /// The request as the client sent it.
    pub(super) bytes: Bytes,
}

/// A command sent again, its reply matched by its own lane number.
struct Ticket {
    id: Lane,
    again: Again,
    stage: Stage,
    /// Reply frames to drop before the command's own (`ASKING`'s `+OK`).
    skip: u32,
    redirects: u8,
    retries: u8,
    /// The first redirect or retry: retries stay within `command_timeout` of it.
    since: Instant,
}

/// Where a ticket's command is.
enum Stage {
    /// Waiting out a pause before a retry; a timer's [`Response::Wake`] ends it.
    Paused,
    /// To be sent, in command order behind the session's earlier commands for its slot: to `to`
    /// (after `ASKING` for an `ask`), or to the slot's owner then (`None`).
    Ready { to: Option<Lane>, ask: bool },
    /// In flight on this node lane's connection (counted in the lane's `inflight`); `None`: a task
    /// waits for room in the connection's full queue.
    Sent(Option<Lane>),
    /// Its reply is here.
    Done(Response),
}

/// The session's tickets.
#[derive(Default)]
pub(super) struct Tickets {
    list: Vec<Ticket>,
    /// The next ticket number (below `TICKET`).
    next: Lane,
}

/// What a node's one-frame error asks for.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// `-MOVED slot host:port`: the slot lives there now.
    Moved { slot: u16, node: Node },
    /// `-ASK slot host:port`: this key is there, for this command only.
    Ask { slot: u16, node: Node },
    /// The node cannot serve it now: try again after a pause (the metric's reason).
    Retry(&'static str),
}

/// A node as a redirect names it; an empty host is the node that answered.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    host: String,
    port: u16,
}

/// Where a pending command (or part of a split one) is in `pending`.
#[derive(Debug, Clone, Copy)]
struct At {
    index: usize,
    part: Option<usize>,
}

/// True for a ticket's lane number.
pub(super) fn is_ticket(lane: Lane) -> bool {
    lane & TICKET != 0
}

/// The hash slot of a request's first key, if it has keys.
pub(super) fn slot_of(request: &[u8]) -> Option<u16> {
    let args = Args::Resp(request);
    let name = args.get(0)?;
    let key = command::keys(name, args).iter().next()?;
    Some(cluster::key_slot(key))
}

impl Session {
    /// True when the session's upstream is a Redis Cluster.
    pub(super) fn clustered(&self) -> bool {
        self.pool.layout().cluster().is_some()
    }

    /// The slot of a command `send` is about to send, when it can be sent again (a cluster, one
    /// command answered by one frame on the shared pool); `None` otherwise.
    pub(super) fn resendable(
        &self,
        bytes: &[u8],
        count: u32,
        route: Route,
        plain: bool,
    ) -> Option<u16> {
        let shared = route == Route::Current && self.lease.is_none();
        (plain && shared && count == 1 && self.clustered())
            .then(|| slot_of(bytes))
            .flatten()
    }

    /// `forward_plain` for a cluster: every plain command at the front of the read buffer leaves
    /// as a request of its own (one command is what a redirect sends again), keeping its slot and
    /// bytes. True when nothing but a partial request is left; false when `on_input` must handle
    /// the rest (another command, a command behind the redirect fence, a change of connection,
    /// a full queue).
    pub(super) fn forward_plain_cluster(&mut self) -> Result<bool, Close> {
        loop {
            if self.owes_too_much(0) {
                self.held = !self.inbuf.is_empty();
                return Ok(true);
            }
            // A complete frame (or an error) leaves the scanner idle: `on_input` rescans it.
            let frame = match self.scanner.scan(&self.inbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(true),
                Err(_) => return Ok(false),
            };
            let Some((lane, slot)) = self.run_lane(0, &frame) else {
                return Ok(false);
            };
            self.lane = lane;
            if slot.is_some_and(|slot| self.fenced(slot, lane)) {
                return Ok(false);
            }
            let Some(handle) = self.settled_route() else {
                return Ok(false);
            };
            let Some(permit) = handle.try_reserve() else {
                return Ok(false);
            };
            let bytes = self.inbuf.split_to(frame.len).freeze();
            self.client
                .ran(&bytes[frame.name.clone()], Args::Resp(&bytes));
            self.owe(1, true);
            if let Some(slot) = slot {
                let bytes = bytes.clone();
                self.keep(Again { slot, bytes });
            }
            permit.send(self.request(bytes, 1, false, Shape::One));
        }
    }

    /// Keeps what the command just owed needs to be sent again.
    pub(super) fn keep(&mut self, again: Again) {
        if let Some(Pending::Upstream { again: kept, .. }) = self.pending.back_mut() {
            *kept = Some(again);
        }
    }

    /// Waits while a command of this session for one of the slots is in flight anywhere but the
    /// lane paired with it (the redirect fence).
    pub(super) async fn fence(&mut self, slots: &[(Lane, u16)]) -> Result<(), Close> {
        while slots.iter().any(|&(lane, slot)| self.fenced(slot, lane)) {
            let (lane, response) = self.rx.recv().await;
            self.receive(lane, response)?;
        }
        Ok(())
    }

    /// True when a command for `slot` is in flight elsewhere than `lane`.
    pub(super) fn fenced(&self, slot: u16, lane: Lane) -> bool {
        let here = self.lanes.get(usize::from(lane)).map_or(0, |l| l.inflight);
        here != self.inflight && self.unresolved(self.pending.len(), None, slot, lane)
    }

    /// True when an entry before `index` (and before part `part` of entry `index`) is a command
    /// for `slot` not answered yet anywhere but on `lane`'s connection.
    fn unresolved(&self, index: usize, part: Option<usize>, slot: u16, lane: Lane) -> bool {
        let elsewhere = |on: Lane| {
            if !is_ticket(on) {
                return on != lane;
            }
            self.ticket(on).is_some_and(|t| match t.stage {
                Stage::Sent(node) => node != Some(lane),
                Stage::Done(_) => false,
                Stage::Paused | Stage::Ready { .. } => true,
            })
        };
        let parts_before = part.map_or(0, |p| p);
        self.pending
            .iter()
            .take(index + usize::from(part.is_some()))
            .enumerate()
            .any(|(i, pending)| match pending {
                Pending::Upstream {
                    lane: on,
                    again: Some(again),
                    ..
                } => i < index && again.slot == slot && elsewhere(*on),
                Pending::Merge(gathering) => {
                    let parts = if i < index {
                        gathering.parts.len()
                    } else {
                        parts_before
                    };
                    (gathering.parts.iter().zip(&gathering.again))
                        .take(parts)
                        .any(|((on, sent), again)| {
                            sent.is_none()
                                && again.as_ref().is_some_and(|a| a.slot == slot)
                                && elsewhere(*on)
                        })
                }
                _ => false,
            })
    }

    /// A one-frame error on node lane `lane` in cluster mode: a redirect or retryable error for a
    /// command that can be sent again is taken (true); a `MOVED`/`ASK` that cannot be followed is
    /// rewritten into respipe's own error.
    pub(super) fn absorbed(&mut self, lane: Lane, response: &mut Response) -> bool {
        let Some(verdict) = error_line(response).and_then(verdict) else {
            return false;
        };
        let at = self.answered_on(lane);
        let leased = self
            .lease
            .as_ref()
            .is_some_and(|lease| lease.lane() == lane);
        let again = at.filter(|_| !leased).and_then(|at| self.again_at(at));
        let (Some(at), Some(again)) = (at, again) else {
            if let (Some(at), Verdict::Moved { slot, node } | Verdict::Ask { slot, node }) =
                (at.filter(|_| leased), &verdict)
            {
                // A blocking command may follow its slot (`blocked.rs`).
                let ask = matches!(verdict, Verdict::Ask { .. });
                let cluster = self.pool.layout().cluster().cloned();
                let to = cluster.and_then(|cluster| node_lane(&cluster, node, lane));
                if let Some(taken) = to
                    .and_then(|to| self.follow_blocked(at.index, *slot, (to, ask), lane, response))
                {
                    return taken;
                }
            }
            if !matches!(verdict, Verdict::Retry(_)) {
                *response = Response::Replies {
                    bytes: ErrorReply::RedirectOnLease.line(),
                    count: 1,
                };
            }
            return false;
        };
        let Some(error) = error_line(response).map(Bytes::copy_from_slice) else {
            return false;
        };
        let id = self.new_ticket(again);
        match (self.pending.get_mut(at.index), at.part) {
            (Some(Pending::Upstream { lane: on, .. }), None) => *on = id,
            (Some(Pending::Merge(gathering)), Some(part)) => gathering.parts[part].0 = id,
            _ => {}
        }
        self.off_lane(lane);
        self.follow(id, verdict, error, lane);
        true
    }

    /// A response for ticket `id`.
    pub(super) fn ticket_response(&mut self, id: Lane, response: Response) -> Result<(), Close> {
        let Some(ticket) = self.ticket_mut(id) else {
            // Its command is answered already: nothing waits for it.
            return Ok(());
        };
        let response = match response {
            Response::Wake => {
                if matches!(ticket.stage, Stage::Paused) {
                    ticket.stage = Stage::Ready {
                        to: None,
                        ask: false,
                    };
                }
                return self.settle();
            }
            Response::Replies { bytes, count } if ticket.skip > 0 => {
                let skipped = ticket.skip.min(count);
                ticket.skip -= skipped;
                if skipped == count {
                    return Ok(());
                }
                Response::Replies {
                    bytes: after_frames(bytes, skipped),
                    count: count - skipped,
                }
            }
            Response::Failed { error, .. } => Response::Failed { count: 1, error },
            Response::Stream { .. } => return Ok(()),
            response => response,
        };
        let node = match ticket.stage {
            Stage::Sent(node) => node,
            _ => None,
        };
        if let Some(node) = node {
            self.off_lane(node);
        }
        let verdict = error_line(&response).and_then(verdict);
        match (verdict, error_line(&response).map(Bytes::copy_from_slice)) {
            (Some(verdict), Some(error)) => self.follow(id, verdict, error, node.unwrap_or(0)),
            _ => self.set_stage(id, Stage::Done(response)),
        }
        self.settle()
    }

    /// The reply of ticket `id` if it is here: the ticket is done.
    pub(super) fn take_ticket(&mut self, id: Lane) -> Option<Response> {
        let i = self.tickets.list.iter().position(|t| t.id == id)?;
        if !matches!(self.tickets.list[i].stage, Stage::Done(_)) {
            return None;
        }
        match self.tickets.list.swap_remove(i).stage {
            Stage::Done(response) => Some(response),
            _ => None,
        }
    }

    /// True when ticket `id`'s reply is here.
    pub(super) fn ticket_ready(&self, id: Lane) -> bool {
        self.ticket(id)
            .is_some_and(|t| matches!(t.stage, Stage::Done(_)))
    }

    /// Sends the tickets whose turn has come: each once no earlier command of the session for its
    /// slot is unanswered anywhere but where it goes (so they leave in command order). True when
    /// one was sent or answered.
    pub(super) fn release(&mut self) -> bool {
        if !self
            .tickets
            .list
            .iter()
            .any(|t| matches!(t.stage, Stage::Ready { .. }))
        {
            return false;
        }
        let mut released = false;
        for index in 0..self.pending.len() {
            let ids: Vec<(Option<usize>, Lane)> = match &self.pending[index] {
                Pending::Upstream { lane, .. } => vec![(None, *lane)],
                Pending::Merge(gathering) => (gathering.parts.iter().enumerate())
                    .map(|(part, (lane, _))| (Some(part), *lane))
                    .collect(),
                _ => Vec::new(),
            };
            for (part, id) in ids.into_iter().filter(|(_, id)| is_ticket(*id)) {
                let Some(ticket) = self.ticket(id) else {
                    continue;
                };
                let Stage::Ready { to, ask } = ticket.stage else {
                    continue;
                };
                let slot = ticket.again.slot;
                let owner = || {
                    let cluster = self.pool.layout().cluster()?;
                    let owner = cluster.map().owner(slot);
                    if owner.is_none() {
                        cluster.refresh(Source::Uncovered);
                    }
                    owner
                };
                let Some(lane) = to.or_else(owner) else {
                    self.set_stage(id, Stage::Done(unserved()));
                    released = true;
                    continue;
                };
                if !self.unresolved(index, part, slot, lane) {
                    self.send_ticket(id, lane, ask);
                    released = true;
                }
            }
        }
        released
    }

    /// Acts on a redirect or retryable `error` for ticket `id` (its command's node answered on
    /// `from`).
    fn follow(&mut self, id: Lane, verdict: Verdict, error: Bytes, from: Lane) {
        let (Some(cluster), Some(ticket)) =
            (self.pool.layout().cluster().cloned(), self.ticket(id))
        else {
            return self.answer_ticket(id, error);
        };
        let (redirects, retries, since) = (ticket.redirects, ticket.retries, ticket.since);
        let (slot, node, ask) = match verdict {
            Verdict::Moved { slot, node } => (slot, node, false),
            Verdict::Ask { slot, node } => (slot, node, true),
            Verdict::Retry(reason) => {
                let pause = BACKOFF_MIN
                    .saturating_mul(1 << retries.min(8))
                    .min(BACKOFF_MAX);
                let deadline = self.limits.command_timeout.map(|limit| since + limit);
                if retries >= MAX_RETRIES || deadline.is_some_and(|d| Instant::now() + pause > d) {
                    return self.answer_ticket(id, error);
                }
                if let Some(ticket) = self.ticket_mut(id) {
                    ticket.retries += 1;
                    ticket.stage = Stage::Paused;
                }
                metrics::cluster_retry(reason);
                if matches!(reason, "clusterdown" | "readonly") {
                    cluster.refresh(Source::ClusterDown);
                }
                let wake = self.tx.on_lane(id);
                tokio::spawn(async move {
                    tokio::time::sleep(pause).await;
                    let _ = wake.send(Response::Wake);
                });
                return;
            }
        };
        if redirects >= MAX_REDIRECTS {
            let error = ErrorReply::TooManyRedirects { slot }.line();
            return self.answer_ticket(id, error);
        }
        metrics::cluster_redirect(if ask { "ask" } else { "moved" });
        let Some(lane) = node_lane(&cluster, &node, from) else {
            return self.answer_ticket(id, error);
        };
        if !ask {
            cluster.moved(slot, lane);
        }
        if let Some(ticket) = self.ticket_mut(id) {
            ticket.redirects += 1;
            ticket.stage = Stage::Ready {
                to: Some(lane),
                ask,
            };
        }
    }

    /// Sends ticket `id`'s command to `lane` now (after `ASKING` for an `ask`); when the
    /// connection's queue has no room, a task waits for room (within `command_timeout`).
    fn send_ticket(&mut self, id: Lane, lane: Lane, ask: bool) {
        let Some(ticket) = self.ticket(id) else {
            return;
        };
        let (command, since) = (ticket.again.bytes.clone(), ticket.since);
        let bytes = if ask {
            let mut both = BytesMut::with_capacity(ASKING.len() + command.len());
            both.put_slice(ASKING);
            both.put_slice(&command);
            both.freeze()
        } else {
            command
        };
        let handle = {
            let (pool, session) = (self.pool.clone(), self.id);
            self.lane_state(lane)
                .conn
                .get_or_insert_with(|| pool.route(lane, session))
                .clone()
        };
        let request = Request {
            bytes,
            count: 1 + u32::from(ask),
            shape: Shape::One,
            reply: self.tx.on_lane(id),
            stream: false,
        };
        let node = match handle.try_send(request) {
            Ok(()) => {
                self.lane_state(lane).inflight += 1;
                Some(lane)
            }
            Err(full_or_closed) => {
                // Not on the lane's connection in order: elsewhere, for the fence.
                let state = self.lane_state(lane);
                if state.inflight == 0 {
                    state.conn = None;
                }
                let request = full_or_closed.into_inner();
                let timeout = self.limits.command_timeout;
                tokio::spawn(send_within(handle, request, timeout, since));
                None
            }
        };
        if let Some(ticket) = self.ticket_mut(id) {
            ticket.stage = Stage::Sent(node);
            ticket.skip = u32::from(ask);
        }
    }

    /// Ticket `id`'s command gets `error` as its reply.
    fn answer_ticket(&mut self, id: Lane, error: Bytes) {
        let bytes = error;
        self.set_stage(id, Stage::Done(Response::Replies { bytes, count: 1 }));
    }

    fn set_stage(&mut self, id: Lane, stage: Stage) {
        if let Some(ticket) = self.ticket_mut(id) {
            ticket.stage = stage;
        }
    }

    /// A command on node lane `lane` left it (its reply came, it is sent elsewhere now).
    pub(super) fn off_lane(&mut self, lane: Lane) {
        let state = self.lane_state(lane);
        state.inflight = state.inflight.saturating_sub(1);
        if state.inflight == 0 {
            state.conn = None;
        }
    }

    /// The entry (or part) the next response on node lane `lane` answers: the first on `lane`
    /// after those whose responses wait in its early queue.
    fn answered_on(&self, lane: Lane) -> Option<At> {
        let mut skip = self
            .lanes
            .get(usize::from(lane))
            .map_or(0, |l| l.early.len());
        for (index, pending) in self.pending.iter().enumerate() {
            match pending {
                Pending::Upstream { lane: on, .. } | Pending::Check(_, on) if *on == lane => {
                    if skip == 0 {
                        return Some(At { index, part: None });
                    }
                    skip -= 1;
                }
                Pending::Merge(gathering) => {
                    for (part, (on, sent)) in gathering.parts.iter().enumerate() {
                        if *on == lane && sent.is_none() {
                            if skip == 0 {
                                return Some(At {
                                    index,
                                    part: Some(part),
                                });
                            }
                            skip -= 1;
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// What the command at `at` needs to be sent again, if it can be.
    fn again_at(&self, at: At) -> Option<Again> {
        match (self.pending.get(at.index)?, at.part) {
            (
                Pending::Upstream {
                    again, count: 1, ..
                },
                None,
            ) => again.clone(),
            (Pending::Merge(gathering), Some(part)) => gathering.again.get(part)?.clone(),
            _ => None,
        }
    }

    /// A new ticket for a command that is sent again.
    fn new_ticket(&mut self, again: Again) -> Lane {
        let tickets = &mut self.tickets;
        let id = loop {
            let id = TICKET | tickets.next;
            tickets.next = (tickets.next + 1) % TICKET;
            if !tickets.list.iter().any(|t| t.id == id) {
                break id;
            }
        };
        tickets.list.push(Ticket {
            id,
            again,
            stage: Stage::Paused,
            skip: 0,
            redirects: 0,
            retries: 0,
            since: Instant::now(),
        });
        id
    }

    fn ticket(&self, id: Lane) -> Option<&Ticket> {
        self.tickets.list.iter().find(|t| t.id == id)
    }

    fn ticket_mut(&mut self, id: Lane) -> Option<&mut Ticket> {
        self.tickets.list.iter_mut().find(|t| t.id == id)
    }
}

/// Puts a request in a connection's queue, waiting for room until `timeout` after `since`; a
/// request that cannot go is answered with the reason.
pub(super) async fn send_within(
    handle: UpstreamHandle,
    request: Request,
    timeout: Option<Duration>,
    since: Instant,
) {
    let reply = request.reply.clone();
    let sent = match timeout {
        Some(limit) => tokio::time::timeout_at(since + limit, handle.send(request)).await,
        None => Ok(handle.send(request).await),
    };
    let error = match sent {
        Ok(Ok(())) => return,
        Ok(Err(_)) => ErrorReply::ShuttingDown.line(),
        Err(_) => ErrorReply::QueueTimeout {
            addr: handle.addr(),
            timeout: timeout.unwrap_or_default(),
        }
        .line(),
    };
    let _ = reply.send(Response::Failed { count: 1, error });
}

/// The node lane of a redirect's `node` (`from`: the lane of the node that answered).
fn node_lane(cluster: &cluster::Cluster, node: &Node, from: Lane) -> Option<Lane> {
    let host = match node.host.as_str() {
        "" => match cluster.endpoint(from)?.endpoint {
            Endpoint::Tcp { host, .. } => host,
            _ => return None,
        },
        host => host.to_owned(),
    };
    let port = node.port;
    cluster.lane_of(Endpoint::Tcp { host, port })
}

/// The answer for a command whose slot no node serves now.
fn unserved() -> Response {
    let error = RedisError::SlotNotServed.line();
    Response::Failed { count: 1, error }
}

/// A one-frame error reply's line, or a failure's.
fn error_line(response: &Response) -> Option<&[u8]> {
    match response {
        Response::Replies { bytes, count: 1 } if bytes.first() == Some(&b'-') => Some(bytes),
        Response::Failed { error, .. } => Some(error),
        _ => None,
    }
}

/// What an error line asks for, if it is a redirect or an error worth a retry.
fn verdict(line: &[u8]) -> Option<Verdict> {
    if reply::never_sent(line) {
        return Some(Verdict::Retry("connection"));
    }
    let line = line.strip_prefix(b"-")?;
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let (word, rest) = line.split_at(end);
    let redirect = |rest: &[u8]| -> Option<(u16, Node)> {
        let text = std::str::from_utf8(rest).ok()?.trim();
        let (slot, addr) = text.split_once(' ')?;
        let slot: u16 = slot.parse().ok()?;
        let (host, port) = addr.rsplit_once(':')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port.parse().ok()?;
        (usize::from(slot) < cluster::SLOTS).then(|| {
            let host = host.to_owned();
            (slot, Node { host, port })
        })
    };
    match word {
        b"MOVED" => redirect(rest).map(|(slot, node)| Verdict::Moved { slot, node }),
        b"ASK" => redirect(rest).map(|(slot, node)| Verdict::Ask { slot, node }),
        b"TRYAGAIN" => Some(Verdict::Retry("tryagain")),
        b"CLUSTERDOWN" => Some(Verdict::Retry("clusterdown")),
        b"LOADING" => Some(Verdict::Retry("loading")),
        b"READONLY" => Some(Verdict::Retry("readonly")),
        _ => None,
    }
}

/// `bytes` without its first `frames` reply frames (all of it if it has fewer, or they cannot be
/// read).
fn after_frames(bytes: Bytes, frames: u32) -> Bytes {
    let mut scanner = ReplyScanner::new(crate::resp::DEFAULT_MAX_REPLY_DEPTH);
    let mut at = 0;
    for _ in 0..frames {
        match scanner.scan(&bytes[at..]) {
            Ok(Some(frame)) => at += frame.len,
            _ => return Bytes::new(),
        }
    }
    bytes.slice(at..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: u16) -> Node {
        Node {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn moved_and_ask_name_the_slot_and_the_node() {
        // An empty host is the node that answered; an IPv6 address keeps its colons.
        let cases: [(&[u8], bool, u16, &str, u16); 4] = [
            (
                b"-MOVED 3999 127.0.0.1:6381\r\n",
                true,
                3999,
                "127.0.0.1",
                6381,
            ),
            (
                b"-ASK 16383 redis-2.example:7000\r\n",
                false,
                16383,
                "redis-2.example",
                7000,
            ),
            (b"-MOVED 1 :6380\r\n", true, 1, "", 6380),
            (b"-ASK 2 ::1:6380\r\n", false, 2, "::1", 6380),
        ];
        for (line, moved, slot, host, port) in cases {
            let node = node(host, port);
            let want = match moved {
                true => Verdict::Moved { slot, node },
                false => Verdict::Ask { slot, node },
            };
            assert_eq!(verdict(line), Some(want));
        }
    }

    #[test]
    fn malformed_redirects_are_not_followed() {
        for line in [
            &b"-MOVED 16384 127.0.0.1:6381\r\n"[..],
            b"-MOVED x 127.0.0.1:6381\r\n",
            b"-MOVED 12 127.0.0.1\r\n",
            b"-MOVED 12\r\n",
            b"-ASK 12 h:port\r\n",
            b"+MOVED 12 h:1\r\n",
            b"-MOVEDX 12 h:1\r\n",
        ] {
            assert_eq!(verdict(line), None, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn retryable_errors_say_why() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                "tryagain",
            ),
            (b"-CLUSTERDOWN The cluster is down\r\n", "clusterdown"),
            (
                b"-LOADING Redis is loading the dataset in memory\r\n",
                "loading",
            ),
            (
                b"-READONLY You can't write against a read only replica.\r\n",
                "readonly",
            ),
        ];
        for (line, reason) in cases {
            assert_eq!(verdict(line), Some(Verdict::Retry(reason)));
        }
        assert_eq!(verdict(b"-ERR wrong number of arguments\r\n"), None);
        assert_eq!(verdict(b"-WRONGTYPE Operation\r\n"), None);
    }

    #[test]
    fn only_never_sent_failures_are_retried() {
        let err = crate::error::UpstreamError::Io {
            addr: "h:1".into(),
            source: std::sync::Arc::new(std::io::Error::other("x")),
        };
        assert_eq!(
            verdict(&ErrorReply::UpstreamUnavailable(&err).line()),
            Some(Verdict::Retry("connection"))
        );
        assert_eq!(verdict(&ErrorReply::UpstreamLost(&err).line()), None);
    }

    #[test]
    fn asking_reply_is_dropped_from_a_joined_response() {
        let both = Bytes::from_static(b"+OK\r\n$3\r\nabc\r\n");
        assert_eq!(&after_frames(both.clone(), 1)[..], b"$3\r\nabc\r\n");
        assert_eq!(&after_frames(both, 0)[..], b"+OK\r\n$3\r\nabc\r\n");
    }

    #[test]
    fn slot_of_a_request_is_its_first_keys() {
        assert_eq!(
            slot_of(b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n"),
            Some(cluster::key_slot(b"foo"))
        );
        assert_eq!(slot_of(b"*1\r\n$4\r\nPING\r\n"), None);
    }
}
