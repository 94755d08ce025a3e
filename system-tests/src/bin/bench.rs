//! Benchmark of the whole system against the reference figures (`shared/reference-system.md`):
//! one upload of N photo-like JPEGs, timed from the request to the download link, with real
//! `web` and `worker` processes, Postgres, Redis and Garage.
//!
//! Run it with the services up (`./scripts/bench` does that):
//!   cargo run -p system-tests --bin bench -- [images] [width] [height] [workers] [rounds]
//! Defaults: 20 images of 1920 × 1080, 2 workers, 3 rounds.

use std::time::{Duration, Instant};

use system_tests::images::photo_jpeg;
use system_tests::{Options, System};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let arg = |i: usize, default: u32| args.get(i).copied().unwrap_or(default);
    let (count, width, height, workers, rounds) =
        (arg(0, 20), arg(1, 1920), arg(2, 1080), arg(3, 2), arg(4, 3));

    let names: Vec<String> = (0..workers).map(|i| format!("bench-worker-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let sys = System::start("bench", Options::default().workers(&names)).await?;
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| (format!("photo-{i:03}.jpg"), photo_jpeg(width, height, i)))
        .collect();
    let bytes: usize = files.iter().map(|(_, b)| b.len()).sum();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    println!(
        "{count} JPEGs of {width}x{height} ({:.1} MB), {workers} worker process(es), {} build",
        bytes as f64 / 1e6,
        std::env::var("WM_PROFILE").unwrap_or_else(|_| "dev".into())
    );
    println!(
        "{:>5} {:>14} {:>16} {:>14} {:>12}",
        "round", "upload (s)", "submit→link (s)", "per image (ms)", "zip (ms)"
    );

    // A warm-up batch so that connection pools and caches are as in steady state.
    let warm = sys.submit_ok(&files[..1], None).await?;
    sys.wait_final(&warm, Duration::from_secs(120)).await?;

    for round in 1..=rounds {
        let started = Instant::now();
        let id = sys.submit_ok(&files, None).await?;
        let upload = started.elapsed();
        let status = sys.wait_final(&id, Duration::from_secs(600)).await?;
        let total = started.elapsed();
        anyhow::ensure!(
            status["status"] == "done" && status["done"] == count,
            "batch did not succeed: {status}"
        );
        // Worker time per image, and the archive step, from the worker logs' own timings.
        let (per_image, zip) = worker_timings(&sys, &id);
        println!(
            "{round:>5} {:>14.2} {:>16.2} {:>14} {:>12}",
            upload.as_secs_f64(),
            total.as_secs_f64(),
            per_image
                .map(|ms| format!("{ms:.0}"))
                .unwrap_or_else(|| "-".into()),
            zip.map(|ms| format!("{ms}")).unwrap_or_else(|| "-".into()),
        );
    }
    sys.shutdown().await;
    Ok(())
}

/// Mean worker time per image of batch `id`, and its archive time, read from the workers' logs
/// (they log `ms=` for both).
fn worker_timings(sys: &System, id: &str) -> (Option<f64>, Option<u64>) {
    let mut image_ms = Vec::new();
    let mut zip_ms = Vec::new();
    let Ok(dir) = std::fs::read_dir(sys.logs()) else {
        return (None, None);
    };
    for entry in dir.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains(id)) {
            let ms = line.split_whitespace().find_map(|w| {
                strip_ansi(w)
                    .strip_prefix("ms=")
                    .and_then(|v| v.parse::<u64>().ok())
            });
            if let Some(ms) = ms {
                if line.contains("image processed") {
                    image_ms.push(ms);
                } else if line.contains("batch archived") {
                    zip_ms.push(ms);
                }
            }
        }
    }
    let per_image =
        (!image_ms.is_empty()).then(|| image_ms.iter().sum::<u64>() as f64 / image_ms.len() as f64);
    (per_image, zip_ms.iter().max().copied())
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut in_escape = false;
    for c in s.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
