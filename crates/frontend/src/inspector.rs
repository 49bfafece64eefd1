//! The identity inspector: the ledger's view of identity, read through the frontend's Envoy
//! (`/ledger/…`, mTLS to the ledger). Its X.509-SVID decoded with the chain, the trust bundle, a
//! JWT-SVID minted for an audience the presenter types (header and claims shown), and forms that
//! validate a JWT-SVID or an X.509-SVID chain, green when valid, the precise reason when not.
//! Server-rendered forms: complete without JavaScript.

use std::fmt::Write;

use axum::Form;
use axum::extract::State;
use axum::response::Html;
use contract::ledger::{
    BundleView, CertInfo, LedgerError, MintedJwt, SvidView, ValidateJwt, ValidateX509, Validation,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::page::{STYLE, escape};

/// What the presenter asked for on this view, and what came back.
#[derive(Default)]
struct Asked {
    audience: Option<String>,
    minted: Option<Result<MintedJwt, String>>,
    token: Option<String>,
    jwt_audience: Option<String>,
    pem: Option<String>,
    validation: Option<(&'static str, Result<Validation, String>)>,
}

fn ledger_url(s: &AppState, path: &str) -> String {
    format!(
        "{}/ledger{path}",
        s.config.backend_url.trim_end_matches('/')
    )
}

/// The ledger's answer, or why there is none, in words.
async fn answer<T: DeserializeOwned>(res: reqwest::Result<reqwest::Response>) -> Result<T, String> {
    let res =
        res.map_err(|e| format!("the ledger did not answer through the frontend's Envoy: {e}"))?;
    let status = res.status().as_u16();
    let body = res
        .text()
        .await
        .map_err(|e| format!("reading the ledger's answer: {e}"))?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&body)
            .map_err(|e| format!("the ledger answered something unreadable: {e}"));
    }
    Err(match serde_json::from_str::<LedgerError>(&body) {
        Ok(e) => format!("the ledger said no (HTTP {status}): {}", e.reason),
        // Envoy's own replies are prefixed with who they are (its local_reply_config).
        Err(_) => format!(
            "HTTP {status}: {}",
            body.trim().chars().take(300).collect::<String>()
        ),
    })
}

async fn get<T: DeserializeOwned>(s: &AppState, path: &str) -> Result<T, String> {
    answer(s.http.get(ledger_url(s, path)).send().await).await
}

async fn post<T: DeserializeOwned>(
    s: &AppState,
    path: &str,
    body: &impl serde::Serialize,
) -> Result<T, String> {
    answer(s.http.post(ledger_url(s, path)).json(body).send().await).await
}

pub async fn page(State(s): State<AppState>) -> Html<String> {
    Html(render(&s, Asked::default()).await)
}

#[derive(Deserialize)]
pub struct MintForm {
    audience: String,
}

pub async fn mint(State(s): State<AppState>, Form(f): Form<MintForm>) -> Html<String> {
    let audience = f.audience.trim().to_owned();
    let query = format!("/jwt?audience={}", urlencode(&audience));
    let minted = get::<MintedJwt>(&s, &query).await;
    let token = minted.as_ref().ok().map(|m| m.token.clone());
    Html(
        render(
            &s,
            Asked {
                jwt_audience: Some(audience.clone()),
                audience: Some(audience),
                token,
                minted: Some(minted),
                ..Asked::default()
            },
        )
        .await,
    )
}

#[derive(Deserialize)]
pub struct JwtForm {
    token: String,
    audience: String,
}

pub async fn validate_jwt(State(s): State<AppState>, Form(f): Form<JwtForm>) -> Html<String> {
    let body = ValidateJwt {
        token: f.token.trim().to_owned(),
        audience: f.audience.trim().to_owned(),
    };
    let v = post::<Validation>(&s, "/validate/jwt", &body).await;
    Html(
        render(
            &s,
            Asked {
                token: Some(body.token),
                jwt_audience: Some(body.audience),
                validation: Some(("JWT-SVID", v)),
                ..Asked::default()
            },
        )
        .await,
    )
}

#[derive(Deserialize)]
pub struct PemForm {
    pem: String,
}

pub async fn validate_x509(State(s): State<AppState>, Form(f): Form<PemForm>) -> Html<String> {
    let body = ValidateX509 { pem: f.pem };
    let v = post::<Validation>(&s, "/validate/x509", &body).await;
    Html(
        render(
            &s,
            Asked {
                pem: Some(body.pem),
                validation: Some(("X.509-SVID", v)),
                ..Asked::default()
            },
        )
        .await,
    )
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn problem_key(v: &Validation) -> String {
    v.problem
        .and_then(|p| serde_json::to_value(p).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn cert_rows(out: &mut String, certs: &[CertInfo]) {
    out.push_str(r#"<table class="certs"><colgroup><col style="width:16%"><col></colgroup>"#);
    for (i, c) in certs.iter().enumerate() {
        let role = if i == 0 && !c.is_ca { "leaf" } else { "CA" };
        let _ = write!(
            out,
            r#"<tr class="cert" data-serial="{serial}"><th colspan="2">{role} · serial <code>{serial}</code></th></tr>
<tr><td>SPIFFE ID</td><td>{uris}</td></tr><tr><td>subject</td><td><code>{subject}</code></td></tr><tr><td>issuer</td><td><code>{issuer}</code></td></tr>
<tr><td>valid</td><td>{nb} → {na} <span class="muted">({left})</span></td></tr><tr><td>key</td><td>{key}{dns}</td></tr>"#,
            serial = escape(&c.serial),
            uris = if c.uri_sans.is_empty() {
                "none".to_owned()
            } else {
                c.uri_sans
                    .iter()
                    .map(|u| format!("<code>{}</code>", escape(u)))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            subject = escape(&c.subject),
            issuer = escape(&c.issuer),
            nb = escape(&c.not_before),
            na = escape(&c.not_after),
            left = if c.seconds_left > 0 {
                format!("{} s left", c.seconds_left)
            } else {
                "expired".to_owned()
            },
            key = escape(&c.key_type),
            dns = if c.dns_sans.is_empty() {
                String::new()
            } else {
                format!("; DNS {}", escape(&c.dns_sans.join(", ")))
            },
        );
    }
    out.push_str("</table>");
}

fn failed(out: &mut String, id: &str, e: &str) {
    let _ = write!(out, r#"<p id="{id}" class="reason">{}</p>"#, escape(e));
}

async fn render(s: &AppState, asked: Asked) -> String {
    let (svid, bundle) = tokio::join!(get::<SvidView>(s, "/svid"), get::<BundleView>(s, "/bundle"));
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>Identity inspector · SPIFFE/SPIRE zero-trust lab</title><style>{STYLE}
textarea,input[type=text]{{width:100%;box-sizing:border-box;font-family:ui-monospace,monospace;font-size:.9rem;padding:.4rem}}
pre{{white-space:pre-wrap;word-break:break-all;font-size:.9rem;background:#f4f6fa;padding:.6rem;border-radius:.3rem}}
.verdict{{font-weight:700;padding:.3rem .8rem;border-radius:.3rem;color:#fff;display:inline-block}}
.valid{{background:#1e7d32}}.invalid{{background:#b3261e}}
</style></head><body>
<h1>Identity inspector</h1>
<p class="sub">The ledger gets its identity from the SPIRE Workload API itself (no sidecar, no files) and answers here through the frontend's Envoy, over mTLS that proves both sides' SPIFFE IDs. <a href="/">← the live console</a></p>
<div class="cols"><div>"#
    );
    out.push_str(r#"<section id="svid"><h2>The ledger's X.509-SVID</h2>"#);
    match &svid {
        Ok(v) => {
            let _ = write!(
                out,
                r#"<p>SPIFFE ID <code id="svid-id">{}</code>; rotated in memory <span id="svid-rotations">{}</span> time(s) since it started. <a href="/inspector/svid.pem">PEM chain</a></p>"#,
                escape(&v.spiffe_id),
                v.rotations
            );
            cert_rows(&mut out, &v.chain);
        }
        Err(e) => failed(&mut out, "svid-error", e),
    }
    out.push_str("</section>");
    out.push_str(r#"<section id="bundle"><h2>The trust bundle</h2>"#);
    match &bundle {
        Ok(b) => {
            let _ = write!(
                out,
                r#"<p>Trust domain <code>{}</code>: {} X.509 authorit{} (one per SPIRE server replica).</p>"#,
                escape(&b.trust_domain),
                b.x509_authorities.len(),
                if b.x509_authorities.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            );
            cert_rows(&mut out, &b.x509_authorities);
            let pretty = serde_json::to_string_pretty(&b.spiffe_bundle).unwrap_or_default();
            let _ = write!(
                out,
                r#"<details><summary>SPIFFE bundle format (JWKS)</summary><pre id="spiffe-bundle">{}</pre></details>"#,
                escape(&pretty)
            );
        }
        Err(e) => failed(&mut out, "bundle-error", e),
    }
    out.push_str("</section></div><div>");

    let audience = asked
        .audience
        .as_deref()
        .unwrap_or(contract::ledger::DEFAULT_AUDIENCE);
    let _ = write!(
        out,
        r#"<section id="mint"><h2>Mint a JWT-SVID</h2>
<form id="mint-form" method="post" action="/inspector/mint#mint"><label for="audience">Audience</label>
<input type="text" id="audience" name="audience" value="{}" maxlength="256" required>
<p><button id="mint-button" type="submit">Mint</button></p></form>"#,
        escape(audience)
    );
    if let Some(minted) = &asked.minted {
        match minted {
            Ok(m) => {
                let _ = write!(
                    out,
                    r#"<div id="minted"><p>The Workload API signed this for the ledger, audience <code>{}</code>:</p><pre id="minted-token">{}</pre><p>Header</p><pre id="minted-header">{}</pre><p>Claims</p><pre id="minted-claims">{}</pre></div>"#,
                    escape(audience),
                    escape(&m.token),
                    escape(&serde_json::to_string_pretty(&m.header).unwrap_or_default()),
                    escape(&serde_json::to_string_pretty(&m.claims).unwrap_or_default()),
                );
            }
            Err(e) => failed(&mut out, "mint-error", e),
        }
    }
    out.push_str("</section>");

    out.push_str(r#"<section id="validate"><h2>Validate a JWT-SVID or an X.509-SVID</h2>"#);
    if let Some((what, v)) = &asked.validation {
        match v {
            Ok(v) => {
                let _ = write!(
                    out,
                    r#"<div id="validation" data-valid="{}" data-problem="{}"><p><span class="verdict {}">{what} {}</span> {}</p>{}</div>"#,
                    v.valid,
                    problem_key(v),
                    if v.valid { "valid" } else { "invalid" },
                    if v.valid { "valid" } else { "NOT valid" },
                    match (&v.spiffe_id, v.valid) {
                        (Some(id), true) =>
                            format!("for <code id=\"validated-id\">{}</code>", escape(id)),
                        (Some(id), false) => format!("(it claims <code>{}</code>)", escape(id)),
                        (None, _) => String::new(),
                    },
                    v.reason
                        .as_deref()
                        .map(|r| format!(
                            r#"<p id="validation-reason" class="reason">{}</p>"#,
                            escape(r)
                        ))
                        .unwrap_or_default(),
                );
            }
            Err(e) => failed(&mut out, "validation-error", e),
        }
    }
    let _ = write!(
        out,
        r#"<form id="validate-jwt-form" method="post" action="/inspector/validate-jwt#validation"><label for="jwt-token">Token</label>
<textarea id="jwt-token" name="token" rows="5" required>{}</textarea>
<label for="jwt-audience">Expected audience</label><input type="text" id="jwt-audience" name="audience" value="{}" maxlength="256" required>
<p><button id="validate-jwt" type="submit">Validate JWT-SVID</button></p></form>
<form id="validate-x509-form" method="post" action="/inspector/validate-x509#validation"><label for="x509-pem">PEM, leaf first</label>
<textarea id="x509-pem" name="pem" rows="5" required>{}</textarea>
<p><button id="validate-x509" type="submit">Validate X.509-SVID</button></p></form>"#,
        escape(asked.token.as_deref().unwrap_or("")),
        escape(asked.jwt_audience.as_deref().unwrap_or(audience)),
        escape(asked.pem.as_deref().unwrap_or("")),
    );
    out.push_str("</section></div></div></body></html>");
    out
}

/// The ledger's PEM chain as it serves it (certificates only; its key never leaves it).
pub async fn svid_pem(State(s): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match s.http.get(ledger_url(&s, "/svid.pem")).send().await {
        Ok(res) if res.status().is_success() => {
            let body = res.text().await.unwrap_or_default();
            (
                [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
                body,
            )
                .into_response()
        }
        Ok(res) => (
            axum::http::StatusCode::BAD_GATEWAY,
            format!("the ledger answered HTTP {}", res.status().as_u16()),
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::BAD_GATEWAY,
            format!("the ledger did not answer: {e}"),
        )
            .into_response(),
    }
}
