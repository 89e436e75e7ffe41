//! Which upstream connection each command goes to, and sending it there: the routing step, the
//! shared connection in use, the dedicated connection (lease) taken and given back.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;

use crate::command::Shape;
use crate::reply::{ErrorReply, Lane, Response};
use crate::resp;
use crate::upstream::{Request, UpstreamHandle};

use super::redirect::Again;
use super::{identity, Close, Pending, Route, Session};

impl Session {
    /// Waits for the replies still in flight on a lease the session no longer needs, and gives it
    /// back (the last reply usually does; this also covers a lease with nothing in flight).
    pub(super) async fn give_back_lease(&mut self) -> Result<(), Close> {
        self.drain().await?;
        self.lease = None;
        self.forget_conns();
        Ok(())
    }

    /// Sends the first `len` bytes of the read buffer (`count` stateless requests) to `lane`.
    pub(super) async fn send_run(
        &mut self,
        len: usize,
        count: u32,
        lane: Lane,
    ) -> Result<(), Close> {
        if count == 0 {
            return Ok(());
        }
        self.lane = lane;
        let bytes = self.inbuf.split_to(len).freeze();
        self.send(bytes, count, Route::Current, false, Shape::One, true, None)
            .await
    }

    /// Sends one command where it must run, subject to `CLIENT REPLY`.
    pub(super) async fn forward(
        &mut self,
        bytes: Bytes,
        route: Route,
        stream: bool,
    ) -> Result<(), Close> {
        let shown = self.state.take_shown();
        self.send(bytes, 1, route, stream, Shape::One, shown, None)
            .await
    }

    /// Sends one command answered as `shape` says where the session's commands run, subject to
    /// `CLIENT REPLY`.
    pub(super) async fn forward_as(&mut self, bytes: Bytes, shape: Shape) -> Result<(), Close> {
        let shown = self.state.take_shown();
        self.send(bytes, 1, Route::Current, false, shape, shown, None)
            .await
    }

    /// Sends `count` commands upstream, each answered as `shape` says, and records what the client
    /// is owed. Stream requests owe nothing: their answers arrive in the stream. With a `check`,
    /// the one reply becomes the session's own answer.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
        &mut self,
        bytes: Bytes,
        count: u32,
        route: Route,
        stream: bool,
        shape: Shape,
        shown: bool,
        check: Option<Box<identity::Check>>,
    ) -> Result<(), Close> {
        let plain = !stream && shape == Shape::One && check.is_none();
        let slot = self.resendable(&bytes, count, route, plain);
        if let Some(slot) = slot {
            self.fence(&[(self.lane, slot)]).await?;
        }
        let handle = match self.route(route).await? {
            Ok(handle) => handle,
            Err(line) => {
                if shown {
                    self.local(line);
                }
                return Ok(());
            }
        };
        let owed = !stream && self.state.streaming.is_none();
        match check {
            Some(check) if owed => self.owe_as(Pending::Check(check, self.lane), count),
            _ if owed => self.owe(count, shown),
            _ => {}
        }
        if let Some(slot) = slot.filter(|_| owed) {
            self.keep(Again {
                slot,
                bytes: bytes.clone(),
            });
        }
        let request = self.request(bytes, count, stream, shape);
        match self.deliver(&handle, request).await {
            Ok(()) => Ok(()),
            Err(error) => self.unsent(owed, count, error),
        }
    }

    /// Puts a request in a connection's queue; `Err` holds the error line it is answered with
    /// when it cannot go (the queue stayed full past `command_timeout`, or respipe is stopping).
    pub(super) async fn deliver(
        &self,
        handle: &UpstreamHandle,
        request: Request,
    ) -> Result<(), Bytes> {
        // The queue almost always has room: no timer, no wait. Only a full queue pays for them.
        let request = match handle.try_send(request) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(request)) => request,
            Err(TrySendError::Closed(_)) => return Err(ErrorReply::ShuttingDown.line()),
        };
        match self.limits.command_timeout {
            Some(limit) => match tokio::time::timeout(limit, handle.send(request)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(ErrorReply::ShuttingDown.line()),
                Err(_) => Err(ErrorReply::QueueTimeout {
                    addr: handle.addr(),
                    timeout: limit,
                }
                .line()),
            },
            None => handle
                .send(request)
                .await
                .map_err(|_| ErrorReply::ShuttingDown.line()),
        }
    }

    /// A request whose replies come back to this session.
    pub(super) fn request(&self, bytes: Bytes, count: u32, stream: bool, shape: Shape) -> Request {
        Request {
            bytes,
            count,
            shape,
            reply: self.tx.on_lane(self.lane),
            stream,
        }
    }

    /// A request that never reached the upstream: answered here, in order, as if the upstream had.
    fn unsent(&mut self, owed: bool, count: u32, error: Bytes) -> Result<(), Close> {
        let lane = self.lane;
        if owed
            && self.lane_state(lane).inflight > count as usize
            && matches!(self.pending.back(), Some(Pending::Upstream { .. }))
        {
            // Earlier commands are in flight on this lane: the error is not the next reply to
            // come there, so it answers this request in its own place (the slot just owed).
            if let Some(Pending::Upstream { shown, follow, .. }) = self.pending.pop_back() {
                self.undecided -= usize::from(follow.is_some());
                self.inflight -= count as usize;
                self.lane_state(lane).inflight -= count as usize;
                self.shared.metrics.failed.increment(u64::from(count));
                if shown {
                    self.local(error.repeat(count as usize).into());
                }
                return Ok(());
            }
        }
        if owed {
            self.receive(lane, Response::Failed { count, error })
        } else {
            if self.state.streaming.is_some() {
                // A stream the dedicated connection cannot take is over, as if it were lost.
                return self.on_stream(error, true);
            }
            self.out.push(error);
            Ok(())
        }
    }

    /// The routing step for the next command: the lease if the session holds (or now needs) one,
    /// else a connection of the pool for the session's state. Changing connection waits until
    /// nothing is in flight (invariant 2). `Ok(Err(line))`: the command is refused with `line`.
    pub(super) async fn route(
        &mut self,
        route: Route,
    ) -> Result<Result<UpstreamHandle, Bytes>, Close> {
        if route == Route::Lease && self.lease.is_none() {
            self.drain().await?;
            let layout = self.pool.layout();
            if layout.is_sharded() && !Arc::ptr_eq(layout, &self.shared.pools.layout()) {
                // A reload changed the servers since the command was placed on them.
                return Ok(match self.fresh_pool() {
                    Ok(()) => Err(ErrorReply::ServersChanged.line()),
                    Err(line) => Err(line),
                });
            }
            match self.shared.pools.lease(&self.state.key(), self.lane) {
                Ok(lease) => self.lease = Some(lease),
                Err(line) => return Ok(Err(line)),
            }
            self.forget_conns();
            self.name_lease()?;
        }
        if let Some(handle) = self.settled_route() {
            return Ok(Ok(handle));
        }
        self.drain().await?;
        let placed_on = self.pool.layout().clone();
        if let Err(line) = self.fresh_pool() {
            return Ok(Err(line));
        }
        if !Arc::ptr_eq(&placed_on, self.pool.layout()) {
            if placed_on.is_sharded() {
                // A reload changed the servers since the command was placed on them.
                return Ok(Err(ErrorReply::ServersChanged.line()));
            }
            // A read placed on a replica of the servers before (a reload, a failover): the
            // primary answers it.
            self.lane = 0;
        }
        Ok(Ok(self.current_handle()))
    }

    /// Moves the session to the shared pool of its state and the pools' generation (nothing may
    /// be in flight). `Err(line)` when no pool can start.
    pub(super) fn fresh_pool(&mut self) -> Result<(), Bytes> {
        (self.pool, self.pool_generation) = self.shared.pools.pool_now(&self.state.key())?;
        self.forget_conns();
        Ok(())
    }

    /// True when a reload replaced the pools since the session took its pool.
    pub(super) fn pool_outdated(&self) -> bool {
        self.pool_generation != self.shared.pools.generation()
    }

    /// Gives a fresh lease the client's name (its reply unseen), so that `CLIENT GETNAME` queued in
    /// a transaction answers what the client's own connection would.
    fn name_lease(&mut self) -> Result<(), Close> {
        let (Some(lease), Some(name)) = (&self.lease, &self.state.name) else {
            return Ok(());
        };
        let handle = lease.handle().clone();
        let bytes = resp::encode_request(&[b"CLIENT".as_slice(), b"SETNAME", name]);
        self.owe(1, false);
        match handle.try_send(self.request(bytes, 1, false, Shape::One)) {
            Ok(()) => Ok(()),
            Err(_) => self.unsent(true, 1, ErrorReply::ShuttingDown.line()),
        }
    }

    /// The connection for the next command when it needs no change: the lease if the session
    /// holds one, else its connection of the pool for its state. `None` when the session's state
    /// (or a reload) calls for another pool, or its connection retired (a stalled command): the
    /// next command then waits for what is in flight there and goes to a fresh connection.
    pub(super) fn settled_route(&mut self) -> Option<UpstreamHandle> {
        if let Some(lease) = &self.lease {
            return Some(lease.handle().clone());
        }
        let lane = usize::from(self.lane);
        let settled = self.state.is_in(self.pool.key())
            && self.pool_generation == self.shared.pools.generation()
            && !self
                .lanes
                .get(lane)
                .and_then(|l| l.conn.as_ref())
                .is_some_and(UpstreamHandle::is_retired);
        settled.then(|| self.current_handle())
    }

    /// The shared connection in use on the command's server, picked from the session's pool
    /// when nothing is in flight there.
    fn current_handle(&mut self) -> UpstreamHandle {
        let lane = self.lane;
        self.lane_state(lane);
        let (pool, id) = (&self.pool, self.id);
        self.lanes[usize::from(lane)]
            .conn
            .get_or_insert_with(|| pool.route(lane, id))
            .clone()
    }

    /// Forgets the shared connections in use (nothing is in flight on them): the next command
    /// picks again.
    pub(super) fn forget_conns(&mut self) {
        for lane in &mut self.lanes {
            lane.conn = None;
        }
    }

    /// Waits until every reply in flight has arrived (and is queued for the client).
    pub(super) async fn drain(&mut self) -> Result<(), Close> {
        while self.inflight > 0 {
            let (lane, response) = self.rx.recv().await;
            self.receive(lane, response)?;
        }
        Ok(())
    }

    /// True when Redis refuses the user the session authenticated as on its shared pool: the
    /// pool's connection was closed (Redis closes a deleted user's connections; or it was lost
    /// after a password change) and Redis no longer lets it in. The client's own connection
    /// would be gone too. (A lease refused after a password change only fails its command.)
    /// Idle sessions are closed when the refusal happens (`refused`); this catches those whose
    /// pool was first refused by their own command.
    pub(super) fn user_gone(&self) -> bool {
        self.state.auth.is_some() && self.lease.is_none() && self.pool.user_refused()
    }

    /// True while the session's state needs its dedicated connection.
    pub(super) fn lease_needed(&self) -> bool {
        self.state.in_multi
            || self.state.watching
            || self.state.streaming.is_some()
            || self.state.tracking
    }
}
