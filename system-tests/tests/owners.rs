//! Owners, keys and limits against the real binaries: `web keys create|list|revoke`, bearer keys
//! (scheme in any case, unknown and revoked keys, scopes), `ANONYMOUS=off`, each per-owner limit
//! at exactly its value (429 `rate_limited` with the right `Retry-After`, and nothing of the
//! refused request left behind, not a row nor an object), `GET /api/usage`, anonymous owners by
//! `X-Forwarded-For` only from `TRUSTED_PROXIES`, the keys on the monitor, and no key in a log.

use std::process::Output;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use serde_json::{json, Value};
use system_tests::images::{flat_png, png_of_len};
use system_tests::{Options, System};

const TOKEN: &str = "owners-monitor-token-0123456789";

fn small_png(i: u32) -> Vec<u8> {
    flat_png(4 + i % 16, 4, [i as u8, 7, 9, 255])
}

/// `web keys …` with the system's settings: its exit code, stdout and stderr.
fn keys(sys: &System, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = sys
        .command("web")
        .arg("keys")
        .args(args)
        .output()
        .expect("web keys runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// Makes a key with `args` besides its label: the key and its prefix.
fn make_key(sys: &System, label: &str, args: &[&str]) -> (String, String) {
    let mut all = vec!["create", "--label", label];
    all.extend_from_slice(args);
    let (code, out, err) = keys(sys, &all);
    assert_eq!(code, 0, "web keys create: {out}\n{err}");
    let key = out.trim().to_owned();
    assert_eq!(out.lines().count(), 1, "only the key on stdout: {out:?}");
    (key.clone(), key[..11].to_owned())
}

fn is_key(s: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    s.strip_prefix("wm_")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(id, secret)| hex(id, 8) && hex(secret, 64))
}

/// An answer: status, headers and JSON body.
struct Answer {
    code: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn retry_after(&self) -> Option<u64> {
        self.headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

/// `POST /api/batches` with `files` (the pipeline first when given), and `headers`.
async fn submit(
    sys: &System,
    headers: &[(&str, &str)],
    files: &[(&str, Vec<u8>)],
    pipeline: Option<&Value>,
) -> Answer {
    let mut form = reqwest::multipart::Form::new();
    if let Some(p) = pipeline {
        form = form.text("pipeline", p.to_string());
    }
    for (name, bytes) in files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
        );
    }
    let mut request = sys.http.post(sys.url("/api/batches")).multipart(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let res = request.send().await.expect("an answer");
    Answer {
        code: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.json().await.expect("JSON"),
    }
}

async fn get(sys: &System, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = sys.http.get(sys.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let res = request.send().await.expect("an answer");
    Answer {
        code: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.json().await.expect("JSON"),
    }
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn batches(sys: &System) -> i64 {
    sys.count("SELECT count(*) FROM batches").await
}

/// Rows of batches and of images (their events go with them).
async fn rows(sys: &System) -> (i64, i64) {
    (
        batches(sys).await,
        sys.count("SELECT count(*) FROM images").await,
    )
}

async fn objects(sys: &System) -> usize {
    sys.objects().await.expect("objects").len()
}

fn web_log(sys: &System) -> String {
    std::fs::read_to_string(sys.logs().join("web.log")).expect("web's log")
}

/// Asserts a refusal over a limit: 429, `rate_limited`, and `Retry-After` within `range`.
fn assert_limited(answer: &Answer, says: &str, range: std::ops::RangeInclusive<u64>) {
    assert_eq!(answer.code, 429, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["code"], "rate_limited",
        "{}",
        answer.body
    );
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{message}");
    let after = answer.retry_after().expect("Retry-After in seconds");
    assert!(
        range.contains(&after),
        "Retry-After {after}, expected {range:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_made_once_listed_without_their_secret_and_revoked_at_once() {
    let sys = System::start(
        "owners-keys",
        Options::default().workers(&[]).env("MONITOR_TOKEN", TOKEN),
    )
    .await
    .expect("system starts");

    // Made: the key once on stdout, a hint on stderr that names the prefix, not the key.
    let (code, out, err) = keys(
        &sys,
        &[
            "create",
            "--label",
            "photo desk",
            "--weight",
            "2.5",
            "--max-batches-per-minute",
            "7",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let key = out.trim().to_owned();
    assert!(is_key(&key), "{out:?}");
    let prefix = key[..11].to_owned();
    let secret = key[12..].to_owned();
    assert!(err.contains(&prefix) && err.contains("once"), "{err}");
    assert!(!err.contains(&secret), "{err}");
    // Postgres keeps the prefix and a hash, not the key.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM owners
         WHERE prefix = $1 AND position(convert_to($2, 'UTF8') IN key_hash) = 0
           AND label = 'photo desk' AND weight = 2.5 AND max_batches_per_minute = 7",
    )
    .bind(&prefix)
    .bind(&secret)
    .fetch_one(&sys.db)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    let (reader, reader_prefix) = make_key(&sys, "reader", &["--scopes", "read"]);
    let (admin, _) = make_key(&sys, "ops", &["--scopes", "admin"]);

    // Listed: prefix, label, scopes, weight, limits, created, last used, revoked; never the key.
    let (code, list, _) = keys(&sys, &["list"]);
    assert_eq!(code, 0);
    let header = list.lines().next().unwrap();
    for column in [
        "prefix",
        "label",
        "scopes",
        "weight",
        "max_queued_images",
        "max_batches_per_minute",
        "max_bytes_per_day",
        "created",
        "last_used",
        "revoked",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = list
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{prefix} in {list}"));
    let cells: Vec<&str> = row.split('\t').collect();
    assert_eq!(
        &cells[..7],
        &[
            prefix.as_str(),
            "photo desk",
            "submit,read",
            "2.5",
            "default:20000",
            "7",
            "default:21474836480"
        ],
        "{row}"
    );
    assert_eq!(
        (cells[8], cells[9]),
        ("-", "-"),
        "never used, not revoked: {row}"
    );
    assert!(list.lines().any(|l| l.starts_with(&reader_prefix)));
    for k in [&key, &reader, &admin] {
        assert!(!list.contains(&k[12..]), "a key in the list: {list}");
    }

    // Bad usage: exit 2 with what is wrong.
    for (args, says) in [
        (vec!["create"], "--label"),
        (
            vec!["create", "--label", "x", "--scopes", "write"],
            "unknown scope",
        ),
        (vec!["create", "--label", "x", "--weight", "0"], "weight"),
        (
            vec!["create", "--label", "x", "--max-queued-images", "0"],
            "max-queued-images",
        ),
        (vec!["revoke"], "PREFIX"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let (code, out, err) = keys(&sys, &args);
        assert_eq!(code, 2, "{args:?}: {out}\n{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }

    // The scheme in any case.
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {key}");
        let a = submit(
            &sys,
            &[("authorization", &auth)],
            &[("a.png", small_png(1))],
            None,
        )
        .await;
        assert_eq!(a.code, 202, "{scheme}: {}", a.body);
    }
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM batches b JOIN owners o ON o.id = b.owner_id WHERE o.prefix = $1",
    )
    .bind(&prefix)
    .fetch_one(&sys.db)
    .await
    .unwrap();
    assert_eq!(owned, 3, "each batch belongs to the key");
    let (_, list, _) = keys(&sys, &["list"]);
    let row = list.lines().find(|l| l.starts_with(&prefix)).unwrap();
    assert_ne!(
        row.split('\t').nth(8),
        Some("-"),
        "last used is noted: {row}"
    );

    // Unknown keys: refused, never taken for anonymous.
    let before = batches(&sys).await;
    let unknown = format!("wm_00000000_{}", "ab".repeat(32));
    let altered = format!(
        "{}{}",
        &key[..key.len() - 1],
        if key.ends_with('0') { '1' } else { '0' }
    );
    for credential in [unknown.as_str(), altered.as_str(), "not-a-key"] {
        let auth = bearer(credential);
        let a = submit(
            &sys,
            &[("authorization", &auth)],
            &[("a.png", small_png(2))],
            None,
        )
        .await;
        assert_eq!(a.code, 401, "{credential}: {}", a.body);
        assert_eq!(a.body["error"]["code"], "unauthorized");
    }
    assert_eq!(batches(&sys).await, before);

    // The monitor lists the keys without their secrets; an admin key opens its JSON, a key
    // without the scope does not.
    let monitor = get(&sys, "/api/monitor", &[("authorization", &bearer(TOKEN))]).await;
    assert_eq!(monitor.code, 200, "{}", monitor.body);
    let listed = monitor.body["keys"].as_array().expect("keys");
    assert_eq!(listed.len(), 3, "{}", monitor.body["keys"]);
    let desk = listed
        .iter()
        .find(|k| k["prefix"] == prefix.as_str())
        .unwrap();
    assert_eq!(desk["label"], "photo desk");
    assert_eq!(desk["scopes"], json!(["submit", "read"]));
    assert_eq!(desk["weight"], 2.5);
    assert_eq!(desk["limits"]["max_batches_per_minute"], 7);
    assert!(desk["last_used_at"].is_string(), "{desk}");
    assert!(desk["revoked_at"].is_null(), "{desk}");
    let text = monitor.body.to_string();
    assert!(!text.contains("hash"), "{text}");
    for k in [&key, &reader, &admin] {
        assert!(!text.contains(&k[12..]), "a key on the monitor: {text}");
    }
    let a = get(&sys, "/api/monitor", &[("authorization", &bearer(&admin))]).await;
    assert_eq!(a.code, 200, "{}", a.body);
    let a = get(&sys, "/api/stats", &[("authorization", &bearer(&admin))]).await;
    assert_eq!(a.code, 200, "{}", a.body);
    let a = get(&sys, "/api/monitor", &[("authorization", &bearer(&reader))]).await;
    assert_eq!(
        (a.code, a.body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let page = sys
        .http
        .get(sys.url("/monitor"))
        .header(
            AUTHORIZATION,
            HeaderValue::from_str(&bearer(TOKEN)).unwrap(),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&prefix) && page.contains("photo desk"),
        "{page}"
    );
    assert!(!page.contains(&secret), "a key on the monitor page");

    // Revoked: the next request is refused, within a second.
    let (code, _, err) = keys(&sys, &["revoke", &prefix]);
    assert_eq!(code, 0, "{err}");
    let revoked = Instant::now();
    let a = submit(
        &sys,
        &[("authorization", &bearer(&key))],
        &[("a.png", small_png(3))],
        None,
    )
    .await;
    assert!(revoked.elapsed() < Duration::from_secs(1));
    assert_eq!(a.code, 401, "{}", a.body);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{}",
        a.body
    );
    let a = get(&sys, "/api/usage", &[("authorization", &bearer(&key))]).await;
    assert_eq!(a.code, 401, "{}", a.body);
    let (_, list, _) = keys(&sys, &["list"]);
    let row = list.lines().find(|l| l.starts_with(&prefix)).unwrap();
    assert_ne!(
        row.split('\t').nth(9),
        Some("-"),
        "revoked shows when: {row}"
    );
    // Again, or an unknown prefix: exit 1 with why.
    for p in [prefix.as_str(), "wm_ffffffff"] {
        let (code, _, err) = keys(&sys, &["revoke", p]);
        assert_eq!(code, 1, "{p}: {err}");
        assert!(err.contains("no live key"), "{err}");
    }

    // No key reaches web's log.
    let log = web_log(&sys);
    assert!(log.contains("/api/batches"), "the log has the requests");
    for k in [&key, &reader, &admin] {
        assert!(!log.contains(&k[12..]), "a key in web's log");
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_decide_and_anonymous_off_asks_every_request_for_a_key() {
    let sys = System::start(
        "owners-scopes",
        Options::default().workers(&[]).env("ANONYMOUS", "off"),
    )
    .await
    .expect("system starts");
    let (submitter, _) = make_key(&sys, "submitter", &["--scopes", "submit"]);
    let (reader, reader_prefix) = make_key(&sys, "reader", &["--scopes", "read"]);
    let (both, _) = make_key(&sys, "both", &[]);

    // Without a key: 401, from the API and the form.
    let a = submit(&sys, &[], &[("a.png", small_png(1))], None).await;
    assert_eq!(a.code, 401, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "unauthorized");
    let form = sys
        .submit_form(&[("task", "grayscale")], &[("a.png", small_png(1))])
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 401);
    let a = get(&sys, "/api/usage", &[]).await;
    assert_eq!(a.code, 401, "{}", a.body);

    // A key without `submit`: 403; with it: accepted.
    let a = submit(
        &sys,
        &[("authorization", &bearer(&reader))],
        &[("a.png", small_png(2))],
        None,
    )
    .await;
    assert_eq!(a.code, 403, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "forbidden");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("submit"));
    assert_eq!(batches(&sys).await, 0, "nothing of the refused requests");
    assert_eq!(objects(&sys).await, 0);
    for key in [&submitter, &both] {
        let a = submit(
            &sys,
            &[("authorization", &bearer(key))],
            &[("a.png", small_png(3))],
            None,
        )
        .await;
        assert_eq!(a.code, 202, "{}", a.body);
    }

    // Usage needs `read`.
    let a = get(
        &sys,
        "/api/usage",
        &[("authorization", &bearer(&submitter))],
    )
    .await;
    assert_eq!(
        (a.code, a.body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let a = get(&sys, "/api/usage", &[("authorization", &bearer(&reader))]).await;
    assert_eq!(a.code, 200, "{}", a.body);
    assert_eq!(a.body["owner"]["kind"], "key");
    assert_eq!(a.body["owner"]["prefix"], reader_prefix.as_str());
    assert_eq!(a.body["owner"]["label"], "reader");
    assert_eq!(a.body["usage"]["queued_images"], 0, "{}", a.body);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_images_are_limited_exactly_and_a_refused_upload_leaves_nothing() {
    // No workers: images stay queued. Anonymous owners may have 1 queued image.
    let sys = System::start(
        "owners-queued",
        Options::default()
            .workers(&[])
            .env("OWNER_MAX_QUEUED_IMAGES", 1)
            .env("OWNER_MAX_BATCHES_PER_MINUTE", 60),
    )
    .await
    .expect("system starts");
    let (key, prefix) = make_key(&sys, "bulk", &["--max-queued-images", "3"]);
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];
    let pipeline = json!([{"task": "grayscale"}]);

    let a = submit(
        &sys,
        &headers,
        &[("a.png", small_png(1)), ("b.png", small_png(2))],
        None,
    )
    .await;
    assert_eq!(a.code, 202, "{}", a.body);
    // A refused file is not queued: it does not count.
    let a = submit(
        &sys,
        &headers,
        &[
            ("c.png", small_png(3)),
            ("notes.txt", b"not an image".to_vec()),
        ],
        Some(&pipeline),
    )
    .await;
    assert_eq!(a.code, 202, "3 of 3: {}", a.body);
    let (kept, stored) = (rows(&sys).await, objects(&sys).await);
    assert_eq!((kept, stored), ((2, 4), 3));

    // One more image: 429, whether the files are recorded at the end or as they arrive.
    for pipeline in [None, Some(&pipeline)] {
        let a = submit(&sys, &headers, &[("d.png", small_png(4))], pipeline).await;
        assert_limited(&a, "queued", 30..=30);
        assert_eq!(rows(&sys).await, kept, "no row of the refused batch");
        assert_eq!(
            objects(&sys).await,
            stored,
            "no object of the refused batch"
        );
    }

    let a = get(&sys, "/api/usage", &headers).await;
    assert_eq!(a.code, 200, "{}", a.body);
    let sent = (small_png(1).len() + small_png(2).len() + small_png(3).len() + 12) as i64;
    assert_eq!(
        a.body,
        json!({
            "owner": {"kind": "key", "label": "bulk", "prefix": prefix, "weight": 1.0},
            "usage": {"queued_images": 3, "batches_last_minute": 2, "bytes_last_day": sent},
            "limits": {"max_queued_images": 3, "max_batches_per_minute": 60,
                       "max_bytes_per_day": 20_i64 * 1024 * 1024 * 1024},
        })
    );

    // The browser form (anonymous, 1 image): the second is refused with a page saying why.
    let form = sys
        .submit_form(&[("task", "grayscale")], &[("a.png", small_png(5))])
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 303);
    let (kept, stored) = (rows(&sys).await, objects(&sys).await);
    let form = sys
        .submit_form(&[("task", "grayscale")], &[("a.png", small_png(6))])
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 429);
    assert_eq!(form.headers()[RETRY_AFTER], "30");
    let page = form.text().await.unwrap();
    assert!(
        page.contains("Please slow down") && page.contains("queued"),
        "{page}"
    );
    assert_eq!((rows(&sys).await, objects(&sys).await), (kept, stored));
    let a = get(&sys, "/api/usage", &[]).await;
    assert_eq!(a.body["owner"]["kind"], "address", "{}", a.body);
    assert_eq!(a.body["owner"]["address"], "127.0.0.1", "{}", a.body);
    assert_eq!(a.body["usage"]["queued_images"], 1, "{}", a.body);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_per_minute_are_limited_exactly_even_when_requests_race() {
    let sys = System::start("owners-minute", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let (key, prefix) = make_key(&sys, "hasty", &["--max-batches-per-minute", "3"]);
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];
    for i in 0..3 {
        let a = submit(&sys, &headers, &[("a.png", small_png(i))], None).await;
        assert_eq!(a.code, 202, "{}", a.body);
    }
    let (kept, stored) = (rows(&sys).await, objects(&sys).await);
    // Retry-After: until the first of the three is a minute old.
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(created_at) + interval '1 minute' - now())::float8
         FROM batches",
    )
    .fetch_one(&sys.db)
    .await
    .unwrap();
    let a = submit(&sys, &headers, &[("a.png", small_png(9))], None).await;
    let expected = left.ceil() as u64;
    assert_limited(
        &a,
        "3 batches a minute",
        expected.saturating_sub(1)..=expected,
    );
    assert_eq!((rows(&sys).await, objects(&sys).await), (kept, stored));
    let usage = get(&sys, "/api/usage", &headers).await;
    assert_eq!(
        usage.body["usage"]["batches_last_minute"], 3,
        "{}",
        usage.body
    );
    assert_eq!(usage.body["owner"]["prefix"], prefix.as_str());

    // Eight at once from a fresh key: exactly three get through.
    let (key, prefix) = make_key(&sys, "racer", &["--max-batches-per-minute", "3"]);
    let auth = bearer(&key);
    let answers = futures::future::join_all((0..8).map(|i| {
        let auth = auth.clone();
        let sys = &sys;
        async move {
            submit(
                sys,
                &[("authorization", auth.as_str())],
                &[("a.png", small_png(20 + i))],
                None,
            )
            .await
        }
    }))
    .await;
    let accepted = answers.iter().filter(|a| a.code == 202).count();
    let limited = answers
        .iter()
        .filter(|a| a.code == 429 && a.body["error"]["code"] == "rate_limited")
        .count();
    assert_eq!(
        (accepted, limited),
        (3, 5),
        "{:?}",
        answers.iter().map(|a| &a.body).collect::<Vec<_>>()
    );
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM batches b JOIN owners o ON o.id = b.owner_id WHERE o.prefix = $1",
    )
    .bind(&prefix)
    .fetch_one(&sys.db)
    .await
    .unwrap();
    assert_eq!(owned, 3);
    assert_eq!(objects(&sys).await, stored + 3);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_per_day_are_limited_exactly_and_a_refused_upload_leaves_nothing() {
    let sys = System::start("owners-bytes", Options::default().workers(&[]))
        .await
        .expect("system starts");
    const FILE: usize = 5000;
    let limit = (2 * FILE).to_string();
    let (key, _) = make_key(&sys, "daily", &["--max-bytes-per-day", &limit]);
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];
    let pipeline = json!([{"task": "grayscale"}]);
    let a = submit(&sys, &headers, &[("a.png", png_of_len(8, 8, FILE))], None).await;
    assert_eq!(a.code, 202, "{}", a.body);
    let a = submit(
        &sys,
        &headers,
        &[("b.png", png_of_len(9, 9, FILE))],
        Some(&pipeline),
    )
    .await;
    assert_eq!(a.code, 202, "exactly the limit: {}", a.body);
    let (kept, stored) = (rows(&sys).await, objects(&sys).await);
    assert_eq!((kept, stored), ((2, 2), 2));
    let left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM min(created_at) + interval '1 day' - now())::float8
         FROM batches",
    )
    .fetch_one(&sys.db)
    .await
    .unwrap();
    let expected = left.ceil() as u64;
    // One byte more: refused, recorded at the end or as it arrives; its file is deleted.
    for pipeline in [None, Some(&pipeline)] {
        let a = submit(
            &sys,
            &headers,
            &[("c.png", png_of_len(8, 8, 300))],
            pipeline,
        )
        .await;
        assert_limited(&a, "a day", expected.saturating_sub(3)..=expected);
        assert_eq!(rows(&sys).await, kept, "no row of the refused batch");
        assert_eq!(
            objects(&sys).await,
            stored,
            "no object of the refused batch"
        );
    }
    let usage = get(&sys, "/api/usage", &headers).await;
    assert_eq!(
        usage.body["usage"]["bytes_last_day"],
        2 * FILE,
        "{}",
        usage.body
    );
    assert_eq!(
        usage.body["limits"]["max_bytes_per_day"],
        2 * FILE,
        "{}",
        usage.body
    );
    sys.shutdown().await;
}

/// Two forwarded addresses are two owners when the peer is a trusted proxy.
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_addresses_are_owners_when_the_proxy_is_trusted() {
    let sys = System::start(
        "owners-proxy",
        Options::default()
            .workers(&[])
            .env("TRUSTED_PROXIES", "127.0.0.1")
            .env("OWNER_MAX_BATCHES_PER_MINUTE", 1),
    )
    .await
    .expect("system starts");
    let one = [("x-forwarded-for", "203.0.113.1")];
    let two = [("x-forwarded-for", "198.51.100.7, 203.0.113.2")];
    let a = submit(&sys, &one, &[("a.png", small_png(1))], None).await;
    assert_eq!(a.code, 202, "{}", a.body);
    let a = submit(&sys, &one, &[("a.png", small_png(2))], None).await;
    assert_limited(&a, "batches a minute", 1..=60);
    let a = submit(&sys, &two, &[("a.png", small_png(3))], None).await;
    assert_eq!(a.code, 202, "another client: {}", a.body);
    let usage = get(&sys, "/api/usage", &two).await;
    assert_eq!(
        usage.body["owner"]["address"], "203.0.113.2",
        "{}",
        usage.body
    );
    assert_eq!(usage.body["usage"]["batches_last_minute"], 1);
    let owners = sys
        .count("SELECT count(*) FROM owners WHERE kind = 'address'")
        .await;
    assert_eq!(owners, 2);
    sys.shutdown().await;
}

/// From a peer that is not a trusted proxy, `X-Forwarded-For` is the client's own words: every
/// forwarded address is the one owner of the connection's address.
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_addresses_are_ignored_from_an_untrusted_peer() {
    let sys = System::start(
        "owners-noproxy",
        Options::default()
            .workers(&[])
            .env("TRUSTED_PROXIES", "10.0.0.0/8")
            .env("OWNER_MAX_BATCHES_PER_MINUTE", 1),
    )
    .await
    .expect("system starts");
    let a = submit(
        &sys,
        &[("x-forwarded-for", "203.0.113.1")],
        &[("a.png", small_png(1))],
        None,
    )
    .await;
    assert_eq!(a.code, 202, "{}", a.body);
    let a = submit(
        &sys,
        &[("x-forwarded-for", "203.0.113.2")],
        &[("a.png", small_png(2))],
        None,
    )
    .await;
    assert_limited(&a, "batches a minute", 1..=60);
    let usage = get(&sys, "/api/usage", &[("x-forwarded-for", "203.0.113.2")]).await;
    assert_eq!(
        usage.body["owner"]["address"], "127.0.0.1",
        "{}",
        usage.body
    );
    let owners = sys
        .count("SELECT count(*) FROM owners WHERE kind = 'address'")
        .await;
    assert_eq!(owners, 1);
    sys.shutdown().await;
}
