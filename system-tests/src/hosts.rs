//! Hosts made of Linux network namespaces, for tests that need the system spread over several
//! machines: one namespace holds Postgres, Redis, Garage and `web`, each other one is a worker
//! host that reaches them only by address, over a veth link of its own that a test can cut. The
//! test process itself reaches the services' namespace over one more link. Needs root (and `ip`);
//! everything is removed on drop.
//!
//! ```text
//!   test (root namespace) 10.213.0.1 ── 10.213.0.2  services ── 10.213.1.1 … 10.213.1.2  host 1
//!                                                            ── 10.213.2.1 … 10.213.2.2  host 2
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The address of the services' namespace, as every host reaches it.
pub const SERVICES: &str = "10.213.0.2";
const SUBNET: &str = "10.213.0.0/24";

/// Where the services of a [`Hosts`] answer, and with which credentials.
#[derive(Debug, Clone)]
pub struct Services {
    pub database_url: String,
    pub redis_url: String,
    pub s3_endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Services {
    /// A client of the services' bucket.
    pub fn storage(&self) -> jobs::storage::Storage {
        jobs::storage::Storage::from_config(jobs::storage::StorageConfig {
            connections: jobs::storage::Connections::for_endpoint(Some(&self.s3_endpoint)),
            endpoint: Some(self.s3_endpoint.clone()),
            region: "us-east-1".into(),
            bucket: self.bucket.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone().into(),
            force_path_style: true,
        })
    }
}

/// Why this machine cannot run [`Hosts`], if it cannot: not root, or no `ip`.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("it needs root to create network namespaces".into());
    }
    if ip().is_none() {
        return Some("`ip` (iproute2) is missing".into());
    }
    None
}

fn ip() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("/dev/urandom");
}

/// Runs a command to its end; an error with its output when it fails.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The namespaces, links and service processes of one test.
pub struct Hosts {
    id: String,
    dir: PathBuf,
    hosts: usize,
    services: Services,
    children: Vec<Child>,
    pg_ctl: PathBuf,
}

impl Hosts {
    /// Makes the services' namespace and `hosts` worker hosts, and starts Postgres, Redis and
    /// Garage in the first, with their files and logs in a folder of the system's temporary
    /// folder (where the postgres user may go) named in the errors.
    pub async fn start(hosts: usize) -> anyhow::Result<Self> {
        let id = format!("{:04x}", std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("wm-hosts-{id}-{}", hex(4)));
        std::fs::create_dir_all(&dir)?;
        let mut this = Self {
            id,
            dir,
            hosts,
            services: Services {
                database_url: String::new(),
                redis_url: String::new(),
                s3_endpoint: format!("http://{SERVICES}:3900"),
                bucket: "watermark".into(),
                access_key_id: format!("GK{}", hex(12)),
                secret_access_key: hex(32),
            },
            children: Vec::new(),
            pg_ctl: PathBuf::new(),
        };
        this.remove_namespaces();
        this.make_links()?;
        this.start_postgres()?;
        this.start_redis()?;
        this.start_garage().await?;
        Ok(this)
    }

    pub fn services(&self) -> &Services {
        &self.services
    }

    /// The folder of the services' files and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn namespace(&self, host: usize) -> String {
        if host == 0 {
            format!("wm{}s", self.id)
        } else {
            format!("wm{}h{host}", self.id)
        }
    }

    /// The command prefix that runs a program on host `host` (0: the services' host).
    pub fn wrapper(&self, host: usize) -> Vec<String> {
        vec![
            ip().expect("ip").to_string_lossy().into_owned(),
            "netns".into(),
            "exec".into(),
            self.namespace(host),
        ]
    }

    /// A command run on host `host`.
    pub fn command(&self, host: usize, program: &str) -> Command {
        let wrapper = self.wrapper(host);
        let mut cmd = Command::new(&wrapper[0]);
        cmd.args(&wrapper[1..]).arg(program);
        cmd
    }

    fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new(ip().context("ip")?).args(args))
    }

    fn make_links(&self) -> anyhow::Result<()> {
        let svc = self.namespace(0);
        self.ip(&["netns", "add", &svc])?;
        let root_end = format!("wm{}r", self.id);
        self.ip(&[
            "link", "add", &root_end, "type", "veth", "peer", "name", "eth0", "netns", &svc,
        ])?;
        self.ip(&["addr", "add", "10.213.0.1/24", "dev", &root_end])?;
        self.ip(&["link", "set", &root_end, "up"])?;
        self.ip(&[
            "-n",
            &svc,
            "addr",
            "add",
            &format!("{SERVICES}/24"),
            "dev",
            "eth0",
        ])?;
        self.ip(&["-n", &svc, "link", "set", "eth0", "up"])?;
        self.ip(&["-n", &svc, "link", "set", "lo", "up"])?;
        for host in 1..=self.hosts {
            let ns = self.namespace(host);
            let link = format!("h{host}");
            self.ip(&["netns", "add", &ns])?;
            self.ip(&[
                "-n", &svc, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            self.ip(&[
                "-n",
                &svc,
                "addr",
                "add",
                &format!("10.213.{host}.1/24"),
                "dev",
                &link,
            ])?;
            self.ip(&["-n", &svc, "link", "set", &link, "up"])?;
            self.ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.213.{host}.2/24"),
                "dev",
                "eth0",
            ])?;
            self.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            self.ip(&[
                "-n",
                &ns,
                "route",
                "add",
                SUBNET,
                "via",
                &format!("10.213.{host}.1"),
            ])?;
        }
        Ok(())
    }

    /// Cuts host `host` off (its link goes down), or brings it back.
    pub fn set_link(&self, host: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        self.ip(&[
            "-n",
            &self.namespace(0),
            "link",
            "set",
            &format!("h{host}"),
            state,
        ])
    }

    fn start_postgres(&mut self) -> anyhow::Result<()> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("Postgres is not installed")?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("pg_ctl").exists())
            .max()
            .context("no pg_ctl under /usr/lib/postgresql")?;
        let data = self.dir.join("pg");
        let run_dir = self.dir.join("pg-run");
        std::fs::create_dir_all(&run_dir)?;
        let password = hex(16);
        let pwfile = run_dir.join("password");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        run(Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&self.dir))?;
        // The folders above the test's must let the postgres user through.
        run(Command::new("chmod").arg("755").arg(&self.dir))?;
        let as_postgres = |program: &Path| {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        };
        run(as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "watermark", "--auth=scram-sha-256", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.display())))?;
        let mut hba = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("pg_hba.conf"))?;
        use std::io::Write;
        writeln!(hba, "host all all 10.213.0.0/16 scram-sha-256")?;
        drop(hba);
        let ns = self.namespace(0);
        let wrapper = self.wrapper(0);
        run(Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .args(["runuser", "-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(run_dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses={SERVICES} -p 5432 -k {} -c fsync=off -c max_connections=200",
                run_dir.display()
            ))
            .arg("start"))
        .with_context(|| format!("start Postgres in {ns}"))?;
        self.pg_ctl = bin.join("pg_ctl");
        run(as_postgres(&bin.join("psql"))
            .args(["-h", SERVICES, "-U", "watermark", "-d", "postgres", "-qc"])
            .arg("CREATE DATABASE watermark")
            .env("PGPASSWORD", &password))?;
        self.services.database_url =
            format!("postgres://watermark:{password}@{SERVICES}:5432/watermark");
        Ok(())
    }

    fn start_redis(&mut self) -> anyhow::Result<()> {
        let password = hex(16);
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let child = self
            .command(0, "redis-server")
            .args([
                "--bind",
                SERVICES,
                "--port",
                "6379",
                "--requirepass",
                &password,
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("start redis-server")?;
        self.children.push(child);
        self.services.redis_url = format!("redis://:{password}@{SERVICES}:6379/");
        Ok(())
    }

    async fn start_garage(&mut self) -> anyhow::Result<()> {
        let garage = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
            .map(|h| h.join("bin/garage"))
            .filter(|p| p.exists())
            .or_else(|| {
                ["/usr/local/bin/garage", "/usr/bin/garage"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.exists())
            })
            .context("garage is missing: ./scripts/test installs it")?;
        let dir = self.dir.join("garage");
        std::fs::create_dir_all(&dir)?;
        // The repository's deploy/garage.toml, with this test's folders and address.
        let config = std::fs::read_to_string(crate::workspace_root().join("deploy/garage.toml"))?
            .replace("/var/lib/garage", dir.to_str().context("a UTF-8 path")?)
            .replace("127.0.0.1:3901", &format!("{SERVICES}:3901"))
            .replace("[::]:3901", &format!("{SERVICES}:3901"))
            .replace("[::]:3900", &format!("{SERVICES}:3900"));
        let path = dir.join("garage.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(self.dir.join("garage.log"))?;
        let child = self
            .command(0, garage.to_str().context("a UTF-8 path")?)
            .arg("-c")
            .arg(&path)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_RPC_SECRET", hex(32))
            .env("GARAGE_DEFAULT_BUCKET", &self.services.bucket)
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.services.access_key_id)
            .env(
                "GARAGE_DEFAULT_SECRET_KEY",
                &self.services.secret_access_key,
            )
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("start garage")?;
        self.children.push(child);
        let storage = self.services.storage();
        let started = Instant::now();
        while storage.ping().await.is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "Garage did not serve the bucket within 30 s; see {}",
                    self.dir.join("garage.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    fn remove_namespaces(&self) {
        if let Some(ip) = ip() {
            for host in 0..=self.hosts {
                let _ = Command::new(&ip)
                    .args(["netns", "del", &self.namespace(host)])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = Command::new(&ip)
                .args(["link", "del", &format!("wm{}r", self.id)])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.pg_ctl.exists() {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&self.pg_ctl)
                .arg("-D")
                .arg(self.dir.join("pg"))
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Processes still in a namespace keep it alive after `ip netns del`; none are left.
        self.remove_namespaces();
        if std::thread::panicking() {
            // Keep the services' logs of a failed test; their data goes.
            let _ = std::fs::remove_dir_all(self.dir.join("pg"));
            let _ = std::fs::remove_dir_all(self.dir.join("garage"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
