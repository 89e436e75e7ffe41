//! The sentinels' events (`SUBSCRIBE` on dedicated connections to several sentinels), used only
//! as triggers: an event about our master makes the watch ask the sentinels again, and what it
//! says is never believed by itself (a stale `+switch-master` replayed by anyone who may
//! `PUBLISH` on a sentinel must not move respipe). The same event from several sentinels counts
//! once ([`Recent`]).

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::Watch;
use crate::config::Endpoint;
use crate::resp::{self, ReplyScanner};
use crate::upstream::{self, UpstreamSettings};
use crate::value::{self, Value};

/// Sentinels subscribed to at once, each on its own connection (fewer while fewer are known):
/// events still arrive while one of them is down.
pub const SUBSCRIPTIONS: usize = 3;
/// The channels subscribed to: the primary changed (`+switch-master`), or is about to (the
/// leader names the promoted replica from `+failover-state-reconf-slaves` on); a sentinel joined
/// (`+sentinel`); the replicas changed (found, down, up, reconfigured, demoted).
pub const CHANNELS: [&str; 10] = [
    "+switch-master",
    "+failover-state-reconf-slaves",
    "+failover-end",
    "+sentinel",
    "+slave",
    "+slave-reconf-done",
    "+sdown",
    "-sdown",
    "+convert-to-slave",
    "+role-change",
];
/// The same event (channel and text) heard again within this long is the same event from
/// another sentinel, and ignored.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(1);
/// Events remembered for deduplication at most.
const RECENT_MAX: usize = 64;
/// A subscription silent this long is sent a `PING`; silent as long again, it is dropped and made
/// again (a sentinel that vanished without closing the connection).
const KEEPALIVE: Duration = Duration::from_secs(5);
/// First wait before subscribing again after a failure; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Short: events are what make respipe follow a failover within milliseconds, so a sentinel
/// that comes back is subscribed to again within a second (an attempt on a sentinel that is
/// down costs a refused connection, or the connect timeout).
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Events heard lately, to count each once.
#[derive(Debug, Default)]
pub struct Recent {
    seen: VecDeque<(Instant, String)>,
}

/// A frame on a subscribed connection.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A subscription confirmed.
    Subscribed,
    /// A message: channel and text.
    Message(String, String),
    /// An error reply (`-NOAUTH`, `-NOPERM`...).
    Error(String),
    /// Anything else (the answer to a keep-alive `PING`).
    Other,
}

impl Recent {
    /// True when `event` was not heard within [`DEDUP_WINDOW`] before `now` (it is remembered).
    pub fn first(&mut self, event: &str, now: Instant) -> bool {
        while self
            .seen
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > DEDUP_WINDOW)
        {
            self.seen.pop_front();
        }
        if self.seen.iter().any(|(_, seen)| seen == event) {
            return false;
        }
        if self.seen.len() == RECENT_MAX {
            self.seen.pop_front();
        }
        self.seen.push_back((now, event.to_owned()));
        true
    }
}

/// True when the event `text` on `channel` is about master `master`: `+switch-master <master>
/// ...`, `<type> <name> <ip> <port> @ <master> <ip> <port>` for a replica or sentinel, `master
/// <master> <ip> <port>` for the master itself.
pub fn concerns(channel: &str, text: &str, master: &str) -> bool {
    let words: Vec<&str> = text.split(' ').collect();
    if channel == "+switch-master" {
        return words.first() == Some(&master);
    }
    match words.iter().position(|w| *w == "@") {
        Some(at) => words.get(at + 1) == Some(&master),
        None => words.first() == Some(&"master") && words.get(1) == Some(&master),
    }
}

/// The sentinel to subscribe to from `order`: the first one no other subscription holds
/// (`taken`), starting after `after` (the one that just failed), wrapping around.
pub fn pick<'a>(
    order: &'a [Endpoint],
    taken: &[Option<Endpoint>],
    after: Option<&Endpoint>,
) -> Option<&'a Endpoint> {
    let start = after
        .and_then(|a| order.iter().position(|e| e == a))
        .map_or(0, |i| i + 1);
    (0..order.len())
        .map(|k| &order[(start + k) % order.len()])
        .find(|e| !taken.iter().flatten().any(|t| t == *e))
}

/// Keeps subscription number `slot` up until `stop`: subscribes to a sentinel, hands what it
/// hears to the watch, and when the connection fails, subscribes again (to the next free
/// sentinel) after a backoff. A subscription made after a failure asks for a discovery (events
/// may have been missed meanwhile).
pub async fn subscribe(watch: Weak<Watch>, slot: usize, stop: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    let mut after: Option<Endpoint> = None;
    let mut failed = false;
    loop {
        let claimed = watch.upgrade().map(|w| w.claim(slot, after.as_ref()));
        let Some(claimed) = claimed else {
            return;
        };
        if let Some((at, settings)) = claimed {
            let mut confirmed = false;
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = listen(&watch, &settings, || {
                    confirmed = true;
                    info!(sentinel = %at, "sentinel: subscribed to events");
                    if let (true, Some(watch)) = (failed, watch.upgrade()) {
                        watch.rediscover(super::Trigger::Event);
                    }
                }) => outcome,
            };
            if let Some(watch) = watch.upgrade() {
                watch.release(slot);
            }
            if confirmed {
                info!(sentinel = %at, why = %outcome, "sentinel: event subscription lost");
                backoff = BACKOFF_MIN;
            } else {
                debug!(sentinel = %at, why = %outcome, "sentinel: cannot subscribe to events");
            }
            after = Some(at);
            failed = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Subscribes on a connection of `settings` and hands every message to the watch, calling
/// `subscribed` once every channel is confirmed. Returns why it ended.
async fn listen(
    watch: &Weak<Watch>,
    settings: &UpstreamSettings,
    subscribed: impl FnOnce(),
) -> String {
    let mut stream = match upstream::open_raw(settings).await {
        Ok(stream) => stream,
        Err(e) => return e.to_string(),
    };
    let mut command: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    command.extend(CHANNELS.iter().map(|c| c.as_bytes()));
    if let Err(e) = stream.write_all(&resp::encode_request(&command)).await {
        return e.to_string();
    }
    let mut subscribed = Some(subscribed);
    let mut confirmed = 0;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scanner = ReplyScanner::new(2);
    let mut pinged = false;
    loop {
        let frame = match scanner.scan(&buf) {
            Ok(Some(frame)) => buf.split_to(frame.len),
            Ok(None) => {
                match timeout(KEEPALIVE, stream.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => return "connection closed".into(),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) if pinged => return format!("no answer to PING in {KEEPALIVE:?}"),
                    Err(_) => {
                        if let Err(e) = stream.write_all(b"*1\r\n$4\r\nPING\r\n").await {
                            return e.to_string();
                        }
                        pinged = true;
                    }
                }
                continue;
            }
            Err(e) => return e.to_string(),
        };
        pinged = false;
        match read(&frame) {
            Frame::Subscribed => {
                confirmed += 1;
                if confirmed == CHANNELS.len() {
                    if let Some(subscribed) = subscribed.take() {
                        subscribed();
                    }
                }
            }
            Frame::Message(channel, text) => match watch.upgrade() {
                Some(watch) => watch.heard(&channel, &text),
                None => return "watch dropped".into(),
            },
            Frame::Error(e) => return e,
            Frame::Other => {}
        }
    }
}

/// What a frame of a subscribed connection is.
fn read(frame: &[u8]) -> Frame {
    let value = value::parse(frame, 1);
    let items = match &value {
        Some(Value::Error(e)) => return Frame::Error(String::from_utf8_lossy(e).into_owned()),
        Some(Value::Array(items)) => items,
        _ => return Frame::Other,
    };
    match items.as_slice() {
        [kind, _, _] if kind.text() == Some(b"subscribe") => Frame::Subscribed,
        [kind, channel, text] if kind.text() == Some(b"message") => {
            match (channel.string(), text.string()) {
                (Some(channel), Some(text)) => Frame::Message(channel, text),
                _ => Frame::Other,
            }
        }
        _ => Frame::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> Endpoint {
        crate::config::Upstream::tcp("127.0.0.1", port).endpoint
    }

    #[test]
    fn only_events_about_our_master_count() {
        let m = "mymaster";
        assert!(concerns(
            "+switch-master",
            "mymaster 127.0.0.1 6379 127.0.0.1 6380",
            m
        ));
        assert!(!concerns(
            "+switch-master",
            "other 127.0.0.1 6379 127.0.0.1 6380",
            m
        ));
        assert!(!concerns(
            "+switch-master",
            "mymaster2 127.0.0.1 6379 127.0.0.1 6380",
            m
        ));
        assert!(concerns(
            "+failover-state-reconf-slaves",
            "master mymaster 127.0.0.1 6379",
            m
        ));
        assert!(!concerns(
            "+failover-state-reconf-slaves",
            "master other 127.0.0.1 6379",
            m
        ));
        let replica = "slave 127.0.0.1:6381 127.0.0.1 6381 @ mymaster 127.0.0.1 6379";
        assert!(concerns("+sdown", replica, m));
        assert!(!concerns(
            "+sdown",
            &replica.replace("@ mymaster", "@ other"),
            m
        ));
        let sentinel = "sentinel 0123abcd 127.0.0.1 26380 @ mymaster 127.0.0.1 6379";
        assert!(concerns("+sentinel", sentinel, m));
        // A replica named like our master is not the master.
        assert!(!concerns(
            "+sdown",
            "slave mymaster 127.0.0.1 6381 @ other 127.0.0.1 1",
            m
        ));
        assert!(!concerns("+sdown", "", m));
    }

    #[test]
    fn the_same_event_from_several_sentinels_counts_once_within_the_window() {
        let mut recent = Recent::default();
        let t0 = Instant::now();
        let e = "+switch-master mymaster 127.0.0.1 6379 127.0.0.1 6380";
        assert!(recent.first(e, t0));
        assert!(!recent.first(e, t0 + Duration::from_millis(5)));
        assert!(recent.first("+sdown slave x", t0 + Duration::from_millis(6)));
        // Heard again after the window: a new event (a replay, or a failover back).
        assert!(recent.first(e, t0 + DEDUP_WINDOW * 2));
        // Bounded.
        for i in 0..RECENT_MAX * 2 {
            recent.first(&i.to_string(), t0 + DEDUP_WINDOW * 2);
        }
        assert_eq!(recent.seen.len(), RECENT_MAX);
    }

    #[test]
    fn subscriptions_take_distinct_sentinels_moving_on_after_a_failure() {
        let order = [at(1), at(2), at(3)];
        assert_eq!(pick(&order, &[None, None], None), Some(&at(1)));
        assert_eq!(pick(&order, &[Some(at(1)), None], None), Some(&at(2)));
        // The one that failed is tried last.
        assert_eq!(pick(&order, &[None, None], Some(&at(1))), Some(&at(2)));
        assert_eq!(
            pick(&order, &[Some(at(2)), Some(at(3))], Some(&at(1))),
            Some(&at(1))
        );
        assert_eq!(
            pick(&order, &[Some(at(1)), Some(at(2)), Some(at(3))], None),
            None
        );
        assert_eq!(pick(&[], &[None], None), None);
    }

    #[test]
    fn frames_of_a_subscribed_connection() {
        assert_eq!(
            read(b"*3\r\n$9\r\nsubscribe\r\n$14\r\n+switch-master\r\n:1\r\n"),
            Frame::Subscribed
        );
        assert_eq!(
            read(b"*3\r\n$7\r\nmessage\r\n$6\r\n+sdown\r\n$3\r\na b\r\n"),
            Frame::Message("+sdown".into(), "a b".into())
        );
        assert_eq!(
            read(b"-NOAUTH Authentication required.\r\n"),
            Frame::Error("NOAUTH Authentication required.".into())
        );
        assert_eq!(read(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"), Frame::Other);
    }
}
