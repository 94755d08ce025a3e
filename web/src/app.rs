//! Application state and the router.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::routing::{get, post};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use jobs::db::Db;
use jobs::queue::Queues;
use jobs::storage::Storage;

use crate::{api, pages};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub storage: Storage,
    pub queues: Queues,
    pub settings: Arc<jobs::Settings>,
}

impl AppState {
    pub async fn connect(settings: jobs::Settings) -> anyhow::Result<Self> {
        let db = jobs::db::connect(settings.database_url())
            .await
            .context("cannot reach Postgres (DATABASE_URL)")?;
        let queues = Queues::connect(settings.redis_url(), &settings.queue_prefix)
            .await
            .context("cannot reach Redis (REDIS_URL)")?;
        let storage = Storage::new(&settings);
        Ok(Self {
            db,
            storage,
            queues,
            settings: Arc::new(settings),
        })
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/batches", post(pages::submit))
        .route("/batches/{id}", get(pages::batch))
        .route("/batches/{id}/download", get(pages::download))
        .route("/static/app.js", get(pages::script))
        .route("/static/app.css", get(pages::style))
        .route("/api/batches", post(api::submit))
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
