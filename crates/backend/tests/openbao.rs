//! The broker pattern with real components: a SPIRE server and agent (JWT-SVIDs, its
//! `jwt_issuer` set), SPIRE's OIDC discovery provider (the keys, over TLS), OpenBao from the
//! lab's `openbao.hcl` configured by the lab's `configure.sh`, and PostgreSQL from the lab's
//! `init.sql` and `pg_hba.conf`. X.509 certificates come from a test CA shaped like SPIRE's
//! (PostgreSQL, OpenBao and the backend trust it); JWT-SVIDs from the SPIRE server.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use contract::Workload;
use contract::ids::OPENBAO_AUDIENCE;
use svid::test_ca::{Leaf, TestCa};
use testkit::{BACKEND_ID, OidcProvider, OpenBao, POSTGRES_ID, Postgres, Spire, get_json as get};

struct World {
    ca: TestCa,
    spire: Spire,
    _provider: OidcProvider,
    bao: OpenBao,
    pg: Postgres,
}

impl World {
    fn start(ttl: &str, max_ttl: &str) -> World {
        let ca = TestCa::new(contract::TRUST_DOMAIN);
        let pg = Postgres::start(&ca, &Leaf::new(&POSTGRES_ID, Some("postgres")));
        let port = testkit::free_port();
        let spire = Spire::start_with_jwt_issuer(Some(&testkit::openbao::oidc_issuer(port)));
        let provider = OidcProvider::start(&spire, port, &ca);
        let bao = OpenBao::start(&ca);
        bao.configure(&provider, pg.port, ttl, max_ttl);
        World {
            ca,
            spire,
            _provider: provider,
            bao,
            pg,
        }
    }

    /// The backend's files: its X.509-SVID from the test CA, and a JWT-SVID the SPIRE server
    /// minted for `jwt_id` and `audience` where spiffe-helper would write it.
    fn backend_files(&self, jwt_id: &str, audience: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        self.ca
            .write_svid(dir.path(), &Leaf::new(&BACKEND_ID, Some("backend")));
        let jwt = self.spire.mint_jwt(jwt_id, audience, 300);
        std::fs::write(dir.path().join("openbao.jwt"), jwt).unwrap();
        dir
    }

    async fn backend(&self, files: &std::path::Path) -> axum::Router {
        use clap::Parser;
        let config = backend::Config::parse_from([
            "backend",
            "--svid-dir",
            &files.display().to_string(),
            "--svid-poll-ms",
            "100",
            "--db-host",
            "127.0.0.1",
            "--db-port",
            &self.pg.port.to_string(),
            "--openbao-addr",
            &format!("127.0.0.1:{}", self.bao.port),
        ]);
        backend::app(backend::start(&config).await.unwrap())
    }

    fn users(&self) -> BTreeSet<String> {
        self.pg
            .psql(
                "demo",
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'",
            )
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_backend_reads_reports_as_users_openbao_makes_and_switches_them_without_a_failure() {
    // Short leases: a renewal at half of 4 s, a switch when it comes back short (max 8 s).
    let w = World::start("4s", "8s");
    let files = w.backend_files(&BACKEND_ID, OPENBAO_AUDIENCE);
    let app = w.backend(files.path()).await;

    let started = Instant::now();
    let (status, body) = get(&app, "/api/reports").await;
    let first_ms = started.elapsed().as_millis();
    assert_eq!(status, 200, "{body}");
    let reports: contract::openbao::Reports = serde_json::from_value(body).unwrap();
    assert!(reports.link.succeeded(), "{reports:?}\n{}", w.bao.log());
    let total: i64 = reports.rows.iter().map(|r| r.orders).sum();
    assert_eq!(total, 3, "{reports:?}");
    let b = &reports.broker;
    assert_eq!(b.logged_in_as.as_deref(), Some(BACKEND_ID.as_str()));
    assert_eq!(
        b.openbao_spiffe_id.as_deref(),
        Some(Workload::OpenBao.spiffe_id().as_str())
    );
    let first_user = b.db_user.clone().unwrap();
    assert!(first_user.starts_with("v-"), "{first_user}");
    assert_eq!(b.api_token_masked.as_deref(), Some("test… (19 characters)"));
    assert!(w.users().contains(&first_user));
    println!("first reports (login, credentials, new pool): {first_ms} ms");

    // Reads go on every 50 ms while the leases come and go.
    let mut seen = vec![first_user];
    let (mut ok, mut failed) = (0, vec![]);
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        let (_, body) = get(&app, "/api/reports").await;
        let r: contract::openbao::Reports = serde_json::from_value(body).unwrap();
        if r.link.succeeded() {
            ok += 1;
        } else {
            failed.push(r.link.reason.clone());
        }
        if let Some(u) = r.broker.db_user
            && seen.last() != Some(&u)
        {
            seen.push(u);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(seen.len() >= 3, "users in 20 s: {seen:?}");
    // Every user but the current one and the one before it has reached its max TTL: OpenBao
    // ended its sessions and dropped it.
    let users = w.users();
    let ended = &seen[..seen.len() - 2];
    assert!(
        ended.iter().all(|u| !users.contains(u)),
        "ended {ended:?} still in pg_roles {users:?}"
    );
    // A short-lived user's password alone does not open PostgreSQL: without the backend's
    // certificate, pg_hba refuses it (clientcert=verify-ca), and with another workload's
    // the login trigger does (checked by the `openbao` scenario on the running lab).
    println!("{ok} reads, users in turn: {seen:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_role_refuses_another_audience_and_another_workload() {
    let w = World::start("60s", "120s");
    for (jwt_id, audience, claim) in [
        (BACKEND_ID.to_string(), "someone-else", "aud"),
        (Workload::Frontend.spiffe_id(), OPENBAO_AUDIENCE, "sub"),
    ] {
        let files = w.backend_files(&jwt_id, audience);
        let app = w.backend(files.path()).await;
        let (_, body) = get(&app, "/api/reports").await;
        let r: contract::openbao::Reports = serde_json::from_value(body).unwrap();
        assert!(
            r.link.failed_with(contract::Cause::OpenBaoRefused),
            "{jwt_id} for {audience}: {r:?}"
        );
        let reason = r.link.reason.unwrap_or_default();
        assert!(
            reason.contains(&format!("login as {jwt_id}")) && reason.contains(claim),
            "{reason}"
        );
        assert!(r.rows.is_empty() && r.broker.db_user.is_none());
    }
}

/// psql with `conninfo` and one statement: its rows, or what PostgreSQL said.
fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let (_, psql) = testkit::postgres::pg_bins();
    let out = std::process::Command::new(psql)
        .args([conninfo, "-AtXc", sql])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

#[test]
fn a_password_from_openbao_alone_opens_nothing() {
    let w = World::start("60s", "120s");
    let creds: serde_json::Value = serde_json::from_str(
        &w.bao
            .bao(&["read", "-format=json", "database/creds/reports"], None)
            .unwrap(),
    )
    .unwrap();
    let (user, password) = (
        creds["data"]["username"].as_str().unwrap(),
        creds["data"]["password"].as_str().unwrap(),
    );
    let login = format!(
        "host=127.0.0.1 port={} dbname=demo user={user} password={password} sslmode=require",
        w.pg.port
    );
    let with_cert = |id: &str| {
        let dir = tempfile::tempdir().unwrap();
        w.ca.write_svid(dir.path(), &Leaf::new(id, Some("backend")));
        let files = svid::SvidFiles::in_dir(dir.path());
        let conninfo = format!(
            "{login} sslcert={} sslkey={}",
            files.cert.display(),
            files.key.display()
        );
        (dir, conninfo)
    };

    // The password alone: pg_hba wants a client certificate from the trust bundle.
    let e = psql(&login, "SELECT 1").unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    // With another workload's SVID (CN `backend` all the same): the login trigger names it.
    let rogue = contract::workload_id(contract::ids::ROGUE);
    let (_dir, as_rogue) = with_cert(&rogue);
    let e = psql(&as_rogue, "SELECT 1").unwrap_err();
    assert!(
        e.contains(&format!("SPIFFE ID {rogue} may not log in as {user}")),
        "{e}"
    );
    // With the backend's: the reports, and nothing else.
    let (_dir, as_backend) = with_cert(&BACKEND_ID);
    assert_eq!(
        psql(&as_backend, "SELECT sum(orders) FROM reports").as_deref(),
        Ok("3")
    );
    let e = psql(&as_backend, "SELECT count(*) FROM orders").unwrap_err();
    assert!(e.contains("permission denied for table orders"), "{e}");
}
