//! `cargo xtask`: the one entry point that drives the lab, the same way on every laptop and in CI.
//!
//! Each command is a module with a `run`; only xtask shells out, and it never holds the services'
//! business logic.

mod ci;
mod deps;
mod lab;
mod local;
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
    /// Show the pinned versions and images (nix/pins.json).
    Pins(pins::PinsCmd),
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
        Command::Pins(cmd) => cmd.run(&sh),
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
