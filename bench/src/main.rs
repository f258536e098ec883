//! `cargo run --release -p bench -- [--smoke] [--json PATH]`
//!
//! Builds the release binaries, starts the fake DeepSeek and the gateway
//! (memory state, and Redis state when `redis-server` is on PATH), and
//! measures, in the same run, **direct to the fake** against **through the
//! gateway**: latency at concurrency 1, throughput at 64 connections over
//! 1,000 tokens, concurrent paced streams, and logins. Prints a markdown
//! table and writes JSON. `--smoke` runs each part for a moment, so CI can
//! check the harness still works; it asserts nothing about speed. `--quick`
//! runs only latency and throughput, for tuning iterations.
//! `BENCH_GATEWAY_WORKERS=N` sets the gateway's tokio worker threads.

mod load;
mod procs;

use procs::{Gateway, Procs};
use serde_json::{json, Value};

pub struct Plan {
    pub latency_requests: usize,
    pub throughput_secs: f64,
    pub throughput_conns: usize,
    pub tokens: usize,
    pub stream_counts: Vec<usize>,
    pub frames: usize,
    pub frame_gap_ms: u64,
    pub login_secs: f64,
}

impl Plan {
    fn full() -> Self {
        Self {
            latency_requests: 2000,
            throughput_secs: 8.0,
            throughput_conns: 64,
            tokens: 1000,
            // 10,000 needs 20,000 descriptors in the gateway alone (client and
            // upstream side); this machine's hard limit is 20,000.
            stream_counts: vec![1000, 5000, 9000],
            frames: 64,
            frame_gap_ms: 20,
            login_secs: 3.0,
        }
    }

    /// Latency and throughput only, release build: for tuning iterations.
    fn quick() -> Self {
        Self {
            latency_requests: 2000,
            throughput_secs: 4.0,
            throughput_conns: 64,
            tokens: 1000,
            stream_counts: vec![],
            frames: 64,
            frame_gap_ms: 20,
            login_secs: 0.0,
        }
    }

    fn smoke() -> Self {
        Self {
            latency_requests: 100,
            throughput_secs: 0.5,
            throughput_conns: 8,
            tokens: 20,
            stream_counts: vec![20],
            frames: 8,
            frame_gap_ms: 20,
            login_secs: 0.3,
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/bench.json".into());
    let quick = args.iter().any(|a| a == "--quick");
    let plan = match (smoke, quick) {
        (true, _) => Plan::smoke(),
        (false, true) => Plan::quick(),
        _ => Plan::full(),
    };
    if let Err(e) = run(&plan, smoke, &json_path).await {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

async fn run(plan: &Plan, smoke: bool, json_path: &str) -> Result<(), String> {
    procs::raise_fd_limit();
    let users = plan
        .tokens
        .max(plan.stream_counts.iter().copied().max().unwrap_or(0));
    let mut procs = Procs::start(users, smoke).await?;
    let mut results = serde_json::Map::new();
    let mut table = vec![
        "| measurement | direct to fake | memory gateway | redis gateway |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
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
        table.push(row(
            &format!("latency {label}, concurrency 1"),
            &format!("{d:.1} µs"),
            &cells,
        ));
    }
    results.insert("latency_direct_us".into(), direct_lat.to_json());
    for (name, l) in &lat_cols {
        results.insert(format!("latency_{name}_us"), l.to_json());
    }

    // nginx, when installed: the same pass-through with no work done.
    let mut nginx_table = Vec::new();
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
        nginx_table = vec![
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
        ];
        results.insert("latency_nginx_us".into(), lat.to_json());
        results.insert(
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
        results.insert(
            format!("throughput_{}", gw.name),
            json!({"rps": tp.rps, "errors": tp.errors, "cpu_us_per_request": tp.cpu_us_per_request}),
        );
    }
    results.insert(
        "throughput_direct".into(),
        json!({"rps": direct_tp.rps, "errors": direct_tp.errors}),
    );
    table.push(row(
        &format!("throughput, {conns} connections, {} tokens", plan.tokens),
        &format!("{:.0}/s", direct_tp.rps),
        &tp_cells,
    ));
    table.push(row("gateway CPU per request (utime+stime)", "", &cpu_cells));

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
            cells.push(format!(
                "{}/{} done, {} frames lost, TTFF p50 +{:.1} ms p99 +{:.1} ms, gap p99 {:.1} ms max {:.1} ms, RSS {:.1} KiB/stream",
                st.completed, s, st.lost_frames,
                st.ttff_p50_ms - direct_st.ttff_p50_ms, st.ttff_p99_ms - direct_st.ttff_p99_ms,
                st.gap_p99_ms, st.gap_max_ms, st.peak_rss_kib / s as f64,
            ));
            results.insert(format!("streams_{s}_{}", gw.name), st.to_json());
        }
        results.insert(format!("streams_{s}_direct"), direct_st.to_json());
        table.push(row(
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
        results.insert(format!("login_{}", label.replace(' ', "_")), json!(rate));
    }

    procs.stop().await;
    let machine = procs::machine();
    println!("\n{machine}\n");
    let blank = [String::new()];
    let lines = table
        .iter()
        .chain(&blank)
        .chain(&nginx_table)
        .chain(&blank)
        .chain(&login_table);
    for line in lines {
        println!("{line}");
    }
    results.insert("machine".into(), Value::String(machine));
    results.insert("smoke".into(), Value::Bool(smoke));
    let text = serde_json::to_string_pretty(&Value::Object(results)).map_err(|e| e.to_string())?;
    std::fs::write(json_path, text).map_err(|e| format!("writing {json_path}: {e}"))?;
    println!("\nJSON: {json_path}");
    Ok(())
}

fn row(label: &str, direct: &str, cells: &[String]) -> String {
    let mut cells = cells.to_vec();
    while cells.len() < 2 {
        cells.push("(not run)".into());
    }
    format!("| {label} | {direct} | {} |", cells.join(" | "))
}
