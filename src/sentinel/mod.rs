//! A primary (and its replicas) watched by Redis Sentinel, presented to clients as one Redis
//! (TOPOLOGY.md section 4).
//!
//! A [`Watch`] keeps track of which server is the primary of the configured master name (and
//! which replicas serve it), as the sentinels say and the servers confirm (`ROLE`). What it found
//! is published on a `tokio::sync::watch` channel ([`Watch::changes`]); when it changes, the pools
//! are replaced as a reload replaces them (`Pools::replace_upstream`): sessions move to the new
//! primary at their next idle point, the old pools drain, leases move at release.
//!
//! Discovery follows the client spec (redis-doc `sentinel-clients.md`): ask the sentinels in
//! turn with a short timeout (`SENTINEL get-master-addr-by-name`), connect to the address named
//! and check `ROLE` says `master`; replicas come from `SENTINEL replicas` and must say `slave`.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::config::{Endpoint, Upstream};
use crate::resp;
use crate::upstream::{self, UpstreamSettings};
use crate::value::{self, Value};

/// The sentinels are asked again this often even when nothing triggers it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The `[upstream] kind = "sentinel"` configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The sentinels, in the order to ask them, each with the sentinels' credentials and TLS
    /// (`sentinel_user`, `sentinel_password`): not the data nodes'. db is always 0.
    pub sentinels: Vec<Upstream>,
    /// The master name the sentinels monitor (`sentinel monitor <name> ...`).
    pub master: String,
}

/// The role a connection's server must have (`ROLE`), checked after connecting: a server that
/// says otherwise is not connected to (its connection fails, and the sentinels are asked again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `master`: the primary the sentinels named.
    Primary,
    /// `slave`: a replica serving reads.
    Replica,
    /// No primary is known yet for `master` (no sentinel has named one): the connection fails
    /// at once, without connecting anywhere.
    NotFound {
        /// The master name.
        master: String,
    },
}

/// What the sentinels said and the servers confirmed: the primary, and the replicas serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The primary's address.
    pub primary: Endpoint,
    /// The replicas that are up and replicating from it, ordered by address.
    pub replicas: Vec<Endpoint>,
}

/// Why the sentinels are asked again (the `source` label of `respipe_sentinel_discoveries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// respipe started (or the sentinel configuration was reloaded).
    Start,
    /// A sentinel published an event about the master (`+switch-master`...).
    Event,
    /// The periodic check.
    Poll,
    /// Connections to the primary failed.
    ConnectFailure,
    /// The primary answered `-READONLY`: it was demoted.
    Readonly,
}

impl Trigger {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Event => "event",
            Trigger::Poll => "poll",
            Trigger::ConnectFailure => "connect_failure",
            Trigger::Readonly => "readonly",
        }
    }
}

/// Keeps track of the primary of one master name. Its task ends when the watch is dropped.
#[derive(Debug)]
pub struct Watch {
    spec: Spec,
    /// The data nodes' settings (credentials, TLS, timeouts) for the `ROLE` checks.
    data: UpstreamSettings,
    found: watch::Sender<Option<Found>>,
    /// Notified by [`Watch::rediscover`]; the task holds the other clone.
    wake: Arc<Notify>,
    /// Why the next discovery runs (the first trigger since the last one).
    trigger: Mutex<Option<Trigger>>,
}

impl Watch {
    /// Starts watching `spec`'s master; `data` are the settings of connections to the data nodes
    /// (their endpoint aside). `known`: what an earlier watch of the same sentinels found (a
    /// reload), kept until the sentinels say otherwise.
    pub fn start(spec: &Spec, data: &UpstreamSettings, known: Option<Found>) -> Arc<Watch> {
        let wake = Arc::new(Notify::new());
        let watch = Arc::new(Watch {
            spec: spec.clone(),
            data: UpstreamSettings {
                health: None,
                user: None,
                user_events: None,
                role: None,
                ..data.clone()
            },
            found: watch::Sender::new(known),
            wake: wake.clone(),
            trigger: Mutex::new(Some(Trigger::Start)),
        });
        tokio::spawn(keep_primary(Arc::downgrade(&watch), wake));
        watch
    }

    /// The configuration being watched.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// What is known now; `None` until a sentinel names a primary that says it is one.
    pub fn found(&self) -> Option<Found> {
        self.found.borrow().clone()
    }

    /// Sees every change of [`Watch::found`].
    pub fn changes(&self) -> watch::Receiver<Option<Found>> {
        self.found.subscribe()
    }

    /// Asks the sentinels again soon.
    pub fn rediscover(&self, trigger: Trigger) {
        self.trigger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(trigger);
        self.wake.notify_one();
    }

    /// One discovery: the first sentinel that names a primary which says it is one.
    async fn discover(&self) -> Result<Found, String> {
        let mut why = Vec::new();
        for sentinel in &self.spec.sentinels {
            match self.ask(sentinel).await {
                Ok(found) => return Ok(found),
                Err(e) => why.push(format!("{}: {e}", sentinel.endpoint)),
            }
        }
        Err(why.join("; "))
    }

    /// Asks one sentinel for the primary and its replicas, and checks their roles.
    async fn ask(&self, sentinel: &Upstream) -> Result<Found, String> {
        let settings = UpstreamSettings {
            upstream: sentinel.clone(),
            ..self.data.clone()
        };
        let master = self.spec.master.as_bytes();
        let commands = [
            resp::encode_request(&[&b"SENTINEL"[..], b"GET-MASTER-ADDR-BY-NAME", master]),
            resp::encode_request(&[&b"SENTINEL"[..], b"REPLICAS", master]),
        ];
        let replies = upstream::probe(&settings, &commands)
            .await
            .map_err(|e| e.to_string())?;
        let addr = value::parse(&replies[0], 1).ok_or("unreadable reply")?;
        let primary = match addr.items() {
            Some([host, port]) => endpoint(host, port).ok_or("unreadable address")?,
            _ => return Err(format!("does not know master {:?}", self.spec.master)),
        };
        if self.role(&primary).await? != "master" {
            return Err(format!("{primary} does not say ROLE master"));
        }
        let mut replicas = Vec::new();
        for entry in value::parse(&replies[1], 2)
            .as_ref()
            .and_then(Value::items)
            .unwrap_or_default()
        {
            let flags = entry.field(b"flags").and_then(Value::string);
            let up = flags.is_some_and(|f| {
                !f.split(',')
                    .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
            });
            let linked = entry.field(b"master-link-status").and_then(Value::text) == Some(b"ok");
            let (Some(host), Some(port)) = (entry.field(b"ip"), entry.field(b"port")) else {
                continue;
            };
            if let Some(replica) = endpoint(host, port).filter(|_| up && linked) {
                if self.role(&replica).await.is_ok_and(|r| r == "slave") {
                    replicas.push(replica);
                }
            }
        }
        replicas.sort_by_key(|r| r.to_string());
        Ok(Found { primary, replicas })
    }

    /// The first element of `ROLE` from the data node at `at`.
    async fn role(&self, at: &Endpoint) -> Result<String, String> {
        let settings = UpstreamSettings {
            upstream: Upstream {
                endpoint: at.clone(),
                ..self.data.upstream.clone()
            },
            ..self.data.clone()
        };
        let replies = upstream::probe(&settings, &[resp::encode_request(&[b"ROLE"])])
            .await
            .map_err(|e| e.to_string())?;
        // A primary's reply lists its replicas, each an array: three levels.
        value::parse(&replies[0], 3)
            .as_ref()
            .and_then(Value::items)
            .and_then(|items| items.first())
            .and_then(Value::string)
            .ok_or_else(|| format!("{at}: unreadable ROLE reply"))
    }
}

/// The address in a sentinel's `host`, `port` pair.
fn endpoint(host: &Value, port: &Value) -> Option<Endpoint> {
    let port = resp::parse_int(port.text()?)?;
    Some(Endpoint::Tcp {
        host: host.string()?,
        port: u16::try_from(port).ok()?,
    })
}

/// Discovers the primary at start and again whenever asked or [`POLL_INTERVAL`] passes, and
/// publishes what changed. Ends when the watch is dropped.
async fn keep_primary(watch: Weak<Watch>, wake: Arc<Notify>) {
    loop {
        let Some(current) = watch.upgrade() else {
            return;
        };
        current
            .trigger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match current.discover().await {
            Ok(found) => {
                current.found.send_if_modified(|known| {
                    if known.as_ref() == Some(&found) {
                        return false;
                    }
                    info!(master = %current.spec.master, primary = %found.primary,
                        replicas = found.replicas.len(), "sentinel: primary found");
                    *known = Some(found);
                    true
                });
            }
            Err(why) => {
                warn!(master = %current.spec.master, %why, "sentinel: no primary found; keeping the last known one")
            }
        }
        drop(current);
        let _ = tokio::time::timeout(POLL_INTERVAL, wake.notified()).await;
    }
}
