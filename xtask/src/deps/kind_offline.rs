//! What the kind runtime needs to run with no registry (`cargo xtask images --offline`, `up
//! --runtime kind --offline`): Debian's Docker engine and mmdebstrap; the Kubernetes node programs
//! of the pinned release from source (beside the API server of `xtask/kube-api`); third-party Go
//! programs from their own modules at pinned versions (crictl, CoreDNS, local-path-provisioner,
//! the SPIFFE CSI driver); the lab's own (`xtask/kind-node`); kind's node-image files from its
//! module; and two Debian root filesystems. All cached under the lab cache by version or by a
//! digest of their inputs.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use super::{Apt, RepoGo, cache_dir, check_go, is_root, kubernetes_ldflags, module_dir, on_path};
use crate::pins::{GoProgram, Pins};

/// Everything the offline images are made of, on this machine.
#[derive(Clone, Debug)]
pub struct OfflineKind {
    /// The Kubernetes programs of the pinned release: kubelet, kubeadm, kubectl, kube-apiserver,
    /// kube-controller-manager, kube-scheduler, kube-proxy, etcd (by name).
    pub kube: PathBuf,
    pub crictl: PathBuf,
    pub coredns: PathBuf,
    pub local_path_provisioner: PathBuf,
    pub spiffe_csi_driver: PathBuf,
    /// The lab's own: pause, capless-runc, csi-registrar.
    pub kind_node: PathBuf,
    /// kind's node-image files (`images/base/files` of its module).
    pub kind_base_files: PathBuf,
    /// Root filesystems: the components' base and the kind node's.
    pub base_rootfs: PathBuf,
    pub node_rootfs: PathBuf,
}

/// The node's programs, from the same module (and so the same cache directory) as the API server.
const KUBE_NODE: RepoGo = RepoGo {
    name: "kube-api",
    programs: &[
        ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
        ("k8s.io/kubernetes/cmd/kubeadm", "kubeadm"),
        (
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "kube-controller-manager",
        ),
        ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
        ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
    ],
    static_only: false,
};

const KIND_NODE: RepoGo = RepoGo {
    name: "kind-node",
    programs: &[
        ("./pause", "pause"),
        ("./capless-runc", "capless-runc"),
        ("./csi-registrar", "csi-registrar"),
    ],
    static_only: true,
};

const FIX: &str = "cargo xtask deps --kind-offline";

/// A root filesystem made by mmdebstrap from the Debian mirror.
struct Rootfs {
    name: &'static str,
    packages: &'static [&'static str],
    /// mmdebstrap hooks: (option, shell command on the root in "$1").
    hooks: &'static [(&'static str, &'static str)],
}

/// The components' base: what the lab's images need (TLS; PostgreSQL's client programs, psql
/// and pg_isready, and the official image's postgres user, uid 999; the server itself is the
/// pinned npm build the local runtime runs) and kube-proxy's packet filters. One base keeps the
/// images' shared layer loaded once per node.
const BASE: Rootfs = Rootfs {
    name: "base",
    packages: &[
        "ca-certificates",
        "libssl3",
        "postgresql-client",
        "iptables",
        "nftables",
        "conntrack",
    ],
    hooks: &[(
        "--essential-hook",
        "echo 'postgres:x:999:999:PostgreSQL administrator:/var/lib/postgresql:/bin/bash' >> \"$1/etc/passwd\" && echo 'postgres:x:999:' >> \"$1/etc/group\" && echo 'postgres:*:20000:0:99999:7:::' >> \"$1/etc/shadow\"",
    )],
};

/// A kind node: systemd, containerd, runc, the packet filters and the CNI plugins, with what
/// kind's own node image has beside them.
const NODE: Rootfs = Rootfs {
    name: "node",
    packages: &[
        "systemd",
        "systemd-sysv",
        "dbus",
        "conntrack",
        "iptables",
        "nftables",
        "iproute2",
        "ethtool",
        "util-linux",
        "mount",
        "kmod",
        "libseccomp2",
        "pigz",
        "bash",
        "ca-certificates",
        "procps",
        "jq",
        "containerd",
        "runc",
        "containernetworking-plugins",
    ],
    hooks: &[],
};

/// Documentation and translations are left out of the root filesystems.
const EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
];

/// The Debian mirror the root filesystems come from (`$LAB_DEBIAN_MIRROR`, for a local mirror).
fn mirror() -> String {
    std::env::var("LAB_DEBIAN_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into())
}

impl Rootfs {
    fn path(&self, suite: &str) -> PathBuf {
        let mut inputs = vec![suite.as_bytes().to_vec()];
        inputs.extend(self.packages.iter().map(|p| p.as_bytes().to_vec()));
        inputs.extend(
            self.hooks
                .iter()
                .map(|(o, h)| format!("{o} {h}").into_bytes()),
        );
        inputs.extend(EXCLUDES.iter().map(|e| e.as_bytes().to_vec()));
        let digest = openssl::sha::sha256(&inputs.concat());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        cache_dir().join(format!("rootfs/{}-{suite}-{hex}.tar", self.name))
    }

    fn ensure(&self, sh: &Shell, suite: &str) -> anyhow::Result<PathBuf> {
        let out = self.path(suite);
        if out.is_file() {
            return Ok(out);
        }
        println!(
            "making the {} root filesystem (Debian {suite}, mmdebstrap; a minute or two)…",
            self.name
        );
        std::fs::create_dir_all(out.parent().unwrap())?;
        let partial = out.with_extension("partial.tar");
        let include = format!("--include={}", self.packages.join(","));
        let mut hooks = Vec::new();
        for (option, hook) in self.hooks {
            hooks.push(format!("{option}={hook}"));
        }
        for e in EXCLUDES {
            hooks.push(format!("--dpkgopt={e}"));
        }
        let mirror = mirror();
        cmd!(
            sh,
            "mmdebstrap --quiet --variant=minbase {include} {hooks...} {suite} {partial} {mirror}"
        )
        .run()
        .with_context(|| format!("mmdebstrap the {} root filesystem", self.name))?;
        std::fs::rename(&partial, &out)?;
        Ok(out)
    }
}

fn go_program_path(version: &str, binary: &str) -> PathBuf {
    cache_dir().join(format!("{binary}-{version}/{binary}"))
}

/// Builds a third-party Go program in its own module directory (its own go.sum verifies its
/// dependencies); a pinned `sum` verifies the module itself where the checksum database cannot.
fn ensure_go_program(
    sh: &Shell,
    p: &GoProgram,
    version: &str,
    binary: &str,
) -> anyhow::Result<PathBuf> {
    let out = go_program_path(version, binary);
    if out.is_file() {
        return Ok(out);
    }
    println!("building {binary} {version} ({}) with Go…", p.module);
    let spec = format!("{}@v{version}", p.module);
    let _nosum = p.sum.as_ref().map(|_| sh.push_env("GONOSUMDB", &p.module));
    let json = cmd!(sh, "go mod download -json {spec}")
        .ignore_status()
        .quiet()
        .read()?;
    let v: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("go mod download {spec}: {json}"))?;
    if let Some(e) = v["Error"].as_str() {
        bail!("go mod download {spec}: {e}");
    }
    if let Some(want) = &p.sum {
        let got = v["Sum"].as_str().unwrap_or_default();
        ensure!(
            got == want,
            "{spec} has the hash {got}, not the {want} pinned in nix/pins.json: the module proxy served something else"
        );
    }
    let dir = PathBuf::from(v["Dir"].as_str().context("go mod download gave no Dir")?);
    std::fs::create_dir_all(out.parent().unwrap())?;
    let partial = out.with_extension("partial");
    let _dir = sh.push_dir(&dir);
    let _cgo = sh.push_env("CGO_ENABLED", "0");
    // A module archive keeps no vendored code: its go.sum verifies the dependencies instead.
    let _mod = sh.push_env("GOFLAGS", "-mod=mod");
    let package = &p.package;
    let ldflags = "-s -w";
    cmd!(
        sh,
        "go build -trimpath -ldflags {ldflags} -o {partial} {package}"
    )
    .run()
    .with_context(|| format!("build {binary}"))?;
    std::fs::rename(&partial, &out)?;
    Ok(out)
}

fn version_of<'a>(p: &'a GoProgram, or: &'a str) -> &'a str {
    p.version.as_deref().unwrap_or(or)
}

/// Finds everything without building anything; a missing piece names the command that makes it.
pub fn find_kind_offline(pins: &Pins) -> anyhow::Result<OfflineKind> {
    let o = &pins.kind_offline;
    let csi_version = &pins.spiffe_csi_driver.version;
    let program = |_: &GoProgram, version: &str, binary: &str| -> anyhow::Result<PathBuf> {
        let path = go_program_path(version, binary);
        ensure!(path.is_file(), "{binary} is not built: run `{FIX}`");
        Ok(path)
    };
    let rootfs = |r: &Rootfs| -> anyhow::Result<PathBuf> {
        let path = r.path(&o.debian_suite);
        ensure!(
            path.is_file(),
            "the {} root filesystem is not made: run `{FIX}`",
            r.name
        );
        Ok(path)
    };
    for tool in ["dockerd", "mmdebstrap"] {
        ensure!(
            on_path(tool).is_some() || Path::new("/usr/sbin").join(tool).is_file(),
            "{tool} is not installed: run `{FIX}` (Debian: docker.io and mmdebstrap)"
        );
    }
    let kube = KUBE_NODE.find_with(FIX)?;
    super::KUBE_API.find_with(FIX)?;
    let kind_base_files = kind_module_dir(pins)?.join("images/base/files");
    Ok(OfflineKind {
        kube,
        crictl: program(&o.crictl, version_of(&o.crictl, ""), "crictl")?,
        coredns: program(&o.coredns, version_of(&o.coredns, ""), "coredns")?,
        local_path_provisioner: program(
            &o.local_path_provisioner,
            version_of(&o.local_path_provisioner, ""),
            "local-path-provisioner",
        )?,
        spiffe_csi_driver: program(
            &o.spiffe_csi_driver,
            version_of(&o.spiffe_csi_driver, csi_version),
            "spiffe-csi-driver",
        )?,
        kind_node: KIND_NODE.find_with(FIX)?,
        kind_base_files,
        base_rootfs: rootfs(&BASE)?,
        node_rootfs: rootfs(&NODE)?,
    })
}

/// kind's module at the pinned version, already in Go's module cache (kind is built from it).
fn kind_module_dir(pins: &Pins) -> anyhow::Result<PathBuf> {
    let gomodcache = std::process::Command::new("go")
        .args(["env", "GOMODCACHE"])
        .output()
        .context("go env GOMODCACHE")?;
    let dir = PathBuf::from(String::from_utf8_lossy(&gomodcache.stdout).trim())
        .join(format!("sigs.k8s.io/kind@v{}", pins.kind.version));
    ensure!(
        dir.join("images/base/files").is_dir(),
        "kind {}'s module is not in Go's module cache: run `{FIX}`",
        pins.kind.version
    );
    Ok(dir)
}

/// Installs and builds everything the offline kind path needs (minutes the first time, seconds
/// after); then finds it.
pub fn ensure_kind_offline(sh: &Shell, pins: &Pins) -> anyhow::Result<OfflineKind> {
    let o = &pins.kind_offline;
    check_go(sh, &pins.spire.go_min)?;
    if on_path("dockerd").is_none() || on_path("mmdebstrap").is_none() {
        let mut apt = Apt::default();
        apt.install_without_starting(
            sh,
            &["docker.io", "mmdebstrap"],
            "a Docker engine and mmdebstrap (the offline kind path)",
        )?;
    }
    println!("  ok  dockerd, mmdebstrap");
    // The node's programs first: the API server's are also built by the tests' deps, which
    // may be doing so at this moment.
    KUBE_NODE.ensure(sh, &format!("-s -w {}", kubernetes_ldflags(pins)))?;
    println!(
        "  ok  Kubernetes {} node programs (built from source)",
        pins.kind.kubernetes_openapi
    );
    ensure_go_program(sh, &o.crictl, version_of(&o.crictl, ""), "crictl")?;
    ensure_go_program(sh, &o.coredns, version_of(&o.coredns, ""), "coredns")?;
    ensure_go_program(
        sh,
        &o.local_path_provisioner,
        version_of(&o.local_path_provisioner, ""),
        "local-path-provisioner",
    )?;
    ensure_go_program(
        sh,
        &o.spiffe_csi_driver,
        version_of(&o.spiffe_csi_driver, &pins.spiffe_csi_driver.version),
        "spiffe-csi-driver",
    )?;
    KIND_NODE.ensure(sh, "-s -w")?;
    println!("  ok  crictl, CoreDNS, local-path-provisioner, SPIFFE CSI driver, xtask/kind-node");
    super::KUBE_API.ensure(sh, &kubernetes_ldflags(pins))?;
    module_dir(sh, "sigs.k8s.io/kind", &pins.kind.version)?;
    ensure!(
        is_root(),
        "making root filesystems with mmdebstrap needs root here (or mmdebstrap's unshare mode)"
    );
    BASE.ensure(sh, &o.debian_suite)?;
    NODE.ensure(sh, &o.debian_suite)?;
    println!("  ok  Debian {} root filesystems", o.debian_suite);
    find_kind_offline(pins)
}
