//! Issue 13, the Sentinel harness's smoke test: respipe in front of a primary, 2 replicas and 3
//! sentinels (`tests/common/sentinel.rs`) serves, and follows a `SENTINEL FAILOVER`.

mod common;

use std::time::Duration;

use common::sentinel::{SentinelOptions, Sentinels};
use common::{bounded, poll_until, RawClient, Reply};

/// Bound of a test that fails over.
const LIMIT: Duration = Duration::from_secs(60);

/// SET/GET through respipe land on the primary; after `SENTINEL FAILOVER` writes land on the new
/// primary (bounded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_follows_a_failover() {
    bounded(LIMIT, "sentinel smoke test", async {
        let set = Sentinels::start(SentinelOptions::default()).await;
        let proxy = set.proxy(|_| {}).await;
        let mut c = proxy.raw().await;
        assert_eq!(c.cmd(&["SET", "smoke", "before"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "smoke"]).await, Reply::bulk("before"));
        let first = set.primary().await;
        assert_eq!(first, 0, "node 0 starts as the primary");
        assert_eq!(
            set.cmd(first, &["GET", "smoke"]).await,
            Reply::bulk("before")
        );

        let f = set.failover().await;
        assert_eq!(f.old, first);
        assert_ne!(f.new, first);
        let addr = proxy.addr();
        let since = poll_until(
            Duration::from_secs(10),
            "a write lands on the new primary",
            || {
                let set = &set;
                async move {
                    let mut c = RawClient::try_connect(addr).await.ok()?;
                    let set_reply = c.cmd(&["SET", "smoke", "after"]).await;
                    let on_new = set.try_cmd(f.new, &["GET", "smoke"]).await?;
                    (set_reply == Reply::ok() && on_new == Reply::bulk("after"))
                        .then(|| f.promoted.elapsed())
                }
            },
        )
        .await;
        eprintln!("writes on the new primary {since:?} after the promotion");
        assert_eq!(c.cmd(&["GET", "smoke"]).await, Reply::bulk("after"));
    })
    .await
}

/// With passwords on the data nodes and on the sentinels, respipe's binary (the sentinels'
/// password in the URL, the data nodes' with `--upstream-password`) serves through the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_with_passwords() {
    bounded(LIMIT, "sentinel with passwords", async {
        let set = Sentinels::start(SentinelOptions {
            password: Some("data-secret".into()),
            sentinel_password: Some("sentinel-secret".into()),
            ..SentinelOptions::default()
        })
        .await;
        assert!(set
            .url()
            .starts_with("redis-sentinel://:sentinel-secret@127.0.0.1:"));
        let proxy = set.respipe(&[]).await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["SET", "pw", "v"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "pw"]).await, Reply::bulk("v"));
        let primary = set.primary().await;
        assert_eq!(set.cmd(primary, &["GET", "pw"]).await, Reply::bulk("v"));
    })
    .await
}
