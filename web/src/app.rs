//! Application state and the router.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use jobs::db::Db;
use jobs::health::Probe;
use jobs::queue::Queues;
use jobs::storage::Storage;
use jobs::BatchId;

use crate::{api, pages};

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
            jobs::dispatch::Soon::spawn(db.clone(), queues.clone(), settings.dispatch_window);
        Ok(Self {
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

pub fn router(state: AppState) -> Router {
    // Upload bodies must keep a pace (UPLOAD_MIN_BYTES_PER_SECOND over UPLOAD_WINDOW_SECONDS).
    let window = Duration::from_secs(state.settings.upload_window_seconds);
    let min_rate = state.settings.upload_min_bytes_per_second;
    let paced = axum::middleware::map_request(move |request: axum::extract::Request| async move {
        crate::pace::pace(request, window, min_rate)
    });
    Router::new()
        .route("/", get(pages::index))
        .route("/batches", post(pages::submit).layer(paced.clone()))
        .route("/batches/{id}", get(pages::batch))
        .route("/batches/{id}/download", get(pages::download))
        .route("/static/app.js", get(pages::script))
        .route("/static/app.css", get(pages::style))
        .route("/api/batches", post(api::submit).layer(paced))
        .route("/api/batches/{id}", get(api::status))
        .route("/api/tasks", get(api::tasks))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .fallback(pages::not_found)
        // Uploads are counted and limited as they stream (MAX_BATCH_BYTES), not buffered.
        .layer(DefaultBodyLimit::disable())
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                 object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
            ),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
