//! The reply-integrity drill at a size CI can afford (the long run is `scripts/drill.sh`), and
//! 1,000 idle clients on the respipe binary with the memory each costs (10,000 in the script).

mod common;
#[path = "common/drill.rs"]
mod drill;
// `drill` reads replies with the harness's reader.
use common::wire;

use std::time::Duration;

use common::{bounded, free_port, BinProxy, RawClient, Reply};

/// 120 clients (40 pipelining 10-50 deep) for 12 s through the respipe binary while Redis is
/// SIGKILLed and restarted twice: 0 wrong values, 0 misroutes, 0 hangs, 0 dropped clients, and
/// service back within 2 s of each restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_integrity_drill() {
    bounded(Duration::from_secs(100), "reply-integrity drill", async {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = drill::RedisProc::start(free_port(), dir.path().to_path_buf()).await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &["--command-timeout", "3s"]);
        proxy.wait_pong().await;
        let cfg = drill::DrillConfig {
            clients: 120,
            pipelined: 40,
            duration: Duration::from_secs(12),
            kills: 2,
            shape: drill::ClientShape::plain(Duration::from_secs(8), 16),
        };
        let report = drill::run(proxy.listen, &mut redis, &cfg).await;
        eprintln!("{}", report.summary());
        let c = &report.counts;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        assert!(report.clean(), "{}", report.summary());
        assert!(
            get(&c.err) > 0,
            "no command failed: did the kills happen under load?"
        );
        assert!(
            get(&c.ok) > 10_000,
            "too little load to mean anything: {}",
            report.summary()
        );
        assert_eq!(report.recovery.len(), 2);
        for r in &report.recovery {
            assert!(*r < Duration::from_secs(2), "recovery took {r:?}");
        }
    })
    .await
}

/// 1,000 idle clients on the respipe binary: all accepted, the RSS each costs is printed and
/// bounded (no read buffer is held while idle), and with them connected 50 active clients run
/// commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_idle_clients() {
    bounded(Duration::from_secs(60), "1,000 idle clients", async {
        const IDLE: usize = 1_000;
        let nofile = drill::raise_nofile();
        assert!(nofile as usize > 2 * IDLE + 200, "RLIMIT_NOFILE {nofile} too small");
        let redis = common::RedisServer::start().await;
        let proxy = BinProxy::spawn(&redis.addr().to_string(), &[]);
        proxy.wait_pong().await;
        let before = proxy.rss_kib();
        // Half of them sent one PING (their buffer went back after the reply), half never sent a
        // byte (a new socket reports readiness once, and finding nothing must not keep a buffer).
        let mut idle = drill::open_idle(proxy.listen, IDLE / 2).await;
        for i in 0..IDLE / 2 {
            let s = tokio::net::TcpStream::connect(proxy.listen).await;
            idle.push(s.unwrap_or_else(|e| panic!("silent connection {i}: {e}")));
        }
        proxy
            .wait_metric("respipe_client_connections", Duration::from_secs(10), |v| v >= IDLE as f64)
            .await;
        let after = proxy.rss_kib();
        let per_client = (after.saturating_sub(before) * 1024) as f64 / IDLE as f64;
        eprintln!(
            "{IDLE} idle clients: respipe RSS {before} KiB -> {after} KiB, {per_client:.0} bytes per idle client"
        );
        // An idle client holds no read buffer (4 KiB each would show), only its session task.
        assert!(per_client < 4096.0, "{per_client:.0} bytes per idle client");
        let mut active = Vec::new();
        for i in 0..50 {
            let addr = proxy.listen;
            active.push(tokio::spawn(async move {
                let mut c = RawClient::connect(addr).await;
                for j in 0..100 {
                    let v = format!("{i}:{j}");
                    assert_eq!(c.cmd(&["SET", &format!("a{i}"), &v]).await, Reply::ok());
                    assert_eq!(c.cmd(&["GET", &format!("a{i}")]).await, Reply::bulk(&v));
                }
            }));
        }
        for a in active {
            a.await.unwrap();
        }
        let peak = proxy.peak_rss_kib();
        eprintln!("{IDLE} idle clients plus load: respipe peak RSS {peak} KiB");
        drop(idle);
        proxy
            .wait_metric("respipe_client_connections", Duration::from_secs(20), |v| v <= 1.0)
            .await;
    })
    .await
}
