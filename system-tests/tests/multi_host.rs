//! Workers on hosts of their own: network namespaces linked by veth pairs stand for machines
//! ([`system_tests::hosts`]). Postgres, Redis, Garage and `web` run in one; a worker runs in
//! each of two others and reaches the services only by address. Needs root: without it the test
//! says so in one line and ends.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use system_tests::checks;
use system_tests::hosts::{self, Hosts};
use system_tests::System;

/// `GET path` of the worker health endpoint on `host`, from inside that host (curl): the status
/// and the body, or `None` when it does not answer within 3 s.
fn worker_health(hosts: &Hosts, host: usize, path: &str) -> Option<(u16, String)> {
    let out = hosts
        .command(host, "curl")
        .args(["-s", "--max-time", "3", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:8081{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((
        code.trim().parse().ok().filter(|c| *c != 0)?,
        body.to_owned(),
    ))
}

/// How many images of `batch` each worker processed.
async fn processed_by(sys: &System, batch: &str) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(processed_by, ''), count(*) FROM images
         WHERE batch_id = $1::uuid AND status = 'done' GROUP BY 1",
    )
    .bind(batch)
    .fetch_all(&sys.db)
    .await
    .expect("the count");
    rows.into_iter().collect()
}

/// Waits (at most `limit`) until `what` holds, polling every 100 ms.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A batch of 64 images is shared by the workers of both hosts; host 1 is cut off (its link
/// goes down) while it holds images, and the batch still finishes whole, every image exactly
/// once, host 2 taking over what host 1 held; once the link is back, host 1's worker (the same
/// process) takes work again.
#[tokio::test(flavor = "multi_thread")]
async fn workers_on_two_hosts_share_a_batch_and_survive_one_being_cut_off() {
    if let Some(why) = hosts::unavailable() {
        eprintln!(
            "SKIPPED workers_on_two_hosts_share_a_batch_and_survive_one_being_cut_off: {why}"
        );
        return;
    }
    let hosts = Hosts::start(2).await.expect("namespaces and services");
    let mut sys = System::hosted(
        "multi-host",
        hosts.services(),
        hosts.wrapper(0),
        hosts::SERVICES,
        &[],
    )
    .await
    .expect("web starts on the services' host");
    println!(
        "web on {}, services' files in {}",
        sys.base,
        hosts.dir().display()
    );
    let worker_env = [
        ("WORKER_FAULT_INJECTION", "1".to_owned()),
        ("WORKER_CONCURRENCY", "2".to_owned()),
        ("HEALTH_PORT", "8081".to_owned()),
    ];
    for host in [1, 2] {
        sys.start_worker_via(
            &format!("host{host}-worker"),
            &hosts.wrapper(host),
            &worker_env,
        )
        .expect("worker starts");
    }
    // Each worker only knows the services' address, and that is the only way out of its host.
    assert!(sys.env()["DATABASE_URL"].contains(hosts::SERVICES));
    let h1_pid = sys.worker_pids()[0];

    // Every image takes half a second more (`wm-fault:slow`), so that work is in hand when the
    // link goes down.
    let sent = checks::batch("spread", 64, true);
    let id = sys
        .submit_ok(&checks::files(&sent), Some(&checks::pipeline()))
        .await
        .expect("accepted");

    // Host 1 has finished some images and holds others.
    wait_until(Duration::from_secs(60), "host 1 at work", || async {
        let done = processed_by(&sys, &id).await;
        let holds = worker_health(&hosts, 1, "/healthz")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["images_in_hand"].as_u64())
            .unwrap_or(0);
        done.get("host1-worker").copied().unwrap_or(0) >= 2 && holds >= 1
    })
    .await;
    hosts.set_link(1, false).expect("link down");
    let cut = Instant::now();
    println!(
        "host 1 cut off; done so far: {:?}",
        processed_by(&sys, &id).await
    );

    let batch = sys
        .wait_final_polling(
            &id,
            Duration::from_secs(180),
            Duration::from_millis(200),
            false,
        )
        .await
        .expect("the batch finishes without host 1");
    println!(
        "finished {:.1?} after the cut: {:?}",
        cut.elapsed(),
        processed_by(&sys, &id).await
    );
    assert_eq!(batch["status"], "done", "{batch}");
    // While cut off, host 1's worker says what it cannot reach.
    let (code, body) = worker_health(&hosts, 1, "/readyz").expect("its health endpoint answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unavailable"), "{body}");

    hosts.set_link(1, true).expect("link up");
    let restored = Instant::now();
    wait_until(Duration::from_secs(120), "host 1 ready again", || async {
        matches!(worker_health(&hosts, 1, "/readyz"), Some((200, _)))
    })
    .await;
    println!(
        "host 1 ready {:.1?} after its link came back",
        restored.elapsed()
    );
    let again = checks::batch("again", 24, true);
    let id2 = sys
        .submit_ok(&checks::files(&again), Some(&checks::pipeline()))
        .await
        .expect("accepted");
    sys.wait_final(&id2, Duration::from_secs(120))
        .await
        .expect("the second batch finishes");
    let first = processed_by(&sys, &id).await;
    let second = processed_by(&sys, &id2).await;
    println!("first batch: {first:?}; after the link came back: {second:?}");

    checks::verify_all(
        &sys,
        &[(id.clone(), sent), (id2.clone(), again)],
        Duration::from_secs(60),
    )
    .await
    .expect("both batches whole, every image once, nothing left over");
    for worker in ["host1-worker", "host2-worker"] {
        assert!(
            first.get(worker).is_some_and(|n| *n > 0),
            "{worker}: {first:?}"
        );
    }
    assert_eq!(first.values().sum::<i64>(), 64, "{first:?}");
    assert!(
        second.get("host1-worker").is_some_and(|n| *n > 0),
        "host 1 took no work after its link came back: {second:?}"
    );
    assert!(
        sys.workers_alive().iter().all(|(_, alive)| *alive),
        "a worker died"
    );
    assert_eq!(
        sys.worker_pids()[0],
        h1_pid,
        "host 1's worker was restarted"
    );
    drop(sys);
    drop(hosts);
}
