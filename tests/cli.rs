//! The binary's contract: bad configuration exits 64 naming the key, precedence flag > env > file,
//! `--help`, the SIGTERM drain, and the admin endpoint (`/healthz`, `/readyz`, `/metrics`).

mod common;

use std::time::{Duration, Instant};

use common::{
    bounded, encode, free_port, http_get, respipe_command, run_to_exit, Binary, RawClient,
    RedisServer, Reply, POLL, START_DEADLINE,
};

const EXIT: Duration = Duration::from_secs(20);

#[test]
fn pool_size_zero_flag_exits_64() {
    let mut cmd = respipe_command();
    cmd.args(["--pool-size", "0"]);
    let (code, _, stderr) = run_to_exit(cmd, EXIT);
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("pool_size"),
        "stderr does not name pool_size: {stderr}"
    );
    assert!(stderr.contains("--pool-size"), "{stderr}");
}

#[test]
fn pool_size_zero_env_exits_64() {
    let mut cmd = respipe_command();
    cmd.env("RESPIPE_POOL_SIZE", "0");
    let (code, _, stderr) = run_to_exit(cmd, EXIT);
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("pool_size") && stderr.contains("RESPIPE_POOL_SIZE"),
        "{stderr}"
    );
}

#[test]
fn unknown_config_key_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "pool_size = 2\ncolour_scheme = \"blue\"\n").unwrap();
    let mut cmd = respipe_command();
    cmd.arg("--config").arg(&file);
    let (code, _, stderr) = run_to_exit(cmd, EXIT);
    assert_eq!(code, Some(64), "stderr: {stderr}");
    assert!(
        stderr.contains("colour_scheme"),
        "stderr does not name the key: {stderr}"
    );
}

#[test]
fn help_exits_0() {
    let mut cmd = respipe_command();
    cmd.arg("--help");
    let (code, stdout, stderr) = run_to_exit(cmd, EXIT);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    for flag in [
        "--listen",
        "--upstream",
        "--metrics-listen",
        "--pool-size",
        "--config",
    ] {
        assert!(stdout.contains(flag), "--help lacks {flag}: {stdout}");
    }
}

/// File < env < flag, observed in the ready line (`pool_size=` and the bound `listen=` address).
#[test]
fn flags_win_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("respipe.toml");
    let file_sock = dir.path().join("file.sock");
    let env_sock = dir.path().join("env.sock");
    std::fs::write(
        &file,
        format!(
            "listen = \"unix:{}\"\npool_size = 3\nmax_clients = 7\nupstream = \"127.0.0.1:{}\"\n",
            file_sock.display(),
            free_port()
        ),
    )
    .unwrap();

    // File only.
    let mut cmd = respipe_command();
    cmd.arg("--config").arg(&file);
    let (listen, pool_size) = listen_and_pool_size(cmd);
    assert_eq!(listen, format!("unix:{}", file_sock.display()));
    assert_eq!(pool_size, "3");

    // Env beats the file.
    let mut cmd = respipe_command();
    cmd.arg("--config")
        .arg(&file)
        .env("RESPIPE_LISTEN", format!("unix:{}", env_sock.display()))
        .env("RESPIPE_POOL_SIZE", "4");
    let (listen, pool_size) = listen_and_pool_size(cmd);
    assert_eq!(listen, format!("unix:{}", env_sock.display()));
    assert_eq!(pool_size, "4");

    // The flag beats both (and RESPIPE_CONFIG works like --config).
    let mut cmd = respipe_command();
    cmd.env("RESPIPE_CONFIG", &file)
        .env("RESPIPE_LISTEN", format!("unix:{}", env_sock.display()))
        .env("RESPIPE_POOL_SIZE", "4")
        .args(["--listen", "127.0.0.1:0", "--pool-size", "5"]);
    let (listen, pool_size) = listen_and_pool_size(cmd);
    let addr: std::net::SocketAddr = listen.parse().unwrap_or_else(|_| panic!("listen={listen}"));
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{listen}");
    assert_eq!(pool_size, "5");
}

/// Runs `cmd` until its ready line, returns that line's `listen=` and `pool_size=`, and kills it.
fn listen_and_pool_size(cmd: std::process::Command) -> (String, String) {
    let mut bin = Binary::spawn(cmd);
    let listen = bin.ready_field("listen");
    (listen, bin.ready_field("pool_size"))
}

/// `--sched-batch true` puts every thread of respipe under SCHED_BATCH before it serves; by default
/// it keeps the normal policy.
#[test]
fn sched_batch_sets_the_scheduling_policy() {
    for (extra, want) in [
        (&["--sched-batch", "true"][..], libc::SCHED_BATCH),
        (&[][..], libc::SCHED_OTHER),
    ] {
        // No Redis needed: the upstream connects in the background.
        let (mut bin, _) = spawn_proxy("127.0.0.1:1", extra);
        let tasks = format!("/proc/{}/task", bin.child.id());
        let mut threads = 0;
        for task in std::fs::read_dir(&tasks).unwrap_or_else(|e| panic!("{tasks}: {e}")) {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
            // Fields after the command name in parentheses start at field 3; policy is field 41.
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            let policy: i32 = after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap();
            assert_eq!(policy, want, "{extra:?}: thread {stat}");
            threads += 1;
        }
        assert!(threads > 0);
        stop(&mut bin);
    }
}

/// SIGTERM and wait for exit 0.
fn stop(bin: &mut Binary) {
    bin.signal(libc::SIGTERM);
    let status = bin.wait_exit(EXIT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}; stderr:\n{}",
        bin.seen.join("\n")
    );
}

/// Starts the binary in front of `upstream` with extra args, returns it and its client address once
/// it is ready.
fn spawn_proxy(upstream: &str, extra: &[&str]) -> (Binary, String) {
    let mut cmd = respipe_command();
    cmd.args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .args(extra);
    let mut bin = Binary::spawn(cmd);
    let listen = bin.ready_field("listen");
    (bin, listen)
}

async fn wait_pong(addr: &str) -> RawClient {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        let mut c = RawClient::connect(addr).await;
        if c.cmd(&["PING"]).await == Reply::Simple("PONG".into()) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "respipe at {addr} does not answer PING"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// SIGTERM while commands are in flight (Redis frozen with SIGSTOP, so their replies cannot have
/// arrived): new connections are refused, idle clients are closed, the busy client still gets every
/// reply and then EOF, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_commands() {
    bounded(Duration::from_secs(60), "SIGTERM drain", async {
        let redis = RedisServer::start().await;
        let (mut bin, listen) = spawn_proxy(
            &redis.addr().to_string(),
            &[
                "--drain-timeout",
                "20s",
                "--command-timeout",
                "20s",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
        );
        let admin = admin_addr(&mut bin);
        let mut c = wait_pong(&listen).await;
        let mut idle = wait_pong(&listen).await;
        assert_eq!(c.cmd(&["SET", "a", "1"]).await, Reply::ok());

        redis.signal(libc::SIGSTOP);
        let mut req = encode(&["GET", "a"]);
        req.extend(encode(&["INCR", "n"]));
        req.extend(encode(&["SET", "b", "2"]));
        c.send(&req).await;
        // Wait until the proxy has queued all three on an upstream connection.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = http_get(&admin, "/metrics").await.unwrap();
            if gauge_sum(&body, "respipe_upstream_inflight") >= 3.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "commands never in flight upstream:\n{body}"
            );
            tokio::time::sleep(POLL).await;
        }

        bin.signal(libc::SIGTERM);
        bin.wait_line("shutdown requested", Duration::from_secs(5));
        // New connections are refused once accepting has stopped (poll: the listener closes just
        // after the signal is handled). One accepted in that instant must be closed unserved.
        let addr: std::net::SocketAddr = listen.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::net::TcpStream::connect(addr).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                // Queued in the backlog when the listener closed.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("connect after SIGTERM: unexpected {e}"),
                Ok(s) => {
                    let mut late = RawClient::from_stream(s);
                    bounded(
                        Duration::from_secs(5),
                        "late connection closed",
                        late.expect_eof(),
                    )
                    .await;
                }
            }
            assert!(
                Instant::now() < deadline,
                "respipe still accepts 5s after SIGTERM"
            );
            tokio::time::sleep(POLL).await;
        }
        // An idle client is closed at once.
        bounded(
            Duration::from_secs(5),
            "idle client closed",
            idle.expect_eof(),
        )
        .await;
        assert!(
            bin.child.try_wait().unwrap().is_none(),
            "respipe exited with commands in flight"
        );

        redis.signal(libc::SIGCONT);
        let rest = bounded(
            Duration::from_secs(10),
            "replies after SIGTERM",
            c.read_replies(3),
        )
        .await;
        assert_eq!(rest, vec![Reply::bulk("1"), Reply::Int(1), Reply::ok()]);
        bounded(
            Duration::from_secs(10),
            "EOF after the drain",
            c.expect_eof(),
        )
        .await;
        let status = bin.wait_exit(Duration::from_secs(15));
        assert_eq!(
            status.code(),
            Some(0),
            "{status}; stderr:\n{}",
            bin.seen.join("\n")
        );
        assert_eq!(
            redis.direct().await.cmd(&["GET", "b"]).await,
            Reply::bulk("2")
        );
    })
    .await
}

/// The `respipe ready` line promises readiness: a SIGTERM sent as soon as it is logged must drain
/// and exit 0, not kill the process.
#[test]
fn sigterm_right_after_ready_exits_0() {
    // The race is narrow: try several times.
    for _ in 0..20 {
        let (mut bin, _) = spawn_proxy(&format!("127.0.0.1:{}", free_port()), &[]);
        stop(&mut bin);
    }
}

/// The admin address from the ready line's `metrics=http://ADDR`.
fn admin_addr(bin: &mut Binary) -> String {
    let metrics = bin.ready_field("metrics");
    metrics
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("metrics={metrics}"))
        .to_owned()
}

/// Sum of every sample of a metric family in Prometheus text.
fn gauge_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `/healthz`, `/readyz` (200 with an upstream, 503 without) and `/metrics` after traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint() {
    bounded(Duration::from_secs(60), "metrics endpoint", async {
        let mut redis = RedisServer::start().await;
        let (mut bin, listen) = spawn_proxy(
            &redis.addr().to_string(),
            &["--metrics-listen", "127.0.0.1:0"],
        );
        let admin = admin_addr(&mut bin);
        let (status, body) = http_get(&admin, "/healthz").await.unwrap();
        assert_eq!(status, 200, "/healthz: {body}");
        wait_status(&admin, "/readyz", 200).await;
        let (status, _) = http_get(&admin, "/nope").await.unwrap();
        assert_eq!(status, 404);

        let mut c = wait_pong(&listen).await;
        for i in 0..100 {
            assert_eq!(c.cmd(&["SET", &format!("m{i}"), "v"]).await, Reply::ok());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = http_get(&admin, "/metrics").await.unwrap();
            assert_eq!(status, 200);
            if body.contains("respipe_commands_total") && body.contains("respipe_batch_commands") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/metrics lacks respipe_commands_total or respipe_batch_commands:\n{body}"
            );
            tokio::time::sleep(POLL).await;
        }

        redis.kill();
        wait_status(&admin, "/readyz", 503).await;
        redis.restart().await;
        wait_status(&admin, "/readyz", 200).await;
        stop(&mut bin);
    })
    .await
}

async fn wait_status(admin: &str, path: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http_get(admin, path).await.unwrap();
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still {status} ({body:?}), expected {want}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `respipe --twemproxy FILE --print-config` is the documented migration step: it prints respipe
/// TOML and exits 0, and that TOML loads to the same configuration as the YAML pool.
#[test]
fn twemproxy_print_config_loads_back_equal() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("nutcracker.yml");
    std::fs::write(
        &yaml,
        "alpha:\n  listen: 127.0.0.1:22121\n  hash: murmur\n  distribution: ketama\n  hash_tag: \"{}\"\n  \
         redis: true\n  timeout: 400\n  preconnect: true\n  servers:\n   - 127.0.0.1:7001:1 one\n   \
         - 127.0.0.1:7002:2 two\n",
    )
    .unwrap();
    let mut cmd = respipe_command();
    cmd.arg("--twemproxy").arg(&yaml).arg("--print-config");
    let (code, stdout, stderr) = run_to_exit(cmd, EXIT);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stdout.contains("[[upstream.servers]]"), "{stdout}");
    let printed = dir.path().join("respipe.toml");
    std::fs::write(&printed, &stdout).unwrap();

    let load = |args: &[&std::ffi::OsStr]| {
        let args = std::iter::once(std::ffi::OsStr::new("respipe")).chain(args.iter().copied());
        respipe::Config::load_from(args, &|_: &str| None).unwrap_or_else(|e| panic!("{e}"))
    };
    let from_yaml = load(&["--twemproxy".as_ref(), yaml.as_os_str()]);
    let from_toml = load(&["--config".as_ref(), printed.as_os_str()]);
    assert!(matches!(
        from_yaml.topology,
        respipe::config::Topology::Shards(_)
    ));
    assert_eq!(from_yaml.warnings.len(), 1, "preconnect is reported");
    assert_eq!(
        respipe::Config {
            config_file: None,
            ..from_toml
        },
        respipe::Config {
            warnings: Vec::new(),
            ..from_yaml
        }
    );
}

/// `--twemproxy FILE` runs the pool itself: keys spread over its servers and come back, and the
/// twemproxy keys respipe has no equivalent for are named in one warning at startup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twemproxy_pool_serves_and_names_ignored_keys() {
    bounded(Duration::from_secs(60), "twemproxy pool", async {
        let (one, two) = (RedisServer::start().await, RedisServer::start().await);
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("nutcracker.yml");
        std::fs::write(
            &yaml,
            format!(
                "alpha:\n  listen: 127.0.0.1:22121\n  hash: fnv1a_64\n  distribution: ketama\n  \
                 redis: true\n  preconnect: true\n  backlog: 512\n  servers:\n   - {}:1 one\n   - {}:1 two\n",
                one.addr(),
                two.addr()
            ),
        )
        .unwrap();
        let mut cmd = respipe_command();
        cmd.arg("--twemproxy")
            .arg(&yaml)
            .args(["--listen", "127.0.0.1:0"]);
        let mut bin = Binary::spawn(cmd);
        let warning = bin.wait_line("no respipe equivalent", Duration::from_secs(10));
        assert!(warning.contains("preconnect, backlog"), "{warning}");
        let listen: std::net::SocketAddr = bin.ready_field("listen").parse().unwrap();
        let mut client = RawClient::connect(listen).await;
        for i in 0..40 {
            let key = format!("key:{i}");
            assert_eq!(client.cmd(&["SET", &key, &key]).await, Reply::ok());
        }
        for i in 0..40 {
            let key = format!("key:{i}");
            assert_eq!(client.cmd(&["GET", &key]).await, Reply::bulk(&key));
        }
        for redis in [&one, &two] {
            let mut direct = RawClient::connect(redis.addr()).await;
            match direct.cmd(&["DBSIZE"]).await {
                Reply::Int(n) => assert!(n > 0 && n < 40, "one server holds {n} of 40 keys"),
                other => panic!("DBSIZE: {other:?}"),
            }
        }
    })
    .await;
}
