//! The kind runtime, kept thin: a plan of commands (kind, docker, kubectl, nix) built from the
//! pins and `manifests/`, printed by `cargo xtask up --runtime kind --dry-run` and run step by
//! step otherwise. It cannot run on machines without a Docker engine (CI included); there the
//! plan, the manifests and SPIRE's Kubernetes side are checked without a cluster (`check`).
//! `lab` is the scenarios' handle on the lab once it runs on kind.

use std::fmt;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::pins::Pins;

mod check;
mod lab;

pub use check::{check_against_apiserver, check_kind_commands, check_registration_with};
pub use lab::KindLab;

pub const NAMESPACE: &str = "demo";
const CONTEXT_PREFIX: &str = "kind-";
/// Every agent of the cluster gets this alias; workload entries hang below it.
const CLUSTER_ALIAS: &str = "spiffe://example.org/k8s-cluster/spire-demo";

/// A registration entry on Kubernetes: the same SPIFFE IDs as the local runtime, k8s selectors.
#[derive(Clone, Debug)]
pub struct KindEntry {
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    pub dns: Option<&'static str>,
}

/// `spiffe://example.org/ns/{namespace}/sa/{service account}` for the three workloads.
pub fn registrations() -> Vec<KindEntry> {
    [
        ("frontend", None),
        ("backend", Some("backend")),
        ("postgres", Some("postgres")),
    ]
    .into_iter()
    .map(|(sa, dns)| KindEntry::of_account(sa, dns))
    .collect()
}

impl KindEntry {
    /// The entry of a service account in the demo namespace.
    pub fn of_account(sa: &str, dns: Option<&'static str>) -> KindEntry {
        KindEntry {
            spiffe_id: crate::local::workload_id(sa),
            selectors: vec![format!("k8s:ns:{NAMESPACE}"), format!("k8s:sa:{sa}")],
            dns,
        }
    }

    /// What `spire-server entry create` / `entry update` are told about it: below the
    /// cluster's alias, its SPIFFE ID, selectors and DNS name.
    fn args(&self) -> Vec<&str> {
        let mut args = vec!["-parentID", CLUSTER_ALIAS, "-spiffeID", &self.spiffe_id];
        for s in &self.selectors {
            args.extend(["-selector", s]);
        }
        if let Some(d) = self.dns {
            args.extend(["-dns", d]);
        }
        args
    }
}

/// One step of the plan: what it does, and the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub argv: Vec<String>,
    /// Run only when the cluster does not exist yet.
    pub only_if_new_cluster: bool,
    /// Failure messages that mean the step was done by an earlier `up`.
    pub already_done: &'static [&'static str],
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self
            .argv
            .iter()
            .map(|a| {
                if a.contains(' ') || a.is_empty() {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect();
        write!(f, "{}", quoted.join(" "))
    }
}

fn step(what: &str, argv: &[&str]) -> Step {
    Step {
        what: what.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        only_if_new_cluster: false,
        already_done: &[],
    }
}

/// How the services' images are built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageBuild {
    /// The flake's `dockerTools.streamLayeredImage` images.
    Nix,
    /// `manifests/images/Dockerfile`, built inside Docker.
    Dockerfile,
}

/// The plan's own step that writes the registry overlay (not a command).
const WRITE_OVERLAY: &str = "write-registry-overlay";
/// Where `up --context … --registry …` keeps its overlay of `manifests/` (not committed).
const REGISTRY_OVERLAY: &str = ".lab/registry-overlay";

/// The overlay of `manifests/` whose services' images come from `registry`.
fn registry_overlay(pins: &Pins, registry: &str) -> String {
    let mut yaml = String::from(
        "# Written by `cargo xtask up --context … --registry …`: the lab's manifests, with the\n# services' images from the registry they were pushed to.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ../../manifests\nimages:\n",
    );
    for image in [&pins.services.frontend_image, &pins.services.backend_image] {
        let name = image.rsplit_once(':').map_or(image.as_str(), |(n, _)| n);
        let remote = pushed(name, registry);
        yaml += &format!("- name: {name}\n  newName: {remote}\n");
    }
    yaml
}

/// The third-party images, saved for the nodes' platform (not committed).
const THIRD_PARTY_ARCHIVE: &str = ".lab/images/third-party.tar";

/// The kind nodes' platform: this machine's (Docker runs them natively).
fn node_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Where an image goes in a registry: `REGISTRY/name:tag`.
fn pushed(image: &str, registry: &str) -> String {
    format!("{registry}/{}", image.rsplit('/').next().unwrap_or(image))
}

/// Where the lab goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The kind cluster `spire-demo`, created when absent; images side-loaded with `kind load`.
    Kind,
    /// An existing cluster (a kubeconfig context); the services' images pushed to a registry.
    Existing { context: String, registry: String },
}

/// Everything `cargo xtask up` does, in order.
pub fn plan(pins: &Pins, build: ImageBuild, target: &Target) -> Vec<Step> {
    let cluster = pins.kind.cluster_name.as_str();
    let context = match target {
        Target::Kind => format!("{CONTEXT_PREFIX}{cluster}"),
        Target::Existing { context, .. } => context.clone(),
    };
    let kubectl = |what: &str, args: &[&str]| {
        let mut argv = vec!["kubectl", "--context", &context];
        argv.extend_from_slice(args);
        step(what, &argv)
    };
    let mut plan = Vec::new();
    if *target == Target::Kind {
        plan.push(Step {
            only_if_new_cluster: true,
            ..step(
                "create the kind cluster",
                &[
                    "kind",
                    "create",
                    "cluster",
                    "--name",
                    cluster,
                    "--config",
                    "manifests/kind/cluster.yaml",
                    "--wait",
                    "120s",
                ],
            )
        });
    }
    let services = [
        ("frontend", &pins.services.frontend_image),
        ("backend", &pins.services.backend_image),
    ];
    for (name, image) in services {
        plan.push(match build {
            ImageBuild::Nix => step(
                &format!("build {image} with Nix and load it into docker"),
                &["nix-image-load", &format!(".#{name}-image"), image],
            ),
            ImageBuild::Dockerfile => step(
                &format!("build {image} with docker (no Nix here)"),
                &[
                    "docker",
                    "build",
                    "--target",
                    name,
                    "-t",
                    image,
                    "-f",
                    "manifests/images/Dockerfile",
                    ".",
                ],
            ),
        });
    }
    match target {
        Target::Kind => {
            let third: Vec<&str> = pins
                .images()
                .iter()
                .filter(|i| i.name != "kind node")
                .map(|i| i.reference)
                .collect();
            let platform = node_platform();
            for image in &third {
                plan.push(step(
                    &format!("pull {image}"),
                    &["docker", "pull", "--platform", &platform, image],
                ));
            }
            // One platform only, through an archive: `kind load docker-image` of a
            // multi-platform image fails with "content digest … not found" on Docker's
            // containerd image store (kind's documented workaround).
            plan.push(step(
                "a place for the image archive (not committed)",
                &["mkdir", "-p", ".lab/images"],
            ));
            let mut save = vec![
                "docker",
                "image",
                "save",
                "--platform",
                &platform,
                "-o",
                THIRD_PARTY_ARCHIVE,
            ];
            save.extend(&third);
            plan.push(step(
                &format!("save the third-party images for {platform}"),
                &save,
            ));
            plan.push(step(
                "load them into the cluster's nodes",
                &[
                    "kind",
                    "load",
                    "image-archive",
                    "--name",
                    cluster,
                    THIRD_PARTY_ARCHIVE,
                ],
            ));
            plan.push(step(
                "load the services' images (built for this machine only)",
                &[
                    "kind",
                    "load",
                    "docker-image",
                    "--name",
                    cluster,
                    &pins.services.frontend_image,
                    &pins.services.backend_image,
                ],
            ));
        }
        Target::Existing { registry, .. } => {
            for (_, image) in services {
                let remote = pushed(image, registry);
                plan.push(step(
                    &format!("tag {image} for {registry}"),
                    &["docker", "tag", image, &remote],
                ));
                plan.push(step(
                    &format!("push {remote}"),
                    &["docker", "push", &remote],
                ));
            }
        }
    }
    plan.push(kubectl(
        "namespaces first (the Secret below lives in demo)",
        &["apply", "-f", "manifests/namespaces.yaml"],
    ));
    plan.push(Step {
        already_done: &["already exists"],
        ..kubectl(
            "PostgreSQL's superuser password: random, never in the repository, never used by pg_hba.conf",
            &["create", "secret", "generic", "postgres-superuser", "-n", NAMESPACE, "--from-literal=password=<random>"],
        )
    });
    match target {
        Target::Kind => plan.push(kubectl(
            "apply the manifests",
            &["apply", "-k", "manifests"],
        )),
        Target::Existing { registry, .. } => {
            // An overlay, not `kubectl set image` after the apply: every later `up` would set
            // the base's image back first, and roll the pods out twice.
            plan.push(step(
                &format!(
                    "a kustomize overlay of the manifests with the services' images from {registry}"
                ),
                &[WRITE_OVERLAY, REGISTRY_OVERLAY, registry],
            ));
            plan.push(kubectl(
                "apply the manifests, through that overlay",
                &["apply", "-k", REGISTRY_OVERLAY],
            ));
        }
    }
    for (kind, name) in [
        ("statefulset", "spire-server"),
        ("daemonset", "spire-agent"),
        ("daemonset", "spiffe-csi-driver"),
    ] {
        plan.push(kubectl(
            &format!("wait for {name}"),
            &[
                "-n",
                "spire-system",
                "rollout",
                "status",
                &format!("{kind}/{name}"),
                "--timeout=180s",
            ],
        ));
    }
    let server = server_cli(&["entry", "create"]);
    let mut alias = server.to_vec();
    alias.extend([
        "-node",
        "-spiffeID",
        CLUSTER_ALIAS,
        "-selector",
        "k8s_psat:cluster:spire-demo",
    ]);
    const REGISTERED: &[&str] = &["AlreadyExists", "similar entry already exists"];
    plan.push(Step {
        already_done: REGISTERED,
        ..kubectl("register the cluster's agents under one alias", &alias)
    });
    for e in registrations() {
        let mut args: Vec<&str> = server.to_vec();
        args.extend(e.args());
        plan.push(Step {
            already_done: REGISTERED,
            ..kubectl(&format!("register {}", e.spiffe_id), &args)
        });
    }
    for (kind, name) in [
        ("statefulset", "postgres"),
        ("deployment", "backend"),
        ("deployment", "frontend"),
    ] {
        plan.push(kubectl(
            &format!("wait for {name}"),
            &[
                "-n",
                NAMESPACE,
                "rollout",
                "status",
                &format!("{kind}/{name}"),
                "--timeout=180s",
            ],
        ));
    }
    plan
}

/// `docker`, `kind` and `kubectl` answer; each missing one is named with how to get it.
fn prerequisites(sh: &Shell, pins: &Pins, target: &Target) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if cmd!(sh, "docker info")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        missing.push("a running Docker engine (`docker info` fails)".to_owned());
    } else if *target == Target::Kind {
        // `docker image save --platform` (the image archive step) came with Docker 28.
        let format = "{{.Server.Version}}";
        let version = cmd!(sh, "docker version --format {format}")
            .quiet()
            .read()
            .unwrap_or_default();
        let major: u32 = version
            .trim()
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 28 {
            missing.push(format!(
                "Docker Engine 28 or newer (found {:?}; `docker image save --platform` is needed)",
                version.trim()
            ));
        }
    }
    if *target == Target::Kind {
        match cmd!(sh, "kind version").quiet().read() {
            Ok(v) if v.contains(&format!("v{}", pins.kind.version)) => {}
            Ok(v) => println!(
                "note: kind {} is pinned, found {}",
                pins.kind.version,
                v.trim()
            ),
            Err(_) => missing.push(format!("kind {} (in `nix develop`)", pins.kind.version)),
        }
    }
    if cmd!(sh, "kubectl version --client")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_err()
    {
        missing.push("kubectl (in `nix develop`)".into());
    }
    if !missing.is_empty() {
        bail!(
            "the kind runtime needs: {}. Without them, run the same lab as processes: cargo xtask up --local",
            missing.join("; ")
        );
    }
    Ok(())
}

/// Runs the plan (or prints it with `dry_run`).
pub fn up(sh: &Shell, dry_run: bool, target: Target) -> anyhow::Result<()> {
    let pins = Pins::load(&crate::project_root())?;
    let build = if cmd!(sh, "nix --version")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .is_ok()
    {
        ImageBuild::Nix
    } else {
        println!("no Nix here: the services' images are built with manifests/images/Dockerfile");
        ImageBuild::Dockerfile
    };
    let plan = plan(&pins, build, &target);
    if dry_run {
        let on = match &target {
            Target::Kind => format!("the kind cluster {}", pins.kind.cluster_name),
            Target::Existing { context, .. } => format!("the cluster of context {context}"),
        };
        println!("`cargo xtask up` on {on} would run, in order (`xtask:` marks its own steps):");
        for (i, s) in plan.iter().enumerate() {
            let prompt = if [WRITE_OVERLAY, "nix-image-load"].contains(&s.argv[0].as_str()) {
                "xtask:"
            } else {
                "$"
            };
            println!("{:>3}. {}\n     {prompt} {s}", i + 1, s.what);
        }
        return Ok(());
    }
    prerequisites(sh, &pins, &target)?;
    let exists = cmd!(sh, "kind get clusters")
        .quiet()
        .read()
        .unwrap_or_default()
        .lines()
        .any(|l| l == pins.kind.cluster_name);
    for (i, s) in plan.iter().enumerate() {
        if s.only_if_new_cluster && exists {
            println!("[{:>2}/{}] {} (exists already)", i + 1, plan.len(), s.what);
            continue;
        }
        println!("[{:>2}/{}] {}", i + 1, plan.len(), s.what);
        run_step(sh, s, false).with_context(|| format!("step {}: {}\n  $ {s}", i + 1, s.what))?;
    }
    match &target {
        Target::Kind => println!(
            "\nThe lab is up on kind: open http://localhost:8080\nNext: cargo xtask status · cargo xtask scenario all --runtime kind · cargo xtask down"
        ),
        Target::Existing { context, .. } => println!(
            "\nThe lab is up in {context}: kubectl --context {context} -n {NAMESPACE} port-forward svc/frontend 8080:8080, then open http://localhost:8080"
        ),
    }
    Ok(())
}

/// Deletes the kind cluster.
pub fn down(sh: &Shell) -> anyhow::Result<()> {
    let pins = Pins::load(&crate::project_root())?;
    let name = &pins.kind.cluster_name;
    cmd!(sh, "kind delete cluster --name {name}")
        .run()
        .context("kind delete cluster")?;
    Ok(())
}

/// Where a component runs on kind: namespace, workload and container.
pub fn workload(c: crate::lab::Component) -> (&'static str, &'static str, &'static str) {
    use crate::lab::Component::*;
    match c {
        SpireServer => ("spire-system", "statefulset/spire-server", "spire-server"),
        // One DaemonSet: on kind the agents are per Kubernetes node, not per lab "node".
        Agent(_) => ("spire-system", "daemonset/spire-agent", "spire-agent"),
        HelperPostgres => (NAMESPACE, "statefulset/postgres", "spiffe-helper"),
        Postgres => (NAMESPACE, "statefulset/postgres", "postgres"),
        HelperBackend => (NAMESPACE, "deployment/backend", "spiffe-helper"),
        Backend => (NAMESPACE, "deployment/backend", "backend"),
        EnvoyBackend => (NAMESPACE, "deployment/backend", "envoy"),
        EnvoyFrontend => (NAMESPACE, "deployment/frontend", "envoy"),
        Frontend => (NAMESPACE, "deployment/frontend", "frontend"),
    }
}

fn context() -> anyhow::Result<String> {
    Ok(format!(
        "{CONTEXT_PREFIX}{}",
        Pins::load(&crate::project_root())?.kind.cluster_name
    ))
}

/// The pods of both namespaces, and where the UI is.
pub fn status(sh: &Shell) -> anyhow::Result<()> {
    let ctx = context()?;
    for ns in ["spire-system", NAMESPACE] {
        println!("── {ns}");
        cmd!(sh, "kubectl --context {ctx} -n {ns} get pods -o wide").run()?;
    }
    println!("\nUI: http://localhost:8080 (NodePort 30080)");
    Ok(())
}

/// One component's log: `kubectl logs` of its container.
pub fn logs(sh: &Shell, c: crate::lab::Component, lines: usize) -> anyhow::Result<()> {
    let ctx = context()?;
    let (ns, target, container) = workload(c);
    let tail = if lines == 0 {
        "-1".to_owned()
    } else {
        lines.to_string()
    };
    cmd!(
        sh,
        "kubectl --context {ctx} -n {ns} logs {target} -c {container} --tail {tail}"
    )
    .run()?;
    Ok(())
}

/// Runs one step; `quiet` keeps the command and its output off the terminal unless it fails.
fn run_step(sh: &Shell, s: &Step, quiet: bool) -> anyhow::Result<()> {
    let argv: Vec<String> = s
        .argv
        .iter()
        .map(|a| {
            if a == "--from-literal=password=<random>" {
                format!("--from-literal=password={}", random_password())
            } else {
                a.clone()
            }
        })
        .collect();
    if argv[0] == WRITE_OVERLAY {
        let pins = Pins::load(&crate::project_root())?;
        let dir = sh.current_dir().join(&argv[1]);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("kustomization.yaml"),
            registry_overlay(&pins, &argv[2]),
        )?;
        return Ok(());
    }
    if argv[0] == "nix-image-load" {
        // The flake's streamLayeredImage script writes an image archive to stdout: docker load it.
        let attr = &argv[1];
        let script = cmd!(sh, "nix build --no-link --print-out-paths {attr}").read()?;
        let mut stream = std::process::Command::new(script.trim())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let status = std::process::Command::new("docker")
            .arg("load")
            .stdin(stream.stdout.take().context("no stdout")?)
            .status()?;
        anyhow::ensure!(
            stream.wait()?.success() && status.success(),
            "loading {} failed",
            argv[2]
        );
        return Ok(());
    }
    if !s.already_done.is_empty() {
        let out = sh
            .cmd(&argv[0])
            .args(&argv[1..])
            .quiet()
            .ignore_status()
            .output()?;
        let text = crate::procs::printed(&out);
        anyhow::ensure!(
            out.status.success() || s.already_done.iter().any(|m| text.contains(m)),
            "{}",
            text.trim()
        );
        return Ok(());
    }
    if quiet {
        let out = sh
            .cmd(&argv[0])
            .args(&argv[1..])
            .quiet()
            .ignore_status()
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{}",
            crate::procs::printed(&out).trim()
        );
    } else {
        sh.cmd(&argv[0]).args(&argv[1..]).run()?;
    }
    Ok(())
}

fn random_password() -> String {
    let mut bytes = [0u8; 24];
    openssl::rand::rand_bytes(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `kubectl` arguments that run the SPIRE server's CLI inside its pod.
const SERVER_CLI: [&str; 8] = [
    "-n",
    "spire-system",
    "exec",
    "spire-server-0",
    "-c",
    "spire-server",
    "--",
    "/opt/spire/bin/spire-server",
];

/// `kubectl` arguments for `spire-server ARGS…` in its pod.
fn server_cli<'a>(args: &[&'a str]) -> Vec<&'a str> {
    SERVER_CLI
        .iter()
        .copied()
        .chain(args.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dry-run plan: cluster, images, namespaces and Secret before the manifests, the SPIRE
    /// rollouts before registration, registration before the workloads are awaited.
    #[test]
    fn up_dry_run_plan_is_complete_and_ordered() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let plan = plan(&pins, ImageBuild::Nix, &Target::Kind);
        let lines: Vec<String> = plan.iter().map(|s| s.to_string()).collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no step `{needle}` in:\n{}", lines.join("\n")))
        };
        assert!(plan[0].only_if_new_cluster);
        assert_eq!(
            lines[0],
            "kind create cluster --name spire-demo --config manifests/kind/cluster.yaml --wait 120s"
        );
        let load = at("kind load docker-image");
        for image in [&pins.services.frontend_image, &pins.services.backend_image] {
            assert!(
                lines[load].contains(image.as_str()),
                "{image} is not loaded"
            );
        }
        // Third-party images: pulled and saved for one platform, loaded from the archive.
        let save = at("docker image save --platform linux/");
        for image in [
            &pins.envoy.image,
            &pins.spire.server_image,
            &pins.spire.agent_image,
        ] {
            assert!(at("docker pull --platform linux/") < save);
            assert!(lines[save].contains(image.as_str()), "{image} is not saved");
        }
        assert!(!lines[save].contains("kindest/node"));
        assert!(at("mkdir -p .lab/images") < save);
        assert!(save < at("kind load image-archive --name spire-demo .lab/images/third-party.tar"));
        assert!(at("nix-image-load .#frontend-image") < load);
        assert!(
            at("apply -f manifests/namespaces.yaml")
                < at("create secret generic postgres-superuser")
        );
        assert!(at("create secret generic") < at("apply -k manifests"));
        assert!(at("rollout status statefulset/spire-server") < at("-node -spiffeID"));
        for e in registrations() {
            assert!(
                at(&format!("-spiffeID {}", e.spiffe_id))
                    < at("rollout status deployment/frontend")
            );
        }
        assert!(at("-spiffeID spiffe://example.org/ns/demo/sa/backend") > at("-node -spiffeID"));
        assert!(lines[at("sa/backend")].ends_with("-dns backend"));
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("password=") || l.contains("<random>")),
            "a secret in the plan"
        );
        assert!(
            lines
                .iter()
                .filter(|l| l.starts_with("kubectl"))
                .all(|l| l.starts_with("kubectl --context kind-spire-demo"))
        );

        // Without Nix, the same images come from the Dockerfile, whose bases are pinned.
        let docker = super::plan(&pins, ImageBuild::Dockerfile, &Target::Kind);
        let built: Vec<String> = docker
            .iter()
            .map(|s| s.to_string())
            .filter(|l| l.starts_with("docker build"))
            .collect();
        assert_eq!(built.len(), 2);
        assert!(built[0].contains(&format!("-t {}", pins.services.frontend_image)));
        let dockerfile =
            std::fs::read_to_string(crate::project_root().join("manifests/images/Dockerfile"))
                .unwrap();
        let froms: Vec<&str> = dockerfile
            .lines()
            .filter_map(|l| l.strip_prefix("FROM "))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert!(
            froms.contains(&pins.services.build_image.as_str())
                && froms.contains(&pins.services.runtime_image.as_str()),
            "{froms:?}"
        );
        assert_eq!(docker.len(), plan.len());

        // An existing cluster: no kind, the services pushed to the registry and set on the pods.
        let target = Target::Existing {
            context: "prod-eu".into(),
            registry: "registry.example.com/lab".into(),
        };
        let existing: Vec<String> = super::plan(&pins, ImageBuild::Nix, &target)
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(
            existing.iter().all(|l| !l.starts_with("kind ")),
            "{existing:?}"
        );
        assert!(
            existing.contains(&"docker push registry.example.com/lab/frontend:0.1.0".to_owned()),
            "{existing:?}"
        );
        assert!(
            existing
                .iter()
                .filter(|l| l.starts_with("kubectl"))
                .all(|l| l.starts_with("kubectl --context prod-eu"))
        );
        let overlay = existing
            .iter()
            .position(|l| {
                l == "write-registry-overlay .lab/registry-overlay registry.example.com/lab"
            })
            .unwrap();
        let apply = existing
            .iter()
            .position(|l| l.ends_with("apply -k .lab/registry-overlay"))
            .unwrap();
        assert!(overlay < apply);
        assert!(!existing.iter().any(|l| l.contains("apply -k manifests")));
        let yaml = registry_overlay(&pins, "registry.example.com/lab");
        assert!(
            yaml.contains(
                "- name: spire-lab/backend\n  newName: registry.example.com/lab/backend\n"
            ),
            "{yaml}"
        );
    }
}
