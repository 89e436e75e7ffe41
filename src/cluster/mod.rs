//! A Redis Cluster upstream presented to clients as one Redis (TOPOLOGY.md section 3).
//!
//! This module knows where every hash slot is: [`key_slot`] (CRC16 and hash tags as Redis Cluster
//! computes them), the [`SlotMap`] (slot → lane), and the [`Cluster`] that keeps it current. A
//! *lane* is a node address: lanes are handed out as addresses are first seen and never reused while
//! the cluster lives, so a lane keeps meaning the same node connection (a node that moves to another
//! address gets a new lane; its old one stays idle).
//!
//! The map is kept by a task the cluster owns ([`Cluster::new`]). Each refresh asks up to
//! [`ASK_AT_ONCE`] nodes at once for `CLUSTER SLOTS` — the primaries of the current map first,
//! then the other nodes it names, then the seeds — and installs the view most of the answers
//! agree on, preferring one that covers every slot (`view::choose`). Nodes are known by node
//! id: a node that restarts on another address is the same node, found at its new address (where
//! it gets a new lane). A refresh runs at start (retried with backoff until a node answers), when
//! a trigger asks ([`Cluster::refresh`]: a `MOVED`, [`CONNECT_FAILURES`] failed connections in a
//! row to a primary, `CLUSTERDOWN`, an uncovered slot), at most once per [`MIN_REFRESH_INTERVAL`],
//! and every [`BACKGROUND_REFRESH`] when nothing asks.

mod slots;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout_at, Instant};
use tracing::{debug, info, warn};

use crate::config::{Endpoint, Upstream};
use crate::reply::Lane;
use crate::topology::Health;
use crate::upstream::UpstreamSettings;

pub use slots::{key_slot, parse_slots, SlotRange};
pub use view::{Node, Shard};

use view::View;

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;
/// Node addresses (lanes) a cluster may see in its life; a `SCAN` cursor has room for 1024 shards.
pub const MAX_NODES: usize = 1024;
/// Refreshes triggered by events are at most this frequent.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The slot map is checked this often even when nothing triggers it.
pub const BACKGROUND_REFRESH: Duration = Duration::from_secs(30);
/// While no node answers, or the map answered leaves slots uncovered, the next refresh follows
/// after a delay that starts at [`MIN_REFRESH_INTERVAL`] and doubles up to this.
pub const RETRY_MAX: Duration = Duration::from_secs(8);
/// Nodes asked for the slot map at once, and answers a refresh waits for at most: a node that does
/// not answer is replaced by the next candidate.
pub const ASK_AT_ONCE: usize = 3;
/// Connections to one node failing this many times in a row (connects refused or timed out,
/// established connections lost) refresh the map if the node is a primary in it: it may have
/// failed over, or moved.
pub const CONNECT_FAILURES: u32 = 2;
/// No owner (an uncovered slot) in [`SlotMap`].
const NO_OWNER: Lane = Lane::MAX;

/// The `[upstream] kind = "cluster"` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Nodes to ask for the slot map first (and again when no known node answers). Each has the
    /// cluster's credentials and TLS; db is always 0.
    pub seeds: Vec<Upstream>,
}

/// Why the slot map is being refreshed (the `source` label of `respipe_cluster_refreshes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// respipe started (or the cluster configuration was reloaded).
    Start,
    /// A node answered `-MOVED`, or unsubscribed a client's shard channels from a slot it lost.
    Moved,
    /// Connections to a primary kept failing ([`CONNECT_FAILURES`] in a row).
    ConnectFailure,
    /// A node answered `-CLUSTERDOWN`.
    ClusterDown,
    /// A command's slot has no owner in the map.
    Uncovered,
    /// The periodic check, or the retry of a refresh that failed or left slots uncovered.
    Background,
}

impl Source {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Source::Start => "start",
            Source::Moved => "moved",
            Source::ConnectFailure => "connect_failure",
            Source::ClusterDown => "clusterdown",
            Source::Uncovered => "uncovered",
            Source::Background => "background",
        }
    }
}

/// Which lane owns every slot, at one moment, and the shards the map was made from.
#[derive(Debug, Clone)]
pub struct SlotMap {
    owner: Box<[Lane]>,
    /// Every lane owning a slot, ordered by the lowest slot it owns; follows `owner`.
    primaries: Arc<[Lane]>,
    /// The slot ranges with their primaries and replicas as the installed view had them (a
    /// `MOVED` patch changes `owner` only).
    shards: Arc<[Shard]>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            owner: vec![NO_OWNER; SLOTS].into_boxed_slice(),
            primaries: Arc::new([]),
            shards: Arc::new([]),
        }
    }
}

impl SlotMap {
    /// The lane (primary) that owns `slot`; `None` when no node serves it (or the map is not
    /// known yet).
    pub fn owner(&self, slot: u16) -> Option<Lane> {
        match self.owner[usize::from(slot) % SLOTS] {
            NO_OWNER => None,
            lane => Some(lane),
        }
    }

    /// Every primary owning at least one slot, ordered by the lowest slot it owns (the order
    /// `SCAN` visits them in).
    pub fn primaries(&self) -> Vec<Lane> {
        self.primaries.to_vec()
    }

    /// True when `lane` owns a slot.
    pub fn is_primary(&self, lane: Lane) -> bool {
        self.primaries.contains(&lane)
    }

    /// True when every slot has an owner.
    pub fn covered(&self) -> bool {
        !self.owner.contains(&NO_OWNER)
    }

    /// The slot ranges, their primaries and replicas, as the last refresh found them (ordered by
    /// slot; empty before the first).
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The map `owner` says, with `shards` recorded beside it.
    fn new(owner: Box<[Lane]>, shards: Arc<[Shard]>) -> SlotMap {
        let mut primaries = Vec::new();
        for &lane in owner.iter() {
            if lane != NO_OWNER && !primaries.contains(&lane) {
                primaries.push(lane);
            }
        }
        SlotMap {
            owner,
            primaries: primaries.into(),
            shards,
        }
    }

    /// A copy with `slot` owned by `lane` (a `MOVED` patch).
    fn patched(&self, slot: u16, lane: Lane) -> SlotMap {
        let mut owner = self.owner.clone();
        owner[usize::from(slot) % SLOTS] = lane;
        SlotMap::new(owner, self.shards.clone())
    }
}

/// The node addresses seen so far, each with its lane.
#[derive(Debug, Default)]
struct Nodes {
    /// By lane.
    endpoints: Vec<Upstream>,
    /// By lane: the run of failed connections to the node (see [`CONNECT_FAILURES`]).
    health: Vec<Arc<Health>>,
    /// Lane by `host:port`.
    lanes: HashMap<String, Lane>,
    /// The last address known for each node id (the views' `"?"` endpoints are looked up here).
    ids: HashMap<String, Endpoint>,
}

/// A Redis Cluster: its nodes, and the slot map kept current.
#[derive(Debug)]
pub struct Cluster {
    spec: Spec,
    /// TLS, timeouts and credentials for the connections that ask for the slot map.
    probe: UpstreamSettings,
    nodes: Mutex<Nodes>,
    map: ArcSwap<SlotMap>,
    /// Notified by [`Cluster::refresh`]; the refresh task holds the other clone (and the
    /// cluster only weakly, so dropping the cluster ends it).
    wake: Arc<Notify>,
    /// The first trigger since the last refresh (reported as its source).
    asked: Mutex<Option<Source>>,
    /// This cluster, for the [`Health`] of lanes handed out later.
    me: Weak<Cluster>,
}

impl Cluster {
    /// The cluster of `spec`, and its refresh task (it ends when the cluster is dropped). The
    /// map is empty until the first refresh answers.
    pub fn new(spec: &Spec, probe: &UpstreamSettings) -> Arc<Cluster> {
        let cluster = Arc::new_cyclic(|me| Cluster {
            spec: spec.clone(),
            probe: UpstreamSettings {
                user: None,
                user_events: None,
                health: None,
                dedicated: false,
                ..probe.clone()
            },
            nodes: Mutex::new(Nodes::default()),
            map: ArcSwap::from_pointee(SlotMap::default()),
            wake: Arc::new(Notify::new()),
            asked: Mutex::new(None),
            me: me.clone(),
        });
        for seed in &spec.seeds {
            cluster.lane_of(seed.endpoint.clone());
        }
        // Served from the start, so dashboards and alerts see an unknown map as uncovered.
        crate::metrics::cluster_map(false, 0);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(keep_map(
                Arc::downgrade(&cluster),
                cluster.wake.clone(),
                BACKGROUND_REFRESH,
            ));
        }
        cluster
    }

    /// The slot map now.
    pub fn map(&self) -> arc_swap::Guard<Arc<SlotMap>> {
        self.map.load()
    }

    /// Where lane `lane` connects: the cluster's credentials and TLS at that node's address.
    pub fn endpoint(&self, lane: Lane) -> Option<Upstream> {
        lock(&self.nodes).endpoints.get(usize::from(lane)).cloned()
    }

    /// What lane `lane`'s connections report their failures to (a run of
    /// [`CONNECT_FAILURES`] to a primary refreshes the map).
    pub fn health(&self, lane: Lane) -> Option<Arc<Health>> {
        lock(&self.nodes).health.get(usize::from(lane)).cloned()
    }

    /// How many lanes have been handed out.
    pub fn lanes(&self) -> usize {
        lock(&self.nodes).endpoints.len()
    }

    /// The lane of a node address, handed out when first seen; `None` once [`MAX_NODES`]
    /// addresses have been seen.
    pub fn lane_of(&self, endpoint: Endpoint) -> Option<Lane> {
        let name = endpoint.to_string();
        let mut nodes = lock(&self.nodes);
        if let Some(&lane) = nodes.lanes.get(&name) {
            return Some(lane);
        }
        if nodes.endpoints.len() >= MAX_NODES {
            warn!(node = %name, "more than {MAX_NODES} cluster node addresses seen: ignored");
            return None;
        }
        let lane = nodes.endpoints.len() as Lane;
        let upstream = self.upstream_at(endpoint);
        nodes.endpoints.push(upstream);
        let health = Health::for_cluster_lane(self.me.clone(), lane, CONNECT_FAILURES);
        nodes.health.push(Arc::new(health));
        nodes.lanes.insert(name, lane);
        Some(lane)
    }

    /// A node said `MOVED slot addr`: the map says so at once, and a refresh is asked for (the
    /// whole map may have changed).
    pub fn moved(&self, slot: u16, lane: Lane) {
        if self.map.load().owner(slot) != Some(lane) {
            // Read, copy, swap: retried if another patch or a refresh got in between.
            self.map.rcu(|map| match map.owner(slot) {
                Some(owner) if owner == lane => map.clone(),
                _ => Arc::new(map.patched(slot, lane)),
            });
            let map = self.map.load();
            crate::metrics::cluster_map(map.covered(), map.primaries.len());
        }
        self.refresh(Source::Moved);
    }

    /// Asks the refresh task for a new map (coalesced: many asks make one refresh, at most one
    /// per [`MIN_REFRESH_INTERVAL`]; the first ask since the last refresh names its source).
    /// Cheap: a short lock and a wake-up.
    pub fn refresh(&self, source: Source) {
        lock(&self.asked).get_or_insert(source);
        self.wake.notify_one();
    }

    /// Connections to `lane` failed [`CONNECT_FAILURES`] times in a row (or more): if it is a
    /// primary, its slots may have failed over or it may have moved, so the map is refreshed.
    /// A lane no longer in the map (an old address) is left alone.
    pub(crate) fn node_failing(&self, lane: Lane) {
        if self.map.load().is_primary(lane) {
            debug!(node = ?self.endpoint(lane).map(|u| u.endpoint.to_string()),
                "connections to a cluster primary keep failing: refreshing the slot map");
            self.refresh(Source::ConnectFailure);
        }
    }

    /// Asks the nodes for the slot map and installs the view they agree on (see the module doc).
    /// `Err` says why there was none: no node answered.
    async fn refresh_now(&self) -> Result<(), String> {
        let candidates = self.candidates();
        let deadline = Instant::now() + self.probe.connect_timeout * 3;
        let (answers, failure) = ask(&self.probe, candidates, deadline).await;
        let views: Vec<View> = {
            let nodes = lock(&self.nodes);
            answers
                .iter()
                .map(|(asked, ranges)| View::resolve(ranges, asked, &nodes.ids))
                .collect()
        };
        match view::choose(&views) {
            Some(view) => {
                self.install(view);
                Ok(())
            }
            None => Err(failure.unwrap_or_else(|| "no node to ask".into())),
        }
    }

    /// Whom to ask for the slot map, in order: the primaries of the current map, the other nodes
    /// its shards name (replicas), then the seeds.
    fn candidates(&self) -> Vec<Upstream> {
        let map = self.map.load();
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let primaries = map.primaries.iter().filter_map(|&l| self.endpoint(l));
        let others = map.shards().iter().flat_map(|s| &s.replicas);
        let seeds = self.spec.seeds.iter();
        for endpoint in primaries
            .map(|u| u.endpoint)
            .chain(others.map(|n| n.endpoint.clone()))
            .chain(seeds.map(|u| u.endpoint.clone()))
        {
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        endpoints.into_iter().map(|e| self.upstream_at(e)).collect()
    }

    /// Installs `view` as the slot map: each primary's address gets its lane, and each node id
    /// its current address.
    fn install(&self, view: View) {
        let mut owner = vec![NO_OWNER; SLOTS].into_boxed_slice();
        for shard in &view.shards {
            let Some(lane) = self.lane_of(shard.primary.endpoint.clone()) else {
                continue;
            };
            owner[usize::from(shard.start)..=usize::from(shard.end)].fill(lane);
        }
        {
            let mut nodes = lock(&self.nodes);
            if nodes.ids.len() > MAX_NODES {
                nodes.ids.clear();
            }
            for node in view.nodes() {
                let Some(id) = &node.id else { continue };
                let old = nodes.ids.insert(id.clone(), node.endpoint.clone());
                if let Some(old) = old.filter(|old| *old != node.endpoint) {
                    info!(node.id = %id, from = %old, to = %node.endpoint, "cluster node moved to another address");
                }
            }
        }
        let changed = self.map.load().owner != owner;
        let map = SlotMap::new(owner, view.shards.into());
        if changed {
            info!(
                primaries = map.primaries.len(),
                covered = map.covered(),
                "cluster slot map changed"
            );
        }
        self.map.store(Arc::new(map));
    }

    /// The cluster's credentials and TLS at `endpoint`, db 0.
    fn upstream_at(&self, endpoint: Endpoint) -> Upstream {
        Upstream {
            endpoint,
            db: 0,
            ..self.spec.seeds[0].clone()
        }
    }
}

/// Asks `candidates` for `CLUSTER SLOTS` in their order, [`ASK_AT_ONCE`] at a time: each that
/// fails is replaced by the next, until [`ASK_AT_ONCE`] have answered, none is left, or `deadline`
/// (then the questions still open are dropped). Returns the answers in candidate order, each with
/// the address asked, and the last failure.
async fn ask(
    probe: &UpstreamSettings,
    candidates: Vec<Upstream>,
    deadline: Instant,
) -> (Vec<(Endpoint, Vec<SlotRange>)>, Option<String>) {
    let mut asking = JoinSet::new();
    let mut next = candidates.into_iter().enumerate();
    let mut answers = Vec::new();
    let mut failure = None;
    loop {
        while asking.len() + answers.len() < ASK_AT_ONCE {
            let Some((i, upstream)) = next.next() else {
                break;
            };
            let probe = probe.clone();
            asking.spawn(async move {
                let ranges = slots::fetch(&probe, &upstream).await;
                (i, upstream.endpoint, ranges)
            });
        }
        let Ok(Some(done)) = timeout_at(deadline, asking.join_next()).await else {
            break;
        };
        match done {
            Ok((i, asked, Ok(ranges))) => answers.push((i, asked, ranges)),
            Ok((_, asked, Err(why))) => {
                debug!(node = %asked, %why, "CLUSTER SLOTS failed");
                failure = Some(format!("{asked}: {why}"));
            }
            Err(e) => failure = Some(e.to_string()),
        }
    }
    if answers.is_empty() && failure.is_none() && !asking.is_empty() {
        failure = Some("no node answered in time".into());
    }
    answers.sort_by_key(|(i, _, _)| *i);
    let answers = answers.into_iter().map(|(_, e, r)| (e, r)).collect();
    (answers, failure)
}

/// Keeps the slot map current until the cluster is dropped: refreshes at start, then when asked
/// (at most once per [`MIN_REFRESH_INTERVAL`]) or after `interval` without an ask. A refresh that
/// fails, or leaves slots uncovered, is retried after a backoff ([`RETRY_MAX`] at most; an ask
/// comes sooner). Holds the cluster only while refreshing.
async fn keep_map(cluster: Weak<Cluster>, wake: Arc<Notify>, interval: Duration) {
    let mut source = Source::Start;
    let mut retry = MIN_REFRESH_INTERVAL;
    loop {
        let Some(current) = cluster.upgrade() else {
            return;
        };
        let outcome = current.refresh_now().await;
        let map = current.map();
        drop(current);
        // A source whose refresh failed stays owed: the retry reports it.
        let mut owed = None;
        let wait = match outcome {
            Ok(()) => {
                crate::metrics::cluster_refreshed(
                    source.label(),
                    map.covered(),
                    map.primaries.len(),
                );
                debug!(source = source.label(), "cluster slot map refreshed");
                if map.covered() {
                    retry = MIN_REFRESH_INTERVAL;
                    interval
                } else {
                    warn!(source = source.label(), retry_in = ?retry, "cluster slot map leaves slots uncovered");
                    backoff(&mut retry)
                }
            }
            Err(why) => {
                warn!(source = source.label(), %why, retry_in = ?retry, "cluster slot map refresh failed");
                owed = Some(source);
                backoff(&mut retry)
            }
        };
        drop(map);
        sleep(MIN_REFRESH_INTERVAL).await;
        let deadline = Instant::now() + wait.saturating_sub(MIN_REFRESH_INTERVAL);
        source = match next_ask(&cluster, &wake, deadline).await {
            Wake::Asked(asked) => owed.unwrap_or(asked),
            Wake::Due => owed.unwrap_or(Source::Background),
            Wake::Gone => return,
        };
    }
}

/// Why the refresh task woke up.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// A trigger asked for a refresh (the first since the last one).
    Asked(Source),
    /// The deadline passed without an ask.
    Due,
    /// The cluster was dropped.
    Gone,
}

/// Waits for an ask (one already made counts) or `deadline`. Holds the cluster only to look.
async fn next_ask(cluster: &Weak<Cluster>, wake: &Notify, deadline: Instant) -> Wake {
    loop {
        let Some(current) = cluster.upgrade() else {
            return Wake::Gone;
        };
        if let Some(asked) = lock(&current.asked).take() {
            return Wake::Asked(asked);
        }
        drop(current);
        // A wake-up without an ask is a permit left by an ask already served: wait again.
        if timeout_at(deadline, wake.notified()).await.is_err() {
            return Wake::Due;
        }
    }
}

/// The delay before retrying: `retry` now, doubled for the next time up to [`RETRY_MAX`].
fn backoff(retry: &mut Duration) -> Duration {
    let now = *retry;
    *retry = (now * 2).min(RETRY_MAX);
    now
}

/// Locks a mutex only held for short updates; poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short wait (real time: tokio's paused clock is not built in).
    const SOON: Duration = Duration::from_millis(50);

    /// A cluster without its refresh task (made outside a runtime), and a runtime to wait in.
    fn quiet() -> (Arc<Cluster>, tokio::runtime::Runtime) {
        let seed = Upstream::tcp("127.0.0.1", 1);
        let probe = UpstreamSettings::for_tests(seed.clone());
        let cluster = Cluster::new(&Spec { seeds: vec![seed] }, &probe);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        (cluster, runtime)
    }

    #[test]
    fn asks_are_coalesced_and_the_first_names_the_source() {
        let (cluster, runtime) = quiet();
        let (weak, wake) = (Arc::downgrade(&cluster), cluster.wake.clone());
        runtime.block_on(async {
            let deadline = Instant::now() + SOON;
            cluster.refresh(Source::Moved);
            cluster.refresh(Source::Uncovered);
            cluster.refresh(Source::ConnectFailure);
            assert_eq!(
                next_ask(&weak, &wake, deadline).await,
                Wake::Asked(Source::Moved)
            );
            assert!(Instant::now() < deadline, "at once");
            // The permit the asks left does not make a second refresh: the next one is due at the
            // deadline.
            assert_eq!(next_ask(&weak, &wake, deadline).await, Wake::Due);
            assert!(Instant::now() >= deadline);
        });
    }

    #[test]
    fn an_ask_while_waiting_wakes_the_task_at_once() {
        let (cluster, runtime) = quiet();
        let (weak, wake) = (Arc::downgrade(&cluster), cluster.wake.clone());
        runtime.block_on(async {
            let start = Instant::now();
            let asker = cluster.clone();
            tokio::spawn(async move {
                sleep(SOON).await;
                asker.refresh(Source::ClusterDown);
            });
            let deadline = start + BACKGROUND_REFRESH;
            let woke = next_ask(&weak, &wake, deadline).await;
            assert_eq!(woke, Wake::Asked(Source::ClusterDown));
            assert!(start.elapsed() >= SOON && Instant::now() < deadline);
            drop(cluster);
            assert_eq!(next_ask(&weak, &wake, deadline).await, Wake::Gone);
        });
    }

    /// A lane besides the seed's (lane 0).
    fn second_lane(cluster: &Cluster) -> Lane {
        let other = Upstream::tcp("127.0.0.1", 2).endpoint;
        cluster.lane_of(other).unwrap()
    }

    /// A map with every slot on `lane`.
    fn owned_by(lane: Lane) -> SlotMap {
        SlotMap::new(vec![lane; SLOTS].into_boxed_slice(), Arc::new([]))
    }

    #[test]
    fn moved_patches_the_slot_and_asks_for_a_refresh() {
        let (cluster, _runtime) = quiet();
        let other = second_lane(&cluster);
        cluster.map.store(Arc::new(owned_by(0)));
        cluster.moved(7, other);
        let map = cluster.map();
        assert_eq!(
            (map.owner(6), map.owner(7), map.owner(8)),
            (Some(0), Some(other), Some(0))
        );
        assert_eq!(map.primaries(), vec![0, other]);
        assert!(map.is_primary(other) && map.covered());
        assert_eq!(lock(&cluster.asked).take(), Some(Source::Moved));
    }

    #[test]
    fn retries_back_off_up_to_a_cap() {
        let mut retry = MIN_REFRESH_INTERVAL;
        let waits: Vec<u64> = (0..6).map(|_| backoff(&mut retry).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn connect_failures_refresh_only_for_a_primary_and_only_from_the_limit_on() {
        let (cluster, _runtime) = quiet();
        let (seed, other) = (0, second_lane(&cluster));
        cluster.map.store(Arc::new(owned_by(seed)));
        let asked = || lock(&cluster.asked).take();
        let health = cluster.health(seed).unwrap();
        health.failed();
        assert_eq!(asked(), None, "one failure is not enough");
        health.failed();
        assert_eq!(asked(), Some(Source::ConnectFailure));
        health.failed();
        assert_eq!(asked(), Some(Source::ConnectFailure), "nor is it the last");
        health.connected();
        health.failed();
        assert_eq!(asked(), None, "a connection starts the count again");
        let health = cluster.health(other).unwrap();
        for _ in 0..3 {
            health.failed();
        }
        assert_eq!(asked(), None, "not a primary");
    }
}
