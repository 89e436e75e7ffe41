//! The lease's streams: pub/sub and `MONITOR` frames passed to the client, commands sent while
//! streaming, leaving a stream (last unsubscribe, `RESET`), and replication (`SYNC` spliced to the
//! upstream, `WAIT`).

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::command::{Args, Kind, Shape};
use crate::follow;
use crate::outflow::OutputLimit;
use crate::pool::Tap;
use crate::reply::{self, ErrorReply, Response};
use crate::resp;
use crate::upstream::Request;

use super::{ClientRead, Close, Route, Session, State, Streaming};

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
        self.send(reset, 1, Route::Lease, true, Shape::One, true, None)
            .await?;
        while self.state.streaming.is_some() {
            match self.rx.recv().await {
                (_, Response::Stream { bytes, lost: false }) if bytes == reply::RESET => {
                    self.leave_stream();
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
        }
        if streaming == Streaming::Subscribe
            && self.state.unsubscribing
            && !self.state.tracking
            && resp::is_last_unsubscribe(&bytes)
        {
            // Redis left subscribe mode and nothing else was sent into the stream. (A tracking
            // client stays in the stream: its connection, which Redis tracks it on, stays too.)
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
