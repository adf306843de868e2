//! Deadlines and per-request memory over a real socket: a timed-out request is answered at once
//! with a typed 503 and its work ends and frees its permit; a write is either applied and
//! answered 200 or answered 503 and not applied; 64 maximal bodies at once stay within the
//! stated memory bound.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{items_for_a_slow_score, rss_kib, some_user_and_items, TestServer};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// The tests of this file one at a time: the memory-bound test measures the whole process's
/// resident memory, which the others' servers would add to.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn metric(c: &Client, s: &TestServer, name: &str) -> Option<u64> {
    let text = c
        .get(s.url("/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Held to the end on purpose: it keeps this file's tests apart.
#[allow(clippy::await_holding_lock)]
async fn a_read_past_its_deadline_is_answered_503_at_once_and_its_work_frees_its_permit() {
    let _serial = serial();
    let s = TestServer::start(|c| c.limits.request_timeout_ms = 1).await;
    let c = Client::new();
    let (user, _) = some_user_and_items(&s);
    let items = items_for_a_slow_score(&s);
    let body = json!({"user": user, "candidates": items, "gsu": "soft", "explain": true});
    for _ in 0..5 {
        let t = Instant::now();
        let r = c.post(s.url("/v1/score")).json(&body).send().await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no answer at the deadline"
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(code(&v), "timeout", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was applied"));
    }
    assert_eq!(
        metric(&c, &s, "siren_requests_timed_out_total").await,
        Some(5)
    );
    // The reads' work runs to its end holding its permit, then frees it: no permit leaks.
    let t = Instant::now();
    while metric(&c, &s, "siren_admitted_requests").await != Some(0) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed-out work still holds permits"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Held to the end on purpose: it keeps this file's tests apart.
#[allow(clippy::await_holding_lock)]
async fn a_write_past_its_deadline_is_applied_and_answered_200_or_answered_503_and_not_applied() {
    let _serial = serial();
    // A deadline about as long as a synced append: some writes start before it, some after.
    let s = TestServer::start(|c| c.limits.request_timeout_ms = 3).await;
    let c = Client::new();
    let (_, items) = some_user_and_items(&s);
    let mut outcomes = std::collections::BTreeMap::<u16, usize>::new();
    let per_request = 200;
    for round in 0..8u64 {
        // Four at once, each for its own new user.
        let sends: Vec<_> = (0..4u64)
            .map(|k| {
                let user = 7_000_000 + round * 4 + k;
                let events: Vec<Value> = (0..per_request)
                    .map(|i| json!({"user": user, "ts": i, "item": items[i as usize % 9]}))
                    .collect();
                let r = c
                    .post(s.url("/v1/events"))
                    .json(&json!({"events": events, "durability": "sync"}))
                    .send();
                (user, tokio::spawn(r))
            })
            .collect();
        for (user, r) in sends {
            let r = r.await.unwrap().unwrap();
            let status = r.status();
            let v: Value = r.json().await.unwrap();
            let stored = s.running.state.db.snapshot().user_len(user, None).unwrap();
            match status {
                StatusCode::OK => assert_eq!(stored, per_request as usize, "{v}"),
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert_eq!(code(&v), "timeout", "{v}");
                    assert_eq!(stored, 0, "answered 503 timeout, yet applied");
                }
                other => panic!("{other}: {v}"),
            }
            *outcomes.entry(status.as_u16()).or_default() += 1;
        }
    }
    eprintln!("writes by answer: {outcomes:?}");
    s.running.shutdown().await.unwrap();
}

/// A body of exactly `len` bytes: `prefix`, then `element,` repeated, then `suffix`, padded
/// with spaces (JSON whitespace).
fn body_of(len: usize, prefix: &str, element: &str, suffix: &str) -> &'static [u8] {
    let mut b = prefix.as_bytes().to_vec();
    let room = len - prefix.len() - suffix.len() - element.len();
    while b.len() + element.len() < room {
        b.extend_from_slice(element.as_bytes());
        b.push(b',');
    }
    b.extend_from_slice(element.as_bytes());
    b.extend_from_slice(suffix.as_bytes());
    b.resize(len, b' ');
    // Shared by all the requests that send it, so the client holds one copy.
    Box::leak(b.into_boxed_slice())
}

/// The bound this test states: each of the `max_in_flight` requests holds at most its body
/// (`max_body_bytes`) and the parsed form of at most the configured counts (here under 1 MiB),
/// plus a fixed allowance for the runtime, sockets and allocator slack.
const MAX_BODY: usize = 2 << 20;
const BOUND_KIB: u64 = 64 * (MAX_BODY as u64 / 1024 + 1024) + 128 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Held to the end on purpose: it keeps this file's tests apart.
#[allow(clippy::await_holding_lock)]
async fn sixty_four_maximal_bodies_at_once_stay_within_the_memory_bound() {
    let _serial = serial();
    let s = TestServer::start(|c| {
        c.limits.max_body_bytes = MAX_BODY;
        c.limits.max_in_flight = 64;
        c.limits.max_events_per_request = 10_000;
    })
    .await;
    let c = Client::new();
    let (user, items) = some_user_and_items(&s);
    // Candidate ids `0,0,0,...` (a million of them; axum::Json built them all, 8 MiB and more
    // per request, before the limit refused them) and events (over 60,000). (Bodies over the
    // size limit are refused unread: `bad_input_gets_a_4xx_with_a_stable_code`.)
    let candidates = body_of(
        MAX_BODY,
        &format!("{{\"user\": {user}, \"candidates\": ["),
        "0",
        "]}",
    );
    let event = format!("{{\"user\":1,\"ts\":1,\"item\":{}}}", items[0]);
    let events = body_of(MAX_BODY, "{\"events\": [", &event, "]}");
    let baseline = rss_kib();
    let peak = Arc::new(AtomicU64::new(baseline.unwrap_or(0)));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(r) = rss_kib() {
                    peak.fetch_max(r, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut statuses = std::collections::BTreeMap::<(u16, String), usize>::new();
    for _round in 0..3 {
        let sends: Vec<_> = (0..64)
            .map(|i| {
                let (path, body) = match i % 8 {
                    0..=2 => ("/v1/events", events),
                    _ => ("/v1/score", candidates),
                };
                tokio::spawn(
                    c.post(s.url(path))
                        .header("content-type", "application/json")
                        .body(body)
                        .send(),
                )
            })
            .collect();
        for h in sends {
            let r = h.await.unwrap().unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            *statuses.entry((status, code(&v).to_string())).or_default() += 1;
        }
    }
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    eprintln!("answers: {statuses:?}");
    // Every body was refused with its typed error, at the first element past its count.
    let want: std::collections::BTreeMap<(u16, String), usize> =
        [((422, "too_many".to_string()), 192)].into();
    assert_eq!(statuses, want);
    if let Some(base) = baseline {
        let grew = peak.load(Ordering::SeqCst).saturating_sub(base);
        eprintln!("resident memory grew by {grew} KiB at the peak (bound {BOUND_KIB} KiB)");
        assert!(
            grew < BOUND_KIB,
            "memory grew by {grew} KiB, over the bound of {BOUND_KIB} KiB"
        );
    }
    // Still serving.
    let r = c
        .post(s.url("/v1/score"))
        .json(&json!({"user": user, "candidates": items[..3]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.running.shutdown().await.unwrap();
}
