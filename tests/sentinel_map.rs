//! Issue 13, Sentinel discovery: respipe finds and follows the primary when sentinels are down
//! (one at start, all for a while, all at start), does not believe what an event says (a stale
//! `+switch-master` replayed), never writes to an old primary that comes back after a SIGKILL
//! failover, and asks the sentinels again at once when the primary answers `-READONLY`. Real
//! `redis-server` and `redis-sentinel` processes on loopback (`tests/common/sentinel.rs`); the
//! respipe binary, whose metrics and logs are its own.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::sentinel::{SentinelOptions, Sentinels, MASTER, SENTINEL_DEADLINE};
use common::{bounded, poll_until, BinProxy, RawClient, RedisServer, Reply, POLL};

/// Bound of one test (each starts 3 data nodes and 3 sentinels, most fail over once).
const LIMIT: Duration = Duration::from_secs(120);
/// How long respipe may take to write to a new primary once the sentinels name it: an event
/// triggers a discovery at once; the poll (2 s) is the backstop.
const FOLLOW: Duration = Duration::from_secs(10);

const REACHABLE: &str = "respipe_sentinel_sentinels_reachable";
const ERRORS: &str = "respipe_sentinel_discovery_errors_total";
const FAILOVERS: &str = "respipe_sentinel_failovers_total";
const DISCOVERIES: &str = "respipe_sentinel_discoveries_total";
const KEEPING: &str = "no primary confirmed; keeping the last known one";

/// `respipe_sentinel_discoveries_total` of one trigger.
fn discoveries(trigger: &str) -> String {
    format!("{DISCOVERIES}{{trigger=\"{trigger}\"}}")
}

/// Polls (bounded by [`FOLLOW`]) until a `SET key value` through respipe answers `+OK` and the
/// key is on data node `node`.
async fn wait_write_on(set: &Sentinels, proxy: SocketAddr, node: usize, key: &str) {
    poll_until(
        FOLLOW,
        "a write through respipe lands on the primary",
        || async {
            let mut c = RawClient::try_connect(proxy).await.ok()?;
            let set_reply = tokio::time::timeout(Duration::from_secs(2), c.cmd(&["SET", key, "v"]))
                .await
                .ok()?;
            let on_node = set.try_cmd(node, &["GET", key]).await?;
            (set_reply == Reply::ok() && on_node == Reply::bulk("v")).then_some(())
        },
    )
    .await
}

/// With one sentinel down from the start, respipe finds the primary through the others and
/// follows a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_down_at_start_is_passed_over() {
    bounded(LIMIT, "a sentinel down at start", async {
        let mut set = Sentinels::start(SentinelOptions::default()).await;
        set.stop_sentinel(0);
        let proxy = set.respipe(&[]).await;
        proxy.wait_metric(REACHABLE, FOLLOW, |v| v == 2.0).await;
        let f = set.failover().await;
        wait_write_on(&set, proxy.listen, f.new, "down-at-start").await;
        eprintln!(
            "writes on the new primary {:?} after its promotion was seen",
            f.promoted.elapsed()
        );
        assert_eq!(proxy.metric(FAILOVERS).await, 1.0);
    })
    .await
}

/// Given only the first sentinel, respipe learns the others from it (`SENTINEL SENTINELS`) and
/// asks them once it is down: a failover is still followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_learned_from_the_first_are_asked_when_it_is_down() {
    bounded(LIMIT, "learned sentinels", async {
        let mut set = Sentinels::start(SentinelOptions::default()).await;
        let url = format!("redis-sentinel://{}/{MASTER}", set.sentinels()[0].addr());
        let proxy = BinProxy::spawn_with(&["--upstream", &url]);
        set.wait_serving(proxy.listen).await;
        proxy.wait_metric(REACHABLE, FOLLOW, |v| v == 3.0).await;
        set.stop_sentinel(0);
        proxy.wait_metric(REACHABLE, FOLLOW, |v| v == 2.0).await;
        let f = set.failover().await;
        wait_write_on(&set, proxy.listen, f.new, "learned").await;
        assert_eq!(proxy.metric(FAILOVERS).await, 1.0);
    })
    .await
}

/// All sentinels down for a while: respipe keeps writing to the last known primary, says so
/// once in its log and in its metrics, and when they are back follows a failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sentinels_down_keeps_the_last_primary_then_recovers() {
    bounded(LIMIT, "all sentinels down for a while", async {
        let mut set = Sentinels::start(SentinelOptions::default()).await;
        let mut proxy = set.respipe(&[]).await;
        let primary = set.primary().await;
        for s in 0..set.sentinels().len() {
            set.stop_sentinel(s);
        }
        proxy.wait_metric(REACHABLE, FOLLOW, |v| v == 0.0).await;
        // Several discoveries failed (polls every 2 s)...
        proxy.wait_metric(ERRORS, FOLLOW * 2, |v| v >= 3.0).await;
        // ...logged once for the outage...
        proxy.bin.wait_line(KEEPING, FOLLOW);
        proxy.bin.drain_lines();
        let logged = proxy
            .bin
            .seen
            .iter()
            .filter(|l| l.contains(KEEPING))
            .count();
        assert_eq!(logged, 1, "{:#?}", proxy.bin.seen);
        // ...and the last known primary still takes the writes.
        wait_write_on(&set, proxy.listen, primary, "while-sentinels-down").await;
        let metrics = common::http_get(&proxy.admin, "/metrics").await.unwrap().1;
        let gauge = format!(
            "respipe_sentinel_primary{{address=\"{}\"}} 1",
            set.nodes()[primary].addr()
        );
        assert!(metrics.contains(&gauge), "no {gauge} in:\n{metrics}");

        for s in 0..set.sentinels().len() {
            set.start_sentinel(s).await;
        }
        proxy.wait_metric(REACHABLE, FOLLOW, |v| v == 3.0).await;
        proxy.bin.wait_line("a primary is confirmed again", FOLLOW);
        set.wait_settled().await;
        let f = set.failover().await;
        wait_write_on(&set, proxy.listen, f.new, "after-sentinels-back").await;
        eprintln!(
            "after the outage, writes on the new primary {:?} after its promotion was seen",
            f.promoted.elapsed()
        );
        assert_eq!(proxy.metric(FAILOVERS).await, 1.0);
        // Every Sentinel-only metric is served (tests/deploy.rs checks the rest).
        let metrics = common::http_get(&proxy.admin, "/metrics").await.unwrap().1;
        for name in respipe::metrics::SENTINEL_ONLY {
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "{name} not served"
            );
        }
    })
    .await
}

/// Events are only triggers: a `+switch-master` back to the old primary, replayed by a
/// "sentinel" (a plain Redis standing in for one; real sentinels refuse `PUBLISH` on their event
/// channels), makes respipe ask the sentinels, who name the current primary: respipe stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_switch_master_does_not_move_respipe() {
    bounded(LIMIT, "a stale +switch-master replayed", async {
        let set = Sentinels::start(SentinelOptions::default()).await;
        let stand_in = RedisServer::start().await;
        // The stand-in first: one of respipe's event subscriptions is on it; the real
        // sentinels after the first are learned from it.
        let url = format!(
            "redis-sentinel://{},{}/{MASTER}",
            stand_in.addr(),
            set.sentinels()[0].addr()
        );
        let args = [
            "--upstream",
            &url,
            "--log-level",
            "info,respipe::sentinel=debug",
        ];
        let mut proxy = BinProxy::spawn_with(&args);
        set.wait_serving(proxy.listen).await;
        let f = set.failover().await;
        wait_write_on(&set, proxy.listen, f.new, "stale-before").await;
        set.wait_settled().await;

        let mut publisher = stand_in.direct().await;
        // An event about another master reaches one subscriber: respipe's.
        let other = "slave 127.0.0.1:1 127.0.0.1 1 @ other 127.0.0.1 2";
        let deadline = Instant::now() + FOLLOW;
        while publisher.cmd(&["PUBLISH", "+sdown", other]).await != Reply::Int(1) {
            assert!(
                Instant::now() < deadline,
                "respipe never subscribed on the stand-in"
            );
            tokio::time::sleep(POLL).await;
        }
        let (old, new) = (set.nodes()[f.old].addr(), set.nodes()[f.new].addr());
        let replay = format!(
            "{MASTER} {} {} {} {}",
            new.ip(),
            new.port(),
            old.ip(),
            old.port()
        );
        let before = proxy.metric(DISCOVERIES).await;
        assert_eq!(
            publisher.cmd(&["PUBLISH", "+switch-master", &replay]).await,
            Reply::Int(1)
        );
        proxy.bin.wait_line(&format!("text=\"{replay}\""), FOLLOW);
        // The discovery it triggered, and the next, have run (they run one after the other).
        proxy
            .wait_metric(DISCOVERIES, FOLLOW, |v| v >= before + 2.0)
            .await;
        assert_eq!(proxy.metric(FAILOVERS).await, 1.0, "respipe moved");
        let metrics = common::http_get(&proxy.admin, "/metrics").await.unwrap().1;
        assert!(
            metrics.contains(&format!("respipe_sentinel_primary{{address=\"{new}\"}} 1")),
            "{metrics}"
        );
        wait_write_on(&set, proxy.listen, f.new, "stale-after").await;
    })
    .await
}

/// The primary is SIGKILLed and a replica promoted; the old primary restarts (empty, saying
/// `ROLE master` until the sentinels reconfigure it). No write through respipe reaches it while
/// it says so: not from a new client, nor from a session that was idle on the old primary's
/// pool since before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_primary_back_after_a_kill_never_receives_a_write() {
    bounded(LIMIT * 2, "the old primary comes back", async {
        let mut set = Sentinels::start(SentinelOptions::default()).await;
        let proxy = set.respipe(&[]).await;
        let mut idle = RawClient::connect(proxy.listen).await;
        assert_eq!(idle.cmd(&["SET", "before-kill", "v"]).await, Reply::ok());
        let killed = set.kill_primary().await;
        let f = set.wait_promotion(&killed).await;
        let old = killed.old;
        wait_write_on(&set, proxy.listen, f.new, "after-kill").await;
        eprintln!(
            "writes on the new primary {:?} after its promotion was seen (kill)",
            f.promoted.elapsed()
        );
        set.restart(old).await;
        let mut said_master = 0;
        let deadline = Instant::now() + SENTINEL_DEADLINE;
        for i in 0.. {
            let before = set.role(old).await;
            let key = format!("back-{i}");
            // The idle session's first command since the failover, then new clients'.
            let reply = if i == 0 {
                idle.cmd(&["SET", &key, "v"]).await
            } else {
                RawClient::connect(proxy.listen)
                    .await
                    .cmd(&["SET", &key, "v"])
                    .await
            };
            let on_old = set.try_cmd(old, &["EXISTS", &key]).await;
            let stats = set.try_cmd(old, &["INFO", "commandstats"]).await;
            let after = set.role(old).await;
            if before.as_deref() == Some("master") && after.as_deref() == Some("master") {
                said_master += 1;
                assert_eq!(on_old, Some(Reply::Int(0)), "{key} reached the old primary");
                let stats = format!("{stats:?}");
                assert!(
                    !stats.contains("cmdstat_set"),
                    "the old primary ran SET: {stats}"
                );
                assert!(
                    reply == Reply::ok() || reply.error_text().is_some(),
                    "{reply:?}"
                );
            }
            if after.as_deref() == Some("slave") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the old primary never became a replica"
            );
            tokio::time::sleep(POLL).await;
        }
        eprintln!("the old primary said ROLE master for {said_master} rounds of writes");
        wait_write_on(&set, proxy.listen, f.new, "settled").await;
    })
    .await
}

/// The primary, demoted behind the sentinels' back (`REPLICAOF` another server), answers writes
/// with `-READONLY` (the client gets it: the write did not run) and respipe asks the sentinels at
/// once; they still name it, it says `ROLE slave`, so no primary is confirmed (the last known one
/// stays) and respipe's new connections to it are refused (`ROLE` at connect) until it is a
/// primary again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_from_the_primary_asks_the_sentinels_at_once() {
    bounded(LIMIT, "-READONLY from the primary", async {
        let set = Sentinels::start(SentinelOptions::default()).await;
        let proxy = set.respipe(&[]).await;
        let primary = set.primary().await;
        let elsewhere = RedisServer::start().await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["SET", "ro", "v"]).await, Reply::ok());
        let readonly = discoveries("readonly");
        assert_eq!(proxy.metric(&readonly).await, 0.0);
        let errors = proxy.metric(ERRORS).await;
        let port = elsewhere.port().to_string();
        set.cmd(primary, &["REPLICAOF", "127.0.0.1", &port]).await;
        let reply = c.cmd(&["SET", "ro", "w"]).await;
        let text = reply.error_text().unwrap_or_default().to_owned();
        assert!(text.starts_with("READONLY"), "{reply:?}");
        let started = Instant::now();
        proxy.wait_metric(&readonly, FOLLOW, |v| v >= 1.0).await;
        eprintln!("-READONLY to a discovery: {:?}", started.elapsed());
        proxy.wait_metric(ERRORS, FOLLOW, |v| v > errors).await;
        // Its connections closed, respipe connects again and refuses it: ROLE says slave.
        set.cmd(primary, &["CLIENT", "KILL", "TYPE", "normal"])
            .await;
        let refused = poll_until(FOLLOW, "the demoted primary refused at connect", || async {
            let mut c = RawClient::try_connect(proxy.listen).await.ok()?;
            let reply = c.cmd(&["SET", "ro", "x"]).await;
            let text = reply.error_text()?.to_owned();
            text.contains("is a replica now (ROLE slave)")
                .then_some(text)
        })
        .await;
        eprintln!("{refused}");
        assert!(
            proxy
                .metric("respipe_upstream_errors_total{kind=\"wrong_role\"}")
                .await
                >= 1.0
        );
        set.cmd(primary, &["REPLICAOF", "NO", "ONE"]).await;
        wait_write_on(&set, proxy.listen, primary, "ro-again").await;
    })
    .await
}

/// With every sentinel down at start nothing is known: `/readyz` says 503 and commands get an
/// explicit error; once the sentinels are back, 200 and writes reach the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_a_primary_is_known() {
    bounded(LIMIT, "/readyz without a primary", async {
        let mut set = Sentinels::start(SentinelOptions::default()).await;
        for s in 0..set.sentinels().len() {
            set.stop_sentinel(s);
        }
        let proxy = BinProxy::spawn_with(&["--upstream", &set.url()]);
        proxy.wait_metric(ERRORS, FOLLOW, |v| v >= 1.0).await;
        assert_eq!(proxy.status("/readyz").await, 503);
        let mut c = RawClient::connect(proxy.listen).await;
        let reply = c.cmd(&["SET", "k", "v"]).await;
        let text = reply.error_text().unwrap_or_default();
        assert!(text.contains("no primary known"), "{reply:?}");
        for s in 0..set.sentinels().len() {
            set.start_sentinel(s).await;
        }
        let took = proxy.wait_status("/readyz", 200, FOLLOW).await;
        eprintln!("/readyz 200 {took:?} after the sentinels were back");
        set.wait_serving(proxy.listen).await;
    })
    .await
}

/// With the primary gone and no sentinel to replace it, a command held for the new primary is not
/// held for ever: after `command_timeout` it gets respipe's explicit "unavailable" error (the
/// command was not sent), and commands after it too, rather than hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_held_for_a_primary_give_up_after_command_timeout() {
    bounded(LIMIT, "held commands bounded by command_timeout", async {
        let mut set = Sentinels::start(SentinelOptions::default()).await;
        let proxy = set.respipe(&["--command-timeout", "1s"]).await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["SET", "held", "1"]).await, Reply::ok());
        let primary = set.primary().await;
        for s in 0..set.sentinels().len() {
            set.stop_sentinel(s);
        }
        set.kill(primary);
        // Once respipe has seen its connections go, nothing is in flight: the next command waits.
        proxy
            .wait_metric("respipe_upstream_up", FOLLOW, |v| v == 0.0)
            .await;
        for round in 0..2 {
            let reply = bounded(Duration::from_secs(10), "a held command answered", async {
                c.cmd(&["SET", "held", "2"]).await
            })
            .await;
            let text = reply.error_text().unwrap_or_default();
            assert!(
                text.starts_with("ERR respipe: upstream unavailable")
                    && text.ends_with("the command was not sent"),
                "round {round}: {reply:?}"
            );
        }
    })
    .await
}
