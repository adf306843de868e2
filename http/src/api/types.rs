//! Request and response bodies. Every request type refuses unknown fields, so a misspelt field is
//! a 400 rather than a silently ignored option.

use serde::{Deserialize, Serialize};
use siren_engine::{Durability, Event, SemId};
use siren_serve::Retrieval;
use utoipa::{IntoParams, ToSchema};

use super::json;
use crate::error::ApiError;

/// An optional SemID: codes 0 to 65535 (how many and how large the database decides).
fn semid_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u16::MAX)),
        )
        .build()
}

/// An optional embedding: numbers within the range of an f32 (how many the database decides).
fn embedding_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaFormat, SchemaType, Type};
    use utoipa::openapi::KnownFormat;
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Float)))
                .minimum(Some(-f64::from(f32::MAX)))
                .maximum(Some(f64::from(f32::MAX))),
        )
        .build()
}

/// How durable a write is when the response is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DurabilityIn {
    /// In the write-ahead log and fsynced: survives a crash and a power loss.
    #[default]
    Sync,
    /// In the write-ahead log in the OS page cache: survives a process crash; the last writes
    /// may be lost on power loss.
    Buffered,
}

impl From<DurabilityIn> for Durability {
    fn from(d: DurabilityIn) -> Self {
        match d {
            DurabilityIn::Sync => Durability::Sync,
            DurabilityIn::Buffered => Durability::Buffered,
        }
    }
}

/// One behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    #[serde(deserialize_with = "json::int")]
    pub user: u64,
    /// Milliseconds since the Unix epoch.
    #[serde(deserialize_with = "json::int")]
    pub ts: i64,
    #[serde(deserialize_with = "json::int")]
    pub item: u64,
    /// Action code (view, click, buy, a rating, ...), 0 to 255.
    #[serde(default, deserialize_with = "json::int")]
    #[schema(maximum = 255)]
    pub action: u8,
    /// Scenario or surface, 0 to 65535.
    #[serde(default, deserialize_with = "json::int")]
    #[schema(maximum = 65535)]
    pub domain: u16,
}

impl From<EventIn> for Event {
    fn from(e: EventIn) -> Self {
        Event {
            user: e.user,
            ts: e.ts,
            item: e.item,
            action: e.action,
            domain: e.domain,
        }
    }
}

/// A behaviour as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
pub struct EventOut {
    pub ts: i64,
    pub item: u64,
    pub action: u8,
    pub domain: u16,
}

impl From<Event> for EventOut {
    fn from(e: Event) -> Self {
        EventOut {
            ts: e.ts,
            item: e.item,
            action: e.action,
            domain: e.domain,
        }
    }
}

/// For exactly-once ingestion: a batch whose `seq` is at or below the last applied one for
/// its `name` is acknowledged and not applied again.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceIn {
    /// 1 to 256 characters.
    #[schema(min_length = 1, max_length = 256)]
    pub name: String,
    #[serde(deserialize_with = "json::int")]
    pub seq: u64,
}

/// Longest source name over HTTP, in characters: at most the engine's limit in bytes
/// ([`siren_engine::MAX_SOURCE_NAME`]) however the characters are encoded, so that a name the
/// OpenAPI document allows is one the engine takes.
pub const MAX_SOURCE_NAME_CHARS: usize = siren_engine::MAX_SOURCE_NAME / 4;

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    /// Events of any users, stored atomically: all of them or, on error, none.
    #[serde(deserialize_with = "json::events")]
    pub events: Vec<EventIn>,
    #[serde(default)]
    pub durability: DurabilityIn,
    #[serde(default)]
    pub source: Option<SourceIn>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct AppendResponse {
    /// Events stored by this request.
    pub applied: usize,
    /// True when the source's sequence number had already been applied.
    pub duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemIn {
    #[serde(deserialize_with = "json::int")]
    pub id: u64,
    #[serde(default, deserialize_with = "json::int")]
    pub category: u32,
    /// Codes, coarse to fine; as many as the database's SemID levels, each below its codebook
    /// size. Assigned from the server's codebook when absent and an embedding is given.
    #[serde(default, deserialize_with = "json::semid")]
    #[schema(schema_with = semid_schema)]
    pub semid: Option<Vec<u16>>,
    /// As many values as the database's embedding dimension, each within the range of an f32.
    #[serde(default, deserialize_with = "json::embedding")]
    #[schema(schema_with = embedding_schema)]
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertItemsRequest {
    #[serde(deserialize_with = "json::items")]
    pub items: Vec<ItemIn>,
    #[serde(default)]
    pub durability: DurabilityIn,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct UpsertItemsResponse {
    pub upserted: usize,
    /// Items that came without a SemID and got one from the codebook.
    pub semids_assigned: usize,
}

/// A catalog item as stored (its embedding dequantised from int8).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ItemOut {
    pub id: u64,
    pub category: u32,
    pub semid: Option<Vec<u16>>,
    pub embedding: Option<Vec<f32>>,
}

/// Which retrieval the General Search Unit uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GsuIn {
    /// By Semantic-ID prefix (the engine's bitmaps).
    #[default]
    Hard,
    /// By cosine between embeddings.
    Soft,
}

impl From<GsuIn> for Retrieval {
    fn from(g: GsuIn) -> Self {
        match g {
            GsuIn::Hard => Retrieval::Hard,
            GsuIn::Soft => Retrieval::Soft,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    #[serde(deserialize_with = "json::int")]
    pub user: u64,
    /// Item ids to score (at most `limits.max_candidates`). Ids the catalog does not hold are
    /// scored as cold items and marked `in_catalog: false`.
    #[serde(deserialize_with = "json::candidates")]
    pub candidates: Vec<u64>,
    #[serde(default)]
    pub gsu: GsuIn,
    /// Score as of this time (ms): only events strictly before it are seen. Default: now.
    #[serde(default, deserialize_with = "json::opt_int")]
    pub as_of: Option<i64>,
    /// Return the behaviours the GSU retrieved for each candidate.
    #[serde(default)]
    pub explain: bool,
    /// The domain (scenario, surface) the candidates are shown in. Multi-domain models use it
    /// to pick their gates and tower; an unknown domain is scored as the largest training
    /// domain. Default 0.
    #[serde(default, deserialize_with = "json::int")]
    #[schema(maximum = 65535)]
    pub domain: u16,
}

/// A retrieved behaviour.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct HitOut {
    pub ts: i64,
    pub item: u64,
    pub action: u8,
    pub domain: u16,
    /// SemID levels shared with the target (hard retrieval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<u8>,
    /// Cosine with the target (soft retrieval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CandidateOut {
    pub item: u64,
    /// Predicted click probability.
    pub score: f32,
    pub in_catalog: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieved: Option<Vec<HitOut>>,
}

/// Where the request's time went, in microseconds.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct TimingsOut {
    pub read: f64,
    pub retrieve: f64,
    pub features: f64,
    pub esu: f64,
    pub total: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ScoreResponse {
    /// The model that produced these scores (name and weights checksum).
    pub model_version: String,
    pub model: String,
    /// The retrieval that fed the model's GSU; absent for models without one.
    pub gsu: Option<GsuIn>,
    /// The time scored at (ms).
    pub at: i64,
    /// The user's events before `at`.
    pub history_events: usize,
    /// One per candidate, in request order.
    pub scores: Vec<CandidateOut>,
    pub timings_us: TimingsOut,
}

/// The target of a retrieval: exactly one of `item`, `semid` (hard) or `embedding` (soft).
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrieveRequest {
    #[serde(deserialize_with = "json::int")]
    pub user: u64,
    #[serde(default)]
    pub mode: GsuIn,
    /// How many behaviours (1 to `limits.max_k`).
    #[serde(deserialize_with = "json::int")]
    pub k: usize,
    #[serde(default, deserialize_with = "json::opt_int")]
    pub as_of: Option<i64>,
    #[serde(default, deserialize_with = "json::opt_int")]
    pub item: Option<u64>,
    /// Hard retrieval only.
    #[serde(default, deserialize_with = "json::semid")]
    #[schema(schema_with = semid_schema)]
    pub semid: Option<Vec<u16>>,
    /// Soft retrieval only.
    #[serde(default, deserialize_with = "json::embedding")]
    #[schema(schema_with = embedding_schema)]
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct RetrieveResponse {
    pub hits: Vec<HitOut>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only events with `ts >= since`.
    #[serde(default, deserialize_with = "json::opt_digits")]
    pub since: Option<i64>,
    /// Only events with `ts < as_of`.
    #[serde(default, deserialize_with = "json::opt_digits")]
    pub as_of: Option<i64>,
    /// The newest `limit` events (default 1000, at most `limits.max_history_limit`).
    #[serde(default, deserialize_with = "json::opt_digits")]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct HistoryResponse {
    pub user: u64,
    /// Oldest first.
    pub events: Vec<EventOut>,
    /// Events before `as_of` (all retained events without it), before `since` and `limit`.
    pub visible_events: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct DeleteResponse {
    /// Whether the user existed.
    pub deleted: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct StatsResponse {
    pub users: u64,
    pub events: u64,
    pub pending_events: u64,
    pub items: u64,
    pub segments: u64,
    pub segment_file_bytes: u64,
    pub disk_bytes: u64,
    /// Live bytes per column of the segment files.
    pub column_bytes: std::collections::BTreeMap<String, u64>,
    pub compactions: u64,
    pub last_background_error: Option<String>,
    /// Set when opening the database found a torn or damaged record in RocksDB's write-ahead
    /// log and recovered to the point before it (writes from that record on were dropped).
    pub wal_damage: Option<String>,
    pub model_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// The name of a checkpoint directory under the configured `model_dir`; without it, the
    /// configured `model` is loaded again.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")]
    pub model: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ReloadResponse {
    pub model_version: String,
    pub previous: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CompactResponse {
    pub users_written: u64,
    pub events_written: u64,
    pub segments_written: u64,
    pub segments_removed: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    /// A new directory under the configured `backup_dir`: letters, digits, `-`, `_`, `.`
    /// (not starting with `.`), at most 100 characters.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}$")]
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct CheckpointResponse {
    pub path: String,
    pub segments: u64,
    pub segment_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct HealthResponse {
    pub status: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
pub struct ReadyResponse {
    pub ready: bool,
    pub model_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A SemID from request codes (the engine checks levels and code range).
pub fn semid(codes: &[u16]) -> Result<SemId, ApiError> {
    SemId::new(codes).map_err(ApiError::from)
}
