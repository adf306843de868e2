//! The HTTP API over a real socket: end to end against the library path, bad input on every
//! endpoint, access control, load shedding, timeouts and graceful shutdown.

mod common;

use common::{items_for_a_slow_score, some_user_and_items, TestServer};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use siren_http::config::{Scope, Token};
use siren_serve::{Retrieval, ScoreOptions};

async fn post(c: &Client, url: String, body: Value) -> (StatusCode, Value) {
    let r = c.post(url).json(&body).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(c: &Client, url: String) -> (StatusCode, Value) {
    let r = c.get(url).send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// The response's `Connection` header.
fn connection(r: &reqwest::Response) -> Option<&str> {
    r.headers().get("connection").and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_over_a_socket_matches_the_library() {
    // No tokens: admin routes need the explicit flag (see `admin_refuses_without_a_token`).
    let s = TestServer::start(|c| c.allow_unauthenticated_admin = true).await;
    let c = Client::new();
    let (user, items) = some_user_and_items(&s);

    let (st, v) = get(&c, s.url("/healthz")).await;
    assert_eq!((st, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (st, v) = get(&c, s.url("/readyz")).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let version = v["model_version"].as_str().unwrap().to_string();
    assert!(version.starts_with("siren-hard-"));

    // The OpenAPI document lists every route.
    let (st, doc) = get(&c, s.url("/openapi.json")).await;
    assert_eq!(st, StatusCode::OK);
    for p in [
        "/v1/score",
        "/v1/retrieve",
        "/v1/events",
        "/v1/items",
        "/v1/items/{item}",
        "/v1/users/{user}",
        "/v1/users/{user}/events",
        "/v1/stats",
        "/v1/admin/reload",
        "/v1/admin/compact",
        "/v1/admin/checkpoint",
        "/v1/admin/snapshot",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            doc["paths"].get(p).is_some(),
            "{p} missing from the OpenAPI document"
        );
    }

    // Upsert an item without a SemID: the server's codebook assigns one.
    let emb: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
    let (st, v) = post(
        &c,
        s.url("/v1/items"),
        json!({"items": [{"id": 777_000_001u64, "category": 3, "embedding": emb}]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["upserted"].as_u64(), v["semids_assigned"].as_u64()),
        (Some(1), Some(1))
    );
    let (st, v) = get(&c, s.url("/v1/items/777000001")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["semid"].as_array().unwrap().len(), 3);
    assert_eq!(v["category"].as_u64(), Some(3));

    // Ingest a new user's events.
    let new_user = 555_000_555u64;
    let evs: Vec<Value> = (0..30)
        .map(|k| json!({"user": new_user, "ts": 1_000_000 + k * 1000, "item": items[k as usize % 10], "action": 1}))
        .collect();
    let (st, v) = post(
        &c,
        s.url("/v1/events"),
        json!({"events": evs, "durability": "buffered"}),
    )
    .await;
    assert_eq!(
        (st, v["applied"].as_u64()),
        (StatusCode::OK, Some(30)),
        "{v}"
    );
    // The same source sequence number twice: applied once.
    let one = json!({"events": [{"user": new_user, "ts": 2_000_000, "item": items[0]}],
                     "source": {"name": "kafka-0", "seq": 7}});
    let (_, v) = post(&c, s.url("/v1/events"), one.clone()).await;
    assert_eq!(v["applied"].as_u64(), Some(1));
    let (_, v) = post(&c, s.url("/v1/events"), one).await;
    assert_eq!(
        (v["duplicate"].as_bool(), v["last_applied"].as_u64()),
        (Some(true), Some(7))
    );
    let (st, v) = get(
        &c,
        s.url(&format!(
            "/v1/users/{new_user}/events?limit=5&as_of=1020000"
        )),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["visible_events"].as_u64(), Some(20));
    let ts: Vec<i64> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ts"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ts,
        vec![1_015_000, 1_016_000, 1_017_000, 1_018_000, 1_019_000]
    );

    // Score over HTTP and through the library: the same numbers.
    let mut cands = items[..25].to_vec();
    cands.push(777_000_001);
    cands.push(123_456_789_000); // not in the catalog
    let at = 4_102_444_800_000i64; // after every event
    for (gsu, g) in [("hard", Retrieval::Hard), ("soft", Retrieval::Soft)] {
        let (st, v) = post(
            &c,
            s.url("/v1/score"),
            json!({"user": user, "candidates": cands, "gsu": gsu, "as_of": at, "explain": true, "domain": 3}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        assert_eq!(v["model_version"].as_str(), Some(version.as_str()));
        assert_eq!(v["gsu"].as_str(), Some(gsu));
        let lib = s
            .running
            .state
            .ranker
            .score(
                &s.running.state.db.snapshot(),
                user,
                &cands,
                &ScoreOptions {
                    retrieval: g,
                    at: Some(at),
                    explain: true,
                    domain: 3,
                },
            )
            .unwrap();
        let got = v["scores"].as_array().unwrap();
        assert_eq!(got.len(), cands.len());
        for (h, l) in got.iter().zip(&lib.scores) {
            assert_eq!(h["item"].as_u64(), Some(l.item));
            assert_eq!(h["score"].as_f64().unwrap() as f32, l.score, "{gsu}");
            assert_eq!(h["in_catalog"].as_bool(), Some(l.in_catalog));
            assert_eq!(
                h["retrieved"].as_array().unwrap().len(),
                l.retrieved.as_ref().unwrap().len()
            );
        }
        assert_eq!(got.last().unwrap()["in_catalog"].as_bool(), Some(false));
        assert!(v["history_events"].as_u64().unwrap() > 0);
    }
    // No candidates: an empty answer. A user without history: scores all the same.
    let (st, v) = post(
        &c,
        s.url("/v1/score"),
        json!({"user": user, "candidates": []}),
    )
    .await;
    assert_eq!(
        (st, v["scores"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    let (st, v) = post(
        &c,
        s.url("/v1/score"),
        json!({"user": 1u64 << 60, "candidates": items[..3]}),
    )
    .await;
    assert_eq!(
        (st, v["history_events"].as_u64()),
        (StatusCode::OK, Some(0))
    );

    // Retrieval, hard and soft, by item.
    for mode in ["hard", "soft"] {
        let (st, v) = post(
            &c,
            s.url("/v1/retrieve"),
            json!({"user": user, "mode": mode, "k": 7, "item": items[1]}),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let hits = v["hits"].as_array().unwrap();
        assert!(!hits.is_empty() && hits.len() <= 7);
        let key = if mode == "hard" {
            "depth"
        } else {
            "similarity"
        };
        assert!(hits.iter().all(|h| h.get(key).is_some()));
    }

    // Delete the new user.
    let r = c
        .delete(s.url(&format!("/v1/users/{new_user}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["deleted"].as_bool(),
        Some(true)
    );
    let (_, v) = get(&c, s.url(&format!("/v1/users/{new_user}/events"))).await;
    assert_eq!(v["visible_events"].as_u64(), Some(0));

    // Admin: compact, checkpoint, reload.
    let more = json!({"events": [{"user": user, "ts": at - 1, "item": items[2]}]});
    assert_eq!(post(&c, s.url("/v1/events"), more).await.0, StatusCode::OK);
    let (st, v) = post(&c, s.url("/v1/admin/compact"), json!(null)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["users_written"].as_u64(), Some(1), "{v}");
    let (st, v) = post(&c, s.url("/v1/admin/checkpoint"), json!({"name": "b1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(std::path::Path::new(v["path"].as_str().unwrap())
        .join("rocksdb")
        .is_dir());
    for route in ["/v1/admin/checkpoint", "/v1/admin/snapshot"] {
        let (st, v) = post(&c, s.url(route), json!({"name": "../escape"})).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_argument")
        );
    }
    // The old name still answers, for one version, and says it is deprecated.
    let r = c
        .post(s.url("/v1/admin/snapshot"))
        .json(&json!({"name": "b2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["deprecation"], "true");
    assert!(r.headers()["link"]
        .to_str()
        .unwrap()
        .contains("</v1/admin/checkpoint>"));
    let v: Value = r.json().await.unwrap();
    assert!(std::path::Path::new(v["path"].as_str().unwrap())
        .join("rocksdb")
        .is_dir());
    let (st, v) = post(&c, s.url("/v1/admin/reload"), json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["previous"].as_str(), Some(version.as_str()));

    // Stats and metrics.
    let (st, v) = get(&c, s.url("/v1/stats")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(v["users"].as_u64().unwrap() > 0 && v["compactions"].as_u64().unwrap() >= 1);
    assert!(v["wal_damage"].is_null(), "{v}");
    let m = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for want in [
        "siren_http_requests_total{route=\"/v1/score\",method=\"POST\",status=\"200\"}",
        "siren_http_request_duration_seconds_bucket",
        "siren_events_ingested_total 32",
        "siren_compactions_total",
        "siren_users ",
        // Opening found no damage in RocksDB's write-ahead log; nor does /v1/stats.
        "siren_wal_damage 0",
        "siren_admitted_requests ",
        "siren_requests_timed_out_total 0",
    ] {
        assert!(m.contains(want), "{want} missing from metrics:\n{m}");
    }
    s.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_stable_code() {
    let s = TestServer::start(|c| {
        c.allow_unauthenticated_admin = true;
        c.limits.max_body_bytes = 64 * 1024;
        c.limits.max_candidates = 50;
        c.limits.max_k = 100;
    })
    .await;
    let c = Client::new();
    let (user, items) = some_user_and_items(&s);
    let raw = |path: &str, body: &str| {
        c.post(s.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    // Malformed JSON on every JSON endpoint.
    for path in [
        "/v1/score",
        "/v1/retrieve",
        "/v1/events",
        "/v1/items",
        "/v1/admin/reload",
        "/v1/admin/checkpoint",
        "/v1/admin/snapshot",
    ] {
        let r = raw(path, "{,}").await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(code(&v), "invalid_json", "{path}: {v}");
        // Not JSON at all, without the content type.
        let r = c.post(s.url(path)).body("user=1").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
        // Answered before its body is read, so the server says it closes the connection.
        assert_eq!(connection(&r), Some("close"), "{path}");
    }
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        // Wrong types, missing and unknown fields.
        (
            "/v1/score",
            json!({"user": "x", "candidates": []}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/score",
            json!({"user": -1, "candidates": []}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/score",
            json!({"candidates": []}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/score",
            json!({"user": 1, "candidates": [], "explian": true}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/score",
            json!({"user": 1, "candidates": [], "gsu": "fuzzy"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/score",
            json!({"user": user, "candidates": vec![items[0]; 51]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many",
        ),
        (
            "/v1/events",
            json!({"events": [{"user": 1, "ts": 1, "item": 1, "action": 300}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/events",
            json!({"events": [{"user": 1, "ts": 1.5, "item": 1}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/events",
            json!({"events": [], "durability": "unlogged"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/events",
            json!({"events": [], "source": {"name": "", "seq": 1}}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        // Embeddings of the wrong length or out of f32 range, bad SemIDs. JSON cannot spell NaN or
        // infinity, so the only way to send a non-finite f32 is a number that overflows it: the
        // parser rejects that as invalid JSON for the field, naming the field's path.
        (
            "/v1/items",
            json!({"items": [{"id": 4_242_424_242u64, "embedding": [1.0, 2.0]}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/items",
            json!({"items": [{"id": 4_242_424_242u64, "embedding": vec![1e39; 16]}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/items",
            json!({"items": [{"id": 4_242_424_242u64, "semid": [1, 2]}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/items",
            json!({"items": [{"id": 4_242_424_242u64, "semid": [1, 2, 9999]}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/items",
            json!({"items": [{"id": 4_242_424_242u64, "semid": []}]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        // Retrieval: bad k, no target, two targets, unknown item, mismatched target kind.
        (
            "/v1/retrieve",
            json!({"user": user, "k": 0, "item": items[0]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 101, "item": items[0]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5, "item": items[0], "semid": [1, 2, 3]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5, "item": 987_654_321_123u64}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5, "mode": "soft", "semid": [1, 2, 3]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5, "mode": "soft", "embedding": [0.5, "x"]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5, "mode": "soft", "embedding": vec![0.5; 3]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5, "mode": "soft", "embedding": vec![1e39; 16]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/retrieve",
            json!({"user": user, "k": 5, "semid": [1, 2, 3, 4]}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        // Admin bodies.
        (
            "/v1/admin/reload",
            json!({"model": "/nonexistent/model"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/admin/checkpoint",
            json!({"name": ""}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/admin/snapshot",
            json!({"name": ".hidden"}),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
    ];
    for (path, body, status, want) in cases {
        let (st, v) = post(&c, s.url(path), body.clone()).await;
        assert_eq!((st, code(&v)), (status, want), "{path} {body}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // An oversized body.
    let big = json!({"events": (0..5000).map(|k| json!({"user": 1, "ts": k, "item": 1})).collect::<Vec<_>>()});
    let r = c.post(s.url("/v1/events")).json(&big).send().await.unwrap();
    let closes = connection(&r) == Some("close");
    let (st, v) = (r.status(), r.json::<Value>().await.unwrap_or(Value::Null));
    assert_eq!(
        (st, code(&v), closes),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", true)
    );
    // History: bad path and query parameters, limits.
    for (q, status, want) in [
        (
            "/v1/users/abc/events",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/users/1/events?limit=-3",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/users/1/events?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        ),
        (
            "/v1/users/1/events?limit=100001",
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_many",
        ),
        (
            "/v1/users/1/events?bogus=1",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/items/18446744073709551616",
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("/v1/items/42424242424", StatusCode::NOT_FOUND, "not_found"),
        ("/v1/nothing-here", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let (st, v) = get(&c, s.url(q)).await;
        assert_eq!((st, code(&v)), (status, want), "{q}: {v}");
    }
    let r = c.get(s.url("/v1/score")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // Nothing above changed the store, and the server still works.
    let (st, _) = post(
        &c,
        s.url("/v1/score"),
        json!({"user": user, "candidates": items[..2]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(s.running.state.db.snapshot().item(4_242_424_242).is_none());
    assert!(s.running.state.db.verify().is_ok());
    s.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_and_scopes() {
    let token = |t: &str, scopes: Vec<Scope>| Token {
        token: t.into(),
        scopes,
        name: None,
    };
    let s = TestServer::start(|c| {
        c.tokens = vec![
            token("reader-0123456789", vec![Scope::Read]),
            token("writer-0123456789", vec![Scope::Write]),
            token("admin--0123456789", vec![Scope::Admin]),
        ];
    })
    .await;
    let c = Client::new();
    let (user, items) = some_user_and_items(&s);
    let score = json!({"user": user, "candidates": items[..2]});
    let append = json!({"events": [{"user": 9, "ts": 1, "item": items[0]}]});
    let call = |path: &str, body: &Value, tok: Option<&str>| {
        let mut r = c.post(s.url(path)).json(body);
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let compact = json!(null);
    let cases: [(&str, &Value, Option<&str>, StatusCode); 10] = [
        ("/v1/score", &score, None, StatusCode::UNAUTHORIZED),
        (
            "/v1/score",
            &score,
            Some("wrong-0123456789"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/v1/score",
            &score,
            Some("reader-0123456789"),
            StatusCode::OK,
        ),
        (
            "/v1/events",
            &append,
            Some("reader-0123456789"),
            StatusCode::FORBIDDEN,
        ),
        (
            "/v1/events",
            &append,
            Some("writer-0123456789"),
            StatusCode::OK,
        ),
        (
            "/v1/score",
            &score,
            Some("writer-0123456789"),
            StatusCode::FORBIDDEN,
        ),
        (
            "/v1/admin/compact",
            &compact,
            Some("writer-0123456789"),
            StatusCode::FORBIDDEN,
        ),
        (
            "/v1/score",
            &score,
            Some("admin--0123456789"),
            StatusCode::OK,
        ),
        (
            "/v1/events",
            &append,
            Some("admin--0123456789"),
            StatusCode::OK,
        ),
        (
            "/v1/admin/compact",
            &compact,
            Some("admin--0123456789"),
            StatusCode::OK,
        ),
    ];
    for (path, body, token, want) in cases {
        let r = call(path, body, token).await.unwrap();
        assert_eq!(r.status(), want, "{path} with {token:?}");
        // A refused caller is answered before its body is read: the connection closes.
        let closes = connection(&r) == Some("close");
        assert_eq!(closes, want != StatusCode::OK, "{path} with {token:?}");
    }
    let r = c.get(s.url("/v1/stats")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "unauthorized");
    // Health, readiness, metrics and the OpenAPI document need no token.
    for p in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert_eq!(
            c.get(s.url(p)).send().await.unwrap().status(),
            StatusCode::OK,
            "{p}"
        );
    }
    s.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_with_503_and_retry_after() {
    let s = TestServer::start(|c| c.limits.max_in_flight = 1).await;
    let c = Client::new();
    let (user, items) = some_user_and_items(&s);
    let body = json!({"user": user, "candidates": items, "gsu": "soft", "explain": true});
    let reqs: Vec<_> = (0..24)
        .map(|_| {
            let r = c.post(s.url("/v1/score")).json(&body).send();
            tokio::spawn(r)
        })
        .collect();
    let (mut ok, mut shed) = (0, 0);
    for r in reqs {
        let r = r.await.unwrap().unwrap();
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.headers()["retry-after"], "1");
                assert_eq!(connection(&r), Some("close"));
                let v: Value = r.json().await.unwrap();
                assert_eq!(code(&v), "overloaded");
                shed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    // Health checks are not behind the limit.
    assert_eq!(
        c.get(s.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let m = c
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(&format!("siren_requests_shed_total {shed}")),
        "{m}"
    );
    s.running.shutdown().await.unwrap();

    // A request over the time limit is answered 503 too.
    let s = TestServer::start(|c| c.limits.request_timeout_ms = 1).await;
    let items = items_for_a_slow_score(&s);
    let body = json!({"user": user, "candidates": items, "gsu": "soft", "explain": true});
    let (st, v) = post(&c, s.url("/v1/score"), body).await;
    assert_eq!((st, code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "timeout"));
    s.running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_and_keeps_writes() {
    let s = TestServer::start(|_| {}).await;
    let c = Client::new();
    let (user, items) = some_user_and_items(&s);
    let evs: Vec<Value> = (0..100)
        .map(|k| json!({"user": 31337, "ts": k, "item": items[k as usize % 7]}))
        .collect();
    let (st, _) = post(
        &c,
        s.url("/v1/events"),
        json!({"events": evs, "durability": "buffered"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    // Start a slow request and wait until the server is serving it (metrics count it), then
    // shut down: the request must still be answered.
    let body = json!({"user": user, "candidates": items, "gsu": "soft", "explain": true});
    let in_flight = loop {
        let req = tokio::spawn(c.post(s.url("/v1/score")).json(&body).send());
        let seen = loop {
            let m = c
                .get(s.url("/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if m.contains("siren_http_requests_in_flight 2") {
                break true;
            }
            if req.is_finished() {
                break false;
            }
        };
        if seen {
            break req;
        }
    };
    let db_dir = s.running.state.config.db.clone();
    s.running.shutdown().await.unwrap();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Reopen: the acknowledged events are there.
    let db = siren_engine::Db::open(
        &db_dir,
        siren_engine::Db::created_with(&db_dir)
            .unwrap()
            .apply(siren_engine::Options::default()),
    )
    .unwrap();
    assert_eq!(db.snapshot().user_len(31337, None).unwrap(), 100);
    drop(s.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_without_a_token_and_reload_stays_in_the_model_dir() {
    let c = Client::new();
    // No token configured and no explicit flag: every admin route refuses, reads still work.
    let s = TestServer::start(|_| {}).await;
    for (path, body) in [
        ("/v1/admin/compact", json!(null)),
        ("/v1/admin/checkpoint", json!({"name": "b"})),
        ("/v1/admin/snapshot", json!({"name": "b"})),
        ("/v1/admin/reload", json!({})),
    ] {
        let (st, v) = post(&c, s.url(path), body).await;
        assert_eq!(
            (st, code(&v)),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{path}"
        );
        assert!(
            v["error"]["message"].as_str().unwrap().contains("token"),
            "{v}"
        );
    }
    assert!(!s.dir.path().join("backups").join("b").exists());
    assert_eq!(get(&c, s.url("/v1/stats")).await.0, StatusCode::OK);
    s.running.shutdown().await.unwrap();

    // With an admin token: reload loads only names under `model_dir`, within the size bound.
    let admin = "admin--0123456789";
    let models = common::built().model.parent().unwrap().to_path_buf();
    let start = |max_model_bytes: u64| {
        let models = models.clone();
        TestServer::start(move |c| {
            c.tokens = vec![Token {
                token: admin.into(),
                scopes: vec![Scope::Admin],
                name: None,
            }];
            c.model_dir = Some(models);
            c.limits.max_model_bytes = max_model_bytes;
        })
    };
    let call = |s: &TestServer, path: &str, body: Value| {
        let r = c.post(s.url(path)).bearer_auth(admin).json(&body).send();
        async move {
            let r = r.await.unwrap();
            let st = r.status();
            (st, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let s = start(1 << 30).await;
    let (st, v) = call(&s, "/v1/admin/reload", json!({"model": "model"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    for (name, want, want_code) in [
        ("../model", StatusCode::BAD_REQUEST, "invalid_argument"),
        ("/etc", StatusCode::BAD_REQUEST, "invalid_argument"),
        (".hidden", StatusCode::BAD_REQUEST, "invalid_argument"),
        ("no-such-model", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let (st, v) = call(&s, "/v1/admin/reload", json!({"model": name})).await;
        assert_eq!((st, code(&v)), (want, want_code), "{name}: {v}");
    }
    // A checkpoint name is taken once.
    let (st, v) = call(&s, "/v1/admin/checkpoint", json!({"name": "c1"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = call(&s, "/v1/admin/checkpoint", json!({"name": "c1"})).await;
    assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
    s.running.shutdown().await.unwrap();

    // Files over `max_model_bytes` are refused unread; the loaded model stays.
    let s = start(1_000).await;
    let before = s.model_version();
    let (st, v) = call(&s, "/v1/admin/reload", json!({"model": "model"})).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_model")
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{v}"
    );
    assert!(before.is_some());
    assert_eq!(before, s.model_version());
    s.running.shutdown().await.unwrap();
}
