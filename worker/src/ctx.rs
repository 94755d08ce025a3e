//! What every job handler, the dispatcher, the crons and the health endpoint share.

use std::sync::Arc;

use jobs::db::Db;
use jobs::domain::keys;
use jobs::queue::Queues;
use jobs::recent::Recent;
use jobs::storage::Storage;

use crate::isolate::Pool;

/// What every handler needs; cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    pub db: Db,
    pub storage: Storage,
    pub queues: Queues,
    pub settings: Arc<jobs::Settings>,
    pub worker: Arc<str>,
    /// The image child processes.
    pub pool: Arc<Pool>,
    /// The uploaded logos of the batches seen last, so that each is fetched once.
    pub logos: Arc<LogoCache>,
    /// Wake-ups of this worker's image queue workers (`jobs::wake`).
    pub wake_images: jobs::wake::Wake,
    /// The images this worker is processing right now, handed back to the dispatcher should
    /// the worker stop before it finishes them.
    pub in_hand: jobs::InProgress<jobs::ImageId>,
    /// Asks this worker's dispatcher for a dispatch now rather than at its next interval (an
    /// image just finished: the window has room). Requests made meanwhile coalesce into one.
    pub dispatch_now: Arc<tokio::sync::Notify>,
    /// Images may be waiting in Postgres for room in Redis: set by a dispatch that filled the
    /// window (or found it full) and by news of jobs pushed elsewhere, cleared by a dispatch
    /// that found nothing more. While set, every `concurrency`-th image this worker finishes asks
    /// for a dispatch.
    pub backlog: Arc<std::sync::atomic::AtomicBool>,
    /// Images this worker finished since its last dispatch: with a backlog, every
    /// `concurrency`-th asks for a dispatch (the window holds a slot's worth more than that).
    pub finished_since_dispatch: Arc<std::sync::atomic::AtomicUsize>,
    /// This worker's image slots.
    pub concurrency: usize,
}

impl Ctx {
    /// Hands the images still in hand back to the dispatcher (a stopping worker whose grace
    /// period ran out), so that another worker takes them at once rather than after Redis
    /// notices this one is gone. Returns how many went back.
    pub async fn hand_back_unfinished(&self) -> usize {
        let unfinished = self.in_hand.ids();
        if unfinished.is_empty() {
            return 0;
        }
        match jobs::db::hand_back(&self.db, &unfinished).await {
            Ok(n) => {
                tracing::info!(images = n, "handed unfinished images back to the queue");
                n as usize
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not hand images back; the reconciler will");
                0
            }
        }
    }
}

/// How many batches' logos a worker keeps.
const LOGOS_KEPT: usize = 8;

/// The uploaded logos of the last few batches, fetched from storage once each.
pub struct LogoCache(tokio::sync::Mutex<Recent<jobs::BatchId, bytes::Bytes>>);

impl Default for LogoCache {
    fn default() -> Self {
        Self(tokio::sync::Mutex::new(Recent::new(LOGOS_KEPT)))
    }
}

impl LogoCache {
    pub async fn get(
        &self,
        storage: &Storage,
        batch: jobs::BatchId,
    ) -> Result<bytes::Bytes, jobs::storage::StorageError> {
        if let Some(logo) = self.0.lock().await.get(&batch) {
            return Ok(logo);
        }
        let logo = storage.get(&keys::logo(batch)).await?;
        self.0.lock().await.put(batch, logo.clone());
        Ok(logo)
    }
}
