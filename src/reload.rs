//! Applying a reloaded configuration to a running proxy: what takes effect at once, and what needs
//! a restart (reported, and kept as it was). The binary reloads on SIGHUP and when the config file
//! changes; a configuration that does not load is rejected whole and the running one stays.

use tracing::{info, warn};

use crate::config::Config;
use crate::session::{SessionLimits, Shared};
use crate::upstream::Tunables;

/// Applies `new` to a proxy running `running` and returns the configuration now in effect: `new`,
/// except the settings that need a restart, which keep their running values (and are logged).
///
/// Applied at once, without dropping a client: batching knobs and the command timeout (every
/// upstream connection's next batch), per-client limits, `deny_commands`, `requirepass` and
/// `lease_idle_timeout` (every session's next event; request size limits for new clients), and
/// the upstream address and credentials, and the topology: shards added, removed or reweighted,
/// hash, distribution, hash tag and ejection settings, a switch between one server and shards, the
/// read policy and static replicas (new pools; sessions move to them when nothing is in flight;
/// leases in use keep their connection).
/// The log level is applied by the binary.
///
/// Needs a restart: the listen addresses, the metrics address, the pool and lease sizes, the
/// connect and drain timeouts, TLS files and switching the upstream's TLS on or off, the log
/// format, `sched_batch` and `workers`. A twemproxy file is read again on SIGHUP and when the TOML file
/// changes, not when only the YAML changes.
pub fn apply(running: &Config, new: &Config, shared: &Shared) -> Config {
    let mut effective = new.clone();
    let mut restart: Vec<&str> = Vec::new();
    macro_rules! keep_running {
        ($($section:ident.$field:ident),* $(,)?) => {$(
            if running.$section.$field != new.$section.$field {
                restart.push(concat!(stringify!($section), ".", stringify!($field)));
                effective.$section.$field = running.$section.$field.clone();
            }
        )*};
    }
    keep_running!(
        listen.addresses,
        observability.metrics_listen,
        batching.pool_size,
        listen.max_clients,
        leases.max_leases,
        leases.warm_leases,
        batching.max_pools,
        batching.max_upstream_inflight,
        timeouts.connect_timeout,
        timeouts.reconnect_backoff_max,
        timeouts.drain_timeout,
        tls.cert,
        tls.key,
        tls.client_ca,
        tls.upstream_ca,
        tls.upstream_cert,
        tls.upstream_key,
        tls.upstream_server_name,
        tls.upstream_insecure,
        observability.log_format,
        batching.sched_batch,
        batching.workers,
    );
    if running.upstream.tls != new.upstream.tls {
        restart.push("upstream (TLS on or off)");
        effective.upstream = running.upstream.clone();
    }
    if !restart.is_empty() {
        warn!(
            settings = restart.join(", "),
            "config reload: these changed but need a restart to take effect; the running values stay"
        );
    }

    let mut applied: Vec<&str> = Vec::new();
    let tunables = Tunables::from_config(&effective);
    if tunables != Tunables::from_config(running) {
        shared.pools.tunables().store(tunables);
        applied.push("batching and command timeout");
    }
    let limits = SessionLimits::from_config(&effective);
    if limits != SessionLimits::from_config(running) {
        shared.limits.store(limits);
        applied.push("client limits, deny_commands, requirepass, lease_idle_timeout");
    }
    if effective.upstream != running.upstream
        || effective.topology != running.topology
        || effective.reads != running.reads
    {
        shared.pools.replace_upstream(
            effective.upstream.clone(),
            effective.topology.clone(),
            effective.reads.clone(),
        );
        applied.push("upstream");
    }
    if effective.observability.log_level != running.observability.log_level {
        applied.push("log_level");
    }
    if applied.is_empty() {
        info!("config reload: nothing to apply");
    } else {
        info!(
            applied = applied.join("; "),
            upstream = %effective.upstream,
            "config reloaded"
        );
    }
    effective
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::config::{Endpoint, ReadFrom, Reads, Topology, Upstream};
    use crate::shard::{Server, Spec};

    /// Shards on loopback ports nothing listens on (the pools connect in the background).
    fn shards(ports: &[u16]) -> Config {
        let servers: Vec<Server> = ports
            .iter()
            .map(|&port| Server {
                upstream: Upstream::tcp("127.0.0.1", port),
                name: None,
                weight: 1,
            })
            .collect();
        Config {
            upstream: servers[0].upstream.clone(),
            topology: Topology::Shards(Spec {
                servers,
                hash: Default::default(),
                distribution: Default::default(),
                hash_tag: None,
                eject: None,
            }),
            ..Config::default()
        }
    }

    /// What sessions share, for a proxy started with `config`.
    fn shared(config: &Config) -> Shared {
        crate::workers::Process::new(config, CancellationToken::new())
            .expect("no TLS")
            .worker(config)
    }

    #[tokio::test]
    async fn a_new_server_list_reaches_the_pools_and_restart_settings_stay() {
        let running = shards(&[1, 2]);
        let shared = shared(&running);
        assert_eq!(shared.pools.layout().servers.len(), 2);

        let mut new = shards(&[1, 2, 3]);
        new.batching.pool_size = 4.try_into().unwrap();
        let generation = shared.pools.generation();
        let effective = apply(&running, &new, &shared);
        assert_eq!(
            shared.pools.layout().servers.len(),
            3,
            "the servers were handed over"
        );
        assert!(shared.pools.generation() > generation, "new pools started");
        assert_eq!(effective.topology, new.topology);
        assert_eq!(
            effective.batching.pool_size, running.batching.pool_size,
            "needs a restart"
        );

        let generation = shared.pools.generation();
        let same = apply(&effective, &effective.clone(), &shared);
        assert_eq!(same, effective);
        assert_eq!(
            shared.pools.generation(),
            generation,
            "nothing changed, nothing replaced"
        );
        shared.shutdown.cancel();
    }

    /// Turning reads from replicas on, or changing read-your-writes, replaces the pools (sessions
    /// move to them when idle); with reads on the primary the replicas get no connections.
    #[tokio::test]
    async fn a_new_read_policy_reaches_the_pools() {
        let running = Config {
            upstream: Upstream::tcp("127.0.0.1", 1),
            reads: Reads {
                replicas: vec![Endpoint::Tcp {
                    host: "127.0.0.1".into(),
                    port: 2,
                }],
                ..Reads::default()
            },
            ..Config::default()
        };
        let shared = shared(&running);
        let layout = shared.pools.layout();
        assert!(layout.replicas().is_none());
        assert_eq!((layout.servers(), layout.lanes_started()), (2, 1));

        let mut new = running.clone();
        new.reads.read_from = ReadFrom::PreferReplica;
        let generation = shared.pools.generation();
        let effective = apply(&running, &new, &shared);
        assert_eq!(effective.reads, new.reads);
        assert!(shared.pools.generation() > generation, "new pools started");
        let layout = shared.pools.layout();
        assert_eq!(layout.replicas().map(|r| r.replicas()), Some(1));
        assert_eq!(layout.lanes_started(), 2);

        let mut newer = new.clone();
        newer.reads.read_your_writes = None;
        let generation = shared.pools.generation();
        apply(&new, &newer, &shared);
        assert!(shared.pools.generation() > generation);
        let layout = shared.pools.layout();
        assert_eq!(layout.replicas().and_then(|r| r.read_your_writes), None);
        shared.shutdown.cancel();
    }
}
