//! Limits on what waits for a client: a client that reads slowly is throttled (respipe stops reading
//! its requests) rather than closed; one that never reads is closed at `max_client_reply_bytes`; a
//! subscriber is held to Redis's own `client-output-buffer-limit pubsub`.

mod common;

use std::time::Duration;

use common::{bounded, encode, BinProxy, Proxy, RawClient, RedisServer, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);
/// The closed-by-proxy metric (all reasons).
const CLOSED: &str = "respipe_client_closed_by_proxy_total";

/// A Redis holding `big`, a value of `size` bytes.
async fn redis_with_big(size: usize) -> RedisServer {
    let redis = RedisServer::start().await;
    let mut d = redis.direct().await;
    assert_eq!(
        d.cmd(&[b"SET".as_slice(), b"big", &vec![b'v'; size]]).await,
        Reply::ok()
    );
    redis
}

/// `n` `GET big` requests in one write.
fn gets(n: usize) -> Vec<u8> {
    (0..n).flat_map(|_| encode(&["GET", "big"])).collect()
}

/// A Redis whose `client-output-buffer-limit` is `limit`, respipe (the binary) in front of it, and
/// a client subscribed to `ch` through respipe.
async fn subscriber_under(limit: &str) -> (RedisServer, BinProxy, RawClient) {
    let redis = RedisServer::start_with(&["--client-output-buffer-limit", limit]).await;
    let proxy = BinProxy::spawn(&redis.addr().to_string(), &[]);
    drop(proxy.wait_pong().await);
    let mut sub = RawClient::connect(proxy.listen).await;
    assert_eq!(
        bounded(LIMIT, "subscribe", sub.cmd(&["SUBSCRIBE", "ch"])).await,
        Reply::Array(Some(vec![
            Reply::bulk("subscribe"),
            Reply::bulk("ch"),
            Reply::Int(1)
        ]))
    );
    (redis, proxy, sub)
}

#[tokio::test]
async fn a_client_that_reads_slowly_is_throttled_not_closed() {
    const SIZE: usize = 512 * 1024;
    const N: usize = 200; // 100 MiB of replies, four times the cap below
    let redis = redis_with_big(SIZE).await;
    let proxy = Proxy::ready_with(&redis, |c| {
        c.limits.max_client_reply_bytes = std::num::NonZeroUsize::new(24 << 20).unwrap();
    })
    .await;
    let mut c = proxy.raw().await;
    // Its first write: what its replies weigh is not known yet.
    c.send(&gets(N)).await;
    let reply_len = format!("${SIZE}\r\n").len() + SIZE + 2;
    let want = N * reply_len;
    let mut got = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    bounded(LIMIT, "slow reader gets every reply", async {
        while got < want {
            let n = c.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed by respipe after {got} of {want} reply bytes");
            got += n;
            // Slower than Redis sends: about 64 MiB/s at most.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(got, want, "nothing more than the replies");
    assert_eq!(
        bounded(LIMIT, "still served", c.cmd(&["PING"])).await,
        Reply::Simple("PONG".into())
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_at_the_cap_and_told_why() {
    // 1 MiB values and a cap well below what respipe lets a new client have in flight before it
    // throttles (16 commands): the replies already asked for go past the cap, whatever the kernel's
    // socket buffers absorb.
    let redis = redis_with_big(1024 * 1024).await;
    let mut proxy = BinProxy::spawn(
        &redis.addr().to_string(),
        &["--max-client-reply-bytes", "4194304"],
    );
    drop(proxy.wait_pong().await);
    let mut c = RawClient::connect(proxy.listen).await;
    c.send(&gets(200)).await;
    proxy.wait_metric(CLOSED, LIMIT, |v| v >= 1.0).await;
    let line = proxy.bin.wait_line("max_client_reply_bytes", LIMIT);
    assert!(line.contains("read_bytes_per_sec="), "{line}");
    assert!(line.contains("slower than they come"), "{line}");
    // Whatever was written before the close, then the end.
    let mut sink = vec![0u8; 1 << 20];
    bounded(LIMIT, "EOF", async {
        while matches!(c.stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[tokio::test]
async fn a_subscriber_that_never_reads_is_closed_at_the_pubsub_limit() {
    let (redis, mut proxy, mut sub) = subscriber_under("pubsub 262144 0 0").await;
    // The subscriber reads nothing more; messages pile up (first in the kernel's socket buffers,
    // then in respipe) until respipe closes it as Redis would, and Redis sees it leave.
    let mut publisher = redis.direct().await;
    let message = vec![b'm'; 10 * 1024];
    let mut receivers = 1;
    for _ in 0..5_000 {
        receivers = match bounded(
            LIMIT,
            "publish",
            publisher.cmd(&[b"PUBLISH".as_slice(), b"ch", &message]),
        )
        .await
        {
            Reply::Int(n) => n,
            other => panic!("PUBLISH: {other:?}"),
        };
        if receivers == 0 {
            break;
        }
    }
    assert_eq!(receivers, 0, "the subscriber is still there after 50 MB");
    assert!(proxy.metric(CLOSED).await >= 1.0);
    let line = proxy
        .bin
        .wait_line("client-output-buffer-limit pubsub", LIMIT);
    assert!(line.contains("hard limit"), "{line}");
    drop(sub.stream.shutdown().await);
}

#[tokio::test]
async fn a_subscriber_past_the_soft_pubsub_limit_for_its_seconds_is_closed() {
    let (redis, mut proxy, _sub) = subscriber_under("pubsub 0 65536 1").await;
    // Messages keep coming (a paced publisher, 10 MB/s at most) and are never read: past 64 KiB
    // unsent for more than a second, the subscriber goes.
    let mut publisher = redis.direct().await;
    let message = vec![b'm'; 10 * 1024];
    let start = std::time::Instant::now();
    let mut receivers = 1;
    while receivers > 0 && start.elapsed() < LIMIT {
        receivers = match publisher
            .cmd(&[b"PUBLISH".as_slice(), b"ch", &message])
            .await
        {
            Reply::Int(n) => n,
            other => panic!("PUBLISH: {other:?}"),
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        receivers, 0,
        "the subscriber is still there after {LIMIT:?}"
    );
    let line = proxy
        .bin
        .wait_line("client-output-buffer-limit pubsub", LIMIT);
    assert!(line.contains("soft limit"), "{line}");
    assert!(line.contains("soft_seconds=1"), "{line}");
}
