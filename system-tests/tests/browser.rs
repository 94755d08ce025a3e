//! The site in a real browser (headless chromium through chromedriver; see
//! `system_tests::browser`): a person chooses files, sees the preview of the watermark change
//! with the settings, uploads with a progress bar, lands on the waiting page, sees it move live
//! (Server-Sent Events, no reload) when a worker starts, reads why the bad file failed, and
//! downloads a zip that holds the images. Once at a laptop's size, once at a phone's. The
//! screenshots are saved in the test's log folder (`target/system-tests/browser-…/`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context};
use serde_json::Value;
use system_tests::browser::{Browser, Viewport, DESKTOP, PHONE};
use system_tests::{images, Options, System};

/// Every wait of this test is bounded by this.
const WAIT: Duration = Duration::from_secs(30);

/// The images the person chooses: (file name, bytes, size when decoded).
struct Chosen {
    dir: PathBuf,
    images: Vec<(&'static str, (u32, u32))>,
}

fn write_files(dir: &Path) -> anyhow::Result<Chosen> {
    std::fs::create_dir_all(dir)?;
    let images = [
        (
            "harbour.jpg",
            images::photo_jpeg(1600, 1067, 7),
            (1600, 1067),
        ),
        (
            "street.png",
            images::half_transparent_png(900, 600, [200, 80, 40]),
            (900, 600),
        ),
        ("forest.jpg", images::photo_jpeg(800, 1200, 3), (800, 1200)),
    ];
    for (name, bytes, _) in &images {
        std::fs::write(dir.join(name), bytes)?;
    }
    // A JPEG's first bytes, then nothing a decoder can use: it passes the browser's check of the
    // type and fails on the worker, with its reason.
    let mut broken = vec![0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10];
    broken.extend(b"JFIF\0 but the rest of this file is not a picture at all".repeat(40));
    std::fs::write(dir.join("broken.jpg"), broken)?;
    // One image too many for the limit the test sets (MAX_FILES_PER_BATCH=4).
    std::fs::write(dir.join("extra.jpg"), images::photo_jpeg(400, 300, 9))?;
    // Not an image: the browser leaves it out and says why.
    std::fs::write(dir.join("notes.txt"), "shopping: bread, milk\n")?;
    Ok(Chosen {
        dir: dir.to_path_buf(),
        images: images.iter().map(|(n, _, size)| (*n, *size)).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uploads_in_a_browser_and_follows_the_batch_live() {
    // No silent skip: without the browser this test fails, saying how to get one.
    if let Err(e) = system_tests::browser::binaries() {
        panic!("{e:#}");
    }
    // No worker yet: the waiting page must be seen waiting, then moving when one starts.
    let mut system = System::start(
        "browser",
        Options::default()
            .workers(&[])
            .env("MAX_FILES_PER_BATCH", 4),
    )
    .await
    .expect("the system starts");
    let chosen = write_files(&system.logs().join("files")).expect("the files are written");
    // The third pass takes EventSource away from the page: it must follow the batch by polling.
    for (pass, viewport, worker, live) in [
        ("desktop", DESKTOP, "worker-a", Live::Stream),
        ("phone", PHONE, "worker-b", Live::Stream),
        ("no-eventsource", DESKTOP, "worker-c", Live::Polling),
    ] {
        let logs = system.logs().join(pass);
        let result = one_pass(&mut system, pass, viewport, worker, live, &chosen, &logs).await;
        if let Err(e) = result {
            panic!(
                "{pass} pass: {e:#}\n(screenshots in {}, services' logs in {})",
                logs.display(),
                system.logs().display()
            );
        }
        system.kill_worker(worker);
    }
    println!("screenshots in {}", system.logs().display());
    system.shutdown().await;
}

/// How the waiting page is to follow the batch.
#[derive(Debug, Clone, Copy)]
enum Live {
    /// Server-Sent Events (`data-live="sse"`).
    Stream,
    /// The browser has no EventSource: polling (`data-live="poll"`).
    Polling,
}

impl Live {
    fn mode(self) -> &'static str {
        match self {
            Live::Stream => "sse",
            Live::Polling => "poll",
        }
    }
}

async fn one_pass(
    system: &mut System,
    pass: &str,
    viewport: Viewport,
    worker: &str,
    live: Live,
    chosen: &Chosen,
    logs: &Path,
) -> anyhow::Result<()> {
    let mut browser = Browser::start(viewport, logs).await?;
    if matches!(live, Live::Polling) {
        browser
            .before_each_page("delete window.EventSource;")
            .await?;
    }
    let mode = live.mode();
    browser.client.goto(&system.url("/")).await?;
    let width = browser.js("return window.innerWidth").await?;
    ensure!(
        width == viewport.width,
        "the page is {width} px wide, not {}",
        viewport.width
    );

    // The form: only the types we read are offered; the preview shows the sample photo.
    let accept = browser.by_id("files").await?.attr("accept").await?;
    let accept = accept.context("the file input has an accept list")?;
    for wanted in ["image/jpeg", "image/png", "image/webp", ".jpg", ".tif"] {
        ensure!(
            accept.split(',').any(|a| a == wanted),
            "accept lacks {wanted}: {accept}"
        );
    }
    ensure!(
        !accept.contains("image/*"),
        "accept offers every image type: {accept}"
    );
    let sample = preview_after(&mut browser, 0, None, "the preview of the sample photo").await?;
    ensure!(
        sample["w"] == 640 && sample["h"] == 427,
        "the sample preview is {sample}"
    );
    fits(&browser, "the form").await?;
    browser.screenshot("form").await?;

    // Too many files: the upload is blocked, saying why.
    let too_many: Vec<String> = [
        "harbour.jpg",
        "street.png",
        "broken.jpg",
        "forest.jpg",
        "notes.txt",
        "extra.jpg",
    ]
    .iter()
    .map(|n| chosen.dir.join(n).display().to_string())
    .collect();
    browser
        .by_id("files")
        .await?
        .send_keys(&too_many.join("\n"))
        .await?;
    let blocked = browser
        .wait_for(
            "the block for too many files",
            WAIT,
            "const a = document.getElementById('form-alert'); return a.hidden ? null : a.textContent;",
        )
        .await?;
    ensure!(
        blocked
            .as_str()
            .is_some_and(|t| t.contains("Too many files: 5 chosen") && t.contains("at most 4")),
        "the block: {blocked}"
    );
    browser
        .js("document.getElementById('form-alert').textContent = ''; return true;")
        .await?;
    browser.by_id("submit").await?.click().await?;
    let again = browser
        .wait_for(
            "the block, told again on submit",
            WAIT,
            "return document.getElementById('form-alert').textContent;",
        )
        .await?;
    let state = browser
        .js("return { path: location.pathname,
                      uploading: !document.getElementById('upload-progress').hidden };")
        .await?;
    ensure!(
        again == blocked && state["path"] == "/" && state["uploading"] == false,
        "the upload was not blocked: {again}, {state}"
    );
    // The preview drawn on that choice, before the next.
    let first = preview_after(
        &mut browser,
        count(&sample),
        None,
        "the preview of the first choice",
    )
    .await?;
    browser
        .js("document.getElementById('files').value = ''; return true;")
        .await?;

    // Choosing files: the text file is left out with its reason; the preview moves to a small
    // copy of the first image.
    let paths: Vec<String> = [
        "harbour.jpg",
        "street.png",
        "broken.jpg",
        "forest.jpg",
        "notes.txt",
    ]
    .iter()
    .map(|n| chosen.dir.join(n).display().to_string())
    .collect();
    browser
        .by_id("files")
        .await?
        .send_keys(&paths.join("\n"))
        .await?;
    let listed = browser
        .wait_for(
            "the chosen files listed, notes.txt left out",
            WAIT,
            "const items = [...document.querySelectorAll('#chosen li')];
             const refused = items.filter(li => li.classList.contains('refused'));
             return items.length === 5 && refused.length === 1
               ? { refused: refused[0].textContent,
                   summary: document.getElementById('chosen-summary').textContent }
               : null;",
        )
        .await?;
    let refused = listed["refused"].as_str().unwrap_or_default();
    ensure!(
        refused.contains("notes.txt") && refused.contains("not an image we can read"),
        "the text file's line: {refused:?}"
    );
    let summary = listed["summary"].as_str().unwrap_or_default();
    ensure!(
        summary.contains("4 images") && summary.contains("1 file is left out"),
        "the summary: {summary:?}"
    );
    let own = preview_after(
        &mut browser,
        count(&first),
        Some(&sample),
        "the preview of the first image",
    )
    .await?;
    ensure!(
        own["w"] == 640 && own["h"] == 427 && own["sum"] != sample["sum"],
        "the preview of harbour.jpg (1600 × 1067, so 640 × 427 when downscaled): {own}, sample {sample}"
    );
    let caption = browser.by_id("preview-caption").await?.text().await?;
    ensure!(caption.contains("harbour.jpg"), "the caption: {caption:?}");

    // A setting changes: the preview is drawn again, and differs.
    browser
        .by_id("watermark-position")
        .await?
        .select_by_value("bottom-right")
        .await?;
    let moved = preview_after(
        &mut browser,
        count(&own),
        Some(&own),
        "the preview after a change of position",
    )
    .await?;
    ensure!(
        moved["sum"] != own["sum"],
        "the preview did not change: {moved}"
    );
    let opacity = browser.by_id("watermark-opacity").await?;
    opacity.clear().await?;
    opacity.send_keys("0.9").await?;
    let stronger = preview_after(
        &mut browser,
        count(&moved),
        Some(&moved),
        "the preview after a change of opacity",
    )
    .await?;
    ensure!(
        stronger["sum"] != moved["sum"],
        "the preview did not change: {stronger}"
    );
    browser.screenshot("preview").await?;

    // A refused upload (no processing ticked: the server says so) is told in the page, and the
    // choices and files stay as they were.
    let task = browser
        .client
        .find(fantoccini::Locator::Css(
            "input[name=task][value=watermark]",
        ))
        .await?;
    // In the middle of the window: at a phone's size the preview stays at the top.
    let center = "document.querySelector('input[name=task][value=watermark]')
                    .scrollIntoView({ block: 'center' }); return true;";
    browser.js(center).await?;
    task.click().await?;
    browser.by_id("submit").await?.click().await?;
    let refused = browser
        .wait_for(
            "the server's refusal shown on the form",
            WAIT,
            "const alert = document.getElementById('form-alert');
             return !alert.hidden && alert.getAttribute('role') === 'alert'
               && !document.getElementById('submit').disabled ? alert.textContent : null;",
        )
        .await?;
    ensure!(
        refused
            .as_str()
            .is_some_and(|t| t.contains("choose at least one kind of processing")),
        "the refusal: {refused}"
    );
    let kept = browser
        .js("return { path: location.pathname,
                      position: document.getElementById('watermark-position').value,
                      opacity: document.getElementById('watermark-opacity').value,
                      files: document.getElementById('files').files.length };")
        .await?;
    ensure!(
        kept["path"] == "/"
            && kept["position"] == "bottom-right"
            && kept["opacity"] == "0.9"
            && kept["files"] == 5,
        "the choices were not kept: {kept}"
    );
    browser.screenshot("refused").await?;
    browser.js(center).await?;
    task.click().await?;

    // The upload, with its progress recorded as it is shown (the page is left at the end).
    browser
        .js("const box = document.getElementById('upload-progress');
             const seen = [];
             new MutationObserver(() => {
               const now = { bar: document.getElementById('upload-bar').value,
                             percent: document.getElementById('upload-percent').textContent,
                             text: document.getElementById('upload-text').textContent,
                             shown: !box.hidden };
               const last = seen[seen.length - 1];
               if (!last || JSON.stringify(last) !== JSON.stringify(now)) seen.push(now);
               sessionStorage.setItem('progress-seen', JSON.stringify(seen));
             }).observe(box, { attributes: true, childList: true, subtree: true, characterData: true });
             return true;")
        .await?;
    browser.by_id("submit").await?.click().await?;
    let page = browser
        .wait_for(
            "the waiting page after the upload",
            WAIT,
            "return location.pathname.startsWith('/batches/') && document.getElementById('batch')
               ? location.pathname : null;",
        )
        .await?;
    let id = page
        .as_str()
        .and_then(|p| p.strip_prefix("/batches/"))
        .context("a batch id in the address")?
        .to_owned();
    let seen = browser
        .js("return JSON.parse(sessionStorage.getItem('progress-seen') || '[]');")
        .await?;
    let seen = seen.as_array().cloned().unwrap_or_default();
    println!("{pass}: the upload's progress as shown: {seen:?}");
    ensure!(
        seen.iter()
            .any(|s| s["bar"] == 100.0 && s["percent"] == "100 %" && s["shown"] == true),
        "the progress bar never showed 100 %: {seen:?}"
    );
    ensure!(
        seen.iter().any(|s| {
            let text = s["text"].as_str().unwrap_or_default();
            text.contains(" of ") && text.contains(" sent")
        }),
        "the bytes sent were never shown: {seen:?}"
    );

    // Waiting, followed live; then a worker starts and the page moves without a reload.
    let waiting = browser
        .wait_for(
            &format!("the page waiting for a worker, following the batch by {mode}"),
            WAIT,
            &format!(
                "const s = document.getElementById('batch');
                 return s.dataset.live === '{mode}' && s.dataset.status === 'queued'
                   ? document.getElementById('status').textContent : null;"
            ),
        )
        .await?;
    ensure!(
        waiting == "Waiting for a worker…",
        "the status says {waiting}"
    );
    let a11y = browser
        .js("const summary = document.getElementById('summary');
             const label = document.querySelector('label[for=progress]');
             return { role: summary.getAttribute('role'), live: summary.getAttribute('aria-live'),
                      label: label ? label.textContent : null,
                      within: summary.contains(document.getElementById('status')) };")
        .await?;
    ensure!(
        a11y["role"] == "status" && a11y["live"] == "polite" && a11y["within"] == true,
        "the status is not announced: {a11y}"
    );
    ensure!(
        a11y["label"] == "Images processed",
        "the progress bar's label: {a11y}"
    );
    browser.screenshot("waiting").await?;
    browser.js("window.__noReload = 1; return true;").await?;
    system.start_worker(worker)?;
    let done = browser
        .wait_for(
            "the download link, on the same page",
            WAIT * 2,
            "const s = document.getElementById('batch');
             const ready = !document.getElementById('ready').hidden;
             return ready && s.dataset.status === 'done'
               ? { href: document.getElementById('download').getAttribute('href'),
                   marker: window.__noReload === 1, live: s.dataset.live,
                   count: document.getElementById('count').textContent,
                   progress: document.getElementById('progress').value }
               : null;",
        )
        .await?;
    ensure!(done["marker"] == true, "the page was reloaded: {done}");
    ensure!(
        done["live"] == mode,
        "the page did not follow the batch by {mode}: {done}"
    );
    ensure!(
        done["count"] == "4 of 4" && done["progress"] == 4.0,
        "the count: {done}"
    );
    let href = done["href"].as_str().context("a link")?.to_owned();
    ensure!(
        href == format!("/batches/{id}/download"),
        "the link: {href}"
    );

    // The bad file's reason, in the table.
    let rows = browser
        .js(
            "return [...document.querySelectorAll('#images tr')].map(tr =>
               [...tr.cells].map(td => td.textContent));",
        )
        .await?;
    let rows = rows.as_array().cloned().unwrap_or_default();
    ensure!(rows.len() == 4, "the table: {rows:?}");
    let broken = rows
        .iter()
        .find(|r| r[0] == "broken.jpg")
        .with_context(|| format!("no row for broken.jpg: {rows:?}"))?;
    ensure!(
        broken[1] == "failed" && broken[2].as_str().unwrap_or_default().contains("damaged"),
        "broken.jpg's row: {broken:?}"
    );
    for (name, _) in &chosen.images {
        ensure!(
            rows.iter().any(|r| r[0] == *name && r[1] == "done"),
            "{name} is not done: {rows:?}"
        );
    }
    fits(&browser, "the waiting page").await?;
    browser.screenshot("done").await?;

    // The event log, folded: opened, it shows what the API has (or says it has none).
    let api = system
        .http
        .get(system.url(&format!("/api/batches/{id}/events")))
        .send()
        .await?;
    let api_status = api.status().as_u16();
    let api_events: Value = api.json().await.unwrap_or(Value::Null);
    browser
        .client
        .find(fantoccini::Locator::Css("#events summary"))
        .await?
        .click()
        .await?;
    // Opened, the log is the API's (the page drew it when it loaded; opening it loads it again).
    let n = api_events["events"].as_array().map_or(0, Vec::len);
    ensure!(
        api_status == 200 && n > 0,
        "the events API answered {api_status}: {api_events}"
    );
    let shown = browser
        .wait_for(
            "the event log, opened, with every event the API has",
            WAIT,
            &format!(
                "const status = document.getElementById('events-status').textContent;
                 const list = document.getElementById('event-list');
                 const items = list.querySelectorAll('li').length;
                 return items === {n} && list.textContent.includes('broken.jpg')
                   ? {{ status, items }} : null;"
            ),
        )
        .await?;
    println!("{pass}: the event log (API {api_status}): {shown}");
    browser.screenshot("events").await?;

    // The zip behind the link holds the images, at their size, and the reason of the bad one.
    let res = system.http.get(system.url(&href)).send().await?;
    ensure!(
        res.status() == 200,
        "the download answered {}",
        res.status()
    );
    let bytes = res.bytes().await?;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec()))?;
    let mut names = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry.name().context("a UTF-8 name")?.into_owned();
        let mut content = Vec::new();
        entry.read_to_end(&mut content)?;
        if name == jobs::names::REPORT_NAME {
            let text = String::from_utf8_lossy(&content);
            ensure!(text.contains("broken.jpg"), "the report: {text}");
        } else {
            let size = chosen
                .images
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, size)| *size)
                .with_context(|| format!("an entry that was not sent: {name}"))?;
            let img = image::load_from_memory(&content)
                .with_context(|| format!("{name} in the zip is not an image"))?;
            ensure!(
                (img.width(), img.height()) == size,
                "{name} is {} × {}",
                img.width(),
                img.height()
            );
        }
        names.push(name);
    }
    names.sort();
    ensure!(
        names
            == [
                "FAILED-FILES.txt",
                "forest.jpg",
                "harbour.jpg",
                "street.png"
            ],
        "the zip holds {names:?}"
    );
    println!("{pass}: batch {id} done, the zip holds {names:?}");
    browser.close().await;
    Ok(())
}

/// How many previews the page has drawn.
fn count(preview: &Value) -> u64 {
    preview["count"].as_u64().unwrap_or_default()
}

/// Waits until the page has drawn more than `drawn` previews and the last is shown; its size, a
/// checksum of its pixels and the count.
/// The preview once it has been drawn more than `drawn` times and looks unlike `before` (a
/// draw asked for before a change may still land after it: the test waits for the change's).
async fn preview_after(
    browser: &mut Browser,
    drawn: u64,
    before: Option<&Value>,
    what: &str,
) -> anyhow::Result<Value> {
    let unlike = before.map_or(-1, |b| b["sum"].as_i64().unwrap_or(-1));
    let script = format!(
        "const img = document.getElementById('preview-img');
         const count = Number(img.dataset.count);
         if (!(count > {drawn}) || !img.complete || !img.naturalWidth || img.hidden) return null;
         const c = document.createElement('canvas');
         c.width = img.naturalWidth; c.height = img.naturalHeight;
         const ctx = c.getContext('2d');
         ctx.drawImage(img, 0, 0);
         const d = ctx.getImageData(0, 0, c.width, c.height).data;
         let sum = 0;
         for (let i = 0; i < d.length; i += 4) sum = (sum * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 1000000007;
         if (sum === {unlike}) return null;
         return {{ w: c.width, h: c.height, sum, count }};"
    );
    browser.wait_for(what, WAIT, &script).await
}

/// The page is no wider than the window (nothing to scroll sideways).
async fn fits(browser: &Browser, what: &str) -> anyhow::Result<()> {
    let sizes = browser
        .js("return [document.documentElement.scrollWidth, window.innerWidth];")
        .await?;
    ensure!(
        sizes[0].as_u64() <= sizes[1].as_u64(),
        "{what} is wider than the window (scroll width, window width): {sizes}"
    );
    Ok(())
}

/// The waiting page's Cancel button: it asks first (dismissed, nothing happens), then cancels
/// (accepted): the page says "Cancelled." at once, without a reload, the button goes, and the
/// API agrees. A second page, left open, sees a cancel made elsewhere live (its stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_page_cancels_a_batch() {
    if let Err(e) = system_tests::browser::binaries() {
        panic!("{e:#}");
    }
    let system = System::start(
        "browser-cancel",
        Options::default()
            .env("WORKER_FAULT_INJECTION", "1")
            .env("WORKER_CONCURRENCY", "1"),
    )
    .await
    .expect("the system starts");
    let logs = system.logs().join("cancel");
    if let Err(e) = cancel_pass(&system, &logs).await {
        panic!(
            "{e:#}\n(screenshots in {}, services' logs in {})",
            logs.display(),
            system.logs().display()
        );
    }
    system.shutdown().await;
}

/// A batch of `n` images that each take 1.5 s: it is still running when the test acts.
async fn slow_batch(system: &System, tag: &str, n: usize) -> anyhow::Result<String> {
    let files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let bytes = [
                images::flat_png(96, 64, [40, 90, (i * 20) as u8, 255]),
                b"wm-fault:sleep=1500".to_vec(),
            ]
            .concat();
            (format!("{tag}-{i}.png"), bytes)
        })
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    system.submit_ok(&refs, None).await
}

async fn cancel_pass(system: &System, logs: &Path) -> anyhow::Result<()> {
    let mut browser = Browser::start(DESKTOP, logs).await?;
    let id = slow_batch(system, "button", 6).await?;
    browser
        .client
        .goto(&system.url(&format!("/batches/{id}")))
        .await?;
    browser
        .wait_for(
            "the page follows the batch live, with its Cancel button",
            WAIT,
            "return document.getElementById('batch').dataset.live === 'sse' \
             && !document.getElementById('cancel-line').hidden",
        )
        .await?;
    browser.screenshot("cancel-button").await?;

    // Asked, and dismissed: nothing happens.
    browser.by_id("cancel").await?.click().await?;
    let asked = browser.client.get_alert_text().await?;
    ensure!(
        asked.contains("Cancel this batch?"),
        "the question: {asked:?}"
    );
    browser.client.dismiss_alert().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, now) = system.summary(&id).await?;
    ensure!(
        now["status"] != "cancelled",
        "a dismissed question cancelled: {now}"
    );
    let enabled = browser
        .js("return !document.getElementById('cancel').disabled")
        .await?;
    ensure!(enabled == Value::Bool(true), "the button stays usable");

    // Asked, and accepted: cancelled, shown at once.
    browser.by_id("cancel").await?.click().await?;
    browser.client.accept_alert().await?;
    browser
        .wait_for(
            "the page says the batch is cancelled",
            WAIT,
            "return document.getElementById('batch').dataset.status === 'cancelled' \
             && document.getElementById('status').textContent === 'Cancelled.' \
             && document.getElementById('cancel-line').hidden \
             && document.getElementById('batch-error').textContent === 'cancelled by its owner'",
        )
        .await?;
    browser.screenshot("cancelled").await?;
    let (_, after) = system.status(&id).await?;
    ensure!(after["status"] == "cancelled", "the API: {after}");
    let rows = browser
        .js("return [...document.querySelectorAll('#images tr')].map(r => r.className)")
        .await?;
    ensure!(
        rows.as_array()
            .is_some_and(|r| r.iter().any(|c| c == "image-cancelled")),
        "the table shows cancelled images: {rows}"
    );

    // A page left open sees a cancel made elsewhere (the API) live, without a reload.
    let other = slow_batch(system, "elsewhere", 4).await?;
    browser
        .client
        .goto(&system.url(&format!("/batches/{other}")))
        .await?;
    browser
        .wait_for(
            "the second page follows its batch live",
            WAIT,
            "window.__same_page = true; return document.getElementById('batch').dataset.live === 'sse'",
        )
        .await?;
    let res = system
        .http
        .post(system.url(&format!("/api/batches/{other}/cancel")))
        .send()
        .await?;
    ensure!(
        res.status().as_u16() == 200,
        "the API cancel: {}",
        res.status()
    );
    browser
        .wait_for(
            "the open page shows the cancel made elsewhere, without a reload",
            WAIT,
            "return window.__same_page === true \
             && document.getElementById('batch').dataset.status === 'cancelled' \
             && document.getElementById('cancel-line').hidden",
        )
        .await?;
    browser.close().await;
    Ok(())
}
