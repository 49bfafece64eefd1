//! `cargo xtask pins`: show the pins, verify and lock image digests against the registries. The
//! types of `nix/pins.json` are the `pins` crate's, shared with the tests.

use anyhow::Context;

pub use ::pins::*;

impl crate::flags::Pins {
    pub fn run(self, sh: &xshell::Shell) -> anyhow::Result<()> {
        let root = crate::project_root();
        let pins = Pins::load(&root)?;
        match self.action.unwrap_or(crate::flags::PinsAction::Show) {
            crate::flags::PinsAction::Show => {
                println!("Local binaries:");
                println!(
                    "  SPIRE          {} (go: {}, Go >= {})",
                    pins.spire.version, pins.spire.go_module, pins.spire.go_min
                );
                println!(
                    "  spiffe-helper  {} (go: {}, Go >= {})",
                    pins.spiffe_helper.version,
                    pins.spiffe_helper.go_module,
                    pins.spiffe_helper.go_min
                );
                println!(
                    "  Envoy          {} (PyPI: {})",
                    pins.envoy.version, pins.envoy.pypi
                );
                println!(
                    "  PostgreSQL     {} (npm: {}@{}; psql from Debian's {})",
                    pins.postgres.version,
                    pins.postgres.npm_package,
                    pins.postgres.npm_version,
                    pins.postgres.client_debian_package
                );
                println!(
                    "  kind           {} (cluster {})",
                    pins.kind.version, pins.kind.cluster_name
                );
                let services: Vec<&str> = pins.services.all().iter().map(|(_, i)| *i).collect();
                println!(
                    "  SPIFFE CSI     {}; the lab's services {} ({})",
                    pins.spiffe_csi_driver.version,
                    pins.services.version,
                    services.join(", ")
                );
                println!(
                    "  without Nix    manifests/images/Dockerfile builds on {} and runs on {}",
                    pins.services.build_image, pins.services.runtime_image
                );
                println!("Images (a missing digest is not verified yet):");
                for i in pins.images() {
                    println!(
                        "  {:<18} {}@{}",
                        i.name,
                        i.reference,
                        i.digest.unwrap_or("<no digest yet>")
                    );
                }
                Ok(())
            }
            crate::flags::PinsAction::Verify => {
                let mut drift = Vec::new();
                for i in pins.images() {
                    let found = registry_digest(sh, i.reference)?;
                    let status = compare(i.digest, &found);
                    println!(
                        "  {:<14} {:<44} {status:?} (registry {found})",
                        i.name, i.reference
                    );
                    if status != DigestStatus::Match {
                        drift.push(i.name);
                    }
                }
                anyhow::ensure!(
                    drift.is_empty(),
                    "pins differ from the registries for: {} (`cargo xtask pins lock`)",
                    drift.join(", ")
                );
                println!("every pinned digest matches its registry");
                Ok(())
            }
            crate::flags::PinsAction::Lock { update } => {
                let mut updates = Vec::new();
                for i in pins.images() {
                    let found = registry_digest(sh, i.reference)?;
                    match compare(i.digest, &found) {
                        DigestStatus::Missing => updates.push((i.section, i.key, found)),
                        DigestStatus::Drift if update => updates.push((i.section, i.key, found)),
                        DigestStatus::Drift => {
                            println!("  {} drifted ({found}); pass --update to take it", i.name)
                        }
                        DigestStatus::Match => {}
                    }
                }
                let path = root.join("nix/pins.json");
                let text = std::fs::read_to_string(&path)?;
                std::fs::write(&path, with_digests(&text, &updates)?)?;
                println!("{} digest(s) written to nix/pins.json", updates.len());
                Ok(())
            }
        }
    }
}

/// One third-party image and where its digest lives in pins.json.
pub struct Image<'a> {
    pub name: &'static str,
    pub reference: &'a str,
    pub digest: Option<&'a str>,
    section: &'static str,
    key: &'static str,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DigestStatus {
    Match,
    Drift,
    Missing,
}

pub fn compare(pinned: Option<&str>, found: &str) -> DigestStatus {
    match pinned {
        None => DigestStatus::Missing,
        Some(p) if p == found => DigestStatus::Match,
        Some(_) => DigestStatus::Drift,
    }
}

/// The digest of a manifest: sha256 over its raw bytes, as registries name it.
pub fn digest_of(raw: &[u8]) -> String {
    let hash = openssl::sha::sha256(raw);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// The registry's current digest for a tagged reference, with skopeo or else docker.
fn registry_digest(sh: &xshell::Shell, reference: &str) -> anyhow::Result<String> {
    use xshell::cmd;
    let transport = format!("docker://{reference}");
    let raw = cmd!(sh, "skopeo inspect --raw {transport}")
        .quiet()
        .ignore_stderr()
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| o.stdout)
        .or_else(|| {
            cmd!(sh, "docker buildx imagetools inspect --raw {reference}")
                .quiet()
                .ignore_stderr()
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| o.stdout)
        })
        .with_context(|| {
            format!("could not read the manifest of {reference}: pins verify/lock need skopeo (in `nix develop`) or docker, and a network")
        })?;
    Ok(digest_of(&raw))
}

/// pins.json with the given digests set, everything else (order included) unchanged.
pub fn with_digests(text: &str, updates: &[(&str, &str, String)]) -> anyhow::Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(text)?;
    for (section, key, digest) in updates {
        let slot = v
            .get_mut(*section)
            .and_then(|s| s.get_mut(*key))
            .with_context(|| format!("pins.json has no {section}.{key}"))?;
        *slot = serde_json::Value::String(digest.clone());
    }
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

/// The third-party images among the pins.
pub trait PinnedImages {
    /// Every third-party image: a name, the tagged reference and its digest when known.
    fn images(&self) -> Vec<Image<'_>>;
}

impl PinnedImages for Pins {
    fn images(&self) -> Vec<Image<'_>> {
        fn image<'a>(
            name: &'static str,
            reference: &'a str,
            digest: &'a Option<String>,
            section: &'static str,
            key: &'static str,
        ) -> Image<'a> {
            Image {
                name,
                reference,
                digest: digest.as_deref(),
                section,
                key,
            }
        }
        vec![
            image(
                "spire-server",
                &self.spire.server_image,
                &self.spire.server_digest,
                "spire",
                "server_digest",
            ),
            image(
                "spire-agent",
                &self.spire.agent_image,
                &self.spire.agent_digest,
                "spire",
                "agent_digest",
            ),
            image(
                "oidc-discovery-provider",
                &self.spire.oidc_image,
                &self.spire.oidc_digest,
                "spire",
                "oidc_digest",
            ),
            image(
                "openbao",
                &self.openbao.image,
                &self.openbao.digest,
                "openbao",
                "digest",
            ),
            image(
                "spiffe-csi-driver",
                &self.spiffe_csi_driver.image,
                &self.spiffe_csi_driver.digest,
                "spiffe_csi_driver",
                "digest",
            ),
            image(
                "csi-registrar",
                &self.spiffe_csi_driver.registrar_image,
                &self.spiffe_csi_driver.registrar_digest,
                "spiffe_csi_driver",
                "registrar_digest",
            ),
            image(
                "spiffe-helper",
                &self.spiffe_helper.image,
                &self.spiffe_helper.digest,
                "spiffe_helper",
                "digest",
            ),
            image(
                "envoy",
                &self.envoy.image,
                &self.envoy.digest,
                "envoy",
                "digest",
            ),
            image(
                "postgres",
                &self.postgres.image,
                &self.postgres.digest,
                "postgres",
                "digest",
            ),
            image(
                "kind node",
                &self.kind.node_image,
                &self.kind.node_digest,
                "kind",
                "node_digest",
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_name_no_floating_tag() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        assert_eq!(pins.spire.version, "1.15.3");
        for i in pins.images() {
            let tag = i.reference.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty() && tag != "latest",
                "{}: {} has no fixed tag",
                i.name,
                i.reference
            );
            if let Some(d) = i.digest {
                assert!(d.starts_with("sha256:") && d.len() == 71, "{}: {d}", i.name);
            }
        }
    }

    /// One PostgreSQL release everywhere: the image tag, the npm build and the major agree.
    #[test]
    fn postgres_is_one_release_on_both_runtimes() {
        let pg = Pins::load(&crate::project_root()).unwrap().postgres;
        assert!(pg.version.starts_with(&format!("{}.", pg.major)), "{pg:?}");
        assert!(
            pg.major >= 17,
            "the login event trigger needs PostgreSQL 17"
        );
        assert_eq!(pg.image, format!("postgres:{}", pg.version));
        assert!(
            pg.npm_version.starts_with(&format!("{}.", pg.version)),
            "the npm build {} is not PostgreSQL {}",
            pg.npm_version,
            pg.version
        );
        assert!(
            pg.npm_integrity.starts_with("sha512-"),
            "{}",
            pg.npm_integrity
        );
    }

    #[test]
    fn digests_are_sha256_of_the_raw_manifest() {
        assert_eq!(
            digest_of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(compare(None, "sha256:1"), DigestStatus::Missing);
        assert_eq!(compare(Some("sha256:1"), "sha256:1"), DigestStatus::Match);
        assert_eq!(compare(Some("sha256:1"), "sha256:2"), DigestStatus::Drift);
    }

    #[test]
    fn lock_fills_digests_and_keeps_everything_else() {
        let text = std::fs::read_to_string(crate::project_root().join("nix/pins.json")).unwrap();
        let new = "sha256:".to_owned() + &"a".repeat(64);
        let out = with_digests(&text, &[("envoy", "digest", new.clone())]).unwrap();
        let before: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut after: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(after["envoy"]["digest"], new.as_str());
        after["envoy"]["digest"] = before["envoy"]["digest"].clone();
        assert_eq!(after, before);
        // Key order is kept, so a lock is a one-line diff.
        let keys = |t: &str| -> Vec<String> {
            t.lines()
                .filter_map(|l| l.trim().split('"').nth(1).map(str::to_owned))
                .collect()
        };
        assert_eq!(keys(&text), keys(&out));
        assert!(with_digests(&text, &[("nope", "digest", new)]).is_err());
    }
}
