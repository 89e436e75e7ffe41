//! The deployment files agree with the code: the Grafana dashboard queries only metrics respipe
//! exports (checked against `respipe::metrics` and against a live proxy's `/metrics`), and every
//! TOML config under `deploy/` loads.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{bounded, connect_pong, http_get, respipe_command, Binary, RedisServer, Reply, POLL};
use respipe::metrics;

/// Every metric respipe exports, with whether it is a histogram (which adds `_bucket`, `_sum`,
/// `_count` series). `exported_metrics_are_all_listed` keeps this list honest.
/// Every exported metric, and whether it is a histogram.
fn exported() -> impl Iterator<Item = (&'static str, bool)> {
    metrics::ALL
        .iter()
        .map(|name| (*name, metrics::HISTOGRAMS.contains(name)))
}

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The dashboard, parsed.
fn dashboard() -> serde_json::Value {
    let path = repo().join("deploy/grafana/respipe.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every PromQL string of the dashboard: panel targets' `expr`, template variables' queries.
fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

/// The `respipe_*` series names in a query, as written (suffixes kept).
fn series_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("respipe_") {
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..len].to_owned());
        rest = &tail[len..];
    }
    names
}

/// The metric a series belongs to: `Ok(name)` when `series` is an exported metric or a histogram's
/// `_bucket`/`_sum`/`_count` series, else `Err` saying why.
fn metric_of(series: &str) -> Result<&'static str, String> {
    if let Some((name, _)) = exported().find(|(name, _)| *name == series) {
        return Ok(name);
    }
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = series.strip_suffix(suffix) {
            return match exported().find(|(name, _)| *name == base) {
                Some((name, true)) => Ok(name),
                Some((name, false)) => {
                    Err(format!("{name} is not a histogram: no {suffix} series"))
                }
                None => Err(format!("no metric {base} (from {series})")),
            };
        }
    }
    Err(format!("respipe exports no metric {series}"))
}

/// The `respipe_*` series the dashboard queries.
fn dashboard_series() -> BTreeSet<String> {
    let mut all = Vec::new();
    queries(&dashboard(), &mut all);
    assert!(
        all.len() > 10,
        "found only {} queries in the dashboard",
        all.len()
    );
    all.iter().flat_map(|q| series_names(q)).collect()
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    let bad: Vec<String> = dashboard_series()
        .iter()
        .filter_map(|s| metric_of(s).err())
        .collect();
    assert!(bad.is_empty(), "deploy/grafana/respipe.json: {bad:#?}");
}

#[test]
fn dashboard_shows_every_metric() {
    let used: BTreeSet<&str> = dashboard_series()
        .iter()
        .filter_map(|s| metric_of(s).ok())
        .collect();
    let unused: Vec<&str> = exported()
        .map(|(name, _)| name)
        .filter(|name| !used.contains(name))
        .collect();
    assert!(
        unused.is_empty(),
        "deploy/grafana/respipe.json has no panel for {unused:?}"
    );
}

#[test]
fn dashboard_panels_are_well_formed() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "respipe");
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} repeats");
        assert!(p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24));
        if p["type"] != "row" {
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "panel {} has no query", p["title"]);
            for t in targets {
                let expr = t["expr"].as_str().unwrap_or_default();
                assert_eq!(
                    expr.matches('(').count(),
                    expr.matches(')').count(),
                    "unbalanced parentheses in {expr}"
                );
                assert_eq!(
                    expr.matches('{').count(),
                    expr.matches('}').count(),
                    "unbalanced braces in {expr}"
                );
            }
        }
    }
}

/// Names from `# TYPE name kind` lines of a Prometheus text exposition, with whether each is a
/// histogram.
fn scraped_types(body: &str) -> BTreeSet<(String, bool)> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()? == "histogram"))
        })
        .collect()
}

/// A live proxy's `/metrics`, after traffic and after losing its Redis (so the error counters
/// exist too), matches `metrics::ALL` exactly: that list is what respipe really serves, so the
/// dashboard checks above compare against reality.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_metrics_are_all_listed() {
    bounded(Duration::from_secs(60), "scrape /metrics", async {
        let mut redis = RedisServer::start().await;
        let mut cmd = respipe_command();
        cmd.args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--upstream", &redis.addr().to_string()]);
        let mut bin = Binary::spawn(cmd);
        let listen = bin.ready_field("listen");
        let admin = bin
            .ready_field("metrics")
            .trim_start_matches("http://")
            .to_owned();

        let addr: std::net::SocketAddr = listen.parse().expect("listen address");
        let mut client = connect_pong(addr).await;
        for i in 0..50 {
            let reply = client.cmd(&["SET", &format!("deploy{i}"), "v"]).await;
            assert_eq!(reply, Reply::ok());
        }
        // Losing Redis creates the upstream error counter.
        redis.kill();

        let want: BTreeSet<(String, bool)> = exported()
            .filter(|(name, _)| {
                !metrics::CLUSTER_ONLY.contains(name)
                    && !metrics::SENTINEL_ONLY.contains(name)
                    && !metrics::REPLICAS_ONLY.contains(name)
            })
            .map(|(name, hist)| (name.to_string(), hist))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = http_get(&admin, "/metrics").await.expect("GET /metrics");
            assert_eq!(status, 200);
            let got: BTreeSet<(String, bool)> = scraped_types(&body)
                .into_iter()
                .filter(|(name, _)| name.starts_with("respipe_"))
                .collect();
            if got == want {
                break;
            }
            let unlisted: Vec<_> = got.difference(&want).collect();
            assert!(
                unlisted.is_empty(),
                "/metrics serves metrics tests/deploy.rs does not list (name, histogram): {unlisted:?}"
            );
            assert!(
                Instant::now() < deadline,
                "/metrics never served {:?}:\n{body}",
                want.difference(&got).collect::<Vec<_>>()
            );
            tokio::time::sleep(POLL * 10).await;
        }
        bin.signal(libc::SIGTERM);
        let status = bin.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}");
    })
    .await
}

/// Every `*.toml` under `deploy/` (the Kubernetes ConfigMaps' sources) loads as respipe would load it.
#[test]
fn deploy_configs_load() {
    let mut files = Vec::new();
    collect_toml(&repo().join("deploy"), &mut files);
    assert!(files.len() >= 2, "no TOML configs under deploy/: {files:?}");
    for file in files {
        let args = [
            "respipe".into(),
            "--config".into(),
            file.clone().into_os_string(),
        ];
        let config = respipe::Config::load_from(args, &|_: &str| None)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            config
                .observability
                .metrics_listen
                .is_some_and(|a| a.ip().is_unspecified()),
            "{}: in a pod, metrics_listen must be 0.0.0.0 for the kubelet's probes",
            file.display()
        );
    }
}

fn collect_toml(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_toml(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn series_names_and_suffixes() {
    assert_eq!(
        series_names(
            "sum(rate(respipe_batch_commands_bucket{job=~\"$job\"}[5m])) / respipe_upstream_up"
        ),
        ["respipe_batch_commands_bucket", "respipe_upstream_up"]
    );
    assert_eq!(
        metric_of("respipe_queue_wait_seconds_sum"),
        Ok(metrics::QUEUE_WAIT)
    );
    assert!(metric_of("respipe_commands_total_bucket").is_err());
    assert!(metric_of("respipe_command_total").is_err());
}
