//! One config, two runtimes: a config that runs off Kubernetes is its file under `manifests/` with
//! only addresses, socket and file paths, and attestation plugins changed — by a short list of
//! typed edits per file, checked so that nothing else can differ. The local runtime's list is in
//! `runtime::local::configs`, the API-server check's in `checks::attestation`; the edits that move
//! a SPIRE server or agent off Kubernetes, which both use, are here.

use std::path::Path;

use anyhow::{Context, bail};

/// What an edit may change; nothing else is ever rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A listen or peer address or port.
    Address,
    /// A Unix socket (the Workload API, the SPIRE server API).
    SocketPath,
    /// A directory or file on disk (data, certificates, pid file, watched policy).
    FilePath,
    /// Where a Kubernetes plugin finds the API server or its token outside a pod: a kubeconfig
    /// or token file added after the line `from`, nothing else.
    KubeAccess,
}

#[derive(Clone, Debug)]
pub enum Edit {
    /// Replace every occurrence of `from` (at least one) by `to`.
    Text {
        kind: Kind,
        from: String,
        to: String,
    },
    /// Replace the HCL block that starts with `header` (up to its matching brace) by `to`:
    /// only attestation plugins, and the Kubernetes-only notifier beside them.
    Block { header: String, to: String },
}

pub fn text(kind: Kind, from: &str, to: impl Into<String>) -> Edit {
    Edit::Text {
        kind,
        from: from.into(),
        to: to.into(),
    }
}

/// An Envoy socket address moved to 127.0.0.1 and the local runtime's port.
pub fn loopback(from: &str, port: u16) -> Edit {
    at(from, "127.0.0.1", port)
}

/// An Envoy socket address moved to `host` and `port`.
pub fn at(from: &str, host: impl std::fmt::Display, port: u16) -> Edit {
    text(
        Kind::Address,
        from,
        format!("{{ address: {host}, port_value: {port} }}"),
    )
}

pub fn block(header: &str, to: &str) -> Edit {
    Edit::Block {
        header: header.into(),
        to: to.into(),
    }
}

impl Edit {
    /// Refuses an edit whose text is not of its kind, so an edit cannot smuggle in other changes.
    fn check(&self) -> anyhow::Result<()> {
        let ok = match self {
            Edit::Text {
                kind: Kind::Address,
                from,
                to,
            } => {
                // A URL, a listen address, an allowed host name.
                let words = [
                    "address",
                    "port",
                    "listen_addresses",
                    "bind_",
                    "host =",
                    "https://",
                    "addr",
                    "domains =",
                ];
                (words.iter().any(|w| from.contains(w))
                    || from.parse::<std::net::SocketAddr>().is_ok())
                    && from.lines().count() == 1
                    && to.lines().count() == 1
            }
            Edit::Text {
                kind: Kind::SocketPath | Kind::FilePath,
                from,
                to,
            } => {
                from.starts_with('/') && to.starts_with('/') && !from.contains(char::is_whitespace)
            }
            Edit::Text {
                kind: Kind::KubeAccess,
                from,
                to,
            } => to.strip_prefix(from.as_str()).is_some_and(|added| {
                let line = added.trim_start_matches([' ', '\n']);
                added.starts_with('\n')
                    && [
                        "kube_config_file = \"/",
                        "kube_config_file_path = \"/",
                        "token_path = \"/",
                    ]
                    .iter()
                    .any(|k| line.starts_with(k))
                    && line.ends_with('"')
                    && line.lines().count() == 1
            }),
            Edit::Block { header, to } => {
                let plugin = |s: &str| {
                    ["NodeAttestor ", "WorkloadAttestor ", "Notifier "]
                        .iter()
                        .any(|p| s.trim_start().starts_with(p))
                };
                plugin(header) && (to.is_empty() || plugin(to))
            }
        };
        if !ok {
            bail!("edit {self:?} is not of its kind");
        }
        Ok(())
    }

    fn apply(&self, src: &str) -> anyhow::Result<String> {
        self.check()?;
        match self {
            Edit::Text { from, to, .. } => {
                if !src.contains(from.as_str()) {
                    bail!("{from:?} not found");
                }
                Ok(src.replace(from.as_str(), to))
            }
            Edit::Block { header, to } => {
                let (start, end) = find_block(src, header)
                    .with_context(|| format!("block {header:?} not found"))?;
                // Keep the block's indentation; drop its line entirely when it goes away.
                let line_start = src[..start].rfind('\n').map_or(0, |i| i + 1);
                let indent = &src[line_start..start];
                let mut out = String::from(&src[..line_start]);
                if !to.is_empty() {
                    out.push_str(indent);
                    out.push_str(&to.replace('\n', &format!("\n{indent}")));
                    out.push_str(&src[end..]);
                } else {
                    let rest = src[end..].strip_prefix('\n').unwrap_or(&src[end..]);
                    let rest = rest.strip_prefix('\n').unwrap_or(rest);
                    out.push_str(rest);
                }
                Ok(out)
            }
        }
    }
}

/// Byte range of an HCL block: from its header to its closing brace.
fn find_block(src: &str, header: &str) -> Option<(usize, usize)> {
    let start = src.find(header)?;
    let open = start + src[start..].find('{')?;
    let mut depth = 0;
    for (i, c) in src[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((start, open + i + 1));
                }
            }
            _ => {}
        }
    }
    None
}

pub fn apply(src: &str, edits: &[Edit]) -> anyhow::Result<String> {
    edits
        .iter()
        .try_fold(src.to_owned(), |acc, e| e.apply(&acc))
}

/// A shared config file and the edits that make it run elsewhere.
pub struct Render {
    /// Relative to `manifests/`.
    pub source: &'static str,
    /// File name in the directory it is rendered into.
    pub target: String,
    pub edits: Vec<Edit>,
}

impl Render {
    /// The source with the edits applied.
    pub fn apply(&self, manifests: &Path) -> anyhow::Result<String> {
        let src = std::fs::read_to_string(manifests.join(self.source))
            .with_context(|| format!("read manifests/{}", self.source))?;
        apply(&src, &self.edits).with_context(|| format!("render manifests/{}", self.source))
    }
}

/// Renders each of `renders` into `dir`.
pub fn write_all(manifests: &Path, dir: &Path, renders: &[Render]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for r in renders {
        std::fs::write(dir.join(&r.target), r.apply(manifests)?)?;
    }
    Ok(())
}

/// A SPIRE server off Kubernetes: listening on `bind` (as the manifest: every address of its
/// pod; or 127.0.0.1) with its API at `port` and health at `health`, its admin socket and data
/// directory where given.
pub fn server_moved(
    bind: &str,
    port: u16,
    health: u16,
    metrics: u16,
    socket: &Path,
    data: &Path,
) -> Vec<Edit> {
    let mut edits = vec![];
    if bind != "0.0.0.0" {
        edits.push(text(
            Kind::Address,
            "bind_address = \"0.0.0.0\"",
            format!("bind_address = \"{bind}\""),
        ));
        edits.push(text(
            Kind::Address,
            "host = \"0.0.0.0\"",
            format!("host = \"{bind}\""),
        ));
    }
    edits.extend([
        text(Kind::Address, "port = 9988", format!("port = {metrics}")),
        text(
            Kind::Address,
            "bind_port = \"8081\"",
            format!("bind_port = \"{port}\""),
        ),
        text(
            Kind::Address,
            "bind_port = \"8080\"",
            format!("bind_port = \"{health}\""),
        ),
        text(
            Kind::SocketPath,
            "/tmp/spire-server/private/api.sock",
            socket.display().to_string(),
        ),
        text(
            Kind::FilePath,
            "/run/spire/server/data",
            data.display().to_string(),
        ),
    ]);
    edits
}

/// A SPIRE agent off Kubernetes: its server at `server`:`server_port`, health and metrics on
/// 127.0.0.1 at `health` and `metrics`, its Workload API socket, data directory and bootstrap
/// bundle where given.
#[allow(clippy::too_many_arguments)]
pub fn agent_moved(
    server: &str,
    server_port: u16,
    health: u16,
    metrics: u16,
    socket: &Path,
    data: &Path,
    bundle: &Path,
) -> Vec<Edit> {
    vec![
        text(
            Kind::FilePath,
            "/run/spire/agent/data",
            data.display().to_string(),
        ),
        text(
            Kind::Address,
            "server_address = \"spire-server.spire-system.svc\"",
            format!("server_address = \"{server}\""),
        ),
        text(
            Kind::Address,
            "server_port = \"8081\"",
            format!("server_port = \"{server_port}\""),
        ),
        text(
            Kind::SocketPath,
            "/run/spire/agent-sockets/spire-agent.sock",
            socket.display().to_string(),
        ),
        text(
            Kind::FilePath,
            "/run/spire/bundle/bundle.crt",
            bundle.display().to_string(),
        ),
        text(
            Kind::Address,
            "bind_address = \"0.0.0.0\"",
            "bind_address = \"127.0.0.1\"",
        ),
        text(
            Kind::Address,
            "bind_port = \"8080\"",
            format!("bind_port = \"{health}\""),
        ),
        text(Kind::Address, "host = \"0.0.0.0\"", "host = \"127.0.0.1\""),
        text(Kind::Address, "port = 9988", format!("port = {metrics}")),
    ]
}

/// The lines that differ, for test failure messages.
#[cfg(test)]
fn line_diff(a: &str, b: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            let _ = writeln!(out, "{:>4}- {x}\n{:>4}+ {y}", i + 1, i + 1);
        }
    }
    out
}

/// Fails unless `r` differs from its source only by its listed, typed edits: undoing the text
/// edits and putting the original plugin blocks back gives the source byte for byte.
#[cfg(test)]
pub fn assert_only_edits(r: &Render) {
    let src =
        std::fs::read_to_string(crate::project_root().join("manifests").join(r.source)).unwrap();
    let rendered = apply(&src, &r.edits).unwrap_or_else(|e| panic!("{}: {e:#}", r.source));
    let mut undone = rendered.clone();
    for e in r.edits.iter().rev() {
        match e {
            Edit::Text { from, to, .. } => {
                assert!(!to.is_empty());
                undone = undone.replace(to.as_str(), from);
            }
            Edit::Block { header, to } => {
                let (s, e2) = find_block(&src, header).unwrap();
                let original = &src[s..e2];
                if to.is_empty() {
                    // A removed block: its absence is the only difference.
                    assert!(!rendered.contains(header.as_str()));
                    continue;
                }
                let new_header = to.lines().next().unwrap();
                let (ns, ne) = find_block(&undone, new_header).unwrap();
                undone.replace_range(ns..ne, original);
            }
        }
    }
    let removed: Vec<Edit> = r
        .edits
        .iter()
        .filter(|e| matches!(e, Edit::Block { to, .. } if to.is_empty()))
        .cloned()
        .collect();
    // Compare with the removed blocks taken out of the source the same way.
    let expected = apply(&src, &removed).unwrap();
    assert_eq!(
        undone,
        expected,
        "{} drifted:\n{}",
        r.source,
        line_diff(&expected, &undone)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOIN_TOKEN: &str = "NodeAttestor \"join_token\" {\n    plugin_data {}\n}";

    #[test]
    fn edits_of_the_wrong_kind_are_refused() {
        let sneaky = text(Kind::Address, "action: ALLOW", "action: DENY");
        assert!(sneaky.apply("action: ALLOW").is_err());
        let path = text(Kind::FilePath, "principal_name", "/x");
        assert!(path.apply("principal_name").is_err());
        let plugin = block("DataStore \"sql\"", "");
        assert!(plugin.apply("DataStore \"sql\" { }").is_err());
        let missing = text(Kind::Address, "port = 1", "port = 2");
        assert!(missing.apply("nothing here").is_err());
        // Access to the API server adds one kubeconfig or token line, and changes nothing else.
        let src = "cluster = \"c\"\n";
        let token = text(
            Kind::KubeAccess,
            "cluster = \"c\"",
            "cluster = \"c\"\n    token_path = \"/t\"",
        );
        assert!(token.apply(src).is_ok());
        for to in [
            "cluster = \"other\"\n    token_path = \"/t\"",
            "cluster = \"c\"\n    skip_kubelet_verification = false",
            "cluster = \"c\"\n    token_path = \"/t\"\n    audience = [\"x\"]",
            "cluster = \"c\" token_path = \"/t\"",
        ] {
            let sneaky = text(Kind::KubeAccess, "cluster = \"c\"", to);
            assert!(sneaky.apply(src).is_err(), "{to}");
        }
    }

    #[test]
    fn plugin_blocks_are_replaced_whole() {
        let src = "plugins {\n    A \"x\" {\n        plugin_data { a = 1 }\n    }\n\n    NodeAttestor \"k8s_psat\" {\n        plugin_data {\n            cluster = \"c\"\n        }\n    }\n}\n";
        let out = block("NodeAttestor \"k8s_psat\"", JOIN_TOKEN)
            .apply(src)
            .unwrap();
        assert!(
            out.contains("    NodeAttestor \"join_token\" {\n        plugin_data {}\n    }\n}"),
            "{out}"
        );
        assert!(!out.contains("k8s_psat"));
    }
}
