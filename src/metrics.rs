//! Metric names, their descriptions, the Prometheus recorder and small record helpers.
//!
//! Hot paths never look a metric up by name: components take handles once (`ClientMetrics`,
//! `UpstreamMetrics`) and record through them. Labels never carry keys, values or client addresses.

use std::cell::Cell;
use std::sync::OnceLock;

use metrics::{
    describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram, Label, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::batch::FlushReason;

/// Client connections open now.
pub const CLIENT_CONNECTIONS: &str = "respipe_client_connections";
/// Client connections accepted since start.
pub const CLIENT_CONNECTIONS_TOTAL: &str = "respipe_client_connections_total";
/// Client connections refused because `max_clients` was reached.
pub const CLIENT_CONNECTIONS_REJECTED: &str = "respipe_client_connections_rejected_total";
/// Client connections closed by respipe, by reason.
pub const CLIENT_CLOSED_BY_PROXY: &str = "respipe_client_closed_by_proxy_total";
/// Commands by outcome.
pub const COMMANDS: &str = "respipe_commands_total";
/// Commands per upstream write (batch).
pub const BATCH_COMMANDS: &str = "respipe_batch_commands";
/// Bytes per upstream write (batch).
pub const BATCH_BYTES: &str = "respipe_batch_bytes";
/// Batches written, by flush reason.
pub const BATCH_FLUSHES: &str = "respipe_batch_flushes_total";
/// Time from a request being queued for an upstream connection to its batch being written.
pub const QUEUE_WAIT: &str = "respipe_queue_wait_seconds";
/// Time from a batch being written to the last reply of that batch arriving.
pub const UPSTREAM_RTT: &str = "respipe_upstream_rtt_seconds";
/// Commands in flight on each upstream connection.
pub const UPSTREAM_INFLIGHT: &str = "respipe_upstream_inflight";
/// 1 while an upstream connection is established, else 0.
pub const UPSTREAM_UP: &str = "respipe_upstream_up";
/// Upstream connections established after the first (reconnects).
pub const UPSTREAM_RECONNECTS: &str = "respipe_upstream_reconnects_total";
/// Upstream connection failures, by kind: those of `UpstreamError::kind`, and [`STALLED`].
pub const UPSTREAM_ERRORS: &str = "respipe_upstream_errors_total";
/// The `kind` of `respipe_upstream_errors_total` that counts shared connections retired because a
/// command at their head got no reply within `command_timeout` (a busy script, `DEBUG SLEEP`): new
/// commands go to a fresh connection.
pub const STALLED: &str = "stalled";
/// Commands answered with a timeout error because the upstream did not reply in time.
pub const COMMAND_TIMEOUTS: &str = "respipe_command_timeouts_total";
/// Dedicated upstream connections lent to clients now.
pub const LEASES: &str = "respipe_leases";
/// Commands refused because `max_leases` dedicated connections were in use.
pub const LEASE_REFUSALS: &str = "respipe_lease_refusals_total";
/// Shared pools started (one per db, protocol and user in use).
pub const POOLS: &str = "respipe_pools";
/// Servers of a sharded upstream ejected now (`auto_eject_hosts`): their keys go to the others.
pub const SHARDS_EJECTED: &str = "respipe_shards_ejected";
/// Cluster slot map refreshes that installed a map (some node answered), by what asked for them
/// (`source`); one no node answered is logged and retried, not counted.
pub const CLUSTER_REFRESHES: &str = "respipe_cluster_refreshes_total";
/// 1 while every hash slot of the cluster has a known owner, 0 otherwise.
pub const CLUSTER_SLOTS_COVERED: &str = "respipe_cluster_slots_covered";
/// Primaries owning slots in the current cluster slot map.
pub const CLUSTER_NODES: &str = "respipe_cluster_nodes";
/// Cluster redirects absorbed (`kind`: moved, ask): the command went on to the right node.
pub const CLUSTER_REDIRECTS: &str = "respipe_cluster_redirects_total";
/// Commands re-sent to a cluster node, by `reason` (tryagain, clusterdown, loading, readonly,
/// connection).
pub const CLUSTER_RETRIES: &str = "respipe_cluster_retries_total";
/// Sentinel mode: 1 for the primary in use (`address`), 0 for those it replaced.
pub const SENTINEL_PRIMARY: &str = "respipe_sentinel_primary";
/// Sentinel mode: primary changes seen after the first discovery.
pub const SENTINEL_FAILOVERS: &str = "respipe_sentinel_failovers_total";
/// Sentinel mode: discoveries that confirmed no primary (no sentinel answered, none knows the
/// master, or the primary named did not say `ROLE master`): the last known one stays.
pub const SENTINEL_DISCOVERY_ERRORS: &str = "respipe_sentinel_discovery_errors_total";
/// Sentinel mode: discoveries run, by `trigger` (start, event, poll, connect_failure, readonly).
pub const SENTINEL_DISCOVERIES: &str = "respipe_sentinel_discoveries_total";
/// Sentinel mode: sentinels that answered the last discovery.
pub const SENTINEL_REACHABLE: &str = "respipe_sentinel_sentinels_reachable";
/// Reads sent to each replica (`read_from`), by `replica` address.
pub const REPLICA_READS: &str = "respipe_replica_reads_total";
/// How far each replica is behind the primary, in bytes of the replication stream (`INFO
/// replication` offsets, polled every 2 s); -1 while unknown (the primary or the replica cannot be
/// asked, or the replica's link is down).
pub const REPLICA_LAG: &str = "respipe_replica_lag_bytes";

/// Clients each worker serves now (`worker` label; only with `workers` > 1).
pub const WORKER_CLIENTS: &str = "respipe_worker_clients";
/// 1 while a worker's event loop runs, 0 once it stalled (no turn for `STALL` seconds) or stopped
/// (`worker` label; only with `workers` > 1).
pub const WORKER_UP: &str = "respipe_worker_up";

/// Every metric respipe exports (the README and the Grafana dashboard are checked against it).
pub const ALL: &[&str] = &[
    CLIENT_CONNECTIONS,
    CLIENT_CONNECTIONS_TOTAL,
    CLIENT_CONNECTIONS_REJECTED,
    CLIENT_CLOSED_BY_PROXY,
    COMMANDS,
    BATCH_COMMANDS,
    BATCH_BYTES,
    BATCH_FLUSHES,
    QUEUE_WAIT,
    UPSTREAM_RTT,
    UPSTREAM_INFLIGHT,
    UPSTREAM_UP,
    UPSTREAM_RECONNECTS,
    UPSTREAM_ERRORS,
    COMMAND_TIMEOUTS,
    LEASES,
    LEASE_REFUSALS,
    POOLS,
    SHARDS_EJECTED,
    CLUSTER_REFRESHES,
    CLUSTER_SLOTS_COVERED,
    CLUSTER_NODES,
    CLUSTER_REDIRECTS,
    CLUSTER_RETRIES,
    SENTINEL_PRIMARY,
    SENTINEL_FAILOVERS,
    SENTINEL_DISCOVERY_ERRORS,
    SENTINEL_DISCOVERIES,
    SENTINEL_REACHABLE,
    REPLICA_READS,
    REPLICA_LAG,
    WORKER_CLIENTS,
    WORKER_UP,
];

/// The metrics of `ALL` only served with more than one worker.
pub const WORKERS_ONLY: &[&str] = &[WORKER_CLIENTS, WORKER_UP];

thread_local! {
    /// The worker the calling thread runs, when there are several.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks the calling thread as worker `index` of several: every handle it takes from now on carries
/// the label `worker="index"`, so workers never share a counter (no cache line bouncing between
/// cores per command) and each one's batches are seen apart.
pub fn set_worker(index: usize) {
    WORKER.set(Some(index));
}

/// `pairs` as labels, plus `worker` on a worker's thread.
pub fn labels<const N: usize>(pairs: [(&'static str, String); N]) -> Vec<Label> {
    let worker = WORKER.get().map(|w| Label::new("worker", w.to_string()));
    pairs
        .into_iter()
        .map(|(key, value)| Label::new(key, value))
        .chain(worker)
        .collect()
}

/// Handles of one worker, taken by the acceptor.
pub fn worker(index: usize) -> (Gauge, Gauge) {
    let label = [("worker", index.to_string())];
    (
        metrics::gauge!(WORKER_CLIENTS, &label),
        metrics::gauge!(WORKER_UP, &label),
    )
}

/// The metrics of `ALL` only served while reads go to replicas (`read_from`).
pub const REPLICAS_ONLY: &[&str] = &[REPLICA_READS, REPLICA_LAG];

/// The metrics of `ALL` only a cluster upstream serves.
pub const CLUSTER_ONLY: &[&str] = &[
    CLUSTER_REFRESHES,
    CLUSTER_SLOTS_COVERED,
    CLUSTER_NODES,
    CLUSTER_REDIRECTS,
    CLUSTER_RETRIES,
];

/// The metrics of `ALL` only an upstream watched by Sentinel serves.
pub const SENTINEL_ONLY: &[&str] = &[
    SENTINEL_PRIMARY,
    SENTINEL_FAILOVERS,
    SENTINEL_DISCOVERY_ERRORS,
    SENTINEL_DISCOVERIES,
    SENTINEL_REACHABLE,
];

/// The metrics of `ALL` that are histograms (`_bucket`, `_sum`, `_count` series).
pub const HISTOGRAMS: &[&str] = &[BATCH_COMMANDS, BATCH_BYTES, QUEUE_WAIT, UPSTREAM_RTT];

/// Outcome label values of `respipe_commands_total`.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// Sent upstream and answered by Redis.
    Forwarded,
    /// Answered by respipe itself (QUIT, CLIENT SETNAME, ...).
    Local,
    /// Refused with a respipe `-ERR` (connection state not supported).
    Refused,
    /// Answered with an error because the upstream failed, timed out or was unavailable.
    Failed,
}

/// Per-session handles, shared by all sessions (cloning a handle is one reference count).
#[derive(Clone)]
pub struct ClientMetrics {
    /// `respipe_client_connections`.
    pub connections: Gauge,
    /// `respipe_client_connections_total`.
    pub accepted: Counter,
    /// `respipe_client_connections_rejected_total`.
    pub rejected: Counter,
    /// `respipe_client_closed_by_proxy_total{reason="protocol_error"}`.
    pub closed_protocol: Counter,
    /// `respipe_client_closed_by_proxy_total{reason="reply_limit"}`.
    pub closed_reply_limit: Counter,
    /// `respipe_client_closed_by_proxy_total{reason="pubsub_limit"}`.
    pub closed_pubsub_limit: Counter,
    /// `respipe_commands_total{outcome="forwarded"}`.
    pub forwarded: Counter,
    /// `respipe_commands_total{outcome="local"}`.
    pub local: Counter,
    /// `respipe_commands_total{outcome="refused"}`.
    pub refused: Counter,
    /// `respipe_commands_total{outcome="failed"}`.
    pub failed: Counter,
}

/// Handles of one upstream connection (labelled by its index in the pool).
#[derive(Clone)]
pub struct UpstreamMetrics {
    /// `respipe_upstream_inflight{conn}`.
    pub inflight: Gauge,
    /// `respipe_upstream_up{conn}`.
    pub up: Gauge,
    /// `respipe_upstream_reconnects_total{conn}`.
    pub reconnects: Counter,
    /// `respipe_batch_commands`.
    pub batch_commands: Histogram,
    /// `respipe_batch_bytes`.
    pub batch_bytes: Histogram,
    /// `respipe_batch_flushes_total{reason}`, indexed like `FlushReason::ALL`.
    pub flushes: [Counter; 5],
    /// `respipe_queue_wait_seconds`.
    pub queue_wait: Histogram,
    /// `respipe_upstream_rtt_seconds`.
    pub rtt: Histogram,
    /// `respipe_command_timeouts_total`.
    pub timeouts: Counter,
}

impl ClientMetrics {
    /// Takes the handles (once per proxy).
    pub fn new() -> Self {
        let outcome =
            |o: Outcome| metrics::counter!(COMMANDS, labels([("outcome", o.as_str().into())]));
        ClientMetrics {
            connections: metrics::gauge!(CLIENT_CONNECTIONS, labels([])),
            accepted: metrics::counter!(CLIENT_CONNECTIONS_TOTAL, labels([])),
            rejected: metrics::counter!(CLIENT_CONNECTIONS_REJECTED, labels([])),
            closed_protocol: metrics::counter!(
                CLIENT_CLOSED_BY_PROXY,
                labels([("reason", "protocol_error".into())])
            ),
            closed_reply_limit: metrics::counter!(
                CLIENT_CLOSED_BY_PROXY,
                labels([("reason", "reply_limit".into())])
            ),
            closed_pubsub_limit: metrics::counter!(
                CLIENT_CLOSED_BY_PROXY,
                labels([("reason", "pubsub_limit".into())])
            ),
            forwarded: outcome(Outcome::Forwarded),
            local: outcome(Outcome::Local),
            refused: outcome(Outcome::Refused),
            failed: outcome(Outcome::Failed),
        }
    }
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl UpstreamMetrics {
    /// Takes the handles of the upstream connection labelled `conn`.
    pub fn new(conn: String) -> Self {
        UpstreamMetrics {
            inflight: metrics::gauge!(UPSTREAM_INFLIGHT, labels([("conn", conn.clone())])),
            up: metrics::gauge!(UPSTREAM_UP, labels([("conn", conn.clone())])),
            reconnects: metrics::counter!(UPSTREAM_RECONNECTS, labels([("conn", conn)])),
            batch_commands: metrics::histogram!(BATCH_COMMANDS, labels([])),
            batch_bytes: metrics::histogram!(BATCH_BYTES, labels([])),
            flushes: FlushReason::ALL
                .map(|r| metrics::counter!(BATCH_FLUSHES, labels([("reason", r.as_str().into())]))),
            queue_wait: metrics::histogram!(QUEUE_WAIT, labels([])),
            rtt: metrics::histogram!(UPSTREAM_RTT, labels([])),
            timeouts: metrics::counter!(COMMAND_TIMEOUTS, labels([])),
        }
    }

    /// Records one written batch.
    pub fn flushed(&self, reason: FlushReason, commands: usize, bytes: usize) {
        let i = FlushReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.flushes[i].increment(1);
        self.batch_commands.record(commands as f64);
        self.batch_bytes.record(bytes as f64);
    }
}

/// Sets how many servers of the sharded upstream are ejected now.
pub fn ejected(count: usize) {
    metrics::gauge!(SHARDS_EJECTED, labels([])).set(count as f64);
}

/// Counts a cluster slot map refresh asked for by `source` that installed a map, and publishes
/// the map's coverage and primaries.
pub fn cluster_refreshed(source: &'static str, covered: bool, primaries: usize) {
    metrics::counter!(CLUSTER_REFRESHES, labels([("source", source.into())])).increment(1);
    cluster_map(covered, primaries);
}

/// Publishes the coverage and primaries of the cluster slot map in use (empty at start, then
/// after every refresh and `MOVED` patch).
pub fn cluster_map(covered: bool, primaries: usize) {
    metrics::gauge!(CLUSTER_SLOTS_COVERED, labels([])).set(if covered { 1.0 } else { 0.0 });
    metrics::gauge!(CLUSTER_NODES, labels([])).set(primaries as f64);
}

/// Counts a cluster redirect absorbed (`kind`: "moved" or "ask").
pub fn cluster_redirect(kind: &'static str) {
    metrics::counter!(CLUSTER_REDIRECTS, labels([("kind", kind.into())])).increment(1);
}

/// Counts a command re-sent to a cluster node for `reason`.
pub fn cluster_retry(reason: &'static str) {
    metrics::counter!(CLUSTER_RETRIES, labels([("reason", reason.into())])).increment(1);
}

/// Serves the Sentinel counters from the start of a watch, so dashboards and alerts see zeros.
pub fn sentinel_watched() {
    metrics::counter!(SENTINEL_FAILOVERS, labels([])).increment(0);
    metrics::counter!(SENTINEL_DISCOVERY_ERRORS, labels([])).increment(0);
}

/// Counts a Sentinel discovery asked for by `trigger`.
pub fn sentinel_discovery(trigger: &'static str) {
    metrics::counter!(SENTINEL_DISCOVERIES, labels([("trigger", trigger.into())])).increment(1);
}

/// Counts a Sentinel discovery that confirmed no primary.
pub fn sentinel_discovery_error() {
    metrics::counter!(SENTINEL_DISCOVERY_ERRORS, labels([])).increment(1);
}

/// Sets how many sentinels answered the last discovery.
pub fn sentinels_reachable(count: usize) {
    metrics::gauge!(SENTINEL_REACHABLE, labels([])).set(count as f64);
}

/// Publishes `primary` as the primary in use; when it replaced `old`, that one goes to 0 and a
/// failover is counted.
pub fn sentinel_primary(primary: &str, old: Option<&str>) {
    if let Some(old) = old {
        metrics::gauge!(SENTINEL_PRIMARY, labels([("address", old.to_owned())])).set(0.0);
        metrics::counter!(SENTINEL_FAILOVERS, labels([])).increment(1);
    }
    metrics::gauge!(SENTINEL_PRIMARY, labels([("address", primary.to_owned())])).set(1.0);
}

/// Counts one upstream connection failure of `kind` (see `UpstreamError::kind`).
pub fn upstream_error(kind: &'static str) {
    metrics::counter!(UPSTREAM_ERRORS, labels([("kind", kind.into())])).increment(1);
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Local => "local",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle) and
/// describes every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let counts = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ];
            let bytes = [
                64.0,
                256.0,
                1024.0,
                4096.0,
                16384.0,
                65536.0,
                262_144.0,
                1_048_576.0,
                4_194_304.0,
                16_777_216.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(QUEUE_WAIT.into()), &seconds)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(UPSTREAM_RTT.into()), &seconds)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(BATCH_COMMANDS.into()), &counts)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_BYTES.into()), &bytes))
                .expect("bucket lists are non-empty constants");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program): render an empty registry.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_gauge!(CLIENT_CONNECTIONS, "Client connections open now.");
    describe_counter!(
        CLIENT_CONNECTIONS_TOTAL,
        "Client connections accepted since start."
    );
    describe_counter!(
        CLIENT_CONNECTIONS_REJECTED,
        "Client connections refused because max_clients was reached."
    );
    describe_counter!(
        CLIENT_CLOSED_BY_PROXY,
        "Client connections closed by respipe, by reason (protocol_error, reply_limit, pubsub_limit)."
    );
    describe_counter!(
        COMMANDS,
        "Commands by outcome: forwarded, local, refused, failed."
    );
    describe_histogram!(BATCH_COMMANDS, Unit::Count, "Commands per upstream write.");
    describe_histogram!(BATCH_BYTES, Unit::Bytes, "Bytes per upstream write.");
    describe_counter!(
        BATCH_FLUSHES,
        "Upstream writes by flush reason: adaptive, max_commands, max_bytes, window, idle."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from a batch's oldest request being queued to the batch being written upstream."
    );
    describe_histogram!(
        UPSTREAM_RTT,
        Unit::Seconds,
        "Time from a batch being written to the last of its replies arriving."
    );
    describe_gauge!(
        UPSTREAM_INFLIGHT,
        "Commands in flight per upstream connection."
    );
    describe_gauge!(
        UPSTREAM_UP,
        "1 while the upstream connection is established."
    );
    describe_counter!(
        UPSTREAM_RECONNECTS,
        "Upstream connections re-established after a loss."
    );
    describe_counter!(
        UPSTREAM_ERRORS,
        "Upstream connection failures by kind: connect_timeout, io, handshake, protocol, closed, \
         stalled (a shared connection retired because its head command timed out); Sentinel mode: \
         no_primary, wrong_role (ROLE said another role), superseded (an old primary not reconnected to)."
    );
    describe_gauge!(
        LEASES,
        "Dedicated upstream connections lent to clients now."
    );
    describe_counter!(
        LEASE_REFUSALS,
        "Commands refused because max_leases dedicated connections were in use."
    );
    describe_gauge!(
        POOLS,
        "Shared pools started, one per db, protocol and user in use."
    );
    describe_gauge!(
        SHARDS_EJECTED,
        "Servers of a sharded upstream ejected now (auto_eject_hosts): their keys go to the others."
    );
    describe_counter!(
        CLUSTER_REFRESHES,
        "Cluster slot map refreshes that installed a map (some node answered), by what asked for them (source)."
    );
    describe_gauge!(
        CLUSTER_SLOTS_COVERED,
        "1 while every hash slot of the cluster has a known owner, 0 otherwise."
    );
    describe_gauge!(
        CLUSTER_NODES,
        "Primaries owning slots in the current cluster slot map."
    );
    describe_counter!(
        CLUSTER_REDIRECTS,
        "Cluster redirects (MOVED, ASK) absorbed: the command went on to the right node."
    );
    describe_counter!(
        CLUSTER_RETRIES,
        "Commands re-sent to a cluster node, by reason (tryagain, clusterdown, loading, readonly, connection)."
    );
    describe_gauge!(
        SENTINEL_PRIMARY,
        "Sentinel mode: 1 for the primary in use (address), 0 for those it replaced."
    );
    describe_counter!(
        SENTINEL_FAILOVERS,
        "Sentinel mode: primary changes seen after the first discovery."
    );
    describe_counter!(
        SENTINEL_DISCOVERY_ERRORS,
        "Sentinel mode: discoveries that confirmed no primary (the last known one stays)."
    );
    describe_counter!(
        SENTINEL_DISCOVERIES,
        "Sentinel mode: discoveries run, by trigger (start, event, poll, connect_failure, readonly)."
    );
    describe_gauge!(
        SENTINEL_REACHABLE,
        "Sentinel mode: sentinels that answered the last discovery."
    );
    describe_counter!(
        COMMAND_TIMEOUTS,
        "Commands answered with a timeout error because the upstream did not reply in time."
    );
    describe_gauge!(
        WORKER_CLIENTS,
        "Clients each worker serves now (workers > 1)."
    );
    describe_gauge!(
        WORKER_UP,
        "1 while a worker's event loop runs, 0 once it stalled or stopped (workers > 1)."
    );
    describe_counter!(
        REPLICA_READS,
        "Reads sent to each replica (read_from), by replica address."
    );
    describe_gauge!(
        REPLICA_LAG,
        Unit::Bytes,
        "Bytes of the replication stream each replica has not processed yet (INFO replication offsets, every 2 s); -1 while unknown."
    );
}
