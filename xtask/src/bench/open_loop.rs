//! Open-loop latency: Run Demo sent at a fixed rate whatever the answers do, each latency taken
//! from the moment the request was due (no coordinated omission), by oha (crates.io, pinned in
//! `nix/pins.json`; `--latency-correction`).
//!
//! The profiles take turns (A B B A …) of a fixed number of requests, so that a slow spell of the
//! machine falls on both; each answered request's latency comes back from oha's CSV, and the
//! percentiles are taken over every turn of a profile together. The first moments of a turn are
//! left out: oha opens its connections then (on the local runtime through the forwarder into the
//! frontend's pod), a cost of the harness that the first Run Demo after `up` already reports.
//!
//! oha counts HTTP answers; whether each Run Demo succeeded is in its body, so the frontend's own
//! outcome counter (`/metrics`) is read before and after and must have grown by successes only.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use contract::Workload;
use contract::metrics::{RUN_DEMO, Scrape};

use super::cpu::{Counters, Shares};
use crate::lab::Lab;

/// What one turn gave.
#[derive(Clone, Debug, Default)]
pub struct Turn {
    /// Latencies (ms, from when each request was due) of the answered requests sent after the
    /// turn's warm-up.
    pub latencies_ms: Vec<f64>,
    /// Answers oha received, warm-up included.
    pub answered: usize,
    /// Run Demos that did not succeed (either link), or got no answer.
    pub failed: usize,
    /// What the machine's CPUs did while oha ran.
    pub cpu: Shares,
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

/// One answered request of oha's CSV: when it was sent (s from oha's start), its latency from
/// when it was due (s), its HTTP status.
fn answers(csv: &str) -> anyhow::Result<Vec<(f64, f64, u16)>> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("oha's CSV has no column {name:?} (header: {header:?})"))
    };
    let (start, took, status) = (
        column("request-start")?,
        column("request-duration")?,
        column("status")?,
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("");
            match (get(start).parse(), get(took).parse(), get(status).parse()) {
                (Ok(s), Ok(d), Ok(c)) => Ok((s, d, c)),
                _ => bail!("oha's CSV line does not read: {l:?}"),
            }
        })
        .collect()
}

/// `requests` Run Demos at `rate` a second against `lab`; latencies of those sent `warmup` or
/// more after the first.
pub fn turn(
    oha: &Path,
    lab: &dyn Lab,
    rate: f64,
    requests: usize,
    warmup: Duration,
) -> anyhow::Result<Turn> {
    let (all0, ok0) = outcomes(lab)?;
    let url = format!("{}{}", lab.frontend_url(), crate::demo::Ledger::Skip.path());
    let before = Counters::read();
    let out = Command::new(oha)
        .args(["--no-tui", "--output-format", "csv", "-m", "POST"])
        .args(["-n", &requests.to_string()])
        .args(["-q", &format!("{rate:.0}"), "--latency-correction"])
        .args(["-c", CONNECTIONS])
        .arg(&url)
        .output()
        .with_context(|| format!("run {}", oha.display()))?;
    let cpu = before.until(&Counters::read());
    ensure!(
        out.status.success(),
        "oha failed: {}",
        crate::procs::printed(&out)
    );
    let rows = answers(&String::from_utf8_lossy(&out.stdout))
        .with_context(|| format!("oha's report: {}", crate::procs::printed(&out)))?;
    let (all1, ok1) = outcomes(lab)?;
    let answered = rows.len();
    let not_200 = rows.iter().filter(|r| r.2 != 200).count();
    let counted = (all1 - all0) as usize;
    let succeeded = (ok1 - ok0) as usize;
    ensure!(
        counted >= answered,
        "oha saw {answered} answers but the frontend counted {counted} Run Demos"
    );
    let first = rows.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
    Ok(Turn {
        latencies_ms: rows
            .iter()
            .filter(|r| r.0 - first >= warmup.as_secs_f64())
            .map(|r| r.1 * 1000.0)
            .collect(),
        answered,
        failed: requests.saturating_sub(answered) + not_200 + counted.saturating_sub(succeeded),
        cpu,
    })
}

/// The `q` quantile (0–1) of `values` by nearest rank; NaN when there are none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => v[((q * n as f64).ceil() as usize).clamp(1, n) - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ohas_csv_by_its_header() {
        let csv = "request-start,DNS,DNS+dialup,Response-delay,request-duration,bytes,status\n\
                   0.0003,0.00005,0.0002,0.0036,0.0037,708,200\n\
                   0.0211,0.00002,0.0002,0.0034,0.0034,708,503\n";
        assert_eq!(
            answers(csv).unwrap(),
            vec![(0.0003, 0.0037, 200), (0.0211, 0.0034, 503)]
        );
        let err = answers("request-start,status\n0.1,200\n").unwrap_err();
        assert!(err.to_string().contains("request-duration"), "{err}");
        let err = answers("request-start,request-duration,status\n0.1,fast,200\n").unwrap_err();
        assert!(err.to_string().contains("does not read"), "{err}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 500.0);
        assert_eq!(percentile(&v, 0.99), 990.0);
        assert_eq!(percentile(&v, 0.999), 999.0);
        assert_eq!(percentile(&v, 1.0), 1000.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
