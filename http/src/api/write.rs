//! Write endpoints (scope `write`): append events, upsert items, delete a user.

use axum::extract::State;
use axum::Json;
use siren_engine::{AppendOptions, AppendOutcome, Event, Item};

use super::json::{ApiJson, Digits};
use super::types::*;
use super::ApiPath;
use crate::admission::Ticket;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Append behaviours of any users, atomically. A 503 `timeout` means nothing was applied; a
/// client that saw no answer at all retries with the same `source` to have it applied once.
#[utoipa::path(post, path = "/v1/events", tag = "write", request_body = AppendRequest,
    security(("bearer" = ["write"])),
    responses((status = 200, body = AppendResponse),
        (status = 422, body = ErrorBody, description = "`too_many`: over `limits.max_events_per_request`")))]
pub async fn append(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiJson(req): ApiJson<AppendRequest>,
) -> Result<Json<AppendResponse>, ApiError> {
    if let Some(s) = &req.source {
        if !(1..=MAX_SOURCE_NAME_CHARS).contains(&s.name.chars().count()) {
            return Err(ApiError::invalid(format!(
                "a source name is 1 to {MAX_SOURCE_NAME_CHARS} characters"
            )));
        }
    }
    let (db, metrics) = (st.db.clone(), st.metrics.clone());
    ticket
        .write(move || {
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
    security(("bearer" = ["write"])),
    responses((status = 200, body = UpsertItemsResponse),
        (status = 422, body = ErrorBody, description = "`too_many`: over `limits.max_items_per_request`")))]
pub async fn upsert_items(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiJson(req): ApiJson<UpsertItemsRequest>,
) -> Result<Json<UpsertItemsResponse>, ApiError> {
    let (db, ranker, metrics) = (st.db.clone(), st.ranker.clone(), st.metrics.clone());
    ticket
        .write(move || {
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
    security(("bearer" = ["write"])),
    responses((status = 200, body = DeleteResponse)))]
pub async fn delete_user(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiPath(Digits(user)): ApiPath<Digits<u64>>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let db = st.db.clone();
    ticket
        .write(move || {
            let deleted = db.delete_user(user, siren_engine::Durability::Sync)?;
            Ok(Json(DeleteResponse { deleted }))
        })
        .await
}
