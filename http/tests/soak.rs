//! Soak: mixed ingest and scoring from several connections for minutes, with background
//! compaction; per interval, requests, errors, score latency percentiles and resident memory.
//!
//! ```sh
//! SIREN_SOAK_SECS=300 cargo test --release -p siren-http --test soak -- --ignored --nocapture
//! ```

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{some_user_and_items, TestServer};
use serde_json::json;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |k| k / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long; run by hand (see the module documentation)"]
async fn soak_mixed_ingest_and_scoring() {
    let secs: u64 = std::env::var("SIREN_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let s = TestServer::start(|c| {
        c.engine.compact_pending_events = 20_000;
        c.engine.compact_interval_ms = 5_000;
        // Retention bounds the data (1,000 ingest users x 5,000 events), so memory must level
        // off once it is reached.
        c.engine.max_events_per_user = 5_000;
    })
    .await;
    let (user, items) = some_user_and_items(&s);
    let client = reqwest::Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (requests, errors, events) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        // Ingest: batches of 200 events over 1,000 users.
        let (c, url, halt, req, err, ev) = (
            client.clone(),
            s.url("/v1/events"),
            stop.clone(),
            requests.clone(),
            errors.clone(),
            events.clone(),
        );
        let pool = items.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !halt.load(Ordering::Relaxed) {
                let evs: Vec<_> = (0..200)
                    .map(|_| {
                        k += 1;
                        json!({"user": 10_000 + (k * 7 + w) % 1000, "ts": 1_700_000_000_000i64 + k as i64,
                               "item": pool[(k % pool.len() as u64) as usize], "action": 1})
                    })
                    .collect();
                let r = c
                    .post(&url)
                    .json(&json!({"events": evs, "durability": "buffered"}))
                    .send()
                    .await;
                req.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(r) if r.status().is_success() => {
                        ev.fetch_add(200, Ordering::Relaxed);
                    }
                    _ => {
                        err.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
        // Scoring: 100 candidates, hard and soft in turn.
        let (c, url, halt, req, err, lat) = (
            client.clone(),
            s.url("/v1/score"),
            stop.clone(),
            requests.clone(),
            errors.clone(),
            latencies.clone(),
        );
        let cands: Vec<u64> = items.iter().cycle().take(100).copied().collect();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !halt.load(Ordering::Relaxed) {
                n += 1;
                let gsu = if n.is_multiple_of(2) { "hard" } else { "soft" };
                let t = Instant::now();
                let r = c
                    .post(&url)
                    .json(&json!({"user": user, "candidates": cands, "gsu": gsu}))
                    .send()
                    .await;
                req.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(r) if r.status().is_success() => {
                        lat.lock().unwrap().push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    _ => {
                        err.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let interval = Duration::from_secs(10.min(secs.max(1)));
    let start = Instant::now();
    let mut rows = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(interval).await;
        let mut l = std::mem::take(&mut *latencies.lock().unwrap());
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            l.get(((l.len() as f64 - 1.0) * p) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        let row = (
            start.elapsed().as_secs(),
            requests.swap(0, Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            events.load(Ordering::Relaxed),
            pct(0.5),
            pct(0.99),
            rss_mib(),
        );
        eprintln!(
            "t={:>4}s requests {:>6} errors {} events {:>9} score p50 {:>7.2} ms p99 {:>7.2} ms rss {:>7.1} MiB",
            row.0, row.1, row.2, row.3, row.4, row.5, row.6
        );
        rows.push(row);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "requests failed during the soak"
    );
    let stats = s.running.state.db.stats();
    eprintln!(
        "done: {} events ingested, {} compactions, {} users",
        events.load(Ordering::Relaxed),
        stats.compactions,
        stats.users
    );
    if rows.len() >= 6 {
        // Once retention has levelled the data off, memory is flat: the last third of the run
        // grows by less than a tenth over its first row.
        let third = &rows[rows.len() * 2 / 3..];
        let (a, b) = (third[0].6, third.iter().map(|r| r.6).fold(0.0, f64::max));
        assert!(
            b < a * 1.1 + 32.0,
            "memory grew from {a} to {b} MiB in the last third"
        );
    }
    s.running.shutdown().await.unwrap();
}
