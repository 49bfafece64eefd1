//! `cargo xtask ci`: everything CI checks, in the order a failure is cheapest to find.
//! `.ci/run` calls this; so can anyone on a laptop.

use std::time::Instant;

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::flags;
use crate::lab::Lab;
use crate::runtime::local::{self, Profile};
use crate::scenario::{self, Scenario};

fn stage(name: &str) -> Instant {
    println!("\n══ ci: {name}");
    Instant::now()
}

impl flags::Ci {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let mut times = Vec::new();
        // The offline kind path's builds (many minutes on a new machine) run from the start at
        // the lowest priority, soaking up what the other stages leave idle (downloads, the
        // lab's waits); the kind stage waits for them.
        let kind_deps = (!self.no_lab && !self.no_kind)
            .then(BackgroundDeps::start)
            .transpose()?;

        let t = stage("formatting and lints");
        cmd!(sh, "cargo fmt --all -- --check")
            .run()
            .context("cargo fmt --check failed: run `cargo fmt --all`")?;
        cmd!(
            sh,
            "cargo clippy --quiet --workspace --all-targets -- -D warnings"
        )
        .run()
        .context("clippy")?;
        times.push(("formatting and lints", t.elapsed()));

        let t = stage("local binaries (cargo xtask deps)");
        crate::deps::ensure(sh, true)?;
        times.push(("deps", t.elapsed()));

        let t = stage("the Nix flake, as far as it can be checked without nixpkgs");
        crate::checks::nix::check(sh)?;
        times.push(("nix", t.elapsed()));

        let t = stage("tests (PostgreSQL, Chromium, config drift)");
        cmd!(sh, "cargo test --workspace").run().context("tests")?;
        times.push(("tests", t.elapsed()));

        if !self.no_lab {
            let t = stage("the lab on the local runtime");
            let result = lab_checks(sh);
            let down = local::down(Profile::Mtls);
            result?;
            down?;
            local::ensure_nothing_left()?;
            times.push(("local lab and scenarios", t.elapsed()));

            let t = stage("bench --quick (every figure produced, no failures; no timing asserted)");
            crate::bench::quick().run(sh)?;
            local::ensure_nothing_left()?;
            times.push(("bench --quick", t.elapsed()));
        }
        if let Some(deps) = kind_deps {
            let t = stage(
                "the lab on a real kind cluster, offline (its own engine, every image built here)",
            );
            deps.wait()?;
            let result = kind_checks(sh);
            let down = crate::runtime::kind::down(sh);
            result?;
            down?;
            crate::runtime::kind::ensure_nothing_left()?;
            times.push(("kind lab and scenarios", t.elapsed()));
        }

        println!("\n══ ci: all green");
        for (name, took) in times {
            println!("  {name:<26} {:>7.1} s", took.as_secs_f64());
        }
        Ok(())
    }
}

fn lab_checks(sh: &Shell) -> anyhow::Result<()> {
    local::down_all()?;
    let mut lab = local::up(sh, Profile::Mtls, 0)?;
    let demo = crate::demo::run_demo(&lab.frontend_url())?;
    println!("Run Demo: {}", demo.line());
    ensure!(
        demo.ok(),
        "Run Demo right after `up --local` did not succeed"
    );
    let bundle = lab.trust_bundle()?;
    for (holder, chain) in lab.presented_chains() {
        crate::probe::chains_to(&chain?, &bundle)
            .with_context(|| format!("{holder} does not chain to the SPIRE bundle"))?;
        println!("{holder}: chains to the running SPIRE server's bundle");
    }
    let reports = scenario::walkthrough_then_the_rest(&mut lab, 20)?;
    scenario::print_summary(&reports);
    scenario::verdict(&reports)?;
    let (server, socket) = lab.server_cli();
    let n = crate::checks::registration::check_registration_with(&server, &socket, false)?;
    println!(
        "the kind plan's {n} registration commands are accepted by the running SPIRE server, and recognised as done the second time"
    );
    Ok(())
}

/// The lab on a real two-node kind cluster, built and run with no registry: `up --runtime kind
/// --offline`, Run Demo through the NodePort, the chains, every scenario, `status` and `logs`.
fn kind_checks(sh: &Shell) -> anyhow::Result<()> {
    use crate::runtime::kind;
    kind::up(sh, false, kind::Target::Kind, true)?;
    let mut lab = kind::KindLab::open(sh)?;
    let demo = crate::demo::run_demo(&lab.frontend_url())?;
    println!("Run Demo through the NodePort: {}", demo.line());
    ensure!(
        demo.ok(),
        "Run Demo right after `up --runtime kind` did not succeed"
    );
    let bundle = lab.trust_bundle()?;
    for (holder, chain) in lab.presented_chains() {
        crate::probe::chains_to(&chain?, &bundle)
            .with_context(|| format!("{holder} does not chain to the SPIRE bundle"))?;
        println!("{holder}: chains to the running SPIRE server's bundle");
    }
    let reports = scenario::run_all(&mut lab, &Scenario::ALL, 20);
    scenario::print_summary(&reports);
    drop(lab);
    kind::status(sh)?;
    let backend = [crate::lab::Component::Backend];
    kind::logs(
        sh,
        &crate::runtime::logs::Printer::new(&backend),
        &backend,
        5,
        false,
    )?;
    scenario::verdict(&reports)
}

/// `cargo xtask deps --kind-offline` in a child process at the lowest CPU priority, its output
/// in a log file.
struct BackgroundDeps {
    child: std::process::Child,
    log: std::path::PathBuf,
    started: Instant,
}

impl Drop for BackgroundDeps {
    /// An earlier stage failed: the builds are not waited for.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl BackgroundDeps {
    fn start() -> anyhow::Result<BackgroundDeps> {
        let log = crate::project_root().join("target/ci-kind-offline-deps.log");
        std::fs::create_dir_all(log.parent().context("target/")?)?;
        let out = std::fs::File::create(&log)?;
        let child = std::process::Command::new("nice")
            .args(["-n", "19"])
            .arg(std::env::current_exe()?)
            .args(["deps", "--kind-offline", "--only-kind-offline"])
            .current_dir(crate::project_root())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("start `cargo xtask deps --kind-offline` in the background")?;
        println!(
            "the offline kind path's builds run in the background (log: {})",
            log.display()
        );
        Ok(BackgroundDeps {
            child,
            log,
            started: Instant::now(),
        })
    }

    fn wait(mut self) -> anyhow::Result<()> {
        let status = self.child.wait()?;
        ensure!(
            status.success(),
            "`cargo xtask deps --kind-offline` failed; its log ends:\n{}",
            crate::procs::tail(&self.log, 30)
        );
        println!(
            "the offline kind path's builds were done {:.0} s after they started",
            self.started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
