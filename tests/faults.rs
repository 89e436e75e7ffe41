//! Invariant 3, failure is explicit: the upstream dies, is down at start, or stops answering; every
//! command gets its own correct reply or a `-ERR respipe: upstream ...` error, never someone else's
//! reply, never a late reply, never a hang; and the proxy recovers when Redis is back.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bounded, free_port, poll_until, Proxy, RawClient, RedisServer, Reply, POLL};

/// How long any single command may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(8);

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    err: AtomicU64,
    /// SET answered +OK, then GET found nothing: Redis restarted empty in between.
    lost: AtomicU64,
    wrong: AtomicU64,
    hung: AtomicU64,
    closed: AtomicU64,
}

fn n(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// 50 clients loop SET/GET; Redis is SIGKILLed under them and restarted on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_load() {
    bounded(
        Duration::from_secs(120),
        "upstream killed mid-load",
        async {
            let mut redis = RedisServer::start().await;
            let proxy = Proxy::ready_with(&redis, |c| {
                c.command_timeout = Some(Duration::from_secs(3));
                c.reconnect_backoff_max = Duration::from_millis(100);
            })
            .await;
            let counts = Arc::new(Counts::default());
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for id in 0..50u32 {
                let mut c = proxy.raw().await;
                let (counts, stop) = (counts.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let (k, v) = (format!("k:{id}"), format!("v:{id}:{seq}"));
                        let set = match classify(&mut c, &["SET", &k, &v], None, &counts, id).await
                        {
                            Some(outcome) => outcome,
                            None => return,
                        };
                        let get = match classify(&mut c, &["GET", &k], Some(&v), &counts, id).await
                        {
                            Some(outcome) => outcome,
                            None => return,
                        };
                        if set == Outcome::Ok && get == Outcome::Nil {
                            counts.lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            let wait = Duration::from_secs(30);
            poll_until(wait, "load running", || async {
                (n(&counts.ok) >= 2_000).then_some(())
            })
            .await;
            redis.kill();
            let err_before = n(&counts.err);
            poll_until(wait, "errors after the kill", || async {
                (n(&counts.err) >= err_before + 100).then_some(())
            })
            .await;
            redis.restart().await;
            let mut probe = proxy.raw().await;
            let deadline = Instant::now() + wait;
            loop {
                match tokio::time::timeout(HANG, probe.cmd(&["SET", "probe", "1"])).await {
                    Ok(Reply::Simple(s)) if s == "OK" => break,
                    Ok(Reply::Error(e)) if e.starts_with("ERR respipe: upstream") => {}
                    other => panic!("probe: unexpected {other:?}"),
                }
                assert!(
                    Instant::now() < deadline,
                    "proxy does not serve again within {wait:?} of the restart"
                );
                tokio::time::sleep(POLL).await;
            }
            let ok_after = n(&counts.ok);
            poll_until(wait, "load recovers", || async {
                (n(&counts.ok) >= ok_after + 2_000).then_some(())
            })
            .await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.await.expect("client task");
            }
            let c = &counts;
            eprintln!(
                "upstream killed: ok={} err={} lost={} wrong={} hung={} closed={}",
                n(&c.ok),
                n(&c.err),
                n(&c.lost),
                n(&c.wrong),
                n(&c.hung),
                n(&c.closed)
            );
            assert_eq!(n(&c.wrong), 0, "wrong replies");
            assert_eq!(n(&c.hung), 0, "commands without a reply within {HANG:?}");
            assert_eq!(n(&c.closed), 0, "client connections closed by the proxy");
            assert!(n(&c.err) > 0);
        },
    )
    .await
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Nil,
    Err,
}

/// Sends one command and classifies its reply; `None` stops the client (hang or closed).
async fn classify(
    c: &mut RawClient,
    cmd: &[&str],
    want: Option<&str>,
    counts: &Counts,
    id: u32,
) -> Option<Outcome> {
    let reply = match tokio::time::timeout(HANG, c.try_cmd(cmd)).await {
        Err(_) => {
            counts.hung.fetch_add(1, Ordering::Relaxed);
            eprintln!("client {id}: {cmd:?} got no reply within {HANG:?}");
            return None;
        }
        Ok(Err(e)) => {
            counts.closed.fetch_add(1, Ordering::Relaxed);
            eprintln!("client {id}: {cmd:?}: {e}");
            return None;
        }
        Ok(Ok(r)) => r,
    };
    let outcome = match (&reply, want) {
        (Reply::Simple(s), None) if s == "OK" => Some(Outcome::Ok),
        (Reply::Bulk(Some(v)), Some(w)) if v == w.as_bytes() => Some(Outcome::Ok),
        // Only acceptable when the SET before failed, or Redis restarted empty in between.
        (Reply::Bulk(None), Some(_)) => Some(Outcome::Nil),
        (Reply::Error(e), _) if e.starts_with("ERR respipe: upstream") => Some(Outcome::Err),
        _ => None,
    };
    match outcome {
        Some(Outcome::Ok) => counts.ok.fetch_add(1, Ordering::Relaxed),
        Some(Outcome::Err) => counts.err.fetch_add(1, Ordering::Relaxed),
        Some(Outcome::Nil) => 0,
        None => {
            eprintln!("client {id}: {cmd:?} -> wrong reply {reply:?} (expected {want:?})");
            counts.wrong.fetch_add(1, Ordering::Relaxed)
        }
    };
    Some(outcome.unwrap_or(Outcome::Err))
}

/// Nothing listens on the upstream port: commands fail fast with an explicit error, the client
/// connection stays usable, and once Redis appears the same connection is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_start() {
    bounded(Duration::from_secs(60), "upstream down at start", async {
        let port = free_port();
        let proxy = Proxy::start(port, |_| {}).await;
        let mut c = RawClient::connect(proxy.addr()).await;
        for cmd in [&["PING"][..], &["GET", "a"], &["SET", "a", "1"]] {
            let reply = bounded(
                Duration::from_secs(5),
                "answer while upstream is down",
                c.cmd(cmd),
            )
            .await;
            assert!(
                reply
                    .error_text()
                    .is_some_and(|e| e.starts_with("ERR respipe: upstream unavailable")),
                "{cmd:?}: expected -ERR respipe: upstream unavailable ..., got {reply:?}"
            );
        }
        // Pipelined commands while down: one error each, in order, connection still open.
        let mut req = common::encode(&["GET", "x"]);
        req.extend(common::encode(&["CLIENT", "GETNAME"]));
        req.extend(common::encode(&["GET", "y"]));
        c.send(&req).await;
        let replies = bounded(
            Duration::from_secs(5),
            "pipelined while down",
            c.read_replies(3),
        )
        .await;
        assert!(
            replies[0]
                .error_text()
                .is_some_and(|e| e.starts_with("ERR respipe: upstream")),
            "{replies:?}"
        );
        assert_eq!(replies[1], Reply::nil(), "{replies:?}");
        assert!(
            replies[2]
                .error_text()
                .is_some_and(|e| e.starts_with("ERR respipe: upstream")),
            "{replies:?}"
        );

        let _redis = RedisServer::start_on(port).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match bounded(Duration::from_secs(5), "PING", c.cmd(&["PING"])).await {
                Reply::Simple(s) if s == "PONG" => break,
                Reply::Error(e) if e.starts_with("ERR respipe: upstream") => {}
                other => panic!("unexpected {other:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "the same connection is not served within 10s of Redis starting"
            );
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(c.cmd(&["SET", "a", "1"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "a"]).await, Reply::bulk("1"));
    })
    .await
}

/// Redis (started with `redis_args`) behind a proxy whose commands time out after 300ms (`tweak`
/// changes more), and two clients `a` and `b` of it, after `a` has set `a` to `1` and `b` to `2`.
async fn timeout_fixture(
    redis_args: &[&str],
    tweak: impl FnOnce(&mut respipe::Config),
) -> (RedisServer, Proxy, RawClient, RawClient) {
    let redis = RedisServer::start_with(redis_args).await;
    let proxy = Proxy::ready_with(&redis, |c| {
        c.command_timeout = Some(Duration::from_millis(300));
        tweak(c);
    })
    .await;
    let mut a = proxy.raw().await;
    let b = proxy.raw().await;
    assert_eq!(a.cmd(&["SET", "a", "1"]).await, Reply::ok());
    assert_eq!(a.cmd(&["SET", "b", "2"]).await, Reply::ok());
    (redis, proxy, a, b)
}

/// Redis frozen with SIGSTOP: the command times out with an explicit error; after SIGCONT the late
/// reply is dropped and the next command gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_timeout_with_frozen_redis() {
    bounded(
        Duration::from_secs(60),
        "command timeout (SIGSTOP)",
        async {
            let (redis, _proxy, mut a, mut b) = timeout_fixture(&[], |_| {}).await;
            assert_eq!(b.cmd(&["SET", "c", "3"]).await, Reply::ok());

            redis.signal(libc::SIGSTOP);
            let reply = bounded(
                Duration::from_secs(5),
                "GET a while frozen",
                a.cmd(&["GET", "a"]),
            )
            .await;
            let reply_b = bounded(
                Duration::from_secs(5),
                "GET a (b) while frozen",
                b.cmd(&["GET", "a"]),
            )
            .await;
            redis.signal(libc::SIGCONT);
            let prefix = format!(
                "ERR respipe: upstream 127.0.0.1:{} did not answer within",
                redis.port()
            );
            for r in [&reply, &reply_b] {
                assert!(
                    r.error_text().is_some_and(|e| e.starts_with(&prefix)),
                    "expected an error starting {prefix:?}, got {r:?}"
                );
            }
            // The late "1"s are dropped: each client gets its own reply to the next command.
            assert_eq!(
                bounded(Duration::from_secs(5), "GET b", a.cmd(&["GET", "b"])).await,
                Reply::bulk("2")
            );
            assert_eq!(
                bounded(Duration::from_secs(5), "GET c", b.cmd(&["GET", "c"])).await,
                Reply::bulk("3")
            );
            assert_eq!(a.cmd(&["GET", "a"]).await, Reply::bulk("1"));
            assert_eq!(a.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        },
    )
    .await
}

/// A slow command (DEBUG SLEEP 1) times out; its late `+OK` never reaches anyone, and commands queued
/// behind it get either their own reply or the timeout error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_reply_after_timeout_is_dropped() {
    bounded(
        Duration::from_secs(60),
        "command timeout (DEBUG SLEEP)",
        async {
            let (_redis, _proxy, mut a, mut b) =
                timeout_fixture(&["--enable-debug-command", "yes"], |c| {
                    c.pool_size = 1.try_into().unwrap()
                })
                .await;

            a.send(&common::encode(&["DEBUG", "SLEEP", "1"])).await;
            // b's GET goes on the same upstream connection, behind the sleep.
            let rb = bounded(
                Duration::from_secs(5),
                "b GET a behind the sleep",
                b.cmd(&["GET", "a"]),
            )
            .await;
            let ra = bounded(Duration::from_secs(5), "DEBUG SLEEP 1", a.read_reply()).await;
            let timeout_prefix = "ERR respipe: upstream ";
            assert!(
                ra.error_text()
                    .is_some_and(|e| e.starts_with(timeout_prefix)
                        && e.contains("did not answer within 300ms")),
                "DEBUG SLEEP 1 with a 300ms timeout: got {ra:?}"
            );
            assert!(
                rb == Reply::bulk("1")
                    || rb
                        .error_text()
                        .is_some_and(|e| e.contains("did not answer within")),
                "b: expected \"1\" or a timeout error, got {rb:?}"
            );
            // Poll until the upstream answers again; never the late +OK, never another client's value.
            let mut timeouts = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match bounded(Duration::from_secs(5), "GET b", a.cmd(&["GET", "b"])).await {
                    Reply::Bulk(Some(v)) if v == b"2" => break,
                    Reply::Error(e) if e.contains("did not answer within") => timeouts += 1,
                    other => panic!(
                        "GET b after a timeout: expected \"2\" or a timeout error, got {other:?}"
                    ),
                }
                assert!(Instant::now() < deadline, "GET b not answered within 10s");
                tokio::time::sleep(POLL).await;
            }
            eprintln!("GET b timed out {timeouts} time(s) before Redis woke up");
            assert_eq!(b.cmd(&["GET", "b"]).await, Reply::bulk("2"));
            assert_eq!(a.cmd(&["GET", "a"]).await, Reply::bulk("1"));
            assert_eq!(b.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        },
    )
    .await
}
