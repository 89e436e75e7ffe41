//! What each command does through respipe in front of a real Redis Cluster (issue 12): split and
//! fanned-out commands answer as one big Redis holding the same data; `CLUSTER` and the cluster
//! connection commands answer as a Redis without cluster support; commands without a key, and
//! subscriptions, run on a primary; shard channels, transactions, `WATCH` and blocking commands on
//! their slot's owner; Redis Cluster's own `CROSSSLOT`; `SCAN` visits every key once, and refuses
//! a cursor once the primaries change.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use common::cluster::{Cluster, ClusterOptions};
use common::{bounded, poll_until, Proxy, RawClient, RedisServer, Reply};
use respipe::cluster::{key_slot, Spec};
use respipe::config::{Topology, Upstream};

/// Bound of one test: a cluster start (a few seconds) plus the test's own work.
const LIMIT: Duration = Duration::from_secs(120);

/// Keys of the differential test (`k:0`...), over most slots of every primary.
const KEYS: usize = 400;

/// respipe in-process in front of `cluster`, its seeds the nodes at these ports in this order
/// (a port nothing listens on is a seed that is down).
async fn proxy_seeded(cluster: &Cluster, ports: &[u16]) -> Proxy {
    let seeds: Vec<Upstream> = ports
        .iter()
        .map(|&port| Upstream::tcp("127.0.0.1", port))
        .collect();
    let first = seeds[0].clone();
    let proxy = Proxy::start(ports[0], |c| {
        c.upstream = first;
        c.topology = Topology::Cluster(Spec { seeds });
    })
    .await;
    cluster.wait_serving(proxy.addr()).await;
    proxy
}

/// 3 primaries without replicas (these tests need no failover), and respipe in front of them.
async fn primaries_behind_respipe() -> (Cluster, Proxy) {
    let cluster = Cluster::start(ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    })
    .await;
    let proxy = cluster.proxy(|_| {}).await;
    (cluster, proxy)
}

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("k:{i}")).collect()
}

fn text(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(Some(b)) | Reply::Verbatim(b) => String::from_utf8_lossy(b).into_owned(),
        Reply::Simple(s) | Reply::Error(s) => s.clone(),
        other => panic!("not a text reply: {other:?}"),
    }
}

/// The elements of an array reply, as strings.
fn strings(reply: &Reply) -> Vec<String> {
    match reply {
        Reply::Array(Some(items)) => items.iter().map(text).collect(),
        other => panic!("not an array: {other:?}"),
    }
}

/// Every key `SCAN` (with `extra` arguments) gives through `client`, following integer cursors
/// until 0; each cursor must read as a signed 64-bit integer.
async fn scan_all(client: &mut RawClient, extra: &[&str]) -> Vec<String> {
    let mut cursor = String::from("0");
    let mut keys = Vec::new();
    for _ in 0..10_000 {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(extra);
        let reply = client.cmd(&args).await;
        let Reply::Array(Some(parts)) = &reply else {
            panic!("SCAN {cursor}: {reply:?}");
        };
        let next = text(&parts[0]);
        assert!(next.parse::<i64>().is_ok_and(|c| c >= 0), "cursor {next}");
        keys.extend(strings(&parts[1]));
        if next == "0" {
            return keys;
        }
        cursor = next;
    }
    panic!("SCAN did not end");
}

/// `redis-cli --scan` (integer cursors, as redis-cli parses them) against `addr`.
async fn redis_cli_scan(addr: std::net::SocketAddr, pattern: &str) -> Vec<String> {
    let (host, port) = (addr.ip().to_string(), addr.port().to_string());
    let pattern = pattern.to_owned();
    let run = tokio::task::spawn_blocking(move || {
        Command::new("redis-cli")
            .args(["-h", &host, "-p", &port, "--scan"])
            .args(["--pattern", &pattern])
            .output()
            .expect("redis-cli")
    });
    let out = bounded(Duration::from_secs(20), "redis-cli --scan", run)
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Each key of `got` once, and the same keys as `want`.
fn once_each(got: &[String], want: &BTreeSet<String>, what: &str) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for k in got {
        *seen.entry(k).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{what}: keys seen twice: {twice:?}");
    let got: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(&got, want, "{what}");
}

/// The same data in one plain Redis and, through respipe, in a 3-primary cluster: the commands
/// respipe splits by slot or sends to every primary answer exactly as the one Redis does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_fan_out_answer_as_one_big_redis() {
    bounded(LIMIT, "differential", async {
        let (cluster, proxy) = primaries_behind_respipe().await;
        let single = RedisServer::start().await;
        let mut one = single.direct().await;
        let mut via = RawClient::connect(proxy.addr()).await;
        assert_eq!(via.cmd(&["FLUSHALL"]).await, Reply::ok());

        macro_rules! same {
            ($args:expr) => {{
                let args: Vec<String> = $args.iter().map(|a| a.to_string()).collect();
                let want = one.cmd(&args).await;
                let got = via.cmd(&args).await;
                assert_eq!(got, want, "{:?}", &args[..args.len().min(6)]);
                got
            }};
        }

        let keys = keys();
        let slots: BTreeSet<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
        assert!(slots.len() > KEYS * 9 / 10, "keys in {} slots", slots.len());
        let mut mset = vec!["MSET".to_owned()];
        for k in &keys {
            mset.extend([k.clone(), format!("v:{k}")]);
        }
        same!(mset);
        same!(["DBSIZE"]);
        // Every key asked, in a shuffled order, with missing ones and repeats.
        let mut asked: Vec<String> = keys.iter().rev().step_by(3).cloned().collect();
        asked.extend(["nope:1".into(), keys[7].clone(), "nope:2".into()]);
        asked.extend(keys.iter().step_by(2).cloned());
        for name in ["MGET", "EXISTS", "TOUCH"] {
            let mut args = vec![name.to_owned()];
            args.extend(asked.iter().cloned());
            same!(args);
        }
        // A hash-tagged group stays one command, MSETNX included.
        same!(["MSETNX", "{t}a", "1", "{t}b", "2"]);
        same!(["MSETNX", "{t}b", "3", "{t}c", "4"]);
        same!(["MGET", "{t}a", "{t}b", "{t}c"]);

        let all: BTreeSet<String> = {
            let reply = one.cmd(&["KEYS", "*"]).await;
            strings(&reply).into_iter().collect()
        };
        let got: BTreeSet<String> = strings(&via.cmd(&["KEYS", "*"]).await)
            .into_iter()
            .collect();
        assert_eq!(got, all, "KEYS *");
        let ones = strings(&one.cmd(&["KEYS", "k:1*"]).await);
        let got: BTreeSet<String> = strings(&via.cmd(&["KEYS", "k:1*"]).await)
            .into_iter()
            .collect();
        assert_eq!(got, ones.iter().cloned().collect(), "KEYS k:1*");

        // INFO: one Redis's keyspace, the sum of the primaries'.
        let info = text(&via.cmd(&["INFO", "keyspace"]).await);
        assert!(
            info.contains(&format!("db0:keys={},", all.len())),
            "INFO keyspace: {info}"
        );

        // SCAN: every key exactly once, with COUNT and MATCH too, and with redis-cli.
        once_each(&scan_all(&mut via, &[]).await, &all, "SCAN");
        once_each(&scan_all(&mut via, &["COUNT", "7"]).await, &all, "SCAN COUNT 7");
        let k1: BTreeSet<String> = ones.into_iter().collect();
        once_each(
            &scan_all(&mut via, &["MATCH", "k:1*", "COUNT", "50"]).await,
            &k1,
            "SCAN MATCH",
        );
        once_each(&redis_cli_scan(proxy.addr(), "*").await, &all, "redis-cli --scan");

        for _ in 0..5 {
            let key = via.cmd(&["RANDOMKEY"]).await;
            assert!(matches!(key, Reply::Bulk(Some(_))), "{key:?}");
            assert_eq!(via.cmd(&["EXISTS", &text(&key)]).await, Reply::Int(1));
        }

        // Scripts and functions reach every primary; keyless calls run anywhere.
        let script = "return redis.call('GET', KEYS[1])";
        let sha = same!(["SCRIPT", "LOAD", script]);
        let sha = text(&sha);
        for k in keys.iter().step_by(37) {
            same!(["EVALSHA", &sha, "1", k]);
        }
        same!(["SCRIPT", "EXISTS", &sha, "0000000000000000000000000000000000000000"]);
        same!(["EVAL", "return ARGV[1]", "0", "hello"]);
        let library = "#!lua name=cmdlib\n\
            redis.register_function('getk', function(keys, args) return redis.call('GET', keys[1]) end)\n\
            redis.register_function('echoes', function(keys, args) return args[1] end)";
        same!(["FUNCTION", "LOAD", library]);
        same!(["FUNCTION", "LOAD", library]);
        for k in keys.iter().step_by(41) {
            same!(["FCALL", "getk", "1", k]);
        }
        same!(["FCALL", "echoes", "0", "hi"]);
        same!(["FUNCTION", "DELETE", "cmdlib"]);
        same!(["FCALL", "echoes", "0", "hi"]);

        // Keys in several slots, where Redis Cluster refuses: its own words.
        let node = cluster.primaries().await[0];
        for cmd in [
            &["MSETNX", "k:1", "x", "k:2", "y"][..],
            &["SUNIONSTORE", "k:1", "k:2", "k:3"],
            &["RENAME", "k:1", "k:2"],
            &["EVAL", "return 1", "2", "k:1", "k:2"],
            &["FCALL", "getk", "2", "k:1", "k:2"],
        ] {
            let direct = cluster.cmd(node, cmd).await;
            assert_eq!(
                direct.error_text(),
                Some("CROSSSLOT Keys in request don't hash to the same slot"),
                "{cmd:?} on a node"
            );
            assert_eq!(via.cmd(cmd).await, direct, "{cmd:?}");
        }

        // Deleting, split by slot: the same counts.
        let mut del = vec!["DEL".to_owned()];
        del.extend(keys.iter().step_by(3).cloned());
        del.push("nope".into());
        same!(del);
        let mut unlink = vec!["UNLINK".to_owned()];
        unlink.extend(keys.iter().step_by(2).cloned());
        same!(unlink);
        same!(["DBSIZE"]);
        let mut mget = vec!["MGET".to_owned()];
        mget.extend(keys.iter().cloned());
        same!(mget);

        same!(["FLUSHALL"]);
        same!(["DBSIZE"]);
        same!(["KEYS", "*"]);
        same!(["RANDOMKEY"]);
        assert!(scan_all(&mut via, &[]).await.is_empty());
    })
    .await
}

/// A cluster-aware client pointed at respipe learns it is not talking to a cluster: every
/// `CLUSTER` subcommand, `READONLY`, `READWRITE` and `ASKING` answer as a Redis without cluster
/// support does (never a node's address); `INFO` says so too; `SELECT` takes db 0 only, in
/// Redis Cluster's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_answer_as_a_redis_without_cluster() {
    bounded(LIMIT, "cluster commands", async {
        let (cluster, proxy) = primaries_behind_respipe().await;
        let plain = RedisServer::start().await;
        let mut plain = plain.direct().await;
        let mut via = RawClient::connect(proxy.addr()).await;
        let ports: Vec<String> = cluster
            .nodes()
            .iter()
            .map(|n| n.port().to_string())
            .collect();

        for cmd in [
            &["CLUSTER", "SLOTS"][..],
            &["CLUSTER", "SHARDS"],
            &["CLUSTER", "NODES"],
            &["cluster", "info"],
            &["CLUSTER", "MYID"],
            &["CLUSTER", "KEYSLOT", "foo"],
            &["CLUSTER", "COUNTKEYSINSLOT", "1"],
            &["CLUSTER", "GETKEYSINSLOT", "1", "1"],
            &["CLUSTER", "HELP"],
            &["CLUSTER", "LINKS"],
            &["CLUSTER", "REPLICAS", "x"],
            &["CLUSTER", "SETSLOT", "1", "STABLE"],
            &["CLUSTER", "RESET", "HARD"],
            &["CLUSTER", "FAILOVER"],
            &["CLUSTER", "KEYSLOT"],
            &["CLUSTER", "INFO", "x"],
            &["CLUSTER", "nosuch", "x"],
            &["CLUSTER"],
            &["READONLY"],
            &["READWRITE"],
            &["ASKING"],
            &["readonly", "x"],
        ] {
            let want = plain.cmd(cmd).await;
            assert!(want.error_text().is_some(), "{cmd:?}: {want:?}");
            let got = via.cmd(cmd).await;
            assert_eq!(got, want, "{cmd:?}");
        }
        // Pipelined with plain commands, the same.
        let replies = via
            .send_all(&[
                &["SET", "a", "1"][..],
                &["CLUSTER", "SLOTS"],
                &["GET", "a"],
                &["CLUSTER", "NODES"],
            ])
            .await;
        assert_eq!(replies[0], Reply::ok());
        assert_eq!(replies[1], plain.cmd(&["CLUSTER", "SLOTS"]).await);
        assert_eq!(replies[2], Reply::bulk("1"));
        assert!(!format!("{replies:?}").contains(&ports[0]), "{replies:?}");

        let info = text(&via.cmd(&["INFO"]).await);
        for field in ["redis_mode:standalone", "cluster_enabled:0"] {
            assert!(info.contains(&format!("{field}\r\n")), "{field}: {info}");
        }
        assert!(!info.contains("cluster_enabled:1") && !info.contains("redis_mode:cluster"));

        // HELLO, in either protocol: a standalone Redis.
        for proto in ["2", "3"] {
            let mut c = RawClient::connect(proxy.addr()).await;
            let pairs = match c.cmd(&["HELLO", proto]).await {
                Reply::Map(pairs) => pairs,
                Reply::Array(Some(flat)) => flat
                    .chunks(2)
                    .map(|p| (p[0].clone(), p[1].clone()))
                    .collect(),
                other => panic!("HELLO {proto}: {other:?}"),
            };
            let mode = pairs.iter().find(|(k, _)| *k == Reply::bulk("mode"));
            assert_eq!(mode.map(|(_, v)| text(v)).as_deref(), Some("standalone"));
        }

        // SELECT: db 0 only, as Redis Cluster answers.
        let node = cluster.primaries().await[0];
        for select in [&["SELECT", "1"][..], &["SELECT", "x"], &["SELECT", "0"]] {
            assert_eq!(
                via.cmd(select).await,
                cluster.cmd(node, select).await,
                "{select:?}"
            );
        }
        assert_eq!(via.cmd(&["GET", "a"]).await, Reply::bulk("1"));

        // In a transaction: refused at once, the transaction aborted (nothing reaches a node).
        assert_eq!(via.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(
            via.cmd(&["SET", "a", "2"]).await,
            Reply::Simple("QUEUED".into())
        );
        let refused = via.cmd(&["CLUSTER", "SLOTS"]).await;
        assert_eq!(refused, plain.cmd(&["CLUSTER", "SLOTS"]).await);
        assert_eq!(
            via.cmd(&["EXEC"]).await.error_text(),
            Some("EXECABORT Transaction discarded because of previous errors.")
        );
        assert_eq!(via.cmd(&["GET", "a"]).await, Reply::bulk("1"));
    })
    .await
}

/// With a seed that is down and a replica as the next one, commands without a key still run on a
/// primary (the one owning the lowest slot): `ROLE`, a keyless script that writes, `SELECT 0` and
/// `PUBLISH`; a `SUBSCRIBE` leases a connection to that primary. Shard channels go to their
/// slot's owner; `WAIT` and `MONITOR` are refused naming the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_commands_and_subscriptions_run_on_a_primary() {
    bounded(LIMIT, "keyless", async {
        let cluster = Cluster::start(ClusterOptions::default()).await;
        let primaries = cluster.primaries().await;
        let first = primaries[0];
        let replica = cluster.replicas_of(first).await[0];
        let down = common::free_port();
        let mut ports = vec![down, cluster.node(replica).port()];
        ports.extend(primaries.iter().map(|&p| cluster.node(p).port()));
        let proxy = proxy_seeded(&cluster, &ports).await;
        let mut via = RawClient::connect(proxy.addr()).await;

        let role = via.cmd(&["ROLE"]).await;
        let Reply::Array(Some(role)) = role else {
            panic!("ROLE: {role:?}");
        };
        assert_eq!(role[0], Reply::bulk("master"));
        assert_eq!(via.cmd(&["SELECT", "0"]).await, Reply::ok());
        assert_eq!(
            via.cmd(&["AUTH", "x"]).await,
            cluster.cmd(first, &["AUTH", "x"]).await
        );
        // A script without keys, on the first primary (a replica would refuse the write).
        let key = cluster.key_on(first, "scripted").await;
        let write = format!("return redis.call('SET', '{key}', 'yes')");
        assert_eq!(via.cmd(&["EVAL", &write, "0"]).await, Reply::ok());
        assert_eq!(cluster.cmd(first, &["GET", &key]).await, Reply::bulk("yes"));

        // SUBSCRIBE: on a lease to the first primary; PUBLISH from anywhere reaches it.
        let mut sub = RawClient::connect(proxy.addr()).await;
        let confirm = sub.cmd(&["SUBSCRIBE", "news"]).await;
        assert!(matches!(confirm, Reply::Array(Some(_))), "{confirm:?}");
        assert_eq!(
            cluster.cmd(first, &["PUBSUB", "NUMSUB", "news"]).await,
            Reply::Array(Some(vec![Reply::bulk("news"), Reply::Int(1)]))
        );
        let last = *primaries.last().unwrap();
        // Counted on the node it is published on (none there), delivered cluster-wide.
        assert_eq!(
            cluster.cmd(last, &["PUBLISH", "news", "m1"]).await,
            Reply::Int(0)
        );
        assert_eq!(
            sub.read_reply().await,
            Reply::Array(Some(vec![
                Reply::bulk("message"),
                Reply::bulk("news"),
                Reply::bulk("m1")
            ]))
        );
        // PUBLISH through respipe runs on the subscriber's node: it counts the subscriber.
        assert_eq!(via.cmd(&["PUBLISH", "news", "m2"]).await, Reply::Int(1));
        assert_eq!(strings(&sub.read_reply().await)[2], "m2");

        // RESP3 runs commands in subscribe mode: CLUSTER still answers as without cluster.
        let mut sub3 = RawClient::connect(proxy.addr()).await;
        assert!(matches!(sub3.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
        assert!(matches!(
            sub3.cmd(&["SUBSCRIBE", "news3"]).await,
            Reply::Push(_)
        ));
        assert_eq!(
            sub3.cmd(&["CLUSTER", "NODES"]).await.error_text(),
            Some("ERR This instance has cluster support disabled")
        );
        assert_eq!(sub3.cmd(&["PING", "x"]).await, Reply::bulk("x"));

        // Shard channels: on their slot's owner, from SSUBSCRIBE to SPUBLISH.
        let channel = cluster.key_on(last, "shard").await;
        let mut ssub = RawClient::connect(proxy.addr()).await;
        let confirm = ssub.cmd(&["SSUBSCRIBE", &channel]).await;
        assert_eq!(
            confirm,
            Reply::Array(Some(vec![
                Reply::bulk("ssubscribe"),
                Reply::bulk(&channel),
                Reply::Int(1)
            ]))
        );
        assert_eq!(
            via.cmd(&["SPUBLISH", &channel, "s1"]).await,
            Reply::Int(1),
            "SPUBLISH on the channel's owner"
        );
        assert_eq!(
            strings(&ssub.read_reply().await),
            ["smessage", channel.as_str(), "s1"]
        );
        // Another node's shard channel on the same connection: refused, saying why.
        let elsewhere = cluster.key_on(first, "shard").await;
        let refused = ssub.cmd(&["SSUBSCRIBE", &elsewhere]).await;
        assert!(
            refused
                .error_text()
                .is_some_and(|e| e.contains("shard channels of two cluster nodes")),
            "{refused:?}"
        );
        // Channels in two slots in one command: Redis Cluster's own answer.
        let mut other = RawClient::connect(proxy.addr()).await;
        let two = ["SSUBSCRIBE", channel.as_str(), elsewhere.as_str()];
        assert_eq!(other.cmd(&two).await, cluster.cmd(first, &two).await);

        for (cmd, why) in [
            (&["WAIT", "0", "0"][..], "it counts one node's replicas"),
            (&["MONITOR"], "it would show one node only"),
        ] {
            let refused = via.cmd(cmd).await;
            assert!(
                refused
                    .error_text()
                    .is_some_and(|e| e.contains("Redis Cluster upstream") && e.contains(why)),
                "{cmd:?}: {refused:?}"
            );
        }
    })
    .await
}

/// Transactions (`MULTI` held back until its first keyed command), `WATCH` and blocking commands
/// run on a connection to their slot's owner; keys in several slots get `CROSSSLOT` in Redis
/// Cluster's words, aborting the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_watch_and_blocking_on_the_slot_owner() {
    bounded(LIMIT, "leases", async {
        let (cluster, proxy) = primaries_behind_respipe().await;
        let primaries = cluster.primaries().await;
        let last = *primaries.last().unwrap();
        let k = cluster.key_on(last, "tx").await;
        let other = cluster.key_on(primaries[0], "tx").await;
        let crossslot =
            Reply::Error("CROSSSLOT Keys in request don't hash to the same slot".into());
        let queued = Reply::Simple("QUEUED".into());
        let mut via = RawClient::connect(proxy.addr()).await;

        assert_eq!(via.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(via.cmd(&["SET", &k, "1"]).await, queued);
        assert_eq!(via.cmd(&["INCR", &k]).await, queued);
        assert_eq!(
            via.cmd(&["EXEC"]).await,
            Reply::Array(Some(vec![Reply::ok(), Reply::Int(2)]))
        );
        assert_eq!(cluster.cmd(last, &["GET", &k]).await, Reply::bulk("2"));

        // A key of another node inside the transaction: refused, the transaction aborted.
        assert_eq!(via.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(via.cmd(&["INCR", &k]).await, queued);
        assert_eq!(via.cmd(&["INCR", &other]).await, crossslot);
        assert_eq!(
            via.cmd(&["EXEC"]).await.error_text(),
            Some("EXECABORT Transaction discarded because of previous errors.")
        );
        assert_eq!(via.cmd(&["GET", &k]).await, Reply::bulk("2"));

        // WATCH on the key's owner: a change from another client fails the transaction.
        assert_eq!(via.cmd(&["WATCH", &k]).await, Reply::ok());
        assert_eq!(
            cluster.cmd(last, &["SET", &k, "changed"]).await,
            Reply::ok()
        );
        assert_eq!(via.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(via.cmd(&["SET", &k, "mine"]).await, queued);
        assert_eq!(via.cmd(&["EXEC"]).await, Reply::Array(None));
        assert_eq!(via.cmd(&["GET", &k]).await, Reply::bulk("changed"));
        assert_eq!(via.cmd(&["WATCH", &k, &other]).await, crossslot);

        // A blocking pop on the list's owner, woken by a push straight to that node.
        let list = cluster.key_on(last, "list").await;
        via.send(&common::encode(&["BLPOP", list.as_str(), "10"]))
            .await;
        let owner = &cluster;
        poll_until(
            Duration::from_secs(10),
            "BLPOP blocks on the owner",
            || async move {
                let info = text(&owner.cmd(last, &["INFO", "clients"]).await);
                info.contains("blocked_clients:1").then_some(())
            },
        )
        .await;
        assert_eq!(
            cluster.cmd(last, &["RPUSH", &list, "x"]).await,
            Reply::Int(1)
        );
        assert_eq!(
            via.read_reply().await,
            Reply::Array(Some(vec![Reply::bulk(&list), Reply::bulk("x")]))
        );
        assert_eq!(via.cmd(&["BLPOP", &list, &other, "1"]).await, crossslot);
    })
    .await
}

/// A `SCAN` cursor names the primaries it was given for: once they change (here the lowest slot
/// moves to another primary, so their order by lowest slot does), the cursor is refused with a
/// clear error rather than followed onto the wrong node, and a new scan from 0 sees every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_cursor_is_refused_once_the_primaries_change() {
    bounded(LIMIT, "scan topology", async {
        let (cluster, proxy) = primaries_behind_respipe().await;
        let mut via = RawClient::connect(proxy.addr()).await;
        let mut mset = vec!["MSET".to_owned()];
        for k in keys() {
            mset.extend([k, "v".to_owned()]);
        }
        assert_eq!(via.cmd(&mset).await, Reply::ok());
        // A cursor on the second primary.
        let primaries = cluster.primaries().await;
        let mut cursor = String::from("0");
        loop {
            let reply = via.cmd(&["SCAN", &cursor, "COUNT", "5"]).await;
            let Reply::Array(Some(parts)) = &reply else {
                panic!("SCAN: {reply:?}");
            };
            cursor = text(&parts[0]);
            let index = cursor.parse::<u64>().unwrap() & 1023;
            if index == 1 {
                break;
            }
            assert_ne!(cursor, "0", "SCAN ended before the second primary");
        }
        let slot0 = common::cluster::key_in_slot(0, "moved");
        cluster.migrate_slot(0, *primaries.last().unwrap()).await;
        // A command on the moved slot lets respipe notice (its background check at the latest).
        let _ = via.cmd(&["GET", &slot0]).await;
        let refused = poll_until(Duration::from_secs(45), "the old cursor is refused", || {
            let cursor = cursor.clone();
            let addr = proxy.addr();
            async move {
                let mut c = RawClient::connect(addr).await;
                let reply = c.cmd(&["SCAN", &cursor, "COUNT", "5"]).await;
                reply.error_text().map(str::to_owned)
            }
        })
        .await;
        assert!(
            refused.contains("primaries changed") && refused.contains("cursor 0"),
            "{refused}"
        );
        let all: BTreeSet<String> = keys().into_iter().collect();
        let mut scanned = scan_all(&mut via, &[]).await;
        scanned.retain(|k| k.starts_with("k:"));
        once_each(&scanned, &all, "SCAN after the change");
    })
    .await
}
