//! The one page, a live console: server-rendered HTML complete without JavaScript, large enough
//! for a projector. A drawing of the path with each hop in the last Run Demo's colours and the
//! SPIFFE IDs proven on it, the holders' certificates with countdowns, and a rotation timeline.
//! A few lines of script tick the countdowns and swap in `/live` every few seconds.

use std::collections::BTreeMap;
use std::fmt::Write;

use contract::{Holder, Hop, IdentityPanel, Link, LinkStatus, RunDemo, Workload};

use crate::console::{Mark, REFRESH_MS, WINDOW_MS};

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(crate) const STYLE: &str = "
body{font-family:system-ui,sans-serif;font-size:18px;margin:1rem auto;max-width:92rem;color:#1b1b1b;padding:0 1.5rem}
h1{font-size:1.8rem;margin:.2rem 0}
h2{font-size:1.3rem;margin:1.2rem 0 .4rem}
.sub{color:#555;margin:0 0 .8rem}
.bar{display:flex;gap:1.5rem;align-items:center;flex-wrap:wrap}
button{font-size:1.3rem;padding:.6rem 2rem;border-radius:.5rem;border:0;background:#1f5fbf;color:#fff;cursor:pointer}
svg{width:100%;height:auto;display:block}
svg text{font-family:system-ui,sans-serif}
.link{display:flex;gap:1rem;align-items:baseline;margin:.5rem 0;font-size:1.2rem}
.status{font-weight:700;padding:.1rem .7rem;border-radius:.3rem;color:#fff}
.SUCCESS{background:#1e7d32}.FAILED{background:#b3261e}.UNKNOWN{background:#6b6b6b}
.reason{color:#333;font-size:1rem;margin:.2rem 0 .8rem 0}
table{border-collapse:collapse;width:100%;margin:.6rem 0;table-layout:fixed}
td,th{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
td code{word-break:break-all}
code{font-size:.9rem}
.muted{color:#666}
#hops{list-style:none;padding:0;margin:.4rem 0}
#hops li{margin:.3rem 0;display:grid;grid-template-columns:7.5rem 12rem minmax(0,1fr);gap:.7rem;align-items:baseline}
#hops code{word-break:break-all}
.state{font-weight:700;text-align:center;border-radius:.3rem;color:#fff;padding:0 .4rem}
.ok{background:#1e7d32}.failed{background:#b3261e}.not-reached,.unknown{background:#6b6b6b}
.stale{color:#b3261e}
.cols{display:grid;grid-template-columns:minmax(0,1fr);column-gap:2.5rem}
@media (min-width:1500px){.cols{grid-template-columns:minmax(0,1fr) minmax(0,1fr)}}
";

/// A small script: ticks the countdowns each second and swaps in a new view every few
/// seconds. Without it the page is complete as served.
fn script() -> String {
    format!(
        r#"<script>
(function(){{
  var live=document.getElementById('live'), skew=0;
  if(!live||!window.fetch)return;
  function clock(){{var c=document.getElementById('clock');if(c)skew=(+c.getAttribute('data-now'))-Date.now();}}
  function fmt(s){{return s<=0?'expired':s<120?s+' s':s<7200?Math.floor(s/60)+' min':Math.floor(s/3600)+' h';}}
  function tick(){{
    var now=Date.now()+skew;
    document.querySelectorAll('[data-expires-ms]').forEach(function(e){{
      e.textContent=fmt(Math.round((+e.getAttribute('data-expires-ms')-now)/1000));}});
  }}
  function refresh(){{
    fetch('/live',{{cache:'no-store'}}).then(function(r){{if(!r.ok)throw new Error('HTTP '+r.status);return r.text();}})
      .then(function(h){{live.innerHTML=h;clock();tick();}})
      .catch(function(e){{var u=document.getElementById('updated');if(u){{u.className='stale';u.textContent='the frontend did not answer ('+e.message+'); trying again';}}}})
      .then(function(){{setTimeout(refresh,{REFRESH_MS});}});
  }}
  clock();tick();setInterval(tick,1000);setTimeout(refresh,{REFRESH_MS});
  var n=document.getElementById('no-refresh');if(n)n.remove();
}})();
</script>"#
    )
}

/// What one view of the page shows.
pub struct View<'a> {
    pub result: Option<&'a RunDemo>,
    pub panel: &'a IdentityPanel,
    pub lanes: &'a BTreeMap<Holder, Vec<Mark>>,
    pub now_ms: i64,
}

/// The whole page.
pub fn render(view: &View) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>SPIFFE/SPIRE zero-trust lab</title><style>{STYLE}</style></head><body>
<h1>SPIFFE/SPIRE zero-trust lab</h1>
<p class="sub">frontend &rarr; Envoy &rArr; mTLS (SDS) &rArr; Envoy &rarr; backend &rArr; mTLS (spiffe-helper) &rArr; PostgreSQL</p>
<div class="bar"><form method="post" action="/run-demo"><button id="run-demo" type="submit">Run Demo</button></form>
<a id="to-inspector" href="/inspector">Identity inspector →</a>
<span class="muted" id="no-refresh">This page shows the moment it was served: reload it to see a newer one.</span></div>
<div id="live">{}</div>{}</body></html>"#,
        live(view),
        script()
    );
    out
}

/// The part of the page that changes: served alone at `/live` for the page's script.
pub fn live(view: &View) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<div id="clock" data-now="{}" hidden></div>"#,
        view.now_ms
    );
    let states = hop_states(view.result);
    out.push_str(r#"<section id="topology"><h2>The path, as the last Run Demo took it</h2>"#);
    topology(&mut out, &states, view.result);
    out.push_str("</section>");
    out.push_str(r#"<div class="cols"><div>"#);
    hop_list(&mut out, &states, view.result);
    match view.result {
        Some(r) => result(&mut out, r),
        None => out.push_str(r#"<section id="result"><h2>Last Run Demo</h2><p class="muted">None since the frontend started: press Run Demo.</p></section>"#),
    }
    out.push_str("</div><div>");
    identities(&mut out, view.panel, view.now_ms);
    timeline(&mut out, view.panel, view.lanes, view.now_ms);
    out.push_str("</div></div>");
    let _ = write!(
        out,
        r#"<p class="muted" id="updated">Served at {} UTC; with JavaScript the page asks for a new view every {} s.</p>"#,
        clock_time(view.now_ms),
        REFRESH_MS / 1000
    );
    out
}

/// How a hop fared on the last Run Demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HopState {
    /// No Run Demo since the frontend started.
    Unknown,
    Ok,
    Failed(String),
    /// An earlier hop failed.
    NotReached,
}

impl HopState {
    fn class(&self) -> &'static str {
        match self {
            HopState::Unknown => "unknown",
            HopState::Ok => "ok",
            HopState::Failed(_) => "failed",
            HopState::NotReached => "not-reached",
        }
    }

    fn colour(&self) -> &'static str {
        match self {
            HopState::Ok => "#1e7d32",
            HopState::Failed(_) => "#b3261e",
            HopState::Unknown | HopState::NotReached => "#8a8a8a",
        }
    }

    fn words(&self) -> &'static str {
        match self {
            HopState::Unknown => "no Run Demo yet",
            HopState::Ok => "passed",
            HopState::Failed(_) => "FAILED",
            HopState::NotReached => "not reached",
        }
    }
}

/// Each hop's state from the last Run Demo: the hops before the one that failed passed, the
/// ones after it were not reached. A failure without a known hop fails its whole link.
pub fn hop_states(result: Option<&RunDemo>) -> Vec<(Hop, HopState)> {
    let Some(r) = result else {
        return Hop::ALL
            .iter()
            .map(|&h| {
                let s = if h == Hop::BrowserFrontend {
                    HopState::Ok
                } else {
                    HopState::Unknown
                };
                (h, s)
            })
            .collect();
    };
    let f2b = &r.frontend_to_backend;
    let b2db = &r.backend_to_db;
    let reason = |l: &contract::Link| l.reason.clone().unwrap_or_else(|| "failed".into());
    let f2b_hops = [Hop::FrontendEnvoy, Hop::EnvoyEnvoy, Hop::EnvoyBackend];
    Hop::ALL
        .iter()
        .map(|&h| {
            // The ledger and OpenBao: each after the orders, each on its own.
            let side = match h {
                Hop::BackendLedger => Some(r.backend_to_ledger.as_ref()),
                Hop::BackendOpenBao => Some(r.backend_to_openbao.as_ref()),
                _ => None,
            };
            let state = match (r.failed_at, side) {
                // Not asked (the bench's `ledger=skip`): that hop was never tried.
                (_, Some(None)) => HopState::Unknown,
                (_, Some(Some(link))) if f2b.succeeded() && b2db.succeeded() => match link.status {
                    LinkStatus::Success => HopState::Ok,
                    LinkStatus::Failed => HopState::Failed(reason(link)),
                    LinkStatus::Unknown => HopState::NotReached,
                },
                (_, Some(Some(_))) => HopState::NotReached,
                (Some(at), _) if h < at => HopState::Ok,
                (Some(at), _) if h == at => HopState::Failed(match at {
                    Hop::BackendPostgres => reason(b2db),
                    _ => reason(f2b),
                }),
                (Some(_), _) => HopState::NotReached,
                (None, _) if h == Hop::BrowserFrontend => HopState::Ok,
                (None, _) if f2b_hops.contains(&h) => match f2b.status {
                    LinkStatus::Success => HopState::Ok,
                    _ => HopState::Failed(reason(f2b)),
                },
                (None, _) => match (f2b.status, b2db.status) {
                    (LinkStatus::Success, LinkStatus::Success) => HopState::Ok,
                    (LinkStatus::Success, _) => HopState::Failed(reason(b2db)),
                    _ => HopState::NotReached,
                },
            };
            (h, state)
        })
        .collect()
}

/// The last path segment of a workload's SPIFFE ID (`sa/frontend`), for the drawing.
fn short_id(id: &str) -> String {
    match id.rsplit_once("/sa/") {
        Some((_, sa)) => format!("sa/{sa}"),
        None => id.to_string(),
    }
}

/// The hop's pattern, and the SPIFFE IDs proven on it (client, server) when the last Run Demo
/// proved them.
fn proven(h: Hop, r: Option<&RunDemo>) -> (&'static str, Option<String>, Option<String>) {
    // What each link proved stands on its own: a ledger refusal does not unprove PostgreSQL.
    let ok = r.filter(|r| r.frontend_to_backend.succeeded() && r.backend_to_db.succeeded());
    let ledger_ok = ok.filter(|r| r.backend_to_ledger.as_ref().is_some_and(Link::succeeded));
    let openbao_ok = ok
        .filter(|r| r.backend_to_openbao.as_ref().is_some_and(Link::succeeded))
        .and_then(|r| r.openbao.as_ref());
    match h {
        Hop::BrowserFrontend => ("HTTP: the UI", None, None),
        Hop::FrontendEnvoy => ("plain HTTP on the pod's loopback", None, None),
        // The frontend's Envoy accepts only this server ID (its exact SAN match); a call the
        // backend's Envoy forwarded with the caller's ID went through that check.
        Hop::EnvoyEnvoy => (
            "mTLS, SVIDs over SDS; RBAC on the caller's ID",
            ok.and_then(|r| r.caller_seen_by_backend.clone()),
            ok.filter(|r| r.caller_seen_by_backend.is_some())
                .map(|_| Workload::Backend.spiffe_id()),
        ),
        Hop::EnvoyBackend => (
            "the pod's loopback; the caller's ID in x-forwarded-client-cert",
            ok.and_then(|r| r.caller_seen_by_backend.clone()),
            None,
        ),
        Hop::BackendPostgres => (
            "mTLS, spiffe-helper's files; the SPIFFE ID checked at login",
            ok.and_then(|r| r.backend_spiffe_id.clone()),
            ok.and_then(|r| r.db_server_spiffe_id.clone()),
        ),
        Hop::BackendLedger => (
            "mTLS, the backend's files against the ledger's own SVID from the Workload API; the ledger checks the caller's ID",
            ledger_ok.and_then(|r| r.backend_spiffe_id.clone()),
            ledger_ok.and_then(|r| r.ledger_spiffe_id.clone()),
        ),
        Hop::BackendOpenBao => (
            "TLS to OpenBao, checked by its SPIFFE ID; login with a JWT-SVID (audience openbao) for a short-lived PostgreSQL user",
            openbao_ok.and_then(|b| b.logged_in_as.clone()),
            openbao_ok.and_then(|b| b.openbao_spiffe_id.clone()),
        ),
    }
}

/// The drawing: boxes for the browser and each process, dashed boxes for the pods, an arrow
/// per hop in its state's colour, the pattern above it and the proven IDs below.
fn topology(out: &mut String, states: &[(Hop, HopState)], r: Option<&RunDemo>) {
    // Six boxes of 110 across 1200: narrow gaps for the plain hops, wide ones for mTLS.
    const W: i32 = 110;
    let gaps = [40, 40, 210, 40, 210];
    let mut xs = vec![0];
    for g in gaps {
        let last = *xs.last().unwrap_or(&0);
        xs.push(last + W + g);
    }
    let nodes = [
        ("Browser", "you"),
        ("frontend", "the UI"),
        ("Envoy", "frontend's"),
        ("Envoy", "backend's, RBAC"),
        ("backend", "orders API"),
        ("PostgreSQL", "cert auth"),
    ];
    let (top, h) = (54, 64);
    let mid = top + h / 2;
    // The ledger and OpenBao, a second row under PostgreSQL and the backend's Envoy: the
    // backend calls both after the orders.
    let (lx, ly) = (xs[5], top + h + 80);
    let ox = xs[3];
    out.push_str(r##"<svg id="topology-svg" viewBox="0 26 1200 254" role="img" aria-label="The path of a Run Demo, each hop coloured by the last result"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="14" markerHeight="14" orient="auto"><path d="M0,0L10,5L0,10z" fill="context-stroke"/></marker></defs>"##);
    let _ = write!(
        out,
        r##"<rect x="{}" y="{}" width="{}" height="{}" rx="8" fill="none" stroke="#9aa7b8" stroke-dasharray="6 4"/><text x="{}" y="{}" font-size="13" fill="#5a6b80">pod ledger · no sidecar</text><rect x="{lx}" y="{ly}" width="{W}" height="{h}" rx="6" fill="#eef3fb" stroke="#1f5fbf"/><text x="{}" y="{}" font-size="16" font-weight="700" text-anchor="middle">ledger</text><text x="{}" y="{}" font-size="12" fill="#444" text-anchor="middle">Workload API</text>"##,
        lx - 8,
        ly - 22,
        W + 16,
        h + 30,
        lx - 2,
        ly - 8,
        lx + W / 2,
        ly + 28,
        lx + W / 2,
        ly + 48
    );
    let _ = write!(
        out,
        r##"<rect x="{}" y="{}" width="{}" height="{}" rx="8" fill="none" stroke="#9aa7b8" stroke-dasharray="6 4"/><text x="{}" y="{}" font-size="13" fill="#5a6b80">pod openbao · helper</text><rect x="{ox}" y="{ly}" width="{W}" height="{h}" rx="6" fill="#eef3fb" stroke="#1f5fbf"/><text x="{}" y="{}" font-size="16" font-weight="700" text-anchor="middle">OpenBao</text><text x="{}" y="{}" font-size="12" fill="#444" text-anchor="middle">short-lived users</text>"##,
        ox - 8,
        ly - 22,
        W + 16,
        h + 30,
        ox - 2,
        ly - 8,
        ox + W / 2,
        ly + 28,
        ox + W / 2,
        ly + 48
    );
    for (label, from, to) in [
        ("pod frontend", 1, 2),
        ("pod backend", 3, 4),
        ("pod postgres", 5, 5),
    ] {
        let (x0, x1) = (xs[from] - 8, xs[to] + W + 8);
        let _ = write!(
            out,
            r##"<rect x="{x0}" y="{}" width="{}" height="{}" rx="8" fill="none" stroke="#9aa7b8" stroke-dasharray="6 4"/><text x="{}" y="{}" font-size="13" fill="#5a6b80">{label}</text>"##,
            top - 22,
            (x1 - x0).min(1200 - x0),
            h + 30,
            x0 + 6,
            top - 8
        );
    }
    for (i, (name, sub)) in nodes.iter().enumerate() {
        let x = xs[i];
        let _ = write!(
            out,
            r##"<rect x="{x}" y="{top}" width="{W}" height="{h}" rx="6" fill="#eef3fb" stroke="#1f5fbf"/><text x="{}" y="{}" font-size="16" font-weight="700" text-anchor="middle">{name}</text><text x="{}" y="{}" font-size="12" fill="#444" text-anchor="middle">{sub}</text>"##,
            x + W / 2,
            top + 28,
            x + W / 2,
            top + 48
        );
    }
    for (i, (hop, state)) in states.iter().enumerate() {
        // Every hop goes right to the next box, but the ledger's (down from the backend, then
        // right to the ledger) and OpenBao's (down from the backend, then left to OpenBao).
        let ledger = *hop == Hop::BackendLedger;
        let openbao = *hop == Hop::BackendOpenBao;
        let (x0, x1) = if ledger {
            (xs[4] + W / 2 + 10, lx)
        } else if openbao {
            (xs[4] + W / 2 - 10, ox + W)
        } else {
            (xs[i] + W, xs[i + 1])
        };
        let (cx, y) = if ledger {
            ((x0 + x1) / 2 + 20, ly + h / 2)
        } else if openbao {
            ((x0 + x1) / 2 - 20, ly + h / 2)
        } else {
            ((x0 + x1) / 2, mid)
        };
        let path = if ledger {
            format!("M{x0},{} V{y} H{}", top + h, x1 - 2)
        } else if openbao {
            format!("M{x0},{} V{y} H{}", top + h, x1 + 2)
        } else {
            format!("M{x0},{mid} H{}", x1 - 2)
        };
        let ledger = ledger || openbao;
        let (_, client, server) = proven(*hop, r);
        let pattern = match hop {
            Hop::EnvoyEnvoy => "mTLS · SDS",
            Hop::BackendPostgres => "mTLS · files",
            Hop::BackendLedger => "mTLS · files ⇒ Workload API",
            Hop::BackendOpenBao => "JWT-SVID ⇒ lease",
            Hop::BrowserFrontend => "HTTP",
            _ => "local",
        };
        let dash = if matches!(state, HopState::NotReached | HopState::Unknown) {
            r#" stroke-dasharray="5 4""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r##"<g id="edge-{key}" class="edge" data-state="{class}"><title>{title}</title><path d="{path}" fill="none" stroke="{colour}" stroke-width="5"{dash} marker-end="url(#arrow)"/><text x="{cx}" y="{}" font-size="13" text-anchor="middle" fill="#222">{pattern}</text>"##,
            y - 10,
            key = hop.key(),
            class = state.class(),
            colour = state.colour(),
            title = escape(&format!("{hop:?}: {}", state.words())),
        );
        let ids = match (&client, &server) {
            (Some(c), Some(s)) => Some(format!("{} → {}", short_id(c), short_id(s))),
            _ => None,
        };
        if let Some(ids) = ids {
            let _ = write!(
                out,
                r##"<text x="{cx}" y="{}" font-size="12" text-anchor="middle" fill="#1e4f8a">{}</text>"##,
                y + 20,
                escape(&ids)
            );
        }
        let mark = match state {
            HopState::Ok => "✓",
            HopState::Failed(_) => "✗",
            HopState::NotReached | HopState::Unknown => "–",
        };
        let _ = write!(
            out,
            r##"<text x="{cx}" y="{}" font-size="22" font-weight="700" text-anchor="middle" fill="{}">{mark}</text></g>"##,
            if ledger { y + 44 } else { top + h + 36 },
            state.colour()
        );
    }
    out.push_str("</svg>");
}

/// The same hops in words: state, pattern, proven IDs, and why a hop failed.
fn hop_list(out: &mut String, states: &[(Hop, HopState)], r: Option<&RunDemo>) {
    out.push_str(r#"<ol id="hops">"#);
    for (hop, state) in states {
        let (pattern, client, server) = proven(*hop, r);
        let name = match hop {
            Hop::BrowserFrontend => "browser → frontend",
            Hop::FrontendEnvoy => "frontend → its Envoy",
            Hop::EnvoyEnvoy => "Envoy ⇒ Envoy",
            Hop::EnvoyBackend => "backend's Envoy → backend",
            Hop::BackendPostgres => "backend ⇒ PostgreSQL",
            Hop::BackendLedger => "backend ⇒ ledger",
            Hop::BackendOpenBao => "backend ⇒ OpenBao ⇒ PostgreSQL",
        };
        let mut detail = escape(pattern);
        if let Some(c) = client {
            let _ = write!(detail, r#"; client <code class="id">{}</code>"#, escape(&c));
        }
        if let Some(s) = server {
            let _ = write!(detail, r#", server <code class="id">{}</code>"#, escape(&s));
        }
        if let HopState::Failed(why) = state {
            let _ = write!(detail, r#"<br><span class="reason">{}</span>"#, escape(why));
        }
        let _ = write!(
            out,
            r#"<li id="hop-{}" data-state="{}"><span class="state {}">{}</span><span>{name}</span><span>{detail}</span></li>"#,
            hop.key(),
            state.class(),
            state.class(),
            state.words()
        );
    }
    out.push_str("</ol>");
}

fn link_html(out: &mut String, id: &str, label: &str, link: &Link) {
    let status = match link.status {
        LinkStatus::Success => "SUCCESS",
        LinkStatus::Failed => "FAILED",
        LinkStatus::Unknown => "UNKNOWN",
    };
    let _ = write!(
        out,
        r#"<div class="link"><span>{label}:</span> <span id="{id}-status" class="status {status}">{status}</span></div>"#
    );
    if let Some(reason) = &link.reason {
        let _ = write!(
            out,
            r#"<p id="{id}-reason" class="reason">{}</p>"#,
            escape(reason)
        );
    }
}

/// The last Run Demo: both links, who the backend saw, the orders.
fn result(out: &mut String, r: &RunDemo) {
    out.push_str(r#"<section id="result"><h2>Last Run Demo</h2>"#);
    link_html(out, "f2b", "Frontend to Backend", &r.frontend_to_backend);
    link_html(out, "b2db", "Backend to DB", &r.backend_to_db);
    if let Some(ledger) = &r.backend_to_ledger {
        link_html(out, "b2l", "Backend to Ledger", ledger);
        if let Some(entry) = r.ledger_entry {
            let _ = write!(
                out,
                r#"<p class="muted">Recorded as entry <code id="ledger-entry">{entry}</code> in the ledger{}.</p>"#,
                r.ledger_spiffe_id
                    .as_deref()
                    .map(|id| format!(", which proved <code>{}</code>", escape(id)))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(openbao) = &r.backend_to_openbao {
        link_html(out, "b2o", "Backend to OpenBao", openbao);
        if let Some(b) = &r.openbao {
            broker_html(out, b);
        }
        if !r.reports.is_empty() {
            out.push_str(r#"<table id="reports"><tr><th>Status</th><th>Orders</th></tr>"#);
            for row in &r.reports {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(&row.status),
                    row.orders
                );
            }
            out.push_str("</table>");
        }
    }
    if let Some(caller) = &r.caller_seen_by_backend {
        let _ = write!(
            out,
            r#"<p class="muted">The backend saw the caller <code id="caller">{}</code>"#,
            escape(caller)
        );
        if let Some(db) = &r.db_server_spiffe_id {
            let _ = write!(out, r#"; PostgreSQL proved <code>{}</code>"#, escape(db));
        }
        out.push_str(".</p>");
    }
    if !r.orders.is_empty() {
        out.push_str(
            r#"<table id="orders"><tr><th>Order</th><th>Description</th><th>Status</th></tr>"#,
        );
        for o in &r.orders {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                o.id,
                escape(&o.description),
                escape(&o.status)
            );
        }
        out.push_str("</table>");
    }
    let _ = write!(
        out,
        r#"<p class="muted">Took {} ms.</p></section>"#,
        r.elapsed_ms
    );
}

/// What the backend holds from OpenBao: who logged in, the database user and its lease.
fn broker_html(out: &mut String, b: &contract::openbao::Broker) {
    let code = |v: &Option<String>| {
        v.as_deref()
            .map(|v| format!("<code>{}</code>", escape(v)))
            .unwrap_or_else(|| "none".into())
    };
    let _ = write!(
        out,
        r#"<p class="muted" id="openbao-broker">Logged in to OpenBao as {} (OpenBao proved {}); database user <code id="openbao-db-user">{}</code>, its lease {} left of {} s (the token {}); {} logins, {} credential switches; demo secret {}."#,
        code(&b.logged_in_as),
        code(&b.openbao_spiffe_id),
        escape(b.db_user.as_deref().unwrap_or("none")),
        seconds(b.lease_seconds_left),
        b.lease_duration_s.unwrap_or_default(),
        seconds(b.token_seconds_left),
        b.logins,
        b.rotations,
        code(&b.api_token_masked),
    );
    if let Some(p) = &b.problem {
        let _ = write!(out, r#" <span class="reason">{}</span>"#, escape(p));
    }
    out.push_str("</p>");
}

fn seconds(s: Option<i64>) -> String {
    match s {
        Some(s) if s <= 0 => "expired".into(),
        Some(s) if s < 120 => format!("{s} s"),
        Some(s) if s < 7200 => format!("{} min", s / 60),
        Some(s) => format!("{} h", s / 3600),
        None => "unknown".into(),
    }
}

/// What the page calls each holder.
fn label(h: Holder) -> &'static str {
    match h {
        Holder::FrontendEnvoy => "frontend Envoy (SDS)",
        Holder::BackendEnvoy => "backend Envoy (SDS)",
        Holder::BackendFiles => "backend (spiffe-helper files)",
        Holder::PostgresServer => "PostgreSQL server (as the backend saw it)",
        Holder::Ledger => "ledger (Workload API, in memory)",
    }
}

/// Who holds which certificate now, each with a countdown to its expiry.
fn identities(out: &mut String, panel: &IdentityPanel, now_ms: i64) {
    out.push_str(r#"<section id="identities"><h2>Identities</h2><table><colgroup><col style="width:24%"><col style="width:38%"><col style="width:26%"><col style="width:12%"></colgroup><tr><th>Holder</th><th>SPIFFE ID</th><th>Serial</th><th>Expires in</th></tr>"#);
    for h in &panel.holders {
        let id = match (&h.spiffe_id, &h.note) {
            (Some(id), _) => format!("<code>{}</code>", escape(id)),
            (None, Some(note)) => {
                format!(r#"unknown <span class="muted">({})</span>"#, escape(note))
            }
            (None, None) => "unknown".into(),
        };
        let expires = match h.seconds_left {
            Some(s) => format!(
                r#"<span class="countdown" data-expires-ms="{}">{}</span>"#,
                now_ms + s * 1000,
                seconds(Some(s))
            ),
            None => seconds(None),
        };
        let _ = write!(
            out,
            r#"<tr id="holder-{}"><td>{}</td><td>{id}</td><td><code>{}</code></td><td>{expires}</td></tr>"#,
            h.holder.key(),
            label(h.holder),
            escape(h.serial.as_deref().unwrap_or("unknown")),
        );
    }
    out.push_str("</table></section>");
}

/// hh:mm:ss of a Unix time in milliseconds, UTC.
fn clock_time(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// One lane per holder, a mark at each serial the frontend saw begin, over the last minutes.
fn timeline(
    out: &mut String,
    panel: &IdentityPanel,
    lanes: &BTreeMap<Holder, Vec<Mark>>,
    now_ms: i64,
) {
    const LEFT: i64 = 170;
    const RIGHT: i64 = 745;
    const LANE: i64 = 46;
    let holders: Vec<Holder> = panel.holders.iter().map(|h| h.holder).collect();
    let height = 40 + LANE * holders.len() as i64;
    let x = |ms: i64| LEFT + (RIGHT - LEFT) * (ms - (now_ms - WINDOW_MS)).max(0) / WINDOW_MS;
    let _ = write!(
        out,
        r##"<section id="timeline"><h2>Rotation timeline: the last {} minutes</h2><svg id="timeline-svg" viewBox="0 0 760 {height}" role="img" aria-label="Each holder's serials over the last minutes; a mark per new serial">"##,
        WINDOW_MS / 60_000
    );
    for m in 0..=WINDOW_MS / 60_000 {
        let at = now_ms - WINDOW_MS + m * 60_000;
        let tx = x(at);
        let text = if m == WINDOW_MS / 60_000 {
            "now".to_string()
        } else {
            format!("−{} min", WINDOW_MS / 60_000 - m)
        };
        let _ = write!(
            out,
            r##"<line x1="{tx}" y1="8" x2="{tx}" y2="{}" stroke="#e2e2e2"/><text x="{tx}" y="{}" font-size="12" text-anchor="middle" fill="#666">{text}</text>"##,
            height - 24,
            height - 8
        );
    }
    for (i, holder) in holders.iter().enumerate() {
        let y = 30 + LANE * i as i64;
        let key = holder.key();
        let marks = lanes.get(holder).map(Vec::as_slice).unwrap_or_default();
        let _ = write!(
            out,
            r##"<g class="lane" id="lane-{key}"><text x="0" y="{}" font-size="14">{}</text><line x1="{LEFT}" y1="{y}" x2="{RIGHT}" y2="{y}" stroke="#9aa7b8" stroke-width="2"/>"##,
            y + 5,
            holder
        );
        // A serial's first characters above its mark, the newest first, where they fit.
        let mut labelled = vec![false; marks.len()];
        let mut free_left_of = i64::MAX;
        for (i, m) in marks.iter().enumerate().rev() {
            if x(m.seen_ms) + 18 <= free_left_of {
                labelled[i] = true;
                free_left_of = x(m.seen_ms) - 18;
            }
        }
        for (m, labelled) in marks.iter().zip(labelled) {
            let mx = x(m.seen_ms);
            let seen = clock_time(m.seen_ms);
            let (fill, what) = if m.first {
                ("#8a8a8a", "first seen")
            } else {
                ("#1f5fbf", "new serial")
            };
            let _ = write!(
                out,
                r##"<g class="mark" data-serial="{serial}" data-seen-ms="{}"><title>{what} {serial} at {seen} UTC</title><circle cx="{mx}" cy="{y}" r="7" fill="{fill}"/><text x="{mx}" y="{}" font-size="12" text-anchor="middle" fill="#333">{}</text></g>"##,
                m.seen_ms,
                y - 11,
                if labelled {
                    escape(&m.serial.chars().take(4).collect::<String>())
                } else {
                    String::new()
                },
                serial = escape(&m.serial),
            );
        }
        out.push_str("</g>");
    }
    out.push_str("</svg></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(r: Option<&RunDemo>) -> Vec<&'static str> {
        hop_states(r).iter().map(|(_, s)| s.class()).collect()
    }

    #[test]
    fn each_hop_takes_its_state_from_where_the_run_demo_failed() {
        assert_eq!(
            states(None),
            [
                "ok", "unknown", "unknown", "unknown", "unknown", "unknown", "unknown"
            ]
        );
        let denied = crate::classify(
            crate::Upstream::Answered {
                status: 403,
                body: "backend Envoy: RBAC: access denied".into(),
            },
            "e",
        );
        assert_eq!(
            states(Some(&denied)),
            [
                "ok",
                "ok",
                "failed",
                "not-reached",
                "not-reached",
                "unknown",
                "unknown"
            ]
        );
        let (_, state) = &hop_states(Some(&denied))[2];
        assert!(matches!(state, HopState::Failed(why) if why.contains("RBAC")));
        let db_down = crate::classify(
            crate::Upstream::Answered {
                status: 503,
                body: r#"{"error":"db_unreachable","reason":"down"}"#.into(),
            },
            "e",
        );
        assert_eq!(
            states(Some(&db_down)),
            ["ok", "ok", "ok", "ok", "failed", "unknown", "unknown"]
        );
        let timed_out = crate::classify(crate::Upstream::TimedOut(5000), "e");
        assert_eq!(
            states(Some(&timed_out)),
            [
                "ok",
                "failed",
                "failed",
                "failed",
                "not-reached",
                "unknown",
                "unknown"
            ]
        );
        // Asked to record: the ledger after the orders, not reached when they failed.
        let mut recorded_db_down = db_down.clone();
        recorded_db_down.backend_to_ledger = Some(contract::Link::not_reached("x"));
        assert_eq!(
            states(Some(&recorded_db_down)),
            ["ok", "ok", "ok", "ok", "failed", "not-reached", "unknown"]
        );
        let mut ledger_refused = crate::classify(
            crate::Upstream::Answered {
                status: 200,
                body: r#"{"orders":[],"caller":null,"backend":null,"db_server":null,"ledger":{"link":{"status":"FAILED","cause":"ledger_tls","reason":"refused our SVID"},"entry":null,"ledger_spiffe_id":null}}"#.into(),
            },
            "e",
        );
        assert_eq!(
            states(Some(&ledger_refused)),
            ["ok", "ok", "ok", "ok", "ok", "failed", "unknown"]
        );
        ledger_refused.failed_at = None;
        let (_, state) = &hop_states(Some(&ledger_refused))[5];
        assert!(matches!(state, HopState::Failed(why) if why.contains("refused our SVID")));
        // OpenBao: its own link after the orders, failed while the ledger passed.
        let openbao_down = crate::classify(
            crate::Upstream::Answered {
                status: 200,
                body: r#"{"orders":[],"caller":null,"backend":null,"db_server":null,"ledger":{"link":{"status":"SUCCESS"},"entry":null,"ledger_spiffe_id":null},"reports":{"link":{"status":"FAILED","cause":"lease_expired","reason":"the lease ended; OpenBao is unreachable"},"rows":[],"broker":{"logins":1,"rotations":0}}}"#.into(),
            },
            "e",
        );
        assert_eq!(openbao_down.failed_at, Some(Hop::BackendOpenBao));
        assert_eq!(
            states(Some(&openbao_down)),
            ["ok", "ok", "ok", "ok", "ok", "ok", "failed"]
        );
        let (_, state) = &hop_states(Some(&openbao_down))[6];
        assert!(matches!(state, HopState::Failed(why) if why.contains("OpenBao is unreachable")));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<b a="1">&'"#),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;"
        );
    }
}
