//! Invariant 3, failure is explicit: the upstream dies, is down at start, or stops answering; every
//! command gets its own correct reply or a `-ERR respipe: upstream ...` error, never someone else's
//! reply, never a late reply, never a hang; and the proxy recovers when Redis is back.

mod common;
#[path = "common/drill.rs"]
mod drill;
// `drill` reads replies with the harness's reader.
use common::wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    bounded, encode, free_port, is_upstream_error, poll_until, BinProxy, ChaosLink, Proxy,
    RawClient, RedisServer, Reply, POLL,
};
use drill::DrillCounts;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
                c.timeouts.command_timeout = Some(Duration::from_secs(3));
                c.timeouts.reconnect_backoff_max = Duration::from_millis(100);
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
        c.timeouts.command_timeout = Some(Duration::from_millis(300));
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
                    c.batching.pool_size = 1.try_into().unwrap()
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

/// Redis SIGKILLed under 220 clients (60 of them pipelining 10 to 50 deep) in front of the respipe
/// binary: every command is answered (its own value or `-ERR respipe: upstream ...`), nothing is
/// misrouted, no client is disconnected, `/readyz` goes 503 then 200, and service resumes soon after
/// Redis accepts again (the recovery time is printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_200_clients() {
    bounded(
        Duration::from_secs(110),
        "redis killed under 200 clients",
        async {
            let mut redis = RedisServer::start().await;
            let proxy = BinProxy::spawn(&redis.addr().to_string(), &["--command-timeout", "3s"]);
            proxy.wait_pong().await;
            proxy
                .wait_status("/readyz", 200, Duration::from_secs(10))
                .await;
            let counts = Arc::new(DrillCounts::default());
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            let shape = Arc::new(drill::ClientShape::plain(HANG, 0));
            for id in 0..220u32 {
                let s = RawClient::connect(proxy.listen).await.stream;
                tasks.push(tokio::spawn(drill::client(
                    s,
                    id,
                    drill::depth(id, 60),
                    counts.clone(),
                    stop.clone(),
                    shape.clone(),
                )));
            }
            let wait = Duration::from_secs(30);
            let ok = |c: &DrillCounts| n(&c.ok);
            poll_until(wait, "load running", || async {
                (ok(&counts) >= 20_000).then_some(())
            })
            .await;
            let before = (n(&counts.ok), n(&counts.err));
            redis.kill();
            let to_503 = proxy
                .wait_status("/readyz", 503, Duration::from_secs(10))
                .await;
            poll_until(wait, "errors after the kill", || async {
                (n(&counts.err) >= before.1 + 1_000).then_some(())
            })
            .await;
            redis.restart().await;
            // Redis accepts again: time until a command through respipe succeeds.
            let accepted = Instant::now();
            let mut probe = RawClient::connect(proxy.listen).await;
            loop {
                match bounded(HANG, "probe", probe.cmd(&["SET", "probe", "1"])).await {
                    Reply::Simple(s) if s == "OK" => break,
                    r if is_upstream_error(&r) => {}
                    other => panic!("probe: unexpected {other:?}"),
                }
                assert!(
                    accepted.elapsed() < wait,
                    "no service {wait:?} after Redis came back"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let recovery = accepted.elapsed();
            // Every client still connected (none was closed by the outage), plus the probe.
            assert_eq!(proxy.metric("respipe_client_connections").await, 221.0);
            let to_200 = proxy
                .wait_status("/readyz", 200, Duration::from_secs(10))
                .await;
            let ok_after = ok(&counts);
            poll_until(wait, "load recovers", || async {
                (ok(&counts) >= ok_after + 20_000).then_some(())
            })
            .await;
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                bounded(HANG * 2, "client task", t)
                    .await
                    .expect("client task");
            }
            let c = &counts;
            eprintln!(
            "redis killed under 220 clients: ok={} err={} nil={} wrong={} misrouted={} hung={} \
             closed={}; answered with errors during the outage: {}; /readyz 503 after {to_503:?}; \
             recovery {recovery:?} from Redis accepting to the first OK; /readyz 200 {to_200:?} \
             after that",
            n(&c.ok),
            n(&c.err),
            n(&c.nil),
            n(&c.wrong),
            n(&c.misrouted),
            n(&c.hung),
            n(&c.closed),
            n(&c.err) - before.1,
        );
            assert_eq!(n(&c.misrouted), 0, "replies that belong to another client");
            assert_eq!(n(&c.wrong), 0, "wrong replies");
            assert_eq!(n(&c.hung), 0, "commands without a reply within {HANG:?}");
            assert_eq!(n(&c.closed), 0, "client connections closed by respipe");
            assert!(
                n(&c.err) > 0,
                "no command failed: was Redis killed under load?"
            );
            assert!(
                recovery < Duration::from_secs(2),
                "recovery took {recovery:?}"
            );
        },
    )
    .await
}

/// The upstream listens but never accepts (its accept queue is full, so connects hang): commands are
/// answered with an explicit error within the connect timeout plus a margin, never hang, and the
/// client connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout() {
    bounded(Duration::from_secs(60), "upstream connect timeout", async {
        // A listener with backlog 0 that nobody accepts on; fill its accept queue.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) };
        assert_eq!(rc, 0, "bind");
        assert_eq!(unsafe { libc::listen(fd, 0) }, 0, "listen");
        let mut bound: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut blen = len;
        unsafe { libc::getsockname(fd, &mut bound as *mut _ as *mut libc::sockaddr, &mut blen) };
        let port = u16::from_be(bound.sin_port);
        let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let mut fillers = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(target)).await {
                Ok(Ok(s)) => fillers.push(s),
                Ok(Err(e)) => panic!("filling the accept queue: {e}"),
                Err(_) => break, // the queue is full: connects now hang
            }
            assert!(fillers.len() < 64, "the accept queue never fills");
        }

        let connect_timeout = Duration::from_millis(300);
        let proxy = Proxy::start(port, |c| {
            c.timeouts.connect_timeout = connect_timeout;
            c.timeouts.reconnect_backoff_max = Duration::from_millis(100);
        })
        .await;
        let mut c = proxy.raw().await;
        let mut worst = Duration::ZERO;
        for i in 0..10 {
            let t = Instant::now();
            let reply = bounded(Duration::from_secs(5), "command with the upstream hanging", c.cmd(&["GET", "k"])).await;
            worst = worst.max(t.elapsed());
            assert!(
                reply.error_text().is_some_and(|e| e.starts_with("ERR respipe: upstream unavailable")
                    && e.contains("timed out")),
                "command {i}: expected a connect timeout error, got {reply:?}"
            );
        }
        eprintln!("upstream never accepts: worst answer time {worst:?} (connect timeout {connect_timeout:?})");
        assert!(worst < connect_timeout + Duration::from_secs(1), "worst answer time {worst:?}");
        assert_eq!(c.cmd(&["CLIENT", "GETNAME"]).await, Reply::nil(), "the connection stays usable");
        unsafe { libc::close(fd) };
    })
    .await
}

/// The upstream connection is reset by the peer (RST) while commands are certainly in flight: each
/// gets `-ERR respipe: upstream ...`, in order, the clients keep their connections, respipe
/// reconnects and later commands succeed. Then Redis itself kills respipe's idle connections
/// (`CLIENT KILL TYPE normal`): service goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_by_peer() {
    bounded(Duration::from_secs(60), "upstream reset by peer", async {
        let redis = RedisServer::start().await;
        let link = ChaosLink::start(redis.addr()).await;
        // Both clients on the one upstream connection the link resets: one worker.
        let proxy = Proxy::start(link.addr.port(), |c| {
            c.batching.pool_size = 1.try_into().unwrap();
            c.batching.workers = 1.try_into().unwrap();
            c.timeouts.reconnect_backoff_max = Duration::from_millis(100);
        })
        .await;
        proxy.wait_ready().await;
        let mut a = proxy.raw().await;
        let mut b = proxy.raw().await;
        assert_eq!(a.cmd(&["SET", "a", "1"]).await, Reply::ok());

        link.hold(true);
        let pipeline = encode(&["GET", "a"]).repeat(10);
        a.send(&pipeline).await;
        b.send(&encode(&["INCR", "n"])).await;
        let held = pipeline.len() + encode(&["INCR", "n"]).len();
        poll_until(Duration::from_secs(10), "commands held in flight", || async {
            (link.held() >= held).then_some(())
        })
        .await;
        let reset_at = Instant::now();
        link.reset();
        link.hold(false);
        let ra = bounded(Duration::from_secs(5), "a's replies after the reset", a.read_replies(10)).await;
        let rb = bounded(Duration::from_secs(5), "b's reply after the reset", b.read_reply()).await;
        let answered = reset_at.elapsed();
        for r in ra.iter().chain([&rb]) {
            assert!(
                r.error_text().is_some_and(|e| e.starts_with("ERR respipe: upstream connection lost")),
                "expected -ERR respipe: upstream connection lost, got {r:?}"
            );
        }
        eprintln!("reset by peer: 11 in-flight commands answered with errors {answered:?} after the RST: {rb:?}");
        let recovered = reconnects_and_serves(&mut a, "1").await;
        assert_eq!(b.cmd(&["GET", "n"]).await, Reply::nil(), "the held INCR never reached Redis");
        eprintln!("reset by peer: served again after {recovered} upstream errors");

        // Redis kills every normal client, respipe's idle upstream connection included.
        let accepted = link.accepted();
        let killed = redis.direct().await.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]).await;
        assert!(matches!(killed, Reply::Int(n) if n >= 1), "CLIENT KILL: {killed:?}");
        poll_until(Duration::from_secs(10), "respipe reconnects after CLIENT KILL", || async {
            (link.accepted() > accepted).then_some(())
        })
        .await;
        reconnects_and_serves(&mut a, "1").await;
        assert_eq!(b.cmd(&["INCR", "n"]).await, Reply::Int(1));
    })
    .await
}

/// Polls `GET a` until it answers `want` (upstream errors meanwhile are fine); returns the number of
/// errors seen.
async fn reconnects_and_serves(c: &mut RawClient, want: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut errors = 0;
    loop {
        match bounded(Duration::from_secs(5), "GET a", c.cmd(&["GET", "a"])).await {
            Reply::Bulk(Some(v)) if v == want.as_bytes() => return errors,
            r if is_upstream_error(&r) => errors += 1,
            other => panic!("GET a: expected {want:?} or an upstream error, got {other:?}"),
        }
        assert!(Instant::now() < deadline, "not served again within 10s");
        tokio::time::sleep(POLL).await;
    }
}

/// Clients that vanish mid-pipeline, mid-request (half of a 10 MB SET) and while their big replies
/// are being written: another client is unaffected, the half request never reaches Redis, and
/// `respipe_client_connections` and `respipe_upstream_inflight` return to their baselines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_leave_no_trace() {
    bounded(Duration::from_secs(90), "clients vanishing", async {
        let redis = RedisServer::start().await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &[]);
        let mut other = proxy.wait_pong().await;
        let small = "s".repeat(1024);
        let big = "B".repeat(4 * 1024 * 1024);
        assert_eq!(other.cmd(&["SET", "small", &small]).await, Reply::ok());
        assert_eq!(other.cmd(&["SET", "big", &big]).await, Reply::ok());
        assert_eq!(proxy.metric("respipe_client_connections").await, 1.0);
        let addr = proxy.listen;

        // 1. Mid-pipeline: 5,000 GETs sent, 10 replies read, gone.
        let mut c = RawClient::connect(addr).await;
        c.send(&encode(&["GET", "small"]).repeat(5000)).await;
        for r in c.read_replies(10).await {
            assert_eq!(r, Reply::bulk(&small));
        }
        drop(c);
        settle(&proxy, &mut other, &small, "mid-pipeline").await;

        // 2. Mid-request: the header and half of a 10 MB SET, gone.
        let mut c = RawClient::connect(addr).await;
        c.send(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$10485760\r\n")
            .await;
        c.send(&vec![b'h'; 5 * 1024 * 1024]).await;
        assert_eq!(other.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        drop(c);
        settle(&proxy, &mut other, &small, "mid-request").await;
        assert_eq!(
            redis.direct().await.cmd(&["EXISTS", "half"]).await,
            Reply::Int(0)
        );

        // 3. While its replies are written: 20 GETs of 4 MB, 100 kB read, gone.
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&encode(&["GET", "big"]).repeat(20))
            .await
            .unwrap();
        let mut got = vec![0u8; 100 * 1024];
        s.read_exact(&mut got).await.unwrap();
        assert!(got.starts_with(b"$4194304\r\nBBB"));
        drop(s);
        settle(&proxy, &mut other, &small, "mid-reply").await;

        // 4. All three at once, 30 times over, while the other client keeps going.
        let mut vanishing = Vec::new();
        for i in 0..30 {
            vanishing.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let req = match i % 3 {
                    0 => encode(&["GET", "small"]).repeat(2000),
                    1 => [
                        &b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$10485760\r\n"[..],
                        &[b'h'; 1 << 20],
                    ]
                    .concat(),
                    _ => encode(&["GET", "big"]).repeat(5),
                };
                let _ = s.write_all(&req).await;
                if i % 3 != 1 {
                    // Take the first bytes of the replies, then vanish.
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                }
            }));
        }
        for _ in 0..200 {
            assert_eq!(other.cmd(&["GET", "small"]).await, Reply::bulk(&small));
        }
        for v in vanishing {
            v.await.unwrap();
        }
        settle(&proxy, &mut other, &small, "30 at once").await;
        assert_eq!(
            redis.direct().await.cmd(&["EXISTS", "half"]).await,
            Reply::Int(0)
        );
    })
    .await
}

/// After a client vanished: the other client still gets its own value, and the gauges return to
/// one client and nothing in flight.
async fn settle(proxy: &BinProxy, other: &mut RawClient, small: &str, what: &str) {
    assert_eq!(
        other.cmd(&["GET", "small"]).await,
        Reply::bulk(small),
        "{what}"
    );
    let limit = Duration::from_secs(20);
    proxy
        .wait_metric("respipe_client_connections", limit, |v| v == 1.0)
        .await;
    proxy
        .wait_metric("respipe_upstream_inflight", limit, |v| v == 0.0)
        .await;
}
