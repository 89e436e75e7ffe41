//! Invariants 1 and 2 under load: every reply reaches the client that sent the command, in the
//! client's order, with many concurrent clients, deep pipelines, and small batches; and batching is
//! real (several commands per upstream read).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{bounded, encode, Proxy, RawClient, RedisServer, Reply, ReplyReader};

/// 250 clients on their own sockets, 200 SET/GET rounds each, values naming client and round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_their_own_replies() {
    bounded(Duration::from_secs(240), "250 concurrent clients", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let wrong = Arc::new(AtomicU64::new(0));
        let ok = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for id in 0..250u32 {
            // Half use the redis crate (its own Client, so its own socket), half raw sockets.
            let use_crate = id % 2 == 0;
            let mut con = if use_crate { Some(proxy.redis().await) } else { None };
            let mut raw = if use_crate { None } else { Some(proxy.raw().await) };
            let (wrong, ok) = (wrong.clone(), ok.clone());
            tasks.push(tokio::spawn(async move {
                for seq in 0..200u32 {
                    let key = format!("k:{id}:{seq}");
                    let value = format!("v:{id}:{seq}:{}", "x".repeat((seq % 13) as usize * 7));
                    let (set, got) = if let Some(con) = con.as_mut() {
                        let set: redis::RedisResult<String> =
                            redis::cmd("SET").arg(&key).arg(&value).query_async(con).await;
                        let got: redis::RedisResult<Option<String>> =
                            redis::cmd("GET").arg(&key).query_async(con).await;
                        (
                            set.map_err(|e| e.to_string()).map(|s| s == "OK"),
                            got.map_err(|e| e.to_string()).map(|g| g.map(String::into_bytes)),
                        )
                    } else {
                        let raw = raw.as_mut().unwrap();
                        let set = raw.cmd(&["SET", &key, &value]).await;
                        let got = raw.cmd(&["GET", &key]).await;
                        (
                            Ok(set == Reply::ok()),
                            match got {
                                Reply::Bulk(b) => Ok(b),
                                other => Err(format!("{other:?}")),
                            },
                        )
                    };
                    let good = set == Ok(true) && got.as_ref().ok().and_then(|g| g.as_deref()) == Some(value.as_bytes());
                    if good {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        if wrong.fetch_add(1, Ordering::Relaxed) < 10 {
                            eprintln!(
                                "client {id} round {seq}: SET -> {set:?}, GET -> {:?} (expected {value:?})",
                                got.map(|g| g.map(|b| String::from_utf8_lossy(&b).into_owned()))
                            );
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task panicked");
        }
        let (ok, wrong) = (ok.load(Ordering::Relaxed), wrong.load(Ordering::Relaxed));
        eprintln!("integrity: {ok} good rounds, {wrong} wrong");
        assert_eq!(wrong, 0, "misrouted or wrong replies");
        assert_eq!(ok, 250 * 200);
    })
    .await
}

/// One client writes 10,000 commands in one go and gets 10,000 replies in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_pipeline_in_one_write() {
    bounded(Duration::from_secs(120), "10k pipeline", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let raw = proxy.raw().await;
        let (req, want) = set_get_pipeline("p", 5_000);
        // One write_all of all 10,000 commands.
        let write = req.len();
        let got = write_while_reading(raw, req, write, want.len()).await;
        check_in_order("pipeline", &got, &want);
    })
    .await
}

/// Several pipelining clients at once, each with its own keys and counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelining_clients() {
    bounded(Duration::from_secs(180), "concurrent pipelines", async {
        let redis = RedisServer::start().await;
        run_pipelines(&redis, |_| {}, 8, 3_000, "default").await;
    })
    .await
}

/// The same with tiny batch caps, so every client's run is split over many upstream writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_with_tiny_batches() {
    bounded(Duration::from_secs(180), "tiny batches", async {
        let redis = RedisServer::start().await;
        run_pipelines(
            &redis,
            |c| {
                c.batching.max_batch_commands = 3.try_into().unwrap();
                c.batching.max_batch_bytes = 64.try_into().unwrap();
                c.batching.pool_size = 1.try_into().unwrap();
                c.limits.max_client_inflight = 7.try_into().unwrap();
                c.batching.max_upstream_inflight = 5.try_into().unwrap();
            },
            6,
            2_000,
            "tiny",
        )
        .await;
    })
    .await
}

/// With 100 sequential clients on one upstream connection, Redis sees several commands per read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_is_real() {
    bounded(Duration::from_secs(120), "batching", async {
        let redis = RedisServer::start().await;
        let proxy =
            Proxy::ready_with(&redis, |c| c.batching.pool_size = 1.try_into().unwrap()).await;
        let mut clients = Vec::new();
        for _ in 0..100 {
            clients.push(proxy.raw().await);
        }
        let cmds0 = redis.info_stat("total_commands_processed").await;
        let reads0 = redis.info_stat("total_reads_processed").await;
        let mut tasks = Vec::new();
        for (id, mut c) in clients.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    let v = format!("{id}:{i}");
                    assert_eq!(c.cmd(&["SET", &format!("b:{id}"), &v]).await, Reply::ok());
                    assert_eq!(c.cmd(&["GET", &format!("b:{id}")]).await, Reply::bulk(&v));
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        let cmds = redis.info_stat("total_commands_processed").await - cmds0;
        let reads = redis.info_stat("total_reads_processed").await - reads0;
        let ratio = cmds as f64 / reads as f64;
        eprintln!("batching: {cmds} commands in {reads} upstream reads = {ratio:.2} per read");
        // For comparison, the same load straight to Redis (printed, not asserted).
        let (dc0, dr0) = (
            redis.info_stat("total_commands_processed").await,
            redis.info_stat("total_reads_processed").await,
        );
        let mut tasks = Vec::new();
        for id in 0..100 {
            let mut c = redis.direct().await;
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    assert_eq!(
                        c.cmd(&["SET", &format!("d:{id}"), &i.to_string()]).await,
                        Reply::ok()
                    );
                }
            }));
        }
        for t in tasks {
            t.await.expect("direct client task");
        }
        let dc = redis.info_stat("total_commands_processed").await - dc0;
        let dr = redis.info_stat("total_reads_processed").await - dr0;
        eprintln!(
            "direct: {dc} commands in {dr} reads = {:.2} per read",
            dc as f64 / dr as f64
        );
        assert!(cmds >= 20_000, "Redis saw only {cmds} commands");
        assert!(
            ratio > 1.5,
            "only {ratio:.2} commands per upstream read: no batching"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------

/// `SET prefix:i v:i`, `GET prefix:i` for i in 0..n, and the replies they should get.
fn set_get_pipeline(prefix: &str, n: usize) -> (Vec<u8>, Vec<Reply>) {
    let mut req = Vec::new();
    let mut want = Vec::new();
    for i in 0..n {
        let (k, v) = (format!("{prefix}:k:{i}"), format!("{prefix}:v:{i}"));
        req.extend(encode(&["SET", &k, &v]));
        want.push(Reply::ok());
        req.extend(encode(&["GET", &k]));
        want.push(Reply::bulk(v));
    }
    (req, want)
}

fn check_in_order(what: &str, got: &[Reply], want: &[Reply]) {
    assert_eq!(got.len(), want.len(), "{what}: reply count");
    let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    if let Some(&first) = bad.first() {
        panic!(
            "{what}: {} of {} replies wrong; first at {first}: got {:?}, expected {:?}",
            bad.len(),
            want.len(),
            got[first],
            want[first]
        );
    }
}

async fn run_pipelines(
    redis: &RedisServer,
    tweak: impl FnOnce(&mut respipe::Config),
    clients: usize,
    rounds: usize,
    tag: &str,
) {
    let proxy = Proxy::ready_with(redis, tweak).await;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let raw = RawClient::connect(proxy.addr()).await;
        let tag = format!("{tag}{c}");
        tasks.push(tokio::spawn(async move {
            // Interleave SET/GET pairs with INCR on the client's own counter.
            let (mut req, mut want) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                let (k, v) = (
                    format!("{tag}:k:{i}"),
                    format!("{tag}:v:{i}:{}", "y".repeat(i % 40)),
                );
                req.extend(encode(&["SET", &k, &v]));
                want.push(Reply::ok());
                req.extend(encode(&["INCR", &format!("{tag}:ctr")]));
                want.push(Reply::Int(i as i64 + 1));
                req.extend(encode(&["GET", &k]));
                want.push(Reply::bulk(v));
            }
            // Several writes of odd sizes, so frames straddle reads.
            let got = write_while_reading(raw, req, 7_919, want.len()).await;
            check_in_order(&tag, &got, &want);
        }));
    }
    for t in tasks {
        t.await.expect("pipelining client");
    }
}

/// Writes `req` in `write`-byte pieces on its own task while reading `n` replies, as a pipelining
/// client must (the replies would otherwise fill the socket buffers); returns the replies.
async fn write_while_reading(raw: RawClient, req: Vec<u8>, write: usize, n: usize) -> Vec<Reply> {
    let (mut rd, mut wr) = raw.stream.into_split();
    let w = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in req.chunks(write) {
            wr.write_all(chunk).await.unwrap();
        }
        wr
    });
    let mut reader = ReplyReader::default();
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        match reader.read_frame(&mut rd).await.expect("valid RESP") {
            Some((reply, _)) => got.push(reply),
            None => panic!("EOF after {} of {n} replies", got.len()),
        }
    }
    let _wr = w.await.unwrap();
    got
}

/// Invariant 4: clients that vanish with replies in flight cost nothing and disturb no one. Clients
/// write deep pipelines of large replies and close at once, while another client on the same
/// upstream connection checks every reply it gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_do_not_disturb_others() {
    bounded(Duration::from_secs(120), "vanishing clients", async {
        let redis = RedisServer::start().await;
        let proxy =
            Proxy::ready_with(&redis, |c| c.batching.pool_size = 1.try_into().unwrap()).await;
        let big = "z".repeat(32 * 1024);
        assert_eq!(
            proxy.raw().await.cmd(&["SET", "big", &big]).await,
            Reply::ok()
        );
        let addr = proxy.addr();
        let vanishing = tokio::spawn(async move {
            for round in 0..30 {
                let mut c = RawClient::connect(addr).await;
                let mut req = Vec::new();
                for i in 0..300 {
                    req.extend(encode(&["GET", "big"]));
                    req.extend(encode(&["SET", &format!("gone:{round}:{i}"), "x"]));
                }
                c.send(&req).await;
                drop(c); // closes with ~600 replies owed
            }
        });
        let mut checker = proxy.raw().await;
        let mut rounds = 0u32;
        while !vanishing.is_finished() || rounds < 200 {
            let v = format!("mine:{rounds}");
            assert_eq!(
                checker.cmd(&["SET", "mine", &v]).await,
                Reply::ok(),
                "round {rounds}"
            );
            assert_eq!(
                checker.cmd(&["GET", "mine"]).await,
                Reply::bulk(&v),
                "round {rounds}"
            );
            assert_eq!(
                checker.cmd(&["STRLEN", "big"]).await,
                Reply::Int(32 * 1024),
                "round {rounds}"
            );
            rounds += 1;
        }
        vanishing.await.expect("vanishing clients");
        // The proxy is still healthy for new clients.
        let mut fresh = proxy.raw().await;
        assert_eq!(
            fresh.cmd(&["GET", "mine"]).await,
            Reply::bulk(format!("mine:{}", rounds - 1))
        );
    })
    .await
}
