//! The differential harness: a scenario (what each client writes, in which order, and how many reply
//! frames it then reads) runs twice at once, against a fresh redis-server directly and against a
//! second fresh redis-server (same configuration) through respipe, and every reply frame of every
//! client is compared byte for byte. Redis is the specification: any difference is respipe's.
//! A scenario can put respipe in front of several sharded servers instead
//! ([`Scenario::over_shards`]): one Redis holding the same data is then the specification.
//!
//! Rules that keep it deterministic:
//! - A write is one `write_all` of exactly the scenario's bytes: the pipelining shape is the same
//!   on both sides. Steps run in the scenario's order on each side; a client that must act after
//!   another's command took effect reads that command's replies first, or waits for [`Step::Await`]
//!   (a condition Redis reports, such as how many clients are blocked).
//! - Every read has a known frame count and a deadline ([`STEP_DEADLINE`]); counts come from the
//!   scenario and the direct side must meet them (otherwise the scenario itself is wrong). Nothing
//!   waits for silence: the end of the scenario is what proves that no extra frame was pending, as
//!   every client still open sends `QUIT` and reads to the end of its connection on both sides.
//! - A scenario may also pin what Redis itself answers ([`Scenario::read_expect`]) and what it
//!   left in Redis's data ([`Scenario::check`], on a direct connection of the harness's own):
//!   both sides must then match those bytes exactly, not only each other.
//! - What may legitimately differ is listed in [`normalise`] and nowhere else; commands whose
//!   replies are volatile (`CLIENT LIST`, `INFO`, `MONITOR`, timestamps) are not used at all.
//! - With [`REDIS_ONLY`] set, both sides are direct: a scenario must pass that way, which proves
//!   it right about Redis and deterministic across two Redis processes.
//!
//! Several test binaries include this file (`#[path]`), each using a part of it.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;

use crate::common::shards::{ShardOptions, Shards};
use crate::common::{bounded, encode, Proxy, RawClient, RedisServer, POLL};

/// How long one step may take on either side: reading its frames, seeing the close, or Redis
/// reporting what a [`Step::Await`] waits for. Only a failing scenario ever waits this long.
pub const STEP_DEADLINE: Duration = Duration::from_secs(5);

/// How long a whole scenario (both sides, servers and proxy included) may take.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(90);

/// Arguments both redis-servers of every scenario get: `DEBUG PROTOCOL` needs the debug command.
const REDIS_ARGS: &[&str] = &["--enable-debug-command", "yes"];

/// Set (to anything) in the environment, both sides talk to Redis directly: a check that a
/// scenario is right about Redis and deterministic, whatever respipe does today
/// (`DIFFERENTIAL_REDIS_ONLY=1 cargo test --test differential -- --include-ignored`).
const REDIS_ONLY: &str = "DIFFERENTIAL_REDIS_ONLY";

/// Longest escaped excerpt of one frame or write in a failure message.
const SHOW_BYTES: usize = 600;

/// One thing a scenario does, on both sides in the same order.
#[derive(Debug, Clone)]
enum Step {
    /// The client writes these bytes with a single `write_all`.
    Write { client: usize, bytes: Vec<u8> },
    /// The client reads exactly this many frames; with `want`, they must be exactly these bytes
    /// (after [`normalise`]).
    Read {
        client: usize,
        frames: usize,
        want: Option<Vec<Vec<u8>>>,
    },
    /// The client reads until the server closes the connection.
    ReadToClose { client: usize },
    /// Waits until this side's Redis answers `probe` with a reply containing `want` (polled over
    /// connections of the harness's own, not compared), so that a later write certainly comes after
    /// another client's command took effect (say, a client is blocked).
    Await { probe: Vec<String>, want: String },
    /// A connection of the harness's own, straight to this side's Redis (never through respipe),
    /// writes `bytes` and reads exactly the frames `want`: what the scenario left in Redis.
    Check { bytes: Vec<u8>, want: Vec<Vec<u8>> },
}

/// A named list of steps for a number of clients.
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    clients: usize,
    steps: Vec<Step>,
    /// 0: the proxied side is respipe in front of one redis-server; N: the proxy (respipe, or what
    /// [`FRONT`](crate::common::shards::FRONT) names) in front of N redis-servers sharding the keys.
    shards: usize,
}

/// How a step ended on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// It did what it should.
    Done,
    /// The deadline passed first.
    Timeout,
    /// The connection closed before the frames came.
    Closed,
    /// A read or write failed, or the bytes were not RESP.
    Failed(String),
}

/// What one step produced on one side: the frames read (already normalised) and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Bytes>,
    end: End,
}

impl Scenario {
    /// An empty scenario; clients are numbered from 0 and shown as A, B, C...
    pub fn new(name: &str) -> Scenario {
        Scenario {
            name: name.to_owned(),
            clients: 0,
            steps: Vec::new(),
            shards: 0,
        }
    }

    /// Runs the proxied side over `n` sharded redis-servers ([`Shards`]) instead of one: a single
    /// Redis holding the same data is then the specification of the sharded proxy. Such a scenario
    /// cannot look at Redis from the side ([`Scenario::check`], [`Scenario::blocked`],
    /// [`Scenario::until`]): there is no one Redis to look at.
    pub fn over_shards(mut self, n: usize) -> Scenario {
        self.shards = n;
        self
    }

    /// `client` writes these commands, RESP-encoded, in one write.
    pub fn write(self, client: usize, cmds: &[&[&str]]) -> Scenario {
        let bytes = cmds.iter().flat_map(|c| encode(c)).collect();
        self.write_bytes(client, bytes)
    }

    /// `client` writes exactly these bytes in one write (inline commands, binary arguments).
    pub fn write_bytes(self, client: usize, bytes: Vec<u8>) -> Scenario {
        self.step(client, Step::Write { client, bytes })
    }

    /// `client` reads `frames` frames.
    pub fn read(self, client: usize, frames: usize) -> Scenario {
        self.read_step(client, frames, None)
    }

    /// `client` reads one frame per `want`, and they must be exactly these bytes on both sides (a
    /// difference on Redis's side means the scenario is wrong): for a scenario that must also
    /// prove what Redis answers, not only that respipe answers the same.
    pub fn read_expect(self, client: usize, want: &[&str]) -> Scenario {
        let want: Vec<Vec<u8>> = want.iter().map(|w| w.as_bytes().to_vec()).collect();
        self.read_step(client, want.len(), Some(want))
    }

    /// `client` writes these commands in one write and reads exactly the frames `want`
    /// (see [`Scenario::read_expect`]).
    pub fn expect(self, client: usize, cmds: &[&[&str]], want: &[&str]) -> Scenario {
        self.write(client, cmds).read_expect(client, want)
    }

    /// `client` writes these commands in one write and reads `frames` frames.
    pub fn call(self, client: usize, cmds: &[&[&str]], frames: usize) -> Scenario {
        self.write(client, cmds).read(client, frames)
    }

    /// `client` writes these commands in one write and reads one frame per command.
    pub fn each(self, client: usize, cmds: &[&[&str]]) -> Scenario {
        self.call(client, cmds, cmds.len())
    }

    /// `client` speaks RESP `proto`: for 3 it says `HELLO 3` and reads the reply (compared like any
    /// other, its id normalised); for 2 nothing, as every connection starts in RESP2.
    pub fn protocol(self, client: usize, proto: u8) -> Scenario {
        match proto {
            2 => self,
            _ => self.call(client, &[&["HELLO", &proto.to_string()]], 1),
        }
    }

    /// `client` reads until the server closes its connection (after a `QUIT`, say).
    pub fn read_to_close(self, client: usize) -> Scenario {
        self.step(client, Step::ReadToClose { client })
    }

    /// `client` says `QUIT` and reads until the close: everything still pending for it is read
    /// and compared at this point of the scenario rather than at its end.
    pub fn quit(mut self, client: usize) -> Scenario {
        self.clients = self.clients.max(client + 1);
        self.steps.extend(quit_steps(client));
        self
    }

    /// After the steps so far, a connection of the harness's own, straight to each side's Redis,
    /// writes these commands in one write and must read exactly the frames `want`: checks what
    /// the scenario left in Redis (a value in some db, say) on both sides.
    pub fn check(mut self, cmds: &[&[&str]], want: &[&str]) -> Scenario {
        self.steps.push(Step::Check {
            bytes: cmds.iter().flat_map(|c| encode(c)).collect(),
            want: want.iter().map(|w| w.as_bytes().to_vec()).collect(),
        });
        self
    }

    /// Waits until Redis reports `n` blocked clients.
    pub fn blocked(self, n: u64) -> Scenario {
        self.until(&["INFO", "clients"], &format!("blocked_clients:{n}\r\n"))
    }

    /// Waits until Redis answers `probe` (sent on a connection of the harness's own) with a reply
    /// that contains `want`.
    pub fn until(mut self, probe: &[&str], want: &str) -> Scenario {
        self.steps.push(Step::Await {
            probe: probe.iter().map(|a| a.to_string()).collect(),
            want: want.to_owned(),
        });
        self
    }

    fn read_step(self, client: usize, frames: usize, want: Option<Vec<Vec<u8>>>) -> Scenario {
        let read = Step::Read {
            client,
            frames,
            want,
        };
        self.step(client, read)
    }

    fn step(mut self, client: usize, step: Step) -> Scenario {
        self.clients = self.clients.max(client + 1);
        self.steps.push(step);
        self
    }

    /// Runs the scenario against Redis and through respipe at once and fails the test, showing both
    /// sides' bytes, at the first step whose frames differ.
    pub async fn run(self) {
        let what = format!("scenario {}", self.name);
        bounded(SCENARIO_DEADLINE, &what, async {
            let (direct, proxied) = tokio::join!(self.side(false), self.side(true));
            self.compare(&direct, &proxied);
        })
        .await
    }

    /// Runs every step on one side and returns what each produced, stopping after the first step
    /// that did not end as it should; then `QUIT` for every client still open.
    async fn side(&self, through_respipe: bool) -> Vec<Outcome> {
        let proxied = through_respipe && std::env::var_os(REDIS_ONLY).is_none();
        if proxied && self.shards > 0 {
            return self.sharded_side().await;
        }
        let redis = RedisServer::start_with(REDIS_ARGS).await;
        let proxy = if proxied {
            Some(Proxy::ready(&redis).await)
        } else {
            None
        };
        let addr = proxy.as_ref().map_or(redis.addr(), Proxy::addr);
        self.transcript(addr, &redis).await
    }

    /// The proxied side over [`Scenario::shards`] servers.
    async fn sharded_side(&self) -> Vec<Outcome> {
        let looks_aside = |s: &Step| matches!(s, Step::Check { .. } | Step::Await { .. });
        assert!(
            !self.steps.iter().any(looks_aside),
            "scenario {}: a sharded scenario cannot check or await one Redis",
            self.name
        );
        let options = ShardOptions {
            redis_args: REDIS_ARGS.iter().map(|a| a.to_string()).collect(),
            ..ShardOptions::default()
        };
        let shards = Shards::start(self.shards, options).await;
        self.transcript(shards.addr(), &shards.servers[0]).await
    }

    /// Connects the clients to `addr` and runs every step (`redis` is where checks look).
    async fn transcript(&self, addr: std::net::SocketAddr, redis: &RedisServer) -> Vec<Outcome> {
        let mut clients = Vec::with_capacity(self.clients);
        for _ in 0..self.clients {
            clients.push(Some(RawClient::connect(addr).await));
        }
        let mut transcript = Vec::new();
        for step in &self.script() {
            let outcome = run_step(step, &mut clients, redis).await;
            let done = outcome.end == End::Done;
            transcript.push(outcome);
            if !done {
                break;
            }
        }
        transcript
    }

    /// Every step, the closing ones included.
    fn script(&self) -> Vec<Step> {
        let mut steps = self.steps.clone();
        steps.extend(self.closing_steps());
        steps
    }

    /// The steps that end every scenario: each client still open says `QUIT` and reads to the
    /// close, which proves that nothing else was pending for it. So a scenario must not leave a
    /// client blocked, nor in `CLIENT REPLY OFF` (Redis 7.0 then never closes after `QUIT`).
    fn closing_steps(&self) -> Vec<Step> {
        let mut open = vec![true; self.clients];
        for step in &self.steps {
            if let Step::ReadToClose { client } = step {
                open[*client] = false;
            }
        }
        let open = (0..self.clients).filter(|&c| open[c]);
        open.flat_map(quit_steps).collect()
    }

    /// Panics with a readable report at the first step where the sides differ.
    fn compare(&self, direct: &[Outcome], proxied: &[Outcome]) {
        let steps = self.script();
        for (i, step) in steps.iter().enumerate() {
            let (d, p) = (direct.get(i), proxied.get(i));
            if let Some(d) = d.filter(|d| d.end != End::Done) {
                panic!(
                    "scenario {}: the scenario is wrong: Redis itself did not complete step {i} ({}): {}",
                    self.name,
                    describe(step),
                    show_outcome(Some(d), Some(d))
                );
            }
            if d == p {
                continue;
            }
            let mut msg = format!(
                "scenario {}: step {i} differs: {}\n",
                self.name,
                describe(step)
            );
            msg.push_str("steps so far:\n");
            for (j, s) in steps.iter().enumerate().take(i + 1) {
                let _ = writeln!(msg, "  {j:>3}. {}", describe(s));
            }
            let _ = writeln!(msg, "redis:   {}", show_outcome(d, p));
            let _ = writeln!(msg, "respipe: {}", show_outcome(p, d));
            if let (Some(d), Some(p)) = (d, p) {
                msg.push_str(&first_difference(&d.frames, &p.frames));
            }
            panic!("{msg}");
        }
    }
}

/// `client` writes `QUIT` and reads until the close.
fn quit_steps(client: usize) -> [Step; 2] {
    [
        Step::Write {
            client,
            bytes: encode(&["QUIT"]),
        },
        Step::ReadToClose { client },
    ]
}

/// Runs one step on one side.
async fn run_step(step: &Step, clients: &mut [Option<RawClient>], redis: &RedisServer) -> Outcome {
    let mut frames = Vec::new();
    let end = match *step {
        Step::Write { client, ref bytes } => match clients[client].as_mut() {
            Some(c) => write_all(c, bytes).await,
            None => End::Closed,
        },
        Step::Read {
            client,
            frames: n,
            ref want,
        } => match clients[client].as_mut() {
            Some(c) => match read_frames(c, Some(n), &mut frames).await {
                End::Done => expected(&frames, want.as_deref()),
                other => other,
            },
            None => End::Closed,
        },
        Step::ReadToClose { client } => match clients[client].as_mut() {
            Some(c) => match read_frames(c, None, &mut frames).await {
                End::Closed => {
                    clients[client] = None;
                    End::Done
                }
                End::Done => unreachable!("reading to the close ends only at the close"),
                other => other,
            },
            None => End::Done,
        },
        Step::Await {
            ref probe,
            ref want,
        } => await_reply(redis, probe, want.as_bytes()).await,
        Step::Check {
            ref bytes,
            ref want,
        } => {
            let mut c = redis.direct().await;
            match write_all(&mut c, bytes).await {
                End::Done => match read_frames(&mut c, Some(want.len()), &mut frames).await {
                    End::Done => expected(&frames, Some(want)),
                    other => other,
                },
                other => other,
            }
        }
    };
    Outcome { frames, end }
}

/// [`End::Done`] when there is no expectation or `frames` are exactly `want`.
fn expected(frames: &[Bytes], want: Option<&[Vec<u8>]>) -> End {
    match want {
        Some(want)
            if frames
                .iter()
                .map(|f| &f[..])
                .ne(want.iter().map(|w| &w[..])) =>
        {
            End::Failed(format!("expected exactly {}", show_all(want)))
        }
        _ => End::Done,
    }
}

/// Writes `bytes` with one `write_all`, within [`STEP_DEADLINE`].
async fn write_all(c: &mut RawClient, bytes: &[u8]) -> End {
    use tokio::io::AsyncWriteExt;
    let written = tokio::time::timeout(STEP_DEADLINE, c.stream.write_all(bytes)).await;
    match written {
        Ok(Ok(())) => End::Done,
        Ok(Err(e)) => End::Failed(format!("write: {e}")),
        Err(_) => End::Timeout,
    }
}

/// Reads `n` frames (or, with `None`, until the close) into `out`, normalised, within
/// [`STEP_DEADLINE`].
async fn read_frames(c: &mut RawClient, n: Option<usize>, out: &mut Vec<Bytes>) -> End {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    while n.is_none_or(|n| out.len() < n) {
        match tokio::time::timeout_at(deadline, c.try_read_frame()).await {
            Err(_) => return End::Timeout,
            Ok(Ok(Some((_, frame)))) => out.push(normalise(frame)),
            Ok(Ok(None)) => return End::Closed,
            // A reset is a close as far as a client can tell.
            Ok(Err(e)) if e.starts_with("read:") => return End::Closed,
            Ok(Err(e)) => return End::Failed(e),
        }
    }
    End::Done
}

/// Sends `probe` to `redis` on fresh connections until a reply contains `want` ([`End::Done`]) or
/// [`STEP_DEADLINE`] passes ([`End::Timeout`]).
async fn await_reply(redis: &RedisServer, probe: &[String], want: &[u8]) -> End {
    let deadline = tokio::time::Instant::now() + STEP_DEADLINE;
    let attempt = || async {
        let mut c = redis.direct().await;
        c.send(&encode(probe)).await;
        c.try_read_frame().await
    };
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Err(_) => return End::Timeout,
            Ok(Ok(Some((_, reply)))) if find(&reply, want).is_some() => return End::Done,
            Ok(_) => {}
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The differences between Redis and respipe that are not differences in behaviour, replaced by a
/// fixed placeholder on both sides before comparing. The whole list:
///
/// 1. The `id` in a `HELLO` reply (RESP2 array or RESP3 map, also inside an `EXEC` reply): a
///    connection id, which differs between any two connections. Everything else in `HELLO`'s reply
///    (server, version, proto, mode, role, modules) is compared.
pub fn normalise(frame: Bytes) -> Bytes {
    const HELLO: &[u8] = b"$6\r\nserver\r\n$5\r\nredis\r\n";
    const ID: &[u8] = b"$2\r\nid\r\n:";
    if find(&frame, HELLO).is_none() {
        return frame;
    }
    let mut out = Vec::with_capacity(frame.len());
    let mut rest = &frame[..];
    while let Some(at) = find(rest, HELLO) {
        let after = at + HELLO.len();
        out.extend_from_slice(&rest[..after]);
        rest = &rest[after..];
        if let Some(id) = find(rest, ID) {
            let digits = id + ID.len();
            let len = rest[digits..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            out.extend_from_slice(&rest[..digits]);
            out.extend_from_slice(b"<id>");
            rest = &rest[digits + len..];
        }
    }
    out.extend_from_slice(rest);
    Bytes::from(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A step in words, with the bytes of a write.
fn describe(step: &Step) -> String {
    match step {
        Step::Write { client, bytes } => {
            format!("{} writes {}", name(*client), escape(bytes))
        }
        Step::Read {
            client,
            frames,
            want: None,
        } => format!("{} reads {frames} frame(s)", name(*client)),
        Step::Read {
            client,
            want: Some(want),
            ..
        } => {
            format!("{} reads exactly {}", name(*client), show_all(want))
        }
        Step::ReadToClose { client } => format!("{} reads until the close", name(*client)),
        Step::Await { probe, want } => {
            format!(
                "Redis answers {} with {}",
                probe.join(" "),
                escape(want.as_bytes())
            )
        }
        Step::Check { bytes, want } => {
            format!(
                "Redis, asked directly {}, answers exactly {}",
                escape(bytes),
                show_all(want)
            )
        }
    }
}

/// Expected frames, escaped, one after another.
fn show_all(frames: &[Vec<u8>]) -> String {
    let frames: Vec<String> = frames.iter().map(|f| escape(f)).collect();
    frames.join(" ")
}

fn name(client: usize) -> char {
    char::from(b'A' + client as u8)
}

/// One side's outcome of a step, its frames one a line; `!` marks a frame the other side does not
/// have at that position.
fn show_outcome(o: Option<&Outcome>, other: Option<&Outcome>) -> String {
    let Some(o) = o else {
        return "not run (an earlier step failed)".to_owned();
    };
    let end = match &o.end {
        End::Done => "done".to_owned(),
        End::Timeout => format!("no more within {STEP_DEADLINE:?}"),
        End::Closed => "connection closed".to_owned(),
        End::Failed(e) => format!("failed: {e}"),
    };
    let mut s = format!("{} frame(s), {end}", o.frames.len());
    for (i, f) in o.frames.iter().enumerate() {
        let same = other.and_then(|other| other.frames.get(i)) == Some(f);
        let mark = if same { ' ' } else { '!' };
        let _ = write!(s, "\n  {mark}{i:>3}  {}", escape(f));
    }
    s
}

/// Where the frames first differ, when they are long enough for that to be hard to see.
fn first_difference(direct: &[Bytes], proxied: &[Bytes]) -> String {
    let Some(i) = (0..direct.len().min(proxied.len())).find(|&i| direct[i] != proxied[i]) else {
        return String::new();
    };
    let (d, p) = (&direct[i], &proxied[i]);
    let at = d.iter().zip(p.iter()).take_while(|(a, b)| a == b).count();
    format!(
        "first difference: frame {i}, byte {at} (lengths {} and {})\n",
        d.len(),
        p.len()
    )
}

/// Bytes as readable text: printable ASCII as is, `\r` `\n` `\\` escaped, anything else `\xNN`;
/// long runs are cut in the middle.
pub fn escape(bytes: &[u8]) -> String {
    let mut s = String::new();
    let cut = bytes.len() > SHOW_BYTES;
    let head = if cut { SHOW_BYTES / 2 } else { bytes.len() };
    for &b in &bytes[..head] {
        push_escaped(&mut s, b);
    }
    if cut {
        let tail = &bytes[bytes.len() - SHOW_BYTES / 4..];
        let _ = write!(s, "...<{} bytes in all>...", bytes.len());
        for &b in tail {
            push_escaped(&mut s, b);
        }
    }
    s
}

fn push_escaped(s: &mut String, b: u8) {
    match b {
        b'\r' => s.push_str("\\r"),
        b'\n' => s.push_str("\\n"),
        b'\\' => s.push_str("\\\\"),
        b' '..=b'~' => s.push(b as char),
        _ => {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
}
