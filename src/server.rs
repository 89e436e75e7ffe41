//! The accept side: listeners (TCP and unix), the connection limit, and `run`, which serves until
//! shutdown and then drains.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::admin::{self, Admin};
use crate::clients::{Client, Peer};
use crate::config::Config;
use crate::error::Error;
use crate::reload;
use crate::reply::RedisError;
use crate::session::{self, Shared};
use crate::tls;
use crate::workers::{Arrival, Handoff, Process, Seat, Socket, Workers};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;

/// First pause after a failed `accept` (for example out of file descriptors); doubles up to
/// `ACCEPT_BACKOFF_MAX` while accepts keep failing, so a full fd table is not a busy loop.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause between failed accepts.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a client's TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused connection (past `max_clients`) gets to take its error line.
const REJECT_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// A bound client listener.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A unix socket listener.
    Unix(UnixListener),
}

/// Serves clients on `listeners` until `shutdown` is cancelled, then stops accepting, lets sessions
/// finish what they have in flight (bounded by `drain_timeout`) and returns.
///
/// Listeners are bound by the caller, so tests bind port 0 and know the address before the proxy
/// starts. `admin`, when given, serves `/metrics`, `/healthz` and `/readyz`.
pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    admin: Option<Admin>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (_no_updates, updates) = watch::channel(config.clone());
    run_with_updates(config, listeners, admin, shutdown, updates).await
}

/// [`run`], and every configuration sent on `updates` is applied while running (see
/// `reload::apply`): the binary sends one on SIGHUP and when the config file changes.
pub async fn run_with_updates(
    config: Config,
    listeners: Vec<Listener>,
    admin: Option<Admin>,
    shutdown: CancellationToken,
    updates: watch::Receiver<Config>,
) -> Result<(), Error> {
    // Built before anything is served: a TLS setting that does not work stops the proxy instead of
    // letting it speak plaintext.
    let acceptor = tls::acceptor(&config)?;
    let process = Process::new(&config, shutdown.clone())?;
    let sessions = TaskTracker::new();
    // Worker 0 runs here, beside the acceptor; `Workers::start` starts the others.
    if config.batching.workers.get() > 1 {
        crate::metrics::set_worker(0);
    }
    let shared = Arc::new(process.worker(&config));
    let follow = {
        let config = config.clone();
        move |shared: &Arc<Shared>| follow(shared, config.clone(), updates.clone())
    };
    follow(&shared);
    let serve = {
        let (sessions, acceptor) = (sessions.clone(), acceptor.clone());
        move |arrival: Arrival, shared: &Arc<Shared>| {
            serve_arrival(arrival, shared, &sessions, acceptor.clone())
        }
    };
    let workers = Workers::start(&config, &process, serve, follow)?;
    // Cancelled when `run` returns, after the drain; until then /metrics and /healthz keep answering.
    let admin_stop = CancellationToken::new();
    let _stop_admin = admin_stop.clone().drop_guard();
    if let Some(admin) = admin {
        let ready = {
            let shared = Arc::downgrade(&shared);
            let shutdown = shutdown.clone();
            move || !shutdown.is_cancelled() && shared.upgrade().is_some_and(|s| s.pools.any_up())
        };
        // The admin endpoint outlives the drain: /readyz says 503 while sessions finish.
        tokio::spawn(admin::serve(admin, ready, admin_stop.clone()));
    }
    // Permits for client connections: `max_clients`. A connection holds one for its whole life;
    // when none is left, new connections get Redis's "max number of clients reached" and are closed.
    let permits = Arc::new(Semaphore::new(config.listen.max_clients.get()));
    let workers = Arc::new(workers);
    let mut accepting = Vec::new();
    for listener in listeners {
        let accept = Accept {
            shared: shared.clone(),
            workers: workers.clone(),
            sessions: sessions.clone(),
            permits: permits.clone(),
            acceptor: acceptor.clone(),
        };
        accepting.push(tokio::spawn(accept.run(listener)));
    }
    shutdown.cancelled().await;
    for task in accepting {
        let _ = task.await;
    }
    sessions.close();
    let open = sessions.len();
    drop(shared);
    info!(sessions = open, "shutting down: draining client sessions");
    if tokio::time::timeout(config.timeouts.drain_timeout, sessions.wait())
        .await
        .is_err()
    {
        warn!(
            sessions = sessions.len(),
            timeout = ?config.timeouts.drain_timeout,
            "drain timeout expired; closing the remaining sessions"
        );
    }
    if let Some(workers) = Arc::into_inner(workers) {
        workers.stop().await;
    }
    Ok(())
}

/// Starts what a worker runs beside its sessions: it follows configuration reloads (`updates`,
/// from `running`) and, for an upstream Sentinel watches, what the sentinels say; and it closes
/// the sessions of users Redis starts refusing.
fn follow(shared: &Arc<Shared>, mut running: Config, mut updates: watch::Receiver<Config>) {
    // Changes of what Sentinel says, for an upstream it watches.
    let changes =
        |shared: &Shared| (shared.pools.layout().sentinel_watch()).map(|watch| watch.changes());
    let mut found = changes(shared);
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            let sentinel = async {
                match &mut found {
                    Some(found) => found.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                update = updates.changed() => {
                    let Some(shared) = weak.upgrade().filter(|_| update.is_ok()) else {
                        return;
                    };
                    let new = updates.borrow_and_update().clone();
                    running = reload::apply(&running, &new, &shared);
                    found = changes(&shared);
                }
                true = sentinel => {
                    let Some(shared) = weak.upgrade() else {
                        return;
                    };
                    shared.pools.follow_sentinel();
                }
            }
        }
    });
    tokio::spawn(session::close_refused(
        Arc::downgrade(shared),
        shared.pools.user_events(),
        shared.shutdown.clone(),
    ));
}

/// One listener's accept loop.
struct Accept {
    /// Worker 0's.
    shared: Arc<Shared>,
    workers: Arc<Workers>,
    sessions: TaskTracker,
    permits: Arc<Semaphore>,
    /// TLS for TCP clients, when configured.
    acceptor: Option<TlsAcceptor>,
}

impl Accept {
    async fn run(self, listener: Listener) {
        let shutdown = self.shared.shutdown.clone();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = accept(&listener) => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    self.spawn(stream, peer);
                }
                Err(err) => {
                    warn!(error = %err, pause = ?backoff, "accept failed; pausing before the next accept");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }

    fn spawn(&self, stream: ClientStream, peer: Peer) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.shared.metrics.rejected.increment(1);
            debug!(client.addr = %peer.addr(), "max_clients reached; refusing connection");
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REJECT_WRITE_TIMEOUT, reject(stream)).await;
            });
            return;
        };
        let id = self.shared.clients.next_id();
        // Registered here, not in the task: the task then carries one pointer, not the addresses.
        let client = self.shared.clients.register(id, peer);
        let handoff = self
            .workers
            .hand((stream, permit), |(stream, permit), seat| {
                Ok(Arrival {
                    stream: stream.into_std()?,
                    client: client.clone(),
                    permit,
                    seat,
                })
            });
        let (stream, permit, seat) = match handoff {
            Handoff::Here((stream, permit), seat) => (stream, permit, seat),
            Handoff::Back(arrival) => {
                return serve_arrival(arrival, &self.shared, &self.sessions, self.acceptor.clone())
            }
            Handoff::Sent => return,
            Handoff::Failed(err) => {
                self.shared.clients.remove(id);
                warn!(error = %err, "cannot hand a new client to a worker; closing it");
                return;
            }
        };
        spawn_session(
            stream,
            client,
            self.shared.clone(),
            &self.sessions,
            self.acceptor.clone(),
            (permit, seat),
        );
    }
}

/// Starts, on the calling thread's worker, the session of a client handed over by the acceptor.
fn serve_arrival(
    arrival: Arrival,
    shared: &Arc<Shared>,
    sessions: &TaskTracker,
    acceptor: Option<TlsAcceptor>,
) {
    let Arrival {
        stream,
        client,
        permit,
        seat,
    } = arrival;
    match ClientStream::from_std(stream) {
        Ok(stream) => spawn_session(
            stream,
            client,
            shared.clone(),
            sessions,
            acceptor,
            (permit, seat),
        ),
        Err(err) => {
            shared.clients.remove(client.id());
            warn!(error = %err, "a worker cannot take a client's socket; closing it");
        }
    }
}

/// Starts a client's session on the calling thread's runtime; `held` (its `max_clients` permit
/// and its seat on the worker) is released when the session ends.
fn spawn_session(
    stream: ClientStream,
    client: Arc<Client>,
    shared: Arc<Shared>,
    sessions: &TaskTracker,
    acceptor: Option<TlsAcceptor>,
    held: (OwnedSemaphorePermit, Seat),
) {
    let span = tracing::debug_span!("client", client.addr = %client.addr(), session = client.id());
    sessions.spawn(
        async move {
            let _held = held;
            match stream {
                // Boxed: the TLS handshake and a TLS session are large futures, and this task
                // would otherwise be that large for every plain client too.
                ClientStream::Tcp(mut s) => match acceptor {
                    Some(acceptor) => Box::pin(serve_tls(s, acceptor, client, shared)).await,
                    None => {
                        let (rd, wr) = s.split();
                        session::serve(rd, wr, client, shared).await
                    }
                },
                ClientStream::Unix(mut s) => {
                    let (rd, wr) = s.split();
                    session::serve(rd, wr, client, shared).await
                }
            }
        }
        .instrument(span),
    );
}

/// A TLS client: the handshake (bounded), then its session.
async fn serve_tls(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    client: Arc<Client>,
    shared: Arc<Shared>,
) {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let (rd, wr) = tokio::io::split(tls);
            session::serve(rd, wr, client, shared).await
        }
        Ok(Err(err)) => {
            shared.clients.remove(client.id());
            debug!(error = %err, "client TLS handshake failed");
        }
        Err(_) => {
            shared.clients.remove(client.id());
            debug!("client TLS handshake timed out");
        }
    }
}

/// An accepted client connection.
enum ClientStream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl ClientStream {
    /// The socket, taken off this thread's event loop.
    fn into_std(self) -> std::io::Result<Socket> {
        Ok(match self {
            ClientStream::Tcp(s) => Socket::Tcp(s.into_std()?),
            ClientStream::Unix(s) => Socket::Unix(s.into_std()?),
        })
    }

    /// The socket, on this thread's event loop.
    fn from_std(socket: Socket) -> std::io::Result<Self> {
        Ok(match socket {
            Socket::Tcp(s) => ClientStream::Tcp(tokio::net::TcpStream::from_std(s)?),
            Socket::Unix(s) => ClientStream::Unix(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

async fn accept(listener: &Listener) -> std::io::Result<(ClientStream, Peer)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            // Replies must leave at once; batching is done by respipe, not by Nagle.
            s.set_nodelay(true)?;
            let peer = Peer::Tcp {
                addr: peer,
                laddr: s.local_addr()?,
                fd: s.as_raw_fd(),
            };
            Ok((ClientStream::Tcp(s), peer))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            let path = s.local_addr()?;
            let path = path
                .as_pathname()
                .map_or_else(String::new, |p| p.display().to_string());
            let peer = Peer::Unix {
                path: path.into(),
                fd: s.as_raw_fd(),
            };
            Ok((ClientStream::Unix(s), peer))
        }
    }
}

/// Tells a client past `max_clients` why it is refused, as Redis does, and closes it.
async fn reject(stream: ClientStream) {
    let _ = match stream {
        ClientStream::Tcp(mut s) => s.write_all(&RedisError::MaxClients.line()).await,
        ClientStream::Unix(mut s) => s.write_all(&RedisError::MaxClients.line()).await,
    };
}
