//! The commands a replica may answer for the primary (`read_from`): those Redis flags `readonly`
//! in `COMMAND`, but the few whose point is an effect on the primary ([`NOT_ON_REPLICAS`]).
//! Scripts only in their read-only forms (`EVAL_RO`, `EVALSHA_RO`, `FCALL_RO`): Redis refuses a
//! write in them, so they cannot write wherever they run. A test walks a real server's `COMMAND`
//! reply and fails when the tables and Redis's flags disagree. [`may_write`] says which commands
//! restart a session's read-your-writes window.

use super::{cmp_lower, Args};

/// Every command Redis flags `readonly`, by lower-case name, sorted (binary search): up to Redis
/// 7.0 from its `COMMAND` reply, plus the hash field expiry reads of 7.4 (`HTTL`...) from their
/// specs. Containers are in [`SUBCOMMAND_READS`]. `XREAD` is a read only without `BLOCK` (with it,
/// it needs a dedicated connection and never comes here).
#[rustfmt::skip]
pub const READS: &[&str] = &[
    "bitcount", "bitfield_ro", "bitpos", "dbsize", "dump", "eval_ro", "evalsha_ro", "exists",
    "expiretime", "fcall_ro", "geodist", "geohash", "geopos", "georadius_ro",
    "georadiusbymember_ro", "geosearch", "get", "getbit", "getrange", "hexists", "hexpiretime",
    "hget", "hgetall", "hkeys", "hlen", "hmget", "hpexpiretime", "hpttl", "hrandfield", "hscan",
    "hstrlen", "httl", "hvals", "keys", "lcs", "lindex", "llen", "lolwut", "lpos", "lrange", "mget",
    "pexpiretime", "pfcount", "pttl", "randomkey", "scan", "scard", "sdiff", "sinter",
    "sintercard", "sismember", "smembers", "smismember", "sort_ro", "srandmember", "sscan",
    "strlen", "substr", "sunion", "ttl", "type", "xlen", "xpending", "xrange", "xread",
    "xrevrange", "zcard", "zcount", "zdiff", "zinter", "zintercard", "zlexcount", "zmscore",
    "zrandmember", "zrange", "zrangebylex", "zrangebyscore", "zrank", "zrevrange",
    "zrevrangebylex", "zrevrangebyscore", "zrevrank", "zscan", "zscore", "zunion",
];

/// Every subcommand Redis flags `readonly`, by lower-case container and name, sorted.
#[rustfmt::skip]
pub const SUBCOMMAND_READS: &[(&str, &str)] = &[
    ("memory", "usage"), ("object", "encoding"), ("object", "refcount"), ("xinfo", "consumers"),
    ("xinfo", "groups"), ("xinfo", "stream"),
];

/// Commands Redis flags `readonly` that never go to a replica, and why: what they do or tell is
/// the access history of a key, which a replica keeps for its own reads, not the primary's.
pub const NOT_ON_REPLICAS: &[(&str, &str)] = &[
    (
        "touch",
        "sets the keys' access time, which must be the primary's",
    ),
    ("object|freq", "the key's access frequency on the primary"),
    ("object|idletime", "the key's idle time on the primary"),
];

/// Every command Redis flags `write`, by lower-case name, sorted: up to Redis 7.0 from its
/// `COMMAND` reply, plus the writes added since (hash field expiry, `HGETDEL`, `HGETEX`, `HSETEX`,
/// `MSETEX`, `DELEX`, `XACKDEL`, `XDELEX`, vector sets) from their specs. With
/// [`SCRIPT_WRITES`] and [`SUBCOMMAND_WRITES`], what restarts a session's read-your-writes window.
#[rustfmt::skip]
pub const WRITES: &[&str] = &[
    "append", "bitfield", "bitop", "blmove", "blmpop", "blpop", "brpop", "brpoplpush", "bzmpop",
    "bzpopmax", "bzpopmin", "copy", "decr", "decrby", "del", "delex", "expire", "expireat",
    "flushall", "flushdb", "geoadd", "georadius", "georadiusbymember", "geosearchstore", "getdel",
    "getex", "getset", "hdel", "hexpire", "hexpireat", "hgetdel", "hgetex", "hincrby",
    "hincrbyfloat", "hmset", "hpersist", "hpexpire", "hpexpireat", "hset", "hsetex", "hsetnx",
    "incr", "incrby", "incrbyfloat", "linsert", "lmove", "lmpop", "lpop", "lpush", "lpushx", "lrem",
    "lset", "ltrim", "migrate", "move", "mset", "msetex", "msetnx", "persist", "pexpire",
    "pexpireat", "pfadd", "pfdebug", "pfmerge", "psetex", "rename", "renamenx", "restore",
    "restore-asking", "rpop", "rpoplpush", "rpush", "rpushx", "sadd", "sdiffstore", "set", "setbit",
    "setex", "setnx", "setrange", "sinterstore", "smove", "sort", "spop", "srem", "sunionstore",
    "swapdb", "unlink", "vadd", "vrem", "vsetattr", "xack", "xackdel", "xadd", "xautoclaim",
    "xclaim", "xdel", "xdelex", "xreadgroup", "xsetid", "xtrim", "zadd", "zdiffstore", "zincrby",
    "zinterstore", "zmpop", "zpopmax", "zpopmin", "zrangestore", "zrem", "zremrangebylex",
    "zremrangebyrank", "zremrangebyscore", "zunionstore",
];

/// Scripts that may write (Redis flags them by what the script declares, not `write`).
pub const SCRIPT_WRITES: &[&str] = &["eval", "evalsha", "fcall"];

/// Every subcommand Redis flags `write`, by lower-case container and name, sorted.
#[rustfmt::skip]
pub const SUBCOMMAND_WRITES: &[(&str, &str)] = &[
    ("function", "delete"), ("function", "flush"), ("function", "load"), ("function", "restore"),
    ("xgroup", "create"), ("xgroup", "createconsumer"), ("xgroup", "delconsumer"),
    ("xgroup", "destroy"), ("xgroup", "setid"),
];

/// True when `name` (with `args`) may write: a command or subcommand Redis flags `write`, a
/// script that may write, or a command respipe's table does not know (a module's: it may).
/// `PING`, `INFO`, `CLIENT SETNAME`... do not, so they leave a session's reads on replicas.
pub fn may_write(name: &[u8], args: Args<'_>) -> bool {
    let listed = |table: &[&str]| {
        table
            .binary_search_by(|n| cmp_lower(n.as_bytes(), name))
            .is_ok()
    };
    listed(WRITES)
        || listed(SCRIPT_WRITES)
        || in_container(SUBCOMMAND_WRITES, name, args)
        || super::class(name, None).is_none()
}

/// True when `name` (with its arguments `args`, the name first) is a command a replica may
/// answer ([`READS`], [`SUBCOMMAND_READS`]), in any case.
pub fn is_read(name: &[u8], args: Args<'_>) -> bool {
    READS
        .binary_search_by(|n| cmp_lower(n.as_bytes(), name))
        .is_ok()
        || in_container(SUBCOMMAND_READS, name, args)
}

/// True when `name` is a container of `table` and its subcommand (`args`' second) is listed.
fn in_container(table: &[(&str, &str)], name: &[u8], args: Args<'_>) -> bool {
    if !table
        .iter()
        .any(|(container, _)| container.as_bytes().eq_ignore_ascii_case(name))
    {
        return false;
    }
    let Some(sub) = args.get(1) else {
        return false;
    };
    table
        .binary_search_by(|(n, s)| {
            cmp_lower(n.as_bytes(), name).then_with(|| cmp_lower(s.as_bytes(), sub))
        })
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{class, Class};

    fn words(words: &[&str]) -> bool {
        let args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        is_read(&args[0], Args::Inline(&args))
    }

    #[test]
    fn tables_are_sorted_and_every_read_is_forwarded_with_one_reply() {
        assert!(READS.windows(2).all(|w| w[0] < w[1]));
        assert!(SUBCOMMAND_READS.windows(2).all(|w| w[0] < w[1]));
        for name in READS {
            // `XREAD` is leased with `BLOCK` only (`classify`); without it, it is plain.
            let want = if *name == "xread" {
                Class::Lease
            } else {
                Class::One
            };
            assert_eq!(class(name.as_bytes(), None), Some(want), "{name}");
        }
        for (container, sub) in SUBCOMMAND_READS {
            let found = class(container.as_bytes(), Some(sub.as_bytes()));
            assert_eq!(found, Some(Class::One), "{container} {sub}");
        }
    }

    #[test]
    fn writes_scripts_and_unknown_commands_may_write_and_nothing_else() {
        assert!(WRITES.windows(2).all(|w| w[0] < w[1]));
        assert!(SUBCOMMAND_WRITES.windows(2).all(|w| w[0] < w[1]));
        let may = |words: &[&str]| {
            let args: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            may_write(&args[0], Args::Inline(&args))
        };
        for write in [
            &["SET", "k", "v"][..],
            &["incr", "k"],
            &["EVAL", "return 1", "0"],
            &["FCALL", "f", "0"],
            &["XGROUP", "CREATE", "s", "g", "$"],
            &["BLPOP", "l", "0"],
            &["MODULECMD.X", "k"],
        ] {
            assert!(may(write), "{write:?}");
        }
        for other in [
            &["GET", "k"][..],
            &["PING"],
            &["ECHO", "x"],
            &["INFO"],
            &["CLIENT", "SETNAME", "x"],
            &["XGROUP", "HELP"],
            &["EVAL_RO", "return 1", "0"],
        ] {
            assert!(!may(other), "{other:?}");
        }
    }

    #[test]
    fn reads_in_any_case_and_never_writes_or_read_write_scripts() {
        for read in [
            &["GET", "k"][..],
            &["get", "k"],
            &["MGet", "a", "b"],
            &["EVAL_RO", "return 1", "0"],
            &["evalsha_ro", "abc", "0"],
            &["FCALL_RO", "f", "0"],
            &["OBJECT", "encoding", "k"],
            &["xinfo", "STREAM", "s"],
            &["XREAD", "STREAMS", "s", "0"],
        ] {
            assert!(words(read), "{read:?}");
        }
        for other in [
            &["SET", "k", "v"][..],
            &["EVAL", "return 1", "0"],
            &["EVALSHA", "abc", "0"],
            &["FCALL", "f", "0"],
            &["TOUCH", "k"],
            &["OBJECT", "IDLETIME", "k"],
            &["OBJECT", "FREQ", "k"],
            &["OBJECT"],
            &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
            &["PING"],
            &["INFO"],
            &["NOSUCHCOMMAND"],
        ] {
            assert!(!words(other), "{other:?}");
        }
    }
}
