//! Binding, the accept loop, and graceful shutdown.
//!
//! Our own accept loop rather than `axum::serve`, for two limits it lacks: a header read timeout
//! (hyper's default is inert without a timer, so a client dribbling a request head could hold a
//! connection forever) and a cap on open connections (a connection over it is closed at once).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::AppState;

/// How long shutdown waits for connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(30);

/// A server running on its own task.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Bind to the configured address (loopback only when no token is configured) and serve.
pub async fn start(
    config: Config,
    db: Arc<siren_engine::Db>,
    ranker: Arc<siren_serve::Ranker>,
) -> std::io::Result<Running> {
    let (addr, warning) = config.bind_address();
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    }
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let limits = config.limits.clone();
    let state = AppState::new(db, ranker, config);
    let app = crate::api::app(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let flag = state.shutting_down.clone();
    let task = tokio::spawn(async move {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let mut stopped = stopped;
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut stopped => break,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection refused: limits.max_connections reached");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(slot);
            });
        }
        flag.store(true, Ordering::Relaxed);
        drop(listener);
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {DRAIN:?}; closing them");
        }
    });
    tracing::info!(%addr, "siren is listening");
    Ok(Running {
        addr,
        state,
        stop: Some(stop),
        task,
    })
}

impl Running {
    /// Stop accepting connections, let requests in flight finish, then make every write
    /// durable.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.finish().await
    }

    /// Serve until `signal` completes, then shut down gracefully.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        signal.await;
        tracing::info!("shutting down: finishing requests in flight");
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.finish().await
    }

    async fn finish(self) -> std::io::Result<()> {
        self.task
            .await
            .map_err(|e| std::io::Error::other(format!("server task failed: {e}")))?;
        // Work whose client is gone (a timed-out read, a write whose connection dropped) may
        // still run: let it end before the last flush.
        if !self.state.admission.drained(DRAIN).await {
            tracing::warn!("work still running after {DRAIN:?}; flushing anyway");
        }
        let db = self.state.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!("stopped; every write is durable");
        Ok(())
    }
}

/// Ctrl-C or SIGTERM. The handlers are installed by this call, so call it before announcing
/// that the server is listening: a signal sent right after that must not kill the process.
/// Must be called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
