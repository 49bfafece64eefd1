//! The benchmark's plaintext baseline: the same topology with TLS, RBAC and SPIRE taken out,
//! derived from the rendered local configs. Only `cargo xtask bench` uses it, to price mTLS.

use anyhow::{Context, ensure};

use super::layout::Layout;
use super::pods::Pod;

/// The benchmark's plaintext baseline, derived from the rendered local configs: Envoys without
/// TLS (and so without the RBAC filter, which needs a peer certificate), PostgreSQL without TLS
/// trusting the backend. Only `cargo xtask bench` uses it, beside the real lab, to price mTLS.
pub fn write_plaintext_profile(layout: &Layout) -> anyhow::Result<()> {
    let edit = |name: &str, f: &dyn Fn(&str) -> anyhow::Result<String>| -> anyhow::Result<()> {
        let path = layout.config(name);
        let text = std::fs::read_to_string(&path)?;
        std::fs::write(
            &path,
            f(&text).with_context(|| format!("plaintext profile of {name}"))?,
        )?;
        Ok(())
    };
    // Both of its upstreams: the backend's Envoy and the ledger (which the baseline does not
    // run; its route stays, unused).
    edit("envoy-frontend.yaml", &|t| {
        let mut t = t.to_owned();
        while t.contains("transport_socket:") {
            t = yaml_remove(&t, "transport_socket:", false)?;
        }
        Ok(t)
    })?;
    edit("envoy-backend.yaml", &|t| {
        let t = yaml_remove(t, "- transport_socket:", false)?;
        yaml_remove(&t, "- name: backend-rbac", true)
    })?;
    edit("postgresql.conf", &|t| {
        Ok(t.replacen("ssl = on", "ssl = off", 1))
    })?;
    edit("pg_hba.conf", &|t| {
        let line = "hostssl    demo      backend  all      cert";
        ensure!(t.contains(line), "no hostssl line for the backend");
        let backend = layout.addr(Pod::Backend);
        Ok(t.replacen(
            line,
            &format!("host       demo      backend  {backend}/32 trust"),
            1,
        ))
    })?;
    Ok(())
}

/// Removes the YAML key `start` (a line whose trimmed text starts with it) and what it holds.
/// With `whole_item`, `start` is a list item (`- name: x`) and the whole item goes; else a
/// key that opens a list item (`- key:`) hands the dash to the item's next key.
fn yaml_remove(src: &str, start: &str, whole_item: bool) -> anyhow::Result<String> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let lines: Vec<&str> = src.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(start))
        .with_context(|| format!("{start:?} not found"))?;
    let outer = indent(lines[at]);
    let dash = lines[at].trim_start().starts_with("- ");
    let column = outer + if dash { 2 } else { 0 };
    let mut end = at + 1;
    let inside = |l: &str| {
        l.trim().is_empty()
            || if whole_item {
                indent(l) > outer
            } else {
                indent(l) > column
            }
    };
    while end < lines.len() && inside(lines[end]) {
        end += 1;
    }
    let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
    let mut rest: Vec<String> = lines[end..].iter().map(|l| l.to_string()).collect();
    if dash && !whole_item {
        let next = rest
            .first_mut()
            .context("nothing follows the removed key in its list item")?;
        ensure!(indent(next) == column, "the list item has no other key");
        *next = format!("{}- {}", " ".repeat(outer), next.trim_start());
    }
    out.append(&mut rest);
    Ok(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::local::configs::tests::{networks, rendered, validates};

    #[test]
    fn plaintext_profile_drops_tls_and_still_validates() {
        for network in networks() {
            drops_tls_and_validates(network);
        }
    }

    fn drops_tls_and_validates(network: crate::runtime::local::pods::Network) {
        let (tools, layout) = rendered("render-plaintext", 1000, network);
        write_plaintext_profile(&layout).unwrap();
        for envoy in ["envoy-frontend.yaml", "envoy-backend.yaml"] {
            let text = std::fs::read_to_string(layout.config(envoy)).unwrap();
            assert!(
                !text.contains("transport_socket") && !text.contains("backend-rbac"),
                "{text}"
            );
            let cfg = layout.config(envoy).display().to_string();
            validates(&tools.envoy, &["--mode", "validate", "-c", &cfg]);
        }
        let backend = std::fs::read_to_string(layout.config("envoy-backend.yaml")).unwrap();
        assert!(backend.contains("    - filters:"), "{backend}");
        assert!(
            std::fs::read_to_string(layout.config("postgresql.conf"))
                .unwrap()
                .contains("ssl = off")
        );
        std::fs::remove_dir_all(layout.root).unwrap();
    }
}
