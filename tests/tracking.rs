//! Client-side caching through respipe against a real redis-server: `CLIENT TRACKING` (default,
//! OPTIN with `CLIENT CACHING`, BCAST with PREFIX, NOLOOP, RESP2 REDIRECT to a subscribed client),
//! `CLIENT GETREDIR` and `CLIENT TRACKINGINFO`. Each flow runs against Redis directly and through
//! respipe (each with a Redis of its own) and the tracking client's frames are compared byte for
//! byte; where a redirect's client id shows, each side's id is the one its own `CLIENT ID` gave.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{bounded, encode, Proxy, RawClient, RedisServer, Reply};

const LIMIT: Duration = Duration::from_secs(30);

/// A direct Redis and a respipe in front of another one.
struct Sides {
    _direct: RedisServer,
    _proxied: RedisServer,
    proxy: Proxy,
    direct_addr: SocketAddr,
}

impl Sides {
    async fn start() -> Sides {
        let direct = RedisServer::start().await;
        let proxied = RedisServer::start().await;
        let proxy = Proxy::ready(&proxied).await;
        Sides {
            direct_addr: direct.addr(),
            _direct: direct,
            _proxied: proxied,
            proxy,
        }
    }

    /// Runs `flow` against Redis directly and through respipe; the frames it recorded must match.
    async fn same<F, Fut>(&self, what: &str, flow: F)
    where
        F: Fn(SocketAddr) -> Fut,
        Fut: std::future::Future<Output = Vec<Bytes>>,
    {
        let want = bounded(LIMIT, what, flow(self.direct_addr)).await;
        let got = bounded(LIMIT, what, flow(self.proxy.addr())).await;
        let show = |frames: &[Bytes]| -> Vec<String> {
            frames
                .iter()
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect()
        };
        assert_eq!(show(&got), show(&want), "{what}: respipe vs Redis");
    }
}

/// Sends one command and returns its reply's bytes.
async fn call(client: &mut RawClient, args: &[&str]) -> Bytes {
    client.send(&encode(args)).await;
    client.read_frame().await
}

/// A RESP3 client (its `HELLO` reply, which carries its id, is read and not recorded).
async fn resp3(addr: SocketAddr) -> RawClient {
    let mut client = RawClient::connect(addr).await;
    client.cmd(&["HELLO", "3"]).await;
    client
}

/// A RESP3 client that will track, and a RESP2 client that writes.
async fn pair(addr: SocketAddr) -> (RawClient, RawClient) {
    (resp3(addr).await, RawClient::connect(addr).await)
}

#[tokio::test]
async fn resp3_tracking_delivers_invalidations_between_replies() {
    let sides = Sides::start().await;
    sides
        .same("default tracking", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON"]).await,
                call(&mut a, &["GET", "k"]).await,
                call(&mut a, &["GET", "j"]).await,
            ];
            assert_eq!(b.cmd(&["SET", "k", "v"]).await, Reply::ok());
            // Nothing in flight on A's side: the push comes on its own.
            seen.push(a.read_frame().await);
            seen.push(call(&mut a, &["GET", "k"]).await);
            // A pipeline around another client's write: the push comes between replies.
            assert_eq!(b.cmd(&["SET", "j", "w"]).await, Reply::ok());
            a.send(&[encode(&["PING"]), encode(&["GET", "j"])].concat())
                .await;
            for _ in 0..3 {
                seen.push(a.read_frame().await);
            }
            seen.push(call(&mut a, &["CLIENT", "TRACKINGINFO"]).await);
            seen.push(call(&mut a, &["CLIENT", "GETREDIR"]).await);
            let Reply::Verbatim(info) = a.cmd(&["CLIENT", "INFO"]).await else {
                panic!("CLIENT INFO")
            };
            let info = String::from_utf8(info).unwrap();
            assert!(info.contains(" flags=t "), "{info}");
            seen
        })
        .await;
}

#[tokio::test]
async fn optin_tracks_only_after_caching_yes() {
    let sides = Sides::start().await;
    sides
        .same("OPTIN", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON", "OPTIN"]).await,
                call(&mut a, &["GET", "k1"]).await,
                call(&mut a, &["CLIENT", "CACHING", "yes"]).await,
                call(&mut a, &["GET", "k2"]).await,
            ];
            b.cmd(&["SET", "k1", "x"]).await;
            b.cmd(&["SET", "k2", "y"]).await;
            // Only k2 was tracked.
            seen.push(a.read_frame().await);
            seen.push(call(&mut a, &["PING"]).await);
            seen.push(call(&mut a, &["CLIENT", "TRACKINGINFO"]).await);
            seen
        })
        .await;
}

#[tokio::test]
async fn bcast_with_prefixes_and_noloop() {
    let sides = Sides::start().await;
    sides
        .same("BCAST PREFIX", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            let mut seen = vec![
                call(
                    &mut a,
                    &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "user:"],
                )
                .await,
            ];
            b.cmd(&["SET", "user:1", "a"]).await;
            b.cmd(&["SET", "other", "b"]).await;
            b.cmd(&["SET", "user:2", "c"]).await;
            seen.push(a.read_frame().await);
            seen.push(a.read_frame().await);
            seen.push(call(&mut a, &["CLIENT", "TRACKINGINFO"]).await);
            seen
        })
        .await;
    sides
        .same("NOLOOP", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON", "NOLOOP"]).await,
                call(&mut a, &["GET", "mine"]).await,
                call(&mut a, &["GET", "theirs"]).await,
                // No invalidation for A's own write.
                call(&mut a, &["SET", "mine", "1"]).await,
            ];
            b.cmd(&["SET", "theirs", "2"]).await;
            seen.push(a.read_frame().await);
            seen
        })
        .await;
    sides
        .same("own writes", |addr| async move {
            // Without NOLOOP the client's own writes invalidate its keys: the push comes with the
            // write's reply (the command is in flight), also inside a transaction.
            let mut a = resp3(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON"]).await,
                call(&mut a, &["GET", "mine"]).await,
            ];
            a.send(&[encode(&["SET", "mine", "1"]), encode(&["GET", "mine"])].concat())
                .await;
            for _ in 0..3 {
                seen.push(a.read_frame().await);
            }
            a.send(
                &[
                    encode(&["MULTI"]),
                    encode(&["SET", "mine", "2"]),
                    encode(&["EXEC"]),
                    encode(&["PING"]),
                ]
                .concat(),
            )
            .await;
            for _ in 0..5 {
                seen.push(a.read_frame().await);
            }
            seen
        })
        .await;
}

#[tokio::test]
async fn tracking_off_ends_invalidations_and_the_client_works_as_before() {
    let sides = Sides::start().await;
    sides
        .same("OFF", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON"]).await,
                call(&mut a, &["GET", "k"]).await,
                call(&mut a, &["CLIENT", "TRACKING", "OFF"]).await,
            ];
            b.cmd(&["SET", "k", "v"]).await;
            // No push: the next frame is PING's reply.
            seen.push(call(&mut a, &["PING"]).await);
            seen.push(call(&mut a, &["SELECT", "1"]).await);
            seen.push(call(&mut a, &["SET", "k", "db1"]).await);
            seen.push(call(&mut a, &["CLIENT", "GETREDIR"]).await);
            seen.push(call(&mut a, &["CLIENT", "TRACKINGINFO"]).await);
            seen
        })
        .await;
    sides
        .same("RESET", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON"]).await,
                call(&mut a, &["GET", "r"]).await,
                call(&mut a, &["RESET"]).await,
            ];
            b.cmd(&["SET", "r", "v"]).await;
            // RESET turned tracking off (and RESP2 back on): no push.
            seen.push(call(&mut a, &["GET", "r"]).await);
            seen.push(call(&mut a, &["CLIENT", "GETREDIR"]).await);
            seen
        })
        .await;
}

/// A tracking client holds a dedicated connection (one of `max_leases`) until tracking is off.
#[tokio::test]
async fn the_connection_goes_back_when_tracking_is_off() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::ready_with(&redis, |c| {
        c.leases.max_leases = std::num::NonZeroUsize::new(1).unwrap()
    })
    .await;
    let mut a = resp3(proxy.addr()).await;
    let mut b = proxy.raw().await;
    // An ON that Redis refuses leaves no lease behind.
    let bad = a.cmd(&["CLIENT", "TRACKING", "ON", "NOSUCHOPTION"]).await;
    assert!(bad.error_text().is_some(), "{bad:?}");
    assert_eq!(b.cmd(&["MULTI"]).await, Reply::ok());
    assert_eq!(b.cmd(&["DISCARD"]).await, Reply::ok());
    assert_eq!(a.cmd(&["CLIENT", "TRACKING", "ON"]).await, Reply::ok());
    let refused = b.cmd(&["MULTI"]).await;
    assert!(
        refused
            .error_text()
            .is_some_and(|e| e.contains("max_leases")),
        "{refused:?}"
    );
    assert_eq!(a.cmd(&["CLIENT", "TRACKING", "OFF"]).await, Reply::ok());
    assert_eq!(b.cmd(&["MULTI"]).await, Reply::ok());
    assert_eq!(b.cmd(&["DISCARD"]).await, Reply::ok());
}

/// A RESP2 subscriber to `__redis__:invalidate`: its `CLIENT ID`, after it subscribed.
async fn subscriber(addr: SocketAddr) -> (RawClient, String) {
    let mut s = RawClient::connect(addr).await;
    let Reply::Int(id) = s.cmd(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID")
    };
    s.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await;
    (s, id.to_string())
}

#[tokio::test]
async fn resp2_redirect_to_a_subscribed_client() {
    let sides = Sides::start().await;
    sides
        .same("REDIRECT", |addr| async move {
            let (mut s, sid) = subscriber(addr).await;
            let mut a = RawClient::connect(addr).await;
            let mut b = RawClient::connect(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON", "REDIRECT", &sid]).await,
                call(&mut a, &["GET", "k"]).await,
            ];
            // GETREDIR and TRACKINGINFO name the subscriber by the id it has for itself.
            let redir = call(&mut a, &["CLIENT", "GETREDIR"]).await;
            assert_eq!(redir, format!(":{sid}\r\n").as_bytes());
            let info = call(&mut a, &["CLIENT", "TRACKINGINFO"]).await;
            let info = String::from_utf8_lossy(&info).replace(&format!(":{sid}\r\n"), ":<sid>\r\n");
            seen.push(Bytes::from(info));
            b.cmd(&["SET", "k", "v"]).await;
            // The subscriber gets the invalidation as a message.
            seen.push(s.read_frame().await);
            seen.push(call(&mut a, &["GET", "k"]).await);
            seen
        })
        .await;
}

#[tokio::test]
async fn redirect_to_an_unknown_client_is_redis_error() {
    let sides = Sides::start().await;
    sides
        .same("REDIRECT unknown", |addr| async move {
            let mut a = RawClient::connect(addr).await;
            vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON", "REDIRECT", "987654"]).await,
                call(&mut a, &["CLIENT", "TRACKING", "ON", "REDIRECT", "-1"]).await,
                call(&mut a, &["CLIENT", "TRACKING", "ON", "REDIRECT", "x"]).await,
                call(&mut a, &["CLIENT", "GETREDIR"]).await,
                call(&mut a, &["CLIENT", "TRACKINGINFO"]).await,
                call(&mut a, &["CLIENT", "CACHING", "yes"]).await,
                call(&mut a, &["PING"]).await,
            ]
        })
        .await;
}

#[tokio::test]
async fn refusals_name_the_client_subcommand() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::ready(&redis).await;
    let mut a = proxy.raw().await;
    let reply = a.cmd(&["CLIENT", "NO-TOUCH", "ON"]).await;
    let text = reply.error_text().expect("refused");
    assert!(text.contains("'client|no-touch'"), "{text}");
}

#[tokio::test]
async fn tracking_set_in_a_transaction_or_around_a_subscription_keeps_its_connection() {
    let sides = Sides::start().await;
    sides
        .same("in MULTI", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            a.send(
                &[
                    encode(&["MULTI"]),
                    encode(&["CLIENT", "TRACKING", "ON"]),
                    encode(&["EXEC"]),
                    encode(&["GET", "k"]),
                ]
                .concat(),
            )
            .await;
            let mut seen = Vec::new();
            for _ in 0..4 {
                seen.push(a.read_frame().await);
            }
            b.cmd(&["SET", "k", "v"]).await;
            seen.push(a.read_frame().await);
            seen.push(call(&mut a, &["PING"]).await);
            // Turned off in a transaction, or on in one that is discarded: no more pushes.
            a.send(
                &[
                    encode(&["MULTI"]),
                    encode(&["CLIENT", "TRACKING", "OFF"]),
                    encode(&["EXEC"]),
                    encode(&["GET", "k"]),
                    encode(&["MULTI"]),
                    encode(&["CLIENT", "TRACKING", "ON"]),
                    encode(&["DISCARD"]),
                    encode(&["GET", "k"]),
                ]
                .concat(),
            )
            .await;
            for _ in 0..8 {
                seen.push(a.read_frame().await);
            }
            b.cmd(&["SET", "k", "w"]).await;
            seen.push(call(&mut a, &["PING"]).await);
            let Reply::Verbatim(info) = a.cmd(&["CLIENT", "INFO"]).await else {
                panic!("CLIENT INFO")
            };
            let info = String::from_utf8(info).unwrap();
            assert!(info.contains(" flags=N "), "{info}");
            seen
        })
        .await;
    sides
        .same("subscribed", |addr| async move {
            let (mut a, mut b) = pair(addr).await;
            let mut seen = vec![
                call(&mut a, &["CLIENT", "TRACKING", "ON"]).await,
                call(&mut a, &["GET", "k"]).await,
                call(&mut a, &["SUBSCRIBE", "ch"]).await,
                call(&mut a, &["UNSUBSCRIBE", "ch"]).await,
                call(&mut a, &["GET", "j"]).await,
            ];
            b.cmd(&["SET", "k", "v"]).await;
            b.cmd(&["SET", "j", "w"]).await;
            seen.push(a.read_frame().await);
            seen.push(a.read_frame().await);
            seen.push(call(&mut a, &["PING"]).await);
            seen
        })
        .await;
}

#[tokio::test]
async fn redirect_answered_in_the_same_write_shows_the_respipe_id() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::ready(&redis).await;
    let (_s, sid) = subscriber(proxy.addr()).await;
    let mut a = proxy.raw().await;
    a.send(
        &[
            encode(&["CLIENT", "TRACKING", "ON", "REDIRECT", &sid]),
            encode(&["CLIENT", "GETREDIR"]),
            encode(&["CLIENT", "TRACKING", "OFF"]),
            encode(&["CLIENT", "GETREDIR"]),
        ]
        .concat(),
    )
    .await;
    let sid: i64 = sid.parse().unwrap();
    let replies = bounded(LIMIT, "replies", a.read_replies(4)).await;
    assert_eq!(
        replies,
        [Reply::ok(), Reply::Int(sid), Reply::ok(), Reply::Int(-1)]
    );
    // A respipe client that is not subscribed to `__redis__:invalidate` is no redirect target:
    // Redis's own error (documented: Redis would accept any connected client).
    let mut other = proxy.raw().await;
    let Reply::Int(other_id) = other.cmd(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID")
    };
    other.cmd(&["SUBSCRIBE", "news"]).await;
    let refused = a
        .cmd(&[
            "CLIENT",
            "TRACKING",
            "ON",
            "REDIRECT",
            &other_id.to_string(),
        ])
        .await;
    assert_eq!(
        refused.error_text(),
        Some("ERR The client ID you want redirect to does not exist")
    );
}

#[tokio::test]
async fn a_tracking_client_whose_connection_is_lost_is_closed() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::ready(&redis).await;
    let mut a = resp3(proxy.addr()).await;
    assert_eq!(a.cmd(&["CLIENT", "TRACKING", "ON"]).await, Reply::ok());
    assert_eq!(a.cmd(&["GET", "k"]).await, Reply::Null);
    // Redis closes the connection it tracks the client on (flag `t`): the keys it tracked are
    // forgotten, so the client must drop its cache, as a closed connection tells it to.
    let mut admin = redis.direct().await;
    let Reply::Bulk(Some(list)) = admin.cmd(&["CLIENT", "LIST"]).await else {
        panic!("CLIENT LIST")
    };
    let list = String::from_utf8(list).unwrap();
    let line = list
        .lines()
        .find(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .unwrap_or_else(|| panic!("no tracking connection in {list}"));
    let id = line.split(' ').next().unwrap().trim_start_matches("id=");
    assert_eq!(
        admin.cmd(&["CLIENT", "KILL", "ID", id]).await,
        Reply::Int(1)
    );
    bounded(LIMIT, "the client is closed", a.expect_eof()).await;
}
