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
