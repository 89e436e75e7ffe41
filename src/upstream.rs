//! One upstream connection: a cloneable handle plus one driver task that alone owns the socket,
//! the batch being collected and the FIFO of reply slots (redis-rs `multiplexed_connection.rs`).
//!
//! The driver survives connection loss: it fails every in-flight command with an explicit error,
//! reconnects at once after losing a healthy connection (holding new commands during that attempt),
//! and while Redis refuses fails new commands fast and retries with capped exponential backoff. The
//! handle therefore stays valid for the life of the proxy. A shared connection to the primary of an
//! upstream watched by Sentinel holds new commands instead, for up to the command timeout, and
//! reconnects to whichever primary the sentinels name (at once when they name a new one): a
//! failover costs clients only the commands that were in flight on the old primary.
//!
//! A shared connection whose head command gets no reply within the command timeout (a script that
//! loops; or all of Redis stalled by `DEBUG SLEEP`, a huge `KEYS *`, a frozen process) *retires*:
//! the pool gives new sessions a fresh connection, so they see what a new connection to Redis
//! sees (`-BUSY` during a script, and `SCRIPT KILL`/`FUNCTION KILL` get through; replies as soon
//! as a stalled server wakes), while sessions with commands still in flight on it wait for those
//! (each answered or timed out) before they move (per-client order). A retired driver never
//! reconnects; it ends, closing its socket, when no handle is left: the pool has let go of it and
//! no session is waiting for a reply on it. Late replies of timed-out commands still in transit
//! are dropped with the socket.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, Notify};
use tokio::time::{sleep, sleep_until, timeout, Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::batch::{Batch, BatchPolicy};
use crate::chunks::Chunks;
use crate::command::Shape;
use crate::config::{Endpoint, Upstream};
use crate::error::UpstreamError;
use crate::live::{Cached, Live};
use crate::metrics::{self, UpstreamMetrics};
use crate::pool::Credentials;
use crate::reply::{ErrorReply, ReplyTx, Response};
use crate::resp::{self, ReplyScanner};
use crate::tls::UpstreamTls;

/// First reconnect delay; doubles after each failed attempt up to `reconnect_backoff_max`.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// A connection that answered a command, or stayed up this long, was healthy: when Redis closes it
/// (`CLIENT KILL`, its idle `timeout`, a restart) the driver reconnects at once and new commands wait
/// for that attempt instead of failing through a backoff period. One second is Redis's shortest
/// idle `timeout`. One that dies younger without answering anything (a server that accepts and then
/// closes at once) backs off like a refused connect, so a driver never reconnects in a tight loop.
const HEALTHY_UPTIME: Duration = Duration::from_secs(1);
/// Requests smaller than this are copied into one contiguous write buffer; larger ones are written
/// from their own buffers (vectored), so a 16 MB value is never copied.
const COALESCE_MAX: usize = 4 * 1024;
/// The read buffer is topped up to at least this much free space before each read.
const READ_CHUNK: usize = 64 * 1024;

/// One request for an upstream connection: a run of complete request frames from one session.
#[derive(Debug)]
pub struct Request {
    /// One or more complete RESP request frames, contiguous, forwarded byte for byte.
    pub bytes: Bytes,
    /// How many commands (and so replies) `bytes` holds; at least 1.
    pub count: u32,
    /// How Redis frames each reply (outside stream mode): one frame each, or an unsubscribe's
    /// confirmations (then `count` is 1).
    pub shape: Shape,
    /// Where the replies go: the session's reply channel.
    pub reply: ReplyTx,
    /// Puts the connection in stream mode (subscriptions, MONITOR): from this request's turn on,
    /// every frame Redis sends goes to `reply`, one `Response` per frame, whatever the counts say.
    /// Only for dedicated (leased) connections.
    pub stream: bool,
}

/// Everything a driver needs to know, fixed at start.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Where Redis is, and the credentials and db of the handshake.
    pub upstream: Upstream,
    /// The client's Redis user the connection switches to (`AUTH`) after authenticating as the
    /// configured one; `None`: it stays the configured user.
    pub user: Option<Arc<Credentials>>,
    /// Set by the handshake while Redis refuses the switch to `user` (a deleted user, a changed
    /// password), cleared when it accepts it; read by the pool or lease holding these settings.
    pub user_refused: Arc<AtomicBool>,
    /// Told when sessions of `user` may have to close (see `Pools::user_events`): a shared
    /// pool's switch to it is refused (`user_refused` turns on), or a lease's connection is lost
    /// (its session may be in such a pool's state, and now has no connection Redis kept). Set
    /// for pools and leases, `None` for probes.
    pub user_events: Option<Arc<Notify>>,
    /// The server's run of failures, for ejection from a sharded upstream (`auto_eject_hosts`),
    /// or for a cluster's slot map refresh (a primary whose connections keep failing); `None`
    /// otherwise.
    pub health: Option<Arc<crate::topology::Health>>,
    /// For an upstream watched by Sentinel, the role the server must say it has (`ROLE`) once
    /// connected; `None` otherwise.
    pub role: Option<crate::sentinel::Role>,
    /// Speak RESP3 (`HELLO 3` in the handshake).
    pub resp3: bool,
    /// TLS to the upstream (`rediss://`).
    pub tls: Option<UpstreamTls>,
    /// The coalescing policy and command timeout, reloadable.
    pub tunables: Arc<Live<Tunables>>,
    /// Bound on connect plus handshake.
    pub connect_timeout: Duration,
    /// Cap of the reconnect backoff.
    pub backoff_max: Duration,
    /// Commands in flight on this connection at most; past it the driver stops taking requests,
    /// its queue fills and senders wait (backpressure reaches the clients).
    pub max_inflight: usize,
    /// Requests the handle's queue holds before `send` waits.
    pub queue_capacity: usize,
    /// A leased connection: it carries one client's state (a transaction, subscriptions), so once
    /// lost it never reconnects (that would silently drop the state); every later request fails.
    pub dedicated: bool,
    /// For a lease on the primary of an upstream watched by Sentinel: cancelled when the
    /// sentinels name another primary (`Pools::follow_sentinel`). The connection then ends as a
    /// lost one does, so nothing more runs on the demoted primary: the commands in flight get
    /// errors, Redis discards its transaction and unblocks its blocked command.
    pub superseded: Option<CancellationToken>,
}

#[cfg(test)]
impl UpstreamSettings {
    /// Settings for `upstream` with the default configuration's timeouts, one command in flight
    /// and a queue of one (unit tests that never connect, or barely).
    pub(crate) fn for_tests(upstream: Upstream) -> Self {
        let config = crate::config::Config::default();
        UpstreamSettings {
            upstream,
            user: None,
            user_refused: Arc::default(),
            user_events: None,
            health: None,
            role: None,
            resp3: false,
            tls: None,
            tunables: Arc::new(Live::new(Tunables::from_config(&config))),
            connect_timeout: config.timeouts.connect_timeout,
            backoff_max: config.timeouts.reconnect_backoff_max,
            max_inflight: 1,
            queue_capacity: 1,
            dedicated: false,
            superseded: None,
        }
    }
}

/// What a running driver takes from a configuration reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunables {
    /// The coalescing policy.
    pub policy: BatchPolicy,
    /// A command without a reply after this long is answered with an error and its shared
    /// connection retires (see the module doc); `None` waits forever. Dedicated (leased)
    /// connections never time out: blocking commands wait as long as they like.
    pub command_timeout: Option<Duration>,
}

impl Tunables {
    /// The knobs as the configuration sets them.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Tunables {
            policy: BatchPolicy {
                max_commands: config.batching.max_batch_commands.get(),
                max_bytes: config.batching.max_batch_bytes.get(),
                window: config.batching.batch_window,
            },
            command_timeout: config.timeouts.command_timeout,
        }
    }
}

/// The cloneable handle of one upstream connection.
#[derive(Debug, Clone)]
pub struct UpstreamHandle(Arc<HandleInner>);

/// A handle that does not keep its connection open: it only tells whether the connection's
/// handles are all gone (a lease given back).
#[derive(Debug, Clone)]
pub struct WeakHandle(Weak<HandleInner>);

/// What a handle holds, shared by its clones (a clone is one reference count).
#[derive(Debug)]
struct HandleInner {
    /// Requests to the driver. Bounded by `queue_capacity`: a full queue makes `send` wait. The driver
    /// holds the receiver and exits when every handle is dropped.
    tx: mpsc::Sender<Request>,
    /// True while the driver has an established connection (set by the driver only).
    up: Arc<AtomicBool>,
    /// Set once by the driver of a shared connection whose head command timed out: the pool
    /// replaces it, and sessions leave it once their commands on it are answered.
    retired: Arc<AtomicBool>,
    /// The endpoint, for messages (never with credentials).
    addr: Arc<str>,
}

/// Why a connection's life ended.
enum Ended {
    /// Every handle is gone: the proxy is shutting down.
    Closed,
    /// The connection failed; in-flight commands were answered with errors.
    Lost {
        /// What failed.
        err: UpstreamError,
        /// It answered at least one command: Redis accepted it.
        answered: bool,
        /// Nothing was in flight (Redis closing an idle connection is no surprise).
        idle: bool,
    },
}

/// What woke the connection loop.
enum Event {
    Read(std::io::Result<usize>),
    Wrote(std::io::Result<usize>),
    Request(Option<Request>),
    Tick,
    /// The lease's primary is no longer the primary ([`UpstreamSettings::superseded`]).
    Superseded,
}

/// A reply slot: where the replies of one request go, in the FIFO in exactly the order its bytes were
/// queued for the socket.
struct Slot {
    reply: ReplyTx,
    /// Replies still owed to this slot.
    remaining: u32,
    /// How the next reply is framed; counts down the frames of a multi-frame answer.
    shape: Shape,
    /// When the command timeout expires (`None`: no timeout).
    deadline: Option<Instant>,
    /// Timed out: the session was already answered, late replies are read and dropped.
    dead: bool,
    /// Stream mode: this slot takes every frame from now on and is never popped.
    stream: bool,
}

/// A written batch, remembered until its last reply arrives (for the round-trip metric).
struct WrittenBatch {
    last_seq: u64,
    written_at: Instant,
}

/// Bytes waiting to be written: small requests coalesced into one buffer, large ones kept as they are.
#[derive(Default)]
struct WriteBuf {
    chunks: Chunks,
    tail: BytesMut,
}

/// The state of one established connection, owned by the driver task.
struct Conn<'a> {
    settings: &'a UpstreamSettings,
    /// The reloadable knobs, refreshed at the top of every loop pass.
    tunables: Cached<Tunables>,
    metrics: &'a UpstreamMetrics,
    addr: &'a str,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    fifo: VecDeque<Slot>,
    /// How many slots at the front of the FIFO are dead (deadlines are monotonic, so dead slots
    /// always form a prefix).
    dead_prefix: usize,
    /// Commands in the FIFO (written or queued) whose replies are still owed.
    inflight: usize,
    /// Sequence number of the FIFO's head slot and of the next slot pushed.
    head_seq: u64,
    next_seq: u64,
    /// The batch being collected and its bytes.
    batch: Batch,
    batch_buf: WriteBuf,
    /// The batch being written.
    out: WriteBuf,
    written: VecDeque<WrittenBatch>,
    /// Bytes of complete frames at the front of `rbuf` that belong to the head slot and are not yet
    /// handed over, and how many replies they complete (frames carried along with a reply, see
    /// [`Shape`], wait for it).
    chunk_len: usize,
    chunk_count: u32,
    /// A stream slot is in the FIFO: later requests add no slots (their replies arrive in the stream).
    streaming: bool,
    /// On a dedicated connection, the reply mailbox of the last slot popped: its lessee, who gets
    /// the RESP3 pushes that arrive with nothing in flight (client-side caching's invalidations)
    /// and word of the connection's loss. `None` on shared connections.
    lessee: Option<ReplyTx>,
    /// On a connection to the primary of an upstream watched by Sentinel, its lane's health: told
    /// when a reply is `-READONLY` (the primary was demoted). `None` otherwise: no reply is
    /// looked at.
    primary: Option<&'a crate::topology::Health>,
}

impl UpstreamHandle {
    /// Starts the driver of an upstream connection (`label` names it in metrics) and returns its
    /// handle.
    pub fn spawn(label: String, settings: Arc<UpstreamSettings>) -> Self {
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let up = Arc::new(AtomicBool::new(false));
        let retired = Arc::new(AtomicBool::new(false));
        let addr: Arc<str> = settings.upstream.endpoint.to_string().into();
        let driver = Driver {
            rx,
            settings,
            up: up.clone(),
            retired: retired.clone(),
            metrics: UpstreamMetrics::new(label),
            addr: addr.clone(),
        };
        tokio::spawn(driver.run());
        UpstreamHandle(Arc::new(HandleInner {
            tx,
            up,
            retired,
            addr,
        }))
    }

    /// Queues a request, waiting while the queue is full. Gives the request back if the driver is gone.
    pub async fn send(&self, request: Request) -> Result<(), Request> {
        self.0.tx.send(request).await.map_err(|e| e.0)
    }

    /// Queues a request if the queue has room now; gives it back otherwise.
    pub fn try_send(&self, request: Request) -> Result<(), mpsc::error::TrySendError<Request>> {
        self.0.tx.try_send(request)
    }

    /// Room for one request in the queue if there is some now; the permit sends without waiting.
    pub fn try_reserve(&self) -> Option<mpsc::Permit<'_, Request>> {
        self.0.tx.try_reserve().ok()
    }

    /// True while the connection is established.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Relaxed)
    }

    /// True once a command at the head of this shared connection timed out: it takes no new
    /// sessions, and a session with commands in flight on it moves on once they are answered.
    pub fn is_retired(&self) -> bool {
        self.0.retired.load(Ordering::Relaxed)
    }

    /// The upstream endpoint (no credentials).
    pub fn addr(&self) -> &str {
        &self.0.addr
    }

    /// A reference that does not keep the connection open.
    pub fn downgrade(&self) -> WeakHandle {
        WeakHandle(Arc::downgrade(&self.0))
    }
}

impl WeakHandle {
    /// True while some handle of the connection is held.
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    /// True while the connection is established (false once it is lost, or every handle is gone).
    pub fn is_up(&self) -> bool {
        self.0
            .upgrade()
            .is_some_and(|inner| inner.up.load(Ordering::Relaxed))
    }
}

/// The task behind a handle: connects, runs the connection, and on loss reconnects.
struct Driver {
    rx: mpsc::Receiver<Request>,
    settings: Arc<UpstreamSettings>,
    up: Arc<AtomicBool>,
    /// Set by `retire`, read by the handles.
    retired: Arc<AtomicBool>,
    metrics: UpstreamMetrics,
    addr: Arc<str>,
}

impl Driver {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        // While the upstream stays unreachable, log the first failure only (at warn) and the rest at debug.
        let mut failing = false;
        // Sentinel mode: when the primary became unreachable, while commands are held for it.
        let mut outage: Option<Instant> = None;
        loop {
            let err = match self.connect().await {
                Ok(stream) => {
                    outage = None;
                    if connected_before {
                        self.metrics.reconnects.increment(1);
                    }
                    info!(upstream.addr = %self.addr, "upstream connected");
                    connected_before = true;
                    backoff = BACKOFF_MIN;
                    if let Some(health) = &self.settings.health {
                        health.connected();
                    }
                    self.set_up(true);
                    let since = Instant::now();
                    let ended = match stream {
                        Stream::Tcp(mut s) => {
                            let (r, w) = s.split();
                            self.serve(r, w).await
                        }
                        Stream::Unix(mut s) => {
                            let (r, w) = s.split();
                            self.serve(r, w).await
                        }
                        Stream::Tls(s) => {
                            let (r, w) = tokio::io::split(*s);
                            self.serve(r, w).await
                        }
                    };
                    self.set_up(false);
                    let Ended::Lost {
                        err,
                        answered,
                        idle,
                    } = ended
                    else {
                        return;
                    };
                    if idle {
                        info!(upstream.addr = %self.addr, error = %err, "upstream closed an idle connection");
                    } else {
                        warn!(upstream.addr = %self.addr, error = %err, "upstream connection lost");
                    }
                    failing = !idle;
                    if let Some(health) = self.settings.health.as_ref().filter(|_| !idle) {
                        health.failed();
                    }
                    if self.reconnects_at_once(answered || since.elapsed() >= HEALTHY_UPTIME) {
                        metrics::upstream_error(err.kind());
                        continue;
                    }
                    err
                }
                Err(err) => {
                    if let Some(health) = &self.settings.health {
                        health.failed();
                    }
                    if failing {
                        debug!(upstream.addr = %self.addr, error = %err, "upstream still unavailable");
                    } else {
                        warn!(upstream.addr = %self.addr, error = %err, "upstream unavailable");
                    }
                    err
                }
            };
            failing = true;
            metrics::upstream_error(err.kind());
            if self.settings.dedicated || self.is_retired() {
                if let Some(events) = self.settings.user_events.as_ref() {
                    if self.settings.dedicated {
                        // A lease lost (or never made), told once it is down (see the field's doc).
                        events.notify_one();
                    }
                }
                // A lease's client state is gone with it; a retired connection has a replacement.
                // Either way: fail everything until the last handle is dropped.
                while self.fail_fast(self.settings.backoff_max, &err).await {}
                return;
            }
            let since = *outage.get_or_insert_with(Instant::now);
            let held = match self.hold_limit(&err) {
                Some(limit) if since.elapsed() < limit => self.hold(backoff).await,
                _ => self.fail_fast(backoff, &err).await,
            };
            if !held {
                return;
            }
            backoff = (backoff * 2).min(self.settings.backoff_max);
        }
    }

    /// After losing a connection: true when the next attempt should start now, new commands waiting
    /// for it in the queue (at most `connect_timeout`), rather than after a backoff period that
    /// fails them. Only a shared, serving connection that was `healthy` qualifies (see
    /// [`HEALTHY_UPTIME`]); a failed attempt then backs off as usual.
    fn reconnects_at_once(&self, healthy: bool) -> bool {
        healthy && !self.settings.dedicated && !self.is_retired()
    }

    fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    /// The connection's head command timed out (`conn.expire` answered it): stop taking new
    /// sessions. The pool replaces this handle the next time it routes a session here, and the
    /// replacement reports under the same `conn` label, so from now on this driver leaves the
    /// label's gauges alone (`up` stays 1 until the replacement sets it: this connection still
    /// serves the commands already on it).
    fn retire(&self) {
        if self.retired.swap(true, Ordering::Relaxed) {
            return;
        }
        metrics::upstream_error(metrics::STALLED);
        self.metrics.inflight.set(0.0);
        warn!(
            upstream.addr = %self.addr,
            "upstream connection stalled: a command got no reply within command_timeout; new commands go to a fresh connection"
        );
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        if self.is_retired() {
            return;
        }
        self.metrics.up.set(if up { 1.0 } else { 0.0 });
        if !up {
            self.metrics.inflight.set(0.0);
        }
    }

    /// Connects and runs the handshake, bounded by the connect timeout. A shared connection to
    /// the primary of an upstream watched by Sentinel connects to the primary the sentinels name
    /// now (the client spec: resolve again on every reconnect), so the commands it holds through
    /// a failover reach the new primary (`ROLE`-checked like any).
    async fn connect(&self) -> Result<Stream, UpstreamError> {
        let moved = (self.settings.health.as_ref())
            .and_then(|health| health.superseded())
            .filter(|_| !self.settings.dedicated);
        match moved {
            Some(primary) => {
                debug!(upstream.addr = %self.addr, primary = %primary, "connecting to the primary the sentinels name now");
                let settings = UpstreamSettings {
                    upstream: Upstream {
                        endpoint: primary,
                        ..self.settings.upstream.clone()
                    },
                    health: None,
                    ..(*self.settings).clone()
                };
                open(&settings).await
            }
            None => open(&self.settings).await,
        }
    }

    /// How long commands for this connection may wait through an outage for a primary to come
    /// back or be replaced, instead of failing fast: a shared connection to the primary of an
    /// upstream watched by Sentinel that became unreachable (not one that says another role: the
    /// sentinels still name it), for `command_timeout` (none when it is off). `None`: fail fast.
    fn hold_limit(&self, err: &UpstreamError) -> Option<Duration> {
        let unreachable = matches!(
            err,
            UpstreamError::Io { .. }
                | UpstreamError::ConnectTimeout { .. }
                | UpstreamError::Closed { .. }
                | UpstreamError::Superseded { .. }
        );
        let primary = self.settings.role == Some(crate::sentinel::Role::Primary)
            && !self.settings.dedicated
            && !self.is_retired();
        (primary && unreachable)
            .then(|| self.settings.tunables.load().command_timeout)
            .flatten()
    }

    /// Waits out one backoff period, or until the sentinels name a primary, leaving the requests
    /// that arrive meanwhile queued for the next connection. Returns false when every handle is
    /// gone and nothing is queued.
    async fn hold(&mut self, period: Duration) -> bool {
        let changes = self
            .settings
            .health
            .as_ref()
            .and_then(|h| h.sentinel_changes());
        let changed = async {
            match changes {
                Some(mut changes) => changes.changed().await.is_ok(),
                None => false,
            }
        };
        tokio::select! {
            _ = sleep(period) => {}
            true = changed => {}
        }
        !(self.rx.is_closed() && self.rx.is_empty())
    }

    /// Waits out one backoff period, answering every request that arrives meanwhile with an
    /// "unavailable" error. Returns false when every handle is gone.
    async fn fail_fast(&mut self, period: Duration, err: &UpstreamError) -> bool {
        let error = ErrorReply::UpstreamUnavailable(err).line();
        let pause = sleep(period);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                biased;
                request = self.rx.recv() => match request {
                    Some(r) => {
                        let response = if r.stream {
                            Response::Stream { bytes: error.clone(), lost: true }
                        } else {
                            Response::Failed { count: r.count, error: error.clone() }
                        };
                        let _ = r.reply.send(response);
                    }
                    None => return false,
                },
                _ = &mut pause => return true,
            }
        }
    }

    /// Runs one established connection until it fails or every handle is gone.
    ///
    /// The loop always reads while it writes: a large pipeline whose replies fill the socket buffers
    /// would otherwise deadlock, Redis blocked on writing replies we do not read while we block on
    /// writing requests it does not read (redis-rs issue #1955).
    async fn serve<R, W>(&mut self, mut rd: R, mut wr: W) -> Ended
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut conn = Conn::new(&self.settings, &self.metrics, &self.addr);
        // Fires at the batch window's end; re-armed when a batch starts.
        let mut window: Pin<Box<Sleep>> = Box::pin(sleep_until(Instant::now()));
        // Fires at (or before) the head slot's command deadline; re-armed lazily after firing.
        let mut expiry: Pin<Box<Sleep>> = Box::pin(sleep_until(Instant::now()));
        let mut expiry_armed = false;
        // Never cancelled when the settings have none (the branch is off then anyway).
        let superseded = self.settings.superseded.clone().unwrap_or_default();
        loop {
            conn.tunables.refresh(&self.settings.tunables);
            let now = Instant::now();
            conn.start_write(now);
            let writing = !conn.out.chunks.is_empty();
            let can_take = !conn.batch.is_full(&conn.tunables.policy)
                && conn.inflight < self.settings.max_inflight;
            let window_due =
                conn.out.is_empty() && conn.batch.deadline(&conn.tunables.policy).is_some();
            let live = conn.fifo.len() > conn.dead_prefix && conn.command_timeout().is_some();
            if live && !expiry_armed {
                if let Some(deadline) = conn.fifo.get(conn.dead_prefix).and_then(|s| s.deadline) {
                    expiry.as_mut().reset(deadline);
                    expiry_armed = true;
                }
            }
            if conn.rbuf.capacity() - conn.rbuf.len() < READ_CHUNK / 4 {
                conn.rbuf.reserve(READ_CHUNK);
            }
            let event = tokio::select! {
                biased;
                r = rd.read_buf(&mut conn.rbuf) => Event::Read(r),
                r = conn.out.chunks.write_to(&mut wr), if writing => Event::Wrote(r),
                _ = superseded.cancelled(), if self.settings.superseded.is_some() => {
                    Event::Superseded
                }
                r = self.rx.recv(), if can_take => Event::Request(r),
                _ = &mut window, if window_due => Event::Tick,
                _ = &mut expiry, if live && expiry_armed => {
                    expiry_armed = false;
                    Event::Tick
                }
            };
            let result = match event {
                Event::Read(Ok(0)) => Err(UpstreamError::Closed {
                    addr: self.addr.to_string(),
                }),
                Event::Read(Ok(_)) => conn.on_read(),
                Event::Read(Err(e)) | Event::Wrote(Err(e)) => Err(UpstreamError::io(&self.addr, e)),
                Event::Wrote(Ok(0)) => Err(UpstreamError::Closed {
                    addr: self.addr.to_string(),
                }),
                Event::Wrote(Ok(n)) => {
                    conn.out.chunks.advance(n);
                    Ok(())
                }
                Event::Request(None) => return Ended::Closed,
                Event::Superseded => Err(UpstreamError::Superseded {
                    addr: self.addr.to_string(),
                    primary: (self.settings.health.as_ref())
                        .and_then(|h| h.superseded())
                        .map_or_else(|| "another".to_owned(), |p| p.to_string()),
                }),
                Event::Request(Some(request)) => {
                    let was_empty = conn.batch.is_empty();
                    // One clock read for everything taken now, not one per request.
                    let now = Instant::now();
                    conn.enqueue(request, now);
                    // Take whatever else is already queued, up to the caps: this is where batches form.
                    while !conn.batch.is_full(&conn.tunables.policy)
                        && conn.inflight < self.settings.max_inflight
                    {
                        match self.rx.try_recv() {
                            Ok(request) => conn.enqueue(request, now),
                            Err(_) => break,
                        }
                    }
                    if was_empty {
                        if let Some(deadline) = conn.batch.deadline(&conn.tunables.policy) {
                            window.as_mut().reset(Instant::from_std(deadline));
                        }
                    }
                    Ok(())
                }
                Event::Tick => {
                    conn.expire(Instant::now());
                    if conn.dead_prefix > 0 {
                        self.retire();
                    }
                    Ok(())
                }
            };
            if let Err(err) = result {
                let idle = conn.fifo.is_empty();
                conn.fail_all(&err);
                return Ended::Lost {
                    err,
                    answered: conn.head_seq > 0,
                    idle,
                };
            }
            if !self.is_retired() {
                self.metrics.inflight.set(conn.inflight as f64);
            }
        }
    }
}

impl<'a> Conn<'a> {
    fn new(settings: &'a UpstreamSettings, metrics: &'a UpstreamMetrics, addr: &'a str) -> Self {
        Conn {
            settings,
            tunables: settings.tunables.cached(),
            metrics,
            addr,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            scanner: ReplyScanner::new(resp::DEFAULT_MAX_REPLY_DEPTH),
            fifo: VecDeque::new(),
            dead_prefix: 0,
            inflight: 0,
            head_seq: 0,
            next_seq: 0,
            batch: Batch::default(),
            batch_buf: WriteBuf::default(),
            out: WriteBuf::default(),
            written: VecDeque::new(),
            chunk_len: 0,
            chunk_count: 0,
            streaming: false,
            lessee: None,
            primary: settings
                .health
                .as_deref()
                .filter(|_| settings.role == Some(crate::sentinel::Role::Primary)),
        }
    }

    /// The command timeout of this connection (none on dedicated ones).
    fn command_timeout(&self) -> Option<Duration> {
        self.tunables
            .command_timeout
            .filter(|_| !self.settings.dedicated)
    }

    /// Adds a request to the batch and its slot to the FIFO. Bytes and slots are both appended in
    /// arrival order and batches are written in order, so the FIFO order is the byte order on the
    /// socket (invariant 1).
    fn enqueue(&mut self, request: Request, now: Instant) {
        self.batch
            .push(request.count as usize, request.bytes.len(), now.into_std());
        self.batch_buf.push(request.bytes);
        if self.streaming {
            // The stream slot already takes every frame, these requests' replies included.
            return;
        }
        self.streaming = request.stream;
        self.inflight += request.count as usize;
        self.fifo.push_back(Slot {
            reply: request.reply,
            remaining: request.count,
            shape: request.shape,
            deadline: self.command_timeout().map(|t| now + t),
            dead: false,
            stream: request.stream,
        });
        self.next_seq += 1;
    }

    /// Moves the collected batch to the socket when nothing is being written and the policy says so.
    fn start_write(&mut self, now: Instant) {
        if !self.out.is_empty() {
            return;
        }
        // Everything in flight is in this batch: no earlier command awaits its reply.
        let idle = self.inflight <= self.batch.commands();
        let Some(reason) = self
            .batch
            .flush_reason(&self.tunables.policy, now.into_std(), idle)
        else {
            return;
        };
        let batch = self.batch.take();
        self.metrics
            .flushed(reason, batch.commands(), batch.bytes());
        if let Some(oldest) = batch.oldest() {
            self.metrics.queue_wait.record(
                now.into_std()
                    .saturating_duration_since(oldest)
                    .as_secs_f64(),
            );
        }
        self.batch_buf.seal();
        std::mem::swap(&mut self.out, &mut self.batch_buf);
        self.written.push_back(WrittenBatch {
            last_seq: self.next_seq - 1,
            written_at: now,
        });
    }

    /// Hands every complete reply in the read buffer to its slot, in FIFO order.
    fn on_read(&mut self) -> Result<(), UpstreamError> {
        loop {
            let Some(slot) = self.fifo.front_mut() else {
                return self.unsolicited();
            };
            let frame = match self.scanner.scan(&self.rbuf[self.chunk_len..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(source) => {
                    return Err(UpstreamError::Protocol {
                        addr: self.addr.to_owned(),
                        source,
                    })
                }
            };
            if slot.stream {
                // Stream mode: each frame goes to the lessee as it comes, pushes included.
                self.chunk_len = frame.len;
                self.chunk_count = 1;
                self.hand_over();
                continue;
            }
            let bytes = &self.rbuf[self.chunk_len..self.chunk_len + frame.len];
            if let Some(primary) = self.primary.filter(|_| bytes.starts_with(b"-READONLY")) {
                // Redis refused the write: the client gets its -READONLY, the sentinels are
                // asked again at once.
                primary.readonly();
            }
            let complete = slot.shape.completes(frame.push, bytes);
            self.chunk_len += frame.len;
            if !complete {
                // Part of the head command's answer before its last frame: a RESP3 push it caused
                // (a shared connection has no subscriptions or tracking that could send one), or an
                // unsubscribe's confirmation. It goes to the same client with that last frame.
                continue;
            }
            self.chunk_count += 1;
            slot.remaining -= 1;
            if slot.remaining == 0 {
                self.hand_over();
                self.pop_slot();
            }
        }
        self.hand_over();
        Ok(())
    }

    /// Bytes arrived while no command is in flight: only pushes may do that. On a dedicated
    /// connection they go to its lessee (a tracking client's invalidations), one frame each,
    /// uncounted; on a shared one nobody asked for them and they are dropped.
    fn unsolicited(&mut self) -> Result<(), UpstreamError> {
        while !self.rbuf.is_empty() {
            match self.scanner.scan(&self.rbuf) {
                Ok(Some(frame)) if frame.push => {
                    let bytes = self.rbuf.split_to(frame.len).freeze();
                    if let Some(lessee) = &self.lessee {
                        let _ = lessee.send(Response::Stream { bytes, lost: false });
                    }
                }
                Ok(None) => return Ok(()),
                Ok(Some(_)) => {
                    return Err(UpstreamError::Protocol {
                        addr: self.addr.to_owned(),
                        source: resp::ProtocolError("reply without a request".into()),
                    })
                }
                Err(source) => {
                    return Err(UpstreamError::Protocol {
                        addr: self.addr.to_owned(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Gives the complete replies gathered for the head slot to its session (or drops them if the
    /// slot timed out or the session is gone).
    fn hand_over(&mut self) {
        if self.chunk_count == 0 {
            // Nothing complete; frames carried along with the next reply wait for it.
            return;
        }
        let bytes = self.rbuf.split_to(self.chunk_len).freeze();
        let count = self.chunk_count;
        self.chunk_len = 0;
        self.chunk_count = 0;
        self.inflight = self.inflight.saturating_sub(count as usize);
        if let Some(slot) = self.fifo.front() {
            let response = if slot.stream {
                Response::Stream { bytes, lost: false }
            } else {
                Response::Replies { bytes, count }
            };
            if !slot.dead {
                // A send error means the client went away: its replies are dropped (invariant 4).
                let _ = slot.reply.send(response);
            }
        }
    }

    fn pop_slot(&mut self) {
        if let Some(slot) = self.fifo.pop_front() {
            if slot.dead {
                self.dead_prefix -= 1;
            }
            if self.settings.dedicated {
                self.lessee = Some(slot.reply);
            }
        }
        let seq = self.head_seq;
        self.head_seq += 1;
        if self.written.front().is_some_and(|w| w.last_seq == seq) {
            if let Some(w) = self.written.pop_front() {
                self.metrics.rtt.record(
                    Instant::now()
                        .saturating_duration_since(w.written_at)
                        .as_secs_f64(),
                );
            }
        }
    }

    /// Answers every slot whose deadline has passed with a timeout error and marks it dead, so its
    /// late replies are read and dropped instead of reaching the next slot's client.
    fn expire(&mut self, now: Instant) {
        let Some(limit) = self.command_timeout() else {
            return;
        };
        let mut error = None;
        let mut timed_out = 0u64;
        for slot in self.fifo.iter_mut().skip(self.dead_prefix) {
            if slot.deadline.is_none_or(|d| d > now) {
                break;
            }
            let error = error.get_or_insert_with(|| {
                ErrorReply::TimedOut {
                    addr: self.addr,
                    timeout: limit,
                }
                .line()
            });
            // Replies already handed over for this slot stay delivered; the rest time out.
            let _ = slot.reply.send(Response::Failed {
                count: slot.remaining,
                error: error.clone(),
            });
            slot.dead = true;
            self.dead_prefix += 1;
            timed_out += u64::from(slot.remaining);
        }
        if timed_out > 0 {
            self.metrics.timeouts.increment(timed_out);
            debug!(upstream.addr = %self.addr, commands = timed_out, "commands timed out");
        }
    }

    /// The connection is gone: every live slot gets an error for the replies it is still owed.
    fn fail_all(&mut self, err: &UpstreamError) {
        let error = ErrorReply::UpstreamLost(err).line();
        // Complete replies already read still go to their slot first.
        self.hand_over();
        if self.fifo.is_empty() {
            if let Some(lessee) = self.lessee.take() {
                // Nothing in flight to fail: the lessee still learns its connection is gone.
                let _ = lessee.send(Response::Stream {
                    bytes: error.clone(),
                    lost: true,
                });
            }
        }
        for slot in self.fifo.drain(..) {
            if slot.stream {
                let _ = slot.reply.send(Response::Stream {
                    bytes: error.clone(),
                    lost: true,
                });
            } else if !slot.dead && slot.remaining > 0 {
                let _ = slot.reply.send(Response::Failed {
                    count: slot.remaining,
                    error: error.clone(),
                });
            }
        }
        self.inflight = 0;
        self.dead_prefix = 0;
    }
}

impl WriteBuf {
    fn push(&mut self, bytes: Bytes) {
        if bytes.len() < COALESCE_MAX {
            self.tail.extend_from_slice(&bytes);
        } else {
            self.seal();
            self.chunks.push(bytes);
        }
    }

    /// Closes the coalescing buffer so the chunks are complete and in order.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push(self.tail.split().freeze());
        }
    }

    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.tail.is_empty()
    }
}

/// An established upstream socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connects as `settings` say (TCP or unix, TLS for `rediss://`) and runs the handshake (AUTH,
/// HELLO 3, SELECT), all within the connect timeout.
async fn open(settings: &UpstreamSettings) -> Result<Stream, UpstreamError> {
    let upstream = &settings.upstream;
    if let Some(crate::sentinel::Role::NotFound { master }) = &settings.role {
        let master = master.clone();
        return Err(UpstreamError::NoPrimary { master });
    }
    let limit = settings.connect_timeout;
    let addr = upstream.endpoint.to_string();
    if let Some(primary) = settings.health.as_ref().and_then(|h| h.superseded()) {
        let primary = primary.to_string();
        return Err(UpstreamError::Superseded { addr, primary });
    }
    let attempt = async {
        let io = |e| UpstreamError::io(&addr, e);
        let mut stream = match &upstream.endpoint {
            Endpoint::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                s.set_nodelay(true).map_err(io)?;
                // The one connector serves every TLS upstream; which ones speak TLS is theirs
                // to say (a sentinel may, and the data nodes not, or the other way round).
                match settings.tls.as_ref().filter(|_| upstream.tls) {
                    Some(tls) => Stream::Tls(Box::new(
                        tls.connector
                            .connect(tls.server_name.clone(), s)
                            .await
                            .map_err(io)?,
                    )),
                    None => Stream::Tcp(s),
                }
            }
            Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path).await.map_err(io)?),
        };
        handshake(&mut stream, settings, &addr).await?;
        Ok(stream)
    };
    match timeout(limit, attempt).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::ConnectTimeout {
            addr: addr.clone(),
            timeout: limit,
        }),
    }
}

/// A raw upstream connection, whatever its transport.
pub trait RawIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> RawIo for T {}

/// Connects and handshakes as `settings` say (like a driver's connection) and hands over the raw
/// connection, for a client that is spliced to it byte for byte.
pub async fn open_raw(settings: &UpstreamSettings) -> Result<Box<dyn RawIo>, UpstreamError> {
    Ok(match open(settings).await? {
        Stream::Tcp(s) => Box::new(s),
        Stream::Unix(s) => Box::new(s),
        Stream::Tls(s) => s,
    })
}

/// Runs `commands` on a short-lived connection of its own (connected and handshaken as `settings`
/// say) and returns Redis's raw replies. Used to check what must not touch a shared connection:
/// `AUTH` credentials, a `SELECT` target, `HELLO`.
pub async fn probe(
    settings: &UpstreamSettings,
    commands: &[Bytes],
) -> Result<Vec<Bytes>, UpstreamError> {
    let mut stream = open(settings).await?;
    let limit = settings.connect_timeout;
    let addr = settings.upstream.endpoint.to_string();
    match timeout(limit, stream.exchange(commands, &addr)).await {
        Ok(result) => result,
        Err(_) => Err(UpstreamError::ConnectTimeout {
            addr,
            timeout: limit,
        }),
    }
}

/// Runs the one command `args` on a short-lived connection (as [`probe`]) and returns its raw
/// reply: what respipe asks a server for itself (`CLUSTER SLOTS`, `ROLE`, `INFO replication`).
pub async fn ask(settings: &UpstreamSettings, args: &[&[u8]]) -> Result<Bytes, UpstreamError> {
    let mut replies = probe(settings, &[resp::encode_request(args)]).await?;
    Ok(replies.swap_remove(0))
}

impl Stream {
    /// Writes `commands` pipelined and reads one raw reply for each.
    async fn exchange(
        &mut self,
        commands: &[Bytes],
        addr: &str,
    ) -> Result<Vec<Bytes>, UpstreamError> {
        match self {
            Stream::Tcp(s) => exchange(s, commands, addr).await,
            Stream::Unix(s) => exchange(s, commands, addr).await,
            Stream::Tls(s) => exchange(s.as_mut(), commands, addr).await,
        }
    }
}

/// Runs the handshake of `settings` on a new connection, in an order the client's own connection
/// could have taken: for a connection that needs a role (Sentinel mode), `ROLE` first, refusing
/// a server that says another; `SELECT` and `HELLO 3` first as the configured user (a client selects its db
/// before it switches to a user that may lack `+select`, and `AUTH` keeps the db), then the switch
/// to the client's user, then, as that user, whatever the configured user was refused. Pipelined:
/// one round trip, two when something is retried. `Err` carries Redis's reply that refused it.
async fn handshake(
    stream: &mut Stream,
    settings: &UpstreamSettings,
    addr: &str,
) -> Result<(), UpstreamError> {
    let wanted = settings
        .role
        .as_ref()
        .and_then(crate::sentinel::Role::reported);
    let plan = Handshake {
        role: wanted.map(|_| resp::encode_request(&[b"ROLE"])),
        ..Handshake::new(&settings.upstream, settings.user.as_deref(), settings.resp3)
    };
    let commands = plan.commands();
    let replies = stream.exchange(&commands, addr).await?;
    let mut retry = Vec::new();
    let switch = plan.switch.as_ref().map(|_| commands.len() - 1);
    let role = plan.role.as_ref().map(|_| usize::from(plan.auth.is_some()));
    for (i, (command, reply)) in commands.iter().zip(&replies).enumerate() {
        if Some(i) == switch {
            note_switch(settings, is_error(reply));
        }
        if let (Some(wanted), true) = (wanted, Some(i) == role && !is_error(reply)) {
            let reported = crate::sentinel::role_of(reply).unwrap_or_default();
            if reported != wanted {
                return Err(UpstreamError::WrongRole {
                    addr: addr.to_owned(),
                    reported,
                    wanted,
                });
            }
        }
        if !is_error(reply) {
            continue;
        }
        if plan.retried_after_switch(i) {
            retry.push(command.clone());
        } else {
            return Err(handshake_refused(addr, reply));
        }
    }
    if !retry.is_empty() {
        if let Some(reply) = stream
            .exchange(&retry, addr)
            .await?
            .iter()
            .find(|r| is_error(r))
        {
            return Err(handshake_refused(addr, reply));
        }
    }
    Ok(())
}

/// Records whether Redis refused the switch to the client's user; for a shared pool, the first
/// refusal after an accepted one (or on its first connection) is announced to
/// `settings.user_events`. Retries that are refused again announce nothing: nothing changed. A
/// lease's driver tells of its loss instead (see `Driver::run`).
fn note_switch(settings: &UpstreamSettings, refused: bool) {
    let before = settings.user_refused.swap(refused, Ordering::Relaxed);
    if refused && !before && !settings.dedicated {
        if let Some(events) = &settings.user_events {
            events.notify_one();
        }
    }
}

/// The first round of the handshake of `settings`, as raw RESP: what a given-back lease is sent
/// after `RESET` to be in its state again (a state that needs a second round fails that check,
/// and the lease closes instead of being reused). Without `ROLE`: the lease's server was
/// checked when it connected.
pub(crate) fn handshake_commands(settings: &UpstreamSettings) -> Vec<Bytes> {
    Handshake::new(&settings.upstream, settings.user.as_deref(), settings.resp3).commands()
}

/// A handshake, as raw RESP commands.
#[derive(Debug)]
struct Handshake {
    /// `AUTH` as the configured user, when it has a password.
    auth: Option<Bytes>,
    /// `ROLE`, as the configured user, on a connection that needs a role (Sentinel mode): the
    /// connection is refused when the server says another.
    role: Option<Bytes>,
    /// `SELECT db` for a non-zero db, `HELLO 3` for RESP3: the state the connection must be in.
    state: Vec<Bytes>,
    /// `AUTH` as the client's user, when the client switched to one.
    switch: Option<Bytes>,
}

impl Handshake {
    fn new(upstream: &Upstream, user: Option<&Credentials>, resp3: bool) -> Self {
        let auth = upstream
            .password
            .as_ref()
            .map(|password| auth_command(upstream.username.as_deref(), password));
        let mut state = Vec::new();
        if upstream.db != 0 {
            let db = upstream.db.to_string();
            state.push(resp::encode_request(&[b"SELECT".as_slice(), db.as_bytes()]));
        }
        if resp3 {
            state.push(resp::encode_request(&[b"HELLO".as_slice(), b"3"]));
        }
        let switch = user.map(|u| auth_command(u.user.as_deref(), &u.password));
        Handshake {
            auth,
            role: None,
            state,
            switch,
        }
    }

    /// Every command of the first round, in order: configured `AUTH`, `ROLE`, state, switch.
    fn commands(&self) -> Vec<Bytes> {
        let mut commands: Vec<Bytes> = self.auth.iter().cloned().collect();
        commands.extend(self.role.iter().cloned());
        commands.extend(self.state.iter().cloned());
        commands.extend(self.switch.iter().cloned());
        commands
    }

    /// True when command `i` of [`Handshake::commands`] is a state command that, refused as the
    /// configured user, gets a second try as the client's user.
    fn retried_after_switch(&self, i: usize) -> bool {
        let first = usize::from(self.auth.is_some()) + usize::from(self.role.is_some());
        self.switch.is_some() && (first..first + self.state.len()).contains(&i)
    }
}

/// `AUTH [user] password` (no user, or an empty one: the default user).
fn auth_command(user: Option<&str>, password: &str) -> Bytes {
    match user {
        Some(user) if !user.is_empty() => {
            resp::encode_request(&[b"AUTH".as_slice(), user.as_bytes(), password.as_bytes()])
        }
        _ => resp::encode_request(&[b"AUTH".as_slice(), password.as_bytes()]),
    }
}

/// True for an error reply (RESP2 `-`, RESP3 blob error `!`).
fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

/// Redis refused a handshake command with `reply`.
fn handshake_refused(addr: &str, reply: &[u8]) -> UpstreamError {
    UpstreamError::Handshake {
        addr: addr.to_owned(),
        reply: String::from_utf8_lossy(&reply[1..]).trim_end().to_owned(),
    }
}

/// Writes `commands` pipelined and reads one raw reply frame for each.
async fn exchange<S>(
    stream: &mut S,
    commands: &[Bytes],
    addr: &str,
) -> Result<Vec<Bytes>, UpstreamError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io = |e| UpstreamError::io(addr, e);
    let mut out = BytesMut::new();
    for c in commands {
        out.extend_from_slice(c);
    }
    stream.write_all(&out).await.map_err(io)?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut scanner = ReplyScanner::new(resp::DEFAULT_MAX_REPLY_DEPTH);
    let mut replies = Vec::with_capacity(commands.len());
    while replies.len() < commands.len() {
        match scanner.scan(&buf) {
            Ok(Some(frame)) => replies.push(buf.split_to(frame.len).freeze()),
            Ok(None) => {
                if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
                    return Err(UpstreamError::Closed {
                        addr: addr.to_owned(),
                    });
                }
            }
            Err(source) => {
                return Err(UpstreamError::Protocol {
                    addr: addr.to_owned(),
                    source,
                })
            }
        }
    }
    Ok(replies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Endpoint;

    fn upstream(user: Option<&str>, password: Option<&str>, db: u32) -> Upstream {
        Upstream {
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 6379,
            },
            tls: false,
            username: user.map(Into::into),
            password: password.map(Into::into),
            db,
        }
    }

    #[test]
    fn handshake_is_empty_without_credentials_or_db() {
        assert!(Handshake::new(&upstream(None, None, 0), None, false)
            .commands()
            .is_empty());
    }

    #[test]
    fn handshake_authenticates_then_selects() {
        let plan = Handshake::new(&upstream(Some("app"), Some("secret"), 2), None, true);
        let cmds = plan.commands();
        assert_eq!(
            &cmds[0][..],
            b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$6\r\nsecret\r\n"
        );
        assert_eq!(&cmds[1][..], b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n");
        assert_eq!(&cmds[2][..], b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
        assert!((0..3).all(|i| !plan.retried_after_switch(i)));
        let cmds = Handshake::new(&upstream(Some(""), Some("pw"), 0), None, false).commands();
        assert_eq!(
            &cmds[..],
            &[Bytes::from_static(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n")]
        );
    }

    #[test]
    fn handshake_selects_before_switching_user_and_retries_after() {
        let bob = Credentials {
            user: Some("bob".into()),
            password: "123".into(),
        };
        let plan = Handshake::new(&upstream(None, Some("pw"), 9), Some(&bob), false);
        let cmds = plan.commands();
        assert_eq!(&cmds[0][..], b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n");
        assert_eq!(&cmds[1][..], b"*2\r\n$6\r\nSELECT\r\n$1\r\n9\r\n");
        assert_eq!(
            &cmds[2][..],
            b"*3\r\n$4\r\nAUTH\r\n$3\r\nbob\r\n$3\r\n123\r\n"
        );
        let retried: Vec<bool> = (0..3).map(|i| plan.retried_after_switch(i)).collect();
        assert_eq!(retried, [false, true, false]);
    }
    #[test]
    fn a_role_check_comes_right_after_authenticating_as_the_configured_user() {
        let bob = Credentials {
            user: Some("bob".into()),
            password: "123".into(),
        };
        let plan = Handshake {
            role: Some(resp::encode_request(&[b"ROLE"])),
            ..Handshake::new(&upstream(None, Some("pw"), 9), Some(&bob), false)
        };
        let cmds = plan.commands();
        assert_eq!(&cmds[1][..], b"*1\r\n$4\r\nROLE\r\n");
        assert_eq!(&cmds[2][..], b"*2\r\n$6\r\nSELECT\r\n$1\r\n9\r\n");
        let retried: Vec<bool> = (0..4).map(|i| plan.retried_after_switch(i)).collect();
        assert_eq!(retried, [false, false, true, false]);
        let refused = UpstreamError::WrongRole {
            addr: "127.0.0.1:6380".into(),
            reported: "slave".into(),
            wanted: "master",
        };
        assert_eq!(
            refused.to_string(),
            "upstream 127.0.0.1:6380 is a replica now (ROLE slave), not the primary the sentinels named"
        );
    }

    #[tokio::test]
    async fn write_buf_coalesces_small_and_keeps_large() {
        let mut w = WriteBuf::default();
        w.push(Bytes::from_static(b"ab"));
        w.push(Bytes::from_static(b"cd"));
        w.push(Bytes::from(vec![b'x'; COALESCE_MAX]));
        w.push(Bytes::from_static(b"ef"));
        w.seal();
        assert_eq!(w.chunks.bytes(), 4 + COALESCE_MAX + 2);
        let mut written = Vec::new();
        let n = w
            .chunks
            .write_to(&mut written)
            .await
            .expect("a Vec takes every byte");
        assert_eq!(n, 4 + COALESCE_MAX + 2);
        assert_eq!(&written[..4], b"abcd");
        assert_eq!(&written[n - 2..], b"ef");
        w.chunks.advance(n);
        assert!(w.is_empty());
    }
}
