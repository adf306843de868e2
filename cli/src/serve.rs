//! `siren serve`: configuration from a TOML file, environment variables and flags (each
//! overriding the one before), structured logs, and a graceful stop on Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use siren_engine::Db;
use siren_http::config::Config;
use siren_serve::Ranker;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args)]
pub struct ServeArgs {
    /// TOML configuration file (see the `siren_http::config` documentation).
    #[arg(long, env = "SIREN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on; without tokens only a loopback address is used.
    #[arg(long, env = "SIREN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Database directory (created if missing).
    #[arg(long, env = "SIREN_DB")]
    db: Option<PathBuf>,
    /// Model checkpoint directory (from `siren train`).
    #[arg(long, env = "SIREN_MODEL")]
    model: Option<PathBuf>,
    /// SemID codebook (from `siren semid fit` or an import), for items upserted without one.
    #[arg(long, env = "SIREN_CODEBOOK")]
    codebook: Option<PathBuf>,
    /// Directory for `POST /v1/admin/checkpoint`.
    #[arg(long, env = "SIREN_BACKUP_DIR")]
    backup_dir: Option<PathBuf>,
    #[arg(long, env = "SIREN_MAX_IN_FLIGHT")]
    max_in_flight: Option<usize>,
    #[arg(long, env = "SIREN_REQUEST_TIMEOUT_MS")]
    request_timeout_ms: Option<u64>,
    #[arg(long, env = "SIREN_MAX_CANDIDATES")]
    max_candidates: Option<usize>,
    #[arg(long, env = "SIREN_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Log lines as text or JSON; the level comes from SIREN_LOG (default `info`).
    #[arg(long, env = "SIREN_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

impl ServeArgs {
    fn config(&self) -> Result<Config, Box<dyn std::error::Error>> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident).+ = $value:expr) => {
                if let Some(v) = $value.clone() {
                    c.$($field).+ = v;
                }
            };
        }
        set!(listen = self.listen);
        set!(db = self.db);
        if self.model.is_some() {
            c.model = self.model.clone();
        }
        if self.codebook.is_some() {
            c.codebook = self.codebook.clone();
        }
        if self.backup_dir.is_some() {
            c.backup_dir = self.backup_dir.clone();
        }
        set!(limits.max_in_flight = self.max_in_flight);
        set!(limits.request_timeout_ms = self.request_timeout_ms);
        set!(limits.max_candidates = self.max_candidates);
        set!(limits.max_body_bytes = self.max_body_bytes);
        c.validate()?;
        Ok(c)
    }
}

pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIREN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: log files and pipes get plain `key=value` text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Serve `config` until Ctrl-C or SIGTERM; `on_ready` runs once the socket is bound.
pub fn serve_blocking(
    config: Config,
    db: Arc<Db>,
    ranker: Arc<Ranker>,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let signal = siren_http::server::shutdown_signal()?;
        let running = siren_http::server::start(config, db, ranker).await?;
        on_ready(running.addr);
        running.run_until(signal).await
    })?;
    Ok(())
}

pub fn run(a: &ServeArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    init_logs(a.log_format);
    let config = a.config()?;
    let (db, ranker) = siren_http::state::open(&config)?;
    match ranker.model() {
        Some(m) => tracing::info!(model = m.version(), "model loaded"),
        None => {
            tracing::warn!("no model configured: /v1/score answers 503 until POST /v1/admin/reload")
        }
    }
    tracing::info!(db = %config.db.display(), "database open");
    serve_blocking(config, Arc::new(db), Arc::new(ranker), |_| {})?;
    Ok(ExitCode::SUCCESS)
}
