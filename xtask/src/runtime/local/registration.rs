//! SPIRE registration on the local runtime: a join token per node, and entries with the same
//! SPIFFE IDs as on kind, selected by unix uid and binary path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use contract::Workload;
use xshell::{Shell, cmd};

use super::layout::{SPIRE_OIDC_NODE, node_of};
use super::state::Registered;
use super::{LocalLab, chmod};
use crate::lab::Component;
use crate::procs::wait_for;
use crate::spire::{self, Entry};

fn node_id(node: &str) -> String {
    format!("spiffe://{}/node/{node}", contract::TRUST_DOMAIN)
}

/// A path as a `unix:path` selector matches it: with every link resolved.
fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_owned())
        .display()
        .to_string()
}

fn unix_selectors(uid: u32, program: &Path) -> Vec<String> {
    vec![
        format!("unix:uid:{uid}"),
        format!("unix:path:{}", canonical(program)),
    ]
}

impl LocalLab {
    /// The trust bundle the agents start from: once it holds every replica's CA (each replica
    /// signs with its own key), so that an agent trusts whichever replica it reaches.
    pub(super) fn write_bootstrap_bundle(&self, sh: &Shell) -> anyhow::Result<()> {
        let (server, sock) = self.server_cli();
        let want = usize::from(crate::lab::SERVER_REPLICAS);
        let (pem, _) = wait_for(Duration::from_secs(30), || {
            let pem = cmd!(sh, "{server} bundle show -socketPath {sock}")
                .quiet()
                .read()?;
            let n = openssl::x509::X509::stack_from_pem(pem.as_bytes())?.len();
            anyhow::ensure!(n >= want, "the bundle holds {n} of {want} replicas' CAs");
            Ok(pem)
        })
        .context("the trust bundle")?;
        std::fs::write(self.layout().bundle(), pem + "\n")?;
        Ok(())
    }

    fn join_token_file(&self, node: &str) -> PathBuf {
        self.layout().p(&format!("agents/{node}/join-token"))
    }

    pub(super) fn has_join_token(&self, node: &str) -> bool {
        self.join_token_file(node).exists()
    }

    /// The agent started with its token, which attests once: the file goes.
    pub(super) fn forget_join_token(&self, node: &str) -> anyhow::Result<()> {
        match std::fs::remove_file(self.join_token_file(node)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Evicts the agent that last attested on `node`, if any: its join token was used once, so
    /// it could never come back, and it would stay listed.
    pub(super) fn evict_previous_agent(&self, sh: &Shell, node: &str) -> anyhow::Result<()> {
        let Ok(id) = std::fs::read_to_string(self.layout().p(&format!("agents/{node}/agent-id")))
        else {
            return Ok(());
        };
        let (server, sock) = self.server_cli();
        let id = id.trim();
        cmd!(sh, "{server} agent evict -socketPath {sock} -spiffeID {id}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("evict the agent {id} that {node} ran before"))
    }

    /// A join token for `node`'s agent, written 0600 beside its data.
    pub(super) fn join_token(&self, sh: &Shell, node: &str) -> anyhow::Result<()> {
        let (server, sock) = self.server_cli();
        let id = node_id(node);
        let out = cmd!(
            sh,
            "{server} token generate -socketPath {sock} -spiffeID {id} -ttl 600"
        )
        .quiet()
        .read()
        .context("generate a join token")?;
        let token = out
            .split_whitespace()
            .last()
            .context("no token in `spire-server token generate` output")?;
        let path = self.join_token_file(node);
        std::fs::write(&path, token)?;
        std::fs::write(
            self.layout().p(&format!("agents/{node}/agent-id")),
            format!(
                "spiffe://{}/spire/agent/join_token/{token}",
                contract::TRUST_DOMAIN
            ),
        )?;
        chmod(&path, 0o600)
    }

    /// Entries with the same SPIFFE IDs as on kind; unix selectors (uid and binary path) here:
    /// each workload's Envoy or spiffe-helper, as it runs (its uid tells the workloads apart
    /// with pods, as a service account does on Kubernetes), on its node.
    ///
    /// Each node's join token is made here too (its entry is the node's alias), and this
    /// returns once the servers' entry caches hold every entry: an agent's first sync, right
    /// after it attests, then finds its workloads' entries, where it would otherwise wait for
    /// its next sync (5 s).
    pub(super) fn register(&mut self, sh: &Shell) -> anyhow::Result<()> {
        for node in super::layout::NODES {
            self.join_token(sh, node)?;
        }
        let own = unsafe { libc::geteuid() };
        let wanted = [
            (Workload::Frontend, Component::EnvoyFrontend),
            (Workload::Backend, Component::EnvoyBackend),
            (Workload::Backend, Component::HelperBackend),
            (Workload::Postgres, Component::HelperPostgres),
            (Workload::Ledger, Component::Ledger),
            (Workload::OpenBao, Component::HelperOpenBao),
        ];
        for (w, c) in wanted {
            let uid = self.user_of(c).map_or(own, |(u, _)| u);
            let program = self.spec(c)?.program;
            let node = node_of(w);
            let entry = Entry::workload(w, &node_id(node), unix_selectors(uid, &program));
            let id = self.entry_create(sh, &entry)?;
            println!(
                "        {} ← {} ({})",
                entry.spiffe_id,
                node,
                entry.selectors.join(", ")
            );
            self.state.entries.push(Registered { id, entry });
        }
        // SPIRE's OIDC discovery provider: a workload of the SPIRE system's own namespace.
        let c = Component::SpireOidc;
        let uid = self.user_of(c).map_or(own, |(u, _)| u);
        let entry = Entry {
            spiffe_id: contract::ids::OIDC_PROVIDER_ID.into(),
            parent_id: node_id(SPIRE_OIDC_NODE),
            selectors: unix_selectors(uid, &self.spec(c)?.program),
            dns: None,
        };
        let id = self.entry_create(sh, &entry)?;
        println!(
            "        {} ← {} ({})",
            entry.spiffe_id,
            SPIRE_OIDC_NODE,
            entry.selectors.join(", ")
        );
        self.state.entries.push(Registered { id, entry });
        self.save()?;
        std::thread::sleep(entry_cache_reload()? + Duration::from_millis(200));
        Ok(())
    }

    fn entry_create(&self, sh: &Shell, e: &Entry) -> anyhow::Result<String> {
        let (server, sock) = self.server_cli();
        let args = e.args(None);
        let out = cmd!(
            sh,
            "{server} entry create -socketPath {sock} -output json {args...}"
        )
        .quiet()
        .read()
        .with_context(|| format!("create the entry for {}", e.spiffe_id))?;
        spire::created_id(&out)
    }

    /// Sets the entry's X.509-SVID TTL (`None`: the server's default).
    pub(super) fn entry_update(
        &self,
        sh: &Shell,
        r: &Registered,
        ttl: Option<u32>,
    ) -> anyhow::Result<()> {
        let (server, sock) = self.server_cli();
        let id = &r.id;
        let args = r.entry.args(Some(ttl.unwrap_or(0)));
        cmd!(
            sh,
            "{server} entry update -socketPath {sock} -entryID {id} {args...}"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("update the entry for {}", r.entry.spiffe_id))
    }

    /// Registers the rogue (the SPIRE agent's own CLI, on the backend's node) and fetches its
    /// SVID into a private directory.
    pub(super) fn register_rogue(&mut self) -> anyhow::Result<PathBuf> {
        let sh = Shell::new()?;
        let agent = self.state.tools.spire_agent.clone();
        let node = node_of(Workload::Backend);
        let entry = Entry::rogue(
            &node_id(node),
            unix_selectors(unsafe { libc::geteuid() }, &agent),
        );
        let id = self.entry_create(&sh, &entry)?;
        self.state.entries.push(Registered { id, entry });
        self.save()?;
        let dir = self.layout().p("rogue");
        std::fs::create_dir_all(&dir)?;
        chmod(&dir, 0o700)?;
        let sock = self.layout().agent_socket(node);
        // The agent learns of the new entry on its next sync (every 5 s).
        wait_for(Duration::from_secs(20), || {
            cmd!(
                sh,
                "{agent} api fetch x509 -socketPath {sock} -timeout 2s -write {dir}"
            )
            .quiet()
            .ignore_stdout()
            .ignore_stderr()
            .run()
            .map_err(Into::into)
        })?;
        Ok(dir)
    }

    pub(super) fn unregister_rogue(&mut self) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let (server, sock) = self.server_cli();
        let rogue = contract::workload_id(contract::ids::ROGUE);
        for r in self
            .state
            .entries
            .iter()
            .filter(|r| r.entry.spiffe_id == rogue)
        {
            let id = &r.id;
            cmd!(sh, "{server} entry delete -socketPath {sock} -entryID {id}")
                .quiet()
                .ignore_stdout()
                .run()?;
        }
        self.state.entries.retain(|r| r.entry.spiffe_id != rogue);
        let _ = std::fs::remove_dir_all(self.layout().p("rogue"));
        self.save()
    }
}

/// How often the SPIRE servers reload their entry cache: `cache_reload_interval` in the shared
/// `server.conf` (whole seconds).
fn entry_cache_reload() -> anyhow::Result<Duration> {
    let conf = crate::project_root().join("manifests/spire/config/server.conf");
    let text = std::fs::read_to_string(&conf)?;
    let secs = text
        .lines()
        .find_map(|l| {
            let value = l.trim().strip_prefix("cache_reload_interval")?;
            let value = value
                .trim_start()
                .strip_prefix('=')?
                .trim()
                .trim_matches('"');
            value.strip_suffix('s')?.parse::<u64>().ok()
        })
        .with_context(|| {
            format!(
                "{} sets no cache_reload_interval in whole seconds",
                conf.display()
            )
        })?;
    Ok(Duration::from_secs(secs))
}
