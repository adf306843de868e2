//! Taobao-MM parquet (the public format of the MUSE dataset): a reader of its tables, in either
//! of its two layouts, and an importer that loads them into the engine. The write side is
//! [`crate::taobao_export`].
//!
//! # The tables
//!
//! | table | file | columns |
//! |---|---|---|
//! | samples | `train_samples.parquet`, `test_samples.parquet` | `label_0: list<int8>` one-hot `[non-click, click]`, `129_1` user, `205` target item |
//! | user features | `train_user_features.parquet`, `test_user_features.parquet` | `129_1` user, `130_1`..`130_5` profile ids, `150_2_180: list<int64>` items, `151_2_180: list<int64>` their categories |
//! | item features | `item_features.parquet` | `205` item, `206` category, `213`, `214` attribute ids |
//! | embeddings | `scl_embedding_int8_p90.parquet` | `205` item, `205_c: list<int8>` (128 values) |
//! | joined shards | `train/*-shard-*.parquet`, `test/*-shard-*.parquet` | a sample's columns with its user's and its target's, one row per sample |
//!
//! The six tables are the layout of the authors' `data_demo/`; the joined shards
//! (`form_sample_table` in their `utils/preprocess.py`) are the public release's, next to the
//! embedding table. [`TaobaoFiles::discover`] tells them apart.
//!
//! Every id is a hashed signed 64-bit integer. The engine's ids are `u64`; the importer bit-casts
//! (`as u64`), which is reversible (`as i64`), so nothing is lost and no vocabulary is needed.
//!
//! A row type ([`TaobaoRow`]) names the columns it reads and their types; the reader projects the
//! file onto exactly those columns by name and decodes nothing else, so a joined shard row
//! ([`TaobaoShardRow`]) is the sample, user and item row types decoded from one batch. The
//! profile ids `130_*` and the attributes `213`/`214` become the dataset's side tables
//! (`siren_model::dataset::SideTables`). Nulls are rejected: the authors' preprocessing writes
//! `0` for a missing value, never null.
//!
//! # Which end of a sequence is the newest
//!
//! The **last** element of `150_2_180` / `151_2_180` is the most recent behaviour. The authors'
//! loader and trainer say so in two places (`alimama-tech/MUSE`, commit
//! `76f5118423a365ebb943430643b3d6b885c4bf90`):
//! - `trainer.py`, `Trainer::transform_batch`, builds the 50-long "short" (real-time) sequence as
//!   `batch["150_2_180"][:,-50:]`, i.e. the *tail* of the long sequence, and the README calls that
//!   sequence "obtained by truncating the long sequence from the newer end";
//! - `utils/muse_dataset.py`, `_process_row`, truncates with `hist_items[-self.max_seq_len:]`
//!   under the comment "keep last max_seq_len" (recent interactions) and pads on the left, "older
//!   interactions on the left, recent on the right".
//!
//! So the file order is already the engine's order (oldest first) and needs no `newest_first`
//! switch.
//!
//! # Item id 0 and category 0
//!
//! `utils/preprocess.py` (`txt2parquet`) replaces every empty field of the raw text by `0`, so a
//! user without behaviours has the sequence `[0]`, and `muse_dataset.py` pads with 0. Item id 0
//! is therefore padding: the importer does not turn it into an event. Category id 0 means
//! "unknown" and keeps the engine category 0, which is also what the engine gives items it only
//! knows from events.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, Int8Type};
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, ListArray, PrimitiveArray, RecordBatch};
use arrow_schema::{DataType, Schema};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;
use serde::Serialize;
use siren_engine::{AppendOptions, Db, Durability, Event, Item, ReadRange, Snapshot};
use siren_model::data::{user_split, UserSplit};
use siren_model::dataset::SideTables;

use crate::error::{LabError, Result};
use siren_model::data::{Impression, Splits};

/// Column names of the format, as the MUSE authors name them (feature-group ids of Alimama's
/// feature system, which is why they are numbers).
pub mod col {
    pub const LABEL: &str = "label_0";
    pub const USER: &str = "129_1";
    pub const PROFILE: [&str; 5] = ["130_1", "130_2", "130_3", "130_4", "130_5"];
    pub const SEQ_ITEMS: &str = "150_2_180";
    pub const SEQ_CATEGORIES: &str = "151_2_180";
    pub const ITEM: &str = "205";
    /// The item's category; `213` and `214` are further attribute ids.
    pub const ITEM_CATEGORY: &str = "206";
    pub const ITEM_ATTRS: [&str; 3] = [ITEM_CATEGORY, ATTRIBUTES[0], ATTRIBUTES[1]];
    /// The item attribute ids beyond the category, kept as a side table of the dataset.
    pub const ATTRIBUTES: [&str; 2] = ["213", "214"];
    pub const EMBEDDING: &str = "205_c";
}

/// The standard file names, as in the authors' `data_demo/`.
pub mod file {
    pub const TRAIN_SAMPLES: &str = "train_samples.parquet";
    pub const TEST_SAMPLES: &str = "test_samples.parquet";
    pub const TRAIN_USERS: &str = "train_user_features.parquet";
    pub const TEST_USERS: &str = "test_user_features.parquet";
    pub const ITEMS: &str = "item_features.parquet";
    pub const EMBEDDINGS: &str = "scl_embedding_int8_p90.parquet";
}

/// Length of the SCL embeddings in the published data (`preprocess.py` asserts it).
pub const EMBEDDING_DIM: usize = 128;

/// Rows per record batch when reading. A user row of the real data holds two 1,000-long int64
/// lists (16 kB), so 1,024 rows keep a batch near 16 MB.
pub const DEFAULT_BATCH_ROWS: usize = 1024;

/// One impression of the samples table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaobaoSample {
    pub user: i64,
    pub item: i64,
    pub click: bool,
}

/// One row of a user-feature table: the profile ids and the lifelong behaviour sequence,
/// oldest first, with the category of each behaviour's item.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaobaoUser {
    pub user: i64,
    /// `130_1`..`130_5`; 0 is unknown.
    pub profile: [i64; 5],
    pub items: Vec<i64>,
    pub categories: Vec<i64>,
}

/// One row of the item-feature table: the item and its category, `206`, in the same id space as
/// `151_2_180` (the authors' SIM-hard compares `batch["206"]` with `batch["151_2_180"]`,
/// `trainer.py`, `apply_general_search`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaobaoItem {
    pub item: i64,
    pub category: i64,
    /// `213`, `214`; 0 is unknown.
    pub attributes: [i64; 2],
}

/// One row of a joined shard (the public release's per-sample layout): the sample with its
/// user's features and its target item's features.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaobaoShardRow {
    pub sample: TaobaoSample,
    pub user: TaobaoUser,
    pub item: TaobaoItem,
}

/// One row of the embedding table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaobaoEmbedding {
    pub item: i64,
    pub embedding: Vec<i8>,
}

/// A column's type as the reader accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Int64,
    ListInt8,
    ListInt64,
}

impl ColType {
    /// Whether a file's column can be read as this type. The child field's name and nullability
    /// are writer conventions and do not matter.
    fn accepts(self, t: &DataType) -> bool {
        match (self, t) {
            (ColType::Int64, DataType::Int64) => true,
            (ColType::ListInt8, DataType::List(f)) => f.data_type() == &DataType::Int8,
            (ColType::ListInt64, DataType::List(f)) => f.data_type() == &DataType::Int64,
            _ => false,
        }
    }
}

impl fmt::Display for ColType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColType::Int64 => "int64",
            ColType::ListInt8 => "list<int8>",
            ColType::ListInt64 => "list<int64>",
        })
    }
}

/// What decoding carries from one batch to the next.
#[derive(Debug, Default)]
pub struct Cursor {
    /// Index in the file of the batch's first row, for messages.
    pub row: u64,
    /// Length every embedding must have, fixed by the first row.
    pub list_len: Option<usize>,
}

/// The rows of one of the format's tables: the columns read (by name, in any order in the file;
/// other columns are not decoded) and how a record batch of them becomes rows.
pub trait TaobaoRow: Sized {
    /// The table's name in messages.
    const WHAT: &'static str;
    const COLUMNS: &'static [(&'static str, ColType)];
    /// Rows of a batch whose schema has passed the check against `COLUMNS`.
    fn decode(batch: &RecordBatch, cur: &mut Cursor) -> std::result::Result<Vec<Self>, String>;
}

// ---------------------------------------------------------------------------------------------
// Reading

/// The rows of one file, a record batch at a time, so that a 139 GB dataset streams through a
/// bounded buffer. Yields `Err` once and then ends if the file turns out malformed.
pub struct Batches<T> {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    cur: Cursor,
    rows: u64,
    failed: bool,
    _rows: PhantomData<fn() -> T>,
}

impl<T> Batches<T> {
    /// Rows in the file, from its footer (known before anything is decoded).
    pub fn num_rows(&self) -> u64 {
        self.rows
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<T: TaobaoRow> Iterator for Batches<T> {
    type Item = Result<Vec<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let (reader, cur) = (&mut self.reader, &mut self.cur);
        let out = guard(|| match reader.next() {
            None => Ok(None),
            Some(Ok(batch)) => {
                let rows = T::decode(&batch, cur);
                cur.row += batch.num_rows() as u64;
                rows.map(Some)
            }
            Some(Err(e)) => Err(format!("rows from {}: {e}", cur.row)),
        });
        if out.is_err() {
            self.failed = true;
        }
        out.map_err(|d| LabError::input(&self.path, format!("{}: {d}", T::WHAT)))
            .transpose()
    }
}

/// Runs parquet decoding so that a panic becomes an error. The parquet crate panics on some
/// corrupt files (a test flipping bits found panics in footer, page-header and bit-unpacking
/// code), and a malformed input file must not take the process down. Whatever panicked is
/// dropped afterwards, never used again.
fn guard<R>(f: impl FnOnce() -> std::result::Result<R, String>) -> std::result::Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("corrupt parquet data (decoder panicked: {msg})"))
    })
}

/// Open a file of `T`'s table, check its schema and stream its rows `batch_rows` at a time.
pub fn read_batches<T: TaobaoRow>(path: impl AsRef<Path>, batch_rows: usize) -> Result<Batches<T>> {
    let path = path.as_ref();
    if batch_rows == 0 {
        return Err(LabError::invalid("batch_rows must be positive"));
    }
    let f = File::open(path).map_err(|e| LabError::io(path, e))?;
    let (reader, rows) = guard(|| {
        let builder = ParquetRecordBatchReaderBuilder::try_new(f)
            .map_err(|e| format!("not a readable parquet file: {e}"))?;
        let roots = check_schema(builder.schema(), T::COLUMNS)?;
        let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| format!("cannot read: {e}"))?;
        Ok((reader, rows))
    })
    .map_err(|d| LabError::input(path, format!("{}: {d}", T::WHAT)))?;
    Ok(Batches {
        path: path.to_path_buf(),
        reader,
        cur: Cursor::default(),
        rows,
        failed: false,
        _rows: PhantomData,
    })
}

/// All rows of a file of `T`'s table.
pub fn read<T: TaobaoRow>(path: impl AsRef<Path>) -> Result<Vec<T>> {
    let batches = read_batches::<T>(path, DEFAULT_BATCH_ROWS)?;
    let mut out = Vec::with_capacity(reserve(batches.num_rows()));
    for b in batches {
        out.extend(b?);
    }
    Ok(out)
}

/// Capacity to reserve for a file's rows: its footer's count, which a corrupt file can inflate,
/// so only up to a bound.
fn reserve(rows: u64) -> usize {
    usize::try_from(rows.min(1 << 20)).unwrap_or(0)
}

/// Root column indexes of `cols` in `schema`, or what is wrong with it.
fn check_schema(
    schema: &Schema,
    cols: &[(&str, ColType)],
) -> std::result::Result<Vec<usize>, String> {
    let mut roots = Vec::with_capacity(cols.len());
    for (name, want) in cols {
        let Ok(i) = schema.index_of(name) else {
            let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            return Err(format!(
                "missing column `{name}` ({want}); the file has {have:?}"
            ));
        };
        let got = schema.field(i).data_type();
        if !want.accepts(got) {
            return Err(format!("column `{name}` is {got}, expected {want}"));
        }
        roots.push(i);
    }
    Ok(roots)
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> std::result::Result<&'a ArrayRef, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("missing column `{name}`"))
}

fn first_null(a: &dyn Array) -> Option<usize> {
    (a.null_count() > 0).then(|| (0..a.len()).find(|&i| a.is_null(i)).unwrap_or(0))
}

fn int64_col<'a>(
    batch: &'a RecordBatch,
    name: &str,
    cur: &Cursor,
) -> std::result::Result<&'a [i64], String> {
    let a = column(batch, name)?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| format!("column `{name}` is not int64"))?;
    if let Some(i) = first_null(a) {
        return Err(format!(
            "column `{name}`: null at row {}",
            cur.row + i as u64
        ));
    }
    Ok(a.values())
}

/// A list column of a batch, checked for nulls at both levels.
/// Several int64 columns of a batch, in the order of `names`.
fn int64_cols<'a, const N: usize>(
    batch: &'a RecordBatch,
    names: &[&str; N],
    cur: &Cursor,
) -> std::result::Result<[&'a [i64]; N], String> {
    let mut out = [&[][..]; N];
    for (o, name) in out.iter_mut().zip(names) {
        *o = int64_col(batch, name, cur)?;
    }
    Ok(out)
}

struct ListCol<'a, T: ArrowPrimitiveType> {
    offsets: &'a [i32],
    values: &'a [T::Native],
}

impl<'a, T: ArrowPrimitiveType> ListCol<'a, T> {
    fn get(batch: &'a RecordBatch, name: &str, cur: &Cursor) -> std::result::Result<Self, String> {
        let list: &ListArray = column(batch, name)?
            .as_list_opt::<i32>()
            .ok_or_else(|| format!("column `{name}` is not a list"))?;
        if let Some(i) = first_null(list) {
            return Err(format!(
                "column `{name}`: null list at row {}",
                cur.row + i as u64
            ));
        }
        let values: &PrimitiveArray<T> = list
            .values()
            .as_primitive_opt::<T>()
            .ok_or_else(|| format!("column `{name}` has lists of another type"))?;
        let offsets = list.value_offsets();
        let (lo, hi) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
        if values.slice(lo, hi - lo).null_count() > 0 {
            let row = offsets
                .windows(2)
                .position(|w| (w[0] as usize..w[1] as usize).any(|j| values.is_null(j)))
                .unwrap_or(0);
            return Err(format!(
                "column `{name}`: null element in the list at row {}",
                cur.row + row as u64
            ));
        }
        Ok(ListCol {
            offsets,
            values: values.values(),
        })
    }

    fn row(&self, i: usize) -> &'a [T::Native] {
        &self.values[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

impl TaobaoRow for TaobaoSample {
    const WHAT: &'static str = "samples";
    const COLUMNS: &'static [(&'static str, ColType)] = &[
        (col::LABEL, ColType::ListInt8),
        (col::USER, ColType::Int64),
        (col::ITEM, ColType::Int64),
    ];

    fn decode(batch: &RecordBatch, cur: &mut Cursor) -> std::result::Result<Vec<Self>, String> {
        let label = ListCol::<Int8Type>::get(batch, col::LABEL, cur)?;
        let user = int64_col(batch, col::USER, cur)?;
        let item = int64_col(batch, col::ITEM, cur)?;
        (0..batch.num_rows())
            .map(|i| {
                let click = match label.row(i) {
                    [1, 0] => false,
                    [0, 1] => true,
                    other => {
                        return Err(format!(
                        "column `{}`, row {}: expected one-hot [non-click, click], got {other:?}",
                        col::LABEL,
                        cur.row + i as u64
                    ))
                    }
                };
                Ok(TaobaoSample {
                    user: user[i],
                    item: item[i],
                    click,
                })
            })
            .collect()
    }
}

impl TaobaoRow for TaobaoUser {
    const WHAT: &'static str = "user features";
    const COLUMNS: &'static [(&'static str, ColType)] = &[
        (col::USER, ColType::Int64),
        (col::PROFILE[0], ColType::Int64),
        (col::PROFILE[1], ColType::Int64),
        (col::PROFILE[2], ColType::Int64),
        (col::PROFILE[3], ColType::Int64),
        (col::PROFILE[4], ColType::Int64),
        (col::SEQ_ITEMS, ColType::ListInt64),
        (col::SEQ_CATEGORIES, ColType::ListInt64),
    ];

    fn decode(batch: &RecordBatch, cur: &mut Cursor) -> std::result::Result<Vec<Self>, String> {
        let user = int64_col(batch, col::USER, cur)?;
        let profile = int64_cols(batch, &col::PROFILE, cur)?;
        let items = ListCol::<Int64Type>::get(batch, col::SEQ_ITEMS, cur)?;
        let cats = ListCol::<Int64Type>::get(batch, col::SEQ_CATEGORIES, cur)?;
        (0..batch.num_rows())
            .map(|i| {
                let (it, ct) = (items.row(i), cats.row(i));
                if it.len() != ct.len() {
                    return Err(format!(
                        "row {}: column `{}` has {} values but `{}` has {}; they must be aligned",
                        cur.row + i as u64,
                        col::SEQ_CATEGORIES,
                        ct.len(),
                        col::SEQ_ITEMS,
                        it.len()
                    ));
                }
                Ok(TaobaoUser {
                    user: user[i],
                    profile: profile.map(|c| c[i]),
                    items: it.to_vec(),
                    categories: ct.to_vec(),
                })
            })
            .collect()
    }
}

impl TaobaoRow for TaobaoItem {
    const WHAT: &'static str = "item features";
    const COLUMNS: &'static [(&'static str, ColType)] = &[
        (col::ITEM, ColType::Int64),
        (col::ITEM_CATEGORY, ColType::Int64),
        (col::ATTRIBUTES[0], ColType::Int64),
        (col::ATTRIBUTES[1], ColType::Int64),
    ];

    fn decode(batch: &RecordBatch, cur: &mut Cursor) -> std::result::Result<Vec<Self>, String> {
        let item = int64_col(batch, col::ITEM, cur)?;
        let category = int64_col(batch, col::ITEM_CATEGORY, cur)?;
        let attributes = int64_cols(batch, &col::ATTRIBUTES, cur)?;
        Ok((0..batch.num_rows())
            .map(|i| TaobaoItem {
                item: item[i],
                category: category[i],
                attributes: attributes.map(|c| c[i]),
            })
            .collect())
    }
}

impl TaobaoRow for TaobaoShardRow {
    const WHAT: &'static str = "joined shard";
    const COLUMNS: &'static [(&'static str, ColType)] = &[
        (col::LABEL, ColType::ListInt8),
        (col::USER, ColType::Int64),
        (col::ITEM, ColType::Int64),
        (col::PROFILE[0], ColType::Int64),
        (col::PROFILE[1], ColType::Int64),
        (col::PROFILE[2], ColType::Int64),
        (col::PROFILE[3], ColType::Int64),
        (col::PROFILE[4], ColType::Int64),
        (col::SEQ_ITEMS, ColType::ListInt64),
        (col::SEQ_CATEGORIES, ColType::ListInt64),
        (col::ITEM_CATEGORY, ColType::Int64),
        (col::ATTRIBUTES[0], ColType::Int64),
        (col::ATTRIBUTES[1], ColType::Int64),
    ];

    /// Each part reads its own columns by name from the one batch.
    fn decode(batch: &RecordBatch, cur: &mut Cursor) -> std::result::Result<Vec<Self>, String> {
        let samples = TaobaoSample::decode(batch, cur)?;
        let users = TaobaoUser::decode(batch, cur)?;
        let items = TaobaoItem::decode(batch, cur)?;
        Ok(samples
            .into_iter()
            .zip(users)
            .zip(items)
            .map(|((sample, user), item)| TaobaoShardRow { sample, user, item })
            .collect())
    }
}

impl TaobaoRow for TaobaoEmbedding {
    const WHAT: &'static str = "embeddings";
    const COLUMNS: &'static [(&'static str, ColType)] = &[
        (col::ITEM, ColType::Int64),
        (col::EMBEDDING, ColType::ListInt8),
    ];

    fn decode(batch: &RecordBatch, cur: &mut Cursor) -> std::result::Result<Vec<Self>, String> {
        let item = int64_col(batch, col::ITEM, cur)?;
        let emb = ListCol::<Int8Type>::get(batch, col::EMBEDDING, cur)?;
        (0..batch.num_rows())
            .map(|i| {
                let e = emb.row(i);
                check_embedding_len(cur, e.len()).map_err(|d| {
                    format!(
                        "column `{}`, row {}: {d}",
                        col::EMBEDDING,
                        cur.row + i as u64
                    )
                })?;
                Ok(TaobaoEmbedding {
                    item: item[i],
                    embedding: e.to_vec(),
                })
            })
            .collect()
    }
}

/// The length of the embeddings of an embedding table, from its first row.
pub fn embedding_dim(path: &Path) -> Result<usize> {
    match read_batches::<TaobaoEmbedding>(path, 1)?.next() {
        Some(rows) => Ok(rows?.first().map_or(0, |r| r.embedding.len())),
        None => Err(LabError::input(path, "the embedding table has no rows")),
    }
}

/// The published embeddings are all 128 long; other lengths are accepted for synthetic data as
/// long as one file is consistent, because a catalog has one dimension.
fn check_embedding_len(cur: &mut Cursor, len: usize) -> std::result::Result<(), String> {
    if len == 0 {
        return Err("empty embedding".into());
    }
    match cur.list_len {
        None => {
            cur.list_len = Some(len);
            Ok(())
        }
        Some(want) if want == len => Ok(()),
        Some(want) => Err(format!(
            "embedding has {len} values, earlier rows have {want}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Import

/// Where the joined shards of each split live, relative to the dataset folder.
pub const SHARD_DIRS: [&str; 2] = ["train", "test"];

/// The files of one import, in either layout of the format (or, for tests, any mix): the six
/// tables of the authors' `data_demo/`, or the joined per-sample shards of the public release
/// (`train/*-shard-*.parquet`, `test/*-shard-*.parquet`, each row holding the sample, its user's
/// features and its target's features) next to the embedding table. Any may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaobaoFiles {
    pub train_samples: Option<PathBuf>,
    pub test_samples: Option<PathBuf>,
    pub train_users: Option<PathBuf>,
    pub test_users: Option<PathBuf>,
    pub items: Option<PathBuf>,
    pub embeddings: Option<PathBuf>,
    /// Joined shards of the train table, in name order.
    pub train_shards: Vec<PathBuf>,
    /// Joined shards of the test table, in name order.
    pub test_shards: Vec<PathBuf>,
}

impl TaobaoFiles {
    /// The files with the standard names ([`mod@file`]) and the shards that exist in `dir`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        let get = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        TaobaoFiles {
            train_samples: get(file::TRAIN_SAMPLES),
            test_samples: get(file::TEST_SAMPLES),
            train_users: get(file::TRAIN_USERS),
            test_users: get(file::TEST_USERS),
            items: get(file::ITEMS),
            embeddings: get(file::EMBEDDINGS),
            train_shards: shards_in(&dir.join(SHARD_DIRS[0])),
            test_shards: shards_in(&dir.join(SHARD_DIRS[1])),
        }
    }

    /// [`TaobaoFiles::in_dir`], refusing a folder that holds neither layout (or both) or no
    /// embedding table, with an error that says what was looked for.
    pub fn discover(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let f = Self::in_dir(dir);
        let tables = f.train_samples.is_some() || f.test_samples.is_some();
        let shards = !f.train_shards.is_empty() || !f.test_shards.is_empty();
        match (tables, shards) {
            (false, false) => Err(LabError::Layout {
                dir: dir.to_path_buf(),
                detail: format!(
                    "neither the six tables ({} or {}) nor joined shards \
                     ({}/*-shard-*.parquet or {}/*-shard-*.parquet)",
                    file::TRAIN_SAMPLES,
                    file::TEST_SAMPLES,
                    SHARD_DIRS[0],
                    SHARD_DIRS[1]
                ),
            }),
            (true, true) => Err(LabError::Layout {
                dir: dir.to_path_buf(),
                detail: "both the six tables and joined shards; keep one layout".into(),
            }),
            _ if f.embeddings.is_none() => Err(LabError::Layout {
                dir: dir.to_path_buf(),
                detail: format!("no embedding table {}", file::EMBEDDINGS),
            }),
            _ => Ok(f),
        }
    }
}

/// The `*-shard-*.parquet` files of `dir`, in name order; none if `dir` does not exist.
fn shards_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            p.is_file() && name.contains("-shard-") && name.ends_with(".parquet")
        })
        .collect();
    v.sort();
    v
}

/// How an import lays out time and talks to the engine.
#[derive(Debug, Clone)]
pub struct TaobaoImportOptions {
    /// Timestamp (ms) of every user's newest behaviour. Sequences carry only order, so they are
    /// laid out backwards from one common "now": the real tables are one snapshot of every
    /// user's history taken when the samples were logged.
    pub history_end_ms: i64,
    /// Milliseconds between consecutive behaviours, and from the newest behaviour to the
    /// samples, which all share the time `history_end_ms + step_ms`.
    pub step_ms: i64,
    /// Events per engine append (whole users only, so a user's sequence is stored atomically).
    pub events_per_append: usize,
    /// Items per catalog upsert.
    pub items_per_upsert: usize,
    /// Rows per parquet record batch.
    pub batch_rows: usize,
    pub durability: Durability,
}

impl Default for TaobaoImportOptions {
    fn default() -> Self {
        TaobaoImportOptions {
            history_end_ms: 1_700_000_000_000,
            step_ms: 1000,
            events_per_append: 10_000,
            items_per_upsert: 10_000,
            batch_rows: DEFAULT_BATCH_ROWS,
            durability: Durability::Buffered,
        }
    }
}

impl TaobaoImportOptions {
    fn validate(&self) -> Result<()> {
        if self.step_ms <= 0 {
            return Err(LabError::invalid("step_ms must be positive"));
        }
        if self.events_per_append == 0 || self.items_per_upsert == 0 || self.batch_rows == 0 {
            return Err(LabError::invalid(
                "events_per_append, items_per_upsert and batch_rows must be positive",
            ));
        }
        Ok(())
    }

    /// The one time of every sample: a step after every history.
    pub fn sample_ts(&self) -> Result<i64> {
        self.history_end_ms
            .checked_add(self.step_ms)
            .ok_or_else(|| LabError::invalid("history_end_ms + step_ms overflows"))
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    /// Users whose sequence was appended.
    pub users: u64,
    /// User rows skipped because the user already had events (an earlier row, or the database).
    pub duplicate_users: u64,
    pub events: u64,
    /// Sequence entries with item id 0, the authors' padding, not stored.
    pub padding_skipped: u64,
    /// Catalog items this import created (from embeddings, item features or sequences).
    pub items: u64,
    pub item_rows: u64,
    pub embeddings: u64,
    /// Rows of joined shards read.
    pub shard_rows: u64,
    /// How each shard row's history met its user's timeline.
    pub shard_histories: ShardHistories,
    pub train_samples: u64,
    pub valid_samples: u64,
    pub test_samples: u64,
    /// Samples whose user has no events; they stay in their split and see an empty history.
    pub samples_without_sequence: u64,
    /// Items with a nonzero `213` or `214`, users with a nonzero `130_*`.
    pub items_with_attributes: u64,
    pub users_with_profile: u64,
    /// `categories[c]` is the Taobao category id of engine category `c`; 0 maps to 0 (unknown),
    /// the rest are numbered from 1 in order of first appearance (item features, then train and
    /// test sequences).
    pub categories: Vec<i64>,
}

/// How the histories of joined shard rows were laid onto their users' timelines (see
/// [`import`], "Shard rows"). A user's first row is counted in [`ImportReport::users`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShardHistories {
    /// The same as the newest part of the timeline (every row of the published data's users).
    pub same: u64,
    /// Overlapping the timeline's end and going further: the new behaviours were appended.
    pub extended: u64,
    /// Found inside the timeline, before its end (a row older than one read before it).
    pub earlier: u64,
    /// Sharing nothing with the timeline's end nor found in it: appended after it, as if the
    /// behaviours in between were not in the data.
    pub gaps: u64,
}

/// The result of [`import`].
#[derive(Debug, Clone, Default)]
pub struct TaobaoImport {
    pub splits: Splits,
    /// Item attributes (`213`, `214`) and user profiles (`130_*`), ids bit-cast to `u64`.
    pub side: SideTables,
    pub report: ImportReport,
}

/// Load Taobao-MM tables into `db` and turn the samples into impressions.
///
/// Order of work: embeddings, item features, train then test user features, train then test
/// shards (rows in file order), then samples. Items are read-modify-written through the catalog, so an item's
/// embedding, category and any SemID already in the database survive whichever table mentions
/// it later. An item's category is its `206` when the item features (or a shard row with the
/// item as target) have it, else the category of its first appearance in a sequence.
///
/// Time (six tables): user `u`'s `n` behaviours get `history_end_ms - (n-1-k) * step_ms`,
/// `k = 0..n`, so every history ends at `history_end_ms` and the order of the file is kept.
/// Every sample, train or test, is at the one time `history_end_ms + step_ms`: the tables are one snapshot of
/// histories taken when the samples were logged, and a per-row time would make the gap between
/// a sample and its history encode the sample's row in the file, a feature that separates the
/// splits and means nothing. `as_of = ts` sees the user's whole sequence.
///
/// Splits: the test table is the test split; train-table users whose id hashes into
/// validation by [`user_split`] (the rule of the synthetic data's split by user) are the
/// validation split, so validation users, like test users, are never seen in training.
///
/// Six tables: a user who already has events when its row comes (a repeated row, a user in both
/// the train and the test table, or one imported before) is skipped and counted in
/// `report.duplicate_users`. Train users go first, so a user in both tables keeps its train
/// sequence: taking the test-time sequence would show train samples behaviours from their
/// future. In the published data the two tables hold different users.
///
/// # Shard rows
///
/// Every shard row carries its own history, and a user's rows may differ: the published data
/// repeats one history per user, `siren export taobao --shards` writes each row's as-of history.
/// The importer keeps one timeline per user and lays each row's history onto it (`step_ms`
/// apart), assuming a user's rows come oldest first, as the exporter writes them:
/// - the user's first row with behaviours lays them out to end at `history_end_ms`;
/// - a history whose start matches the timeline's end (the longest such overlap) is the same
///   history, or a later one whose new behaviours are appended;
/// - a history found whole inside the timeline is an older row's;
/// - anything else is a gap (more behaviours between two rows than a row holds): appended.
///
/// Each sample is at the time right after its row's history, so that `as_of` = its time reads
/// exactly that history (up to the cap the file was written with), and every sample's gap to
/// its newest behaviour is one step, whichever row it came from. A row with no history comes at
/// its user's first behaviour (or before every behaviour if the user has none yet).
/// `report.shard_histories` counts the cases. Repeated behaviours make the overlap ambiguous;
/// the longest one is taken.
///
/// Re-running an interrupted import is safe: a user's rows then find their histories already
/// laid.
///
/// The database must have `embedding_dim` equal to the embeddings' length (128 for the
/// published data) if an embedding file is given.
pub fn import(db: &Db, files: &TaobaoFiles, opts: &TaobaoImportOptions) -> Result<TaobaoImport> {
    opts.validate()?;
    let mut im = Importer {
        opts,
        sample_ts: opts.sample_ts()?,
        report: ImportReport::default(),
        cats: Categories::new(),
        items: ItemSink::new(db, opts),
        events: EventSink::new(db, opts),
        out: TaobaoImport::default(),
    };
    if let Some(path) = &files.embeddings {
        im.embeddings(path, db.options().embedding_dim as usize)?;
    }
    if let Some(path) = &files.items {
        for row in read_all::<TaobaoItem>(path, opts)? {
            im.item(&row?, path)?;
        }
    }
    for path in [&files.train_users, &files.test_users]
        .into_iter()
        .flatten()
    {
        for row in read_all::<TaobaoUser>(path, opts)? {
            im.user(&row?, path)?;
        }
    }
    for (paths, test) in [(&files.train_shards, false), (&files.test_shards, true)] {
        for path in paths {
            for row in read_all::<TaobaoShardRow>(path, opts)? {
                im.shard_row(&row?, path, test)?;
            }
        }
    }
    for (path, test) in [(&files.train_samples, false), (&files.test_samples, true)] {
        if let Some(path) = path {
            for s in read_all::<TaobaoSample>(path, opts)? {
                let ts = im.sample_ts;
                im.sample(s?, test, ts);
            }
        }
    }
    im.finish(db)
}

/// Every row of a file, batch by batch.
fn read_all<T: TaobaoRow>(
    path: &Path,
    opts: &TaobaoImportOptions,
) -> Result<impl Iterator<Item = Result<T>>> {
    Ok(
        read_batches::<T>(path, opts.batch_rows)?.flat_map(|b| match b {
            Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        }),
    )
}

/// The state of one import.
struct Importer<'a> {
    opts: &'a TaobaoImportOptions,
    sample_ts: i64,
    report: ImportReport,
    cats: Categories,
    items: ItemSink<'a>,
    events: EventSink<'a>,
    out: TaobaoImport,
}

impl Importer<'_> {
    fn embeddings(&mut self, path: &Path, dim: usize) -> Result<()> {
        for row in read_all::<TaobaoEmbedding>(path, self.opts)? {
            let row = row?;
            if row.embedding.len() != dim {
                return Err(LabError::input(
                    path,
                    format!(
                        "embeddings have {} values, the database's embedding_dim is {dim}",
                        row.embedding.len()
                    ),
                ));
            }
            let e: Vec<f32> = row.embedding.iter().map(|&v| f32::from(v)).collect();
            self.report.items += u64::from(self.items.update(row.item as u64, |it| {
                it.embedding = Some(e);
                true
            })?);
            self.report.embeddings += 1;
        }
        Ok(())
    }

    fn item(&mut self, row: &TaobaoItem, path: &Path) -> Result<()> {
        let c = self.cats.dense(row.category, path)?;
        self.report.items += u64::from(self.items.update(row.item as u64, |it| {
            let changed = it.category != c;
            it.category = c;
            changed
        })?);
        self.report.item_rows += 1;
        if row.attributes.iter().any(|&a| a != 0) {
            let ids = row.attributes.map(|a| a as u64);
            let attrs = &mut self.out.side.item_attributes;
            self.report.items_with_attributes +=
                u64::from(attrs.insert(row.item as u64, ids).is_none());
        }
        Ok(())
    }

    /// A user row of the six tables: the user's one history, unless the user already has one.
    fn user(&mut self, row: &TaobaoUser, path: &Path) -> Result<()> {
        // Categories are numbered even for skipped rows, so that re-running an import numbers
        // them the same way.
        let history = self.history_of(row, path)?;
        let user = row.user as u64;
        if self.events.has_user(user)? {
            self.report.duplicate_users += 1;
            return Ok(());
        }
        self.first_history(user, row, &history)
    }

    /// A user's first history: its profile, and its events laid out to end at `history_end_ms`
    /// (so that `sample_ts` is the time right after it).
    fn first_history(&mut self, user: u64, row: &TaobaoUser, history: &[(u64, u32)]) -> Result<()> {
        if row.profile.iter().any(|&p| p != 0) {
            self.out
                .side
                .user_profiles
                .insert(user, row.profile.map(|p| p as u64));
            self.report.users_with_profile += 1;
        }
        if history.is_empty() {
            return Ok(());
        }
        let oldest = (history.len() as i64 - 1)
            .checked_mul(self.opts.step_ms)
            .and_then(|span| self.opts.history_end_ms.checked_sub(span))
            .ok_or_else(|| {
                LabError::invalid("history_end_ms - sequence length * step_ms overflows")
            })?;
        self.report.users += 1;
        self.append(user, oldest, history)?;
        Ok(())
    }

    /// The row's behaviours without the padding (counted), each with its engine category.
    fn history_of(&mut self, row: &TaobaoUser, path: &Path) -> Result<Vec<(u64, u32)>> {
        let mut out = Vec::with_capacity(row.items.len());
        for (&item, &c) in row.items.iter().zip(&row.categories) {
            let c = self.cats.dense(c, path)?;
            if item == 0 {
                self.report.padding_skipped += 1;
            } else {
                out.push((item as u64, c));
            }
        }
        Ok(out)
    }

    /// Append `history` to `user`'s timeline, one step apart from `first_ts`; an item takes the
    /// category of its first appearance if it has none. Returns the time a step after the last.
    fn append(&mut self, user: u64, first_ts: i64, history: &[(u64, u32)]) -> Result<i64> {
        let mut evs = Vec::with_capacity(history.len());
        for (k, &(id, c)) in history.iter().enumerate() {
            self.report.items += u64::from(self.items.update(id, |it| {
                let fill = it.category == 0 && c != 0;
                if fill {
                    it.category = c;
                }
                fill
            })?);
            let ts = (k as i64)
                .checked_mul(self.opts.step_ms)
                .and_then(|d| first_ts.checked_add(d))
                .ok_or_else(|| LabError::invalid("event times overflow i64"))?;
            evs.push(Event {
                user,
                ts,
                item: id,
                action: 0,
                domain: 0,
            });
        }
        self.report.events += evs.len() as u64;
        let next = evs
            .last()
            .map_or(Ok(first_ts), |e| after(e.ts, self.opts.step_ms))?;
        self.events.push(user, evs)?;
        Ok(next)
    }

    /// A joined shard row: its target, its history laid onto its user's timeline, its sample at
    /// the time right after that history.
    fn shard_row(&mut self, row: &TaobaoShardRow, path: &Path, test: bool) -> Result<()> {
        self.item(&row.item, path)?;
        let history = self.history_of(&row.user, path)?;
        let user = row.user.user as u64;
        let stored = self.events.newest(user, Some(history.len().max(1)))?;
        let ts = match stored.last() {
            None => {
                self.first_history(user, &row.user, &history)?;
                if history.is_empty() {
                    BEFORE_EVERY_EVENT
                } else {
                    self.sample_ts
                }
            }
            // Nothing before this sample: it comes at the user's first event.
            Some(_) if history.is_empty() => self.events.newest(user, None)?[0].ts,
            Some(_) => self.place(user, &stored, &history)?,
        };
        self.sample(row.sample, test, ts);
        self.report.shard_rows += 1;
        Ok(())
    }

    /// Lay a nonempty history onto the user's timeline, whose newest `history.len()` events are
    /// `stored` (see [`import`], "Shard rows"); return the time right after the history.
    fn place(&mut self, user: u64, stored: &[Event], history: &[(u64, u32)]) -> Result<i64> {
        let step = self.opts.step_ms;
        let newest = stored[stored.len() - 1].ts;
        let ids: Vec<u64> = history.iter().map(|&(i, _)| i).collect();
        let items: Vec<u64> = stored.iter().map(|e| e.item).collect();
        let new = match suffix_prefix_overlap(&items, &ids) {
            k if k == ids.len() => {
                self.report.shard_histories.same += 1;
                return after(newest, step);
            }
            0 => match self.earlier(user, &ids)? {
                Some(ts) => return Ok(ts),
                None => history,
            },
            k => {
                self.report.shard_histories.extended += 1;
                &history[k..]
            }
        };
        self.append(user, after(newest, step)?, new)
    }

    /// The time right after the newest place where `ids` is a window of the user's whole
    /// timeline (a row older than one already laid), or `None` (a gap: counted, and the caller
    /// appends the history after the timeline).
    fn earlier(&mut self, user: u64, ids: &[u64]) -> Result<Option<i64>> {
        let all = self.events.newest(user, None)?;
        let items: Vec<u64> = all.iter().map(|e| e.item).collect();
        let Some(end) = newest_window(&items, ids) else {
            self.report.shard_histories.gaps += 1;
            return Ok(None);
        };
        self.report.shard_histories.earlier += 1;
        let ts = after(all[end].ts, self.opts.step_ms)?;
        // The next event is excluded by `as_of` if the sample is at its time or before.
        Ok(Some(all.get(end + 1).map_or(ts, |next| ts.min(next.ts))))
    }

    fn sample(&mut self, s: TaobaoSample, test: bool, ts: i64) {
        let user = s.user as u64;
        let split = &mut self.out.splits;
        let to = match (test, user_split(user)) {
            (true, _) => &mut split.test,
            (false, UserSplit::Valid) => &mut split.valid,
            (false, _) => &mut split.train,
        };
        to.push(Impression {
            user,
            item: s.item as u64,
            ts,
            label: if s.click { 1.0 } else { 0.0 },
            domain: 0,
        });
    }

    fn finish(mut self, db: &Db) -> Result<TaobaoImport> {
        self.events.flush()?;
        self.items.flush()?;
        db.flush()?;
        let snap = db.snapshot();
        let s = &self.out.splits;
        for imp in s.train.iter().chain(&s.valid).chain(&s.test) {
            if snap.user_len(imp.user, None)? == 0 {
                self.report.samples_without_sequence += 1;
            }
        }
        self.report.train_samples = s.train.len() as u64;
        self.report.valid_samples = s.valid.len() as u64;
        self.report.test_samples = s.test.len() as u64;
        self.report.categories = self.cats.raw;
        self.out.report = self.report;
        Ok(self.out)
    }
}

/// The time of a sample whose row has no history, of a user without events when the row is
/// read: before every event the import can give the user later.
const BEFORE_EVERY_EVENT: i64 = i64::MIN / 2;

/// One step after `ts`.
fn after(ts: i64, step: i64) -> Result<i64> {
    ts.checked_add(step)
        .ok_or_else(|| LabError::invalid("event times overflow i64"))
}

/// The longest `k` such that the last `k` of `stored` are the first `k` of `new` (0 if none).
fn suffix_prefix_overlap(stored: &[u64], new: &[u64]) -> usize {
    (1..=stored.len().min(new.len()))
        .rev()
        .find(|&k| stored[stored.len() - k..] == new[..k])
        .unwrap_or(0)
}

/// The index of the last element of the newest occurrence of `window` in `all`.
fn newest_window(all: &[u64], window: &[u64]) -> Option<usize> {
    if window.is_empty() || window.len() > all.len() {
        return None;
    }
    (0..=all.len() - window.len())
        .rev()
        .find(|&s| all[s..s + window.len()] == *window)
        .map(|s| s + window.len() - 1)
}

/// Taobao category ids to the engine's dense `u32` categories.
struct Categories {
    dense: HashMap<i64, u32>,
    raw: Vec<i64>,
}

impl Categories {
    fn new() -> Self {
        Categories {
            dense: HashMap::from([(0, 0)]),
            raw: vec![0],
        }
    }

    fn dense(&mut self, raw: i64, path: &Path) -> Result<u32> {
        match self.dense.entry(raw) {
            Entry::Occupied(e) => Ok(*e.get()),
            Entry::Vacant(e) => {
                let c = u32::try_from(self.raw.len())
                    .map_err(|_| LabError::input(path, "more than 2^32 categories"))?;
                e.insert(c);
                self.raw.push(raw);
                Ok(c)
            }
        }
    }
}

/// Buffered catalog writes with read-modify-write: an upsert replaces a whole item, so each
/// change starts from what the catalog (or the buffer) already holds. The catalog itself is the
/// record of which items exist, which keeps the importer's memory independent of the 243M-item
/// vocabulary.
struct ItemSink<'a> {
    db: &'a Db,
    snap: Snapshot,
    pending: HashMap<u64, Item>,
    limit: usize,
    durability: Durability,
}

impl<'a> ItemSink<'a> {
    fn new(db: &'a Db, opts: &TaobaoImportOptions) -> Self {
        ItemSink {
            db,
            snap: db.snapshot(),
            pending: HashMap::new(),
            limit: opts.items_per_upsert,
            durability: opts.durability,
        }
    }

    /// Apply `change` to item `id` (a new, empty item if the catalog lacks it); `change` says
    /// whether it changed anything. Returns whether the item is new.
    fn update(&mut self, id: u64, change: impl FnOnce(&mut Item) -> bool) -> Result<bool> {
        if let Some(it) = self.pending.get_mut(&id) {
            change(it);
            return Ok(false);
        }
        let (mut it, created) = match self.snap.item(id) {
            Some(it) => (it, false),
            None => (
                Item {
                    id,
                    category: 0,
                    semid: None,
                    embedding: None,
                },
                true,
            ),
        };
        if change(&mut it) || created {
            self.pending.insert(id, it);
            if self.pending.len() >= self.limit {
                self.flush()?;
            }
        }
        Ok(created)
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let items: Vec<Item> = self.pending.drain().map(|(_, it)| it).collect();
        self.db.upsert_items(&items, self.durability)?;
        self.snap = self.db.snapshot();
        Ok(())
    }
}

/// Buffered appends, kept per user so that a user's stored timeline (the database's events
/// followed by the pending ones) can be read back before it is flushed.
struct EventSink<'a> {
    db: &'a Db,
    snap: Snapshot,
    pending: HashMap<u64, Vec<Event>>,
    pending_events: usize,
    limit: usize,
    durability: Durability,
}

impl<'a> EventSink<'a> {
    fn new(db: &'a Db, opts: &TaobaoImportOptions) -> Self {
        EventSink {
            db,
            snap: db.snapshot(),
            pending: HashMap::new(),
            pending_events: 0,
            limit: opts.events_per_append,
            durability: opts.durability,
        }
    }

    fn has_user(&self, user: u64) -> Result<bool> {
        Ok(self.pending.contains_key(&user) || self.snap.user_len(user, None)? > 0)
    }

    /// The newest `n` events of `user`'s timeline (all of them if `n` is `None`), oldest first.
    fn newest(&self, user: u64, n: Option<usize>) -> Result<Vec<Event>> {
        let pending = self.pending.get(&user).map_or(&[][..], Vec::as_slice);
        let from_pending = n.map_or(pending.len(), |n| n.min(pending.len()));
        let range = ReadRange {
            last: n.map(|n| n - from_pending),
            ..ReadRange::default()
        };
        let mut out = match range.last {
            Some(0) => Vec::new(),
            _ => self.snap.read(user, range)?,
        };
        out.extend_from_slice(&pending[pending.len() - from_pending..]);
        Ok(out)
    }

    /// Queue events of one user, newer than every event it has.
    fn push(&mut self, user: u64, evs: Vec<Event>) -> Result<()> {
        self.pending_events += evs.len();
        self.pending.entry(user).or_default().extend(evs);
        if self.pending_events >= self.limit {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let events: Vec<Event> = self.pending.drain().flat_map(|(_, evs)| evs).collect();
        self.db.append(
            &events,
            &AppendOptions {
                durability: self.durability,
                source: None,
            },
        )?;
        self.pending_events = 0;
        self.snap = self.db.snapshot();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::taobao_export::{
        embedding_columns, item_columns, sample_columns, user_columns, write_table, Columns,
        TableWriter,
    };
    use arrow_array::{Int64Array, Int8Array, StringArray};
    use arrow_schema::Field;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use siren_engine::Options;
    use std::collections::HashSet;
    use std::sync::Arc;

    /// The authors' demo files, if this checkout has them; the crate must not depend on them.
    pub(crate) fn demo_dir() -> Option<PathBuf> {
        let dir = match std::env::var_os("SIREN_SHARED_DATA") {
            Some(d) => PathBuf::from(d).join("taobao-mm-demo"),
            None => PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../shared/data/taobao-mm-demo"
            )),
        };
        let files = TaobaoFiles::in_dir(&dir);
        let all = [
            &files.train_samples,
            &files.test_samples,
            &files.train_users,
            &files.test_users,
            &files.items,
            &files.embeddings,
        ];
        if all.iter().all(|p| p.is_some()) {
            Some(dir)
        } else {
            eprintln!(
                "skipping: the Taobao-MM demo files are not in {} (set SIREN_SHARED_DATA)",
                dir.display()
            );
            None
        }
    }

    fn file_fields(path: &Path) -> Vec<Field> {
        let b = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        b.schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect()
    }

    /// The reader finds every column it reads in the file, with a type it accepts.
    fn reads_its_columns<T: TaobaoRow>(path: &Path) {
        let b = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
        check_schema(b.schema(), T::COLUMNS).unwrap();
    }

    fn lists_of<'a, T: ArrowPrimitiveType>(
        v: impl IntoIterator<Item = &'a [T::Native]>,
    ) -> ArrayRef {
        crate::taobao_export::lists::<T>(v)
    }

    /// Write a parquet file with these columns, in this order, all nullable.
    fn write_raw(path: &Path, cols: Columns) {
        let mut w = TableWriter::create(path);
        w.write_batch(cols).unwrap();
        w.close::<TaobaoSample>(sample_columns).unwrap();
    }

    fn write_samples(path: impl AsRef<Path>, rows: &[TaobaoSample]) {
        write_table(path.as_ref(), rows, sample_columns).unwrap();
    }

    fn write_users(path: impl AsRef<Path>, rows: &[TaobaoUser]) {
        write_table(path.as_ref(), rows, user_columns).unwrap();
    }

    fn write_items(path: impl AsRef<Path>, rows: &[TaobaoItem]) {
        write_table(path.as_ref(), rows, item_columns).unwrap();
    }

    fn write_embeddings(path: impl AsRef<Path>, rows: &[TaobaoEmbedding]) {
        write_table(path.as_ref(), rows, embedding_columns).unwrap();
    }

    fn open_db(dir: &Path, dim: u32) -> Db {
        Db::open(
            dir,
            Options {
                embedding_dim: dim,
                auto_compact: None,
                ..Options::default()
            },
        )
        .unwrap()
    }

    pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (n(a) * n(b))
    }

    #[test]
    fn taobao_demo_files_read_with_the_documented_shape() {
        let Some(dir) = demo_dir() else { return };
        let samples: Vec<TaobaoSample> = [file::TRAIN_SAMPLES, file::TEST_SAMPLES]
            .iter()
            .flat_map(|f| read::<TaobaoSample>(dir.join(f)).unwrap())
            .collect();
        assert_eq!(samples.len(), 20);
        assert_eq!(samples.iter().filter(|s| s.click).count(), 1);

        let users: Vec<TaobaoUser> = [file::TRAIN_USERS, file::TEST_USERS]
            .iter()
            .flat_map(|f| {
                let u = read::<TaobaoUser>(dir.join(f)).unwrap();
                assert_eq!(u.len(), 10);
                u
            })
            .collect();
        let mut lens: Vec<usize> = users.iter().map(|u| u.items.len()).collect();
        lens.sort_unstable();
        assert_eq!(lens[0], 351);
        assert!(lens[1..].iter().all(|&l| l == 1000));
        for u in &users {
            assert_eq!(u.items.len(), u.categories.len());
            let distinct = |v: &[i64]| v.iter().collect::<HashSet<_>>().len();
            assert!((185..=698).contains(&distinct(&u.items)), "user {}", u.user);
            assert!(
                (75..=298).contains(&distinct(&u.categories)),
                "user {}",
                u.user
            );
        }
        let zeros: usize = users
            .iter()
            .map(|u| u.items.iter().filter(|&&i| i == 0).count())
            .sum();
        eprintln!("demo sequences hold {zeros} zero (padding) item ids");

        let items = read::<TaobaoItem>(dir.join(file::ITEMS)).unwrap();
        assert_eq!(items.len(), 10);

        let embs = read::<TaobaoEmbedding>(dir.join(file::EMBEDDINGS)).unwrap();
        assert_eq!(embs.len(), 10);
        for e in &embs {
            assert_eq!(e.embedding.len(), EMBEDDING_DIM);
            assert!(e.embedding.iter().all(|&v| (-38..=38).contains(&v)));
            let norm = e
                .embedding
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt();
            assert!((100.0..140.0).contains(&norm), "norm {norm}");
        }

        // The published files hold every column our readers read, with the types they read.
        reads_its_columns::<TaobaoSample>(&dir.join(file::TRAIN_SAMPLES));
        reads_its_columns::<TaobaoUser>(&dir.join(file::TEST_USERS));
        reads_its_columns::<TaobaoItem>(&dir.join(file::ITEMS));
        reads_its_columns::<TaobaoEmbedding>(&dir.join(file::EMBEDDINGS));
    }

    /// What is read from `src` reads the same from its rewrite by the test writer, whose schema
    /// is the published one, column for column (names, types, child names).
    fn rewrite<T: TaobaoRow + PartialEq + fmt::Debug>(
        src: &Path,
        dst: &Path,
        write: impl Fn(&Path, &[T]),
    ) {
        let rows: Vec<T> = read(src).unwrap();
        write(dst, &rows);
        assert_eq!(read::<T>(dst).unwrap(), rows, "{}", src.display());
        assert_eq!(file_fields(dst), file_fields(src), "{}", src.display());
    }

    #[test]
    fn taobao_demo_files_survive_a_rewrite() {
        let Some(dir) = demo_dir() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (|f: &str| dir.join(f), |f: &str| tmp.path().join(f));
        for f in [file::TRAIN_SAMPLES, file::TEST_SAMPLES] {
            rewrite(&src(f), &dst(f), |p, r| write_samples(p, r));
        }
        for f in [file::TRAIN_USERS, file::TEST_USERS] {
            rewrite(&src(f), &dst(f), |p, r| write_users(p, r));
        }
        rewrite(&src(file::ITEMS), &dst(file::ITEMS), |p, r| {
            write_items(p, r)
        });
        let e = file::EMBEDDINGS;
        rewrite(&src(e), &dst(e), |p, r| write_embeddings(p, r));
    }

    /// A consistent little dataset: every sequence item has an embedding and one category.
    pub(crate) struct Synth {
        pub(crate) items: Vec<i64>,
        pub(crate) item_cat: HashMap<i64, i64>,
        pub(crate) embeddings: Vec<TaobaoEmbedding>,
        pub(crate) item_rows: Vec<TaobaoItem>,
        pub(crate) train_users: Vec<TaobaoUser>,
        pub(crate) test_users: Vec<TaobaoUser>,
        pub(crate) train_samples: Vec<TaobaoSample>,
        pub(crate) test_samples: Vec<TaobaoSample>,
    }

    fn nonzero(rng: &mut StdRng) -> i64 {
        loop {
            let v: i64 = rng.random();
            if v != 0 {
                return v;
            }
        }
    }

    pub(crate) fn synth(seed: u64) -> Synth {
        let mut rng = StdRng::seed_from_u64(seed);
        let cats: Vec<i64> = (0..12).map(|_| nonzero(&mut rng)).collect();
        let items: Vec<i64> = (0..200).map(|_| nonzero(&mut rng)).collect();
        let item_cat: HashMap<i64, i64> = items
            .iter()
            .map(|&i| (i, cats[rng.random_range(0..cats.len())]))
            .collect();
        let embeddings = items
            .iter()
            .map(|&item| TaobaoEmbedding {
                item,
                embedding: (0..EMBEDDING_DIM)
                    .map(|_| rng.random_range(-40..=40))
                    .collect(),
            })
            .collect();
        // Item features for the first 150 items only; the rest get their category from
        // sequences.
        let item_rows = items[..150]
            .iter()
            .enumerate()
            .map(|(k, &item)| TaobaoItem {
                item,
                category: item_cat[&item],
                // Every third item has no attributes.
                attributes: if k.is_multiple_of(3) {
                    [0, 0]
                } else {
                    [k as i64, -(k as i64) * 7]
                },
            })
            .collect();
        let user = |rng: &mut StdRng, len: usize| {
            let seq: Vec<i64> = (0..len)
                .map(|_| items[rng.random_range(0..items.len())])
                .collect();
            TaobaoUser {
                user: nonzero(rng),
                profile: if len.is_multiple_of(2) {
                    [0; 5]
                } else {
                    [len as i64, 0, 3, -4, i64::MIN]
                },
                categories: seq.iter().map(|i| item_cat[i]).collect(),
                items: seq,
            }
        };
        let mut train_users: Vec<TaobaoUser> = (0..14)
            .map(|k| user(&mut rng, if k == 3 { 1 } else { 20 + k * 20 }))
            .collect();
        let mut test_users: Vec<TaobaoUser> = (0..6).map(|k| user(&mut rng, 50 + k)).collect();
        // Two train users whose ids hash into validation.
        for u in &mut train_users[2..4] {
            while user_split(u.user as u64) != UserSplit::Valid {
                u.user = nonzero(&mut rng);
            }
        }
        // Padding in one sequence.
        train_users[1].items[4] = 0;
        train_users[1].categories[4] = 0;
        train_users[1].items.push(0);
        train_users[1].categories.push(0);
        // A user in both tables, with another sequence at test time.
        let mut again = user(&mut rng, 30);
        again.user = train_users[0].user;
        test_users.push(again);

        let sample = |rng: &mut StdRng, users: &[TaobaoUser]| TaobaoSample {
            user: users[rng.random_range(0..users.len())].user,
            item: items[rng.random_range(0..items.len())],
            click: rng.random_bool(0.2),
        };
        let mut train_samples: Vec<TaobaoSample> =
            (0..80).map(|_| sample(&mut rng, &train_users)).collect();
        let test_samples = (0..20)
            .map(|_| sample(&mut rng, &test_users[..6]))
            .collect();
        // Samples of users without features.
        for s in &mut train_samples[10..15] {
            s.user = nonzero(&mut rng);
        }
        Synth {
            items,
            item_cat,
            embeddings,
            item_rows,
            train_users,
            test_users,
            train_samples,
            test_samples,
        }
    }

    pub(crate) fn write_synth(s: &Synth, dir: &Path) -> TaobaoFiles {
        std::fs::create_dir_all(dir).unwrap();
        write_samples(dir.join(file::TRAIN_SAMPLES), &s.train_samples);
        write_samples(dir.join(file::TEST_SAMPLES), &s.test_samples);
        write_users(dir.join(file::TRAIN_USERS), &s.train_users);
        write_users(dir.join(file::TEST_USERS), &s.test_users);
        write_items(dir.join(file::ITEMS), &s.item_rows);
        write_embeddings(dir.join(file::EMBEDDINGS), &s.embeddings);
        TaobaoFiles::in_dir(dir)
    }

    #[test]
    fn taobao_written_files_read_back_equal() {
        let s = synth(1);
        let tmp = tempfile::tempdir().unwrap();
        let f = write_synth(&s, tmp.path());
        assert_eq!(
            read::<TaobaoSample>(f.train_samples.unwrap()).unwrap(),
            s.train_samples
        );
        assert_eq!(
            read::<TaobaoSample>(f.test_samples.unwrap()).unwrap(),
            s.test_samples
        );
        assert_eq!(
            read::<TaobaoUser>(f.train_users.unwrap()).unwrap(),
            s.train_users
        );
        assert_eq!(
            read::<TaobaoUser>(f.test_users.unwrap()).unwrap(),
            s.test_users
        );
        assert_eq!(read::<TaobaoItem>(f.items.unwrap()).unwrap(), s.item_rows);
        assert_eq!(
            read::<TaobaoEmbedding>(f.embeddings.unwrap()).unwrap(),
            s.embeddings
        );
    }

    #[test]
    fn taobao_streams_by_batch() {
        let s = synth(2);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("users.parquet");
        write_users(&path, &s.train_users);

        let batches = read_batches::<TaobaoUser>(&path, 4).unwrap();
        assert_eq!(batches.num_rows(), 14);
        let sizes: Vec<Vec<TaobaoUser>> = batches.map(|b| b.unwrap()).collect();
        assert_eq!(sizes.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 4, 2]);
        assert_eq!(sizes.concat(), s.train_users);
        assert!(matches!(
            read_batches::<TaobaoUser>(&path, 0),
            Err(LabError::InvalidArgument(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn taobao_round_trip_any_rows(
            samples in prop::collection::vec((any::<i64>(), any::<i64>(), any::<bool>()), 0..50),
            users in prop::collection::vec(
                (any::<i64>(), prop::collection::vec((any::<i64>(), any::<i64>()), 0..40)),
                0..20),
            embs in prop::collection::vec((any::<i64>(), prop::collection::vec(any::<i8>(), 7)), 0..20),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let samples: Vec<TaobaoSample> = samples
                .into_iter()
                .map(|(user, item, click)| TaobaoSample { user, item, click })
                .collect();
            let users: Vec<TaobaoUser> = users
                .into_iter()
                .map(|(user, seq)| TaobaoUser {
                    user,
                    profile: [user, 1, 2, 3, user.wrapping_neg()],
                    items: seq.iter().map(|p| p.0).collect(),
                    categories: seq.iter().map(|p| p.1).collect(),
                })
                .collect();
            let embs: Vec<TaobaoEmbedding> = embs
                .into_iter()
                .map(|(item, embedding)| TaobaoEmbedding { item, embedding })
                .collect();
            let (ps, pu, pe) = (tmp.path().join("s"), tmp.path().join("u"), tmp.path().join("e"));
            write_samples(&ps, &samples);
            write_users(&pu, &users);
            write_embeddings(&pe, &embs);
            prop_assert_eq!(read::<TaobaoSample>(&ps).unwrap(), samples);
            prop_assert_eq!(read::<TaobaoUser>(&pu).unwrap(), users);
            prop_assert_eq!(read::<TaobaoEmbedding>(&pe).unwrap(), embs);
        }
    }

    fn i64s(v: &[i64]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    fn i64s_nullable(v: &[Option<i64>]) -> ArrayRef {
        Arc::new(Int64Array::from(v.to_vec()))
    }

    fn lists8(v: &[&[i8]]) -> ArrayRef {
        lists_of::<Int8Type>(v.iter().copied())
    }

    fn lists64(v: &[&[i64]]) -> ArrayRef {
        lists_of::<Int64Type>(v.iter().copied())
    }

    /// The error must be `Input`, name the file and mention every `needles`.
    fn assert_input<T: fmt::Debug>(r: Result<T>, path: &Path, needles: &[&str]) {
        match r {
            Err(LabError::Input { path: p, detail }) => {
                assert_eq!(p, path);
                for n in needles {
                    assert!(detail.contains(n), "{detail:?} lacks {n:?}");
                }
            }
            other => panic!("expected an Input error, got {other:?}"),
        }
    }

    #[test]
    fn taobao_bad_files_give_input_errors_naming_the_column() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |name: &str| tmp.path().join(name);
        let label = lists8(&[&[1, 0], &[0, 1]]);

        write_raw(
            &p("type"),
            vec![
                ("label_0", label.clone()),
                ("129_1", Arc::new(StringArray::from(vec!["a", "b"]))),
                ("205", i64s(&[1, 2])),
            ],
        );
        assert_input(
            read::<TaobaoSample>(p("type")),
            &p("type"),
            &["`129_1`", "int64"],
        );

        write_raw(
            &p("missing"),
            vec![("label_0", label.clone()), ("129_1", i64s(&[1, 2]))],
        );
        assert_input(
            read::<TaobaoSample>(p("missing")),
            &p("missing"),
            &["missing column `205`"],
        );

        write_raw(
            &p("list"),
            vec![
                ("label_0", lists64(&[&[1, 0], &[0, 1]])),
                ("129_1", i64s(&[1, 2])),
                ("205", i64s(&[1, 2])),
            ],
        );
        assert_input(
            read::<TaobaoSample>(p("list")),
            &p("list"),
            &["`label_0`", "list<int8>"],
        );

        for (name, bad) in [
            ("two", &[1i8, 1][..]),
            ("none", &[0, 0]),
            ("three", &[0, 1, 0]),
        ] {
            write_raw(
                &p(name),
                vec![
                    ("label_0", lists8(&[&[1, 0], bad])),
                    ("129_1", i64s(&[1, 2])),
                    ("205", i64s(&[1, 2])),
                ],
            );
            assert_input(
                read::<TaobaoSample>(p(name)),
                &p(name),
                &["`label_0`", "row 1", "one-hot"],
            );
        }

        write_raw(
            &p("null"),
            vec![
                ("label_0", label.clone()),
                ("129_1", i64s_nullable(&[Some(1), None])),
                ("205", i64s(&[1, 2])),
            ],
        );
        assert_input(
            read::<TaobaoSample>(p("null")),
            &p("null"),
            &["`129_1`", "null", "row 1"],
        );

        let mut user_cols = vec![("129_1", i64s(&[7]))];
        for name in col::PROFILE {
            user_cols.push((name, i64s(&[0])));
        }
        user_cols.push(("150_2_180", lists64(&[&[1, 2, 3]])));
        user_cols.push(("151_2_180", lists64(&[&[1, 2]])));
        write_raw(&p("misaligned"), user_cols);
        assert_input(
            read::<TaobaoUser>(p("misaligned")),
            &p("misaligned"),
            &["`151_2_180`", "aligned"],
        );

        write_raw(
            &p("emb"),
            vec![
                ("205", i64s(&[1, 2])),
                ("205_c", lists8(&[&[1, 2, 3], &[1, 2]])),
            ],
        );
        assert_input(
            read::<TaobaoEmbedding>(p("emb")),
            &p("emb"),
            &["`205_c`", "row 1"],
        );
        write_raw(
            &p("emb8"),
            vec![
                ("205", i64s(&[1])),
                ("205_c", Arc::new(Int8Array::from(vec![1i8]))),
            ],
        );
        assert_input(
            read::<TaobaoEmbedding>(p("emb8")),
            &p("emb8"),
            &["`205_c`", "list<int8>"],
        );

        // Not parquet at all, empty, truncated, absent.
        std::fs::write(p("text"), "label_0,129_1,205\n1,2,3\n").unwrap();
        assert_input(read::<TaobaoSample>(p("text")), &p("text"), &["parquet"]);
        std::fs::write(p("empty"), "").unwrap();
        assert_input(read::<TaobaoItem>(p("empty")), &p("empty"), &[]);
        write_samples(p("whole"), &synth(3).train_samples);
        let bytes = std::fs::read(p("whole")).unwrap();
        std::fs::write(p("cut"), &bytes[..bytes.len() / 2]).unwrap();
        assert_input(read::<TaobaoSample>(p("cut")), &p("cut"), &[]);
        assert!(matches!(
            read::<TaobaoUser>(p("absent")),
            Err(LabError::Io { .. })
        ));
    }

    #[test]
    fn taobao_corrupt_files_give_errors_not_panics() {
        let s = synth(9);
        let tmp = tempfile::tempdir().unwrap();
        let files = write_synth(&s, tmp.path());
        // With this seed, parquet 60.1 panics on three of the files (footer, page and
        // bit-unpacking code); `guard` must turn those into errors too.
        let mut rng = StdRng::seed_from_u64(7);
        let p = tmp.path().join("corrupt");
        let srcs = [files.train_users, files.embeddings, files.train_samples];
        for src in srcs.iter().flatten() {
            let bytes = std::fs::read(src).unwrap();
            for k in 0..400 {
                let mut b = bytes.clone();
                for _ in 0..1 + k % 3 {
                    let i = rng.random_range(0..b.len());
                    b[i] ^= 1 << rng.random_range(0..8);
                }
                std::fs::write(&p, &b).unwrap();
                for r in [
                    read::<TaobaoUser>(&p).err(),
                    read::<TaobaoEmbedding>(&p).err(),
                    read::<TaobaoSample>(&p).err(),
                ]
                .into_iter()
                .flatten()
                {
                    assert!(matches!(r, LabError::Input { .. }), "{r:?}");
                }
            }
        }
    }

    /// Every event of `user`, oldest first.
    fn seq(db: &Db, user: i64) -> Vec<Event> {
        db.snapshot().read(user as u64, ReadRange::all()).unwrap()
    }

    #[test]
    fn taobao_import_loads_sequences_items_and_splits() {
        let s = synth(4);
        let tmp = tempfile::tempdir().unwrap();
        let files = write_synth(&s, &tmp.path().join("files"));
        let db = open_db(&tmp.path().join("db"), 128);
        let opts = TaobaoImportOptions {
            events_per_append: 500,
            items_per_upsert: 64,
            batch_rows: 5,
            ..TaobaoImportOptions::default()
        };
        let out = import(&db, &files, &opts).unwrap();
        let r = &out.report;

        let stored = |u: &TaobaoUser| u.items.iter().filter(|&&i| i != 0).count() as u64;
        let users: Vec<&TaobaoUser> = s.train_users.iter().chain(&s.test_users[..6]).collect();
        assert_eq!(r.users, 20);
        assert_eq!(r.duplicate_users, 1);
        assert_eq!(r.padding_skipped, 2);
        assert_eq!(r.events, users.iter().map(|u| stored(u)).sum::<u64>());
        assert_eq!((r.embeddings, r.item_rows, r.items), (200, 150, 200));
        let is_valid = |smp: &&TaobaoSample| user_split(smp.user as u64) == UserSplit::Valid;
        let (valid, train): (Vec<TaobaoSample>, Vec<TaobaoSample>) =
            s.train_samples.iter().partition(is_valid);
        assert!(!valid.is_empty() && !train.is_empty());
        assert_eq!(
            (r.train_samples, r.valid_samples, r.test_samples),
            (train.len() as u64, valid.len() as u64, 20)
        );
        assert_eq!(r.samples_without_sequence, 5);
        assert_eq!(r.categories[0], 0);
        assert_eq!(
            r.categories.len(),
            1 + s.item_cat.values().collect::<HashSet<_>>().len()
        );

        let check_sequences = |db: &Db| {
            for u in &users {
                let evs = seq(db, u.user);
                let want: Vec<u64> = u
                    .items
                    .iter()
                    .filter(|&&i| i != 0)
                    .map(|&i| i as u64)
                    .collect();
                assert_eq!(evs.iter().map(|e| e.item).collect::<Vec<_>>(), want);
                assert!(evs.windows(2).all(|w| w[0].ts < w[1].ts));
                assert_eq!(evs.last().unwrap().ts, opts.history_end_ms);
                assert!(evs.iter().all(|e| e.action == 0 && e.domain == 0));
            }
        };
        check_sequences(&db);
        // The user in both tables kept its train sequence (checked above through `users`).
        assert_eq!(
            seq(&db, s.train_users[0].user).len(),
            s.train_users[0].items.len()
        );

        let snap = db.snapshot();
        let emb: HashMap<i64, &[i8]> = s
            .embeddings
            .iter()
            .map(|e| (e.item, &e.embedding[..]))
            .collect();
        for &id in &s.items {
            let it = snap.item(id as u64).expect("item in the catalog");
            assert_eq!(
                r.categories[it.category as usize], s.item_cat[&id],
                "item {id}"
            );
            let want: Vec<f32> = emb[&id].iter().map(|&v| f32::from(v)).collect();
            assert!(cosine(it.embedding.as_ref().unwrap(), &want) > 0.999);
        }

        let sp = &out.splits;
        let check = |imps: &[Impression], samples: &[TaobaoSample]| {
            assert_eq!(imps.len(), samples.len());
            for (imp, smp) in imps.iter().zip(samples) {
                assert_eq!((imp.user, imp.item), (smp.user as u64, smp.item as u64));
                assert_eq!(imp.label, if smp.click { 1.0 } else { 0.0 });
                let all = snap.read(imp.user, ReadRange::all()).unwrap();
                if let Some(last) = all.last() {
                    assert!(imp.ts > last.ts);
                }
                assert_eq!(snap.read(imp.user, ReadRange::as_of(imp.ts)).unwrap(), all);
            }
        };
        check(&sp.train, &train);
        check(&sp.valid, &valid);
        check(&sp.test, &s.test_samples);
        // One time for every sample, a step after every history: no time encodes a file row.
        let every = sp.train.iter().chain(&sp.valid).chain(&sp.test);
        assert!(every
            .map(|i| i.ts)
            .all(|t| t == opts.history_end_ms + opts.step_ms));
        // Validation users are never training users.
        let train_users: HashSet<u64> = sp.train.iter().map(|i| i.user).collect();
        assert!(sp.valid.iter().all(|i| !train_users.contains(&i.user)));

        // Side tables: the attributes of the items that have any, the profiles of the users
        // whose sequence was kept.
        let attrs: HashMap<u64, [u64; 2]> = s
            .item_rows
            .iter()
            .filter(|r| r.attributes != [0, 0])
            .map(|r| (r.item as u64, r.attributes.map(|a| a as u64)))
            .collect();
        assert_eq!(out.side.item_attributes, attrs);
        let profiles: HashMap<u64, [u64; 5]> = users
            .iter()
            .filter(|u| u.profile != [0; 5])
            .map(|u| (u.user as u64, u.profile.map(|p| p as u64)))
            .collect();
        assert!(!profiles.is_empty());
        assert_eq!(out.side.user_profiles, profiles);

        // Compaction changes nothing visible; a second import adds nothing.
        db.compact().unwrap();
        check_sequences(&db);
        let again = import(&db, &files, &opts).unwrap();
        assert_eq!(
            (again.report.users, again.report.events, again.report.items),
            (0, 0, 0)
        );
        assert_eq!(again.report.duplicate_users, 21);
        assert_eq!(again.report.categories, r.categories);
        check_sequences(&db);
    }

    #[test]
    fn taobao_import_checks_the_embedding_dimension() {
        let s = synth(5);
        let tmp = tempfile::tempdir().unwrap();
        let files = write_synth(&s, &tmp.path().join("files"));
        let db = open_db(&tmp.path().join("db"), 64);
        let r = import(&db, &files, &TaobaoImportOptions::default());
        assert_input(r, files.embeddings.as_ref().unwrap(), &["embedding_dim"]);
        let bad = TaobaoImportOptions {
            step_ms: 0,
            ..TaobaoImportOptions::default()
        };
        assert!(matches!(
            import(&db, &TaobaoFiles::default(), &bad),
            Err(LabError::InvalidArgument(_))
        ));
    }

    #[test]
    fn taobao_import_of_the_demo_files() {
        let Some(dir) = demo_dir() else { return };
        let tmp = tempfile::tempdir().unwrap();
        let db = open_db(tmp.path(), 128);
        let out = import(
            &db,
            &TaobaoFiles::in_dir(&dir),
            &TaobaoImportOptions::default(),
        )
        .unwrap();
        let r = &out.report;
        assert_eq!(r.users, 20);
        assert_eq!(r.events + r.padding_skipped, 19 * 1000 + 351);
        assert_eq!((r.embeddings, r.item_rows), (10, 10));
        let train = read::<TaobaoSample>(dir.join(file::TRAIN_SAMPLES)).unwrap();
        let valid = train
            .iter()
            .filter(|s| user_split(s.user as u64) == UserSplit::Valid)
            .count() as u64;
        assert_eq!(
            (r.train_samples, r.valid_samples, r.test_samples),
            (10 - valid, valid, 10)
        );
        // The demo's profile and attribute columns are read.
        assert!(
            r.users_with_profile > 0 && r.items_with_attributes > 0,
            "{r:?}"
        );
        // The demo tables do not join (README): no sample's user has a sequence.
        assert_eq!(r.samples_without_sequence, 20);
        let users = read::<TaobaoUser>(dir.join(file::TRAIN_USERS)).unwrap();
        let u = &users[0];
        let items: Vec<u64> = seq(&db, u.user).iter().map(|e| e.item).collect();
        let want: Vec<u64> = u
            .items
            .iter()
            .filter(|&&i| i != 0)
            .map(|&i| i as u64)
            .collect();
        assert_eq!(items, want);
    }

    #[test]
    fn overlaps_and_windows_find_the_longest_and_the_newest() {
        assert_eq!(suffix_prefix_overlap(&[1, 2, 3], &[2, 3, 4]), 2);
        assert_eq!(suffix_prefix_overlap(&[1, 2, 3], &[1, 2, 3]), 3);
        assert_eq!(suffix_prefix_overlap(&[1, 1, 1], &[1, 1, 5]), 2);
        assert_eq!(suffix_prefix_overlap(&[1, 2], &[3]), 0);
        assert_eq!(suffix_prefix_overlap(&[], &[3]), 0);
        assert_eq!(newest_window(&[1, 2, 1, 2, 3], &[1, 2]), Some(3));
        assert_eq!(newest_window(&[1, 2, 3], &[2, 4]), None);
        assert_eq!(newest_window(&[1], &[1, 2]), None);
        assert_eq!(newest_window(&[1], &[]), None);
    }

    /// Shard rows of one user with different histories (later, older, repeated, after a gap,
    /// empty) become one timeline, and each sample's `as_of` reads exactly its row's history.
    #[test]
    fn shard_rows_with_their_own_histories_make_one_timeline() {
        use crate::taobao_export::shard_columns;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("files");
        std::fs::create_dir_all(dir.join("train")).unwrap();
        let row = |user: i64, target: i64, history: &[i64]| TaobaoShardRow {
            sample: TaobaoSample {
                user,
                item: target,
                click: target % 2 == 0,
            },
            user: TaobaoUser {
                user,
                profile: [0; 5],
                items: history.to_vec(),
                categories: vec![7; history.len()],
            },
            item: TaobaoItem {
                item: target,
                category: 3,
                attributes: [0; 2],
            },
        };
        let rows = [
            row(5, 100, &[]),           // before anything: a new user, empty history
            row(5, 101, &[1, 2]),       // the first behaviours
            row(5, 102, &[1, 2, 3, 4]), // extends
            row(5, 103, &[1, 2, 3, 4]), // the same again
            row(5, 104, &[2, 3]),       // an older row, inside the timeline
            row(5, 105, &[3, 4, 0, 5]), // extends, with padding
            row(5, 106, &[9, 8]),       // a gap
            row(5, 107, &[]),           // empty for a known user
            row(6, 108, &[4, 4, 4]),    // another user, repeats
            row(6, 109, &[4, 4, 4, 4]),
        ];
        write_table(
            dir.join("train/train-shard-00000.parquet"),
            &rows,
            shard_columns,
        )
        .unwrap();
        write_embeddings(
            dir.join(file::EMBEDDINGS),
            &[TaobaoEmbedding {
                item: 100,
                embedding: vec![1; 4],
            }],
        );
        let files = TaobaoFiles::discover(&dir).unwrap();
        let db = open_db(&tmp.path().join("db"), 4);
        let opts = TaobaoImportOptions {
            events_per_append: 3,
            ..TaobaoImportOptions::default()
        };
        let out = import(&db, &files, &opts).unwrap();
        let r = &out.report;
        assert_eq!(r.shard_rows, 10);
        assert_eq!(
            r.shard_histories,
            ShardHistories {
                same: 1,
                extended: 3,
                earlier: 1,
                gaps: 1,
            }
        );
        assert_eq!(r.padding_skipped, 1);
        let items = |v: Vec<Event>| v.iter().map(|e| e.item as i64).collect::<Vec<_>>();
        assert_eq!(items(seq(&db, 5)), [1, 2, 3, 4, 5, 9, 8]);
        assert_eq!(items(seq(&db, 6)), [4, 4, 4, 4]);
        // Every sample reads its own row's history, with the gap to its newest behaviour one
        // step.
        let snap = db.snapshot();
        let samples: Vec<&Impression> = out.splits.train.iter().chain(&out.splits.valid).collect();
        assert_eq!(samples.len(), rows.len());
        for s in samples {
            let row = rows
                .iter()
                .find(|r| r.sample.item == s.item as i64)
                .unwrap();
            let want: Vec<i64> = row.user.items.iter().copied().filter(|&i| i != 0).collect();
            let seen = snap.read(s.user, ReadRange::as_of(s.ts)).unwrap();
            let seen = items(seen);
            assert!(seen.ends_with(&want), "{s:?}: {seen:?} against {want:?}");
            if want.is_empty() {
                assert!(seen.is_empty(), "{s:?}: {seen:?}");
            } else {
                let newest = snap.read(
                    s.user,
                    ReadRange {
                        last: Some(1),
                        ..ReadRange::as_of(s.ts)
                    },
                );
                assert_eq!(s.ts - newest.unwrap()[0].ts, opts.step_ms);
            }
        }
        // Importing again lays nothing new.
        let again = import(&db, &files, &opts).unwrap();
        assert_eq!(again.report.events, 0);
        assert_eq!(items(seq(&db, 5)), [1, 2, 3, 4, 5, 9, 8]);
    }
}
