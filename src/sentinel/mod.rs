//! A primary (and its replicas) watched by Redis Sentinel, presented to clients as one Redis
//! (TOPOLOGY.md section 4).
//!
//! A [`Watch`] keeps track of which server is the primary of the configured master name (and
//! which replicas serve it), as the sentinels say and the servers confirm (`ROLE`). What it found
//! is published on a `tokio::sync::watch` channel ([`Watch::changes`]); when it changes, the pools
//! are replaced as a reload replaces them (`Pools::follow_sentinel`): sessions move to the new
//! primary at their next idle point, the old pools drain, and leases on the old primary end
//! (`Layout::supersede_primary`). While the primary is unreachable, its shared connections hold
//! new commands for up to the command timeout and reconnect to the primary named now
//! (`upstream`).
//!
//! Discovery follows the client spec (redis-doc `sentinel-clients.md`), asking every known
//! sentinel at once, each within the connect timeout (`ask`): the one believed moves to the
//! front of the order, and the sentinels they know are asked too from then on. When they
//! disagree, the highest configuration epoch wins (a sentinel that has not heard of the last
//! failover yet names the old primary). The primary named must say `ROLE master` (else the
//! sentinels are asked again a few hundred milliseconds later); replicas come from `SENTINEL
//! REPLICAS` and must say `slave`. When no sentinel answers, the last known primary stays.
//!
//! Discoveries run at start, when triggered, and every [`POLL_INTERVAL`] as a backstop (`pace`).
//! Triggers: the sentinels' events (`events`: subscriptions on several sentinels), a connection
//! to the primary that fails or finds another role, and a `-READONLY` from it (see
//! `topology::Health`). Events are only triggers: what they say is never believed by itself.
//!
//! Sentinel TLS: a sentinel is asked over TLS when its address says so (`rediss://`), else in
//! plaintext, whatever the data nodes use; both use the one upstream TLS configuration (CA,
//! client certificate, server name).

mod ask;
mod events;
mod pace;

use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::config::{Endpoint, Upstream};
use crate::upstream::{self, UpstreamSettings};
use crate::value::{self, Value};
use ask::{Answer, Sentinels};
use pace::Pace;
pub use pace::POLL_INTERVAL;

/// Once one sentinel has answered, the others get this much longer to answer before the
/// discovery goes on with the answers it has (a sentinel that does not answer at all would
/// otherwise hold every discovery for the connect timeout).
const ANSWER_GRACE: Duration = Duration::from_millis(100);

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

impl Role {
    /// What `ROLE` says on a server in this role: `master`, `slave`; `None` for
    /// [`Role::NotFound`] (nothing is connected to).
    pub fn reported(&self) -> Option<&'static str> {
        match self {
            Role::Primary => Some("master"),
            Role::Replica => Some("slave"),
            Role::NotFound { .. } => None,
        }
    }
}

/// What the sentinels said and the servers confirmed: the primary, and the replicas serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The primary's address.
    pub primary: Endpoint,
    /// The replicas that are up and replicating from it, ordered by address.
    pub replicas: Vec<Endpoint>,
}

/// Why the sentinels are asked again (the `trigger` label of `respipe_sentinel_discoveries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// respipe started (or the sentinel configuration was reloaded).
    Start,
    /// A sentinel published an event about the master (`+switch-master`...), or an event
    /// subscription was made again after a failure (events may have been missed).
    Event,
    /// The periodic check.
    Poll,
    /// A connection to the primary failed, or found it has another role.
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

/// Keeps track of the primary of one master name. Its tasks end when the watch is dropped.
#[derive(Debug)]
pub struct Watch {
    spec: Spec,
    /// The data nodes' settings (credentials, TLS, timeouts) for the `ROLE` checks; with a
    /// sentinel's address, credentials and TLS, for asking it.
    data: UpstreamSettings,
    found: watch::Sender<Option<Found>>,
    /// Notified by [`Watch::rediscover`]; the discovery task holds the other clone.
    wake: Arc<Notify>,
    /// Why the next discovery runs: the first trigger since the last one started, or a later
    /// one that replaced a failed connection's (see [`Watch::rediscover`]).
    trigger: Mutex<Option<Trigger>>,
    /// Whom to ask, in order: the configured sentinels and those learned from them.
    sentinels: Mutex<Sentinels>,
    /// Per event subscription, the sentinel it holds (see `events::subscribe`).
    subscribed: Mutex<[Option<Endpoint>; events::SUBSCRIPTIONS]>,
    /// Events heard lately, so the same one from several sentinels triggers once.
    recent: Mutex<events::Recent>,
    /// Cancels the event subscriptions when the watch is dropped (they hold it only weakly,
    /// but wait on their connections for long).
    _stop: DropGuard,
}

/// One discovery: how many sentinels answered, and what was found.
#[derive(Debug)]
struct Discovery {
    reachable: usize,
    outcome: Result<Found, Miss>,
}

/// Why a discovery found no primary (the last known one stays).
#[derive(Debug)]
enum Miss {
    /// No sentinel answered, or none knows the master.
    Sentinels(String),
    /// The primary named does not say `ROLE master` (yet).
    Role(String),
    /// The primary named could not be asked its role.
    Unreachable(String),
}

impl Watch {
    /// Starts watching `spec`'s master; `data` are the settings of connections to the data nodes
    /// (their endpoint aside). `known`: what an earlier watch of the same sentinels found (a
    /// reload), kept until the sentinels say otherwise.
    pub fn start(spec: &Spec, data: &UpstreamSettings, known: Option<Found>) -> Arc<Watch> {
        let wake = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        let configured = spec.sentinels.iter().map(|s| s.endpoint.clone()).collect();
        let watch = Arc::new(Watch {
            spec: spec.clone(),
            data: UpstreamSettings {
                health: None,
                user: None,
                user_events: None,
                role: None,
                dedicated: false,
                ..data.clone()
            },
            found: watch::Sender::new(known),
            wake: wake.clone(),
            trigger: Mutex::new(Some(Trigger::Start)),
            sentinels: Mutex::new(Sentinels::new(configured)),
            subscribed: Mutex::default(),
            recent: Mutex::default(),
            _stop: stop.clone().drop_guard(),
        });
        crate::metrics::sentinel_watched();
        tokio::spawn(keep_primary(Arc::downgrade(&watch), wake));
        for slot in 0..events::SUBSCRIPTIONS {
            tokio::spawn(events::subscribe(
                Arc::downgrade(&watch),
                slot,
                stop.clone(),
            ));
        }
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

    /// Asks the sentinels again soon: coalesced with other triggers, and rate limited (see
    /// `pace`; a failed connection waits longer, so any other trigger takes its place). Cheap:
    /// a short lock and a wake-up.
    pub fn rediscover(&self, trigger: Trigger) {
        {
            let mut pending = lock(&self.trigger);
            *pending = Some(pace::coalesce(*pending, trigger));
        }
        self.wake.notify_one();
    }

    /// A sentinel published `text` on `channel`: if it is about our master and not heard
    /// lately, the sentinels are asked again.
    fn heard(&self, channel: &str, text: &str) {
        if !events::concerns(channel, text, &self.spec.master)
            || !lock(&self.recent).first(&format!("{channel} {text}"), Instant::now())
        {
            return;
        }
        debug!(master = %self.spec.master, channel, text, "sentinel event");
        self.rediscover(Trigger::Event);
    }

    /// Event subscription `slot` takes a sentinel no other holds (trying others before
    /// `after`, the one that just failed): its address and the settings to connect with.
    fn claim(&self, slot: usize, after: Option<&Endpoint>) -> Option<(Endpoint, UpstreamSettings)> {
        let order = lock(&self.sentinels).order().to_vec();
        let mut subscribed = lock(&self.subscribed);
        let at = events::pick(&order, &subscribed[..], after)?.clone();
        subscribed[slot] = Some(at.clone());
        let settings = self.sentinel_settings(&at);
        Some((at, settings))
    }

    /// Event subscription `slot` let go of its sentinel.
    fn release(&self, slot: usize) {
        lock(&self.subscribed)[slot] = None;
    }

    /// The settings to ask the sentinel at `at` with: the sentinels' credentials and TLS.
    fn sentinel_settings(&self, at: &Endpoint) -> UpstreamSettings {
        UpstreamSettings {
            upstream: Upstream {
                endpoint: at.clone(),
                db: 0,
                ..self.spec.sentinels[0].clone()
            },
            ..self.data.clone()
        }
    }

    /// One discovery: asks every known sentinel, believes the answer with the highest epoch,
    /// and checks the roles of the servers it names.
    async fn discover(&self) -> Discovery {
        let order = lock(&self.sentinels).order().to_vec();
        let results = self.ask_all(&order).await;
        let answers: Vec<(&Endpoint, &Answer)> = results
            .iter()
            .filter_map(|(at, result)| result.as_ref().ok().map(|a| (at, a)))
            .collect();
        let reachable = answers.len();
        let chosen = ask::choose(&answers.iter().map(|(_, a)| *a).collect::<Vec<_>>());
        let answered: Vec<Endpoint> = chosen
            .into_iter()
            .chain((0..answers.len()).filter(|&i| Some(i) != chosen))
            .map(|i| answers[i].0.clone())
            .collect();
        let told: Vec<Endpoint> = answers
            .iter()
            .flat_map(|(_, a)| a.sentinels.iter().cloned())
            .collect();
        lock(&self.sentinels).answered(&answered, &told);
        let Some(answer) = chosen.map(|i| answers[i].1) else {
            let why = results
                .iter()
                .filter_map(|(at, r)| r.as_ref().err().map(|e| format!("{at}: {e}")))
                .collect::<Vec<_>>()
                .join("; ");
            return Discovery {
                reachable,
                outcome: Err(Miss::Sentinels(why)),
            };
        };
        let primary = answer.primary.clone();
        let outcome = match role(&self.data_settings(&primary)).await {
            Ok(role) if Some(role.as_str()) == Role::Primary.reported() => Ok(Found {
                replicas: self.replicas(&answer.replicas).await,
                primary,
            }),
            Ok(role) => Err(Miss::Role(format!("{primary} says ROLE {role}"))),
            Err(e) => Err(Miss::Unreachable(e)),
        };
        Discovery { reachable, outcome }
    }

    /// Asks the sentinels of `order` at once, each within the connect timeout; once one has
    /// answered, the others get [`ANSWER_GRACE`]. The results in `order`'s order.
    async fn ask_all(&self, order: &[Endpoint]) -> Vec<(Endpoint, Result<Answer, String>)> {
        let mut asking = JoinSet::new();
        for (i, at) in order.iter().enumerate() {
            let settings = self.sentinel_settings(at);
            let master = self.spec.master.clone();
            asking.spawn(async move {
                let replies = upstream::probe(&settings, &Answer::commands(&master)).await;
                let answer = replies
                    .map_err(|e| e.to_string())
                    .and_then(|replies| Answer::parse(&replies, &master));
                (i, answer)
            });
        }
        let mut results: Vec<Option<Result<Answer, String>>> = vec![None; order.len()];
        let mut grace: Option<Instant> = None;
        loop {
            let next = match grace {
                Some(deadline) => match timeout_at(deadline, asking.join_next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => asking.join_next().await,
            };
            let Some(done) = next else {
                break;
            };
            if let Ok((i, answer)) = done {
                if answer.is_ok() && grace.is_none() {
                    grace = Some(Instant::now() + ANSWER_GRACE);
                }
                results[i] = Some(answer);
            }
        }
        order
            .iter()
            .cloned()
            .zip(results)
            .map(|(at, r)| (at, r.unwrap_or_else(|| Err("no answer in time".into()))))
            .collect()
    }

    /// Of the replicas a sentinel named, those that say `ROLE slave`, ordered by address.
    async fn replicas(&self, named: &[Endpoint]) -> Vec<Endpoint> {
        let mut checks = JoinSet::new();
        for replica in named {
            let settings = self.data_settings(replica);
            let replica = replica.clone();
            checks.spawn(async move { (role(&settings).await, replica) });
        }
        let mut replicas = Vec::new();
        while let Some(done) = checks.join_next().await {
            if let Ok((Ok(role), replica)) = done {
                if Some(role.as_str()) == Role::Replica.reported() {
                    replicas.push(replica);
                }
            }
        }
        replicas.sort_by_key(|r| r.to_string());
        replicas
    }

    /// The settings to connect to the data node at `at` with.
    fn data_settings(&self, at: &Endpoint) -> UpstreamSettings {
        UpstreamSettings {
            upstream: Upstream {
                endpoint: at.clone(),
                ..self.data.upstream.clone()
            },
            ..self.data.clone()
        }
    }

    /// Publishes what `discovery` found (the last known primary stays when it found nothing),
    /// with the metrics and logs; `failing`: since when discoveries fail (logged once per
    /// streak, at its start and at its end).
    fn settle(&self, discovery: Discovery, failing: &mut Option<Instant>) -> pace::Outcome {
        let master = &self.spec.master;
        crate::metrics::sentinels_reachable(discovery.reachable);
        let found = match discovery.outcome {
            Ok(found) => found,
            Err(miss) => {
                crate::metrics::sentinel_discovery_error();
                let last = self.found().map(|f| f.primary.to_string());
                let last = last.as_deref().unwrap_or("none");
                if failing.is_none() {
                    *failing = Some(Instant::now());
                    warn!(%master, last_known = last, why = %miss,
                        "sentinel: no primary confirmed; keeping the last known one");
                } else {
                    debug!(%master, last_known = last, why = %miss, "sentinel: still no primary confirmed");
                }
                return match miss {
                    Miss::Role(_) => pace::Outcome::WrongRole,
                    Miss::Sentinels(_) | Miss::Unreachable(_) => pace::Outcome::Settled,
                };
            }
        };
        if let Some(since) = failing.take() {
            info!(%master, primary = %found.primary, after = ?since.elapsed(),
                "sentinel: a primary is confirmed again");
        }
        let primary = found.primary.to_string();
        let mut old = None;
        self.found.send_if_modified(|known| {
            if known.as_ref() == Some(&found) {
                return false;
            }
            match known.as_ref().map(|k| &k.primary) {
                Some(before) if *before != found.primary => {
                    warn!(%master, from = %before, to = %found.primary, "sentinel: the primary changed (failover)");
                    old = Some(before.to_string());
                }
                Some(_) => info!(%master, replicas = found.replicas.len(), "sentinel: the replicas changed"),
                None => info!(%master, %primary, replicas = found.replicas.len(), "sentinel: primary found"),
            }
            *known = Some(found);
            true
        });
        crate::metrics::sentinel_primary(&primary, old.as_deref());
        pace::Outcome::Settled
    }
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Sentinels(why) => write!(f, "no sentinel named a primary: {why}"),
            Miss::Role(why) => write!(f, "the primary named is not one: {why}"),
            Miss::Unreachable(why) => write!(f, "the primary named cannot be reached: {why}"),
        }
    }
}

/// The first element of `ROLE` from the server `settings` connect to.
async fn role(settings: &UpstreamSettings) -> Result<String, String> {
    let reply = upstream::ask(settings, &[b"ROLE"])
        .await
        .map_err(|e| e.to_string())?;
    role_of(&reply).ok_or_else(|| format!("{}: unreadable ROLE reply", settings.upstream.endpoint))
}

/// The role a `ROLE` reply says (`master`, `slave`, `sentinel`); `None` for anything else.
pub(crate) fn role_of(reply: &[u8]) -> Option<String> {
    // A primary's reply lists its replicas, each an array: three levels.
    value::parse(reply, 3)
        .as_ref()
        .and_then(Value::items)
        .and_then(|items| items.first())
        .and_then(Value::string)
}

/// Discovers the primary at start, when triggered and when the poll is due (see `pace`), and
/// publishes what changed. Holds the watch only while discovering; ends when it is dropped.
async fn keep_primary(watch: Weak<Watch>, wake: Arc<Notify>) {
    let mut pace = Pace::new(Instant::now());
    let mut failing = None;
    let mut trigger = Trigger::Start;
    loop {
        let Some(current) = watch.upgrade() else {
            return;
        };
        // Triggers that came before this discovery starts are served by it.
        lock(&current.trigger).take();
        pace.started(Instant::now());
        crate::metrics::sentinel_discovery(trigger.label());
        let discovery = current.discover().await;
        let outcome = current.settle(discovery, &mut failing);
        drop(current);
        let due = pace.due(Instant::now(), outcome, fastrand::f64());
        trigger = match next_trigger(&watch, &wake, &pace, due).await {
            Some(trigger) => trigger,
            None => return,
        };
    }
}

/// Waits for the next discovery's start: a trigger's (rate limited), or `due` (a poll). `None`
/// once the watch is dropped.
async fn next_trigger(
    watch: &Weak<Watch>,
    wake: &Notify,
    pace: &Pace,
    due: Instant,
) -> Option<Trigger> {
    loop {
        let asked = *lock(&watch.upgrade()?.trigger);
        let start = match asked {
            Some(trigger) => pace.triggered(trigger, Instant::now(), fastrand::f64()),
            None => due,
        };
        // A wake-up looks again: another trigger may have taken the place of a failed
        // connection's, or it is a permit left by a trigger already served.
        if timeout_at(start.min(due), wake.notified()).await.is_err() {
            return Some(asked.unwrap_or(Trigger::Poll));
        }
    }
}

/// Locks a mutex only held for short updates; poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_replies_of_a_primary_a_replica_and_a_sentinel() {
        let primary = b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n";
        assert_eq!(role_of(primary).as_deref(), Some("master"));
        let replica =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n";
        assert_eq!(role_of(replica).as_deref(), Some("slave"));
        let sentinel = b"*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\nmymaster\r\n";
        assert_eq!(role_of(sentinel).as_deref(), Some("sentinel"));
        assert_eq!(role_of(b"-NOPERM no\r\n"), None);
    }
}
