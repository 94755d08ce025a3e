//! Job payloads and the one place that puts them on Redis. Payloads carry ids only, plus a
//! version; everything else is read from Postgres when the job runs, so running a job twice, late
//! or after Redis lost it is harmless.

use apalis::prelude::TaskSink;
use apalis_redis::{Config, ConnectionManager, RedisStorage};
use serde::{Deserialize, Serialize};

use crate::domain::{BatchId, ImageId};

/// Removes finished jobs: ids popped from the done and dead sets lose their data field, their
/// result field and their metadata hash (the same keys apalis-redis's `vacuum.lua` removes, but
/// only for jobs that can never run again).
const TRIM_SCRIPT: &str = r#"
local max = tonumber(ARGV[1])
local deleted = 0
for _, set in ipairs({KEYS[1], KEYS[2]}) do
    local ids = redis.call('SPOP', set, max)
    for _, id in ipairs(ids) do
        redis.call('HDEL', KEYS[3], id)
        redis.call('HDEL', KEYS[4] .. ':result', id)
        redis.call('DEL', KEYS[4] .. ':' .. id)
        deleted = deleted + 1
    end
end
return deleted
"#;

/// Moves the jobs of the images `ARGV` (ids as they appear in the job data) to the head of the
/// list of waiting jobs (`KEYS[3]`, which the workers take from its head), in the order of
/// `ARGV`. apalis-redis keeps a pushed job in the scheduled set (`KEYS[1]`) until a fetch moves
/// the due ones to the list, so the jobs are looked for there, and in the list should a fetch
/// have moved them already. Both hold at most the dispatch window and the retries waiting.
/// `KEYS[2]` is the job data hash, `KEYS[4]` the list that signals waiting jobs.
const TO_FRONT_SCRIPT: &str = r#"
local found = {}
local function look(ids, from_list)
    for _, id in ipairs(ids) do
        local data = redis.call('HGET', KEYS[2], id)
        if data then
            for i, image in ipairs(ARGV) do
                if found[i] == nil and string.find(data, image, 1, true) then
                    found[i] = {id, from_list}
                    break
                end
            end
        end
    end
end
look(redis.call('ZRANGE', KEYS[1], 0, -1), false)
look(redis.call('LRANGE', KEYS[3], 0, -1), true)
local moved = 0
for i = #ARGV, 1, -1 do
    local job = found[i]
    if job then
        if job[2] then
            redis.call('LREM', KEYS[3], 1, job[1])
        else
            redis.call('ZREM', KEYS[1], job[1])
        end
        redis.call('LPUSH', KEYS[3], job[1])
        moved = moved + 1
    end
end
if moved > 0 then
    redis.call('DEL', KEYS[4])
    redis.call('LPUSH', KEYS[4], 1)
end
return moved
"#;

/// Version of the payloads below; a worker refuses (and logs) payloads of another version.
pub const PAYLOAD_VERSION: u16 = 1;

/// Process one image of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessImage {
    pub v: u16,
    pub batch: BatchId,
    pub image: ImageId,
}

/// Heartbeats (of 1 s) a worker may miss before its jobs are handed to other workers.
pub const MISSED_HEARTBEATS: usize = 10;

#[derive(Debug, thiserror::Error)]
#[error("queue: {0}")]
pub struct QueueError(String);

impl QueueError {
    /// Always: a queue operation fails only when Redis is unreachable or fails a command, and
    /// the work is in Postgres meanwhile.
    pub fn is_retryable(&self) -> bool {
        true
    }

    fn from_sink<E: std::fmt::Display>(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Names of the queues, under the deployment's prefix.
pub fn image_queue(prefix: &str) -> String {
    format!("{prefix}:process-image")
}

/// The system's queue (of image jobs; a batch's zip needs no job, see `jobs::archive`); cheap to
/// clone.
#[derive(Clone)]
pub struct Queues {
    conn: ConnectionManager,
    prefix: String,
    images: RedisStorage<ProcessImage>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Queues {
    /// Builds the queues on a connection. `batch_size` is how many jobs one fetch takes.
    pub fn with_connection(conn: ConnectionManager, prefix: &str, batch_size: usize) -> Self {
        Self {
            images: RedisStorage::new(conn.clone())
                .with_config(Self::config(&image_queue(prefix), batch_size)),
            conn,
            prefix: prefix.to_owned(),
        }
    }

    /// A worker that has just finished a job sometimes waits for its next heartbeat before it
    /// fetches again, so the heartbeat is short (1 s); a worker is considered dead, and its jobs
    /// handed to others, after [`MISSED_HEARTBEATS`] missed heartbeats. Image work runs outside
    /// the async runtime, so a busy worker still beats on time.
    fn config(queue: &str, batch_size: usize) -> Config {
        Config::default()
            .queue(queue)
            .batch_size(batch_size.max(1))
            .heartbeat_interval(std::time::Duration::from_secs(1))
            .missed_heartbeats(MISSED_HEARTBEATS)
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

    /// Pushes the jobs of `images` (batch, image) in this order: the workers take them first in,
    /// first out, so the order is the dispatcher's.
    pub async fn enqueue_images(&self, images: &[(BatchId, ImageId)]) -> Result<(), QueueError> {
        if images.is_empty() {
            return Ok(());
        }
        let jobs = images
            .iter()
            .map(|&(batch, image)| ProcessImage {
                v: PAYLOAD_VERSION,
                batch,
                image,
            })
            .collect();
        self.images
            .clone()
            .push_bulk(jobs)
            .await
            .map_err(QueueError::from_sink)?;
        self.wake(&image_queue(&self.prefix)).await;
        Ok(())
    }

    /// Pushes the jobs of `images` to the front of the queue, in this order, ahead of the jobs
    /// waiting there (an owner's turn that should not wait behind a full window): they are
    /// pushed like any job, then moved to the head of the list the workers take jobs from.
    pub async fn enqueue_images_first(
        &self,
        images: &[(BatchId, ImageId)],
    ) -> Result<(), QueueError> {
        if images.is_empty() {
            return Ok(());
        }
        self.enqueue_images(images).await?;
        let config = Self::config(&image_queue(&self.prefix), 1);
        let to_front = redis::Script::new(TO_FRONT_SCRIPT);
        let mut script = to_front.prepare_invoke();
        script
            .key(config.scheduled_jobs_set())
            .key(config.job_data_hash())
            .key(config.active_jobs_list())
            .key(config.signal_list());
        for (_, image) in images {
            script.arg(image.to_string());
        }
        let mut conn = self.conn.clone();
        let moved = script
            .invoke_async::<i64>(&mut conn)
            .await
            .map_err(QueueError::from_sink)?;
        tracing::debug!(
            jobs = images.len(),
            moved,
            "jobs pushed to the front of the queue"
        );
        Ok(())
    }

    /// Tells idle workers that `queue` has new jobs (see `wake`). Best effort: a worker that
    /// misses it finds the jobs at its next poll.
    async fn wake(&self, queue: &str) {
        let mut conn = self.conn.clone();
        let published = redis::cmd("PUBLISH")
            .arg(crate::wake::channel(&self.prefix))
            .arg(queue)
            .query_async::<i64>(&mut conn)
            .await;
        if let Err(e) = published {
            tracing::debug!(error = %e, "could not wake the workers; they will poll");
        }
    }

    /// The key whose absence tells that Redis lost its data (a restart without persistence, a
    /// `FLUSHALL`, a failover to an empty replica): see `dispatch`.
    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// True when the epoch key is present: Redis still holds what was pushed since it was set.
    pub async fn epoch_present(&self) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS")
            .arg(self.epoch_key())
            .query_async::<i64>(&mut conn)
            .await
            .map(|n| n > 0)
            .map_err(|e| QueueError(format!("Redis does not answer: {e}")))
    }

    pub async fn set_epoch(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.epoch_key())
            .arg(uuid::Uuid::new_v4().to_string())
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| QueueError(format!("Redis does not answer: {e}")))
    }

    /// Deletes up to `max` finished jobs (done or dead) of the image queue, with their data and
    /// metadata. apalis-redis keeps every job forever; Postgres already holds each image's
    /// outcome, so nothing is lost. Returns how many jobs were deleted.
    pub async fn trim_finished(&self, max: usize) -> Result<usize, QueueError> {
        let script = redis::Script::new(TRIM_SCRIPT);
        let queue = image_queue(&self.prefix);
        let mut conn = self.conn.clone();
        let deleted: usize = script
            .key(format!("{queue}:done"))
            .key(format!("{queue}:dead"))
            .key(format!("{queue}:data"))
            .key(format!("{queue}:meta"))
            .arg(max)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| QueueError(format!("cannot trim finished jobs: {e}")))?;
        Ok(deleted)
    }

    /// Deletes the metadata hashes of workers that are gone (apalis-redis removes a dead
    /// worker from `{queue}:workers` but keeps its hash). Returns how many were deleted.
    pub async fn forget_dead_workers(&self) -> Result<usize, QueueError> {
        let err = |e: redis::RedisError| QueueError(format!("cannot tidy workers: {e}"));
        let mut conn = self.conn.clone();
        let mut deleted = 0;
        let queue = image_queue(&self.prefix);
        let prefix = format!("{queue}:workers:metadata:");
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            for key in keys {
                let name = &key[prefix.len()..];
                let alive: Option<f64> = redis::cmd("ZSCORE")
                    .arg(format!("{queue}:workers"))
                    .arg(name)
                    .query_async(&mut conn)
                    .await
                    .map_err(err)?;
                if alive.is_none() {
                    let _: () = redis::cmd("DEL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await
                        .map_err(err)?;
                    deleted += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(deleted)
    }

    /// Answers when Redis does (for `/readyz`). The connection notices a Redis restart only when
    /// a command fails on the old socket, and reconnects then: so one failure is retried once.
    pub async fn ping(&self) -> Result<(), QueueError> {
        match self.ping_once().await {
            Ok(()) => Ok(()),
            Err(_) => self.ping_once().await,
        }
    }

    async fn ping_once(&self) -> Result<(), QueueError> {
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
