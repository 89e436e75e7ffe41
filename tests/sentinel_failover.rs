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
//!
//! `scripts/drill.sh --sentinel` runs [`repeated_failovers_under_load`] (ignored here) for longer,
//! with more rounds.

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

/// 1 primary, 2 replicas, 3 sentinels (quorum 2), down after [`DOWN_AFTER_MS`]. The drill
/// writes a fresh key per command (hundreds of MB a minute): the data nodes keep the 128 MB most
/// recently used (a drill client reads its key right after writing it, never again), and the
/// replicas' output buffers are unlimited, so a replica that must resync in full (a demoted or a
/// restarted primary) catches up under that load instead of being cut off and starting over.
async fn start() -> Sentinels {
    let redis_args = [
        "--maxmemory",
        "128mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--client-output-buffer-limit",
        "replica",
        "0",
        "0",
        "0",
    ];
    Sentinels::start(SentinelOptions {
        down_after_ms: DOWN_AFTER_MS,
        redis_args: redis_args.map(str::to_owned).to_vec(),
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

/// How the primary is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// `SENTINEL FAILOVER`: the replica is promoted at once, the old primary demoted later.
    Asked,
    /// SIGKILL: the sentinels see it down after `down-after-milliseconds`, elect a leader and
    /// promote a replica.
    Killed,
}

impl How {
    fn name(self) -> &'static str {
        match self {
            How::Asked => "SENTINEL FAILOVER",
            How::Killed => "SIGKILL",
        }
    }

    /// The bound: from the promotion (`Asked`) or the kill (`Killed`) to the first write
    /// on the new primary.
    fn limit(self) -> Duration {
        match self {
            How::Asked => RESUME,
            How::Killed => Duration::from_millis(DOWN_AFTER_MS) + RESUME,
        }
    }
}

/// What one failover cost.
#[derive(Debug)]
struct Recovery {
    how: How,
    failover: Failover,
    /// When the failover was asked for, or the primary killed.
    began: Instant,
    /// When a write through respipe was first found on the new primary.
    resumed: Instant,
}

impl Recovery {
    /// What [`How::limit`] bounds: from the promotion, or from the kill, to the first write on the
    /// new primary.
    fn recovery(&self) -> Duration {
        let from = match self.how {
            How::Asked => self.failover.promoted,
            How::Killed => self.began,
        };
        self.resumed.saturating_duration_since(from)
    }

    /// True if writes resumed within the bound.
    fn in_time(&self) -> bool {
        self.recovery() < self.how.limit()
    }

    /// `failover (HOW): node A -> node B, promoted .. ms after the start, writes on the new
    /// primary .. ms after the promotion (.. ms after the start)`.
    fn line(&self) -> String {
        let ms = |from: Instant| self.resumed.saturating_duration_since(from).as_millis();
        format!(
            "failover ({}): node {} -> node {}, promoted {} ms after the start, writes on the new primary {} ms after the promotion ({} ms after the start)",
            self.how.name(),
            self.failover.old,
            self.failover.new,
            (self.failover.promoted - self.began).as_millis(),
            ms(self.failover.promoted),
            ms(self.began)
        )
    }
}

/// Replaces the primary `how` says, then measures until writes through respipe at `proxy` land
/// on the new one ([`follow`]).
async fn fail_over(set: &mut Sentinels, proxy: SocketAddr, how: How) -> Recovery {
    let pending = match how {
        How::Asked => set.begin_failover().await,
        How::Killed => set.kill_primary().await,
    };
    follow(set, proxy, pending, how).await
}

/// Waits for the promotion of the failover `pending` started, then writes through respipe at
/// `proxy` (a fresh key every [`POLL`]) until one lands on the promoted node; returns when. Fails
/// the test if none does within 30 s.
async fn follow(set: &Sentinels, proxy: SocketAddr, pending: Pending, how: How) -> Recovery {
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
        how,
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

/// 0 wrong, 0 misrouted, 0 hung, 0 dropped clients, a real load, and errors only for commands
/// that were in flight on the old primary (none "not sent": commands that arrive while no
/// primary is reachable wait for the new one, never "upstream unavailable ... not sent"); prints the summary and the explicit failures.
#[track_caller]
fn assert_clean(report: &drill::DrillReport) {
    eprintln!("{}", report.summary());
    eprintln!("drill errors: {}", report.errors());
    assert!(report.clean(), "{}", report.summary());
    assert!(
        !report.errors().contains("upstream unavailable"),
        "commands failed that were never in flight: {}",
        report.errors()
    );
    let ok = count(&report.counts.ok);
    assert!(ok > 5_000, "too little load: {}", report.summary());
}

/// One failover (`how`) after [`WARMUP`] of a `seconds`-long drill: every reply right or an
/// explicit failure, no client dropped or hung, writes on the new primary in time.
async fn one_failover_under_load(how: How, seconds: u64) {
    drill::raise_nofile();
    let mut set = start().await;
    let proxy = set.respipe(&[]).await;
    let cfg = drill_config(Duration::from_secs(seconds));
    let chaos = async {
        tokio::time::sleep(WARMUP).await;
        fail_over(&mut set, proxy.listen, how).await
    };
    let (report, recovery) = under_load(proxy.listen, &cfg, chaos).await;
    eprintln!("{}", recovery.line());
    assert_clean(&report);
    if how == How::Killed {
        let err = count(&report.counts.err);
        assert!(err > 0, "the kill hit no command: {}", report.summary());
    }
    let limit = how.limit();
    assert!(recovery.in_time(), "{} (limit {limit:?})", recovery.line());
}

/// `SENTINEL FAILOVER` under the drill's load: every reply right or an explicit failure, no
/// client dropped or hung; writes land on the new primary within 2 s of its promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load() {
    let test = one_failover_under_load(How::Asked, 12);
    bounded(LIMIT, "SENTINEL FAILOVER under load", test).await
}

/// The primary SIGKILLed under the drill's load: every reply right or an explicit failure (the
/// commands in flight on it, and those sent while no primary serves), no client dropped or hung;
/// writes land on the new primary within `down-after-milliseconds` + 2 s of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_under_load() {
    let test = one_failover_under_load(How::Killed, 16);
    bounded(LIMIT, "primary killed under load", test).await
}

/// The drill's "Redis" for repeated failovers, `SENTINEL FAILOVER` and SIGKILL in turn: the
/// drill calls `kill` (SIGKILL of the primary, or nothing) then `restart` (the `SENTINEL
/// FAILOVER`, or the wait for the sentinels' promotion), at times spread over its run; the drill
/// goes on until the last round is over.
struct Rounds<'a> {
    set: &'a mut Sentinels,
    proxy: SocketAddr,
    /// The failover the next round starts from.
    next: Pending,
    done: Vec<Recovery>,
}

impl Rounds<'_> {
    /// How this round replaces the primary.
    fn how(&self) -> How {
        [How::Asked, How::Killed][self.done.len() % 2]
    }
}

impl drill::Restart for Rounds<'_> {
    fn kill(&mut self) {
        if self.how() == How::Killed {
            self.set.kill(self.next.old);
            self.next.at = Instant::now();
        }
    }

    /// Measures this round's failover, restarts a killed node (empty: the sentinels make it a
    /// replica), and waits until every node replicates the new primary: the next round's start.
    async fn restart(&mut self) {
        let how = self.how();
        let pending = match how {
            How::Asked => self.set.begin_failover().await,
            How::Killed => self.next.clone(),
        };
        let recovery = follow(self.set, self.proxy, pending, how).await;
        eprintln!("{}", recovery.line());
        if how == How::Killed {
            self.set.restart(recovery.failover.old).await;
        }
        self.done.push(recovery);
        self.set.wait_ready().await;
        self.next = self.set.pending().await;
    }
}

/// The long drill behind `scripts/drill.sh --sentinel` (`RESPIPE_SENTINEL_SECONDS`, default 60;
/// `RESPIPE_SENTINEL_ROUNDS`, default 4): failovers spread over the drill, `SENTINEL FAILOVER`
/// and SIGKILL in turn (the killed node restarted, empty, and made a replica by the sentinels),
/// each once every node replicates the primary again (a demoted or restarted node takes the
/// sentinels 10 to 20 s, longer under load: the drill runs on until the last round is over); the
/// same checks as the single failovers, for every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: scripts/drill.sh --sentinel runs it"]
async fn repeated_failovers_under_load() {
    let (seconds, rounds) = (
        drill::env_or("RESPIPE_SENTINEL_SECONDS", 60),
        drill::env_or("RESPIPE_SENTINEL_ROUNDS", 4),
    );
    let limit = LIMIT + Duration::from_secs(seconds + 90 * rounds);
    bounded(limit, "repeated failovers under load", async {
        drill::raise_nofile();
        let mut set = start().await;
        let proxy = set.respipe(&[]).await;
        let cfg = drill::DrillConfig {
            kills: rounds as usize,
            ..drill_config(Duration::from_secs(seconds))
        };
        let next = set.pending().await;
        let mut chaos = Rounds {
            set: &mut set,
            proxy: proxy.listen,
            next,
            done: Vec::new(),
        };
        let report = drill::run(proxy.listen, &mut chaos, &cfg).await;
        let times: Vec<String> = chaos
            .done
            .iter()
            .map(|r| {
                let how = if r.how == How::Asked { "asked" } else { "kill" };
                format!("{how}:{}", r.recovery().as_millis())
            })
            .collect();
        eprintln!(
            "failovers: {}, recovery_ms={}",
            chaos.done.len(),
            times.join(",")
        );
        assert_clean(&report);
        assert_eq!(chaos.done.len(), rounds as usize);
        for r in &chaos.done {
            assert!(r.in_time(), "{} (limit {:?})", r.line(), r.how.limit());
        }
    })
    .await
}
