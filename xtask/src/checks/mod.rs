//! Everything checked without a running lab: the manifests (schemas, PodSecurity, configs as
//! mounted, invariants), the kind layer against a real API server and real SPIRE, the kind CLI,
//! the registration commands, the Nix flake, and the repository's own rules (`tidy`).
//!
//! The checks may drive the kind runtime's plan and handle; the runtimes never call the checks.

pub mod apiserver;
pub mod attestation;
pub mod kind_cli;
pub mod kind_layer;
pub mod manifests;
pub mod nix;
pub mod registration;
#[cfg(test)]
mod tidy;

use xshell::{Shell, cmd};

use crate::flags;

impl flags::Manifests {
    /// `cargo xtask manifests`: every check of the Kubernetes side that needs no cluster.
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let pins = crate::pins::Pins::load(&crate::project_root())?;
        let kube = crate::deps::find_kube(&pins)?;
        if self.print {
            let manifests = crate::project_root().join("manifests");
            let kustomize = &kube.kustomize;
            println!(
                "{}",
                cmd!(sh, "{kustomize} build {manifests}").quiet().read()?
            );
        }
        manifests::check(sh, &kube)?;
        let n = kind_cli::check_kind_commands(&kube.kind)?;
        println!("the plan's {n} kind commands pass the pinned kind's flag parsing");
        kind_layer::check_against_apiserver(sh, &kube)
    }
}
