//! Admin endpoints (scope `admin`): model reload, compaction, checkpoint (a consistent backup).

use axum::extract::State;
use axum::http::{header, HeaderName};
use axum::response::IntoResponse;
use axum::Json;
use siren_serve::ServedModel;

use super::types::*;
use super::ApiJson;
use crate::error::{ApiError, ErrorBody};
use crate::state::{backup_path, blocking, AppState};

/// Load a model checkpoint and swap it in without dropping requests: requests in flight finish
/// with the model they started with.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "admin", request_body = ReloadRequest,
    security(("bearer" = [])),
    responses((status = 200, body = ReloadResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn reload(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<ReloadRequest>,
) -> Result<Json<ReloadResponse>, ApiError> {
    let path = match req.model {
        Some(p) => std::path::PathBuf::from(p),
        None => st.config.model.clone().ok_or_else(|| {
            ApiError::invalid("no model path given and none configured (`model`)")
        })?,
    };
    let ranker = st.ranker.clone();
    blocking(move || {
        let m = ServedModel::load(&path).map_err(|e| match e {
            siren_model::ModelError::Io { .. } => {
                ApiError::invalid(format!("cannot load a model from {}: {e}", path.display()))
            }
            other => other.into(),
        })?;
        let version = m.version().to_string();
        let previous = ranker.swap_model(m)?.map(|p| p.version().to_string());
        tracing::info!(model = %version, ?previous, "model reloaded");
        Ok(Json(ReloadResponse {
            model_version: version,
            previous,
        }))
    })
    .await
}

/// Fold pending events into segment files now.
#[utoipa::path(post, path = "/v1/admin/compact", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = CompactResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn compact(State(st): State<AppState>) -> Result<Json<CompactResponse>, ApiError> {
    let db = st.db.clone();
    blocking(move || {
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
    security(("bearer" = [])),
    responses((status = 200, body = CheckpointResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn checkpoint(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CheckpointRequest>,
) -> Result<Json<CheckpointResponse>, ApiError> {
    let dir = st.config.backup_dir.clone().ok_or_else(|| {
        ApiError::invalid("checkpoints need `backup_dir` in the server's configuration")
    })?;
    let dest = backup_path(&dir, &req.name)?;
    let db = st.db.clone();
    blocking(move || {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", dir.display())))?;
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
    security(("bearer" = [])), description = "Deprecated: use POST /v1/admin/checkpoint.",
    responses((status = 200, body = CheckpointResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[deprecated = "use POST /v1/admin/checkpoint"]
pub async fn snapshot(
    st: State<AppState>,
    req: ApiJson<CheckpointRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let answer = checkpoint(st, req).await?;
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
