//! Where each command's keys are, for routing a request to the server that holds them: the key
//! positions of every command and subcommand [`TABLE`](super::TABLE) and
//! [`SUBCOMMANDS`](super::SUBCOMMANDS) list (a test keeps the names of both pairs of tables equal),
//! and [`keys`], which finds a request's keys. Only sharded mode asks; a single server never does.
//!
//! Redis describes keys with key specs (`COMMAND INFO`): where the search begins (an index or a
//! keyword) and how keys follow (a range or a count). [`KeySpec`] is the handful of shapes its
//! commands actually use, each named for the commands that have it, and a test compares what
//! [`keys`] finds with `COMMAND GETKEYS` for every command a real server lists.

use super::{lookup, Args};
use crate::resp::parse_int;

/// Where a command's key arguments are. Indexes count the command name as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// No key arguments: server commands, and commands whose names look like keys but are not
    /// (channels of `PUBLISH`/`SPUBLISH`/`SSUBSCRIBE`, which Redis marks `not_key`).
    Keyless,
    /// `Range(first, last, step)`: keys at `first`, `first + step`, ... up to `last`; a negative
    /// `last` counts from the end, -1 being the last argument (`GET` 1/1/1, `RENAME` 1/2/1,
    /// `BLPOP` 1/-2/1 before the timeout, `SUNIONSTORE` 1/-1/1, `MSETNX` 1/-1/2,
    /// `OBJECT ENCODING` 2/2/1).
    Range(u8, i8, u8),
    /// Every argument from 1 on is a key ([`Split::Keys`]), or every other one, with its value
    /// after it ([`Split::Pairs`]), and Redis lets a cluster split the command by key (its
    /// `request_policy:multi_shard` tip): `MGET`, `DEL`, `EXISTS`, `TOUCH`, `UNLINK`, `MSET`.
    Multi(Split),
    /// `NumKeys(at, step)`: a key count at `at`, then that many keys `step` apart (2: each with a
    /// value after it); Redis needs at least one (`ZUNION 2 a b`, `LMPOP 1 l LEFT`,
    /// `BLMPOP 0 1 l LEFT`, `MSETEX 2 a 1 b 2`).
    NumKeys(u8, u8),
    /// A destination key at 1, then a key count at 2 and that many keys (`ZUNIONSTORE d 2 a b`).
    StoreNumKeys,
    /// A script or function at 1, a key count at 2 and that many keys, possibly none (`EVAL`,
    /// `EVALSHA`, `FCALL` and their `_RO` forms).
    Script,
    /// The key at 1, and the one after the last `STORE` or `STOREDIST` from argument 5 on
    /// (`GEORADIUS`, `GEORADIUSBYMEMBER`; the last one given is the one Redis writes).
    GeoStore,
    /// The key at 1, and the one after the last `STORE` (`SORT`; `LIMIT` takes two arguments,
    /// `BY` and `GET` one, so a pattern named `store` is not the option).
    SortStore,
    /// The first half of the arguments after the first `STREAMS` at or after this index; the
    /// other half are IDs (`XREAD` 1; `XREADGROUP` 4, after `GROUP group consumer`).
    Streams(u8),
    /// `MIGRATE host port key db timeout ...`: the key at 3, or, when that one is empty, every
    /// argument after `KEYS` (found from 6 on, skipping the arguments of `AUTH` and `AUTH2`).
    Migrate,
    /// A container (`OBJECT`, `XINFO`...): its subcommand's entry in [`SUBCOMMAND_KEYS`] says.
    Sub,
}

/// How a [`KeySpec::Multi`] command splits into one command per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Every argument after the name is a key (`MGET a b c`).
    Keys,
    /// Key value pairs after the name (`MSET a 1 b 2`).
    Pairs,
}

/// Why a request has no key to route by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKey {
    /// The command takes no keys ([`KeySpec::Keyless`], or a script called with 0 keys).
    Keyless,
    /// Neither table lists the command (a module's, a newer Redis's, a typo) or the subcommand.
    Unknown,
    /// The arguments do not hold the keys the command needs: too few, or a key count that is not
    /// an integer, negative, 0 where Redis needs one, or larger than the arguments, or an odd
    /// number of key value arguments, or no `STREAMS` with an even number after it. Redis answers
    /// such a request with its own error wherever it runs, so any server may take it.
    Malformed,
}

/// The keys of one request, as [`keys`] finds them: positions in its arguments, read on demand
/// from the request itself (nothing is copied or allocated).
#[derive(Debug, Clone, Copy)]
pub struct Keys<'a> {
    /// The whole request, the command name first.
    args: Args<'a>,
    /// Where the keys are, or why there are none.
    found: Result<Span, NoKey>,
    /// How the command splits by key, for [`KeySpec::Multi`] commands.
    split: Option<Split>,
}

/// Key positions: `first`, `first + step`, ... up to `last` (at least one), and `extra` (a
/// destination or store key, before `first` or after `last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    first: usize,
    last: usize,
    step: usize,
    extra: Option<usize>,
}

/// The positions of a request's keys, in argument order (see [`Keys::positions`]).
#[derive(Debug, Clone)]
pub struct Positions {
    /// What remains to be yielded; `None` once done.
    span: Option<Span>,
}

/// `Range(1, 1, 1)`: the key is the first argument.
const KEY: KeySpec = KeySpec::Range(1, 1, 1);
/// `Range(2, 2, 1)`: the key follows the subcommand.
const SUB_KEY: KeySpec = KeySpec::Range(2, 2, 1);

/// The key spec of every command in [`TABLE`](super::TABLE), by lower-case name, sorted.
/// Containers are [`KeySpec::Sub`]. Redis 7 lists most of these in `COMMAND`; the commands added
/// since (`MSETEX`, the hash field expiry, vector set and newer stream commands...) are from
/// their specs in Redis's sources.
#[rustfmt::skip]
pub const KEYS: &[(&str, KeySpec)] = {
    use KeySpec::*;
    &[
    ("acl", Sub), ("append", KEY), ("asking", Keyless), ("auth", Keyless), ("bgrewriteaof", Keyless),
    ("bgsave", Keyless), ("bitcount", KEY), ("bitfield", KEY), ("bitfield_ro", KEY),
    ("bitop", Range(2, -1, 1)), ("bitpos", KEY), ("blmove", Range(1, 2, 1)),
    ("blmpop", NumKeys(2, 1)), ("blpop", Range(1, -2, 1)), ("brpop", Range(1, -2, 1)),
    ("brpoplpush", Range(1, 2, 1)), ("bzmpop", NumKeys(2, 1)), ("bzpopmax", Range(1, -2, 1)),
    ("bzpopmin", Range(1, -2, 1)), ("client", Sub), ("cluster", Sub), ("command", Sub),
    ("config", Sub), ("copy", Range(1, 2, 1)), ("dbsize", Keyless), ("debug", Keyless), ("decr", KEY),
    ("decrby", KEY), ("del", Multi(Split::Keys)), ("delex", KEY), ("digest", KEY), ("discard", Keyless),
    ("dump", KEY), ("echo", Keyless), ("eval", Script), ("eval_ro", Script), ("evalsha", Script),
    ("evalsha_ro", Script), ("exec", Keyless), ("exists", Multi(Split::Keys)), ("expire", KEY),
    ("expireat", KEY), ("expiretime", KEY), ("failover", Keyless), ("fcall", Script),
    ("fcall_ro", Script), ("flushall", Keyless), ("flushdb", Keyless), ("function", Sub), ("geoadd", KEY),
    ("geodist", KEY), ("geohash", KEY), ("geopos", KEY), ("georadius", GeoStore),
    ("georadius_ro", KEY), ("georadiusbymember", GeoStore), ("georadiusbymember_ro", KEY),
    ("geosearch", KEY), ("geosearchstore", Range(1, 2, 1)), ("get", KEY), ("getbit", KEY),
    ("getdel", KEY), ("getex", KEY), ("getrange", KEY), ("getset", KEY), ("hdel", KEY), ("hello", Keyless),
    ("hexists", KEY), ("hexpire", KEY), ("hexpireat", KEY), ("hexpiretime", KEY), ("hget", KEY),
    ("hgetall", KEY), ("hgetdel", KEY), ("hgetex", KEY), ("hincrby", KEY), ("hincrbyfloat", KEY),
    ("hkeys", KEY), ("hlen", KEY), ("hmget", KEY), ("hmset", KEY), ("hpersist", KEY), ("hpexpire", KEY),
    ("hpexpireat", KEY), ("hpexpiretime", KEY), ("hpttl", KEY), ("hrandfield", KEY), ("hscan", KEY),
    ("hset", KEY), ("hsetex", KEY), ("hsetnx", KEY), ("hstrlen", KEY), ("httl", KEY), ("hvals", KEY),
    ("incr", KEY), ("incrby", KEY), ("incrbyfloat", KEY), ("info", Keyless), ("keys", Keyless),
    ("lastsave", Keyless), ("latency", Sub), ("lcs", Range(1, 2, 1)), ("lindex", KEY), ("linsert", KEY),
    ("llen", KEY), ("lmove", Range(1, 2, 1)), ("lmpop", NumKeys(1, 1)), ("lolwut", Keyless),
    ("lpop", KEY), ("lpos", KEY), ("lpush", KEY), ("lpushx", KEY), ("lrange", KEY), ("lrem", KEY),
    ("lset", KEY), ("ltrim", KEY), ("memory", Sub), ("mget", Multi(Split::Keys)),
    ("migrate", Migrate), ("module", Sub), ("monitor", Keyless), ("move", KEY),
    ("mset", Multi(Split::Pairs)), ("msetex", NumKeys(1, 2)), ("msetnx", Range(1, -1, 2)),
    ("multi", Keyless), ("object", Sub), ("persist", KEY), ("pexpire", KEY), ("pexpireat", KEY),
    ("pexpiretime", KEY), ("pfadd", KEY), ("pfcount", Range(1, -1, 1)), ("pfdebug", SUB_KEY),
    ("pfmerge", Range(1, -1, 1)), ("pfselftest", Keyless), ("ping", Keyless), ("psetex", KEY),
    ("psubscribe", Keyless), ("psync", Keyless), ("pttl", KEY), ("publish", Keyless), ("pubsub", Sub),
    ("punsubscribe", Keyless), ("quit", Keyless), ("randomkey", Keyless), ("readonly", Keyless),
    ("readwrite", Keyless), ("rename", Range(1, 2, 1)), ("renamenx", Range(1, 2, 1)),
    ("replconf", Keyless), ("replicaof", Keyless), ("reset", Keyless), ("restore", KEY),
    ("restore-asking", KEY), ("role", Keyless), ("rpop", KEY), ("rpoplpush", Range(1, 2, 1)),
    ("rpush", KEY), ("rpushx", KEY), ("sadd", KEY), ("save", Keyless), ("scan", Keyless), ("scard", KEY),
    ("script", Sub), ("sdiff", Range(1, -1, 1)), ("sdiffstore", Range(1, -1, 1)), ("select", Keyless),
    ("set", KEY), ("setbit", KEY), ("setex", KEY), ("setnx", KEY), ("setrange", KEY),
    ("shutdown", Keyless), ("sinter", Range(1, -1, 1)), ("sintercard", NumKeys(1, 1)),
    ("sinterstore", Range(1, -1, 1)), ("sismember", KEY), ("slaveof", Keyless), ("slowlog", Sub),
    ("smembers", KEY), ("smismember", KEY), ("smove", Range(1, 2, 1)), ("sort", SortStore),
    ("sort_ro", KEY), ("spop", KEY), ("spublish", Keyless), ("srandmember", KEY), ("srem", KEY),
    ("sscan", KEY), ("ssubscribe", Keyless), ("strlen", KEY), ("subscribe", Keyless), ("substr", KEY),
    ("sunion", Range(1, -1, 1)), ("sunionstore", Range(1, -1, 1)), ("sunsubscribe", Keyless),
    ("swapdb", Keyless), ("sync", Keyless), ("time", Keyless), ("touch", Multi(Split::Keys)), ("ttl", KEY),
    ("type", KEY), ("unlink", Multi(Split::Keys)), ("unsubscribe", Keyless), ("unwatch", Keyless),
    ("vadd", KEY), ("vcard", KEY), ("vdim", KEY), ("vemb", KEY), ("vgetattr", KEY), ("vinfo", KEY),
    ("vlinks", KEY), ("vrandmember", KEY), ("vrem", KEY), ("vsetattr", KEY), ("vsim", KEY),
    ("wait", Keyless), ("waitaof", Keyless), ("watch", Range(1, -1, 1)), ("xack", KEY), ("xackdel", KEY),
    ("xadd", KEY), ("xautoclaim", KEY), ("xclaim", KEY), ("xdel", KEY), ("xdelex", KEY),
    ("xgroup", Sub), ("xinfo", Sub), ("xlen", KEY), ("xpending", KEY), ("xrange", KEY),
    ("xread", Streams(1)), ("xreadgroup", Streams(4)), ("xrevrange", KEY), ("xsetid", KEY),
    ("xtrim", KEY), ("zadd", KEY), ("zcard", KEY), ("zcount", KEY), ("zdiff", NumKeys(1, 1)),
    ("zdiffstore", StoreNumKeys), ("zincrby", KEY), ("zinter", NumKeys(1, 1)),
    ("zintercard", NumKeys(1, 1)), ("zinterstore", StoreNumKeys), ("zlexcount", KEY),
    ("zmpop", NumKeys(1, 1)), ("zmscore", KEY), ("zpopmax", KEY), ("zpopmin", KEY),
    ("zrandmember", KEY), ("zrange", KEY), ("zrangebylex", KEY), ("zrangebyscore", KEY),
    ("zrangestore", Range(1, 2, 1)), ("zrank", KEY), ("zrem", KEY), ("zremrangebylex", KEY),
    ("zremrangebyrank", KEY), ("zremrangebyscore", KEY), ("zrevrange", KEY), ("zrevrangebylex", KEY),
    ("zrevrangebyscore", KEY), ("zrevrank", KEY), ("zscan", KEY), ("zscore", KEY),
    ("zunion", NumKeys(1, 1)), ("zunionstore", StoreNumKeys),
    ]
};

/// The key spec of every subcommand in [`SUBCOMMANDS`](super::SUBCOMMANDS), sorted.
#[rustfmt::skip]
pub const SUBCOMMAND_KEYS: &[(&str, &str, KeySpec)] = {
    use KeySpec::*;
    &[
    ("acl", "cat", Keyless), ("acl", "deluser", Keyless), ("acl", "dryrun", Keyless),
    ("acl", "genpass", Keyless), ("acl", "getuser", Keyless), ("acl", "help", Keyless),
    ("acl", "list", Keyless), ("acl", "load", Keyless), ("acl", "log", Keyless), ("acl", "save", Keyless),
    ("acl", "setuser", Keyless), ("acl", "users", Keyless), ("acl", "whoami", Keyless),
    ("client", "caching", Keyless), ("client", "getname", Keyless), ("client", "getredir", Keyless),
    ("client", "help", Keyless), ("client", "id", Keyless), ("client", "info", Keyless),
    ("client", "kill", Keyless), ("client", "list", Keyless), ("client", "no-evict", Keyless),
    ("client", "no-touch", Keyless), ("client", "pause", Keyless), ("client", "reply", Keyless),
    ("client", "setinfo", Keyless), ("client", "setname", Keyless), ("client", "tracking", Keyless),
    ("client", "trackinginfo", Keyless), ("client", "unblock", Keyless), ("client", "unpause", Keyless),
    ("cluster", "addslots", Keyless), ("cluster", "addslotsrange", Keyless),
    ("cluster", "bumpepoch", Keyless), ("cluster", "count-failure-reports", Keyless),
    ("cluster", "countkeysinslot", Keyless), ("cluster", "delslots", Keyless),
    ("cluster", "delslotsrange", Keyless), ("cluster", "failover", Keyless),
    ("cluster", "flushslots", Keyless), ("cluster", "forget", Keyless),
    ("cluster", "getkeysinslot", Keyless), ("cluster", "help", Keyless), ("cluster", "info", Keyless),
    ("cluster", "keyslot", Keyless), ("cluster", "links", Keyless), ("cluster", "meet", Keyless),
    ("cluster", "migration", Keyless), ("cluster", "myid", Keyless), ("cluster", "myshardid", Keyless),
    ("cluster", "nodes", Keyless), ("cluster", "replicas", Keyless), ("cluster", "replicate", Keyless),
    ("cluster", "reset", Keyless), ("cluster", "saveconfig", Keyless),
    ("cluster", "set-config-epoch", Keyless), ("cluster", "setslot", Keyless),
    ("cluster", "shards", Keyless), ("cluster", "slaves", Keyless), ("cluster", "slot-stats", Keyless),
    ("cluster", "slots", Keyless), ("command", "count", Keyless), ("command", "docs", Keyless),
    ("command", "getkeys", Keyless), ("command", "getkeysandflags", Keyless), ("command", "help", Keyless),
    ("command", "info", Keyless), ("command", "list", Keyless), ("config", "get", Keyless),
    ("config", "help", Keyless), ("config", "resetstat", Keyless), ("config", "rewrite", Keyless),
    ("config", "set", Keyless), ("function", "delete", Keyless), ("function", "dump", Keyless),
    ("function", "flush", Keyless), ("function", "help", Keyless), ("function", "kill", Keyless),
    ("function", "list", Keyless), ("function", "load", Keyless), ("function", "restore", Keyless),
    ("function", "stats", Keyless), ("latency", "doctor", Keyless), ("latency", "graph", Keyless),
    ("latency", "help", Keyless), ("latency", "histogram", Keyless), ("latency", "history", Keyless),
    ("latency", "latest", Keyless), ("latency", "reset", Keyless), ("memory", "doctor", Keyless),
    ("memory", "help", Keyless), ("memory", "malloc-stats", Keyless), ("memory", "purge", Keyless),
    ("memory", "stats", Keyless), ("memory", "usage", SUB_KEY), ("module", "help", Keyless),
    ("module", "list", Keyless), ("module", "load", Keyless), ("module", "loadex", Keyless),
    ("module", "unload", Keyless), ("object", "encoding", SUB_KEY),
    ("object", "freq", SUB_KEY), ("object", "help", Keyless),
    ("object", "idletime", SUB_KEY), ("object", "refcount", SUB_KEY),
    ("pubsub", "channels", Keyless), ("pubsub", "help", Keyless), ("pubsub", "numpat", Keyless),
    ("pubsub", "numsub", Keyless), ("pubsub", "shardchannels", Keyless), ("pubsub", "shardnumsub", Keyless),
    ("script", "debug", Keyless), ("script", "exists", Keyless), ("script", "flush", Keyless),
    ("script", "help", Keyless), ("script", "kill", Keyless), ("script", "load", Keyless),
    ("slowlog", "get", Keyless), ("slowlog", "help", Keyless), ("slowlog", "len", Keyless),
    ("slowlog", "reset", Keyless), ("xgroup", "create", SUB_KEY),
    ("xgroup", "createconsumer", SUB_KEY), ("xgroup", "delconsumer", SUB_KEY),
    ("xgroup", "destroy", SUB_KEY), ("xgroup", "help", Keyless),
    ("xgroup", "setid", SUB_KEY), ("xinfo", "consumers", SUB_KEY),
    ("xinfo", "groups", SUB_KEY), ("xinfo", "help", Keyless),
    ("xinfo", "stream", SUB_KEY),
    ]
};

/// The keys of a request: `name` is the command name as the client sent it (any case), `args`
/// the whole request, the name first. A command neither table lists has [`NoKey::Unknown`]; a
/// container's keys are its subcommand's.
///
/// Cheap enough for every request in sharded mode: a binary search of [`KEYS`], then at most one
/// pass over the arguments' headers, only for the commands whose keys depend on their number
/// (`MGET`, `EVAL`, `XREAD`...). `GET k` reads two arguments. Nothing is allocated.
pub fn keys<'a>(name: &[u8], args: Args<'a>) -> Keys<'a> {
    let spec = match key_spec(name, None) {
        Some(KeySpec::Sub) => args.get(1).and_then(|sub| key_spec(name, Some(sub))),
        spec => spec,
    };
    let found = spec.map_or(Err(NoKey::Unknown), |spec| locate(spec, args));
    let split = match spec {
        Some(KeySpec::Multi(split)) if found.is_ok() => Some(split),
        _ => None,
    };
    Keys { args, found, split }
}

/// The key spec the tables give `name` (with `sub`, that subcommand's), in any case; `None` when
/// they do not list it.
pub fn key_spec(name: &[u8], sub: Option<&[u8]>) -> Option<KeySpec> {
    lookup(KEYS, SUBCOMMAND_KEYS, name, sub)
}

impl<'a> Keys<'a> {
    /// The first key in argument order, the one a command is routed by (twemproxy's choice too:
    /// `ZUNIONSTORE`'s destination, `EVAL`'s first key). `None` when [`Keys::missing`] says why.
    pub fn first(&self) -> Option<&'a [u8]> {
        self.positions().next().and_then(|at| self.args.get(at))
    }

    /// Why there is no key to route by; `None` when there is at least one.
    pub fn missing(&self) -> Option<NoKey> {
        self.found.err()
    }

    /// The positions of the keys in the request (the name is 0), in argument order.
    pub fn positions(&self) -> Positions {
        Positions {
            span: self.found.ok(),
        }
    }

    /// The keys, in argument order, read in one pass over the request.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut positions = self.positions();
        let mut next = positions.next();
        self.args
            .iter()
            .enumerate()
            .map_while(move |(at, arg)| {
                let wanted = next?;
                if at == wanted {
                    next = positions.next();
                }
                Some((at == wanted).then_some(arg))
            })
            .flatten()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.positions().count()
    }

    /// True when there are no keys ([`Keys::missing`] says why).
    pub fn is_empty(&self) -> bool {
        self.found.is_err()
    }

    /// For a command Redis lets a cluster split by key (`MGET`, `DEL`, `EXISTS`, `TOUCH`,
    /// `UNLINK`: [`Split::Keys`]; `MSET`: [`Split::Pairs`]) with well-formed arguments, how it
    /// splits: every argument from 1 on is a key, or a key then its value. `None` for every other
    /// command, also those whose keys span the same arguments but must run as one (`MSETNX`,
    /// `SUNIONSTORE`, `WATCH`...).
    pub fn split(&self) -> Option<Split> {
        self.split
    }
}

impl Iterator for Positions {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let span = self.span.as_mut()?;
        match span.extra {
            Some(extra) if extra < span.first => {
                span.extra = None;
                return Some(extra);
            }
            _ => {}
        }
        if span.first > span.last {
            let extra = span.extra;
            self.span = None;
            return extra;
        }
        let at = span.first;
        // Past `last` ends the range: a step that overflows does too.
        span.first = at.saturating_add(span.step);
        if span.first > span.last && span.extra.is_none() {
            self.span = None;
        }
        Some(at)
    }
}

/// Where `spec`'s keys are in `args`.
fn locate(spec: KeySpec, args: Args<'_>) -> Result<Span, NoKey> {
    match spec {
        KeySpec::Keyless | KeySpec::Sub => Err(NoKey::Keyless),
        KeySpec::Range(first, last, step) => range(args, first.into(), last.into(), step.into()),
        KeySpec::Multi(Split::Keys) => range(args, 1, -1, 1),
        KeySpec::Multi(Split::Pairs) => {
            if args.len() % 2 == 0 {
                // An odd number of key value arguments: Redis's arity error.
                return Err(NoKey::Malformed);
            }
            range(args, 1, -1, 2)
        }
        // Redis needs at least one key, except from a script (which then touches none).
        KeySpec::NumKeys(at, step) => {
            counted(args, at.into(), step.into())?.ok_or(NoKey::Malformed)
        }
        KeySpec::StoreNumKeys => Ok(Span {
            extra: Some(1),
            ..counted(args, 2, 1)?.ok_or(NoKey::Malformed)?
        }),
        KeySpec::Script => counted(args, 2, 1)?.ok_or(NoKey::Keyless),
        KeySpec::GeoStore => store(args, 5, |arg| {
            let store =
                arg.eq_ignore_ascii_case(b"STORE") || arg.eq_ignore_ascii_case(b"STOREDIST");
            (store, usize::from(store))
        }),
        // Redis's `sortGetKeys`: a `STORE` does not skip its argument.
        KeySpec::SortStore => store(args, 2, |arg| {
            if arg.eq_ignore_ascii_case(b"LIMIT") {
                (false, 2)
            } else if arg.eq_ignore_ascii_case(b"GET") || arg.eq_ignore_ascii_case(b"BY") {
                (false, 1)
            } else {
                (arg.eq_ignore_ascii_case(b"STORE"), 0)
            }
        }),
        KeySpec::Streams(from) => streams(args, from.into()),
        KeySpec::Migrate => migrate(args),
    }
}

/// `Range(first, last, step)` on these arguments.
fn range(args: Args<'_>, first: usize, last: isize, step: usize) -> Result<Span, NoKey> {
    let last = match usize::try_from(last) {
        Ok(last) => {
            // Only the arguments up to `last` need reading.
            args.get(last).ok_or(NoKey::Malformed)?;
            last
        }
        Err(_) => args
            .len()
            .checked_sub(last.unsigned_abs())
            .ok_or(NoKey::Malformed)?,
    };
    if last < first {
        return Err(NoKey::Malformed);
    }
    Ok(Span {
        first,
        last,
        step,
        extra: None,
    })
}

/// A key count at `at`, then that many keys `step` apart, each with its `step - 1` arguments
/// after it; `None` for a count of 0 (the caller decides whether Redis takes it).
fn counted(args: Args<'_>, at: usize, step: usize) -> Result<Option<Span>, NoKey> {
    let count = args
        .get(at)
        .and_then(parse_int)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or(NoKey::Malformed)?;
    if count == 0 {
        return Ok(None);
    }
    let first = at + 1;
    let end = count
        .checked_mul(step)
        .and_then(|n| n.checked_add(first))
        .ok_or(NoKey::Malformed)?;
    if end > args.len() {
        return Err(NoKey::Malformed);
    }
    Ok(Some(Span {
        first,
        last: end - step,
        step,
        extra: None,
    }))
}

/// The key at 1, and the argument after the last store option found from `from` on: `rule` says
/// of each argument whether it is a store option and how many arguments after it to skip.
fn store(
    args: Args<'_>,
    from: usize,
    rule: impl Fn(&[u8]) -> (bool, usize),
) -> Result<Span, NoKey> {
    args.get(1).ok_or(NoKey::Malformed)?;
    let mut rest = args.iter().enumerate().skip(from).peekable();
    let mut stored = None;
    while let Some((at, arg)) = rest.next() {
        let (is_store, skip) = rule(arg);
        if is_store && rest.peek().is_some() {
            stored = Some(at + 1);
        }
        for _ in 0..skip {
            rest.next();
        }
    }
    Ok(Span {
        first: 1,
        last: 1,
        step: 1,
        extra: stored,
    })
}

/// `XREAD`/`XREADGROUP`: the first half of the arguments after the first `STREAMS` at or after
/// `from`.
fn streams(args: Args<'_>, from: usize) -> Result<Span, NoKey> {
    let at = args
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, arg)| arg.eq_ignore_ascii_case(b"STREAMS"))
        .ok_or(NoKey::Malformed)?
        .0;
    let rest = args.len() - at - 1;
    if rest == 0 || rest % 2 != 0 {
        // Redis: "Unbalanced 'xread' list of streams".
        return Err(NoKey::Malformed);
    }
    Ok(Span {
        first: at + 1,
        last: at + rest / 2,
        step: 1,
        extra: None,
    })
}

/// `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw] [AUTH2 user pw] [KEYS k...]`.
fn migrate(args: Args<'_>) -> Result<Span, NoKey> {
    let argc = args.len();
    let key = args.get(3).filter(|_| argc >= 6).ok_or(NoKey::Malformed)?;
    let mut options = args.iter().enumerate().skip(6);
    while let Some((at, option)) = options.next() {
        let skip = if option.eq_ignore_ascii_case(b"KEYS") {
            return match argc - at - 1 {
                _ if !key.is_empty() => Err(NoKey::Malformed),
                0 => Err(NoKey::Keyless),
                _ => Ok(Span {
                    first: at + 1,
                    last: argc - 1,
                    step: 1,
                    extra: None,
                }),
            };
        } else if option.eq_ignore_ascii_case(b"AUTH") {
            1
        } else if option.eq_ignore_ascii_case(b"AUTH2") {
            2
        } else {
            0
        };
        for _ in 0..skip {
            options.next();
        }
    }
    range(args, 3, 3, 1)
}

#[cfg(test)]
mod tests {
    use super::super::{SUBCOMMANDS, TABLE};
    use super::*;
    use crate::resp;

    /// The keys `keys` finds in `words`, or why there are none; the same from the RESP encoding.
    fn found(words: &[&str]) -> Result<Vec<String>, NoKey> {
        let inline: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        let frame = resp::encode_request(&inline);
        let of = |args: Args<'_>| {
            let keys = keys(&inline[0], args);
            match keys.missing() {
                Some(why) => {
                    assert!(
                        keys.first().is_none() && keys.is_empty() && keys.positions().count() == 0
                    );
                    assert_eq!(keys.iter().count(), 0);
                    Err(why)
                }
                None => {
                    let all: Vec<String> = keys
                        .iter()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .collect();
                    let at: Vec<String> = keys.positions().map(|at| words[at].to_owned()).collect();
                    assert_eq!(all, at, "{words:?}: keys and positions agree");
                    assert_eq!(
                        keys.first().map(|k| k.to_vec()),
                        Some(all[0].clone().into_bytes())
                    );
                    assert_eq!(keys.len(), all.len());
                    Ok(all)
                }
            }
        };
        let by_resp = of(Args::Resp(&frame));
        assert_eq!(
            of(Args::Inline(&inline)),
            by_resp,
            "{words:?}: inline and RESP agree"
        );
        by_resp
    }

    fn split(words: &[&str]) -> Option<Split> {
        let inline: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        keys(&inline[0], Args::Inline(&inline)).split()
    }

    fn ok(keys: &[&str]) -> Result<Vec<String>, NoKey> {
        Ok(keys.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn key_tables_list_exactly_the_commands_of_the_class_tables() {
        assert!(KEYS.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(SUBCOMMAND_KEYS
            .windows(2)
            .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        let names: Vec<&str> = KEYS.iter().map(|e| e.0).collect();
        assert_eq!(names, TABLE.iter().map(|e| e.0).collect::<Vec<_>>());
        let subs: Vec<(&str, &str)> = SUBCOMMAND_KEYS.iter().map(|e| (e.0, e.1)).collect();
        let want: Vec<(&str, &str)> = SUBCOMMANDS.iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(subs, want);
        // A container is `Sub` exactly when it has subcommands, and no subcommand is.
        for (name, spec) in KEYS {
            let container = SUBCOMMANDS.iter().any(|s| s.0 == *name);
            assert_eq!(*spec == KeySpec::Sub, container, "{name}");
        }
        assert!(SUBCOMMAND_KEYS.iter().all(|s| s.2 != KeySpec::Sub));
        assert_eq!(key_spec(b"GeT", None), Some(KEY));
        assert_eq!(key_spec(b"OBJECT", Some(b"Encoding")), Some(SUB_KEY));
    }

    #[test]
    fn fixed_positions() {
        assert_eq!(found(&["gEt", "k"]), ok(&["k"]));
        assert_eq!(found(&["RENAME", "a", "b"]), ok(&["a", "b"]));
        assert_eq!(found(&["BLPOP", "a", "b", "0"]), ok(&["a", "b"]));
        assert_eq!(found(&["MSETNX", "a", "1", "b", "2"]), ok(&["a", "b"]));
        assert_eq!(
            found(&["BITOP", "AND", "d", "a", "b"]),
            ok(&["d", "a", "b"])
        );
        assert_eq!(found(&["SET", "k", "v", "EX", "10", "GET"]), ok(&["k"]));
        assert_eq!(found(&["OBJECT", "encoding", "k"]), ok(&["k"]));
        assert_eq!(found(&["XINFO", "STREAM", "s", "FULL"]), ok(&["s"]));
        assert_eq!(found(&["MEMORY", "USAGE", "k", "SAMPLES", "5"]), ok(&["k"]));
        // Too few arguments: Redis's arity error wherever it runs.
        assert_eq!(found(&["GET"]), Err(NoKey::Malformed));
        assert_eq!(found(&["RENAME", "a"]), Err(NoKey::Malformed));
        assert_eq!(found(&["BLPOP", "a"]), Err(NoKey::Malformed));
        assert_eq!(found(&["MGET"]), Err(NoKey::Malformed));
        assert_eq!(found(&["OBJECT", "ENCODING"]), Err(NoKey::Malformed));
    }

    #[test]
    fn keyless_and_unknown_commands_say_so() {
        assert_eq!(found(&["PING"]), Err(NoKey::Keyless));
        assert_eq!(found(&["PUBLISH", "channel", "m"]), Err(NoKey::Keyless));
        assert_eq!(found(&["SPUBLISH", "channel", "m"]), Err(NoKey::Keyless));
        assert_eq!(found(&["OBJECT", "HELP"]), Err(NoKey::Keyless));
        assert_eq!(found(&["CLUSTER", "KEYSLOT", "k"]), Err(NoKey::Keyless));
        assert_eq!(found(&["OBJECT"]), Err(NoKey::Unknown));
        assert_eq!(found(&["OBJECT", "nosuch", "k"]), Err(NoKey::Unknown));
        assert_eq!(found(&["nosuchcommand", "k"]), Err(NoKey::Unknown));
        let long = "x".repeat(100);
        assert_eq!(found(&[&long, "k"]), Err(NoKey::Unknown));
    }

    #[test]
    fn splittable_shapes() {
        assert_eq!(found(&["MGET", "a", "b", "c"]), ok(&["a", "b", "c"]));
        assert_eq!(split(&["mget", "a", "b"]), Some(Split::Keys));
        for name in ["DEL", "EXISTS", "TOUCH", "UNLINK"] {
            assert_eq!(split(&[name, "a"]), Some(Split::Keys), "{name}");
        }
        assert_eq!(found(&["MSET", "a", "1", "b", "2"]), ok(&["a", "b"]));
        assert_eq!(split(&["MSET", "a", "1", "b", "2"]), Some(Split::Pairs));
        // Key value pairs that are not pairs: nothing to split.
        assert_eq!(found(&["MSET", "a", "1", "b"]), Err(NoKey::Malformed));
        assert_eq!(split(&["MSET", "a", "1", "b"]), None);
        assert_eq!(split(&["MGET"]), None);
        // Same positions, but one atomic command.
        for cmd in [
            &["MSETNX", "a", "1"][..],
            &["SUNIONSTORE", "d", "a"],
            &["WATCH", "a", "b"],
            &["GET", "a"],
            &["EVAL", "s", "1", "a"],
        ] {
            assert_eq!(split(cmd), None, "{cmd:?}");
        }
    }

    #[test]
    fn numkeys_forms() {
        assert_eq!(found(&["EVAL", "s", "2", "a", "b", "x"]), ok(&["a", "b"]));
        assert_eq!(found(&["fcall_ro", "f", "1", "a"]), ok(&["a"]));
        assert_eq!(found(&["EVALSHA", "sha", "0", "x"]), Err(NoKey::Keyless));
        assert_eq!(
            found(&["ZUNION", "2", "a", "b", "WITHSCORES"]),
            ok(&["a", "b"])
        );
        assert_eq!(
            found(&["SINTERCARD", "2", "a", "b", "LIMIT", "1"]),
            ok(&["a", "b"])
        );
        assert_eq!(found(&["LMPOP", "1", "l", "LEFT"]), ok(&["l"]));
        assert_eq!(
            found(&["BLMPOP", "0", "2", "a", "b", "LEFT"]),
            ok(&["a", "b"])
        );
        assert_eq!(found(&["BZMPOP", "1.5", "1", "z", "MIN"]), ok(&["z"]));
        assert_eq!(
            found(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
            ok(&["d", "a", "b"])
        );
        assert_eq!(found(&["ZDIFFSTORE", "d", "1", "a"]), ok(&["d", "a"]));
        assert_eq!(
            found(&["MSETEX", "2", "a", "1", "b", "2", "EX", "10"]),
            ok(&["a", "b"])
        );
        assert_eq!(found(&["MSETEX", "1", "a", "1", "b"]), ok(&["a"]));
    }

    #[test]
    fn malformed_key_counts_never_panic() {
        let bad_counts = [
            "-1",
            "x",
            "",
            "01",
            "+1",
            "1.0",
            "3",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
        ];
        for count in bad_counts {
            for cmd in [
                &["EVAL", "s", count, "a", "b"][..],
                &["ZUNIONSTORE", "d", count, "a", "b"],
                &["ZINTER", count, "a", "b"],
                &["BLMPOP", "0", count, "a", "b"],
                &["MSETEX", count, "a", "1", "b", "2"],
            ] {
                assert_eq!(found(cmd), Err(NoKey::Malformed), "{cmd:?}");
            }
        }
        // 0 keys: Redis needs one, except from a script.
        assert_eq!(found(&["ZUNIONSTORE", "d", "0"]), Err(NoKey::Malformed));
        assert_eq!(found(&["LMPOP", "0", "LEFT"]), Err(NoKey::Malformed));
        assert_eq!(found(&["EVAL", "s", "0"]), Err(NoKey::Keyless));
        // A count with no argument where it belongs.
        assert_eq!(found(&["EVAL", "s"]), Err(NoKey::Malformed));
        assert_eq!(
            found(&["MSETEX", "2", "a", "1", "b"]),
            Err(NoKey::Malformed)
        );
        // Not a RESP frame at all: no keys, no panic.
        for name in [
            "GET",
            "MGET",
            "EVAL",
            "XREAD",
            "SORT",
            "MIGRATE",
            "GEORADIUS",
        ] {
            for garbage in [
                &b""[..],
                b"*3\r\n$3\r\nGET\r\n$9\r\nk",
                b"*-1\r\n",
                b"+OK\r\n",
            ] {
                let keys = keys(name.as_bytes(), Args::Resp(garbage));
                assert_eq!(keys.missing(), Some(NoKey::Malformed), "{name} {garbage:?}");
            }
        }
    }

    #[test]
    fn keyword_forms() {
        assert_eq!(
            found(&["XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"]),
            ok(&["a", "b"])
        );
        assert_eq!(
            found(&["XREADGROUP", "GROUP", "streams", "c", "streams", "s", ">"]),
            ok(&["s"])
        );
        assert_eq!(
            found(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "CLAIM",
                "10",
                "STREAMS",
                "s",
                ">"
            ]),
            ok(&["s"])
        );
        for bad in [
            &["XREAD", "STREAMS", "a", "b", "0"][..],
            &["XREAD", "STREAMS"],
            &["XREAD", "COUNT", "1"],
            &["XREADGROUP", "GROUP", "STREAMS", "c"],
        ] {
            assert_eq!(found(bad), Err(NoKey::Malformed), "{bad:?}");
        }
        let geo = ["GEORADIUS", "k", "0", "0", "1", "km"];
        assert_eq!(found(&geo), ok(&["k"]));
        assert_eq!(
            found(&[&geo[..], &["STORE", "d"]].concat()),
            ok(&["k", "d"])
        );
        // The last store option wins, as in Redis.
        let both = [&geo[..], &["STORE", "a", "STOREDIST", "b"]].concat();
        assert_eq!(found(&both), ok(&["k", "b"]));
        assert_eq!(found(&[&geo[..], &["STORE"]].concat()), ok(&["k"]));
        assert_eq!(
            found(&[
                "GEORADIUSBYMEMBER",
                "k",
                "store",
                "1",
                "km",
                "STOREDIST",
                "d"
            ]),
            ok(&["k", "d"])
        );
        assert_eq!(
            found(&["SORT", "k", "BY", "store", "GET", "#", "STORE", "d"]),
            ok(&["k", "d"])
        );
        assert_eq!(
            found(&["SORT", "k", "LIMIT", "store", "x", "ALPHA"]),
            ok(&["k"])
        );
        assert_eq!(found(&["SORT", "k", "STORE"]), ok(&["k"]));
        assert_eq!(found(&["SORT_RO", "k", "STORE", "d"]), ok(&["k"]));
        assert_eq!(found(&["MIGRATE", "h", "1", "k", "0", "10"]), ok(&["k"]));
        assert_eq!(
            found(&["MIGRATE", "h", "1", "", "0", "10", "AUTH", "keys", "KEYS", "a", "b"]),
            ok(&["a", "b"])
        );
        assert_eq!(
            found(&["MIGRATE", "h", "1", "", "0", "10", "AUTH2", "u", "keys", "COPY", "KEYS", "a"]),
            ok(&["a"])
        );
        assert_eq!(
            found(&["MIGRATE", "h", "1", "k", "0", "10", "KEYS", "a"]),
            Err(NoKey::Malformed)
        );
        assert_eq!(
            found(&["MIGRATE", "h", "1", "", "0", "10", "KEYS"]),
            Err(NoKey::Keyless)
        );
        assert_eq!(found(&["MIGRATE", "h", "1", "k"]), Err(NoKey::Malformed));
    }

    /// Words that steer the key finders: counts (good, bad, huge), and every keyword they know.
    const WORDS: &[&str] = &[
        "0",
        "1",
        "2",
        "3",
        "-1",
        "x",
        "",
        "99999999999999999999",
        "9223372036854775807",
        "STREAMS",
        "streams",
        "STORE",
        "STOREDIST",
        "KEYS",
        "LIMIT",
        "GET",
        "BY",
        "AUTH",
        "AUTH2",
        "GROUP",
        "ENCODING",
        "USAGE",
        "STREAM",
    ];

    proptest::proptest! {
        /// Any command of the tables, with any arguments: no panic, and the keys are arguments,
        /// in order, as many as `len` says, read the same from RESP and inline requests.
        #[test]
        fn any_arguments_give_keys_within_the_request(
            command in 0..KEYS.len(),
            args in proptest::collection::vec(proptest::sample::select(WORDS), 0..12),
        ) {
            let words: Vec<&str> = std::iter::once(KEYS[command].0).chain(args).collect();
            if let Ok(keys) = found(&words) {
                let inline: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
                let all = super::keys(&inline[0], Args::Inline(&inline));
                let at: Vec<usize> = all.positions().collect();
                proptest::prop_assert!(at.windows(2).all(|w| w[0] < w[1]), "{words:?}: {at:?}");
                proptest::prop_assert!(at.iter().all(|&i| 0 < i && i < words.len()));
                proptest::prop_assert_eq!(keys.len(), at.len());
            }
        }
    }
}
