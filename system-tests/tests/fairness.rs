//! Fair dispatch against the real services (`jobs::dispatch`): a newcomer's one-image batch is
//! not stuck behind another owner's backlog, the window of jobs in Redis follows the live
//! workers' slots, and an owner of weight 2 gets about twice the share of an owner of weight 1.
//! The images are small PNGs made slow (half a second more each) by the worker's fault
//! injection, so that the order of the work is what is measured, not the machine's speed.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use system_tests::checks::{self, batch, files};
use system_tests::fair::{
    dispatched, finish_order, make_key, pending_of, submit_as, wait_final_as,
};
use system_tests::{Options, System};

/// Image slots of one worker in these tests.
const SLOTS: i64 = 2;

fn options(workers: &[&str]) -> Options {
    Options::default()
        .workers(workers)
        .env("WORKER_CONCURRENCY", SLOTS)
        .env("WORKER_FAULT_INJECTION", 1)
        .env("OWNER_MAX_BATCHES_PER_MINUTE", 1000)
}

/// Samples, every 20 ms until stopped, the most jobs in Redis (counted in Redis) and the most
/// pending images marked as pushed (counted in Postgres).
struct Sampler {
    stop: Arc<AtomicBool>,
    redis: Arc<AtomicI64>,
    postgres: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(sys: &Arc<System>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let redis = Arc::new(AtomicI64::new(0));
        let postgres = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn({
            let (sys, stop, redis, postgres) =
                (sys.clone(), stop.clone(), redis.clone(), postgres.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = checks::jobs_in_redis(&sys).await {
                        redis.fetch_max(n, Ordering::Relaxed);
                    }
                    if let Ok(n) = dispatched(&sys).await {
                        postgres.fetch_max(n, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            stop,
            redis,
            postgres,
            task,
        }
    }

    /// Resets the maxima (after a change of the live workers).
    fn reset(&self) {
        self.redis.store(0, Ordering::Relaxed);
        self.postgres.store(0, Ordering::Relaxed);
    }

    /// (most jobs in Redis, most pushed pending images) since the start or the last reset.
    fn most(&self) -> (i64, i64) {
        (
            self.redis.load(Ordering::Relaxed),
            self.postgres.load(Ordering::Relaxed),
        )
    }

    async fn stop(self) -> (i64, i64) {
        self.stop.store(true, Ordering::Relaxed);
        let most = (self.redis.clone(), self.postgres.clone());
        let _ = self.task.await;
        (
            most.0.load(Ordering::Relaxed),
            most.1.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newcomers_one_image_batches_finish_long_before_a_backlog_drains() {
    let sys = Arc::new(
        System::start("fair-newcomer", options(&["worker-a"]))
            .await
            .expect("system starts"),
    );
    let a = make_key(&sys, "A", 1.0).await.unwrap();
    let b = make_key(&sys, "B", 1.0).await.unwrap();
    let pipeline = checks::pipeline();
    let sampler = Sampler::start(&sys);

    // A: 3 batches of 20 slow images (half a second each on 2 slots: 15 s of work).
    let mut a_batches = Vec::new();
    for k in 0..3 {
        let sent = batch(&format!("a{k}"), 20, true);
        a_batches.push(
            submit_as(&sys, &a, &files(&sent), Some(&pipeline))
                .await
                .expect("A's batch accepted"),
        );
    }
    let a_total = pending_of(&sys, "A").await.unwrap();
    assert_eq!(a_total, 60);
    // Let A's backlog settle into the window.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // B: three one-image batches, one after another.
    let mut waits = Vec::new();
    for k in 0..3 {
        let sent = batch(&format!("b{k}"), 1, true);
        let started = Instant::now();
        let id = submit_as(&sys, &b, &files(&sent), Some(&pipeline))
            .await
            .expect("B's batch accepted");
        let status = wait_final_as(
            &sys,
            &b,
            &id,
            Duration::from_secs(60),
            Duration::from_millis(20),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}; logs in {}", sys.logs().display()));
        let took = started.elapsed();
        assert_eq!(status["status"], "done", "{status}");
        let a_left = pending_of(&sys, "A").await.unwrap();
        println!(
            "B's batch {k}: submit → done {:.2} s; A still has {a_left} of {a_total} images pending",
            took.as_secs_f64()
        );
        waits.push(took);
        // B was served ahead of A's backlog: most of A's images are still to be done. (Strictly
        // first in, first out, B would wait for all 60, some 15 s.)
        assert!(
            a_left * 2 > a_total,
            "B's batch {k} took {took:?} and finished only when A had {a_left} of {a_total} left"
        );
    }
    // About one image's time on busy slots (half a second and a little for the images ahead
    // in the window), far from A's 15 s.
    let slowest = waits.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(4),
        "a one-image batch of B took {slowest:?}"
    );

    for id in &a_batches {
        sys.wait_final(id, Duration::from_secs(120)).await.unwrap();
    }
    let (most_redis, most_pushed) = sampler.stop().await;
    println!(
        "window: at most {most_pushed} images pushed and pending (Postgres), {most_redis} jobs in Redis; 2 × {SLOTS} live slots"
    );
    // Postgres never lets more than twice the live slots into Redis; Redis itself may hold
    // one more job per slot for a moment (a finished job, not yet acknowledged, while the next
    // one is pushed).
    assert!(most_pushed <= 2 * SLOTS, "{most_pushed} pushed at once");
    assert!(most_pushed >= 2 * SLOTS, "the window was never full");
    assert!(
        most_redis <= 2 * SLOTS + SLOTS,
        "{most_redis} jobs in Redis at once"
    );
    checks::verify_counters(&sys).await.unwrap();
    checks::verify_redis_drained(&sys, Duration::from_secs(30))
        .await
        .unwrap();
    Arc::into_inner(sys).expect("sampler done").shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_of_weight_two_gets_twice_the_share() {
    let sys = Arc::new(
        System::start("fair-weight", options(&["worker-a"]))
            .await
            .expect("system starts"),
    );
    let heavy = make_key(&sys, "heavy", 2.0).await.unwrap();
    let light = make_key(&sys, "light", 1.0).await.unwrap();
    let pipeline = checks::pipeline();
    // Both backlogged: 40 slow images each (20 s of work in all on 2 slots).
    let mut ids = Vec::new();
    for (key, tag) in [(&light, "light"), (&heavy, "heavy")] {
        let sent = batch(tag, 40, true);
        ids.push(
            submit_as(&sys, key, &files(&sent), Some(&pipeline))
                .await
                .expect("accepted"),
        );
    }
    // The first few images went out before both batches were there; count the next 24 while
    // both still have plenty waiting.
    let (skip, n) = (6, 24);
    let started = Instant::now();
    loop {
        let finished = sys
            .count("SELECT count(*) FROM images WHERE finished_at IS NOT NULL")
            .await;
        if finished >= skip + n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {finished} images finished; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let order = finish_order(&sys, skip, n).await.unwrap();
    let heavy_share = order.iter().filter(|l| *l == "heavy").count();
    let light_share = order.iter().filter(|l| *l == "light").count();
    println!(
        "images {}–{} finished: heavy (weight 2) {heavy_share}, light (weight 1) {light_share}; order {order:?}",
        skip + 1,
        skip + n
    );
    // 16 : 8 expected; first in, first out would give 0 : 24 (light's batch came first) and an
    // unweighted round-robin 12 : 12.
    assert!(
        (14..=19).contains(&heavy_share),
        "heavy got {heavy_share} of {n}, light {light_share}"
    );
    let sys = Arc::into_inner(sys).expect("one owner");
    for id in &ids {
        sys.wait_final(id, Duration::from_secs(120)).await.unwrap();
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_window_follows_the_live_workers_slots() {
    let sys = System::start("fair-window", options(&["worker-a"]))
        .await
        .expect("system starts");
    let key = make_key(&sys, "A", 1.0).await.unwrap();
    let sent = batch("w", 60, true);
    let id = submit_as(&sys, &key, &files(&sent), Some(&checks::pipeline()))
        .await
        .expect("accepted");
    let mut sys = {
        let shared = Arc::new(sys);
        let sampler = Sampler::start(&shared);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (redis, pushed) = sampler.most();
        println!("one worker of {SLOTS} slots: at most {pushed} pushed, {redis} in Redis");
        assert_eq!(pushed, 2 * SLOTS, "the window of one worker");
        assert!(redis <= 3 * SLOTS, "{redis} jobs in Redis");
        sampler.stop().await;
        Arc::into_inner(shared).expect("sampler done")
    };
    // A second worker: twice the slots, twice the window (from its first heartbeat).
    sys.start_worker("worker-b").unwrap();
    let shared = Arc::new(sys);
    let sampler = Sampler::start(&shared);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sampler.reset();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (redis, pushed) = sampler.stop().await;
    println!("two workers of {SLOTS} slots: at most {pushed} pushed, {redis} in Redis");
    assert_eq!(pushed, 4 * SLOTS, "the window of two workers");
    assert!(redis <= 6 * SLOTS, "{redis} jobs in Redis");
    sys = Arc::into_inner(shared).expect("sampler done");
    sys.wait_final(&id, Duration::from_secs(120)).await.unwrap();
    checks::verify_counters(&sys).await.unwrap();
    sys.shutdown().await;
}
