//! Switches for the benchmark's ablation table (BENCHMARKS.md, issue 15):
//! each turns one piece of per-request work off, so its cost shows as the
//! CPU per request it saves.
//!
//! Only a build with the `ablation` feature reads them, from `DSP_ABLATE`
//! (a comma-separated list of [`Part`] names, once per process). In every
//! other build [`off`] is a constant `false` and the compiler removes the
//! switch: no release binary can be made to skip its checks by the
//! environment. The switches leave the gateway unsafe to use (no slot, no
//! log); they exist to be measured.

/// A piece of per-request work that can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The access log line (`tracing` event and its write).
    AccessLog,
    /// The usage ledger row (journal write and SQLite insert).
    Ledger,
    /// The Prometheus counters and histograms of a request.
    Metrics,
    /// The quota and budget check (admit and settle).
    Quota,
    /// The token's slot (taken in `Store::enter`, and released).
    Slot,
    /// The JWT's signature and claims check (the token is then decoded
    /// without verifying it).
    Jwt,
    /// The registry of requests in flight (`/admin/active`).
    Active,
    /// Request ids (a fixed id instead of a new one per request).
    RequestId,
    /// The header allow-lists (no headers copied either way).
    Headers,
    /// The usage tap's copy of each chunk (and so the usage it reads).
    Tap,
    /// CORS for browsers' requests (and the `Vary` header on the others).
    /// Since issue 15's fourth round the layers wrap the whole router, the
    /// panic catcher is the access log's (it cannot be switched off), and
    /// `no-store` and the error dialects are the access log's too.
    Layers,
}

impl Part {
    pub const ALL: [Part; 11] = [
        Part::AccessLog,
        Part::Ledger,
        Part::Metrics,
        Part::Quota,
        Part::Slot,
        Part::Jwt,
        Part::Active,
        Part::RequestId,
        Part::Headers,
        Part::Tap,
        Part::Layers,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Part::AccessLog => "access_log",
            Part::Ledger => "ledger",
            Part::Metrics => "metrics",
            Part::Quota => "quota",
            Part::Slot => "slot",
            Part::Jwt => "jwt",
            Part::Active => "active",
            Part::RequestId => "request_id",
            Part::Headers => "headers",
            Part::Tap => "tap",
            Part::Layers => "layers",
        }
    }
}

/// Whether `part` is switched off in this process.
#[cfg(feature = "ablation")]
pub fn off(part: Part) -> bool {
    static MASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let mask = MASK.get_or_init(|| {
        let list = std::env::var("DSP_ABLATE").unwrap_or_default();
        let mut mask = 0;
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match Part::ALL.iter().position(|p| p.name() == name) {
                Some(i) => mask |= 1 << i,
                None => eprintln!("DSP_ABLATE: unknown part {name:?} (ignored)"),
            }
        }
        mask
    });
    Part::ALL
        .iter()
        .position(|p| *p == part)
        .is_some_and(|i| mask & (1 << i) != 0)
}

/// Whether `part` is switched off: never, without the `ablation` feature.
#[cfg(not(feature = "ablation"))]
#[inline(always)]
pub const fn off(_part: Part) -> bool {
    false
}
