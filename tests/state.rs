//! Connection state through respipe, compared byte for byte with a direct connection: SELECT, AUTH
//! and HELLO inside MULTI and after WATCH, pipelined behind a lease, the pool handshake of a user
//! without `+select`, respipe's own answers inside MULTI, and the CLIENT subcommands respipe
//! answers itself (ACLs included). Each scenario runs on two fresh Redis servers, one direct and
//! one behind respipe, with the same bytes in the same writes.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{bounded, encode, Proxy, RawClient, RedisServer, Reply};
use respipe::resp::ReplyScanner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

/// One raw connection: writes what the test gives, reads whole reply frames (RESP2 and RESP3).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// A direct Redis and a Redis behind respipe, both fresh.
struct Pair {
    direct: RedisServer,
    proxied: RedisServer,
    proxy: Proxy,
}

/// The same client on both sides.
struct Twin {
    direct: Conn,
    proxied: Conn,
}

impl Conn {
    async fn connect(addr: std::net::SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// Writes `commands` in one write and reads `n` replies, each as its raw text.
    async fn exchange(&mut self, commands: &[&[&str]], n: usize) -> Vec<String> {
        let mut bytes = Vec::new();
        for command in commands {
            bytes.extend_from_slice(&encode(command));
        }
        self.stream.write_all(&bytes).await.expect("write");
        let mut replies = Vec::with_capacity(n);
        while replies.len() < n {
            match ReplyScanner::default().scan(&self.buf).expect("valid RESP") {
                Some(frame) => {
                    let frame = self.buf.split_to(frame.len);
                    replies.push(String::from_utf8_lossy(&frame).into_owned());
                }
                None => {
                    let read = self.stream.read_buf(&mut self.buf).await.expect("read");
                    assert!(read > 0, "closed after {replies:?}");
                }
            }
        }
        replies
    }

    /// Sends one command and reads its reply; `None` when the other side closed the connection.
    async fn reply_or_eof(&mut self, command: &[&str]) -> Option<String> {
        if self.stream.write_all(&encode(command)).await.is_err() {
            return None;
        }
        loop {
            if let Some(frame) = ReplyScanner::default().scan(&self.buf).expect("valid RESP") {
                let frame = self.buf.split_to(frame.len);
                return Some(String::from_utf8_lossy(&frame).into_owned());
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

impl Pair {
    async fn start() -> Pair {
        Pair::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut respipe::Config)) -> Pair {
        let direct = RedisServer::start().await;
        let proxied = RedisServer::start().await;
        let proxy = Proxy::ready_with(&proxied, tweak).await;
        Pair {
            direct,
            proxied,
            proxy,
        }
    }

    async fn client(&self) -> Twin {
        Twin {
            direct: Conn::connect(self.direct.addr()).await,
            proxied: Conn::connect(self.proxy.addr()).await,
        }
    }

    /// `GET key` in `db` on both servers, directly: the values must agree.
    async fn value_in(&self, db: u32, key: &str) -> String {
        let mut twin = Twin {
            direct: Conn::connect(self.direct.addr()).await,
            proxied: Conn::connect(self.proxied.addr()).await,
        };
        let db = db.to_string();
        twin.step(&[&["SELECT", &db], &["GET", key]], 2).await[1].clone()
    }
}

impl Twin {
    /// Sends `commands` in one write on both sides and reads `n` replies; they must be the same
    /// bytes (connection ids in HELLO's map aside).
    async fn step(&mut self, commands: &[&[&str]], n: usize) -> Vec<String> {
        let direct = self.direct.exchange(commands, n).await;
        let proxied = self.proxied.exchange(commands, n).await;
        assert_eq!(
            proxied.iter().map(|r| without_id(r)).collect::<Vec<_>>(),
            direct.iter().map(|r| without_id(r)).collect::<Vec<_>>(),
            "through respipe (left) and direct (right) for {commands:?}"
        );
        direct
    }
}

/// A reply with HELLO's connection id (`id` then an integer) blanked.
fn without_id(reply: &str) -> String {
    let mut out = String::new();
    let mut rest = reply;
    while let Some(at) = rest.find("$2\r\nid\r\n:") {
        let (head, tail) = rest.split_at(at + "$2\r\nid\r\n:".len());
        out.push_str(head);
        out.push('N');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn state_changes_pipelined_behind_a_transaction_are_not_refused() {
    bounded(LIMIT, "select after exec", async {
        let pair = Pair::start().await;
        let mut c = pair.client().await;
        let commands: &[&[&str]] = &[
            &["SET", "k", "db0"],
            &["MULTI"],
            &["INCR", "c"],
            &["EXEC"],
            &["SELECT", "1"],
            &["SET", "k", "db1"],
            &["SELECT", "0"],
            &["GET", "k"],
        ];
        c.step(commands, 8).await;
        assert_eq!(pair.value_in(0, "k").await, "$3\r\ndb0\r\n");
        assert_eq!(pair.value_in(1, "k").await, "$3\r\ndb1\r\n");
        // Behind a blocking command that returned, and behind UNWATCH.
        let commands: &[&[&str]] = &[
            &["RPUSH", "l", "x"],
            &["BLPOP", "l", "1"],
            &["SELECT", "2"],
            &["SET", "k", "db2"],
            &["WATCH", "w"],
            &["UNWATCH"],
            &["HELLO", "3"],
            &["SELECT", "0"],
            &["HGETALL", "nothing"],
        ];
        c.step(commands, 9).await;
        assert_eq!(pair.value_in(2, "k").await, "$3\r\ndb2\r\n");
        // Behind WAIT.
        let commands: &[&[&str]] = &[
            &["HELLO", "2"],
            &["SET", "k", "v"],
            &["WAIT", "0", "0"],
            &["SELECT", "6"],
            &["SET", "k", "db6"],
        ];
        c.step(commands, 5).await;
        assert_eq!(pair.value_in(6, "k").await, "$3\r\ndb6\r\n");
    })
    .await
}

#[tokio::test]
async fn select_auth_and_hello_inside_multi_are_queued_and_followed() {
    bounded(LIMIT, "state inside multi", async {
        let pair = Pair::start().await;
        let mut admin = pair.client().await;
        admin
            .step(&[&["ACL", "SETUSER", "bob", "on", ">pw", "+@all", "~*"]], 1)
            .await;
        let mut c = pair.client().await;
        // SELECT queued: EXEC runs it, later commands run in that db.
        let commands: &[&[&str]] = &[
            &["MULTI"],
            &["SELECT", "3"],
            &["SET", "k", "in3"],
            &["EXEC"],
            &["SET", "j", "also3"],
            &["GET", "k"],
        ];
        c.step(commands, 6).await;
        assert_eq!(pair.value_in(3, "j").await, "$5\r\nalso3\r\n");
        // A failing SELECT inside EXEC changes nothing; AUTH and HELLO take effect.
        let commands: &[&[&str]] = &[
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
        ];
        c.step(commands, 10).await;
        // WATCH and MULTI inside MULTI are refused at once, not queued: the SELECT is element 1.
        let commands: &[&[&str]] = &[
            &["MULTI"],
            &["WATCH", "x"],
            &["MULTI"],
            &["SET", "a", "1"],
            &["SELECT", "2"],
            &["EXEC"],
            &["SET", "b", "in2"],
        ];
        c.step(commands, 7).await;
        assert_eq!(pair.value_in(2, "b").await, "$3\r\nin2\r\n");
        // Discarded and aborted transactions change nothing.
        let commands: &[&[&str]] = &[
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
        ];
        c.step(commands, 10).await;
    })
    .await
}

#[tokio::test]
async fn select_and_hello_after_watch_go_to_the_watching_connection() {
    bounded(LIMIT, "state after watch", async {
        let pair = Pair::start().await;
        let mut c = pair.client().await;
        let mut other = pair.client().await;
        let commands: &[&[&str]] = &[
            &["SET", "w", "0"],
            &["WATCH", "w"],
            &["SELECT", "1"],
            &["GET", "w"],
        ];
        c.step(commands, 4).await;
        // WATCH remembers the key's db: a change there aborts the transaction.
        other.step(&[&["SET", "w", "theirs"]], 1).await;
        let commands: &[&[&str]] = &[
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
        ];
        c.step(commands, 10).await;
        assert_eq!(pair.value_in(1, "x").await, "$3\r\ndb1\r\n");
        assert_eq!(pair.value_in(1, "w").await, "$-1\r\n");
    })
    .await
}

#[tokio::test]
async fn select_auth_and_hello_while_subscribed_in_resp3_are_followed() {
    bounded(LIMIT, "state while subscribed", async {
        let pair = Pair::start().await;
        let mut c = pair.client().await;
        let commands: &[&[&str]] = &[
            &["ACL", "SETUSER", "bob", "on", ">pw", "+@all", "~*"],
            &["HELLO", "3"],
            &["SUBSCRIBE", "ch"],
            &["SELECT", "4"],
            &["SELECT", "99"],
            &["AUTH", "bob", "wrong"],
            &["AUTH", "bob", "pw"],
            &["UNSUBSCRIBE", "ch"],
        ];
        c.step(commands, 8).await;
        // Once the subscription has ended, on the pool of the state the session ended up in.
        c.step(&[&["SET", "k", "db4"], &["ACL", "WHOAMI"]], 2).await;
        assert_eq!(pair.value_in(4, "k").await, "$3\r\ndb4\r\n");
        // HELLO 2 while subscribed in RESP3: RESP2 replies after the subscription ends.
        let commands: &[&[&str]] = &[
            &["SUBSCRIBE", "ch"],
            &["HELLO", "2"],
            &["UNSUBSCRIBE", "ch"],
        ];
        c.step(commands, 3).await;
        c.step(&[&["HGETALL", "none"], &["GET", "k"]], 2).await;
    })
    .await
}

#[tokio::test]
async fn respipe_refusals_inside_multi_abort_the_transaction() {
    bounded(LIMIT, "refusals abort", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| c.deny_commands = vec!["FLUSHALL".into()]).await;
        let mut c = Conn::connect(proxy.addr()).await;
        let execabort = "-EXECABORT Transaction discarded because of previous errors.\r\n";
        for refused in [
            &["SUBSCRIBE", "ch"][..],
            &["FLUSHALL"],
            &["CLIENT", "REPLY", "OFF"],
        ] {
            let r = c
                .exchange(
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
        assert_eq!(c.exchange(&[&["PING"]], 1).await, ["+PONG\r\n"]);
    })
    .await
}

#[tokio::test]
async fn auth_keeps_the_db_for_a_user_without_select() {
    bounded(LIMIT, "auth keeps db", async {
        let pair = Pair::start().await;
        let mut c = pair.client().await;
        let commands: &[&[&str]] = &[
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
        ];
        c.step(commands, 7).await;
        assert_eq!(pair.value_in(9, "x1").await, "$1\r\nv\r\n");
        // A transaction's lease gets the same handshake.
        let commands: &[&[&str]] = &[&["MULTI"], &["SET", "x2", "w"], &["EXEC"]];
        c.step(commands, 3).await;
        assert_eq!(pair.value_in(9, "x2").await, "$1\r\nw\r\n");
    })
    .await
}

#[tokio::test]
async fn accepted_databases_are_remembered_per_user() {
    bounded(LIMIT, "known dbs per user", async {
        let pair = Pair::start().await;
        let mut admin = pair.client().await;
        let commands: &[&[&str]] = &[
            &["ACL", "SETUSER", "bob", "on", ">123", "+get", "+set", "~*"],
            &["SELECT", "9"],
        ];
        admin.step(commands, 2).await;
        let mut c = pair.client().await;
        let commands: &[&[&str]] = &[
            &["AUTH", "bob", "123"],
            &["SELECT", "9"],
            &["SET", "k", "v"],
        ];
        c.step(commands, 3).await;
        assert_eq!(pair.value_in(0, "k").await, "$1\r\nv\r\n");
    })
    .await
}

/// Starts a fresh pair and runs `commands` as one write on both sides.
async fn same(commands: &[&[&str]]) {
    bounded(LIMIT, "the same replies", async {
        let pair = Pair::start().await;
        pair.client().await.step(commands, commands.len()).await;
    })
    .await
}

#[tokio::test]
async fn reset_with_arguments_is_an_arity_error() {
    same(&[&["SELECT", "1"], &["RESET", "now"], &["SET", "k", "v"]]).await;
}

#[tokio::test]
async fn select_minus_zero_is_not_an_integer() {
    same(&[&["SELECT", "-0"], &["SELECT", "-01"], &["SET", "k", "v"]]).await;
}

#[tokio::test]
async fn client_setinfo_answers_what_the_server_answers() {
    same(&[
        &["CLIENT", "SETINFO", "lib-name", "x"],
        &["CLIENT", "setinfo", "LIB-VER", "1.0"],
        &["CLIENT", "SETINFO", "LIB-VER", "a b"],
    ])
    .await;
}

#[tokio::test]
async fn client_name_commands_inside_multi_are_queued() {
    same(&[
        &["CLIENT", "SETNAME", "a"],
        &["MULTI"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "b"],
        &["CLIENT", "GETNAME"],
        &["CLIENT", "SETNAME", "bad name"],
        &["EXEC"],
        &["CLIENT", "GETNAME"],
    ])
    .await;
}

#[tokio::test]
async fn client_commands_answered_by_respipe_honour_acls() {
    // A user without +client gets Redis's NOPERM, and replies keep coming.
    same(&[
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
    ])
    .await;
}

#[tokio::test]
async fn a_deleted_users_sessions_are_closed_and_a_new_password_keeps_them() {
    bounded(LIMIT, "deleted user", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut admin = Conn::connect(redis.addr()).await;
        let r = admin
            .exchange(
                &[
                    &["ACL", "SETUSER", "bob", "on", ">old", "+@all", "~*"],
                    &["ACL", "SETUSER", "eve", "on", ">pw", "+@all", "~*"],
                ],
                2,
            )
            .await;
        assert_eq!(r, ["+OK\r\n", "+OK\r\n"]);
        let mut bob = Conn::connect(proxy.addr()).await;
        let mut eve = Conn::connect(proxy.addr()).await;
        let hello = [&["AUTH", "bob", "old"][..], &["SET", "k", "v"]];
        assert_eq!(bob.exchange(&hello, 2).await, ["+OK\r\n", "+OK\r\n"]);
        let r = eve.exchange(&[&["AUTH", "eve", "pw"], &["PING"]], 2).await;
        assert_eq!(r, ["+OK\r\n", "+PONG\r\n"]);
        // A new password: Redis keeps bob's connections working, and so does respipe.
        let r = admin
            .exchange(&[&["ACL", "SETUSER", "bob", "resetpass", ">new"]], 1)
            .await;
        assert_eq!(r, ["+OK\r\n"]);
        assert_eq!(bob.exchange(&[&["GET", "k"]], 1).await, ["$1\r\nv\r\n"]);
        // A deleted user: Redis closes its connections, and respipe closes its sessions.
        assert_eq!(
            admin.exchange(&[&["ACL", "DELUSER", "eve"]], 1).await,
            [":1\r\n"]
        );
        // Commands sent while respipe reconnects get its error; then the session is closed.
        let closing = async {
            while let Some(r) = eve.reply_or_eof(&["PING"]).await {
                assert!(r.starts_with("-ERR respipe: upstream"), "{r:?}");
            }
        };
        bounded(
            Duration::from_secs(5),
            "the deleted user's session closes",
            closing,
        )
        .await;
        assert_eq!(bob.exchange(&[&["GET", "k"]], 1).await, ["$1\r\nv\r\n"]);
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
    bounded(LIMIT, "named leases", async {
        let pair = Pair::start().await;
        let mut c = pair.client().await;
        let commands: &[&[&str]] = &[
            &["CLIENT", "SETNAME", "app"],
            &["RPUSH", "l", "x"],
            &["BLPOP", "l", "1"],
            &["SUBSCRIBE", "ch"],
            &["PING"],
            &["UNSUBSCRIBE", "ch"],
        ];
        c.step(commands, 6).await;
        let commands: &[&[&str]] = &[
            &["WATCH", "w"],
            &["MULTI"],
            &["CLIENT", "GETNAME"],
            &["EXEC"],
            &["CLIENT", "GETNAME"],
        ];
        c.step(commands, 5).await;
    })
    .await
}

#[tokio::test]
async fn a_state_redis_will_not_set_up_again_is_refused_and_the_session_works() {
    bounded(LIMIT, "unreachable state", async {
        // Neither respipe's configured user nor bob may SELECT; alice may. A client that selects
        // db 9 as alice, then switches to bob, is in a state no new connection can reach.
        let redis = RedisServer::start().await;
        let mut admin = Conn::connect(redis.addr()).await;
        let users: &[&[&str]] = &[
            &[
                "ACL", "SETUSER", "cfg", "on", ">p", "+@all", "-select", "~*",
            ],
            &["ACL", "SETUSER", "alice", "on", ">a", "+@all", "~*"],
            &[
                "ACL", "SETUSER", "bob", "on", ">b", "+@all", "-select", "~*",
            ],
        ];
        assert_eq!(admin.exchange(users, 3).await, ["+OK\r\n"; 3]);
        let proxy = Proxy::ready_with(&redis, |c| {
            c.upstream.username = Some("cfg".into());
            c.upstream.password = Some("p".into());
        })
        .await;
        let mut c = Conn::connect(proxy.addr()).await;
        let commands: &[&[&str]] = &[
            &["AUTH", "alice", "a"],
            &["SELECT", "9"],
            &["AUTH", "bob", "b"],
            &["SET", "x", "v"],
            &["ACL", "WHOAMI"],
        ];
        let r = c.exchange(commands, 5).await;
        assert_eq!(r[..2], ["+OK\r\n", "+OK\r\n"]);
        assert!(
            r[2].starts_with("-ERR respipe: Redis accepts 'auth'") && r[2].contains("NOPERM"),
            "{r:?}"
        );
        assert_eq!(r[3..], ["+OK\r\n", "$5\r\nalice\r\n"]);
        let r = admin.exchange(&[&["SELECT", "9"], &["GET", "x"]], 2).await;
        assert_eq!(r, ["+OK\r\n", "$1\r\nv\r\n"]);
    })
    .await
}
