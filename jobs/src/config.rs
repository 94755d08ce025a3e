//! One settings type for both binaries, read from the environment (and an optional `.env`),
//! validated at start with messages that name the variable. Secrets are wrapped so that they
//! cannot reach a log line by accident.

use std::time::Duration;

use clap::Args;
use secrecy::{ExposeSecret, SecretString};

/// Settings shared by `web` and `worker`. Every field is an environment variable; `--help` lists them.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Postgres connection URL (the source of truth).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_parser = secret)]
    pub database_url: SecretString,

    /// Most connections this process opens to Postgres. Size it so that `web`'s plus every
    /// worker's stay under the server's `max_connections` (100 by default), with room for
    /// administration: web + workers × pool ≤ max_connections − 5.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=1000))]
    pub database_pool_size: u32,

    /// Redis connection URL (job delivery only).
    #[arg(long, env = "REDIS_URL", hide_env_values = true, value_parser = secret)]
    pub redis_url: SecretString,

    /// Prefix of every Redis key this deployment uses; separate deployments sharing one Redis
    /// need distinct prefixes.
    #[arg(long, env = "QUEUE_PREFIX", default_value = "watermark")]
    pub queue_prefix: String,

    /// S3 endpoint URL (MinIO, Garage, ...). Leave empty for AWS itself.
    #[arg(long, env = "S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// Bucket holding originals, results and archives.
    #[arg(long, env = "S3_BUCKET")]
    pub s3_bucket: String,

    /// S3 access key id.
    #[arg(long, env = "S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: String,

    /// S3 secret access key.
    #[arg(long, env = "S3_SECRET_ACCESS_KEY", hide_env_values = true, value_parser = secret)]
    pub s3_secret_access_key: SecretString,

    /// Use path-style S3 addressing (needed by MinIO and Garage).
    #[arg(long, env = "S3_FORCE_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_force_path_style: bool,

    /// Seconds a finished batch and its download stay available before the purge deletes them.
    #[arg(long, env = "RESULT_TTL_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub result_ttl_seconds: u64,

    /// Largest accepted file, in bytes; a larger file fails alone with a clear reason.
    #[arg(long, env = "MAX_FILE_BYTES", default_value_t = 50 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_file_bytes: u64,

    /// Most files accepted in one batch (sent in one request, or added to an open batch over
    /// many); more is refused with 413.
    #[arg(long, env = "MAX_FILES_PER_BATCH", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_files_per_batch: u32,

    /// Most bytes of files one batch may hold (all its files together, however they are sent),
    /// in bytes; more is refused with 413.
    #[arg(long, env = "MAX_BATCH_BYTES", default_value_t = 10 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_bytes: u64,

    /// Accept batches without an API key, from the browser form and the API: each client address
    /// (an IPv6 /64) is then an owner of its own, with the default limits. `off` asks every
    /// submission for a key (`Authorization: Bearer`).
    #[arg(long, env = "ANONYMOUS", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub anonymous: bool,

    /// Proxies whose `X-Forwarded-For` is believed, as addresses or networks (`10.0.0.0/8`),
    /// comma-separated: the client address of an anonymous submission is taken from that header
    /// only when the connection comes from one of them (nginx, a load balancer), else it is the
    /// connection's own address.
    #[arg(long, env = "TRUSTED_PROXIES", default_value = "", value_parser = crate::owners::parse_networks)]
    pub trusted_proxies: crate::owners::Networks,

    /// Images one owner may have queued or being processed at once, by default (a key may have
    /// its own limit). A submission beyond it is refused with 429 and `Retry-After`.
    #[arg(long, env = "OWNER_MAX_QUEUED_IMAGES", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub owner_max_queued_images: u32,

    /// Batches one owner may create in a minute (a sliding minute), by default.
    #[arg(long, env = "OWNER_MAX_BATCHES_PER_MINUTE", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub owner_max_batches_per_minute: u32,

    /// Bytes of files one owner may send in a day (a sliding 24 hours), by default.
    #[arg(long, env = "OWNER_MAX_BYTES_PER_DAY", default_value_t = 20 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub owner_max_bytes_per_day: u64,

    /// Most uploads `web` receives at once; beyond it a submission is answered 503 with
    /// `Retry-After`. Each upload holds at most three parts of 8 MiB in memory.
    #[arg(long, env = "MAX_CONCURRENT_UPLOADS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_uploads: u32,

    /// An upload must bring at least this many bytes per second, counted over each
    /// `UPLOAD_WINDOW_SECONDS`; a slower one (a client trickling its body, or gone quiet) is
    /// refused with 408, so that it cannot hold an upload slot for long.
    #[arg(long, env = "UPLOAD_MIN_BYTES_PER_SECOND", default_value_t = 2048)]
    pub upload_min_bytes_per_second: u64,

    /// The window over which `UPLOAD_MIN_BYTES_PER_SECOND` is counted, in seconds.
    #[arg(long, env = "UPLOAD_WINDOW_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub upload_window_seconds: u64,

    /// Largest image accepted, in pixels (width × height), checked before decoding.
    #[arg(long, env = "MAX_IMAGE_PIXELS", default_value_t = 50_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_pixels: u64,

    /// Seconds one image may take to process before it fails.
    #[arg(long, env = "IMAGE_TIMEOUT_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub image_timeout_seconds: u64,

    /// How many attempts at an image may end without an answer (the worker crashed, was killed,
    /// or the processor hung) before the image fails. Transient errors (storage or database
    /// unreachable) are retried with backoff and do not count.
    #[arg(long, env = "MAX_IMAGE_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_image_attempts: u32,

    /// Most image jobs in Redis at once. The window is three times the image slots of the live
    /// workers (their WORKER_CONCURRENCY summed), capped by this; the rest of a backlog waits in
    /// Postgres, where the dispatcher picks fairly among owners. Keep it well under 8,000
    /// (apalis-redis fails when that many jobs fall due at once).
    #[arg(long, env = "DISPATCH_WINDOW", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub dispatch_window: u32,

    /// Benchmarks only: dispatch as before fair dispatch, first in, first out with a fixed
    /// window of DISPATCH_WINDOW jobs, as the baseline that `bench fair` compares against.
    /// Never set in production.
    #[arg(long, env = "DISPATCH_FIFO", default_value_t = false, hide = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub dispatch_fifo: bool,

    /// An upload that has made no progress for this many seconds (its `web` died) is failed
    /// and its files deleted. A live upload reports progress every quarter of this.
    #[arg(long, env = "UPLOAD_STALE_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(4..))]
    pub upload_stale_seconds: u64,

    /// An open batch (files added over many requests, `POST /api/batches/open`) that has had
    /// no activity for this many seconds (no file added, no image finished) is closed by the
    /// reconciler: its images are processed as if its client had closed it, and an empty one
    /// fails with a reason.
    #[arg(long, env = "OPEN_BATCH_IDLE_SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub open_batch_idle_seconds: u64,

    /// JPEG quality of processed JPEG images (1–100).
    #[arg(long, env = "JPEG_QUALITY", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,

    /// Token that opens the monitoring page (`/monitor`) and `GET /api/stats` (as
    /// `Authorization: Bearer <token>`, or through the page's sign-in). Both are off without it.
    /// Use a long random value, e.g. `openssl rand -hex 32`.
    #[arg(long, env = "MONITOR_TOKEN", hide_env_values = true, value_parser = secret)]
    pub monitor_token: Option<SecretString>,

    /// Secret that signs every webhook (`X-Watermark-Signature`, HMAC-SHA256), 16 characters
    /// or more (`openssl rand -hex 32`). Webhooks are off without it: a submission carrying a
    /// `callback_url` is then refused. Give `web` and every worker the same value.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = webhook_secret)]
    pub webhook_secret: Option<SecretString>,

    /// Let callback URLs reach loopback, private, link-local and other non-public addresses
    /// (a receiver on your own network, or tests). Off, such targets are refused at submission
    /// and again when the name is resolved for each delivery.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub webhook_allow_private: bool,

    /// Attempts at one webhook (the first included) before it is given up.
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_max_attempts: u32,

    /// Seconds before the first retry of a webhook; each further retry waits twice as long as
    /// the one before, an hour at most.
    #[arg(long, env = "WEBHOOK_BACKOFF_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub webhook_backoff_seconds: u64,

    /// Seconds one webhook attempt may take (resolving, connecting, sending, the answer's
    /// headers) before it counts as failed.
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout_seconds: u64,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn secret(s: &str) -> Result<SecretString, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(SecretString::from(s.to_owned()))
}

fn webhook_secret(s: &str) -> Result<SecretString, String> {
    if s.trim().chars().count() < 16 {
        return Err("must be 16 characters or more (openssl rand -hex 32 makes one)".into());
    }
    Ok(SecretString::from(s.to_owned()))
}

impl Settings {
    /// How the dispatchers fill Redis (`jobs::dispatch`).
    pub fn dispatch_policy(&self) -> crate::dispatch::Policy {
        crate::dispatch::Policy {
            max_window: self.dispatch_window,
            fifo: self.dispatch_fifo,
        }
    }

    pub fn result_ttl(&self) -> Duration {
        Duration::from_secs(self.result_ttl_seconds)
    }

    pub fn image_timeout(&self) -> Duration {
        Duration::from_secs(self.image_timeout_seconds)
    }

    pub fn open_batch_idle(&self) -> Duration {
        Duration::from_secs(self.open_batch_idle_seconds)
    }

    pub fn upload_stale(&self) -> Duration {
        Duration::from_secs(self.upload_stale_seconds)
    }

    pub fn database_url(&self) -> &str {
        self.database_url.expose_secret()
    }

    pub fn redis_url(&self) -> &str {
        self.redis_url.expose_secret()
    }

    /// The webhook settings, when webhooks are on (`WEBHOOK_SECRET` is set).
    pub fn webhooks(&self) -> Option<crate::webhook::WebhookSettings> {
        let secret = self.webhook_secret.clone()?;
        Some(crate::webhook::WebhookSettings {
            secret,
            allow_private: self.webhook_allow_private,
            max_attempts: self.webhook_max_attempts,
            backoff: Duration::from_secs(self.webhook_backoff_seconds),
            timeout: Duration::from_secs(self.webhook_timeout_seconds),
        })
    }

    /// The limits the image pipeline enforces.
    pub fn image_limits(&self) -> crate::pipeline::Limits {
        crate::pipeline::Limits {
            max_pixels: self.max_image_pixels,
            jpeg_quality: self.jpeg_quality,
            jpeg_path: crate::pipeline::JpegPath::Auto,
        }
    }
}

/// A number of seconds as people say it: "one hour", "2 hours", "30 minutes", "one day",
/// "90 seconds" (the largest whole unit).
pub fn human_duration(seconds: u64) -> String {
    for (unit, size) in [("day", 86_400), ("hour", 3_600), ("minute", 60)] {
        if seconds >= size && seconds.is_multiple_of(size) {
            let n = seconds / size;
            return if n == 1 {
                format!("one {unit}")
            } else {
                format!("{n} {unit}s")
            };
        }
    }
    if seconds == 1 {
        "one second".into()
    } else {
        format!("{seconds} seconds")
    }
}

/// A size as people read it: "10 GiB", "500 MiB", "1.5 MiB", "64.0 KiB", "12 bytes".
pub fn human_bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;
    if n >= GIB && n.is_multiple_of(GIB) {
        format!("{} GiB", n / GIB)
    } else if n >= 10 * GIB {
        format!("{:.1} GiB", n as f64 / GIB as f64)
    } else if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= MIB {
        format!("{:.1} MiB", n as f64 / MIB as f64)
    } else if n >= 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

/// Loads `.env` (when present) into the environment before clap reads it. Values already in the
/// environment win.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let cli = Cli::try_parse_from([
            "x",
            "--database-url",
            "postgres://u:hunter2@h/db",
            "--redis-url",
            "redis://:pw-redis@h",
            "--s3-bucket",
            "b",
            "--s3-access-key-id",
            "GK1",
            "--s3-secret-access-key",
            "s3cr3t",
            "--webhook-secret",
            "whsec-hunter3-0123456789",
        ])
        .expect("valid settings");
        let text = format!("{:?}", cli.settings);
        assert!(!text.contains("hunter3"), "{text}");
        let hooks = format!("{:?}", cli.settings.webhooks().expect("webhooks on"));
        assert!(!hooks.contains("hunter3"), "{hooks}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("pw-redis"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert_eq!(cli.settings.result_ttl_seconds, 3600);
    }

    /// The settings that have no default, then `more`.
    fn required_and<'a>(more: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "x",
            "--database-url",
            "postgres://h/db",
            "--redis-url",
            "redis://h",
            "--s3-bucket",
            "b",
            "--s3-access-key-id",
            "k",
            "--s3-secret-access-key",
            "s",
        ];
        args.extend_from_slice(more);
        args
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = Cli::try_parse_from(required_and(&["--jpeg-quality", "300"]))
            .err()
            .expect("quality 300 is refused");
        assert!(err.to_string().contains("jpeg-quality"), "{err}");
    }

    #[test]
    fn webhooks_are_off_without_a_secret_and_a_short_one_is_refused() {
        let off = Cli::try_parse_from(required_and(&[])).expect("valid settings");
        assert!(off.settings.webhooks().is_none());
        let err = Cli::try_parse_from(required_and(&["--webhook-secret", "short"]))
            .err()
            .expect("a short secret is refused");
        assert!(err.to_string().contains("webhook-secret"), "{err}");
        assert!(err.to_string().contains("16 characters"), "{err}");
        let on = Cli::try_parse_from(required_and(&[
            "--webhook-secret",
            "0123456789abcdef",
            "--webhook-allow-private",
            "1",
            "--webhook-backoff-seconds",
            "2",
        ]))
        .expect("valid settings");
        let hooks = on.settings.webhooks().expect("webhooks on");
        assert!(hooks.allow_private);
        assert_eq!(hooks.max_attempts, 8);
        assert_eq!(hooks.backoff, Duration::from_secs(2));
        assert_eq!(hooks.timeout, Duration::from_secs(10));
    }

    #[test]
    fn sizes_read_as_people_say_them() {
        assert_eq!(human_bytes(10 << 30), "10 GiB");
        assert_eq!(human_bytes(500 << 20), "500 MiB");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
        assert_eq!(human_bytes(2047 << 20), "2047 MiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(3600), "one hour");
        assert_eq!(human_duration(7200), "2 hours");
        assert_eq!(human_duration(1800), "30 minutes");
        assert_eq!(human_duration(86_400), "one day");
        assert_eq!(human_duration(90), "90 seconds");
        assert_eq!(human_duration(5400), "90 minutes");
        assert_eq!(human_duration(1), "one second");
    }

    #[test]
    fn an_empty_s3_endpoint_means_aws() {
        let settings = |endpoint: &str| {
            Cli::try_parse_from(required_and(&["--s3-endpoint", endpoint]))
                .expect("valid settings")
                .settings
        };
        use crate::storage::{Connections, StorageConfig};
        let aws = StorageConfig::from_settings(&settings(""));
        assert_eq!(aws.endpoint, None);
        assert_eq!(aws.connections, Connections::Sdk);
        let garage = StorageConfig::from_settings(&settings("http://garage:3900"));
        assert_eq!(garage.endpoint.as_deref(), Some("http://garage:3900"));
        assert_eq!(garage.connections, Connections::QuickAck);
    }
}
