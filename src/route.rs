//! The routing step for an upstream of several servers: where a command runs, and how the replies
//! of a command split across servers (or sent to all of them) merge back into the one reply Redis
//! would give.
//!
//! [`plan`] is pure: (command, layout) → a [`Plan`]. The session carries it out (one lane, parts
//! on several lanes, a local answer, a refusal) and hands the parts' replies to [`Merge::merge`].
//! With one server nothing here runs: every command goes to lane 0 as it came. What a Redis
//! Cluster changes is in [`cluster`].

mod cluster;

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::{self, Args, Split};
use crate::reply::{self, ErrorReply, Lane, RedisError};
use crate::resp::{self, ReplyScanner};
use crate::topology::{Layout, Placer};

pub use cluster::{hello_reply, keyless_lane};

/// Bits of a `SCAN` cursor that say which server it is at: up to 1024 servers.
const SCAN_SHARD_BITS: u32 = 10;
/// Bits of a `SCAN` cursor, above the server's, that name the servers it was given for (a hash
/// of [`Layout::primaries`]): a cursor is only followed while they are the same.
const SCAN_TAG_BITS: u32 = 16;
/// Where a server's own cursor starts in respipe's.
const SCAN_SERVER_SHIFT: u32 = SCAN_SHARD_BITS + SCAN_TAG_BITS;

/// Where a command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// One server, the command unchanged.
    Lane(Lane),
    /// No key: the first server (a cluster's first primary, see [`keyless_lane`]), or the
    /// dedicated connection the session holds.
    Keyless,
    /// Parts of the command on several servers (one request each), their replies merged.
    Split { parts: Vec<Part>, merge: Merge },
    /// The command as it came on every server, the replies merged.
    All(Merge),
    /// The command rewritten for one server, its reply transformed (`SCAN`).
    Rewrite {
        lane: Lane,
        bytes: Bytes,
        merge: Merge,
    },
    /// respipe answers (`PING`, `ECHO`).
    Local(Bytes),
    /// respipe answers whatever the command's kind and the session's state, for an upstream that
    /// would answer otherwise (a cluster's `CLUSTER`, `READONLY`...): it never reaches a server.
    /// Inside a transaction it is refused (`EXEC` aborts), as its answer has no place in `EXEC`'s.
    Answer(Bytes),
    /// The command's keys are on several servers and it cannot be split.
    CrossShard,
    /// The command is refused with this error line.
    Refuse(Bytes),
}

/// One request of a command carried out on several servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The server it goes to.
    pub lane: Lane,
    /// The request.
    pub bytes: Bytes,
    /// On a cluster, the hash slot of its keys (it can be redirected); `None` without keys.
    pub slot: Option<u16>,
}

/// How replies from several servers become one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// `MGET`: element `i` of the answer is element `at[i].1` of part `at[i].0`'s array.
    Gather(Vec<(u16, u32)>),
    /// Integers added (`DEL`, `UNLINK`, `EXISTS`, `TOUCH`, `DBSIZE`).
    Sum,
    /// `+OK` when every part answers it (`MSET`, `FLUSHDB`, `FLUSHALL`, `SCRIPT FLUSH`).
    AllOk,
    /// Arrays concatenated (`KEYS`).
    Concat,
    /// Element-wise AND of integer arrays (`SCRIPT EXISTS`: a script exists where all have it).
    And,
    /// `+OK` when any part answers it, else the first error (`SCRIPT KILL`, `FUNCTION KILL`: only
    /// the server running the script can kill it).
    AnyOk,
    /// One answer stands for all: the first part's (`SCRIPT LOAD`, `FUNCTION LOAD`: the same
    /// from every server).
    First,
    /// `RANDOMKEY` from every server: the first key found, starting at part `start` (picked at
    /// random); nil only when every server is empty.
    AnyKey { start: usize },
    /// `SCAN` on server `lane` (an index into [`Layout::primaries`]) of `lanes`, given for the
    /// servers `tag` names: its cursor rewritten so the next call goes on there, or on the next
    /// server once this one is done.
    Scan { lane: Lane, lanes: Lane, tag: u16 },
    /// `INFO` from every primary of a cluster, as one Redis without cluster would answer it.
    Info,
}

/// Where a command's keys are.
enum Keyed {
    /// No key (or malformed arguments Redis will refuse).
    None,
    /// Every key on this server, in this group (the server for shards, the hash slot for a
    /// cluster).
    One(Lane, u16),
    /// Keys on several servers.
    Spread,
    /// Every server is ejected.
    NoLive,
}

/// Where `keys` are, looking no further than the first key in another group (another server;
/// for a cluster, another hash slot).
fn keyed(placer: &Placer, keys: &command::Keys<'_>) -> Keyed {
    let mut iter = keys.iter();
    let Some(first) = iter.next() else {
        return Keyed::None;
    };
    let Some((lane, group)) = placer.locate(first) else {
        return Keyed::NoLive;
    };
    for key in iter {
        match placer.locate(key) {
            Some((_, g)) if g == group => {}
            Some(_) => return Keyed::Spread,
            None => return Keyed::NoLive,
        }
    }
    Keyed::One(lane, group)
}

/// The server a command goes to unchanged, when that is all it needs: its keys are on one
/// server, or it has none and no server in particular answers it; with, on a cluster, the hash
/// slot of its keys (`None` without keys). `None` when [`plan`] must say.
pub fn lane(layout: &Layout, name: &[u8], args: Args<'_>) -> Option<(Lane, Option<u16>)> {
    let placer = layout.placer();
    match keyed(&placer, &command::keys(name, args)) {
        Keyed::One(lane, group) => {
            Some((lane, matches!(placer, Placer::Cluster(_)).then_some(group)))
        }
        Keyed::None if !planned(layout, name) => Some((keyless_lane(layout), None)),
        _ => None,
    }
}

/// True for the keyless commands [`plan`] places otherwise than on [`keyless_lane`].
fn planned(layout: &Layout, name: &[u8]) -> bool {
    KEYLESS.iter().any(|k| name.eq_ignore_ascii_case(k))
        || (layout.cluster().is_some() && cluster::owns(name))
}

/// Where a command runs on `layout` (several servers). `name` is the command name as sent;
/// `args` the whole request, the name first.
pub fn plan(layout: &Layout, name: &[u8], args: Args<'_>) -> Plan {
    let placer = layout.placer();
    let keys = command::keys(name, args);
    match keyed(&placer, &keys) {
        Keyed::None => layout
            .cluster()
            .and_then(|_| cluster::plan(&placer, name, args))
            .or_else(|| keyless(layout, name, args))
            .unwrap_or(Plan::Keyless),
        Keyed::One(lane, _) => Plan::Lane(lane),
        Keyed::NoLive => Plan::Refuse(no_live(layout)),
        Keyed::Spread => match keys.split() {
            Some(how) => split(&placer, name, args, how).unwrap_or(Plan::CrossShard),
            None => Plan::CrossShard,
        },
    }
}

/// The error for a key no server takes: every shard ejected, or a cluster slot without owner.
fn no_live(layout: &Layout) -> Bytes {
    match layout.cluster() {
        Some(_) => RedisError::SlotNotServed.line(),
        None => ErrorReply::NoLiveShard.line(),
    }
}

/// The error for a command whose keys are in several groups and that cannot be split: Redis
/// Cluster's own for a cluster, one naming respipe's sharding for shards.
pub fn cross_shard(layout: &Layout) -> Bytes {
    match layout.cluster() {
        Some(_) => RedisError::CrossSlot.line(),
        None => ErrorReply::CrossShard.line(),
    }
}

/// A command Redis lets a cluster split by key (`MGET`, `DEL`, `EXISTS`, `TOUCH`, `UNLINK`,
/// `MSET`), whose keys are on several servers: one part per server, keys in the client's order.
fn split(placer: &Placer, name: &[u8], args: Args<'_>, how: Split) -> Option<Plan> {
    let step = match how {
        Split::Keys => 1,
        Split::Pairs => 2,
    };
    let argv: Vec<&[u8]> = args.iter().collect();
    // Parts (one per group: server, or cluster slot) in order of first appearance; each holds
    // its argument indexes.
    let mut parts: Vec<(Lane, u16, Vec<usize>)> = Vec::new();
    let mut at = Vec::with_capacity(argv.len() / step);
    for pos in (1..argv.len()).step_by(step) {
        let (lane, group) = placer.locate(argv[pos])?;
        let index = match parts.iter().position(|(_, g, _)| *g == group) {
            Some(i) => i,
            None => {
                parts.push((lane, group, Vec::with_capacity(argv.len() / step)));
                parts.len() - 1
            }
        };
        at.push((index as u16, parts[index].2.len() as u32));
        parts[index].2.push(pos);
    }
    let cluster = matches!(placer, Placer::Cluster(_));
    let parts = parts
        .into_iter()
        .map(|(lane, group, positions)| {
            let mut part: Vec<&[u8]> = Vec::with_capacity(1 + positions.len() * step);
            part.push(argv[0]);
            for pos in positions {
                part.extend_from_slice(argv.get(pos..pos + step)?);
            }
            Some(Part {
                lane,
                bytes: resp::encode_request(&part),
                slot: cluster.then_some(group),
            })
        })
        .collect::<Option<_>>()?;
    let merge = if name.eq_ignore_ascii_case(b"mget") {
        Merge::Gather(at)
    } else if how == Split::Pairs {
        Merge::AllOk
    } else {
        Merge::Sum
    };
    Some(Plan::Split { parts, merge })
}

/// The keyless commands [`keyless`] answers with more (or less) than one server.
const KEYLESS: [&[u8]; 13] = [
    b"ping",
    b"echo",
    b"dbsize",
    b"keys",
    b"flushdb",
    b"flushall",
    b"randomkey",
    b"scan",
    b"script",
    b"function",
    b"config",
    b"slowlog",
    b"latency",
];

/// Commands without keys whose answer involves every server, or none (the README's table).
fn keyless(layout: &Layout, name: &[u8], args: Args<'_>) -> Option<Plan> {
    let is = |word: &str| name.eq_ignore_ascii_case(word.as_bytes());
    let sub_is = |word: &str| {
        args.get(1)
            .is_some_and(|sub| sub.eq_ignore_ascii_case(word.as_bytes()))
    };
    let n = args.len();
    let plan = if is("ping") && n == 1 {
        Plan::Local(Bytes::from_static(b"+PONG\r\n"))
    } else if (is("ping") || is("echo")) && n == 2 {
        Plan::Local(reply::bulk(args.get(1)?))
    } else if is("dbsize") {
        Plan::All(Merge::Sum)
    } else if is("keys") {
        Plan::All(Merge::Concat)
    } else if is("flushdb") || is("flushall") {
        Plan::All(Merge::AllOk)
    } else if is("randomkey") {
        Plan::All(Merge::AnyKey {
            start: fastrand::usize(..layout.primaries().len().max(1)),
        })
    } else if is("scan") && n >= 2 {
        scan(layout, args)
    } else if is("script") && (sub_is("load")) {
        Plan::All(Merge::First)
    } else if is("script") && sub_is("flush") {
        Plan::All(Merge::AllOk)
    } else if is("script") && sub_is("exists") {
        Plan::All(Merge::And)
    } else if (is("script") || is("function")) && sub_is("kill") {
        // The busy script or function is on one server: the others say NOTBUSY.
        Plan::All(Merge::AnyOk)
    } else if (is("config") && (sub_is("set") || sub_is("resetstat") || sub_is("rewrite")))
        || (is("slowlog") && sub_is("reset"))
    {
        Plan::All(Merge::AllOk)
    } else if is("latency") && sub_is("reset") {
        Plan::All(Merge::Sum)
    } else if is("function") && sub_is("load") {
        Plan::All(Merge::First)
    } else if is("function") && (sub_is("flush") || sub_is("delete") || sub_is("restore")) {
        Plan::All(Merge::AllOk)
    } else {
        return None;
    };
    Some(plan)
}

/// `SCAN cursor ...`: the cursor says which server and where on it (`server_cursor << 26 | tag
/// << 10 | server`, the server an index into [`Layout::primaries`], the tag naming those
/// primaries); the request goes there with the server's own cursor. A cursor given for other
/// primaries (a cluster's failover or resharding changed them, or their order) is refused: where
/// it points is no longer known, and going on could skip a whole server's keys.
fn scan(layout: &Layout, args: Args<'_>) -> Plan {
    let argv: Vec<&[u8]> = args.iter().collect();
    let Some(cursor) = std::str::from_utf8(argv[1])
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Plan::Refuse(RedisError::InvalidCursor.line());
    };
    let primaries = layout.primaries();
    let tag = scan_tag(&primaries);
    let index = cursor & ((1 << SCAN_SHARD_BITS) - 1);
    if cursor != 0 && (cursor >> SCAN_SHARD_BITS) & ((1 << SCAN_TAG_BITS) - 1) != u64::from(tag) {
        return Plan::Refuse(ErrorReply::ScanTopologyChanged.line());
    }
    let Some(&lane) = primaries.get(index as usize) else {
        return Plan::Refuse(if primaries.is_empty() {
            no_live(layout)
        } else {
            RedisError::InvalidCursor.line()
        });
    };
    let server_cursor = (cursor >> SCAN_SERVER_SHIFT).to_string();
    let mut rewritten = argv;
    rewritten[1] = server_cursor.as_bytes();
    Plan::Rewrite {
        lane,
        bytes: resp::encode_request(&rewritten),
        merge: Merge::Scan {
            lane: index as Lane,
            lanes: primaries.len() as Lane,
            tag,
        },
    }
}

/// A hash of the servers a `SCAN` visits, in order (FNV-1a folded to 16 bits).
fn scan_tag(primaries: &[Lane]) -> u16 {
    let hash = primaries
        .iter()
        .flat_map(|lane| lane.to_le_bytes())
        .fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
    (hash ^ (hash >> 16)) as u16
}

impl Merge {
    /// The one reply for the client from the parts' replies (one complete frame each, in part
    /// order). An error from any part is the answer (the first one).
    pub fn merge(&self, parts: &[Bytes]) -> Bytes {
        if *self == Merge::AnyOk && parts.iter().any(|p| p.as_ref() == b"+OK\r\n") {
            return reply::OK;
        }
        if let Some(error) = parts
            .iter()
            .find(|p| matches!(p.first(), Some(b'-' | b'!')))
        {
            return error.clone();
        }
        let merged = match self {
            Merge::Gather(at) => gather(parts, at),
            Merge::Sum => sum(parts),
            Merge::AllOk => all_ok(parts),
            Merge::Concat => concat(parts),
            Merge::And => and(parts),
            Merge::First | Merge::AnyOk => parts.first().cloned(),
            Merge::AnyKey { start } => {
                let found = (0..parts.len())
                    .map(|i| &parts[(start + i) % parts.len()])
                    .find(|p| !matches!(p.as_ref(), b"$-1\r\n" | b"_\r\n"));
                Some(found.unwrap_or(&parts[0]).clone())
            }
            Merge::Scan { lane, lanes, tag } => parts
                .first()
                .and_then(|p| scan_reply(p, *lane, *lanes, *tag)),
            Merge::Info => cluster::info(parts),
        };
        merged.unwrap_or_else(|| ErrorReply::UnexpectedShardReply.line())
    }
}

/// The elements of an array reply (`*n` or RESP3 `~n` set), as slices of it.
fn elements(frame: &[u8]) -> Option<Vec<&[u8]>> {
    let (head, rest) = line(frame)?;
    if !matches!(head.first(), Some(b'*' | b'~')) {
        return None;
    }
    let n = usize::try_from(resp::parse_int(&head[1..])?).ok()?;
    let mut out = Vec::with_capacity(n);
    let mut at = frame.len() - rest.len();
    let mut scanner = ReplyScanner::new(resp::DEFAULT_MAX_REPLY_DEPTH);
    for _ in 0..n {
        let element = scanner.scan(&frame[at..]).ok()??;
        out.push(&frame[at..at + element.len]);
        at += element.len;
    }
    Some(out)
}

/// The first line of a frame (without CRLF) and what follows it.
fn line(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = frame.windows(2).position(|w| w == b"\r\n")?;
    Some((&frame[..end], &frame[end + 2..]))
}

/// An integer reply's value.
fn integer(frame: &[u8]) -> Option<i64> {
    let (head, _) = line(frame)?;
    let digits = head.strip_prefix(b":")?;
    resp::parse_int(digits)
}

/// An array reply of `elements`.
fn array<E: AsRef<[u8]>>(elements: &[E]) -> Bytes {
    let size: usize = elements.iter().map(|e| e.as_ref().len()).sum();
    let mut out = BytesMut::with_capacity(size + 24);
    out.put_slice(format!("*{}\r\n", elements.len()).as_bytes());
    for element in elements {
        out.put_slice(element.as_ref());
    }
    out.freeze()
}

fn gather(parts: &[Bytes], at: &[(u16, u32)]) -> Option<Bytes> {
    let parts: Vec<Vec<&[u8]>> = parts.iter().map(|p| elements(p)).collect::<Option<_>>()?;
    let picked: Vec<&[u8]> = at
        .iter()
        .map(|&(part, i)| parts.get(usize::from(part))?.get(i as usize).copied())
        .collect::<Option<_>>()?;
    Some(array(&picked))
}

fn sum(parts: &[Bytes]) -> Option<Bytes> {
    let mut total: i64 = 0;
    for part in parts {
        total = total.checked_add(integer(part)?)?;
    }
    Some(Bytes::from(format!(":{total}\r\n")))
}

fn all_ok(parts: &[Bytes]) -> Option<Bytes> {
    parts
        .iter()
        .all(|p| p.as_ref() == b"+OK\r\n")
        .then_some(reply::OK)
}

fn concat(parts: &[Bytes]) -> Option<Bytes> {
    let mut all = Vec::new();
    for part in parts {
        all.extend(elements(part)?);
    }
    Some(array(&all))
}

fn and(parts: &[Bytes]) -> Option<Bytes> {
    let mut flags: Option<Vec<i64>> = None;
    for part in parts {
        let values: Vec<i64> = elements(part)?
            .iter()
            .map(|e| integer(e))
            .collect::<Option<_>>()?;
        flags = Some(match flags {
            None => values,
            Some(acc) if acc.len() == values.len() => {
                acc.iter().zip(&values).map(|(a, b)| (*a).min(*b)).collect()
            }
            Some(_) => return None,
        });
    }
    let flags = flags?;
    let flags: Vec<String> = flags.iter().map(|f| format!(":{f}\r\n")).collect();
    Some(array(&flags))
}

/// A server's `SCAN` reply with respipe's cursor in place of the server's. respipe's cursors stay
/// below 2^63 (clients may read them as signed integers).
fn scan_reply(frame: &Bytes, lane: Lane, lanes: Lane, tag: u16) -> Option<Bytes> {
    let parts = elements(frame)?;
    let [cursor, keys] = parts.as_slice() else {
        return None;
    };
    let (_, rest) = line(cursor)?;
    let (value, _) = line(rest)?;
    let server: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
    let at = |server: u64, lane: Lane| {
        (server < 1 << (63 - SCAN_SERVER_SHIFT)).then(|| {
            server << SCAN_SERVER_SHIFT | u64::from(tag) << SCAN_SHARD_BITS | u64::from(lane)
        })
    };
    let next = match server {
        // This server is done: the next one from its start, or the end.
        0 if lane + 1 < lanes => at(0, lane + 1)?,
        0 => 0,
        _ => at(server, lane)?,
    };
    Some(array(&[
        &reply::bulk(next.to_string().as_bytes())[..],
        keys,
    ]))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::cluster::{key_slot, Spec};
    use crate::config::{Topology, Upstream};
    use crate::upstream::UpstreamSettings;

    /// A cluster of three seeds (lanes 0, 1, 2) whose map has only these slots owned. Outside a
    /// runtime nothing refreshes it.
    fn cluster_layout(owners: &[(u16, Lane)]) -> Arc<Layout> {
        let seeds: Vec<Upstream> = (0..3)
            .map(|i| Upstream::tcp("127.0.0.1", 7000 + i))
            .collect();
        let probe = UpstreamSettings::for_tests(seeds[0].clone());
        let first = seeds[0].clone();
        let topology = Topology::Cluster(Spec { seeds });
        let layout = Layout::new(&first, &topology, &Default::default(), &probe);
        for &(slot, lane) in owners {
            layout.cluster().unwrap().moved(slot, lane);
        }
        layout
    }

    fn planned(layout: &Layout, words: &[&str]) -> Plan {
        let inline: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        plan(layout, &inline[0], Args::Inline(&inline))
    }

    fn lane_of(layout: &Layout, words: &[&str]) -> Option<Lane> {
        let inline: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
        lane(layout, &inline[0], Args::Inline(&inline)).map(|(lane, _)| lane)
    }

    #[test]
    fn a_cluster_places_keyless_commands_on_its_first_primary() {
        assert_eq!(
            keyless_lane(&cluster_layout(&[])),
            0,
            "no map yet: the first seed"
        );
        let layout = cluster_layout(&[(100, 2), (200, 1)]);
        assert_eq!(keyless_lane(&layout), 2);
        assert_eq!(lane_of(&layout, &["TIME"]), Some(2));
        assert_eq!(lane_of(&layout, &["PUBLISH", "ch", "m"]), Some(2));
        // Answered, merged or routed by channel: never in a run.
        for words in [
            &["CLUSTER", "SLOTS"][..],
            &["INFO"],
            &["READONLY"],
            &["SPUBLISH", "ch", "m"],
        ] {
            assert_eq!(lane_of(&layout, words), None, "{words:?}");
        }
        assert_eq!(
            planned(&layout, &["INFO", "keyspace"]),
            Plan::All(Merge::Info)
        );
        let hello = |mode: &str| {
            Bytes::from(format!(
                "%2\r\n$5\r\nproto\r\n:3\r\n$4\r\nmode\r\n${}\r\n{mode}\r\n",
                mode.len()
            ))
        };
        assert_eq!(hello_reply(&layout, hello("cluster")), hello("standalone"));
        assert_eq!(
            planned(&layout, &["cluster", "nodes"]),
            Plan::Answer(RedisError::ClusterDisabled.line())
        );
    }

    #[test]
    fn a_cluster_routes_shard_channels_by_slot_and_speaks_its_errors() {
        let (a, b) = (key_slot(b"a"), key_slot(b"b"));
        let layout = cluster_layout(&[(a, 1), (b, 2)]);
        assert_eq!(planned(&layout, &["SPUBLISH", "a", "m"]), Plan::Lane(1));
        assert_eq!(planned(&layout, &["SSUBSCRIBE", "b"]), Plan::Lane(2));
        assert_eq!(
            planned(&layout, &["SUNSUBSCRIBE", "a", "{a}x"]),
            Plan::Lane(1)
        );
        assert_eq!(
            planned(&layout, &["SSUBSCRIBE", "a", "b"]),
            Plan::CrossShard
        );
        assert_eq!(planned(&layout, &["SUNSUBSCRIBE"]), Plan::Keyless);
        let unserved = Plan::Refuse(RedisError::SlotNotServed.line());
        assert_eq!(planned(&layout, &["SPUBLISH", "c", "m"]), unserved);
        assert_eq!(planned(&layout, &["GET", "c"]), unserved);
        assert_eq!(
            planned(&layout, &["MSETNX", "a", "1", "b", "2"]),
            Plan::CrossShard
        );
        assert_eq!(
            &cross_shard(&layout)[..],
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n"
        );
    }

    #[test]
    fn a_scan_cursor_holds_only_while_the_primaries_do() {
        let layout = cluster_layout(&[(0, 0), (100, 1), (200, 2)]);
        let Plan::Rewrite { lane: 0, merge, .. } = planned(&layout, &["SCAN", "0"]) else {
            panic!("SCAN 0 starts on the first primary");
        };
        let Merge::Scan { tag, .. } = merge else {
            panic!("{merge:?}");
        };
        let cursor = (5u64 << 26 | u64::from(tag) << 10 | 1).to_string();
        let Plan::Rewrite { lane, bytes, .. } = planned(&layout, &["SCAN", &cursor]) else {
            panic!("SCAN {cursor}");
        };
        assert_eq!(lane, 1);
        assert_eq!(&bytes[..], b"*2\r\n$4\r\nSCAN\r\n$1\r\n5\r\n");
        // Slot 0 moves to lane 2: the primaries by lowest slot are now 2, 1.
        layout.cluster().unwrap().moved(0, 2);
        assert_eq!(
            planned(&layout, &["SCAN", &cursor]),
            Plan::Refuse(ErrorReply::ScanTopologyChanged.line())
        );
        assert!(matches!(
            planned(&layout, &["SCAN", "0"]),
            Plan::Rewrite { lane: 2, .. }
        ));
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn gather_puts_elements_back_in_key_order() {
        let parts = [b("*2\r\n$1\r\na\r\n$-1\r\n"), b("*1\r\n$2\r\nbb\r\n")];
        let merged = Merge::Gather(vec![(1, 0), (0, 0), (0, 1)]).merge(&parts);
        assert_eq!(merged, b("*3\r\n$2\r\nbb\r\n$1\r\na\r\n$-1\r\n"));
    }

    #[test]
    fn sums_and_errors() {
        assert_eq!(Merge::Sum.merge(&[b(":2\r\n"), b(":3\r\n")]), b(":5\r\n"));
        let err = b("-ERR x\r\n");
        assert_eq!(Merge::Sum.merge(&[b(":2\r\n"), err.clone()]), err);
        assert_eq!(Merge::AllOk.merge(&[b("+OK\r\n"), b("+OK\r\n")]), reply::OK);
        let notbusy = b("-NOTBUSY No scripts in execution right now.\r\n");
        let parts = [notbusy.clone(), b("+OK\r\n"), notbusy.clone()];
        assert_eq!(Merge::AnyOk.merge(&parts), reply::OK);
        assert_eq!(
            Merge::AnyOk.merge(&[notbusy.clone(), notbusy.clone()]),
            notbusy
        );
    }

    #[test]
    fn concat_and_and() {
        let merged = Merge::Concat.merge(&[b("*1\r\n$1\r\na\r\n"), b("*0\r\n")]);
        assert_eq!(merged, b("*1\r\n$1\r\na\r\n"));
        let merged = Merge::And.merge(&[b("*2\r\n:1\r\n:1\r\n"), b("*2\r\n:0\r\n:1\r\n")]);
        assert_eq!(merged, b("*2\r\n:0\r\n:1\r\n"));
    }

    #[test]
    fn scan_cursor_names_the_server_and_the_servers() {
        let scan = |lane, lanes| Merge::Scan {
            lane,
            lanes,
            tag: 5,
        };
        let reply = b("*2\r\n$2\r\n17\r\n*1\r\n$1\r\nk\r\n");
        let merged = scan(1, 3).merge(&[reply]);
        let cursor = (17u64 << 26 | 5 << 10 | 1).to_string();
        let want = format!("*2\r\n${}\r\n{cursor}\r\n*1\r\n$1\r\nk\r\n", cursor.len());
        assert_eq!(merged, b(&want));
        let done = b("*2\r\n$1\r\n0\r\n*0\r\n");
        let merged = scan(1, 3).merge(std::slice::from_ref(&done));
        assert_eq!(merged, b("*2\r\n$4\r\n5122\r\n*0\r\n"));
        let merged = scan(2, 3).merge(&[done]);
        assert_eq!(merged, b("*2\r\n$1\r\n0\r\n*0\r\n"));
        // A server cursor that would not fit below 2^63: an error, never a wrong cursor.
        let huge = b("*2\r\n$19\r\n1000000000000000000\r\n*0\r\n");
        assert_eq!(
            scan(0, 3).merge(&[huge]),
            ErrorReply::UnexpectedShardReply.line()
        );
    }

    #[test]
    fn scan_tags_differ_when_the_servers_or_their_order_do() {
        let tags = [
            scan_tag(&[0, 1, 2]),
            scan_tag(&[0, 2, 1]),
            scan_tag(&[0, 1, 6]),
            scan_tag(&[0, 1]),
        ];
        for (i, a) in tags.iter().enumerate() {
            assert!(tags[i + 1..].iter().all(|b| a != b), "{tags:?}");
        }
    }
}
