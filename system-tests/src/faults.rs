//! Tools to break things on purpose, on loopback only: a private Redis that a test may flush or
//! restart without persistence, and a TCP proxy that cuts every connection and refuses new ones
//! for a while (a storage server that is unreachable).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A `redis-server` of one test, without persistence: a restart loses everything.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
    log: std::path::PathBuf,
    tls: Option<RedisTls>,
}

/// A TLS port of a [`PrivateRedis`], beside its plain one, with this certificate and key.
#[derive(Debug, Clone)]
pub struct RedisTls {
    pub port: u16,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl PrivateRedis {
    pub async fn start(log: std::path::PathBuf) -> anyhow::Result<Self> {
        Self::start_with(log, None).await
    }

    /// A server that also serves TLS, with `cert` and `key`, on a port of its own
    /// ([`PrivateRedis::tls_url`]); the test's own connections use the plain port.
    pub async fn start_tls(
        log: std::path::PathBuf,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        let tls = RedisTls {
            port: free_port()?,
            cert,
            key,
        };
        Self::start_with(log, Some(tls)).await
    }

    async fn start_with(log: std::path::PathBuf, tls: Option<RedisTls>) -> anyhow::Result<Self> {
        let mut redis = Self {
            port: free_port()?,
            child: None,
            log,
            tls,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://127.0.0.1:<tls port>/` (started with [`PrivateRedis::start_tls`]).
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("started with start_tls");
        format!("rediss://127.0.0.1:{}/", tls.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new("redis-server");
        if let Some(tls) = &self.tls {
            command
                .arg("--tls-port")
                .arg(tls.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .args(["--tls-auth-clients", "no"]);
        }
        let child = command
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("start redis-server (installed by scripts/test)")?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(mut conn) = self.connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("redis-server did not answer on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// Kills the server (SIGKILL) and starts an empty one on the same port after `down`.
    pub async fn restart_empty(&mut self, down: Duration) -> anyhow::Result<()> {
        self.stop();
        tokio::time::sleep(down).await;
        self.start_again().await
    }

    /// Kills the server (SIGKILL): Redis is down until [`PrivateRedis::start_again`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts an empty server on the same port.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn().await
    }

    /// Bytes of memory the server uses (`INFO memory`, `used_memory`).
    pub async fn used_memory(&self) -> anyhow::Result<u64> {
        let mut conn = self.connection().await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("used_memory in INFO")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy on loopback in front of `upstream`. [`TcpProxy::cut`] closes every connection and
/// refuses new ones until [`TcpProxy::restore`].
pub struct TcpProxy {
    pub addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cut, _) = watch::channel(false);
        let cut = Arc::new(cut);
        let state = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if *state.borrow() {
                    drop(client); // unreachable: the connection is closed at once
                    continue;
                }
                let mut down = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(Self { addr, cut, task })
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_replace(true);
    }
}
