//! The ledger's API: the third pattern, a service that gets its SVIDs from the Workload API itself
//! and serves mTLS without a sidecar. The backend writes an entry per Run Demo, the frontend reads
//! them and the identity inspector through its Envoy. Every body the ledger answers is one of these.

use serde::{Deserialize, Serialize};

use crate::Workload;

/// The JWT-SVID audience the inspector mints for when none is given.
pub const DEFAULT_AUDIENCE: &str = "ledger-inspector";

/// The most a body posted to the ledger may hold, in bytes: a JWT or a PEM chain of a few
/// certificates fits many times over.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the ledger's routes need from the caller, by SPIFFE ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `POST /entries`: only the backend records.
    Write,
    /// `GET /entries` and the inspection routes: only the frontend (the UI, through its Envoy).
    Read,
    /// `GET /whoami`: any workload of the trust domain, to see its own ID as the ledger saw it.
    AnyWorkload,
}

impl Access {
    /// The workloads allowed; empty for [`Access::AnyWorkload`].
    pub fn allowed(self) -> &'static [Workload] {
        match self {
            Access::Write => &[Workload::Backend],
            Access::Read => &[Workload::Frontend],
            Access::AnyWorkload => &[],
        }
    }
}

/// `POST /entries`: what the backend records of one Run Demo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEntry {
    /// How many orders the backend read.
    pub orders: u32,
    /// Who called the backend, as the backend's Envoy proved it.
    pub caller: Option<String>,
}

/// One recorded Run Demo.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    /// RFC 3339, UTC.
    pub at: String,
    /// The SPIFFE ID that wrote it, from the client certificate of the mTLS connection.
    pub writer: String,
    pub orders: u32,
    pub caller: Option<String>,
    /// The serial of the ledger's own SVID when it accepted the entry.
    pub ledger_serial: String,
}

/// `GET /entries`: the newest first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entries {
    pub entries: Vec<Entry>,
    pub total: u64,
}

/// The ledger's refusal or error, with any 4xx or 5xx.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerError {
    pub error: LedgerCause,
    pub reason: String,
    /// The caller's SPIFFE ID as the ledger saw it, when it refused it.
    #[serde(default)]
    pub caller: Option<String>,
}

/// Why the ledger said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerCause {
    /// The caller's SPIFFE ID may not use this route.
    IdNotAllowed,
    /// The ledger holds no usable SVID (none yet, or expired).
    NoSvid,
    /// The Workload API could not give what was asked (a JWT-SVID, a bundle).
    WorkloadApi,
    /// The request itself is wrong: unreadable, too large, missing a field.
    BadRequest,
    NotFound,
    MethodNotAllowed,
}

/// One certificate, decoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// Upper-case hexadecimal.
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    /// Seconds until `not_after` (negative once expired).
    pub seconds_left: i64,
    /// E.g. "EC P-256", "RSA 2048".
    pub key_type: String,
    pub is_ca: bool,
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
}

/// `GET /svid`: the ledger's X.509-SVID as it holds it now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SvidView {
    pub spiffe_id: String,
    /// The leaf first, then any intermediates.
    pub chain: Vec<CertInfo>,
    /// Times the Workload API pushed a new SVID since the ledger started (0 before the first
    /// rotation).
    pub rotations: u64,
}

/// `GET /bundle`: the trust domain's bundles as the ledger holds them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BundleView {
    pub trust_domain: String,
    /// The X.509 authorities, decoded.
    pub x509_authorities: Vec<CertInfo>,
    /// The SPIFFE bundle format: a JWK Set, X.509 authorities as `use: x509-svid`, JWT
    /// authorities as `use: jwt-svid`.
    pub spiffe_bundle: serde_json::Value,
}

/// `GET /jwt?audience=…`: a JWT-SVID the Workload API minted for the ledger.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MintedJwt {
    pub token: String,
    pub header: serde_json::Value,
    pub claims: serde_json::Value,
}

/// `POST /validate/jwt`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValidateJwt {
    pub token: String,
    pub audience: String,
}

/// `POST /validate/x509`: a PEM chain, leaf first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValidateX509 {
    pub pem: String,
}

/// The answer to either validation: valid with the SPIFFE ID proven, or not and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    pub valid: bool,
    pub spiffe_id: Option<String>,
    /// Why not, for programs.
    pub problem: Option<Problem>,
    /// Why not, for people.
    pub reason: Option<String>,
    /// Unix seconds, when the token or leaf says.
    pub expires_at: Option<i64>,
}

/// What was wrong with a posted SVID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Not a JWT or not PEM, or its SPIFFE ID is not one.
    Malformed,
    /// The signature does not verify against the bundle's authorities.
    BadSignature,
    /// Signed by a key or CA the bundle does not hold.
    UnknownAuthority,
    /// For another audience.
    WrongAudience,
    Expired,
    NotYetValid,
    /// From a trust domain the ledger holds no bundle for.
    ForeignTrustDomain,
    /// Anything else the verifier refused; the reason says what.
    Refused,
}

/// `GET /status` and the health listener's `/readyz` (200 when ready, 503 when not).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LedgerStatus {
    pub ready: bool,
    pub spiffe_id: Option<String>,
    pub serial: Option<String>,
    pub seconds_left: Option<i64>,
    pub rotations: u64,
    /// Why it is not ready.
    pub reason: Option<String>,
    pub entries: u64,
    /// Where it reaches the Workload API.
    pub workload_api: String,
    /// The serials of the X.509 authorities in its bundle (upper-case hex): the CAs it checks
    /// callers against.
    #[serde(default)]
    pub bundle_serials: Vec<String>,
}

/// `GET /whoami`: the caller's SPIFFE ID, from the client certificate it presented.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WhoAmI {
    pub caller: String,
}

/// What the backend tells of its write to the ledger, in its `POST /api/runs` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LedgerWrite {
    pub link: crate::Link,
    /// The entry the ledger recorded.
    pub entry: Option<Entry>,
    /// The SPIFFE ID of the ledger's server certificate, as the backend checked it.
    pub ledger_spiffe_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_names_the_workloads() {
        assert_eq!(Access::Write.allowed(), &[Workload::Backend]);
        assert_eq!(Access::Read.allowed(), &[Workload::Frontend]);
        assert!(Access::AnyWorkload.allowed().is_empty());
        let e: LedgerError =
            serde_json::from_str(r#"{"error":"id_not_allowed","reason":"no"}"#).unwrap();
        assert_eq!(e.error, LedgerCause::IdNotAllowed);
        assert_eq!(e.caller, None);
    }
}
