//! The `[upstream]` table's topology: `kind = "single"` (the `address`, or `--upstream`) or
//! `kind = "shards"` with `[[upstream.servers]]`, hashed as twemproxy hashes. Every error names its
//! key as written in the file (`upstream.servers[1].weight`).

use serde::Deserialize;

use super::{boolean, duration, integer, text, Raw, Topology, Upstream};
use crate::shard::{Eject, Server, Spec};

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
    "seeds",
    "sentinels",
    "master",
    "db",
    "tls",
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
        "cluster" => {
            return match KEYS
                .iter()
                .find(|k| !matches!(**k, "kind" | "seeds") && table.contains_key(**k))
            {
                Some(key) => Err(key_error(key, "not for kind = \"cluster\"")),
                None => Ok(Topology::Cluster(crate::cluster::Spec {
                    seeds: addresses(
                        table,
                        "seeds",
                        "kind = \"cluster\" needs seeds = [\"HOST:PORT\", ...] (at least one node)",
                    )?,
                })),
            };
        }
        "sentinel" => {
            return match KEYS.iter().find(|k| {
                !matches!(**k, "kind" | "sentinels" | "master" | "db" | "tls") && table.contains_key(**k)
            }) {
                Some(key) => Err(key_error(key, "not for kind = \"sentinel\"")),
                None => Ok(Topology::Sentinel(crate::sentinel::Spec {
                    sentinels: addresses(table, "sentinels", "kind = \"sentinel\" needs sentinels = [\"HOST:PORT\", ...] (at least one)")?,
                    master: field(table, "master", "master", |raw| {
                        Ok(text(raw)?.trim().to_owned())
                    })?
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        key_error("master", "kind = \"sentinel\" needs master = \"NAME\" (the name the sentinels monitor)")
                    })?,
                })),
            };
        }
        other => {
            return Err(key_error(
                "kind",
                &format!("unknown {other:?}; expected \"single\" or \"shards\""),
            ))
        }
    }
    let name = |raw: &Raw| text(raw).map(|name| name.trim().to_owned());
    let hash = field(table, "hash", "hash", |raw| name(raw)?.parse())?;
    let distribution = field(table, "distribution", "distribution", |raw| {
        name(raw)?.parse()
    })?;
    let hash_tag = field(table, "hash_tag", "hash_tag", |raw| {
        match text(raw)?.as_bytes() {
            &[open, close] => Ok([open, close]),
            _ => Err("expected two characters, such as \"{}\"".to_owned()),
        }
    })?;
    let auto_eject = field(table, "auto_eject_hosts", "auto_eject_hosts", boolean)?;
    let failure_limit = field(
        table,
        "server_failure_limit",
        "server_failure_limit",
        positive_u32,
    )?;
    let retry_timeout = field(
        table,
        "server_retry_timeout",
        "server_retry_timeout",
        |raw| match duration(raw)? {
            d if d.is_zero() => Err("must be more than 0".to_owned()),
            d => Ok(d),
        },
    )?;
    let servers = servers(table.get("servers"))?;
    Ok(Topology::Shards(Spec {
        servers,
        hash: hash.unwrap_or_default(),
        distribution: distribution.unwrap_or_default(),
        hash_tag,
        eject: auto_eject.unwrap_or(false).then_some(Eject {
            failure_limit: failure_limit.unwrap_or(FAILURE_LIMIT),
            retry_timeout: retry_timeout.unwrap_or(RETRY_TIMEOUT),
        }),
    }))
}

/// The data nodes of a sentinel `table` (parsed as `spec`): the first sentinel's address (never
/// connected to as a data node), `db` (default 0) and `tls` (default: as the sentinels). Their
/// credentials are `upstream_user` / `upstream_password`.
pub(super) fn sentinel_data(
    table: &toml::Table,
    spec: &crate::sentinel::Spec,
) -> Result<Upstream, KeyError> {
    let first = &spec.sentinels[0];
    let db = field(table, "db", "db", |raw| {
        u32::try_from(integer(raw)?).map_err(|_| "expected a db number".to_owned())
    })?;
    Ok(Upstream {
        endpoint: first.endpoint.clone(),
        tls: field(table, "tls", "tls", boolean)?.unwrap_or(first.tls),
        username: None,
        password: None,
        db: db.unwrap_or(0),
    })
}

/// The addresses under `key` (a cluster's `seeds`, the `sentinels`): at least one (else
/// `missing`), every one with the first one's credentials and TLS, db 0.
fn addresses(table: &toml::Table, key: &str, missing: &str) -> Result<Vec<Upstream>, KeyError> {
    let Some(toml::Value::Array(entries)) = table
        .get(key)
        .filter(|v| v.as_array().is_some_and(|a| !a.is_empty()))
    else {
        return Err(key_error(key, missing));
    };
    let mut seeds: Vec<Upstream> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let seed = entry
            .as_str()
            .ok_or_else(|| "expected a string HOST:PORT".to_owned())
            .and_then(Upstream::parse)
            .map_err(|reason| key_error(&at, &reason))?;
        if seed.db != 0 {
            return Err(key_error(
                &at,
                "no db here (a cluster has only db 0; a sentinel has none)",
            ));
        }
        if let Some(first) = seeds.first() {
            if (&seed.username, &seed.password, seed.tls)
                != (&first.username, &first.password, first.tls)
            {
                return Err(key_error(
                    &at,
                    &format!("every address needs the same credentials and TLS as {key}[0]"),
                ));
            }
        }
        seeds.push(seed);
    }
    Ok(seeds)
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
        let upstream = field(entry, "address", &at("address"), |raw| {
            Upstream::parse(text(raw)?)
        })?
        .ok_or_else(|| key_error(&at("address"), "missing"))?;
        let weight = field(entry, "weight", &at("weight"), positive_u32)?.unwrap_or(1);
        let name = field(entry, "name", &at("name"), |raw| match text(raw)?.trim() {
            "" => Err("must not be empty".to_owned()),
            name if name.contains(char::is_whitespace) => Err("must not contain spaces".to_owned()),
            name => Ok(name.to_owned()),
        })?;
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
        let server = Server {
            upstream,
            name,
            weight,
        };
        // Names on the ring (a name, else `host:port`) must differ, as twemproxy requires: two
        // servers with one ring name would share its points.
        if let Some(j) = servers
            .iter()
            .position(|s| s.ring_name() == server.ring_name())
        {
            return Err(key_error(
                &at("name"),
                &format!("the same name as upstream.servers[{j}]"),
            ));
        }
        servers.push(server);
    }
    Ok(servers)
}

/// `table[name]` parsed by `parse` (one of the settings parsers); `None` when absent. An error
/// names `path` (`upstream.` is prefixed).
fn field<T>(
    table: &toml::Table,
    name: &str,
    path: &str,
    parse: impl FnOnce(&Raw) -> Result<T, String>,
) -> Result<Option<T>, KeyError> {
    let Some(value) = table.get(name) else {
        return Ok(None);
    };
    let raw = Raw::deserialize(value.clone()).map_err(|e| key_error(path, e.message()))?;
    parse(&raw).map(Some).map_err(|why| key_error(path, &why))
}

/// A weight or a failure limit: at least 1, and 32 bits as twemproxy's.
fn positive_u32(raw: &Raw) -> Result<u32, String> {
    match u32::try_from(integer(raw)?) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be from 1 to 4294967295".to_owned()),
    }
}

fn key_error(key: &str, reason: &str) -> KeyError {
    (format!("upstream.{key}"), reason.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{load, load_err, TempFile};
    use super::*;
    use crate::config::Endpoint;
    use crate::shard::{Distribution, Hash};

    const SERVERS: &str = r#"
[[upstream.servers]]
address = "127.0.0.1:7001"
name = "alpha"
[[upstream.servers]]
address = "127.0.0.1:7002"
weight = 3
"#;

    fn spec_of(config: &crate::config::Config) -> &Spec {
        match &config.topology {
            Topology::Shards(spec) => spec,
            _ => panic!("not sharded: {config:?}"),
        }
    }

    #[test]
    fn a_shards_table() {
        let file = TempFile::new(
            "shards",
            &format!(
                "[upstream]\nkind = \"shards\"\nhash = \"murmur\"\ndistribution = \"modula\"\nhash_tag = \"{{}}\"\nauto_eject_hosts = true\nserver_failure_limit = 3\nserver_retry_timeout = \"5s\"\npassword = \"pw\"\n{SERVERS}"
            ),
        );
        let c = load(&["--config", file.path()], &[]).unwrap();
        let spec = spec_of(&c);
        assert_eq!(spec.hash, Hash::Murmur);
        assert_eq!(spec.distribution, Distribution::Modula);
        assert_eq!(spec.hash_tag, Some(*b"{}"));
        assert_eq!(
            spec.eject,
            Some(Eject {
                failure_limit: 3,
                retry_timeout: std::time::Duration::from_secs(5)
            })
        );
        let servers: Vec<_> = spec
            .servers
            .iter()
            .map(|s| (s.upstream.endpoint.to_string(), s.weight, s.name.as_deref()))
            .collect();
        assert_eq!(
            servers,
            [
                ("127.0.0.1:7001".to_owned(), 1, Some("alpha")),
                ("127.0.0.1:7002".to_owned(), 3, None)
            ]
        );
        assert!(spec
            .servers
            .iter()
            .all(|s| s.upstream.password.as_deref() == Some("pw")));
        assert_eq!(
            c.upstream, spec.servers[0].upstream,
            "upstream is the first server"
        );

        // Without a kind, servers mean shards; defaults are twemproxy's.
        let file = TempFile::new("shards-defaults", &format!("[upstream]\n{SERVERS}"));
        let c = load(
            &["--config", file.path()],
            &[("RESPIPE_UPSTREAM_USER", "u")],
        )
        .unwrap_err();
        assert!(
            c.to_string().starts_with("invalid upstream_user (--upstream-user, RESPIPE_UPSTREAM_USER): a user needs a password"),
            "{c}"
        );
        let c = load(&["--config", file.path()], &[]).unwrap();
        let spec = spec_of(&c);
        assert_eq!(
            (spec.hash, spec.distribution, spec.hash_tag, spec.eject),
            (Hash::Fnv1a64, Distribution::Ketama, None, None)
        );

        // kind = "single" is today's upstream.
        let file = TempFile::new(
            "single",
            "[upstream]\nkind = \"single\"\naddress = \"h:1\"\n",
        );
        let c = load(&["--config", file.path()], &[]).unwrap();
        assert_eq!(
            (c.topology, c.upstream),
            (Topology::Single, Upstream::tcp("h", 1))
        );
    }

    #[test]
    fn flags_and_env_win_over_the_table() {
        let file = TempFile::new("shards-precedence", &format!("[upstream]\n{SERVERS}"));
        for (args, env) in [
            (vec!["--upstream", "h:9"], vec![]),
            (vec![], vec![("RESPIPE_UPSTREAM", "h:9")]),
        ] {
            let args: Vec<&str> = ["--config", file.path()].into_iter().chain(args).collect();
            let c = load(&args, &env).unwrap();
            assert_eq!(
                (c.topology, c.upstream),
                (Topology::Single, Upstream::tcp("h", 9))
            );
        }
    }

    #[test]
    fn credentials_db_and_tls_are_the_pool_s() {
        let file = TempFile::new(
            "shards-auth",
            "[upstream]\n[[upstream.servers]]\naddress = \"redis://u:p@a:1/4\"\n[[upstream.servers]]\naddress = \"redis://u:p@b:2/4\"\n",
        );
        let c = load(
            &["--config", file.path()],
            &[("RESPIPE_UPSTREAM_PASSWORD", "q")],
        )
        .unwrap();
        for s in &spec_of(&c).servers {
            assert_eq!(
                (
                    s.upstream.username.as_deref(),
                    s.upstream.password.as_deref(),
                    s.upstream.db
                ),
                (Some("u"), Some("q"), 4)
            );
        }
        assert_eq!(c.upstream.password.as_deref(), Some("q"));
        let file = TempFile::new(
            "shards-tls",
            "[upstream]\n[[upstream.servers]]\naddress = \"rediss://a:1\"\n",
        );
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.starts_with("invalid upstream_tls_ca")
                && err.ends_with(&format!("(from config file {})", file.path())),
            "{err}"
        );
    }

    #[test]
    fn every_error_names_its_key() {
        let one = "[[upstream.servers]]\naddress = \"h:1\"\n";
        let two =
            "[[upstream.servers]]\naddress = \"h:1\"\n[[upstream.servers]]\naddress = \"h:2\"\n";
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!("kind = \"cluster\"\n{one}"),
                "upstream.servers",
                "not for kind = \"cluster\"",
            ),
            ("kind = \"cluster\"".into(), "upstream.seeds", "needs seeds"),
            (
                "kind = \"cluster\"\nseeds = [\"h:1\", \"redis://u:p@h:2\"]".into(),
                "upstream.seeds[1]",
                "same credentials",
            ),
            (
                format!("kind = \"sentinel\"\n{one}"),
                "upstream.servers",
                "not for kind = \"sentinel\"",
            ),
            (
                "kind = \"sentinel\"\nmaster = \"m\"".into(),
                "upstream.sentinels",
                "needs sentinels",
            ),
            (
                "kind = \"sentinel\"\nsentinels = [\"h:1\"]".into(),
                "upstream.master",
                "needs master",
            ),
            (
                "kind = \"ring\"".into(),
                "upstream.kind",
                "unknown \"ring\"",
            ),
            ("kind = 3".into(), "upstream.kind", "expected a string"),
            (
                "kind = \"single\"\nhash = \"md5\"".into(),
                "upstream.hash",
                "only for kind = \"shards\"",
            ),
            (
                "kind = \"shards\"".into(),
                "upstream.servers",
                "needs at least one",
            ),
            (
                "kind = \"shards\"\nservers = \"h:1\"".into(),
                "upstream.servers",
                "expected a list of tables",
            ),
            (
                "kind = \"shards\"\nservers = []".into(),
                "upstream.servers",
                "expected a list of tables",
            ),
            (
                format!("hash = \"sha1\"\n{one}"),
                "upstream.hash",
                "unknown \"sha1\"; expected one of",
            ),
            (
                format!("distribution = \"rendezvous\"\n{one}"),
                "upstream.distribution",
                "expected one of ketama",
            ),
            (
                format!("hash_tag = \"{{\"\n{one}"),
                "upstream.hash_tag",
                "two characters",
            ),
            (
                format!("auto_eject_hosts = \"maybe\"\n{one}"),
                "upstream.auto_eject_hosts",
                "expected true or false",
            ),
            (
                format!("server_failure_limit = 0\n{one}"),
                "upstream.server_failure_limit",
                "must be from 1",
            ),
            (
                format!("server_retry_timeout = 30\n{one}"),
                "upstream.server_retry_timeout",
                "bare number",
            ),
            (
                format!("server_retry_timeout = \"0s\"\n{one}"),
                "upstream.server_retry_timeout",
                "more than 0",
            ),
            (
                format!("{two}weight = 0\n"),
                "upstream.servers[1].weight",
                "must be from 1",
            ),
            (
                format!("{two}weight = \"heavy\"\n"),
                "upstream.servers[1].weight",
                "non-negative integer",
            ),
            (
                format!("{one}[[upstream.servers]]\nweight = 2\n"),
                "upstream.servers[1].address",
                "missing",
            ),
            (
                format!("{one}[[upstream.servers]]\naddress = \"ftp://x\"\n"),
                "upstream.servers[1].address",
                "unsupported scheme",
            ),
            (
                format!("{two}port = 3\n"),
                "upstream.servers[1].port",
                "unknown key",
            ),
            (
                format!("{two}[[upstream.servers]]\naddress = \"h:1\"\n"),
                "upstream.servers[2].address",
                "the same server as upstream.servers[0]",
            ),
            (
                format!(
                    "{one}name = \"a\"\n[[upstream.servers]]\naddress = \"h:2\"\nname = \"a\"\n"
                ),
                "upstream.servers[1].name",
                "the same name as upstream.servers[0]",
            ),
            (
                format!("{one}[[upstream.servers]]\naddress = \"h:2\"\nname = \"h:1\"\n"),
                "upstream.servers[1].name",
                "the same name as upstream.servers[0]",
            ),
            (
                format!("{one}name = \"\"\n"),
                "upstream.servers[0].name",
                "must not be empty",
            ),
            (
                format!("{one}[[upstream.servers]]\naddress = \"redis://h:2/1\"\n"),
                "upstream.servers[1].address",
                "db differs",
            ),
            (
                format!("{one}[[upstream.servers]]\naddress = \"rediss://h:2\"\n"),
                "upstream.servers[1].address",
                "TLS (redis:// or rediss://) differs",
            ),
            (
                format!("{one}[[upstream.servers]]\naddress = \"redis://:pw@h:2\"\n"),
                "upstream.servers[1].address",
                "credentials differ",
            ),
        ];
        for (i, (table, key, why)) in cases.iter().enumerate() {
            let file = TempFile::new(
                &format!("shards-err-{i}"),
                &format!("[upstream]\n{table}\n"),
            );
            let err = load_err(&["--config", file.path()], &[]);
            assert!(
                err.starts_with(&format!("invalid {key}: ")),
                "{table}: {err}"
            );
            assert!(err.contains(why), "{table}: {err}");
            assert!(
                err.ends_with(&format!("(from config file {})", file.path())),
                "{err}"
            );
            assert!(!err.contains("pw"), "{err}");
        }
        let file = TempFile::new(
            "shards-and-address",
            &format!("[upstream]\naddress = \"h:9\"\n{one}"),
        );
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.starts_with(
                "invalid upstream (--upstream, RESPIPE_UPSTREAM): a single server's address"
            ),
            "{err}"
        );
    }

    #[test]
    fn unix_servers() {
        let file = TempFile::new(
            "shards-unix",
            "[upstream]\n[[upstream.servers]]\naddress = \"unix:/a.sock?db=2\"\n[[upstream.servers]]\naddress = \"unix:/b.sock?db=2\"\n",
        );
        let c = load(&["--config", file.path()], &[]).unwrap();
        assert_eq!(
            spec_of(&c).servers[1].upstream.endpoint,
            Endpoint::Unix("/b.sock".into())
        );
        assert_eq!(c.upstream.db, 2);
    }
}
