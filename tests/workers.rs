//! Several workers (`workers`): the integrity drill with 2 and 4 workers, clients spread evenly
//! and seen (and killed) across workers, process-wide limits, and reload and drain reaching every
//! worker. Every other test file runs with `RESPIPE_WORKERS=2` as well (`scripts/test.sh`).

mod common;
#[path = "common/drill.rs"]
mod drill;
// `drill` reads replies with the harness's reader.
use common::wire;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{
    bounded, encode, free_port, http_get, BinProxy, Proxy, RawClient, RedisServer, Reply, POLL,
};

/// The samples of `name` on `/metrics` that carry `worker="N"`, by worker.
async fn per_worker(proxy: &BinProxy, name: &str, workers: usize) -> Vec<f64> {
    let (status, body) = http_get(&proxy.admin, "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200);
    (0..workers)
        .map(|w| {
            let label = format!("worker=\"{w}\"");
            body.lines()
                .filter(|l| l.starts_with(name) && l.contains(&label))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        })
        .collect()
}

/// 200 clients (60 of them pipelining 10-50 deep) for 6 s through the binary with 2 and then 4
/// workers, Redis SIGKILLed and restarted once: 0 wrong values, misroutes, hangs or dropped
/// clients, and every worker carried part of the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integrity_drill_with_2_and_4_workers() {
    bounded(Duration::from_secs(150), "drill with workers", async {
        for workers in [2usize, 4] {
            let dir = tempfile::tempdir().unwrap();
            let mut redis = drill::RedisProc::start(free_port(), dir.path().to_path_buf()).await;
            let n = workers.to_string();
            let proxy = BinProxy::spawn(
                &redis.addr().to_string(),
                &["--command-timeout", "3s", "--workers", &n],
            );
            proxy.wait_pong().await;
            let cfg = drill::DrillConfig {
                clients: 200,
                pipelined: 60,
                duration: Duration::from_secs(6),
                kills: 1,
                shape: drill::ClientShape::plain(Duration::from_secs(8), 16),
            };
            let report = drill::run(proxy.listen, &mut redis, &cfg).await;
            eprintln!("workers = {workers}: {}", report.summary());
            assert!(report.clean(), "workers = {workers}: {}", report.summary());
            assert!(
                report.counts.ok.load(Ordering::Relaxed) > 5_000,
                "too little load to mean anything: {}",
                report.summary()
            );
            let forwarded = per_worker(
                &proxy,
                "respipe_commands_total{outcome=\"forwarded\"",
                workers,
            )
            .await;
            assert!(
                forwarded.iter().all(|&f| f > 500.0),
                "workers = {workers}: commands forwarded per worker {forwarded:?}"
            );
        }
    })
    .await
}

/// 40 clients on 4 workers: 10 each; `CLIENT LIST` on any of them lists all 40, and `CLIENT KILL`
/// closes a client that another worker serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_evenly_and_are_seen_across_workers() {
    bounded(Duration::from_secs(60), "spread", async {
        let redis = RedisServer::start().await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &["--workers", "4"]);
        let mut clients = Vec::new();
        for _ in 0..40 {
            let mut c = RawClient::connect(proxy.listen).await;
            assert_eq!(c.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
            clients.push(c);
        }
        assert_eq!(
            per_worker(&proxy, "respipe_worker_clients", 4).await,
            vec![10.0; 4]
        );
        let Reply::Bulk(Some(list)) = clients[0].cmd(&["CLIENT", "LIST"]).await else {
            panic!("CLIENT LIST")
        };
        assert_eq!(String::from_utf8_lossy(&list).lines().count(), 40);
        // Clients are handed out in turn while all have the same count: 0 and 1 are on two
        // different workers.
        let Reply::Int(id) = clients[1].cmd(&["CLIENT", "ID"]).await else {
            panic!("CLIENT ID")
        };
        let id = id.to_string();
        assert_eq!(
            clients[0].cmd(&["CLIENT", "KILL", "ID", &id]).await,
            Reply::Int(1)
        );
        bounded(
            Duration::from_secs(5),
            "killed client closed",
            clients[1].expect_eof(),
        )
        .await;
        // The worker that served it counts one client less.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let counts = per_worker(&proxy, "respipe_worker_clients", 4).await;
            if counts.iter().sum::<f64>() == 39.0 {
                break;
            }
            assert!(Instant::now() < deadline, "worker clients {counts:?}");
            tokio::time::sleep(POLL).await;
        }
    })
    .await
}

/// `max_clients`, `max_pools` and `max_leases` hold for the process, not per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_process_wide() {
    bounded(Duration::from_secs(60), "limits", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready_with(&redis, |c| {
            c.batching.workers = 2.try_into().unwrap();
            c.listen.max_clients = 4.try_into().unwrap();
            c.batching.max_pools = 2.try_into().unwrap();
            c.leases.max_leases = 1.try_into().unwrap();
        })
        .await;
        // Four clients: two on each worker (they alternate while the counts are equal).
        let mut c = Vec::new();
        for _ in 0..4 {
            let mut client = proxy.raw().await;
            assert_eq!(client.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
            c.push(client);
        }
        let mut fifth = proxy.raw().await;
        match fifth.cmd(&["PING"]).await {
            Reply::Error(e) => assert!(e.contains("max number of clients reached"), "{e}"),
            other => panic!("fifth client: {other:?}"),
        }
        // One lease: a transaction on worker 0 holds it; worker 1 cannot have another.
        assert_eq!(c[2].cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(
            c[2].cmd(&["INCR", "n"]).await,
            Reply::Simple("QUEUED".into())
        );
        match c[3].cmd(&["MULTI"]).await {
            Reply::Error(e) => assert!(e.contains("max_leases=1"), "{e}"),
            other => panic!("a second lease: {other:?}"),
        }
        assert_eq!(
            c[2].cmd(&["EXEC"]).await,
            Reply::Array(Some(vec![Reply::Int(1)]))
        );
        // The pool of db 1, started by worker 0's client, is the second of 2; worker 1's client
        // shares the state; db 2 would be a third.
        for client in &mut c[..2] {
            assert_eq!(client.cmd(&["SELECT", "1"]).await, Reply::ok());
            assert_eq!(client.cmd(&["SET", "k", "1"]).await, Reply::ok());
        }
        let selected = c[1].cmd(&["SELECT", "2"]).await;
        let set = c[1].cmd(&["SET", "k", "2"]).await;
        match (&selected, &set) {
            (Reply::Error(e), _) | (_, Reply::Error(e)) => {
                assert!(e.contains("max_pools=2"), "{e}")
            }
            _ => panic!("SELECT 2: {selected:?}, SET: {set:?}"),
        }
        proxy.shutdown().await;
    })
    .await
}

fn write_config(path: &Path, upstream: SocketAddr) {
    let text = format!(
        "upstream = \"{upstream}\"\nworkers = 4\ndrain_timeout = \"20s\"\ncommand_timeout = \"20s\"\n"
    );
    // Write beside and rename, as editors and ConfigMaps do: the watcher never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

/// The Redis port `client`'s commands reach (`INFO server`, forwarded).
async fn answering_port(client: &mut RawClient) -> u16 {
    let Reply::Bulk(Some(info)) = client.cmd(&["INFO", "server"]).await else {
        panic!("INFO server")
    };
    let info = String::from_utf8_lossy(&info).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("tcp_port:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tcp_port in {info}"))
}

/// With 4 workers: a reload of the upstream moves the clients of every worker to the new server,
/// and SIGTERM lets every worker's in-flight commands finish before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_and_drain_reach_every_worker() {
    bounded(Duration::from_secs(90), "reload and drain", async {
        let (a, b) = (RedisServer::start().await, RedisServer::start().await);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("respipe.toml");
        write_config(&path, a.addr());
        let mut proxy = BinProxy::spawn_with(&["--config", path.to_str().unwrap()]);
        let mut clients = Vec::new();
        for _ in 0..8 {
            let mut c = RawClient::connect(proxy.listen).await;
            assert_eq!(answering_port(&mut c).await, a.port());
            clients.push(c);
        }

        write_config(&path, b.addr());
        proxy.bin.signal(libc::SIGHUP);
        for c in clients.iter_mut() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while answering_port(c).await != b.port() {
                assert!(
                    Instant::now() < deadline,
                    "a client stayed on the old upstream"
                );
                tokio::time::sleep(POLL).await;
            }
        }

        // Every client's command in flight on a stopped Redis, then SIGTERM.
        b.signal(libc::SIGSTOP);
        for c in clients.iter_mut() {
            c.send(&encode(&["INCR", "drained"])).await;
        }
        let limit = Duration::from_secs(10);
        proxy
            .wait_metric("respipe_upstream_inflight", limit, |n| n >= 8.0)
            .await;
        proxy.bin.signal(libc::SIGTERM);
        proxy
            .bin
            .wait_line("shutdown requested", Duration::from_secs(5));
        b.signal(libc::SIGCONT);
        let mut got = Vec::new();
        for c in clients.iter_mut() {
            match bounded(Duration::from_secs(10), "drained reply", c.read_reply()).await {
                Reply::Int(n) => got.push(n),
                other => panic!("drained reply: {other:?}"),
            }
            bounded(
                Duration::from_secs(10),
                "closed after the drain",
                c.expect_eof(),
            )
            .await;
        }
        got.sort_unstable();
        assert_eq!(got, (1..=8).collect::<Vec<i64>>());
        let status = proxy.bin.wait_exit(Duration::from_secs(20));
        assert!(status.success(), "respipe exited with {status}");
    })
    .await
}
