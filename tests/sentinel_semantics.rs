//! Issue 13, a client's session across a failover behind respipe (a primary, 2 replicas and 3
//! sentinels): its state (db, ACL user, protocol, name) is handshaken on the new primary's
//! connections; a client holding a lease (an open `MULTI`, a blocked `BLPOP`) gets a clear error,
//! never a hang or another client's reply; `WATCH`/`MULTI`/`EXEC` works on the new primary after.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::sentinel::{SentinelOptions, Sentinels};
use common::{bounded, poll_until, RawClient, Reply};

/// Bound of a test that fails over.
const LIMIT: Duration = Duration::from_secs(60);

/// How long a client holding a lease across a failover may wait for its answer.
const ANSWER: Duration = Duration::from_secs(10);

/// The ACL user the clients log in as, set up on every data node (ACLs are not replicated).
const USER: &str = "app";
const PASS: &str = "app-secret";

/// A primary, 2 replicas and 3 sentinels, with [`USER`] on every data node.
async fn start() -> Sentinels {
    let set = Sentinels::start(SentinelOptions::default()).await;
    let pass = format!(">{PASS}");
    for i in set.running().collect::<Vec<_>>() {
        let setuser = ["ACL", "SETUSER", USER, "on", &pass, "~*", "&*", "+@all"];
        assert_eq!(
            set.cmd(i, &setuser).await,
            Reply::ok(),
            "ACL SETUSER on {i}"
        );
    }
    set
}

/// `GET key` in `db` of data node `i`, asked directly.
async fn get_in(set: &Sentinels, i: usize, db: &str, key: &str) -> Reply {
    let mut c = set.direct(i).await;
    assert_eq!(c.cmd(&["SELECT", db]).await, Reply::ok());
    c.cmd(&["GET", key]).await
}

/// Waits (bounded) until `key` (in `db`) has reached every replica of the primary.
async fn replicated(set: &Sentinels, db: &str, key: &str) {
    let primary = set.primary().await;
    let want = get_in(set, primary, db, key).await;
    for i in set.running().filter(|&i| i != primary).collect::<Vec<_>>() {
        poll_until(Duration::from_secs(10), "replicated", || async {
            (get_in(set, i, db, key).await == want).then_some(())
        })
        .await;
    }
}

/// Waits (bounded) until a `SET` through respipe at `proxy` (on a fresh connection in `db`) lands
/// on data node `primary`.
async fn writes_reach(set: &Sentinels, proxy: SocketAddr, primary: usize, db: &str) {
    let mut n = 0u32;
    poll_until(
        Duration::from_secs(15),
        "writes reach the new primary",
        || {
            n += 1;
            let key = format!("reach:{n}");
            async move {
                let mut c = RawClient::try_connect(proxy).await.ok()?;
                if c.cmd(&["SELECT", db]).await != Reply::ok()
                    || c.cmd(&["SET", &key, "1"]).await != Reply::ok()
                {
                    return None;
                }
                (get_in(set, primary, db, &key).await == Reply::bulk("1")).then_some(())
            }
        },
    )
    .await
}

/// The `key=value` fields of a `CLIENT INFO` line (a bulk or RESP3 verbatim reply).
fn client_info(reply: &Reply) -> Vec<(String, String)> {
    let text = match reply {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        // `txt:` and the text.
        Reply::Verbatim(v) => String::from_utf8_lossy(&v[4.min(v.len())..]).into_owned(),
        other => panic!("CLIENT INFO: {other:?}"),
    };
    text.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The value of `key` in [`client_info`]'s fields.
fn field<'a>(fields: &'a [(String, String)], key: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}= in {fields:?}"))
}

/// A client that chose db 3, logged in as an ACL user, switched to RESP3 and named itself keeps
/// all of it after a `SENTINEL FAILOVER`: respipe answers `CLIENT INFO` with it, the connection
/// its next transaction runs on is the new primary's and carries it (its `CLIENT INFO`, asked
/// inside `MULTI`, is Redis's own), and its writes land in db 3 there. A `redis` crate client
/// (user, db 3, RESP3 in its URL) keeps working on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_survives_a_failover() {
    bounded(LIMIT, "session state across a failover", async {
        let set = start().await;
        let proxy = set.respipe(&[]).await;
        let mut c = RawClient::connect(proxy.listen).await;
        assert_eq!(c.cmd(&["SELECT", "3"]).await, Reply::ok());
        assert_eq!(c.cmd(&["AUTH", USER, PASS]).await, Reply::ok());
        assert!(matches!(c.cmd(&["HELLO", "3"]).await, Reply::Map(_)));
        assert_eq!(c.cmd(&["CLIENT", "SETNAME", "keeper"]).await, Reply::ok());
        assert_eq!(c.cmd(&["SET", "before", "v"]).await, Reply::ok());

        let url = format!("redis://{USER}:{PASS}@{}/3?protocol=resp3", proxy.listen);
        let client = redis::Client::open(url).expect("redis url");
        let mut crate_conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis crate connects through respipe");
        let _: () = redis::cmd("SET")
            .arg("crate-before")
            .arg("1")
            .query_async(&mut crate_conn)
            .await
            .expect("SET through the redis crate");
        replicated(&set, "3", "before").await;
        replicated(&set, "3", "crate-before").await;

        let f = set.failover().await;
        writes_reach(&set, proxy.listen, f.new, "3").await;

        // respipe's answer: the client's own state.
        let info = client_info(&c.cmd(&["CLIENT", "INFO"]).await);
        assert_eq!(
            [
                field(&info, "db"),
                field(&info, "user"),
                field(&info, "resp"),
                field(&info, "name")
            ],
            ["3", USER, "3", "keeper"],
            "{info:?}"
        );
        // Redis's answer, from the connection the transaction runs on: the new primary's, in the
        // client's state.
        assert_eq!(c.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(
            c.cmd(&["CLIENT", "INFO"]).await,
            Reply::Simple("QUEUED".into())
        );
        assert_eq!(
            c.cmd(&["SET", "after", "w"]).await,
            Reply::Simple("QUEUED".into())
        );
        let exec = c.cmd(&["EXEC"]).await;
        let Reply::Array(Some(items)) = &exec else {
            panic!("EXEC: {exec:?}");
        };
        let info = client_info(&items[0]);
        let laddr = set.nodes()[f.new].addr().to_string();
        assert_eq!(
            [
                field(&info, "laddr"),
                field(&info, "db"),
                field(&info, "user"),
                field(&info, "resp"),
                field(&info, "name")
            ],
            [laddr.as_str(), "3", USER, "3", "keeper"],
            "{info:?}"
        );
        assert_eq!(items[1], Reply::ok());
        assert_eq!(get_in(&set, f.new, "3", "after").await, Reply::bulk("w"));
        assert_eq!(c.cmd(&["GET", "before"]).await, Reply::bulk("v"));

        let got: String = redis::cmd("GET")
            .arg("crate-before")
            .query_async(&mut crate_conn)
            .await
            .expect("GET through the redis crate after the failover");
        assert_eq!(got, "1");
        let _: () = redis::cmd("SET")
            .arg("crate-after")
            .arg("2")
            .query_async(&mut crate_conn)
            .await
            .expect("SET through the redis crate after the failover");
        assert_eq!(
            get_in(&set, f.new, "3", "crate-after").await,
            Reply::bulk("2")
        );
    })
    .await
}

/// True if `r` is one of respipe's explicit errors.
fn is_respipe_error(r: &Reply) -> bool {
    r.error_text()
        .is_some_and(|e| e.starts_with("ERR respipe: "))
}

/// Reads `c`'s next reply within [`ANSWER`]; fails the test on a hang or a closed connection.
async fn answer(c: &mut RawClient, what: &str) -> Reply {
    match tokio::time::timeout(ANSWER, c.try_read_reply()).await {
        Ok(Ok(Some(r))) => r,
        Ok(other) => panic!("{what}: the connection ended: {other:?}"),
        Err(_) => panic!("{what}: no answer within {ANSWER:?}"),
    }
}

/// Clients holding a lease on the old primary across a `SENTINEL FAILOVER` (an open `MULTI`, a
/// `WATCH`, a `BLPOP`, a `SUBSCRIBE`) get a clear error from respipe (never a hang, never another
/// client's reply, never a transaction run on the demoted primary, which respipe leaves before
/// the sentinels demote it); a `WATCH`/`MULTI`/`EXEC` afterwards runs on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_across_a_failover_fail_clearly() {
    bounded(LIMIT, "leases across a failover", leases_across(false)).await
}

/// The same with the primary SIGKILLed: the leases' connections die with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_across_a_kill_fail_clearly() {
    bounded(LIMIT, "leases across a kill", leases_across(true)).await
}

/// Leases on the primary, then its failover (`kill`: SIGKILL; else `SENTINEL FAILOVER`); checks
/// what the lease holders get, and that clients carry on on the new primary.
async fn leases_across(kill: bool) {
    let mut set = start().await;
    let proxy = set.respipe(&[]).await;
    let old = set.primary().await;
    let mut m = RawClient::connect(proxy.listen).await;
    assert_eq!(m.cmd(&["MULTI"]).await, Reply::ok());
    assert_eq!(
        m.cmd(&["SET", "in-tx", "1"]).await,
        Reply::Simple("QUEUED".into())
    );
    let mut watcher = RawClient::connect(proxy.listen).await;
    assert_eq!(watcher.cmd(&["WATCH", "w"]).await, Reply::ok());
    let mut sub = RawClient::connect(proxy.listen).await;
    let confirmed = sub.cmd(&["SUBSCRIBE", "news"]).await;
    assert!(matches!(confirmed, Reply::Array(Some(_))), "{confirmed:?}");
    let mut b = RawClient::connect(proxy.listen).await;
    b.send(&common::encode(&["BLPOP", "list", "0"])).await;
    poll_until(Duration::from_secs(10), "BLPOP blocked", || async {
        let info = set.try_cmd(old, &["INFO", "clients"]).await?;
        let Reply::Bulk(Some(info)) = info else {
            return None;
        };
        String::from_utf8_lossy(&info)
            .contains("blocked_clients:1\r")
            .then_some(())
    })
    .await;

    let f = if kill {
        let pending = set.kill_primary().await;
        set.wait_promotion(&pending).await
    } else {
        set.failover().await
    };
    writes_reach(&set, proxy.listen, f.new, "0").await;
    let mut pusher = RawClient::connect(proxy.listen).await;
    assert_eq!(pusher.cmd(&["RPUSH", "list", "x"]).await, Reply::Int(1));

    let exec = {
        m.send(&common::encode(&["EXEC"])).await;
        answer(&mut m, "EXEC across the failover").await
    };
    eprintln!("EXEC across the failover: {exec:?}");
    assert!(is_respipe_error(&exec), "EXEC across a failover: {exec:?}");
    assert_eq!(
        get_in(&set, f.new, "0", "in-tx").await,
        Reply::nil(),
        "the transaction ran"
    );
    if !kill {
        // Not on the demoted primary either, which respipe left on its own: the sentinels
        // have not made it a replica yet (they wait 8 s and more), so nothing closed the
        // lease's connection but respipe.
        assert_eq!(get_in(&set, old, "0", "in-tx").await, Reply::nil());
        assert_eq!(set.role(old).await.as_deref(), Some("master"));
    }
    let blpop = answer(&mut b, "BLPOP across the failover").await;
    eprintln!("BLPOP across the failover: {blpop:?}");
    let popped = Reply::Array(Some(vec![Reply::bulk("list"), Reply::bulk("x")]));
    assert!(
        is_respipe_error(&blpop) || blpop == popped,
        "BLPOP across the failover: {blpop:?}"
    );

    // A client that was watching keys: its transaction fails as a whole, nothing of it runs.
    for args in [&["MULTI"][..], &["SET", "w", "1"], &["EXEC"]] {
        let r = watcher.cmd(args).await;
        assert!(
            is_respipe_error(&r),
            "{args:?} after WATCH across the failover: {r:?}"
        );
    }
    assert_eq!(get_in(&set, f.new, "0", "w").await, Reply::nil());
    assert_eq!(watcher.cmd(&["GET", "w"]).await, Reply::nil());

    // The subscriber is told, then closed (as when its connection is lost): it subscribes
    // again, to the new primary, where the publishers now are.
    let told = answer(&mut sub, "a subscriber across the failover").await;
    eprintln!("a subscriber across the failover: {told:?}");
    assert!(is_respipe_error(&told), "{told:?}");
    bounded(ANSWER, "the subscriber closed", sub.expect_eof()).await;
    if !kill {
        assert_eq!(set.role(old).await.as_deref(), Some("master"));
    }

    // Both clients carry on, on the new primary.
    assert_eq!(m.cmd(&["SET", "m-after", "1"]).await, Reply::ok());
    assert_eq!(get_in(&set, f.new, "0", "m-after").await, Reply::bulk("1"));
    let mut w = RawClient::connect(proxy.listen).await;
    assert_eq!(w.cmd(&["WATCH", "watched"]).await, Reply::ok());
    assert_eq!(w.cmd(&["GET", "watched"]).await, Reply::nil());
    assert_eq!(w.cmd(&["MULTI"]).await, Reply::ok());
    assert_eq!(
        w.cmd(&["SET", "watched", "done"]).await,
        Reply::Simple("QUEUED".into())
    );
    assert_eq!(
        w.cmd(&["EXEC"]).await,
        Reply::Array(Some(vec![Reply::ok()]))
    );
    assert_eq!(
        get_in(&set, f.new, "0", "watched").await,
        Reply::bulk("done")
    );
}

/// A client with a command in flight on the old primary when the sentinels name a new one stays
/// on the old pools (its session is not idle). What it sends next must not run on the old primary,
/// which still says it is the master (Sentinel converts it seconds later, dropping its writes):
/// the connection takes nothing more, and once the command in flight is answered it reconnects to
/// the new primary, where the next command runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_sends_nothing_more_to_the_old_primary() {
    bounded(LIMIT, "a busy session across a failover", async {
        // The old primary sleeps through the failover: no sentinel may call it down meanwhile.
        let options = SentinelOptions {
            down_after_ms: 20_000,
            redis_args: vec!["--enable-debug-command".into(), "yes".into()],
            ..SentinelOptions::default()
        };
        let set = Sentinels::start(options).await;
        let proxy = set.respipe(&[]).await;
        let mut busy = RawClient::connect(proxy.listen).await;
        assert_eq!(busy.cmd(&["SET", "before", "1"]).await, Reply::ok());
        let pending = set.begin_failover().await;
        busy.send(&common::encode(&["DEBUG", "SLEEP", "4"])).await;
        let failover = set.wait_promotion(&pending).await;
        writes_reach(&set, proxy.listen, failover.new, "0").await;
        // respipe has followed; the busy session still waits for DEBUG SLEEP on the old primary.
        busy.send(&common::encode(&["SET", "after", "1"])).await;
        assert_eq!(
            bounded(ANSWER, "DEBUG SLEEP answered", busy.read_reply()).await,
            Reply::ok()
        );
        assert_eq!(
            bounded(ANSWER, "SET answered", busy.read_reply()).await,
            Reply::ok()
        );
        assert_eq!(
            set.role(pending.old).await.as_deref(),
            Some("master"),
            "Sentinel converted the old primary already: the check below would say nothing"
        );
        assert_eq!(get_in(&set, pending.old, "0", "after").await, Reply::nil());
        assert_eq!(
            get_in(&set, failover.new, "0", "after").await,
            Reply::bulk("1")
        );
    })
    .await
}
