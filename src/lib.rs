//! respipe: a transparent pipelining proxy for Redis.
//!
//! Many ordinary client connections come in; their commands are coalesced into pipelined batches on
//! a few shared upstream connections; every reply goes back to the client that sent the command, by
//! FIFO order. The upstream is one Redis, several independent servers sharded by key as twemproxy
//! shards them, or a Redis Cluster presented as one Redis: with several servers each client's
//! replies pass through a reorder buffer (`session::lanes`), and a cluster's redirects and retries
//! are absorbed (`session::redirect`).
//!
//! ```text
//!  client A ──┐                                  ┌── upstream conn 1 ──┐
//!  client B ──┼─► session ─► router ─► batcher ──┤                     ├─► Redis
//!  client C ──┘   (parse,     (pick a    (coalesce├── upstream conn 2 ──┘
//!                  state)      conn)      & flush)│
//!  client A ◄── session ◄──── reply FIFO ◄────────┘  (each reply goes to the slot at the head of the FIFO)
//! ```
//!
//! # Layout
//! Linked modules are public (the binary, the tests and the benchmarks use them); the rest are
//! crate-private.
//! - [`config`]: one validated `Config`, in sections, from twemproxy pool < file < env < flags.
//! - [`resp`]: RESP2/RESP3 scanners yielding frame boundaries; bounded, resumable, never panic.
//! - [`command`]: the table that classifies every command (forward with its reply shape, lease,
//!   answer locally, refuse) and knows where its keys are.
//! - [`server`]: listeners, the connection limit, `run` and the drain at shutdown.
//! - [`workers`]: `workers = N`: N single-threaded event loops, each with its own pools; the
//!   acceptor's handoff to the one with the fewest clients; the stall watchdog.
//! - `clients`: respipe's clients as `CLIENT ID|LIST|INFO|KILL` show and act on them.
//! - [`shard`]: twemproxy-compatible placement of keys on independent servers.
//! - [`cluster`]: Redis Cluster: hash slots, and the slot map (the view most of up to 3 nodes agree
//!   on) kept current by its refresh task.
//! - [`sentinel`]: a primary watched by Redis Sentinel: which server is the primary (and its
//!   replicas) as the sentinels say and `ROLE` confirms; a change replaces the pools.
//! - `session`: one client, by concern: the socket loop (`mod.rs`), input and dispatch (`input`),
//!   client state (`state`), connections and leases (`conns`), reply order (`order`), the reorder
//!   buffer and sharded commands (`lanes`), reads on replicas (`reads`), cluster redirects,
//!   retries and the redirect fence (`redirect`), streams (`stream`, shard channels following
//!   their slot), identity and tracking.
//! - `route`: the routing step for several servers: one server, a split with its merge, every
//!   server, a local answer or a refusal; `route::cluster` the answers a cluster needs (`CLUSTER`
//!   as a non-cluster Redis, `INFO` merged, keyless commands on a primary).
//! - `topology`: the servers of the upstream and the placement of keys now (ejection).
//! - `replicas`: reads from replicas (`read_from`): the replica a session's read goes to, the
//!   per-replica counters and the replication lag poll.
//! - `outflow`: a client's reply flow: throttling by reply weight, read rate, pubsub output limit.
//! - `follow`: connection state that changes only when Redis accepts the command (now or at EXEC).
//! - [`pool`]: the upstream connections per state and server, and the leases.
//! - `warm`: dedicated connections handshaken in advance, and the scrub of given-back ones.
//! - [`upstream`]: one upstream connection: a handle plus one driver task owning socket, batch, FIFO.
//! - [`batch`]: the coalescing policy as pure logic.
//! - `chunks`: byte chunks drained by vectored writes.
//! - `spare`: spare read buffers reused by sessions, and session queues that start small.
//! - `live`: settings that change while running (hot reload), cached by readers.
//! - `reload`: applying a reloaded configuration; what needs a restart.
//! - [`tls`]: rustls acceptor for clients and connector for `rediss://` upstreams.
//! - `value`: whole replies read into values, for the few respipe reads itself (`CLUSTER SLOTS`,
//!   Sentinel's answers, `ROLE`).
//! - [`reply`]: replies travelling back to sessions and respipe's own `-ERR` texts.
//! - [`error`]: typed errors recording which side failed.
//! - [`metrics`]: metric names, the Prometheus recorder, handles.
//! - `admin`: `/metrics`, `/healthz`, `/readyz`.

pub(crate) mod admin;
pub mod batch;
pub(crate) mod chunks;
pub(crate) mod clients;
pub mod cluster;
pub mod command;
pub mod config;
pub mod error;
pub(crate) mod follow;
pub(crate) mod live;
pub mod metrics;
pub(crate) mod outflow;
pub mod pool;
pub(crate) mod reload;
pub(crate) mod replicas;
pub mod reply;
pub mod resp;
pub(crate) mod route;
pub mod sentinel;
pub mod server;
pub(crate) mod session;
pub mod shard;
pub(crate) mod spare;
pub mod tls;
pub(crate) mod topology;
pub mod upstream;
pub(crate) mod value;
pub(crate) mod warm;
pub mod workers;

pub use admin::Admin;
pub use config::Config;
pub use server::{run, Listener};
