//! Every image is decoded and processed in a child process: this same binary, started with
//! [`CHILD_ARG`]. A decoder that crashes takes down only its child; one that hangs is killed at
//! the time limit; and the child's address space is capped (`IMAGE_MEMORY_LIMIT_MB`), so a
//! hostile file cannot make the worker itself run out of memory.
//!
//! Children live on, as in Celery's prefork pool: each takes image after image, keeping the
//! batches' prepared pipelines (the logo decoded, the mark sized for the image) and its codec
//! handles between them. A child that crashed or hung is never reused, and a child is retired
//! after [`ChildSettings::max_images`] images, so that no leak or fragmentation builds up.
//!
//! The protocol, on the child's stdin and stdout: a request is a 4-byte big-endian length, a JSON
//! header (`key`, `pipeline`, `timeout_ms`, `logo` and `image` byte counts), then the logo's and
//! the image's bytes; an answer is a 4-byte length, a JSON header (`format`, `width`, `height`,
//! `bytes`, or `error`), then the output's bytes. The child exits when its stdin closes.
//!
//! Tests simulate poison images with `WORKER_FAULT_INJECTION=1`: an image whose bytes contain
//! `wm-fault:crash` aborts its child, `wm-fault:hang` hangs it, `wm-fault:slow` makes it take
//! half a second longer and `wm-fault:sleep=<ms>` that many milliseconds longer. Never set it in
//! production.

use std::io::{BufReader, BufWriter, Read, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobs::pipeline::{process_until, Format, Limits, Output, PreparedPipeline};
use jobs::recent::Recent;
use jobs::tasks::{Assets, Pipeline};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// First argument that makes the worker binary run as an image child.
pub const CHILD_ARG: &str = "__image-child";
const FAULTS_ENV: &str = "WORKER_FAULT_INJECTION";
/// Largest answer header a child may send.
const MAX_HEADER: usize = 64 * 1024;
/// Size asked for the pipes to and from a child.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// How many batches' prepared pipelines a child keeps.
const PREPARED_KEPT: usize = 4;
/// How much of a child's stderr is kept to explain its death.
const STDERR_KEPT: usize = 8 * 1024;

/// How one attempt at an image ended (a transient error aside, which the caller retries):
/// `Outcome<Output>` as its child answered, `Outcome<Processed>` once the result is stored.
#[derive(Debug)]
pub enum Outcome<T = Output> {
    Done(T),
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
    /// Images a child processes before it is replaced.
    pub max_images: u32,
}

/// One image to process: the batch it belongs to (the key of its prepared pipeline), its
/// pipeline, the batch's logo, and its bytes.
pub struct Request<'a> {
    pub key: &'a str,
    pub pipeline: &'a Value,
    pub logo: Option<bytes::Bytes>,
    pub input: bytes::Bytes,
}

/// Idle children, ready for their next image.
pub struct Pool {
    settings: ChildSettings,
    idle: Mutex<Vec<ImageChild>>,
    /// Most idle children kept (the worker's concurrency).
    keep: usize,
}

struct ImageChild {
    process: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    stderr: Arc<Mutex<Vec<u8>>>,
    served: u32,
}

impl Pool {
    pub fn new(settings: ChildSettings, keep: usize) -> Self {
        Self {
            settings,
            idle: Mutex::default(),
            keep: keep.max(1),
        }
    }

    /// Processes one image in a child: an idle one, or a new one.
    pub async fn process(&self, request: Request<'_>) -> Outcome {
        let child = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut child = match child {
            Some(child) => child,
            None => match self.spawn() {
                Ok(child) => child,
                Err(e) => {
                    return Outcome::Lost(format!("the image processor could not be run: {e}"))
                }
            },
        };
        let outcome = self.run(&mut child, request).await;
        match outcome {
            Ok(outcome) => {
                child.served += 1;
                if child.served < self.settings.max_images {
                    let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.len() < self.keep {
                        idle.push(child);
                    }
                }
                // A child not kept is killed when dropped.
                outcome
            }
            Err(lost) => Outcome::Lost(lost),
        }
    }

    fn spawn(&self) -> std::io::Result<ImageChild> {
        // /proc/self/exe is this very binary even after an upgrade replaced the file on disk.
        let exe = if std::path::Path::new("/proc/self/exe").exists() {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(CHILD_ARG)
            .arg(self.settings.limits.max_pixels.to_string())
            .arg(self.settings.limits.jpeg_quality.to_string())
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if self.settings.faults {
            cmd.env(FAULTS_ENV, "1");
        }
        let limit = self.settings.memory_limit_bytes;
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
        let mut process = cmd.spawn()?;
        let stdin = process.stdin.take().expect("piped stdin");
        let stdout = process.stdout.take().expect("piped stdout");
        // Images go through these pipes: at 1 MiB rather than Linux's 64 KiB, a 2 MP JPEG
        // crosses in one go instead of thirty handovers between the two processes.
        for fd in [
            std::os::fd::AsRawFd::as_raw_fd(&stdin),
            std::os::fd::AsRawFd::as_raw_fd(&stdout),
        ] {
            // SAFETY: F_SETPIPE_SZ on a pipe this process owns; failure (a lower
            // /proc/sys/fs/pipe-max-size) only leaves the default size.
            unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
        }
        let mut stderr = process.stderr.take().expect("piped stderr");
        // The child's last words, kept to explain its death (and drained, so that it never
        // blocks on a full pipe).
        let kept = Arc::new(Mutex::new(Vec::new()));
        let sink = kept.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut kept = sink.lock().unwrap_or_else(|e| e.into_inner());
                kept.extend_from_slice(&buf[..n]);
                let excess = kept.len().saturating_sub(STDERR_KEPT);
                kept.drain(..excess);
            }
        });
        Ok(ImageChild {
            process,
            stdin,
            stdout,
            stderr: kept,
            served: 0,
        })
    }

    /// One request and its answer; `Err` with the reason when the attempt was lost (the child
    /// is then dead or killed, and must not be reused).
    async fn run(&self, child: &mut ImageChild, request: Request<'_>) -> Result<Outcome, String> {
        let logo = request.logo.unwrap_or_default();
        let header = json!({
            "key": request.key,
            "pipeline": request.pipeline,
            "timeout_ms": self.settings.timeout.as_millis() as u64,
            "logo": logo.len(),
            "image": request.input.len(),
        })
        .to_string();
        let exchange = async {
            child
                .stdin
                .write_all(&(header.len() as u32).to_be_bytes())
                .await?;
            child.stdin.write_all(header.as_bytes()).await?;
            child.stdin.write_all(&logo).await?;
            child.stdin.write_all(&request.input).await?;
            child.stdin.flush().await?;
            read_answer(&mut child.stdout).await
        };
        // The child stops itself at the deadline after each step; a hung one is killed a little
        // later.
        let hard_limit = self.settings.timeout + Duration::from_secs(2);
        match tokio::time::timeout(hard_limit, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(self.death(child, &e.to_string()).await),
            Err(_) => {
                let _ = child.process.kill().await;
                Err(format!(
                    "the image processor hung (no answer within {} s)",
                    hard_limit.as_secs()
                ))
            }
        }
    }

    /// Why a child stopped answering: its exit status and its last words.
    async fn death(&self, child: &mut ImageChild, io_error: &str) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(5), child.process.wait()).await
        {
            Ok(Ok(status)) => status,
            _ => {
                let _ = child.process.kill().await;
                return format!("the image processor stopped answering ({io_error})");
            }
        };
        // Give the stderr reader a moment to take the last bytes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stderr =
            String::from_utf8_lossy(&child.stderr.lock().unwrap_or_else(|e| e.into_inner()))
                .trim()
                .to_owned();
        tracing::warn!(%status, stderr = %stderr, "image child failed");
        if stderr.contains("memory allocation") {
            return "the image needs more memory than the limit (IMAGE_MEMORY_LIMIT_MB)".into();
        }
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(sig) => format!("the image processor crashed (signal {sig})"),
            None => format!("the image processor failed ({status})"),
        }
    }
}

async fn read_answer(stdout: &mut ChildStdout) -> std::io::Result<Outcome> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut len = [0u8; 4];
    stdout.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(bad("the answer's header is too long"));
    }
    let mut header = vec![0u8; len];
    stdout.read_exact(&mut header).await?;
    let header: Value = serde_json::from_slice(&header).map_err(|e| bad(&e.to_string()))?;
    if let Some(reason) = header["error"].as_str() {
        return Ok(Outcome::Failed(reason.to_owned()));
    }
    let format = header["format"]
        .as_str()
        .and_then(Format::parse)
        .ok_or_else(|| bad("no format"))?;
    let number = |k: &str| header[k].as_u64().ok_or_else(|| bad("no size"));
    let dim = |k: &str| number(k).and_then(|v| u32::try_from(v).map_err(|_| bad("bad size")));
    let mut bytes = vec![0u8; number("bytes")? as usize];
    stdout.read_exact(&mut bytes).await?;
    Ok(Outcome::Done(Output {
        bytes,
        format,
        width: dim("width")?,
        height: dim("height")?,
        path: match header["path"].as_str() {
            Some("dct-rows") => "dct-rows",
            Some("dct") => "dct",
            Some("planar") => "planar",
            _ => "pixels",
        },
    }))
}

/// The child: `worker __image-child <max pixels> <jpeg quality>`, answering requests until its
/// stdin closes.
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
    let [max_pixels, quality] = args else {
        return Err("expected 2 arguments".into());
    };
    let limits = Limits {
        max_pixels: max_pixels.parse().map_err(|_| "bad max pixels")?,
        jpeg_quality: quality.parse().map_err(|_| "bad quality")?,
        jpeg_path: jobs::pipeline::JpegPath::Auto,
    };
    let faults = std::env::var_os(FAULTS_ENV).is_some();
    let mut stdin = BufReader::new(std::io::stdin().lock());
    let mut stdout = BufWriter::new(std::io::stdout().lock());
    let mut prepared = PreparedCache(Recent::new(PREPARED_KEPT));
    loop {
        let mut len = [0u8; 4];
        match stdin.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let started = Instant::now();
        let mut header = vec![0u8; u32::from_be_bytes(len) as usize];
        stdin.read_exact(&mut header).map_err(|e| e.to_string())?;
        let header: Value = serde_json::from_slice(&header).map_err(|e| e.to_string())?;
        let size = |k: &str| header[k].as_u64().ok_or(format!("no {k} size"));
        let mut logo = vec![0u8; size("logo")? as usize];
        stdin.read_exact(&mut logo).map_err(|e| e.to_string())?;
        let mut input = vec![0u8; size("image")? as usize];
        stdin.read_exact(&mut input).map_err(|e| e.to_string())?;
        let timeout = Duration::from_millis(size("timeout_ms")?);

        if faults {
            inject_faults(&input);
        }
        let batch = header["key"].as_str().unwrap_or_default();
        let answer = match prepared.get(batch, &header["pipeline"], &logo).as_ref() {
            Err(reason) => Err(reason.clone()),
            Ok(pipeline) => process_until(&input, pipeline, &limits, Some(started + timeout))
                .map_err(|e| e.to_string()),
        };
        let (header, body) = match answer {
            Ok(out) => (
                json!({"format": out.format.as_str(), "width": out.width, "height": out.height, "path": out.path,
                       "bytes": out.bytes.len()}),
                out.bytes,
            ),
            Err(reason) => (json!({ "error": reason }), Vec::new()),
        };
        let header = header.to_string();
        stdout
            .write_all(&(header.len() as u32).to_be_bytes())
            .and_then(|_| stdout.write_all(header.as_bytes()))
            .and_then(|_| stdout.write_all(&body))
            .and_then(|_| stdout.flush())
            .map_err(|e| e.to_string())?;
    }
}

/// The pipelines a child prepared last.
struct PreparedCache(Recent<String, Arc<Result<PreparedPipeline, String>>>);

impl PreparedCache {
    /// The prepared pipeline of batch `batch`. Batches with the same pipeline and no logo of
    /// their own (the default watermark, say) share one: what is prepared depends only on the
    /// pipeline and the logo.
    fn get(
        &mut self,
        batch: &str,
        pipeline: &Value,
        logo: &[u8],
    ) -> Arc<Result<PreparedPipeline, String>> {
        let key = if logo.is_empty() {
            pipeline.to_string()
        } else {
            format!("{batch} {pipeline}")
        };
        if let Some(prepared) = self.0.get(&key) {
            return prepared;
        }
        let prepared = Arc::new(prepare(pipeline, logo));
        self.0.put(key, prepared.clone());
        prepared
    }
}

/// A batch's pipeline made ready, or the reason every image of the batch fails.
pub fn prepare(pipeline: &Value, logo: &[u8]) -> Result<PreparedPipeline, String> {
    let pipeline = Pipeline::parse(pipeline)
        .map_err(|e| format!("the batch's processing steps are no longer valid: {e}"))?;
    let mut assets = Assets::default();
    if !logo.is_empty() {
        // Checked at upload; should it fail now, the steps that need it say so.
        match jobs::pipeline::decode_logo(logo) {
            Ok(img) => assets.logo = Some(Arc::new(img)),
            Err(e) => eprintln!("image child: {e}"),
        }
    }
    PreparedPipeline::new(&pipeline, &assets).map_err(|e| e.to_string())
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
