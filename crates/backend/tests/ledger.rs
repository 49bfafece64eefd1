//! The backend's client of the ledger against the real ledger on a real SPIRE agent: an entry
//! recorded with the backend's SVID files, and each way it can go wrong told apart — the ledger
//! refusing the caller's SPIFFE ID, a server that is not the ledger, a CA the ledger does not
//! trust, nothing listening.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backend::{LedgerClient, SvidSource};
use contract::ledger::NewEntry;
use contract::{Cause, Workload};
use svid::SvidFiles;
use testkit::Spire;
use testkit::spire::Minted;

/// The minted SVID as spiffe-helper lays it out, loaded as the backend loads it.
async fn svid_files(minted: &Minted, dir: &Path) -> Arc<SvidSource> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(minted.cert(), dir.join("svid.pem")).unwrap();
    std::fs::copy(minted.key(), dir.join("svid_key.pem")).unwrap();
    std::fs::copy(minted.bundle(), dir.join("svid_bundle.pem")).unwrap();
    let source = Arc::new(SvidSource::new(SvidFiles::in_dir(dir)));
    source.refresh().await;
    source.current().expect("the minted SVID loads");
    source
}

fn client(addr: std::net::SocketAddr, expected: &str, svids: Arc<SvidSource>) -> LedgerClient {
    LedgerClient::new(
        addr.ip().to_string(),
        addr.port(),
        expected.parse().unwrap(),
        svids,
        Duration::from_secs(5),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_recorded_over_mtls_and_each_failure_is_told_apart() {
    let spire = Spire::start();
    let ledger_id = Workload::Ledger.spiffe_id();
    spire.register_this_uid(&ledger_id, Some("ledger"), 3600);
    spire.wait_for_svid();
    let ledger = ledger::InProcess::start(spire.endpoint());
    ledger
        .wait_listening(Duration::from_secs(30))
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let entry = NewEntry {
        orders: 3,
        caller: Some(Workload::Frontend.spiffe_id()),
    };

    // The backend's SVID: recorded, and the ledger was checked by its SPIFFE ID.
    let backend = svid_files(
        &spire.mint(&Workload::Backend.spiffe_id(), 600),
        &scratch.path().join("backend"),
    )
    .await;
    let w = client(ledger.api, &ledger_id, backend.clone())
        .record(&entry)
        .await;
    assert!(w.link.succeeded(), "{:?}", w.link);
    assert_eq!(w.ledger_spiffe_id.as_deref(), Some(ledger_id.as_str()));
    let recorded = w.entry.unwrap();
    assert_eq!(recorded.writer, Workload::Backend.spiffe_id());
    assert_eq!(recorded.caller, entry.caller);

    // Another workload's SVID: the ledger refuses it by ID, and the reason names it.
    let frontend = svid_files(
        &spire.mint(&Workload::Frontend.spiffe_id(), 600),
        &scratch.path().join("frontend"),
    )
    .await;
    let w = client(ledger.api, &ledger_id, frontend)
        .record(&entry)
        .await;
    assert!(w.link.failed_with(Cause::LedgerRefused), "{:?}", w.link);
    let reason = w.link.reason.unwrap();
    assert!(reason.contains(&Workload::Frontend.spiffe_id()), "{reason}");

    // Expecting another ID than the server presents: refused by the backend, both IDs named.
    let w = client(ledger.api, &Workload::Postgres.spiffe_id(), backend.clone())
        .record(&entry)
        .await;
    assert!(w.link.failed_with(Cause::LedgerTls), "{:?}", w.link);
    let reason = w.link.reason.unwrap();
    assert!(
        reason.contains(&ledger_id) && reason.contains(&Workload::Postgres.spiffe_id()),
        "{reason}"
    );

    // An SVID from a CA the trust domain does not have: the ledger ends the handshake.
    let foreign = svid::test_ca::TestCa::new(contract::TRUST_DOMAIN);
    let dir = scratch.path().join("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    let issued = foreign.issue(&svid::test_ca::Leaf::new(
        &Workload::Backend.spiffe_id(),
        Some("backend"),
    ));
    // Our bundle still trusts the real CA, so only the ledger's side can refuse.
    svid::test_ca::write_files(
        &dir,
        &issued.cert_pem,
        &issued.key_pem,
        &std::fs::read(spire.mint(&Workload::Backend.spiffe_id(), 600).bundle()).unwrap(),
    );
    let source = Arc::new(SvidSource::new(SvidFiles::in_dir(&dir)));
    source.refresh().await;
    let w = client(ledger.api, &ledger_id, source).record(&entry).await;
    assert!(w.link.failed_with(Cause::LedgerTls), "{:?}", w.link);
    let reason = w.link.reason.unwrap();
    // Its alert, or the connection it ended, depending on which the client reads first.
    assert!(reason.contains("refused our SVID"), "{reason}");

    // Nothing listening.
    let closed: std::net::SocketAddr = format!("127.0.0.1:{}", testkit::free_port())
        .parse()
        .unwrap();
    let w = client(closed, &ledger_id, backend).record(&entry).await;
    assert!(w.link.failed_with(Cause::LedgerUnreachable), "{:?}", w.link);
}
