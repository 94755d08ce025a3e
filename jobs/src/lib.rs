//! Everything the `web` and `worker` binaries share: settings, domain types, the database, object
//! storage, queue payloads, the `ImageTask` registry, the image pipeline, archives and the purge.

pub mod archive;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod domain;
pub mod maintenance;
pub mod names;
pub mod pipeline;
pub mod queue;
pub mod signals;
pub mod storage;
pub mod tasks;
pub mod telemetry;

pub use config::Settings;
pub use domain::{BatchId, BatchStatus, ImageId, ImageStatus};

/// Runs `connect` until it succeeds, every two seconds, logging once per distinct problem: a
/// process started before its database or Redis waits for them instead of exiting.
pub async fn wait_for<T, E, F, Fut>(what: &str, mut connect: F) -> T
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
                return value;
            }
            Err(e) => {
                let message = e.to_string();
                if last.as_deref() != Some(message.as_str()) {
                    tracing::warn!(error = %message, "waiting for {what}");
                    last = Some(message);
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }
    }
}
