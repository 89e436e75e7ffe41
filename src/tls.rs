//! TLS on both sides, with rustls: the acceptor for clients (`tls_cert`/`tls_key`, optionally
//! requiring client certificates) and the connector for `rediss://` upstreams (a trusted CA,
//! optional client certificate for mutual TLS, SNI, and verification skipped only when asked).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::warn;

use crate::config::{Config, Endpoint, Topology};

/// A TLS setting that could not be turned into a working TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("tls {key} {path}: {reason}")]
    File {
        /// The setting that names the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the combination (for example a key that does not match its certificate).
    #[error("tls {key}: {source}")]
    Rustls {
        /// The setting at fault.
        key: &'static str,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// The name to verify Redis's certificate against is not a valid DNS name or IP address.
    #[error("tls upstream_tls_server_name {0:?}: not a valid DNS name or IP address")]
    ServerName(String),
}

/// What upstream connections need to speak TLS: the connector and the name to verify.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Built once; cloning shares it.
    pub connector: TlsConnector,
    /// Checked against Redis's certificate and sent as SNI.
    pub server_name: ServerName<'static>,
}

/// Accepts any server certificate: `upstream_tls_insecure`, only when explicitly asked.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The client-facing acceptor, when `tls_cert`/`tls_key` are set.
pub fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else {
        return Ok(None);
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            key: "tls_cert",
            source,
        })?;
    let builder = match &config.tls.client_ca {
        Some(ca) => {
            let roots = roots("tls_client_ca", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::File {
                    key: "tls_client_ca",
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs("tls_cert", cert)?, private_key("tls_key", key)?)
        .map_err(|source| TlsError::Rustls {
            key: "tls_key",
            source,
        })?;
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// The upstream connector, when the upstream is `rediss://` (or, watched by Sentinel, when the
/// sentinels are): one for every TLS upstream, each connection using it only when its own
/// address says TLS.
pub fn connector(config: &Config) -> Result<Option<UpstreamTls>, TlsError> {
    let sentinels = match &config.topology {
        Topology::Sentinel(spec) => spec.sentinels.iter().any(|s| s.tls),
        _ => false,
    };
    if !config.upstream.tls && !sentinels {
        return Ok(None);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Rustls {
            key: "upstream_tls_ca",
            source,
        })?;
    let builder = if config.tls.upstream_insecure {
        warn!("upstream_tls_insecure: Redis's TLS certificate is not verified");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let ca = config.tls.upstream_ca.as_deref().unwrap_or(Path::new(""));
        builder.with_root_certificates(roots("upstream_tls_ca", ca)?)
    };
    let client = match (&config.tls.upstream_cert, &config.tls.upstream_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                certs("upstream_tls_cert", cert)?,
                private_key("upstream_tls_key", key)?,
            )
            .map_err(|source| TlsError::Rustls {
                key: "upstream_tls_key",
                source,
            })?,
        _ => builder.with_no_client_auth(),
    };
    let name = match (&config.tls.upstream_server_name, &config.upstream.endpoint) {
        (Some(name), _) => name.clone(),
        (None, Endpoint::Tcp { host, .. }) => host.clone(),
        (None, Endpoint::Unix(_)) => "localhost".to_owned(),
    };
    let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
    Ok(Some(UpstreamTls {
        connector: TlsConnector::from(Arc::new(client)),
        server_name,
    }))
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The one crypto provider respipe uses (ring), explicitly: no process-wide default is assumed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |reason: String| TlsError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error("no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

fn private_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(key, path)? {
        roots
            .add(cert)
            .map_err(|source| TlsError::Rustls { key, source })?;
    }
    Ok(roots)
}
