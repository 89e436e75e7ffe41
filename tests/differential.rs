//! Differential tests: each scenario sends the same bytes, in the same pipelining shape and the same
//! order across clients, to a fresh Redis directly and to another fresh Redis through respipe, and
//! compares every reply frame byte for byte (the engine and its normalisations are in
//! `common/differential.rs`). Scenarios named `issue10_itemN_...` reproduce item N of issue 10; one
//! still `#[ignore]`d says which defect keeps it from passing, and is un-ignored with the fix.
//! `DIFFERENTIAL_REDIS_ONLY=1 cargo test --test differential -- --include-ignored` checks every
//! scenario against Redis on both sides (right about Redis, and deterministic).

mod common;
#[path = "common/differential.rs"]
mod differential;

use bytes::Bytes;
use common::encode;
use differential::{escape, normalise, Scenario};

/// Clients, shown as A, B, C, D in failure messages.
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;

// ---------------------------------------------------------------------------------------------
// The engine's pure parts
// ---------------------------------------------------------------------------------------------

#[test]
fn normalise_replaces_only_the_id_of_hello_replies() {
    let resp3 = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:25\r\n$4\r\nmode\r\n";
    let want = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:<id>\r\n$4\r\nmode\r\n";
    assert_eq!(&normalise(Bytes::from_static(resp3))[..], &want[..]);
    // Two HELLO replies inside one EXEC reply: both ids.
    let two = [&b"*2\r\n"[..], resp3, resp3].concat();
    let got = normalise(Bytes::from(two));
    assert_eq!(got, [&b"*2\r\n"[..], want, want].concat());
    // An `id` field anywhere else is data and stays.
    let hgetall = b"*2\r\n$2\r\nid\r\n:7\r\n";
    assert_eq!(&normalise(Bytes::from_static(hgetall))[..], hgetall);
}

#[test]
fn escape_shows_control_bytes_and_cuts_long_runs() {
    assert_eq!(escape(b"+OK\r\n\x00\xff\\"), "+OK\\r\\n\\x00\\xff\\\\");
    let long = escape(&[b'a'; 10_000]);
    assert!(long.contains("<10000 bytes in all>"), "{long}");
    assert!(long.len() < 1000, "{}", long.len());
}

// ---------------------------------------------------------------------------------------------
// Issue 10 item 1: a reply reaches the wrong client
// ---------------------------------------------------------------------------------------------

/// B's replies around A's `cmd foo bar quux` while A is not subscribed: Redis answers A with three
/// frames and B with its own.
fn unsubscribe_several_while_not_subscribed(name: &str, cmd: &str) -> Scenario {
    Scenario::new(name)
        .each(B, &[&["SET", "keyB", "valueB"]])
        .write(A, &[&[cmd, "foo", "bar", "quux"]])
        .read(A, 1)
        .each(B, &[&["GET", "keyB"]])
        .read(A, 2)
        .each(A, &[&["PING"]])
}

#[tokio::test]
async fn issue10_item1_unsubscribe_several_while_not_subscribed() {
    unsubscribe_several_while_not_subscribed("item1_unsubscribe", "UNSUBSCRIBE")
        .run()
        .await
}

#[tokio::test]
async fn issue10_item1_punsubscribe_several_while_not_subscribed() {
    unsubscribe_several_while_not_subscribed("item1_punsubscribe", "PUNSUBSCRIBE")
        .run()
        .await
}

#[tokio::test]
async fn issue10_item1_sunsubscribe_several_while_not_subscribed() {
    unsubscribe_several_while_not_subscribed("item1_sunsubscribe", "SUNSUBSCRIBE")
        .run()
        .await
}

/// A's unsubscribe and B's GET in flight at once: whichever Redis runs first, each gets its own.
#[tokio::test]
async fn issue10_item1_unsubscribe_several_concurrent_with_another_client() {
    Scenario::new("item1_unsubscribe_concurrent")
        .each(B, &[&["SET", "keyB", "valueB"]])
        .write(A, &[&["UNSUBSCRIBE", "foo", "bar", "quux"]])
        .write(B, &[&["GET", "keyB"], &["GET", "keyB"]])
        .read(B, 2)
        .read(A, 3)
        .run()
        .await
}

/// The same in one pipelined write, with the unsubscribe between two plain commands of A.
#[tokio::test]
async fn issue10_item1_unsubscribe_several_pipelined() {
    Scenario::new("item1_unsubscribe_pipelined")
        .each(B, &[&["SET", "keyB", "valueB"]])
        .call(
            A,
            &[
                &["SET", "keyA", "valueA"],
                &["UNSUBSCRIBE", "foo", "bar", "quux"],
                &["GET", "keyA"],
            ],
            5,
        )
        .each(B, &[&["GET", "keyB"]])
        .run()
        .await
}

/// The same in RESP3, where each confirmation is a push frame.
#[tokio::test]
async fn issue10_item1_unsubscribe_several_in_resp3() {
    Scenario::new("item1_unsubscribe_resp3")
        .each(A, &[&["HELLO", "3"]])
        .each(B, &[&["HELLO", "3"], &["SET", "keyB", "valueB"]])
        .write(A, &[&["SUNSUBSCRIBE", "foo", "bar", "quux"]])
        .read(A, 1)
        .each(B, &[&["GET", "keyB"]])
        .read(A, 2)
        .each(A, &[&["PUNSUBSCRIBE"], &["UNSUBSCRIBE", "foo"], &["PING"]])
        .run()
        .await
}

/// An unsubscribe queued in a transaction: Redis counts it as one element of `EXEC`'s array and
/// writes its other confirmations as frames of their own, in RESP2 and RESP3.
#[tokio::test]
async fn issue10_item1_unsubscribe_several_queued_in_multi() {
    let transaction: &[&[&str]] = &[
        &["MULTI"],
        &["UNSUBSCRIBE", "a", "b", "c"],
        &["PING"],
        &["EXEC"],
        &["SET", "keyA", "valueA"],
    ];
    Scenario::new("item1_unsubscribe_in_multi")
        .call(A, transaction, 7)
        .each(B, &[&["HELLO", "3"]])
        .call(B, transaction, 7)
        .each(A, &[&["GET", "keyA"]])
        .run()
        .await
}

/// A `SELECT` queued after a multi-channel unsubscribe: its result is not at its command's place in
/// `EXEC`'s array but after the confirmations; the session's db follows it (db 1 when it ran, db 0
/// when Redis refused it).
#[tokio::test]
async fn issue10_item1_select_queued_after_an_unsubscribe() {
    Scenario::new("item1_select_after_unsubscribe_in_multi")
        .call(
            A,
            &[
                &["MULTI"],
                &["UNSUBSCRIBE", "a", "b", "c"],
                &["SELECT", "1"],
                &["EXEC"],
            ],
            6,
        )
        .each(A, &[&["SET", "k", "in1"]])
        .each(B, &[&["GET", "k"]])
        .call(
            B,
            &[
                &["MULTI"],
                &["UNSUBSCRIBE", "a", "b"],
                &["SELECT", "99"],
                &["EXEC"],
            ],
            5,
        )
        .each(B, &[&["SET", "k", "in0"]])
        .each(A, &[&["GET", "k"], &["SELECT", "0"], &["GET", "k"]])
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Item 5: SELECT, AUTH, HELLO inside MULTI, after WATCH, and while subscribed in RESP3
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issue10_item5_select_queued_inside_multi() {
    Scenario::new("item5_select_in_multi")
        .each(
            A,
            &[
                &["MULTI"],
                &["SELECT", "1"],
                &["SET", "k", "in-db-1"],
                &["EXEC"],
                &["GET", "k"],
            ],
        )
        .each(B, &[&["GET", "k"], &["SELECT", "1"], &["GET", "k"]])
        .run()
        .await
}

#[tokio::test]
async fn issue10_item5_auth_queued_inside_multi() {
    Scenario::new("item5_auth_in_multi")
        .each(
            A,
            &[
                &["ACL", "SETUSER", "u", "on", ">p", "+@all", "~*"],
                &["MULTI"],
                &["AUTH", "u", "p"],
                &["SET", "k", "v"],
                &["EXEC"],
                &["ACL", "WHOAMI"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item5_hello_queued_inside_multi() {
    Scenario::new("item5_hello_in_multi")
        .each(
            A,
            &[
                &["MULTI"],
                &["HELLO", "3"],
                &["HSET", "h", "f", "v"],
                &["HGETALL", "h"],
                &["EXEC"],
                &["HGETALL", "h"],
                &["HELLO", "2"],
                &["HGETALL", "h"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item5_select_after_watch() {
    Scenario::new("item5_select_after_watch")
        // No conflict: WATCH remembers db 0's k; db 1's k is another key.
        .each(
            A,
            &[
                &["SET", "k", "db0"],
                &["WATCH", "k"],
                &["SELECT", "1"],
                &["MULTI"],
                &["SET", "k", "db1"],
                &["EXEC"],
            ],
        )
        // Conflict: B touches db 0's k while A, watching it, is in db 1.
        .each(A, &[&["SELECT", "0"], &["WATCH", "k"], &["SELECT", "1"]])
        .each(B, &[&["SET", "k", "changed"]])
        .each(
            A,
            &[&["MULTI"], &["SET", "k2", "x"], &["EXEC"], &["GET", "k2"]],
        )
        .each(B, &[&["SELECT", "1"], &["MGET", "k", "k2"]])
        .run()
        .await
}

#[tokio::test]
async fn issue10_item5_auth_and_hello_after_watch() {
    Scenario::new("item5_auth_hello_after_watch")
        .each(
            A,
            &[
                &["WATCH", "k"],
                &["AUTH", "default", "any"],
                &["HELLO", "3"],
            ],
        )
        .each(B, &[&["SET", "k", "changed"]])
        .each(
            A,
            &[&["MULTI"], &["SET", "k", "mine"], &["EXEC"], &["GET", "k"]],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item5_hello_and_auth_while_subscribed_in_resp3() {
    Scenario::new("item5_hello_auth_subscribed_resp3")
        .each(A, &[&["HELLO", "3"], &["SUBSCRIBE", "ch"]])
        .each(
            A,
            &[
                &["HELLO", "3"],
                &["AUTH", "default", "any"],
                &["PING"],
                &["GET", "k"],
            ],
        )
        .each(B, &[&["PUBLISH", "ch", "m"]])
        .read(A, 1)
        .each(A, &[&["UNSUBSCRIBE", "ch"], &["PING"]])
        .run()
        .await
}

/// What changes state while subscribed in RESP3: another user, SELECT, and HELLO 2 (which leaves
/// the connection subscribed in RESP2).
#[tokio::test]
async fn issue10_item5_auth_select_hello_2_while_subscribed_in_resp3() {
    Scenario::new("item5_state_changes_subscribed_resp3")
        .each(
            A,
            &[
                &["ACL", "SETUSER", "u", "on", ">p", "+@all", "~*", "&*"],
                &["HELLO", "3"],
                &["SUBSCRIBE", "ch"],
            ],
        )
        .each(
            A,
            &[
                &["AUTH", "u", "p"],
                &["SELECT", "1"],
                &["SET", "k", "in-db-1"],
                &["ACL", "WHOAMI"],
            ],
        )
        .each(B, &[&["PUBLISH", "ch", "m"]])
        .read(A, 1)
        .each(A, &[&["HELLO", "2"], &["PING"], &["GET", "k"]])
        .each(B, &[&["PUBLISH", "ch", "m2"]])
        .read(A, 1)
        .each(
            A,
            &[&["UNSUBSCRIBE", "ch"], &["GET", "k"], &["ACL", "WHOAMI"]],
        )
        .each(
            A,
            &[
                &["GET", "k"],
                &["SELECT", "0"],
                &["GET", "k"],
                &["ACL", "WHOAMI"],
                &["HGETALL", "nothing"],
            ],
        )
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Item 6: writes in the wrong database
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issue10_item6_select_pipelined_after_exec() {
    Scenario::new("item6_select_after_exec")
        .each(
            A,
            &[
                &["SET", "k", "db0"],
                &["MULTI"],
                &["INCR", "c"],
                &["EXEC"],
                &["SELECT", "1"],
                &["SET", "k", "db1"],
                &["SELECT", "0"],
                &["GET", "k"],
            ],
        )
        .each(B, &[&["GET", "k"], &["SELECT", "1"], &["GET", "k"]])
        .run()
        .await
}

#[tokio::test]
async fn issue10_item6_state_pipelined_after_discard_unwatch_and_blpop() {
    Scenario::new("item6_state_after_lease")
        .each(
            A,
            &[
                &["MULTI"],
                &["DISCARD"],
                &["SELECT", "1"],
                &["SET", "k", "db1"],
                &["WATCH", "w"],
                &["UNWATCH"],
                &["SELECT", "2"],
                &["SET", "k", "db2"],
                &["RPUSH", "l", "v"],
                &["BLPOP", "l", "1"],
                &["SELECT", "3"],
                &["SET", "k", "db3"],
                &["MULTI"],
                &["EXEC"],
                &["HELLO", "3"],
                &["HGETALL", "nothing"],
                &["MULTI"],
                &["EXEC"],
                &["AUTH", "default", "any"],
                &["HELLO", "2"],
                &["SELECT", "0"],
                &["SET", "k", "db0"],
            ],
        )
        .each(
            B,
            &[
                &["SELECT", "1"],
                &["GET", "k"],
                &["SELECT", "2"],
                &["GET", "k"],
                &["SELECT", "3"],
                &["GET", "k"],
                &["SELECT", "0"],
                &["GET", "k"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
#[ignore = "documented difference (issue 10 item 6): respipe refuses SUBSCRIBE inside MULTI and aborts the transaction; Redis subscribes at EXEC"]
async fn issue10_item6_subscribe_inside_multi() {
    Scenario::new("item6_subscribe_in_multi")
        .each(A, &[&["MULTI"], &["SUBSCRIBE", "ch"], &["EXEC"]])
        .each(B, &[&["PUBLISH", "ch", "m"]])
        .read(A, 1)
        .each(A, &[&["UNSUBSCRIBE", "ch"], &["PING"]])
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Item 7: replies lost around RESET and QUIT
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issue10_item7_subscribe_reset_ping_get_in_one_write() {
    Scenario::new("item7_subscribe_reset")
        .each(
            A,
            &[&["SUBSCRIBE", "ch"], &["RESET"], &["PING"], &["GET", "k"]],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item7_unsubscribe_then_reset() {
    Scenario::new("item7_unsubscribe_reset")
        .each(A, &[&["SUBSCRIBE", "ch"]])
        .each(A, &[&["UNSUBSCRIBE", "ch"], &["RESET"]])
        .each(A, &[&["PING"]])
        .run()
        .await
}

#[tokio::test]
async fn issue10_item7_unsubscribe_then_reset_while_not_subscribed() {
    Scenario::new("item7_unsubscribe_reset_unsubscribed")
        .each(A, &[&["UNSUBSCRIBE", "ch"], &["RESET"], &["PING"]])
        .run()
        .await
}

#[tokio::test]
async fn issue10_item7_pipeline_of_25_with_subscribe_and_reset() {
    let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
    let mut cmds: Vec<Vec<&str>> = keys.iter().map(|k| vec!["SET", k, "v"]).collect();
    cmds.push(vec!["SUBSCRIBE", "c"]);
    cmds.extend([vec!["PING"], vec!["PING", "x"], vec!["PING"]]);
    cmds.push(vec!["RESET"]);
    for i in 0..15 {
        cmds.push(vec!["GET", &keys[i % 5]]);
    }
    let cmds: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    assert_eq!(cmds.len(), 25);
    Scenario::new("item7_pipeline_of_25")
        .each(A, &cmds)
        .run()
        .await
}

#[tokio::test]
async fn issue10_item7_rejected_subscribe_then_reset() {
    Scenario::new("item7_rejected_subscribe_reset")
        .each(A, &[&["SUBSCRIBE"], &["RESET"], &["PING"]])
        .run()
        .await
}

#[tokio::test]
async fn issue10_item7_subscribe_then_quit_in_one_write() {
    Scenario::new("item7_subscribe_quit")
        .write(A, &[&["SUBSCRIBE", "ch"], &["QUIT"]])
        .read_to_close(A)
        .run()
        .await
}

#[tokio::test]
async fn issue10_item7_monitor_then_reset_in_one_write() {
    Scenario::new("item7_monitor_reset")
        .each(A, &[&["MONITOR"], &["RESET"], &["PING"]])
        .run()
        .await
}

#[tokio::test]
async fn issue10_item7_debug_protocol_push_in_resp3() {
    Scenario::new("item7_debug_protocol_push")
        .call(
            A,
            &[&["HELLO", "3"], &["DEBUG", "PROTOCOL", "push"], &["PING"]],
            4,
        )
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Item 9: answered locally, but not as Redis would
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issue10_item9_reset_with_an_argument_is_an_arity_error() {
    Scenario::new("item9_reset_now")
        .each(
            A,
            &[
                &["SELECT", "1"],
                &["SET", "k", "v"],
                &["RESET", "now"],
                &["GET", "k"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item9_select_minus_zero() {
    Scenario::new("item9_select_minus_zero")
        .each(
            A,
            &[
                &["SELECT", "-0"],
                &["SELECT", "+1"],
                &["SELECT", "01"],
                &["SELECT", "-1"],
                &["SELECT", " 1"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item9_client_setname_getname_queued_inside_multi() {
    Scenario::new("item9_client_name_in_multi")
        .each(
            A,
            &[
                &["MULTI"],
                &["CLIENT", "SETNAME", "n1"],
                &["CLIENT", "GETNAME"],
                &["EXEC"],
                &["CLIENT", "GETNAME"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item9_client_setinfo_is_unknown_to_redis_7_0() {
    Scenario::new("item9_client_setinfo")
        .each(
            A,
            &[
                &["CLIENT", "SETINFO", "LIB-NAME", "mylib"],
                &["CLIENT", "SETINFO", "LIB-VER", "1.0"],
                &["CLIENT", "NO-EVICT", "ON"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item9_client_commands_obey_acls() {
    Scenario::new("item9_client_acl")
        .each(
            A,
            &[
                &[
                    "ACL", "SETUSER", "nc", "on", ">p", "+@all", "-client", "~*", "&*",
                ],
                &["AUTH", "nc", "p"],
                &["CLIENT", "SETNAME", "x"],
                &["CLIENT", "GETNAME"],
                &["CLIENT", "REPLY", "OFF"],
                &["PING"],
                &["CLIENT", "REPLY", "ON"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item9_accepted_databases_are_per_user() {
    Scenario::new("item9_select_cache_per_user")
        .each(A, &[&["SELECT", "5"], &["SET", "k", "a-in-5"]])
        .each(
            B,
            &[
                &[
                    "ACL", "SETUSER", "nosel", "on", ">p", "+@all", "-select", "~*", "&*",
                ],
                &["AUTH", "nosel", "p"],
                &["SELECT", "5"],
                &["SET", "k", "b"],
                &["GET", "k"],
            ],
        )
        .each(A, &[&["GET", "k"], &["SELECT", "0"], &["GET", "k"]])
        .run()
        .await
}

#[tokio::test]
#[ignore = "issue 10 item 9, open: after a password change a new connection for the user (here SELECT 1) is refused with WRONGPASS"]
async fn issue10_item9_password_change_keeps_the_authenticated_session() {
    Scenario::new("item9_password_change")
        .each(A, &[&["ACL", "SETUSER", "u", "on", ">p1", "+@all", "~*"]])
        .each(B, &[&["AUTH", "u", "p1"], &["SET", "k", "v"]])
        .each(A, &[&["ACL", "SETUSER", "u", "resetpass", ">p2"]])
        .each(
            B,
            &[
                &["GET", "k"],
                &["SELECT", "1"],
                &["SET", "k", "v1"],
                &["GET", "k"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn issue10_item9_deleted_user_is_disconnected() {
    Scenario::new("item9_deluser")
        .each(A, &[&["ACL", "SETUSER", "u", "on", ">p", "+@all", "~*"]])
        .each(B, &[&["AUTH", "u", "p"], &["PING"]])
        .each(A, &[&["ACL", "DELUSER", "u"]])
        .read_to_close(B)
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Item 12: client-side caching
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn issue10_item12_client_tracking_invalidates_in_resp3() {
    Scenario::new("item12_tracking")
        .each(
            A,
            &[
                &["HELLO", "3"],
                &["CLIENT", "TRACKING", "ON"],
                &["GET", "k"],
                &["CLIENT", "TRACKINGINFO"],
            ],
        )
        .each(B, &[&["SET", "k", "v"]])
        .read(A, 1)
        .each(A, &[&["CLIENT", "TRACKING", "OFF"], &["GET", "k"]])
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Pipelines, transactions and connection state
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pipeline_mixing_plain_commands_with_multi_exec_discard() {
    Scenario::new("pipeline_multi_exec_discard")
        .each(
            A,
            &[
                &["SET", "a", "1"],
                &["MULTI"],
                &["INCR", "a"],
                &["GET", "a"],
                &["EXEC"],
                &["GET", "a"],
                &["MULTI"],
                &["SET", "a", "100"],
                &["DISCARD"],
                &["GET", "a"],
                // A queueing error aborts the transaction.
                &["MULTI"],
                &["INCR", "a"],
                &["SET", "a"],
                &["EXEC"],
                &["GET", "a"],
                // A runtime error does not.
                &["MULTI"],
                &["SET", "s", "str"],
                &["INCR", "s"],
                &["INCR", "a"],
                &["EXEC"],
                &["DISCARD"],
                &["EXEC"],
                &["MULTI"],
                &["MULTI"],
                &["WATCH", "a"],
                &["EXEC"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn watch_conflict_and_no_conflict() {
    Scenario::new("watch")
        .each(A, &[&["WATCH", "k"]])
        .each(B, &[&["SET", "k", "x"]])
        .each(
            A,
            &[&["MULTI"], &["SET", "k", "a"], &["EXEC"], &["GET", "k"]],
        )
        .each(
            A,
            &[&["WATCH", "k"], &["MULTI"], &["SET", "k", "b"], &["EXEC"]],
        )
        .each(A, &[&["WATCH", "k", "other"], &["UNWATCH"]])
        .each(B, &[&["SET", "k", "y"]])
        .each(
            A,
            &[&["MULTI"], &["SET", "k", "c"], &["EXEC"], &["GET", "k"]],
        )
        .each(A, &[&["WATCH", "gone"], &["DEL", "gone"]])
        .each(A, &[&["MULTI"], &["PING"], &["EXEC"]])
        .run()
        .await
}

#[tokio::test]
async fn select_in_pipelines() {
    Scenario::new("select")
        .each(
            A,
            &[
                &["SELECT", "1"],
                &["SET", "k", "1"],
                &["SELECT", "2"],
                &["SET", "k", "2"],
                &["SELECT", "15"],
                &["SET", "k", "15"],
                &["SELECT", "16"],
                &["SELECT", "abc"],
                &["SELECT"],
                &["GET", "k"],
                &["MOVE", "k", "3"],
                &["SELECT", "3"],
                &["GET", "k"],
                &["SWAPDB", "1", "2"],
                &["SELECT", "1"],
                &["GET", "k"],
                &["SELECT", "0"],
                &["GET", "k"],
            ],
        )
        .each(B, &[&["GET", "k"], &["SELECT", "2"], &["GET", "k"]])
        .run()
        .await
}

#[tokio::test]
async fn hello_switches_protocol_both_ways() {
    Scenario::new("hello")
        .each(
            A,
            &[
                &["HSET", "h", "f1", "v1", "f2", "v2"],
                &["HELLO", "3"],
                &["HGETALL", "h"],
                &["GET", "missing"],
                &["HELLO", "2"],
                &["HGETALL", "h"],
                &["GET", "missing"],
                &["HELLO"],
                &["HELLO", "4"],
                &["HELLO", "3", "SETNAME", "nm"],
                &["CLIENT", "GETNAME"],
                &["HELLO", "2", "AUTH", "default", "any"],
                &["HELLO", "3", "AUTH", "nobody", "pw"],
                &["HELLO", "abc"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn client_reply_off_on_skip() {
    Scenario::new("client_reply")
        .call(
            A,
            &[
                &["CLIENT", "REPLY", "OFF"],
                &["SET", "k", "1"],
                &["GET", "k"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "k"],
                &["CLIENT", "REPLY", "SKIP"],
                &["GET", "k"],
                &["INCR", "k"],
                &["GET", "k"],
                &["CLIENT", "REPLY", "MAYBE"],
                &["CLIENT", "REPLY"],
            ],
            6,
        )
        // B's replies stay B's while A's are dropped (B does not touch A's key: no race).
        .write(A, &[&["CLIENT", "REPLY", "OFF"], &["INCR", "k"]])
        .each(B, &[&["SET", "b", "1"], &["GET", "b"]])
        .each(A, &[&["CLIENT", "REPLY", "ON"], &["GET", "k"]])
        .run()
        .await
}

#[tokio::test]
async fn reset_returns_to_a_new_connections_state() {
    Scenario::new("reset")
        .each(
            A,
            &[
                &["SELECT", "3"],
                &["SET", "k", "v"],
                &["CLIENT", "SETNAME", "nm"],
                &["MULTI"],
                &["SET", "x", "y"],
                &["RESET"],
                &["GET", "k"],
                &["GET", "x"],
                &["CLIENT", "GETNAME"],
                &["EXEC"],
                &["HELLO", "3"],
                &["RESET"],
                &["GET", "missing"],
                &["WATCH", "k"],
                &["RESET"],
                &["MULTI"],
                &["EXEC"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn quit_in_the_middle_of_a_pipeline() {
    Scenario::new("quit")
        .write(
            A,
            &[&["SET", "k", "v"], &["QUIT"], &["SET", "k", "after-quit"]],
        )
        .read_to_close(A)
        .each(B, &[&["GET", "k"]])
        .write(B, &[&["MULTI"], &["SET", "k", "in-multi"], &["QUIT"]])
        .read_to_close(B)
        .each(C, &[&["GET", "k"]])
        .run()
        .await
}

#[tokio::test]
async fn client_reply_around_multi_and_subscribe() {
    Scenario::new("client_reply_around_multi_and_subscribe")
        .call(
            A,
            &[
                &["CLIENT", "REPLY", "OFF"],
                &["MULTI"],
                &["SET", "k", "v"],
                &["EXEC"],
                &["CLIENT", "REPLY", "ON"],
                &["GET", "k"],
                &["CLIENT", "REPLY", "SKIP"],
                &["SUBSCRIBE", "ch"],
                &["PING"],
            ],
            3,
        )
        .run()
        .await
}

#[tokio::test]
async fn transaction_of_1000_commands_in_one_write() {
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    let mut cmds: Vec<Vec<&str>> = vec![vec!["MULTI"]];
    for k in &keys {
        cmds.push(vec!["SET", k, "v"]);
    }
    cmds.push(vec!["EXEC"]);
    cmds.push(vec!["DBSIZE"]);
    let cmds: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    Scenario::new("transaction_of_1000_commands_in_one_write")
        .each(A, &cmds)
        .run()
        .await
}

#[tokio::test]
async fn client_reply_off_with_large_replies_beside_another_client() {
    let big = "x".repeat(100_000);
    Scenario::new("client_reply_off_with_large_replies_beside_another_client")
        .each(A, &[&["SET", "big", &big]])
        .write(
            A,
            &[
                &["CLIENT", "REPLY", "OFF"],
                &["GET", "big"],
                &["GET", "big"],
                &["INCR", "n"],
            ],
        )
        .each(B, &[&["SET", "b", "1"], &["GET", "b"], &["GET", "big"]])
        .each(A, &[&["CLIENT", "REPLY", "ON"], &["GET", "n"]])
        .run()
        .await
}

#[tokio::test]
async fn select_between_every_command_of_a_long_pipeline() {
    let dbs: Vec<String> = (0..2000).map(|i| (i % 16).to_string()).collect();
    let mut cmds: Vec<Vec<&str>> = Vec::new();
    for d in &dbs {
        cmds.push(vec!["SELECT", d]);
        cmds.push(vec!["INCR", "n"]);
    }
    let cmds: Vec<&[&str]> = cmds.iter().map(Vec::as_slice).collect();
    Scenario::new("select_between_every_command_of_a_long_pipeline")
        .each(A, &cmds)
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Pub/sub
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pubsub_with_publishers_in_resp2() {
    Scenario::new("pubsub_resp2")
        .each(A, &[&["SUBSCRIBE", "a", "b"]])
        .read(A, 1)
        .each(A, &[&["PSUBSCRIBE", "n*"]])
        .each(C, &[&["SUBSCRIBE", "a"]])
        .each(
            B,
            &[
                &["PUBLISH", "a", "1"],
                &["PUBLISH", "news", "2"],
                &["PUBLISH", "none", "3"],
            ],
        )
        .read(A, 2)
        .read(C, 1)
        .each(A, &[&["PING"], &["PING", "hi"], &["GET", "k"]])
        .call(A, &[&["UNSUBSCRIBE", "a", "b"]], 2)
        .each(A, &[&["PUNSUBSCRIBE", "n*"]])
        .each(B, &[&["PUBLISH", "a", "x"], &["PUBLISH", "news", "y"]])
        .read(C, 1)
        .each(C, &[&["UNSUBSCRIBE", "a"]])
        .each(A, &[&["GET", "k"], &["PUBSUB", "NUMSUB", "a", "b"]])
        .run()
        .await
}

#[tokio::test]
async fn pubsub_push_messages_in_resp3() {
    Scenario::new("pubsub_resp3")
        .each(
            A,
            &[&["HELLO", "3"], &["SUBSCRIBE", "ch"], &["PSUBSCRIBE", "p*"]],
        )
        .each(B, &[&["PUBLISH", "ch", "m1"], &["PUBLISH", "pq", "m2"]])
        .read(A, 2)
        .each(A, &[&["SET", "k", "v"], &["GET", "k"], &["PING"]])
        .each(B, &[&["PUBLISH", "ch", "m3"]])
        .read(A, 1)
        .each(
            A,
            &[&["UNSUBSCRIBE", "ch"], &["PUNSUBSCRIBE", "p*"], &["PING"]],
        )
        .each(B, &[&["PUBLISH", "ch", "m4"]])
        .run()
        .await
}

#[tokio::test]
async fn pubsub_publish_to_own_channel_in_resp3() {
    Scenario::new("pubsub_publish_to_own_channel_in_resp3")
        .each(A, &[&["HELLO", "3"], &["SUBSCRIBE", "ch"]])
        .call(A, &[&["PUBLISH", "ch", "m"], &["PING"]], 3)
        .each(A, &[&["UNSUBSCRIBE"], &["PING"]])
        .run()
        .await
}

#[tokio::test]
async fn pubsub_pipelined_subscribe_and_unsubscribe_sequence() {
    Scenario::new("pubsub_pipelined_subscribe_and_unsubscribe_sequence")
        .call(
            A,
            &[
                &["SUBSCRIBE", "a"],
                &["SUBSCRIBE", "b"],
                &["PSUBSCRIBE", "x*"],
                &["UNSUBSCRIBE", "a"],
                &["UNSUBSCRIBE", "b"],
                &["PUNSUBSCRIBE"],
                &["GET", "k"],
            ],
            7,
        )
        .run()
        .await
}

#[tokio::test]
async fn keyspace_notifications() {
    Scenario::new("keyspace_notifications")
        .each(A, &[&["CONFIG", "SET", "notify-keyspace-events", "KEA"]])
        .each(A, &[&["PSUBSCRIBE", "__keyspace@0__:*"]])
        .each(B, &[&["SET", "k", "v"], &["DEL", "k"]])
        .read(A, 2)
        .each(A, &[&["PUNSUBSCRIBE", "__keyspace@0__:*"]])
        .run()
        .await
}

#[tokio::test]
async fn pubsub_unsubscribe_without_arguments() {
    Scenario::new("pubsub_unsubscribe_without_arguments")
        .each(
            A,
            &[
                &["SUBSCRIBE", "a"],
                &["UNSUBSCRIBE"],
                &["PUNSUBSCRIBE"],
                &["PING"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn reset_while_subscribed_in_resp3() {
    Scenario::new("reset_while_subscribed_in_resp3")
        .each(A, &[&["HELLO", "3"], &["SUBSCRIBE", "ch"]])
        .each(A, &[&["RESET"]])
        .each(A, &[&["PING"], &["GET", "k"]])
        .each(B, &[&["PUBLISH", "ch", "m"]])
        .run()
        .await
}

/// One SUBSCRIBE and one UNSUBSCRIBE of 1000 channels each: 1000 frames each, in order.
#[tokio::test]
async fn pubsub_a_thousand_channels_in_one_command() {
    let chans: Vec<String> = (0..1000).map(|i| format!("c{i}")).collect();
    let mut sub: Vec<&str> = vec!["SUBSCRIBE"];
    sub.extend(chans.iter().map(String::as_str));
    let mut unsub: Vec<&str> = vec!["UNSUBSCRIBE"];
    unsub.extend(chans.iter().rev().map(String::as_str));
    Scenario::new("pubsub_a_thousand_channels_in_one_command")
        .call(
            A,
            &[
                &sub,
                &unsub,
                &["SUBSCRIBE", "again"],
                &["UNSUBSCRIBE", "again"],
                &["SUBSCRIBE", "x"],
            ],
            2003,
        )
        .each(B, &[&["PUBLISH", "x", "m"], &["PUBLISH", "c5", "m"]])
        .read(A, 1)
        .run()
        .await
}

#[tokio::test]
async fn pubsub_subscribe_unsubscribe_resubscribe_pipelined_in_resp3() {
    Scenario::new("pubsub_subscribe_unsubscribe_resubscribe_pipelined_in_resp3")
        .call(
            A,
            &[
                &["HELLO", "3"],
                &["SUBSCRIBE", "a"],
                &["UNSUBSCRIBE", "a"],
                &["GET", "k"],
                &["SUBSCRIBE", "b"],
                &["SET", "k", "v"],
                &["UNSUBSCRIBE"],
                &["GET", "k"],
            ],
            8,
        )
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Blocking commands
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn blpop_served_by_another_clients_lpush() {
    Scenario::new("blpop_served")
        .write(A, &[&["BLPOP", "l", "5"]])
        .blocked(1)
        .each(B, &[&["LPUSH", "l", "v1", "v2"]])
        .read(A, 1)
        .each(A, &[&["LRANGE", "l", "0", "-1"], &["SET", "after", "x"]])
        .run()
        .await
}

#[tokio::test]
async fn blpop_times_out() {
    Scenario::new("blpop_timeout")
        .each(A, &[&["BLPOP", "l", "0.05"], &["SET", "after", "x"]])
        .each(
            A,
            &[&["HELLO", "3"], &["BLPOP", "l", "0.05"], &["GET", "after"]],
        )
        .each(A, &[&["BLPOP", "l", "-1"], &["BLPOP", "l", "abc"]])
        .run()
        .await
}

#[tokio::test]
async fn blocking_commands_served_by_other_clients() {
    Scenario::new("blocking_served")
        .write(A, &[&["BZPOPMIN", "z", "5"]])
        .write(B, &[&["XREAD", "BLOCK", "5000", "STREAMS", "s", "$"]])
        .write(C, &[&["BLMOVE", "src", "dst", "LEFT", "RIGHT", "5"]])
        .blocked(3)
        .each(
            D,
            &[
                &["ZADD", "z", "1", "m"],
                &["XADD", "s", "1-1", "f", "v"],
                &["RPUSH", "src", "x"],
            ],
        )
        .read(A, 1)
        .read(B, 1)
        .read(C, 1)
        .each(D, &[&["LRANGE", "dst", "0", "-1"]])
        .run()
        .await
}

#[tokio::test]
async fn blocking_commands_pipelined_and_inside_multi() {
    Scenario::new("blocking_pipelined")
        .each(
            A,
            &[
                &["RPUSH", "l", "a", "b"],
                &["BLPOP", "l", "1"],
                &["BLPOP", "none", "0.01"],
                &["BRPOP", "l", "1"],
                &["GET", "k"],
                &["MULTI"],
                &["BLPOP", "l", "0"],
                &["RPUSH", "l", "c"],
                &["BLPOP", "l", "0"],
                &["EXEC"],
                &["WAIT", "0", "0"],
                &["BLMPOP", "0.01", "1", "l", "LEFT"],
                &["XREAD", "BLOCK", "10", "STREAMS", "nostream", "0"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn wait_without_replicas() {
    Scenario::new("wait_without_replicas")
        .each(
            A,
            &[&["SET", "k", "v"], &["WAIT", "1", "50"], &["GET", "k"]],
        )
        .run()
        .await
}

#[tokio::test]
async fn blocking_command_inside_a_pipeline_served_by_another_client() {
    Scenario::new("blocking_command_inside_a_pipeline_served_by_another_client")
        .write(
            A,
            &[&["SET", "a", "1"], &["BLPOP", "l", "5"], &["GET", "a"]],
        )
        .blocked(1)
        .read(A, 1)
        .each(B, &[&["RPUSH", "l", "x"]])
        .read(A, 2)
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Inline commands and protocol errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn inline_commands() {
    Scenario::new("inline")
        .write_bytes(
            A,
            b"PING\r\nSET k \"hello world\"\r\nGET k\r\nECHO 'a b'\r\n  \r\nEXISTS k missing\nset k2 \"\\x41\\n\"\r\nget k2\r\n"
                .to_vec(),
        )
        .read(A, 7)
        .run()
        .await
}

#[tokio::test]
async fn inline_unbalanced_quotes_close_the_connection() {
    Scenario::new("inline_unbalanced_quotes")
        .write_bytes(A, b"PING\r\nECHO \"abc\r\nPING\r\n".to_vec())
        .read_to_close(A)
        .run()
        .await
}

/// An inline request longer than Redis's 64 KiB limit, without its newline.
#[tokio::test]
async fn inline_request_too_big_closes_the_connection() {
    let mut b = b"PING\r\n".to_vec();
    b.extend(std::iter::repeat_n(b'a', 70 * 1024));
    Scenario::new("inline_request_too_big_closes_the_connection")
        .write_bytes(A, b)
        .read_to_close(A)
        .run()
        .await
}

/// A null bulk as an argument, a bad array length, a bulk longer than `proto-max-bulk-len`, and a
/// simple string where a bulk belongs: each an error, then the close.
#[tokio::test]
async fn protocol_errors_close_the_connection() {
    Scenario::new("protocol_errors_close_the_connection")
        .write_bytes(
            A,
            [encode(&["PING"]), b"*2\r\n$3\r\nGET\r\n$-1\r\n".to_vec()].concat(),
        )
        .read_to_close(A)
        .write_bytes(B, b"*abc\r\n".to_vec())
        .read_to_close(B)
        .write_bytes(C, b"*1\r\n$999999999999\r\n".to_vec())
        .read_to_close(C)
        .write_bytes(D, b"*1\r\n+PING\r\n".to_vec())
        .read_to_close(D)
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// RESP3 types
// ---------------------------------------------------------------------------------------------

/// Every reply type `DEBUG PROTOCOL` makes, and data commands whose RESP3 types differ.
const TYPED: &[&[&str]] = &[
    &["HSET", "h", "f1", "v1", "f2", "v2"],
    &["HGETALL", "h"],
    &["SADD", "s", "3", "1", "2"],
    &["SMEMBERS", "s"],
    &["ZADD", "z", "1.5", "m", "2", "n"],
    &["ZSCORE", "z", "m"],
    &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
    &["ZSCORE", "z", "missing"],
    &["GET", "missing"],
    &["HMGET", "h", "f1", "nope"],
    &["EXISTS", "h"],
    &["DEBUG", "PROTOCOL", "string"],
    &["DEBUG", "PROTOCOL", "integer"],
    &["DEBUG", "PROTOCOL", "double"],
    &["DEBUG", "PROTOCOL", "bignum"],
    &["DEBUG", "PROTOCOL", "null"],
    &["DEBUG", "PROTOCOL", "array"],
    &["DEBUG", "PROTOCOL", "set"],
    &["DEBUG", "PROTOCOL", "map"],
    &["DEBUG", "PROTOCOL", "attrib"],
    &["DEBUG", "PROTOCOL", "verbatim"],
    &["DEBUG", "PROTOCOL", "true"],
    &["DEBUG", "PROTOCOL", "false"],
];

#[tokio::test]
async fn resp3_types() {
    Scenario::new("resp3_types")
        .each(A, &[&["HELLO", "3"]])
        .each(A, TYPED)
        .run()
        .await
}

#[tokio::test]
async fn resp2_forms_of_the_same_replies() {
    Scenario::new("resp2_types")
        .each(A, TYPED)
        .each(A, &[&["DEBUG", "PROTOCOL", "push"]])
        .run()
        .await
}

#[tokio::test]
async fn resp3_nulls_inside_exec_and_after_client_reply_skip() {
    Scenario::new("resp3_nulls_inside_exec_and_after_client_reply_skip")
        .call(
            A,
            &[
                &["HELLO", "3"],
                &["MULTI"],
                &["GET", "x"],
                &["HGETALL", "x"],
                &["ZSCORE", "z", "m"],
                &["EXEC"],
                &["CLIENT", "REPLY", "SKIP"],
                &["GET", "x"],
                &["CLIENT", "GETNAME"],
            ],
            7,
        )
        .run()
        .await
}

#[tokio::test]
async fn resp3_attributes_inside_exec() {
    Scenario::new("resp3_attributes_inside_exec")
        .each(
            A,
            &[
                &["HELLO", "3"],
                &["MULTI"],
                &["DEBUG", "PROTOCOL", "attrib"],
                &["DEBUG", "PROTOCOL", "map"],
                &["EXEC"],
                &["DEBUG", "PROTOCOL", "attrib"],
            ],
        )
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Scripts and functions
// ---------------------------------------------------------------------------------------------

/// `SCRIPT LOAD "return ARGV[1]"`'s SHA1.
const ECHO_SHA: &str = "098e0f0d1448c0a81dafe820f66d460eb09263da";

const LIBRARY: &str = "#!lua name=lib\n\
    redis.register_function('echo', function(keys, args) return args[1] end)\n\
    redis.register_function{function_name='get', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}\n";

#[tokio::test]
async fn scripts_and_functions() {
    Scenario::new("scripts")
        .each(
            A,
            &[
                &["EVAL", "return {1, 'two', {3, 'four'}, false, true}", "0"],
                &[
                    "EVAL",
                    "return redis.call('SET', KEYS[1], ARGV[1])",
                    "1",
                    "k",
                    "v",
                ],
                &["EVAL", "return redis.call('GET', KEYS[1])", "1", "k"],
                &["SCRIPT", "LOAD", "return ARGV[1]"],
                &["EVALSHA", ECHO_SHA, "0", "hi"],
                &[
                    "SCRIPT",
                    "EXISTS",
                    ECHO_SHA,
                    "0000000000000000000000000000000000000000",
                ],
                &["EVALSHA", "0000000000000000000000000000000000000000", "0"],
                &["EVAL", "return redis.error_reply('MY own error')", "0"],
                &["EVAL", "return redis.call('INCR', KEYS[1])", "1", "k"],
                &["EVAL", "this is not lua", "0"],
                &[
                    "EVAL_RO",
                    "return redis.call('SET', KEYS[1], 'x')",
                    "1",
                    "k",
                ],
                &["FUNCTION", "LOAD", LIBRARY],
                &["FCALL", "echo", "0", "hello"],
                &["FCALL_RO", "get", "1", "k"],
                &["FCALL_RO", "echo", "0", "x"],
                &["FCALL", "nosuch", "0"],
                &["FUNCTION", "LOAD", LIBRARY],
                &["FUNCTION", "DELETE", "lib"],
                &["FCALL", "echo", "0", "hello"],
            ],
        )
        .each(
            A,
            &[
                &["HELLO", "3"],
                &["HSET", "h", "f", "v"],
                &[
                    "EVAL",
                    "redis.setresp(3); return redis.call('HGETALL', KEYS[1])",
                    "1",
                    "h",
                ],
                &["EVAL", "return {double=3.5}", "0"],
                &["EVAL", "return {map={a=1}}", "0"],
                &["EVAL", "return nil", "0"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn script_select_does_not_change_the_callers_db() {
    Scenario::new("script_select_does_not_change_the_callers_db")
        .each(
            A,
            &[
                &[
                    "EVAL",
                    "redis.call('SELECT','1'); return redis.call('SET','k','v')",
                    "0",
                ],
                &["GET", "k"],
                &["SELECT", "1"],
                &["GET", "k"],
            ],
        )
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Large and binary values
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn large_values() {
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| b'a' + (i % 26) as u8).collect();
    let other: Vec<u8> = big.iter().rev().copied().collect();
    let mut write = encode(&[&b"SET"[..], b"big", &big]);
    write.extend(encode(&["GET", "big"]));
    write.extend(encode(&["STRLEN", "big"]));
    write.extend(encode(&[&b"SET"[..], b"other", &other]));
    write.extend(encode(&["APPEND", "big", "xyz"]));
    write.extend(encode(&["MGET", "big", "other"]));
    write.extend(encode(&["GETRANGE", "big", "-5", "-1"]));
    Scenario::new("large_values")
        .write_bytes(A, write)
        .read(A, 7)
        // Two clients fetching large values at the same time.
        .write(A, &[&["GET", "other"], &["GET", "big"]])
        .write(B, &[&["GET", "big"], &["PING"]])
        .read(B, 2)
        .read(A, 2)
        .run()
        .await
}

#[tokio::test]
async fn binary_values() {
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(256 * 4).collect();
    let key = b"key\x00\r\n\xff";
    let mut write = encode(&[&b"SET"[..], key, &every_byte]);
    write.extend(encode(&[&b"GET"[..], key]));
    write.extend(encode(&[&b"STRLEN"[..], key]));
    write.extend(encode(&[&b"GETRANGE"[..], key, b"250", b"260"]));
    write.extend(encode(&[&b"SETRANGE"[..], key, b"10", b"\r\n\x00"]));
    write.extend(encode(&[
        &b"HSET"[..],
        b"h",
        &every_byte[..256],
        &every_byte[..256],
    ]));
    write.extend(encode(&[&b"HGETALL"[..], b"h"]));
    write.extend(encode(&[&b"ECHO"[..], &every_byte[..256]]));
    write.extend(encode(&[&b"GET"[..], key]));
    Scenario::new("binary_values")
        .write_bytes(A, write)
        .read(A, 9)
        .write_bytes(B, encode(&[&b"HELLO"[..], b"3"]))
        .write_bytes(B, encode(&[&b"HGETALL"[..], b"h"]))
        .read(B, 2)
        .run()
        .await
}

#[tokio::test]
async fn large_values_in_transactions_and_messages() {
    let big = "y".repeat(3 << 20);
    Scenario::new("large_values_in_transactions_and_messages")
        .each(A, &[&["SET", "big", &big]])
        .each(
            A,
            &[
                &["MULTI"],
                &["GET", "big"],
                &["GET", "big"],
                &["EXEC"],
                &["GET", "big"],
            ],
        )
        .each(A, &[&["HELLO", "3"], &["SUBSCRIBE", "ch"]])
        .each(B, &[&["PUBLISH", "ch", &big]])
        .read(A, 1)
        .each(A, &[&["GET", "big"], &["UNSUBSCRIBE", "ch"]])
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Error replies
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn error_replies() {
    Scenario::new("errors")
        .each(
            A,
            &[
                &["SET", "s", "str"],
                &["LPUSH", "s", "x"],
                &["GET"],
                &["GET", "a", "b"],
                &["NOSUCHCOMMAND", "a", "b"],
                &["SET", "k", "v", "EX", "abc"],
                &["SET", "k", "v", "EX", "-1"],
                &["SET", "k", "v", "BOGUS"],
                &["INCR", "s"],
                &["HSET", "h", "f"],
                &["LRANGE", "s", "0", "-1"],
                &["EXPIRE", "k", "soon"],
                &["CONFIG", "GET"],
                &["OBJECT", "nosuch"],
                &["CLIENT", "nosuch"],
                &["XADD", "s", "*", "f", "v"],
                &["GET", "s"],
            ],
        )
        .write_bytes(A, b"*0\r\n*-1\r\n".to_vec())
        .each(A, &[&["PING"]])
        .run()
        .await
}

#[tokio::test]
async fn auth_errors() {
    Scenario::new("auth_errors")
        .each(
            A,
            &[
                &["AUTH", "onlypw"],
                &["AUTH", "default", "wrong"],
                &["AUTH", "nouser", "pw"],
                &["AUTH", "a", "b", "c"],
                &["AUTH"],
                &["ACL", "WHOAMI"],
            ],
        )
        .run()
        .await
}

#[tokio::test]
async fn acl_checks_inside_transactions_blocking_and_subscribe() {
    Scenario::new("acl_checks_inside_transactions_blocking_and_subscribe")
        .each(
            A,
            &[
                &[
                    "ACL",
                    "SETUSER",
                    "u",
                    "on",
                    ">p",
                    "+@all",
                    "-get",
                    "~x*",
                    "resetchannels",
                    "&news",
                ],
                &["AUTH", "u", "p"],
                &["MULTI"],
                &["GET", "x"],
                &["SET", "x", "1"],
                &["EXEC"],
                &["SET", "y", "1"],
                &["MULTI"],
                &["SET", "y", "1"],
                &["EXEC"],
                &["BLPOP", "y", "0.01"],
                &["BLPOP", "x", "0.01"],
                &["SUBSCRIBE", "other"],
                &["SUBSCRIBE", "news"],
            ],
        )
        .run()
        .await
}

// ---------------------------------------------------------------------------------------------
// Several clients
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn several_clients_interleaving() {
    let pipeline = |c: &'static str| -> Vec<Vec<String>> {
        (0..50)
            .flat_map(|i| {
                [
                    vec!["SET".into(), format!("{c}:{i}"), format!("{c}-{i}")],
                    vec!["INCR".into(), format!("{c}:n")],
                    vec!["GET".into(), format!("{c}:{i}")],
                ]
            })
            .collect()
    };
    let bytes = |cmds: Vec<Vec<String>>| -> Vec<u8> {
        cmds.iter().flat_map(|c| encode(c.as_slice())).collect()
    };
    Scenario::new("several_clients")
        // Three deep pipelines on their own keys, all written before any reply is read.
        .write_bytes(A, bytes(pipeline("a")))
        .write_bytes(B, bytes(pipeline("b")))
        .write_bytes(C, bytes(pipeline("c")))
        .read(C, 150)
        .read(A, 150)
        .read(B, 150)
        // A shared counter, in a fixed order.
        .each(A, &[&["INCR", "shared"]])
        .each(B, &[&["INCR", "shared"]])
        .each(C, &[&["INCR", "shared"]])
        // One client's transaction around another's plain commands.
        .each(A, &[&["MULTI"], &["INCR", "shared"]])
        .each(
            B,
            &[
                &["INCR", "shared"],
                &["SELECT", "1"],
                &["SET", "shared", "b"],
            ],
        )
        .each(C, &[&["WATCH", "shared"], &["GET", "shared"]])
        .each(A, &[&["GET", "shared"], &["EXEC"]])
        .each(C, &[&["MULTI"], &["SET", "shared", "c"], &["EXEC"]])
        .each(
            B,
            &[&["GET", "shared"], &["SELECT", "0"], &["GET", "shared"]],
        )
        .run()
        .await
}

/// Two transactions open at once; a third never executed (C leaves with it open) writes nothing.
#[tokio::test]
async fn transactions_of_two_clients_interleaved() {
    Scenario::new("transactions_of_two_clients_interleaved")
        .each(A, &[&["MULTI"], &["INCR", "n"]])
        .each(B, &[&["MULTI"], &["INCR", "n"]])
        .each(A, &[&["INCR", "n"], &["EXEC"]])
        .each(B, &[&["EXEC"], &["GET", "n"]])
        .write(C, &[&["MULTI"], &["SET", "gone", "1"]])
        .read(C, 2)
        .each(A, &[&["GET", "gone"]])
        .run()
        .await
}
