//! Where the local runtime puts everything: its "nodes", its ports on 127.0.0.1, and the paths
//! under one state directory. Nothing outside `runtime::local` knows any of them.

use std::path::PathBuf;

use contract::Workload;
use serde::{Deserialize, Serialize};

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

/// The local "node" that runs a workload (and its SPIRE agent).
pub fn node_of(w: Workload) -> &'static str {
    match w {
        Workload::Frontend => NODES[0],
        Workload::Backend => NODES[1],
        Workload::Postgres => NODES[2],
    }
}

/// The state directory for this checkout (`$LAB_STATE_DIR` when set).
pub fn state_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAB_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let repo = crate::project_root();
    // FNV-1a of the checkout's path: two checkouts never share state.
    let mut h: u32 = 0x811c9dc5;
    for b in repo.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x01000193);
    }
    PathBuf::from(format!("/tmp/spire-lab-{}-{h:08x}", unsafe {
        libc::geteuid()
    }))
}

/// The git-ignored link to the running lab's state directory, in the checkout.
pub fn link() -> PathBuf {
    crate::project_root().join(".lab/local")
}
