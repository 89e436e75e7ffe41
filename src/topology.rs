//! The upstream's layout as routing sees it: the servers, and for a sharded upstream which server
//! each key belongs to right now — which changes when a failing server is ejected and when it comes
//! back (`auto_eject_hosts`).
//!
//! A [`Layout`] is made per configuration (a reload that changes the servers makes a new one). With
//! ejection on, every server has a [`Health`] its connections report to; a task owned by the layout
//! rebuilds the placement when a server reaches its failure limit, and again when its retry timeout
//! has passed, as twemproxy does. A cluster's lanes have a [`Health`] too: a primary whose
//! connections keep failing refreshes the slot map instead. So does the primary lane of an
//! upstream watched by Sentinel: a failed connection (or one that found another role), or a
//! `-READONLY` from it, asks the sentinels again.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::cluster::{self, Cluster, SlotMap};
use crate::config::{Endpoint, Reads, Topology, Upstream};
use crate::replicas::Replicated;
use crate::reply::Lane;
use crate::sentinel::{Found, Role, Trigger, Watch};
use crate::shard::{Eject, Placement, Spec};
use crate::upstream::UpstreamSettings;

/// The servers of the upstream and the placement of keys on them.
#[derive(Debug)]
pub struct Layout {
    /// Every server, in configuration order; a lane is an index into it. One for a single server;
    /// for a cluster, the seeds (the lanes are the cluster's node addresses, see [`Cluster`]).
    pub servers: Vec<Upstream>,
    sharding: Option<Sharding>,
    cluster: Option<Arc<Cluster>>,
    sentinel: Option<Watched>,
    /// The read policy, when reads may go to replicas (lanes 1..; see [`crate::replicas`]).
    replicas: Option<Replicated>,
}

/// A primary watched by Sentinel, as the layout was made for: lane 0 is the primary, the other
/// lanes its replicas.
#[derive(Debug)]
struct Watched {
    watch: Arc<Watch>,
    /// What the watch had found when the layout was made; `None`: no primary known yet.
    found: Option<Found>,
    /// The primary lane's, when a primary is known.
    health: Option<Arc<Health>>,
    /// Cancelled when the sentinels name another primary than this layout's: the leases on its
    /// primary end ([`crate::upstream::UpstreamSettings::superseded`]).
    superseded: tokio_util::sync::CancellationToken,
}

/// How keys are placed on the servers of a sharded upstream.
#[derive(Debug)]
struct Sharding {
    spec: Spec,
    /// Rebuilt when the set of live servers changes.
    placement: ArcSwap<Placement>,
    /// Per server, when ejection is on; empty otherwise. Each notifies the layout's task when
    /// its server reaches the failure limit.
    health: Vec<Arc<Health>>,
}

/// The placement of keys at one moment (see [`Layout::placer`]).
pub enum Placer {
    /// One server takes every key.
    Single,
    /// Shards placed as twemproxy places them.
    Shards(arc_swap::Guard<Arc<Placement>>),
    /// A cluster's slot map.
    Cluster(arc_swap::Guard<Arc<SlotMap>>),
}

impl Placer {
    /// The server `key` belongs to; `None` when every server is ejected, or no cluster node
    /// serves its slot. A single server takes every key.
    pub fn lane(&self, key: &[u8]) -> Option<Lane> {
        self.locate(key).map(|(lane, _)| lane)
    }

    /// The server `key` belongs to, and the group of keys that may go together in one command:
    /// the server for shards, the hash slot for a cluster (Redis refuses a command whose keys
    /// are in several slots, even on one node).
    pub fn locate(&self, key: &[u8]) -> Option<(Lane, u16)> {
        match self {
            Placer::Single => Some((0, 0)),
            Placer::Shards(placement) => placement.server_for(key).map(|i| (i as Lane, i as u16)),
            Placer::Cluster(map) => {
                let slot = cluster::key_slot(key);
                map.owner(slot).map(|lane| (lane, slot))
            }
        }
    }
}

/// A server's run of failures, reported by its connections.
#[derive(Debug)]
pub struct Health {
    failures: AtomicU32,
    limit: u32,
    ejected: AtomicBool,
    /// An ejected server's return is scheduled (one timer per ejection).
    returning: AtomicBool,
    /// Who hears of the failure limit being reached.
    tell: Tell,
}

/// Who a [`Health`] tells when its server reaches the failure limit.
#[derive(Debug)]
enum Tell {
    /// The layout's task, which ejects the server (once per ejection).
    Layout(Arc<Notify>),
    /// The cluster, at every failure from the limit on: it refreshes its slot map when the lane is
    /// a primary (its refreshes are coalesced and rate limited).
    Cluster(Weak<Cluster>, Lane),
    /// The Sentinel watch, at every failure: it asks the sentinels again (coalesced and rate
    /// limited) while the primary it knows is still this lane's address; an old layout's lane
    /// (the primary has changed since) tells nothing.
    Sentinel(Weak<Watch>, Endpoint),
}

impl Health {
    /// A connection to the server failed (a connect attempt, or an established connection lost).
    pub fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < self.limit {
            return;
        }
        match &self.tell {
            Tell::Layout(changed) => {
                if !self.ejected.swap(true, Ordering::AcqRel) {
                    changed.notify_one();
                }
            }
            Tell::Cluster(cluster, lane) => {
                if let Some(cluster) = cluster.upgrade() {
                    cluster.node_failing(*lane);
                }
            }
            Tell::Sentinel(..) => self.tell_sentinel(Trigger::ConnectFailure),
        }
    }

    /// The server answered `-READONLY` on a connection that needs a primary: for the primary
    /// lane of an upstream watched by Sentinel, the sentinels are asked again at once (it was
    /// demoted). Nothing for other lanes.
    pub fn readonly(&self) {
        self.tell_sentinel(Trigger::Readonly);
    }

    /// For the primary lane of an upstream watched by Sentinel: the primary the watch knows
    /// now, when it is no longer this lane's address (a failover since the layout was made).
    /// Its connections must not be made again: the old primary may be back, still saying it
    /// is one until the sentinels reconfigure it.
    pub fn superseded(&self) -> Option<Endpoint> {
        let Tell::Sentinel(watch, at) = &self.tell else {
            return None;
        };
        let primary = watch.upgrade()?.found()?.primary;
        (primary != *at).then_some(primary)
    }

    /// For the primary's lane of an upstream watched by Sentinel: sees every change of what the
    /// watch found (a driver holding commands through an outage wakes when a new primary is
    /// named).
    pub fn sentinel_changes(&self) -> Option<tokio::sync::watch::Receiver<Option<Found>>> {
        let Tell::Sentinel(watch, _) = &self.tell else {
            return None;
        };
        Some(watch.upgrade()?.changes())
    }

    /// Tells the Sentinel watch, if this is the health of its current primary's lane.
    fn tell_sentinel(&self, trigger: Trigger) {
        if let Tell::Sentinel(watch, at) = &self.tell {
            if let Some(watch) = watch.upgrade() {
                if watch.found().is_some_and(|f| f.primary == *at) {
                    watch.rediscover(trigger);
                }
            }
        }
    }

    /// A connection to the server was established.
    pub fn connected(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// The health of a cluster lane: `limit` failures in a row tell `cluster` (see [`Tell`]).
    pub(crate) fn for_cluster_lane(cluster: Weak<Cluster>, lane: Lane, limit: u32) -> Health {
        Health::new(limit, Tell::Cluster(cluster, lane))
    }

    /// The health of the primary lane of a layout watched by Sentinel, made for the primary at
    /// `primary`: every failure tells `watch` (see [`Tell::Sentinel`]).
    fn for_sentinel_primary(watch: Weak<Watch>, primary: Endpoint) -> Health {
        Health::new(1, Tell::Sentinel(watch, primary))
    }

    /// A server without failures yet: `limit` in a row tell `tell`.
    fn new(limit: u32, tell: Tell) -> Health {
        Health {
            failures: AtomicU32::new(0),
            limit: limit.max(1),
            ejected: AtomicBool::new(false),
            returning: AtomicBool::new(false),
            tell,
        }
    }

    fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }
}

impl Layout {
    /// The layout for a configuration: `upstream` alone (with the static replicas of `reads`), or
    /// the shards of `topology`. With ejection on, starts the task that keeps the placement
    /// current (it ends with the layout). A cluster's map is kept by the cluster's own task
    /// (`probe`: the settings its slot map queries connect with).
    pub fn new(
        upstream: &Upstream,
        topology: &Topology,
        reads: &Reads,
        probe: &UpstreamSettings,
    ) -> Arc<Layout> {
        let spec = match topology {
            Topology::Shards(spec) => spec,
            Topology::Single => return Layout::primary(upstream, reads),
            Topology::Cluster(spec) => {
                return Arc::new(Layout {
                    servers: spec.seeds.clone(),
                    sharding: None,
                    cluster: Some(Cluster::new(spec, probe)),
                    sentinel: None,
                    replicas: None,
                })
            }
            Topology::Sentinel(spec) => {
                return Layout::sentinel(upstream, Watch::start(spec, probe, None), reads);
            }
        };
        let servers: Vec<Upstream> = spec
            .servers
            .iter()
            .map(|server| Upstream {
                endpoint: server.upstream.endpoint.clone(),
                ..upstream.clone()
            })
            .collect();
        let changed = Arc::new(Notify::new());
        let health = match spec.eject {
            Some(Eject { failure_limit, .. }) => (0..servers.len())
                .map(|_| Arc::new(Health::new(failure_limit, Tell::Layout(changed.clone()))))
                .collect(),
            None => Vec::new(),
        };
        let live = vec![true; servers.len()];
        let layout = Arc::new(Layout {
            servers,
            sharding: Some(Sharding {
                placement: ArcSwap::from_pointee(Placement::new(spec, &live)),
                spec: spec.clone(),
                health,
            }),
            cluster: None,
            sentinel: None,
            replicas: None,
        });
        if let Some(eject) = spec.eject {
            tokio::spawn(keep_placement(Arc::downgrade(&layout), changed, eject));
        }
        layout
    }

    /// One server, `upstream`, on lane 0, and the static replicas of `reads` on the lanes after it
    /// (with `upstream`'s db, credentials and TLS), where reads may go as `reads` says.
    pub fn primary(upstream: &Upstream, reads: &Reads) -> Arc<Layout> {
        let servers: Vec<Upstream> = std::iter::once(upstream.clone())
            .chain(reads.replicas.iter().map(|endpoint| Upstream {
                endpoint: endpoint.clone(),
                ..upstream.clone()
            }))
            .collect();
        Arc::new(Layout {
            replicas: replicated(&servers, reads),
            servers,
            sharding: None,
            cluster: None,
            sentinel: None,
        })
    }

    /// The layout of a primary watched by `watch`, as it knows it now: lane 0 is the primary
    /// (`upstream`'s db, credentials and TLS at the address found), the other lanes the replicas,
    /// where reads may go as `reads` says.
    /// While no primary is known, lane 0's connections fail at once ([`Role::NotFound`]).
    /// Lane 0 has a [`Health`] that tells the watch of its failures.
    pub fn sentinel(upstream: &Upstream, watch: Arc<Watch>, reads: &Reads) -> Arc<Layout> {
        let found = watch.found();
        let health = found.as_ref().map(|found| {
            let health =
                Health::for_sentinel_primary(Arc::downgrade(&watch), found.primary.clone());
            Arc::new(health)
        });
        let at = |endpoint: &crate::config::Endpoint| Upstream {
            endpoint: endpoint.clone(),
            ..upstream.clone()
        };
        let servers = match &found {
            Some(found) => std::iter::once(&found.primary)
                .chain(&found.replicas)
                .map(at)
                .collect(),
            None => vec![upstream.clone()],
        };
        Arc::new(Layout {
            replicas: replicated(&servers, reads),
            servers,
            sharding: None,
            cluster: None,
            sentinel: Some(Watched {
                watch,
                found,
                health,
                superseded: Default::default(),
            }),
        })
    }

    /// The read policy, when reads may go to the replicas on lanes 1...
    pub fn replicas(&self) -> Option<&Replicated> {
        self.replicas.as_ref()
    }

    /// How many lanes a pool starts with: every server, but a primary's replicas only when reads
    /// go to them (a cluster's lanes start when first routed to).
    pub fn lanes_started(&self) -> usize {
        match (&self.cluster, &self.sharding, &self.replicas) {
            (Some(_), ..) => 0,
            (None, None, None) => 1,
            _ => self.servers.len(),
        }
    }

    /// The Sentinel watch, for an upstream watched by Sentinel.
    pub fn sentinel_watch(&self) -> Option<&Arc<Watch>> {
        self.sentinel.as_ref().map(|s| &s.watch)
    }

    /// For an upstream watched by Sentinel: what a lease on this layout's primary is given, to end
    /// when the sentinels name another primary ([`Layout::supersede_primary`]).
    pub fn primary_superseded(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.sentinel.as_ref().map(|s| s.superseded.clone())
    }

    /// The sentinels name another primary than this layout's: its leases there end.
    pub fn supersede_primary(&self) {
        if let Some(sentinel) = &self.sentinel {
            sentinel.superseded.cancel();
        }
    }

    /// True when the watch has found something else than this layout was made with (the pools
    /// must be replaced).
    pub fn sentinel_outdated(&self) -> bool {
        self.sentinel
            .as_ref()
            .is_some_and(|s| s.watch.found() != s.found)
    }

    /// The role lane `lane`'s server must say it has, for an upstream watched by Sentinel.
    pub fn role(&self, lane: Lane) -> Option<Role> {
        let watched = self.sentinel.as_ref()?;
        Some(match (&watched.found, lane) {
            (None, _) => Role::NotFound {
                master: watched.watch.spec().master.clone(),
            },
            (Some(_), 0) => Role::Primary,
            (Some(_), _) => Role::Replica,
        })
    }

    /// How many servers (lanes) there are; for a cluster, the node addresses seen so far.
    pub fn servers(&self) -> usize {
        match &self.cluster {
            Some(cluster) => cluster.lanes(),
            None => self.servers.len(),
        }
    }

    /// The most lanes this layout can have (a pool's room for connections).
    pub fn capacity(&self) -> usize {
        match &self.cluster {
            Some(_) => cluster::MAX_NODES,
            None => self.servers.len(),
        }
    }

    /// The servers a command for every server goes to (`DBSIZE`, `KEYS`, `SCAN`...): every shard;
    /// for a cluster, every primary owning slots, ordered by the lowest slot it owns.
    pub fn primaries(&self) -> Vec<Lane> {
        match &self.cluster {
            Some(cluster) => cluster.map().primaries(),
            None => (0..self.servers.len() as Lane).collect(),
        }
    }

    /// True for a sharded upstream (even of one server) or a cluster: commands are placed by key.
    pub fn is_sharded(&self) -> bool {
        self.sharding.is_some() || self.cluster.is_some()
    }

    /// The cluster, for a cluster upstream.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Where lane `lane`'s connections go (the pool's db, credentials and TLS); `None` for a
    /// lane a cluster has not handed out.
    pub fn endpoint(&self, lane: Lane) -> Option<Upstream> {
        match &self.cluster {
            Some(cluster) => cluster.endpoint(lane),
            None => self.servers.get(usize::from(lane)).cloned(),
        }
    }

    /// The placement of keys as it is now, loaded once for the keys of one command.
    pub fn placer(&self) -> Placer {
        match (&self.sharding, &self.cluster) {
            (Some(sharding), _) => Placer::Shards(sharding.placement.load()),
            (None, Some(cluster)) => Placer::Cluster(cluster.map()),
            (None, None) => Placer::Single,
        }
    }

    /// The health a server's connections report to, when ejection is on; for a cluster, every
    /// lane's (see [`Cluster::health`]); for an upstream watched by Sentinel, the primary's.
    pub fn health(&self, lane: Lane) -> Option<Arc<Health>> {
        if let Some(cluster) = &self.cluster {
            return cluster.health(lane);
        }
        if let Some(watched) = &self.sentinel {
            return watched.health.clone().filter(|_| lane == 0);
        }
        self.sharding
            .as_ref()
            .and_then(|s| s.health.get(usize::from(lane)).cloned())
    }

    /// The name of a server in logs and metrics: its configured name, else its address.
    pub fn server_name(&self, lane: Lane) -> String {
        let i = usize::from(lane);
        self.sharding
            .as_ref()
            .and_then(|s| s.spec.servers[i].name.clone())
            .or_else(|| self.endpoint(lane).map(|u| u.endpoint.to_string()))
            .unwrap_or_default()
    }

    /// Rebuilds the placement from the servers not ejected now.
    fn replace(&self) {
        let Some(sharding) = &self.sharding else {
            return;
        };
        let live: Vec<bool> = sharding.health.iter().map(|h| !h.is_ejected()).collect();
        crate::metrics::ejected(live.iter().filter(|live| !**live).count());
        sharding
            .placement
            .store(Arc::new(Placement::new(&sharding.spec, &live)));
    }
}

/// The read policy of a primary and its replicas (`servers`, the primary first).
fn replicated(servers: &[Upstream], reads: &Reads) -> Option<Replicated> {
    let names: Vec<String> = servers[1..]
        .iter()
        .map(|u| u.endpoint.to_string())
        .collect();
    Replicated::new(reads, &names)
}

/// Ejects servers that reached their failure limit and brings each back after the retry timeout
/// (its failures forgotten: it must fail `failure_limit` times again to go out again). Ends when
/// the layout is dropped.
async fn keep_placement(layout: Weak<Layout>, changed: Arc<Notify>, eject: Eject) {
    loop {
        changed.notified().await;
        let Some(current) = layout.upgrade() else {
            return;
        };
        let Some(sharding) = &current.sharding else {
            return;
        };
        for (lane, health) in sharding.health.iter().enumerate() {
            // Each notification may be another server's: a server already on its way back keeps
            // the timer it has.
            if health.is_ejected() && !health.returning.swap(true, Ordering::AcqRel) {
                warn!(server = %current.server_name(lane as Lane), retry_in = ?eject.retry_timeout,
                    "shard ejected after {} failures: its keys go to the other servers", health.limit);
                let (layout, health) = (layout.clone(), health.clone());
                let name = current.server_name(lane as Lane);
                tokio::spawn(async move {
                    tokio::time::sleep(eject.retry_timeout).await;
                    health.failures.store(0, Ordering::Relaxed);
                    health.ejected.store(false, Ordering::Release);
                    health.returning.store(false, Ordering::Release);
                    if let Some(layout) = layout.upgrade() {
                        info!(server = %name, "ejected shard back in the placement");
                        layout.replace();
                    }
                });
            }
        }
        current.replace();
    }
}
