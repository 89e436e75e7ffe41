//! The cluster slot map against a real cluster (TOPOLOGY.md section 3, "Slot map" and
//! "Refresh"): respipe starts with a node down, finds a node that restarted on another address
//! (same node id), and learns of a failover that no `MOVED` told it about.

mod common;

use std::cell::Cell;
use std::time::Duration;

use common::cluster::{key_in_slot, Cluster, ClusterOptions};
use common::{bounded, http_get, poll_until, BinProxy, RawClient, Reply};
use respipe::cluster::{BACKGROUND_REFRESH, SLOTS};

/// Bound of one test: a cluster start (a few seconds) plus the test's own work.
const LIMIT: Duration = Duration::from_secs(120);
/// How long respipe may take to serve again after the cluster changed under it: a refresh is at
/// most a second away from the first failed connection, and a start retry at most 8 s.
const CATCH_UP: Duration = Duration::from_secs(20);
/// Keys written to check that every slot is served, spread evenly over the slots.
const SPREAD: usize = 200;

/// Writes `SPREAD` keys spread over all slots through respipe (pipelined) and reads them back.
async fn serves_every_slot(proxy: &BinProxy, tag: &str) {
    let keys: Vec<String> = (0..SPREAD)
        .map(|i| key_in_slot((i * SLOTS / SPREAD) as u16, &format!("{tag}:{i}")))
        .collect();
    let mut c = RawClient::connect(proxy.listen).await;
    let sets: Vec<[&str; 3]> = keys
        .iter()
        .map(|k| ["SET", k.as_str(), k.as_str()])
        .collect();
    let replies = c
        .send_all(&sets.iter().map(|s| &s[..]).collect::<Vec<_>>())
        .await;
    assert!(replies.iter().all(|r| *r == Reply::ok()), "{replies:?}");
    let gets: Vec<[&str; 2]> = keys.iter().map(|k| ["GET", k.as_str()]).collect();
    let replies = c
        .send_all(&gets.iter().map(|g| &g[..]).collect::<Vec<_>>())
        .await;
    for (k, r) in keys.iter().zip(replies) {
        assert_eq!(r, Reply::bulk(k.as_str()), "GET {k}");
    }
}

/// The value of `name{label}` on respipe's `/metrics` (0 when absent).
async fn metric_with(proxy: &BinProxy, name: &str, label: &str) -> f64 {
    let (status, body) = http_get(&proxy.admin, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `SET key value` through respipe until `+OK`; returns how many attempts failed first.
async fn set_until_ok(proxy: &BinProxy, key: &str, value: &str) -> usize {
    let failed = Cell::new(0);
    let addr = proxy.listen;
    poll_until(CATCH_UP, "respipe serves the key again", || {
        let failed = &failed;
        async move {
            let mut c = RawClient::try_connect(addr).await.ok()?;
            let set = ["SET", key, value];
            let reply = tokio::time::timeout(Duration::from_secs(2), c.cmd(&set)).await;
            let ok = reply.ok() == Some(Reply::ok());
            failed.set(failed.get() + usize::from(!ok));
            ok.then_some(())
        }
    })
    .await;
    failed.get()
}

/// A node is down when respipe starts: listed first among the seeds, respipe asks the others and
/// serves every slot. With that node as its only seed, respipe runs unready (no crash) and
/// retries until the node is back, then learns the whole cluster from it and serves every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_with_a_seed_down_and_serves_every_slot() {
    bounded(LIMIT, "seed down", async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        let primaries = cluster.primaries().await;
        let down = cluster.replicas_of(primaries[0]).await[0];
        let down_addr = cluster.node(down).addr().to_string();
        cluster.kill(down);

        let mut seeds = vec![down_addr.clone()];
        seeds.extend(
            cluster
                .running()
                .map(|i| cluster.node(i).addr().to_string()),
        );
        let proxy = BinProxy::spawn(&format!("redis-cluster://{}", seeds.join(",")), &[]);
        proxy
            .wait_status("/readyz", 200, common::START_DEADLINE)
            .await;
        serves_every_slot(&proxy, "others").await;
        assert_eq!(proxy.metric("respipe_cluster_nodes").await, 3.0);
        assert_eq!(proxy.metric("respipe_cluster_slots_covered").await, 1.0);

        let lonely = BinProxy::spawn(&format!("redis-cluster://{down_addr}"), &[]);
        assert_eq!(lonely.status("/readyz").await, 503, "no node answered yet");
        assert_eq!(lonely.metric("respipe_cluster_slots_covered").await, 0.0);
        let mut c = RawClient::connect(lonely.listen).await;
        let r = c.cmd(&["GET", "k"]).await;
        assert!(r.error_text().is_some(), "no slot map yet: {r:?}");
        cluster.restart(down).await;
        lonely.wait_status("/readyz", 200, CATCH_UP).await;
        serves_every_slot(&lonely, "lonely").await;
        assert_eq!(lonely.metric("respipe_cluster_nodes").await, 3.0);
        assert!(
            metric_with(
                &lonely,
                "respipe_cluster_refreshes_total",
                "source=\"start\""
            )
            .await
                >= 1.0
        );
    })
    .await
}

/// A primary restarted on another port with its `nodes.conf` keeps its node id: respipe (not
/// restarted) finds it at its new address once its connections to the old one fail, and serves
/// its slots there. No replicas, so no failover can stand in for the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_a_node_restarted_on_another_port() {
    bounded(LIMIT, "node moved", async {
        let mut cluster = Cluster::start(ClusterOptions {
            replicas: 0,
            ..ClusterOptions::default()
        })
        .await;
        let proxy = cluster.respipe(&[]).await;
        let p = cluster.primaries().await[1];
        let key = cluster.key_on(p, "moving").await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["SET", &key, "before"]).await, Reply::ok());

        let id = cluster.node(p).id().to_owned();
        let old = cluster.node(p).addr();
        cluster.kill(p);
        let new = cluster.restart_elsewhere(p).await;
        cluster.wait_ok().await;
        assert_ne!(old, new);
        assert_eq!(cluster.node(p).id(), id, "the same node");

        set_until_ok(&proxy, &key, "after").await;
        assert_eq!(
            cluster.cmd(p, &["GET", &key]).await,
            Reply::bulk("after"),
            "written on the node at {new}"
        );
        serves_every_slot(&proxy, "moved").await;
        let source = "source=\"connect_failure\"";
        assert!(metric_with(&proxy, "respipe_cluster_refreshes_total", source).await >= 1.0);
        assert_eq!(proxy.metric("respipe_cluster_nodes").await, 3.0);
    })
    .await
}

/// A primary SIGKILLed and its replica promoted (`CLUSTER FAILOVER TAKEOVER`): no node answers
/// `MOVED` for its slots (the old owner is gone), yet respipe learns the new owner from the failed
/// connections to the old one, and serves the slots from the promoted replica within seconds.
/// Then the old primary, back as a replica, takes over gracefully while no client talks: the
/// periodic check finds it (this phase waits up to [`BACKGROUND_REFRESH`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learns_failovers_without_a_moved() {
    bounded(LIMIT, "failover", async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        let proxy = cluster.respipe(&[]).await;
        let p = cluster.primaries().await[0];
        let r = cluster.replicas_of(p).await[0];
        let key = cluster.key_on(p, "failover").await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["SET", &key, "before"]).await, Reply::ok());

        cluster.kill(p);
        let promoted = cluster.failover(r, Some("TAKEOVER")).await;
        let failed = set_until_ok(&proxy, &key, "after").await;
        let took = promoted.elapsed();
        eprintln!("served again {took:?} after the promotion ({failed} failed attempts)");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(cluster.cmd(r, &["GET", &key]).await, Reply::bulk("after"));
        let source = "source=\"connect_failure\"";
        assert!(metric_with(&proxy, "respipe_cluster_refreshes_total", source).await >= 1.0);
        assert_eq!(
            metric_with(&proxy, "respipe_cluster_redirects_total", "kind=\"moved\"").await,
            0.0,
            "learnt without a MOVED"
        );
        cluster.wait_ok().await;
        serves_every_slot(&proxy, "failover").await;

        // The old primary comes back as a replica and takes over gracefully while no client
        // talks: nothing fails and nobody says MOVED, so only the periodic check can tell.
        cluster.restart(p).await;
        cluster.wait_ok().await;
        cluster.failover(p, None).await;
        cluster.wait_ok().await;
        let background = "source=\"background\"";
        let checks = metric_with(&proxy, "respipe_cluster_refreshes_total", background).await;
        let due = BACKGROUND_REFRESH + Duration::from_secs(5);
        poll_until(due, "a background refresh after the failover", || async {
            let now = metric_with(&proxy, "respipe_cluster_refreshes_total", background).await;
            (now > checks).then_some(())
        })
        .await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(
            c.cmd(&["GET", &key]).await,
            Reply::bulk("after"),
            "from {p}"
        );
        assert_eq!(
            metric_with(&proxy, "respipe_cluster_redirects_total", "kind=\"moved\"").await,
            0.0,
            "learnt without a MOVED"
        );
    })
    .await
}
