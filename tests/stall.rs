//! One stalled upstream connection must not wedge the proxy (a busy script, a long DEBUG SLEEP), and
//! Redis closing a healthy connection (CLIENT KILL, its idle `timeout`) must not refuse commands:
//! clients see what they would see talking to Redis directly.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, encode, BinProxy, Proxy, RawClient, RedisServer, Reply};

/// The command timeout of the proxies here: long enough that on a loaded machine the commands a
/// test queues behind a stalled one arrive before it times out, short enough to wait for a few times.
const TIMEOUT: Duration = Duration::from_secs(1);
/// A busy script answers other connections `-BUSY` after this (Redis's `busy-reply-threshold`).
const BUSY_AFTER: &str = "100";
/// Bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// Redis with a quick `-BUSY` behind a proxy with one upstream connection
/// and a short command timeout.
async fn stall_fixture() -> (RedisServer, Proxy) {
    let redis = RedisServer::start_with(&["--busy-reply-threshold", BUSY_AFTER]).await;
    // One shared connection: one worker too (a second one has its own, which Redis answers -BUSY).
    let proxy = Proxy::ready_with(&redis, |c| {
        c.batching.pool_size = 1.try_into().unwrap();
        c.batching.workers = 1.try_into().unwrap();
        c.timeouts.command_timeout = Some(TIMEOUT);
    })
    .await;
    (redis, proxy)
}

/// Polls PING on a direct connection until Redis answers `-BUSY`, and returns that error text: the
/// stalling command is running and past the threshold.
async fn wait_busy(direct: &mut RawClient) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Reply::Error(e) = direct.cmd(&["PING"]).await {
            if e.starts_with("BUSY") {
                return e;
            }
        }
        assert!(Instant::now() < deadline, "Redis never answered -BUSY");
        tokio::time::sleep(common::POLL).await;
    }
}

/// Polls PING on a direct connection until Redis answers PONG: a killed script has ended (KILL
/// answers `+OK` at once; the script stops at its next check, and until then Redis says `-BUSY`).
async fn wait_not_busy(direct: &mut RawClient) {
    let deadline = Instant::now() + WAIT;
    while direct.cmd(&["PING"]).await != Reply::Simple("PONG".into()) {
        assert!(Instant::now() < deadline, "Redis stays busy after the kill");
        tokio::time::sleep(common::POLL).await;
    }
}

/// Asserts `r` is respipe's command timeout error.
fn assert_timed_out(r: &Reply, what: &str) {
    assert!(
        r.error_text().is_some_and(
            |e| e.starts_with("ERR respipe: upstream") && e.contains("did not answer within")
        ),
        "{what}: expected respipe's timeout error, got {r:?}"
    );
}

/// After a stall ended: every client works again and gets its own replies.
async fn all_work(clients: &mut [&mut RawClient]) {
    for (i, c) in clients.iter_mut().enumerate() {
        let (k, v) = (format!("k{i}"), format!("v{i}"));
        assert_eq!(
            bounded(WAIT, "PING", c.cmd(&["PING"])).await,
            Reply::Simple("PONG".into()),
            "client {i}"
        );
        assert_eq!(
            bounded(WAIT, "SET", c.cmd(&["SET", &k, &v])).await,
            Reply::ok()
        );
        assert_eq!(
            bounded(WAIT, "GET", c.cmd(&["GET", &k])).await,
            Reply::bulk(&v)
        );
    }
}

/// A script that never ends (`stall`, after `setup` on a direct connection): its client gets
/// respipe's timeout; every other client, old or new, then gets Redis's own `-BUSY` at once (not a
/// timeout behind the script), one of them kills the script with `kill` (SCRIPT KILL / FUNCTION
/// KILL), and afterwards all of them work.
async fn busy_then_kill(setup: &[&str], stall: &[&str], kill: &[&str]) {
    let (redis, proxy) = stall_fixture().await;
    let mut direct = redis.direct().await;
    if !setup.is_empty() {
        let r = direct.cmd(setup).await;
        assert!(r.error_text().is_none(), "{setup:?}: {r:?}");
    }
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    }
    a.send(&encode(stall)).await;
    let busy = wait_busy(&mut direct).await;
    let ra = bounded(WAIT, "the stalled command", a.read_reply()).await;
    assert_timed_out(&ra, "the stalled command");

    // A command queued behind the script would time out: -BUSY proves each went to a fresh connection.
    let rb = bounded(WAIT, "b PING while busy", b.cmd(&["PING"])).await;
    assert_eq!(rb, Reply::Error(busy.clone()), "b gets Redis's own -BUSY");
    let mut c = proxy.raw().await;
    let rc = bounded(WAIT, "c PING while busy", c.cmd(&["PING"])).await;
    assert_eq!(
        rc,
        Reply::Error(busy.clone()),
        "a new client gets Redis's own -BUSY"
    );
    let ra = bounded(WAIT, "a PING while busy", a.cmd(&["PING"])).await;
    assert_eq!(ra, Reply::Error(busy), "the stalled client gets -BUSY too");
    assert_eq!(
        bounded(WAIT, "kill", b.cmd(kill)).await,
        Reply::ok(),
        "{kill:?}"
    );
    wait_not_busy(&mut direct).await;
    all_work(&mut [&mut a, &mut b, &mut c]).await;
}

/// `EVAL "while true do end" 0` does not wedge the proxy: SCRIPT KILL from another client works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_script_is_killed_through_the_proxy() {
    bounded(Duration::from_secs(60), "busy script", async {
        busy_then_kill(
            &[],
            &["EVAL", "while true do end", "0"],
            &["SCRIPT", "KILL"],
        )
        .await
    })
    .await
}

/// A function that never ends (FCALL) does not wedge the proxy: FUNCTION KILL works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_function_is_killed_through_the_proxy() {
    bounded(Duration::from_secs(60), "busy function", async {
        let library =
            "#!lua name=spin\nredis.register_function('spin', function() while true do end end)";
        busy_then_kill(
            &["FUNCTION", "LOAD", library],
            &["FCALL", "spin", "0"],
            &["FUNCTION", "KILL"],
        )
        .await
    })
    .await
}

/// Clients with commands pipelined behind the stalled one get their replies in order: a timeout
/// error for each command stuck behind it, then (for commands sent after the stall was detected)
/// Redis's own replies from the fresh connection, never another client's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_behind_a_stall_keep_their_order() {
    bounded(Duration::from_secs(60), "pipelined behind a stall", async {
        let (redis, proxy) = stall_fixture().await;
        let mut direct = redis.direct().await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        let mut c = proxy.raw().await;
        for x in [&mut a, &mut b, &mut c] {
            assert_eq!(x.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        }
        a.send(&encode(&["EVAL", "while true do end", "0"])).await;
        let busy = wait_busy(&mut direct).await;
        // Behind the script on the same connection: b's in one write, c's in three.
        b.send(&[encode(&["ECHO", "b1"]), encode(&["ECHO", "b2"])].concat())
            .await;
        for m in ["c1", "c2", "c3"] {
            c.send(&encode(&["ECHO", m])).await;
        }
        assert_timed_out(&bounded(WAIT, "EVAL", a.read_reply()).await, "EVAL");
        // Sent while b's and c's first commands are still waiting behind the script: they must come
        // after those (whose answer is a timeout), and then run on the fresh connection.
        b.send(&encode(&["ECHO", "b3"])).await;
        c.send(&encode(&["ECHO", "c4"])).await;
        let rb = bounded(WAIT, "b's replies", b.read_replies(3)).await;
        let rc = bounded(WAIT, "c's replies", c.read_replies(4)).await;
        for (i, r) in rb[..2].iter().chain(&rc[..3]).enumerate() {
            assert_timed_out(r, &format!("command {i} behind the script"));
        }
        assert_eq!(
            rb[2],
            Reply::Error(busy.clone()),
            "b's command after the stall"
        );
        assert_eq!(rc[3], Reply::Error(busy), "c's command after the stall");
        assert_eq!(
            bounded(WAIT, "SCRIPT KILL", c.cmd(&["SCRIPT", "KILL"])).await,
            Reply::ok()
        );
        wait_not_busy(&mut direct).await;
        for (x, m) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
            assert_eq!(
                bounded(WAIT, "ECHO", x.cmd(&["ECHO", m])).await,
                Reply::bulk(m)
            );
        }
        all_work(&mut [&mut a, &mut b, &mut c]).await;
    })
    .await
}

/// `DEBUG SLEEP` stalls all of Redis, so nothing can be answered until it ends, through any
/// connection. The stalled connection is still retired (`respipe_upstream_errors_total{kind="stalled"}`),
/// its late `+OK` reaches nobody, and once Redis wakes every client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep_retires_the_connection() {
    bounded(Duration::from_secs(60), "DEBUG SLEEP", async {
        let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]).await;
        let proxy = BinProxy::spawn(
            &redis.addr().to_string(),
            &["--command-timeout", "500ms", "--pool-size", "1"],
        );
        let mut a = proxy.wait_pong().await;
        let mut b = proxy.wait_pong().await;
        assert_eq!(a.cmd(&["SET", "k", "v"]).await, Reply::ok());
        a.send(&encode(&["DEBUG", "SLEEP", "1.5"])).await;
        assert_timed_out(
            &bounded(WAIT, "DEBUG SLEEP", a.read_reply()).await,
            "DEBUG SLEEP",
        );
        proxy
            .wait_metric("respipe_upstream_errors_total", WAIT, |v| v >= 1.0)
            .await;
        let (_, body) = common::http_get(&proxy.admin, "/metrics").await.unwrap();
        assert!(
            body.contains("respipe_upstream_errors_total{kind=\"stalled\"} 1"),
            "the stalled connection is counted once: {body}"
        );
        // Until Redis wakes, commands time out; afterwards each client gets its own replies.
        let deadline = Instant::now() + WAIT;
        loop {
            match bounded(WAIT, "GET k", b.cmd(&["GET", "k"])).await {
                Reply::Bulk(Some(v)) if v == b"v" => break,
                r => assert_timed_out(&r, "GET k while Redis sleeps"),
            }
            assert!(Instant::now() < deadline, "not served after Redis woke");
        }
        all_work(&mut [&mut a, &mut b]).await;
    })
    .await
}

/// Redis kills respipe's idle connection (`CLIENT KILL TYPE normal`): the next command is served
/// (respipe reconnects at once and holds it meanwhile), again and again. Then Redis dies for good:
/// commands fail fast with the explicit error rather than hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_does_not_refuse_commands() {
    bounded(Duration::from_secs(60), "CLIENT KILL", async {
        let mut redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        let mut direct = redis.direct().await;
        assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        for i in 0..5 {
            let killed = direct
                .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                .await;
            assert!(
                matches!(killed, Reply::Int(n) if n >= 1),
                "CLIENT KILL: {killed:?}"
            );
            assert_eq!(
                bounded(WAIT, "PING after CLIENT KILL", c.cmd(&["PING"])).await,
                Reply::Simple("PONG".into()),
                "round {i}"
            );
        }
        drop(direct);
        redis.kill();
        for i in 0..3 {
            let started = Instant::now();
            let r = bounded(WAIT, "PING with Redis gone", c.cmd(&["PING"])).await;
            assert!(
                r.error_text()
                    .is_some_and(|e| e.starts_with("ERR respipe: upstream unavailable")),
                "PING {i} with Redis gone: {r:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "PING {i} took {:?} with Redis gone",
                started.elapsed()
            );
        }
    })
    .await
}

/// Redis closes respipe's idle connection after its `timeout` (1 s here): the next command is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_does_not_refuse_commands() {
    bounded(Duration::from_secs(60), "idle timeout", async {
        let redis = RedisServer::start_with(&["--timeout", "1"]).await;
        // It watches respipe's one upstream connection: one worker.
        let proxy = Proxy::ready_with(&redis, |c| c.batching.workers = 1.try_into().unwrap()).await;
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        let mut direct = redis.direct().await;
        let me = match direct.cmd(&["CLIENT", "ID"]).await {
            Reply::Int(id) => format!("id={id} "),
            other => panic!("CLIENT ID: {other:?}"),
        };
        let others = |list: &Reply| -> Vec<String> {
            let Reply::Bulk(Some(list)) = list else {
                panic!("CLIENT LIST: {list:?}")
            };
            String::from_utf8_lossy(list)
                .lines()
                .filter(|l| !l.starts_with(&me))
                .filter_map(|l| l.split(' ').next().map(str::to_owned))
                .collect()
        };
        let respipe = others(&direct.cmd(&["CLIENT", "LIST"]).await);
        assert_eq!(
            respipe.len(),
            1,
            "respipe's one upstream connection: {respipe:?}"
        );
        // Poll often (this connection stays busy, so Redis keeps it) and PING through respipe as
        // soon as Redis has closed respipe's connection.
        let deadline = Instant::now() + WAIT;
        while others(&direct.cmd(&["CLIENT", "LIST"]).await).contains(&respipe[0]) {
            assert!(
                Instant::now() < deadline,
                "Redis never closed the idle connection"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(
            bounded(WAIT, "PING after the idle close", c.cmd(&["PING"])).await,
            Reply::Simple("PONG".into())
        );
    })
    .await
}

/// A connection retired by a stall and then closed by Redis is replaced even while no client sends
/// anything: `/readyz` does not stay 503 with Redis healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_again_after_a_retired_connection_is_closed() {
    bounded(
        Duration::from_secs(60),
        "ready after a retired connection",
        async {
            let redis = RedisServer::start_with(&["--busy-reply-threshold", BUSY_AFTER]).await;
            let proxy = BinProxy::spawn(
                &redis.addr().to_string(),
                &["--command-timeout", "500ms", "--pool-size", "1"],
            );
            let mut a = proxy.wait_pong().await;
            let mut direct = redis.direct().await;
            a.send(&encode(&["EVAL", "while true do end", "0"])).await;
            wait_busy(&mut direct).await;
            assert_timed_out(&bounded(WAIT, "EVAL", a.read_reply()).await, "EVAL");
            assert_eq!(direct.cmd(&["SCRIPT", "KILL"]).await, Reply::ok());
            wait_not_busy(&mut direct).await;
            let killed = direct
                .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
                .await;
            assert!(
                matches!(killed, Reply::Int(n) if n >= 1),
                "CLIENT KILL: {killed:?}"
            );
            proxy.wait_status("/readyz", 200, WAIT).await;
            assert_eq!(
                bounded(WAIT, "PING", a.cmd(&["PING"])).await,
                Reply::Simple("PONG".into())
            );
        },
    )
    .await
}
