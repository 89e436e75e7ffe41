//! Reply framing on shared connections (issue 10, item 1 and the push part of item 7): every
//! command respipe puts on a shared connection is answered with a number of frames respipe knows,
//! so no frame reaches another client. Checked byte for byte against what Redis sends a direct
//! connection for the same bytes, with other clients interleaving on the same shared connection.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use common::{bounded, encode, Proxy, RawClient, RedisServer, Reply};
use respipe::command::{self, Class};
use respipe::resp::{ReplyScanner, DEFAULT_MAX_REPLY_DEPTH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(120);
/// How long one expected frame may take before the test fails (it arrives in microseconds).
const FRAME_WAIT: Duration = Duration::from_secs(5);
/// `PING` with this argument ends every scripted exchange: its bulk reply marks the end.
const END: &str = "end-of-exchange";

/// A connection that reads raw reply frames, exactly as they came over the wire.
struct Frames {
    stream: TcpStream,
    buf: BytesMut,
    scanner: ReplyScanner,
}

impl Frames {
    async fn connect(addr: SocketAddr) -> Frames {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Frames {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            scanner: ReplyScanner::new(DEFAULT_MAX_REPLY_DEPTH),
        }
    }

    /// Connects and, for RESP3, switches with `HELLO 3` (its reply read and dropped).
    async fn connect_as(addr: SocketAddr, proto: u8) -> Frames {
        let mut c = Frames::connect(addr).await;
        if proto == 3 {
            c.send(&[&["HELLO", "3"]]).await;
            c.frame(&format!("HELLO 3 on {addr}")).await;
        }
        c
    }

    async fn send(&mut self, commands: &[&[&str]]) {
        let bytes: Vec<u8> = commands.iter().flat_map(|c| encode(c)).collect();
        self.stream.write_all(&bytes).await.expect("write");
    }

    /// The next raw frame; fails the test if none arrives within [`FRAME_WAIT`].
    async fn frame(&mut self, what: &str) -> Vec<u8> {
        let read = async {
            loop {
                if let Some(frame) = self.scanner.scan(&self.buf).expect("valid RESP") {
                    return self.buf.split_to(frame.len).to_vec();
                }
                let n = self.stream.read_buf(&mut self.buf).await.expect("read");
                assert!(n > 0, "{what}: connection closed");
            }
        };
        match tokio::time::timeout(FRAME_WAIT, read).await {
            Ok(frame) => frame,
            Err(_) => panic!(
                "{what}: no reply frame within {FRAME_WAIT:?} (buffered: {:?})",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Every byte up to the reply of `PING` [`END`] (sent by the caller), that reply excluded.
    async fn until_end(&mut self, what: &str) -> Vec<u8> {
        let end = format!("${}\r\n{END}\r\n", END.len()).into_bytes();
        let mut out = Vec::new();
        loop {
            let frame = self.frame(what).await;
            if frame == end {
                return out;
            }
            out.extend_from_slice(&frame);
        }
    }
}

/// What Redis answers a direct connection (RESP `proto`) for `commands`, as raw bytes.
async fn direct_answer(redis: &RedisServer, proto: u8, commands: &[&[&str]]) -> Vec<u8> {
    let mut c = Frames::connect_as(redis.addr(), proto).await;
    c.send(commands).await;
    c.send(&[&["PING", END]]).await;
    c.until_end("direct connection").await
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", " ")
}

/// The repro, for one unsubscribe form: B has a key; A (not subscribed) unsubscribes; B's
/// next reply must be its own, and A's answer must be exactly what Redis sends a direct connection.
async fn unsubscribe_case(redis: &RedisServer, proxy: &Proxy, proto: u8, request: &[&str]) {
    let what = format!("RESP{proto} {request:?}");
    let want = direct_answer(redis, proto, &[request]).await;
    let mut a = Frames::connect_as(proxy.addr(), proto).await;
    let mut b = Frames::connect_as(proxy.addr(), proto).await;
    b.send(&[&["SET", "keyB", "valueB"]]).await;
    assert_eq!(b.frame(&what).await, b"+OK\r\n", "{what}: B's SET");
    a.send(&[request]).await;
    // A's first frame: the command has been answered on the shared connection, before B's GET.
    let mut got = a.frame(&format!("{what}: A's first frame")).await;
    b.send(&[&["GET", "keyB"]]).await;
    let b_got = b.frame(&format!("{what}: B's GET")).await;
    assert_eq!(
        show(&b_got),
        show(b"$6\r\nvalueB\r\n"),
        "{what}: B got another client's reply"
    );
    a.send(&[&["PING", END]]).await;
    got.extend(a.until_end(&format!("{what}: A's answer")).await);
    assert_eq!(
        show(&got),
        show(&want),
        "{what}: A's answer differs from Redis's"
    );
}

/// `(P|S)UNSUBSCRIBE` with 0, 1 and 3 channels from a client that is not subscribed, in RESP2 and
/// RESP3: Redis answers one frame per channel (RESP3: pushes), and each goes to that client.
#[tokio::test]
async fn unsubscribe_outside_subscribe_mode_stays_with_its_client() {
    bounded(LIMIT, "unsubscribe framing", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        for proto in [2, 3] {
            for name in ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"] {
                for channels in [&[][..], &["foo"], &["foo", "bar", "quux"]] {
                    let request: Vec<&str> = std::iter::once(name)
                        .chain(channels.iter().copied())
                        .collect();
                    unsubscribe_case(&redis, &proxy, proto, &request).await;
                }
            }
        }
    })
    .await;
}

/// Several clients pipelining their own SET/GETs on the same shared connection while one client
/// sends every unsubscribe form, pipelined with PINGs: every client gets exactly its own replies,
/// and the unsubscriber exactly what Redis sends a direct connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribes_interleaved_with_other_clients() {
    bounded(LIMIT, "interleaved unsubscribes", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        for proto in [2u8, 3] {
            let script: Vec<Vec<&str>> = (0..20)
                .flat_map(|i| {
                    let name = ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"][i % 3];
                    let channels = &["a", "b", "c", "d"][..i % 5];
                    [
                        std::iter::once(name)
                            .chain(channels.iter().copied())
                            .collect(),
                        vec!["PING"],
                    ]
                })
                .collect();
            let script: Vec<&[&str]> = script.iter().map(Vec::as_slice).collect();
            let want = direct_answer(&redis, proto, &script).await;
            let addr = proxy.addr();
            let mut others = Vec::new();
            for id in 0..4 {
                others.push(tokio::spawn(async move {
                    let mut c = Frames::connect_as(addr, proto).await;
                    for round in 0..50 {
                        let key = format!("k{id}");
                        let value = format!("v{id}-{round}");
                        c.send(&[&["SET", &key, &value], &["GET", &key]]).await;
                        let what = format!("client {id} round {round}");
                        assert_eq!(c.frame(&what).await, b"+OK\r\n", "{what}");
                        let got = c.frame(&what).await;
                        let expected = format!("${}\r\n{value}\r\n", value.len());
                        assert_eq!(show(&got), show(expected.as_bytes()), "{what}");
                    }
                }));
            }
            let mut a = Frames::connect_as(addr, proto).await;
            for round in 0..10 {
                a.send(&script).await;
                a.send(&[&["PING", END]]).await;
                let got = a.until_end(&format!("unsubscriber round {round}")).await;
                assert_eq!(show(&got), show(&want), "RESP{proto} round {round}");
            }
            for other in others {
                other.await.expect("another client got a wrong reply");
            }
        }
    })
    .await;
}

/// An unsubscribe queued in a transaction: Redis counts it as one element of `EXEC`'s array but
/// writes each confirmation as a frame of its own. The client gets exactly Redis's bytes, and its
/// next reply is its own; also when the transaction does not run (`DISCARD`, `EXECABORT`, a
/// `WATCH` conflict).
#[tokio::test]
async fn unsubscribe_queued_in_a_transaction() {
    bounded(LIMIT, "unsubscribe in MULTI", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let scripts: &[&[&[&str]]] = &[
            &[
                &["MULTI"],
                &["UNSUBSCRIBE", "a", "b", "c"],
                &["PING"],
                &["PUNSUBSCRIBE"],
                &["EXEC"],
                &["PING", "after"],
            ],
            &[&["MULTI"], &["SUNSUBSCRIBE", "a", "b"], &["EXEC"]],
            &[
                &["MULTI"],
                &["UNSUBSCRIBE", "a", "b"],
                &["DISCARD"],
                &["PING", "after"],
            ],
            &[
                &["MULTI"],
                &["UNSUBSCRIBE", "a", "b"],
                &["NOSUCHCOMMAND"],
                &["EXEC"],
                &["PING", "after"],
            ],
            &[
                &["MULTI"],
                &["UNSUBSCRIBE", "a", "b"],
                &["EXEC"],
                &["MULTI"],
                &["PING"],
                &["EXEC"],
            ],
        ];
        for proto in [2u8, 3] {
            for script in scripts {
                let want = direct_answer(&redis, proto, script).await;
                let mut c = Frames::connect_as(proxy.addr(), proto).await;
                c.send(script).await;
                c.send(&[&["PING", END]]).await;
                let got = c.until_end(&format!("RESP{proto} {script:?}")).await;
                assert_eq!(show(&got), show(&want), "RESP{proto} {script:?}");
            }
            // A WATCH conflict: EXEC answers a null, and nothing else.
            let watch_conflict = async |addr: SocketAddr| {
                let mut c = Frames::connect_as(addr, proto).await;
                c.send(&[&["WATCH", "w"]]).await;
                c.frame("WATCH").await;
                let mut other = Frames::connect_as(addr, proto).await;
                other.send(&[&["SET", "w", "changed"]]).await;
                other.frame("SET").await;
                c.send(&[
                    &["MULTI"],
                    &["UNSUBSCRIBE", "a", "b"],
                    &["EXEC"],
                    &["PING", END],
                ])
                .await;
                c.until_end("WATCH conflict").await
            };
            let want = watch_conflict(redis.addr()).await;
            let got = watch_conflict(proxy.addr()).await;
            assert_eq!(show(&got), show(&want), "RESP{proto} WATCH conflict");
        }
    })
    .await;
}

/// A user denied `unsubscribe` gets Redis's one `-NOPERM` error (not one frame per channel), and the
/// next client on the shared connection still gets its own replies.
#[tokio::test]
async fn denied_unsubscribe_is_one_error() {
    bounded(LIMIT, "denied unsubscribe", async {
        let redis = RedisServer::start().await;
        let mut admin = redis.direct().await;
        let setuser = [
            "ACL",
            "SETUSER",
            "u",
            "on",
            ">p",
            "+@all",
            "-unsubscribe",
            "~*",
        ];
        assert_eq!(admin.cmd(&setuser).await, Reply::ok());
        let proxy = Proxy::ready(&redis).await;
        for proto in [2u8, 3] {
            let request: &[&str] = &["UNSUBSCRIBE", "foo", "bar", "quux"];
            let mut direct = Frames::connect_as(redis.addr(), proto).await;
            direct
                .send(&[&["AUTH", "u", "p"], request, &["PING", END]])
                .await;
            let want = direct.until_end("direct").await;
            assert!(
                want.starts_with(b"+OK\r\n-NOPERM"),
                "Redis itself: {}",
                show(&want)
            );
            let mut a = Frames::connect_as(proxy.addr(), proto).await;
            let mut b = Frames::connect_as(proxy.addr(), proto).await;
            a.send(&[&["AUTH", "u", "p"], request, &["PING", END]])
                .await;
            let got = a.until_end("denied client").await;
            assert_eq!(show(&got), show(&want), "RESP{proto}");
            // B runs as the same user, so on the same shared connection.
            b.send(&[&["AUTH", "u", "p"], &["SET", "kb", "vb"], &["GET", "kb"]])
                .await;
            for expected in [&b"+OK\r\n"[..], b"+OK\r\n", b"$2\r\nvb\r\n"] {
                assert_eq!(show(&b.frame("B").await), show(expected), "RESP{proto}");
            }
        }
    })
    .await;
}

/// `DEBUG PROTOCOL push` in RESP3: Redis sends a push frame, then the reply; respipe hands both to
/// the client that asked (a shared connection has no subscriptions, so a push can only come from
/// the command at the head of its FIFO), and the next client's reply stays its own.
#[tokio::test]
async fn a_push_caused_by_a_command_reaches_its_client() {
    bounded(LIMIT, "DEBUG PROTOCOL push", async {
        let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]).await;
        let proxy = Proxy::ready(&redis).await;
        // Every other RESP3 type DEBUG PROTOCOL makes is one frame (an attribute with its value).
        let script: &[&[&str]] = &[
            &["DEBUG", "PROTOCOL", "push"],
            &["PING"],
            &["DEBUG", "PROTOCOL", "push"],
            &["DEBUG", "PROTOCOL", "attrib"],
            &["DEBUG", "PROTOCOL", "verbatim"],
            &["DEBUG", "PROTOCOL", "bignum"],
            &["DEBUG", "PROTOCOL", "map"],
            &["DEBUG", "PROTOCOL", "set"],
            &["DEBUG", "PROTOCOL", "double"],
            &["DEBUG", "PROTOCOL", "null"],
            &["DEBUG", "PROTOCOL", "true"],
        ];
        let want = direct_answer(&redis, 3, script).await;
        assert!(want.starts_with(b">2\r\n"), "Redis itself: {}", show(&want));
        let mut a = Frames::connect_as(proxy.addr(), 3).await;
        let mut b = Frames::connect_as(proxy.addr(), 3).await;
        for round in 0..5 {
            a.send(script).await;
            b.send(&[&["ECHO", "mine"]]).await;
            a.send(&[&["PING", END]]).await;
            assert_eq!(show(&a.until_end("A").await), show(&want), "round {round}");
            assert_eq!(
                show(&b.frame("B").await),
                show(b"$4\r\nmine\r\n"),
                "round {round}"
            );
        }
        // In RESP2 Redis refuses it with one error.
        let want = direct_answer(&redis, 2, script).await;
        let mut c = Frames::connect_as(proxy.addr(), 2).await;
        c.send(script).await;
        c.send(&[&["PING", END]]).await;
        assert_eq!(show(&c.until_end("RESP2").await), show(&want));
    })
    .await;
}

/// `SCRIPT DEBUG YES` would make the shared connection's next `EVAL`, whoever sends it, a Lua
/// debugger session: refused; `SCRIPT DEBUG NO` changes nothing and is forwarded.
#[tokio::test]
async fn script_debug_is_refused_on_shared_connections() {
    bounded(LIMIT, "SCRIPT DEBUG", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = RawClient::connect(proxy.addr()).await;
        let mut b = RawClient::connect(proxy.addr()).await;
        for mode in ["YES", "sync"] {
            let reply = a.cmd(&["SCRIPT", "DEBUG", mode]).await;
            let text = reply.error_text().unwrap_or_default().to_owned();
            assert!(
                text.starts_with("ERR respipe:") && text.contains("Lua debugger"),
                "{mode}: {reply:?}"
            );
            assert_eq!(b.cmd(&["EVAL", "return 1", "0"]).await, Reply::Int(1));
        }
        assert_eq!(a.cmd(&["SCRIPT", "DEBUG", "NO"]).await, Reply::ok());
    })
    .await;
}

/// Every command and subcommand of the server the test starts (its own `COMMAND` reply: names, and
/// subcommands from element 10 of each entry) is in respipe's command table, so each one's reply
/// count is known, or it is leased, answered locally or refused. A command Redis adds that could
/// answer with more than one frame cannot slip through as an unknown, one-reply command.
#[tokio::test]
async fn every_redis_command_is_classified() {
    bounded(LIMIT, "COMMAND walk", async {
        let redis = RedisServer::start().await;
        let mut c = redis.direct().await;
        let Reply::Array(Some(entries)) = c.cmd(&["COMMAND"]).await else {
            panic!("COMMAND is not an array");
        };
        let name_of = |entry: &Reply| match entry {
            Reply::Array(Some(fields)) => match fields.first() {
                Some(Reply::Bulk(Some(name))) => String::from_utf8_lossy(name).into_owned(),
                other => panic!("COMMAND entry without a name: {other:?}"),
            },
            other => panic!("COMMAND entry is not an array: {other:?}"),
        };
        let mut names = Vec::new();
        for entry in &entries {
            names.push(name_of(entry));
            if let Reply::Array(Some(fields)) = entry {
                if let Some(Reply::Array(Some(subs))) = fields.get(9) {
                    names.extend(subs.iter().map(name_of));
                }
            }
        }
        assert!(names.len() > 300, "only {} commands listed", names.len());
        let unknown: Vec<&String> = names
            .iter()
            .filter(|name| {
                let found: Option<Class> = match name.split_once('|') {
                    Some((container, sub)) => {
                        command::class(container.as_bytes(), Some(sub.as_bytes()))
                    }
                    None => command::class(name.as_bytes(), None),
                };
                found.is_none()
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "not in respipe's command table (reply count unknown): {unknown:?}"
        );
    })
    .await;
}
