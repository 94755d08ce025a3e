//! Job payloads and the one place that puts them on Redis. Payloads carry ids only, plus a
//! version; everything else is read from Postgres when the job runs, so running a job twice, late
//! or after Redis lost it is harmless.

use apalis::prelude::TaskSink;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};

use crate::domain::{BatchId, ImageId};

/// Version of the payloads below; a worker refuses (and logs) payloads of another version.
pub const PAYLOAD_VERSION: u16 = 1;

/// Process one image of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessImage {
    pub v: u16,
    pub batch: BatchId,
    pub image: ImageId,
}

/// Build the zip of a batch whose images are all done or failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildArchive {
    pub v: u16,
    pub batch: BatchId,
}

#[derive(Debug, thiserror::Error)]
#[error("queue: {0}")]
pub struct QueueError(String);

impl QueueError {
    fn from_sink<E: std::fmt::Display>(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Names of the queues, under the deployment's prefix.
pub fn image_queue(prefix: &str) -> String {
    format!("{prefix}:process-image")
}

pub fn archive_queue(prefix: &str) -> String {
    format!("{prefix}:build-archive")
}

/// The two queues of the system; cheap to clone.
#[derive(Clone)]
pub struct Queues {
    conn: ConnectionManager,
    prefix: String,
    images: RedisStorage<ProcessImage>,
    archives: RedisStorage<BuildArchive>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Queues {
    pub async fn connect(redis_url: &str, prefix: &str) -> Result<Self, QueueError> {
        let conn = apalis_redis::connect(redis_url)
            .await
            .map_err(|e| QueueError(format!("cannot connect to Redis: {e}")))?;
        Ok(Self::with_connection(conn, prefix, 1))
    }

    /// Builds the queues on a connection. `batch_size` is how many jobs one fetch takes.
    pub fn with_connection(conn: ConnectionManager, prefix: &str, batch_size: usize) -> Self {
        Self {
            images: RedisStorage::new(conn.clone())
                .with_config(Self::config(&image_queue(prefix), batch_size)),
            archives: RedisStorage::new(conn.clone())
                .with_config(Self::config(&archive_queue(prefix), 1)),
            conn,
            prefix: prefix.to_owned(),
        }
    }

    /// A worker that has just finished a job sometimes waits for its next heartbeat before it
    /// fetches again, so the heartbeat is short (1 s); a worker is considered dead, and its jobs
    /// handed to others, after 30 missed heartbeats.
    fn config(queue: &str, batch_size: usize) -> Config {
        Config::default()
            .queue(queue)
            .batch_size(batch_size.max(1))
            .heartbeat_interval(std::time::Duration::from_secs(1))
            .missed_heartbeats(30)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The image queue as a worker backend.
    pub fn image_backend(&self) -> RedisStorage<ProcessImage> {
        self.images.clone()
    }

    /// The archive queue as a worker backend.
    pub fn archive_backend(&self) -> RedisStorage<BuildArchive> {
        self.archives.clone()
    }

    pub async fn enqueue_images(
        &self,
        batch: BatchId,
        images: &[ImageId],
    ) -> Result<(), QueueError> {
        if images.is_empty() {
            return Ok(());
        }
        let jobs = images
            .iter()
            .map(|&image| ProcessImage {
                v: PAYLOAD_VERSION,
                batch,
                image,
            })
            .collect();
        self.images
            .clone()
            .push_bulk(jobs)
            .await
            .map_err(QueueError::from_sink)
    }

    pub async fn enqueue_archive(&self, batch: BatchId) -> Result<(), QueueError> {
        let job = BuildArchive {
            v: PAYLOAD_VERSION,
            batch,
        };
        self.archives
            .clone()
            .push(job)
            .await
            .map_err(QueueError::from_sink)
    }

    /// Answers when Redis does (for `/readyz`).
    pub async fn ping(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| QueueError(format!("Redis does not answer: {e}")))?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(QueueError(format!("unexpected answer to PING: {pong}")))
        }
    }
}
