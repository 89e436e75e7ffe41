//! Upstream pools and the routing step: which upstream connection gets a session's commands.
//!
//! Today there is one pool of `pool_size` shared connections to one Redis, in the database and as
//! the user the upstream address names. Pools keyed by other shareable state (db, protocol, user),
//! leased connections and cluster slot routing all plug in at `Pools::route`.

use std::sync::Arc;

use crate::config::Config;
use crate::upstream::{UpstreamHandle, UpstreamSettings};

/// Queue capacity (requests) of each upstream connection's handle; past it senders wait. Each
/// request may carry many commands, so this is not a command limit (that is
/// `max_upstream_inflight`).
const QUEUE_CAPACITY: usize = 1024;

/// The upstream connections of the proxy.
#[derive(Debug)]
pub struct Pools {
    shared: Vec<UpstreamHandle>,
    db: u32,
}

/// What routing looks at: for now, who is asking (sessions are spread over the shared connections by
/// id). Cluster routing will add the command's key here.
#[derive(Debug, Clone, Copy)]
pub struct RouteKey {
    /// The session's id.
    pub session: u64,
}

impl Pools {
    /// Starts the driver of every shared connection (they connect in the background).
    pub fn start(config: &Config) -> Self {
        let settings = Arc::new(UpstreamSettings {
            upstream: config.upstream.clone(),
            policy: crate::batch::BatchPolicy {
                max_commands: config.max_batch_commands.get(),
                max_bytes: config.max_batch_bytes.get(),
                window: config.batch_window,
            },
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            backoff_max: config.reconnect_backoff_max,
            max_inflight: config.max_upstream_inflight.get(),
            queue_capacity: QUEUE_CAPACITY,
        });
        let shared = (0..config.pool_size.get())
            .map(|i| UpstreamHandle::spawn(i, settings.clone()))
            .collect();
        Pools {
            shared,
            db: config.upstream.db,
        }
    }

    /// The routing step. Called only when the session has nothing in flight (so moving it cannot
    /// reorder its replies): its own connection (`session % pool_size`) if that one is up, else the
    /// next one that is, else its own (which answers fast with an "unavailable" error).
    pub fn route(&self, key: RouteKey) -> &UpstreamHandle {
        let n = self.shared.len();
        let home = (key.session % n as u64) as usize;
        (0..n)
            .map(|i| &self.shared[(home + i) % n])
            .find(|h| h.is_up())
            .unwrap_or(&self.shared[home])
    }

    /// The database every shared connection is in.
    pub fn db(&self) -> u32 {
        self.db
    }

    /// True while at least one upstream connection is established.
    pub fn any_up(&self) -> bool {
        self.shared.iter().any(UpstreamHandle::is_up)
    }
}
