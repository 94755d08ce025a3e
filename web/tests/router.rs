//! The router in-process (tower's `oneshot`, no server, no other process): how the form and the
//! API parse what they are sent, against the real Postgres, Redis and S3 that `scripts/test`
//! starts, with a database and a bucket of each test's own.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use clap::Parser;
use serde_json::Value;
use system_tests::Scratch;
use tower::ServiceExt;

const BOUNDARY: &str = "wmroutertest";

/// A router on a scratch database and bucket.
async fn app() -> (axum::Router, web::AppState, Scratch) {
    let scratch = Scratch::make().await.expect("a scratch database");
    let mut args = vec!["web".to_owned()];
    args.extend(scratch.args());
    let cli = web::Cli::try_parse_from(args).expect("settings");
    let state = web::AppState::connect(cli.settings)
        .await
        .expect("connects");
    state.storage.ensure_bucket().await.expect("the bucket");
    (web::router(state.clone()), state, scratch)
}

/// A multipart body of `parts` (name, file name, bytes), and its content type.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend(format!("--{BOUNDARY}\r\n").as_bytes());
        let disposition = match file {
            Some(f) => format!("form-data; name=\"{name}\"; filename=\"{f}\""),
            None => format!("form-data; name=\"{name}\""),
        };
        body.extend(format!("Content-Disposition: {disposition}\r\n\r\n").as_bytes());
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

async fn post(
    app: &axum::Router,
    path: &str,
    parts: &[(&str, Option<&str>, &[u8])],
) -> (StatusCode, String) {
    let (content_type, body) = multipart(parts);
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    answer(app, request).await
}

async fn get(app: &axum::Router, path: &str) -> (StatusCode, String) {
    answer(app, Request::get(path).body(Body::empty()).unwrap()).await
}

async fn answer(app: &axum::Router, request: Request<Body>) -> (StatusCode, String) {
    let res = app.clone().oneshot(request).await.expect("an answer");
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("a body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn png() -> Vec<u8> {
    let img = image::RgbaImage::from_pixel(8, 8, image::Rgba([10, 20, 30, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn batches(state: &web::AppState) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&state.db)
        .await
        .unwrap()
}

/// Bad submissions through the API are answered 400 or 413 with a JSON error naming the
/// problem, and leave no batch and no file.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_names_what_is_wrong_with_a_submission_and_stores_nothing() {
    let (app, state, scratch) = app().await;
    let png = png();
    for (what, parts, want, says) in [
        (
            "a pipeline that is not JSON",
            vec![
                ("pipeline", None, b"nope".as_slice()),
                ("files", Some("a.png"), &png),
            ],
            400,
            "pipeline",
        ),
        (
            "an unknown task",
            vec![
                ("pipeline", None, br#"[{"task":"sharpen"}]"#.as_slice()),
                ("files", Some("a.png"), &png),
            ],
            400,
            "sharpen",
        ),
        (
            "no files",
            vec![("pipeline", None, b"[]".as_slice())],
            400,
            "no files",
        ),
    ] {
        let (status, body) = post(&app, "/api/batches", &parts).await;
        assert_eq!(status.as_u16(), want, "{what}: {body}");
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: {body}"));
        let error = json["error"]["message"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{what}: {error}");
    }
    // Too many fields besides the files.
    let fields: Vec<(&str, Option<&str>, &[u8])> = (0..300)
        .map(|_| ("watermark.opacity", None, b"0.5".as_slice()))
        .collect();
    let (status, body) = post(&app, "/api/batches", &fields).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("too many fields"), "{body}");
    // A body that says it is over the limit is refused before it is read.
    let request = Request::post("/api/batches")
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        // Beyond MAX_BATCH_BYTES (10 GiB by default) and the framing of its files.
        .header(header::CONTENT_LENGTH, "20000000000")
        .body(Body::empty())
        .unwrap();
    let (status, body) = answer(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body.contains("MAX_BATCH_BYTES"), "{body}");

    assert_eq!(batches(&state).await, 0);
    assert_eq!(state.storage.list("").await.unwrap(), Vec::<String>::new());
    scratch.clean_up().await;
}

/// The form shows its problem in the page again (400), and a good submission is accepted: 202
/// with the batch's links through the API, 303 to the waiting page through the form.
#[tokio::test(flavor = "multi_thread")]
async fn the_form_and_the_api_accept_a_good_batch_and_the_form_shows_its_problems() {
    let (app, state, scratch) = app().await;
    let png = png();
    let (status, page) = post(
        &app,
        "/batches",
        &[("form", None, b"1"), ("files", Some("a.png"), &png)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");
    assert!(page.contains("<form"), "the form again: {page}");
    assert!(page.contains("choose at least one"), "{page}");
    assert_eq!(batches(&state).await, 0);

    let (status, body) = post(
        &app,
        "/api/batches",
        &[
            ("pipeline", None, br#"[{"task":"watermark","text":"ok"}]"#),
            ("files", Some("a.png"), &png),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    let id = json["id"].as_str().expect("an id");
    assert_eq!(json["status_url"], format!("/api/batches/{id}"));

    let (content_type, body) = multipart(&[
        ("form", None, b"1"),
        ("task", None, b"watermark"),
        ("files", Some("b.png"), &png),
    ]);
    let request = Request::post("/batches")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    let res = app.clone().oneshot(request).await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let location = res.headers()[header::LOCATION].to_str().unwrap();
    assert!(location.starts_with("/batches/"), "{location}");
    assert_eq!(batches(&state).await, 2);
    scratch.clean_up().await;
}

/// Reads: the task list as JSON, unknown ids and routes as 404 (JSON under /api, a page elsewhere).
#[tokio::test(flavor = "multi_thread")]
async fn reads_answer_json_under_api_and_pages_elsewhere() {
    let (app, _state, scratch) = app().await;
    let (status, body) = get(&app, "/api/tasks").await;
    assert_eq!(status, StatusCode::OK);
    let tasks: Value = serde_json::from_str(&body).unwrap();
    assert!(body.contains("\"watermark\""), "{tasks}");
    let (status, body) = get(&app, "/api/batches/not-an-id").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "{body}");
    let (status, body) = get(&app, "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("<html"), "{body}");
    scratch.clean_up().await;
}

/// Every `/api` error is `{"error": {"code", "message"}}`: unknown paths and methods, a body
/// that is not multipart, a query that does not parse, and the download when asked for JSON.
#[tokio::test(flavor = "multi_thread")]
async fn every_api_error_is_json_with_a_code_and_a_message() {
    let (app, _state, scratch) = app().await;
    let unknown = uuid_like();
    let not_multipart = Request::post("/api/batches")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let wrong_method = Request::delete("/api/tasks").body(Body::empty()).unwrap();
    let bad_query = Request::get(format!("/api/batches/{unknown}?images=maybe"))
        .body(Body::empty())
        .unwrap();
    let download = Request::get(format!("/batches/{unknown}/download"))
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())
        .unwrap();
    let nowhere = Request::get("/api/nowhere").body(Body::empty()).unwrap();
    let events = Request::get(format!("/api/batches/{unknown}/events"))
        .body(Body::empty())
        .unwrap();
    for (what, request, want, code) in [
        ("an unknown API path", nowhere, 404, "no_such_route"),
        (
            "a method the path does not take",
            wrong_method,
            405,
            "method_not_allowed",
        ),
        (
            "a body that is not multipart",
            not_multipart,
            400,
            "bad_request",
        ),
        ("a query that does not parse", bad_query, 400, "bad_request"),
        (
            "the download of an unknown batch, as JSON",
            download,
            404,
            "not_found",
        ),
        ("the events of an unknown batch", events, 404, "not_found"),
    ] {
        let (status, body) = answer(&app, request).await;
        assert_eq!(status.as_u16(), want, "{what}: {body}");
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what} is not JSON: {body}"));
        assert_eq!(json["error"]["code"], code, "{what}: {json}");
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: {json}");
    }
    // The download asked for by a browser still answers a page.
    let (status, body) = get(&app, &format!("/batches/{unknown}/download")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("<html"), "{body}");
    scratch.clean_up().await;
}

/// A well-formed id that no batch has.
fn uuid_like() -> String {
    "0b6f2a9e-6c1d-4d61-9f0e-2f1d6c1f0a00".into()
}

/// An API error's message (`{"error": {"code": "…", "message": "…"}}`).
fn error_message(body: &str) -> String {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    json["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {body}"))
        .to_owned()
}

/// The next event of a Server-Sent Events body (comments, such as keep-alives, skipped), within
/// `limit`: its name and data; `None` when the stream ends.
async fn next_event(
    body: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    buffer: &mut String,
    limit: std::time::Duration,
) -> Option<(String, String)> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if name.is_empty() && data.is_empty() {
                continue; // a comment or a retry line
            }
            return Some((name, data));
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .unwrap_or_else(|_| panic!("no event within {limit:?}; so far: {buffer:?}"))?;
        buffer.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
    }
}

/// The live stream: the status at once, then each change as Postgres notifies it (well before
/// the fallback would look), and the end after a final status; 404 unknown, 410 expired.
#[tokio::test(flavor = "multi_thread")]
async fn the_stream_sends_the_status_at_once_then_each_change_until_final() {
    let (app, state, scratch) = app().await;
    let unknown = format!("/api/batches/{}/stream", uuid_like());
    let (status, body) = get(&app, &unknown).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(!error_message(&body).is_empty());

    let png = png();
    let (status, body) = post(
        &app,
        "/api/batches",
        &[
            ("pipeline", None, br#"[{"task":"grayscale"}]"#),
            ("files", Some("a.png"), &png),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The listening connection is made when the state is.
    let started = std::time::Instant::now();
    while !state.live.listening() {
        assert!(started.elapsed().as_secs() < 10, "not listening after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let request = Request::get(format!("/api/batches/{id}/stream"))
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(request).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(res.headers()["x-accel-buffering"], "no");
    let mut body = res.into_body().into_data_stream();
    let mut buffer = String::new();
    let second = std::time::Duration::from_secs(1);
    let (name, data) = next_event(&mut body, &mut buffer, second)
        .await
        .expect("a first event");
    assert_eq!(name, "status");
    let first: Value = serde_json::from_str(&data).unwrap();
    let (_, api) = get(&app, &format!("/api/batches/{id}")).await;
    assert_eq!(
        first,
        serde_json::from_str::<Value>(&api).unwrap(),
        "the API's JSON"
    );
    assert_eq!(first["status"], "queued");

    // A change, told by the trigger's NOTIFY: here within a second, where the fallback would
    // take three.
    let set = |status: &'static str| {
        let db = state.db.clone();
        let id = id.clone();
        async move {
            sqlx::query("UPDATE batches SET status = $2 WHERE id = $1::uuid")
                .bind(id)
                .bind(status)
                .execute(&db)
                .await
                .expect("the update")
        }
    };
    set("processing").await;
    let (_, data) = next_event(&mut body, &mut buffer, second)
        .await
        .expect("the change");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["status"],
        "processing"
    );
    assert_eq!(state.live.followed(), 1);

    // A final status is the last event.
    set("failed").await;
    let (_, data) = next_event(&mut body, &mut buffer, second)
        .await
        .expect("the end");
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["status"],
        "failed"
    );
    assert_eq!(
        next_event(&mut body, &mut buffer, second).await,
        None,
        "the stream ends"
    );
    drop(body);
    assert_eq!(
        state.live.followed(),
        0,
        "nothing kept for a stream that ended"
    );

    set("expired").await;
    let (status, body) = get(&app, &format!("/api/batches/{id}/stream")).await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(error_message(&body).contains("expired"), "{body}");
    scratch.clean_up().await;
}

/// The preview draws the choices (the form's or a pipeline) on the sample photo or on the image
/// sent, answers the image uncached, and refuses what is over its limits; nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn the_preview_draws_the_choices_on_the_sample_or_the_image_sent() {
    let (app, state, scratch) = app().await;
    let request = |parts: &[(&str, Option<&str>, &[u8])]| {
        let (content_type, body) = multipart(parts);
        Request::post("/api/preview")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap()
    };
    let image_of = |res: axum::response::Response| async move {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
        let content_type = res.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = axum::body::to_bytes(res.into_body(), 8 << 20)
            .await
            .unwrap();
        (
            content_type,
            image::load_from_memory(&bytes).expect("an image"),
        )
    };

    // The form's choices on the sample photo; another opacity draws another picture.
    let form =
        |opacity: &'static [u8]| -> Vec<(&'static str, Option<&'static str>, &'static [u8])> {
            vec![
                ("form", None, b"1"),
                ("task", None, b"watermark"),
                ("watermark.position", None, b"tiled"),
                ("watermark.opacity", None, opacity),
            ]
        };
    let res = app.clone().oneshot(request(&form(b"0.5"))).await.unwrap();
    let (content_type, half) = image_of(res).await;
    assert_eq!(content_type, "image/jpeg");
    assert_eq!((half.width(), half.height()), web::preview::SAMPLE_SIZE);
    let res = app.clone().oneshot(request(&form(b"1"))).await.unwrap();
    let (_, full) = image_of(res).await;
    assert_ne!(
        half.to_rgb8().into_raw(),
        full.to_rgb8().into_raw(),
        "the opacity shows"
    );

    // A pipeline on an image sent: its size and format, and the grey of the grayscale task.
    let colour = system_tests::images::flat_png(300, 200, [200, 40, 40, 255]);
    let res = app
        .clone()
        .oneshot(request(&[
            ("pipeline", None, br#"[{"task":"grayscale"}]"#),
            ("image", Some("copy.png"), &colour),
        ]))
        .await
        .unwrap();
    let (content_type, grey) = image_of(res).await;
    assert_eq!(content_type, "image/png");
    assert_eq!((grey.width(), grey.height()), (300, 200));
    let p = grey.to_rgb8().get_pixel(150, 100).0;
    assert!(p[0] == p[1] && p[1] == p[2], "grey: {p:?}");

    // Refusals, named.
    let big = system_tests::images::png_declaring(3000, 2000);
    let huge = vec![0u8; web::preview::MAX_IMAGE_BYTES + 1];
    for (what, parts, want, says) in [
        (
            "no task ticked",
            vec![("form", None, b"1".as_slice())],
            400,
            "at least one",
        ),
        (
            "a bad parameter",
            vec![(
                "pipeline",
                None,
                br#"[{"task":"watermark","opacity":7}]"#.as_slice(),
            )],
            400,
            "opacity",
        ),
        (
            "not an image",
            vec![("image", Some("a.txt"), b"plain words".as_slice())],
            400,
            "not an image",
        ),
        (
            "too many pixels",
            vec![("image", Some("big.png"), &big[..])],
            413,
            "pixels",
        ),
        (
            "too many bytes",
            vec![("image", Some("huge.png"), &huge[..])],
            413,
            "limit",
        ),
    ] {
        let (status, body) = answer(&app, request(&parts)).await;
        assert_eq!(status.as_u16(), want, "{what}: {body}");
        assert!(error_message(&body).contains(says), "{what}: {body}");
    }
    assert_eq!(batches(&state).await, 0);
    assert_eq!(state.storage.list("").await.unwrap(), Vec::<String>::new());
    scratch.clean_up().await;
}

/// The form offers only the types we read and gives the script its limits; the waiting page
/// announces its status, labels its progress bar and reloads itself without JavaScript until the
/// batch is final.
#[tokio::test(flavor = "multi_thread")]
async fn the_pages_carry_what_the_script_and_assistive_technology_need() {
    let (app, state, scratch) = app().await;
    let (status, page) = get(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!("accept=\"{}\"", web::pages::accept_list())),
        "{page}"
    );
    assert!(!page.contains("image/*"), "only the types we read: {page}");
    for wanted in ["image/jpeg", ".jpeg", "image/tiff", ".tif", "image/webp"] {
        assert!(
            web::pages::accept_list().split(',').any(|a| a == wanted),
            "{wanted}"
        );
    }
    let max_files = format!("data-max-files=\"{}\"", state.settings.max_files_per_batch);
    assert!(page.contains(&max_files), "{page}");
    assert!(page.contains("data-max-file-bytes=") && page.contains("data-max-batch-bytes="));

    let png = png();
    let (_, body) = post(&app, "/api/batches", &[("files", Some("a.png"), &png)]).await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, page) = get(&app, &format!("/batches/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(r#"<noscript><meta http-equiv="refresh" content="3"></noscript>"#),
        "{page}"
    );
    assert!(
        page.contains(r#"role="status" aria-live="polite""#),
        "{page}"
    );
    assert!(page.contains(r#"<label for="progress""#), "{page}");
    assert!(page.contains(r#"<details id="events""#), "{page}");
    sqlx::query("UPDATE batches SET status = 'failed', error = 'test' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&state.db)
        .await
        .unwrap();
    let (_, page) = get(&app, &format!("/batches/{id}")).await;
    assert!(
        !page.contains("http-equiv=\"refresh\""),
        "a final page stays: {page}"
    );
    scratch.clean_up().await;
}

/// Every route of the API, as the router has them: the OpenAPI document must describe each.
const API_ROUTES: [(&str, &str); 20] = [
    ("post", "/api/batches"),
    ("post", "/api/batches/open"),
    ("put", "/api/batches/{id}/files/{file_id}"),
    ("post", "/api/batches/{id}/close"),
    ("get", "/api/batches/{id}/images"),
    ("get", "/api/batches/{id}"),
    ("post", "/api/batches/{id}/cancel"),
    ("get", "/api/batches/{id}/events"),
    ("get", "/api/batches/{id}/stream"),
    ("post", "/api/preview"),
    ("get", "/api/tasks"),
    ("get", "/api/usage"),
    ("get", "/api/stats"),
    ("get", "/api/monitor"),
    ("get", "/batches/{id}/download"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    // The document and its page: routed, and not described by the document itself.
    ("get", "/api/openapi.json"),
    ("get", "/api/docs"),
];

/// The OpenAPI document: version 3.1, every API route, every error answer the one `ErrorBody`,
/// every 503 with `Retry-After`, and each path it names is one the router takes.
#[tokio::test(flavor = "multi_thread")]
async fn the_openapi_document_describes_every_api_route_and_its_errors() {
    let (app, _state, scratch) = app().await;
    let res = app
        .clone()
        .oneshot(
            Request::get("/api/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 22)
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&bytes).expect("JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Watermark API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().expect("paths");
    for (method, path) in API_ROUTES {
        let own = path == "/api/openapi.json" || path == "/api/docs";
        assert_eq!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            !own,
            "{method} {path} in the document"
        );
    }
    let schemas = &doc["components"]["schemas"];
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item") {
            operations += 1;
            assert!(
                API_ROUTES.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is described but not in the test's list of routes"
            );
            assert!(
                !op["summary"].as_str().unwrap_or_default().is_empty(),
                "{method} {path}: no summary"
            );
            // The router takes it: a placeholder id gets the route's own answer, never the
            // fallback's.
            let concrete = path
                .replace("{id}", &uuid_like())
                .replace("{file_id}", "f1");
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .body(Body::empty())
                .unwrap();
            let (status, body) = answer(&app, request).await;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
            assert!(
                !body.contains("no_such_route")
                    || path.contains("monitor")
                    || path.contains("stats"),
                "{method} {path} is not routed: {body}"
            );
            for (code, response) in op["responses"].as_object().expect("responses") {
                let code: u16 = code.parse().expect("a status");
                // /readyz's 503 is its probe, the same shape as its 200, not an error.
                if code < 400 || path == "/readyz" {
                    continue;
                }
                assert_eq!(
                    response["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {code}: {response}"
                );
                if code == 503 {
                    assert!(
                        response["headers"]["Retry-After"].is_object(),
                        "{method} {path} 503 without Retry-After: {response}"
                    );
                }
            }
        }
    }
    assert_eq!(operations, API_ROUTES.len() - 2, "one operation per route");
    // The one error shape, with its codes; the monitor's token; the tasks in the pipeline field.
    let description = schemas["ErrorBody"]["description"]
        .as_str()
        .unwrap_or_default();
    for code in [
        "bad_request",
        "not_found",
        "no_such_route",
        "expired",
        "busy",
        "unavailable",
    ] {
        assert!(description.contains(&format!("`{code}`")), "{description}");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["monitor token"]["scheme"],
        "bearer"
    );
    assert_eq!(
        doc["paths"]["/api/stats"]["get"]["security"][0]["monitor token"],
        serde_json::json!([])
    );
    let form = &schemas["BatchForm"]["properties"];
    let pipeline = form["pipeline"]["description"].as_str().unwrap_or_default();
    for task in jobs::tasks::catalogue() {
        assert!(pipeline.contains(&format!("`{}`", task.name)), "{pipeline}");
        for param in task.params {
            assert!(
                pipeline.contains(&format!("`{}`", param.name)),
                "{pipeline}"
            );
            assert!(
                form.get(format!("{}.{}", task.name, param.name)).is_some(),
                "{form}"
            );
        }
    }
    assert_eq!(form["files"]["type"], "array", "{form}");
    assert!(form["callback_url"].is_object(), "{form}");
    // Every reference points at a schema the document has.
    let text = doc.to_string();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = &part[..part.find('"').unwrap()];
        assert!(
            schemas.get(name).is_some(),
            "a reference to a missing schema {name}"
        );
    }
    scratch.clean_up().await;
}

/// The API's errors have exactly the shape `ErrorBody` describes.
#[tokio::test(flavor = "multi_thread")]
async fn api_errors_match_the_documented_error_body() {
    let (app, _state, scratch) = app().await;
    let (_, doc) = get(&app, "/api/openapi.json").await;
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let schemas = &doc["components"]["schemas"];
    let keys = |schema: &Value| -> Vec<String> {
        let mut keys: Vec<String> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    };
    let required = |schema: &Value| -> Vec<String> {
        schema["required"]
            .as_array()
            .map(|r| r.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let body_schema = &schemas["ErrorBody"];
    assert_eq!(
        body_schema["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail_schema = &schemas["ErrorDetail"];
    assert_eq!(keys(detail_schema), ["code", "message"]);
    assert_eq!(required(detail_schema), ["code", "message"]);
    assert_eq!(required(body_schema), ["error"]);
    let (status, body) = get(&app, &format!("/api/batches/{}", uuid_like())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let json: Value = serde_json::from_str(&body).unwrap();
    let object = json.as_object().expect("an object");
    assert_eq!(object.keys().collect::<Vec<_>>(), ["error"], "{json}");
    let detail = json["error"].as_object().expect("error is an object");
    let mut detail_keys: Vec<&String> = detail.keys().collect();
    detail_keys.sort();
    assert_eq!(detail_keys, ["code", "message"], "{json}");
    assert!(detail.values().all(Value::is_string), "{json}");
    assert_eq!(json["error"]["code"], "not_found");
    // Other errors: every key one the schema has, and the code one it lists.
    let description = body_schema["description"].as_str().unwrap();
    for path in ["/api/nowhere", "/api/batches/x?images=maybe", "/api/stats"] {
        let (_, body) = get(&app, path).await;
        let json: Value = serde_json::from_str(&body).unwrap();
        for key in json.as_object().unwrap().keys() {
            assert!(keys(body_schema).contains(key), "{path}: {json}");
        }
        let code = json["error"]["code"].as_str().unwrap();
        assert!(description.contains(&format!("`{code}`")), "{path}: {code}");
    }
    scratch.clean_up().await;
}

/// `/api/docs`: the document as a page, with each path, nothing from elsewhere and no inline
/// script or style.
#[tokio::test(flavor = "multi_thread")]
async fn the_api_docs_page_shows_every_path_and_loads_nothing_from_elsewhere() {
    let (app, _state, scratch) = app().await;
    let (status, page) = get(&app, "/api/docs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<html"), "{page}");
    for (method, path) in API_ROUTES {
        if path == "/api/openapi.json" || path == "/api/docs" {
            continue;
        }
        assert!(
            page.contains(&format!("{} {path}", method.to_uppercase())),
            "{method} {path} not on the page"
        );
    }
    for shown in [
        "href=\"/api/openapi.json\"",
        "ErrorBody",
        "Retry-After",
        "multipart/form-data",
        "text/event-stream",
        "application/zip",
        "watermark.opacity",
        "callback_url",
        "Bearer",
    ] {
        assert!(page.contains(shown), "{shown} not on the page");
    }
    for attribute in ["src=", "href="] {
        for part in page.split(attribute).skip(1) {
            let target = part.trim_start_matches(['"', '\'']);
            assert!(
                target.starts_with('/') || target.starts_with('#'),
                "{attribute}{} points elsewhere",
                &target[..target.len().min(60)]
            );
        }
    }
    assert!(!page.contains("style="), "an inline style attribute");
    assert!(!page.contains("<style"), "an inline style sheet");
    assert!(
        page.matches("<script").count() == page.matches("<script src=\"/static/").count(),
        "an inline script"
    );
    scratch.clean_up().await;
}
