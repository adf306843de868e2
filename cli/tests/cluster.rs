//! Cluster mode end to end, through the public commands and real processes: `siren demo` makes a
//! dataset and a model; `siren cluster up` starts 3 JetStream servers, 3 `siren serve` nodes and
//! a router; items and events go in through HTTP (each batch with an Idempotency-Key, retried on
//! another member when a request fails); during the writes a node and then the router are
//! killed with SIGKILL, and the node's partitions are re-placed on the survivors; at the end
//! every user's history, hard retrieval and scores, read through either surviving node, equal a
//! single-node Siren server fed the same requests. (JetStream servers killed during publishing:
//! `siren-cluster`'s tests.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use siren_engine::Db;
use siren_http::config::Config;

mod cluster_up;
mod small_demo;
use cluster_up::{dataset, merge_read_after, nats_available, print_log_tails, siren, token, Up};
use small_demo::SMALL_DEMO;

const BATCH: usize = 300;

fn kill_9(pid: u32) {
    // SAFETY: kill(2) on a node process started by `siren cluster up` for this test.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
}

struct Writer {
    http: reqwest::Client,
    read_after: BTreeMap<String, u64>,
    /// Requests that failed and were retried (same key) on another node.
    retried: usize,
}

impl Writer {
    /// POSTs `body` with `key` to the first of `nodes` that answers 200 (the same key on
    /// every try), and returns the answer.
    async fn post(&mut self, nodes: &[String], path: &str, key: &str, body: &Value) -> Value {
        let start = Instant::now();
        for attempt in 0.. {
            let url = format!("{}{path}", nodes[attempt % nodes.len()]);
            let sent = self
                .http
                .post(url)
                .header("idempotency-key", key)
                .json(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().await.unwrap();
                    merge_read_after(&mut self.read_after, v["read_after"].as_str().unwrap());
                    return v;
                }
                other => {
                    assert!(
                        start.elapsed() < Duration::from_secs(60),
                        "{path}: {other:?}"
                    );
                    self.retried += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        unreachable!()
    }
}

/// A single-node Siren server over a fresh database of the demo's shape.
async fn reference(dir: &Path, demo: &Path) -> siren_http::server::Running {
    let data = demo.join("data");
    let shape = Db::created_with(data.join("db")).unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        db: dir.join("reference"),
        model: Some(demo.join("model")),
        codebook: Some(data.join("codebook.bin")),
        embedding_dim: shape.embedding_dim,
        semid_levels: shape.semid_levels,
        semid_codebook_size: shape.semid_codebook_size,
        ..Config::default()
    };
    let (db, ranker) = siren_http::state::open(&config).unwrap();
    siren_http::server::start(config, Arc::new(db), Arc::new(ranker))
        .await
        .unwrap()
}

async fn get_json(http: &reqwest::Client, url: String, read_after: &str) -> (u16, Value) {
    let r = http
        .get(url)
        .header("siren-read-after", read_after)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn post_json(http: &reqwest::Client, url: String, read_after: &str, body: &Value) -> Value {
    let r = http
        .post(url)
        .header("siren-read-after", read_after)
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits until node-3 is dead and every partition is served by both survivors.
async fn wait_replaced(http: &reqwest::Client, node: &str, logs: &Path) -> Duration {
    let start = Instant::now();
    loop {
        let (_, s) = get_json(http, format!("{node}/v1/cluster"), "").await;
        let live = s["live_nodes"].as_array().unwrap().len();
        let served_by_two = s["serving"]
            .as_object()
            .unwrap()
            .values()
            .all(|owners| owners.as_array().unwrap().len() == 2);
        if live == 2 && served_by_two {
            return start.elapsed();
        }
        if start.elapsed() > Duration::from_secs(120) {
            print_log_tails(logs);
            panic!("not re-placed: {s}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_http_lose_no_acknowledged_write_when_one_is_killed() {
    if !nats_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    let out = siren()
        .args(["demo", "--no-serve"])
        .args(SMALL_DEMO)
        .arg("--dir")
        .arg(&demo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (events, items) = dataset(&demo.join("data").join("db"));

    let mut up = Up::start(
        &tmp.path().join("cluster"),
        &demo,
        &[
            "--port",
            "0",
            "--partitions",
            "8",
            "--heartbeat-ms",
            "300",
            "--dead-after-ms",
            "3000",
        ],
    );
    let nodes = up.urls("nodes");
    let router = up.member("routers", 0).0;
    let reference = reference(tmp.path(), &demo).await;
    let single = format!("http://{}", reference.addr);
    let http = reqwest::Client::new();
    let mut w = Writer {
        http: http.clone(),
        read_after: BTreeMap::new(),
        retried: 0,
    };

    for (i, chunk) in items.chunks(500).enumerate() {
        let body = json!({ "items": chunk });
        w.post(&nodes, "/v1/items", &format!("items-{i}"), &body)
            .await;
        post_json(&http, format!("{single}/v1/items"), "", &body).await;
    }
    let batches: Vec<Value> = events
        .chunks(BATCH)
        .map(|c| json!({ "events": c }))
        .collect();
    let kill_node_at = batches.len() * 2 / 5;
    let kill_router_at = batches.len() * 3 / 5;
    let mut alive = vec![router, nodes[0].clone(), nodes[1].clone(), nodes[2].clone()];
    let (mut reads, mut failed_reads) = (0, 0);
    for (i, body) in batches.iter().enumerate() {
        let key = format!("events-{i}");
        // Node-3, then the router, is killed while a request is in flight to it: the writer
        // retries it with the same key on the others.
        let victim = match i {
            _ if i == kill_node_at => Some(("nodes", 2)),
            _ if i == kill_router_at => Some(("routers", 0)),
            _ => None,
        };
        let to: Vec<String> = match victim {
            Some((what, index)) => {
                let (url, pid) = up.member(what, index);
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(1));
                    kill_9(pid);
                });
                alive.retain(|a| *a != url);
                std::iter::once(url).chain(alive.iter().cloned()).collect()
            }
            None => alive[i % alive.len()..].to_vec(),
        };
        let first = w.post(&to, "/v1/events", &key, body).await;
        if i == 1 {
            // The same request again: the log stores nothing twice.
            let again = w.post(&alive, "/v1/events", &key, body).await;
            assert_eq!(
                (again["applied"].clone(), again["duplicate"].clone()),
                (json!(0), json!(true))
            );
            assert_eq!(again["read_after"], first["read_after"]);
        }
        post_json(&http, format!("{single}/v1/events"), "", body).await;
        // A read of some user through a node that may not serve it (forwarded).
        let user = body["events"][0]["user"].as_u64().unwrap();
        let (status, answer) = get_json(
            &http,
            format!("{}/v1/users/{user}/events", alive[i % alive.len()]),
            "",
        )
        .await;
        reads += 1;
        if status != 200 {
            println!("a read at batch {i} failed: {status} {answer}");
            failed_reads += 1;
        }
    }
    let replaced_after = wait_replaced(&http, &nodes[0], &tmp.path().join("cluster")).await;
    println!(
        "{} events in {} batches, {} retried requests; killed: node-3 at batch {kill_node_at}, \
         the router at {kill_router_at}; reads during the run: {failed_reads} failed of \
         {reads}; partitions re-placed {:.1} s after the last write",
        events.len(),
        batches.len(),
        w.retried,
        replaced_after.as_secs_f64()
    );

    // Everything acknowledged, read through each survivor, equals the single node.
    let read_after = token(&w.read_after);
    let users: Vec<u64> = {
        let mut u: Vec<u64> = events.iter().map(|e| e["user"].as_u64().unwrap()).collect();
        u.sort_unstable();
        u.dedup();
        u
    };
    let candidates: Vec<u64> = items
        .iter()
        .take(40)
        .map(|i| i["id"].as_u64().unwrap())
        .collect();
    for (n, &user) in users.iter().enumerate() {
        let node = &alive[n % 2];
        let path = format!("/v1/users/{user}/events?limit=100000");
        let (status, got) = get_json(&http, format!("{node}{path}"), &read_after).await;
        assert_eq!(status, 200, "{got}");
        let (_, want) = get_json(&http, format!("{single}{path}"), "").await;
        assert_eq!(got, want, "user {user}'s history");
        let retrieve = json!({"user": user, "mode": "hard", "k": 50, "item": candidates[n]});
        let got = post_json(&http, format!("{node}/v1/retrieve"), &read_after, &retrieve).await;
        let want = post_json(&http, format!("{single}/v1/retrieve"), "", &retrieve).await;
        assert_eq!(got, want, "user {user}'s hard retrieval");
        let score = json!({"user": user, "candidates": candidates, "gsu": "hard"});
        let got = post_json(&http, format!("{node}/v1/score"), &read_after, &score).await;
        let want = post_json(&http, format!("{single}/v1/score"), "", &score).await;
        assert_eq!(got["scores"], want["scores"], "user {user}'s scores");
        assert_eq!(got["history_events"], want["history_events"]);
    }
    // A read that needs a position no write reached: 409 after the wait.
    let far: Vec<String> = (0..8).map(|p| format!("{p}:1000000000")).collect();
    let (status, e) = get_json(
        &http,
        format!("{}/v1/users/{}/events", alive[0], users[0]),
        &far.join(","),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("not_yet_applied"))
    );
    reference.shutdown().await.unwrap();
    assert!(up.stop(), "siren cluster up stopped cleanly");
}
