//! Write endpoints (scope `write`): append events, upsert items, delete a user.

use axum::extract::State;
use axum::Json;
use siren_engine::{AppendOptions, AppendOutcome, Event, Item};

use super::types::*;
use super::{ApiJson, ApiPath};
use crate::error::{ApiError, ErrorBody};
use crate::state::{blocking, AppState};

/// Append behaviours of any users, atomically.
#[utoipa::path(post, path = "/v1/events", tag = "write", request_body = AppendRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = AppendResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn append(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<AppendRequest>,
) -> Result<Json<AppendResponse>, ApiError> {
    let max = st.config.limits.max_events_per_request;
    if req.events.len() > max {
        return Err(ApiError::too_many(format!(
            "{} events; at most {max} per request",
            req.events.len()
        )));
    }
    let (db, metrics) = (st.db.clone(), st.metrics.clone());
    blocking(move || {
        let events: Vec<Event> = req.events.iter().map(|&e| e.into()).collect();
        let opts = AppendOptions {
            durability: req.durability.into(),
            source: req.source.map(|s| (s.name, s.seq)),
        };
        Ok(Json(match db.append(&events, &opts)? {
            AppendOutcome::Applied { events } => {
                metrics.events_ingested.inc_by(events as u64);
                AppendResponse {
                    applied: events,
                    duplicate: false,
                    last_applied: None,
                }
            }
            AppendOutcome::Duplicate { last_applied } => AppendResponse {
                applied: 0,
                duplicate: true,
                last_applied: Some(last_applied),
            },
        }))
    })
    .await
}

/// Insert or replace catalog items. Items with an embedding and no SemID get one from the
/// server's codebook, when it has one.
#[utoipa::path(post, path = "/v1/items", tag = "write", request_body = UpsertItemsRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = UpsertItemsResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn upsert_items(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<UpsertItemsRequest>,
) -> Result<Json<UpsertItemsResponse>, ApiError> {
    let max = st.config.limits.max_items_per_request;
    if req.items.len() > max {
        return Err(ApiError::too_many(format!(
            "{} items; at most {max} per request",
            req.items.len()
        )));
    }
    let (db, ranker, metrics) = (st.db.clone(), st.ranker.clone(), st.metrics.clone());
    blocking(move || {
        let dim = db.options().embedding_dim as usize;
        let mut items = Vec::with_capacity(req.items.len());
        for it in req.items {
            if let Some(e) = &it.embedding {
                // Checked here too (the engine checks again) so that the codebook never sees a
                // vector it cannot assign.
                if e.len() != dim {
                    return Err(ApiError::invalid(format!(
                        "item {}: embedding has {} values, the database's dimension is {dim}",
                        it.id,
                        e.len()
                    )));
                }
                if let Some(i) = e.iter().position(|v| !v.is_finite()) {
                    return Err(ApiError::invalid(format!(
                        "item {}: embedding value {i} is not finite",
                        it.id
                    )));
                }
            }
            items.push(Item {
                id: it.id,
                category: it.category,
                semid: it.semid.as_deref().map(semid).transpose()?,
                embedding: it.embedding,
            });
        }
        let assigned = ranker.assign_semids(&mut items);
        db.upsert_items(&items, req.durability.into())?;
        metrics.items_upserted.inc_by(items.len() as u64);
        Ok(Json(UpsertItemsResponse {
            upserted: items.len(),
            semids_assigned: assigned,
        }))
    })
    .await
}

/// Delete a user and all its behaviours (erased from disk at the next compaction).
#[utoipa::path(delete, path = "/v1/users/{user}", tag = "write",
    params(("user" = u64, Path, description = "User id")),
    security(("bearer" = [])),
    responses((status = 200, body = DeleteResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn delete_user(
    State(st): State<AppState>,
    ApiPath(user): ApiPath<u64>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let db = st.db.clone();
    blocking(move || {
        let deleted = db.delete_user(user, siren_engine::Durability::Sync)?;
        Ok(Json(DeleteResponse { deleted }))
    })
    .await
}
