//! One node's account of the slot map, and the choice between the accounts of several nodes
//! (TOPOLOGY.md section 3): the view most of them agree on, preferring one that covers every slot,
//! because a primary cut off in a minority partition still reports its stale map (redis #3138).

use std::collections::HashMap;

use super::slots::{NodeAddr, SlotRange};
use super::SLOTS;
use crate::config::Endpoint;

/// A cluster node as a view names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its node id (`CLUSTER SLOTS` has it from Redis 4 on): the same node keeps it across
    /// restarts on another address (it is in its `nodes.conf`).
    pub id: Option<String>,
    /// Where it is now.
    pub endpoint: Endpoint,
}

/// A range of slots, its primary and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub start: u16,
    pub end: u16,
    pub primary: Node,
    /// Recorded for choosing whom to ask for the map (and a later read-replica mode); commands
    /// never go to them.
    pub replicas: Vec<Node>,
}

/// The slot map as one node reported it, every endpoint resolved to an address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub shards: Vec<Shard>,
}

impl View {
    /// The view in `ranges`, the `CLUSTER SLOTS` answer of the node at `asked`. An endpoint `""`
    /// (or NULL) is `asked`'s host; `"?"` names an unknown address: the node's id then finds it in
    /// `known` (id → address, as earlier views had it), else the node is left out, and a range
    /// without its primary is uncovered.
    pub fn resolve(
        ranges: &[SlotRange],
        asked: &Endpoint,
        known: &HashMap<String, Endpoint>,
    ) -> View {
        let node = |addr: &NodeAddr| {
            let endpoint = addr
                .endpoint(asked)
                .or_else(|| addr.id.as_ref().and_then(|id| known.get(id).cloned()))?;
            Some(Node {
                id: addr.id.clone(),
                endpoint,
            })
        };
        let mut shards: Vec<Shard> = ranges
            .iter()
            .filter(|r| r.start <= r.end && usize::from(r.start) < SLOTS)
            .filter_map(|r| {
                Some(Shard {
                    start: r.start,
                    end: r.end.min(SLOTS as u16 - 1),
                    primary: node(&r.primary)?,
                    replicas: r.replicas.iter().filter_map(node).collect(),
                })
            })
            .collect();
        shards.sort_by_key(|s| s.start);
        View { shards }
    }

    /// True when every slot has a primary.
    pub fn covered(&self) -> bool {
        let mut next = 0usize;
        for shard in &self.shards {
            if usize::from(shard.start) > next {
                return false;
            }
            next = next.max(usize::from(shard.end) + 1);
        }
        next >= SLOTS
    }

    /// What views must share to agree: each range and its primary, by node id (by address for
    /// a node without one). Replicas and addresses of known ids may differ (gossip spreads them
    /// at its own pace).
    fn key(&self) -> Vec<(u16, u16, String)> {
        self.shards
            .iter()
            .map(|s| {
                let who = match &s.primary.id {
                    Some(id) => id.clone(),
                    None => s.primary.endpoint.to_string(),
                };
                (s.start, s.end, who)
            })
            .collect()
    }

    /// Every node of the view: each shard's primary, then its replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.shards
            .iter()
            .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
    }
}

/// The view to install from `views`, the answers of the nodes asked in the order they were
/// asked: a view covering every slot beats one that does not; then the view more nodes agree on
/// (same ranges, same primaries by id); then the earlier asked. Within the agreeing views, a node
/// whose address they disagree on gets the address most of them give (the earliest on a tie).
/// `None` when there is no view.
pub fn choose(views: &[View]) -> Option<View> {
    let keys: Vec<_> = views.iter().map(View::key).collect();
    let votes = |i: usize| keys.iter().filter(|k| **k == keys[i]).count();
    let best =
        (0..views.len()).max_by_key(|&i| (views[i].covered(), votes(i), std::cmp::Reverse(i)))?;
    let agreeing: Vec<&View> = (0..views.len())
        .filter(|&i| keys[i] == keys[best])
        .map(|i| &views[i])
        .collect();
    // Per node id: each address given, with how many agreeing views give it, in first-seen order.
    let mut given: HashMap<&str, Vec<(&Endpoint, usize)>> = HashMap::new();
    for view in &agreeing {
        for node in view.nodes() {
            let Some(id) = &node.id else { continue };
            let addresses = given.entry(id).or_default();
            match addresses.iter_mut().find(|(e, _)| **e == node.endpoint) {
                Some((_, n)) => *n += 1,
                None => addresses.push((&node.endpoint, 1)),
            }
        }
    }
    let address = |node: &Node| -> Node {
        let endpoint = node
            .id
            .as_deref()
            .and_then(|id| given.get(id))
            .and_then(|addresses| {
                // The first of the most given: `max_by_key` keeps the last maximum, so reversed.
                addresses.iter().rev().max_by_key(|(_, n)| *n)
            })
            .map_or(&node.endpoint, |(e, _)| *e);
        Node {
            id: node.id.clone(),
            endpoint: endpoint.clone(),
        }
    };
    let shards = views[best]
        .shards
        .iter()
        .map(|s| Shard {
            start: s.start,
            end: s.end,
            primary: address(&s.primary),
            replicas: s.replicas.iter().map(address).collect(),
        })
        .collect();
    Some(View { shards })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> Endpoint {
        Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn node(id: &str, port: u16) -> Node {
        Node {
            id: Some(id.into()),
            endpoint: tcp(port),
        }
    }

    /// A view of `(start, end, primary id, primary port)` ranges.
    fn view(ranges: &[(u16, u16, &str, u16)]) -> View {
        View {
            shards: ranges
                .iter()
                .map(|&(start, end, id, port)| Shard {
                    start,
                    end,
                    primary: node(id, port),
                    replicas: Vec::new(),
                })
                .collect(),
        }
    }

    const NEW: &[(u16, u16, &str, u16)] = &[
        (0, 5460, "a", 1),
        (5461, 10922, "b", 2),
        (10923, 16383, "r", 4),
    ];
    const STALE: &[(u16, u16, &str, u16)] = &[
        (0, 5460, "a", 1),
        (5461, 10922, "b", 2),
        (10923, 16383, "c", 3),
    ];

    #[test]
    fn coverage() {
        assert!(view(NEW).covered());
        assert!(!view(&NEW[..2]).covered());
        assert!(!view(&[(1, 16383, "a", 1)]).covered());
        assert!(!view(&[(0, 100, "a", 1), (102, 16383, "b", 2)]).covered());
        assert!(view(&[(0, 16383, "a", 1)]).covered());
        assert!(!View::default().covered());
    }

    #[test]
    fn the_majority_beats_a_stale_minority_whatever_the_order() {
        for stale_at in 0..3 {
            let mut views = vec![view(NEW), view(NEW)];
            views.insert(stale_at, view(STALE));
            assert_eq!(choose(&views), Some(view(NEW)), "stale view at {stale_at}");
        }
    }

    #[test]
    fn full_coverage_beats_a_majority_of_partial_views() {
        // Two nodes that lost their nodes.conf (or were just added) know part of the map only.
        let partial = view(&NEW[..1]);
        let views = [partial.clone(), partial, view(STALE)];
        assert_eq!(choose(&views), Some(view(STALE)));
        // Among partial views only, the majority still wins.
        let views = [view(&NEW[..1]), view(&NEW[..2]), view(&NEW[..2])];
        assert_eq!(choose(&views), Some(view(&NEW[..2])));
    }

    #[test]
    fn a_tie_goes_to_the_node_asked_first() {
        assert_eq!(choose(&[view(STALE), view(NEW)]), Some(view(STALE)));
        assert_eq!(choose(&[view(NEW), view(STALE)]), Some(view(NEW)));
        assert_eq!(choose(&[view(NEW)]), Some(view(NEW)));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn nodes_agree_by_id_and_the_address_most_give_wins() {
        // Node "c" restarted on port 9; one node has not heard yet.
        let moved = [
            (0, 5460, "a", 1),
            (5461, 10922, "b", 2),
            (10923, 16383, "c", 9),
        ];
        for old_at in 0..3 {
            let mut views = vec![view(&moved), view(&moved)];
            views.insert(old_at, view(STALE));
            assert_eq!(
                choose(&views),
                Some(view(&moved)),
                "old address at {old_at}"
            );
        }
        // A replica's address is voted on too.
        let with_replica = |port| {
            let mut v = view(&moved);
            v.shards[0].replicas.push(node("ra", port));
            v
        };
        let views = [with_replica(7), with_replica(8), with_replica(8)];
        assert_eq!(choose(&views), Some(with_replica(8)));
        // Without ids, a node is its address: another address is another node.
        let anonymous = |port| {
            let mut v = view(&[(0, 16383, "x", port)]);
            v.shards[0].primary.id = None;
            v
        };
        let views = [anonymous(1), anonymous(2), anonymous(2)];
        assert_eq!(choose(&views), Some(anonymous(2)));
    }

    #[test]
    fn endpoints_resolve_against_the_node_asked_and_known_ids() {
        let addr = |host: &str, port, id: Option<&str>| NodeAddr {
            host: host.into(),
            port,
            id: id.map(Into::into),
            ip: None,
        };
        let range = |start, end, primary, replicas| SlotRange {
            start,
            end,
            primary,
            replicas,
        };
        let ranges = [
            range(
                10923,
                20000,
                addr("", 3, Some("c")),
                vec![
                    addr("?", 6, Some("rc")),
                    addr("?", 7, Some("gone")),
                    NodeAddr {
                        ip: Some("10.0.0.8".into()),
                        ..addr("?", 8, Some("r8"))
                    },
                ],
            ),
            range(0, 5460, addr("redis-0.example", 1, Some("a")), vec![]),
            range(5461, 10922, addr("?", 2, None), vec![]),
        ];
        let asked = Endpoint::Tcp {
            host: "10.0.0.3".into(),
            port: 3,
        };
        let known = HashMap::from([("rc".to_owned(), tcp(16))]);
        let view = View::resolve(&ranges, &asked, &known);
        let host = |h: &str, port| Endpoint::Tcp {
            host: h.into(),
            port,
        };
        assert_eq!(
            view.shards.len(),
            2,
            "the range of an unknown primary is left out"
        );
        assert_eq!(view.shards[0].primary.endpoint, host("redis-0.example", 1));
        assert_eq!((view.shards[1].start, view.shards[1].end), (10923, 16383));
        assert_eq!(view.shards[1].primary.endpoint, host("10.0.0.3", 3));
        let r8 = Node {
            id: Some("r8".into()),
            endpoint: host("10.0.0.8", 8),
        };
        assert_eq!(view.shards[1].replicas, vec![node("rc", 16), r8]);
        assert!(!view.covered());
    }
}
