//! The long reply-integrity drill (run by `scripts/drill.sh`): starts redis-server and the respipe
//! binary on free loopback ports, runs many clients writing values that carry their own id (pipelined
//! and not) while Redis is SIGKILLed and restarted, prints one summary line and exits 1 if any reply
//! was wrong, misrouted or missing. `--idle N` first measures respipe's memory per idle client.
//!
//! ```text
//! cargo run --release --example drill -- --respipe target/release/respipe \
//!     [--clients 300] [--pipelined 100] [--seconds 60] [--kills 2] [--idle 10000]
//! ```

#[path = "../tests/common/drill.rs"]
mod drill;
#[path = "../tests/common/wire.rs"]
mod wire;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |name, default| {
        arg(&args, name, default)
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("{name}"))
    };
    let respipe = arg(&args, "--respipe", "target/release/respipe");
    let idle = num("--idle", "0");
    let cfg = drill::DrillConfig {
        clients: num("--clients", "300"),
        pipelined: num("--pipelined", "100"),
        duration: Duration::from_secs(num("--seconds", "60") as u64),
        kills: num("--kills", "2"),
        shape: drill::ClientShape::plain(Duration::from_secs(15), 32),
    };
    let nofile = drill::raise_nofile();
    let dir = std::env::temp_dir().join(format!("respipe-drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = drill::RedisProc::start(free_port(), dir.clone()).await;
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.join("respipe.log")).unwrap();
    let mut proxy = Command::new(&respipe)
        .args(["--listen", &listen, "--upstream", &redis.addr().to_string()])
        .args(["--command-timeout", "5s", "--max-clients", "20000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {respipe}: {e}"));
    let pid = proxy.id();
    let addr = listen.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !drill::ping(addr).await {
        assert!(Instant::now() < deadline, "respipe does not answer PING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut idle_conns = Vec::new();
    if idle > 0 {
        let before = drill::proc_kib(pid, "VmRSS");
        let t = Instant::now();
        idle_conns = drill::open_idle(addr, idle).await;
        let after = drill::proc_kib(pid, "VmRSS");
        println!(
            "idle: {idle} clients (RLIMIT_NOFILE {nofile}) opened in {:?}; respipe RSS {before} KiB -> {after} KiB, {:.0} bytes per idle client",
            t.elapsed(),
            (after.saturating_sub(before) * 1024) as f64 / idle as f64
        );
    }
    let report = drill::run(addr, &mut redis, &cfg).await;
    let peak = drill::proc_kib(pid, "VmHWM");
    if idle > 0 {
        println!(
            "idle: respipe peak RSS {peak} KiB with {idle} idle clients plus the drill's load"
        );
    }
    drop(idle_conns);
    let _ = proxy.kill();
    let _ = proxy.wait();
    println!("{}", report.summary());
    // `exit` runs no destructors: stop the redis-server the drill started first.
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if report.clean() { 0 } else { 1 });
}
