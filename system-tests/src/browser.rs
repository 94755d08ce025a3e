//! A real browser for the system tests: Debian's `chromium`, driven through its `chromedriver`
//! (started here, on a free loopback port) with `fantoccini`. Headless, without the sandbox
//! (tests run as root), the GPU or `/dev/shm`. `scripts/test` installs both packages
//! (`ensure_browser` in `scripts/lib.sh`); nothing here downloads a browser.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// The page's size, and whether the browser passes for a phone (touch, a phone's user agent,
/// its device pixel ratio).
#[derive(Debug, Clone, Copy)]
pub struct Viewport {
    pub width: u32,
    pub height: u32,
    pub phone: bool,
}

/// A laptop's window.
pub const DESKTOP: Viewport = Viewport {
    width: 1280,
    height: 900,
    phone: false,
};

/// A phone held upright (390 × 844 CSS pixels, as an iPhone 12 to 15).
pub const PHONE: Viewport = Viewport {
    width: 390,
    height: 844,
    phone: true,
};

/// Where Debian puts the browser and its driver.
const CHROMIUMS: [&str; 2] = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
const DRIVERS: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// The browser and driver binaries, or why the browser tests cannot run.
pub fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let find = |paths: &[&str]| paths.iter().map(PathBuf::from).find(|p| p.exists());
    match (find(&CHROMIUMS), find(&DRIVERS)) {
        (Some(chromium), Some(driver)) => Ok((chromium, driver)),
        _ => bail!(
            "the browser tests need Debian's chromium and chromedriver (packages `chromium` and \
             `chromium-driver`), which are not installed: ./scripts/test installs them (as root, \
             or with sudo), or run `apt-get install chromium chromium-driver`"
        ),
    }
}

/// A chromedriver of this test's own and one browser session on it. Dropping it kills both.
pub struct Browser {
    pub client: Client,
    driver: Child,
    shots: PathBuf,
    taken: usize,
}

impl Browser {
    /// Starts chromedriver and a headless chromium of `viewport`; screenshots and the driver's
    /// log go to `logs`.
    pub async fn start(viewport: Viewport, logs: &Path) -> anyhow::Result<Self> {
        let (chromium, driver_bin) = binaries()?;
        std::fs::create_dir_all(logs)?;
        let port = free_port()?;
        let mut command = Command::new(&driver_bin);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                logs.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // A process group of its own, so that the browser it starts is killed with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let driver = command
            .spawn()
            .with_context(|| format!("cannot start {}", driver_bin.display()))?;
        let mut browser = BrowserGuard(Some(driver));
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(20) {
                bail!(
                    "chromedriver did not listen on port {port} within 20 s; see {}",
                    logs.join("chromedriver.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-extensions".into(),
            "--no-first-run".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={},{}", viewport.width, viewport.height),
        ];
        args.push("--lang=en-GB".into());
        let mut options = json!({
            "binary": chromium,
            "args": args,
        });
        if viewport.phone {
            options["mobileEmulation"] = json!({
                "deviceMetrics": {
                    "width": viewport.width,
                    "height": viewport.height,
                    "pixelRatio": 3.0,
                    "touch": true,
                },
                "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
                              (KHTML, like Gecko) Chrome/130.0 Mobile Safari/537.36",
            });
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = tokio::time::timeout(
            Duration::from_secs(60),
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .context("no browser session within 60 s")?
        .with_context(|| {
            format!(
                "cannot start a chromium session; see {}",
                logs.join("chromedriver.log").display()
            )
        })?;
        Ok(Self {
            client,
            driver: browser.0.take().expect("the driver"),
            shots: logs.to_path_buf(),
            taken: 0,
        })
    }

    /// Saves a PNG of the window as `NN-name.png` in the log folder, and returns its path.
    pub async fn screenshot(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.taken += 1;
        let png = self.client.screenshot().await?;
        let path = self.shots.join(format!("{:02}-{name}.png", self.taken));
        std::fs::write(&path, png)?;
        Ok(path)
    }

    /// Runs `script` (a function body: `return …`) in the page and returns its value.
    pub async fn js(&self, script: &str) -> anyhow::Result<Value> {
        Ok(self.client.execute(script, Vec::new()).await?)
    }

    /// Runs `script` every 100 ms until it returns something truthy (not null, false, 0 or ""),
    /// at most `limit`; returns that value. On time-out: an error naming `what`, with the last
    /// value, and a screenshot.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        script: &str,
    ) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let last = match self.js(script).await {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => v,
                Err(e) => json!(format!("error: {e}")),
            };
            if started.elapsed() > limit {
                let url = self
                    .client
                    .current_url()
                    .await
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                let shot = self
                    .screenshot("timed-out")
                    .await
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                bail!(
                    "{what}: not within {limit:?} (last seen: {last}; page {url}; screenshot {shot})"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `script` in every page from now on, before the page's own scripts (Chrome's
    /// `Page.addScriptToEvaluateOnNewDocument`): to take a feature away from the page, say.
    pub async fn before_each_page(&self, script: &str) -> anyhow::Result<()> {
        self.client
            .issue_cmd(Cdp {
                cmd: "Page.addScriptToEvaluateOnNewDocument",
                params: json!({ "source": script }),
            })
            .await
            .context("chromedriver's CDP command")?;
        Ok(())
    }

    /// The element with id `id`.
    pub async fn by_id(&self, id: &str) -> anyhow::Result<fantoccini::elements::Element> {
        self.client
            .find(Locator::Id(id))
            .await
            .with_context(|| format!("no element #{id} on the page"))
    }

    /// Ends the session and the driver.
    pub async fn close(mut self) {
        let client = self.client.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), client.close()).await;
        kill_group(&mut self.driver);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Kills the driver should starting the session fail.
struct BrowserGuard(Option<Child>);

impl Drop for BrowserGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            kill_group(child);
        }
    }
}

/// Kills the process group that `child` leads (chromedriver and the browser it started).
fn kill_group(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: a signal to the process group of a child this process started (its own group).
    unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    let _ = child.wait();
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// A Chrome DevTools command, through chromedriver's `goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
