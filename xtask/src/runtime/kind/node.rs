//! The kind node image, built offline (`kind build node-image` pulls its base and fetches images
//! from registries even when they exist locally): the Debian node root filesystem, kind's own
//! node files taken from kind's module at the pinned version, the Kubernetes node programs of
//! the pinned release, and the images kubeadm and kind's storage add-on need, imported into the
//! node's containerd so that nothing is pulled when a cluster starts. Its label holds the digest
//! of all of that: it is rebuilt only when a pin or an input changes.

use std::path::Path;

use anyhow::{Context, ensure};
use xshell::{Shell, cmd};

use super::images::{self, ImageSpec};
use crate::deps::OfflineKind;
use crate::pins::Pins;

const BUILD_CONTAINER: &str = "spire-lab-node-build";

/// kind's storage add-on (`/kind/manifests/default-storage.yaml`, applied by `kind create
/// cluster`): the local-path provisioner, making each PersistentVolume a directory of the node
/// that runs its pod. `{provisioner}` and `{helper}` are the images.
const STORAGE: &str = r#"# The default StorageClass of the lab's offline kind node: the local-path provisioner.
apiVersion: v1
kind: Namespace
metadata:
  name: local-path-storage
---
apiVersion: v1
kind: ServiceAccount
metadata:
  # The name the provisioner gives its helper pods.
  name: local-path-provisioner-service-account
  namespace: local-path-storage
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: local-path-provisioner
rules:
- apiGroups: [""]
  resources: ["nodes", "persistentvolumeclaims", "configmaps", "pods", "pods/log"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["persistentvolumes"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["storage.k8s.io"]
  resources: ["storageclasses"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: local-path-provisioner
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: local-path-provisioner
subjects:
- kind: ServiceAccount
  name: local-path-provisioner-service-account
  namespace: local-path-storage
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: local-path-provisioner
  namespace: local-path-storage
rules:
# Its helper pods create and remove the volumes' directories.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: local-path-provisioner
  namespace: local-path-storage
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: local-path-provisioner
subjects:
- kind: ServiceAccount
  name: local-path-provisioner-service-account
  namespace: local-path-storage
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-path-config
  namespace: local-path-storage
data:
  config.json: |-
    {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["/var/local-path-provisioner"]}]}
  setup: |-
    #!/bin/sh
    set -eu
    mkdir -m 0777 -p "$VOL_DIR"
  teardown: |-
    #!/bin/sh
    set -eu
    rm -rf "$VOL_DIR"
  helperPod.yaml: |-
    apiVersion: v1
    kind: Pod
    metadata:
      name: helper-pod
    spec:
      priorityClassName: system-node-critical
      tolerations:
      - key: node.kubernetes.io/disk-pressure
        operator: Exists
        effect: NoSchedule
      containers:
      - name: helper-pod
        image: {helper}
        imagePullPolicy: IfNotPresent
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: local-path-provisioner
  namespace: local-path-storage
spec:
  replicas: 1
  selector:
    matchLabels:
      app: local-path-provisioner
  template:
    metadata:
      labels:
        app: local-path-provisioner
    spec:
      serviceAccountName: local-path-provisioner-service-account
      tolerations:
      - key: node-role.kubernetes.io/control-plane
        operator: Exists
        effect: NoSchedule
      containers:
      - name: local-path-provisioner
        image: {provisioner}
        imagePullPolicy: IfNotPresent
        command: ["local-path-provisioner", "--debug", "start", "--helper-image", "{helper}", "--config", "/etc/config/config.json"]
        env:
        - name: POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: CONFIG_MOUNT_PATH
          value: /etc/config/
        volumeMounts:
        - name: config
          mountPath: /etc/config/
      volumes:
      - name: config
        configMap:
          name: local-path-config
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: rancher.io/local-path
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Delete
"#;

/// What the build container runs once the files are in: kind's service setup, containerd's
/// configuration for this node (the sandbox image kubeadm uses; oom_score_adj restricted, as
/// sandboxes without every capability need), the CNI plugins where containerd looks.
const SETUP: &str = r#"set -eu
chmod 0755 /usr/local/bin/entrypoint /usr/local/bin/clean-install /kind/bin/*.sh
ln -sf /usr/bin/containerd /usr/local/bin/containerd
mkdir -p /opt/cni/bin /etc/kubernetes/manifests /kind/manifests
for p in ptp host-local loopback portmap; do cp "/usr/lib/cni/$p" /opt/cni/bin/; done
find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
  /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
  /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> /etc/systemd/journald.conf
systemctl enable kubelet.service containerd.service undo-mount-hacks.service
systemctl mask systemd-binfmt.service
sed -i -e "s|sandbox_image = .*|sandbox_image = \"$PAUSE\"|" \
  -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" /etc/containerd/config.toml
ctr oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
"#;

/// Builds the node image `pins.kind_offline.node_image` unless it is up to date.
pub fn build(
    sh: &Shell,
    off: &OfflineKind,
    pins: &Pins,
    base: &str,
    baked: &[ImageSpec],
    pause: &str,
) -> anyhow::Result<()> {
    let name = &pins.kind_offline.node_image;
    let rootfs_image = format!(
        "spire-lab/kind-node-rootfs:{}",
        pins.kind_offline.debian_suite
    );
    images::import_rootfs(sh, &off.node_rootfs, &rootfs_image)?;
    let programs = ["kubelet", "kubeadm", "kubectl"].map(|p| off.kube.join(p));
    let mut stamp = vec![
        rootfs_image.clone(),
        pause.to_owned(),
        STORAGE.into(),
        SETUP.into(),
        image_id(sh, &rootfs_image)?,
    ];
    for p in programs.iter().chain([&off.crictl]) {
        stamp.push(format!("{:?}", std::fs::metadata(p)?.modified()?));
    }
    for spec in baked {
        stamp.push(image_id(sh, &spec.name)?);
    }
    let inputs: String = openssl::sha::sha256(stamp.join("\n").as_bytes())[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let format = "{{ index .Config.Labels \"spire-lab.inputs\" }}";
    let current = cmd!(sh, "docker image inspect --format {format} {name}")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_default();
    if current.trim() == inputs {
        println!("  ok  {name} (up to date)");
        return Ok(());
    }
    println!("building the kind node image {name} (no registry; a minute or two)…");
    let started = std::time::Instant::now();
    let _ = cmd!(sh, "docker rm -f {BUILD_CONTAINER}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    cmd!(
        sh,
        "docker run -d --name {BUILD_CONTAINER} --network=none --security-opt seccomp=unconfined --entrypoint=sleep {rootfs_image} infinity"
    )
    .quiet()
    .ignore_stdout()
    .run()
    .context("start the node image's build container")?;
    let provisioner = pins
        .kind_offline
        .local_path_provisioner
        .image
        .clone()
        .context("nix/pins.json names no local-path-provisioner image")?;
    let node = Node {
        programs: &programs,
        base,
        baked,
        pause,
        provisioner: &provisioner,
        version: format!("v{}", pins.kind.kubernetes_openapi),
    };
    let result = assemble(sh, off, &node, &inputs, name);
    if result.is_ok() {
        println!(
            "  ok  {name} built ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let _ = cmd!(sh, "docker rm -f {BUILD_CONTAINER}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run();
    result
}

fn image_id(sh: &Shell, image: &str) -> anyhow::Result<String> {
    let format = "{{.Id}}";
    cmd!(sh, "docker image inspect --format {format} {image}")
        .quiet()
        .read()
        .with_context(|| format!("{image} is not built"))
}

/// What goes into the node image beside its root filesystem.
struct Node<'a> {
    /// kubelet, kubeadm, kubectl.
    programs: &'a [std::path::PathBuf; 3],
    /// The components' base image (the storage helper's too).
    base: &'a str,
    /// Images imported into the node's containerd.
    baked: &'a [ImageSpec],
    pause: &'a str,
    provisioner: &'a str,
    /// The Kubernetes version kind reads from `/kind/version`.
    version: String,
}

fn assemble(
    sh: &Shell,
    off: &OfflineKind,
    node: &Node,
    inputs: &str,
    name: &str,
) -> anyhow::Result<()> {
    let into = |src: &Path, dest: &str| -> anyhow::Result<()> {
        let target = format!("{BUILD_CONTAINER}:{dest}");
        cmd!(sh, "docker cp {src} {target}")
            .quiet()
            .run()
            .with_context(|| format!("copy {} into the node image", src.display()))
    };
    // kind's node files: etc/, kind/, usr/local/bin/ of its module (read-only in Go's cache,
    // so copied through a scratch directory that docker cp can read as a tree).
    let files = tempfile::Builder::new()
        .prefix("spire-lab-kind-files-")
        .tempdir()?;
    let from = format!("{}/.", off.kind_base_files.display());
    let files_path = files.path();
    cmd!(sh, "cp -r {from} {files_path}").run()?;
    for dir in ["etc", "kind", "usr"] {
        into(&files_path.join(dir), "/")?;
    }
    for p in node.programs {
        into(p, "/usr/bin/")?;
    }
    into(&off.crictl, "/usr/local/bin/crictl")?;
    let version = &node.version;
    let exec = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("docker")
            .args(["exec", BUILD_CONTAINER])
            .args(args)
            .envs(sh_env(sh))
            .output()?;
        ensure!(
            out.status.success(),
            "in the node image's build: {}: {}",
            args.join(" "),
            crate::procs::printed(&out).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    exec(&[
        "sh",
        "-c",
        &format!("printf %s '{version}' > /kind/version"),
    ])?;
    exec(&["env", &format!("PAUSE={}", node.pause), "bash", "-c", SETUP])?;
    let storage = STORAGE
        .replace("{provisioner}", node.provisioner)
        .replace("{helper}", node.base);
    write_in(sh, "/kind/manifests/default-storage.yaml", &storage)?;
    exec(&[
        "sh",
        "-c",
        "nohup containerd > /var/log/containerd-build.log 2>&1 &",
    ])?;
    crate::procs::wait_for(std::time::Duration::from_secs(30), || {
        exec(&["ctr", "version"]).map(drop)
    })
    .context("containerd in the node image's build did not start")?;
    for image in node
        .baked
        .iter()
        .map(|s| s.name.as_str())
        .chain([node.base])
    {
        import_into_containerd(sh, image)?;
    }
    exec(&["pkill", "containerd"])?;
    let committed = format!("{name}-committed");
    cmd!(sh, "docker commit {BUILD_CONTAINER} {committed}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("commit the node image")?;
    // What kind's node image declares; `docker commit --change` of older engines takes no
    // STOPSIGNAL, a one-line build does.
    let context = tempfile::Builder::new()
        .prefix("spire-lab-node-image-")
        .tempdir()?;
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {committed}\nENV container=docker\nSTOPSIGNAL SIGRTMIN+3\nENTRYPOINT [ \"/usr/local/bin/entrypoint\", \"/sbin/init\" ]\nLABEL spire-lab.inputs={inputs}\n"
        ),
    )?;
    let dir = context.path();
    let _legacy = sh.push_env("DOCKER_BUILDKIT", "0");
    cmd!(sh, "docker build --network=none --quiet --tag {name} {dir}")
        .quiet()
        .ignore_stdout()
        .run()
        .context("the node image's entrypoint and stop signal")?;
    cmd!(sh, "docker rmi {committed}")
        .quiet()
        .ignore_stdout()
        .run()?;
    Ok(())
}

/// The environment xshell holds (DOCKER_HOST), for commands started without it.
fn sh_env(sh: &Shell) -> Vec<(String, String)> {
    sh.var("DOCKER_HOST")
        .ok()
        .map(|h| vec![("DOCKER_HOST".to_owned(), h)])
        .unwrap_or_default()
}

/// Writes `text` to `path` inside the build container.
fn write_in(sh: &Shell, path: &str, text: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("docker")
        .args([
            "exec",
            "-i",
            BUILD_CONTAINER,
            "sh",
            "-c",
            &format!("cat > '{path}'"),
        ])
        .envs(sh_env(sh))
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, text.as_bytes())?;
    ensure!(child.wait()?.success(), "write {path} in the node image");
    Ok(())
}

/// `docker save IMAGE | ctr images import` into the build container's containerd, unpacked
/// later by the node (as kind does: no snapshots in the image).
fn import_into_containerd(sh: &Shell, image: &str) -> anyhow::Result<()> {
    let mut save = std::process::Command::new("docker")
        .args(["save", image])
        .envs(sh_env(sh))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let import = std::process::Command::new("docker")
        .args([
            "exec",
            "-i",
            BUILD_CONTAINER,
            "ctr",
            "--namespace=k8s.io",
            "images",
            "import",
            "--label=io.cri-containerd.pinned=pinned",
            "--all-platforms",
            "--no-unpack",
            "--digests",
            "-",
        ])
        .envs(sh_env(sh))
        .stdin(save.stdout.take().context("docker save's output")?)
        .output()?;
    ensure!(
        save.wait()?.success() && import.status.success(),
        "import {image} into the node image: {}",
        crate::procs::printed(&import).trim()
    );
    Ok(())
}
