//! `WAIT` through respipe counts the replicas that acknowledged this client's writes, against a
//! real replica: never an acknowledgement the replica did not give.

mod common;

use std::time::{Duration, Instant};

use common::{bounded, poll_until, Proxy, RawClient, RedisServer, Reply};

const LIMIT: Duration = Duration::from_secs(60);

/// Resumes a stopped replica when the test ends, however it ends.
struct Resume<'a>(&'a RedisServer);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

/// A master and one replica of it, in sync.
async fn master_and_replica() -> (RedisServer, RedisServer) {
    // Diskless sync starts at once instead of after 5 s.
    let master = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).await;
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
    let addr = master.addr();
    poll_until(LIMIT, "the replica is online", || async move {
        let mut d = RawClient::connect(addr).await;
        match d.cmd(&["INFO", "replication"]).await {
            Reply::Bulk(Some(info)) => String::from_utf8_lossy(&info)
                .contains("state=online")
                .then_some(()),
            _ => None,
        }
    })
    .await;
    (master, replica)
}

#[tokio::test]
async fn wait_counts_only_replicas_that_acknowledged_this_clients_writes() {
    let (master, replica) = master_and_replica().await;
    let proxy = Proxy::ready(&master).await;
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["SET", "k", "v0"]).await, Reply::ok());
    // An awake replica acknowledges.
    assert_eq!(
        bounded(
            LIMIT,
            "WAIT 1 with the replica awake",
            c.cmd(&["WAIT", "1", "0"])
        )
        .await,
        Reply::Int(1)
    );
    // Asleep, it cannot: Redis answers 0 once the timeout has passed, and so must respipe.
    replica.signal(libc::SIGSTOP);
    let _resume = Resume(&replica);
    assert_eq!(c.cmd(&["SET", "k", "v1"]).await, Reply::ok());
    let start = Instant::now();
    assert_eq!(
        bounded(LIMIT, "WAIT 1 300", c.cmd(&["WAIT", "1", "300"])).await,
        Reply::Int(0),
        "a replica that is asleep acknowledged nothing"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "WAIT answered before its timeout: {:?}",
        start.elapsed()
    );
    // The same pipelined, as one write.
    let mut bytes = common::encode(&["SET", "k", "v2"]);
    bytes.extend_from_slice(&common::encode(&["WAIT", "1", "200"]));
    c.send(&bytes).await;
    assert_eq!(
        bounded(LIMIT, "SET; WAIT pipelined", c.read_replies(2)).await,
        vec![Reply::ok(), Reply::Int(0)]
    );
}

#[tokio::test]
async fn wait_is_refused_when_redis_refuses_the_no_op() {
    let redis = RedisServer::start().await;
    let mut d = redis.direct().await;
    assert_eq!(
        d.cmd(&[
            "ACL",
            "SETUSER",
            "w",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-spublish"
        ])
        .await,
        Reply::ok()
    );
    let proxy = Proxy::ready(&redis).await;
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["AUTH", "w", "pw"]).await, Reply::ok());
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, Reply::ok());
    let reply = bounded(LIMIT, "WAIT", c.cmd(&["WAIT", "0", "0"])).await;
    let text = reply.error_text().unwrap_or_else(|| panic!("{reply:?}"));
    assert!(
        text.starts_with("ERR respipe: 'wait' needs SPUBLISH") && text.contains("NOPERM"),
        "{text}"
    );
    // The client goes on as before.
    assert_eq!(c.cmd(&["GET", "k"]).await, Reply::bulk("v"));
}
