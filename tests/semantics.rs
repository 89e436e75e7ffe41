//! Issue 3, row by row: every connection-state command a client can send (SELECT, AUTH, HELLO,
//! CLIENT, MULTI/EXEC/WATCH, blocking commands, pub/sub, MONITOR, RESET, QUIT) and the stateless
//! ones, through respipe against a real redis-server, checked against Redis's exact replies.
//! Mostly raw RESP (exact bytes), some through the `redis` crate; RESP3 through a local reader.

mod common;

use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, cmd_until, encode, poll_until, Proxy, RawClient, RedisServer, Reply};

const LIMIT: Duration = Duration::from_secs(90);
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn bulk(s: &str) -> Reply {
    Reply::bulk(s)
}

fn arr(items: Vec<Reply>) -> Reply {
    Reply::Array(Some(items))
}

fn err(text: &str) -> Reply {
    Reply::Error(text.into())
}

#[track_caller]
fn assert_err_prefix(r: &Reply, prefix: &str) {
    match r {
        Reply::Error(e) if e.starts_with(prefix) => {}
        other => panic!("expected an error starting {prefix:?}, got {other:?}"),
    }
}

/// Sends `cmds` in one write and reads `n` replies.
async fn pipeline(c: &mut RawClient, cmds: &[&[&str]], n: usize) -> Vec<Reply> {
    let mut bytes = Vec::new();
    for cmd in cmds {
        bytes.extend_from_slice(&encode(cmd));
    }
    c.send(&bytes).await;
    c.read_replies(n).await
}

/// `GET key` in `db`, on a direct connection to Redis.
async fn direct_get(redis: &RedisServer, db: u32, key: &str) -> Reply {
    let mut d = redis.direct().await;
    assert_eq!(d.cmd(&["SELECT", &db.to_string()]).await, Reply::ok());
    d.cmd(&["GET", key]).await
}

/// One field of `INFO <section>` on a direct connection.
async fn info_field(redis: &RedisServer, section: &str, field: &str) -> String {
    let mut d = redis.direct().await;
    let info = match d.cmd(&["INFO", section]).await {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        other => panic!("INFO {section}: {other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
        .trim()
        .to_string()
}

/// Waits until Redis reports `n` blocked clients.
async fn wait_blocked(redis: &RedisServer, n: u64) {
    poll_until(
        WAIT,
        &format!("{n} blocked clients on Redis"),
        || async move {
            let v: u64 = info_field(redis, "clients", "blocked_clients")
                .await
                .parse()
                .unwrap();
            (v == n).then_some(())
        },
    )
    .await
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// The value of `key` in a RESP3 map reply (keys as bulk or simple strings).
fn map_get<'a>(reply: &'a Reply, key: &str) -> Option<&'a Reply> {
    match reply {
        Reply::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| *k == bulk(key) || *k == Reply::Simple(key.into()))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Sends one command and reads its reply with its exact bytes.
async fn cmd_raw(c: &mut RawClient, args: &[&str]) -> (Reply, Bytes) {
    c.send(&encode(args)).await;
    match c.try_read_frame().await {
        Ok(Some(frame)) => frame,
        other => panic!("{args:?}: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// SELECT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn select_runs_commands_in_that_db_with_redis_errors() {
    bounded(LIMIT, "select", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;

        assert_eq!(c.cmd(&["SELECT", "3"]).await, Reply::ok());
        assert_eq!(c.cmd(&["SET", "k", "v3"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v3"));
        assert_eq!(direct_get(&redis, 3, "k").await, bulk("v3"));
        assert_eq!(direct_get(&redis, 0, "k").await, Reply::nil());

        assert_eq!(
            c.cmd(&["SELECT", "99"]).await,
            err("ERR DB index is out of range")
        );
        assert_eq!(
            c.cmd(&["SELECT", "abc"]).await,
            err("ERR value is not an integer or out of range")
        );
        // A failed SELECT leaves the client in db 3.
        assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v3"));

        // Pipelined, on a fresh connection.
        let mut p = proxy.raw().await;
        let replies = pipeline(
            &mut p,
            &[
                &["SELECT", "2"],
                &["SET", "x", "1"],
                &["SELECT", "0"],
                &["GET", "x"],
            ],
            4,
        )
        .await;
        assert_eq!(
            replies,
            vec![Reply::ok(), Reply::ok(), Reply::ok(), Reply::nil()]
        );
        assert_eq!(direct_get(&redis, 2, "x").await, bulk("1"));
    })
    .await
}

#[tokio::test]
async fn swapdb_and_move_pass_through() {
    bounded(LIMIT, "swapdb/move", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["SET", "mv", "m"]).await, Reply::ok());
        assert_eq!(c.cmd(&["MOVE", "mv", "4"]).await, Reply::Int(1));
        assert_eq!(c.cmd(&["GET", "mv"]).await, Reply::nil());
        assert_eq!(direct_get(&redis, 4, "mv").await, bulk("m"));

        assert_eq!(c.cmd(&["SET", "sw", "a"]).await, Reply::ok());
        assert_eq!(c.cmd(&["SWAPDB", "0", "7"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "sw"]).await, Reply::nil());
        assert_eq!(direct_get(&redis, 7, "sw").await, bulk("a"));
        assert_eq!(c.cmd(&["SELECT", "7"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "sw"]).await, bulk("a"));
    })
    .await
}

#[tokio::test]
async fn upstream_db_sets_the_default_db() {
    bounded(LIMIT, "upstream db", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| c.upstream.db = 5).await;
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["SET", "k5", "five"]).await, Reply::ok());
        assert_eq!(direct_get(&redis, 5, "k5").await, bulk("five"));
        assert_eq!(direct_get(&redis, 0, "k5").await, Reply::nil());
        assert_eq!(c.cmd(&["SELECT", "0"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "k5"]).await, Reply::nil());
        // A new client starts in db 5 again.
        let mut d = proxy.raw().await;
        assert_eq!(d.cmd(&["GET", "k5"]).await, bulk("five"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_in_different_dbs_never_see_each_other() {
    bounded(LIMIT, "interleaved dbs", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let run = |db: &'static str, tag: &'static str| {
            let addr = proxy.addr();
            async move {
                let mut c = RawClient::connect(addr).await;
                assert_eq!(c.cmd(&["SELECT", db]).await, Reply::ok());
                for i in 0..300 {
                    let v = format!("{tag}{i}");
                    let r = pipeline(&mut c, &[&["SET", "same", &v], &["GET", "same"]], 2).await;
                    assert_eq!(r, vec![Reply::ok(), bulk(&v)], "db {db} round {i}");
                }
            }
        };
        let a = tokio::spawn(run("1", "a"));
        let b = tokio::spawn(run("0", "b"));
        a.await.unwrap();
        b.await.unwrap();
        assert_eq!(direct_get(&redis, 1, "same").await, bulk("a299"));
        assert_eq!(direct_get(&redis, 0, "same").await, bulk("b299"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// AUTH
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_gives_the_rights_of_the_redis_user() {
    bounded(LIMIT, "acl auth", async {
        let redis = RedisServer::start().await;
        let mut d = redis.direct().await;
        assert_eq!(
            d.cmd(&["ACL", "SETUSER", "app", "on", ">pw", "~app:*", "+@all"])
                .await,
            Reply::ok()
        );
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        assert_eq!(
            c.cmd(&["AUTH", "app", "wrong"]).await,
            err("WRONGPASS invalid username-password pair or user is disabled.")
        );
        assert_eq!(c.cmd(&["AUTH", "app", "pw"]).await, Reply::ok());
        assert_eq!(c.cmd(&["SET", "app:1", "x"]).await, Reply::ok());
        assert_err_prefix(&c.cmd(&["SET", "other", "1"]).await, "NOPERM");
        assert_eq!(c.cmd(&["ACL", "WHOAMI"]).await, bulk("app"));
        assert_eq!(direct_get(&redis, 0, "app:1").await, bulk("x"));
        assert_eq!(direct_get(&redis, 0, "other").await, Reply::nil());

        // Another client is still the default user.
        let mut o = proxy.raw().await;
        assert_eq!(o.cmd(&["SET", "other", "1"]).await, Reply::ok());
        assert_eq!(o.cmd(&["ACL", "WHOAMI"]).await, bulk("default"));

        // The redis crate with credentials in the URL.
        let url = format!("redis://app:pw@{}/", proxy.addr());
        let client = redis::Client::open(url).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let ok: String = redis::cmd("SET")
            .arg("app:2")
            .arg("y")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(ok, "OK");
        let denied: redis::RedisResult<String> = redis::cmd("SET")
            .arg("nope")
            .arg("y")
            .query_async(&mut con)
            .await;
        let e = denied.unwrap_err();
        assert_eq!(e.code(), Some("NOPERM"), "{e:?}");
    })
    .await
}

#[tokio::test]
async fn respipe_requirepass() {
    bounded(LIMIT, "requirepass", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::start(redis.port(), |c| {
            c.listen.requirepass = Some(respipe::config::Secret("s3cret".into()))
        })
        .await;
        let addr = proxy.addr();
        poll_until(WAIT, "proxy answers after AUTH", || async move {
            let mut c = RawClient::try_connect(addr).await.ok()?;
            c.send(&[encode(&["AUTH", "s3cret"]), encode(&["PING"])].concat())
                .await;
            let r = tokio::time::timeout(Duration::from_secs(2), c.read_replies(2))
                .await
                .ok()?;
            (r == vec![Reply::ok(), Reply::Simple("PONG".into())]).then_some(())
        })
        .await;

        let mut c = proxy.raw().await;
        assert_eq!(
            c.cmd(&["GET", "k"]).await,
            err("NOAUTH Authentication required.")
        );
        assert_eq!(
            c.cmd(&["AUTH", "wrong"]).await,
            err("WRONGPASS invalid username-password pair or user is disabled.")
        );
        assert_eq!(
            c.cmd(&["GET", "k"]).await,
            err("NOAUTH Authentication required.")
        );
        assert_eq!(c.cmd(&["AUTH", "s3cret"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "k"]).await, Reply::nil());
        assert_eq!(c.cmd(&["SET", "k", "v"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v"));

        let mut h = RawClient::connect(addr).await;
        let hello = h.cmd(&["HELLO", "3", "AUTH", "default", "s3cret"]).await;
        assert_eq!(map_get(&hello, "proto"), Some(&Reply::Int(3)), "{hello:?}");
        assert_eq!(h.cmd(&["GET", "k"]).await, bulk("v"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// HELLO
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hello_switches_protocol() {
    bounded(LIMIT, "hello", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut d = redis.direct().await;
        assert_eq!(
            d.cmd(&["HSET", "h", "f1", "v1", "f2", "v2"]).await,
            Reply::Int(2)
        );

        let mut c = RawClient::connect(proxy.addr()).await;
        let (hello, raw) = cmd_raw(&mut c, &["HELLO", "3"]).await;
        assert!(
            raw.starts_with(b"%7\r\n"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(map_get(&hello, "proto"), Some(&Reply::Int(3)));
        assert_eq!(map_get(&hello, "server"), Some(&bulk("redis")));
        let version = info_field(&redis, "server", "redis_version").await;
        assert_eq!(map_get(&hello, "version"), Some(&bulk(&version)));
        let (h, raw) = cmd_raw(&mut c, &["HGETALL", "h"]).await;
        assert!(
            raw.starts_with(b"%2\r\n"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(map_get(&h, "f1"), Some(&bulk("v1")));
        assert_eq!(map_get(&h, "f2"), Some(&bulk("v2")));
        assert_eq!(c.cmd(&["GET", "missing"]).await, Reply::Null);
        assert_eq!(c.cmd(&["SET", "s", "1"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "s"]).await, bulk("1"));

        let (v, raw) = cmd_raw(&mut c, &["HELLO", "2"]).await;
        assert!(raw.starts_with(b"*14\r\n"), "{v:?}");
        let (_, raw) = cmd_raw(&mut c, &["HGETALL", "h"]).await;
        assert!(
            raw.starts_with(b"*4\r\n"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(c.cmd(&["GET", "missing"]).await, Reply::nil());

        assert_eq!(
            c.cmd(&["HELLO", "4"]).await,
            Reply::Error("NOPROTO unsupported protocol version".into())
        );

        let mut n = RawClient::connect(proxy.addr()).await;
        let hello = n.cmd(&["HELLO", "3", "SETNAME", "nm"]).await;
        assert_eq!(map_get(&hello, "proto"), Some(&Reply::Int(3)));
        assert_eq!(n.cmd(&["CLIENT", "GETNAME"]).await, bulk("nm"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// CLIENT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn getname_without_a_name_is_resp3_null() {
    bounded(LIMIT, "getname resp3", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut direct = RawClient::connect(redis.addr()).await;
        let mut c = RawClient::connect(proxy.addr()).await;
        direct.cmd(&["HELLO", "3"]).await;
        c.cmd(&["HELLO", "3"]).await;
        let (want, want_raw) = cmd_raw(&mut direct, &["CLIENT", "GETNAME"]).await;
        assert_eq!(&want_raw[..], b"_\r\n");
        let (got, raw) = cmd_raw(&mut c, &["CLIENT", "GETNAME"]).await;
        assert_eq!(
            (got, String::from_utf8_lossy(&raw).into_owned()),
            (want, "_\r\n".to_string())
        );
    })
    .await
}

#[tokio::test]
async fn client_settings_are_per_connection() {
    bounded(LIMIT, "client", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, Reply::nil());
        assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alpha"]).await, Reply::ok());
        assert_eq!(b.cmd(&["CLIENT", "SETNAME", "beta"]).await, Reply::ok());
        assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, bulk("alpha"));
        assert_eq!(b.cmd(&["CLIENT", "GETNAME"]).await, bulk("beta"));
        // Whatever the server answers (7.0 has no SETINFO, 7.2 accepts it).
        let setinfo = ["CLIENT", "SETINFO", "LIB-NAME", "x"];
        let direct = redis.direct().await.cmd(&setinfo).await;
        assert_eq!(a.cmd(&setinfo).await, direct);

        // REPLY OFF: nothing until REPLY ON, whose +OK comes back.
        let r = pipeline(
            &mut a,
            &[
                &["CLIENT", "REPLY", "OFF"],
                &["SET", "a", "1"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "a"],
                &["PING"],
            ],
            3,
        )
        .await;
        assert_eq!(
            r,
            vec![Reply::ok(), bulk("1"), Reply::Simple("PONG".into())]
        );

        // REPLY SKIP: no reply for SKIP itself nor the next command.
        let r = pipeline(
            &mut a,
            &[
                &["CLIENT", "REPLY", "SKIP"],
                &["SET", "b", "2"],
                &["GET", "b"],
                &["PING"],
            ],
            2,
        )
        .await;
        assert_eq!(r, vec![bulk("2"), Reply::Simple("PONG".into())]);

        assert_err_prefix(
            &a.cmd(&["CLIENT", "NO-TOUCH", "on"]).await,
            "ERR respipe: 'client|no-touch'",
        );
        assert_eq!(a.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// MULTI / EXEC / WATCH
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn transactions_have_redis_semantics() {
    bounded(LIMIT, "multi/exec", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        let queued = || Reply::Simple("QUEUED".into());

        let r = pipeline(
            &mut c,
            &[&["MULTI"], &["SET", "t", "1"], &["INCR", "t"], &["EXEC"]],
            4,
        )
        .await;
        assert_eq!(
            r,
            vec![
                Reply::ok(),
                queued(),
                queued(),
                arr(vec![Reply::ok(), Reply::Int(2)])
            ]
        );

        // A queued-command error aborts EXEC.
        assert_eq!(c.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(
            c.cmd(&["SET", "a"]).await,
            err("ERR wrong number of arguments for 'set' command")
        );
        assert_eq!(c.cmd(&["SET", "q", "1"]).await, queued());
        assert_eq!(
            c.cmd(&["EXEC"]).await,
            err("EXECABORT Transaction discarded because of previous errors.")
        );
        assert_eq!(c.cmd(&["GET", "q"]).await, Reply::nil());

        // A runtime error is one element of EXEC's array.
        assert_eq!(c.cmd(&["SET", "s", "str"]).await, Reply::ok());
        let r = pipeline(
            &mut c,
            &[&["MULTI"], &["INCR", "s"], &["SET", "s2", "ok"], &["EXEC"]],
            4,
        )
        .await;
        assert_eq!(
            r[3],
            arr(vec![
                err("ERR value is not an integer or out of range"),
                Reply::ok()
            ])
        );

        assert_eq!(c.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(
            c.cmd(&["MULTI"]).await,
            err("ERR MULTI calls can not be nested")
        );
        assert_eq!(c.cmd(&["SET", "d", "1"]).await, queued());
        assert_eq!(c.cmd(&["DISCARD"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "d"]).await, Reply::nil());
        assert_eq!(c.cmd(&["EXEC"]).await, err("ERR EXEC without MULTI"));
        assert_eq!(c.cmd(&["DISCARD"]).await, err("ERR DISCARD without MULTI"));

        // WATCH conflict: another client changes the key -> EXEC is nil.
        let mut other = proxy.raw().await;
        assert_eq!(c.cmd(&["WATCH", "w"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "w"]).await, Reply::nil());
        assert_eq!(other.cmd(&["SET", "w", "theirs"]).await, Reply::ok());
        assert_eq!(c.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(c.cmd(&["SET", "w", "mine"]).await, queued());
        assert_eq!(c.cmd(&["EXEC"]).await, Reply::Array(None));
        assert_eq!(c.cmd(&["GET", "w"]).await, bulk("theirs"));

        // WATCH without conflict executes.
        assert_eq!(c.cmd(&["WATCH", "w2"]).await, Reply::ok());
        assert_eq!(other.cmd(&["SET", "unrelated", "1"]).await, Reply::ok());
        let r = pipeline(&mut c, &[&["MULTI"], &["SET", "w2", "x"], &["EXEC"]], 3).await;
        assert_eq!(r[2], arr(vec![Reply::ok()]));
        assert_eq!(direct_get(&redis, 0, "w2").await, bulk("x"));

        // UNWATCH then no conflict either.
        assert_eq!(c.cmd(&["WATCH", "w3"]).await, Reply::ok());
        assert_eq!(c.cmd(&["UNWATCH"]).await, Reply::ok());
        assert_eq!(other.cmd(&["SET", "w3", "o"]).await, Reply::ok());
        let r = pipeline(&mut c, &[&["MULTI"], &["SET", "w3", "m"], &["EXEC"]], 3).await;
        assert_eq!(r[2], arr(vec![Reply::ok()]));

        // The redis crate's atomic pipeline.
        let mut con = proxy.redis().await;
        let (x, y): (i64, i64) = redis::pipe()
            .atomic()
            .incr("crate", 1)
            .incr("crate", 5)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!((x, y), (1, 6));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_and_plain_commands() {
    bounded(Duration::from_secs(120), "concurrent transactions", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| c.leases.max_leases = nz(20)).await;
        let addr = proxy.addr();
        let mut tasks = Vec::new();
        for i in 0..20 {
            tasks.push(tokio::spawn(async move {
                let mut c = RawClient::connect(addr).await;
                let key = format!("cnt:{i}");
                for r in 0..50i64 {
                    let got = pipeline(
                        &mut c,
                        &[&["MULTI"], &["INCR", &key], &["INCR", &key], &["EXEC"]],
                        4,
                    )
                    .await;
                    let q = Reply::Simple("QUEUED".into());
                    assert_eq!(
                        got,
                        vec![
                            Reply::ok(),
                            q.clone(),
                            q,
                            arr(vec![Reply::Int(2 * r + 1), Reply::Int(2 * r + 2)])
                        ],
                        "tx client {i} round {r}"
                    );
                }
            }));
            tasks.push(tokio::spawn(async move {
                let mut c = RawClient::connect(addr).await;
                for r in 0..50 {
                    let key = format!("plain:{i}");
                    let val = format!("{i}-{r}");
                    let got = pipeline(&mut c, &[&["SET", &key, &val], &["GET", &key]], 2).await;
                    assert_eq!(got, vec![Reply::ok(), bulk(&val)], "plain {i} round {r}");
                    assert_eq!(c.cmd(&["GET", &key]).await, bulk(&val));
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        for i in 0..20 {
            assert_eq!(
                direct_get(&redis, 0, &format!("cnt:{i}")).await,
                bulk("100")
            );
        }
        // Every lease came back: 20 clients (= max_leases) can all be in MULTI at once.
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut c = proxy.raw().await;
            cmd_until(&mut c, &["MULTI"], "MULTI gets a lease", |r| {
                *r == Reply::ok()
            })
            .await;
            clients.push(c);
        }
        for c in &mut clients {
            assert_eq!(c.cmd(&["EXEC"]).await, arr(vec![]));
        }
    })
    .await
}

#[tokio::test]
async fn exhausted_leases_are_refused_not_hung() {
    bounded(LIMIT, "max_leases", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| c.leases.max_leases = nz(2)).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        let mut c = proxy.raw().await;
        assert_eq!(a.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(b.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(
            c.cmd(&["MULTI"]).await,
            err("ERR respipe: no dedicated upstream connection available (max_leases=2 in use)")
        );
        // Not in a transaction, still usable.
        assert_eq!(c.cmd(&["SET", "c", "1"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "c"]).await, bulk("1"));
        assert_eq!(c.cmd(&["EXEC"]).await, err("ERR EXEC without MULTI"));

        assert_eq!(a.cmd(&["INCR", "n"]).await, Reply::Simple("QUEUED".into()));
        assert_eq!(a.cmd(&["EXEC"]).await, arr(vec![Reply::Int(1)]));
        assert_eq!(b.cmd(&["DISCARD"]).await, Reply::ok());
        cmd_until(&mut c, &["MULTI"], "MULTI after the others finished", |r| {
            *r == Reply::ok()
        })
        .await;
        assert_eq!(c.cmd(&["INCR", "n"]).await, Reply::Simple("QUEUED".into()));
        assert_eq!(c.cmd(&["EXEC"]).await, arr(vec![Reply::Int(2)]));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Blocking commands
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_does_not_stall_other_clients() {
    bounded(Duration::from_secs(120), "blpop", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        a.send(&encode(&["BLPOP", "q", "10"])).await;
        wait_blocked(&redis, 1).await;

        let addr = proxy.addr();
        let mut tasks = Vec::new();
        for i in 0..100 {
            tasks.push(tokio::spawn(async move {
                let mut c = RawClient::connect(addr).await;
                for r in 0..20 {
                    let v = format!("{i}:{r}");
                    assert_eq!(c.cmd(&["SET", &format!("k{i}"), &v]).await, Reply::ok());
                    assert_eq!(c.cmd(&["GET", &format!("k{i}")]).await, bulk(&v));
                }
            }));
        }
        bounded(
            Duration::from_secs(8),
            "100 clients while BLPOP blocks",
            async {
                for t in tasks {
                    t.await.unwrap();
                }
            },
        )
        .await;
        // A is still blocked (nothing came back) ...
        assert_eq!(info_field(&redis, "clients", "blocked_clients").await, "1");
        // ... until B pushes.
        let mut b = proxy.raw().await;
        assert_eq!(b.cmd(&["LPUSH", "q", "item"]).await, Reply::Int(1));
        assert_eq!(a.read_reply().await, arr(vec![bulk("q"), bulk("item")]));
        assert_eq!(a.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

#[tokio::test]
async fn a_blocked_client_that_leaves_frees_its_lease() {
    bounded(LIMIT, "blocked disconnect", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| c.leases.max_leases = nz(1)).await;
        let mut a = proxy.raw().await;
        a.send(&encode(&["BLPOP", "q2", "0"])).await;
        wait_blocked(&redis, 1).await;
        let mut b = proxy.raw().await;
        assert_err_prefix(
            &b.cmd(&["BLPOP", "q2", "1"]).await,
            "ERR respipe: no dedicated upstream connection available",
        );
        drop(a);
        let got = cmd_until(
            &mut b,
            &["BLPOP", "q2", "1"],
            "BLPOP gets a lease",
            |r| !matches!(r, Reply::Error(e) if e.contains("no dedicated upstream connection")),
        )
        .await;
        assert_eq!(got, Reply::Array(None));
        // The abandoned BLPOP's upstream connection was closed, not left blocked in Redis.
        wait_blocked(&redis, 0).await;
    })
    .await
}

#[tokio::test]
async fn xread_block_and_brpoplpush() {
    bounded(LIMIT, "xread/brpoplpush", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;

        a.send(&encode(&["XREAD", "BLOCK", "5000", "STREAMS", "s", "$"]))
            .await;
        wait_blocked(&redis, 1).await;
        let id = match b.cmd(&["XADD", "s", "*", "f", "v"]).await {
            Reply::Bulk(Some(id)) => String::from_utf8(id).unwrap(),
            other => panic!("XADD: {other:?}"),
        };
        assert_eq!(
            a.read_reply().await,
            arr(vec![arr(vec![
                bulk("s"),
                arr(vec![arr(vec![bulk(&id), arr(vec![bulk("f"), bulk("v")])])])
            ])])
        );

        assert_eq!(b.cmd(&["RPUSH", "src", "a"]).await, Reply::Int(1));
        assert_eq!(a.cmd(&["BRPOPLPUSH", "src", "dst", "5"]).await, bulk("a"));
        a.send(&encode(&["BRPOPLPUSH", "src", "dst", "5"])).await;
        wait_blocked(&redis, 1).await;
        assert_eq!(b.cmd(&["RPUSH", "src", "z"]).await, Reply::Int(1));
        assert_eq!(a.read_reply().await, bulk("z"));
        assert_eq!(
            b.cmd(&["LRANGE", "dst", "0", "-1"]).await,
            arr(vec![bulk("z"), bulk("a")])
        );
        // Timeout: the same nil as Redis answers directly (`*-1`), after 1 s.
        let mut d = redis.direct().await;
        let direct = d.cmd(&["BRPOPLPUSH", "empty", "dst", "1"]).await;
        assert_eq!(direct, Reply::Array(None));
        assert_eq!(a.cmd(&["BRPOPLPUSH", "empty", "dst", "1"]).await, direct);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Pub/sub
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pubsub_resp2() {
    bounded(LIMIT, "pubsub resp2", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        assert_eq!(b.cmd(&["SET", "k", "v"]).await, Reply::ok());

        assert_eq!(
            a.cmd(&["SUBSCRIBE", "ch"]).await,
            arr(vec![bulk("subscribe"), bulk("ch"), Reply::Int(1)])
        );
        assert_eq!(
            b.cmd(&["PUBSUB", "NUMSUB", "ch"]).await,
            arr(vec![bulk("ch"), Reply::Int(1)])
        );
        assert_eq!(b.cmd(&["PUBLISH", "ch", "payload"]).await, Reply::Int(1));
        assert_eq!(
            a.read_reply().await,
            arr(vec![bulk("message"), bulk("ch"), bulk("payload")])
        );
        assert_eq!(
            a.cmd(&["GET", "k"]).await,
            err("ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
        );
        assert_eq!(a.cmd(&["PING"]).await, arr(vec![bulk("pong"), bulk("")]));

        assert_eq!(
            a.cmd(&["PSUBSCRIBE", "n.*"]).await,
            arr(vec![bulk("psubscribe"), bulk("n.*"), Reply::Int(2)])
        );
        assert_eq!(b.cmd(&["PUBLISH", "n.x", "hi"]).await, Reply::Int(1));
        assert_eq!(
            a.read_reply().await,
            arr(vec![bulk("pmessage"), bulk("n.*"), bulk("n.x"), bulk("hi")])
        );

        assert_eq!(
            a.cmd(&["UNSUBSCRIBE"]).await,
            arr(vec![bulk("unsubscribe"), bulk("ch"), Reply::Int(1)])
        );
        assert_eq!(
            a.cmd(&["PUNSUBSCRIBE"]).await,
            arr(vec![bulk("punsubscribe"), bulk("n.*"), Reply::Int(0)])
        );
        assert_eq!(a.cmd(&["GET", "k"]).await, bulk("v"));
        assert_eq!(a.cmd(&["SET", "k2", "v2"]).await, Reply::ok());
        assert_eq!(b.cmd(&["PUBLISH", "ch", "nobody"]).await, Reply::Int(0));

        // Only SUBSCRIBE, then UNSUBSCRIBE with no arguments.
        assert_eq!(
            a.cmd(&["SUBSCRIBE", "c1", "c2"]).await,
            arr(vec![bulk("subscribe"), bulk("c1"), Reply::Int(1)])
        );
        assert_eq!(
            a.read_reply().await,
            arr(vec![bulk("subscribe"), bulk("c2"), Reply::Int(2)])
        );
        // Redis picks the order; the counts go down 1, 0 in that order.
        let first = a.cmd(&["UNSUBSCRIBE"]).await;
        let second = a.read_reply().await;
        let mut channels = Vec::new();
        for (reply, left) in [(first, 1), (second, 0)] {
            let Reply::Array(Some(v)) = reply else {
                panic!("UNSUBSCRIBE: {reply:?}")
            };
            assert_eq!(v[0], bulk("unsubscribe"));
            assert_eq!(v[2], Reply::Int(left));
            channels.push(v[1].clone());
        }
        channels.sort_by_key(|c| format!("{c:?}"));
        assert_eq!(channels, vec![bulk("c1"), bulk("c2")]);
        assert_eq!(a.cmd(&["GET", "k"]).await, bulk("v"));
    })
    .await
}

#[tokio::test]
async fn pubsub_resp3_pushes() {
    bounded(LIMIT, "pubsub resp3", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = RawClient::connect(proxy.addr()).await;
        let mut b = proxy.raw().await;
        assert_eq!(b.cmd(&["SET", "k", "v"]).await, Reply::ok());
        let hello = a.cmd(&["HELLO", "3"]).await;
        assert_eq!(map_get(&hello, "proto"), Some(&Reply::Int(3)));

        let (sub, raw) = cmd_raw(&mut a, &["SUBSCRIBE", "ch"]).await;
        assert!(
            raw.starts_with(b">3\r\n"),
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(
            sub,
            Reply::Push(vec![bulk("subscribe"), bulk("ch"), Reply::Int(1)])
        );
        assert_eq!(b.cmd(&["PUBLISH", "ch", "payload"]).await, Reply::Int(1));
        assert_eq!(
            a.read_reply().await,
            Reply::Push(vec![bulk("message"), bulk("ch"), bulk("payload")])
        );
        // RESP3 allows any command while subscribed.
        assert_eq!(a.cmd(&["GET", "k"]).await, bulk("v"));
        assert_eq!(a.cmd(&["GET", "nope"]).await, Reply::Null);
        assert_eq!(
            a.cmd(&["UNSUBSCRIBE", "ch"]).await,
            Reply::Push(vec![bulk("unsubscribe"), bulk("ch"), Reply::Int(0)])
        );
        assert_eq!(a.cmd(&["GET", "k"]).await, bulk("v"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// MONITOR, RESET, QUIT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn monitor_streams_commands() {
    bounded(LIMIT, "monitor", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        assert_eq!(a.cmd(&["MONITOR"]).await, Reply::ok());
        assert_eq!(b.cmd(&["SET", "mon", "1"]).await, Reply::ok());
        loop {
            match a.read_reply().await {
                Reply::Simple(line) if line.contains(r#""SET" "mon" "1""#) => break,
                Reply::Simple(_) => continue,
                other => panic!("MONITOR sent {other:?}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn reset_restores_a_fresh_connection() {
    bounded(LIMIT, "reset", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut d = redis.direct().await;
        assert_eq!(d.cmd(&["SET", "k0", "zero"]).await, Reply::ok());
        let mut c = proxy.raw().await;
        let r = pipeline(
            &mut c,
            &[&["SELECT", "2"], &["CLIENT", "SETNAME", "x"], &["MULTI"]],
            3,
        )
        .await;
        assert_eq!(r, vec![Reply::ok(), Reply::ok(), Reply::ok()]);
        assert_eq!(c.cmd(&["RESET"]).await, Reply::Simple("RESET".into()));
        assert_eq!(c.cmd(&["CLIENT", "GETNAME"]).await, Reply::nil());
        assert_eq!(c.cmd(&["GET", "k0"]).await, bulk("zero"));
        assert_eq!(c.cmd(&["SET", "r", "1"]).await, Reply::ok());
        assert_eq!(direct_get(&redis, 0, "r").await, bulk("1"));
        assert_eq!(direct_get(&redis, 2, "r").await, Reply::nil());

        // RESET also leaves subscribe mode.
        assert_eq!(
            c.cmd(&["SUBSCRIBE", "ch"]).await,
            arr(vec![bulk("subscribe"), bulk("ch"), Reply::Int(1)])
        );
        assert_eq!(c.cmd(&["RESET"]).await, Reply::Simple("RESET".into()));
        assert_eq!(c.cmd(&["GET", "k0"]).await, bulk("zero"));
    })
    .await
}

#[tokio::test]
async fn quit_answers_then_closes() {
    bounded(LIMIT, "quit", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["QUIT"]).await, Reply::ok());
        c.expect_eof().await;

        let mut p = proxy.raw().await;
        let r = pipeline(
            &mut p,
            &[&["SET", "q", "1"], &["QUIT"], &["SET", "q", "2"]],
            2,
        )
        .await;
        assert_eq!(r, vec![Reply::ok(), Reply::ok()]);
        p.expect_eof().await;
        assert_eq!(direct_get(&redis, 0, "q").await, bulk("1"));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Stateless commands
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn stateless_commands_are_forwarded() {
    bounded(LIMIT, "stateless", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        let mut d = redis.direct().await;

        assert_eq!(
            c.cmd(&["EVAL", "return ARGV[1]", "0", "hi"]).await,
            bulk("hi")
        );
        assert_eq!(
            c.cmd(&[
                "EVAL",
                "return redis.call('SET', KEYS[1], ARGV[1])",
                "1",
                "ek",
                "ev"
            ])
            .await,
            Reply::ok()
        );
        let sha = match c.cmd(&["SCRIPT", "LOAD", "return 42"]).await {
            Reply::Bulk(Some(s)) => String::from_utf8(s).unwrap(),
            other => panic!("SCRIPT LOAD: {other:?}"),
        };
        assert_eq!(sha.len(), 40);
        assert_eq!(c.cmd(&["EVALSHA", &sha, "0"]).await, Reply::Int(42));

        let lib = "#!lua name=lib\nredis.register_function('echo1', function(keys, args) return args[1] end)";
        assert_eq!(c.cmd(&["FUNCTION", "LOAD", lib]).await, bulk("lib"));
        assert_eq!(c.cmd(&["FCALL", "echo1", "0", "yo"]).await, bulk("yo"));

        assert_eq!(c.cmd(&["KEYS", "ek*"]).await, arr(vec![bulk("ek")]));
        assert_eq!(
            c.cmd(&["SCAN", "0", "MATCH", "ek*", "COUNT", "1000"]).await,
            arr(vec![bulk("0"), arr(vec![bulk("ek")])])
        );
        match c.cmd(&["INFO", "server"]).await {
            Reply::Bulk(Some(b)) => {
                assert!(String::from_utf8(b).unwrap().contains("redis_version:"))
            }
            other => panic!("INFO: {other:?}"),
        }
        let direct_size = d.cmd(&["DBSIZE"]).await;
        assert_eq!(c.cmd(&["DBSIZE"]).await, direct_size);
        assert_eq!(direct_size, Reply::Int(1));
        match c.cmd(&["TIME"]).await {
            Reply::Array(Some(v)) if v.len() == 2 => {
                for part in v {
                    let Reply::Bulk(Some(b)) = part else {
                        panic!("TIME part {part:?}")
                    };
                    String::from_utf8(b).unwrap().parse::<u64>().unwrap();
                }
            }
            other => panic!("TIME: {other:?}"),
        }
        assert_eq!(c.cmd(&["SET", "num", "123"]).await, Reply::ok());
        assert_eq!(c.cmd(&["OBJECT", "ENCODING", "num"]).await, bulk("int"));
        let count = d.cmd(&["COMMAND", "COUNT"]).await;
        assert!(matches!(count, Reply::Int(n) if n > 100), "{count:?}");
        assert_eq!(c.cmd(&["COMMAND", "COUNT"]).await, count);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The redis crate with a db in the URL and RESP3
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn redis_crate_db_url() {
    bounded(LIMIT, "redis crate", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let client = redis::Client::open(format!("redis://{}/6", proxy.addr())).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg("c6")
            .arg("six")
            .query_async(&mut con)
            .await
            .unwrap();
        let v: String = redis::cmd("GET")
            .arg("c6")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(v, "six");
        assert_eq!(direct_get(&redis, 6, "c6").await, bulk("six"));
        assert_eq!(direct_get(&redis, 0, "c6").await, Reply::nil());
    })
    .await
}
