//! Live progress: `GET /api/batches/{id}/stream`, Server-Sent Events fed by Postgres
//! `LISTEN/NOTIFY`.
//!
//! Every change of a batch's row makes Postgres send its id on the `watermark_batch` channel (a
//! trigger; see the migration `events_workers_webhooks`). Each `web` process holds one listening
//! connection ([`Live::start`]), reconnecting when it breaks, and wakes the streams that follow
//! that batch. A stream then sends the batch as `GET /api/batches/{id}` shows it (an `event:
//! status`): one at once, then after each change, at most one per [`MIN_GAP`] (a burst of
//! changes becomes one event), and after [`FALLBACK`] without news in any case, so that a missed
//! notification (the listener reconnecting) costs a few seconds, not the page. It ends after a
//! final status (done, failed, expired), or when the process stops.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use jobs::db::Db;
use jobs::view::BatchView;
use jobs::BatchId;

use crate::api::ApiError;
use crate::error::AppError;
use crate::state::AppState;

/// The channel the `batch_changed` trigger notifies, with the batch's id as the payload.
pub const CHANNEL: &str = "watermark_batch";
/// Least time between two events of one stream: changes within it are sent together.
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// A stream looks at its batch this often even without a notification.
pub const FALLBACK: Duration = Duration::from_secs(3);
/// ... and this often while the listening connection is down.
const FALLBACK_UNLISTENED: Duration = Duration::from_secs(1);
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a browser waits before it reconnects a stream that broke.
const RETRY: Duration = Duration::from_secs(2);
/// Longest pause between two attempts to listen again.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// The batches followed in this process, and the connection that hears of their changes.
#[derive(Clone, Default)]
pub struct Live {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// One sender per batch that some stream follows; its value counts the notifications.
    batches: Mutex<HashMap<BatchId, watch::Sender<u64>>>,
    /// Bumped when notifications may have been missed (the listener connected again): every
    /// stream looks again.
    resync: watch::Sender<u64>,
    /// The listening connection is up.
    listening: AtomicBool,
    /// Cancelled when the process stops: every stream ends, so that the server can.
    closing: CancellationToken,
}

impl Live {
    /// Starts listening on `db` (on a task of its own, reconnecting whenever the connection
    /// fails); the streams work from the start, by their fallback until the listener is up.
    pub fn start(db: Db) -> Self {
        let live = Self::default();
        tokio::spawn(live.clone().listen(db));
        live
    }

    /// Ends every stream and stops listening (the process is stopping).
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Whether the listening connection is up.
    pub fn listening(&self) -> bool {
        self.inner.listening.load(Ordering::Relaxed)
    }

    /// Follows batch `id` until the subscription is dropped.
    pub fn subscribe(&self, id: BatchId) -> Subscription {
        let changes = self
            .inner
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            live: self.clone(),
            id,
            changes: Some(changes),
            resync: self.inner.resync.subscribe(),
        }
    }

    /// A notification: `payload` is the id of a batch that changed.
    pub fn notify(&self, payload: &str) {
        let Ok(id) = payload.parse::<BatchId>() else {
            tracing::debug!(payload, "a notification that is not a batch id");
            return;
        };
        let batches = self.inner.batches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = batches.get(&id) {
            sender.send_modify(|n| *n += 1);
        }
    }

    /// How many batches are followed right now (for tests).
    pub fn followed(&self) -> usize {
        self.inner
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn resync(&self) {
        self.inner.resync.send_modify(|n| *n += 1);
    }

    async fn listen(self, db: Db) {
        let closing = self.inner.closing.clone();
        let mut pause = Duration::from_secs(1);
        loop {
            let mut connected = false;
            if let Err(e) = self.listen_once(&db, &mut connected).await {
                tracing::warn!(error = %e, "not listening for batch changes; streams fall back to looking every second");
            }
            self.inner.listening.store(false, Ordering::Relaxed);
            if connected {
                pause = Duration::from_secs(1);
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = closing.cancelled() => return,
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Listens until the connection fails for good (`Err`) or the process stops (`Ok`).
    async fn listen_once(&self, db: &Db, connected: &mut bool) -> Result<(), sqlx::Error> {
        let closing = &self.inner.closing;
        let mut listener = tokio::select! {
            listener = PgListener::connect_with(db) => listener?,
            () = closing.cancelled() => return Ok(()),
        };
        listener.listen(CHANNEL).await?;
        *connected = true;
        self.inner.listening.store(true, Ordering::Relaxed);
        tracing::info!(channel = CHANNEL, "listening for batch changes");
        // Changes made before now were not heard.
        self.resync();
        loop {
            let next = tokio::select! {
                next = listener.try_recv() => next?,
                () = closing.cancelled() => return Ok(()),
            };
            match next {
                Some(notification) => self.notify(notification.payload()),
                None => {
                    // The connection was lost and made again: what happened between is lost.
                    tracing::warn!("the listening connection was lost and is back");
                    self.resync();
                }
            }
        }
    }
}

/// News of one batch, for as long as it is held.
pub struct Subscription {
    live: Live,
    id: BatchId,
    changes: Option<watch::Receiver<u64>>,
    resync: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits until the batch may have changed since [`Subscription::seen`], or `limit` passes.
    async fn changed(&mut self, limit: Duration) {
        let changes = self.changes.as_mut().expect("held until dropped");
        tokio::select! {
            _ = changes.changed() => {}
            _ = self.resync.changed() => {}
            () = tokio::time::sleep(limit) => {}
        }
    }

    /// Everything notified so far is about to be looked at.
    fn seen(&mut self) {
        if let Some(changes) = self.changes.as_mut() {
            changes.borrow_and_update();
        }
        self.resync.borrow_and_update();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut batches = self
            .live
            .inner
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Dropped under the lock, so that two subscriptions ending at once cannot both see the
        // other still there.
        drop(self.changes.take());
        if batches
            .get(&self.id)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            batches.remove(&self.id);
        }
    }
}

/// `GET /api/batches/{id}/stream`: the batch's status as Server-Sent Events (`event: status`,
/// the JSON of `GET /api/batches/{id}`), until it is final. `404` unknown, `410` expired.
#[utoipa::path(
    get,
    path = "/api/batches/{id}/stream",
    tag = "batches",
    summary = "A batch's status as Server-Sent Events",
    description = "`event: status` whose data is the JSON of `GET /api/batches/{id}` (a `BatchView`), sent at once, then after each change (at most 4 a second) and every 3 s without news; the stream ends after `done`, `failed` or `expired`. Keep-alive comments every 15 s; `X-Accel-Buffering: no`.",
    params(("id" = String, Path, format = Uuid, description = "The batch's id")),
    responses(
        (status = 200, description = "The event stream; each `status` event's data is a BatchView", body = BatchView, content_type = "text/event-stream"),
        (status = 404, description = "No batch with this id (`not_found`)", body = crate::api::ErrorBody),
        (status = 410, description = "The batch has expired (`expired`, with `status`)", body = crate::api::ErrorBody),
        (status = 503, description = "A dependency is down or too many requests at once (`unavailable`, `busy`)", body = crate::api::ErrorBody, headers(("Retry-After" = u32, description = "Seconds after which to try again"))),
        (status = 500, description = "Something went wrong on our side (`internal`)", body = crate::api::ErrorBody),
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let id: BatchId = id.parse().map_err(|_| AppError::NotFound)?;
    // Subscribed before the first look, so that no change falls between the two.
    let mut subscription = state.live.subscribe(id);
    subscription.seen();
    let first = jobs::view::load(&state.db, id, true)
        .await?
        .ok_or(AppError::NotFound)?;
    if first.status == jobs::BatchStatus::Expired {
        return Err(AppError::Gone.into());
    }
    let follow = Follow {
        state,
        id,
        subscription,
        first: Some(first),
        last: None,
        sent_at: None,
        finished: false,
    };
    let mut response = Sse::new(events(follow))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // nginx would otherwise hold the events back in its buffer.
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}

/// One stream's state.
struct Follow {
    state: AppState,
    id: BatchId,
    subscription: Subscription,
    /// The view loaded by the handler, sent first.
    first: Option<BatchView>,
    /// The JSON sent last (nothing is sent again when nothing changed).
    last: Option<String>,
    sent_at: Option<Instant>,
    finished: bool,
}

fn events(follow: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(follow, |mut follow| async move {
        let event = follow.next().await?;
        Some((Ok(event), follow))
    })
}

impl Follow {
    /// The next event, or `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let closing = self.state.live.inner.closing.clone();
        loop {
            let view = match self.first.take() {
                Some(view) => view,
                None => {
                    let fallback = if self.state.live.listening() {
                        FALLBACK
                    } else {
                        FALLBACK_UNLISTENED
                    };
                    let gap = self.sent_at.map(|at| at + MIN_GAP);
                    let wait = async {
                        self.subscription.changed(fallback).await;
                        // Changes during the gap are folded into one look.
                        if let Some(gap) = gap {
                            tokio::time::sleep_until(gap).await;
                        }
                    };
                    tokio::select! {
                        () = wait => {}
                        () = closing.cancelled() => return None,
                    }
                    self.subscription.seen();
                    match jobs::view::load(&self.state.db, self.id, true).await {
                        Ok(Some(view)) => view,
                        // Gone altogether (a refused upload): nothing more to say.
                        Ok(None) => return None,
                        Err(e) => {
                            tracing::warn!(batch = %self.id, error = %e, "a stream cannot load its batch; trying again");
                            self.sent_at = Some(Instant::now());
                            continue;
                        }
                    }
                }
            };
            let json = match serde_json::to_string(&view) {
                Ok(json) => json,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialise a batch");
                    return None;
                }
            };
            if self.last.as_deref() == Some(json.as_str()) {
                continue;
            }
            let mut event = Event::default().event("status").data(&json);
            if self.last.is_none() {
                event = event.retry(RETRY);
            }
            self.last = Some(json);
            self.sent_at = Some(Instant::now());
            self.finished = view.status.is_final();
            return Some(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notifications_reach_the_followers_of_their_batch_only_and_are_forgotten_after() {
        let live = Live::default();
        let (a, b) = (BatchId::new(), BatchId::new());
        let mut first = live.subscribe(a);
        let mut second = live.subscribe(a);
        let mut other = live.subscribe(b);
        for s in [&mut first, &mut second, &mut other] {
            s.seen();
        }
        assert_eq!(live.followed(), 2);
        live.notify(&a.to_string());
        live.notify(&a.to_string()); // a burst is one wake-up
        live.notify("not an id");
        let quick = Duration::from_millis(200);
        let started = Instant::now();
        first.changed(Duration::from_secs(5)).await;
        second.changed(Duration::from_secs(5)).await;
        assert!(started.elapsed() < quick, "woken by the notification");
        first.seen();
        let started = Instant::now();
        first.changed(quick).await;
        assert!(
            started.elapsed() >= quick,
            "nothing new: waits for the limit"
        );
        let started = Instant::now();
        other.changed(quick).await;
        assert!(
            started.elapsed() >= quick,
            "another batch's news is not its own"
        );

        // A reconnection wakes everyone.
        live.resync();
        let started = Instant::now();
        other.changed(Duration::from_secs(5)).await;
        assert!(started.elapsed() < quick);

        drop(first);
        assert_eq!(live.followed(), 2, "a still follows a");
        drop(second);
        drop(other);
        assert_eq!(
            live.followed(),
            0,
            "nothing kept for batches no one follows"
        );
    }
}
