//! Connection state through respipe, compared byte for byte with a direct connection: SELECT, AUTH
//! and HELLO inside MULTI and after WATCH, pipelined behind a lease, the pool handshake of a user
//! without `+select`, respipe's own answers inside MULTI, and the CLIENT subcommands respipe
//! answers itself (ACLs included). Each scenario runs on the differential harness
//! (`common/differential.rs`): two fresh Redis servers, one direct and one behind respipe, the same
//! bytes in the same writes, and what it left in each server's data checked directly.

mod common;
#[path = "common/differential.rs"]
mod differential;

use std::time::Duration;

use common::{bounded, encode, Proxy, RawClient, RedisServer, Reply};
use differential::Scenario;
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(60);

/// Checks of what a scenario left in Redis.
trait Values {
    /// After the steps so far, `GET key` in `db` answers `want` on both servers, asked directly.
    fn value_in(self, db: &str, key: &str, want: &str) -> Self;
}

impl Values for Scenario {
    fn value_in(self, db: &str, key: &str, want: &str) -> Scenario {
        self.check(&[&["SELECT", db], &["GET", key]], &["+OK\r\n", want])
    }
}

/// Writes `commands` in one write and reads `n` replies, each as its raw text.
async fn exchange(c: &mut RawClient, commands: &[&[&str]], n: usize) -> Vec<String> {
    let bytes: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
    c.send(&bytes).await;
    let mut replies = Vec::with_capacity(n);
    while replies.len() < n {
        let frame = c.read_frame().await;
        replies.push(String::from_utf8_lossy(&frame).into_owned());
    }
    replies
}

/// Sends one command and reads its reply as raw text; `None` when the other side closed the
/// connection.
async fn reply_or_eof(c: &mut RawClient, command: &[&str]) -> Option<String> {
    c.stream.write_all(&encode(command)).await.ok()?;
    match c.try_read_frame().await {
        Ok(Some((_, frame))) => Some(String::from_utf8_lossy(&frame).into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn state_changes_pipelined_behind_a_transaction_are_not_refused() {
    Scenario::new("select after exec")
        .each(
            0,
            &[
                &["SET", "k", "db0"],
                &["MULTI"],
                &["INCR", "c"],
                &["EXEC"],
                &["SELECT", "1"],
                &["SET", "k", "db1"],
                &["SELECT", "0"],
                &["GET", "k"],
            ],
        )
        .value_in("0", "k", "$3\r\ndb0\r\n")
        .value_in("1", "k", "$3\r\ndb1\r\n")
        // Behind a blocking command that returned, and behind UNWATCH.
        .each(
            0,
            &[
                &["RPUSH", "l", "x"],
                &["BLPOP", "l", "1"],
                &["SELECT", "2"],
                &["SET", "k", "db2"],
                &["WATCH", "w"],
                &["UNWATCH"],
                &["HELLO", "3"],
                &["SELECT", "0"],
                &["HGETALL", "nothing"],
            ],
        )
        .value_in("2", "k", "$3\r\ndb2\r\n")
        // Behind WAIT.
        .each(
            0,
            &[
                &["HELLO", "2"],
                &["SET", "k", "v"],
                &["WAIT", "0", "0"],
                &["SELECT", "6"],
                &["SET", "k", "db6"],
            ],
        )
        .value_in("6", "k", "$3\r\ndb6\r\n")
        .run()
        .await
}

#[tokio::test]
async fn select_auth_and_hello_inside_multi_are_queued_and_followed() {
    let (admin, c) = (0, 1);
    Scenario::new("state inside multi")
        .each(
            admin,
            &[&["ACL", "SETUSER", "bob", "on", ">pw", "+@all", "~*"]],
        )
        // SELECT queued: EXEC runs it, later commands run in that db.
        .each(
            c,
            &[
                &["MULTI"],
                &["SELECT", "3"],
                &["SET", "k", "in3"],
                &["EXEC"],
                &["SET", "j", "also3"],
                &["GET", "k"],
            ],
        )
        .value_in("3", "j", "$5\r\nalso3\r\n")
        // A failing SELECT inside EXEC changes nothing; AUTH and HELLO take effect.
        .each(
            c,
            &[
                &["MULTI"],
                &["SELECT", "99"],
                &["AUTH", "bob", "pw"],
                &["HELLO", "3"],
                &["ACL", "WHOAMI"],
                &["EXEC"],
                &["ACL", "WHOAMI"],
                &["HSET", "h", "f", "v"],
                &["HGETALL", "h"],
                &["GET", "k"],
            ],
        )
        // WATCH and MULTI inside MULTI are refused at once, not queued: the SELECT is element 1.
        .each(
            c,
            &[
                &["MULTI"],
                &["WATCH", "x"],
                &["MULTI"],
                &["SET", "a", "1"],
                &["SELECT", "2"],
                &["EXEC"],
                &["SET", "b", "in2"],
            ],
        )
        .value_in("2", "b", "$3\r\nin2\r\n")
        // Discarded and aborted transactions change nothing.
        .each(
            c,
            &[
                &["MULTI"],
                &["SELECT", "5"],
                &["HELLO", "2"],
                &["DISCARD"],
                &["MULTI"],
                &["SELECT", "5"],
                &["SET"],
                &["EXEC"],
                &["HGETALL", "h"],
                &["GET", "k"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn select_and_hello_after_watch_go_to_the_watching_connection() {
    let (c, other) = (0, 1);
    Scenario::new("state after watch")
        .each(
            c,
            &[
                &["SET", "w", "0"],
                &["WATCH", "w"],
                &["SELECT", "1"],
                &["GET", "w"],
            ],
        )
        // WATCH remembers the key's db: a change there aborts the transaction.
        .each(other, &[&["SET", "w", "theirs"]])
        .each(
            c,
            &[
                &["MULTI"],
                &["SET", "w", "mine"],
                &["EXEC"],
                &["SET", "x", "db1"],
                &["WATCH", "x"],
                &["HELLO", "3"],
                &["MULTI"],
                &["HGETALL", "none"],
                &["EXEC"],
                &["HGETALL", "none"],
            ],
        )
        .value_in("1", "x", "$3\r\ndb1\r\n")
        .value_in("1", "w", "$-1\r\n")
        .run()
        .await
}

#[tokio::test]
async fn select_auth_and_hello_while_subscribed_in_resp3_are_followed() {
    Scenario::new("state while subscribed")
        .each(
            0,
            &[
                &["ACL", "SETUSER", "bob", "on", ">pw", "+@all", "~*"],
                &["HELLO", "3"],
                &["SUBSCRIBE", "ch"],
                &["SELECT", "4"],
                &["SELECT", "99"],
                &["AUTH", "bob", "wrong"],
                &["AUTH", "bob", "pw"],
                &["UNSUBSCRIBE", "ch"],
            ],
        )
        // Once the subscription has ended, on the pool of the state the session ended up in.
        .each(0, &[&["SET", "k", "db4"], &["ACL", "WHOAMI"]])
        .value_in("4", "k", "$3\r\ndb4\r\n")
        // HELLO 2 while subscribed in RESP3: RESP2 replies after the subscription ends.
        .each(
            0,
            &[
                &["SUBSCRIBE", "ch"],
                &["HELLO", "2"],
                &["UNSUBSCRIBE", "ch"],
            ],
        )
        .each(0, &[&["HGETALL", "none"], &["GET", "k"]])
        .run()
        .await
}

#[tokio::test]
async fn respipe_refusals_inside_multi_abort_the_transaction() {
    bounded(LIMIT, "refusals abort", async {
        let redis = RedisServer::start().await;
        let proxy =
            Proxy::ready_with(&redis, |c| c.limits.deny_commands = vec!["FLUSHALL".into()]).await;
        let mut c = RawClient::connect(proxy.addr()).await;
        let execabort = "-EXECABORT Transaction discarded because of previous errors.\r\n";
        for refused in [
            &["SUBSCRIBE", "ch"][..],
            &["FLUSHALL"],
            &["CLIENT", "REPLY", "OFF"],
        ] {
            let r = exchange(
                &mut c,
                &[
                    &["MULTI"],
                    &["SET", "a", "1"],
                    refused,
                    &["EXEC"],
                    &["GET", "a"],
                ],
                5,
            )
            .await;
            assert!(r[2].starts_with("-ERR respipe: "), "{refused:?}: {r:?}");
            assert_eq!(r[3], execabort, "{refused:?}");
            assert_eq!(r[4], "$-1\r\n", "{refused:?}");
        }
        // The connection still works, not subscribed, replies on.
        assert_eq!(exchange(&mut c, &[&["PING"]], 1).await, ["+PONG\r\n"]);
    })
    .await
}

#[tokio::test]
async fn auth_keeps_the_db_for_a_user_without_select() {
    Scenario::new("auth keeps db")
        .each(
            0,
            &[
                &["SELECT", "9"],
                &[
                    "ACL",
                    "SETUSER",
                    "bob",
                    "on",
                    ">123",
                    "+@scripting",
                    "+set",
                    "+get",
                    "~x*",
                ],
                &["AUTH", "bob", "123"],
                &["EVAL", "return redis.call('set','x1','v')", "0"],
                &["GET", "x1"],
                &["SELECT", "0"],
                &["GET", "x1"],
            ],
        )
        .value_in("9", "x1", "$1\r\nv\r\n")
        .value_in("0", "x1", "$-1\r\n")
        // A transaction's lease gets the same handshake.
        .each(0, &[&["MULTI"], &["SET", "x2", "w"], &["EXEC"]])
        .value_in("9", "x2", "$1\r\nw\r\n")
        .run()
        .await
}

#[tokio::test]
async fn accepted_databases_are_remembered_per_user() {
    let (admin, c) = (0, 1);
    Scenario::new("known dbs per user")
        .each(
            admin,
            &[
                &["ACL", "SETUSER", "bob", "on", ">123", "+get", "+set", "~*"],
                &["SELECT", "9"],
            ],
        )
        .each(
            c,
            &[
                &["AUTH", "bob", "123"],
                &["SELECT", "9"],
                &["SET", "k", "v"],
            ],
        )
        .value_in("0", "k", "$1\r\nv\r\n")
        .run()
        .await
}

/// Runs `commands` as one write on both sides, on fresh servers.
async fn same(name: &str, commands: &[&[&str]]) {
    Scenario::new(name).each(0, commands).run().await
}

#[tokio::test]
async fn reset_with_arguments_is_an_arity_error() {
    same(
        "reset_with_arguments_is_an_arity_error",
        &[&["SELECT", "1"], &["RESET", "now"], &["SET", "k", "v"]],
    )
    .await;
}

#[tokio::test]
async fn select_minus_zero_is_not_an_integer() {
    same(
        "select_minus_zero_is_not_an_integer",
        &[&["SELECT", "-0"], &["SELECT", "-01"], &["SET", "k", "v"]],
    )
    .await;
}

#[tokio::test]
async fn client_setinfo_answers_what_the_server_answers() {
    same(
        "client_setinfo_answers_what_the_server_answers",
        &[
            &["CLIENT", "SETINFO", "lib-name", "x"],
            &["CLIENT", "setinfo", "LIB-VER", "1.0"],
            &["CLIENT", "SETINFO", "LIB-VER", "a b"],
        ],
    )
    .await;
}

#[tokio::test]
async fn client_name_commands_inside_multi_are_queued() {
    same(
        "client_name_commands_inside_multi_are_queued",
        &[
            &["CLIENT", "SETNAME", "a"],
            &["MULTI"],
            &["CLIENT", "GETNAME"],
            &["CLIENT", "SETNAME", "b"],
            &["CLIENT", "GETNAME"],
            &["CLIENT", "SETNAME", "bad name"],
            &["EXEC"],
            &["CLIENT", "GETNAME"],
        ],
    )
    .await;
}

#[tokio::test]
async fn client_commands_answered_by_respipe_honour_acls() {
    // A user without +client gets Redis's NOPERM, and replies keep coming.
    same(
        "client_commands_answered_by_respipe_honour_acls",
        &[
            &[
                "ACL", "SETUSER", "carol", "on", ">pw", "+@all", "-client", "~*",
            ],
            &["AUTH", "carol", "pw"],
            &["CLIENT", "SETNAME", "x"],
            &["CLIENT", "GETNAME"],
            &["CLIENT", "REPLY", "OFF"],
            &["CLIENT", "NO-EVICT", "on"],
            &["CLIENT", "SETNAME", "bad name"],
            &["PING"],
        ],
    )
    .await;
}

#[tokio::test]
async fn a_deleted_users_sessions_are_closed_and_a_new_password_keeps_them() {
    bounded(LIMIT, "deleted user", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut admin = RawClient::connect(redis.addr()).await;
        let r = exchange(
            &mut admin,
            &[
                &["ACL", "SETUSER", "bob", "on", ">old", "+@all", "~*"],
                &["ACL", "SETUSER", "eve", "on", ">pw", "+@all", "~*"],
            ],
            2,
        )
        .await;
        assert_eq!(r, ["+OK\r\n", "+OK\r\n"]);
        let mut bob = RawClient::connect(proxy.addr()).await;
        let mut eve = RawClient::connect(proxy.addr()).await;
        let hello = [&["AUTH", "bob", "old"][..], &["SET", "k", "v"]];
        assert_eq!(exchange(&mut bob, &hello, 2).await, ["+OK\r\n", "+OK\r\n"]);
        let r = exchange(&mut eve, &[&["AUTH", "eve", "pw"], &["PING"]], 2).await;
        assert_eq!(r, ["+OK\r\n", "+PONG\r\n"]);
        // A new password: Redis keeps bob's connections working, and so does respipe.
        let r = exchange(
            &mut admin,
            &[&["ACL", "SETUSER", "bob", "resetpass", ">new"]],
            1,
        )
        .await;
        assert_eq!(r, ["+OK\r\n"]);
        assert_eq!(
            exchange(&mut bob, &[&["GET", "k"]], 1).await,
            ["$1\r\nv\r\n"]
        );
        // A deleted user: Redis closes its connections, and respipe closes its sessions.
        assert_eq!(
            exchange(&mut admin, &[&["ACL", "DELUSER", "eve"]], 1).await,
            [":1\r\n"]
        );
        // Commands sent while respipe reconnects get its error; then the session is closed.
        let closing = async {
            while let Some(r) = reply_or_eof(&mut eve, &["PING"]).await {
                assert!(r.starts_with("-ERR respipe: upstream"), "{r:?}");
            }
        };
        bounded(
            Duration::from_secs(5),
            "the deleted user's session closes",
            closing,
        )
        .await;
        assert_eq!(
            exchange(&mut bob, &[&["GET", "k"]], 1).await,
            ["$1\r\nv\r\n"]
        );
    })
    .await
}

/// A client of `proxy` authenticated as `user`.
async fn signed_in(proxy: &Proxy, user: &str, password: &str) -> RawClient {
    let mut client = RawClient::connect(proxy.addr()).await;
    assert_eq!(client.cmd(&["AUTH", user, password]).await, Reply::ok());
    client
}

#[tokio::test]
async fn a_deleted_users_idle_sessions_close_at_once() {
    bounded(LIMIT, "deleted user, idle sessions", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut admin = redis.direct().await;
        for user in ["bob", "alice"] {
            let r = admin
                .cmd(&["ACL", "SETUSER", user, "on", ">old", "+@all", "~*"])
                .await;
            assert_eq!(r, Reply::ok());
        }
        // A has a command answered on bob's pool; C only authenticated; B is alice.
        let mut a = signed_in(&proxy, "bob", "old").await;
        assert_eq!(a.cmd(&["SET", "k", "v"]).await, Reply::ok());
        let mut c = signed_in(&proxy, "bob", "old").await;
        // E is bob in a transaction: on a lease, its own connection.
        let mut e = signed_in(&proxy, "bob", "old").await;
        assert_eq!(e.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(
            e.cmd(&["SET", "k", "e"]).await,
            Reply::Simple("QUEUED".into())
        );
        let mut b = signed_in(&proxy, "alice", "old").await;
        assert_eq!(b.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        // A new password: Redis keeps bob's connections, and respipe bob's sessions.
        let r = admin
            .cmd(&["ACL", "SETUSER", "bob", "resetpass", ">new"])
            .await;
        assert_eq!(r, Reply::ok());
        assert_eq!(a.cmd(&["GET", "k"]).await, Reply::bulk("v"));
        // Deleted: Redis closes bob's connections at once, and respipe bob's sessions, though
        // none of A, C and E sends anything.
        assert_eq!(admin.cmd(&["ACL", "DELUSER", "bob"]).await, Reply::Int(1));
        let closed = Duration::from_secs(5);
        bounded(closed, "A (idle, bob) is closed", a.expect_eof()).await;
        bounded(closed, "C (idle, bob) is closed", c.expect_eof()).await;
        bounded(closed, "E (bob, in MULTI) is closed", e.expect_eof()).await;
        assert_eq!(b.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

#[tokio::test]
async fn a_refused_password_closes_only_the_sessions_that_used_it() {
    bounded(LIMIT, "refused password", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut admin = redis.direct().await;
        let r = admin
            .cmd(&["ACL", "SETUSER", "bob", "on", ">old", ">new", "+@all", "~*"])
            .await;
        assert_eq!(r, Reply::ok());
        // A and D are bob with two passwords: two pools.
        let mut a = signed_in(&proxy, "bob", "old").await;
        assert_eq!(a.cmd(&["SET", "k", "v"]).await, Reply::ok());
        let mut d = signed_in(&proxy, "bob", "new").await;
        assert_eq!(d.cmd(&["GET", "k"]).await, Reply::bulk("v"));
        // The old password goes, then bob's connections are lost: respipe can make new ones
        // with the new password only.
        let r = admin.cmd(&["ACL", "SETUSER", "bob", "<old"]).await;
        assert_eq!(r, Reply::ok());
        let killed = admin.cmd(&["CLIENT", "KILL", "USER", "bob"]).await;
        assert!(matches!(killed, Reply::Int(n) if n >= 2), "{killed:?}");
        bounded(
            Duration::from_secs(5),
            "A (old password) is closed",
            a.expect_eof(),
        )
        .await;
        assert_eq!(d.cmd(&["GET", "k"]).await, Reply::bulk("v"));
    })
    .await
}

#[tokio::test]
async fn a_named_clients_leases_carry_its_name() {
    Scenario::new("named leases")
        .each(
            0,
            &[
                &["CLIENT", "SETNAME", "app"],
                &["RPUSH", "l", "x"],
                &["BLPOP", "l", "1"],
                &["SUBSCRIBE", "ch"],
                &["PING"],
                &["UNSUBSCRIBE", "ch"],
            ],
        )
        .each(
            0,
            &[
                &["WATCH", "w"],
                &["MULTI"],
                &["CLIENT", "GETNAME"],
                &["EXEC"],
                &["CLIENT", "GETNAME"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn a_state_redis_will_not_set_up_again_is_refused_and_the_session_works() {
    bounded(LIMIT, "unreachable state", async {
        // Neither respipe's configured user nor bob may SELECT; alice may. A client that selects
        // db 9 as alice, then switches to bob, is in a state no new connection can reach.
        let redis = RedisServer::start().await;
        let mut admin = RawClient::connect(redis.addr()).await;
        let users: &[&[&str]] = &[
            &[
                "ACL", "SETUSER", "cfg", "on", ">p", "+@all", "-select", "~*",
            ],
            &["ACL", "SETUSER", "alice", "on", ">a", "+@all", "~*"],
            &[
                "ACL", "SETUSER", "bob", "on", ">b", "+@all", "-select", "~*",
            ],
        ];
        assert_eq!(exchange(&mut admin, users, 3).await, ["+OK\r\n"; 3]);
        let proxy = Proxy::ready_with(&redis, |c| {
            c.upstream.username = Some("cfg".into());
            c.upstream.password = Some("p".into());
        })
        .await;
        let mut c = RawClient::connect(proxy.addr()).await;
        let commands: &[&[&str]] = &[
            &["AUTH", "alice", "a"],
            &["SELECT", "9"],
            &["AUTH", "bob", "b"],
            &["SET", "x", "v"],
            &["ACL", "WHOAMI"],
        ];
        let r = exchange(&mut c, commands, 5).await;
        assert_eq!(r[..2], ["+OK\r\n", "+OK\r\n"]);
        assert!(
            r[2].starts_with("-ERR respipe: Redis accepts 'auth'") && r[2].contains("NOPERM"),
            "{r:?}"
        );
        assert_eq!(r[3..], ["+OK\r\n", "$5\r\nalice\r\n"]);
        let r = exchange(&mut admin, &[&["SELECT", "9"], &["GET", "x"]], 2).await;
        assert_eq!(r, ["+OK\r\n", "$1\r\nv\r\n"]);
    })
    .await
}
