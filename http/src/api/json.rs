//! JSON request bodies: read within the body limit, parsed with every count bounded as the
//! elements arrive, and integers accepted in every spelling JSON Schema's `integer` allows.
//!
//! Why not `axum::Json`: it collects the whole body and then builds every element before a
//! handler can look at the count, so a 16 MiB body of candidate ids (`0,0,0,...`) became eight
//! million `u64`s (64 MiB) before the candidate limit refused it. Here the deserialisers of the
//! counted fields ([`candidates`], [`events`], [`items`], [`semid`], [`embedding`]) stop at the
//! first element past the request's limit. A request thus holds at most its body (at most
//! `limits.max_body_bytes`, one buffer) and the parsed form of at most the limits' counts.
//!
//! serde gives a deserialiser no way to receive run-time settings, so the limits reach it
//! through a thread-local set for the duration of one synchronous `serde_json` parse
//! ([`parse`]); outside it (the CLI's JSON-lines import) nothing is bounded.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON request body, read and parsed as described in the module documentation; refusals are
/// [`ApiError`]s.
pub struct ApiJson<T>(pub T);

/// The counts a request body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    pub candidates: usize,
    pub events: usize,
    pub items: usize,
    /// SemID codes per SemID: the database's levels.
    pub semid_codes: usize,
    /// Values per embedding: the database's dimension.
    pub embedding_values: usize,
}

impl ParseLimits {
    pub fn of(state: &AppState) -> ParseLimits {
        let l = &state.config.limits;
        let o = state.db.options();
        ParseLimits {
            candidates: l.max_candidates,
            events: l.max_events_per_request,
            items: l.max_items_per_request,
            semid_codes: usize::from(o.semid_levels),
            embedding_values: o.embedding_dim as usize,
        }
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = read_body(req, state.config.limits.max_body_bytes).await?;
        parse(&bytes, ParseLimits::of(state)).map(ApiJson)
    }
}

/// `application/json`, or any `application/*+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the body is larger than the server's limit (limits.max_body_bytes)",
    )
}

/// The body in one buffer of at most `max` bytes (sized from `Content-Length` when given, so
/// that it is not regrown and copied as frames arrive).
async fn read_body(req: Request, max: usize) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut body: Body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("reading the body failed: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

struct ParseContext {
    limits: ParseLimits,
    /// Set by a bounded deserialiser that refused a count: the answer to give instead of
    /// serde's error.
    refusal: Option<ApiError>,
}

thread_local! {
    static CONTEXT: RefCell<Option<ParseContext>> = const { RefCell::new(None) };
}

/// Parse `bytes` as a `T` with the counts of `limits` enforced while parsing.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], limits: ParseLimits) -> Result<T, ApiError> {
    CONTEXT.with_borrow_mut(|c| {
        *c = Some(ParseContext {
            limits,
            refusal: None,
        })
    });
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => de.end().map(|()| v).map_err(|e| rejection("", &e)),
        Err(e) => Err(rejection(&e.path().to_string(), e.inner())),
    };
    let refusal = CONTEXT
        .with_borrow_mut(Option::take)
        .and_then(|c| c.refusal);
    match (parsed, refusal) {
        (_, Some(refusal)) => Err(refusal),
        (parsed, None) => parsed,
    }
}

/// serde's error as an answer, with the path of the field it is about (`events[3].action`).
fn rejection(path: &str, inner: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let at = match path {
        "" | "." => String::new(),
        p => format!("{p}: "),
    };
    match inner.classify() {
        Category::Data => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("the body does not match the request's schema: {at}{inner}"),
        ),
        Category::Syntax | Category::Eof | Category::Io => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {at}{inner}"),
        ),
    }
}

/// The counted things of a request body.
#[derive(Debug, Clone, Copy)]
enum Counted {
    Candidates,
    Events,
    Items,
    SemIdCodes,
    EmbeddingValues,
}

impl Counted {
    fn limit(self, l: &ParseLimits) -> usize {
        match self {
            Counted::Candidates => l.candidates,
            Counted::Events => l.events,
            Counted::Items => l.items,
            Counted::SemIdCodes => l.semid_codes,
            Counted::EmbeddingValues => l.embedding_values,
        }
    }

    /// The answer to a count over the limit: 422 for the configurable request limits, 400 for
    /// the shapes the database fixes.
    fn refusal(self, max: usize) -> ApiError {
        match self {
            Counted::Candidates => ApiError::too_many(format!(
                "more than {max} candidates; at most {max} per request (limits.max_candidates)"
            )),
            Counted::Events => ApiError::too_many(format!(
                "more than {max} events; at most {max} per request (limits.max_events_per_request)"
            )),
            Counted::Items => ApiError::too_many(format!(
                "more than {max} items; at most {max} per request (limits.max_items_per_request)"
            )),
            Counted::SemIdCodes => ApiError::invalid(format!(
                "a SemID has more than {max} codes; the database uses {max} levels"
            )),
            Counted::EmbeddingValues => ApiError::invalid(format!(
                "an embedding has more than {max} values; the database's dimension is {max}"
            )),
        }
    }
}

/// A sequence that refuses its element number `limit + 1` (no limit outside [`parse`]).
struct Bounded<E> {
    what: Counted,
    element: PhantomData<E>,
}

impl<'de, E: Deserialize<'de>> Visitor<'de> for Bounded<E> {
    type Value = Vec<E>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<E>, A::Error> {
        let max = CONTEXT.with_borrow(|c| c.as_ref().map(|c| self.what.limit(&c.limits)));
        let max = max.unwrap_or(usize::MAX);
        // serde's own cautious preallocation, never more than the limit.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max).min(4096));
        while let Some(e) = seq.next_element()? {
            if out.len() == max {
                let refusal = self.what.refusal(max);
                let message = refusal.message.clone();
                CONTEXT.with_borrow_mut(|c| {
                    if let Some(c) = c {
                        c.refusal = Some(refusal);
                    }
                });
                return Err(de::Error::custom(message));
            }
            out.push(e);
        }
        Ok(out)
    }
}

fn bounded<'de, D: Deserializer<'de>, E: Deserialize<'de>>(
    d: D,
    what: Counted,
) -> Result<Vec<E>, D::Error> {
    d.deserialize_seq(Bounded {
        what,
        element: PhantomData,
    })
}

/// `ScoreRequest::candidates`: at most `limits.max_candidates` ids.
pub fn candidates<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    let ids: Vec<Int<u64>> = bounded(d, Counted::Candidates)?;
    Ok(ids.into_iter().map(|i| i.0).collect())
}

/// `AppendRequest::events`: at most `limits.max_events_per_request`.
pub fn events<'de, D: Deserializer<'de>, E: Deserialize<'de>>(d: D) -> Result<Vec<E>, D::Error> {
    bounded(d, Counted::Events)
}

/// `UpsertItemsRequest::items`: at most `limits.max_items_per_request`.
pub fn items<'de, D: Deserializer<'de>, E: Deserialize<'de>>(d: D) -> Result<Vec<E>, D::Error> {
    bounded(d, Counted::Items)
}

/// An optional SemID: at most the database's levels of codes.
pub fn semid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u16>>, D::Error> {
    let codes: Option<BoundedSeq<Int<u16>, SemIdCodes>> = Option::deserialize(d)?;
    Ok(codes.map(|c| c.0.into_iter().map(|i| i.0).collect()))
}

/// An optional embedding: at most the database's dimension of values.
pub fn embedding<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f32>>, D::Error> {
    let values: Option<BoundedSeq<F32, EmbeddingValues>> = Option::deserialize(d)?;
    Ok(values.map(|v| v.0.into_iter().map(|x| x.0).collect()))
}

/// A JSON number within the range of an `f32` (beyond it, even by less than a rounding step,
/// it is refused rather than rounded or made infinite: the OpenAPI document says
/// `maximum: 3.4028234663852886e38`).
struct F32(f32);

struct F32Visitor;

impl Visitor<'_> for F32Visitor {
    type Value = F32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a number from {:e} to {:e}", f32::MIN, f32::MAX)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<F32, E> {
        if v.abs() <= f64::from(f32::MAX) {
            Ok(F32(v as f32))
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<F32, E> {
        self.visit_f64(v as f64)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<F32, E> {
        self.visit_f64(v as f64)
    }
}

impl<'de> Deserialize<'de> for F32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(F32Visitor)
    }
}

/// A bounded sequence as a type, so that `Option` can wrap it.
struct BoundedSeq<E, W>(Vec<E>, PhantomData<W>);
struct SemIdCodes;
struct EmbeddingValues;

trait Which {
    const WHAT: Counted;
}
impl Which for SemIdCodes {
    const WHAT: Counted = Counted::SemIdCodes;
}
impl Which for EmbeddingValues {
    const WHAT: Counted = Counted::EmbeddingValues;
}

impl<'de, E: Deserialize<'de>, W: Which> Deserialize<'de> for BoundedSeq<E, W> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        bounded(d, W::WHAT).map(|v| BoundedSeq(v, PhantomData))
    }
}

/// The integer types of request fields, with their ranges.
pub trait WholeNumber: Sized + Copy + TryFrom<i128> {
    const MIN: i128;
    const MAX: i128;
}

macro_rules! whole_numbers {
    ($($t:ty),*) => {
        $(impl WholeNumber for $t {
            const MIN: i128 = <$t>::MIN as i128;
            const MAX: i128 = <$t>::MAX as i128;
        })*
    };
}
whole_numbers!(u8, u16, u32, u64, i64, usize);

/// Below 2^53 every whole number has an exact `f64`, so `179.0` or `1.79e2` cannot stand for a
/// neighbouring integer. From 2^53 on the parser has already rounded such a spelling, so only
/// plain digits are exact there (RFC 7493, I-JSON, makes the same cut).
const EXACT_IN_F64: f64 = 9_007_199_254_740_992.0;

/// An integer field of a JSON body, in any spelling of a whole number: `179`, `179.0`,
/// `1.79e2` (plain digits only from 2^53 on). Not a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<T>(pub T);

struct IntVisitor<T>(PhantomData<T>);

impl<T: WholeNumber> IntVisitor<T> {
    fn fit<E: de::Error>(v: i128, unexpected: de::Unexpected) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::invalid_value(unexpected, &Self(PhantomData)))
    }
}

impl<T: WholeNumber> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an integer from {} to {}", T::MIN, T::MAX)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Self::fit(i128::from(v), de::Unexpected::Unsigned(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Self::fit(i128::from(v), de::Unexpected::Signed(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v.fract() != 0.0 || !v.is_finite() {
            return Err(E::invalid_value(de::Unexpected::Float(v), &self));
        }
        if v.abs() >= EXACT_IN_F64 {
            return Err(E::custom(format!(
                "{v:e} is not an integer this server can read exactly: integers from 2^53 on \
                 must be written in plain digits (and be {} to {})",
                T::MIN,
                T::MAX
            )));
        }
        // Exact: |v| < 2^53 and whole.
        Self::fit(v as i128, de::Unexpected::Float(v))
    }
}

impl<'de, T: WholeNumber> Deserialize<'de> for Int<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntVisitor(PhantomData)).map(Int)
    }
}

/// For `#[serde(deserialize_with = "json::int")]`.
pub fn int<'de, D: Deserializer<'de>, T: WholeNumber>(d: D) -> Result<T, D::Error> {
    Int::deserialize(d).map(|i| i.0)
}

/// For `#[serde(default, deserialize_with = "json::opt_int")]`: absent or `null` is `None`.
pub fn opt_int<'de, D: Deserializer<'de>, T: WholeNumber>(d: D) -> Result<Option<T>, D::Error> {
    Option::<Int<T>>::deserialize(d).map(|o| o.map(|i| i.0))
}

/// An integer in a path segment or a query value, written as a JSON integer: an optional `-`,
/// then `0` or digits without a leading zero. Rust's own parser would also take `+5`, which
/// the OpenAPI document does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digits<T>(pub T);

struct DigitsVisitor<T>(PhantomData<T>);

impl<T: WholeNumber> Visitor<'_> for DigitsVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an integer from {} to {} in digits", T::MIN, T::MAX)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        let digits = s.strip_prefix('-').unwrap_or(s);
        let canonical = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        canonical
            .then(|| s.parse::<i128>().ok())
            .flatten()
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
    }
}

impl<'de, T: WholeNumber> Deserialize<'de> for Digits<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(DigitsVisitor(PhantomData)).map(Digits)
    }
}

/// For `#[serde(default, deserialize_with = "json::opt_digits")]` on query parameters.
pub fn opt_digits<'de, D: Deserializer<'de>, T: WholeNumber>(d: D) -> Result<Option<T>, D::Error> {
    Digits::deserialize(d).map(|i| Some(i.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        candidates: 3,
        events: 2,
        items: 2,
        semid_codes: 3,
        embedding_values: 4,
    };

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(deserialize_with = "candidates")]
        ids: Vec<u64>,
        #[serde(default, deserialize_with = "semid")]
        semid: Option<Vec<u16>>,
        #[serde(default, deserialize_with = "opt_int")]
        at: Option<i64>,
        #[serde(default, deserialize_with = "int")]
        small: u8,
    }

    fn body(json: &str) -> Result<Body, ApiError> {
        parse(json.as_bytes(), LIMITS)
    }

    #[test]
    fn counts_are_refused_at_the_first_element_past_the_limit() {
        assert_eq!(body(r#"{"ids": [1, 2, 3]}"#).unwrap().ids, [1, 2, 3]);
        let e = body(r#"{"ids": [1, 2, 3, 4]}"#).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNPROCESSABLE_ENTITY, "too_many")
        );
        // The refusal comes at element 4 even when the rest is not even JSON.
        let e = body(r#"{"ids": [0,0,0,0,0,0 garbage"#).unwrap_err();
        assert_eq!(e.code, "too_many");
        let e = body(r#"{"ids": [], "semid": [1, 2, 3, 4]}"#).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_argument")
        );
        // The context is cleared: the next parse has its own.
        assert!(body(r#"{"ids": [1], "semid": null}"#)
            .unwrap()
            .semid
            .is_none());
    }

    #[test]
    fn integers_in_any_whole_spelling() {
        let b = body(r#"{"ids": [179.0, 1.79e2, 179], "at": -5e0, "small": 2.55e2}"#).unwrap();
        assert_eq!((b.ids, b.at, b.small), (vec![179; 3], Some(-5), 255));
        let b = body(r#"{"ids": [18446744073709551615]}"#).unwrap();
        assert_eq!(b.ids, [u64::MAX]);
        for bad in [
            r#"{"ids": [1.5]}"#,
            r#"{"ids": [-1]}"#,
            r#"{"ids": ["1"]}"#,
            r#"{"ids": [18446744073709551616]}"#,
            r#"{"ids": [9007199254740993.0]}"#,
            r#"{"ids": [], "small": 256}"#,
            r#"{"ids": [], "small": 1e3}"#,
        ] {
            let e = body(bad).unwrap_err();
            assert_eq!(e.code, "invalid_request", "{bad}: {}", e.message);
        }
        let e = body(r#"{"ids": [1], "unknown": 1}"#).unwrap_err();
        assert!(e.message.contains("unknown"), "{}", e.message);
        assert_eq!(body("{,}").unwrap_err().code, "invalid_json");
        assert_eq!(body(r#"{"ids": []} x"#).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn digits_are_json_integers() {
        let d = |s: &str| DigitsVisitor::<u64>(PhantomData).visit_str::<de::value::Error>(s);
        assert_eq!(d("0").unwrap(), 0);
        assert_eq!(d("18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            "",
            "+5",
            "-1",
            "007",
            "1.0",
            "1e3",
            " 1",
            "18446744073709551616",
        ] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
        let i = DigitsVisitor::<i64>(PhantomData).visit_str::<de::value::Error>("-42");
        assert_eq!(i.unwrap(), -42);
    }

    #[test]
    fn json_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&m)
        };
        assert!(h("application/json") && h("application/json; charset=utf-8"));
        assert!(h("Application/JSON") && h("application/merge-patch+json"));
        assert!(!h("text/json") && !h("application/jsonx") && !h("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
