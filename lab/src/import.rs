//! Importers of outside formats into a new dataset directory (`siren_model::dataset`): each
//! loads its files into a database, then the directory is finished the same way for all (SemIDs
//! fitted, compaction, codebook, impressions, `dataset.json`).

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
) -> Result<DatasetMeta> {
    let ml = MovieLens::load(paths)?;
    dir.create()?;
    let db = Db::open(dir.db_path(), DatasetDir::db_options(ml.dim, semid))?;
    ml.import(&db, None)?;
    let (splits, protocol) = ml.impressions();
    let details = serde_json::to_value(&protocol).expect("report serialises");
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

pub fn import_taobao(
    files: &TaobaoFiles,
    dir: &DatasetDir,
    semid: &RqKmeansConfig,
) -> Result<DatasetMeta> {
    dir.create()?;
    let db = Db::open(
        dir.db_path(),
        DatasetDir::db_options(taobao::EMBEDDING_DIM, semid),
    )?;
    let imported = taobao::import(&db, files, &TaobaoImportOptions::default())?;
    let details = serde_json::to_value(&imported.report).expect("report serialises");
    Ok(finish(
        dir,
        &db,
        "taobao-mm",
        semid,
        &imported.splits,
        &SideTables::default(),
        details,
    )?)
}
