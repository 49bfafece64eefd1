//! The broker pattern: the backend logs in to OpenBao with a JWT-SVID (through SPIRE's OIDC
//! discovery provider) and reads `reports` as a short-lived PostgreSQL user OpenBao made for it.
//! The backend's `GET /api/reports` and the `reports` of `POST /api/runs`.

use serde::{Deserialize, Serialize};

use crate::Link;

/// One row of the `reports` view: orders by status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub status: String,
    pub orders: i64,
}

/// What the backend holds from OpenBao now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    /// The SPIFFE ID (`sub`) of the JWT-SVID its current OpenBao token was issued for.
    pub logged_in_as: Option<String>,
    /// OpenBao's SPIFFE ID, from the certificate the backend checked.
    pub openbao_spiffe_id: Option<String>,
    pub token_seconds_left: Option<i64>,
    /// The short-lived PostgreSQL user (`v-…`) of the current lease.
    pub db_user: Option<String>,
    pub lease_seconds_left: Option<i64>,
    /// The lease's duration as OpenBao last granted or renewed it.
    pub lease_duration_s: Option<u64>,
    /// How long the last login took (the JWT-SVID verified against the discovery provider's
    /// keys, a token issued), in milliseconds.
    #[serde(default)]
    pub last_login_ms: Option<u64>,
    /// Logins, and credential switches (a new user replacing the one before), since the start.
    pub logins: u64,
    pub rotations: u64,
    /// The demo secret read from `kv/demo/api-token`, masked.
    pub api_token_masked: Option<String>,
    /// Why OpenBao could not be reached or refused the last call, while the lease may still
    /// hold.
    pub problem: Option<String>,
}

/// The reports, and how the link to OpenBao fared.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reports {
    pub link: Link,
    #[serde(default)]
    pub rows: Vec<ReportRow>,
    pub broker: Broker,
}

/// A secret shown as its first four characters and its length.
pub fn mask(secret: &str) -> String {
    let head: String = secret.chars().take(4).collect();
    format!("{head}… ({} characters)", secret.chars().count())
}
