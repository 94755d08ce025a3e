//! Prometheus metrics: every name the system exports, in one place (`docs/operations.md` lists
//! them). `web` serves them at `/metrics`, each worker on its health port. Counters and
//! histograms count what this process did; the cluster's state (batches by status, the
//! backlog, live workers) is read from Postgres when `web` is scraped ([`observe_cluster`]).

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::db::Db;
use crate::BatchStatus;

/// Every metric of this process, and the process's own (CPU, memory, open files).
static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    let _ = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    registry
});

fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
    // Names are constants, registered once each: a clash is a bug caught by the unit test.
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("a valid metric"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str], values: &[&[&str]]) -> IntCounterVec {
    let metric = register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid"));
    // Known label values start at zero, so that rates and alerts see them before the first event.
    for v in values {
        metric.with_label_values(v);
    }
    metric
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(Histogram::with_opts(opts).expect("a valid metric"))
}

/// Seconds, from 5 ms to 2 minutes: an image, an archive.
const WORK_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Seconds, from 1 ms to 1 minute: an HTTP answer (uploads take long).
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

// --- Workers -------------------------------------------------------------------------------

/// Images this worker finished, by outcome (`done`, `failed`).
pub static IMAGES_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "watermark_images_finished_total",
        "Images this worker finished, by outcome (done, failed).",
        &["outcome"],
        &[&["done"], &["failed"]],
    )
});

/// Attempts at an image that will be retried, by why (`transient`: storage or database
/// unreachable; `lost`: the image's process crashed or hung).
pub static IMAGE_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "watermark_image_retries_total",
        "Attempts at an image that ended without a result and will be retried, by reason \
         (transient, lost).",
        &["reason"],
        &[&["transient"], &["lost"]],
    )
});

/// Seconds one image took on this worker: fetch, process, store.
pub static IMAGE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "watermark_image_processing_seconds",
        "Seconds one image took on this worker, from fetching the original to storing the result.",
        WORK_BUCKETS,
    )
});

/// Images this worker is processing now.
pub static IMAGES_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "watermark_images_in_flight",
            "Images this worker is processing now.",
        )
        .expect("a valid metric"),
    )
});

/// Batches this worker ended by recording their last image: `done`, or `failed` when no image
/// could be processed.
pub static BATCHES_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "watermark_batches_finished_total",
        "Batches this worker ended by recording their last image, by outcome (done, failed: no \
         image could be processed).",
        &["outcome"],
        &[&["done"], &["failed"]],
    )
});

/// Zips `web` streamed: `complete`, or `broken` (a result could not be read as recorded).
pub static DOWNLOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "watermark_downloads_total",
        "Zips web streamed to the end (complete), or broke off because a result could not be \
         read as recorded (broken).",
        &["outcome"],
        &[&["complete"], &["broken"]],
    )
});

/// Bytes of zips sent.
pub static DOWNLOAD_BYTES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("watermark_download_bytes_total", "Bytes of zips web sent."));

/// Purge runs on this worker, by outcome (`ok`, `error`).
pub static PURGE_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "watermark_purge_runs_total",
        "Purge runs this worker made (each tick runs on one replica), by outcome (ok, error).",
        &["outcome"],
        &[&["ok"], &["error"]],
    )
});

/// Batches whose files this worker's purges deleted.
pub static PURGED_BATCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "watermark_purged_batches_total",
        "Expired batches whose files this worker's purge runs deleted.",
    )
});

/// Reconciler runs on this worker, by outcome (`ok`, `error`).
pub static RECONCILE_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "watermark_reconcile_runs_total",
        "Reconciler runs this worker made, by outcome (ok, error).",
        &["outcome"],
        &[&["ok"], &["error"]],
    )
});

/// Webhook attempts this worker made, by outcome (`delivered`, `rejected`: a non-2xx answer,
/// `unreachable`, `refused`: the target is not allowed).
pub static WEBHOOK_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "watermark_webhook_attempts_total",
        "Webhook attempts this worker made, by outcome (delivered, rejected: not 2xx, \
         unreachable, refused: a target not allowed).",
        &["outcome"],
        &[
            &["delivered"],
            &["rejected"],
            &["unreachable"],
            &["refused"],
        ],
    )
});

// --- web -----------------------------------------------------------------------------------

/// HTTP answers, by route (the pattern, never the ids in it), method and status.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "watermark_http_requests_total",
                "HTTP requests web answered, by route pattern, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("a valid metric"),
    )
});

/// Seconds to answer, by route and method.
pub static HTTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "watermark_http_request_seconds",
                "Seconds web took to answer, by route pattern and method (an upload's time \
                 includes receiving it).",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["route", "method"],
        )
        .expect("a valid metric"),
    )
});

/// Bytes of files received (every file part, accepted or refused).
pub static UPLOADED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "watermark_uploaded_bytes_total",
        "Bytes of files web received in uploads.",
    )
});

/// Batches accepted.
pub static BATCHES_SUBMITTED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("watermark_batches_submitted_total", "Batches web accepted."));

/// Uploads being received now.
pub static UPLOADS_IN_PROGRESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "watermark_uploads_in_progress",
            "Uploads web is receiving now.",
        )
        .expect("a valid metric"),
    )
});

// --- The cluster, from Postgres (web) --------------------------------------------------------

/// Batches by status.
pub static BATCHES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "watermark_batches",
                "Batches in Postgres, by status (read when web is scraped).",
            ),
            &["status"],
        )
        .expect("a valid metric"),
    )
});

/// Images waiting for a worker or being processed.
pub static IMAGES_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "watermark_images_pending",
            "Images not finished yet (the backlog, those being processed included).",
        )
        .expect("a valid metric"),
    )
});

/// Workers seen in the last [`crate::db::LIVE_WORKER_SECONDS`].
pub static WORKERS_LIVE: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "watermark_workers_live",
            "Workers that reported in the last 30 seconds.",
        )
        .expect("a valid metric"),
    )
});

/// Webhooks owed and not delivered yet.
pub static WEBHOOKS_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "watermark_webhooks_pending",
            "Webhook deliveries owed and not yet delivered or given up.",
        )
        .expect("a valid metric"),
    )
});

/// Reads the cluster's state from Postgres into the gauges above (one statement).
pub async fn observe_cluster(db: &Db) -> Result<(), sqlx::Error> {
    let cluster = crate::db::cluster(db).await?;
    for status in BatchStatus::ALL {
        let n = cluster
            .batches
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n);
        BATCHES.with_label_values(&[status.as_str()]).set(n);
    }
    IMAGES_PENDING.set(cluster.images_pending);
    WORKERS_LIVE.set(cluster.workers_live);
    WEBHOOKS_PENDING.set(cluster.webhooks_pending);
    Ok(())
}

/// Makes every metric of this process visible (at zero) before its first event.
pub fn touch_all() {
    LazyLock::force(&IMAGES_FINISHED);
    LazyLock::force(&IMAGE_RETRIES);
    LazyLock::force(&IMAGE_SECONDS);
    LazyLock::force(&IMAGES_IN_FLIGHT);
    LazyLock::force(&BATCHES_FINISHED);
    LazyLock::force(&PURGE_RUNS);
    LazyLock::force(&PURGED_BATCHES);
    LazyLock::force(&RECONCILE_RUNS);
    LazyLock::force(&WEBHOOK_ATTEMPTS);
}

/// Makes `web`'s metrics visible (at zero) before its first request.
pub fn touch_web() {
    LazyLock::force(&DOWNLOADS);
    LazyLock::force(&DOWNLOAD_BYTES);
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_SECONDS);
    LazyLock::force(&UPLOADED_BYTES);
    LazyLock::force(&BATCHES_SUBMITTED);
    LazyLock::force(&UPLOADS_IN_PROGRESS);
    LazyLock::force(&BATCHES);
    LazyLock::force(&IMAGES_PENDING);
    LazyLock::force(&WORKERS_LIVE);
    LazyLock::force(&WEBHOOKS_PENDING);
}

/// The Prometheus text format of every metric registered in this process.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut out)
        .expect("encoding to memory works");
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_once_and_renders_with_its_help() {
        touch_all();
        touch_web();
        IMAGES_FINISHED.with_label_values(&["done"]).inc();
        let text = render();
        for name in [
            "watermark_images_finished_total{outcome=\"done\"} 1",
            "watermark_images_finished_total{outcome=\"failed\"} 0",
            "# TYPE watermark_image_processing_seconds histogram",
            "watermark_batches_finished_total{outcome=\"failed\"} 0",
            "watermark_downloads_total{outcome=\"broken\"} 0",
            "watermark_purge_runs_total{outcome=\"ok\"} 0",
            "# HELP watermark_uploaded_bytes_total",
            "# TYPE watermark_images_in_flight gauge",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
