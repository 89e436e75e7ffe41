//! The upstream's layout as routing sees it: the servers, and for a sharded upstream which server
//! each key belongs to right now — which changes when a failing server is ejected and when it comes
//! back (`auto_eject_hosts`).
//!
//! A [`Layout`] is made per configuration (a reload that changes the servers makes a new one). With
//! ejection on, every server has a [`Health`] its connections report to; a task owned by the layout
//! rebuilds the placement when a server reaches its failure limit, and again when its retry timeout
//! has passed, as twemproxy does.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{Topology, Upstream};
use crate::reply::Lane;
use crate::shard::{Eject, Placement, Spec};

/// The servers of the upstream and the placement of keys on them.
#[derive(Debug)]
pub struct Layout {
    /// Every server, in configuration order; a lane is an index into it. One for a single server.
    pub servers: Vec<Upstream>,
    sharding: Option<Sharding>,
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
pub struct Placer(Option<arc_swap::Guard<Arc<Placement>>>);

impl Placer {
    /// The server `key` belongs to; `None` when every server is ejected. A single server takes
    /// every key.
    pub fn lane(&self, key: &[u8]) -> Option<Lane> {
        match &self.0 {
            None => Some(0),
            Some(placement) => placement.server_for(key).map(|i| i as Lane),
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
    changed: Arc<Notify>,
}

impl Health {
    /// A connection to the server failed (a connect attempt, or an established connection lost).
    pub fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.limit && !self.ejected.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }

    /// A connection to the server was established.
    pub fn connected(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }
}

impl Layout {
    /// The layout for a configuration: `upstream` alone, or the shards of `topology`. With ejection
    /// on, starts the task that keeps the placement current (it ends with the layout).
    pub fn new(upstream: &Upstream, topology: &Topology) -> Arc<Layout> {
        let Topology::Shards(spec) = topology else {
            return Arc::new(Layout {
                servers: vec![upstream.clone()],
                sharding: None,
            });
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
                .map(|_| {
                    Arc::new(Health {
                        failures: AtomicU32::new(0),
                        limit: failure_limit.max(1),
                        ejected: AtomicBool::new(false),
                        returning: AtomicBool::new(false),
                        changed: changed.clone(),
                    })
                })
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
        });
        if let Some(eject) = spec.eject {
            tokio::spawn(keep_placement(Arc::downgrade(&layout), changed, eject));
        }
        layout
    }

    /// How many servers (lanes) there are.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// True for a sharded upstream (even of one server): commands are placed by key.
    pub fn is_sharded(&self) -> bool {
        self.sharding.is_some()
    }

    /// The placement of keys as it is now, loaded once for the keys of one command.
    pub fn placer(&self) -> Placer {
        Placer(self.sharding.as_ref().map(|s| s.placement.load()))
    }

    /// The health a server's connections report to, when ejection is on.
    pub fn health(&self, lane: Lane) -> Option<Arc<Health>> {
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
            .unwrap_or_else(|| self.servers[i].endpoint.to_string())
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
