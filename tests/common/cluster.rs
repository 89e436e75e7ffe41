//! A real Redis Cluster on loopback for the tests (TOPOLOGY.md section 3): N primaries and R
//! replicas each, `redis-server --cluster-enabled yes` on free ports, joined with
//! `redis-cli --cluster create`, every process SIGKILLed on drop. Besides starting it: kill,
//! restart (on the same port or on another one with the same `nodes.conf`, so the node keeps its id
//! and changes its address), fail over, migrate a slot step by step (so a test can hold it
//! half-migrated), ask who owns a slot, and start respipe in front of it.
//!
//! Nodes are indexed in start order and keep their index for life; roles change (a failover), so
//! roles and owners are always asked of the running nodes, never remembered. Every wait is bounded.
//!
//! In a test:
//! ```text
//! let mut cluster = Cluster::start(ClusterOptions::default()).await; // 3 + 3, node timeout 5 s
//! let proxy = cluster.respipe(&[]).await;           // the binary, once /readyz says 200
//! let p = cluster.primaries().await[0];
//! let key = cluster.key_on(p, "name").await;        // `{TAG}name`, a key p owns
//! let m = cluster.begin_migration(slot, to).await;  // IMPORTING + MIGRATING: -ASK from now on
//! cluster.migrate_keys(m, 10).await;                // some keys moved, the slot half-migrated
//! cluster.finish_migration(m).await;                // the rest, then SETSLOT NODE everywhere
//! cluster.kill(p);                                  // SIGKILL; its replica r takes over:
//! let promoted_at = cluster.wait_primary(r).await;
//! cluster.wait_ok().await;                          // ok, agreed and linked everywhere again
//! ```

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use respipe::cluster::{key_slot, Spec, SLOTS};
use respipe::config::{Topology, Upstream};
use respipe::Config;

use super::{
    encode, poll_until, wait_child, BinProxy, Proxy, RawClient, Reply, ReplyReader, CMD_UNTIL,
    POLL, START_DEADLINE,
};

/// How long the cluster may take to agree (`cluster_state:ok` everywhere, one slot map, replicas
/// linked) after a start, a failover, a restart or a migration.
pub const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

/// Client ports are taken from here up (each node also needs PORT + 10000 for its cluster bus;
/// both stay below the kernel's ephemeral range, 32768+, so no outgoing connection holds them).
const PORT_LOW: u32 = 10_000;
/// One past the last client port tried.
const PORT_HIGH: u32 = 22_000;
/// The cluster bus port is the client port plus this (Redis's fixed offset).
const BUS_OFFSET: u16 = 10_000;

/// How a [`Cluster`] is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Primaries (`redis-cli --cluster create` needs at least 3).
    pub primaries: usize,
    /// Replicas of each primary.
    pub replicas: usize,
    /// `cluster-node-timeout`: how long a node may be unreachable before it is failed (and its
    /// replica promoted).
    pub node_timeout_ms: u64,
    /// `--requirepass` and `--masterauth` for every node; the harness authenticates with it.
    pub password: Option<String>,
    /// Extra `redis-server` arguments for every node (e.g. `--cluster-require-full-coverage no`).
    pub redis_args: Vec<String>,
}

impl Default for ClusterOptions {
    /// 3 primaries with a replica each, a node timeout of 5 s (no spurious failovers on a busy
    /// machine), no password.
    fn default() -> Self {
        ClusterOptions {
            primaries: 3,
            replicas: 1,
            node_timeout_ms: 5000,
            password: None,
            redis_args: Vec::new(),
        }
    }
}

/// What a node is now (`INFO replication` `role:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// One redis-server of the cluster. Its directory (`nodes.conf`, `redis.log`) outlives restarts.
#[derive(Debug)]
pub struct Node {
    port: u16,
    dir: PathBuf,
    /// `None` while killed.
    child: Option<Child>,
    /// The node id (`CLUSTER MYID`), which a restart keeps.
    id: String,
}

impl Node {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The cluster node id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The process id, `None` while killed.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A slot's primary as one node sees it: `(first slot, last slot, primary's port)`.
type SlotRange = (u16, u16, u16);

/// A Redis Cluster on loopback; every node is SIGKILLed on drop.
pub struct Cluster {
    nodes: Vec<Node>,
    options: ClusterOptions,
    /// Holds every node's directory.
    dir: tempfile::TempDir,
}

/// A slot being moved from one primary to another, one step at a time: after
/// [`Cluster::begin_migration`] the source answers `-ASK` for keys it no longer has, the target
/// accepts `ASKING`; [`Cluster::migrate_keys`] moves keys; [`Cluster::finish_migration`] gives the
/// slot to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub slot: u16,
    /// The node index of the source primary.
    pub from: usize,
    /// The node index of the target primary.
    pub to: usize,
}

impl Cluster {
    /// Starts `primaries × (1 + replicas)` nodes on free ports, creates the cluster and waits
    /// (bounded) until it is ok everywhere, every node agrees on the slot map and every replica is
    /// linked to its primary.
    pub async fn start(options: ClusterOptions) -> Cluster {
        assert!(options.primaries >= 3, "redis-cli needs 3 primaries");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            nodes: Vec::new(),
            options,
            dir,
        };
        let total = cluster.options.primaries * (1 + cluster.options.replicas);
        for i in 0..total {
            let node_dir = cluster.dir.path().join(format!("node{i}"));
            std::fs::create_dir(&node_dir).expect("node dir");
            let mut node = Node {
                port: 0,
                dir: node_dir,
                child: None,
                id: String::new(),
            };
            cluster.spawn_on_free_port(&mut node).await;
            cluster.nodes.push(node);
        }
        cluster.create().await;
        for i in 0..total {
            let id = match cluster.cmd(i, &["CLUSTER", "MYID"]).await {
                Reply::Bulk(Some(id)) => String::from_utf8(id).expect("utf-8 node id"),
                other => panic!("CLUSTER MYID on node {i}: {other:?}"),
            };
            cluster.nodes[i].id = id;
        }
        cluster.wait_ok().await;
        cluster
    }

    /// Every node, by index (killed ones included).
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The options it was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// The running nodes' `HOST:PORT`s, comma-separated: the seed list of `redis-cluster://`.
    pub fn seeds(&self) -> String {
        self.seeds_of(&self.running().collect::<Vec<_>>())
    }

    /// Nodes `nodes`' `HOST:PORT`s (running or not), comma-separated, in that order.
    pub fn seeds_of(&self, nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(|&i| self.nodes[i].addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis-cluster://[:PASSWORD@]SEEDS`: respipe's `--upstream` for this cluster (its seeds: the
    /// running nodes).
    pub fn upstream_url(&self) -> String {
        self.upstream_url_with(&self.seeds())
    }

    /// [`Cluster::upstream_url`] with these `seeds` (a [`Cluster::seeds_of`] list).
    pub fn upstream_url_with(&self, seeds: &str) -> String {
        let auth = match &self.options.password {
            Some(pw) => format!(":{pw}@"),
            None => String::new(),
        };
        format!("redis-cluster://{auth}{seeds}")
    }

    /// Indices of the running nodes.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_running())
    }

    /// A direct client of node `i` (authenticated when the cluster has a password).
    pub async fn direct(&self, i: usize) -> RawClient {
        let mut c = RawClient::connect(self.nodes[i].addr()).await;
        if let Some(pw) = &self.options.password {
            assert_eq!(c.cmd(&["AUTH", pw]).await, Reply::ok(), "AUTH on node {i}");
        }
        c
    }

    /// Sends one command to node `i` directly.
    pub async fn cmd(&self, i: usize, args: &[&str]) -> Reply {
        self.direct(i).await.cmd(args).await
    }

    /// What node `i` is now.
    pub async fn role(&self, i: usize) -> Role {
        let info = self.info(i, "replication").await;
        match info_field(&info, "role") {
            Some("master") => Role::Primary,
            Some("slave") => Role::Replica,
            other => panic!("node {i}: role {other:?}"),
        }
    }

    /// The running nodes that own slots now, ordered by their lowest slot (as the first running
    /// node sees it).
    pub async fn primaries(&self) -> Vec<usize> {
        let view = self.view(self.any_running()).await;
        let mut out = Vec::new();
        for (_, _, port) in view {
            let i = self.index_of(port);
            if !out.contains(&i) {
                out.push(i);
            }
        }
        out
    }

    /// The running nodes that replicate primary `p` now.
    pub async fn replicas_of(&self, p: usize) -> Vec<usize> {
        let mut out = Vec::new();
        for i in self.running().filter(|&i| i != p).collect::<Vec<_>>() {
            let info = self.info(i, "replication").await;
            if info_field(&info, "role") == Some("slave")
                && info_field(&info, "master_port") == Some(&self.nodes[p].port.to_string())
            {
                out.push(i);
            }
        }
        out
    }

    /// The node that owns `slot`, as the first running node sees it.
    pub async fn primary_of(&self, slot: u16) -> usize {
        let view = self.view(self.any_running()).await;
        let port =
            owner_in(&view, slot).unwrap_or_else(|| panic!("slot {slot} has no owner in {view:?}"));
        self.index_of(port)
    }

    /// The node that owns `key`'s slot.
    pub async fn primary_of_key(&self, key: &str) -> usize {
        self.primary_of(key_slot(key.as_bytes())).await
    }

    /// Every slot's owner (a node index), as the first running node sees it.
    pub async fn slot_owners(&self) -> Vec<usize> {
        let mut owners = vec![usize::MAX; SLOTS];
        for (first, last, port) in self.view(self.any_running()).await {
            let i = self.index_of(port);
            owners[usize::from(first)..=usize::from(last)].fill(i);
        }
        owners
    }

    /// `GET key` asked directly of the node that owns its slot.
    pub async fn get_on_owner(&self, key: &str) -> Reply {
        let owner = self.primary_of_key(key).await;
        self.cmd(owner, &["GET", key]).await
    }

    /// Waits (bounded by [`CLUSTER_DEADLINE`]) until every running node says `cluster_state:ok`,
    /// all of them report the same slot map with every slot owned by a running node, and every
    /// running replica's link to its primary is up.
    pub async fn wait_ok(&self) {
        poll_until(CLUSTER_DEADLINE, "cluster ok and agreed", || async {
            self.agreed().await.then_some(())
        })
        .await
    }

    /// SIGKILLs node `i` (and reaps it).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Stops node `i` with `SHUTDOWN SAVE` (its dataset written to `dump.rdb` in its directory,
    /// which a restart loads) and reaps it.
    pub async fn shutdown_saving(&mut self, i: usize) {
        let mut c = self.direct(i).await;
        c.send(&encode(&["SHUTDOWN", "SAVE"])).await;
        // Redis answers nothing: it closes the connection when it exits.
        let closed = tokio::time::timeout(CLUSTER_DEADLINE, c.try_read_reply()).await;
        assert!(
            matches!(closed, Ok(Ok(None)) | Ok(Err(_))),
            "SHUTDOWN SAVE on {i}: {closed:?}"
        );
        let child = self.nodes[i].child.take().expect("node is running");
        let status = wait_or_kill(child, START_DEADLINE).await;
        assert!(
            status.is_some(),
            "node {i} did not exit after SHUTDOWN SAVE"
        );
    }

    /// Sends `sig` to node `i` (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, i: usize, sig: i32) {
        let pid = self.nodes[i].pid().expect("node is running");
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Starts node `i` again on its port with its `nodes.conf` (same id; empty, or the dataset its
    /// last [`Cluster::shutdown_saving`] wrote) and waits until it answers PING. The cluster may not be ok yet: see [`Cluster::wait_ok`].
    pub async fn restart(&mut self, i: usize) {
        let mut node = self.take_killed(i);
        let deadline = Instant::now() + START_DEADLINE;
        // The killed process's port may linger for a moment: try again until it binds.
        while !self.spawn(&mut node).await {
            assert!(
                Instant::now() < deadline,
                "node {i} could not be restarted on port {}",
                node.port
            );
            tokio::time::sleep(POLL).await;
        }
        self.nodes[i] = node;
    }

    /// Starts node `i` again on ANOTHER free port with its `nodes.conf` (same id, new address; the
    /// dataset as for [`Cluster::restart`]) and returns the new address; the other nodes learn it from the node's gossip.
    pub async fn restart_elsewhere(&mut self, i: usize) -> SocketAddr {
        let mut node = self.take_killed(i);
        let old = node.port;
        self.spawn_on_free_port(&mut node).await;
        assert_ne!(node.port, old, "a new port");
        self.nodes[i] = node;
        self.nodes[i].addr()
    }

    /// Asks replica `r` to take over from its primary (`CLUSTER FAILOVER`, with `option` `FORCE`
    /// or `TAKEOVER` if given) and waits until it says it is a primary; returns when it first did.
    pub async fn failover(&self, r: usize, option: Option<&str>) -> Instant {
        let mut args = vec!["CLUSTER", "FAILOVER"];
        args.extend(option);
        assert_eq!(self.cmd(r, &args).await, Reply::ok(), "{args:?} on {r}");
        self.wait_primary(r).await
    }

    /// Waits (bounded by [`CLUSTER_DEADLINE`]) until node `r` says it is a primary (promoted by a
    /// failover, automatic or asked); returns when it first did.
    pub async fn wait_primary(&self, r: usize) -> Instant {
        poll_until(CLUSTER_DEADLINE, "replica promoted", || async {
            let info = self.try_info(r, "replication").await?;
            (info_field(&info, "role") == Some("master")).then(Instant::now)
        })
        .await
    }

    /// Starts moving `slot` from its owner to primary `to`: `SETSLOT IMPORTING` on the target, then
    /// `SETSLOT MIGRATING` on the source (the order `redis-cli --cluster reshard` uses).
    pub async fn begin_migration(&self, slot: u16, to: usize) -> Migration {
        let from = self.primary_of(slot).await;
        assert_ne!(from, to, "slot {slot} already lives on node {to}");
        let s = slot.to_string();
        let (from_id, to_id) = (self.nodes[from].id.clone(), self.nodes[to].id.clone());
        let importing = ["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id];
        assert_eq!(self.cmd(to, &importing).await, Reply::ok(), "{importing:?}");
        let migrating = ["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id];
        assert_eq!(
            self.cmd(from, &migrating).await,
            Reply::ok(),
            "{migrating:?}"
        );
        Migration { slot, from, to }
    }

    /// Moves up to `batch` of the slot's keys still on the source to the target with one `MIGRATE`;
    /// returns how many it moved (0: none left).
    pub async fn migrate_keys(&self, m: Migration, batch: usize) -> usize {
        let (s, n) = (m.slot.to_string(), batch.to_string());
        let keys = match self
            .cmd(m.from, &["CLUSTER", "GETKEYSINSLOT", &s, &n])
            .await
        {
            Reply::Array(Some(keys)) => keys
                .into_iter()
                .map(|k| match k {
                    Reply::Bulk(Some(k)) => String::from_utf8(k).expect("utf-8 key"),
                    other => panic!("GETKEYSINSLOT: {other:?}"),
                })
                .collect::<Vec<_>>(),
            other => panic!("GETKEYSINSLOT {s} on {}: {other:?}", m.from),
        };
        if keys.is_empty() {
            return 0;
        }
        let port = self.nodes[m.to].port.to_string();
        let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000"];
        if let Some(pw) = &self.options.password {
            args.extend(["AUTH", pw.as_str()]);
        }
        args.push("KEYS");
        args.extend(keys.iter().map(String::as_str));
        assert_eq!(self.cmd(m.from, &args).await, Reply::ok(), "MIGRATE");
        keys.len()
    }

    /// Gives the slot to the target (`SETSLOT NODE` on the target, the source, then every other
    /// primary) once no key is left on the source, and waits until every running node sees the new
    /// owner.
    pub async fn finish_migration(&self, m: Migration) {
        while self.migrate_keys(m, 100).await > 0 {}
        let s = m.slot.to_string();
        let to_id = self.nodes[m.to].id.clone();
        let set = ["CLUSTER", "SETSLOT", &s, "NODE", &to_id];
        let mut order = vec![m.to, m.from];
        for p in self.primaries().await {
            if !order.contains(&p) {
                order.push(p);
            }
        }
        for i in order {
            assert_eq!(self.cmd(i, &set).await, Reply::ok(), "{set:?} on {i}");
        }
        let to_port = self.nodes[m.to].port;
        poll_until(
            CLUSTER_DEADLINE,
            "every node sees the slot moved",
            || async {
                for i in self.running() {
                    if owner_in(&self.try_view(i).await?, m.slot) != Some(to_port) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// Moves `slot` to primary `to` in one go, keys and all.
    pub async fn migrate_slot(&self, slot: u16, to: usize) {
        let m = self.begin_migration(slot, to).await;
        self.finish_migration(m).await;
    }

    /// respipe's binary in front of the cluster (`--upstream redis-cluster://SEEDS`, the running
    /// nodes, plus `extra`), once `/readyz` says 200 (every slot covered, a primary up).
    pub async fn respipe(&self, extra: &[&str]) -> BinProxy {
        self.respipe_seeded(&self.seeds(), extra).await
    }

    /// [`Cluster::respipe`] with these `seeds` (say, a dead node first).
    pub async fn respipe_seeded(&self, seeds: &str, extra: &[&str]) -> BinProxy {
        let proxy = BinProxy::spawn(&self.upstream_url_with(seeds), extra);
        proxy.wait_status("/readyz", 200, START_DEADLINE).await;
        proxy
    }

    /// respipe in-process in front of the cluster (its seeds: the running nodes), with `tweak`
    /// applied to the defaults, once a write to every primary goes through it.
    pub async fn proxy(&self, tweak: impl FnOnce(&mut Config)) -> Proxy {
        let seeds: Vec<Upstream> = self
            .running()
            .map(|i| Upstream {
                password: self.options.password.clone(),
                ..Upstream::tcp("127.0.0.1", self.nodes[i].port)
            })
            .collect();
        let first = seeds[0].clone();
        let proxy = Proxy::start(self.nodes[self.any_running()].port, |c| {
            c.upstream = first;
            c.topology = Topology::Cluster(Spec { seeds });
            tweak(c);
        })
        .await;
        self.wait_serving(proxy.addr()).await;
        proxy
    }

    /// Waits (bounded) until a `SET` of a key on every primary through the proxy at `addr` answers
    /// `+OK`, then deletes those keys.
    pub async fn wait_serving(&self, addr: SocketAddr) {
        let mut keys = Vec::new();
        for p in self.primaries().await {
            keys.push(self.key_on(p, "respipe-harness-probe").await);
        }
        let keys = &keys;
        poll_until(
            START_DEADLINE,
            "respipe serves every primary",
            || async move {
                let mut c = RawClient::try_connect(addr).await.ok()?;
                for k in keys {
                    let set = ["SET", k.as_str(), "1"];
                    let r = tokio::time::timeout(Duration::from_secs(2), c.cmd(&set));
                    if r.await.ok()? != Reply::ok() {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        let mut c = RawClient::connect(addr).await;
        for k in keys {
            assert_eq!(c.cmd(&["DEL", k]).await, Reply::Int(1), "DEL {k}");
        }
    }

    /// Waits (bounded by [`CMD_UNTIL`]) until node `i` reports `n` blocked clients.
    pub async fn wait_blocked(&self, i: usize, n: usize) {
        let want = n.to_string();
        poll_until(CMD_UNTIL, "blocked clients on the node", || async {
            let info = self.try_info(i, "clients").await?;
            (info_field(&info, "blocked_clients") == Some(want.as_str())).then_some(())
        })
        .await
    }

    /// `{TAG}name`, a key whose slot primary `p` owns now.
    pub async fn key_on(&self, p: usize, name: &str) -> String {
        let port = self.nodes[p].port;
        let view = self.view(self.any_running()).await;
        let (first, _, _) = view
            .iter()
            .find(|r| r.2 == port)
            .unwrap_or_else(|| panic!("node {p} owns no slot"));
        key_in_slot(*first, name)
    }

    // -----------------------------------------------------------------------------------------

    /// Runs `redis-cli --cluster create` over every node (bounded).
    async fn create(&self) {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        cmd.args(self.nodes.iter().map(|n| n.addr().to_string()));
        cmd.args(["--cluster-replicas", &self.options.replicas.to_string()]);
        cmd.arg("--cluster-yes");
        if let Some(pw) = &self.options.password {
            cmd.args(["-a", pw, "--no-auth-warning"]);
        }
        let out = run_tool(cmd, CLUSTER_DEADLINE).await;
        assert!(out.status == Some(0), "redis-cli --cluster create: {out:?}");
    }

    /// Spawns `node` on a fresh free port (retrying another port if the one probed is taken by the
    /// time Redis binds it).
    async fn spawn_on_free_port(&self, node: &mut Node) {
        for _ in 0..20 {
            node.port = free_cluster_port();
            if self.spawn(node).await {
                return;
            }
        }
        panic!("could not start a cluster node on any free port");
    }

    /// Spawns `node` on its port and waits until it answers PING; false if it exited (a port
    /// taken).
    async fn spawn(&self, node: &mut Node) -> bool {
        let log = node.dir.join("redis.log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(node.port.to_string())
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .arg("--cluster-config-file")
            .arg(node.dir.join("nodes.conf"))
            .arg("--cluster-node-timeout")
            .arg(self.options.node_timeout_ms.to_string())
            .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
            .arg("--dir")
            .arg(&node.dir)
            .arg("--logfile")
            .arg(&log)
            .args(match &self.options.password {
                Some(pw) => vec!["--requirepass", pw, "--masterauth", pw],
                None => Vec::new(),
            })
            .args(&self.options.redis_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        node.child = Some(child);
        let (what, addr) = (format!("cluster node on port {}", node.port), node.addr());
        wait_started(&mut node.child, &what, &log, || self.pong(addr)).await
    }

    /// True if `addr` answers (AUTH and) PING with PONG within a second.
    async fn pong(&self, addr: SocketAddr) -> bool {
        let attempt = async {
            let mut c = RawClient::try_connect(addr).await.ok()?;
            if let Some(pw) = &self.options.password {
                c.try_cmd(&["AUTH", pw]).await.ok()?;
            }
            Some(c.try_cmd(&["PING"]).await.ok()? == Reply::Simple("PONG".into()))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(true))
        )
    }

    /// Node `i`, which must be killed, taken out to be restarted (a placeholder stays).
    fn take_killed(&mut self, i: usize) -> Node {
        assert!(
            !self.nodes[i].is_running(),
            "kill node {i} before restarting it"
        );
        let placeholder = Node {
            port: self.nodes[i].port,
            dir: self.nodes[i].dir.clone(),
            child: None,
            id: self.nodes[i].id.clone(),
        };
        std::mem::replace(&mut self.nodes[i], placeholder)
    }

    /// The first running node.
    fn any_running(&self) -> usize {
        self.running().next().expect("a running node")
    }

    /// The index of the node on `port`.
    fn index_of(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// `INFO section` of node `i`.
    async fn info(&self, i: usize, section: &str) -> String {
        self.try_info(i, section)
            .await
            .unwrap_or_else(|| panic!("INFO {section} on node {i}"))
    }

    /// `INFO section` of node `i`; `None` if it does not answer (within 2 s) or answers an error.
    async fn try_info(&self, i: usize, section: &str) -> Option<String> {
        match self.try_cmd(i, &["INFO", section]).await? {
            Reply::Bulk(Some(b)) => String::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// One command to node `i` on a fresh connection; `None` if it cannot be reached or does not
    /// answer within 2 s.
    async fn try_cmd(&self, i: usize, args: &[&str]) -> Option<Reply> {
        ask(self.nodes[i].addr(), self.options.password.as_deref(), args).await
    }

    /// Node `i`'s slot map (`CLUSTER SLOTS`), sorted by first slot.
    async fn view(&self, i: usize) -> Vec<SlotRange> {
        self.try_view(i)
            .await
            .unwrap_or_else(|| panic!("CLUSTER SLOTS on node {i}"))
    }

    /// Node `i`'s slot map, `None` if it does not answer.
    async fn try_view(&self, i: usize) -> Option<Vec<SlotRange>> {
        let Reply::Array(Some(ranges)) = self.try_cmd(i, &["CLUSTER", "SLOTS"]).await? else {
            return None;
        };
        let mut out = Vec::new();
        for range in ranges {
            let Reply::Array(Some(fields)) = range else {
                return None;
            };
            let (
                Some(Reply::Int(first)),
                Some(Reply::Int(last)),
                Some(Reply::Array(Some(primary))),
            ) = (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let Some(Reply::Int(port)) = primary.get(1) else {
                return None;
            };
            out.push((*first as u16, *last as u16, *port as u16));
        }
        out.sort_unstable();
        Some(out)
    }

    /// True when every running node is ok, all agree on a full slot map owned by running nodes,
    /// and every running replica is linked.
    async fn agreed(&self) -> bool {
        let mut first: Option<Vec<SlotRange>> = None;
        for i in self.running() {
            let Some(info) = self.try_cmd(i, &["CLUSTER", "INFO"]).await else {
                return false;
            };
            let Reply::Bulk(Some(info)) = info else {
                return false;
            };
            if info_field(&String::from_utf8_lossy(&info), "cluster_state") != Some("ok") {
                return false;
            }
            let Some(view) = self.try_view(i).await else {
                return false;
            };
            match &first {
                None => first = Some(view),
                Some(f) if *f != view => return false,
                Some(_) => {}
            }
            let Some(repl) = self.try_info(i, "replication").await else {
                return false;
            };
            if info_field(&repl, "role") == Some("slave")
                && info_field(&repl, "master_link_status") != Some("up")
            {
                return false;
            }
        }
        let Some(view) = first else { return false };
        let covered: usize = view
            .iter()
            .map(|(a, b, _)| usize::from(*b) - usize::from(*a) + 1)
            .sum();
        covered == SLOTS
            && view
                .iter()
                .all(|(_, _, port)| self.nodes.iter().any(|n| n.port == *port && n.is_running()))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(pid) = node.pid() {
                // A stopped process still dies on SIGKILL, but resume it anyway so nothing lingers.
                unsafe { libc::kill(pid, libc::SIGCONT) };
            }
            node.kill();
        }
    }
}

/// Waits until the server just spawned as `child` (`what`, logging to `log`) is `up` (polled,
/// bounded by [`START_DEADLINE`]): true once it is; false, with `child` cleared and the log's
/// tail printed, if it exited first (its port taken).
pub async fn wait_started<F, Fut>(child: &mut Option<Child>, what: &str, log: &Path, up: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Some(status) = child
            .as_mut()
            .expect("spawned")
            .try_wait()
            .expect("try_wait")
        {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            eprintln!("{what} exited early ({status}): {tail:?}");
            *child = None;
            return false;
        }
        if up().await {
            return true;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer PING within {START_DEADLINE:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// What a command-line tool run by [`run_tool`] did.
#[derive(Debug)]
pub struct ToolOutput {
    /// The exit code (`None`: killed by a signal).
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (a tool such as `redis-cli`) to completion with no stdin, its output in files (so
/// a chatty tool never blocks on a full pipe); fails the test if it runs longer than `limit`.
pub async fn run_tool(mut cmd: Command, limit: Duration) -> ToolOutput {
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"));
    let what = format!("{cmd:?}");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let status = wait_or_kill(child, limit).await;
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    let output = ToolOutput {
        status: status.and_then(|s| s.code()),
        stdout: read(&out),
        stderr: read(&err),
    };
    assert!(
        status.is_some(),
        "{what} ran longer than {limit:?}: {output:?}"
    );
    output
}

/// Waits (off the runtime's threads) for `child` to exit: its status, or `None` after `limit`,
/// when it is killed and reaped.
async fn wait_or_kill(mut child: Child, limit: Duration) -> Option<std::process::ExitStatus> {
    tokio::task::spawn_blocking(move || {
        let status = wait_child(&mut child, limit);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        status
    })
    .await
    .expect("join the waiter")
}

/// `{TAG}name` with the smallest numeric `TAG` whose slot is `slot`.
pub fn key_in_slot(slot: u16, name: &str) -> String {
    // The smallest numeric tag of every slot, found once (about 170,000 tags cover all 16384).
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut missing = SLOTS;
        for n in 0u32.. {
            let s = usize::from(key_slot(n.to_string().as_bytes()));
            if tags[s] == u32::MAX {
                tags[s] = n;
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        tags
    });
    format!("{{{}}}{name}", tags[usize::from(slot) % SLOTS])
}

/// One command to the server at `addr` on a fresh connection (after `AUTH password` if given);
/// `None` if it cannot be reached or does not answer within 2 s.
pub async fn ask(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> Option<Reply> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut req = Vec::new();
        if let Some(pw) = password {
            req.extend(encode(&["AUTH", pw]));
        }
        req.extend(encode(args));
        tokio::io::AsyncWriteExt::write_all(&mut s, &req)
            .await
            .ok()?;
        let mut reader = ReplyReader::default();
        if password.is_some() {
            reader.read(&mut s).await?;
        }
        reader.read(&mut s).await
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()?
}

/// The value of `field:` in an `INFO`-style text.
pub fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The port of `slot`'s owner in a slot map.
fn owner_in(view: &[SlotRange], slot: u16) -> Option<u16> {
    view.iter()
        .find(|(a, b, _)| (*a..=*b).contains(&slot))
        .map(|r| r.2)
}

/// A client port in `PORT_LOW..PORT_HIGH` whose port and bus port nothing holds right now. Walks
/// the range from a per-process random start, so nodes of one test run never probe the same port
/// twice and concurrent test processes rarely collide.
fn free_cluster_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORT_HIGH - PORT_LOW;
    let _ = NEXT.compare_exchange(0, random_start(span), Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = (PORT_LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        let free = |p: u16| StdListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + BUS_OFFSET) {
            return port;
        }
    }
    panic!("no free port pair in {PORT_LOW}..{PORT_HIGH}");
}

/// A start offset in `1..span` from the clock and the process id.
fn random_start(span: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    1 + (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % (span - 1)
}
