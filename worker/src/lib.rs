//! The worker: runs `ProcessImage` jobs from Redis, the purge and reconciler cron jobs, and
//! sends webhooks. Start as many as you like, on any host; they share
//! the work. `main.rs` parses the settings and calls [`run`] (or [`apply::main`], or an image
//! child's loop).

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

pub mod apply;
pub mod cron;
pub mod ctx;
pub mod dispatcher;
pub mod handlers;
pub mod health;
pub mod heartbeat;
pub mod isolate;
pub mod webhooks;

pub use ctx::Ctx;

/// Applies image tasks to uploaded batches (dispatched fairly among owners from Postgres), and
/// purges expired batches.
#[derive(Debug, Parser)]
#[command(
    name = "worker",
    version,
    about,
    after_help = "To process local files with the registered tasks, without any service: worker apply --help"
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: jobs::Settings,

    /// Images processed at once by this worker (default: the number of cores).
    #[arg(long, env = "WORKER_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: Option<u32>,

    /// Name of this worker in logs and in the database (default: host name and process id).
    #[arg(long, env = "WORKER_NAME")]
    pub name: Option<String>,

    /// How often an idle worker asks Redis for work, in milliseconds (new jobs also wake it at
    /// once through the `{QUEUE_PREFIX}:wake` channel; polling catches what that misses).
    #[arg(long, env = "POLL_INTERVAL_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub poll_interval_ms: u64,

    /// Cron expression (with seconds) of the purge of expired batches.
    #[arg(long, env = "PURGE_SCHEDULE", default_value = "0 * * * * *")]
    pub purge_schedule: String,

    /// Cron expression (with seconds) of the reconciler.
    #[arg(long, env = "RECONCILE_SCHEDULE", default_value = "*/30 * * * * *")]
    pub reconcile_schedule: String,

    /// A pending image whose job is older than this many seconds is enqueued again (Redis lost
    /// it, or its worker died).
    #[arg(long, env = "RECONCILE_AFTER_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_after_seconds: u64,

    /// Most memory (address space) one image's processing may use, in MiB; an image that needs
    /// more fails with a clear reason instead of taking the worker down.
    #[arg(long, env = "IMAGE_MEMORY_LIMIT_MB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..))]
    pub image_memory_limit_mb: u64,

    /// Images one image child process handles before it is replaced by a fresh one (children
    /// that crash or hang are always replaced).
    #[arg(long, env = "IMAGE_CHILD_MAX_IMAGES", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub image_child_max_images: u32,

    /// Tests only: lets marked images crash, hang or slow down their processing (see the
    /// worker's `isolate` module). Never set in production.
    #[arg(long, env = "WORKER_FAULT_INJECTION", default_value_t = false, hide = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub fault_injection: bool,

    /// Port of the health endpoint (`/healthz`, `/readyz`); none when unset.
    #[arg(long, env = "HEALTH_PORT")]
    pub health_port: Option<u16>,

    /// Address the health endpoint listens on (0.0.0.0 in containers).
    #[arg(long, env = "HEALTH_HOST", default_value = "127.0.0.1")]
    pub health_host: std::net::IpAddr,

    /// Seconds a stopping worker waits for the jobs it holds before it exits.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
}

impl Cli {
    fn concurrency(&self) -> usize {
        self.concurrency.map(|c| c as usize).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    fn worker_name(&self) -> String {
        self.name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id()))
    }
}

/// This host's name, as the monitor shows it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// Connects to Postgres, Redis and S3 (waiting for them), and runs the job handlers, the
/// dispatcher, the crons, the webhooks (with `WEBHOOK_SECRET`) and (with `HEALTH_PORT`) the
/// health endpoint until SIGTERM or Ctrl-C, then finishes or hands back the images in hand and
/// the webhooks in flight.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Arc::new(cli.settings.clone());
    let name = cli.worker_name();
    let concurrency = cli.concurrency();
    let db = jobs::connect_db(settings.database_url(), settings.database_pool_size).await?;
    let storage = jobs::storage::Storage::new(&settings);
    let conn = jobs::connect_redis(settings.redis_url()).await?;
    // One job per fetch: a fetched job waits in this worker until a slot frees, where a job
    // pushed ahead of it (a newcomer's turn, `jobs::dispatch`) cannot overtake it.
    let queues = jobs::queue::Queues::with_connection(conn, &settings.queue_prefix, 1);
    let ctx = Ctx {
        db,
        storage,
        queues,
        settings: settings.clone(),
        worker: Arc::from(name.as_str()),
        pool: Arc::new(isolate::Pool::new(
            isolate::ChildSettings {
                limits: settings.image_limits(),
                timeout: settings.image_timeout(),
                memory_limit_bytes: cli.image_memory_limit_mb * 1024 * 1024,
                faults: cli.fault_injection,
                max_images: cli.image_child_max_images,
            },
            concurrency,
        )),
        logos: Arc::default(),
        wake_images: jobs::wake::Wake::default(),
        in_hand: jobs::InProgress::default(),
        dispatch_now: Arc::default(),
        backlog: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        finished_since_dispatch: Arc::default(),
        concurrency,
    };
    tracing::info!(worker = %name, concurrency, "worker starting");
    jobs::metrics::touch_all();
    let heartbeat = tokio::spawn(heartbeat::run(ctx.clone(), host_name(), concurrency));
    if let Some(port) = cli.health_port {
        let addr = std::net::SocketAddr::new(cli.health_host, port);
        health::serve(ctx.clone(), concurrency, addr).await?;
    }

    let poll = Duration::from_millis(cli.poll_interval_ms);
    let dispatcher = tokio::spawn(dispatcher::run(ctx.clone(), poll));
    let listener = {
        let images = ctx.wake_images.clone();
        let backlog = ctx.backlog.clone();
        let image_queue = jobs::queue::image_queue(&settings.queue_prefix);
        tokio::spawn(jobs::wake::listen(
            settings.redis_url().to_owned(),
            settings.queue_prefix.clone(),
            move |queue| {
                if queue == image_queue {
                    // Jobs pushed elsewhere (`web`, another worker): more may wait behind them.
                    backlog.store(true, std::sync::atomic::Ordering::Relaxed);
                    images.signal();
                }
            },
        ))
    };
    let schedules = cron::Schedules {
        purge: cli.purge_schedule.clone(),
        reconcile: cli.reconcile_schedule.clone(),
        reconcile_after: Duration::from_secs(cli.reconcile_after_seconds),
    };
    let scheduler = cron::start(&schedules, ctx.clone()).await?;
    // Told to stop with the rest, the webhook loop claims no more and finishes the attempts in
    // flight (within WEBHOOK_TIMEOUT_SECONDS) while the jobs in hand finish.
    let stop_webhooks = Arc::new(tokio::sync::Notify::new());
    let webhooks = match settings.webhooks() {
        Some(hooks) => {
            let stop = stop_webhooks.clone();
            Some(tokio::spawn(webhooks::run(
                ctx.clone(),
                hooks,
                async move {
                    stop.notified().await;
                },
            )))
        }
        None => {
            tracing::info!("webhooks are off (WEBHOOK_SECRET is not set)");
            None
        }
    };
    let result = handlers::run_monitor(
        ctx.clone(),
        &name,
        concurrency,
        poll,
        Duration::from_secs(cli.shutdown_grace_seconds),
        {
            let stop = stop_webhooks.clone();
            async move {
                jobs::signals::shutdown_signal().await;
                tracing::info!("stop requested: finishing the jobs in hand");
                stop.notify_one();
            }
        },
    )
    .await;
    dispatcher.abort();
    listener.abort();
    heartbeat.abort();
    stop_webhooks.notify_one();
    if let Some(webhooks) = webhooks {
        let _ = webhooks.await;
    }
    // Images still in hand after the grace period go back to the queue at once, rather than
    // waiting for Redis to notice that this worker is gone.
    ctx.hand_back_unfinished().await;
    cron::stop(scheduler).await;
    heartbeat::stopped(&ctx).await;
    tracing::info!(worker = %name, "worker stopped");
    result
}
