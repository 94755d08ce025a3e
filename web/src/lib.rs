//! The web front end: upload form, waiting page, download, JSON API, health checks. `main.rs`
//! parses the settings and calls [`run`]; tests drive [`routes::router`] in-process.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

pub mod access;
pub mod api;
pub mod chart;
pub mod choices;
pub mod error;
pub mod format;
pub mod keys;
pub mod live;
pub mod monitor;
pub mod open;
pub mod openapi;
pub mod owner;
pub mod pace;
pub mod pages;
pub mod preview;
pub mod routes;
pub mod state;
pub mod upload;
pub mod view;

pub use routes::router;
pub use state::AppState;

/// Serves the upload form, the waiting pages, the downloads and the JSON API.
#[derive(Debug, Parser)]
#[command(name = "web", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub settings: jobs::Settings,

    /// Address to listen on (0.0.0.0 in containers).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,

    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Seconds a client has to send a request's headers; a slower one is disconnected.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_seconds: u64,

    /// Create the S3 bucket at start when it does not exist.
    #[arg(long, env = "S3_CREATE_BUCKET", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_create_bucket: bool,

    /// Without a command, `web` serves.
    #[command(subcommand)]
    pub command: Option<keys::Command>,
}

/// Connects to Postgres, Redis and S3 (waiting for them), listens, prints `web listening on
/// http://…` on stdout for scripts and tests, and serves until SIGTERM or Ctrl-C.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(keys::Command::Keys(command)) = cli.command {
        return keys::run(&cli.settings, command).await;
    }
    return_large_buffers();
    jobs::metrics::touch_web();
    let state = AppState::connect(cli.settings.clone()).await?;
    if cli.s3_create_bucket {
        state
            .storage
            .ensure_bucket()
            .await
            .context("cannot create the S3 bucket (S3_BUCKET)")?;
    }
    tokio::spawn(state.clone().report_uploads());
    let live = state.live.clone();
    let router = router(state);
    let addr = SocketAddr::new(cli.host, cli.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (HOST, PORT)"))?;
    let local = listener.local_addr()?;
    // On stdout, for scripts and tests that wait for it.
    println!("web listening on http://{local}");
    tracing::info!(%local, "web listening");
    // On the stop signal the live streams end too, or the server would wait for them.
    let shutdown = async move {
        jobs::signals::shutdown_signal().await;
        live.close();
    };
    serve(
        listener,
        router,
        std::time::Duration::from_secs(cli.header_read_timeout_seconds),
        shutdown,
    )
    .await;
    tracing::info!("web stopped");
    Ok(())
}

/// Makes buffers of 128 KiB and more (upload parts, the multipart reader's buffer) come from
/// their own mappings, which go back to the system when freed. By default glibc raises that
/// threshold to the size of each such buffer freed (up to 32 MiB), after which they come from
/// per-thread arenas, where freed memory stays resident: measured, an upload streaming 500 MiB of
/// oversized files took `web` from 16 to 75–80 MiB with the default, and to 50 MiB with this.
fn return_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; called before any other work.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Serves HTTP/1.1 on `listener` until `shutdown`, then lets the requests in progress finish.
/// Unlike `axum::serve`, it gives hyper a timer, so that a client that trickles its headers is
/// disconnected after `header_timeout` (request bodies have their own floor: `pace.rs`).
async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    header_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Each request knows the connection's address (`owner::peer`): anonymous owners are
        // told apart by it.
        let peer = stream.peer_addr().ok();
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                if let Some(peer) = peer {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                }
                request
            },
        );
        let service = hyper_util::service::TowerToHyperService::new(service);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
