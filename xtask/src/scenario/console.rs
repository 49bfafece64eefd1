//! The `console` scenario: the UI as a person sees it, in real headless Chromium on the running
//! lab. Every hop of the drawing after Run Demo and after an RBAC denial, at both projector
//! sizes without sideways scrolling; a short-TTL rotation on the timeline within one refresh;
//! the page without JavaScript. Screenshots go to `target/console/`. Then the metrics `status`
//! prints, checked against the holders themselves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use browser::{Browser, Options};
use contract::page::View;
use contract::{Cause, Holder, LIVE_REFRESH_MS, Workload};

use super::Report;
use super::cases::{holder_serials, restore_ttl, shorten_ttl, step, until};
use crate::lab::Component;
use crate::lab::{Lab, Policy};
use crate::telemetry;

/// The projector sizes the page must fit.
const SIZES: [(u32, u32); 2] = [(1280, 800), (1920, 1080)];

/// Where the screenshots go.
pub(super) fn shots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::project_root().join("target"))
        .join("console")
}

fn open(lab: &dyn Lab, width: u32, height: u32, javascript: bool) -> anyhow::Result<Browser> {
    let b = Browser::start(Options {
        width,
        height,
        javascript,
    })?;
    b.goto(&format!("{}/", lab.frontend_url()))?;
    Ok(b)
}

/// The page as it is now, read in one script between two of its swaps (`contract::page`).
fn view(b: &Browser) -> anyhow::Result<View> {
    let v = b.script(contract::page::READ_VIEW)?;
    serde_json::from_value(v.clone()).with_context(|| format!("the page's view does not read: {v}"))
}

/// Each hop's state as the page shows it, in order; the drawing must agree with the list.
fn hops(v: &View) -> anyhow::Result<Vec<(String, String)>> {
    let out: Vec<(String, String)> = v
        .states()
        .map_err(|e| anyhow::anyhow!(e))?
        .into_iter()
        .map(|(k, s)| (k.to_owned(), s.to_owned()))
        .collect();
    ensure!(!out.is_empty(), "the page shows no hops");
    Ok(out)
}

/// The words of one hop in the list.
fn hop_text(v: &View, key: &str) -> anyhow::Result<String> {
    Ok(v.hop(key)
        .with_context(|| format!("the page shows no hop {key}"))?
        .text
        .clone())
}

fn line(hops: &[(String, String)]) -> String {
    hops.iter()
        .map(|(k, s)| format!("{k} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Presses Run Demo and waits for the page that answers.
fn press_run_demo(b: &Browser) -> anyhow::Result<()> {
    b.submit(
        &b.find("#run-demo")?,
        "#f2b-status",
        Duration::from_secs(15),
    )?;
    Ok(())
}

pub(super) fn no_horizontal_scroll(b: &Browser) -> anyhow::Result<(i64, i64)> {
    let v = b.script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
    )?;
    let (scroll, client) = (
        v[0].as_i64().unwrap_or(i64::MAX),
        v[1].as_i64().unwrap_or(0),
    );
    ensure!(
        scroll <= client,
        "the page scrolls sideways: {scroll} px of content in a {client} px wide window"
    );
    Ok((scroll, client))
}

pub fn console(lab: &mut dyn Lab, r: &mut Report, ttl: u32) -> anyhow::Result<()> {
    let dir = shots();
    let runtime = lab.label().split(' ').next().unwrap_or("lab").to_string();
    let frontend = Workload::Frontend.spiffe_id();
    let backend = Workload::Backend.spiffe_id();
    let postgres = Workload::Postgres.spiffe_id();
    let ledger = Workload::Ledger.spiffe_id();
    let passed = |hops: &[(String, String)]| {
        hops.len() == contract::Hop::ALL.len() && hops.iter().all(|(_, s)| s == "ok")
    };

    step("open the UI in headless Chromium at both projector sizes and press Run Demo");
    for (w, h) in SIZES {
        let b = open(lab, w, h, true)?;
        press_run_demo(&b)?;
        let v = view(&b)?;
        let hops = hops(&v)?;
        ensure!(passed(&hops), "not every hop passed: {}", line(&hops));
        let envoys = hop_text(&v, "envoy-envoy")?;
        let db = hop_text(&v, "backend-postgres")?;
        let to_ledger = hop_text(&v, "backend-ledger")?;
        ensure!(
            envoys.contains(&frontend) && envoys.contains(&backend),
            "the Envoy ⇒ Envoy hop does not show both proven IDs: {envoys}"
        );
        ensure!(
            to_ledger.contains(&backend) && to_ledger.contains(&ledger),
            "the backend ⇒ ledger hop does not show both proven IDs: {to_ledger}"
        );
        ensure!(
            db.contains(&backend) && db.contains(&postgres),
            "the backend ⇒ PostgreSQL hop does not show both proven IDs: {db}"
        );
        let (scroll, client) = no_horizontal_scroll(&b)?;
        let shot = dir.join(format!("{runtime}-run-demo-{w}x{h}.png"));
        b.save_screenshot(&shot)?;
        r.say(format!(
            "{w}×{h}: {} ; content {scroll} px in {client} px, no sideways scroll; {}",
            line(&hops),
            shot.display()
        ));
    }

    step("deny the frontend at the backend Envoy's RBAC, press Run Demo");
    lab.set_policy(Policy::Deny)?;
    let denied = denied_page(lab, r, &dir, &runtime);
    lab.set_policy(Policy::AllowFrontend)?;
    denied?;
    until(lab, lab.capabilities().policy_propagation, |d| d.ok())
        .context("the allow policy did not come back")?;

    step("without JavaScript: the page as served, and Run Demo as a plain form");
    let b = open(lab, 1280, 800, false)?;
    ensure!(
        view(&b)?
            .no_refresh_note
            .is_some_and(|n| n.contains("reload")),
        "the note for a page without script is missing"
    );
    press_run_demo(&b)?;
    let hops_nojs = hops(&view(&b)?)?;
    ensure!(
        passed(&hops_nojs),
        "without JavaScript, not every hop passed: {}",
        line(&hops_nojs)
    );
    let shot = dir.join(format!("{runtime}-no-javascript-1280x800.png"));
    b.save_screenshot(&shot)?;
    drop(b);
    r.say(format!(
        "without JavaScript: {}; {}",
        line(&hops_nojs),
        shot.display()
    ));

    let signed_before = signed(lab)?;
    shorten_ttl(lab, r, ttl)?;
    let watched = watch_rotations(lab, r, ttl, &dir, &runtime);
    restore_ttl(lab)?;
    watched?;
    metrics_agree(lab, r, ttl, signed_before)
}

/// X.509-SVIDs signed by every SPIRE server replica, from their telemetry.
fn signed(lab: &dyn Lab) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for (c, s) in telemetry::read(lab).spire {
        if matches!(c, Component::SpireServer(_)) {
            total += s
                .with_context(|| format!("{}'s telemetry", c.name()))?
                .total("spire_server_server_ca_sign_x509_svid");
        }
    }
    Ok(total)
}

/// What `status` prints from the metrics agrees with the holders as the lab reads them
/// directly: the same serials, the same seconds left, the rotations the timeline showed, and
/// SPIRE's servers counting what they signed.
fn metrics_agree(
    lab: &dyn Lab,
    r: &mut Report,
    ttl: u32,
    signed_before: f64,
) -> anyhow::Result<()> {
    step("the metrics `status` prints, against the holders themselves");
    // Back on the default TTL, every holder settles on a long-lived certificate; the frontend
    // reads its sources every SAMPLE seconds.
    let settled = |h: &BTreeMap<Holder, (String, Option<i64>)>| {
        h.values()
            .all(|(_, left)| left.is_some_and(|l| l > i64::from(ttl) * 3))
    };
    let started = Instant::now();
    let (holders, t) = loop {
        let holders = holder_serials(lab);
        let t = telemetry::read(lab);
        let agree = match (&t.frontend, &t.backend) {
            (Ok(f), Ok(b)) => {
                settled(&holders)
                    && [Holder::FrontendEnvoy, Holder::BackendFiles]
                        .iter()
                        .all(|h| f.get(h).map(|c| &c.serial) == holders.get(h).map(|(s, _)| s))
                    && holders.get(&Holder::BackendFiles).map(|(s, _)| s) == Some(&b.serial)
            }
            _ => false,
        };
        if agree || started.elapsed() > Duration::from_secs(30) {
            break (holders, t);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    t.print();
    let front = t.frontend.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let back = t.backend.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut checked = Vec::new();
    for (source, holder, cert) in [
        (
            "frontend",
            Holder::FrontendEnvoy,
            front.get(&Holder::FrontendEnvoy),
        ),
        (
            "frontend",
            Holder::BackendFiles,
            front.get(&Holder::BackendFiles),
        ),
        ("backend", Holder::BackendFiles, Some(back)),
    ] {
        let cert = cert.with_context(|| format!("the metrics name no certificate for {holder}"))?;
        let (serial, left) = holders
            .get(&holder)
            .with_context(|| format!("the lab cannot read {holder} itself"))?;
        ensure!(
            &cert.serial == serial,
            "{holder}: the metrics say serial {}, the holder has {serial}",
            cert.serial
        );
        let left = left.with_context(|| format!("{holder}: no expiry"))? as f64;
        ensure!(
            (cert.seconds_left - left).abs() <= 3.0,
            "{holder}: the metrics say {:.0} s left, the holder {left:.0} s",
            cert.seconds_left
        );
        ensure!(
            cert.rotations >= ROTATIONS as f64,
            "{holder}: the metrics count {} rotations, the timeline showed at least {ROTATIONS}",
            cert.rotations
        );
        checked.push(format!(
            "{source}'s {holder} {} {:.0} s left, {:.0} rotations",
            cert.serial, cert.seconds_left, cert.rotations
        ));
    }
    let (in_use, idle, max) = t.pool.context("the backend reports no database pool")?;
    ensure!(
        in_use + idle >= 1.0 && in_use + idle <= max,
        "the backend's pool: {in_use} in use, {idle} idle, at most {max}"
    );
    let signed_after = signed(lab)?;
    ensure!(
        signed_after > signed_before,
        "the SPIRE servers signed nothing during the rotations ({signed_before} before, {signed_after} after)"
    );
    r.say(format!(
        "metrics agree with the holders: {}; SPIRE signed {:.0} X.509-SVIDs meanwhile",
        checked.join("; "),
        signed_after - signed_before
    ));
    r.figure("svids_signed_during_console", signed_after - signed_before);
    Ok(())
}

/// After the deny is in force: the Envoy ⇒ Envoy hop failed on RBAC, the later ones not reached.
fn denied_page(
    lab: &dyn Lab,
    r: &mut Report,
    dir: &std::path::Path,
    runtime: &str,
) -> anyhow::Result<()> {
    until(lab, lab.capabilities().policy_propagation, |d| {
        d.result.frontend_to_backend.failed_with(Cause::RbacDenied)
    })
    .context("the deny policy did not take effect")?;
    for (w, h) in SIZES {
        let b = open(lab, w, h, true)?;
        press_run_demo(&b)?;
        let v = view(&b)?;
        let hops = hops(&v)?;
        // The Envoys' hop failed: the ones before it passed, none after it was reached.
        let want: Vec<&str> = ["ok", "ok", "failed"]
            .into_iter()
            .chain(std::iter::repeat_n(
                "not-reached",
                contract::Hop::ALL.len() - 3,
            ))
            .collect();
        ensure!(
            hops.iter()
                .map(|(_, s)| s.as_str())
                .eq(want.iter().copied()),
            "after an RBAC denial the hops read {}, not {want:?}",
            line(&hops)
        );
        let why = hop_text(&v, "envoy-envoy")?;
        ensure!(
            why.contains("RBAC"),
            "the failed hop does not say RBAC: {why}"
        );
        no_horizontal_scroll(&b)?;
        let shot = dir.join(format!("{runtime}-rbac-denied-{w}x{h}.png"));
        b.save_screenshot(&shot)?;
        r.say(format!("{w}×{h}: {}; {}", line(&hops), shot.display()));
    }
    Ok(())
}

/// The timeline's lane of each holder watched: those the frontend reads as they change. (Its
/// PostgreSQL lane is the certificate the backend saw on its latest new connection, which
/// changes when the backend connects anew, not when PostgreSQL rotates.)
fn lane(h: Holder) -> Option<&'static str> {
    matches!(h, Holder::FrontendEnvoy | Holder::BackendFiles).then(|| h.key())
}

/// Rotations to see on the timeline for each lane watched.
const ROTATIONS: usize = 2;

/// With the page open and never reloaded, each new serial the lab sees for a holder the page
/// draws must show on its timeline within one refresh of the lab seeing it.
fn watch_rotations(
    lab: &dyn Lab,
    r: &mut Report,
    ttl: u32,
    dir: &std::path::Path,
    runtime: &str,
) -> anyhow::Result<()> {
    step("watch the timeline, the page open and never reloaded, while SPIRE rotates");
    let (w, h) = SIZES[1];
    let b = open(lab, w, h, true)?;
    let url = b.url()?;
    let mut last: BTreeMap<Holder, String> = holder_serials(lab)
        .into_iter()
        .map(|(h, (s, _))| (h, s))
        .collect();
    // Within one refresh, and the backend reading its files each second and the lab its own
    // sources every few hundred milliseconds.
    let within = Duration::from_millis(LIVE_REFRESH_MS) + Duration::from_secs(2);
    let mut waiting: Vec<(Holder, String, Instant)> = Vec::new();
    let mut shown: Vec<(Holder, Duration)> = Vec::new();
    let started = Instant::now();
    let enough = |shown: &[(Holder, Duration)]| {
        [Holder::FrontendEnvoy, Holder::BackendFiles]
            .iter()
            .all(|h| shown.iter().filter(|(s, _)| s == h).count() >= ROTATIONS)
    };
    while !enough(&shown) && started.elapsed() < Duration::from_secs(3 * u64::from(ttl) + 10) {
        for (holder, (serial, _)) in holder_serials(lab) {
            if lane(holder).is_some() && last.get(&holder) != Some(&serial) {
                last.insert(holder, serial.clone());
                waiting.push((holder, serial, Instant::now()));
            }
        }
        let mut still = Vec::new();
        for (holder, serial, since) in waiting.drain(..) {
            let css = format!(
                "#lane-{} .mark[data-serial=\"{serial}\"]",
                lane(holder).unwrap_or_default()
            );
            if !b.find_all(&css)?.is_empty() {
                let took = since.elapsed();
                println!(
                    "      {:>5.1} s  {holder}: {serial} on the timeline {:.1} s after the lab saw it",
                    started.elapsed().as_secs_f64(),
                    took.as_secs_f64()
                );
                ensure!(
                    took <= within,
                    "{holder}'s serial {serial} showed on the timeline {:.1} s after the lab saw it, more than one refresh ({:.1} s)",
                    took.as_secs_f64(),
                    within.as_secs_f64()
                );
                shown.push((holder, took));
            } else if since.elapsed() > within {
                bail!(
                    "{holder}'s serial {serial} did not show on the timeline within {:.1} s",
                    within.as_secs_f64()
                );
            } else {
                still.push((holder, serial, since));
            }
        }
        waiting = still;
        std::thread::sleep(Duration::from_millis(200));
    }
    ensure!(
        enough(&shown),
        "fewer than {ROTATIONS} rotations a lane seen in {:.0} s: {shown:?}",
        started.elapsed().as_secs_f64()
    );
    ensure!(b.url()? == url, "the page was navigated away from {url}");
    let marks = b.find_all("#timeline .mark")?.len();
    let shot = dir.join(format!("{runtime}-timeline-{w}x{h}.png"));
    b.save_screenshot(&shot)?;
    let slowest = shown.iter().map(|(_, d)| *d).max().unwrap_or_default();
    r.say(format!(
        "{} rotations on the timeline, the slowest {:.1} s after the lab saw it (one refresh: {:.1} s); {marks} marks drawn; {}",
        shown.len(),
        slowest.as_secs_f64(),
        LIVE_REFRESH_MS as f64 / 1000.0,
        shot.display()
    ));
    r.figure("timeline_slowest_seconds", slowest.as_secs_f64());
    Ok(())
}
