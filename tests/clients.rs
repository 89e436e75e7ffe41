//! Client identity through respipe against a real redis-server: every client has its own id,
//! `CLIENT LIST`/`INFO` show respipe's clients in Redis's format, `CLIENT KILL` closes them,
//! `CLIENT UNBLOCK` reaches a client blocked in `BLPOP`, and ACLs apply as Redis applies them.

mod common;

use std::time::Duration;

use common::{bounded, cmd_until, Proxy, RawClient, RedisServer, Reply};

const LIMIT: Duration = Duration::from_secs(60);

fn int(r: &Reply) -> i64 {
    match r {
        Reply::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn text(r: Reply) -> String {
    match r {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

/// The `key=value` pairs of one `CLIENT LIST` line.
fn fields(line: &str) -> Vec<(&str, &str)> {
    line.split(' ')
        .map(|pair| pair.split_once('=').expect("key=value"))
        .collect()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    fields(line)
        .into_iter()
        .find(|(k, _)| *k == key)
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .1
}

/// The `id` field of a RESP2 `HELLO` reply.
fn hello_id(r: Reply) -> i64 {
    let Reply::Array(Some(items)) = r else {
        panic!("HELLO: {r:?}")
    };
    let at = items
        .iter()
        .position(|i| *i == Reply::bulk("id"))
        .expect("HELLO has id");
    int(&items[at + 1])
}

/// `CLIENT ID` through the `redis` crate.
async fn crate_id(con: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("CLIENT")
        .arg("ID")
        .query_async(con)
        .await
        .unwrap()
}

/// `blocked` sends `BLPOP nothing 0`; once Redis has it blocked, `other` unblocks it by `id` (the
/// id is polled: respipe's lease learns its Redis id in the same write as `BLPOP`). The reply
/// `blocked` then gets.
async fn unblocked(
    redis: &RedisServer,
    blocked: &mut RawClient,
    other: &mut RawClient,
    id: &str,
    reason: Option<&str>,
) -> Reply {
    let unblock: Vec<&str> = ["CLIENT", "UNBLOCK", id]
        .into_iter()
        .chain(reason)
        .collect();
    blocked
        .send(&common::encode(&["BLPOP", "nothing", "0"]))
        .await;
    redis.wait_blocked(1).await;
    let r = cmd_until(other, &unblock, "CLIENT UNBLOCK", |r| *r != Reply::Int(0)).await;
    assert_eq!(r, Reply::Int(1));
    blocked.read_reply().await
}

#[tokio::test]
async fn every_client_has_its_own_id_equal_to_its_hello_id() {
    bounded(LIMIT, "client ids", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        let id_a = int(&a.cmd(&["CLIENT", "ID"]).await);
        let id_b = int(&b.cmd(&["CLIENT", "ID"]).await);
        assert_ne!(id_a, id_b, "two clients share an id");
        assert!(id_a > 0 && id_b > 0);
        assert_eq!(hello_id(a.cmd(&["HELLO", "2"]).await), id_a);
        assert_eq!(hello_id(b.cmd(&["HELLO"]).await), id_b);
        // The id stays when the client changes db (another upstream pool).
        assert_eq!(a.cmd(&["SELECT", "3"]).await, Reply::ok());
        assert_eq!(int(&a.cmd(&["CLIENT", "ID"]).await), id_a);

        // The redis crate sees the same: its own id per connection.
        let mut c = proxy.redis().await;
        let mut d = proxy.redis().await;
        let (id_c, id_d) = (crate_id(&mut c).await, crate_id(&mut d).await);
        assert_ne!(id_c, id_d);
        assert!(![id_a, id_b].contains(&id_c) && ![id_a, id_b].contains(&id_d));
    })
    .await
}

#[tokio::test]
async fn client_list_and_info_show_respipe_clients_in_redis_format() {
    bounded(LIMIT, "client list", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        assert_eq!(a.cmd(&["CLIENT", "SETNAME", "app-a"]).await, Reply::ok());
        assert_eq!(b.cmd(&["SELECT", "2"]).await, Reply::ok());
        let id_a = int(&a.cmd(&["CLIENT", "ID"]).await);
        let id_b = int(&b.cmd(&["CLIENT", "ID"]).await);

        // Only the test's clients are left (the readiness probe's session ends on its own).
        let list = text(
            cmd_until(&mut a, &["CLIENT", "LIST"], "two clients listed", |r| {
                matches!(r, Reply::Bulk(Some(b)) if b.iter().filter(|&&c| c == b'\n').count() == 2)
            })
            .await,
        );
        assert!(list.ends_with('\n'), "{list:?}");
        let lines: Vec<&str> = list.lines().collect();
        assert_eq!(field(lines[0], "id"), id_a.to_string());
        assert_eq!(field(lines[0], "name"), "app-a");
        assert_eq!(field(lines[0], "cmd"), "client|list");
        assert_eq!(
            field(lines[0], "addr"),
            a.stream.local_addr().unwrap().to_string()
        );
        assert_eq!(field(lines[0], "laddr"), proxy.addr().to_string());
        assert_eq!(field(lines[1], "id"), id_b.to_string());
        assert_eq!(field(lines[1], "name"), "");
        assert_eq!(field(lines[1], "db"), "2");
        assert_eq!(field(lines[1], "cmd"), "client|id");

        // Redis's own fields, in its order.
        let mut direct = redis.direct().await;
        let own = text(direct.cmd(&["CLIENT", "LIST"]).await);
        let keys = |line: &str| {
            fields(line)
                .iter()
                .map(|(k, _)| k.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(lines[0]), keys(own.lines().next().unwrap()));
        assert_eq!(keys(lines[1]), keys(own.lines().next().unwrap()));

        // A transaction shows as Redis shows it: flag x and the commands queued.
        assert_eq!(a.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(a.cmd(&["INCR", "n"]).await, Reply::Simple("QUEUED".into()));
        let line = text(b.cmd(&["CLIENT", "LIST", "ID", &id_a.to_string()]).await);
        let line = line.trim_end();
        assert_eq!((field(line, "flags"), field(line, "multi")), ("x", "1"));
        assert_eq!(a.cmd(&["DISCARD"]).await, Reply::ok());

        // Filters, and CLIENT INFO for the caller.
        let only_b = text(
            a.cmd(&["CLIENT", "LIST", "ID", &id_b.to_string(), "999"])
                .await,
        );
        assert_eq!(only_b.lines().count(), 1);
        assert_eq!(
            field(only_b.lines().next().unwrap(), "id"),
            id_b.to_string()
        );
        assert_eq!(text(a.cmd(&["CLIENT", "LIST", "TYPE", "pubsub"]).await), "");
        assert_eq!(
            a.cmd(&["CLIENT", "LIST", "TYPE", "nope"]).await,
            direct.cmd(&["CLIENT", "LIST", "TYPE", "nope"]).await
        );
        // Ids as Redis reads them: a negative one lists nobody, `01` is not an id.
        assert_eq!(text(a.cmd(&["CLIENT", "LIST", "ID", "-1"]).await), "");
        assert_eq!(
            a.cmd(&["CLIENT", "LIST", "ID", "01"]).await,
            direct.cmd(&["CLIENT", "LIST", "ID", "01"]).await
        );
        let info = text(b.cmd(&["CLIENT", "INFO"]).await);
        assert_eq!(info.lines().count(), 1);
        assert_eq!(field(info.trim_end(), "id"), id_b.to_string());
        assert_eq!(field(info.trim_end(), "cmd"), "client|info");
        assert_eq!(keys(info.trim_end()), keys(own.lines().next().unwrap()));
    })
    .await
}

#[tokio::test]
async fn client_kill_closes_respipe_clients() {
    bounded(LIMIT, "client kill", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        let id_b = int(&b.cmd(&["CLIENT", "ID"]).await);

        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "ID", "987654"]).await,
            Reply::Int(0)
        );
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "ID", &id_b.to_string()]).await,
            Reply::Int(1)
        );
        b.expect_eof().await;
        // Redis's own argument errors.
        let mut direct = redis.direct().await;
        for bad in [
            &["CLIENT", "KILL", "ID", "0"][..],
            &["CLIENT", "KILL", "TYPE", "nope"],
            &["CLIENT", "KILL", "ID", "5", "SKIPME"],
            &["CLIENT", "KILL", "SKIPME", "maybe"],
        ] {
            assert_eq!(a.cmd(bad).await, direct.cmd(bad).await, "{bad:?}");
        }
        // The old form: +OK or Redis's error.
        let mut c = proxy.raw().await;
        let c_addr = c.stream.local_addr().unwrap().to_string();
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "203.0.113.1:5"]).await,
            direct.cmd(&["CLIENT", "KILL", "203.0.113.1:5"]).await
        );
        assert_eq!(a.cmd(&["CLIENT", "KILL", &c_addr]).await, Reply::ok());
        c.expect_eof().await;

        // LADDR and USER name respipe's clients; MAXAGE is whatever this Redis version says.
        let mut d = proxy.raw().await;
        let laddr = proxy.addr().to_string();
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "USER", "default", "LADDR", "1.1.1.1:1"])
                .await,
            Reply::Int(0)
        );
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "USER", "default", "LADDR", &laddr])
                .await,
            Reply::Int(1)
        );
        d.expect_eof().await;
        for cmd in [
            &["CLIENT", "KILL", "USER", "nobody"][..],
            &["CLIENT", "KILL", "MAXAGE", "100"],
        ] {
            assert_eq!(a.cmd(cmd).await, direct.cmd(cmd).await, "{cmd:?}");
        }

        // SKIPME: the caller is spared unless it says no; then it gets its reply and is closed.
        let a_addr = a.stream.local_addr().unwrap().to_string();
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "ADDR", &a_addr]).await,
            Reply::Int(0)
        );
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "ADDR", &a_addr, "SKIPME", "no"])
                .await,
            Reply::Int(1)
        );
        a.expect_eof().await;
    })
    .await
}

#[tokio::test]
async fn client_unblock_reaches_a_client_blocked_in_blpop() {
    bounded(LIMIT, "client unblock", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut blocked = proxy.raw().await;
        let mut other = proxy.raw().await;
        let id = int(&blocked.cmd(&["CLIENT", "ID"]).await).to_string();
        assert_eq!(other.cmd(&["CLIENT", "UNBLOCK", &id]).await, Reply::Int(0));

        // What Redis answers a client it unblocks, directly, and what respipe's client gets.
        let mut direct_blocked = redis.direct().await;
        let mut direct = redis.direct().await;
        let direct_id = int(&direct_blocked.cmd(&["CLIENT", "ID"]).await).to_string();
        for reason in [None, Some("ERROR")] {
            let expected =
                unblocked(&redis, &mut direct_blocked, &mut direct, &direct_id, reason).await;
            let got = unblocked(&redis, &mut blocked, &mut other, &id, reason).await;
            assert_eq!(got, expected, "CLIENT UNBLOCK id {reason:?}");
            match reason {
                None => assert_eq!(got, Reply::Array(None)),
                Some(_) => assert!(got.error_text().is_some_and(|e| e.starts_with("UNBLOCKED"))),
            }
        }
        // Not blocked any more, and a bad reason is Redis's error.
        assert_eq!(other.cmd(&["CLIENT", "UNBLOCK", &id]).await, Reply::Int(0));
        assert_eq!(
            other.cmd(&["CLIENT", "UNBLOCK", &id, "NOW"]).await,
            direct.cmd(&["CLIENT", "UNBLOCK", &direct_id, "NOW"]).await
        );
    })
    .await
}

#[tokio::test]
async fn client_subcommands_follow_the_users_acl() {
    bounded(LIMIT, "client acl", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut direct = redis.direct().await;
        let setuser = [
            "ACL",
            "SETUSER",
            "bob",
            "on",
            ">pw",
            "+@all",
            "-client",
            "+client|id",
            "~*",
        ];
        assert_eq!(direct.cmd(&setuser).await, Reply::ok());
        let mut c = proxy.raw().await;
        let id = int(&c.cmd(&["CLIENT", "ID"]).await);
        assert_eq!(c.cmd(&["AUTH", "bob", "pw"]).await, Reply::ok());
        assert_eq!(
            int(&c.cmd(&["CLIENT", "ID"]).await),
            id,
            "the session keeps its id"
        );
        let mut bob = redis.direct().await;
        assert_eq!(bob.cmd(&["AUTH", "bob", "pw"]).await, Reply::ok());
        for cmd in [
            &["CLIENT", "LIST"][..],
            &["CLIENT", "INFO"],
            &["CLIENT", "KILL", "ID", "1"],
            &["CLIENT", "KILL", "127.0.0.1:1"],
            &["CLIENT", "UNBLOCK", "1"],
        ] {
            let r = c.cmd(cmd).await;
            assert!(
                r.error_text().is_some_and(|e| e.starts_with("NOPERM")),
                "{cmd:?}: {r:?}"
            );
            assert_eq!(r, bob.cmd(cmd).await, "{cmd:?}");
        }
        // The permission is checked when the command runs, not remembered.
        assert_eq!(
            direct.cmd(&["ACL", "SETUSER", "bob", "+client|list"]).await,
            Reply::ok()
        );
        let list = text(c.cmd(&["CLIENT", "LIST"]).await);
        assert!(
            list.lines()
                .any(|l| field(l, "user") == "bob" && field(l, "id") == id.to_string()),
            "{list}"
        );
    })
    .await
}

#[tokio::test]
async fn subscribers_are_listed_and_killed_by_type() {
    bounded(LIMIT, "subscribers", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = proxy.raw().await;
        let mut sub = proxy.raw().await;
        let id = int(&sub.cmd(&["CLIENT", "ID"]).await).to_string();
        sub.send(&common::encode(&["SUBSCRIBE", "c1", "c2"])).await;
        sub.send(&common::encode(&["PSUBSCRIBE", "p*"])).await;
        assert_eq!(sub.read_replies(3).await.len(), 3);
        let line = text(
            cmd_until(
                &mut a,
                &["CLIENT", "LIST", "TYPE", "pubsub"],
                "subscriber listed",
                |r| matches!(r, Reply::Bulk(Some(b)) if b.ends_with(b"\n")),
            )
            .await,
        );
        let line = line.trim_end();
        assert_eq!(field(line, "id"), id);
        assert_eq!(field(line, "flags"), "P");
        assert_eq!(
            (field(line, "sub"), field(line, "psub"), field(line, "ssub")),
            ("2", "1", "0")
        );
        assert_eq!(field(line, "cmd"), "psubscribe");
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await,
            Reply::Int(1)
        );
        sub.expect_eof().await;
        assert_eq!(
            a.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await,
            Reply::Int(0)
        );
    })
    .await
}
