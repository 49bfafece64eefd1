//! The local runtime's configs: every file under `manifests/` a local process reads, with the
//! edits that move it off Kubernetes (ports; peers at their pods' addresses instead of Service
//! names, and what other pods reach bound to every address of its pod — or everything on
//! 127.0.0.1 without pods; sockets and files under the state directory; join_token and unix
//! attestation instead of k8s_psat and k8s).

use super::layout::{Layout, NODES, SPIRE_OIDC_NODE, node_of};
use super::pods::Pod;
use crate::render::{
    self, Edit, Kind, Render, agent_moved, at, block, loopback, server_moved, text,
};
use contract::Workload;

const JOIN_TOKEN: &str = "NodeAttestor \"join_token\" {\n    plugin_data {}\n}";
const UNIX_ATTESTOR: &str = "WorkloadAttestor \"unix\" {\n    plugin_data {\n        discover_workload_path = true\n    }\n}";

/// The OIDC discovery provider's issuer on kind (its Service); locally its pod's address.
const OIDC_ISSUER: &str = "https://spire-oidc.spire-system.svc";

/// Where the workloads' configs dial the Workload API (the CSI volume's mount, on kind).
const WORKLOAD_API: &str = "/spiffe-workload-api/spire-agent.sock";

/// Every config the local runtime uses, each from its file under `manifests/`.
pub fn local_configs(l: &Layout) -> Vec<Render> {
    let ports = &l.ports;
    let public = l.network.public_bind();
    let agent_sock = |node: &str| l.agent_socket(node).display().to_string();
    let mut postgres_listen = vec![];
    if !l.network.is_pods() {
        postgres_listen.push(text(
            Kind::Address,
            "listen_addresses = '*'",
            "listen_addresses = '127.0.0.1'",
        ));
    }
    let mut v: Vec<Render> = (0..crate::lab::SERVER_REPLICAS)
        .map(|r| Render {
            source: "spire/config/server.conf",
            target: format!("spire-server-{r}.conf"),
            edits: [
                server_moved(
                    public,
                    ports.spire_server_replicas[usize::from(r)],
                    ports.spire_server_health[usize::from(r)],
                    ports.spire_server_metrics[usize::from(r)],
                    &l.server_socket(r),
                    &l.server_data(r),
                ),
                datastore_reached(l),
                vec![
                    text(Kind::Address, OIDC_ISSUER, super::openbao::oidc_issuer(l)),
                    block("NodeAttestor \"k8s_psat\"", JOIN_TOKEN),
                    block("Notifier \"k8sbundle\"", ""),
                ],
            ]
            .concat(),
        })
        .collect();
    let mut datastore_listen = vec![];
    if !l.network.is_pods() {
        datastore_listen.push(text(
            Kind::Address,
            "listen_addresses = '*'",
            "listen_addresses = '127.0.0.1'",
        ));
    }
    v.extend([
        Render {
            source: "spire/config/datastore.conf",
            target: "datastore.conf".into(),
            edits: [
                datastore_listen,
                vec![
                    text(
                        Kind::Address,
                        "port = 5432",
                        format!("port = {}", ports.spire_db),
                    ),
                    text(
                        Kind::FilePath,
                        "/var/run/postgresql",
                        l.spire_db("run").display().to_string(),
                    ),
                    text(
                        Kind::FilePath,
                        "/etc/postgresql/datastore-hba.conf",
                        l.config("datastore-hba.conf").display().to_string(),
                    ),
                    text(
                        Kind::FilePath,
                        "/etc/spire-db/tls",
                        l.spire_db("tls").display().to_string(),
                    ),
                ],
            ]
            .concat(),
        },
        Render {
            source: "spire/config/datastore-hba.conf",
            target: "datastore-hba.conf".into(),
            edits: vec![],
        },
        Render {
            source: "spire/config/datastore-init.sql",
            target: "datastore-init.sql".into(),
            edits: vec![],
        },
    ]);
    v.extend([
        Render {
            source: "frontend/config/envoy.yaml",
            target: "envoy-frontend.yaml".into(),
            edits: vec![
                loopback(
                    "{ address: 127.0.0.1, port_value: 9901 }",
                    ports.frontend_envoy_admin,
                ),
                at(
                    "{ address: 0.0.0.0, port_value: 9911 }",
                    public,
                    ports.frontend_envoy_ready,
                ),
                loopback(
                    "{ address: 127.0.0.1, port_value: 8001 }",
                    ports.frontend_envoy,
                ),
                at(
                    "{ address: backend.demo.svc.cluster.local, port_value: 8443 }",
                    l.addr(Pod::Backend),
                    ports.backend_envoy,
                ),
                at(
                    "{ address: ledger.demo.svc.cluster.local, port_value: 8443 }",
                    l.addr(Pod::Ledger),
                    ports.ledger,
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
                at(
                    "{ address: 0.0.0.0, port_value: 9911 }",
                    public,
                    ports.backend_envoy_ready,
                ),
                at(
                    "{ address: 0.0.0.0, port_value: 8443 }",
                    public,
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
            edits: helper_moved(l, Workload::Backend, ports.backend_helper_health),
        },
        Render {
            source: "openbao/config/helper.conf",
            target: "helper-openbao.conf".into(),
            edits: [
                helper_moved(l, Workload::OpenBao, ports.openbao_helper_health),
                vec![text(
                    Kind::FilePath,
                    "/openbao/run",
                    l.p("openbao/run").display().to_string(),
                )],
            ]
            .concat(),
        },
        Render {
            source: "openbao/config/openbao.hcl",
            target: "openbao.hcl".into(),
            edits: vec![
                text(
                    Kind::Address,
                    "api_addr = \"https://openbao.demo.svc:8200\"",
                    format!(
                        "api_addr = \"https://{}:{}\"",
                        l.addr(Pod::OpenBao),
                        ports.openbao
                    ),
                ),
                text(
                    Kind::Address,
                    "cluster_addr = \"https://openbao-0.openbao.demo.svc:8201\"",
                    format!(
                        "cluster_addr = \"https://{}:{}\"",
                        l.addr(Pod::OpenBao),
                        ports.openbao + 1
                    ),
                ),
                text(
                    Kind::Address,
                    "address = \"0.0.0.0:8200\"",
                    format!("address = \"{public}:{}\"", ports.openbao),
                ),
                text(
                    Kind::FilePath,
                    "/openbao/",
                    format!("{}/", l.p("openbao").display()),
                ),
                text(
                    Kind::FilePath,
                    "/spiffe-certs",
                    l.certs("openbao").display().to_string(),
                ),
            ],
        },
        Render {
            source: "openbao/config/configure.sh",
            target: "configure-openbao.sh".into(),
            edits: vec![],
        },
        Render {
            source: "spire/config/oidc-discovery-provider.conf",
            target: "spire-oidc.conf".into(),
            edits: vec![
                text(
                    Kind::Address,
                    &format!("jwt_issuer = \"{OIDC_ISSUER}\""),
                    format!("jwt_issuer = \"{}\"", super::openbao::oidc_issuer(l)),
                ),
                text(
                    Kind::Address,
                    "domains = [\"spire-oidc.spire-system.svc\"]",
                    format!("domains = [\"{}\"]", l.addr(Pod::SpireOidc)),
                ),
                text(
                    Kind::Address,
                    "addr = \":8443\"",
                    format!("addr = \"{public}:{}\"", ports.spire_oidc),
                ),
                text(
                    Kind::Address,
                    "bind_port = 8008",
                    format!("bind_port = {}", ports.spire_oidc_health),
                ),
                text(
                    Kind::FilePath,
                    "/run/spire-oidc",
                    l.p("spire-oidc").display().to_string(),
                ),
                text(Kind::SocketPath, WORKLOAD_API, agent_sock(SPIRE_OIDC_NODE)),
            ],
        },
        Render {
            source: "postgres/config/helper.conf",
            target: "helper-postgres.conf".into(),
            edits: [
                helper_moved(l, Workload::Postgres, ports.postgres_helper_health),
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
            edits: [
                postgres_listen,
                vec![
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
            ]
            .concat(),
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
    ]);
    for ((node, health), metrics) in NODES
        .iter()
        .zip(ports.agent_health)
        .zip(ports.agent_metrics)
    {
        v.push(Render {
            source: "spire/config/agent.conf",
            target: format!("agent-{node}.conf"),
            edits: [
                agent_moved(
                    &l.addr(Pod::SpireService).to_string(),
                    ports.spire_server,
                    health,
                    metrics,
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

/// A SPIRE server's way to its datastore off Kubernetes: the datastore's pod and port, and the
/// CA it checks the datastore's certificate with.
pub fn datastore_reached(l: &Layout) -> Vec<Edit> {
    vec![
        text(
            Kind::Address,
            "host=spire-db.spire-system.svc port=5432",
            format!("host={} port={}", l.addr(Pod::SpireDb), l.ports.spire_db),
        ),
        text(
            Kind::FilePath,
            "/run/spire/datastore",
            l.datastore_client().display().to_string(),
        ),
    ]
}

/// A workload's spiffe-helper off Kubernetes: its node's agent socket, the workload's
/// certificate directory, its health port.
fn helper_moved(l: &Layout, workload: Workload, health: u16) -> Vec<Edit> {
    vec![
        text(
            Kind::SocketPath,
            WORKLOAD_API,
            l.agent_socket(node_of(workload)).display().to_string(),
        ),
        text(
            Kind::FilePath,
            "/spiffe-certs",
            l.certs(workload.service_account()).display().to_string(),
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
    use crate::runtime::local::pods::Network;

    /// Both ways the local runtime connects its processes.
    pub(crate) fn networks() -> [Network; 2] {
        [
            Network::SharedLoopback,
            Network::Pods {
                prefix: "spire-lab-test".into(),
            },
        ]
    }

    /// The local configs differ from the manifests' only by their listed, typed edits, with
    /// pods and without.
    #[test]
    fn local_configs_differ_from_manifests_only_in_addresses_paths_and_attestation() {
        for network in networks() {
            let layout = Layout {
                root: PathBuf::from("/tmp/spire-lab-test"),
                ports: Ports::with_offset(3),
                network,
            };
            for r in local_configs(&layout) {
                render::assert_only_edits(&r);
            }
        }
    }

    /// Peers are dialled at their pods' addresses, and what other pods reach binds every
    /// address of its pod; without pods, everything is on 127.0.0.1.
    #[test]
    fn with_pods_peers_are_pods_and_private_listeners_stay_on_the_pods_loopback() {
        let [shared, pods] = networks();
        let text = |network: Network, target: &str| {
            let layout = Layout {
                root: PathBuf::from("/tmp/spire-lab-test"),
                ports: Ports::with_offset(0),
                network,
            };
            let r = local_configs(&layout)
                .into_iter()
                .find(|r| r.target == target)
                .unwrap();
            r.apply(&crate::project_root().join("manifests")).unwrap()
        };
        let fe = text(pods.clone(), "envoy-frontend.yaml");
        assert!(
            fe.contains("{ address: 10.89.0.11, port_value: 8443 }"),
            "{fe}"
        );
        assert!(
            fe.contains("{ address: 127.0.0.1, port_value: 9901 }"),
            "{fe}"
        );
        assert!(
            fe.contains("{ address: 127.0.0.1, port_value: 8001 }"),
            "{fe}"
        );
        let be = text(pods.clone(), "envoy-backend.yaml");
        assert!(
            be.contains("{ address: 0.0.0.0, port_value: 8443 }"),
            "{be}"
        );
        assert!(
            be.contains("{ address: 127.0.0.1, port_value: 9902 }"),
            "{be}"
        );
        assert!(
            be.contains("{ address: 127.0.0.1, port_value: 9090 }"),
            "{be}"
        );
        let agent = text(pods.clone(), "agent-backend-node.conf");
        // The agents dial the replicas' Service, which has a pod of its own.
        assert!(agent.contains("server_address = \"10.89.0.20\""), "{agent}");
        let server = text(pods.clone(), "spire-server-1.conf");
        assert!(server.contains("host=10.89.0.7 port=15433"), "{server}");
        assert!(text(pods, "postgresql.conf").contains("listen_addresses = '*'"));
        let be = text(shared.clone(), "envoy-backend.yaml");
        assert!(
            be.contains("{ address: 127.0.0.1, port_value: 8443 }"),
            "{be}"
        );
        assert!(text(shared, "postgresql.conf").contains("listen_addresses = '127.0.0.1'"));
    }

    /// The pinned tools and rendered local configs in a fresh directory (removed by the caller).
    pub(crate) fn rendered(
        name: &str,
        offset: u16,
        network: Network,
    ) -> (crate::deps::Tools, Layout) {
        let pins = crate::pins::Pins::load(&crate::project_root()).unwrap();
        let tools = crate::deps::find(&pins).unwrap_or_else(|e| panic!("{e:#}"));
        let layout = Layout {
            root: std::env::temp_dir().join(format!("{name}-{}", std::process::id())),
            ports: Ports::with_offset(offset),
            network,
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

    /// The rendered local configs pass the real tools' own validation, with pods and without.
    #[test]
    fn rendered_local_configs_pass_envoy_and_spire_validation() {
        for network in networks() {
            validate_rendered(network);
        }
    }

    fn validate_rendered(network: Network) {
        let (tools, layout) = rendered("render-validate", 7, network);
        let cfg = |name: &str| layout.config(name).display().to_string();
        for envoy in ["envoy-frontend.yaml", "envoy-backend.yaml"] {
            assert!(
                validates(&tools.envoy, &["--mode", "validate", "-c", &cfg(envoy)]).contains("OK")
            );
        }
        for r in 0..crate::lab::SERVER_REPLICAS {
            validates(
                &tools.spire_server,
                &[
                    "validate",
                    "-expandEnv",
                    "-config",
                    &cfg(&format!("spire-server-{r}.conf")),
                ],
            );
        }
        for node in NODES {
            validates(
                &tools.spire_agent,
                &["validate", "-config", &cfg(&format!("agent-{node}.conf"))],
            );
        }
        std::fs::remove_dir_all(layout.root).unwrap();
    }
}
