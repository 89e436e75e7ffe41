//! A primary with replicas watched by Redis Sentinel, on loopback, for the tests (TOPOLOGY.md
//! section 4): `redis-server` data nodes (the first the primary, the others `replicaof` it) and
//! Debian's `redis-sentinel` processes monitoring them as [`MASTER`], each on a free port with its
//! own directory and a configuration file the test writes fresh (Sentinel and Redis rewrite them:
//! a restart on the same port with the same file keeps what they learned). Every process is
//! SIGKILLed on drop. Besides starting them: ask a sentinel who the primary is, fail over
//! (`SENTINEL FAILOVER`) or kill the primary and wait for the promotion, restart a node, stop and
//! start a sentinel, and start respipe in front of them.
//!
//! Nodes and sentinels are indexed in start order and keep their index for life; roles change (a
//! failover), so the primary is always asked, never remembered. Every wait is bounded.
//!
//! In a test:
//! ```text
//! let set = Sentinels::start(SentinelOptions::default()).await; // 1 + 2 nodes, 3 sentinels
//! let proxy = set.proxy(|_| {}).await;             // respipe in-process, once it serves
//! let f = set.failover().await;                    // SENTINEL FAILOVER, the new primary named
//! // f.old, f.new: node indices; f.promoted: when f.new first said ROLE master
//! let killed = set.kill_primary().await;           // SIGKILL; killed.old, killed.at
//! let f = set.wait_promoted(&killed).await;        // a replica says ROLE master (measure here)
//! set.wait_named(f.new).await;                     // every sentinel names it
//! set.restart(f.old).await;                        // back on its port (empty), made a replica
//! set.wait_settled().await;                        // every node linked, every sentinel agreed
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use respipe::config::{Topology, Upstream};
use respipe::sentinel::Spec;
use respipe::Config;

use super::cluster::{ask, info_field, wait_started};
use super::{
    free_port, ping_direct, poll_until, BinProxy, Proxy, RawClient, Reply, POLL, START_DEADLINE,
};

/// The master name the sentinels monitor.
pub const MASTER: &str = "mymaster";

/// How long the sentinels may take to agree (every one names the primary and knows the replicas
/// and the other sentinels) after a start, a failover or a restart.
pub const SENTINEL_DEADLINE: Duration = Duration::from_secs(60);

/// How a [`Sentinels`] set is set up.
#[derive(Debug, Clone)]
pub struct SentinelOptions {
    /// Replicas of the primary.
    pub replicas: usize,
    /// Sentinel processes.
    pub sentinels: usize,
    /// Sentinels that must agree the primary is down before one fails it over.
    pub quorum: usize,
    /// `sentinel down-after-milliseconds`: how long the primary may not answer before a sentinel
    /// thinks it is down.
    pub down_after_ms: u64,
    /// `sentinel failover-timeout`.
    pub failover_timeout_ms: u64,
    /// The data nodes' `requirepass` and `masterauth` (and the sentinels' `auth-pass`); the
    /// harness and respipe authenticate with it.
    pub password: Option<String>,
    /// The sentinels' own `requirepass`.
    pub sentinel_password: Option<String>,
    /// Extra `redis-server` arguments for every data node.
    pub redis_args: Vec<String>,
}

impl Default for SentinelOptions {
    /// A primary with 2 replicas, 3 sentinels with a quorum of 2, down after 2 s (no spurious
    /// failover on a busy machine), failover timeout 10 s, no passwords.
    fn default() -> Self {
        SentinelOptions {
            replicas: 2,
            sentinels: 3,
            quorum: 2,
            down_after_ms: 2000,
            failover_timeout_ms: 10_000,
            password: None,
            sentinel_password: None,
            redis_args: Vec::new(),
        }
    }
}

/// One process of the set: a data node or a sentinel. Its directory (configuration file, log)
/// outlives restarts.
#[derive(Debug)]
pub struct Proc {
    port: u16,
    dir: PathBuf,
    /// `None` while killed.
    child: Option<Child>,
}

impl Proc {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, `None` while killed.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The configuration file the process was started with (and rewrites).
    pub fn conf(&self) -> PathBuf {
        self.dir.join("server.conf")
    }

    /// The process's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Spawns `program CONF args` and waits until it answers PING (after `AUTH password`); false
    /// if it exited first (its port taken).
    async fn spawn(&mut self, program: &str, args: &[String], password: Option<&str>) -> bool {
        let child = Command::new(program)
            .arg(self.conf())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} (is it installed?): {e}"));
        self.child = Some(child);
        let (what, addr, log) = (
            format!("{program} on port {}", self.port),
            self.addr(),
            self.log(),
        );
        wait_started(&mut self.child, &what, &log, || ping_direct(addr, password)).await
    }
}

/// A failover asked for or caused ([`Sentinels::begin_failover`], [`Sentinels::kill_primary`])
/// and not yet waited for.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The primary being replaced (a node index).
    pub old: usize,
    /// When the failover was accepted, or the primary killed.
    pub at: Instant,
    /// The nodes that replicated it: one of them is promoted.
    candidates: Vec<usize>,
}

/// A failover the set went through (node indices).
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// The primary before.
    pub old: usize,
    /// The replica promoted.
    pub new: usize,
    /// When `new` was first seen saying `ROLE` master (polled every [`POLL`]).
    pub promoted: Instant,
}

/// Data nodes and sentinels on loopback; every process is SIGKILLed on drop.
pub struct Sentinels {
    options: SentinelOptions,
    nodes: Vec<Proc>,
    sentinels: Vec<Proc>,
    /// Holds every process's directory.
    dir: tempfile::TempDir,
}

impl Sentinels {
    /// Starts the primary, then its replicas, waits until they are linked, then starts the
    /// sentinels and waits (bounded) until every one names the primary and knows every replica
    /// and every other sentinel.
    pub async fn start(options: SentinelOptions) -> Sentinels {
        assert!(
            options.sentinels >= options.quorum,
            "quorum above the sentinels"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut set = Sentinels {
            options,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            dir,
        };
        for i in 0..=set.options.replicas {
            let node = set.new_proc(&format!("node{i}"));
            set.nodes.push(node);
            let primary = (i > 0).then(|| set.nodes[0].port);
            set.spawn_node_on_free_port(i, primary).await;
        }
        set.wait_linked(0).await;
        for i in 0..set.options.sentinels {
            let sentinel = set.new_proc(&format!("sentinel{i}"));
            set.sentinels.push(sentinel);
            set.spawn_sentinel_on_free_port(i).await;
        }
        set.wait_settled().await;
        set
    }

    /// The options it was started with.
    pub fn options(&self) -> &SentinelOptions {
        &self.options
    }

    /// Every data node, by index (killed ones included); node 0 was the first primary.
    pub fn nodes(&self) -> &[Proc] {
        &self.nodes
    }

    /// Every sentinel, by index (stopped ones included).
    pub fn sentinels(&self) -> &[Proc] {
        &self.sentinels
    }

    /// The index of the data node at `addr`.
    pub fn node(&self, addr: SocketAddr) -> usize {
        self.nodes
            .iter()
            .position(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("no data node at {addr}"))
    }

    /// Indices of the running data nodes.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running())
    }

    /// Indices of the running sentinels.
    pub fn running_sentinels(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.sentinels.len()).filter(|&i| self.sentinels[i].is_running())
    }

    /// `redis-sentinel://[:SENTINEL_PASSWORD@]S1,S2,S3/mymaster`: respipe's `--upstream` (every
    /// sentinel, running or not, in index order; the data nodes' password goes apart).
    pub fn url(&self) -> String {
        let auth = match &self.options.sentinel_password {
            Some(pw) => format!(":{pw}@"),
            None => String::new(),
        };
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect();
        format!("redis-sentinel://{auth}{}/{MASTER}", hosts.join(","))
    }

    /// A direct client of data node `i` (authenticated when the nodes have a password).
    pub async fn direct(&self, i: usize) -> RawClient {
        let mut c = RawClient::connect(self.nodes[i].addr()).await;
        if let Some(pw) = &self.options.password {
            assert_eq!(c.cmd(&["AUTH", pw]).await, Reply::ok(), "AUTH on node {i}");
        }
        c
    }

    /// One command to data node `i`.
    pub async fn cmd(&self, i: usize, args: &[&str]) -> Reply {
        self.direct(i).await.cmd(args).await
    }

    /// One command to data node `i`; `None` if it does not answer within 2 s.
    pub async fn try_cmd(&self, i: usize, args: &[&str]) -> Option<Reply> {
        let password = self.options.password.as_deref();
        ask(self.nodes[i].addr(), password, args).await
    }

    /// One command to sentinel `s`; `None` if it does not answer within 2 s.
    pub async fn sentinel_cmd(&self, s: usize, args: &[&str]) -> Option<Reply> {
        let password = self.options.sentinel_password.as_deref();
        ask(self.sentinels[s].addr(), password, args).await
    }

    /// The first element of data node `i`'s `ROLE` (`master`, `slave`); `None` if it does not
    /// answer.
    pub async fn role(&self, i: usize) -> Option<String> {
        match self.try_cmd(i, &["ROLE"]).await? {
            Reply::Array(Some(items)) => match items.first()? {
                Reply::Bulk(Some(role)) => String::from_utf8(role.clone()).ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The primary as sentinel `s` names it (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub async fn named_by(&self, s: usize) -> Option<SocketAddr> {
        let reply = self
            .sentinel_cmd(s, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER])
            .await?;
        let Reply::Array(Some(items)) = reply else {
            return None;
        };
        let [Reply::Bulk(Some(host)), Reply::Bulk(Some(port))] = &items[..] else {
            return None;
        };
        format!(
            "{}:{}",
            String::from_utf8_lossy(host),
            String::from_utf8_lossy(port)
        )
        .parse()
        .ok()
    }

    /// The primary's address as the first running sentinel that answers names it.
    pub async fn primary_addr(&self) -> SocketAddr {
        poll_until(
            SENTINEL_DEADLINE,
            "a sentinel names the primary",
            || async {
                for s in self.running_sentinels() {
                    if let Some(addr) = self.named_by(s).await {
                        return Some(addr);
                    }
                }
                None
            },
        )
        .await
    }

    /// The index of the primary as the sentinels name it.
    pub async fn primary(&self) -> usize {
        self.node(self.primary_addr().await)
    }

    /// `SENTINEL FAILOVER` on the first running sentinel, then [`Sentinels::wait_promotion`].
    pub async fn failover(&self) -> Failover {
        let pending = self.begin_failover().await;
        self.wait_promotion(&pending).await
    }

    /// `SENTINEL FAILOVER` on the first running sentinel (asked again while it answers
    /// `-NOGOODSLAVE` or `-INPROG`: the replicas are not ready yet); returns once it is accepted.
    pub async fn begin_failover(&self) -> Pending {
        let pending = self.pending().await;
        let s = self.running_sentinels().next().expect("a running sentinel");
        poll_until(SENTINEL_DEADLINE, "SENTINEL FAILOVER accepted", || async {
            let reply = self
                .sentinel_cmd(s, &["SENTINEL", "FAILOVER", MASTER])
                .await;
            (reply == Some(Reply::ok())).then_some(())
        })
        .await;
        Pending {
            at: Instant::now(),
            ..pending
        }
    }

    /// SIGKILLs the primary the sentinels name; the sentinels fail it over in their own time
    /// (`down_after_ms`, then an election).
    pub async fn kill_primary(&mut self) -> Pending {
        let pending = self.pending().await;
        self.kill(pending.old);
        Pending {
            at: Instant::now(),
            ..pending
        }
    }

    /// [`Sentinels::wait_promoted`], then [`Sentinels::wait_named`].
    pub async fn wait_promotion(&self, pending: &Pending) -> Failover {
        let failover = self.wait_promoted(pending).await;
        self.wait_named(failover.new).await;
        failover
    }

    /// Waits (bounded, polling every [`POLL`]) until one of the replicas of the failover's old
    /// primary says `ROLE` master.
    pub async fn wait_promoted(&self, pending: &Pending) -> Failover {
        let (new, promoted) = poll_until(SENTINEL_DEADLINE, "a replica promoted", || async {
            for &i in &pending.candidates {
                if self.role(i).await.as_deref() == Some("master") {
                    return Some((i, Instant::now()));
                }
            }
            None
        })
        .await;
        Failover {
            old: pending.old,
            new,
            promoted,
        }
    }

    /// Waits (bounded) until every running sentinel names data node `new` as the primary.
    pub async fn wait_named(&self, new: usize) {
        let addr = self.nodes[new].addr();
        poll_until(
            SENTINEL_DEADLINE,
            "every sentinel names the new primary",
            || async {
                for s in self.running_sentinels() {
                    if self.named_by(s).await != Some(addr) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// The primary now and the running nodes that replicate it: what a failover starts from
    /// (`at`: now). A test that must kill the primary where it cannot wait (a `drill::Restart`)
    /// takes this first, then [`Sentinels::kill`]s `old` and sets `at`.
    pub async fn pending(&self) -> Pending {
        let old = self.primary().await;
        let candidates = self.replicas_of(old).await;
        assert!(
            !candidates.is_empty(),
            "node {old} has no replica to promote"
        );
        Pending {
            old,
            at: Instant::now(),
            candidates,
        }
    }

    /// SIGKILLs data node `i` (and reaps it).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Sends `sig` to data node `i` (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, i: usize, sig: i32) {
        let pid = self.nodes[i].pid().expect("node is running");
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Starts killed data node `i` again on its port with its configuration file (as Redis or
    /// Sentinel last rewrote it; the dataset empty) and waits until it answers PING. The
    /// sentinels make it a replica of the primary in their own time: see
    /// [`Sentinels::wait_settled`].
    pub async fn restart(&mut self, i: usize) {
        assert!(
            !self.nodes[i].is_running(),
            "kill node {i} before restarting it"
        );
        let args = self.options.redis_args.clone();
        let password = self.options.password.clone();
        let deadline = Instant::now() + START_DEADLINE;
        // The killed process's port may linger for a moment: try again until it binds.
        while !self.nodes[i]
            .spawn("redis-server", &args, password.as_deref())
            .await
        {
            assert!(Instant::now() < deadline, "node {i} could not be restarted");
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILLs sentinel `s`.
    pub fn stop_sentinel(&mut self, s: usize) {
        self.sentinels[s].kill();
    }

    /// Starts stopped sentinel `s` again on its port with its configuration file (which it
    /// rewrote: it remembers the master, the replicas, the other sentinels and the epoch) and
    /// waits until it answers PING.
    pub async fn start_sentinel(&mut self, s: usize) {
        assert!(
            !self.sentinels[s].is_running(),
            "stop sentinel {s} before starting it"
        );
        let password = self.options.sentinel_password.clone();
        let deadline = Instant::now() + START_DEADLINE;
        while !self.sentinels[s]
            .spawn("redis-sentinel", &[], password.as_deref())
            .await
        {
            assert!(
                Instant::now() < deadline,
                "sentinel {s} could not be restarted"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (bounded by [`SENTINEL_DEADLINE`]) until every running sentinel names the same
    /// primary, which says `ROLE` master, every other running node is its replica with its link
    /// up, and every running sentinel lists those replicas as up and linked and knows every other
    /// sentinel.
    pub async fn wait_settled(&self) {
        poll_until(SENTINEL_DEADLINE, "the sentinels settled", || async {
            self.settled().await.then_some(())
        })
        .await
    }

    /// Waits (bounded by [`SENTINEL_DEADLINE`]) until every running sentinel names the same
    /// primary, which says `ROLE` master, and every other running node is its replica with its
    /// link up: what another failover needs. What the sentinels know of the replicas may lag
    /// (they ask each every 10 s): [`Sentinels::wait_settled`] waits for that too.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + SENTINEL_DEADLINE;
        loop {
            if let Some(p) = self.agreed_primary().await {
                if self.linked(p).await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no primary named with its replicas linked within {SENTINEL_DEADLINE:?}: {}",
                self.describe().await
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// What every node and sentinel says now (for failure messages): each node's role and
    /// primary, each sentinel's primary.
    pub async fn describe(&self) -> String {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            let what = match self.info(i).await {
                None => "down".to_owned(),
                Some(info) => {
                    let f = |k| info_field(&info, k).unwrap_or("-").to_owned();
                    let link = f("master_link_status");
                    format!("{} of {} link {link}", f("role"), f("master_port"))
                }
            };
            out.push(format!("node {i} (port {}): {what}", self.nodes[i].port));
        }
        for s in 0..self.sentinels.len() {
            out.push(format!("sentinel {s} names {:?}", self.named_by(s).await));
        }
        out.join("; ")
    }

    /// respipe in-process in front of the set (`Topology::Sentinel` over every sentinel; the data
    /// nodes' password as the upstream's), with `tweak` applied to the defaults, once a write
    /// through it lands on the primary.
    pub async fn proxy(&self, tweak: impl FnOnce(&mut Config)) -> Proxy {
        let sentinels: Vec<Upstream> = self
            .sentinels
            .iter()
            .map(|s| Upstream {
                password: self.options.sentinel_password.clone(),
                ..Upstream::tcp("127.0.0.1", s.port)
            })
            .collect();
        let data = Upstream {
            password: self.options.password.clone(),
            ..Upstream::tcp("127.0.0.1", self.sentinels[0].port)
        };
        let spec = Spec {
            sentinels,
            master: MASTER.to_owned(),
        };
        let proxy = Proxy::start(self.sentinels[0].port, |c| {
            c.upstream = data;
            c.topology = Topology::Sentinel(spec);
            tweak(c);
        })
        .await;
        self.wait_serving(proxy.addr()).await;
        proxy
    }

    /// respipe's binary in front of the set (`--upstream` [`Sentinels::url`], the data nodes'
    /// password with `--upstream-password`, plus `extra`), once a write through it lands on the
    /// primary.
    pub async fn respipe(&self, extra: &[&str]) -> BinProxy {
        let url = self.url();
        let mut args = vec!["--upstream", url.as_str()];
        if let Some(pw) = &self.options.password {
            args.extend(["--upstream-password", pw.as_str()]);
        }
        args.extend(extra);
        let proxy = BinProxy::spawn_with(&args);
        self.wait_serving(proxy.listen).await;
        proxy
    }

    /// Waits (bounded) until a `SET` through the proxy at `addr` answers `+OK` and the key is on
    /// the primary the sentinels name; then deletes it.
    pub async fn wait_serving(&self, addr: SocketAddr) {
        let key = "respipe-harness-probe";
        poll_until(START_DEADLINE, "respipe writes to the primary", || async {
            let mut c = RawClient::try_connect(addr).await.ok()?;
            let args = ["SET", key, "1"];
            let set = c.cmd(&args);
            if tokio::time::timeout(Duration::from_secs(2), set)
                .await
                .ok()?
                != Reply::ok()
            {
                return None;
            }
            let primary = self.primary().await;
            (self.try_cmd(primary, &["GET", key]).await? == Reply::bulk("1")).then_some(())
        })
        .await;
        let primary = self.primary().await;
        self.cmd(primary, &["DEL", key]).await;
    }

    // -----------------------------------------------------------------------------------------

    /// A process entry with its own directory under the set's (not started).
    fn new_proc(&self, name: &str) -> Proc {
        let dir = self.dir.path().join(name);
        std::fs::create_dir(&dir).expect("process dir");
        Proc {
            port: 0,
            dir,
            child: None,
        }
    }

    /// Writes data node `i`'s configuration for a fresh free port (a replica of the node on
    /// `primary`, if given) and starts it, retrying another port if the one probed is taken.
    async fn spawn_node_on_free_port(&mut self, i: usize, primary: Option<u16>) {
        let args = self.options.redis_args.clone();
        let password = self.options.password.clone();
        for _ in 0..20 {
            let node = &mut self.nodes[i];
            node.port = free_port();
            let mut conf = format!(
                "port {}\nbind 127.0.0.1\ndir \"{}\"\nlogfile \"{}\"\nsave \"\"\nappendonly no\n\
                 maxclients 10000\nrepl-diskless-sync-delay 0\n",
                node.port,
                node.dir.display(),
                node.log().display()
            );
            if let Some(pw) = &password {
                conf.push_str(&format!("requirepass \"{pw}\"\nmasterauth \"{pw}\"\n"));
            }
            if let Some(p) = primary {
                conf.push_str(&format!("replicaof 127.0.0.1 {p}\n"));
            }
            std::fs::write(node.conf(), conf).expect("write redis.conf");
            if node.spawn("redis-server", &args, password.as_deref()).await {
                return;
            }
        }
        panic!("could not start data node {i} on any free port");
    }

    /// Writes sentinel `s`'s configuration for a fresh free port (monitoring node 0 as
    /// [`MASTER`]) and starts it, retrying another port if the one probed is taken.
    async fn spawn_sentinel_on_free_port(&mut self, s: usize) {
        let o = self.options.clone();
        let primary = self.nodes[0].port;
        for _ in 0..20 {
            let sentinel = &mut self.sentinels[s];
            sentinel.port = free_port();
            let mut conf = format!(
                "port {}\nbind 127.0.0.1\ndir \"{}\"\nlogfile \"{}\"\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} {}\n\
                 sentinel down-after-milliseconds {MASTER} {}\n\
                 sentinel failover-timeout {MASTER} {}\n",
                sentinel.port,
                sentinel.dir.display(),
                sentinel.log().display(),
                o.quorum,
                o.down_after_ms,
                o.failover_timeout_ms
            );
            if let Some(pw) = &o.password {
                conf.push_str(&format!("sentinel auth-pass {MASTER} \"{pw}\"\n"));
            }
            if let Some(pw) = &o.sentinel_password {
                conf.push_str(&format!("requirepass \"{pw}\"\n"));
            }
            std::fs::write(sentinel.conf(), conf).expect("write sentinel.conf");
            let password = o.sentinel_password.as_deref();
            if sentinel.spawn("redis-sentinel", &[], password).await {
                return;
            }
        }
        panic!("could not start sentinel {s} on any free port");
    }

    /// The running nodes that say they replicate node `p`.
    async fn replicas_of(&self, p: usize) -> Vec<usize> {
        let port = self.nodes[p].port.to_string();
        let mut out = Vec::new();
        for i in self.running().filter(|&i| i != p).collect::<Vec<_>>() {
            let Some(info) = self.info(i).await else {
                continue;
            };
            if info_field(&info, "role") == Some("slave")
                && info_field(&info, "master_port") == Some(port.as_str())
            {
                out.push(i);
            }
        }
        out
    }

    /// `INFO replication` of node `i`; `None` if it does not answer.
    async fn info(&self, i: usize) -> Option<String> {
        match self.try_cmd(i, &["INFO", "replication"]).await? {
            Reply::Bulk(Some(b)) => String::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Waits until every running node but `p` replicates node `p` with its link up.
    async fn wait_linked(&self, p: usize) {
        poll_until(SENTINEL_DEADLINE, "the replicas linked", || async {
            self.linked(p).await.then_some(())
        })
        .await
    }

    /// True if node `p` says master and every other running node replicates it, link up.
    async fn linked(&self, p: usize) -> bool {
        if self.role(p).await.as_deref() != Some("master") {
            return false;
        }
        let port = self.nodes[p].port.to_string();
        for i in self.running().filter(|&i| i != p).collect::<Vec<_>>() {
            let Some(info) = self.info(i).await else {
                return false;
            };
            if info_field(&info, "role") != Some("slave")
                || info_field(&info, "master_port") != Some(port.as_str())
                || info_field(&info, "master_link_status") != Some("up")
            {
                return false;
            }
        }
        true
    }

    /// The data node every running sentinel names as the primary; `None` while they disagree or
    /// one does not answer.
    async fn agreed_primary(&self) -> Option<usize> {
        let mut named = None;
        for s in self.running_sentinels() {
            let addr = self.named_by(s).await?;
            if *named.get_or_insert(addr) != addr {
                return None;
            }
        }
        self.nodes.iter().position(|n| Some(n.addr()) == named)
    }

    /// See [`Sentinels::wait_settled`].
    async fn settled(&self) -> bool {
        let Some(p) = self.agreed_primary().await else {
            return false;
        };
        if !self.linked(p).await {
            return false;
        }
        let others = self.options.sentinels - 1;
        for s in self.running_sentinels() {
            if !self.sentinel_knows(s, p, others).await {
                return false;
            }
        }
        true
    }

    /// True if sentinel `s` sees primary `p` up, knows `others` other sentinels, and lists every
    /// other running node as its replica, up and linked.
    async fn sentinel_knows(&self, s: usize, p: usize, others: usize) -> bool {
        let Some(master) = self.sentinel_cmd(s, &["SENTINEL", "MASTER", MASTER]).await else {
            return false;
        };
        let master = pairs(&master);
        if get(&master, "flags") != Some("master")
            || get(&master, "num-other-sentinels") != Some(others.to_string().as_str())
        {
            return false;
        }
        let Some(Reply::Array(Some(replicas))) = self
            .sentinel_cmd(s, &["SENTINEL", "REPLICAS", MASTER])
            .await
        else {
            return false;
        };
        let replicas: Vec<Vec<(String, String)>> = replicas.iter().map(pairs).collect();
        let primary_port = self.nodes[p].port.to_string();
        self.running().filter(|&i| i != p).all(|i| {
            let port = self.nodes[i].port.to_string();
            replicas.iter().any(|r| {
                get(r, "port") == Some(port.as_str())
                    && get(r, "flags") == Some("slave")
                    && get(r, "master-link-status") == Some("ok")
                    && get(r, "master-port") == Some(primary_port.as_str())
            })
        })
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for p in self.nodes.iter_mut().chain(self.sentinels.iter_mut()) {
            if let Some(pid) = p.pid() {
                // A stopped process still dies on SIGKILL, but resume it anyway so nothing lingers.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            p.kill();
        }
    }
}

/// A sentinel's flat `key, value, ...` reply as pairs (empty if it is not one).
fn pairs(reply: &Reply) -> Vec<(String, String)> {
    let Reply::Array(Some(items)) = reply else {
        return Vec::new();
    };
    let text = |r: &Reply| match r {
        Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    items
        .chunks(2)
        .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
        .collect()
}

/// The value of `key` in [`pairs`].
fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
