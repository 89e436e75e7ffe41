//! Reply framing on shared connections (issue 10, item 1 and the push part of item 7): every
//! command respipe puts on a shared connection is answered with a number of frames respipe knows,
//! so no frame reaches another client. Checked byte for byte against what Redis sends a direct
//! connection for the same bytes, with other clients interleaving on the same shared connection,
//! on the differential harness (`common/differential.rs`).

mod common;
#[path = "common/differential.rs"]
mod differential;

use std::time::Duration;

use common::{bounded, encode, Proxy, RawClient, RedisServer, Reply};
use differential::Scenario;
use respipe::command::{self, Args, Class, NoKey};

const LIMIT: Duration = Duration::from_secs(120);

/// The repro, for one unsubscribe form, as steps of clients `a` and `b` (RESP `proto`): B
/// has a key; A (not subscribed) unsubscribes; B's next reply must be its own, and A's answer must
/// be exactly what Redis sends (what remains of it is read when A quits).
fn unsubscribe_case(s: Scenario, (a, b): (usize, usize), proto: u8, request: &[&str]) -> Scenario {
    s.protocol(a, proto)
        .protocol(b, proto)
        .expect(b, &[&["SET", "keyB", "valueB"]], &["+OK\r\n"])
        .write(a, &[request])
        // A's first frame: the command has been answered on the shared connection, before B's GET.
        .read(a, 1)
        .expect(b, &[&["GET", "keyB"]], &["$6\r\nvalueB\r\n"])
        .quit(a)
        .quit(b)
}

/// How many frames Redis answers a client that is not subscribed for a command of the interleaved
/// script: one per channel (at least one) for an unsubscribe, one for anything else.
fn frames_outside_subscribe_mode(command: &[&str]) -> usize {
    match command[0] {
        "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "SUNSUBSCRIBE" => (command.len() - 1).max(1),
        _ => 1,
    }
}

/// `(P|S)UNSUBSCRIBE` with 0, 1 and 3 channels from a client that is not subscribed, in RESP2 and
/// RESP3: Redis answers one frame per channel (RESP3: pushes), and each goes to that client.
#[tokio::test]
async fn unsubscribe_outside_subscribe_mode_stays_with_its_client() {
    for proto in [2, 3] {
        let mut s = Scenario::new(&format!("RESP{proto} unsubscribe framing"));
        let mut clients = (0..).step_by(2).map(|a| (a, a + 1));
        for name in ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"] {
            for channels in [&[][..], &["foo"], &["foo", "bar", "quux"]] {
                let request: Vec<&str> = std::iter::once(name)
                    .chain(channels.iter().copied())
                    .collect();
                let pair = clients.next().expect("endless");
                s = unsubscribe_case(s, pair, proto, &request);
            }
        }
        s.run().await;
    }
}

/// Several clients pipelining their own SET/GETs on the same shared connection while one client
/// sends every unsubscribe form, pipelined with PINGs: every client gets exactly its own replies,
/// and the unsubscriber exactly what Redis sends. Each round every client writes before any reads,
/// so their commands interleave on the shared connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribes_interleaved_with_other_clients() {
    const OTHERS: usize = 4;
    const ROUNDS: usize = 10;
    /// SET/GET pairs each other client pipelines per round (50 in all, as each used to do).
    const PAIRS: usize = 5;
    let script: Vec<Vec<&str>> = (0..20)
        .flat_map(|i| {
            let name = ["UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"][i % 3];
            let channels = &["a", "b", "c", "d"][..i % 5];
            [
                std::iter::once(name)
                    .chain(channels.iter().copied())
                    .collect(),
                vec!["PING"],
            ]
        })
        .collect();
    let script: Vec<&[&str]> = script.iter().map(Vec::as_slice).collect();
    let frames: usize = script
        .iter()
        .map(|c| frames_outside_subscribe_mode(c))
        .sum();
    for proto in [2u8, 3] {
        let a = OTHERS;
        let mut s = Scenario::new(&format!("RESP{proto} interleaved unsubscribes"));
        for c in 0..=OTHERS {
            s = s.protocol(c, proto);
        }
        for round in 0..ROUNDS {
            let mut wants = Vec::new();
            for id in 0..OTHERS {
                let key = format!("k{id}");
                let values: Vec<String> = (0..PAIRS)
                    .map(|i| format!("v{id}-{}", round * PAIRS + i))
                    .collect();
                let pipeline = values
                    .iter()
                    .flat_map(|v| [encode(&["SET", &key, v]), encode(&["GET", &key])].concat())
                    .collect();
                s = s.write_bytes(id, pipeline);
                wants.push(values);
            }
            s = s.write(a, &script).read(a, frames);
            for (id, values) in wants.iter().enumerate() {
                let want: Vec<String> = values
                    .iter()
                    .flat_map(|v| ["+OK\r\n".to_owned(), format!("${}\r\n{v}\r\n", v.len())])
                    .collect();
                let want: Vec<&str> = want.iter().map(String::as_str).collect();
                s = s.read_expect(id, &want);
            }
        }
        s.run().await;
    }
}

/// An unsubscribe queued in a transaction: Redis counts it as one element of `EXEC`'s array but
/// writes each confirmation as a frame of its own. The client gets exactly Redis's bytes, and its
/// next reply is its own; also when the transaction does not run (`DISCARD`, `EXECABORT`, a
/// `WATCH` conflict).
#[tokio::test]
async fn unsubscribe_queued_in_a_transaction() {
    let scripts: &[&[&[&str]]] = &[
        &[
            &["MULTI"],
            &["UNSUBSCRIBE", "a", "b", "c"],
            &["PING"],
            &["PUNSUBSCRIBE"],
            &["EXEC"],
            &["PING", "after"],
        ],
        &[&["MULTI"], &["SUNSUBSCRIBE", "a", "b"], &["EXEC"]],
        &[
            &["MULTI"],
            &["UNSUBSCRIBE", "a", "b"],
            &["DISCARD"],
            &["PING", "after"],
        ],
        &[
            &["MULTI"],
            &["UNSUBSCRIBE", "a", "b"],
            &["NOSUCHCOMMAND"],
            &["EXEC"],
            &["PING", "after"],
        ],
        &[
            &["MULTI"],
            &["UNSUBSCRIBE", "a", "b"],
            &["EXEC"],
            &["MULTI"],
            &["PING"],
            &["EXEC"],
        ],
    ];
    for proto in [2u8, 3] {
        let mut s = Scenario::new(&format!("RESP{proto} unsubscribe in MULTI"));
        // Each script on a connection of its own; quitting reads and compares all it got.
        for (c, script) in scripts.iter().enumerate() {
            s = s.protocol(c, proto).write(c, script).quit(c);
        }
        // A WATCH conflict: EXEC answers a null, and nothing else.
        let (c, other) = (scripts.len(), scripts.len() + 1);
        s.protocol(c, proto)
            .protocol(other, proto)
            .each(c, &[&["WATCH", "w"]])
            .each(other, &[&["SET", "w", "changed"]])
            .write(c, &[&["MULTI"], &["UNSUBSCRIBE", "a", "b"], &["EXEC"]])
            .quit(c)
            .run()
            .await;
    }
}

/// A user denied `unsubscribe` gets Redis's one `-NOPERM` error (not one frame per channel), and the
/// next client on the shared connection still gets its own replies.
#[tokio::test]
async fn denied_unsubscribe_is_one_error() {
    let setuser = [
        "ACL",
        "SETUSER",
        "u",
        "on",
        ">p",
        "+@all",
        "-unsubscribe",
        "~*",
    ];
    let noperm = "-NOPERM this user has no permissions to run the 'unsubscribe' command\r\n";
    for proto in [2u8, 3] {
        let (admin, a, b) = (0, 1, 2);
        Scenario::new(&format!("RESP{proto} denied unsubscribe"))
            .expect(admin, &[&setuser], &["+OK\r\n"])
            .protocol(a, proto)
            .protocol(b, proto)
            .expect(
                a,
                &[&["AUTH", "u", "p"], &["UNSUBSCRIBE", "foo", "bar", "quux"]],
                &["+OK\r\n", noperm],
            )
            .quit(a)
            // B runs as the same user, so on the same shared connection.
            .expect(
                b,
                &[&["AUTH", "u", "p"], &["SET", "kb", "vb"], &["GET", "kb"]],
                &["+OK\r\n", "+OK\r\n", "$2\r\nvb\r\n"],
            )
            .run()
            .await;
    }
}

/// `DEBUG PROTOCOL push` in RESP3: Redis sends a push frame, then the reply; respipe hands both to
/// the client that asked (a shared connection has no subscriptions, so a push can only come from
/// the command at the head of its FIFO), and the next client's reply stays its own.
#[tokio::test]
async fn a_push_caused_by_a_command_reaches_its_client() {
    // Every other RESP3 type DEBUG PROTOCOL makes is one frame (an attribute with its value).
    let script: &[&[&str]] = &[
        &["DEBUG", "PROTOCOL", "push"],
        &["PING"],
        &["DEBUG", "PROTOCOL", "push"],
        &["DEBUG", "PROTOCOL", "attrib"],
        &["DEBUG", "PROTOCOL", "verbatim"],
        &["DEBUG", "PROTOCOL", "bignum"],
        &["DEBUG", "PROTOCOL", "map"],
        &["DEBUG", "PROTOCOL", "set"],
        &["DEBUG", "PROTOCOL", "double"],
        &["DEBUG", "PROTOCOL", "null"],
        &["DEBUG", "PROTOCOL", "true"],
    ];
    // Two frames for each push, one for everything else.
    let frames = script.len() + 2;
    let push = ">2\r\n$16\r\nserver-cpu-usage\r\n:42\r\n";
    let (a, b, c) = (0, 1, 2);
    let mut s = Scenario::new("DEBUG PROTOCOL push")
        .protocol(a, 3)
        .protocol(b, 3);
    for _round in 0..5 {
        s = s
            .write(a, script)
            .write(b, &[&["ECHO", "mine"]])
            .read_expect(a, &[push])
            .read(a, frames - 1)
            .read_expect(b, &["$4\r\nmine\r\n"]);
    }
    // In RESP2 Redis refuses it with one error.
    s.write(c, script).quit(c).run().await;
}

/// `SCRIPT DEBUG YES` would make the shared connection's next `EVAL`, whoever sends it, a Lua
/// debugger session: refused; `SCRIPT DEBUG NO` changes nothing and is forwarded.
#[tokio::test]
async fn script_debug_is_refused_on_shared_connections() {
    bounded(LIMIT, "SCRIPT DEBUG", async {
        let redis = RedisServer::start().await;
        let proxy = Proxy::ready(&redis).await;
        let mut a = RawClient::connect(proxy.addr()).await;
        let mut b = RawClient::connect(proxy.addr()).await;
        for mode in ["YES", "sync"] {
            let reply = a.cmd(&["SCRIPT", "DEBUG", mode]).await;
            let text = reply.error_text().unwrap_or_default().to_owned();
            assert!(
                text.starts_with("ERR respipe:") && text.contains("Lua debugger"),
                "{mode}: {reply:?}"
            );
            assert_eq!(b.cmd(&["EVAL", "return 1", "0"]).await, Reply::Int(1));
        }
        assert_eq!(a.cmd(&["SCRIPT", "DEBUG", "NO"]).await, Reply::ok());
    })
    .await;
}

/// Every command and subcommand in a server's `COMMAND` reply, by name (`container|sub` for a
/// subcommand, from element 10 of its container's entry), each with the fields of its entry.
fn command_entries(entries: &[Reply]) -> Vec<(String, &[Reply])> {
    let mut all = Vec::new();
    for entry in entries {
        let Reply::Array(Some(fields)) = entry else {
            panic!("COMMAND entry is not an array: {entry:?}");
        };
        let Some(Reply::Bulk(Some(name))) = fields.first() else {
            panic!("COMMAND entry without a name: {fields:?}");
        };
        all.push((
            String::from_utf8_lossy(name).into_owned(),
            fields.as_slice(),
        ));
        if let Some(Reply::Array(Some(subs))) = fields.get(9) {
            all.extend(command_entries(subs));
        }
    }
    all
}

/// The server's `COMMAND` reply, as [`command_entries`] takes it.
async fn command_reply(c: &mut RawClient) -> Vec<Reply> {
    let Reply::Array(Some(entries)) = c.cmd(&["COMMAND"]).await else {
        panic!("COMMAND is not an array");
    };
    entries
}

/// Every command and subcommand of the server the test starts (its own `COMMAND` reply: names, and
/// subcommands from element 10 of each entry) is in respipe's command table, so each one's reply
/// count is known, or it is leased, answered locally or refused. A command Redis adds that could
/// answer with more than one frame cannot slip through as an unknown, one-reply command.
#[tokio::test]
async fn every_redis_command_is_classified() {
    bounded(LIMIT, "COMMAND walk", async {
        let redis = RedisServer::start().await;
        let mut c = redis.direct().await;
        let entries = command_reply(&mut c).await;
        let names: Vec<String> = command_entries(&entries)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert!(names.len() > 300, "only {} commands listed", names.len());
        let unknown: Vec<&String> = names
            .iter()
            .filter(|name| {
                let found: Option<Class> = match name.split_once('|') {
                    Some((container, sub)) => {
                        command::class(container.as_bytes(), Some(sub.as_bytes()))
                    }
                    None => command::class(name.as_bytes(), None),
                };
                found.is_none()
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "not in respipe's command table (reply count unknown): {unknown:?}"
        );
    })
    .await;
}

/// Arguments (after the name, or container and subcommand) for the commands whose keys move with
/// their arguments (`movablekeys`), where a row of placeholders says nothing.
const KEY_SAMPLES: &[(&str, &[&[&str]])] = &[
    (
        "blmpop",
        &[&["0", "2", "a", "b", "LEFT"], &["0", "1", "a", "RIGHT"]],
    ),
    ("bzmpop", &[&["0", "2", "a", "b", "MIN"]]),
    ("eval", SCRIPT_SAMPLES),
    ("eval_ro", SCRIPT_SAMPLES),
    ("evalsha", SCRIPT_SAMPLES),
    ("evalsha_ro", SCRIPT_SAMPLES),
    ("fcall", SCRIPT_SAMPLES),
    ("fcall_ro", SCRIPT_SAMPLES),
    (
        "georadius",
        &[
            &["k", "0", "0", "1", "km"],
            &["k", "0", "0", "1", "km", "STORE", "d"],
            &["k", "0", "0", "1", "km", "WITHDIST", "storedist", "d"],
        ],
    ),
    (
        "georadiusbymember",
        &[
            &["k", "m", "1", "km"],
            &["k", "m", "1", "km", "COUNT", "1", "STORE", "d"],
        ],
    ),
    ("lmpop", COUNTED_SAMPLES),
    (
        "migrate",
        &[
            &["h", "1", "k", "0", "10"],
            &["h", "1", "k", "0", "10", "COPY", "REPLACE"],
            &["h", "1", "", "0", "10", "KEYS", "a", "b"],
            &[
                "h", "1", "", "0", "10", "REPLACE", "AUTH2", "u", "p", "KEYS", "a",
            ],
        ],
    ),
    ("sintercard", COUNTED_SAMPLES),
    (
        "sort",
        &[
            &["k"],
            &["k", "BY", "w_*", "STORE", "d"],
            &["k", "LIMIT", "0", "1", "GET", "#", "ALPHA", "store", "d"],
        ],
    ),
    ("sort_ro", &[&["k"], &["k", "BY", "w_*", "GET", "#"]]),
    (
        "xread",
        &[
            &["STREAMS", "a", "0"],
            &["COUNT", "1", "STREAMS", "a", "b", "0", "0"],
        ],
    ),
    (
        "xreadgroup",
        &[
            &["GROUP", "g", "c", "STREAMS", "a", ">"],
            &[
                "GROUP", "g", "c", "COUNT", "1", "NOACK", "STREAMS", "a", "b", ">", ">",
            ],
        ],
    ),
    ("zdiff", COUNTED_SAMPLES),
    ("zdiffstore", STORE_SAMPLES),
    ("zinter", COUNTED_SAMPLES),
    ("zintercard", COUNTED_SAMPLES),
    ("zinterstore", STORE_SAMPLES),
    ("zmpop", COUNTED_SAMPLES),
    ("zunion", COUNTED_SAMPLES),
    ("zunionstore", STORE_SAMPLES),
];
/// `EVAL`-like: script, key count, keys, arguments.
const SCRIPT_SAMPLES: &[&[&str]] = &[&["s", "2", "a", "b", "x"], &["s", "1", "a"], &["s", "0"]];
/// `ZUNION`-like: key count, keys, options.
const COUNTED_SAMPLES: &[&[&str]] = &[&["2", "a", "b", "MIN"], &["1", "a", "MIN"]];
/// `ZUNIONSTORE`-like: destination, key count, keys.
const STORE_SAMPLES: &[&[&str]] = &[&["d", "2", "a", "b", "WEIGHTS", "1", "2"], &["d", "1", "a"]];

/// Every command and subcommand the server lists has the keys Redis finds in it: for each, a
/// request built from its arity (placeholder arguments `a1`, `a2`... named by position, at the
/// fewest arguments and two more) or from [`KEY_SAMPLES`] for the `movablekeys` ones, and what
/// `command::keys` finds is compared with `COMMAND GETKEYS` (in any order: Redis lists
/// `ZUNIONSTORE`'s destination last). A command Redis says has no keys must be keyless in the
/// table. Also, the commands `command::keys` lets a router split are the ones Redis tips
/// `request_policy:multi_shard`, but `MSETNX` (all or nothing: it cannot be split).
#[tokio::test]
async fn every_redis_command_has_its_keys() {
    bounded(LIMIT, "COMMAND GETKEYS walk", async {
        let redis = RedisServer::start().await;
        let mut c = redis.direct().await;
        let entries = command_reply(&mut c).await;
        let mut wrong = Vec::new();
        let mut splits = Vec::new();
        let mut multi_shard = Vec::new();
        let mut compared = 0;
        for (name, fields) in command_entries(&entries) {
            if matches!(fields.get(9), Some(Reply::Array(Some(subs))) if !subs.is_empty()) {
                continue; // A container: its subcommands are walked.
            }
            let Some(Reply::Int(arity)) = fields.get(1) else {
                panic!("{name}: no arity in {fields:?}");
            };
            // Flags are simple strings, tips bulk strings.
            let has = |field: usize, word: &str| {
                matches!(fields.get(field), Some(Reply::Array(Some(items)))
                if items.iter().any(|item| match item {
                    Reply::Simple(s) => s == word,
                    Reply::Bulk(Some(s)) => s == word.as_bytes(),
                    _ => false,
                }))
            };
            if has(7, "request_policy:multi_shard") && name != "msetnx" {
                multi_shard.push(name.clone());
            }
            let head: Vec<&str> = name.split('|').collect();
            let samples: Vec<Vec<String>> = match KEY_SAMPLES.iter().find(|s| s.0 == name) {
                Some((_, samples)) => samples
                    .iter()
                    .map(|args| args.iter().map(|a| a.to_string()).collect())
                    .collect(),
                None if has(2, "movablekeys") => {
                    wrong.push(format!("{name}: movable keys but no sample in KEY_SAMPLES"));
                    continue;
                }
                None => {
                    let fewest = usize::try_from(arity.unsigned_abs()).expect("arity");
                    let counts = if *arity > 0 {
                        vec![fewest]
                    } else {
                        vec![fewest, fewest + 2]
                    };
                    counts
                        .into_iter()
                        .map(|argc| (head.len()..argc).map(|i| format!("a{i}")).collect())
                        .collect()
                }
            };
            for args in samples {
                let words: Vec<Vec<u8>> = head
                    .iter()
                    .map(|w| w.as_bytes().to_vec())
                    .chain(args.iter().map(|a| a.as_bytes().to_vec()))
                    .collect();
                let keys = command::keys(&words[0], Args::Inline(&words));
                compared += 1;
                if keys.split().is_some() && !splits.contains(&name) {
                    splits.push(name.clone());
                }
                let mut ours: Vec<Vec<u8>> = keys.iter().map(<[u8]>::to_vec).collect();
                ours.sort();
                let mut ask = vec![&b"COMMAND"[..], b"GETKEYS"];
                ask.extend(words.iter().map(Vec::as_slice));
                let right = match c.cmd(&ask).await {
                    Reply::Array(Some(theirs)) => {
                        let mut theirs: Vec<Vec<u8>> = theirs
                            .into_iter()
                            .map(|k| match k {
                                Reply::Bulk(Some(k)) => k,
                                other => panic!("GETKEYS {words:?}: {other:?}"),
                            })
                            .collect();
                        theirs.sort();
                        // No keys at all: Redis takes it without keys (`EVAL s 0`).
                        let right =
                            ours == theirs && (theirs.is_empty() == keys.missing().is_some());
                        if !right {
                            wrong.push(format!(
                                "{:?}: respipe {:?} ({:?}), Redis {:?}",
                                escape(&words),
                                escape(&ours),
                                keys.missing(),
                                escape(&theirs)
                            ));
                        }
                        continue;
                    }
                    Reply::Error(e) if e.contains("no key arguments") => {
                        keys.missing() == Some(NoKey::Keyless)
                    }
                    // Redis 7.0's GETKEYS refuses `PFMERGE dest` (its second key spec wants a
                    // source), but PFMERGE runs without one: the destination is its key.
                    Reply::Error(_) if name == "pfmerge" && args.len() == 1 => ours == [b"a1"],
                    // Malformed for Redis too: no key to route by.
                    Reply::Error(_) => keys.missing().is_some(),
                    other => panic!("GETKEYS {words:?}: {other:?}"),
                };
                if !right {
                    wrong.push(format!(
                        "{:?}: respipe {:?} ({:?}), Redis has none",
                        escape(&words),
                        escape(&ours),
                        keys.missing()
                    ));
                }
            }
        }
        assert!(compared > 300, "only {compared} requests compared");
        assert!(
            wrong.is_empty(),
            "keys differ from Redis's:\n{}",
            wrong.join("\n")
        );
        splits.sort();
        multi_shard.sort();
        assert_eq!(splits, multi_shard, "splittable commands");
    })
    .await;
}

/// Arguments as readable text, for failure messages.
fn escape(words: &[Vec<u8>]) -> Vec<String> {
    words
        .iter()
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}
