//! What a deployment relies on: TLS to Postgres and Redis that is verified, and the worker's
//! health endpoint that compose uses as its health check.

use std::time::{Duration, Instant};

use system_tests::images::photo_jpeg;
use system_tests::{Options, System};

/// A port free right now on loopback.
fn free_port() -> u16 {
    system_tests::faults::free_port().expect("a free port")
}

/// A self-signed P-256 certificate for `subject`, valid one day, made with openssl, with its key.
fn self_signed(subject: &str, key: &std::path::Path, cert: &std::path::Path, extra: &[&str]) {
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", subject])
        .args(extra)
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "{made:?}");
}

/// Runs `cmd` until it exits (at most `limit`): whether it exited and its standard error.
fn run_until_exit(mut cmd: std::process::Command, limit: Duration) -> (bool, String) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let started = Instant::now();
    let exited = loop {
        if child.try_wait().expect("waits").is_some() {
            break true;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("its output");
    (exited, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `web` and a worker reach Postgres with `sslmode=verify-full` and Redis with `rediss://`
/// (a Redis whose TLS port is the only one they are given), verifying both certificates against
/// the local CA; a batch goes through.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_and_redis_over_verified_tls_carry_a_batch() {
    let sys = System::start("tls", Options::default().tls())
        .await
        .expect("system starts over TLS");
    assert!(sys.env()["REDIS_URL"].starts_with("rediss://"));
    assert!(sys.env()["DATABASE_URL"].contains("sslmode=verify-full"));
    let id = sys
        .submit_ok(
            &[
                ("a.jpg", photo_jpeg(320, 240, 1)),
                ("b.jpg", photo_jpeg(240, 320, 2)),
            ],
            None,
        )
        .await
        .expect("accepted");
    let batch = sys
        .wait_final(&id, Duration::from_secs(60))
        .await
        .expect("finishes");
    assert_eq!(batch["status"], "done", "{batch}");
    assert_eq!(batch["done"], 2, "{batch}");
    // Every connection of web and the worker to this database is encrypted.
    let plain: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() \
         AND a.application_name <> 'system-tests' AND NOT s.ssl",
    )
    .fetch_one(&sys.db)
    .await
    .unwrap();
    assert_eq!(plain, 0, "a connection without TLS");
    sys.shutdown().await;
}

/// A certificate the apps do not trust stops them at start, naming what refused it, rather than
/// leaving them waiting: for Postgres (`sslrootcert` of another CA) and Redis (`SSL_CERT_FILE`).
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_certificate_stops_web_with_the_reason() {
    let sys = System::start("tls-untrusted", Options::default().tls().workers(&[]))
        .await
        .expect("system starts over TLS");
    let other = sys.logs().join("other-ca.pem");
    self_signed(
        "/CN=another CA",
        &sys.logs().join("other-ca.key"),
        &other,
        &[],
    );
    let other = other.to_str().unwrap().to_owned();
    let ca = std::env::var("WM_TLS_CA").unwrap();

    let mut cmd = sys.command("web");
    cmd.env(
        "DATABASE_URL",
        sys.env()["DATABASE_URL"].replace(&ca, &other),
    )
    .env("PORT", "0");
    let (exited, stderr) = run_until_exit(cmd, Duration::from_secs(30));
    assert!(
        exited,
        "web kept waiting on an untrusted Postgres: {stderr}"
    );
    assert!(stderr.contains("cannot use Postgres"), "{stderr}");

    let mut cmd = sys.command("web");
    cmd.env("SSL_CERT_FILE", &other).env("PORT", "0");
    let (exited, stderr) = run_until_exit(cmd, Duration::from_secs(30));
    assert!(exited, "web kept waiting on an untrusted Redis: {stderr}");
    assert!(stderr.contains("cannot use Redis"), "{stderr}");
    sys.shutdown().await;
}

/// The worker's `HEALTH_PORT` serves `/healthz` (its name and the images in hand) and `/readyz`
/// (200 when Postgres, Redis and S3 answer, 503 naming S3 while it is cut off, 200 again after).
#[tokio::test(flavor = "multi_thread")]
async fn the_worker_health_endpoint_answers_and_names_what_is_down() {
    let port = free_port();
    let sys = System::start(
        "worker-health",
        Options::default()
            .proxy_s3()
            .env("HEALTH_PORT", port)
            .workers(&["worker-h"]),
    )
    .await
    .expect("system starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    let health = loop {
        match http.get(format!("{base}/healthz")).send().await {
            Ok(res) => break res,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "no health endpoint on {port}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(health.status().as_u16(), 200);
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["worker"], "worker-h", "{body}");
    assert_eq!(body["images_in_hand"], 0, "{body}");

    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    sys.s3_proxy().cut();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["s3"], "unavailable", "{body}");
    assert_eq!(body["postgres"], "ok", "{body}");
    sys.s3_proxy().restore();
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    sys.shutdown().await;
}

/// Debian's nginx running one of the repository's configs (`nginx/http.conf` or `https.conf`),
/// rewritten only where a test must: the host name, the upstream (`web:8080` becomes the test's
/// `web`), the listening ports (free loopback ports), and the paths of certificates and logs.
struct Nginx {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    config: std::path::PathBuf,
}

fn nginx_binary() -> std::path::PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx is missing: ./scripts/test installs nginx-light")
}

/// `nginx -v`'s version as (major, minor, patch).
fn nginx_version() -> (u32, u32, u32) {
    let out = std::process::Command::new(nginx_binary())
        .arg("-v")
        .output()
        .expect("nginx -v");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: Vec<u32> = text
        .split('/')
        .nth(1)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (v[0], v[1], v[2])
}

impl Nginx {
    /// Writes `file` from `nginx/`, rewritten for this test, into `dir`; `ports` are the ports
    /// that replace 80 and 443.
    fn configure(
        dir: &std::path::Path,
        file: &str,
        web: &str,
        http_port: u16,
        https_port: u16,
    ) -> Self {
        let original =
            std::fs::read_to_string(system_tests::workspace_root().join("nginx").join(file))
                .expect("the repository's nginx config");
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let dir_text = dir.to_str().unwrap();
        let mut site = original.clone();
        for (from, to) in [
            ("${SERVER_NAME}", "localhost".to_owned()),
            ("web:8080", web.to_owned()),
            (
                "listen 80 default_server;",
                format!("listen 127.0.0.1:{http_port} default_server;"),
            ),
            ("/var/www/acme", format!("{dir_text}/acme")),
        ] {
            assert!(site.contains(from), "{file} no longer has {from:?}");
            site = site.replace(from, &to);
        }
        if site.contains("listen 443 ssl default_server;") {
            site = site
                .replace(
                    "listen 443 ssl default_server;",
                    &format!("listen 127.0.0.1:{https_port} ssl default_server;"),
                )
                .replace("/etc/nginx/certs/", &format!("{dir_text}/certs/"));
            // `http2 on;` came with nginx 1.25.1; the image in docker-compose.prod.yml has it.
            // An older local nginx gets the same thing in its own words.
            if nginx_version() < (1, 25, 1) {
                assert!(site.contains("    http2 on;\n"), "{file}: http2");
                site = site.replace("    http2 on;\n", "").replace(
                    &format!("listen 127.0.0.1:{https_port} ssl default_server;"),
                    &format!("listen 127.0.0.1:{https_port} ssl http2 default_server;"),
                );
            }
        }
        std::fs::write(dir.join("site.conf"), site).unwrap();
        // As root, nginx's workers would run as nobody, who may not reach the test's folder.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let main = format!(
            "{user}\nworker_processes 1;\ndaemon off;\npid {dir_text}/nginx.pid;\n\
             error_log {dir_text}/error.log info;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log {dir_text}/access.log;\n\
             client_body_temp_path {dir_text}/client_body;\n  proxy_temp_path {dir_text}/proxy;\n\
             fastcgi_temp_path {dir_text}/fastcgi;\n  uwsgi_temp_path {dir_text}/uwsgi;\n\
             scgi_temp_path {dir_text}/scgi;\n  include {dir_text}/site.conf;\n}}\n"
        );
        let config = dir.join("nginx.conf");
        std::fs::write(&config, main).unwrap();
        Self {
            child: None,
            dir: dir.to_owned(),
            config,
        }
    }

    /// `nginx -t`: whether the configuration loads, and what nginx said.
    fn test(&self) -> (bool, String) {
        let out = self.command().arg("-t").output().expect("nginx -t");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(nginx_binary());
        cmd.arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&self.config);
        cmd
    }

    /// Starts it and waits until `port` accepts connections.
    async fn start(&mut self, port: u16) {
        let (ok, said) = self.test();
        assert!(ok, "nginx refuses the config: {said}");
        self.child = Some(
            self.command()
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nginx starts"),
        );
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nginx does not listen; see {}",
                self.dir.join("error.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: nginx's graceful stop, which also ends its worker.
            // SAFETY: a signal to a child we own.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGQUIT) };
            let _ = child.wait();
        }
    }
}

/// Sends a request's head (and no body) on a connection of its own: the status line of the
/// answer.
async fn head_only(port: u16, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    String::from_utf8_lossy(&answer[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The repository's `nginx/http.conf`, in Debian's nginx in front of `web`: a 210 MB upload
/// streams through it and its zip streams back; a body over its limit gets nginx's 413 without
/// reaching `web`, whose memory stays flat.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_and_zips_stream_through_the_repositorys_nginx_config() {
    let sys = System::start("nginx", Options::default())
        .await
        .expect("system starts");
    let web = sys.base.trim_start_matches("http://").to_owned();
    let port = free_port();
    let mut nginx = Nginx::configure(&sys.logs().join("nginx"), "http.conf", &web, port, 0);
    nginx.start(port).await;
    let front = format!("http://127.0.0.1:{port}");
    let web_pid = sys.web_pid();
    let idle = system_tests::proc_kib(web_pid, "VmRSS");

    // Over the limit by its Content-Length, on the upload route and on any other.
    let status = head_only(
        port,
        "POST /api/batches HTTP/1.1\r\nHost: localhost\r\n\
         Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 600000000\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    let status = head_only(
        port,
        "POST /api/tasks HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000000\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    let after_refusals = system_tests::proc_kib(web_pid, "VmHWM");
    assert!(
        after_refusals < idle + 8 * 1024,
        "web grew from {idle} KiB to {after_refusals} KiB on bodies nginx refused"
    );

    // 5 files of 42 MB (64 × 64 PNGs carrying a large ancillary chunk), streamed.
    let file = bytes::Bytes::from(system_tests::images::png_of_len(64, 64, 42_000_000));
    let mut form = reqwest::multipart::Form::new().text(
        "pipeline",
        serde_json::json!([{"task": "watermark", "text": "through nginx"}]).to_string(),
    );
    for i in 0..5 {
        form = form.part(
            "files",
            reqwest::multipart::Part::stream_with_length(
                reqwest::Body::from(file.clone()),
                file.len() as u64,
            )
            .file_name(format!("big-{i}.png")),
        );
    }
    let started = Instant::now();
    let res = reqwest::Client::new()
        .post(format!("{front}/api/batches"))
        .multipart(form)
        .send()
        .await
        .expect("nginx answers");
    let took = started.elapsed();
    assert_eq!(res.status().as_u16(), 202);
    let body: serde_json::Value = res.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    println!(
        "210 MB through nginx in {took:.1?} ({:.0} MB/s)",
        210.0 / took.as_secs_f64()
    );
    let batch = sys
        .wait_final(&id, Duration::from_secs(120))
        .await
        .expect("finishes");
    assert_eq!(batch["status"], "done", "{batch}");
    assert_eq!(batch["done"], 5, "{batch}");

    let res = reqwest::get(format!("{front}/batches/{id}/download"))
        .await
        .expect("the zip through nginx");
    assert_eq!(res.status().as_u16(), 200);
    let zip = res.bytes().await.unwrap();
    let archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
    assert_eq!(archive.len(), 5);
    let peak = system_tests::proc_kib(web_pid, "VmHWM");
    println!("web: idle {} MiB, peak {} MiB", idle / 1024, peak / 1024);
    assert!(
        peak < idle + 64 * 1024,
        "web grew from {idle} KiB to {peak} KiB on a streamed upload"
    );
    let access = std::fs::read_to_string(nginx.dir.join("access.log")).unwrap();
    assert!(
        access.contains("POST /api/batches HTTP/1.1\" 202"),
        "the upload did not go through nginx: {access}"
    );

    // Metrics stay inside the network; nginx's request id reaches web's log.
    let res = reqwest::get(format!("{front}/metrics")).await.unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = reqwest::get(format!("{front}/api/tasks")).await.unwrap();
    let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "nginx's $request_id: {id}");
    let started = Instant::now();
    while !std::fs::read_to_string(sys.logs().join("web.log"))
        .unwrap_or_default()
        .contains(&id)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nginx's request id {id} is not in web's log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(nginx);
    sys.shutdown().await;
}

/// The repository's `nginx/https.conf` loads (`nginx -t`) with a certificate made on the spot,
/// and serves the app over TLS with HSTS, redirecting plain HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn the_https_config_loads_and_serves_with_a_certificate_made_on_the_spot() {
    let sys = System::start("nginx-https", Options::default().workers(&[]))
        .await
        .expect("system starts");
    let web = sys.base.trim_start_matches("http://").to_owned();
    let (http_port, https_port) = (free_port(), free_port());
    let dir = sys.logs().join("nginx-https");
    let mut nginx = Nginx::configure(&dir, "https.conf", &web, http_port, https_port);
    let certs = dir.join("certs");
    self_signed(
        "/CN=localhost",
        &certs.join("privkey.pem"),
        &certs.join("fullchain.pem"),
        &["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
    );
    let (ok, said) = nginx.test();
    assert!(ok, "nginx -t refuses https.conf: {said}");
    assert!(said.contains("test is successful"), "{said}");
    nginx.start(https_port).await;

    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ca = certs.join("fullchain.pem");
    let headers = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        &format!("https://127.0.0.1:{https_port}/healthz"),
    ]);
    assert!(
        headers.starts_with("HTTP/2 200") || headers.starts_with("HTTP/1.1 200"),
        "{headers}"
    );
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{headers}"
    );
    let headers = curl(&[&format!("http://127.0.0.1:{http_port}/batches")]);
    assert!(headers.starts_with("HTTP/1.1 301"), "{headers}");
    assert!(
        headers.contains("Location: https://127.0.0.1/batches"),
        "{headers}"
    );
    drop(nginx);
    sys.shutdown().await;
}
