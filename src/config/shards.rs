//! The `[upstream]` table's topology: `kind = "single"` (the `address`, or `--upstream`) or
//! `kind = "shards"` with `[[upstream.servers]]`, hashed as twemproxy hashes. Every error names its
//! key as written in the file (`upstream.servers[1].weight`).

use serde::Deserialize;

use super::{boolean, duration, integer, text, Raw, Topology, Upstream};
use crate::shard::{Distribution, Eject, Hash, Server, Spec};

/// Keys of the `[upstream]` table that describe the topology (the others there are settings).
pub(super) const KEYS: &[&str] = &[
    "kind",
    "hash",
    "distribution",
    "hash_tag",
    "auto_eject_hosts",
    "server_failure_limit",
    "server_retry_timeout",
    "servers",
];

/// Keys of one `[[upstream.servers]]` entry.
const SERVER_KEYS: &[&str] = &["address", "weight", "name"];

/// twemproxy's defaults for ejection.
const FAILURE_LIMIT: u32 = 2;
const RETRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An error: the key as written in the file, and why.
type KeyError = (String, String);

/// Whether `table` describes shards (`kind = "shards"`, or servers without a kind).
pub(super) fn is_shards(table: &toml::Table) -> bool {
    match table.get("kind") {
        Some(kind) => kind.as_str() == Some("shards"),
        None => table.contains_key("servers"),
    }
}

/// The topology `table` describes. With shards, every server's upstream has the pool's db,
/// credentials and TLS (they must agree).
pub(super) fn parse(table: &toml::Table) -> Result<Topology, KeyError> {
    let kind = match table.get("kind") {
        None if table.contains_key("servers") => "shards",
        None => "single",
        Some(kind) => kind
            .as_str()
            .ok_or_else(|| key_error("kind", "expected a string: \"single\" or \"shards\""))?,
    };
    match kind {
        "shards" => {}
        "single" => {
            return match KEYS
                .iter()
                .find(|k| **k != "kind" && table.contains_key(**k))
            {
                Some(key) => Err(key_error(key, "only for kind = \"shards\"")),
                None => Ok(Topology::Single),
            }
        }
        "cluster" | "sentinel" => {
            return Err(key_error(
                "kind",
                &format!("{kind:?} is not yet supported (\"single\" or \"shards\")"),
            ))
        }
        other => {
            return Err(key_error(
                "kind",
                &format!("unknown {other:?}; expected \"single\" or \"shards\""),
            ))
        }
    }
    let hash = match table.get("hash") {
        None => Hash::default(),
        Some(v) => text(&raw("hash", v)?)
            .and_then(|name| name.trim().parse())
            .map_err(|why| key_error("hash", &why))?,
    };
    let distribution = match table.get("distribution") {
        None => Distribution::default(),
        Some(v) => text(&raw("distribution", v)?)
            .and_then(|name| name.trim().parse())
            .map_err(|why| key_error("distribution", &why))?,
    };
    let hash_tag = match table.get("hash_tag") {
        None => None,
        Some(v) => match text(&raw("hash_tag", v)?)
            .map_err(|why| key_error("hash_tag", &why))?
            .as_bytes()
        {
            &[open, close] => Some([open, close]),
            _ => {
                return Err(key_error(
                    "hash_tag",
                    "expected two characters, such as \"{}\"",
                ))
            }
        },
    };
    let auto_eject = table
        .get("auto_eject_hosts")
        .map(|v| {
            boolean(&raw("auto_eject_hosts", v)?).map_err(|why| key_error("auto_eject_hosts", &why))
        })
        .transpose()?
        .unwrap_or(false);
    let failure_limit = table
        .get("server_failure_limit")
        .map(|v| {
            let n = integer(&raw("server_failure_limit", v)?)
                .map_err(|why| key_error("server_failure_limit", &why))?;
            match u32::try_from(n) {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(key_error(
                    "server_failure_limit",
                    "must be from 1 to 4294967295",
                )),
            }
        })
        .transpose()?
        .unwrap_or(FAILURE_LIMIT);
    let retry_timeout = table
        .get("server_retry_timeout")
        .map(|v| match duration(&raw("server_retry_timeout", v)?) {
            Ok(d) if d.is_zero() => Err(key_error("server_retry_timeout", "must be more than 0")),
            Ok(d) => Ok(d),
            Err(why) => Err(key_error("server_retry_timeout", &why)),
        })
        .transpose()?
        .unwrap_or(RETRY_TIMEOUT);
    let servers = servers(table.get("servers"))?;
    Ok(Topology::Shards(Spec {
        servers,
        hash,
        distribution,
        hash_tag,
        eject: auto_eject.then_some(Eject {
            failure_limit,
            retry_timeout,
        }),
    }))
}

/// The `[[upstream.servers]]` entries: at least one, no address or name twice, and every one
/// with the first one's db, credentials and TLS.
fn servers(value: Option<&toml::Value>) -> Result<Vec<Server>, KeyError> {
    let entries = match value {
        None => return Err(key_error("servers", "kind = \"shards\" needs at least one [[upstream.servers]]")),
        Some(toml::Value::Array(entries)) if !entries.is_empty() => entries,
        Some(_) => {
            return Err(key_error(
                "servers",
                "expected a list of tables ([[upstream.servers]] with address = \"HOST:PORT\"), at least one",
            ))
        }
    };
    let mut servers: Vec<Server> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = |key: &str| format!("servers[{i}].{key}");
        let Some(entry) = entry.as_table() else {
            return Err(key_error(
                &format!("servers[{i}]"),
                "expected a table with address = \"HOST:PORT\"",
            ));
        };
        if let Some(key) = entry.keys().find(|k| !SERVER_KEYS.contains(&k.as_str())) {
            return Err(key_error(&at(key), "unknown key (address, weight or name)"));
        }
        let upstream = match entry.get("address") {
            None => return Err(key_error(&at("address"), "missing")),
            Some(v) => text(&raw(&at("address"), v)?)
                .and_then(Upstream::parse)
                .map_err(|why| key_error(&at("address"), &why))?,
        };
        let weight = match entry.get("weight") {
            None => 1,
            Some(v) => {
                let n = integer(&raw(&at("weight"), v)?)
                    .map_err(|why| key_error(&at("weight"), &why))?;
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => n,
                    _ => return Err(key_error(&at("weight"), "must be from 1 to 4294967295")),
                }
            }
        };
        let name = match entry.get("name") {
            None => None,
            Some(v) => match text(&raw(&at("name"), v)?)
                .map_err(|why| key_error(&at("name"), &why))?
                .trim()
            {
                "" => return Err(key_error(&at("name"), "must not be empty")),
                name if name.contains(char::is_whitespace) => {
                    return Err(key_error(&at("name"), "must not contain spaces"))
                }
                name => Some(name.to_owned()),
            },
        };
        if let Some(first) = servers.first() {
            let (a, b) = (&first.upstream, &upstream);
            let differs = [
                (a.db != b.db, "db differs"),
                (a.tls != b.tls, "TLS (redis:// or rediss://) differs"),
                (
                    a.username != b.username || a.password != b.password,
                    "credentials differ",
                ),
            ];
            if let Some((_, what)) = differs.iter().find(|(differs, _)| *differs) {
                let reason = format!(
                    "its {what} from upstream.servers[0]'s; every server of the pool has the same db, credentials and TLS"
                );
                return Err(key_error(&at("address"), &reason));
            }
        }
        if let Some(j) = servers
            .iter()
            .position(|s| s.upstream.endpoint == upstream.endpoint)
        {
            return Err(key_error(
                &at("address"),
                &format!("the same server as upstream.servers[{j}]"),
            ));
        }
        if let Some(j) = servers
            .iter()
            .position(|s| name.is_some() && s.name == name)
        {
            return Err(key_error(
                &at("name"),
                &format!("the same name as upstream.servers[{j}]"),
            ));
        }
        servers.push(Server {
            upstream,
            name,
            weight,
        });
    }
    Ok(servers)
}

/// A TOML value as the settings parsers take it.
fn raw(key: &str, value: &toml::Value) -> Result<Raw, KeyError> {
    Raw::deserialize(value.clone()).map_err(|e| key_error(key, e.message()))
}

fn key_error(key: &str, reason: &str) -> KeyError {
    (format!("upstream.{key}"), reason.to_owned())
}
