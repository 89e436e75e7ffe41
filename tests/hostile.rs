//! Hostile and heavy input: malformed protocol, oversize headers and requests, million-element
//! arrays, deeply nested replies, clients that never read or read slowly, and the client limit.
//! Each case checks the offender's outcome exactly (Redis's bytes where Redis defines them) and that
//! another client connected all along keeps being served.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bounded, encode, BinProxy, Proxy, RawClient, RedisServer, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

/// Writes `bytes` to `addr` and reads everything until the peer closes: what a client sees.
async fn until_close(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The peer may close before taking everything (it stops at the first bad byte).
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Each malformed request gets byte for byte what Redis itself answers (`-ERR Protocol error: ...`)
/// and then the connection closes; a client connected all along is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_redis_error_and_close() {
    bounded(LIMIT, "malformed requests", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut other = proxy.raw().await;
        assert_eq!(other.cmd(&["SET", "o", "1"]).await, Reply::ok());
        let mut too_long_inline = vec![b'x'; 70_000];
        too_long_inline[0] = 0xff;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("non-numeric count", b"*abc\r\n".to_vec()),
            ("negative bulk length", b"*1\r\n$-5\r\n".to_vec()),
            (
                "integer where a bulk belongs",
                b"*3\r\n$3\r\nSET\r\n:1\r\n".to_vec(),
            ),
            ("bulk header 2^31-1", b"*1\r\n$2147483647\r\n".to_vec()),
            ("count 2^31", b"*2147483648\r\n".to_vec()),
            (
                "count overflowing i64",
                b"*99999999999999999999999\r\n".to_vec(),
            ),
            ("binary garbage after '*'", b"*\xff\xfe\r\n".to_vec()),
            ("binary garbage after '$'", b"*1\r\n$\xff\r\n".to_vec()),
            ("garbage with no line end (70 kB)", too_long_inline),
            ("unbalanced quotes inline", b"SET a \"x\r\n".to_vec()),
            (
                "good command, then a bad one",
                [encode(&["GET", "o"]), b"*1\r\n$x\r\n".to_vec()].concat(),
            ),
        ];
        for (what, bytes) in &cases {
            let want = bounded(
                Duration::from_secs(10),
                "redis direct",
                until_close(redis.addr(), bytes),
            )
            .await;
            assert!(
                String::from_utf8_lossy(&want).contains("-ERR Protocol error"),
                "{what}: redis itself answered {:?}",
                String::from_utf8_lossy(&want)
            );
            let got = bounded(
                Duration::from_secs(10),
                what,
                until_close(proxy.addr(), bytes),
            )
            .await;
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want),
                "{what}: respipe's answer (then close) differs from Redis's"
            );
            assert_eq!(other.cmd(&["GET", "o"]).await, Reply::bulk("1"), "{what}");
        }
        // Binary garbage on a line of its own is an inline command to Redis: an error reply, and the
        // connection stays open in both.
        for addr in [redis.addr(), proxy.addr()] {
            let mut c = RawClient::connect(addr).await;
            c.send(b"\x01\xfe\xfd garbage\r\nPING\r\n").await;
            let reply = c.read_reply().await;
            assert!(
                reply
                    .error_text()
                    .is_some_and(|e| e.starts_with("ERR unknown command")),
                "{addr}: {reply:?}"
            );
            assert_eq!(c.read_reply().await, Reply::Simple("PONG".into()), "{addr}");
        }
        assert_eq!(other.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

/// respipe's own limits, configured small: a request over `max_request_bytes` or with more than
/// `max_request_args` arguments gets `-ERR Protocol error: ...` and the connection closes; requests
/// within the limits pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_configured_limits_are_refused() {
    bounded(LIMIT, "request limits", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| {
            c.limits.max_request_bytes = 4096.try_into().unwrap();
            c.limits.max_request_args = 100.try_into().unwrap();
        })
        .await;
        let mut other = proxy.raw().await;
        let fits = "v".repeat(3000);
        assert_eq!(other.cmd(&["SET", "fits", &fits]).await, Reply::ok());
        let mut args = vec!["DEL".to_string()];
        args.extend((0..99).map(|i| format!("k{i}")));
        assert_eq!(other.cmd(&args).await, Reply::Int(0), "100 arguments");

        let part = "v".repeat(2000);
        args.push("k99".into());
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "6 kB MSET of 2 kB values",
                encode(&["MSET", "big", &part, "big2", &part, "big3", &part]),
                "ERR Protocol error: request too large (max 4096 bytes)",
            ),
            (
                // Redis's wording for a bulk past proto-max-bulk-len.
                "10 kB SET (one bulk past the limit)",
                encode(&["SET", "big", &"v".repeat(10_000)]),
                "ERR Protocol error: invalid bulk length",
            ),
            (
                "101 arguments",
                encode(&args),
                "ERR Protocol error: invalid multibulk length",
            ),
        ];
        for (what, bytes, prefix) in cases {
            let got = until_close(proxy.addr(), &bytes).await;
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with(&format!("-{prefix}")) && text.ends_with("\r\n"),
                "{what}: expected -{prefix}... then close, got {text:?}"
            );
            assert_eq!(
                text.matches("\r\n").count(),
                1,
                "{what}: one line: {text:?}"
            );
            assert_eq!(
                other.cmd(&["GET", "fits"]).await,
                Reply::bulk(&fits),
                "{what}"
            );
        }
        assert_eq!(
            redis.direct().await.cmd(&["EXISTS", "big"]).await,
            Reply::Int(0),
            "the refused SET must not reach Redis"
        );
    })
    .await
}

/// A 1,000,001-argument request (RPUSH of a million elements) is forwarded whole, and the
/// million-element reply to LRANGE comes back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_element_request_and_reply() {
    bounded(Duration::from_secs(90), "1M elements", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        const N: usize = 1_000_000;
        let mut req = format!("*{}\r\n$5\r\nRPUSH\r\n$1\r\nl\r\n", N + 2).into_bytes();
        let mut want = format!("*{N}\r\n").into_bytes();
        for i in 0..N {
            let v = i.to_string();
            let item = format!("${}\r\n{v}\r\n", v.len());
            req.extend_from_slice(item.as_bytes());
            want.extend_from_slice(item.as_bytes());
        }
        let mut c = proxy.raw().await;
        let mut other = proxy.raw().await;
        c.send(&req).await;
        assert_eq!(c.read_reply().await, Reply::Int(N as i64));
        assert_eq!(other.cmd(&["LLEN", "l"]).await, Reply::Int(N as i64));

        c.send(&encode(&["LRANGE", "l", "0", "-1"])).await;
        let mut got = vec![0u8; want.len()];
        c.stream.read_exact(&mut got).await.expect("read LRANGE");
        assert!(
            got == want,
            "the million-element reply differs from what was pushed"
        );
        assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));

        // A million-key DEL: one request, one integer.
        let mut del = format!("*{}\r\n$3\r\nDEL\r\n", N + 1).into_bytes();
        for i in 0..N {
            let k = format!("k{i}");
            del.extend_from_slice(format!("${}\r\n{k}\r\n", k.len()).as_bytes());
        }
        c.send(&del).await;
        assert_eq!(c.read_reply().await, Reply::Int(0));
    })
    .await
}

/// Lua script returning a table nested `depth` deep around the integer 7.
fn nested_script(depth: usize) -> String {
    format!(
        "local t = {{}} local c = t for i = 2, {depth} do local n = {{}} c[1] = n c = n end c[1] = 7 return t"
    )
}

/// Sends `EVAL script 0` and reads the whole reply as raw bytes: `depth` `*1` headers then `:7`.
async fn eval_nested(c: &mut RawClient, depth: usize) -> Vec<u8> {
    c.send(&encode(&["EVAL", &nested_script(depth), "0"])).await;
    let want_len = depth * 4 + 4;
    let mut got = vec![0u8; want_len];
    c.stream
        .read_exact(&mut got)
        .await
        .expect("read nested reply");
    got
}

fn nested_reply(depth: usize) -> Vec<u8> {
    [b"*1\r\n".repeat(depth), b":7\r\n".to_vec()].concat()
}

/// A reply nested 200 deep (a Lua table) is forwarded intact, while other clients keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_reply_is_forwarded() {
    bounded(LIMIT, "nested reply", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut c = proxy.raw().await;
        let mut other = proxy.raw().await;
        for depth in [2, 200, 500] {
            assert_eq!(
                eval_nested(&mut redis.direct().await, depth).await,
                nested_reply(depth),
                "redis direct, depth {depth}"
            );
            assert_eq!(
                eval_nested(&mut c, depth).await,
                nested_reply(depth),
                "depth {depth}"
            );
            assert_eq!(other.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        }
    })
    .await
}

/// Redis happily returns a 1,100-deep reply (Lua); respipe's reply scanner stops at 1,024 levels.
/// Whatever respipe does with it, the asking client must get an answer, and the commands another
/// client has queued behind it on the same upstream connection must get their own replies, not
/// errors caused by somebody else's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_deeper_than_scanner_limit_does_not_hurt_others() {
    bounded(LIMIT, "reply deeper than the scanner's limit", async {
        let redis = RedisServer::start().await;
        let proxy =
            Proxy::ready_with(&redis, |c| c.batching.pool_size = 1.try_into().unwrap()).await;
        let mut c = proxy.raw().await;
        let mut other = proxy.raw().await;
        assert_eq!(other.cmd(&["SET", "o", "1"]).await, Reply::ok());
        let depth = 1100;
        c.send(&encode(&["EVAL", &nested_script(depth), "0"])).await;
        // One upstream connection: these GETs queue behind the EVAL (Redis takes a while for it).
        other.send(&encode(&["GET", "o"]).repeat(2000)).await;
        let mut first = [0u8; 1];
        let n = bounded(
            Duration::from_secs(10),
            "EVAL reply",
            c.stream.peek(&mut first),
        )
        .await
        .expect("peek EVAL reply");
        assert_eq!(n, 1, "EVAL: connection closed without a reply");
        let eval = if first[0] == b'*' {
            let mut got = vec![0u8; depth * 4 + 4];
            c.stream
                .read_exact(&mut got)
                .await
                .expect("read nested reply");
            assert_eq!(got, nested_reply(depth));
            "the nested reply".to_string()
        } else {
            format!("{:?}", c.read_reply().await)
        };
        let replies = bounded(
            Duration::from_secs(10),
            "other's pipeline",
            other.read_replies(2000),
        )
        .await;
        let bad: Vec<_> = replies.iter().filter(|r| **r != Reply::bulk("1")).collect();
        assert!(
            bad.is_empty(),
            "EVAL got {eval}; {} of the other client's 2000 GETs failed, first: {:?}",
            bad.len(),
            bad[0]
        );
        assert_eq!(eval, "the nested reply");
    })
    .await
}

/// A request announcing a 500 MB bulk (within the default 512 MB limit) and sending only 8 MB of it
/// must not make respipe allocate the announced size up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_length_is_not_allocated_up_front() {
    bounded(LIMIT, "announced length", async {
        let redis = RedisServer::start().await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &[]);
        let mut other = proxy.wait_pong().await;
        let before = proxy.rss_kib();
        let mut c = RawClient::connect(proxy.listen).await;
        c.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$524288000\r\n")
            .await;
        let chunk = vec![b'v'; 1024 * 1024];
        for _ in 0..8 {
            c.send(&chunk).await;
        }
        // The proxy has read what we sent once another client's command round-trips after it.
        assert_eq!(other.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        let peak = proxy.peak_rss_kib();
        eprintln!("announced 500 MB, sent 8 MB: respipe RSS {before} KiB before, peak {peak} KiB");
        assert!(
            peak < before + 64 * 1024,
            "respipe's peak RSS grew by {} KiB for an 8 MB partial request",
            peak - before
        );
        drop(c);
        proxy
            .wait_metric("respipe_client_connections", Duration::from_secs(10), |v| {
                v == 1.0
            })
            .await;
    })
    .await
}

/// A client pipelines GETs (1 kB values) as fast as it can and never reads a reply. respipe must
/// push back (stop reading it) or close it, keep its memory bounded, and keep serving another client
/// with low latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_bounded() {
    bounded(Duration::from_secs(90), "client that never reads", async {
        let redis = RedisServer::start().await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &[]);
        let mut other = proxy.wait_pong().await;
        assert_eq!(
            other.cmd(&["SET", "k", &"v".repeat(1024)]).await,
            Reply::ok()
        );
        let before = proxy.rss_kib();

        let flood_addr = proxy.listen;
        let written = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let flood = {
            let (written, stop) = (written.clone(), stop.clone());
            tokio::spawn(async move {
                let mut s = TcpStream::connect(flood_addr).await.unwrap();
                let one = encode(&["GET", "k"]);
                let chunk = one.repeat(64 * 1024 / one.len());
                let per_chunk = (chunk.len() / one.len()) as u64;
                // Up to 5M commands, or until a write stays blocked for 2 s (backpressure).
                while !stop.load(Ordering::Relaxed) && written.load(Ordering::Relaxed) < 5_000_000 {
                    match tokio::time::timeout(Duration::from_secs(2), s.write_all(&chunk)).await {
                        Ok(Ok(())) => written.fetch_add(per_chunk, Ordering::Relaxed),
                        Ok(Err(e)) => return format!("closed by respipe: {e}"),
                        Err(_) => return "blocked: respipe stopped reading".to_string(),
                    };
                }
                "wrote everything".to_string()
            })
        };
        // Meanwhile, the other client's latency.
        let mut worst = Duration::ZERO;
        let start = Instant::now();
        while !flood.is_finished() && start.elapsed() < Duration::from_secs(30) {
            let t = Instant::now();
            assert_eq!(
                other.cmd(&["GET", "k"]).await,
                Reply::bulk("v".repeat(1024))
            );
            worst = worst.max(t.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        let outcome = flood.await.unwrap();
        let peak = proxy.peak_rss_kib();
        eprintln!(
            "client that never reads: {} GETs sent, outcome: {outcome}; respipe RSS {before} KiB \
             before, peak {peak} KiB; other client's worst latency {worst:?}",
            written.load(Ordering::Relaxed)
        );
        assert_ne!(
            outcome, "wrote everything",
            "respipe read 5M commands it could not answer"
        );
        assert!(
            peak < before + 300 * 1024,
            "peak RSS {peak} KiB, before {before} KiB"
        );
        assert!(
            worst < Duration::from_secs(1),
            "other client's worst latency {worst:?}"
        );
        // The flooder is gone (dropped with its task): the connection gauge returns to 1.
        proxy
            .wait_metric("respipe_client_connections", Duration::from_secs(20), |v| {
                v == 1.0
            })
            .await;
        proxy
            .wait_metric("respipe_upstream_inflight", Duration::from_secs(20), |v| {
                v == 0.0
            })
            .await;
        assert_eq!(other.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

/// A client reads three 100k-element LRANGE replies (about 1.2 MB each) slowly, 16 kB every 2 ms:
/// it gets every byte right, respipe's memory stays bounded, another client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_of_big_replies() {
    bounded(Duration::from_secs(90), "slow consumer", async {
        let redis = RedisServer::start().await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &[]);
        let mut other = proxy.wait_pong().await;
        const N: usize = 100_000;
        let mut want = format!("*{N}\r\n").into_bytes();
        let mut push = format!("*{}\r\n$5\r\nRPUSH\r\n$4\r\nbig!\r\n", N + 2).into_bytes();
        for i in 0..N {
            let item = format!("$6\r\n{i:06}\r\n");
            want.extend_from_slice(item.as_bytes());
            push.extend_from_slice(item.as_bytes());
        }
        other.send(&push).await;
        assert_eq!(other.read_reply().await, Reply::Int(N as i64));
        let before = proxy.rss_kib();

        let addr = proxy.listen;
        let want_all = want.repeat(3);
        let slow = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&encode(&["LRANGE", "big!", "0", "-1"]).repeat(3))
                .await
                .unwrap();
            let mut got = Vec::with_capacity(want_all.len());
            let mut chunk = vec![0u8; 16 * 1024];
            while got.len() < want_all.len() {
                let n = s.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0, "closed after {} bytes", got.len());
                got.extend_from_slice(&chunk[..n]);
                // A slow reader, on purpose: not a synchronisation.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            got == want_all
        });
        let mut worst = Duration::ZERO;
        let mut served = 0;
        while !slow.is_finished() {
            let t = Instant::now();
            assert_eq!(other.cmd(&["LLEN", "big!"]).await, Reply::Int(N as i64));
            worst = worst.max(t.elapsed());
            served += 1;
        }
        assert!(
            slow.await.unwrap(),
            "the slow consumer's bytes differ from the list"
        );
        let peak = proxy.peak_rss_kib();
        eprintln!(
            "slow consumer: respipe RSS {before} KiB before, peak {peak} KiB; other client served \
             {served} commands meanwhile, worst latency {worst:?}"
        );
        assert!(
            served > 10,
            "the other client was served only {served} times"
        );
        assert!(
            worst < Duration::from_secs(1),
            "other client's worst latency {worst:?}"
        );
        assert!(
            peak < before + 300 * 1024,
            "peak RSS {peak} KiB, before {before} KiB"
        );
    })
    .await
}

/// `--max-clients 5`: the 6th connection gets Redis's error and is closed; once one leaves, a new
/// client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_flag() {
    bounded(LIMIT, "--max-clients 5", async {
        let redis = RedisServer::start().await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &["--max-clients", "5"]);
        let mut clients = vec![proxy.wait_pong().await];
        for _ in 1..5 {
            let mut c = RawClient::connect(proxy.listen).await;
            assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
            clients.push(c);
        }
        let mut sixth = RawClient::connect(proxy.listen).await;
        assert_eq!(
            sixth.read_reply().await,
            Reply::Error("ERR max number of clients reached".into())
        );
        sixth.expect_eof().await;
        assert!(
            proxy
                .metric("respipe_client_connections_rejected_total")
                .await
                >= 1.0
        );
        for c in &mut clients {
            assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        }
        clients.pop();
        proxy
            .wait_metric("respipe_client_connections", Duration::from_secs(10), |v| {
                v == 4.0
            })
            .await;
        let mut again = RawClient::connect(proxy.listen).await;
        assert_eq!(again.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

/// CPU time (user + system) the process has used, from `/proc/<pid>/stat`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// respipe started with only 64 file descriptors gets more connections than it can accept: accept
/// errors are logged and backed off (little CPU while the backlog stays full, no busy loop), the
/// clients it holds keep working, and once descriptors are free the waiting clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_backs_off() {
    use std::os::unix::process::CommandExt;
    bounded(LIMIT, "fd exhaustion", async {
        let redis = RedisServer::start().await;
        let mut cmd = common::respipe_command();
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &redis.addr().to_string(),
        ]);
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut bin = common::Binary::spawn(cmd);
        let listen: std::net::SocketAddr = bin.ready_field("listen").parse().unwrap();
        let pid = bin.child.id();
        let mut first = RawClient::connect(listen).await;
        assert_eq!(first.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        // 100 more connections: the kernel queues them, respipe runs out of descriptors.
        let mut waiting = Vec::new();
        for _ in 0..100 {
            waiting.push(TcpStream::connect(listen).await.unwrap());
        }
        bin.wait_line("accept failed", Duration::from_secs(10));
        // Measure over 2 s with nothing else to do while the descriptors stay exhausted (a window
        // for the measurement, not a synchronisation): a busy accept loop would take a whole core.
        let (t0, c0) = (Instant::now(), cpu_ticks(pid));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ticks = cpu_ticks(pid) - c0;
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu = ticks as f64 / hz / t0.elapsed().as_secs_f64();
        let failures = bin
            .seen
            .iter()
            .filter(|l| l.contains("accept failed"))
            .count();
        eprintln!(
            "fd exhaustion: respipe used {:.1}% of a core over 2 s with its accept queue full",
            cpu * 100.0
        );
        assert!(
            cpu < 0.1,
            "respipe busy-loops on accept errors: {:.0}% CPU",
            cpu * 100.0
        );
        assert!(failures >= 1);
        // The client it holds is still served.
        assert_eq!(first.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
        // Free the descriptors: the ones still queued get served.
        waiting.truncate(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = RawClient::try_connect(listen).await {
                if let Ok(Ok(Reply::Simple(s))) =
                    tokio::time::timeout(Duration::from_secs(2), c.try_cmd(&["PING"])).await
                {
                    assert_eq!(s, "PONG");
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new client served after descriptors freed"
            );
            tokio::time::sleep(common::POLL).await;
        }
    })
    .await
}
