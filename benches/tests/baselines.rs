//! The comparison's baselines answer the same questions as Siren on the same data: every
//! user's history read back from Parquet and from RocksDB one row per event equals Siren's, and
//! the linear-scan GSU equals Siren's hard retrieval.

use siren_benches::parquet_events::{self, ParquetEvents};
use siren_benches::rocks_rows::RocksRows;
use siren_benches::timing::{dir_bytes, summarize};
use siren_benches::{fixture, NaiveCatalog};
use siren_engine::ReadRange;

#[test]
fn parquet_and_rocksdb_rows_return_what_siren_returns() {
    let f = fixture(3, 3_000, 5_000, 16);
    let snap = f.db.snapshot();
    let mut all = Vec::new();
    for &u in &f.users {
        all.extend(snap.read(u, ReadRange::all()).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let pq = dir.path().join("events.parquet");
    let bytes = parquet_events::write(&pq, &all, 3).unwrap();
    assert!(bytes > 0);
    let pq = ParquetEvents::open(&pq).unwrap();
    let mut rocks = RocksRows::open(&dir.path().join("rocks")).unwrap();
    for c in all.chunks(1_000) {
        rocks.append(c, false).unwrap();
    }
    rocks.settle().unwrap();
    assert!(dir_bytes(&dir.path().join("rocks")) > 0);
    for &u in &f.users {
        let want = snap.read(u, ReadRange::all()).unwrap();
        assert_eq!(want.len(), 3_000);
        assert_eq!(pq.read_user(u).unwrap(), want, "parquet, user {u}");
        assert_eq!(rocks.read_user(u).unwrap(), want, "rocksdb, user {u}");
    }
    // An unknown user is empty everywhere.
    assert!(pq.read_user(999).unwrap().is_empty());
    assert!(rocks.read_user(999).unwrap().is_empty());

    let naive = NaiveCatalog::new(&f.catalog);
    let history = snap.read(f.users[0], ReadRange::all()).unwrap();
    for item in f.catalog.items.iter().step_by(499).take(10) {
        let t = item.semid.unwrap();
        let got: Vec<(usize, u8)> = snap
            .retrieve_hard(f.users[0], &t, 50, None)
            .unwrap()
            .iter()
            .map(|h| (h.position as usize, h.depth))
            .collect();
        assert_eq!(got, naive.hard_scan(&history, &t, 50));
    }
}

#[test]
fn percentiles_are_order_statistics() {
    let s = summarize((1..=100).rev().map(f64::from).collect());
    assert_eq!((s.runs, s.min, s.p50, s.p99), (100, 1.0, 51.0, 100.0));
    assert!((s.mean - 50.5).abs() < 1e-9);
}
