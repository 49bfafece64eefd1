//! A person's view: real headless Chromium clicks **Run Demo** on a running frontend, which calls
//! a running backend, which reads a real PostgreSQL (the pinned release) over mTLS.
//!
//! The frontend calls the backend directly here (no Envoys, certificates from a test CA); the same
//! click through both Envoys with SPIRE-issued SVIDs is the local runtime's `happy` scenario.

use std::time::Duration;

use clap::Parser;
use fantoccini::Locator;
use svid::test_ca::{Leaf, TestCa};
use testkit::{BACKEND_ID, POSTGRES_ID, Postgres, free_port};

#[tokio::test(flavor = "multi_thread")]
async fn run_demo_in_chromium_shows_both_links_and_the_orders() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &Leaf::new(&POSTGRES_ID, Some("postgres")));
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &Leaf::new(&BACKEND_ID, Some("backend")));

    let backend_port = free_port();
    let backend = backend::Config::parse_from([
        "backend",
        "--listen",
        &format!("127.0.0.1:{backend_port}"),
        "--svid-dir",
        &svids.path().display().to_string(),
        "--db-host",
        "127.0.0.1",
        "--db-port",
        &pg.port.to_string(),
    ]);
    tokio::spawn(backend::serve(backend, std::future::pending()));
    let frontend_port = free_port();
    let frontend = frontend::Config::parse_from([
        "frontend",
        "--listen",
        &format!("127.0.0.1:{frontend_port}"),
        "--backend-url",
        &format!("http://127.0.0.1:{backend_port}"),
        "--envoy-admin-url",
        &format!("http://127.0.0.1:{}", free_port()),
    ]);
    tokio::spawn(frontend::serve(frontend, std::future::pending()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let browser = testkit::browser::Browser::start().await;
    let c = &browser.client;
    c.goto(&format!("http://127.0.0.1:{frontend_port}/"))
        .await
        .unwrap();
    c.find(Locator::Id("run-demo"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let f2b = c
        .wait()
        .for_element(Locator::Id("f2b-status"))
        .await
        .unwrap();
    let f2b = f2b.text().await.unwrap();
    let b2db = c
        .find(Locator::Id("b2db-status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rows = c.find_all(Locator::Css("#orders tr")).await.unwrap();
    let table = c
        .find(Locator::Id("orders"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shot = c.screenshot().await.unwrap();
    std::fs::write(std::env::temp_dir().join("lab-run-demo.png"), shot).unwrap();
    browser.close().await;

    assert_eq!(f2b, "SUCCESS");
    assert_eq!(b2db, "SUCCESS");
    assert_eq!(rows.len(), 4, "a header and three orders: {table}");
    assert!(table.contains("Hardware security module"), "{table}");
}
