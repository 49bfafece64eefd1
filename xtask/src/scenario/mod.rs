//! Scenarios, written once against the runtime-neutral [`Lab`] handle: each prints its steps and
//! evidence as it goes and ends with PASS or FAIL. The scenarios themselves are in `cases`.

mod cases;
mod console;
mod faults;
mod inspector;
mod openbao;
mod security;
mod walkthrough;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use xshell::Shell;

use crate::flags::{self, Pick};
use crate::lab::Lab;

pub use cases::rotation_under_load;

/// The scenarios, in the order `all` runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Happy,
    Rbac,
    DbDown,
    EnvoyDown,
    Unregistered,
    Rotation,
    ServerOutage,
    HelperDown,
    Security,
    ServerFailover,
    CaRotation,
    AgentRestart,
    DatastoreDown,
    Console,
    Inspector,
    #[value(name = "openbao")]
    OpenBao,
    #[value(name = "openbao-down")]
    OpenBaoDown,
}

impl Scenario {
    pub const ALL: [Scenario; 17] = [
        Scenario::Happy,
        Scenario::Rbac,
        Scenario::DbDown,
        Scenario::EnvoyDown,
        Scenario::Unregistered,
        Scenario::Rotation,
        Scenario::ServerOutage,
        Scenario::HelperDown,
        Scenario::Security,
        Scenario::ServerFailover,
        Scenario::CaRotation,
        Scenario::AgentRestart,
        Scenario::DatastoreDown,
        Scenario::Console,
        Scenario::Inspector,
        Scenario::OpenBao,
        Scenario::OpenBaoDown,
    ];

    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }

    fn run(self, lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
        match self {
            Scenario::Happy => cases::happy(lab, r),
            Scenario::Rbac => cases::rbac(lab, r),
            Scenario::Rotation => cases::rotation(lab, r, ttl),
            Scenario::ServerOutage => cases::server_outage(lab, r, ttl),
            Scenario::Unregistered => cases::unregistered(lab, r),
            Scenario::DbDown => cases::db_down(lab, r),
            Scenario::EnvoyDown => cases::envoy_down(lab, r),
            Scenario::HelperDown => cases::helper_down(lab, r, ttl),
            Scenario::Security => security::security(lab, r),
            Scenario::ServerFailover => faults::server_failover(lab, r, ttl),
            Scenario::CaRotation => faults::ca_rotation(lab, r),
            Scenario::AgentRestart => faults::agent_restart(lab, r, ttl),
            Scenario::DatastoreDown => faults::datastore_down(lab, r, ttl),
            Scenario::Console => console::console(lab, r, ttl),
            Scenario::Inspector => inspector::inspector(lab, r),
            Scenario::OpenBao => openbao::openbao(lab, r),
            Scenario::OpenBaoDown => openbao::openbao_down(lab, r),
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
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
    /// Run by a presenter (`cargo xtask demo` in a terminal): checkpoints wait for Enter.
    #[serde(skip)]
    pub attended: bool,
}

impl Report {
    pub fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("    · {line}");
        self.evidence.push(line);
    }
    /// Where a presenter would want the audience to look at the UI before the scenario goes on:
    /// waits for Enter when attended, passes otherwise.
    pub fn checkpoint(&mut self, what: &str) {
        if !self.attended {
            return;
        }
        print!("    ⏸ {what} — Enter to go on › ");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let _ = std::io::stdin().read_line(&mut String::new());
    }
    pub fn figure(&mut self, key: &str, v: impl Into<Value>) {
        self.figures.insert(key.into(), v.into());
    }
}

impl flags::ScenarioCmd {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let scenarios = match self.name {
            Pick::All => Scenario::ALL.to_vec(),
            Pick::One(s) => vec![s],
        };
        let mut lab = crate::runtime::open(sh, &self.runtime)?;
        let reports = run_all(lab.as_mut(), &scenarios, self.ttl);
        if scenarios.len() > 1 {
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

impl flags::Demo {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let mut lab = crate::runtime::open(sh, &self.runtime)?;
        let reports = walkthrough::walk(lab.as_mut(), !self.yes, self.ttl)?;
        if reports.is_empty() {
            println!("no step was run");
            return Ok(());
        }
        print_summary(&reports);
        verdict(&reports)
    }
}

/// The walkthrough unattended, then every scenario it does not show: what CI runs, so that each
/// scenario runs once and the walkthrough is proven with them.
pub fn walkthrough_then_the_rest(lab: &mut dyn Lab, ttl: u32) -> anyhow::Result<Vec<Report>> {
    let mut reports = walkthrough::walk(lab, false, ttl)?;
    let rest: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| !walkthrough::STEPS.iter().any(|step| step.scenario == *s))
        .collect();
    reports.extend(run_all(lab, &rest, ttl));
    Ok(reports)
}

/// The summary table: one line a scenario, and the total.
pub fn print_summary(reports: &[Report]) {
    let w = reports
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(15);
    println!("\n{:<w$} {:<6} {:>9}", "SCENARIO", "RESULT", "SECONDS");
    for r in reports {
        let result = if r.passed { "PASS" } else { "FAIL" };
        println!("{:<w$} {:<6} {:>9.1}", r.name, result, r.seconds);
    }
    let total: f64 = reports.iter().map(|r| r.seconds).sum();
    println!("{:<w$} {:<6} {:>9.1}", "total", "", total);
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

pub fn run_all(lab: &mut dyn Lab, scenarios: &[Scenario], ttl: u32) -> Vec<Report> {
    run_all_as(lab, scenarios, ttl, false)
}

/// `run_all`, `attended` by a presenter or not (see `Report::checkpoint`).
fn run_all_as(lab: &mut dyn Lab, scenarios: &[Scenario], ttl: u32, attended: bool) -> Vec<Report> {
    let mut reports = Vec::new();
    for &scenario in scenarios {
        let name = scenario.name();
        println!("\n━━ scenario {name} ({})", lab.label());
        let mut report = Report {
            name: name.clone(),
            attended,
            ..Report::default()
        };
        let started = Instant::now();
        let result = scenario.run(lab, &mut report, ttl);
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
