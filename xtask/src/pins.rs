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

impl Pins {
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
