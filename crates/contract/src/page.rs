//! The frontend's page as programs read it (the browser tests, the `console` scenario). The page
//! swaps its view in every few seconds, so reading many elements one WebDriver call at a time
//! could straddle two views, or hold an element that is gone; [`READ_VIEW`] reads all of it in
//! one script, which runs between two swaps.

use serde::Deserialize;

/// A script for WebDriver's "execute script": returns the view as JSON ([`View`]).
pub const READ_VIEW: &str = r#"
const state = id => { const e = document.getElementById(id); return e ? e.getAttribute('data-state') : null; };
const text = id => { const e = document.getElementById(id); return e ? e.textContent : null; };
return {
  hops: [...document.querySelectorAll('#hops li')].map(li => {
    const key = li.id.replace(/^hop-/, '');
    return { key, state: li.getAttribute('data-state'), drawn: state('edge-' + key), text: li.textContent };
  }),
  frontend_to_backend: text('f2b-status'),
  backend_to_db: text('b2db-status'),
  backend_to_ledger: text('b2l-status'),
  orders: document.querySelectorAll('#orders tr').length,
  no_refresh_note: text('no-refresh'),
};
"#;

/// One hop as the page shows it: in the list (`state`) and in the drawing (`drawn`).
#[derive(Clone, Debug, Deserialize)]
pub struct HopView {
    pub key: String,
    pub state: Option<String>,
    pub drawn: Option<String>,
    /// The list item's words: the pattern, the proven IDs, why it failed.
    pub text: String,
}

/// What [`READ_VIEW`] returns.
#[derive(Clone, Debug, Deserialize)]
pub struct View {
    pub hops: Vec<HopView>,
    /// `SUCCESS`, `FAILED` or `UNKNOWN` after a Run Demo; none before.
    pub frontend_to_backend: Option<String>,
    pub backend_to_db: Option<String>,
    /// None when the Run Demo did not ask to record in the ledger.
    #[serde(default)]
    pub backend_to_ledger: Option<String>,
    /// Rows of the orders table, its header included.
    pub orders: usize,
    /// The note shown to a browser without JavaScript (the page's script removes it).
    pub no_refresh_note: Option<String>,
}

impl View {
    /// Each hop's key and state, when the drawing agrees with the list everywhere.
    pub fn states(&self) -> Result<Vec<(&str, &str)>, String> {
        self.hops
            .iter()
            .map(|h| match (&h.state, &h.drawn) {
                (Some(s), Some(d)) if s == d => Ok((h.key.as_str(), s.as_str())),
                (s, d) => Err(format!(
                    "hop {}: the list says {s:?}, the drawing {d:?}",
                    h.key
                )),
            })
            .collect()
    }

    pub fn hop(&self, key: &str) -> Option<&HopView> {
        self.hops.iter().find(|h| h.key == key)
    }
}
