//! Upstream pools: which upstream connection gets a session's commands.
//!
//! Shared pools are keyed by the connection state clients may share: database, protocol and Redis
//! user ([`PoolKey`]). A pool holds `pool_size` connections to every server of the upstream (one
//! server, or each shard: a *lane*); which server a command goes to is the routing step's answer
//! (`route`, with the placement in `topology`). The pool of the configured upstream starts with the
//! proxy; others start on first use, up to `max_pools`. Connection-exclusive state (transactions, blocking commands,
//! subscriptions, MONITOR) gets a *lease*: a dedicated connection of its own, handshaken like the
//! session's pool, up to `max_leases` at once. A few per state are kept handshaken in advance and
//! given-back ones are scrubbed for reuse (`warm`); the rest close when the client no longer needs
//! them. A lease is on one server: the one of the command's first key. A replication reader
//! (`SYNC`, `PSYNC`) gets a [`Tap`]: a raw connection spliced to the client, which counts as a
//! lease too.
//!
//! A shared connection that retired (a command at its head timed out: a busy script, `DEBUG SLEEP`)
//! is replaced by a fresh one the next time a session is routed to it; sessions with commands still
//! in flight on the retired one keep using it until those are answered (see `upstream`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use metrics::{Counter, Gauge};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, Reads, Topology, Upstream};
use crate::error::UpstreamError;
use crate::live::Live;
use crate::reply::ErrorReply;
use crate::reply::Lane;
use crate::sentinel::{Role, Watch};
use crate::tls::UpstreamTls;
use crate::topology::Layout;
use crate::upstream::{self, RawIo, Tunables, UpstreamHandle, UpstreamSettings};
use crate::warm::{Place, Warm};

/// Queue capacity (requests) of each upstream connection's handle; past it senders wait. Each
/// request may carry many commands, so this is not a command limit (that is
/// `max_upstream_inflight`).
const QUEUE_CAPACITY: usize = 1024;

/// A Redis user and password a client authenticated with. Compared and hashed; never printed.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Credentials {
    /// The ACL user; `None` for `AUTH password` (the default user).
    pub user: Option<String>,
    /// The password.
    pub password: String,
}

/// Most answers `verdicts` keeps (users times subcommand spellings); when full it starts over,
/// and Redis is asked again.
const MAX_VERDICTS: usize = 4096;

/// A Redis user as caches key it: `None` is the upstream's configured user.
type User = Option<Arc<Credentials>>;

/// The connection state that selects a shared pool.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The database (`SELECT`).
    pub db: u32,
    /// RESP3 (`HELLO 3`) rather than RESP2.
    pub resp3: bool,
    /// The user the client authenticated as; `None`: the upstream's configured user.
    pub auth: Option<Arc<Credentials>>,
}

/// One shared pool: `pool_size` connections with the same handshake to every server of the
/// upstream (one server, or each shard).
#[derive(Debug)]
pub struct Pool {
    key: PoolKey,
    /// Per server (lane), its connections: every lane from the start, except for a cluster,
    /// whose lanes (node addresses) start when first routed to.
    lanes: Box<[OnceLock<PoolLane>]>,
    /// The settings every lane's derive from (its endpoint aside).
    template: UpstreamSettings,
    /// `pool_size`, and the pool's index among the pools (for connection labels).
    size: usize,
    index: usize,
    /// The servers and the placement of keys, as when the pool started.
    layout: Arc<Layout>,
}

/// A pool's connections to one server.
#[derive(Debug)]
struct PoolLane {
    members: Vec<Member>,
    /// The settings of every connection here, replacements included.
    settings: Arc<UpstreamSettings>,
}

/// One place in a pool: the connection new sessions get there.
#[derive(Debug)]
struct Member {
    /// Swapped for a fresh connection when it retires; the retired one lives on while sessions
    /// with commands in flight on it hold its handle.
    handle: ArcSwap<UpstreamHandle>,
    /// The `conn` metrics label, kept by replacements.
    label: String,
}

/// A dedicated upstream connection, lent to one session or kept warm. Dropping it closes the
/// connection (the driver sees its queue closed) and returns the permit; [`Pools::give_back`]
/// keeps it for reuse instead.
#[derive(Debug)]
pub struct Lease {
    handle: UpstreamHandle,
    /// The state the connection was handshaken in.
    key: PoolKey,
    /// The server it is connected to.
    lane: Lane,
    /// The warm set's generation when it was made: a reload of the upstream makes it stale.
    generation: u64,
    /// One of `max_leases` permits, held for the lease's life; kept by the warm set instead while
    /// a warm lease is being checked (see [`crate::warm`]).
    permit: Option<OwnedSemaphorePermit>,
    /// Counted in `respipe_leases` while lent to a session; `None` while warm.
    lent: Option<Lent>,
}

/// A raw upstream connection spliced byte for byte to one client (a replication reader): counts
/// as a lease while it lives.
pub struct Tap {
    /// The connection, connected and handshaken in the client's state.
    pub stream: Box<dyn RawIo>,
    /// One of `max_leases` permits, held for the tap's life.
    _permit: OwnedSemaphorePermit,
    _lent: Lent,
}

/// One count in `respipe_leases`, taken back on drop.
#[derive(Debug)]
struct Lent(Gauge);

/// The upstream connections of the proxy.
#[derive(Debug)]
pub struct Pools {
    /// Settings of the configured upstream; pools and leases derive theirs from it. Replaced when a
    /// reload changes the upstream.
    base: Mutex<UpstreamSettings>,
    pool_size: usize,
    /// The `max_pools` and `max_leases` every worker's pools draw from.
    budget: Budget,
    default: Mutex<Arc<Pool>>,
    /// The servers and the placement of keys; replaced with the upstream.
    layout: Mutex<Arc<Layout>>,
    /// The read policy the layouts are made with; replaced with the upstream.
    reads: Mutex<Reads>,
    /// Bumped when a reload replaces the upstream: sessions move to the new pools once idle.
    generation: AtomicU64,
    /// Every pool by key, the default one included. Looked up only when a session's key changes.
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    /// `max_leases` permits; a lease (lent, warm or being scrubbed) or a tap holds one. When none
    /// is left a new lease closes a warm one, or is refused.
    leases: Arc<Semaphore>,
    /// Leases handshaken in advance, per state.
    warm: Arc<Warm>,
    max_leases: usize,
    leases_gauge: Gauge,
    lease_refusals: Counter,
    pools_gauge: Gauge,
    /// Databases Redis has accepted a `SELECT` of, per user (`None`: the configured one; ACLs can
    /// deny `SELECT` to some users): later selects of them by that user need no probe.
    known_dbs: Mutex<HashSet<(User, u32)>>,
    /// Redis's answers to harmless forms of the `CLIENT` subcommands respipe answers itself, per
    /// user: whether that user may run them (ACLs) and whether the server has them at all.
    verdicts: Mutex<HashMap<(User, Bytes), Bytes>>,
    /// Notified (one stored permit) by pool and lease drivers when Redis starts refusing the user
    /// of a shared pool, or a lease is lost; the task that closes the sessions of refused users
    /// waits on it (`session::close_refused`).
    user_events: Arc<Notify>,
}

/// What the pools of every worker draw from together: `max_leases` permits, and `max_pools`
/// distinct pool states (db, protocol, user). A state served by several workers (each has its own
/// connections in it) counts once: the limit is on what clients ask for, as with one worker.
#[derive(Debug, Clone)]
pub struct Budget {
    leases: Arc<Semaphore>,
    max_pools: usize,
    /// Each pool state in use and how many workers' pools serve it.
    states: Arc<Mutex<HashMap<PoolKey, usize>>>,
    /// Every worker's warm leases: a worker out of permits closes a warm lease of any worker.
    warm: Arc<Mutex<Vec<std::sync::Weak<Warm>>>>,
}

impl Budget {
    /// The limits of `config`, none of them used yet.
    pub fn new(config: &Config) -> Self {
        Budget {
            leases: Arc::new(Semaphore::new(config.leases.max_leases.get())),
            max_pools: config.batching.max_pools.get(),
            states: Arc::default(),
            warm: Arc::default(),
        }
    }

    /// The permit a warm lease of any worker holds (that lease closes), if one does.
    fn evict_warm(&self) -> Option<OwnedSemaphorePermit> {
        let warm: Vec<Arc<Warm>> = lock(&self.warm)
            .iter()
            .filter_map(|w| w.upgrade())
            .collect();
        warm.iter().find_map(|w| w.evict_one())
    }

    /// Counts one more pool in `key`'s state; `false` (nothing counted) when the state is new and
    /// `max` states are in use already.
    fn claim(&self, key: &PoolKey, max: usize) -> bool {
        let mut states = lock(&self.states);
        let in_use = states.len();
        match states.get_mut(key) {
            Some(pools) => *pools += 1,
            None if in_use >= max => return false,
            None => {
                states.insert(key.clone(), 1);
            }
        }
        true
    }

    /// Counts one pool less in each of `keys`' states.
    fn release(&self, keys: impl IntoIterator<Item = PoolKey>) {
        let mut states = lock(&self.states);
        for key in keys {
            if let Some(pools) = states.get_mut(&key) {
                *pools -= 1;
                if *pools == 0 {
                    states.remove(&key);
                }
            }
        }
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        let pools = std::mem::take(self.pools.get_mut().unwrap_or_else(|e| e.into_inner()));
        self.budget.release(pools.into_keys());
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(***)")
    }
}

impl Pool {
    /// The connection for a session with nothing in flight: its own (`session % pool_size`) if that
    /// one is up, else the next one that is, else its own (which answers fast with an error, or
    /// holds the command while it connects).
    pub fn route(&self, lane: Lane, session: u64) -> UpstreamHandle {
        let PoolLane {
            members: conns,
            settings,
        } = self.lane(lane);
        let n = conns.len();
        let home = (session % n as u64) as usize;
        let own = conns[home].handle(settings);
        if own.is_up() {
            return own;
        }
        (1..n)
            .map(|i| conns[(home + i) % n].handle(settings))
            .find(UpstreamHandle::is_up)
            .unwrap_or(own)
    }

    /// True while a connection to `lane` is established (a read goes to a replica only then).
    pub fn lane_up(&self, lane: Lane) -> bool {
        self.lane(lane)
            .members
            .iter()
            .any(|member| member.handle.load().is_up())
    }

    /// The connections to `lane`, started now if they have not been.
    fn lane(&self, lane: Lane) -> &PoolLane {
        let i = usize::from(lane).min(self.lanes.len() - 1);
        self.lanes[i].get_or_init(|| {
            let mut upstream = self
                .layout
                .endpoint(lane)
                .unwrap_or_else(|| self.layout.servers[0].clone());
            upstream.db = self.key.db;
            let settings = Arc::new(UpstreamSettings {
                upstream,
                health: self.layout.health(lane),
                role: self.layout.role(lane),
                ..self.template.clone()
            });
            let members = (0..self.size)
                .map(|i| {
                    let label = match (self.index, self.layout.cluster()) {
                        (0, None) => i.to_string(),
                        (index, None) => format!("p{index}.{i}"),
                        (index, Some(_)) => format!("p{index}.n{lane}.{i}"),
                    };
                    Member::spawn(label, &settings)
                })
                .collect();
            PoolLane { members, settings }
        })
    }

    /// The connections started so far, per lane.
    fn started(&self) -> impl Iterator<Item = &PoolLane> {
        self.lanes.iter().filter_map(OnceLock::get)
    }

    /// The servers and the placement of keys this pool's connections go to.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// The state this pool's connections are in.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// True while Redis refuses the pool's user (deleted, or its password changed and a
    /// connection had to be made again): Redis no longer serves that user's connections.
    pub fn user_refused(&self) -> bool {
        self.template.user_refused.load(Ordering::Relaxed)
    }
}

impl Member {
    /// Starts the connection of a new member labelled `label`.
    fn spawn(label: String, settings: &Arc<UpstreamSettings>) -> Self {
        let handle = UpstreamHandle::spawn(label.clone(), settings.clone());
        Member {
            handle: ArcSwap::from_pointee(handle),
            label,
        }
    }

    /// The member's connection for a new session: a fresh one in place of a retired one.
    fn handle(&self, settings: &Arc<UpstreamSettings>) -> UpstreamHandle {
        let current = self.handle.load();
        if !current.is_retired() {
            return (**current).clone();
        }
        let fresh = UpstreamHandle::spawn(self.label.clone(), settings.clone());
        let before = self
            .handle
            .compare_and_swap(&current, Arc::new(fresh.clone()));
        if Arc::ptr_eq(&*before, &*current) {
            fresh
        } else {
            // Another thread replaced it first: use that one (ours ends, unused, with `fresh`).
            (**before).clone()
        }
    }
}

impl Lease {
    /// The dedicated connection.
    pub fn handle(&self) -> &UpstreamHandle {
        &self.handle
    }
}

impl Lease {
    /// The state the connection is in.
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    /// The server the lease is connected to.
    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// The warm set's generation when the lease was made.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Takes the lease's permit (the warm set holds it while the lease is checked).
    pub(crate) fn take_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        self.permit.take()
    }

    /// Gives the lease a permit back.
    pub(crate) fn set_permit(&mut self, permit: OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Pools {
    /// Starts the default pool's drivers (they connect in the background); `tls` for `rediss://`.
    pub fn start(config: &Config, tls: Option<UpstreamTls>, budget: &Budget) -> Self {
        let base = UpstreamSettings {
            upstream: config.upstream.clone(),
            resp3: false,
            tls,
            tunables: Arc::new(Live::new(Tunables::from_config(config))),
            connect_timeout: config.timeouts.connect_timeout,
            backoff_max: config.timeouts.reconnect_backoff_max,
            max_inflight: config.batching.max_upstream_inflight.get(),
            queue_capacity: QUEUE_CAPACITY,
            dedicated: false,
            user: None,
            user_refused: Arc::default(),
            user_events: None,
            health: None,
            role: None,
            superseded: None,
        };
        let default_key = PoolKey {
            db: config.upstream.db,
            resp3: false,
            auth: None,
        };
        // Replaced by `start_default` below.
        let layout = Layout::new(&config.upstream, &config.topology, &config.reads, &base);
        crate::replicas::poll_lag(&layout, base.clone());
        // Served from the start, so dashboards and alerts see it before any ejection.
        crate::metrics::ejected(0);
        let placeholder = Pool {
            key: default_key.clone(),
            lanes: Box::new([]),
            template: base.clone(),
            size: 0,
            index: 0,
            layout: layout.clone(),
        };
        let pools = Pools {
            base: Mutex::new(base),
            pool_size: config.batching.pool_size.get(),
            budget: budget.clone(),
            default: Mutex::new(Arc::new(placeholder)),
            layout: Mutex::new(layout),
            reads: Mutex::new(config.reads.clone()),
            generation: AtomicU64::new(0),
            pools: Mutex::new(HashMap::new()),
            leases: budget.leases.clone(),
            warm: Arc::new(Warm::new(
                config.leases.warm_leases,
                config.timeouts.connect_timeout.saturating_mul(2),
            )),
            max_leases: config.leases.max_leases.get(),
            leases_gauge: metrics::gauge!(crate::metrics::LEASES, crate::metrics::labels([])),
            lease_refusals: metrics::counter!(
                crate::metrics::LEASE_REFUSALS,
                crate::metrics::labels([])
            ),
            pools_gauge: metrics::gauge!(crate::metrics::POOLS, crate::metrics::labels([])),
            known_dbs: Mutex::new(HashSet::new()),
            verdicts: Mutex::new(HashMap::new()),
            user_events: Arc::default(),
        };
        lock(&budget.warm).push(Arc::downgrade(&pools.warm));
        pools.start_default(default_key);
        pools
    }

    /// The reloadable knobs every driver follows.
    pub fn tunables(&self) -> Arc<Live<Tunables>> {
        lock(&self.base).tunables.clone()
    }

    /// A reload changed the upstream (address, credentials, db), its topology (servers,
    /// weights, hashing) or its read policy (`reads`): new pools start with the new settings;
    /// sessions move to them as soon as they have nothing in flight, and the old pools'
    /// connections close when the last session leaves them. Leases in use keep their connection.
    pub fn replace_upstream(&self, upstream: Upstream, topology: Topology, reads: Reads) {
        let base = {
            let mut base = lock(&self.base);
            base.upstream = upstream.clone();
            base.clone()
        };
        let layout = match (&topology, self.layout().sentinel_watch()) {
            // The same sentinels: what they said stays known while the new watch asks them again.
            (Topology::Sentinel(spec), Some(old)) if old.spec() == spec => {
                Layout::sentinel(&upstream, Watch::start(spec, &base, old.found()), &reads)
            }
            _ => Layout::new(&upstream, &topology, &reads, &base),
        };
        *lock(&self.reads) = reads;
        self.install(layout, upstream.db);
    }

    /// For an upstream watched by Sentinel: when the watch has found another primary (or other
    /// replicas) than the pools were made for, new pools start there, as [`Pools::replace_upstream`]
    /// starts them. When the primary itself changed, the leases on the old one end as lost
    /// connections do (their clients get errors), rather than keep a transaction, a blocked
    /// command or a subscription on a demoted server. Nothing happens otherwise.
    pub fn follow_sentinel(&self) {
        let layout = self.layout();
        let Some(watch) = layout
            .sentinel_watch()
            .filter(|_| layout.sentinel_outdated())
        else {
            return;
        };
        let upstream = lock(&self.base).upstream.clone();
        let reads = lock(&self.reads).clone();
        let old = layout.endpoint(0).map(|u| u.endpoint);
        let new = Layout::sentinel(&upstream, watch.clone(), &reads);
        let moved = new.endpoint(0).map(|u| u.endpoint) != old;
        self.install(new, upstream.db);
        if moved {
            // Leases made on the old layout, even while the new one was installed, end.
            layout.supersede_primary();
        }
    }

    /// Replaces the layout, the pools (the default one started in `db`) and what was learnt of
    /// the old servers, and bumps the generation.
    fn install(&self, layout: Arc<Layout>, db: u32) {
        let key = PoolKey {
            db,
            resp3: false,
            auth: None,
        };
        crate::replicas::poll_lag(&layout, lock(&self.base).clone());
        *lock(&self.layout) = layout;
        self.warm.clear();
        self.budget
            .release(lock(&self.pools).drain().map(|(key, _)| key));
        lock(&self.known_dbs).clear();
        lock(&self.verdicts).clear();
        self.start_default(key);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever `replace_upstream` runs.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn start_default(&self, key: PoolKey) {
        // The configured state always has its pool, whatever else counts against `max_pools`.
        self.budget.claim(&key, usize::MAX);
        let pool = self.spawn_pool(key.clone(), 0);
        self.learn_db(None, key.db);
        lock(&self.pools).insert(key, pool.clone());
        *lock(&self.default) = pool;
    }

    /// The pool of the configured upstream (db, RESP2, configured user).
    pub fn default_pool(&self) -> Arc<Pool> {
        lock(&self.default).clone()
    }

    /// The pool for `key`, started on first use; `Err` is the error line for the client when
    /// `max_pools` pools exist already.
    pub fn pool(&self, key: &PoolKey) -> Result<Arc<Pool>, Bytes> {
        let mut pools = lock(&self.pools);
        if let Some(pool) = pools.get(key) {
            return Ok(pool.clone());
        }
        if !self.budget.claim(key, self.budget.max_pools) {
            let max_pools = self.budget.max_pools;
            return Err(ErrorReply::TooManyPools { max_pools }.line());
        }
        let pool = self.spawn_pool(key.clone(), pools.len());
        pools.insert(key.clone(), pool.clone());
        Ok(pool)
    }

    /// The pool for `key` (as [`Pools::pool`]) and the generation it is at least as new as. The
    /// generation is read first: a reload in between pairs the new pool with the old generation
    /// (the session moves once more, to the same pool), never an old pool with the new generation
    /// (the session would keep the old servers until the next reload).
    pub fn pool_now(&self, key: &PoolKey) -> Result<(Arc<Pool>, u64), Bytes> {
        let generation = self.generation();
        Ok((self.pool(key)?, generation))
    }

    /// True when a pool in `key`'s state has been started.
    pub fn serves(&self, key: &PoolKey) -> bool {
        lock(&self.pools).contains_key(key)
    }

    /// Lends a dedicated connection in `key`'s state: a warm one if there is one, else a fresh
    /// one (and warm ones are started for the next clients). `Err` is the error line for the client
    /// when `max_leases` are out. Never waits.
    pub fn lease(&self, key: &PoolKey, lane: Lane) -> Result<Lease, Bytes> {
        let place = (key.clone(), lane);
        if let Some(lease) = self.warm.take(&place) {
            return Ok(self.lend(lease));
        }
        let permit = self.permit()?;
        let lease = self.spawn_lease(key, lane, permit);
        self.refill(&place);
        Ok(self.lend(lease))
    }

    /// Takes back a lease whose connection the session trusts: idle, not in a transaction, a
    /// stream or a blocking call. It is scrubbed (`RESET` and the handshake of its state) and kept
    /// warm, or closed when its state has enough warm leases or the last free permit would go.
    pub fn give_back(&self, mut lease: Lease) {
        lease.lent = None;
        // A lease from before a reload of the upstream closes: its scrub would send the new
        // upstream's credentials to the old one.
        if lease.generation != self.warm.generation()
            || !lease.handle.is_up()
            || self.leases.available_permits() == 0
            || !self.warm.reserve(&(lease.key.clone(), lease.lane))
        {
            return;
        }
        let mut scrub = vec![Bytes::from_static(b"*1\r\n$5\r\nRESET\r\n")];
        scrub.extend(upstream::handshake_commands(
            &self.settings_for(&lease.key, lease.lane),
        ));
        self.warm.prepare(lease, scrub);
    }

    /// Connects a raw connection in `key`'s state for a client that reads the replication stream;
    /// `Err` is the error line for the client (`max_leases` out, or the upstream unreachable).
    pub async fn tap(&self, key: &PoolKey) -> Result<Tap, Bytes> {
        let permit = self.permit()?;
        let settings = self.settings_for(key, 0);
        let stream = upstream::open_raw(&settings)
            .await
            .map_err(|err| ErrorReply::UpstreamUnavailable(&err).line())?;
        self.leases_gauge.increment(1.0);
        Ok(Tap {
            stream,
            _permit: permit,
            _lent: Lent(self.leases_gauge.clone()),
        })
    }

    /// One of the `max_leases` permits: a free one, else one a warm lease holds (that lease
    /// closes). `Err` is the refusal line for the client.
    fn permit(&self) -> Result<OwnedSemaphorePermit, Bytes> {
        if let Ok(permit) = self.leases.clone().try_acquire_owned() {
            return Ok(permit);
        }
        if let Some(permit) = self.warm.evict_one().or_else(|| self.budget.evict_warm()) {
            return Ok(permit);
        }
        self.lease_refusals.increment(1);
        let max_leases = self.max_leases;
        Err(ErrorReply::NoLease { max_leases }.line())
    }

    /// Starts warm leases in `key`'s state up to `warm_leases`, never taking the last free permit
    /// (a client that needs a lease must find one without waiting for a warm-up).
    fn refill(&self, place: &Place) {
        while let Ok(permit) = self.leases.clone().try_acquire_owned() {
            if self.leases.available_permits() == 0 || !self.warm.reserve(place) {
                return;
            }
            let lease = self.spawn_lease(&place.0, place.1, permit);
            self.warm
                .prepare(lease, vec![Bytes::from_static(b"*1\r\n$4\r\nPING\r\n")]);
        }
    }

    /// A new dedicated connection in `key`'s state (its driver connects in the background).
    fn spawn_lease(&self, key: &PoolKey, lane: Lane, permit: OwnedSemaphorePermit) -> Lease {
        // The generation first: a reload between the two makes the lease stale, never wrong.
        let generation = self.warm.generation();
        let layout = self.layout();
        let mut settings = UpstreamSettings {
            dedicated: true,
            user_events: Some(self.user_events.clone()),
            ..self.settings_in(&layout, key, lane)
        };
        if settings.role == Some(Role::Primary) {
            settings.superseded = layout.primary_superseded();
        }
        Lease {
            handle: UpstreamHandle::spawn("lease".to_owned(), Arc::new(settings)),
            key: key.clone(),
            lane,
            generation,
            permit: Some(permit),
            lent: None,
        }
    }

    /// Marks a lease as lent to a session (`respipe_leases`).
    fn lend(&self, mut lease: Lease) -> Lease {
        self.leases_gauge.increment(1.0);
        lease.lent = Some(Lent(self.leases_gauge.clone()));
        lease
    }

    /// Runs `commands` on a short-lived connection in `key`'s state and returns Redis's replies.
    pub async fn probe(
        &self,
        key: &PoolKey,
        commands: &[Bytes],
    ) -> Result<Vec<Bytes>, UpstreamError> {
        // A cluster's seed may be a replica, or down: a primary answers.
        let settings = self.settings_for(key, crate::route::keyless_lane(&self.layout()));
        upstream::probe(&settings, commands).await
    }

    /// True when Redis has accepted `SELECT db` from `user` before.
    pub fn known_db(&self, user: Option<&Arc<Credentials>>, db: u32) -> bool {
        lock(&self.known_dbs).contains(&(user.cloned(), db))
    }

    /// Remembers that Redis accepted `SELECT db` from `user`.
    pub fn learn_db(&self, user: Option<&Arc<Credentials>>, db: u32) {
        lock(&self.known_dbs).insert((user.cloned(), db));
    }

    /// Redis's answer to `question` from `user`, if it was asked before.
    pub fn verdict(&self, user: Option<&Arc<Credentials>>, question: &Bytes) -> Option<Bytes> {
        lock(&self.verdicts)
            .get(&(user.cloned(), question.clone()))
            .cloned()
    }

    /// Remembers Redis's answer to `question` from `user`.
    pub fn remember_verdict(
        &self,
        user: Option<&Arc<Credentials>>,
        question: Bytes,
        answer: Bytes,
    ) {
        let mut verdicts = lock(&self.verdicts);
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.clear();
        }
        verdicts.insert((user.cloned(), question), answer);
    }

    /// The Redis user of the configured upstream (`default` when none is configured).
    pub fn configured_user(&self) -> String {
        lock(&self.base)
            .upstream
            .username
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "default".to_owned())
    }

    /// Notified when Redis starts refusing the user of a shared pool (a connection of it was
    /// closed, as Redis closes a deleted user's connections, and the new one's `AUTH` was
    /// refused), and when a lease's connection is lost: then some sessions may have to close.
    pub fn user_events(&self) -> Arc<Notify> {
        self.user_events.clone()
    }

    /// The states of the shared pools whose user Redis refuses now.
    pub fn refused(&self) -> HashSet<PoolKey> {
        lock(&self.pools)
            .iter()
            .filter(|(_, pool)| pool.user_refused())
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// True while at least one connection of the default pool to the primary (to any shard) is
    /// established: replicas serve reads only, so they do not make respipe ready. Replaces retired
    /// connections as routing does, so a stalled one that Redis then closed does not keep the
    /// proxy unready while no client sends anything.
    pub fn any_up(&self) -> bool {
        let pool = self.default_pool();
        if let Some(cluster) = pool.layout.cluster() {
            // Ready while every slot has an owner, and one of them is reachable.
            let map = cluster.map();
            return map.covered()
                && map
                    .primaries()
                    .iter()
                    .any(|&lane| pool.route(lane, 0).is_up());
        }
        // A primary's replicas serve reads only: it is the primary that counts (lane 0, the
        // first started); for shards, any of them.
        let counted = if pool.layout.is_sharded() {
            usize::MAX
        } else {
            1
        };
        let up = pool.started().take(counted).any(|lane| {
            lane.members
                .iter()
                .any(|m| m.handle(&lane.settings).is_up())
        });
        up
    }

    fn spawn_pool(&self, key: PoolKey, index: usize) -> Arc<Pool> {
        let layout = self.layout();
        // One flag for the pool: Redis refusing its user on any server refuses the session.
        let template = UpstreamSettings {
            user_events: Some(self.user_events.clone()),
            user_refused: Arc::default(),
            ..self.settings_for(&key, 0)
        };
        let pool = Pool {
            key,
            lanes: (0..layout.capacity()).map(|_| OnceLock::new()).collect(),
            template,
            size: self.pool_size,
            index,
            layout,
        };
        for lane in 0..pool.layout.lanes_started() {
            pool.lane(lane as Lane);
        }
        self.pools_gauge.increment(1.0);
        Arc::new(pool)
    }

    /// The servers and the placement of keys now.
    pub fn layout(&self) -> Arc<Layout> {
        lock(&self.layout).clone()
    }

    /// The upstream settings for connections in `key`'s state.
    fn settings_for(&self, key: &PoolKey, lane: Lane) -> UpstreamSettings {
        self.settings_in(&self.layout(), key, lane)
    }

    /// The upstream settings for connections in `key`'s state to `layout`'s lane `lane`.
    fn settings_in(&self, layout: &Layout, key: &PoolKey, lane: Lane) -> UpstreamSettings {
        let base = lock(&self.base);
        let mut upstream: Upstream = layout
            .endpoint(lane)
            .unwrap_or_else(|| layout.servers[0].clone());
        upstream.db = key.db;
        UpstreamSettings {
            upstream,
            resp3: key.resp3,
            user: key.auth.clone(),
            user_refused: Arc::default(),
            health: layout.health(lane),
            role: layout.role(lane),
            ..base.clone()
        }
    }
}

/// Locks a mutex that is only held for short map or field updates; a panic while holding one
/// cannot leave it half-updated, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::shard::{Server, Spec};

    /// Shards on loopback ports nothing listens on (the pools connect in the background).
    fn shards(ports: &[u16]) -> Topology {
        Topology::Shards(Spec {
            servers: ports
                .iter()
                .map(|&port| Server {
                    upstream: Upstream::tcp("127.0.0.1", port),
                    name: None,
                    weight: 1,
                })
                .collect(),
            hash: Default::default(),
            distribution: Default::default(),
            hash_tag: None,
            eject: None,
        })
    }

    /// One thread reloads the server list again and again while another takes pools as sessions
    /// do: a pool is never paired with a generation newer than its own (the session would keep
    /// the old servers, placing keys by them, until the next reload). The pool taken before the
    /// generation was read made a few pairs in 300 reloads stale.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_is_never_paired_with_a_newer_generation() {
        let config = Config {
            upstream: Upstream::tcp("127.0.0.1", 1),
            topology: shards(&[1, 2]),
            ..Config::default()
        };
        let pools = Arc::new(Pools::start(&config, None, &Budget::new(&config)));
        let key = pools.default_pool().key().clone();
        let done = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let reloads = std::thread::spawn({
            let (pools, done, runtime) = (pools.clone(), done.clone(), runtime.clone());
            move || {
                let _runtime = runtime.enter();
                // Per generation, its layout.
                let mut layouts = vec![pools.layout()];
                for i in 0..300 {
                    let ports: &[u16] = if i % 2 == 0 { &[1, 2, 3] } else { &[1, 2] };
                    let reads = config.reads.clone();
                    pools.replace_upstream(config.upstream.clone(), shards(ports), reads);
                    layouts.push(pools.layout());
                }
                done.store(true, Ordering::Release);
                layouts
            }
        });
        let sessions = std::thread::spawn(move || {
            let _runtime = runtime.enter();
            let mut pairs = Vec::new();
            while !done.load(Ordering::Acquire) {
                let (pool, generation) = pools.pool_now(&key).unwrap();
                pairs.push((pool.layout().clone(), generation));
            }
            pairs
        });
        let layouts = reloads.join().unwrap();
        let pairs = sessions.join().unwrap();
        let stale = pairs
            .iter()
            .filter(|(layout, generation)| {
                let of = layouts.iter().position(|l| Arc::ptr_eq(l, layout));
                of.is_some_and(|of| of < *generation as usize)
            })
            .count();
        assert_eq!(stale, 0, "of {} pairs", pairs.len());
    }
}
