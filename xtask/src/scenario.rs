//! Scenarios, written once against the runtime-neutral [`Lab`] handle: each prints its steps and
//! evidence as it goes and ends with PASS or FAIL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::Value;
use xshell::Shell;

use crate::lab::{Component, Lab, Policy, Runtime};
use crate::local::{LocalLab, workload_id};
use crate::probe;

pub const NAMES: [&str; 8] = [
    "happy",
    "rbac",
    "db-down",
    "envoy-down",
    "unregistered",
    "rotation",
    "server-outage",
    "helper-down",
];

#[derive(clap::Args)]
pub struct Scenario {
    #[command(flatten)]
    pub runtime: crate::lab::RuntimeArgs,
    /// happy, rbac, rotation, server-outage, unregistered, db-down, envoy-down, helper-down, or all.
    pub name: String,
    /// Write a machine-readable report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The short X.509-SVID TTL, in seconds, for rotation, server-outage and helper-down.
    #[arg(long, default_value_t = 20)]
    pub ttl: u32,
}

/// What one scenario found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub name: String,
    pub passed: bool,
    pub seconds: f64,
    pub evidence: Vec<String>,
    pub figures: BTreeMap<String, Value>,
    pub failure: Option<String>,
}

impl Report {
    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("    · {line}");
        self.evidence.push(line);
    }
    fn figure(&mut self, key: &str, v: impl Into<Value>) {
        self.figures.insert(key.into(), v.into());
    }
}

fn step(what: &str) {
    println!("  → {what}");
}

impl Scenario {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let names: Vec<&str> = if self.name == "all" {
            NAMES.to_vec()
        } else if NAMES.contains(&self.name.as_str()) {
            vec![self.name.as_str()]
        } else {
            bail!(
                "no scenario {:?}; choose one of: {}, or all",
                self.name,
                NAMES.join(", ")
            );
        };
        let mut lab: Box<dyn Lab> = match self.runtime.resolve(sh)? {
            Runtime::Local => Box::new(LocalLab::open()?),
            Runtime::Kind => Box::new(crate::kind::KindLab::open(sh)?),
        };
        let reports = run_all(lab.as_mut(), &names, self.ttl);
        if names.len() > 1 {
            print_summary(&reports);
        }
        if let Some(path) = &self.json {
            std::fs::write(path, serde_json::to_string_pretty(&reports)?)
                .with_context(|| format!("write {}", path.display()))?;
            println!("report written to {}", path.display());
        }
        verdict(&reports)
    }
}

/// The summary table: one line a scenario, and the total.
pub fn print_summary(reports: &[Report]) {
    println!("\n{:<15} {:<6} {:>9}", "SCENARIO", "RESULT", "SECONDS");
    for r in reports {
        let result = if r.passed { "PASS" } else { "FAIL" };
        println!("{:<15} {:<6} {:>9.1}", r.name, result, r.seconds);
    }
    let total: f64 = reports.iter().map(|r| r.seconds).sum();
    println!("{:<15} {:<6} {:>9.1}", "total", "", total);
}

/// The closing line (`N passed, N failed`, as CI readers look for it) and the outcome.
pub fn verdict(reports: &[Report]) -> anyhow::Result<()> {
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.name.as_str())
        .collect();
    let passed = reports.len() - failed.len();
    println!("scenarios: {passed} passed, {} failed", failed.len());
    if !failed.is_empty() {
        bail!("scenario(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

pub fn run_all(lab: &mut dyn Lab, names: &[&str], ttl: u32) -> Vec<Report> {
    let mut reports = Vec::new();
    for name in names {
        println!("\n━━ scenario {name} ({} runtime)", lab.runtime());
        let mut report = Report {
            name: (*name).into(),
            ..Report::default()
        };
        let started = Instant::now();
        let result = match *name {
            "happy" => happy(lab, &mut report),
            "rbac" => rbac(lab, &mut report),
            "rotation" => rotation(lab, &mut report, ttl),
            "server-outage" => server_outage(lab, &mut report, ttl),
            "unregistered" => unregistered(lab, &mut report),
            "db-down" => db_down(lab, &mut report),
            "envoy-down" => envoy_down(lab, &mut report),
            "helper-down" => helper_down(lab, &mut report, ttl),
            _ => unreachable!(),
        };
        report.seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                report.passed = true;
                println!("PASS {name} ({:.1} s)", report.seconds);
            }
            Err(e) => {
                println!("FAIL {name} ({:.1} s): {e:#}", report.seconds);
                report.failure = Some(format!("{e:#}"));
            }
        }
        reports.push(report);
    }
    reports
}

/// One Run Demo, as the UI's JSON reports it.
#[derive(Debug)]
pub struct Demo {
    pub f2b: String,
    pub f2b_reason: Option<String>,
    pub b2db: String,
    pub b2db_reason: Option<String>,
    pub orders: usize,
    pub caller: Option<String>,
    pub took: Duration,
}

impl Demo {
    pub fn ok(&self) -> bool {
        self.f2b == "SUCCESS" && self.b2db == "SUCCESS" && self.orders > 0
    }
    fn line(&self) -> String {
        let mut s = format!("Frontend to Backend: {}", self.f2b);
        if let Some(r) = &self.f2b_reason {
            s += &format!(" — {r}");
        }
        s += &format!(" | Backend to DB: {}", self.b2db);
        if let Some(r) = &self.b2db_reason {
            s += &format!(" — {r}");
        }
        if self.orders > 0 {
            s += &format!(" | {} orders", self.orders);
        }
        s
    }
}

pub fn run_demo(lab: &dyn Lab) -> anyhow::Result<Demo> {
    let started = Instant::now();
    let (status, body) = probe::post(&format!("{}/api/run-demo", lab.frontend_url()))?;
    let took = started.elapsed();
    ensure!(status == 200, "the frontend answered HTTP {status}: {body}");
    let v: Value = serde_json::from_str(&body)?;
    let s = |p: &str, k: &str| v[p][k].as_str().map(str::to_owned);
    Ok(Demo {
        f2b: s("frontend_to_backend", "status").unwrap_or_default(),
        f2b_reason: s("frontend_to_backend", "reason"),
        b2db: s("backend_to_db", "status").unwrap_or_default(),
        b2db_reason: s("backend_to_db", "reason"),
        orders: v["orders"].as_array().map_or(0, Vec::len),
        caller: v["caller_seen_by_backend"].as_str().map(str::to_owned),
        took,
    })
}

/// Runs the demo until `done` holds for its result, every 200 ms, for at most `limit`.
fn until(
    lab: &dyn Lab,
    limit: Duration,
    done: impl Fn(&Demo) -> bool,
) -> anyhow::Result<(Demo, Duration)> {
    let started = Instant::now();
    loop {
        let d = run_demo(lab)?;
        if done(&d) {
            return Ok((d, started.elapsed()));
        }
        if started.elapsed() > limit {
            bail!(
                "still not as expected after {} s: {}",
                limit.as_secs(),
                d.line()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn happy(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    step("Run Demo");
    let d = run_demo(lab)?;
    r.say(d.line());
    ensure!(d.ok(), "expected both links SUCCESS with orders");
    step("the backend saw the frontend's SPIFFE ID (x-forwarded-client-cert from its Envoy)");
    let caller = d.caller.clone().unwrap_or_default();
    r.say(format!("caller seen by the backend: {caller}"));
    ensure!(
        caller == workload_id("frontend"),
        "the backend saw caller {caller:?}"
    );

    step("the backend Envoy's TLS handshakes and RBAC decisions (admin /stats)");
    let (_, stats) = probe::get(&format!(
        "{}/stats?filter=(ssl.handshake|rbac)",
        lab.envoy_admin_url(true)
    ))?;
    let stat = |suffix: &str| -> u64 {
        stats
            .lines()
            .filter(|l| l.starts_with("listener.") || l.starts_with("http."))
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    };
    let (handshakes, allowed) = (stat("ssl.handshake"), stat("rbac.allowed"));
    r.say(format!(
        "backend Envoy: {handshakes} mTLS handshakes, {allowed} requests allowed by RBAC"
    ));
    ensure!(
        handshakes > 0 && allowed > 0,
        "no handshake or RBAC decision recorded"
    );

    step("PostgreSQL's log: user backend authenticated by certificate over TLS");
    let log = lab.log(Component::Postgres)?;
    let authn = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("connection authenticated: identity=\"CN=backend")
                && l.contains("method=cert")
        })
        .context("PostgreSQL's log shows no certificate authentication of CN=backend")?;
    r.say(authn.trim().to_owned());
    let authz = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("connection authorized: user=backend database=demo")
                && l.contains("SSL enabled")
        })
        .context("PostgreSQL's log shows no TLS connection of user backend")?;
    r.say(authz.trim().to_owned());

    step("every certificate on the path chains to the SPIRE server's bundle");
    let bundle = lab.trust_bundle()?;
    r.say(format!(
        "SPIRE bundle: {} CA certificate(s), serial(s) {}",
        bundle.len(),
        bundle
            .iter()
            .map(probe::serial)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for (holder, chain) in lab.presented_chains() {
        let chain = chain.with_context(|| holder)?;
        probe::chains_to(&chain, &bundle)
            .with_context(|| format!("{holder} does not chain to the SPIRE bundle"))?;
        r.say(format!(
            "{holder}: {} chains to the bundle",
            svid::describe_certificate(&chain[0])
        ));
    }
    // The frontend Envoy only acts as a client: its certificate is checked by the backend Envoy
    // (the handshakes above) against the same bundle, which it also validates the server with.
    let bundle_serials: BTreeSet<String> = bundle.iter().map(probe::serial).collect();
    let fe = probe::envoy_cert(&lab.envoy_admin_url(false))?;
    ensure!(
        fe.ca_serials.iter().any(|s| bundle_serials.contains(s)),
        "the frontend Envoy validates against CA serials {:?}, not the SPIRE bundle's",
        fe.ca_serials
    );
    r.say(format!(
        "frontend Envoy: {} (serial {}) accepted by the backend Envoy; its validation bundle is SPIRE's (CA {})",
        fe.spiffe_id.unwrap_or_default(),
        fe.serial,
        fe.ca_serials.join(", ")
    ));
    Ok(())
}

fn rbac(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let limit = Duration::from_secs(if lab.runtime() == "local" { 15 } else { 90 });
    let before = (
        lab.instance(Component::Frontend),
        lab.instance(Component::Backend),
    );
    let d = run_demo(lab)?;
    ensure!(d.ok(), "the lab is not healthy to begin with: {}", d.line());
    step(
        "switch the backend Envoy's RBAC policy to deny (manifests/backend/config/rbac-deny.yaml)",
    );
    lab.set_policy(Policy::Deny)?;
    let outcome = until(lab, limit, |d| d.f2b == "FAILED");
    let (d, took) = match outcome {
        Ok(v) => v,
        Err(e) => {
            lab.set_policy(Policy::AllowFrontend)?;
            return Err(e);
        }
    };
    r.say(d.line());
    r.say(format!("switch to effect: {:.2} s", took.as_secs_f64()));
    r.figure("deny_effect_seconds", took.as_secs_f64());
    let reason = d.f2b_reason.clone().unwrap_or_default();
    let denied = reason.contains("RBAC policy");
    step("restore the allow policy (manifests/backend/config/rbac.yaml)");
    lab.set_policy(Policy::AllowFrontend)?;
    ensure!(
        denied,
        "the failure does not name the RBAC policy: {reason}"
    );
    let (d, took) = until(lab, limit, Demo::ok)?;
    r.say(d.line());
    r.say(format!("restore to effect: {:.2} s", took.as_secs_f64()));
    r.figure("restore_effect_seconds", took.as_secs_f64());
    let after = (
        lab.instance(Component::Frontend),
        lab.instance(Component::Backend),
    );
    r.say(format!(
        "frontend {} and backend {} before; {} and {} after: not restarted",
        before.0.clone().unwrap_or_default(),
        before.1.clone().unwrap_or_default(),
        after.0.clone().unwrap_or_default(),
        after.1.clone().unwrap_or_default()
    ));
    ensure!(
        before == after && before.0.is_some(),
        "the frontend or backend was restarted"
    );
    Ok(())
}

fn holder_serials(lab: &dyn Lab) -> BTreeMap<&'static str, (String, Option<i64>)> {
    lab.holdings()
        .into_iter()
        .flatten()
        .map(|h| (h.holder, (h.serial, h.seconds_left)))
        .collect()
}

/// Sets a short TTL and waits until all four holders hold a certificate of that TTL.
fn shorten_ttl(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    step(&format!(
        "set the X.509-SVID TTL of the three workloads to {ttl} s"
    ));
    lab.set_svid_ttl(Some(ttl))?;
    let started = Instant::now();
    loop {
        let h = holder_serials(lab);
        if h.len() == 4
            && h.values()
                .all(|(_, left)| left.is_some_and(|l| l <= i64::from(ttl)))
        {
            r.say(format!(
                "all four holders hold {ttl} s SVIDs after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(u64::from(ttl) + 30) {
            bail!("not every holder moved to a {ttl} s SVID: {h:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn restore_ttl(lab: &mut dyn Lab) -> anyhow::Result<()> {
    step("restore the default X.509-SVID TTL");
    lab.set_svid_ttl(None)
}

/// Run Demo requests from `workers` threads until `stop`; counts and the first failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, workers: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..workers)
            .map(|_| {
                let (stop, ok, failures, url) =
                    (stop.clone(), ok.clone(), failures.clone(), url.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match probe::post(&format!("{url}/api/run-demo")) {
                            Ok((200, body)) if body.matches("\"SUCCESS\"").count() == 2 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok((status, body)) => failures
                                .lock()
                                .unwrap()
                                .push(format!("HTTP {status}: {body}")),
                            Err(e) => failures.lock().unwrap().push(format!("{e:#}")),
                        }
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn rotation(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    let run_for = Duration::from_secs(3 * u64::from(ttl) + 2);
    let outcome = rotation_under_load(lab, r, ttl, run_for);
    restore_ttl(lab)?;
    let outcome = outcome?;
    ensure!(
        outcome.failures == 0,
        "{} requests failed during rotation",
        outcome.failures
    );
    ensure!(
        outcome.serials.len() == 4,
        "not every certificate holder could be observed: {:?}",
        outcome.serials.keys()
    );
    for (holder, n) in &outcome.serials {
        ensure!(*n >= 3, "{holder} showed only {n} serials");
    }
    Ok(())
}

/// What a run of requests under rotation saw.
pub struct Rotation {
    pub requests: usize,
    pub failures: usize,
    /// Distinct serials seen per certificate holder.
    pub serials: BTreeMap<&'static str, usize>,
}

/// Shortens the SVID TTL, then runs continuous Run Demo requests for `run_for` while sampling
/// every holder's serial. The caller restores the TTL.
pub fn rotation_under_load(
    lab: &mut dyn Lab,
    r: &mut Report,
    ttl: u32,
    run_for: Duration,
) -> anyhow::Result<Rotation> {
    shorten_ttl(lab, r, ttl)?;
    step(&format!(
        "continuous Run Demo requests for {} s while SPIRE rotates every SVID",
        run_for.as_secs()
    ));
    let load = Load::start(lab.frontend_url(), 2, Duration::from_millis(100));
    let mut seen: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < run_for {
        for (holder, (serial, _)) in holder_serials(lab) {
            if seen.entry(holder).or_default().insert(serial.clone()) {
                println!(
                    "      {:>5.1} s  {holder}: new serial {serial}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (ok, failures) = load.finish();
    let total = ok + failures.len();
    r.say(format!(
        "{total} requests in {:.0} s ({:.1}/s), {} failed",
        run_for.as_secs_f64(),
        total as f64 / run_for.as_secs_f64(),
        failures.len()
    ));
    r.figure("requests", total);
    r.figure("failures", failures.len());
    for (holder, serials) in &seen {
        r.say(format!("{holder}: {} distinct serials", serials.len()));
        r.figure(
            &format!("serials_{}", holder.replace(' ', "_")),
            serials.len(),
        );
    }
    for f in failures.iter().take(5) {
        r.say(format!("failure: {f}"));
    }
    Ok(Rotation {
        requests: total,
        failures: failures.len(),
        serials: seen.into_iter().map(|(h, s)| (h, s.len())).collect(),
    })
}

fn server_outage(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    shorten_ttl(lab, r, ttl)?;
    let result = (|| -> anyhow::Result<()> {
        let before: BTreeMap<_, _> = holder_serials(lab)
            .into_iter()
            .map(|(h, (s, _))| (h, s))
            .collect();
        step("stop the SPIRE server");
        lab.stop(Component::SpireServer)?;
        let outage = Duration::from_secs(u64::from(ttl) / 3);
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < outage {
            let d = run_demo(lab)?;
            if !d.ok() {
                let _ = lab.start(Component::SpireServer);
                bail!("a request failed while the server was down: {}", d.line());
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        r.say(format!(
            "{n} requests succeeded in {} s without a SPIRE server (cached SVIDs)",
            outage.as_secs()
        ));
        step("start the SPIRE server again");
        lab.start(Component::SpireServer)?;
        let started = Instant::now();
        let mut fresh: BTreeSet<&'static str> = BTreeSet::new();
        while fresh.len() < before.len() {
            for (holder, (serial, _)) in holder_serials(lab) {
                if before.get(holder).is_some_and(|b| *b != serial) && fresh.insert(holder) {
                    r.say(format!(
                        "{holder}: new serial {serial} {:.1} s after the server returned",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            ensure!(
                started.elapsed() < Duration::from_secs(u64::from(ttl) * 2 + 20),
                "rotation did not resume for every holder: {fresh:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let d = run_demo(lab)?;
        r.say(d.line());
        ensure!(d.ok(), "Run Demo fails after the outage");
        Ok(())
    })();
    if lab.instance(Component::SpireServer).is_none() {
        lab.start(Component::SpireServer)?;
    }
    restore_ttl(lab)?;
    result
}

fn unregistered(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    // A rogue entry left by an interrupted run would make the first check meaningless.
    lab.remove_rogue()?;
    step("a workload no registration entry describes asks its agent for an SVID");
    match lab.fetch_svid_unregistered() {
        Ok(out) => bail!("an unregistered process got an SVID: {out}"),
        Err(e) => r.say(format!("refused: {e:#}")),
    }
    step("without an SVID it cannot reach the backend: TLS with no client certificate");
    let refusal = probe::tls_without_client_cert(&lab.backend_envoy_addr())?;
    r.say(format!("backend Envoy refused the handshake: {refusal}"));

    step(
        "a rogue workload with a valid SVID for spiffe://example.org/ns/demo/sa/rogue (CN backend)",
    );
    let dir = match lab.issue_rogue_svid() {
        Ok(dir) => dir,
        Err(e) => {
            lab.remove_rogue()?;
            return Err(e);
        }
    };
    let result = (|| -> anyhow::Result<()> {
        let cert = dir.join("svid.0.pem");
        let pem = std::fs::read(&cert)?;
        let x = openssl::x509::X509::from_pem(&pem)?;
        r.say(format!("rogue holds {}", svid::describe_certificate(&x)));
        let (status, body) = probe::https_get_with_cert(
            &lab.backend_envoy_addr(),
            "/api/orders",
            &cert,
            &dir.join("svid.0.key"),
            &dir.join("bundle.0.pem"),
            &workload_id("backend"),
        )?;
        r.say(format!(
            "backend Envoy answered HTTP {status}: {}",
            body.trim()
        ));
        ensure!(
            status == 403 && body.contains("RBAC: access denied"),
            "the rogue was not denied by RBAC"
        );
        match lab.query_postgres_with(&dir) {
            Ok(out) => bail!("PostgreSQL let the rogue read orders: {out}"),
            Err(e) => {
                let e = format!("{e:#}");
                r.say(format!("PostgreSQL refused: {e}"));
                ensure!(
                    e.contains(&workload_id("rogue")),
                    "PostgreSQL's refusal does not name the rogue's SPIFFE ID"
                );
            }
        }
        Ok(())
    })();
    lab.remove_rogue()?;
    result
}

fn db_down(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let backend = lab.instance(Component::Backend);
    step("stop PostgreSQL");
    lab.stop(Component::Postgres)?;
    let result = (|| -> anyhow::Result<()> {
        let d = run_demo(lab)?;
        r.say(format!("{} ({} ms)", d.line(), d.took.as_millis()));
        r.figure("db_down_answer_ms", d.took.as_millis() as u64);
        ensure!(
            d.f2b == "SUCCESS" && d.b2db == "FAILED",
            "expected Frontend to Backend SUCCESS and Backend to DB FAILED"
        );
        ensure!(
            d.b2db_reason.as_deref().is_some_and(|s| !s.is_empty()),
            "no reason given"
        );
        ensure!(
            d.took < Duration::from_secs(2),
            "the UI took {} ms",
            d.took.as_millis()
        );
        Ok(())
    })();
    step("start PostgreSQL");
    lab.start(Component::Postgres)?;
    result?;
    let (d, took) = until(lab, Duration::from_secs(15), Demo::ok)?;
    r.say(format!("{} after {:.1} s", d.line(), took.as_secs_f64()));
    ensure!(
        lab.instance(Component::Backend) == backend,
        "the backend was restarted"
    );
    r.say(format!(
        "backend not restarted ({})",
        backend.unwrap_or_default()
    ));
    Ok(())
}

fn envoy_down(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    step("stop the backend's Envoy");
    lab.stop(Component::EnvoyBackend)?;
    let result = (|| -> anyhow::Result<()> {
        let d = run_demo(lab)?;
        r.say(d.line());
        ensure!(d.f2b == "FAILED", "expected Frontend to Backend FAILED");
        let reason = d.f2b_reason.unwrap_or_default();
        ensure!(
            reason.contains("backend unreachable"),
            "the reason does not say the backend is unreachable: {reason}"
        );
        Ok(())
    })();
    step("start the backend's Envoy");
    lab.start(Component::EnvoyBackend)?;
    result?;
    let (d, took) = until(lab, Duration::from_secs(15), Demo::ok)?;
    r.say(format!("{} after {:.1} s", d.line(), took.as_secs_f64()));
    Ok(())
}

fn helper_down(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    shorten_ttl(lab, r, ttl)?;
    let result = (|| -> anyhow::Result<()> {
        step("stop the backend's spiffe-helper");
        lab.stop(Component::HelperBackend)?;
        let started = Instant::now();
        let reason = loop {
            let (status, body) = lab.backend_readyz()?;
            if status != 200 {
                break body["reason"].as_str().unwrap_or_default().to_owned();
            }
            println!(
                "      /readyz: ready, SVID {} s left",
                body["svid_seconds_left"]
            );
            ensure!(
                started.elapsed() < Duration::from_secs(u64::from(ttl) + 15),
                "the backend stayed ready past its SVID's expiry"
            );
            std::thread::sleep(Duration::from_secs(2));
        };
        r.say(format!(
            "/readyz turned not ready after {:.1} s: {reason}",
            started.elapsed().as_secs_f64()
        ));
        ensure!(
            reason.contains("expired"),
            "the reason does not say the SVID expired"
        );
        let d = run_demo(lab)?;
        r.say(d.line());
        let refused_expired = d.b2db == "FAILED"
            && d.b2db_reason
                .as_deref()
                .is_some_and(|s| s.contains("expired"));
        // On Kubernetes the failing readiness probe soon takes the pod out of its Service too.
        let out_of_service = lab.readiness_gates_traffic()
            && d.f2b == "FAILED"
            && d.f2b_reason
                .as_deref()
                .is_some_and(|s| s.contains("backend unreachable"));
        if out_of_service {
            r.say("the backend pod, not ready, was already out of its Service");
        }
        ensure!(
            refused_expired || out_of_service,
            "the backend still reaches PostgreSQL with an expired SVID"
        );
        step("start the backend's spiffe-helper");
        lab.start(Component::HelperBackend)?;
        let started = Instant::now();
        loop {
            let (status, body) = lab.backend_readyz()?;
            if status == 200 {
                r.say(format!(
                    "/readyz ready again after {:.1} s (SVID {} s left)",
                    started.elapsed().as_secs_f64(),
                    body["svid_seconds_left"]
                ));
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(20),
                "not ready again: {body}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    })();
    if lab.instance(Component::HelperBackend).is_none() {
        lab.start(Component::HelperBackend)?;
    }
    restore_ttl(lab)?;
    result
}

/// Seconds from now until an RFC 3339 UTC time (`2026-11-22T06:11:08Z`, as Envoy prints expiry).
pub fn rfc3339_left(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(secs - crate::local::now())
}
