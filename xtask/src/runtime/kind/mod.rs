//! The kind runtime, kept thin: `plan` is everything `up` does (kind, docker, kubectl steps
//! built from the pins and `manifests/`), printed by `--dry-run` and run step by step here;
//! `lab` is the scenarios' handle on the running lab. Only this module (and the checks that
//! exercise it) runs docker, kind or kubectl.

mod engine;
mod images;
mod lab;
mod network;
mod node;
pub mod offline;
mod openbao;
pub mod plan;

use anyhow::{Context, bail, ensure};
use contract::NAMESPACE;
use xshell::{Shell, cmd};

use crate::lab::Component;
use crate::pins::Pins;
pub use engine::ensure_nothing_left;
pub use lab::KindLab;
use plan::{Action, CONTEXT_PREFIX, Step};
pub use plan::{ImageBuild, Target};

/// Where the UI is: the frontend Service's NodePort, mapped to this port on the host by
/// `manifests/kind/cluster.yaml`.
const UI_NODE_PORT: u16 = 30080;
const UI_HOST_PORT: u16 = 8080;

fn ui_url() -> String {
    format!("http://localhost:{UI_HOST_PORT}")
}

/// The container engine's CLI: `podman` when kind is told to use Podman
/// (`KIND_EXPERIMENTAL_PROVIDER=podman`), else `docker` (Docker, or Podman Desktop's Docker CLI).
pub fn container_cli() -> &'static str {
    match std::env::var("KIND_EXPERIMENTAL_PROVIDER").as_deref() {
        Ok("podman") => "podman",
        _ => "docker",
    }
}

/// The container engine's version, when one answers (the lab's own, when it runs): kind can run
/// here.
pub fn detect(sh: &Shell) -> Option<String> {
    offline::attach(sh);
    let cli = container_cli();
    let format = if cli == "podman" {
        "{{.Version.Version}}"
    } else {
        "{{.ServerVersion}}"
    };
    cmd!(sh, "{cli} info --format {format}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Puts the pinned kind and kubectl on `sh`'s PATH where PATH has none; the kubectl to use.
pub fn tools_on_path(sh: &Shell) -> anyhow::Result<std::path::PathBuf> {
    let pins = Pins::load(&crate::project_root())?;
    let dirs = crate::deps::kind_tool_dirs(&pins);
    if !dirs.is_empty() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined =
            std::env::join_paths(dirs.iter().cloned().chain(std::env::split_paths(&path)))?;
        sh.set_var("PATH", &joined);
    }
    Ok(dirs
        .iter()
        .map(|d| d.join("kubectl"))
        .find(|k| k.is_file())
        .unwrap_or_else(|| "kubectl".into()))
}

/// The kubeconfig context of the kind cluster.
fn context() -> anyhow::Result<String> {
    Ok(format!(
        "{CONTEXT_PREFIX}{}",
        Pins::load(&crate::project_root())?.kind.cluster_name
    ))
}

/// How scenarios stop a component on Kubernetes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Scale its workload to 0 (its whole pod goes).
    Scale,
    /// Freeze its process with SIGSTOP from the kind node: a native sidecar cannot be stopped
    /// alone, and from inside its pod it is PID 1, which ignores the signal.
    Freeze,
    /// Not alone: one agent of a DaemonSet.
    No,
    /// One ordinal of a StatefulSet: scaled down to it (the ordinals above it go too).
    Ordinal(u8),
}

/// Where a component runs on Kubernetes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub namespace: &'static str,
    /// `kind/name` of its workload.
    pub workload: &'static str,
    pub container: &'static str,
    pub stop: Stop,
}

impl Placement {
    /// The `app` label of the workload's pods (its name).
    pub fn app(&self) -> &'static str {
        self.workload.split_once('/').map_or("", |(_, n)| n)
    }
}

pub fn placement(c: Component) -> Placement {
    use Component::*;
    let at = |namespace, workload, container, stop| Placement {
        namespace,
        workload,
        container,
        stop,
    };
    match c {
        SpireDatastore => at(
            "spire-system",
            "statefulset/spire-db",
            "postgres",
            Stop::Scale,
        ),
        SpireServer(r) => at(
            "spire-system",
            "statefulset/spire-server",
            "spire-server",
            Stop::Ordinal(r),
        ),
        // One DaemonSet: on kind the agents are per Kubernetes node.
        Agent(_) => at(
            "spire-system",
            "daemonset/spire-agent",
            "spire-agent",
            Stop::No,
        ),
        HelperPostgres => at(
            NAMESPACE,
            "statefulset/postgres",
            "spiffe-helper",
            Stop::Freeze,
        ),
        Postgres => at(NAMESPACE, "statefulset/postgres", "postgres", Stop::Scale),
        HelperBackend => at(
            NAMESPACE,
            "deployment/backend",
            "spiffe-helper",
            Stop::Freeze,
        ),
        // The backend and its Envoy cannot stop alone: their whole pod does.
        Backend => at(NAMESPACE, "deployment/backend", "backend", Stop::Scale),
        EnvoyBackend => at(NAMESPACE, "deployment/backend", "envoy", Stop::Scale),
        EnvoyFrontend => at(NAMESPACE, "deployment/frontend", "envoy", Stop::No),
        Frontend => at(NAMESPACE, "deployment/frontend", "frontend", Stop::No),
        Ledger => at(NAMESPACE, "deployment/ledger", "ledger", Stop::Scale),
        SpireOidc => at(
            "spire-system",
            "deployment/spire-oidc",
            "spire-oidc",
            Stop::Scale,
        ),
        HelperOpenBao => at(
            NAMESPACE,
            "statefulset/openbao",
            "spiffe-helper",
            Stop::Freeze,
        ),
        OpenBao => at(NAMESPACE, "statefulset/openbao", "openbao", Stop::Scale),
    }
}

/// `docker`, `kind` and `kubectl` answer; each missing one is named with how to get it. True
/// when the engine predates `docker image save --platform` (Docker 28): its image store holds
/// one platform per image, so a plain `docker image save` is the archive kind can load.
fn prerequisites(
    sh: &Shell,
    pins: &Pins,
    target: &Target,
    build: ImageBuild,
) -> anyhow::Result<bool> {
    let mut missing = Vec::new();
    let mut legacy = false;
    let cli = container_cli();
    if detect(sh).is_none() {
        missing.push(format!("a running container engine (`{cli} info` fails)"));
    } else if cli == "podman" {
        ensure!(
            build != ImageBuild::Offline,
            "the offline path runs its own Docker engine; unset KIND_EXPERIMENTAL_PROVIDER for it"
        );
        println!("container engine: Podman (KIND_EXPERIMENTAL_PROVIDER=podman)");
    } else if *target == Target::Kind && build != ImageBuild::Offline {
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
            println!(
                "Docker Engine {}: the image archive is saved without --platform (its store holds one platform)",
                version.trim()
            );
            legacy = true;
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
    Ok(legacy)
}

/// The engine the plan's container steps go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Docker,
    /// No `--platform` on `docker image save`, and a classic image store with one platform per
    /// image: a plain save is the archive kind can load.
    DockerBefore28,
    /// `podman` in place of `docker`; `podman save` of several images needs
    /// `--multi-image-archive` and has no `--platform` (its store holds the pulled platform).
    Podman,
}

/// A plan step as `engine` takes it (the plan is written for Docker 28 or newer).
pub fn for_engine(s: &Step, engine: Engine) -> Step {
    let mut s = s.clone();
    let Action::Command(argv) = &mut s.action else {
        return s;
    };
    if argv.first().map(String::as_str) != Some("docker") || engine == Engine::Docker {
        return s;
    }
    let save = argv.starts_with(&["docker".to_owned(), "image".into(), "save".into()]);
    if save && let Some(at) = argv.iter().position(|a| a == "--platform") {
        argv.drain(at..at + 2);
    }
    if engine == Engine::Podman {
        argv[0] = "podman".into();
        if save {
            argv.splice(1..3, ["save".to_owned(), "--multi-image-archive".into()]);
        }
    }
    s
}

/// Runs the plan (or prints it with `dry_run`); `offline`, on the lab's own engine with every
/// image built here.
pub fn up(sh: &Shell, dry_run: bool, target: Target, offline: bool) -> anyhow::Result<()> {
    let pins = Pins::load(&crate::project_root())?;
    let build = if offline {
        ImageBuild::Offline
    } else if cmd!(sh, "nix --version")
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
    let plan = plan::plan(&pins, build, &target);
    if dry_run {
        let on = match &target {
            Target::Kind => format!("the kind cluster {}", pins.kind.cluster_name),
            Target::Existing { context, .. } => format!("the cluster of context {context}"),
        };
        println!("`cargo xtask up` on {on} would run, in order (`xtask:` marks its own steps):");
        let engine = if container_cli() == "podman" {
            Engine::Podman
        } else {
            Engine::Docker
        };
        for (i, s) in plan.iter().enumerate() {
            println!("{:>3}. {}\n     {}", i + 1, s.what, for_engine(s, engine));
        }
        return Ok(());
    }
    if offline {
        offline::use_own_engine(sh)?;
    }
    tools_on_path(sh)?;
    let engine = if prerequisites(sh, &pins, &target, build)? {
        Engine::DockerBefore28
    } else if container_cli() == "podman" {
        Engine::Podman
    } else {
        Engine::Docker
    };
    let exists = cmd!(sh, "kind get clusters")
        .quiet()
        .read()
        .unwrap_or_default()
        .lines()
        .any(|l| l == pins.kind.cluster_name);
    let started = std::time::Instant::now();
    for (i, s) in plan.iter().enumerate() {
        if s.only_if_new_cluster && exists {
            println!("[{:>2}/{}] {} (exists already)", i + 1, plan.len(), s.what);
            continue;
        }
        println!("[{:>2}/{}] {}", i + 1, plan.len(), s.what);
        let s = for_engine(s, engine);
        let t = std::time::Instant::now();
        run_step(sh, &s, false).with_context(|| format!("step {}: {}\n  {s}", i + 1, s.what))?;
        if t.elapsed().as_secs() >= 2 {
            println!("        ({:.0} s)", t.elapsed().as_secs_f64());
        }
    }
    if target == Target::Kind {
        serves()?;
    }
    match &target {
        Target::Kind => println!(
            "\nThe lab is up on kind in {:.0} s: open {}\nNext: cargo xtask status · cargo xtask scenario all --runtime kind · cargo xtask down",
            started.elapsed().as_secs_f64(),
            ui_url()
        ),
        Target::Existing { context, .. } => println!(
            "\nThe lab is up in {context}: kubectl --context {context} -n {NAMESPACE} port-forward svc/frontend {UI_HOST_PORT}:8080, then open {}",
            ui_url()
        ),
    }
    Ok(())
}

/// Ready means the lab serves: the rollouts are complete once the probes pass, but a workload
/// starts before its registration entry exists, and an Envoy whose first SDS requests the agent
/// refused asks again only after a backoff (up to half a minute). So `up` ends with the first
/// Run Demo that succeeds through the UI, waiting at most two minutes.
fn serves() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    println!("[ready] until Run Demo succeeds through the UI (every hop holds its SVID)");
    let outcome = crate::procs::wait_for(std::time::Duration::from_secs(120), || {
        let d = crate::demo::run_demo(&ui_url())?;
        anyhow::ensure!(d.ok(), "{}", d.line());
        Ok(d)
    });
    match outcome {
        Ok((d, took)) => {
            println!("        {} ({:.0} s)", d.line(), took.as_secs_f64());
            Ok(())
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "the lab on kind does not serve {:.0} s after its rollouts: `cargo xtask status` shows who holds which SVID, `cargo xtask logs envoy-frontend` why a hop fails",
                started.elapsed().as_secs_f64()
            )
        }),
    }
}

/// The datastore's Secrets, unless both exist: a new password and a new certificate, applied
/// from standard input (never a command-line argument, never a file).
/// `kubectl --context CONTEXT`, with the shell's environment (its KUBECONFIG).
fn kubectl_in(sh: &Shell, context: &str) -> std::process::Command {
    let mut c: std::process::Command = sh.cmd("kubectl").into();
    c.args(["--context", context]);
    c
}

fn datastore_secrets(sh: &Shell, context: &str, quiet: bool) -> anyhow::Result<()> {
    let present = cmd!(
        sh,
        "kubectl --context {context} -n spire-system get secret spire-db spire-db-tls -o name"
    )
    .quiet()
    .ignore_stderr()
    .read()
    .unwrap_or_default();
    if present.lines().count() == 2 {
        if !quiet {
            println!("        the datastore's Secrets exist already");
        }
        return Ok(());
    }
    let c = crate::datastore::credentials(&[])?;
    let b64 = |b: &[u8]| openssl::base64::encode_block(b);
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: spire-db\n  namespace: spire-system\ntype: Opaque\ndata:\n  password: {}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: spire-db-tls\n  namespace: spire-system\ntype: Opaque\ndata:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}\n",
        b64(c.password.as_bytes()),
        b64(&c.cert_pem),
        b64(&c.key_pem),
        b64(&c.ca_pem),
    );
    cmd!(sh, "kubectl --context {context} apply -f -")
        .stdin(yaml)
        .quiet()
        .ignore_stdout()
        .run()
        .context("kubectl apply of the datastore's Secrets")?;
    Ok(())
}

/// Runs one step; `quiet` keeps the command and its output off the terminal unless it fails.
pub fn run_step(sh: &Shell, s: &Step, quiet: bool) -> anyhow::Result<()> {
    let argv = match &s.action {
        Action::WriteRegistryOverlay { dir, registry } => {
            let pins = Pins::load(&crate::project_root())?;
            let dir = sh.current_dir().join(dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(
                dir.join("kustomization.yaml"),
                plan::registry_overlay(&pins, registry),
            )?;
            return Ok(());
        }
        Action::NixImageLoad { attr, image } => return nix_image_load(sh, attr, image),
        Action::BuildImages => {
            let pins = Pins::load(&crate::project_root())?;
            let off = crate::deps::ensure_kind_offline(sh, &pins)?;
            return offline::build_images(sh, &off);
        }
        Action::WriteOfflineClusterConfig { path } => {
            let path = sh.current_dir().join(path);
            std::fs::create_dir_all(path.parent().context("a directory")?)?;
            std::fs::write(&path, offline::offline_cluster_config()?)?;
            return Ok(());
        }
        Action::PodNetwork { context } => return network::set_up(sh, context),
        Action::DatastoreSecrets { context } => {
            datastore_secrets(sh, context, quiet)?;
            return openbao::oidc_secret(&|| kubectl_in(sh, context));
        }
        Action::OpenBao { context } => {
            return openbao::unseal_and_configure(&|| kubectl_in(sh, context));
        }
        Action::WriteOfflineOverlay { dir } => {
            let pins = Pins::load(&crate::project_root())?;
            let dir = sh.current_dir().join(dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("kustomization.yaml"), plan::offline_overlay(&pins))?;
            return Ok(());
        }
        Action::Command(argv) => argv.clone(),
    };
    if !s.already_done.is_empty() || quiet {
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
    sh.cmd(&argv[0]).args(&argv[1..]).run()?;
    Ok(())
}

/// The flake's streamLayeredImage script writes an image archive to stdout: docker load it.
fn nix_image_load(sh: &Shell, attr: &str, image: &str) -> anyhow::Result<()> {
    let script = cmd!(sh, "nix build --no-link --print-out-paths {attr}").read()?;
    let mut stream = std::process::Command::new(script.trim())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let status = std::process::Command::new(container_cli())
        .arg("load")
        .stdin(stream.stdout.take().context("no stdout")?)
        .status()?;
    anyhow::ensure!(
        stream.wait()?.success() && status.success(),
        "loading {image} failed"
    );
    Ok(())
}

/// Deletes the kind cluster; on the lab's own engine, stops the engine too and puts the host
/// back as it was.
pub fn down(sh: &Shell) -> anyhow::Result<()> {
    let pins = Pins::load(&crate::project_root())?;
    tools_on_path(sh)?;
    let name = &pins.kind.cluster_name;
    let own = offline::attach(sh).is_some();
    cmd!(sh, "kind delete cluster --name {name}")
        .run()
        .context("kind delete cluster")?;
    if own {
        offline::stop_own_engine(sh)?;
    }
    Ok(())
}

/// The pods of both namespaces, and where the UI is.
pub fn status(sh: &Shell) -> anyhow::Result<()> {
    offline::attach(sh);
    tools_on_path(sh)?;
    let ctx = context()?;
    for ns in ["spire-system", NAMESPACE] {
        println!("── {ns}");
        cmd!(sh, "kubectl --context {ctx} -n {ns} get pods -o wide").run()?;
    }
    node_memory(sh);
    match lab::KindLab::open(sh) {
        Ok(lab) => crate::telemetry::read(&lab).print(),
        Err(e) => println!("\nMETRICS: not read: {e:#}"),
    }
    println!("\nUI: {} (NodePort {UI_NODE_PORT})", ui_url());
    Ok(())
}

/// Each node's memory and CPU as its container engine counts them (the seed's budget for the
/// whole lab: 8 GB, 4 CPU). Informational: an engine that cannot tell leaves it out.
fn node_memory(sh: &Shell) {
    let cli = container_cli();
    let ctx = context().unwrap_or_default();
    let Ok(nodes) = cmd!(sh, "kubectl --context {ctx} get nodes -o name")
        .quiet()
        .read()
    else {
        return;
    };
    let nodes: Vec<&str> = nodes
        .lines()
        .filter_map(|n| n.strip_prefix("node/"))
        .collect();
    if nodes.is_empty() {
        return;
    }
    let format = "{{.Name}}\t{{.MemUsage}}\t{{.CPUPerc}}";
    if let Ok(out) = cmd!(sh, "{cli} stats --no-stream --format {format} {nodes...}")
        .quiet()
        .read()
    {
        println!("── nodes (memory used / limit, CPU)");
        for line in out.lines() {
            println!("{}", line.replace('\t', "   "));
        }
    }
}

/// Components' logs: `kubectl logs` of each one's container; followed, all at once.
pub fn logs(
    sh: &Shell,
    out: &super::logs::Printer,
    components: &[Component],
    lines: usize,
    follow: bool,
) -> anyhow::Result<()> {
    offline::attach(sh);
    tools_on_path(sh)?;
    let ctx = context()?;
    // The lab's own tools come first on the shell's PATH; a Command looks there too.
    let path = sh.var_os("PATH").unwrap_or_default();
    let command = move |c: Component, tail: String, follow: bool| {
        let Placement {
            namespace: ns,
            workload,
            container,
            ..
        } = placement(c);
        let mut cmd = std::process::Command::new("kubectl");
        cmd.env("PATH", &path).args([
            "--context",
            &ctx,
            "-n",
            ns,
            "logs",
            workload,
            "-c",
            container,
            "--tail",
            &tail,
        ]);
        if follow {
            cmd.arg("-f");
        }
        cmd
    };
    let tail = if lines == 0 {
        "-1".to_owned()
    } else {
        lines.to_string()
    };
    if follow {
        return super::logs::follow_streams(out, components, move |c, first| {
            command(c, if first { tail.clone() } else { "0".into() }, true)
        });
    }
    for &c in components {
        let got = command(c, tail.clone(), false)
            .output()
            .with_context(|| format!("kubectl logs for {}", c.name()))?;
        if got.status.success() {
            out.block(c, &String::from_utf8_lossy(&got.stdout));
        } else {
            out.note(c, String::from_utf8_lossy(&got.stderr).trim());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Engines older than Docker 28 and Podman get the image archive they can make.
    #[test]
    fn container_steps_for_each_engine() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let plan = plan::plan(&pins, ImageBuild::Dockerfile, &Target::Kind);
        let save = plan
            .iter()
            .find(|s| {
                s.argv()
                    .starts_with(&["docker".into(), "image".into(), "save".into()])
            })
            .unwrap();
        assert!(save.argv().contains(&"--platform".to_owned()));
        let old = for_engine(save, Engine::DockerBefore28);
        assert!(!old.argv().contains(&"--platform".to_owned()));
        assert_eq!(old.argv()[..3], ["docker", "image", "save"]);
        let podman = for_engine(save, Engine::Podman);
        assert_eq!(
            podman.argv()[..3],
            ["podman", "save", "--multi-image-archive"]
        );
        assert!(!podman.argv().contains(&"--platform".to_owned()));
        let build = plan
            .iter()
            .find(|s| s.argv().get(1).is_some_and(|a| a == "build"))
            .unwrap();
        assert_eq!(for_engine(build, Engine::Podman).argv()[0], "podman");
        let kind = plan.iter().find(|s| s.runs("kind")).unwrap();
        assert_eq!(for_engine(kind, Engine::Podman), *kind);
    }

    /// The kind cluster: the pinned name and node image, the UI's NodePort on the host port
    /// `ui_url` names.
    #[test]
    fn the_cluster_config_matches_the_pins_and_the_ui_port() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let read = |rel: &str| -> serde_json::Value {
            serde_yaml_ng::from_str(
                &std::fs::read_to_string(crate::project_root().join(rel)).unwrap(),
            )
            .unwrap()
        };
        let cluster = read("manifests/kind/cluster.yaml");
        assert_eq!(cluster["name"], pins.kind.cluster_name.as_str());
        let node = format!(
            "{}@{}",
            pins.kind.node_image,
            pins.kind.node_digest.as_deref().unwrap()
        );
        for n in cluster["nodes"].as_array().unwrap() {
            assert_eq!(n["image"], node.as_str());
        }
        let mapping = &cluster["nodes"][0]["extraPortMappings"][0];
        assert_eq!(
            (
                mapping["containerPort"].as_u64(),
                mapping["hostPort"].as_u64()
            ),
            (Some(u64::from(UI_NODE_PORT)), Some(u64::from(UI_HOST_PORT)))
        );
        let frontend =
            std::fs::read_to_string(crate::project_root().join("manifests/frontend/frontend.yaml"))
                .unwrap();
        let service = serde_yaml_ng::Deserializer::from_str(&frontend)
            .map(|d| <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap())
            .find(|o| o["kind"] == "Service")
            .unwrap();
        assert_eq!(service["spec"]["ports"][0]["nodePort"], UI_NODE_PORT);
    }
}
