//! The `security` scenario: what an insider would try, each attempt counted with where it was
//! refused and what the refusing side said. Certificates come from the running SPIRE server
//! (`x509 mint`: valid, signed by the lab's CA, registered nowhere) or from a CA made here; all
//! of them stay in memory and are gone when the scenario ends.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use contract::Workload;
use openssl::x509::X509;
use svid::test_ca::{Leaf, TestCa};

use super::Report;
use crate::lab::{Lab, PodListener, Reach};
use crate::probe::{self, Answer, ClientIdentity};

fn step(what: &str) {
    println!("  → {what}");
}

/// One attempt: what was tried, against what, the answer, and what the refusal must say (a
/// refusal for another reason proves nothing).
struct Attempt {
    what: String,
    at: &'static str,
    answer: Answer,
    must_say: Option<String>,
}

/// Runs one attempt. A refusal that is not the one it must be, but reads as a transport that
/// went away under it (on kind, a port-forward ending after the pod refused the attempt before),
/// is tried again, up to five times; the answer kept is the last.
fn attempt(
    what: impl Into<String>,
    at: &'static str,
    must_say: Option<String>,
    mut f: impl FnMut() -> anyhow::Result<Answer>,
) -> anyhow::Result<Attempt> {
    let dropped = |s: &str| {
        [
            "connection closed",
            "Connection reset",
            "Broken pipe",
            "unexpected EOF",
        ]
        .iter()
        .any(|d| s.contains(d))
    };
    let mut tries = 0;
    loop {
        let answer = f()?;
        tries += 1;
        let again = match (&answer, &must_say) {
            (Answer::Refused(said), Some(must)) => !said.contains(must.as_str()) && dropped(said),
            _ => false,
        };
        if !again || tries == 5 {
            return Ok(Attempt {
                what: what.into(),
                at,
                answer,
                must_say,
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Refused during TLS, before any HTTP: the backend Envoy's answer to a bad certificate.
const AT_TLS: &str = "TLS: ";

/// A leaf from a CA that is not SPIRE's, shaped like an SVID.
fn foreign(ca: &TestCa, spiffe_id: &str, dns: Option<&str>) -> anyhow::Result<ClientIdentity> {
    let issued = ca.issue(&Leaf::new(spiffe_id, dns));
    Ok(ClientIdentity {
        chain: vec![issued.cert],
        key: openssl::pkey::PKey::private_key_from_pem(&issued.key_pem)?,
    })
}

/// `f`, again while the listener cannot be connected to at all, for up to 15 s: on kind a
/// port-forward ends when the pod refuses a forwarded connection, and the next address the lab
/// gives is a new one. Answers, refusals included, are never retried.
pub(super) fn reachable<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let started = std::time::Instant::now();
    loop {
        match f() {
            Err(e)
                if e.to_string().starts_with("connect ")
                    && started.elapsed() < Duration::from_secs(15) =>
            {
                std::thread::sleep(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// The orders, read through the backend Envoy as `id` (None: no client certificate).
fn at_backend_envoy(
    lab: &dyn Lab,
    id: Option<&ClientIdentity>,
    trust: &[X509],
) -> anyhow::Result<(Option<u16>, Answer)> {
    reachable(|| {
        probe::https_get_as(
            &lab.backend_envoy_addr(),
            "/api/orders",
            id,
            trust,
            &Workload::Backend.spiffe_id(),
        )
    })
}

/// Logs in to PostgreSQL as role backend (as `id`, or in plaintext) and tries `sql`.
fn at_postgres(
    lab: &dyn Lab,
    id: Option<&ClientIdentity>,
    trust: &[X509],
    sql: &str,
) -> anyhow::Result<Answer> {
    reachable(|| {
        probe::postgres_as(
            &lab.postgres_addr(),
            id,
            trust,
            &Workload::Postgres.spiffe_id(),
            sql,
        )
    })
}

/// `GET path` on the ledger's own mTLS listener as `id`; the ledger must prove its SPIFFE ID.
fn at_ledger(
    lab: &dyn Lab,
    path: &str,
    id: Option<&ClientIdentity>,
    trust: &[X509],
) -> anyhow::Result<(Option<u16>, Answer)> {
    reachable(|| {
        probe::https_get_as(
            &lab.ledger_addr(),
            path,
            id,
            trust,
            &Workload::Ledger.spiffe_id(),
        )
    })
}

/// What an insider logged in as `backend` would do to the real backend: end its sessions.
const END_THE_BACKENDS_SESSIONS: &str = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'backend' AND pid <> pg_backend_pid()";

pub fn security(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let bundle = lab.trust_bundle()?;
    let frontend = Workload::Frontend.spiffe_id();
    let rogue = contract::workload_id(contract::ids::ROGUE);
    let minute = Duration::from_secs(300);

    step("controls: SVIDs minted by SPIRE for the real identities are let in");
    let minted_frontend = lab.mint_svid(&frontend, None, minute)?;
    probe::chains_to(&minted_frontend.identity.chain, &bundle)
        .context("a minted SVID does not chain to the lab's trust bundle")?;
    let serials = |b: &[X509]| -> Vec<String> { b.iter().map(|c| svid::serial_hex(c)).collect() };
    ensure!(
        serials(&minted_frontend.bundle) == serials(&bundle),
        "`x509 mint` names other root CAs than the bundle"
    );
    let (status, answer) = at_backend_envoy(lab, Some(&minted_frontend.identity), &bundle)?;
    r.say(format!(
        "backend Envoy, as {frontend} (minted): {}",
        short(&answer)
    ));
    ensure!(
        status == Some(200),
        "the control failed: the frontend's own SPIFFE ID was not let through ({answer:?}); the attempts below would prove nothing"
    );
    let minted_backend = lab.mint_svid(
        &Workload::Backend.spiffe_id(),
        Workload::Backend.dns_name(),
        minute,
    )?;
    let answer = at_postgres(
        lab,
        Some(&minted_backend.identity),
        &bundle,
        "SELECT count(*) FROM orders",
    )?;
    r.say(format!(
        "PostgreSQL, as {} (minted, CN backend): {}",
        Workload::Backend.spiffe_id(),
        short(&answer)
    ));
    ensure!(
        matches!(&answer, Answer::Served(rows) if rows.contains('3')),
        "the control failed: PostgreSQL did not let the backend's own SPIFFE ID read orders ({answer:?})"
    );

    let mut attempts = Vec::new();
    let foreign_ca = TestCa::new(contract::TRUST_DOMAIN);
    let evil = TestCa::new("evil.example");
    let envoy = "backend Envoy";

    step("at the backend Envoy (mTLS, then RBAC on the caller's SPIFFE ID)");
    let id = foreign(&foreign_ca, &frontend, None)?;
    attempts.push(attempt(
        format!("a foreign CA's certificate for the frontend's exact ID ({frontend})"),
        envoy,
        Some(AT_TLS.into()),
        || Ok(at_backend_envoy(lab, Some(&id), &bundle)?.1),
    )?);
    let evil_id = "spiffe://evil.example/ns/demo/sa/frontend";
    let id = foreign(&evil, evil_id, None)?;
    attempts.push(attempt(
        format!("another trust domain's SVID ({evil_id})"),
        envoy,
        Some(AT_TLS.into()),
        || Ok(at_backend_envoy(lab, Some(&id), &bundle)?.1),
    )?);
    let expired = lab.mint_svid(&frontend, None, Duration::from_secs(1))?;
    let not_after = svid::unix_time(expired.identity.chain[0].not_after());
    while contract::time::seconds_until(not_after) >= 0 {
        std::thread::sleep(Duration::from_millis(250));
    }
    attempts.push(attempt(
        "an expired SVID for the frontend, minted by SPIRE",
        envoy,
        Some(AT_TLS.into()),
        || Ok(at_backend_envoy(lab, Some(&expired.identity), &bundle)?.1),
    )?);
    attempts.push(attempt(
        "no client certificate",
        envoy,
        Some("alert certificate required".into()),
        || Ok(at_backend_envoy(lab, None, &bundle)?.1),
    )?);
    attempts.push(attempt(
        "plaintext HTTP to the mTLS listener",
        envoy,
        None,
        || reachable(|| probe::plaintext_http(&lab.backend_envoy_addr(), "/api/orders")),
    )?);
    let minted_rogue = lab.mint_svid(&rogue, Workload::Backend.dns_name(), minute)?;
    attempts.push(attempt(
        format!("an SVID minted by SPIRE for {rogue} (valid chain, wrong ID)"),
        envoy,
        Some("HTTP 403: backend Envoy: RBAC: access denied".into()),
        || Ok(at_backend_envoy(lab, Some(&minted_rogue.identity), &bundle)?.1),
    )?);

    step(
        "at the ledger (its own mTLS from the Workload API, then each route by the caller's SPIFFE ID)",
    );
    let (status, answer) = at_ledger(lab, "/entries", Some(&minted_frontend.identity), &bundle)?;
    r.say(format!(
        "ledger, reading entries as {frontend} (minted): {}",
        short(&answer)
    ));
    ensure!(
        status == Some(200),
        "the control failed: the ledger did not let the frontend read ({answer:?})"
    );
    let ledger = "ledger";
    attempts.push(attempt(
        format!("an SVID minted by SPIRE for {rogue} reads the entries"),
        ledger,
        Some(format!("{rogue} may not read entries")),
        || Ok(at_ledger(lab, "/entries", Some(&minted_rogue.identity), &bundle)?.1),
    )?);
    let backend = Workload::Backend.spiffe_id();
    attempts.push(attempt(
        format!("the backend's own ID ({backend}) inspects the ledger's SVID (it may only write)"),
        ledger,
        Some(format!("{backend} may not inspect the ledger")),
        || Ok(at_ledger(lab, "/svid", Some(&minted_backend.identity), &bundle)?.1),
    )?);
    let id = foreign(&foreign_ca, &frontend, None)?;
    attempts.push(attempt(
        format!("a foreign CA's certificate for the frontend's exact ID ({frontend})"),
        ledger,
        Some(AT_TLS.into()),
        || Ok(at_ledger(lab, "/entries", Some(&id), &bundle)?.1),
    )?);
    attempts.push(attempt(
        "no client certificate",
        ledger,
        Some(AT_TLS.into()),
        || Ok(at_ledger(lab, "/whoami", None, &bundle)?.1),
    )?);
    attempts.push(attempt(
        "plaintext HTTP to the ledger's mTLS listener",
        ledger,
        None,
        || reachable(|| probe::plaintext_http(&lab.ledger_addr(), "/entries")),
    )?);

    step("at PostgreSQL (TLS, certificate authentication, then the SPIFFE ID at login)");
    attempts.push(attempt(
        format!(
            "the SPIRE-minted {rogue} with CN backend logs in as backend to end the backend's sessions"
        ),
        "PostgreSQL",
        Some(format!("SPIFFE ID {rogue} may not log in as backend")),
        || {
            at_postgres(
                lab,
                Some(&minted_rogue.identity),
                &bundle,
                END_THE_BACKENDS_SESSIONS,
            )
        },
    )?);
    let id = foreign(
        &foreign_ca,
        &Workload::Backend.spiffe_id(),
        Workload::Backend.dns_name(),
    )?;
    attempts.push(attempt(
        "a foreign CA's certificate for the backend's ID, CN backend",
        "PostgreSQL",
        None,
        || at_postgres(lab, Some(&id), &bundle, END_THE_BACKENDS_SESSIONS),
    )?);
    attempts.push(attempt(
        "plaintext, as backend",
        "PostgreSQL",
        Some("no encryption".into()),
        || at_postgres(lab, None, &bundle, END_THE_BACKENDS_SESSIONS),
    )?);

    step("from another pod, at the listeners each pod keeps on its own loopback");
    match lab.capabilities().shared_loopback {
        Some(why) => {
            r.say(format!(
                "not tried: {why}, so any local process reaches them (run as root for pods)"
            ));
            r.figure("pod_isolation_checked", false);
        }
        None => {
            let mut targets = vec![PodListener::BackendEnvoyMtls];
            targets.extend(PodListener::PRIVATE);
            let mut reached = lab.reach_from_another_pod(&targets)?.into_iter();
            // The control: the insider's pod is on the pods' network at all.
            let (_, control) = reached.next().context("no answer for the control")?;
            match control {
                Reach::Connected { addr } => r.say(format!(
                    "control: the insider's pod reaches {} at {addr}",
                    PodListener::BackendEnvoyMtls.describe()
                )),
                Reach::Refused { addr, reason } => bail!(
                    "the control failed: the insider's pod cannot reach {} at {addr} ({reason}); the attempts below would prove nothing",
                    PodListener::BackendEnvoyMtls.describe()
                ),
            }
            for (l, reach) in reached {
                let (addr, answer) = match reach {
                    Reach::Connected { addr } => (addr, Answer::Served("connected".into())),
                    Reach::Refused { addr, reason } => (addr, Answer::Refused(reason)),
                };
                attempts.push(Attempt {
                    what: format!("a TCP connection to {} at {addr}", l.describe()),
                    at: "the pod's own loopback",
                    answer,
                    must_say: None,
                });
            }
            r.figure("pod_isolation_checked", true);
        }
    }

    println!(
        "\n      {:<4} {:<26} {:<10} attempt and answer",
        "#", "where", "result"
    );
    let mut served = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        let (result, said) = match &a.answer {
            Answer::Refused(s) => ("refused", s),
            Answer::Served(s) => ("SERVED", s),
        };
        println!("      {:<4} {:<26} {result:<10} {}", i + 1, a.at, a.what);
        println!(
            "      {:<4} {:<26} {:<10} → {}",
            "",
            "",
            "",
            first_line(said)
        );
        r.evidence.push(format!(
            "{} at {}: {result}: {}",
            a.what,
            a.at,
            first_line(said)
        ));
        if matches!(a.answer, Answer::Served(_)) {
            served.push(a.what.clone());
        }
    }
    r.figure("attempts", attempts.len());
    r.figure("refused", attempts.len() - served.len());
    if !served.is_empty() {
        bail!(
            "{} attempt(s) got through: {}",
            served.len(),
            served.join("; ")
        );
    }

    // The refusals must be the right ones, not any failure.
    for a in &attempts {
        if let (Answer::Refused(said), Some(must)) = (&a.answer, &a.must_say) {
            ensure!(
                said.contains(must.as_str()),
                "{} at {} was refused, but not as it must be (\"{must}\"): {said}",
                a.what,
                a.at
            );
        }
    }

    step("the real backend's sessions were not touched: Run Demo");
    let d = crate::demo::run_demo(&lab.frontend_url()).context("Run Demo after the attempts")?;
    r.say(d.line());
    ensure!(d.ok(), "Run Demo fails after the attempts");
    Ok(())
}

/// An answer in a few words: its first 60 characters.
fn short(a: &Answer) -> String {
    let (kind, text) = match a {
        Answer::Served(s) => ("served", s),
        Answer::Refused(s) => ("refused", s),
    };
    let text: String = first_line(text).chars().take(60).collect();
    format!("{kind}: {text}")
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}
