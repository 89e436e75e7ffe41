//! Streams (subscriptions, MONITOR) and what ends them: the same bytes sent to Redis directly and
//! through respipe must come back byte for byte the same, RESET and QUIT included, whatever else
//! was pipelined with them.

mod common;
#[path = "common/differential.rs"]
mod differential;

use std::time::Duration;

use common::{bounded, encode, Proxy, RawClient, RedisServer};
use differential::Scenario;

const LIMIT: Duration = Duration::from_secs(60);

/// One client writes `cmds` (ending with something that makes the server close) in one write and
/// reads to the close, directly on a fresh Redis and through respipe on another: every byte must
/// be the same.
async fn same_as_redis(what: &str, cmds: &[&[&str]]) {
    Scenario::new(what)
        .write(0, cmds)
        .read_to_close(0)
        .run()
        .await
}

#[tokio::test]
async fn reset_after_subscribe_in_one_write_loses_nothing() {
    same_as_redis(
        "SUBSCRIBE; RESET",
        &[
            &["SUBSCRIBE", "ch"],
            &["RESET"],
            &["PING"],
            &["GET", "k"],
            &["QUIT"],
        ],
    )
    .await;
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
    same_as_redis("25 commands around SUBSCRIBE ... RESET", &cmds).await;
}

#[tokio::test]
async fn unsubscribe_then_reset_keeps_the_confirmation() {
    for unsubscribe in [
        &["UNSUBSCRIBE", "ch"][..],
        &["UNSUBSCRIBE"],
        &["PUNSUBSCRIBE"],
    ] {
        Scenario::new(&format!("{unsubscribe:?}; RESET"))
            .call(0, &[&["SUBSCRIBE", "ch"]], 1)
            .write(0, &[unsubscribe, &["RESET"], &["PING"], &["QUIT"]])
            .read_to_close(0)
            .run()
            .await;
    }
}

#[tokio::test]
async fn quit_after_a_stream_starts_in_one_write_loses_nothing() {
    let cases: [(&str, &[&[&str]]); 5] = [
        ("SUBSCRIBE; QUIT", &[&["SUBSCRIBE", "a", "b"], &["QUIT"]]),
        (
            "SUBSCRIBE; PING; QUIT",
            &[&["PSUBSCRIBE", "p*"], &["PING"], &["GET", "k"], &["QUIT"]],
        ),
        ("MONITOR; QUIT", &[&["MONITOR"], &["QUIT"]]),
        (
            "MONITOR; RESET",
            &[&["MONITOR"], &["RESET"], &["PING"], &["QUIT"]],
        ),
        (
            "rejected SUBSCRIBE; QUIT",
            &[&["SUBSCRIBE"], &["SET", "k", "v"], &["QUIT"]],
        ),
    ];
    for (what, cmds) in cases {
        same_as_redis(what, cmds).await;
    }
}

#[tokio::test]
async fn resp3_streams_end_in_order() {
    let cases: [(&str, &[&[&str]]); 3] = [
        (
            "RESP3 SUBSCRIBE; RESET",
            &[
                &["HELLO", "3"],
                &["SUBSCRIBE", "ch"],
                &["GET", "k"],
                &["RESET"],
                &["PING"],
                &["QUIT"],
            ],
        ),
        (
            "RESP3 UNSUBSCRIBE; RESET",
            &[
                &["HELLO", "3"],
                &["SSUBSCRIBE", "ch"],
                &["SUNSUBSCRIBE", "ch"],
                &["RESET"],
                &["QUIT"],
            ],
        ),
        (
            "RESP3 SUBSCRIBE; QUIT",
            &[
                &["HELLO", "3"],
                &["SUBSCRIBE", "ch"],
                &["SET", "k", "v"],
                &["QUIT"],
            ],
        ),
    ];
    for (what, cmds) in cases {
        // HELLO's map carries the connection id, which the harness normalises.
        same_as_redis(what, cmds).await;
    }
}

/// After RESET ends a subscription, the client is a plain client again: its subscriber is gone
/// from Redis and its commands run on the shared pool.
#[tokio::test]
async fn reset_in_a_stream_leaves_redis_subscribe_mode() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::ready(&redis).await;
    let mut c = proxy.raw().await;
    c.send(&[encode(&["SUBSCRIBE", "ch"]), encode(&["RESET"])].concat())
        .await;
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
