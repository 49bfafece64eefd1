//! A person's view: real headless Chromium on a running frontend, which calls a running backend,
//! which reads a real PostgreSQL (the pinned release) over mTLS.
//!
//! The frontend calls the backend directly here (no Envoys, certificates from a test CA); the
//! same page through both Envoys with SPIRE-issued SVIDs, an RBAC denial and a short-TTL rotation
//! is the `console` scenario on either runtime.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use browser::{Browser, Options};
use clap::Parser;
use svid::test_ca::{Leaf, TestCa};
use testkit::{BACKEND_ID, POSTGRES_ID, Postgres, free_port};

/// A frontend and a backend on a real PostgreSQL, the backend's SVID files in `svids`.
struct Stack {
    ca: TestCa,
    _pg: Postgres,
    svids: tempfile::TempDir,
    url: String,
}

async fn stack() -> Stack {
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
    Stack {
        ca,
        _pg: pg,
        svids,
        url: format!("http://127.0.0.1:{frontend_port}/"),
    }
}

/// Where the screenshots go: `target/console/`.
fn shots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    target.join("console")
}

/// The page as it is now, read at once (`contract::page`).
fn view(b: &Browser) -> contract::page::View {
    serde_json::from_value(b.script(contract::page::READ_VIEW).unwrap()).unwrap()
}

/// Each hop's state; the drawing must agree with the list.
fn hop_states(v: &contract::page::View) -> Vec<(String, String)> {
    v.states()
        .unwrap()
        .into_iter()
        .map(|(k, s)| (k.to_owned(), s.to_owned()))
        .collect()
}

fn no_horizontal_scroll(b: &Browser) {
    let v = b
        .script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
        )
        .unwrap();
    let (scroll, client) = (v[0].as_i64().unwrap(), v[1].as_i64().unwrap());
    assert!(
        scroll <= client,
        "the page scrolls sideways: {scroll} px wide in a {client} px viewport"
    );
}

/// This stack has no ledger and no OpenBao (the lab's has both; the `console` scenario checks
/// every hop there): every hop up to PostgreSQL passed, the ledger's failed saying the backend
/// has none, and OpenBao's was not tried (a backend without OpenBao reads no reports).
fn assert_ledger_missing(v: &contract::page::View, states: &[(String, String)]) {
    let (openbao, rest) = states.split_last().unwrap();
    assert_eq!(
        openbao,
        &("backend-openbao".to_owned(), "unknown".to_owned())
    );
    let (last, first) = rest.split_last().unwrap();
    assert!(first.iter().all(|(_, st)| st == "ok"), "{states:?}");
    assert_eq!(last, &("backend-ledger".to_owned(), "failed".to_owned()));
    assert_eq!(v.backend_to_ledger.as_deref(), Some("FAILED"));
    let why = &v.hop("backend-ledger").unwrap().text;
    assert!(why.contains("no ledger configured"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_demo_in_chromium_shows_every_hop_at_both_sizes() {
    let s = stack().await;
    for (w, h) in [(1280, 800), (1920, 1080)] {
        let url = s.url.clone();
        let dir = shots();
        tokio::task::spawn_blocking(move || {
            let b = Browser::start(Options {
                width: w,
                height: h,
                javascript: true,
            })
            .unwrap();
            b.goto(&url).unwrap();
            b.submit(
                &b.find("#run-demo").unwrap(),
                "#f2b-status",
                Duration::from_secs(10),
            )
            .unwrap();
            let v = view(&b);
            assert_eq!(v.frontend_to_backend.as_deref(), Some("SUCCESS"));
            assert_eq!(v.backend_to_db.as_deref(), Some("SUCCESS"));
            assert_eq!(v.orders, 4, "a header and three orders");
            let states = hop_states(&v);
            assert_eq!(states.len(), contract::Hop::ALL.len(), "{states:?}");
            assert_ledger_missing(&v, &states);
            let ids = &v.hop("backend-postgres").unwrap().text;
            assert!(
                ids.contains(&*BACKEND_ID) && ids.contains(&*POSTGRES_ID),
                "the IDs proven to and by PostgreSQL: {ids}"
            );
            // The script removed the note meant for a page without it.
            assert_eq!(v.no_refresh_note, None);
            no_horizontal_scroll(&b);
            b.save_screenshot(&dir.join(format!("direct-{w}x{h}.png")))
                .unwrap();
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_shows_on_the_timeline_within_one_refresh() {
    let s = stack().await;
    let url = s.url.clone();
    let b = tokio::task::spawn_blocking(move || {
        let b = Browser::start(Options::default()).unwrap();
        b.goto(&url).unwrap();
        b
    })
    .await
    .unwrap();
    let lane = "#lane-backend-files .mark";
    let before = tokio::task::block_in_place(|| b.find_all(lane).unwrap().len());
    assert_eq!(before, 1, "the backend's first serial, seen at start");
    let issued =
        s.ca.write_svid(s.svids.path(), &Leaf::new(&BACKEND_ID, Some("backend")));
    let serial = svid::serial_hex(&issued.cert);
    let written = Instant::now();
    // The backend reads its files every second; the page asks for a new view every REFRESH_MS.
    let within = Duration::from_millis(frontend::REFRESH_MS) + Duration::from_secs(2);
    let seen = tokio::task::block_in_place(|| {
        loop {
            // One call that names the serial: no element is held across the page's swaps.
            let css = format!("{lane}[data-serial=\"{serial}\"]");
            if !b.find_all(&css).unwrap().is_empty() {
                break Some(written.elapsed());
            }
            if written.elapsed() > within + Duration::from_secs(5) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let url_now = tokio::task::block_in_place(|| b.url().unwrap());
    drop(b);
    let seen = seen.unwrap_or_else(|| panic!("serial {serial} never showed on the timeline"));
    assert!(
        seen <= within,
        "serial {serial} showed after {seen:?}, more than one refresh ({within:?})"
    );
    assert_eq!(
        url_now, s.url,
        "the page was not reloaded: its script swapped the view in"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_javascript_the_page_is_complete_as_served() {
    let s = stack().await;
    let url = s.url.clone();
    let dir = shots();
    tokio::task::spawn_blocking(move || {
        let b = Browser::start(Options {
            width: 1280,
            height: 800,
            javascript: false,
        })
        .unwrap();
        b.goto(&url).unwrap();
        // The page's script removes this note as it starts: here it never ran.
        let v = view(&b);
        let note = v.no_refresh_note.clone().unwrap_or_default();
        assert!(note.contains("reload"), "{note:?}");
        let before = hop_states(&v);
        assert_eq!(
            before[0].1, "ok",
            "the browser reached the frontend: {before:?}"
        );
        assert!(
            before[1..].iter().all(|(_, s)| s == "unknown"),
            "{before:?}"
        );
        // The form posts without script; the answer is the whole page again.
        b.submit(
            &b.find("#run-demo").unwrap(),
            "#f2b-status",
            Duration::from_secs(10),
        )
        .unwrap();
        let v = view(&b);
        assert_eq!(v.frontend_to_backend.as_deref(), Some("SUCCESS"));
        let states = hop_states(&v);
        assert_ledger_missing(&v, &states);
        assert!(
            b.find("#lane-backend-files .mark").is_ok(),
            "the timeline is drawn by the server"
        );
        let countdown = b.text(&b.find(".countdown").unwrap()).unwrap();
        assert!(
            countdown.ends_with(" s") || countdown.ends_with(" min") || countdown.ends_with(" h"),
            "{countdown}"
        );
        b.save_screenshot(&dir.join("direct-no-javascript-1280x800.png"))
            .unwrap();
    })
    .await
    .unwrap();
}
