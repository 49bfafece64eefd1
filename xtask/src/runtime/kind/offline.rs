//! The offline path, put together: `cargo xtask images [--offline]` builds every image (the
//! lab's, the control plane's, the node image) from what `deps --kind-offline` made, into the
//! lab's own engine or the one `docker` talks to; `up --offline` runs the kind plan on top.

use anyhow::Context;
use xshell::{Shell, cmd};

use super::{engine, images, node};
use crate::deps;
use crate::flags;
use crate::pins::Pins;

/// The components' base image, and the local-path helper pods'.
fn base_name(pins: &Pins) -> String {
    format!("spire-lab/offline-base:{}", pins.kind_offline.debian_suite)
}

/// Starts the lab's own engine (installing and building what it needs first) and points `sh`
/// at it.
pub fn use_own_engine(sh: &Shell) -> anyhow::Result<deps::OfflineKind> {
    let pins = Pins::load(&crate::project_root())?;
    let off = deps::ensure_kind_offline(sh, &pins)?;
    let host = engine::start(&off.kind_node.join("capless-runc"))?;
    sh.set_var("DOCKER_HOST", host);
    Ok(off)
}

/// Points `sh` at the lab's own engine when it runs (for status, logs, scenarios and down).
pub fn attach(sh: &Shell) -> Option<String> {
    let host = engine::running()?;
    sh.set_var("DOCKER_HOST", &host);
    Some(host)
}

/// Builds every image into the engine `sh` talks to; up-to-date ones are kept.
pub fn build_images(sh: &Shell, off: &deps::OfflineKind) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let pins = Pins::load(&crate::project_root())?;
    let tools = deps::find(&pins)?;
    println!("building the services (release)…");
    cmd!(
        sh,
        "cargo build --release --quiet -p frontend -p backend -p ledger"
    )
    .run()
    .context("build the services")?;
    let base = base_name(&pins);
    images::import_rootfs(sh, &off.base_rootfs, &base)?;
    let scratch = tempfile::Builder::new()
        .prefix("spire-lab-images-")
        .tempdir()?;
    let services = crate::project_root().join("target/release");
    let control = images::control_plane(off, &pins)?;
    let addons = images::addons(off, &pins)?;
    let lab = images::lab(off, &tools, &pins, &services, scratch.path())?;
    let all: Vec<&images::ImageSpec> = control.iter().chain(&addons).chain(&lab).collect();
    for (i, spec) in all.iter().enumerate() {
        let built = spec
            .build(sh, &base)
            .with_context(|| format!("the image {}", spec.name))?;
        println!(
            "[{:>2}/{}] {} {}",
            i + 1,
            all.len() + 1,
            spec.name,
            if built { "built" } else { "(up to date)" }
        );
    }
    let baked: Vec<images::ImageSpec> = control.iter().chain(&addons).cloned().collect();
    let pause = images::pause_image(&control)?;
    print!("[{:>2}/{}] ", all.len() + 1, all.len() + 1);
    node::build(sh, off, &pins, &base, &baked, pause)?;
    // Earlier builds of the same names, untagged now, would fill the lab cache.
    cmd!(sh, "docker image prune --force")
        .quiet()
        .ignore_stdout()
        .run()
        .context("remove the images earlier builds left untagged")?;
    println!(
        "every image is ready ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

impl flags::Images {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        let off = if self.offline {
            use_own_engine(sh)?
        } else {
            let pins = Pins::load(&crate::project_root())?;
            anyhow::ensure!(
                super::detect(sh).is_some(),
                "no Docker engine answers `docker info`: start one, or build into the lab's own with `cargo xtask images --offline`"
            );
            deps::ensure_kind_offline(sh, &pins)?
        };
        build_images(sh, &off)?;
        println!(
            "\nEvery image is built. Next: cargo xtask up --runtime kind{}",
            if self.offline { " --offline" } else { "" }
        );
        Ok(())
    }
}

/// kind's cluster config for the offline node image: the shared one, kind's default CNI off.
pub fn offline_cluster_config() -> anyhow::Result<String> {
    let path = crate::project_root().join("manifests/kind/cluster.yaml");
    let mut config: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path)?).context("cluster.yaml")?;
    config["networking"]["disableDefaultCNI"] = true.into();
    Ok(format!(
        "# Written by `cargo xtask up --runtime kind --offline` from manifests/kind/cluster.yaml:\n# kind's default CNI cannot be built offline; xtask sets the pod network up instead.\n{}",
        serde_yaml_ng::to_string(&config)?
    ))
}

/// Deletes the kind network the engine keeps, then stops the engine and puts the host back.
pub fn stop_own_engine(sh: &Shell) -> anyhow::Result<()> {
    if attach(sh).is_none() {
        return Ok(());
    }
    let _ = cmd!(sh, "docker network rm kind")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    engine::stop()
}

#[cfg(test)]
mod tests {
    /// The offline cluster config is the shared one with kind's default CNI off, nothing else.
    #[test]
    fn offline_cluster_config_only_disables_the_default_cni() {
        let shared: serde_json::Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(crate::project_root().join("manifests/kind/cluster.yaml"))
                .unwrap(),
        )
        .unwrap();
        let mut offline: serde_json::Value =
            serde_yaml_ng::from_str(&super::offline_cluster_config().unwrap()).unwrap();
        assert_eq!(offline["networking"]["disableDefaultCNI"], true);
        offline.as_object_mut().unwrap().remove("networking");
        assert_eq!(offline, shared);
    }
}
