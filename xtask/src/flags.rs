//! The whole command line of `cargo xtask`, in one place. Each command's behaviour lives in its
//! own module (`impl flags::Up { fn run }` and so on); this file only says what can be typed.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::scenario::Scenario;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Drive the SPIFFE/SPIRE zero-trust lab",
    version
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Install the pinned local binaries (SPIRE, spiffe-helper, Envoy, PostgreSQL, Chromium) if missing.
    Deps(Deps),
    /// Start the lab and wait until it is ready.
    Up(Up),
    /// Stop the lab and remove its state.
    Down(RuntimeArgs),
    /// Show components and the SVIDs they hold.
    Status(RuntimeArgs),
    /// Print a component's log.
    Logs(Logs),
    /// Run a scenario (or all of them) against the running lab.
    Scenario(ScenarioCmd),
    /// The presenter's walkthrough: each step says what and why, waits for Enter, runs, shows the evidence.
    Demo(Demo),
    /// Render the Kubernetes manifests and check them without a cluster.
    Manifests(Manifests),
    /// Build every image the kind runtime needs, the kind node's included, with no registry.
    Images(Images),
    /// Show the pinned versions and images (nix/pins.json).
    Pins(Pins),
    /// Measure time to ready, the request path (mTLS against plaintext), footprint, rotation.
    Bench(Bench),
    /// What CI runs: formatting, lints, tests, then the lab on the local runtime with all scenarios.
    Ci(Ci),
    /// The local runtime's own: the UI's forwarder into its pod, the SPIRE server's Service.
    #[command(hide = true)]
    Forward(Forward),
}

#[derive(clap::Args)]
pub struct Forward {
    /// Connect from inside this network namespace (a file under /run/netns).
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Where to listen.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Where to connect: each connection to the first that answers, taking turns.
    #[arg(long, required = true)]
    pub to: Vec<std::net::SocketAddr>,
}

#[derive(clap::Args)]
pub struct Deps {
    /// Skip what only the tests need (Chromium, chromedriver, nix-instantiate, kustomize, kind,
    /// the Kubernetes OpenAPI document and API server).
    #[arg(long)]
    pub no_test_tools: bool,
    /// Also what the kind runtime needs with no registry: Debian's Docker engine and mmdebstrap,
    /// Kubernetes' node programs from source, the images' other programs (many minutes at first).
    #[arg(long)]
    pub kind_offline: bool,
    /// Only what `--kind-offline` adds (CI builds it in the background beside the rest).
    #[arg(long, requires = "kind_offline")]
    pub only_kind_offline: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// kind when a Docker engine answers, else local.
    Auto,
    /// A kind cluster named spire-demo (laptops with Docker).
    Kind,
    /// Every component as a process on this machine.
    Local,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RuntimeArgs {
    /// Where the lab runs.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
    /// Shorthand for `--runtime local`.
    #[arg(long)]
    pub local: bool,
}

impl RuntimeArgs {
    /// What the user asked for, `--local` folded in.
    pub fn choice(&self) -> RuntimeChoice {
        if self.local {
            RuntimeChoice::Local
        } else {
            self.runtime
        }
    }
}

#[derive(clap::Args)]
pub struct Up {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Shift every local port by this much (to run beside something on the default ports).
    #[arg(long, default_value_t = 0)]
    pub port_offset: u16,
    /// Print the kind runtime's plan of commands without running them (the default runtime
    /// for this flag is kind, whatever this machine has).
    #[arg(long)]
    pub dry_run: bool,
    /// Deploy to this existing cluster (a kubeconfig context) instead of kind; needs --registry.
    #[arg(long, requires = "registry")]
    pub context: Option<String>,
    /// Where to push the services' images for --context, e.g. registry.example.com/lab.
    #[arg(long, requires = "context")]
    pub registry: Option<String>,
    /// The benchmark's plaintext baseline instead of the lab (for debugging `cargo xtask bench`).
    #[arg(long, hide = true)]
    pub bench_plaintext: bool,
    /// kind with no registry: the lab's own Docker engine, every image and the node image built
    /// here (`cargo xtask images --offline`), kind's network replaced by one xtask sets up.
    #[arg(long, conflicts_with_all = ["context", "registry"])]
    pub offline: bool,
}

#[derive(clap::Args)]
pub struct Images {
    /// Into the lab's own Docker engine (started if needed: no registry, nothing routed off the
    /// machine), instead of the engine `docker` talks to.
    #[arg(long)]
    pub offline: bool,
}

#[derive(clap::Args)]
pub struct Logs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Components, e.g. backend envoy-backend postgres spire-server-0 agent-backend-node;
    /// none: every component.
    pub components: Vec<String>,
    /// How many lines from the end of each (0: all).
    #[arg(long, short = 'n', default_value_t = 200)]
    pub lines: usize,
    /// Keep following: new lines of every component named, interleaved as they come, each
    /// after its component's name. Ctrl-C ends it.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `all`, or one scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    All,
    One(Scenario),
}

fn pick(s: &str) -> Result<Pick, String> {
    if s == "all" {
        return Ok(Pick::All);
    }
    Scenario::from_str(s, false).map(Pick::One).map_err(|_| {
        let names: Vec<String> = Scenario::value_variants()
            .iter()
            .map(|v| v.to_string())
            .collect();
        format!(
            "no scenario {s:?}; choose one of: {}, or all",
            names.join(", ")
        )
    })
}

#[derive(clap::Args)]
pub struct ScenarioCmd {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// A scenario's name (happy, rbac, rotation, …: README lists all thirteen), or all.
    #[arg(value_parser = pick)]
    pub name: Pick,
    /// Write a machine-readable report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The short X.509-SVID TTL, in seconds, for rotation, server-outage and helper-down.
    #[arg(long, default_value_t = 20)]
    pub ttl: u32,
}

#[derive(clap::Args)]
pub struct Manifests {
    /// Also print the rendered objects (YAML, as kustomize renders them).
    #[arg(long)]
    pub print: bool,
}

#[derive(clap::Args)]
pub struct Pins {
    #[command(subcommand)]
    pub action: Option<PinsAction>,
}

#[derive(clap::Subcommand)]
pub enum PinsAction {
    /// Print the pinned versions and images (the default).
    Show,
    /// Check every pinned digest against its registry (needs skopeo or docker and a network).
    Verify,
    /// Fill in missing digests from the registries (`--update` also replaces ones that drifted).
    Lock {
        #[arg(long)]
        update: bool,
    },
}

#[derive(clap::Args)]
pub struct Demo {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Run every step without waiting for Enter (CI runs it so).
    #[arg(long)]
    pub yes: bool,
    /// The short X.509-SVID TTL, in seconds, for the rotation, server-outage and failover steps.
    #[arg(long, default_value_t = 20)]
    pub ttl: u32,
}

#[derive(clap::Args)]
pub struct Bench {
    /// A smoke run for CI: every figure once, shortly; checks that all are produced and that
    /// nothing failed, and asserts no timing.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench.json")]
    pub json: PathBuf,
}

#[derive(clap::Args)]
pub struct Ci {
    /// Skip the labs and their scenarios (formatting, lints and tests only).
    #[arg(long)]
    pub no_lab: bool,
    /// Skip the lab on a real kind cluster (the offline path; CI never skips it).
    #[arg(long)]
    pub no_kind: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_parse_and_a_wrong_one_lists_them() {
        assert_eq!(pick("all"), Ok(Pick::All));
        assert_eq!(pick("db-down"), Ok(Pick::One(Scenario::DbDown)));
        let e = pick("dbdown").unwrap_err();
        assert!(e.contains("db-down") && e.contains("or all"), "{e}");
    }
}
