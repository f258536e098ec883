//! How much of each measurement a run does: full, `--quick`, `--tap`, `--smoke`.

pub struct Plan {
    pub latency_requests: usize,
    pub throughput_secs: f64,
    pub throughput_conns: usize,
    pub tokens: usize,
    pub stream_counts: Vec<usize>,
    pub frames: usize,
    pub frame_gap_ms: u64,
    pub login_secs: f64,
    /// Latency, throughput, streams and logins: all but the tap part.
    pub core: bool,
    /// Stamped streams per round and target for the per-frame latency (0: no
    /// tap part), rounds, and whole streams fed to the tap in process.
    pub tap_streams: usize,
    pub tap_rounds: usize,
    pub tap_feeds: usize,
}

impl Plan {
    pub fn full() -> Self {
        Self {
            latency_requests: 2000,
            throughput_secs: 10.0,
            throughput_conns: 32,
            tokens: 1000,
            // 10,000 needs 20,000 descriptors in the gateway alone (client and
            // upstream side); this machine's hard limit is 20,000.
            stream_counts: vec![1000, 5000, 9000],
            frames: 32,
            frame_gap_ms: 20,
            login_secs: 3.0,
            core: true,
            tap_streams: 50,
            tap_rounds: 4,
            tap_feeds: 20_000,
        }
    }

    /// The usage tap's per-chunk delay only, at full size (and with only
    /// as many users as it has streams).
    pub fn tap_only() -> Self {
        Self {
            core: false,
            tokens: 0,
            stream_counts: vec![],
            ..Self::full()
        }
    }

    /// Latency, throughput and 1,000 streams, release build: for tuning
    /// iterations.
    pub fn quick() -> Self {
        Self {
            latency_requests: 2000,
            throughput_secs: 5.0,
            throughput_conns: 32,
            tokens: 1000,
            stream_counts: vec![1000],
            frames: 32,
            frame_gap_ms: 20,
            login_secs: 0.0,
            core: true,
            tap_streams: 0,
            tap_rounds: 0,
            tap_feeds: 0,
        }
    }

    /// 1,000 concurrent streams only (`BENCH_STREAMS` for other counts):
    /// for memory per stream and time to first frame.
    pub fn streams_only() -> Self {
        Self {
            latency_requests: 0,
            throughput_secs: 0.0,
            stream_counts: vec![1000],
            ..Self::quick()
        }
    }

    /// Each part for a moment: checks the harness runs, measures nothing.
    pub fn smoke() -> Self {
        Self {
            latency_requests: 100,
            throughput_secs: 0.5,
            throughput_conns: 8,
            tokens: 20,
            stream_counts: vec![20],
            frames: 8,
            frame_gap_ms: 20,
            login_secs: 0.3,
            core: true,
            tap_streams: 4,
            tap_rounds: 1,
            tap_feeds: 200,
        }
    }
}
