//! The form's upload of many files in a real browser (headless chromium): the page opens a
//! batch, sends the files four at a time, and when the connection is cut in the middle it sends
//! again what was in flight, closes the batch and lands on the waiting page; the zip holds every
//! file exactly once.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use system_tests::browser::{Browser, DESKTOP};
use system_tests::faults::TcpProxy;
use system_tests::{images, Options, System};

const FILES: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_form_uploads_fifty_files_and_finishes_the_batch_across_a_cut_connection() {
    if let Err(e) = system_tests::browser::binaries() {
        panic!("{e:#}");
    }
    let system = System::start("browser-open", Options::default())
        .await
        .expect("the system starts");
    let logs = system.logs().join("browser");
    if let Err(e) = run(&system, &logs).await {
        panic!(
            "{e:#}\n(screenshots in {}, services' logs in {})",
            logs.display(),
            system.logs().display()
        );
    }
    system.shutdown().await;
}

async fn run(system: &System, logs: &std::path::Path) -> anyhow::Result<()> {
    // Large enough files that the upload takes a while, so that the cut lands in its middle.
    let dir = system.logs().join("files");
    std::fs::create_dir_all(&dir)?;
    let photos: Vec<Vec<u8>> = (0..5)
        .map(|seed| images::photo_jpeg(2000, 1500, seed))
        .collect();
    let mut paths = Vec::new();
    for i in 0..FILES {
        let path = dir.join(format!("photo-{i:02}.jpg"));
        std::fs::write(&path, &photos[i % photos.len()])?;
        paths.push(path.display().to_string());
    }
    // The browser reaches web through a proxy the test can cut.
    let web: std::net::SocketAddr = system
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("web's address")?;
    let proxy = TcpProxy::start(web).await?;
    let site = format!("http://{}", proxy.addr);

    let mut browser = Browser::start(DESKTOP, logs).await?;
    browser.client.goto(&format!("{site}/")).await?;
    browser
        .by_id("files")
        .await?
        .send_keys(&paths.join("\n"))
        .await?;
    browser
        .wait_for(
            "the files checked",
            Duration::from_secs(30),
            &format!("return document.querySelectorAll('#chosen li').length === {FILES};"),
        )
        .await?;
    // What the page did, kept across its navigation to the waiting page.
    browser
        .js(
            "window.addEventListener('pagehide', () => sessionStorage.setItem('retries',
               document.getElementById('upload-progress').dataset.retries || '0'));
             return true;",
        )
        .await?;
    browser.by_id("submit").await?.click().await?;

    // Cut the connection once some files are in, and not all.
    let started = Instant::now();
    let before_cut = loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM images")
            .fetch_one(&system.db)
            .await?;
        if n >= 5 {
            break n;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no file arrived within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    proxy.cut();
    ensure!(
        (before_cut as usize) < FILES,
        "every file was in before the cut ({before_cut}): the test cannot tell"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during_cut: i64 = sqlx::query_scalar("SELECT count(*) FROM images")
        .fetch_one(&system.db)
        .await?;
    browser.screenshot("cut").await?;
    proxy.restore();
    println!("{before_cut} files in when the connection was cut, {during_cut} when it came back");

    let page = browser
        .wait_for(
            "the waiting page after the upload",
            Duration::from_secs(180),
            "return location.pathname.startsWith('/batches/') && document.getElementById('batch')
               ? location.pathname : null;",
        )
        .await?;
    let id = page
        .as_str()
        .and_then(|p| p.strip_prefix("/batches/"))
        .context("a batch id in the address")?
        .to_owned();
    let retries = browser
        .js("return Number(sessionStorage.getItem('retries') || '0');")
        .await?;
    ensure!(
        retries.as_u64().unwrap_or(0) > 0,
        "the page never sent anything again: retries {retries}"
    );
    browser.screenshot("waiting").await?;
    browser.close().await;

    let status = system.wait_final(&id, Duration::from_secs(300)).await?;
    ensure!(status["status"] == "done", "the batch: {status}");
    ensure!(
        status["total"] == FILES && status["done"] == FILES,
        "the batch: {status}"
    );
    let (code, zip) = system.download(&id).await?;
    ensure!(code == 200, "download: {code}");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zip))?;
    let mut names: Vec<String> = (0..zip.len())
        .map(|i| {
            zip.by_index(i)
                .and_then(|e| e.name().map(|n| n.into_owned()))
        })
        .collect::<Result<_, _>>()?;
    names.sort();
    let expected: Vec<String> = (0..FILES).map(|i| format!("photo-{i:02}.jpg")).collect();
    ensure!(names == expected, "the zip holds {names:?}");
    let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM batches")
        .fetch_one(&system.db)
        .await?;
    ensure!(batches == 1, "{batches} batches were made");
    Ok(())
}
