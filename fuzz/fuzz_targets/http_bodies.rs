//! Request bodies, paths and query strings through the real axum handlers (no socket): the
//! server over a small database with a trained model. Any answer but a 5xx is fine; a 5xx other
//! than 503, or a panic, is a finding.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use libfuzzer_sys::fuzz_target;
use siren_http::config::Config;
use siren_http::state::{open, AppState};
use siren_model::dataset::{self, DatasetDir};
use siren_model::models::ModelConfig;
use siren_model::semid::RqKmeansConfig;
use siren_model::synth::PlantedConfig;
use siren_model::train::{train, TrainConfig};
use tower::ServiceExt;

struct Fixture {
    _dir: tempfile::TempDir,
    app: axum::Router,
    rt: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = DatasetDir::new(dir.path().join("data"));
        let planted = PlantedConfig {
            items: 300,
            dim: 8,
            clusters: 6,
            users: 8,
            min_events: 50,
            max_events: 300,
            impressions_per_user: 8,
            ..PlantedConfig::default()
        };
        let semid = RqKmeansConfig {
            codebook_size: 8,
            ..RqKmeansConfig::default()
        };
        dataset::import_synthetic(&planted, &data, &semid).expect("import");
        let model = ModelConfig {
            dim: 8,
            recent: 8,
            retrieved: 8,
            layers: 1,
            ..ModelConfig::named("siren-hard").expect("model")
        };
        let (_db, _m, prepared) =
            dataset::prepare(&data, std::slice::from_ref(&model), 1).expect("prepare");
        let t = train(
            &model,
            &TrainConfig {
                epochs: 1,
                ..TrainConfig::default()
            },
            &prepared,
        )
        .expect("train");
        let ck = dir.path().join("model");
        t.save(&ck, &prepared.vocabs, prepared.levels)
            .expect("save");
        drop(_db);
        let mut config = Config {
            db: data.db_path(),
            model: Some(ck),
            codebook: Some(data.codebook_path()),
            backup_dir: Some(dir.path().join("backups")),
            // No tokens here: let the admin routes' bodies through to their handlers.
            allow_unauthenticated_admin: true,
            ..Config::default()
        };
        config.limits.max_body_bytes = 1 << 16;
        config.limits.max_candidates = 64;
        config.limits.max_k = 64;
        let (db, ranker) = open(&config).expect("open");
        let state = AppState::new(std::sync::Arc::new(db), std::sync::Arc::new(ranker), config);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture {
            _dir: dir,
            app: siren_http::api::app(state),
            rt,
        }
    })
}

const ROUTES: [(&str, &str); 11] = [
    ("POST", "/v1/score"),
    ("POST", "/v1/retrieve"),
    ("POST", "/v1/events"),
    ("POST", "/v1/items"),
    ("POST", "/v1/admin/reload"),
    ("POST", "/v1/admin/checkpoint"),
    ("POST", "/v1/admin/snapshot"),
    ("POST", "/v1/admin/compact"),
    ("GET", "/v1/users/"),
    ("DELETE", "/v1/users/"),
    ("GET", "/v1/items/"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let (method, path) = ROUTES[usize::from(which) % ROUTES.len()];
    // Paths that take a parameter get the input's text (up to the first newline) appended.
    let (uri, body) = if path.ends_with('/') {
        let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let tail: String = String::from_utf8_lossy(&rest[..cut])
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .collect();
        (format!("{path}{tail}"), Vec::new())
    } else {
        (path.to_string(), rest.to_vec())
    };
    let Ok(req) = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(&uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
    else {
        return;
    };
    let resp =
        f.rt.block_on(f.app.clone().oneshot(req))
            .expect("infallible");
    let status = resp.status();
    assert!(
        !status.is_server_error() || status.as_u16() == 503,
        "{method} {uri} answered {status}"
    );
});
