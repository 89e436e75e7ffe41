//! Test harness shared by the integration tests: a real `redis-server` on a free loopback port
//! (killed on drop), respipe running in-process on a port the test knows before it starts, a raw RESP
//! client that shows replies exactly as they came, and helpers for the respipe binary.
//!
//! Nothing here sleeps to synchronise: every wait polls a condition under a deadline.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use respipe::config::Upstream;
use respipe::{Config, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub mod cluster;
pub mod nutcracker;
pub mod sentinel;
pub mod shards;
pub mod wire;
// Each test binary uses its own part of the harness.
#[allow(unused_imports)]
pub use wire::{encode, Reply, ReplyReader};

/// How long a redis-server (or the proxy) may take to start answering.
pub const START_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between polls of a condition.
pub const POLL: Duration = Duration::from_millis(10);

/// Runs `fut` and fails the test if it takes longer than `limit`.
pub async fn bounded<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// Polls `cond` every [`POLL`] until it returns `Some`, failing the test after `limit`.
pub async fn poll_until<T, F, Fut>(limit: Duration, what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("{what}: condition not reached within {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How long [`cmd_until`] polls.
pub const CMD_UNTIL: Duration = Duration::from_secs(15);

/// Sends `args` on `c` until `accept` likes the reply (polling, bounded by [`CMD_UNTIL`]).
pub async fn cmd_until(
    c: &mut RawClient,
    args: &[&str],
    what: &str,
    accept: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + CMD_UNTIL;
    loop {
        let r = c.cmd(args).await;
        if accept(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {r:?} after {CMD_UNTIL:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// A port nothing listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------------

/// A redis-server child process on 127.0.0.1, killed (SIGKILL) and reaped on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments (e.g. `["--requirepass", "pw"]`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        // The free port may be taken between our probe and redis's bind: retry with another.
        for _ in 0..20 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                extra: extra.clone(),
            };
            if server.spawn_and_wait().await {
                return server;
            }
        }
        panic!("could not start redis-server on any free port");
    }

    /// Starts redis-server on exactly `port` (which the caller knows to be free).
    pub async fn start_on(port: u16) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: Vec::new(),
        };
        server
            .spawn_until_up(&format!("redis-server could not bind port {port}"))
            .await;
        server
    }

    /// Spawns until the process answers PING (its port may still be held by a dying one), failing
    /// the test with `failure` after [`START_DEADLINE`].
    async fn spawn_until_up(&mut self, failure: &str) {
        let deadline = Instant::now() + START_DEADLINE;
        while !self.spawn_and_wait().await {
            assert!(Instant::now() < deadline, "{failure}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Spawns the process and waits until it answers PING. False if it exited (port taken).
    async fn spawn_and_wait(&mut self) -> bool {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (is it installed?)");
        self.child = Some(child);
        let password = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .and_then(|i| self.extra.get(i + 1).cloned());
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                eprintln!(
                    "redis-server on port {} exited early ({status}): {log}",
                    self.port
                );
                self.child = None;
                return false;
            }
            if ping_direct(self.addr(), password.as_deref()).await {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {START_DEADLINE:?}",
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id (for SIGSTOP / SIGCONT).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("redis-server is running").id() as i32
    }

    /// SIGKILL now and reap.
    pub fn kill(&mut self) {
        self.kill_child();
    }

    fn kill_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts redis-server again on the same port (empty dataset), waiting until it answers PING.
    pub async fn restart(&mut self) {
        self.kill_child();
        let failure = format!("redis-server could not be restarted on port {}", self.port);
        self.spawn_until_up(&failure).await;
    }

    /// Sends a signal to the process (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// One field of `INFO stats`, read over a direct connection.
    pub async fn info_stat(&self, field: &str) -> u64 {
        let mut c = RawClient::connect(self.addr()).await;
        let info = match c.cmd(&["INFO", "stats"]).await {
            Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
            other => panic!("INFO stats: {other:?}"),
        };
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("INFO stats has no {field}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Polls `INFO clients` (bounded by [`CMD_UNTIL`]) until Redis reports `n` blocked clients.
    pub async fn wait_blocked(&self, n: usize) {
        let mut d = self.direct().await;
        let blocked = format!("blocked_clients:{n}\r");
        cmd_until(
            &mut d,
            &["INFO", "clients"],
            "blocked clients on Redis",
            |r| matches!(r, Reply::Bulk(Some(b)) if String::from_utf8_lossy(b).contains(&blocked)),
        )
        .await;
    }

    /// A raw client connected directly to this Redis (not through the proxy).
    pub async fn direct(&self) -> RawClient {
        RawClient::connect(self.addr()).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped process still dies on SIGKILL, but resume it anyway so nothing lingers.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill_child();
    }
}

/// True if a direct connection to `addr` answers PING with PONG.
async fn ping_direct(addr: SocketAddr, password: Option<&str>) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut req = Vec::new();
        if let Some(pw) = password {
            req.extend_from_slice(&encode(&["AUTH", pw]));
        }
        req.extend_from_slice(b"PING\r\n");
        s.write_all(&req).await.ok()?;
        let mut reader = ReplyReader::default();
        // An error (to AUTH, or LOADING) means not ready; PING's PONG means ready.
        loop {
            match reader.read(&mut s).await? {
                Reply::Error(_) => return Some(false),
                Reply::Simple(pong) if pong == "PONG" => return Some(true),
                _ => {}
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

// ---------------------------------------------------------------------------------------------
// respipe in-process
// ---------------------------------------------------------------------------------------------

/// respipe running in the test's runtime on a loopback port; cancelled on drop.
pub struct Proxy {
    addr: SocketAddr,
    token: CancellationToken,
    /// The proxy's own thread, running a current-thread runtime exactly as the binary does.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts respipe in front of the Redis on `upstream_port`, with `tweak` applied to the defaults.
    pub async fn start(upstream_port: u16, tweak: impl FnOnce(&mut Config)) -> Proxy {
        let mut config = Config {
            upstream: Upstream::tcp("127.0.0.1", upstream_port),
            ..Config::default()
        };
        // `RESPIPE_WORKERS=N` runs the in-process proxies with N workers, as it does the binary.
        if let Some(n) = std::env::var("RESPIPE_WORKERS")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            config.batching.workers = n;
        }
        tweak(&mut config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy listener");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().unwrap();
        config.listen.addresses = vec![respipe::config::ListenAddr::Tcp(addr)];
        let token = CancellationToken::new();
        let cancel = token.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("register listener");
                respipe::run(config, vec![Listener::Tcp(listener)], None, cancel)
                    .await
                    .expect("respipe::run")
            });
        });
        Proxy {
            addr,
            token,
            thread: Some(thread),
        }
    }

    /// Starts respipe with the defaults in front of `redis` and waits until it answers PING.
    pub async fn ready(redis: &RedisServer) -> Proxy {
        Proxy::ready_with(redis, |_| {}).await
    }

    /// Like [`Proxy::ready`], with `tweak` applied to the defaults.
    pub async fn ready_with(redis: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Proxy {
        let p = Proxy::start(redis.port(), tweak).await;
        p.wait_ready().await;
        p
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Polls PING through the proxy until it answers PONG (the upstream connects asynchronously).
    pub async fn wait_ready(&self) {
        let addr = self.addr;
        poll_until(START_DEADLINE, "proxy answers PING", || async move {
            let mut c = RawClient::try_connect(addr).await.ok()?;
            match tokio::time::timeout(Duration::from_secs(2), c.cmd(&["PING"])).await {
                Ok(Reply::Simple(s)) if s == "PONG" => Some(()),
                _ => None,
            }
        })
        .await
    }

    /// Cancels the proxy and waits (bounded) for `run` to return.
    pub async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(thread) = self.thread.take() {
            bounded(
                Duration::from_secs(15),
                "proxy shutdown",
                tokio::task::spawn_blocking(move || thread.join()),
            )
            .await
            .expect("join the proxy thread")
            .expect("proxy thread panicked");
        }
    }

    /// A raw client connected to the proxy.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr).await
    }

    /// A `redis` crate connection of its own (its own socket) to the proxy, without the crate's
    /// response timeout (tests bound their waits themselves).
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(5)));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect through the proxy")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// Raw RESP client
// ---------------------------------------------------------------------------------------------

/// A client on a plain TcpStream: writes whatever bytes the test gives, reads replies exactly.
pub struct RawClient {
    pub stream: TcpStream,
    reader: ReplyReader,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        Self::try_connect(addr)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<RawClient> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(RawClient::from_stream(stream))
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream) -> RawClient {
        RawClient {
            stream,
            reader: ReplyReader::default(),
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to server");
    }

    /// Reads the next reply; `Ok(None)` on a clean EOF with nothing buffered.
    pub async fn try_read_reply(&mut self) -> Result<Option<Reply>, String> {
        Ok(self.try_read_frame().await?.map(|(reply, _)| reply))
    }

    /// Reads the next reply with its exact bytes; `Ok(None)` on a clean EOF with nothing buffered.
    /// Cancel-safe: a reply cut short by a timeout stays buffered for the next call.
    pub async fn try_read_frame(&mut self) -> Result<Option<(Reply, Bytes)>, String> {
        self.reader.read_frame(&mut self.stream).await
    }

    /// Reads the next reply's exact bytes; panics on EOF or garbage.
    pub async fn read_frame(&mut self) -> Bytes {
        match self.try_read_frame().await {
            Ok(Some((_, bytes))) => bytes,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// Reads the next reply; panics on EOF or garbage.
    pub async fn read_reply(&mut self) -> Reply {
        match self.try_read_reply().await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("connection closed while a reply was expected"),
            Err(e) => panic!("{e}"),
        }
    }

    /// Reads `n` replies.
    pub async fn read_replies(&mut self, n: usize) -> Vec<Reply> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.read_reply().await);
        }
        out
    }

    /// Sends one command (RESP-encoded) and reads its reply.
    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Reply {
        self.send(&encode(args)).await;
        self.read_reply().await
    }

    /// Writes `cmds` (RESP-encoded) in one write and reads one reply per command.
    pub async fn send_all<A: AsRef<[u8]>>(&mut self, cmds: &[&[A]]) -> Vec<Reply> {
        let bytes: Vec<u8> = cmds.iter().flat_map(|c| encode(c)).collect();
        self.send(&bytes).await;
        self.read_replies(cmds.len()).await
    }

    /// Like [`RawClient::cmd`], but errors are returned instead of panicking.
    pub async fn try_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, String> {
        self.stream
            .write_all(&encode(args))
            .await
            .map_err(|e| format!("write: {e}"))?;
        match self.try_read_reply().await? {
            Some(r) => Ok(r),
            None => Err("connection closed by the proxy".into()),
        }
    }

    /// Asserts that the server closes the connection (EOF, or a reset) with no further reply bytes.
    pub async fn expect_eof(&mut self) {
        match self.try_read_reply().await {
            Ok(None) => {}
            Err(e) if e.starts_with("read:") => {} // reset counts as closed
            Ok(Some(r)) => panic!("expected the connection to close, got another reply {r:?}"),
            Err(e) => panic!("expected a clean close: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The respipe binary
// ---------------------------------------------------------------------------------------------

/// The respipe binary running as a child process; SIGKILLed on drop if still running.
pub struct Binary {
    pub child: Child,
    /// Every stderr line, as it comes (ANSI colours stripped).
    lines: std_mpsc::Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

/// A `Command` for the respipe binary with colours off and a clean environment for its settings.
pub fn respipe_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_respipe"));
    for (k, _) in std::env::vars() {
        if k.starts_with("RESPIPE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1").env_remove("RUST_LOG");
    cmd
}

/// Runs the binary to completion (bounded) and returns (exit code, stdout, stderr).
pub fn run_to_exit(mut cmd: Command, limit: Duration) -> (Option<i32>, String, String) {
    let mut child = spawn_respipe(&mut cmd, Stdio::piped());
    if wait_child(&mut child, limit).is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "respipe did not exit within {limit:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = child.wait_with_output().expect("wait respipe");
    (
        out.status.code(),
        strip_ansi(&String::from_utf8_lossy(&out.stdout)),
        strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    )
}

/// Spawns the binary's `cmd` with no stdin, `stdout` as given and stderr piped to the test.
fn spawn_respipe(cmd: &mut Command, stdout: Stdio) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn respipe")
}

/// Polls `child` until it exits (its status) or `limit` passes (`None`, still running).
fn wait_child(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

impl Binary {
    /// Spawns the binary with `cmd` (see [`respipe_command`]) and collects its stderr lines.
    pub fn spawn(mut cmd: Command) -> Binary {
        let mut child = spawn_respipe(&mut cmd, Stdio::null());
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        Binary {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a stderr line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "respipe logged no line containing {needle:?} within {limit:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the `respipe ready` line and returns the value of `key=` in it (e.g. `listen`).
    pub fn ready_field(&mut self, key: &str) -> String {
        let line = self.wait_line("respipe ready", START_DEADLINE);
        field(&line, key).unwrap_or_else(|| panic!("no {key}= in ready line: {line}"))
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill respipe with {sig}");
    }

    /// Waits (bounded, polling) for the process to exit; returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let status = wait_child(&mut self.child, limit);
        self.drain_lines();
        status.unwrap_or_else(|| {
            panic!(
                "respipe did not exit within {limit:?}; stderr:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// Moves every line logged so far into `seen`.
    pub fn drain_lines(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=value` in a log line (values end at whitespace).
pub fn field(line: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|tok| tok.strip_prefix(&prefix))
        .map(|v| v.trim_matches('"').to_owned())
}

/// A plain HTTP/1.1 GET over a TcpStream: (status, body).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A scratch path inside `dir`.
pub fn path_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

// ---------------------------------------------------------------------------------------------
// The respipe binary with its admin endpoint, for tests that read its memory or its metrics
// ---------------------------------------------------------------------------------------------

/// The respipe binary in front of an upstream, with `--metrics-listen` on a free loopback port.
pub struct BinProxy {
    pub bin: Binary,
    /// The client address from the ready line.
    pub listen: SocketAddr,
    /// The admin address (`HOST:PORT`) from the ready line.
    pub admin: String,
}

impl BinProxy {
    /// Spawns the binary (`--listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --upstream UPSTREAM`
    /// plus `extra`) and waits for its ready line.
    pub fn spawn(upstream: &str, extra: &[&str]) -> BinProxy {
        BinProxy::spawn_with(&[&["--upstream", upstream], extra].concat())
    }

    /// Spawns the binary with `--listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0` plus `args` (which
    /// say where the upstream is: `--upstream`, or `--config FILE`) and waits for its ready line.
    pub fn spawn_with(args: &[&str]) -> BinProxy {
        let mut cmd = respipe_command();
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(args);
        let mut bin = Binary::spawn(cmd);
        let listen = bin.ready_field("listen");
        let listen = listen
            .parse()
            .unwrap_or_else(|_| panic!("ready line listen={listen}"));
        let metrics = bin.ready_field("metrics");
        let admin = metrics
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("ready line metrics={metrics}"))
            .trim_end_matches('/')
            .to_owned();
        BinProxy { bin, listen, admin }
    }

    pub fn pid(&self) -> u32 {
        self.bin.child.id()
    }

    /// Resident memory of the process now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Peak resident memory of the process so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// Polls PING until PONG (the upstream connects in the background) and returns that client.
    pub async fn wait_pong(&self) -> RawClient {
        let addr = self.listen;
        poll_until(START_DEADLINE, "respipe answers PING", || async move {
            let mut c = RawClient::try_connect(addr).await.ok()?;
            match tokio::time::timeout(Duration::from_secs(2), c.cmd(&["PING"])).await {
                Ok(Reply::Simple(s)) if s == "PONG" => Some(c),
                _ => None,
            }
        })
        .await
    }

    /// The sum of every sample of metric `name` on `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let (status, body) = http_get(&self.admin, "/metrics")
            .await
            .expect("GET /metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        metric_sum(&body, name)
    }

    /// Polls metric `name` until `ok(value)`; fails the test after `limit` with the last value.
    pub async fn wait_metric(&self, name: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name} is still {v} after {limit:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The status of `GET path` on the admin endpoint.
    pub async fn status(&self, path: &str) -> u16 {
        http_get(&self.admin, path).await.expect("admin GET").0
    }

    /// Polls `GET path` until it answers `want`, returning how long that took.
    pub async fn wait_status(&self, path: &str, want: u16, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.status(path).await;
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "{path} still {got} after {limit:?}, expected {want}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Sum of every sample of a metric family in Prometheus text (0 when absent).
pub fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// True if `r` is one of respipe's explicit upstream failures (`-ERR respipe: upstream ...`).
pub fn is_upstream_error(r: &Reply) -> bool {
    r.error_text()
        .is_some_and(|e| e.starts_with("ERR respipe: upstream"))
}

// ---------------------------------------------------------------------------------------------
// A TCP link between respipe and Redis that a test can hold and reset
// ---------------------------------------------------------------------------------------------

/// A loopback TCP forwarder to `target`. `hold` keeps what respipe sends from reaching Redis (so
/// commands are certainly in flight); `reset` aborts every current connection with an RST, as a
/// peer resetting the connection does. Stops with the test's runtime.
pub struct ChaosLink {
    pub addr: SocketAddr,
    state: std::sync::Arc<LinkState>,
}

struct LinkState {
    hold: std::sync::atomic::AtomicBool,
    /// Bytes from respipe read and not forwarded while held.
    held: std::sync::atomic::AtomicUsize,
    /// Connections accepted so far.
    accepted: std::sync::atomic::AtomicUsize,
    /// Cancelled by `reset`; replaced by a fresh token for later connections.
    generation: std::sync::Mutex<CancellationToken>,
}

impl ChaosLink {
    pub async fn start(target: SocketAddr) -> ChaosLink {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(LinkState {
            hold: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            generation: std::sync::Mutex::new(CancellationToken::new()),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                st.accepted.fetch_add(1, Ordering::Relaxed);
                let cancel = st.generation.lock().unwrap().clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(target).await else {
                        return;
                    };
                    link(down, up, st, cancel).await;
                });
            }
        });
        ChaosLink { addr, state }
    }

    /// Stops (true) or resumes (false) forwarding respipe's bytes to Redis.
    pub fn hold(&self, on: bool) {
        self.state
            .hold
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes read from respipe and held back so far.
    pub fn held(&self) -> usize {
        self.state.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn accepted(&self) -> usize {
        self.state
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resets (RST) every connection open now, dropping anything held.
    pub fn reset(&self) {
        let mut generation = self.state.generation.lock().unwrap();
        generation.cancel();
        *generation = CancellationToken::new();
        self.state
            .held
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn link(
    mut down: TcpStream,
    mut up: TcpStream,
    st: std::sync::Arc<LinkState>,
    cancel: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    {
        let (mut dr, mut dw) = down.split();
        let (mut ur, mut uw) = up.split();
        let mut pending: Vec<u8> = Vec::new();
        let (mut b1, mut b2) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        loop {
            tokio::select! {
                // A reset wins over everything else: nothing held may leak out after it.
                biased;
                _ = cancel.cancelled() => break,
                r = dr.read(&mut b1) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        pending.extend_from_slice(&b1[..n]);
                        if st.hold.load(Ordering::Relaxed) {
                            st.held.fetch_add(n, Ordering::Relaxed);
                        } else if uw.write_all(&pending).await.is_err() {
                            return;
                        } else {
                            pending.clear();
                        }
                    }
                },
                r = ur.read(&mut b2) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(n) => if dw.write_all(&b2[..n]).await.is_err() { return },
                },
                // While held, look again for the release now and then.
                _ = tokio::time::sleep(POLL), if !pending.is_empty() => {
                    if !st.hold.load(Ordering::Relaxed) && !cancel.is_cancelled() {
                        if uw.write_all(&pending).await.is_err() {
                            return;
                        }
                        pending.clear();
                    }
                }
            }
        }
    }
    // Reset: close with SO_LINGER 0 so respipe sees ECONNRESET, not a clean EOF. (Deprecated because
    // a non-zero linger blocks the thread on drop; a zero linger never blocks.)
    #[allow(deprecated)]
    let _ = down.set_linger(Some(Duration::ZERO));
    #[allow(deprecated)]
    let _ = up.set_linger(Some(Duration::ZERO));
}

/// Connects to `addr` and polls PING until it answers PONG (bounded), returning the client.
pub async fn connect_pong(addr: std::net::SocketAddr) -> RawClient {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = RawClient::connect(addr).await;
        if c.cmd(&["PING"]).await == Reply::Simple("PONG".into()) {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "respipe at {addr} does not answer PING"
        );
        tokio::time::sleep(POLL).await;
    }
}
