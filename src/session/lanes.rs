//! The session's reorder buffer, and its commands on an upstream of several servers (shards).
//!
//! Every request is sent on a *lane*: the upstream server it goes to. Per lane the session keeps
//! one shared connection while commands are in flight there, so a client's commands for one server
//! (hence for one key) run in the order it sent them; across lanes replies arrive in any order.
//! `pending` is the reorder buffer: one slot per command, in command order. A reply whose slot is
//! not at the front yet waits in its lane's `early` queue; the front slots are written to the client
//! as soon as they are complete. With one server there is one lane, its replies always arrive in
//! command order, and none of this costs anything.
//!
//! For a sharded upstream the routing step ([`crate::route`]) places each command: one server, parts
//! on several servers merged into one reply (`MGET`, `DEL`...), every server (`DBSIZE`, `KEYS`...),
//! a local answer, or a refusal (`-CROSSSLOT`). A dedicated connection (a transaction, a blocking
//! command, a subscription) is taken on the server of the command's first key; `MULTI` waits, answered
//! locally, until a command of the transaction says which server that is.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::cluster::Source;
use crate::command::{Args, Kind, Shape};
use crate::reply::{self, ErrorReply, Lane, RedisError, Response};
use crate::route::{self, Merge, Part, Plan};
use crate::upstream::UpstreamHandle;

use super::redirect::{self, Again};
use super::{Close, Pending, Route, Session};

/// The session on one upstream server.
#[derive(Default)]
pub(super) struct LaneState {
    /// The shared connection in use while commands are in flight on this server.
    pub(super) conn: Option<UpstreamHandle>,
    /// Commands in flight on this server.
    pub(super) inflight: usize,
    /// Replies that arrived before their slot reached the front of the reorder buffer.
    pub(super) early: VecDeque<Response>,
}

/// A slot waiting for one reply from each of several servers.
pub(super) struct Gathering {
    /// Per part: its server (a ticket's number once sent again), and its reply if it never left
    /// (a refusal, a full queue).
    pub(super) parts: Vec<(Lane, Option<Bytes>)>,
    /// Per part of a cluster command split by slot: what it needs to be sent again.
    pub(super) again: Vec<Option<Again>>,
    merge: Merge,
    shown: bool,
}

/// `MULTI` answered and not sent yet (sharded upstream, no dedicated connection held).
pub(super) struct Deferred {
    /// The client's `MULTI`, sent on the dedicated connection the transaction's first command picks.
    multi: Bytes,
    /// A command of the transaction was refused: `EXEC` aborts.
    aborted: bool,
}

/// What a command of a sharded session does after the routing step.
pub(super) enum Placed {
    /// Goes on as with one server, on `Session::lane`.
    Forward(Bytes),
    /// Handled here.
    Done,
}

impl Session {
    /// The session's state on `lane`.
    pub(super) fn lane_state(&mut self, lane: Lane) -> &mut LaneState {
        let i = usize::from(lane);
        if self.lanes.len() <= i {
            let servers = self.pool.layout().servers();
            self.lanes.resize_with(servers.max(i + 1), Default::default);
        }
        &mut self.lanes[i]
    }

    /// Takes a response from `lane`: at once when its slot is at the front of the reorder buffer,
    /// else when the slots before it are complete.
    pub(super) fn receive(&mut self, lane: Lane, mut response: Response) -> Result<(), Close> {
        if redirect::is_ticket(lane) {
            return self.ticket_response(lane, response);
        }
        let error = match &response {
            Response::Replies { bytes, count: 1 } => bytes.first() == Some(&b'-'),
            Response::Failed { .. } => true,
            _ => false,
        };
        if error && self.clustered() && self.absorbed(lane, &mut response) {
            return self.settle();
        }
        if self.lanes.len() <= 1 && !self.clustered() {
            // One server: replies arrive in command order.
            return self.on_response(response);
        }
        // A cluster's lanes grow as nodes are seen (a lease's stream may be the first on one).
        let early = &self.lane_state(lane).early;
        let its_turn = early.is_empty()
            && match self.pending.front() {
                Some(Pending::Upstream { lane: l, .. } | Pending::Check(_, l)) => *l == lane,
                Some(Pending::Merge(_)) => false,
                // A stream's frame, or a reply nothing waits for (`on_response` closes the client).
                _ => true,
            };
        if its_turn {
            self.on_response(response)?;
        } else {
            self.lanes[usize::from(lane)].early.push_back(response);
        }
        self.settle()
    }

    /// Completes the front slots whose replies have arrived, and sends the cluster commands to
    /// send again whose turn has come (an answer may be the one a command to send again waited
    /// for; one sent again may have been answered at once).
    pub(super) fn settle(&mut self) -> Result<(), Close> {
        loop {
            let released = self.release();
            let owed = self.pending.len();
            self.settle_front()?;
            if !released && self.pending.len() == owed {
                return Ok(());
            }
        }
    }

    /// Completes the front slots whose replies have arrived.
    fn settle_front(&mut self) -> Result<(), Close> {
        loop {
            let lane = match self.pending.front() {
                Some(Pending::Upstream { lane, .. } | Pending::Check(_, lane)) => *lane,
                Some(Pending::Merge(gathering)) => {
                    // A lane may carry several parts (a cluster splits by slot): each needs a reply.
                    let ready = gathering.parts.iter().enumerate().all(|(i, (lane, sent))| {
                        if redirect::is_ticket(*lane) {
                            return sent.is_some() || self.ticket_ready(*lane);
                        }
                        let before = gathering.parts[..i]
                            .iter()
                            .filter(|(l, s)| l == lane && s.is_none())
                            .count();
                        sent.is_some() || self.lanes[usize::from(*lane)].early.len() > before
                    });
                    if !ready {
                        return Ok(());
                    }
                    self.merged()?;
                    continue;
                }
                _ => {
                    // Nothing owed from upstream: only a stream's frames may be waiting.
                    for lane in 0..self.lanes.len() {
                        while let Some(response) = self.lanes[lane].early.pop_front() {
                            self.on_response(response)?;
                        }
                    }
                    return Ok(());
                }
            };
            let next = if redirect::is_ticket(lane) {
                self.take_ticket(lane)
            } else {
                self.lanes[usize::from(lane)].early.pop_front()
            };
            let Some(response) = next else {
                return Ok(());
            };
            self.on_response(response)?;
        }
    }

    /// The front slot is a merge whose parts have all answered: writes the merged reply.
    fn merged(&mut self) -> Result<(), Close> {
        let Some(Pending::Merge(gathering)) = self.pending.pop_front() else {
            return Ok(());
        };
        let mut replies = Vec::with_capacity(gathering.parts.len());
        for (lane, sent) in gathering.parts {
            let reply = match sent {
                Some(reply) => reply,
                None if redirect::is_ticket(lane) => {
                    self.inflight -= 1;
                    match self.take_ticket(lane) {
                        Some(Response::Replies { bytes, .. }) => bytes,
                        Some(Response::Failed { error, .. }) => error,
                        _ => ErrorReply::UnexpectedShardReply.line(),
                    }
                }
                None => {
                    self.inflight -= 1;
                    let state = self.lane_state(lane);
                    state.inflight -= 1;
                    if state.inflight == 0 {
                        state.conn = None;
                    }
                    match state.early.pop_front() {
                        Some(Response::Replies { bytes, .. }) => bytes,
                        Some(Response::Failed { error, .. }) => error,
                        _ => ErrorReply::UnexpectedShardReply.line(),
                    }
                }
            };
            replies.push(reply);
        }
        let merged = gathering.merge.merge(&replies);
        self.shared.metrics.forwarded.increment(1);
        self.outflow.replies(merged.len(), 1);
        if gathering.shown {
            self.out.push(merged);
        }
        self.release_locals();
        self.check_reply_limit()
    }

    /// Sends the parts of a split command (or the same command to several servers) and owes the
    /// client their merged reply.
    async fn send_parts(&mut self, parts: Vec<Part>, merge: Merge) -> Result<(), Close> {
        let shown = self.state.take_shown();
        // A cluster command split by slot: each part can be sent again, behind the fence.
        let again: Vec<Option<Again>> = match self.clustered() {
            true => parts
                .iter()
                .map(|part| {
                    let (slot, bytes) = (part.slot?, part.bytes.clone());
                    Some(Again { slot, bytes })
                })
                .collect(),
            false => Vec::new(),
        };
        let fences: Vec<(Lane, u16)> = (parts.iter().zip(&again))
            .filter_map(|(part, again)| Some((part.lane, again.as_ref()?.slot)))
            .collect();
        self.fence(&fences).await?;
        // Connections first: picking one may wait for replies in flight (a retired connection),
        // which must not wait for this command's own parts.
        let placed_on = self.pool.layout().clone();
        let mut routed = Vec::with_capacity(parts.len());
        for Part { lane, bytes, .. } in parts {
            self.lane = lane;
            let handle = if Arc::ptr_eq(&placed_on, self.pool.layout()) {
                self.route(Route::Current).await?
            } else {
                // A reload changed the servers while an earlier part waited.
                Err(ErrorReply::ServersChanged.line())
            };
            routed.push((lane, bytes, handle));
        }
        let mut slots = Vec::with_capacity(routed.len());
        let mut sends = Vec::new();
        for (lane, bytes, handle) in routed {
            match handle {
                Ok(handle) => {
                    self.inflight += 1;
                    let state = self.lane_state(lane);
                    state.inflight += 1;
                    state.conn.get_or_insert_with(|| handle.clone());
                    slots.push((lane, None));
                    self.lane = lane;
                    let request = self.request(bytes, 1, false, Shape::One);
                    sends.push((slots.len() - 1, lane, handle, request));
                }
                Err(line) => slots.push((lane, Some(line))),
            }
        }
        self.owed(Pending::Merge(Box::new(Gathering {
            parts: slots,
            again,
            merge,
            shown,
        })));
        for (slot, lane, handle, request) in sends {
            if let Err(error) = self.deliver(&handle, request).await {
                // Never left: its reply is the error, and nothing will come on the lane for it.
                let state = self.lane_state(lane);
                state.inflight -= 1;
                self.inflight -= 1;
                if let Some(Pending::Merge(gathering)) = self.pending.back_mut() {
                    gathering.parts[slot].1 = Some(error);
                }
            }
        }
        self.settle()
    }

    /// The routing step of a sharded session for one command (not a plain run): sets
    /// `self.lane`, or carries the command out itself (split, fan-out, local answer, refusal,
    /// a deferred `MULTI`).
    pub(super) async fn place(
        &mut self,
        kind: &Kind,
        name: &[u8],
        args: Args<'_>,
        bytes: Bytes,
    ) -> Result<Placed, Close> {
        if !self.pool.layout().is_sharded() {
            self.lane = 0;
            if self.pool.layout().replicas().is_some() {
                return self.place_read(kind, name, args, bytes).await;
            }
            return Ok(Placed::Forward(bytes));
        }
        if self.pool_outdated() && self.lease.is_none() {
            // Placed on the servers the session will use: those of the reloaded configuration.
            self.drain().await?;
            if let Err(line) = self.fresh_pool() {
                self.refuse(line).await?;
                return Ok(Placed::Done);
            }
        }
        let layout = self.pool.layout().clone();
        if let Some(why) = unsharded(kind, layout.cluster().is_some()) {
            self.refuse(ErrorReply::Unsupported { name, why }.line())
                .await?;
            return Ok(Placed::Done);
        }
        if *kind == Kind::Reset {
            self.deferred_multi = None;
        }
        if self.state.streaming.is_some() {
            // Everything goes into the stream, on its dedicated connection.
            self.lane = self.lease.as_ref().map_or(0, |lease| lease.lane());
            if layout.cluster().is_some() {
                match route::plan(&layout, name, args) {
                    // RESP3 runs any command in subscribe mode (RESP2: Redis's own refusal).
                    Plan::Answer(line) if self.state.resp3 => {
                        self.local(line);
                        return Ok(Placed::Done);
                    }
                    Plan::Lane(lane) if *kind == Kind::Subscribe && lane != self.lane => {
                        // `SSUBSCRIBE` to a shard channel of another node than the stream's.
                        let why = "to shard channels of two cluster nodes on one connection";
                        self.refuse(ErrorReply::Unsupported { name, why }.line())
                            .await?;
                        return Ok(Placed::Done);
                    }
                    _ => {}
                }
            }
            return Ok(Placed::Forward(bytes));
        }
        let plan = route::plan(&layout, name, args);
        if self.deferred_multi.is_some() {
            return self.in_deferred_multi(kind, name, plan, bytes).await;
        }
        if *kind == Kind::Multi && self.lease.is_none() && !self.state.in_multi {
            // Which server runs the transaction is known at its first command.
            self.deferred_multi = Some(Deferred {
                multi: bytes,
                aborted: false,
            });
            self.state.in_multi = true;
            self.state.queued = 0;
            self.state.changes.clear();
            self.answer(reply::OK)?;
            return Ok(Placed::Done);
        }
        if let Some(lease) = &self.lease {
            // A transaction, a WATCH or a blocking command holds a connection to one server.
            let on = lease.lane();
            return match plan {
                Plan::Lane(lane) if lane != on => self.cross_shard().await,
                Plan::Split { .. } | Plan::CrossShard => self.cross_shard().await,
                Plan::Answer(line) => self.answered(line).await,
                _ => {
                    self.lane = on;
                    Ok(Placed::Forward(bytes))
                }
            };
        }
        let plain = *kind == Kind::Plain;
        match plan {
            Plan::Lane(lane) => self.lane = lane,
            Plan::Keyless => self.lane = route::keyless_lane(&layout),
            Plan::Split { parts, merge } if plain => {
                self.send_parts(parts, merge).await?;
                return Ok(Placed::Done);
            }
            Plan::All(merge) if plain => {
                let parts = layout
                    .primaries()
                    .into_iter()
                    .map(|lane| Part {
                        lane,
                        bytes: bytes.clone(),
                        slot: None,
                    })
                    .collect();
                self.send_parts(parts, merge).await?;
                return Ok(Placed::Done);
            }
            Plan::Rewrite { lane, bytes, merge } if plain => {
                let part = Part {
                    lane,
                    bytes,
                    slot: None,
                };
                self.send_parts(vec![part], merge).await?;
                return Ok(Placed::Done);
            }
            Plan::Local(answer) if plain => {
                self.answer(answer)?;
                return Ok(Placed::Done);
            }
            Plan::Refuse(line) => {
                let unserved = || line == RedisError::SlotNotServed.line();
                if let Some(cluster) = layout.cluster().filter(|_| unserved()) {
                    cluster.refresh(Source::Uncovered);
                }
                self.refuse(line).await?;
                return Ok(Placed::Done);
            }
            Plan::Answer(line) => return self.answered(line).await,
            Plan::CrossShard | Plan::Split { .. } => return self.cross_shard().await,
            // Stateful commands that would fan out or be answered locally go where keyless ones do.
            Plan::All(_) | Plan::Rewrite { .. } | Plan::Local(_) => {
                self.lane = route::keyless_lane(&layout);
            }
        }
        Ok(Placed::Forward(bytes))
    }

    /// A command after a deferred `MULTI`: the first one that needs a server starts the
    /// transaction there.
    async fn in_deferred_multi(
        &mut self,
        kind: &Kind,
        name: &[u8],
        plan: Plan,
        bytes: Bytes,
    ) -> Result<Placed, Close> {
        if *kind == Kind::EndMulti {
            let Some(deferred) = self.deferred_multi.take() else {
                return Ok(Placed::Done);
            };
            self.state.in_multi = false;
            let answer = match (name.eq_ignore_ascii_case(b"EXEC"), deferred.aborted) {
                (true, true) => RedisError::ExecAbort.line(),
                (true, false) => Bytes::from_static(b"*0\r\n"),
                (false, _) => reply::OK,
            };
            self.answer(answer)?;
            return Ok(Placed::Done);
        }
        let lane = match plan {
            Plan::Lane(lane) => lane,
            Plan::Keyless | Plan::All(_) | Plan::Rewrite { .. } | Plan::Local(_) => {
                route::keyless_lane(self.pool.layout())
            }
            Plan::Refuse(line) | Plan::Answer(line) => {
                if let Some(deferred) = &mut self.deferred_multi {
                    deferred.aborted = true;
                }
                self.answer(line)?;
                return Ok(Placed::Done);
            }
            Plan::Split { .. } | Plan::CrossShard => {
                if let Some(deferred) = &mut self.deferred_multi {
                    deferred.aborted = true;
                }
                self.answer(route::cross_shard(self.pool.layout()))?;
                return Ok(Placed::Done);
            }
        };
        let Some(deferred) = self.deferred_multi.take() else {
            return Ok(Placed::Done);
        };
        self.lane = lane;
        match self.route(Route::Lease).await? {
            Ok(_) => {
                // The client's MULTI, its +OK already given.
                self.send(
                    deferred.multi,
                    1,
                    Route::Current,
                    false,
                    Shape::One,
                    false,
                    None,
                )
                .await?;
                self.state.queued = 0;
                Ok(Placed::Forward(bytes))
            }
            Err(line) => {
                self.deferred_multi = Some(Deferred {
                    aborted: true,
                    ..deferred
                });
                self.answer(line)?;
                Ok(Placed::Done)
            }
        }
    }

    /// Refuses a command whose keys are on several servers (aborting a transaction it is in).
    async fn cross_shard(&mut self) -> Result<Placed, Close> {
        self.refuse(route::cross_shard(self.pool.layout())).await?;
        Ok(Placed::Done)
    }

    /// Answers a command respipe answers for the upstream ([`Plan::Answer`]); inside `MULTI` it is
    /// refused (the transaction aborts), its answer having no place in `EXEC`'s.
    async fn answered(&mut self, line: Bytes) -> Result<Placed, Close> {
        if self.state.in_multi {
            self.refuse(line).await?;
        } else {
            self.answer(line)?;
        }
        Ok(Placed::Done)
    }

    /// The lane of plain commands in a run, for a sharded session (and a cluster command's slot,
    /// as [`crate::route::lane`] gives it): `None` when the command needs more than one server, a
    /// local answer or a refusal (it then goes alone, through `place`).
    pub(super) fn plain_lane(&self, name: &[u8], args: Args<'_>) -> Option<(Lane, Option<u16>)> {
        let layout = self.pool.layout();
        if !layout.is_sharded() {
            return match layout.replicas() {
                Some(policy) => self.read_lane(policy, name, args).map(|lane| (lane, None)),
                None => Some((0, None)),
            };
        }
        if self.lease.is_some() || self.deferred_multi.is_some() {
            return None;
        }
        route::lane(layout, name, args)
    }

    /// True when the session's upstream has several servers.
    pub(super) fn sharded(&self) -> bool {
        self.pool.layout().is_sharded()
    }
}

/// Why a command cannot work on a sharded upstream (`cluster`: a Redis Cluster), if it cannot.
fn unsharded(kind: &Kind, cluster: bool) -> Option<&'static str> {
    let [sharded, cluster_why] = match kind {
        Kind::Monitor => [
            "with a sharded upstream (it would show one server only)",
            "with a Redis Cluster upstream (it would show one node only)",
        ],
        Kind::Replicate => [
            "with a sharded upstream (each server has its own replication stream)",
            "with a Redis Cluster upstream (each node has its own replication stream)",
        ],
        Kind::Tracking(true) => [
            "with a sharded upstream (tracking would see one server only)",
            "with a Redis Cluster upstream (tracking would see one node only)",
        ],
        Kind::Wait => [
            "with a sharded upstream (it counts one server's replicas)",
            "with a Redis Cluster upstream (it counts one node's replicas)",
        ],
        _ => return None,
    };
    Some(if cluster { cluster_why } else { sharded })
}
