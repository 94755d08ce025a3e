//! What an outsider can and cannot do, against the real binaries: batch ids are random, there
//! is no listing and no way to another batch's files without its id, a download link dies with
//! its batch, no answer reveals how or where files are stored, and every answer carries the
//! security headers.

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::json;
use system_tests::images::{flat_jpeg, flat_png, random_bytes};
use system_tests::{Options, System};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

fn small_png(i: u32) -> Vec<u8> {
    flat_png(4 + i % 16, 4, [i as u8, 0, 0, 255])
}

/// A GET sent byte for byte as given (no client-side normalisation of `..` or `%2e`): the
/// status and the whole answer (head and body) as text.
async fn raw_get(sys: &System, path: &str) -> (u16, String) {
    let addr = sys
        .base
        .strip_prefix("http://")
        .expect("an http base URL")
        .trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {path}: {text:?}"));
    (code, text)
}

fn zip_names(bytes: &[u8]) -> Vec<String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_ids_are_random_version_4_uuids() {
    let sys = System::start("ids", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let mut ids = Vec::new();
    for i in 0..40 {
        let (code, body) = sys.submit(&[("a.png", small_png(i))], None).await.unwrap();
        assert_eq!(code, 202, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(body["status_url"], format!("/api/batches/{id}"));
        assert_eq!(body["page_url"], format!("/batches/{id}"));
        ids.push(id);
    }
    // The form's redirect carries ids of the same kind.
    for i in 0..5 {
        let res = sys
            .submit_form(&[("task", "grayscale")], &[("a.png", small_png(i))])
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 303);
        let location = res.headers()["location"].to_str().unwrap();
        ids.push(location.strip_prefix("/batches/").unwrap().to_owned());
    }

    let mut uuids = Vec::new();
    for id in &ids {
        assert_eq!(id.len(), 36, "{id}");
        assert!(
            id.chars()
                .enumerate()
                .all(|(i, c)| if [8, 13, 18, 23].contains(&i) {
                    c == '-'
                } else {
                    c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
                }),
            "{id} is not a canonical UUID"
        );
        let uuid = Uuid::parse_str(id).unwrap();
        assert_eq!(uuid.get_version_num(), 4, "{id} is not a version 4 UUID");
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
        uuids.push(uuid.as_u128());
    }
    let distinct: HashSet<_> = uuids.iter().collect();
    assert_eq!(distinct.len(), uuids.len(), "repeated ids: {ids:?}");
    // 122 random bits: any two differ in about 61 of them. Ids made from a counter, a clock or
    // each other differ in far fewer.
    let mut closest = u32::MAX;
    for (i, a) in uuids.iter().enumerate() {
        for b in &uuids[i + 1..] {
            closest = closest.min((a ^ b).count_ones());
        }
    }
    assert!(
        closest >= 25,
        "two ids differ in only {closest} bits: {ids:?}"
    );

    // Storage keys come from random ids too: no user text, no counters.
    let objects = sys.objects().await.unwrap();
    assert_eq!(objects.len(), ids.len(), "{objects:?}");
    for key in &objects {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 4, "{key}");
        assert!(ids.contains(&parts[1].to_owned()), "{key}");
        let image = Uuid::parse_str(parts[3]).unwrap_or_else(|_| panic!("{key}"));
        assert_eq!(image.get_version_num(), 4, "{key}");
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_cannot_be_listed_or_reached_without_their_id() {
    let sys = System::start("no-listing", Options::default())
        .await
        .expect("system starts");
    let a = sys
        .submit_ok(&[("secret-alpha.png", small_png(1))], None)
        .await
        .unwrap();
    let b = sys
        .submit_ok(&[("secret-beta.jpg", flat_jpeg(8, 8, [1, 2, 3]))], None)
        .await
        .unwrap();
    for id in [&a, &b] {
        let status = sys.wait_final(id, WAIT).await.unwrap();
        assert_eq!(status["status"], "done");
    }
    let secrets = [a.as_str(), b.as_str(), "secret-alpha", "secret-beta"];
    let reveals = |text: &str| -> Option<&str> {
        let lower = text.to_lowercase();
        secrets.iter().copied().find(|s| lower.contains(s))
    };

    // Each id reaches its own batch, and only its own.
    let (_, status) = sys.status(&a).await.unwrap();
    let text = status.to_string();
    assert!(text.contains("secret-alpha") && !text.contains("secret-beta"));
    let (_, zip) = sys.download(&b).await.unwrap();
    assert_eq!(zip_names(&zip), ["secret-beta.jpg"]);

    // No listing: not through the API, not through the pages, not through directory-like paths.
    let listings = [
        "/api/batches",
        "/api/batches/",
        "/api/batches?all=1",
        "/api/batches/*",
        "/api/batches/.",
        "/api",
        "/api/",
        "/batches",
        "/batches/",
        "/batches?list=1",
        "/batches/*",
        "/batches/.",
        "/batches/..",
        "/batches/%2e%2e/",
        "/batches/download",
        "/batches//download",
        "/download",
        "/static/",
        "/static/..",
        "/static/../batches/",
        "/batches/../api/batches",
        "/images",
        "/api/images",
        "/files/",
        "/objects",
        "/.env",
        "/.git/config",
    ];
    for path in listings {
        let (code, answer) = raw_get(&sys, path).await;
        assert!(
            matches!(code, 400 | 404 | 405),
            "GET {path} answered {code}: {answer}"
        );
        assert_eq!(
            reveals(&answer),
            None,
            "GET {path} revealed a batch: {answer}"
        );
    }
    // The plain listing routes answer exactly "not found" or "method not allowed".
    for path in ["/api/batches", "/batches", "/batches/", "/api/batches/"] {
        let code = sys.http.get(sys.url(path)).send().await.unwrap().status();
        assert!(matches!(code.as_u16(), 404 | 405), "GET {path}: {code}");
    }

    // Guessing: nearby ids, the nil and max ids, malformed ids, injection attempts.
    let flip = |id: &str, at: usize| {
        let mut chars: Vec<char> = id.chars().collect();
        chars[at] = if chars[at] == '0' { '1' } else { '0' };
        chars.into_iter().collect::<String>()
    };
    let ua = Uuid::parse_str(&a).unwrap().as_u128();
    let guesses = vec![
        flip(&a, 35),
        flip(&a, 0),
        flip(&b, 20),
        Uuid::from_u128(ua.wrapping_add(1)).to_string(),
        Uuid::from_u128(ua.wrapping_sub(1)).to_string(),
        Uuid::nil().to_string(),
        Uuid::max().to_string(),
        "00000000000000000000000000000000".into(),
        a[..35].to_owned(),
        format!("{a}0"),
        format!("{a}%00"),
        a.replace('-', "_"),
        format!("{}g", &a[..35]),
        "not-a-uuid".into(),
        "1".into(),
        "-1".into(),
        "0".into(),
        "%2A".into(),
        "'%20OR%20'1'='1".into(),
        "..%2f..%2fapi%2fbatches".into(),
        format!("{a}%2f..%2f{b}"),
        format!("..%2f{b}"),
    ];
    for guess in &guesses {
        for path in [
            format!("/api/batches/{guess}"),
            format!("/batches/{guess}"),
            format!("/batches/{guess}/download"),
        ] {
            let (code, answer) = raw_get(&sys, &path).await;
            assert!(
                matches!(code, 400 | 404),
                "GET {path} answered {code}: {answer}"
            );
            assert_eq!(
                reveals(&answer),
                None,
                "GET {path} revealed a batch: {answer}"
            );
        }
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_download_link_stops_working_when_the_batch_expires() {
    let sys = System::start(
        "link-expires",
        Options::default()
            .env("RESULT_TTL_SECONDS", 2)
            .env("PURGE_SCHEDULE", "* * * * * *"),
    )
    .await
    .expect("system starts");
    let id = sys
        .submit_ok(
            &[
                ("private-one.png", small_png(3)),
                ("private-two.jpg", flat_jpeg(16, 16, [4, 5, 6])),
                ("broken.jpg", random_bytes(64, 9)),
            ],
            None,
        )
        .await
        .unwrap();
    let status = sys.wait_final(&id, WAIT).await.unwrap();
    assert_eq!(status["status"], "done", "{status}");
    let link = status["download_url"].as_str().expect("a link").to_owned();
    let res = sys.http.get(sys.url(&link)).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let zip = res.bytes().await.unwrap();
    assert_eq!(
        zip_names(&zip),
        ["private-one.png", "private-two.jpg", "FAILED-FILES.txt"]
    );
    assert!(sys
        .objects()
        .await
        .unwrap()
        .iter()
        .all(|k| k.starts_with(&format!("batches/{id}/"))));

    // Bounded wait for the purge (the TTL is 2 s; it runs every second).
    let started = Instant::now();
    loop {
        let (code, _) = sys.status(&id).await.unwrap();
        if code == 410 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(45),
            "the batch did not expire; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The same link, and every other way in, now says "gone", and shows nothing of the batch.
    for path in [
        link.clone(),
        format!("/batches/{id}"),
        format!("/api/batches/{id}"),
        format!("/batches/{}/download", id.to_uppercase()),
    ] {
        let res = sys.http.get(sys.url(&path)).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 410, "GET {path}");
        assert_ne!(
            res.headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap()),
            Some("application/zip"),
            "GET {path}"
        );
        let body = res.text().await.unwrap();
        assert!(
            !body.contains("private-"),
            "GET {path} still shows the files: {body}"
        );
    }
    let (code, body) = sys.status(&id).await.unwrap();
    assert_eq!(code, 410);
    assert_eq!(body["status"], "expired", "{body}");

    // Every stored file of the batch is gone: originals, results, the zip, unfinished uploads.
    assert_eq!(sys.objects().await.unwrap(), Vec::<String>::new());
    assert_eq!(sys.storage.abort_uploads("").await.unwrap(), 0);
    let expired = sys
        .count("SELECT count(*) FROM batches WHERE status = 'expired'")
        .await;
    assert_eq!(expired, 1);
    sys.shutdown().await;
}

/// Everything an answer shows a client: status line, headers, body.
async fn answer_text(res: reqwest::Response) -> String {
    let mut text = format!("{:?} {}\n", res.version(), res.status());
    for (k, v) in res.headers() {
        text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    let body = res.bytes().await.unwrap();
    text.push_str(&String::from_utf8_lossy(&body));
    // A zip's text entries (the report of failures) are deflated: read them out too.
    if body.starts_with(b"PK") {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(body)).expect("a zip");
        for i in 0..zip.len() {
            let mut f = zip.by_index(i).unwrap();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn no_page_answer_or_link_reveals_storage_credentials_or_urls() {
    let sys = System::start("no-leaks", Options::default())
        .await
        .expect("system starts");
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let endpoint = var("S3_ENDPOINT");
    let endpoint_host = endpoint
        .split("://")
        .nth(1)
        .unwrap_or(&endpoint)
        .trim_end_matches('/')
        .to_owned();
    let mut forbidden = vec![
        var("S3_SECRET_ACCESS_KEY"),
        var("S3_ACCESS_KEY_ID"),
        endpoint.clone(),
        endpoint_host.clone(),
        sys.storage.bucket().to_owned(),
        "x-amz-".into(),
        "awsaccesskeyid".into(),
        "signature=".into(),
    ];
    // The passwords of the other services, when their URLs have one.
    for key in ["DATABASE_URL", "REDIS_URL"] {
        let url = var(key);
        if let Some(password) = url
            .split("://")
            .nth(1)
            .and_then(|rest| rest.split('@').next().filter(|_| rest.contains('@')))
            .and_then(|user_info| user_info.split(':').nth(1))
            .filter(|p| p.len() >= 4)
        {
            forbidden.push(password.to_owned());
        }
    }
    let forbidden: Vec<String> = forbidden
        .into_iter()
        .filter(|s| s.len() >= 4)
        .map(|s| s.to_lowercase())
        .collect();
    let leaks = |text: &str| {
        let lower = text.to_lowercase();
        forbidden
            .iter()
            .any(|secret| lower.contains(secret.as_str()))
    };
    let check = |what: &str, text: &str| {
        // Never print the secret itself.
        assert!(
            !leaks(text),
            "{what} reveals a storage credential, URL or presigned parameter (one of {} checked strings)",
            forbidden.len()
        );
    };
    // The check itself sees what it looks for.
    assert!(
        forbidden.len() >= 8,
        "only {} strings to look for",
        forbidden.len()
    );
    for key in ["S3_SECRET_ACCESS_KEY", "S3_ACCESS_KEY_ID", "S3_ENDPOINT"] {
        assert!(
            leaks(&format!("<p>{}</p>", var(key))),
            "{key} would go unnoticed"
        );
    }
    assert!(leaks("/x?X-Amz-Signature=abc"));

    // A batch that is done (with a failure), one that failed as a whole, one still being made.
    let done = sys
        .submit_ok(
            &[("a.png", small_png(1)), ("b.jpg", random_bytes(100, 3))],
            None,
        )
        .await
        .unwrap();
    let failed = sys
        .submit_ok(&[("c.jpg", random_bytes(100, 4))], None)
        .await
        .unwrap();
    for id in [&done, &failed] {
        sys.wait_final(id, WAIT).await.unwrap();
    }
    let (_, status) = sys.status(&failed).await.unwrap();
    assert_eq!(status["status"], "failed");

    let res = sys
        .submit_form(&[("task", "watermark")], &[("d.png", small_png(2))])
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("/batches/"),
        "a relative link: {location}"
    );
    check("the form's redirect", &answer_text(res).await);

    let download = format!("/batches/{done}/download");
    let res = sys.http.get(sys.url(&download)).send().await.unwrap();
    assert_eq!(
        res.status().as_u16(),
        200,
        "the zip comes from the site itself, not a redirect"
    );
    check(&download, &answer_text(res).await);

    let paths = [
        "/".to_owned(),
        "/api/tasks".into(),
        "/healthz".into(),
        "/readyz".into(),
        "/static/app.js".into(),
        "/static/app.css".into(),
        format!("/batches/{done}"),
        format!("/api/batches/{done}"),
        format!("/batches/{failed}"),
        format!("/api/batches/{failed}"),
        location.clone(),
        format!("/api{location}"),
        format!("/batches/{failed}/download"),
        format!("/batches/{}", Uuid::new_v4()),
        "/no/such/page".into(),
    ];
    for path in &paths {
        let res = sys.http.get(sys.url(path)).send().await.unwrap();
        check(path, &answer_text(res).await);
    }
    // Error answers: a bad pipeline, a refused upload.
    let (code, body) = sys
        .submit(
            &[("a.png", small_png(1))],
            Some(&json!([{"task": "watermark", "opacity": 3}])),
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
    check("a 400 answer", &body.to_string());

    // Storage breaks (its bucket disappears): the answers say so without saying where it is.
    sys.storage.delete_prefix("").await.unwrap();
    sys.storage.delete_bucket().await.unwrap();
    let res = sys.http.get(sys.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let text = answer_text(res).await;
    assert!(text.contains("\"s3\":\"unavailable\""), "{text}");
    check("/readyz with storage down", &text);
    let (code, body) = sys.submit(&[("e.png", small_png(5))], None).await.unwrap();
    assert!(
        code >= 500,
        "an upload with storage down answered {code}: {body}"
    );
    check("an upload with storage down", &body.to_string());
    let res = sys.http.get(sys.url(&download)).send().await.unwrap();
    assert_ne!(res.status().as_u16(), 200);
    check("a download with storage down", &answer_text(res).await);
    let res = sys
        .submit_form(&[("task", "grayscale")], &[("f.png", small_png(6))])
        .await
        .unwrap();
    assert!(res.status().as_u16() >= 500, "{}", res.status());
    check("the form with storage down", &answer_text(res).await);

    // Nor do the logs hold the secrets (the endpoint and bucket may appear there).
    let secrets: Vec<&String> = forbidden
        .iter()
        .filter(|s| *s != &endpoint.to_lowercase() && *s != &endpoint_host.to_lowercase())
        .filter(|s| *s != &sys.storage.bucket().to_lowercase())
        .filter(|s| !s.ends_with('-') && !s.ends_with('='))
        .filter(|s| s.as_str() != "awsaccesskeyid")
        .collect();
    for entry in std::fs::read_dir(sys.logs()).unwrap() {
        let path = entry.unwrap().path();
        let log = std::fs::read_to_string(&path).unwrap().to_lowercase();
        for secret in &secrets {
            assert!(
                !log.contains(secret.as_str()),
                "{} holds a credential",
                path.display()
            );
        }
    }
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_carries_the_security_headers() {
    let sys = System::start("headers", Options::default())
        .await
        .expect("system starts");
    let id = sys
        .submit_ok(&[("a.png", small_png(1))], None)
        .await
        .unwrap();
    sys.wait_final(&id, WAIT).await.unwrap();

    let mut answers: Vec<(String, reqwest::Response)> = Vec::new();
    for path in [
        "/".to_owned(),
        format!("/batches/{id}"),
        format!("/batches/{id}/download"),
        format!("/api/batches/{id}"),
        "/api/tasks".into(),
        "/healthz".into(),
        "/readyz".into(),
        "/static/app.js".into(),
        "/static/app.css".into(),
        format!("/batches/{}", Uuid::new_v4()),
        format!("/api/batches/{}", Uuid::new_v4()),
        "/nowhere".into(),
        "/api/batches".into(),
    ] {
        let res = sys.http.get(sys.url(&path)).send().await.unwrap();
        answers.push((format!("GET {path}"), res));
    }
    let res = sys
        .submit_form(&[], &[("b.png", small_png(2))])
        .await
        .unwrap();
    answers.push(("POST /batches (a form with no task)".into(), res));
    let form = reqwest::multipart::Form::new()
        .text("pipeline", json!("nope").to_string())
        .part(
            "files",
            reqwest::multipart::Part::bytes(small_png(1)).file_name("a.png"),
        );
    let res = sys
        .http
        .post(sys.url("/api/batches"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    answers.push(("POST /api/batches (a bad pipeline)".into(), res));

    for (what, res) in answers {
        let h = res.headers();
        let header = |name: &str| {
            h.get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_else(|| panic!("{what}: no {name} header"))
        };
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ] {
            assert!(
                csp.contains(directive),
                "{what}: the CSP lacks {directive}: {csp}"
            );
        }
        for weak in ["unsafe-inline", "unsafe-eval", "*"] {
            assert!(!csp.contains(weak), "{what}: the CSP allows {weak}: {csp}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
        let status = res.status().as_u16();
        if status == 405 {
            // axum's empty "method not allowed"; nothing to type.
            continue;
        }
        let content_type = header("content-type");

        if what.ends_with("/download") {
            assert_eq!(status, 200);
            assert_eq!(content_type, "application/zip");
            let disposition = header("content-disposition");
            assert_eq!(
                disposition,
                format!("attachment; filename=\"watermarked-{}.zip\"", &id[..8])
            );
            assert!(header("cache-control").contains("no-store"), "{what}");
        } else if what.contains("/api/") || what.ends_with("z") {
            assert!(
                content_type.starts_with("application/json")
                    || content_type.starts_with("text/plain"),
                "{what}: {content_type}"
            );
        } else if what.ends_with(".js") {
            assert_eq!(content_type, "text/javascript; charset=utf-8");
        } else if what.ends_with(".css") {
            assert_eq!(content_type, "text/css; charset=utf-8");
        } else {
            assert_eq!(content_type, "text/html; charset=utf-8", "{what}");
            let html = res.text().await.unwrap();
            // What the CSP would block must not be needed: inline scripts, handlers, styles.
            for (i, _) in html.match_indices("<script") {
                let tag = &html[i..i + html[i..].find('>').unwrap()];
                assert!(
                    tag.contains(" src=\"/static/"),
                    "{what}: an inline script: {tag}"
                );
            }
            let lower = html.to_lowercase();
            for bad in [
                " onclick=",
                " onload=",
                " onerror=",
                " onsubmit=",
                " style=\"",
                "javascript:",
            ] {
                assert!(!lower.contains(bad), "{what}: the page uses {bad}");
            }
        }
    }
    sys.shutdown().await;
}
