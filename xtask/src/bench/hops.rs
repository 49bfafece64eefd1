//! Where a Run Demo's time goes, hop by hop: the services' own timings (`/metrics`: the
//! frontend's whole Run Demo and its call through its Envoy, the backend's handler and its
//! database part) and each Envoy's, from its access log (microseconds: the whole request and its
//! upstream part). One request at a time, so every layer times the same requests; the two labs
//! take turns.
//!
//! Each hop is the time its layer adds on top of the next one:
//! frontend = Run Demo − the call; to the frontend Envoy = the call − that Envoy's whole;
//! frontend Envoy = its whole − its upstream; Envoy to Envoy (TLS, the network) = the frontend
//! Envoy's upstream − the backend Envoy's whole; backend Envoy = its whole − its upstream; to
//! the backend = the backend Envoy's upstream − the backend's handler; backend = handler −
//! database; PostgreSQL = the database part (its TLS included).

use std::collections::BTreeMap;

use anyhow::{Context, ensure};
use contract::Workload;
use contract::metrics::{
    BACKEND_CALL_SECONDS, DB_QUERY_SECONDS, ORDERS_SECONDS, RUN_DEMO_SECONDS, Scrape,
};
use serde::Deserialize;

use crate::lab::{Component, Lab};

/// The hops, in the order a request crosses them.
pub const HOPS: [&str; 8] = [
    "frontend",
    "frontend → its Envoy",
    "frontend Envoy",
    "Envoy ⇒ Envoy",
    "backend Envoy",
    "backend Envoy → backend",
    "backend",
    "PostgreSQL",
];

/// The fields of the Envoys' access log lines this reads (`manifests/*/config/envoy.yaml`).
#[derive(Deserialize)]
struct AccessLine {
    envoy: String,
    path: Option<String>,
    total_us: Option<f64>,
    upstream_us: Option<f64>,
}

/// Mean (whole, upstream) in microseconds of the Run Demo requests `envoy` logged in `text`.
fn envoy_means(text: &str, envoy: &str) -> anyhow::Result<(f64, f64)> {
    let lines: Vec<AccessLine> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<AccessLine>(l).ok())
        .filter(|l| l.envoy == envoy && l.path.as_deref() == Some("/api/orders"))
        .collect();
    let timed: Vec<(f64, f64)> = lines
        .iter()
        .filter_map(|l| Some((l.total_us?, l.upstream_us?)))
        .collect();
    ensure!(
        !timed.is_empty(),
        "the {envoy} Envoy logged no timed request to /api/orders ({} lines read, {} of its access lines; the last: {:?})",
        text.lines().count(),
        lines.len(),
        text.lines().last()
    );
    let n = timed.len() as f64;
    Ok((
        timed.iter().map(|t| t.0).sum::<f64>() / n,
        timed.iter().map(|t| t.1).sum::<f64>() / n,
    ))
}

/// What is new in a log since it was `offset` bytes long.
fn log_since(lab: &dyn Lab, c: Component, offset: usize) -> anyhow::Result<String> {
    let text = lab.log(c)?;
    Ok(text.get(offset..).unwrap_or_default().to_owned())
}

/// Where one lab stood before the requests: its services' metrics, its Envoys' log lengths.
struct Mark {
    frontend: Scrape,
    backend: Scrape,
    logs: (usize, usize),
}

impl Mark {
    fn take(lab: &dyn Lab) -> anyhow::Result<Mark> {
        Ok(Mark {
            frontend: lab.metrics(Workload::Frontend)?,
            backend: lab.metrics(Workload::Backend)?,
            logs: (
                lab.log(Component::EnvoyFrontend)?.len(),
                lab.log(Component::EnvoyBackend)?.len(),
            ),
        })
    }

    /// The mean microseconds of each hop for the `requests` Run Demos since this mark.
    fn hops(&self, lab: &dyn Lab, requests: usize) -> anyhow::Result<BTreeMap<&'static str, f64>> {
        let (f1, b1) = (
            lab.metrics(Workload::Frontend)?,
            lab.metrics(Workload::Backend)?,
        );
        // Envoy writes its access log in batches (`--file-flush-interval-msec`): wait for them.
        let logged = |c: Component, offset| {
            crate::procs::wait_for(std::time::Duration::from_secs(15), || {
                let text = log_since(lab, c, offset)?;
                let n = text.matches("\"/api/orders\"").count();
                ensure!(n >= requests, "{n} of {requests} requests logged yet");
                Ok(text)
            })
            .map(|(text, _)| text)
            .with_context(|| format!("{}'s access log", c.name()))
        };
        let (fe_total, fe_up) =
            envoy_means(&logged(Component::EnvoyFrontend, self.logs.0)?, "frontend")?;
        let (be_total, be_up) =
            envoy_means(&logged(Component::EnvoyBackend, self.logs.1)?, "backend")?;
        let us = |after: &Scrape, before: &Scrape, name: &str| {
            after
                .mean_since(before, name)
                .map(|s| s * 1e6)
                .with_context(|| format!("{name} observed nothing"))
        };
        let run_demo = us(&f1, &self.frontend, RUN_DEMO_SECONDS)?;
        let call = us(&f1, &self.frontend, BACKEND_CALL_SECONDS)?;
        let orders = us(&b1, &self.backend, ORDERS_SECONDS)?;
        let db = us(&b1, &self.backend, DB_QUERY_SECONDS)?;
        Ok(HOPS
            .into_iter()
            .zip([
                run_demo - call,
                call - fe_total,
                fe_total - fe_up,
                fe_up - be_total,
                be_total - be_up,
                be_up - orders,
                orders - db,
                db,
            ])
            .collect())
    }
}

/// `requests` Run Demos on each lab, one at a time and taking turns (so that whatever else the
/// machine does lands on both alike): the mean microseconds of each hop, per lab.
pub fn measure(
    labs: [&dyn Lab; 2],
    requests: usize,
) -> anyhow::Result<[BTreeMap<&'static str, f64>; 2]> {
    let marks = [Mark::take(labs[0])?, Mark::take(labs[1])?];
    let callers =
        labs.map(|l| crate::demo::Caller::new(&l.frontend_url(), crate::demo::Ledger::Skip));
    for _ in 0..requests {
        for c in &callers {
            let demo = c.call().map_err(anyhow::Error::msg)?;
            ensure!(demo.ok(), "Run Demo failed: {}", demo.line());
        }
    }
    Ok([
        marks[0].hops(labs[0], requests)?,
        marks[1].hops(labs[1], requests)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_lines_are_averaged_per_envoy_and_path() {
        let log = r#"[2026-12-03 07:00:00.000][1][info][main] starting
{"envoy":"frontend","path":"/api/orders","total_us":900,"upstream_us":700,"status":200}
{"envoy":"frontend","path":"/api/orders","total_us":1100,"upstream_us":900,"status":200}
{"envoy":"frontend","path":"/ready","total_us":50,"upstream_us":null,"status":200}
{"envoy":"backend","path":"/api/orders","total_us":400,"upstream_us":300,"status":200}
"#;
        assert_eq!(envoy_means(log, "frontend").unwrap(), (1000.0, 800.0));
        assert_eq!(envoy_means(log, "backend").unwrap(), (400.0, 300.0));
        assert!(envoy_means("", "backend").is_err());
    }
}
