//! TLS on both sides against a real redis-server built with TLS, with certificates the test makes:
//! `rediss://` upstreams (trusted CA, wrong CA, mutual TLS, explicit insecure mode) and TLS for
//! clients (plain clients refused, client certificates required when configured).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, SanType};
use respipe::config::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by it,
/// plus an unrelated CA; written as PEM files in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).expect("self-sign CA"), key)
}

fn leaf(name: &str, ca: &Certificate, ca_key: &KeyPair) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into().expect("dns name")),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    (params.signed_by(&key, ca, ca_key).expect("sign leaf"), key)
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, pem: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write pem");
        path
    };
    let (ca_cert, ca_key) = ca("respipe test CA");
    let (other, _) = ca("some other CA");
    let (server, server_key) = leaf("redis", &ca_cert, &ca_key);
    let (client, client_key) = leaf("client", &ca_cert, &ca_key);
    Pki {
        ca: write("ca.crt", ca_cert.pem()),
        other_ca: write("other-ca.crt", other.pem()),
        server_cert: write("server.crt", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.crt", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        _dir: dir,
    }
}

/// A Redis serving TLS on `tls_port` (and plain on its harness port, for readiness and checks).
async fn tls_redis(pki: &Pki, auth_clients: &str) -> (RedisServer, u16) {
    let tls_port = free_port();
    let port = tls_port.to_string();
    let paths = [&pki.server_cert, &pki.server_key, &pki.ca].map(|p| p.display().to_string());
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &port,
        "--tls-cert-file",
        &paths[0],
        "--tls-key-file",
        &paths[1],
        "--tls-ca-cert-file",
        &paths[2],
        "--tls-auth-clients",
        auth_clients,
    ])
    .await;
    (redis, tls_port)
}

/// A proxy whose upstream is `rediss://127.0.0.1:tls_port`, with `tweak` on top.
async fn tls_upstream_proxy(tls_port: u16, tweak: impl FnOnce(&mut Config)) -> Proxy {
    Proxy::start(tls_port, |c| {
        c.upstream.tls = true;
        tweak(c);
    })
    .await
}

/// Polls `SET` + `GET` through a plain client until it succeeds.
async fn works_through(proxy: &Proxy) {
    proxy.wait_ready().await;
    let mut c = proxy.raw().await;
    assert_eq!(c.cmd(&["SET", "tls-key", "over tls"]).await, Reply::ok());
    assert_eq!(c.cmd(&["GET", "tls-key"]).await, Reply::bulk("over tls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_upstream_with_trusted_ca() {
    bounded(LIMIT, "rediss upstream", async {
        let pki = pki();
        let (redis, tls_port) = tls_redis(&pki, "no").await;
        let proxy =
            tls_upstream_proxy(tls_port, |c| c.tls.upstream_ca = Some(pki.ca.clone())).await;
        works_through(&proxy).await;
        // It really went to the TLS port's Redis.
        assert_eq!(
            redis.direct().await.cmd(&["GET", "tls-key"]).await,
            Reply::bulk("over tls")
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_upstream_with_an_untrusted_certificate_is_refused() {
    bounded(LIMIT, "untrusted upstream", async {
        let pki = pki();
        let (_redis, tls_port) = tls_redis(&pki, "no").await;
        let proxy =
            tls_upstream_proxy(tls_port, |c| c.tls.upstream_ca = Some(pki.other_ca.clone())).await;
        let mut c = proxy.raw().await;
        let reply = c.cmd(&["GET", "k"]).await;
        let text = reply.error_text().unwrap_or_default().to_owned();
        assert!(
            text.starts_with("ERR respipe: upstream unavailable") && text.contains("certificate"),
            "expected an unavailable error naming the certificate, got {reply:?}"
        );
        // The connection stays usable: the next command gets the same explicit error.
        assert!(c.cmd(&["PING"]).await.error_text().is_some());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_upstream_insecure_mode_skips_verification() {
    bounded(LIMIT, "insecure upstream", async {
        let pki = pki();
        let (_redis, tls_port) = tls_redis(&pki, "no").await;
        let proxy = tls_upstream_proxy(tls_port, |c| c.tls.upstream_insecure = true).await;
        works_through(&proxy).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_upstream_mutual_tls() {
    bounded(LIMIT, "mutual TLS upstream", async {
        let pki = pki();
        let (_redis, tls_port) = tls_redis(&pki, "yes").await;
        // Without a client certificate Redis refuses the handshake.
        let without =
            tls_upstream_proxy(tls_port, |c| c.tls.upstream_ca = Some(pki.ca.clone())).await;
        let reply = without.raw().await.cmd(&["PING"]).await;
        assert!(
            reply
                .error_text()
                .is_some_and(|e| e.starts_with("ERR respipe: upstream")),
            "{reply:?}"
        );
        let with = tls_upstream_proxy(tls_port, |c| {
            c.tls.upstream_ca = Some(pki.ca.clone());
            c.tls.upstream_cert = Some(pki.client_cert.clone());
            c.tls.upstream_key = Some(pki.client_key.clone());
        })
        .await;
        works_through(&with).await;
    })
    .await
}

/// A TLS client of respipe, trusting the test CA, optionally with a client certificate.
async fn tls_client(
    addr: SocketAddr,
    pki: &Pki,
    with_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_over(TcpStream::connect(addr).await?, pki, with_cert).await
}

/// TLS to respipe over an already connected socket.
async fn tls_over(
    tcp: TcpStream,
    pki: &Pki,
    with_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).expect("ca pem") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_cert {
        let certs = CertificateDer::pem_file_iter(&pki.client_cert)
            .expect("client pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("client certs");
        let key = PrivateKeyDer::from_pem_file(&pki.client_key).expect("client key");
        builder
            .with_client_auth_cert(certs, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    let name = ServerName::try_from("localhost").expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Sends PING over `stream` and reads until a complete line arrives (or EOF).
async fn ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S) -> String {
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").await.is_err() {
        return String::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_speak_tls_to_respipe() {
    bounded(LIMIT, "client TLS", async {
        let pki = pki();
        let redis = RedisServer::start().await;
        let proxy = Proxy::start(redis.port(), |c| {
            c.tls.cert = Some(pki.server_cert.clone());
            c.tls.key = Some(pki.server_key.clone());
        })
        .await;
        let mut answered = poll_until(START_DEADLINE, "PONG over TLS", || async {
            let mut tls = tls_client(proxy.addr(), &pki, false).await.ok()?;
            (ping(&mut tls).await == "+PONG\r\n").then_some(tls)
        })
        .await;
        assert_eq!(ping(&mut answered).await, "+PONG\r\n");
        // A plaintext client gets no Redis reply: its bytes are not a TLS handshake.
        let mut plain = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_ne!(ping(&mut plain).await, "+PONG\r\n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured() {
    bounded(LIMIT, "client certificates", async {
        let pki = pki();
        let redis = RedisServer::start().await;
        let proxy = Proxy::start(redis.port(), |c| {
            c.tls.cert = Some(pki.server_cert.clone());
            c.tls.key = Some(pki.server_key.clone());
            c.tls.client_ca = Some(pki.ca.clone());
        })
        .await;
        let mut with = poll_until(START_DEADLINE, "PONG with a client certificate", || async {
            let mut tls = tls_client(proxy.addr(), &pki, true).await.ok()?;
            (ping(&mut tls).await == "+PONG\r\n").then_some(tls)
        })
        .await;
        assert_eq!(ping(&mut with).await, "+PONG\r\n");
        // Without a certificate the handshake (or the first read after it) fails: no PONG.
        let without = match tls_client(proxy.addr(), &pki, false).await {
            Ok(mut tls) => ping(&mut tls).await,
            Err(_) => String::new(),
        };
        assert_ne!(without, "+PONG\r\n");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_reach_a_slow_tls_client_whole() {
    bounded(LIMIT, "large replies over TLS", async {
        let pki = pki();
        let redis = RedisServer::start().await;
        let value = vec![b'v'; 2 << 20];
        let set = redis
            .direct()
            .await
            .cmd(&[&b"SET"[..], b"big", &value])
            .await;
        assert_eq!(set, Reply::ok());
        let proxy = Proxy::start(redis.port(), |c| {
            c.tls.cert = Some(pki.server_cert.clone());
            c.tls.key = Some(pki.server_key.clone());
        })
        .await;
        // A small receive buffer makes respipe's writes to this client block mid-reply: each
        // 2 MiB reply crosses TLS in many partial writes and must arrive whole, in order.
        let mut tls = poll_until(START_DEADLINE, "PONG over TLS", || async {
            let socket = tokio::net::TcpSocket::new_v4().ok()?;
            socket.set_recv_buffer_size(4096).ok()?;
            let tcp = socket.connect(proxy.addr()).await.ok()?;
            let mut tls = tls_over(tcp, &pki, false).await.ok()?;
            (ping(&mut tls).await == "+PONG\r\n").then_some(tls)
        })
        .await;
        let mut expected = format!("${}\r\n", value.len()).into_bytes();
        expected.extend_from_slice(&value);
        expected.extend_from_slice(b"\r\n");
        for _ in 0..3 {
            tls.write_all(b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n")
                .await
                .expect("send GET");
            let mut got = vec![0; expected.len()];
            tls.read_exact(&mut got)
                .await
                .expect("read the whole reply");
            assert!(got == expected, "the reply arrives whole and unchanged");
        }
    })
    .await
}
