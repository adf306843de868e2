//! Prometheus metrics (OpenMetrics text at `GET /metrics`): requests and their latency per
//! route, events ingested, items upserted, requests shed or timed out, admission permits held,
//! the engine's O(1) counters (users, pending events, segments, compactions) read at each
//! scrape, and whether open recovered past damage in RocksDB's write-ahead log.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

fn latency_histogram() -> Histogram {
    // 100 us to ~6.5 s.
    Histogram::new(exponential_buckets(1e-4, 2.0, 17))
}

/// The server's Prometheus registry and what it counts.
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub events_ingested: Counter,
    pub items_upserted: Counter,
    pub shed: Counter,
    pub timed_out: Counter,
    in_flight: Gauge<i64, AtomicI64>,
    admitted: Gauge<i64, AtomicI64>,
    wal_damage: Gauge<i64, AtomicI64>,
    users: Gauge<i64, AtomicI64>,
    pending_events: Gauge<i64, AtomicI64>,
    segments: Gauge<i64, AtomicI64>,
    cache_bytes: Gauge<i64, AtomicI64>,
    compactions: Counter,
    compactions_seen: AtomicU64,
}

impl ServerMetrics {
    pub fn new(db: &siren_engine::Db) -> ServerMetrics {
        let mut registry = Registry::with_prefix("siren");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let m = ServerMetrics {
            requests: requests.clone(),
            latency: latency.clone(),
            events_ingested: Counter::default(),
            items_upserted: Counter::default(),
            shed: Counter::default(),
            timed_out: Counter::default(),
            in_flight: Gauge::default(),
            admitted: Gauge::default(),
            wal_damage: Gauge::default(),
            users: Gauge::default(),
            pending_events: Gauge::default(),
            segments: Gauge::default(),
            cache_bytes: Gauge::default(),
            compactions: Counter::default(),
            compactions_seen: AtomicU64::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests,
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency,
        );
        registry.register(
            "events_ingested",
            "Events stored through the API",
            m.events_ingested.clone(),
        );
        registry.register(
            "items_upserted",
            "Catalog items stored through the API",
            m.items_upserted.clone(),
        );
        registry.register(
            "requests_shed",
            "Requests answered 503 because the server was at its concurrency limit",
            m.shed.clone(),
        );
        registry.register(
            "requests_timed_out",
            "Requests answered 503 at their deadline, before any write of theirs started",
            m.timed_out.clone(),
        );
        registry.register(
            "admitted_requests",
            "Admission permits held: /v1 requests being served, and the work of timed-out reads \
             still running",
            m.admitted.clone(),
        );
        registry.register(
            "wal_damage",
            "1 if opening the database found a torn or damaged record in RocksDB's write-ahead log \
             and recovered to the point before it (writes from it on were dropped; the log says \
             more), else 0",
            m.wal_damage.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "Requests being served (this scrape included)",
            m.in_flight.clone(),
        );
        registry.register("users", "Users with events", m.users.clone());
        registry.register(
            "pending_events",
            "Events in the write path, not yet compacted",
            m.pending_events.clone(),
        );
        registry.register("segments", "Live segment files", m.segments.clone());
        registry.register(
            "decoded_cache_bytes",
            "Memory held by the engine's cache of decoded blocks and prefix bitmaps",
            m.cache_bytes.clone(),
        );
        registry.register(
            "compactions",
            "Compactions that changed something (background and requested)",
            m.compactions.clone(),
        );
        m.wal_damage.set(i64::from(db.wal_damage().is_some()));
        ServerMetrics { registry, ..m }
    }

    /// The OpenMetrics text, with the engine's counters and the permits held (`admitted`) read
    /// now.
    pub fn render(&self, db: &siren_engine::Db, admitted: usize) -> String {
        self.admitted.set(admitted as i64);
        let c = db.counters();
        self.users.set(c.users as i64);
        self.pending_events.set(c.pending_events as i64);
        self.segments.set(c.segments as i64);
        self.cache_bytes.set(c.cache_bytes as i64);
        let before = self.compactions_seen.swap(c.compactions, Ordering::Relaxed);
        self.compactions
            .inc_by(c.compactions.saturating_sub(before));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware: count and time every request by its route template.
pub async fn track(State(m): State<Arc<ServerMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let start = Instant::now();
    m.in_flight.inc();
    let resp = next.run(req).await;
    m.in_flight.dec();
    m.latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}
