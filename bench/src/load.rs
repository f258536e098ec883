//! The load generator: one reqwest client per measurement, with TCP_NODELAY.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::procs::{cpu_us, rss_kib};

#[derive(Clone)]
pub struct Target {
    pub base: String,
    pub chat_path: String,
    pub login_path: String,
    /// The real key, for direct calls to the fake.
    pub fixed_bearer: Option<String>,
}

impl Target {
    pub fn new(base: &str, chat_path: &str, login_path: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            chat_path: chat_path.into(),
            login_path: login_path.into(),
            fixed_bearer: None,
        }
    }

    pub fn chat_url(&self) -> String {
        format!("{}{}", self.base, self.chat_path)
    }

    pub fn bearer<'a>(&'a self, token: Option<&'a str>) -> &'a str {
        self.fixed_bearer.as_deref().or(token).unwrap_or("")
    }
}

pub fn client(conns: usize) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(conns)
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| e.to_string())
}

pub fn small_body(stream: bool) -> Value {
    // A served model with thinking off: the gateway forwards it as it is
    // (but for user_id), and the fake accepts it when measured directly.
    json!({"model": "deepseek-flash", "stream": stream, "thinking": {"type": "disabled"},
           "messages": [{"role": "user", "content": "hi"}]})
}

/// Logs in users `user0..userN` (`N` = `users`), `parallel` at a time.
pub async fn login_all(
    target: &Target,
    users: usize,
    parallel: usize,
) -> Result<Vec<String>, String> {
    let http = client(parallel)?;
    let url = format!("{}{}", target.base, target.login_path);
    let logins = futures_util::stream::iter(0..users).map(|i| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let body = json!({"username": format!("user{i}"), "password": format!("pw{i}")});
            let response = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let value: Value = response.json().await.map_err(|e| e.to_string())?;
            value["token"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("login of user{i} failed: {value}"))
        }
    });
    logins
        .buffered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub struct Percentiles(pub [f64; 3]);

impl Percentiles {
    pub fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            samples.get(i).copied().unwrap_or(0.0)
        };
        Percentiles([at(0.5), at(0.99), samples.last().copied().unwrap_or(0.0)])
    }

    pub fn get(&self, i: usize) -> f64 {
        self.0[i]
    }

    pub fn to_json(&self) -> Value {
        json!({"p50": self.0[0], "p99": self.0[1], "max": self.0[2]})
    }
}

/// `n` non-stream requests to each target at concurrency 1, each target on
/// its own keep-alive connection, interleaved (one request to each in turn,
/// the order rotating every round): a drift of the machine's speed during
/// the run falls on every target alike, which measuring them one after
/// another does not give on a shared VM. The first 50 rounds warm up.
pub async fn latency(
    targets: &[(&Target, Option<String>)],
    n: usize,
) -> Result<Vec<Percentiles>, String> {
    let body = serde_json::to_vec(&small_body(false)).map_err(|e| e.to_string())?;
    let mut peers = Vec::with_capacity(targets.len());
    for (target, token) in targets {
        let bearer = target.bearer(token.as_deref()).to_owned();
        peers.push((client(1)?, target.chat_url(), bearer));
    }
    let mut samples = vec![Vec::with_capacity(n); targets.len()];
    for i in 0..(n + 50) {
        for k in 0..peers.len() {
            let j = (i + k) % peers.len();
            let (http, url, bearer) = &peers[j];
            let started = Instant::now();
            let response = http
                .post(url)
                .bearer_auth(bearer)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("latency request got {}", response.status()));
            }
            response.bytes().await.map_err(|e| e.to_string())?;
            if i >= 50 {
                samples[j].push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    Ok(samples.into_iter().map(Percentiles::of).collect())
}

pub struct Throughput {
    pub rps: f64,
    pub errors: u64,
    pub cpu_us_per_request: f64,
}

/// `conns` workers for `secs` seconds; worker `w` cycles through tokens
/// `w, w + conns, ...`, so no two workers share a token.
pub async fn throughput(
    target: &Target,
    tokens: &[String],
    conns: usize,
    secs: f64,
    pid: Option<u32>,
) -> Result<Throughput, String> {
    let http = client(conns)?;
    let url = target.chat_url();
    let body = bytes_body(false)?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let cpu_before = pid.map(cpu_us);
    let started = Instant::now();
    let workers = (0..conns).map(|w| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        let mine: Vec<String> = tokens
            .iter()
            .skip(w)
            .step_by(conns.max(1))
            .cloned()
            .collect();
        let target = target.clone();
        async move {
            let (mut ok, mut errors, mut k) = (0u64, 0u64, 0usize);
            while Instant::now() < deadline {
                let token = mine.get(k % mine.len().max(1)).map(String::as_str);
                k += 1;
                let sent = http
                    .post(&url)
                    .bearer_auth(target.bearer(token))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        if r.bytes().await.is_ok() {
                            ok += 1;
                        } else {
                            errors += 1;
                        }
                    }
                    _ => errors += 1,
                }
            }
            (ok, errors)
        }
    });
    let results = futures_util::future::join_all(workers).await;
    let elapsed = started.elapsed().as_secs_f64();
    let (ok, errors) = results.iter().fold((0, 0), |(a, b), (o, e)| (a + o, b + e));
    let cpu = match (pid, cpu_before) {
        (Some(pid), Some(before)) if ok > 0 => (cpu_us(pid) - before) / ok as f64,
        _ => 0.0,
    };
    Ok(Throughput {
        rps: ok as f64 / elapsed,
        errors,
        cpu_us_per_request: cpu,
    })
}

fn bytes_body(stream: bool) -> Result<bytes_like::Body, String> {
    serde_json::to_vec(&small_body(stream))
        .map(bytes_like::Body)
        .map_err(|e| e.to_string())
}

mod bytes_like {
    /// A cheaply clonable request body.
    #[derive(Clone)]
    pub struct Body(pub Vec<u8>);

    impl From<Body> for reqwest::Body {
        fn from(b: Body) -> Self {
            reqwest::Body::from(b.0)
        }
    }
}

pub struct Streams {
    pub completed: usize,
    pub lost_frames: usize,
    pub ttff_p50_ms: f64,
    pub ttff_p99_ms: f64,
    pub gap_p99_ms: f64,
    pub gap_max_ms: f64,
    pub peak_rss_kib: f64,
    /// Why streams failed, with how many failed so: `connect: ...`,
    /// `status 502`, `body: ...`.
    pub failures: std::collections::BTreeMap<String, usize>,
}

impl Streams {
    pub fn to_json(&self) -> Value {
        json!({"completed": self.completed, "lost_frames": self.lost_frames,
               "ttff_p50_ms": self.ttff_p50_ms, "ttff_p99_ms": self.ttff_p99_ms,
               "gap_p99_ms": self.gap_p99_ms, "gap_max_ms": self.gap_max_ms,
               "peak_rss_kib_over_idle": self.peak_rss_kib, "failures": self.failures})
    }
}

/// `s` concurrent streams, each of `frames` content frames `gap_ms` apart,
/// each with its own token. Frames are counted as `data:` events.
pub async fn streams(
    target: &Target,
    tokens: &[String],
    s: usize,
    frames: usize,
    gap_ms: u64,
    pid: Option<u32>,
) -> Result<Streams, String> {
    let http = client(s)?;
    let url = target.chat_url();
    let reply = vec!["w"; frames].join(" ");
    let mut body = small_body(true);
    body["_fake"] = json!({"chunks": frames, "chunk_delay_ms": gap_ms, "reply": reply});
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    // role chunk + content frames + final usage chunk + [DONE]
    let expected = frames + 3;
    let idle_rss = pid.map(rss_kib).unwrap_or(0.0);
    let peak_probe = std::sync::Arc::new(std::sync::Mutex::new(0.0f64));
    // Samples the gateway's resident memory while the streams run.
    let sampling = pid.map(|pid| {
        let peak = peak_probe.clone();
        tokio::spawn(async move {
            loop {
                let rss = rss_kib(pid);
                {
                    let mut p = peak.lock().unwrap_or_else(|e| e.into_inner());
                    *p = p.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let tasks = (0..s).map(|i| {
        let (http, url, body) = (http.clone(), url.clone(), body.clone());
        let token = tokens.get(i % tokens.len().max(1)).cloned();
        let target = target.clone();
        async move {
            let started = Instant::now();
            let sent = http
                .post(&url)
                .bearer_auth(target.bearer(token.as_deref()))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) => return (0usize, None, Vec::new(), Some(format!("send: {e}"))),
            };
            if !response.status().is_success() {
                let reason = format!("status {}", response.status().as_u16());
                return (0, None, Vec::new(), Some(reason));
            }
            let mut stream = response.bytes_stream();
            let (mut events, mut first, mut last, mut gaps) =
                (0usize, None, None::<Instant>, Vec::new());
            let mut failure = None;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        failure = Some(format!("body: {e}"));
                        break;
                    }
                };
                let now = Instant::now();
                first.get_or_insert(now.duration_since(started));
                if let Some(prev) = last {
                    gaps.push(now.duration_since(prev).as_secs_f64() * 1e3);
                }
                last = Some(now);
                events += chunk.windows(6).filter(|w| w == b"data: ").count();
            }
            (events, first, gaps, failure)
        }
    });
    let results = futures_util::future::join_all(tasks).await;
    if let Some(handle) = sampling {
        handle.abort();
    }
    let peak = *peak_probe.lock().unwrap_or_else(|e| e.into_inner());
    let completed = results.iter().filter(|(e, ..)| *e == expected).count();
    let lost: usize = results
        .iter()
        .map(|(e, ..)| expected.saturating_sub(*e))
        .sum();
    let mut failures = std::collections::BTreeMap::new();
    for (events, _, _, failure) in &results {
        let reason = match failure {
            Some(reason) => reason.clone(),
            None if *events != expected => format!("ended after {events} of {expected} events"),
            None => continue,
        };
        *failures.entry(reason).or_insert(0) += 1;
    }
    let ttff: Vec<f64> = results
        .iter()
        .filter_map(|(_, f, ..)| f.map(|d| d.as_secs_f64() * 1e3))
        .collect();
    let gaps: Vec<f64> = results.into_iter().flat_map(|(_, _, g, _)| g).collect();
    let ttff = Percentiles::of(ttff);
    let gaps = Percentiles::of(gaps);
    Ok(Streams {
        completed,
        lost_frames: lost,
        ttff_p50_ms: ttff.get(0),
        ttff_p99_ms: ttff.get(1),
        gap_p99_ms: gaps.get(1),
        gap_max_ms: gaps.get(2),
        peak_rss_kib: (peak - idle_rss).max(0.0),
        failures,
    })
}

/// Logins per second for one user, one after another, for `secs`.
pub async fn logins(target: &Target, user: &str, password: &str, secs: f64) -> Result<f64, String> {
    let http = client(1)?;
    let url = format!("{}{}", target.base, target.login_path);
    let body = json!({"username": user, "password": password});
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut ok = 0u64;
    while Instant::now() < deadline {
        let r = http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("login of {user} got {}", r.status()));
        }
        r.bytes().await.map_err(|e| e.to_string())?;
        ok += 1;
    }
    Ok(ok as f64 / started.elapsed().as_secs_f64())
}
