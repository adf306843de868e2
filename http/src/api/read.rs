//! Read endpoints (scope `read`): score, retrieve, history, item, stats.

use axum::extract::State;
use axum::Json;
use siren_engine::ReadRange;
use siren_serve::{Retrieved, ScoreOptions};

use super::json::{ApiJson, Digits};
use super::types::*;
use super::{ApiPath, ApiQuery};
use crate::admission::Ticket;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

fn hit(r: &Retrieved) -> HitOut {
    HitOut {
        ts: r.event.ts,
        item: r.event.item,
        action: r.event.action,
        domain: r.event.domain,
        depth: r.depth,
        similarity: r.similarity,
    }
}

/// Score candidate items for a user with the loaded model.
#[utoipa::path(post, path = "/v1/score", tag = "read", request_body = ScoreRequest,
    security(("bearer" = ["read"])),
    responses((status = 200, body = ScoreResponse),
        (status = 422, body = ErrorBody, description = "`too_many`: over `limits.max_candidates`"),
        (status = 503, body = ErrorBody, description = "`no_model`: no model is loaded")))]
pub async fn score(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiJson(req): ApiJson<ScoreRequest>,
) -> Result<Json<ScoreResponse>, ApiError> {
    let (db, ranker) = (st.db.clone(), st.ranker.clone());
    ticket
        .read(move || {
            let opts = ScoreOptions {
                retrieval: req.gsu.into(),
                at: req.as_of,
                explain: req.explain,
                domain: req.domain,
            };
            let s = ranker.score(&db.snapshot(), req.user, &req.candidates, &opts)?;
            let t = s.timings;
            Ok(Json(ScoreResponse {
                model_version: s.model_version,
                model: s.model,
                // The retrieval asked for, when it fed a GSU slot.
                gsu: s.retrieval.map(|_| req.gsu),
                at: s.at,
                history_events: s.history_events,
                scores: s
                    .scores
                    .iter()
                    .map(|c| CandidateOut {
                        item: c.item,
                        score: c.score,
                        in_catalog: c.in_catalog,
                        retrieved: c.retrieved.as_ref().map(|r| r.iter().map(hit).collect()),
                    })
                    .collect(),
                timings_us: TimingsOut {
                    read: t.build.read_us,
                    retrieve: t.build.retrieve_us,
                    features: t.build.tokens_us,
                    esu: t.esu_us,
                    total: t.total_us,
                },
            }))
        })
        .await
}

/// Retrieve a user's behaviours most relevant to a target (the General Search Unit).
#[utoipa::path(post, path = "/v1/retrieve", tag = "read", request_body = RetrieveRequest,
    security(("bearer" = ["read"])),
    responses((status = 200, body = RetrieveResponse),
        (status = 404, body = ErrorBody, description = "`not_found`: the target item is not in the catalog"),
        (status = 422, body = ErrorBody, description = "`too_many`: `k` over `limits.max_k`")))]
pub async fn retrieve(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiJson(req): ApiJson<RetrieveRequest>,
) -> Result<Json<RetrieveResponse>, ApiError> {
    let max = st.config.limits.max_k;
    if req.k == 0 {
        return Err(ApiError::invalid("k must be at least 1"));
    }
    if req.k > max {
        return Err(ApiError::too_many(format!("k = {}; at most {max}", req.k)));
    }
    let given = [
        req.item.is_some(),
        req.semid.is_some(),
        req.embedding.is_some(),
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        return Err(ApiError::invalid(
            "give exactly one target: item, semid or embedding",
        ));
    }
    let db = st.db.clone();
    ticket
        .read(move || {
            let snap = db.snapshot();
            let target = match req.item {
                Some(id) => Some(snap.item(id).ok_or_else(|| {
                    ApiError::not_found(format!("item {id} is not in the catalog"))
                })?),
                None => None,
            };
            let hits: Vec<HitOut> = match req.mode {
                GsuIn::Hard => {
                    let s = match (&target, &req.semid, &req.embedding) {
                        (Some(t), _, _) => t.semid.ok_or_else(|| {
                            ApiError::invalid(format!("item {} has no SemID", t.id))
                        })?,
                        (_, Some(codes), _) => semid(codes)?,
                        _ => {
                            return Err(ApiError::invalid(
                                "hard retrieval needs an item or a semid, not an embedding",
                            ))
                        }
                    };
                    snap.retrieve_hard(req.user, &s, req.k, req.as_of)?
                        .iter()
                        .map(|h| {
                            hit(&Retrieved {
                                event: h.event,
                                depth: Some(h.depth),
                                similarity: None,
                            })
                        })
                        .collect()
                }
                GsuIn::Soft => {
                    let e = match (target, req.embedding) {
                        (Some(t), _) => t.embedding.ok_or_else(|| {
                            ApiError::invalid(format!("item {} has no embedding", t.id))
                        })?,
                        (_, Some(e)) => e,
                        _ => {
                            return Err(ApiError::invalid(
                                "soft retrieval needs an item or an embedding, not a semid",
                            ))
                        }
                    };
                    snap.retrieve_soft(req.user, &e, req.k, req.as_of)?
                        .iter()
                        .map(|h| {
                            hit(&Retrieved {
                                event: h.event,
                                depth: None,
                                similarity: Some(h.similarity),
                            })
                        })
                        .collect()
                }
            };
            Ok(Json(RetrieveResponse { hits }))
        })
        .await
}

/// A user's behaviours, oldest first, bounded by time and count.
#[utoipa::path(get, path = "/v1/users/{user}/events", tag = "read",
    params(("user" = u64, Path, description = "User id"), HistoryQuery),
    security(("bearer" = ["read"])),
    responses((status = 200, body = HistoryResponse),
        (status = 422, body = ErrorBody, description = "`too_many`: `limit` over `limits.max_history_limit`")))]
pub async fn history(
    State(st): State<AppState>,
    ticket: Ticket,
    ApiPath(Digits(user)): ApiPath<Digits<u64>>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let max = st.config.limits.max_history_limit;
    let limit = q.limit.unwrap_or(1000.min(max));
    if limit == 0 {
        return Err(ApiError::invalid("limit must be at least 1"));
    }
    if limit > max {
        return Err(ApiError::too_many(format!(
            "limit = {limit}; at most {max}"
        )));
    }
    let db = st.db.clone();
    ticket
        .read(move || {
            let snap = db.snapshot();
            let events = snap.read(
                user,
                ReadRange {
                    since: q.since,
                    as_of: q.as_of,
                    last: Some(limit),
                },
            )?;
            Ok(Json(HistoryResponse {
                user,
                visible_events: snap.user_len(user, q.as_of)?,
                events: events.into_iter().map(EventOut::from).collect(),
            }))
        })
        .await
}

/// One catalog item.
#[utoipa::path(get, path = "/v1/items/{item}", tag = "read",
    params(("item" = u64, Path, description = "Item id")),
    security(("bearer" = ["read"])),
    responses((status = 200, body = ItemOut),
        (status = 404, body = ErrorBody, description = "`not_found`: no such item")))]
pub async fn get_item(
    State(st): State<AppState>,
    ApiPath(Digits(item)): ApiPath<Digits<u64>>,
) -> Result<Json<ItemOut>, ApiError> {
    let it = st
        .db
        .snapshot()
        .item(item)
        .ok_or_else(|| ApiError::not_found(format!("item {item} is not in the catalog")))?;
    Ok(Json(ItemOut {
        id: it.id,
        category: it.category,
        semid: it.semid.map(|s| s.codes().to_vec()),
        embedding: it.embedding,
    }))
}

/// Users, events, files and bytes per column.
#[utoipa::path(get, path = "/v1/stats", tag = "read", security(("bearer" = ["read"])),
    responses((status = 200, body = StatsResponse)))]
pub async fn stats(
    State(st): State<AppState>,
    ticket: Ticket,
) -> Result<Json<StatsResponse>, ApiError> {
    let (db, ranker) = (st.db.clone(), st.ranker.clone());
    ticket
        .read(move || {
            let s = db.stats();
            let l = s.live;
            let column_bytes = [
                ("time", l.time),
                ("item", l.item),
                ("action", l.action),
                ("domain", l.domain),
                ("dictionary", l.dict),
                ("prefix_index", l.index),
                ("headers", l.meta),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            Ok(Json(StatsResponse {
                users: s.users,
                events: s.events,
                pending_events: s.pending_events,
                items: s.items,
                segments: s.segments,
                segment_file_bytes: s.segment_file_bytes,
                disk_bytes: db.disk_bytes(),
                column_bytes,
                compactions: s.compactions,
                last_background_error: s.last_background_error,
                wal_damage: s.wal_damage,
                model_version: ranker.model().map(|m| m.version().to_string()),
            }))
        })
        .await
}
