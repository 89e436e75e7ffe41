//! Several redis-servers behind one sharding proxy: respipe in-process with a shards topology
//! (fnv1a_64, ketama, hash tag `{}`), or, as the environment variable `SHARDS_FRONT` says, the
//! respipe binary reading the same pool from a `--config` file (`binary`), or twemproxy with the
//! equivalent pool (`nutcracker`), so that the tests twemproxy can pass are proven sound against
//! it. Servers carry fixed names (`alpha`, `beta`, ...), so where a key lands depends on the names
//! and not on the ports a run happens to get.

use std::net::SocketAddr;
use std::time::Duration;

use respipe::config::{Topology, Upstream};
pub use respipe::shard::Eject;
use respipe::shard::{Distribution, Hash, Server, Spec};

use super::nutcracker::Nutcracker;
use super::{poll_until, BinProxy, Proxy, RawClient, RedisServer, Reply, START_DEADLINE};

/// The environment variable that picks the proxy in front of the shards: `binary` for the respipe
/// binary with a `--config` file, `nutcracker` for twemproxy (`/usr/sbin/nutcracker`); unset (or
/// anything else), respipe in-process.
pub const FRONT: &str = "SHARDS_FRONT";

/// The servers' names in the ring, in config order.
const NAMES: [&str; 6] = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];

/// How many probe keys one round of [`Shards::find_tags`] writes.
const TAG_ROUND: usize = 64;

/// At most this many rounds of probe keys to find a tag for every server.
const TAG_ROUNDS: usize = 16;

/// How a [`Shards`] is set up beyond the number of servers.
#[derive(Debug, Clone, Default)]
pub struct ShardOptions {
    /// `auto_eject_hosts` with these settings; `None`: never eject.
    pub eject: Option<Eject>,
    /// Extra `redis-server` arguments for every server.
    pub redis_args: Vec<String>,
}

/// N redis-servers on loopback behind one sharding proxy; all killed on drop.
pub struct Shards {
    /// In config order: `servers[i]` is named `NAMES[i]`.
    pub servers: Vec<RedisServer>,
    front: Front,
    /// `tags[i]`: a hash tag whose keys live on `servers[i]` (found by probing, see `find_tags`).
    tags: Vec<String>,
    /// Holds the binary's config file (`SHARDS_FRONT=binary`).
    _dir: tempfile::TempDir,
}

/// The proxy in front of the servers.
enum Front {
    Respipe(Proxy),
    Binary(BinProxy),
    Nutcracker(Nutcracker),
}

impl Shards {
    /// Starts `n` redis-servers and the proxy over them (respipe, or what [`FRONT`] names), waits
    /// until keys can be written to every server through it and finds a hash tag per server.
    pub async fn start(n: usize, options: ShardOptions) -> Shards {
        assert!((1..=NAMES.len()).contains(&n), "{n} shards");
        let redis_args: Vec<&str> = options.redis_args.iter().map(String::as_str).collect();
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            servers.push(RedisServer::start_with(&redis_args).await);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let front = match std::env::var(FRONT).as_deref() {
            Ok("nutcracker") => Front::Nutcracker(
                Nutcracker::start(&nutcracker_yaml(&servers, options.eject)).await,
            ),
            Ok("binary") => {
                let config = dir.path().join("respipe.toml");
                let toml = respipe_toml(&servers, options.eject);
                std::fs::write(&config, toml).expect("write config");
                let config = config.to_str().expect("utf-8 path");
                Front::Binary(BinProxy::spawn_with(&["--config", config]))
            }
            _ => {
                let topology = Topology::Shards(spec(&servers, options.eject));
                Front::Respipe(Proxy::start(servers[0].port(), |c| c.topology = topology).await)
            }
        };
        let mut shards = Shards {
            servers,
            front,
            tags: Vec::new(),
            _dir: dir,
        };
        shards.tags = shards.find_tags().await;
        shards
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        match &self.front {
            Front::Respipe(p) => p.addr(),
            Front::Binary(p) => p.listen,
            Front::Nutcracker(n) => n.addr,
        }
    }

    /// A raw client of the proxy.
    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr()).await
    }

    /// A hash tag (without braces) whose keys live on server `i`.
    pub fn tag(&self, i: usize) -> &str {
        &self.tags[i]
    }

    /// `{TAG}name`: a key that lives on server `i`.
    pub fn key(&self, i: usize, name: &str) -> String {
        format!("{{{}}}{name}", self.tags[i])
    }

    /// How the proxy's error replies for an unreachable or lost server start: respipe's
    /// `ERR respipe: upstream`, twemproxy's `ERR ` (`ERR Connection refused`...).
    pub fn failure(&self) -> &'static str {
        match self.front {
            Front::Respipe(_) | Front::Binary(_) => "ERR respipe: upstream",
            Front::Nutcracker(_) => "ERR ",
        }
    }

    /// Which servers hold `key` in db `db`, asked directly (not through the proxy); a server
    /// that is down holds nothing.
    pub async fn holders(&self, key: &str, db: u32) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, s) in self.servers.iter().enumerate() {
            let Ok(mut c) = RawClient::try_connect(s.addr()).await else {
                continue;
            };
            let r = c
                .send_all(&[&["SELECT", &db.to_string()], &["EXISTS", key]])
                .await;
            if r == [Reply::ok(), Reply::Int(1)] {
                out.push(i);
            }
        }
        out
    }

    /// `DBSIZE` of db `db` on every server, asked directly.
    pub async fn dbsizes(&self, db: u32) -> Vec<i64> {
        let mut out = Vec::new();
        for s in &self.servers {
            let mut c = s.direct().await;
            match c
                .send_all(&[&["SELECT", &db.to_string()], &["DBSIZE"]])
                .await[..]
            {
                [Reply::Simple(_), Reply::Int(n)] => out.push(n),
                ref other => panic!("DBSIZE on {}: {other:?}", s.addr()),
            }
        }
        out
    }

    /// Writes probe keys `{tN}` through the proxy (in rounds of [`TAG_ROUND`], retried until every
    /// write is answered `+OK`, which also waits for the proxy's connections), reads which server
    /// got each one, and returns for every server the first tag it got. Removes the probes.
    async fn find_tags(&self) -> Vec<String> {
        let mut tags: Vec<Option<String>> = vec![None; self.servers.len()];
        for round in 0..TAG_ROUNDS {
            let probes: Vec<String> = (round * TAG_ROUND..(round + 1) * TAG_ROUND)
                .map(|n| format!("t{n}"))
                .collect();
            let addr = self.addr();
            let probes = &probes;
            poll_until(
                START_DEADLINE,
                "probe keys written through the proxy",
                || async move {
                    let mut c = RawClient::try_connect(addr).await.ok()?;
                    let cmds: Vec<[String; 3]> = probes
                        .iter()
                        .map(|t| ["SET".into(), format!("{{{t}}}"), "probe".into()])
                        .collect();
                    let replies = tokio::time::timeout(
                        Duration::from_secs(2),
                        c.send_all(&cmds.iter().map(|c| &c[..]).collect::<Vec<_>>()),
                    )
                    .await
                    .ok()?;
                    replies.iter().all(|r| *r == Reply::ok()).then_some(())
                },
            )
            .await;
            for (i, s) in self.servers.iter().enumerate() {
                let mut c = s.direct().await;
                let Reply::Array(Some(keys)) = c.cmd(&["KEYS", "{t*}"]).await else {
                    panic!("KEYS on {}", s.addr());
                };
                let mut found: Vec<String> = keys
                    .into_iter()
                    .filter_map(|k| match k {
                        Reply::Bulk(Some(k)) => String::from_utf8(k).ok(),
                        _ => None,
                    })
                    .map(|k| k.trim_matches(['{', '}']).to_owned())
                    .collect();
                found.sort_by_key(|t| t[1..].parse::<usize>().unwrap_or(usize::MAX));
                if tags[i].is_none() {
                    tags[i] = found.first().cloned();
                }
                assert_eq!(c.cmd(&["FLUSHALL"]).await, Reply::ok());
            }
            if tags.iter().all(Option::is_some) {
                return tags.into_iter().flatten().collect();
            }
        }
        panic!(
            "no key of {} probes landed on some server: {tags:?}",
            TAG_ROUND * TAG_ROUNDS
        );
    }
}

/// respipe's pool over `servers`: what the `--config` file of [`respipe_toml`] says.
fn spec(servers: &[RedisServer], eject: Option<Eject>) -> Spec {
    let servers = servers.iter().zip(NAMES).map(|(s, name)| Server {
        upstream: Upstream::tcp("127.0.0.1", s.port()),
        name: Some(name.to_owned()),
        weight: 1,
    });
    Spec {
        servers: servers.collect(),
        hash: Hash::Fnv1a64,
        distribution: Distribution::Ketama,
        hash_tag: Some(*b"{}"),
        eject,
    }
}

/// respipe's config file for `servers` (the contract of `--config`: an `[upstream]` table of
/// kind `shards`, as [`spec`] has it). The listen addresses come from flags.
fn respipe_toml(servers: &[RedisServer], eject: Option<Eject>) -> String {
    let mut toml = String::from(
        "[upstream]\nkind = \"shards\"\nhash = \"fnv1a_64\"\ndistribution = \"ketama\"\nhash_tag = \"{}\"\n",
    );
    match eject {
        Some(e) => toml.push_str(&format!(
            "auto_eject_hosts = true\nserver_failure_limit = {}\nserver_retry_timeout = \"{}ms\"\n",
            e.failure_limit,
            e.retry_timeout.as_millis()
        )),
        None => toml.push_str("auto_eject_hosts = false\n"),
    }
    for (s, name) in servers.iter().zip(NAMES) {
        toml.push_str(&format!(
            "\n[[upstream.servers]]\naddress = \"{}\"\nweight = 1\nname = \"{name}\"\n",
            s.addr()
        ));
    }
    toml
}

/// twemproxy's pool for `servers` (listening on `{listen}`, which [`Nutcracker::start`] fills in):
/// the same placement and ejection as [`respipe_toml`].
fn nutcracker_yaml(servers: &[RedisServer], eject: Option<Eject>) -> String {
    let mut yaml = String::from(
        "pool:\n  listen: {listen}\n  redis: true\n  hash: fnv1a_64\n  distribution: ketama\n  hash_tag: \"{}\"\n",
    );
    match eject {
        Some(e) => yaml.push_str(&format!(
            "  auto_eject_hosts: true\n  server_failure_limit: {}\n  server_retry_timeout: {}\n",
            e.failure_limit,
            e.retry_timeout.as_millis()
        )),
        None => yaml.push_str("  auto_eject_hosts: false\n"),
    }
    yaml.push_str("  servers:\n");
    for (s, name) in servers.iter().zip(NAMES) {
        yaml.push_str(&format!("   - {}:1 {name}\n", s.addr()));
    }
    yaml
}
