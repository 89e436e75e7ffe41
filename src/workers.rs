//! Worker threads (`workers`): N single-threaded event loops, each with its own upstream
//! connections, leases and background tasks, and one acceptor handing each new client to the
//! worker serving the fewest.
//!
//! A client lives on one worker from accept to close, and so do the upstream connections its
//! commands go to: a command never crosses a thread, takes a lock another worker takes, or touches
//! an atomic another core writes (metric handles carry a `worker` label, see
//! `metrics::set_worker`). What the workers share is touched per connection or per pool, not per
//! command: the client registry (`CLIENT LIST`, `KILL`), the `max_clients` permits, and the
//! [`Budget`] of leases and pools.
//!
//! Worker 0 is the thread that calls `server::run`, which also accepts; workers 1.. are threads
//! of their own (`respipe-w1`, ...), started by [`Workers::start`]. A client is handed over as a
//! plain socket (taken off the acceptor's event loop, registered on the worker's). Every worker
//! follows configuration reloads and Sentinel on its own, and stays up until the drain is over.
//!
//! A worker that stops turning its event loop for [`STALL`] (a panic on it, or code that blocks
//! its thread) is reported at once, gets no new clients while it is stalled, and shows 0 in
//! `respipe_worker_up`; the other workers carry on. A session that panics ends alone (the runtime
//! catches it; the panic hook logs it), as with one worker.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::Gauge;
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::clients::{coarse_ms, Client, Registry};
use crate::config::Config;
use crate::error::Error;
use crate::live::Live;
use crate::metrics::ClientMetrics;
use crate::outflow::ServerLimit;
use crate::pool::{Budget, Pools};
use crate::session::{SessionLimits, Shared};
use crate::tls::{self, UpstreamTls};

/// How long a worker's event loop may go without a turn before it is reported stalled.
pub const STALL: Duration = Duration::from_secs(2);
/// How often a worker marks that its event loop turns.
const HEARTBEAT: Duration = Duration::from_millis(250);

/// What all workers share; each worker's [`Shared`] is made from it.
#[derive(Clone)]
pub struct Process {
    clients: Arc<Registry>,
    budget: Budget,
    shutdown: CancellationToken,
    connector: Option<UpstreamTls>,
}

impl Process {
    /// The shared part of a proxy running `config`, stopped by `shutdown`. Fails when the upstream
    /// TLS settings do not work.
    pub fn new(config: &Config, shutdown: CancellationToken) -> Result<Self, Error> {
        Ok(Process {
            clients: Arc::new(Registry::new()),
            budget: Budget::new(config),
            shutdown,
            connector: tls::connector(config)?,
        })
    }

    /// One worker's state: its own pools (their drivers are spawned on the calling thread's
    /// runtime, so this runs on the worker's), the process's registry and limits.
    pub fn worker(&self, config: &Config) -> Shared {
        Shared {
            pools: Pools::start(config, self.connector.clone(), &self.budget),
            metrics: ClientMetrics::new(),
            limits: Live::new(SessionLimits::from_config(config)),
            shutdown: self.shutdown.clone(),
            pubsub_limit: ServerLimit::default(),
            clients: self.clients.clone(),
        }
    }

    /// The registry of every worker's clients.
    pub fn clients(&self) -> &Registry {
        &self.clients
    }
}

/// A client on its way to a worker: the socket, taken off the acceptor's event loop.
pub struct Arrival {
    /// The socket.
    pub stream: Socket,
    /// Its entry in the registry.
    pub client: Arc<Client>,
    /// Its `max_clients` permit, held for the connection's life.
    pub permit: OwnedSemaphorePermit,
    /// Counts the client on its worker until the session ends.
    pub seat: Seat,
}

/// A plain socket, for a worker to register on its own event loop.
pub enum Socket {
    /// A TCP client.
    Tcp(std::net::TcpStream),
    /// A unix socket client.
    Unix(std::os::unix::net::UnixStream),
}

/// Where a worker takes its clients.
enum Door {
    /// Worker 0, on the acceptor's thread: the acceptor starts the session itself.
    Here,
    /// A worker thread, sent its clients.
    Thread(mpsc::UnboundedSender<Arrival>),
}

/// One worker as the acceptor and the watchdog see it.
pub struct Slot {
    index: usize,
    clients: AtomicUsize,
    /// `RUNNING`, `STALLED` or `STOPPED`.
    state: AtomicU8,
    /// [`coarse_ms`] at the last turn of its event loop.
    beat: AtomicU64,
    clients_gauge: Gauge,
    up_gauge: Gauge,
}

const RUNNING: u8 = 0;
const STALLED: u8 = 1;
const STOPPED: u8 = 2;

impl Slot {
    fn new(index: usize) -> Arc<Slot> {
        let (clients_gauge, up_gauge) = crate::metrics::worker(index);
        up_gauge.set(1.0);
        Arc::new(Slot {
            index,
            clients: AtomicUsize::new(0),
            state: AtomicU8::new(RUNNING),
            beat: AtomicU64::new(coarse_ms()),
            clients_gauge,
            up_gauge,
        })
    }

    /// Marks the worker stopped for good (its thread ended).
    fn stopped(&self) {
        self.state.store(STOPPED, Ordering::Relaxed);
        self.up_gauge.set(0.0);
    }
}

/// A client counted on its worker; dropped when the session ends.
pub struct Seat(Arc<Slot>);

impl Seat {
    fn take(slot: &Arc<Slot>) -> Seat {
        let n = slot.clients.fetch_add(1, Ordering::Relaxed) + 1;
        slot.clients_gauge.set(n as f64);
        Seat(slot.clone())
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let n = self.0.clients.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.clients_gauge.set(n as f64);
    }
}

/// The workers, as the acceptor hands clients to them.
pub struct Workers {
    slots: Vec<(Arc<Slot>, Door)>,
    /// The worker threads, joined once the drain is over.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Cancelled after the drain: the worker threads end their event loops.
    stop: CancellationToken,
}

/// Where the acceptor's new client went.
pub enum Handoff<T> {
    /// To worker 0: the acceptor starts the session, on the socket it has (given back).
    Here(T, Seat),
    /// To worker 0 after a worker thread that was picked turned out to have ended: the acceptor
    /// serves the arrival as a worker thread would.
    Back(Arrival),
    /// To a worker thread.
    Sent,
    /// Nowhere: the socket could not be taken off the acceptor's event loop (the error).
    Failed(std::io::Error),
}

impl Workers {
    /// Worker 0 (the calling thread, serving `here`'s sessions) and `config`'s other workers, each a
    /// thread with its own runtime. `serve` starts a session on the thread it is called on; every
    /// worker thread calls it for the clients it is handed. Workers follow `updates` (reloads) as
    /// worker 0 does, through `follow`.
    pub fn start<S, F>(
        config: &Config,
        process: &Process,
        serve: S,
        follow: F,
    ) -> Result<Workers, Error>
    where
        S: Fn(Arrival, &Arc<Shared>) + Clone + Send + 'static,
        F: Fn(&Arc<Shared>) + Clone + Send + 'static,
    {
        let n = config.batching.workers.get();
        let stop = CancellationToken::new();
        let mut slots = vec![(Slot::new(0), Door::Here)];
        let mut threads = Vec::new();
        for index in 1..n {
            let slot = Slot::new(index);
            let (tx, rx) = mpsc::unbounded_channel();
            let run = WorkerThread {
                slot: slot.clone(),
                config: config.clone(),
                process: process.clone(),
                stop: stop.clone(),
                rx,
            };
            let (serve, follow) = (serve.clone(), follow.clone());
            let thread = std::thread::Builder::new()
                .name(format!("respipe-w{index}"))
                .spawn(move || run.run(serve, follow))
                .map_err(|source| Error::Thread {
                    thread: format!("worker {index}"),
                    source,
                })?;
            threads.push(thread);
            slots.push((slot, Door::Thread(tx)));
        }
        if n > 1 {
            let slots: Vec<Arc<Slot>> = slots.iter().map(|(slot, _)| slot.clone()).collect();
            tokio::spawn(beat(slots[0].clone(), stop.clone()));
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("respipe-watchdog".to_owned())
                .spawn(move || watch(&slots, &stop))
                .map_err(|source| Error::Thread {
                    thread: "the worker watchdog".to_owned(),
                    source,
                })?;
        }
        Ok(Workers {
            slots,
            threads,
            stop,
        })
    }

    /// Hands a new client to the running worker with the fewest clients (a stalled one only when
    /// every worker is stalled). `Here` when that is worker 0: the caller starts the session.
    /// `arrive` turns `client` (the socket as the acceptor has it) and the seat into an arrival
    /// (the socket off the acceptor's event loop); it runs only when a worker thread is picked.
    pub fn hand<T>(
        &self,
        client: T,
        arrive: impl FnOnce(T, Seat) -> std::io::Result<Arrival>,
    ) -> Handoff<T> {
        let mut arrive = Some((client, arrive));
        let mut made: Option<Arrival> = None;
        loop {
            let (slot, door) = self.pick();
            let seat = Seat::take(slot);
            let arrival = match (door, made.take()) {
                (Door::Here, None) => match arrive.take() {
                    Some((client, _)) => return Handoff::Here(client, seat),
                    None => unreachable!("an arrival is made once and kept"),
                },
                (_, Some(arrival)) => Arrival { seat, ..arrival },
                (Door::Thread(_), None) => {
                    match arrive.take().map(|(client, arrive)| arrive(client, seat)) {
                        Some(Ok(arrival)) => arrival,
                        Some(Err(err)) => return Handoff::Failed(err),
                        None => unreachable!("an arrival is made once and kept"),
                    }
                }
            };
            match door {
                Door::Here => return Handoff::Back(arrival),
                Door::Thread(tx) => match tx.send(arrival) {
                    Ok(()) => return Handoff::Sent,
                    // The thread ended (it reported why): the next pick skips it.
                    Err(mpsc::error::SendError(arrival)) => {
                        slot.stopped();
                        made = Some(arrival);
                    }
                },
            }
        }
    }

    /// The running worker with the fewest clients; a stalled one only when none runs. Worker 0
    /// runs the acceptor, so there is always one.
    fn pick(&self) -> &(Arc<Slot>, Door) {
        let least = |ok: &dyn Fn(u8) -> bool| {
            self.slots
                .iter()
                .filter(|(slot, _)| ok(slot.state.load(Ordering::Relaxed)))
                .min_by_key(|(slot, _)| slot.clients.load(Ordering::Relaxed))
        };
        least(&|state| state == RUNNING)
            .or_else(|| least(&|state| state != STOPPED))
            .unwrap_or(&self.slots[0])
    }

    /// Ends the worker threads (after the drain) and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        for thread in self.threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// What a worker thread runs.
struct WorkerThread {
    slot: Arc<Slot>,
    config: Config,
    process: Process,
    stop: CancellationToken,
    rx: mpsc::UnboundedReceiver<Arrival>,
}

impl WorkerThread {
    fn run<S, F>(self, serve: S, follow: F)
    where
        S: Fn(Arrival, &Arc<Shared>),
        F: Fn(&Arc<Shared>),
    {
        let index = self.slot.index;
        crate::metrics::set_worker(index);
        let slot = self.slot.clone();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            self.serve(serve, follow)
        }));
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(err)) => error!(worker = index, error = %err, "worker stopped: cannot start its event loop"),
            Err(_) => error!(
                worker = index,
                "worker stopped: it panicked (the panic is logged above); its clients were disconnected, new clients go to the other workers"
            ),
        }
        slot.stopped();
    }

    fn serve<S, F>(mut self, serve: S, follow: F) -> std::io::Result<()>
    where
        S: Fn(Arrival, &Arc<Shared>),
        F: Fn(&Arc<Shared>),
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let shared = Arc::new(self.process.worker(&self.config));
            follow(&shared);
            tokio::spawn(beat(self.slot.clone(), self.stop.clone()));
            loop {
                tokio::select! {
                    arrival = self.rx.recv() => match arrival {
                        Some(arrival) => serve(arrival, &shared),
                        None => break,
                    },
                    _ = self.stop.cancelled() => break,
                }
            }
            // Sessions still open when the drain gave up end with the runtime.
            self.stop.cancelled().await;
        });
        Ok(())
    }
}

/// Marks, every [`HEARTBEAT`], that this worker's event loop turns.
async fn beat(slot: Arc<Slot>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = tick.tick() => slot.beat.store(coarse_ms(), Ordering::Relaxed),
            _ = stop.cancelled() => return,
        }
    }
}

/// The watchdog thread: reports a worker whose event loop has not turned for [`STALL`], and its
/// recovery, until `stop`.
fn watch(slots: &[Arc<Slot>], stop: &CancellationToken) {
    while !stop.is_cancelled() {
        std::thread::sleep(HEARTBEAT);
        let now = coarse_ms();
        for slot in slots {
            let quiet = now.saturating_sub(slot.beat.load(Ordering::Relaxed));
            let stalled = quiet > STALL.as_millis() as u64;
            let state = slot.state.load(Ordering::Relaxed);
            if state == RUNNING && stalled {
                slot.state.store(STALLED, Ordering::Relaxed);
                slot.up_gauge.set(0.0);
                error!(
                    worker = slot.index,
                    stalled_ms = quiet,
                    clients = slot.clients.load(Ordering::Relaxed),
                    "worker stalled: its event loop has not run; its clients wait, new clients go to the other workers"
                );
            } else if state == STALLED && !stalled {
                slot.state.store(RUNNING, Ordering::Relaxed);
                slot.up_gauge.set(1.0);
                info!(worker = slot.index, "worker runs again after a stall");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::Peer;
    use tokio::sync::Semaphore;

    /// Workers 0 (here) and 1 (a thread whose receiver `rx` stands for it).
    fn two() -> (Workers, mpsc::UnboundedReceiver<Arrival>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let workers = Workers {
            slots: vec![(Slot::new(0), Door::Here), (Slot::new(1), Door::Thread(tx))],
            threads: Vec::new(),
            stop: CancellationToken::new(),
        };
        (workers, rx)
    }

    /// A connected socket, its registry entry and a permit, as the acceptor has them.
    fn client(registry: &Registry) -> (std::net::TcpStream, Arc<Client>, OwnedSemaphorePermit) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = Peer::Tcp {
            addr: stream.local_addr().unwrap(),
            laddr: stream.peer_addr().unwrap(),
            fd: 0,
        };
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        (stream, registry.register(registry.next_id(), peer), permit)
    }

    fn hand(workers: &Workers, registry: &Registry) -> Handoff<()> {
        let (stream, client, permit) = client(registry);
        workers.hand((), |(), seat| {
            Ok(Arrival {
                stream: Socket::Tcp(stream),
                client,
                permit,
                seat,
            })
        })
    }

    #[test]
    fn new_clients_go_to_the_worker_with_the_fewest() {
        let (workers, mut rx) = two();
        let registry = Registry::new();
        let counts = || -> Vec<usize> {
            (workers.slots.iter())
                .map(|(slot, _)| slot.clients.load(Ordering::Relaxed))
                .collect()
        };
        // Equal counts: the lowest worker; so clients alternate.
        let mut here = Vec::new();
        let mut sent = Vec::new();
        for i in 0..4 {
            match hand(&workers, &registry) {
                Handoff::Here((), seat) if i % 2 == 0 => here.push(seat),
                Handoff::Sent if i % 2 == 1 => sent.push(rx.try_recv().expect("worker 1's")),
                _ => panic!("client {i} went to the wrong worker"),
            }
        }
        assert_eq!(counts(), [2, 2]);
        // Worker 0's clients leave: the next two go to it.
        here.clear();
        assert_eq!(counts(), [0, 2]);
        for _ in 0..2 {
            let Handoff::Here((), seat) = hand(&workers, &registry) else {
                panic!("not to the worker with the fewest")
            };
            here.push(seat);
        }
        assert_eq!(counts(), [2, 2]);
        // A client handed to a thread counts there until its session ends.
        sent.pop();
        assert_eq!(counts(), [2, 1]);
    }

    /// A worker whose loop stops turning is reported stalled by the watchdog and gets no new
    /// clients until it turns again.
    #[test]
    fn a_stalled_worker_gets_no_new_clients_until_it_runs_again() {
        let (workers, mut rx) = two();
        let registry = Registry::new();
        let slots: Vec<Arc<Slot>> = workers.slots.iter().map(|(s, _)| s.clone()).collect();
        let stop = CancellationToken::new();
        let watchdog = std::thread::spawn({
            let (slots, stop) = (slots.clone(), stop.clone());
            move || watch(&slots, &stop)
        });
        // Worker 0 already has a client, so worker 1 would be picked; its last beat is old.
        let Handoff::Here((), _seat) = hand(&workers, &registry) else {
            panic!("first client to worker 0")
        };
        slots[1].beat.store(0, Ordering::Relaxed);
        let until = |state: u8| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while slots[1].state.load(Ordering::Relaxed) != state {
                assert!(std::time::Instant::now() < deadline, "state never {state}");
                slots[0].beat.store(coarse_ms(), Ordering::Relaxed);
                std::thread::yield_now();
            }
        };
        until(STALLED);
        assert!(matches!(hand(&workers, &registry), Handoff::Here(..)));
        assert!(rx.try_recv().is_err());
        slots[1].beat.store(u64::MAX / 2, Ordering::Relaxed);
        until(RUNNING);
        assert!(matches!(hand(&workers, &registry), Handoff::Sent));
        stop.cancel();
        watchdog.join().unwrap();
    }

    /// A worker thread that ended (its receiver gone) is marked stopped and the client it was
    /// handed goes to worker 0 instead, with its socket.
    #[test]
    fn a_client_for_a_worker_that_ended_goes_to_another() {
        let (workers, rx) = two();
        let registry = Registry::new();
        let Handoff::Here((), _seat) = hand(&workers, &registry) else {
            panic!("first client to worker 0")
        };
        drop(rx);
        let Handoff::Back(arrival) = hand(&workers, &registry) else {
            panic!("the second client comes back to worker 0")
        };
        assert!(matches!(arrival.stream, Socket::Tcp(_)));
        assert_eq!(workers.slots[1].0.state.load(Ordering::Relaxed), STOPPED);
        assert_eq!(workers.slots[0].0.clients.load(Ordering::Relaxed), 2);
        assert_eq!(workers.slots[1].0.clients.load(Ordering::Relaxed), 0);
    }
}
