//! Binding, serving and graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::AppState;

/// A server running on its own task.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Bind to the configured address (loopback only when no token is configured) and serve.
pub async fn start(config: Config, ranker: Arc<siren_model::Ranker>) -> std::io::Result<Running> {
    let (addr, warning) = config.bind_address();
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(ranker, config);
    let app = crate::api::app(state.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let flag = state.shutting_down.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
                flag.store(true, Ordering::Relaxed);
            })
            .await
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
            .map_err(|e| std::io::Error::other(format!("server task failed: {e}")))??;
        let ranker = self.state.ranker.clone();
        tokio::task::spawn_blocking(move || ranker.db().flush())
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
