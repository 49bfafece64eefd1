//! The kind plan's registration steps as a real SPIRE server of the pinned version takes them.

use crate::pins::Pins;
use crate::runtime::kind::plan::{
    CLUSTER_ALIAS, ImageBuild, SERVER_CLI, Step, Target, plan, registrations,
};

/// The `spire-server` arguments `up` runs through `kubectl exec`, given to `spire_server` for
/// the server at `socket` instead — twice, the second time refused with one of the messages the
/// step takes for "already done". The entries are deleted afterwards unless `keep`. Returns how
/// many steps ran.
pub fn check_registration_with(
    spire_server: &std::path::Path,
    socket: &std::path::Path,
    keep: bool,
) -> anyhow::Result<usize> {
    let pins = Pins::load(&crate::project_root())?;
    let steps: Vec<Step> = plan(&pins, ImageBuild::Nix, &Target::Kind)
        .into_iter()
        .filter(|s| s.argv().windows(SERVER_CLI.len()).any(|w| w == SERVER_CLI))
        .collect();
    anyhow::ensure!(
        steps.len() == 1 + registrations().len(),
        "expected the alias and {} workload entries",
        registrations().len()
    );
    let server = |s: &Step| -> anyhow::Result<std::process::Output> {
        let argv = s.argv();
        let at = argv.iter().position(|a| a == SERVER_CLI[7]).unwrap() + 1;
        let (verb, rest) = argv[at..].split_at(2);
        Ok(std::process::Command::new(spire_server)
            .args(verb)
            .arg("-socketPath")
            .arg(socket)
            .args(rest)
            .output()?)
    };
    let result = (|| -> anyhow::Result<()> {
        for s in &steps {
            let first = server(s)?;
            anyhow::ensure!(
                first.status.success(),
                "{}: {}",
                s.what,
                crate::procs::printed(&first)
            );
            let again = server(s)?;
            let said = crate::procs::printed(&again);
            anyhow::ensure!(
                !again.status.success() && s.already_done.iter().any(|m| said.contains(m)),
                "{} a second time is not recognised as done: {said}",
                s.what
            );
        }
        Ok(())
    })();
    // Whatever happened, the cluster's entries do not stay in this server (unless asked to).
    let filters = if keep {
        vec![]
    } else {
        vec![["-spiffeID", CLUSTER_ALIAS], ["-parentID", CLUSTER_ALIAS]]
    };
    for filter in filters {
        let out = std::process::Command::new(spire_server)
            .args(["entry", "show", "-socketPath"])
            .arg(socket)
            .args(filter)
            .args(["-output", "json"])
            .output()?;
        let ids =
            crate::spire::entry_ids(&String::from_utf8_lossy(&out.stdout)).unwrap_or_default();
        for id in ids {
            std::process::Command::new(spire_server)
                .args(["entry", "delete", "-socketPath"])
                .arg(socket)
                .args(["-entryID", &id])
                .output()?;
        }
    }
    result?;
    Ok(steps.len())
}
