//! The write side of Taobao-MM parquet ([`crate::taobao`]): a writer of each table, with the
//! published schema (Snappy; list children named `element`; every column nullable, as pyarrow
//! writes them), and `siren export taobao`, which writes a Siren dataset in that format so that
//! the same data can be trained through both paths (and by the MUSE authors' code).
//!
//! # What an export holds
//!
//! - Embeddings: every catalog item with one, quantised to int8 as the published table is: each
//!   vector scaled so that its largest component is ±127, then rounded (cosine similarity, all
//!   the models read, is kept to about 1%).
//! - Categories: engine category `c` is written as `c + 1`, because Taobao-MM's 0 means unknown
//!   (and pads); items known only from events are written with 0.
//! - Histories ([`Histories`]): a user's events strictly before the user's earliest impression,
//!   the newest `max_history` of them (1,000, the published cap), oldest first, so that every
//!   impression of a user sees that one history, as in the published data; or, in the shard
//!   layout, each row's own as-of history (the user's events strictly before that impression),
//!   which keeps what every sample saw when impressions fall between a user's events (MovieLens).
//!   The six tables have one history per user, so they only take the first. With as-of
//!   histories each split's rows are written in time order, so a user's rows come oldest first
//!   and the importer ([`crate::taobao::import`]) can lay each row's history onto one timeline.
//! - Samples: train and validation impressions in the train table, test impressions in the test
//!   table; the importer takes validation users back out of the train table by the same hash
//!   rule the synthetic data is split by ([`siren_model::data::user_split`]), so a dataset split
//!   by user comes back with the same three splits. Impression times, actions and domains are
//!   not part of the format and are not written.
//! - Side tables: item attributes as `213`/`214`, user profiles as `130_1`..`130_5`.
//!
//! Two layouts: the six tables of the authors' `data_demo/` (the default), or, with `shards`,
//! the public release's joined per-sample shards (`train/train-shard-00000.parquet`, ...; each
//! row repeats its user's history and its target's features) next to the embedding table. In
//! the shard layout only target items carry `213`/`214`.
//!
//! Memory: the catalog's rows and every exported user's history are held while writing; shard
//! rows are built and written a batch at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, PrimitiveBuilder};
use arrow_array::types::{Int64Type, Int8Type};
use arrow_array::{ArrayRef, ArrowPrimitiveType, Int64Array, RecordBatch};
use arrow_schema::Field;
use parquet::arrow::ArrowWriter;
use serde::Serialize;
use siren_engine::{ReadRange, Snapshot};
use siren_model::data::{Impression, Splits};
use siren_model::dataset::{create_new_dir, DatasetDir};

use crate::error::{LabError, Result};
use crate::taobao::{
    col, file, TaobaoEmbedding, TaobaoItem, TaobaoSample, TaobaoShardRow, TaobaoUser,
    DEFAULT_BATCH_ROWS, SHARD_DIRS,
};

// ---------------------------------------------------------------------------------------------
// Writing tables

/// Named columns of one record batch, in file order.
pub type Columns = Vec<(&'static str, ArrayRef)>;

/// A parquet file being written a record batch at a time.
pub struct TableWriter {
    path: PathBuf,
    writer: Option<ArrowWriter<File>>,
}

impl TableWriter {
    pub fn create(path: impl Into<PathBuf>) -> TableWriter {
        TableWriter {
            path: path.into(),
            writer: None,
        }
    }

    /// Append `rows` as columns made by `cols`, in batches of at most [`DEFAULT_BATCH_ROWS`].
    pub fn write<T>(&mut self, rows: &[T], cols: fn(&[T]) -> Columns) -> Result<()> {
        for chunk in rows.chunks(DEFAULT_BATCH_ROWS) {
            self.write_batch(cols(chunk))?;
        }
        Ok(())
    }

    /// Append one record batch of these columns (the first batch fixes the schema).
    pub fn write_batch(&mut self, cols: Columns) -> Result<()> {
        let batch =
            RecordBatch::try_from_iter_with_nullable(cols.into_iter().map(|(n, a)| (n, a, true)))
                .map_err(|e| self.err(e))?;
        if self.writer.is_none() {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let f = File::create(&self.path).map_err(|e| LabError::io(&self.path, e))?;
            let w =
                ArrowWriter::try_new(f, batch.schema(), Some(props)).map_err(|e| self.err(e))?;
            self.writer = Some(w);
        }
        let w = self.writer.as_mut().expect("opened above");
        w.write(&batch).map_err(|e| self.err(e))
    }

    /// Finish the file; a writer that got no rows writes the schema of `cols` with no rows.
    pub fn close<T>(mut self, cols: fn(&[T]) -> Columns) -> Result<()> {
        if self.writer.is_none() {
            self.write_batch(cols(&[]))?;
        }
        let w = self.writer.take().expect("set above");
        w.close().map_err(|e| self.err(e))?;
        Ok(())
    }

    fn err(&self, e: impl std::fmt::Display) -> LabError {
        LabError::io(&self.path, std::io::Error::other(e.to_string()))
    }
}

/// Write one whole table.
pub fn write_table<T>(
    path: impl Into<PathBuf>,
    rows: &[T],
    cols: fn(&[T]) -> Columns,
) -> Result<()> {
    let mut w = TableWriter::create(path);
    w.write(rows, cols)?;
    w.close(cols)
}

fn list_builder<T: ArrowPrimitiveType>(rows: usize) -> ListBuilder<PrimitiveBuilder<T>> {
    ListBuilder::with_capacity(PrimitiveBuilder::<T>::new(), rows).with_field(Arc::new(Field::new(
        "element",
        T::DATA_TYPE,
        true,
    )))
}

/// A list column of these rows (children named `element`, as pyarrow writes them).
pub fn lists<'a, T: ArrowPrimitiveType>(v: impl IntoIterator<Item = &'a [T::Native]>) -> ArrayRef {
    let mut b = list_builder::<T>(0);
    for l in v {
        b.values().append_slice(l);
        b.append(true);
    }
    Arc::new(b.finish())
}

fn i64s<T>(rows: &[T], f: impl Fn(&T) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
}

/// `label_0`, `129_1`, `205`.
pub fn sample_columns(rows: &[TaobaoSample]) -> Columns {
    let labels: Vec<[i8; 2]> = rows
        .iter()
        .map(|r| [i8::from(!r.click), i8::from(r.click)])
        .collect();
    vec![
        (col::LABEL, lists::<Int8Type>(labels.iter().map(|l| &l[..]))),
        (col::USER, i64s(rows, |r| r.user)),
        (col::ITEM, i64s(rows, |r| r.item)),
    ]
}

/// `129_1`, `130_1`..`130_5`, `150_2_180`, `151_2_180`.
pub fn user_columns(rows: &[TaobaoUser]) -> Columns {
    let mut cols = vec![(col::USER, i64s(rows, |r| r.user))];
    cols.extend(profile_columns(rows));
    cols.extend(sequence_columns(rows));
    cols
}

fn profile_columns(rows: &[TaobaoUser]) -> Columns {
    (0..col::PROFILE.len())
        .map(|k| (col::PROFILE[k], i64s(rows, |r| r.profile[k])))
        .collect()
}

fn sequence_columns(rows: &[TaobaoUser]) -> Columns {
    vec![
        (
            col::SEQ_ITEMS,
            lists::<Int64Type>(rows.iter().map(|r| &r.items[..])),
        ),
        (
            col::SEQ_CATEGORIES,
            lists::<Int64Type>(rows.iter().map(|r| &r.categories[..])),
        ),
    ]
}

/// `205`, `206`, `213`, `214`.
pub fn item_columns(rows: &[TaobaoItem]) -> Columns {
    vec![
        (col::ITEM, i64s(rows, |r| r.item)),
        (col::ITEM_CATEGORY, i64s(rows, |r| r.category)),
        (col::ATTRIBUTES[0], i64s(rows, |r| r.attributes[0])),
        (col::ATTRIBUTES[1], i64s(rows, |r| r.attributes[1])),
    ]
}

/// `205`, `205_c`.
pub fn embedding_columns(rows: &[TaobaoEmbedding]) -> Columns {
    vec![
        (col::ITEM, i64s(rows, |r| r.item)),
        (
            col::EMBEDDING,
            lists::<Int8Type>(rows.iter().map(|r| &r.embedding[..])),
        ),
    ]
}

/// The joined shard: `label_0`, the user's columns but its sequences, the target's columns,
/// then the sequences (the order of the authors' `form_sample_table`).
pub fn shard_columns(rows: &[TaobaoShardRow]) -> Columns {
    let samples: Vec<TaobaoSample> = rows.iter().map(|r| r.sample).collect();
    let users: Vec<&TaobaoUser> = rows.iter().map(|r| &r.user).collect();
    let items: Vec<TaobaoItem> = rows.iter().map(|r| r.item).collect();
    let mut cols = sample_columns(&samples);
    cols.truncate(2); // label_0, 129_1
    for k in 0..col::PROFILE.len() {
        cols.push((col::PROFILE[k], i64s(&users, |r| r.profile[k])));
    }
    cols.extend(item_columns(&items));
    cols.push((
        col::SEQ_ITEMS,
        lists::<Int64Type>(users.iter().map(|r| &r.items[..])),
    ));
    cols.push((
        col::SEQ_CATEGORIES,
        lists::<Int64Type>(users.iter().map(|r| &r.categories[..])),
    ));
    cols
}

// ---------------------------------------------------------------------------------------------
// Export

/// Which history a sample's row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Histories {
    /// One history per user: its events before its earliest impression in any split. The
    /// published data's shape; the only one the six tables can hold.
    #[default]
    FirstImpression,
    /// Each row's events before its own impression (joined shards only).
    AsOf,
}

/// How [`export`] writes.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Write joined shards, this many per split; `None` writes the six tables.
    pub shards: Option<usize>,
    /// Newest events kept of each history (the published data caps at 1,000).
    pub max_history: usize,
    pub histories: Histories,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            shards: None,
            max_history: 1000,
            histories: Histories::FirstImpression,
        }
    }
}

impl ExportOptions {
    /// Joined shards, `n` per split, each row with its as-of history.
    pub fn shards(n: usize) -> Self {
        ExportOptions {
            shards: Some(n),
            histories: Histories::AsOf,
            ..ExportOptions::default()
        }
    }

    fn validate(&self) -> Result<()> {
        if self.shards == Some(0) || self.max_history == 0 {
            return Err(LabError::invalid("shards and max_history must be positive"));
        }
        if self.shards.is_none() && self.histories == Histories::AsOf {
            return Err(LabError::invalid(
                "as-of histories need the shard layout: the six tables hold one history per user",
            ));
        }
        Ok(())
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExportReport {
    pub items: u64,
    pub embeddings: u64,
    pub train_users: u64,
    pub test_users: u64,
    pub train_samples: u64,
    pub test_samples: u64,
    /// History entries written (summed over rows with as-of histories).
    pub events: u64,
    /// Histories (users, or rows with as-of histories) cut to `max_history`.
    pub truncated_histories: u64,
}

/// Write the dataset `data` into the new folder `out` in the Taobao-MM layout (see the module
/// documentation for what is kept and how).
pub fn export(data: &DatasetDir, out: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    opts.validate()?;
    let (db, meta, splits) = data.open()?;
    let attributes = data.item_attributes(&meta)?;
    let profiles = data.user_profiles(&meta)?;
    create_new_dir(out)?;
    let snap = db.snapshot();
    let mut report = ExportReport::default();

    let (items, embeddings) = catalog_rows(&snap, &attributes)?;
    report.items = items.len() as u64;
    report.embeddings = embeddings.len() as u64;
    write_table(out.join(file::EMBEDDINGS), &embeddings, embedding_columns)?;
    drop(embeddings);

    let mut users = UserRows::new(&snap, &items, &profiles, &splits, opts.max_history);
    let targets: HashMap<i64, TaobaoItem> = match opts.shards {
        Some(_) => items.iter().map(|r| (r.item, *r)).collect(),
        None => HashMap::new(),
    };
    let mut split = |k: usize, imps: &mut [Impression]| -> Result<(u64, u64)> {
        let users_of = imps.iter().map(|i| i.user).collect::<BTreeSet<u64>>().len();
        let counts = (users_of as u64, imps.len() as u64);
        let Some(n) = opts.shards else {
            let rows: Vec<TaobaoUser> = users.first_impression_rows(imps)?.into_values().collect();
            let samples: Vec<TaobaoSample> = imps.iter().map(sample_row).collect();
            let (samples_file, users_file) = TABLE_FILES[k];
            write_table(out.join(samples_file), &samples, sample_columns)?;
            write_table(out.join(users_file), &rows, user_columns)?;
            return Ok(counts);
        };
        let name = SHARD_DIRS[k];
        let dir = out.join(name);
        match opts.histories {
            Histories::FirstImpression => {
                let rows = users.first_impression_rows(imps)?;
                let user_of = |i: &Impression| Ok(rows[&(i.user as i64)].clone());
                write_shards(&dir, name, n, imps, user_of, &targets)?;
            }
            Histories::AsOf => {
                // Oldest first, so that each user's rows come in the order they happened.
                imps.sort_by_key(|i| i.ts);
                let user_of = |i: &Impression| users.row(i.user, i.ts);
                write_shards(&dir, name, n, imps, user_of, &targets)?;
            }
        }
        Ok(counts)
    };
    let mut train: Vec<Impression> = splits.train.iter().chain(&splits.valid).copied().collect();
    let mut test = splits.test.clone();
    (report.train_users, report.train_samples) = split(0, &mut train)?;
    (report.test_users, report.test_samples) = split(1, &mut test)?;
    if opts.shards.is_none() {
        write_table(out.join(file::ITEMS), &items, item_columns)?;
    }
    (report.events, report.truncated_histories) = (users.events, users.truncated);
    Ok(report)
}

/// The samples and user tables of the train (0) and test (1) split.
const TABLE_FILES: [(&str, &str); 2] = [
    (file::TRAIN_SAMPLES, file::TRAIN_USERS),
    (file::TEST_SAMPLES, file::TEST_USERS),
];

fn sample_row(i: &Impression) -> TaobaoSample {
    TaobaoSample {
        user: i.user as i64,
        item: i.item as i64,
        click: i.label > 0.5,
    }
}

/// Every catalog item (category shifted, attributes attached) and every embedding, quantised.
fn catalog_rows(
    snap: &Snapshot,
    attributes: &siren_model::tables::ItemAttributes,
) -> Result<(Vec<TaobaoItem>, Vec<TaobaoEmbedding>)> {
    let mut items = Vec::new();
    let mut embeddings = Vec::new();
    for it in snap.items() {
        if it.id == 0 {
            return Err(padding_id("item 0 is in the catalog"));
        }
        let item = it.id as i64;
        if let Some(e) = &it.embedding {
            embeddings.push(TaobaoEmbedding {
                item,
                embedding: quantise(e),
            });
        }
        let attrs = attributes.get(&it.id).copied().unwrap_or_default();
        items.push(TaobaoItem {
            item,
            category: i64::from(it.category) + 1,
            attributes: attrs.map(|a| a as i64),
        });
    }
    Ok((items, embeddings))
}

fn padding_id(what: &str) -> LabError {
    LabError::invalid(format!(
        "{what}; Taobao-MM uses item id 0 for padding, so this dataset cannot be exported"
    ))
}

/// `e` scaled so that its largest component is ±127, rounded; a non-finite component is 0.
pub fn quantise(e: &[f32]) -> Vec<i8> {
    let max = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max == 0.0 || !max.is_finite() {
        return vec![0; e.len()];
    }
    e.iter()
        .map(|v| (v * 127.0 / max).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// What building user rows reads, and what it counted.
struct UserRows<'a> {
    snap: &'a Snapshot,
    /// Each user's earliest impression over every split.
    earliest: HashMap<u64, i64>,
    /// Exported category of each catalog item.
    categories: HashMap<i64, i64>,
    profiles: &'a siren_model::tables::UserProfiles,
    max_history: usize,
    events: u64,
    truncated: u64,
}

impl<'a> UserRows<'a> {
    fn new(
        snap: &'a Snapshot,
        items: &[TaobaoItem],
        profiles: &'a siren_model::tables::UserProfiles,
        splits: &Splits,
        max_history: usize,
    ) -> Self {
        let mut earliest: HashMap<u64, i64> = HashMap::new();
        for i in splits.train.iter().chain(&splits.valid).chain(&splits.test) {
            let t = earliest.entry(i.user).or_insert(i.ts);
            *t = (*t).min(i.ts);
        }
        UserRows {
            snap,
            earliest,
            categories: items.iter().map(|r| (r.item, r.category)).collect(),
            profiles,
            max_history,
            events: 0,
            truncated: 0,
        }
    }

    /// The row of every user of `imps`: its history strictly before its earliest impression
    /// in any split (so a user in both tables has one history, and the test table shows
    /// nothing after the user's first training impression).
    fn first_impression_rows(&mut self, imps: &[Impression]) -> Result<BTreeMap<i64, TaobaoUser>> {
        let users: BTreeSet<u64> = imps.iter().map(|i| i.user).collect();
        let mut out = BTreeMap::new();
        for user in users {
            out.insert(user as i64, self.row(user, self.earliest[&user])?);
        }
        Ok(out)
    }

    /// `user`'s row with its newest `max_history` events strictly before `as_of`.
    fn row(&mut self, user: u64, as_of: i64) -> Result<TaobaoUser> {
        let range = ReadRange {
            as_of: Some(as_of),
            last: Some(self.max_history),
            ..ReadRange::default()
        };
        let evs = self.snap.read(user, range)?;
        if evs.iter().any(|e| e.item == 0) {
            return Err(padding_id(&format!("user {user} has events of item 0")));
        }
        if evs.len() == self.max_history
            && self.snap.user_len(user, Some(as_of))? > self.max_history
        {
            self.truncated += 1;
        }
        self.events += evs.len() as u64;
        let items: Vec<i64> = evs.iter().map(|e| e.item as i64).collect();
        let categories = items
            .iter()
            .map(|i| self.categories.get(i).copied().unwrap_or(0))
            .collect();
        let profile = self.profiles.get(&user).copied().unwrap_or_default();
        Ok(TaobaoUser {
            user: user as i64,
            profile: profile.map(|p| p as i64),
            items,
            categories,
        })
    }
}

/// The samples of one split as `n` joined shards `<dir>/<split>-shard-<k>.parquet`, rows in
/// order, shard `k` holding the `k`-th contiguous `1/n` of them.
/// `user_of` gives each sample's user row.
fn write_shards(
    dir: &Path,
    split: &str,
    n: usize,
    imps: &[Impression],
    mut user_of: impl FnMut(&Impression) -> Result<TaobaoUser>,
    items: &HashMap<i64, TaobaoItem>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| LabError::io(dir, e))?;
    for k in 0..n {
        let part = &imps[k * imps.len() / n..(k + 1) * imps.len() / n];
        let mut w = TableWriter::create(dir.join(format!("{split}-shard-{k:05}.parquet")));
        for chunk in part.chunks(DEFAULT_BATCH_ROWS) {
            let mut rows = Vec::with_capacity(chunk.len());
            for imp in chunk {
                let sample = sample_row(imp);
                rows.push(TaobaoShardRow {
                    sample,
                    user: user_of(imp)?,
                    item: items.get(&sample.item).copied().unwrap_or(TaobaoItem {
                        item: sample.item,
                        category: 0,
                        attributes: [0; 2],
                    }),
                });
            }
            w.write(&rows, shard_columns)?;
        }
        w.close(shard_columns)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::import::import_taobao;
    use crate::taobao::read;
    use crate::taobao::tests::{cosine, demo_dir, synth, write_synth};
    use siren_model::semid::RqKmeansConfig;

    fn semid() -> RqKmeansConfig {
        RqKmeansConfig {
            levels: 1,
            codebook_size: 4,
            iterations: 5,
            ..RqKmeansConfig::default()
        }
    }

    #[test]
    fn quantise_scales_the_largest_component_to_127() {
        assert_eq!(quantise(&[0.5, -1.0, 0.25]), [64, -127, 32]);
        assert_eq!(quantise(&[0.0, 0.0]), [0, 0]);
        assert_eq!(quantise(&[f32::NAN, 1.0]), [0, 127]);
    }

    /// Taobao-MM files imported, exported and imported again keep the side tables, the
    /// categories (as a partition), and the embeddings up to int8 rounding.
    #[test]
    fn side_tables_categories_and_embeddings_survive_an_export() {
        let s = synth(6);
        let tmp = tempfile::tempdir().unwrap();
        let at = |p: &str| tmp.path().join(p);
        write_synth(&s, &at("src"));
        let first = DatasetDir::new(at("first"));
        import_taobao(&at("src"), &first, &semid()).unwrap();
        let report = export(&first, &at("out"), &ExportOptions::default()).unwrap();
        assert_eq!(report.embeddings, s.embeddings.len() as u64);
        let second = DatasetDir::new(at("second"));
        import_taobao(&at("out"), &second, &semid()).unwrap();
        let (m1, m2) = (first.read_meta().unwrap(), second.read_meta().unwrap());

        let attrs = first.item_attributes(&m1).unwrap();
        assert!(!attrs.is_empty());
        assert_eq!(second.item_attributes(&m2).unwrap(), attrs);
        // Profiles of the users with samples (the only users the format keeps).
        let splits = first.read_splits(&m1).unwrap();
        let sampled: HashSet<u64> = [&splits.train, &splits.valid, &splits.test]
            .iter()
            .flat_map(|v| v.iter().map(|i| i.user))
            .collect();
        let mut profiles = first.user_profiles(&m1).unwrap();
        profiles.retain(|u, _| sampled.contains(u));
        assert!(!profiles.is_empty());
        assert_eq!(second.user_profiles(&m2).unwrap(), profiles);

        // Categories: no exported item has 0 (unknown), and the items sharing a category
        // before share one after.
        let items = read::<TaobaoItem>(at("out").join(file::ITEMS)).unwrap();
        assert!(items.iter().all(|r| r.category >= 1));
        let (db1, _, _) = first.open().unwrap();
        let (db2, _, _) = second.open().unwrap();
        let (a, b) = (db1.snapshot(), db2.snapshot());
        let mut pairs = HashMap::new();
        for it in a.items() {
            let other = b.item(it.id).unwrap();
            assert_eq!(
                *pairs.entry(it.category).or_insert(other.category),
                other.category
            );
            let (e1, e2) = (it.embedding.unwrap(), other.embedding.unwrap());
            assert!(cosine(&e1, &e2) > 0.99);
        }
        for e in read::<TaobaoEmbedding>(at("out").join(file::EMBEDDINGS)).unwrap() {
            assert_eq!(
                e.embedding.iter().map(|v| v.unsigned_abs()).max(),
                Some(127)
            );
        }
        assert!(matches!(
            export(&first, &at("out"), &ExportOptions::default()),
            Err(LabError::Model(_))
        ));
    }

    /// The published demo files: their `213`/`214` and `130_*` columns reach the dataset
    /// directory's side tables, and every sample is at the one time after the histories.
    #[test]
    fn demo_attributes_and_profiles_reach_the_dataset_directory() {
        let Some(src) = demo_dir() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let dir = DatasetDir::new(tmp.path().join("demo"));
        import_taobao(&src, &dir, &semid()).unwrap();
        let (meta, splits, side) = dir.read_tables().unwrap();
        assert_eq!(meta.embedding_dim, crate::taobao::EMBEDDING_DIM);

        let items = read::<TaobaoItem>(src.join(file::ITEMS)).unwrap();
        let want: siren_model::tables::ItemAttributes = items
            .iter()
            .filter(|r| r.attributes != [0, 0])
            .map(|r| (r.item as u64, r.attributes.map(|a| a as u64)))
            .collect();
        assert!(!want.is_empty());
        assert_eq!(side.item_attributes, want);
        let mut want = siren_model::tables::UserProfiles::new();
        for f in [file::TRAIN_USERS, file::TEST_USERS] {
            for u in read::<TaobaoUser>(src.join(f)).unwrap() {
                if u.profile != [0; 5] {
                    want.insert(u.user as u64, u.profile.map(|p| p as u64));
                }
            }
        }
        assert!(!want.is_empty());
        assert_eq!(side.user_profiles, want);

        let ts = crate::taobao::TaobaoImportOptions::default()
            .sample_ts()
            .unwrap();
        let all = [&splits.train, &splits.valid, &splits.test];
        assert!(all.iter().all(|v| v.iter().all(|i| i.ts == ts)));
    }
}
