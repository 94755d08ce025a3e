//! Everything the `web` and `worker` binaries share: settings, domain types, the database, object
//! storage, queue payloads, the `ImageTask` registry, the image pipeline, archives and the purge.

pub mod archive;
pub mod config;
pub mod db;
mod dct;
pub mod dispatch;
pub mod domain;
pub mod health;
mod jpeg;
mod jpeg_scan;
pub mod maintenance;
pub mod metrics;
pub mod names;
pub mod open;
pub mod overlay;
pub mod owners;
pub mod pipeline;
pub mod queue;
pub mod recent;
mod s3http;
pub mod signals;
pub mod stats;
pub mod storage;
pub mod tasks;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod view;
pub mod wake;
pub mod webhook;
pub mod zipfile;

pub use config::Settings;
pub use domain::{BatchId, BatchStatus, ImageId, ImageStatus, OwnerId};

/// The ids a process is working on right now (uploads being received, images being processed):
/// shared by its tasks, cheap to clone.
#[derive(Debug)]
pub struct InProgress<T>(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<T>>>);

impl<T> Clone for InProgress<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Default for InProgress<T> {
    fn default() -> Self {
        Self(Default::default())
    }
}

impl<T: Copy + Eq + std::hash::Hash> InProgress<T> {
    pub fn add(&self, id: T) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    pub fn remove(&self, id: T) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    pub fn ids(&self) -> Vec<T> {
        let set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.iter().copied().collect()
    }
}

/// A service refused this configuration: a wrong password, a malformed URL, a certificate we do
/// not trust, a failed migration. Fatal: problems that pass (a service still starting) are
/// waited out before one of these is returned.
#[derive(Debug, thiserror::Error)]
#[error("cannot use {what}: {message}")]
pub struct ConnectError {
    pub what: &'static str,
    pub message: String,
}

/// Runs `connect` until it succeeds, every two seconds, logging once per distinct problem, as
/// long as the problem is `transient` (the service is not up yet); any other problem (a wrong
/// password, a malformed URL, a failed migration) is returned at once, so that a misconfigured
/// process exits with the reason instead of waiting forever.
pub async fn wait_for<T, E, F, Fut>(
    what: &'static str,
    transient: fn(&E) -> bool,
    mut connect: F,
) -> Result<T, ConnectError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut last: Option<String> = None;
    loop {
        match connect().await {
            Ok(value) => {
                if last.is_some() {
                    tracing::info!("{what} is reachable");
                }
                return Ok(value);
            }
            Err(e) if transient(&e) => {
                let message = e.to_string();
                if last.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "waiting for {what}");
                    last = Some(message);
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
            Err(e) => {
                return Err(ConnectError {
                    what,
                    message: e.to_string(),
                })
            }
        }
    }
}

/// Makes rustls use aws-lc-rs (as the S3 client does) wherever a library asks for the process's
/// default: both aws-lc-rs and ring are compiled in, and with two, rustls picks none (the Redis
/// client's TLS would panic).
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Whether `error`, or one of its causes, is a TLS peer refusing or presenting a certificate we
/// do not trust: a configuration problem, not a service that is still starting.
pub fn certificate_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(_)
            );
        }
        // io::Error hides its inner error from `source`, and so does an Arc (the Redis
        // client's errors hold theirs in one): look inside each.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if certificate_refused(inner) {
                return true;
            }
        }
        if let Some(inner) = e.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
        {
            if certificate_refused(inner.as_ref()) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Connects to Postgres (and migrates), waiting while it is not up; at most `pool_size`
/// connections at once (`DATABASE_POOL_SIZE`).
pub async fn connect_db(url: &str, pool_size: u32) -> Result<db::Db, ConnectError> {
    fn transient(e: &sqlx::Error) -> bool {
        match e {
            // The connection broke while migrating.
            sqlx::Error::Migrate(m) => match m.as_ref() {
                sqlx::migrate::MigrateError::Execute(e)
                | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => transient(e),
                _ => false,
            },
            other => db::is_retryable(other),
        }
    }
    install_tls_provider();
    wait_for("Postgres (DATABASE_URL)", transient, || {
        db::connect(url, pool_size)
    })
    .await
}

/// Connects to Redis, waiting while it is not up.
pub async fn connect_redis(url: &str) -> Result<apalis_redis::ConnectionManager, ConnectError> {
    fn transient(e: &redis::RedisError) -> bool {
        (e.is_io_error()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_connection_dropped())
            && !certificate_refused(e)
    }
    install_tls_provider();
    wait_for("Redis (REDIS_URL)", transient, || {
        apalis_redis::connect(url)
    })
    .await
}
