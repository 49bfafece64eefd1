//! `cargo xtask ci`: everything CI checks, in the order a failure is cheapest to find.
//! `.ci/run` calls this; so can anyone on a laptop.

use std::time::Instant;

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use crate::lab::Lab;
use crate::{local, scenario};

#[derive(clap::Args)]
pub struct Ci {
    /// Skip the local lab and its scenarios (formatting, lints and tests only).
    #[arg(long)]
    no_lab: bool,
}

fn stage(name: &str) -> Instant {
    println!("\n══ ci: {name}");
    Instant::now()
}

impl Ci {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let mut times = Vec::new();

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
        crate::nix::check(sh)?;
        times.push(("nix", t.elapsed()));

        let t = stage("tests (PostgreSQL, Chromium, config drift)");
        cmd!(sh, "cargo test --workspace").run().context("tests")?;
        times.push(("tests", t.elapsed()));

        if !self.no_lab {
            let t = stage("the lab on the local runtime");
            let result = lab_checks(sh);
            let down = local::down();
            result?;
            down?;
            ensure_nothing_left()?;
            times.push(("local lab and scenarios", t.elapsed()));

            let t = stage("bench --quick (every figure produced, no failures; no timing asserted)");
            crate::bench::Bench::quick().run(sh)?;
            ensure_nothing_left()?;
            times.push(("bench --quick", t.elapsed()));
        }

        println!("\n══ ci: all green");
        for (name, took) in times {
            println!("  {name:<26} {:>7.1} s", took.as_secs_f64());
        }
        Ok(())
    }
}

fn lab_checks(sh: &Shell) -> anyhow::Result<()> {
    local::down()?;
    let mut lab = local::up(sh, 0)?;
    let demo = scenario::run_demo(&lab)?;
    println!(
        "Run Demo: both links {} / {}, {} orders",
        demo.f2b, demo.b2db, demo.orders
    );
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
    let reports = scenario::run_all(&mut lab, &scenario::NAMES, 20);
    scenario::print_summary(&reports);
    scenario::verdict(&reports)?;
    let (server, socket) = lab.server_cli();
    let n = crate::kind::check_registration_with(&server, &socket, false)?;
    println!(
        "the kind plan's {n} registration commands are accepted by the running SPIRE server, and recognised as done the second time"
    );
    Ok(())
}

/// After `down`, no process may still run from the lab's state directory or its binaries.
fn ensure_nothing_left() -> anyhow::Result<()> {
    let root = local::state_root();
    let needle = root.display().to_string();
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                left.push(format!("{pid}: {cmdline}"));
            }
        }
    }
    ensure!(
        left.is_empty(),
        "processes of the lab still run after down:\n{}",
        left.join("\n")
    );
    ensure!(!root.exists(), "{} still exists after down", root.display());
    println!("after down: no process of the lab remains, state removed");
    Ok(())
}
