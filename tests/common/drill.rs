//! The reply-integrity drill, shared by `tests/drill.rs` (a small run in `cargo test`) and
//! `examples/drill.rs` (the long run behind `scripts/drill.sh`): many clients write values that carry
//! their own id, pipelined and not, through respipe, while Redis is SIGKILLed and restarted; every
//! reply is checked. Self-contained (tokio and libc, and `wire.rs`, the tests' RESP reader, which
//! whoever includes this file puts next to it as `wire`) so the example can include it too.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::wire::{encode, Reply, ReplyReader};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(10);

/// A redis-server on a fixed loopback port, SIGKILLed on drop.
pub struct RedisProc {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisProc {
    /// Starts redis-server on `port` with no persistence (logs and files in `dir`) and waits until it
    /// answers PING.
    pub async fn start(port: u16, dir: PathBuf) -> RedisProc {
        let mut r = RedisProc {
            port,
            child: None,
            dir,
        };
        r.restart().await;
        r
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the process on the same port, empty, and waits (up to 20 s) until it answers PING.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--maxclients", "10000"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(self.dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server (is it installed?)");
            self.child = Some(child);
            loop {
                if ping(self.addr()).await {
                    return;
                }
                if let Ok(Some(_)) = self.child.as_mut().unwrap().try_wait() {
                    break; // exited: the port is still held by the killed one; try again
                }
                assert!(
                    Instant::now() < deadline,
                    "redis-server does not start on {}",
                    self.port
                );
                tokio::time::sleep(POLL).await;
            }
            self.child = None;
            assert!(
                Instant::now() < deadline,
                "redis-server does not start on {}",
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A Redis the drill can SIGKILL and bring back (empty) on the same address.
pub trait Restart {
    /// SIGKILL and reap.
    fn kill(&mut self);
    /// Starts it again on the same port and returns once it answers PING.
    fn restart(&mut self) -> impl Future<Output = ()>;
}

impl Restart for RedisProc {
    fn kill(&mut self) {
        RedisProc::kill(self)
    }
    fn restart(&mut self) -> impl Future<Output = ()> {
        RedisProc::restart(self)
    }
}

/// For a drill whose chaos is something else (a failover, slots migrating): nothing is killed
/// (run it with `kills: 0`).
pub struct NoKill;

impl Restart for NoKill {
    fn kill(&mut self) {}
    async fn restart(&mut self) {}
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True if `addr` answers PING with PONG within a second.
pub async fn ping(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        Some(ReplyReader::default().read(&mut s).await? == Reply::Simple("PONG".into()))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// The drill's shape.
#[derive(Debug, Clone)]
pub struct DrillConfig {
    /// Client connections.
    pub clients: usize,
    /// How many of them pipeline (10 to 50 commands per write); the rest send one at a time.
    pub pipelined: usize,
    /// Total run time; the kills are spread evenly over it.
    pub duration: Duration,
    /// Times Redis is SIGKILLed and restarted.
    pub kills: usize,
    /// What each client writes and how its replies are judged.
    pub shape: ClientShape,
}

impl DrillConfig {
    /// The integrity load of the sharded and cluster drills: 200 clients (60 pipelining 10 to 50
    /// deep) whose keys take `tags` in turn, so every pipeline spans every shard; `failure` starts
    /// the explicit failures.
    pub fn spread(duration: Duration, kills: usize, tags: Vec<String>, failure: &str) -> Self {
        DrillConfig {
            clients: 200,
            pipelined: 60,
            duration,
            kills,
            shape: ClientShape {
                hang: Duration::from_secs(8),
                value_pad: 16,
                tags,
                failure: failure.to_owned(),
                other_failures: Vec::new(),
            },
        }
    }
}

/// What a drill client writes and which replies count as explicit failures.
#[derive(Debug, Clone)]
pub struct ClientShape {
    /// A reply later than this is a hang.
    pub hang: Duration,
    /// Bytes of padding in each value (on top of the id and sequence number).
    pub value_pad: usize,
    /// Hash tags the keys take in turn (`{TAG}d:ID:SEQ`), one per shard of a sharded upstream, the
    /// first being the shard `run` kills. Empty: keys are `d:ID:SEQ`.
    pub tags: Vec<String>,
    /// How an error reply that reports a failure explicitly starts (respipe's:
    /// [`RESPIPE_FAILURE`]).
    pub failure: String,
    /// How other error replies that count as explicit failures start (Redis's own, such as
    /// `READONLY` from a primary that was just demoted).
    pub other_failures: Vec<String>,
}

/// How respipe's error replies for a lost or unreachable upstream start.
pub const RESPIPE_FAILURE: &str = "ERR respipe: upstream";

impl ClientShape {
    /// Untagged keys, respipe's failures.
    pub fn plain(hang: Duration, value_pad: usize) -> ClientShape {
        ClientShape {
            hang,
            value_pad,
            tags: Vec::new(),
            failure: RESPIPE_FAILURE.to_owned(),
            other_failures: Vec::new(),
        }
    }

    /// The key of client `id`'s command number `seq`, and the index of its tag (0 when untagged).
    fn key(&self, id: u32, seq: u64) -> (String, usize) {
        if self.tags.is_empty() {
            return (format!("d:{id}:{seq}"), 0);
        }
        let tag = seq as usize % self.tags.len();
        (format!("{{{}}}d:{id}:{seq}", self.tags[tag]), tag)
    }

    /// True if error reply `e` reports a failure explicitly.
    fn is_failure(&self, e: &str) -> bool {
        e.starts_with(&self.failure) || self.other_failures.iter().any(|f| e.starts_with(f))
    }
}

/// What the drill saw.
#[derive(Debug, Default)]
pub struct DrillCounts {
    /// Commands answered.
    pub commands: AtomicU64,
    /// `+OK` to a SET, or the client's own value to a GET.
    pub ok: AtomicU64,
    /// An error reply starting with [`ClientShape::failure`] (or one of
    /// [`ClientShape::other_failures`]): an explicit failure.
    pub err: AtomicU64,
    /// The explicit failures by their text (its first [`ERROR_KIND`] characters).
    pub errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// A GET that found nothing: its SET failed or Redis restarted empty since.
    pub nil: AtomicU64,
    /// Per key tag ([`ClientShape::tags`]): explicit failures and GETs that found nothing. Empty
    /// when the keys are untagged.
    pub failed_by_tag: Vec<AtomicU64>,
    /// A reply that is neither right nor an explicit failure, nor another client's.
    pub wrong: AtomicU64,
    /// Another client's value.
    pub misrouted: AtomicU64,
    /// A command without a reply within `hang`.
    pub hung: AtomicU64,
    /// A client connection closed by the proxy.
    pub closed: AtomicU64,
}

/// How many characters of an explicit failure's text [`DrillCounts::errors`] keeps.
pub const ERROR_KIND: usize = 72;

/// The drill's result.
#[derive(Debug)]
pub struct DrillReport {
    pub counts: Arc<DrillCounts>,
    /// Per restart: from Redis answering PING again to the first `+OK` through respipe.
    pub recovery: Vec<Duration>,
}

impl DrillCounts {
    /// Zero counts for keys with `tags` tags.
    pub fn new(tags: usize) -> DrillCounts {
        DrillCounts {
            failed_by_tag: (0..tags).map(|_| AtomicU64::new(0)).collect(),
            ..DrillCounts::default()
        }
    }
}

impl DrillReport {
    /// `drill: N commands, ok=.., err=.., nil=.., wrong=.., misrouted=.., hung=.., closed=..,
    /// failed_by_tag=a,b,c, recovery_ms=a,b` (`-` for an empty list).
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let recovery: Vec<String> = self
            .recovery
            .iter()
            .map(|d| d.as_millis().to_string())
            .collect();
        let by_tag: Vec<String> = c.failed_by_tag.iter().map(|a| g(a).to_string()).collect();
        format!(
            "drill: {} commands, ok={}, err={}, nil={}, wrong={}, misrouted={}, hung={}, closed={}, failed_by_tag={}, recovery_ms={}",
            g(&c.commands),
            g(&c.ok),
            g(&c.err),
            g(&c.nil),
            g(&c.wrong),
            g(&c.misrouted),
            g(&c.hung),
            g(&c.closed),
            if by_tag.is_empty() { "-".to_string() } else { by_tag.join(",") },
            if recovery.is_empty() { "-".to_string() } else { recovery.join(",") }
        )
    }

    /// Every kind of explicit failure seen, with its count: `N× TEXT; ...` (`-` for none).
    pub fn errors(&self) -> String {
        let errors = self.counts.errors.lock().unwrap_or_else(|e| e.into_inner());
        if errors.is_empty() {
            return "-".to_owned();
        }
        let kinds: Vec<String> = errors.iter().map(|(e, n)| format!("{n}× {e}")).collect();
        kinds.join("; ")
    }

    /// No wrong value, no misroute, no hang, no dropped client.
    pub fn clean(&self) -> bool {
        let c = &self.counts;
        [&c.wrong, &c.misrouted, &c.hung, &c.closed]
            .iter()
            .all(|a| a.load(Ordering::Relaxed) == 0)
    }
}

/// Runs the drill against respipe at `proxy` in front of `redis` (with tagged keys: the shard that
/// holds the first tag's keys).
pub async fn run(proxy: SocketAddr, redis: &mut impl Restart, cfg: &DrillConfig) -> DrillReport {
    let shape = Arc::new(cfg.shape.clone());
    let counts = Arc::new(DrillCounts::new(shape.tags.len()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..cfg.clients as u32 {
        let s = TcpStream::connect(proxy).await.expect("connect to respipe");
        s.set_nodelay(true).unwrap();
        let (counts, stop) = (counts.clone(), stop.clone());
        let depth = depth(id, cfg.pipelined);
        tasks.push(tokio::spawn(client(
            s,
            id,
            depth,
            counts,
            stop,
            shape.clone(),
        )));
    }
    let start = Instant::now();
    let slice = cfg.duration / (cfg.kills as u32 + 1);
    let mut recovery = Vec::new();
    for k in 1..=cfg.kills as u32 {
        sleep_until(start + slice * k).await;
        redis.kill();
        // Let the outage be seen: errors pile up (or 2 s pass), then Redis comes back.
        let err0 = counts.err.load(Ordering::Relaxed);
        let down = Instant::now();
        while counts.err.load(Ordering::Relaxed) < err0 + 100
            && down.elapsed() < Duration::from_secs(2)
        {
            tokio::time::sleep(POLL).await;
        }
        redis.restart().await;
        recovery.push(first_ok(proxy, &shape).await);
    }
    sleep_until(start + cfg.duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(shape.hang * 2, t).await;
    }
    DrillReport { counts, recovery }
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep(t.saturating_duration_since(Instant::now())).await;
}

/// Time until `SET` of a key on the restarted Redis through respipe answers `+OK` (respipe
/// reconnects in the background).
async fn first_ok(proxy: SocketAddr, shape: &ClientShape) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(proxy).await.expect("probe connect");
    s.set_nodelay(true).unwrap();
    let mut r = ReplyReader::default();
    let key = match shape.tags.first() {
        Some(tag) => format!("{{{tag}}}probe"),
        None => "probe".to_owned(),
    };
    let probe = encode(&["SET", &key, "1"]);
    loop {
        s.write_all(&probe).await.expect("probe write");
        let reply = tokio::time::timeout(shape.hang, r.read(&mut s))
            .await
            .expect("probe: no reply")
            .expect("probe: closed");
        if reply == Reply::ok() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "respipe does not serve again: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// How deep client `id` pipelines: the first `pipelined` clients 10 to 50 commands per write, the
/// rest one at a time.
pub fn depth(id: u32, pipelined: usize) -> usize {
    if (id as usize) < pipelined {
        10 + (id as usize * 7) % 41
    } else {
        1
    }
}

/// One client until `stop`: rounds of `depth` SET/GET pairs on fresh keys (as `shape` names them)
/// whose values carry `id` (and `shape.value_pad` bytes of padding), written as one pipeline
/// (`depth` 1: one command at a time, each reply awaited); every reply is counted in `counts`, a
/// reply later than `shape.hang` is a hang.
pub async fn client(
    mut s: TcpStream,
    id: u32,
    depth: usize,
    counts: Arc<DrillCounts>,
    stop: Arc<AtomicBool>,
    shape: Arc<ClientShape>,
) {
    let hang = shape.hang;
    let pad = "x".repeat(shape.value_pad);
    let mut reader = ReplyReader::default();
    let mut seq = 0u64;
    let own = format!("{id}:");
    while !stop.load(Ordering::Relaxed) {
        let mut cmds: Vec<Sent> = Vec::new();
        for _ in 0..depth {
            seq += 1;
            let ((k, tag), v) = (shape.key(id, seq), format!("{id}:{seq}:{pad}"));
            cmds.push((encode(&["SET", &k, &v]), None, tag));
            cmds.push((encode(&["GET", &k]), Some(v), tag));
        }
        // Pipelined: everything in one write, then the replies; else write and read in turn.
        let batches: Vec<&[Sent]> = if depth > 1 {
            vec![&cmds[..]]
        } else {
            cmds.chunks(1).collect()
        };
        for batch in batches {
            let req: Vec<u8> = batch.iter().flat_map(|(b, ..)| b.iter().copied()).collect();
            if s.write_all(&req).await.is_err() {
                counts.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            for (_, want, tag) in batch {
                let reply = match tokio::time::timeout(hang, reader.read(&mut s)).await {
                    Err(_) => {
                        eprintln!("drill client {id}: no reply within {hang:?}");
                        counts.hung.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(None) => {
                        eprintln!("drill client {id}: connection closed by respipe");
                        counts.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Ok(Some(r)) => r,
                };
                counts.commands.fetch_add(1, Ordering::Relaxed);
                let slot = match (&reply, want) {
                    (Reply::Simple(v), None) if v == "OK" => &counts.ok,
                    (Reply::Bulk(Some(v)), Some(w)) if v == w.as_bytes() => &counts.ok,
                    (Reply::Bulk(None), Some(_)) => &counts.nil,
                    (Reply::Error(e), _) if shape.is_failure(e) => {
                        let kind: String = e.chars().take(ERROR_KIND).collect();
                        let mut errors = counts.errors.lock().unwrap_or_else(|e| e.into_inner());
                        *errors.entry(kind).or_default() += 1;
                        &counts.err
                    }
                    (Reply::Bulk(Some(v)), _) if !v.starts_with(own.as_bytes()) => {
                        eprintln!("drill client {id}: misrouted {reply:?}, wanted {want:?}");
                        &counts.misrouted
                    }
                    _ => {
                        eprintln!("drill client {id}: wrong {reply:?}, wanted {want:?}");
                        &counts.wrong
                    }
                };
                slot.fetch_add(1, Ordering::Relaxed);
                // A failure, or a value its Redis lost: charged to the shard of the key's tag.
                if std::ptr::eq(slot, &counts.err) || std::ptr::eq(slot, &counts.nil) {
                    if let Some(failed) = counts.failed_by_tag.get(*tag) {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// A command a client wrote: its bytes, the value a GET must return (`None`: a SET, `+OK`), and
/// the index of its key's tag.
type Sent = (Vec<u8>, Option<String>, usize);

/// Opens `n` idle connections to `addr` (each does one PING so respipe has surely accepted it).
pub async fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        s.write_all(b"PING\r\n").await.unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"+PONG\r\n", "idle connection {i}");
        conns.push(s);
    }
    conns
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The number in environment variable `name` (how `scripts/drill.sh` makes a test's drill longer),
/// or `default` when it is unset or not a number.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children inherit it) and returns
/// the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}
