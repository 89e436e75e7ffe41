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
                out.settings.push(("listen", Raw::List(vec![listen])));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{load, load_err, TempFile};
    use super::*;
    use crate::config::{Config, ListenAddr, Topology, Upstream};
    use crate::shard::{Eject, Server, Spec};

    /// A nutcracker.yml as deployed: three pools, one of them memcached.
    const NUTCRACKER: &str = r#"
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  hash_tag: "{}"
  distribution: ketama
  auto_eject_hosts: true
  redis: true
  redis_auth: s3cret
  redis_db: 3
  server_retry_timeout: 2000
  server_failure_limit: 1
  timeout: 400
  server_connections: 2
  preconnect: true
  backlog: 1024
  servers:
   - 127.0.0.1:6379:1 server1
   - 127.0.0.1:6380:2 server2
   - /tmp/redis.sock:1 server3

beta:
  listen: /tmp/beta.sock 0666
  hash: murmur
  distribution: modula
  redis: true
  client_connections: 100
  servers:
   - 127.0.0.1:6381:1
   - 127.0.0.1:6382:1

gamma:
  listen: 127.0.0.1:22123
  hash: fnv1a_64
  distribution: ketama
  servers:
   - 127.0.0.1:11211:1
"#;

    fn server(upstream: Upstream, weight: u32, name: Option<&str>) -> Server {
        Server {
            upstream,
            weight,
            name: name.map(str::to_owned),
        }
    }

    fn with_auth(mut upstream: Upstream) -> Upstream {
        upstream.password = Some("s3cret".into());
        upstream.db = 3;
        upstream
    }

    #[test]
    fn a_redis_pool_becomes_shards_and_settings() {
        let yaml = TempFile::new("nutcracker", NUTCRACKER);
        let c = load(
            &["--twemproxy", yaml.path(), "--twemproxy-pool", "alpha"],
            &[],
        )
        .unwrap();
        let expected = Spec {
            servers: vec![
                server(
                    with_auth(Upstream::tcp("127.0.0.1", 6379)),
                    1,
                    Some("server1"),
                ),
                server(
                    with_auth(Upstream::tcp("127.0.0.1", 6380)),
                    2,
                    Some("server2"),
                ),
                server(
                    with_auth(Upstream::unix("/tmp/redis.sock")),
                    1,
                    Some("server3"),
                ),
            ],
            hash: Hash::Fnv1a64,
            distribution: Distribution::Ketama,
            hash_tag: Some(*b"{}"),
            eject: Some(Eject {
                failure_limit: 1,
                retry_timeout: Duration::from_secs(2),
            }),
        };
        assert_eq!(c.topology, Topology::Shards(expected));
        assert_eq!(c.upstream, with_auth(Upstream::tcp("127.0.0.1", 6379)));
        assert_eq!(
            c.listen.addresses,
            vec![ListenAddr::Tcp("127.0.0.1:22121".parse().unwrap())]
        );
        assert_eq!(c.timeouts.command_timeout, Some(Duration::from_millis(400)));
        assert_eq!(c.batching.pool_size.get(), 2);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("ignored: preconnect, backlog"),
            "{:?}",
            c.warnings
        );

        let c = load(
            &["--twemproxy", yaml.path()],
            &[("RESPIPE_TWEMPROXY_POOL", "beta")],
        )
        .unwrap();
        let Topology::Shards(spec) = &c.topology else {
            panic!("{c:?}")
        };
        assert_eq!(
            (spec.hash, spec.distribution, spec.hash_tag, spec.eject),
            (Hash::Murmur, Distribution::Modula, None, None)
        );
        assert_eq!(
            spec.servers[1],
            server(Upstream::tcp("127.0.0.1", 6382), 1, None)
        );
        assert_eq!(
            c.listen.addresses,
            vec![ListenAddr::Unix("/tmp/beta.sock".into())]
        );
        assert_eq!(
            c.timeouts.command_timeout,
            Config::default().timeouts.command_timeout
        );
        assert!(
            c.warnings[0].contains("ignored: client_connections"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn everything_else_wins_over_the_pool() {
        let yaml = TempFile::new("nutcracker-precedence", NUTCRACKER);
        let args = ["--twemproxy", yaml.path(), "--twemproxy-pool", "alpha"];
        let flags: Vec<&str> = args
            .into_iter()
            .chain(["--listen", "127.0.0.1:1", "--pool-size", "5"])
            .collect();
        let c = load(&flags, &[("RESPIPE_UPSTREAM_PASSWORD", "other")]).unwrap();
        assert_eq!(
            c.listen.addresses,
            vec![ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())]
        );
        assert_eq!(c.batching.pool_size.get(), 5);
        assert_eq!(c.upstream.password.as_deref(), Some("other"));
        assert_eq!(
            c.timeouts.command_timeout,
            Some(Duration::from_millis(400)),
            "the rest stays"
        );

        let toml = TempFile::new(
            "twemproxy-in-toml",
            &format!("twemproxy = {:?}\n[upstream]\ntwemproxy_pool = \"alpha\"\n[batching]\npool_size = 7\n", yaml.path()),
        );
        let c = load(&["--config", toml.path()], &[]).unwrap();
        assert_eq!(c.batching.pool_size.get(), 7);
        assert!(matches!(&c.topology, Topology::Shards(spec) if spec.servers.len() == 3));

        // A flag's upstream replaces the pool's servers; the pool's other settings (its
        // redis_auth included) still fill in what nothing else set.
        let c = load(&["--config", toml.path(), "--upstream", "h:1"], &[]).unwrap();
        let expected = Upstream {
            password: Some("s3cret".into()),
            ..Upstream::tcp("h", 1)
        };
        assert_eq!((c.topology, c.upstream), (Topology::Single, expected));

        let toml = TempFile::new(
            "twemproxy-and-table",
            &format!("twemproxy = {:?}\ntwemproxy_pool = \"alpha\"\n[[upstream.servers]]\naddress = \"h:2\"\n", yaml.path()),
        );
        let c = load(&["--config", toml.path()], &[]).unwrap();
        assert!(
            matches!(&c.topology, Topology::Shards(spec) if spec.servers.len() == 1),
            "the file's table wins"
        );
    }

    #[test]
    fn choosing_a_pool() {
        let yaml = TempFile::new("nutcracker-choose", NUTCRACKER);
        let err = load_err(&["--twemproxy", yaml.path()], &[]);
        assert!(
            err.starts_with("invalid twemproxy (--twemproxy, RESPIPE_TWEMPROXY): ")
                && err.contains("has 3 pools (alpha, beta, gamma); choose one with twemproxy_pool"),
            "{err}"
        );
        let err = load_err(
            &["--twemproxy", yaml.path(), "--twemproxy-pool", "delta"],
            &[],
        );
        assert!(
            err.starts_with("invalid twemproxy_pool (--twemproxy-pool, RESPIPE_TWEMPROXY_POOL): ")
                && err.contains("no pool \"delta\"; its pools: alpha, beta, gamma"),
            "{err}"
        );
        let err = load_err(&["--twemproxy-pool", "alpha"], &[]);
        assert!(
            err.starts_with("invalid twemproxy_pool") && err.contains("twemproxy is not set"),
            "{err}"
        );
        let err = load_err(&["--twemproxy", "/nonexistent/nutcracker.yml"], &[]);
        assert!(
            err.starts_with("invalid twemproxy") && err.contains("cannot read"),
            "{err}"
        );
        let bad = TempFile::new("nutcracker-not-yaml", "- a\n- b\n");
        let err = load_err(&["--twemproxy", bad.path()], &[]);
        assert!(err.contains("not a twemproxy YAML file"), "{err}");
    }

    #[test]
    fn pool_errors_name_the_pool_key() {
        let yaml = TempFile::new("nutcracker-memcached", NUTCRACKER);
        let err = load_err(
            &["--twemproxy", yaml.path(), "--twemproxy-pool", "gamma"],
            &[],
        );
        assert_eq!(
            err,
            format!("invalid gamma.redis: this is a memcached pool (redis: false, twemproxy's default); respipe proxies Redis: set redis: true for a Redis pool (from twemproxy file {})", yaml.path())
        );
        let pool = |body: &str| format!("p:\n  redis: true\n{body}");
        let cases = [
            (
                "  servers:\n   - 127.0.0.1:6379\n",
                "p.servers[0]",
                "expected \"host:port:weight [name]\"",
            ),
            (
                "  servers:\n   - 127.0.0.1:6379:x\n",
                "p.servers[0]",
                "weight \"x\" is not a number",
            ),
            (
                "  servers:\n   - h:1:1\n   - 127.0.0.1\n",
                "p.servers[1]",
                "expected",
            ),
            ("  servers: []\n", "p.servers", "at least one"),
            (
                "  servers: 127.0.0.1:6379:1\n",
                "p.servers",
                "expected a list",
            ),
            (
                "  hash: sha1\n  servers:\n   - h:1:1\n",
                "p.hash",
                "unknown \"sha1\"",
            ),
            (
                "  distribution: rendezvous\n  servers:\n   - h:1:1\n",
                "p.distribution",
                "unknown \"rendezvous\"",
            ),
            (
                "  hash_tag: \"{\"\n  servers:\n   - h:1:1\n",
                "p.hash_tag",
                "two characters",
            ),
            (
                "  timeout: soon\n  servers:\n   - h:1:1\n",
                "p.timeout",
                "non-negative integer",
            ),
            (
                "  redis_db: -1\n  servers:\n   - h:1:1\n",
                "p.redis_db",
                "must not be negative",
            ),
            (
                "  colour: blue\n  servers:\n   - h:1:1\n",
                "p.colour",
                "not a twemproxy pool key",
            ),
            (
                "  listen: {a: 1}\n  servers:\n   - h:1:1\n",
                "p.listen",
                "expected a string",
            ),
            (
                "  servers:\n   - h:1:0\n",
                "upstream.servers[0].weight",
                "must be from 1",
            ),
        ];
        for (i, (body, key, why)) in cases.into_iter().enumerate() {
            let yaml = TempFile::new(&format!("nutcracker-err-{i}"), &pool(body));
            let err = load_err(&["--twemproxy", yaml.path()], &[]);
            assert!(
                err.starts_with(&format!("invalid {key}: ")),
                "{body}: {err}"
            );
            assert!(err.contains(why), "{body}: {err}");
            assert!(
                err.ends_with(&format!("(from twemproxy file {})", yaml.path())),
                "{err}"
            );
        }
        let yaml = TempFile::new("nutcracker-no-redis", "p:\n  servers:\n   - h:1:1\n");
        assert!(load_err(&["--twemproxy", yaml.path()], &[])
            .starts_with("invalid p.redis: this is a memcached pool"));
    }

    #[test]
    fn print_config_converts_the_pool() {
        let yaml = TempFile::new("nutcracker-print", NUTCRACKER);
        let args = ["--twemproxy", yaml.path(), "--twemproxy-pool", "alpha"];
        let from_yaml = load(&args, &[]).unwrap();
        let printed = match load(&[&args[..], &["--print-config"]].concat(), &[]) {
            Err(ConfigError::PrintConfig(text)) => text,
            other => panic!("{other:?}"),
        };
        assert!(!printed.contains("twemproxy ="), "{printed}");
        assert!(
            printed.contains("# note: twemproxy pool \"alpha\""),
            "{printed}"
        );
        assert!(printed.contains("[[upstream.servers]]\naddress = \"redis://127.0.0.1:6379/3\"\nweight = 1\nname = \"server1\""), "{printed}");
        assert!(
            printed.contains("address = \"unix:/tmp/redis.sock?db=3\""),
            "{printed}"
        );
        let toml = TempFile::new("nutcracker-printed", &printed);
        let again = load(&["--config", toml.path()], &[]).unwrap();
        assert_eq!(
            Config {
                config_file: None,
                ..again
            },
            Config {
                warnings: Vec::new(),
                ..from_yaml
            }
        );
    }
}
