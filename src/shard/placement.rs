//! Which server a key belongs to, as twemproxy decides it: the `hash_tag`, the distributions
//! (ketama, modula, random) and their rebuild without ejected servers (nutcracker 0.5's
//! `nc_server.c` `server_pool_idx`, `hashkit/nc_ketama.c`, `nc_modula.c`, `nc_random.c`, and
//! `nc_conf.c` `conf_add_server` for the names on the ketama ring).

use md5::{Digest, Md5};

use super::{Distribution, Hash, Server, Spec};
use crate::config::Endpoint;

/// Where the keys of one pool go while a given set of its servers is live. Built when the live set
/// changes (start, an ejection, a server's return); [`Placement::server_for`] is then a lookup
/// without allocation or locks, called for every command routed by key.
#[derive(Debug, Clone)]
pub struct Placement {
    hash: Hash,
    hash_tag: Option<[u8; 2]>,
    map: Map,
}

/// The lookup structure of a [`Distribution`] for the live servers.
#[derive(Debug, Clone)]
enum Map {
    /// No server is live: no key has a place.
    Nowhere,
    /// The pool has exactly one server (live): twemproxy skips hashing.
    One(usize),
    /// ketama's continuum, sorted by value: a key goes to the first point at or after its hash,
    /// wrapping to the first point. Never empty (the heaviest live server has at least 160 points).
    Ketama(Vec<Point>),
    /// modula's servers in ring-name order, each repeated by weight, kept as (end of the server's
    /// run, server): a key goes to the run holding `hash % total weight` (the last end). Never
    /// empty.
    Modula(Vec<(u64, usize)>),
    /// random: the live servers, one picked uniformly per key (twemproxy ignores weights here).
    /// Never empty.
    Random(Vec<usize>),
}

/// One point of the ketama continuum.
#[derive(Debug, Clone, Copy)]
struct Point {
    value: u32,
    /// Index into [`Spec::servers`] (u32 keeps a point at 8 bytes).
    server: u32,
}

impl Placement {
    /// The placement of `spec`'s keys while the servers whose `live` entry is true are in the
    /// pool (ejected servers are left out of the ring, and the ring rebuilt, as twemproxy does).
    ///
    /// # Panics
    /// If `live` does not have one entry per server (a bug in the caller).
    pub fn new(spec: &Spec, live: &[bool]) -> Placement {
        assert_eq!(live.len(), spec.servers.len(), "one live flag per server");
        let mut live_servers: Vec<usize> = (0..live.len()).filter(|&i| live[i]).collect();
        // twemproxy sorts its servers by ring name (shorter first, then bytewise) when it checks
        // the configuration for duplicate names, and builds its rings in that order: modula's
        // slots follow it, whatever the order of the server lines.
        live_servers.sort_by_cached_key(|&i| {
            let name = spec.servers[i].ring_name();
            (name.len(), name)
        });
        let map = if live_servers.is_empty() {
            Map::Nowhere
        } else if spec.servers.len() == 1 {
            Map::One(0)
        } else {
            match spec.distribution {
                Distribution::Ketama => Map::Ketama(continuum(&spec.servers, &live_servers)),
                Distribution::Modula => Map::Modula(
                    live_servers
                        .iter()
                        .scan(0u64, |end, &i| {
                            *end += u64::from(spec.servers[i].weight);
                            Some((*end, i))
                        })
                        .collect(),
                ),
                Distribution::Random => Map::Random(live_servers),
            }
        };
        Placement {
            hash: spec.hash,
            hash_tag: spec.hash_tag,
            map,
        }
    }

    /// The index into [`Spec::servers`] of the server that holds `key`; `None` only when no
    /// server is live. With `random`, a live server picked at random on every call.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        match &self.map {
            Map::Nowhere => None,
            Map::One(server) => Some(*server),
            Map::Ketama(points) => {
                let hash = self.key_hash(key);
                let at = points.partition_point(|p| p.value < hash);
                let point = points.get(at).unwrap_or(&points[0]);
                Some(point.server as usize)
            }
            Map::Modula(runs) => {
                let total = runs.last().map_or(1, |&(end, _)| end);
                let slot = u64::from(self.key_hash(key)) % total;
                let run = runs.partition_point(|&(end, _)| end <= slot);
                Some(runs[run].1)
            }
            Map::Random(servers) => Some(servers[fastrand::usize(..servers.len())]),
        }
    }

    /// The hash twemproxy distributes `key` by: of its hash-tagged part, and 0 for an empty key.
    fn key_hash(&self, key: &[u8]) -> u32 {
        let part = hashed_part(key, self.hash_tag);
        if part.is_empty() {
            0
        } else {
            self.hash.hash(part)
        }
    }
}

impl Server {
    /// The server's name on the ketama ring, as twemproxy derives it from the server line
    /// (`conf_add_server`): the line's name if it has one, else `host:port`, or `host` alone when
    /// the port is 11211 (libmemcached's habit). For a unix socket it is the path followed by a
    /// colon (`/tmp/redis.sock:`): twemproxy takes the path and the `:` before the weight.
    ///
    /// twemproxy formats `<name>-<n>` into an 86-byte buffer and then hashes past its end when
    /// that is longer, so names over about 80 bytes place keys unpredictably there; respipe
    /// hashes the whole text.
    pub fn ring_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match &self.upstream.endpoint {
            Endpoint::Tcp { host, port: 11211 } => host.clone(),
            Endpoint::Tcp { host, port } => format!("{host}:{port}"),
            Endpoint::Unix(path) => format!("{}:", path.display()),
        }
    }
}

/// The part of `key` that is hashed: with a hash tag `[open, close]`, what lies between the first
/// `open` and the first `close` after it, when that is not empty; otherwise the whole key.
fn hashed_part(key: &[u8], hash_tag: Option<[u8; 2]>) -> &[u8] {
    let Some([open, close]) = hash_tag else {
        return key;
    };
    let Some(start) = key.iter().position(|&b| b == open) else {
        return key;
    };
    let inside = &key[start + 1..];
    match inside.iter().position(|&b| b == close) {
        Some(len) if len > 0 => &inside[..len],
        _ => key,
    }
}

/// ketama's continuum over the live servers, in ring-name order (`ketama_update`): each gets a share of
/// `160 × live servers` points by weight, computed in `f32` exactly as twemproxy's C does (the
/// rounding decides point counts), four points per MD5 of `<ring name>-<n>`.
fn continuum(servers: &[Server], live: &[usize]) -> Vec<Point> {
    let total_weight: u32 = live.iter().map(|&i| servers[i].weight).sum();
    let live_count = live.len() as f32;
    let mut points = Vec::new();
    for &i in live {
        let share = servers[i].weight as f32 / total_weight as f32;
        // C: floorf((float)(pct * 160 / 4 * (float)nlive + 0.0000000001)) * 4, in float except
        // the addition, which is in double.
        let quarter = ((f64::from(share * 160.0 / 4.0 * live_count) + 1e-10) as f32).floor();
        let digests = quarter as u32;
        let name = servers[i].ring_name();
        for n in 0..digests {
            let digest = Md5::digest(format!("{name}-{n}").as_bytes());
            for word in digest.chunks_exact(4) {
                points.push(Point {
                    value: u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
                    server: i as u32,
                });
            }
        }
    }
    // Stable, like glibc's qsort (a merge sort) on twemproxy's array: on a tie (rare: 32-bit
    // values) the server earlier in ring-name order comes first.
    points.sort_by_key(|p| p.value);
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;
    use proptest::prelude::*;

    fn server(port: u16, weight: u32, name: Option<&str>) -> Server {
        Server {
            upstream: Upstream::tcp("127.0.0.1", port),
            name: name.map(str::to_owned),
            weight,
        }
    }

    fn spec(servers: Vec<Server>, hash: Hash, distribution: Distribution) -> Spec {
        Spec {
            servers,
            hash,
            distribution,
            hash_tag: Some(*b"{}"),
            eject: None,
        }
    }

    fn four(distribution: Distribution) -> Spec {
        spec(
            (0..4).map(|i| server(7000 + i, 1, None)).collect(),
            Hash::Fnv1a64,
            distribution,
        )
    }

    fn key(n: usize) -> Vec<u8> {
        format!("key:{n}").into_bytes()
    }

    /// Asserts that each key goes to `slots[fnv1a_64(key) % slots.len()]`.
    fn assert_modula_slots(placement: &Placement, slots: &[usize]) {
        for n in 0..500 {
            let k = key(n);
            let slot = Hash::Fnv1a64.hash(&k) as usize % slots.len();
            assert_eq!(placement.server_for(&k), Some(slots[slot]), "key:{n}");
        }
    }

    #[test]
    fn ring_names_follow_twemproxys_server_lines() {
        assert_eq!(server(6379, 1, None).ring_name(), "127.0.0.1:6379");
        assert_eq!(server(11211, 1, None).ring_name(), "127.0.0.1");
        assert_eq!(server(6379, 1, Some("shard-a")).ring_name(), "shard-a");
        let unix = Server {
            upstream: Upstream::unix("/tmp/redis.sock"),
            name: None,
            weight: 1,
        };
        assert_eq!(unix.ring_name(), "/tmp/redis.sock:");
    }

    #[test]
    fn hash_tag_takes_the_first_non_empty_tag() {
        let tag = Some(*b"{}");
        let cases: [(&[u8], &[u8]); 9] = [
            (b"{user1000}.following", b"user1000"),
            (b"x{a}{b}", b"a"),
            (b"{a{b}c}", b"a{b"),
            (b"}a{b}", b"b"),
            (b"{}user", b"{}user"),
            (b"{}{a}", b"{}{a}"),
            (b"{open", b"{open"),
            (b"plain", b"plain"),
            (b"", b""),
        ];
        for (key, part) in cases {
            assert_eq!(hashed_part(key, tag), part, "{}", key.escape_ascii());
        }
        assert_eq!(hashed_part(b"{a}", None), b"{a}");
        assert_eq!(hashed_part(b"x$ab$c", Some(*b"$$")), b"ab");
    }

    #[test]
    fn tagged_keys_share_a_server() {
        for distribution in [Distribution::Ketama, Distribution::Modula] {
            let placement = Placement::new(&four(distribution), &[true; 4]);
            for n in 0..200 {
                let tag = format!("user{n}");
                let a = placement.server_for(format!("{{{tag}}}.name").as_bytes());
                let b = placement.server_for(format!("x{{{tag}}}").as_bytes());
                assert_eq!(a, placement.server_for(tag.as_bytes()));
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn ketama_gives_each_server_its_weighted_share_of_points() {
        let equal = continuum(&four(Distribution::Ketama).servers, &[0, 1, 2, 3]);
        assert_eq!(equal.len(), 4 * 160);
        assert!(equal.windows(2).all(|w| w[0].value <= w[1].value));
        let weighted: Vec<Server> = [1, 2, 3].iter().map(|&w| server(7000, w, None)).collect();
        let points = continuum(&weighted, &[0, 1, 2]);
        let count = |s: u32| points.iter().filter(|p| p.server == s).count();
        // 160 × 3 points shared 1:2:3, rounded down to multiples of 4 in f32.
        assert_eq!((count(0), count(1), count(2)), (80, 160, 240));
    }

    #[test]
    fn modula_repeats_servers_by_weight() {
        let mut s = four(Distribution::Modula);
        s.servers[1].weight = 3;
        s.hash_tag = None;
        // Total weight 6: slots 0 | 1 2 3 | 4 | 5.
        assert_modula_slots(&Placement::new(&s, &[true; 4]), &[0, 1, 1, 1, 2, 3]);
    }

    #[test]
    fn modula_orders_servers_by_ring_name_as_twemproxy_sorts_them() {
        let mut s = four(Distribution::Modula);
        s.hash_tag = None;
        s.servers[0].name = Some("zz".into());
        s.servers[2].name = Some("a".into());
        // "a" (server 2), "zz" (0), then "127.0.0.1:7001" (1) and "127.0.0.1:7003" (3).
        assert_modula_slots(&Placement::new(&s, &[true; 4]), &[2, 0, 1, 3]);
    }

    #[test]
    fn empty_key_hashes_to_zero() {
        let placement = Placement::new(&four(Distribution::Modula), &[true; 4]);
        assert_eq!(placement.server_for(b""), Some(0));
    }

    #[test]
    fn a_single_server_takes_every_key_until_it_is_ejected() {
        let s = spec(vec![server(7000, 5, None)], Hash::Md5, Distribution::Ketama);
        let placement = Placement::new(&s, &[true]);
        assert!((0..100).all(|n| placement.server_for(&key(n)) == Some(0)));
        assert_eq!(Placement::new(&s, &[false]).server_for(b"k"), None);
    }

    #[test]
    fn no_live_server_means_no_place() {
        for (_, distribution) in Distribution::ALL {
            let placement = Placement::new(&four(distribution), &[false; 4]);
            assert_eq!(placement.server_for(b"k"), None);
        }
    }

    #[test]
    fn ketama_moves_only_the_ejected_servers_keys() {
        let s = four(Distribution::Ketama);
        let all = Placement::new(&s, &[true; 4]);
        let without_2 = Placement::new(&s, &[true, true, false, true]);
        let mut moved = 0;
        for n in 0..2000 {
            let (before, after) = (all.server_for(&key(n)), without_2.server_for(&key(n)));
            assert_ne!(after, Some(2));
            if before != Some(2) {
                // Equal weights keep 160 points per server whatever the live count.
                assert_eq!(before, after);
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn random_picks_every_live_server_and_only_those() {
        let placement = Placement::new(&four(Distribution::Random), &[true, false, true, true]);
        let mut seen = [0usize; 4];
        for _ in 0..1000 {
            seen[placement.server_for(b"same key").unwrap()] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 0 && seen[2] > 0 && seen[3] > 0, "{seen:?}");
    }

    #[test]
    fn placement_is_shareable_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Placement>();
    }

    #[test]
    fn fnv1a_64_places_keys_that_differ_in_their_last_bytes_in_clumps() {
        // twemproxy's fnv1a_64 keeps 32 bits and multiplies by 0x1b3: `three:0` to `three:299`
        // fall in four clumps (10, 90, 100 and 100 keys), and on these three servers (the ports of
        // a failed run of tests/reload.rs, which once wrote such keys expecting every server to
        // get some) one server gets none. nutcracker 0.5 puts them on the same servers.
        let servers = [43939, 33943, 33559].map(|port| server(port, 1, None));
        let counts = |hash| {
            let s = spec(servers.to_vec(), hash, Distribution::Ketama);
            let placement = Placement::new(&s, &[true; 3]);
            let mut counts = [0; 3];
            for n in 0..300 {
                counts[placement
                    .server_for(format!("three:{n}").as_bytes())
                    .unwrap()] += 1;
            }
            counts
        };
        assert_eq!(counts(Hash::Fnv1a64), [90, 210, 0]);
        assert!(counts(Hash::Md5).iter().all(|&n| n > 0));
    }

    proptest! {
        #[test]
        fn every_key_lands_on_a_live_server(
            weights in prop::collection::vec(1u32..100, 1..6),
            live_bits in any::<u8>(),
            hash in 0..Hash::ALL.len(),
            distribution in 0..Distribution::ALL.len(),
            keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..20),
        ) {
            let servers: Vec<Server> = weights
                .iter()
                .enumerate()
                .map(|(i, &w)| server(7000 + i as u16, w, None))
                .collect();
            let live: Vec<bool> = (0..servers.len()).map(|i| live_bits & (1 << i) != 0).collect();
            let s = spec(servers, Hash::ALL[hash].1, Distribution::ALL[distribution].1);
            let placement = Placement::new(&s, &live);
            for k in &keys {
                match placement.server_for(k) {
                    Some(i) => prop_assert!(live[i], "server {i} is not live: {live:?}"),
                    None => prop_assert!(!live.contains(&true)),
                }
            }
        }

        #[test]
        fn ketama_point_counts_add_up(weights in prop::collection::vec(1u32..1000, 1..8)) {
            let servers: Vec<Server> = weights.iter().map(|&w| server(7000, w, None)).collect();
            let live: Vec<usize> = (0..servers.len()).collect();
            let points = continuum(&servers, &live);
            // Rounding down loses at most 4 points per server.
            let full = 160 * servers.len();
            prop_assert!(points.len() <= full && points.len() + 4 * servers.len() >= full);
        }
    }
}
