//! One client connection: read request frames, classify them, answer locally or send them upstream,
//! and write every reply back in command order.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{tcp, unix};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::chunks::Chunks;
use crate::command::{self, Action, Args, Local};
use crate::metrics::ClientMetrics;
use crate::pool::{Pools, RouteKey};
use crate::reply::{self, ReplyRx, ReplyTx, Response};
use crate::resp::{self, RequestKind, RequestLimits, RequestScanner};
use crate::upstream::{Request, UpstreamHandle};

/// While this many reply bytes wait for the client to read them, respipe stops reading the client's
/// requests (backpressure); the hard limit that closes the client is `max_client_reply_bytes`.
const READ_PAUSE_REPLY_BYTES: usize = 1024 * 1024;
/// Free space a read buffer starts with; doubled (up to `READ_CHUNK_MAX`) whenever a read fills it.
const READ_CHUNK_MIN: usize = 4 * 1024;
/// Most free space topped up before a read (larger announced requests reserve more, see `reserve`).
const READ_CHUNK_MAX: usize = 64 * 1024;
/// The most a single reserve grows the read buffer when a large request is announced.
const MAX_RESERVE: usize = 4 * 1024 * 1024;

/// Per-client limits, from the config.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Commands in flight at most; past it respipe stops reading the client.
    pub max_inflight: usize,
    /// Unsent reply bytes at most; past it the client is closed.
    pub max_reply_bytes: usize,
    /// Request size bounds.
    pub request: RequestLimits,
    /// How long a request may wait for room in an upstream queue.
    pub command_timeout: Option<Duration>,
}

/// What every session shares.
pub struct Shared {
    /// The upstream connections and the routing step.
    pub pools: Pools,
    /// Metric handles.
    pub metrics: ClientMetrics,
    /// Per-client limits.
    pub limits: SessionLimits,
    /// Cancelled at shutdown: sessions stop reading, finish what is in flight and close.
    pub shutdown: CancellationToken,
}

/// An answer the client is owed, in command order.
enum Pending {
    /// This many replies will come from the upstream connection.
    Upstream(u32),
    /// An answer respipe gives itself, held back until the upstream replies before it are written.
    Local(Bytes),
}

/// What woke the session loop.
enum Event {
    Reply(Option<Response>),
    Wrote(io::Result<usize>),
    /// `None`: the socket became readable while the session had no buffer.
    Read(io::Result<Option<usize>>),
    Shutdown,
}

/// The session must close now: the client's socket failed, or a limit was hit (reason logged).
struct Close;

/// One client connection's state.
struct Session {
    id: u64,
    shared: Arc<Shared>,
    scanner: RequestScanner,
    inbuf: BytesMut,
    /// Free space to have before a read: grows while the client sends a lot at once.
    read_chunk: usize,
    /// Replies ready for the client, written with one vectored write where possible.
    out: Chunks,
    pending: VecDeque<Pending>,
    /// Commands sent upstream whose replies have not all arrived.
    inflight: usize,
    /// The upstream connection in use while `inflight > 0` (invariant 2: per-client order).
    current: Option<UpstreamHandle>,
    /// The session's reply channel: a clone of `tx` rides in every request's reply slot; `rx` is
    /// read by this task only. Holding `tx` keeps `rx` open for the life of the session.
    tx: ReplyTx,
    rx: ReplyRx,
    /// No more requests are read (QUIT, protocol error, EOF, shutdown); close once all is written.
    closing: bool,
    /// `CLIENT SETNAME`.
    name: Option<Vec<u8>>,
}

/// The read half of a client socket: bytes through `AsyncRead` (whose short reads clear tokio's
/// cached readiness, so a drained socket costs no extra `EAGAIN` read), plus a readiness wait used
/// while the session holds no read buffer at all (an idle client spends no memory on one).
pub trait ClientRead: AsyncRead + Unpin {
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

/// Serves one client until it leaves, QUITs, breaks the protocol, or the proxy shuts down. The
/// halves are the socket's borrowed split: no lock between reading and writing.
pub async fn serve<R, W>(rd: R, wr: W, id: u64, shared: Arc<Shared>)
where
    R: ClientRead,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut session = Session {
        id,
        scanner: RequestScanner::new(shared.limits.request),
        shared,
        inbuf: BytesMut::new(),
        read_chunk: READ_CHUNK_MIN,
        out: Chunks::default(),
        pending: VecDeque::new(),
        inflight: 0,
        current: None,
        tx,
        rx,
        closing: false,
        name: None,
    };
    session.shared.metrics.connections.increment(1.0);
    session.shared.metrics.accepted.increment(1);
    let _ = session.run(rd, wr).await;
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
        loop {
            if self.closing && self.pending.is_empty() && self.out.is_empty() {
                let _ = wr.shutdown().await;
                return Ok(());
            }
            let can_read = !self.closing
                && self.inflight < self.shared.limits.max_inflight
                && self.out.bytes() < READ_PAUSE_REPLY_BYTES;
            let writing = !self.out.is_empty();
            let inbuf = &mut self.inbuf;
            let event = tokio::select! {
                biased;
                r = self.rx.recv() => Event::Reply(r),
                r = self.out.write_to(&mut wr), if writing => Event::Wrote(r),
                r = async {
                    if inbuf.capacity() == 0 {
                        rd.readable().await.map(|()| None)
                    } else {
                        rd.read_buf(inbuf).await.map(Some)
                    }
                }, if can_read => Event::Read(r),
                _ = shutdown.cancelled(), if !self.closing => Event::Shutdown,
            };
            match event {
                Event::Reply(Some(response)) => {
                    self.on_response(response)?;
                    // Everything already answered goes out in the same write.
                    while let Ok(response) = self.rx.try_recv() {
                        self.on_response(response)?;
                    }
                    self.release_if_idle();
                }
                // Unreachable while the session holds `tx`; treat as closed.
                Event::Reply(None) => return Err(Close),
                Event::Wrote(Ok(0)) | Event::Wrote(Err(_)) | Event::Read(Err(_)) => {
                    return Err(Close)
                }
                Event::Wrote(Ok(n)) => self.out.advance(n),
                // Readable with no buffer: take one; the read itself happens next round.
                Event::Read(Ok(None)) => self.reserve(),
                Event::Read(Ok(Some(0))) => self.closing = true,
                Event::Read(Ok(Some(n))) => {
                    if self.inbuf.capacity() == self.inbuf.len() && n >= self.read_chunk {
                        // The client sends more than the buffer held: read bigger next time.
                        self.read_chunk = (self.read_chunk * 2).min(READ_CHUNK_MAX);
                    }
                    self.on_input().await?;
                    self.release_if_idle();
                }
                Event::Shutdown => self.closing = true,
            }
        }
    }

    /// Gives the read buffer back when nothing is owed and no partial request is buffered: an idle
    /// client holds no buffer, and the next readable event takes a fresh one.
    fn release_if_idle(&mut self) {
        if self.inbuf.is_empty() && self.pending.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = BytesMut::new();
        }
    }

    /// Makes room for the next read, more when a large request has announced its size.
    fn reserve(&mut self) {
        let free = self.inbuf.capacity() - self.inbuf.len();
        let wanted = match self.scanner.needed() {
            Some(total) => total
                .saturating_sub(self.inbuf.len())
                .clamp(self.read_chunk, MAX_RESERVE),
            None => self.read_chunk,
        };
        if free < wanted {
            self.inbuf.reserve(wanted);
        }
    }

    /// Scans every complete request in the read buffer. Consecutive forwarded requests leave as one
    /// slice of the buffer; a request answered locally ends the run and takes its turn in `pending`.
    async fn on_input(&mut self) -> Result<(), Close> {
        let mut run = 0usize;
        let mut run_count = 0u32;
        while !self.closing {
            let frame = match self.scanner.scan(&self.inbuf[run..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    self.send_run(run, run_count).await;
                    run = 0;
                    run_count = 0;
                    debug!(session = self.id, error = %err, "client protocol error");
                    self.shared.metrics.closed_protocol.increment(1);
                    self.local(reply::protocol_error(&err));
                    self.closing = true;
                    self.inbuf.clear();
                    break;
                }
            };
            if frame.argc == 0 {
                // Redis ignores empty requests (`*0`, blank inline lines) without a reply.
                self.send_run(run, run_count).await;
                run = 0;
                run_count = 0;
                self.inbuf.advance(frame.len);
                continue;
            }
            match frame.kind {
                RequestKind::Resp => {
                    let bytes = &self.inbuf[run..run + frame.len];
                    let name = &bytes[frame.name.clone()];
                    let action = command::classify(name, Args::Resp(bytes), self.shared.pools.db());
                    let Action::Answer(local) = action else {
                        run += frame.len;
                        run_count += 1;
                        continue;
                    };
                    let name = name.to_vec();
                    self.send_run(run, run_count).await;
                    run = 0;
                    run_count = 0;
                    self.inbuf.advance(frame.len);
                    self.act(local, &name);
                }
                RequestKind::Inline => {
                    self.send_run(run, run_count).await;
                    run = 0;
                    run_count = 0;
                    let line = self.inbuf.split_to(frame.len);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    match resp::parse_inline(line) {
                        Ok(args) if args.is_empty() => {}
                        Ok(args) => {
                            let action = command::classify(
                                &args[0],
                                Args::Inline(&args),
                                self.shared.pools.db(),
                            );
                            match action {
                                Action::Forward => self.send(resp::encode_request(&args), 1).await,
                                Action::Answer(local) => self.act(local, &args[0]),
                            }
                        }
                        Err(err) => {
                            self.shared.metrics.closed_protocol.increment(1);
                            self.local(reply::protocol_error(&err));
                            self.closing = true;
                            self.inbuf.clear();
                        }
                    }
                }
            }
        }
        self.send_run(run, run_count).await;
        if self.closing {
            self.inbuf.clear();
        }
        Ok(())
    }

    /// Answers a request respipe handles itself.
    fn act(&mut self, local: Local, name: &[u8]) {
        let metrics = &self.shared.metrics;
        let answer = match local {
            Local::Quit => {
                self.closing = true;
                reply::OK
            }
            Local::SetName(name) => {
                self.name = if name.is_empty() { None } else { Some(name) };
                reply::OK
            }
            Local::GetName => match &self.name {
                Some(name) => reply::bulk(name),
                None => reply::NULL_BULK,
            },
            Local::SetInfo => reply::OK,
            Local::Error(line) => Bytes::from_static(line.as_bytes()),
            Local::Refuse(why) => {
                metrics.refused.increment(1);
                self.local(reply::refused(name, why));
                return;
            }
        };
        metrics.local.increment(1);
        self.local(answer);
    }

    /// Queues a locally produced answer behind the replies still owed before it.
    fn local(&mut self, answer: Bytes) {
        if self.pending.is_empty() {
            self.out.push(answer);
        } else {
            self.pending.push_back(Pending::Local(answer));
        }
    }

    /// Sends the first `len` bytes of the read buffer (`count` forwarded requests) upstream.
    async fn send_run(&mut self, len: usize, count: u32) {
        if count == 0 {
            return;
        }
        let bytes = self.inbuf.split_to(len).freeze();
        self.send(bytes, count).await;
    }

    /// Sends `count` commands upstream on the session's connection and records what it is owed.
    async fn send(&mut self, bytes: Bytes, count: u32) {
        let handle = match &self.current {
            Some(handle) => handle.clone(),
            None => {
                let handle = self
                    .shared
                    .pools
                    .route(RouteKey { session: self.id })
                    .clone();
                self.current = Some(handle.clone());
                handle
            }
        };
        self.pending.push_back(Pending::Upstream(count));
        self.inflight += count as usize;
        let request = Request {
            bytes,
            count,
            reply: self.tx.clone(),
        };
        let error = match self.shared.limits.command_timeout {
            Some(limit) => match tokio::time::timeout(limit, handle.send(request)).await {
                Ok(Ok(())) => return,
                Ok(Err(_)) => reply::shutting_down(),
                Err(_) => reply::queue_timeout(handle.addr(), limit),
            },
            None => match handle.send(request).await {
                Ok(()) => return,
                Err(_) => reply::shutting_down(),
            },
        };
        // Never reached the upstream: answer here, in order, as if the upstream had.
        let _ = self.on_response(Response::Failed { count, error });
    }

    /// Takes replies (or failures) for the oldest pending request and releases any local answers
    /// queued behind it.
    fn on_response(&mut self, response: Response) -> Result<(), Close> {
        let count = match response {
            Response::Replies { bytes, count } => {
                self.shared.metrics.forwarded.increment(u64::from(count));
                self.out.push(bytes);
                count
            }
            Response::Failed { count, error } => {
                self.shared.metrics.failed.increment(u64::from(count));
                for _ in 0..count {
                    self.out.push(error.clone());
                }
                count
            }
        };
        self.inflight -= count as usize;
        if self.inflight == 0 {
            self.current = None;
        }
        match self.pending.front_mut() {
            Some(Pending::Upstream(remaining)) if *remaining >= count => {
                *remaining -= count;
                if *remaining == 0 {
                    self.pending.pop_front();
                    while let Some(Pending::Local(_)) = self.pending.front() {
                        if let Some(Pending::Local(answer)) = self.pending.pop_front() {
                            self.out.push(answer);
                        }
                    }
                }
            }
            _ => {
                // A reply nobody asked for would break every later reply's routing: close.
                warn!(
                    session = self.id,
                    "reply accounting mismatch; closing client"
                );
                return Err(Close);
            }
        }
        if self.out.bytes() > self.shared.limits.max_reply_bytes {
            warn!(
                session = self.id,
                unsent_bytes = self.out.bytes(),
                limit = self.shared.limits.max_reply_bytes,
                "client is not reading its replies; closing it (max_client_reply_bytes)"
            );
            self.shared.metrics.closed_reply_limit.increment(1);
            return Err(Close);
        }
        Ok(())
    }
}
