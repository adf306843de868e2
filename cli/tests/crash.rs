//! `kill -9` the `siren serve` process at random moments while clients append over HTTP (synced),
//! the server compacts in the background and on request, and the model is reloaded; restart it
//! and check that every acknowledged batch is there exactly once, in order, that no batch is
//! there in part, and that scoring still answers.
//!
//! The campaign fails loudly: any answer other than 200 (a 5xx above all) fails it, and so does a
//! server that died before its kill; the server's log is kept and shown then.
//!
//! Kills: `SIREN_CRASH_KILLS` (default 3).

#[path = "../../http/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const USERS: [u64; 3] = [900_001, 900_002, 900_003];
const PER_USER: u64 = 4;

/// Batch `b`: PER_USER events for each of two users, with item ids that name the batch.
fn batch(b: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for u in [USERS[(b % 3) as usize], USERS[((b + 1) % 3) as usize]] {
        for j in 0..PER_USER {
            out.push(json!({"user": u, "ts": 1_000_000 + b as i64 * 10, "item": b * 100 + j, "action": 1}));
        }
    }
    out
}

/// The one token of the campaign's server (admin: every scope).
const TOKEN: &str = "crash-campaign-admin-token";

/// A minimal HTTP/1.1 exchange (the server may die at any moment; no retries, no pooling).
fn http(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.get(9..12)?.parse().ok()?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// Start `siren serve`, its stderr into `log`; its address.
fn start(config: &std::path::Path, log: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_siren"))
        .args(["serve", "--config", config.to_str().unwrap()])
        .env("SIREN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = BufReader::new(out).lines();
    let addr = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!(
                "the server exited before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        };
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining its log so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[test]
fn kill_minus_nine_over_http_loses_no_acknowledged_batch() {
    let kills: usize = std::env::var("SIREN_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let b = common::built();
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&b.dataset.join("db"), &dir.path().join("db"));
    let config = dir.path().join("siren.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndb = {:?}\nmodel = {:?}\nmodel_dir = {:?}\n\
             [engine]\ncompact_pending_events = 60\ncompact_interval_ms = 20\n\
             [[tokens]]\ntoken = \"{TOKEN}\"\nscopes = [\"admin\"]\n",
            dir.path().join("db").display().to_string(),
            b.model.display().to_string(),
            b.model.parent().unwrap().display().to_string(),
        ),
    )
    .unwrap();
    // Reloads name the model under `model_dir`.
    let model = b.model.file_name().unwrap().to_string_lossy().into_owned();
    // Answers other than 200, with what was asked.
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let (mut reloads, mut compactions) = (0, 0);
    for round in 0..=kills {
        let log = dir.path().join(format!("serve-{round}.log"));
        let (mut child, addr) = start(&config, &log);
        check(&addr, &acked.lock().unwrap(), next.load(Ordering::SeqCst));
        if round == kills {
            child.kill().unwrap();
            let _ = child.wait();
            break;
        }
        // Two appenders, one admin client (reloads and compactions), until the kill.
        let dead = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for _ in 0..2 {
            let (addr, acked, next, dead, failures) = (
                addr.clone(),
                acked.clone(),
                next.clone(),
                dead.clone(),
                failures.clone(),
            );
            workers.push(std::thread::spawn(move || {
                while !dead.load(Ordering::SeqCst) {
                    let b = next.fetch_add(1, Ordering::SeqCst);
                    let body = json!({"events": batch(b), "durability": "sync"}).to_string();
                    match http(&addr, "POST", "/v1/events", &body) {
                        Some((200, _)) => acked.lock().unwrap().push(b),
                        answer => {
                            note_failure(&failures, "append", answer);
                            break;
                        }
                    }
                }
                (0, 0)
            }));
        }
        {
            let (addr, dead, model, failures) =
                (addr.clone(), dead.clone(), model.clone(), failures.clone());
            workers.push(std::thread::spawn(move || {
                let (mut r, mut c) = (0, 0);
                while !dead.load(Ordering::SeqCst) {
                    let reload = json!({ "model": model }).to_string();
                    match http(&addr, "POST", "/v1/admin/reload", &reload) {
                        Some((200, _)) => r += 1,
                        answer => {
                            note_failure(&failures, "reload", answer);
                            break;
                        }
                    }
                    match http(&addr, "POST", "/v1/admin/compact", "") {
                        Some((200, _)) => c += 1,
                        answer => {
                            note_failure(&failures, "compact", answer);
                            break;
                        }
                    }
                }
                (r, c)
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(100..900)));
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "round {round}: the server died before its kill ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        child.kill().unwrap();
        let _ = child.wait();
        dead.store(true, Ordering::SeqCst);
        for w in workers {
            let (r, c) = w.join().unwrap();
            reloads += r;
            compactions += c;
        }
        let failed = std::mem::take(&mut *failures.lock().unwrap());
        assert!(
            failed.is_empty(),
            "round {round}: {failed:?}; server log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let n = acked.lock().unwrap().len();
    eprintln!(
        "{kills} kills: {n} acknowledged batches, {reloads} model reloads, {compactions} requested compactions, all intact"
    );
    assert!(n > 0);
    assert!(kills == 0 || reloads > 0, "no model reload succeeded");
}

/// Record an answer other than 200 (a request cut by the kill has none, and is fine).
fn note_failure(failures: &Mutex<Vec<String>>, what: &str, answer: Option<(u16, String)>) {
    if let Some((status, body)) = answer {
        failures
            .lock()
            .unwrap()
            .push(format!("{what} answered {status}: {body}"));
    }
}

/// Every acknowledged batch is present once and whole; any other batch is absent or whole; the
/// sequence is in time order; scoring answers.
fn check(addr: &str, acked: &[u64], attempted: u64) {
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for u in USERS {
        let (st, body) = http(
            addr,
            "GET",
            &format!("/v1/users/{u}/events?limit=100000"),
            "",
        )
        .unwrap();
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let events = v["events"].as_array().unwrap();
        let ts: Vec<i64> = events.iter().map(|e| e["ts"].as_i64().unwrap()).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "user {u} out of order");
        for e in events {
            *seen.entry(e["item"].as_u64().unwrap() / 100).or_default() += 1;
        }
    }
    for (&b, &count) in &seen {
        assert!(b < attempted, "batch {b} was never sent");
        assert_eq!(count, 2 * PER_USER, "batch {b} is there in part or twice");
    }
    for b in acked {
        assert!(seen.contains_key(b), "acknowledged batch {b} is lost");
    }
    let score = json!({"user": USERS[0], "candidates": [1, 2, 3]}).to_string();
    let (st, body) = http(addr, "POST", "/v1/score", &score).unwrap();
    assert_eq!(st, 200, "{body}");
}
