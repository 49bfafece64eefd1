//! The JSON bodies of the services' APIs: the backend's `/api/orders`, `/api/identity`,
//! `/readyz` and error body; the frontend's `/api/run-demo` and `/api/identity`. The services
//! write them, and the frontend, the scenarios and the bench read them, through these types.

use serde::{Deserialize, Serialize};

/// How one link of the path fared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LinkStatus {
    Success,
    Failed,
    /// Not reached: an earlier link failed.
    Unknown,
}

/// Why something failed, for programs; the `reason` beside it says it for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The backend's Envoy RBAC policy refused the caller's SPIFFE ID.
    RbacDenied,
    /// The mTLS handshake between the Envoys failed.
    MtlsFailed,
    /// Nothing answered on the way to the backend (an Envoy or the backend itself is down).
    Unreachable,
    /// An earlier link failed, so this one was not tried.
    NotReached,
    /// The backend holds no usable SVID (none written yet, or unreadable).
    NoSvid,
    /// The backend's SVID expired and no newer one was written.
    SvidExpired,
    DbUnreachable,
    DbTimeout,
    /// TLS with PostgreSQL failed (its certificate, or ours, refused).
    DbTls,
    /// PostgreSQL refused the login or the query.
    DbRefused,
    /// The ledger refused the backend's SPIFFE ID.
    LedgerRefused,
    /// TLS with the ledger failed (its certificate or ID, or ours, refused).
    LedgerTls,
    /// Nothing answered at the ledger's address in time.
    LedgerUnreachable,
    /// OpenBao did not answer (down, or no OpenBao configured).
    OpenBaoUnreachable,
    /// OpenBao answered, sealed.
    OpenBaoSealed,
    /// OpenBao refused the backend's login or a read (the reason says why).
    OpenBaoRefused,
    /// TLS with OpenBao failed (its certificate or SPIFFE ID refused).
    OpenBaoTls,
    /// The short-lived database user's lease expired and no new one could be had.
    LeaseExpired,
    NotFound,
    MethodNotAllowed,
    /// An answer nobody expected.
    Unexpected,
}

/// One link of the path: its status and, when it did not succeed, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub status: LinkStatus,
    #[serde(default)]
    pub cause: Option<Cause>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Link {
    pub fn success() -> Link {
        Link {
            status: LinkStatus::Success,
            cause: None,
            reason: None,
        }
    }

    pub fn failed(cause: Cause, reason: impl Into<String>) -> Link {
        Link {
            status: LinkStatus::Failed,
            cause: Some(cause),
            reason: Some(reason.into()),
        }
    }

    pub fn not_reached(reason: impl Into<String>) -> Link {
        Link {
            status: LinkStatus::Unknown,
            cause: Some(Cause::NotReached),
            reason: Some(reason.into()),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == LinkStatus::Success
    }

    /// Failed for this cause.
    pub fn failed_with(&self, cause: Cause) -> bool {
        self.status == LinkStatus::Failed && self.cause == Some(cause)
    }
}

/// An order, as the backend reads it from PostgreSQL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: i64,
    pub description: String,
    pub status: String,
}

/// The certificate PostgreSQL presented to the backend on its latest new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCert {
    pub spiffe_id: Option<String>,
    /// Upper-case hexadecimal.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The backend's `GET /api/orders`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Orders {
    pub orders: Vec<Order>,
    /// The caller's SPIFFE ID, as the backend's Envoy forwarded it (x-forwarded-client-cert).
    pub caller: Option<String>,
    /// The backend's own SPIFFE ID.
    pub backend: Option<String>,
    pub db_server: Option<PeerCert>,
}

/// The backend's `POST /api/runs`: the orders, then the Run Demo recorded in the ledger.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    #[serde(flatten)]
    pub orders: Orders,
    pub ledger: crate::ledger::LedgerWrite,
    /// The reports, read with OpenBao's short-lived credentials.
    #[serde(default)]
    pub reports: Option<crate::openbao::Reports>,
}

/// The backend's error body, with any 4xx or 5xx.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: Cause,
    pub reason: String,
}

/// The SVID a service holds, or why it holds none it can use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SvidState {
    Held {
        spiffe_id: String,
        serial: String,
        /// Unix seconds.
        not_after: i64,
        seconds_left: i64,
    },
    Unusable {
        cause: Cause,
        error: String,
    },
}

/// The backend's `GET /api/identity`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendIdentity {
    pub svid: SvidState,
    pub db_server: Option<PeerCert>,
    pub caller: Option<String>,
}

/// The backend's `GET /readyz` (HTTP 200 when ready, 503 when not).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub cause: Option<Cause>,
    pub reason: Option<String>,
    pub svid_seconds_left: Option<i64>,
    pub svid_serial: Option<String>,
}

/// The frontend's `POST /api/run-demo`: one call through both links.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunDemo {
    pub frontend_to_backend: Link,
    pub backend_to_db: Link,
    pub orders: Vec<Order>,
    /// The SPIFFE ID the backend saw calling it (from Envoy's x-forwarded-client-cert).
    pub caller_seen_by_backend: Option<String>,
    /// The SPIFFE ID of the PostgreSQL server certificate the backend checked.
    pub db_server_spiffe_id: Option<String>,
    /// The backend's own SPIFFE ID (the one PostgreSQL let log in), as the backend said it.
    #[serde(default)]
    pub backend_spiffe_id: Option<String>,
    /// The hop where the Run Demo failed, when it is known.
    #[serde(default)]
    pub failed_at: Option<Hop>,
    /// The backend recording the Run Demo in the ledger; none when it was not asked to
    /// (`POST /api/run-demo?ledger=skip`, the bench's way to time the same work on both profiles).
    #[serde(default)]
    pub backend_to_ledger: Option<Link>,
    /// The entry the ledger recorded.
    #[serde(default)]
    pub ledger_entry: Option<u64>,
    /// The ledger's SPIFFE ID as the backend checked it.
    #[serde(default)]
    pub ledger_spiffe_id: Option<String>,
    /// The backend logging in to OpenBao and reading the reports with the database user it
    /// got there; none when not asked (as the ledger).
    #[serde(default)]
    pub backend_to_openbao: Option<Link>,
    #[serde(default)]
    pub reports: Vec<crate::openbao::ReportRow>,
    #[serde(default)]
    pub openbao: Option<crate::openbao::Broker>,
    pub elapsed_ms: u64,
}

/// How often the frontend's page, with JavaScript, swaps in a new view of the lab (ms): a
/// rotation shows on its timeline within this long of the frontend seeing it.
pub const LIVE_REFRESH_MS: u64 = 3000;

/// One hop of the path, in the order a Run Demo takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hop {
    /// The person's browser to the frontend's UI.
    BrowserFrontend,
    /// The frontend to its own Envoy, plain HTTP on the pod's loopback.
    FrontendEnvoy,
    /// The frontend's Envoy to the backend's: mTLS with SVIDs over SDS, RBAC on the caller's ID.
    EnvoyEnvoy,
    /// The backend's Envoy to the backend, on the pod's loopback, the caller's ID in a header.
    EnvoyBackend,
    /// The backend to PostgreSQL: mTLS with spiffe-helper's files, the SPIFFE ID checked at login.
    BackendPostgres,
    /// The backend to the ledger, after the orders: mTLS with the backend's files against the
    /// ledger's own SVID from the Workload API; the ledger checks the caller's SPIFFE ID.
    BackendLedger,
    /// The backend to OpenBao (a JWT-SVID login over TLS, OpenBao checked by its SPIFFE ID),
    /// then to PostgreSQL as the short-lived user OpenBao made.
    BackendOpenBao,
}

impl Hop {
    pub const ALL: [Hop; 7] = [
        Hop::BrowserFrontend,
        Hop::FrontendEnvoy,
        Hop::EnvoyEnvoy,
        Hop::EnvoyBackend,
        Hop::BackendPostgres,
        Hop::BackendLedger,
        Hop::BackendOpenBao,
    ];

    /// The element id the page gives it, and its name on the wire.
    pub fn key(self) -> &'static str {
        match self {
            Hop::BrowserFrontend => "browser-frontend",
            Hop::FrontendEnvoy => "frontend-envoy",
            Hop::EnvoyEnvoy => "envoy-envoy",
            Hop::EnvoyBackend => "envoy-backend",
            Hop::BackendPostgres => "backend-postgres",
            Hop::BackendLedger => "backend-ledger",
            Hop::BackendOpenBao => "backend-openbao",
        }
    }
}

impl RunDemo {
    /// Every link asked for succeeded and orders came back.
    pub fn succeeded(&self) -> bool {
        self.frontend_to_backend.succeeded()
            && self.backend_to_db.succeeded()
            && self.backend_to_ledger.as_ref().is_none_or(Link::succeeded)
            && self.backend_to_openbao.as_ref().is_none_or(Link::succeeded)
            && !self.orders.is_empty()
    }
}

/// A certificate holder on the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Holder {
    /// The frontend's Envoy (its SVID over SDS).
    FrontendEnvoy,
    /// The backend's Envoy (its SVID over SDS).
    BackendEnvoy,
    /// The backend's files, written by its spiffe-helper.
    BackendFiles,
    /// The certificate PostgreSQL serves (written by its spiffe-helper).
    PostgresServer,
    /// The ledger's SVID, held in memory from the Workload API.
    Ledger,
}

impl Holder {
    pub const ALL: [Holder; 5] = [
        Holder::FrontendEnvoy,
        Holder::BackendEnvoy,
        Holder::BackendFiles,
        Holder::PostgresServer,
        Holder::Ledger,
    ];

    /// Its name on the wire, in metric labels and in the page's element ids.
    pub fn key(self) -> &'static str {
        match self {
            Holder::FrontendEnvoy => "frontend-envoy",
            Holder::BackendEnvoy => "backend-envoy",
            Holder::BackendFiles => "backend-files",
            Holder::PostgresServer => "postgres-server",
            Holder::Ledger => "ledger",
        }
    }

    /// The holder a key names.
    pub fn from_key(key: &str) -> Option<Holder> {
        Holder::ALL.into_iter().find(|h| h.key() == key)
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Holder::FrontendEnvoy => "frontend Envoy",
            Holder::BackendEnvoy => "backend Envoy",
            Holder::BackendFiles => "backend files",
            Holder::PostgresServer => "PostgreSQL server cert",
            Holder::Ledger => "ledger (Workload API)",
        })
    }
}

/// One holder's certificate as the frontend's identity panel sees it; unknown fields say why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertHolder {
    pub holder: Holder,
    pub spiffe_id: Option<String>,
    pub serial: Option<String>,
    pub seconds_left: Option<i64>,
    /// Why the fields are unknown, when they are.
    pub note: Option<String>,
}

impl CertHolder {
    pub fn unknown(holder: Holder, note: impl Into<String>) -> CertHolder {
        CertHolder {
            holder,
            spiffe_id: None,
            serial: None,
            seconds_left: None,
            note: Some(note.into()),
        }
    }
}

/// The frontend's `GET /api/identity`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdentityPanel {
    pub holders: Vec<CertHolder>,
}

impl IdentityPanel {
    pub fn get(&self, holder: Holder) -> Option<&CertHolder> {
        self.holders.iter().find(|h| h.holder == holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire shapes the services have always written still read: statuses in capitals,
    /// causes in snake case, an unusable SVID as `{cause, error}`.
    #[test]
    fn wire_shapes() {
        let link: Link =
            serde_json::from_str(r#"{"status":"FAILED","cause":"rbac_denied","reason":"x"}"#)
                .unwrap();
        assert!(link.failed_with(Cause::RbacDenied));
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":"db_unreachable","reason":"down"}"#).unwrap();
        assert_eq!(body.error, Cause::DbUnreachable);
        let svid: SvidState =
            serde_json::from_str(r#"{"cause":"svid_expired","error":"expired 3 s ago"}"#).unwrap();
        assert!(matches!(
            svid,
            SvidState::Unusable {
                cause: Cause::SvidExpired,
                ..
            }
        ));
        let held = serde_json::to_value(SvidState::Held {
            spiffe_id: "spiffe://example.org/ns/demo/sa/backend".into(),
            serial: "AB".into(),
            not_after: 10,
            seconds_left: 5,
        })
        .unwrap();
        assert_eq!(held["serial"], "AB");
        for h in Holder::ALL {
            assert_eq!(serde_json::to_value(h).unwrap(), h.key());
            assert_eq!(Holder::from_key(h.key()), Some(h));
        }
    }
}
