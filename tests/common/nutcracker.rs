//! twemproxy (`/usr/sbin/nutcracker`, 0.5) as a child process on loopback ports of its own, for
//! tests that hold respipe to what twemproxy does.

use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::{free_port, POLL, START_DEADLINE};

/// A nutcracker child process; killed and reaped on drop (also when the test panics).
pub struct Nutcracker {
    child: Child,
    /// Where its pool listens.
    pub addr: SocketAddr,
    /// Its configuration file (the pool with its listen address filled in).
    pub conf: PathBuf,
    /// Holds the configuration and the log.
    _dir: tempfile::TempDir,
}

impl Nutcracker {
    /// Starts nutcracker with `pool` (a YAML pool whose `{listen}` is filled in with a free
    /// loopback address) and waits until it accepts connections; tries other ports if the chosen
    /// ones were taken meanwhile.
    pub async fn start(pool: &str) -> Nutcracker {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(n) = Nutcracker::try_start(pool, deadline).await {
                return n;
            }
            assert!(
                Instant::now() < deadline,
                "nutcracker did not start within {START_DEADLINE:?}"
            );
        }
    }

    /// One attempt: `None` if nutcracker exited (a port was taken).
    async fn try_start(pool: &str, deadline: Instant) -> Option<Nutcracker> {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let conf = dir.path().join("nutcracker.yml");
        std::fs::write(&conf, pool.replace("{listen}", &addr.to_string())).expect("write config");
        let log = dir.path().join("nutcracker.log");
        let child = Command::new("/usr/sbin/nutcracker")
            .arg("-c")
            .arg(&conf)
            .args(["-a", "127.0.0.1", "-s", &free_port().to_string(), "-o"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn /usr/sbin/nutcracker (is the nutcracker package installed?)");
        let mut nutcracker = Nutcracker {
            child,
            addr,
            conf,
            _dir: dir,
        };
        loop {
            if let Some(status) = nutcracker.child.try_wait().expect("try_wait") {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                eprintln!("nutcracker exited early ({status}): {log}");
                return None;
            }
            if StdStream::connect(addr).is_ok() {
                return Some(nutcracker);
            }
            assert!(
                Instant::now() < deadline,
                "nutcracker did not accept on {addr}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
