//! The `inspector` scenario: the identity inspector page in real headless Chromium on the
//! running lab. The ledger's SVID and bundle as it holds them; a JWT-SVID minted for an audience
//! typed into the page; that token validated, then altered, then checked against another
//! audience, each verdict as the page shows it; the ledger's own chain validated as an
//! X.509-SVID. Screenshots go to `target/console/`.

use std::time::Duration;

use anyhow::{Context, ensure};
use browser::{Browser, Options};
use contract::Workload;

use super::Report;
use super::cases::step;
use crate::lab::Lab;

/// The audience the scenario types into the page.
const AUDIENCE: &str = "lab-inspector-scenario";

fn text(b: &Browser, css: &str) -> anyhow::Result<String> {
    Ok(b.text(&b.find(css)?)?)
}

/// Sets a form field's value as a person typing it would.
fn fill(b: &Browser, id: &str, value: &str) -> anyhow::Result<()> {
    let script = format!(
        "document.getElementById({}).value = {}; return true;",
        serde_json::to_string(id)?,
        serde_json::to_string(value)?
    );
    b.script(&script)?;
    Ok(())
}

/// Presses `button` and reads the verdict the page answers with: (valid, problem, words).
fn verdict(b: &Browser, button: &str) -> anyhow::Result<(bool, String, String)> {
    b.submit(&b.find(button)?, "#validation", Duration::from_secs(15))
        .with_context(|| {
            let err = b
                .find("#validation-error")
                .and_then(|e| b.text(&e))
                .unwrap_or_default();
            format!("the page shows no verdict {err}")
        })?;
    let v = b.script(
        "const v = document.getElementById('validation'); const r = document.getElementById('validation-reason'); return [v.getAttribute('data-valid'), v.getAttribute('data-problem'), v.querySelector('p').textContent, r ? r.textContent : ''];",
    )?;
    let verdict = v[2].as_str().unwrap_or_default().trim();
    let reason = v[3].as_str().unwrap_or_default().trim();
    Ok((
        v[0].as_str() == Some("true"),
        v[1].as_str().unwrap_or_default().to_owned(),
        if reason.is_empty() {
            verdict.to_owned()
        } else {
            format!("{verdict} — {reason}")
        },
    ))
}

pub fn inspector(lab: &mut dyn Lab, r: &mut Report) -> anyhow::Result<()> {
    let ledger = Workload::Ledger.spiffe_id();
    let dir = super::console::shots();
    let runtime = lab.label().split(' ').next().unwrap_or("lab").to_string();

    step("open the identity inspector in headless Chromium: the ledger's SVID and bundle");
    let b = Browser::start(Options {
        width: 1280,
        height: 800,
        javascript: true,
    })?;
    b.goto(&format!("{}/", lab.frontend_url()))?;
    b.submit(
        &b.find("#to-inspector")?,
        "#svid-id",
        Duration::from_secs(15),
    )
    .context("the inspector shows no SVID")?;
    let shown = text(&b, "#svid-id")?;
    ensure!(shown == ledger, "the inspector shows {shown}, not {ledger}");
    let certs = b.find_all("#svid .cert")?.len();
    let authorities = b.find_all("#bundle .cert")?.len();
    ensure!(certs >= 1, "no certificate in the SVID's chain");
    ensure!(authorities >= 1, "no authority in the bundle");
    r.say(format!(
        "the ledger's SVID {shown}: {certs} certificate(s) in its chain; the bundle holds {authorities} X.509 authorit{}",
        if authorities == 1 { "y" } else { "ies" }
    ));
    super::console::no_horizontal_scroll(&b)?;

    step(&format!("mint a JWT-SVID for the audience {AUDIENCE}"));
    fill(&b, "audience", AUDIENCE)?;
    b.submit(
        &b.find("#mint-button")?,
        "#minted-token",
        Duration::from_secs(15),
    )
    .context("no token minted")?;
    let token = text(&b, "#minted-token")?;
    let claims: serde_json::Value = serde_json::from_str(&text(&b, "#minted-claims")?)
        .context("the claims shown are not JSON")?;
    ensure!(
        claims["sub"] == ledger.as_str(),
        "the token's subject is {}, not {ledger}",
        claims["sub"]
    );
    ensure!(
        claims["aud"] == serde_json::json!([AUDIENCE]),
        "the token's audience is {}",
        claims["aud"]
    );
    r.say(format!(
        "minted: sub {}, aud {}, exp in {} s",
        claims["sub"],
        claims["aud"],
        claims["exp"].as_i64().unwrap_or(0) - contract::time::unix_now()
    ));
    b.save_screenshot(&dir.join(format!("{runtime}-inspector-minted-1280x800.png")))?;

    step("validate it; then altered; then for another audience");
    // The form comes back filled with the token just minted and its audience.
    let (valid, _, words) = verdict(&b, "#validate-jwt")?;
    ensure!(valid, "the minted token was not valid: {words}");
    let id = text(&b, "#validated-id")?;
    ensure!(id == ledger, "validated as {id}, not {ledger}");
    r.say(format!("as minted: {words}"));
    b.save_screenshot(&dir.join(format!("{runtime}-inspector-valid-1280x800.png")))?;

    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    ensure!(parts.len() == 3, "the token has {} parts", parts.len());
    // One character of the signature changed: a token tampered with in transit.
    let sig = parts[2].clone();
    let first = if sig.starts_with('A') { 'B' } else { 'A' };
    parts[2] = format!("{first}{}", &sig[1..]);
    fill(&b, "jwt-token", &parts.join("."))?;
    fill(&b, "jwt-audience", AUDIENCE)?;
    let (valid, problem, words) = verdict(&b, "#validate-jwt")?;
    ensure!(
        !valid && problem == "bad_signature",
        "an altered token read as valid={valid} ({problem}): {words}"
    );
    r.say(format!("altered signature: {words}"));
    b.save_screenshot(&dir.join(format!("{runtime}-inspector-tampered-1280x800.png")))?;

    fill(&b, "jwt-token", &token)?;
    fill(&b, "jwt-audience", "someone-else")?;
    let (valid, problem, words) = verdict(&b, "#validate-jwt")?;
    ensure!(
        !valid && problem == "wrong_audience" && words.contains(AUDIENCE),
        "a token for another audience read as valid={valid} ({problem}): {words}"
    );
    r.say(format!("another audience: {words}"));

    step("validate the ledger's own X.509-SVID chain");
    let (status, pem) = crate::probe::get(&format!("{}/inspector/svid.pem", lab.frontend_url()))?;
    ensure!(status == 200, "the PEM chain: HTTP {status}: {pem}");
    fill(&b, "x509-pem", &pem)?;
    let (valid, _, words) = verdict(&b, "#validate-x509")?;
    ensure!(valid, "the ledger's own chain was not valid: {words}");
    ensure!(
        text(&b, "#validated-id")? == ledger,
        "the chain validated as another ID"
    );
    r.say(format!("the ledger's chain: {words}"));
    super::console::no_horizontal_scroll(&b)?;
    Ok(())
}
