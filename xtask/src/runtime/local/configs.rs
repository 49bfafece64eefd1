//! The local runtime's configs: every file under `manifests/` a local process reads, with the
//! edits that move it off Kubernetes (addresses and ports on 127.0.0.1, sockets and files under
//! the state directory, join_token and unix attestation instead of k8s_psat and k8s).

use super::layout::{Layout, NODES};
use crate::render::{self, Edit, Kind, Render, agent_moved, block, loopback, server_moved, text};

const JOIN_TOKEN: &str = "NodeAttestor \"join_token\" {\n    plugin_data {}\n}";
const UNIX_ATTESTOR: &str = "WorkloadAttestor \"unix\" {\n    plugin_data {\n        discover_workload_path = true\n    }\n}";

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
        Render {
            source: "postgres/config/init-db.sh",
            target: "init-db.sh".into(),
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

/// Renders every local config into the state directory's `config/`.
pub fn write_local_configs(layout: &Layout) -> anyhow::Result<()> {
    let manifests = crate::project_root().join("manifests");
    render::write_all(&manifests, &layout.p("config"), &local_configs(layout))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::runtime::local::layout::Ports;

    fn layout() -> Layout {
        Layout {
            root: PathBuf::from("/tmp/spire-lab-test"),
            ports: Ports::with_offset(3),
        }
    }

    /// The local configs differ from the manifests' only by their listed, typed edits.
    #[test]
    fn local_configs_differ_from_manifests_only_in_addresses_paths_and_attestation() {
        for r in local_configs(&layout()) {
            render::assert_only_edits(&r);
        }
    }

    /// The pinned tools and rendered local configs in a fresh directory (removed by the caller).
    pub(crate) fn rendered(name: &str, offset: u16) -> (crate::deps::Tools, Layout) {
        let pins = crate::pins::Pins::load(&crate::project_root()).unwrap();
        let tools = crate::deps::find(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let layout = Layout {
            root: std::env::temp_dir().join(format!("{name}-{}", std::process::id())),
            ports: Ports::with_offset(offset),
        };
        std::fs::create_dir_all(layout.rbac_dir()).unwrap();
        std::fs::copy(
            crate::project_root().join("manifests/backend/config/rbac.yaml"),
            layout.rbac_dir().join("rbac.yaml"),
        )
        .unwrap();
        write_local_configs(&layout).unwrap();
        (tools, layout)
    }

    /// Runs a validator; its output, or a panic with it.
    pub(crate) fn validates(program: &Path, args: &[&str]) -> String {
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
}
