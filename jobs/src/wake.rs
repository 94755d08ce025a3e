//! Waking idle queue workers at once instead of at their next poll. Whoever pushes jobs
//! publishes one message on `{prefix}:wake` (the queue's name); every worker listens on that
//! channel and wakes the backend of that queue, which then fetches straight away. A worker that
//! finishes a job wakes its own backend too, so a free slot is filled without waiting for a
//! poll. Polling stays as the safety net: a lost message, or Redis restarting, costs at most
//! one poll interval.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};

/// The channel whose messages name the queue that has new jobs.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:wake")
}

/// The wake-ups of one queue in one process: any number of streams (one per run of the queue's
/// worker), all woken by [`Wake::signal`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Wake(Arc<Mutex<Vec<Weak<Inner>>>>);

#[derive(Default)]
struct Inner {
    waker: AtomicWaker,
    set: AtomicBool,
}

impl Wake {
    /// A new stream of wake-ups, for a worker's poll strategy.
    pub fn stream(&self) -> WakeStream {
        let inner = Arc::new(Inner::default());
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&inner));
        WakeStream(inner)
    }

    /// Wakes every live stream.
    pub fn signal(&self) {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for inner in all.iter().filter_map(Weak::upgrade) {
            inner.set.store(true, Ordering::Release);
            inner.waker.wake();
        }
    }
}

/// Yields once per wake-up (several wake-ups before a poll count as one).
pub struct WakeStream(Arc<Inner>);

impl Stream for WakeStream {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let inner = &self.0;
        if inner.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Some(()));
        }
        inner.waker.register(cx.waker());
        if inner.set.swap(false, Ordering::AcqRel) {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// Listens on the wake channel until the process ends, calling `on_message` with each queue
/// name; reconnects (every second) when Redis goes away.
pub async fn listen(redis_url: String, prefix: String, on_message: impl Fn(&str)) {
    let channel = channel(&prefix);
    loop {
        let result: redis::RedisResult<()> = async {
            let client = redis::Client::open(redis_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                if let Ok(queue) = message.get_payload::<String>() {
                    on_message(&queue);
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "wake channel unavailable; polling meanwhile");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
