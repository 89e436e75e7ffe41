//! Issue 12, failures of a Redis Cluster behind respipe (3 primaries + 3 replicas): a primary
//! SIGKILLed under the integrity drill's load and its replica promoted by the cluster itself; nodes
//! down when respipe starts (a replica that is the first seed, a primary already failed over); a
//! primary that comes back on another port with the same node id.
//!
//! The clusters run with `cluster-require-full-coverage no`, so that Redis itself keeps serving
//! the other slots while one primary is failed and not yet replaced: "other slots unaffected"
//! then measures respipe, not Redis's own whole-cluster CLUSTERDOWN.

mod common;
#[path = "common/drill.rs"]
mod drill;
// `drill` reads replies with the harness's reader.
use common::wire;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, ClusterOptions};
use common::{bounded, RawClient, Reply};

/// Bound of a test with a drill or a failover.
const LIMIT: Duration = Duration::from_secs(150);

/// How soon after a replica says it is the primary respipe must serve its slots again.
const RESUME: Duration = Duration::from_secs(2);

/// 3 + 3 nodes that keep serving the covered slots while one primary is down, with `node_timeout`.
fn options(node_timeout_ms: u64) -> ClusterOptions {
    ClusterOptions {
        node_timeout_ms,
        redis_args: vec!["--cluster-require-full-coverage".into(), "no".into()],
        ..ClusterOptions::default()
    }
}

fn count(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// 200 clients (60 pipelining 10 to 50 deep) for `duration` with `kills` kills, whose keys take in
/// turn a hash tag of every primary (in the primaries' slot order: the first tag is the first
/// primary's).
async fn drill_config(cluster: &Cluster, duration: Duration, kills: usize) -> drill::DrillConfig {
    let mut tags = Vec::new();
    for p in cluster.primaries().await {
        let key = cluster.key_on(p, "").await;
        tags.push(key.trim_matches(['{', '}']).to_owned());
    }
    drill::DrillConfig::spread(duration, kills, tags, drill::RESPIPE_FAILURE)
}

/// 0 wrong, 0 misrouted, 0 hung, 0 dropped clients, and a real load.
#[track_caller]
fn assert_clean(report: &drill::DrillReport) {
    eprintln!("{}", report.summary());
    assert!(report.clean(), "{}", report.summary());
    let ok = count(&report.counts.ok);
    assert!(ok > 5_000, "too little load: {}", report.summary());
}

/// The drill's "Redis" for a failover: `kill` SIGKILLs the victim primary, `restart` waits until
/// the cluster has promoted its replica and records when it said so.
struct Failover<'a> {
    cluster: &'a mut Cluster,
    victim: usize,
    replica: usize,
    promoted: Option<Instant>,
}

impl drill::Restart for Failover<'_> {
    fn kill(&mut self) {
        self.cluster.kill(self.victim);
    }
    async fn restart(&mut self) {
        self.promoted = Some(self.cluster.wait_primary(self.replica).await);
    }
}

/// A primary SIGKILLed under load (200 clients, 60 pipelining 10 to 50 deep, keys on the three
/// primaries in turn) and its replica promoted by the cluster (node timeout 2 s): 0 wrong, 0
/// misrouted, 0 hung, 0 dropped clients; the victim's keys fail explicitly; the other primaries'
/// keys never fail; its slots are served again within 2 s of the promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_under_load() {
    bounded(LIMIT, "a primary killed under load", async {
        // 2 s: short enough for a quick promotion, long enough that a busy machine does not fail
        // a healthy primary under the load.
        let mut cluster = Cluster::start(options(2000)).await;
        let primaries = cluster.primaries().await;
        let victim = primaries[0];
        let replica = cluster.replicas_of(victim).await[0];
        let proxy = cluster.respipe(&[]).await;
        let cfg = drill_config(&cluster, Duration::from_secs(12), 1).await;
        let mut failover = Failover {
            cluster: &mut cluster,
            victim,
            replica,
            promoted: None,
        };
        let report = drill::run(proxy.listen, &mut failover, &cfg).await;
        assert!(failover.promoted.is_some(), "the replica was promoted");
        assert_clean(&report);
        let c = &report.counts;
        let failed: Vec<u64> = c.failed_by_tag.iter().map(count).collect();
        assert!(
            failed[0] > 0,
            "the kill hit no command: {}",
            report.summary()
        );
        assert_eq!(
            failed[1..],
            [0, 0],
            "other slots failed: {}",
            report.summary()
        );
        assert!(
            report.recovery[0] < RESUME,
            "the victim's slots served again {:?} after the promotion",
            report.recovery[0]
        );
        // The promoted replica owns the victim's slots, and what respipe wrote there is there.
        cluster.wait_ok().await;
        assert_eq!(cluster.primaries().await.len(), 3);
        assert!(cluster.primaries().await.contains(&replica));
    })
    .await
}

/// Writes a key on every primary through respipe at `addr` and finds it on the slot's owner.
async fn serves_every_primary(cluster: &Cluster, addr: std::net::SocketAddr, name: &str) {
    let mut c = RawClient::connect(addr).await;
    for p in cluster.primaries().await {
        let k = cluster.key_on(p, name).await;
        assert_eq!(c.cmd(&["SET", &k, name]).await, Reply::ok(), "SET {k}");
        assert_eq!(c.cmd(&["GET", &k]).await, Reply::bulk(name), "GET {k}");
        assert_eq!(
            cluster.cmd(p, &["GET", &k]).await,
            Reply::bulk(name),
            "{k} on {p}"
        );
    }
}

/// respipe starts and serves every slot while nodes are down: its first seed is a dead replica,
/// its second a dead primary whose replica the cluster has already promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_nodes_down() {
    bounded(LIMIT, "nodes down at start", async {
        let mut cluster = Cluster::start(options(1000)).await;
        let primaries = cluster.primaries().await;
        let (a, b) = (primaries[0], primaries[1]);
        let dead_replica = cluster.replicas_of(a).await[0];
        let promoted = cluster.replicas_of(b).await[0];
        cluster.kill(dead_replica);
        cluster.kill(b);
        cluster.wait_primary(promoted).await;
        cluster.wait_ok().await;
        let mut seeds = vec![dead_replica, b];
        seeds.extend(cluster.running());
        let proxy = cluster.respipe_seeded(&cluster.seeds_of(&seeds), &[]).await;
        serves_every_primary(&cluster, proxy.listen, "down-at-start").await;
    })
    .await
}

/// A primary stopped (its data saved) and started again on another port with its `nodes.conf`:
/// same node id, same slots, new address. respipe follows it: its keys, written before the move,
/// are read through respipe within 2 s of the cluster agreeing on the new address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_moves_to_another_port_is_followed() {
    bounded(LIMIT, "a primary moves", async {
        // A node timeout longer than the move, so its replica is not promoted meanwhile.
        let mut cluster = Cluster::start(options(15_000)).await;
        let proxy = cluster.respipe(&[]).await;
        let moving = cluster.primaries().await[0];
        let keys: Vec<String> = (0..20)
            .map(|i| common::cluster::key_in_slot(0, &format!("m{i}")))
            .collect();
        assert_eq!(cluster.primary_of(0).await, moving);
        let mut c = RawClient::connect(proxy.listen).await;
        for k in &keys {
            assert_eq!(c.cmd(&["SET", k, k]).await, Reply::ok());
        }
        cluster.shutdown_saving(moving).await;
        let addr = cluster.restart_elsewhere(moving).await;
        cluster.wait_ok().await;
        let agreed = Instant::now();
        assert_eq!(cluster.primary_of(0).await, moving, "still the primary");
        eprintln!("node {moving} moved to {addr}");
        let mut served = None;
        while agreed.elapsed() < RESUME {
            let mut c = RawClient::connect(proxy.listen).await;
            if c.cmd(&["GET", &keys[0]]).await == Reply::bulk(&keys[0]) {
                served = Some(agreed.elapsed());
                break;
            }
            tokio::time::sleep(common::POLL).await;
        }
        let served = served.unwrap_or_else(|| panic!("not served {RESUME:?} after the move"));
        eprintln!("served again {served:?} after the cluster agreed");
        for k in &keys {
            assert_eq!(c.cmd(&["GET", k]).await, Reply::bulk(k), "{k}");
        }
        serves_every_primary(&cluster, proxy.listen, "after-move").await;
    })
    .await
}

/// A graceful `CLUSTER FAILOVER` (the replica catches up, then takes over; the old primary
/// answers `-MOVED` from then on) under the same load: no client sees any error, nothing is lost,
/// every reply right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_under_load_is_invisible() {
    bounded(LIMIT, "a manual failover under load", async {
        let cluster = Cluster::start(options(5000)).await;
        let primaries = cluster.primaries().await;
        let replica = cluster.replicas_of(primaries[0]).await[0];
        let proxy = cluster.respipe(&[]).await;
        let cfg = drill_config(&cluster, Duration::from_secs(10), 0).await;
        let failover = async {
            // Three seconds of load first, then the failover in the middle of it.
            tokio::time::sleep(Duration::from_secs(3)).await;
            cluster.failover(replica, None).await
        };
        let mut no_kill = drill::NoKill;
        let load = drill::run(proxy.listen, &mut no_kill, &cfg);
        let (report, _) = tokio::join!(load, failover);
        assert_clean(&report);
        let c = &report.counts;
        assert_eq!(
            (count(&c.err), count(&c.nil)),
            (0, 0),
            "{}",
            report.summary()
        );
        assert!(cluster.primaries().await.contains(&replica));
    })
    .await
}
