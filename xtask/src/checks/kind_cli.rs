//! The kind runtime's own kind commands against the pinned kind CLI (built with Go): every
//! `kind` command `up` and `down` run is one it takes.

use anyhow::Context;

use crate::pins::Pins;
use crate::runtime::kind::plan::{ImageBuild, Target, plan};

/// Every `kind` command `up` and `down` run is one the pinned kind CLI takes: its subcommand
/// exists and it knows every flag (cobra refuses an unknown flag before `--help` prints the
/// usage). Returns how many commands were checked.
pub fn check_kind_commands(kind: &std::path::Path) -> anyhow::Result<usize> {
    let pins = Pins::load(&crate::project_root())?;
    let mut argvs: Vec<Vec<String>> =
        [ImageBuild::Nix, ImageBuild::Dockerfile, ImageBuild::Offline]
            .into_iter()
            .flat_map(|b| plan(&pins, b, &Target::Kind))
            .filter(|s| s.runs("kind"))
            .map(|s| s.argv()[1..].to_vec())
            .collect();
    argvs.sort();
    argvs.dedup();
    let name = pins.kind.cluster_name.clone();
    argvs.push(vec!["get".into(), "clusters".into()]);
    argvs.push(vec![
        "delete".into(),
        "cluster".into(),
        "--name".into(),
        name,
    ]);
    for argv in &argvs {
        let out = std::process::Command::new(kind)
            .args(argv)
            .arg("--help")
            .output()
            .with_context(|| format!("run {}", kind.display()))?;
        let said = crate::procs::printed(&out);
        anyhow::ensure!(
            out.status.success() && said.contains("Usage:"),
            "kind {}: {}",
            argv.join(" "),
            said.trim()
        );
    }
    Ok(argvs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan's kind commands pass the pinned kind's flag parsing; a misspelt flag does not.
    #[test]
    fn the_plans_kind_commands_are_known_to_the_pinned_kind() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let kube = crate::deps::find_kube(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let n = check_kind_commands(&kube.kind).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(n >= 4, "only {n} kind commands");
        let out = std::process::Command::new(&kube.kind)
            .args(["load", "image-archive", "--nam", "x", "--help"])
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
}
