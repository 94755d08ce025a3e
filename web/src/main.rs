//! The `web` binary: reads its settings (the environment, an optional `.env`, flags) and runs
//! the web front end ([`web::run`]).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    jobs::config::load_dotenv();
    let cli = web::Cli::parse();
    jobs::telemetry::init(&cli.settings.log_format);
    web::run(cli).await
}
