//! Everything the `web` and `worker` binaries share: settings, domain types, the database, object
//! storage, queue payloads, the `ImageTask` registry, the image pipeline, archives and the purge.

pub mod archive;
pub mod config;
pub mod db;
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
