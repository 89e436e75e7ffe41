//! Redis Cluster behind respipe (issue 12): a real 3-primary + 3-replica cluster on loopback
//! (`common/cluster.rs`), respipe in cluster mode in front of it, and every key where its slot's
//! owner keeps it.

mod common;

use std::time::Duration;

use common::cluster::{key_in_slot, Cluster, ClusterOptions};
use common::{bounded, RawClient, Reply};
use respipe::cluster::{key_slot, SLOTS};

/// Bound of one test: a cluster start (a few seconds) plus the test's own work.
const LIMIT: Duration = Duration::from_secs(120);

/// Keys of the smoke test, spread evenly over all slots.
const KEYS: usize = 1000;

/// `KEYS` keys, key `i` in slot `i * SLOTS / KEYS`, so every primary gets its share.
fn spread_keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| key_in_slot((i * SLOTS / KEYS) as u16, &format!("smoke:{i}")))
        .collect()
}

/// 3 primaries + 3 replicas and the respipe binary: 1000 keys over all slots written and read
/// back through respipe (half with the `redis` crate, half pipelined raw; read again through
/// respipe in-process), and each found on its slot's owner when that node is asked directly,
/// with nothing anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_all_slots_land_on_their_owner() {
    bounded(LIMIT, "smoke", async {
        let cluster = Cluster::start(ClusterOptions::default()).await;
        let proxy = cluster.respipe(&[]).await;
        let keys = spread_keys();
        let (raw_keys, crate_keys) = keys.split_at(KEYS / 2);
        let value = |k: &str| format!("v:{k}");

        let mut raw = RawClient::connect(proxy.listen).await;
        let sets: Vec<[String; 3]> = raw_keys
            .iter()
            .map(|k| ["SET".into(), k.clone(), value(k)])
            .collect();
        let replies = raw
            .send_all(&sets.iter().map(|c| &c[..]).collect::<Vec<_>>())
            .await;
        assert!(replies.iter().all(|r| *r == Reply::ok()), "{replies:?}");

        let client = redis::Client::open(format!("redis://{}/", proxy.listen)).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        for k in crate_keys {
            let () = redis::cmd("SET")
                .arg(k)
                .arg(value(k))
                .query_async(&mut con)
                .await
                .unwrap_or_else(|e| panic!("SET {k}: {e}"));
        }

        // Read back through respipe, each half with the other client.
        for k in crate_keys {
            assert_eq!(raw.cmd(&["GET", k]).await, Reply::bulk(value(k)), "GET {k}");
        }
        for k in raw_keys {
            let got: Option<String> = redis::cmd("GET")
                .arg(k)
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(got, Some(value(k)), "GET {k} (redis crate)");
        }

        // respipe in-process (the harness's other front) reads the same values.
        let inproc = cluster.proxy(|_| {}).await;
        let mut c = inproc.raw().await;
        let gets: Vec<[&str; 2]> = keys.iter().map(|k| ["GET", k.as_str()]).collect();
        let got = c
            .send_all(&gets.iter().map(|g| &g[..]).collect::<Vec<_>>())
            .await;
        for (k, r) in keys.iter().zip(got) {
            assert_eq!(r, Reply::bulk(value(k)), "GET {k} in-process");
        }

        // Directly on the owners: each key where its slot lives, and nothing else anywhere.
        let owners = cluster.slot_owners().await;
        let primaries = cluster.primaries().await;
        assert_eq!(primaries.len(), 3, "{primaries:?}");
        for &p in &primaries {
            let mine: Vec<&String> = keys
                .iter()
                .filter(|k| owners[usize::from(key_slot(k.as_bytes()))] == p)
                .collect();
            assert!(mine.len() > KEYS / 4, "node {p} owns {} keys", mine.len());
            let mut d = cluster.direct(p).await;
            let gets: Vec<[&str; 2]> = mine.iter().map(|k| ["GET", k.as_str()]).collect();
            let got = d
                .send_all(&gets.iter().map(|c| &c[..]).collect::<Vec<_>>())
                .await;
            for (k, r) in mine.iter().zip(got) {
                assert_eq!(r, Reply::bulk(value(k)), "{k} on its owner {p}");
            }
            assert_eq!(
                d.cmd(&["DBSIZE"]).await,
                Reply::Int(mine.len() as i64),
                "node {p} holds only its own keys"
            );
        }
    })
    .await
}

/// The harness itself, without respipe: a slot held half-migrated (the source answers `-ASK` for a
/// key it no longer has) then moved, a replica failed over, and a node restarted on another port
/// with its `nodes.conf` (the others learn its new address under the same id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_migrates_fails_over_and_moves_a_node() {
    bounded(LIMIT, "harness", async {
        let mut cluster = Cluster::start(ClusterOptions::default()).await;
        let primaries = cluster.primaries().await;
        let (from, to) = (primaries[0], primaries[1]);
        let slot = 7;
        assert_eq!(cluster.primary_of(slot).await, from);
        let (stays, moves) = (key_in_slot(slot, "stays"), key_in_slot(slot, "moves"));
        for k in [&stays, &moves] {
            assert_eq!(cluster.cmd(from, &["SET", k, "1"]).await, Reply::ok());
        }
        let m = cluster.begin_migration(slot, to).await;
        let port = cluster.node(to).port().to_string();
        let migrate = ["MIGRATE", "127.0.0.1", &port, moves.as_str(), "0", "5000"];
        assert_eq!(cluster.cmd(from, &migrate).await, Reply::ok());
        let ask = cluster.cmd(from, &["GET", &moves]).await;
        let want = format!("ASK {slot} 127.0.0.1:{port}");
        assert_eq!(ask.error_text(), Some(want.as_str()), "{ask:?}");
        assert_eq!(cluster.cmd(from, &["GET", &stays]).await, Reply::bulk("1"));
        cluster.finish_migration(m).await;
        assert_eq!(cluster.primary_of(slot).await, to);
        assert_eq!(cluster.get_on_owner(&stays).await, Reply::bulk("1"));
        cluster.wait_ok().await;

        let r = cluster.replicas_of(to).await[0];
        cluster.failover(r, None).await;
        cluster.wait_ok().await;
        assert_eq!(cluster.primary_of(slot).await, r);
        assert_eq!(cluster.replicas_of(r).await, vec![to]);

        let id = cluster.node(to).id().to_owned();
        cluster.kill(to);
        let addr = cluster.restart_elsewhere(to).await;
        cluster.wait_ok().await;
        let nodes = match cluster.cmd(r, &["CLUSTER", "NODES"]).await {
            Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
            other => panic!("CLUSTER NODES: {other:?}"),
        };
        let line = nodes.lines().find(|l| l.starts_with(&id)).unwrap();
        assert!(line.contains(&format!("{addr}@")), "{line}");
        assert_eq!(cluster.replicas_of(r).await, vec![to]);
    })
    .await
}
