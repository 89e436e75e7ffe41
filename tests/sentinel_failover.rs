//! Issue 13, failover under load: respipe in front of a primary, 2 replicas and 3 sentinels, with
//! the integrity drill's 200 clients (60 pipelining 10 to 50 deep, values carrying their writer's
//! id) running through it while the primary is replaced, by `SENTINEL FAILOVER` or by a SIGKILL.
//! Every reply is checked: none wrong, none another client's, none late, no client dropped; the
//! only errors are explicit ones (respipe's `-ERR respipe: ...`, or Redis's `-READONLY` from the
//! demoted primary), counted and printed; writes land on the new primary soon after the
//! promotion, measured and printed.
//!
//! A write the old primary acknowledged after the promotion is lost by Redis itself (replication
//! is asynchronous, and the old primary's data is replaced when it is made a replica): the drill
//! counts the GET that finds nothing as `nil`, not as wrong, and the summary says how many.

mod common;
#[path = "common/drill.rs"]
mod drill;
// `drill` reads replies with the harness's reader.
use common::wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::sentinel::{Failover, Pending, SentinelOptions, Sentinels};
use common::{bounded, RawClient, Reply, POLL};

/// Bound of a test with a drill and a failover.
const LIMIT: Duration = Duration::from_secs(90);

/// How soon after the promotion (a replica says `ROLE` master) writes must land on it (the issue's
/// requirement for `SENTINEL FAILOVER`).
const RESUME: Duration = Duration::from_secs(2);

/// `sentinel down-after-milliseconds`: a SIGKILLed primary is failed over after this (plus the
/// sentinels' election), and writes must resume within it plus [`RESUME`] of the kill.
const DOWN_AFTER_MS: u64 = 2000;

/// Load before the failover, so it lands in the middle of the drill.
const WARMUP: Duration = Duration::from_secs(3);

fn count(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// 1 primary, 2 replicas, 3 sentinels (quorum 2), down after [`DOWN_AFTER_MS`].
async fn start() -> Sentinels {
    Sentinels::start(SentinelOptions {
        down_after_ms: DOWN_AFTER_MS,
        ..SentinelOptions::default()
    })
    .await
}

/// The drill's load for `duration`: 200 clients, 60 pipelining; respipe's errors and Redis's
/// `READONLY` count as explicit failures.
fn drill_config(duration: Duration) -> drill::DrillConfig {
    let mut cfg = drill::DrillConfig::spread(duration, 0, Vec::new(), "ERR respipe:");
    cfg.shape.other_failures = vec!["READONLY".to_owned()];
    cfg
}

/// What one failover cost.
#[derive(Debug)]
struct Recovery {
    failover: Failover,
    /// When the failover was asked for, or the primary killed.
    began: Instant,
    /// When a write through respipe was first found on the new primary.
    resumed: Instant,
}

impl Recovery {
    /// From the promotion to the first write on the new primary.
    fn after_promotion(&self) -> Duration {
        self.resumed
            .saturating_duration_since(self.failover.promoted)
    }

    /// From the failover's start (the kill) to the first write on the new primary.
    fn after_start(&self) -> Duration {
        self.resumed.saturating_duration_since(self.began)
    }

    fn line(&self, how: &str) -> String {
        format!(
            "failover ({how}): node {} -> node {}, promoted {} ms after the start, writes on the new primary {} ms after the promotion ({} ms after the start)",
            self.failover.old,
            self.failover.new,
            (self.failover.promoted - self.began).as_millis(),
            self.after_promotion().as_millis(),
            self.after_start().as_millis()
        )
    }
}

/// Waits for the promotion of the failover `pending` started, then writes through respipe at
/// `proxy` (a fresh key every [`POLL`]) until one lands on the promoted node; returns when. Fails
/// the test if none does within 30 s.
async fn follow(set: &Sentinels, proxy: SocketAddr, pending: Pending) -> Recovery {
    let failover = set.wait_promoted(&pending).await;
    let mut c = RawClient::connect(proxy).await;
    let mut n = 0u64;
    let resumed = loop {
        n += 1;
        let key = format!("resume-probe:{n}");
        let written = tokio::time::timeout(Duration::from_secs(2), c.try_cmd(&["SET", &key, "1"]))
            .await
            .ok();
        match written {
            Some(Ok(r)) if r == Reply::ok() => {
                let on_new = set.try_cmd(failover.new, &["GET", &key]).await;
                if on_new == Some(Reply::bulk("1")) {
                    break Instant::now();
                }
            }
            Some(Ok(_)) => {}
            // Closed or stuck: start again on a fresh connection.
            _ => c = RawClient::connect(proxy).await,
        }
        assert!(
            failover.promoted.elapsed() < Duration::from_secs(30),
            "no write reached the new primary (node {}) within 30 s of its promotion",
            failover.new
        );
        tokio::time::sleep(POLL).await;
    };
    set.wait_named(failover.new).await;
    Recovery {
        failover,
        began: pending.at,
        resumed,
    }
}

/// The drill `cfg` through respipe at `proxy` while `chaos` runs; both results.
async fn under_load<T>(
    proxy: SocketAddr,
    cfg: &drill::DrillConfig,
    chaos: impl std::future::Future<Output = T>,
) -> (drill::DrillReport, T) {
    let mut no_kill = drill::NoKill;
    tokio::join!(drill::run(proxy, &mut no_kill, cfg), chaos)
}

/// 0 wrong, 0 misrouted, 0 hung, 0 dropped clients, a real load; prints the summary and the
/// explicit failures.
#[track_caller]
fn assert_clean(report: &drill::DrillReport) {
    eprintln!("{}", report.summary());
    eprintln!("drill errors: {}", report.errors());
    assert!(report.clean(), "{}", report.summary());
    let ok = count(&report.counts.ok);
    assert!(ok > 5_000, "too little load: {}", report.summary());
}

/// `SENTINEL FAILOVER` under the drill's load: every reply right or an explicit failure, no
/// client dropped or hung; writes land on the new primary within 2 s of its promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load() {
    bounded(LIMIT, "SENTINEL FAILOVER under load", async {
        drill::raise_nofile();
        let set = start().await;
        let proxy = set.respipe(&[]).await;
        let cfg = drill_config(Duration::from_secs(12));
        let chaos = async {
            tokio::time::sleep(WARMUP).await;
            let pending = set.begin_failover().await;
            follow(&set, proxy.listen, pending).await
        };
        let (report, recovery) = under_load(proxy.listen, &cfg, chaos).await;
        eprintln!("{}", recovery.line("SENTINEL FAILOVER"));
        assert_clean(&report);
        assert!(
            recovery.after_promotion() < RESUME,
            "{}",
            recovery.line("SENTINEL FAILOVER")
        );
    })
    .await
}

/// The primary SIGKILLed under the drill's load: every reply right or an explicit failure (the
/// commands in flight on it, and those sent while no primary serves), no client dropped or hung;
/// writes land on the new primary within `down-after-milliseconds` + 2 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_under_load() {
    bounded(LIMIT, "primary killed under load", async {
        drill::raise_nofile();
        let mut set = start().await;
        let proxy = set.respipe(&[]).await;
        let cfg = drill_config(Duration::from_secs(16));
        let chaos = async {
            tokio::time::sleep(WARMUP).await;
            let pending = set.kill_primary().await;
            follow(&set, proxy.listen, pending).await
        };
        let (report, recovery) = under_load(proxy.listen, &cfg, chaos).await;
        eprintln!("{}", recovery.line("SIGKILL"));
        assert_clean(&report);
        assert!(
            count(&report.counts.err) > 0,
            "the kill hit no command: {}",
            report.summary()
        );
        let limit = Duration::from_millis(DOWN_AFTER_MS) + RESUME;
        assert!(
            recovery.after_start() < limit,
            "{} (limit {limit:?})",
            recovery.line("SIGKILL")
        );
    })
    .await
}
