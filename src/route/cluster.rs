//! What a Redis Cluster upstream changes in the routing step. respipe shows its clients one Redis
//! that is not a cluster: `CLUSTER`, `READONLY`, `READWRITE` and `ASKING` get a non-cluster Redis's
//! answers (never a node's address), `INFO` says `cluster_enabled:0` and counts the keys of every
//! primary, commands without a key run on a primary (not on a seed, which may be a replica or
//! down), and the shard channels of `SPUBLISH`, `SSUBSCRIBE` and `SUNSUBSCRIBE` are routed by their
//! hash slot as a cluster routes keys.

use bytes::{BufMut, Bytes, BytesMut};

use super::{line, Merge, Plan};
use crate::cluster::{key_slot, SLOTS};
use crate::command::Args;
use crate::reply::{ErrorReply, Lane, RedisError};
use crate::resp;
use crate::topology::{Layout, Placer};

/// Keyless commands a cluster upstream plans itself ([`plan`]): a run of plain commands never
/// takes them along.
pub(super) const OWN: [&[u8]; 8] = [
    b"cluster",
    b"readonly",
    b"readwrite",
    b"asking",
    b"info",
    b"spublish",
    b"ssubscribe",
    b"sunsubscribe",
];

/// The `CLUSTER` subcommands a Redis knows (those of [`SUBCOMMANDS`](crate::command::SUBCOMMANDS),
/// a test keeps them equal), by the full name Redis's arity error gives, with their arity as
/// `COMMAND INFO` gives it (negative: at least that many arguments, the command name and the
/// subcommand included). A non-cluster Redis checks the arity, then answers that cluster support
/// is disabled. The subcommands newer than Redis 7.0 whose arity respipe does not check
/// (`MIGRATION`, `SLOT-STATS`) take any number.
#[rustfmt::skip]
const SUBCOMMANDS: &[(&str, i8)] = &[
    ("cluster|addslots", -3), ("cluster|addslotsrange", -4), ("cluster|bumpepoch", 2),
    ("cluster|count-failure-reports", 3), ("cluster|countkeysinslot", 3), ("cluster|delslots", -3),
    ("cluster|delslotsrange", -4), ("cluster|failover", -2), ("cluster|flushslots", 2),
    ("cluster|forget", 3), ("cluster|getkeysinslot", 4), ("cluster|help", 2), ("cluster|info", 2),
    ("cluster|keyslot", 3), ("cluster|links", 2), ("cluster|meet", -4), ("cluster|migration", -2),
    ("cluster|myid", 2), ("cluster|myshardid", 2), ("cluster|nodes", 2), ("cluster|replicas", 3),
    ("cluster|replicate", 3), ("cluster|reset", -2), ("cluster|saveconfig", 2),
    ("cluster|set-config-epoch", 3), ("cluster|setslot", -4), ("cluster|shards", 2),
    ("cluster|slaves", 3), ("cluster|slot-stats", -2), ("cluster|slots", 2),
];

/// The lane commands without a key run on: for a cluster, the primary owning the lowest slot
/// (the first of [`Layout::primaries`]), or lane 0 (the first seed) while no slot has an owner;
/// for shards, the first server.
pub fn keyless_lane(layout: &Layout) -> Lane {
    layout.cluster().map_or(0, |cluster| {
        let map = cluster.map();
        (0..SLOTS as u16).find_map(|s| map.owner(s)).unwrap_or(0)
    })
}

/// `HELLO`'s answer from a node as a Redis without cluster gives it: `mode` is `standalone`
/// (RESP2 and RESP3 encode the pair alike). Unchanged for other upstreams.
pub fn hello_reply(layout: &Layout, reply: Bytes) -> Bytes {
    const CLUSTER: &[u8] = b"$4\r\nmode\r\n$7\r\ncluster\r\n";
    const STANDALONE: &[u8] = b"$4\r\nmode\r\n$10\r\nstandalone\r\n";
    let at = layout
        .cluster()
        .and_then(|_| reply.windows(CLUSTER.len()).position(|w| w == CLUSTER));
    match at {
        Some(at) => [&reply[..at], STANDALONE, &reply[at + CLUSTER.len()..]]
            .concat()
            .into(),
        None => reply,
    }
}

/// True when a cluster upstream plans the keyless command `name` itself.
pub(super) fn owns(name: &[u8]) -> bool {
    OWN.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// The plan of a keyless command a cluster upstream answers otherwise than the servers of a
/// sharded one; `None` for the others.
pub(super) fn plan(placer: &Placer, name: &[u8], args: Args<'_>) -> Option<Plan> {
    let is = |word: &[u8]| name.eq_ignore_ascii_case(word);
    let plan = if is(b"cluster") {
        Plan::Answer(cluster(args))
    } else if is(b"readonly") || is(b"readwrite") || is(b"asking") {
        Plan::Answer(match args.len() {
            1 => RedisError::ClusterDisabled.line(),
            _ if is(b"readonly") => RedisError::Arity("readonly").line(),
            _ if is(b"readwrite") => RedisError::Arity("readwrite").line(),
            _ => RedisError::Arity("asking").line(),
        })
    } else if is(b"info") {
        Plan::All(Merge::Info)
    } else if is(b"spublish") && args.len() == 3 {
        shard_channels(placer, args.iter().skip(1).take(1))
    } else if (is(b"ssubscribe") || is(b"sunsubscribe")) && args.len() > 1 {
        shard_channels(placer, args.iter().skip(1))
    } else {
        return None;
    };
    Some(plan)
}

/// A non-cluster Redis's answer to `CLUSTER ...`: its arity and unknown subcommand errors, else
/// that cluster support is disabled.
fn cluster(args: Args<'_>) -> Bytes {
    let Some(sub) = args.get(1) else {
        return RedisError::Arity("cluster").line();
    };
    let Some(&(name, arity)) = SUBCOMMANDS.iter().find(|(full, _)| {
        full.strip_prefix("cluster|")
            .is_some_and(|n| sub.eq_ignore_ascii_case(n.as_bytes()))
    }) else {
        return ErrorReply::UnknownClusterSubcommand(sub).line();
    };
    let argc = args.len();
    let fits = match usize::try_from(arity) {
        Ok(exact) => argc == exact,
        Err(_) => argc >= usize::from(arity.unsigned_abs()),
    };
    if fits {
        RedisError::ClusterDisabled.line()
    } else {
        RedisError::Arity(name).line()
    }
}

/// Shard channels route as keys do: to their slot's owner, `CROSSSLOT` when they are in several
/// slots (Redis's own answer), `CLUSTERDOWN` when no node serves the slot.
fn shard_channels<'a>(placer: &Placer, mut channels: impl Iterator<Item = &'a [u8]>) -> Plan {
    let Some(first) = channels.next() else {
        return Plan::Keyless;
    };
    let slot = key_slot(first);
    if channels.any(|c| key_slot(c) != slot) {
        return Plan::CrossShard;
    }
    match placer.locate(first) {
        Some((lane, _)) => Plan::Lane(lane),
        None => Plan::Refuse(RedisError::SlotNotServed.line()),
    }
}

/// `INFO` from every primary as one Redis that is not a cluster would answer it: the first
/// primary's text with `redis_mode:standalone` and `cluster_enabled:0`, and its keyspace section
/// the sum of every primary's (keys and expiring keys added, `avg_ttl` their mean weighted by
/// expiring keys). `None` when a part is not a text reply.
pub(super) fn info(parts: &[Bytes]) -> Option<Bytes> {
    let texts: Vec<(&[u8], &[u8])> = parts.iter().map(|p| text(p)).collect::<Option<_>>()?;
    let (head, first) = *texts.first()?;
    let mut dbs: Vec<Db<'_>> = Vec::new();
    for (_, text) in &texts {
        for db_line in lines(text).filter(|l| is_db_line(l)) {
            keyspace_add(&mut dbs, db_line)?;
        }
    }
    let mut out = BytesMut::with_capacity(first.len() + 64);
    for piece in first.split_inclusive(|&b| b == b'\n') {
        let text_line = piece.strip_suffix(b"\n").unwrap_or(piece);
        let text_line = text_line.strip_suffix(b"\r").unwrap_or(text_line);
        if is_db_line(text_line) {
            continue;
        }
        match text_line {
            b"redis_mode:cluster" => out.put_slice(b"redis_mode:standalone"),
            b"cluster_enabled:1" => out.put_slice(b"cluster_enabled:0"),
            other => out.put_slice(other),
        }
        out.put_slice(&piece[text_line.len()..]);
        if text_line == b"# Keyspace" {
            for db in &dbs {
                out.put_slice(db.name);
                out.put_u8(b':');
                for (i, (field, value)) in db.fields.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(b',');
                    }
                    out.put_slice(field);
                    out.put_slice(format!("={value}").as_bytes());
                }
                out.put_slice(b"\r\n");
            }
        }
    }
    let body = match head {
        // RESP3 verbatim text: `txt:` and the text.
        b"=" => [&b"txt:"[..], &out].concat(),
        _ => out.to_vec(),
    };
    let mut reply = BytesMut::with_capacity(body.len() + 16);
    reply.put_slice(head);
    reply.put_slice(body.len().to_string().as_bytes());
    reply.put_slice(b"\r\n");
    reply.put_slice(&body);
    reply.put_slice(b"\r\n");
    Some(reply.freeze())
}

/// The text of a bulk (`$`) or RESP3 verbatim (`=`, without its `txt:`) reply, and its type byte.
fn text(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let (header, rest) = line(frame)?;
    let head = header.get(..1)?;
    let len = usize::try_from(resp::parse_int(&header[1..])?).ok()?;
    let body = rest.get(..len)?;
    match head {
        b"$" => Some((head, body)),
        b"=" => Some((head, body.strip_prefix(b"txt:")?)),
        _ => None,
    }
}

/// The lines of an `INFO` text, without their CRLF.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    text.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
}

/// `db<n>:...`, a line of the keyspace section.
fn is_db_line(text_line: &[u8]) -> bool {
    text_line.starts_with(b"db") && text_line.contains(&b':')
}

/// A db of the keyspace section, summed over the primaries.
struct Db<'a> {
    /// `db0`.
    name: &'a [u8],
    /// Its fields in order and their sums; `avg_ttl` is the mean of the primaries' weighted by
    /// their expiring keys.
    fields: Vec<(&'a [u8], i64)>,
    /// The expiring keys counted so far (the weight of `avg_ttl`).
    expires: i64,
}

/// Adds one primary's `db0:keys=1,expires=0,avg_ttl=0` to the totals so far.
fn keyspace_add<'a>(dbs: &mut Vec<Db<'a>>, db_line: &'a [u8]) -> Option<()> {
    let colon = db_line.iter().position(|&b| b == b':')?;
    let (name, fields) = (&db_line[..colon], &db_line[colon + 1..]);
    let parsed: Vec<(&[u8], i64)> = fields
        .split(|&b| b == b',')
        .map(|field| {
            let eq = field.iter().position(|&b| b == b'=')?;
            Some((&field[..eq], resp::parse_int(&field[eq + 1..])?))
        })
        .collect::<Option<_>>()?;
    let expires = parsed
        .iter()
        .find(|(f, _)| *f == b"expires")
        .map_or(0, |(_, v)| *v);
    let at = match dbs.iter().position(|db| db.name == name) {
        Some(at) => at,
        None => {
            dbs.push(Db {
                name,
                fields: parsed.iter().map(|(f, _)| (*f, 0)).collect(),
                expires: 0,
            });
            dbs.len() - 1
        }
    };
    let db = &mut dbs[at];
    let before = db.expires;
    db.expires = db.expires.checked_add(expires)?;
    for (field, value) in parsed {
        let Some(total) = db.fields.iter_mut().find(|(f, _)| *f == field) else {
            continue;
        };
        total.1 = if field == b"avg_ttl" {
            let sum =
                i128::from(total.1) * i128::from(before) + i128::from(value) * i128::from(expires);
            i64::try_from(sum / i128::from(db.expires.max(1))).ok()?
        } else {
            total.1.checked_add(value)?
        };
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command;

    fn answer(words: &[&str]) -> Bytes {
        let inline: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        cluster(Args::Inline(&inline))
    }

    #[test]
    fn subcommands_are_those_of_the_command_table() {
        let known: Vec<&str> = command::SUBCOMMANDS
            .iter()
            .filter(|s| s.0 == "cluster")
            .map(|s| s.1)
            .collect();
        let ours: Vec<&str> = SUBCOMMANDS
            .iter()
            .filter_map(|s| s.0.strip_prefix("cluster|"))
            .collect();
        assert_eq!(ours, known);
    }

    #[test]
    fn cluster_answers_as_a_redis_without_cluster_support() {
        let disabled = b"-ERR This instance has cluster support disabled\r\n";
        for words in [
            &["CLUSTER", "SLOTS"][..],
            &["cluster", "nodes"],
            &["CLUSTER", "KEYSLOT", "foo"],
            &["CLUSTER", "setslot", "1", "node", "x"],
            &["CLUSTER", "SLOT-STATS", "SLOTSRANGE", "0", "1"],
        ] {
            assert_eq!(&answer(words)[..], disabled, "{words:?}");
        }
        assert_eq!(
            &answer(&["CLUSTER", "KEYSLOT"])[..],
            b"-ERR wrong number of arguments for 'cluster|keyslot' command\r\n"
        );
        assert_eq!(
            &answer(&["cluster", "info", "x"])[..],
            b"-ERR wrong number of arguments for 'cluster|info' command\r\n"
        );
        assert_eq!(
            &answer(&["CLUSTER"])[..],
            b"-ERR wrong number of arguments for 'cluster' command\r\n"
        );
        assert_eq!(
            &answer(&["cluster", "nosuch"])[..],
            b"-ERR unknown subcommand 'nosuch'. Try CLUSTER HELP.\r\n"
        );
        let long = "x".repeat(200);
        let line = answer(&["CLUSTER", &long]);
        assert_eq!(
            line.len(),
            "-ERR unknown subcommand ''. Try CLUSTER HELP.\r\n".len() + 128
        );
    }

    #[test]
    fn info_reads_as_one_redis_without_cluster() {
        let one = "# Server\r\nredis_mode:cluster\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=100\r\n";
        let two = "# Server\r\nredis_mode:cluster\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n\r\n# Keyspace\r\ndb0:keys=5,expires=3,avg_ttl=500\r\n";
        let empty = "# Server\r\nredis_mode:cluster\r\n\r\n# Cluster\r\ncluster_enabled:1\r\n\r\n# Keyspace\r\n";
        let bulk = |t: &str| Bytes::from(format!("${}\r\n{t}\r\n", t.len()));
        let merged = info(&[bulk(empty), bulk(one), bulk(two)]).unwrap();
        let want = "# Server\r\nredis_mode:standalone\r\n\r\n# Cluster\r\ncluster_enabled:0\r\n\r\n# Keyspace\r\ndb0:keys=8,expires=4,avg_ttl=400\r\n";
        assert_eq!(merged, bulk(want));
        let verbatim = |t: &str| Bytes::from(format!("={}\r\ntxt:{t}\r\n", t.len() + 4));
        let merged = info(&[verbatim(one), verbatim(two)]).unwrap();
        assert_eq!(merged, verbatim(want));
        assert!(info(&[Bytes::from_static(b":1\r\n")]).is_none());
        // No keyspace section asked: none written.
        let server = "# Server\r\nredis_mode:cluster\r\n";
        assert_eq!(
            info(&[bulk(server), bulk(server)]).unwrap(),
            bulk("# Server\r\nredis_mode:standalone\r\n")
        );
    }
}
