//! Asking the sentinels: what one sentinel says about the master ([`Answer`], read from one
//! pipelined round trip), which answer to believe when they disagree ([`choose`]), and whom to
//! ask in which order ([`Sentinels`]: the configured ones, then those they told of).

use bytes::Bytes;

use crate::config::Endpoint;
use crate::resp;
use crate::value::{self, Value};

/// Sentinels known at most (configured and learned): learned ones past it are ignored.
pub const MAX_SENTINELS: usize = 16;

/// What one sentinel said about the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The primary it names (`SENTINEL GET-MASTER-ADDR-BY-NAME`): during a failover, the
    /// leader names the promoted replica from `+failover-state-reconf-slaves` on.
    pub primary: Endpoint,
    /// The master's configuration epoch (`SENTINEL MASTER`'s `config-epoch`): bumped by every
    /// failover, so the sentinel that saw the latest one says the highest.
    pub epoch: i64,
    /// The replicas it sees up and linked to their primary (`SENTINEL REPLICAS`: flags without
    /// `s_down`, `o_down`, `disconnected`; `master-link-status` ok).
    pub replicas: Vec<Endpoint>,
    /// The other sentinels it knows (`SENTINEL SENTINELS`).
    pub sentinels: Vec<Endpoint>,
}

/// The sentinels to ask, in order: the configured ones, then those learned from their answers.
/// Those that answered move to the front (the one believed first), as the client spec asks.
#[derive(Debug, Clone)]
pub struct Sentinels {
    configured: Vec<Endpoint>,
    order: Vec<Endpoint>,
}

impl Answer {
    /// The commands whose replies [`Answer::parse`] reads, for master `master`.
    pub fn commands(master: &str) -> [Bytes; 4] {
        let master = master.as_bytes();
        let sentinel = |sub: &[u8]| resp::encode_request(&[&b"SENTINEL"[..], sub, master]);
        [
            sentinel(b"GET-MASTER-ADDR-BY-NAME"),
            sentinel(b"MASTER"),
            sentinel(b"REPLICAS"),
            sentinel(b"SENTINELS"),
        ]
    }

    /// Reads the replies to [`Answer::commands`]. `Err` says why the sentinel is no help (it
    /// does not monitor the master, refused a command, or sent something unreadable).
    pub fn parse(replies: &[Bytes], master: &str) -> Result<Answer, String> {
        let [addr, info, replicas, sentinels] = replies else {
            return Err("too few replies".into());
        };
        let addr = value::parse(addr, 1).ok_or("unreadable reply")?;
        let primary = match &addr {
            Value::Array(items) => match items.as_slice() {
                [host, port] => endpoint(host, port).ok_or("unreadable address")?,
                _ => return Err("unreadable address".into()),
            },
            Value::Error(e) => return Err(String::from_utf8_lossy(e).into_owned()),
            _ => return Err(format!("does not monitor master {master:?}")),
        };
        let info = value::parse(info, 1).ok_or("unreadable SENTINEL MASTER reply")?;
        if let Value::Error(e) = &info {
            return Err(String::from_utf8_lossy(e).into_owned());
        }
        let epoch = info
            .field(b"config-epoch")
            .and_then(Value::text)
            .and_then(resp::parse_int)
            .unwrap_or(0);
        let replicas = entries(replicas)
            .iter()
            .filter(|entry| {
                let flags = entry.field(b"flags").and_then(Value::string);
                let up = flags.is_some_and(|f| {
                    !f.split(',')
                        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
                });
                up && entry.field(b"master-link-status").and_then(Value::text) == Some(b"ok")
            })
            .filter_map(address)
            .collect();
        let sentinels = entries(sentinels).iter().filter_map(address).collect();
        Ok(Answer {
            primary,
            epoch,
            replicas,
            sentinels,
        })
    }
}

/// Which answer to believe: the highest configuration epoch (the sentinels that saw the latest
/// failover), then the primary most answers with that epoch name, then the earliest asked.
/// `answers` are in asking order; returns an index into it, `None` when it is empty.
pub fn choose(answers: &[&Answer]) -> Option<usize> {
    let agreeing = |a: &Answer| {
        answers
            .iter()
            .filter(|b| b.epoch == a.epoch && b.primary == a.primary)
            .count()
    };
    (0..answers.len()).max_by_key(|&i| {
        let a = answers[i];
        (a.epoch, agreeing(a), std::cmp::Reverse(i))
    })
}

impl Sentinels {
    /// The configured sentinels, in their order.
    pub fn new(configured: Vec<Endpoint>) -> Sentinels {
        Sentinels {
            order: configured.clone(),
            configured,
        }
    }

    /// Whom to ask, in order.
    pub fn order(&self) -> &[Endpoint] {
        &self.order
    }

    /// After a discovery: `answered` (the one believed first, then the others that answered)
    /// move to the front, in that order, the rest keeping theirs; the sentinels they told of
    /// (`told`) are learned, and a learned one that no answer mentions any more is forgotten
    /// (nothing changes while none answered).
    pub fn answered(&mut self, answered: &[Endpoint], told: &[Endpoint]) {
        if answered.is_empty() {
            return;
        }
        let kept =
            |e: &Endpoint| self.configured.contains(e) || answered.contains(e) || told.contains(e);
        let mut order: Vec<Endpoint> = answered.to_vec();
        for e in self.order.iter().chain(told) {
            if !order.contains(e) && kept(e) {
                order.push(e.clone());
            }
        }
        // Configured sentinels are never forgotten; learned ones fill the room left.
        let room = MAX_SENTINELS.saturating_sub(self.configured.len());
        let mut learned = 0;
        order.retain(|e| {
            self.configured.contains(e) || {
                learned += 1;
                learned <= room
            }
        });
        self.order = order;
    }
}

/// The entries of a `SENTINEL REPLICAS` / `SENTINEL SENTINELS` reply (each a flat key/value
/// list); none for an error or an unreadable reply.
fn entries(reply: &[u8]) -> Vec<Value> {
    match value::parse(reply, 2) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// The `ip` and `port` of one entry.
fn address(entry: &Value) -> Option<Endpoint> {
    endpoint(entry.field(b"ip")?, entry.field(b"port")?)
}

/// The address in a `host`, `port` pair.
fn endpoint(host: &Value, port: &Value) -> Option<Endpoint> {
    let port = resp::parse_int(port.text()?)?;
    Some(Endpoint::Tcp {
        host: host.string()?,
        port: u16::try_from(port).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> Endpoint {
        crate::config::Upstream::tcp("127.0.0.1", port).endpoint
    }

    fn bulk(s: &str) -> String {
        format!("${}\r\n{s}\r\n", s.len())
    }

    /// A RESP2 flat map of `pairs`.
    fn map(pairs: &[(&str, &str)]) -> String {
        let mut out = format!("*{}\r\n", pairs.len() * 2);
        for (k, v) in pairs {
            out += &bulk(k);
            out += &bulk(v);
        }
        out
    }

    fn list(items: &[String]) -> String {
        format!("*{}\r\n{}", items.len(), items.concat())
    }

    fn replies(parts: [String; 4]) -> Vec<Bytes> {
        parts.map(Bytes::from).to_vec()
    }

    fn answer(primary: u16, epoch: i64) -> Answer {
        Answer {
            primary: at(primary),
            epoch,
            replicas: Vec::new(),
            sentinels: Vec::new(),
        }
    }

    #[test]
    fn an_answer_names_the_primary_its_epoch_live_replicas_and_other_sentinels() {
        let replica = |port: &str, flags: &str, link: &str| {
            map(&[
                ("name", "x"),
                ("ip", "127.0.0.1"),
                ("port", port),
                ("flags", flags),
                ("master-link-status", link),
            ])
        };
        let got = Answer::parse(
            &replies([
                list(&[bulk("127.0.0.1"), bulk("6380")]),
                map(&[("name", "m"), ("config-epoch", "7"), ("flags", "master")]),
                list(&[
                    replica("6381", "slave", "ok"),
                    replica("6382", "s_down,slave", "ok"),
                    replica("6383", "slave,disconnected", "ok"),
                    replica("6384", "slave", "err"),
                    replica("6385", "slave,o_down", "ok"),
                ]),
                list(&[map(&[
                    ("ip", "127.0.0.1"),
                    ("port", "26380"),
                    ("flags", "sentinel"),
                ])]),
            ]),
            "m",
        )
        .unwrap();
        assert_eq!(
            got,
            Answer {
                primary: at(6380),
                epoch: 7,
                replicas: vec![at(6381)],
                sentinels: vec![at(26380)],
            }
        );
    }

    #[test]
    fn a_sentinel_that_does_not_monitor_the_master_is_no_answer() {
        let unknown = "-ERR No such master with that name\r\n".to_owned();
        let got = Answer::parse(
            &replies(["*-1\r\n".into(), unknown.clone(), unknown.clone(), unknown]),
            "m",
        );
        assert_eq!(got, Err("does not monitor master \"m\"".into()));
        let refused = "-NOAUTH Authentication required.\r\n".to_owned();
        let got = Answer::parse(
            &replies([refused.clone(), refused.clone(), refused.clone(), refused]),
            "m",
        );
        assert_eq!(got, Err("NOAUTH Authentication required.".into()));
        assert!(Answer::parse(
            &replies(["+x\r\n".into(), "".into(), "".into(), "".into()]),
            "m"
        )
        .is_err());
    }

    #[test]
    fn the_highest_epoch_wins_then_the_majority_then_the_order() {
        // A sentinel that saw the failover (epoch 2) outweighs two that did not yet.
        let (old, new) = (answer(1, 1), answer(2, 2));
        assert_eq!(choose(&[&old, &old, &new]), Some(2));
        // Same epoch: the primary most name.
        let (a, b) = (answer(1, 3), answer(2, 3));
        assert_eq!(choose(&[&a, &b, &b]), Some(1));
        // A tie: the first asked.
        assert_eq!(choose(&[&b, &a]), Some(0));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn those_that_answered_move_to_the_front_and_learned_ones_are_bounded() {
        let mut s = Sentinels::new(vec![at(1), at(2), at(3)]);
        s.answered(&[at(3), at(2)], &[at(1), at(4)]);
        assert_eq!(s.order(), &[at(3), at(2), at(1), at(4)]);
        // Nobody answered: nothing learned or forgotten.
        s.answered(&[], &[]);
        assert_eq!(s.order().len(), 4);
        // 4 is no longer mentioned: forgotten; configured ones stay.
        s.answered(&[at(1)], &[at(2)]);
        assert_eq!(s.order(), &[at(1), at(3), at(2)]);
        let many: Vec<Endpoint> = (100..200).map(at).collect();
        s.answered(&[at(2)], &many);
        assert_eq!(s.order().len(), MAX_SENTINELS);
        assert!([at(1), at(2), at(3)].iter().all(|e| s.order().contains(e)));
    }
}
