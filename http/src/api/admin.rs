//! Admin endpoints (scope `admin`): model reload, compaction, checkpoint (a consistent backup).

use axum::extract::State;
use axum::http::{header, HeaderName};
use axum::response::IntoResponse;
use axum::Json;
use siren_serve::ServedModel;

use super::json::ApiJson;
use super::types::*;
use crate::admission::Ticket;
use crate::error::{ApiError, ErrorBody};
use crate::state::{child_path, AppState};

/// Load a model checkpoint and swap it in without dropping requests: requests in flight finish
/// with the model they started with. Only the configured `model`, or a checkpoint directory
/// named under the configured `model_dir`, is loaded; files over `limits.max_model_bytes` are
/// refused unread.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin", request_body = ReloadRequest,
    security(("bearer" = ["admin"])),
    responses((status = 200, body = ReloadResponse),
        (status = 404, body = ErrorBody, description = "`not_found`: no checkpoint of that name"),
        (status = 422, body = ErrorBody,
            description = "`invalid_model`: the checkpoint cannot be loaded (unreadable, damaged, \
                           too large, or not for this database)")))]
pub async fn reload(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiJson(req): ApiJson<ReloadRequest>,
) -> Result<Json<ReloadResponse>, ApiError> {
    let path =
        match (req.model, &st.config.model_dir, &st.config.model) {
            (Some(name), Some(dir), _) => child_path(dir, &name, "model")?,
            (Some(_), None, _) => return Err(ApiError::invalid(
                "this server loads models by name only from `model_dir`, which is not configured",
            )),
            (None, _, Some(model)) => model.clone(),
            (None, _, None) => {
                return Err(ApiError::invalid(
                    "no model named and none configured (`model`)",
                ))
            }
        };
    let ranker = st.ranker.clone();
    let max_bytes = st.config.limits.max_model_bytes;
    ticket
        .write(move || {
            let m = ServedModel::load_within(&path, max_bytes).map_err(|e| match e {
                siren_model::ModelError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    ApiError::not_found(format!("no model checkpoint at {}", path.display()))
                }
                other => ApiError::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_model",
                    format!("cannot load the model at {}: {other}", path.display()),
                ),
            })?;
            let version = m.version().to_string();
            let previous = ranker
                .swap_model(m)
                .map_err(|e| {
                    ApiError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_model",
                        e.to_string(),
                    )
                })?
                .map(|p| p.version().to_string());
            tracing::info!(model = %version, ?previous, "model reloaded");
            Ok(Json(ReloadResponse {
                model_version: version,
                previous,
            }))
        })
        .await
}

/// Fold pending events into segment files now.
#[utoipa::path(post, path = "/v1/admin/compact", tag = "admin", security(("bearer" = ["admin"])),
    responses((status = 200, body = CompactResponse)))]
pub async fn compact(
    State(st): State<AppState>,
    ticket: Ticket,
) -> Result<Json<CompactResponse>, ApiError> {
    let db = st.db.clone();
    ticket
        .write(move || {
            let c = db.compact()?;
            Ok(Json(CompactResponse {
                users_written: c.users_written,
                events_written: c.events_written,
                segments_written: c.segments_written,
                segments_removed: c.segments_removed,
                bytes_written: c.bytes_written,
            }))
        })
        .await
}

/// Write a consistent copy of the database (a checkpoint) under the configured `backup_dir`;
/// it opens like the original (`siren serve --db <path>`).
#[utoipa::path(post, path = "/v1/admin/checkpoint", tag = "admin", request_body = CheckpointRequest,
    security(("bearer" = ["admin"])),
    responses((status = 200, body = CheckpointResponse),
        (status = 409, body = ErrorBody, description = "`conflict`: a checkpoint of that name exists")))]
pub async fn checkpoint(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiJson(req): ApiJson<CheckpointRequest>,
) -> Result<Json<CheckpointResponse>, ApiError> {
    let dir = st.config.backup_dir.clone().ok_or_else(|| {
        ApiError::invalid("checkpoints need `backup_dir` in the server's configuration")
    })?;
    let dest = child_path(&dir, &req.name, "checkpoint")?;
    let db = st.db.clone();
    ticket
        .write(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
            if dest.exists() {
                return Err(ApiError::conflict(format!(
                    "{} exists; choose another name",
                    dest.display()
                )));
            }
            let s = db.checkpoint(&dest)?;
            Ok(Json(CheckpointResponse {
                path: dest.display().to_string(),
                segments: s.segments,
                segment_bytes: s.segment_bytes,
            }))
        })
        .await
}

/// The old name of `POST /v1/admin/checkpoint` (a "snapshot" is a read view elsewhere in
/// Siren): answers the same, with `Deprecation: true` and a `Link` to the new route. It goes
/// in the next version.
#[utoipa::path(post, path = "/v1/admin/snapshot", tag = "admin", request_body = CheckpointRequest,
    security(("bearer" = ["admin"])), description = "Deprecated: use POST /v1/admin/checkpoint.",
    responses((status = 200, body = CheckpointResponse),
        (status = 409, body = ErrorBody, description = "`conflict`: a checkpoint of that name exists")))]
#[deprecated = "use POST /v1/admin/checkpoint"]
pub async fn snapshot(
    st: State<AppState>,
    ticket: Ticket,
    req: ApiJson<CheckpointRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let answer = checkpoint(st, ticket, req).await?;
    Ok((
        [
            (HeaderName::from_static("deprecation"), "true"),
            (
                header::LINK,
                "</v1/admin/checkpoint>; rel=\"successor-version\"",
            ),
        ],
        answer,
    ))
}
