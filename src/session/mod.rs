//! One client connection: read request frames, classify them, answer locally or send them upstream,
//! and write every reply back in command order.
//!
//! The session is the client's *virtual connection*: it keeps the state a Redis connection would
//! have (db, protocol, user, name, reply mode, transaction, subscriptions) and routes each command
//! to a connection in that state: a shared pool for stateless work, a leased dedicated connection
//! while a transaction, a blocking command, a subscription, MONITOR or client-side caching
//! (`CLIENT TRACKING`, see `session/tracking.rs`) needs one.
//!
//! This file holds the session's types, `serve` and the loop that reads the client, takes replies
//! and writes them; the rest is split by concern: `input` (reading and dispatching requests),
//! `state` (SELECT/AUTH/HELLO and the other state changes), `conns` (routing to the shared
//! connection or the lease, and sending), `order` (what the client is owed, in command order),
//! `stream` (pub/sub, MONITOR, replication), `reads` (reads on replicas), plus `identity`,
//! `tracking` and `refused`.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, unix};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::chunks::Chunks;
use crate::clients::{Client, Registry};
use crate::command::ReplyMode;
use crate::config::Secret;
use crate::follow::{Change, Follow};
use crate::live::{Cached, Live};
use crate::metrics::ClientMetrics;
use crate::outflow::{Outflow, OutputLimit, ServerLimit};
use crate::pool::{Credentials, Lease, Pool, Pools, Tap};
use crate::reply::{self, Lane, ReplyRx, ReplyTx, Response};
use crate::resp::{RequestLimits, RequestScanner};
use crate::spare;

mod blocked;
mod conns;
mod identity;
mod input;
mod lanes;
mod order;
mod reads;
mod redirect;
mod refused;
mod state;
mod stream;
mod tracking;

pub use refused::close_refused;

/// While this many reply bytes wait for the client to read them, respipe stops reading the client's
/// requests (backpressure; see also `outflow::READ_PAUSE_OWED_BYTES`); the hard limit that closes
/// the client is `max_client_reply_bytes`.
const READ_PAUSE_REPLY_BYTES: usize = 1024 * 1024;
/// Free space a read buffer starts with; doubled (up to `READ_CHUNK_MAX`) whenever a read fills it.
const READ_CHUNK_MIN: usize = 4 * 1024;
/// Most free space topped up before a read (larger announced requests reserve more, see `reserve`).
const READ_CHUNK_MAX: usize = 64 * 1024;
/// The most a single reserve grows the read buffer when a large request is announced.
const MAX_RESERVE: usize = 4 * 1024 * 1024;

/// Sent into a transaction to make Redis discard it at `EXEC` (`EXECABORT`), as it does after any
/// command it rejects while queueing: respipe's own refusals inside `MULTI` abort it the same way.
/// Redis answers it `-ERR unknown command`; the client never sees that reply.
const ABORT_MULTI: &[u8] = b"*1\r\n$19\r\nRESPIPE-ABORT-MULTI\r\n";
/// Why a command is refused inside `MULTI` (the transaction is aborted).
const IN_MULTI: &str = "inside MULTI";

/// Per-client limits, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionLimits {
    /// Commands in flight at most; past it respipe stops reading the client.
    pub max_inflight: usize,
    /// Unsent reply bytes at most; past it the client is closed.
    pub max_reply_bytes: usize,
    /// Request size bounds.
    pub request: RequestLimits,
    /// How long a request may wait for room in an upstream queue.
    pub command_timeout: Option<Duration>,
    /// respipe's own password (`requirepass`), if any.
    pub requirepass: Option<Secret>,
    /// Upper-case command names refused by configuration.
    pub deny_commands: Vec<String>,
    /// How long a client may sit idle in a transaction holding a lease.
    pub lease_idle_timeout: Option<Duration>,
}

impl SessionLimits {
    /// The limits as the configuration sets them.
    pub fn from_config(config: &crate::config::Config) -> Self {
        SessionLimits {
            max_inflight: config.limits.max_client_inflight.get(),
            max_reply_bytes: config.limits.max_client_reply_bytes.get(),
            request: RequestLimits {
                max_request_bytes: config.limits.max_request_bytes.get(),
                max_args: config.limits.max_request_args.get(),
            },
            command_timeout: config.timeouts.command_timeout,
            requirepass: config.listen.requirepass.clone(),
            deny_commands: config.limits.deny_commands.clone(),
            lease_idle_timeout: config.leases.lease_idle_timeout,
        }
    }
}

/// What every session shares.
pub struct Shared {
    /// The upstream connections and the routing step.
    pub pools: Pools,
    /// Metric handles.
    pub metrics: ClientMetrics,
    /// Per-client limits, reloadable (sessions refresh their copy between events).
    pub limits: Live<SessionLimits>,
    /// Cancelled at shutdown: sessions stop reading, finish what is in flight and close.
    pub shutdown: CancellationToken,
    /// Redis's `client-output-buffer-limit pubsub`, read when the first client subscribes.
    pub pubsub_limit: ServerLimit,
    /// Every connected session, of every worker, for `CLIENT LIST`, `KILL` and `UNBLOCK`.
    pub clients: Arc<Registry>,
}

/// An answer the client is owed, in command order.
enum Pending {
    /// This many replies will come from the upstream connection; `shown: false` drops them
    /// (`CLIENT REPLY OFF|SKIP`). `follow`: state changes the reply decides (one command).
    Upstream {
        count: u32,
        shown: bool,
        follow: Option<Box<Follow>>,
        /// The server they come from (a ticket's number once sent again, see `redirect.rs`).
        lane: Lane,
        /// A cluster command that can be sent again (redirects, retries; a blocking command on a
        /// lease, `blocked.rs`): its slot and bytes.
        again: Option<redirect::Again>,
    },
    /// An answer respipe gives itself, held back until the upstream replies before it are written.
    Local(Bytes),
    /// One reply from the upstream that the session turns into its own answer (`CLIENT ID`,
    /// `LIST`, `KILL`...: Redis checks, respipe answers); then like `Upstream` with a count of 1.
    Check(Box<identity::Check>, Lane),
    /// One reply from each of several servers, merged into the client's one answer (a split
    /// `MGET`, a `DBSIZE` of every shard...).
    Merge(Box<lanes::Gathering>),
}

/// What woke the session loop.
enum Event {
    Reply((Lane, Response)),
    Wrote(io::Result<usize>),
    Read(io::Result<usize>),
    /// Requests held back by the reply-weight throttle may go now.
    Resume,
    Shutdown,
    /// Idle past `lease_idle_timeout` while holding a transaction's lease.
    LeaseIdle,
    /// `CLIENT KILL` named this session.
    Killed,
}

/// The session must close now: the client's socket failed, or a limit was hit (reason logged).
struct Close;

/// Where a command must run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Wherever the session is: its lease if it holds one, else its shared pool.
    Current,
    /// A dedicated connection (taken now if the session holds none).
    Lease,
}

/// A stream the session's lease is in: every frame Redis sends goes to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Streaming {
    /// SUBSCRIBE and friends: until the last unsubscribe.
    Subscribe,
    /// MONITOR: for the rest of the connection.
    Monitor,
}

/// The client's virtual connection state.
#[derive(Debug)]
struct State {
    db: u32,
    resp3: bool,
    /// `None`: the upstream's configured user.
    auth: Option<Arc<Credentials>>,
    name: Option<Vec<u8>>,
    reply: ReplyMode,
    /// Past respipe's own `requirepass` (true when there is none).
    authenticated: bool,
    in_multi: bool,
    watching: bool,
    streaming: Option<Streaming>,
    /// The last command sent into the stream was an unsubscribe: when Redis reports no
    /// subscriptions left, nothing else is in the stream and the lease can go.
    unsubscribing: bool,
    /// Inside `MULTI`: commands sent since, so the position of the next one in `EXEC`'s array.
    queued: usize,
    /// Inside `MULTI`: the state changes queued, by position; `EXEC`'s reply decides them.
    changes: Vec<(usize, Change)>,
    /// Frames `EXEC`'s answer will have beyond the transaction's results: the confirmations of
    /// unsubscribes queued in it.
    exec_frames: u32,
    /// `CLIENT TRACKING` is on: the lease stays, every command runs there (see `tracking.rs`).
    tracking: bool,
    /// The respipe client a tracking client's invalidations are redirected to.
    redirect: Option<u64>,
    /// A Redis Cluster subscriber's shard channels, so they follow their slot (`stream.rs`).
    shards: stream::ShardChannels,
}

/// One client connection's state.
struct Session {
    id: u64,
    /// This session in the registry of clients (removed when the session ends).
    client: Arc<Client>,
    shared: Arc<Shared>,
    scanner: RequestScanner,
    inbuf: BytesMut,
    /// Free space to have before a read: grows while the client sends a lot at once.
    read_chunk: usize,
    /// Replies ready for the client, written with one vectored write where possible.
    out: Chunks,
    pending: VecDeque<Pending>,
    /// Commands sent upstream whose replies have not all arrived (stream frames not counted).
    inflight: usize,
    /// Per upstream server: the shared connection in use while commands are in flight there
    /// (invariant 2: per-client order per server), and replies that arrived before their turn.
    lanes: Vec<lanes::LaneState>,
    /// The server the command being sent goes to (always 0 with one server).
    lane: Lane,
    /// Cluster commands sent again after a redirect or a retryable error (`redirect.rs`).
    tickets: redirect::Tickets,
    /// A cluster session's last blocking command on a lease, which follows its slot (`blocked.rs`).
    blocked: Option<blocked::Blocked>,
    /// A sharded upstream: `MULTI` answered but not sent yet, until a command says which server
    /// the transaction runs on (`lanes.rs`).
    deferred_multi: Option<lanes::Deferred>,
    /// The shared pool of the state the session is in, and the pools' generation it came from.
    pool: Arc<Pool>,
    pool_generation: u64,
    /// This session's copy of the reloadable limits.
    limits: Cached<SessionLimits>,
    /// The dedicated connection, while one is needed.
    lease: Option<Lease>,
    /// A replication reader's connection and the bytes that go first on it: once every earlier
    /// reply is written, the client is spliced to it for the rest of its connection.
    tap: Option<(Tap, Bytes)>,
    /// The session's reply mailbox: a clone of `tx` rides in every request's reply slot; `rx` is
    /// read by this task only.
    tx: ReplyTx,
    rx: ReplyRx,
    /// No more requests are read (QUIT, protocol error, EOF, shutdown); close once all is written.
    closing: bool,
    /// Complete requests wait in the read buffer: the replies owed weigh too much to send more
    /// (`owes_too_much`); they go, before anything else is read, once the replies drain.
    held: bool,
    state: State,
    /// When the client last sent anything (for `lease_idle_timeout`).
    last_input: tokio::time::Instant,
    /// How much the client's replies weigh and how fast it reads them.
    outflow: Outflow,
    /// The pubsub output limit, once the session has subscribed.
    pubsub_limit: Option<OutputLimit>,
    /// State changes the next request's reply decides (taken by `owe`).
    follow: Option<Box<Follow>>,
    /// Requests in flight whose replies decide state changes: until they arrive, what the
    /// session answers from its state waits.
    undecided: usize,
    /// When the session last sent a command that may write, while reads may go to replicas
    /// with `read_your_writes` on (`reads.rs`: its clock; 0 = never). Set while requests are
    /// scanned, with the session borrowed: hence atomic (only this task touches it).
    last_write: std::sync::atomic::AtomicU64,
}

/// The read half of a client socket: bytes through `AsyncRead` (whose short reads clear tokio's
/// cached readiness, so a drained socket costs no extra `EAGAIN` read), plus a readiness wait used
/// while the session holds no read buffer at all (an idle client spends no memory on one).
pub trait ClientRead: AsyncRead + Unpin {
    /// True when `poll_readable` reports the socket's readiness; false when it is always ready and
    /// only a read can tell (the session then waits in `read` with a buffer).
    const READINESS: bool = true;

    /// Ready when the socket may be readable. The socket's own read waker slot (the one
    /// `poll_read` uses), not `readable()`'s future: that one links a waiter into the socket's
    /// list and unlinks it when dropped, two locked list updates each time an idle session waits
    /// and its wait is cut short by a reply.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ClientRead for tcp::ReadHalf<'_> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }
}

impl ClientRead for unix::ReadHalf<'_> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_read_ready(cx)
    }
}

/// A TLS stream's read half: TLS has no readiness of its own (bytes on the socket may not be a
/// whole record), so it reports ready and the session waits in `read` with a buffer.
impl<T: AsyncRead + Send> ClientRead for tokio::io::ReadHalf<T> {
    const READINESS: bool = false;

    fn poll_readable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Serves one client until it leaves, QUITs, breaks the protocol, is killed (`CLIENT KILL`), or the
/// proxy shuts down; then takes it out of the registry. The halves are the socket's borrowed split:
/// no lock between reading and writing.
pub async fn serve<R, W>(rd: R, wr: W, client: Arc<Client>, shared: Arc<Shared>)
where
    R: ClientRead,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = reply::mailbox();
    let id = client.id();
    // The generation first, as in `Pools::pool_now`: a reload in between makes the session move
    // to the new pool, never keep the old one as if it were current.
    let pool_generation = shared.pools.generation();
    let mut session = Session {
        id,
        client,
        scanner: RequestScanner::new(shared.limits.load().request),
        limits: shared.limits.cached(),
        inbuf: BytesMut::new(),
        read_chunk: READ_CHUNK_MIN,
        out: Chunks::default(),
        pending: VecDeque::new(),
        inflight: 0,
        lanes: Vec::new(),
        lane: 0,
        tickets: redirect::Tickets::default(),
        blocked: None,
        deferred_multi: None,
        pool: shared.pools.default_pool(),
        pool_generation,
        lease: None,
        tap: None,
        tx,
        rx,
        closing: false,
        held: false,
        state: State::new(&shared),
        shared,
        last_input: tokio::time::Instant::now(),
        outflow: Outflow::new(tokio::time::Instant::now()),
        pubsub_limit: None,
        follow: None,
        undecided: 0,
        last_write: Default::default(),
    };
    session.shared.metrics.connections.increment(1.0);
    session.shared.metrics.accepted.increment(1);
    session.publish();
    let _ = session.run(rd, wr).await;
    session.shared.clients.remove(id);
    session.shared.metrics.connections.decrement(1.0);
    debug!(session = session.id, "client session ended");
}

impl Session {
    async fn run<R, W>(&mut self, mut rd: R, mut wr: W) -> Result<(), Close>
    where
        R: ClientRead,
        W: AsyncWrite + Unpin,
    {
        let shutdown = self.shared.shutdown.clone();
        // Made once: a fresh `cancelled()` each pass would lock the token's waiter list every event.
        let cancelled = std::pin::pin!(shutdown.cancelled());
        let mut cancelled = Armed::new(cancelled, || shutdown.is_cancelled());
        let client = self.client.clone();
        let killed = std::pin::pin!(client.killed());
        let mut killed = Armed::new(killed, || client.is_killed());
        loop {
            if self.client.is_killed() {
                // Like Redis freeing a killed client: at once, whatever is pending.
                debug!(
                    session = self.id,
                    "client killed (CLIENT KILL, or Redis refuses its user)"
                );
                return Err(Close);
            }
            self.limits.refresh(&self.shared.limits);
            if self.closing && self.pending.is_empty() && self.out.is_empty() {
                if let Some((tap, first)) = self.tap.take() {
                    return Box::pin(self.splice(tap, first, rd, wr)).await;
                }
                let _ = wr.shutdown().await;
                return Ok(());
            }
            let can_take = !self.closing
                && self.inflight < self.limits.max_inflight
                && self.out.bytes() < READ_PAUSE_REPLY_BYTES
                && !self.owes_too_much(0);
            let (can_read, resume) = (can_take && !self.held, can_take && self.held);
            let writing = !self.out.is_empty();
            let idle_limit = self.limits.lease_idle_timeout.filter(|_| {
                self.lease.is_some()
                    && (self.state.in_multi || self.state.watching)
                    && self.inflight == 0
                    && !self.closing
            });
            let idle_deadline = self.last_input + idle_limit.unwrap_or_default();
            let (fresh, announced) = (self.read_chunk, self.announced());
            let inbuf = &mut self.inbuf;
            let event = tokio::select! {
                biased;
                // Replies come only for commands in flight or from a lease's stream.
                r = self.rx.recv(), if self.inflight > 0 || self.lease.is_some() => Event::Reply(r),
                r = self.out.write_to(&mut wr), if writing => Event::Wrote(r),
                r = async {
                    if inbuf.capacity() > 0 {
                        if let Some(more) = announced.filter(|&n| inbuf.capacity() - inbuf.len() < n) {
                            // Not for every read: the front of the buffer is usually still shared
                            // with requests in flight, and growing it would copy into a new one.
                            inbuf.reserve(more);
                        }
                        return rd.read_buf(inbuf).await;
                    }
                    // Idle clients hold no buffer: wait for bytes, then take one.
                    loop {
                        std::future::poll_fn(|cx| rd.poll_readable(cx)).await?;
                        *inbuf = spare::take(fresh);
                        if !R::READINESS {
                            return rd.read_buf(inbuf).await;
                        }
                        // Readiness can be stale (a new socket reports it once): a read that finds
                        // nothing gives the buffer back, so an idle client keeps none.
                        if let Some(read) = read_now(&mut rd, inbuf) {
                            return read;
                        }
                        spare::give(std::mem::take(inbuf), READ_CHUNK_MIN);
                    }
                }, if can_read => Event::Read(r),
                _ = std::future::ready(()), if resume => Event::Resume,
                _ = &mut cancelled, if !self.closing => Event::Shutdown,
                // Wakes a killed session that waits for nothing else (a busy one sees the flag).
                _ = &mut killed => Event::Killed,
                // In a block, so the timer is only made when the branch is enabled.
                _ = async { tokio::time::sleep_until(idle_deadline).await }, if idle_limit.is_some() => {
                    Event::LeaseIdle
                }
            };
            match event {
                Event::Reply((lane, response)) => {
                    let leased = self.lease.is_some();
                    self.receive(lane, response)?;
                    // Everything already answered goes out in the same write.
                    while let Some((lane, response)) = self.rx.try_recv() {
                        self.receive(lane, response)?;
                    }
                    self.follow_moved_channels().await?;
                    self.release_if_idle();
                    if leased {
                        // A lease given back or a stream left: CLIENT LIST shows it.
                        self.publish();
                    }
                    // The replies go out in this pass: writing now saves a turn of the loop.
                    self.write_now(&mut wr)?;
                }
                Event::Wrote(Ok(0)) | Event::Wrote(Err(_)) | Event::Read(Err(_)) => {
                    return Err(Close)
                }
                Event::Wrote(Ok(n)) => self.wrote(n),
                // The client left. Like Redis, stop serving it; with a lease (a blocked command, a
                // transaction, a subscription) close at once, so the dedicated connection closes too
                // (Redis unblocks it); shared-pool replies still in flight are read and dropped.
                Event::Read(Ok(0)) if self.lease.is_some() => return Err(Close),
                Event::Read(Ok(0)) => self.closing = true,
                Event::Read(Ok(n)) => {
                    if self.inbuf.capacity() == self.inbuf.len() && n >= self.read_chunk {
                        // The client sends more than the buffer held: read bigger next time.
                        self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
                    }
                    self.on_bytes().await?;
                }
                Event::Resume => {
                    self.held = false;
                    self.on_bytes().await?;
                }
                Event::Shutdown => self.closing = true,
                // The flag is checked at the top of the loop.
                Event::Killed => {}
                Event::LeaseIdle => {
                    warn!(
                        session = self.id,
                        "client idle in a transaction past lease_idle_timeout; closing it"
                    );
                    return Err(Close);
                }
            }
        }
    }

    /// Writes what is ready for the client if the socket takes it at once; otherwise the loop's
    /// write branch waits for it.
    fn write_now<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> Result<(), Close> {
        if self.out.is_empty() {
            return Ok(());
        }
        match self.out.write_now(wr) {
            Some(Ok(0)) | Some(Err(_)) => Err(Close),
            Some(Ok(n)) => {
                self.wrote(n);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `n` reply bytes reached the client's socket.
    fn wrote(&mut self, n: usize) {
        self.out.advance(n);
        self.outflow.wrote(n, tokio::time::Instant::now());
    }
}

/// A wake-up that rarely comes (shutdown, `CLIENT KILL`), waited for in every pass of the session
/// loop. Once its future has returned `Pending` it holds the task's waker, so later polls with the
/// same waker only ask `fired` instead of polling it again (each poll of a `Notified` locks its
/// `Notify`'s waiter list: twice per command for a non-pipelined client). `fired` must be true
/// before the future wakes the task: `Client::kill` sets its flag before `notify_one`, and a
/// `CancellationToken` is cancelled before its waiters are woken (tokio-util's
/// `WaitForCancellationFuture::poll` relies on the same order).
struct Armed<F, C> {
    future: F,
    fired: C,
    /// The waker the future was last polled with (it holds a clone of it).
    waker: Option<Waker>,
}

impl<F, C> Armed<F, C> {
    fn new(future: F, fired: C) -> Self {
        Armed {
            future,
            fired,
            waker: None,
        }
    }
}

impl<F: Future + Unpin, C: Fn() -> bool + Unpin> Future for Armed<F, C> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let armed = this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if armed && !(this.fired)() {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut this.future).poll(cx);
        this.waker = poll.is_pending().then(|| cx.waker().clone());
        poll
    }
}

/// One read attempt now, without waiting: `None` when the socket has nothing to read (tokio then
/// clears its readiness, so the next wait is a real one).
fn read_now<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Option<io::Result<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    match tokio_util::io::poll_read_buf(Pin::new(rd), &mut cx, buf) {
        Poll::Ready(read) => Some(read),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn an_armed_wait_sees_a_signal_sent_after_it_was_armed() {
        let (notify, flag) = (Notify::new(), AtomicBool::new(false));
        let fire = || {
            flag.store(true, Ordering::Relaxed);
            notify.notify_one();
        };
        let notified = std::pin::pin!(notify.notified());
        let mut armed = Armed::new(notified, || flag.load(Ordering::Relaxed));
        let mut polls = 0;
        std::future::poll_fn(|cx| {
            polls += 1;
            match polls {
                // Arms it, then waits on the flag alone.
                1 | 2 => assert!(Pin::new(&mut armed).poll(cx).is_pending()),
                // The signal comes while it waits: the task is woken and the next poll is ready.
                3 => {
                    fire();
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                _ => return Pin::new(&mut armed).poll(cx),
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
        assert_eq!(polls, 4);
    }

    #[tokio::test]
    async fn an_armed_wait_wakes_the_task_when_the_signal_comes() {
        let notify = Arc::new(Notify::new());
        let flag = Arc::new(AtomicBool::new(false));
        let (n, f) = (notify.clone(), flag.clone());
        let waiter = tokio::spawn(async move {
            let notified = std::pin::pin!(n.notified());
            Armed::new(notified, || f.load(Ordering::Relaxed)).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        flag.store(true, Ordering::Relaxed);
        notify.notify_one();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("no panic");
    }
}
