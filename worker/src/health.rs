//! The worker's health endpoint (`HEALTH_PORT`): `GET /healthz` answers while the process
//! runs, with its name and the images in hand; `GET /readyz` answers 200 when Postgres, Redis
//! and S3 all answer, and 503 naming the ones that do not (compose uses it as the worker's
//! health check); `GET /metrics` gives the worker's Prometheus metrics.

use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::ctx::Ctx;

#[derive(Clone)]
struct Health {
    ctx: Ctx,
    concurrency: usize,
}

/// Listens on `addr` and serves the health endpoints until the process ends.
pub async fn serve(ctx: Ctx, concurrency: usize, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (HEALTH_HOST, HEALTH_PORT)"))?;
    tracing::info!(local = %listener.local_addr()?, "worker health endpoint listening");
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Health { ctx, concurrency });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "the health endpoint stopped");
        }
    });
    Ok(())
}

async fn healthz(State(health): State<Health>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "worker": &*health.ctx.worker,
        "concurrency": health.concurrency,
        "images_in_hand": health.ctx.in_hand.ids().len(),
    }))
}

/// `GET /metrics`: this worker's metrics, in Prometheus's text format.
async fn metrics() -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            jobs::metrics::CONTENT_TYPE,
        )],
        jobs::metrics::render(),
    )
        .into_response()
}

async fn readyz(State(health): State<Health>) -> Response {
    let ctx = &health.ctx;
    let probe = jobs::health::Probe::run(&ctx.db, &ctx.queues, &ctx.storage).await;
    let status = if probe.all_up() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(probe.to_json())).into_response()
}
