//! Reads from replicas (`read_from`), against a real primary and replicas (`redis-server
//! --replicaof`) on loopback: where each command runs is read from the servers' own `INFO
//! commandstats`, and the replies from what a client gets back.

mod common;

use std::time::Duration;

use common::sentinel::{SentinelOptions, Sentinels};
use common::{bounded, cmd_until, poll_until, Proxy, RawClient, RedisServer, Reply};
use respipe::command;
use respipe::config::{Endpoint, ReadFrom, Reads};

const LIMIT: Duration = Duration::from_secs(60);

/// A primary and its replicas, each replica in sync (`master_link_status:up`).
struct Replicated {
    primary: RedisServer,
    replicas: Vec<RedisServer>,
}

impl Replicated {
    async fn start(replicas: usize) -> Replicated {
        let primary = RedisServer::start().await;
        let port = primary.port().to_string();
        let mut started = Vec::new();
        for _ in 0..replicas {
            let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
            let mut c = replica.direct().await;
            cmd_until(&mut c, &["INFO", "replication"], "replica in sync", |r| {
                matches!(r, Reply::Bulk(Some(b)) if String::from_utf8_lossy(b).contains("master_link_status:up"))
            })
            .await;
            started.push(replica);
        }
        Replicated {
            primary,
            replicas: started,
        }
    }

    /// A primary and `replicas` replicas that have `pairs`.
    async fn seeded(replicas: usize, pairs: &[(&str, &str)]) -> Replicated {
        let set = Replicated::start(replicas).await;
        set.seed(pairs).await;
        set
    }

    /// respipe in front of the primary, reading from the replicas as `read_from` says.
    async fn proxy(&self, read_from: ReadFrom, read_your_writes: Option<Duration>) -> Proxy {
        let replicas = self
            .replicas
            .iter()
            .map(|r| Endpoint::Tcp {
                host: "127.0.0.1".to_owned(),
                port: r.port(),
            })
            .collect();
        Proxy::ready_with(&self.primary, |c| {
            c.reads = Reads {
                read_from,
                read_your_writes,
                replicas,
            }
        })
        .await
    }

    /// Sets `pairs` on the primary and waits until every replica has them.
    async fn seed(&self, pairs: &[(&str, &str)]) {
        let mut c = self.primary.direct().await;
        for (k, v) in pairs {
            assert_eq!(c.cmd(&["SET", k, v]).await, Reply::ok());
        }
        let n = self.replicas.len().to_string();
        assert_eq!(
            c.cmd(&["WAIT", &n, "5000"]).await,
            Reply::Int(self.replicas.len() as i64)
        );
    }
}

/// Sends `cmds` as one pipeline and reads their replies.
async fn run(c: &mut RawClient, cmds: Vec<Vec<String>>) -> Vec<Reply> {
    let mut bytes = Vec::new();
    for cmd in &cmds {
        bytes.extend(common::encode(cmd));
    }
    c.send(&bytes).await;
    c.read_replies(cmds.len()).await
}

/// How many times `server` ran `command` (`cmdstat_<command>:calls=`), 0 when never.
async fn calls(server: &RedisServer, command: &str) -> u64 {
    let mut c = server.direct().await;
    ran(c.cmd(&["INFO", "commandstats"]).await, command)
}

/// How many times a server ran `command`, by its `INFO commandstats` reply.
fn ran(commandstats: Reply, command: &str) -> u64 {
    let Reply::Bulk(Some(info)) = commandstats else {
        panic!("INFO commandstats: {commandstats:?}");
    };
    let prefix = format!("cmdstat_{command}:calls=");
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// A client of `proxy` whose reads have started landing on a replica (`read_from = replica`:
/// refused until the replica's connections are up).
async fn reading_client(proxy: &Proxy) -> RawClient {
    reading(proxy.raw().await).await
}

/// `c`, once its reads have started landing on a replica (as [`reading_client`]).
async fn reading(mut c: RawClient) -> RawClient {
    cmd_until(&mut c, &["GET", "seeded"], "a replica takes reads", |r| {
        *r == Reply::Bulk(Some(b"yes".to_vec()))
    })
    .await;
    c
}

#[tokio::test]
async fn reads_land_on_replicas_and_writes_never_do() {
    bounded(LIMIT, "reads on replicas", async {
        let set = Replicated::seeded(2, &[("seeded", "yes"), ("k", "v")]).await;
        let proxy = set.proxy(ReadFrom::Replica, None).await;
        let mut clients = Vec::new();
        for _ in 0..4 {
            clients.push(reading_client(&proxy).await);
        }
        let primary_gets = calls(&set.primary, "get").await;
        let replica_gets = [
            calls(&set.replicas[0], "get").await,
            calls(&set.replicas[1], "get").await,
        ];
        for (i, c) in clients.iter_mut().enumerate() {
            for j in 0..10 {
                assert_eq!(c.cmd(&["GET", "k"]).await, Reply::Bulk(Some(b"v".to_vec())));
                let both = Reply::Array(Some(vec![
                    Reply::Bulk(Some(b"v".to_vec())),
                    Reply::Bulk(Some(b"yes".to_vec())),
                ]));
                assert_eq!(c.cmd(&["MGET", "k", "seeded"]).await, both);
                let w = format!("w{i}.{j}");
                // A write on a replica would answer -READONLY.
                assert_eq!(c.cmd(&["SET", &w, "1"]).await, Reply::ok());
                let n = (i * 10 + j + 1) as i64;
                assert_eq!(c.cmd(&["INCR", "counter"]).await, Reply::Int(n));
            }
        }
        assert_eq!(
            calls(&set.primary, "get").await,
            primary_gets,
            "no read on the primary"
        );
        let on_replicas = [
            calls(&set.replicas[0], "get").await - replica_gets[0],
            calls(&set.replicas[1], "get").await - replica_gets[1],
        ];
        assert_eq!(on_replicas.iter().sum::<u64>(), 40);
        assert_eq!(
            on_replicas,
            [20, 20],
            "four clients spread over two replicas"
        );
        // Writes ran on the primary only: a replica ran each once more, replicated, never refused.
        let mut c = set.primary.direct().await;
        assert_eq!(c.cmd(&["WAIT", "2", "5000"]).await, Reply::Int(2));
        for server in [&set.primary, &set.replicas[0], &set.replicas[1]] {
            assert_eq!(calls(server, "set").await, 42);
            assert_eq!(calls(server, "incr").await, 40);
        }
    })
    .await;
}

#[tokio::test]
async fn read_only_scripts_go_to_a_replica_and_others_and_transactions_do_not() {
    bounded(LIMIT, "scripts on replicas", async {
        let set = Replicated::seeded(1, &[("seeded", "yes"), ("k", "v")]).await;
        let proxy = set.proxy(ReadFrom::Replica, None).await;
        let mut c = reading_client(&proxy).await;
        let script = "return redis.call('GET', KEYS[1])";
        let v = Reply::Bulk(Some(b"v".to_vec()));
        for _ in 0..5 {
            assert_eq!(c.cmd(&["EVAL_RO", script, "1", "k"]).await, v);
            assert_eq!(c.cmd(&["EVAL", script, "1", "k"]).await, v);
        }
        let replica = &set.replicas[0];
        assert_eq!(calls(replica, "eval_ro").await, 5);
        assert_eq!(calls(&set.primary, "eval_ro").await, 0);
        assert_eq!(calls(&set.primary, "eval").await, 5);
        assert_eq!(calls(replica, "eval").await, 0);

        // In a transaction, a read stays on its dedicated connection to the primary.
        let gets = calls(replica, "get").await;
        let primary_gets = calls(&set.primary, "get").await;
        assert_eq!(c.cmd(&["MULTI"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "k"]).await, Reply::Simple("QUEUED".into()));
        assert_eq!(c.cmd(&["EXEC"]).await, Reply::Array(Some(vec![v.clone()])));
        assert_eq!(c.cmd(&["WATCH", "k"]).await, Reply::ok());
        assert_eq!(c.cmd(&["GET", "k"]).await, v);
        assert_eq!(c.cmd(&["UNWATCH"]).await, Reply::ok());
        assert_eq!(calls(replica, "get").await, gets);
        assert_eq!(calls(&set.primary, "get").await, primary_gets + 2);
    })
    .await;
}

/// Replies in command order, with the right values, while reads on a replica and writes on the
/// primary are in flight together: the pipeline's replies through respipe are those Redis gives
/// the same pipeline directly (the keys read are seeded and never written, so a replica has them).
#[tokio::test]
async fn a_pipeline_mixing_writes_and_reads_keeps_its_order() {
    bounded(LIMIT, "mixed pipeline", async {
        let set = Replicated::start(2).await;
        let seeded: Vec<(String, String)> = (0..20)
            .map(|i| (format!("s{i}"), format!("value-{i}")))
            .collect();
        let pairs: Vec<(&str, &str)> = std::iter::once(("seeded", "yes"))
            .chain(seeded.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        set.seed(&pairs).await;
        let proxy = set.proxy(ReadFrom::Replica, None).await;
        let pipeline = |counter: &str| {
            let mut cmds: Vec<Vec<String>> = Vec::new();
            for i in 0..300 {
                let s = format!("s{}", i % 20);
                cmds.push(vec!["INCR".into(), counter.into()]);
                cmds.push(vec!["GET".into(), s.clone()]);
                if i % 3 == 0 {
                    cmds.push(vec!["MGET".into(), s, "s7".into(), "nope".into()]);
                    cmds.push(vec!["SET".into(), format!("{counter}.{i}"), "x".into()]);
                }
                if i % 7 == 0 {
                    cmds.push(vec!["STRLEN".into(), "s3".into()]);
                    cmds.push(vec!["PING".into()]);
                }
            }
            cmds
        };
        let mut direct = set.primary.direct().await;
        let want = run(&mut direct, pipeline("direct")).await;
        let replica_gets: u64 =
            calls(&set.replicas[0], "get").await + calls(&set.replicas[1], "get").await;
        let mut c = reading_client(&proxy).await;
        let got = run(&mut c, pipeline("proxied")).await;
        assert_eq!(got, want);
        let after: u64 =
            calls(&set.replicas[0], "get").await + calls(&set.replicas[1], "get").await;
        assert_eq!(after - replica_gets, 300 + 1, "every GET on a replica");
    })
    .await;
}

#[tokio::test]
async fn read_your_writes_sends_a_sessions_reads_to_the_primary_after_it_writes() {
    bounded(LIMIT, "read your writes", async {
        let set = Replicated::seeded(1, &[("seeded", "yes")]).await;
        let replica = &set.replicas[0];
        // On: every read right after the session's write sees it (even with read_from = replica:
        // the session asked for its writes).
        let proxy = set
            .proxy(ReadFrom::Replica, Some(Duration::from_secs(30)))
            .await;
        let mut c = reading_client(&proxy).await;
        // Commands that write nothing leave the reads on the replica.
        let gets = calls(replica, "get").await;
        let replies = c
            .send_all(&[
                &["PING"][..],
                &["CLIENT", "SETNAME", "me"],
                &["GET", "seeded"],
            ])
            .await;
        assert_eq!(replies[2], Reply::Bulk(Some(b"yes".to_vec())));
        assert_eq!(calls(replica, "get").await, gets + 1);
        let (gets, primary_gets) = (
            calls(replica, "get").await,
            calls(&set.primary, "get").await,
        );
        for i in 0..200 {
            let v = i.to_string();
            let replies = c
                .send_all(&[&["SET", "mine", v.as_str()][..], &["GET", "mine"]])
                .await;
            assert_eq!(replies[1], Reply::Bulk(Some(v.into_bytes())), "read {i}");
        }
        assert_eq!(calls(replica, "get").await, gets, "no read on the replica");
        assert_eq!(calls(&set.primary, "get").await, primary_gets + 200);
        proxy.shutdown().await;

        // Off: the read right after the write goes to the replica (which may not have it yet).
        let proxy = set.proxy(ReadFrom::Replica, None).await;
        let mut c = reading_client(&proxy).await;
        let gets = calls(replica, "get").await;
        for i in 0..50 {
            let v = i.to_string();
            let replies = c
                .send_all(&[&["SET", "mine", v.as_str()][..], &["GET", "mine"]])
                .await;
            assert!(matches!(replies[1], Reply::Bulk(_)), "{replies:?}");
        }
        assert_eq!(calls(replica, "get").await, gets + 50);
    })
    .await;
}

#[tokio::test]
async fn prefer_replica_falls_back_to_the_primary_and_replica_refuses() {
    bounded(LIMIT, "replica down", async {
        let mut set = Replicated::seeded(1, &[("seeded", "yes")]).await;
        let prefer = set.proxy(ReadFrom::PreferReplica, None).await;
        let only = set.proxy(ReadFrom::Replica, None).await;
        let mut p = reading_client(&prefer).await;
        let mut o = reading_client(&only).await;
        set.replicas[0].kill();
        let primary_gets = calls(&set.primary, "get").await;
        // prefer-replica: reads answered by the primary (a read in flight when the replica went
        // may fail, explicitly).
        cmd_until(&mut p, &["GET", "seeded"], "reads fall back", |r| {
            *r == Reply::Bulk(Some(b"yes".to_vec()))
        })
        .await;
        for _ in 0..10 {
            assert_eq!(p.cmd(&["GET", "seeded"]).await, Reply::Bulk(Some(b"yes".to_vec())));
        }
        assert!(calls(&set.primary, "get").await >= primary_gets + 11);
        // replica: refused clearly, not sent; writes still go to the primary.
        let refused = cmd_until(&mut o, &["GET", "seeded"], "reads refused", |r| {
            matches!(r, Reply::Error(e) if e.contains("no replica"))
        })
        .await;
        assert_eq!(
            refused,
            Reply::Error(
                "ERR respipe: no replica available for reads (read_from = replica); the command was not sent".into()
            )
        );
        assert_eq!(o.cmd(&["SET", "w", "1"]).await, Reply::ok());
        let gets = calls(&set.primary, "get").await;
        assert!(matches!(o.cmd(&["GET", "seeded"]).await, Reply::Error(_)));
        assert_eq!(calls(&set.primary, "get").await, gets, "the primary is not asked");
    })
    .await;
}

/// The commands respipe sends to replicas are those the server flags `readonly`, but the few it
/// keeps on the primary on purpose, and those that restart read-your-writes are those it flags
/// `write`: a command Redis adds or reflags cannot slip through.
#[tokio::test]
async fn reads_and_writes_are_the_commands_redis_flags_so() {
    bounded(LIMIT, "COMMAND flags", async {
        let redis = RedisServer::start().await;
        let mut c = redis.direct().await;
        let Reply::Array(Some(entries)) = c.cmd(&["COMMAND"]).await else {
            panic!("COMMAND");
        };
        let (mut readonly, mut write) = (Vec::new(), Vec::new());
        let mut listed = Vec::new();
        let mut walk = vec![entries];
        while let Some(entries) = walk.pop() {
            for entry in entries {
                let Reply::Array(Some(fields)) = entry else {
                    panic!("COMMAND entry");
                };
                let Reply::Bulk(Some(name)) = &fields[0] else {
                    panic!("COMMAND name");
                };
                let name = String::from_utf8_lossy(name).into_owned();
                let Reply::Array(Some(flags)) = &fields[2] else {
                    panic!("COMMAND flags");
                };
                if flags.contains(&Reply::Simple("readonly".into())) {
                    readonly.push(name.clone());
                }
                if flags.contains(&Reply::Simple("write".into())) {
                    write.push(name.clone());
                }
                listed.push(name);
                if let Some(Reply::Array(Some(subs))) = fields.get(9) {
                    walk.push(subs.clone());
                }
            }
        }
        let ours: Vec<String> = command::READS
            .iter()
            .map(|n| n.to_string())
            .chain(
                command::SUBCOMMAND_READS
                    .iter()
                    .map(|(c, s)| format!("{c}|{s}")),
            )
            .collect();
        let kept: Vec<&str> = command::NOT_ON_REPLICAS.iter().map(|(n, _)| *n).collect();
        for name in &readonly {
            assert!(
                ours.contains(name) || kept.contains(&name.as_str()),
                "{name} is readonly for Redis but not in respipe's reads"
            );
        }
        for name in ours.iter().filter(|n| listed.contains(n)) {
            assert!(readonly.contains(name), "{name} is not readonly for Redis");
        }
        for name in &kept {
            assert!(
                readonly.contains(&name.to_string()),
                "{name} is not readonly for Redis"
            );
        }
        let writes: Vec<String> = command::WRITES
            .iter()
            .map(|n| n.to_string())
            .chain(
                command::SUBCOMMAND_WRITES
                    .iter()
                    .map(|(c, s)| format!("{c}|{s}")),
            )
            .collect();
        for name in &write {
            assert!(
                writes.contains(name),
                "{name} writes for Redis but not in respipe's writes"
            );
        }
        for name in writes.iter().filter(|n| listed.contains(n)) {
            assert!(write.contains(name), "{name} is not write for Redis");
        }
    })
    .await;
}

/// The binary with `--replicas` (the flag's path end to end) counts each replica's reads and
/// reports its lag: 0 in sync, -1 once it cannot be known; `/readyz` follows the primary.
#[tokio::test]
async fn replica_reads_and_lag_are_metrics() {
    bounded(LIMIT, "replica metrics", async {
        let mut set = Replicated::seeded(1, &[("seeded", "yes")]).await;
        let replica = format!("127.0.0.1:{}", set.replicas[0].port());
        let upstream = format!("127.0.0.1:{}", set.primary.port());
        let args = ["--replicas", &replica, "--read-from", "replica"];
        let proxy = common::BinProxy::spawn(&upstream, &args);
        let mut c = reading(proxy.wait_pong().await).await;
        for _ in 0..20 {
            c.cmd(&["GET", "seeded"]).await;
        }
        let reads = format!("respipe_replica_reads_total{{replica=\"{replica}\"}} 21");
        let lag = |v: &str| format!("respipe_replica_lag_bytes{{replica=\"{replica}\"}} {v}");
        let admin = proxy.admin.clone();
        let scrape = || async {
            let (status, body) = common::http_get(&admin, "/metrics")
                .await
                .expect("GET /metrics");
            assert_eq!(status, 200);
            body
        };
        let body = poll_until(Duration::from_secs(10), "lag 0 and 21 reads", || async {
            let body = scrape().await;
            (body.contains(&reads) && body.contains(&lag("0"))).then_some(body)
        })
        .await;
        assert!(
            body.contains("# TYPE respipe_replica_lag_bytes gauge"),
            "{body}"
        );
        // The primary gone: not ready (a replica serves reads only), though reads still work.
        assert_eq!(proxy.status("/readyz").await, 200);
        set.primary.kill();
        proxy
            .wait_status("/readyz", 503, Duration::from_secs(10))
            .await;
        assert_eq!(c.cmd(&["GET", "seeded"]).await, Reply::bulk("yes"));
        // Lag unknown: the primary cannot be asked (nor, then, the replica).
        poll_until(Duration::from_secs(10), "lag unknown", || async {
            scrape().await.contains(&lag("-1")).then_some(())
        })
        .await;
        set.replicas[0].kill();
        assert!(matches!(c.cmd(&["GET", "seeded"]).await, Reply::Error(_)));
    })
    .await;
}

/// With Sentinel, the replicas the sentinels report take the reads, and after a failover those
/// of the new primary do (the old primary among them once it replicates): the primary never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_replicas_take_reads_across_a_failover() {
    bounded(
        Duration::from_secs(90),
        "reads on sentinel replicas",
        async {
            let set = Sentinels::start(SentinelOptions::default()).await;
            let proxy = set
                .proxy(|c| {
                    c.reads = Reads {
                        read_from: ReadFrom::Replica,
                        read_your_writes: None,
                        replicas: Vec::new(),
                    }
                })
                .await;
            let gets = |i: usize| {
                let set = &set;
                async move { ran(set.cmd(i, &["INFO", "commandstats"]).await, "get") }
            };
            let nodes = set.nodes().len();
            for round in ["before", "after"] {
                let primary = set.primary().await;
                let mut c = proxy.raw().await;
                assert_eq!(c.cmd(&["SET", "k", round]).await, Reply::ok());
                // A replica has the write, and this client's reads have reached one.
                cmd_until(&mut c, &["GET", "k"], "a replica takes reads", |r| {
                    *r == Reply::bulk(round)
                })
                .await;
                let mut before = Vec::new();
                for i in 0..nodes {
                    before.push(gets(i).await);
                }
                for _ in 0..20 {
                    assert_eq!(c.cmd(&["GET", "k"]).await, Reply::bulk(round));
                    assert!(matches!(c.cmd(&["INCR", "n"]).await, Reply::Int(_)));
                }
                let mut on_replicas = 0;
                for (i, before) in before.iter().enumerate() {
                    let delta = gets(i).await - before;
                    if i == primary {
                        assert_eq!(delta, 0, "{round}: a read on the primary");
                    } else {
                        on_replicas += delta;
                    }
                }
                assert_eq!(on_replicas, 20, "{round}");
                if round == "before" {
                    let f = set.failover().await;
                    assert_eq!(f.old, primary);
                    set.wait_settled().await;
                }
            }
        },
    )
    .await;
}

/// Many clients at once, each pipelining writes (its own counter) and reads (seeded keys, on its
/// replica) together: every client gets exactly its own replies, in its command order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_their_own_replies_in_order() {
    bounded(LIMIT, "concurrent mixed pipelines", async {
        let seeded: Vec<(String, String)> = (0..50)
            .map(|i| (format!("s{i}"), format!("value-{i}")))
            .collect();
        let pairs: Vec<(&str, &str)> = std::iter::once(("seeded", "yes"))
            .chain(seeded.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let set = Replicated::seeded(2, &pairs).await;
        let proxy = set.proxy(ReadFrom::Replica, None).await;
        let mut clients = Vec::new();
        for client in 0..16 {
            let mut c = reading_client(&proxy).await;
            clients.push(tokio::spawn(async move {
                for round in 0..50 {
                    let mut cmds = Vec::new();
                    let mut want = Vec::new();
                    for i in 0..8 {
                        let n = round * 8 + i + 1;
                        let s = (client * 7 + n) % 50;
                        cmds.push(vec!["INCR".to_owned(), format!("c{client}")]);
                        want.push(Reply::Int(n as i64));
                        cmds.push(vec!["GET".to_owned(), format!("s{s}")]);
                        want.push(Reply::bulk(format!("value-{s}")));
                        cmds.push(vec![
                            "SET".to_owned(),
                            format!("own{client}"),
                            n.to_string(),
                        ]);
                        want.push(Reply::ok());
                    }
                    assert_eq!(
                        run(&mut c, cmds).await,
                        want,
                        "client {client} round {round}"
                    );
                }
            }));
        }
        for client in clients {
            client.await.expect("a client's task");
        }
        assert_eq!(
            calls(&set.primary, "get").await,
            0,
            "every read on a replica"
        );
    })
    .await;
}
