//! What operators rely on: Prometheus metrics on `web` and on each worker, the monitor and the
//! statistics behind `MONITOR_TOKEN`, and request ids in the access log.

use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::faults::free_port;
use system_tests::images::photo_jpeg;
use system_tests::{Options, System};

const TOKEN: &str = "monitor-token-for-tests-7f3a9c";

/// The value of the sample `name` (with its labels, as Prometheus writes them) in `text`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn text(http: &reqwest::Client, url: &str) -> (u16, String) {
    let res = http.get(url).send().await.expect("answers");
    (res.status().as_u16(), res.text().await.expect("a body"))
}

/// Two good images and one that is a JPEG only by its first bytes (it fails on the worker).
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let mut broken = photo_jpeg(64, 64, 3);
    broken.truncate(40);
    broken.extend(std::iter::repeat_n(0x55, 400));
    vec![
        ("a.jpg", photo_jpeg(320, 240, 1)),
        ("b.jpg", photo_jpeg(320, 240, 2)),
        ("broken.jpg", broken),
    ]
}

/// A batch with a file that fails shows up in web's and the worker's metrics, in the
/// statistics and on the monitor, all behind the token.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_stats_and_the_monitor_follow_a_batch() {
    let health = free_port().expect("a port");
    let sys = System::start(
        "operations",
        Options::default()
            .env("HEALTH_PORT", health)
            .env("MONITOR_TOKEN", TOKEN),
    )
    .await
    .expect("system starts");
    let files = files();
    let sent: usize = files.iter().map(|(_, b)| b.len()).sum();
    let id = sys.submit_ok(&files, None).await.expect("accepted");
    let status = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["failed"], 1, "{status}");

    // web: the upload, the answers by route, and the cluster read from Postgres.
    let (code, web) = text(&sys.http, &sys.url("/metrics")).await;
    assert_eq!(code, 200);
    let uploaded = sample(&web, "watermark_uploaded_bytes_total").expect("uploaded bytes");
    assert_eq!(uploaded as usize, sent, "{web}");
    assert_eq!(sample(&web, "watermark_batches_submitted_total"), Some(1.0));
    assert_eq!(
        sample(
            &web,
            r#"watermark_http_requests_total{method="POST",route="/api/batches",status="202"}"#
        ),
        Some(1.0),
        "{web}"
    );
    // The status polls are counted under the route's pattern, never under a batch's id.
    assert!(!web.contains(&id), "a batch id in the metrics");
    assert_eq!(
        sample(&web, r#"watermark_batches{status="done"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&web, "watermark_images_pending"), Some(0.0));
    assert_eq!(sample(&web, "watermark_workers_live"), Some(1.0), "{web}");
    assert!(web.contains("# TYPE watermark_http_request_seconds histogram"));
    assert!(sample(&web, "process_resident_memory_bytes").is_some_and(|b| b > 0.0));

    // The worker: images by outcome, their times, the batch it ended.
    let (code, worker) = text(&sys.http, &format!("http://127.0.0.1:{health}/metrics")).await;
    assert_eq!(code, 200);
    for (name, want) in [
        (r#"watermark_images_finished_total{outcome="done"}"#, 2.0),
        (r#"watermark_images_finished_total{outcome="failed"}"#, 1.0),
        ("watermark_image_processing_seconds_count", 3.0),
        (r#"watermark_batches_finished_total{outcome="done"}"#, 1.0),
        (r#"watermark_batches_finished_total{outcome="failed"}"#, 0.0),
        ("watermark_images_in_flight", 0.0),
    ] {
        assert_eq!(sample(&worker, name), Some(want), "{name} in:\n{worker}");
    }

    // web streams the zip, assembled from the results, and counts it.
    let (code, zip) = sys.download(&id).await.expect("downloads");
    assert_eq!(code, 200);
    let (_, web) = text(&sys.http, &sys.url("/metrics")).await;
    assert_eq!(
        sample(&web, r#"watermark_downloads_total{outcome="complete"}"#),
        Some(1.0),
        "{web}"
    );
    assert_eq!(
        sample(&web, "watermark_download_bytes_total"),
        Some(zip.len() as f64)
    );

    // The statistics: refused without the token, right with it. (The zip's length is noted by
    // the worker just after the batch ends: wait for it.)
    let noted = Instant::now();
    while sys
        .count("SELECT count(*) FROM batches WHERE archive_bytes IS NULL")
        .await
        > 0
    {
        assert!(
            noted.elapsed() < Duration::from_secs(10),
            "the zip's length was never noted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sys.count("SELECT archive_bytes FROM batches").await,
        zip.len() as i64,
        "the length noted is the zip's"
    );
    let stats_url = sys.url("/api/stats");
    let res = sys.http.get(&stats_url).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert!(res.headers().contains_key("www-authenticate"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    let wrong = sys
        .http
        .get(&stats_url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let stats: Value = sys
        .http
        .get(&stats_url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["batches"]["submitted"], 1, "{stats}");
    assert_eq!(stats["batches"]["done"], 1, "{stats}");
    assert_eq!(stats["images"]["done"], 2, "{stats}");
    assert_eq!(stats["images"]["failed"], 1, "{stats}");
    assert_eq!(stats["bytes_in"].as_u64(), Some(sent as u64), "{stats}");
    assert!(stats["bytes_out"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["archive_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(stats["failures"][0]["count"], 1, "{stats}");
    assert_eq!(stats["image_times"]["count"], 3, "{stats}");
    let p95 = stats["image_times"]["p95_seconds"].as_f64().unwrap();
    let mean = stats["image_times"]["mean_seconds"].as_f64().unwrap();
    assert!(p95 > 0.0 && mean > 0.0 && p95 < 60.0, "{stats}");
    assert_eq!(stats["batch_times"]["count"], 1, "{stats}");
    let series = stats["series"].as_array().unwrap();
    let charted: i64 = series
        .iter()
        .map(|b| b["images_done"].as_i64().unwrap())
        .sum();
    assert_eq!(charted, 2, "{stats}");
    // A range from before the batch holds nothing of it; a bad range is a clear 400.
    let (code, empty) = {
        let res = sys
            .http
            .get(sys.url("/api/stats?from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(code, 200, "{empty}");
    assert_eq!(empty["batches"]["submitted"], 0, "{empty}");
    assert_eq!(empty["series"].as_array().unwrap().len(), 24, "{empty}");
    let bad = sys
        .http
        .get(sys.url("/api/stats?from=last-tuesday"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);

    // The monitor's JSON: the worker, with what it did (its report comes every 5 s).
    let started = Instant::now();
    let monitor = loop {
        let snapshot: Value = sys
            .http
            .get(sys.url("/api/monitor"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if snapshot["workers"][0]["images_done"] == 2 {
            break snapshot;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the worker's report never said 2 images: {snapshot}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let worker_row = &monitor["workers"][0];
    assert_eq!(worker_row["name"], "worker-a", "{monitor}");
    assert_eq!(worker_row["images_failed"], 1, "{monitor}");
    assert_eq!(worker_row["in_flight"], 0, "{monitor}");
    assert_eq!(monitor["images_pending"], 0, "{monitor}");
    assert_eq!(monitor["throughput"][2]["images"], 3, "{monitor}");
    assert_eq!(
        monitor["recent_batches"][0]["short_id"],
        &id[..8],
        "{monitor}"
    );

    // The page: the sign-in form without the cookie; the monitor with it.
    let (code, page) = text(&sys.http, &sys.url("/monitor")).await;
    assert_eq!(code, 401);
    assert!(page.contains("Sign in to the monitor"), "{page}");
    let res = sys
        .http
        .post(sys.url("/monitor/sign-in"))
        .form(&[("token", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let res = sys
        .http
        .post(sys.url("/monitor/sign-in"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        !cookie.contains(TOKEN),
        "the cookie holds the token: {cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = sys
        .http
        .get(sys.url("/monitor?range=24h"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    for needle in [
        "worker-a",
        "<svg",
        &id[..8],
        "live workers",
        "Failures in the last hour",
    ] {
        assert!(
            page.contains(needle),
            "{needle} missing from the monitor:\n{page}"
        );
    }
    assert!(!page.contains(TOKEN), "the token is on the page");
    assert!(
        !page.contains(&id),
        "a whole batch id (its owner's key) is on the page"
    );
    assert!(
        !page.contains("https://"),
        "a third-party asset on the page"
    );
    sys.shutdown().await;
}

/// Without `MONITOR_TOKEN` the monitor and the statistics do not exist.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_token_the_monitor_is_off() {
    let sys = System::start("monitor-off", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let (code, _) = text(&sys.http, &sys.url("/monitor")).await;
    assert_eq!(code, 404);
    let res = sys
        .http
        .get(sys.url("/api/stats"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("MONITOR_TOKEN"));
    sys.shutdown().await;
}

/// Every request has an id, in its answer and in each of its log lines (those of the upload's
/// own task too); a proxy's id is kept when it is plain, replaced when it is not; query strings
/// never reach the log.
#[tokio::test(flavor = "multi_thread")]
async fn request_ids_follow_a_request_through_the_log() {
    let sys = System::start("request-ids", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let form = reqwest::multipart::Form::new().part(
        "files",
        reqwest::multipart::Part::bytes(photo_jpeg(64, 64, 1)).file_name("a.jpg"),
    );
    let res = sys
        .http
        .post(sys.url("/api/batches"))
        .header("x-request-id", "ops-test-42")
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 202);
    assert_eq!(res.headers()["x-request-id"], "ops-test-42");

    let res = sys.http.get(sys.url("/api/tasks")).send().await.unwrap();
    let fresh = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(fresh.len(), 32, "{fresh}");
    assert!(fresh.chars().all(|c| c.is_ascii_hexdigit()), "{fresh}");
    let unfit = "x".repeat(65);
    let res = sys
        .http
        .get(sys.url("/api/tasks?secret=hunter2"))
        .header("x-request-id", &unfit)
        .send()
        .await
        .unwrap();
    let replaced = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(replaced, unfit);
    assert_eq!(replaced.len(), 32);

    // The log is written as the answers go; give it a moment to reach the file.
    let log_path = sys.logs().join("web.log");
    let started = Instant::now();
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains(&replaced) || started.elapsed() > Duration::from_secs(10) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines = |id: &str| log.lines().filter(|l| l.contains(id)).collect::<Vec<_>>();
    let upload = lines("ops-test-42");
    assert!(
        upload.iter().any(|l| l.contains("batch received")),
        "the upload's task logs without the request's id:\n{log}"
    );
    assert!(
        upload
            .iter()
            .any(|l| l.contains("answered") && l.contains("status=202") && l.contains("INFO")),
        "no access log line at info:\n{log}"
    );
    assert!(
        lines(&fresh).iter().any(|l| l.contains("route=/api/tasks")),
        "{log}"
    );
    assert!(
        !log.contains("hunter2"),
        "a query string reached the log:\n{log}"
    );
    assert!(!log.contains(&unfit), "an unfit id reached the log");
    sys.shutdown().await;
}
