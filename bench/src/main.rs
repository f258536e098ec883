//! `cargo run --release -p bench -- [--smoke | --quick | --tap | --streams] [--json PATH]`
//!
//! Builds the release binaries, starts the fake DeepSeek and the gateway
//! (memory state, and Redis state when `redis-server` is on PATH), and
//! measures, in the same run, **direct to the fake** against **through the
//! gateway**: latency at concurrency 1, throughput at 64 connections over
//! 1,000 tokens, concurrent paced streams, and logins. Prints a markdown
//! table and writes JSON. `--smoke` runs each part for a moment, so CI can
//! check the harness still works; it asserts nothing about speed. `--quick`
//! runs only latency and throughput, for tuning iterations. `--tap` runs only
//! the usage tap's per-chunk delay (see `tap/`), which the full run and
//! `--smoke` include.
//! `BENCH_BARE_BIN=PATH` runs that bare proxy build (e.g. `--features mimalloc`).
//! `BENCH_GATEWAY_WORKERS=N` sets the gateway's tokio worker threads.
//! `BENCH_JOURNAL=off` turns the ledger's crash journal off.
//! For A/B runs: `BENCH_GATEWAY_BIN=PATH` runs that gateway binary instead
//! of the one just built, and `BENCH_STREAMS=1000,5000` replaces the plan's
//! stream counts (`--quick` has none). `BENCH_LOG_DIR=DIR` keeps the
//! processes' logs (stderr) in `DIR/<program>.log`.

mod load;
mod plan;
mod procs;
mod tap;

use load::Target;
pub use plan::Plan;
use procs::{Gateway, Procs};
use std::collections::BTreeMap;

use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/bench.json".into());
    let flag = |name: &str| args.iter().any(|a| a == name);
    let mut plan = if smoke {
        Plan::smoke()
    } else if flag("--quick") {
        Plan::quick()
    } else if flag("--tap") {
        Plan::tap_only()
    } else if flag("--streams") {
        Plan::streams_only()
    } else {
        Plan::full()
    };
    if let Ok(counts) = std::env::var("BENCH_STREAMS") {
        match counts
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(counts) => plan.stream_counts = counts,
            Err(e) => {
                eprintln!("bench: BENCH_STREAMS={counts:?}: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = run(&plan, smoke, &json_path).await {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

async fn run(plan: &Plan, smoke: bool, json_path: &str) -> Result<(), String> {
    procs::raise_fd_limit();
    let users = plan
        .tokens
        .max(plan.stream_counts.iter().copied().max().unwrap_or(0))
        .max(plan.tap_streams);
    let mut procs = Procs::start(users, smoke).await?;
    let mut report = Report {
        table: Vec::new(),
        others: Vec::new(),
        results: serde_json::Map::new(),
    };
    if plan.core {
        core(plan, &mut procs, &mut report).await?;
    }
    if plan.tap_streams > 0 {
        tap::measure(plan, &procs.direct(), &procs.gateways(), &mut report).await?;
    }

    procs.stop().await;
    let machine = procs::machine();
    println!("\n{machine}\n");
    // Tables with no rows are left out.
    let tables = std::iter::once(&report.table).chain(&report.others);
    for table in tables.filter(|t| t.len() > 2) {
        for line in table {
            println!("{line}");
        }
        println!();
    }
    let mut results = report.results;
    results.insert("machine".into(), Value::String(machine));
    results.insert("smoke".into(), Value::Bool(smoke));
    let text = serde_json::to_string_pretty(&Value::Object(results)).map_err(|e| e.to_string())?;
    std::fs::write(json_path, text).map_err(|e| format!("writing {json_path}: {e}"))?;
    println!("JSON: {json_path}");
    Ok(())
}

/// What the run prints (markdown tables) and writes (JSON).
pub struct Report {
    /// Direct to the fake, then one column per gateway.
    pub table: Vec<String>,
    /// Tables of their own, printed after it.
    pub others: Vec<Vec<String>>,
    pub results: serde_json::Map<String, Value>,
}

/// Latency, throughput, concurrent streams and logins.
///
/// Every measurement runs against direct (the fake itself), then each peer:
/// the bare hyper proxy (with tokio's listen backlog, and `bare-wide` with the
/// gateway's) and nginx (the floor: proxies that do no work), then
/// the gateways. The targets of issue 15 are read off the same run.
async fn core(plan: &Plan, procs: &mut Procs, report: &mut Report) -> Result<(), String> {
    let direct = procs.direct();
    let peers: Vec<Gateway> = procs.peers();
    let names: Vec<String> = peers.iter().map(|p| p.name.clone()).collect();
    report.table = vec![
        format!("| measurement | direct to fake | {} |", names.join(" | ")),
        format!("|---|---|{}", "---|".repeat(names.len())),
    ];
    let mut seen = Seen::default();

    // 1. and 2. Latency at concurrency 1, throughput (`--streams` runs
    // streams only).
    if plan.latency_requests > 0 {
        latency_and_throughput(plan, &direct, &peers, report, &mut seen).await?;
    }
    // 3. and 4.
    streams_and_logins(plan, procs, &direct, &peers, report, seen).await
}

/// Latency at concurrency 1, then throughput over distinct tokens.
async fn latency_and_throughput(
    plan: &Plan,
    direct: &Target,
    peers: &[Gateway],
    report: &mut Report,
    seen: &mut Seen,
) -> Result<(), String> {
    // Interleaved: one request to each in turn (see `load::latency`).
    let mut targets = vec![(direct, None)];
    targets.extend(
        peers
            .iter()
            .map(|peer| (&peer.target, peer.tokens.first().cloned())),
    );
    let mut lat_cols = load::latency(&targets, plan.latency_requests).await?;
    let direct_lat = lat_cols.remove(0);
    for (label, pick) in [("p50", 0usize), ("p99", 1), ("max", 2)] {
        let d = direct_lat.get(pick);
        let cells: Vec<String> = lat_cols
            .iter()
            .map(|l| format!("{:.1} µs (+{:.1})", l.get(pick), l.get(pick) - d))
            .collect();
        report.table.push(row(
            &format!("latency {label}, concurrency 1"),
            &format!("{d:.1} µs"),
            &cells,
        ));
    }
    report
        .results
        .insert("latency_direct_us".into(), direct_lat.to_json());
    for (peer, l) in peers.iter().zip(&lat_cols) {
        seen.added_p50
            .insert(peer.name.clone(), l.get(0) - direct_lat.get(0));
        seen.added_p99
            .insert(peer.name.clone(), l.get(1) - direct_lat.get(1));
        report
            .results
            .insert(format!("latency_{}_us", peer.name), l.to_json());
    }

    // 2. Throughput over distinct tokens.
    let conns = plan.throughput_conns;
    let direct_tp = load::throughput(direct, &[], conns, plan.throughput_secs, None).await?;
    let mut tp_cells = Vec::new();
    let mut cpu_cells = Vec::new();
    for peer in peers {
        let tp = load::throughput(
            &peer.target,
            &peer.tokens,
            conns,
            plan.throughput_secs,
            Some(peer.pid),
        )
        .await?;
        let errors = if tp.errors > 0 {
            format!(", {} errors", tp.errors)
        } else {
            String::new()
        };
        tp_cells.push(format!(
            "{:.0}/s ({:.2} of direct{errors})",
            tp.rps,
            tp.rps / direct_tp.rps
        ));
        cpu_cells.push(format!("{:.1} µs", tp.cpu_us_per_request));
        seen.rps.insert(peer.name.clone(), tp.rps);
        report.results.insert(
            format!("throughput_{}", peer.name),
            json!({"rps": tp.rps, "errors": tp.errors, "cpu_us_per_request": tp.cpu_us_per_request}),
        );
    }
    report.results.insert(
        "throughput_direct".into(),
        json!({"rps": direct_tp.rps, "errors": direct_tp.errors}),
    );
    report.table.push(row(
        &format!(
            "throughput, {conns} connections, {:.0} s, {} tokens",
            plan.throughput_secs, plan.tokens
        ),
        &format!("{:.0}/s", direct_tp.rps),
        &tp_cells,
    ));
    report
        .table
        .push(row("CPU per request (utime+stime)", "", &cpu_cells));
    Ok(())
}

/// Streams, then the targets table, then logins.
async fn streams_and_logins(
    plan: &Plan,
    procs: &mut Procs,
    direct: &Target,
    peers: &[Gateway],
    report: &mut Report,
    mut seen: Seen,
) -> Result<(), String> {
    for &s in &plan.stream_counts {
        let direct_st = load::streams(direct, &[], s, plan.frames, plan.frame_gap_ms, None).await?;
        let mut cells = Vec::new();
        for peer in peers {
            let st = load::streams(
                &peer.target,
                &peer.tokens,
                s,
                plan.frames,
                plan.frame_gap_ms,
                Some(peer.pid),
            )
            .await?;
            for (reason, n) in &st.failures {
                eprintln!("bench: {s} streams via {}: {n} × {reason}", peer.name);
            }
            let per_stream = st.peak_rss_kib / s as f64;
            cells.push(format!(
                "{}/{} done, {} frames lost, TTFF p50 {:.1} ms p99 {:.1} ms, gap p99 {:.1} ms max {:.1} ms, RSS {:.1} KiB/stream",
                st.completed, s, st.lost_frames, st.ttff_p50_ms, st.ttff_p99_ms,
                st.gap_p99_ms, st.gap_max_ms, per_stream,
            ));
            seen.ttff_p99.insert((s, peer.name.clone()), st.ttff_p99_ms);
            seen.rss_per_stream
                .insert((s, peer.name.clone()), per_stream);
            seen.completed.insert((s, peer.name.clone()), st.completed);
            report
                .results
                .insert(format!("streams_{s}_{}", peer.name), st.to_json());
        }
        report
            .results
            .insert(format!("streams_{s}_direct"), direct_st.to_json());
        report.table.push(row(
            &format!(
                "{s} streams × {} frames, {} ms apart",
                plan.frames, plan.frame_gap_ms
            ),
            &format!(
                "{}/{} done, TTFF p50 {:.1} ms p99 {:.1} ms, gap p99 {:.1} ms",
                direct_st.completed,
                s,
                direct_st.ttff_p50_ms,
                direct_st.ttff_p99_ms,
                direct_st.gap_p99_ms
            ),
            &cells,
        ));
    }
    let targets = seen.targets(&plan.stream_counts);
    if targets.len() > 2 {
        report.others.push(targets);
    }

    // 4. Logins, on gateways of their own (memory state): plaintext users
    // only, or one Argon2 user, with the login cache on (hits) or off (misses).
    let mut login_table = vec![
        "| logins, one client after another | per second |".to_owned(),
        "|---|---|".to_owned(),
    ];
    let login_gateways = if plan.login_secs > 0.0 {
        procs.login_gateways().await?
    } else {
        Vec::new()
    };
    for (label, target, user, password) in login_gateways {
        let rate = load::logins(&target, user, password, plan.login_secs).await?;
        login_table.push(format!("| {label} | {rate:.0} |"));
        report
            .results
            .insert(format!("login_{}", label.replace(' ', "_")), json!(rate));
    }
    report.others.push(login_table);
    Ok(())
}

pub fn row(label: &str, direct: &str, cells: &[String]) -> String {
    format!("| {label} | {direct} | {} |", cells.join(" | "))
}

/// What the run measured of each peer, for the targets table.
#[derive(Default)]
struct Seen {
    added_p50: BTreeMap<String, f64>,
    added_p99: BTreeMap<String, f64>,
    rps: BTreeMap<String, f64>,
    ttff_p99: BTreeMap<(usize, String), f64>,
    rss_per_stream: BTreeMap<(usize, String), f64>,
    completed: BTreeMap<(usize, String), usize>,
}

impl Seen {
    /// Issue 15's targets for the memory gateway, as ratios against the bare
    /// proxy and nginx of this run; a target whose reference was not run is
    /// left out.
    fn targets(&self, stream_counts: &[usize]) -> Vec<String> {
        let mut rows = vec![
            "| target (issue 15), memory gateway | measured in this run | met |".to_owned(),
            "|---|---|---|".to_owned(),
        ];
        let mut add = |target: String, measured: String, met: bool| {
            rows.push(format!(
                "| {target} | {measured} | {} |",
                if met { "yes" } else { "**no**" }
            ));
        };
        let gw = "memory".to_owned();
        let (bare, nginx) = ("bare".to_owned(), "nginx".to_owned());
        // The bare proxy doing the same job: the floor of each target.
        let job = "bare-job".to_owned();
        let floor = |seen: &BTreeMap<String, f64>, show: &dyn Fn(f64) -> String| {
            seen.get(&job).map_or(String::new(), |j| {
                format!("; the same job, bare: {}", show(*j))
            })
        };
        if let (Some(g), Some(b)) = (self.rps.get(&gw), self.rps.get(&bare)) {
            add(
                "throughput ≥ 0.8 × bare proxy".into(),
                format!(
                    "{:.2} × ({g:.0}/s against {b:.0}/s{})",
                    g / b,
                    floor(&self.rps, &|j| format!("{:.2} ×", j / b))
                ),
                g / b >= 0.8,
            );
        }
        if let (Some(g), Some(n)) = (self.rps.get(&gw), self.rps.get(&nginx)) {
            add(
                "throughput ≥ nginx".into(),
                format!("{:.2} × nginx ({g:.0}/s against {n:.0}/s)", g / n),
                g >= n,
            );
        }
        if let (Some(g), Some(b)) = (self.added_p50.get(&gw), self.added_p50.get(&bare)) {
            add(
                "added p50 ≤ bare proxy's + 25 µs".into(),
                format!(
                    "+{g:.1} µs against +{b:.1} µs ({:+.1}{})",
                    g - b,
                    floor(&self.added_p50, &|j| format!("{:+.1}", j - b))
                ),
                g - b <= 25.0,
            );
        }
        if let (Some(g), Some(b)) = (self.added_p99.get(&gw), self.added_p99.get(&bare)) {
            add(
                "added p99 ≤ bare proxy's".into(),
                format!("+{g:.1} µs against +{b:.1} µs ({:+.1})", g - b),
                g <= b,
            );
        }
        for &s in stream_counts {
            let key = |name: &String| (s, name.clone());
            if let (Some(g), Some(n)) = (
                self.ttff_p99.get(&key(&gw)),
                self.ttff_p99.get(&key(&nginx)),
            ) {
                add(
                    format!("{s} streams at once: TTFF p99 ≤ 2 × nginx's"),
                    format!("{g:.1} ms against {n:.1} ms ({:.2} ×)", g / n.max(0.001)),
                    *g <= 2.0 * n,
                );
            }
            if let Some(r) = self.rss_per_stream.get(&key(&gw)) {
                let done = self.completed.get(&key(&gw)).copied().unwrap_or(0);
                // The bare proxy with the gateway's backlog holds all the
                // streams open at once, as the gateway does: the stack's floor.
                let floor = match self.rss_per_stream.get(&key(&"bare-wide".to_owned())) {
                    Some(f) => format!("; bare-wide {f:.1} KiB"),
                    None => String::new(),
                };
                add(
                    format!("{s} streams at once: RSS ≤ 32 KiB per stream"),
                    format!("{r:.1} KiB ({done}/{s} done{floor})"),
                    *r <= 32.0 && done == s,
                );
            }
        }
        if let (Some(r), Some(m)) = (self.added_p50.get("redis"), self.added_p50.get(&gw)) {
            add(
                "Redis backend: p50 ≤ memory's + 50 µs".into(),
                format!("{:+.1} µs", r - m),
                r - m <= 50.0,
            );
        }
        rows
    }
}
