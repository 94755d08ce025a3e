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
/// Jobs allowed in Redis per live slot: the window is `PER_SLOT × SLOTS` per worker.
const PER_SLOT: i64 = jobs::dispatch::JOBS_PER_SLOT as i64;

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
        // B's image went to the front of the queue: of A's images, only those the worker had
        // already fetched (one fetch takes up to a slot's worth) started between B's submission
        // and B's image. Behind the window it would be the whole window's waiting jobs.
        let ahead: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM images a JOIN batches ab ON ab.id = a.batch_id,
                    images bi JOIN batches bb ON bb.id = bi.batch_id
             WHERE bb.id = $1::uuid AND ab.id <> bb.id
               AND a.started_at > bb.created_at AND a.started_at < bi.started_at",
        )
        .bind(&id)
        .fetch_one(&sys.db)
        .await
        .unwrap();
        assert!(
            ahead <= SLOTS,
            "{ahead} of A's images started between B's batch {k} and its image; logs in {}",
            sys.logs().display()
        );
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
    let window = PER_SLOT * SLOTS;

    for id in &a_batches {
        sys.wait_final(id, Duration::from_secs(120)).await.unwrap();
    }
    let (most_redis, most_pushed) = sampler.stop().await;
    println!(
        "window: at most {most_pushed} images pushed and pending (Postgres), {most_redis} jobs \
         in Redis; {PER_SLOT} × {SLOTS} live slots"
    );
    // Postgres never lets more than the window into Redis, but for one job of B (an owner
    // with nothing there goes first, beyond a full window); Redis itself may hold one more job
    // per slot for a moment (a finished job, not yet acknowledged, while the next one is
    // pushed).
    assert!(most_pushed <= window + 1, "{most_pushed} pushed at once");
    assert!(most_pushed >= window, "the window was never full");
    assert!(
        most_redis <= window + 1 + SLOTS,
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
    // The first window's worth went out before both batches were there; count the next 24
    // while both still have plenty waiting.
    let (skip, n) = (PER_SLOT * SLOTS + 2, 24);
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
        assert_eq!(pushed, PER_SLOT * SLOTS, "the window of one worker");
        assert!(redis <= (PER_SLOT + 1) * SLOTS, "{redis} jobs in Redis");
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
    assert_eq!(pushed, 2 * PER_SLOT * SLOTS, "the window of two workers");
    assert!(redis <= 2 * (PER_SLOT + 1) * SLOTS, "{redis} jobs in Redis");
    sys = Arc::into_inner(shared).expect("sampler done");
    sys.wait_final(&id, Duration::from_secs(120)).await.unwrap();
    checks::verify_counters(&sys).await.unwrap();
    sys.shutdown().await;
}

/// Jobs pushed to the front of the queue (a newcomer's turn) come before the jobs waiting there,
/// in their order, and the others keep theirs.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_pushed_to_the_front_come_first() {
    let url = std::env::var("REDIS_URL").expect("REDIS_URL (scripts/test sets it)");
    let conn = jobs::connect_redis(&url).await.expect("Redis");
    let prefix = format!("front-{}", uuid::Uuid::new_v4().simple());
    let queues = jobs::queue::Queues::with_connection(conn.clone(), &prefix, 1);
    let batch = jobs::BatchId::new();
    let ids: Vec<jobs::ImageId> = (0..5).map(|_| jobs::ImageId::new()).collect();
    let pair = |i: usize| (batch, ids[i]);
    queues
        .enqueue_images(&[pair(0), pair(1), pair(2)])
        .await
        .unwrap();
    queues
        .enqueue_images_first(&[pair(3), pair(4)])
        .await
        .unwrap();
    // The jobs in the order the workers take them, as image ids: a fetch appends the due
    // scheduled jobs (apalis-redis keeps pushed jobs there), by time, to the list of waiting
    // jobs, and takes from the list's head.
    let mut c = conn.clone();
    let queue = jobs::queue::image_queue(&prefix);
    let mut waiting: Vec<String> = Vec::new();
    for (read, key) in [("LRANGE", "active"), ("ZRANGE", "scheduled")] {
        let ids: Vec<String> = redis::cmd(read)
            .arg(format!("{queue}:{key}"))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .unwrap();
        waiting.extend(ids);
    }
    let mut order = Vec::new();
    for id in &waiting {
        let data: Vec<u8> = redis::cmd("HGET")
            .arg(format!("{queue}:data"))
            .arg(id)
            .query_async(&mut c)
            .await
            .unwrap();
        let job: jobs::queue::ProcessImage = serde_json::from_slice(&data)
            .unwrap_or_else(|e| panic!("job {id}: {e}: {}", String::from_utf8_lossy(&data)));
        order.push(
            ids.iter()
                .position(|i| *i == job.image)
                .expect("one of ours"),
        );
    }
    assert_eq!(order[..2], [3, 4], "{order:?}");
    let mut rest = order[2..].to_vec();
    rest.sort();
    assert_eq!(rest, [0, 1, 2], "{order:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut c)
        .await
        .unwrap();
}
