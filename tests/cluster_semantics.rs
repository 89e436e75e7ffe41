//! Issue 12: the single-server semantics through respipe in front of a real Redis Cluster (SELECT,
//! AUTH, HELLO, CLIENT, MULTI/EXEC/WATCH, blocking commands, pub/sub and sharded pub/sub, MONITOR,
//! scripts and functions), as Redis Cluster and TOPOLOGY.md section 3 prescribe for a proxy that
//! presents the cluster as one Redis; and real clients with their default settings (redis-cli,
//! redis-benchmark, redis-py in RESP2 and RESP3). Keys are placed on every primary in turn, so each
//! behaviour is proven on every node, not only on the first seed.
//!
//! The clusters here have no replicas (semantics do not depend on them, and they start faster);
//! `tests/cluster.rs` and `tests/cluster_failover.rs` run 3 primaries + 3 replicas.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{key_in_slot, run_tool, Cluster, ClusterOptions};
use common::{bounded, cmd_until, encode, poll_until, BinProxy, RawClient, Reply, CMD_UNTIL};

/// Bound of one test: a cluster start plus the test's own work.
const LIMIT: Duration = Duration::from_secs(120);
/// How long a tool (redis-cli, redis-benchmark, python) may run.
const TOOL: Duration = Duration::from_secs(60);

/// 3 primaries, no replicas, and the respipe binary in front.
async fn start() -> (Cluster, BinProxy) {
    start_with(ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    })
    .await
}

async fn start_with(options: ClusterOptions) -> (Cluster, BinProxy) {
    let cluster = Cluster::start(options).await;
    let proxy = cluster.respipe(&[]).await;
    (cluster, proxy)
}

/// One key per primary, `{TAG}name` (in the primaries' slot order).
async fn keys_on_every_primary(cluster: &Cluster, name: &str) -> Vec<String> {
    let mut keys = Vec::new();
    for p in cluster.primaries().await {
        keys.push(cluster.key_on(p, name).await);
    }
    keys
}

#[track_caller]
fn assert_error_with(r: &Reply, prefix: &str, mentions: &str) {
    match r {
        Reply::Error(e)
            if e.starts_with(prefix) && e.to_lowercase().contains(&mentions.to_lowercase()) => {}
        other => panic!("expected an error starting {prefix:?} naming {mentions:?}, got {other:?}"),
    }
}

/// The value of `field` in a RESP3 map.
fn field<'a>(map: &'a Reply, field: &str) -> &'a Reply {
    let Reply::Map(pairs) = map else {
        panic!("not a map: {map:?}");
    };
    pairs
        .iter()
        .find(|(k, _)| *k == Reply::bulk(field) || *k == Reply::Simple(field.into()))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {field} in {map:?}"))
}

fn bulks(items: &[&str]) -> Reply {
    Reply::Array(Some(items.iter().map(Reply::bulk).collect()))
}

// ---------------------------------------------------------------------------------------------
// Connection state
// ---------------------------------------------------------------------------------------------

/// SELECT 0 is accepted (a cluster has db 0 only) and the session goes on in db 0 on every node;
/// SELECT 1 is refused with an error that says so, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_0_works_and_select_1_is_refused() {
    bounded(LIMIT, "select", async {
        let (cluster, proxy) = start().await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["SELECT", "0"]).await, Reply::ok());
        assert_error_with(&c.cmd(&["SELECT", "1"]).await, "ERR", "SELECT");
        for k in keys_on_every_primary(&cluster, "select").await {
            assert_eq!(c.cmd(&["SET", &k, "v"]).await, Reply::ok(), "{k}");
            assert_eq!(c.cmd(&["GET", &k]).await, Reply::bulk("v"), "{k}");
            assert_eq!(cluster.get_on_owner(&k).await, Reply::bulk("v"), "{k}");
        }
    })
    .await
}

/// A cluster whose nodes want a password (`requirepass` + `masterauth`): respipe signs in with the
/// one in its `redis-cluster://:PW@` URL; a client's AUTH is checked as Redis checks it (a wrong
/// password refused, the right one accepted), and an ACL user (created on every node, as ACLs are
/// per node) gets exactly its rights on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_against_a_cluster_with_a_password() {
    bounded(LIMIT, "auth", async {
        let (cluster, proxy) = start_with(ClusterOptions {
            replicas: 0,
            password: Some("clusterpw".into()),
            ..ClusterOptions::default()
        })
        .await;
        for i in cluster.running().collect::<Vec<_>>() {
            let setuser = ["ACL", "SETUSER", "app", "on", ">apppw", "~app:*", "+@all"];
            assert_eq!(cluster.cmd(i, &setuser).await, Reply::ok());
        }
        let keys = keys_on_every_primary(&cluster, "k").await;
        let mut c = RawClient::connect(proxy.listen).await;
        for k in &keys {
            assert_eq!(c.cmd(&["SET", k, "1"]).await, Reply::ok(), "{k}");
        }
        assert_error_with(&c.cmd(&["AUTH", "wrong"]).await, "WRONGPASS", "password");
        assert_eq!(c.cmd(&["AUTH", "clusterpw"]).await, Reply::ok());
        assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, Reply::bulk("default"));

        let mut app = RawClient::connect(proxy.listen).await;
        assert_error_with(
            &app.cmd(&["AUTH", "app", "nope"]).await,
            "WRONGPASS",
            "password",
        );
        assert_eq!(app.cmd(&["AUTH", "app", "apppw"]).await, Reply::ok());
        assert_eq!(app.cmd(&["ACL", "WHOAMI"]).await, Reply::bulk("app"));
        for k in &keys {
            let tag = &k[..k.find('}').unwrap() + 1];
            let own = format!("app:{tag}");
            assert_eq!(app.cmd(&["SET", &own, "x"]).await, Reply::ok(), "{own}");
            assert_eq!(cluster.get_on_owner(&own).await, Reply::bulk("x"));
            assert_error_with(&app.cmd(&["GET", k]).await, "NOPERM", "");
        }
    })
    .await
}

/// HELLO 3 switches the session to RESP3 (a map reply, maps and nulls from every node), HELLO 2
/// back to RESP2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_2_and_3() {
    bounded(LIMIT, "hello", async {
        let (cluster, proxy) = start().await;
        let keys = keys_on_every_primary(&cluster, "h").await;
        for k in &keys {
            let owner = cluster.primary_of_key(k).await;
            assert_eq!(
                cluster.cmd(owner, &["HSET", k, "f", "v"]).await,
                Reply::Int(1)
            );
        }
        let mut c = RawClient::connect(proxy.listen).await;
        let hello = c.cmd(&["HELLO", "3"]).await;
        assert_eq!(field(&hello, "proto"), &Reply::Int(3), "{hello:?}");
        assert_eq!(field(&hello, "server"), &Reply::bulk("redis"));
        for k in &keys {
            let pairs = vec![(Reply::bulk("f"), Reply::bulk("v"))];
            assert_eq!(c.cmd(&["HGETALL", k]).await, Reply::Map(pairs), "{k}");
            assert_eq!(c.cmd(&["GET", &format!("{k}:none")]).await, Reply::Null);
        }
        let hello = c.cmd(&["HELLO", "2"]).await;
        assert!(matches!(hello, Reply::Array(Some(_))), "{hello:?}");
        for k in &keys {
            assert_eq!(c.cmd(&["HGETALL", k]).await, bulks(&["f", "v"]), "{k}");
            assert_eq!(c.cmd(&["GET", &format!("{k}:none")]).await, Reply::nil());
        }
    })
    .await
}

/// CLIENT SETNAME / GETNAME per connection; CLIENT ID an integer that stays the same for one
/// connection and differs between two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_setname_getname_id() {
    bounded(LIMIT, "client", async {
        let (cluster, proxy) = start().await;
        let mut a = RawClient::connect(proxy.listen).await;
        let mut b = RawClient::connect(proxy.listen).await;
        assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, Reply::nil());
        assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alpha"]).await, Reply::ok());
        assert_eq!(b.cmd(&["CLIENT", "SETNAME", "beta"]).await, Reply::ok());
        // Commands on every node in between do not lose the names.
        for k in keys_on_every_primary(&cluster, "c").await {
            assert_eq!(a.cmd(&["SET", &k, "1"]).await, Reply::ok());
        }
        assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, Reply::bulk("alpha"));
        assert_eq!(b.cmd(&["CLIENT", "GETNAME"]).await, Reply::bulk("beta"));
        let Reply::Int(id) = a.cmd(&["CLIENT", "ID"]).await else {
            panic!("CLIENT ID is not an integer");
        };
        assert_eq!(a.cmd(&["CLIENT", "ID"]).await, Reply::Int(id));
        assert_ne!(b.cmd(&["CLIENT", "ID"]).await, Reply::Int(id));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------------------------

/// MULTI/EXEC whose keys share a slot (hash tags), on every primary: queued, executed
/// atomically on the slot's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_on_one_slot() {
    bounded(LIMIT, "multi", async {
        let (cluster, proxy) = start().await;
        let mut c = RawClient::connect(proxy.listen).await;
        for k in keys_on_every_primary(&cluster, "a").await {
            let tag = &k[..k.find('}').unwrap() + 1];
            let other = format!("{tag}b");
            assert_eq!(c.cmd(&["MULTI"]).await, Reply::ok());
            let queued = Reply::Simple("QUEUED".into());
            assert_eq!(c.cmd(&["SET", &k, "1"]).await, queued);
            assert_eq!(c.cmd(&["INCR", &other]).await, queued);
            assert_eq!(c.cmd(&["GET", &k]).await, queued);
            let exec = c.cmd(&["EXEC"]).await;
            let want = vec![Reply::ok(), Reply::Int(1), Reply::bulk("1")];
            assert_eq!(exec, Reply::Array(Some(want)), "{k}");
            assert_eq!(cluster.get_on_owner(&other).await, Reply::bulk("1"));
        }
    })
    .await
}

/// What Redis Cluster says of a transaction whose keys are in two slots: `-CROSSSLOT Keys in
/// request don't hash to the same slot`. Redis itself says it at EXEC when one node owns both slots
/// (the commands were QUEUED), and `-MOVED` at the crossing command when it does not; respipe may
/// say it either at EXEC or at the crossing command (then EXEC answers EXECABORT), never `-MOVED`,
/// and nothing of the transaction runs. Both cases: two slots of one node, and of two nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_across_slots_is_crossslot() {
    bounded(LIMIT, "multi crossslot", async {
        let (cluster, proxy) = start().await;
        let keys = keys_on_every_primary(&cluster, "x").await;
        let owners = cluster.slot_owners().await;
        let slot = usize::from(respipe::cluster::key_slot(keys[0].as_bytes()));
        let neighbour = if owners[slot + 1] == owners[slot] {
            slot + 1
        } else {
            slot - 1
        };
        let same_node = common::cluster::key_in_slot(neighbour as u16, "x");
        let crossslot = "CROSSSLOT Keys in request don't hash to the same slot";
        let queued = Reply::Simple("QUEUED".into());
        let mut c = RawClient::connect(proxy.listen).await;
        for second in [&same_node, &keys[1]] {
            assert_eq!(c.cmd(&["MULTI"]).await, Reply::ok());
            assert_eq!(c.cmd(&["SET", &keys[0], "1"]).await, queued);
            match c.cmd(&["SET", second, "1"]).await {
                r if r == queued => {
                    assert_error_with(&c.cmd(&["EXEC"]).await, crossslot, "");
                }
                r => {
                    assert_error_with(&r, crossslot, "");
                    assert_error_with(&c.cmd(&["EXEC"]).await, "EXECABORT", "discarded");
                }
            }
            assert_eq!(cluster.get_on_owner(&keys[0]).await, Reply::nil());
            assert_eq!(cluster.get_on_owner(second).await, Reply::nil());
        }
    })
    .await
}

/// WATCH, then another client writes the watched key: EXEC answers nil and nothing runs; without
/// the conflict the same transaction runs. On every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_a_conflicting_write_make_exec_nil() {
    bounded(LIMIT, "watch", async {
        let (cluster, proxy) = start().await;
        let mut a = RawClient::connect(proxy.listen).await;
        let mut b = RawClient::connect(proxy.listen).await;
        for k in keys_on_every_primary(&cluster, "w").await {
            assert_eq!(a.cmd(&["WATCH", &k]).await, Reply::ok());
            assert_eq!(a.cmd(&["GET", &k]).await, Reply::nil());
            assert_eq!(a.cmd(&["MULTI"]).await, Reply::ok());
            assert_eq!(
                a.cmd(&["SET", &k, "from-a"]).await,
                Reply::Simple("QUEUED".into())
            );
            assert_eq!(b.cmd(&["SET", &k, "from-b"]).await, Reply::ok());
            assert_eq!(a.cmd(&["EXEC"]).await, Reply::Array(None), "{k}");
            assert_eq!(cluster.get_on_owner(&k).await, Reply::bulk("from-b"));

            assert_eq!(a.cmd(&["WATCH", &k]).await, Reply::ok());
            assert_eq!(a.cmd(&["MULTI"]).await, Reply::ok());
            assert_eq!(
                a.cmd(&["SET", &k, "from-a"]).await,
                Reply::Simple("QUEUED".into())
            );
            assert_eq!(
                a.cmd(&["EXEC"]).await,
                Reply::Array(Some(vec![Reply::ok()]))
            );
            assert_eq!(cluster.get_on_owner(&k).await, Reply::bulk("from-a"));
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Blocking commands and pub/sub
// ---------------------------------------------------------------------------------------------

/// BLPOP blocks on the list's owner (the node reports the blocked client) and is served by
/// another client's LPUSH through respipe. On every primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_is_served_by_a_push_from_another_client() {
    bounded(LIMIT, "blpop", async {
        let (cluster, proxy) = start().await;
        let mut a = RawClient::connect(proxy.listen).await;
        let mut b = RawClient::connect(proxy.listen).await;
        for k in keys_on_every_primary(&cluster, "list").await {
            a.send(&encode(&["BLPOP", &k, "20"])).await;
            cluster
                .wait_blocked(cluster.primary_of_key(&k).await, 1)
                .await;
            assert_eq!(b.cmd(&["LPUSH", &k, "v"]).await, Reply::Int(1));
            assert_eq!(a.read_reply().await, bulks(&[&k, "v"]), "{k}");
        }
        assert_eq!(a.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

/// SUBSCRIBE (channels whose names hash to every primary) and PSUBSCRIBE on one client; PUBLISH
/// from another client, whose last command went to another node, and on every node directly:
/// every message arrives (Redis Cluster forwards PUBLISH to every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_gets_messages_published_from_any_node() {
    bounded(LIMIT, "pubsub", async {
        let (cluster, proxy) = start().await;
        let channels = keys_on_every_primary(&cluster, "ch").await;
        let mut s = RawClient::connect(proxy.listen).await;
        let mut args = vec!["SUBSCRIBE"];
        args.extend(channels.iter().map(String::as_str));
        s.send(&encode(&args)).await;
        for (n, ch) in channels.iter().enumerate() {
            let want = Reply::Array(Some(vec![
                Reply::bulk("subscribe"),
                Reply::bulk(ch),
                Reply::Int(n as i64 + 1),
            ]));
            assert_eq!(s.read_reply().await, want);
        }
        s.send(&encode(&["PSUBSCRIBE", "*ch"])).await;
        let psub = [Reply::bulk("psubscribe"), Reply::bulk("*ch")];
        let want = Reply::Array(Some([&psub[..], &[Reply::Int(4)]].concat()));
        assert_eq!(s.read_reply().await, want);

        let mut p = RawClient::connect(proxy.listen).await;
        let elsewhere = keys_on_every_primary(&cluster, "pub").await;
        for (ch, k) in channels.iter().zip(elsewhere.iter().rev()) {
            assert_eq!(p.cmd(&["SET", k, "1"]).await, Reply::ok());
            let published = p.cmd(&["PUBLISH", ch, "hello"]).await;
            assert!(matches!(published, Reply::Int(_)), "{published:?}");
            expect_message(&mut s, ch, "hello").await;
        }
        // Published on each node directly: whichever node respipe subscribed on, all arrive.
        for i in cluster.running().collect::<Vec<_>>() {
            let text = format!("direct from node {i}");
            cluster.cmd(i, &["PUBLISH", &channels[0], &text]).await;
            expect_message(&mut s, &channels[0], &text).await;
        }
    })
    .await
}

/// Reads the `message` and the `pmessage` (pattern `*ch`) of one publication of `text` on `ch`.
async fn expect_message(s: &mut RawClient, ch: &str, text: &str) {
    let mut got = vec![s.read_reply().await, s.read_reply().await];
    got.sort_by_key(|r| format!("{r:?}"));
    let mut want = vec![
        bulks(&["message", ch, text]),
        bulks(&["pmessage", "*ch", ch, text]),
    ];
    want.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(got, want, "{ch}");
}

/// SSUBSCRIBE to a shard channel on every primary; SPUBLISH from another client reaches the
/// subscriber (one receiver, on the channel's owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssubscribe_gets_spublish() {
    bounded(LIMIT, "ssubscribe", async {
        let (cluster, proxy) = start().await;
        let mut p = RawClient::connect(proxy.listen).await;
        for ch in keys_on_every_primary(&cluster, "sch").await {
            let mut s = RawClient::connect(proxy.listen).await;
            let want = Reply::Array(Some(vec![
                Reply::bulk("ssubscribe"),
                Reply::bulk(&ch),
                Reply::Int(1),
            ]));
            assert_eq!(s.cmd(&["SSUBSCRIBE", &ch]).await, want);
            assert_eq!(p.cmd(&["SPUBLISH", &ch, "hi"]).await, Reply::Int(1));
            assert_eq!(s.read_reply().await, bulks(&["smessage", &ch, "hi"]));
        }
    })
    .await
}

/// A shard channel's slot migrates to another primary while a client is subscribed to two of its
/// channels through respipe (RESP2, then RESP3): the old owner unsubscribes them (`sunsubscribe`),
/// respipe subscribes them again on the new owner, and the client never sees it: the first frame
/// it gets after the move is the first message the new owner delivers (SPUBLISH there directly,
/// polled until a subscriber gets it), then one published through respipe. Its own SUNSUBSCRIBE
/// is confirmed as usual afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssubscribe_follows_its_slot_to_another_primary() {
    bounded(LIMIT, "ssubscribe across a migration", async {
        let (cluster, proxy) = start().await;
        let mut p = RawClient::connect(proxy.listen).await;
        for (resp3, slot) in [(false, 100), (true, 9000)] {
            let from = cluster.primary_of(slot).await;
            let primaries = cluster.primaries().await;
            let to = *primaries.iter().find(|&&n| n != from).unwrap();
            let channels = [key_in_slot(slot, "moving"), key_in_slot(slot, "moving:2")];
            let mut s = RawClient::connect(proxy.listen).await;
            if resp3 {
                assert!(matches!(s.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
            }
            s.send(&encode(&["SSUBSCRIBE", &channels[0], &channels[1]]))
                .await;
            for (n, ch) in channels.iter().enumerate() {
                let want = shard_frame(resp3, "ssubscribe", ch, Reply::Int(n as i64 + 1));
                assert_eq!(s.read_reply().await, want);
            }
            assert_eq!(
                p.cmd(&["SPUBLISH", &channels[0], "before"]).await,
                Reply::Int(1)
            );
            let before = shard_frame(resp3, "smessage", &channels[0], Reply::bulk("before"));
            assert_eq!(s.read_reply().await, before);

            cluster.migrate_slot(slot, to).await;
            for ch in &channels {
                let args = ["SPUBLISH", ch.as_str(), "direct"];
                poll_until(CMD_UNTIL, "a subscriber on the new owner", || async {
                    (cluster.cmd(to, &args).await == Reply::Int(1)).then_some(())
                })
                .await;
                let direct = shard_frame(resp3, "smessage", ch, Reply::bulk("direct"));
                assert_eq!(s.read_reply().await, direct, "resp3: {resp3}");
                let args = ["SPUBLISH", ch.as_str(), "through respipe"];
                cmd_until(&mut p, &args, "SPUBLISH after the move", |r| {
                    *r == Reply::Int(1)
                })
                .await;
                let through = shard_frame(resp3, "smessage", ch, Reply::bulk("through respipe"));
                assert_eq!(s.read_reply().await, through, "resp3: {resp3}");
            }
            s.send(&encode(&["SUNSUBSCRIBE", &channels[0], &channels[1]]))
                .await;
            for (n, ch) in channels.iter().enumerate() {
                let want = shard_frame(resp3, "sunsubscribe", ch, Reply::Int(1 - n as i64));
                assert_eq!(s.read_reply().await, want);
            }
            assert_eq!(s.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        }
    })
    .await
}

/// One connection holds shard channels of one node only, so a channel whose slot migrates while the
/// lease keeps a channel of another slot of the node cannot follow it: the client gets the old
/// owner's `sunsubscribe` (count 1), as Redis Cluster gives it, and keeps the other channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssubscribe_gets_the_sunsubscribe_when_the_node_keeps_another_channel() {
    bounded(LIMIT, "ssubscribe, one of two slots migrates", async {
        let (cluster, proxy) = start().await;
        let (moving, staying) = (key_in_slot(100, "moving"), key_in_slot(101, "staying"));
        let from = cluster.primary_of(100).await;
        assert_eq!(
            cluster.primary_of(101).await,
            from,
            "one node owns both slots"
        );
        let primaries = cluster.primaries().await;
        let to = *primaries.iter().find(|&&n| n != from).unwrap();
        let mut s = RawClient::connect(proxy.listen).await;
        for (n, ch) in [&moving, &staying].into_iter().enumerate() {
            let want = shard_frame(false, "ssubscribe", ch, Reply::Int(n as i64 + 1));
            assert_eq!(s.cmd(&["SSUBSCRIBE", ch]).await, want);
        }
        cluster.migrate_slot(100, to).await;
        let gone = shard_frame(false, "sunsubscribe", &moving, Reply::Int(1));
        assert_eq!(s.read_reply().await, gone);
        let mut p = RawClient::connect(proxy.listen).await;
        assert_eq!(p.cmd(&["SPUBLISH", &staying, "hi"]).await, Reply::Int(1));
        let hi = shard_frame(false, "smessage", &staying, Reply::bulk("hi"));
        assert_eq!(s.read_reply().await, hi);
    })
    .await
}

/// A slot no node takes over (`CLUSTER DELSLOTS` on its owner, which unsubscribes its shard
/// channels): respipe looks for a new owner for `command_timeout`, then gives the client the
/// `sunsubscribe` after all, and the client is out of subscribe mode, as with Redis itself: its
/// commands run on every node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssubscribe_gets_the_sunsubscribe_when_no_node_takes_the_slot() {
    bounded(LIMIT, "ssubscribe, slot deleted", async {
        let cluster = Cluster::start(ClusterOptions {
            replicas: 0,
            ..ClusterOptions::default()
        })
        .await;
        let proxy = cluster.respipe(&["--command-timeout", "1s"]).await;
        let ch = key_in_slot(100, "orphan");
        let mut s = RawClient::connect(proxy.listen).await;
        let want = shard_frame(false, "ssubscribe", &ch, Reply::Int(1));
        assert_eq!(s.cmd(&["SSUBSCRIBE", &ch]).await, want);
        let owner = cluster.primary_of(100).await;
        let delslots = cluster.cmd(owner, &["CLUSTER", "DELSLOTS", "100"]).await;
        assert_eq!(delslots, Reply::ok());
        let gone = shard_frame(false, "sunsubscribe", &ch, Reply::Int(0));
        assert_eq!(s.read_reply().await, gone);
        assert_eq!(s.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        // Out of the stream: commands go where their keys live again (once the slot is back).
        let addslots = cluster.cmd(owner, &["CLUSTER", "ADDSLOTS", "100"]).await;
        assert_eq!(addslots, Reply::ok());
        cluster.wait_ok().await;
        for k in keys_on_every_primary(&cluster, "after").await {
            assert_eq!(s.cmd(&["SET", &k, "v"]).await, Reply::ok(), "{k}");
        }
    })
    .await
}

/// Redis counts shard channels apart from channels and patterns: a subscriber of both on one node
/// whose SUNSUBSCRIBE answers count 0 is still subscribed to its channel (Redis keeps the
/// connection in subscribe mode), and respipe keeps the lease that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssubscribe_then_sunsubscribe_keeps_the_subscribe_channels() {
    bounded(LIMIT, "sunsubscribe with channels left", async {
        let (cluster, proxy) = start().await;
        // Keyless commands, SUBSCRIBE among them, go to the owner of slot 0.
        let node = cluster.primary_of(0).await;
        let shard = key_in_slot(1, "shard");
        assert_eq!(cluster.primary_of(1).await, node);
        let mut s = RawClient::connect(proxy.listen).await;
        let want = shard_frame(false, "subscribe", "news", Reply::Int(1));
        assert_eq!(s.cmd(&["SUBSCRIBE", "news"]).await, want);
        let want = shard_frame(false, "ssubscribe", &shard, Reply::Int(1));
        assert_eq!(s.cmd(&["SSUBSCRIBE", &shard]).await, want);
        let want = shard_frame(false, "sunsubscribe", &shard, Reply::Int(0));
        assert_eq!(s.cmd(&["SUNSUBSCRIBE", &shard]).await, want);
        // Still in subscribe mode, and the node still has the subscriber.
        assert_eq!(s.cmd(&["PING"]).await, bulks(&["pong", ""]));
        let published = cluster.cmd(node, &["PUBLISH", "news", "hi"]).await;
        assert_eq!(published, Reply::Int(1));
        assert_eq!(s.read_reply().await, bulks(&["message", "news", "hi"]));
    })
    .await
}

/// A frame of a shard channel's subscription stream: an array in RESP2, a push in RESP3.
fn shard_frame(resp3: bool, kind: &str, channel: &str, last: Reply) -> Reply {
    let items = vec![Reply::bulk(kind), Reply::bulk(channel), last];
    if resp3 {
        Reply::Push(items)
    } else {
        Reply::Array(Some(items))
    }
}

/// MONITOR is refused with an error that names it (one node's stream would not be the whole
/// cluster's), and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_is_refused_with_a_clear_error() {
    bounded(LIMIT, "monitor", async {
        let (_cluster, proxy) = start().await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_error_with(&c.cmd(&["MONITOR"]).await, "ERR", "monitor");
        assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Scripts and functions
// ---------------------------------------------------------------------------------------------

/// EVAL with two keys of one slot, EVALSHA after SCRIPT LOAD, FCALL after FUNCTION LOAD: each on
/// keys of every primary (so the script and the library must be on every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_evalsha_and_fcall_on_every_node() {
    bounded(LIMIT, "scripts", async {
        let (cluster, proxy) = start().await;
        let mut c = RawClient::connect(proxy.listen).await;
        let keys = keys_on_every_primary(&cluster, "s").await;
        let swap = "redis.call('set', KEYS[1], ARGV[1]); \
                    redis.call('set', KEYS[2], ARGV[2]); \
                    return {redis.call('get', KEYS[1]), redis.call('get', KEYS[2])}";
        for k in &keys {
            let other = format!("{k}:2");
            let r = c.cmd(&["EVAL", swap, "2", k, &other, "a", "b"]).await;
            assert_eq!(r, bulks(&["a", "b"]), "EVAL on {k}");
            assert_eq!(cluster.get_on_owner(&other).await, Reply::bulk("b"));
        }

        let Reply::Bulk(Some(sha)) = c
            .cmd(&["SCRIPT", "LOAD", "return redis.call('incr', KEYS[1])"])
            .await
        else {
            panic!("SCRIPT LOAD");
        };
        let sha = String::from_utf8(sha).unwrap();
        for k in &keys {
            let counter = format!("{k}:n");
            let r = c.cmd(&["EVALSHA", &sha, "1", &counter]).await;
            assert_eq!(r, Reply::Int(1), "EVALSHA on {counter}");
        }

        let lib = "#!lua name=harnesslib\n\
                   redis.register_function('touchit', function(keys, args) \
                   return redis.call('set', keys[1], args[1]) end)";
        assert_eq!(
            c.cmd(&["FUNCTION", "LOAD", lib]).await,
            Reply::bulk("harnesslib")
        );
        for k in &keys {
            let f = format!("{k}:f");
            let r = c.cmd(&["FCALL", "touchit", "1", &f, "x"]).await;
            assert_eq!(r, Reply::ok(), "FCALL on {f}");
            assert_eq!(cluster.get_on_owner(&f).await, Reply::bulk("x"));
        }
        assert_eq!(
            c.cmd(&["FUNCTION", "DELETE", "harnesslib"]).await,
            Reply::ok()
        );
        for i in cluster.running().collect::<Vec<_>>() {
            let list = cluster.cmd(i, &["FUNCTION", "LIST"]).await;
            assert_eq!(list, Reply::Array(Some(vec![])), "FUNCTION LIST on {i}");
        }
    })
    .await
}

/// CLUSTER subcommands are answered as a Redis without cluster support answers them (and HELLO says
/// `mode standalone`): a cluster-aware client pointed at respipe gets a clear answer and never a
/// node address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_subcommands_answer_as_a_standalone_redis() {
    bounded(LIMIT, "cluster subcommands", async {
        let (cluster, proxy) = start().await;
        let mut c = RawClient::connect(proxy.listen).await;
        let hello = c.cmd(&["HELLO", "3"]).await;
        assert_eq!(field(&hello, "mode"), &Reply::bulk("standalone"));
        let disabled = Reply::Error("ERR This instance has cluster support disabled".into());
        for sub in ["INFO", "SLOTS", "SHARDS", "NODES", "MYID"] {
            assert_eq!(c.cmd(&["CLUSTER", sub]).await, disabled, "CLUSTER {sub}");
        }
        // RESP3 (after HELLO 3): Redis answers INFO with a verbatim string.
        let info = match c.cmd(&["INFO", "cluster"]).await {
            Reply::Bulk(Some(b)) | Reply::Verbatim(b) => String::from_utf8(b).unwrap(),
            other => panic!("INFO cluster: {other:?}"),
        };
        assert!(info.contains("cluster_enabled:0"), "{info}");
        for node in cluster.nodes() {
            assert!(!info.contains(&node.port().to_string()), "{info}");
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Real clients with their default settings
// ---------------------------------------------------------------------------------------------

fn redis_cli(proxy: &BinProxy, args: &[&str]) -> Command {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &proxy.listen.port().to_string()])
        .args(args);
    cmd
}

/// `redis-cli -p PORT` (no cluster mode): SET, GET, MGET over every primary, and `--scan`
/// listing every key once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_with_default_settings() {
    bounded(LIMIT, "redis-cli", async {
        let (cluster, proxy) = start().await;
        let keys: Vec<String> = (0..60).map(|i| format!("cli:{i}")).collect();
        for k in &keys {
            let out = run_tool(redis_cli(&proxy, &["SET", k, &format!("v{k}")]), TOOL).await;
            assert_eq!(
                (out.status, out.stdout.as_str()),
                (Some(0), "OK\n"),
                "{out:?}"
            );
            assert_eq!(cluster.get_on_owner(k).await, Reply::bulk(format!("v{k}")));
        }
        let out = run_tool(redis_cli(&proxy, &["GET", &keys[7]]), TOOL).await;
        assert_eq!(out.stdout, format!("v{}\n", keys[7]), "{out:?}");

        let mut mget = vec!["MGET"];
        mget.extend(keys.iter().map(String::as_str));
        let out = run_tool(redis_cli(&proxy, &mget), TOOL).await;
        let want: String = keys.iter().map(|k| format!("v{k}\n")).collect();
        assert_eq!(out.stdout, want, "{out:?}");

        let out = run_tool(redis_cli(&proxy, &["--scan", "--pattern", "cli:*"]), TOOL).await;
        assert_eq!(out.status, Some(0), "{out:?}");
        let mut scanned: Vec<&str> = out.stdout.lines().collect();
        scanned.sort_unstable();
        let mut want: Vec<&str> = keys.iter().map(String::as_str).collect();
        want.sort_unstable();
        assert_eq!(scanned, want, "--scan visits every key once");
    })
    .await
}

/// `redis-benchmark -p PORT -t set,get -n 20000 -c 20 -q` succeeds with no error, also with
/// random keys over every slot (`-r`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_with_default_settings() {
    bounded(LIMIT, "redis-benchmark", async {
        let (cluster, proxy) = start().await;
        let port = proxy.listen.port().to_string();
        let base = [
            "-p", &port, "-t", "set,get", "-n", "20000", "-c", "20", "-q",
        ];
        for extra in [&[][..], &["-r", "100000"][..]] {
            let mut cmd = Command::new("redis-benchmark");
            cmd.args(base).args(extra);
            let out = run_tool(cmd, TOOL).await;
            assert_eq!(out.status, Some(0), "{out:?}");
            let text = format!("{}{}", out.stdout, out.stderr).to_lowercase();
            assert!(!text.contains("error"), "{out:?}");
            for t in ["SET: ", "GET: "] {
                assert!(
                    out.stdout
                        .split('\r')
                        .flat_map(str::lines)
                        .any(|l| l.starts_with(t) && l.contains("requests per second")),
                    "no {t} result: {out:?}"
                );
            }
        }
        // The random keys went to every primary.
        for p in cluster.primaries().await {
            match cluster.cmd(p, &["DBSIZE"]).await {
                Reply::Int(n) => assert!(n > 100, "node {p} holds {n} keys"),
                other => panic!("DBSIZE: {other:?}"),
            }
        }
    })
    .await
}

/// A python with redis-py ≥ 5 (RESP3 support): `$PYTHON`, the virtualenv that
/// `scripts/check-clients.sh` makes, or `python3`. `None` when there is none.
fn redis_py() -> Option<String> {
    let venv = std::env::var("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .map(|d| d.join("respipe-check-clients-venv/bin/python"))
        .ok();
    let check = "import redis, sys; sys.exit(int(redis.__version__.split('.')[0]) < 5)";
    std::env::var("PYTHON")
        .ok()
        .into_iter()
        .chain(venv.map(|p| p.display().to_string()))
        .chain(["python3".to_owned()])
        .find(|py| {
            Command::new(py)
                .args(["-c", check])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// redis-py's standalone client (RESP2 and RESP3), default settings: SET/GET and MGET over every
/// slot, a pipeline, a WATCH transaction on one slot, CLIENT SETNAME, pub/sub, and a BLPOP served
/// by another client's push (watched on the list's owner).
const REDIS_PY: &str = r#"
import sys, threading, time, redis
port, proto, owner_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
r = redis.Redis(host="127.0.0.1", port=port, protocol=proto, socket_timeout=20)
o = redis.Redis(host="127.0.0.1", port=port, protocol=proto, client_name="pyclient")
assert r.ping()
keys = [f"py{proto}:{i}" for i in range(300)]
for k in keys:
    assert r.set(k, k)
assert r.mget(keys) == [k.encode() for k in keys]
p = r.pipeline(transaction=False)
for k in keys:
    p.get(k)
assert p.execute() == [k.encode() for k in keys]
n, m = f"{{py}}n{proto}", f"{{py}}m{proto}"
def bump(pipe):
    v = int(pipe.get(n) or 0)
    pipe.multi()
    pipe.set(n, v + 1)
    pipe.set(m, v)
for _ in range(5):
    r.transaction(bump, n)
assert r.get(n) == b"5", r.get(n)
assert o.client_getname() in ("pyclient", b"pyclient"), o.client_getname()
r.hset(f"h{proto}", mapping={"a": "1"})
assert r.hgetall(f"h{proto}") == {b"a": b"1"}
ps = r.pubsub()
ps.subscribe(f"pych{proto}")
deadline = time.time() + 10
while time.time() < deadline:
    m = ps.get_message(timeout=1)
    if m and m["type"] == "subscribe":
        break
else:
    sys.exit("no subscribe confirmation")
o.publish(f"pych{proto}", "hi")
while time.time() < deadline:
    m = ps.get_message(timeout=1)
    if m and m["type"] == "message":
        assert m["data"] == b"hi", m
        break
else:
    sys.exit("no message")
ps.close()
got = []
t = threading.Thread(target=lambda: got.append(r.blpop("{pylist}" + str(proto), timeout=15)))
t.start()
direct = redis.Redis(host="127.0.0.1", port=owner_port)
while direct.info("clients")["blocked_clients"] != 1:
    assert time.time() < deadline + 10, "BLPOP never blocked on the owner"
    time.sleep(0.01)
o.lpush("{pylist}" + str(proto), "x")
t.join(15)
assert got and list(got[0]) == [("{pylist}" + str(proto)).encode(), b"x"], got
print("ok")
"#;

/// redis-py's standalone client through respipe, RESP2 and RESP3 (see [`REDIS_PY`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_resp2_and_resp3() {
    let Some(python) = redis_py() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-py >= 5 is missing: set PYTHON, or run scripts/check-clients.sh once"
        );
        eprintln!("skipped: no python with redis-py >= 5 (set PYTHON)");
        return;
    };
    bounded(LIMIT, "redis-py", async {
        let (cluster, proxy) = start().await;
        for proto in ["2", "3"] {
            let list = format!("{{pylist}}{proto}");
            let owner = cluster.node(cluster.primary_of_key(&list).await).port();
            let mut cmd = Command::new(&python);
            cmd.args(["-c", REDIS_PY, &proxy.listen.port().to_string(), proto])
                .arg(owner.to_string());
            let out = run_tool(cmd, TOOL).await;
            assert_eq!(
                (out.status, out.stdout.as_str()),
                (Some(0), "ok\n"),
                "RESP{proto}: {out:?}"
            );
        }
    })
    .await
}
