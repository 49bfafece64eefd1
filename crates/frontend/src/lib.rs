//! The frontend service: a page with **Run Demo**, which calls the backend through the frontend's
//! own Envoy (plain HTTP to 127.0.0.1:8001; Envoy adds mTLS with the frontend's SVID) and shows
//! both links' status with a reason a person understands.
//!
//! The frontend holds no certificate and never talks to the Workload API.

mod config;
mod console;
mod demo;
mod identity;
mod inspector;
mod metrics;
mod page;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::Html;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

pub use config::Config;
pub use console::{REFRESH_MS, SAMPLE_EVERY};
pub use demo::{Upstream, classify};
pub use metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    config: Config,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    console: Arc<console::Console>,
}

impl AppState {
    pub fn new(config: Config) -> AppState {
        let http = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("build HTTP client");
        AppState {
            config,
            http,
            metrics: Arc::default(),
            console: Arc::default(),
        }
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/live", get(live))
        .route("/run-demo", post(run_demo_page).get(index))
        .route("/api/run-demo", post(run_demo_json))
        .route("/api/identity", get(identity_json))
        .route("/inspector", get(inspector::page))
        .route("/inspector/mint", post(inspector::mint))
        .route("/inspector/validate-jwt", post(inspector::validate_jwt))
        .route("/inspector/validate-x509", post(inspector::validate_x509))
        .route("/inspector/svid.pem", get(inspector::svid_pem))
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({ "live": true })) }),
        )
        .route(
            "/readyz",
            get(|| async { Json(serde_json::json!({ "ready": true })) }),
        )
        .with_state(state)
}

async fn index(State(s): State<AppState>) -> Html<String> {
    let panel = gather(&s).await;
    Html(render(&s, &panel, page::render))
}

async fn live(State(s): State<AppState>) -> impl IntoResponse {
    let panel = gather(&s).await;
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(render(&s, &panel, page::live)),
    )
}

async fn run_demo_page(State(s): State<AppState>) -> Html<String> {
    let (_, panel) = tokio::join!(run_demo(&s, true), gather(&s));
    Html(render(&s, &panel, page::render))
}

/// The holders' certificates now, added to the timeline.
async fn gather(s: &AppState) -> contract::IdentityPanel {
    let panel = identity::gather(&s.http, &s.config).await;
    s.console.record(&panel, console::now_ms());
    panel
}

fn render(s: &AppState, panel: &contract::IdentityPanel, f: fn(&page::View) -> String) -> String {
    let (result, lanes) = (s.console.last(), s.console.lanes());
    f(&page::View {
        result: result.as_ref(),
        panel,
        lanes: &lanes,
        now_ms: console::now_ms(),
    })
}

/// Reads the holders' certificates every few seconds, so the timeline has the minutes before
/// anyone opened the page.
async fn sample(s: AppState) {
    let mut every = tokio::time::interval(console::SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        gather(&s).await;
    }
}

#[derive(serde::Deserialize)]
struct RunDemoQuery {
    /// `skip`: the orders only, nothing recorded in the ledger (the bench times the same work on
    /// both of its profiles so; the plaintext baseline has no ledger).
    ledger: Option<String>,
}

async fn run_demo_json(
    State(s): State<AppState>,
    q: Result<axum::extract::Query<RunDemoQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let record = match q.map(|q| q.0.ledger) {
        Ok(None) => true,
        Ok(Some(v)) if v == "skip" => false,
        Ok(Some(v)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("ledger={v:?}: the only value is `skip`"),
            )
                .into_response();
        }
        Err(e) => return (StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    Json(run_demo(&s, record).await).into_response()
}

/// One Run Demo, counted and timed.
async fn run_demo(s: &AppState, record: bool) -> contract::RunDemo {
    let started = Instant::now();
    let result = demo::run(&s.http, &s.config, &s.metrics, record).await;
    let took = started.elapsed();
    s.metrics.run_demo(&result, took);
    let status = |l: &contract::Link| format!("{:?}", l.status).to_uppercase();
    tracing::info!(
        peer_spiffe_id = result.backend_spiffe_id.as_deref().unwrap_or("-"),
        caller_seen_by_backend = result.caller_seen_by_backend.as_deref().unwrap_or("-"),
        db_spiffe_id = result.db_server_spiffe_id.as_deref().unwrap_or("-"),
        frontend_to_backend = status(&result.frontend_to_backend),
        backend_to_db = status(&result.backend_to_db),
        backend_to_ledger = result.backend_to_ledger.as_ref().map_or("-".into(), status),
        ledger_entry = result.ledger_entry.unwrap_or(0),
        failed_at = result.failed_at.map_or("-", |h| h.key()),
        micros = took.as_micros() as u64,
        "run demo"
    );
    s.console.set_last(&result);
    result
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(&s.console.holders(console::now_ms())),
    )
}

async fn identity_json(State(s): State<AppState>) -> Json<contract::IdentityPanel> {
    Json(identity::gather(&s.http, &s.config).await)
}

/// Runs the UI until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %config.listen, backend = %config.backend_url, "frontend ready to serve");
    let state = AppState::new(config);
    let sampler = tokio::spawn(sample(state.clone()));
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sampler.abort();
    served?;
    Ok(())
}
