//! The identity panel: who holds which certificate right now, from the sources the frontend can
//! reach. A source that does not answer shows as unknown; it never breaks the page.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::Config;

#[derive(Clone, Debug, Default, Serialize)]
pub struct CertHolder {
    pub holder: String,
    pub spiffe_id: Option<String>,
    pub serial: Option<String>,
    pub seconds_left: Option<i64>,
    /// Why the fields are unknown, when they are.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdentityPanel {
    pub holders: Vec<CertHolder>,
}

const SOURCE_TIMEOUT: Duration = Duration::from_millis(700);

pub async fn gather(http: &reqwest::Client, config: &Config) -> IdentityPanel {
    let certs_url = format!("{}/certs", config.envoy_admin_url.trim_end_matches('/'));
    let identity_url = format!("{}/api/identity", config.backend_url.trim_end_matches('/'));
    let (certs, identity) = tokio::join!(fetch(http, &certs_url), fetch(http, &identity_url));
    let mut holders = vec![frontend_envoy(certs)];
    holders.extend(backend_holders(identity));
    IdentityPanel { holders }
}

async fn fetch(http: &reqwest::Client, url: &str) -> Result<Value, String> {
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
        .map_err(|e| format!("{url} answered non-JSON: {e}"))
}

fn unknown(holder: &str, note: String) -> CertHolder {
    CertHolder {
        holder: holder.into(),
        note: Some(note),
        ..CertHolder::default()
    }
}

/// The frontend Envoy's own certificate, from its admin `/certs`.
pub fn frontend_envoy(certs: Result<Value, String>) -> CertHolder {
    const NAME: &str = "frontend Envoy (SDS)";
    let certs = match certs {
        Ok(v) => v,
        Err(e) => return unknown(NAME, e),
    };
    let leaf = certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cert_chain"].as_array()?.first())
        .next();
    let Some(leaf) = leaf else {
        return unknown(
            NAME,
            "Envoy holds no certificate yet (SDS not answered?)".into(),
        );
    };
    CertHolder {
        holder: NAME.into(),
        spiffe_id: leaf["subject_alt_names"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|san| san["uri"].as_str().map(str::to_owned)),
        serial: leaf["serial_number"].as_str().map(str::to_uppercase),
        seconds_left: leaf["expiration_time"]
            .as_str()
            .and_then(parse_rfc3339)
            .map(|t| t - now()),
        note: None,
    }
}

/// The backend's SVID and the PostgreSQL server certificate it last checked, from `/api/identity`.
pub fn backend_holders(identity: Result<Value, String>) -> Vec<CertHolder> {
    const BACKEND: &str = "backend (spiffe-helper files)";
    const POSTGRES: &str = "PostgreSQL server (as the backend saw it)";
    let identity = match identity {
        Ok(v) => v,
        Err(e) => return vec![unknown(BACKEND, e.clone()), unknown(POSTGRES, e)],
    };
    let svid = &identity["svid"];
    let backend = match svid["error"].as_str() {
        Some(e) => unknown(BACKEND, e.into()),
        None => CertHolder {
            holder: BACKEND.into(),
            spiffe_id: svid["spiffe_id"].as_str().map(Into::into),
            serial: svid["serial"].as_str().map(Into::into),
            seconds_left: svid["seconds_left"].as_i64(),
            note: None,
        },
    };
    let db = &identity["db_server"];
    let postgres = if db.is_object() {
        CertHolder {
            holder: POSTGRES.into(),
            spiffe_id: db["spiffe_id"].as_str().map(Into::into),
            serial: db["serial"].as_str().map(Into::into),
            seconds_left: db["not_after"].as_i64().map(|t| t - now()),
            note: None,
        }
    } else {
        unknown(POSTGRES, "no connection to PostgreSQL made yet".into())
    };
    vec![backend, postgres]
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `2026-11-22T06:11:08Z` (Envoy's `/certs` format) as Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-22T06:11:08Z"), Some(1_795_327_868));
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00.5Z"), Some(951_825_600));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn envoy_certs_give_the_leaf() {
        let certs = json!({"certificates": [{
            "ca_cert": [{"serial_number": "01", "subject_alt_names": [{"uri": "spiffe://example.org"}]}],
            "cert_chain": [{"serial_number": "ab12", "subject_alt_names": [{"uri": "spiffe://example.org/ns/demo/sa/frontend"}],
                            "expiration_time": "2999-01-01T00:00:00Z"}]
        }]});
        let h = frontend_envoy(Ok(certs));
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
        let hs = backend_holders(Ok(json!({
            "svid": {"spiffe_id": "spiffe://example.org/ns/demo/sa/backend", "serial": "AB", "seconds_left": 30},
            "db_server": {"spiffe_id": "spiffe://example.org/ns/demo/sa/postgres", "serial": "CD", "not_after": now() + 60}
        })));
        assert_eq!(hs[0].seconds_left, Some(30));
        assert!(
            hs[1].seconds_left.is_some_and(|s| (55..=60).contains(&s)),
            "{:?}",
            hs[1]
        );
        let empty = frontend_envoy(Ok(json!({"certificates": []})));
        assert!(empty.note.unwrap().contains("no certificate"));
    }
}
