//! `cargo xtask bench`: how fast the lab starts, what mTLS with SPIFFE costs on the request path
//! (against the same topology in plaintext, in the same run), how much memory it takes, and
//! rotation under load. Prints a table and writes a JSON report. Goals are reported, never
//! asserted; `--quick` (CI) checks only that every figure is produced and nothing failed.
//!
//! It runs on the local runtime, which starts the plaintext baseline beside the lab.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde::Serialize;
use serde_json::{Value, json};
use xshell::Shell;

use crate::demo::{Load, Tally};
use crate::flags;
use crate::lab::{Component, Lab};
use crate::procs;
use crate::runtime::local::{self, LocalLab, Profile};
use crate::scenario;

/// The CI smoke run.
pub fn quick() -> flags::Bench {
    flags::Bench {
        quick: true,
        json: crate::project_root().join("target/bench-quick.json"),
    }
}

/// How long and how hard each phase runs.
struct Sizes {
    ready_runs: usize,
    concurrencies: &'static [usize],
    length: Duration,
    fresh_connections: usize,
    pooled_queries: usize,
    rotation_for: Duration,
}

const TTL: u32 = 20;

impl Sizes {
    fn of(quick: bool) -> Sizes {
        if quick {
            Sizes {
                ready_runs: 1,
                concurrencies: &[1, 4],
                length: Duration::from_secs(2),
                fresh_connections: 10,
                pooled_queries: 100,
                rotation_for: Duration::from_secs(u64::from(TTL)),
            }
        } else {
            Sizes {
                ready_runs: 3,
                concurrencies: &[1, 4, 16],
                length: Duration::from_secs(10),
                fresh_connections: 100,
                pooled_queries: 2000,
                rotation_for: Duration::from_secs(3 * u64::from(TTL) + 2),
            }
        }
    }
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

#[derive(Default)]
struct Figures(Vec<Figure>);

impl Figures {
    fn add(&mut self, name: &str, value: Value, unit: &'static str) {
        self.0.push(Figure {
            name: name.into(),
            value,
            unit,
            goal: None,
            met: None,
        });
    }

    fn goal(&mut self, name: &str, value: Value, unit: &'static str, goal: &str, met: bool) {
        self.0.push(Figure {
            name: name.into(),
            value,
            unit,
            goal: Some(goal.into()),
            met: Some(met),
        });
    }
}

/// What one load run gave.
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

/// `concurrency` workers calling Run Demo for `length`, after a warm-up of the connections and
/// the backend's pool; a call counts only when both links succeeded.
fn load(url: &str, concurrency: usize, length: Duration) -> LoadResult {
    for _ in 0..20 {
        let _ = crate::demo::run_demo(url);
    }
    let (
        Tally {
            ok,
            failed,
            mut latencies,
            ..
        },
        seconds,
    ) = Load::run_for(url, concurrency, length);
    latencies.sort();
    LoadResult {
        concurrency,
        seconds,
        requests: ok + failed,
        errors: failed,
        rps: ok as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    }
}

fn memory_mb(lab: &LocalLab, c: Component) -> Option<f64> {
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
            memory_mb(lab, c).map(|mb| (name, mb))
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

impl flags::Bench {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let sizes = Sizes::of(self.quick);
        let mut figures = Figures::default();
        println!("══ bench: building the services first (not timed)");
        xshell::cmd!(sh, "cargo build --release --quiet -p frontend -p backend").run()?;
        let mut lab = time_to_ready(sh, &sizes, &mut figures)?;
        std::thread::sleep(Duration::from_secs(2));
        let idle = footprint(&lab);
        let loaded = mtls_against_plaintext(sh, &lab, &sizes, &mut figures)?;
        memory(&idle, &loaded, &mut figures);
        db_connections(&lab, &sizes, &mut figures)?;
        let rotation = rotation(&mut lab, &sizes, &mut figures);
        local::down(Profile::Mtls)?;
        let evidence = rotation?;
        self.report(&figures, evidence)
    }

    /// The table, the JSON report, and the only checks: every figure produced, no failure.
    fn report(&self, figures: &Figures, evidence: Vec<String>) -> anyhow::Result<()> {
        let machine = machine();
        println!(
            "\n══ bench results on {machine}{}",
            if self.quick {
                " (--quick: short runs, figures only)"
            } else {
                ""
            }
        );
        println!(
            "{:<52} {:>22} {:<6} {:<9} MET",
            "FIGURE", "VALUE", "UNIT", "GOAL"
        );
        for f in &figures.0 {
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
        let report = json!({ "machine": machine, "quick": self.quick, "figures": figures.0, "rotation_evidence": evidence });
        if let Some(dir) = self.json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.json, serde_json::to_string_pretty(&report)?)?;
        println!("report written to {}", self.json.display());

        let missing: Vec<&str> = figures
            .0
            .iter()
            .filter(|f| f.value.is_null() || f.value.as_f64().is_some_and(f64::is_nan))
            .map(|f| f.name.as_str())
            .collect();
        ensure!(
            missing.is_empty(),
            "figures not produced: {}",
            missing.join(", ")
        );
        let failed: Vec<&str> = figures
            .0
            .iter()
            .filter(|f| f.goal.as_deref() == Some("0") && f.met == Some(false))
            .map(|f| f.name.as_str())
            .collect();
        ensure!(failed.is_empty(), "requests failed: {}", failed.join(", "));
        Ok(())
    }
}

/// `up --local` from nothing, `ready_runs` times; the lab of the last run stays up.
fn time_to_ready(sh: &Shell, sizes: &Sizes, figures: &mut Figures) -> anyhow::Result<LocalLab> {
    println!(
        "══ bench: time to ready ({} run(s) of `up --local`, binaries cached)",
        sizes.ready_runs
    );
    local::down_all()?;
    let mut times = Vec::new();
    let mut lab = None;
    for i in 0..sizes.ready_runs {
        if i > 0 {
            local::down(Profile::Mtls)?;
        }
        let t = Instant::now();
        lab = Some(local::up(sh, Profile::Mtls, 0)?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    figures.goal(
        "time to ready, median",
        json!(median),
        "s",
        "≤ 10 s",
        median <= 10.0,
    );
    figures.add(
        "time to ready, spread (min–max)",
        json!([times[0], times[times.len() - 1]]),
        "s",
    );
    lab.context("no run")
}

/// Run Demo on the lab and on the plaintext baseline at each concurrency; the lab's peak
/// memory under the heaviest load.
fn mtls_against_plaintext(
    sh: &Shell,
    lab: &LocalLab,
    sizes: &Sizes,
    figures: &mut Figures,
) -> anyhow::Result<BTreeMap<String, f64>> {
    println!("══ bench: the plaintext baseline (same topology, no TLS, no SPIRE)");
    let plain = local::up(sh, Profile::Plaintext, 0)?;
    let mut rows = Vec::new();
    let mut loaded = BTreeMap::new();
    for &c in sizes.concurrencies {
        println!(
            "══ bench: Run Demo at concurrency {c}, {} s each profile",
            sizes.length.as_secs()
        );
        let (mtls, peak) = with_peak_memory(lab, || load(&lab.frontend_url(), c, sizes.length));
        let plaintext = load(&plain.frontend_url(), c, sizes.length);
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
        loaded = peak;
        rows.push((mtls, plaintext));
    }
    local::down(Profile::Plaintext)?;
    for (m, p) in &rows {
        let c = m.concurrency;
        figures.add(
            &format!("Run Demo c={c}: mTLS requests/s"),
            json!(m.rps),
            "req/s",
        );
        figures.add(&format!("Run Demo c={c}: mTLS p50"), json!(m.p50_ms), "ms");
        figures.goal(
            &format!("Run Demo c={c}: mTLS p99"),
            json!(m.p99_ms),
            "ms",
            "≤ 20 ms",
            m.p99_ms <= 20.0,
        );
        figures.add(
            &format!("Run Demo c={c}: plaintext requests/s"),
            json!(p.rps),
            "req/s",
        );
        figures.add(
            &format!("Run Demo c={c}: plaintext p50 / p99"),
            json!([p.p50_ms, p.p99_ms]),
            "ms",
        );
        let ratio = m.rps / p.rps;
        figures.goal(
            &format!("Run Demo c={c}: throughput mTLS/plaintext"),
            json!(ratio),
            "ratio",
            "≥ 0.5",
            ratio >= 0.5,
        );
        figures.goal(
            &format!("Run Demo c={c}: errors (mTLS + plaintext)"),
            json!(m.errors + p.errors),
            "requests",
            "0",
            m.errors + p.errors == 0,
        );
    }
    Ok(loaded)
}

/// Runs `work` while sampling the lab's memory every 250 ms; its result and the peaks.
fn with_peak_memory<T>(lab: &LocalLab, work: impl FnOnce() -> T) -> (T, BTreeMap<String, f64>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut peak: BTreeMap<String, f64> = BTreeMap::new();
    let result = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (k, v) in footprint(lab) {
                    let e: &mut f64 = peak.entry(k).or_insert(0.0);
                    *e = e.max(v);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            peak
        });
        let result = work();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        peak = sampler.join().unwrap_or_default();
        result
    });
    (result, peak)
}

fn memory(idle: &BTreeMap<String, f64>, loaded: &BTreeMap<String, f64>, figures: &mut Figures) {
    let rust_ok = |m: &BTreeMap<String, f64>| {
        ["frontend", "backend"]
            .iter()
            .all(|s| m.get(*s).is_some_and(|v| *v <= 30.0))
    };
    for (when, m) in [("idle", idle), ("under load", loaded)] {
        for (k, v) in m {
            figures.add(&format!("RSS {when}: {k}"), json!(v), "MB");
        }
        let total: f64 = m.values().sum();
        figures.goal(
            &format!("RSS {when}: Rust services each"),
            json!([m.get("frontend"), m.get("backend")]),
            "MB",
            "≤ 30 MB",
            rust_ok(m),
        );
        figures.goal(
            &format!("RSS {when}: whole lab"),
            json!(total),
            "MB",
            "≤ 600 MB",
            total <= 600.0,
        );
    }
}

/// A fresh TLS connection (handshake with the backend's SVID, certificate authentication, one
/// query) against one query on a connection already open.
fn db_connections(lab: &LocalLab, sizes: &Sizes, figures: &mut Figures) -> anyhow::Result<()> {
    println!("══ bench: database connections");
    let (dir, addr) = lab.db_client();
    let (host, port) = addr.rsplit_once(':').context("host:port")?;
    let id = crate::probe::ClientIdentity::from_helper_files(&dir)?;
    let trust = openssl::x509::X509::stack_from_pem(&std::fs::read(dir.join("svid_bundle.pem"))?)?;
    let tls = crate::probe::postgres_tls(&id, &trust, &contract::Workload::Postgres.spiffe_id())?;
    let conninfo = format!("host={host} port={port} dbname=demo user=backend sslmode=require");
    let started = Instant::now();
    for _ in 0..sizes.fresh_connections {
        let mut c = postgres::Client::connect(&conninfo, tls.clone())
            .context("connect to PostgreSQL with the backend's SVID")?;
        c.query("SELECT id FROM orders", &[])?;
        c.close()?;
    }
    let fresh_ms = started.elapsed().as_secs_f64() * 1000.0 / sizes.fresh_connections as f64;
    let mut c = postgres::Client::connect(&conninfo, tls)?;
    let started = Instant::now();
    for _ in 0..sizes.pooled_queries {
        c.query("SELECT id FROM orders", &[])?;
    }
    let pooled_ms = started.elapsed().as_secs_f64() * 1000.0 / sizes.pooled_queries as f64;
    figures.add(
        "PostgreSQL: fresh mTLS connection + query",
        json!(fresh_ms),
        "ms",
    );
    figures.add(
        "PostgreSQL: query on an open connection",
        json!(pooled_ms),
        "ms",
    );
    figures.add(
        "PostgreSQL: fresh / pooled",
        json!(fresh_ms / pooled_ms),
        "ratio",
    );
    Ok(())
}

/// Run Demo under continuous load while SPIRE rotates every SVID; the scenario's evidence.
fn rotation(
    lab: &mut LocalLab,
    sizes: &Sizes,
    figures: &mut Figures,
) -> anyhow::Result<Vec<String>> {
    println!("══ bench: rotation under load (TTL {TTL} s)");
    let mut report = scenario::Report::default();
    let rotation = scenario::rotation_under_load(lab, &mut report, TTL, sizes.rotation_for);
    lab.set_svid_ttl(None)?;
    let rotation = rotation?;
    figures.add("rotation: requests", json!(rotation.requests), "requests");
    figures.goal(
        "rotation: failures",
        json!(rotation.failures),
        "requests",
        "0",
        rotation.failures == 0,
    );
    for (holder, n) in &rotation.serials {
        figures.add(
            &format!("rotation: serials seen, {holder}"),
            json!(n),
            "serials",
        );
    }
    Ok(report.evidence)
}
