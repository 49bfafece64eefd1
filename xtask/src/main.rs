//! `cargo xtask`: the one entry point that drives the lab, the same way on every laptop and in CI.
//!
//! Each command is a module with a `run`; only xtask shells out, and it never holds the services'
//! business logic.

mod apiserver;
mod bench;
mod ci;
mod deps;
mod kind;
mod kube;
mod lab;
mod local;
mod nix;
mod pins;
mod probe;
mod procs;
mod render;
mod scenario;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use xshell::Shell;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Drive the SPIFFE/SPIRE zero-trust lab",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the pinned local binaries (SPIRE, spiffe-helper, Envoy, PostgreSQL 15, Chromium) if missing.
    Deps(deps::Deps),
    /// Start the lab and wait until it is ready.
    Up(lab::Up),
    /// Stop the lab and remove its state.
    Down(lab::RuntimeArgs),
    /// Show components and the SVIDs they hold.
    Status(lab::RuntimeArgs),
    /// Print a component's log.
    Logs(lab::Logs),
    /// Run a scenario (or all of them) against the running lab.
    Scenario(scenario::Scenario),
    /// Render the Kubernetes manifests and check them without a cluster.
    Manifests(kube::ManifestsCmd),
    /// Show the pinned versions and images (nix/pins.json).
    Pins(pins::PinsCmd),
    /// Measure time to ready, the request path (mTLS against plaintext), footprint, rotation.
    Bench(bench::Bench),
    /// What CI runs: formatting, lints, tests, then the lab on the local runtime with all scenarios.
    Ci(ci::Ci),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match cli.command {
        Command::Deps(cmd) => cmd.run(&sh),
        Command::Up(cmd) => cmd.run(&sh),
        Command::Down(args) => lab::down(&sh, &args),
        Command::Status(args) => lab::status(&sh, &args),
        Command::Logs(cmd) => cmd.run(&sh),
        Command::Scenario(cmd) => cmd.run(&sh),
        Command::Ci(cmd) => cmd.run(&sh),
        Command::Bench(cmd) => cmd.run(&sh),
        Command::Pins(cmd) => cmd.run(&sh),
        Command::Manifests(cmd) => cmd.run(&sh),
    }
    .context("cargo xtask failed")
}

/// The repository root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository root")
        .to_owned()
}

#[cfg(test)]
mod tidy {
    use clap::CommandFactory;

    /// The README names every xtask command.
    #[test]
    fn readme_mentions_every_command() {
        let readme = std::fs::read_to_string(crate::project_root().join("README.md")).unwrap();
        for sub in crate::Cli::command().get_subcommands() {
            let name = sub.get_name();
            assert!(
                readme.contains(&format!("cargo xtask {name}")),
                "README.md does not mention `cargo xtask {name}`"
            );
        }
    }

    /// Every Rust module starts with a `//!` line saying what it is for.
    #[test]
    fn every_module_says_what_it_is_for() {
        let root = crate::project_root();
        let mut missing = Vec::new();
        let mut stack = vec![root.join("crates"), root.join("xtask")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() && !p.ends_with("target") {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    if !text.trim_start().starts_with("//!") {
                        missing.push(p.strip_prefix(&root).unwrap().display().to_string());
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "modules without a //! line: {missing:?}"
        );
    }
}
