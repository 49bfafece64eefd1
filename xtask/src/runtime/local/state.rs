//! What the local runtime remembers between commands, in `state.json` under its state directory:
//! the layout, the tools, every component started (its spec and pid) and every entry registered.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Profile;
use super::layout::Layout;
use crate::deps::Tools;
use crate::procs::Spec;
use crate::spire::Entry;

/// A component as started: its name, how, and its pid while it runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Running {
    pub name: String,
    pub spec: Spec,
    pub pid: Option<u32>,
}

/// An entry the lab registered, with its id so that its TTL can be changed and it can be deleted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    pub id: String,
    #[serde(flatten)]
    pub entry: Entry,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub profile: Profile,
    pub layout: Layout,
    pub tools: ToolPaths,
    /// The uid and gid PostgreSQL runs as (`postgres` when we are root), or ours.
    pub pg_user: Option<(u32, u32)>,
    pub components: Vec<Running>,
    pub entries: Vec<Registered>,
    /// Programs copied into the state directory's `bin/` (by name), where the uids of the
    /// workloads and PostgreSQL can reach them.
    #[serde(default)]
    pub staged: Vec<String>,
    /// The forwarders: the SPIRE server's Service, and with pods the UI's from the host's
    /// loopback into the frontend's pod.
    #[serde(default)]
    pub forwarders: Vec<Running>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ToolPaths {
    pub spire_server: PathBuf,
    pub spire_agent: PathBuf,
    pub spiffe_helper: PathBuf,
    pub envoy: PathBuf,
    #[serde(default)]
    pub oidc_provider: PathBuf,
    #[serde(default)]
    pub bao: PathBuf,
    pub pg_bin: PathBuf,
    pub psql: PathBuf,
}

impl From<&Tools> for ToolPaths {
    fn from(t: &Tools) -> Self {
        ToolPaths {
            spire_server: t.spire_server.clone(),
            spire_agent: t.spire_agent.clone(),
            spiffe_helper: t.spiffe_helper.clone(),
            envoy: t.envoy.clone(),
            oidc_provider: t.oidc_provider.clone(),
            bao: t.bao.clone(),
            pg_bin: t.pg_bin.clone(),
            psql: t.psql.clone(),
        }
    }
}

fn file(root: &Path) -> PathBuf {
    root.join("state.json")
}

impl State {
    pub fn exists(root: &Path) -> bool {
        file(root).exists()
    }

    pub fn load(root: &Path) -> anyhow::Result<State> {
        let text = std::fs::read_to_string(file(root)).map_err(|_| {
            anyhow::anyhow!(
                "the local lab is not up (no {}): run `cargo xtask up --local`",
                file(root).display()
            )
        })?;
        serde_json::from_str(&text).context("read the local lab's state")
    }

    pub fn save(&self, root: &Path) -> anyhow::Result<()> {
        std::fs::write(file(root), serde_json::to_string_pretty(self)?)
            .with_context(|| format!("write {}", file(root).display()))
    }
}
