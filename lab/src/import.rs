//! Importers of outside formats into a new dataset directory (`siren_model::dataset`): each
//! loads its files into a database, then the directory is finished the same way for all (SemIDs
//! fitted, compaction, codebook, impressions, `dataset.json`).

use std::path::Path;

use siren_engine::Db;
use siren_model::dataset::{finish, DatasetDir, DatasetMeta, SideTables};
use siren_model::semid::RqKmeansConfig;

use crate::error::Result;
use crate::movielens::{MovieLens, MovieLensPaths};
use crate::taobao::{self, TaobaoFiles, TaobaoImportOptions};

pub fn import_movielens(
    paths: &MovieLensPaths,
    dir: &DatasetDir,
    semid: &RqKmeansConfig,
    reduce_dim: Option<usize>,
) -> Result<DatasetMeta> {
    let mut ml = MovieLens::load(paths)?;
    if let Some(d) = reduce_dim {
        ml.reduce_embeddings(d)?;
    }
    dir.create()?;
    let db = Db::open(dir.db_path(), DatasetDir::db_options(ml.dim, semid))?;
    ml.import(&db, None)?;
    let (splits, protocol) = ml.impressions();
    let mut details = serde_json::to_value(&protocol).expect("report serialises");
    details["embeddings"] = match reduce_dim {
        Some(d) => format!("first {d} principal components, int8").into(),
        None => "as given (float)".into(),
    };
    Ok(finish(
        dir,
        &db,
        "movielens",
        semid,
        &splits,
        &SideTables::default(),
        details,
    )?)
}

/// Import the Taobao-MM folder `src` in either of its layouts ([`TaobaoFiles::discover`]); the
/// embedding length is the embedding table's (128 in the published data).
pub fn import_taobao(src: &Path, dir: &DatasetDir, semid: &RqKmeansConfig) -> Result<DatasetMeta> {
    let files = TaobaoFiles::discover(src)?;
    let emb = files
        .embeddings
        .as_deref()
        .expect("discover requires embeddings");
    let dim = taobao::embedding_dim(emb)?;
    dir.create()?;
    let db = Db::open(dir.db_path(), DatasetDir::db_options(dim, semid))?;
    let imported = taobao::import(&db, &files, &TaobaoImportOptions::default())?;
    let details = serde_json::to_value(&imported.report).expect("report serialises");
    Ok(finish(
        dir,
        &db,
        "taobao-mm",
        semid,
        &imported.splits,
        &imported.side,
        details,
    )?)
}
