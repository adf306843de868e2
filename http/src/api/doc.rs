//! The error answers of the OpenAPI document, derived from what every operation has in common
//! so that the document says exactly what the server answers (the contract test in
//! `tests/contract.rs` checks every answer against it).
//!
//! The routes' own annotations list their 200 and the errors only they give (404, 409, 422,
//! `no_model`); this adds the rest by rule, the same rules the server follows:
//!
//! | operation has | answers |
//! |---|---|
//! | a JSON body | 400 (`invalid_json`, `invalid_request`, `invalid_argument`), 413, 415 |
//! | path or query parameters | 400 |
//! | a security requirement | 401 (tokens configured, none or an unknown one given), 403 |
//! | a `/v1` path | 500 (`internal`, `data_corruption`), 503 (`overloaded`, `timeout`) |

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{OpenApi, Ref, RefOr, Response, ResponseBuilder};

fn error_response(description: &str, retry_after: bool) -> Response {
    let mut b = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        b = b.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer))
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    b.build()
}

/// The error answers `op` at `path` gives by the rules of the module documentation.
fn common_errors(path: &str, op: &Operation) -> Vec<(&'static str, Response)> {
    let has_body = op.request_body.is_some();
    let has_params = path.contains('{') || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
    let mut out = Vec::new();
    if has_body || has_params {
        out.push((
            "400",
            error_response(
                "`invalid_json` (the body is not JSON), `invalid_request` (the body, path or \
                 query does not match the schema) or `invalid_argument` (well-formed but not \
                 acceptable to this database)",
                false,
            ),
        ));
    }
    if secured {
        out.push((
            "401",
            error_response(
                "`unauthorized`: tokens are configured and none, or an unknown one, was given",
                false,
            ),
        ));
        out.push((
            "403",
            error_response(
                "`forbidden`: the token lacks the scope (admin routes with no token configured \
                 refuse unless `allow_unauthenticated_admin`)",
                false,
            ),
        ));
    }
    if has_body {
        out.push((
            "413",
            error_response("`payload_too_large`: over `limits.max_body_bytes`", false),
        ));
        out.push((
            "415",
            error_response(
                "`unsupported_media_type`: not sent as `application/json`",
                false,
            ),
        ));
    }
    if path.starts_with("/v1/") {
        out.push((
            "500",
            error_response("`internal` or `data_corruption`", false),
        ));
        out.push((
            "503",
            error_response(
                "`overloaded` (at `limits.max_in_flight`) or `timeout` (past \
                 `limits.request_timeout_ms`; nothing was applied); retry after `Retry-After`",
                true,
            ),
        ));
    }
    out
}

/// Add the common error answers to every operation (a route's own description of a status,
/// e.g. its 503 `no_model`, is kept and the common codes appended), and describe
/// `GET /openapi.json`.
pub fn complete(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            for (status, response) in common_errors(path, op) {
                let entry = op
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(response.clone()));
                if let RefOr::T(own) = entry {
                    if own.description != response.description {
                        own.description = format!("{}; {}", own.description, response.description);
                    }
                    own.headers.extend(response.headers);
                }
            }
        }
    }
    let openapi = OperationBuilder::new()
        .tag("ops")
        .summary(Some("This document"))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The OpenAPI document of this server")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().schema_type(Type::Object)))
                        .build(),
                ),
        )
        .build();
    doc.paths.paths.insert(
        "/openapi.json".into(),
        PathItem::new(HttpMethod::Get, openapi),
    );
}
