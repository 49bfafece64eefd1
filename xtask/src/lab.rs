//! The vocabulary every runtime speaks: the lab's components, the certificate holders, the
//! backend Envoy's policy, and the `Lab` handle scenarios, the bench and CI use. Nothing here
//! knows where or how a runtime runs its components.

use std::path::PathBuf;
use std::time::Duration;

pub use contract::Holder;
use contract::Workload;
use openssl::x509::X509;

/// The SPIRE server's replicas (a StatefulSet's ordinals on Kubernetes).
pub const SERVER_REPLICAS: u8 = 2;

/// The lab's components, named the same on both runtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// The SPIRE servers' datastore (PostgreSQL of its own).
    SpireDatastore,
    /// One replica of the SPIRE server, by ordinal.
    SpireServer(u8),
    /// The SPIRE agent on the node that runs this workload.
    Agent(Workload),
    HelperPostgres,
    Postgres,
    HelperBackend,
    Backend,
    EnvoyBackend,
    EnvoyFrontend,
    Frontend,
    /// The third pattern: its SVIDs from the Workload API itself, no sidecar.
    Ledger,
    /// SPIRE's OIDC discovery provider: the JWT-SVID keys as OIDC discovery and JWKS.
    SpireOidc,
    /// OpenBao's spiffe-helper: its X.509-SVID files, SIGHUP to OpenBao on rotation.
    HelperOpenBao,
    /// OpenBao: JWT-SVID login, short-lived PostgreSQL users, a demo secret.
    OpenBao,
}

impl Component {
    /// Every replica of the SPIRE server.
    pub fn servers() -> impl Iterator<Item = Component> {
        (0..SERVER_REPLICAS).map(Component::SpireServer)
    }

    pub const ALL: [Component; 17] = [
        Component::SpireDatastore,
        Component::SpireServer(0),
        Component::SpireServer(1),
        Component::Agent(Workload::Frontend),
        Component::Agent(Workload::Backend),
        Component::Agent(Workload::Postgres),
        Component::HelperPostgres,
        Component::Postgres,
        Component::HelperBackend,
        Component::Backend,
        Component::EnvoyBackend,
        Component::EnvoyFrontend,
        Component::Frontend,
        Component::Ledger,
        Component::SpireOidc,
        Component::HelperOpenBao,
        Component::OpenBao,
    ];

    pub fn name(self) -> String {
        match self {
            Component::SpireDatastore => "spire-db".into(),
            Component::SpireServer(r) => format!("spire-server-{r}"),
            Component::Agent(w) => format!("agent-{}-node", w.service_account()),
            Component::HelperPostgres => "helper-postgres".into(),
            Component::Postgres => "postgres".into(),
            Component::HelperBackend => "helper-backend".into(),
            Component::Backend => "backend".into(),
            Component::EnvoyBackend => "envoy-backend".into(),
            Component::EnvoyFrontend => "envoy-frontend".into(),
            Component::Frontend => "frontend".into(),
            Component::Ledger => "ledger".into(),
            Component::SpireOidc => "spire-oidc".into(),
            Component::HelperOpenBao => "helper-openbao".into(),
            Component::OpenBao => "openbao".into(),
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Component> {
        Component::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Component::ALL.iter().map(|c| c.name()).collect();
                anyhow::anyhow!(
                    "no component {s:?}; the components are: {}",
                    names.join(", ")
                )
            })
    }
}

/// The backend Envoy's RBAC policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Only the frontend's SPIFFE ID may call (manifests/backend/config/rbac.yaml).
    AllowFrontend,
    /// Nobody may call (manifests/backend/config/rbac-deny.yaml).
    Deny,
}

impl Policy {
    /// The policy file under `manifests/backend/config/`.
    pub fn file(self) -> &'static str {
        match self {
            Policy::AllowFrontend => "rbac.yaml",
            Policy::Deny => "rbac-deny.yaml",
        }
    }
}

/// A listener that only its own pod may reach (it binds the pod's loopback): what an insider in
/// another pod, or any other process, must not get to — and, as the control, the one listener
/// other pods must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodListener {
    /// The control: the backend Envoy's mTLS listener, the one way into the backend's pod.
    BackendEnvoyMtls,
    /// The backend's API, meant to be reached only through its Envoy (mTLS and RBAC).
    BackendApi,
    /// The backend Envoy's admin (`/quitquitquit`, `/drain_listeners`, `/runtime_modify`).
    BackendEnvoyAdmin,
    /// The frontend Envoy's admin.
    FrontendEnvoyAdmin,
    /// The frontend Envoy's outbound listener, which calls the backend as the frontend.
    FrontendEnvoyOutbound,
}

impl PodListener {
    /// The pod-private ones.
    pub const PRIVATE: [PodListener; 4] = [
        PodListener::BackendApi,
        PodListener::BackendEnvoyAdmin,
        PodListener::FrontendEnvoyAdmin,
        PodListener::FrontendEnvoyOutbound,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            PodListener::BackendEnvoyMtls => "the backend Envoy's mTLS listener (the way in)",
            PodListener::BackendApi => "the backend's API (plain HTTP, behind its Envoy)",
            PodListener::BackendEnvoyAdmin => "the backend Envoy's admin",
            PodListener::FrontendEnvoyAdmin => "the frontend Envoy's admin",
            PodListener::FrontendEnvoyOutbound => {
                "the frontend Envoy's outbound listener (calls the backend as the frontend)"
            }
        }
    }
}

/// What a TCP connection from another pod to a pod's own listener met.
#[derive(Clone, Debug)]
pub enum Reach {
    /// It connected: the listener is not private to its pod.
    Connected { addr: String },
    /// It did not, and why (as the connecting side saw it).
    Refused { addr: String, reason: String },
}

/// An X.509-SVID minted by the running SPIRE server for an identity no workload holds.
pub struct Minted {
    pub identity: crate::probe::ClientIdentity,
    /// The trust bundle it came with.
    pub bundle: Vec<X509>,
}

/// One certificate holder's current certificate.
#[derive(Clone, Debug)]
pub struct Holding {
    pub holder: Holder,
    pub spiffe_id: Option<String>,
    pub serial: String,
    pub seconds_left: Option<i64>,
}

impl Holding {
    /// The leaf an Envoy holds, from its admin `/certs`.
    pub fn of_envoy(holder: Holder, admin: &str) -> anyhow::Result<Holding> {
        use anyhow::Context;
        let certs = crate::probe::envoy_certs(admin).with_context(|| holder.to_string())?;
        let leaf = certs
            .leaf()
            .with_context(|| format!("{holder} holds no certificate yet"))?;
        Ok(Holding {
            holder,
            spiffe_id: leaf.spiffe_id,
            serial: leaf.serial,
            seconds_left: leaf.not_after.map(contract::time::seconds_until),
        })
    }

    /// The certificate PostgreSQL really presents at `addr` (host:port).
    pub fn of_postgres(addr: &str) -> anyhow::Result<Holding> {
        use anyhow::Context;
        let chain = crate::probe::server_chain(addr, true).context("PostgreSQL server")?;
        Ok(Holding {
            holder: Holder::PostgresServer,
            spiffe_id: svid::spiffe_id_of(&chain[0]).ok().map(|i| i.to_string()),
            serial: svid::serial_hex(&chain[0]),
            seconds_left: Some(contract::time::seconds_until(svid::unix_time(
                chain[0].not_after(),
            ))),
        })
    }

    /// The SVID the ledger holds in memory, from its health listener's `/readyz` at `health`
    /// (host:port).
    pub fn of_ledger(health: &str) -> anyhow::Result<Holding> {
        use anyhow::Context;
        let s = ledger_status(health)?;
        Ok(Holding {
            holder: Holder::Ledger,
            spiffe_id: s.spiffe_id,
            serial: s.serial.with_context(|| {
                format!("the ledger holds no SVID: {}", s.reason.unwrap_or_default())
            })?,
            seconds_left: s.seconds_left,
        })
    }
}

/// The ledger's `/readyz` (its SVID, its bundle's CAs) at `health` (host:port), ready or not.
pub fn ledger_status(health: &str) -> anyhow::Result<contract::ledger::LedgerStatus> {
    use anyhow::Context;
    let (_, body) = crate::probe::get(&format!("http://{health}/readyz")).context("ledger")?;
    serde_json::from_str(&body)
        .with_context(|| format!("the ledger's /readyz does not read: {body}"))
}

/// What a scenario may do to a running lab, on either runtime. A runtime answers for itself;
/// callers never ask which runtime they have (`capabilities` say how it behaves instead).
pub trait Lab {
    /// For messages: "local runtime", "kind runtime".
    fn label(&self) -> &'static str;
    /// How this runtime behaves where scenarios must know it.
    fn capabilities(&self) -> Capabilities;
    fn frontend_url(&self) -> String;
    fn envoy_admin_url(&self, backend: bool) -> String;
    fn stop(&mut self, c: Component) -> anyhow::Result<()>;
    fn start(&mut self, c: Component) -> anyhow::Result<()>;
    /// An identifier of the running instance (a pid locally), to prove what was not restarted.
    fn instance(&self, c: Component) -> Option<String>;
    fn set_policy(&mut self, p: Policy) -> anyhow::Result<()>;
    /// A short X.509-SVID TTL (seconds) for the three workloads, or back to the default.
    fn set_svid_ttl(&mut self, ttl: Option<u32>) -> anyhow::Result<()>;
    fn log(&self, c: Component) -> anyhow::Result<String>;
    /// The SPIRE server's current X.509 trust bundle.
    fn trust_bundle(&self) -> anyhow::Result<Vec<X509>>;
    /// The four certificate holders: frontend Envoy, backend Envoy, backend files, PostgreSQL.
    fn holdings(&self) -> Vec<anyhow::Result<Holding>>;
    /// The CA certificates each holder checks its peers with, by serial (upper-case hex): the
    /// Envoys' validation contexts, the backend's and PostgreSQL's bundle files.
    fn trusted_cas(&self) -> Vec<(Holder, anyhow::Result<Vec<String>>)>;
    /// The chains the backend Envoy and PostgreSQL present, and the backend's files.
    fn presented_chains(&self) -> Vec<(&'static str, anyhow::Result<Vec<X509>>)>;
    /// The backend's `/readyz`: status and body.
    fn backend_readyz(&self) -> anyhow::Result<(u16, contract::Readiness)>;
    /// A service's `/metrics` (the frontend's, or the backend's on its health listener),
    /// scraped now.
    fn metrics(&self, service: Workload) -> anyhow::Result<contract::metrics::Scrape>;
    /// A SPIRE server replica's or agent's telemetry (Prometheus text format), scraped now.
    fn spire_metrics(&self, c: Component) -> anyhow::Result<contract::metrics::Scrape>;
    /// host:port of the backend Envoy's mTLS listener, reachable from here.
    fn backend_envoy_addr(&self) -> String;
    /// host:port of the ledger's own mTLS listener, reachable from here.
    fn ledger_addr(&self) -> String;
    /// Asks the Workload API for an SVID from a workload no entry describes (locally a process
    /// on the backend's node, on kind a pod with service account `rogue`).
    fn fetch_svid_unregistered(&self) -> anyhow::Result<String>;
    /// Registers `spiffe://example.org/ns/demo/sa/rogue` (DNS name `backend`, so its CN passes
    /// PostgreSQL's `cert` check) and fetches its SVID: the directory with svid.0.pem,
    /// svid.0.key and bundle.0.pem.
    fn issue_rogue_svid(&mut self) -> anyhow::Result<PathBuf>;
    fn remove_rogue(&mut self) -> anyhow::Result<()>;
    /// Connects to PostgreSQL as user `backend` with the rogue's certificate (`dir`, or on kind
    /// the same files inside the rogue pod) and reads orders.
    fn query_postgres_with(&self, dir: &std::path::Path) -> anyhow::Result<String>;
    /// An X.509-SVID for `spiffe_id` (first DNS name, the certificate's CN: `dns`) from the
    /// running SPIRE server's `x509 mint`: signed by the lab's CA, registered nowhere.
    fn mint_svid(
        &self,
        spiffe_id: &str,
        dns: Option<&str>,
        ttl: Duration,
    ) -> anyhow::Result<Minted>;
    /// host:port of PostgreSQL's TLS listener, reachable from here.
    fn postgres_addr(&self) -> String;
    /// `spire-server COMMAND… -socketPath … FLAGS…` against replica `replica`'s API, or the
    /// first replica that answers when None: what it printed (stdout), or its error.
    fn spire_server(
        &self,
        replica: Option<u8>,
        command: &[&str],
        flags: &[&str],
    ) -> anyhow::Result<String>;
    /// `bao ARGS…` as the lab's administrator (the root token kept at `up`) against the lab's
    /// OpenBao, `stdin` on its standard input: what it printed, or its error.
    fn openbao(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String>;
    /// SQL as PostgreSQL's superuser in database `demo`: the rows, unaligned.
    fn postgres_admin(&self, sql: &str) -> anyhow::Result<String>;
    /// Ends a component at once (SIGKILL; on Kubernetes its pod deleted with no grace period);
    /// `start` brings it back (on Kubernetes its controller does, and `start` waits for it).
    fn kill(&mut self, c: Component) -> anyhow::Result<()>;
    /// TCP connections, from a pod of no workload (made for this and removed after), to each
    /// pod's own listener at that pod's address. Only where `Capabilities::shared_loopback` is
    /// None.
    fn reach_from_another_pod(
        &mut self,
        targets: &[PodListener],
    ) -> anyhow::Result<Vec<(PodListener, Reach)>>;
}

/// How a runtime behaves, where a scenario must allow for it.
#[derive(Clone, Copy, Debug)]
pub struct Capabilities {
    /// A pod that fails its readiness probe leaves its Service (Kubernetes), so that callers
    /// stop reaching it at all.
    pub readiness_gates_traffic: bool,
    /// How long a changed RBAC policy may take to reach the backend's Envoy (a ConfigMap
    /// reaches a pod's volume only on the kubelet's next sync).
    pub policy_propagation: Duration,
    /// None where each pod has a loopback of its own (Kubernetes; the local runtime as root);
    /// else why every component shares one, which no scenario can then prove private.
    pub shared_loopback: Option<&'static str>,
}
