//! The trust domain and the SPIFFE IDs of the lab's workloads: `spiffe://example.org/ns/demo/sa/<sa>`
//! on both runtimes, the same that Kubernetes service accounts give on kind.

/// The lab's SPIFFE trust domain.
pub const TRUST_DOMAIN: &str = "example.org";

/// The Kubernetes namespace of the workloads; part of their SPIFFE IDs on both runtimes.
pub const NAMESPACE: &str = "demo";

/// `spiffe://example.org/ns/demo/sa/{service_account}`.
pub fn workload_id(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{service_account}")
}

/// The ID of the trust domain itself (`spiffe://example.org`): what an Envoy asks SDS for its
/// validation bundle by.
pub fn trust_domain_id() -> String {
    format!("spiffe://{TRUST_DOMAIN}")
}

/// A workload the lab registers: one service account, one SPIFFE ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Frontend,
    Backend,
    Postgres,
    /// The third pattern: gets its SVIDs from the Workload API itself, no sidecar, no files.
    Ledger,
    /// The broker: trusts the backend's JWT-SVIDs and hands it short-lived database users; its
    /// own X.509-SVID (spiffe-helper's files) serves its TLS and logs it in to PostgreSQL.
    OpenBao,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::Frontend,
        Workload::Backend,
        Workload::Postgres,
        Workload::Ledger,
        Workload::OpenBao,
    ];

    /// Its service account (on kind) and the last segment of its SPIFFE ID.
    pub fn service_account(self) -> &'static str {
        match self {
            Workload::Frontend => "frontend",
            Workload::Backend => "backend",
            Workload::Postgres => "postgres",
            Workload::Ledger => "ledger",
            Workload::OpenBao => "openbao",
        }
    }

    pub fn spiffe_id(self) -> String {
        workload_id(self.service_account())
    }

    /// The DNS name its SVID carries, if any. SPIRE makes the first DNS name the subject's CN,
    /// and PostgreSQL's `cert` authentication maps that CN to the database user `backend`.
    pub fn dns_name(self) -> Option<&'static str> {
        match self {
            Workload::Frontend => None,
            Workload::Backend => Some("backend"),
            Workload::Postgres => Some("postgres"),
            Workload::Ledger => Some("ledger"),
            Workload::OpenBao => Some("openbao"),
        }
    }
}

/// SPIRE's OIDC discovery provider, a workload of the SPIRE system's namespace.
pub const OIDC_PROVIDER_ID: &str = "spiffe://example.org/ns/spire-system/sa/spire-oidc";

/// The audience of the JWT-SVIDs the backend logs in to OpenBao with (the role's
/// `bound_audiences`).
pub const OPENBAO_AUDIENCE: &str = "openbao";

/// The service account of the `unregistered` scenario's rogue: registered only while that
/// scenario runs, with the backend's DNS name so that its CN passes PostgreSQL's `cert` check.
pub const ROGUE: &str = "rogue";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_kubernetes_shape() {
        assert_eq!(
            Workload::Backend.spiffe_id(),
            "spiffe://example.org/ns/demo/sa/backend"
        );
        assert_eq!(workload_id(ROGUE), "spiffe://example.org/ns/demo/sa/rogue");
        assert_eq!(trust_domain_id(), "spiffe://example.org");
    }
}
