//! `worker apply`: runs the registered tasks on local files, with no Postgres, Redis or S3. It
//! prepares the pipeline once, as an image child does for a batch, and processes each file with
//! the same function the child uses; results are written under their cleaned names, as in a
//! batch's zip. It is how to try a new task, and what the benchmark suite runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use jobs::pipeline::{process_until, Format, JpegPath, Limits};
use jobs::tasks::Pipeline;
use serde_json::Value;

/// Applies a pipeline of image tasks to local files, as the workers do to a batch.
#[derive(Debug, Parser)]
#[command(
    name = "worker apply",
    about,
    after_help = "Example:\n  worker apply --pipeline '[{\"task\":\"watermark\",\"position\":\"bottom-right\"}]' \\\n      --out results photos/*.jpg"
)]
pub struct ApplyCli {
    /// The pipeline, as the API takes it: a JSON list of steps (default: the watermark).
    #[arg(long, default_value = r#"[{"task":"watermark"}]"#)]
    pub pipeline: String,

    /// A logo image: every watermark step without text draws it, as with the API's `logo`.
    #[arg(long)]
    pub logo: Option<PathBuf>,

    /// Files processed at once (one thread each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,

    /// Folder the results are written to (made when missing).
    #[arg(long)]
    pub out: PathBuf,

    /// Largest image accepted, in pixels.
    #[arg(long, env = "MAX_IMAGE_PIXELS", default_value_t = 50_000_000)]
    pub max_image_pixels: u64,

    /// JPEG quality of JPEG results (1–100).
    #[arg(long, env = "JPEG_QUALITY", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,

    /// Which path JPEGs take: `auto` (what the workers do), or `planar` / `pixels` to compare.
    #[arg(long, default_value = "auto", value_parser = ["auto", "planar", "pixels"], hide = true)]
    pub path: String,

    /// Also print each result's PSNR against a full-precision render of its marks (pipelines
    /// of marks only; not timed work: for the benchmark's quality figures).
    #[arg(long, hide = true)]
    pub psnr: bool,

    /// Print nothing for files that succeed.
    #[arg(long, short)]
    pub quiet: bool,

    /// The images.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs `worker apply`; the exit code is 1 when any file failed.
pub fn main(args: &[String]) -> anyhow::Result<i32> {
    let cli = ApplyCli::parse_from(args);
    let value: Value = serde_json::from_str(&cli.pipeline).context("--pipeline is not JSON")?;
    let pipeline = Pipeline::parse(&value)
        .and_then(|p| p.with_logo(cli.logo.is_some()))
        .map_err(|e| anyhow::anyhow!("--pipeline: {e}"))?;
    let logo = match &cli.logo {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {path:?}"))?;
            jobs::pipeline::decode_logo(&bytes).map_err(|e| anyhow::anyhow!("--logo: {e}"))?;
            bytes
        }
        None => Vec::new(),
    };
    let prepared = crate::isolate::prepare(&pipeline.to_json(), &logo)
        .map_err(|e| anyhow::anyhow!("the pipeline cannot be prepared: {e}"))?;
    let limits = Limits {
        max_pixels: cli.max_image_pixels,
        jpeg_quality: cli.jpeg_quality,
        jpeg_path: match cli.path.as_str() {
            "planar" => JpegPath::Planar,
            "pixels" => JpegPath::Pixels,
            _ => JpegPath::Auto,
        },
    };
    std::fs::create_dir_all(&cli.out).with_context(|| format!("cannot make {:?}", cli.out))?;

    // Results keep their format, so their names are known from each file's first bytes, in the
    // order of the files (the same whatever `--jobs` is); each is written as soon as it is done.
    let display: Vec<String> = cli
        .files
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect();
    let formats: Vec<Format> = cli
        .files
        .iter()
        .map(|p| sniff(p).unwrap_or(Format::Png))
        .collect();
    let names = jobs::names::unique_entry_names(display.iter().map(String::as_str).zip(formats));
    let lines: Vec<Mutex<Option<(bool, String)>>> =
        cli.files.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let cpu_started = cpu_time();
    std::thread::scope(|scope| {
        for _ in 0..cli.jobs.min(cli.files.len() as u32) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = cli.files.get(i) else { break };
                let target = cli.out.join(&names[i]);
                let line = std::fs::read(path)
                    .map_err(|e| format!("cannot read it: {e}"))
                    .and_then(|input| {
                        let out = process_until(&input, &prepared, &limits, None)
                            .map_err(|e| e.to_string())?;
                        Ok((input, out))
                    })
                    .and_then(|(input, out)| {
                        std::fs::write(&target, &out.bytes)
                            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
                        let quality = if cli.psnr {
                            psnr(&input, &out, &prepared, &limits)
                                .map(|db| format!(", psnr {db:.1} dB"))
                                .unwrap_or_default()
                        } else {
                            String::new()
                        };
                        Ok(format!(
                            "{} -> {} ({} × {}, {} bytes, {} path{quality})",
                            path.display(),
                            target.display(),
                            out.width,
                            out.height,
                            out.bytes.len(),
                            out.path
                        ))
                    });
                let line = match line {
                    Ok(done) => (true, done),
                    Err(reason) => (false, format!("{}: failed: {reason}", path.display())),
                };
                *lines[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(line);
            });
        }
    });
    let elapsed = started.elapsed();
    let cpu = cpu_time() - cpu_started;
    let mut failed = 0;
    for line in lines {
        let (ok, text) = line
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("every file ran");
        if !ok {
            failed += 1;
        }
        if !ok || !cli.quiet {
            println!("{text}");
        }
    }
    // The benchmark suite reads this line.
    eprintln!(
        "{} file(s), {failed} failed, in {:.1} ms, cpu {:.1} ms",
        cli.files.len(),
        elapsed.as_secs_f64() * 1000.0,
        cpu.as_secs_f64() * 1000.0
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

/// CPU time (user and system) of this process so far.
fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The type of a file from its first bytes.
fn sniff(path: &std::path::Path) -> Option<Format> {
    use std::io::Read;
    let mut head = [0u8; 64];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .ok()?;
    Format::sniff(&head[..n])
}

/// The PSNR of `out` against `input` decoded with the pipeline's marks blended in floating
/// point; `None` when the pipeline is not only marks.
fn psnr(
    input: &[u8],
    out: &jobs::pipeline::Output,
    prepared: &jobs::pipeline::PreparedPipeline,
    limits: &Limits,
) -> Option<f64> {
    let floats = |bytes: &[u8]| -> Option<(u32, u32, Vec<f32>)> {
        let format = Format::sniff(bytes)?;
        let img = jobs::pipeline::decode(bytes, format, limits)
            .ok()?
            .to_rgb8();
        let (w, h) = img.dimensions();
        Some((w, h, img.as_raw().iter().map(|&v| v as f32).collect()))
    };
    let (w, h, mut want) = floats(input)?;
    let overlays = prepared.overlays(w, h).ok()??;
    jobs::overlay::blend_exact(&mut want, w, h, &overlays);
    let (ow, oh, got) = floats(&out.bytes)?;
    ((ow, oh) == (w, h)).then(|| jobs::overlay::psnr(&got, &want))
}
