//! The frontend's routes in-process (`oneshot`), against a stand-in for its Envoy that answers
//! with the exact bodies Envoy sends in each failure. The real Envoys are exercised by the
//! local runtime's scenarios (`cargo xtask scenario all --local`); this stand-in exists so each
//! reason is checked on its own, quickly.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use testkit::oneshot_json;

/// Serves `status` and `body` on every path, on a free loopback port; returns its URL.
async fn envoy_stand_in(status: u16, body: &'static str) -> String {
    let app = axum::Router::new()
        .fallback(move || async move { (StatusCode::from_u16(status).unwrap(), body) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn frontend(backend_url: &str) -> axum::Router {
    let config = frontend::Config::parse_from([
        "frontend",
        "--backend-url",
        backend_url,
        "--envoy-admin-url",
        &format!("http://127.0.0.1:{}", testkit::free_port()),
    ]);
    frontend::app(frontend::AppState::new(config))
}

async fn run_demo(app: &axum::Router) -> serde_json::Value {
    let req = Request::post("/api/run-demo").body(Body::empty()).unwrap();
    let (status, body) = oneshot_json(app, req).await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test]
async fn rbac_denial_reads_as_such() {
    let app = frontend(&envoy_stand_in(403, "backend Envoy: RBAC: access denied").await);
    let r = run_demo(&app).await;
    assert_eq!(r["frontend_to_backend"]["status"], "FAILED");
    assert_eq!(r["frontend_to_backend"]["cause"], "rbac_denied");
    assert!(
        r["frontend_to_backend"]["reason"]
            .as_str()
            .unwrap()
            .contains("RBAC policy")
    );
    assert_eq!(r["backend_to_db"]["status"], "UNKNOWN");
}

#[tokio::test]
async fn tls_failure_reads_as_such() {
    let app = frontend(&envoy_stand_in(503, "frontend Envoy: upstream connect error or disconnect/reset before headers. reset reason: remote connection failure (upstream transport: TLS_error:|268435581:SSL_routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end)").await);
    let r = run_demo(&app).await;
    assert!(
        r["frontend_to_backend"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("mTLS to the backend failed")
    );
}

#[tokio::test]
async fn database_failure_reads_as_such() {
    let app = frontend(&envoy_stand_in(503, r#"{"error":"db_unreachable","reason":"PostgreSQL at 127.0.0.1:5432 is unreachable: Connection refused"}"#).await);
    let r = run_demo(&app).await;
    assert_eq!(r["frontend_to_backend"]["status"], "SUCCESS");
    assert_eq!(r["backend_to_db"]["status"], "FAILED");
    assert_eq!(r["backend_to_db"]["cause"], "db_unreachable");
    assert!(
        r["backend_to_db"]["reason"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
}

#[tokio::test]
async fn nothing_listening_reads_as_unreachable_and_page_still_renders() {
    let url = format!("http://127.0.0.1:{}", testkit::free_port());
    let app = frontend(&url);
    let r = run_demo(&app).await;
    assert_eq!(r["frontend_to_backend"]["status"], "FAILED");
    assert!(
        r["frontend_to_backend"]["reason"]
            .as_str()
            .unwrap()
            .contains("backend unreachable")
    );

    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let res = app
        .clone()
        .oneshot(Request::post("/run-demo").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let html =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        html.contains(r#"id="f2b-status" class="status FAILED""#),
        "{html}"
    );
    assert!(
        html.contains(r#"id="b2db-status" class="status UNKNOWN""#),
        "{html}"
    );
    // Identity sources that do not answer show as unknown.
    assert!(html.contains("unknown"), "{html}");
}

/// `/metrics` counts each Run Demo by both links' status and the first failure's cause, and
/// times it; `status` and the bench read these names (`contract::metrics`).
#[tokio::test]
async fn metrics_count_outcomes_by_link_and_cause() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let app = frontend(&envoy_stand_in(403, "backend Envoy: RBAC: access denied").await);
    run_demo(&app).await;
    run_demo(&app).await;
    let res = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let scrape = contract::metrics::Scrape::parse(&text);
    let denied = format!(
        r#"{}_total{{frontend_to_backend="FAILED",backend_to_db="UNKNOWN",cause="rbac_denied"}}"#,
        contract::metrics::RUN_DEMO
    );
    assert_eq!(scrape.get(&denied), Some(2.0), "{text}");
    assert_eq!(
        scrape.histogram(contract::metrics::RUN_DEMO_SECONDS).1,
        2.0,
        "{text}"
    );
    assert_eq!(
        scrape.histogram(contract::metrics::BACKEND_CALL_SECONDS).1,
        2.0,
        "{text}"
    );
}

#[tokio::test]
async fn the_ledger_is_asked_unless_skipped_and_a_bad_value_is_refused() {
    let app = frontend(&envoy_stand_in(403, "backend Envoy: RBAC: access denied").await);
    let r = run_demo(&app).await;
    assert_eq!(r["backend_to_ledger"]["status"], "UNKNOWN", "{r}");
    let req = Request::post("/api/run-demo?ledger=skip")
        .body(Body::empty())
        .unwrap();
    let (status, r) = oneshot_json(&app, req).await;
    assert_eq!(status, 200);
    assert!(r["backend_to_ledger"].is_null(), "{r}");
    use tower::ServiceExt;
    let req = Request::post("/api/run-demo?ledger=maybe")
        .body(Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 400);
}
