//! One Run Demo: call the backend through the frontend's Envoy and explain what happened.
//!
//! The Envoys in this lab prefix their own replies with who they are ("frontend Envoy:",
//! "backend Envoy:", see their `local_reply_config`), so a failure can be put on the right hop.

use contract::{Cause, ErrorBody, Hop, Link, Orders, Run, RunDemo};

use crate::{Config, Metrics};

/// What came back from the frontend's Envoy.
#[derive(Debug)]
pub enum Upstream {
    Answered { status: u16, body: String },
    ConnectFailed(String),
    TimedOut(u64),
    Failed(String),
}

const RBAC_REASON: &str =
    "denied by the backend's Envoy RBAC policy: this caller's SPIFFE ID is not allowed";
const NOT_REACHED: &str = "not reached: the call to the backend failed first";

fn backend_failed(cause: Cause, reason: String) -> (Link, Link) {
    (Link::failed(cause, reason), Link::not_reached(NOT_REACHED))
}

/// Turns the answer into both links' status and a reason a person understands.
pub fn classify(upstream: Upstream, envoy: &str) -> RunDemo {
    let mut result = RunDemo {
        frontend_to_backend: Link::success(),
        backend_to_db: Link::success(),
        orders: Vec::new(),
        caller_seen_by_backend: None,
        db_server_spiffe_id: None,
        backend_spiffe_id: None,
        failed_at: None,
        backend_to_ledger: None,
        ledger_entry: None,
        ledger_spiffe_id: None,
        backend_to_openbao: None,
        reports: Vec::new(),
        openbao: None,
        elapsed_ms: 0,
    };
    let unreachable = |reason: String| backend_failed(Cause::Unreachable, reason);
    let ((f2b, b2db), at) = match upstream {
        Upstream::ConnectFailed(e) => (
            unreachable(format!(
                "backend unreachable: the frontend's Envoy at {envoy} is not accepting connections ({e})"
            )),
            Some(Hop::FrontendEnvoy),
        ),
        Upstream::TimedOut(ms) => (
            unreachable(format!("backend unreachable: no answer within {ms} ms")),
            None,
        ),
        Upstream::Failed(e) => (unreachable(format!("backend unreachable: {e}")), None),
        Upstream::Answered { status: 200, body } => {
            // `POST /api/runs` answers the orders and the ledger's outcome; `GET /api/orders`
            // the orders alone.
            let (orders, ledger, reports) = match serde_json::from_str::<Run>(&body) {
                Ok(run) => (Ok(run.orders), Some(run.ledger), run.reports),
                Err(_) => (serde_json::from_str::<Orders>(&body), None, None),
            };
            match orders {
                Ok(orders) => {
                    result.orders = orders.orders;
                    result.caller_seen_by_backend = orders.caller;
                    result.backend_spiffe_id = orders.backend;
                    result.db_server_spiffe_id = orders.db_server.and_then(|s| s.spiffe_id);
                    let at = match (&ledger, &reports) {
                        (Some(l), _) if !l.link.succeeded() => Some(Hop::BackendLedger),
                        (_, Some(r)) if !r.link.succeeded() => Some(Hop::BackendOpenBao),
                        _ => None,
                    };
                    if let Some(ledger) = ledger {
                        result.ledger_entry = ledger.entry.map(|e| e.id);
                        result.ledger_spiffe_id = ledger.ledger_spiffe_id;
                        result.backend_to_ledger = Some(ledger.link);
                    }
                    if let Some(reports) = reports {
                        result.backend_to_openbao = Some(reports.link);
                        result.reports = reports.rows;
                        result.openbao = Some(reports.broker);
                    }
                    ((Link::success(), Link::success()), at)
                }
                Err(e) => (
                    backend_failed(
                        Cause::Unexpected,
                        format!("the backend answered something unreadable: {e}"),
                    ),
                    Some(Hop::EnvoyBackend),
                ),
            }
        }
        Upstream::Answered { status, body } => {
            if let Ok(err) = serde_json::from_str::<ErrorBody>(&body) {
                // The backend itself answered: the first link worked.
                (
                    (Link::success(), Link::failed(err.error, err.reason)),
                    Some(Hop::BackendPostgres),
                )
            } else {
                let (cause, reason, at) = explain_envoy_reply(status, body.trim());
                (backend_failed(cause, reason), at)
            }
        }
    };
    result.frontend_to_backend = f2b;
    result.backend_to_db = b2db;
    result.failed_at = at;
    result
}

/// The cause, the reason, and the hop that failed when the reply tells it.
fn explain_envoy_reply(status: u16, body: &str) -> (Cause, String, Option<Hop>) {
    let detail = body
        .trim_start_matches("frontend Envoy:")
        .trim_start_matches("backend Envoy:")
        .trim();
    if status == 403 && body.contains("RBAC: access denied") {
        return (Cause::RbacDenied, RBAC_REASON.into(), Some(Hop::EnvoyEnvoy));
    }
    let tls = [
        "TLS_error",
        "CERTIFICATE_VERIFY_FAILED",
        "SSL routines",
        "TLS error",
    ]
    .iter()
    .any(|m| body.contains(m));
    if tls {
        return (
            Cause::MtlsFailed,
            format!(
                "mTLS to the backend failed: the handshake between the Envoys was refused ({detail})"
            ),
            Some(Hop::EnvoyEnvoy),
        );
    }
    let refused = [
        "Connection refused",
        "Connection_refused",
        "connect_error",
        "connection failure",
    ]
    .iter()
    .any(|m| body.contains(m));
    if refused && body.starts_with("frontend Envoy:") {
        return (
            Cause::Unreachable,
            format!(
                "backend unreachable: the backend's Envoy does not accept connections (HTTP {status}: {detail})"
            ),
            Some(Hop::EnvoyEnvoy),
        );
    }
    if body.starts_with("backend Envoy:") {
        return (
            Cause::Unreachable,
            format!(
                "backend unreachable: the backend's Envoy is up but the backend service did not answer (HTTP {status}: {detail})"
            ),
            Some(Hop::EnvoyBackend),
        );
    }
    if body.contains("upstream connect error") || body.contains("no healthy upstream") {
        return (
            Cause::Unreachable,
            format!(
                "mTLS to the backend failed / backend unreachable: the backend's Envoy could not be reached (HTTP {status}: {detail})"
            ),
            Some(Hop::EnvoyEnvoy),
        );
    }
    let excerpt: String = detail.chars().take(200).collect();
    (
        Cause::Unexpected,
        format!("unexpected answer from the backend path: HTTP {status}: {excerpt}"),
        None,
    )
}

/// Calls the backend through the frontend's Envoy and classifies the outcome: `POST /api/runs`
/// (the orders, then an entry in the ledger) when `record`, else `GET /api/orders`.
pub async fn run(
    http: &reqwest::Client,
    config: &Config,
    metrics: &Metrics,
    record: bool,
) -> RunDemo {
    let started = std::time::Instant::now();
    let base = config.backend_url.trim_end_matches('/');
    let request = if record {
        http.post(format!("{base}/api/runs"))
    } else {
        http.get(format!("{base}/api/orders"))
    };
    let upstream = match request.send().await {
        Ok(res) => {
            let status = res.status().as_u16();
            match res.text().await {
                Ok(body) => Upstream::Answered { status, body },
                Err(e) if e.is_timeout() => Upstream::TimedOut(config.timeout_ms),
                Err(e) => Upstream::Failed(e.to_string()),
            }
        }
        Err(e) if e.is_connect() => Upstream::ConnectFailed(root_cause(&e)),
        Err(e) if e.is_timeout() => Upstream::TimedOut(config.timeout_ms),
        Err(e) => Upstream::Failed(root_cause(&e)),
    };
    metrics.backend_call(started.elapsed());
    let mut result = classify(upstream, &config.backend_url);
    if record && result.backend_to_ledger.is_none() {
        result.backend_to_ledger = Some(Link::not_reached(
            "not reached: the orders failed first, so nothing was recorded",
        ));
    }
    if record && result.backend_to_openbao.is_none() && !result.backend_to_db.succeeded() {
        result.backend_to_openbao = Some(Link::not_reached(
            "not reached: the orders failed first, so no reports were read",
        ));
    }
    result.elapsed_ms = started.elapsed().as_millis() as u64;
    if !result.succeeded() {
        tracing::warn!(
            frontend_to_backend = ?result.frontend_to_backend,
            backend_to_db = ?result.backend_to_db,
            backend_to_ledger = ?result.backend_to_ledger,
            backend_to_openbao = ?result.backend_to_openbao,
            "run demo failed"
        );
    }
    result
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::LinkStatus;

    fn answered(status: u16, body: &str) -> Upstream {
        Upstream::Answered {
            status,
            body: body.into(),
        }
    }

    #[test]
    fn success_carries_orders_and_caller() {
        let r = classify(
            answered(
                200,
                r#"{"orders":[{"id":1,"description":"x","status":"shipped"}],"caller":"spiffe://example.org/ns/demo/sa/frontend","backend":"spiffe://example.org/ns/demo/sa/backend","db_server":{"spiffe_id":"spiffe://example.org/ns/demo/sa/postgres","serial":"AB","not_after":1795327868}}"#,
            ),
            "http://127.0.0.1:8001",
        );
        assert_eq!(r.frontend_to_backend.status, LinkStatus::Success);
        assert_eq!(r.backend_to_db.status, LinkStatus::Success);
        assert_eq!(r.orders.len(), 1);
        assert_eq!(
            r.caller_seen_by_backend.as_deref(),
            Some("spiffe://example.org/ns/demo/sa/frontend")
        );
        assert_eq!(
            r.backend_spiffe_id.as_deref(),
            Some("spiffe://example.org/ns/demo/sa/backend")
        );
        assert_eq!(r.failed_at, None);
    }

    #[test]
    fn a_ledger_refusal_fails_only_the_third_link() {
        let r = classify(
            answered(
                200,
                r#"{"orders":[{"id":1,"description":"x","status":"shipped"}],"caller":"spiffe://example.org/ns/demo/sa/frontend","backend":"spiffe://example.org/ns/demo/sa/backend","db_server":null,"ledger":{"link":{"status":"FAILED","cause":"ledger_refused","reason":"refused by the ledger: spiffe://example.org/ns/demo/sa/backend may not record entries"},"entry":null,"ledger_spiffe_id":"spiffe://example.org/ns/demo/sa/ledger"}}"#,
            ),
            "e",
        );
        assert!(r.frontend_to_backend.succeeded() && r.backend_to_db.succeeded());
        assert!(
            r.backend_to_ledger
                .as_ref()
                .unwrap()
                .failed_with(Cause::LedgerRefused)
        );
        assert_eq!(r.failed_at, Some(Hop::BackendLedger));
        assert!(!r.succeeded());
        assert_eq!(r.orders.len(), 1);
    }

    #[test]
    fn rbac_denial_is_named() {
        let r = classify(answered(403, "backend Envoy: RBAC: access denied"), "e");
        assert!(r.frontend_to_backend.failed_with(Cause::RbacDenied));
        assert_eq!(r.frontend_to_backend.reason.as_deref(), Some(RBAC_REASON));
        assert_eq!(r.backend_to_db.status, LinkStatus::Unknown);
        assert_eq!(r.failed_at, Some(Hop::EnvoyEnvoy));
    }

    #[test]
    fn tls_failure_is_named() {
        let body = "frontend Envoy: upstream connect error or disconnect/reset before headers. reset reason: remote connection failure (upstream transport: TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end)";
        let r = classify(answered(503, body), "e");
        assert!(r.frontend_to_backend.failed_with(Cause::MtlsFailed));
        let reason = r.frontend_to_backend.reason.unwrap();
        assert!(reason.starts_with("mTLS to the backend failed"), "{reason}");
        assert!(reason.contains("CERTIFICATE_VERIFY_FAILED"), "{reason}");
    }

    #[test]
    fn backend_envoy_down_is_unreachable() {
        // The body Envoy 1.40 sends with this lab's local_reply_config.
        let body = "frontend Envoy: upstream connect error or disconnect/reset before headers. reset reason: remote connection failure (upstream transport: delayed_connect_error:_Connection_refused)";
        let r = classify(answered(503, body), "e");
        let reason = r.frontend_to_backend.reason.unwrap();
        assert!(
            reason.starts_with("backend unreachable: the backend's Envoy"),
            "{reason}"
        );
        assert!(reason.contains("Connection_refused"), "{reason}");
    }

    #[test]
    fn backend_service_down_behind_its_envoy_is_named() {
        let body = "backend Envoy: upstream connect error or disconnect/reset before headers. reset reason: remote connection failure (upstream transport: delayed_connect_error:_Connection_refused)";
        let r = classify(answered(503, body), "e");
        let reason = r.frontend_to_backend.reason.unwrap();
        assert!(
            reason.contains("backend service did not answer"),
            "{reason}"
        );
        assert_eq!(r.failed_at, Some(Hop::EnvoyBackend));
    }

    #[test]
    fn database_failure_keeps_the_first_link_green() {
        let r = classify(
            answered(
                503,
                r#"{"error":"db_unreachable","reason":"PostgreSQL at postgres:5432 is unreachable: Connection refused"}"#,
            ),
            "e",
        );
        assert_eq!(r.frontend_to_backend.status, LinkStatus::Success);
        assert!(r.backend_to_db.failed_with(Cause::DbUnreachable));
        assert_eq!(r.failed_at, Some(Hop::BackendPostgres));
        assert!(r.backend_to_db.reason.unwrap().contains("unreachable"));
    }

    #[test]
    fn frontend_envoy_down_is_unreachable() {
        let r = classify(
            Upstream::ConnectFailed("Connection refused (os error 111)".into()),
            "http://127.0.0.1:8001",
        );
        assert!(r.frontend_to_backend.failed_with(Cause::Unreachable));
        let reason = r.frontend_to_backend.reason.unwrap();
        assert!(
            reason.contains("127.0.0.1:8001") && reason.contains("backend unreachable"),
            "{reason}"
        );
        assert_eq!(r.backend_to_db.status, LinkStatus::Unknown);
        assert_eq!(r.failed_at, Some(Hop::FrontendEnvoy));
    }
}
