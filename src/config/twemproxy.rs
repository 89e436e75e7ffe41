//! A twemproxy (nutcracker) YAML pool as respipe configuration (`--twemproxy FILE`): its servers,
//! hashing and ejection become the `[upstream]` shards table, and `listen`, `timeout`,
//! `server_connections`, `redis_auth`, `redis_db` the matching settings. It is the lowest layer:
//! the TOML file, the environment and flags all win over it. `--print-config` shows the result.

use std::path::PathBuf;

use super::{boolean, integer, invalid, text, ConfigError, Origin, Raw, Values};
use crate::shard::{Distribution, Hash};

/// twemproxy keys respipe accepts but has no equivalent for; listed in one warning.
const IGNORED: &[&str] = &[
    "preconnect",
    "backlog",
    "client_connections",
    "tcpkeepalive",
    "reuseport",
];

/// A pool converted: settings by flat key, the topology table, and the keys ignored.
struct Converted {
    settings: Vec<(&'static str, Raw)>,
    topology: toml::Table,
    ignored: Vec<String>,
}

/// An error: the key inside the pool (`servers[2]`), and why.
type KeyError = (String, String);

impl Values {
    /// When `twemproxy` is set, reads its pool (the only one, or `twemproxy_pool`) and fills in
    /// what no other source gave: the topology (unless the file has an `[upstream]` topology) and
    /// the settings.
    pub(super) fn read_twemproxy(&mut self) -> Result<(), ConfigError> {
        let Some((raw, origin)) = self.given.get("twemproxy").cloned() else {
            return Ok(());
        };
        let file_error = |reason: String| invalid("twemproxy", reason, origin.clone());
        let path = PathBuf::from(text(&raw).map_err(file_error)?.trim());
        let yaml = std::fs::read_to_string(&path)
            .map_err(|e| file_error(format!("cannot read {}: {e}", path.display())))?;
        let pools: yaml_serde::Mapping = yaml_serde::from_str(&yaml).map_err(|e| {
            file_error(format!(
                "{}: not a twemproxy YAML file: {e}",
                path.display()
            ))
        })?;
        let names: Vec<&str> = pools.keys().filter_map(|k| k.as_str()).collect();
        let wanted = match self.given.get("twemproxy_pool") {
            Some((raw, pool_origin)) => Some(
                text(raw)
                    .map(str::trim)
                    .map_err(|why| invalid("twemproxy_pool", why, pool_origin.clone()))?,
            ),
            None => None,
        };
        let name = match (wanted, names.as_slice()) {
            (Some(wanted), _) if names.contains(&wanted) => wanted,
            (Some(wanted), _) => {
                let reason = format!(
                    "{} has no pool {wanted:?}; its pools: {}",
                    path.display(),
                    names.join(", ")
                );
                return Err(invalid(
                    "twemproxy_pool",
                    reason,
                    self.origin("twemproxy_pool"),
                ));
            }
            (None, [only]) => only,
            (None, _) => {
                return Err(file_error(format!(
                    "{} has {} pools ({}); choose one with twemproxy_pool",
                    path.display(),
                    names.len(),
                    names.join(", ")
                )))
            }
        }
        .to_owned();
        let pool = pools
            .get(name.as_str())
            .and_then(|p| p.as_mapping())
            .ok_or_else(|| {
                file_error(format!(
                    "{}: pool {name:?} is not a mapping",
                    path.display()
                ))
            })?;
        let origin = Origin::Twemproxy(path);
        let converted = convert(pool).map_err(|(key, reason)| ConfigError::InvalidKey {
            key: format!("{name}.{key}"),
            reason,
            origin: origin.clone(),
        })?;
        for (key, raw) in converted.settings {
            if !self.given.contains_key(key) {
                self.set(key, raw, origin.clone());
            }
        }
        if self.topology.is_none() {
            self.topology = Some((converted.topology, origin.clone()));
        }
        if !converted.ignored.is_empty() {
            self.warnings.push(format!(
                "twemproxy pool {name:?} ({origin}): no respipe equivalent, ignored: {}",
                converted.ignored.join(", ")
            ));
        }
        Ok(())
    }
}

/// One pool's mapping to respipe's settings and topology table.
fn convert(pool: &yaml_serde::Mapping) -> Result<Converted, KeyError> {
    let mut out = Converted {
        settings: Vec::new(),
        topology: toml::Table::new(),
        ignored: Vec::new(),
    };
    out.topology.insert("kind".into(), "shards".into());
    let mut redis = false;
    let mut db = 0;
    let mut servers = None;
    for (key, value) in pool {
        let key = key.as_str().unwrap_or_default();
        let value = raw(key, value)?;
        let why = |reason: String| (key.to_owned(), reason);
        match key {
            "listen" => {
                // `host:port`, or `/path/to.sock [mode]`.
                let listen = text(&value).map_err(why)?.trim();
                let listen = listen.split_whitespace().next().unwrap_or_default();
                let listen = match listen.starts_with('/') {
                    true => format!("unix:{listen}"),
                    false => listen.to_owned(),
                };
                out.settings.push(("listen", Raw::Text(listen)));
            }
            "hash" => {
                let hash = text(&value).map_err(why)?.trim();
                hash.parse::<Hash>().map_err(why)?;
                out.topology.insert("hash".into(), hash.into());
            }
            "distribution" => {
                let distribution = text(&value).map_err(why)?.trim();
                distribution.parse::<Distribution>().map_err(why)?;
                out.topology
                    .insert("distribution".into(), distribution.into());
            }
            "hash_tag" => {
                let tag = text(&value).map_err(why)?;
                if tag.len() != 2 {
                    return Err(why("expected two characters, such as \"{}\"".into()));
                }
                out.topology.insert("hash_tag".into(), tag.into());
            }
            "auto_eject_hosts" => {
                let eject = boolean(&value).map_err(why)?;
                out.topology.insert(key.into(), eject.into());
            }
            "server_failure_limit" => {
                let limit = i64::try_from(integer(&value).map_err(why)?)
                    .map_err(|_| why("too large".into()))?;
                out.topology.insert(key.into(), limit.into());
            }
            "server_retry_timeout" => {
                let ms = integer(&value).map_err(why)?;
                out.topology.insert(key.into(), format!("{ms}ms").into());
            }
            "timeout" => {
                let ms = integer(&value).map_err(why)?;
                out.settings
                    .push(("command_timeout", Raw::Text(format!("{ms}ms"))));
            }
            "server_connections" => {
                let n = i64::try_from(integer(&value).map_err(why)?)
                    .map_err(|_| why("too large".into()))?;
                out.settings.push(("pool_size", Raw::Integer(n)));
            }
            "redis" => redis = boolean(&value).map_err(why)?,
            "redis_auth" => {
                let password = text(&value).map_err(why)?.to_owned();
                out.settings
                    .push(("upstream_password", Raw::Text(password)));
            }
            "redis_db" => {
                db = u32::try_from(integer(&value).map_err(why)?)
                    .map_err(|_| why("too large".into()))?;
            }
            "servers" => servers = Some(value),
            key if IGNORED.contains(&key) => out.ignored.push(key.to_owned()),
            key => return Err((key.to_owned(), "not a twemproxy pool key".to_owned())),
        }
    }
    if !redis {
        return Err((
            "redis".to_owned(),
            "this is a memcached pool (redis: false, twemproxy's default); respipe proxies Redis: set redis: true for a Redis pool".to_owned(),
        ));
    }
    let lines = match servers {
        Some(Raw::List(lines)) if !lines.is_empty() => lines,
        _ => {
            return Err((
                "servers".to_owned(),
                "expected a list of \"host:port:weight [name]\" lines, at least one".to_owned(),
            ))
        }
    };
    let servers = lines
        .iter()
        .enumerate()
        .map(|(i, line)| server(line, db).map_err(|why| (format!("servers[{i}]"), why)))
        .collect::<Result<Vec<_>, _>>()?;
    out.topology.insert("servers".into(), servers.into());
    Ok(out)
}

/// A `servers:` line (`host:port:weight [name]` or `/path/to.sock:weight [name]`) as an
/// `[[upstream.servers]]` table.
fn server(line: &str, db: u32) -> Result<toml::Table, String> {
    let expected = "expected \"host:port:weight [name]\" or \"/path/to.sock:weight [name]\"";
    let line = line.trim();
    let (address, name) = match line.split_once(char::is_whitespace) {
        Some((address, name)) => (address, Some(name.trim())),
        None => (line, None),
    };
    let (place, weight) = address.rsplit_once(':').ok_or(expected)?;
    let weight: u32 = weight
        .parse()
        .map_err(|_| format!("weight {weight:?} is not a number; {expected}"))?;
    let address = match (place.starts_with('/'), db) {
        (true, 0) => format!("unix:{place}"),
        (true, db) => format!("unix:{place}?db={db}"),
        (false, _) if !place.contains(':') => return Err(expected.to_owned()),
        (false, 0) => place.to_owned(),
        (false, db) => format!("redis://{place}/{db}"),
    };
    let mut table = toml::Table::new();
    table.insert("address".into(), address.into());
    table.insert("weight".into(), i64::from(weight).into());
    if let Some(name) = name {
        table.insert("name".into(), name.into());
    }
    Ok(table)
}

/// A YAML value as the settings parsers take it (a list only of strings).
fn raw(key: &str, value: &yaml_serde::Value) -> Result<Raw, KeyError> {
    use yaml_serde::Value;
    let unexpected = || {
        (
            key.to_owned(),
            "expected a string, a number, a boolean or a list of strings".to_owned(),
        )
    };
    match value {
        Value::String(s) => Ok(Raw::Text(s.clone())),
        Value::Bool(b) => Ok(Raw::Text(b.to_string())),
        Value::Number(n) => match n.as_i64() {
            Some(n) => Ok(Raw::Integer(n)),
            None => Err(unexpected()),
        },
        Value::Sequence(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or_else(unexpected))
            .collect::<Result<_, _>>()
            .map(Raw::List),
        _ => Err(unexpected()),
    }
}
