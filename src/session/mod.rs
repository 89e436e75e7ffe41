//! One client connection: read request frames, classify them, answer locally or send them upstream,
//! and write every reply back in command order.
//!
//! The session is the client's *virtual connection*: it keeps the state a Redis connection would
//! have (db, protocol, user, name, reply mode, transaction, subscriptions) and routes each command
//! to a connection in that state: a shared pool for stateless work, a leased dedicated connection
//! while a transaction, a blocking command, a subscription, MONITOR or client-side caching
//! (`CLIENT TRACKING`, see `session/tracking.rs`) needs one.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, unix};
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::chunks::Chunks;
use crate::clients::{self, Client, Registry};
use crate::command::{self, Args, Kind, ReplyMode, Shape};
use crate::config::Secret;
use crate::error::UpstreamError;
use crate::follow::{self, Change, Follow};
use crate::live::{Cached, Live};
use crate::metrics::ClientMetrics;
use crate::outflow::{Breach, Outflow, OutputLimit, ServerLimit, READ_PAUSE_OWED_BYTES};
use crate::pool::{Credentials, Lease, Pool, PoolKey, Pools, Tap};
use crate::reply::{self, ReplyRx, ReplyTx, Response};
use crate::resp::{self, RequestFrame, RequestKind, RequestLimits, RequestScanner};
use crate::spare;
use crate::upstream::{Request, UpstreamHandle};

mod identity;
mod refused;
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

/// Redis's answer to any command but AUTH/HELLO/QUIT before authentication.
const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
/// Redis's answer to a wrong password.
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
/// Redis's answer to HELLO without AUTH on a connection that must authenticate first.
const HELLO_NOAUTH: &str = "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
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
            max_inflight: config.max_client_inflight.get(),
            max_reply_bytes: config.max_client_reply_bytes.get(),
            request: RequestLimits {
                max_request_bytes: config.max_request_bytes.get(),
                max_args: config.max_request_args.get(),
            },
            command_timeout: config.command_timeout,
            requirepass: config.requirepass.clone(),
            deny_commands: config.deny_commands.clone(),
            lease_idle_timeout: config.lease_idle_timeout,
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
    /// Every connected session, for `CLIENT LIST`, `KILL` and `UNBLOCK`.
    pub clients: Registry,
}

/// An answer the client is owed, in command order.
enum Pending {
    /// This many replies will come from the upstream connection; `shown: false` drops them
    /// (`CLIENT REPLY OFF|SKIP`). `follow`: state changes the reply decides (one command).
    Upstream {
        count: u32,
        shown: bool,
        follow: Option<Box<Follow>>,
    },
    /// An answer respipe gives itself, held back until the upstream replies before it are written.
    Local(Bytes),
    /// One reply from the upstream that the session turns into its own answer (`CLIENT ID`,
    /// `LIST`, `KILL`...: Redis checks, respipe answers); then like `Upstream` with a count of 1.
    Check(Box<identity::Check>),
}

/// What woke the session loop.
enum Event {
    Reply(Response),
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
    /// The shared connection in use while `inflight > 0` (invariant 2: per-client order).
    current: Option<UpstreamHandle>,
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
}

impl State {
    fn new(shared: &Shared) -> Self {
        State {
            db: shared.pools.default_pool().key().db,
            resp3: false,
            auth: None,
            name: None,
            reply: ReplyMode::On,
            authenticated: shared.limits.load().requirepass.is_none(),
            in_multi: false,
            watching: false,
            streaming: None,
            unsubscribing: false,
            queued: 0,
            changes: Vec::new(),
            exec_frames: 0,
            tracking: false,
            redirect: None,
        }
    }

    /// Takes a change Redis accepted.
    fn apply(&mut self, change: Change) {
        match change {
            Change::Db(db) => self.db = db,
            Change::User(user) => self.auth = Some(user),
            Change::Resp3(resp3) => self.resp3 = resp3,
            Change::Name(name) => self.name = name,
            Change::Tracking { on, redirect } => {
                self.tracking = on;
                self.redirect = redirect.filter(|_| on);
            }
        }
    }

    fn key(&self) -> PoolKey {
        PoolKey {
            db: self.db,
            resp3: self.resp3,
            auth: self.auth.clone(),
        }
    }

    /// True when connections in `key`'s state can serve this session. Checked for every command, so
    /// it builds nothing and compares credentials by pointer first (they are the session's own `Arc`).
    fn is_in(&self, key: &PoolKey) -> bool {
        key.db == self.db
            && key.resp3 == self.resp3
            && match (&key.auth, &self.auth) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            }
    }

    /// Whether this command's answer reaches the client (`CLIENT REPLY`); SKIP lasts one command.
    fn take_shown(&mut self) -> bool {
        match self.reply {
            ReplyMode::On => true,
            ReplyMode::Off => false,
            ReplyMode::Skip => {
                self.reply = ReplyMode::On;
                false
            }
        }
    }
}

/// The read half of a client socket: bytes through `AsyncRead` (whose short reads clear tokio's
/// cached readiness, so a drained socket costs no extra `EAGAIN` read), plus a readiness wait used
/// while the session holds no read buffer at all (an idle client spends no memory on one).
pub trait ClientRead: AsyncRead + Unpin {
    /// True when `readable` reports the socket's readiness; false when it is always ready and
    /// only a read can tell (the session then waits in `read` with a buffer).
    const READINESS: bool = true;

    /// Resolves when the socket may be readable.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
}

macro_rules! client_read {
    ($($half:ty),*) => {$(
        impl ClientRead for $half {
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$half>::readable(self)
            }
        }
    )*};
}

client_read!(tcp::ReadHalf<'_>, unix::ReadHalf<'_>);

/// A TLS stream's read half: TLS has no readiness of its own (bytes on the socket may not be a
/// whole record), so it reports ready and the session waits in `read` with a buffer.
impl<T: AsyncRead + Send> ClientRead for tokio::io::ReadHalf<T> {
    const READINESS: bool = false;

    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        std::future::ready(Ok(()))
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
        current: None,
        pool: shared.pools.default_pool(),
        pool_generation: shared.pools.generation(),
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
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        let client = self.client.clone();
        let mut killed = std::pin::pin!(client.killed());
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
                        rd.readable().await?;
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
                Event::Reply(response) => {
                    let leased = self.lease.is_some();
                    self.on_response(response)?;
                    // Everything already answered goes out in the same write.
                    while let Some(response) = self.rx.try_recv() {
                        self.on_response(response)?;
                    }
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

    /// Handles the requests in the read buffer (new bytes, or requests held back by the throttle).
    async fn on_bytes(&mut self) -> Result<(), Close> {
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

    /// True when the replies owed (unsent ones, and those of the commands in flight plus `more`
    /// about to be sent, at this client's reply weight) are too heavy to send another command:
    /// throttling that keeps a client that reads slowly far from `max_client_reply_bytes`. One
    /// command always may go when nothing is owed, however large its reply.
    fn owes_too_much(&self, more: usize) -> bool {
        let commands = self.inflight + more;
        commands > 0 && self.out.bytes() + self.outflow.owed(commands) >= READ_PAUSE_OWED_BYTES
    }

    /// Gives the read buffer back when nothing is owed and no partial request is buffered: an idle
    /// client holds no buffer, and the next readable event takes a fresh one.
    fn release_if_idle(&mut self) {
        if self.inbuf.is_empty() && self.pending.is_empty() && self.inbuf.capacity() > 0 {
            spare::give(std::mem::take(&mut self.inbuf), READ_CHUNK_MIN);
        }
    }

    /// Free space for the rest of a partly read request that has announced its size (so a large
    /// value is read in few reads, without repeated regrowth); `None` otherwise.
    fn announced(&self) -> Option<usize> {
        self.scanner.needed().map(|total| {
            total
                .saturating_sub(self.inbuf.len())
                .clamp(self.read_chunk, MAX_RESERVE)
        })
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

    /// The common case, without waiting: the complete plain commands at the front of the read buffer
    /// leave as one request on the connection the session already uses. True when nothing but a
    /// partial request is left; false when `on_input` must handle the rest (any other command, a
    /// protocol error, a change of connection, or a full upstream queue).
    fn forward_plain(&mut self) -> Result<bool, Close> {
        if self.closing || !self.batchable() {
            return Ok(false);
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
            let plain = frame.argc > 0
                && frame.kind == RequestKind::Resp
                && self.classify_resp(&self.inbuf[run..run + frame.len], &frame) == Kind::Plain;
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
        while !self.closing {
            if self.owes_too_much(run_count as usize) {
                self.held = run < self.inbuf.len();
                break;
            }
            let frame = match self.scanner.scan(&self.inbuf[run..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    self.send_run(run, run_count).await?;
                    run = 0;
                    run_count = 0;
                    self.protocol_error(&err);
                    break;
                }
            };
            if frame.argc == 0 {
                // Redis ignores empty requests (`*0`, blank inline lines) without a reply.
                self.send_run(run, run_count).await?;
                run = 0;
                run_count = 0;
                self.inbuf.advance(frame.len);
                continue;
            }
            match frame.kind {
                RequestKind::Resp => {
                    let kind = self.classify_resp(&self.inbuf[run..run + frame.len], &frame);
                    if kind == Kind::Plain && self.batchable() {
                        run += frame.len;
                        run_count += 1;
                        continue;
                    }
                    self.send_run(run, run_count).await?;
                    run = 0;
                    run_count = 0;
                    let bytes = self.inbuf.split_to(frame.len).freeze();
                    let name = bytes[frame.name.clone()].to_vec();
                    self.command(kind, &name, Args::Resp(&bytes), bytes.clone())
                        .await?;
                }
                RequestKind::Inline => {
                    self.send_run(run, run_count).await?;
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
        self.send_run(run, run_count).await?;
        if self.closing {
            self.inbuf.clear();
        }
        Ok(())
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
        self.local(reply::protocol_error(err));
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
            return self.answer(Bytes::from_static(NOAUTH.as_bytes()));
        }
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
                self.refuse(reply::refused(name, "with requirepass, inside MULTI"))
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
                self.refuse(reply::refused(name, why)).await
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
                self.refuse(reply::refused(name, IN_MULTI)).await
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
                self.refuse(reply::refused(name, IN_MULTI)).await
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
            Kind::Error(line) => self.answer(Bytes::from_static(line.as_bytes())),
            Kind::Refuse(why) => self.refuse(reply::refused(name, why)).await,
            Kind::Denied => self.refuse(reply::denied(name)).await,
        }
    }

    /// Refuses a command with respipe's own error line. Inside `MULTI` the transaction is aborted
    /// too, as Redis aborts it after any command it rejects while queueing: `EXEC` then answers
    /// `-EXECABORT` and nothing runs.
    async fn refuse(&mut self, line: Bytes) -> Result<(), Close> {
        self.shared.metrics.refused.increment(1);
        if self.state.in_multi {
            let abort = Bytes::from_static(ABORT_MULTI);
            self.send(abort, 1, Route::Current, false, Shape::One, false, None)
                .await?;
        }
        self.local(line);
        Ok(())
    }

    /// `SELECT`, `AUTH`, `HELLO` or `CLIENT SETNAME` while the session needs its lease (inside
    /// `MULTI`, after `WATCH`): the lease runs (or queues) it, as the client's own connection would,
    /// and the session takes the change once Redis accepts it: from its reply, or from `EXEC`'s.
    async fn change_on_lease(
        &mut self,
        kind: &Kind,
        args: Args<'_>,
        bytes: Bytes,
    ) -> Result<(), Close> {
        let changes = follow::requested(kind, args);
        if self.state.in_multi {
            let at = self.state.queued;
            self.state
                .changes
                .extend(changes.into_iter().map(|c| (at, c)));
        } else {
            self.follow = Some(Box::new(Follow::Reply(changes)));
        }
        let sent = self.forward(bytes, Route::Current, false).await;
        self.follow = None;
        sent
    }

    /// Waits for the replies still in flight on a lease the session no longer needs, and gives it
    /// back (the last reply usually does; this also covers a lease with nothing in flight).
    async fn give_back_lease(&mut self) -> Result<(), Close> {
        self.drain().await?;
        self.lease = None;
        self.current = None;
        Ok(())
    }

    /// Redis's refusal of a `CLIENT` subcommand respipe answers from the session's state, for the
    /// session's user (`NOPERM`, an unknown subcommand on an older server); `None` when Redis
    /// allows it. Redis is asked once per user and subcommand, with harmless arguments; while it
    /// cannot be reached the session answers (the setting is the session's own either way).
    async fn client_refusal(&mut self, args: Args<'_>) -> Result<Option<Bytes>, Close> {
        let Some(question) = command::client_probe(args) else {
            return Ok(None);
        };
        let user = self.state.auth.clone();
        let verdict = match self.shared.pools.verdict(user.as_ref(), &question) {
            Some(verdict) => verdict,
            None => {
                // After earlier commands' replies: an ACL SETUSER just before must count.
                self.drain().await?;
                let Some(verdict) = self.ask(&question).await.ok().and_then(|mut r| r.pop()) else {
                    return Ok(None);
                };
                self.shared
                    .pools
                    .remember_verdict(user.as_ref(), question, verdict.clone());
                verdict
            }
        };
        Ok(follow::is_error(&verdict).then_some(verdict))
    }

    /// A command while the lease streams (subscribed, MONITOR): Redis answers it in the stream
    /// (in RESP2 subscribe mode with its own "only ... allowed in this context" error), except what
    /// respipe answers for the session.
    async fn in_stream(&mut self, kind: Kind, name: &[u8], bytes: Bytes) -> Result<(), Close> {
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
                self.local(reply::refused(name, why));
                Ok(())
            }
            Kind::Denied => {
                self.local(reply::denied(name));
                Ok(())
            }
            kind => {
                self.state.unsubscribing = kind == Kind::Unsubscribe;
                self.forward(bytes, Route::Lease, true).await
            }
        }
    }

    /// Answers a command locally (subject to `CLIENT REPLY`), counting it as a local answer.
    fn answer(&mut self, line: Bytes) -> Result<(), Close> {
        if self.state.take_shown() {
            self.local_counted(line);
        }
        Ok(())
    }

    fn local_counted(&mut self, line: Bytes) {
        self.shared.metrics.local.increment(1);
        self.local(line);
    }

    /// Queues a locally produced answer behind the replies still owed before it.
    fn local(&mut self, answer: Bytes) {
        if self.pending.is_empty() {
            self.out.push(answer);
        } else {
            self.owed(Pending::Local(answer));
        }
    }

    /// `SELECT db`: checked on a probe connection (Redis's exact answer, nothing shared touched);
    /// on success later commands run in that db's pool.
    async fn select(&mut self, args: Args<'_>, bytes: Bytes) -> Result<(), Close> {
        let db = args
            .get(1)
            .and_then(command::parse_i64)
            .and_then(|n| u32::try_from(n).ok());
        let known = db.filter(|n| self.shared.pools.known_db(self.state.auth.as_ref(), *n));
        let ok = match known {
            Some(_) => Some(reply::OK),
            None => self.probe(&bytes).await?,
        };
        let Some(line) = ok else { return Ok(()) };
        if line.first() == Some(&b'+') {
            if let Some(db) = db {
                self.shared.pools.learn_db(self.state.auth.as_ref(), db);
                return self.accept(args, vec![Change::Db(db)], line).await;
            }
        }
        self.answer(line)
    }

    /// `AUTH [user] password`: respipe's own password when `requirepass` is set, else checked by
    /// Redis on a probe connection; on success later commands run as that Redis user.
    async fn auth(&mut self, args: Args<'_>, bytes: Bytes) -> Result<(), Close> {
        let (user, password) = match (args.get(1), args.get(2)) {
            (Some(user), Some(password)) => (Some(user), password),
            (Some(password), None) => (None, password),
            _ => return self.forward(bytes, Route::Current, false).await,
        };
        if let Some(required) = &self.limits.requirepass {
            let ok = user.is_none_or(|u| u == b"default") && password == required.0.as_bytes();
            self.state.authenticated |= ok;
            return self.answer(if ok {
                reply::OK
            } else {
                Bytes::from_static(WRONGPASS.as_bytes())
            });
        }
        let Some(line) = self.probe(&bytes).await? else {
            return Ok(());
        };
        if line.first() == Some(&b'+') {
            let user = follow::credentials(user, password);
            return self.accept(args, vec![Change::User(user)], line).await;
        }
        self.answer(line)
    }

    /// `HELLO [protover [AUTH user password] [SETNAME name]]`: Redis answers it on a probe
    /// connection (its exact map or error); on success the session takes the protocol (RESP3 pools),
    /// the user and the name.
    async fn hello(&mut self, args: Args<'_>) -> Result<(), Close> {
        let all: Vec<&[u8]> = args.iter().collect();
        let hello = follow::Hello::parse(&all);
        // The probe gets the command as sent, except the AUTH part when respipe checks it itself.
        let mut probe_args: Vec<&[u8]> = all.clone();
        if let Some(required) = &self.limits.requirepass {
            match hello.auth {
                Some((user, password)) => {
                    if user != b"default" || password != required.0.as_bytes() {
                        return self.answer(Bytes::from_static(WRONGPASS.as_bytes()));
                    }
                    probe_args = without_auth(&all);
                }
                None if !self.state.authenticated => {
                    return self.answer(Bytes::from_static(HELLO_NOAUTH.as_bytes()));
                }
                None => {}
            }
        }
        let Some(line) = self.probe(&resp::encode_request(&probe_args)).await? else {
            return Ok(());
        };
        if !follow::is_error(&line) {
            let mut changes = hello.changes();
            if self.limits.requirepass.is_some() && hello.auth.is_some() {
                // respipe's own password: the session is past `requirepass`, same Redis user.
                changes.retain(|change| !matches!(change, Change::User(_)));
                self.state.authenticated = true;
            }
            return self.accept(args, changes, line).await;
        }
        self.answer(line)
    }

    /// Takes the changes Redis accepted (its answer `line`, which the client gets), unless Redis
    /// will not set up a connection in the state they lead to: then the client gets respipe's
    /// error quoting Redis's refusal and keeps its state, with a working session.
    async fn accept(
        &mut self,
        args: Args<'_>,
        changes: Vec<Change>,
        line: Bytes,
    ) -> Result<(), Close> {
        let mut next = self.state.key();
        for change in &changes {
            match change {
                Change::Db(db) => next.db = *db,
                Change::User(user) => next.auth = Some(user.clone()),
                Change::Resp3(resp3) => next.resp3 = *resp3,
                Change::Name(_) | Change::Tracking { .. } => {}
            }
        }
        // No check for a state some pool is in (its handshake went through), nor as the
        // configured user (the handshake replays what the probes just saw Redis accept).
        if next.auth.is_some() && !self.state.is_in(&next) && !self.shared.pools.serves(&next) {
            let handshake = Box::pin(self.shared.pools.probe(&next, &[])).await;
            if let Err(UpstreamError::Handshake { reply, .. }) = handshake {
                let name = args.get(0).unwrap_or_default();
                return self.answer(reply::unreachable_state(name, &reply));
            }
        }
        for change in changes {
            self.state.apply(change);
        }
        let line = clients::hello_with_id(&line, self.id).unwrap_or(line);
        self.answer(line)
    }

    /// Runs one command on a probe connection in the session's current state; `None` when the
    /// upstream could not be reached (the client has been answered with that error).
    async fn probe(&mut self, command: &Bytes) -> Result<Option<Bytes>, Close> {
        // After the replies of earlier commands: Redis must see what they did first (an ACL
        // SETUSER, a FLUSHALL, a MULTI's changes), as the client's own connection would.
        self.drain().await?;
        Ok(match self.ask(command).await {
            Ok(mut replies) => replies.pop(),
            Err(err) => {
                let _ = self.answer(reply::upstream_unavailable(&err));
                None
            }
        })
    }

    /// Runs one command on a probe connection in the session's current state.
    async fn ask(&self, command: &Bytes) -> Result<Vec<Bytes>, UpstreamError> {
        // Boxed: a probe (connect, TLS handshake, exchange) is a large future, and every session's
        // future would otherwise be sized for it, idle ones included.
        let key = self.state.key();
        Box::pin(self.shared.pools.probe(&key, std::slice::from_ref(command))).await
    }

    /// `SELECT`, `AUTH` or `HELLO` while subscribed in RESP3: Redis runs it on the subscribed
    /// connection and the stream carries its answer; a probe in the session's state says whether
    /// Redis accepts it, so the session's state follows once the subscription ends.
    async fn follow_in_stream(&mut self, kind: &Kind, args: Args<'_>, bytes: &Bytes) {
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
    async fn replicate(&mut self, bytes: Bytes) -> Result<(), Close> {
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
    async fn splice<R, W>(
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
        self.current = None;
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

    /// `RESET` (not streaming, see `reset_stream`): waits for what is in flight, gives back any
    /// lease (closing its connection), and starts over as a new connection would.
    async fn reset(&mut self) -> Result<(), Close> {
        self.drain().await?;
        self.lease = None;
        self.current = None;
        self.state = State::new(&self.shared);
        self.local_counted(reply::RESET);
        Ok(())
    }

    /// `RESET` while the lease streams: Redis answers it after every frame it owes for earlier
    /// commands, leaving subscribe mode or MONITOR; its `+RESET` ends the stream and reaches the
    /// client, and the session starts over as a new connection would.
    async fn reset_stream(&mut self, bytes: Bytes) -> Result<(), Close> {
        if self.end_stream(bytes).await? {
            self.out.push(reply::RESET);
            self.lease = None;
            self.current = None;
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
                Response::Stream { bytes, lost: false } if bytes == reply::RESET => {
                    self.leave_stream();
                    return Ok(true);
                }
                response => self.on_response(response)?,
            }
        }
        Ok(false)
    }

    /// `WAIT`/`WAITAOF` count acknowledgements of this connection's write offset. The client's
    /// writes went to connections whose replies have all arrived (`route` drains them), so they are
    /// already in the replication stream; on a dedicated connection a no-op that Redis replicates
    /// (`reply::WAIT_NOOP`) brings the write offset past them, then the command waits there. When
    /// Redis refuses the no-op (ACL, a Redis without SPUBLISH) the command is refused with its reason.
    async fn wait(&mut self, name: &[u8], bytes: Bytes) -> Result<(), Close> {
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
            Err(_) => reply::shutting_down(),
            Ok(()) => match rx.recv().await {
                Response::Replies { bytes: done, .. } if done.first() == Some(&b':') => {
                    return self.forward(bytes, Route::Current, false).await;
                }
                Response::Replies { bytes: refused, .. } => reply::wait_refused(name, &refused),
                Response::Failed { error, .. } | Response::Stream { bytes: error, .. } => error,
            },
        };
        if !self.lease_needed() {
            self.lease = None;
        }
        self.answer(answer)
    }

    /// Sends the first `len` bytes of the read buffer (`count` stateless requests) upstream.
    async fn send_run(&mut self, len: usize, count: u32) -> Result<(), Close> {
        if count == 0 {
            return Ok(());
        }
        let bytes = self.inbuf.split_to(len).freeze();
        self.send(bytes, count, Route::Current, false, Shape::One, true, None)
            .await
    }

    /// Sends one command where it must run, subject to `CLIENT REPLY`.
    async fn forward(&mut self, bytes: Bytes, route: Route, stream: bool) -> Result<(), Close> {
        let shown = self.state.take_shown();
        self.send(bytes, 1, route, stream, Shape::One, shown, None)
            .await
    }

    /// Sends one command answered as `shape` says where the session's commands run, subject to
    /// `CLIENT REPLY`.
    async fn forward_as(&mut self, bytes: Bytes, shape: Shape) -> Result<(), Close> {
        let shown = self.state.take_shown();
        self.send(bytes, 1, Route::Current, false, shape, shown, None)
            .await
    }

    /// Sends `count` commands upstream, each answered as `shape` says, and records what the client
    /// is owed. Stream requests owe nothing: their answers arrive in the stream. With a `check`,
    /// the one reply becomes the session's own answer.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &mut self,
        bytes: Bytes,
        count: u32,
        route: Route,
        stream: bool,
        shape: Shape,
        shown: bool,
        check: Option<Box<identity::Check>>,
    ) -> Result<(), Close> {
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
            Some(check) if owed => self.owe_as(Pending::Check(check), count),
            _ if owed => self.owe(count, shown),
            _ => {}
        }
        let request = self.request(bytes, count, stream, shape);
        // The queue almost always has room: no timer, no wait. Only a full queue pays for them.
        let request = match handle.try_send(request) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(request)) => request,
            Err(TrySendError::Closed(_)) => {
                return self.unsent(owed, count, reply::shutting_down());
            }
        };
        let error = match self.limits.command_timeout {
            Some(limit) => match tokio::time::timeout(limit, handle.send(request)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(_)) => reply::shutting_down(),
                Err(_) => reply::queue_timeout(handle.addr(), limit),
            },
            None => match handle.send(request).await {
                Ok(()) => return Ok(()),
                Err(_) => reply::shutting_down(),
            },
        };
        self.unsent(owed, count, error)
    }

    /// Records that `count` replies are owed for commands sent upstream.
    fn owe(&mut self, count: u32, shown: bool) {
        let follow = self.follow.take();
        self.undecided += usize::from(follow.is_some());
        self.owe_as(
            Pending::Upstream {
                count,
                shown,
                follow,
            },
            count,
        );
    }

    /// Records `pending` for `count` commands sent upstream.
    fn owe_as(&mut self, pending: Pending, count: u32) {
        self.owed(pending);
        self.inflight += count as usize;
        if self.state.in_multi {
            self.state.queued += count as usize;
        }
    }

    /// Queues an answer the client is owed, in command order.
    fn owed(&mut self, pending: Pending) {
        spare::push_back(&mut self.pending, pending);
    }

    /// A request whose replies come back to this session.
    fn request(&self, bytes: Bytes, count: u32, stream: bool, shape: Shape) -> Request {
        Request {
            bytes,
            count,
            shape,
            reply: self.tx.clone(),
            stream,
        }
    }

    /// A request that never reached the upstream: answered here, in order, as if the upstream had.
    fn unsent(&mut self, owed: bool, count: u32, error: Bytes) -> Result<(), Close> {
        if owed {
            self.on_response(Response::Failed { count, error })
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
    async fn route(&mut self, route: Route) -> Result<Result<UpstreamHandle, Bytes>, Close> {
        if route == Route::Lease && self.lease.is_none() {
            self.drain().await?;
            match self.shared.pools.lease(&self.state.key()) {
                Ok(lease) => self.lease = Some(lease),
                Err(line) => return Ok(Err(line)),
            }
            self.current = None;
            self.name_lease()?;
        }
        if let Some(handle) = self.settled_route() {
            return Ok(Ok(handle));
        }
        self.drain().await?;
        match self.shared.pools.pool(&self.state.key()) {
            Ok(pool) => self.pool = pool,
            Err(line) => return Ok(Err(line)),
        }
        self.pool_generation = self.shared.pools.generation();
        self.current = None;
        Ok(Ok(self.current_handle()))
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
            Err(_) => self.unsent(true, 1, reply::shutting_down()),
        }
    }

    /// The connection for the next command when it needs no change: the lease if the session
    /// holds one, else its connection of the pool for its state. `None` when the session's state
    /// (or a reload) calls for another pool, or its connection retired (a stalled command): the
    /// next command then waits for what is in flight there and goes to a fresh connection.
    fn settled_route(&mut self) -> Option<UpstreamHandle> {
        if let Some(lease) = &self.lease {
            return Some(lease.handle().clone());
        }
        let settled = self.state.is_in(self.pool.key())
            && self.pool_generation == self.shared.pools.generation()
            && !self
                .current
                .as_ref()
                .is_some_and(UpstreamHandle::is_retired);
        settled.then(|| self.current_handle())
    }

    /// The shared connection in use, picked from the session's pool when nothing is in flight.
    fn current_handle(&mut self) -> UpstreamHandle {
        let pool = &self.pool;
        let id = self.id;
        self.current.get_or_insert_with(|| pool.route(id)).clone()
    }

    /// Waits until every reply in flight has arrived (and is queued for the client).
    async fn drain(&mut self) -> Result<(), Close> {
        while self.inflight > 0 {
            let response = self.rx.recv().await;
            self.on_response(response)?;
        }
        Ok(())
    }

    /// True when Redis refuses the user the session authenticated as on its shared pool: the
    /// pool's connection was closed (Redis closes a deleted user's connections; or it was lost
    /// after a password change) and Redis no longer lets it in. The client's own connection
    /// would be gone too. (A lease refused after a password change only fails its command.)
    /// Idle sessions are closed when the refusal happens (`refused`); this catches those whose
    /// pool was first refused by their own command.
    fn user_gone(&self) -> bool {
        self.state.auth.is_some() && self.lease.is_none() && self.pool.user_refused()
    }

    /// True while the session's state needs its dedicated connection.
    fn lease_needed(&self) -> bool {
        self.state.in_multi
            || self.state.watching
            || self.state.streaming.is_some()
            || self.state.tracking
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

    /// Takes replies (or failures) for the oldest pending request and releases any local answers
    /// queued behind it; with nothing pending, a frame of the lease's stream.
    fn on_response(&mut self, response: Response) -> Result<(), Close> {
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
        let Some(Pending::Upstream {
            count: owed,
            shown,
            follow,
        }) = self.pending.front_mut()
        else {
            // A reply nobody asked for would break every later reply's routing: close.
            warn!(
                session = self.id,
                "reply with nothing pending; closing client"
            );
            return Err(Close);
        };
        let shown = *shown;
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
            Response::Stream { .. } => 0,
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
            while let Some(Pending::Local(_)) = self.pending.front() {
                if let Some(Pending::Local(answer)) = self.pending.pop_front() {
                    self.out.push(answer);
                }
            }
        }
        self.inflight -= count as usize;
        if self.inflight == 0 {
            self.current = None;
            if !self.lease_needed() {
                // A blocking command's lease, or a transaction's after EXEC/DISCARD: give it back
                // (idle and out of any transaction or stream, so it can be scrubbed and reused).
                if let Some(lease) = self.lease.take() {
                    self.shared.pools.give_back(lease);
                }
            }
        }
        self.check_reply_limit()
    }

    /// A frame of the lease's stream (a message, a subscription confirmation, a MONITOR line, or
    /// the answer to a command sent while streaming). Once the session has left the stream (the
    /// last unsubscribe, RESET, a lost connection) nothing more is owed from it: late frames are
    /// dropped.
    fn on_stream(&mut self, bytes: Bytes, lost: bool) -> Result<(), Close> {
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

    /// Closes a client whose unsent replies went past a limit: a subscriber's pubsub output limit
    /// (as Redis would close it), anyone's `max_client_reply_bytes`. The log says which limit and
    /// how fast the client was reading.
    fn check_reply_limit(&mut self) -> Result<(), Close> {
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

    /// Redis's `client-output-buffer-limit` for pubsub clients, asked (as the configured user) the
    /// first time any client subscribes; Redis's default when it does not tell.
    async fn read_pubsub_limit(&self) -> OutputLimit {
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

/// One read attempt now, without waiting: `None` when the socket has nothing to read (tokio then
/// clears its readiness, so the next wait is a real one).
fn read_now<R: AsyncRead + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Option<io::Result<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    match tokio_util::io::poll_read_buf(Pin::new(rd), &mut cx, buf) {
        Poll::Ready(read) => Some(read),
        Poll::Pending => None,
    }
}

/// True for the `CLIENT` subcommands respipe answers from the session's state.
fn answered_by_client_state(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::SetName(_) | Kind::GetName | Kind::Accept | Kind::Reply(_) | Kind::Error(_)
    )
}

/// `HELLO` arguments without their `AUTH user password` option (respipe checked it itself).
fn without_auth<'a>(args: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let mut kept = Vec::with_capacity(args.len());
    let mut i = 0;
    while i < args.len() {
        if i >= 2 && args[i].eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
            i += 3;
        } else {
            kept.push(args[i]);
            i += 1;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_auth_option_is_removed() {
        let args: Vec<&[u8]> = vec![b"HELLO", b"3", b"AUTH", b"default", b"pw", b"SETNAME", b"n"];
        let kept: Vec<&[u8]> = vec![b"HELLO", b"3", b"SETNAME", b"n"];
        assert_eq!(without_auth(&args), kept);
        let args: Vec<&[u8]> = vec![b"HELLO", b"3", b"SETNAME", b"auth"];
        assert_eq!(without_auth(&args), args);
    }
}
