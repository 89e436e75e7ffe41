//! The TOML file: each setting flat (`pool_size = 2`, the same name as `--pool-size` and
//! `RESPIPE_POOL_SIZE`) or in its section (`[batching]` then `pool_size = 2`), as [`SECTIONS`]
//! lays them out; the `[upstream]` table also holds the topology (`shards`). `--print-config` writes
//! the configuration back in the section form.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, shards, ConfigError, Origin, Raw, Values, SETTINGS};

/// Where each setting lives in the file's sections, as `(section, name there, flat key)`, in the
/// order `--print-config` writes them. The flat key is the setting's own name (the flag and the
/// environment variable spell the same); a name in a section drops what the section already says
/// (`upstream_user` is `user` under `[upstream]`, `tls_cert` is `cert` under `[tls]`).
#[rustfmt::skip]
pub const SECTIONS: &[(&str, &str, &str)] = &[
    ("listen", "addresses", "listen"),
    ("listen", "max_clients", "max_clients"),
    ("listen", "requirepass", "requirepass"),
    ("upstream", "address", "upstream"),
    ("upstream", "user", "upstream_user"),
    ("upstream", "password", "upstream_password"),
    ("upstream", "sentinel_user", "sentinel_user"),
    ("upstream", "sentinel_password", "sentinel_password"),
    ("upstream", "read_from", "read_from"),
    ("upstream", "read_your_writes", "read_your_writes"),
    ("upstream", "replicas", "replicas"),
    ("upstream", "twemproxy", "twemproxy"),
    ("upstream", "twemproxy_pool", "twemproxy_pool"),
    ("timeouts", "connect_timeout", "connect_timeout"),
    ("timeouts", "command_timeout", "command_timeout"),
    ("timeouts", "reconnect_backoff_max", "reconnect_backoff_max"),
    ("timeouts", "drain_timeout", "drain_timeout"),
    ("batching", "pool_size", "pool_size"),
    ("batching", "max_batch_commands", "max_batch_commands"),
    ("batching", "max_batch_bytes", "max_batch_bytes"),
    ("batching", "batch_window_us", "batch_window_us"),
    ("batching", "max_upstream_inflight", "max_upstream_inflight"),
    ("batching", "max_pools", "max_pools"),
    ("batching", "sched_batch", "sched_batch"),
    ("batching", "workers", "workers"),
    ("limits", "max_client_inflight", "max_client_inflight"),
    ("limits", "max_client_reply_bytes", "max_client_reply_bytes"),
    ("limits", "max_request_bytes", "max_request_bytes"),
    ("limits", "max_request_args", "max_request_args"),
    ("limits", "deny_commands", "deny_commands"),
    ("leases", "max_leases", "max_leases"),
    ("leases", "warm_leases", "warm_leases"),
    ("leases", "lease_idle_timeout", "lease_idle_timeout"),
    ("tls", "cert", "tls_cert"),
    ("tls", "key", "tls_key"),
    ("tls", "client_ca", "tls_client_ca"),
    ("tls", "upstream_ca", "upstream_tls_ca"),
    ("tls", "upstream_cert", "upstream_tls_cert"),
    ("tls", "upstream_key", "upstream_tls_key"),
    ("tls", "upstream_server_name", "upstream_tls_server_name"),
    ("tls", "upstream_insecure", "upstream_tls_insecure"),
    ("observability", "metrics_listen", "metrics_listen"),
    ("observability", "log_level", "log_level"),
    ("observability", "log_format", "log_format"),
];

impl Values {
    /// Reads the TOML file at `path`: flat keys and section tables alike. A setting given twice
    /// (flat and in its section) is an error, as is a key that is no setting.
    pub(super) fn read_file(&mut self, path: PathBuf) -> Result<(), ConfigError> {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) => return Err(ConfigError::ReadFile { path, source }),
        };
        let table: toml::Table = match toml::from_str(&text) {
            Ok(table) => table,
            Err(source) => {
                return Err(ConfigError::ParseFile {
                    path,
                    source: Box::new(source),
                })
            }
        };
        let origin = Origin::File(path.clone());
        // How each setting was written so far, to name both spellings when it is given twice.
        let mut written: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut given = Vec::new();
        for (key, value) in table {
            match value {
                toml::Value::Table(section) if SECTIONS.iter().any(|(s, ..)| *s == key) => {
                    for (name, value) in section {
                        if key == "upstream" && shards::KEYS.contains(&name.as_str()) {
                            self.topology
                                .get_or_insert_with(|| (toml::Table::new(), origin.clone()))
                                .0
                                .insert(name, value);
                            continue;
                        }
                        let path_key = format!("{key}.{name}");
                        match SECTIONS.iter().find(|(s, n, _)| *s == key && *n == name) {
                            Some(&(_, _, flat)) => given.push((flat, path_key, value)),
                            None => {
                                return Err(ConfigError::UnknownKey {
                                    path,
                                    key: path_key,
                                })
                            }
                        }
                    }
                }
                value => match SETTINGS.iter().find(|s| s.key == key) {
                    Some(s) => given.push((s.key, key, value)),
                    None => return Err(ConfigError::UnknownKey { path, key }),
                },
            }
        }
        for (flat, as_written, value) in given {
            let raw = Raw::deserialize(value)
                .map_err(|e| invalid(flat, e.message().to_owned(), origin.clone()))?;
            if let Some(first) = written.insert(flat, as_written.clone()) {
                let reason = format!("given twice in the file, as {first} and as {as_written}");
                return Err(invalid(flat, reason, origin));
            }
            self.set(flat, raw, origin.clone());
        }
        Ok(())
    }

    /// The configuration as a TOML file in the section form: every value given (from any source,
    /// the one in effect), a twemproxy pool converted. Loading it gives the same configuration.
    pub(super) fn print(&self) -> String {
        let topology = self.topology_table();
        let mut doc = toml::Table::new();
        for (i, &(section, ..)) in SECTIONS.iter().enumerate() {
            if SECTIONS[..i].iter().any(|(s, ..)| *s == section) {
                continue;
            }
            let mut table = toml::Table::new();
            for &(_, name, flat) in SECTIONS.iter().filter(|(s, ..)| *s == section) {
                let converted = matches!(flat, "twemproxy" | "twemproxy_pool");
                let replaced = flat == "upstream" && topology.is_some();
                let Some((raw, _)) = self.given.get(flat).filter(|_| !converted && !replaced)
                else {
                    continue;
                };
                let value = match raw {
                    Raw::Text(text) => toml::Value::String(text.clone()),
                    Raw::Integer(n) => toml::Value::Integer(*n),
                    Raw::List(items) => {
                        toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect())
                    }
                };
                table.insert(name.to_owned(), value);
            }
            if let (Some((topology, _)), "upstream") = (topology, section) {
                table.extend(topology.clone());
            }
            if !table.is_empty() {
                doc.insert(section.to_owned(), toml::Value::Table(table));
            }
        }
        let mut out = String::from("# respipe configuration, printed by --print-config\n");
        for warning in &self.warnings {
            out.push_str(&format!("# note: {warning}\n"));
        }
        out.push('\n');
        out.push_str(&toml::to_string(&doc).unwrap_or_default());
        out
    }
}

/// Every key a file may have, for suggestions: flat, `section.name`, and the topology's.
pub(super) fn known_keys() -> impl Iterator<Item = String> {
    let flat = SETTINGS.iter().map(|s| s.key.to_owned());
    let sections = SECTIONS.iter().map(|(s, n, _)| format!("{s}.{n}"));
    let topology = shards::KEYS.iter().map(|k| format!("upstream.{k}"));
    flat.chain(sections).chain(topology)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{load, load_err, TempFile};
    use super::*;
    use crate::config::Config;

    /// Every setting (but the twemproxy pair and `replicas`) with a value other than its default.
    fn every_setting(file: &str) -> Vec<(&'static str, String)> {
        let file = format!("{file:?}");
        let values = [
            ("listen", r#"["127.0.0.1:7000", "unix:/tmp/r.sock"]"#),
            ("max_clients", "5"),
            ("requirepass", r#""pw""#),
            ("upstream", r#""rediss-sentinel://h:7001/m/2""#),
            ("upstream_user", r#""u""#),
            ("upstream_password", r#""p""#),
            ("sentinel_user", r#""su""#),
            ("sentinel_password", r#""sp""#),
            ("read_from", r#""replica""#),
            ("read_your_writes", r#""2s""#),
            ("connect_timeout", r#""2s""#),
            ("command_timeout", r#""3s""#),
            ("reconnect_backoff_max", r#""1s""#),
            ("drain_timeout", r#""4s""#),
            ("pool_size", "2"),
            ("max_batch_commands", "10"),
            ("max_batch_bytes", "100"),
            ("batch_window_us", "50"),
            ("max_upstream_inflight", "7"),
            ("max_pools", "3"),
            ("sched_batch", "true"),
            ("workers", "3"),
            ("max_client_inflight", "8"),
            ("max_client_reply_bytes", "9"),
            ("max_request_bytes", "10"),
            ("max_request_args", "11"),
            ("deny_commands", r#"["KEYS"]"#),
            ("max_leases", "12"),
            ("warm_leases", "0"),
            ("lease_idle_timeout", r#""5s""#),
            ("tls_cert", &file),
            ("tls_key", &file),
            ("tls_client_ca", &file),
            ("upstream_tls_ca", &file),
            ("upstream_tls_cert", &file),
            ("upstream_tls_key", &file),
            ("upstream_tls_server_name", r#""n""#),
            ("upstream_tls_insecure", "true"),
            ("metrics_listen", r#""127.0.0.1:9000""#),
            ("log_level", r#""debug""#),
            ("log_format", r#""json""#),
        ];
        values.map(|(k, v)| (k, v.to_owned())).to_vec()
    }

    fn without_source(config: Config) -> Config {
        Config {
            config_file: None,
            warnings: Vec::new(),
            ..config
        }
    }

    #[test]
    fn every_setting_has_one_place_in_a_section() {
        for s in SETTINGS {
            let places = SECTIONS.iter().filter(|(.., flat)| *flat == s.key).count();
            assert_eq!(places, 1, "{} is in {places} sections", s.key);
        }
        assert_eq!(SECTIONS.len(), SETTINGS.len());
        let paths: std::collections::BTreeSet<_> =
            SECTIONS.iter().map(|(s, n, _)| (s, n)).collect();
        assert_eq!(
            paths.len(),
            SECTIONS.len(),
            "a name is used twice in a section"
        );
    }

    #[test]
    fn flat_and_section_keys_give_equal_configs() {
        let anchor = TempFile::new("anchor", "");
        let values = every_setting(anchor.path());
        let covered: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
        // Static replicas are for a single server, and the upstream here is watched by Sentinel
        // (`config::reads_tests` reads them from the file).
        let single_only = |key: &str| key == "replicas";
        for s in SETTINGS
            .iter()
            .filter(|s| !s.key.starts_with("twemproxy") && !single_only(s.key))
        {
            assert!(covered.contains(&s.key), "the test misses {}", s.key);
        }
        let flat: String = values.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let mut sectioned = String::new();
        for (i, &(section, ..)) in SECTIONS.iter().enumerate() {
            if SECTIONS[..i].iter().any(|(s, ..)| *s == section) {
                continue;
            }
            sectioned.push_str(&format!("[{section}]\n"));
            for &(_, name, key) in SECTIONS.iter().filter(|(s, ..)| *s == section) {
                if let Some((_, v)) = values.iter().find(|(k, _)| *k == key) {
                    sectioned.push_str(&format!("{name} = {v}\n"));
                }
            }
        }
        let (flat, sectioned) = (
            TempFile::new("flat", &flat),
            TempFile::new("sectioned", &sectioned),
        );
        let from_flat = without_source(load(&["--config", flat.path()], &[]).unwrap());
        let from_sections = without_source(load(&["--config", sectioned.path()], &[]).unwrap());
        assert_eq!(from_flat, from_sections);
        assert_ne!(from_flat, Config::default());
        assert_eq!(from_flat.batching.pool_size.get(), 2);
        assert_eq!(from_flat.tls.upstream_server_name.as_deref(), Some("n"));
        assert_eq!(from_flat.upstream.password.as_deref(), Some("p"));

        // Printed and loaded again, it is the same configuration.
        let printed = match load(&["--config", flat.path(), "--print-config"], &[]) {
            Err(ConfigError::PrintConfig(text)) => text,
            other => panic!("{other:?}"),
        };
        assert!(printed.contains("[batching]\npool_size = 2\n"), "{printed}");
        let again = TempFile::new("printed", &printed);
        let reloaded = without_source(load(&["--config", again.path()], &[]).unwrap());
        assert_eq!(reloaded, from_flat);
    }

    #[test]
    fn flat_and_section_keys_mix() {
        let file = TempFile::new(
            "mixed",
            "pool_size = 3\nlisten = \"127.0.0.1:1\"\n[timeouts]\ncommand_timeout = \"1s\"\n[upstream]\naddress = \"h:2\"\nuser = \"u\"\npassword = \"p\"\n",
        );
        let c = load(
            &["--config", file.path()],
            &[("RESPIPE_UPSTREAM_USER", "v")],
        )
        .unwrap();
        assert_eq!(c.batching.pool_size.get(), 3);
        assert_eq!(
            c.timeouts.command_timeout,
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(c.listen.addresses.len(), 1);
        assert_eq!(
            c.upstream.username.as_deref(),
            Some("v"),
            "env beats the section key"
        );
        assert_eq!(c.upstream.password.as_deref(), Some("p"));
    }

    #[test]
    fn section_key_errors_name_the_key() {
        let file = TempFile::new("twice", "pool_size = 1\n[batching]\npool_size = 2\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert_eq!(
            err,
            format!("invalid pool_size (--pool-size, RESPIPE_POOL_SIZE): given twice in the file, as pool_size and as batching.pool_size (from config file {})", file.path())
        );
        let file = TempFile::new("typo", "[batching]\npool_sise = 2\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.ends_with(
                "unknown key \"batching.pool_sise\", did you mean \"batching.pool_size\"?"
            ),
            "{err}"
        );
        let file = TempFile::new("elsewhere", "[limits]\npool_size = 2\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(err.ends_with("unknown key \"limits.pool_size\""), "{err}");
        let file = TempFile::new("bad-value", "[batching]\npool_size = 0\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.starts_with(
                "invalid pool_size (--pool-size, RESPIPE_POOL_SIZE): must be at least 1"
            ),
            "{err}"
        );
        let file = TempFile::new("float", "[timeouts]\ncommand_timeout = 1.5\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(
            err.starts_with("invalid command_timeout (") && err.contains("floating point"),
            "{err}"
        );
        let file = TempFile::new("no-section", "[nosuch]\nx = 1\n");
        let err = load_err(&["--config", file.path()], &[]);
        assert!(err.ends_with("unknown key \"nosuch\""), "{err}");
    }
}
