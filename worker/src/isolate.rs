//! Every image is decoded and processed in a child process: this same binary, started with
//! [`CHILD_ARG`]. A decoder that crashes takes down only its child; one that hangs is killed at
//! the time limit; and the child's address space is capped (`IMAGE_MEMORY_LIMIT_MB`), so a
//! hostile file cannot make the worker itself run out of memory. Starting a child costs a few
//! milliseconds, next to the tens or hundreds an image takes.
//!
//! The child reads the batch's logo (a 4-byte length, then the bytes) and the image on stdin,
//! and writes a 4-byte length, a JSON header and the output bytes on stdout.
//!
//! Tests simulate poison images with `WORKER_FAULT_INJECTION=1`: an image whose bytes contain
//! `wm-fault:crash` aborts its child, `wm-fault:hang` hangs it, `wm-fault:slow` makes it take
//! half a second longer and `wm-fault:sleep=<ms>` that many milliseconds longer. Never set it in
//! production.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use jobs::pipeline::{process_until, Format, Limits, Output};
use jobs::tasks::Pipeline;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// First argument that makes the worker binary run as an image child.
pub const CHILD_ARG: &str = "__process-image";
const FAULTS_ENV: &str = "WORKER_FAULT_INJECTION";

/// How one image ended in its child.
#[derive(Debug)]
pub enum Outcome {
    Done(Output),
    /// The image cannot be processed; the reason is shown to the user.
    Failed(String),
    /// The child crashed, ran out of memory or hung: the attempt is lost, and may be tried again.
    Lost(String),
}

/// Settings of the children.
#[derive(Debug, Clone, Copy)]
pub struct ChildSettings {
    pub limits: Limits,
    pub timeout: Duration,
    pub memory_limit_bytes: u64,
    pub faults: bool,
}

/// Processes `input` with `pipeline` in a child process; `logo` is the batch's uploaded logo.
pub async fn process(
    input: bytes::Bytes,
    logo: Option<bytes::Bytes>,
    pipeline: &Value,
    settings: ChildSettings,
) -> Outcome {
    match run_child(input, logo, pipeline, settings).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Lost(format!("the image processor could not be run: {e}")),
    }
}

async fn run_child(
    input: bytes::Bytes,
    logo: Option<bytes::Bytes>,
    pipeline: &Value,
    settings: ChildSettings,
) -> std::io::Result<Outcome> {
    // /proc/self/exe is this very binary even after an upgrade replaced the file on disk.
    let exe = if std::path::Path::new("/proc/self/exe").exists() {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe()?
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(CHILD_ARG)
        .arg(pipeline.to_string())
        .arg(settings.limits.max_pixels.to_string())
        .arg(settings.limits.jpeg_quality.to_string())
        .arg(settings.timeout.as_millis().to_string())
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if settings.faults {
        cmd.env(FAULTS_ENV, "1");
    }
    let limit = settings.memory_limit_bytes;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let rlim = libc::rlimit {
                rlim_cur: limit as libc::rlim_t,
                rlim_max: limit as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &rlim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let writer = tokio::spawn(async move {
        // The logo (its length first, 0 for none), then the image. A child that dies early
        // closes the pipe; its exit status tells why.
        let logo = logo.unwrap_or_default();
        let _ = stdin.write_all(&(logo.len() as u32).to_be_bytes()).await;
        let _ = stdin.write_all(&logo).await;
        let _ = stdin.write_all(&input).await;
    });
    let run = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (r1, r2) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        r1?;
        r2?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    // The child stops itself at the deadline after each step; a hung one is killed a little later.
    let hard_limit = settings.timeout + Duration::from_secs(2);
    let result = tokio::time::timeout(hard_limit, run).await;
    writer.abort();
    let (status, out, err) = match result {
        Ok(r) => r?,
        Err(_) => {
            let _ = child.kill().await;
            return Ok(Outcome::Lost(format!(
                "the image processor hung (no answer within {} s)",
                hard_limit.as_secs()
            )));
        }
    };
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err);
        let why = if stderr.contains("memory allocation") {
            "the image needs more memory than the limit (IMAGE_MEMORY_LIMIT_MB)".to_owned()
        } else {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(sig) => format!("the image processor crashed (signal {sig})"),
                None => format!("the image processor failed ({status})"),
            }
        };
        tracing::warn!(%status, stderr = %stderr.trim(), "image child failed");
        return Ok(Outcome::Lost(why));
    }
    Ok(parse_answer(&out)
        .unwrap_or_else(|e| Outcome::Lost(format!("the image processor answered nonsense: {e}"))))
}

fn parse_answer(out: &[u8]) -> Result<Outcome, String> {
    let len = out
        .get(..4)
        .ok_or("no header")?
        .try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| "no header")? as usize;
    let header: Value = serde_json::from_slice(out.get(4..4 + len).ok_or("short header")?)
        .map_err(|e| e.to_string())?;
    let body = &out[4 + len..];
    if let Some(reason) = header["error"].as_str() {
        return Ok(Outcome::Failed(reason.to_owned()));
    }
    let format = header["format"]
        .as_str()
        .and_then(Format::parse)
        .ok_or("no format")?;
    let dim = |k: &str| {
        header[k]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or("no size")
    };
    Ok(Outcome::Done(Output {
        bytes: body.to_vec(),
        format,
        width: dim("width")?,
        height: dim("height")?,
    }))
}

/// The child: `worker __process-image <pipeline JSON> <max pixels> <jpeg quality> <timeout ms>`.
pub fn child_main(args: &[String]) -> ! {
    let code = match child(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("image child: {e}");
            3
        }
    };
    std::process::exit(code)
}

fn child(args: &[String]) -> Result<(), String> {
    let [pipeline, max_pixels, quality, timeout_ms] = args else {
        return Err("expected 4 arguments".into());
    };
    let started = Instant::now();
    let pipeline: Value = serde_json::from_str(pipeline).map_err(|e| e.to_string())?;
    let limits = Limits {
        max_pixels: max_pixels.parse().map_err(|_| "bad max pixels")?,
        jpeg_quality: quality.parse().map_err(|_| "bad quality")?,
    };
    let timeout = Duration::from_millis(timeout_ms.parse().map_err(|_| "bad timeout")?);
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| e.to_string())?;
    let logo_len = stdin
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("no logo length")?;
    let logo = stdin.get(4..4 + logo_len).ok_or("short logo")?;
    let input = &stdin[4 + logo_len..];
    if !logo.is_empty() {
        match jobs::pipeline::decode_logo(logo) {
            Ok(img) => jobs::tasks::use_uploaded_logo(img),
            // Checked at upload; should it fail now, the steps that need it say so.
            Err(e) => eprintln!("image child: {e}"),
        }
    }
    if std::env::var_os(FAULTS_ENV).is_some() {
        inject_faults(input);
    }
    let answer = match Pipeline::parse(&pipeline) {
        Err(e) => Err(format!(
            "the batch's processing steps are no longer valid: {e}"
        )),
        Ok(pipeline) => process_until(input, &pipeline, &limits, Some(started + timeout))
            .map_err(|e| e.to_string()),
    };
    let (header, body) = match answer {
        Ok(out) => (
            json!({"format": out.format.as_str(), "width": out.width, "height": out.height}),
            out.bytes,
        ),
        Err(reason) => (json!({ "error": reason }), Vec::new()),
    };
    let header = header.to_string();
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&(header.len() as u32).to_be_bytes())
        .and_then(|_| stdout.write_all(header.as_bytes()))
        .and_then(|_| stdout.write_all(&body))
        .and_then(|_| stdout.flush())
        .map_err(|e| e.to_string())
}

fn inject_faults(input: &[u8]) {
    let has = |marker: &[u8]| input.windows(marker.len()).any(|w| w == marker);
    if has(b"wm-fault:crash") {
        std::process::abort();
    }
    if has(b"wm-fault:hang") {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    if has(b"wm-fault:slow") {
        std::thread::sleep(Duration::from_millis(500));
    }
    let marker = b"wm-fault:sleep=";
    if let Some(at) = input.windows(marker.len()).position(|w| w == marker) {
        let digits: String = input[at + marker.len()..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|&b| b as char)
            .collect();
        if let Ok(ms) = digits.parse() {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}
