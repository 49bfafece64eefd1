//! The eight scenarios. Each decides on typed fields (`contract`), never on a sentence of the UI;
//! the sentences are printed as evidence.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use contract::{Cause, Holder, LinkStatus, Workload};

use super::Report;
use crate::demo::{Demo, Load};
use crate::lab::{Component, Lab, Policy};
use crate::probe;

pub(super) fn step(what: &str) {
    println!("  → {what}");
}

fn run_demo(lab: &dyn Lab) -> anyhow::Result<Demo> {
    crate::demo::run_demo(&lab.frontend_url())
}

/// Runs the demo until `done` holds for its result, every 200 ms, for at most `limit`.
pub(super) fn until(
    lab: &dyn Lab,
    limit: Duration,
    done: impl Fn(&Demo) -> bool,
) -> anyhow::Result<(Demo, Duration)> {
    let started = Instant::now();
    loop {
        let d = run_demo(lab)?;
        if done(&d) {
            return Ok((d, started.elapsed()));
        }
        if started.elapsed() > limit {
            bail!(
                "still not as expected after {} s: {}",
                limit.as_secs(),
                d.line()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn happy(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    step("Run Demo");
    let d = run_demo(lab)?;
    r.say(d.line());
    ensure!(d.ok(), "expected every link SUCCESS with orders");
    step("the backend recorded it in the ledger, which proved its own SPIFFE ID");
    let ledger = d.result.ledger_spiffe_id.clone().unwrap_or_default();
    r.say(format!(
        "ledger entry {} recorded; the ledger proved {ledger}",
        d.result.ledger_entry.unwrap_or(0)
    ));
    ensure!(
        d.result.ledger_entry.is_some() && ledger == Workload::Ledger.spiffe_id(),
        "the Run Demo was not recorded by the ledger with its own ID ({ledger:?})"
    );
    step("the backend saw the frontend's SPIFFE ID (x-forwarded-client-cert from its Envoy)");
    let caller = d.result.caller_seen_by_backend.clone().unwrap_or_default();
    r.say(format!("caller seen by the backend: {caller}"));
    ensure!(
        caller == Workload::Frontend.spiffe_id(),
        "the backend saw caller {caller:?}"
    );

    step("the backend Envoy's TLS handshakes and RBAC decisions (admin /stats)");
    let (_, stats) = probe::get(&format!(
        "{}/stats?filter=(ssl.handshake|rbac)",
        lab.envoy_admin_url(true)
    ))?;
    let stat = |suffix: &str| -> u64 {
        stats
            .lines()
            .filter(|l| l.starts_with("listener.") || l.starts_with("http."))
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| k.ends_with(suffix))
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum()
    };
    let (handshakes, allowed) = (stat("ssl.handshake"), stat("rbac.allowed"));
    r.say(format!(
        "backend Envoy: {handshakes} mTLS handshakes, {allowed} requests allowed by RBAC"
    ));
    ensure!(
        handshakes > 0 && allowed > 0,
        "no handshake or RBAC decision recorded"
    );

    step("PostgreSQL's log: user backend authenticated by certificate over TLS");
    let log = lab.log(Component::Postgres)?;
    let authn = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("connection authenticated: identity=\"CN=backend")
                && l.contains("method=cert")
        })
        .context("PostgreSQL's log shows no certificate authentication of CN=backend")?;
    r.say(authn.trim().to_owned());
    let authz = log
        .lines()
        .rev()
        .find(|l| {
            l.contains("connection authorized: user=backend database=demo")
                && l.contains("SSL enabled")
        })
        .context("PostgreSQL's log shows no TLS connection of user backend")?;
    r.say(authz.trim().to_owned());

    step("every certificate on the path chains to the SPIRE server's bundle");
    let bundle = lab.trust_bundle()?;
    r.say(format!(
        "SPIRE bundle: {} CA certificate(s), serial(s) {}",
        bundle.len(),
        bundle
            .iter()
            .map(|c| svid::serial_hex(c))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for (holder, chain) in lab.presented_chains() {
        let chain = chain.with_context(|| holder)?;
        probe::chains_to(&chain, &bundle)
            .with_context(|| format!("{holder} does not chain to the SPIRE bundle"))?;
        r.say(format!(
            "{holder}: {} chains to the bundle",
            svid::describe_certificate(&chain[0])
        ));
    }
    // The frontend Envoy only acts as a client: its certificate is checked by the backend Envoy
    // (the handshakes above) against the same bundle, which it also validates the server with.
    let bundle_serials: BTreeSet<String> = bundle.iter().map(|c| svid::serial_hex(c)).collect();
    let fe = probe::envoy_certs(&lab.envoy_admin_url(false))?;
    let ca_serials = fe.ca_serials();
    ensure!(
        ca_serials.iter().any(|s| bundle_serials.contains(s)),
        "the frontend Envoy validates against CA serials {ca_serials:?}, not the SPIRE bundle's"
    );
    let leaf = fe
        .leaf()
        .context("the frontend Envoy holds no certificate")?;
    r.say(format!(
        "frontend Envoy: {} (serial {}) accepted by the backend Envoy; its validation bundle is SPIRE's (CA {})",
        leaf.spiffe_id.unwrap_or_default(),
        leaf.serial,
        ca_serials.join(", ")
    ));
    Ok(())
}

pub fn rbac(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let limit = lab.capabilities().policy_propagation;
    let before = (
        lab.instance(Component::Frontend),
        lab.instance(Component::Backend),
    );
    let d = run_demo(lab)?;
    ensure!(d.ok(), "the lab is not healthy to begin with: {}", d.line());
    step(
        "switch the backend Envoy's RBAC policy to deny (manifests/backend/config/rbac-deny.yaml)",
    );
    lab.set_policy(Policy::Deny)?;
    let outcome = until(lab, limit, |d| {
        d.result.frontend_to_backend.status == LinkStatus::Failed
    });
    let (d, took) = match outcome {
        Ok(v) => v,
        Err(e) => {
            lab.set_policy(Policy::AllowFrontend)?;
            return Err(e);
        }
    };
    r.say(d.line());
    r.say(format!("switch to effect: {:.2} s", took.as_secs_f64()));
    r.figure("deny_effect_seconds", took.as_secs_f64());
    r.checkpoint("the deny policy is in force: press Run Demo in the UI to see the refusal");
    let denied = d.result.frontend_to_backend.failed_with(Cause::RbacDenied);
    step("restore the allow policy (manifests/backend/config/rbac.yaml)");
    lab.set_policy(Policy::AllowFrontend)?;
    ensure!(
        denied,
        "the failure is not an RBAC denial: {:?}",
        d.result.frontend_to_backend
    );
    let (d, took) = until(lab, limit, Demo::ok)?;
    r.say(d.line());
    r.say(format!("restore to effect: {:.2} s", took.as_secs_f64()));
    r.figure("restore_effect_seconds", took.as_secs_f64());
    let after = (
        lab.instance(Component::Frontend),
        lab.instance(Component::Backend),
    );
    r.say(format!(
        "frontend {} and backend {} before; {} and {} after: not restarted",
        before.0.clone().unwrap_or_default(),
        before.1.clone().unwrap_or_default(),
        after.0.clone().unwrap_or_default(),
        after.1.clone().unwrap_or_default()
    ));
    ensure!(
        before == after && before.0.is_some(),
        "the frontend or backend was restarted"
    );
    Ok(())
}

pub(super) fn holder_serials(lab: &dyn Lab) -> BTreeMap<Holder, (String, Option<i64>)> {
    lab.holdings()
        .into_iter()
        .flatten()
        .map(|h| (h.holder, (h.serial, h.seconds_left)))
        .collect()
}

/// Sets a short TTL and waits until every holder holds a certificate issued after the change
/// with that TTL. A holder's current certificate may still be a short one left by an earlier
/// scenario, while the certificate of the default TTL that its end asked for is on its way: only
/// a new serial counts.
pub(super) fn shorten_ttl(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    step(&format!(
        "set the X.509-SVID TTL of every workload to {ttl} s"
    ));
    let before: BTreeMap<Holder, String> = holder_serials(lab)
        .into_iter()
        .map(|(h, (serial, _))| (h, serial))
        .collect();
    lab.set_svid_ttl(Some(ttl))?;
    let started = Instant::now();
    loop {
        let h = holder_serials(lab);
        // A new serial with at least half the new TTL left: a short SVID still issued under
        // an earlier scenario's TTL is not the one asked for, and would expire early.
        let moved = |holder: &Holder, serial: &String, left: &Option<i64>| {
            before.get(holder) != Some(serial)
                && left.is_some_and(|l| l <= i64::from(ttl) && l >= i64::from(ttl / 2))
        };
        if h.len() == Holder::ALL.len() && h.iter().all(|(k, (s, l))| moved(k, s, l)) {
            r.say(format!(
                "all {} holders hold new {ttl} s SVIDs after {:.1} s",
                Holder::ALL.len(),
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(u64::from(ttl) + 30) {
            bail!("not every holder moved to a new {ttl} s SVID: {h:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(super) fn restore_ttl(lab: &mut dyn Lab) -> anyhow::Result<()> {
    step("restore the default X.509-SVID TTL");
    lab.set_svid_ttl(None)
}

pub fn rotation(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    let run_for = Duration::from_secs(3 * u64::from(ttl) + 2);
    let outcome = rotation_under_load(lab, r, ttl, run_for);
    restore_ttl(lab)?;
    let outcome = outcome?;
    ensure!(
        outcome.failures == 0,
        "{} requests failed during rotation",
        outcome.failures
    );
    ensure!(
        outcome.serials.len() == Holder::ALL.len(),
        "not every certificate holder could be observed: {:?}",
        outcome.serials.keys()
    );
    for (holder, n) in &outcome.serials {
        ensure!(*n >= 3, "{holder} showed only {n} serials");
    }
    Ok(())
}

/// What a run of requests under rotation saw.
pub struct Rotation {
    pub requests: usize,
    pub failures: usize,
    /// Distinct serials seen per certificate holder.
    pub serials: BTreeMap<Holder, usize>,
}

/// Shortens the SVID TTL, then runs continuous Run Demo requests for `run_for` while sampling
/// every holder's serial. The caller restores the TTL.
pub fn rotation_under_load(
    lab: &mut dyn Lab,
    r: &mut Report,
    ttl: u32,
    run_for: Duration,
) -> anyhow::Result<Rotation> {
    shorten_ttl(lab, r, ttl)?;
    step(&format!(
        "continuous Run Demo requests for {} s while SPIRE rotates every SVID",
        run_for.as_secs()
    ));
    let load = Load::start(
        &lab.frontend_url(),
        crate::demo::Ledger::Record,
        2,
        Duration::from_millis(100),
    );
    let mut seen: BTreeMap<Holder, BTreeSet<String>> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < run_for {
        for (holder, (serial, _)) in holder_serials(lab) {
            if seen.entry(holder).or_default().insert(serial.clone()) {
                println!(
                    "      {:>5.1} s  {holder}: new serial {serial}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let tally = load.finish();
    let total = tally.requests();
    r.say(format!(
        "{total} requests in {:.0} s ({:.1}/s), {} failed",
        run_for.as_secs_f64(),
        total as f64 / run_for.as_secs_f64(),
        tally.failed
    ));
    r.figure("requests", total);
    r.figure("failures", tally.failed);
    for (holder, serials) in &seen {
        r.say(format!("{holder}: {} distinct serials", serials.len()));
        r.figure(
            &format!("serials_{}", holder.to_string().replace(' ', "_")),
            serials.len(),
        );
    }
    for f in tally.failures.iter().take(5) {
        r.say(format!("failure: {f}"));
    }
    Ok(Rotation {
        requests: total,
        failures: tally.failed,
        serials: seen.into_iter().map(|(h, s)| (h, s.len())).collect(),
    })
}

pub fn server_outage(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    shorten_ttl(lab, r, ttl)?;
    let result = (|| -> anyhow::Result<()> {
        let before: BTreeMap<_, _> = holder_serials(lab)
            .into_iter()
            .map(|(h, (s, _))| (h, s))
            .collect();
        step("stop the SPIRE server: every replica");
        stop_servers(lab)?;
        let outage = Duration::from_secs(u64::from(ttl) / 3);
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < outage {
            let d = run_demo(lab)?;
            if !d.ok() {
                let _ = start_servers(lab);
                bail!("a request failed while the server was down: {}", d.line());
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(300));
        }
        r.say(format!(
            "{n} requests succeeded in {} s without a SPIRE server (cached SVIDs)",
            outage.as_secs()
        ));
        step("start the SPIRE server again");
        start_servers(lab)?;
        let started = Instant::now();
        let mut fresh: BTreeSet<Holder> = BTreeSet::new();
        while fresh.len() < before.len() {
            for (holder, (serial, _)) in holder_serials(lab) {
                if before.get(&holder).is_some_and(|b| *b != serial) && fresh.insert(holder) {
                    r.say(format!(
                        "{holder}: new serial {serial} {:.1} s after the server returned",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
            ensure!(
                started.elapsed() < Duration::from_secs(u64::from(ttl) * 2 + 20),
                "rotation did not resume for every holder: {fresh:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let d = run_demo(lab)?;
        r.say(d.line());
        ensure!(d.ok(), "Run Demo fails after the outage");
        Ok(())
    })();
    if Component::servers().any(|c| lab.instance(c).is_none()) {
        start_servers(lab)?;
    }
    restore_ttl(lab)?;
    result
}

/// Every replica, the highest ordinal first (as a StatefulSet scales down).
fn stop_servers(lab: &mut dyn Lab) -> anyhow::Result<()> {
    let replicas: Vec<Component> = Component::servers().collect();
    for c in replicas.into_iter().rev() {
        lab.stop(c)?;
    }
    Ok(())
}

fn start_servers(lab: &mut dyn Lab) -> anyhow::Result<()> {
    for c in Component::servers() {
        if lab.instance(c).is_none() {
            lab.start(c)?;
        }
    }
    Ok(())
}

pub fn unregistered(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    // A rogue entry left by an interrupted run would make the first check meaningless.
    lab.remove_rogue()?;
    step("a workload no registration entry describes asks its agent for an SVID");
    match lab.fetch_svid_unregistered() {
        Ok(out) => bail!("an unregistered process got an SVID: {out}"),
        Err(e) => r.say(format!("refused: {e:#}")),
    }
    step("without an SVID it cannot reach the backend: TLS with no client certificate");
    let refusal = probe::tls_without_client_cert(&lab.backend_envoy_addr())?;
    r.say(format!("backend Envoy refused the handshake: {refusal}"));

    let rogue = contract::workload_id(contract::ids::ROGUE);
    step(&format!(
        "a rogue workload with a valid SVID for {rogue} (CN backend)"
    ));
    let dir = match lab.issue_rogue_svid() {
        Ok(dir) => dir,
        Err(e) => {
            lab.remove_rogue()?;
            return Err(e);
        }
    };
    let result = (|| -> anyhow::Result<()> {
        let cert = dir.join("svid.0.pem");
        let pem = std::fs::read(&cert)?;
        let x = openssl::x509::X509::from_pem(&pem)?;
        r.say(format!("rogue holds {}", svid::describe_certificate(&x)));
        let (status, body) = probe::https_get_with_cert(
            &lab.backend_envoy_addr(),
            "/api/orders",
            &cert,
            &dir.join("svid.0.key"),
            &dir.join("bundle.0.pem"),
            &Workload::Backend.spiffe_id(),
        )?;
        r.say(format!(
            "backend Envoy answered HTTP {status}: {}",
            body.trim()
        ));
        // Envoy's RBAC filter has one answer for a denied principal: 403 with this body.
        ensure!(
            status == 403 && body.contains("RBAC: access denied"),
            "the rogue was not denied by RBAC"
        );
        match lab.query_postgres_with(&dir) {
            Ok(out) => bail!("PostgreSQL let the rogue read orders: {out}"),
            Err(e) => {
                let e = format!("{e:#}");
                r.say(format!("PostgreSQL refused: {e}"));
                ensure!(
                    e.contains(&rogue),
                    "PostgreSQL's refusal does not name the rogue's SPIFFE ID"
                );
            }
        }
        Ok(())
    })();
    lab.remove_rogue()?;
    result
}

pub fn db_down(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let backend = lab.instance(Component::Backend);
    step("stop PostgreSQL");
    lab.stop(Component::Postgres)?;
    let result = (|| -> anyhow::Result<()> {
        let d = run_demo(lab)?;
        r.say(format!("{} ({} ms)", d.line(), d.took.as_millis()));
        r.figure("db_down_answer_ms", d.took.as_millis() as u64);
        r.checkpoint(
            "PostgreSQL is down: press Run Demo in the UI to see which link fails, and why",
        );
        let b2db = &d.result.backend_to_db;
        ensure!(
            d.result.frontend_to_backend.succeeded() && b2db.status == LinkStatus::Failed,
            "expected Frontend to Backend SUCCESS and Backend to DB FAILED"
        );
        ensure!(
            matches!(
                b2db.cause,
                Some(Cause::DbUnreachable | Cause::DbTimeout | Cause::DbTls | Cause::DbRefused)
            ) && b2db.reason.as_deref().is_some_and(|s| !s.is_empty()),
            "the database link failed for another cause, or without a reason: {b2db:?}"
        );
        ensure!(
            d.took < Duration::from_secs(2),
            "the UI took {} ms",
            d.took.as_millis()
        );
        Ok(())
    })();
    step("start PostgreSQL");
    lab.start(Component::Postgres)?;
    result?;
    let (d, took) = until(lab, Duration::from_secs(15), Demo::ok)?;
    r.say(format!("{} after {:.1} s", d.line(), took.as_secs_f64()));
    backend_not_restarted(lab, r, backend)
}

/// The backend is the instance it was (`before`): what a recovery must not need.
pub(super) fn backend_not_restarted(
    lab: &dyn Lab,
    r: &mut Report,
    before: Option<String>,
) -> anyhow::Result<()> {
    ensure!(
        lab.instance(Component::Backend) == before,
        "the backend was restarted"
    );
    r.say(format!(
        "backend not restarted ({})",
        before.unwrap_or_default()
    ));
    Ok(())
}

pub fn envoy_down(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    step("stop the backend's Envoy");
    lab.stop(Component::EnvoyBackend)?;
    let result = (|| -> anyhow::Result<()> {
        let d = run_demo(lab)?;
        r.say(d.line());
        ensure!(
            d.result.frontend_to_backend.failed_with(Cause::Unreachable),
            "expected Frontend to Backend FAILED with the backend unreachable: {:?}",
            d.result.frontend_to_backend
        );
        Ok(())
    })();
    step("start the backend's Envoy");
    lab.start(Component::EnvoyBackend)?;
    result?;
    let (d, took) = until(lab, Duration::from_secs(15), Demo::ok)?;
    r.say(format!("{} after {:.1} s", d.line(), took.as_secs_f64()));
    Ok(())
}

pub fn helper_down(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    shorten_ttl(lab, r, ttl)?;
    let result = (|| -> anyhow::Result<()> {
        step("stop the backend's spiffe-helper");
        lab.stop(Component::HelperBackend)?;
        let started = Instant::now();
        let readiness = loop {
            let (status, body) = lab.backend_readyz()?;
            if status != 200 {
                break body;
            }
            println!(
                "      /readyz: ready, SVID {} s left",
                body.svid_seconds_left.unwrap_or_default()
            );
            ensure!(
                started.elapsed() < Duration::from_secs(u64::from(ttl) + 15),
                "the backend stayed ready past its SVID's expiry"
            );
            std::thread::sleep(Duration::from_secs(2));
        };
        r.say(format!(
            "/readyz turned not ready after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            readiness.reason.clone().unwrap_or_default()
        ));
        ensure!(
            readiness.cause == Some(Cause::SvidExpired),
            "not ready for another cause than an expired SVID: {:?}",
            readiness.cause
        );
        let d = run_demo(lab)?;
        r.say(d.line());
        let refused_expired = d.result.backend_to_db.failed_with(Cause::SvidExpired);
        // On Kubernetes the failing readiness probe soon takes the pod out of its Service too.
        let out_of_service = lab.capabilities().readiness_gates_traffic
            && d.result.frontend_to_backend.failed_with(Cause::Unreachable);
        if out_of_service {
            r.say("the backend pod, not ready, was already out of its Service");
        }
        ensure!(
            refused_expired || out_of_service,
            "the backend still reaches PostgreSQL with an expired SVID"
        );
        step("start the backend's spiffe-helper");
        lab.start(Component::HelperBackend)?;
        let started = Instant::now();
        loop {
            let (status, body) = lab.backend_readyz()?;
            if status == 200 {
                r.say(format!(
                    "/readyz ready again after {:.1} s (SVID {} s left)",
                    started.elapsed().as_secs_f64(),
                    body.svid_seconds_left.unwrap_or_default()
                ));
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(20),
                "not ready again: {body:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    })();
    if lab.instance(Component::HelperBackend).is_none() {
        lab.start(Component::HelperBackend)?;
    }
    restore_ttl(lab)?;
    result
}
