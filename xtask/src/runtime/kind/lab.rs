//! `KindLab`, the scenarios' handle on the lab on kind: kubectl for changes, port-forwards for
//! looking, `docker exec` into a kind node to freeze a spiffe-helper.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use contract::{Holder, NAMESPACE};
use xshell::{Shell, cmd};

use super::plan::{CLUSTER_ALIAS, account_selectors, registrations};
use super::{Placement, Stop, context, placement};
use crate::lab::{Capabilities, Component, Holding, Lab, Minted, PodListener, Policy, Reach};
use crate::procs::wait_for;
use crate::spire::{self, Entry};

/// Local ports where `kubectl port-forward` exposes what scenarios look at inside the pods.
const FWD_FRONTEND_ADMIN: u16 = 19901;
const FWD_BACKEND_ADMIN: u16 = 19902;
const FWD_BACKEND_MTLS: u16 = 18443;
const FWD_BACKEND_HEALTH: u16 = 19091;
const FWD_POSTGRES: u16 = 15433;
const FWD_LEDGER_HEALTH: u16 = 18444;
const FWD_LEDGER_MTLS: u16 = 18445;
/// Where SPIRE servers and agents serve their telemetry (manifests/spire/config/*.conf).
const SPIRE_METRICS_PORT: u16 = 9988;

/// The rogue of the `unregistered` scenario: a pod with service account `rogue`.
const ROGUE_MANIFEST: &str = "manifests/scenarios/rogue.yaml";
/// The insider of the `security` scenario: a pod of no workload, with bash.
const INSIDER_MANIFEST: &str = "manifests/scenarios/insider.yaml";

/// Where each pod-private listener is: the pod's `app` label and the port it binds on the pod's
/// loopback (the manifests' Envoy configs and the backend's `--listen`).
fn pod_port(l: PodListener) -> (&'static str, u16) {
    match l {
        PodListener::BackendEnvoyMtls => ("backend", 8443),
        PodListener::BackendApi => ("backend", 9090),
        PodListener::BackendEnvoyAdmin => ("backend", 9901),
        PodListener::FrontendEnvoyAdmin => ("frontend", 9901),
        PodListener::FrontendEnvoyOutbound => ("frontend", 8001),
    }
}

/// One `kubectl port-forward` of one port (one process each: kubectl ends the whole process
/// when one of its forwarded connections is refused).
struct Forward {
    target: &'static str,
    local: u16,
    remote: u16,
    child: Option<std::process::Child>,
}

impl Forward {
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What scenarios look at inside the pods, each on a local port.
fn forwards() -> Vec<Forward> {
    [
        ("deployment/frontend", FWD_FRONTEND_ADMIN, 9901),
        ("deployment/backend", FWD_BACKEND_ADMIN, 9901),
        ("deployment/backend", FWD_BACKEND_MTLS, 8443),
        ("deployment/backend", FWD_BACKEND_HEALTH, 9091),
        ("statefulset/postgres", FWD_POSTGRES, 5432),
        ("deployment/ledger", FWD_LEDGER_HEALTH, 8081),
        ("deployment/ledger", FWD_LEDGER_MTLS, 8443),
    ]
    .into_iter()
    .map(|(target, local, remote)| Forward {
        target,
        local,
        remote,
        child: None,
    })
    .collect()
}

/// Whether a socket listens on 127.0.0.1:`port` (from /proc/net/tcp: connecting to a
/// port-forward to find out would open a forwarded connection).
fn listening(port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == wanted && f[3] == "0A"
        })
    })
}

/// A process the scenario froze with SIGSTOP: the kind node (a container) and its pid there.
struct Frozen {
    component: Component,
    node: String,
    pid: String,
}

/// The running lab on kind, for scenarios: kubectl for changes, port-forwards for looking.
pub struct KindLab {
    ctx: String,
    /// `kubectl` from PATH, and the user's kubeconfig; in tests, a real API server's.
    kubectl: std::path::PathBuf,
    kubeconfig: Option<std::path::PathBuf>,
    forwards: std::cell::RefCell<Vec<Forward>>,
    /// Where the rogue's SVID was copied out of its pod.
    rogue_dir: Option<tempfile::TempDir>,
    frozen: Vec<Frozen>,
    /// The lab's own Docker engine when the cluster runs on it (the offline path).
    docker_host: Option<String>,
}

impl KindLab {
    pub fn open(sh: &Shell) -> anyhow::Result<KindLab> {
        let docker_host = super::offline::attach(sh);
        let kubectl = super::tools_on_path(sh)?;
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
            kubectl,
            kubeconfig: None,
            forwards: std::cell::RefCell::new(forwards()),
            rogue_dir: None,
            frozen: Vec::new(),
            docker_host,
        };
        lab.forward()?;
        Ok(lab)
    }

    /// The handle on a cluster without pods to forward to (the checks' API server with no
    /// nodes): `kubectl` and `kubeconfig` given, context `ctx`.
    pub fn attach(kubectl: &std::path::Path, kubeconfig: &std::path::Path, ctx: &str) -> KindLab {
        KindLab {
            ctx: ctx.to_owned(),
            kubectl: kubectl.to_owned(),
            kubeconfig: Some(kubeconfig.to_owned()),
            forwards: std::cell::RefCell::new(Vec::new()),
            rogue_dir: None,
            frozen: Vec::new(),
            docker_host: None,
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

    /// `kubectl FLAGS… apply -f -` of `yaml` (or JSON): what kubectl printed, or its error.
    pub fn apply_yaml(&self, yaml: &str, flags: &[&str]) -> anyhow::Result<String> {
        let mut apply = self
            .kubectl()
            .args(flags)
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

    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.kubectl().args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Restarts every port-forward (the pods behind them changed).
    fn forward(&mut self) -> anyhow::Result<()> {
        for f in self.forwards.get_mut().iter_mut() {
            f.stop();
        }
        self.ensure_forwarded()
    }

    /// Starts each port-forward that does not run (kubectl ends a port-forward when a forwarded
    /// connection is refused inside the pod, as while a component restarts), and waits until
    /// its local port listens.
    fn ensure_forwarded(&self) -> anyhow::Result<()> {
        for f in self.forwards.borrow_mut().iter_mut() {
            if f.running() {
                continue;
            }
            f.stop();
            let mut c = self.kubectl();
            c.args(["-n", NAMESPACE, "port-forward", f.target])
                .arg(format!("{}:{}", f.local, f.remote))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            f.child = Some(c.spawn()?);
            let local = f.local;
            wait_for(Duration::from_secs(30), || {
                anyhow::ensure!(listening(local), "nothing listens on 127.0.0.1:{local}");
                Ok(())
            })
            .with_context(|| format!("kubectl port-forward {} {local}", f.target))?;
        }
        Ok(())
    }

    /// A spiffe-helper (a native sidecar) cannot be stopped alone by Kubernetes, and SIGSTOP
    /// from inside its pod would not reach it (it is PID 1 of its PID namespace). The kind node
    /// is a container holding every pod's processes: SIGSTOP from there freezes the helper and
    /// nothing else, and SIGCONT resumes it.
    fn freeze(&mut self, c: Component) -> anyhow::Result<()> {
        let p = placement(c);
        let (ns, container, app) = (p.namespace, p.container, p.app());
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
        let pid = self
            .docker_exec(
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
        self.signal(&node, &pid, "STOP")?;
        println!("      froze {app}'s {container} (pid {pid} on {node})");
        self.frozen.push(Frozen {
            component: c,
            node,
            pid,
        });
        Ok(())
    }

    fn thaw(&mut self, c: Component) -> anyhow::Result<()> {
        for f in self.frozen.iter().filter(|f| f.component == c) {
            self.signal(&f.node, &f.pid, "CONT")?;
        }
        self.frozen.retain(|f| f.component != c);
        Ok(())
    }

    /// The rogue pod now: the agent's refusal if its fetch failed at least once, and whether
    /// it holds an SVID (its client container runs).
    pub fn rogue_state(&self) -> anyhow::Result<(Option<String>, bool)> {
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
    pub fn pod_instance(&self, ns: &str, app: &str, container: &str) -> Option<String> {
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

    pub fn apply_rogue(&self) -> anyhow::Result<()> {
        let manifest = crate::project_root().join(ROGUE_MANIFEST);
        self.run(&["apply", "-f", &manifest.display().to_string()])?;
        Ok(())
    }

    pub fn delete_rogue_pod(&self) -> anyhow::Result<()> {
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

    /// The first pod's IP of workload `app`.
    fn pod_ip(&self, app: &str) -> anyhow::Result<String> {
        let ip = self.run(&[
            "-n",
            NAMESPACE,
            "get",
            "pod",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])?;
        anyhow::ensure!(!ip.trim().is_empty(), "the {app} pod has no IP");
        Ok(ip.trim().to_owned())
    }

    /// Tries each target from the insider pod, which must be running.
    fn reach_from_insider(
        &self,
        targets: &[PodListener],
    ) -> anyhow::Result<Vec<(PodListener, Reach)>> {
        let mut out = Vec::new();
        for &l in targets {
            let (app, port) = pod_port(l);
            let addr = format!("{}:{port}", self.pod_ip(app)?);
            let (ip, port) = addr.split_once(':').context("ip:port")?;
            let script = format!(
                "timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}' 2>&1 && echo CONNECTED || echo \"exit $?\""
            );
            let said = self.run(&[
                "-n", NAMESPACE, "exec", "insider", "-c", "shell", "--", "bash", "-c", &script,
            ])?;
            let said = said.trim().to_owned();
            out.push((
                l,
                if said.ends_with("CONNECTED") {
                    Reach::Connected { addr }
                } else {
                    Reach::Refused {
                        addr,
                        reason: said
                            .lines()
                            .find(|l| !l.is_empty())
                            .unwrap_or_default()
                            .trim_start_matches("bash: ")
                            .to_owned(),
                    }
                },
            ));
        }
        Ok(out)
    }

    fn entry_ids(&self, spiffe_id: &str) -> anyhow::Result<Vec<String>> {
        spire::entry_ids(&self.server_exec(
            None,
            &["entry", "show", "-spiffeID", spiffe_id, "-output", "json"],
        )?)
    }
}

impl KindLab {
    /// Runs a command inside a kind node (a Docker container) and returns what it printed.
    fn docker_exec(&self, node: &str, argv: &[&str]) -> anyhow::Result<String> {
        let mut docker = std::process::Command::new(super::container_cli());
        if let Some(host) = &self.docker_host {
            docker.env("DOCKER_HOST", host);
        }
        let out = docker
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

    /// `spire-server ARGS…` in replica `replica`'s pod, or in the first replica whose pod
    /// answers.
    fn server_exec(&self, replica: Option<u8>, args: &[&str]) -> anyhow::Result<String> {
        let replicas: Vec<u8> = match replica {
            Some(r) => vec![r],
            None => (0..crate::lab::SERVER_REPLICAS).collect(),
        };
        let mut last = None;
        for r in replicas {
            let pod = format!("spire-server-{r}");
            let mut argv = vec![
                "-n",
                "spire-system",
                "exec",
                &pod,
                "-c",
                "spire-server",
                "--",
            ];
            argv.push("/opt/spire/bin/spire-server");
            argv.extend_from_slice(args);
            match self.run(&argv) {
                Ok(out) => return Ok(out),
                Err(e) => {
                    // Only a pod that is not there (or not running) means: try the next one.
                    let text = format!("{e:#}");
                    let absent = [
                        "not found",
                        "is not running",
                        "unable to upgrade",
                        "container not found",
                        "does not have a host",
                    ]
                    .iter()
                    .any(|m| text.contains(m));
                    if !absent {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no SPIRE server replica")))
    }

    /// The uid of pod `name` and its containers' restarts (an instance), or None.
    fn named_pod_instance(&self, ns: &str, name: &str) -> Option<String> {
        self.run(&[
            "-n",
            ns,
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.metadata.uid}/{.status.containerStatuses[*].restartCount}",
        ])
        .ok()
        .filter(|s| !s.trim().is_empty())
    }

    /// The agent pod on the node where `w`'s pod runs.
    fn agent_pod_of(&self, w: contract::Workload) -> anyhow::Result<String> {
        let app = w.service_account();
        let node = self.run(&[
            "-n",
            NAMESPACE,
            "get",
            "pod",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={.items[0].spec.nodeName}",
        ])?;
        let agent = self.run(&[
            "-n",
            "spire-system",
            "get",
            "pod",
            "-l",
            "app=spire-agent",
            "--field-selector",
            &format!("spec.nodeName={}", node.trim()),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])?;
        anyhow::ensure!(!agent.trim().is_empty(), "no agent on node {node}");
        Ok(agent.trim().to_owned())
    }

    /// Waits until pod `name` exists, is Ready, and is not the instance `before`.
    fn wait_pod_ready(&self, ns: &str, name: &str, before: Option<&str>) -> anyhow::Result<()> {
        wait_for(Duration::from_secs(180), || {
            let now = self.named_pod_instance(ns, name);
            anyhow::ensure!(
                now.is_some()
                    && now.as_deref().map(|n| n.split('/').next())
                        != before.map(|b| b.split('/').next()),
                "pod {name} is not back yet"
            );
            let ready = self.run(&[
                "-n",
                ns,
                "get",
                "pod",
                name,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])?;
            anyhow::ensure!(ready.trim() == "True", "pod {name} is not ready");
            Ok(())
        })
        .map(drop)
    }

    /// Sends SIG`sig` to a process of a kind node, from the node's own PID namespace.
    fn signal(&self, node: &str, pid: &str, sig: &str) -> anyhow::Result<()> {
        self.docker_exec(node, &["sh", "-c", "kill -s \"$0\" \"$1\"", sig, pid])?;
        Ok(())
    }
}

impl Drop for KindLab {
    fn drop(&mut self) {
        // Never leave a frozen helper behind, whatever happened to the scenario.
        for f in &self.frozen {
            let _ = self.signal(&f.node, &f.pid, "CONT");
        }
        // The port-forwards stop and the rogue's directory goes as the fields are dropped.
    }
}

impl Lab for KindLab {
    fn label(&self) -> &'static str {
        "kind runtime"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            readiness_gates_traffic: true,
            // A ConfigMap reaches the pod's volume on the kubelet's next sync (about a minute).
            policy_propagation: Duration::from_secs(90),
            shared_loopback: None,
        }
    }

    fn frontend_url(&self) -> String {
        super::ui_url()
    }

    fn envoy_admin_url(&self, backend: bool) -> String {
        let _ = self.ensure_forwarded();
        format!(
            "http://127.0.0.1:{}",
            if backend {
                FWD_BACKEND_ADMIN
            } else {
                FWD_FRONTEND_ADMIN
            }
        )
    }

    fn stop(&mut self, c: Component) -> anyhow::Result<()> {
        let p = placement(c);
        match p.stop {
            Stop::Freeze => return self.freeze(c),
            Stop::No => bail!("stopping {} alone is not possible on kind", c.name()),
            Stop::Ordinal(r) => {
                let count = r.to_string();
                self.run(&[
                    "-n",
                    p.namespace,
                    "scale",
                    p.workload,
                    &format!("--replicas={count}"),
                ])?;
                self.run(&[
                    "-n",
                    p.namespace,
                    "wait",
                    "--for=delete",
                    &format!("pod/{}-{r}", p.app()),
                    "--timeout=120s",
                ])?;
                return Ok(());
            }
            Stop::Scale => {}
        }
        let Placement {
            namespace: ns,
            workload: target,
            ..
        } = p;
        let app = p.app();
        self.run(&["-n", ns, "scale", target, "--replicas=0"])?;
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

    fn start(&mut self, c: Component) -> anyhow::Result<()> {
        let p = placement(c);
        match p.stop {
            Stop::Freeze => return self.thaw(c),
            // An agent killed with its pod: the DaemonSet brings a new one.
            Stop::No if matches!(c, Component::Agent(_)) => {
                self.run(&[
                    "-n",
                    p.namespace,
                    "rollout",
                    "status",
                    p.workload,
                    "--timeout=180s",
                ])?;
                return Ok(());
            }
            Stop::No => bail!("starting {} alone is not possible on kind", c.name()),
            Stop::Ordinal(r) => {
                let current: u8 = self
                    .run(&[
                        "-n",
                        p.namespace,
                        "get",
                        p.workload,
                        "-o",
                        "jsonpath={.spec.replicas}",
                    ])?
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if current <= r {
                    self.run(&[
                        "-n",
                        p.namespace,
                        "scale",
                        p.workload,
                        &format!("--replicas={}", r + 1),
                    ])?;
                }
                return self.wait_pod_ready(p.namespace, &format!("{}-{r}", p.app()), None);
            }
            Stop::Scale => {}
        }
        let (ns, target) = (p.namespace, p.workload);
        self.run(&["-n", ns, "scale", target, "--replicas=1"])?;
        if c == Component::OpenBao {
            // Sealed at every start: ready only once unsealed.
            super::openbao::unseal_and_configure(&|| self.kubectl())?;
        }
        self.run(&["-n", ns, "rollout", "status", target, "--timeout=180s"])?;
        self.forward()
    }

    fn instance(&self, c: Component) -> Option<String> {
        if self.frozen.iter().any(|f| f.component == c) {
            return None;
        }
        let p = placement(c);
        match p.stop {
            Stop::Ordinal(r) => self.named_pod_instance(p.namespace, &format!("{}-{r}", p.app())),
            _ => self.pod_instance(p.namespace, p.app(), p.container),
        }
    }

    fn set_policy(&mut self, p: Policy) -> anyhow::Result<()> {
        let from = format!(
            "--from-file=rbac.yaml={}",
            crate::project_root()
                .join("manifests/backend/config")
                .join(p.file())
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
        self.apply_yaml(&yaml, &[])
            .context("kubectl apply of the RBAC policy")?;
        // The kubelet refreshes a ConfigMap volume on its next sync of the pod, up to a minute
        // or two later; a change to the pod's annotations makes that sync happen now. Nothing
        // restarts: Envoy notices the new file itself, as it does locally.
        let stamp = format!(
            "spire-lab/rbac-policy={}-{}",
            p.file().trim_end_matches(".yaml"),
            contract::time::unix_now()
        );
        self.run(&[
            "-n",
            NAMESPACE,
            "annotate",
            "pod",
            "-l",
            "app=backend",
            &stamp,
            "--overwrite",
        ])?;
        Ok(())
    }

    fn set_svid_ttl(&mut self, ttl: Option<u32>) -> anyhow::Result<()> {
        for e in registrations() {
            let args = e.args(Some(ttl.unwrap_or(0)));
            for id in self.entry_ids(&e.spiffe_id)? {
                let mut argv = vec!["entry", "update", "-entryID", &id];
                argv.extend(args.iter().map(String::as_str));
                self.server_exec(None, &argv)?;
            }
        }
        Ok(())
    }

    fn log(&self, c: Component) -> anyhow::Result<String> {
        let p = placement(c);
        self.run(&[
            "-n",
            p.namespace,
            "logs",
            p.workload,
            "-c",
            p.container,
            "--tail",
            "-1",
        ])
    }

    fn trust_bundle(&self) -> anyhow::Result<Vec<openssl::x509::X509>> {
        let pem = self.server_exec(None, &["bundle", "show"])?;
        Ok(openssl::x509::X509::stack_from_pem(pem.as_bytes())?)
    }

    fn holdings(&self) -> Vec<anyhow::Result<Holding>> {
        let _ = self.ensure_forwarded();
        // The backend's files live in its pod: its own /api/identity, through the frontend.
        let files = || -> anyhow::Result<Holding> {
            let (_, body) = crate::probe::get(&format!("{}/api/identity", self.frontend_url()))?;
            let panel: contract::IdentityPanel = serde_json::from_str(&body)
                .with_context(|| format!("the identity panel does not read: {body}"))?;
            let h = panel
                .get(Holder::BackendFiles)
                .context("no backend in the identity panel")?;
            Ok(Holding {
                holder: Holder::BackendFiles,
                spiffe_id: h.spiffe_id.clone(),
                serial: h
                    .serial
                    .clone()
                    .context("the backend's serial is unknown")?,
                seconds_left: h.seconds_left,
            })
        };
        vec![
            Holding::of_envoy(Holder::FrontendEnvoy, &self.envoy_admin_url(false)),
            Holding::of_envoy(Holder::BackendEnvoy, &self.envoy_admin_url(true)),
            files(),
            Holding::of_postgres(&format!("127.0.0.1:{FWD_POSTGRES}")),
            Holding::of_ledger(&format!("127.0.0.1:{FWD_LEDGER_HEALTH}")),
        ]
    }

    fn trusted_cas(&self) -> Vec<(Holder, anyhow::Result<Vec<String>>)> {
        let _ = self.ensure_forwarded();
        let envoy = |backend| -> anyhow::Result<Vec<String>> {
            Ok(crate::probe::envoy_certs(&self.envoy_admin_url(backend))?.ca_serials())
        };
        // The bundle files, from the containers that mount them.
        let file = |app: &str, container: &str| -> anyhow::Result<Vec<String>> {
            let pem = self.run(&[
                "-n",
                NAMESPACE,
                "exec",
                &format!("deploy/{app}"),
                "-c",
                container,
                "--",
                "cat",
                "/spiffe-certs/svid_bundle.pem",
            ]);
            let pem = match pem {
                Ok(p) => p,
                Err(_) => self.run(&[
                    "-n",
                    NAMESPACE,
                    "exec",
                    &format!("statefulset/{app}"),
                    "-c",
                    container,
                    "--",
                    "cat",
                    "/spiffe-certs/svid_bundle.pem",
                ])?,
            };
            Ok(openssl::x509::X509::stack_from_pem(pem.as_bytes())?
                .iter()
                .map(|c| svid::serial_hex(c))
                .collect())
        };
        vec![
            (Holder::FrontendEnvoy, envoy(false)),
            (Holder::BackendEnvoy, envoy(true)),
            (Holder::BackendFiles, file("backend", "backend")),
            (Holder::PostgresServer, file("postgres", "postgres")),
            (
                Holder::Ledger,
                crate::lab::ledger_status(&format!("127.0.0.1:{FWD_LEDGER_HEALTH}"))
                    .map(|s| s.bundle_serials),
            ),
        ]
    }

    fn presented_chains(&self) -> Vec<(&'static str, anyhow::Result<Vec<openssl::x509::X509>>)> {
        let _ = self.ensure_forwarded();
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

    fn backend_readyz(&self) -> anyhow::Result<(u16, contract::Readiness)> {
        self.ensure_forwarded()?;
        let (status, body) =
            crate::probe::get(&format!("http://127.0.0.1:{FWD_BACKEND_HEALTH}/readyz"))?;
        Ok((
            status,
            serde_json::from_str(&body)
                .with_context(|| format!("/readyz answered something else: {body}"))?,
        ))
    }

    fn metrics(&self, service: contract::Workload) -> anyhow::Result<contract::metrics::Scrape> {
        let url = match service {
            contract::Workload::Frontend => format!("{}/metrics", self.frontend_url()),
            contract::Workload::Backend => {
                self.ensure_forwarded()?;
                format!("http://127.0.0.1:{FWD_BACKEND_HEALTH}/metrics")
            }
            contract::Workload::Postgres => anyhow::bail!("PostgreSQL serves no /metrics"),
            contract::Workload::Ledger => anyhow::bail!("the ledger serves no /metrics"),
            contract::Workload::OpenBao => {
                anyhow::bail!("OpenBao's metrics are not scraped by the lab")
            }
        };
        crate::probe::scrape(&url)
    }

    /// From inside the kind node: an agent listens on the node's own network (hostNetwork), a
    /// server replica on its pod's address, which the node reaches.
    fn spire_metrics(&self, c: Component) -> anyhow::Result<contract::metrics::Scrape> {
        let (pod, host) = match c {
            Component::SpireServer(r) => (format!("spire-server-{r}"), None),
            Component::Agent(w) => (self.agent_pod_of(w)?, Some("127.0.0.1")),
            _ => bail!("{} serves no SPIRE telemetry", c.name()),
        };
        let out = self.run(&[
            "-n",
            "spire-system",
            "get",
            "pod",
            &pod,
            "-o",
            "jsonpath={.spec.nodeName} {.status.podIP}",
        ])?;
        let (node, ip) = out
            .trim()
            .split_once(' ')
            .with_context(|| format!("pod {pod} has no node or address yet: {out:?}"))?;
        // The node has bash but no HTTP client: one HTTP/1.0 GET over bash's /dev/tcp.
        let addr = host.unwrap_or(ip);
        let get = format!(
            "exec 3<>/dev/tcp/{addr}/{SPIRE_METRICS_PORT} && printf 'GET /metrics HTTP/1.0\\r\\nHost: {addr}\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let answer = self.docker_exec(node, &["timeout", "5", "bash", "-c", &get])?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .with_context(|| format!("{}'s telemetry at {addr}: no HTTP answer", c.name()))?;
        ensure!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{}'s telemetry at {addr} answered {}",
            c.name(),
            head.lines().next().unwrap_or_default()
        );
        Ok(contract::metrics::Scrape::parse(body))
    }

    fn backend_envoy_addr(&self) -> String {
        let _ = self.ensure_forwarded();
        format!("127.0.0.1:{FWD_BACKEND_MTLS}")
    }

    fn ledger_addr(&self) -> String {
        let _ = self.ensure_forwarded();
        format!("127.0.0.1:{FWD_LEDGER_MTLS}")
    }

    fn fetch_svid_unregistered(&self) -> anyhow::Result<String> {
        self.apply_rogue()?;
        let outcome = wait_for(Duration::from_secs(90), || match self.rogue_state()? {
            (Some(refusal), _) => Ok(Err(refusal)),
            (None, true) => Ok(Ok("the rogue pod holds an SVID".to_owned())),
            (None, false) => bail!("the rogue pod neither got an SVID nor failed"),
        });
        self.delete_rogue_pod()?;
        match outcome?.0 {
            Ok(held) => Ok(held),
            Err(refusal) => bail!("{refusal}"),
        }
    }

    fn issue_rogue_svid(&mut self) -> anyhow::Result<std::path::PathBuf> {
        let rogue = Entry::rogue(CLUSTER_ALIAS, account_selectors(contract::ids::ROGUE));
        let args = rogue.args(None);
        let mut argv = vec!["entry", "create"];
        argv.extend(args.iter().map(String::as_str));
        self.server_exec(None, &argv)?;
        self.apply_rogue()?;
        // The pod retries a refused fetch until its node's agent has synced the new entry.
        wait_for(Duration::from_secs(90), || {
            let (refusal, holds) = self.rogue_state()?;
            anyhow::ensure!(
                holds,
                "the registered rogue has no SVID yet: {}",
                refusal.unwrap_or_default()
            );
            Ok(())
        })?;
        // A private (0700) directory, removed with the rogue.
        let scratch = tempfile::Builder::new()
            .prefix("spire-lab-rogue-")
            .tempdir()?;
        let dir = scratch.path().to_owned();
        self.rogue_dir = Some(scratch);
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
            crate::procs::create_with_mode(&dir.join(file), pem.as_bytes(), mode)?;
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
        for id in self.entry_ids(&contract::workload_id(contract::ids::ROGUE))? {
            self.server_exec(None, &["entry", "delete", "-entryID", &id])?;
        }
        self.rogue_dir = None;
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

    fn mint_svid(
        &self,
        spiffe_id: &str,
        dns: Option<&str>,
        ttl: Duration,
    ) -> anyhow::Result<Minted> {
        let args = spire::mint_args(spiffe_id, dns, ttl);
        let mut argv = vec!["x509", "mint"];
        argv.extend(args.iter().map(String::as_str));
        spire::minted(&self.server_exec(None, &argv)?)
    }

    fn openbao(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        super::openbao::bao(&|| self.kubectl(), args, stdin)
    }

    /// psql as the superuser inside PostgreSQL's own container (its Unix socket).
    fn postgres_admin(&self, sql: &str) -> anyhow::Result<String> {
        let out = self
            .kubectl()
            .args([
                "-n",
                NAMESPACE,
                "exec",
                "postgres-0",
                "-c",
                "postgres",
                "--",
            ])
            .args([
                "psql",
                "-h",
                "/var/run/postgresql",
                "-d",
                "demo",
                "-AtXc",
                sql,
            ])
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn postgres_addr(&self) -> String {
        let _ = self.ensure_forwarded();
        format!("127.0.0.1:{FWD_POSTGRES}")
    }

    fn reach_from_another_pod(
        &mut self,
        targets: &[PodListener],
    ) -> anyhow::Result<Vec<(PodListener, Reach)>> {
        let manifest = crate::project_root().join(INSIDER_MANIFEST);
        self.run(&["apply", "-f", &manifest.display().to_string()])?;
        let result = self
            .run(&[
                "-n",
                NAMESPACE,
                "wait",
                "--for=condition=Ready",
                "pod/insider",
                "--timeout=90s",
            ])
            .context("the insider pod did not start")
            .and_then(|_| self.reach_from_insider(targets));
        let deleted = self.run(&[
            "-n",
            NAMESPACE,
            "delete",
            "pod",
            "insider",
            "--ignore-not-found",
            "--wait=true",
            "--timeout=60s",
        ]);
        let reached = result?;
        deleted?;
        Ok(reached)
    }

    fn spire_server(
        &self,
        replica: Option<u8>,
        command: &[&str],
        flags: &[&str],
    ) -> anyhow::Result<String> {
        // Inside its pod the CLI's default socket is the server's.
        let argv: Vec<&str> = command.iter().chain(flags).copied().collect();
        self.server_exec(replica, &argv)
    }

    fn kill(&mut self, c: Component) -> anyhow::Result<()> {
        let p = placement(c);
        let pod = match (c, p.stop) {
            (Component::Agent(w), _) => self.agent_pod_of(w)?,
            (_, Stop::Ordinal(r)) => format!("{}-{r}", p.app()),
            _ => self
                .run(&[
                    "-n",
                    p.namespace,
                    "get",
                    "pod",
                    "-l",
                    &format!("app={}", p.app()),
                    "-o",
                    "jsonpath={.items[0].metadata.name}",
                ])?
                .trim()
                .to_owned(),
        };
        let ns = if matches!(c, Component::Agent(_)) {
            "spire-system"
        } else {
            p.namespace
        };
        self.run(&[
            "-n",
            ns,
            "delete",
            "pod",
            &pod,
            "--grace-period=0",
            "--force",
            "--wait=false",
        ])?;
        Ok(())
    }
}
