//! Client-side sharding across independent Redis servers, compatible key for key with twemproxy
//! (nutcracker): the same hash functions, `hash_tag`, distributions and ejection, so a twemproxy pool
//! can move behind respipe without moving data (TOPOLOGY.md section 2).
//!
//! This module is pure logic: which server a key belongs to. Connections, routing of commands and
//! merging of split replies live elsewhere (`pool`, `route`).

use std::time::Duration;

use crate::config::Upstream;

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
    /// In configuration order (modula and server names depend on it). At least one.
    pub servers: Vec<Server>,
    pub hash: Hash,
    pub distribution: Distribution,
    /// Two bytes, e.g. `{}`: only the part of a key between the first `tag[0]` and the next `tag[1]`
    /// is hashed, when that part is not empty.
    pub hash_tag: Option<[u8; 2]>,
    /// `None`: servers are never ejected (twemproxy's default).
    pub eject: Option<Eject>,
}
