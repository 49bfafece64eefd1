//! The broker pattern's scenarios: `openbao` (the backend's JWT-SVID login, the role refusing
//! another audience and another workload, credentials switching under load with no failed
//! request, every expired user gone from PostgreSQL) and `openbao-down` (the reports fail with a
//! reason while the orders go on, and come back without a restart).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use contract::{Cause, Workload};

use super::Report;
use super::cases::{backend_not_restarted, step, until};
use crate::demo::{Demo, Ledger, Load};
use crate::lab::{Component, Lab};

/// Lease times short enough to see several switches in a scenario: a renewal at half the lease,
/// a switch when a renewal comes back short (the max TTL reached), about every 9 s.
const SHORT_TTL: &str = "6s";
const SHORT_MAX_TTL: &str = "12s";
/// The lab's own (`configure.sh`, written at `up`).
const LAB_TTL: &str = "60s";
const LAB_MAX_TTL: &str = "120s";

/// How long the load runs while the credentials switch.
const LOAD_FOR: Duration = Duration::from_secs(38);

fn run_demo(lab: &dyn Lab) -> anyhow::Result<Demo> {
    crate::demo::run_demo(&lab.frontend_url())
}

fn reports_ok(d: &Demo) -> bool {
    d.result
        .backend_to_openbao
        .as_ref()
        .is_some_and(|l| l.succeeded())
        && !d.result.reports.is_empty()
}

/// The reports' role with these lease times.
fn set_ttl(lab: &dyn Lab, ttl: &str, max: &str) -> anyhow::Result<()> {
    lab.openbao(
        &[
            "write",
            "database/roles/reports",
            &format!("default_ttl={ttl}"),
            &format!("max_ttl={max}"),
        ],
        None,
    )
    .map(drop)
}

/// Short leases from now on: the role's TTLs shortened and every lease revoked (OpenBao ends
/// their sessions and drops their users); the backend's next reports take a new one.
fn short_leases(lab: &dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    set_ttl(lab, SHORT_TTL, SHORT_MAX_TTL)?;
    lab.openbao(
        &[
            "lease",
            "revoke",
            "-sync",
            "-prefix",
            "database/creds/reports",
        ],
        None,
    )?;
    let d = run_demo(lab)?;
    let b = d.result.openbao.clone().unwrap_or_default();
    ensure!(
        reports_ok(&d),
        "after its lease was revoked the backend did not take a new one within the request: {}",
        d.line()
    );
    r.say(format!(
        "role reports now {SHORT_TTL} (max {SHORT_MAX_TTL}); every lease revoked; the next Run Demo read the reports as a new user {} ({} s lease)",
        b.db_user.unwrap_or_default(),
        b.lease_duration_s.unwrap_or_default()
    ));
    Ok(())
}

/// A JWT-SVID minted by the SPIRE server for `spiffe_id` and `audience`.
fn mint_jwt(lab: &dyn Lab, spiffe_id: &str, audience: &str) -> anyhow::Result<String> {
    let out = lab.spire_server(
        None,
        &["jwt", "mint"],
        &[
            "-spiffeID",
            spiffe_id,
            "-audience",
            audience,
            "-ttl",
            "120s",
        ],
    )?;
    Ok(out.trim().to_owned())
}

/// OpenBao's login with `jwt` on the backend's role: the token's policies, or the refusal.
fn login(lab: &dyn Lab, jwt: &str) -> anyhow::Result<String> {
    lab.openbao(
        &[
            "write",
            "-field=token_policies",
            "auth/jwt/login",
            "role=backend",
            "jwt=-",
        ],
        Some(jwt),
    )
}

pub fn openbao(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    step("Run Demo: the backend logs in to OpenBao with its JWT-SVID and reads the reports");
    let d = run_demo(lab)?;
    r.say(d.line());
    ensure!(reports_ok(&d), "the reports failed: {}", d.line());
    let b = d.result.openbao.clone().unwrap_or_default();
    ensure!(
        b.logged_in_as.as_deref() == Some(Workload::Backend.spiffe_id().as_str()),
        "logged in as {:?}, not as the backend",
        b.logged_in_as
    );
    ensure!(
        b.openbao_spiffe_id.as_deref() == Some(Workload::OpenBao.spiffe_id().as_str()),
        "OpenBao presented {:?}",
        b.openbao_spiffe_id
    );
    let user = b.db_user.clone().unwrap_or_default();
    ensure!(user.starts_with("v-"), "a database user {user:?}");
    let counted: i64 = d.result.reports.iter().map(|row| row.orders).sum();
    ensure!(
        counted == d.result.orders.len() as i64,
        "the reports count {counted} orders, the backend read {}",
        d.result.orders.len()
    );
    if let Some(ms) = b.last_login_ms {
        r.figure("openbao_login_ms", ms);
    }
    r.say(format!(
        "logged in as {} in {} ms (OpenBao proved {}); database user {user}, lease {} s left; reports {}; demo secret {}",
        b.logged_in_as.unwrap_or_default(),
        b.last_login_ms.unwrap_or_default(),
        b.openbao_spiffe_id.unwrap_or_default(),
        b.lease_seconds_left.unwrap_or_default(),
        d.result
            .reports
            .iter()
            .map(|row| format!("{} {}", row.status, row.orders))
            .collect::<Vec<_>>()
            .join(", "),
        b.api_token_masked.unwrap_or_default(),
    ));
    r.figure("openbao_run_demo_ms", d.took.as_millis() as u64);

    step("the role refuses a JWT-SVID for another audience, and one of another workload");
    let backend = Workload::Backend.spiffe_id();
    let attempts = [
        (
            "the backend's JWT-SVID for audience \"someone-else\"",
            mint_jwt(lab, &backend, "someone-else")?,
            "aud",
        ),
        (
            "the frontend's JWT-SVID for audience \"openbao\"",
            mint_jwt(
                lab,
                &Workload::Frontend.spiffe_id(),
                contract::ids::OPENBAO_AUDIENCE,
            )?,
            "sub",
        ),
    ];
    for (what, jwt, claim) in &attempts {
        match login(lab, jwt) {
            Ok(policies) => anyhow::bail!("{what} logged in (policies {})", policies.trim()),
            Err(e) => {
                let e = format!("{e:#}");
                ensure!(
                    e.contains(claim),
                    "{what} was refused, but not for its {claim} claim: {e}"
                );
                let why = e.lines().rev().find(|l| l.contains(claim)).unwrap_or(&e);
                r.say(format!(
                    "{what}: refused — {}",
                    why.trim().trim_start_matches("* ")
                ));
            }
        }
    }
    let control = login(
        lab,
        &mint_jwt(lab, &backend, contract::ids::OPENBAO_AUDIENCE)?,
    )
    .context("the control: the backend's JWT-SVID for audience \"openbao\"")?;
    r.say(format!(
        "control: the backend's own JWT-SVID for audience \"openbao\" logs in (policies {})",
        control.trim()
    ));

    step(&format!(
        "credentials switch under load: leases of {SHORT_TTL} (max {SHORT_MAX_TTL}) for {} s",
        LOAD_FOR.as_secs()
    ));
    let outcome = switches_under_load(lab, r);
    step(&format!(
        "role reports back to {LAB_TTL} (max {LAB_MAX_TTL})"
    ));
    set_ttl(lab, LAB_TTL, LAB_MAX_TTL)?;
    outcome
}

fn switches_under_load(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    short_leases(lab, r)?;
    let before = run_demo(lab)?.result.openbao.unwrap_or_default();
    let load = Load::start(
        &lab.frontend_url(),
        Ledger::Record,
        2,
        Duration::from_millis(50),
    );
    // The users the backend reads as, in the order it takes them up.
    let mut users: Vec<String> = before.db_user.into_iter().collect();
    let started = Instant::now();
    while started.elapsed() < LOAD_FOR {
        std::thread::sleep(Duration::from_millis(700));
        if let Ok(d) = run_demo(lab)
            && let Some(u) = d.result.openbao.and_then(|b| b.db_user)
            && users.last() != Some(&u)
        {
            users.push(u);
        }
    }
    let tally = load.finish();
    let after = run_demo(lab)?.result.openbao.unwrap_or_default();
    let switches = after.rotations.saturating_sub(before.rotations);
    r.say(format!(
        "{} Run Demos under load, {} failed; {switches} credential switches; users in turn: {}",
        tally.ok + tally.failed,
        tally.failed,
        users.join(", ")
    ));
    r.figure("openbao_requests_during_switches", tally.ok + tally.failed);
    r.figure("openbao_failed_during_switches", tally.failed);
    r.figure("openbao_switches", switches);
    ensure!(
        tally.failed == 0,
        "{} Run Demos failed while the credentials switched; first: {}",
        tally.failed,
        tally.failures.first().cloned().unwrap_or_default()
    );
    ensure!(
        switches >= 3,
        "only {switches} credential switches in {} s",
        LOAD_FOR.as_secs()
    );
    // At most the current user and the one before it (still inside its max TTL) may exist.
    let roles: BTreeSet<String> = lab
        .postgres_admin("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")?
        .lines()
        .map(str::to_owned)
        .collect();
    let ended = users.len().saturating_sub(2);
    let left: Vec<&String> = users[..ended]
        .iter()
        .filter(|u| roles.contains(*u))
        .collect();
    ensure!(
        left.is_empty(),
        "users whose leases ended are still in pg_roles: {left:?}"
    );
    r.say(format!(
        "pg_roles: {} of the {} users seen are gone (their leases ended, OpenBao dropped them); left: {}",
        ended,
        users.len(),
        roles.iter().cloned().collect::<Vec<_>>().join(", ")
    ));
    Ok(())
}

pub fn openbao_down(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let backend = lab.instance(Component::Backend);
    step(&format!(
        "short leases ({SHORT_TTL}, max {SHORT_MAX_TTL}), so one ends soon"
    ));
    short_leases(lab, r)?;
    step("stop OpenBao");
    lab.stop(Component::OpenBao)?;
    let outcome = (|| -> anyhow::Result<()> {
        // The lease outlives OpenBao for a while: the reports go on until it ends.
        let (d, took) = until(lab, Duration::from_secs(30), |d| {
            d.result
                .backend_to_openbao
                .as_ref()
                .is_some_and(|l| !l.succeeded())
        })?;
        r.say(format!(
            "{} — {:.1} s after OpenBao stopped",
            d.line(),
            took.as_secs_f64()
        ));
        r.checkpoint("OpenBao is down: Run Demo shows the reports failing, the orders still read");
        let link = d
            .result
            .backend_to_openbao
            .clone()
            .unwrap_or_else(|| contract::Link::not_reached("no link"));
        ensure!(
            matches!(
                link.cause,
                Some(Cause::LeaseExpired | Cause::OpenBaoUnreachable)
            ) && link
                .reason
                .as_deref()
                .is_some_and(|s| s.contains("OpenBao")),
            "the reports failed for another cause, or without naming OpenBao: {link:?}"
        );
        ensure!(
            d.result.frontend_to_backend.succeeded()
                && d.result.backend_to_db.succeeded()
                && !d.result.orders.is_empty(),
            "the orders failed too: {}",
            d.line()
        );
        r.say(format!(
            "orders still read ({} orders); the reports: {}",
            d.result.orders.len(),
            link.reason.unwrap_or_default()
        ));
        Ok(())
    })();
    step("start OpenBao (unsealed and configured again: leases back to the lab's)");
    lab.start(Component::OpenBao)?;
    outcome?;
    let (d, took) = until(lab, Duration::from_secs(20), reports_ok)?;
    r.say(format!(
        "{} — reports back {:.1} s after OpenBao started, as {}",
        d.line(),
        took.as_secs_f64(),
        d.result.openbao.and_then(|b| b.db_user).unwrap_or_default()
    ));
    r.figure("openbao_recovery_s", took.as_secs_f64());
    backend_not_restarted(lab, r, backend)
}
