//! Server configuration: a TOML file, then environment variables, then command-line flags, each
//! overriding the one before (the flags and variables are declared on `siren serve`).
//!
//! ```toml
//! listen = "127.0.0.1:7070"
//! db = "siren-demo/db"
//! model = "siren-demo/model"          # optional: without it /v1/score answers 503
//! model_dir = "siren-demo/models"      # optional: where POST /v1/admin/reload finds models by name
//! codebook = "siren-demo/codebook.bin" # optional: SemIDs for items upserted without one
//! backup_dir = "siren-demo/backups"    # optional: where POST /v1/admin/checkpoint writes
//! allow_unauthenticated_admin = false  # without tokens, admin routes refuse unless this is true
//!
//! [limits]
//! max_body_bytes = 16777216
//! max_candidates = 1000
//! max_k = 1000
//! max_events_per_request = 100000
//! max_items_per_request = 10000
//! max_history_limit = 100000
//! request_timeout_ms = 10000
//! max_in_flight = 64
//! max_connections = 1024
//! header_read_timeout_ms = 10000
//! max_model_bytes = 1073741824
//!
//! [engine]
//! compact_pending_events = 1000000
//! compact_interval_ms = 60000
//! max_events_per_user = 100000
//! cache_mib = 64
//!
//! [[tokens]]
//! token = "a-long-random-string"
//! scopes = ["read", "write", "admin"]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a bearer token may do. `admin` implies `read` and `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub token: String,
    pub scopes: Vec<Scope>,
    /// A name for logs (the token itself is never logged).
    #[serde(default)]
    pub name: Option<String>,
}

impl Token {
    pub fn allows(&self, need: Scope) -> bool {
        self.scopes.contains(&need) || self.scopes.contains(&Scope::Admin)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted, in bytes (larger ones get 413).
    pub max_body_bytes: usize,
    pub max_candidates: usize,
    /// Largest `k` of a retrieval and of a score's explanations.
    pub max_k: usize,
    pub max_events_per_request: usize,
    pub max_items_per_request: usize,
    pub max_history_limit: usize,
    /// A request not answered after this long is answered 503 `timeout` with `Retry-After`,
    /// unless it has started a write: a write is answered with its outcome once it ends
    /// (`admission` explains why).
    pub request_timeout_ms: u64,
    /// Requests served at once; more are shed at once with 503 and `Retry-After` rather than
    /// queued.
    pub max_in_flight: usize,
    /// Open connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A connection that has not sent a whole request head this long after it opened (or after
    /// its previous request) is closed: slow clients cannot hold connections.
    pub header_read_timeout_ms: u64,
    /// Largest checkpoint file (`config.json`, `model.safetensors`) a model reload reads.
    pub max_model_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 << 20,
            max_candidates: 1000,
            max_k: 1000,
            max_events_per_request: 100_000,
            max_items_per_request: 10_000,
            max_history_limit: 100_000,
            request_timeout_ms: 10_000,
            max_in_flight: 64,
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            max_model_bytes: 1 << 30,
        }
    }
}

/// Engine settings that may change between opens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Compact in the background when this many events wait in the write path (0: never by
    /// count).
    pub compact_pending_events: u64,
    /// Also compact when events have waited this long.
    pub compact_interval_ms: u64,
    /// A user keeps at most this many events; the oldest are dropped first.
    pub max_events_per_user: u32,
    /// Memory for decoded blocks and prefix bitmaps shared by all requests, MiB (0: none).
    pub cache_mib: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let d = siren_engine::AutoCompact::default();
        EngineConfig {
            compact_pending_events: d.pending_events,
            compact_interval_ms: d.interval.as_millis() as u64,
            max_events_per_user: siren_engine::Options::default().max_events_per_user,
            cache_mib: (siren_engine::Options::default().cache_bytes >> 20) as u64,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    /// The database directory (created if missing, with the `embedding_dim`, `semid_levels` and
    /// `semid_codebook_size` below; an existing database keeps its own).
    pub db: PathBuf,
    pub model: Option<PathBuf>,
    /// `POST /v1/admin/reload {"model": "<name>"}` loads `<model_dir>/<name>` and nothing
    /// outside it; without `model_dir` a reload can only load `model` again.
    pub model_dir: Option<PathBuf>,
    pub codebook: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    /// With no token configured, admin routes (reload, compact, checkpoint) answer 403 unless
    /// this is set: anyone who can reach the loopback interface could call them otherwise.
    pub allow_unauthenticated_admin: bool,
    pub embedding_dim: u32,
    pub semid_levels: u8,
    pub semid_codebook_size: u32,
    pub limits: Limits,
    pub engine: EngineConfig,
    pub tokens: Vec<Token>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            db: PathBuf::from("siren-data"),
            model: None,
            model_dir: None,
            codebook: None,
            backup_dir: None,
            allow_unauthenticated_admin: false,
            embedding_dim: 64,
            semid_levels: 3,
            semid_codebook_size: 256,
            limits: Limits::default(),
            engine: EngineConfig::default(),
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let positive = [
            ("max_body_bytes", l.max_body_bytes),
            ("max_candidates", l.max_candidates),
            ("max_k", l.max_k),
            ("max_events_per_request", l.max_events_per_request),
            ("max_items_per_request", l.max_items_per_request),
            ("max_history_limit", l.max_history_limit),
            ("max_in_flight", l.max_in_flight),
            ("request_timeout_ms", l.request_timeout_ms as usize),
            ("max_connections", l.max_connections),
            ("header_read_timeout_ms", l.header_read_timeout_ms as usize),
            ("max_model_bytes", l.max_model_bytes as usize),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!(
                "limits.{name} must be positive"
            )));
        }
        for t in &self.tokens {
            if t.token.len() < 16 {
                return Err(ConfigError::Invalid(
                    "every token must be at least 16 characters".into(),
                ));
            }
            if t.scopes.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "token {} has no scopes",
                    t.name.as_deref().unwrap_or("(unnamed)")
                )));
            }
        }
        Ok(())
    }

    /// The address to bind: with no token configured, only loopback, whatever was asked.
    pub fn bind_address(&self) -> (SocketAddr, Option<String>) {
        if !self.tokens.is_empty() || self.listen.ip().is_loopback() {
            return (self.listen, None);
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], self.listen.port()));
        (
            addr,
            Some(format!(
                "no access token is configured, so the server binds to {addr} (loopback) \
                 instead of {}; configure [[tokens]] to serve other hosts",
                self.listen
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file_and_rejects_unknown_keys() {
        let c: Config = toml::from_str(
            r#"
            listen = "0.0.0.0:8080"
            db = "d"
            model = "m"
            [limits]
            max_candidates = 10
            [[tokens]]
            token = "0123456789abcdef"
            scopes = ["read"]
            "#,
        )
        .unwrap();
        assert_eq!(c.limits.max_candidates, 10);
        assert_eq!(c.limits.max_k, Limits::default().max_k);
        assert!(c.tokens[0].allows(Scope::Read) && !c.tokens[0].allows(Scope::Write));
        c.validate().unwrap();
        assert_eq!(c.bind_address().0, c.listen);
        assert!(toml::from_str::<Config>("lsten = \"x\"").is_err());
        assert!(toml::from_str::<Config>("[limits]\nmax_k = -1").is_err());
    }

    #[test]
    fn without_tokens_only_loopback() {
        let c = Config {
            listen: "0.0.0.0:9000".parse().unwrap(),
            ..Config::default()
        };
        let (addr, warning) = c.bind_address();
        assert_eq!(addr, "127.0.0.1:9000".parse().unwrap());
        assert!(warning.unwrap().contains("loopback"));
        let short = Config {
            tokens: vec![Token {
                token: "short".into(),
                scopes: vec![Scope::Admin],
                name: None,
            }],
            ..Config::default()
        };
        assert!(short.validate().is_err());
    }
}
