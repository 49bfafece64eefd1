//! Open-loop latency: Run Demo sent at a fixed rate whatever the answers do, each latency taken
//! from the moment the request was due (no coordinated omission), by oha (crates.io, pinned in
//! `nix/pins.json`; `--latency-correction`). oha counts HTTP answers; whether each Run Demo
//! succeeded is in its body, so the frontend's own outcome counter (`/metrics`) is read before
//! and after and must have grown by successes only.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use contract::Workload;
use contract::metrics::{RUN_DEMO, Scrape};
use serde::{Deserialize, Serialize};

use crate::lab::Lab;

/// What one open-loop run gave.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpenLoop {
    /// The rate asked for, per second.
    pub rate: f64,
    /// Answers oha received.
    pub answered: usize,
    /// Run Demos that did not succeed (either link), or got no answer.
    pub failed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

#[derive(Deserialize)]
struct OhaReport {
    #[serde(rename = "latencyPercentiles")]
    percentiles: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution")]
    statuses: BTreeMap<String, usize>,
    #[serde(rename = "errorDistribution")]
    errors: BTreeMap<String, usize>,
}

/// Connections oha keeps open: more than the rates here ever keep busy at once, so that a
/// request waits only for the lab, never for a free connection of oha's.
const CONNECTIONS: &str = "32";

const SUCCEEDED: &str = r#"_total{frontend_to_backend="SUCCESS",backend_to_db="SUCCESS",cause=""}"#;

/// Run Demos counted by the frontend: (all, succeeded).
fn outcomes(lab: &dyn Lab) -> anyhow::Result<(f64, f64)> {
    let s: Scrape = lab.metrics(Workload::Frontend)?;
    Ok((
        s.total(&format!("{RUN_DEMO}_total")),
        s.get(&format!("{RUN_DEMO}{SUCCEEDED}")).unwrap_or(0.0),
    ))
}

/// `rate` Run Demos a second for `length` against `lab`.
pub fn run(oha: &Path, lab: &dyn Lab, rate: f64, length: Duration) -> anyhow::Result<OpenLoop> {
    let (all0, ok0) = outcomes(lab)?;
    let url = format!("{}{}", lab.frontend_url(), crate::demo::Ledger::Skip.path());
    let out = Command::new(oha)
        .args(["--no-tui", "--output-format", "json", "-m", "POST"])
        .args(["-z", &format!("{}ms", length.as_millis())])
        .args(["-q", &format!("{rate:.0}"), "--latency-correction"])
        .args(["-c", CONNECTIONS, "--wait-ongoing-requests-after-deadline"])
        .arg(&url)
        .output()
        .with_context(|| format!("run {}", oha.display()))?;
    ensure!(
        out.status.success(),
        "oha failed: {}",
        crate::procs::printed(&out)
    );
    let report: OhaReport = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "oha's report does not read: {}",
            crate::procs::printed(&out)
        )
    })?;
    let (all1, ok1) = outcomes(lab)?;
    let answered: usize = report.statuses.values().sum();
    let not_200: usize = report
        .statuses
        .iter()
        .filter(|(code, _)| code.as_str() != "200")
        .map(|(_, n)| n)
        .sum();
    let not_answered: usize = report.errors.values().sum();
    let counted = (all1 - all0) as usize;
    let succeeded = (ok1 - ok0) as usize;
    ensure!(
        counted >= answered,
        "oha saw {answered} answers but the frontend counted {counted} Run Demos"
    );
    let ms = |key: &str| {
        report
            .percentiles
            .get(key)
            .copied()
            .flatten()
            .map_or(f64::NAN, |s| s * 1000.0)
    };
    Ok(OpenLoop {
        rate,
        answered,
        failed: not_answered + not_200 + counted.saturating_sub(succeeded),
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        p999_ms: ms("p99.9"),
    })
}
