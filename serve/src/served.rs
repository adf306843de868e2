//! A checkpoint ready to serve, and the shape of the database it must fit.

use std::path::{Path, PathBuf};

use siren_engine::Db;
use siren_model::labels::ItemLabels;
use siren_model::models::Scorer;
use siren_model::semid::Codebook;
use siren_model::train::{load_checkpoint_within, CheckpointConfig};

use crate::error::{Result, ServeError};
use crate::forward::weights::Named;
use crate::forward::FusedEsu;

/// What a model and a codebook must agree with in the database they serve: fixed when the
/// database was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbShape {
    pub embedding_dim: u32,
    pub semid_levels: u8,
    pub semid_codebook_size: u32,
}

impl DbShape {
    pub fn of(db: &Db) -> DbShape {
        let o = db.options();
        DbShape {
            embedding_dim: o.embedding_dim,
            semid_levels: o.semid_levels,
            semid_codebook_size: o.semid_codebook_size,
        }
    }

    /// A codebook fits when its dimension, levels and codes per level are the database's.
    pub fn check_codebook(&self, c: &Codebook) -> Result<()> {
        if c.dim() != self.embedding_dim as usize
            || c.levels() != usize::from(self.semid_levels)
            || c.size() != self.semid_codebook_size as usize
        {
            return Err(ServeError::invalid(format!(
                "codebook of {} levels x {} codes over {} dimensions does not fit the database \
                 ({} levels x {} codes, {} dimensions)",
                c.levels(),
                c.size(),
                c.dim(),
                self.semid_levels,
                self.semid_codebook_size,
                self.embedding_dim
            )));
        }
        Ok(())
    }
}

/// A checkpoint ready to serve.
pub struct ServedModel {
    version: String,
    source: PathBuf,
    pub config: CheckpointConfig,
    pub(crate) scorer: Box<dyn Scorer>,
    /// The fused forward over the same weights, for the models it covers; `None` scores with
    /// `scorer` (candle).
    pub(crate) fused: Option<FusedEsu>,
    /// The training impressions' item click statistics, for a model that reads them.
    pub(crate) item_labels: Option<ItemLabels>,
}

impl std::fmt::Debug for ServedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedModel")
            .field("version", &self.version)
            .field("source", &self.source)
            .finish()
    }
}

impl ServedModel {
    /// Load a checkpoint directory written by `siren train`. Its version is the model name and
    /// the checksum of its weights, so two loads of the same weights have the same version.
    pub fn load(dir: impl AsRef<Path>) -> siren_model::Result<ServedModel> {
        Self::load_within(dir, u64::MAX)
    }

    /// [`ServedModel::load`], refusing checkpoint files larger than `max_file_bytes` before
    /// reading them.
    pub fn load_within(
        dir: impl AsRef<Path>,
        max_file_bytes: u64,
    ) -> siren_model::Result<ServedModel> {
        let loaded = load_checkpoint_within(dir.as_ref(), max_file_bytes)?;
        let weights = Named::new(loaded.params.named_tensors()?);
        let fused = FusedEsu::load(&loaded.cfg.model, &weights).map_err(|e| match e {
            ServeError::Model(m) => m,
            other => siren_model::ModelError::invalid(other.to_string()),
        })?;
        Ok(ServedModel {
            version: format!(
                "{}-{:08x}",
                loaded.cfg.model.name(),
                loaded.cfg.weights_crc32c
            ),
            source: dir.as_ref().to_path_buf(),
            item_labels: loaded.cfg.item_labels.as_ref().map(ItemLabels::from_table),
            config: loaded.cfg,
            scorer: loaded.model,
            fused,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn name(&self) -> String {
        self.config.model.name()
    }

    /// Whether scores come from the fused forward ([`crate::forward`]) rather than candle.
    pub fn is_fused(&self) -> bool {
        self.fused.is_some()
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The model was trained on embeddings and SemIDs of the database's shape.
    pub fn check_fits(&self, shape: &DbShape) -> Result<()> {
        let d = &self.config.dims;
        if d.emb_dim != shape.embedding_dim as usize {
            return Err(ServeError::invalid(format!(
                "model {} expects {}-dimensional embeddings, the database holds {}",
                self.version, d.emb_dim, shape.embedding_dim
            )));
        }
        if self.config.levels != usize::from(shape.semid_levels) {
            return Err(ServeError::invalid(format!(
                "model {} was trained on {} SemID levels, the database uses {}",
                self.version, self.config.levels, shape.semid_levels
            )));
        }
        Ok(())
    }
}
