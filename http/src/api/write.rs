//! Write endpoints (scope `write`): append events, upsert items, delete a user.
//!
//! In cluster mode a write is published to the cluster's log and answered once JetStream has
//! acknowledged it (stored on a quorum, fsynced); the nodes apply it from there. Its
//! `Idempotency-Key` makes a retry a no-op, and its `read_after` token, sent back as
//! `Siren-Read-After`, makes a later read wait until it is applied.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use siren_cluster::Published;
use siren_engine::{AppendOptions, AppendOutcome, Event, Item};

use super::json::{ApiJson, Digits};
use super::types::*;
use super::ApiPath;
use crate::admission::Ticket;
use crate::cluster::{idempotency_key, ReadAfter, IDEMPOTENCY_KEY};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The request's idempotency key, refused on a single node (where `source` does that job for
/// appends) rather than silently ignored.
fn cluster_key<'h>(st: &AppState, headers: &'h HeaderMap) -> Result<Option<&'h str>, ApiError> {
    let key = idempotency_key(headers)?;
    if key.is_some() && st.cluster.is_none() {
        return Err(ApiError::invalid(format!(
            "{IDEMPOTENCY_KEY} is for cluster mode; on a single server send `source` with \
             the events for exactly-once ingestion"
        )));
    }
    Ok(key)
}

/// Whether every message of a call was already on the log (the call is a retry).
fn all_duplicates(p: &Published) -> bool {
    p.messages > 0 && p.duplicates == p.messages
}

/// Append behaviours of any users, atomically. A 503 `timeout` means nothing was applied; a
/// client that saw no answer at all retries with the same `source` to have it applied once.
#[utoipa::path(post, path = "/v1/events", tag = "write", request_body = AppendRequest,
    security(("bearer" = ["write"])),
    responses((status = 200, body = AppendResponse),
        (status = 422, body = ErrorBody, description = "`too_many`: over `limits.max_events_per_request`"),
        (status = 503, body = ErrorBody, description = "`log_unavailable` (cluster mode): the log did not acknowledge; retry with the same Idempotency-Key")))]
pub async fn append(
    State(st): State<AppState>,
    ticket: Ticket,
    headers: HeaderMap,
    ApiJson(req): ApiJson<AppendRequest>,
) -> Result<Json<AppendResponse>, ApiError> {
    let key = cluster_key(&st, &headers)?;
    if let Some(c) = &st.cluster {
        if req.source.is_some() {
            return Err(ApiError::invalid(format!(
                "in cluster mode the log orders and de-duplicates writes: send an \
                 {IDEMPOTENCY_KEY} header instead of `source`"
            )));
        }
        let events: Vec<Event> = req.events.iter().map(|&e| e.into()).collect();
        let published = ticket
            .write_async(async { Ok(c.producer.append(&events, key).await?) })
            .await?;
        let duplicate = all_duplicates(&published);
        let applied = if duplicate { 0 } else { events.len() };
        st.metrics.events_ingested.inc_by(applied as u64);
        return Ok(Json(AppendResponse {
            applied,
            duplicate,
            last_applied: None,
            read_after: Some(ReadAfter::of(&published).token()),
        }));
    }
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
                        read_after: None,
                    }
                }
                AppendOutcome::Duplicate { last_applied } => AppendResponse {
                    applied: 0,
                    duplicate: true,
                    last_applied: Some(last_applied),
                    read_after: None,
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
        (status = 422, body = ErrorBody, description = "`too_many`: over `limits.max_items_per_request`"),
        (status = 503, body = ErrorBody, description = "`log_unavailable` (cluster mode): the log did not acknowledge; retry with the same Idempotency-Key")))]
pub async fn upsert_items(
    State(st): State<AppState>,
    ticket: Ticket,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UpsertItemsRequest>,
) -> Result<Json<UpsertItemsResponse>, ApiError> {
    let key = cluster_key(&st, &headers)?.map(str::to_owned);
    let (db, ranker) = (st.db.clone(), st.ranker.clone());
    let cluster = st.cluster.clone();
    let (items, assigned) = ticket
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
            if cluster.is_none() {
                db.upsert_items(&items, req.durability.into())?;
            }
            Ok((items, assigned))
        })
        .await?;
    let read_after = match &st.cluster {
        Some(c) => {
            let published = ticket
                .write_async(async { Ok(c.producer.upsert_items(&items, key.as_deref()).await?) })
                .await?;
            Some(ReadAfter::of(&published).token())
        }
        None => None,
    };
    st.metrics.items_upserted.inc_by(items.len() as u64);
    Ok(Json(UpsertItemsResponse {
        upserted: items.len(),
        semids_assigned: assigned,
        read_after,
    }))
}

/// Delete a user and all its behaviours (erased from disk at the next compaction).
#[utoipa::path(delete, path = "/v1/users/{user}", tag = "write",
    params(("user" = u64, Path, description = "User id")),
    security(("bearer" = ["write"])),
    responses((status = 200, body = DeleteResponse),
        (status = 503, body = ErrorBody, description = "`log_unavailable` (cluster mode): the log did not acknowledge; retry with the same Idempotency-Key")))]
pub async fn delete_user(
    State(st): State<AppState>,
    ticket: Ticket,
    headers: HeaderMap,
    ApiPath(Digits(user)): ApiPath<Digits<u64>>,
) -> Result<Json<DeleteResponse>, ApiError> {
    let key = cluster_key(&st, &headers)?;
    if let Some(c) = &st.cluster {
        let published = ticket
            .write_async(async { Ok(c.producer.delete_users(&[user], key).await?) })
            .await?;
        return Ok(Json(DeleteResponse {
            deleted: None,
            read_after: Some(ReadAfter::of(&published).token()),
        }));
    }
    let db = st.db.clone();
    ticket
        .write(move || {
            let deleted = db.delete_user(user, siren_engine::Durability::Sync)?;
            Ok(Json(DeleteResponse {
                deleted: Some(deleted),
                read_after: None,
            }))
        })
        .await
}
