//! The web front end: upload form, waiting page, download, JSON API, health checks.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;

mod api;
mod app;
mod error;
mod pace;
mod pages;
mod upload;

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

    /// Create the S3 bucket at start when it does not exist.
    #[arg(long, env = "S3_CREATE_BUCKET", default_value_t = false, action = clap::ArgAction::Set)]
    pub s3_create_bucket: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jobs::config::load_dotenv();
    let cli = Cli::parse();
    jobs::telemetry::init(&cli.settings.log_format);

    let state = app::AppState::connect(cli.settings.clone()).await?;
    if cli.s3_create_bucket {
        state
            .storage
            .ensure_bucket()
            .await
            .context("cannot create the S3 bucket (S3_BUCKET)")?;
    }
    tokio::spawn(state.clone().report_uploads());
    let router = app::router(state);
    let addr = SocketAddr::new(cli.host, cli.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (HOST, PORT)"))?;
    let local = listener.local_addr()?;
    // On stdout, for scripts and tests that wait for it.
    println!("web listening on http://{local}");
    tracing::info!(%local, "web listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(jobs::signals::shutdown_signal())
        .await?;
    tracing::info!("web stopped");
    Ok(())
}
