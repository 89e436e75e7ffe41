//! Reading the client's requests: the read buffer, the fast path for plain commands, classifying
//! each request and dispatching the command to what handles it (or refusing it).

use bytes::{Buf, Bytes};
use tracing::debug;

use crate::command::{self, Args, Kind, ReplyMode, Shape};
use crate::follow::{self, Follow};
use crate::reply::{self, ErrorReply, Lane, RedisError};
use crate::resp::{self, RequestFrame, RequestKind};
use crate::spare;

use super::{
    lanes::Placed, tracking, Close, Route, Session, Streaming, ABORT_MULTI, IN_MULTI, MAX_RESERVE,
    READ_CHUNK_MIN,
};

impl Session {
    /// Handles the requests in the read buffer (new bytes, or requests held back by the throttle).
    pub(super) async fn on_bytes(&mut self) -> Result<(), Close> {
        if !self.forward_plain()? {
            // Boxed: the general path (state changes, probes, waiting for room upstream) is a
            // large future, and every session, idle ones included, would otherwise be sized for it.
            Box::pin(self.on_input()).await?;
            self.publish();
        } else if self.state.in_multi {
            // `CLIENT LIST` shows the commands queued.
            self.publish();
        }
        if self.lease.is_some() {
            // Only a lease's idle timeout looks at it: no clock read per command.
            self.last_input = tokio::time::Instant::now();
        }
        self.release_if_idle();
        Ok(())
    }

    /// Gives the read buffer back when nothing is owed and no partial request is buffered: an idle
    /// client holds no buffer, and the next readable event takes a fresh one.
    pub(super) fn release_if_idle(&mut self) {
        if self.inbuf.is_empty() && self.pending.is_empty() && self.inbuf.capacity() > 0 {
            spare::give(std::mem::take(&mut self.inbuf), READ_CHUNK_MIN);
        }
    }

    /// Free space for the rest of a partly read request that has announced its size (so a large
    /// value is read in few reads, without repeated regrowth); `None` otherwise.
    pub(super) fn announced(&self) -> Option<usize> {
        self.scanner.needed().map(|total| {
            total
                .saturating_sub(self.inbuf.len())
                .clamp(self.read_chunk, MAX_RESERVE)
        })
    }

    /// The common case, without waiting: the complete plain commands at the front of the read buffer
    /// leave as one request on the connection the session already uses. True when nothing but a
    /// partial request is left; false when `on_input` must handle the rest (any other command, a
    /// protocol error, a change of connection, or a full upstream queue). With several servers
    /// the run holds the commands for the first one's server.
    fn forward_plain(&mut self) -> Result<bool, Close> {
        if self.closing || !self.batchable() {
            return Ok(false);
        }
        // Commands are placed on lanes: by key (shards), or reads on replicas.
        let by_lane = self.sharded() || self.replicated();
        if by_lane && self.pool_outdated() {
            // A reload may have changed the servers: `on_input` moves to them first.
            return Ok(false);
        }
        if self.clustered() {
            return self.forward_plain_cluster();
        }
        if by_lane {
            // The first complete request says which server the run goes to. A complete frame
            // leaves the scanner idle, so the loop below scans it again from the start.
            let frame = match self.scanner.scan(&self.inbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(true),
                Err(_) => return Ok(false),
            };
            match self.run_lane(0, &frame) {
                Some((lane, _)) => self.lane = lane,
                None => return Ok(false),
            }
        } else {
            self.lane = 0;
        }
        let Some(handle) = self.settled_route() else {
            return Ok(false);
        };
        // Room first: once frames are scanned, the scanner's progress is relative to the run's end.
        let Some(permit) = handle.try_reserve() else {
            return Ok(false);
        };
        let (mut run, mut count, mut rest) = (0usize, 0u32, true);
        // The run's last frame and its name, for `CLIENT LIST`'s `cmd=`.
        let mut last = (0..0, 0..0);
        loop {
            if self.owes_too_much(count as usize) {
                self.held = run < self.inbuf.len();
                break;
            }
            let frame = match self.scanner.scan(&self.inbuf[run..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    // A complete frame or an error leaves the scanner idle: `on_input` rescans it.
                    rest = false;
                    break;
                }
            };
            let plain = if by_lane {
                // The first frame's server was found above.
                count == 0 || self.run_lane(run, &frame).map(|(lane, _)| lane) == Some(self.lane)
            } else {
                frame.argc > 0
                    && frame.kind == RequestKind::Resp
                    && self.classify_resp(&self.inbuf[run..run + frame.len], &frame) == Kind::Plain
            };
            if !plain {
                rest = false;
                break;
            }
            last = (
                run..run + frame.len,
                run + frame.name.start..run + frame.name.end,
            );
            run += frame.len;
            count += 1;
        }
        if count > 0 {
            let bytes = self.inbuf.split_to(run).freeze();
            self.client.ran(&bytes[last.1], Args::Resp(&bytes[last.0]));
            self.owe(count, true);
            permit.send(self.request(bytes, count, false, Shape::One));
        }
        Ok(rest)
    }

    /// Scans every complete request in the read buffer. Consecutive stateless requests leave as one
    /// slice of the buffer; anything else ends the run and is handled on its own, in order.
    async fn on_input(&mut self) -> Result<(), Close> {
        let mut run = 0usize;
        let mut run_count = 0u32;
        // The server the run goes to (sharded upstream): a run holds commands for one server.
        let mut run_lane: Lane = 0;
        if (self.sharded() || self.replicated()) && self.pool_outdated() && self.lease.is_none() {
            // A reload may have changed the servers: place the commands on the new ones (a pool
            // that cannot start is reported by the routing step, command by command).
            self.drain().await?;
            let _ = self.fresh_pool();
        }
        while !self.closing {
            if self.owes_too_much(run_count as usize) {
                self.held = run < self.inbuf.len();
                break;
            }
            let frame = match self.scanner.scan(&self.inbuf[run..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    self.send_run(run, run_count, run_lane).await?;
                    run = 0;
                    run_count = 0;
                    self.protocol_error(&err);
                    break;
                }
            };
            if frame.argc == 0 {
                // Redis ignores empty requests (`*0`, blank inline lines) without a reply.
                self.send_run(run, run_count, run_lane).await?;
                run = 0;
                run_count = 0;
                self.inbuf.advance(frame.len);
                continue;
            }
            match frame.kind {
                RequestKind::Resp => {
                    let bytes = &self.inbuf[run..run + frame.len];
                    let kind = self.classify_resp(bytes, &frame);
                    let lane = (kind == Kind::Plain && self.batchable())
                        .then(|| self.plain_lane(&bytes[frame.name.clone()], Args::Resp(bytes)))
                        .flatten();
                    if let Some((lane, _)) = lane {
                        if run_count > 0 && lane != run_lane {
                            self.send_run(run, run_count, run_lane).await?;
                            run = 0;
                            run_count = 0;
                        }
                        run_lane = lane;
                        run += frame.len;
                        run_count += 1;
                        if self.clustered() {
                            // A redirect sends one command again: each is a request of its own.
                            self.send_run(run, run_count, run_lane).await?;
                            run = 0;
                            run_count = 0;
                        }
                        continue;
                    }
                    self.send_run(run, run_count, run_lane).await?;
                    run = 0;
                    run_count = 0;
                    let bytes = self.inbuf.split_to(frame.len).freeze();
                    let name = bytes[frame.name.clone()].to_vec();
                    self.command(kind, &name, Args::Resp(&bytes), bytes.clone())
                        .await?;
                }
                RequestKind::Inline => {
                    self.send_run(run, run_count, run_lane).await?;
                    run = 0;
                    run_count = 0;
                    let line = self.inbuf.split_to(frame.len);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    match resp::parse_inline(line) {
                        Ok(args) if args.is_empty() => {}
                        Ok(args) => {
                            let kind = command::classify(
                                &args[0],
                                Args::Inline(&args),
                                &self.limits.deny_commands,
                            );
                            let bytes = resp::encode_request(&args);
                            self.command(kind, &args[0], Args::Inline(&args), bytes)
                                .await?;
                        }
                        Err(err) => self.protocol_error(&err),
                    }
                }
            }
        }
        self.send_run(run, run_count, run_lane).await?;
        if self.closing {
            self.inbuf.clear();
        }
        Ok(())
    }

    /// The server of a plain command at `at` in the read buffer that can join a run (on a
    /// cluster, with the hash slot of its keys: see [`crate::route::lane`]); `None` for anything
    /// else.
    pub(super) fn run_lane(&self, at: usize, frame: &RequestFrame) -> Option<(Lane, Option<u16>)> {
        let bytes = &self.inbuf[at..at + frame.len];
        let plain = frame.argc > 0
            && frame.kind == RequestKind::Resp
            && self.classify_resp(bytes, frame) == Kind::Plain;
        plain
            .then(|| self.plain_lane(&bytes[frame.name.clone()], Args::Resp(bytes)))
            .flatten()
    }

    /// What a complete RESP request frame (`bytes`, as scanned into `frame`) asks for.
    fn classify_resp(&self, bytes: &[u8], frame: &RequestFrame) -> Kind {
        command::classify(
            &bytes[frame.name.clone()],
            Args::Resp(bytes),
            &self.limits.deny_commands,
        )
    }

    /// Stateless commands may travel together when every one of them is answered normally.
    fn batchable(&self) -> bool {
        self.state.reply == ReplyMode::On
            && self.state.authenticated
            && self.state.streaming.is_none()
    }

    fn protocol_error(&mut self, err: &resp::ProtocolError) {
        debug!(session = self.id, error = %err, "client protocol error");
        self.shared.metrics.closed_protocol.increment(1);
        self.local(ErrorReply::Protocol(err).line());
        self.closing = true;
        self.inbuf.clear();
    }

    /// Handles one command that is not part of a run.
    async fn command(
        &mut self,
        kind: Kind,
        name: &[u8],
        args: Args<'_>,
        bytes: Bytes,
    ) -> Result<(), Close> {
        self.note(&kind, name, args);
        if !self.state.authenticated && !matches!(kind, Kind::Auth | Kind::Hello | Kind::Quit) {
            return self.answer(RedisError::NoAuth.line());
        }
        let bytes = match self.place(&kind, name, args, bytes).await? {
            Placed::Forward(bytes) => bytes,
            Placed::Done => return Ok(()),
        };
        if let Kind::Tracking(on) = kind {
            return self.tracking(on, args).await;
        }
        let full_name;
        let name = if matches!(kind, Kind::Refuse(_)) {
            // `'client|no-touch'`, not `'client'`.
            full_name = command::refusal_name(name, args);
            &full_name[..]
        } else {
            name
        };
        let changes_connection = matches!(kind, Kind::Select | Kind::Auth | Kind::Hello);
        if changes_connection
            && self.state.streaming == Some(Streaming::Subscribe)
            && self.state.resp3
            && self.limits.requirepass.is_none()
        {
            self.follow_in_stream(&kind, args, &bytes).await;
        }
        if self.state.streaming.is_some() {
            return self.in_stream(kind, name, bytes).await;
        }
        if self.undecided > 0 && kind != Kind::Plain {
            // A reply still in flight decides the session's state: this command reads or
            // changes it, so it waits for that reply.
            self.drain().await?;
        }
        let in_multi = self.state.in_multi;
        if changes_connection && self.lease.is_some() && !self.lease_needed() {
            // The lease is held only for replies still in flight (after EXEC, DISCARD, UNWATCH, a
            // blocking command): wait for them and give it back, then change state as usual.
            self.give_back_lease().await?;
        }
        if !in_multi && answered_by_client_state(&kind) {
            // Redis checks arity and ACLs before it looks at the arguments: so does respipe.
            if let Some(refusal) = self.client_refusal(args).await? {
                return self.answer(refusal);
            }
        }
        match kind {
            Kind::Plain => self.forward(bytes, Route::Current, false).await,
            Kind::Unsubscribe if in_multi => {
                // Queued; EXEC will write each of its confirmations as a frame of its own, so the
                // next command's reply is that many frames further on.
                let spilled = Shape::unsubscribe(args).spilled();
                self.state.exec_frames += spilled;
                self.state.queued += spilled as usize;
                self.forward(bytes, Route::Current, false).await
            }
            // Outside subscribe mode Redis confirms every channel.
            Kind::Unsubscribe => self.forward_as(bytes, Shape::unsubscribe(args)).await,
            Kind::Quit => {
                self.closing = true;
                self.answer(reply::OK)
            }
            Kind::Reset => self.reset().await,
            Kind::Auth if in_multi && self.limits.requirepass.is_some() => {
                let why = "with requirepass, inside MULTI";
                self.refuse(ErrorReply::Unsupported { name, why }.line())
                    .await
            }
            Kind::Hello
                if self.lease_needed()
                    && self.limits.requirepass.is_some()
                    && follow::Hello::parse(&args.iter().collect::<Vec<_>>())
                        .auth
                        .is_some() =>
            {
                let why = "AUTH with requirepass, inside MULTI or after WATCH";
                self.refuse(ErrorReply::Unsupported { name, why }.line())
                    .await
            }
            Kind::Select | Kind::Auth | Kind::Hello if self.lease_needed() => {
                self.change_on_lease(&kind, args, bytes).await
            }
            Kind::SetName(_) if in_multi => self.change_on_lease(&kind, args, bytes).await,
            Kind::GetName | Kind::Accept | Kind::Error(_) if in_multi => {
                // Queued by Redis like any command; the lease carries the client's name.
                self.forward(bytes, Route::Current, false).await
            }
            Kind::Reply(_) if in_multi => {
                // Redis runs it at EXEC and then leaves replies out of EXEC's own array.
                let why = IN_MULTI;
                self.refuse(ErrorReply::Unsupported { name, why }.line())
                    .await
            }
            Kind::Select => self.select(args, bytes).await,
            Kind::Auth => self.auth(args, bytes).await,
            Kind::Hello => self.hello(args).await,
            Kind::SetName(name) => {
                self.state.name = (!name.is_empty()).then_some(name);
                self.answer(reply::OK)
            }
            Kind::GetName => {
                let name = match &self.state.name {
                    Some(name) => reply::bulk(name),
                    None if self.state.resp3 => reply::NULL,
                    None => reply::NULL_BULK,
                };
                self.answer(name)
            }
            Kind::Accept => self.answer(reply::OK),
            Kind::Client(op) => self.client_op(op, args, bytes).await,
            Kind::Reply(mode) => {
                self.state.reply = mode;
                if mode == ReplyMode::On {
                    self.local_counted(reply::OK);
                }
                Ok(())
            }
            Kind::Multi | Kind::Watch if in_multi => {
                // Redis refuses these at once inside MULTI: no place in EXEC's array.
                self.forward(bytes, Route::Current, false).await?;
                self.state.queued = self.state.queued.saturating_sub(1);
                Ok(())
            }
            Kind::Blocking if in_multi => {
                // Inside MULTI Redis queues it on the transaction's connection (it does not block).
                self.forward(bytes, Route::Current, false).await
            }
            Kind::Multi => {
                self.forward(bytes, Route::Lease, false).await?;
                self.state.in_multi = self.lease.is_some();
                self.state.queued = 0;
                self.state.changes.clear();
                Ok(())
            }
            Kind::Watch => {
                self.forward(bytes, Route::Lease, false).await?;
                self.state.watching = self.lease.is_some();
                Ok(())
            }
            Kind::EndMulti => {
                let changes = std::mem::take(&mut self.state.changes);
                if name.eq_ignore_ascii_case(b"EXEC") && !changes.is_empty() {
                    // What the transaction changed holds once EXEC's reply says it ran.
                    self.follow = Some(Box::new(Follow::Exec(changes)));
                }
                let shape = Shape::Exec(std::mem::take(&mut self.state.exec_frames));
                let sent = self.forward_as(bytes, shape).await;
                self.follow = None;
                sent?;
                if in_multi {
                    self.state.in_multi = false;
                    self.state.watching = false;
                }
                Ok(())
            }
            Kind::Unwatch => {
                self.forward(bytes, Route::Current, false).await?;
                if !in_multi {
                    self.state.watching = false;
                }
                Ok(())
            }
            Kind::Blocking => self.blocking(bytes).await,
            // Inside MULTI Redis queues it on the transaction's connection.
            Kind::Wait if in_multi => self.forward(bytes, Route::Current, false).await,
            Kind::Wait => self.wait(name, bytes).await,
            Kind::Subscribe if in_multi => {
                // EXEC would put the lease in subscribe mode with nothing reading its stream.
                let why = IN_MULTI;
                self.refuse(ErrorReply::Unsupported { name, why }.line())
                    .await
            }
            Kind::Monitor if in_multi => self.forward(bytes, Route::Current, false).await,
            Kind::Subscribe | Kind::Monitor => {
                if kind == Kind::Subscribe && self.pubsub_limit.is_none() {
                    // Boxed: a probe is a large future (see `probe`).
                    self.pubsub_limit = Some(Box::pin(self.read_pubsub_limit()).await);
                }
                if kind == Kind::Subscribe && tracking::invalidations_in(args) {
                    self.ask_subscriber_id().await?;
                }
                self.forward(bytes, Route::Lease, true).await?;
                if self.lease.is_some() {
                    self.state.streaming = Some(if kind == Kind::Monitor {
                        Streaming::Monitor
                    } else {
                        Streaming::Subscribe
                    });
                    self.state.unsubscribing = false;
                }
                Ok(())
            }
            Kind::Replicate if in_multi => self.forward(bytes, Route::Current, false).await,
            Kind::Replicate => self.replicate(bytes).await,
            // Handled above.
            Kind::Tracking(on) => self.tracking(on, args).await,
            Kind::Error(error) => self.answer(error.line()),
            Kind::Refuse(why) => {
                self.refuse(ErrorReply::Unsupported { name, why }.line())
                    .await
            }
            Kind::Denied => self.refuse(ErrorReply::Denied { name }.line()).await,
        }
    }

    /// Refuses a command with respipe's own error line. Inside `MULTI` the transaction is aborted
    /// too, as Redis aborts it after any command it rejects while queueing: `EXEC` then answers
    /// `-EXECABORT` and nothing runs.
    pub(super) async fn refuse(&mut self, line: Bytes) -> Result<(), Close> {
        self.shared.metrics.refused.increment(1);
        if self.state.in_multi {
            let abort = Bytes::from_static(ABORT_MULTI);
            self.send(abort, 1, Route::Current, false, Shape::One, false, None)
                .await?;
        }
        self.local(line);
        Ok(())
    }
}

/// True for the `CLIENT` subcommands respipe answers from the session's state.
fn answered_by_client_state(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::SetName(_) | Kind::GetName | Kind::Accept | Kind::Reply(_) | Kind::Error(_)
    )
}
