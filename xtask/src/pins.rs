//! `nix/pins.json`: the one source of every external version and image reference.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
pub struct Pins {
    pub spire: Spire,
    pub spiffe_helper: SpiffeHelper,
    pub envoy: Envoy,
    pub postgres: Postgres,
    pub kind: Kind,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Spire {
    pub version: String,
    pub go_module: String,
    pub go_min: String,
    pub server_image: String,
    pub server_digest: Option<String>,
    pub agent_image: String,
    pub agent_digest: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SpiffeHelper {
    pub version: String,
    pub go_module: String,
    pub go_min: String,
    pub image: String,
    pub digest: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Envoy {
    pub version: String,
    pub pypi: String,
    pub image: String,
    pub digest: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Postgres {
    pub major: u32,
    pub debian_package: String,
    pub image: String,
    pub digest: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Kind {
    pub version: String,
    pub cluster_name: String,
    pub node_image: String,
    pub node_digest: Option<String>,
}

#[derive(clap::Args)]
pub struct PinsCmd {}

impl PinsCmd {
    pub fn run(self, _sh: &xshell::Shell) -> anyhow::Result<()> {
        let pins = Pins::load(&crate::project_root())?;
        println!("Local binaries:");
        println!(
            "  SPIRE          {} (go: {}, Go >= {})",
            pins.spire.version, pins.spire.go_module, pins.spire.go_min
        );
        println!(
            "  spiffe-helper  {} (go: {}, Go >= {})",
            pins.spiffe_helper.version, pins.spiffe_helper.go_module, pins.spiffe_helper.go_min
        );
        println!(
            "  Envoy          {} (PyPI: {})",
            pins.envoy.version, pins.envoy.pypi
        );
        println!(
            "  PostgreSQL     {} (Debian: {})",
            pins.postgres.major, pins.postgres.debian_package
        );
        println!(
            "  kind           {} (cluster {})",
            pins.kind.version, pins.kind.cluster_name
        );
        println!("Images (a missing digest is not verified yet):");
        for (name, image, digest) in pins.images() {
            println!(
                "  {name:<14} {image}@{}",
                digest.unwrap_or("<no digest yet>")
            );
        }
        Ok(())
    }
}

impl Pins {
    /// Every third-party image: a name, the tagged reference and its digest when known.
    pub fn images(&self) -> Vec<(&'static str, &str, Option<&str>)> {
        vec![
            (
                "spire-server",
                &self.spire.server_image,
                self.spire.server_digest.as_deref(),
            ),
            (
                "spire-agent",
                &self.spire.agent_image,
                self.spire.agent_digest.as_deref(),
            ),
            (
                "spiffe-helper",
                &self.spiffe_helper.image,
                self.spiffe_helper.digest.as_deref(),
            ),
            ("envoy", &self.envoy.image, self.envoy.digest.as_deref()),
            (
                "postgres",
                &self.postgres.image,
                self.postgres.digest.as_deref(),
            ),
            (
                "kind node",
                &self.kind.node_image,
                self.kind.node_digest.as_deref(),
            ),
        ]
    }

    pub fn load(root: &Path) -> anyhow::Result<Pins> {
        let path = root.join("nix/pins.json");
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_name_no_floating_tag() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        assert_eq!(pins.spire.version, "1.15.3");
        for image in [
            &pins.spire.server_image,
            &pins.spire.agent_image,
            &pins.spiffe_helper.image,
            &pins.envoy.image,
            &pins.postgres.image,
            &pins.kind.node_image,
        ] {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{image} has no fixed tag"
            );
        }
        for digest in [
            &pins.spire.server_digest,
            &pins.spiffe_helper.digest,
            &pins.kind.node_digest,
        ]
        .into_iter()
        .flatten()
        {
            assert!(
                digest.starts_with("sha256:") && digest.len() == 71,
                "{digest}"
            );
        }
    }
}
