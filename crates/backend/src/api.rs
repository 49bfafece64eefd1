//! Routes: `/api/orders`, `/api/identity`, `/healthz`, `/readyz`; on the health listener also
//! `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use contract::ledger::{LedgerWrite, NewEntry};
use contract::openbao::Reports;
use contract::{BackendIdentity, Orders, Readiness, Run, SvidState};
use serde_json::json;

use crate::error::{AppError, Result};
use crate::{Database, LedgerClient, Metrics, OpenBao, SvidSource};

#[derive(Clone)]
pub struct AppState {
    svids: Arc<SvidSource>,
    db: Database,
    metrics: Arc<Metrics>,
    /// The benchmark's plaintext baseline: readiness does not ask for an SVID.
    plaintext: bool,
    ledger: Option<Arc<LedgerClient>>,
    openbao: Option<Arc<OpenBao>>,
}

impl AppState {
    pub fn new(svids: Arc<SvidSource>, db: Database, plaintext: bool) -> Self {
        AppState {
            svids,
            db,
            metrics: Arc::default(),
            plaintext,
            ledger: None,
            openbao: None,
        }
    }

    /// Where Run Demos are recorded (`POST /api/runs`).
    pub fn with_ledger(mut self, ledger: Option<Arc<LedgerClient>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Where the reports' database credentials come from (`GET /api/reports`).
    pub fn with_openbao(mut self, openbao: Option<Arc<OpenBao>>) -> Self {
        self.openbao = openbao;
        self
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/orders", get(orders))
        .route("/api/runs", axum::routing::post(runs))
        .route("/api/reports", get(reports))
        .route("/api/identity", get(identity))
        .route("/healthz", get(|| async { Json(json!({ "live": true })) }))
        .route("/readyz", get(readyz))
        .fallback(|uri: Uri| async move { AppError::NotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// One line per API request: what was asked, the answer, how long it took, and who asked (the
/// caller's SPIFFE ID as its Envoy proved and forwarded it).
async fn log_request(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let peer = caller_from_xfcc(req.headers());
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    let peer = peer.as_deref().unwrap_or("-");
    // The orders, and anything refused, at info; probes and the console's polling of
    // `/api/identity` (every few seconds) at debug.
    if !matches!(path.as_str(), "/api/orders" | "/api/runs" | "/api/reports") && status < 400 {
        tracing::debug!(peer_spiffe_id = peer, %method, path, status, micros, "request");
    } else {
        tracing::info!(peer_spiffe_id = peer, %method, path, status, micros, "request");
    }
    res
}

/// Only `/healthz`, `/readyz` and `/metrics`, for a listener the kubelet (and a metrics scraper)
/// can reach.
pub fn health_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "live": true })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|uri: Uri| async move { AppError::NotFound(uri.path().to_owned()) })
        .with_state(state)
}

/// The caller's SPIFFE ID, as the backend's Envoy forwards it in `x-forwarded-client-cert`.
pub fn caller_from_xfcc(headers: &HeaderMap) -> Option<String> {
    let xfcc = headers.get("x-forwarded-client-cert")?.to_str().ok()?;
    // Envoy appends one element per hop; the last is the hop that reached us.
    let element = xfcc.rsplit(',').next()?;
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("URI")
            .then(|| value.trim().trim_matches('"').to_owned())
    })
}

async fn orders(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Orders>> {
    read_orders(&s, &headers).await.map(Json)
}

/// A Run Demo: the orders, then (together) an entry in the ledger and the reports read with
/// OpenBao's short-lived credentials. The orders failing is the backend's error (503); the
/// ledger or the reports failing is told in their links, with the orders.
async fn runs(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Run>> {
    let orders = read_orders(&s, &headers).await?;
    let record = async {
        match &s.ledger {
            Some(ledger) => {
                ledger
                    .record(&NewEntry {
                        orders: orders.orders.len() as u32,
                        caller: orders.caller.clone(),
                    })
                    .await
            }
            None => LedgerWrite {
                link: contract::Link::failed(
                    contract::Cause::LedgerUnreachable,
                    "this backend has no ledger configured (--ledger-addr)",
                ),
                entry: None,
                ledger_spiffe_id: None,
            },
        }
    };
    // Without an OpenBao (the kind runtime's lab for now, the crates' tests) a Run Demo has no
    // reports, as it has no ledger entry when not asked for one.
    let reports = async {
        match &s.openbao {
            Some(_) => Some(read_reports(&s).await),
            None => None,
        }
    };
    let (ledger, reports) = tokio::join!(record, reports);
    if !ledger.link.succeeded() {
        tracing::warn!(
            reason = ledger.link.reason.as_deref().unwrap_or(""),
            "Run Demo not recorded in the ledger"
        );
    }
    Ok(Json(Run {
        orders,
        ledger,
        reports,
    }))
}

/// `GET /api/reports`: orders by status, as the short-lived user OpenBao made for the backend.
async fn reports(State(s): State<AppState>) -> Json<Reports> {
    Json(read_reports(&s).await)
}

async fn read_reports(s: &AppState) -> Reports {
    let reports = match &s.openbao {
        Some(openbao) => openbao.reports().await,
        None => Reports {
            link: contract::Link::failed(
                contract::Cause::OpenBaoUnreachable,
                "this backend has no OpenBao configured (--openbao-addr)",
            ),
            rows: vec![],
            broker: Default::default(),
        },
    };
    if !reports.link.succeeded() {
        tracing::warn!(
            reason = reports.link.reason.as_deref().unwrap_or(""),
            "reports not read"
        );
    }
    reports
}

async fn read_orders(s: &AppState, headers: &HeaderMap) -> Result<Orders> {
    let started = Instant::now();
    let orders = s.db.orders().await;
    s.metrics.db_query(started.elapsed());
    let orders = orders?;
    let body = Orders {
        orders,
        caller: caller_from_xfcc(headers),
        backend: s
            .svids
            .current()
            .ok()
            .map(|svid| svid.spiffe_id.to_string()),
        db_server: s.db.last_server(),
    };
    s.metrics.orders(started.elapsed());
    Ok(body)
}

/// What the backend holds now, for a scrape.
fn holding(s: &AppState) -> crate::metrics::Holding {
    let (pool_in_use, pool_idle, pool_max) = s.db.pool_state();
    crate::metrics::Holding {
        svid: s
            .svids
            .current()
            .ok()
            .map(|v| (v.spiffe_id.to_string(), v.serial.clone(), v.seconds_left())),
        rotations: s.svids.generation().saturating_sub(1),
        pool_in_use,
        pool_idle,
        pool_max,
    }
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(&holding(&s)),
    )
}

async fn identity(State(s): State<AppState>, headers: HeaderMap) -> Json<BackendIdentity> {
    let svid = match s.svids.current() {
        Ok(svid) => SvidState::Held {
            spiffe_id: svid.spiffe_id.to_string(),
            serial: svid.serial.clone(),
            not_after: svid.not_after,
            seconds_left: svid.seconds_left(),
        },
        Err(u) => SvidState::Unusable {
            cause: u.cause,
            error: u.reason,
        },
    };
    Json(BackendIdentity {
        svid,
        db_server: s.db.last_server(),
        caller: caller_from_xfcc(&headers),
    })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let svid = s.svids.current();
    let failure = match (&svid, s.svids.problem()) {
        _ if s.plaintext => s.db.ping().await.err().map(|e| (e.cause(), e.to_string())),
        (Err(u), _) => Some((u.cause, format!("SVID not usable: {u}"))),
        (Ok(_), Some(problem)) => Some((
            contract::Cause::NoSvid,
            format!("SVID files not usable: {problem}"),
        )),
        (Ok(_), None) => s.db.ping().await.err().map(|e| (e.cause(), e.to_string())),
    };
    let body = Readiness {
        ready: failure.is_none(),
        svid_seconds_left: svid.as_ref().ok().map(|svid| svid.seconds_left()),
        svid_serial: svid.as_ref().ok().map(|svid| svid.serial.clone()),
        cause: failure.as_ref().map(|(c, _)| *c),
        reason: failure.map(|(_, r)| r),
    };
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_caller_is_the_uri_of_the_last_element() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-client-cert",
            "By=spiffe://example.org/ns/demo/sa/backend;Hash=ab12;URI=spiffe://example.org/ns/demo/sa/frontend"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            caller_from_xfcc(&h).as_deref(),
            Some("spiffe://example.org/ns/demo/sa/frontend")
        );
        assert_eq!(caller_from_xfcc(&HeaderMap::new()), None);
    }
}
