//! Real components for the lab's tests, started from the lab's own files.
//!
//! A missing binary is a test failure that says how to install it, never a skip.

pub mod openbao;
pub mod postgres;
pub mod spire;

pub use openbao::{OidcProvider, OpenBao};
pub use postgres::{BACKEND_ID, POSTGRES_ID, Postgres, free_port};
pub use spire::Spire;

use std::path::{Path, PathBuf};

/// The repository's `manifests/` directory, where every shared configuration file lives.
pub fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../manifests")
}

/// Sends `req` to the in-process `app`; the status and the body parsed as JSON.
pub async fn oneshot_json(
    app: &axum::Router,
    req: axum::http::Request<axum::body::Body>,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let path = req.uri().to_string();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or_else(|_| {
        panic!(
            "{path} answered non-JSON: {}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, json)
}

/// GET `path` on the in-process `app`; the status and the JSON body.
pub async fn get_json(app: &axum::Router, path: &str) -> (u16, serde_json::Value) {
    let req = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .unwrap();
    oneshot_json(app, req).await
}

/// GET `/metrics` on the in-process `app`, read as Prometheus text.
pub async fn scrape(app: &axum::Router) -> contract::metrics::Scrape {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let req = axum::http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200, "/metrics");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    contract::metrics::Scrape::parse(&String::from_utf8_lossy(&body))
}
