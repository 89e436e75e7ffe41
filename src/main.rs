//! The respipe binary: config → tracing → bind → run until a signal → drain with a timeout.
//! Exits 64 on a bad configuration, 1 when a listener cannot be bound, 0 after a clean shutdown.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use respipe::config::{ListenAddr, LogFormat};
use respipe::{Admin, Config, Listener};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

/// How often the config file's modification time is checked for a reload.
const FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

fn main() -> ExitCode {
    let config = Config::load().unwrap_or_else(|err| err.exit());
    let log = init_tracing(&config);
    for warning in &config.warnings {
        warn!("{warning}");
    }
    // TLS files are parsed now, before anything binds: a bad certificate is a configuration error.
    if let Err(err) = respipe::tls::acceptor(&config).and(respipe::tls::connector(&config)) {
        error!(error = %err, "invalid TLS configuration");
        return ExitCode::from(64);
    }
    if config.batching.sched_batch {
        // Before the runtime starts, so every thread it makes inherits the policy.
        match sched_batch() {
            Ok(()) => info!("scheduling policy SCHED_BATCH (sched_batch)"),
            Err(err) => {
                warn!(error = %err, "cannot switch to SCHED_BATCH (sched_batch); keeping the normal policy")
            }
        }
    }
    // One thread per worker, like Redis and twemproxy: a worker's sessions and upstream drivers meet
    // on it, so handing a request to a driver and a reply back is a queue push, not a cross-thread
    // wake-up (futex + context switch). Measured side by side on 2 cores, a multi-thread runtime cost
    // 1.2-1.4x more proxy CPU per command at 50-200 clients (README, "Performance"). This thread is
    // worker 0 and the acceptor; `workers` > 1 starts the others (`respipe::workers`).
    log_panics();
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
    match runtime.block_on(serve(config, log)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!(error = format!("{err:#}"), "respipe stopped");
            ExitCode::FAILURE
        }
    }
}

/// Logs a panic (of a session, or a whole worker) through tracing, where the operator looks,
/// before the default hook prints it: one session's panic ends only that session; a worker's is
/// also reported by the worker (`respipe::workers`).
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        error!(
            thread = thread.name().unwrap_or("unnamed"),
            panic = %info,
            "panic"
        );
        default(info);
    }));
}

/// Puts the calling thread (and the threads it starts later) under Linux's `SCHED_BATCH` policy:
/// a wake-up does not preempt the running task (the client that sent the request), so respipe
/// serves what arrived in one pass once that task yields. No privilege is needed to choose it.
/// Already under it (systemd's `CPUSchedulingPolicy=batch`, `chrt -b`), it changes nothing.
#[cfg(target_os = "linux")]
fn sched_batch() -> std::io::Result<()> {
    // SAFETY: plain system calls on the calling thread (pid 0); `param` is valid and initialised.
    if unsafe { libc::sched_getscheduler(0) } == libc::SCHED_BATCH {
        return Ok(());
    }
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as above.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn sched_batch() -> std::io::Result<()> {
    Err(std::io::Error::other("SCHED_BATCH exists only on Linux"))
}

/// Binds everything, runs the proxy until SIGTERM or SIGINT, and drains.
async fn serve(config: Config, log: LogReload) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    for addr in &config.listen.addresses {
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
    let admin = match config.observability.metrics_listen {
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
    tokio::spawn(on_signal(term, int, shutdown.clone()));
    let (updates, updates_rx) = watch::channel(config.clone());
    tokio::spawn(watch_config(hup, config.clone(), updates, log));
    info!(
        listen = %bound.join(" "),
        upstream = %config.upstream,
        pool_size = config.batching.pool_size.get(),
        workers = config.batching.workers.get(),
        "respipe ready"
    );
    respipe::server::run_with_updates(config, listeners, admin, shutdown, updates_rx).await?;
    info!("respipe stopped");
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn on_signal(mut term: Signal, mut int: Signal, shutdown: CancellationToken) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    info!(
        signal = name,
        "shutdown requested: no new clients, draining in-flight commands"
    );
    shutdown.cancel();
}

/// The handle that changes the log filter on reload; `None` when `RUST_LOG` set it (it wins).
type LogReload = Option<reload::Handle<EnvFilter, Registry>>;

fn init_tracing(config: &Config) -> LogReload {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.observability.log_level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = match config.observability.log_format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    (!env_set).then_some(handle)
}

/// Reloads the configuration on SIGHUP and whenever the config file changes (its modification time
/// is checked every `FILE_CHECK`; a Kubernetes ConfigMap update swaps a symlink, which this sees).
/// A configuration that does not load is rejected with its reason and the running one stays.
async fn watch_config(
    mut hup: Signal,
    mut running: Config,
    updates: watch::Sender<Config>,
    log: LogReload,
) {
    let modified = |path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    };
    let mut seen = modified(&running.config_file);
    let mut tick = tokio::time::interval(FILE_CHECK);
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = modified(&running.config_file);
                if now == seen {
                    continue;
                }
                seen = now;
                "config file changed"
            }
        };
        match Config::load() {
            Ok(new) => {
                if new.observability.log_level != running.observability.log_level {
                    match (&log, EnvFilter::try_new(&new.observability.log_level)) {
                        (Some(handle), Ok(filter)) => {
                            let _ = handle.reload(filter);
                        }
                        (None, _) => info!("log_level changed, but RUST_LOG is set and wins"),
                        (_, Err(err)) => warn!(error = %err, "log_level not applied"),
                    }
                }
                info!(trigger = why, "reloading configuration");
                for warning in &new.warnings {
                    warn!("{warning}");
                }
                running = new.clone();
                if updates.send(new).is_err() {
                    return;
                }
            }
            Err(err) => error!(
                trigger = why,
                error = %err,
                "config reload rejected; the running configuration stays"
            ),
        }
    }
}
