//! Webhooks through the real binaries: a receiver of the test's own on 127.0.0.1 gets the
//! deliveries (so `WEBHOOK_ALLOW_PRIVATE=1` where it must be reached), checks their signature
//! and answers as each test says; Postgres shows what was recorded.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{KeyInit, Mac};
use serde_json::Value;
use system_tests::images::flat_jpeg;
use system_tests::{Options, System};

const SECRET: &str = "test-webhook-secret-5f0c2a9e81d3";

/// How the receiver answers its `n`th request (1 for the first).
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Never answers (the sender's connection stays open until the sender goes away).
    Hold,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Request {
    arrived: Instant,
    arrived_at: chrono::DateTime<chrono::Utc>,
    /// When it was answered (`None`: held).
    answered: Option<Instant>,
    status: Option<u16>,
    headers: HeaderMap,
    body: Bytes,
}

/// An HTTP server on 127.0.0.1 that records every request and answers as `script` says.
struct Receiver {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    server: tokio::task::JoinHandle<()>,
}

type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

impl Receiver {
    async fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on loopback");
        let url = format!(
            "http://{}/hooks/batch?token=t0k3n",
            listener.local_addr().unwrap()
        );
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let script: Script = Arc::new(script);
        let app = axum::Router::new()
            .route("/hooks/batch", axum::routing::post(receive))
            .with_state((requests.clone(), script));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the receiver serves");
        });
        Self {
            url,
            requests,
            server,
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits until `n` requests arrived (at most `limit`), and returns them.
    async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Request> {
        let started = Instant::now();
        loop {
            let got = self.requests();
            if got.len() >= n {
                return got;
            }
            assert!(
                started.elapsed() < limit,
                "{} of {n} deliveries arrived within {limit:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State((requests, script)): State<(Arc<Mutex<Vec<Request>>>, Script)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let arrived = Instant::now();
    let n = {
        let mut all = requests.lock().unwrap();
        all.push(Request {
            arrived,
            arrived_at: chrono::Utc::now(),
            answered: None,
            status: None,
            headers,
            body,
        });
        all.len()
    };
    match script(n) {
        Answer::Status(code) => {
            let mut all = requests.lock().unwrap();
            all[n - 1].answered = Some(Instant::now());
            all[n - 1].status = Some(code);
            StatusCode::from_u16(code).unwrap()
        }
        Answer::Hold => std::future::pending().await,
    }
}

/// The header's text.
fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("a text header")
}

/// Checks `X-Watermark-Signature` the way docs/operations.md tells a receiver to: the HMAC of
/// "t.body" with `secret`, compared in constant time. Returns the signature's time.
fn verify(request: &Request, secret: &str) -> Result<i64, String> {
    let value = header(request, "x-watermark-signature");
    let mut t = None;
    let mut v1 = None;
    for part in value.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = Some(x),
            Some(("v1", x)) => v1 = Some(x),
            _ => {}
        }
    }
    let (t, v1) = (t.ok_or("no t=")?, v1.ok_or("no v1=")?);
    let tag: Vec<u8> = (0..v1.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&v1[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("v1 is not hex: {e}"))?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(&request.body);
    mac.verify_slice(&tag)
        .map_err(|_| "the signature does not match".to_owned())?;
    t.parse().map_err(|e| format!("t is not a number: {e}"))
}

/// `POST /api/batches` with two small JPEGs and `callback_url`.
async fn submit(sys: &System, callback_url: &str) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new().text("callback_url", callback_url.to_owned());
    for name in ["a.jpg", "b.jpg"] {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(flat_jpeg(64, 48, [90, 120, 150])).file_name(name),
        );
    }
    let res = sys
        .http
        .post(sys.url("/api/batches"))
        .multipart(form)
        .send()
        .await
        .expect("the API answers");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON"))
}

/// An error's message, as `{"error": "..."}` or `{"error": {"code", "message"}}`.
fn message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .or(body["error"].as_str())
        .unwrap_or_else(|| panic!("no error message in {body}"))
        .to_owned()
}

/// The delivery row of `batch`: status, attempts, last error, delivered.
async fn delivery(sys: &System, batch: &str) -> Option<(String, i32, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT status, attempts, last_error, delivered_at IS NOT NULL
         FROM webhook_deliveries WHERE batch_id = $1::uuid",
    )
    .bind(batch)
    .fetch_optional(&sys.db)
    .await
    .expect("the query runs")
}

/// The webhook events of `batch`, in order: kind, attempt, worker, detail.
async fn webhook_events(sys: &System, batch: &str) -> Vec<(String, i32, Option<String>, String)> {
    sqlx::query_as(
        "SELECT kind, attempt, worker, coalesce(detail, '') FROM batch_events
         WHERE batch_id = $1::uuid AND kind LIKE 'webhook.%' ORDER BY id",
    )
    .bind(batch)
    .fetch_all(&sys.db)
    .await
    .expect("the query runs")
}

/// Waits until the delivery of `batch` is no longer pending (at most `limit`).
async fn wait_settled(
    sys: &System,
    batch: &str,
    limit: Duration,
) -> (String, i32, Option<String>, bool) {
    let started = Instant::now();
    loop {
        let row = delivery(sys, batch).await;
        if let Some(row) = row.as_ref().filter(|r| r.0 != "pending") {
            return row.clone();
        }
        assert!(
            started.elapsed() < limit,
            "the delivery of {batch} still pending after {limit:?}: {row:?}; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `batch` has `n` webhook events (at most `limit`).
async fn wait_events(
    sys: &System,
    batch: &str,
    n: usize,
    limit: Duration,
) -> Vec<(String, i32, Option<String>, String)> {
    let started = Instant::now();
    loop {
        let events = webhook_events(sys, batch).await;
        if events.len() >= n {
            return events;
        }
        assert!(
            started.elapsed() < limit,
            "{events:?} after {limit:?}, expected {n} webhook events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn hooked(options: Options) -> Options {
    options
        .env("WEBHOOK_SECRET", SECRET)
        .env("WEBHOOK_ALLOW_PRIVATE", "1")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_batch_is_posted_signed_and_retried_after_a_500() {
    let receiver = Receiver::start(|n| Answer::Status(if n == 1 { 500 } else { 200 })).await;
    // Two workers, both looking for due deliveries every second: each attempt has one sender.
    let sys = System::start(
        "webhooks-retry",
        hooked(Options::default().workers(&["worker-a", "worker-b"]))
            .env("WEBHOOK_BACKOFF_SECONDS", "1"),
    )
    .await
    .expect("system starts");

    let (code, accepted) = submit(&sys, &receiver.url).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    let status = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("the batch finishes");
    assert_eq!(status["status"], "done", "{status}");

    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    let (first, second) = (&got[0], &got[1]);
    assert_eq!(first.status, Some(500));
    assert_eq!(second.status, Some(200));
    // The retry came after the failure was answered, and after the backoff (1 s).
    let answered = first.answered.expect("the first was answered");
    assert!(second.arrived > answered);
    let gap = second.arrived - answered;
    assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");

    let now = chrono::Utc::now().timestamp();
    for request in [first, second] {
        let t = verify(request, SECRET).expect("the signature verifies with the secret");
        assert!((now - t).abs() < 300, "signed at {t}, now {now}");
        assert!(
            verify(request, "another-secret-of-some-length").is_err(),
            "a signature that any secret verifies proves nothing"
        );
        assert_eq!(header(request, "content-type"), "application/json");
        assert!(
            header(request, "user-agent").starts_with("watermark-webhook/"),
            "{:?}",
            request.headers
        );
        assert_eq!(header(request, "x-watermark-event"), "batch.done");
        assert_eq!(header(request, "x-watermark-delivery"), id);
    }
    assert_eq!(header(first, "x-watermark-attempt"), "1");
    assert_eq!(header(second, "x-watermark-attempt"), "2");
    // A body one byte different does not verify.
    let mut tampered = second.clone();
    let mut body = tampered.body.to_vec();
    body.push(b' ');
    tampered.body = body.into();
    assert!(verify(&tampered, SECRET).is_err());

    // The body is the batch's status JSON, as the API gives it.
    let sent: Value = serde_json::from_slice(&second.body).expect("a JSON body");
    assert_eq!(sent["id"], id);
    assert_eq!(sent["status"], "done");
    assert_eq!(sent["total"], 2);
    assert_eq!(sent["done"], 2);
    assert_eq!(sent["download_url"], format!("/batches/{id}/download"));
    assert_eq!(sent["images"].as_array().map(Vec::len), Some(2));
    let (code, api) = sys.status(&id).await.expect("status");
    assert_eq!(code, 200);
    assert_eq!(sent, api);

    let (state, attempts, last_error, delivered) =
        wait_settled(&sys, &id, Duration::from_secs(10)).await;
    assert_eq!(
        (state.as_str(), attempts, delivered),
        ("delivered", 2, true)
    );
    assert_eq!(last_error, None);
    assert_eq!(receiver.requests().len(), 2, "one request per attempt");
    let events = wait_events(&sys, &id, 2, Duration::from_secs(10)).await;
    let kinds: Vec<(&str, i32)> = events.iter().map(|e| (e.0.as_str(), e.1)).collect();
    assert_eq!(kinds, [("webhook.failed", 1), ("webhook.delivered", 2)]);
    assert!(events[0].3.contains("HTTP 500"), "{events:?}");
    assert!(events[1].3.contains("HTTP 200"), "{events:?}");
    assert!(events
        .iter()
        .all(|e| matches!(e.2.as_deref(), Some("worker-a" | "worker-b"))));
    // Neither the URL's token nor the secret is in a log or an event.
    for e in &events {
        assert!(!e.3.contains("t0k3n"), "{e:?}");
    }
    for log in ["web.log", "worker-a.log", "worker-b.log"] {
        let text = std::fs::read_to_string(sys.logs().join(log)).expect("the log");
        assert!(!text.contains("t0k3n"), "{log} holds the callback's token");
        assert!(!text.contains(SECRET), "{log} holds the webhook secret");
    }
    let finished: chrono::DateTime<chrono::Utc> = status["finished_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("finished_at");
    println!(
        "first delivery {} ms after the batch finished, the retry {gap:?} after the 500",
        (first.arrived_at - finished).num_milliseconds()
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_survives_its_workers_being_killed() {
    // 1: 500 (worker-a records it, then is killed before the retry); 2: held while worker-b
    // sends it, and worker-b is killed mid-request; 3: 200 (worker-c, once worker-b's lease ran
    // out).
    let receiver = Receiver::start(|n| match n {
        1 => Answer::Status(500),
        2 => Answer::Hold,
        _ => Answer::Status(200),
    })
    .await;
    let mut sys = System::start(
        "webhooks-restart",
        hooked(Options::default())
            .env("WEBHOOK_BACKOFF_SECONDS", "3")
            .env("WEBHOOK_TIMEOUT_SECONDS", "2"),
    )
    .await
    .expect("system starts");
    let (code, accepted) = submit(&sys, &receiver.url).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    sys.wait_final(&id, Duration::from_secs(60))
        .await
        .expect("the batch finishes");

    // The 500 is recorded; worker-a dies before its retry is due.
    let events = wait_events(&sys, &id, 1, Duration::from_secs(30)).await;
    sys.kill_worker("worker-a");
    assert_eq!(events[0].0, "webhook.failed", "{events:?}");
    assert_eq!(
        receiver.requests().len(),
        1,
        "worker-a retried before it was killed; the backoff is 3 s"
    );
    assert_eq!(
        delivery(&sys, &id).await.map(|d| d.0),
        Some("pending".into())
    );

    // worker-b takes the retry; the receiver holds it and worker-b dies mid-request.
    sys.start_worker("worker-b").expect("worker-b starts");
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    sys.kill_worker("worker-b");
    assert_eq!(got[1].status, None, "held");
    assert_eq!(header(&got[1], "x-watermark-attempt"), "2");

    // worker-c sends it again once worker-b's lease has run out, and it is delivered.
    sys.start_worker("worker-c").expect("worker-c starts");
    let (state, attempts, _, delivered) = wait_settled(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!(
        (state.as_str(), attempts, delivered),
        ("delivered", 3, true)
    );
    let got = receiver.requests();
    assert_eq!(got.len(), 3, "one request per attempt");
    assert_eq!(got[2].status, Some(200));
    assert_eq!(header(&got[2], "x-watermark-attempt"), "3");
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON"))
        .collect();
    assert!(bodies
        .iter()
        .all(|b| b["id"] == id && b["status"] == "done"));
    verify(&got[2], SECRET).expect("signed");
    let events = webhook_events(&sys, &id).await;
    let seen: Vec<(&str, i32, Option<&str>)> = events
        .iter()
        .map(|e| (e.0.as_str(), e.1, e.2.as_deref()))
        .collect();
    // Attempt 2 died with worker-b: counted, but nothing recorded of it.
    assert_eq!(
        seen,
        [
            ("webhook.failed", 1, Some("worker-a")),
            ("webhook.delivered", 3, Some("worker-c")),
        ]
    );
    println!(
        "redelivered {:?} after worker-b was killed mid-request",
        got[2].arrived - got[1].arrived
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_worker_records_the_webhook_in_flight() {
    // 1: held while worker-a is told to stop (SIGTERM); it waits out the attempt's timeout and
    // records it, so worker-b retries after the backoff, not after a lease; 2: 200.
    let receiver = Receiver::start(|n| {
        if n == 1 {
            Answer::Hold
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let mut sys = System::start(
        "webhooks-sigterm",
        hooked(Options::default())
            .env("WEBHOOK_BACKOFF_SECONDS", "1")
            .env("WEBHOOK_TIMEOUT_SECONDS", "2"),
    )
    .await
    .expect("system starts");
    let (code, accepted) = submit(&sys, &receiver.url).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    receiver.wait_for(1, Duration::from_secs(60)).await;
    let (exit, took) = sys
        .terminate_worker("worker-a", Duration::from_secs(20))
        .await
        .expect("worker-a stops");
    assert!(exit.success(), "{exit:?}");
    let events = webhook_events(&sys, &id).await;
    assert_eq!(events.len(), 1, "the attempt in flight was not recorded");
    assert_eq!(
        (events[0].0.as_str(), events[0].1, events[0].2.as_deref()),
        ("webhook.failed", 1, Some("worker-a"))
    );
    assert!(events[0].3.contains("no answer within"), "{events:?}");

    sys.start_worker("worker-b").expect("worker-b starts");
    let (state, attempts, _, _) = wait_settled(&sys, &id, Duration::from_secs(30)).await;
    assert_eq!((state.as_str(), attempts), ("delivered", 2));
    let got = receiver.requests();
    assert_eq!(got.len(), 2);
    let events = webhook_events(&sys, &id).await;
    assert_eq!(
        (events[1].0.as_str(), events[1].1, events[1].2.as_deref()),
        ("webhook.delivered", 2, Some("worker-b"))
    );
    println!(
        "worker-a stopped {took:?} after SIGTERM with a webhook in flight; worker-b delivered \
         it {:?} after the first attempt began",
        got[1].arrived - got[0].arrived
    );
    sys.shutdown().await;
}

/// What the TLS receiver got: each request's head (as text) and body.
type Heads = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A receiver over TLS, with the test CA's certificate (for `localhost` and 127.0.0.1), that
/// answers 200 to every request: its port, and each request's head (as text) and body.
async fn tls_receiver() -> (u16, Heads, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    jobs::install_tls_provider();
    let var = |name: &str| std::env::var(name).expect("the test services' TLS files");
    let certs = CertificateDer::pem_file_iter(var("WM_TLS_CERT"))
        .expect("the certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("the certificate");
    let key = PrivateKeyDer::from_pem_file(var("WM_TLS_KEY")).expect("the key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a server configuration");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port on loopback");
    let port = listener.local_addr().unwrap().port();
    let got: Heads = Arc::default();
    let seen = got.clone();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // One request: the head, then Content-Length bytes of body (1 MiB at most).
                let mut data = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, length) = loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 || data.len() > 1 << 20 {
                        return;
                    }
                    data.extend_from_slice(&chunk[..n]);
                    if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..end]).into_owned();
                        let length = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        data.drain(..end + 4);
                        break (head, length);
                    }
                };
                while data.len() < length.min(1 << 20) {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&chunk[..n]);
                }
                seen.lock().unwrap().push((head, data));
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            }));
        }
    });
    (port, got, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_goes_over_https_to_a_name() {
    // https://localhost:…: the worker resolves the name itself, connects to what it checked,
    // and verifies the receiver's certificate (issued by the test CA, which SSL_CERT_FILE
    // names) for that name.
    let (port, got, server) = tls_receiver().await;
    let ca = std::env::var("WM_TLS_CA").expect("the test CA");
    let sys = System::start(
        "webhooks-https",
        hooked(Options::default()).env("SSL_CERT_FILE", ca),
    )
    .await
    .expect("system starts");
    let (code, accepted) = submit(&sys, &format!("https://localhost:{port}/hook")).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    let (state, attempts, last_error, _) = wait_settled(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!(
        (state.as_str(), attempts),
        ("delivered", 1),
        "{last_error:?}"
    );
    let requests = got.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let (head, body) = &requests[0];
    assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
    let signature = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("x-watermark-signature"))
        })
        .map(|(_, v)| v.trim().to_owned())
        .expect("a signature header");
    let mut headers = HeaderMap::new();
    headers.insert("x-watermark-signature", signature.parse().unwrap());
    let request = Request {
        arrived: Instant::now(),
        arrived_at: chrono::Utc::now(),
        answered: None,
        status: None,
        headers,
        body: Bytes::from(body.clone()),
    };
    verify(&request, SECRET).expect("the signature verifies");
    let sent: Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(
        (sent["id"].as_str(), sent["status"].as_str()),
        (Some(id.as_str()), Some("done"))
    );
    server.abort();
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn callback_urls_are_checked_when_submitted() {
    let receiver = Receiver::start(|_| Answer::Status(200)).await;
    // Webhooks on, private targets not allowed. No worker: nothing is sent anywhere.
    let sys = System::start(
        "webhooks-refused",
        Options::default()
            .workers(&[])
            .env("WEBHOOK_SECRET", SECRET),
    )
    .await
    .expect("system starts");
    let refused = [
        (receiver.url.as_str(), "127.0.0.1"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://[::ffff:10.0.0.1]/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("ftp://example.com/hook", "http or https"),
        ("file:///etc/passwd", "http or https"),
        (
            "https://user:password@example.com/hook",
            "user name or password",
        ),
        ("example.com/hook", "absolute URL"),
    ];
    for (url, says) in refused {
        let (code, body) = submit(&sys, url).await;
        assert_eq!(code, 400, "{url}: {body}");
        let text = message(&body);
        assert!(text.contains("callback_url"), "{url}: {text}");
        assert!(text.contains(says), "{url}: {text}");
    }
    let long = format!("https://example.com/{}", "a".repeat(2048));
    let (code, body) = submit(&sys, &long).await;
    assert_eq!(code, 400);
    assert!(message(&body).contains("2048"), "{body}");
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 0);
    assert!(receiver.requests().is_empty());

    // The form offers the field, and what it sends is stored with the batch.
    let page = sys
        .http
        .get(sys.url("/"))
        .send()
        .await
        .expect("the form")
        .text()
        .await
        .expect("text");
    assert!(page.contains(r#"name="callback_url""#), "no callback field");
    let res = sys
        .submit_form(
            &[
                ("task", "watermark"),
                ("callback_url", "https://hooks.example.com/done?k=1"),
            ],
            &[("a.jpg", flat_jpeg(32, 32, [1, 2, 3]))],
        )
        .await
        .expect("the form answers");
    assert_eq!(res.status().as_u16(), 303);
    let stored: Vec<Option<String>> = sqlx::query_scalar("SELECT callback_url FROM batches")
        .fetch_all(&sys.db)
        .await
        .expect("query");
    assert_eq!(
        stored,
        [Some("https://hooks.example.com/done?k=1".to_owned())]
    );
    // The form's field left empty is no callback.
    let res = sys
        .submit_form(
            &[("task", "watermark"), ("callback_url", "")],
            &[("a.jpg", flat_jpeg(32, 32, [1, 2, 3]))],
        )
        .await
        .expect("the form answers");
    assert_eq!(res.status().as_u16(), 303);
    assert_eq!(
        sys.count("SELECT count(*) FROM batches WHERE callback_url IS NULL")
            .await,
        1
    );
    // The form with a refused URL says why.
    let res = sys
        .submit_form(
            &[
                ("task", "watermark"),
                ("callback_url", "gopher://example.com/"),
            ],
            &[("a.jpg", flat_jpeg(32, 32, [1, 2, 3]))],
        )
        .await
        .expect("the form answers");
    assert_eq!(res.status().as_u16(), 400);
    assert!(res.text().await.unwrap().contains("http or https"));
    sys.shutdown().await;

    // Webhooks off: the form does not offer them and the API refuses a callback.
    let off = System::start("webhooks-off", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let page = off
        .http
        .get(off.url("/"))
        .send()
        .await
        .expect("the form")
        .text()
        .await
        .expect("text");
    assert!(!page.contains("callback_url"), "the form offers webhooks");
    let (code, body) = submit(&off, "https://hooks.example.com/done").await;
    assert_eq!(code, 400, "{body}");
    assert!(message(&body).contains("does not send webhooks"), "{body}");
    assert_eq!(off.count("SELECT count(*) FROM batches").await, 0);
    off.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_target_is_refused_at_delivery_too() {
    // `web` accepts a loopback callback (allowed when submitted), but the worker does not
    // allow private targets: it must refuse to connect, for good, saying why.
    let receiver = Receiver::start(|_| Answer::Status(200)).await;
    let mut sys = System::start("webhooks-guard", hooked(Options::default().workers(&[])))
        .await
        .expect("system starts");
    sys.start_worker_via("worker-a", &[], &[("WEBHOOK_ALLOW_PRIVATE", "0".into())])
        .expect("worker starts");
    let (code, accepted) = submit(&sys, &receiver.url).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();
    let (state, attempts, last_error, delivered) =
        wait_settled(&sys, &id, Duration::from_secs(60)).await;
    assert_eq!((state.as_str(), attempts, delivered), ("failed", 1, false));
    let last_error = last_error.expect("a reason");
    assert!(last_error.contains("loopback"), "{last_error}");
    let events = webhook_events(&sys, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0].0.as_str(), events[0].1), ("webhook.failed", 1));
    assert!(events[0].3.contains("not retried"), "{events:?}");
    assert!(
        receiver.requests().is_empty(),
        "the guard let a request through"
    );
    sys.shutdown().await;
}
