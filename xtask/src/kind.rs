//! The kind runtime, kept thin: a plan of commands (kind, docker, kubectl, nix) built from the
//! pins and `manifests/`, printed by `cargo xtask up --runtime kind --dry-run` and run step by
//! step otherwise. It cannot run on machines without a Docker engine (CI included), where the
//! plan and the manifests are checked statically instead.

use std::fmt;

use anyhow::{Context, bail};
use xshell::{Shell, cmd};

use crate::pins::Pins;

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
            for image in &third {
                plan.push(step(&format!("pull {image}"), &["docker", "pull", image]));
            }
            let mut load = vec![
                "kind",
                "load",
                "docker-image",
                "--name",
                cluster,
                &pins.services.frontend_image,
                &pins.services.backend_image,
            ];
            load.extend(third);
            plan.push(step("load every image into the cluster's nodes", &load));
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

/// The kind layer against a real kube-apiserver of the pinned release with no nodes
/// (`crate::apiserver`): the kubectl steps of both plans — `up` on kind and `up --context …
/// --registry …` — with warnings as errors, each run twice (a second `up` must succeed and
/// change no workload), then the scenarios' kubectl paths (the RBAC policy switch, the rogue pod
/// and PodSecurity admission, scaling down). Steps that need Docker or a running pod (`kind`,
/// `docker`, `exec`, `rollout status`) cannot run here and are left out.
pub fn check_against_apiserver(sh: &Shell, kube: &crate::deps::KubeTools) -> anyhow::Result<()> {
    use crate::lab::{Component, Lab, Policy};
    let root = crate::project_root();
    let pins = Pins::load(&root)?;
    let registry = "registry.example/spire-lab";
    let existing = "lab-existing-cluster";
    let api = crate::apiserver::ApiServer::start(&kube.kube_api, &[&context()?, existing])?;
    println!(
        "kube-apiserver {} with its etcd is up (no nodes)",
        pins.kind.kubernetes_openapi
    );
    // The plan's relative paths, from a scratch directory whose `manifests` is this one: the
    // registry overlay it writes stays out of the checkout's `.lab`.
    struct Scratch(std::path::PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let work = Scratch(std::env::temp_dir().join(format!("spire-lab-plan-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir_all(&work.0)?;
    std::os::unix::fs::symlink(root.join("manifests"), work.0.join("manifests"))?;
    let _dir = sh.push_dir(&work.0);
    let _env = sh.push_env("KUBECONFIG", &api.kubeconfig);
    let rendered = crate::kube::render(sh, &kube.kustomize)?;

    let get = |args: &[&str]| -> anyhow::Result<String> {
        let out = api.kubectl().current_dir(&root).args(args).output()?;
        anyhow::ensure!(out.status.success(), "{}", crate::procs::printed(&out));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let generations = || -> anyhow::Result<Vec<String>> {
        Ok(get(&[
            "get",
            "deployments,statefulsets,daemonsets",
            "--all-namespaces",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}={.metadata.generation} {end}",
        ])?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
    };
    let backend_image = || {
        get(&[
            "-n",
            NAMESPACE,
            "get",
            "deployment/backend",
            "-o",
            "jsonpath={.spec.template.spec.containers[?(@.name==\"backend\")].image}",
        ])
    };
    for (target, name, image) in [
        (Target::Kind, "`up`", pins.services.backend_image.clone()),
        (
            Target::Existing {
                context: existing.into(),
                registry: registry.into(),
            },
            "`up --context … --registry …`",
            pushed(&pins.services.backend_image, registry),
        ),
    ] {
        let steps: Vec<Step> = plan(&pins, ImageBuild::Nix, &target)
            .into_iter()
            .filter(|s| s.argv[0] == "kubectl" || s.argv[0] == WRITE_OVERLAY)
            .filter(|s| !s.argv.iter().any(|a| a == "exec" || a == "rollout"))
            .map(|mut s| {
                if s.argv[0] == "kubectl" {
                    s.argv[0] = api.kubectl.display().to_string();
                    s.argv.insert(1, "--warnings-as-errors".into());
                }
                s
            })
            .collect();
        let up = || -> anyhow::Result<()> {
            for s in &steps {
                run_step(sh, s, true).with_context(|| format!("{name}: {} ({s})", s.what))?;
            }
            Ok(())
        };
        up()?;
        let before = generations()?;
        anyhow::ensure!(
            before.len() == 6,
            "expected 6 workloads, the API server holds {before:?}"
        );
        let stored = get(&["get", "-k", "manifests", "-o", "name"])?
            .lines()
            .count();
        anyhow::ensure!(
            stored == rendered.len(),
            "the API server holds {stored} of the {} rendered objects",
            rendered.len()
        );
        let running = backend_image()?;
        anyhow::ensure!(
            running == image,
            "{name}: the backend runs {running:?}, not {image}"
        );
        up()?;
        let after = generations()?;
        anyhow::ensure!(
            after == before,
            "{name} a second time changed workloads: {before:?} → {after:?}"
        );
        println!(
            "{name}: its {} API steps pass with warnings as errors, all {stored} objects are stored (admitted and validated), the backend's image is {image}; run again, it changes no workload",
            steps.len()
        );
    }
    // Warnings do fail a step: PodSecurity only warns about a workload's pod template.
    let mut on_host = rendered
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "frontend")
        .context("no frontend Deployment")?
        .clone();
    on_host["spec"]["template"]["spec"]["hostNetwork"] = true.into();
    let mut apply = api
        .kubectl()
        .args([
            "--warnings-as-errors",
            "apply",
            "--dry-run=server",
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut apply.stdin.take().context("no stdin")?,
        on_host.to_string().as_bytes(),
    )?;
    let out = apply.wait_with_output()?;
    let said = crate::procs::printed(&out);
    anyhow::ensure!(
        !out.status.success() && said.contains("would violate PodSecurity"),
        "a frontend on the host network was not flagged: {said}"
    );
    let password = get(&[
        "-n",
        NAMESPACE,
        "get",
        "secret/postgres-superuser",
        "-o",
        "jsonpath={.data.password}",
    ])?;
    let password = openssl::base64::decode_block(password.trim())?;
    anyhow::ensure!(
        password.len() == 48 && password.iter().all(u8::is_ascii_hexdigit),
        "the PostgreSQL superuser password is not 24 random bytes in hex"
    );
    println!(
        "a Deployment whose pods PodSecurity would refuse fails its apply (warnings as errors); the PostgreSQL superuser password is 24 random bytes"
    );

    // RBAC, decided by the API server: what SPIRE's Kubernetes plugins call (k8s_psat: token
    // reviews, pods, nodes; k8sbundle: its ConfigMap; the agent's k8s attestor: the kubelet,
    // authorised as nodes/proxy) is granted, and nothing else to anyone in the lab.
    let can = |sa: &str, args: &[&str]| -> anyhow::Result<bool> {
        let out = api
            .kubectl()
            .args(["auth", "can-i"])
            .args(args)
            .args(["--as", &format!("system:serviceaccount:{sa}")])
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        anyhow::ensure!(
            said == "yes" || said == "no",
            "kubectl auth can-i: {}",
            crate::procs::printed(&out)
        );
        Ok(said == "yes")
    };
    let server = "spire-system:spire-server";
    let agent = "spire-system:spire-agent";
    let granted: &[(&str, &[&str])] = &[
        (server, &["create", "tokenreviews.authentication.k8s.io"]),
        (server, &["get", "pods", "-n", NAMESPACE]),
        (server, &["get", "nodes"]),
        (
            server,
            &["get", "configmaps/spire-bundle", "-n", "spire-system"],
        ),
        (
            server,
            &["patch", "configmaps/spire-bundle", "-n", "spire-system"],
        ),
        (agent, &["get", "nodes", "--subresource=proxy"]),
    ];
    let denied: &[(&str, &[&str])] = &[
        (
            server,
            &["patch", "configmaps/backend-rbac", "-n", NAMESPACE],
        ),
        (server, &["get", "secrets", "-n", NAMESPACE]),
        (server, &["list", "pods", "-n", NAMESPACE]),
        (agent, &["create", "tokenreviews.authentication.k8s.io"]),
        (agent, &["get", "secrets", "-n", "spire-system"]),
        ("demo:frontend", &["get", "pods", "-n", NAMESPACE]),
        ("demo:backend", &["get", "configmaps", "-n", NAMESPACE]),
        ("demo:postgres", &["get", "secrets", "-n", NAMESPACE]),
        ("demo:rogue", &["get", "pods", "-n", NAMESPACE]),
    ];
    for (sa, args) in granted {
        anyhow::ensure!(can(sa, args)?, "{sa} may not {}", args.join(" "));
    }
    for (sa, args) in denied {
        anyhow::ensure!(!can(sa, args)?, "{sa} may {}", args.join(" "));
    }
    println!(
        "RBAC: the {} calls SPIRE's Kubernetes plugins make are granted, {} others are refused",
        granted.len(),
        denied.len()
    );

    let mut lab = KindLab::attach(&api);
    for (policy, file) in [
        (Policy::Deny, "rbac-deny.yaml"),
        (Policy::AllowFrontend, "rbac.yaml"),
    ] {
        lab.set_policy(policy)?;
        let held = lab.run(&[
            "-n",
            NAMESPACE,
            "get",
            "configmap/backend-rbac",
            "-o",
            "jsonpath={.data.rbac\\.yaml}",
        ])?;
        let want = std::fs::read_to_string(root.join("manifests/backend/config").join(file))?;
        anyhow::ensure!(
            held == want,
            "backend-rbac does not hold {file} after the switch"
        );
    }
    println!("the rbac scenario's switch puts rbac-deny.yaml into backend-rbac and back");

    lab.apply_rogue()?;
    let (refusal, holds) = lab.rogue_state()?;
    anyhow::ensure!(
        refusal.is_none() && !holds,
        "the rogue pod should be admitted and waiting for a node"
    );
    let uid = lab.run(&[
        "-n",
        NAMESPACE,
        "get",
        "pod/rogue",
        "-o",
        "jsonpath={.metadata.uid}",
    ])?;
    let instance = lab.pod_instance(NAMESPACE, "rogue", "client");
    anyhow::ensure!(
        instance == Some(format!("{uid}/")),
        "a pod's instance reads {instance:?}, not {uid}/ (no container has run)"
    );
    let mut on_host = crate::kube::scenario_objects()?
        .into_iter()
        .find(|o| o["kind"] == "Pod")
        .context("no rogue pod")?;
    on_host["metadata"]["name"] = "rogue-on-host-network".into();
    on_host["spec"]["hostNetwork"] = true.into();
    match lab.apply_yaml(&on_host.to_string()) {
        Ok(out) => bail!("PodSecurity admitted a pod on the host network in demo: {out}"),
        Err(e) => anyhow::ensure!(
            e.to_string()
                .contains("violates PodSecurity \"restricted:latest\""),
            "refused for another reason: {e:#}"
        ),
    }
    lab.delete_rogue_pod()?;
    anyhow::ensure!(
        lab.run(&["-n", NAMESPACE, "get", "pods", "-o", "name"])?
            .trim()
            .is_empty(),
        "the rogue pod is still there"
    );
    println!(
        "the rogue pod is admitted under restricted PodSecurity and deleted; one on the host network is refused by the API server"
    );

    lab.stop(Component::Postgres)?;
    let replicas = lab.run(&[
        "-n",
        NAMESPACE,
        "get",
        "statefulset/postgres",
        "-o",
        "jsonpath={.spec.replicas}",
    ])?;
    anyhow::ensure!(
        replicas == "0",
        "postgres has {replicas} replicas after stop"
    );
    anyhow::ensure!(
        lab.instance(Component::Postgres).is_none(),
        "a stopped postgres has an instance"
    );
    println!("stopping PostgreSQL scales its StatefulSet to 0");
    check_attestation_against_apiserver(&api, &rendered)
}

/// SPIRE's Kubernetes side for real, beside the API server: the kind `server.conf` and
/// `agent.conf` (only addresses, paths and the way to the API server changed, see
/// `render::apiserver_spire_configs`) run as processes. The server's k8sbundle notifier writes
/// the trust bundle into the `spire-bundle` ConfigMap with the spire-server service account's
/// token; the agent starts from that bundle (what its ConfigMap mount gives it) and attests with
/// a pod-bound spire-agent token for the audience `spire-server`, which the server checks with
/// the TokenReview API and the pod and node it names. The plan's registration puts the agent
/// under the cluster's alias. A Node and the agent's Pod are created for it; nothing runs them.
fn check_attestation_against_apiserver(
    api: &crate::apiserver::ApiServer,
    rendered: &[serde_json::Value],
) -> anyhow::Result<()> {
    use serde_json::json;
    let root = crate::project_root();
    let pins = Pins::load(&root)?;
    let tools = crate::deps::find(&pins)?;
    let node = "spire-demo-worker";
    let pod_name = "spire-agent-attested";
    let kubectl = |args: &[&str]| -> anyhow::Result<String> {
        let out = api.kubectl().args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            crate::procs::printed(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let lab = KindLab::attach(api);
    lab.apply_yaml(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}).to_string(),
    )?;
    let agent = rendered
        .iter()
        .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == "spire-agent")
        .context("no spire-agent DaemonSet")?;
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": "spire-system",
            "labels": agent["spec"]["template"]["metadata"]["labels"],
        },
        "spec": agent["spec"]["template"]["spec"],
    });
    pod["spec"]["nodeName"] = node.into();
    lab.apply_yaml(&pod.to_string())
        .context("the agent's pod, from the DaemonSet's template")?;
    let node_uid = kubectl(&["get", "node", node, "-o", "jsonpath={.metadata.uid}"])?;
    let server_token = kubectl(&[
        "-n",
        "spire-system",
        "create",
        "token",
        "spire-server",
        "--duration",
        "1h",
    ])?;
    // What the agent's projected volume holds (its audience read from the DaemonSet), bound to
    // its pod; and the volume must sit where k8s_psat looks for it by default.
    let spec = &agent["spec"]["template"]["spec"];
    let projected = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|v| {
            let source = v["projected"]["sources"].as_array()?.iter().find_map(|s| {
                s["serviceAccountToken"]
                    .is_object()
                    .then(|| s["serviceAccountToken"].clone())
            })?;
            Some((v["name"].as_str()?.to_owned(), source))
        })
        .context("the agent has no projected service account token")?;
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == projected.0.as_str())
        .and_then(|m| m["mountPath"].as_str())
        .context("the agent does not mount its projected token")?;
    let token_at = format!(
        "{mount}/{}",
        projected.1["path"].as_str().unwrap_or_default()
    );
    anyhow::ensure!(
        token_at == "/var/run/secrets/tokens/spire-agent",
        "the agent's token is at {token_at}, not where k8s_psat reads it by default"
    );
    let audience = projected.1["audience"].as_str().context("no audience")?;
    let agent_token = kubectl(&[
        "-n",
        "spire-system",
        "create",
        "token",
        "spire-agent",
        "--audience",
        audience,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod_name,
        "--duration",
        "1h",
    ])?;

    struct Procs(Vec<std::process::Child>, std::path::PathBuf);
    impl Drop for Procs {
        fn drop(&mut self) {
            for c in self.0.iter_mut().rev() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let dir = std::env::temp_dir().join(format!("spire-lab-attest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?;
    let mut procs = Procs(Vec::new(), dir.clone());
    // And its service account's own token, which the kubelet would mount: the k8s workload
    // attestor loads it when it starts.
    let sa_token = kubectl(&[
        "-n",
        "spire-system",
        "create",
        "token",
        "spire-agent",
        "--duration",
        "1h",
    ])?;
    let (kubeconfig, psat, sa) = (
        dir.join("kubeconfig"),
        dir.join("psat"),
        dir.join("sa-token"),
    );
    crate::apiserver::write_private(
        &kubeconfig,
        api.kubeconfig_with_token(&server_token).as_bytes(),
    )?;
    crate::apiserver::write_private(&psat, agent_token.as_bytes())?;
    crate::apiserver::write_private(&sa, sa_token.as_bytes())?;
    let ports = (
        crate::apiserver::free_port()?,
        crate::apiserver::free_port()?,
        crate::apiserver::free_port()?,
    );
    for r in crate::render::apiserver_spire_configs(&dir, ports, &kubeconfig, &psat, &sa) {
        let src = std::fs::read_to_string(root.join("manifests").join(r.source))?;
        std::fs::write(dir.join(&r.target), crate::render::apply(&src, &r.edits)?)?;
    }
    let log = |name: &str| -> anyhow::Result<std::process::Stdio> {
        Ok(std::fs::File::create(dir.join(name))?.into())
    };
    let tail = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    let socket = dir.join("server.sock");
    let spire_server = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(&tools.spire_server)
            .args(&args[..2])
            .arg("-socketPath")
            .arg(&socket)
            .args(&args[2..])
            .output()?)
    };
    procs.0.push(
        std::process::Command::new(&tools.spire_server)
            .args(["run", "-config"])
            .arg(dir.join("server.conf"))
            .stdout(log("server.log")?)
            .stderr(log("server.log")?)
            .spawn()?,
    );
    let until = |what: &str,
                 limit: u64,
                 mut ok: Box<dyn FnMut() -> anyhow::Result<bool> + '_>|
     -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        while !ok()? {
            anyhow::ensure!(
                started.elapsed().as_secs() < limit,
                "{what} not within {limit} s\nserver log:\n{}\nagent log:\n{}",
                tail("server.log"),
                tail("agent.log")
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        Ok(())
    };
    until(
        "the SPIRE server healthy",
        30,
        Box::new(|| {
            Ok(std::process::Command::new(&tools.spire_server)
                .args(["healthcheck", "-socketPath"])
                .arg(&socket)
                .output()?
                .status
                .success())
        }),
    )?;

    // The notifier's ConfigMap holds the server's bundle: the agents' bootstrap on kind.
    let published = std::cell::RefCell::new(String::new());
    until(
        "the trust bundle in ConfigMap spire-bundle",
        30,
        Box::new(|| {
            let pem = kubectl(&[
                "-n",
                "spire-system",
                "get",
                "configmap/spire-bundle",
                "-o",
                "jsonpath={.data.bundle\\.crt}",
            ])?;
            let found = pem.contains("BEGIN CERTIFICATE");
            *published.borrow_mut() = pem;
            Ok(found)
        }),
    )?;
    let published = published.into_inner();
    let shown = spire_server(&["bundle", "show"])?;
    let der = |pem: &[u8]| -> anyhow::Result<Vec<Vec<u8>>> {
        let mut v: Vec<Vec<u8>> = openssl::x509::X509::stack_from_pem(pem)?
            .iter()
            .map(|c| c.to_der())
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    };
    anyhow::ensure!(
        der(published.as_bytes())? == der(&shown.stdout)?,
        "ConfigMap spire-bundle does not hold the server's bundle"
    );
    std::fs::write(dir.join("bundle.crt"), &published)?;
    println!(
        "k8sbundle: the SPIRE server (kind's server.conf) published its bundle into ConfigMap spire-bundle, as the spire-server service account"
    );

    check_registration_with(&tools.spire_server, &socket, true)?;
    procs.0.push(
        std::process::Command::new(&tools.spire_agent)
            .args(["run", "-config"])
            .arg(dir.join("agent.conf"))
            .env("MY_NODE_NAME", node)
            .stdout(log("agent.log")?)
            .stderr(log("agent.log")?)
            .spawn()?,
    );
    let agent_id = format!(
        "spiffe://example.org/spire/agent/k8s_psat/{}/{node_uid}",
        pins.kind.cluster_name
    );
    let selectors = std::cell::RefCell::new(Vec::<String>::new());
    until(
        &format!("agent {agent_id} attested"),
        30,
        Box::new(|| {
            let out = spire_server(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])?;
            if !out.status.success() {
                return Ok(false);
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let agent = if v["agents"].is_array() {
                v["agents"][0].clone()
            } else {
                v
            };
            *selectors.borrow_mut() = selector_strings(&agent["selectors"]);
            Ok(!selectors.borrow().is_empty())
        }),
    )?;
    let selectors = selectors.into_inner();

    for want in [
        format!("k8s_psat:cluster:{}", pins.kind.cluster_name),
        "k8s_psat:agent_ns:spire-system".to_owned(),
        "k8s_psat:agent_sa:spire-agent".to_owned(),
        format!("k8s_psat:agent_pod_name:{pod_name}"),
        format!("k8s_psat:agent_node_name:{node}"),
    ] {
        anyhow::ensure!(
            selectors.contains(&want),
            "the agent lacks the selector {want}: {selectors:?}"
        );
    }
    let alias = spire_server(&[
        "entry",
        "show",
        "-spiffeID",
        CLUSTER_ALIAS,
        "-output",
        "json",
    ])?;
    let alias: serde_json::Value = serde_json::from_slice(&alias.stdout).unwrap_or_default();
    let alias_selectors: Vec<String> = selector_strings(&alias["entries"][0]["selectors"]);
    anyhow::ensure!(
        !alias_selectors.is_empty() && alias_selectors.iter().all(|s| selectors.contains(s)),
        "the agent's selectors do not cover the alias entry's {alias_selectors:?}: the workloads would not reach it"
    );
    println!(
        "k8s_psat: the agent (kind's agent.conf) attested as {agent_id} with a pod-bound token the API server reviewed; its selectors cover the plan's alias entry ({}), under which the workloads are registered",
        alias_selectors.join(", ")
    );
    Ok(())
}

/// The plan's registration steps as a real SPIRE server of the pinned version takes them:
/// the `spire-server` arguments `up` runs through `kubectl exec`, given to `spire_server` for
/// the server at `socket` instead — twice, the second time refused with one of the messages the
/// step takes for "already done". The entries are deleted afterwards. Returns how many steps ran.
pub fn check_registration_with(
    spire_server: &std::path::Path,
    socket: &std::path::Path,
    keep: bool,
) -> anyhow::Result<usize> {
    let pins = Pins::load(&crate::project_root())?;
    let steps: Vec<Step> = plan(&pins, ImageBuild::Nix, &Target::Kind)
        .into_iter()
        .filter(|s| s.argv.windows(SERVER_CLI.len()).any(|w| w == SERVER_CLI))
        .collect();
    anyhow::ensure!(
        steps.len() == 1 + registrations().len(),
        "expected the alias and {} workload entries",
        registrations().len()
    );
    let server = |s: &Step| -> anyhow::Result<std::process::Output> {
        let at = s.argv.iter().position(|a| a == SERVER_CLI[7]).unwrap() + 1;
        let (verb, rest) = s.argv[at..].split_at(2);
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
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for id in v["entries"].as_array().into_iter().flatten() {
            let id = id["id"].as_str().unwrap_or_default();
            std::process::Command::new(spire_server)
                .args(["entry", "delete", "-socketPath"])
                .arg(socket)
                .args(["-entryID", id])
                .output()?;
        }
    }
    result?;
    Ok(steps.len())
}

/// SPIRE's JSON selectors (`[{"type": …, "value": …}]`) as `type:value`.
fn selector_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}:{}",
                s["type"].as_str().unwrap_or(""),
                s["value"].as_str().unwrap_or("")
            )
        })
        .collect()
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

/// Local ports where `kubectl port-forward` exposes what scenarios look at inside the pods.
const FWD_FRONTEND_ADMIN: u16 = 19901;
const FWD_BACKEND_ADMIN: u16 = 19902;
const FWD_BACKEND_MTLS: u16 = 18443;
const FWD_BACKEND_HEALTH: u16 = 19091;
const FWD_POSTGRES: u16 = 15433;

/// The rogue of the `unregistered` scenario: a pod with service account `rogue`.
const ROGUE_MANIFEST: &str = "manifests/scenarios/rogue.yaml";

/// A process the scenario froze with SIGSTOP: the kind node (a container) and its pid there.
struct Frozen {
    component: crate::lab::Component,
    node: String,
    pid: String,
}

/// The running lab on kind, for scenarios: kubectl for changes, port-forwards for looking.
pub struct KindLab {
    ctx: String,
    /// `kubectl` from PATH, and the user's kubeconfig; in tests, a real API server's.
    kubectl: std::path::PathBuf,
    kubeconfig: Option<std::path::PathBuf>,
    forwards: Vec<std::process::Child>,
    /// Where the rogue's SVID was copied out of its pod.
    rogue_dir: Option<std::path::PathBuf>,
    frozen: Vec<Frozen>,
}

impl KindLab {
    pub fn open(sh: &Shell) -> anyhow::Result<KindLab> {
        let ctx = context()?;
        cmd!(
            sh,
            "kubectl --context {ctx} -n {NAMESPACE} get deployment frontend"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .context("the lab is not up on kind: run `cargo xtask up --runtime kind`")?;
        let mut lab = KindLab {
            ctx,
            kubectl: "kubectl".into(),
            kubeconfig: None,
            forwards: Vec::new(),
            rogue_dir: None,
            frozen: Vec::new(),
        };
        lab.forward()?;
        Ok(lab)
    }

    /// The handle on a running API server with no nodes: no port-forwards (no pod runs).
    fn attach(api: &crate::apiserver::ApiServer) -> KindLab {
        KindLab {
            ctx: api.contexts[0].clone(),
            kubectl: api.kubectl.clone(),
            kubeconfig: Some(api.kubeconfig.clone()),
            forwards: Vec::new(),
            rogue_dir: None,
            frozen: Vec::new(),
        }
    }

    fn kubectl(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.kubectl);
        if let Some(k) = &self.kubeconfig {
            c.env("KUBECONFIG", k);
        }
        c.args(["--context", &self.ctx]);
        c
    }

    /// `kubectl apply -f -` of `yaml` (or JSON): what kubectl printed, or its error.
    fn apply_yaml(&self, yaml: &str) -> anyhow::Result<String> {
        let mut apply = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = apply.stdin.take().context("no stdin")?;
        let input = yaml.to_owned();
        let writer =
            std::thread::spawn(move || std::io::Write::write_all(&mut stdin, input.as_bytes()));
        let out = apply.wait_with_output()?;
        let _ = writer.join();
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(crate::procs::printed(&out))
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl().args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// (Re)starts the port-forwards and waits until each local port answers.
    fn forward(&mut self) -> anyhow::Result<()> {
        for mut f in self.forwards.drain(..) {
            let _ = f.kill();
            let _ = f.wait();
        }
        let specs: [(&str, &[(u16, u16)]); 3] = [
            ("deployment/frontend", &[(FWD_FRONTEND_ADMIN, 9901)]),
            (
                "deployment/backend",
                &[
                    (FWD_BACKEND_ADMIN, 9901),
                    (FWD_BACKEND_MTLS, 8443),
                    (FWD_BACKEND_HEALTH, 9091),
                ],
            ),
            ("statefulset/postgres", &[(FWD_POSTGRES, 5432)]),
        ];
        for (target, ports) in specs {
            let mut c = self.kubectl();
            c.args(["-n", NAMESPACE, "port-forward", target]);
            for (local, remote) in ports {
                c.arg(format!("{local}:{remote}"));
            }
            let child = c
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
            self.forwards.push(child);
        }
        let started = std::time::Instant::now();
        for port in [
            FWD_FRONTEND_ADMIN,
            FWD_BACKEND_ADMIN,
            FWD_BACKEND_MTLS,
            FWD_BACKEND_HEALTH,
            FWD_POSTGRES,
        ] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                anyhow::ensure!(
                    started.elapsed().as_secs() < 30,
                    "kubectl port-forward to port {port} did not come up"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        Ok(())
    }

    /// What `kubectl scale` stops for a component: a whole pod on kind.
    fn scaled(
        c: crate::lab::Component,
    ) -> anyhow::Result<(&'static str, &'static str, &'static str)> {
        use crate::lab::Component::*;
        Ok(match c {
            SpireServer => ("spire-system", "statefulset/spire-server", "spire-server"),
            Postgres => (NAMESPACE, "statefulset/postgres", "postgres"),
            // The backend's Envoy cannot stop alone: its whole pod (Envoy, backend, helper) does.
            EnvoyBackend | Backend => (NAMESPACE, "deployment/backend", "backend"),
            other => bail!("stopping {} alone is not possible on kind", other.name()),
        })
    }

    /// A spiffe-helper (a native sidecar) cannot be stopped alone by Kubernetes, and SIGSTOP
    /// from inside its pod would not reach it (it is PID 1 of its PID namespace). The kind node
    /// is a container holding every pod's processes: SIGSTOP from there freezes the helper and
    /// nothing else, and SIGCONT resumes it.
    fn freeze(&mut self, c: crate::lab::Component) -> anyhow::Result<()> {
        let (ns, target, container) = workload(c);
        let app = target.split('/').nth(1).unwrap_or_default();
        let out = self.run(&[
            "-n",
            ns,
            "get",
            "pod",
            "-l",
            &format!("app={app}"),
            "-o",
            "json",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let pod = &v["items"][0];
        let node = pod["spec"]["nodeName"]
            .as_str()
            .with_context(|| format!("no {app} pod is scheduled"))?
            .to_owned();
        let id = pod["status"]["initContainerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == container)
            .and_then(|s| s["containerID"].as_str())
            .and_then(|id| id.split_once("://").map(|(_, id)| id.to_owned()))
            .with_context(|| format!("{app}'s {container} has no running container"))?;
        let pid = docker_exec(
            &node,
            &[
                "crictl",
                "inspect",
                "--output",
                "go-template",
                "--template",
                "{{.info.pid}}",
                &id,
            ],
        )
        .with_context(|| format!("finding {app}'s {container} on the kind node {node}"))?;
        let pid = pid.trim().to_owned();
        anyhow::ensure!(
            pid.parse::<u32>().is_ok_and(|p| p > 1),
            "crictl gave no pid for {container}: {pid:?}"
        );
        signal(&node, &pid, "STOP")?;
        println!("      froze {app}'s {container} (pid {pid} on {node})");
        self.frozen.push(Frozen {
            component: c,
            node,
            pid,
        });
        Ok(())
    }

    fn thaw(&mut self, c: crate::lab::Component) -> anyhow::Result<()> {
        for f in self.frozen.iter().filter(|f| f.component == c) {
            signal(&f.node, &f.pid, "CONT")?;
        }
        self.frozen.retain(|f| f.component != c);
        Ok(())
    }

    /// The rogue pod now: the agent's refusal if its fetch failed at least once, and whether
    /// it holds an SVID (its client container runs).
    fn rogue_state(&self) -> anyhow::Result<(Option<String>, bool)> {
        let out = self.run(&["-n", NAMESPACE, "get", "pod", "rogue", "-o", "json"])?;
        let pod: serde_json::Value = serde_json::from_str(&out)?;
        let fetch = &pod["status"]["initContainerStatuses"][0];
        let refusal = [
            &fetch["state"]["terminated"],
            &fetch["lastState"]["terminated"],
        ]
        .into_iter()
        .find(|t| t["exitCode"].as_i64().is_some_and(|c| c != 0))
        .map(|t| {
            t["message"]
                .as_str()
                .unwrap_or("the fetch failed without a message")
                .trim()
                .to_owned()
        });
        let holds = pod["status"]["containerStatuses"][0]["ready"] == true;
        Ok((refusal, holds))
    }

    /// `uid/restarts` of the pod labelled `app` and its container (a sidecar's included).
    fn pod_instance(&self, ns: &str, app: &str, container: &str) -> Option<String> {
        let path = format!(
            "jsonpath={{.items[0].metadata.uid}}/{{.items[0].status.containerStatuses[?(@.name==\"{container}\")].restartCount}}{{.items[0].status.initContainerStatuses[?(@.name==\"{container}\")].restartCount}}"
        );
        self.run(&[
            "-n",
            ns,
            "get",
            "pod",
            "-l",
            &format!("app={app}"),
            "-o",
            &path,
        ])
        .ok()
        .filter(|s| !s.trim().is_empty())
    }

    fn apply_rogue(&self) -> anyhow::Result<()> {
        let manifest = crate::project_root().join(ROGUE_MANIFEST);
        self.run(&["apply", "-f", &manifest.display().to_string()])?;
        Ok(())
    }

    fn delete_rogue_pod(&self) -> anyhow::Result<()> {
        self.run(&[
            "-n",
            NAMESPACE,
            "delete",
            "pod",
            "rogue",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ])?;
        Ok(())
    }

    fn entry_ids(&self, spiffe_id: &str) -> anyhow::Result<Vec<String>> {
        let out = self.run(&server_cli(&[
            "entry",
            "show",
            "-spiffeID",
            spiffe_id,
            "-output",
            "json",
        ]))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect())
    }
}

/// Runs a command inside a kind node (a Docker container) and returns what it printed.
fn docker_exec(node: &str, argv: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("docker")
        .args(["exec", node])
        .args(argv)
        .output()
        .context("docker exec")?;
    anyhow::ensure!(
        out.status.success(),
        "docker exec {node} {}: {}",
        argv.join(" "),
        crate::procs::printed(&out).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends SIG`sig` to a process of a kind node, from the node's own PID namespace.
fn signal(node: &str, pid: &str, sig: &str) -> anyhow::Result<()> {
    docker_exec(node, &["sh", "-c", "kill -s \"$0\" \"$1\"", sig, pid])?;
    Ok(())
}

impl Drop for KindLab {
    fn drop(&mut self) {
        // Never leave a frozen helper behind, whatever happened to the scenario.
        for f in &self.frozen {
            let _ = signal(&f.node, &f.pid, "CONT");
        }
        if let Some(dir) = &self.rogue_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        for f in &mut self.forwards {
            let _ = f.kill();
            let _ = f.wait();
        }
    }
}

impl crate::lab::Lab for KindLab {
    fn runtime(&self) -> &'static str {
        "kind"
    }

    fn frontend_url(&self) -> String {
        "http://localhost:8080".into()
    }

    fn envoy_admin_url(&self, backend: bool) -> String {
        format!(
            "http://127.0.0.1:{}",
            if backend {
                FWD_BACKEND_ADMIN
            } else {
                FWD_FRONTEND_ADMIN
            }
        )
    }

    fn stop(&mut self, c: crate::lab::Component) -> anyhow::Result<()> {
        use crate::lab::Component::{HelperBackend, HelperPostgres};
        if matches!(c, HelperBackend | HelperPostgres) {
            return self.freeze(c);
        }
        let (ns, target, _) = Self::scaled(c)?;
        self.run(&["-n", ns, "scale", target, "--replicas=0"])?;
        let app = target.split('/').nth(1).unwrap_or_default();
        self.run(&[
            "-n",
            ns,
            "wait",
            "--for=delete",
            "pod",
            "-l",
            &format!("app={app}"),
            "--timeout=120s",
        ])?;
        Ok(())
    }

    fn start(&mut self, c: crate::lab::Component) -> anyhow::Result<()> {
        use crate::lab::Component::{HelperBackend, HelperPostgres};
        if matches!(c, HelperBackend | HelperPostgres) {
            return self.thaw(c);
        }
        let (ns, target, _) = Self::scaled(c)?;
        self.run(&["-n", ns, "scale", target, "--replicas=1"])?;
        self.run(&["-n", ns, "rollout", "status", target, "--timeout=180s"])?;
        self.forward()
    }

    fn instance(&self, c: crate::lab::Component) -> Option<String> {
        if self.frozen.iter().any(|f| f.component == c) {
            return None;
        }
        let (ns, target, container) = workload(c);
        self.pod_instance(ns, target.split('/').nth(1)?, container)
    }

    fn set_policy(&mut self, p: crate::lab::Policy) -> anyhow::Result<()> {
        let file = match p {
            crate::lab::Policy::AllowFrontend => "rbac.yaml",
            crate::lab::Policy::Deny => "rbac-deny.yaml",
        };
        let from = format!(
            "--from-file=rbac.yaml={}",
            crate::project_root()
                .join("manifests/backend/config")
                .join(file)
                .display()
        );
        let yaml = self.run(&[
            "-n",
            NAMESPACE,
            "create",
            "configmap",
            "backend-rbac",
            &from,
            "--dry-run=client",
            "-o",
            "yaml",
        ])?;
        self.apply_yaml(&yaml)
            .context("kubectl apply of the RBAC policy")?;
        Ok(())
    }

    fn set_svid_ttl(&mut self, ttl: Option<u32>) -> anyhow::Result<()> {
        let ttl = ttl.unwrap_or(0).to_string();
        for e in registrations() {
            for id in self.entry_ids(&e.spiffe_id)? {
                let mut args = server_cli(&["entry", "update", "-entryID", &id]);
                args.extend(["-x509SVIDTTL", &ttl]);
                args.extend(e.args());
                self.run(&args)?;
            }
        }
        Ok(())
    }

    fn log(&self, c: crate::lab::Component) -> anyhow::Result<String> {
        let (ns, target, container) = workload(c);
        self.run(&["-n", ns, "logs", target, "-c", container, "--tail", "-1"])
    }

    fn trust_bundle(&self) -> anyhow::Result<Vec<openssl::x509::X509>> {
        let pem = self.run(&server_cli(&["bundle", "show"]))?;
        Ok(openssl::x509::X509::stack_from_pem(pem.as_bytes())?)
    }

    fn holdings(&self) -> Vec<anyhow::Result<crate::lab::Holding>> {
        use crate::lab::Holding;
        // The backend's files live in its pod: its own /api/identity, through the frontend.
        let files = || -> anyhow::Result<Holding> {
            let (_, body) = crate::probe::get(&format!("{}/api/identity", self.frontend_url()))?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let h = v["holders"]
                .as_array()
                .and_then(|a| {
                    a.iter().find(|h| {
                        h["holder"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("backend"))
                    })
                })
                .cloned()
                .context("no backend in the identity panel")?;
            Ok(Holding {
                holder: "backend files",
                spiffe_id: h["spiffe_id"].as_str().map(str::to_owned),
                serial: h["serial"]
                    .as_str()
                    .context("the backend's serial is unknown")?
                    .to_owned(),
                seconds_left: h["seconds_left"].as_i64(),
            })
        };
        vec![
            Holding::of_envoy("frontend Envoy", &self.envoy_admin_url(false)),
            Holding::of_envoy("backend Envoy", &self.envoy_admin_url(true)),
            files(),
            Holding::of_postgres(&format!("127.0.0.1:{FWD_POSTGRES}")),
        ]
    }

    fn presented_chains(&self) -> Vec<(&'static str, anyhow::Result<Vec<openssl::x509::X509>>)> {
        vec![
            (
                "backend Envoy (served on its mTLS listener)",
                crate::probe::server_chain(&format!("127.0.0.1:{FWD_BACKEND_MTLS}"), false),
            ),
            (
                "PostgreSQL (served to TLS clients)",
                crate::probe::server_chain(&format!("127.0.0.1:{FWD_POSTGRES}"), true),
            ),
        ]
    }

    fn backend_readyz(&self) -> anyhow::Result<(u16, serde_json::Value)> {
        let (status, body) =
            crate::probe::get(&format!("http://127.0.0.1:{FWD_BACKEND_HEALTH}/readyz"))?;
        Ok((status, serde_json::from_str(&body)?))
    }

    fn backend_envoy_addr(&self) -> String {
        format!("127.0.0.1:{FWD_BACKEND_MTLS}")
    }

    fn fetch_svid_unregistered(&self) -> anyhow::Result<String> {
        self.apply_rogue()?;
        let started = std::time::Instant::now();
        let outcome = loop {
            match self.rogue_state() {
                Ok((Some(refusal), _)) => break Err(refusal),
                Ok((None, true)) => break Ok("the rogue pod holds an SVID".to_owned()),
                _ if started.elapsed().as_secs() > 90 => {
                    break Err("the rogue pod neither got an SVID nor failed in 90 s".to_owned());
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(500)),
            }
        };
        self.delete_rogue_pod()?;
        match outcome {
            Ok(held) => Ok(held),
            Err(refusal) => bail!("{refusal}"),
        }
    }

    fn issue_rogue_svid(&mut self) -> anyhow::Result<std::path::PathBuf> {
        let rogue = KindEntry::of_account("rogue", Some("backend"));
        let mut args = server_cli(&["entry", "create"]);
        args.extend(rogue.args());
        self.run(&args)?;
        self.apply_rogue()?;
        // The pod retries a refused fetch until its node's agent has synced the new entry.
        let started = std::time::Instant::now();
        loop {
            let (refusal, holds) = self.rogue_state()?;
            if holds {
                break;
            }
            anyhow::ensure!(
                started.elapsed().as_secs() < 90,
                "the registered rogue got no SVID in 90 s: {}",
                refusal.unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let dir = std::env::temp_dir().join(format!("spire-lab-rogue-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)?;
        self.rogue_dir = Some(dir.clone());
        for (file, mode) in [
            ("svid.0.pem", 0o644),
            ("svid.0.key", 0o600),
            ("bundle.0.pem", 0o644),
        ] {
            let pem = self.run(&[
                "-n",
                NAMESPACE,
                "exec",
                "rogue",
                "-c",
                "client",
                "--",
                "cat",
                &format!("/rogue/{file}"),
            ])?;
            let mut out = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(&mut out, mode);
            std::io::Write::write_all(
                &mut out.write(true).create_new(true).open(dir.join(file))?,
                pem.as_bytes(),
            )?;
        }
        Ok(dir)
    }

    fn remove_rogue(&mut self) -> anyhow::Result<()> {
        self.delete_rogue_pod()?;
        self.run(&[
            "-n",
            NAMESPACE,
            "delete",
            "serviceaccount",
            "rogue",
            "--ignore-not-found",
        ])?;
        for id in self.entry_ids(&crate::local::workload_id("rogue"))? {
            self.run(&server_cli(&["entry", "delete", "-entryID", &id]))?;
        }
        if let Some(dir) = self.rogue_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    /// psql inside the rogue pod, with the very files the rogue's fetch wrote there.
    fn query_postgres_with(&self, _dir: &std::path::Path) -> anyhow::Result<String> {
        let conninfo = "host=postgres.demo.svc.cluster.local port=5432 dbname=demo user=backend sslmode=verify-ca sslcert=/rogue/svid.0.pem sslkey=/rogue/svid.0.key sslrootcert=/rogue/bundle.0.pem";
        let out = self
            .kubectl()
            .args(["-n", NAMESPACE, "exec", "rogue", "-c", "client", "--"])
            .args(["psql", conninfo, "-AtXc", "SELECT count(*) FROM orders"])
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn readiness_gates_traffic(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind layer against a real kube-apiserver with no nodes (see `check_against_apiserver`).
    #[test]
    fn plan_and_scenario_paths_work_against_a_real_apiserver() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let kube = crate::deps::find_kube(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let sh = Shell::new().unwrap();
        check_against_apiserver(&sh, &kube).unwrap_or_else(|e| panic!("{e:#}"));
    }

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
        for image in [
            &pins.services.frontend_image,
            &pins.services.backend_image,
            &pins.envoy.image,
            &pins.spire.server_image,
        ] {
            assert!(
                lines[load].contains(image.as_str()),
                "{image} is not loaded"
            );
        }
        assert!(!lines[load].contains("kindest/node"));
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
