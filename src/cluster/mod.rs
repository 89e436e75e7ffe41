//! A Redis Cluster upstream presented to clients as one Redis (TOPOLOGY.md section 3).
//!
//! This module knows where every hash slot is: [`key_slot`] (CRC16 and hash tags as Redis Cluster
//! computes them), the [`SlotMap`] (slot → lane), and the [`Cluster`] that keeps it current. A
//! *lane* is a node address: lanes are handed out as addresses are first seen and never reused while
//! the cluster lives, so a lane keeps meaning the same node connection (a node that moves to another
//! address gets a new lane; its old one stays idle).
//!
//! The map is refreshed by a task the cluster owns ([`Cluster::new`]): at start, and whenever a
//! trigger asks (`Cluster::refresh`: a `MOVED`, a connection failure, `CLUSTERDOWN`, an uncovered
//! slot), at most once per [`MIN_REFRESH_INTERVAL`], plus every [`BACKGROUND_REFRESH`].

mod slots;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::{Endpoint, Upstream};
use crate::reply::Lane;
use crate::upstream::UpstreamSettings;

pub use slots::{key_slot, parse_slots, SlotRange};

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;
/// Node addresses (lanes) a cluster may see in its life; a `SCAN` cursor has room for 1024 shards.
pub const MAX_NODES: usize = 1024;
/// Refreshes triggered by events are at most this frequent.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The slot map is checked this often even when nothing triggers it.
pub const BACKGROUND_REFRESH: Duration = Duration::from_secs(30);
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
    /// A node answered `-MOVED`.
    Moved,
    /// Connections to a node kept failing.
    ConnectFailure,
    /// A node answered `-CLUSTERDOWN`.
    ClusterDown,
    /// A command's slot has no owner in the map.
    Uncovered,
    /// The periodic check.
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

/// Which lane owns every slot, at one moment.
#[derive(Debug, Clone)]
pub struct SlotMap {
    owner: Box<[Lane]>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            owner: vec![NO_OWNER; SLOTS].into_boxed_slice(),
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
        let mut seen = Vec::new();
        for &lane in self.owner.iter() {
            if lane != NO_OWNER && !seen.contains(&lane) {
                seen.push(lane);
            }
        }
        seen
    }

    /// True when every slot has an owner.
    pub fn covered(&self) -> bool {
        !self.owner.contains(&NO_OWNER)
    }

    /// A copy with `slot` owned by `lane` (a `MOVED` patch).
    fn patched(&self, slot: u16, lane: Lane) -> SlotMap {
        let mut map = self.clone();
        map.owner[usize::from(slot) % SLOTS] = lane;
        map
    }
}

/// The node addresses seen so far, each with its lane.
#[derive(Debug, Default)]
struct Nodes {
    /// By lane.
    endpoints: Vec<Upstream>,
    /// Lane by `host:port`.
    lanes: HashMap<String, Lane>,
}

/// A Redis Cluster: its nodes, and the slot map kept current.
#[derive(Debug)]
pub struct Cluster {
    spec: Spec,
    /// TLS, timeouts and credentials for the connections that ask for the slot map.
    probe: UpstreamSettings,
    nodes: Mutex<Nodes>,
    map: ArcSwap<SlotMap>,
    /// Wakes the refresh task.
    wake: Notify,
    /// The first trigger since the last refresh (reported as its source).
    asked: Mutex<Option<Source>>,
}

impl Cluster {
    /// The cluster of `spec`, and its refresh task (it ends when the cluster is dropped). The
    /// map is empty until the first refresh answers.
    pub fn new(spec: &Spec, probe: &UpstreamSettings) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
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
            wake: Notify::new(),
            asked: Mutex::new(Some(Source::Start)),
        });
        for seed in &spec.seeds {
            cluster.lane_of(seed.endpoint.clone());
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(keep_map(Arc::downgrade(&cluster)));
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
        let base = &self.spec.seeds[0];
        nodes.endpoints.push(Upstream {
            endpoint,
            db: 0,
            ..base.clone()
        });
        nodes.lanes.insert(name, lane);
        Some(lane)
    }

    /// A node said `MOVED slot addr`: the map says so at once, and a refresh is asked for (the
    /// whole map may have changed).
    pub fn moved(&self, slot: u16, lane: Lane) {
        let current = self.map.load();
        if current.owner(slot) != Some(lane) {
            self.map.store(Arc::new(current.patched(slot, lane)));
        }
        self.refresh(Source::Moved);
    }

    /// Asks the refresh task for a new map (coalesced: many asks make one refresh, at most one
    /// per [`MIN_REFRESH_INTERVAL`]).
    pub fn refresh(&self, source: Source) {
        lock(&self.asked).get_or_insert(source);
        self.wake.notify_one();
    }

    /// Asks the nodes for the slot map and installs the first full answer. `Err` says why none
    /// could be had.
    async fn refresh_now(&self) -> Result<(), String> {
        let candidates = self.candidates();
        let mut last = String::from("no node to ask");
        for upstream in candidates {
            match slots::fetch(&self.probe, &upstream).await {
                Ok(ranges) => {
                    let map = self.build(&upstream, &ranges);
                    self.map.store(Arc::new(map));
                    return Ok(());
                }
                Err(why) => {
                    debug!(node = %upstream.endpoint, %why, "CLUSTER SLOTS failed");
                    last = why;
                }
            }
        }
        Err(last)
    }

    /// Nodes to ask: the primaries of the current map, then the seeds.
    fn candidates(&self) -> Vec<Upstream> {
        let mut lanes = self.map.load().primaries();
        for seed in &self.spec.seeds {
            if let Some(lane) = self.lane_of(seed.endpoint.clone()) {
                if !lanes.contains(&lane) {
                    lanes.push(lane);
                }
            }
        }
        lanes.iter().filter_map(|&l| self.endpoint(l)).collect()
    }

    /// The slot map `ranges` describe, as `asked` (the node that answered) reported them.
    fn build(&self, asked: &Upstream, ranges: &[SlotRange]) -> SlotMap {
        let mut map = SlotMap::default();
        for range in ranges {
            let endpoint = range.primary.endpoint(&asked.endpoint);
            let Some(lane) = endpoint.and_then(|e| self.lane_of(e)) else {
                continue;
            };
            for slot in range.start..=range.end.min(SLOTS as u16 - 1) {
                map.owner[usize::from(slot)] = lane;
            }
        }
        map
    }
}

/// Keeps the slot map current until the cluster is dropped.
async fn keep_map(cluster: Weak<Cluster>) {
    loop {
        let Some(current) = cluster.upgrade() else {
            return;
        };
        let source = lock(&current.asked).take().unwrap_or(Source::Background);
        match current.refresh_now().await {
            Ok(()) => {
                let map = current.map();
                crate::metrics::cluster_refreshed(
                    source.label(),
                    map.covered(),
                    map.primaries().len(),
                );
                debug!(source = source.label(), "cluster slot map refreshed");
            }
            Err(why) => {
                warn!(source = source.label(), %why, "cluster slot map refresh failed");
                if current.map().primaries().is_empty() {
                    info!("no cluster node answered yet: retrying");
                }
            }
        }
        tokio::time::sleep(MIN_REFRESH_INTERVAL).await;
        if lock(&current.asked).is_none() {
            // A trigger during the refresh left a permit: this wait then ends at once.
            let _ = tokio::time::timeout(BACKGROUND_REFRESH, current.wake.notified()).await;
        }
    }
}

/// Locks a mutex only held for short updates; poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
