//! What a deployment relies on: TLS to Postgres and Redis that is verified, and the worker's
//! health endpoint that compose uses as its health check.

use std::time::{Duration, Instant};

use system_tests::images::photo_jpeg;
use system_tests::{Options, System};

/// A port free right now on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs `cmd` until it exits (at most `limit`): whether it exited and its standard error.
fn run_until_exit(mut cmd: std::process::Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let started = Instant::now();
    let exited = loop {
        if child.try_wait().expect("waits").is_some() {
            break true;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("its output");
    (exited, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `web` and a worker reach Postgres with `sslmode=verify-full` and Redis with `rediss://`
/// (a Redis whose TLS port is the only one they are given), verifying both certificates against
/// the local CA; a batch goes through.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_and_redis_over_verified_tls_carry_a_batch() {
    let sys = System::start("tls", Options::default().tls())
        .await
        .expect("system starts over TLS");
    assert!(sys.env()["REDIS_URL"].starts_with("rediss://"));
    assert!(sys.env()["DATABASE_URL"].contains("sslmode=verify-full"));
    let id = sys
        .submit_ok(
            &[
                ("a.jpg", photo_jpeg(320, 240, 1)),
                ("b.jpg", photo_jpeg(240, 320, 2)),
            ],
            None,
        )
        .await
        .expect("accepted");
    let batch = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(batch["status"], "done", "{batch}");
    assert_eq!(batch["done"], 2, "{batch}");
    // Every connection of web and the worker to this database is encrypted.
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
         AND a.application_name <> 'system-tests' AND NOT s.ssl",
    )
    .fetch_one(&sys.db)
    .await
    .unwrap();
    assert_eq!(plain, 0, "a connection without TLS");
    sys.shutdown().await;
}

/// A certificate the apps do not trust stops them at start, naming what refused it, rather than
/// leaving them waiting: for Postgres (`sslrootcert` of another CA) and Redis (`SSL_CERT_FILE`).
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_stops_web_with_the_reason() {
    let sys = System::start("tls-untrusted", Options::default().tls().workers(&[]))
        .await
        .expect("system starts over TLS");
    let other = sys.logs().join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=another CA", "-keyout"])
        .arg(sys.logs().join("other-ca.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
    let other = other.to_str().unwrap().to_owned();
    let ca = std::env::var("WM_TLS_CA").unwrap();

    let mut cmd = sys.command("web");
    cmd.env(
        "DATABASE_URL",
        sys.env()["DATABASE_URL"].replace(&ca, &other),
    )
    .env("PORT", "0");
    let (exited, stderr) = run_until_exit(cmd, Duration::from_secs(30));
    assert!(
        exited,
        "web kept waiting on an untrusted Postgres: {stderr}"
    );
    assert!(stderr.contains("cannot use Postgres"), "{stderr}");

    let mut cmd = sys.command("web");
    cmd.env("SSL_CERT_FILE", &other).env("PORT", "0");
    let (exited, stderr) = run_until_exit(cmd, Duration::from_secs(30));
    assert!(exited, "web kept waiting on an untrusted Redis: {stderr}");
    assert!(stderr.contains("cannot use Redis"), "{stderr}");
    sys.shutdown().await;
}

/// The worker's `HEALTH_PORT` serves `/healthz` (its name and the images in hand) and `/readyz`
/// (200 when Postgres, Redis and S3 answer, 503 naming S3 while it is cut off, 200 again after).
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_health_endpoint_answers_and_names_what_is_down() {
    let port = free_port();
    let sys = System::start(
        "worker-health",
        Options::default()
            .proxy_s3()
            .env("HEALTH_PORT", port)
            .workers(&["worker-h"]),
    )
    .await
    .expect("system starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let health = loop {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(res) => break res,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no health endpoint on {port}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(health.status().as_u16(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["worker"], "worker-h", "{body}");
    assert_eq!(body["images_in_hand"], 0, "{body}");

    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    sys.s3_proxy().cut();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["s3"], "unavailable", "{body}");
    assert_eq!(body["postgres"], "ok", "{body}");
    sys.s3_proxy().restore();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    sys.shutdown().await;
}
