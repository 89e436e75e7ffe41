//! Configuration: one validated [`Config`] built from a TOML file, `RESPIPE_*` environment variables and
//! flags, in that order of precedence (flags win over env, env over the file, the file over a twemproxy
//! pool given with `--twemproxy`, that over defaults).
//!
//! Every setting has one key and three spellings: `pool_size` in the file, `--pool-size` on the command
//! line and `RESPIPE_POOL_SIZE` in the environment. [`SETTINGS`] is the single list of them; the clap
//! command, the file's allowed keys and the environment lookup are all generated from it, and every value,
//! whatever its source, goes through the same parser. So an error reads the same wherever the bad value
//! came from, and names the key in all its spellings:
//!
//! ```text
//! invalid pool_size (--pool-size, RESPIPE_POOL_SIZE): must be at least 1 (from config file /etc/respipe.toml)
//! ```
//!
//! Durations are humantime strings everywhere (`"500ms"`, `"2s"`, `"1m"`); in the file they must be
//! strings, never bare integers, so a unit is never guessed. Empty environment variables count as unset.
//!
//! [`Config`] is in sections (`config.batching.pool_size`), and so may the file be (`[batching]`
//! then `pool_size = 2`); the flat key stays a first-class spelling, the one flags and environment
//! variables derive from ([`SECTIONS`], `file`). Beyond the settings, the file's `[upstream]` table
//! may describe shards (`shards`), and a twemproxy YAML pool converts to the same (`twemproxy`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command};
use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

pub use file::SECTIONS;

mod file;
mod shards;
mod twemproxy;

/// The proxy's whole configuration, validated, in sections: each part of the proxy takes the
/// section it needs. Build it with [`Config::load`] (or [`Config::load_from`] in tests);
/// [`Config::default`] gives every default without touching DNS, for other modules' tests.
///
/// The file may write a setting flat (`pool_size = 2`, as the flag and the environment variable
/// spell it) or in its section (`[batching]` then `pool_size = 2`); [`SECTIONS`] lists where each
/// setting lives and its name there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How clients reach respipe (`[listen]`).
    pub listen: Listen,
    /// The Redis server every command is forwarded to; for shards, the first server (the pool's db,
    /// credentials and TLS). Default `127.0.0.1:6379`, db 0, no auth, no TLS. `upstream_user` /
    /// `upstream_password` override the URL's credentials (`[upstream]`: `address`, `user`,
    /// `password`).
    pub upstream: Upstream,
    /// How the upstream is laid out: one server (`upstream`), or servers sharded by key (the
    /// `[upstream]` table with `kind = "shards"`, or a twemproxy pool).
    pub topology: Topology,
    /// Which commands may go to replicas, and which replicas (`[upstream]`: `read_from`,
    /// `read_your_writes`, `replicas`).
    pub reads: Reads,
    /// Upstream connections and shutdown: how long things may take (`[timeouts]`).
    pub timeouts: Timeouts,
    /// The shared upstream connections and how commands are coalesced on them (`[batching]`).
    pub batching: Batching,
    /// What one client may do and hold (`[limits]`).
    pub limits: Limits,
    /// Dedicated upstream connections lent to clients (`[leases]`).
    pub leases: Leases,
    /// TLS to clients and to `rediss://` upstreams (`[tls]`).
    pub tls: Tls,
    /// Metrics and logs (`[observability]`).
    pub observability: Observability,
    /// The TOML file the configuration was read from (`--config` / `RESPIPE_CONFIG`), if any: the
    /// binary reloads when it changes. Not a setting itself.
    pub config_file: Option<PathBuf>,
    /// What the loader accepted but cannot honour (twemproxy keys with no equivalent), for the
    /// binary to log once tracing is up. Not a setting itself.
    pub warnings: Vec<String>,
}

/// `[listen]`: how clients reach respipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Addresses to accept clients on: TCP `HOST:PORT` (a host name is resolved once, at load, and the
    /// first address is used) or `unix:/path`. Default `["127.0.0.1:6380"]`. At least one, no duplicates.
    /// Flat key `listen`.
    pub addresses: Vec<ListenAddr>,
    /// Most clients connected at once. Default 10000 (Redis's `maxclients`). Past it a new connection
    /// gets Redis's `-ERR max number of clients reached` and is closed.
    pub max_clients: NonZeroUsize,
    /// Password clients must give (`AUTH password` or `HELLO 3 AUTH default password`) before any
    /// other command; `NOAUTH` until then, as Redis answers. Default: none (respipe asks for nothing
    /// and `AUTH` goes to Redis). When set, `AUTH` is checked by respipe, not by Redis.
    pub requirepass: Option<Secret>,
}

/// The read policy (in the file's `[upstream]` section): whether commands respipe knows to be
/// read-only (`command::is_read`) go to the primary's replicas, and which replicas those are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    /// Where reads go. Default [`ReadFrom::Primary`]: every command goes to the primary. Other
    /// policies need replicas (`replicas`, or those Sentinel reports) and are refused for shards
    /// and clusters. Never writes, scripts other than `EVAL_RO`/`EVALSHA_RO`/`FCALL_RO`, or
    /// anything in a transaction, a blocking command, a subscription or on a lease.
    pub read_from: ReadFrom,
    /// Read-your-writes: after a client sends a command that may write (one Redis flags `write`,
    /// `EVAL`, `EVALSHA`, `FCALL`, a module's), its reads go to the primary for this long, so it reads what it wrote while replicas catch up. Default 1s
    /// (longer than the usual replication lag on a LAN); `None` (`0`) disables: a read right
    /// after a write may then miss it on a replica. Only with `read_from` other than primary.
    pub read_your_writes: Option<Duration>,
    /// The replicas of a single upstream (`kind = "single"`), each at `HOST:PORT` or
    /// `unix:/path` with the upstream's db, credentials and TLS. Default none. With `kind =
    /// "sentinel"` the replicas are those the sentinels report, and none may be listed here.
    pub replicas: Vec<Endpoint>,
}

/// Where commands known to be read-only go (`read_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// `primary`: everything goes to the primary.
    #[default]
    Primary,
    /// `prefer-replica`: each client's reads go to one replica (clients spread evenly over
    /// them); to another while that one's connections are down, to the primary while all are.
    PreferReplica,
    /// `replica`: as `prefer-replica`, but while no replica is up reads are refused with an
    /// `-ERR` (the command is not sent) instead of loading the primary.
    Replica,
}

/// `[timeouts]`: how long upstream connections and shutdown may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Time allowed to connect (and authenticate) to the upstream. Default 1s, must be more than 0.
    /// When it expires the attempt counts as failed and reconnect backoff applies.
    pub connect_timeout: Duration,
    /// Time allowed for a forwarded command's reply. Default 10s; `None` (set `0` / `"0s"`) waits forever.
    /// When it expires the client gets `-ERR respipe: ... did not answer within ...`; the reply slot
    /// stays in the connection's FIFO so the late reply is read and dropped, never handed to the next
    /// client. It also bounds how long a request may wait for room in a full upstream queue.
    /// A shared connection whose command timed out takes no new commands (a fresh connection does,
    /// so a busy script answers `-BUSY` and `SCRIPT KILL` gets through); leased connections never
    /// time out.
    pub command_timeout: Option<Duration>,
    /// Cap on the reconnect delay: backoff starts at 10ms and doubles up to this. Default 500ms, at
    /// least 10ms. Commands arriving between attempts fail fast with `-ERR respipe: upstream
    /// unavailable ...`; those arriving during an attempt wait for it (at most `connect_timeout`).
    /// After Redis closes a healthy connection (`CLIENT KILL`, its idle `timeout`, a restart) the
    /// first attempt starts at once, so no command fails while Redis accepts connections.
    pub reconnect_backoff_max: Duration,
    /// On SIGTERM/SIGINT, how long in-flight commands may take to finish after accepting stops.
    /// Default 10s, must be more than 0. When it expires the remaining connections are dropped, that is
    /// logged, and the process still exits 0.
    pub drain_timeout: Duration,
}

/// `[batching]`: the shared upstream connections and how commands are coalesced on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batching {
    /// Upstream connections shared by all clients for ordinary commands. Default 1: every client's
    /// commands meet in one pipeline, the largest batches Redis can get (README, "Performance").
    /// Clients are spread over them; more help only when one connection's socket is the bottleneck
    /// (large values at high rates).
    pub pool_size: NonZeroUsize,
    /// Most commands written to an upstream connection in one batch. Default 1024. When a batch is full
    /// it is written and the rest of the queue waits for the next write.
    pub max_batch_commands: NonZeroUsize,
    /// Most request bytes in one upstream batch (a single larger command still goes alone). Default
    /// 1048576 (1 MiB), at least 64. When full, the batch is written and the next one starts.
    pub max_batch_bytes: NonZeroUsize,
    /// How long a batch may wait for more commands before it is written. Default 0: adaptive, write
    /// whatever is queued as soon as the socket can take it. Set in microseconds (`batch_window_us`),
    /// at most 1 second.
    pub batch_window: Duration,
    /// Commands in flight on one upstream connection. Default 65536. At the limit new requests wait
    /// for replies to come back: backpressure that reaches the clients through `max_client_inflight`.
    pub max_upstream_inflight: NonZeroUsize,
    /// Distinct shared pools (one per db, protocol and user in use). Default 32. Past it a client that
    /// needs another pool gets `-ERR respipe: too many upstream pools (max_pools ...)`.
    pub max_pools: NonZeroUsize,
    /// Run respipe's threads under Linux's `SCHED_BATCH` policy. Default false. A client's request
    /// then wakes respipe without preempting that client: respipe runs once the client yields (it
    /// soon waits for its reply) and serves every request that arrived meanwhile in one pass, with
    /// fewer context switches and larger upstream batches where clients share respipe's cores.
    /// The cost, and why it is off by default: respipe cannot preempt anything, so on a core that
    /// other work keeps busy every wake-up waits out that work's time slice (milliseconds; README,
    /// "Performance"). Only for cores where nothing CPU-bound runs beside respipe. Ignored elsewhere
    /// than Linux; a refusal is logged and changes nothing else.
    pub sched_batch: bool,
    /// Worker threads (`workers`: a number, or `auto` for one per CPU respipe may run on). Default 1.
    /// Each worker is a single-threaded event loop with its own upstream connections and leases;
    /// new clients go to the worker serving the fewest. Every worker splits the batches N ways
    /// (README, "Workers"): more than one pays only when one core cannot keep up with the clients.
    pub workers: NonZeroUsize,
}

/// `[limits]`: what one client may do and hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Commands one client may have in flight (sent, reply not yet written back). Default 4096. At the
    /// limit respipe stops reading that client until replies drain: backpressure, not an error.
    pub max_client_inflight: NonZeroUsize,
    /// Reply bytes waiting to be written to one client. Default 268435456 (256 MiB). Past it the client
    /// is closed and the log says so, with how fast it was reading. Long before, respipe throttles a
    /// client that reads slowly: it stops reading its requests while the unsent replies plus those
    /// owed for commands in flight (at the client's reply size so far) reach 8 MiB.
    pub max_client_reply_bytes: NonZeroUsize,
    /// Largest single request, in bytes. Default 536870912 (512 MiB, Redis's `proto-max-bulk-len`).
    /// A larger request is a protocol error: the client gets `-ERR Protocol error` and is closed.
    pub max_request_bytes: NonZeroUsize,
    /// Most arguments in one request. Default 16777216. More is a protocol error, as above.
    pub max_request_args: NonZeroUsize,
    /// Commands refused with `-ERR respipe: '<cmd>' is disabled by configuration (deny_commands)`
    /// (names, any case; e.g. `["FLUSHALL", "KEYS", "DEBUG", "SHUTDOWN"]`). Default: none.
    pub deny_commands: Vec<String>,
}

/// `[leases]`: dedicated upstream connections lent to clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leases {
    /// Dedicated upstream connections lent to clients at once, for transactions (MULTI/WATCH),
    /// blocking commands, subscriptions and MONITOR. Default 256. Past it such a command gets
    /// `-ERR respipe: no dedicated upstream connection available (max_leases ...)`; nothing waits.
    pub max_leases: NonZeroUsize,
    /// Dedicated connections kept handshaken in advance for each state (db, protocol, user) that
    /// clients have leased in, so `MULTI` and the rest take one without a connect or a handshake.
    /// A lease given back in a state respipe trusts is scrubbed (`RESET`, then the state's handshake)
    /// and kept as one of them. Default 2; `0` disables (every lease is a fresh connection). They
    /// count against `max_leases` and give way to a client that needs a lease when none is left.
    pub warm_leases: usize,
    /// A client holding a dedicated connection for a transaction (after `MULTI` or `WATCH`) that
    /// sends nothing for this long is closed, so leaked transactions cannot exhaust `max_leases`.
    /// Default 300s; `0` disables. Subscribers and blocked commands are never idle.
    pub lease_idle_timeout: Option<Duration>,
}

/// `[tls]`: TLS to clients and to `rediss://` upstreams. Flat keys are `tls_<field>` for the
/// client side and `upstream_tls_<field>` for `upstream_<field>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// TLS for clients: certificate chain (PEM). With `key`, respipe speaks only TLS on its TCP
    /// listeners (unix sockets stay plain). Default: none.
    pub cert: Option<PathBuf>,
    /// TLS for clients: private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// TLS for clients: CA (PEM) that client certificates must chain to; when set, clients without
    /// a valid certificate are refused during the handshake. Default: none (no client certificates).
    pub client_ca: Option<PathBuf>,
    /// `rediss://` upstreams: CA (PEM) to trust for Redis's certificate. Default: the CAs of the
    /// operating system's trust store are not used; without this (or `upstream_insecure`)
    /// `rediss://` is a configuration error.
    pub upstream_ca: Option<PathBuf>,
    /// `rediss://` upstreams: client certificate chain (PEM) for mutual TLS.
    pub upstream_cert: Option<PathBuf>,
    /// `rediss://` upstreams: private key (PEM) of `upstream_cert`.
    pub upstream_key: Option<PathBuf>,
    /// `rediss://` upstreams: name checked against Redis's certificate and sent as SNI. Default: the
    /// upstream's host.
    pub upstream_server_name: Option<String>,
    /// `rediss://` upstreams: skip verifying Redis's certificate. Only when explicitly asked; logged
    /// at warn. Default: false.
    pub upstream_insecure: bool,
}

/// `[observability]`: metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observability {
    /// Where `/metrics`, `/healthz` and `/readyz` are served over HTTP. Default: none, the admin endpoint
    /// is disabled (and then nothing answers `/readyz`). It binds exactly what is given: the example
    /// config uses `127.0.0.1`, only say `0.0.0.0` where the network is private (a pod).
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter when `RUST_LOG` is not set, a tracing `EnvFilter` directive such as `info` or
    /// `respipe=debug,warn`. Default `info`. Must not be empty; its syntax is checked where it is used.
    pub log_level: String,
    /// Log line format on stderr. Default [`LogFormat::Text`].
    pub log_format: LogFormat,
}

/// A password: compared, never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One address to accept clients on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    /// `HOST:PORT`, already resolved.
    Tcp(SocketAddr),
    /// `unix:/path` (never empty).
    Unix(PathBuf),
}

/// The Redis server respipe forwards to. Its `Display` (and `Debug`) never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Where to connect.
    pub endpoint: Endpoint,
    /// `rediss://`: speak TLS to the upstream (recorded here; TLS is implemented in the connection).
    pub tls: bool,
    /// ACL user for `AUTH user password`; `None` means `AUTH password` (the default user) or no AUTH.
    pub username: Option<String>,
    /// Password for `AUTH`; `None` means no AUTH. Never logged.
    pub password: Option<String>,
    /// Database selected with `SELECT` after connecting. Default 0.
    pub db: u32,
}

/// The kinds of upstream respipe forwards to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topology {
    /// One Redis server: [`Config::upstream`].
    #[default]
    Single,
    /// Independent servers, each key on one of them, placed as twemproxy places it.
    /// [`Config::upstream`] is the first server (the pool's db, credentials and TLS).
    Shards(crate::shard::Spec),
    /// A Redis Cluster found from its seed nodes (`redis-cluster://h1:p1,h2:p2` or
    /// `[upstream] kind = "cluster"`). [`Config::upstream`] is the first seed.
    Cluster(crate::cluster::Spec),
    /// A primary and its replicas watched by Redis Sentinel
    /// (`redis-sentinel://[user:password@]s1:p1,s2:p2/master[/db]` or `[upstream] kind =
    /// "sentinel"`). [`Config::upstream`] holds the data nodes' db, credentials and TLS; its
    /// address is the first sentinel's, never connected to as a data node (the primary's address
    /// is what the sentinels say).
    Sentinel(crate::sentinel::Spec),
}

/// Where an upstream lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Host name or IP literal (IPv6 without brackets), resolved at connect time since DNS can change.
    Tcp { host: String, port: u16 },
    /// A unix socket path.
    Unix(PathBuf),
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`text`).
    #[default]
    Text,
    /// One JSON object per line (`json`).
    Json,
}

/// Why a configuration could not be loaded. `main` should call [`ConfigError::exit`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Command-line parsing stopped: a usage error, or `--help` / `--version` (not errors really; clap
    /// prints them and they exit 0, see [`ConfigError::exit`]).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    /// The config file could not be read.
    #[error("config file {}: {source}", path.display())]
    ReadFile { path: PathBuf, source: io::Error },
    /// The config file is not valid TOML, or a value has a type no setting takes.
    #[error("config file {}: {source}", path.display())]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// The config file has a key that is not a setting (a typo, usually).
    #[error("config file {}: unknown key {key:?}{}", path.display(), suggest(key))]
    UnknownKey { path: PathBuf, key: String },
    /// A setting's value is wrong: names the key in every spelling, why, and where the value came from.
    #[error("invalid {key} ({flag}, {env}): {reason} ({origin})")]
    Invalid {
        key: &'static str,
        flag: &'static str,
        env: &'static str,
        reason: String,
        origin: Origin,
    },
    /// A value that only a file can give is wrong (the `[upstream]` table's topology, a twemproxy
    /// pool): names its path in the file (`upstream.servers[1].weight`), why, and which file.
    #[error("invalid {key}: {reason} ({origin})")]
    InvalidKey {
        key: String,
        reason: String,
        origin: Origin,
    },
    /// Not an error: `--print-config` asked for the configuration as TOML, here, instead of a
    /// proxy ([`ConfigError::exit`] prints it and exits 0, as clap does for `--help`).
    #[error("--print-config")]
    PrintConfig(String),
}

/// Where a setting's value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nobody set it: the built-in default.
    Default,
    /// The config file at this path.
    File(PathBuf),
    /// The twemproxy YAML file at this path (`twemproxy`).
    Twemproxy(PathBuf),
    /// This environment variable.
    Env(&'static str),
    /// This flag.
    Flag(&'static str),
}

/// One setting's names and help. The TOML key is `key`, the flag `flag`, the environment variable `env`.
#[derive(Debug)]
pub struct Setting {
    /// Key in the config file, flat; [`SECTIONS`] gives its section and name there, which is also the
    /// field of [`Config`] it sets (modulo `upstream`, `upstream_user`, `upstream_password`, `twemproxy*`).
    pub key: &'static str,
    /// The flag, with its dashes.
    pub flag: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// Placeholder in `--help`.
    pub value_name: &'static str,
    /// The default, as it would be written on the command line (`""` for none).
    pub default: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
}

/// Every setting, in `--help` order. `--config` / `RESPIPE_CONFIG` is not here: it is not a file key.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    setting("listen", "--listen", "RESPIPE_LISTEN", "ADDR", "127.0.0.1:6380",
        "Accept clients on HOST:PORT or unix:/path; repeat the flag, or comma-separate in the env, for several"),
    setting("upstream", "--upstream", "RESPIPE_UPSTREAM", "URL", "127.0.0.1:6379",
        "Redis to forward to: HOST:PORT, redis://[[user]:password@]host[:port][/db], rediss://..., unix:/path[?db=N], a Redis Cluster: redis-cluster://[user:password@]host:port,host:port (rediss-cluster:// for TLS), or a primary found by Sentinel: redis-sentinel://[user:password@]host:port,host:port/MASTER[/db] (the user is the sentinels'; rediss-sentinel:// for TLS)"),
    setting("upstream_user", "--upstream-user", "RESPIPE_UPSTREAM_USER", "USER", "",
        "ACL user for AUTH; overrides the URL's user"),
    setting("upstream_password", "--upstream-password", "RESPIPE_UPSTREAM_PASSWORD", "PASSWORD", "",
        "Password for AUTH; overrides the URL's password (prefer the env var or file to keep it out of ps)"),
    setting("sentinel_user", "--sentinel-user", "RESPIPE_SENTINEL_USER", "USER", "",
        "Sentinel mode: ACL user for AUTH to the sentinels (not the data nodes); overrides the URL's user"),
    setting("sentinel_password", "--sentinel-password", "RESPIPE_SENTINEL_PASSWORD", "PASSWORD", "",
        "Sentinel mode: password for AUTH to the sentinels; overrides the URL's password"),
    setting("read_from", "--read-from", "RESPIPE_READ_FROM", "primary|prefer-replica|replica", "primary",
        "Where commands known to be read-only go: the primary; a replica when one is up, else the primary; or a replica only (-ERR while none is up)"),
    setting("read_your_writes", "--read-your-writes", "RESPIPE_READ_YOUR_WRITES", "DURATION", "1s",
        "With read_from other than primary: a client's reads go to the primary for this long after its last write; 0 disables"),
    setting("replicas", "--replicas", "RESPIPE_REPLICAS", "HOST:PORT,...", "",
        "Replicas of a single upstream for read_from, comma-separated; they take the upstream's db, credentials and TLS"),
    setting("twemproxy", "--twemproxy", "RESPIPE_TWEMPROXY", "FILE", "",
        "Take the upstream servers (and listen, timeout, server_connections...) from a twemproxy YAML pool; anything else that sets them wins"),
    setting("twemproxy_pool", "--twemproxy-pool", "RESPIPE_TWEMPROXY_POOL", "NAME", "",
        "The pool to take from the --twemproxy file when it has several"),
    setting("metrics_listen", "--metrics-listen", "RESPIPE_METRICS_LISTEN", "ADDR", "",
        "Serve /metrics, /healthz and /readyz on HOST:PORT; disabled when unset"),
    setting("pool_size", "--pool-size", "RESPIPE_POOL_SIZE", "N", "1",
        "Upstream connections shared by all clients"),
    setting("max_batch_commands", "--max-batch-commands", "RESPIPE_MAX_BATCH_COMMANDS", "N", "1024",
        "Most commands in one upstream write"),
    setting("max_batch_bytes", "--max-batch-bytes", "RESPIPE_MAX_BATCH_BYTES", "N", "1048576",
        "Most bytes in one upstream write (at least 64)"),
    setting("batch_window_us", "--batch-window-us", "RESPIPE_BATCH_WINDOW_US", "N", "0",
        "Microseconds a batch may wait for more commands; 0 = adaptive (write as soon as the socket can take it); at most 1000000"),
    setting("sched_batch", "--sched-batch", "RESPIPE_SCHED_BATCH", "BOOL", "false",
        "Run as Linux SCHED_BATCH: a client's request does not preempt the client, and respipe serves all that arrived in one pass (less CPU where clients share its core); never where CPU-bound work shares it (wake-ups then wait milliseconds)"),
    setting("workers", "--workers", "RESPIPE_WORKERS", "N|auto", "1",
        "Worker threads, each with its own upstream connections; auto = one per CPU available; more than 1 splits the batches (README, Workers)"),
    setting("connect_timeout", "--connect-timeout", "RESPIPE_CONNECT_TIMEOUT", "DURATION", "1s",
        "Time allowed to connect to the upstream"),
    setting("command_timeout", "--command-timeout", "RESPIPE_COMMAND_TIMEOUT", "DURATION", "10s",
        "Time allowed for a reply; 0 disables"),
    setting("reconnect_backoff_max", "--reconnect-backoff-max", "RESPIPE_RECONNECT_BACKOFF_MAX", "DURATION", "500ms",
        "Cap on the reconnect delay, which starts at 10ms and doubles"),
    setting("drain_timeout", "--drain-timeout", "RESPIPE_DRAIN_TIMEOUT", "DURATION", "10s",
        "On SIGTERM/SIGINT, time allowed for in-flight commands to finish"),
    setting("max_clients", "--max-clients", "RESPIPE_MAX_CLIENTS", "N", "10000",
        "Most clients at once; past it new clients get -ERR max number of clients reached"),
    setting("max_client_inflight", "--max-client-inflight", "RESPIPE_MAX_CLIENT_INFLIGHT", "N", "4096",
        "Commands one client may have in flight; past it respipe stops reading that client"),
    setting("max_client_reply_bytes", "--max-client-reply-bytes", "RESPIPE_MAX_CLIENT_REPLY_BYTES", "N", "268435456",
        "Unsent reply bytes one client may have; past it the client is closed"),
    setting("max_request_bytes", "--max-request-bytes", "RESPIPE_MAX_REQUEST_BYTES", "N", "536870912",
        "Largest single request in bytes; larger is a protocol error"),
    setting("max_request_args", "--max-request-args", "RESPIPE_MAX_REQUEST_ARGS", "N", "16777216",
        "Most arguments in one request; more is a protocol error"),
    setting("max_upstream_inflight", "--max-upstream-inflight", "RESPIPE_MAX_UPSTREAM_INFLIGHT", "N", "65536",
        "Commands in flight on one upstream connection; past it new requests wait"),
    setting("max_leases", "--max-leases", "RESPIPE_MAX_LEASES", "N", "256",
        "Dedicated upstream connections lent at once (transactions, blocking commands, subscriptions, MONITOR)"),
    setting("warm_leases", "--warm-leases", "RESPIPE_WARM_LEASES", "N", "2",
        "Dedicated connections kept handshaken in advance per state in use (counted in max_leases); 0 disables"),
    setting("max_pools", "--max-pools", "RESPIPE_MAX_POOLS", "N", "32",
        "Shared pools at most, one per (db, protocol, user) in use"),
    setting("requirepass", "--requirepass", "RESPIPE_REQUIREPASS", "PASSWORD", "",
        "Password clients must AUTH with to use respipe itself; unset = none (AUTH goes to Redis)"),
    setting("tls_cert", "--tls-cert", "RESPIPE_TLS_CERT", "FILE", "",
        "Serve TLS to clients on TCP listeners with this certificate chain (PEM); needs --tls-key"),
    setting("tls_key", "--tls-key", "RESPIPE_TLS_KEY", "FILE", "",
        "Private key (PEM) of --tls-cert"),
    setting("tls_client_ca", "--tls-client-ca", "RESPIPE_TLS_CLIENT_CA", "FILE", "",
        "Require client certificates signed by this CA (PEM)"),
    setting("upstream_tls_ca", "--upstream-tls-ca", "RESPIPE_UPSTREAM_TLS_CA", "FILE", "",
        "rediss://: trust this CA (PEM) for Redis's certificate"),
    setting("upstream_tls_cert", "--upstream-tls-cert", "RESPIPE_UPSTREAM_TLS_CERT", "FILE", "",
        "rediss://: client certificate chain (PEM) for mutual TLS; needs --upstream-tls-key"),
    setting("upstream_tls_key", "--upstream-tls-key", "RESPIPE_UPSTREAM_TLS_KEY", "FILE", "",
        "rediss://: private key (PEM) of --upstream-tls-cert"),
    setting("upstream_tls_server_name", "--upstream-tls-server-name", "RESPIPE_UPSTREAM_TLS_SERVER_NAME", "NAME", "",
        "rediss://: name to verify and send as SNI (default: the upstream host)"),
    setting("upstream_tls_insecure", "--upstream-tls-insecure", "RESPIPE_UPSTREAM_TLS_INSECURE", "BOOL", "false",
        "rediss://: do not verify Redis's certificate (only when you must)"),
    setting("deny_commands", "--deny-commands", "RESPIPE_DENY_COMMANDS", "CMD,CMD", "",
        "Commands refused with an -ERR naming the setting, comma-separated (e.g. FLUSHALL,KEYS,DEBUG,SHUTDOWN)"),
    setting("lease_idle_timeout", "--lease-idle-timeout", "RESPIPE_LEASE_IDLE_TIMEOUT", "DURATION", "300s",
        "Close a client idle this long inside MULTI/after WATCH (it holds a dedicated connection); 0 disables"),
    setting("log_level", "--log-level", "RESPIPE_LOG_LEVEL", "FILTER", "info",
        "Log filter (tracing EnvFilter syntax) used when RUST_LOG is unset"),
    setting("log_format", "--log-format", "RESPIPE_LOG_FORMAT", "text|json", "text",
        "Log line format on stderr"),
];

/// The environment variable naming the config file (the flag is `--config`).
pub const CONFIG_ENV: &str = "RESPIPE_CONFIG";

/// First reconnect delay; `reconnect_backoff_max` may not be below it.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(10);

impl Config {
    /// Loads the configuration from the process's arguments and environment. See [`Config::load_from`].
    pub fn load() -> Result<Config, ConfigError> {
        Config::load_from(std::env::args_os(), &|name: &str| {
            // Lossy rather than silently ignoring a non-UTF-8 value: the parser then rejects it loudly.
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// Loads the configuration from `args` (including argv\[0\]) and the environment lookup `env`:
    /// reads the file named by `--config` or `RESPIPE_CONFIG`, overlays `RESPIPE_*` variables, then
    /// flags, parses and validates every value, and resolves listen and metrics host names.
    pub fn load_from<I, T>(
        args: I,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = command().try_get_matches_from(args)?;
        let lookup = |name: &str| env(name).filter(|v| !v.is_empty());
        let mut values = Values::default();

        let config_file = matches
            .get_one::<PathBuf>("config")
            .cloned()
            .or_else(|| lookup(CONFIG_ENV).map(PathBuf::from));
        if let Some(path) = &config_file {
            values.read_file(path.clone())?;
        }
        for s in SETTINGS {
            if let Some(text) = lookup(s.env) {
                values.set(s.key, Raw::Text(text), Origin::Env(s.env));
            }
        }
        for s in SETTINGS {
            if matches.value_source(s.key) != Some(ValueSource::CommandLine) {
                continue;
            }
            let mut given = matches
                .get_many::<String>(s.key)
                .into_iter()
                .flatten()
                .cloned();
            let raw = if s.key == "listen" {
                Raw::List(given.collect())
            } else {
                Raw::Text(given.next_back().unwrap_or_default())
            };
            values.set(s.key, raw, Origin::Flag(s.flag));
        }
        values.read_twemproxy()?;
        let mut config = values.build()?;
        if matches.get_flag("print_config") {
            return Err(ConfigError::PrintConfig(values.print()));
        }
        config.config_file = config_file;
        Ok(config)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: Listen {
                addresses: vec![ListenAddr::Tcp(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    6380,
                ))],
                max_clients: nz(10_000),
                requirepass: None,
            },
            upstream: Upstream::default(),
            topology: Topology::Single,
            reads: Reads::default(),
            timeouts: Timeouts {
                connect_timeout: Duration::from_secs(1),
                command_timeout: Some(Duration::from_secs(10)),
                reconnect_backoff_max: Duration::from_millis(500),
                drain_timeout: Duration::from_secs(10),
            },
            batching: Batching {
                pool_size: nz(1),
                max_batch_commands: nz(1024),
                max_batch_bytes: nz(1 << 20),
                batch_window: Duration::ZERO,
                max_upstream_inflight: nz(65_536),
                max_pools: nz(32),
                sched_batch: false,
                workers: nz(1),
            },
            limits: Limits {
                max_client_inflight: nz(4096),
                max_client_reply_bytes: nz(256 << 20),
                max_request_bytes: nz(512 << 20),
                max_request_args: nz(16 << 20),
                deny_commands: Vec::new(),
            },
            leases: Leases {
                max_leases: nz(256),
                warm_leases: 2,
                lease_idle_timeout: Some(Duration::from_secs(300)),
            },
            tls: Tls {
                cert: None,
                key: None,
                client_ca: None,
                upstream_ca: None,
                upstream_cert: None,
                upstream_key: None,
                upstream_server_name: None,
                upstream_insecure: false,
            },
            observability: Observability {
                metrics_listen: None,
                log_level: "info".to_owned(),
                log_format: LogFormat::Text,
            },
            config_file: None,
            warnings: Vec::new(),
        }
    }
}

impl Upstream {
    /// A plain TCP upstream: no TLS, no auth, db 0.
    pub fn tcp(host: impl Into<String>, port: u16) -> Upstream {
        Upstream {
            endpoint: Endpoint::Tcp {
                host: host.into(),
                port,
            },
            ..Upstream::default()
        }
    }

    /// A unix-socket upstream: no auth, db 0.
    pub fn unix(path: impl Into<PathBuf>) -> Upstream {
        Upstream {
            endpoint: Endpoint::Unix(path.into()),
            ..Upstream::default()
        }
    }

    /// Parses every `--upstream` form (see [`SETTINGS`]); the error never repeats the input, which may
    /// hold a password.
    fn parse(s: &str) -> Result<Upstream, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("unix:") {
            return parse_unix_upstream(rest);
        }
        let Some((scheme, rest)) = s.split_once("://") else {
            let (host, port) = split_host_port(s)?.ok_or(
                "expected HOST:PORT, redis://host[:port][/db], rediss://... or unix:/path",
            )?;
            return Ok(Upstream::tcp(host, nonzero_port(port)?));
        };
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(format!("unsupported scheme {scheme:?}: expected redis://, rediss://, unix:/path or HOST:PORT")),
        };
        if rest.contains(['?', '#']) {
            return Err("query parameters and fragments are not supported in redis:// URLs".into());
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(userinfo) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let user = percent_decode(user).map_err(|e| format!("user: {e}"))?;
                let pass = percent_decode(pass).map_err(|e| format!("password: {e}"))?;
                (non_empty(user), non_empty(pass))
            }
        };
        let (host, port) = match split_host_port(hostport)? {
            Some(host_port) => host_port,
            None => (parse_host(hostport)?, 6379),
        };
        let db = match path {
            "" => 0,
            db => parse_db(db)?,
        };
        let port = nonzero_port(port)?;
        Ok(Upstream {
            endpoint: Endpoint::Tcp { host, port },
            tls,
            username,
            password,
            db,
        })
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            endpoint: Endpoint::Tcp {
                host: "127.0.0.1".to_owned(),
                port: 6379,
            },
            tls: false,
            username: None,
            password: None,
            db: 0,
        }
    }
}

impl fmt::Display for Upstream {
    /// `redis://user:***@host:6379/2`, `rediss://...`, `host:port` style hosts bracketed when IPv6,
    /// `unix:/path?db=2`. The password is always `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Tcp { .. } => {
                f.write_str(if self.tls { "rediss://" } else { "redis://" })?;
                match (&self.username, &self.password) {
                    (None, None) => {}
                    (user, pass) => {
                        write!(
                            f,
                            "{}",
                            user.as_deref().map(percent_encode).unwrap_or_default()
                        )?;
                        f.write_str(if pass.is_some() { ":***@" } else { "@" })?;
                    }
                }
                write!(f, "{}", self.endpoint)?;
                if self.db != 0 {
                    write!(f, "/{}", self.db)?;
                }
                Ok(())
            }
            Endpoint::Unix(_) => {
                write!(f, "{}", self.endpoint)?;
                if self.db != 0 {
                    write!(f, "?db={}", self.db)?;
                }
                if self.username.is_some() || self.password.is_some() {
                    write!(
                        f,
                        " (auth as {}:***)",
                        self.username.as_deref().unwrap_or("default")
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Upstream {
    /// Like the derived `Debug`, with the password replaced by `"***"` so `{config:?}` is safe to log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .finish()
    }
}

impl fmt::Display for Endpoint {
    /// `host:port` (`[::1]:6379` for IPv6) or `unix:/path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            read_from: ReadFrom::Primary,
            read_your_writes: Some(Duration::from_secs(1)),
            replicas: Vec::new(),
        }
    }
}

impl fmt::Display for ReadFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadFrom::Primary => "primary",
            ReadFrom::PreferReplica => "prefer-replica",
            ReadFrom::Replica => "replica",
        })
    }
}

impl ListenAddr {
    /// Parses `unix:/path` or `HOST:PORT`, resolving a host name to its first address.
    fn parse(s: &str) -> Result<ListenAddr, String> {
        let s = s.trim();
        match s.strip_prefix("unix:") {
            Some(path) => Ok(ListenAddr::Unix(parse_unix_path(path)?)),
            None => resolve(s).map(ListenAddr::Tcp),
        }
    }
}

impl fmt::Display for ListenAddr {
    /// `127.0.0.1:6380`, `[::1]:6380` or `unix:/path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

impl ConfigError {
    /// What `main` does with a load error: `--help`, `--version` and `--print-config` print to stdout
    /// and exit 0; a usage error prints clap's message and usage; any other error prints
    /// `error: {self}`; both exit 64 (EX_USAGE).
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Clap(err) if !err.use_stderr() => err.exit(),
            ConfigError::PrintConfig(toml) => {
                print!("{toml}");
                std::process::exit(0)
            }
            ConfigError::Clap(err) => {
                let _ = err.print();
            }
            other => eprintln!("error: {other}"),
        }
        std::process::exit(64)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the default"),
            Origin::File(path) => write!(f, "from config file {}", path.display()),
            Origin::Twemproxy(path) => write!(f, "from twemproxy file {}", path.display()),
            Origin::Env(name) | Origin::Flag(name) => write!(f, "from {name}"),
        }
    }
}

/// A value as given, before it is parsed: command-line and environment values are always text, the
/// file's may also be integers or lists of strings.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Raw {
    Text(String),
    Integer(i64),
    List(Vec<String>),
}

/// The values given so far, by key; a later source replaces an earlier one (flags replace env, env
/// replaces the file, the file replaces a twemproxy pool), whole lists included.
#[derive(Debug, Default)]
struct Values {
    /// Settings by key, with where each came from.
    given: BTreeMap<&'static str, (Raw, Origin)>,
    /// The `[upstream]` table's topology keys (`kind`, `hash`, `servers`...; a twemproxy pool is
    /// converted to the same), and the file they came from.
    topology: Option<(toml::Table, Origin)>,
    /// Accepted but not honoured: becomes [`Config::warnings`].
    warnings: Vec<String>,
}

impl Values {
    fn set(&mut self, key: &'static str, raw: Raw, origin: Origin) {
        self.given.insert(key, (raw, origin));
    }

    /// Parses the value of `key` if one was given; a failure names the key and the value's origin.
    fn get<T>(
        &self,
        key: &'static str,
        parse: impl FnOnce(&Raw) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.given.get(key) {
            None => Ok(None),
            Some((raw, origin)) => parse(raw)
                .map(Some)
                .map_err(|reason| invalid(key, reason, origin.clone())),
        }
    }

    fn origin(&self, key: &str) -> Origin {
        self.given
            .get(key)
            .map_or(Origin::Default, |(_, origin)| origin.clone())
    }

    /// A file setting: the path must name a readable file (its contents are parsed by `tls`).
    fn file(&self, key: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        self.get(key, |raw| {
            let path = PathBuf::from(text(raw)?.trim());
            std::fs::File::open(&path)
                .map(|_| path.clone())
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
        })
    }

    /// The topology table in effect: `None` when there is none, or when an `upstream` address
    /// given with a higher precedence (a flag or the environment over the file, the file over a
    /// twemproxy pool) makes the upstream a single server.
    fn topology_table(&self) -> Option<&(toml::Table, Origin)> {
        let topology = self.topology.as_ref()?;
        match self.given.get("upstream") {
            Some((_, given)) if given.rank() > topology.1.rank() => None,
            _ => Some(topology),
        }
    }

    /// The upstream and how it is laid out, with `upstream_user` / `upstream_password` applied to
    /// every server.
    fn upstream(&self) -> Result<(Upstream, Topology), ConfigError> {
        let topology = match self.topology_table() {
            None => Topology::Single,
            Some((table, origin)) => {
                shards::parse(table).map_err(|(key, reason)| ConfigError::InvalidKey {
                    key,
                    reason,
                    origin: origin.clone(),
                })?
            }
        };
        let (mut upstream, mut topology) = match topology {
            Topology::Shards(spec) => {
                if let Some((_, origin)) = self.given.get("upstream") {
                    let reason = "a single server's address; with kind = \"shards\" the servers are in upstream.servers".to_owned();
                    return Err(invalid("upstream", reason, origin.clone()));
                }
                (spec.servers[0].upstream.clone(), Topology::Shards(spec))
            }
            Topology::Cluster(spec) => {
                if let Some((_, origin)) = self.given.get("upstream") {
                    let reason = "a single server's address; with kind = \"cluster\" the nodes are in upstream.seeds".to_owned();
                    return Err(invalid("upstream", reason, origin.clone()));
                }
                (spec.seeds[0].clone(), Topology::Cluster(spec))
            }
            Topology::Sentinel(spec) => {
                if let Some((_, origin)) = self.given.get("upstream") {
                    let reason = "a single server's address; with kind = \"sentinel\" the sentinels are in upstream.sentinels".to_owned();
                    return Err(invalid("upstream", reason, origin.clone()));
                }
                let data = match self.topology_table() {
                    Some((table, origin)) => {
                        shards::sentinel_data(table, &spec).map_err(|(key, reason)| {
                            ConfigError::InvalidKey {
                                key,
                                reason,
                                origin: origin.clone(),
                            }
                        })?
                    }
                    None => unreachable!("a sentinel topology comes from its table"),
                };
                (data, Topology::Sentinel(spec))
            }
            Topology::Single => self
                .get("upstream", |raw| parse_upstream(text(raw)?))?
                .unwrap_or_default(),
        };
        let user = self.get("upstream_user", |raw| {
            text(raw).map(|s| non_empty(s.to_owned()))
        })?;
        let password = self.get("upstream_password", |raw| {
            text(raw).map(|s| non_empty(s.to_owned()))
        })?;
        if !matches!(topology, Topology::Sentinel(_)) {
            if let Some(key) = ["sentinel_user", "sentinel_password"]
                .into_iter()
                .find(|k| self.given.contains_key(*k))
            {
                let reason = "it applies to an upstream watched by Sentinel only".to_owned();
                return Err(invalid(key, reason, self.origin(key)));
            }
        }
        if let Topology::Sentinel(spec) = &mut topology {
            let user = self.get("sentinel_user", |raw| {
                text(raw).map(|s| non_empty(s.to_owned()))
            })?;
            let password = self.get("sentinel_password", |raw| {
                text(raw).map(|s| non_empty(s.to_owned()))
            })?;
            for sentinel in &mut spec.sentinels {
                if let Some(user) = &user {
                    sentinel.username.clone_from(user);
                }
                if let Some(password) = &password {
                    sentinel.password.clone_from(password);
                }
            }
            if spec.sentinels[0].username.is_some() && spec.sentinels[0].password.is_none() {
                let reason = "a sentinel user needs a password; set sentinel_password".to_owned();
                return Err(invalid(
                    "sentinel_user",
                    reason,
                    self.origin("sentinel_user"),
                ));
            }
        }
        let servers = match &mut topology {
            Topology::Shards(spec) => spec.servers.iter_mut().map(|s| &mut s.upstream).collect(),
            Topology::Cluster(spec) => spec.seeds.iter_mut().collect(),
            Topology::Single | Topology::Sentinel(_) => Vec::new(),
        };
        for target in std::iter::once(&mut upstream).chain(servers) {
            if let Some(user) = &user {
                target.username.clone_from(user);
            }
            if let Some(password) = &password {
                target.password.clone_from(password);
            }
        }
        if upstream.username.is_some() && upstream.password.is_none() {
            let reason =
                "a user needs a password (Redis AUTH takes both); set upstream_password".to_owned();
            if self.given.contains_key("upstream_user") {
                return Err(invalid(
                    "upstream_user",
                    reason,
                    self.origin("upstream_user"),
                ));
            }
            if let (Topology::Shards(_), Some((_, origin))) = (&topology, self.topology_table()) {
                return Err(ConfigError::InvalidKey {
                    key: "upstream.servers[0].address".to_owned(),
                    reason,
                    origin: origin.clone(),
                });
            }
            return Err(invalid("upstream", reason, self.origin("upstream")));
        }
        Ok((upstream, topology))
    }

    /// Where the upstream address came from, for errors about it.
    fn upstream_origin(&self) -> Origin {
        match self.topology_table() {
            Some((table, origin)) if shards::is_shards(table) => origin.clone(),
            _ => self.origin("upstream"),
        }
    }

    /// TLS settings come in pairs and only make sense with a TLS peer.
    fn check_tls(&self, c: &Config) -> Result<(), ConfigError> {
        let pair = |cert: &'static str, key: &'static str, a: bool, b: bool| {
            if a != b {
                let (missing, given) = if a { (key, cert) } else { (cert, key) };
                let reason = format!("{given} is set, so {missing} must be set too");
                return Err(invalid(missing, reason, self.origin(given)));
            }
            Ok(())
        };
        let tls = &c.tls;
        pair("tls_cert", "tls_key", tls.cert.is_some(), tls.key.is_some())?;
        pair(
            "upstream_tls_cert",
            "upstream_tls_key",
            tls.upstream_cert.is_some(),
            tls.upstream_key.is_some(),
        )?;
        if tls.client_ca.is_some() && tls.cert.is_none() {
            let reason =
                "client certificates need TLS for clients: set tls_cert and tls_key".to_owned();
            return Err(invalid(
                "tls_client_ca",
                reason,
                self.origin("tls_client_ca"),
            ));
        }
        let upstream_tls = [
            "upstream_tls_ca",
            "upstream_tls_cert",
            "upstream_tls_server_name",
        ]
        .into_iter()
        .find(|k| self.given.contains_key(*k))
        .or(tls.upstream_insecure.then_some("upstream_tls_insecure"));
        if let (false, Some(key)) = (c.upstream.tls, upstream_tls) {
            let reason = "it applies to rediss:// upstreams only".to_owned();
            return Err(invalid(key, reason, self.origin(key)));
        }
        if c.upstream.tls && tls.upstream_ca.is_none() && !tls.upstream_insecure {
            let reason = "rediss:// needs upstream_tls_ca (the CA to trust) or, explicitly, upstream_tls_insecure".to_owned();
            return Err(invalid("upstream_tls_ca", reason, self.upstream_origin()));
        }
        Ok(())
    }

    /// Parses and checks every value, falling back to the defaults.
    fn build(&self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let (upstream, topology) = self.upstream()?;
        if let (Some((_, origin)), None) = (
            self.given.get("twemproxy_pool"),
            self.given.get("twemproxy"),
        ) {
            let reason = "names a pool of the twemproxy file, but twemproxy is not set".to_owned();
            return Err(invalid("twemproxy_pool", reason, origin.clone()));
        }
        let batch_window_us =
            self.get("batch_window_us", |raw| at_most(integer(raw)?, 1_000_000))?;
        let optional_duration = |raw: &Raw| {
            let timeout = duration(raw)?;
            Ok((!timeout.is_zero()).then_some(timeout))
        };
        let config = Config {
            listen: Listen {
                addresses: self
                    .get("listen", parse_listen)?
                    .unwrap_or(d.listen.addresses),
                max_clients: self
                    .get("max_clients", count(1))?
                    .unwrap_or(d.listen.max_clients),
                requirepass: self
                    .get("requirepass", |raw| {
                        text(raw).map(|s| non_empty(s.to_owned()).map(Secret))
                    })?
                    .unwrap_or(d.listen.requirepass),
            },
            reads: self.reads(&topology)?,
            upstream,
            topology,
            timeouts: Timeouts {
                connect_timeout: self
                    .get("connect_timeout", positive_duration)?
                    .unwrap_or(d.timeouts.connect_timeout),
                command_timeout: self
                    .get("command_timeout", optional_duration)?
                    .unwrap_or(d.timeouts.command_timeout),
                reconnect_backoff_max: self
                    .get("reconnect_backoff_max", |raw| {
                        let max = duration(raw)?;
                        if max < RECONNECT_BACKOFF_MIN {
                            return Err(format!(
                                "must be at least {}",
                                humantime::format_duration(RECONNECT_BACKOFF_MIN)
                            ));
                        }
                        Ok(max)
                    })?
                    .unwrap_or(d.timeouts.reconnect_backoff_max),
                drain_timeout: self
                    .get("drain_timeout", positive_duration)?
                    .unwrap_or(d.timeouts.drain_timeout),
            },
            batching: Batching {
                pool_size: self
                    .get("pool_size", count(1))?
                    .unwrap_or(d.batching.pool_size),
                max_batch_commands: self
                    .get("max_batch_commands", count(1))?
                    .unwrap_or(d.batching.max_batch_commands),
                max_batch_bytes: self
                    .get("max_batch_bytes", count(64))?
                    .unwrap_or(d.batching.max_batch_bytes),
                batch_window: batch_window_us
                    .map_or(d.batching.batch_window, Duration::from_micros),
                max_upstream_inflight: self
                    .get("max_upstream_inflight", count(1))?
                    .unwrap_or(d.batching.max_upstream_inflight),
                max_pools: self
                    .get("max_pools", count(1))?
                    .unwrap_or(d.batching.max_pools),
                sched_batch: self
                    .get("sched_batch", boolean)?
                    .unwrap_or(d.batching.sched_batch),
                workers: self.get("workers", workers)?.unwrap_or(d.batching.workers),
            },
            limits: Limits {
                max_client_inflight: self
                    .get("max_client_inflight", count(1))?
                    .unwrap_or(d.limits.max_client_inflight),
                max_client_reply_bytes: self
                    .get("max_client_reply_bytes", count(1))?
                    .unwrap_or(d.limits.max_client_reply_bytes),
                max_request_bytes: self
                    .get("max_request_bytes", count(1))?
                    .unwrap_or(d.limits.max_request_bytes),
                max_request_args: self
                    .get("max_request_args", count(1))?
                    .unwrap_or(d.limits.max_request_args),
                deny_commands: self
                    .get("deny_commands", parse_names)?
                    .unwrap_or(d.limits.deny_commands),
            },
            leases: Leases {
                max_leases: self
                    .get("max_leases", count(1))?
                    .unwrap_or(d.leases.max_leases),
                warm_leases: self
                    .get("warm_leases", |raw| {
                        usize::try_from(integer(raw)?).map_err(|_| "too large".to_owned())
                    })?
                    .unwrap_or(d.leases.warm_leases),
                lease_idle_timeout: self
                    .get("lease_idle_timeout", optional_duration)?
                    .unwrap_or(d.leases.lease_idle_timeout),
            },
            tls: Tls {
                cert: self.file("tls_cert")?,
                key: self.file("tls_key")?,
                client_ca: self.file("tls_client_ca")?,
                upstream_ca: self.file("upstream_tls_ca")?,
                upstream_cert: self.file("upstream_tls_cert")?,
                upstream_key: self.file("upstream_tls_key")?,
                upstream_server_name: self
                    .get("upstream_tls_server_name", |raw| {
                        text(raw).map(|s| non_empty(s.trim().to_owned()))
                    })?
                    .flatten(),
                upstream_insecure: self
                    .get("upstream_tls_insecure", boolean)?
                    .unwrap_or(d.tls.upstream_insecure),
            },
            observability: Observability {
                metrics_listen: self
                    .get("metrics_listen", |raw| resolve(text(raw)?))?
                    .or(d.observability.metrics_listen),
                log_level: self
                    .get("log_level", |raw| match text(raw)?.trim() {
                        "" => Err("must not be empty".to_owned()),
                        level => Ok(level.to_owned()),
                    })?
                    .unwrap_or(d.observability.log_level),
                log_format: self
                    .get("log_format", |raw| {
                        match text(raw)?.trim().to_ascii_lowercase().as_str() {
                            "text" => Ok(LogFormat::Text),
                            "json" => Ok(LogFormat::Json),
                            _ => Err("expected text or json".to_owned()),
                        }
                    })?
                    .unwrap_or(d.observability.log_format),
            },
            config_file: None,
            warnings: self.warnings.clone(),
        };
        self.check_tls(&config)?;
        Ok(config)
    }
}

impl Values {
    /// The read policy, checked against the topology: static replicas for a single server only,
    /// replica reads for a single server or a primary watched by Sentinel.
    fn reads(&self, topology: &Topology) -> Result<Reads, ConfigError> {
        let d = Reads::default();
        let read_from = self
            .get("read_from", |raw| {
                match text(raw)?.trim().to_ascii_lowercase().as_str() {
                    "primary" => Ok(ReadFrom::Primary),
                    "prefer-replica" => Ok(ReadFrom::PreferReplica),
                    "replica" => Ok(ReadFrom::Replica),
                    _ => Err("expected primary, prefer-replica or replica".to_owned()),
                }
            })?
            .unwrap_or(d.read_from);
        let replicas = self.get("replicas", parse_replicas)?.unwrap_or_default();
        let kind = match topology {
            Topology::Single => None,
            Topology::Sentinel(_) => Some("sentinel"),
            Topology::Shards(_) => Some("shards"),
            Topology::Cluster(_) => Some("cluster"),
        };
        if let (Some(kind), false) = (kind, replicas.is_empty()) {
            let reason = match kind {
                "sentinel" => {
                    "with kind = \"sentinel\" the replicas are those the sentinels report"
                        .to_owned()
                }
                kind => format!("replicas of a single server only, not kind = \"{kind}\""),
            };
            return Err(invalid("replicas", reason, self.origin("replicas")));
        }
        if let (Some(kind @ ("shards" | "cluster")), false) = (kind, read_from == ReadFrom::Primary)
        {
            let reason = format!(
                "reads from replicas are for a single server or kind = \"sentinel\", not kind = \"{kind}\""
            );
            return Err(invalid("read_from", reason, self.origin("read_from")));
        }
        if kind.is_none() && replicas.is_empty() && read_from != ReadFrom::Primary {
            let reason = "reads from replicas need replicas: list them in replicas, or use kind = \"sentinel\"".to_owned();
            return Err(invalid("read_from", reason, self.origin("read_from")));
        }
        Ok(Reads {
            read_from,
            read_your_writes: self
                .get("read_your_writes", |raw| {
                    duration(raw).map(|d| (!d.is_zero()).then_some(d))
                })?
                .unwrap_or(d.read_your_writes),
            replicas,
        })
    }
}

impl Origin {
    /// Precedence: a value from a higher rank replaces one from a lower.
    fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::Twemproxy(_) => 1,
            Origin::File(_) => 2,
            Origin::Env(_) => 3,
            Origin::Flag(_) => 4,
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Raw, D::Error> {
        struct RawVisitor;

        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an integer, a boolean or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Text(v.to_owned()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Text(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Integer(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw, E> {
                i64::try_from(v)
                    .map(Raw::Integer)
                    .map_err(|_| E::custom("integer too large"))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(Raw::List(items))
            }
        }

        deserializer.deserialize_any(RawVisitor)
    }
}

/// Shortens the [`SETTINGS`] table.
const fn setting(
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    value_name: &'static str,
    default: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        flag,
        env,
        value_name,
        default,
        help,
    }
}

/// The clap command, generated from [`SETTINGS`]. Values stay strings here and are parsed like env and
/// file values; a repeated flag (other than `--listen`) keeps its last value.
fn command() -> Command {
    let cmd = Command::new("respipe")
        .bin_name("respipe")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A transparent pipelining proxy for Redis")
        .after_help(
            "Every flag can also be set as RESPIPE_<NAME> (e.g. RESPIPE_POOL_SIZE) or as a key in the \
             --config file (e.g. pool_size = 4, or pool_size = 4 under [batching]). Flags win over the \
             environment, which wins over the file, which wins over a --twemproxy pool. \
             Durations are written like 500ms, 2s or 1m.",
        )
        .args_override_self(true)
        .arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!("TOML config file (examples in config/) [env: {CONFIG_ENV}]")),
        )
        .arg(
            Arg::new("print_config")
                .long("print-config")
                .action(ArgAction::SetTrue)
                .help("Print the configuration as respipe TOML, passwords included (sections; a --twemproxy pool converted), and exit"),
        );
    SETTINGS.iter().fold(cmd, |cmd, s| {
        let default = if s.default.is_empty() {
            String::new()
        } else {
            format!(" [default: {}]", s.default)
        };
        let arg = Arg::new(s.key)
            .long(&s.flag[2..])
            .value_name(s.value_name)
            .allow_negative_numbers(true)
            .help(format!("{}{default} [env: {}]", s.help, s.env));
        cmd.arg(if s.key == "listen" {
            arg.action(ArgAction::Append)
        } else {
            arg
        })
    })
}

fn invalid(key: &'static str, reason: String, origin: Origin) -> ConfigError {
    let setting = SETTINGS
        .iter()
        .find(|s| s.key == key)
        .expect("every key used in build() is in SETTINGS");
    ConfigError::Invalid {
        key,
        flag: setting.flag,
        env: setting.env,
        reason,
        origin,
    }
}

/// The `, did you mean "x"?` for an unknown file key, when a known key (flat, or `section.name`) is
/// one edit or swap away.
fn suggest(key: &str) -> String {
    let close = |known: &str| {
        let (a, b) = (key.as_bytes(), known.as_bytes());
        if a.len() == b.len() {
            let diff: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            diff.len() == 1
                || (diff.len() == 2
                    && diff[1] == diff[0] + 1
                    && a[diff[0]] == b[diff[1]]
                    && a[diff[1]] == b[diff[0]])
        } else {
            let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
            long.len() == short.len() + 1
                && (0..long.len()).any(|i| long[..i] == short[..i] && long[i + 1..] == short[i..])
        }
    };
    let normalized = key.replace('-', "_").to_ascii_lowercase();
    match file::known_keys().find(|known| *known == normalized || close(known)) {
        Some(known) => format!(", did you mean {known:?}?"),
        None => String::new(),
    }
}

const fn nz(n: usize) -> NonZeroUsize {
    match NonZeroUsize::new(n) {
        Some(n) => n,
        None => panic!("zero default"),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn text(raw: &Raw) -> Result<&str, String> {
    match raw {
        Raw::Text(s) => Ok(s),
        Raw::Integer(_) => Err("expected a string, not an integer".to_owned()),
        Raw::List(_) => Err("expected a single value, not a list".to_owned()),
    }
}

fn integer(raw: &Raw) -> Result<u64, String> {
    match raw {
        Raw::Integer(n) => u64::try_from(*n).map_err(|_| "must not be negative".to_owned()),
        Raw::Text(s) => s
            .trim()
            .parse()
            .map_err(|_| "expected a non-negative integer".to_owned()),
        Raw::List(_) => Err("expected a single value, not a list".to_owned()),
    }
}

fn at_most(n: u64, max: u64) -> Result<u64, String> {
    if n > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(n)
}

/// A count that must be at least `min` (and so at least 1).
fn count(min: usize) -> impl Fn(&Raw) -> Result<NonZeroUsize, String> {
    move |raw| {
        let n = usize::try_from(integer(raw)?).map_err(|_| "too large".to_owned())?;
        match NonZeroUsize::new(n) {
            Some(n) if n.get() >= min => Ok(n),
            _ => Err(format!("must be at least {min}")),
        }
    }
}

/// Most worker threads: far past any core count this runs on, and a typo's `10000` stops here.
const MAX_WORKERS: usize = 256;

/// `workers`: a count, or `auto` for the CPUs this process may run on (its affinity mask).
fn workers(raw: &Raw) -> Result<NonZeroUsize, String> {
    let n = match raw {
        Raw::Text(s) if s.trim().eq_ignore_ascii_case("auto") => {
            std::thread::available_parallelism().map_err(|e| format!("auto: {e}"))?
        }
        _ => count(1)(raw).map_err(|e| format!("{e} (or auto)"))?,
    };
    if n.get() > MAX_WORKERS {
        return Err(format!("at most {MAX_WORKERS}"));
    }
    Ok(n)
}

fn boolean(raw: &Raw) -> Result<bool, String> {
    match raw {
        Raw::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err("expected true or false".to_owned()),
        },
        Raw::Integer(0) => Ok(false),
        Raw::Integer(1) => Ok(true),
        _ => Err("expected true or false".to_owned()),
    }
}

fn duration(raw: &Raw) -> Result<Duration, String> {
    match raw {
        Raw::Text(s) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("expected a duration such as \"500ms\" or \"2s\": {e}")),
        Raw::Integer(_) => Err(
            "expected a duration string such as \"500ms\" (a bare number has no unit)".to_owned(),
        ),
        Raw::List(_) => Err("expected a single value, not a list".to_owned()),
    }
}

fn positive_duration(raw: &Raw) -> Result<Duration, String> {
    match duration(raw)? {
        d if d.is_zero() => Err("must be more than 0".to_owned()),
        d => Ok(d),
    }
}

/// A list of listen addresses: a TOML array, repeated flags, or one comma-separated string.
fn parse_listen(raw: &Raw) -> Result<Vec<ListenAddr>, String> {
    let items: Vec<&str> = match raw {
        Raw::List(items) => items
            .iter()
            .map(String::as_str)
            .filter(|s| !s.trim().is_empty())
            .collect(),
        Raw::Text(s) => s.split(',').filter(|s| !s.trim().is_empty()).collect(),
        Raw::Integer(_) => return Err("expected a list of addresses, not an integer".to_owned()),
    };
    if items.is_empty() {
        return Err("at least one address is needed".to_owned());
    }
    let mut listen: Vec<ListenAddr> = Vec::with_capacity(items.len());
    for item in items {
        let addr = ListenAddr::parse(item)?;
        if listen.contains(&addr) {
            return Err(format!("{addr} is given twice"));
        }
        listen.push(addr);
    }
    Ok(listen)
}

/// Replica addresses (a TOML list, or comma-separated): `HOST:PORT` or `unix:/path`, no
/// duplicates. Just the address: a replica takes the upstream's db, credentials and TLS.
fn parse_replicas(raw: &Raw) -> Result<Vec<Endpoint>, String> {
    let items: Vec<&str> = match raw {
        Raw::List(items) => items.iter().map(String::as_str).collect(),
        Raw::Text(s) => s.split(',').collect(),
        Raw::Integer(_) => return Err("expected a list of HOST:PORT, not an integer".to_owned()),
    };
    let mut replicas: Vec<Endpoint> = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        let just_address = "a replica takes the upstream's db, credentials and TLS";
        if item.contains("://") {
            return Err(format!(
                "expected HOST:PORT or unix:/path, not a URL ({just_address})"
            ));
        }
        let endpoint = if let Some(path) = item.strip_prefix("unix:") {
            Endpoint::Unix(parse_unix_path(path)?)
        } else {
            let (host, port) = split_host_port(item)?.ok_or_else(|| {
                format!("expected HOST:PORT or unix:/path, got {item:?} ({just_address})")
            })?;
            Endpoint::Tcp {
                host,
                port: nonzero_port(port)?,
            }
        };
        if replicas.contains(&endpoint) {
            return Err(format!("{endpoint} is given twice"));
        }
        replicas.push(endpoint);
    }
    Ok(replicas)
}

/// A list of command names (a TOML list, or comma-separated), upper-cased.
fn parse_names(raw: &Raw) -> Result<Vec<String>, String> {
    let items: Vec<&str> = match raw {
        Raw::List(items) => items.iter().map(String::as_str).collect(),
        Raw::Text(s) => s.split(',').collect(),
        Raw::Integer(_) => return Err("expected command names, not an integer".to_owned()),
    };
    items
        .into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            if name.bytes().all(|b| b.is_ascii_graphic()) {
                Ok(name.to_ascii_uppercase())
            } else {
                Err(format!("{name:?} is not a command name"))
            }
        })
        .collect()
}

/// `HOST:PORT` to its first socket address; host may be a name, an IPv4 or a bracketed IPv6 literal.
fn resolve(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if split_host_port(s)?.is_none() {
        return Err(format!("expected HOST:PORT, got {s:?}"));
    }
    let mut addrs = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// Splits `host:port` / `[v6]:port` into an unbracketed host and a port; `Ok(None)` when there is no
/// port at all (the caller decides whether that is allowed).
/// `--upstream`: one server (every form of [`Upstream::parse`]), or a cluster's seed nodes,
/// `redis-cluster://[user:password@]host:port,host:port` (`rediss-cluster://` for TLS).
fn parse_upstream(s: &str) -> Result<(Upstream, Topology), String> {
    let s = s.trim();
    if let Some((scheme, rest)) = s.split_once("://").filter(|(scheme, _)| {
        matches!(
            scheme.to_ascii_lowercase().as_str(),
            "redis-sentinel" | "rediss-sentinel"
        )
    }) {
        return parse_sentinel_url(scheme.eq_ignore_ascii_case("rediss-sentinel"), rest);
    }
    let Some((scheme, rest)) = s.split_once("://").filter(|(scheme, _)| {
        matches!(
            scheme.to_ascii_lowercase().as_str(),
            "redis-cluster" | "rediss-cluster"
        )
    }) else {
        return Ok((Upstream::parse(s)?, Topology::Single));
    };
    let tls = scheme.eq_ignore_ascii_case("rediss-cluster");
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.strip_suffix("/0").unwrap_or(hosts);
    if hosts.contains(['/', '?', '#']) {
        return Err("a cluster URL has no db, query or fragment (a cluster has db 0 only)".into());
    }
    let seeds = hosts
        .split(',')
        .filter(|host| !host.trim().is_empty())
        .map(|host| {
            let scheme = if tls { "rediss" } else { "redis" };
            Upstream::parse(&format!("{scheme}://{userinfo}{}", host.trim()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = seeds.first().cloned() else {
        return Err("redis-cluster:// needs at least one HOST:PORT".into());
    };
    Ok((first, Topology::Cluster(crate::cluster::Spec { seeds })))
}

#[cfg(test)]
mod sentinel_url_tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_data_db() {
        let (data, topology) =
            parse_upstream("redis-sentinel://u:p@a:1,b:2/my%20master/3").unwrap();
        let Topology::Sentinel(spec) = topology else {
            panic!("not a sentinel topology");
        };
        assert_eq!(spec.master, "my master");
        assert_eq!(spec.sentinels.len(), 2);
        assert!(spec
            .sentinels
            .iter()
            .all(|s| s.username.as_deref() == Some("u")
                && s.password.as_deref() == Some("p")
                && s.db == 0
                && !s.tls));
        assert_eq!(
            (data.db, data.username, data.password, data.tls),
            (3, None, None, false)
        );
        let (data, _) = parse_upstream("rediss-sentinel://a:1/m").unwrap();
        assert!(data.tls);
        for bad in [
            "redis-sentinel://a:1",
            "redis-sentinel://a:1/",
            "redis-sentinel:///m",
            "redis-sentinel://a:1/m/x",
            "redis-sentinel://a:1/m?x=1",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}

/// `redis-sentinel://[user:password@]host:port,host:port/MASTER[/db]` (after the scheme): the
/// sentinels (with the URL's credentials and `tls`), the master name, and the data nodes' db and
/// TLS. The data nodes' credentials are `upstream_user` / `upstream_password`.
fn parse_sentinel_url(tls: bool, rest: &str) -> Result<(Upstream, Topology), String> {
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (format!("{userinfo}@"), rest),
        None => (String::new(), rest),
    };
    let (hosts, path) = rest.split_once('/').ok_or(
        "redis-sentinel:// needs the master name: redis-sentinel://host:port,host:port/MASTER",
    )?;
    if path.contains(['?', '#']) {
        return Err("a sentinel URL has no query or fragment".into());
    }
    let (master, db) = match path.split_once('/') {
        Some((master, db)) => (
            master,
            db.parse::<u32>()
                .map_err(|_| format!("db {db:?} is not a number"))?,
        ),
        None => (path, 0),
    };
    if master.is_empty() {
        return Err(
            "redis-sentinel:// needs the master name after the sentinels' addresses".into(),
        );
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let sentinels = hosts
        .split(',')
        .filter(|host| !host.trim().is_empty())
        .map(|host| Upstream::parse(&format!("{scheme}://{userinfo}{}", host.trim())))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = sentinels.first() else {
        return Err("redis-sentinel:// needs at least one sentinel HOST:PORT".into());
    };
    let data = Upstream {
        endpoint: first.endpoint.clone(),
        tls,
        username: None,
        password: None,
        db,
    };
    let master = percent_decode(master).map_err(|e| format!("master name: {e}"))?;
    let spec = crate::sentinel::Spec { sentinels, master };
    Ok((data, Topology::Sentinel(spec)))
}

fn split_host_port(s: &str) -> Result<Option<(String, u16)>, String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in IPv6 address")?;
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => return Ok(None),
            None => return Err("expected ':' and a port after ']'".to_owned()),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("an IPv6 address needs brackets: [::1]:6379".to_owned());
            }
            Some(host_port) => host_port,
            None => return Ok(None),
        }
    };
    let host = parse_host(host)?;
    let port = port
        .parse::<u16>()
        .map_err(|_| "port must be a number from 0 to 65535".to_owned())?;
    Ok(Some((host, port)))
}

fn nonzero_port(port: u16) -> Result<u16, String> {
    match port {
        0 => Err("port 0 is not a place to connect to".to_owned()),
        port => Ok(port),
    }
}

fn parse_host(host: &str) -> Result<String, String> {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err("missing host".to_owned());
    }
    if host.contains(|c: char| c.is_whitespace() || "/@?#[]".contains(c)) {
        return Err("host contains a character not allowed in a host name".to_owned());
    }
    Ok(host.to_owned())
}

fn parse_db(s: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| "database must be a non-negative integer (redis://host:port/DB)".to_owned())
}

/// `unix:` already stripped: `/path` or `///path`, then an optional `?db=N`.
fn parse_unix_upstream(rest: &str) -> Result<Upstream, String> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut upstream = Upstream::unix(parse_unix_path(path)?);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("db", db)) => upstream.db = parse_db(db)?,
            _ => {
                return Err(
                    "the only query parameter a unix:/path upstream takes is db=N".to_owned(),
                )
            }
        }
    }
    Ok(upstream)
}

fn parse_unix_path(path: &str) -> Result<PathBuf, String> {
    let path = path.strip_prefix("//").unwrap_or(path);
    if path.is_empty() {
        return Err("unix socket path must not be empty (unix:/path/to/socket)".to_owned());
    }
    Ok(Path::new(path).to_path_buf())
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent-encoding (expected %XX)")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-encoding does not decode to UTF-8".to_owned())
}

/// Escapes what would make a displayed user name ambiguous in a URL.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || "-._~".contains(c) {
            out.push(c);
        } else {
            let mut buf = [0; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args = std::iter::once("respipe").chain(args.iter().copied());
        Config::load_from(args, &|name: &str| env.get(name).cloned())
    }

    pub(super) fn load_err(args: &[&str], env: &[(&str, &str)]) -> String {
        load(args, env).expect_err("should fail").to_string()
    }

    #[test]
    fn workers_is_a_count_or_auto() {
        assert_eq!(load(&[], &[]).unwrap().batching.workers.get(), 1);
        assert_eq!(
            load(&["--workers", "4"], &[])
                .unwrap()
                .batching
                .workers
                .get(),
            4
        );
        let cpus = std::thread::available_parallelism().unwrap();
        let auto = load(&[], &[("RESPIPE_WORKERS", "AUTO")]).unwrap();
        assert_eq!(auto.batching.workers, cpus);
        let file = TempFile::new("workers", "[batching]\nworkers = \"auto\"\n");
        let from_file = load(&["--config", file.path()], &[]).unwrap();
        assert_eq!(from_file.batching.workers, cpus);
        for (bad, why) in [
            ("0", "must be at least 1 (or auto)"),
            ("257", "at most 256"),
            ("two", "or auto"),
        ] {
            let err = load_err(&["--workers", bad], &[]);
            assert!(err.contains("workers") && err.contains(why), "{bad}: {err}");
        }
    }

    fn upstream(s: &str) -> Upstream {
        Upstream::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// A config file in a fresh temp dir, removed on drop.
    pub(super) struct TempFile(PathBuf);

    impl TempFile {
        pub(super) fn new(name: &str, contents: &str) -> TempFile {
            let dir = std::env::temp_dir()
                .join(format!("respipe-config-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("respipe.toml");
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        pub(super) fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    fn tcp(s: &str) -> ListenAddr {
        ListenAddr::Tcp(s.parse().unwrap())
    }

    #[test]
    fn nothing_given_is_the_default() {
        let config = load(&[], &[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.addresses, vec![tcp("127.0.0.1:6380")]);
        assert_eq!(config.upstream.to_string(), "redis://127.0.0.1:6379");
        assert_eq!(config.observability.metrics_listen, None);
        assert_eq!(config.batching.pool_size.get(), 1);
        assert_eq!(config.batching.max_batch_bytes.get(), 1_048_576);
        assert_eq!(config.limits.max_client_reply_bytes.get(), 268_435_456);
        assert_eq!(config.limits.max_request_bytes.get(), 536_870_912);
        assert_eq!(config.limits.max_request_args.get(), 16_777_216);
        assert_eq!(
            config.timeouts.command_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(config.observability.log_format, LogFormat::Text);
    }

    #[test]
    fn every_default_in_the_table_parses_to_the_default() {
        let mut args = Vec::new();
        for s in SETTINGS.iter().filter(|s| !s.default.is_empty()) {
            args.push(s.flag);
            args.push(s.default);
        }
        assert_eq!(load(&args, &[]).unwrap(), Config::default());
    }

    #[test]
    fn setting_names_follow_one_rule() {
        for s in SETTINGS {
            assert_eq!(s.flag, format!("--{}", s.key.replace('_', "-")));
            assert_eq!(s.env, format!("RESPIPE_{}", s.key.to_ascii_uppercase()));
        }
        command().debug_assert();
    }

    #[test]
    fn help_and_version_go_through_clap() {
        for (flag, kind) in [
            ("--help", clap::error::ErrorKind::DisplayHelp),
            ("--version", clap::error::ErrorKind::DisplayVersion),
        ] {
            match load(&[flag], &[]) {
                Err(ConfigError::Clap(err)) => {
                    assert_eq!(err.kind(), kind);
                    assert!(!err.use_stderr());
                }
                other => panic!("{flag}: {other:?}"),
            }
        }
        let help = command().render_long_help().to_string();
        assert!(
            help.contains("RESPIPE_POOL_SIZE") && help.contains("[default: 1024]"),
            "{help}"
        );
        match load(&["--pool-sise", "3"], &[]) {
            Err(ConfigError::Clap(err)) => assert!(err.use_stderr()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn upstream_forms() {
        assert_eq!(upstream("localhost:6379"), Upstream::tcp("localhost", 6379));
        assert_eq!(upstream("10.0.0.1:7000"), Upstream::tcp("10.0.0.1", 7000));
        assert_eq!(upstream("[::1]:6379"), Upstream::tcp("::1", 6379));
        assert_eq!(upstream("redis://redis"), Upstream::tcp("redis", 6379));
        assert_eq!(
            upstream("redis://redis:7000/"),
            Upstream::tcp("redis", 7000)
        );
        assert_eq!(
            upstream("redis://[::1]/3"),
            Upstream {
                db: 3,
                ..Upstream::tcp("::1", 6379)
            }
        );
        assert_eq!(upstream("REDIS://h:1"), Upstream::tcp("h", 1));
        assert_eq!(
            upstream("redis://alice:s3cret@h:6380/2"),
            Upstream {
                username: Some("alice".into()),
                password: Some("s3cret".into()),
                db: 2,
                ..Upstream::tcp("h", 6380)
            }
        );
        assert_eq!(
            upstream("redis://:pass@h"),
            Upstream {
                password: Some("pass".into()),
                ..Upstream::tcp("h", 6379)
            }
        );
        assert_eq!(
            upstream("rediss://u:p@cache.example.com:6380"),
            Upstream {
                tls: true,
                username: Some("u".into()),
                password: Some("p".into()),
                ..Upstream::tcp("cache.example.com", 6380)
            }
        );
        assert_eq!(
            upstream("unix:/run/redis.sock"),
            Upstream::unix("/run/redis.sock")
        );
        assert_eq!(
            upstream("unix:///run/redis.sock"),
            Upstream::unix("/run/redis.sock")
        );
        assert_eq!(
            upstream("unix:/run/redis.sock?db=5"),
            Upstream {
                db: 5,
                ..Upstream::unix("/run/redis.sock")
            }
        );
    }

    #[test]
    fn upstream_credentials_are_percent_decoded() {
        let u = upstream("redis://us%40er:p%3Aa%2Fs%25s%20%C3%A9@h:1");
        assert_eq!(u.username.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:a/s%s é"));
        // An unencoded '@' in the password still works: the last '@' ends the user info.
        assert_eq!(
            upstream("redis://:p@ss@h").password.as_deref(),
            Some("p@ss")
        );
    }

    #[test]
    fn bad_upstreams_say_why_without_echoing_the_secret() {
        for (url, why) in [
            ("http://h:1", "unsupported scheme \"http\""),
            ("redis://", "missing host"),
            ("redis://:pw@:6379", "missing host"),
            ("redis://h:notaport", "port must be a number"),
            ("redis://h:70000", "port must be a number"),
            ("redis://h:0", "port 0"),
            ("h:0", "port 0"),
            ("redis://h/x", "database must be a non-negative integer"),
            ("redis://h/-1", "database must be a non-negative integer"),
            ("redis://h?protocol=resp3", "query parameters"),
            ("redis://:bad%zzpw@h", "password: bad percent-encoding"),
            (
                "redis://:%FFpw@h",
                "password: percent-encoding does not decode to UTF-8",
            ),
            ("redis://[::1:6379", "unclosed '['"),
            ("::1:6379", "needs brackets"),
            ("justahost", "expected HOST:PORT"),
            ("unix:", "unix socket path must not be empty"),
            ("unix:/s?password=x", "only query parameter"),
        ] {
            let err = load_err(&["--upstream", url], &[]);
            assert!(
                err.starts_with("invalid upstream (--upstream, RESPIPE_UPSTREAM): "),
                "{url}: {err}"
            );
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("pw"), "{url}: {err}");
        }
    }

    #[test]
    fn display_never_shows_the_password() {
        let cases = [
            (
                "redis://alice:hunter2@h:6380/2",
                "redis://alice:***@h:6380/2",
            ),
            ("redis://:hunter2@h", "redis://:***@h:6379"),
            (
                "rediss://a%40b:hunter2@[::1]:1",
                "rediss://a%40b:***@[::1]:1",
            ),
            ("unix:/s?db=1", "unix:/s?db=1"),
            ("h:1", "redis://h:1"),
        ];
        for (url, shown) in cases {
            let u = upstream(url);
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("hunter2"));
        }
        let mut u = Upstream::unix("/s");
        u.password = Some("hunter2".into());
        assert_eq!(u.to_string(), "unix:/s (auth as default:***)");
        let config = load(&["--upstream", "redis://u:hunter2@h"], &[]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(
            Endpoint::Tcp {
                host: "::1".into(),
                port: 1
            }
            .to_string(),
            "[::1]:1"
        );
        assert_eq!(Endpoint::Unix("/a/b".into()).to_string(), "unix:/a/b");
    }

    #[test]
    fn user_and_password_settings_override_the_url() {
        let c = load(
            &["--upstream", "redis://a:b@h", "--upstream-password", "c"],
            &[("RESPIPE_UPSTREAM_USER", "d")],
        )
        .unwrap();
        assert_eq!(
            (
                c.upstream.username.as_deref(),
                c.upstream.password.as_deref()
            ),
            (Some("d"), Some("c"))
        );
        let c = load(
            &["--upstream", "unix:/s"],
            &[("RESPIPE_UPSTREAM_PASSWORD", "x")],
        )
        .unwrap();
        assert_eq!(c.upstream.password.as_deref(), Some("x"));
        let err = load_err(&["--upstream-user", "bob"], &[]);
        assert!(err.starts_with("invalid upstream_user (--upstream-user, RESPIPE_UPSTREAM_USER): a user needs a password"), "{err}");
        let err = load_err(&["--upstream", "redis://bob@h"], &[]);
        assert!(
            err.starts_with(
                "invalid upstream (--upstream, RESPIPE_UPSTREAM): a user needs a password"
            ),
            "{err}"
        );
    }

    #[test]
    fn listen_forms() {
        let c = load(
            &[
                "--listen",
                "127.0.0.1:0",
                "--listen",
                "[::1]:7000",
                "--listen",
                "unix:/tmp/r.sock",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            c.listen.addresses,
            vec![
                tcp("127.0.0.1:0"),
                tcp("[::1]:7000"),
                ListenAddr::Unix("/tmp/r.sock".into())
            ]
        );
        assert_eq!(c.listen.addresses[1].to_string(), "[::1]:7000");
        assert_eq!(c.listen.addresses[2].to_string(), "unix:/tmp/r.sock");
        let c = load(&[], &[("RESPIPE_LISTEN", "0.0.0.0:1, localhost:2,")]).unwrap();
        assert_eq!(c.listen.addresses[0], tcp("0.0.0.0:1"));
        assert!(
            matches!(c.listen.addresses[1], ListenAddr::Tcp(a) if a.ip().is_loopback() && a.port() == 2),
            "{:?}",
            c.listen.addresses
        );
        let c = load(&["--metrics-listen", "localhost:9121"], &[]).unwrap();
        assert!(c.observability.metrics_listen.unwrap().ip().is_loopback());
    }

    #[test]
    fn bad_listen_addresses() {
        for (args, why) in [
            (
                vec!["--listen", "127.0.0.1:1", "--listen", "127.0.0.1:1"],
                "127.0.0.1:1 is given twice",
            ),
            (
                vec!["--listen", "unix:/a", "--listen", "unix:/a"],
                "unix:/a is given twice",
            ),
            (
                vec!["--listen", "unix:"],
                "unix socket path must not be empty",
            ),
            (vec!["--listen", "6380"], "expected HOST:PORT"),
            (vec!["--listen", "no-such-host.invalid:1"], "cannot resolve"),
            (vec!["--listen", ""], "at least one address"),
        ] {
            let err = load_err(&args, &[]);
            assert!(
                err.starts_with("invalid listen (--listen, RESPIPE_LISTEN): "),
                "{err}"
            );
            assert!(err.contains(why), "{args:?}: {err}");
        }
        let file = TempFile::new("empty-listen", "listen = []\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.contains("at least one address") && err.contains(file.path()),
            "{err}"
        );
        let err = load_err(&["--metrics-listen", "unix:/m"], &[]);
        assert!(
            err.starts_with("invalid metrics_listen (--metrics-listen, RESPIPE_METRICS_LISTEN): "),
            "{err}"
        );
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file = TempFile::new(
            "precedence",
            r#"
            listen = ["127.0.0.1:1", "127.0.0.1:2"]
            pool_size = 3
            max_clients = 30
            connect_timeout = "3s"
            log_format = "json"
            upstream = "redis://file:6379"
            "#,
        );
        let f = file.path();
        let from_file = load(&["--config", f], &[]).unwrap();
        assert_eq!(
            from_file.listen.addresses,
            vec![tcp("127.0.0.1:1"), tcp("127.0.0.1:2")]
        );
        assert_eq!(
            (
                from_file.batching.pool_size.get(),
                from_file.listen.max_clients.get()
            ),
            (3, 30)
        );
        assert_eq!(from_file.timeouts.connect_timeout, Duration::from_secs(3));
        assert_eq!(from_file.observability.log_format, LogFormat::Json);
        assert_eq!(
            from_file.timeouts.drain_timeout,
            Duration::from_secs(10),
            "unset keys keep their default"
        );

        let env = [
            ("RESPIPE_CONFIG", f),
            ("RESPIPE_LISTEN", "127.0.0.1:3"),
            ("RESPIPE_POOL_SIZE", "4"),
            ("RESPIPE_CONNECT_TIMEOUT", "4s"),
            ("RESPIPE_UPSTREAM", "env:6379"),
            ("RESPIPE_MAX_CLIENTS", ""), // empty counts as unset
        ];
        let from_env = load(&[], &env).unwrap();
        assert_eq!(
            from_env.listen.addresses,
            vec![tcp("127.0.0.1:3")],
            "a list is replaced, not merged"
        );
        assert_eq!(
            (
                from_env.batching.pool_size.get(),
                from_env.listen.max_clients.get()
            ),
            (4, 30)
        );
        assert_eq!(from_env.timeouts.connect_timeout, Duration::from_secs(4));
        assert_eq!(from_env.upstream, Upstream::tcp("env", 6379));
        assert_eq!(from_env.observability.log_format, LogFormat::Json);

        let flags = [
            "--listen",
            "127.0.0.1:5",
            "--listen",
            "127.0.0.1:6",
            "--pool-size",
            "5",
            "--upstream",
            "flag:1",
            "--pool-size",
            "6",
        ];
        let from_flags = load(&flags, &env).unwrap();
        assert_eq!(
            from_flags.listen.addresses,
            vec![tcp("127.0.0.1:5"), tcp("127.0.0.1:6")]
        );
        assert_eq!(
            from_flags.batching.pool_size.get(),
            6,
            "a repeated flag keeps its last value"
        );
        assert_eq!(from_flags.timeouts.connect_timeout, Duration::from_secs(4));
        assert_eq!(from_flags.upstream, Upstream::tcp("flag", 1));
        assert_eq!(from_flags.listen.max_clients.get(), 30);

        let other = TempFile::new("precedence-flag", "pool_size = 9\n");
        assert_eq!(
            load(&["--config", other.path()], &env)
                .unwrap()
                .batching
                .pool_size
                .get(),
            4,
            "--config beats RESPIPE_CONFIG"
        );
        assert_eq!(
            load(&["--config", other.path()], &[])
                .unwrap()
                .batching
                .pool_size
                .get(),
            9
        );
    }

    #[test]
    fn durations_and_windows() {
        let c = load(
            &["--batch-window-us", "250", "--command-timeout", "0"],
            &[("RESPIPE_DRAIN_TIMEOUT", "1m 30s")],
        )
        .unwrap();
        assert_eq!(c.batching.batch_window, Duration::from_micros(250));
        assert_eq!(c.timeouts.command_timeout, None);
        assert_eq!(c.timeouts.drain_timeout, Duration::from_secs(90));
        assert_eq!(
            load(&["--command-timeout", "0s"], &[])
                .unwrap()
                .timeouts
                .command_timeout,
            None
        );
        assert_eq!(
            load(&["--command-timeout", "250ms"], &[])
                .unwrap()
                .timeouts
                .command_timeout,
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            load(&["--batch-window-us", "1000000"], &[])
                .unwrap()
                .batching
                .batch_window,
            Duration::from_secs(1)
        );
        assert_eq!(
            load(&["--reconnect-backoff-max", "10ms"], &[])
                .unwrap()
                .timeouts
                .reconnect_backoff_max,
            Duration::from_millis(10)
        );
    }

    #[test]
    fn tls_settings_are_checked() {
        let err = load_err(&["--upstream", "rediss://h:6380"], &[]);
        assert!(err.contains("invalid upstream_tls_ca"), "{err}");
        let ok = load(
            &[
                "--upstream",
                "rediss://h:6380",
                "--upstream-tls-insecure",
                "true",
            ],
            &[],
        );
        assert!(ok.is_ok_and(|c| c.upstream.tls && c.tls.upstream_insecure));
        let err = load_err(&["--upstream-tls-insecure", "yes"], &[]);
        assert!(err.contains("rediss:// upstreams only"), "{err}");
        let err = load_err(&["--tls-cert", "/no/such/cert.pem"], &[]);
        assert!(
            err.contains("invalid tls_cert") && err.contains("cannot read"),
            "{err}"
        );
        let file = std::env::temp_dir().join("respipe-config-test-cert.pem");
        std::fs::write(&file, "x").expect("temp file");
        let err = load_err(&["--tls-cert", file.to_str().unwrap_or_default()], &[]);
        assert!(err.contains("invalid tls_key"), "{err}");
    }

    #[test]
    fn every_validation_error_names_the_key_and_the_source() {
        let cases: &[(&str, &str, &str)] = &[
            ("pool_size", "0", "must be at least 1"),
            ("pool_size", "-1", "expected a non-negative integer"),
            ("pool_size", "two", "expected a non-negative integer"),
            ("max_batch_commands", "0", "must be at least 1"),
            ("max_batch_bytes", "63", "must be at least 64"),
            ("batch_window_us", "1000001", "must be at most 1000000"),
            ("connect_timeout", "0s", "must be more than 0"),
            ("connect_timeout", "5", "expected a duration"),
            ("command_timeout", "soon", "expected a duration"),
            ("reconnect_backoff_max", "9ms", "must be at least 10ms"),
            ("drain_timeout", "0", "must be more than 0"),
            ("max_clients", "0", "must be at least 1"),
            ("max_client_inflight", "0", "must be at least 1"),
            ("max_client_reply_bytes", "0", "must be at least 1"),
            ("max_request_bytes", "0", "must be at least 1"),
            ("max_request_args", "0", "must be at least 1"),
            ("max_upstream_inflight", "0", "must be at least 1"),
            (
                "max_upstream_inflight",
                "99999999999999999999999",
                "expected a non-negative integer",
            ),
            ("log_level", " ", "must not be empty"),
            ("log_format", "yaml", "expected text or json"),
            ("metrics_listen", "nope", "expected HOST:PORT"),
            ("upstream", "ftp://x", "unsupported scheme"),
            ("listen", "x", "expected HOST:PORT"),
        ];
        for &(key, value, why) in cases {
            let s = SETTINGS.iter().find(|s| s.key == key).unwrap();
            let named = format!("invalid {key} ({}, {}): ", s.flag, s.env);
            let by_flag = load_err(&[s.flag, value], &[]);
            let by_env = load_err(&[], &[(s.env, value)]);
            for (err, origin) in [(by_flag, s.flag), (by_env, s.env)] {
                assert!(err.starts_with(&named), "{err}");
                assert!(err.contains(why), "{key}={value}: {err}");
                assert!(err.ends_with(&format!("(from {origin})")), "{err}");
            }
        }
    }

    #[test]
    fn file_values_are_checked_like_the_others() {
        let file = TempFile::new("file-errors", "pool_size = 0\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert_eq!(err, format!("invalid pool_size (--pool-size, RESPIPE_POOL_SIZE): must be at least 1 (from config file {})", file.path()));

        for (toml, why) in [
            ("pool_size = -3", "must not be negative"),
            ("connect_timeout = 5", "a bare number has no unit"),
            ("upstream = 6379", "expected a string, not an integer"),
            ("upstream = [\"a:1\"]", "not a list"),
            ("pool_size = \"4x\"", "expected a non-negative integer"),
        ] {
            let file = TempFile::new("file-types", toml);
            let err = load_err(&["--config", file.path()], &[]);
            assert!(
                err.starts_with("invalid ") && err.contains(why),
                "{toml}: {err}"
            );
        }
        // Integers may be written as strings in the file too, as they are in the environment.
        let file = TempFile::new(
            "file-string-int",
            "pool_size = \"4\"\nlisten = \"127.0.0.1:1,127.0.0.1:2\"\n",
        );
        let c = load(&["--config", file.path()], &[]).unwrap();
        assert_eq!(
            (c.batching.pool_size.get(), c.listen.addresses.len()),
            (4, 2)
        );
    }

    #[test]
    fn file_errors() {
        let file = TempFile::new("unknown-key", "pool_sise = 4\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert_eq!(
            err,
            format!(
                "config file {}: unknown key \"pool_sise\", did you mean \"pool_size\"?",
                file.path()
            )
        );
        let file = TempFile::new("unknown-key-far", "colour = \"blue\"\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert_eq!(
            err,
            format!("config file {}: unknown key \"colour\"", file.path())
        );
        let file = TempFile::new("dashed-key", "pool-size = 4\n");
        assert!(load_err(&["--config", file.path()], &[]).ends_with("did you mean \"pool_size\"?"));

        let file = TempFile::new("bad-toml", "pool_size = = 4\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.starts_with(&format!("config file {}: ", file.path())),
            "{err}"
        );
        let file = TempFile::new("bad-type", "pool_size = true\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.contains("expected a non-negative integer") && err.contains("pool_size"),
            "{err}"
        );
        let file = TempFile::new("table", "[upstream]\nhost = \"h\"\n");
        assert!(load_err(&["--config", file.path()], &[]).contains("unknown key \"upstream.host\""));
        let file = TempFile::new("nested", "pool_size = { n = 1 }\n");
        assert!(load_err(&["--config", file.path()], &[])
            .contains("expected a string, an integer, a boolean or a list of strings"));

        let err = load_err(&[], &[("RESPIPE_CONFIG", "/nonexistent/respipe.toml")]);
        assert!(
            err.starts_with("config file /nonexistent/respipe.toml: "),
            "{err}"
        );
    }

    #[test]
    fn example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut seen = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|ext| ext == "toml") {
                let config = load(&["--config", path.to_str().unwrap()], &[])
                    .unwrap_or_else(|e| panic!("{e}"));
                let name = path.file_name().unwrap().to_str().unwrap().to_owned();
                seen.insert(name, config);
            }
        }
        for name in [
            "cluster.toml",
            "minimal.toml",
            "respipe.toml",
            "sentinel.toml",
            "shards.toml",
            "sidecar.toml",
        ] {
            assert!(seen.contains_key(name), "config/{name} is missing");
        }
        // respipe.toml sets every key to its default (or shows it commented out when it has none).
        let example = Config {
            config_file: None,
            ..seen["respipe.toml"].clone()
        };
        assert_eq!(example, Config::default());
        // ... each in its section.
        let text = std::fs::read_to_string(dir.join("respipe.toml")).unwrap();
        for &(section, name, _) in SECTIONS {
            let header = format!("[{section}]");
            let body = text
                .split_once(&format!("\n{header}\n"))
                .map(|(_, after)| after.split("\n[").next().unwrap_or_default())
                .unwrap_or_else(|| panic!("respipe.toml lacks {header}"));
            let line = format!("{name} = ");
            let documented = body
                .lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&line));
            assert!(documented, "respipe.toml lacks {name} under {header}");
        }
        let Topology::Shards(spec) = &seen["shards.toml"].topology else {
            panic!("shards.toml is not sharded");
        };
        assert_eq!(spec.servers.len(), 3);
        assert_eq!(seen["shards.toml"].upstream, spec.servers[0].upstream);
        let Topology::Cluster(spec) = &seen["cluster.toml"].topology else {
            panic!("cluster.toml is not a cluster");
        };
        assert_eq!(spec.seeds.len(), 3);
        assert_eq!(seen["cluster.toml"].upstream, spec.seeds[0]);
        let Topology::Sentinel(spec) = &seen["sentinel.toml"].topology else {
            panic!("sentinel.toml is not watched by Sentinel");
        };
        assert_eq!(
            (spec.sentinels.len(), spec.master.as_str()),
            (3, "mymaster")
        );
        let sidecar = &seen["sidecar.toml"];
        assert_eq!(sidecar.listen.addresses.len(), 2);
        assert_eq!(sidecar.upstream, Upstream::tcp("redis", 6379));
        assert!(sidecar.observability.metrics_listen.is_some());
    }
}

#[cfg(test)]
mod reads_tests {
    use super::tests::{load, load_err, TempFile};
    use super::*;

    #[test]
    fn read_policy_and_replicas_from_flags_env_and_file() {
        let c = load(
            &["--read-from", "prefer-replica", "--read-your-writes", "0"],
            &[(
                "RESPIPE_REPLICAS",
                "10.0.0.2:6379, [::1]:6380,unix:/tmp/r.sock",
            )],
        )
        .unwrap();
        assert_eq!(c.reads.read_from, ReadFrom::PreferReplica);
        assert_eq!(c.reads.read_your_writes, None);
        assert_eq!(
            c.reads.replicas,
            [
                Endpoint::Tcp {
                    host: "10.0.0.2".into(),
                    port: 6379
                },
                Endpoint::Tcp {
                    host: "::1".into(),
                    port: 6380
                },
                Endpoint::Unix("/tmp/r.sock".into()),
            ]
        );
        let file = TempFile::new(
            "reads",
            "[upstream]\naddress = \"p:1\"\nread_from = \"replica\"\nread_your_writes = \"250ms\"\nreplicas = [\"r1:2\", \"r2:3\"]\n",
        );
        let c = load(&["--config", file.path()], &[]).unwrap();
        assert_eq!(c.reads.read_from, ReadFrom::Replica);
        assert_eq!(c.reads.read_your_writes, Some(Duration::from_millis(250)));
        assert_eq!(c.reads.replicas.len(), 2);
        assert_eq!(load(&[], &[]).unwrap().reads, Reads::default());
    }

    #[test]
    fn read_policies_the_topology_cannot_serve_are_refused() {
        let shards = "[upstream]\nkind = \"shards\"\nservers = [{ address = \"a:1\" }]\n";
        let cluster = "[upstream]\nkind = \"cluster\"\nseeds = [\"a:1\"]\n";
        let sentinel = "[upstream]\nkind = \"sentinel\"\nsentinels = [\"a:1\"]\nmaster = \"m\"\n";
        for (toml, args, why) in [
            (
                shards,
                &["--read-from", "replica"][..],
                "not kind = \"shards\"",
            ),
            (
                cluster,
                &["--read-from", "prefer-replica"][..],
                "not kind = \"cluster\"",
            ),
            (shards, &["--replicas", "r:1"][..], "single server only"),
            (sentinel, &["--replicas", "r:1"][..], "the sentinels report"),
        ] {
            let file = TempFile::new("reads-refused", toml);
            let mut all = vec!["--config", file.path()];
            all.extend(args);
            let err = load_err(&all, &[]);
            assert!(err.contains(why), "{toml} {args:?}: {err}");
        }
        let file = TempFile::new("reads-sentinel", sentinel);
        let c = load(&["--config", file.path(), "--read-from", "replica"], &[]).unwrap();
        assert_eq!(c.reads.read_from, ReadFrom::Replica);
        for (args, why) in [
            (&["--read-from", "replica"][..], "need replicas"),
            (
                &["--read-from", "any"][..],
                "expected primary, prefer-replica or replica",
            ),
            (&["--replicas", "redis://r:1"][..], "expected HOST:PORT"),
            (&["--replicas", "r"][..], "expected HOST:PORT"),
            (&["--replicas", "r:1,r:1"][..], "given twice"),
        ] {
            let err = load_err(args, &[]);
            assert!(err.contains(why), "{args:?}: {err}");
        }
    }
}
