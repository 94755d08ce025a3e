//! What every request handler shares: the connections, the settings, the uploads in progress.

use std::sync::Arc;

use jobs::db::Db;
use jobs::health::Probe;
use jobs::queue::Queues;
use jobs::storage::Storage;
use jobs::BatchId;

/// How long results are kept, as the pages say it ("one hour"), from `RESULT_TTL_SECONDS`; set
/// once, when the state is made.
static KEPT_FOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// How long results are kept ("one hour"): every page's footer and every "expired" message.
pub fn kept_for() -> &'static str {
    KEPT_FOR.get().map_or("a while", String::as_str)
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub storage: Storage,
    pub queues: Queues,
    pub settings: Arc<jobs::Settings>,
    /// Batches this process is receiving right now (their progress is reported to Postgres).
    pub uploads: jobs::InProgress<BatchId>,
    /// Sends the images of uploads still arriving to the workers, as they are stored.
    pub dispatch: jobs::dispatch::Soon,
    /// One permit per upload received at once (`MAX_CONCURRENT_UPLOADS`).
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    /// Batch changes heard from Postgres, for the live streams.
    pub live: crate::live::Live,
    /// The preview's sample, turns and prepared pipelines.
    pub previews: Arc<crate::preview::Previews>,
}

impl AppState {
    /// Connects to Postgres and Redis, waiting for them when they are not up yet (and failing at
    /// once when they refuse this configuration).
    pub async fn connect(settings: jobs::Settings) -> anyhow::Result<Self> {
        let _ = KEPT_FOR.set(jobs::config::human_duration(settings.result_ttl_seconds));
        let db = jobs::connect_db(settings.database_url(), settings.database_pool_size).await?;
        let conn = jobs::connect_redis(settings.redis_url()).await?;
        let queues = Queues::with_connection(conn, &settings.queue_prefix, 1);
        let storage = Storage::new(&settings);
        let dispatch =
            jobs::dispatch::Soon::spawn(db.clone(), queues.clone(), settings.dispatch_policy());
        let live = crate::live::Live::start(db.clone());
        let preview_settings = settings.clone();
        let previews =
            tokio::task::spawn_blocking(move || crate::preview::Previews::new(&preview_settings))
                .await?;
        Ok(Self {
            live,
            previews: Arc::new(previews),
            upload_slots: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_uploads as usize,
            )),
            dispatch,
            db,
            storage,
            queues,
            settings: Arc::new(settings),
            uploads: jobs::InProgress::default(),
        })
    }

    /// Asks Postgres, Redis and S3 whether they answer (each within 2 s).
    pub async fn probe(&self) -> Probe {
        Probe::run(&self.db, &self.queues, &self.storage).await
    }

    /// Reports progress on the uploads in hand every quarter of UPLOAD_STALE_SECONDS, so that
    /// the reconciler fails only the uploads of a `web` that died.
    pub async fn report_uploads(self) {
        let every = self.settings.upload_stale() / 4;
        loop {
            tokio::time::sleep(every).await;
            let batches = self.uploads.ids();
            if batches.is_empty() {
                continue;
            }
            if let Err(e) = jobs::db::touch_uploads(&self.db, &batches).await {
                tracing::warn!(error = %e, "cannot report upload progress");
            }
        }
    }
}
