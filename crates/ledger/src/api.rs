//! Routes on the mTLS listener (`/entries`, the inspection routes, `/whoami`), each authorized by
//! the caller's SPIFFE ID ([`contract::ledger::Access`]); and the health listener's `/healthz`,
//! `/readyz` (not ready without a usable SVID, and saying which).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use contract::ledger::{
    Access, BundleView, Entries, Entry, LedgerCause, LedgerError, LedgerStatus, MAX_BODY_BYTES,
    MintedJwt, NewEntry, SvidView, ValidateJwt, ValidateX509, Validation, WhoAmI,
};
use serde::Deserialize;
use serde_json::json;

use crate::identity::{Identity, error_chain};
use crate::inspect;
use crate::tls::Caller;

/// How many entries the ledger keeps (the oldest go first); it is a demo's record, in memory.
pub const KEEP: usize = 1000;

#[derive(Default)]
struct Book {
    entries: VecDeque<Entry>,
    total: u64,
}

#[derive(Clone)]
pub struct AppState {
    identity: Arc<Identity>,
    book: Arc<Mutex<Book>>,
}

impl AppState {
    pub fn new(identity: Arc<Identity>) -> AppState {
        AppState {
            identity,
            book: Arc::default(),
        }
    }
}

/// A refusal or failure with its status.
pub struct ApiError(StatusCode, LedgerError);

impl ApiError {
    fn new(status: StatusCode, error: LedgerCause, reason: impl Into<String>) -> ApiError {
        ApiError(
            status,
            LedgerError {
                error,
                reason: reason.into(),
                caller: None,
            },
        )
    }

    fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, LedgerCause::BadRequest, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, LedgerCause::BadRequest, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// The caller may use a route of this access, or is refused with its ID named.
fn authorize(caller: &Caller, access: Access, what: &str) -> Result<()> {
    let allowed = access.allowed();
    let ok = if allowed.is_empty() {
        caller
            .0
            .starts_with(&format!("spiffe://{}/", contract::TRUST_DOMAIN))
    } else {
        allowed.iter().any(|w| w.spiffe_id() == caller.0)
    };
    if ok {
        return Ok(());
    }
    let who: Vec<String> = allowed.iter().map(|w| w.spiffe_id()).collect();
    let mut e = ApiError::new(
        StatusCode::FORBIDDEN,
        LedgerCause::IdNotAllowed,
        format!(
            "{} may not {what}: only {} may",
            caller.0,
            if who.is_empty() {
                format!("workloads of {}", contract::TRUST_DOMAIN)
            } else {
                who.join(" or ")
            }
        ),
    );
    e.1.caller = Some(caller.0.clone());
    Err(e)
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/entries", get(entries).post(record))
        .route("/status", get(status))
        .route("/svid", get(svid))
        .route("/svid.pem", get(svid_pem))
        .route("/jwt", get(mint_jwt))
        .route("/bundle", get(bundle))
        .route("/validate/jwt", post(validate_jwt))
        .route("/validate/x509", post(validate_x509))
        .route("/whoami", get(whoami))
        .fallback(|uri: Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                LedgerCause::NotFound,
                format!("no route {}", uri.path()),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                LedgerCause::MethodNotAllowed,
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// Only `/healthz` and `/readyz`, for the kubelet and the local runtime.
pub fn health_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "live": true })) }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// One line per request, with the caller's SPIFFE ID from its client certificate.
async fn log_request(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let peer = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| "-".into());
    let res = next.run(req).await;
    let status = res.status().as_u16();
    let micros = started.elapsed().as_micros() as u64;
    // The frontend's console reads /status every few seconds: at debug unless refused.
    if path == "/status" && status < 400 {
        tracing::debug!(peer_spiffe_id = %peer, %method, path, status, micros, "request");
    } else {
        tracing::info!(peer_spiffe_id = %peer, %method, path, status, micros, "request");
    }
    res
}

fn held(s: &AppState) -> Result<crate::identity::Held> {
    s.identity
        .held()
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, LedgerCause::NoSvid, e))
}

async fn record(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: std::result::Result<Json<NewEntry>, JsonRejection>,
) -> Result<(StatusCode, Json<Entry>)> {
    authorize(&caller, Access::Write, "record entries")?;
    let Json(new) = body?;
    if new.caller.as_ref().is_some_and(|c| c.len() > 2048) {
        return Err(ApiError::bad_request("caller: longer than 2048 bytes"));
    }
    let serial = held(&s)?.leaf.serial;
    let mut book = s.book.lock().unwrap();
    book.total += 1;
    let entry = Entry {
        id: book.total,
        at: contract::time::rfc3339(contract::time::unix_now()),
        writer: caller.0,
        orders: new.orders,
        caller: new.caller,
        ledger_serial: serial,
    };
    book.entries.push_front(entry.clone());
    book.entries.truncate(KEEP);
    Ok((StatusCode::CREATED, Json(entry)))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

async fn entries(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: std::result::Result<Query<Limit>, QueryRejection>,
) -> Result<Json<Entries>> {
    authorize(&caller, Access::Read, "read entries")?;
    let limit = q?.0.limit.unwrap_or(20).min(KEEP);
    let book = s.book.lock().unwrap();
    Ok(Json(Entries {
        entries: book.entries.iter().take(limit).cloned().collect(),
        total: book.total,
    }))
}

fn status_of(s: &AppState) -> LedgerStatus {
    let held = s.identity.held();
    let (id, serial, left) = match &held {
        Ok(h) => (
            Some(h.svid.spiffe_id().to_string()),
            Some(h.leaf.serial.clone()),
            Some(h.leaf.seconds_left),
        ),
        Err(_) => (None, None, None),
    };
    let td: Option<spiffe::TrustDomain> = contract::TRUST_DOMAIN.try_into().ok();
    let bundle_serials = s
        .identity
        .sources()
        .zip(td)
        .and_then(|(src, td)| src.x509.try_bundle_for_trust_domain(&td))
        .map(|b| {
            b.authorities()
                .iter()
                .filter_map(|a| inspect::decode(a.as_bytes()).ok())
                .map(|c| c.serial)
                .collect()
        })
        .unwrap_or_default();
    LedgerStatus {
        bundle_serials,
        ready: held.is_ok(),
        spiffe_id: id,
        serial,
        seconds_left: left,
        rotations: s.identity.rotations(),
        reason: held.err(),
        entries: s.book.lock().unwrap().total,
        workload_api: s.identity.endpoint().to_owned(),
    }
}

async fn status(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<LedgerStatus>> {
    authorize(&caller, Access::Read, "inspect the ledger")?;
    Ok(Json(status_of(&s)))
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let body = status_of(&s);
    let code = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body))
}

async fn svid(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SvidView>> {
    authorize(&caller, Access::Read, "inspect the ledger")?;
    let h = held(&s)?;
    let chain = h
        .svid
        .cert_chain()
        .iter()
        .map(|c| inspect::decode(c.as_bytes()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, LedgerCause::NoSvid, e))?;
    Ok(Json(SvidView {
        spiffe_id: h.svid.spiffe_id().to_string(),
        chain,
        rotations: s.identity.rotations(),
    }))
}

fn pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The chain only; the private key never leaves the process.
async fn svid_pem(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response> {
    authorize(&caller, Access::Read, "inspect the ledger")?;
    let h = held(&s)?;
    let body: String = h
        .svid
        .cert_chain()
        .iter()
        .map(|c| pem(c.as_bytes()))
        .collect();
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], body).into_response())
}

#[derive(Deserialize)]
struct Audience {
    audience: Option<String>,
}

/// An audience as the ledger accepts it: 1–256 visible characters.
fn audience(raw: Option<&str>) -> Result<String> {
    let a = raw.unwrap_or(contract::ledger::DEFAULT_AUDIENCE).trim();
    if a.is_empty() || a.len() > 256 || a.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::bad_request(
            "audience: 1 to 256 characters, no spaces or control characters",
        ));
    }
    Ok(a.to_owned())
}

async fn mint_jwt(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    q: std::result::Result<Query<Audience>, QueryRejection>,
) -> Result<Json<MintedJwt>> {
    authorize(&caller, Access::Read, "mint JWT-SVIDs")?;
    let aud = audience(q?.0.audience.as_deref())?;
    let Some(sources) = s.identity.sources() else {
        return Err(held(&s).err().unwrap_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                LedgerCause::NoSvid,
                "no SVID yet",
            )
        }));
    };
    let jwt = sources
        .jwt
        .fetch_jwt_svid([aud.as_str()])
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                LedgerCause::WorkloadApi,
                format!("the Workload API minted no JWT-SVID: {}", error_chain(&e)),
            )
        })?;
    let (header, claims) = inspect::jwt_parts(jwt.token())
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, LedgerCause::WorkloadApi, e))?;
    Ok(Json(MintedJwt {
        token: jwt.token().to_owned(),
        header,
        claims,
    }))
}

async fn bundle(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<BundleView>> {
    authorize(&caller, Access::Read, "inspect the ledger")?;
    held(&s)?;
    let sources = s.identity.sources().expect("held implies sources");
    let td: spiffe::TrustDomain = contract::TRUST_DOMAIN
        .try_into()
        .expect("the lab's trust domain");
    let unavailable = |what: &str| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            LedgerCause::WorkloadApi,
            format!("the Workload API gave no {what} bundle for {td}"),
        )
    };
    let x509 = sources
        .x509
        .try_bundle_for_trust_domain(&td)
        .ok_or_else(|| unavailable("X.509"))?;
    let jwt = sources
        .jwt
        .try_bundle_for_trust_domain(&td)
        .ok_or_else(|| unavailable("JWT"))?;
    let x509_ders: Vec<&[u8]> = x509.authorities().iter().map(|c| c.as_bytes()).collect();
    let jwks: Vec<&[u8]> = jwt.jwt_authorities().map(|a| a.jwk_json()).collect();
    let decoded = x509_ders
        .iter()
        .filter_map(|d| inspect::decode(d).ok())
        .collect();
    Ok(Json(BundleView {
        trust_domain: td.to_string(),
        x509_authorities: decoded,
        spiffe_bundle: inspect::spiffe_bundle(&x509_ders, &jwks),
    }))
}

async fn validate_jwt(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: std::result::Result<Json<ValidateJwt>, JsonRejection>,
) -> Result<Json<Validation>> {
    authorize(&caller, Access::Read, "validate SVIDs")?;
    let Json(req) = body?;
    let aud = audience(Some(&req.audience))?;
    held(&s)?;
    let sources = s.identity.sources().expect("held implies sources");
    Ok(Json(inspect::validate_jwt(&req.token, &aud, &sources.jwt)))
}

async fn validate_x509(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: std::result::Result<Json<ValidateX509>, JsonRejection>,
) -> Result<Json<Validation>> {
    authorize(&caller, Access::Read, "validate SVIDs")?;
    let Json(req) = body?;
    held(&s)?;
    let sources = s.identity.sources().expect("held implies sources");
    Ok(Json(inspect::validate_x509(&req.pem, |td| {
        sources.x509.try_bundle_for_trust_domain(td).map(|b| {
            b.authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect()
        })
    })))
}

async fn whoami(Extension(caller): Extension<Caller>) -> Result<Json<WhoAmI>> {
    authorize(&caller, Access::AnyWorkload, "ask who it is")?;
    Ok(Json(WhoAmI { caller: caller.0 }))
}
