//! Postgres restarted mid-batch (a fast shutdown, which cuts every connection, then a start):
//! every batch still finishes, every image exactly once. In a test binary of its own, because it
//! restarts the server every test shares.

use std::time::{Duration, Instant};

use system_tests::checks::{self, batch, files, verify_all};
use system_tests::{restart_postgres, Options, System};

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_mid_batch_loses_nothing() {
    let sys = System::start(
        "postgres-restart",
        Options::default()
            .workers(&["worker-a", "worker-b"])
            .env("WORKER_FAULT_INJECTION", "1")
            .env("WORKER_CONCURRENCY", 2)
            .env("RECONCILE_SCHEDULE", "*/2 * * * * *")
            .env("RECONCILE_AFTER_SECONDS", 30),
    )
    .await
    .expect("system starts");
    let mut batches = Vec::new();
    for k in 0..2 {
        let sent = batch(&format!("b{k}"), 60, true);
        let id = sys
            .submit_ok(&files(&sent), Some(&checks::pipeline()))
            .await
            .expect("accepted");
        batches.push((id, sent));
    }
    let started = Instant::now();
    while sys
        .count("SELECT count(*) FROM images WHERE status = 'done'")
        .await
        < 20
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done_before = sys
        .count("SELECT count(*) FROM images WHERE status = 'done'")
        .await;
    assert!(done_before < 120, "the batches finished before the restart");
    let down = restart_postgres().expect("Postgres restarts");
    let restarted = Instant::now();
    verify_all(&sys, &batches, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
    let failed = sys
        .count("SELECT count(*) FROM images WHERE status = 'failed'")
        .await;
    assert_eq!(failed, 0);
    let most = sys
        .count("SELECT coalesce(max(attempts), 0)::bigint FROM images")
        .await;
    println!(
        "Postgres restarted mid-batch (down {:.1} s, {} of 120 images left): all done {:.1} s later; most attempts at one image: {most}",
        down.as_secs_f64(),
        120 - done_before,
        restarted.elapsed().as_secs_f64()
    );
    sys.shutdown().await;
}
