//! The admin listener: `/metrics` (Prometheus text), `/healthz` (alive) and `/readyz` (an upstream
//! connection is up and the proxy is not draining).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often histograms are drained into the exporter's storage between scrapes.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// A bound admin listener and the metrics it serves.
#[derive(Debug)]
pub struct Admin {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listener: TcpListener,
    /// The Prometheus recorder's handle (`crate::metrics::install`).
    pub metrics: PrometheusHandle,
}

/// Serves admin requests until `shutdown` is cancelled. `ready` answers `/readyz`.
pub async fn serve<F>(admin: Admin, ready: F, shutdown: CancellationToken)
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    let ready = Arc::new(ready);
    let metrics = admin.metrics;
    let upkeep = {
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_PERIOD);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => metrics.run_upkeep(),
                }
            }
        })
    };
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = admin.listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&req, &metrics, ready.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %err, "admin connection ended with an error");
            }
        });
    }
    upkeep.abort();
}

fn respond(
    req: &Request<Incoming>,
    metrics: &PrometheusHandle,
    ready: &(dyn Fn() -> bool + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics.render()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n".to_owned()),
        (&Method::GET, "/readyz") if ready() => (StatusCode::OK, "ready\n".to_owned()),
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no upstream connection\n".to_owned(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
