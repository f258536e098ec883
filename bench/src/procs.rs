//! The processes under test: the fake DeepSeek, the gateway with memory
//! state, and (when `redis-server` is on PATH) a Redis and a gateway on it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::load::Target;

const KEY: &str = "sk-bench-not-a-real-key";
/// The gateways' `jwt_secret`, and the `bare-job` peer's.
const JWT_SECRET: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[derive(Clone)]
pub struct Gateway {
    pub name: String,
    pub target: Target,
    pub tokens: Vec<String>,
    pub pid: u32,
}

pub struct Procs {
    fake: Child,
    fake_base: String,
    gateways: Vec<(Child, Gateway)>,
    bare: Option<(Child, Target)>,
    bare_wide: Option<(Child, Target)>,
    /// The bare proxy doing the gateway's job, with the memory gateway's
    /// tokens.
    bare_job: Option<(Child, Gateway)>,
    nginx: Option<(Child, Target)>,
    extra: Vec<Child>,
    redis: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
    hashed: String,
}

/// This run's temporary folder: configs, ledgers, logs.
fn run_dir() -> PathBuf {
    std::env::temp_dir().join(format!("deepseek_proxy_bench_{}", std::process::id()))
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// Release binaries; smoke runs use the debug profile (their numbers mean
/// nothing, and CI then saves a long optimised build).
fn profile_dir(smoke: bool) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    PathBuf::from(target).join(if smoke { "debug" } else { "release" })
}

async fn build(smoke: bool) -> Result<(), String> {
    // With `bench` in the set, the dependencies' features are the same as in
    // `cargo run -p bench` (which links the gateway's library for the tap
    // measurement), so neither build invalidates the other's artifacts.
    let mut args = vec![
        "build",
        "--quiet",
        "-p",
        "deepseek_proxy",
        "-p",
        "fake_deepseek",
        "-p",
        "bench",
    ];
    if !smoke {
        args.push("--release");
    }
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // `cargo run` gives the bench its package's variables; build scripts that
    // watch one (ring's watches CARGO_MANIFEST_DIR) would rerun and rebuild
    // half the graph, here and again in the next plain `cargo` command.
    for (name, _) in std::env::vars() {
        let from_cargo_run = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_PRIMARY_PACKAGE";
        if from_cargo_run {
            cargo.env_remove(name);
        }
    }
    let status = cargo
        .args(&args)
        .status()
        .await
        .map_err(|e| format!("cargo build: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "cargo build --release failed".to_owned())
}

/// Spawns `cmd` and waits for a stdout line containing `needle`. Its
/// stderr (the gateway's log) is appended to `<program>.log` in
/// `$BENCH_LOG_DIR`, or in the run's own temporary folder (removed at the
/// end): a file, as a service manager would keep it, not `/dev/null`.
async fn spawn_until(mut cmd: Command, needle: &str) -> Result<(Child, String), String> {
    let dir = std::env::var_os("BENCH_LOG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(run_dir);
    let program = std::path::Path::new(cmd.as_std().get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "process".into());
    let path = dir.join(format!("{program}.log"));
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map(Stdio::from)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return Some(line);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| format!("no {needle:?} line"))?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, found))
}

async fn hash_password(bin: &PathBuf, password: &str) -> Result<String, String> {
    let mut child = Command::new(bin)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    stdin
        .write_all(password.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Plaintext users only: one Argon2 user would make every password hashed
/// at start (see `auth::password`), which for 10,000 users takes minutes.
fn config(users: usize, fake_base: &str, state: &str, ledger: &std::path::Path) -> String {
    let mut text = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = 0\nmax_connections = 50000\n\
         [auth]\njwt_secret = \"{}\"\nlogin_max_failures_per_ip_per_minute = 1000000\n",
        JWT_SECRET
    );
    for i in 0..users {
        text.push_str(&format!(
            "[[auth.users]]\nusername = \"user{i}\"\npassword = \"pw{i}\"\n"
        ));
    }
    // Production defaults (the access log at info is set by the caller, the
    // SQLite ledger with its journal and metrics are on by default) and
    // quotas for every user, none of them reached: each is checked and
    // counted on every request, as in a team's real config.
    text.push_str(&format!(
        "[deepseek]\napi_key = \"{KEY}\"\nbase_url = \"{fake_base}\"\ntimeout_seconds = 60\n[state]\n{state}\n\
         [quotas]\nrequests_per_minute = 1000000\ntokens_per_day = 1000000000000\nmax_concurrent = 64\n\
         budget_per_month = 1000000\n\
         [storage]\nsqlite_path = \"{}\"\n",
        ledger.display()
    ));
    // `BENCH_JOURNAL=off`: the ledger without its crash journal, for A/B.
    if std::env::var("BENCH_JOURNAL").is_ok_and(|v| v == "off") {
        text.push_str("journal_path = \"off\"\n");
    }
    text
}

impl Procs {
    pub async fn start(users: usize, smoke: bool) -> Result<Procs, String> {
        build(smoke).await?;
        let bin = std::env::var_os("BENCH_GATEWAY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| profile_dir(smoke).join("deepseek_proxy"));
        let fake_bin = profile_dir(smoke).join("fake_deepseek");
        let dir = run_dir();
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

        let mut fake_cmd = Command::new(&fake_bin);
        fake_cmd.args([
            "--addr",
            &format!("127.0.0.1:{}", free_port()?),
            "--key",
            KEY,
        ]);
        let (fake, line) = spawn_until(fake_cmd, "listening on").await?;
        let fake_base = line.rsplit(' ').next().unwrap_or_default().to_owned();

        let hashed = hash_password(&bin, "hashed-password").await?;
        let mut states = vec![("memory".to_owned(), "backend = \"memory\"".to_owned())];
        let mut redis = None;
        if let Ok(port) = free_port() {
            let spawned = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(child) => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    redis = Some(child);
                    let url = format!("redis://127.0.0.1:{port}/");
                    states.push((
                        "redis".into(),
                        format!("backend = \"redis\"\nredis_url = \"{url}\""),
                    ));
                }
                Err(_) => eprintln!("bench: redis-server not on PATH; the Redis column is skipped"),
            }
        }

        let mut gateways = Vec::new();
        for (name, state) in states {
            let path = dir.join(format!("{name}.toml"));
            std::fs::write(
                &path,
                config(
                    users,
                    &fake_base,
                    &state,
                    &dir.join(format!("{name}-usage.db")),
                ),
            )
            .map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&bin);
            // The access log at `info`, the default, written to a file as a
            // service manager would take it (`BENCH_RUST_LOG` overrides).
            let log_level = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "info".into());
            cmd.arg("--config").arg(&path).env("RUST_LOG", log_level);
            if let Ok(workers) = std::env::var("BENCH_GATEWAY_WORKERS") {
                cmd.env("TOKIO_WORKER_THREADS", workers);
            }
            let (child, line) = spawn_until(cmd, "listening on").await?;
            let base = line.rsplit(' ').next().unwrap_or_default().to_owned();
            let pid = child.id().ok_or("gateway pid")?;
            let target = Target::new(&base, "/v1/chat/completions", "/auth/login");
            let tokens =
                crate::load::login_all(&target, users, if smoke { 16 } else { 64 }).await?;
            gateways.push((
                child,
                Gateway {
                    name,
                    target,
                    tokens,
                    pid,
                },
            ));
        }
        // `BENCH_BARE_BIN`: another build of it (for example `--features
        // mimalloc`, the gateway's allocator).
        let bare_bin = std::env::var_os("BENCH_BARE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| profile_dir(smoke).join("bare_proxy"));
        let bare = start_bare(&bare_bin, &fake_base, None, None).await?;
        let bare_wide = start_bare(&bare_bin, &fake_base, Some(GATEWAY_BACKLOG), None).await?;
        let job_dir = dir.join("bare-job");
        let (child, target) =
            start_bare(&bare_bin, &fake_base, Some(GATEWAY_BACKLOG), Some(&job_dir)).await?;
        let bare_job = Gateway {
            name: "bare-job".into(),
            pid: child.id().ok_or("bare-job pid")?,
            target,
            tokens: gateways
                .first()
                .map(|(_, g)| g.tokens.clone())
                .unwrap_or_default(),
        };
        let nginx = start_nginx(&dir, &fake_base).await;
        Ok(Procs {
            fake,
            fake_base,
            gateways,
            bare: Some(bare),
            bare_wide: Some(bare_wide),
            bare_job: Some((child, bare_job)),
            nginx,
            extra: Vec::new(),
            redis,
            dir,
            bin,
            hashed,
        })
    }

    /// The fake itself, with the real key: the baseline.
    pub fn direct(&self) -> Target {
        let base = self.fake_base.trim_end_matches("/v1").to_owned();
        let mut target = Target::new(&base, "/v1/chat/completions", "/auth/login");
        target.fixed_bearer = Some(KEY.to_owned());
        target
    }

    /// Every proxy in front of the fake, in the order of the report's
    /// columns: the bare hyper proxy (with tokio's backlog, then as
    /// `bare-wide` with the gateway's), nginx when it is installed (the
    /// references: proxies that do no work), `bare-job` (the bare proxy
    /// doing the gateway's job: the floor of the same work), then the
    /// gateways. The bare proxies append their stderr to the same
    /// `bare_proxy.log`.
    pub fn peers(&self) -> Vec<Gateway> {
        let references = [
            ("bare", &self.bare),
            ("bare-wide", &self.bare_wide),
            ("nginx", &self.nginx),
        ]
        .into_iter()
        .filter_map(|(name, r)| {
            let (child, target) = r.as_ref()?;
            Some(Gateway {
                name: name.to_owned(),
                target: target.clone(),
                tokens: Vec::new(),
                pid: child.id()?,
            })
        });
        let job = self.bare_job.iter().map(|(_, g)| g.clone());
        references.chain(job).chain(self.gateways()).collect()
    }

    pub fn gateways(&self) -> Vec<Gateway> {
        self.gateways.iter().map(|(_, g)| g.clone()).collect()
    }

    /// Gateways for the login measurements: (label, target, user, password).
    pub async fn login_gateways(
        &mut self,
    ) -> Result<Vec<(String, Target, &'static str, &'static str)>, String> {
        let plain = "[[auth.users]]\nusername = \"user0\"\npassword = \"pw0\"\n".to_owned();
        let hashed = format!(
            "[[auth.users]]\nusername = \"hashed\"\npassword_hash = \"{}\"\n",
            self.hashed
        );
        let mut out = Vec::new();
        for (label, users, cache, user, password) in [
            ("plaintext user, cache hit", &plain, 60, "user0", "pw0"),
            ("plaintext user, cache miss", &plain, 0, "user0", "pw0"),
            (
                "argon2 user, cache hit",
                &hashed,
                60,
                "hashed",
                "hashed-password",
            ),
            (
                "argon2 user, cache miss",
                &hashed,
                0,
                "hashed",
                "hashed-password",
            ),
        ] {
            let text = format!(
                "[server]\nhost = \"127.0.0.1\"\nport = 0\n[auth]\njwt_secret = \"{}\"\n\
                 login_cache_seconds = {cache}\n{users}[deepseek]\napi_key = \"{KEY}\"\nbase_url = \"{}\"\n\
                 [storage]\nsqlite_path = \":memory:\"\n",
                JWT_SECRET,
                self.fake_base
            );
            let path = self.dir.join(format!("login-{}.toml", out.len()));
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&self.bin);
            cmd.arg("--config").arg(&path).env("RUST_LOG", "warn");
            let (child, line) = spawn_until(cmd, "listening on").await?;
            self.extra.push(child);
            let base = line.rsplit(' ').next().unwrap_or_default().to_owned();
            out.push((
                label.to_owned(),
                Target::new(&base, "/v1/chat/completions", "/auth/login"),
                user,
                password,
            ));
        }
        Ok(out)
    }

    pub async fn stop(&mut self) {
        for (child, _) in &mut self.gateways {
            let _ = child.kill().await;
        }
        for child in &mut self.extra {
            let _ = child.kill().await;
        }
        for (child, _) in self.bare.iter_mut().chain(self.bare_wide.iter_mut()) {
            let _ = child.kill().await;
        }
        if let Some((child, _)) = &mut self.bare_job {
            let _ = child.kill().await;
        }
        if let Some((child, _)) = &mut self.nginx {
            // A SIGKILL to the master would leave its workers running, one
            // pair per run: ask it to stop them and wait (briefly) instead.
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            }
            let _ = child.kill().await;
        }
        let _ = self.fake.kill().await;
        if let Some(redis) = &mut self.redis {
            let _ = redis.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Warns when the open-file limit is too low for the stream counts.
pub fn raise_fd_limit() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u64>().ok());
    if let Some(soft) = soft {
        if soft < 65_536 {
            eprintln!(
                "bench: the open-file limit is {soft}; for 10,000 streams run `ulimit -n 65536` first"
            );
        }
    }
}

/// Cores, memory and CPU model, for the report.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores, {mem}, {cpu}; gateway, fake and load generator on the same machine")
}

/// `pid` and its children (nginx's master and its workers).
fn with_children(pid: u32) -> Vec<u32> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid)
        .chain(children.split_whitespace().filter_map(|c| c.parse().ok()))
        .collect()
}

/// utime + stime of `pid` and its children, in microseconds (clock ticks
/// assumed 100/s).
pub fn cpu_us(pid: u32) -> f64 {
    with_children(pid).into_iter().map(cpu_us_of).sum()
}

fn cpu_us_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) * 10_000.0
}

/// Resident memory of `pid` and its children, in KiB.
pub fn rss_kib(pid: u32) -> f64 {
    with_children(pid).into_iter().map(rss_kib_of).sum()
}

fn rss_kib_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap_or(0.0)
}

/// The gateway's listen backlog (`app::LISTEN_BACKLOG`), for `bare-wide`.
const GATEWAY_BACKLOG: u32 = 65_535;

/// The bare hyper proxy (`bench/src/bin/bare_proxy/`) in front of the
/// fake, with tokio's listen backlog or `backlog`; with `job`, doing the
/// gateway's job (`BARE_JOB`) with its files there and the gateways' JWT
/// secret, so their tokens are valid (the target has no fixed bearer).
async fn start_bare(
    bin: &std::path::Path,
    fake_base: &str,
    backlog: Option<u32>,
    job: Option<&std::path::Path>,
) -> Result<(Child, Target), String> {
    let mut cmd = Command::new(bin);
    cmd.args(["127.0.0.1:0", fake_base.trim_end_matches("/v1")]);
    if let Some(backlog) = backlog {
        cmd.arg(backlog.to_string());
    }
    if let Some(dir) = job {
        cmd.env("BARE_JOB", dir)
            .env("BARE_JWT_SECRET", JWT_SECRET)
            .env("BARE_UPSTREAM_KEY", KEY);
    }
    let (child, line) = spawn_until(cmd, "listening on").await?;
    let base = line.rsplit(' ').next().unwrap_or_default().to_owned();
    let mut target = Target::new(&base, "/v1/chat/completions", "/auth/login");
    if job.is_none() {
        target.fixed_bearer = Some(KEY.to_owned());
    }
    Ok((child, target))
}

/// nginx with the settings DEPLOYMENT.md recommends (HTTP/1.1 keep-alive
/// upstream, no buffering), one worker (as in issue 15's table), and a
/// listen backlog as large as the gateway's. `None` without nginx.
async fn start_nginx(dir: &std::path::Path, fake_base: &str) -> Option<(Child, Target)> {
    let upstream = fake_base
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    let port = free_port().ok()?;
    let conf = format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir};\n\
           upstream fake {{ server {upstream}; keepalive 128; }}\n\
           server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    tcp_nodelay on;\n\
             location / {{\n      proxy_pass http://fake;\n      proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n      proxy_buffering off;\n\
               proxy_request_buffering off;\n      proxy_read_timeout 600s;\n    }}\n  }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).ok()?;
    let child = Command::new("nginx")
        .args(["-g", "daemon off;", "-c"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(child) = child else {
        eprintln!("bench: nginx not installed; the nginx reference is skipped");
        return None;
    };
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let mut target = Target::new(
                &format!("http://127.0.0.1:{port}"),
                "/v1/chat/completions",
                "/auth/login",
            );
            target.fixed_bearer = Some(KEY.to_owned());
            return Some((child, target));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("bench: nginx did not start; the nginx reference is skipped");
    None
}
