//! The Parquet baseline: every event in one file, columns user, time, item, action, domain,
//! sorted by user then time, zstd, row-group statistics and the page index written (arrow-rs
//! defaults otherwise). One user is read the way a Parquet-backed feature service would:
//! metadata loaded once, row groups pruned by the user column's min/max, a row filter on the
//! user column so that only matching pages of the other columns are decoded.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, BooleanArray, Int64Array, RecordBatch, UInt16Array, UInt8Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::{
    ArrowPredicateFn, ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
    RowFilter,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::PageIndexPolicy;
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;
use siren_engine::Event;

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn schema() -> Arc<Schema> {
    // Ids fit i64 here; Parquet's INT64 with unsigned logical type would store the same bytes.
    Arc::new(Schema::new(vec![
        Field::new("user", DataType::Int64, false),
        Field::new("time", DataType::Int64, false),
        Field::new("item", DataType::Int64, false),
        Field::new("action", DataType::UInt8, false),
        Field::new("domain", DataType::UInt16, false),
    ]))
}

fn batch(events: &[Event]) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|e| e.user as i64),
            )),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.ts))),
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|e| e.item as i64),
            )),
            Arc::new(UInt8Array::from_iter_values(
                events.iter().map(|e| e.action),
            )),
            Arc::new(UInt16Array::from_iter_values(
                events.iter().map(|e| e.domain),
            )),
        ],
    )?)
}

/// Write `events` (sorted by user then time) with zstd at `level`; returns the file's size.
pub fn write(path: &Path, events: &[Event], level: i32) -> Result<u64> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(level)?))
        .build();
    let mut w = ArrowWriter::try_new(File::create(path)?, schema(), Some(props))?;
    for chunk in events.chunks(64 * 1024) {
        w.write(&batch(chunk)?)?;
    }
    w.close()?;
    Ok(std::fs::metadata(path)?.len())
}

/// An open Parquet file with its metadata (and page index) parsed once.
pub struct ParquetEvents {
    path: std::path::PathBuf,
    meta: ArrowReaderMetadata,
}

impl ParquetEvents {
    pub fn open(path: &Path) -> Result<Self> {
        let opts = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
        let meta = ArrowReaderMetadata::load(&File::open(path)?, opts)?;
        Ok(ParquetEvents {
            path: path.to_owned(),
            meta,
        })
    }

    /// Every event of `user`, in file order.
    pub fn read_user(&self, user: u64) -> Result<Vec<Event>> {
        let u = user as i64;
        let md = self.meta.metadata();
        let groups: Vec<usize> = (0..md.num_row_groups())
            .filter(|&g| match md.row_group(g).column(0).statistics() {
                Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(&lo), Some(&hi)) => lo <= u && u <= hi,
                    _ => true,
                },
                _ => true,
            })
            .collect();
        let mut out = Vec::new();
        if groups.is_empty() {
            return Ok(out);
        }
        let mask = ProjectionMask::roots(md.file_metadata().schema_descr(), [0]);
        let pred = ArrowPredicateFn::new(mask, move |b: RecordBatch| {
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("user column is Int64");
            Ok(BooleanArray::from_iter(
                col.values().iter().map(|&x| Some(x == u)),
            ))
        });
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(
            File::open(&self.path)?,
            self.meta.clone(),
        )
        .with_row_groups(groups)
        .with_row_filter(RowFilter::new(vec![Box::new(pred)]))
        .with_batch_size(64 * 1024)
        .build()?;
        for b in reader {
            let b = b?;
            let col = |i: usize| b.column(i).as_any();
            let time = col(1).downcast_ref::<Int64Array>().ok_or("time")?;
            let item = col(2).downcast_ref::<Int64Array>().ok_or("item")?;
            let action = col(3).downcast_ref::<UInt8Array>().ok_or("action")?;
            let domain = col(4).downcast_ref::<UInt16Array>().ok_or("domain")?;
            out.reserve(b.num_rows());
            for r in 0..b.num_rows() {
                out.push(Event {
                    user,
                    ts: time.value(r),
                    item: item.value(r) as u64,
                    action: action.value(r),
                    domain: domain.value(r),
                });
            }
            debug_assert!(time.null_count() == 0);
        }
        Ok(out)
    }
}
