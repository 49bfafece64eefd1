//! `cargo xtask bench`: how fast the lab starts, what mTLS with SPIFFE costs on the request path
//! (against the same topology in plaintext, in the same run), how much memory it takes, and
//! rotation under load. Prints a table and writes a JSON report. Goals are reported, never
//! asserted; `--quick` (CI) checks only that every figure is produced and nothing failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use xshell::Shell;

use crate::lab::{Component, Lab};
use crate::local::{self, LocalLab, Profile};
use crate::{procs, scenario};

#[derive(clap::Args)]
pub struct Bench {
    /// A smoke run for CI: every figure once, shortly; checks that all are produced and that
    /// nothing failed, and asserts no timing.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
}

/// One line of the report: a figure, its value, and the goal beside it.
#[derive(Debug, Serialize)]
struct Figure {
    name: String,
    value: Value,
    unit: &'static str,
    goal: Option<String>,
    met: Option<bool>,
}

#[derive(Debug, Default, Serialize)]
struct LoadResult {
    concurrency: usize,
    seconds: f64,
    requests: usize,
    errors: usize,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// `concurrency` threads POSTing Run Demo for `length`; a request counts only when both links
/// report SUCCESS.
fn load(url: &str, concurrency: usize, length: Duration) -> LoadResult {
    let target = format!("{url}/api/run-demo");
    // Warm the connections and the backend's pool.
    for _ in 0..20 {
        let _ = crate::probe::post(&target);
    }
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                let target = target.clone();
                s.spawn(move || {
                    let agent: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(5)))
                        .build()
                        .into();
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    while started.elapsed() < length {
                        let t = Instant::now();
                        let ok = agent.post(&target).send_empty().ok().and_then(|mut r| {
                            let body = r.body_mut().read_to_string().ok()?;
                            (r.status() == 200 && body.matches("\"SUCCESS\"").count() == 2)
                                .then_some(())
                        });
                        match ok {
                            Some(()) => lat.push(t.elapsed()),
                            None => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut all: Vec<Duration> = results
        .iter()
        .flat_map(|(l, _)| l.iter().copied())
        .collect();
    all.sort();
    let errors = results.iter().map(|(_, e)| e).sum();
    LoadResult {
        concurrency,
        seconds,
        requests: all.len() + errors,
        errors,
        rps: all.len() as f64 / seconds,
        p50_ms: percentile(&all, 0.50),
        p99_ms: percentile(&all, 0.99),
    }
}

fn rss_mb(lab: &LocalLab, c: Component) -> Option<f64> {
    let pid = lab.pid(c)?;
    let kib = if c == Component::Postgres {
        procs::tree_memory_kib(pid)
    } else {
        procs::rss_kib(pid)
    }?;
    Some(kib as f64 / 1024.0)
}

fn footprint(lab: &LocalLab) -> BTreeMap<String, f64> {
    Component::ALL
        .iter()
        .filter_map(|&c| {
            let name = if c == Component::Postgres {
                "postgres (PSS, all its processes)".into()
            } else {
                c.name()
            };
            rss_mb(lab, c).map(|mb| (name, mb))
        })
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |k| k / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

/// A fresh TLS connection (handshake with the backend's SVID, certificate authentication, one
/// query) against one query on a connection already open.
fn db_connections(lab: &LocalLab, fresh: usize, pooled: usize) -> anyhow::Result<(f64, f64)> {
    use openssl::ssl::{SslConnector, SslFiletype, SslMethod};
    let (dir, port) = lab.backend_svid_dir_and_db_port();
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_certificate_chain_file(dir.join("svid.pem"))?;
    b.set_private_key_file(dir.join("svid_key.pem"), SslFiletype::PEM)?;
    b.set_ca_file(dir.join("svid_bundle.pem"))?;
    let mut tls = postgres_openssl::MakeTlsConnector::new(b.build());
    tls.set_callback(|c, _| {
        c.set_verify_hostname(false);
        Ok(())
    });
    let conninfo = format!("host=127.0.0.1 port={port} dbname=demo user=backend sslmode=require");
    let started = Instant::now();
    for _ in 0..fresh {
        let mut c = postgres::Client::connect(&conninfo, tls.clone())
            .context("connect to PostgreSQL with the backend's SVID")?;
        c.query("SELECT id FROM orders", &[])?;
        c.close()?;
    }
    let fresh_ms = started.elapsed().as_secs_f64() * 1000.0 / fresh as f64;
    let mut c = postgres::Client::connect(&conninfo, tls)?;
    let started = Instant::now();
    for _ in 0..pooled {
        c.query("SELECT id FROM orders", &[])?;
    }
    let pooled_ms = started.elapsed().as_secs_f64() * 1000.0 / pooled as f64;
    Ok((fresh_ms, pooled_ms))
}

/// Run Demo on the lab and on the plaintext baseline, and the lab's peak RSS under the heaviest load.
struct Comparison {
    rows: Vec<(LoadResult, LoadResult)>,
    loaded: BTreeMap<String, f64>,
}

fn compare_profiles(
    lab: &LocalLab,
    plain: &LocalLab,
    concurrencies: &[usize],
    length: Duration,
) -> anyhow::Result<Comparison> {
    let mut rows = Vec::new();
    let mut loaded = BTreeMap::new();
    for &c in concurrencies {
        println!(
            "══ bench: Run Demo at concurrency {c}, {} s each profile",
            length.as_secs()
        );
        let stop = Arc::new(Mutex::new(false));
        let peak: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
        let mtls = std::thread::scope(|s| {
            let (stop2, peak2) = (stop.clone(), peak.clone());
            s.spawn(move || {
                while !*stop2.lock().unwrap() {
                    for (k, v) in footprint(lab) {
                        let mut p = peak2.lock().unwrap();
                        let e = p.entry(k).or_insert(0.0);
                        *e = e.max(v);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            });
            let r = load(&lab.frontend_url(), c, length);
            *stop.lock().unwrap() = true;
            r
        });
        let plaintext = load(&plain.frontend_url(), c, length);
        println!(
            "   mTLS {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors) | plaintext {:.0} req/s p50 {:.2} ms p99 {:.2} ms ({} errors)",
            mtls.rps,
            mtls.p50_ms,
            mtls.p99_ms,
            mtls.errors,
            plaintext.rps,
            plaintext.p50_ms,
            plaintext.p99_ms,
            plaintext.errors
        );
        if Some(&c) == concurrencies.last() {
            loaded = peak.lock().unwrap().clone();
        }
        rows.push((mtls, plaintext));
    }
    Ok(Comparison { rows, loaded })
}

impl Bench {
    /// The CI smoke run.
    pub fn quick() -> Bench {
        Bench {
            quick: true,
            json: crate::project_root().join("target/bench-quick.json"),
        }
    }

    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let q = self.quick;
        let ready_runs = if q { 1 } else { 3 };
        let concurrencies: &[usize] = if q { &[1, 4] } else { &[1, 4, 16] };
        let length = Duration::from_secs(if q { 2 } else { 10 });
        let ttl = 20;
        let mut figures = Vec::new();
        let mut fig = |name: &str, value: Value, unit: &'static str, goal: Option<(&str, bool)>| {
            figures.push(Figure {
                name: name.into(),
                value,
                unit,
                goal: goal.map(|(g, _)| g.into()),
                met: goal.map(|(_, m)| m),
            });
        };

        println!("══ bench: building the services first (not timed)");
        xshell::cmd!(sh, "cargo build --release --quiet -p frontend -p backend").run()?;
        println!("══ bench: time to ready ({ready_runs} run(s) of `up --local`, binaries cached)");
        local::down()?;
        local::down_at(&Profile::Plaintext.root())?;
        let mut times = Vec::new();
        let mut lab = None;
        for i in 0..ready_runs {
            if i > 0 {
                local::down()?;
            }
            let t = Instant::now();
            lab = Some(local::up(sh, 0)?);
            times.push(t.elapsed().as_secs_f64());
        }
        let mut lab = lab.context("no run")?;
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        fig(
            "time to ready, median",
            json!(median),
            "s",
            Some(("≤ 10 s", median <= 10.0)),
        );
        fig(
            "time to ready, spread (min–max)",
            json!([times[0], times[times.len() - 1]]),
            "s",
            None,
        );

        std::thread::sleep(Duration::from_secs(2));
        let idle = footprint(&lab);

        println!("══ bench: the plaintext baseline (same topology, no TLS, no SPIRE)");
        let plain = local::up_profile(sh, 1000, Profile::Plaintext)?;
        let result = compare_profiles(&lab, &plain, concurrencies, length);
        local::down_at(&Profile::Plaintext.root())?;
        let Comparison { rows, loaded } = result?;
        for (m, p) in &rows {
            let c = m.concurrency;
            fig(
                &format!("Run Demo c={c}: mTLS requests/s"),
                json!(m.rps),
                "req/s",
                None,
            );
            fig(
                &format!("Run Demo c={c}: mTLS p50"),
                json!(m.p50_ms),
                "ms",
                None,
            );
            fig(
                &format!("Run Demo c={c}: mTLS p99"),
                json!(m.p99_ms),
                "ms",
                Some(("≤ 20 ms", m.p99_ms <= 20.0)),
            );
            fig(
                &format!("Run Demo c={c}: plaintext requests/s"),
                json!(p.rps),
                "req/s",
                None,
            );
            fig(
                &format!("Run Demo c={c}: plaintext p50 / p99"),
                json!([p.p50_ms, p.p99_ms]),
                "ms",
                None,
            );
            let ratio = m.rps / p.rps;
            fig(
                &format!("Run Demo c={c}: throughput mTLS/plaintext"),
                json!(ratio),
                "ratio",
                Some(("≥ 0.5", ratio >= 0.5)),
            );
            fig(
                &format!("Run Demo c={c}: errors (mTLS + plaintext)"),
                json!(m.errors + p.errors),
                "requests",
                Some(("0", m.errors + p.errors == 0)),
            );
        }

        let rust_ok = |m: &BTreeMap<String, f64>| {
            ["frontend", "backend"]
                .iter()
                .all(|s| m.get(*s).is_some_and(|v| *v <= 30.0))
        };
        for (when, m) in [("idle", &idle), ("under load", &loaded)] {
            for (k, v) in m {
                fig(&format!("RSS {when}: {k}"), json!(v), "MB", None);
            }
            let total: f64 = m.values().sum();
            fig(
                &format!("RSS {when}: Rust services each"),
                json!([m.get("frontend"), m.get("backend")]),
                "MB",
                Some(("≤ 30 MB", rust_ok(m))),
            );
            fig(
                &format!("RSS {when}: whole lab"),
                json!(total),
                "MB",
                Some(("≤ 600 MB", total <= 600.0)),
            );
        }

        println!("══ bench: database connections");
        let (fresh_ms, pooled_ms) =
            db_connections(&lab, if q { 10 } else { 100 }, if q { 100 } else { 2000 })?;
        fig(
            "PostgreSQL: fresh mTLS connection + query",
            json!(fresh_ms),
            "ms",
            None,
        );
        fig(
            "PostgreSQL: query on an open connection",
            json!(pooled_ms),
            "ms",
            None,
        );
        fig(
            "PostgreSQL: fresh / pooled",
            json!(fresh_ms / pooled_ms),
            "ratio",
            None,
        );

        println!("══ bench: rotation under load (TTL {ttl} s)");
        let mut report = scenario::Report::default();
        let rotation_for = Duration::from_secs(if q { ttl } else { 3 * ttl + 2 });
        let rotation =
            scenario::rotation_under_load(&mut lab, &mut report, ttl as u32, rotation_for);
        lab.set_svid_ttl(None)?;
        let rotation = rotation?;
        fig(
            "rotation: requests",
            json!(rotation.requests),
            "requests",
            None,
        );
        fig(
            "rotation: failures",
            json!(rotation.failures),
            "requests",
            Some(("0", rotation.failures == 0)),
        );
        for (holder, n) in &rotation.serials {
            fig(
                &format!("rotation: serials seen, {holder}"),
                json!(n),
                "serials",
                None,
            );
        }
        local::down()?;

        let machine = machine();
        println!(
            "\n══ bench results on {machine}{}",
            if q {
                " (--quick: short runs, figures only)"
            } else {
                ""
            }
        );
        println!(
            "{:<52} {:>22} {:<6} {:<9} MET",
            "FIGURE", "VALUE", "UNIT", "GOAL"
        );
        for f in &figures {
            let value = match &f.value {
                Value::Number(n) => n.as_f64().map_or(n.to_string(), |x| {
                    if x.fract() == 0.0 {
                        format!("{x:.0}")
                    } else {
                        format!("{x:.2}")
                    }
                }),
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_f64().map_or("?".into(), |x| format!("{x:.1}")))
                    .collect::<Vec<_>>()
                    .join(" / "),
                other => other.to_string(),
            };
            let met = match f.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            println!(
                "{:<52} {:>22} {:<6} {:<9} {met}",
                f.name,
                value,
                f.unit,
                f.goal.as_deref().unwrap_or("")
            );
        }
        let report = json!({ "machine": machine, "quick": q, "figures": figures, "rotation_evidence": report.evidence });
        if let Some(dir) = self.json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.json, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", self.json.display());

        let figs = report["figures"].as_array().cloned().unwrap_or_default();
        let missing: Vec<String> = figs
            .iter()
            .filter(|f| f["value"].is_null() || f["value"].as_f64().is_some_and(f64::is_nan))
            .map(|f| f["name"].to_string())
            .collect();
        ensure!(
            missing.is_empty(),
            "figures not produced: {}",
            missing.join(", ")
        );
        let failed: Vec<String> = figs
            .iter()
            .filter(|f| f["goal"] == "0" && f["met"] == false)
            .map(|f| f["name"].to_string())
            .collect();
        ensure!(failed.is_empty(), "requests failed: {}", failed.join(", "));
        Ok(())
    }
}
