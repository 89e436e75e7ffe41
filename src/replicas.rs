//! Reads from replicas (`read_from`): which lane a session's read goes to, the per-replica
//! traffic counters, and the replication lag poll.
//!
//! A layout with replicas has the primary on lane 0 and a replica on each lane after it (static
//! `replicas`, or those Sentinel reports). Only commands respipe knows to be read-only
//! (`command::is_read`) that a session sends on the shared pool may go to a replica lane; the
//! session's reorder buffer (`session/lanes.rs`) keeps its replies in command order across lanes,
//! as it does for shards.

use std::sync::{Arc, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge};

use crate::config::{ReadFrom, Reads};
use crate::reply::Lane;
use crate::resp;
use crate::topology::Layout;
use crate::upstream::{self, UpstreamSettings};
use crate::value;

/// How often the replicas' replication offsets are compared with the primary's.
pub const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// The read policy of a layout whose reads may go to replicas (`read_from` other than primary).
#[derive(Debug)]
pub struct Replicated {
    /// `prefer-replica` or `replica`.
    pub read_from: ReadFrom,
    /// Reads go to the primary this long after the session's last write; `None`: off.
    pub read_your_writes: Option<Duration>,
    /// Per replica, in lane order (lane 1 first): `respipe_replica_reads_total{replica}`.
    reads: Vec<Counter>,
}

impl Replicated {
    /// The policy of `reads` for a layout whose lanes 1.. are the replicas named `replicas`;
    /// `None` when reads stay on the primary.
    pub fn new(reads: &Reads, replicas: &[String]) -> Option<Replicated> {
        (reads.read_from != ReadFrom::Primary).then(|| Replicated {
            read_from: reads.read_from,
            read_your_writes: reads.read_your_writes,
            reads: replicas
                .iter()
                .map(|name| {
                    metrics::counter!(
                        crate::metrics::REPLICA_READS,
                        crate::metrics::labels([("replica", name.clone())])
                    )
                })
                .collect(),
        })
    }

    /// The replicas (lanes 1 to this).
    pub fn replicas(&self) -> usize {
        self.reads.len()
    }

    /// Counts `count` reads sent to replica lane `lane`.
    pub fn count(&self, lane: Lane, count: u32) {
        if let Some(counter) = usize::from(lane)
            .checked_sub(1)
            .and_then(|i| self.reads.get(i))
        {
            counter.increment(u64::from(count));
        }
    }

    /// The lane a read of session `session` goes to, given which lanes are `up`: its own replica
    /// (sessions spread evenly over them) while up, else the next one that is, else the primary
    /// (`prefer-replica`) or `None`, refused (`replica`).
    pub fn pick(&self, session: u64, up: impl Fn(Lane) -> bool) -> Option<Lane> {
        let n = self.replicas() as u64;
        let replica = (0..n)
            .map(|i| 1 + ((session + i) % n) as Lane)
            .find(|&lane| up(lane));
        match (replica, self.read_from) {
            (Some(lane), _) => Some(lane),
            (None, ReadFrom::Replica) => None,
            (None, _) => Some(0),
        }
    }
}

/// Polls the replication lag of `layout`'s replicas every [`LAG_INTERVAL`] while the layout
/// lives (nothing when it has none: a Sentinel layout made before any replica was known): the primary's `master_repl_offset` minus each replica's
/// `slave_repl_offset` (`INFO replication`, on short-lived connections made as `settings` say),
/// in `respipe_replica_lag_bytes{replica}`; -1 while it cannot be known (the primary or the
/// replica cannot be asked, or the replica's link to the primary is down). Only while reads go
/// to replicas.
pub fn poll_lag(layout: &Arc<Layout>, settings: UpstreamSettings) {
    if layout
        .replicas()
        .is_none_or(|policy| policy.replicas() == 0)
    {
        return;
    }
    tokio::spawn(keep_lag(Arc::downgrade(layout), settings));
}

async fn keep_lag(layout: Weak<Layout>, settings: UpstreamSettings) {
    let mut gauges: Vec<Gauge> = Vec::new();
    loop {
        let Some(current) = layout.upgrade() else {
            return;
        };
        let ask = |lane: Lane| {
            let endpoint = current.endpoint(lane);
            let settings = &settings;
            async move {
                let settings = UpstreamSettings {
                    upstream: endpoint?,
                    ..settings.clone()
                };
                let reply = upstream::ask(&settings, &[b"INFO", b"replication"])
                    .await
                    .ok()?;
                value::parse(&reply, 1)?.string()
            }
        };
        if gauges.is_empty() {
            gauges = (1..current.servers() as Lane)
                .map(|lane| {
                    let name = current.server_name(lane);
                    metrics::gauge!(
                        crate::metrics::REPLICA_LAG,
                        crate::metrics::labels([("replica", name)])
                    )
                })
                .collect();
        }
        let primary = ask(0)
            .await
            .and_then(|info| info_field(&info, "master_repl_offset"));
        for (i, gauge) in gauges.iter().enumerate() {
            let info = ask(i as Lane + 1).await;
            let lag = info.as_deref().and_then(|info| {
                let linked = info_field(info, "master_link_status") != Some(-1);
                let (primary, offset) = (primary?, info_field(info, "slave_repl_offset")?);
                linked.then(|| lag(primary, offset))
            });
            gauge.set(lag.map_or(-1.0, |lag| lag as f64));
        }
        drop(current);
        tokio::time::sleep(LAG_INTERVAL).await;
    }
}

/// How many bytes of the replication stream the replica at `replica` has not processed when
/// the primary is at `primary` (0 when it is ahead: it was asked later).
fn lag(primary: i64, replica: i64) -> i64 {
    (primary - replica).max(0)
}

/// The integer value of `field` in an `INFO` reply; `master_link_status` reads as 0 when `up`
/// and -1 otherwise.
fn info_field(info: &str, field: &str) -> Option<i64> {
    let value = info.lines().find_map(|line| {
        let (name, value) = line.trim_end().split_once(':')?;
        (name == field).then_some(value)
    })?;
    match value {
        "up" => Some(0),
        "down" => Some(-1),
        value => resp::parse_int(value.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(read_from: ReadFrom, replicas: usize) -> Replicated {
        let names: Vec<String> = (0..replicas).map(|i| format!("r{i}")).collect();
        let reads = Reads {
            read_from,
            read_your_writes: None,
            replicas: Vec::new(),
        };
        Replicated::new(&reads, &names).expect("a policy that reads from replicas")
    }

    #[test]
    fn sessions_spread_evenly_over_the_replicas() {
        let p = policy(ReadFrom::PreferReplica, 3);
        let mut per_lane = [0; 4];
        for session in 0..300 {
            per_lane[usize::from(p.pick(session, |_| true).unwrap())] += 1;
        }
        assert_eq!(per_lane, [0, 100, 100, 100]);
        assert_eq!(
            p.pick(7, |_| true),
            p.pick(7, |_| true),
            "a session keeps its replica"
        );
    }

    #[test]
    fn a_down_replica_hands_its_sessions_to_the_next_then_the_primary_or_refuses() {
        let prefer = policy(ReadFrom::PreferReplica, 2);
        // Session 0's replica is lane 1.
        assert_eq!(prefer.pick(0, |_| true), Some(1));
        assert_eq!(prefer.pick(0, |lane| lane != 1), Some(2));
        assert_eq!(prefer.pick(0, |lane| lane == 0), Some(0));
        let only = policy(ReadFrom::Replica, 2);
        assert_eq!(only.pick(0, |lane| lane != 1), Some(2));
        assert_eq!(only.pick(0, |lane| lane == 0), None);
        // No replica known at all (Sentinel reports none).
        assert_eq!(
            policy(ReadFrom::PreferReplica, 0).pick(5, |_| true),
            Some(0)
        );
        assert_eq!(policy(ReadFrom::Replica, 0).pick(5, |_| true), None);
    }

    #[test]
    fn reads_stay_on_the_primary_by_default() {
        let reads = crate::config::Config::default().reads;
        assert!(Replicated::new(&reads, &["r".to_owned()]).is_none());
    }

    #[test]
    fn lag_is_read_from_info_replication() {
        let primary =
            "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_repl_offset:1500\r\n";
        let replica =
            "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nslave_repl_offset:1200\r\n";
        assert_eq!(info_field(primary, "master_repl_offset"), Some(1500));
        assert_eq!(info_field(replica, "slave_repl_offset"), Some(1200));
        assert_eq!(info_field(replica, "master_link_status"), Some(0));
        assert_eq!(
            info_field("master_link_status:down\r\n", "master_link_status"),
            Some(-1)
        );
        assert_eq!(info_field(primary, "slave_repl_offset"), None);
        assert_eq!(lag(1500, 1200), 300);
        assert_eq!(lag(1500, 1600), 0, "asked after the primary");
    }
}
