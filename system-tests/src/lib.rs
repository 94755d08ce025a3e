//! A harness that runs the real `web` and `worker` binaries, as separate processes, against the
//! real Postgres, Redis and S3 server started by `scripts/test` (settings from the environment).
//! Every system under test gets a database, a Redis key prefix and a bucket of its own, so tests
//! run in parallel without seeing each other.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use jobs::storage::{Connections, Storage, StorageConfig};
use serde_json::Value;
use sqlx::PgPool;

pub mod browser;
pub mod checks;
pub mod fair;
pub mod faults;
pub mod hosts;
pub mod images;
pub mod open;

use faults::{PrivateRedis, TcpProxy};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with ./scripts/test, which starts Postgres, Redis and Garage")
    })
}

/// The repository's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The folder holding the `web` and `worker` binaries: `target/debug` (or `target/release` with
/// `WM_PROFILE=release`). They are built by `scripts/test` and `scripts/bench` before the tests
/// run (`cargo build --workspace --bins`); building them from inside a test would run cargo
/// with the test runner's environment, which makes build scripts and their dependents rebuild.
pub fn binaries() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let release = std::env::var("WM_PROFILE").is_ok_and(|p| p == "release");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        let dir = target.join(if release { "release" } else { "debug" });
        for bin in ["web", "worker"] {
            assert!(
                dir.join(bin).exists(),
                "{} is missing: build with `cargo build --workspace --bins` (./scripts/test does)",
                dir.join(bin).display()
            );
        }
        dir
    })
}

/// What a system under test is started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// One worker process per name.
    pub workers: Vec<String>,
    /// Extra environment for every process (`RESULT_TTL_SECONDS`, limits, schedules...).
    pub env: Vec<(String, String)>,
    /// A Redis of this system's own, which the test may flush or restart.
    pub own_redis: bool,
    /// Reach S3 through a proxy the test can cut ([`System::s3_proxy`]).
    pub proxy_s3: bool,
    /// Reach Postgres through a proxy the test can cut ([`System::postgres_proxy`]).
    pub proxy_postgres: bool,
    /// Reach Postgres and a Redis of this system's own over TLS only, verifying their
    /// certificate against the local test CA (`sslmode=verify-full`, `rediss://`).
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: vec!["worker-a".into()],
            env: Vec::new(),
            own_redis: false,
            proxy_s3: false,
            proxy_postgres: false,
            tls: false,
        }
    }
}

impl Options {
    pub fn workers(mut self, names: &[&str]) -> Self {
        self.workers = names.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn own_redis(mut self) -> Self {
        self.own_redis = true;
        self
    }

    pub fn proxy_postgres(mut self) -> Self {
        self.proxy_postgres = true;
        self
    }

    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn proxy_s3(mut self) -> Self {
        self.proxy_s3 = true;
        self
    }

    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.into(), value.to_string()));
        self
    }
}

/// A database and a bucket name of a test's own, on the services `scripts/test` started: what a
/// [`System`] runs against, and what in-process tests (`web`'s router tests) use directly.
#[derive(Debug, Clone)]
pub struct Scratch {
    /// The database's name, and the URL of the server it was created through.
    pub database: String,
    pub admin_url: String,
    /// The URL of the database itself.
    pub database_url: String,
    /// A bucket name of its own (not created: `ensure_bucket` or `S3_CREATE_BUCKET` does that).
    pub bucket: String,
    /// A unique tag (for queue prefixes and log folders).
    pub unique: String,
}

impl Scratch {
    pub async fn make() -> anyhow::Result<Self> {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let unique = format!(
            "{stamp}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let database = format!("wm_t_{unique}");
        let admin_url = env("DATABASE_URL");
        let admin = PgPool::connect(&admin_url)
            .await
            .context("connect to Postgres")?;
        drop_old_databases(&admin, stamp).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        Ok(Self {
            database_url: replace_db(&admin_url, &database),
            bucket: format!("wm-t-{}", unique.replace('_', "-")),
            database,
            admin_url,
            unique,
        })
    }

    /// The settings of a process against this scratch space, as command-line flags (every
    /// binary's settings parse them): the database, the bucket, a queue prefix of its own, and
    /// Redis and S3 from the environment.
    pub fn args(&self) -> Vec<String> {
        [
            ("--database-url", self.database_url.clone()),
            ("--redis-url", env("REDIS_URL")),
            ("--queue-prefix", format!("t{}", self.unique)),
            ("--s3-endpoint", env("S3_ENDPOINT")),
            ("--s3-region", env("S3_REGION")),
            ("--s3-bucket", self.bucket.clone()),
            ("--s3-access-key-id", env("S3_ACCESS_KEY_ID")),
            ("--s3-secret-access-key", env("S3_SECRET_ACCESS_KEY")),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_owned(), v])
        .collect()
    }

    /// A client of this scratch space's bucket.
    pub fn storage(&self) -> Storage {
        let endpoint = env("S3_ENDPOINT");
        Storage::from_config(StorageConfig {
            connections: Connections::for_endpoint(Some(&endpoint)),
            endpoint: Some(endpoint),
            region: env("S3_REGION"),
            bucket: self.bucket.clone(),
            access_key_id: env("S3_ACCESS_KEY_ID"),
            secret_access_key: env("S3_SECRET_ACCESS_KEY").into(),
            force_path_style: true,
        })
    }

    /// Deletes the bucket's objects and the bucket, and drops the database.
    pub async fn clean_up(self) {
        let db = PgPool::connect_lazy(&self.database_url).expect("a valid URL");
        clean_up(db, self.storage(), Some((self.database, self.admin_url))).await;
    }
}

/// A running system: one `web`, some workers, and handles on its database and bucket.
pub struct System {
    pub base: String,
    pub http: reqwest::Client,
    pub db: PgPool,
    pub storage: Storage,
    pub name: String,
    env: HashMap<String, String>,
    web: Option<Child>,
    /// What `web` is started through (`ip netns exec <namespace>`), if anything.
    web_wrapper: Vec<String>,
    workers: Vec<(String, Child)>,
    logs: PathBuf,
    redis: Option<PrivateRedis>,
    s3_proxy: Option<TcpProxy>,
    pg_proxy: Option<TcpProxy>,
    /// This system's own database, dropped when the system ends, and the server's URL to drop
    /// it through; `None` when the test brought its own services.
    own_database: Option<(String, String)>,
    /// Set once the database and the bucket are gone.
    cleaned: bool,
}

impl System {
    pub async fn start(name: &str, options: Options) -> anyhow::Result<Self> {
        binaries(); // fail early when they are missing
        let scratch = Scratch::make().await?;
        let Scratch {
            database,
            admin_url,
            database_url: db_url,
            bucket,
            unique,
        } = scratch.clone();

        let mut vars: HashMap<String, String> = HashMap::new();
        for key in [
            "REDIS_URL",
            "S3_ENDPOINT",
            "S3_REGION",
            "S3_ACCESS_KEY_ID",
            "S3_SECRET_ACCESS_KEY",
        ] {
            vars.insert(key.into(), env(key));
        }
        vars.insert("DATABASE_URL".into(), db_url.clone());
        vars.insert("S3_BUCKET".into(), bucket.clone());
        vars.insert("QUEUE_PREFIX".into(), format!("t{unique}"));
        vars.insert("POLL_INTERVAL_MS".into(), "100".into());
        vars.insert("RUST_LOG".into(), "info,worker=debug".into());
        // Tests send many batches from one address; the owner limits have tests of their own
        // (`tests/owners.rs`), which set them low.
        vars.insert("OWNER_MAX_BATCHES_PER_MINUTE".into(), "100000".into());
        for (k, v) in &options.env {
            vars.insert(k.clone(), v.clone());
        }

        let logs = workspace_root()
            .join("target/system-tests")
            .join(format!("{name}-{unique}"));
        std::fs::create_dir_all(&logs)?;
        let redis = if options.tls {
            let redis = PrivateRedis::start_tls(
                logs.join("redis.log"),
                env("WM_TLS_CERT").into(),
                env("WM_TLS_KEY").into(),
            )
            .await?;
            vars.insert("REDIS_URL".into(), redis.tls_url());
            let ca = env("WM_TLS_CA");
            // The Redis client trusts the system's certificates, which SSL_CERT_FILE replaces.
            vars.insert("SSL_CERT_FILE".into(), ca.clone());
            let separator = if db_url.contains('?') { '&' } else { '?' };
            vars.insert(
                "DATABASE_URL".into(),
                format!("{db_url}{separator}sslmode=verify-full&sslrootcert={ca}"),
            );
            Some(redis)
        } else if options.own_redis {
            let redis = PrivateRedis::start(logs.join("redis.log")).await?;
            vars.insert("REDIS_URL".into(), redis.url());
            Some(redis)
        } else {
            None
        };
        let s3_direct = vars["S3_ENDPOINT"].clone();
        let s3_proxy = if options.proxy_s3 {
            let upstream = s3_direct
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .context("S3_ENDPOINT as http://ip:port")?;
            let proxy = TcpProxy::start(upstream).await?;
            vars.insert("S3_ENDPOINT".into(), format!("http://{}", proxy.addr));
            Some(proxy)
        } else {
            None
        };
        let pg_proxy = if options.proxy_postgres {
            let host_port = db_url
                .split_once('@')
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(hp, _)| hp.to_owned())
                .context("DATABASE_URL as postgres://user:password@ip:port/db")?;
            let proxy = TcpProxy::start(host_port.parse().context("an ip:port")?).await?;
            let proxied = db_url.replacen(&host_port, &proxy.addr.to_string(), 1);
            vars.insert("DATABASE_URL".into(), proxied);
            Some(proxy)
        } else {
            None
        };
        // The harness reaches the bucket directly, past any proxy.
        let storage = scratch.storage();
        storage
            .ensure_bucket()
            .await
            .context("create the test bucket")?;

        let mut system = Self {
            base: String::new(),
            http: harness_http()?,
            db: harness_db(&db_url).await?,
            storage,
            name: name.into(),
            env: vars,
            web: None,
            web_wrapper: Vec::new(),
            workers: Vec::new(),
            logs,
            redis,
            s3_proxy,
            pg_proxy,
            own_database: Some((database, admin_url)),
            cleaned: false,
        };
        system.start_web().await?;
        for worker in &options.workers {
            system.start_worker(worker)?;
        }
        Ok(system)
    }

    /// A system whose `web` runs against services of the test's own ([`hosts::Services`]),
    /// started through `wrapper` (`ip netns exec <namespace>`) and listening on `host`; workers
    /// are started with [`System::start_worker_via`].
    pub async fn hosted(
        name: &str,
        services: &hosts::Services,
        wrapper: Vec<String>,
        host: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        binaries();
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert("DATABASE_URL".into(), services.database_url.clone());
        vars.insert("REDIS_URL".into(), services.redis_url.clone());
        vars.insert("S3_ENDPOINT".into(), services.s3_endpoint.clone());
        vars.insert("S3_REGION".into(), "us-east-1".into());
        vars.insert("S3_BUCKET".into(), services.bucket.clone());
        vars.insert("S3_ACCESS_KEY_ID".into(), services.access_key_id.clone());
        vars.insert(
            "S3_SECRET_ACCESS_KEY".into(),
            services.secret_access_key.clone(),
        );
        vars.insert("QUEUE_PREFIX".into(), "watermark".into());
        vars.insert("POLL_INTERVAL_MS".into(), "100".into());
        vars.insert("RUST_LOG".into(), "info,worker=debug".into());
        vars.insert("HOST".into(), host.into());
        for (k, v) in env {
            vars.insert((*k).into(), v.clone());
        }
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let logs = workspace_root()
            .join("target/system-tests")
            .join(format!("{name}-{stamp}-{}", std::process::id()));
        std::fs::create_dir_all(&logs)?;
        let storage = services.storage();
        let mut system = Self {
            base: String::new(),
            http: harness_http()?,
            db: harness_db(&services.database_url).await?,
            storage,
            name: name.into(),
            env: vars,
            web: None,
            web_wrapper: wrapper,
            workers: Vec::new(),
            logs,
            redis: None,
            s3_proxy: None,
            pg_proxy: None,
            own_database: None,
            cleaned: false,
        };
        system.start_web().await?;
        Ok(system)
    }

    /// `bin` from [`binaries`], started through `wrapper` when there is one.
    fn binary_command(bin: &str, wrapper: &[String]) -> Command {
        match wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(binaries().join(bin));
                cmd
            }
            None => Command::new(binaries().join(bin)),
        }
    }

    /// Starts `web` (again, after [`System::kill_web`]) and waits until it listens.
    pub async fn start_web(&mut self) -> anyhow::Result<()> {
        let mut child = Self::binary_command("web", &self.web_wrapper)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .stderr(log_file(&self.logs, "web")?)
            .env("RUST_LOG", "info")
            .spawn()
            .context("start web")?;
        let stdout = child.stdout.take().context("web stdout")?;
        self.web = Some(child);
        let line = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).map(|_| line)
            }),
        )
        .await
        .context("web did not start within 60 s")???;
        let url = line
            .trim()
            .strip_prefix("web listening on ")
            .with_context(|| format!("web did not start: {line:?}; see {}", self.logs.display()))?;
        self.base = url.to_owned();
        Ok(())
    }

    /// Starts one more worker process named `name`.
    pub fn start_worker(&mut self, name: &str) -> anyhow::Result<()> {
        self.start_worker_via(name, &[], &[])
    }

    /// Starts a worker named `name` through `wrapper` (`ip netns exec <namespace>`), with
    /// `env` over this system's environment.
    pub fn start_worker_via(
        &mut self,
        name: &str,
        wrapper: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let child = Self::binary_command("worker", wrapper)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .env("WORKER_NAME", name)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log_file(&self.logs, name)?)
            .spawn()
            .context("start worker")?;
        self.workers.retain(|(n, _)| n != name);
        self.workers.push((name.into(), child));
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST /api/batches` with `files` and an optional pipeline; the answer's status and JSON.
    pub async fn submit(
        &self,
        files: &[(&str, Vec<u8>)],
        pipeline: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut form = reqwest::multipart::Form::new();
        if let Some(p) = pipeline {
            form = form.text("pipeline", p.to_string());
        }
        for (name, bytes) in files {
            form = form.part(
                "files",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
            );
        }
        let res = self
            .http
            .post(self.url("/api/batches"))
            .multipart(form)
            .send()
            .await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await?))
    }

    /// `POST /batches` as the browser form sends it: `form=1`, then `fields` (such as
    /// `("task", "watermark")`, `("watermark.opacity", "0.8")`) in order, then the `files`. The
    /// answer is not followed (303 to the waiting page, or the form again with the problem).
    pub async fn submit_form(
        &self,
        fields: &[(&str, &str)],
        files: &[(&str, Vec<u8>)],
    ) -> anyhow::Result<reqwest::Response> {
        let mut form = reqwest::multipart::Form::new().text("form", "1");
        for (name, value) in fields {
            form = form.text(name.to_string(), value.to_string());
        }
        for (name, bytes) in files {
            form = form.part(
                "files",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
            );
        }
        Ok(self
            .http
            .post(self.url("/batches"))
            .multipart(form)
            .send()
            .await?)
    }

    /// Starts a multipart `POST` to `path` whose parts are sent one by one as the test says
    /// ([`RawUpload`]), so that a test can act between them.
    pub async fn raw_upload(&self, path: &str) -> anyhow::Result<RawUpload> {
        RawUpload::start(&self.base, path).await
    }

    /// Submits and expects 202; returns the batch id.
    pub async fn submit_ok(
        &self,
        files: &[(&str, Vec<u8>)],
        pipeline: Option<&Value>,
    ) -> anyhow::Result<String> {
        let (status, body) = self.submit(files, pipeline).await?;
        if status != 202 {
            bail!("submission answered {status}: {body}");
        }
        Ok(body["id"].as_str().context("an id")?.to_owned())
    }

    /// `GET /api/batches/{id}?images=false`: the batch without its list of images.
    pub async fn summary(&self, id: &str) -> anyhow::Result<(u16, Value)> {
        self.get_json(&format!("/api/batches/{id}?images=false"))
            .await
    }

    pub async fn status(&self, id: &str) -> anyhow::Result<(u16, Value)> {
        self.get_json(&format!("/api/batches/{id}")).await
    }

    /// `GET path`: the answer's status and JSON.
    pub async fn get_json(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let res = self.http.get(self.url(path)).send().await?;
        Ok((res.status().as_u16(), res.json().await?))
    }

    /// Polls the API until the batch is done, failed or expired (at most `limit`).
    pub async fn wait_final(&self, id: &str, limit: Duration) -> anyhow::Result<Value> {
        self.wait_final_polling(id, limit, Duration::from_millis(100), true)
            .await
    }

    /// [`Self::wait_final`], asking every `every`, with the list of images or without it
    /// ([`Self::summary`], which costs a large batch far less to answer).
    pub async fn wait_final_polling(
        &self,
        id: &str,
        limit: Duration,
        every: Duration,
        images: bool,
    ) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let (code, body) = if images {
                self.status(id).await?
            } else {
                self.summary(id).await?
            };
            if code == 200 && matches!(body["status"].as_str(), Some("done" | "failed" | "expired"))
            {
                return Ok(body);
            }
            if started.elapsed() > limit {
                bail!(
                    "batch {id} not finished after {limit:?}: {body}; logs in {}",
                    self.logs.display()
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    pub async fn download(&self, id: &str) -> anyhow::Result<(u16, bytes::Bytes)> {
        let res = self
            .http
            .get(self.url(&format!("/batches/{id}/download")))
            .send()
            .await?;
        Ok((res.status().as_u16(), res.bytes().await?))
    }

    /// `SELECT count(*) …` (or any one-number query) on this system's database.
    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.db)
            .await
            .expect("the count query runs")
    }

    /// Every object key in this system's bucket.
    pub async fn objects(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.storage.list("").await?)
    }

    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// Stops every process (SIGKILL), removes the bucket's objects and the bucket, and drops the
    /// system's database. (Dropping a system without it does the same.)
    pub async fn shutdown(mut self) {
        self.kill_all();
        clean_up(
            self.db.clone(),
            self.storage.clone(),
            self.own_database.take(),
        )
        .await;
        self.cleaned = true;
    }

    fn kill_all(&mut self) {
        for (_, child) in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(web) = self.web.as_mut() {
            let _ = web.kill();
            let _ = web.wait();
        }
    }

    /// A command for the binary `bin` (`web` or `worker`) with this system's environment, for
    /// tests that start one by hand with some of it changed.
    pub fn command(&self, bin: &str) -> Command {
        let mut cmd = Command::new(binaries().join(bin));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env);
        cmd
    }

    /// Kills `web` with SIGKILL.
    pub fn kill_web(&mut self) {
        if let Some(mut web) = self.web.take() {
            let _ = web.kill();
            let _ = web.wait();
        }
    }

    /// Kills the worker `name` with SIGKILL.
    pub fn kill_worker(&mut self, name: &str) {
        if let Some(i) = self.workers.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.workers.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to the worker `name` (as `docker stop` does) and waits for it to exit, at
    /// most `limit`: its exit status and how long it took, or an error if it did not exit.
    pub async fn terminate_worker(
        &mut self,
        name: &str,
        limit: Duration,
    ) -> anyhow::Result<(std::process::ExitStatus, Duration)> {
        let i = self
            .workers
            .iter()
            .position(|(n, _)| n == name)
            .context("no such worker")?;
        let (_, mut child) = self.workers.remove(i);
        let pid = child.id() as libc::pid_t;
        // SAFETY: sending a signal to a child process we own.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("worker {name} did not exit within {limit:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Each worker's name and whether its process is still running.
    pub fn workers_alive(&mut self) -> Vec<(String, bool)> {
        self.workers
            .iter_mut()
            .map(|(name, child)| (name.clone(), matches!(child.try_wait(), Ok(None))))
            .collect()
    }

    /// This system's private Redis (started with [`Options::own_redis`] or [`Options::tls`]).
    pub fn redis(&mut self) -> &mut PrivateRedis {
        self.redis
            .as_mut()
            .expect("started with Options::own_redis")
    }

    /// The environment every process of this system is started with.
    pub fn env(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// The proxy between this system and S3 (started with [`Options::proxy_s3`]).
    pub fn s3_proxy(&self) -> &TcpProxy {
        self.s3_proxy
            .as_ref()
            .expect("started with Options::proxy_s3")
    }

    /// The proxy between this system and Postgres (started with [`Options::proxy_postgres`]).
    pub fn postgres_proxy(&self) -> &TcpProxy {
        self.pg_proxy
            .as_ref()
            .expect("started with Options::proxy_postgres")
    }

    /// The queue prefix of this system in Redis.
    pub fn queue_prefix(&self) -> &str {
        &self.env["QUEUE_PREFIX"]
    }

    /// A connection to this system's Redis.
    pub async fn redis_connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        // A private Redis is reached on its plain port, even when the system uses its TLS one.
        let url = match &self.redis {
            Some(redis) => redis.url(),
            None => self.env["REDIS_URL"].clone(),
        };
        let client = redis::Client::open(url)?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The process id of `web`.
    pub fn web_pid(&self) -> u32 {
        self.web.as_ref().expect("web is running").id()
    }

    /// The process ids of the worker processes, in the order they were started.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().map(|(_, child)| child.id()).collect()
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.kill_all();
        if !self.cleaned {
            // A test that ended without `shutdown` (it failed, say): the same clean-up, on a
            // thread and runtime of its own, since `drop` cannot wait on this one.
            let (db, storage, own) = (
                self.db.clone(),
                self.storage.clone(),
                self.own_database.take(),
            );
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(clean_up(db, storage, own));
                Ok::<_, std::io::Error>(())
            })
            .join();
        }
    }
}

/// The harness's own client: it sees redirects rather than following them.
fn harness_http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// The harness's own connections to a system's database, named so that tests can tell the
/// apps' connections from these.
async fn harness_db(url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPool::connect_with(
        url.parse::<sqlx::postgres::PgConnectOptions>()?
            .application_name("system-tests"),
    )
    .await?)
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<Stdio> {
    Ok(Stdio::from(std::fs::File::create(
        dir.join(format!("{name}.log")),
    )?))
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A memory figure of a process from `/proc/<pid>/status`, in KiB (`VmRSS`, `VmHWM`, `VmPeak`...).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Restarts the Postgres every test uses (`scripts/lib.sh`'s `restart_postgres`: a fast
/// shutdown that cuts every connection, then a start). Only for tests that run alone in their
/// test binary.
pub fn restart_postgres() -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(". \"$1/scripts/lib.sh\" && restart_postgres")
        .arg("restart")
        .arg(workspace_root())
        .status()
        .context("run restart_postgres")?;
    if !status.success() {
        bail!("restart_postgres failed: {status}");
    }
    Ok(started.elapsed())
}

/// Deletes a system's objects and bucket, and drops its own database.
async fn clean_up(db: PgPool, storage: Storage, own_database: Option<(String, String)>) {
    let _ = storage.delete_prefix("").await;
    let _ = storage.delete_bucket().await;
    db.close().await;
    if let Some((name, admin_url)) = own_database {
        if let Ok(admin) = PgPool::connect(&admin_url).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

/// Drops test databases left by runs more than an hour old (a test process that was killed).
async fn drop_old_databases(admin: &PgPool, now: u64) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'wm\\_t\\_%'")
            .fetch_all(admin)
            .await
            .unwrap_or_default();
    for name in names {
        let stamp = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(now);
        if now.saturating_sub(stamp) > 3600 {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(admin)
            .await;
        }
    }
}

/// A multipart upload sent part by part over a connection of its own (HTTP/1.1, chunked), so
/// that a test can wait between parts, or go away in the middle by dropping it. Each part is
/// sent with the delimiter that opens the next one, since that is how the server learns that a
/// part has ended; [`RawUpload::finish`] closes the body with an empty `_end` field, which the
/// server ignores.
pub struct RawUpload {
    stream: tokio::net::TcpStream,
}

const RAW_BOUNDARY: &str = "wmrawuploadboundary";

/// One part of the body, followed by the delimiter that opens the next.
fn part(disposition: &str, bytes: &[u8]) -> Vec<u8> {
    let mut part = format!("Content-Disposition: form-data; {disposition}\r\n\r\n").into_bytes();
    part.extend_from_slice(bytes);
    part.extend_from_slice(format!("\r\n--{RAW_BOUNDARY}\r\n").as_bytes());
    part
}

/// `data` as one chunk of a chunked body.
fn chunked(data: &[u8]) -> Vec<u8> {
    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// The status and body of a raw HTTP answer.
fn parse_answer(answer: &[u8]) -> anyhow::Result<(u16, String)> {
    let answer = String::from_utf8_lossy(answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

impl RawUpload {
    async fn start(base: &str, path: &str) -> anyhow::Result<Self> {
        use tokio::io::AsyncWriteExt;
        let addr = base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: multipart/form-data; boundary={RAW_BOUNDARY}\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut upload = Self { stream };
        upload
            .chunk(format!("--{RAW_BOUNDARY}\r\n").as_bytes())
            .await?;
        Ok(upload)
    }

    async fn chunk(&mut self, data: &[u8]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(&chunked(data)).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn part(&mut self, disposition: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.chunk(&part(disposition, bytes)).await
    }

    /// Sends a text field.
    pub async fn text(&mut self, name: &str, value: &str) -> anyhow::Result<()> {
        self.part(&format!("name=\"{name}\""), value.as_bytes())
            .await
    }

    /// Sends a file part.
    pub async fn file(&mut self, name: &str, file_name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.part(&format!("name=\"{name}\"; filename=\"{file_name}\""), bytes)
            .await
    }

    /// Sends the text field `name` = `value` again and again, at most `count` times and `pause`
    /// apart, while reading the answer, as a client that never ends its body would; stops at the
    /// answer, or when the server has not taken a part for 5 s. Returns the answer and how many
    /// bytes of fields had been sent by then.
    pub async fn flood(
        self,
        name: &str,
        value: &str,
        count: usize,
        pause: Duration,
    ) -> anyhow::Result<(u16, String, u64)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut reader, mut writer) = self.stream.into_split();
        let answer = tokio::spawn(async move {
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(60), reader.read_to_end(&mut answer))
                .await;
            answer
        });
        let part = part(&format!("name=\"{name}\""), value.as_bytes());
        let chunk = chunked(&part);
        let mut sent = 0u64;
        for _ in 0..count {
            if answer.is_finished() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), writer.write_all(&chunk)).await {
                Ok(Ok(())) => sent += part.len() as u64,
                _ => break, // refused (the connection is closed) or no longer read
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        let (status, body) = parse_answer(&answer.await?)?;
        Ok((status, body, sent))
    }

    /// Ends the body and reads the answer: its status and body.
    pub async fn finish(mut self) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.chunk(
            format!(
                "Content-Disposition: form-data; name=\"_end\"\r\n\r\n\r\n--{RAW_BOUNDARY}--\r\n"
            )
            .as_bytes(),
        )
        .await?;
        self.stream.write_all(b"0\r\n\r\n").await?;
        let mut answer = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(60),
            self.stream.read_to_end(&mut answer),
        )
        .await
        .context("no answer within 60 s")??;
        parse_answer(&answer)
    }
}
