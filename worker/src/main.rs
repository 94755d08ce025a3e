//! The `worker` binary: an image child process (`worker __image-child`, started by a worker),
//! `worker apply` (the pipeline on local files, no services), or a worker: reads its settings
//! and runs [`worker::run`].

use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(worker::isolate::CHILD_ARG) {
        worker::isolate::child_main(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some("apply") {
        let code = worker::apply::main(&args[1..])?;
        std::process::exit(code);
    }
    jobs::config::load_dotenv();
    let cli = worker::Cli::parse();
    jobs::telemetry::init(&cli.settings.log_format);
    // The async runtime only waits on I/O; image work runs in the image child processes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(worker::run(cli))
}
