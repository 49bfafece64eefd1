//! The backend against a real PostgreSQL (the pinned release) with the lab's pg_hba.conf, postgresql.conf and
//! init.sql, over mTLS with SVID-shaped certificates from a test CA.
//!
//! Real SPIRE-issued SVIDs (and spiffe-helper's rotations) are covered by the local runtime:
//! `cargo xtask up --local` and `cargo xtask scenario all --local`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use svid::test_ca::{Leaf, TestCa, write_files};
use testkit::{BACKEND_ID, POSTGRES_ID, Postgres, get_json as get};

fn backend_leaf() -> Leaf {
    Leaf::new(&BACKEND_ID, Some("backend"))
}

fn postgres_leaf() -> Leaf {
    Leaf::new(&POSTGRES_ID, Some("postgres"))
}

async fn backend_app(pg: &Postgres, svid_dir: &std::path::Path) -> axum::Router {
    let state = backend::start(&backend_config(pg.port, svid_dir))
        .await
        .unwrap();
    backend::app(state)
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_are_read_over_mtls_and_postgres_is_identified_by_spiffe_id() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    let svids = tempfile::tempdir().unwrap();
    let issued = ca.write_svid(svids.path(), &backend_leaf());
    let state = backend::start(&backend_config(pg.port, svids.path()))
        .await
        .unwrap();
    let (app, health) = (backend::app(state.clone()), backend::health_app(state));

    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 200, "{body}");
    // Timed on the health listener's /metrics: the request, and the database part of it.
    let metrics = testkit::scrape(&health).await;
    for name in [
        contract::metrics::ORDERS_SECONDS,
        contract::metrics::DB_QUERY_SECONDS,
    ] {
        let (sum, count) = metrics.histogram(name);
        assert_eq!(count, 1.0, "{name}: {metrics:?}");
        assert!(sum > 0.0, "{name}: {metrics:?}");
    }
    let orders = body["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 3, "{body}");
    assert_eq!(orders[0]["id"], 1001);
    assert_eq!(body["db_server"]["spiffe_id"], *POSTGRES_ID);

    // PostgreSQL saw our certificate: the serial it reports is the SVID's.
    let serials = pg.psql(
        "postgres",
        "SELECT client_serial FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'backend'",
    );
    assert!(
        serials.lines().any(|s| s == hex_to_dec(&issued.serial())),
        "{serials}"
    );

    let (status, ready) = get(&app, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    // The log shows certificate authentication of user backend.
    assert!(
        pg.log()
            .contains("connection authenticated: identity=\"CN=backend"),
        "{}",
        pg.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_files_are_used_for_new_connections_without_a_failed_query() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    let svids = tempfile::tempdir().unwrap();
    let first = ca.write_svid(svids.path(), &backend_leaf());
    let app = backend_app(&pg, svids.path()).await;
    assert_eq!(get(&app, "/api/orders").await.0, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (app, stop, ok) = (app.clone(), stop.clone(), ok.clone());
        load.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = get(&app, "/api/orders").await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(body);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        }));
    }
    // Three rotations, each written the way spiffe-helper writes: certificate, then key, in
    // place, so the backend may read a half-written pair in between.
    let mut serials = vec![first.serial()];
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let next = ca.issue(&backend_leaf());
        std::fs::write(svids.path().join("svid.pem"), &next.cert_pem).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        write_files(
            svids.path(),
            &next.cert_pem,
            &next.key_pem,
            &ca.bundle_pem(),
        );
        serials.push(next.serial());
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "failed queries during rotation: {failures:?}"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "too few queries ran: {ok:?}"
    );

    let (_, identity) = get(&app, "/api/identity").await;
    assert_eq!(
        identity["svid"]["serial"],
        serials[3].as_str(),
        "{identity}"
    );
    let seen = pg.psql(
        "postgres",
        "SELECT client_serial FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'backend'",
    );
    assert!(
        seen.lines().any(|s| s == hex_to_dec(&serials[3])),
        "no open connection presents the newest SVID {}: {seen}",
        serials[3]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_another_spiffe_id_is_refused_and_named() {
    let ca = TestCa::new("example.org");
    let impostor = "spiffe://example.org/ns/demo/sa/impostor";
    let pg = Postgres::start(&ca, &Leaf::new(impostor, Some("postgres")));
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &backend_leaf());
    let app = backend_app(&pg, svids.path()).await;
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "db_tls");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains(impostor) && reason.contains(POSTGRES_ID.as_str()),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_from_another_ca_or_expired_is_refused() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf().expired());
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &backend_leaf());
    let app = backend_app(&pg, svids.path()).await;
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("expired") && reason.contains(POSTGRES_ID.as_str()),
        "{reason}"
    );

    let other = TestCa::new("example.org");
    pg.write_server_svid(&other, &postgres_leaf());
    pg.reload();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("does not chain to our trust bundle"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_refuses_a_client_certificate_with_another_cn() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &Leaf::new(&BACKEND_ID, Some("frontend")));
    let app = backend_app(&pg, svids.path()).await;
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "db_refused");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("certificate authentication failed for user \"backend\""),
        "{reason}"
    );
}

/// CN `backend` passes certificate authentication whatever the SPIFFE ID; the login trigger
/// ends such a session at login, names the ID it saw, and says so in PostgreSQL's log.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_refuses_cn_backend_with_another_spiffe_id_at_login_and_names_it() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    let svids = tempfile::tempdir().unwrap();
    let rogue = "spiffe://example.org/ns/demo/sa/rogue";
    ca.write_svid(svids.path(), &Leaf::new(rogue, Some("backend")));
    let app = backend_app(&pg, svids.path()).await;
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "db_refused");
    let reason = body["reason"].as_str().unwrap();
    let refusal = format!(
        "SPIFFE ID {rogue} may not log in as backend; only {} may",
        *BACKEND_ID
    );
    assert!(reason.contains(&refusal), "{reason}");
    let log = pg.log();
    assert!(
        log.lines()
            .any(|l| l.contains("FATAL") && l.contains(&refusal)),
        "PostgreSQL's log does not show the refusal:\n{log}"
    );
    // No session of the rogue is left to list or end anything.
    let sessions = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'backend'",
    );
    assert_eq!(sessions.trim(), "0");
}

/// Row-level security stays as the second line: with the login trigger disabled, the same
/// certificate logs in but reading orders is refused, naming the ID.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_login_check_off_row_level_security_still_refuses_and_names_the_id() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    pg.psql(
        "demo",
        "ALTER EVENT TRIGGER backend_login_needs_the_backend_spiffe_id DISABLE",
    );
    let svids = tempfile::tempdir().unwrap();
    let rogue = "spiffe://example.org/ns/demo/sa/rogue";
    ca.write_svid(svids.path(), &Leaf::new(rogue, Some("backend")));
    let app = backend_app(&pg, svids.path()).await;
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "db_refused");
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("SPIFFE ID {rogue} may not read orders")),
        "{reason}"
    );
}

/// The second line is decided when a statement is planned (the check is IMMUTABLE): the backend
/// prepares the orders query once per connection, so forty reads over one connection run the
/// check once, not forty times. PostgreSQL itself counts the calls (`track_functions`).
#[tokio::test(flavor = "multi_thread")]
async fn the_row_level_check_runs_once_per_prepared_statement_not_per_read() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    pg.psql("postgres", "ALTER SYSTEM SET track_functions = 'pl'");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &backend_leaf());
    let app = backend_app(&pg, svids.path()).await;
    // One at a time: the pool never needs a second connection.
    let reads = 40;
    for _ in 0..reads {
        let (status, body) = get(&app, "/api/orders").await;
        assert_eq!(status, 200, "{body}");
    }
    let connections = pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'backend'",
    );
    assert_eq!(connections.trim(), "1");
    // Closing the pool ends the session, which hands PostgreSQL its counts.
    drop(app);
    let calls = || {
        pg.psql(
            "demo",
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = 'require_client_spiffe_id'",
        )
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let calls = calls();
    assert_eq!(
        calls, 1,
        "{reads} reads over one connection ran the SPIFFE ID check {calls} times"
    );
}

/// The superuser over the Unix socket is another role: the login check never locks it out, and
/// the real backend still logs in.
#[tokio::test(flavor = "multi_thread")]
async fn the_login_check_leaves_the_superuser_and_the_real_backend_in() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    assert_eq!(pg.psql("demo", "SELECT count(*) FROM orders").trim(), "3");
    let enabled = pg.psql(
        "demo",
        "SELECT evtenabled FROM pg_event_trigger WHERE evtname = 'backend_login_needs_the_backend_spiffe_id' AND evtevent = 'login'",
    );
    assert_eq!(
        enabled.trim(),
        "O",
        "the login trigger is not there and enabled"
    );
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &backend_leaf());
    let app = backend_app(&pg, svids.path()).await;
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_refuses_plaintext() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(pg.port)
        .dbname("demo")
        .user("backend")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let err = config
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("plaintext was accepted");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("no encryption"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_own_svid_is_not_used_and_not_ready() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &backend_leaf().expired());
    let app = backend_app(&pg, svids.path()).await;
    let (status, ready) = get(&app, "/readyz").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["reason"].as_str().unwrap().contains("expired"),
        "{ready}"
    );
    assert_eq!(ready["cause"], "svid_expired", "{ready}");
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "svid_expired");
    assert!(
        !pg.log().contains("identity=\"CN=backend"),
        "an expired SVID reached PostgreSQL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_garbled_files_are_named_and_not_ready() {
    let ca = TestCa::new("example.org");
    let pg = Postgres::start(&ca, &postgres_leaf());
    let svids = tempfile::tempdir().unwrap();
    let app = backend_app(&pg, svids.path()).await;
    let (status, ready) = get(&app, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .contains("svid.pem is missing"),
        "{ready}"
    );

    std::fs::write(svids.path().join("svid.pem"), "not a certificate").unwrap();
    std::fs::write(svids.path().join("svid_key.pem"), "not a key").unwrap();
    std::fs::write(svids.path().join("svid_bundle.pem"), "not a bundle").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, ready) = get(&app, "/readyz").await;
    assert_eq!(status, 503);
    assert!(
        ready["reason"].as_str().unwrap().contains("not valid PEM"),
        "{ready}"
    );

    ca.write_svid(svids.path(), &backend_leaf());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, ready) = get(&app, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn database_down_answers_503_quickly_and_recovers_without_restart() {
    let ca = TestCa::new("example.org");
    let mut pg = Postgres::start(&ca, &postgres_leaf());
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &backend_leaf());
    let app = backend_app(&pg, svids.path()).await;
    assert_eq!(get(&app, "/api/orders").await.0, 200);

    pg.stop();
    let started = Instant::now();
    let (status, body) = get(&app, "/api/orders").await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert!(took < Duration::from_secs(2), "503 took {took:?}");
    assert_eq!(body["error"], "db_unreachable", "{body}");
    assert!(
        body["reason"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    let (status, _) = get(&app, "/readyz").await;
    assert_eq!(status, 503);

    pg.launch();
    let (status, body) = get(&app, "/api/orders").await;
    assert_eq!(
        status, 200,
        "no recovery after PostgreSQL came back: {body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_json_errors() {
    let ca = TestCa::new("example.org");
    let svids = tempfile::tempdir().unwrap();
    ca.write_svid(svids.path(), &backend_leaf());
    // No database is needed to route: nothing listens on this port.
    let state = backend::start(&backend_config(testkit::free_port(), svids.path()))
        .await
        .unwrap();
    let app = backend::app(state);
    let (status, body) = get(&app, "/api/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "not_found");

    // The probes' listener serves health, never the API.
    let state = backend::start(&backend_config(testkit::free_port(), svids.path()))
        .await
        .unwrap();
    let health = backend::health_app(state);
    assert_eq!(get(&health, "/healthz").await.0, 200);
    assert_eq!(get(&health, "/api/orders").await.0, 404);
}

fn hex_to_dec(hex: &str) -> String {
    openssl::bn::BigNum::from_hex_str(hex)
        .unwrap()
        .to_dec_str()
        .unwrap()
        .to_string()
}

/// A backend configuration pointing at PostgreSQL on `pg_port`, with its SVID files in `svid_dir`.
fn backend_config(pg_port: u16, svid_dir: &std::path::Path) -> backend::Config {
    use clap::Parser;
    backend::Config::parse_from([
        "backend",
        "--svid-dir",
        &svid_dir.display().to_string(),
        "--svid-poll-ms",
        "100",
        "--db-host",
        "127.0.0.1",
        "--db-port",
        &pg_port.to_string(),
    ])
}
