//! One config, two runtimes: the local runtime's configs are the files under `manifests/` with
//! only addresses, socket and file paths, and attestation plugins changed — by a short list of
//! typed edits per file, checked so that nothing else can differ.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

/// What an edit may change; nothing else is ever rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A listen or peer address or port.
    Address,
    /// A Unix socket (the Workload API, the SPIRE server API).
    SocketPath,
    /// A directory or file on disk (data, certificates, pid file, watched policy).
    FilePath,
    /// Where a Kubernetes plugin finds the API server or its token outside a pod: a kubeconfig
    /// or token file added after the line `from`, nothing else.
    KubeAccess,
}

#[derive(Clone, Debug)]
pub enum Edit {
    /// Replace every occurrence of `from` (at least one) by `to`.
    Text {
        kind: Kind,
        from: String,
        to: String,
    },
    /// Replace the HCL block that starts with `header` (up to its matching brace) by `to`:
    /// only attestation plugins, and the Kubernetes-only notifier beside them.
    Block { header: String, to: String },
}

fn text(kind: Kind, from: &str, to: impl Into<String>) -> Edit {
    Edit::Text {
        kind,
        from: from.into(),
        to: to.into(),
    }
}

/// An Envoy socket address moved to 127.0.0.1 and the local runtime's port.
fn loopback(from: &str, port: u16) -> Edit {
    text(
        Kind::Address,
        from,
        format!("{{ address: 127.0.0.1, port_value: {port} }}"),
    )
}

fn block(header: &str, to: &str) -> Edit {
    Edit::Block {
        header: header.into(),
        to: to.into(),
    }
}

impl Edit {
    /// Refuses an edit whose text is not of its kind, so an edit cannot smuggle in other changes.
    fn check(&self) -> anyhow::Result<()> {
        let ok = match self {
            Edit::Text {
                kind: Kind::Address,
                from,
                to,
            } => {
                let words = ["address", "port", "listen_addresses", "bind_"];
                words.iter().any(|w| from.contains(w))
                    && from.lines().count() == 1
                    && to.lines().count() == 1
            }
            Edit::Text {
                kind: Kind::SocketPath | Kind::FilePath,
                from,
                to,
            } => {
                from.starts_with('/') && to.starts_with('/') && !from.contains(char::is_whitespace)
            }
            Edit::Text {
                kind: Kind::KubeAccess,
                from,
                to,
            } => to.strip_prefix(from.as_str()).is_some_and(|added| {
                let line = added.trim_start_matches([' ', '\n']);
                added.starts_with('\n')
                    && [
                        "kube_config_file = \"/",
                        "kube_config_file_path = \"/",
                        "token_path = \"/",
                    ]
                    .iter()
                    .any(|k| line.starts_with(k))
                    && line.ends_with('"')
                    && line.lines().count() == 1
            }),
            Edit::Block { header, to } => {
                let plugin = |s: &str| {
                    ["NodeAttestor ", "WorkloadAttestor ", "Notifier "]
                        .iter()
                        .any(|p| s.trim_start().starts_with(p))
                };
                plugin(header) && (to.is_empty() || plugin(to))
            }
        };
        if !ok {
            bail!("edit {self:?} is not of its kind");
        }
        Ok(())
    }

    fn apply(&self, src: &str) -> anyhow::Result<String> {
        self.check()?;
        match self {
            Edit::Text { from, to, .. } => {
                if !src.contains(from.as_str()) {
                    bail!("{from:?} not found");
                }
                Ok(src.replace(from.as_str(), to))
            }
            Edit::Block { header, to } => {
                let (start, end) = find_block(src, header)
                    .with_context(|| format!("block {header:?} not found"))?;
                // Keep the block's indentation; drop its line entirely when it goes away.
                let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
                let indent = &src[line_start..start];
                let mut out = String::from(&src[..line_start]);
                if !to.is_empty() {
                    out.push_str(indent);
                    out.push_str(&to.replace('\n', &format!("\n{indent}")));
                    out.push_str(&src[end..]);
                } else {
                    let rest = src[end..].strip_prefix('\n').unwrap_or(&src[end..]);
                    let rest = rest.strip_prefix('\n').unwrap_or(rest);
                    out.push_str(rest);
                }
                Ok(out)
            }
        }
    }
}

/// Byte range of an HCL block: from its header to its closing brace.
fn find_block(src: &str, header: &str) -> Option<(usize, usize)> {
    let start = src.find(header)?;
    let open = start + src[start..].find('{')?;
    let mut depth = 0;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((start, open + i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

pub fn apply(src: &str, edits: &[Edit]) -> anyhow::Result<String> {
    edits
        .iter()
        .try_fold(src.to_owned(), |acc, e| e.apply(&acc))
}

/// The nodes of the local runtime: one SPIRE agent each, as on a cluster of three machines.
pub const NODES: [&str; 3] = ["frontend-node", "backend-node", "postgres-node"];

/// Ports of the local runtime, all on 127.0.0.1; `--port-offset` shifts them all.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ports {
    pub frontend: u16,
    pub frontend_envoy: u16,
    pub frontend_envoy_admin: u16,
    pub frontend_envoy_ready: u16,
    pub backend_envoy: u16,
    pub backend_envoy_admin: u16,
    pub backend_envoy_ready: u16,
    pub backend: u16,
    pub postgres: u16,
    pub spire_server: u16,
    pub spire_server_health: u16,
    pub agent_health: [u16; 3],
    pub backend_helper_health: u16,
    pub postgres_helper_health: u16,
}

impl Ports {
    pub fn with_offset(offset: u16) -> Ports {
        let p = |n: u16| n + offset;
        Ports {
            frontend: p(8080),
            frontend_envoy: p(8001),
            frontend_envoy_admin: p(9901),
            frontend_envoy_ready: p(9911),
            backend_envoy: p(8443),
            backend_envoy_admin: p(9902),
            backend_envoy_ready: p(9912),
            backend: p(9090),
            postgres: p(15432),
            spire_server: p(18081),
            spire_server_health: p(18080),
            agent_health: [p(18090), p(18091), p(18092)],
            backend_helper_health: p(18100),
            postgres_helper_health: p(18101),
        }
    }

    /// Every port with the component that listens on it, for "port in use" messages.
    pub fn named(&self) -> Vec<(u16, String)> {
        let mut v = vec![
            (self.frontend, "frontend UI".to_owned()),
            (
                self.frontend_envoy,
                "frontend Envoy (outbound listener)".into(),
            ),
            (self.frontend_envoy_admin, "frontend Envoy admin".into()),
            (self.frontend_envoy_ready, "frontend Envoy readiness".into()),
            (self.backend_envoy_ready, "backend Envoy readiness".into()),
            (self.backend_envoy, "backend Envoy (mTLS listener)".into()),
            (self.backend_envoy_admin, "backend Envoy admin".into()),
            (self.backend, "backend API".into()),
            (self.postgres, "PostgreSQL".into()),
            (self.spire_server, "SPIRE server".into()),
            (self.spire_server_health, "SPIRE server health".into()),
            (
                self.backend_helper_health,
                "backend spiffe-helper health".into(),
            ),
            (
                self.postgres_helper_health,
                "PostgreSQL spiffe-helper health".into(),
            ),
        ];
        for (node, port) in NODES.iter().zip(self.agent_health) {
            v.push((port, format!("SPIRE agent {node} health")));
        }
        v
    }
}

/// Where the local runtime keeps everything, under one state directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub root: PathBuf,
    pub ports: Ports,
}

impl Layout {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub fn server_socket(&self) -> PathBuf {
        self.p("spire-server/api.sock")
    }
    pub fn agent_socket(&self, node: &str) -> PathBuf {
        self.p(&format!("agents/{node}/api.sock"))
    }
    pub fn bundle(&self) -> PathBuf {
        self.p("bundle.crt")
    }
    pub fn certs(&self, workload: &str) -> PathBuf {
        self.p(&format!("certs/{workload}"))
    }
    pub fn config(&self, name: &str) -> PathBuf {
        self.p(&format!("config/{name}"))
    }
    pub fn rbac_dir(&self) -> PathBuf {
        self.p("envoy-rbac")
    }
    pub fn pg_run(&self) -> PathBuf {
        self.p("postgres/run")
    }
}

const JOIN_TOKEN: &str = "NodeAttestor \"join_token\" {\n    plugin_data {}\n}";
const UNIX_ATTESTOR: &str = "WorkloadAttestor \"unix\" {\n    plugin_data {\n        discover_workload_path = true\n    }\n}";

/// A shared config file and the edits that make it the local runtime's.
pub struct Render {
    /// Relative to `manifests/`.
    pub source: &'static str,
    /// File name under the state directory's `config/`.
    pub target: String,
    pub edits: Vec<Edit>,
}

/// Where the workloads' configs dial the Workload API (the CSI volume's mount, on kind).
const WORKLOAD_API: &str = "/spiffe-workload-api/spire-agent.sock";

/// Every config the local runtime uses, each from its file under `manifests/`.
pub fn local_configs(l: &Layout) -> Vec<Render> {
    let ports = &l.ports;
    let agent_sock = |node: &str| l.agent_socket(node).display().to_string();
    let mut v = vec![
        Render {
            source: "spire/config/server.conf",
            target: "spire-server.conf".into(),
            edits: [
                server_moved(
                    ports.spire_server,
                    ports.spire_server_health,
                    &l.server_socket(),
                    &l.p("spire-server/data"),
                ),
                vec![
                    block("NodeAttestor \"k8s_psat\"", JOIN_TOKEN),
                    block("Notifier \"k8sbundle\"", ""),
                ],
            ]
            .concat(),
        },
        Render {
            source: "frontend/config/envoy.yaml",
            target: "envoy-frontend.yaml".into(),
            edits: vec![
                loopback(
                    "{ address: 127.0.0.1, port_value: 9901 }",
                    ports.frontend_envoy_admin,
                ),
                loopback(
                    "{ address: 0.0.0.0, port_value: 9911 }",
                    ports.frontend_envoy_ready,
                ),
                loopback(
                    "{ address: 127.0.0.1, port_value: 8001 }",
                    ports.frontend_envoy,
                ),
                loopback(
                    "{ address: backend.demo.svc.cluster.local, port_value: 8443 }",
                    ports.backend_envoy,
                ),
                text(Kind::SocketPath, WORKLOAD_API, agent_sock("frontend-node")),
            ],
        },
        Render {
            source: "backend/config/envoy.yaml",
            target: "envoy-backend.yaml".into(),
            edits: vec![
                loopback(
                    "{ address: 127.0.0.1, port_value: 9901 }",
                    ports.backend_envoy_admin,
                ),
                loopback(
                    "{ address: 0.0.0.0, port_value: 9911 }",
                    ports.backend_envoy_ready,
                ),
                loopback(
                    "{ address: 0.0.0.0, port_value: 8443 }",
                    ports.backend_envoy,
                ),
                loopback("{ address: 127.0.0.1, port_value: 9090 }", ports.backend),
                text(
                    Kind::FilePath,
                    "/etc/envoy/rbac",
                    l.rbac_dir().display().to_string(),
                ),
                text(Kind::SocketPath, WORKLOAD_API, agent_sock("backend-node")),
            ],
        },
        Render {
            source: "backend/config/helper.conf",
            target: "helper-backend.conf".into(),
            edits: helper_moved(l, "backend", ports.backend_helper_health),
        },
        Render {
            source: "postgres/config/helper.conf",
            target: "helper-postgres.conf".into(),
            edits: [
                helper_moved(l, "postgres", ports.postgres_helper_health),
                vec![text(
                    Kind::FilePath,
                    "/var/run/postgresql",
                    l.pg_run().display().to_string(),
                )],
            ]
            .concat(),
        },
        Render {
            source: "postgres/config/postgresql.conf",
            target: "postgresql.conf".into(),
            edits: vec![
                text(
                    Kind::Address,
                    "listen_addresses = '*'",
                    "listen_addresses = '127.0.0.1'",
                ),
                text(
                    Kind::Address,
                    "port = 5432",
                    format!("port = {}", ports.postgres),
                ),
                text(
                    Kind::FilePath,
                    "/var/run/postgresql",
                    l.pg_run().display().to_string(),
                ),
                text(
                    Kind::FilePath,
                    "/etc/postgresql/pg_hba.conf",
                    l.config("pg_hba.conf").display().to_string(),
                ),
                text(
                    Kind::FilePath,
                    "/spiffe-certs",
                    l.certs("postgres").display().to_string(),
                ),
            ],
        },
        Render {
            source: "postgres/config/pg_hba.conf",
            target: "pg_hba.conf".into(),
            edits: vec![],
        },
        Render {
            source: "postgres/config/init.sql",
            target: "init.sql".into(),
            edits: vec![],
        },
    ];
    for (node, health) in NODES.iter().zip(ports.agent_health) {
        v.push(Render {
            source: "spire/config/agent.conf",
            target: format!("agent-{node}.conf"),
            edits: [
                agent_moved(
                    ports.spire_server,
                    health,
                    &l.agent_socket(node),
                    &l.p(&format!("agents/{node}/data")),
                    &l.bundle(),
                ),
                vec![
                    block("NodeAttestor \"k8s_psat\"", JOIN_TOKEN),
                    block("WorkloadAttestor \"k8s\"", UNIX_ATTESTOR),
                ],
            ]
            .concat(),
        });
    }
    v
}

/// The SPIRE server's and agent's kind configs for a run beside a real kube-apiserver with no
/// nodes (`kind::check_attestation_against_apiserver`): the Kubernetes plugins stay — k8s_psat on
/// both sides, k8sbundle, the k8s workload attestor — and only addresses, paths and the way to
/// the API server (a kubeconfig, a token file: what a pod is given implicitly) change.
pub fn apiserver_spire_configs(
    dir: &Path,
    ports: (u16, u16, u16),
    kubeconfig: &Path,
    psat: &Path,
    sa_token: &Path,
) -> Vec<Render> {
    let (server, server_health, agent_health) = ports;
    let kube_access = |after: &str, key: &str, indent: &str, path: &Path| {
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
                server_moved(server, server_health, &p("server.sock"), &p("server-data")),
                vec![
                    kube_access(
                        "service_account_allow_list = [\"spire-system:spire-agent\"]",
                        "kube_config_file",
                        "                    ",
                        kubeconfig,
                    ),
                    kube_access(
                        "config_map = \"spire-bundle\"",
                        "kube_config_file_path",
                        "            ",
                        kubeconfig,
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
                    server,
                    agent_health,
                    &p("agent.sock"),
                    &p("agent-data"),
                    &p("bundle.crt"),
                ),
                vec![
                    kube_access(
                        "cluster = \"spire-demo\"",
                        "token_path",
                        "            ",
                        psat,
                    ),
                    kube_access(
                        "node_name_env = \"MY_NODE_NAME\"",
                        "token_path",
                        "            ",
                        sa_token,
                    ),
                ],
            ]
            .concat(),
        },
    ]
}

/// A workload's spiffe-helper off Kubernetes: its node's agent socket, the workload's
/// certificate directory, its health port.
fn helper_moved(l: &Layout, workload: &str, health: u16) -> Vec<Edit> {
    vec![
        text(
            Kind::SocketPath,
            WORKLOAD_API,
            l.agent_socket(&format!("{workload}-node"))
                .display()
                .to_string(),
        ),
        text(
            Kind::FilePath,
            "/spiffe-certs",
            l.certs(workload).display().to_string(),
        ),
        text(
            Kind::Address,
            "bind_port = 8081",
            format!("bind_port = {health}"),
        ),
    ]
}

/// A SPIRE server off Kubernetes: listening on 127.0.0.1 (API at `port`, health at `health`),
/// its admin socket and data directory where given.
fn server_moved(port: u16, health: u16, socket: &Path, data: &Path) -> Vec<Edit> {
    vec![
        text(
            Kind::Address,
            "bind_address = \"0.0.0.0\"",
            "bind_address = \"127.0.0.1\"",
        ),
        text(
            Kind::Address,
            "bind_port = \"8081\"",
            format!("bind_port = \"{port}\""),
        ),
        text(
            Kind::Address,
            "bind_port = \"8080\"",
            format!("bind_port = \"{health}\""),
        ),
        text(
            Kind::SocketPath,
            "/tmp/spire-server/private/api.sock",
            socket.display().to_string(),
        ),
        text(
            Kind::FilePath,
            "/run/spire/server/data",
            data.display().to_string(),
        ),
    ]
}

/// A SPIRE agent off Kubernetes: its server at 127.0.0.1:`server_port`, health on 127.0.0.1 at
/// `health`, its Workload API socket, data directory and bootstrap bundle where given.
fn agent_moved(
    server_port: u16,
    health: u16,
    socket: &Path,
    data: &Path,
    bundle: &Path,
) -> Vec<Edit> {
    vec![
        text(
            Kind::FilePath,
            "/run/spire/agent/data",
            data.display().to_string(),
        ),
        text(
            Kind::Address,
            "server_address = \"spire-server.spire-system.svc\"",
            "server_address = \"127.0.0.1\"",
        ),
        text(
            Kind::Address,
            "server_port = \"8081\"",
            format!("server_port = \"{server_port}\""),
        ),
        text(
            Kind::SocketPath,
            "/run/spire/agent-sockets/spire-agent.sock",
            socket.display().to_string(),
        ),
        text(
            Kind::FilePath,
            "/run/spire/bundle/bundle.crt",
            bundle.display().to_string(),
        ),
        text(
            Kind::Address,
            "bind_address = \"0.0.0.0\"",
            "bind_address = \"127.0.0.1\"",
        ),
        text(
            Kind::Address,
            "bind_port = \"8080\"",
            format!("bind_port = \"{health}\""),
        ),
    ]
}

/// Renders every local config into the state directory's `config/`.
pub fn write_local_configs(manifests: &Path, layout: &Layout) -> anyhow::Result<()> {
    let dir = layout.p("config");
    std::fs::create_dir_all(&dir)?;
    for r in local_configs(layout) {
        let src = std::fs::read_to_string(manifests.join(r.source))
            .with_context(|| format!("read manifests/{}", r.source))?;
        let out =
            apply(&src, &r.edits).with_context(|| format!("render manifests/{}", r.source))?;
        std::fs::write(dir.join(&r.target), out)?;
    }
    Ok(())
}

/// The lines that differ, for test failure messages.
#[cfg(test)]
fn line_diff(a: &str, b: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            let _ = writeln!(out, "{:>4}- {x}\n{:>4}+ {y}", i + 1, i + 1);
        }
    }
    out
}

/// The benchmark's plaintext baseline, derived from the rendered local configs: Envoys without
/// TLS (and so without the RBAC filter, which needs a peer certificate), PostgreSQL without TLS
/// trusting the backend. Only `cargo xtask bench` uses it, beside the real lab, to price mTLS.
pub fn write_plaintext_profile(layout: &Layout) -> anyhow::Result<()> {
    let edit = |name: &str, f: &dyn Fn(&str) -> anyhow::Result<String>| -> anyhow::Result<()> {
        let path = layout.config(name);
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(
            &path,
            f(&text).with_context(|| format!("plaintext profile of {name}"))?,
        )?;
        Ok(())
    };
    edit("envoy-frontend.yaml", &|t| {
        yaml_remove(t, "transport_socket:", false)
    })?;
    edit("envoy-backend.yaml", &|t| {
        let t = yaml_remove(t, "- transport_socket:", false)?;
        yaml_remove(&t, "- name: backend-rbac", true)
    })?;
    edit("postgresql.conf", &|t| {
        Ok(t.replacen("ssl = on", "ssl = off", 1))
    })?;
    edit("pg_hba.conf", &|t| {
        let line = "hostssl    demo      backend  all      cert";
        ensure!(t.contains(line), "no hostssl line for the backend");
        Ok(t.replacen(line, "host       demo      backend  127.0.0.1/32 trust", 1))
    })?;
    Ok(())
}

/// Removes the YAML key `start` (a line whose trimmed text starts with it) and what it holds.
/// With `whole_item`, `start` is a list item (`- name: x`) and the whole item goes; else a
/// key that opens a list item (`- key:`) hands the dash to the item's next key.
fn yaml_remove(src: &str, start: &str, whole_item: bool) -> anyhow::Result<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = src.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(start))
        .with_context(|| format!("{start:?} not found"))?;
    let outer = indent(lines[at]);
    let dash = lines[at].trim_start().starts_with("- ");
    let column = outer + if dash { 2 } else { 0 };
    let mut end = at + 1;
    let inside = |l: &str| {
        l.trim().is_empty()
            || if whole_item {
                indent(l) > outer
            } else {
                indent(l) > column
            }
    };
    while end < lines.len() && inside(lines[end]) {
        end += 1;
    }
    let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
    let mut rest: Vec<String> = lines[end..].iter().map(|l| l.to_string()).collect();
    if dash && !whole_item {
        let next = rest
            .first_mut()
            .context("nothing follows the removed key in its list item")?;
        ensure!(indent(next) == column, "the list item has no other key");
        *next = format!("{}- {}", " ".repeat(outer), next.trim_start());
    }
    out.append(&mut rest);
    Ok(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            root: PathBuf::from("/tmp/spire-lab-test"),
            ports: Ports::with_offset(3),
        }
    }

    fn manifests() -> PathBuf {
        crate::project_root().join("manifests")
    }

    /// The local configs differ from the manifests' only by their listed, typed edits: undoing
    /// the text edits and putting the original plugin blocks back gives the source byte for byte.
    #[test]
    fn local_configs_differ_from_manifests_only_in_addresses_paths_and_attestation() {
        let beside_apiserver = apiserver_spire_configs(
            Path::new("/tmp/lab"),
            (1, 2, 3),
            Path::new("/tmp/lab/kubeconfig"),
            Path::new("/tmp/lab/psat"),
            Path::new("/tmp/lab/sa-token"),
        );
        for r in local_configs(&layout()).into_iter().chain(beside_apiserver) {
            let src = std::fs::read_to_string(manifests().join(r.source)).unwrap();
            let rendered = apply(&src, &r.edits).unwrap_or_else(|e| panic!("{}: {e:#}", r.source));
            let mut undone = rendered.clone();
            for e in r.edits.iter().rev() {
                match e {
                    Edit::Text { from, to, .. } => {
                        assert!(!to.is_empty());
                        undone = undone.replace(to.as_str(), from);
                    }
                    Edit::Block { header, to } => {
                        let (s, e2) = find_block(&src, header).unwrap();
                        let original = &src[s..e2];
                        if to.is_empty() {
                            // A removed block: its absence is the only difference.
                            assert!(!rendered.contains(header.as_str()));
                            continue;
                        }
                        let new_header = to.lines().next().unwrap();
                        let (ns, ne) = find_block(&undone, new_header).unwrap();
                        undone.replace_range(ns..ne, original);
                    }
                }
            }
            let removed: Vec<&Edit> = r
                .edits
                .iter()
                .filter(|e| matches!(e, Edit::Block { to, .. } if to.is_empty()))
                .collect();
            if removed.is_empty() {
                assert_eq!(
                    undone,
                    src,
                    "{} drifted:\n{}",
                    r.source,
                    line_diff(&src, &undone)
                );
            } else {
                // Compare with the removed blocks taken out of the source the same way.
                let expected =
                    apply(&src, &removed.into_iter().cloned().collect::<Vec<_>>()).unwrap();
                assert_eq!(
                    undone,
                    expected,
                    "{} drifted:\n{}",
                    r.source,
                    line_diff(&expected, &undone)
                );
            }
        }
    }

    /// The pinned tools and rendered local configs in a fresh directory (removed by the caller).
    fn rendered(name: &str, offset: u16) -> (crate::deps::Tools, Layout) {
        let pins = crate::pins::Pins::load(&crate::project_root()).unwrap();
        let tools = crate::deps::find(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let layout = Layout {
            root: std::env::temp_dir().join(format!("{name}-{}", std::process::id())),
            ports: Ports::with_offset(offset),
        };
        std::fs::create_dir_all(layout.rbac_dir()).unwrap();
        std::fs::copy(
            manifests().join("backend/config/rbac.yaml"),
            layout.rbac_dir().join("rbac.yaml"),
        )
        .unwrap();
        write_local_configs(&manifests(), &layout).unwrap();
        (tools, layout)
    }

    /// Runs a validator; its output, or a panic with it.
    fn validates(program: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        let text = crate::procs::printed(&out);
        assert!(
            out.status.success(),
            "{} {args:?} failed:\n{text}",
            program.display()
        );
        text
    }

    /// The rendered local configs pass the real tools' own validation.
    #[test]
    fn rendered_local_configs_pass_envoy_and_spire_validation() {
        let (tools, layout) = rendered("render-validate", 7);
        let cfg = |name: &str| layout.config(name).display().to_string();
        for envoy in ["envoy-frontend.yaml", "envoy-backend.yaml"] {
            assert!(
                validates(&tools.envoy, &["--mode", "validate", "-c", &cfg(envoy)]).contains("OK")
            );
        }
        validates(
            &tools.spire_server,
            &["validate", "-config", &cfg("spire-server.conf")],
        );
        for node in NODES {
            validates(
                &tools.spire_agent,
                &["validate", "-config", &cfg(&format!("agent-{node}.conf"))],
            );
        }
        std::fs::remove_dir_all(layout.root).unwrap();
    }

    #[test]
    fn plaintext_profile_drops_tls_and_still_validates() {
        let (tools, layout) = rendered("render-plaintext", 1000);
        write_plaintext_profile(&layout).unwrap();
        for envoy in ["envoy-frontend.yaml", "envoy-backend.yaml"] {
            let text = std::fs::read_to_string(layout.config(envoy)).unwrap();
            assert!(
                !text.contains("transport_socket") && !text.contains("backend-rbac"),
                "{text}"
            );
            let cfg = layout.config(envoy).display().to_string();
            validates(&tools.envoy, &["--mode", "validate", "-c", &cfg]);
        }
        let backend = std::fs::read_to_string(layout.config("envoy-backend.yaml")).unwrap();
        assert!(backend.contains("    - filters:"), "{backend}");
        assert!(
            std::fs::read_to_string(layout.config("postgresql.conf"))
                .unwrap()
                .contains("ssl = off")
        );
        std::fs::remove_dir_all(layout.root).unwrap();
    }

    #[test]
    fn edits_of_the_wrong_kind_are_refused() {
        let sneaky = text(Kind::Address, "action: ALLOW", "action: DENY");
        assert!(sneaky.apply("action: ALLOW").is_err());
        let path = text(Kind::FilePath, "principal_name", "/x");
        assert!(path.apply("principal_name").is_err());
        let plugin = block("DataStore \"sql\"", "");
        assert!(plugin.apply("DataStore \"sql\" { }").is_err());
        let missing = text(Kind::Address, "port = 1", "port = 2");
        assert!(missing.apply("nothing here").is_err());
        // Access to the API server adds one kubeconfig or token line, and changes nothing else.
        let src = "cluster = \"c\"\n";
        let token = text(
            Kind::KubeAccess,
            "cluster = \"c\"",
            "cluster = \"c\"\n    token_path = \"/t\"",
        );
        assert!(token.apply(src).is_ok());
        for to in [
            "cluster = \"other\"\n    token_path = \"/t\"",
            "cluster = \"c\"\n    skip_kubelet_verification = false",
            "cluster = \"c\"\n    token_path = \"/t\"\n    audience = [\"x\"]",
            "cluster = \"c\" token_path = \"/t\"",
        ] {
            let sneaky = text(Kind::KubeAccess, "cluster = \"c\"", to);
            assert!(sneaky.apply(src).is_err(), "{to}");
        }
    }

    #[test]
    fn plugin_blocks_are_replaced_whole() {
        let src = "plugins {\n    A \"x\" {\n        plugin_data { a = 1 }\n    }\n\n    NodeAttestor \"k8s_psat\" {\n        plugin_data {\n            cluster = \"c\"\n        }\n    }\n}\n";
        let out = block("NodeAttestor \"k8s_psat\"", JOIN_TOKEN)
            .apply(src)
            .unwrap();
        assert!(
            out.contains("    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n}"),
            "{out}"
        );
        assert!(!out.contains("k8s_psat"));
    }
}
