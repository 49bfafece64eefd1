//! The ledger against a real SPIRE server and agent (`testkit::Spire`): its SVID from the Workload
//! API and rotated in memory under requests, callers authorized by SPIFFE ID, the inspection
//! routes, validation of real and altered SVIDs, and readiness that follows the SVID.
//!
//! Callers present SVIDs the same SPIRE server minted (`x509 mint`), so each test client is a
//! workload of the trust domain with the ID it needs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use contract::Workload;
use contract::ledger::{
    BundleView, Entries, Entry, LedgerCause, LedgerError, LedgerStatus, MintedJwt, Problem,
    SvidView, Validation, WhoAmI,
};
use testkit::Spire;
use testkit::spire::Minted;

use ledger::InProcess as Ledger;

async fn readyz(ledger: &Ledger) -> (u16, LedgerStatus) {
    let res = reqwest::get(format!("http://{}/readyz", ledger.health))
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn wait_ready(ledger: &Ledger) -> LedgerStatus {
    let start = Instant::now();
    loop {
        if let Ok(res) = reqwest::get(format!("http://{}/readyz", ledger.health)).await
            && res.status() == 200
        {
            return res.json().await.unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ledger not ready in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client presenting `svid`, trusting the trust domain's bundle, reaching the ledger as
/// `ledger` (the DNS name in its SVID).
fn client(
    spire_bundle: &std::path::Path,
    svid: Option<&Minted>,
    ledger: SocketAddr,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(spire_bundle).unwrap()).unwrap(),
        )
        .resolve("ledger", ledger)
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    if let Some(svid) = svid {
        let mut pem = std::fs::read(svid.cert()).unwrap();
        pem.extend(std::fs::read(svid.key()).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    b.build().unwrap()
}

fn url(ledger: &Ledger, path: &str) -> String {
    format!("https://ledger:{}{path}", ledger.api.port())
}

/// The SPIFFE ID and serial of the certificate the ledger served on this response's connection.
fn served(res: &reqwest::Response) -> (Vec<String>, String) {
    let der = res
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("the server's certificate")
        .to_vec();
    let info = ledger::decode(&der).unwrap();
    (info.uri_sans, info.serial)
}

async fn refused(res: reqwest::Response, status: u16) -> LedgerError {
    assert_eq!(res.status().as_u16(), status);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_on_a_real_spire_agent() {
    let mut spire = Spire::start();
    let ledger_id = Workload::Ledger.spiffe_id();
    spire.register_this_uid(&ledger_id, Some("ledger"), 10);
    spire.wait_for_svid();
    let ledger = Ledger::start(spire.endpoint());
    let status = wait_ready(&ledger).await;
    assert_eq!(
        status.spiffe_id.as_deref(),
        Some(ledger_id.as_str()),
        "{}",
        spire.logs()
    );
    ledger
        .wait_listening(Duration::from_secs(30))
        .await
        .unwrap();

    let bundle = spire.mint(&Workload::Backend.spiffe_id(), 600).bundle();
    let backend = client(
        &bundle,
        Some(&spire.mint(&Workload::Backend.spiffe_id(), 600)),
        ledger.api,
    );
    let frontend = client(
        &bundle,
        Some(&spire.mint(&Workload::Frontend.spiffe_id(), 600)),
        ledger.api,
    );
    let rogue_id = contract::workload_id("rogue");
    let rogue = client(&bundle, Some(&spire.mint(&rogue_id, 600)), ledger.api);

    // Only the backend writes; the ledger serves its own SPIFFE ID.
    let res = backend
        .post(url(&ledger, "/entries"))
        .json(&serde_json::json!({"orders": 3, "caller": Workload::Frontend.spiffe_id()}))
        .send()
        .await
        .unwrap();
    assert_eq!(served(&res).0, vec![ledger_id.clone()]);
    assert_eq!(res.status(), 201);
    let entry: Entry = res.json().await.unwrap();
    assert_eq!(entry.writer, Workload::Backend.spiffe_id());
    assert_eq!(entry.orders, 3);
    assert_eq!(Some(entry.ledger_serial.clone()), status.serial);

    let e = refused(
        frontend
            .post(url(&ledger, "/entries"))
            .json(&serde_json::json!({"orders": 1}))
            .send()
            .await
            .unwrap(),
        403,
    )
    .await;
    assert_eq!(e.error, LedgerCause::IdNotAllowed);
    assert_eq!(
        e.caller.as_deref(),
        Some(Workload::Frontend.spiffe_id().as_str())
    );
    assert!(
        e.reason.contains(&Workload::Backend.spiffe_id()),
        "{}",
        e.reason
    );

    // Only the frontend reads; another workload of the trust domain is refused by its ID.
    let res = frontend.get(url(&ledger, "/entries")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let entries: Entries = res.json().await.unwrap();
    assert_eq!(entries.entries, vec![entry]);
    let e = refused(
        rogue.get(url(&ledger, "/entries")).send().await.unwrap(),
        403,
    )
    .await;
    assert!(e.reason.starts_with(&rogue_id), "{}", e.reason);
    let e = refused(
        backend.get(url(&ledger, "/svid")).send().await.unwrap(),
        403,
    )
    .await;
    assert_eq!(e.error, LedgerCause::IdNotAllowed);
    let who: WhoAmI = rogue
        .get(url(&ledger, "/whoami"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(who.caller, rogue_id);

    // No client certificate: no connection at all.
    let anonymous = client(&bundle, None, ledger.api);
    let err = anonymous
        .get(url(&ledger, "/whoami"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");

    // Inspection: the SVID decoded, its PEM chain, the bundle in SPIFFE format.
    let svid: SvidView = frontend
        .get(url(&ledger, "/svid"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(svid.spiffe_id, ledger_id);
    assert_eq!(svid.chain[0].uri_sans, vec![ledger_id.clone()]);
    assert_eq!(svid.chain[0].dns_sans, vec!["ledger".to_owned()]);
    assert_eq!(svid.chain[0].key_type, "EC P-256");
    assert!(!svid.chain[0].is_ca);
    assert!(svid.chain[0].seconds_left > 0 && svid.chain[0].seconds_left <= 10);
    let pem = frontend
        .get(url(&ledger, "/svid.pem"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    assert!(!pem.contains("PRIVATE KEY"));
    let b: BundleView = frontend
        .get(url(&ledger, "/bundle"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(b.trust_domain, contract::TRUST_DOMAIN);
    assert!(b.x509_authorities.iter().all(|a| a.is_ca) && !b.x509_authorities.is_empty());
    let uses: Vec<&str> = b.spiffe_bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["use"].as_str().unwrap())
        .collect();
    assert!(
        uses.contains(&"x509-svid") && uses.contains(&"jwt-svid"),
        "{uses:?}"
    );

    // JWT-SVIDs: minted for an audience, then validated, altered, for another audience, expired.
    let minted: MintedJwt = frontend
        .get(url(&ledger, "/jwt?audience=inspector"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(minted.claims["sub"], ledger_id.as_str());
    assert_eq!(minted.claims["aud"], serde_json::json!(["inspector"]));
    assert!(minted.header["kid"].is_string());
    let validate = |token: String, audience: &str| {
        let frontend = frontend.clone();
        let u = url(&ledger, "/validate/jwt");
        let body = serde_json::json!({"token": token, "audience": audience});
        async move {
            let res = frontend.post(u).json(&body).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Validation>().await.unwrap()
        }
    };
    let v = validate(minted.token.clone(), "inspector").await;
    assert!(v.valid, "{v:?}");
    assert_eq!(v.spiffe_id.as_deref(), Some(ledger_id.as_str()));
    let v = validate(minted.token.clone(), "openbao").await;
    assert_eq!(v.problem, Some(Problem::WrongAudience), "{v:?}");
    assert!(v.reason.as_deref().unwrap().contains("inspector"));
    let mut parts: Vec<String> = minted.token.split('.').map(str::to_owned).collect();
    let sig = parts[2].clone();
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    parts[2] = format!("{flipped}{}", &sig[1..]);
    let v = validate(parts.join("."), "inspector").await;
    assert_eq!(v.problem, Some(Problem::BadSignature), "{v:?}");
    let v = validate("not-a-token".into(), "inspector").await;
    assert_eq!(v.problem, Some(Problem::Malformed), "{v:?}");
    let short = spire.mint_jwt(&Workload::Backend.spiffe_id(), "inspector", 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let v = validate(short, "inspector").await;
    assert_eq!(v.problem, Some(Problem::Expired), "{v:?}");

    // X.509-SVIDs: one of the trust domain, one of another CA, an expired one.
    let validate_x509 = |pem: String| {
        let frontend = frontend.clone();
        let u = url(&ledger, "/validate/x509");
        async move {
            let res = frontend
                .post(u)
                .json(&serde_json::json!({"pem": pem}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Validation>().await.unwrap()
        }
    };
    let backend_pem =
        std::fs::read_to_string(spire.mint(&Workload::Backend.spiffe_id(), 600).cert()).unwrap();
    let v = validate_x509(backend_pem).await;
    assert!(v.valid, "{v:?}");
    assert_eq!(v.spiffe_id, Some(Workload::Backend.spiffe_id()));
    let foreign = svid::test_ca::TestCa::new(contract::TRUST_DOMAIN);
    let issued = foreign.issue(&svid::test_ca::Leaf::new(
        &Workload::Backend.spiffe_id(),
        Some("backend"),
    ));
    let v = validate_x509(String::from_utf8(issued.cert_pem.clone()).unwrap()).await;
    assert_eq!(v.problem, Some(Problem::UnknownAuthority), "{v:?}");
    let expired = std::fs::read_to_string(spire.mint(&rogue_id, 1).cert()).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let v = validate_x509(expired).await;
    assert_eq!(v.problem, Some(Problem::Expired), "{v:?}");

    // Bounded bodies and bad input: a 4xx with a reason.
    let big = "x".repeat(contract::ledger::MAX_BODY_BYTES + 1);
    let e = refused(
        frontend
            .post(url(&ledger, "/validate/jwt"))
            .json(&serde_json::json!({"token": big, "audience": "a"}))
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    assert_eq!(e.error, LedgerCause::BadRequest);
    let e = refused(
        frontend
            .get(url(&ledger, "/jwt?audience="))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    assert!(e.reason.contains("audience"), "{}", e.reason);

    // Rotation in memory under requests: the 10 s SVID is replaced at least twice, every
    // request meanwhile answered, and new connections see the new serial.
    let first = served(
        &backend
            .post(url(&ledger, "/entries"))
            .json(&serde_json::json!({"orders": 0}))
            .send()
            .await
            .unwrap(),
    )
    .1;
    let start = Instant::now();
    let (mut ok, mut failed, mut serials) = (0, Vec::new(), vec![first]);
    let rotations_before = readyz(&ledger).await.1.rotations;
    loop {
        // A new connection each time, so the handshake shows the SVID of that moment.
        let c = client(
            &bundle,
            Some(&spire.mint(&Workload::Backend.spiffe_id(), 600)),
            ledger.api,
        );
        for _ in 0..5 {
            match c
                .post(url(&ledger, "/entries"))
                .json(&serde_json::json!({"orders": 1}))
                .send()
                .await
            {
                Ok(res) if res.status() == 201 => {
                    let serial = served(&res).1;
                    if serials.last() != Some(&serial) {
                        serials.push(serial);
                    }
                    ok += 1;
                }
                Ok(res) => failed.push(format!(
                    "{}: {}",
                    res.status(),
                    res.text().await.unwrap_or_default()
                )),
                Err(e) => failed.push(e.to_string()),
            }
        }
        let (_, now) = readyz(&ledger).await;
        if now.rotations >= rotations_before + 2 && serials.len() >= 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no 2 rotations in 40 s: {now:?}\n{}",
            spire.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during rotation: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok >= 10, "{ok}");

    // Readiness follows the SVID: the agent gone, the last SVID expires and the ledger says so.
    spire.stop_agent();
    let start = Instant::now();
    let (code, not_ready) = loop {
        let (code, s) = readyz(&ledger).await;
        if code != 200 {
            break (code, s);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still ready 20 s after the agent stopped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 503);
    assert!(!not_ready.ready);
    let reason = not_ready.reason.unwrap();
    assert!(reason.contains("expired"), "{reason}");
}

/// Before the Workload API answers, the ledger is alive, not ready, and says where it is asking.
#[tokio::test]
async fn not_ready_without_a_workload_api() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("unix://{}", dir.path().join("no-agent.sock").display());
    let ledger = Ledger::start(endpoint.clone());
    let start = Instant::now();
    let (code, status) = loop {
        if let Ok(res) = reqwest::get(format!("http://{}/readyz", ledger.health)).await {
            break (
                res.status().as_u16(),
                res.json::<LedgerStatus>().await.unwrap(),
            );
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 503);
    assert!(!status.ready && status.spiffe_id.is_none());
    assert!(status.reason.unwrap().contains(&endpoint));
    assert!(
        tokio::net::TcpStream::connect(ledger.api).await.is_err(),
        "no mTLS without an SVID"
    );
}
