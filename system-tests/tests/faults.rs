//! Faults injected while work is in flight, with the real binaries and services: every batch
//! still finishes, every image exactly once (see `system_tests::checks`). Each test prints the
//! figures it saw (run with `--nocapture` to read them).
//!
//! The Postgres restart has a test binary of its own (`postgres_restart.rs`): it restarts the
//! server every test shares.

use std::time::{Duration, Instant};

use serde_json::Value;
use system_tests::checks::{self, batch, files, verify_all, Sent};
use system_tests::{Options, System};

/// Settings of every fault test: slow images on purpose, a reconciler every two seconds that
/// re-enqueues jobs older than 30 s, and two workers running two images each.
fn options() -> Options {
    Options::default()
        .workers(&["worker-a", "worker-b"])
        .env("WORKER_FAULT_INJECTION", "1")
        .env("WORKER_CONCURRENCY", 2)
        .env("RECONCILE_SCHEDULE", "*/2 * * * * *")
        .env("RECONCILE_AFTER_SECONDS", 30)
}

/// Submits `n` batches of `size` images (tag `b{k}`); returns their ids and what was sent.
async fn submit_batches(
    sys: &System,
    n: usize,
    size: usize,
    slow: bool,
) -> Vec<(String, Vec<Sent>)> {
    let mut out = Vec::new();
    for k in 0..n {
        let sent = batch(&format!("b{k}"), size, slow);
        let id = sys
            .submit_ok(&files(&sent), Some(&checks::pipeline()))
            .await
            .expect("accepted");
        out.push((id, sent));
    }
    out
}

/// Images of this system done so far.
async fn done_images(sys: &System) -> i64 {
    sys.count("SELECT count(*) FROM images WHERE status = 'done'")
        .await
}

/// Waits until at least `n` images are done (so that a fault lands mid-batch).
async fn wait_done(sys: &System, n: i64) {
    let started = Instant::now();
    while done_images(sys).await < n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no progress; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn max_attempts(sys: &System) -> i64 {
    sys.count("SELECT coalesce(max(attempts), 0)::bigint FROM images")
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let mut sys = System::start("kill-worker", options())
        .await
        .expect("system starts");
    let batches = submit_batches(&sys, 2, 60, true).await;
    wait_done(&sys, 10).await;
    sys.kill_worker("worker-a");
    let killed = Instant::now();
    wait_done(&sys, 40).await;
    // Then the only worker left; a new one starts a little later.
    sys.kill_worker("worker-b");
    let in_flight = 120 - done_images(&sys).await;
    assert!(in_flight > 0, "the batches finished before the second kill");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.start_worker("worker-c").expect("starts");
    verify_all(&sys, &batches, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    // The dead workers' metadata does not stay in Redis (apalis-redis would keep it forever).
    let mut conn = sys.redis_connection().await.expect("connects");
    let pattern = format!("{}:*:workers:metadata:worker-[ab]-*", sys.queue_prefix());
    let started = Instant::now();
    loop {
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        if left.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "dead workers' metadata left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "kill -9: 120 images, {in_flight} left when the last worker died; all done {:.1} s after the first kill; most attempts at one image: {}",
        killed.elapsed().as_secs_f64(),
        max_attempts(&sys).await
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_losing_its_data_mid_batch_loses_nothing() {
    let mut sys = System::start("redis-lost", options().own_redis())
        .await
        .expect("system starts");
    let batches = submit_batches(&sys, 2, 60, true).await;
    wait_done(&sys, 20).await;
    let before = done_images(&sys).await;
    sys.redis()
        .restart_empty(Duration::from_secs(1))
        .await
        .expect("Redis restarts");
    let restarted = Instant::now();
    verify_all(&sys, &batches, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    println!(
        "Redis restarted empty with {} of 120 images left: all done {:.1} s later",
        120 - before,
        restarted.elapsed().as_secs_f64()
    );
    // A FLUSHALL is the same loss, without the restart.
    let more = submit_batches(&sys, 1, 100, true).await;
    wait_done(&sys, 120 + 20).await;
    let mut conn = sys.redis().connection().await.expect("connects");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .expect("FLUSHALL");
    let flushed = Instant::now();
    verify_all(&sys, &more, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    println!(
        "FLUSHALL mid-batch: all 100 done {:.1} s later",
        flushed.elapsed().as_secs_f64()
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_unreachable_for_ten_seconds_is_waited_out() {
    let sys = System::start("s3-down", options().proxy_s3())
        .await
        .expect("system starts");
    let batches = submit_batches(&sys, 2, 60, true).await;
    wait_done(&sys, 10).await;
    sys.s3_proxy().cut();
    let cut = Instant::now();

    // Meanwhile, a submission is refused with 503 naming the storage, and /readyz says so.
    let ready = sys
        .http
        .get(sys.url("/readyz"))
        .send()
        .await
        .expect("readyz answers");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("JSON");
    assert_eq!(body["s3"], "unavailable", "{body}");
    assert_eq!(body["postgres"], "ok", "{body}");
    let refused = batch("refused", 3, false);
    let (code, body) = sys.submit(&files(&refused), None).await.expect("answers");
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("storage"),
        "{body}"
    );

    tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut.elapsed())).await;
    sys.s3_proxy().restore();
    let restored = Instant::now();
    verify_all(&sys, &batches, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    let retried = sys
        .count("SELECT count(*) FROM images WHERE retries > 0")
        .await;
    let most = sys
        .count("SELECT coalesce(max(retries), 0)::bigint FROM images")
        .await;
    assert!(
        retried > 0,
        "no image met the outage: the fault did not land mid-batch"
    );
    // The refused submission left nothing behind.
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 2);
    println!(
        "S3 cut for 10 s: {retried} images retried (the most retries of one image: {most}), none failed; all done {:.1} s after it came back",
        restored.elapsed().as_secs_f64()
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_web_killed_mid_upload_leaves_nothing_behind() {
    use tokio::io::AsyncWriteExt;

    let mut sys = System::start(
        "web-killed",
        options()
            .env("UPLOAD_STALE_SECONDS", 4)
            .env("RECONCILE_SCHEDULE", "* * * * * *"),
    )
    .await
    .expect("system starts");
    let before = submit_batches(&sys, 1, 100, false).await;

    // A browser that sends five files and the first 9 MiB of a sixth (so that part of it is
    // an unfinished multipart upload in S3), then waits.
    let boundary = "wmtestboundary";
    let mut body = Vec::new();
    for sent in batch("half", 5, false) {
        body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{}\"\r\nContent-Type: image/jpeg\r\n\r\n", sent.name).as_bytes());
        body.extend(&sent.bytes);
        body.extend(b"\r\n");
    }
    let big = system_tests::images::photo_jpeg(64, 64, 1);
    body.extend(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes());
    body.extend(&big);
    body.resize(body.len() + 9 * 1024 * 1024, 0);
    let addr = sys.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connects");
    let head = format!(
        "POST /api/batches HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
        body.len() + 20 * 1024 * 1024
    );
    stream.write_all(head.as_bytes()).await.expect("sends");
    stream.write_all(&body).await.expect("sends");
    stream.flush().await.expect("sends");

    // Once the five files are stored, `web` dies.
    let started = Instant::now();
    let half: String = loop {
        let stored = sys.objects().await.expect("lists").len();
        let uploading: Option<String> =
            sqlx::query_scalar("SELECT id::text FROM batches WHERE status = 'uploading'")
                .fetch_optional(&sys.db)
                .await
                .expect("query");
        if let Some(id) = uploading {
            let mine = sys
                .objects()
                .await
                .expect("lists")
                .iter()
                .filter(|k| k.starts_with(&format!("batches/{id}/")))
                .count();
            if mine >= 5 {
                break id;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the upload did not get going ({stored} objects)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    sys.kill_web();
    let killed = Instant::now();
    drop(stream);
    sys.start_web().await.expect("web starts again");

    // The half-uploaded batch ends failed, with its objects gone.
    let status = sys
        .wait_final(&half, Duration::from_secs(30))
        .await
        .expect("the broken upload is settled");
    assert_eq!(status["status"], "failed", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap_or("")
            .contains("interrupted"),
        "{status}"
    );
    let settled = killed.elapsed();
    let started = Instant::now();
    loop {
        let left = sys
            .objects()
            .await
            .expect("lists")
            .iter()
            .filter(|k| k.starts_with(&format!("batches/{half}/")))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{left} objects of the broken upload remain"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Nothing else is affected: the earlier batch, and one sent after the restart.
    let after = submit_batches(&sys, 1, 20, false).await;
    let all: Vec<_> = before.into_iter().chain(after).collect();
    verify_all(&sys, &all, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    println!(
        "web killed mid-upload: the broken batch was failed {:.1} s after the kill and its objects deleted; 120 other images done",
        settled.as_secs_f64()
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_worker_within_its_grace_period() {
    let grace = 3u64;
    let mut sys = System::start(
        "sigterm",
        options()
            .workers(&["worker-a"])
            .env("SHUTDOWN_GRACE_SECONDS", grace),
    )
    .await
    .expect("system starts");
    // Ten images that take 5 s each: longer than the grace period.
    let slow: Vec<Sent> = batch("slow", 10, false)
        .into_iter()
        .map(|mut s| {
            s.bytes = checks::with_marker(&s.bytes, b"wm-fault:sleep=5000;");
            s
        })
        .collect();
    let id = sys
        .submit_ok(&files(&slow), Some(&checks::pipeline()))
        .await
        .expect("accepted");
    // worker-a is the only worker: the images started now are the ones it holds.
    let started = Instant::now();
    let held: Vec<String> = loop {
        let held: Vec<String> = sqlx::query_scalar(
            "SELECT id::text FROM images WHERE attempts > 0 AND status = 'pending' ORDER BY 1",
        )
        .fetch_all(&sys.db)
        .await
        .expect("query");
        if held.len() >= 2 {
            break held;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "worker-a never took the slow images"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // worker-b, with room for everything, is up before worker-a is told to stop.
    sys.start_worker_via("worker-b", &[], &[("WORKER_CONCURRENCY", "10".to_owned())])
        .expect("starts");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, took) = sys
        .terminate_worker("worker-a", Duration::from_secs(grace + 10))
        .await
        .expect("exits");
    let stopped_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&sys.db)
        .await
        .expect("now");
    assert!(status.success(), "worker-a exited with {status}");
    assert!(
        took < Duration::from_secs(grace + 2),
        "worker-a took {took:?} to stop; its grace period is {grace} s"
    );
    verify_all(&sys, &[(id, slow)], Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    // The images worker-a held were handed back when it stopped, not left for Redis to notice
    // its missing heartbeats (10 s): worker-b took them at once and finished each 5 s later.
    let finished: Vec<(String, String, f64)> = sqlx::query_as(
        "SELECT id::text, coalesce(processed_by, ''),
                extract(epoch FROM finished_at - $2)::float8
         FROM images WHERE id::text = ANY($1) ORDER BY 1",
    )
    .bind(&held)
    .bind(stopped_at)
    .fetch_all(&sys.db)
    .await
    .expect("query");
    for (image, by, after) in &finished {
        assert_eq!(by, "worker-b", "image {image}, held by worker-a");
        assert!(
            *after < 8.5,
            "image {image} finished {after:.1} s after worker-a stopped: not handed back"
        );
    }
    let latest = finished.iter().map(|f| f.2).fold(0.0, f64::max);
    println!(
        "SIGTERM: worker-a exited 0 after {:.2} s (grace {grace} s) holding {} slow images; worker-b finished them {latest:.1} s after it stopped (a redelivery would take 10 s + 5 s)",
        took.as_secs_f64(),
        held.len()
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_image_fails_alone_after_bounded_attempts() {
    let mut sys = System::start(
        "poison",
        options()
            .env("MAX_IMAGE_ATTEMPTS", 3)
            .env("IMAGE_TIMEOUT_SECONDS", 2),
    )
    .await
    .expect("system starts");
    let good = batch("good", 100, false);
    let mut all = files(&good);
    let base = batch("x", 1, false).remove(0).bytes;
    all.push(("crash.png", checks::with_marker(&base, b"wm-fault:crash")));
    all.push(("hang.png", checks::with_marker(&base, b"wm-fault:hang")));
    let started = Instant::now();
    let id = sys
        .submit_ok(&all, Some(&checks::pipeline()))
        .await
        .expect("accepted");
    let status = sys
        .wait_final(&id, Duration::from_secs(120))
        .await
        .expect("finishes");
    let took = started.elapsed();
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["done"], 100, "{status}");
    assert_eq!(status["failed"], 2, "{status}");
    let files = status["images"].as_array().expect("images");
    let reason = |name: &str| {
        files
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["error"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let crash = reason("crash.png");
    let hang = reason("hang.png");
    assert!(
        crash.contains("gave up after 3 attempts") && crash.contains("crashed"),
        "{crash}"
    );
    assert!(
        hang.contains("gave up after 3 attempts") && hang.contains("hung"),
        "{hang}"
    );
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM images WHERE name IN ('crash.png', 'hang.png')")
            .fetch_all(&sys.db)
            .await
            .expect("query");
    assert_eq!(attempts, vec![3, 3]);
    // The workers never went down.
    for (name, alive) in sys.workers_alive() {
        assert!(alive, "{name} died");
    }
    // The zip holds the 100 good images and the report of the two poisoned ones.
    let (code, zip) = sys.download(&id).await.expect("downloads");
    assert_eq!(code, 200);
    let zip = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
    assert_eq!(zip.len(), 101);
    assert!(zip
        .file_names()
        .any(|n| n.is_ok_and(|n| n == "FAILED-FILES.txt")));
    checks::verify_counters(&sys).await.expect("counters");
    checks::verify_redis_drained(&sys, Duration::from_secs(30))
        .await
        .expect("drained");
    checks::verify_no_orphans(&sys).await.expect("no orphans");
    println!(
        "poison: a crashing and a hanging image each tried 3 times, then failed alone ({crash:?} / {hang:?}); 100 others done; batch final after {:.1} s; no worker died",
        took.as_secs_f64()
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_of_ten_thousand_images_drains_without_killing_a_worker() {
    let window = 1000;
    let mut sys = System::start(
        "backlog",
        Options::default()
            .workers(&["worker-a", "worker-b"])
            .own_redis()
            .env("WORKER_CONCURRENCY", 2)
            .env("MAX_FILES_PER_BATCH", 2500)
            .env("DISPATCH_WINDOW", window),
    )
    .await
    .expect("system starts");
    let memory_before = sys.redis().used_memory().await.expect("INFO");
    let started = Instant::now();
    let sent: Vec<Vec<Sent>> = (0..4)
        .map(|k| batch(&format!("b{k}"), 2500, false))
        .collect();
    let pipeline = checks::pipeline();
    let ids = futures::future::join_all(sent.iter().map(|s| async {
        sys.submit_ok(&files(s), Some(&pipeline))
            .await
            .expect("accepted")
    }))
    .await;
    let uploaded = started.elapsed();
    let batches: Vec<(String, Vec<Sent>)> = ids.into_iter().zip(sent).collect();

    // Until every batch is final: never more than the window in Redis, and no worker dies.
    let mut most_in_redis = 0;
    let mut peak_memory = memory_before;
    let limit = Duration::from_secs(600);
    loop {
        most_in_redis = most_in_redis.max(checks::jobs_in_redis(&sys).await.expect("Redis"));
        peak_memory = peak_memory.max(sys.redis().used_memory().await.expect("INFO"));
        for (name, alive) in sys.workers_alive() {
            assert!(alive, "{name} died; logs in {}", sys.logs().display());
        }
        let unfinished = sys
            .count("SELECT count(*) FROM batches WHERE status NOT IN ('done', 'failed')")
            .await;
        if unfinished == 0 {
            break;
        }
        assert!(started.elapsed() < limit, "not drained after {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained = started.elapsed();
    assert!(
        most_in_redis <= window + 4,
        "{most_in_redis} jobs were in Redis at once; the window is {window}"
    );
    verify_all(&sys, &batches, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));

    // Finished jobs are trimmed from Redis (every 5 s): no job's data or metadata is left, and
    // memory goes back near its start. (At the peak each job in Redis took about 1.5 KB: kept
    // forever, 10,000 jobs would hold some 15 MB.)
    let prefix = sys.queue_prefix().to_owned();
    let trimmed = Instant::now();
    let (jobs_left, memory_after) = loop {
        let mut conn = sys.redis().connection().await.expect("connects");
        let meta: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*:meta:*"))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        let mut data = 0i64;
        {
            let n: i64 = redis::cmd("HLEN")
                .arg(format!("{prefix}:process-image:data"))
                .query_async(&mut conn)
                .await
                .expect("HLEN");
            data += n;
        }
        let left = meta.len() as i64 + data;
        let now = sys.redis().used_memory().await.expect("INFO");
        if left == 0 || trimmed.elapsed() > Duration::from_secs(30) {
            break (left, now);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(jobs_left, 0, "finished jobs left in Redis");
    assert!(
        memory_after < memory_before + 1024 * 1024,
        "Redis used {memory_before} bytes before and {memory_after} after (peak {peak_memory})"
    );
    println!(
        "backlog: 10,000 images in 4 batches uploaded in {:.1} s, all done in {:.1} s ({:.0} images/s); at most {most_in_redis} jobs in Redis at once (window {window}); Redis memory {:.2} MiB before, {:.2} MiB at peak, {:.2} MiB after",
        uploaded.as_secs_f64(),
        drained.as_secs_f64(),
        10_000.0 / (drained - uploaded).as_secs_f64(),
        memory_before as f64 / 1048576.0,
        peak_memory as f64 / 1048576.0,
        memory_after as f64 / 1048576.0,
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_purge_each_expired_batch_exactly_once() {
    let mut sys = System::start(
        "purge-replicas",
        options()
            .workers(&["worker-a", "worker-b", "worker-c"])
            .env("RESULT_TTL_SECONDS", 3)
            .env("PURGE_SCHEDULE", "* * * * * *")
            .env("RECONCILE_SCHEDULE", "* * * * * *"),
    )
    .await
    .expect("system starts");
    let quick = submit_batches(&sys, 6, 10, false).await;
    for (id, sent) in &quick {
        sys.wait_final(id, Duration::from_secs(60))
            .await
            .expect("final");
        checks::verify_batch(&sys, id, sent).await.expect("right");
    }
    // A batch that is still being processed while the six expire and are purged: 120 images of
    // half a second on 6 slots, some 10 s of work, while the six expire 3 s after they finished.
    let slow = batch("slow", 120, true);
    let busy = sys
        .submit_ok(&files(&slow), Some(&checks::pipeline()))
        .await
        .expect("accepted");

    let started = Instant::now();
    let ids: Vec<&str> = quick.iter().map(|(id, _)| id.as_str()).collect();
    loop {
        let expired: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM batches WHERE status = 'expired' AND id::text = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(&sys.db)
        .await
        .expect("query");
        if expired == 6 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {expired} of 6 batches expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let busy_while_purging = sys
        .count("SELECT count(*) FROM batches WHERE status IN ('queued', 'processing')")
        .await;
    assert_eq!(busy_while_purging, 1, "the slow batch finished too soon");
    let runs: Vec<i32> = sqlx::query_scalar(
        "SELECT purge_runs FROM batches WHERE id::text = ANY($1) ORDER BY created_at",
    )
    .bind(&ids)
    .fetch_all(&sys.db)
    .await
    .expect("query");
    assert_eq!(runs, vec![1; 6], "purges per batch");
    // The replicas' own logs agree: one "purged" line per batch, whichever replica ran it.
    let mut logs = String::new();
    for name in ["worker-a", "worker-b", "worker-c"] {
        logs += &std::fs::read_to_string(sys.logs().join(format!("{name}.log"))).expect("log");
    }
    for id in &ids {
        let lines = logs
            .lines()
            .filter(|l| l.contains("purged an expired batch") && l.contains(id))
            .count();
        assert_eq!(lines, 1, "batch {id} purged {lines} times");
        let (code, _) = sys.download(id).await.expect("answers");
        assert_eq!(code, 410);
    }
    // The busy batch was never touched, and finishes whole.
    sys.wait_final(&busy, Duration::from_secs(60))
        .await
        .expect("final");
    checks::verify_batch(&sys, &busy, &slow)
        .await
        .expect("the busy batch is whole");
    checks::verify_counters(&sys).await.expect("counters");
    checks::verify_no_orphans(&sys).await.expect("no orphans");

    // Any replica runs the crons: the one that won the most purge ticks dies, and the others
    // claim the ticks from then on and purge the next batch that expires.
    let (top, won): (String, i64) = sqlx::query_as(
        "SELECT claimed_by, count(*) FROM cron_ticks WHERE job = 'purge'
         GROUP BY 1 ORDER BY 2 DESC LIMIT 1",
    )
    .fetch_one(&sys.db)
    .await
    .expect("purge ticks were claimed");
    sys.kill_worker(&top);
    let killed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    let late = submit_batches(&sys, 1, 4, false).await;
    let (late_id, late_sent) = &late[0];
    sys.wait_final(late_id, Duration::from_secs(60))
        .await
        .expect("final");
    checks::verify_batch(&sys, late_id, late_sent)
        .await
        .expect("right");
    let started = Instant::now();
    while sys.status(late_id).await.expect("answers").0 != 410 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the batch that expired after {top} died was never purged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT claimed_by FROM cron_ticks
         WHERE job = 'purge' AND fire_at > $1 + interval '2 seconds' ORDER BY 1",
    )
    .bind(killed_at)
    .fetch_all(&sys.db)
    .await
    .unwrap();
    assert!(
        !after.is_empty(),
        "no purge tick was claimed after {top} died"
    );
    assert!(
        !after.contains(&top),
        "{top} claimed ticks after it was killed: {after:?}"
    );
    println!(
        "three replicas: 6 expired batches purged exactly once each; the batch in progress (120 images) finished whole; {top} (which had won {won} purge ticks) was killed and {after:?} purged the next one"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_dependency_down_submissions_answer_503_naming_it_and_store_nothing() {
    let mut sys = System::start(
        "deps-down",
        options().own_redis().proxy_s3().proxy_postgres(),
    )
    .await
    .expect("system starts");
    let sent = batch("ok", 100, false);
    let readyz = |sys: &System| {
        let request = sys.http.get(sys.url("/readyz")).send();
        async move {
            let res = request.await.expect("readyz answers");
            let code = res.status().as_u16();
            (code, res.json::<Value>().await.expect("JSON"))
        }
    };
    let mut accepted = Vec::new();
    for down in ["postgres", "redis", "s3"] {
        match down {
            "postgres" => sys.postgres_proxy().cut(),
            "redis" => sys.redis().stop(),
            _ => sys.s3_proxy().cut(),
        }
        let (code, body) = readyz(&sys).await;
        assert_eq!(code, 503, "{down}: {body}");
        for dep in ["postgres", "redis", "s3"] {
            let want = if dep == down { "unavailable" } else { "ok" };
            assert_eq!(body[dep], want, "{down} down: {body}");
        }
        let (code, body) = sys.submit(&files(&sent[..3]), None).await.expect("answers");
        assert_eq!(code, 503, "{down} down: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        let named = match down {
            "postgres" => "Postgres",
            "redis" => "Redis",
            _ => "S3",
        };
        assert!(
            message.contains(named) && message.contains("nothing was accepted"),
            "{down} down: {message}"
        );
        match down {
            "postgres" => sys.postgres_proxy().restore(),
            "redis" => sys.redis().start_again().await.expect("Redis starts"),
            _ => sys.s3_proxy().restore(),
        }
        // Back up: the same submission goes through.
        let started = Instant::now();
        let id = loop {
            let (code, body) = sys
                .submit(&files(&sent), Some(&checks::pipeline()))
                .await
                .expect("answers");
            if code == 202 {
                break body["id"].as_str().expect("id").to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{down} back up, but: {code} {body}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        accepted.push((id, sent.clone()));
    }
    // Nothing half-written: only the accepted batches exist, whole.
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 3);
    verify_all(&sys, &accepted, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    sys.shutdown().await;
}

/// A batch left `archiving` with every image finished (what an earlier version, which built the
/// zip in a job, leaves behind when it stops before the job ran) is ended by the reconciler, and
/// its zip downloads whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_left_archiving_by_an_earlier_version_is_ended_by_the_reconciler() {
    let sys = System::start("archive-crash", options())
        .await
        .expect("system starts");
    let batches = submit_batches(&sys, 1, 100, false).await;
    let id = &batches[0].0;
    sys.wait_final(id, Duration::from_secs(60))
        .await
        .expect("final");
    sqlx::query(
        "UPDATE batches SET status = 'archiving', archive_bytes = NULL, finished_at = NULL,
                expires_at = NULL
         WHERE id::text = $1",
    )
    .bind(id)
    .execute(&sys.db)
    .await
    .expect("update");
    let started = Instant::now();
    verify_all(&sys, &batches, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    let (status, expires): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT status, expires_at FROM batches WHERE id::text = $1")
            .bind(id)
            .fetch_one(&sys.db)
            .await
            .expect("the batch");
    assert_eq!(status, "done");
    assert!(expires.is_some(), "its results are kept for the TTL");
    println!(
        "a batch left archiving was ended {:.1} s later by the reconciler",
        started.elapsed().as_secs_f64()
    );
    sys.shutdown().await;
}
