//! SPIRE's Kubernetes side for real, beside the API server of `checks::kind_layer`: the kind
//! `server.conf` and `agent.conf` (only addresses, paths and the way to the API server changed,
//! see `spire_configs`) run as processes. The server's k8sbundle notifier writes the trust
//! bundle into the `spire-bundle` ConfigMap with the spire-server service account's token; the
//! agent starts from that bundle (what its ConfigMap mount gives it) and attests with a
//! pod-bound spire-agent token for the audience its DaemonSet names, which the server checks
//! with the TokenReview API and the pod and node it names. The plan's registration puts the
//! agent under the cluster's alias. A Node and the agent's Pod are created for it; nothing runs
//! them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};

use super::apiserver::{ApiServer, free_port, write_private};
use crate::pins::Pins;
use crate::procs::{Children, printed, tail, wait_for};
use crate::render::{Edit, Kind, Render, agent_moved, server_moved, text};
use crate::runtime::kind::KindLab;
use crate::runtime::kind::plan::CLUSTER_ALIAS;
use crate::spire::selector_strings;

const NODE: &str = "spire-demo-worker";
const AGENT_POD: &str = "spire-agent-attested";
const WITHIN: Duration = Duration::from_secs(30);

/// The SPIRE server's and agent's kind configs for a run beside a real kube-apiserver with no
/// nodes: the Kubernetes plugins stay — k8s_psat on both sides, k8sbundle, the k8s workload
/// attestor — and only addresses, paths and the way to the API server (a kubeconfig, a token
/// file: what a pod is given implicitly) change.
pub fn spire_configs(
    dir: &Path,
    ports: [u16; 5],
    access: &KubeAccess,
    datastore: Vec<Edit>,
) -> Vec<Render> {
    let [
        server,
        server_health,
        server_metrics,
        agent_health,
        agent_metrics,
    ] = ports;
    let kube_access = |after: &str, key: &str, indent: &str, path: &Path| -> Edit {
        text(
            Kind::KubeAccess,
            after,
            format!("{after}\n{indent}{key} = \"{}\"", path.display()),
        )
    };
    let p = |rel: &str| dir.join(rel);
    vec![
        Render {
            source: "spire/config/server.conf",
            target: "server.conf".into(),
            edits: [
                server_moved(
                    "127.0.0.1",
                    server,
                    server_health,
                    server_metrics,
                    &p("server.sock"),
                    &p("server-data"),
                ),
                datastore,
                vec![
                    kube_access(
                        "service_account_allow_list = [\"spire-system:spire-agent\"]",
                        "kube_config_file",
                        "                    ",
                        &access.kubeconfig,
                    ),
                    kube_access(
                        "config_map = \"spire-bundle\"",
                        "kube_config_file_path",
                        "            ",
                        &access.kubeconfig,
                    ),
                ],
            ]
            .concat(),
        },
        Render {
            source: "spire/config/agent.conf",
            target: "agent.conf".into(),
            edits: [
                agent_moved(
                    "127.0.0.1",
                    server,
                    agent_health,
                    agent_metrics,
                    &p("agent.sock"),
                    &p("agent-data"),
                    &p("bundle.crt"),
                ),
                vec![
                    kube_access(
                        "cluster = \"spire-demo\"",
                        "token_path",
                        "            ",
                        &access.psat,
                    ),
                    kube_access(
                        "node_name_env = \"MY_NODE_NAME\"",
                        "token_path",
                        "            ",
                        &access.sa_token,
                    ),
                ],
            ]
            .concat(),
        },
    ]
}

/// What a pod is given to reach the API server, as files: the server's kubeconfig (with the
/// spire-server service account's token), the agent's pod-bound projected token, and the
/// agent's own service account token.
pub struct KubeAccess {
    pub kubeconfig: PathBuf,
    pub psat: PathBuf,
    pub sa_token: PathBuf,
}

pub fn check_attestation_against_apiserver(
    api: &ApiServer,
    rendered: &[Value],
) -> anyhow::Result<()> {
    let pins = Pins::load(&crate::project_root())?;
    let tools = crate::deps::find(&pins)?;
    let lab = KindLab::attach(&api.kubectl, &api.kubeconfig, &api.contexts[0]);
    let audience = agent_pod(&lab, rendered)?;
    // A private (0700) scratch directory; the processes are stopped before it goes.
    let scratch = tempfile::Builder::new()
        .prefix("spire-lab-attest-")
        .tempdir()?;
    let dir = scratch.path();
    let access = tokens(api, &lab, dir, &audience)?;
    let ports = [
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
        free_port()?,
    ];
    let manifests = crate::project_root().join("manifests");
    // The servers' datastore, as the local runtime runs it (the kind configs' own is a Service).
    let datastore = crate::runtime::local::ScratchDatastore::start(free_port()?)?;
    crate::render::write_all(
        &manifests,
        dir,
        &spire_configs(dir, ports, &access, datastore.server_edits()),
    )?;

    let mut children = Children::default();
    let server = Server {
        cli: tools.spire_server.clone(),
        socket: dir.join("server.sock"),
        dir: dir.to_owned(),
        password: datastore.password()?,
    };
    children.0.push(server.start()?);
    bundle_published(&lab, &server)?;
    super::registration::check_registration_with(&server.cli, &server.socket, true)?;
    children.0.push(
        Command::new(&tools.spire_agent)
            .args(["run", "-config"])
            .arg(dir.join("agent.conf"))
            .env("MY_NODE_NAME", NODE)
            .stdout(server.log("agent.log")?)
            .stderr(server.log("agent.log")?)
            .spawn()?,
    );
    agent_attests(&lab, &server, &pins.kind.cluster_name)
}

/// A Node, and the agent's Pod on it from the DaemonSet's template; the audience of the
/// agent's projected token, which must sit where k8s_psat reads it by default.
fn agent_pod(lab: &KindLab, rendered: &[Value]) -> anyhow::Result<String> {
    lab.apply_yaml(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}}).to_string(),
        &[],
    )?;
    let agent = rendered
        .iter()
        .find(|o| o["kind"] == "DaemonSet" && o["metadata"]["name"] == "spire-agent")
        .context("no spire-agent DaemonSet")?;
    let spec = &agent["spec"]["template"]["spec"];
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": AGENT_POD,
            "namespace": "spire-system",
            "labels": agent["spec"]["template"]["metadata"]["labels"],
        },
        "spec": spec,
    });
    pod["spec"]["nodeName"] = NODE.into();
    lab.apply_yaml(&pod.to_string(), &[])
        .context("the agent's pod, from the DaemonSet's template")?;
    let (volume, source) = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|v| {
            let source = v["projected"]["sources"]
                .as_array()?
                .iter()
                .find(|s| s["serviceAccountToken"].is_object())?["serviceAccountToken"]
                .clone();
            Some((v["name"].as_str()?.to_owned(), source))
        })
        .context("the agent has no projected service account token")?;
    let mount = spec["containers"][0]["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == volume.as_str())
        .and_then(|m| m["mountPath"].as_str())
        .context("the agent does not mount its projected token")?;
    let token_at = format!("{mount}/{}", source["path"].as_str().unwrap_or_default());
    ensure!(
        token_at == "/var/run/secrets/tokens/spire-agent",
        "the agent's token is at {token_at}, not where k8s_psat reads it by default"
    );
    Ok(source["audience"]
        .as_str()
        .context("no audience")?
        .to_owned())
}

/// The tokens a pod would be given, from the API server, written 0600 into `dir`.
fn tokens(
    api: &ApiServer,
    lab: &KindLab,
    dir: &Path,
    audience: &str,
) -> anyhow::Result<KubeAccess> {
    let kubectl =
        |args: &[&str]| -> anyhow::Result<String> { Ok(lab.run(args)?.trim().to_owned()) };
    let create_token = |sa: &str, extra: &[&str]| {
        let mut args = vec![
            "-n",
            "spire-system",
            "create",
            "token",
            sa,
            "--duration",
            "1h",
        ];
        args.extend(extra);
        kubectl(&args)
    };
    let server_token = create_token("spire-server", &[])?;
    // Bound to the agent's pod, for the audience its projected volume names.
    let agent_token = create_token(
        "spire-agent",
        &[
            "--audience",
            audience,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            AGENT_POD,
        ],
    )?;
    // And its service account's own token, which the kubelet would mount: the k8s workload
    // attestor loads it when it starts.
    let sa_token = create_token("spire-agent", &[])?;
    let access = KubeAccess {
        kubeconfig: dir.join("kubeconfig"),
        psat: dir.join("psat"),
        sa_token: dir.join("sa-token"),
    };
    write_private(
        &access.kubeconfig,
        api.kubeconfig_with_token(&server_token).as_bytes(),
    )?;
    write_private(&access.psat, agent_token.as_bytes())?;
    write_private(&access.sa_token, sa_token.as_bytes())?;
    Ok(access)
}

/// The SPIRE server of this check: its CLI, admin socket and log directory.
struct Server {
    cli: PathBuf,
    socket: PathBuf,
    dir: PathBuf,
    /// The datastore's, for `-expandEnv`.
    password: String,
}

impl Server {
    fn log(&self, name: &str) -> anyhow::Result<std::process::Stdio> {
        Ok(std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join(name))?
            .into())
    }

    fn logs(&self) -> String {
        format!(
            "server log:\n{}\nagent log:\n{}",
            tail(&self.dir.join("server.log"), 8),
            tail(&self.dir.join("agent.log"), 8)
        )
    }

    /// `spire-server VERB NOUN -socketPath SOCKET REST…`.
    fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.cli)
            .args(&args[..2])
            .arg("-socketPath")
            .arg(&self.socket)
            .args(&args[2..])
            .output()?)
    }

    fn start(&self) -> anyhow::Result<std::process::Child> {
        let child = Command::new(&self.cli)
            .args(["run", "-expandEnv", "-config"])
            .arg(self.dir.join("server.conf"))
            .env("SPIRE_DB_PASSWORD", &self.password)
            .stdout(self.log("server.log")?)
            .stderr(self.log("server.log")?)
            .spawn()?;
        wait_for(WITHIN, || {
            let health = Command::new(&self.cli)
                .args(["healthcheck", "-socketPath"])
                .arg(&self.socket)
                .output()?;
            ensure!(health.status.success(), "{}", printed(&health));
            Ok(())
        })
        .with_context(|| format!("the SPIRE server is not healthy\n{}", self.logs()))?;
        Ok(child)
    }
}

/// The notifier's ConfigMap holds the server's bundle: the agents' bootstrap on kind.
fn bundle_published(lab: &KindLab, server: &Server) -> anyhow::Result<()> {
    let (published, _) = wait_for(WITHIN, || {
        let pem = lab.run(&[
            "-n",
            "spire-system",
            "get",
            "configmap/spire-bundle",
            "-o",
            "jsonpath={.data.bundle\\.crt}",
        ])?;
        ensure!(pem.contains("BEGIN CERTIFICATE"), "no bundle yet");
        Ok(pem)
    })
    .with_context(|| {
        format!(
            "no trust bundle in ConfigMap spire-bundle\n{}",
            server.logs()
        )
    })?;
    let shown = server.cli(&["bundle", "show"])?;
    let der = |pem: &[u8]| -> anyhow::Result<Vec<Vec<u8>>> {
        let mut v: Vec<Vec<u8>> = openssl::x509::X509::stack_from_pem(pem)?
            .iter()
            .map(|c| c.to_der())
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    };
    ensure!(
        der(published.as_bytes())? == der(&shown.stdout)?,
        "ConfigMap spire-bundle does not hold the server's bundle"
    );
    std::fs::write(server.dir.join("bundle.crt"), &published)?;
    println!(
        "k8sbundle: the SPIRE server (kind's server.conf) published its bundle into ConfigMap spire-bundle, as the spire-server service account"
    );
    Ok(())
}

/// The agent attests with k8s_psat; its selectors cover the plan's alias entry.
fn agent_attests(lab: &KindLab, server: &Server, cluster: &str) -> anyhow::Result<()> {
    let node_uid = lab.run(&["get", "node", NODE, "-o", "jsonpath={.metadata.uid}"])?;
    let agent_id = format!(
        "spiffe://example.org/spire/agent/k8s_psat/{cluster}/{}",
        node_uid.trim()
    );
    let (selectors, _) = wait_for(WITHIN, || {
        let out = server.cli(&["agent", "show", "-spiffeID", &agent_id, "-output", "json"])?;
        ensure!(out.status.success(), "{}", printed(&out));
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let agent = if v["agents"].is_array() {
            &v["agents"][0]
        } else {
            &v
        };
        let selectors = selector_strings(&agent["selectors"]);
        ensure!(!selectors.is_empty(), "no selectors yet");
        Ok(selectors)
    })
    .with_context(|| format!("agent {agent_id} did not attest\n{}", server.logs()))?;
    for want in [
        format!("k8s_psat:cluster:{cluster}"),
        "k8s_psat:agent_ns:spire-system".to_owned(),
        "k8s_psat:agent_sa:spire-agent".to_owned(),
        format!("k8s_psat:agent_pod_name:{AGENT_POD}"),
        format!("k8s_psat:agent_node_name:{NODE}"),
    ] {
        ensure!(
            selectors.contains(&want),
            "the agent lacks the selector {want}: {selectors:?}"
        );
    }
    let alias = server.cli(&[
        "entry",
        "show",
        "-spiffeID",
        CLUSTER_ALIAS,
        "-output",
        "json",
    ])?;
    let alias: Value = serde_json::from_slice(&alias.stdout).unwrap_or_default();
    let alias_selectors = selector_strings(&alias["entries"][0]["selectors"]);
    ensure!(
        !alias_selectors.is_empty() && alias_selectors.iter().all(|s| selectors.contains(s)),
        "the agent's selectors do not cover the alias entry's {alias_selectors:?}: the workloads would not reach it"
    );
    println!(
        "k8s_psat: the agent (kind's agent.conf) attested as {agent_id} with a pod-bound token the API server reviewed; its selectors cover the plan's alias entry ({}), under which the workloads are registered",
        alias_selectors.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configs run beside the API server differ from the manifests' only by their edits.
    #[test]
    fn configs_beside_the_apiserver_differ_only_in_addresses_paths_and_kube_access() {
        let access = KubeAccess {
            kubeconfig: "/tmp/lab/kubeconfig".into(),
            psat: "/tmp/lab/psat".into(),
            sa_token: "/tmp/lab/sa-token".into(),
        };
        let datastore = vec![
            text(
                Kind::Address,
                "host=spire-db.spire-system.svc port=5432",
                "host=127.0.0.1 port=4",
            ),
            text(Kind::FilePath, "/run/spire/datastore", "/tmp/lab/datastore"),
        ];
        for r in spire_configs(Path::new("/tmp/lab"), [1, 2, 3, 4, 5], &access, datastore) {
            crate::render::assert_only_edits(&r);
        }
    }
}
