//! Hot reload of the binary: a change of the config file (and SIGHUP) applies new settings to
//! connected clients without dropping them; a bad file is rejected and the running configuration
//! stays; settings that need a restart are reported; new upstream credentials take effect.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use respipe::config::Upstream;
use respipe::shard::{Hash, Placement, Server, Spec};

const LIMIT: Duration = Duration::from_secs(60);
const APPLY: Duration = Duration::from_secs(10);

fn write_config(path: &Path, listen: &str, upstream: &str, extra: &str) {
    let text = format!("listen = [\"{listen}\"]\nupstream = \"{upstream}\"\n{extra}\n");
    // Write beside and rename, as editors and ConfigMaps do: the watcher never sees half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

/// Starts the binary with `--config path` and returns it with its client address.
fn start(path: &Path) -> (Binary, SocketAddr) {
    let mut cmd = respipe_command();
    cmd.arg("--config").arg(path);
    let mut bin = Binary::spawn(cmd);
    let listen: SocketAddr = bin.ready_field("listen").parse().expect("listen address");
    (bin, listen)
}

/// Sends `cmd` on `client` (every `POLL`) until its reply satisfies `ok`; fails after `APPLY`.
async fn until(client: &mut RawClient, cmd: &[&str], what: &str, ok: impl Fn(&Reply) -> bool) {
    let deadline = std::time::Instant::now() + APPLY;
    loop {
        let reply = client.cmd(cmd).await;
        if ok(&reply) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {APPLY:?}; last reply {reply:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn denied(reply: &Reply) -> bool {
    reply
        .error_text()
        .is_some_and(|e| e.contains("disabled by configuration"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_changes_apply_without_dropping_clients() {
    bounded(LIMIT, "reload on file change", async {
        let redis = RedisServer::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("respipe.toml");
        let upstream = redis.addr().to_string();
        write_config(&path, "127.0.0.1:0", &upstream, "");
        let (mut bin, addr) = start(&path);
        let mut client = connect_pong(addr).await;
        assert_eq!(client.cmd(&["ECHO", "x"]).await, Reply::bulk("x"));

        // A new deny list reaches the already connected client.
        write_config(
            &path,
            "127.0.0.1:0",
            &upstream,
            "deny_commands = [\"ECHO\"]",
        );
        until(
            &mut client,
            &["ECHO", "x"],
            "ECHO denied after the reload",
            denied,
        )
        .await;
        assert_eq!(client.cmd(&["SET", "k", "v"]).await, Reply::ok());

        // A bad file is rejected whole: ECHO stays denied, the proxy keeps serving.
        write_config(&path, "127.0.0.1:0", &upstream, "pool_size = 0");
        bin.wait_line("config reload rejected", APPLY);
        assert!(denied(&client.cmd(&["ECHO", "x"]).await));

        // A listen address cannot change while running: reported, and the old one still serves.
        write_config(&path, "127.0.0.1:1", &upstream, "");
        let line = bin.wait_line("need a restart", APPLY);
        assert!(line.contains("listen"), "{line}");
        let mut fresh = connect_pong(addr).await;
        // The rest of that file (no deny list) did apply.
        assert_eq!(fresh.cmd(&["ECHO", "y"]).await, Reply::bulk("y"));
        assert_eq!(client.cmd(&["GET", "k"]).await, Reply::bulk("v"));

        // SIGHUP reloads too, and does not stop the proxy.
        write_config(
            &path,
            "127.0.0.1:0",
            &upstream,
            "deny_commands = [\"ECHO\"]",
        );
        bin.signal(libc::SIGHUP);
        bin.wait_line("trigger=\"SIGHUP\"", APPLY);
        assert_eq!(client.cmd(&["PING"]).await, Reply::Simple("PONG".into()));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_upstream_credentials_take_effect() {
    bounded(LIMIT, "reload credentials", async {
        let redis = RedisServer::start_with(&["--requirepass", "one"]).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("respipe.toml");
        let url = |pw: &str| format!("redis://:{pw}@{}", redis.addr());
        write_config(&path, "127.0.0.1:0", &url("one"), "");
        let (mut bin, addr) = start(&path);
        let mut client = connect_pong(addr).await;
        assert_eq!(client.cmd(&["SET", "cred", "1"]).await, Reply::ok());

        // Redis's password changes; respipe's connections stay authenticated as they were.
        let mut direct = redis.direct().await;
        assert_eq!(direct.cmd(&["AUTH", "one"]).await, Reply::ok());
        assert_eq!(
            direct.cmd(&["CONFIG", "SET", "requirepass", "two"]).await,
            Reply::ok()
        );
        write_config(&path, "127.0.0.1:0", &url("two"), "");
        bin.wait_line("config reloaded", APPLY);

        // Every respipe connection is killed: only connections made with the new password work.
        let killed = direct
            .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .await;
        assert!(matches!(killed, Reply::Int(n) if n >= 1), "{killed:?}");
        until(
            &mut client,
            &["GET", "cred"],
            "GET with the new password",
            |r| *r == Reply::bulk("1"),
        )
        .await;
    })
    .await
}

/// The hash of the sharded configs (ketama). Not twemproxy's default `fnv1a_64`: that one keeps
/// 32 bits and multiplies by 0x1b3, so keys that differ only in their last bytes (`three:100` to
/// `three:199`) hash within 0.04% of the ring, and the 300 keys of a round fall in four clumps:
/// for about half of all port triples (the ring names) one server gets none, with nutcracker too
/// (see `shard::placement`'s tests). md5 places each key on its own.
const HASH: (&str, Hash) = ("md5", Hash::Md5);

/// Writes a sharded config: `listen` and one `[[upstream.servers]]` per address.
fn write_shards(path: &Path, listen: &str, servers: &[String]) {
    let mut text = format!(
        "listen = [\"{listen}\"]\n[upstream]\nkind = \"shards\"\nhash = \"{}\"\n",
        HASH.0
    );
    for server in servers {
        text.push_str(&format!("[[upstream.servers]]\naddress = \"{server}\"\n"));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("replace config");
}

/// How many of `keys` belong to each of `servers` (by their place in the list), as
/// [`write_shards`] configures them.
fn placed(servers: &[&RedisServer], keys: impl Iterator<Item = String>) -> Vec<i64> {
    let spec = Spec {
        servers: servers
            .iter()
            .map(|s| Server {
                upstream: Upstream::tcp("127.0.0.1", s.port()),
                name: None,
                weight: 1,
            })
            .collect(),
        hash: HASH.1,
        distribution: Default::default(),
        hash_tag: None,
        eject: None,
    };
    let placement = Placement::new(&spec, &vec![true; servers.len()]);
    let mut counts = vec![0; servers.len()];
    for key in keys {
        counts[placement.server_for(key.as_bytes()).expect("a live server")] += 1;
    }
    counts
}

/// Keys in each server's db 0, asked of each server directly.
async fn sizes(servers: &[RedisServer]) -> Vec<i64> {
    let mut sizes = Vec::new();
    for server in servers {
        let mut direct = RawClient::connect(server.addr()).await;
        match direct.cmd(&["DBSIZE"]).await {
            Reply::Int(n) => sizes.push(n),
            other => panic!("DBSIZE: {other:?}"),
        }
    }
    sizes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_list_reload_reaches_connected_clients() {
    bounded(LIMIT, "reload of the server list", async {
        let servers = [
            RedisServer::start().await,
            RedisServer::start().await,
            RedisServer::start().await,
        ];
        let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("respipe.toml");
        write_shards(&path, "127.0.0.1:0", &addrs[..2]);
        let (_bin, addr) = start(&path);
        let mut client = connect_pong(addr).await;
        let id = client.cmd(&["CLIENT", "ID"]).await;
        let set = |n: usize, round: &str| (format!("{round}:{n}"), format!("v{n}"));
        for n in 0..300 {
            let (k, v) = set(n, "two");
            assert_eq!(client.cmd(&["SET", &k, &v]).await, Reply::ok());
        }
        let before = sizes(&servers).await;
        assert_eq!((before[0] + before[1], before[2]), (300, 0), "{before:?}");

        // A third server: the connected client's keys start landing on it, and its fan-out
        // commands reach it.
        write_shards(&path, "127.0.0.1:0", &addrs);
        let deadline = std::time::Instant::now() + APPLY;
        let mut n = 0;
        while sizes(&servers).await[2] == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no key reached the new server"
            );
            let (k, v) = set(n, "probe");
            assert_eq!(client.cmd(&["SET", &k, &v]).await, Reply::ok());
            n += 1;
            tokio::time::sleep(POLL).await;
        }
        let now = sizes(&servers).await;
        assert_eq!(
            client.cmd(&["DBSIZE"]).await,
            Reply::Int(now.iter().sum()),
            "{now:?}"
        );
        assert_eq!(client.cmd(&["FLUSHALL"]).await, Reply::ok());
        assert_eq!(sizes(&servers).await, [0, 0, 0]);
        for n in 0..300 {
            let (k, v) = set(n, "three");
            assert_eq!(client.cmd(&["SET", &k, &v]).await, Reply::ok());
        }
        // Every key where the three servers' placement puts it.
        let three = sizes(&servers).await;
        let all: Vec<&RedisServer> = servers.iter().collect();
        let keys = |round: &'static str| (0..300).map(move |n| set(n, round).0);
        assert_eq!(three, placed(&all, keys("three")));
        assert!(three.iter().all(|&n| n > 0), "{three:?}");
        for n in 0..300 {
            let (k, v) = set(n, "three");
            assert_eq!(client.cmd(&["GET", &k]).await, Reply::bulk(v));
        }

        // The second server leaves: nothing more lands on it, DBSIZE no longer counts it.
        let kept = [addrs[0].clone(), addrs[2].clone()];
        write_shards(&path, "127.0.0.1:0", &kept);
        until(
            &mut client,
            &["DBSIZE"],
            "DBSIZE counts the two servers left",
            |reply| *reply == Reply::Int(three[0] + three[2]),
        )
        .await;
        for n in 0..300 {
            let (k, v) = set(n, "left");
            assert_eq!(client.cmd(&["SET", &k, &v]).await, Reply::ok());
        }
        let left = sizes(&servers).await;
        let added = placed(&[&servers[0], &servers[2]], keys("left"));
        assert_eq!(
            left,
            [three[0] + added[0], three[1], three[2] + added[1]],
            "{added:?}"
        );
        // The same connection all along.
        assert_eq!(client.cmd(&["CLIENT", "ID"]).await, id);
    })
    .await
}
