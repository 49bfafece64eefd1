//! The kind layer against a real kube-apiserver of the pinned release with no nodes
//! (`checks::apiserver`): the kubectl steps of both plans — `up` on kind and `up --context …
//! --registry …` — with warnings as errors, each run twice (a second `up` must succeed and
//! change no workload); RBAC as the API server decides it; then the scenarios' kubectl paths
//! (the RBAC policy switch, the rogue pod and PodSecurity admission, scaling down). Steps that
//! need Docker or a running pod (`kind`, `docker`, `exec`, `rollout status`) cannot run here and
//! are left out. SPIRE's side follows in `checks::attestation`.

use anyhow::{Context, bail, ensure};
use contract::NAMESPACE;
use serde_json::Value;
use xshell::Shell;

use super::apiserver::ApiServer;
use crate::lab::{Component, Lab, Policy};
use crate::pins::Pins;
use crate::runtime::kind::plan::{self, Action, ImageBuild, Step, Target, pushed};
use crate::runtime::kind::{self, KindLab};

/// Every phase, on one API server.
pub fn check_against_apiserver(sh: &Shell, kube: &crate::deps::KubeTools) -> anyhow::Result<()> {
    let root = crate::project_root();
    let pins = Pins::load(&root)?;
    let existing = "lab-existing-cluster";
    let kind_context = format!("{}{}", plan::CONTEXT_PREFIX, pins.kind.cluster_name);
    let api = ApiServer::start(&kube.kube_api, &[&kind_context, existing])?;
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
    // xtask's own steps call `kubectl` by name: this server's.
    let path = std::env::join_paths(
        api.kubectl
            .parent()
            .into_iter()
            .map(std::path::Path::to_owned)
            .chain(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            )),
    )?;
    let _path = sh.push_env("PATH", path);
    let rendered = super::manifests::render(sh, &kube.kustomize)?;
    let mut lab = KindLab::attach(&api.kubectl, &api.kubeconfig, &api.contexts[0]);

    plans_run_twice(sh, &api, &lab, &pins, existing, rendered.len())?;
    pod_security_warnings_fail(&lab, &rendered)?;
    rbac_as_the_apiserver_decides(&api)?;
    policy_switch(&mut lab)?;
    rogue_pod(&lab)?;
    scale_down(&mut lab)?;
    super::attestation::check_attestation_against_apiserver(&api, &rendered)
}

/// Both plans' API steps, with warnings as errors, twice each: every object stored, the
/// backend's image the target's, and the second run changing no workload.
fn plans_run_twice(
    sh: &Shell,
    api: &ApiServer,
    lab: &KindLab,
    pins: &Pins,
    existing: &str,
    rendered: usize,
) -> anyhow::Result<()> {
    let registry = "registry.example/spire-lab";
    let manifests = crate::project_root()
        .join("manifests")
        .display()
        .to_string();
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
        let steps = api_steps(api, pins, &target);
        let up = || -> anyhow::Result<()> {
            for s in &steps {
                kind::run_step(sh, s, true).with_context(|| format!("{name}: {} ({s})", s.what))?;
            }
            Ok(())
        };
        up()?;
        let before = generations()?;
        // The SPIRE side's five (datastore, server, agent, CSI driver, OIDC discovery provider)
        // and the demo's five (OpenBao among them).
        ensure!(
            before.len() == 10,
            "expected 10 workloads, the API server holds {before:?}"
        );
        let secrets = || -> anyhow::Result<String> {
            lab.run(&[
                "-n",
                "spire-system",
                "get",
                "secret",
                "spire-db",
                "spire-db-tls",
                "-o",
                "jsonpath={range .items[*]}{.metadata.uid} {end}",
            ])
        };
        let made = secrets()?;
        ensure!(
            made.split_whitespace().count() == 2,
            "{name}: the datastore's Secrets were not made: {made:?}"
        );
        let stored = lab
            .run(&["get", "-k", &manifests, "-o", "name"])?
            .lines()
            .count();
        ensure!(
            stored == rendered,
            "the API server holds {stored} of the {rendered} rendered objects"
        );
        let running = lab.run(&[
            "-n",
            NAMESPACE,
            "get",
            "deployment/backend",
            "-o",
            "jsonpath={.spec.template.spec.containers[?(@.name==\"backend\")].image}",
        ])?;
        ensure!(
            running == image,
            "{name}: the backend runs {running:?}, not {image}"
        );
        up()?;
        let after = generations()?;
        ensure!(
            after == before,
            "{name} a second time changed workloads: {before:?} → {after:?}"
        );
        ensure!(
            secrets()? == made,
            "{name} a second time made the datastore's Secrets again"
        );
        println!(
            "{name}: its {} API steps pass with warnings as errors, all {stored} objects are stored (admitted and validated), the backend's image is {image}; run again, it changes no workload",
            steps.len()
        );
    }
    Ok(())
}

/// The plan's steps that need only the Kubernetes API, with this server's kubectl and warnings
/// as errors.
fn api_steps(api: &ApiServer, pins: &Pins, target: &Target) -> Vec<Step> {
    plan::plan(pins, ImageBuild::Nix, target)
        .into_iter()
        .filter(|s| {
            s.runs("kubectl")
                || matches!(
                    s.action,
                    Action::WriteRegistryOverlay { .. } | Action::DatastoreSecrets { .. }
                )
        })
        .filter(|s| !s.argv().iter().any(|a| a == "exec" || a == "rollout"))
        .map(|mut s| {
            if let Action::Command(argv) = &mut s.action {
                argv[0] = api.kubectl.display().to_string();
                argv.insert(1, "--warnings-as-errors".into());
            }
            s
        })
        .collect()
}

/// Warnings do fail a step: PodSecurity only warns about a workload's pod template.
fn pod_security_warnings_fail(lab: &KindLab, rendered: &[Value]) -> anyhow::Result<()> {
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
        Err(e) => ensure!(
            e.to_string().contains("would violate PodSecurity"),
            "a frontend on the host network was refused for another reason: {e:#}"
        ),
    }
    println!(
        "a Deployment whose pods PodSecurity would refuse fails its apply (warnings as errors)"
    );
    Ok(())
}

/// What SPIRE's Kubernetes plugins call (k8s_psat: token reviews, pods, nodes; k8sbundle: its
/// ConfigMap; the agent's k8s attestor: the kubelet, authorised as nodes/proxy) is granted, and
/// nothing else to anyone in the lab.
fn rbac_as_the_apiserver_decides(api: &ApiServer) -> anyhow::Result<()> {
    let can = |sa: &str, args: &[&str]| -> anyhow::Result<bool> {
        let out = api
            .kubectl()
            .args(["auth", "can-i"])
            .args(args)
            .args(["--as", &format!("system:serviceaccount:{sa}")])
            .output()?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
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
        ensure!(can(sa, args)?, "{sa} may not {}", args.join(" "));
    }
    for (sa, args) in denied {
        ensure!(!can(sa, args)?, "{sa} may {}", args.join(" "));
    }
    println!(
        "RBAC: the {} calls SPIRE's Kubernetes plugins make are granted, {} others are refused",
        granted.len(),
        denied.len()
    );
    Ok(())
}

/// The rbac scenario's switch puts the deny policy into the ConfigMap and back.
fn policy_switch(lab: &mut KindLab) -> anyhow::Result<()> {
    for policy in [Policy::Deny, Policy::AllowFrontend] {
        lab.set_policy(policy)?;
        let held = lab.run(&[
            "-n",
            NAMESPACE,
            "get",
            "configmap/backend-rbac",
            "-o",
            "jsonpath={.data.rbac\\.yaml}",
        ])?;
        let want = std::fs::read_to_string(
            crate::project_root()
                .join("manifests/backend/config")
                .join(policy.file()),
        )?;
        ensure!(
            held == want,
            "backend-rbac does not hold {} after the switch",
            policy.file()
        );
    }
    println!("the rbac scenario's switch puts rbac-deny.yaml into backend-rbac and back");
    Ok(())
}

/// The unregistered scenario's rogue pod is admitted under restricted PodSecurity (and one on
/// the host network is not), reads as "no container has run", and is deleted.
fn rogue_pod(lab: &KindLab) -> anyhow::Result<()> {
    lab.apply_rogue()?;
    let (refusal, holds) = lab.rogue_state()?;
    ensure!(
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
    ensure!(
        instance == Some(format!("{uid}/")),
        "a pod's instance reads {instance:?}, not {uid}/ (no container has run)"
    );
    let mut on_host = super::manifests::scenario_objects()?
        .into_iter()
        .find(|o| o["kind"] == "Pod" && o["metadata"]["name"] == "rogue")
        .context("no rogue pod")?;
    on_host["metadata"]["name"] = "rogue-on-host-network".into();
    on_host["spec"]["hostNetwork"] = true.into();
    match lab.apply_yaml(&on_host.to_string(), &[]) {
        Ok(out) => bail!("PodSecurity admitted a pod on the host network in demo: {out}"),
        Err(e) => ensure!(
            e.to_string()
                .contains("violates PodSecurity \"restricted:latest\""),
            "refused for another reason: {e:#}"
        ),
    }
    lab.delete_rogue_pod()?;
    ensure!(
        lab.run(&["-n", NAMESPACE, "get", "pods", "-o", "name"])?
            .trim()
            .is_empty(),
        "the rogue pod is still there"
    );
    println!(
        "the rogue pod is admitted under restricted PodSecurity and deleted; one on the host network is refused by the API server"
    );
    Ok(())
}

fn scale_down(lab: &mut KindLab) -> anyhow::Result<()> {
    lab.stop(Component::Postgres)?;
    let replicas = lab.run(&[
        "-n",
        NAMESPACE,
        "get",
        "statefulset/postgres",
        "-o",
        "jsonpath={.spec.replicas}",
    ])?;
    ensure!(
        replicas == "0",
        "postgres has {replicas} replicas after stop"
    );
    ensure!(
        lab.instance(Component::Postgres).is_none(),
        "a stopped postgres has an instance"
    );
    println!("stopping PostgreSQL scales its StatefulSet to 0");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The kind layer against a real kube-apiserver with no nodes (see `check_against_apiserver`).
    #[test]
    fn plan_and_scenario_paths_work_against_a_real_apiserver() {
        let pins = crate::pins::Pins::load(&crate::project_root()).unwrap();
        let kube = crate::deps::find_kube(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let sh = xshell::Shell::new().unwrap();
        super::check_against_apiserver(&sh, &kube).unwrap_or_else(|e| panic!("{e:#}"));
    }
}
