//! The kind layer checked against real components with no cluster: the plan's API steps, RBAC
//! and the scenarios' kubectl paths against a real kube-apiserver with no nodes, SPIRE's
//! Kubernetes plugins (k8s_psat, k8sbundle) beside it, and the plan's registration commands
//! against a real SPIRE server.

use anyhow::{Context, bail};
use xshell::Shell;

use super::{
    CLUSTER_ALIAS, ImageBuild, KindLab, NAMESPACE, SERVER_CLI, Step, Target, WRITE_OVERLAY,
    context, plan, pushed, registrations, run_step,
};
use crate::pins::Pins;

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
    let work = tempfile::Builder::new()
        .prefix("spire-lab-plan-")
        .tempdir()?;
    std::os::unix::fs::symlink(root.join("manifests"), work.path().join("manifests"))?;
    let _dir = sh.push_dir(work.path());
    let _env = sh.push_env("KUBECONFIG", &api.kubeconfig);
    let rendered = crate::kube::render(sh, &kube.kustomize)?;
    let mut lab = KindLab::attach(&api);
    let manifests = root.join("manifests").display().to_string();

    let generations = || -> anyhow::Result<Vec<String>> {
        Ok(lab.run(&[
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
        lab.run(&[
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
        let stored = lab
            .run(&["get", "-k", &manifests, "-o", "name"])?
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
    match lab.apply_yaml(
        &on_host.to_string(),
        &["--warnings-as-errors", "--dry-run=server"],
    ) {
        Ok(out) => bail!("a frontend on the host network was not flagged: {out}"),
        Err(e) => anyhow::ensure!(
            e.to_string().contains("would violate PodSecurity"),
            "a frontend on the host network was refused for another reason: {e:#}"
        ),
    }
    let password = lab.run(&[
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
    match lab.apply_yaml(&on_host.to_string(), &[]) {
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
    let lab = KindLab::attach(api);
    let kubectl =
        |args: &[&str]| -> anyhow::Result<String> { Ok(lab.run(args)?.trim().to_owned()) };
    lab.apply_yaml(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}).to_string(),
        &[],
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
    lab.apply_yaml(&pod.to_string(), &[])
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

    // A private (0700) scratch directory; the processes are stopped before it goes.
    let scratch = tempfile::Builder::new()
        .prefix("spire-lab-attest-")
        .tempdir()?;
    let dir = scratch.path();
    let mut children = crate::procs::Children::default();
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
    for r in crate::render::apiserver_spire_configs(dir, ports, &kubeconfig, &psat, &sa) {
        let src = std::fs::read_to_string(root.join("manifests").join(r.source))?;
        std::fs::write(dir.join(&r.target), crate::render::apply(&src, &r.edits)?)?;
    }
    let log = |name: &str| -> anyhow::Result<std::process::Stdio> {
        Ok(std::fs::File::create(dir.join(name))?.into())
    };
    let logs = || {
        format!(
            "server log:\n{}\nagent log:\n{}",
            crate::procs::tail(&dir.join("server.log"), 8),
            crate::procs::tail(&dir.join("agent.log"), 8)
        )
    };
    let within = std::time::Duration::from_secs(30);
    let socket = dir.join("server.sock");
    let spire_server = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(std::process::Command::new(&tools.spire_server)
            .args(&args[..2])
            .arg("-socketPath")
            .arg(&socket)
            .args(&args[2..])
            .output()?)
    };
    children.0.push(
        std::process::Command::new(&tools.spire_server)
            .args(["run", "-config"])
            .arg(dir.join("server.conf"))
            .stdout(log("server.log")?)
            .stderr(log("server.log")?)
            .spawn()?,
    );
    crate::procs::wait_for(within, || {
        let health = std::process::Command::new(&tools.spire_server)
            .args(["healthcheck", "-socketPath"])
            .arg(&socket)
            .output()?;
        anyhow::ensure!(
            health.status.success(),
            "{}",
            crate::procs::printed(&health)
        );
        Ok(())
    })
    .with_context(|| format!("the SPIRE server is not healthy\n{}", logs()))?;

    // The notifier's ConfigMap holds the server's bundle: the agents' bootstrap on kind.
    let (published, _) = crate::procs::wait_for(within, || {
        let pem = kubectl(&[
            "-n",
            "spire-system",
            "get",
            "configmap/spire-bundle",
            "-o",
            "jsonpath={.data.bundle\\.crt}",
        ])?;
        anyhow::ensure!(pem.contains("BEGIN CERTIFICATE"), "no bundle yet");
        Ok(pem)
    })
    .with_context(|| format!("no trust bundle in ConfigMap spire-bundle\n{}", logs()))?;
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
    children.0.push(
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
    let (selectors, _) = crate::procs::wait_for(within, || {
        let out = spire_server(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])?;
        anyhow::ensure!(out.status.success(), "{}", crate::procs::printed(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let agent = if v["agents"].is_array() {
            &v["agents"][0]
        } else {
            &v
        };
        let selectors = selector_strings(&agent["selectors"]);
        anyhow::ensure!(!selectors.is_empty(), "no selectors yet");
        Ok(selectors)
    })
    .with_context(|| format!("agent {agent_id} did not attest\n{}", logs()))?;

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

/// Every `kind` command `up` and `down` run is one the pinned kind CLI takes: its subcommand
/// exists and it knows every flag (cobra refuses an unknown flag before `--help` prints the
/// usage). Returns how many commands were checked.
pub fn check_kind_commands(kind: &std::path::Path) -> anyhow::Result<usize> {
    let pins = Pins::load(&crate::project_root())?;
    let mut argvs: Vec<Vec<String>> = [ImageBuild::Nix, ImageBuild::Dockerfile]
        .into_iter()
        .flat_map(|b| plan(&pins, b, &Target::Kind))
        .filter(|s| s.argv[0] == "kind")
        .map(|s| s.argv[1..].to_vec())
        .collect();
    argvs.sort();
    argvs.dedup();
    let name = pins.kind.cluster_name.clone();
    argvs.push(vec!["get".into(), "clusters".into()]);
    argvs.push(vec![
        "delete".into(),
        "cluster".into(),
        "--name".into(),
        name,
    ]);
    for argv in &argvs {
        let out = std::process::Command::new(kind)
            .args(argv)
            .arg("--help")
            .output()
            .with_context(|| format!("run {}", kind.display()))?;
        let said = crate::procs::printed(&out);
        anyhow::ensure!(
            out.status.success() && said.contains("Usage:"),
            "kind {}: {}",
            argv.join(" "),
            said.trim()
        );
    }
    Ok(argvs.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan's kind commands pass the pinned kind's flag parsing; a misspelt flag does not.
    #[test]
    fn the_plans_kind_commands_are_known_to_the_pinned_kind() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let kube = crate::deps::find_kube(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let n = check_kind_commands(&kube.kind).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(n >= 4, "only {n} kind commands");
        let out = std::process::Command::new(&kube.kind)
            .args(["load", "image-archive", "--nam", "x", "--help"])
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    /// The kind layer against a real kube-apiserver with no nodes (see `check_against_apiserver`).
    #[test]
    fn plan_and_scenario_paths_work_against_a_real_apiserver() {
        let pins = Pins::load(&crate::project_root()).unwrap();
        let kube = crate::deps::find_kube(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let sh = Shell::new().unwrap();
        check_against_apiserver(&sh, &kube).unwrap_or_else(|e| panic!("{e:#}"));
    }
}
