//! The end-to-end half of the benchmark suite (`./scripts/bench`): real `web` and `worker`
//! processes with Postgres, Redis and Garage on this machine, fed the standard workload that
//! `bench/workload.py` made. For each batch it prints the upload request's time, the time from
//! submit to download link, and the overhead ratio
//!
//!   R = submit → link ÷ (upload request + Σ per-image pipeline CPU ÷ cores),
//!
//! where the pipeline CPU is what `worker apply` spends per image on the same files, on one
//! core, over at least 30 images in one process (so that its start is spread as in a
//! long-lived image child).
//! Each batch is sent both ways, interleaved: with the pipeline field before the files (the
//! documented order: images are processed while the rest upload) and with no pipeline field
//! (the default, read at the end: processing starts when the upload is complete).
//!
//!   bench WORKLOAD_DIR [workers] [rounds]      (defaults: 2 workers, 3 rounds)
//!
//! `bench preview [requests]` times `POST /api/preview` instead (see [`preview`]), and
//! `bench fair WORKLOAD_DIR [workers] [photos per batch] [big batch]` measures fair dispatch
//! (see [`fair`]).
//! `bench scale [images] [workers]` sends one open batch of 10,000 images of 640 × 480 through
//! the API (see [`scale`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use system_tests::{Options, System};

/// Status polling while timing: 10 ms, as the targets are measured.
const POLL: Duration = Duration::from_millis(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "preview") {
        return preview(&args[1..]).await;
    }
    if args.first().is_some_and(|a| a == "fair") {
        return fair(&args[1..]).await;
    }
    if args.first().is_some_and(|a| a == "scale") {
        return scale(&args[1..]).await;
    }
    let workload = PathBuf::from(
        args.first()
            .context("usage: bench WORKLOAD_DIR [workers] [rounds]")?,
    );
    let workers: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(2);
    let rounds: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(3);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let names: Vec<String> = (0..workers).map(|i| format!("bench-worker-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let options = Options::default()
        .workers(&names)
        .env("MAX_FILES_PER_BATCH", 2500)
        .env(
            "POLL_INTERVAL_MS",
            std::env::var("POLL_INTERVAL_MS").unwrap_or_else(|_| "200".into()),
        );
    let sys = System::start("bench", options).await?;
    println!(
        "end to end: {workers} worker process(es) on {cores} cores, Postgres, Redis and Garage on \
         the same machine, {} build; status polled every {} ms",
        std::env::var("WM_PROFILE").unwrap_or_else(|_| "dev".into()),
        POLL.as_millis()
    );

    store_reads().await?;

    // A warm-up batch, so that pools, children and caches are as in steady state.
    let vga = read_set(&workload, "jpeg-vga", 1)?;
    let warm = sys.submit_ok(&as_files(&vga), None).await?;
    sys.wait_final(&warm, Duration::from_secs(120)).await?;

    println!(
        "{:<22} {:<14} {:>5} {:>11} {:>13} {:>14} {:>6}",
        "batch", "choices", "round", "upload (s)", "→ link (s)", "pipeline (s)", "R"
    );
    for (label, set, count) in [
        ("20 × 2 MP JPEG", "jpeg-2mp", 20),
        ("10 × 12 MP JPEG", "jpeg-12mp", 10),
    ] {
        let files = read_set(&workload, set, count)?;
        let cpu = pipeline_cpu(&files)?;
        let ideal_cpu = cpu.as_secs_f64() / cores as f64;
        // One untimed batch of this size first, so that neither order pays for the first
        // preparation of the mark at this size in the children.
        timed_batch(&sys, &files, Order::ChoicesLast).await?;
        let mut totals = [Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new()];
        for round in 1..=rounds {
            for (i, order) in ORDERS.iter().enumerate() {
                let cpu_before = cpu_by_part();
                let (upload, total) = timed_batch(&sys, &files, *order).await?;
                cpu[i].push((cpu_before, cpu_by_part()));
                let r = total.as_secs_f64() / (upload.as_secs_f64() + ideal_cpu);
                println!(
                    "{label:<22} {:<14} {round:>5} {:>11.3} {:>13.3} {:>14.3} {r:>6.2}",
                    order.label(),
                    upload.as_secs_f64(),
                    total.as_secs_f64(),
                    ideal_cpu
                );
                totals[i].push(total.as_secs_f64());
            }
        }
        for (i, order) in ORDERS.iter().enumerate() {
            totals[i].sort_by(f64::total_cmp);
            println!(
                "{label:<22} {:<14} median submit → link {:.3} s",
                order.label(),
                totals[i][totals[i].len() / 2]
            );
            if let Some((before, after)) = cpu[i].last() {
                println!(
                    "  CPU ms per image in the last round: {}",
                    cpu_per_image(before, after, count)
                );
            }
        }
    }

    // One small image, many times: the latency of the whole path.
    let mut times = Vec::new();
    for _ in 0..20 {
        let (_, total) = timed_batch(&sys, &vga, Order::ChoicesFirst).await?;
        times.push(total.as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "one 640 × 480 JPEG, 20 batches: submit → link p50 {:.0} ms, p90 {:.0} ms, min {:.0} ms",
        times[times.len() / 2],
        times[times.len() * 9 / 10],
        times[0]
    );

    // Many small images in one batch: the per-image overhead of the queue, database and store.
    // With the choices last, the images wait for the whole upload, so the time after it is the
    // drain rate; with them first, processing overlaps the upload.
    let small = read_set(&workload, "small", 2000)?;
    for order in ORDERS {
        let cpu_before = cpu_by_part();
        let started = Instant::now();
        let id = submit(&sys, &as_files(&small), order).await?;
        let upload = started.elapsed();
        let status = wait(&sys, &id, Duration::from_secs(600)).await?;
        let total = started.elapsed();
        anyhow::ensure!(
            status["done"] == 2000,
            "not every small image was done: {status}"
        );
        let drain = total - upload;
        println!(
            "2,000 × 64 × 64 JPEG in one batch, {}: upload {:.2} s, link after {:.2} s more: \
             {:.0} images/s after the upload, {:.0} images/s from submit",
            order.label(),
            upload.as_secs_f64(),
            drain.as_secs_f64(),
            2000.0 / drain.as_secs_f64(),
            2000.0 / total.as_secs_f64()
        );
        println!(
            "  CPU ms per image, submit → link: {}",
            cpu_per_image(&cpu_before, &cpu_by_part(), 2000)
        );
    }
    sys.shutdown().await;
    Ok(())
}

/// Where the submission's choices go in the body.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// `pipeline` (the default, spelled out) before the files.
    ChoicesFirst,
    /// No pipeline field: the default, settled at the end of the body.
    ChoicesLast,
}

const ORDERS: [Order; 2] = [Order::ChoicesFirst, Order::ChoicesLast];

impl Order {
    fn label(self) -> &'static str {
        match self {
            Order::ChoicesFirst => "choices first",
            Order::ChoicesLast => "choices last",
        }
    }
}

async fn submit(sys: &System, files: &[(&str, Vec<u8>)], order: Order) -> anyhow::Result<String> {
    let default = serde_json::json!([{"task": "watermark"}]);
    let pipeline = match order {
        Order::ChoicesFirst => Some(&default),
        Order::ChoicesLast => None,
    };
    sys.submit_ok(files, pipeline).await
}

/// Submits `files` with the default pipeline; the upload request's time and submit → link.
async fn timed_batch(
    sys: &System,
    files: &[(String, Vec<u8>)],
    order: Order,
) -> anyhow::Result<(Duration, Duration)> {
    let files = as_files(files);
    let started = Instant::now();
    let id = submit(sys, &files, order).await?;
    let upload = started.elapsed();
    let status = wait(sys, &id, Duration::from_secs(600)).await?;
    let total = started.elapsed();
    anyhow::ensure!(
        status["status"] == "done" && status["done"] == files.len(),
        "batch did not succeed: {status}"
    );
    // The zip (streamed to storage in parts) holds every result.
    let (code, zip) = sys.download(&id).await?;
    anyhow::ensure!(code == 200, "download answered {code}");
    let entries = zip::ZipArchive::new(std::io::Cursor::new(zip))?.len();
    anyhow::ensure!(entries == files.len(), "the zip has {entries} entries");
    Ok((upload, total))
}

/// Polls every [`POLL`] without the list of images (which would cost a 2,000-image batch more
/// than its processing); the last answer.
async fn wait(sys: &System, id: &str, limit: Duration) -> anyhow::Result<serde_json::Value> {
    sys.wait_final_polling(id, limit, POLL, false).await
}

/// The first `count` files of a workload set, repeated under new names when it has fewer.
fn read_set(workload: &Path, set: &str, count: usize) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = workload.join(set);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("{dir:?}: run bench/workload.py first (./scripts/bench does)"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "{dir:?} is empty");
    (0..count)
        .map(|i| {
            let path = &paths[i % paths.len()];
            let name = format!(
                "{i:04}-{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            Ok((name, std::fs::read(path)?))
        })
        .collect()
}

fn as_files(files: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect()
}

/// Images `worker apply` processes per run when the per-image CPU is measured: enough that its
/// start (reading the pipeline, the first mark made at each size) is spread as in a long-lived
/// image child.
const APPLY_IMAGES: usize = 30;

/// The CPU time the pipeline spends on `files` with the default pipeline: `worker apply` on one
/// core (`taskset -c 0`, one thread), over at least [`APPLY_IMAGES`] images (the files repeated),
/// per image, times the number of files.
fn pipeline_cpu(files: &[(String, Vec<u8>)]) -> anyhow::Result<Duration> {
    // A folder of this run's own, removed at the end.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wm-bench-apply-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let result = apply_cpu(&dir, files);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn apply_cpu(dir: &Path, files: &[(String, Vec<u8>)]) -> anyhow::Result<Duration> {
    anyhow::ensure!(!files.is_empty(), "no files");
    let runs = APPLY_IMAGES.max(files.len());
    let mut paths = Vec::new();
    for i in 0..runs {
        let (name, bytes) = &files[i % files.len()];
        let path = dir.join(format!("{i:03}-{name}"));
        std::fs::write(&path, bytes)?;
        paths.push(path);
    }
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(system_tests::binaries().join("worker"))
        .arg("apply")
        .arg("--quiet")
        .arg("--jobs")
        .arg("1")
        .arg("--out")
        .arg(dir.join("out"))
        .args(&paths)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(out.status.success(), "worker apply failed: {err}");
    let ms: f64 = err
        .split("cpu ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no cpu figure in {err:?}"))?;
    let per_image = ms / runs as f64;
    Ok(Duration::from_secs_f64(
        per_image * files.len() as f64 / 1000.0,
    ))
}

/// Sequential GETs of objects of a few sizes from the local store, four ways: the SDK's own
/// client on a kept-alive connection (where Garage stalls), a fresh connection each (the old way
/// around it), our kept-alive connections that acknowledge at once (what the system uses on
/// `http://` endpoints), and through nginx when `scripts/bench` started one.
async fn store_reads() -> anyhow::Result<()> {
    use jobs::storage::{Connections, Storage, StorageConfig};
    let var = |k: &str| std::env::var(k).with_context(|| format!("{k} is not set"));
    let config = |endpoint: String, connections| -> anyhow::Result<StorageConfig> {
        Ok(StorageConfig {
            endpoint: Some(endpoint),
            region: var("S3_REGION")?,
            bucket: var("S3_BUCKET")?,
            access_key_id: var("S3_ACCESS_KEY_ID")?,
            secret_access_key: var("S3_SECRET_ACCESS_KEY")?.into(),
            force_path_style: true,
            connections,
        })
    };
    let direct = var("S3_ENDPOINT")?;
    let mut ways = vec![
        (
            "SDK client, kept alive",
            Storage::from_config(config(direct.clone(), Connections::Sdk)?),
        ),
        (
            "fresh connection each",
            Storage::from_config(config(direct.clone(), Connections::Fresh)?),
        ),
        (
            "ours: kept alive, quick ACK",
            Storage::from_config(config(direct, Connections::QuickAck)?),
        ),
    ];
    // scripts/bench starts nginx in front of the store: the SDK's kept-alive connections to it.
    if let Ok(proxy) = std::env::var("BENCH_S3_PROXY") {
        ways.push((
            "SDK client through nginx",
            Storage::from_config(config(proxy, Connections::Sdk)?),
        ));
    }
    let labels: Vec<&str> = ways.iter().map(|(label, _)| *label).collect();
    print!("store GETs, mean of 30 in a row ({}):", labels.join(" / "));
    for size in [3_000usize, 50_000, 400_000, 2_000_000] {
        let key = format!("bench/read-{size}");
        let store = &ways[0].1;
        store
            .put(&key, vec![7u8; size].into(), "application/octet-stream")
            .await?;
        let mut means = Vec::new();
        for (_, storage) in &ways {
            storage.get(&key).await?; // connect once
            let started = Instant::now();
            for _ in 0..30 {
                storage.get(&key).await?;
            }
            means.push(format!(
                "{:.1}",
                started.elapsed().as_secs_f64() * 1000.0 / 30.0
            ));
        }
        store.delete_prefix(&key).await?;
        print!("  {} KB {} ms", size / 1000, means.join(" / "));
    }
    println!();
    Ok(())
}

/// CPU time (user + system) used so far by the processes of each part of the system, read from
/// `/proc`: the web server, the workers, their image children, Postgres, Redis, Garage. A live
/// image child's time is read from it; once it exits and is reaped, its whole time is in its
/// worker's `cutime`, which counts for the image children too, so the difference between two
/// readings is what the children spent in between either way.
fn cpu_by_part() -> std::collections::BTreeMap<&'static str, f64> {
    let tick = 100.0; // USER_HZ on Linux
    let mut parts = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return parts;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(path.join("cmdline")) else {
            continue;
        };
        let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let program = String::from_utf8_lossy(program);
        let child = cmdline.windows(13).any(|w| w == b"__image-child");
        let part = if program.ends_with("/web") {
            "web"
        } else if child {
            "image children"
        } else if program.ends_with("/worker") {
            "worker"
        } else if program.contains("postgres") {
            "postgres"
        } else if program.contains("redis-server") {
            "redis"
        } else if program.ends_with("garage") {
            "garage (S3)"
        } else {
            continue;
        };
        // Fields after the command name, which is in parentheses and may hold spaces.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime, stime (own) and cutime, cstime (of exited children) are fields 14-17 of
        // stat, 12-15 after the name. What a worker's exited children spent (image children
        // replaced after IMAGE_CHILD_MAX_IMAGES) counts for the image children.
        let ticks = |range: std::ops::Range<usize>| -> f64 {
            fields[range]
                .iter()
                .filter_map(|f| f.parse::<f64>().ok())
                .sum::<f64>()
                / tick
        };
        if part == "worker" {
            *parts.entry(part).or_insert(0.0) += ticks(11..13);
            *parts.entry("image children").or_insert(0.0) += ticks(13..15);
        } else {
            *parts.entry(part).or_insert(0.0) += ticks(11..15);
        }
    }
    parts
}

/// What each part spent between two readings of [`cpu_by_part`], per image, in ms.
fn cpu_per_image(
    before: &std::collections::BTreeMap<&'static str, f64>,
    after: &std::collections::BTreeMap<&'static str, f64>,
    images: usize,
) -> String {
    let mut total = 0.0;
    let mut parts: Vec<String> = after
        .iter()
        .map(|(part, t)| {
            let spent = (t - before.get(part).copied().unwrap_or(0.0)).max(0.0);
            total += spent;
            format!("{part} {:.2}", spent * 1000.0 / images as f64)
        })
        .collect();
    parts.push(format!("all {:.2}", total * 1000.0 / images as f64));
    parts.join(", ")
}

/// `bench preview [requests]`: the latency of `POST /api/preview` as the form calls it (the
/// form's fields, as a browser sends them), one request at a time from a client on this machine:
/// on the sample photo with settings already drawn and with new ones each time (the pipeline
/// prepared anew), and on a 640 px JPEG and PNG copy of a photo, as the form's script makes.
/// Prints p50, p95 and the slowest of the whole request and of the server's part
/// (`Server-Timing`); the target is under 100 ms.
async fn preview(args: &[String]) -> anyhow::Result<()> {
    let requests: usize = args.first().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let sys = System::start("bench-preview", Options::default().workers(&[])).await?;
    let photo = image::load_from_memory(&system_tests::images::photo_jpeg(3000, 2000, 11))?
        .thumbnail(640, 640);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&photo.to_rgb8())?;
    let png = system_tests::images::encode(&photo, image::ImageFormat::Png);
    println!(
        "preview: {requests} requests per case, one at a time, {} build; a {} × {} copy is {} KiB \
         as JPEG, {} KiB as PNG",
        std::env::var("WM_PROFILE").unwrap_or_else(|_| "dev".into()),
        photo.width(),
        photo.height(),
        jpeg.len() / 1024,
        png.len() / 1024
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>14} {:>14}",
        "case", "p50 ms", "p95 ms", "max ms", "server p50 ms", "server p95 ms"
    );
    // (label, the image sent with its type, whether the settings change every request)
    type Case<'a> = (&'a str, Option<(&'a str, &'a [u8])>, bool);
    let cases: [Case; 4] = [
        ("sample photo, settings drawn before", None, false),
        ("sample photo, new settings each time", None, true),
        (
            "640 px JPEG copy, settings drawn before",
            Some(("image/jpeg", &jpeg)),
            false,
        ),
        (
            "640 px PNG copy, settings drawn before",
            Some(("image/png", &png)),
            false,
        ),
    ];
    let mut worst = 0.0f64;
    for (label, image, vary) in cases {
        let mut total = Vec::new();
        let mut server = Vec::new();
        for i in 0..requests + 3 {
            // With `vary`, each request has an opacity of its own: a pipeline never drawn before.
            let opacity = if vary {
                format!("{:.3}", 0.2 + (i as f64) * 0.7 / (requests + 3) as f64)
            } else {
                "0.5".into()
            };
            let mut form = reqwest::multipart::Form::new()
                .text("form", "1")
                .text("task", "watermark")
                .text("watermark.text", "")
                .text("watermark.logo", "bundled")
                .text("watermark.color", "#ffffff")
                .text("watermark.position", "tiled")
                .text("watermark.opacity", opacity)
                .text("watermark.scale", "0.4")
                .text("watermark.rotation", "30")
                .text("watermark.margin", "0.03");
            if let Some((mime, bytes)) = image {
                form = form.part(
                    "image",
                    reqwest::multipart::Part::bytes(bytes.to_vec())
                        .file_name("preview")
                        .mime_str(mime)?,
                );
            }
            let started = Instant::now();
            let res = sys
                .http
                .post(sys.url("/api/preview"))
                .multipart(form)
                .send()
                .await?;
            let status = res.status();
            let timing = res
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split("dur=").nth(1))
                .and_then(|v| v.parse::<f64>().ok());
            let body = res.bytes().await?;
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            anyhow::ensure!(
                status == 200,
                "{label}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
            anyhow::ensure!(
                image::load_from_memory(&body).is_ok(),
                "{label}: not an image"
            );
            if i >= 3 {
                total.push(elapsed);
                server.push(timing.context("a Server-Timing header")?);
            }
        }
        let pct = |v: &mut Vec<f64>, p: usize| {
            v.sort_by(f64::total_cmp);
            v[(v.len() * p / 100).min(v.len() - 1)]
        };
        let p95 = pct(&mut total, 95);
        worst = worst.max(p95);
        println!(
            "{label:<44} {:>9.1} {p95:>9.1} {:>9.1} {:>14.1} {:>14.1}",
            pct(&mut total, 50),
            total[total.len() - 1],
            pct(&mut server, 50),
            pct(&mut server, 95)
        );
    }
    println!(
        "slowest p95: {worst:.1} ms ({} the 100 ms target)",
        if worst < 100.0 { "within" } else { "over" }
    );
    sys.shutdown().await;
    Ok(())
}

/// p-th percentile of `v` (sorted here).
fn percentile(v: &mut [f64], p: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * p / 100).min(v.len() - 1)]
}

/// Submits a one-image batch as the owner of `key` and waits for it: submit → done.
async fn one_image(
    sys: &System,
    key: &str,
    image: &[(String, Vec<u8>)],
) -> anyhow::Result<Duration> {
    use system_tests::fair::{submit_as, wait_final_as};
    let default = serde_json::json!([{"task": "watermark"}]);
    let started = Instant::now();
    let id = submit_as(sys, key, &as_files(image), Some(&default)).await?;
    // Every 10 ms for a second; a batch still waiting then (first in, first out: behind A's) is
    // looked at every 2 s, so that a hundred of them waiting do not load the machine that A's
    // photos are measured on.
    let status = match wait_final_as(sys, key, &id, Duration::from_secs(1), POLL).await {
        Ok(status) => status,
        Err(_) => {
            let (limit, every) = (Duration::from_secs(1800), Duration::from_secs(2));
            wait_final_as(sys, key, &id, limit, every).await?
        }
    };
    anyhow::ensure!(status["status"] == "done", "B's batch: {status}");
    Ok(started.elapsed())
}

/// `bench fair WORKLOAD_DIR [workers] [photos per batch] [big batch]`: fair dispatch, measured
/// twice: as built (fair), and with `DISPATCH_FIFO=1` (first in, first out with a fixed window
/// of 1,000, as before) for the baseline. Each run:
///
/// 1. the idle p50 of one-image batches (a 640 × 480 JPEG) of owner B;
/// 2. owner A submits 5 batches of 2 MP photos (200 each by default); meanwhile B submits
///    a one-image batch every [`B_EVERY`] until A's are done (the same load under both rules):
///    B's submit → done p50 and p95
///    against the target 2 × idle p50 + one image time (the median time a worker spent on one of
///    A's photos), and A's throughput (photos ÷ first submit → last done);
/// 3. A submits one batch of 64 × 64 JPEGs (10,000 by default), and B three one-image batches
///    once A's is being processed: B's wait behind it.
///
/// Prints the figures; asserts nothing about them.
/// How often B submits a one-image batch while A's photos are processed (`bench fair`).
const B_EVERY: Duration = Duration::from_millis(250);

async fn fair(args: &[String]) -> anyhow::Result<()> {
    use system_tests::fair::{make_key, submit_as, wait_final_as};
    let workload = PathBuf::from(
        args.first()
            .context("usage: bench fair WORKLOAD_DIR [workers] [photos per batch] [big batch]")?,
    );
    let workers: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(2);
    let per_batch: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(200);
    let big: usize = args
        .get(3)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let photos = read_set(&workload, "jpeg-2mp", per_batch)?;
    let vga = read_set(&workload, "jpeg-vga", 1)?;
    let small = read_set(&workload, "small", big)?;
    let default = serde_json::json!([{"task": "watermark"}]);
    let names: Vec<String> = (0..workers).map(|i| format!("bench-worker-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    println!(
        "fair dispatch: {workers} worker process(es), {} build; A: 5 × {per_batch} 2 MP photos, then \
         one batch of {big} × 64 × 64; B: one-image batches (640 × 480)",
        std::env::var("WM_PROFILE").unwrap_or_else(|_| "dev".into()),
    );
    let mut throughput = Vec::new();
    for (label, fifo) in [("fair", false), ("first in, first out", true)] {
        let options = Options::default()
            .workers(&names)
            .env("DISPATCH_FIFO", fifo)
            .env("MAX_FILES_PER_BATCH", big.max(per_batch))
            .env("OWNER_MAX_BATCHES_PER_MINUTE", 100_000)
            .env(
                "POLL_INTERVAL_MS",
                std::env::var("POLL_INTERVAL_MS").unwrap_or_else(|_| "200".into()),
            );
        let sys = std::sync::Arc::new(System::start("bench-fair", options).await?);
        let a = make_key(&sys, "A", 1.0).await?;
        let b = make_key(&sys, "B", 1.0).await?;
        one_image(&sys, &b, &vga).await?; // warm-up

        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(one_image(&sys, &b, &vga).await?.as_secs_f64());
        }
        let idle_p50 = percentile(&mut idle, 50);

        // A's five batches, sent at once; then B's one-image batches until A's are done.
        let started = Instant::now();
        let files = as_files(&photos);
        let ids = futures::future::try_join_all(
            (0..5).map(|_| submit_as(&sys, &a, &files, Some(&default))),
        )
        .await?;
        let uploaded = started.elapsed();
        let a_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // B sends one batch every B_EVERY whatever became of the earlier ones (the same load
        // under both rules: first in, first out, its batches wait for A's and are done after).
        let b_task = tokio::spawn({
            let (sys, b, vga, a_done) = (sys.clone(), b.clone(), vga.clone(), a_done.clone());
            async move {
                let mut sent = Vec::new();
                while !a_done.load(std::sync::atomic::Ordering::Relaxed) {
                    let (sys, b, vga) = (sys.clone(), b.clone(), vga.clone());
                    sent.push(tokio::spawn(async move { one_image(&sys, &b, &vga).await }));
                    tokio::time::sleep(B_EVERY).await;
                }
                let mut waits = Vec::with_capacity(sent.len());
                for one in sent {
                    waits.push(one.await??.as_secs_f64());
                }
                Ok::<_, anyhow::Error>(waits)
            }
        });
        for id in &ids {
            wait_final_as(&sys, &a, id, Duration::from_secs(3600), POLL).await?;
        }
        let drained = started.elapsed();
        a_done.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut waits = b_task.await??;
        let image_ms: Option<f64> = sqlx::query_scalar(
            "SELECT (percentile_cont(0.5) WITHIN GROUP
                        (ORDER BY extract(epoch FROM i.finished_at - i.started_at)) * 1000)::float8
             FROM images i JOIN batches b ON b.id = i.batch_id JOIN owners o ON o.id = b.owner_id
             WHERE o.label = 'A' AND i.status = 'done'",
        )
        .fetch_one(&sys.db)
        .await?;
        let image_ms = image_ms.unwrap_or(0.0);
        let rate = (5 * per_batch) as f64 / drained.as_secs_f64();
        throughput.push(rate);
        let target = 2.0 * idle_p50 + image_ms / 1000.0;
        println!("{label}:");
        println!(
            "  idle: one-image batch submit → done p50 {:.0} ms; one 2 MP photo takes a worker \
             {image_ms:.0} ms (median)",
            idle_p50 * 1000.0
        );
        if waits.is_empty() {
            println!("  B: no batch finished while A's were processed");
        } else {
            let p50 = percentile(&mut waits, 50);
            let p95 = percentile(&mut waits, 95);
            println!(
                "  B during A's 5 × {per_batch}: {} batches, submit → done p50 {:.0} ms, p95 {:.0} ms \
                 (target p95 ≤ 2 × idle p50 + one image = {:.0} ms: {})",
                waits.len(),
                p50 * 1000.0,
                p95 * 1000.0,
                target * 1000.0,
                if p95 <= target { "met" } else { "missed" }
            );
        }
        println!(
            "  A: {} photos uploaded in {:.1} s, all done after {:.1} s: {rate:.1} photos/s",
            5 * per_batch,
            uploaded.as_secs_f64(),
            drained.as_secs_f64()
        );

        // B behind A's big batch.
        let started = Instant::now();
        let big_id = submit_as(&sys, &a, &as_files(&small), Some(&default)).await?;
        let uploaded = started.elapsed();
        let mut behind = Vec::new();
        for _ in 0..3 {
            behind.push(one_image(&sys, &b, &vga).await?.as_secs_f64());
        }
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM images WHERE batch_id = $1::uuid AND status = 'pending'",
        )
        .bind(&big_id)
        .fetch_one(&sys.db)
        .await?;
        wait_final_as(&sys, &a, &big_id, Duration::from_secs(3600), POLL).await?;
        let drained = started.elapsed();
        println!(
            "  B behind A's {big}-image batch (uploaded in {:.1} s, done after {:.1} s): three \
             one-image batches, submit → done {} ms; A had {left} images left after them",
            uploaded.as_secs_f64(),
            drained.as_secs_f64(),
            behind
                .iter()
                .map(|t| format!("{:.0}", t * 1000.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
        std::sync::Arc::into_inner(sys)
            .context("the system is still shared")?
            .shutdown()
            .await;
    }
    println!(
        "A's throughput: fair {:.1} photos/s, first in, first out {:.1} photos/s ({:+.1} %)",
        throughput[0],
        throughput[1],
        (throughput[0] / throughput[1] - 1.0) * 100.0
    );
    Ok(())
}

/// Files sent at once by [`scale`].
const SCALE_PARALLEL: usize = 8;

/// One batch of `images` (10,000) JPEGs of 640 × 480 through the API as an open batch: opened,
/// filled by [`SCALE_PARALLEL`] `PUT`s at a time, closed, processed by `workers` (2) workers,
/// and its zip downloaded to a file and counted. Prints the times, `web`'s resident memory
/// before, at its highest (sampled every 100 ms) and after, and whether the zip holds exactly
/// one entry per image; the target is `web` within +64 MiB.
async fn scale(args: &[String]) -> anyhow::Result<()> {
    use futures::StreamExt;
    use system_tests::open;

    let images: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let workers: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(2);
    let names: Vec<String> = (0..workers).map(|i| format!("scale-worker-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let sys = System::start(
        "bench-scale",
        Options::default()
            .workers(&names)
            .env("MAX_FILES_PER_BATCH", images.max(1))
            .env("OWNER_MAX_QUEUED_IMAGES", images.max(1) * 2),
    )
    .await?;
    // A few distinct photos, sent under distinct names: what is measured is the batch's size.
    let photos: Vec<Vec<u8>> = (0..16)
        .map(|seed| system_tests::images::photo_jpeg(640, 480, seed))
        .collect();
    let pid = sys.web_pid();
    let rss = move || system_tests::proc_kib(pid, "VmRSS");
    let before = rss();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    println!(
        "scale: one open batch of {images} JPEGs of 640 × 480 ({} KiB on average), {SCALE_PARALLEL} \
         PUTs at a time, {workers} worker(s), {} build; web RSS before: {} MiB",
        photos.iter().map(Vec::len).sum::<usize>() / photos.len() / 1024,
        std::env::var("WM_PROFILE").unwrap_or_else(|_| "dev".into()),
        before / 1024
    );
    let started = Instant::now();
    let id = open::open_ok(&sys, Some(&serde_json::json!([{"task": "watermark"}]))).await?;
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..images)
        .map(|i| {
            let sys = &sys;
            let id = &id;
            let bytes = photos[i % photos.len()].clone();
            async move {
                let (code, body) = open::put(
                    sys,
                    id,
                    &format!("f{i}"),
                    &format!("photo-{i:05}.jpg"),
                    bytes,
                )
                .await?;
                anyhow::ensure!(code == 201, "file {i}: {code} {body}");
                Ok(())
            }
        })
        .buffer_unordered(SCALE_PARALLEL)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let uploaded = started.elapsed();
    let (code, closed) = open::close(&sys, &id).await?;
    anyhow::ensure!(code == 200, "close: {code} {closed}");
    let (code, status) = sys.get_json(&format!("/api/batches/{id}")).await?;
    anyhow::ensure!(code == 200, "status: {code}");
    let status_bytes = status.to_string().len();
    let done = sys
        .wait_final_polling(
            &id,
            Duration::from_secs(3 * 3600),
            Duration::from_secs(1),
            false,
        )
        .await?;
    let processed = started.elapsed();
    anyhow::ensure!(done["status"] == "done", "the batch: {done}");

    let zip_path = sys.logs().join("scale.zip");
    let res = sys
        .http
        .get(sys.url(&format!("/batches/{id}/download")))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "download: {}", res.status());
    let mut file = tokio::fs::File::create(&zip_path).await?;
    let mut body = res.bytes_stream();
    let mut zip_bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        zip_bytes += chunk.len() as u64;
        tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await?;
    }
    tokio::io::AsyncWriteExt::flush(&mut file).await?;
    drop(file);
    let downloaded = started.elapsed();
    let entries = zip::ZipArchive::new(std::fs::File::open(&zip_path)?)?.len();
    sampler.abort();
    let after = rss();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed).max(after);
    println!(
        "uploaded in {:.1} s ({:.0} files/s); done {:.1} s after the start; zip of {} MiB \
         downloaded {:.1} s after the start",
        uploaded.as_secs_f64(),
        images as f64 / uploaded.as_secs_f64(),
        processed.as_secs_f64(),
        zip_bytes >> 20,
        downloaded.as_secs_f64()
    );
    println!(
        "status JSON with its images: {} KiB (the first {} images listed)",
        status_bytes / 1024,
        status["images"].as_array().map_or(0, Vec::len)
    );
    let growth = peak.saturating_sub(before);
    println!(
        "web RSS: {} MiB before, {} MiB at most, {} MiB after: +{} MiB at most ({} the +64 MiB \
         target)",
        before / 1024,
        peak / 1024,
        after / 1024,
        growth / 1024,
        if growth <= 64 * 1024 {
            "within"
        } else {
            "over"
        }
    );
    println!(
        "zip entries: {entries} of {images} ({})",
        if entries == images {
            "exactly"
        } else {
            "WRONG"
        }
    );
    let _ = std::fs::remove_file(&zip_path);
    sys.shutdown().await;
    anyhow::ensure!(
        entries == images,
        "the zip holds {entries} entries, not {images}"
    );
    Ok(())
}
