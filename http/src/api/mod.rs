//! The HTTP/JSON API: routes, access control, limits, and the OpenAPI document generated from the
//! handlers' annotations.
//!
//! | route | scope |
//! |---|---|
//! | `POST /v1/score`, `POST /v1/retrieve`, `GET /v1/users/{user}/events`, `GET /v1/items/{item}`, `GET /v1/stats`, `GET /v1/cluster` | read |
//! | `POST /v1/events`, `POST /v1/items`, `DELETE /v1/users/{user}` | write |
//! | `POST /v1/admin/reload`, `POST /v1/admin/compact`, `POST /v1/admin/checkpoint` (and its old name `POST /v1/admin/snapshot`, deprecated) | admin |
//! | `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json` | none |
//!
//! In cluster mode ([`crate::cluster`]) the three reads of a user are forwarded to a node that
//! serves the user's partition, and the writes go to the cluster's log.
//!
//! The `/v1` routes run under a global concurrency limit that sheds excess requests at once
//! (503 with `Retry-After`) rather than queueing them, and a per-request deadline that never
//! cuts a write short (`crate::admission`).

pub mod admin;
pub mod doc;
pub mod json;
pub mod read;
pub mod types;
pub mod write;

use std::sync::atomic::Ordering;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Scope;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use types::{HealthResponse, ReadyResponse};

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Check the bearer token for `need`. With no token configured the server listens on loopback
/// only; reads and writes are allowed, admin routes only with `allow_unauthenticated_admin`.
fn authorize(state: &AppState, headers: &HeaderMap, need: Scope) -> Result<(), ApiError> {
    let tokens = &state.config.tokens;
    if tokens.is_empty() {
        if need == Scope::Admin && !state.config.allow_unauthenticated_admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin routes need a token with the admin scope: configure [[tokens]] (or, on a \
                 machine whose every user may administer the server, allow_unauthenticated_admin)",
            ));
        }
        return Ok(());
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>`",
            )
        })?;
    let token = tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), given.as_bytes()))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))?;
    if !token.allows(need) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token lacks the {need:?} scope").to_lowercase(),
        ));
    }
    Ok(())
}

async fn require_read(State(s): State<AppState>, req: Request, next: Next) -> Response {
    gate(s, Scope::Read, req, next).await
}

async fn require_write(State(s): State<AppState>, req: Request, next: Next) -> Response {
    gate(s, Scope::Write, req, next).await
}

async fn require_admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    gate(s, Scope::Admin, req, next).await
}

async fn gate(s: AppState, need: Scope, req: Request, next: Next) -> Response {
    match authorize(&s, req.headers(), need) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, body = HealthResponse)))]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
    })
}

/// Ready to score: a model is loaded and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = ReadyResponse), (status = 503, body = ReadyResponse)))]
pub async fn readyz(State(st): State<AppState>) -> Response {
    let model = st.ranker.model().map(|m| m.version().to_string());
    let reason = if st.shutting_down.load(Ordering::Relaxed) {
        Some("shutting down")
    } else if model.is_none() {
        Some("no model is loaded")
    } else {
        None
    };
    let status = if reason.is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = ReadyResponse {
        ready: reason.is_none(),
        model_version: model,
        reason: reason.map(String::from),
    };
    (status, Json(body)).into_response()
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.metrics.render(&st.db, st.admission.in_use());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Siren",
        description = "Lifelong user-behaviour sequences with retrieval and scoring inside the \
                       database. Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code."
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

/// The OpenAPI document and the routes it describes, from the same annotations.
// The deprecated `/v1/admin/snapshot` is still served, for one version.
#[allow(deprecated)]
fn routes(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let read = OpenApiRouter::new()
        .routes(routes!(read::score))
        .routes(routes!(read::retrieve))
        .routes(routes!(read::history))
        .routes(routes!(read::get_item))
        .routes(routes!(read::stats))
        .routes(routes!(read::cluster_status))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_read));
    let write = OpenApiRouter::new()
        .routes(routes!(write::append))
        .routes(routes!(write::upsert_items))
        .routes(routes!(write::delete_user))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_write));
    let admin = OpenApiRouter::new()
        .routes(routes!(admin::reload))
        .routes(routes!(admin::compact))
        .routes(routes!(admin::checkpoint))
        .routes(routes!(admin::snapshot))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let (v1, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(read)
        .merge(write)
        .merge(admin)
        .split_for_parts();
    let v1 = v1.layer(middleware::from_fn_with_state(state.clone(), admit));
    let (ops, ops_doc) = OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .split_for_parts();
    doc.merge(ops_doc);
    doc::complete(&mut doc);
    (v1.merge(ops), doc)
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let (routes, doc) = routes(&state);
    let doc_json = doc
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    let max_body = state.config.limits.max_body_bytes;
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || async move {
                ([(header::CONTENT_TYPE, "application/json")], doc_json)
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::internal("the request handler panicked").into_response()
            },
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The OpenAPI document alone (for `siren openapi` and tests).
pub fn openapi(state: &AppState) -> utoipa::openapi::OpenApi {
    routes(state).1
}

/// Middleware of the `/v1` routes: admission (`crate::admission::admit`) with its counters.
async fn admit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let m = &st.metrics;
    crate::admission::admit(
        &st.admission,
        req,
        next,
        || {
            m.shed.inc();
        },
        || {
            m.timed_out.inc();
        },
    )
    .await
}
