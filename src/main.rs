//! The respipe binary: config → tracing → bind → run until a signal → drain with a timeout.
//! Exits 64 on a bad configuration, 1 when a listener cannot be bound, 0 after a clean shutdown.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use respipe::config::{ListenAddr, LogFormat};
use respipe::{Admin, Config, Listener};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::load().unwrap_or_else(|err| err.exit());
    init_tracing(&config);
    // TLS files are parsed now, before anything binds: a bad certificate is a configuration error.
    if let Err(err) = respipe::tls::acceptor(&config).and(respipe::tls::connector(&config)) {
        error!(error = %err, "invalid TLS configuration");
        return ExitCode::from(64);
    }
    // One thread, like Redis and twemproxy: every session and upstream driver meet on it, so handing a
    // request to a driver and a reply back is a queue push, not a cross-thread wake-up (futex +
    // context switch). Measured side by side on 2 cores, a multi-thread runtime cost 1.2-1.4x more
    // proxy CPU per command at 50-200 clients (README, "Performance").
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = format!("{err:#}"), "respipe stopped");
            ExitCode::FAILURE
        }
    }
}

/// Binds everything, runs the proxy until SIGTERM or SIGINT, and drains.
async fn serve(config: Config) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for addr in &config.listen {
        match addr {
            ListenAddr::Tcp(a) => {
                let l = TcpListener::bind(a)
                    .await
                    .with_context(|| format!("listen {a}"))?;
                bound.push(l.local_addr().map(|a| a.to_string()).unwrap_or_default());
                listeners.push(Listener::Tcp(l));
            }
            ListenAddr::Unix(path) => {
                // A stale socket file from an earlier run would make bind fail.
                if path.exists() {
                    let _ = std::fs::remove_file(path);
                }
                let l = UnixListener::bind(path)
                    .with_context(|| format!("listen unix:{}", path.display()))?;
                bound.push(format!("unix:{}", path.display()));
                listeners.push(Listener::Unix(l));
            }
        }
    }
    let admin = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics listen {addr}"))?;
            let local = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            bound.push(format!("metrics=http://{local}"));
            Some(Admin {
                listener,
                metrics: respipe::metrics::install(),
            })
        }
        None => None,
    };
    let shutdown = CancellationToken::new();
    // Installed before "ready" is logged: until then SIGTERM would still kill the process outright.
    let (term, int) = (
        signal(SignalKind::terminate()).context("install SIGTERM handler")?,
        signal(SignalKind::interrupt()).context("install SIGINT handler")?,
    );
    let hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    tokio::spawn(on_signal(term, int, hup, shutdown.clone()));
    info!(
        listen = %bound.join(" "),
        upstream = %config.upstream,
        pool_size = config.pool_size.get(),
        "respipe ready"
    );
    respipe::run(config, listeners, admin, shutdown).await?;
    info!("respipe stopped");
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
/// SIGHUP is logged and ignored: reloading the configuration is not supported yet, and the
/// default action (terminate) would drop every client.
async fn on_signal(
    mut term: Signal,
    mut int: Signal,
    mut hup: Signal,
    shutdown: CancellationToken,
) {
    let name = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => warn!(
                "SIGHUP ignored: configuration reload is not supported yet; restart respipe to apply changes"
            ),
        }
    };
    info!(
        signal = name,
        "shutdown requested: no new clients, draining in-flight commands"
    );
    shutdown.cancel();
}

fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
