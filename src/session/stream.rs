//! The lease's streams: pub/sub and `MONITOR` frames passed to the client, commands sent while
//! streaming, leaving a stream (last unsubscribe, `RESET`), shard channels following their slot
//! to a new Redis Cluster node, and replication (`SYNC` spliced to the upstream, `WAIT`).
//!
//! **Shard channels after a slot migration.** A Redis Cluster node that loses a slot unsubscribes
//! its subscribers from the slot's shard channels with a `sunsubscribe` they did not ask for. The
//! client of respipe, which sees one Redis, would stop getting messages without knowing why; so
//! respipe follows the session's shard channels from Redis's confirmations ([`ShardChannels`]),
//! holds back such a `sunsubscribe`, and once the lease holds nothing else it subscribes the
//! channels again on the slot's new owner, on a new lease (the old one is closed), swallowing the
//! confirmations. Messages published while the slot moves may be lost (Redis promises nothing
//! more). The client gets the `sunsubscribe` after all, as Redis Cluster gives it, when the
//! channel cannot follow: the lease still holds other channels of the old node, or
//! `SUBSCRIBE`/`PSUBSCRIBE` channels, or no new owner accepts the channels within
//! `command_timeout`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use crate::clients::{integer_reply, Client};
use crate::cluster::{key_slot, Cluster, Source};
use crate::command::{Args, Kind, Shape};
use crate::follow;
use crate::outflow::OutputLimit;
use crate::pool::Tap;
use crate::reply::{self, ErrorReply, Lane, Response};
use crate::resp::{self, ReplyScanner};
use crate::upstream::Request;

use super::{ClientRead, Close, Route, Session, State, Streaming};

/// Sent into a subscription stream before moving its channels: every frame the old connection owes
/// the client comes before the answer (one of [`MARK_ANSWERS`]). A client's own `PING` of the same
/// text would end the wait early.
const MARK: &[u8] = b"*2\r\n$4\r\nPING\r\n$19\r\nrespipe:resubscribe\r\n";
/// [`MARK`]'s answer outside RESP2 subscribe mode, and in it.
const MARK_ANSWERS: [&[u8]; 2] = [
    b"$19\r\nrespipe:resubscribe\r\n",
    b"*2\r\n$4\r\npong\r\n$19\r\nrespipe:resubscribe\r\n",
];
/// How long moved shard channels look for their new owner when there is no `command_timeout`.
const FOLLOW_LIMIT: Duration = Duration::from_secs(10);
/// How often the slot map is looked at while a moved slot's new owner is not in it yet.
const OWNER_POLL: Duration = Duration::from_millis(20);

/// A Redis Cluster subscriber's shard channels on its lease, followed from Redis's confirmations,
/// so that a `sunsubscribe` the client did not ask for (the channel's slot left the node) is told
/// apart from one it did. Every list is bounded by the channels the lease holds.
#[derive(Debug, Default)]
pub(super) struct ShardChannels {
    /// Subscribed on the lease, as Redis confirmed.
    held: Vec<Bytes>,
    /// Held channels the client named in a `SUNSUBSCRIBE` whose confirmation has not come.
    asked: Vec<Bytes>,
    /// `SUNSUBSCRIBE`s without channels sent and not over yet (their last confirmation counts 0).
    asked_all: u32,
    /// Channels Redis unsubscribed unasked, each with its `sunsubscribe`, held back from the client
    /// while they move to their slot's new owner.
    moved: Vec<(Bytes, Bytes)>,
    /// Moved channels subscribed again on the new owner whose confirmations have not come.
    following: Vec<Bytes>,
}

/// What becomes of a frame of a subscription stream ([`ShardChannels::on_frame`]).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// The client gets it.
    Pass,
    /// Held back: a `sunsubscribe` Redis sent unasked, whose channel follows its slot, or the
    /// confirmation of a channel subscribed again on the new owner.
    Hold,
    /// A `sunsubscribe` Redis sent unasked whose channel cannot follow (the lease keeps other
    /// subscriptions): the client gets the ones held back, then this one.
    Release,
}

impl Session {
    /// A command while the lease streams (subscribed, MONITOR): Redis answers it in the stream
    /// (in RESP2 subscribe mode with its own "only ... allowed in this context" error), except what
    /// respipe answers for the session.
    pub(super) async fn in_stream(
        &mut self,
        kind: Kind,
        name: &[u8],
        bytes: Bytes,
    ) -> Result<(), Close> {
        match kind {
            Kind::Quit => {
                // Redis's `+RESET` (swallowed) orders the `+OK` after every frame owed before it.
                if self.end_stream(reply::RESET_COMMAND).await? {
                    self.closing = true;
                    self.answer(reply::OK)?;
                }
                Ok(())
            }
            Kind::Reset => self.reset_stream(bytes).await,
            Kind::Refuse(why) => {
                self.local(ErrorReply::Unsupported { name, why }.line());
                Ok(())
            }
            Kind::Denied => {
                self.local(ErrorReply::Denied { name }.line());
                Ok(())
            }
            kind => {
                self.state.unsubscribing = kind == Kind::Unsubscribe;
                if kind == Kind::Unsubscribe
                    && name.eq_ignore_ascii_case(b"sunsubscribe")
                    && self.pool.layout().cluster().is_some()
                {
                    self.state.shards.asked(resp::request_args(&bytes).skip(1));
                    // Held back channels do not follow their slot now: the client hears of them
                    // before its own unsubscribe's confirmations, as Redis sent them.
                    self.release_held_back();
                }
                self.forward(bytes, Route::Lease, true).await
            }
        }
    }

    /// `SELECT`, `AUTH` or `HELLO` while subscribed in RESP3: Redis runs it on the subscribed
    /// connection and the stream carries its answer; a probe in the session's state says whether
    /// Redis accepts it, so the session's state follows once the subscription ends.
    pub(super) async fn follow_in_stream(&mut self, kind: &Kind, args: Args<'_>, bytes: &Bytes) {
        let accepted = self
            .ask(bytes)
            .await
            .is_ok_and(|replies| replies.last().is_some_and(|r| !follow::is_error(r)));
        if accepted {
            for change in follow::requested(kind, args) {
                self.state.apply(change);
            }
        }
    }

    /// `SYNC`, `PSYNC` or `REPLCONF` outside a transaction: connects a raw connection in the
    /// session's state and stops reading; the command and everything the client sent after it go
    /// first on that connection once every earlier reply is written (see `splice`). When the
    /// connection cannot be had, the client gets the error and the session goes on.
    pub(super) async fn replicate(&mut self, bytes: Bytes) -> Result<(), Close> {
        // Boxed: a connect (and TLS handshake) is a large future; idle sessions stay small.
        let key = self.state.key();
        match Box::pin(self.shared.pools.tap(&key)).await {
            Ok(tap) => {
                let mut first = BytesMut::from(&bytes[..]);
                first.extend_from_slice(&self.inbuf.split());
                self.tap = Some((tap, first.freeze()));
                self.closing = true;
                Ok(())
            }
            Err(line) => self.answer(line),
        }
    }

    /// The rest of a replication reader's connection: its bytes and the upstream's are copied both
    /// ways unchanged (RDB payload, then the command stream) until the upstream closes, the client
    /// closes and the upstream follows, or the proxy shuts down. Any lease is given up first.
    pub(super) async fn splice<R, W>(
        &mut self,
        tap: Tap,
        first: Bytes,
        mut rd: R,
        mut wr: W,
    ) -> Result<(), Close>
    where
        R: ClientRead,
        W: AsyncWrite + Unpin,
    {
        self.lease = None;
        self.forget_conns();
        debug!(
            session = self.id,
            "client spliced to a replication connection"
        );
        let (mut up_rd, mut up_wr) = tokio::io::split(tap.stream);
        if up_wr.write_all(&first).await.is_err() {
            return Err(Close);
        }
        let mut to_upstream = std::pin::pin!(async {
            let _ = tokio::io::copy(&mut rd, &mut up_wr).await;
            // Redis closes a connection whose client is done: the other direction then ends.
            let _ = up_wr.shutdown().await;
        });
        let mut to_client = std::pin::pin!(async {
            let _ = tokio::io::copy(&mut up_rd, &mut wr).await;
            let _ = wr.shutdown().await;
        });
        let shutdown = self.shared.shutdown.clone();
        let mut client_done = false;
        loop {
            tokio::select! {
                _ = &mut to_upstream, if !client_done => client_done = true,
                _ = &mut to_client => return Ok(()),
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// `RESET` while the lease streams: Redis answers it after every frame it owes for earlier
    /// commands, leaving subscribe mode or MONITOR; its `+RESET` ends the stream and reaches the
    /// client, and the session starts over as a new connection would.
    async fn reset_stream(&mut self, bytes: Bytes) -> Result<(), Close> {
        if self.end_stream(bytes).await? {
            self.out.push(reply::RESET);
            self.lease = None;
            self.forget_conns();
            self.state = State::new(&self.shared);
        }
        Ok(())
    }

    /// Sends `reset` (a `RESET` command) into the lease's stream and passes every frame before
    /// Redis's `+RESET` to the client, so nothing Redis sent for earlier commands is lost; then
    /// leaves stream mode. False when the stream ended otherwise (the lease was lost: the client has
    /// been told and the session is closing). A command sent into the stream earlier whose answer
    /// is itself `+RESET` (only a script's status reply can be) would end the wait early.
    async fn end_stream(&mut self, reset: Bytes) -> Result<bool, Close> {
        self.state.unsubscribing = false;
        let ended = self.stream_until(reset, &[&reply::RESET[..]], None).await?;
        if ended {
            self.leave_stream();
        }
        Ok(ended)
    }

    /// Sends `command` into the lease's stream and passes every frame before its answer (one of
    /// `answers`) to the client. False when the stream ended otherwise (the lease was lost: the
    /// client has been told and the session is closing), or no answer came by `deadline`.
    async fn stream_until(
        &mut self,
        command: Bytes,
        answers: &[&[u8]],
        deadline: Option<Instant>,
    ) -> Result<bool, Close> {
        self.send(command, 1, Route::Lease, true, Shape::One, true, None)
            .await?;
        while self.state.streaming.is_some() {
            let next = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => return Ok(false),
                },
                None => self.rx.recv().await,
            };
            match next {
                (_, Response::Stream { bytes, lost: false }) if answers.contains(&&bytes[..]) => {
                    return Ok(true);
                }
                (lane, response) => self.receive(lane, response)?,
            }
        }
        Ok(false)
    }

    /// `WAIT`/`WAITAOF` count acknowledgements of this connection's write offset. The client's
    /// writes went to connections whose replies have all arrived (`route` drains them), so they are
    /// already in the replication stream; on a dedicated connection a no-op that Redis replicates
    /// (`reply::WAIT_NOOP`) brings the write offset past them, then the command waits there. When
    /// Redis refuses the no-op (ACL, a Redis without SPUBLISH) the command is refused with its reason.
    pub(super) async fn wait(&mut self, name: &[u8], bytes: Bytes) -> Result<(), Close> {
        let handle = match self.route(Route::Lease).await? {
            Ok(handle) => handle,
            Err(line) => return self.answer(line),
        };
        let (tx, mut rx) = reply::mailbox();
        let noop = Request {
            bytes: reply::WAIT_NOOP,
            count: 1,
            shape: Shape::One,
            reply: tx,
            stream: false,
        };
        let answer = match handle.send(noop).await {
            Err(_) => ErrorReply::ShuttingDown.line(),
            Ok(()) => match rx.recv().await.1 {
                Response::Replies { bytes: done, .. } if done.first() == Some(&b':') => {
                    return self.forward(bytes, Route::Current, false).await;
                }
                Response::Replies { bytes: refused, .. } => ErrorReply::WaitRefused {
                    name,
                    redis_error: &refused,
                }
                .line(),
                Response::Failed { error, .. } | Response::Stream { bytes: error, .. } => error,
                // No timer wakes this mailbox of one request.
                Response::Wake => ErrorReply::ShuttingDown.line(),
            },
        };
        if !self.lease_needed() {
            self.lease = None;
        }
        self.answer(answer)
    }

    /// Ends stream mode and gives the lease back. Frames its connection still hands over go to a
    /// mailbox nobody reads: the session takes a fresh one, so a later stream never sees them.
    /// Nothing is in flight in stream mode, so no other reply is owed to the old mailbox.
    fn leave_stream(&mut self) {
        debug_assert_eq!(self.inflight, 0);
        self.state.streaming = None;
        self.state.shards = ShardChannels::default();
        self.lease = None;
        (self.tx, self.rx) = reply::mailbox();
    }

    /// A frame of the lease's stream (a message, a subscription confirmation, a MONITOR line, or
    /// the answer to a command sent while streaming). Once the session has left the stream (the
    /// last unsubscribe, RESET, a lost connection) nothing more is owed from it: late frames are
    /// dropped.
    pub(super) fn on_stream(&mut self, bytes: Bytes, lost: bool) -> Result<(), Close> {
        let Some(streaming) = self.state.streaming else {
            return self.on_push(bytes, lost);
        };
        if lost {
            // The dedicated connection is gone with the client's subscriptions: say so and close,
            // as Redis closing the connection would.
            self.out.push(bytes);
            self.state.streaming = None;
            self.closing = true;
            return Ok(());
        }
        if streaming == Streaming::Subscribe {
            self.client.count_subscriptions(&bytes);
            if self.pool.layout().cluster().is_some() {
                let client = &self.client;
                match self
                    .state
                    .shards
                    .on_frame(&bytes, || other_subscriptions(client))
                {
                    Verdict::Pass => {}
                    Verdict::Hold => return Ok(()),
                    Verdict::Release => self.release_held_back(),
                }
            }
        }
        if streaming == Streaming::Subscribe
            && self.state.unsubscribing
            && !self.state.tracking
            && resp::is_last_unsubscribe(&bytes)
            && self.client.snapshot().subscriptions == [0, 0, 0]
        {
            // Redis left subscribe mode and nothing else was sent into the stream (the count
            // says what is left of the frame's own kind: shard channels are counted apart). (A
            // tracking client stays in the stream: its connection, which Redis tracks it on,
            // stays too.)
            self.leave_stream();
        }
        self.out.push(bytes);
        self.check_reply_limit()
    }

    /// Redis's `client-output-buffer-limit` for pubsub clients, asked (as the configured user) the
    /// first time any client subscribes; Redis's default when it does not tell.
    pub(super) async fn read_pubsub_limit(&self) -> OutputLimit {
        let shared = &self.shared;
        shared
            .pubsub_limit
            .get(|| async {
                let get = resp::encode_request(&[
                    b"CONFIG".as_slice(),
                    b"GET",
                    b"client-output-buffer-limit",
                ]);
                let key = shared.pools.default_pool().key().clone();
                let replies = shared.pools.probe(&key, &[get]).await.map_err(|_| ())?;
                let value = replies.first().and_then(|r| resp::request_args(r).nth(1));
                Ok(value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(OutputLimit::parse_pubsub)
                    .unwrap_or(OutputLimit::PUBSUB_DEFAULT))
            })
            .await
    }
}

impl Session {
    /// Moves the shard channels Redis unsubscribed unasked (their slot left the lease's node) to
    /// the slot's new owner once the lease holds nothing else (see the module doc); called after
    /// stream frames are taken. Cheap when there is nothing to move.
    pub(super) async fn follow_moved_channels(&mut self) -> Result<(), Close> {
        if !self.state.shards.move_due() {
            return Ok(());
        }
        // Boxed: rare, and every session's future would otherwise be sized for it.
        Box::pin(self.move_channels()).await
    }

    /// First every frame the old connection still owes the client, then the slot's new owner
    /// (fresh slot maps asked for until one names it), then the channels on a new lease there,
    /// all within `command_timeout`. Whatever fails, the client gets the `sunsubscribe`s.
    async fn move_channels(&mut self) -> Result<(), Close> {
        let Some(cluster) = self.pool.layout().cluster().cloned() else {
            return Ok(());
        };
        let limit = self.limits.command_timeout.unwrap_or(FOLLOW_LIMIT);
        let deadline = Instant::now() + limit;
        let mark = Bytes::from_static(MARK);
        let settled = self
            .stream_until(mark, &MARK_ANSWERS, Some(deadline))
            .await?;
        if self.state.streaming.is_none() {
            // The lease was lost: the client has been told, and is closing.
            return Ok(());
        }
        let movable = settled && self.state.shards.move_due() && !other_subscriptions(&self.client);
        let Some(slot) = self.state.shards.moved_slot().filter(|_| movable) else {
            self.release_held_back();
            if settled && self.state.shards.held.is_empty() && !other_subscriptions(&self.client) {
                // Nothing left on the lease, nothing owed: Redis took it out of subscribe mode.
                self.leave_stream();
            }
            return self.check_reply_limit();
        };
        let moved = std::mem::take(&mut self.state.shards.moved);
        let channels: Vec<Bytes> = moved.iter().map(|(channel, _)| channel.clone()).collect();
        let mut tried = vec![self.lease.as_ref().map_or(self.lane, |lease| lease.lane())];
        // The old lease holds nothing and owes nothing: it closes.
        self.leave_stream();
        while let Some(lane) = new_owner(&cluster, slot, &tried, deadline).await {
            match self.subscribe_on(lane, &channels, deadline).await? {
                Attempt::Subscribed => {
                    debug!(
                        session = self.id,
                        slot, "shard channels followed their slot to another node"
                    );
                    return Ok(());
                }
                Attempt::Redirected => tried.push(lane),
                Attempt::Failed => break,
            }
        }
        debug!(
            session = self.id,
            slot, "shard channels could not follow their slot: the client gets the sunsubscribe"
        );
        if !self.closing {
            for (_, frame) in moved {
                self.out.push(frame);
            }
        }
        self.check_reply_limit()
    }

    /// Subscribes `channels` (of one slot) on a new lease on `lane`, their confirmations held
    /// back. Unless that worked, the session is left out of any stream.
    async fn subscribe_on(
        &mut self,
        lane: Lane,
        channels: &[Bytes],
        deadline: Instant,
    ) -> Result<Attempt, Close> {
        self.lane = lane;
        let handle = match self.route(Route::Lease).await? {
            Ok(handle) => handle,
            Err(_) => return Ok(Attempt::Failed),
        };
        self.state.streaming = Some(Streaming::Subscribe);
        self.state.shards.following = channels.to_vec();
        let mut args: Vec<&[u8]> = vec![b"SSUBSCRIBE"];
        args.extend(channels.iter().map(|channel| &channel[..]));
        let request = self.request(resp::encode_request(&args), 1, true, Shape::One);
        let mut attempt = Attempt::Failed;
        if self.deliver(&handle, request).await.is_ok() {
            attempt = loop {
                if self.state.shards.following.is_empty() {
                    break Attempt::Subscribed;
                }
                let Ok((from, response)) = tokio::time::timeout_at(deadline, self.rx.recv()).await
                else {
                    break Attempt::Failed;
                };
                match response {
                    Response::Stream { bytes, lost: false }
                        if matches!(bytes.first(), Some(b'-' | b'!')) =>
                    {
                        // Nothing but the SSUBSCRIBE was sent on this lease: its refusal.
                        let redirected =
                            bytes.starts_with(b"-MOVED ") || bytes.starts_with(b"-ASK ");
                        break if redirected {
                            Attempt::Redirected
                        } else {
                            Attempt::Failed
                        };
                    }
                    response => self.receive(from, response)?,
                }
                if self.state.streaming.is_none() {
                    // Lost: the client has been told, and is closing.
                    return Ok(Attempt::Failed);
                }
            };
        }
        if attempt != Attempt::Subscribed {
            self.leave_stream();
        }
        Ok(attempt)
    }

    /// The client gets the `sunsubscribe`s held back for channels that were to follow their slot.
    fn release_held_back(&mut self) {
        for (_, frame) in std::mem::take(&mut self.state.shards.moved) {
            self.out.push(frame);
        }
    }
}

/// How subscribing moved channels on a new owner went.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Subscribed,
    /// The node answered `-MOVED` or `-ASK`: the slot map is behind; another node may take them.
    Redirected,
    Failed,
}

impl ShardChannels {
    /// The client sent `SUNSUBSCRIBE channels...` into the stream (all of them when none named).
    fn asked<'a>(&mut self, channels: impl Iterator<Item = &'a [u8]>) {
        let mut named = false;
        for channel in channels {
            named = true;
            if self.held.iter().any(|c| c == channel) && !self.asked.iter().any(|c| c == channel) {
                self.asked.push(Bytes::copy_from_slice(channel));
            }
        }
        if !named {
            self.asked_all += 1;
        }
    }

    /// Follows a frame of the subscription stream and says whether the client gets it; `others`
    /// tells whether the lease also holds `SUBSCRIBE` or `PSUBSCRIBE` channels.
    fn on_frame(&mut self, frame: &Bytes, others: impl FnOnce() -> bool) -> Verdict {
        let Some((subscribe, channel, count)) = shard_confirmation(frame) else {
            return Verdict::Pass;
        };
        let Some(channel) = channel else {
            // `SUNSUBSCRIBE` with nothing subscribed.
            if !subscribe && count == 0 {
                self.asked_all = self.asked_all.saturating_sub(1);
            }
            return Verdict::Pass;
        };
        if subscribe {
            let following = take(&mut self.following, channel);
            if !self.held.iter().any(|c| c == channel) {
                self.held.push(Bytes::copy_from_slice(channel));
            }
            return if following {
                Verdict::Hold
            } else {
                Verdict::Pass
            };
        }
        let held = take(&mut self.held, channel);
        let asked = take(&mut self.asked, channel);
        if self.asked_all > 0 {
            if count == 0 {
                self.asked_all -= 1;
            }
            return Verdict::Pass;
        }
        if asked || !held {
            return Verdict::Pass;
        }
        // Unasked: the channel's slot left the node, with every channel of that slot.
        let slot = key_slot(channel);
        if self.held.iter().any(|c| key_slot(c) != slot) || others() {
            return Verdict::Release;
        }
        self.moved
            .push((Bytes::copy_from_slice(channel), frame.clone()));
        Verdict::Hold
    }

    /// True when channels were unsubscribed unasked and the lease holds no other shard channel.
    fn move_due(&self) -> bool {
        !self.moved.is_empty() && self.held.is_empty() && self.following.is_empty()
    }

    /// The slot of the channels held back, if they share one.
    fn moved_slot(&self) -> Option<u16> {
        let mut slots = self.moved.iter().map(|(channel, _)| key_slot(channel));
        let first = slots.next()?;
        slots.all(|slot| slot == first).then_some(first)
    }
}

/// True when the client's lease also holds `SUBSCRIBE` or `PSUBSCRIBE` channels.
fn other_subscriptions(client: &Client) -> bool {
    client.snapshot().subscriptions[..2] != [0, 0]
}

/// The owner of `slot` in the cluster's map once it is none of `tried`, asking for a fresh map
/// meanwhile (the cluster coalesces and rate-limits the asks); `None` at `deadline`.
async fn new_owner(
    cluster: &Cluster,
    slot: u16,
    tried: &[Lane],
    deadline: Instant,
) -> Option<Lane> {
    loop {
        if let Some(lane) = cluster.map().owner(slot).filter(|l| !tried.contains(l)) {
            return Some(lane);
        }
        // A node that lost a slot says `-MOVED` to its commands: the same news.
        cluster.refresh(Source::Moved);
        if Instant::now() + OWNER_POLL > deadline {
            return None;
        }
        tokio::time::sleep(OWNER_POLL).await;
    }
}

/// Removes `channel` from `list`; true if it was there.
fn take(list: &mut Vec<Bytes>, channel: &[u8]) -> bool {
    match list.iter().position(|c| c == channel) {
        Some(at) => {
            list.swap_remove(at);
            true
        }
        None => false,
    }
}

/// A shard channel's confirmation (`ssubscribe` or `sunsubscribe`, RESP2 array or RESP3 push):
/// whether it subscribes, the channel (`None`: nil, a `SUNSUBSCRIBE` with nothing subscribed) and
/// the count of shard channels left.
fn shard_confirmation(frame: &[u8]) -> Option<(bool, Option<&[u8]>, u64)> {
    let rest = frame
        .strip_prefix(b"*3\r\n")
        .or_else(|| frame.strip_prefix(b">3\r\n"))?;
    let (subscribe, rest) = match rest.strip_prefix(b"$10\r\nssubscribe\r\n") {
        Some(rest) => (true, rest),
        None => (false, rest.strip_prefix(b"$12\r\nsunsubscribe\r\n")?),
    };
    let len = ReplyScanner::default().scan(rest).ok()??.len;
    let channel = match &rest[..len] {
        b"$-1\r\n" | b"_\r\n" => None,
        bulk => {
            let body = bulk.strip_prefix(b"$")?.strip_suffix(b"\r\n")?;
            let start = body.iter().position(|&b| b == b'\n')? + 1;
            Some(&body[start..])
        }
    };
    let count = integer_reply(&rest[len..])?;
    Some((subscribe, channel, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: &str, channel: Option<&str>, count: u64, resp3: bool) -> Bytes {
        let head = if resp3 { ">3" } else { "*3" };
        let channel = match channel {
            Some(c) => format!("${}\r\n{c}\r\n", c.len()),
            None if resp3 => "_\r\n".into(),
            None => "$-1\r\n".into(),
        };
        let text = format!(
            "{head}\r\n${}\r\n{kind}\r\n{channel}:{count}\r\n",
            kind.len()
        );
        Bytes::from(text)
    }

    fn held(shards: &mut ShardChannels, channels: &[&str]) {
        for (n, c) in channels.iter().enumerate() {
            let f = frame("ssubscribe", Some(c), n as u64 + 1, false);
            assert_eq!(shards.on_frame(&f, || false), Verdict::Pass);
        }
    }

    #[test]
    fn confirmations_are_read_in_both_protocols() {
        for resp3 in [false, true] {
            let f = frame("ssubscribe", Some("{a}x"), 2, resp3);
            assert_eq!(shard_confirmation(&f), Some((true, Some(&b"{a}x"[..]), 2)));
            let f = frame("sunsubscribe", None, 0, resp3);
            assert_eq!(shard_confirmation(&f), Some((false, None, 0)));
            let f = frame("subscribe", Some("c"), 1, resp3);
            assert_eq!(shard_confirmation(&f), None);
        }
        let message = b"*3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n";
        assert_eq!(shard_confirmation(message), None);
        assert_eq!(
            shard_confirmation(b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\nc"),
            None
        );
    }

    #[test]
    fn the_mark_is_a_ping_whose_answers_are_known() {
        let ping = resp::encode_request(&[&b"PING"[..], b"respipe:resubscribe"]);
        assert_eq!(&ping[..], MARK);
        let bulk = reply::bulk(b"respipe:resubscribe");
        assert_eq!(&bulk[..], MARK_ANSWERS[0]);
        assert_eq!(
            MARK_ANSWERS[1],
            [&b"*2\r\n$4\r\npong\r\n"[..], &bulk].concat()
        );
    }

    #[test]
    fn asked_unsubscribes_pass_and_unasked_ones_of_a_slot_are_held_back() {
        let mut shards = ShardChannels::default();
        held(&mut shards, &["{s}a", "{s}b", "{t}c"]);
        shards.asked([&b"{t}c"[..]].into_iter());
        let f = frame("sunsubscribe", Some("{t}c"), 2, false);
        assert_eq!(shards.on_frame(&f, || false), Verdict::Pass);
        // Slot `{s}` moves: both of its channels, the last with count 0.
        let a = frame("sunsubscribe", Some("{s}a"), 1, false);
        assert_eq!(shards.on_frame(&a, || false), Verdict::Hold);
        assert!(!shards.move_due(), "{{s}}b is still held");
        let b = frame("sunsubscribe", Some("{s}b"), 0, true);
        assert_eq!(shards.on_frame(&b, || false), Verdict::Hold);
        assert!(shards.move_due());
        assert_eq!(shards.moved_slot(), Some(key_slot(b"{s}a")));
        let held_back: Vec<_> = shards.moved.iter().map(|(_, f)| f.clone()).collect();
        assert_eq!(held_back, [a, b]);
    }

    #[test]
    fn the_confirmations_of_followed_channels_are_held_back() {
        let mut shards = ShardChannels {
            following: vec![Bytes::from_static(b"{s}a")],
            ..ShardChannels::default()
        };
        let f = frame("ssubscribe", Some("{s}a"), 1, true);
        assert_eq!(shards.on_frame(&f, || false), Verdict::Hold);
        assert!(shards.following.is_empty());
        assert_eq!(shards.held, [Bytes::from_static(b"{s}a")]);
        // The client's own SSUBSCRIBE of it again is confirmed to the client.
        assert_eq!(shards.on_frame(&f, || false), Verdict::Pass);
    }

    #[test]
    fn a_channel_cannot_follow_while_the_lease_keeps_other_subscriptions() {
        let mut shards = ShardChannels::default();
        held(&mut shards, &["{s}a", "{t}c"]);
        let f = frame("sunsubscribe", Some("{s}a"), 1, false);
        assert_eq!(shards.on_frame(&f, || false), Verdict::Release);
        let mut shards = ShardChannels::default();
        held(&mut shards, &["{s}a"]);
        let f = frame("sunsubscribe", Some("{s}a"), 0, false);
        assert_eq!(shards.on_frame(&f, || true), Verdict::Release);
    }

    #[test]
    fn unsubscribing_from_all_passes_every_confirmation_until_the_count_is_0() {
        let mut shards = ShardChannels::default();
        held(&mut shards, &["{s}a", "{s}b"]);
        shards.asked(std::iter::empty());
        let a = frame("sunsubscribe", Some("{s}a"), 1, false);
        assert_eq!(shards.on_frame(&a, || false), Verdict::Pass);
        let b = frame("sunsubscribe", Some("{s}b"), 0, false);
        assert_eq!(shards.on_frame(&b, || false), Verdict::Pass);
        assert_eq!(shards.asked_all, 0);
        shards.asked(std::iter::empty());
        let none = frame("sunsubscribe", None, 0, false);
        assert_eq!(shards.on_frame(&none, || false), Verdict::Pass);
        assert_eq!(shards.asked_all, 0);
        assert!(!shards.move_due());
    }

    #[test]
    fn an_unsubscribe_of_a_channel_not_held_passes() {
        let mut shards = ShardChannels::default();
        let f = frame("sunsubscribe", Some("{s}a"), 0, false);
        assert_eq!(shards.on_frame(&f, || false), Verdict::Pass);
        assert!(shards.asked.is_empty() && shards.moved.is_empty());
    }
}
