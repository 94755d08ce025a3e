//! Whether the services a process needs answer: `web`'s and each worker's `/readyz`, and
//! `web`'s refusal of a submission while one of them is down.

use std::time::Duration;

use serde_json::{json, Value};

use crate::db::Db;
use crate::queue::Queues;
use crate::storage::Storage;

/// Which dependencies answer.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub postgres: bool,
    pub redis: bool,
    pub s3: bool,
}

impl Probe {
    /// Asks Postgres, Redis and S3 at once whether they answer, each within 2 s.
    pub async fn run(db: &Db, queues: &Queues, storage: &Storage) -> Self {
        let limit = Duration::from_secs(2);
        let (pg, redis, s3) = tokio::join!(
            tokio::time::timeout(limit, crate::db::ping(db)),
            tokio::time::timeout(limit, queues.ping()),
            tokio::time::timeout(limit, storage.ping()),
        );
        Self {
            postgres: matches!(pg, Ok(Ok(()))),
            redis: matches!(redis, Ok(Ok(()))),
            s3: matches!(s3, Ok(Ok(()))),
        }
    }

    pub fn all_up(&self) -> bool {
        self.postgres && self.redis && self.s3
    }

    /// "Redis and S3", say; empty when all are up.
    pub fn down(&self) -> String {
        let down: Vec<&str> = [
            (self.postgres, "the database (Postgres)"),
            (self.redis, "the job queue (Redis)"),
            (self.s3, "file storage (S3)"),
        ]
        .into_iter()
        .filter_map(|(up, name)| (!up).then_some(name))
        .collect();
        match down.as_slice() {
            [] => String::new(),
            [one] => (*one).to_owned(),
            [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        }
    }

    /// `{"postgres": "ok", "redis": "unavailable", "s3": "ok"}`, as `/readyz` answers.
    pub fn to_json(&self) -> Value {
        let verdict = |ok: bool| if ok { "ok" } else { "unavailable" };
        json!({
            "postgres": verdict(self.postgres),
            "redis": verdict(self.redis),
            "s3": verdict(self.s3),
        })
    }
}
