//! `cargo run --release -p bench -- [--smoke | --quick | --tap] [--json PATH]`
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

pub use plan::Plan;
use procs::{Gateway, Procs};
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
        table: vec![
            "| measurement | direct to fake | memory gateway | redis gateway |".to_owned(),
            "|---|---|---|---|".to_owned(),
        ],
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
async fn core(plan: &Plan, procs: &mut Procs, report: &mut Report) -> Result<(), String> {
    let direct = procs.direct();
    let gateways: Vec<Gateway> = procs.gateways();

    // 1. Latency at concurrency 1.
    let direct_lat = load::latency(&direct, None, plan.latency_requests).await?;
    let mut lat_cols = Vec::new();
    for gw in &gateways {
        let token = gw.tokens.first().cloned();
        let lat = load::latency(&gw.target, token, plan.latency_requests).await?;
        lat_cols.push((gw.name.clone(), lat));
    }
    for (label, pick) in [("p50", 0usize), ("p99", 1), ("max", 2)] {
        let d = direct_lat.get(pick);
        let cells: Vec<String> = lat_cols
            .iter()
            .map(|(_, l)| format!("{:.1} µs (+{:.1})", l.get(pick), l.get(pick) - d))
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
    for (name, l) in &lat_cols {
        report
            .results
            .insert(format!("latency_{name}_us"), l.to_json());
    }

    // nginx, when installed: the same pass-through with no work done.
    if let Some((target, pid)) = procs.nginx() {
        let lat = load::latency(&target, None, plan.latency_requests).await?;
        let tp = load::throughput(
            &target,
            &[],
            plan.throughput_conns,
            plan.throughput_secs,
            Some(pid),
        )
        .await?;
        report.others.push(vec![
            "| nginx (proxy_buffering off, keep-alive upstream) | value |".to_owned(),
            "|---|---|".to_owned(),
            format!(
                "| latency p50, concurrency 1 | {:.1} µs (+{:.1}) |",
                lat.get(0),
                lat.get(0) - direct_lat.get(0)
            ),
            format!(
                "| latency p99, concurrency 1 | {:.1} µs (+{:.1}) |",
                lat.get(1),
                lat.get(1) - direct_lat.get(1)
            ),
            format!(
                "| throughput, {} connections | {:.0}/s |",
                plan.throughput_conns, tp.rps
            ),
        ]);
        report
            .results
            .insert("latency_nginx_us".into(), lat.to_json());
        report.results.insert(
            "throughput_nginx".into(),
            json!({"rps": tp.rps, "errors": tp.errors}),
        );
    }

    // 2. Throughput over distinct tokens.
    let conns = plan.throughput_conns;
    let direct_tp = load::throughput(&direct, &[], conns, plan.throughput_secs, None).await?;
    let mut tp_cells = Vec::new();
    let mut cpu_cells = Vec::new();
    for gw in &gateways {
        let tp = load::throughput(
            &gw.target,
            &gw.tokens,
            conns,
            plan.throughput_secs,
            Some(gw.pid),
        )
        .await?;
        tp_cells.push(format!(
            "{:.0}/s ({:.0}% of direct)",
            tp.rps,
            100.0 * tp.rps / direct_tp.rps
        ));
        cpu_cells.push(format!("{:.1} µs", tp.cpu_us_per_request));
        report.results.insert(
            format!("throughput_{}", gw.name),
            json!({"rps": tp.rps, "errors": tp.errors, "cpu_us_per_request": tp.cpu_us_per_request}),
        );
    }
    report.results.insert(
        "throughput_direct".into(),
        json!({"rps": direct_tp.rps, "errors": direct_tp.errors}),
    );
    report.table.push(row(
        &format!("throughput, {conns} connections, {} tokens", plan.tokens),
        &format!("{:.0}/s", direct_tp.rps),
        &tp_cells,
    ));
    report
        .table
        .push(row("gateway CPU per request (utime+stime)", "", &cpu_cells));

    // 3. Concurrent paced streams.
    for &s in &plan.stream_counts {
        let direct_st =
            load::streams(&direct, &[], s, plan.frames, plan.frame_gap_ms, None).await?;
        let mut cells = Vec::new();
        for gw in &gateways {
            let st = load::streams(
                &gw.target,
                &gw.tokens,
                s,
                plan.frames,
                plan.frame_gap_ms,
                Some(gw.pid),
            )
            .await?;
            for (reason, n) in &st.failures {
                eprintln!("bench: {s} streams via {}: {n} × {reason}", gw.name);
            }
            cells.push(format!(
                "{}/{} done, {} frames lost, TTFF p50 +{:.1} ms p99 +{:.1} ms, gap p99 {:.1} ms max {:.1} ms, RSS {:.1} KiB/stream",
                st.completed, s, st.lost_frames,
                st.ttff_p50_ms - direct_st.ttff_p50_ms, st.ttff_p99_ms - direct_st.ttff_p99_ms,
                st.gap_p99_ms, st.gap_max_ms, st.peak_rss_kib / s as f64,
            ));
            report
                .results
                .insert(format!("streams_{s}_{}", gw.name), st.to_json());
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
                "{}/{} done, TTFF p50 {:.1} ms, gap p99 {:.1} ms",
                direct_st.completed, s, direct_st.ttff_p50_ms, direct_st.gap_p99_ms
            ),
            &cells,
        ));
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
    let mut cells = cells.to_vec();
    while cells.len() < 2 {
        cells.push("(not run)".into());
    }
    format!("| {label} | {direct} | {} |", cells.join(" | "))
}
