//! Client-side sharding across independent Redis servers, compatible key for key with twemproxy
//! (nutcracker): the same hash functions, `hash_tag`, distributions and ejection, so a twemproxy pool
//! can move behind respipe without moving data (TOPOLOGY.md section 2).
//!
//! This module is pure logic: which server a key belongs to. Connections, routing of commands and
//! merging of split replies live elsewhere (`pool`, `route`).

mod hash;
mod placement;

use std::time::Duration;

use crate::config::Upstream;

pub use placement::Placement;

/// A hash function of twemproxy's `hash:` setting; every one returns 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hash {
    OneAtATime,
    Md5,
    Crc16,
    /// twemproxy's `crc32` (known to differ from the standard one; kept for compatibility).
    Crc32,
    Crc32a,
    Fnv1_64,
    /// twemproxy's default; not FNV-1a-64 as specified (see TOPOLOGY.md section 2).
    #[default]
    Fnv1a64,
    Fnv1_32,
    Fnv1a32,
    Hsieh,
    Murmur,
    Jenkins,
}

/// How keys map to servers (twemproxy's `distribution:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distribution {
    /// Consistent hashing on a ring of 160 points per server (weighted).
    #[default]
    Ketama,
    /// `hash % total_weight` over the servers repeated by weight.
    Modula,
    /// A random server for every command.
    Random,
}

/// One server of a sharded upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Where it is (the same forms as `--upstream`; db, credentials and TLS are the pool's).
    pub upstream: Upstream,
    /// The name twemproxy's server line gives it (`host:port:weight name`); `None`: the ring uses
    /// `host:port` (`host` alone when the port is 11211), as twemproxy does.
    pub name: Option<String>,
    /// Relative share of the keys; at least 1.
    pub weight: u32,
}

/// Ejection of failing servers (twemproxy's `auto_eject_hosts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eject {
    /// Consecutive failures (connect failures, lost connections) before a server is ejected
    /// (`server_failure_limit`, default 2).
    pub failure_limit: u32,
    /// How long an ejected server stays out before it is tried again (`server_retry_timeout`,
    /// default 30 s).
    pub retry_timeout: Duration,
}

/// A sharded upstream: the servers and how keys are placed on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// In configuration order, which [`Placement::server_for`] indexes. At least one. (Placement
    /// itself, like twemproxy, orders servers by ring name: see [`Server::ring_name`].)
    pub servers: Vec<Server>,
    pub hash: Hash,
    pub distribution: Distribution,
    /// Two bytes, e.g. `{}`: only the part of a key between the first `tag[0]` and the next `tag[1]`
    /// is hashed, when that part is not empty.
    pub hash_tag: Option<[u8; 2]>,
    /// `None`: servers are never ejected (twemproxy's default).
    pub eject: Option<Eject>,
}

impl Hash {
    /// Every hash by its twemproxy name.
    pub const ALL: [(&'static str, Hash); 12] = [
        ("one_at_a_time", Hash::OneAtATime),
        ("md5", Hash::Md5),
        ("crc16", Hash::Crc16),
        ("crc32", Hash::Crc32),
        ("crc32a", Hash::Crc32a),
        ("fnv1_64", Hash::Fnv1_64),
        ("fnv1a_64", Hash::Fnv1a64),
        ("fnv1_32", Hash::Fnv1_32),
        ("fnv1a_32", Hash::Fnv1a32),
        ("hsieh", Hash::Hsieh),
        ("murmur", Hash::Murmur),
        ("jenkins", Hash::Jenkins),
    ];
}

impl Distribution {
    /// Every distribution by its twemproxy name.
    pub const ALL: [(&'static str, Distribution); 3] = [
        ("ketama", Distribution::Ketama),
        ("modula", Distribution::Modula),
        ("random", Distribution::Random),
    ];
}

/// Looks `name` up in a table of twemproxy names; the error lists the valid ones.
fn by_name<T: Copy>(table: &[(&'static str, T)], name: &str) -> Result<T, String> {
    table
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!("unknown {name:?}; expected one of {}", names.join(", "))
        })
}

impl std::str::FromStr for Hash {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        by_name(&Hash::ALL, name)
    }
}

impl std::str::FromStr for Distribution {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        by_name(&Distribution::ALL, name)
    }
}
