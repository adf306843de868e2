//! The one place where errors become HTTP responses.
//!
//! Every error answer is `{"error": {"code": "...", "message": "..."}}` with a stable `code`
//! (the table below, also in the OpenAPI document); the message is for people and may change.
//!
//! | status | code |
//! |---|---|
//! | 400 | `invalid_json`, `invalid_request`, `invalid_argument` |
//! | 401 | `unauthorized` |
//! | 403 | `forbidden` |
//! | 404 | `not_found` |
//! | 405 | `method_not_allowed` |
//! | 409 | `conflict` (a checkpoint name already taken; in cluster mode a placement changed concurrently), `not_yet_applied` (cluster mode: a read's `Siren-Read-After` not reached in time), `pin_unavailable` |
//! | 413 | `payload_too_large` |
//! | 415 | `unsupported_media_type` |
//! | 422 | `too_many` (candidates, events, items, `k`, `limit` over the configured limits) |
//! | 500 | `data_corruption`, `internal` |
//! | 503 | `overloaded`, `timeout` (nothing was applied), `no_model`; in cluster mode `no_live_owner` (no live node serves the user's partition), `not_serving` (a forwarded read reached a node that no longer serves it), `log_unavailable` (JetStream did not acknowledge), `shutting_down` (all with `Retry-After`) |

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use siren_model::ModelError;
use siren_serve::ServeError;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

/// The body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable.
    pub code: String,
    /// For people.
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "too_many", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is at its concurrency limit; retry later",
        )
    }

    /// A request not answered by its deadline. Only requests that had not started a write
    /// are answered so (see `admission`), hence "nothing was applied".
    pub fn timeout() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request did not finish within the server's time limit \
             (limits.request_timeout_ms); nothing was applied, so it is safe to retry",
        )
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

/// Whether a response with `status` can be sent before the request's body is read: an
/// oversized body (413), a body that is not JSON (415), a caller refused before its body
/// (401, 403), and the admission and deadline refusals (503). Other errors are answered after
/// the body was read in full, so their connections stay open.
fn may_leave_body_unread(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNSUPPORTED_MEDIA_TYPE
            | StatusCode::UNAUTHORIZED
            | StatusCode::FORBIDDEN
            | StatusCode::SERVICE_UNAVAILABLE
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if may_leave_body_unread(self.status) {
            // The body may have been left unread, and then the connection closes after this
            // response; saying so keeps a client from sending its next request on it (which
            // then fails when the close lands first) and lets it open a fresh one.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<siren_engine::Error> for ApiError {
    fn from(e: siren_engine::Error) -> Self {
        use siren_engine::Error as E;
        match e {
            E::InvalidArgument(m) => ApiError::invalid(m),
            E::DataCorruption { .. } | E::UnsupportedVersion { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "data_corruption",
                e.to_string(),
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Engine(e) => e.into(),
            ModelError::InvalidArgument(m) => ApiError::invalid(m),
            ModelError::DataCorruption { .. } | ModelError::UnsupportedVersion { .. } => {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "data_corruption",
                    e.to_string(),
                )
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::Engine(e) => e.into(),
            ServeError::Model(e) => e.into(),
            ServeError::InvalidArgument(m) => ApiError::invalid(m),
            ServeError::NoModel => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_model",
                "no model is loaded; load one with POST /v1/admin/reload",
            ),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<siren_cluster::Error> for ApiError {
    fn from(e: siren_cluster::Error) -> Self {
        use siren_cluster::Error as E;
        let unavailable =
            |code| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string());
        let conflict = |code| ApiError::new(StatusCode::CONFLICT, code, e.to_string());
        match &e {
            E::NoLiveOwner { .. } => unavailable("no_live_owner"),
            E::NotServing { .. } => unavailable("not_serving"),
            E::Log { .. } => unavailable("log_unavailable"),
            E::Timeout { .. } => unavailable("timeout"),
            E::Shutdown => unavailable("shutting_down"),
            E::NotYetApplied { .. } => conflict("not_yet_applied"),
            E::Conflict { .. } => conflict("conflict"),
            E::PinUnavailable { .. } => conflict("pin_unavailable"),
            E::InvalidArgument(m) => ApiError::invalid(m.clone()),
            E::Corrupt { .. } | E::UnsupportedVersion { .. } | E::Gap { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "data_corruption",
                e.to_string(),
            ),
            _ => match e {
                E::Engine(inner) => inner.into(),
                other => ApiError::internal(other.to_string()),
            },
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", r.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_and_model_errors_map_to_stable_codes() {
        let e: ApiError =
            siren_engine::Error::InvalidArgument("k must be at least 1".into()).into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_argument")
        );
        let e: ApiError = ServeError::NoModel.into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "no_model")
        );
        let e: ApiError = siren_engine::Error::DataCorruption {
            path: "x".into(),
            block: "b".into(),
            detail: "d".into(),
        }
        .into();
        assert_eq!(e.code, "data_corruption");
        let e: ApiError = siren_cluster::Error::NoLiveOwner { partition: 7 }.into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::SERVICE_UNAVAILABLE, "no_live_owner")
        );
        let e: ApiError = siren_cluster::Error::NotYetApplied {
            partition: 7,
            needed: 9,
            applied: 3,
        }
        .into();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::CONFLICT, "not_yet_applied")
        );
        let e: ApiError = siren_cluster::Error::Conflict { key: "k".into() }.into();
        assert_eq!((e.status, e.code), (StatusCode::CONFLICT, "conflict"));
        let resp = ApiError::overloaded().into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }
}
