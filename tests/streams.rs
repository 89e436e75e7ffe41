//! Streams (subscriptions, MONITOR) and what ends them: the same bytes sent to Redis directly and
//! through respipe must come back byte for byte the same, RESET and QUIT included, whatever else
//! was pipelined with them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{bounded, Proxy, RawClient, RedisServer};
use respipe::resp::ReplyScanner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

/// Commands as one write, RESP-encoded.
fn script(cmds: &[&[&str]]) -> Vec<u8> {
    cmds.iter().flat_map(|c| common::encode(c)).collect()
}

/// Length of the first complete reply frame in `buf`, if there is one.
fn frame_len(buf: &[u8]) -> Option<usize> {
    ReplyScanner::new(64)
        .scan(buf)
        .expect("a valid reply stream")
        .map(|f| f.len)
}

/// Plays `steps` on a new connection to `addr`: each step's bytes in one write, then `n` reply
/// frames read before the next step (the last step reads until the server closes). Returns every
/// byte received, without the first `skip` frames (answers that differ by nature, like HELLO's id).
async fn transcript(addr: SocketAddr, steps: &[(Vec<u8>, usize)], skip: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    for (i, (bytes, frames)) in steps.iter().enumerate() {
        s.write_all(bytes).await.expect("write");
        let last = i + 1 == steps.len();
        loop {
            let mut at = 0;
            let mut complete = 0;
            while let Some(len) = frame_len(&buf[at..]) {
                at += len;
                complete += 1;
            }
            if !last && complete >= *frames {
                break;
            }
            let n = s.read(&mut chunk).await.expect("read");
            if n == 0 {
                assert!(last, "closed before step {i} was answered");
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    let mut at = 0;
    for _ in 0..skip {
        at += frame_len(&buf[at..]).expect("a frame to skip");
    }
    buf.split_off(at)
}

/// Plays `steps` (ending with something that makes the server close) directly on a fresh Redis and
/// through respipe on another, and asserts both sides got exactly the same bytes.
async fn same_as_redis(what: &str, steps: &[(Vec<u8>, usize)], skip: usize) {
    let direct = RedisServer::start().await;
    let proxied = RedisServer::start().await;
    let proxy = Proxy::ready(&proxied).await;
    let want = bounded(LIMIT, "direct", transcript(direct.addr(), steps, skip)).await;
    let got = bounded(LIMIT, "proxied", transcript(proxy.addr(), steps, skip)).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want),
        "{what}: respipe's bytes differ from Redis's"
    );
}

#[tokio::test]
async fn reset_after_subscribe_in_one_write_loses_nothing() {
    let steps = [(
        script(&[
            &["SUBSCRIBE", "ch"],
            &["RESET"],
            &["PING"],
            &["GET", "k"],
            &["QUIT"],
        ]),
        0,
    )];
    same_as_redis("SUBSCRIBE; RESET", &steps, 0).await;
}

#[tokio::test]
async fn a_long_pipeline_through_subscribe_and_reset_loses_nothing() {
    let mut cmds: Vec<Vec<&str>> = vec![vec!["SET", "a", "1"]];
    cmds.extend((0..5).map(|_| vec!["INCR", "n"]));
    cmds.push(vec!["SUBSCRIBE", "c", "d"]);
    cmds.extend((0..5).map(|_| vec!["GET", "a"]));
    cmds.push(vec!["PING", "in-stream"]);
    cmds.push(vec!["UNSUBSCRIBE", "d"]);
    cmds.push(vec!["PSUBSCRIBE", "p*"]);
    cmds.push(vec!["RESET"]);
    cmds.extend((0..8).map(|_| vec!["INCR", "n"]));
    cmds.push(vec!["GET", "a"]);
    cmds.push(vec!["QUIT"]);
    let cmds: Vec<&[&str]> = cmds.iter().map(|c| c.as_slice()).collect();
    let steps = [(script(&cmds), 0)];
    same_as_redis("25 commands around SUBSCRIBE ... RESET", &steps, 0).await;
}

#[tokio::test]
async fn unsubscribe_then_reset_keeps_the_confirmation() {
    for unsubscribe in [
        &["UNSUBSCRIBE", "ch"][..],
        &["UNSUBSCRIBE"],
        &["PUNSUBSCRIBE"],
    ] {
        let steps = [
            (script(&[&["SUBSCRIBE", "ch"]]), 1),
            (script(&[unsubscribe, &["RESET"], &["PING"], &["QUIT"]]), 0),
        ];
        same_as_redis(&format!("{unsubscribe:?}; RESET"), &steps, 0).await;
    }
}

#[tokio::test]
async fn quit_after_a_stream_starts_in_one_write_loses_nothing() {
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "SUBSCRIBE; QUIT",
            script(&[&["SUBSCRIBE", "a", "b"], &["QUIT"]]),
        ),
        (
            "SUBSCRIBE; PING; QUIT",
            script(&[&["PSUBSCRIBE", "p*"], &["PING"], &["GET", "k"], &["QUIT"]]),
        ),
        ("MONITOR; QUIT", script(&[&["MONITOR"], &["QUIT"]])),
        (
            "MONITOR; RESET",
            script(&[&["MONITOR"], &["RESET"], &["PING"], &["QUIT"]]),
        ),
        (
            "rejected SUBSCRIBE; QUIT",
            script(&[&["SUBSCRIBE"], &["SET", "k", "v"], &["QUIT"]]),
        ),
    ];
    for (what, bytes) in cases {
        same_as_redis(what, &[(bytes, 0)], 0).await;
    }
}

#[tokio::test]
async fn resp3_streams_end_in_order() {
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "RESP3 SUBSCRIBE; RESET",
            script(&[
                &["HELLO", "3"],
                &["SUBSCRIBE", "ch"],
                &["GET", "k"],
                &["RESET"],
                &["PING"],
                &["QUIT"],
            ]),
        ),
        (
            "RESP3 UNSUBSCRIBE; RESET",
            script(&[
                &["HELLO", "3"],
                &["SSUBSCRIBE", "ch"],
                &["SUNSUBSCRIBE", "ch"],
                &["RESET"],
                &["QUIT"],
            ]),
        ),
        (
            "RESP3 SUBSCRIBE; QUIT",
            script(&[
                &["HELLO", "3"],
                &["SUBSCRIBE", "ch"],
                &["SET", "k", "v"],
                &["QUIT"],
            ]),
        ),
    ];
    for (what, bytes) in cases {
        // HELLO's map carries the connection id, which differs by nature.
        same_as_redis(what, &[(bytes, 0)], 1).await;
    }
}

/// After RESET ends a subscription, the client is a plain client again: its subscriber is gone
/// from Redis and its commands run on the shared pool.
#[tokio::test]
async fn reset_in_a_stream_leaves_redis_subscribe_mode() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::ready(&redis).await;
    let mut c = proxy.raw().await;
    c.send(&script(&[&["SUBSCRIBE", "ch"], &["RESET"]])).await;
    bounded(LIMIT, "subscribe and reset", c.read_replies(2)).await;
    let addr = redis.addr();
    common::poll_until(LIMIT, "no subscriber left", || async move {
        let n = RawClient::connect(addr)
            .await
            .cmd(&["PUBSUB", "NUMSUB", "ch"])
            .await;
        (n == common::Reply::Array(Some(vec![common::Reply::bulk("ch"), common::Reply::Int(0)])))
            .then_some(())
    })
    .await;
    assert_eq!(
        bounded(LIMIT, "ping", c.cmd(&["PING"])).await,
        common::Reply::Simple("PONG".into())
    );
}
