//! Open batches against the real services: created empty, filled by many requests at once,
//! processed from the first file, closed; a file or a creation sent again changes nothing; an
//! idle batch is closed by the reconciler; a bad file fails alone.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use system_tests::checks::{self, verify_batch};
use system_tests::open::{close, open, open_ok, put, put_with};
use system_tests::{Options, System};

/// Polls the batch's summary until `until` holds (at most `limit`).
async fn wait_for(
    sys: &System,
    id: &str,
    limit: Duration,
    what: &str,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let (code, body) = sys.summary(id).await.expect("status");
        assert_eq!(code, 200, "{body}");
        if until(&body) {
            return body;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: not within {limit:?}: {body}; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_open_batch_takes_files_in_parallel_processes_them_at_once_and_zips_exactly_them() {
    let sys = System::start("open-batch", Options::default())
        .await
        .expect("system starts");
    let pipeline = checks::pipeline();

    // Created once: the replay with the same Idempotency-Key finds the same batch.
    let (code, first) = open(&sys, Some(&pipeline), Some("order-17"), None)
        .await
        .expect("open");
    assert_eq!(code, 201, "{first}");
    assert_eq!(first["status"], "open");
    let id = first["id"].as_str().expect("an id").to_owned();
    assert_eq!(first["files_url"], format!("/api/batches/{id}/files"));
    assert_eq!(first["close_url"], format!("/api/batches/{id}/close"));
    let (code, again) = open(&sys, Some(&pipeline), Some("order-17"), None)
        .await
        .expect("open again");
    assert_eq!(code, 200, "{again}");
    assert_eq!(again["id"], id.as_str(), "the replay names the same batch");
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 1);
    // Another key makes another batch.
    let (code, other) = open(&sys, Some(&pipeline), Some("order-18"), None)
        .await
        .expect("open another");
    assert_eq!(code, 201, "{other}");
    assert_ne!(other["id"], id.as_str());

    // The first file alone: it is processed while the batch is still open.
    let sent = checks::batch("open", 16, false);
    let (code, added) = put(&sys, &id, "f0", &sent[0].name, sent[0].bytes.clone())
        .await
        .expect("put");
    assert_eq!(code, 201, "{added}");
    assert_eq!(added["position"], 0);
    assert_eq!(added["file_id"], "f0");
    let status = wait_for(
        &sys,
        &id,
        Duration::from_secs(30),
        "the first image done",
        |b| b["done"].as_i64() >= Some(1),
    )
    .await;
    assert_eq!(status["status"], "open", "processing started before close");

    // The rest, four at a time.
    let answers: Vec<(u16, Value)> = futures::stream::iter(sent.iter().enumerate().skip(1))
        .map(|(i, s)| {
            let sys = &sys;
            let id = &id;
            async move {
                put(sys, id, &format!("f{i}"), &s.name, s.bytes.clone())
                    .await
                    .expect("put")
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    for (code, body) in &answers {
        assert_eq!(*code, 201, "{body}");
        assert_eq!(body["status"], "pending", "{body}");
    }
    // A file sent again is the image made the first time.
    let (code, twice) = put(&sys, &id, "f3", &sent[3].name, sent[3].bytes.clone())
        .await
        .expect("put again");
    assert_eq!(code, 200, "{twice}");
    assert_eq!(twice["name"], sent[3].name.as_str());
    assert_eq!(
        sys.count("SELECT count(*) FROM images").await,
        sent.len() as i64,
        "one image per file id"
    );

    // Paged list of images: in order, all of them, each once.
    let (code, page) = sys
        .get_json(&format!("/api/batches/{id}/images?limit=5"))
        .await
        .expect("page");
    assert_eq!(code, 200, "{page}");
    let mut positions: Vec<i64> = Vec::new();
    let mut next = Some(format!("/api/batches/{id}/images?limit=5"));
    while let Some(url) = next {
        let (code, page) = sys.get_json(&url).await.expect("page");
        assert_eq!(code, 200, "{page}");
        for image in page["images"].as_array().expect("images") {
            positions.push(image["position"].as_i64().expect("a position"));
        }
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(positions, (0..sent.len() as i64).collect::<Vec<_>>());

    let (code, closed) = close(&sys, &id).await.expect("close");
    assert_eq!(code, 200, "{closed}");
    assert!(
        matches!(
            closed["status"].as_str(),
            Some("queued" | "processing" | "done")
        ),
        "{closed}"
    );
    let (code, again) = close(&sys, &id).await.expect("close again");
    assert_eq!(code, 200, "closing twice is harmless: {again}");
    let (code, late) = put(&sys, &id, "late", "late.png", sent[0].bytes.clone())
        .await
        .expect("put after close");
    assert_eq!(code, 409, "{late}");
    assert_eq!(late["error"]["code"], "finished");
    // …but a retry of a file that made it is still answered with its image.
    let (code, retry) = put(&sys, &id, "f1", &sent[1].name, sent[1].bytes.clone())
        .await
        .expect("retry after close");
    assert_eq!(code, 200, "{retry}");

    let status = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(status["status"], "done", "{status}");
    verify_batch(&sys, &id, &sent)
        .await
        .expect("the zip holds exactly the files");
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM batch_events WHERE batch_id = $1::uuid AND kind LIKE 'batch.%'
         ORDER BY id",
    )
    .bind(&id)
    .fetch_all(&sys.db)
    .await
    .expect("events");
    // verify_batch downloaded the zip.
    assert_eq!(
        events,
        ["batch.uploaded", "batch.archived", "batch.downloaded"],
        "{events:?}"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_file_fails_alone_and_closing_a_finished_batch_ends_it_at_once() {
    let sys = System::start("open-bad-file", Options::default())
        .await
        .expect("system starts");
    let id = open_ok(&sys, Some(&checks::pipeline()))
        .await
        .expect("open");
    let sent = checks::batch("good", 3, false);
    for (i, s) in sent.iter().enumerate() {
        let (code, body) = put(&sys, &id, &format!("g{i}"), &s.name, s.bytes.clone())
            .await
            .expect("put");
        assert_eq!(code, 201, "{body}");
    }
    let (code, bad) = put(
        &sys,
        &id,
        "bad",
        "notes.jpg",
        b"not an image at all".repeat(10),
    )
    .await
    .expect("put a bad file");
    assert_eq!(code, 201, "{bad}");
    assert_eq!(bad["status"], "failed", "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not an image"),
        "{bad}"
    );
    let (code, empty) = put(&sys, &id, "empty", "empty.png", Vec::new())
        .await
        .expect("put an empty file");
    assert_eq!(code, 201, "{empty}");
    assert_eq!(empty["status"], "failed", "{empty}");
    let (code, body) = put(&sys, &id, "bad.id", "x.png", sent[0].bytes.clone())
        .await
        .expect("put with a bad id");
    assert_eq!(code, 400, "{body}");

    // Everything is finished while the batch is still open: it waits for its close…
    let status = wait_for(
        &sys,
        &id,
        Duration::from_secs(30),
        "every image finished",
        |b| b["done"].as_i64().unwrap_or(0) + b["failed"].as_i64().unwrap_or(0) == 5,
    )
    .await;
    assert_eq!(status["status"], "open", "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sys.summary(&id).await.expect("status").1["status"], "open");
    // …and ends with it.
    let (code, closed) = close(&sys, &id).await.expect("close");
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["status"], "done", "done at once: {closed}");
    assert_eq!(closed["done"], 3);
    assert_eq!(closed["failed"], 2);

    let (code, zip) = sys.download(&id).await.expect("download");
    assert_eq!(code, 200);
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
    let mut names: Vec<String> = (0..zip.len())
        .map(|i| {
            zip.by_index(i)
                .expect("entry")
                .name()
                .expect("name")
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "FAILED-FILES.txt",
            "good-000.png",
            "good-001.png",
            "good-002.png"
        ]
    );

    // Closing an empty batch fails it with its reason.
    let empty = open_ok(&sys, None).await.expect("open");
    let (code, closed) = close(&sys, &empty).await.expect("close");
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["status"], "failed", "{closed}");
    assert!(
        closed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("without any file"),
        "{closed}"
    );
    // Unknown batches are 404.
    let (code, body) = close(&sys, "00000000-0000-4000-8000-000000000000")
        .await
        .expect("close");
    assert_eq!(code, 404, "{body}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_open_batch_is_closed_by_the_reconciler_and_an_empty_one_failed() {
    let sys = System::start(
        "open-idle",
        Options::default()
            .env("OPEN_BATCH_IDLE_SECONDS", 2)
            .env("RECONCILE_SCHEDULE", "* * * * * *")
            .env("OWNER_MAX_BATCHES_PER_MINUTE", 3),
    )
    .await
    .expect("system starts");
    let with_files = open_ok(&sys, Some(&checks::pipeline()))
        .await
        .expect("open");
    let sent = checks::batch("idle", 2, false);
    for (i, s) in sent.iter().enumerate() {
        let (code, body) = put(
            &sys,
            &with_files,
            &format!("i{i}"),
            &s.name,
            s.bytes.clone(),
        )
        .await
        .expect("put");
        assert_eq!(code, 201, "{body}");
    }
    let empty = open_ok(&sys, None).await.expect("open");
    // Batches per minute count opened batches too.
    let third = open_ok(&sys, None).await.expect("the third");
    let res = sys
        .http
        .post(sys.url("/api/batches/open"))
        .json(&json!({}))
        .send()
        .await
        .expect("open a fourth");
    assert_eq!(res.status().as_u16(), 429);
    let retry_after: u32 = res.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 3);

    let done = sys
        .wait_final(&with_files, Duration::from_secs(30))
        .await
        .expect("closed by the reconciler and finished");
    assert_eq!(done["status"], "done", "{done}");
    verify_batch(&sys, &with_files, &sent)
        .await
        .expect("its zip");
    for id in [&empty, &third] {
        let failed = sys
            .wait_final(id, Duration::from_secs(30))
            .await
            .expect("failed by the reconciler");
        assert_eq!(failed["status"], "failed", "{failed}");
        assert!(
            failed["error"]
                .as_str()
                .unwrap_or_default()
                .contains("no file was added"),
            "{failed}"
        );
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_its_key_adds_to_a_keyed_batch_and_limits_hold_per_file() {
    let sys = System::start(
        "open-keys",
        // No worker: every image added stays queued.
        Options::default()
            .workers(&[])
            .env("ANONYMOUS", "off")
            .env("MAX_FILES_PER_BATCH", 3)
            .env("OWNER_MAX_QUEUED_IMAGES", 1000),
    )
    .await
    .expect("system starts");
    let new_key = |label: &str, queued: Option<i32>| jobs::owners::NewKey {
        label: label.into(),
        scopes: vec![jobs::owners::Scope::Submit, jobs::owners::Scope::Read],
        weight: 1.0,
        limits: jobs::owners::OwnerLimits {
            max_queued_images: queued,
            ..Default::default()
        },
    };
    let (_, mine) = jobs::owners::create_key(&sys.db, &new_key("mine", None))
        .await
        .expect("a key");
    let (_, theirs) = jobs::owners::create_key(&sys.db, &new_key("theirs", Some(1)))
        .await
        .expect("a key");
    let mine = jobs::owners::reveal(&mine).to_owned();
    let theirs = jobs::owners::reveal(&theirs).to_owned();

    let (code, body) = open(&sys, None, None, None).await.expect("open");
    assert_eq!(code, 401, "anonymous is off: {body}");
    let (code, body) = open(&sys, None, None, Some(&mine)).await.expect("open");
    assert_eq!(code, 201, "{body}");
    let id = body["id"].as_str().expect("an id").to_owned();
    // The same Idempotency-Key from another owner is another batch.
    let (_, a) = open(&sys, None, Some("same"), Some(&mine))
        .await
        .expect("open");
    let (_, b) = open(&sys, None, Some("same"), Some(&theirs))
        .await
        .expect("open");
    assert_ne!(a["id"], b["id"]);

    let png = checks::batch("k", 4, false);
    let (code, body) = put_with(&sys, &id, "a", "a.png", png[0].bytes.clone(), None)
        .await
        .expect("put");
    assert_eq!(code, 401, "{body}");
    let (code, body) = put_with(&sys, &id, "a", "a.png", png[0].bytes.clone(), Some(&theirs))
        .await
        .expect("put");
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    for (i, s) in png.iter().take(3).enumerate() {
        let (code, body) = put_with(
            &sys,
            &id,
            &format!("k{i}"),
            &s.name,
            s.bytes.clone(),
            Some(&mine),
        )
        .await
        .expect("put");
        assert_eq!(code, 201, "{body}");
    }
    let (code, body) = put_with(
        &sys,
        &id,
        "k3",
        &png[3].name,
        png[3].bytes.clone(),
        Some(&mine),
    )
    .await
    .expect("put");
    assert_eq!(code, 413, "MAX_FILES_PER_BATCH: {body}");

    // A key allowed one queued image: the second file waits for the first.
    let their_batch = b["id"].as_str().expect("an id");
    let (code, body) = put_with(
        &sys,
        their_batch,
        "t0",
        "t0.png",
        png[0].bytes.clone(),
        Some(&theirs),
    )
    .await
    .expect("put");
    assert_eq!(code, 201, "{body}");
    let (code, body) = put_with(
        &sys,
        their_batch,
        "t1",
        "t1.png",
        png[1].bytes.clone(),
        Some(&theirs),
    )
    .await
    .expect("put");
    assert_eq!(code, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        sys.count("SELECT count(*) FROM images").await,
        4,
        "nothing recorded of the refused files"
    );
    // No object is left of the refused files either: the four originals only.
    let originals = sys
        .objects()
        .await
        .expect("objects")
        .into_iter()
        .filter(|k| k.contains("/in/"))
        .count();
    assert_eq!(originals, 4, "objects of refused files are deleted");
    sys.shutdown().await;
}
