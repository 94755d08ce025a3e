//! Cancelling a batch through the real binaries (`POST /api/batches/{id}/cancel`): a batch of
//! slow images cancelled in the middle stops (no image starts or is counted afterwards, the one
//! being processed is discarded), its objects are gone, the event log and the webhook say
//! `cancelled`, a second cancel changes nothing, a finished batch answers 409, and only the
//! batch's key (or an admin key) may cancel a key's batch while an anonymous batch's id is its
//! capability.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use jobs::owners::Scope;
use serde_json::Value;
use system_tests::checks::{batch, pipeline, with_marker};
use system_tests::images::flat_jpeg;
use system_tests::{Options, System};

/// Each image takes this long in the worker (its `wm-fault:sleep=` marker).
const SLOW_MS: u64 = 700;

fn slow_options() -> Options {
    Options::default()
        .env("WORKER_FAULT_INJECTION", "1")
        .env("WORKER_CONCURRENCY", "1")
        .env("WEBHOOK_SECRET", "test-webhook-secret-for-cancel")
        .env("WEBHOOK_ALLOW_PRIVATE", "1")
        .env("WEBHOOK_BACKOFF_SECONDS", "1")
}

/// `n` small PNGs that each take [`SLOW_MS`] to process.
fn slow_files(tag: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    batch(tag, n, false)
        .into_iter()
        .map(|s| {
            let marker = format!("wm-fault:sleep={SLOW_MS}");
            (s.name, with_marker(&s.bytes, marker.as_bytes()))
        })
        .collect()
}

/// `POST /api/batches` with `files`, an optional bearer key and an optional `callback_url`.
async fn submit(
    sys: &System,
    files: &[(String, Vec<u8>)],
    key: Option<&str>,
    callback: Option<&str>,
) -> String {
    let mut form = reqwest::multipart::Form::new().text("pipeline", pipeline().to_string());
    if let Some(url) = callback {
        form = form.text("callback_url", url.to_owned());
    }
    for (name, bytes) in files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.clone()),
        );
    }
    let mut request = sys.http.post(sys.url("/api/batches")).multipart(form);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let res = request.send().await.expect("the upload is answered");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().expect("an id").to_owned()
}

/// `POST /api/batches/{id}/cancel`, with an optional bearer key: the status and the JSON.
async fn cancel(sys: &System, id: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = sys.http.post(sys.url(&format!("/api/batches/{id}/cancel")));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let res = request.send().await.expect("the cancel is answered");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON"))
}

/// Waits until `sql` (one number, `$1` the batch) reaches `at_least`.
async fn wait_count(sys: &System, sql: &str, id: uuid::Uuid, at_least: i64, what: &str) {
    let started = Instant::now();
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .bind(id)
            .fetch_one(&sys.db)
            .await
            .expect("the count runs");
        if n >= at_least {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what}: {n} < {at_least} after 30 s; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(sys: &System, sql: &str, id: uuid::Uuid) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .fetch_one(&sys.db)
        .await
        .expect("the count runs")
}

/// The batch's objects in the bucket.
async fn objects_of(sys: &System, id: &str) -> Vec<String> {
    sys.storage
        .list(&format!("batches/{id}/"))
        .await
        .expect("the bucket lists")
}

/// A webhook receiver on 127.0.0.1 that records each delivery's event header and body.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
    server: tokio::task::JoinHandle<()>,
}

type Got = Arc<Mutex<Vec<(String, Value)>>>;

async fn receive(State(got): State<Got>, headers: HeaderMap, body: Bytes) -> &'static str {
    let event = headers
        .get("x-watermark-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    got.lock().unwrap().push((event, body));
    "ok"
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got: Got = Arc::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(got.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serves");
        });
        Self { url, got, server }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancelled_midway_stops_and_its_files_go() {
    let sys = System::start("cancel", slow_options())
        .await
        .expect("the system starts");
    let hook = Receiver::start().await;
    let sent = slow_files("slow", 12);
    let id = submit(&sys, &sent, None, Some(&hook.url)).await;
    let uuid: uuid::Uuid = id.parse().expect("a uuid");

    // Midway: two images done, the third being processed.
    wait_count(
        &sys,
        "SELECT count(*) FROM images WHERE batch_id = $1 AND status = 'done'",
        uuid,
        2,
        "images done before the cancel",
    )
    .await;
    wait_count(
        &sys,
        "SELECT count(*) FROM batch_events WHERE batch_id = $1 AND kind = 'image.started'",
        uuid,
        3,
        "a third image started",
    )
    .await;
    let (code, body) = cancel(&sys, &id, None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    assert_eq!(body["error"], "cancelled by its owner", "{body}");
    assert_eq!(body["download_url"], Value::Null, "{body}");
    let done_at_cancel = body["done"].as_i64().expect("done");
    assert!((2..12).contains(&done_at_cancel), "{body}");
    let images = body["images"].as_array().expect("images");
    let cancelled = images.iter().filter(|i| i["status"] == "cancelled").count();
    assert_eq!(
        cancelled as i64 + done_at_cancel + body["failed"].as_i64().unwrap_or(0),
        12,
        "every image not finished is cancelled: {body}"
    );

    // The files go at once.
    let started = Instant::now();
    while !objects_of(&sys, &id).await.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "objects left 5 s after the cancel: {:?}",
            objects_of(&sys, &id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Long enough for several more images, had they gone on (and for the one being processed
    // to end and be discarded).
    tokio::time::sleep(Duration::from_millis(SLOW_MS * 4)).await;
    let (code, after) = sys.status(&id).await.expect("the status");
    assert_eq!(code, 200);
    assert_eq!(after["status"], "cancelled", "{after}");
    assert_eq!(
        after["done"], done_at_cancel,
        "no image counted after the cancel: {after}"
    );
    assert_eq!(
        count(
            &sys,
            "SELECT count(*) FROM images WHERE batch_id = $1 AND status = 'pending'",
            uuid
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &sys,
            "SELECT count(*) FROM batch_events e JOIN batches b ON b.id = e.batch_id
             WHERE e.batch_id = $1 AND e.kind IN ('image.started', 'image.done', 'image.failed')
               AND e.at > b.cancelled_at",
            uuid
        )
        .await,
        0,
        "no image started or finished after the cancel"
    );
    assert!(
        objects_of(&sys, &id).await.is_empty(),
        "the result of the image being processed was discarded: {:?}",
        objects_of(&sys, &id).await
    );

    // The event log and the webhook say so.
    let (_, log) = sys
        .get_json(&format!("/api/batches/{id}/events"))
        .await
        .expect("the events");
    let kinds: Vec<&str> = log["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "batch.cancelled").count(),
        1,
        "{kinds:?}"
    );
    let started = Instant::now();
    loop {
        let got = hook.got.lock().unwrap().clone();
        if let Some((event, body)) = got.first() {
            assert_eq!(event, "batch.cancelled");
            assert_eq!(body["id"], id.as_str());
            assert_eq!(body["status"], "cancelled", "{body}");
            assert_eq!(got.len(), 1, "one delivery: {got:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no webhook delivery within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cancelling again is harmless: the same answer, no second event.
    let (code, again) = cancel(&sys, &id, None).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["done"], done_at_cancel);
    assert_eq!(
        count(
            &sys,
            "SELECT count(*) FROM batch_events WHERE batch_id = $1 AND kind = 'batch.cancelled'",
            uuid
        )
        .await,
        1
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(hook.got.lock().unwrap().len(), 1, "still one delivery");

    // The purge deletes what a late worker might leave, and notes it; the batch stays cancelled.
    sys.storage
        .put(
            &format!("batches/{id}/results/late.png"),
            Bytes::from_static(b"late"),
            "image/png",
        )
        .await
        .expect("a late object");
    let report = jobs::maintenance::purge(&sys.db, &sys.storage)
        .await
        .expect("the purge runs");
    assert!(report.batches >= 1, "{report:?}");
    assert!(objects_of(&sys, &id).await.is_empty());
    let (status, purged): (String, bool) =
        sqlx::query_as("SELECT status, expired_at IS NOT NULL FROM batches WHERE id = $1")
            .bind(uuid)
            .fetch_one(&sys.db)
            .await
            .expect("the batch");
    assert_eq!((status.as_str(), purged), ("cancelled", true));

    // A finished batch cannot be cancelled; an unknown one is not found.
    let quick = submit(
        &sys,
        &[("quick.jpg".into(), flat_jpeg(64, 48, [10, 120, 200]))],
        None,
        None,
    )
    .await;
    let done = sys
        .wait_final(&quick, Duration::from_secs(30))
        .await
        .expect("the quick batch ends");
    assert_eq!(done["status"], "done");
    let (code, body) = cancel(&sys, &quick, None).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "finished", "{body}");
    assert_eq!(
        sys.status(&quick).await.expect("status").1["status"],
        "done"
    );
    let (code, body) = cancel(&sys, &uuid::Uuid::new_v4().to_string(), None).await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_batch_s_key_or_an_admin_may_cancel_it() {
    let sys = System::start("cancel-owner", slow_options())
        .await
        .expect("the system starts");
    let key = |label: &str, scopes: Vec<Scope>| jobs::owners::NewKey {
        label: label.into(),
        scopes,
        weight: 1.0,
        limits: Default::default(),
    };
    let mut keys = Vec::new();
    for (label, scopes) in [
        ("alice", vec![Scope::Submit, Scope::Read]),
        ("bob", vec![Scope::Submit, Scope::Read]),
        ("operator", vec![Scope::Admin]),
        ("reader", vec![Scope::Read]),
    ] {
        let (_, secret) = jobs::owners::create_key(&sys.db, &key(label, scopes))
            .await
            .expect("a key");
        keys.push(jobs::owners::reveal(&secret).to_owned());
    }
    let [alice, bob, operator, reader] = [&keys[0], &keys[1], &keys[2], &keys[3]];

    let first = submit(&sys, &slow_files("a1", 6), Some(alice), None).await;
    for (who, key, code) in [
        ("another key", Some(bob.as_str()), 403),
        ("no key", None, 403),
        ("a key without `submit`", Some(reader.as_str()), 403),
    ] {
        let (status, body) = cancel(&sys, &first, key).await;
        assert_eq!(status, code, "{who}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{who}: {body}");
        let (_, now) = sys.summary(&first).await.expect("status");
        assert_ne!(now["status"], "cancelled", "{who} did not cancel it");
    }
    let (status, body) = cancel(&sys, &first, Some("wm_notakey_0123")).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = cancel(&sys, &first, Some(alice)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");

    // An admin key may cancel any batch.
    let second = submit(&sys, &slow_files("a2", 6), Some(alice), None).await;
    let (status, body) = cancel(&sys, &second, Some(operator)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");

    // An anonymous batch: its id is the capability.
    let anonymous = submit(&sys, &slow_files("anon", 6), None, None).await;
    let res = sys
        .http
        .post(sys.url(&format!("/api/batches/{anonymous}/cancel")))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("answered");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");

    // A cancel carries no body.
    let res = sys
        .http
        .post(sys.url(&format!("/api/batches/{anonymous}/cancel")))
        .body(vec![b'x'; 64 * 1024])
        .send()
        .await
        .expect("answered");
    assert_eq!(res.status().as_u16(), 413);
    sys.shutdown().await;
}
