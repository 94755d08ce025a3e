//! The whole system, end to end, through the real binaries and services.

use std::io::Read;
use std::time::{Duration, Instant};

use image::{GenericImageView, ImageFormat};
use serde_json::json;
use system_tests::images::{exif_rotated_jpeg, flat_jpeg, flat_png, photo_jpeg};
use system_tests::{Options, System};

fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).expect("entry");
            let mut data = Vec::new();
            f.read_to_end(&mut data).expect("read");
            (f.name().expect("a UTF-8 name").to_string(), data)
        })
        .collect()
}

/// Pixels of `img` that differ from `color` by more than `tolerance` on some channel.
fn differs(px: [u8; 3], color: [u8; 3], tolerance: u8) -> bool {
    px.iter().zip(color).any(|(a, b)| a.abs_diff(b) > tolerance)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_goes_from_upload_to_zip_with_the_watermark_where_it_belongs() {
    let sys = System::start("upload-to-zip", Options::default())
        .await
        .expect("system starts");
    let grey = [120, 120, 120];
    let files = vec![
        ("landscape.jpg", flat_jpeg(640, 400, grey)),
        ("IMG_0001.JPG", flat_jpeg(300, 500, grey)),
        ("rotated.jpg", exif_rotated_jpeg(320, 200, grey)),
        ("transparent.png", flat_png(400, 400, [120, 120, 120, 255])),
        ("photo.png", flat_png(500, 300, [120, 120, 120, 255])),
        ("photo.png", flat_png(200, 200, [120, 120, 120, 255])),
        (
            "notes.jpg",
            b"this is a text file pretending to be a photo".repeat(20),
        ),
    ];
    // The mark in the bottom-right corner: 25 % of the width, 5 % of the shorter side from the edges.
    let pipeline = json!([{"task": "watermark", "position": "bottom-right", "opacity": 1.0, "scale": 0.25, "margin": 0.05}]);
    let id = sys
        .submit_ok(&files, Some(&pipeline))
        .await
        .expect("accepted");

    let status = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["total"], 7);
    assert_eq!(status["done"], 6);
    assert_eq!(status["failed"], 1);
    let broken = &status["images"][6];
    assert_eq!(broken["name"], "notes.jpg");
    assert_eq!(broken["status"], "failed");
    assert!(
        broken["error"].as_str().unwrap().contains("not an image"),
        "{broken}"
    );
    assert_eq!(status["download_url"], format!("/batches/{id}/download"));
    assert!(status["expires_at"].is_string());

    let (code, zip) = sys.download(&id).await.expect("download");
    assert_eq!(code, 200);
    let entries = unzip(&zip);
    let names: Vec<_> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "landscape.jpg",
            "IMG_0001.JPG",
            "rotated.jpg",
            "transparent.png",
            "photo.png",
            "photo (2).png",
            "FAILED-FILES.txt"
        ]
    );
    let expected = [
        ("landscape.jpg", ImageFormat::Jpeg, (640, 400)),
        ("IMG_0001.JPG", ImageFormat::Jpeg, (300, 500)),
        ("rotated.jpg", ImageFormat::Jpeg, (200, 320)), // EXIF orientation applied
        ("transparent.png", ImageFormat::Png, (400, 400)),
        ("photo.png", ImageFormat::Png, (500, 300)),
        ("photo (2).png", ImageFormat::Png, (200, 200)),
    ];
    for ((name, format, (w, h)), (entry, data)) in expected.iter().zip(&entries) {
        assert_eq!(name, entry);
        assert_eq!(
            image::guess_format(data).expect("an image"),
            *format,
            "{name}"
        );
        let img = image::load_from_memory(data).expect("decodes");
        assert_eq!(img.dimensions(), (*w, *h), "{name}");

        // Changed inside the bottom-right box that holds the mark, unchanged everywhere else.
        let rgb = img.to_rgb8();
        let margin = (0.05 * (*w).min(*h) as f64).round() as u32;
        let mark_w = (0.25 * *w as f64).round() as u32;
        let (x0, y0) = (w - margin - mark_w, h - margin - mark_w);
        // JPEG's 8 × 8 blocks (16 × 16 with chroma subsampling) carry a little of the mark
        // beyond its edge: allow one block of slack there, and a few levels of noise elsewhere.
        let (tolerance, slack) = if *format == ImageFormat::Png {
            (0, 2)
        } else {
            (6, 16)
        };
        let mut inside_changed = 0;
        for (x, y, px) in rgb.enumerate_pixels() {
            let inside = x + slack >= x0
                && y + slack >= y0
                && x < w - margin + slack
                && y < h - margin + slack;
            if inside {
                inside_changed += differs(px.0, grey, 30) as u32;
            } else {
                assert!(
                    !differs(px.0, grey, tolerance),
                    "{name}: pixel ({x},{y}) = {:?} changed outside the mark",
                    px.0
                );
            }
        }
        assert!(
            inside_changed > mark_w,
            "{name}: only {inside_changed} pixels of the mark changed"
        );
    }
    let report = String::from_utf8(entries.last().unwrap().1.clone()).expect("text");
    assert!(report.contains("notes.jpg: not an image"), "{report}");

    // The page shows the same, and the file names are escaped.
    let page = sys
        .http
        .get(sys.url(&format!("/batches/{id}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("notes.jpg") && page.contains("Download the zip"),
        "{page}"
    );
    // Its event log is on the page, folded, without the script's help.
    assert!(
        page.contains("<span class=\"kind\">zip ready</span>")
            && page.contains("<span class=\"kind\">failed</span>: notes.jpg"),
        "{page}"
    );

    // The event log tells the batch's story: received, each image started and done by the
    // worker on its first attempt (the text file refused at upload), archived, downloaded.
    let (code, log) = sys
        .get_json(&format!("/api/batches/{id}/events"))
        .await
        .expect("events");
    assert_eq!(code, 200, "{log}");
    let events = log["events"].as_array().expect("a list");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    let count = |kind: &str| kinds.iter().filter(|k| **k == kind).count();
    assert_eq!(count("batch.uploaded"), 1, "{kinds:?}");
    assert_eq!(count("image.started"), 6, "{kinds:?}");
    assert_eq!(count("image.done"), 6, "{kinds:?}");
    assert_eq!(count("image.failed"), 1, "{kinds:?}");
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["batch.archived", "batch.downloaded"]
    );
    for e in events.iter().filter(|e| e["kind"] == "image.started") {
        assert_eq!(e["worker"], "worker-a", "{e}");
        assert_eq!(e["attempt"], 1, "{e}");
        assert!(e["image"].is_string(), "{e}");
    }
    let refused = events.iter().find(|e| e["kind"] == "image.failed").unwrap();
    assert_eq!(refused["image"], "notes.jpg");
    assert!(
        refused["detail"].as_str().unwrap().contains("not an image"),
        "{refused}"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_purge_deletes_every_object_after_the_ttl_and_the_batch_answers_410() {
    let sys = System::start(
        "purge",
        Options::default()
            .env("RESULT_TTL_SECONDS", 2)
            .env("PURGE_SCHEDULE", "* * * * * *"),
    )
    .await
    .expect("system starts");
    let id = sys
        .submit_ok(
            &[
                ("a.jpg", photo_jpeg(320, 240, 1)),
                ("b.png", flat_png(64, 64, [1, 2, 3, 255])),
            ],
            None,
        )
        .await
        .expect("accepted");
    let status = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(status["status"], "done");
    let objects = sys.objects().await.unwrap();
    assert_eq!(
        objects.len(),
        4,
        "two originals and two results; no zip is stored: {objects:?}"
    );

    let started = Instant::now();
    let (code, gone) = loop {
        let (code, body) = sys.status(&id).await.unwrap();
        if code == 410 || started.elapsed() > Duration::from_secs(30) {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 410, "the batch never expired");
    // The answer says how long files are kept: RESULT_TTL_SECONDS, not a fixed hour.
    assert!(
        gone["error"]["message"]
            .as_str()
            .is_some_and(|e| e.contains("deleted 2 seconds after it finished")),
        "{gone}"
    );
    assert_eq!(
        sys.objects().await.unwrap(),
        Vec::<String>::new(),
        "objects left after the purge"
    );
    let (code, _) = sys.download(&id).await.unwrap();
    assert_eq!(code, 410);
    let page = sys
        .http
        .get(sys.url(&format!("/batches/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 410);
    let page = page.text().await.unwrap();
    assert!(page.contains("has expired"), "{page}");
    assert!(
        page.contains("deleted 2 seconds after it finished"),
        "{page}"
    );
    assert!(
        page.contains("Files are deleted 2 seconds after a batch is finished."),
        "{page}"
    );
    let purged = sys
        .count("SELECT count(*) FROM batches WHERE status = 'expired'")
        .await;
    assert_eq!(purged, 1);
    // The log of an expired batch stays readable, and ends with its expiry.
    let (code, log) = sys
        .get_json(&format!("/api/batches/{id}/events"))
        .await
        .expect("events");
    assert_eq!(code, 200, "{log}");
    let last = log["events"].as_array().and_then(|e| e.last()).cloned();
    assert_eq!(
        last.map(|e| e["kind"].clone()),
        Some(json!("batch.expired"))
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_worker_processes_share_a_batch_of_twenty() {
    let sys = System::start(
        "two-workers",
        Options::default()
            .workers(&["worker-a", "worker-b"])
            .env("WORKER_CONCURRENCY", 1),
    )
    .await
    .expect("system starts");
    let files: Vec<_> = (0..20)
        .map(|i| (format!("p{i:02}.jpg"), photo_jpeg(1600, 1200, i)))
        .collect();
    let files: Vec<_> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let submitted = Instant::now();
    let id = sys.submit_ok(&files, None).await.expect("accepted");
    let status = sys
        .wait_final(&id, Duration::from_secs(120))
        .await
        .expect("finishes");
    let elapsed = submitted.elapsed();
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["done"], 20);

    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT processed_by, count(*) FROM images WHERE status = 'done' GROUP BY processed_by ORDER BY 1",
    )
    .fetch_all(&sys.db)
    .await
    .unwrap();
    eprintln!("20 images of 1.9 MP with two workers: {elapsed:?}; split {rows:?}");
    let names: Vec<_> = rows.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["worker-a", "worker-b"],
        "both workers take part: {rows:?}"
    );
    assert_eq!(rows.iter().map(|(_, c)| c).sum::<i64>(), 20);
    let (_, zip) = sys.download(&id).await.unwrap();
    assert_eq!(unzip(&zip).len(), 20);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_form_redirects_to_a_page_that_escapes_file_names() {
    let sys = System::start("form", Options::default())
        .await
        .expect("system starts");
    let form = sys
        .http
        .get(sys.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The form is generated from the registry.
    for field in [
        "name=\"task\" value=\"watermark\" checked",
        "watermark.opacity",
        "resize.max_width",
        "value=\"grayscale\"",
    ] {
        assert!(form.contains(field), "the form lacks {field}");
    }
    let hostile = "<script>alert(1)</script>.png";
    let res = sys
        .submit_form(
            &[
                ("task", "watermark"),
                ("watermark.position", "top-left"),
                ("watermark.opacity", "0.8"),
                ("watermark.text", "© Test"),
                ("task", "grayscale"),
            ],
            &[(hostile, flat_png(50, 40, [9, 9, 9, 255]))],
        )
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 303);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let id = location
        .strip_prefix("/batches/")
        .expect("a batch page")
        .to_owned();
    let status = sys.wait_final(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(status["status"], "done");
    let stored: serde_json::Value = sqlx::query_scalar("SELECT pipeline FROM batches")
        .fetch_one(&sys.db)
        .await
        .unwrap();
    assert_eq!(stored[0]["task"], "watermark");
    assert_eq!(stored[0]["opacity"], 0.8);
    assert_eq!(stored[0]["text"], "© Test");
    assert_eq!(stored[1]["task"], "grayscale");

    let page = sys
        .http
        .get(sys.url(&location))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>alert(1)"),
        "the name is not escaped"
    );
    assert!(
        page.contains("&#60;script&#62;alert(1)&#60;/script&#62;.png")
            || page.contains("&lt;script&gt;alert(1)&lt;/script&gt;.png"),
        "{page}"
    );
    let (_, zip) = sys.download(&id).await.unwrap();
    let entries = unzip(&zip);
    assert_eq!(entries[0].0, "script_.png");
    let img = image::load_from_memory(&entries[0].1).unwrap();
    assert!(
        !img.color().has_color(),
        "grayscale ran after the watermark"
    );

    // A bad parameter comes back as the form with the problem, and creates nothing.
    let res = sys
        .submit_form(
            &[("task", "watermark"), ("watermark.opacity", "7")],
            &[("x.png", flat_png(5, 5, [9, 9, 9, 255]))],
        )
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("watermark.opacity: must be between 0 and 1"));
    let batches = sys.count("SELECT count(*) FROM batches").await;
    assert_eq!(batches, 1);
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_and_limits_get_clear_answers_and_leave_nothing_behind() {
    let sys = System::start(
        "limits",
        Options::default()
            .env("MAX_FILES_PER_BATCH", 3)
            .env("MAX_FILE_BYTES", 20_000)
            .env("MAX_BATCH_BYTES", 200_000),
    )
    .await
    .expect("system starts");
    let small = || flat_jpeg(40, 40, [1, 2, 3]);

    let (code, body) = sys
        .submit(&[("a.jpg", small())], Some(&json!([{"task": "sharpen"}])))
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown task \"sharpen\""),
        "{body}"
    );
    let (code, body) = sys
        .submit(
            &[("a.jpg", small())],
            Some(&json!([{"task": "watermark", "opacity": -1}])),
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("opacity"),
        "{body}"
    );
    let (code, body) = sys.submit(&[], None).await.unwrap();
    assert_eq!(code, 400, "{body}");

    let four: Vec<_> = (0..4)
        .map(|i| (["a.jpg", "b.jpg", "c.jpg", "d.jpg"][i], small()))
        .collect();
    let (code, body) = sys.submit(&four, None).await.unwrap();
    assert_eq!(code, 413);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MAX_FILES_PER_BATCH"),
        "{body}"
    );

    let big = photo_jpeg(700, 700, 3);
    assert!(big.len() > 20_000);
    let (code, body) = sys
        .submit(
            &[
                ("big.jpg", big.clone()),
                ("b.jpg", big.clone()),
                ("c.jpg", big.clone()),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(code, 413, "over MAX_BATCH_BYTES: {body}");

    // Refused requests leave no rows and no objects.
    let batches = sys.count("SELECT count(*) FROM batches").await;
    assert_eq!(batches, 0);
    assert_eq!(sys.objects().await.unwrap(), Vec::<String>::new());

    // One file over MAX_FILE_BYTES fails alone; the other is processed.
    let id = sys
        .submit_ok(&[("big.jpg", big), ("ok.jpg", small())], None)
        .await
        .unwrap();
    let status = sys.wait_final(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(status["status"], "done");
    assert_eq!(status["images"][0]["status"], "failed");
    assert!(
        status["images"][0]["error"]
            .as_str()
            .unwrap()
            .contains("MAX_FILE_BYTES"),
        "{status}"
    );
    assert_eq!(status["images"][1]["status"], "done");
    let objects = sys.objects().await.unwrap();
    let originals = objects.iter().filter(|k| k.contains("/in/")).count();
    assert_eq!(
        originals, 1,
        "only the accepted file's original is stored: {objects:?}"
    );
    assert_eq!(
        objects.len(),
        2,
        "the refused file was not stored (one original, one result): {objects:?}"
    );
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_tasks_and_unknown_batches() {
    let sys = System::start("api", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let res = sys.http.get(sys.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let ready: serde_json::Value = sys
        .http
        .get(sys.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready, json!({"postgres": "ok", "redis": "ok", "s3": "ok"}));

    let tasks: serde_json::Value = sys
        .http
        .get(sys.url("/api/tasks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<_> = tasks["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["watermark", "resize", "grayscale"]);
    let opacity = tasks["tasks"][0]["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "opacity")
        .unwrap();
    assert_eq!(opacity["type"], "float");
    assert_eq!(opacity["default"], 0.5);
    assert_eq!(opacity["min"], 0.0);
    assert_eq!(opacity["max"], 1.0);

    for id in [uuid::Uuid::new_v4().to_string(), "not-a-uuid".into()] {
        let (code, body) = sys.status(&id).await.unwrap();
        assert_eq!(code, 404, "{body}");
        let page = sys
            .http
            .get(sys.url(&format!("/batches/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status().as_u16(), 404);
    }
    // With no worker running, a batch waits in `queued`; the zip is not offered yet.
    let id = sys
        .submit_ok(&[("a.jpg", flat_jpeg(10, 10, [0, 0, 0]))], None)
        .await
        .unwrap();
    let (code, body) = sys.status(&id).await.unwrap();
    assert_eq!((code, body["status"].as_str()), (200, Some("queued")));
    let (code, _) = sys.download(&id).await.unwrap();
    assert_eq!(code, 409);
    sys.shutdown().await;
}

/// `POST /api/batches` with files, a pipeline and a logo part; the answer's status and JSON.
async fn submit_with_logo(
    sys: &System,
    files: &[(&str, Vec<u8>)],
    pipeline: &serde_json::Value,
    logo: Vec<u8>,
) -> (u16, serde_json::Value) {
    // The choices and the logo first, as the API documents.
    let mut form = reqwest::multipart::Form::new()
        .text("pipeline", pipeline.to_string())
        .part(
            "logo",
            reqwest::multipart::Part::bytes(logo).file_name("logo.png"),
        );
    for (name, bytes) in files {
        form = form.part(
            "files",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_string()),
        );
    }
    let res = sys
        .http
        .post(sys.url("/api/batches"))
        .multipart(form)
        .send()
        .await
        .expect("answers");
    let status = res.status().as_u16();
    (status, res.json().await.expect("JSON"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uploaded_logo_is_drawn_and_a_logo_that_is_not_an_image_is_refused() {
    // One image at a time, so that both batches below go through the same image child.
    let sys = System::start(
        "custom-logo",
        Options::default().env("WORKER_CONCURRENCY", 1),
    )
    .await
    .expect("system starts");
    let grey = [120, 120, 120];
    let pipeline = json!([{"task": "watermark", "position": "bottom-right", "opacity": 1.0, "scale": 0.25, "margin": 0.05}]);
    let red_logo = flat_png(40, 20, [230, 20, 20, 255]);
    let (code, body) = submit_with_logo(
        &sys,
        &[("photo.png", flat_png(400, 300, [120, 120, 120, 255]))],
        &pipeline,
        red_logo,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let status = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(status["status"], "done", "{status}");
    let (_, zip) = sys.download(&id).await.expect("downloads");
    let entries = unzip(&zip);
    let img = image::load_from_memory(&entries[0].1)
        .expect("decodes")
        .to_rgb8();
    // The mark: 100 × 50 (a quarter of the width, the logo's 2:1), 15 px from the corner.
    let red = |x: u32, y: u32| {
        let p = img.get_pixel(x, y).0;
        p[0] > 200 && p[1] < 60 && p[2] < 60
    };
    assert!(red(400 - 15 - 50, 300 - 15 - 25), "the logo is not drawn");
    assert!(!red(10, 10) && !differs(img.get_pixel(10, 10).0, grey, 2));

    // A second batch with another logo, in the same long-lived child: its own logo is drawn,
    // not the first batch's.
    let (code, body) = submit_with_logo(
        &sys,
        &[("photo.png", flat_png(400, 300, [120, 120, 120, 255]))],
        &pipeline,
        flat_png(40, 20, [20, 20, 230, 255]),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let second = body["id"].as_str().expect("id").to_owned();
    let status = sys
        .wait_final(&second, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(status["status"], "done", "{status}");
    let (_, zip) = sys.download(&second).await.expect("downloads");
    let img = image::load_from_memory(&unzip(&zip)[0].1)
        .expect("decodes")
        .to_rgb8();
    let p = img.get_pixel(400 - 15 - 50, 300 - 15 - 25).0;
    assert!(
        p[2] > 200 && p[0] < 60 && p[1] < 60,
        "the second batch's logo is not drawn: {p:?}"
    );

    // A logo that is not an image: 400 naming it, and nothing stored.
    let (code, body) = submit_with_logo(
        &sys,
        &[("photo.png", flat_png(40, 30, [1, 2, 3, 255]))],
        &pipeline,
        b"<svg>not really</svg>".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("logo is not an image"),
        "{body}"
    );
    // Asking for the uploaded logo without sending one: 400 too.
    let (code, body) = sys
        .submit(
            &[("photo.png", flat_png(40, 30, [1, 2, 3, 255]))],
            Some(&json!([{"task": "watermark", "logo": "uploaded"}])),
        )
        .await
        .expect("answers");
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("needs a logo file"),
        "{body}"
    );
    assert_eq!(sys.count("SELECT count(*) FROM batches").await, 2);
    let stray: Vec<String> = sys
        .objects()
        .await
        .expect("lists")
        .into_iter()
        .filter(|k| {
            !k.starts_with(&format!("batches/{id}/"))
                && !k.starts_with(&format!("batches/{second}/"))
        })
        .collect();
    assert!(stray.is_empty(), "refused uploads left {stray:?}");
    sys.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misconfigured_process_exits_with_its_reason_and_one_started_early_waits() {
    let sys = System::start("startup", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let url: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&sys.db)
        .await
        .map(|db: String| {
            let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
            let (head, _) = base.rsplit_once('/').expect("a URL with a database");
            format!("{head}/{db}")
        })
        .expect("query");
    let wrong_password = {
        let (credentials, host) = url
            .trim_start_matches("postgres://")
            .split_once('@')
            .expect("postgres://user:password@host/db");
        let user = credentials.split(':').next().expect("a user");
        format!("postgres://{user}:not-the-password@{host}")
    };
    let closed_port = {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("binds")
            .local_addr()
            .expect("addr")
            .port();
        format!("postgres://watermark:x@127.0.0.1:{port}/watermark")
    };
    for bin in ["web", "worker"] {
        // A wrong password: the process exits at once, naming the setting, not the secret.
        let out = tokio::task::spawn_blocking({
            let mut cmd = sys.command(bin);
            cmd.env("DATABASE_URL", &wrong_password).env("PORT", "0");
            move || cmd.output()
        })
        .await
        .expect("joins")
        .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started with a wrong password");
        assert!(
            stderr.contains("cannot use Postgres (DATABASE_URL)")
                && stderr.contains("password authentication failed"),
            "{bin}: {stderr}"
        );
        assert!(!stderr.contains("not-the-password"), "{bin}: {stderr}");

        // Nothing listening yet: it waits (and says so) instead of exiting.
        let log = sys.logs().join(format!("{bin}-waiting.log"));
        let mut child = sys
            .command(bin)
            .env("DATABASE_URL", &closed_port)
            .env("PORT", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starts");
        let started = Instant::now();
        let said = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("waiting for Postgres") || started.elapsed() > Duration::from_secs(20)
            {
                break text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let waiting = child.try_wait().expect("polls").is_none();
        let _ = child.kill();
        let _ = child.wait();
        assert!(said.contains("waiting for Postgres"), "{bin}: {said}");
        assert!(waiting, "{bin} did not wait for Postgres: {said}");
    }
    sys.shutdown().await;
}

/// Waits (at most `limit`) until `sql` counts `want`.
async fn wait_count(sys: &System, sql: &'static str, want: i64, limit: Duration) {
    let started = Instant::now();
    loop {
        let n = sys.count(sql).await;
        if n == want {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "`{sql}` is {n}, not {want}, after {limit:?}; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn json_of(body: &str) -> serde_json::Value {
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn choices_sent_before_the_files_start_the_images_while_the_rest_upload() {
    let sys = System::start(
        "streaming",
        Options::default()
            .env("WORKER_FAULT_INJECTION", 1)
            .env("WORKER_CONCURRENCY", 2),
    )
    .await
    .expect("system starts");
    let grey = json!([{"task": "grayscale"}]).to_string();
    let red = || flat_jpeg(64, 48, [220, 30, 30]);

    // The pipeline first, then one file: that file is processed while the body is still open.
    let mut up = sys.raw_upload("/api/batches").await.expect("connects");
    up.text("pipeline", &grey).await.expect("sends");
    up.file("files", "first.jpg", &red()).await.expect("sends");
    wait_count(
        &sys,
        "SELECT count(*) FROM images WHERE status = 'done'",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        sys.count("SELECT count(*) FROM batches WHERE status = 'uploading' AND done_count = 1")
            .await,
        1,
        "the first image was done while its batch was still uploading"
    );
    up.file("files", "second.jpg", &red()).await.expect("sends");
    let (code, body) = up.finish().await.expect("answers");
    assert_eq!(code, 202, "{body}");
    let id = json_of(&body)["id"].as_str().expect("an id").to_owned();
    let status = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(status["status"], "done", "{status}");
    assert_eq!(status["done"], 2, "{status}");
    assert_eq!(status["images"].as_array().map(Vec::len), Some(2));
    let (code, summary) = sys.summary(&id).await.expect("answers");
    assert_eq!(code, 200);
    assert_eq!(summary["done"], 2, "{summary}");
    assert_eq!(
        summary["images"],
        json!([]),
        "?images=false leaves them out"
    );
    let (_, zip) = sys.download(&id).await.expect("downloads");
    let entries = unzip(&zip);
    assert_eq!(entries.len(), 2);
    for (name, bytes) in &entries {
        let px = image::load_from_memory(bytes).expect("decodes").to_rgb8();
        let p = px.get_pixel(10, 10).0;
        assert!(
            p[0].abs_diff(p[1]) < 4 && p[1].abs_diff(p[2]) < 4,
            "{name} is not grey: {p:?}"
        );
    }

    // The old order, choices after the files: still honoured.
    let mut up = sys.raw_upload("/api/batches").await.expect("connects");
    up.file("files", "late.jpg", &red()).await.expect("sends");
    up.text("pipeline", &grey).await.expect("sends");
    let (code, body) = up.finish().await.expect("answers");
    assert_eq!(code, 202, "{body}");
    let id = json_of(&body)["id"].as_str().expect("an id").to_owned();
    let status = sys.wait_final(&id, Duration::from_secs(60)).await.unwrap();
    assert_eq!(status["status"], "done", "{status}");
    let (_, zip) = sys.download(&id).await.expect("downloads");
    let px = image::load_from_memory(&unzip(&zip)[0].1)
        .unwrap()
        .to_rgb8();
    let p = px.get_pixel(10, 10).0;
    assert!(
        p[0].abs_diff(p[1]) < 4,
        "the late pipeline was not applied: {p:?}"
    );

    // Choices first, then a logo after the files: refused, naming the order, leaving nothing.
    let batches_before = sys.count("SELECT count(*) FROM batches").await;
    let objects_before = sys.objects().await.unwrap().len();
    let mut up = sys.raw_upload("/api/batches").await.expect("connects");
    up.text("pipeline", &json!([{"task": "watermark"}]).to_string())
        .await
        .unwrap();
    up.file("files", "a.jpg", &red()).await.unwrap();
    up.file("logo", "logo.png", &flat_png(20, 10, [0, 0, 0, 255]))
        .await
        .unwrap();
    let (code, body) = up.finish().await.expect("answers");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("before the files"), "{body}");
    wait_count(
        &sys,
        "SELECT count(*) FROM batches WHERE status NOT IN ('done')",
        0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        sys.count("SELECT count(*) FROM batches").await,
        batches_before
    );
    assert_eq!(sys.objects().await.unwrap().len(), objects_before);

    // A streamed upload whose client goes away while a worker holds one of its images and
    // another is done: nothing stays, not even the result stored after the clean-up.
    let mut up = sys.raw_upload("/api/batches").await.expect("connects");
    up.text("pipeline", &grey).await.unwrap();
    up.file("files", "quick.jpg", &red()).await.unwrap();
    let slow = system_tests::checks::with_marker(&red(), b"wm-fault:sleep=2000;");
    up.file("files", "slow.jpg", &slow).await.unwrap();
    wait_count(
        &sys,
        "SELECT count(*) FROM images i JOIN batches b ON b.id = i.batch_id
         WHERE b.status = 'uploading' AND (i.status = 'done' OR i.attempts > 0)",
        2,
        Duration::from_secs(30),
    )
    .await;
    let gone: String =
        sqlx::query_scalar("SELECT id::text FROM batches WHERE status = 'uploading'")
            .fetch_one(&sys.db)
            .await
            .unwrap();
    drop(up);
    let dropped = Instant::now();
    let prefix = format!("batches/{gone}/");
    loop {
        let rows = sys
            .count("SELECT count(*) FROM batches WHERE status = 'uploading' OR status = 'failed'")
            .await;
        let left: Vec<String> = sys
            .objects()
            .await
            .unwrap()
            .into_iter()
            .filter(|k| k.starts_with(&prefix))
            .collect();
        // The slow image ends about 2 s after it started; wait past that before judging.
        if rows == 0 && left.is_empty() && dropped.elapsed() > Duration::from_secs(4) {
            break;
        }
        assert!(
            dropped.elapsed() < Duration::from_secs(20),
            "the abandoned upload left {rows} row(s) and {left:?}; logs in {}",
            sys.logs().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sys.shutdown().await;
}
