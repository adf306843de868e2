//! What every handler shares, and how the server opens it from a [`Config`].

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use siren_engine::{Db, Options};
use siren_model::semid::Codebook;
use siren_serve::{Ranker, ServedModel};

use crate::admission::Admission;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::ServerMetrics;

/// The database, the ranker and the metrics side by side: handlers take a snapshot of the
/// database and hand it to the ranker.
#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub ranker: Arc<Ranker>,
    pub config: Arc<Config>,
    pub metrics: Arc<ServerMetrics>,
    /// The `/v1` routes' concurrency permits and time limit.
    pub admission: Arc<Admission>,
    /// Set when shutdown begins: `/readyz` answers 503 so that load balancers stop sending.
    pub shutting_down: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(db: Arc<Db>, ranker: Arc<Ranker>, config: Config) -> AppState {
        AppState {
            metrics: Arc::new(ServerMetrics::new(&db)),
            admission: Arc::new(Admission::new(&config.limits)),
            db,
            ranker,
            config: Arc::new(config),
            shutting_down: Arc::new(AtomicBool::new(false)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(transparent)]
    Engine(#[from] siren_engine::Error),
    #[error(transparent)]
    Model(#[from] siren_model::ModelError),
    #[error(transparent)]
    Serve(#[from] siren_serve::ServeError),
}

/// Open (or create) the configured database, and a ranker with the model and codebook if
/// configured. An existing database keeps the settings it was created with.
pub fn open(cfg: &Config) -> Result<(Db, Ranker), OpenError> {
    let e = &cfg.engine;
    let mut opts = Options {
        embedding_dim: cfg.embedding_dim,
        semid_levels: cfg.semid_levels,
        semid_codebook_size: cfg.semid_codebook_size,
        max_events_per_user: e.max_events_per_user,
        cache_bytes: usize::try_from(e.cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
        auto_compact: Some(siren_engine::AutoCompact {
            pending_events: if e.compact_pending_events == 0 {
                u64::MAX
            } else {
                e.compact_pending_events
            },
            interval: std::time::Duration::from_millis(e.compact_interval_ms.max(1)),
        }),
        ..Options::default()
    };
    if cfg.db.join("rocksdb").exists() {
        opts = Db::created_with(&cfg.db)?.apply(opts);
    }
    let db = Db::open(&cfg.db, opts)?;
    let model = cfg.model.as_deref().map(ServedModel::load).transpose()?;
    let codebook = cfg.codebook.as_deref().map(Codebook::load).transpose()?;
    let ranker = Ranker::new(&db, model, codebook)?;
    Ok((db, ranker))
}

/// The names a request may give for a directory under a configured one (a checkpoint under
/// `backup_dir`, a model under `model_dir`): one path component, never `..` or hidden. The
/// OpenAPI document declares the same pattern.
pub const CHILD_NAME_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$";

/// `dir/name` for a checked `name` (see [`CHILD_NAME_PATTERN`]); `what` names it in the error.
pub fn child_path(dir: &Path, name: &str, what: &str) -> Result<std::path::PathBuf, ApiError> {
    let ok = (1..=100).contains(&name.len())
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(ApiError::invalid(format!(
            "a {what} name is 1 to 100 letters, digits, '-', '_' or '.', not starting with '.'"
        )));
    }
    Ok(dir.join(name))
}
