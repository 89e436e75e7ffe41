//! Redis Cluster redirects and retries absorbed by respipe (issue 12, TOPOLOGY.md section 3): slots
//! migrate between primaries under clients that pipeline, and the clients see no `MOVED`/`ASK`,
//! only their own values, and read their own writes (the per-session redirect fence).

mod common;
#[path = "common/drill.rs"]
mod drill;
// `drill` reads replies with the harness's reader.
use common::wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use common::cluster::{key_in_slot, Cluster, ClusterOptions};
use common::{bounded, encode, BinProxy, RawClient, Reply};

/// Bound of one test: a cluster start plus the test's own work.
const LIMIT: Duration = Duration::from_secs(150);
/// Keys of one slot in the single-client tests.
const KEYS: usize = 20;
/// respipe's metrics of absorbed redirects.
const MOVED: &str = "respipe_cluster_redirects_total{kind=\"moved\"}";
const ASK: &str = "respipe_cluster_redirects_total{kind=\"ask\"}";
/// respipe's metric of commands retried after `TRYAGAIN`.
const TRYAGAIN: &str = "respipe_cluster_retries_total{reason=\"tryagain\"}";

/// 3 primaries, no replicas (nothing here fails over), and the respipe binary in front.
async fn cluster() -> (Cluster, BinProxy) {
    let cluster = Cluster::start(ClusterOptions {
        replicas: 0,
        ..ClusterOptions::default()
    })
    .await;
    let proxy = cluster.respipe(&["--command-timeout", "5s"]).await;
    (cluster, proxy)
}

/// The primary that owns `slot` now and another one to move it to.
async fn from_and_to(cluster: &Cluster, slot: u16) -> (usize, usize) {
    let from = cluster.primary_of(slot).await;
    let primaries = cluster.primaries().await;
    (from, *primaries.iter().find(|&&p| p != from).unwrap())
}

/// `KEYS` keys in `slot`.
fn keys_in(slot: u16) -> Vec<String> {
    (0..KEYS)
        .map(|i| key_in_slot(slot, &format!("k{i}")))
        .collect()
}

/// The hash tag whose slot is `slot` (the drill's keys are `{TAG}...`).
fn tag_of(slot: u16) -> String {
    key_in_slot(slot, "")
        .trim_matches(|c| c == '{' || c == '}')
        .to_owned()
}

/// Writes `value(key)` to every key and reads each back through respipe, pipelined: every reply
/// must be right (a `MOVED`/`ASK` reaching the client fails here).
async fn round(c: &mut RawClient, keys: &[String], value: &str) {
    let sets: Vec<[&str; 3]> = keys.iter().map(|k| ["SET", k, value]).collect();
    let gets: Vec<[&str; 2]> = keys.iter().map(|k| ["GET", k]).collect();
    let mut cmds: Vec<&[&str]> = sets.iter().map(|c| &c[..]).collect();
    cmds.extend(gets.iter().map(|c| &c[..]));
    let replies = c.send_all(&cmds).await;
    let (set, get) = replies.split_at(keys.len());
    assert!(set.iter().all(|r| *r == Reply::ok()), "SET: {set:?}");
    assert!(get.iter().all(|r| *r == Reply::bulk(value)), "GET: {get:?}");
}

/// MOVED absorbed: a slot migrates key by key (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT
/// NODE everywhere) while a client writes and reads its keys through respipe between the steps,
/// and then once the slot has moved (respipe's map still names the old owner): the client sees
/// no error and its values, and respipe counts the redirects it followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_is_absorbed_while_a_slot_migrates() {
    bounded(LIMIT, "moved", async {
        let (cluster, proxy) = cluster().await;
        let slot = 100;
        let (_, to) = from_and_to(&cluster, slot).await;
        let keys = keys_in(slot);
        let mut c = RawClient::connect(proxy.listen).await;
        round(&mut c, &keys, "before").await;
        let m = cluster.begin_migration(slot, to).await;
        let mut step = 0;
        while cluster.migrate_keys(m, 3).await > 0 {
            step += 1;
            round(&mut c, &keys, &format!("step{step}")).await;
        }
        cluster.finish_migration(m).await;
        round(&mut c, &keys, "moved").await;
        round(&mut c, &keys, "again").await;
        assert_eq!(cluster.primary_of(slot).await, to);
        assert_eq!(cluster.get_on_owner(&keys[0]).await, Reply::bulk("again"));
        assert!(proxy.metric(MOVED).await >= 1.0, "no MOVED followed");
    })
    .await
}

/// ASK absorbed: a slot held half-migrated (MIGRATING on the source, IMPORTING on the target, half
/// its keys moved): reads and writes of moved and unmoved keys, a key created in the slot, an
/// `MGET` whose per-slot parts include the slot, and a `BLPOP` on a key the target gets — all
/// right through respipe, which follows `ASK` without patching its map (no `MOVED` seen). Then,
/// once the slot has moved, a transaction leased on its old owner: the redirect Redis answers
/// there is shown as a `-TRYAGAIN` without node addresses (`EXEC` aborts); a blocking command
/// leased there follows the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_is_absorbed_in_a_half_migrated_slot() {
    bounded(LIMIT, "ask", async {
        let (cluster, proxy) = cluster().await;
        let slot = 200;
        let (from, to) = from_and_to(&cluster, slot).await;
        let keys = keys_in(slot);
        let mut c = RawClient::connect(proxy.listen).await;
        round(&mut c, &keys, "v0").await;
        let m = cluster.begin_migration(slot, to).await;
        assert_eq!(cluster.migrate_keys(m, KEYS / 2).await, KEYS / 2);
        for k in &keys {
            assert_eq!(c.cmd(&["GET", k]).await, Reply::bulk("v0"), "{k}");
        }
        round(&mut c, &keys, "v1").await;
        let fresh = key_in_slot(slot, "fresh");
        assert_eq!(c.cmd(&["SET", &fresh, "new"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", &fresh]).await, Reply::bulk("new"));
        let elsewhere = key_in_slot(slot + 6000, "other");
        assert_eq!(c.cmd(&["SET", &elsewhere, "o"]).await, Reply::ok());
        // Which keys moved: the source answers ASK for them.
        let mut moved = None;
        let mut stayed = None;
        for k in &keys {
            match cluster.cmd(from, &["EXISTS", k]).await {
                Reply::Int(1) => stayed = Some(k.clone()),
                _ => moved = Some(k.clone()),
            }
        }
        let (moved, stayed) = (moved.unwrap(), stayed.unwrap());
        // One key of the migrating slot per part (keys split by the migration in one part get
        // Redis's TRYAGAIN until the slot has moved): each part is redirected on its own.
        for (k, v) in [(&moved, "v1"), (&stayed, "v1"), (&fresh, "new")] {
            let mget = c.cmd(&["MGET", k, &elsewhere]).await;
            let want = Reply::Array(Some(vec![Reply::bulk(v), Reply::bulk("o")]));
            assert_eq!(mget, want, "{k}");
        }
        // A blocking command on a key the source does not have: `ASK`, so sent again after
        // `ASKING` on the target, where it blocks until a push (`ASK`-ed there too) reaches it.
        let waiting = key_in_slot(slot, "waiting");
        let mut b = RawClient::connect(proxy.listen).await;
        b.send(&encode(&["BLPOP", &waiting, "0"])).await;
        cluster.wait_blocked(to, 1).await;
        assert_eq!(c.cmd(&["LPUSH", &waiting, "w"]).await, Reply::Int(1));
        let popped = Reply::Array(Some(vec![Reply::bulk(&waiting), Reply::bulk("w")]));
        assert_eq!(b.read_reply().await, popped);
        assert!(proxy.metric(ASK).await >= 1.0, "no ASK followed");
        assert_eq!(proxy.metric(MOVED).await, 0.0, "ASK must not patch the map");

        cluster.finish_migration(m).await;
        // respipe's map still names the old owner: the transaction is leased there.
        let mut t = RawClient::connect(proxy.listen).await;
        assert_eq!(t.cmd(&["MULTI"]).await, Reply::ok());
        let refused = t.cmd(&["SET", &moved, "in-multi"]).await;
        let text = refused.error_text().unwrap_or_default().to_owned();
        assert!(text.starts_with("TRYAGAIN respipe:"), "{refused:?}");
        assert!(!text.contains("127.0.0.1"), "{text}");
        let exec = t.cmd(&["EXEC"]).await;
        assert!(
            exec.error_text()
                .is_some_and(|e| e.starts_with("EXECABORT")),
            "{exec:?}"
        );
        // A blocking command, leased on the old owner too: it follows the slot (see
        // `a_blocked_command_follows_its_slot`) and times out there as Redis would.
        let list = key_in_slot(slot, "list");
        assert_eq!(t.cmd(&["BLPOP", &list, "1"]).await, Reply::Array(None));
        assert_eq!(c.cmd(&["GET", &moved]).await, Reply::bulk("v1"));
    })
    .await
}

/// A blocked command follows its slot: a client blocked in `BLPOP` through respipe (timeout 0,
/// then 5 s; and in `XREAD BLOCK`) while its slot moves to another primary is blocked again
/// there (Redis unblocked it with `MOVED`), and a push from another client after the move
/// reaches it: it gets the element, never an error. With a 2 s timeout, the slot moving 1 s into it, and no push, the
/// client gets Redis's timeout answer 2 s after it sent `BLPOP`, not 2 s after the move: respipe
/// sent it again with what remained of its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_command_follows_its_slot() {
    bounded(LIMIT, "blocked", async {
        let (cluster, proxy) = cluster().await;
        for (slot, timeout) in [(500, "0"), (600, "5")] {
            let list = key_in_slot(slot, "list");
            let popped = Reply::Array(Some(vec![Reply::bulk(&list), Reply::bulk("x")]));
            let blpop = ["BLPOP", &list, timeout];
            let push = ["LPUSH", &list, "x"];
            moved_while_blocked(&cluster, &proxy, slot, &blpop, &push, popped).await;
        }
        // A stream read, its timeout in milliseconds.
        let stream = key_in_slot(800, "stream");
        let xread = ["XREAD", "BLOCK", "5000", "STREAMS", &stream, "$"];
        let array = |items: Vec<Reply>| Reply::Array(Some(items));
        let fields = array(vec![Reply::bulk("f"), Reply::bulk("v")]);
        let entry = array(vec![Reply::bulk("1-1"), fields]);
        let read = array(vec![array(vec![Reply::bulk(&stream), array(vec![entry])])]);
        let xadd = ["XADD", &stream, "1-1", "f", "v"];
        moved_while_blocked(&cluster, &proxy, 800, &xread, &xadd, read).await;
        let slot = 700;
        let (from, to) = from_and_to(&cluster, slot).await;
        let list = key_in_slot(slot, "list");
        let mut blocked = RawClient::connect(proxy.listen).await;
        let start = Instant::now();
        blocked.send(&encode(&["BLPOP", &list, "2"])).await;
        cluster.wait_blocked(from, 1).await;
        // Not a synchronisation: the time spent blocked before the move is what is tested.
        tokio::time::sleep_until(start + Duration::from_secs(1)).await;
        cluster.migrate_slot(slot, to).await;
        assert_eq!(blocked.read_reply().await, Reply::Array(None));
        let took = start.elapsed();
        // Sent again with its full timeout, it would answer after 3 s at least.
        assert!(
            (Duration::from_millis(1500)..Duration::from_millis(2800)).contains(&took),
            "{took:?}"
        );
        assert!(proxy.metric(MOVED).await >= 3.0, "no MOVED followed");
    })
    .await
}

/// A client sends `blocking` (a command on a key of `slot`) through respipe; once it blocks, the
/// slot moves to another primary; once it blocks there too, another client sends `push` through
/// respipe: the blocked client gets `want`.
async fn moved_while_blocked(
    cluster: &Cluster,
    proxy: &BinProxy,
    slot: u16,
    blocking: &[&str],
    push: &[&str],
    want: Reply,
) {
    let (from, to) = from_and_to(cluster, slot).await;
    let mut blocked = RawClient::connect(proxy.listen).await;
    blocked.send(&encode(blocking)).await;
    cluster.wait_blocked(from, 1).await;
    cluster.migrate_slot(slot, to).await;
    // Blocked again on the new owner before anything is pushed there.
    cluster.wait_blocked(to, 1).await;
    let mut pusher = RawClient::connect(proxy.listen).await;
    let pushed = pusher.cmd(push).await;
    assert!(pushed.error_text().is_none(), "{pushed:?}");
    assert_eq!(blocked.read_reply().await, want, "{blocking:?}");
}

/// Read-your-writes for pipelining clients across migrations: 8 clients each pipeline `SET k n;
/// GET k` 20 to 48 commands deep over a few keys of one slot, a write per pair (so respipe reads a
/// pipeline in pieces, some placed before the slot's owner changes in its map and some after),
/// while the slot moves key by key to another primary and back, three times: every `GET` returns
/// that client's latest `SET` of the key (the redirect fence keeps a command behind an earlier one
/// of its slot still in flight on the old owner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_clients_read_their_writes_across_migrations() {
    bounded(LIMIT, "read-your-writes", async {
        let (cluster, proxy) = cluster().await;
        let slot = 300;
        let (from, to) = from_and_to(&cluster, slot).await;
        let done = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for id in 0..8usize {
            let mut c = RawClient::connect(proxy.listen).await;
            let done = done.clone();
            let keys: Vec<String> = (0..3)
                .map(|i| key_in_slot(slot, &format!("ryw{id}:{i}")))
                .collect();
            clients.push(tokio::spawn(async move {
                let pairs = 10 + id * 2;
                let (mut n, mut rounds_after) = (0u64, 0);
                while rounds_after < 3 {
                    if done.load(Ordering::Relaxed) {
                        rounds_after += 1;
                    }
                    let mut want = Vec::new();
                    for i in 0..pairs {
                        n += 1;
                        let k = &keys[i % keys.len()];
                        let mut pair = encode(&["SET", k, &n.to_string()]);
                        pair.extend(encode(&["GET", k]));
                        c.send(&pair).await;
                        want.push(Reply::ok());
                        want.push(Reply::bulk(n.to_string()));
                    }
                    let got = c.read_replies(want.len()).await;
                    assert_eq!(got, want, "client {id}");
                }
                n
            }));
        }
        for (a, b) in [(from, to), (to, from), (from, to)] {
            assert_eq!(cluster.primary_of(slot).await, a);
            let m = cluster.begin_migration(slot, b).await;
            while cluster.migrate_keys(m, 2).await > 0 {}
            cluster.finish_migration(m).await;
        }
        done.store(true, Ordering::Relaxed);
        for c in clients {
            assert!(c.await.expect("client") > 0);
        }
        let followed = proxy.metric(MOVED).await + proxy.metric(ASK).await;
        assert!(followed >= 1.0, "no redirect followed");
    })
    .await
}

/// The redirect fence, deterministically: `MSET a 1 b 1` in a slot whose migration has split `a`
/// and `b` gets `TRYAGAIN` and is retried after pauses; `GET a`, `GET b` and `SET a 2; GET a`,
/// pipelined behind it once respipe is retrying it, wait for it instead of overtaking it (Redis
/// would answer them at once with the old values). Then the test finishes the migration: the
/// `MSET` goes through (following the `MOVED`), and the commands behind it see its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_wait_behind_an_earlier_one_of_their_slot_being_retried() {
    bounded(LIMIT, "fence", async {
        let (cluster, proxy) = cluster().await;
        let slot = 400;
        let (from, to) = from_and_to(&cluster, slot).await;
        let (a, b) = (key_in_slot(slot, "a"), key_in_slot(slot, "b"));
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["MSET", &a, "0", &b, "0"]).await, Reply::ok());
        let m = cluster.begin_migration(slot, to).await;
        let port = cluster.node(to).port().to_string();
        let migrate = ["MIGRATE", "127.0.0.1", &port, b.as_str(), "0", "5000"];
        assert_eq!(cluster.cmd(from, &migrate).await, Reply::ok());
        c.send(&encode(&["MSET", &a, "1", &b, "1"])).await;
        proxy
            .wait_metric(TRYAGAIN, Duration::from_secs(5), |n| n >= 1.0)
            .await;
        let mut behind = encode(&["GET", &a]);
        for cmd in [&["GET", &b][..], &["SET", &a, "2"], &["GET", &a]] {
            behind.extend(encode(cmd));
        }
        c.send(&behind).await;
        cluster.finish_migration(m).await;
        let want = ["1", "1", "1", "2"].map(Reply::bulk);
        let want = [&[Reply::ok()], &want[..2], &[Reply::ok()], &want[3..]].concat();
        assert_eq!(c.read_replies(5).await, want);
    })
    .await
}

/// The integrity drill under resharding: 200 clients (66 pipelining 10 to 50 deep) write values
/// carrying their own id to keys over six slots, two per primary, for 10 s while one slot after
/// another migrates key by key to the next primary: 0 misrouted, 0 wrong (a `MOVED`/`ASK` reaching
/// a client counts as wrong), 0 hung, 0 dropped clients, 0 errors, and every `GET` after its
/// `SET` in a client's pipeline finds the value (read-your-writes: no nil).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_under_resharding() {
    // `scripts/drill.sh --cluster` runs the long drill: more load and more rounds of migrations.
    let (seconds, rounds) = (
        drill::env_or("RESPIPE_RESHARD_SECONDS", 10),
        drill::env_or("RESPIPE_RESHARD_ROUNDS", 1),
    );
    let limit = LIMIT + Duration::from_secs(seconds + 30 * rounds);
    bounded(limit, "resharding drill", async {
        drill::raise_nofile();
        let (cluster, proxy) = cluster().await;
        let primaries = cluster.primaries().await;
        // Per primary: a slot that moves and one that stays.
        let mut moving = Vec::new();
        let mut slots = Vec::new();
        for (i, &p) in primaries.iter().enumerate() {
            // `redis-cli --cluster create` gives primary i the i-th third of the slots.
            let first = (i * 5461 + 1000) as u16;
            moving.push(first);
            slots.extend([first, first + 1000]);
            assert_eq!(cluster.primary_of(first).await, p);
        }
        let tags = slots.iter().map(|&s| tag_of(s)).collect();
        let spread = drill::DrillConfig::spread(
            Duration::from_secs(seconds),
            0,
            tags,
            drill::RESPIPE_FAILURE,
        );
        // A third of the clients pipeline, as issue 12 asks.
        let cfg = drill::DrillConfig {
            pipelined: 66,
            ..spread
        };
        // Round r moves each slot on to the primary r + 1 places after its first owner.
        let reshard = async {
            let mut migrations = 0;
            for round in 0..rounds as usize {
                for (i, &slot) in moving.iter().enumerate() {
                    let to = primaries[(i + 1 + round) % primaries.len()];
                    let m = cluster.begin_migration(slot, to).await;
                    while cluster.migrate_keys(m, 20).await > 0 {}
                    cluster.finish_migration(m).await;
                    migrations += 1;
                }
            }
            migrations
        };
        let mut no_kill = drill::NoKill;
        let (report, migrations) =
            tokio::join!(drill::run(proxy.listen, &mut no_kill, &cfg), reshard);
        let summary = report.summary();
        eprintln!("{summary}, migrations={migrations}");
        let counts = &report.counts;
        assert!(report.clean(), "{summary}");
        assert_eq!(counts.err.load(Ordering::Relaxed), 0, "{summary}");
        assert_eq!(counts.nil.load(Ordering::Relaxed), 0, "{summary}");
        assert!(
            counts.commands.load(Ordering::Relaxed) > 10_000,
            "{summary}"
        );
        assert_eq!(migrations, moving.len() * rounds as usize);
        let followed = proxy.metric(MOVED).await + proxy.metric(ASK).await;
        assert!(followed >= 1.0, "no redirect followed: {summary}");
    })
    .await
}
