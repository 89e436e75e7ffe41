//! Commands through the proxy behave as they do against Redis: data commands, errors, nil, inline
//! commands, large binary values, the locally answered and refused commands, and protocol errors.

mod common;

use std::time::Duration;

use common::{bounded, encode, Proxy, RawClient, RedisServer, Reply};
use redis::aio::MultiplexedConnection;
use redis::Value;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn basic_commands_round_trip() {
    bounded(LIMIT, "basic commands", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut con = proxy.redis().await;

        let ok: String = query(&mut con, &["SET", "s", "v1"]).await.unwrap();
        assert_eq!(ok, "OK");
        let v: String = query(&mut con, &["GET", "s"]).await.unwrap();
        assert_eq!(v, "v1");
        let n: i64 = query(&mut con, &["INCR", "n"]).await.unwrap();
        assert_eq!(n, 1);
        let n: i64 = query(&mut con, &["INCR", "n"]).await.unwrap();
        assert_eq!(n, 2);
        let vals: Vec<Option<String>> = query(&mut con, &["MGET", "s", "missing", "n"])
            .await
            .unwrap();
        assert_eq!(vals, vec![Some("v1".into()), None, Some("2".into())]);
        let added: i64 = query(&mut con, &["HSET", "h", "f1", "a", "f2", "b"])
            .await
            .unwrap();
        assert_eq!(added, 2);
        let mut all: Vec<(String, String)> = query(&mut con, &["HGETALL", "h"]).await.unwrap();
        all.sort();
        assert_eq!(
            all,
            vec![("f1".into(), "a".into()), ("f2".into(), "b".into())]
        );
        let len: i64 = query(&mut con, &["LPUSH", "l", "x", "y", "z"])
            .await
            .unwrap();
        assert_eq!(len, 3);
        let range: Vec<String> = query(&mut con, &["LRANGE", "l", "0", "-1"]).await.unwrap();
        assert_eq!(range, vec!["z", "y", "x"]);
        let deleted: i64 = query(&mut con, &["DEL", "s", "h", "nope"]).await.unwrap();
        assert_eq!(deleted, 2);

        // Nil replies.
        let nil: Value = query(&mut con, &["GET", "s"]).await.unwrap();
        assert_eq!(nil, Value::Nil);
        let nil: Value = query(&mut con, &["HGET", "h", "f1"]).await.unwrap();
        assert_eq!(nil, Value::Nil);

        // Redis's own errors pass through untouched.
        let _: String = query(&mut con, &["SET", "str", "abc"]).await.unwrap();
        let err = query::<i64>(&mut con, &["INCR", "str"]).await.unwrap_err();
        assert_eq!(err.code(), Some("ERR"), "{err}");
        assert_eq!(
            err.detail(),
            Some("value is not an integer or out of range"),
            "{err}"
        );
        let err = query::<i64>(&mut con, &["LPUSH", "str", "x"])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("WRONGTYPE"), "{err}");
        let err = query::<Value>(&mut con, &["NOSUCHCMD", "a"])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some("ERR"), "{err}");
        assert!(
            err.detail()
                .is_some_and(|d| d.starts_with("unknown command 'NOSUCHCMD'")),
            "{err}"
        );

        // The same exchanges over a raw socket, byte for byte.
        let mut raw = proxy.raw().await;
        assert_eq!(
            raw.cmd(&["INCR", "str"]).await,
            Reply::Error("ERR value is not an integer or out of range".into())
        );
        assert_eq!(raw.cmd(&["GET", "nothing"]).await, Reply::nil());
        assert_eq!(
            raw.cmd(&["MGET", "nothing", "n"]).await,
            Reply::Array(Some(vec![Reply::nil(), Reply::bulk("2")]))
        );
        let unknown = raw.cmd(&["foo", "bar"]).await;
        assert!(
            unknown
                .error_text()
                .is_some_and(|e| e.starts_with("ERR unknown command 'foo'")),
            "{unknown:?}"
        );
        assert_eq!(raw.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

#[tokio::test]
async fn inline_commands() {
    bounded(LIMIT, "inline commands", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut raw = proxy.raw().await;
        raw.send(b"PING\r\n").await;
        assert_eq!(raw.read_reply().await, Reply::Simple("PONG".into()));
        raw.send(b"SET a \"hello world\"\r\n").await;
        assert_eq!(raw.read_reply().await, Reply::ok());
        raw.send(b"GET a\r\n").await;
        assert_eq!(raw.read_reply().await, Reply::bulk("hello world"));
        raw.send(b"ECHO 'x y'\r\n").await;
        assert_eq!(raw.read_reply().await, Reply::bulk("x y"));
        // Several inline commands in one write, mixed with RESP, answered in order.
        raw.send(b"SET b 2\r\nGET b\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\n")
            .await;
        assert_eq!(
            raw.read_replies(4).await,
            vec![
                Reply::ok(),
                Reply::bulk("2"),
                Reply::bulk("hello world"),
                Reply::Simple("PONG".into())
            ]
        );
        // What Redis stored is exactly what the inline command meant.
        assert_eq!(
            redis.direct().await.cmd(&["GET", "a"]).await,
            Reply::bulk("hello world")
        );
    })
    .await
}

/// Values of many sizes, binary with CR/LF inside, round-trip byte-exact and are stored exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_byte_exact() {
    bounded(Duration::from_secs(120), "large values", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut raw = proxy.raw().await;
        let mut direct = redis.direct().await;
        for size in [0usize, 1, 1024, 64 * 1024, 1 << 20, 16 << 20] {
            let value: Vec<u8> = (0..size)
                .map(|i| match i % 7 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => 0,
                    3 => b'$',
                    4 => b'*',
                    _ => (i * 31 % 256) as u8,
                })
                .collect();
            let key = format!("bin:{size}");
            assert_eq!(
                raw.cmd(&[b"SET" as &[u8], key.as_bytes(), &value]).await,
                Reply::ok(),
                "SET {size}"
            );
            let got = raw.cmd(&[b"GET" as &[u8], key.as_bytes()]).await;
            match &got {
                Reply::Bulk(Some(v)) => {
                    assert_eq!(v.len(), size, "GET {size}: length");
                    assert!(v == &value, "GET {size}: bytes differ");
                }
                other => panic!("GET {size}: {:?}", summarize(other)),
            }
            let stored = direct.cmd(&[b"STRLEN" as &[u8], key.as_bytes()]).await;
            assert_eq!(stored, Reply::Int(size as i64), "stored length of {size}");
            let stored = direct.cmd(&[b"GET" as &[u8], key.as_bytes()]).await;
            assert!(
                stored == Reply::Bulk(Some(value.clone())),
                "stored bytes of {size}"
            );
        }
        // The same through the redis crate, pipelined (a 1 MiB value between small commands).
        let mut con = proxy.redis().await;
        let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
        let (a, b, c): (String, Vec<u8>, String) = redis::pipe()
            .cmd("SET")
            .arg("big")
            .arg(&big)
            .ignore()
            .cmd("ECHO")
            .arg("before")
            .cmd("GET")
            .arg("big")
            .cmd("ECHO")
            .arg("after")
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!((a.as_str(), c.as_str()), ("before", "after"));
        assert!(b == big, "pipelined 1 MiB value differs");
    })
    .await
}

/// Sends `args` over the redis crate connection `con` and converts the reply to `T`.
async fn query<T: redis::FromRedisValue>(
    con: &mut MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    redis::cmd(args[0]).arg(&args[1..]).query_async(con).await
}

fn summarize(r: &Reply) -> String {
    let s = format!("{r:?}");
    if s.len() > 200 {
        format!("{}... ({} chars)", &s[..200], s.len())
    } else {
        s
    }
}

/// Each command respipe cannot give Redis's semantics is refused with an error naming it, and the
/// connection stays usable. (Connection-state commands that respipe does support are tested in
/// tests/semantics.rs.)
#[tokio::test]
async fn refused_stateful_commands_keep_the_connection() {
    bounded(LIMIT, "refused commands", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut raw = proxy.raw().await;
        let cases: &[(&[&str], &str)] = &[
            (&["client", "no-touch", "on"], "client|no-touch"),
            (&["READONLY"], "readonly"),
        ];
        for (cmd, name) in cases {
            let reply = raw.cmd(cmd).await;
            let prefix = format!("ERR respipe: '{name}' is not supported yet (");
            assert!(
                reply
                    .error_text()
                    .is_some_and(|e| e.starts_with(&prefix) && e.ends_with(')')),
                "{cmd:?}: expected an error starting {prefix:?}, got {reply:?}"
            );
            assert_eq!(
                raw.cmd(&["PING"]).await,
                Reply::Simple("PONG".into()),
                "after {cmd:?}"
            );
        }
        // The refused commands did not reach Redis.
        assert_eq!(raw.cmd(&["SET", "after", "1"]).await, Reply::ok());
        assert_eq!(
            redis.direct().await.cmd(&["GET", "after"]).await,
            Reply::bulk("1")
        );
        // SELECT of the db the proxy is in is fine.
        assert_eq!(raw.cmd(&["SELECT", "0"]).await, Reply::ok());
        assert_eq!(raw.cmd(&["GET", "after"]).await, Reply::bulk("1"));
    })
    .await
}

/// A refused command's error takes its turn between the replies of the commands around it.
#[tokio::test]
async fn refused_command_keeps_pipeline_order() {
    bounded(LIMIT, "refused order", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut raw = proxy.raw().await;
        let mut req = encode(&["SET", "a", "1"]);
        req.extend(encode(&["READWRITE"]));
        req.extend(encode(&["GET", "a"]));
        raw.send(&req).await;
        let replies = raw.read_replies(3).await;
        assert_eq!(replies[0], Reply::ok());
        assert!(
            replies[1]
                .error_text()
                .is_some_and(|e| e.starts_with("ERR respipe: 'readwrite' is not supported yet")),
            "{replies:?}"
        );
        assert_eq!(replies[2], Reply::bulk("1"));

        // Many local answers interleaved with forwarded commands in one write.
        let mut req = Vec::new();
        let mut want = Vec::new();
        assert_eq!(raw.cmd(&["CLIENT", "SETNAME", "me"]).await, Reply::ok());
        for i in 0..500 {
            req.extend(encode(&["INCR", "ctr"]));
            want.push(Reply::Int(i + 1));
            req.extend(encode(&["CLIENT", "GETNAME"]));
            want.push(Reply::bulk("me"));
            req.extend(encode(&["ECHO", &format!("e{i}")]));
            want.push(Reply::bulk(format!("e{i}")));
            if i % 50 == 0 {
                req.extend(encode(&["READONLY"]));
                want.push(Reply::Error(
                    "ERR respipe: 'readonly' is not supported yet".into(),
                ));
            }
        }
        raw.send(&req).await;
        let got = raw.read_replies(want.len()).await;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            match w {
                Reply::Error(prefix) => assert!(
                    g.error_text()
                        .is_some_and(|e| e.starts_with(prefix.as_str())),
                    "reply {i}: expected {w:?}, got {g:?}"
                ),
                _ => assert_eq!(g, w, "reply {i}"),
            }
        }
    })
    .await
}

#[tokio::test]
async fn quit_answers_ok_and_closes() {
    bounded(LIMIT, "quit", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut raw = proxy.raw().await;
        // Replies owed before QUIT are still written, then +OK, then the close; commands after QUIT
        // are not executed.
        let mut req = encode(&["SET", "q", "1"]);
        req.extend(encode(&["GET", "q"]));
        req.extend(encode(&["QUIT"]));
        req.extend(encode(&["SET", "q", "after-quit"]));
        raw.send(&req).await;
        assert_eq!(
            raw.read_replies(3).await,
            vec![Reply::ok(), Reply::bulk("1"), Reply::ok()]
        );
        raw.expect_eof().await;
        assert_eq!(
            redis.direct().await.cmd(&["GET", "q"]).await,
            Reply::bulk("1")
        );
    })
    .await
}

#[tokio::test]
async fn client_name_is_kept_per_connection() {
    bounded(LIMIT, "client name", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, Reply::nil());
        assert_eq!(a.cmd(&["CLIENT", "SETNAME", "x"]).await, Reply::ok());
        assert_eq!(a.cmd(&["client", "getname"]).await, Reply::bulk("x"));
        assert_eq!(
            b.cmd(&["CLIENT", "GETNAME"]).await,
            Reply::nil(),
            "name leaked to another client"
        );
        assert_eq!(b.cmd(&["CLIENT", "SETNAME", "y"]).await, Reply::ok());
        assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, Reply::bulk("x"));
        assert_eq!(b.cmd(&["CLIENT", "GETNAME"]).await, Reply::bulk("y"));
        let bad = a.cmd(&["CLIENT", "SETNAME", "a b"]).await;
        assert!(
            bad.error_text()
                .is_some_and(|e| e.starts_with("ERR Client names cannot contain spaces")),
            "{bad:?}"
        );
        assert_eq!(a.cmd(&["SELECT", "0"]).await, Reply::ok());
        // The redis crate's connection handshake (CLIENT SETINFO) works through the proxy too.
        let mut con = proxy.redis().await;
        let pong: String = redis::cmd("PING").query_async(&mut con).await.unwrap();
        assert_eq!(pong, "PONG");
    })
    .await
}

/// A malformed request gets Redis's protocol error and closes that connection only.
#[tokio::test]
async fn protocol_error_closes_only_that_client() {
    bounded(LIMIT, "protocol error", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        for bad in [
            &b"*1\r\n$abc\r\n"[..],
            b"*x\r\n",
            b"*2\r\n$3\r\nGET\r\n:1\r\n",
        ] {
            let mut other = proxy.raw().await;
            assert_eq!(other.cmd(&["SET", "o", "1"]).await, Reply::ok());
            let mut raw = proxy.raw().await;
            // A good command first: its reply must still arrive before the error.
            let mut req = encode(&["GET", "o"]);
            req.extend_from_slice(bad);
            raw.send(&req).await;
            assert_eq!(raw.read_reply().await, Reply::bulk("1"), "{bad:?}");
            let err = raw.read_reply().await;
            assert!(
                err.error_text()
                    .is_some_and(|e| e.starts_with("ERR Protocol error")),
                "{:?}: expected -ERR Protocol error, got {err:?}",
                String::from_utf8_lossy(bad)
            );
            raw.expect_eof().await;
            // The other client, connected all along, is unaffected.
            assert_eq!(other.cmd(&["GET", "o"]).await, Reply::bulk("1"));
            assert_eq!(other.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        }
        // Unbalanced quotes in an inline command: Redis's inline protocol error.
        let mut raw = proxy.raw().await;
        raw.send(b"SET a \"unterminated\r\n").await;
        let err = raw.read_reply().await;
        assert!(
            err.error_text()
                .is_some_and(|e| e.starts_with("ERR Protocol error")),
            "{err:?}"
        );
        raw.expect_eof().await;
        let mut fresh = RawClient::connect(proxy.addr()).await;
        assert_eq!(fresh.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

/// Past `max_clients`, a new connection gets Redis's error and is closed; the others keep working.
#[tokio::test]
async fn max_clients_refuses_extra_connections() {
    bounded(LIMIT, "max clients", async {
        let redis = RedisServer::start().await;
        let proxy =
            Proxy::ready_with(&redis, |c| c.listen.max_clients = 2.try_into().unwrap()).await;
        let mut a = proxy.raw().await;
        assert_eq!(a.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        let mut b = proxy.raw().await;
        assert_eq!(b.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        let mut c = proxy.raw().await;
        assert_eq!(
            c.read_reply().await,
            Reply::Error("ERR max number of clients reached".into())
        );
        c.expect_eof().await;
        assert_eq!(a.cmd(&["SET", "k", "v"]).await, Reply::ok());
        drop(b);
        // Once a slot is free (the proxy notices b's close asynchronously), a new client is served.
        let addr = proxy.addr();
        common::poll_until(
            Duration::from_secs(10),
            "a freed client slot",
            || async move {
                let mut d = RawClient::connect(addr).await;
                match d.cmd(&["GET", "k"]).await {
                    Reply::Bulk(Some(v)) if v == b"v" => Some(()),
                    Reply::Error(e) if e == "ERR max number of clients reached" => None,
                    other => panic!("unexpected {other:?}"),
                }
            },
        )
        .await;
    })
    .await
}

/// Empty requests (`*0`, blank inline lines) get no reply, as with Redis.
#[tokio::test]
async fn empty_requests_get_no_reply() {
    bounded(LIMIT, "empty requests", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut raw = proxy.raw().await;
        raw.send(b"*0\r\n\r\n\r\n*1\r\n$4\r\nPING\r\n*0\r\nECHO a\r\n")
            .await;
        assert_eq!(
            raw.read_replies(2).await,
            vec![Reply::Simple("PONG".into()), Reply::bulk("a")]
        );
        assert_eq!(raw.cmd(&["ECHO", "b"]).await, Reply::bulk("b"));
    })
    .await
}
