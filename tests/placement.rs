//! Golden placement: keys written through a real nutcracker (twemproxy 0.5) land on the backend
//! that respipe's `shard::Placement` names for them — every hash, ketama and modula, weights,
//! server names, hash tags, unix-socket servers and a pool with an ejected server — and `random`
//! spreads keys over the live servers as twemproxy's does. Each configuration sends 10,000 keys
//! (bytes >= 0x80 and hash tags among them) and asks every backend directly which keys it holds;
//! then respipe, configured from the very YAML nutcracker ran (`--twemproxy`), reads every key
//! back with the value nutcracker wrote.

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::nutcracker::Nutcracker;
use common::{
    bounded, encode, free_port, poll_until, Proxy, RawClient, RedisServer, Reply, START_DEADLINE,
};
use respipe::config::{Topology, Upstream};
use respipe::shard::{Distribution, Eject, Hash, Placement, Server, Spec};
use respipe::Config;

/// Bound of each test (each runs well under it).
const LIMIT: Duration = Duration::from_secs(60);
/// Keys per configuration.
const KEYS: usize = 10_000;
/// Commands written per round trip when pipelining.
const PIPELINE: usize = 1_000;

#[tokio::test]
async fn ketama_and_modula_place_every_key_where_nutcracker_does() {
    bounded(LIMIT, "golden placement", async {
        let backends = Backends::start(4).await;
        let keys = keys();
        let both = [Distribution::Modula, Distribution::Ketama];
        // Weights 1:2:3:1; two servers named, two known by host:port on the ring: every hash.
        let lines = [(1, None), (2, Some("beta")), (3, None), (1, Some("delta"))];
        let mut pools: Vec<Pool> = both
            .iter()
            .flat_map(|&d| Hash::ALL.map(|(_, h)| backends.pool(&lines, Transport::Tcp, h, d)))
            .collect();
        // The most common pool: twemproxy's defaults, equal weights, no names.
        let plain = [(1, None); 4];
        pools.push(backends.pool(&plain, Transport::Tcp, Hash::Fnv1a64, Distribution::Ketama));
        // Unix sockets: the ring name is the path followed by a colon.
        let unnamed = [(1, None), (2, None), (3, None), (1, None)];
        pools.extend(both.map(|d| backends.pool(&unnamed, Transport::Unix, Hash::Murmur, d)));
        for pool in &pools {
            assert_same_placement(&backends, pool, &keys).await;
        }
        let n = pools.len();
        eprintln!("golden placement: {n} pools x {KEYS} keys, every key where nutcracker put it");
    })
    .await;
}

#[tokio::test]
async fn an_ejected_server_is_left_out_of_the_ring_as_nutcracker_leaves_it_out() {
    bounded(LIMIT, "golden placement with an ejected server", async {
        let backends = Backends::start(3).await;
        let keys = keys();
        for distribution in [Distribution::Modula, Distribution::Ketama] {
            let mut pool = backends.pool(
                &[(2, None), (3, Some("third")), (1, None)],
                Transport::Tcp,
                Hash::Fnv1a64,
                distribution,
            );
            // Server 1 points at a port nothing listens on; its first failure ejects it.
            let dead = free_port();
            pool.spec
                .servers
                .insert(1, tcp_server(dead, 1, Some("gone")));
            pool.servers.insert(1, None);
            pool.spec.eject = Some(Eject {
                failure_limit: 1,
                retry_timeout: Duration::from_secs(600),
            });
            let nutcracker = Nutcracker::start(&pool.yaml()).await;
            let doomed = eject_dead_server(&nutcracker, &pool).await;
            let placement = Placement::new(&pool.spec, &[true, false, true, true]);
            backends.flush().await;
            set_all(nutcracker.addr, &keys).await;
            let per_backend = backends.assert_placed(&keys, &pool, &placement).await;
            assert!(per_backend.iter().all(|&n| n > 0), "{per_backend:?}");
            // respipe ejects the dead server too (its first failed connection), after which the
            // dead server's key lives where nutcracker put it, and so does every other key.
            let respipe = respipe_like(&nutcracker, &pool.spec).await;
            let (addr, want) = (respipe.addr(), Reply::bulk(value_of(&doomed)));
            poll_until(START_DEADLINE, "respipe ejects the dead server", || {
                let (doomed, want) = (&doomed, &want);
                async move {
                    let mut c = RawClient::connect(addr).await;
                    let reply = c.cmd(&[b"GET".as_slice(), doomed]).await;
                    (reply == *want).then_some(())
                }
            })
            .await;
            assert_values_through(addr, &keys).await;
            respipe.shutdown().await;
            eprintln!("ejection ({distribution:?}): {KEYS} keys placed as nutcracker placed them");
        }
    })
    .await;
}

#[tokio::test]
async fn random_spreads_keys_evenly_over_the_servers_ignoring_weights_as_nutcracker_does() {
    bounded(LIMIT, "random distribution", async {
        let backends = Backends::start(4).await;
        let keys = keys();
        let lines = [(1, None), (2, Some("beta")), (3, None), (1, Some("delta"))];
        let pool = backends.pool(&lines, Transport::Tcp, Hash::Fnv1a64, Distribution::Random);
        let nutcracker = Nutcracker::start(&pool.yaml()).await;
        backends.flush().await;
        set_all(nutcracker.addr, &keys).await;
        let holders = backends.holders().await;
        let mut theirs = [0usize; 4];
        for k in &keys {
            theirs[holders[k]] += 1;
        }
        let placement = Placement::new(&pool.spec, &[true; 4]);
        let mut ours = [0usize; 4];
        for k in &keys {
            ours[placement.server_for(k).expect("a live server")] += 1;
        }
        // Uniform over 4 servers: 2,500 each, standard deviation about 43.
        for counts in [theirs, ours] {
            assert!(
                counts.iter().all(|&n| (2_000..=3_000).contains(&n)),
                "{theirs:?} {ours:?}"
            );
        }
    })
    .await;
}

/// Writes every key through a nutcracker running `pool`, asserts each key sits on exactly the
/// backend [`Placement`] names (all servers live), and that respipe running the same YAML reads
/// every key back.
async fn assert_same_placement(backends: &Backends, pool: &Pool, keys: &[Vec<u8>]) {
    let nutcracker = Nutcracker::start(&pool.yaml()).await;
    backends.flush().await;
    set_all(nutcracker.addr, keys).await;
    let placement = Placement::new(&pool.spec, &vec![true; pool.spec.servers.len()]);
    let per_backend = backends.assert_placed(keys, pool, &placement).await;
    let spec = &pool.spec;
    if (spec.distribution, spec.hash) == (Distribution::Ketama, Hash::Crc32) {
        // crc32 is 15 bits and the ring's points 32: every key goes to the first point, as in
        // twemproxy (a pool to avoid, placed faithfully).
        assert_eq!(
            per_backend.iter().filter(|&&n| n > 0).count(),
            1,
            "{per_backend:?}"
        );
    } else {
        // Every backend took keys, so the comparison was not vacuous.
        assert!(per_backend.iter().all(|&n| n > 0), "{per_backend:?}");
    }
    // respipe sharding the same servers finds every key where nutcracker put it.
    let respipe = respipe_like(&nutcracker, spec).await;
    assert_values_through(respipe.addr(), keys).await;
    respipe.shutdown().await;
}

/// respipe in sharded mode, configured from the very YAML file `nutcracker` runs
/// (`--twemproxy`), which must convert to `spec`; answering PING.
async fn respipe_like(nutcracker: &Nutcracker, spec: &Spec) -> Proxy {
    let args = [
        OsString::from("respipe"),
        "--twemproxy".into(),
        nutcracker.conf.clone().into(),
    ];
    let loaded = Config::load_from(args, &|_| None).expect("respipe loads nutcracker's YAML");
    assert_eq!(
        loaded.topology,
        Topology::Shards(spec.clone()),
        "the YAML's pool"
    );
    let respipe = Proxy::start(0, |config| *config = loaded).await;
    respipe.wait_ready().await;
    respipe
}

/// GETs every key through the proxy at `addr` (pipelined) and asserts it holds the value
/// [`set_all`] wrote.
async fn assert_values_through(addr: SocketAddr, keys: &[Vec<u8>]) {
    let get = |k: &[u8]| encode(&[b"GET".as_slice(), k]);
    round_trip_all(addr, keys, get, |k| Reply::bulk(value_of(k))).await;
}

/// Makes the dead server (index 1) fail once, which ejects it: a SET of a key that the full ring
/// places there gets an error, and nutcracker rebuilds the ring without the server. Returns that
/// key, written by [`set_all`] too (it is one of [`keys`]).
async fn eject_dead_server(nutcracker: &Nutcracker, pool: &Pool) -> Vec<u8> {
    let full = Placement::new(&pool.spec, &[true; 4]);
    let doomed = keys()
        .into_iter()
        .find(|k| full.server_for(k) == Some(1))
        .expect("some key maps to server 1");
    let mut c = RawClient::connect(nutcracker.addr).await;
    let reply = c.cmd(&[b"SET".as_slice(), &doomed, b"x"]).await;
    assert!(
        matches!(reply, Reply::Error(_)),
        "SET on the dead server: {reply:?}"
    );
    doomed
}

/// SETs every key to [`value_of`] it through the proxy at `addr`, pipelined, and checks every OK.
async fn set_all(addr: SocketAddr, keys: &[Vec<u8>]) {
    let set = |k: &[u8]| encode(&[b"SET".as_slice(), k, &value_of(k)]);
    round_trip_all(addr, keys, set, |_| Reply::ok()).await;
}

/// Sends `request(key)` for every key through the proxy at `addr`, [`PIPELINE`] at a time, and
/// asserts that each reply is `expected(key)`.
async fn round_trip_all(
    addr: SocketAddr,
    keys: &[Vec<u8>],
    request: impl Fn(&[u8]) -> Vec<u8>,
    expected: impl Fn(&[u8]) -> Reply,
) {
    let mut c = RawClient::connect(addr).await;
    for chunk in keys.chunks(PIPELINE) {
        let batch: Vec<u8> = chunk.iter().flat_map(|k| request(k)).collect();
        c.send(&batch).await;
        for (k, reply) in chunk.iter().zip(c.read_replies(chunk.len()).await) {
            assert_eq!(
                reply,
                expected(k),
                "{}",
                String::from_utf8_lossy(&request(k)).escape_debug()
            );
        }
    }
}

/// The value written for `key`: distinct per key, so a wrong key's value is caught.
fn value_of(key: &[u8]) -> Vec<u8> {
    [b"v:".as_slice(), key].concat()
}

/// [`KEYS`] distinct keys: plain ASCII, hash-tagged (many keys per tag, empty and unclosed tags),
/// bytes >= 0x80 (where twemproxy sign-extends), and pseudo-random binary of every length to 40.
fn keys() -> Vec<Vec<u8>> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..KEYS)
        .map(|i| match i % 6 {
            0 => format!("key:{i}").into_bytes(),
            1 => format!("{{user{}}}.field{i}", i / 12).into_bytes(),
            2 => format!("{}{{}}{i}", ["a", "{", "}", "{x"][i / 6 % 4]).into_bytes(),
            3 => [&[0xff, 0x80 | i as u8][..], format!(":{i}").as_bytes()].concat(),
            4 => format!("caf\u{e9}:{{\u{fc}ser{}}}:{i}", i / 24).into_bytes(),
            _ => {
                let len = (next() % 40) as usize;
                let mut k: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                k.extend_from_slice(format!("#{i}").as_bytes());
                k
            }
        })
        .collect()
}

/// How nutcracker reaches the backends.
#[derive(Clone, Copy)]
enum Transport {
    Tcp,
    Unix,
}

/// Redis servers for one test, each also listening on a unix socket; killed on drop.
struct Backends {
    servers: Vec<RedisServer>,
    /// Holds the sockets.
    dir: tempfile::TempDir,
}

/// One pool: the respipe spec and, per server, the backend that holds its keys (`None`: dead).
struct Pool {
    spec: Spec,
    servers: Vec<Option<usize>>,
}

impl Backends {
    async fn start(n: usize) -> Backends {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut servers = Vec::new();
        for i in 0..n {
            let socket = Backends::socket_in(dir.path(), i);
            let socket = socket.to_str().expect("utf-8 temp path");
            servers.push(RedisServer::start_with(&["--unixsocket", socket]).await);
        }
        Backends { servers, dir }
    }

    fn socket_in(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("redis{i}.sock"))
    }

    /// A pool of the backends in order, one per `(weight, name)` line.
    fn pool(
        &self,
        lines: &[(u32, Option<&str>)],
        transport: Transport,
        hash: Hash,
        distribution: Distribution,
    ) -> Pool {
        let servers = lines
            .iter()
            .enumerate()
            .map(|(i, &(weight, name))| match transport {
                Transport::Tcp => tcp_server(self.servers[i].port(), weight, name),
                Transport::Unix => Server {
                    upstream: Upstream::unix(Backends::socket_in(self.dir.path(), i)),
                    name: name.map(str::to_owned),
                    weight,
                },
            })
            .collect();
        Pool {
            spec: Spec {
                servers,
                hash,
                distribution,
                hash_tag: Some(*b"{}"),
                eject: None,
            },
            servers: (0..lines.len()).map(Some).collect(),
        }
    }

    async fn flush(&self) {
        for s in &self.servers {
            assert_eq!(s.direct().await.cmd(&["FLUSHALL"]).await, Reply::ok());
        }
    }

    /// Which backend holds each key, asked of every backend directly (a key on two is a failure).
    async fn holders(&self) -> HashMap<Vec<u8>, usize> {
        let mut holders = HashMap::new();
        for (i, s) in self.servers.iter().enumerate() {
            let Reply::Array(Some(keys)) = s.direct().await.cmd(&["KEYS", "*"]).await else {
                panic!("KEYS * on backend {i}");
            };
            for k in keys {
                let Reply::Bulk(Some(k)) = k else {
                    panic!("KEYS * on backend {i}: {k:?}")
                };
                if let Some(other) = holders.insert(k.clone(), i) {
                    panic!("{} on backends {other} and {i}", k.escape_ascii());
                }
            }
        }
        holders
    }

    /// Asserts that each key is held by the backend of the server `placement` names for it;
    /// returns how many keys each backend holds.
    async fn assert_placed(
        &self,
        keys: &[Vec<u8>],
        pool: &Pool,
        placement: &Placement,
    ) -> Vec<usize> {
        let holders = self.holders().await;
        assert_eq!(holders.len(), keys.len(), "every key written once");
        let mut per_backend = vec![0usize; self.servers.len()];
        let mut wrong = Vec::new();
        for k in keys {
            let theirs = holders[k];
            per_backend[theirs] += 1;
            let ours = placement.server_for(k).and_then(|s| pool.servers[s]);
            if ours != Some(theirs) {
                wrong.push(format!(
                    "{} -> {ours:?}, nutcracker: {theirs}",
                    k.escape_ascii()
                ));
            }
        }
        let spec = &pool.spec;
        assert!(
            wrong.is_empty(),
            "{} of {} keys placed unlike nutcracker ({:?} {:?}), e.g. {:?}",
            wrong.len(),
            keys.len(),
            spec.distribution,
            spec.hash,
            &wrong[..wrong.len().min(5)]
        );
        per_backend
    }
}

impl Pool {
    /// The equivalent nutcracker pool, listening on `{listen}`.
    fn yaml(&self) -> String {
        let spec = &self.spec;
        let mut yaml = format!(
            "golden:\n  listen: \"{{listen}}\"\n  redis: true\n  timeout: 5000\n  hash: {}\n  distribution: {}\n  hash_tag: \"{{}}\"\n",
            twemproxy_name(&Hash::ALL, spec.hash),
            twemproxy_name(&Distribution::ALL, spec.distribution),
        );
        if let Some(eject) = spec.eject {
            yaml.push_str(&format!(
                "  auto_eject_hosts: true\n  server_failure_limit: {}\n  server_retry_timeout: {}\n",
                eject.failure_limit,
                eject.retry_timeout.as_millis()
            ));
        }
        yaml.push_str("  servers:\n");
        for s in &spec.servers {
            let address = match &s.upstream.endpoint {
                respipe::config::Endpoint::Tcp { host, port } => format!("{host}:{port}"),
                respipe::config::Endpoint::Unix(path) => path.display().to_string(),
            };
            let name = s
                .name
                .as_deref()
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            yaml.push_str(&format!("   - {address}:{}{name}\n", s.weight));
        }
        yaml
    }
}

/// The name twemproxy's configuration gives `value`.
fn twemproxy_name<T: PartialEq>(table: &[(&'static str, T)], value: T) -> &'static str {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .expect("every value has a name")
        .0
}

fn tcp_server(port: u16, weight: u32, name: Option<&str>) -> Server {
    Server {
        upstream: Upstream::tcp("127.0.0.1", port),
        name: name.map(str::to_owned),
        weight,
    }
}
