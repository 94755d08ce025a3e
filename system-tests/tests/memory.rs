//! `web`'s memory is bounded by design (docs/operations.md, "Memory"): with 8 of each hostile
//! request of issue 17 sent at once — a preview enlarging to 20000 × 20000, a 256 MiB body to
//! the monitor's sign-in (declared, and chunked), an upload with a tiny 4000 × 4000 PNG logo —
//! every answer is a clear 4xx, an ordinary batch is served meanwhile, and `web`'s peak RSS
//! (`VmHWM`) stays under the documented formula and under 1 GiB (its compose limit).

use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::images::{flat_jpeg, flat_png};
use system_tests::{proc_kib, Options, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;
/// How many of each hostile request are sent at once.
const EACH: usize = 8;
/// The sign-in body: 256 MiB.
const HUGE: u64 = 256 * MIB;

/// The worst case of `web` by the formula of docs/operations.md, in bytes, over `base` (its
/// RSS at rest), with the default settings and the constants of the code.
fn formula(base: u64) -> u64 {
    let uploads = 16; // MAX_CONCURRENT_UPLOADS
    let per_upload = 3 * 8 * MIB + 2 * MIB + 512 * 1024; // parts, logo, fields
    let receiving = 8; // preview::RECEIVING
    let preview_body = 4 * MIB + 2 * MIB + 256 * 1024 + 64 * 1024; // preview::MAX_BODY_BYTES
    let rendering = 2; // preview::AT_ONCE
    let per_render = 4_000_000 * 32 + 2048 * 2048 * 8; // MAX_PIXELS × 32 B + logo × 8 B
    let kept = 8 * 640 * 427 * 4; // sample-sized marks kept
    let runtime = 64 * MIB; // connections' buffers, the allocator's slack
    base + uploads * per_upload + receiving * preview_body + rendering * per_render + kept + runtime
}

/// `POST /monitor/sign-in` with a 256 MiB form body, declared by `Content-Length` or chunked,
/// sent as fast as the connection takes it: the status line of the answer (read while the body
/// is still being sent) and how long it took to come.
async fn huge_sign_in(addr: &str, chunked: bool) -> (u16, Duration) {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("web listens");
    let (mut rd, mut wr) = stream.into_split();
    let head = if chunked {
        format!(
            "POST /monitor/sign-in HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    } else {
        format!(
            "POST /monitor/sign-in HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {HUGE}\r\n\r\n"
        )
    };
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let mut chunk = b"token=".to_vec();
        chunk.resize(64 * 1024, b'a');
        let mut sent = 0u64;
        while sent < HUGE {
            if chunked {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                    .await?;
                wr.write_all(&chunk).await?;
                wr.write_all(b"\r\n").await?;
            } else {
                wr.write_all(&chunk).await?;
            }
            sent += chunk.len() as u64;
            chunk.fill(b'a');
        }
        if chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while !answer.windows(2).any(|w| w == b"\r\n") {
            let n = rd.read(&mut buf).await.expect("the answer is read");
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let elapsed = started.elapsed();
    writer.abort();
    assert!(read.is_ok(), "no answer to a huge sign-in within 60 s");
    let line = String::from_utf8_lossy(&answer);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {line:?}"));
    (status, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_all_at_once_stay_within_the_formula() {
    let sys = System::start(
        "memory",
        Options::default().env("MONITOR_TOKEN", "a-monitor-token-of-the-memory-test"),
    )
    .await
    .expect("the system starts");
    let pid = sys.web_pid();
    // At rest, after a first request of each kind has warmed it up.
    let _ = sys.get_json("/api/tasks").await;
    let base = proc_kib(pid, "VmRSS") * 1024;
    let bound = formula(base);
    let logo = flat_png(4000, 4000, [200, 30, 30, 255]);
    assert!(logo.len() < 2 * MIB as usize, "{} bytes", logo.len());
    let addr = sys.base.trim_start_matches("http://").to_owned();

    let mut previews = Vec::new();
    let mut sign_ins = Vec::new();
    let mut uploads = Vec::new();
    for i in 0..EACH {
        previews.push(tokio::spawn({
            let shim = Shim(sys.url(""), sys.http.clone());
            async move { shim.preview().await }
        }));
        sign_ins.push(tokio::spawn(huge_sign_in_owned(addr.clone(), i % 2 == 1)));
        uploads.push(tokio::spawn({
            let shim = Shim(sys.url(""), sys.http.clone());
            let logo = logo.clone();
            async move { shim.upload(&logo).await }
        }));
    }
    // An ordinary batch meanwhile.
    let ordinary = sys
        .submit_ok(
            &[
                ("one.jpg", flat_jpeg(320, 240, [10, 90, 160])),
                ("two.jpg", flat_jpeg(320, 240, [160, 90, 10])),
            ],
            None,
        )
        .await
        .expect("an ordinary batch is taken meanwhile");

    for p in previews {
        let (status, body) = p.await.expect("joined");
        assert_eq!(status, 400, "the enlarging preview: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("more than the limit"), "{message}");
    }
    for s in sign_ins {
        let (status, took) = s.await.expect("joined");
        assert_eq!(status, 413, "the huge sign-in");
        assert!(took < Duration::from_secs(10), "answered after {took:?}");
    }
    for u in uploads {
        let (status, body) = u.await.expect("joined");
        assert_eq!(status, 400, "the upload with a huge logo: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("logo") && message.contains("4000 × 4000"),
            "{message}"
        );
    }
    let done = sys
        .wait_final(&ordinary, Duration::from_secs(60))
        .await
        .expect("the ordinary batch ends");
    assert_eq!(done["status"], "done", "{done}");

    let peak = proc_kib(pid, "VmHWM") * 1024;
    println!(
        "web: at rest {} MiB, peak {} MiB, formula {} MiB",
        base / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(
        peak <= bound,
        "web's peak RSS {} MiB is over the formula's {} MiB",
        peak / MIB,
        bound / MIB
    );
    assert!(
        peak <= 1024 * MIB,
        "web's peak RSS {} MiB is over 1 GiB",
        peak / MIB
    );
    assert!(
        bound <= 1024 * MIB,
        "the formula {} MiB is over web's 1 GiB",
        bound / MIB
    );
    sys.shutdown().await;
}

async fn huge_sign_in_owned(addr: String, chunked: bool) -> (u16, Duration) {
    huge_sign_in(&addr, chunked).await
}

/// What the spawned requests need of the system: its base URL and HTTP client.
struct Shim(String, reqwest::Client);

impl Shim {
    /// `POST /api/preview` with a resize enlarging the sample to 20000 × 20000.
    async fn preview(&self) -> (u16, Value) {
        let pipeline = serde_json::json!([
            {"task": "resize", "max_width": 20000, "max_height": 20000, "enlarge": true}
        ]);
        let form = reqwest::multipart::Form::new().text("pipeline", pipeline.to_string());
        let res = self
            .1
            .post(format!("{}/api/preview", self.0))
            .multipart(form)
            .send()
            .await
            .expect("the preview is answered");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `POST /api/batches` with a tiny PNG logo of 4000 × 4000 pixels, then a file.
    async fn upload(&self, logo: &[u8]) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "logo",
                reqwest::multipart::Part::bytes(logo.to_vec()).file_name("logo.png"),
            )
            .part(
                "files",
                reqwest::multipart::Part::bytes(flat_jpeg(64, 48, [1, 2, 3])).file_name("a.jpg"),
            );
        let res = self
            .1
            .post(format!("{}/api/batches", self.0))
            .multipart(form)
            .send()
            .await
            .expect("the upload is answered");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}
