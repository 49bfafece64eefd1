//! Where the local runtime puts everything: its "nodes", its ports on 127.0.0.1, and the paths
//! under one state directory. Nothing outside `runtime::local` knows any of them.

use std::path::PathBuf;

use contract::Workload;
use serde::{Deserialize, Serialize};

use super::pods::{Network, Pod};
use crate::lab::Component;

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
    /// The backend's health listener (`/healthz`, `/readyz`, `/metrics`), as on kind.
    #[serde(default = "backend_health")]
    pub backend_health: u16,
    pub postgres: u16,
    /// Where agents reach the SPIRE server: the Service in front of the replicas.
    pub spire_server: u16,
    /// Each replica's own API and health ports.
    pub spire_server_replicas: [u16; 2],
    pub spire_server_health: [u16; 2],
    /// Each replica's metrics (Prometheus text format).
    #[serde(default = "server_metrics")]
    pub spire_server_metrics: [u16; 2],
    /// The SPIRE servers' datastore.
    pub spire_db: u16,
    pub agent_health: [u16; 3],
    #[serde(default = "agent_metrics")]
    pub agent_metrics: [u16; 3],
    pub backend_helper_health: u16,
    pub postgres_helper_health: u16,
    /// The ledger's mTLS API and its plain health listener.
    #[serde(default = "ledger")]
    pub ledger: u16,
    #[serde(default = "ledger_health")]
    pub ledger_health: u16,
    /// SPIRE's OIDC discovery provider (TLS) and its health listener.
    #[serde(default = "spire_oidc")]
    pub spire_oidc: u16,
    #[serde(default = "spire_oidc_health")]
    pub spire_oidc_health: u16,
    /// OpenBao's API (TLS with its SVID) and its spiffe-helper's health listener.
    #[serde(default = "openbao")]
    pub openbao: u16,
    #[serde(default = "openbao_helper_health")]
    pub openbao_helper_health: u16,
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
            backend_health: p(backend_health()),
            postgres: p(15432),
            spire_server: p(18081),
            spire_server_replicas: [p(18082), p(18083)],
            spire_server_health: [p(18080), p(18084)],
            spire_db: p(15433),
            agent_health: [p(18090), p(18091), p(18092)],
            agent_metrics: agent_metrics().map(p),
            spire_server_metrics: server_metrics().map(p),
            backend_helper_health: p(18100),
            postgres_helper_health: p(18101),
            ledger: p(ledger()),
            ledger_health: p(ledger_health()),
            spire_oidc: p(spire_oidc()),
            spire_oidc_health: p(spire_oidc_health()),
            openbao: p(openbao()),
            openbao_helper_health: p(openbao_helper_health()),
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
            (self.backend_health, "backend health and metrics".into()),
            (self.postgres, "PostgreSQL".into()),
            (
                self.spire_server,
                "SPIRE server (the replicas' Service)".into(),
            ),
            (self.spire_db, "SPIRE servers' datastore".into()),
            (self.ledger, "ledger (mTLS API)".into()),
            (self.ledger_health, "ledger health".into()),
            (self.spire_oidc, "SPIRE OIDC discovery provider".into()),
            (
                self.spire_oidc_health,
                "SPIRE OIDC discovery provider health".into(),
            ),
            (self.openbao, "OpenBao API".into()),
            (
                self.openbao_helper_health,
                "OpenBao spiffe-helper health".into(),
            ),
            (
                self.backend_helper_health,
                "backend spiffe-helper health".into(),
            ),
            (
                self.postgres_helper_health,
                "PostgreSQL spiffe-helper health".into(),
            ),
        ];
        for r in 0..2 {
            v.push((
                self.spire_server_replicas[r],
                format!("SPIRE server replica {r}"),
            ));
            v.push((
                self.spire_server_health[r],
                format!("SPIRE server replica {r} health"),
            ));
        }
        for (node, port) in NODES.iter().zip(self.agent_health) {
            v.push((port, format!("SPIRE agent {node} health")));
        }
        for (node, port) in NODES.iter().zip(self.agent_metrics) {
            v.push((port, format!("SPIRE agent {node} metrics")));
        }
        for (r, port) in self.spire_server_metrics.iter().enumerate() {
            v.push((*port, format!("SPIRE server replica {r} metrics")));
        }
        v
    }
}

fn backend_health() -> u16 {
    9091
}

fn ledger() -> u16 {
    18443
}

fn ledger_health() -> u16 {
    18444
}

fn spire_oidc() -> u16 {
    18446
}

fn spire_oidc_health() -> u16 {
    18447
}

fn openbao() -> u16 {
    18200
}

fn openbao_helper_health() -> u16 {
    18102
}

fn server_metrics() -> [u16; 2] {
    [18086, 18087]
}

fn agent_metrics() -> [u16; 3] {
    [18095, 18096, 18097]
}

/// Where the local runtime keeps everything, under one state directory, and how its processes
/// are connected.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub root: PathBuf,
    pub ports: Ports,
    #[serde(default = "shared_loopback")]
    pub network: Network,
}

fn shared_loopback() -> Network {
    Network::SharedLoopback
}

impl Layout {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    /// Replica `r`'s admin socket.
    pub fn server_socket(&self, r: u8) -> PathBuf {
        self.p(&format!("spire-server/{r}/api.sock"))
    }
    pub fn server_data(&self, r: u8) -> PathBuf {
        self.p(&format!("spire-server/{r}/data"))
    }
    /// The datastore's own files (the postgres user's): `data`, `run`, `tls` (its certificate
    /// and key).
    pub fn spire_db(&self, rel: &str) -> PathBuf {
        self.p(&format!("spire-db/{rel}"))
    }
    /// What the servers reach the datastore with (the lab's user's, 0700): `password` (0600)
    /// and `ca.crt`.
    pub fn datastore_client(&self) -> PathBuf {
        self.p("spire-server/datastore")
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
    /// Where peers reach a pod (127.0.0.1 on the shared loopback).
    pub fn addr(&self, pod: Pod) -> std::net::Ipv4Addr {
        self.network.addr(pod)
    }
    /// The copies of the programs the workloads run, where their uids can reach them.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.p(&format!("bin/{name}"))
    }
}

/// The pod a component runs in.
pub fn pod_of(c: Component) -> Pod {
    match c {
        Component::SpireDatastore => Pod::SpireDb,
        Component::SpireServer(r) => Pod::SpireServer(r),
        Component::Agent(w) => Pod::Node(w),
        Component::HelperPostgres | Component::Postgres => Pod::Postgres,
        Component::HelperBackend | Component::Backend | Component::EnvoyBackend => Pod::Backend,
        Component::EnvoyFrontend | Component::Frontend => Pod::Frontend,
        Component::Ledger => Pod::Ledger,
        Component::SpireOidc => Pod::SpireOidc,
        Component::HelperOpenBao | Component::OpenBao => Pod::OpenBao,
    }
}

/// The uid and gid a workload's processes run as when the lab runs as root, so that `unix:uid`
/// selectors tell workloads apart as service accounts do on Kubernetes (PostgreSQL's pod runs
/// as the `postgres` user instead, which PostgreSQL needs to exist).
pub fn workload_uid(w: Workload) -> u32 {
    match w {
        Workload::Frontend => 64801,
        Workload::Backend => 64802,
        Workload::Postgres => 64803,
        Workload::Ledger => 64804,
        Workload::OpenBao => 64805,
    }
}

/// The uid SPIRE's OIDC discovery provider runs as with pods: a workload of its own.
pub const SPIRE_OIDC_UID: u32 = 64806;

/// The node whose agent serves SPIRE's OIDC discovery provider its Workload API.
pub const SPIRE_OIDC_NODE: &str = NODES[0];

/// The netns name prefix of this checkout's pods (`-p`: the bench's plaintext baseline's).
pub fn netns_prefix(plaintext: bool) -> String {
    format!(
        "spire-lab-{:08x}{}",
        checkout_hash(),
        if plaintext { "p" } else { "" }
    )
}

/// The local "node" that runs a workload (and its SPIRE agent).
pub fn node_of(w: Workload) -> &'static str {
    match w {
        Workload::Frontend => NODES[0],
        Workload::Backend | Workload::OpenBao => NODES[1],
        Workload::Postgres | Workload::Ledger => NODES[2],
    }
}

/// The state directory for this checkout (`$LAB_STATE_DIR` when set).
pub fn state_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAB_STATE_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(format!(
        "/tmp/spire-lab-{}-{:08x}",
        unsafe { libc::geteuid() },
        checkout_hash()
    ))
}

/// FNV-1a of the checkout's path: two checkouts never share state or pods.
fn checkout_hash() -> u32 {
    let repo = crate::project_root();
    let mut h: u32 = 0x811c9dc5;
    for b in repo.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x01000193);
    }
    h
}

/// The git-ignored link to the running lab's state directory, in the checkout.
pub fn link() -> PathBuf {
    crate::project_root().join(".lab/local")
}
