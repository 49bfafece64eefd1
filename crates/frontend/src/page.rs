//! The one page: server-rendered HTML, no JavaScript, large enough for a projector.

use std::fmt::Write;

use contract::{Holder, IdentityPanel, Link, LinkStatus, RunDemo};

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

const STYLE: &str = "
body{font-family:system-ui,sans-serif;font-size:20px;margin:2rem auto;max-width:60rem;color:#1b1b1b;padding:0 1rem}
h1{font-size:2rem;margin-bottom:.2rem}
.sub{color:#555;margin-top:0}
button{font-size:1.4rem;padding:.7rem 2rem;border-radius:.5rem;border:0;background:#1f5fbf;color:#fff;cursor:pointer}
.link{display:flex;gap:1rem;align-items:baseline;margin:.6rem 0;font-size:1.3rem}
.status{font-weight:700;padding:.1rem .7rem;border-radius:.3rem;color:#fff}
.SUCCESS{background:#1e7d32}.FAILED{background:#b3261e}.UNKNOWN{background:#6b6b6b}
.reason{color:#333;font-size:1.05rem;margin:.2rem 0 1rem 0}
table{border-collapse:collapse;width:100%;margin:.8rem 0}
td,th{border-bottom:1px solid #ddd;padding:.4rem .6rem;text-align:left}
code{font-size:.95rem}
.muted{color:#666}
";

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
    }
}

pub fn render(result: Option<&RunDemo>, panel: &IdentityPanel) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>SPIFFE/SPIRE zero-trust lab</title><style>{STYLE}</style></head><body>
<h1>SPIFFE/SPIRE zero-trust lab</h1>
<p class="sub">frontend &rarr; Envoy &rArr; mTLS (SDS) &rArr; Envoy &rarr; backend &rArr; mTLS (spiffe-helper) &rArr; PostgreSQL</p>
<form method="post" action="/run-demo"><button id="run-demo" type="submit">Run Demo</button></form>"#
    );
    if let Some(r) = result {
        out.push_str(r#"<section id="result"><h2>Result</h2>"#);
        link_html(
            &mut out,
            "f2b",
            "Frontend to Backend",
            &r.frontend_to_backend,
        );
        link_html(&mut out, "b2db", "Backend to DB", &r.backend_to_db);
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
    out.push_str(r#"<section id="identities"><h2>Identities</h2><table><tr><th>Holder</th><th>SPIFFE ID</th><th>Serial</th><th>Expires in</th></tr>"#);
    for h in &panel.holders {
        let id = match (&h.spiffe_id, &h.note) {
            (Some(id), _) => format!("<code>{}</code>", escape(id)),
            (None, Some(note)) => {
                format!(r#"unknown <span class="muted">({})</span>"#, escape(note))
            }
            (None, None) => "unknown".into(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{id}</td><td><code>{}</code></td><td>{}</td></tr>",
            label(h.holder),
            escape(h.serial.as_deref().unwrap_or("unknown")),
            seconds(h.seconds_left)
        );
    }
    out.push_str("</table></section></body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape(r#"<b a="1">&'"#),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;"
        );
    }
}
