//! Where the lab runs, modelled on kind's own providers: one interface (`crate::lab::Lab` for a
//! running lab, and the lifecycle here: up, down, status, logs), one module per runtime, each
//! detecting itself. Code above this module never asks which runtime it has.
//!
//! - `local`: every component as a process on this machine (what CI runs end to end).
//! - `kind`: a kind cluster, or an existing cluster with `--context`.

pub mod kind;
pub mod local;
pub mod logs;

use xshell::Shell;

use crate::flags::{self, RuntimeChoice};
use crate::lab::{Component, Lab};

/// A runtime, once chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Kind,
    Local,
}

/// The runtime the user chose, or the one this machine has: kind when a Docker engine answers.
pub fn resolve(sh: &Shell, args: &flags::RuntimeArgs) -> Runtime {
    match args.choice() {
        RuntimeChoice::Local => Runtime::Local,
        RuntimeChoice::Kind => Runtime::Kind,
        RuntimeChoice::Auto => match kind::detect(sh) {
            Some(engine) => {
                println!(
                    "runtime: kind (a Docker engine {engine} answers; --local to run as processes)"
                );
                Runtime::Kind
            }
            None => {
                println!(
                    "runtime: local (no Docker engine answers `docker info`; --runtime kind to insist)"
                );
                Runtime::Local
            }
        },
    }
}

/// The running lab, for scenarios.
pub fn open(sh: &Shell, args: &flags::RuntimeArgs) -> anyhow::Result<Box<dyn Lab>> {
    Ok(match resolve(sh, args) {
        Runtime::Local => Box::new(local::LocalLab::open()?),
        Runtime::Kind => Box::new(kind::KindLab::open(sh)?),
    })
}

impl flags::Up {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        // An existing cluster is the Kubernetes path whatever this machine runs, and so is the
        // plan `--dry-run` prints unless the local runtime was asked for by name.
        let runtime = if self.context.is_some()
            || (self.dry_run && self.runtime.choice() == RuntimeChoice::Auto)
        {
            Runtime::Kind
        } else {
            resolve(sh, &self.runtime)
        };
        match runtime {
            Runtime::Local if self.dry_run => anyhow::bail!(
                "the local runtime has no plan to print (it starts processes one by one): `cargo xtask up --dry-run` prints the kind runtime's"
            ),
            Runtime::Local => {
                let profile = if self.bench_plaintext {
                    local::Profile::Plaintext
                } else {
                    local::Profile::Mtls
                };
                local::up(sh, profile, self.port_offset).map(drop)
            }
            Runtime::Kind => {
                let target = match (self.context, self.registry) {
                    (Some(context), Some(registry)) => kind::Target::Existing { context, registry },
                    _ => kind::Target::Kind,
                };
                kind::up(sh, self.dry_run, target, self.offline)
            }
        }
    }
}

pub fn down(sh: &Shell, args: &flags::RuntimeArgs) -> anyhow::Result<()> {
    match resolve(sh, args) {
        Runtime::Local => local::down_all(),
        Runtime::Kind => kind::down(sh),
    }
}

pub fn status(sh: &Shell, args: &flags::RuntimeArgs) -> anyhow::Result<()> {
    match resolve(sh, args) {
        Runtime::Local => local::LocalLab::open()?.print_status(),
        Runtime::Kind => kind::status(sh),
    }
}

impl flags::Logs {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let components = if self.components.is_empty() {
            Component::ALL.to_vec()
        } else {
            self.components
                .iter()
                .map(|c| Component::parse(c))
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let out = logs::Printer::new(&components);
        match resolve(sh, &self.runtime) {
            Runtime::Local => {
                let lab = local::LocalLab::open()?;
                if self.follow {
                    return logs::follow_files(&out, &lab.log_files(&components), self.lines);
                }
                for c in components {
                    let text = lab.log(c)?;
                    out.block(c, crate::procs::last_lines(&text, self.lines));
                }
                Ok(())
            }
            Runtime::Kind => kind::logs(sh, &out, &components, self.lines, self.follow),
        }
    }
}
