//! The identity panel: who holds which certificate right now, from the sources the frontend can
//! reach. A source that does not answer shows as unknown; it never breaks the page.

use std::time::Duration;

use contract::envoy::Certs;
use contract::ledger::LedgerStatus;
use contract::time::seconds_until;
use contract::{BackendIdentity, CertHolder, Holder, IdentityPanel, SvidState};
use serde::de::DeserializeOwned;

use crate::Config;

const SOURCE_TIMEOUT: Duration = Duration::from_millis(700);

pub async fn gather(http: &reqwest::Client, config: &Config) -> IdentityPanel {
    let certs_url = format!("{}/certs", config.envoy_admin_url.trim_end_matches('/'));
    let identity_url = format!("{}/api/identity", config.backend_url.trim_end_matches('/'));
    // The ledger through the frontend's Envoy too, which routes /ledger/ to it over mTLS.
    let ledger_url = format!("{}/ledger/status", config.backend_url.trim_end_matches('/'));
    let (certs, identity, ledger) = tokio::join!(
        fetch(http, &certs_url),
        fetch(http, &identity_url),
        fetch(http, &ledger_url)
    );
    let mut holders = vec![frontend_envoy(certs)];
    holders.extend(backend_holders(identity));
    holders.push(ledger_holder(ledger));
    IdentityPanel { holders }
}

async fn fetch<T: DeserializeOwned>(http: &reqwest::Client, url: &str) -> Result<T, String> {
    let res = http
        .get(url)
        .timeout(SOURCE_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("{url} did not answer: {e}"))?;
    if !res.status().is_success() {
        return Err(format!("{url} answered HTTP {}", res.status().as_u16()));
    }
    res.json()
        .await
        .map_err(|e| format!("{url} answered something unreadable: {e}"))
}

/// The frontend Envoy's own certificate, from its admin `/certs`.
pub fn frontend_envoy(certs: Result<Certs, String>) -> CertHolder {
    let holder = Holder::FrontendEnvoy;
    let certs = match certs {
        Ok(v) => v,
        Err(e) => return CertHolder::unknown(holder, e),
    };
    let Some(leaf) = certs.leaf() else {
        return CertHolder::unknown(holder, "Envoy holds no certificate yet (SDS not answered?)");
    };
    CertHolder {
        holder,
        spiffe_id: leaf.spiffe_id,
        serial: Some(leaf.serial),
        seconds_left: leaf.not_after.map(seconds_until),
        note: None,
    }
}

/// The backend's SVID and the PostgreSQL server certificate it last checked, from `/api/identity`.
pub fn backend_holders(identity: Result<BackendIdentity, String>) -> Vec<CertHolder> {
    let identity = match identity {
        Ok(v) => v,
        Err(e) => {
            return vec![
                CertHolder::unknown(Holder::BackendFiles, e.clone()),
                CertHolder::unknown(Holder::PostgresServer, e),
            ];
        }
    };
    let backend = match identity.svid {
        SvidState::Unusable { error, .. } => CertHolder::unknown(Holder::BackendFiles, error),
        SvidState::Held {
            spiffe_id,
            serial,
            seconds_left,
            ..
        } => CertHolder {
            holder: Holder::BackendFiles,
            spiffe_id: Some(spiffe_id),
            serial: Some(serial),
            seconds_left: Some(seconds_left),
            note: None,
        },
    };
    let postgres = match identity.db_server {
        Some(db) => CertHolder {
            holder: Holder::PostgresServer,
            spiffe_id: db.spiffe_id,
            serial: Some(db.serial),
            seconds_left: Some(seconds_until(db.not_after)),
            note: None,
        },
        None => CertHolder::unknown(
            Holder::PostgresServer,
            "no connection to PostgreSQL made yet",
        ),
    };
    vec![backend, postgres]
}

/// The ledger's SVID as it holds it in memory, from its `/status`.
pub fn ledger_holder(status: Result<LedgerStatus, String>) -> CertHolder {
    match status {
        Ok(s) if s.ready => CertHolder {
            holder: Holder::Ledger,
            spiffe_id: s.spiffe_id,
            serial: s.serial,
            seconds_left: s.seconds_left,
            note: None,
        },
        Ok(s) => CertHolder::unknown(
            Holder::Ledger,
            s.reason
                .unwrap_or_else(|| "the ledger holds no SVID".into()),
        ),
        Err(e) => CertHolder::unknown(Holder::Ledger, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::PeerCert;

    #[test]
    fn envoy_certs_give_the_leaf() {
        let certs: Certs = serde_json::from_value(serde_json::json!({"certificates": [{
            "ca_cert": [{"serial_number": "01", "subject_alt_names": [{"uri": "spiffe://example.org"}]}],
            "cert_chain": [{"serial_number": "ab12", "subject_alt_names": [{"uri": "spiffe://example.org/ns/demo/sa/frontend"}],
                            "expiration_time": "2999-01-01T00:00:00Z"}]
        }]}))
        .unwrap();
        let h = frontend_envoy(Ok(certs));
        assert_eq!(h.holder, Holder::FrontendEnvoy);
        assert_eq!(
            h.spiffe_id.as_deref(),
            Some("spiffe://example.org/ns/demo/sa/frontend")
        );
        assert_eq!(h.serial.as_deref(), Some("AB12"));
        assert!(h.seconds_left.unwrap() > 0);
    }

    #[test]
    fn missing_sources_show_as_unknown() {
        let h = frontend_envoy(Err("http://127.0.0.1:9901/certs did not answer".into()));
        assert!(h.spiffe_id.is_none() && h.note.unwrap().contains("did not answer"));
        let hs = backend_holders(Err("down".into()));
        assert_eq!(hs.len(), 2);
        assert!(hs.iter().all(|h| h.spiffe_id.is_none() && h.note.is_some()));
        let hs = backend_holders(Ok(BackendIdentity {
            svid: SvidState::Held {
                spiffe_id: "spiffe://example.org/ns/demo/sa/backend".into(),
                serial: "AB".into(),
                not_after: 0,
                seconds_left: 30,
            },
            db_server: Some(PeerCert {
                spiffe_id: Some("spiffe://example.org/ns/demo/sa/postgres".into()),
                serial: "CD".into(),
                not_after: contract::time::unix_now() + 60,
            }),
            caller: None,
        }));
        assert_eq!(hs[0].seconds_left, Some(30));
        assert!(
            hs[1].seconds_left.is_some_and(|s| (55..=60).contains(&s)),
            "{:?}",
            hs[1]
        );
        let empty = frontend_envoy(Ok(Certs::default()));
        assert!(empty.note.unwrap().contains("no certificate"));
    }
}
