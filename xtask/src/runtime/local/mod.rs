//! The local runtime: the whole lab as real processes on this machine, one SPIRE agent per
//! "node" (frontend-node, backend-node, postgres-node), every config rendered from `manifests/`.
//!
//! State lives in `/tmp/spire-lab-<uid>-<hash of the checkout>` (short enough for Unix sockets,
//! reachable by the postgres user), linked from the git-ignored `.lab/local`.
//!
//! As root, every pod has a network namespace of its own (`pods`), wired by a bridge the lab
//! makes inside its own namespaces, and every workload its own uid; without root, every
//! component shares the host's loopback, as `up` says.
//!
//! - `layout`: nodes, ports and paths. `configs`: the rendered configs. `plaintext`: the bench's
//!   baseline. `state`: what is remembered between commands.
//! - `pods`: the network namespaces. `forward`: from the host's loopback into a pod.
//! - `up`: starting and stopping everything. `process`: one component's process and readiness.
//! - `registration`: join tokens and entries. `postgres`: initdb and psql. `status`.

mod configs;
pub mod forward;
mod layout;
mod openbao;
mod plaintext;
mod pods;
mod postgres;
mod process;
mod registration;
mod state;
mod status;
mod up;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use contract::{Holder, Workload};
use serde::{Deserialize, Serialize};
use xshell::{Shell, cmd};

use crate::lab::{Capabilities, Component, Holding, Lab, Minted, PodListener, Policy, Reach};
use crate::probe;
use crate::procs;
use layout::{Layout, Ports, node_of};
use pods::Pod;
use state::{Running, State};

pub use up::{down, down_all, ensure_nothing_left, up};

/// The lab, or the benchmark's plaintext baseline of the same topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    #[default]
    Mtls,
    /// No SPIRE, no TLS anywhere: only `cargo xtask bench` uses it, to price mTLS. It runs
    /// beside the lab, with its own state directory and every port shifted by 1000.
    Plaintext,
}

impl Profile {
    fn root(self) -> PathBuf {
        match self {
            Profile::Mtls => layout::state_root(),
            Profile::Plaintext => {
                PathBuf::from(format!("{}-plaintext", layout::state_root().display()))
            }
        }
    }

    /// Where its ports start, beside the lab's.
    fn port_offset(self) -> u16 {
        match self {
            Profile::Mtls => 0,
            Profile::Plaintext => 1000,
        }
    }

    fn components(self) -> Vec<Component> {
        match self {
            Profile::Mtls => Component::ALL.to_vec(),
            Profile::Plaintext => vec![
                Component::Postgres,
                Component::Backend,
                Component::EnvoyBackend,
                Component::EnvoyFrontend,
                Component::Frontend,
            ],
        }
    }
}

/// The running local lab.
pub struct LocalLab {
    state: State,
    root: PathBuf,
    /// What xtask looks at inside pods, forwarded while this handle lives.
    forwards: std::sync::Mutex<std::collections::HashMap<(Pod, u16), forward::Forward>>,
}

fn chmod(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn chown(path: &Path, user: Option<(u32, u32)>) -> anyhow::Result<()> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

impl LocalLab {
    /// The running lab of this checkout.
    pub fn open() -> anyhow::Result<LocalLab> {
        Self::open_at(&Profile::Mtls.root())
    }

    fn open_at(root: &Path) -> anyhow::Result<LocalLab> {
        Ok(LocalLab {
            state: State::load(root)?,
            root: root.to_owned(),
            forwards: Default::default(),
        })
    }

    fn save(&self) -> anyhow::Result<()> {
        self.state.save(&self.root)
    }

    fn layout(&self) -> &Layout {
        &self.state.layout
    }

    fn ports(&self) -> &Ports {
        &self.state.layout.ports
    }

    fn running(&self, c: Component) -> Option<&Running> {
        self.state.components.iter().find(|r| r.name == c.name())
    }

    /// The pid of a running component (checked against the program it was started as).
    pub fn pid(&self, c: Component) -> Option<u32> {
        self.running(c)
            .and_then(|r| r.pid.filter(|p| procs::is_ours(*p, &r.spec.program)))
    }

    /// The SPIRE server's CLI and the socket it answers on.
    /// The first replica that runs (replica 0 when none does: its error then says so).
    pub fn server_cli(&self) -> (PathBuf, PathBuf) {
        let live = Component::servers()
            .find(|c| self.pid(*c).is_some())
            .unwrap_or(Component::SpireServer(0));
        let Component::SpireServer(r) = live else {
            unreachable!("servers() yields replicas")
        };
        (
            self.state.tools.spire_server.clone(),
            self.layout().server_socket(r),
        )
    }

    /// Where a client with the backend's SVID reaches PostgreSQL directly (the bench's
    /// connection figures): the backend's SVID directory and PostgreSQL's host:port.
    pub fn db_client(&self) -> (PathBuf, String) {
        (self.layout().certs("backend"), self.postgres_addr())
    }

    /// host:port on this machine's loopback where `port` of `pod` answers: itself on the
    /// shared loopback; with pods, a forward into the pod for as long as this handle lives.
    fn reach(&self, pod: Pod, port: u16) -> anyhow::Result<String> {
        let Some(netns) = self.layout().network.netns(pod) else {
            return Ok(format!("127.0.0.1:{port}"));
        };
        let mut forwards = self.forwards.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = forwards.get(&(pod, port)) {
            return Ok(f.local.to_string());
        }
        let f = forward::start(&netns, ([127, 0, 0, 1], port).into())
            .with_context(|| format!("forward into pod {}", pod.name()))?;
        let local = f.local.to_string();
        forwards.insert((pod, port), f);
        Ok(local)
    }

    /// Where each component's log is written.
    pub fn log_files(&self, components: &[Component]) -> Vec<(Component, std::path::PathBuf)> {
        components
            .iter()
            .map(|c| (*c, self.layout().p(&format!("logs/{}.log", c.name()))))
            .collect()
    }

    /// `reach` for the trait's addresses, which cannot fail: an unreachable address instead.
    fn reach_or_nothing(&self, pod: Pod, port: u16) -> String {
        self.reach(pod, port)
            .unwrap_or_else(|_| "127.0.0.1:0".to_owned())
    }

    /// Where a pod-private listener is: its pod and port.
    fn listener(&self, l: PodListener) -> (Pod, u16) {
        let p = self.ports();
        match l {
            PodListener::BackendEnvoyMtls => (Pod::Backend, p.backend_envoy),
            PodListener::BackendApi => (Pod::Backend, p.backend),
            PodListener::BackendEnvoyAdmin => (Pod::Backend, p.backend_envoy_admin),
            PodListener::FrontendEnvoyAdmin => (Pod::Frontend, p.frontend_envoy_admin),
            PodListener::FrontendEnvoyOutbound => (Pod::Frontend, p.frontend_envoy),
        }
    }
}

impl Lab for LocalLab {
    fn label(&self) -> &'static str {
        "local runtime"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            readiness_gates_traffic: false,
            // Envoy watches the policy file itself.
            policy_propagation: Duration::from_secs(15),
            shared_loopback: (!self.layout().network.is_pods()).then_some(
                "the local runtime without pods (they need root) runs every component on the host's one loopback",
            ),
        }
    }

    fn frontend_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports().frontend)
    }

    fn envoy_admin_url(&self, backend: bool) -> String {
        let (pod, port) = if backend {
            (Pod::Backend, self.ports().backend_envoy_admin)
        } else {
            (Pod::Frontend, self.ports().frontend_envoy_admin)
        };
        format!("http://{}", self.reach_or_nothing(pod, port))
    }

    fn stop(&mut self, c: Component) -> anyhow::Result<()> {
        let r = self
            .running(c)
            .with_context(|| format!("{} was never started", c.name()))?
            .clone();
        if let Some(pid) = r.pid
            && !procs::stop(pid, &r.spec, Duration::from_secs(10))
        {
            bail!("{} (pid {pid}) did not stop", c.name());
        }
        if let Some(r) = self
            .state
            .components
            .iter_mut()
            .find(|r| r.name == c.name())
        {
            r.pid = None;
        }
        self.save()
    }

    fn start(&mut self, c: Component) -> anyhow::Result<()> {
        if self.pid(c).is_some() {
            return Ok(());
        }
        let sh = Shell::new()?;
        self.launch(&sh, c).map(drop)
    }

    fn instance(&self, c: Component) -> Option<String> {
        self.pid(c).map(|p| format!("pid {p}"))
    }

    fn set_policy(&mut self, p: Policy) -> anyhow::Result<()> {
        // Written beside, then renamed over: Envoy sees one whole file change.
        let dir = self.layout().rbac_dir();
        let tmp = dir.join(".rbac.yaml.new");
        std::fs::copy(
            crate::project_root()
                .join("manifests/backend/config")
                .join(p.file()),
            &tmp,
        )?;
        std::fs::rename(&tmp, dir.join("rbac.yaml"))?;
        Ok(())
    }

    fn set_svid_ttl(&mut self, ttl: Option<u32>) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        for r in self.state.entries.iter().filter(|r| r.entry.is_workload()) {
            self.entry_update(&sh, r, ttl)?;
        }
        Ok(())
    }

    fn log(&self, c: Component) -> anyhow::Result<String> {
        let path = self.layout().p(&format!("logs/{}.log", c.name()));
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }

    fn trust_bundle(&self) -> anyhow::Result<Vec<openssl::x509::X509>> {
        let sh = Shell::new()?;
        let (server, sock) = self.server_cli();
        let pem = cmd!(sh, "{server} bundle show -socketPath {sock}")
            .quiet()
            .read()?;
        Ok(openssl::x509::X509::stack_from_pem(pem.as_bytes())?)
    }

    fn holdings(&self) -> Vec<anyhow::Result<Holding>> {
        let files = || -> anyhow::Result<Holding> {
            let s = svid::SvidFiles::in_dir(self.layout().certs("backend"))
                .load()
                .context("backend files")?;
            Ok(Holding {
                holder: Holder::BackendFiles,
                seconds_left: Some(s.seconds_left()),
                spiffe_id: Some(s.spiffe_id.to_string()),
                serial: s.serial,
            })
        };
        vec![
            Holding::of_envoy(Holder::FrontendEnvoy, &self.envoy_admin_url(false)),
            Holding::of_envoy(Holder::BackendEnvoy, &self.envoy_admin_url(true)),
            files(),
            Holding::of_postgres(&self.postgres_addr()),
            self.reach(Pod::Ledger, self.ports().ledger_health)
                .and_then(|at| Holding::of_ledger(&at)),
        ]
    }

    fn trusted_cas(&self) -> Vec<(Holder, anyhow::Result<Vec<String>>)> {
        let envoy = |backend| -> anyhow::Result<Vec<String>> {
            Ok(probe::envoy_certs(&self.envoy_admin_url(backend))?.ca_serials())
        };
        let file = |workload: &str| -> anyhow::Result<Vec<String>> {
            let path = self.layout().certs(workload).join("svid_bundle.pem");
            let pem = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            Ok(openssl::x509::X509::stack_from_pem(&pem)?
                .iter()
                .map(|c| svid::serial_hex(c))
                .collect())
        };
        vec![
            (Holder::FrontendEnvoy, envoy(false)),
            (Holder::BackendEnvoy, envoy(true)),
            (Holder::BackendFiles, file("backend")),
            (Holder::PostgresServer, file("postgres")),
            (
                Holder::Ledger,
                self.reach(Pod::Ledger, self.ports().ledger_health)
                    .and_then(|at| crate::lab::ledger_status(&at))
                    .map(|s| s.bundle_serials),
            ),
        ]
    }

    fn presented_chains(&self) -> Vec<(&'static str, anyhow::Result<Vec<openssl::x509::X509>>)> {
        let files = svid::SvidFiles::in_dir(self.layout().certs("backend"));
        vec![
            (
                "backend Envoy (served on its mTLS listener)",
                probe::server_chain(&self.backend_envoy_addr(), false),
            ),
            (
                "PostgreSQL (served to TLS clients)",
                probe::server_chain(&self.postgres_addr(), true),
            ),
            (
                "backend files (svid.pem)",
                files.load().map(|s| s.chain).map_err(Into::into),
            ),
        ]
    }

    fn backend_readyz(&self) -> anyhow::Result<(u16, contract::Readiness)> {
        let (status, body) = probe::get(&format!(
            "http://{}/readyz",
            self.reach(Pod::Backend, self.ports().backend)?
        ))?;
        Ok((
            status,
            serde_json::from_str(&body)
                .with_context(|| format!("/readyz answered something else: {body}"))?,
        ))
    }

    fn metrics(&self, service: Workload) -> anyhow::Result<contract::metrics::Scrape> {
        let url = match service {
            Workload::Frontend => format!("{}/metrics", self.frontend_url()),
            Workload::Backend => format!(
                "http://{}/metrics",
                self.reach(Pod::Backend, self.ports().backend_health)?
            ),
            Workload::Postgres => anyhow::bail!("PostgreSQL serves no /metrics"),
            Workload::Ledger => anyhow::bail!("the ledger serves no /metrics"),
            Workload::OpenBao => anyhow::bail!("OpenBao's metrics are not scraped by the lab"),
        };
        crate::probe::scrape(&url)
    }

    fn spire_metrics(&self, c: Component) -> anyhow::Result<contract::metrics::Scrape> {
        let p = self.ports();
        let (pod, port) = match c {
            Component::SpireServer(r) => {
                (Pod::SpireServer(r), p.spire_server_metrics[usize::from(r)])
            }
            Component::Agent(w) => {
                let i = layout::NODES
                    .iter()
                    .position(|n| *n == node_of(w))
                    .unwrap_or_default();
                (Pod::Node(w), p.agent_metrics[i])
            }
            _ => anyhow::bail!("{} serves no SPIRE telemetry", c.name()),
        };
        crate::probe::scrape(&format!("http://{}/metrics", self.reach(pod, port)?))
    }

    fn backend_envoy_addr(&self) -> String {
        self.reach_or_nothing(Pod::Backend, self.ports().backend_envoy)
    }

    fn ledger_addr(&self) -> String {
        self.reach_or_nothing(Pod::Ledger, self.ports().ledger)
    }

    fn fetch_svid_unregistered(&self) -> anyhow::Result<String> {
        let sh = Shell::new()?;
        let agent = &self.state.tools.spire_agent;
        let sock = self.layout().agent_socket(node_of(Workload::Backend));
        // spire-agent itself is no registered workload: its binary path matches no entry.
        let out = cmd!(sh, "{agent} api fetch x509 -socketPath {sock} -timeout 3s")
            .quiet()
            .ignore_status()
            .output()?;
        let text = procs::printed(&out);
        if out.status.success() {
            Ok(text)
        } else {
            bail!("{}", text.trim())
        }
    }

    fn issue_rogue_svid(&mut self) -> anyhow::Result<PathBuf> {
        self.register_rogue()
    }

    fn remove_rogue(&mut self) -> anyhow::Result<()> {
        self.unregister_rogue()
    }

    fn query_postgres_with(&self, dir: &Path) -> anyhow::Result<String> {
        let addr = self.postgres_addr();
        let (host, port) = addr.rsplit_once(':').context("host:port")?;
        let conninfo = format!(
            "host={host} port={port} dbname=demo user=backend sslmode=verify-ca sslcert={} sslkey={} sslrootcert={}",
            dir.join("svid.0.pem").display(),
            dir.join("svid.0.key").display(),
            dir.join("bundle.0.pem").display()
        );
        let out = std::process::Command::new(&self.state.tools.psql)
            .args([conninfo.as_str(), "-AtXc", "SELECT count(*) FROM orders"])
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn spire_server(
        &self,
        replica: Option<u8>,
        command: &[&str],
        flags: &[&str],
    ) -> anyhow::Result<String> {
        let (server, sock) = match replica {
            Some(r) => (
                self.state.tools.spire_server.clone(),
                self.layout().server_socket(r),
            ),
            None => self.server_cli(),
        };
        let out = std::process::Command::new(&server)
            .args(command)
            .arg("-socketPath")
            .arg(&sock)
            .args(flags)
            .output()
            .with_context(|| format!("run {}", server.display()))?;
        if !out.status.success() {
            bail!(
                "spire-server {}: {}",
                command.join(" "),
                procs::printed(&out).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn kill(&mut self, c: Component) -> anyhow::Result<()> {
        let pid = self
            .pid(c)
            .with_context(|| format!("{} does not run", c.name()))?;
        procs::signal(pid, libc::SIGKILL);
        crate::procs::wait_for(Duration::from_secs(10), || {
            procs::reap(pid);
            anyhow::ensure!(self.pid(c).is_none(), "{} (pid {pid}) still runs", c.name());
            Ok(())
        })?;
        if let Some(r) = self
            .state
            .components
            .iter_mut()
            .find(|r| r.name == c.name())
        {
            r.pid = None;
        }
        self.save()
    }

    fn mint_svid(
        &self,
        spiffe_id: &str,
        dns: Option<&str>,
        ttl: Duration,
    ) -> anyhow::Result<Minted> {
        let sh = Shell::new()?;
        let (server, sock) = self.server_cli();
        let args = crate::spire::mint_args(spiffe_id, dns, ttl);
        // stderr: "lifetime was capped" notes, not errors.
        let out = cmd!(sh, "{server} x509 mint -socketPath {sock} {args...}")
            .quiet()
            .ignore_stderr()
            .read()
            .with_context(|| format!("mint an SVID for {spiffe_id}"))?;
        crate::spire::minted(&out)
    }

    fn postgres_addr(&self) -> String {
        self.reach_or_nothing(Pod::Postgres, self.ports().postgres)
    }

    fn openbao(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        self.run_bao(args, stdin)
    }

    fn postgres_admin(&self, sql: &str) -> anyhow::Result<String> {
        self.psql(postgres::Server::Demo, "demo", sql)
    }

    fn reach_from_another_pod(
        &mut self,
        targets: &[PodListener],
    ) -> anyhow::Result<Vec<(PodListener, Reach)>> {
        if let Some(why) = self.capabilities().shared_loopback {
            bail!(
                "{} listeners cannot be tried from another pod: {why}",
                targets.len()
            );
        }
        let network = self.layout().network.clone();
        let wanted: Vec<(PodListener, std::net::SocketAddr)> = targets
            .iter()
            .map(|&l| {
                let (pod, port) = self.listener(l);
                (l, (network.addr(pod), port).into())
            })
            .collect();
        network.with_insider(|insider| {
            wanted
                .into_iter()
                .map(|(l, addr)| {
                    let reach = match pods::connect_in(insider, addr) {
                        Ok(_) => Reach::Connected {
                            addr: addr.to_string(),
                        },
                        Err(e) => Reach::Refused {
                            addr: addr.to_string(),
                            reason: e.to_string(),
                        },
                    };
                    (l, reach)
                })
                .collect()
        })
    }
}

/// The SPIRE servers' datastore as the local runtime makes it (its configs, password and
/// certificate, init-db.sh, PostgreSQL as the postgres user), alone in a scratch directory: for
/// checks that run a SPIRE server outside a lab. Stopped, and its directory removed, on drop.
pub struct ScratchDatastore {
    lab: LocalLab,
    _dir: tempfile::TempDir,
}

impl ScratchDatastore {
    /// On 127.0.0.1:`port`.
    pub fn start(port: u16) -> anyhow::Result<ScratchDatastore> {
        let pins = crate::pins::Pins::load(&crate::project_root())?;
        let tools = crate::deps::find(&pins)?;
        let dir = tempfile::Builder::new()
            .prefix("spire-lab-datastore-")
            .tempdir()?;
        chmod(dir.path(), 0o755)?;
        let mut ports = Ports::with_offset(0);
        ports.spire_db = port;
        let layout = Layout {
            root: dir.path().to_owned(),
            ports,
            network: pods::Network::SharedLoopback,
        };
        let pg_user = postgres::pg_user()?;
        for (sub, mode, owner) in [
            ("config", 0o755, None),
            ("logs", 0o755, None),
            ("spire-server", 0o700, None),
            ("spire-server/datastore", 0o700, None),
            ("spire-db", 0o755, pg_user),
            ("spire-db/data", 0o700, pg_user),
            ("spire-db/run", 0o755, pg_user),
            ("spire-db/tls", 0o700, pg_user),
        ] {
            let p = layout.p(sub);
            std::fs::create_dir_all(&p)?;
            chmod(&p, mode)?;
            chown(&p, owner)?;
        }
        configs::write_local_configs(&layout)?;
        let mut lab = LocalLab {
            root: dir.path().to_owned(),
            state: State {
                profile: Profile::Mtls,
                layout,
                tools: state::ToolPaths::from(&tools),
                pg_user,
                components: Vec::new(),
                entries: Vec::new(),
                staged: Vec::new(),
                forwarders: Vec::new(),
            },
            forwards: Default::default(),
        };
        lab.save()?;
        let sh = Shell::new()?;
        lab.launch(&sh, Component::SpireDatastore)
            .context("the scratch datastore")?;
        Ok(ScratchDatastore { lab, _dir: dir })
    }

    /// The edits that point a kind `server.conf` at this datastore.
    pub fn server_edits(&self) -> Vec<crate::render::Edit> {
        configs::datastore_reached(self.lab.layout())
    }

    /// What `SPIRE_DB_PASSWORD` must be for a server started with `-expandEnv`.
    pub fn password(&self) -> anyhow::Result<String> {
        self.lab.datastore_password()
    }
}

impl Drop for ScratchDatastore {
    fn drop(&mut self) {
        if let Some(pid) = self.lab.pid(Component::SpireDatastore)
            && let Some(r) = self.lab.running(Component::SpireDatastore)
        {
            procs::stop(pid, &r.spec, Duration::from_secs(5));
        }
    }
}

/// What only this runtime may know, for the tidy check that nothing else names it: its node
/// names, its ports, and the paths of its state.
#[cfg(test)]
pub fn private_names() -> (Vec<&'static str>, Vec<u16>, Vec<&'static str>) {
    (
        layout::NODES.to_vec(),
        Ports::with_offset(0)
            .named()
            .into_iter()
            .map(|(p, _)| p)
            .collect(),
        vec!["/tmp/spire-lab", ".lab/local", "state.json"],
    )
}
