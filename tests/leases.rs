//! Dedicated connections beyond the basics (issue 10, items 13 and 14): replication readers
//! (`redis-cli --rdb`, raw `SYNC`, `REPLCONF` + `PSYNC`) spliced to a connection of their own, and
//! warm leases: handshaken in advance, scrubbed when given back, never carrying one client's state
//! into the next, bounded by `max_leases`.

mod common;

use std::num::NonZeroUsize;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, encode, poll_until, Proxy, RawClient, RedisServer, Reply};
use respipe::command::Shape;
use respipe::config::Upstream;
use respipe::pool::{Budget, Lease, PoolKey, Pools};
use respipe::reply::{self, Response};
use respipe::upstream::Request;
use respipe::Config;
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(15);

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn arr(items: Vec<Reply>) -> Reply {
    Reply::Array(Some(items))
}

/// respipe's refusal when `max` leases are out.
fn no_lease(max: usize) -> Reply {
    Reply::Error(format!(
        "ERR respipe: no dedicated upstream connection available (max_leases={max} in use)"
    ))
}

/// Reads from `c` until `buf` holds `needle` (bounded by [`WAIT`]); returns everything read.
async fn read_until(c: &mut RawClient, mut buf: Vec<u8>, needle: &[u8]) -> Vec<u8> {
    bounded(WAIT, "the expected bytes", async {
        while !buf.windows(needle.len()).any(|w| w == needle) {
            let mut chunk = [0u8; 16 * 1024];
            let n = c.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
            buf.extend_from_slice(&chunk[..n]);
        }
        buf
    })
    .await
}

/// `MULTI; SET key v; EXEC` in one write, checked.
async fn tx(c: &mut RawClient, key: &str) {
    let mut bytes = encode(&["MULTI"]);
    bytes.extend_from_slice(&encode(&["SET", key, "v"]));
    bytes.extend_from_slice(&encode(&["EXEC"]));
    c.send(&bytes).await;
    let got = c.read_replies(3).await;
    assert_eq!(got[2], arr(vec![Reply::ok()]), "{got:?}");
}

/// Sends `MULTI` on `c` until it is accepted (a lease may be on its way back), bounded by [`WAIT`].
async fn multi_until_ok(c: &mut RawClient) {
    let deadline = std::time::Instant::now() + WAIT;
    while c.cmd(&["MULTI"]).await != Reply::ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "MULTI never got a lease"
        );
        tokio::time::sleep(common::POLL).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Item 13: replication readers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redis_cli_rdb_through_respipe_writes_a_valid_rdb() {
    bounded(LIMIT, "redis-cli --rdb", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["SET", "in-the-dump", "yes"]).await, Reply::ok());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dump.rdb");
        let mut cli = Command::new("redis-cli");
        cli.args(["-h", "127.0.0.1", "-p", &proxy.addr().port().to_string()])
            .arg("--rdb")
            .arg(&file);
        let (code, out, err) = common::run_to_exit(cli, WAIT);
        assert_eq!(code, Some(0), "redis-cli --rdb: {out} {err}");
        let rdb = std::fs::read(&file).expect("the RDB file");
        assert!(
            rdb.starts_with(b"REDIS"),
            "not an RDB: {:?}",
            &rdb[..rdb.len().min(16)]
        );
        assert!(rdb.windows(11).any(|w| w == b"in-the-dump"));
        // The proxy still serves others.
        assert_eq!(c.cmd(&["GET", "in-the-dump"]).await, Reply::bulk("yes"));
    })
    .await
}

#[tokio::test]
async fn sync_streams_the_rdb_then_the_propagated_writes() {
    bounded(LIMIT, "SYNC", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut replica = proxy.raw().await;
        replica.send(b"SYNC\r\n").await;
        // Redis may send newlines while it prepares the payload, then `$<len>\r\n<RDB>`.
        let head = read_until(&mut replica, Vec::new(), b"REDIS").await;
        let start = head.iter().position(|&b| b == b'$').expect("a bulk length");
        let end = head[start..].windows(2).position(|w| w == b"\r\n").unwrap() + start;
        let len: usize = std::str::from_utf8(&head[start + 1..end])
            .unwrap()
            .parse()
            .expect("the RDB length");
        assert_eq!(&head[end + 2..end + 7], b"REDIS");
        let mut rest = head[end + 2..].to_vec();
        while rest.len() < len {
            let mut chunk = vec![0u8; len - rest.len()];
            let n = bounded(WAIT, "the RDB payload", replica.stream.read(&mut chunk))
                .await
                .unwrap();
            assert!(n > 0, "closed inside the RDB payload");
            rest.extend_from_slice(&chunk[..n]);
        }
        let after = rest.split_off(len);

        let mut writer = proxy.raw().await;
        assert_eq!(
            writer.cmd(&["SET", "propagated", "value"]).await,
            Reply::ok()
        );
        read_until(
            &mut replica,
            after,
            &encode(&["SET", "propagated", "value"]),
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn replconf_then_psync_gets_a_full_resync_and_counts_as_a_lease() {
    bounded(LIMIT, "PSYNC", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| c.leases.max_leases = nz(1)).await;
        let mut replica = proxy.raw().await;
        // Replies owed before the switch come first, in order.
        let mut bytes = encode(&["SET", "before", "1"]);
        bytes.extend_from_slice(&encode(&["REPLCONF", "capa", "eof"]));
        replica.send(&bytes).await;
        assert_eq!(replica.read_reply().await, Reply::ok());
        assert_eq!(replica.read_reply().await, Reply::ok());
        replica.send(&encode(&["PSYNC", "?", "-1"])).await;
        let got = read_until(&mut replica, Vec::new(), b"\r\n").await;
        // Newlines are Redis's keepalives while it prepares.
        let start = got.iter().position(|&b| b != b'\n').unwrap_or(0);
        assert!(
            got[start..].starts_with(b"+FULLRESYNC "),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        // The spliced connection holds the only lease.
        let mut other = proxy.raw().await;
        assert_eq!(other.cmd(&["MULTI"]).await, no_lease(1));
        drop(replica);
        multi_until_ok(&mut other).await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Item 14: warm leases
// ---------------------------------------------------------------------------------------------

/// `CLIENT LIST` on a direct connection (which is in it too).
async fn client_list(redis: &RedisServer) -> String {
    let mut d = redis.direct().await;
    let Reply::Bulk(Some(list)) = d.cmd(&["CLIENT", "LIST"]).await else {
        panic!("CLIENT LIST");
    };
    String::from_utf8(list).unwrap()
}

/// The connections of the Redis that are in `db` and speak `resp`, with their last command.
async fn lease_commands(redis: &RedisServer, db: u32, resp: u32) -> Vec<String> {
    client_list(redis)
        .await
        .lines()
        .filter(|l| {
            common::field(l, "db") == Some(db.to_string())
                && common::field(l, "resp") == Some(resp.to_string())
        })
        .filter_map(|l| common::field(l, "cmd"))
        .collect()
}

#[tokio::test]
async fn warm_leases_hide_the_handshake_from_transactions() {
    bounded(LIMIT, "warm leases", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        // In db 1 a lease's handshake is `SELECT 1`: the old code showed it before every MULTI.
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["SELECT", "1"]).await, Reply::ok());
        // The first transaction pays for a fresh lease and starts warm ones.
        tx(&mut c, "warm-up").await;
        let mut monitor = redis.direct().await;
        assert_eq!(monitor.cmd(&["MONITOR"]).await, Reply::ok());
        let mut seen = Vec::new();
        // A warm lease may still be on its way when a round starts: then that round shows its
        // handshake. Every round of the old code does.
        for round in 0..5 {
            poll_until(WAIT, "warm leases ready", || async {
                let cmds = lease_commands(&redis, 1, 2).await;
                let idle = cmds
                    .iter()
                    .filter(|c| *c == "ping" || *c == "select")
                    .count();
                (idle >= 2 && !cmds.iter().any(|c| c == "exec" || c == "reset")).then_some(())
            })
            .await;
            let marker = format!("marker-{round}");
            let mut d = redis.direct().await;
            assert_eq!(d.cmd(&["ECHO", &marker]).await, Reply::bulk(&marker));
            tx(&mut c, "in-round").await;
            let mut lines = Vec::new();
            let mut started = false;
            loop {
                let Reply::Simple(line) = monitor.read_reply().await else {
                    panic!("MONITOR line");
                };
                if line.contains(&marker) {
                    started = true;
                } else if started {
                    let done = line.contains("\"EXEC\"") || line.contains("\"exec\"");
                    lines.push(line);
                    if done {
                        break;
                    }
                }
            }
            let handshake = |l: &String| {
                let l = l.to_ascii_uppercase();
                l.contains("\"HELLO\"") || l.contains("\"SELECT\"") || l.contains("\"AUTH\"")
            };
            if !lines.iter().any(handshake) {
                return;
            }
            seen.push(lines);
        }
        panic!("every transaction showed a handshake: {seen:#?}");
    })
    .await
}

/// Sends `commands` on a lease's connection and returns the raw replies.
async fn on_lease(lease: &Lease, commands: &[&[&str]]) -> String {
    let mut bytes = Vec::new();
    for c in commands {
        bytes.extend_from_slice(&encode(c));
    }
    let (tx, mut rx) = reply::mailbox();
    let count = commands.len() as u32;
    let request = Request {
        bytes: Bytes::from(bytes),
        count,
        shape: Shape::One,
        reply: tx,
        stream: false,
    };
    lease
        .handle()
        .send(request)
        .await
        .expect("the lease's driver");
    let mut out = Vec::new();
    let mut got = 0;
    while got < count {
        match bounded(WAIT, "lease replies", rx.recv()).await.1 {
            Response::Replies { bytes, count } => {
                out.extend_from_slice(&bytes);
                got += count;
            }
            other => panic!("{other:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_given_back_lease_is_scrubbed_before_reuse() {
    bounded(LIMIT, "scrubbed lease", async {
        let redis = RedisServer::start().await;
        let mut config = Config {
            upstream: Upstream::tcp("127.0.0.1", redis.port()),
            ..Config::default()
        };
        config.leases.max_leases = nz(2);
        config.leases.warm_leases = 1;
        let pools = Arc::new(Pools::start(&config, None, &Budget::new(&config)));
        let key = PoolKey {
            db: 0,
            resp3: false,
            auth: None,
        };
        // Two permits: a fresh lease never starts a warm one with the last free permit.
        let lease = pools.lease(&key, 0).expect("a lease");
        let id = on_lease(&lease, &[&["CLIENT", "ID"]]).await;
        on_lease(
            &lease,
            &[
                &["CLIENT", "SETNAME", "leaked"],
                &["WATCH", "watched"],
                &["SELECT", "5"],
                &["HELLO", "3"],
            ],
        )
        .await;
        pools.give_back(lease);
        // Scrubbed in the background; until then a lease is a fresh connection (closed here).
        let reused = poll_until(WAIT, "the given-back lease is lent again", || {
            let pools = pools.clone();
            let (id, key) = (id.clone(), key.clone());
            async move {
                let lease = pools.lease(&key, 0).expect("a lease");
                (on_lease(&lease, &[&["CLIENT", "ID"]]).await == id).then_some(lease)
            }
        })
        .await;
        let info = on_lease(&reused, &[&["CLIENT", "INFO"]]).await;
        for (field, want) in [
            ("name", ""),
            ("db", "0"),
            ("resp", "2"),
            ("multi", "-1"),
            ("flags", "N"),
        ] {
            let got = common::field(info.trim_end(), field);
            assert_eq!(got.as_deref(), Some(want), "{field} in {info}");
        }
        let mut d = redis.direct().await;
        assert_eq!(d.cmd(&["SET", "watched", "changed"]).await, Reply::ok());
        assert_eq!(
            on_lease(&reused, &[&["MULTI"], &["SET", "x", "1"], &["EXEC"]]).await,
            "+OK\r\n+QUEUED\r\n*1\r\n+OK\r\n",
            "no WATCH survives"
        );
    })
    .await
}

#[tokio::test]
async fn a_reused_lease_carries_no_state_into_the_next_client() {
    bounded(LIMIT, "no state leaks", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        for round in 0..4 {
            // Whatever respipe does with these inside a transaction, none may reach the next client.
            let mut bytes = encode(&["MULTI"]);
            bytes.extend_from_slice(&encode(&["CLIENT", "SETNAME", "leaked"]));
            bytes.extend_from_slice(&encode(&["SELECT", "5"]));
            bytes.extend_from_slice(&encode(&["WATCH", "w"]));
            bytes.extend_from_slice(&encode(&["SET", "a", &round.to_string()]));
            bytes.extend_from_slice(&encode(&["EXEC"]));
            a.send(&bytes).await;
            a.read_replies(6).await;
            assert_eq!(a.cmd(&["WATCH", "w"]).await, Reply::ok());
            assert_eq!(a.cmd(&["UNWATCH"]).await, Reply::ok());
        }
        drop(a);
        let mut b = proxy.raw().await;
        let mut d = redis.direct().await;
        for round in 0..4 {
            let key = format!("b{round}");
            assert_eq!(b.cmd(&["WATCH", "w"]).await, Reply::ok());
            assert_eq!(d.cmd(&["SET", "w", &key]).await, Reply::ok());
            assert_eq!(b.cmd(&["UNWATCH"]).await, Reply::ok());
            assert_eq!(b.cmd(&["MULTI"]).await, Reply::ok());
            assert_eq!(
                b.cmd(&["SET", &key, "v"]).await,
                Reply::Simple("QUEUED".into())
            );
            assert_eq!(b.cmd(&["EXEC"]).await, arr(vec![Reply::ok()]));
            assert_eq!(d.cmd(&["GET", &key]).await, Reply::bulk("v"), "db 0");
        }
        let list = client_list(&redis).await;
        assert!(!list.contains("name=leaked"), "{list}");
    })
    .await
}

#[tokio::test]
async fn max_leases_bounds_lent_and_warm_leases_together() {
    bounded(LIMIT, "max_leases with warm leases", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| c.leases.max_leases = nz(2)).await;
        // A's lease comes back and stays warm for db 0, holding one permit.
        let mut a = proxy.raw().await;
        for _ in 0..2 {
            assert_eq!(a.cmd(&["MULTI"]).await, Reply::ok());
            assert_eq!(a.cmd(&["EXEC"]).await, arr(vec![]));
        }
        // Two clients in db 1 need both permits: the warm db 0 lease gives way.
        let mut b = proxy.raw().await;
        let mut c = proxy.raw().await;
        for x in [&mut b, &mut c] {
            assert_eq!(x.cmd(&["SELECT", "1"]).await, Reply::ok());
            multi_until_ok(x).await;
        }
        let mut e = proxy.raw().await;
        assert_eq!(e.cmd(&["MULTI"]).await, no_lease(2));
        // Redis sees at most the shared pools' connections plus max_leases dedicated ones.
        let others = client_list(&redis).await.lines().count() - 1;
        assert!(others <= 2 + 2, "{others} connections besides this one");
    })
    .await
}
