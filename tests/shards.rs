//! Sharded mode (issue 11): respipe in front of three redis-servers, each key on one of them.
//! Integrity under load and with a shard killed, split commands compared byte for byte with one
//! Redis holding the same data, commands that cannot be split, SCAN and the keyless commands,
//! ejection of a dead shard, and per-session state (SELECT, AUTH, HELLO, MULTI, WATCH) on every
//! shard. The placement itself is proven against twemproxy elsewhere (the golden test).
//!
//! The harness is `common/shards.rs`. `SHARDS_FRONT=nutcracker` puts twemproxy in front instead of
//! respipe, and the tests twemproxy passes too (integrity, a shard killed, MSET over every shard,
//! ejection or not) prove themselves that way: their names end in `twemproxy_too`, so
//! `SHARDS_FRONT=nutcracker cargo test --test shards twemproxy_too` runs exactly those.
//! `SHARDS_FRONT=binary` runs every test through the respipe binary and its `--config` file.

mod common;
#[path = "common/differential.rs"]
mod differential;
#[path = "common/drill.rs"]
mod drill;
// `drill` reads replies with the harness's reader.
use common::wire;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::shards::{Eject, ShardOptions, Shards};
use common::{bounded, RawClient, RedisServer, Reply, POLL};
use differential::Scenario;

/// Three shards, as the issue asks.
const SHARDS: usize = 3;

/// Bound of a test that does not load the machine.
const LIMIT: Duration = Duration::from_secs(60);

/// The client of the differential scenarios, shown as A in failure messages.
const A: usize = 0;

impl drill::Restart for RedisServer {
    fn kill(&mut self) {
        RedisServer::kill(self)
    }
    fn restart(&mut self) -> impl Future<Output = ()> {
        RedisServer::restart(self)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Integrity across shards
// ---------------------------------------------------------------------------------------------

/// 200 clients (60 pipelining 10 to 50 deep) whose keys take the three shards' hash tags in turn,
/// so every pipeline spans every shard, for `duration` with `kills` kills of shard 0.
fn drill_config(shards: &Shards, duration: Duration, kills: usize) -> drill::DrillConfig {
    let tags = (0..SHARDS).map(|i| shards.tag(i).to_owned()).collect();
    drill::DrillConfig::spread(duration, kills, tags, shards.failure())
}

fn count(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Every reply right and in order: 0 wrong, 0 misrouted, 0 hung, 0 dropped clients, and no
/// failure at all; every shard holds keys afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_across_three_shards_twemproxy_too() {
    bounded(Duration::from_secs(100), "integrity across shards", async {
        let mut shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let cfg = drill_config(&shards, Duration::from_secs(6), 0);
        let addr = shards.addr();
        let report = drill::run(addr, &mut shards.servers[0], &cfg).await;
        eprintln!("{}", report.summary());
        let c = &report.counts;
        assert!(report.clean(), "{}", report.summary());
        assert_eq!(
            (count(&c.err), count(&c.nil)),
            (0, 0),
            "{}",
            report.summary()
        );
        assert!(
            count(&c.ok) > 10_000,
            "too little load: {}",
            report.summary()
        );
        let sizes = shards.dbsizes(0).await;
        assert!(
            sizes.iter().all(|&n| n > 0),
            "a shard got no keys: {sizes:?}"
        );
    })
    .await
}

/// Shard 0 SIGKILLed under the same load and restarted: its keys get explicit errors (never a
/// wrong value, never a hang), the other shards' keys never fail, and shard 0 serves again
/// within 3 s of answering PING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_fails_only_its_own_keys_twemproxy_too() {
    bounded(
        Duration::from_secs(100),
        "a shard killed under load",
        async {
            let mut shards = Shards::start(SHARDS, ShardOptions::default()).await;
            let cfg = drill_config(&shards, Duration::from_secs(10), 1);
            let addr = shards.addr();
            let report = drill::run(addr, &mut shards.servers[0], &cfg).await;
            eprintln!("{}", report.summary());
            let c = &report.counts;
            assert!(report.clean(), "{}", report.summary());
            assert!(
                count(&c.err) > 0,
                "no command failed: did the kill happen under load?"
            );
            let failed: Vec<u64> = c.failed_by_tag.iter().map(count).collect();
            assert!(failed[0] > 0, "{}", report.summary());
            assert_eq!(
                failed[1..],
                [0, 0],
                "other shards' keys failed: {}",
                report.summary()
            );
            assert_eq!(report.recovery.len(), 1);
            // Reconnecting takes at most `reconnect_backoff_max` (500 ms) plus a connect; the rest is
            // the drill's own probing under 200 clients' load, which a loaded 2-core CI machine
            // stretched past 2 s once (2.04 s): 3 s keeps the bound meaningful without that flake.
            assert!(
                report.recovery[0] < Duration::from_secs(3),
                "shard 0 served again only after {:?}",
                report.recovery[0]
            );
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// 2. Split commands: the same replies as one Redis
// ---------------------------------------------------------------------------------------------

/// Keys `k:0` .. `k:{n-1}`.
fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("k:{i}")).collect()
}

/// `name` followed by `args`.
fn command(name: &str, args: impl IntoIterator<Item = String>) -> Vec<String> {
    std::iter::once(name.to_owned()).chain(args).collect()
}

/// `client` writes `cmds` in one write and reads one frame per command.
fn each(s: Scenario, client: usize, cmds: &[Vec<String>]) -> Scenario {
    let cmds: Vec<Vec<&str>> = cmds
        .iter()
        .map(|c| c.iter().map(String::as_str).collect())
        .collect();
    let cmds: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    s.each(client, &cmds)
}

/// The data every split scenario starts from: 1,000 strings (one MSET), keys with bytes ≥ 0x80,
/// hash-tagged keys, and a list, a hash and a set (which MGET answers nil for).
fn loaded(name: &str) -> Scenario {
    let mset = command(
        "MSET",
        keys(1000)
            .into_iter()
            .flat_map(|k| [k.clone(), format!("v-{k}")]),
    );
    let setup: Vec<Vec<String>> = vec![
        mset,
        command(
            "MSET",
            ["ключ:1", "ü", "{user1}:a", "1", "{user1}:b", "2"].map(String::from),
        ),
        command("RPUSH", ["list:1", "a", "b"].map(String::from)),
        command("HSET", ["hash:1", "f", "v"].map(String::from)),
        command("SADD", ["set:1", "m"].map(String::from)),
    ];
    each(Scenario::new(name).over_shards(SHARDS), A, &setup)
}

/// The keys the multi-key commands are asked about: all 1,000 (every third twice), missing keys
/// between them, tagged and non-ASCII keys, and keys of other types.
fn probe_keys() -> Vec<String> {
    let mut out = Vec::new();
    for (i, k) in keys(1000).into_iter().enumerate() {
        if i % 3 == 0 {
            out.push(k.clone());
        }
        if i % 7 == 0 {
            out.push(format!("missing:{i}"));
        }
        out.push(k);
    }
    let extra = [
        "{user1}:a",
        "{user1}:b",
        "{user1}:none",
        "ключ:1",
        "list:1",
        "hash:1",
        "set:1",
    ];
    out.extend(extra.map(String::from));
    out
}

/// MGET, EXISTS, TOUCH, then DEL and UNLINK of parts, then MGET and EXISTS again, then MSET
/// overwriting with duplicate keys: every reply byte for byte as one Redis gives it. (twemproxy
/// matches Redis here except for EXISTS across shards, which it counts short (669 of 1,340), and
/// QUIT, which it answers by closing without `+OK`.)
#[tokio::test]
async fn split_commands_match_one_redis() {
    let probe = probe_keys();
    let all = keys(1000);
    let dels: Vec<String> = all
        .iter()
        .step_by(2)
        .cloned()
        .chain(["k:0".into()])
        .collect();
    let unlinks: Vec<String> = all.iter().skip(1).step_by(4).cloned().collect();
    let cmds = vec![
        command("MGET", probe.clone()),
        command("EXISTS", probe.clone()),
        command("TOUCH", probe.clone()),
        command(
            "DEL",
            dels.into_iter()
                .chain(["missing:1".into(), "list:1".into()]),
        ),
        command(
            "UNLINK",
            unlinks
                .into_iter()
                .chain(["{user1}:a".into(), "set:1".into()]),
        ),
        command("MGET", probe.clone()),
        command("EXISTS", probe.clone()),
        command(
            "MSET",
            ["k:1", "x", "k:500", "y", "k:1", "z", "{user1}:a", "w"].map(String::from),
        ),
        command(
            "MGET",
            ["k:1", "k:500", "{user1}:a", "k:999"].map(String::from),
        ),
    ];
    each(loaded("split_commands"), A, &cmds).run().await;
}

/// Split commands pipelined with single-key commands on the same keys, in one write: each reply
/// in its place and each command seeing the ones before it. (twemproxy too, up to its QUIT.)
#[tokio::test]
async fn pipelined_split_commands_keep_their_place() {
    let ten: Vec<String> = keys(10);
    let cmds = vec![
        command("MGET", ten.clone()),
        command("SET", ["k:5", "changed"].map(String::from)),
        command("MGET", ten.clone()),
        command("DEL", ["k:1", "k:500", "k:1"].map(String::from)),
        command("GET", ["k:1".to_owned()]),
        command("EXISTS", ten.clone()),
        command("MSET", ["k:1", "back", "k:2", "two"].map(String::from)),
        command("MGET", ten),
    ];
    each(loaded("pipelined_split"), A, &cmds).run().await;
}

/// The same split commands in RESP3 (missing values are `_`).
#[tokio::test]
async fn split_commands_in_resp3_match_one_redis() {
    let probe = probe_keys();
    let cmds = vec![
        command("MGET", probe.clone()),
        command("EXISTS", probe.clone()),
        command("DEL", probe.iter().take(50).cloned()),
        command("MGET", probe),
    ];
    each(loaded("split_resp3").protocol(A, 3), A, &cmds)
        .run()
        .await;
}

/// Wrong argument counts get Redis's own errors, not a split.
#[tokio::test]
async fn split_commands_with_wrong_arity_match_one_redis() {
    let cmds: Vec<Vec<String>> = [
        &["MGET"][..],
        &["MSET"],
        &["MSET", "k:1"],
        &["MSET", "k:1", "a", "k:2"],
        &["DEL"],
        &["EXISTS"],
        &["TOUCH"],
        &["UNLINK"],
        &["MGET", "k:1", "k:2"],
    ]
    .iter()
    .map(|c| c.iter().map(|a| a.to_string()).collect())
    .collect();
    each(loaded("split_arity"), A, &cmds).run().await;
}

/// The 1,000 keys really spread: every shard holds some of them after one MSET through the
/// proxy, and one MGET gives all of them back in key order.
#[tokio::test]
async fn one_mset_spreads_over_every_shard_twemproxy_too() {
    bounded(LIMIT, "MSET over shards", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let all = keys(1000);
        let mset = command(
            "MSET",
            all.iter().flat_map(|k| [k.clone(), format!("v-{k}")]),
        );
        assert_eq!(c.cmd(&mset).await, Reply::ok());
        let sizes = shards.dbsizes(0).await;
        assert_eq!(sizes.iter().sum::<i64>(), 1000, "{sizes:?}");
        assert!(
            sizes.iter().all(|&n| n > 0),
            "a shard got none of 1,000 keys: {sizes:?}"
        );
        let want: Vec<Reply> = all.iter().map(|k| Reply::bulk(format!("v-{k}"))).collect();
        assert_eq!(c.cmd(&command("MGET", all)).await, Reply::Array(Some(want)));
    })
    .await
}

/// 50 clients at once, each pipelining rounds of split commands over keys of its own on every
/// shard (MSET, MGET in another order, DEL of two, EXISTS and TOUCH of all): every reply exactly
/// what one Redis would answer that client, so no part of a split command is merged into another
/// client's reply or another command's. (twemproxy passes this without EXISTS: its EXISTS across
/// shards answers 0 here, not 1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_commands_of_many_clients_at_once() {
    const CLIENTS: usize = 50;
    const ROUNDS: usize = 40;
    const DEPTH: usize = 10;
    bounded(LIMIT, "split commands under concurrent load", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut tasks = Vec::new();
        for id in 0..CLIENTS {
            let mut c = shards.raw().await;
            let keys: Vec<String> = (0..SHARDS)
                .map(|i| shards.key(i, &format!("c{id}")))
                .collect();
            tasks.push(tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let mut cmds: Vec<Vec<String>> = Vec::new();
                    let mut want: Vec<Reply> = Vec::new();
                    for step in 0..DEPTH {
                        let value = |k: usize| format!("{id}:{round}:{step}:{k}");
                        let pairs = (0..SHARDS).flat_map(|k| [keys[k].clone(), value(k)]);
                        cmds.push(command("MSET", pairs));
                        want.push(Reply::ok());
                        let order = [2, 0, 1];
                        cmds.push(command("MGET", order.map(|k| keys[k].clone())));
                        want.push(Reply::Array(Some(
                            order.map(|k| Reply::bulk(value(k))).to_vec(),
                        )));
                        cmds.push(command("DEL", [keys[0].clone(), keys[2].clone()]));
                        want.push(Reply::Int(2));
                        cmds.push(command("EXISTS", keys.clone()));
                        want.push(Reply::Int(1));
                        cmds.push(command("TOUCH", keys.clone()));
                        want.push(Reply::Int(1));
                    }
                    let refs: Vec<&[String]> = cmds.iter().map(Vec::as_slice).collect();
                    let got = c.send_all(&refs).await;
                    if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                        panic!(
                            "client {id} round {round}: {:?} gave {:?}, not {:?}",
                            cmds[i], got[i], want[i]
                        );
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("a client failed");
        }
    })
    .await
}

/// With shard 0 dead, a split command with a part there answers one explicit failure, never a
/// partial value: MSET is not OK unless every part is, MGET, DEL and EXISTS are not merged from
/// the parts that answered, nor DBSIZE and KEYS from the shards that answered. Commands on the
/// live shards alone still work. (twemproxy resets the client's connection instead.)
#[tokio::test]
async fn split_commands_with_a_dead_shard_fail_explicitly() {
    bounded(LIMIT, "split commands with a dead shard", async {
        let mut shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let all: Vec<String> = (0..SHARDS).map(|i| shards.key(i, "k")).collect();
        let live: Vec<String> = all[1..].to_vec();
        let mset =
            |keys: &[String]| command("MSET", keys.iter().flat_map(|k| [k.clone(), "v".into()]));
        assert_eq!(c.cmd(&mset(&all)).await, Reply::ok());
        shards.servers[0].kill();
        for cmd in [
            mset(&all),
            command("MGET", all.clone()),
            command("EXISTS", all.clone()),
            command("DEL", all.clone()),
            command("DBSIZE", []),
            command("KEYS", ["*".to_owned()]),
        ] {
            let r = c.cmd(&cmd).await;
            assert!(
                is_failure(&shards, &r),
                "{} with a dead part: {r:?}",
                cmd[0]
            );
        }
        assert_eq!(c.cmd(&mset(&live)).await, Reply::ok());
        let values = Reply::Array(Some(vec![Reply::bulk("v"); SHARDS - 1]));
        assert_eq!(c.cmd(&command("MGET", live)).await, values);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 2b. Commands whose keys span shards and cannot be split
// ---------------------------------------------------------------------------------------------

/// True for respipe's refusal of a command across shards.
fn is_crossslot(r: &Reply) -> bool {
    r.error_text().is_some_and(|e| e.starts_with("CROSSSLOT"))
}

/// MSETNX, RENAME, SUNIONSTORE, SMOVE, EVAL and BLPOP with keys on two shards get `-CROSSSLOT`
/// at once and change nothing; the same commands with keys of one shard work.
#[tokio::test]
async fn commands_across_shards_that_cannot_split_get_crossslot() {
    bounded(LIMIT, "CROSSSLOT", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let (a0, b0, a1) = (shards.key(0, "a"), shards.key(0, "b"), shards.key(1, "a"));
        let (s0, t0, s1) = (shards.key(0, "s"), shards.key(0, "t"), shards.key(1, "s"));
        let (l0, m0, l1) = (shards.key(0, "l"), shards.key(0, "m"), shards.key(1, "l"));
        let setup = c
            .send_all(&[
                &["SET", &a0, "1"][..],
                &["SET", &a1, "2"],
                &["SADD", &s0, "x", "y"],
                &["SADD", &s1, "y", "z"],
            ])
            .await;
        assert_eq!(
            setup,
            [Reply::ok(), Reply::ok(), Reply::Int(2), Reply::Int(2)]
        );
        let eval = "return {KEYS[1], KEYS[2]}";
        let across: [&[&str]; 6] = [
            &["MSETNX", &b0, "1", &shards.key(1, "b"), "2"],
            &["RENAME", &a0, &shards.key(1, "renamed")],
            &["SUNIONSTORE", &t0, &s0, &s1],
            &["SMOVE", &s0, &s1, "x"],
            &["EVAL", eval, "2", &a0, &a1],
            &["BLPOP", &l0, &l1, "0"],
        ];
        for cmd in across {
            let r = bounded(Duration::from_secs(5), "a refusal, not a block", c.cmd(cmd)).await;
            assert!(is_crossslot(&r), "{cmd:?}: {r:?}");
        }
        // Nothing changed on any shard.
        for (key, holder) in [(&a0, 0), (&a1, 1), (&s0, 0), (&s1, 1)] {
            assert_eq!(shards.holders(key, 0).await, [holder], "{key}");
        }
        for key in [&b0, &t0, &shards.key(1, "b"), &shards.key(1, "renamed")] {
            assert!(shards.holders(key, 0).await.is_empty(), "{key} was written");
        }
        let members = c
            .send_all(&[&["SCARD", &s0][..], &["SMISMEMBER", &s0, "x", "y"]])
            .await;
        let both = Reply::Array(Some(vec![Reply::Int(1), Reply::Int(1)]));
        assert_eq!(members, [Reply::Int(2), both]);

        // The same commands within one shard (one hash tag).
        assert_eq!(
            c.cmd(&["MSETNX", &b0, "1", &shards.key(0, "c"), "2"]).await,
            Reply::Int(1)
        );
        assert_eq!(
            c.cmd(&["RENAME", &a0, &shards.key(0, "renamed")]).await,
            Reply::ok()
        );
        assert_eq!(
            c.cmd(&["SADD", &shards.key(0, "u"), "z"]).await,
            Reply::Int(1)
        );
        let union = c.cmd(&["SUNIONSTORE", &t0, &s0, &shards.key(0, "u")]).await;
        assert_eq!(union, Reply::Int(3));
        assert_eq!(c.cmd(&["SMOVE", &s0, &t0, "x"]).await, Reply::Int(1));
        assert_eq!(c.cmd(&["SISMEMBER", &s0, "x"]).await, Reply::Int(0));
        let r = c.cmd(&["EVAL", eval, "2", &b0, &shards.key(0, "c")]).await;
        let want = Reply::Array(Some(vec![
            Reply::bulk(&b0),
            Reply::bulk(shards.key(0, "c")),
        ]));
        assert_eq!(r, want);
        assert_eq!(c.cmd(&["RPUSH", &m0, "v"]).await, Reply::Int(1));
        let popped = bounded(
            Duration::from_secs(5),
            "BLPOP",
            c.cmd(&["BLPOP", &l0, &m0, "0"]),
        )
        .await;
        assert_eq!(
            popped,
            Reply::Array(Some(vec![Reply::bulk(&m0), Reply::bulk("v")]))
        );
        assert_eq!(shards.holders(&shards.key(0, "renamed"), 0).await, [0]);
    })
    .await
}

/// A transaction whose commands touch two shards: the command for the second shard is refused
/// with `-CROSSSLOT` while queueing and `EXEC` aborts like Redis's `EXECABORT`; nothing is
/// written, and the connection serves on.
#[tokio::test]
async fn a_transaction_across_shards_is_aborted() {
    bounded(LIMIT, "MULTI across shards", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let (a0, a1) = (shards.key(0, "a"), shards.key(1, "a"));
        let r = c
            .send_all(&[
                &["MULTI"][..],
                &["SET", &a0, "1"],
                &["SET", &a1, "2"],
                &["EXEC"],
            ])
            .await;
        assert_eq!(r[..2], [Reply::ok(), Reply::Simple("QUEUED".into())]);
        assert!(is_crossslot(&r[2]), "{:?}", r[2]);
        let aborted = r[3]
            .error_text()
            .is_some_and(|e| e.starts_with("EXECABORT"));
        assert!(aborted, "EXEC after a refused command: {:?}", r[3]);
        assert!(shards.holders(&a0, 0).await.is_empty());
        assert!(shards.holders(&a1, 0).await.is_empty());
        let after = c.send_all(&[&["SET", &a1, "3"][..], &["GET", &a0]]).await;
        assert_eq!(after, [Reply::ok(), Reply::nil()]);

        // A split command inside a transaction, and a transaction on another shard than the
        // watched key, are refused the same way.
        let watched = [
            &["WATCH", &a0][..],
            &["MULTI"],
            &["SET", &a1, "4"],
            &["EXEC"],
        ];
        for (cmds, at) in [
            (&[&["MULTI"][..], &["MGET", &a0, &a1], &["EXEC"]][..], 1),
            (&watched[..], 2),
        ] {
            let r = c.send_all(cmds).await;
            assert!(is_crossslot(&r[at]), "{cmds:?}: {r:?}");
            let aborted = r[at + 1]
                .error_text()
                .is_some_and(|e| e.starts_with("EXECABORT"));
            assert!(aborted, "{cmds:?}: {r:?}");
        }
        assert_eq!(c.cmd(&["GET", &a1]).await, Reply::bulk("3"));
    })
    .await
}

/// Commands with several keys anywhere in their arguments (destination and sources, a key count,
/// `STREAMS`, `STORE`) and keys on two shards are refused with `-CROSSSLOT` and write nothing:
/// respipe knows where every command keeps its keys.
#[tokio::test]
async fn multi_key_commands_across_shards_are_refused() {
    bounded(LIMIT, "multi-key commands across shards", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let (a, b) = (shards.key(0, "a"), shards.key(1, "b"));
        let cmds: [&[&str]; 19] = [
            &["SINTER", &a, &b],
            &["SDIFF", &a, &b],
            &["ZUNIONSTORE", &a, "2", &a, &b],
            &["ZINTERCARD", "2", &a, &b],
            &["SINTERCARD", "2", &a, &b],
            &["ZDIFF", "2", &a, &b],
            &["LMOVE", &a, &b, "LEFT", "LEFT"],
            &["RPOPLPUSH", &a, &b],
            &["BITOP", "AND", &a, &a, &b],
            &["PFCOUNT", &a, &b],
            &["PFMERGE", &a, &b],
            &["XREAD", "STREAMS", &a, &b, "0", "0"],
            &["LMPOP", "2", &a, &b, "LEFT"],
            &["COPY", &a, &b],
            &["SORT", &a, "STORE", &b],
            &[
                "GEOSEARCHSTORE",
                &a,
                &b,
                "FROMLONLAT",
                "0",
                "0",
                "BYRADIUS",
                "1",
                "km",
            ],
            &["EVALSHA", &"0".repeat(40), "2", &a, &b],
            &["FCALL", "f", "2", &a, &b],
            &["WATCH", &a, &b],
        ];
        for cmd in cmds {
            let r = bounded(Duration::from_secs(5), "a refusal", c.cmd(cmd)).await;
            assert!(is_crossslot(&r), "{cmd:?}: {r:?}");
        }
        assert_eq!(shards.dbsizes(0).await, [0; SHARDS]);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 3. SCAN and the keyless commands
// ---------------------------------------------------------------------------------------------

/// 600 strings, 150 lists and 150 hashes (`s:N`, `l:N`, `h:N`), written through `c`.
async fn load_keyspace(c: &mut RawClient) -> Vec<String> {
    let mut cmds: Vec<Vec<String>> = Vec::new();
    for i in 0..600 {
        cmds.push(command("SET", [format!("s:{i}"), "v".into()]));
    }
    for i in 0..150 {
        cmds.push(command("RPUSH", [format!("l:{i}"), "v".into()]));
        cmds.push(command("HSET", [format!("h:{i}"), "f".into(), "v".into()]));
    }
    let refs: Vec<&[String]> = cmds.iter().map(Vec::as_slice).collect();
    let replies = c.send_all(&refs).await;
    let ok = |r: &Reply| *r == Reply::ok() || *r == Reply::Int(1);
    assert!(
        replies.iter().all(ok),
        "loading: {:?}",
        replies.iter().find(|r| !ok(r))
    );
    let mut keys: Vec<String> = cmds.into_iter().map(|c| c[1].clone()).collect();
    keys.sort();
    keys
}

/// Iterates `SCAN cursor extra...` on `c` from 0 until the cursor is 0 again and returns every key
/// it gave, sorted, duplicates kept. Every cursor must be an unsigned integer.
async fn scan_all(c: &mut RawClient, extra: &[&str]) -> Vec<String> {
    let mut cursor = "0".to_owned();
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let mut cmd = vec!["SCAN", cursor.as_str()];
        cmd.extend_from_slice(extra);
        let Reply::Array(Some(parts)) = c.cmd(&cmd).await else {
            panic!("SCAN {cursor} {extra:?}: not an array");
        };
        let [Reply::Bulk(Some(next)), Reply::Array(Some(keys))] = &parts[..] else {
            panic!("SCAN {cursor} {extra:?}: {parts:?}");
        };
        let next = String::from_utf8(next.clone()).expect("utf-8 cursor");
        assert!(
            next.parse::<u64>().is_ok(),
            "cursor {next:?} is not an integer"
        );
        for k in keys {
            let Reply::Bulk(Some(k)) = k else {
                panic!("SCAN gave {k:?}");
            };
            out.push(String::from_utf8(k.clone()).unwrap());
        }
        if next == "0" {
            out.sort();
            return out;
        }
        cursor = next;
    }
    panic!("SCAN {extra:?} never returned cursor 0");
}

/// The SCAN cases: small and large COUNT, MATCH, TYPE, and what each must return of `keys`.
fn scan_cases(keys: &[String]) -> Vec<(Vec<&'static str>, Vec<String>)> {
    let pick = |f: &dyn Fn(&str) -> bool| keys.iter().filter(|k| f(k)).cloned().collect();
    vec![
        (vec![], keys.to_vec()),
        (vec!["COUNT", "3"], keys.to_vec()),
        (vec!["COUNT", "5000"], keys.to_vec()),
        (
            vec!["MATCH", "s:1*", "COUNT", "50"],
            pick(&|k| k.starts_with("s:1")),
        ),
        (vec!["TYPE", "list"], pick(&|k| k.starts_with("l:"))),
        (
            vec!["MATCH", "h:*", "TYPE", "hash", "COUNT", "20"],
            pick(&|k| k.starts_with("h:")),
        ),
    ]
}

/// Fails the test, naming a few of the keys missing and repeated, unless `got` (sorted) is `want`.
fn same_keys(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let wanted: BTreeSet<&String> = want.iter().collect();
    let missing: Vec<&String> = want.iter().filter(|k| !got.contains(k)).collect();
    let repeated: Vec<&String> = got
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    let unknown: Vec<&String> = got.iter().filter(|k| !wanted.contains(k)).collect();
    panic!(
        "{what}: {} keys for {}; {} missing {:?}..., {} repeated {:?}..., {} not asked for {:?}...",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(5)],
        repeated.len(),
        &repeated[..repeated.len().min(5)],
        unknown.len(),
        &unknown[..unknown.len().min(5)],
    );
}

/// SCAN through the proxy visits every key exactly once, with an integer cursor that is 0 only
/// at the end, for every COUNT, MATCH and TYPE case, in RESP2 and RESP3. The same iteration on
/// each server directly, put together, gives the same keys: the check itself is sound.
#[tokio::test]
async fn scan_visits_every_key_exactly_once() {
    bounded(LIMIT, "SCAN across shards", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let keys = load_keyspace(&mut c).await;
        let sizes = shards.dbsizes(0).await;
        assert!(
            sizes.iter().all(|&n| n > 0),
            "a shard got no keys: {sizes:?}"
        );
        let mut resp3 = shards.raw().await;
        assert!(matches!(resp3.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
        for (args, want) in scan_cases(&keys) {
            let mut direct = Vec::new();
            for s in &shards.servers {
                direct.extend(scan_all(&mut s.direct().await, &args).await);
            }
            direct.sort();
            same_keys(&direct, &want, &format!("directly, SCAN {args:?}"));
            let what = format!("SCAN {args:?}");
            same_keys(&scan_all(&mut c, &args).await, &want, &what);
            same_keys(
                &scan_all(&mut resp3, &args).await,
                &want,
                &format!("RESP3 {what}"),
            );
        }
    })
    .await
}

/// The keyless commands: DBSIZE is the sum over shards, KEYS the union, PING and ECHO are
/// answered, RANDOMKEY gives an existing key (nil when all are empty), FLUSHDB and FLUSHALL empty
/// every shard.
#[tokio::test]
async fn keyless_commands_cover_every_shard() {
    bounded(LIMIT, "keyless commands", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let keys = load_keyspace(&mut c).await;
        assert_eq!(c.cmd(&["DBSIZE"]).await, Reply::Int(keys.len() as i64));
        let listed = |r: Reply| -> Vec<String> {
            let Reply::Array(Some(items)) = r else {
                panic!("KEYS: {r:?}");
            };
            let mut out: Vec<String> = items
                .into_iter()
                .map(|k| match k {
                    Reply::Bulk(Some(k)) => String::from_utf8(k).unwrap(),
                    other => panic!("KEYS gave {other:?}"),
                })
                .collect();
            out.sort();
            out
        };
        assert_eq!(listed(c.cmd(&["KEYS", "*"]).await), keys);
        let l: Vec<String> = keys
            .iter()
            .filter(|k| k.starts_with("l:"))
            .cloned()
            .collect();
        assert_eq!(listed(c.cmd(&["KEYS", "l:*"]).await), l);
        assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        assert_eq!(c.cmd(&["PING", "hi"]).await, Reply::bulk("hi"));
        assert_eq!(c.cmd(&["ECHO", "hello"]).await, Reply::bulk("hello"));
        let known: BTreeSet<&String> = keys.iter().collect();
        for _ in 0..20 {
            match c.cmd(&["RANDOMKEY"]).await {
                Reply::Bulk(Some(k)) => {
                    let k = String::from_utf8(k).unwrap();
                    assert!(
                        known.contains(&k),
                        "RANDOMKEY gave {k}, which does not exist"
                    );
                }
                other => panic!("RANDOMKEY: {other:?}"),
            }
        }
        assert_eq!(c.cmd(&["FLUSHDB"]).await, Reply::ok());
        assert_eq!(shards.dbsizes(0).await, [0; SHARDS]);
        assert_eq!(c.cmd(&["RANDOMKEY"]).await, Reply::nil());
        assert_eq!(c.cmd(&["DBSIZE"]).await, Reply::Int(0));
        // FLUSHALL empties every db of every shard.
        load_keyspace(&mut c).await;
        let mut other_db = shards.raw().await;
        assert_eq!(other_db.cmd(&["SELECT", "5"]).await, Reply::ok());
        load_keyspace(&mut other_db).await;
        assert!(shards.dbsizes(5).await.iter().all(|&n| n > 0));
        assert_eq!(c.cmd(&["FLUSHALL"]).await, Reply::ok());
        assert_eq!(shards.dbsizes(0).await, [0; SHARDS]);
        assert_eq!(shards.dbsizes(5).await, [0; SHARDS]);
    })
    .await
}

/// RANDOMKEY answers nil only when every shard is empty, as Redis does for its one keyspace:
/// with keys on one shard alone, it gives one of them every time.
#[tokio::test]
async fn randomkey_is_nil_only_when_every_shard_is_empty() {
    bounded(LIMIT, "RANDOMKEY", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        for i in 0..SHARDS {
            assert_eq!(c.cmd(&["FLUSHDB"]).await, Reply::ok());
            let key = shards.key(i, "only");
            assert_eq!(c.cmd(&["SET", &key, "v"]).await, Reply::ok());
            for _ in 0..30 {
                let r = c.cmd(&["RANDOMKEY"]).await;
                assert_eq!(r, Reply::bulk(&key), "keys on shard {i} only");
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// 4. Ejection
// ---------------------------------------------------------------------------------------------

/// Ejection after 2 failures, retried after 2 s.
const EJECT: Eject = Eject {
    failure_limit: 2,
    retry_timeout: Duration::from_secs(2),
};

/// How long a test polls for a server to be ejected, or to come back.
const EJECT_WAIT: Duration = Duration::from_secs(15);

/// Shard 0 is SIGKILLed: after the failure limit its keys go to the other shards and succeed (as
/// twemproxy does; until then they fail explicitly); restarted, it takes its keys again once the
/// retry timeout has passed, not before. The other shards serve throughout.
#[tokio::test]
async fn a_dead_shard_is_ejected_and_comes_back_twemproxy_too() {
    bounded(LIMIT, "ejection", async {
        let options = ShardOptions {
            eject: Some(EJECT),
            ..ShardOptions::default()
        };
        let mut shards = Shards::start(SHARDS, options).await;
        let mut c = shards.raw().await;
        let before = shards.key(0, "before");
        assert_eq!(c.cmd(&["SET", &before, "v"]).await, Reply::ok());
        assert_eq!(shards.holders(&before, 0).await, [0]);
        shards.servers[0].kill();

        // Until the shard is ejected its keys fail explicitly; then they succeed elsewhere.
        let moved = shards.key(0, "moved");
        let deadline = Instant::now() + EJECT_WAIT;
        let mut failures = 0;
        loop {
            match c.cmd(&["SET", &moved, "v"]).await {
                r if r == Reply::ok() => break,
                r if is_failure(&shards, &r) => failures += 1,
                r => panic!("SET on the dead shard: {r:?}"),
            }
            assert!(Instant::now() < deadline, "shard 0 never ejected");
            tokio::time::sleep(POLL).await;
        }
        let ejected = Instant::now();
        eprintln!("ejected after {failures} failed commands");
        let holders = shards.holders(&moved, 0).await;
        assert!(holders == [1] || holders == [2], "{moved} on {holders:?}");
        for i in 1..SHARDS {
            let key = shards.key(i, "during");
            assert_eq!(c.cmd(&["SET", &key, "v"]).await, Reply::ok());
            assert_eq!(shards.holders(&key, 0).await, [i]);
        }

        // Back after the retry timeout.
        shards.servers[0].restart().await;
        let deadline = Instant::now() + EJECT_WAIT;
        for attempt in 0.. {
            let back = shards.key(0, &format!("back:{attempt}"));
            assert_eq!(c.cmd(&["SET", &back, "v"]).await, Reply::ok());
            let holders = shards.holders(&back, 0).await;
            if holders == [0] {
                break;
            }
            assert!(holders == [1] || holders == [2], "{back} on {holders:?}");
            assert!(Instant::now() < deadline, "shard 0 never came back");
            tokio::time::sleep(POLL).await;
        }
        let out_for = ejected.elapsed();
        eprintln!("shard 0 took its keys again {out_for:?} after it was seen ejected");
        // Seen ejected at most a poll after it was; back no earlier than the retry timeout.
        let slack = Duration::from_millis(500);
        assert!(
            out_for + slack >= EJECT.retry_timeout,
            "back after only {out_for:?}"
        );
    })
    .await
}

/// Without `auto_eject_hosts`, a dead shard's keys fail explicitly every time and go nowhere
/// else, while the other shards serve; once the shard is back, its keys are served by it again.
#[tokio::test]
async fn without_ejection_a_dead_shards_keys_fail_and_stay_twemproxy_too() {
    bounded(LIMIT, "no ejection", async {
        let mut shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        shards.servers[0].kill();
        let key = shards.key(0, "k");
        // Well past any failure limit, and past EJECT's retry timeout.
        let until = Instant::now() + EJECT.retry_timeout + Duration::from_millis(500);
        let mut attempts = 0;
        while attempts < 20 || Instant::now() < until {
            let r = c.cmd(&["SET", &key, "v"]).await;
            assert!(is_failure(&shards, &r), "SET on the dead shard: {r:?}");
            for i in 1..SHARDS {
                let other = shards.key(i, "k");
                assert_eq!(c.cmd(&["SET", &other, "v"]).await, Reply::ok());
            }
            attempts += 1;
            tokio::time::sleep(POLL).await;
        }
        assert!(
            shards.holders(&key, 0).await.is_empty(),
            "{key} was remapped"
        );
        shards.servers[0].restart().await;
        let deadline = Instant::now() + EJECT_WAIT;
        while c.cmd(&["SET", &key, "v"]).await != Reply::ok() {
            assert!(Instant::now() < deadline, "shard 0 never served again");
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(shards.holders(&key, 0).await, [0]);
    })
    .await
}

/// An explicit failure of the proxy's (not a value, not another error).
fn is_failure(shards: &Shards, r: &Reply) -> bool {
    r.error_text()
        .is_some_and(|e| e.starts_with(shards.failure()))
}

// ---------------------------------------------------------------------------------------------
// 5. Per-session state on every shard
// ---------------------------------------------------------------------------------------------

/// After `SELECT 3`, keys of every shard land in db 3 of their server, split and keyless commands
/// work in db 3, and another session still sees db 0.
#[tokio::test]
async fn select_holds_on_every_shard() {
    bounded(LIMIT, "SELECT across shards", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        assert_eq!(c.cmd(&["SELECT", "3"]).await, Reply::ok());
        let keys: Vec<String> = (0..SHARDS).map(|i| shards.key(i, "k")).collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(c.cmd(&["SET", k, &format!("v{i}")]).await, Reply::ok());
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(shards.holders(k, 3).await, [i], "{k}");
        }
        assert_eq!(shards.dbsizes(0).await, [0; SHARDS]);
        let want: Vec<Reply> = (0..SHARDS).map(|i| Reply::bulk(format!("v{i}"))).collect();
        assert_eq!(
            c.cmd(&command("MGET", keys.clone())).await,
            Reply::Array(Some(want))
        );
        assert_eq!(c.cmd(&["DBSIZE"]).await, Reply::Int(SHARDS as i64));
        let mut other = shards.raw().await;
        let nils = Reply::Array(Some(vec![Reply::nil(); SHARDS]));
        assert_eq!(other.cmd(&command("MGET", keys.clone())).await, nils);
        assert_eq!(
            c.cmd(&command("DEL", keys)).await,
            Reply::Int(SHARDS as i64)
        );
        assert_eq!(shards.dbsizes(3).await, [0; SHARDS]);
    })
    .await
}

/// `HELLO 3 AUTH` and `AUTH` take effect on every shard: a user allowed only keys ending in
/// `:bob` writes those on every shard and is refused others there (`NOPERM`), with RESP3 replies
/// from every shard; a session that did not authenticate stays the default user. A split command
/// with a refused part is refused.
#[tokio::test]
async fn auth_and_hello_hold_on_every_shard() {
    bounded(LIMIT, "AUTH and HELLO across shards", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        for s in &shards.servers {
            let r = s
                .direct()
                .await
                .cmd(&["ACL", "SETUSER", "bob", "on", ">pw", "+@all", "~*:bob"])
                .await;
            assert_eq!(r, Reply::ok());
        }
        let mut resp3 = shards.raw().await;
        let hello = resp3.cmd(&["HELLO", "3", "AUTH", "bob", "pw"]).await;
        assert!(matches!(hello, Reply::Map(_)), "HELLO 3 AUTH: {hello:?}");
        let mut resp2 = shards.raw().await;
        assert_eq!(resp2.cmd(&["AUTH", "bob", "pw"]).await, Reply::ok());
        let mut anonymous = shards.raw().await;
        for i in 0..SHARDS {
            let (mine, other) = (shards.key(i, "h:bob"), shards.key(i, "h:other"));
            for c in [&mut resp3, &mut resp2] {
                assert_eq!(c.cmd(&["HSET", &mine, "f", "v"]).await.error_text(), None);
                let refused = c.cmd(&["HSET", &other, "f", "v"]).await;
                let noperm = refused
                    .error_text()
                    .is_some_and(|e| e.starts_with("NOPERM"));
                assert!(noperm, "shard {i}: {refused:?}");
            }
            let map = Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]);
            assert_eq!(resp3.cmd(&["HGETALL", &mine]).await, map, "shard {i}");
            let flat = Reply::Array(Some(vec![Reply::bulk("f"), Reply::bulk("v")]));
            assert_eq!(resp2.cmd(&["HGETALL", &mine]).await, flat, "shard {i}");
            assert_eq!(
                anonymous.cmd(&["HSET", &other, "f", "v"]).await,
                Reply::Int(1)
            );
            assert_eq!(shards.holders(&other, 0).await, [i]);
        }
        // A split command with one part refused is refused as a whole, as one Redis refuses it.
        let mine: Vec<String> = (0..SHARDS).map(|i| shards.key(i, "h:bob")).collect();
        let mixed = [mine[0].clone(), shards.key(1, "h:other")];
        for c in [&mut resp3, &mut resp2] {
            assert_eq!(c.cmd(&command("EXISTS", mine.clone())).await, Reply::Int(3));
            let refused = c.cmd(&command("EXISTS", mixed.clone())).await;
            let noperm = refused
                .error_text()
                .is_some_and(|e| e.starts_with("NOPERM"));
            assert!(noperm, "EXISTS {mixed:?}: {refused:?}");
        }
    })
    .await
}

/// MULTI/EXEC and WATCH on the keys of one shard, for each shard: the transaction runs, and a
/// write by another client to a watched key makes EXEC answer nil.
#[tokio::test]
async fn transactions_and_watch_on_one_shard() {
    bounded(LIMIT, "MULTI and WATCH on one shard", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let (mut a, mut b) = (shards.raw().await, shards.raw().await);
        let queued = || Reply::Simple("QUEUED".into());
        for i in 0..SHARDS {
            let (k, n, w) = (shards.key(i, "k"), shards.key(i, "n"), shards.key(i, "w"));
            let r = a
                .send_all(&[
                    &["MULTI"][..],
                    &["SET", &k, "1"],
                    &["INCR", &n],
                    &["GET", &k],
                    &["EXEC"],
                ])
                .await;
            let exec = Reply::Array(Some(vec![Reply::ok(), Reply::Int(1), Reply::bulk("1")]));
            assert_eq!(
                r,
                [Reply::ok(), queued(), queued(), queued(), exec],
                "shard {i}"
            );
            assert_eq!(shards.holders(&n, 0).await, [i]);

            // WATCH, then another client writes the key: EXEC does nothing.
            assert_eq!(a.cmd(&["WATCH", &w]).await, Reply::ok());
            assert_eq!(b.cmd(&["SET", &w, "theirs"]).await, Reply::ok());
            let r = a
                .send_all(&[&["MULTI"][..], &["SET", &w, "mine"], &["EXEC"]])
                .await;
            assert_eq!(r, [Reply::ok(), queued(), Reply::Array(None)], "shard {i}");
            assert_eq!(a.cmd(&["GET", &w]).await, Reply::bulk("theirs"));
            // WATCH with no other writer: EXEC runs.
            assert_eq!(a.cmd(&["WATCH", &w]).await, Reply::ok());
            let r = a
                .send_all(&[&["MULTI"][..], &["SET", &w, "mine"], &["EXEC"]])
                .await;
            let exec = Reply::Array(Some(vec![Reply::ok()]));
            assert_eq!(r, [Reply::ok(), queued(), exec], "shard {i}");
            assert_eq!(b.cmd(&["GET", &w]).await, Reply::bulk("mine"));
        }
    })
    .await
}

/// A blocking command waits on the shard of its keys, for each shard: Redis there reports the
/// client blocked, and a push by another client wakes it with the value.
#[tokio::test]
async fn blocking_commands_wait_on_their_shard() {
    bounded(LIMIT, "BLPOP on each shard", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let (mut a, mut b) = (shards.raw().await, shards.raw().await);
        for i in 0..SHARDS {
            let (q, r) = (shards.key(i, "q"), shards.key(i, "r"));
            a.send(&common::encode(&["BLPOP", &q, &r, "0"])).await;
            shards.servers[i].wait_blocked(1).await;
            assert_eq!(b.cmd(&["RPUSH", &r, "v"]).await, Reply::Int(1));
            let popped = bounded(Duration::from_secs(5), "BLPOP wakes", a.read_reply()).await;
            assert_eq!(
                popped,
                Reply::Array(Some(vec![Reply::bulk(&r), Reply::bulk("v")]))
            );
            shards.servers[i].wait_blocked(0).await;
        }
    })
    .await
}

/// Pub/sub lives on the first server: a subscriber through respipe gets what another client
/// publishes through respipe, and what is published on the first server directly.
#[tokio::test]
async fn pubsub_is_on_the_first_server() {
    bounded(LIMIT, "pub/sub on the first server", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let (mut sub, mut publisher) = (shards.raw().await, shards.raw().await);
        let subscribed = sub.cmd(&["SUBSCRIBE", "news"]).await;
        let want = Reply::Array(Some(vec![
            Reply::bulk("subscribe"),
            Reply::bulk("news"),
            Reply::Int(1),
        ]));
        assert_eq!(subscribed, want);
        let message = |text: &str| {
            Reply::Array(Some(vec![
                Reply::bulk("message"),
                Reply::bulk("news"),
                Reply::bulk(text),
            ]))
        };
        assert_eq!(
            publisher.cmd(&["PUBLISH", "news", "via respipe"]).await,
            Reply::Int(1)
        );
        assert_eq!(sub.read_reply().await, message("via respipe"));
        let mut first = shards.servers[0].direct().await;
        assert_eq!(
            first.cmd(&["PUBLISH", "news", "direct"]).await,
            Reply::Int(1)
        );
        assert_eq!(sub.read_reply().await, message("direct"));
    })
    .await
}

/// Scripts and functions are loaded on every shard: after one `SCRIPT LOAD` (`FUNCTION LOAD`)
/// through respipe, `EVALSHA` (`FCALL`) runs with the keys of any shard; `SCRIPT EXISTS` says yes
/// only for a script every shard has; after `SCRIPT FLUSH` no shard has it.
#[tokio::test]
async fn scripts_and_functions_load_on_every_shard() {
    bounded(LIMIT, "scripts on every shard", async {
        let shards = Shards::start(SHARDS, ShardOptions::default()).await;
        let mut c = shards.raw().await;
        let Reply::Bulk(Some(sha)) = c.cmd(&["SCRIPT", "LOAD", "return KEYS[1]"]).await else {
            panic!("SCRIPT LOAD gave no SHA");
        };
        let sha = String::from_utf8(sha).unwrap();
        let library =
            "#!lua name=lib\nredis.register_function('f', function(keys) return keys[1] end)";
        assert_eq!(
            c.cmd(&["FUNCTION", "LOAD", library]).await,
            Reply::bulk("lib")
        );
        for i in 0..SHARDS {
            let key = shards.key(i, "k");
            assert_eq!(
                c.cmd(&["EVALSHA", &sha, "1", &key]).await,
                Reply::bulk(&key)
            );
            assert_eq!(c.cmd(&["FCALL", "f", "1", &key]).await, Reply::bulk(&key));
        }
        let only_first = "return 'first'";
        let mut first = shards.servers[0].direct().await;
        let Reply::Bulk(Some(partial)) = first.cmd(&["SCRIPT", "LOAD", only_first]).await else {
            panic!("SCRIPT LOAD on the first server gave no SHA");
        };
        let partial = String::from_utf8(partial).unwrap();
        let exists = c.cmd(&["SCRIPT", "EXISTS", &sha, &partial]).await;
        assert_eq!(
            exists,
            Reply::Array(Some(vec![Reply::Int(1), Reply::Int(0)]))
        );
        assert_eq!(c.cmd(&["SCRIPT", "FLUSH"]).await, Reply::ok());
        for i in 0..SHARDS {
            let r = c.cmd(&["EVALSHA", &sha, "1", &shards.key(i, "k")]).await;
            let noscript = r.error_text().is_some_and(|e| e.starts_with("NOSCRIPT"));
            assert!(noscript, "shard {i} after SCRIPT FLUSH: {r:?}");
        }
    })
    .await
}

/// Polls `cmd` on a direct connection until its reply satisfies `done`; fails after `LIMIT`.
async fn poll_direct(direct: &mut RawClient, cmd: &[&str], done: impl Fn(&Reply) -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done(&direct.cmd(cmd).await) {
        assert!(
            Instant::now() < deadline,
            "{cmd:?} never gave the reply waited for"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Server-wide admin commands that Redis Cluster sends to every node reach every shard:
/// `CONFIG SET` / `RESETSTAT`, `SLOWLOG RESET`, `LATENCY RESET` (a sum); `SCRIPT KILL` reaches
/// the shard whose script is busy (the others' `NOTBUSY` does not hide its `+OK`), so one busy
/// script cannot wedge a shard behind respipe.
#[tokio::test]
async fn admin_commands_reach_every_shard() {
    bounded(LIMIT, "admin commands", async {
        let options = ShardOptions {
            redis_args: vec!["--busy-reply-threshold".into(), "50".into()],
            ..ShardOptions::default()
        };
        let shards = Shards::start(SHARDS, options).await;
        let mut c = shards.raw().await;
        let set = ["CONFIG", "SET", "slowlog-max-len", "77"];
        assert_eq!(c.cmd(&set).await, Reply::ok());
        for server in &shards.servers {
            let mut direct = server.direct().await;
            let got = direct.cmd(&["CONFIG", "GET", "slowlog-max-len"]).await;
            let want = [Reply::bulk("slowlog-max-len"), Reply::bulk("77")];
            assert_eq!(got, Reply::Array(Some(want.to_vec())), "{}", server.port());
        }
        assert_eq!(c.cmd(&["CONFIG", "RESETSTAT"]).await, Reply::ok());
        assert_eq!(c.cmd(&["SLOWLOG", "RESET"]).await, Reply::ok());
        assert!(matches!(c.cmd(&["LATENCY", "RESET"]).await, Reply::Int(_)));

        // Nothing busy anywhere: every shard's NOTBUSY, as Redis answers.
        let idle = c.cmd(&["SCRIPT", "KILL"]).await;
        assert!(
            idle.error_text().is_some_and(|e| e.starts_with("NOTBUSY")),
            "{idle:?}"
        );
        // A script spinning on the last shard (started there directly).
        let last = shards.servers.last().expect("a shard");
        let mut spinning = last.direct().await;
        spinning
            .send(&wire::encode(&["EVAL", "while true do end", "0"]))
            .await;
        let mut direct = last.direct().await;
        let busy = |r: &Reply| r.error_text().is_some_and(|e| e.starts_with("BUSY"));
        poll_direct(&mut direct, &["PING"], busy).await;
        assert_eq!(c.cmd(&["SCRIPT", "KILL"]).await, Reply::ok());
        let killed = spinning.read_reply().await;
        assert!(killed.error_text().is_some(), "{killed:?}");
        let pong = |r: &Reply| *r == Reply::Simple("PONG".into());
        poll_direct(&mut direct, &["PING"], pong).await;
        assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}
