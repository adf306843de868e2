//! Admission of `/v1` requests: a concurrency permit and a deadline, kept so that a timeout
//! answer is true.
//!
//! A request gets a permit at once or is shed (503 `overloaded`); it must be answered by its
//! deadline (`limits.request_timeout_ms`). Engine and model calls are blocking, so handlers run
//! them on tokio's blocking pool through their [`Ticket`], which the blocking work holds until
//! it ends, with the permit in it:
//!
//! - **Reads** ([`Ticket::read`]) are answered 503 `timeout` at the deadline. The blocking work
//!   cannot be cancelled midway, so it runs to its end holding the permit: a timed-out read
//!   still counts against `limits.max_in_flight` until it stops using the machine.
//! - **Writes** ([`Ticket::write`]) either finish or are not applied, and the answer says which.
//!   Before a write starts, the deadline answers 503 `timeout` and nothing is applied. Once it
//!   has started, the request waits for it past the deadline and answers with its outcome.
//!   (Before: a write was answered 503 at the deadline while it ran on and completed, so a
//!   client that retried applied it twice, and its permit was released while it still ran.)
//!
//! A client that gives up itself (its own timeout, a dropped connection) cannot know whether a
//! write it sent was applied; it retries appends with the same `source` name and `seq`, which
//! the engine applies at most once (docs/ARCHITECTURE.md, "Timeouts and retries").

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Limits;
use crate::error::ApiError;

/// The permits and the time limit of the `/v1` routes.
pub struct Admission {
    permits: Arc<Semaphore>,
    max: usize,
    timeout: Duration,
}

impl Admission {
    pub fn new(limits: &Limits) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(limits.max_in_flight)),
            max: limits.max_in_flight,
            timeout: Duration::from_millis(limits.request_timeout_ms),
        }
    }

    /// Permits held now: requests being served, and the work of timed-out reads still running.
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    /// Wait until every permit is back (all work has ended), at most `limit`; false if some work
    /// still runs then.
    pub async fn drained(&self, limit: Duration) -> bool {
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        tokio::time::timeout(limit, self.permits.acquire_many(all))
            .await
            .is_ok_and(|p| p.is_ok())
    }
}

/// A request's admission: its permit and deadline. Cloned into the blocking work it starts, so
/// that the permit is released only when both the request and its work have ended.
#[derive(Clone)]
pub struct Ticket(Arc<TicketInner>);

struct TicketInner {
    _permit: OwnedSemaphorePermit,
    deadline: Instant,
    write_started: AtomicBool,
    /// Its blocking work was refused because it would have started after the deadline.
    started_late: AtomicBool,
}

impl Ticket {
    /// Run a read on the blocking pool. At the deadline the request is answered 503 and the
    /// read runs on to its end, holding the permit.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.run(f).await
    }

    /// Run a write on the blocking pool. From here on the request is answered with the write's
    /// outcome, however long it takes; if the blocking pool starts it only after the deadline,
    /// it is not applied and the answer says so.
    pub async fn write<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        self.0.write_started.store(true, Ordering::SeqCst);
        self.run(f).await
    }

    /// An asynchronous write (cluster mode publishes to the log), with [`Ticket::write`]'s
    /// rule: refused at the deadline if it has not started, answered with its outcome once it
    /// has. The handler's task polls it, so the deadline cannot cut it once the flag is set.
    pub async fn write_async<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        if Instant::now() >= self.0.deadline {
            self.0.started_late.store(true, Ordering::SeqCst);
            return Err(ApiError::timeout());
        }
        self.0.write_started.store(true, Ordering::SeqCst);
        f.await
    }

    async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let ticket = self.clone();
        tokio::task::spawn_blocking(move || {
            if Instant::now() >= ticket.0.deadline {
                ticket.0.started_late.store(true, Ordering::SeqCst);
                return Err(ApiError::timeout());
            }
            let answer = f();
            drop(ticket);
            answer
        })
        .await
        // A panic in the work becomes a 500 rather than taking the connection down.
        .map_err(|e| ApiError::internal(format!("the request's worker failed: {e}")))?
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Ticket {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Ticket, ApiError> {
        parts
            .extensions
            .get::<Ticket>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a /v1 handler ran without an admission ticket"))
    }
}

/// The work of the `/v1` middleware: shed without a free permit (calling `on_shed`), answer 503
/// at the deadline unless a write has started (calling `on_late` once a request was late).
pub async fn admit(
    admission: &Admission,
    mut req: Request,
    next: Next,
    on_shed: impl FnOnce(),
    on_late: impl FnOnce(),
) -> Response {
    let Ok(permit) = admission.permits.clone().try_acquire_owned() else {
        on_shed();
        return ApiError::overloaded().into_response();
    };
    let deadline = Instant::now() + admission.timeout;
    let ticket = Ticket(Arc::new(TicketInner {
        _permit: permit,
        deadline,
        write_started: AtomicBool::new(false),
        started_late: AtomicBool::new(false),
    }));
    req.extensions_mut().insert(ticket.clone());
    let work = next.run(req);
    tokio::pin!(work);
    let answer = tokio::select! {
        answer = &mut work => answer,
        () = tokio::time::sleep_until(deadline) => {
            if ticket.0.write_started.load(Ordering::SeqCst) {
                work.await
            } else {
                ticket.0.started_late.store(true, Ordering::SeqCst);
                ApiError::timeout().into_response()
            }
        }
    };
    // Counted once however it came about: here at the deadline, or by work refused because
    // the blocking pool reached it only after.
    if ticket.0.started_late.load(Ordering::SeqCst) {
        on_late();
    }
    answer
}
