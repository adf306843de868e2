//! Hostile clients against a running server: thousands of requests generated from its own
//! OpenAPI document (valid, mutated and random), slow clients that dribble their request heads,
//! more connections than allowed, and huge headers. No answer may be a 5xx other than 503, the
//! server must keep answering, and its memory must stay bounded.
//!
//! `SIREN_HOSTILE_REQUESTS` sets the number of generated requests (default 3000).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{rss_kib, some_user_and_items, TestServer};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::{json, Map, Value};

/// Values for a JSON schema of the OpenAPI document: mostly valid, sometimes not.
struct Gen<'a> {
    doc: &'a Value,
    rng: StdRng,
    /// Known ids, so that some requests hit real users and items.
    ids: Vec<u64>,
}

impl Gen<'_> {
    fn resolve<'b>(&'b self, s: &'b Value) -> &'b Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap();
                &self.doc["components"]["schemas"][name]
            }
            None => s,
        }
    }

    fn junk(&mut self, depth: usize) -> Value {
        match self.rng.random_range(0..9) {
            0 => Value::Null,
            1 => json!(self.rng.random::<bool>()),
            2 => json!(self.rng.random::<i64>()),
            3 => json!(-self.rng.random_range(0.0..1e300f64)),
            4 => json!(1e39),
            5 => json!("x".repeat(self.rng.random_range(0..3000))),
            6 => json!(u64::MAX),
            7 if depth < 8 => Value::Array(
                (0..self.rng.random_range(0..4))
                    .map(|_| self.junk(depth + 1))
                    .collect(),
            ),
            _ if depth < 8 => {
                let mut m = Map::new();
                m.insert("zz".into(), self.junk(depth + 1));
                Value::Object(m)
            }
            _ => json!(0),
        }
    }

    fn value(&mut self, schema: &Value, depth: usize) -> Value {
        // One value in twenty anywhere is junk.
        if depth > 6 || self.rng.random_bool(0.05) {
            return self.junk(depth);
        }
        let s = self.resolve(schema).clone();
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            return e[self.rng.random_range(0..e.len())].clone();
        }
        if let Some(alts) = s.get("oneOf").or(s.get("anyOf")).and_then(Value::as_array) {
            let pick = alts[self.rng.random_range(0..alts.len())].clone();
            return self.value(&pick, depth + 1);
        }
        let ty = match &s["type"] {
            Value::String(t) => t.clone(),
            Value::Array(ts) => {
                let ts: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                ts[self.rng.random_range(0..ts.len())].to_string()
            }
            _ => "object".into(),
        };
        match ty.as_str() {
            "null" => Value::Null,
            "boolean" => json!(self.rng.random::<bool>()),
            "integer" => {
                let max = s["maximum"].as_u64().unwrap_or(u64::MAX);
                match self.rng.random_range(0..6) {
                    0 if !self.ids.is_empty() => {
                        json!(self.ids[self.rng.random_range(0..self.ids.len())])
                    }
                    1 => json!(0),
                    2 => json!(max),
                    3 => json!(self.rng.random_range(0..100u64)),
                    4 => json!(self.rng.random_range(0..=max)),
                    _ => json!(self.rng.random_range(0..1000u64) as i64 - 500),
                }
            }
            "number" => json!(self.rng.random_range(-10.0..10.0f64)),
            "string" => json!(["a", "b1", "snap-9", "", "../x", "ø"][self.rng.random_range(0..6)]),
            "array" => {
                let n = match self.rng.random_range(0..10) {
                    0 => 0,
                    1 => self.rng.random_range(60..200),
                    _ => self.rng.random_range(1..20),
                };
                let items = s["items"].clone();
                Value::Array((0..n).map(|_| self.value(&items, depth + 1)).collect())
            }
            _ => {
                let mut m = Map::new();
                let required: Vec<String> = s["required"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(props) = s["properties"].as_object() {
                    for (k, v) in props {
                        let keep = required.contains(k) || self.rng.random_bool(0.5);
                        // Now and then a required field goes missing.
                        if keep && !self.rng.random_bool(0.03) {
                            m.insert(k.clone(), self.value(v, depth + 1));
                        }
                    }
                }
                if self.rng.random_bool(0.03) {
                    m.insert("unexpected".into(), self.junk(depth + 1));
                }
                Value::Object(m)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_generated_requests_get_no_5xx_but_503() {
    let s = TestServer::start(|c| {
        c.limits.max_body_bytes = 1 << 20;
        c.limits.max_candidates = 200;
        c.limits.max_in_flight = 16;
    })
    .await;
    let c = Client::new();
    let doc = s.openapi().await;
    let (user, items) = some_user_and_items(&s);
    let mut ids = items.clone();
    ids.push(user);
    let mut gen = Gen {
        doc: &doc,
        rng: StdRng::seed_from_u64(7),
        ids,
    };
    // Every operation, with its method, path template, body schema and parameters.
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let body = op["requestBody"]["content"]["application/json"]["schema"].clone();
            let params: Vec<(String, String, Value)> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            (
                                p["name"].as_str().unwrap().to_string(),
                                p["in"].as_str().unwrap().to_string(),
                                p["schema"].clone(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            ops.push((method.to_uppercase(), path.clone(), body, params));
        }
    }
    assert!(ops.len() >= 14);
    let n: usize = std::env::var("SIREN_HOSTILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let rss_before = rss_kib();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut pending = Vec::new();
    for i in 0..n {
        let (method, path, body, params) = &ops[i % ops.len()];
        let mut url = path.clone();
        let mut query = Vec::new();
        for (name, place, schema) in params {
            let v = if gen.rng.random_bool(0.1) {
                json!(
                    ["abc", "-1", "1e9", "%00", "18446744073709551616"][gen.rng.random_range(0..5)]
                )
            } else {
                gen.value(schema, 0)
            };
            let text = match &v {
                Value::String(t) => t.clone(),
                other => other.to_string(),
            };
            if place == "path" {
                url = url.replace(&format!("{{{name}}}"), &text);
            } else if gen.rng.random_bool(0.6) {
                query.push(format!("{name}={text}"));
            }
        }
        if !query.is_empty() {
            url = format!("{url}?{}", query.join("&"));
        }
        let payload = match gen.rng.random_range(0..20) {
            0 => "{\"a\":".repeat(gen.rng.random_range(1..200)).into_bytes(),
            1 => (0..gen.rng.random_range(0..500))
                .map(|_| gen.rng.random::<u8>())
                .collect(),
            _ if body.is_null() => Vec::new(),
            _ => serde_json::to_vec(&gen.value(body, 0)).unwrap(),
        };
        let req = c
            .request(method.parse().unwrap(), s.url(&url))
            .header("content-type", "application/json")
            .body(payload);
        pending.push(tokio::spawn(req.send()));
        if pending.len() == 8 {
            for p in pending.drain(..) {
                let st = p.await.unwrap().unwrap().status();
                assert!(
                    !st.is_server_error() || st == StatusCode::SERVICE_UNAVAILABLE,
                    "{st} from a generated request"
                );
                *statuses.entry(st.as_u16()).or_default() += 1;
            }
        }
    }
    for p in pending {
        let st = p.await.unwrap().unwrap().status();
        assert!(
            !st.is_server_error() || st == StatusCode::SERVICE_UNAVAILABLE,
            "{st}"
        );
        *statuses.entry(st.as_u16()).or_default() += 1;
    }
    eprintln!("generated requests by status: {statuses:?}");
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > n / 20,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().any(|&k| (400..500).contains(&k)),
        "{statuses:?}"
    );
    // Still serving, still consistent.
    let r = c
        .post(s.url("/v1/score"))
        .json(&json!({"user": user, "candidates": items[..5]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(s.running.state.db.verify().is_ok());
    if let (Some(a), Some(b)) = (rss_before, rss_kib()) {
        eprintln!("resident memory: {a} KiB before, {b} KiB after");
        assert!(b < a + 512 * 1024, "memory grew from {a} to {b} KiB");
    }
    s.running.shutdown().await.unwrap();
}

/// Dribble a request head one byte at a time.
fn slow_client(addr: std::net::SocketAddr, gap: Duration) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let Ok(mut t) = TcpStream::connect(addr) else {
            return true;
        };
        let head = b"POST /v1/score HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for b in head {
            if t.write_all(&[*b]).is_err() {
                return true; // closed by the server
            }
            std::thread::sleep(gap);
        }
        // The server must have closed the connection by now.
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1024];
        matches!(t.read(&mut buf), Ok(0) | Err(_)) || t.write_all(b"\r\n\r\n").is_err()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_idle_floods_and_huge_headers_do_not_exhaust_the_server() {
    let s = TestServer::start(|c| {
        c.limits.header_read_timeout_ms = 400;
        c.limits.max_connections = 40;
    })
    .await;
    let addr = s.running.addr;
    let c = Client::new();
    // 20 slow clients: each would take 6 s to send its head; the server cuts them at 0.4 s.
    let slow: Vec<_> = (0..20)
        .map(|_| slow_client(addr, Duration::from_millis(50)))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = c.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(2));
    for h in slow {
        assert!(h.join().unwrap(), "a slow client kept its connection");
    }
    // More idle connections than allowed: the extra ones are closed at once, the others when
    // their head does not come; then the server serves again.
    let idle: Vec<TcpStream> = (0..60)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut closed = 0;
    for mut t in idle {
        t.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 16];
        if matches!(t.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, 60, "every idle connection is closed");
    let r = c.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A megabyte of header: refused (431) or the connection closed, never served.
    let big = "a".repeat(1 << 20);
    // The server may also just close the connection (an error here).
    if let Ok(r) = c.get(s.url("/healthz")).header("x-big", big).send().await {
        assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    // Ten thousand small headers.
    let mut h = reqwest::header::HeaderMap::new();
    for i in 0..10_000 {
        h.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
            "1".parse().unwrap(),
        );
    }
    if let Ok(r) = c.get(s.url("/healthz")).headers(h).send().await {
        assert!(r.status().is_client_error(), "{}", r.status());
    }
    let r = c.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    s.running.shutdown().await.unwrap();
}
