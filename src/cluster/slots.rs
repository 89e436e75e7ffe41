//! Hash slots: which slot a key is in, and the slot map as `CLUSTER SLOTS` reports it.

use crate::config::{Endpoint, Upstream};
use crate::upstream::UpstreamSettings;
use crate::value::{self, Value};

/// The hash slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag — the bytes between the
/// first `{` and the first `}` after it, when there are any — modulo 16384, as Redis Cluster does.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16(hashed) & 0x3FFF
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as in Redis's `crc16.c`
/// (table-driven: it runs for every key of every command).
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

fn crc16(bytes: &[u8]) -> u16 {
    CRC16.checksum(bytes)
}

/// A node as `CLUSTER SLOTS` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// The endpoint: an IP, a hostname, `""` (the node that answered) or `"?"` (unknown).
    pub host: String,
    pub port: u16,
    /// The node id, when the reply has one (Redis ≥ 4).
    pub id: Option<String>,
    /// The node's IP from the networking metadata (Redis ≥ 7), when it is there.
    pub ip: Option<String>,
}

impl NodeAddr {
    /// Where to connect: `asked`'s host for an empty (or NULL) endpoint; for an unknown one
    /// (`"?"`: hostnames preferred but none set), the IP from the metadata, else `None`.
    pub fn endpoint(&self, asked: &Endpoint) -> Option<Endpoint> {
        match self.host.as_str() {
            "?" => self.ip.as_ref().map(|ip| Endpoint::Tcp {
                host: ip.clone(),
                port: self.port,
            }),
            "" => match asked {
                Endpoint::Tcp { host, .. } => Some(Endpoint::Tcp {
                    host: host.clone(),
                    port: self.port,
                }),
                Endpoint::Unix(_) => None,
            },
            host => Some(Endpoint::Tcp {
                host: host.to_owned(),
                port: self.port,
            }),
        }
    }
}

/// One entry of `CLUSTER SLOTS`: a range of slots, its primary and its replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary: NodeAddr,
    pub replicas: Vec<NodeAddr>,
}

/// Parses a `CLUSTER SLOTS` reply (RESP2 or RESP3). `Err` says what was wrong with it.
pub fn parse_slots(reply: &[u8]) -> Result<Vec<SlotRange>, String> {
    if reply.first() == Some(&b'-') {
        return Err(String::from_utf8_lossy(&reply[1..]).trim_end().to_owned());
    }
    let Some(Value::Array(entries)) = value::parse(reply, 4) else {
        return Err("CLUSTER SLOTS: not an array".into());
    };
    let node = |v: &Value| -> Option<NodeAddr> {
        let Value::Array(fields) = v else { return None };
        let host = match fields.first()? {
            Value::Text(host) => String::from_utf8_lossy(host).into_owned(),
            Value::Other => String::new(),
            _ => return None,
        };
        let Value::Int(port) = fields.get(1)? else {
            return None;
        };
        let text = |v: &Value| match v {
            Value::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        };
        let id = fields.get(2).and_then(text);
        let ip = match fields.get(3) {
            Some(Value::Array(meta)) => meta
                .chunks(2)
                .find(|kv| matches!(&kv[0], Value::Text(k) if k == b"ip"))
                .and_then(|kv| kv.get(1).and_then(text)),
            _ => None,
        };
        Some(NodeAddr {
            host,
            port: u16::try_from(*port).ok()?,
            id,
            ip,
        })
    };
    entries
        .iter()
        .map(|entry| {
            let bad = || "CLUSTER SLOTS: malformed entry".to_owned();
            let Value::Array(fields) = entry else {
                return Err(bad());
            };
            let slot = |v: Option<&Value>| match v {
                Some(Value::Int(n)) => u16::try_from(*n).ok(),
                _ => None,
            };
            let (start, end) = (
                slot(fields.first()).ok_or_else(bad)?,
                slot(fields.get(1)).ok_or_else(bad)?,
            );
            let primary = fields.get(2).and_then(node).ok_or_else(bad)?;
            let replicas = fields.iter().skip(3).filter_map(node).collect();
            Ok(SlotRange {
                start,
                end,
                primary,
                replicas,
            })
        })
        .collect()
}

/// Asks `node` for `CLUSTER SLOTS` on a short-lived connection (`base`'s TLS and timeouts).
pub async fn fetch(base: &UpstreamSettings, node: &Upstream) -> Result<Vec<SlotRange>, String> {
    let settings = UpstreamSettings {
        upstream: node.clone(),
        ..base.clone()
    };
    let reply = crate::upstream::ask(&settings, &[b"CLUSTER", b"SLOTS"])
        .await
        .map_err(|e| e.to_string())?;
    parse_slots(&reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` of Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"{}x"), crc16(b"{}x") & 0x3FFF);
        assert_eq!(key_slot(b"a{b}{c}"), key_slot(b"b"));
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn parses_cluster_slots() {
        let reply = b"*1\r\n*4\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:30001\r\n$4\r\nabcd\r\n*3\r\n$0\r\n\r\n:30004\r\n$4\r\nefgh\r\n";
        let ranges = parse_slots(reply).unwrap();
        assert_eq!(ranges.len(), 1);
        assert_eq!((ranges[0].start, ranges[0].end), (0, 5460));
        assert_eq!(ranges[0].primary.port, 30001);
        assert_eq!(ranges[0].primary.id.as_deref(), Some("abcd"));
        assert_eq!(ranges[0].replicas[0].host, "");
        assert!(parse_slots(b"-ERR This instance has cluster support disabled\r\n").is_err());
    }

    /// Redis 7.0.15's answer with `cluster-preferred-endpoint-type hostname`, one node with a
    /// hostname, the others without (`"?"`), each with its IP in the metadata.
    const HOSTNAMES_RESP2: &[u8] = b"*2\r\n\
*4\r\n:0\r\n:5460\r\n\
*4\r\n$14\r\nnode-1.example\r\n:24001\r\n$4\r\nid-1\r\n*2\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n\
*4\r\n$1\r\n?\r\n:24005\r\n$4\r\nid-5\r\n*2\r\n$2\r\nip\r\n$9\r\n127.0.0.5\r\n\
*3\r\n:5461\r\n:16383\r\n\
*4\r\n$1\r\n?\r\n:24002\r\n$4\r\nid-2\r\n*0\r\n";
    /// The same in RESP3 (`HELLO 3`): the metadata is a map.
    const HOSTNAMES_RESP3: &[u8] = b"*2\r\n\
*4\r\n:0\r\n:5460\r\n\
*4\r\n$14\r\nnode-1.example\r\n:24001\r\n$4\r\nid-1\r\n%1\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n\
*4\r\n$1\r\n?\r\n:24005\r\n$4\r\nid-5\r\n%1\r\n$2\r\nip\r\n$9\r\n127.0.0.5\r\n\
*3\r\n:5461\r\n:16383\r\n\
*4\r\n$1\r\n?\r\n:24002\r\n$4\r\nid-2\r\n%0\r\n";

    #[test]
    fn parses_hostnames_unknown_endpoints_and_metadata_in_resp2_and_resp3() {
        let asked = Endpoint::Tcp {
            host: "10.1.1.1".into(),
            port: 1,
        };
        let at = |host: &str, port| {
            Some(Endpoint::Tcp {
                host: host.into(),
                port,
            })
        };
        for reply in [HOSTNAMES_RESP2, HOSTNAMES_RESP3] {
            let ranges = parse_slots(reply).unwrap();
            assert_eq!(ranges.len(), 2);
            let (first, second) = (&ranges[0], &ranges[1]);
            assert_eq!(
                (first.start, first.end, second.start, second.end),
                (0, 5460, 5461, 16383)
            );
            assert_eq!(first.primary.id.as_deref(), Some("id-1"));
            assert_eq!(first.primary.endpoint(&asked), at("node-1.example", 24001));
            assert_eq!(first.replicas.len(), 1);
            assert_eq!(first.replicas[0].id.as_deref(), Some("id-5"));
            assert_eq!(first.replicas[0].endpoint(&asked), at("127.0.0.5", 24005));
            assert_eq!(second.primary.endpoint(&asked), None, "\"?\" without an ip");
            assert!(second.replicas.is_empty());
        }
    }

    #[test]
    fn parses_null_and_empty_endpoints_and_replies_without_ids() {
        let asked = Endpoint::Tcp {
            host: "asked.example".into(),
            port: 7000,
        };
        let here = |port| {
            Some(Endpoint::Tcp {
                host: "asked.example".into(),
                port,
            })
        };
        // RESP2 NULL bulk, RESP3 null, empty string; Redis 3 had no node ids.
        let reply = b"*3\r\n\
*3\r\n:0\r\n:99\r\n*2\r\n$-1\r\n:7001\r\n\
*3\r\n:100\r\n:199\r\n*2\r\n_\r\n:7002\r\n\
*4\r\n:200\r\n:16383\r\n*3\r\n$0\r\n\r\n:7003\r\n$1\r\nc\r\n*2\r\n+10.0.0.4\r\n:7004\r\n";
        let ranges = parse_slots(reply).unwrap();
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0].primary.endpoint(&asked), here(7001));
        assert_eq!(ranges[1].primary.endpoint(&asked), here(7002));
        assert_eq!(ranges[2].primary.endpoint(&asked), here(7003));
        assert_eq!(ranges[0].primary.id, None);
        assert_eq!(ranges[2].primary.id.as_deref(), Some("c"));
        assert_eq!(ranges[2].replicas[0].host, "10.0.0.4");
        let unix = Endpoint::Unix("/tmp/redis.sock".into());
        assert_eq!(ranges[0].primary.endpoint(&unix), None);
        // An empty cluster (no slots assigned yet) is a valid, empty answer.
        assert_eq!(parse_slots(b"*0\r\n").unwrap(), Vec::new());
    }

    #[test]
    fn refuses_malformed_replies() {
        for bad in [
            &b"+OK\r\n"[..],
            b"*1\r\n:5\r\n",
            b"*1\r\n*2\r\n:0\r\n:5\r\n",
            b"*1\r\n*3\r\n:0\r\n:99999\r\n*2\r\n$1\r\na\r\n:1\r\n",
            b"*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n$1\r\na\r\n:70000\r\n",
            b"*2\r\n*3\r\n:0\r\n:5\r\n*2\r\n$1\r\na\r\n:1\r\n",
            b"*1\r\n*3\r\n:0\r\n:5\r\n*2\r\n$5\r\na\r\n",
            // Nested deeper than CLUSTER SLOTS ever is.
            b"*1\r\n*3\r\n:0\r\n:5\r\n*3\r\n$1\r\na\r\n:1\r\n*1\r\n*0\r\n",
        ] {
            assert!(
                parse_slots(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
