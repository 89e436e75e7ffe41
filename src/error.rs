//! Typed errors that record which side failed: the client, the upstream, or respipe itself.

use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Which side of the proxy a failure came from (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream client sent something wrong or went away.
    Client,
    /// The Redis server (or the path to it) failed.
    Upstream,
    /// respipe itself (binding, configuration, a bug).
    Internal,
}

/// A failure of one upstream connection. Cloneable: one failure is reported to every waiting client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP/unix connect (or the handshake) did not finish in time.
    #[error("upstream {addr}: connect timed out after {timeout:?}")]
    ConnectTimeout {
        /// The upstream endpoint, never with credentials.
        addr: String,
        /// The configured connect timeout.
        timeout: Duration,
    },
    /// A socket error while connecting, reading or writing.
    #[error("upstream {addr}: {source}")]
    Io {
        /// The upstream endpoint.
        addr: String,
        /// The socket error.
        source: Arc<io::Error>,
    },
    /// Redis refused a handshake command (AUTH, SELECT): the reply's first line.
    #[error("upstream {addr}: handshake refused: {reply}")]
    Handshake {
        /// The upstream endpoint.
        addr: String,
        /// Redis's error line, without the leading `-`.
        reply: String,
    },
    /// Redis sent bytes that are not RESP.
    #[error("upstream {addr}: {source}")]
    Protocol {
        /// The upstream endpoint.
        addr: String,
        /// What was wrong.
        source: crate::resp::ProtocolError,
    },
    /// Sentinel mode, while no primary is known: nothing to connect to.
    #[error("no primary known for master {master:?} yet: no sentinel has named one that says it is (ROLE)")]
    NoPrimary {
        /// The master name the sentinels monitor.
        master: String,
    },
    /// Sentinel mode: the server says it has another role than its lane needs (`ROLE`): a
    /// primary demoted to a replica, a replica promoted.
    #[error(
        "upstream {addr} is a {} now (ROLE {reported}), not the {} the sentinels named",
        role_name(reported),
        role_name(wanted)
    )]
    WrongRole {
        /// The upstream endpoint.
        addr: String,
        /// What `ROLE` said (`master`, `slave`...).
        reported: String,
        /// What the lane needs.
        wanted: &'static str,
    },
    /// Sentinel mode: the primary's address changed since the pool was made (a failover); its
    /// connections are not made again, so an old primary that comes back is never written to.
    #[error("upstream {addr} is no longer the primary: the sentinels name {primary} now")]
    Superseded {
        /// The old primary's endpoint.
        addr: String,
        /// The primary now.
        primary: String,
    },
    /// Redis closed the connection.
    #[error("upstream {addr}: connection closed by peer")]
    Closed {
        /// The upstream endpoint.
        addr: String,
    },
}

/// An error that stops `run` or the binary: binding and serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listen address could not be bound.
    #[error("listen {addr}: {source}")]
    Bind {
        /// The address as configured.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// A TLS setting could not be turned into a working TLS configuration.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A worker thread could not be started.
    #[error("start {thread}: {source}")]
    Thread {
        /// Which thread.
        thread: String,
        /// The system's error.
        source: io::Error,
    },
}

impl UpstreamError {
    /// Which side failed: always the upstream.
    pub fn side(&self) -> Side {
        Side::Upstream
    }

    /// A short, stable label for metrics (`respipe_upstream_errors_total{kind}`).
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::ConnectTimeout { .. } => "connect_timeout",
            UpstreamError::Io { .. } => "io",
            UpstreamError::Handshake { .. } => "handshake",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::Closed { .. } => "closed",
            UpstreamError::NoPrimary { .. } => "no_primary",
            UpstreamError::WrongRole { .. } => "wrong_role",
            UpstreamError::Superseded { .. } => "superseded",
        }
    }

    pub(crate) fn io(addr: &str, source: io::Error) -> Self {
        UpstreamError::Io {
            addr: addr.to_owned(),
            source: Arc::new(source),
        }
    }
}

/// A server's role (as `ROLE` says it) in words.
fn role_name(role: &str) -> &str {
    match role {
        "master" => "primary",
        "slave" => "replica",
        other => other,
    }
}

impl Error {
    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            Error::Bind { .. } | Error::Tls(_) | Error::Thread { .. } => Side::Internal,
        }
    }
}
