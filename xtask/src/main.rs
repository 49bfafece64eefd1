//! `cargo xtask`: the one entry point that drives the lab, the same way on every laptop and in CI.
//!
//! The command line is in `flags`; each command is a module with a `run`. Only xtask shells out,
//! and it never holds the services' business logic.

mod bench;
mod checks;
mod ci;
mod datastore;
mod demo;
mod deps;
mod flags;
mod lab;
mod openbao;
mod pins;
mod probe;
mod procs;
mod render;
mod runtime;
mod scenario;
mod spire;
mod telemetry;
mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use xshell::Shell;

fn main() -> ExitCode {
    // An error prints its chain of causes; a stack backtrace only when asked for with
    // RUST_LIB_BACKTRACE=1 (RUST_BACKTRACE, often set in developers' shells, is for panics).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = flags::Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(command: flags::Command) -> anyhow::Result<()> {
    use flags::Command;
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    match command {
        Command::Deps(cmd) => cmd.run(&sh),
        Command::Up(cmd) => cmd.run(&sh),
        Command::Down(args) => runtime::down(&sh, &args),
        Command::Status(args) => runtime::status(&sh, &args),
        Command::Logs(cmd) => cmd.run(&sh),
        Command::Scenario(cmd) => cmd.run(&sh),
        Command::Demo(cmd) => cmd.run(&sh),
        Command::Manifests(cmd) => cmd.run(&sh),
        Command::Images(cmd) => cmd.run(&sh),
        Command::Pins(cmd) => cmd.run(&sh),
        Command::Bench(cmd) => cmd.run(&sh),
        Command::Ci(cmd) => cmd.run(&sh),
        Command::Forward(cmd) => cmd.run(),
    }
}

/// `error: <what failed>` and one `caused by:` line per cause; the backtrace only when it was
/// captured (RUST_LIB_BACKTRACE=1).
fn report(e: &anyhow::Error) -> String {
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        out += &format!("\n  caused by: {cause}");
    }
    let trace = e.backtrace();
    if trace.status() == std::backtrace::BacktraceStatus::Captured {
        out += &format!("\n\nbacktrace:\n{trace}");
    }
    out
}

/// The repository root (the parent of `xtask/`).
pub fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the repository root")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    /// An error reads as its chain of causes, with no backtrace unless one was captured.
    #[test]
    fn errors_print_their_causes_only() {
        let e = std::fs::read("/nonexistent/spire-lab")
            .context("read the state")
            .context("the local lab is not up")
            .unwrap_err();
        let text = super::report(&e);
        assert!(
            text.starts_with(
                "error: the local lab is not up\n  caused by: read the state\n  caused by: "
            ),
            "{text}"
        );
        if e.backtrace().status() != std::backtrace::BacktraceStatus::Captured {
            assert!(!text.contains("backtrace"), "{text}");
        }
    }
}
