//! The local runtime: the whole lab as real processes on this machine, one SPIRE agent per
//! "node" (frontend-node, backend-node, postgres-node), every config rendered from `manifests/`.
//!
//! State lives in `/tmp/spire-lab-<uid>-<hash of the checkout>` (short enough for Unix sockets,
//! reachable by the postgres user), linked from the git-ignored `.lab/local`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use xshell::{Shell, cmd};

use crate::deps::{self, Tools};
use crate::lab::{Component, Holding, Lab, Policy};
use crate::pins::Pins;
use crate::probe;
use crate::procs::{self, Spec, wait_for};
use crate::render::{self, Layout, NODES, Ports};

pub const TRUST_DOMAIN: &str = "example.org";

pub fn workload_id(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/{sa}")
}

fn node_id(node: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/node/{node}")
}

/// A registration entry the lab created, kept so its TTL can be changed later.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<String>,
    pub dns: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Running {
    pub name: String,
    pub spec: Spec,
    pub pid: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    #[serde(default)]
    profile: Profile,
    layout: Layout,
    tools: ToolPaths,
    pg_user: Option<(u32, u32)>,
    components: Vec<Running>,
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ToolPaths {
    spire_server: PathBuf,
    spire_agent: PathBuf,
    spiffe_helper: PathBuf,
    envoy: PathBuf,
    pg_bin: PathBuf,
}

impl From<&Tools> for ToolPaths {
    fn from(t: &Tools) -> Self {
        ToolPaths {
            spire_server: t.spire_server.clone(),
            spire_agent: t.spire_agent.clone(),
            spiffe_helper: t.spiffe_helper.clone(),
            envoy: t.envoy.clone(),
            pg_bin: t.pg_bin.clone(),
        }
    }
}

/// The state directory for this checkout.
pub fn state_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("LAB_STATE_DIR") {
        return PathBuf::from(dir);
    }
    let repo = crate::project_root();
    // FNV-1a of the checkout's path: two checkouts never share state.
    let mut h: u32 = 0x811c9dc5;
    for b in repo.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x01000193);
    }
    PathBuf::from(format!("/tmp/spire-lab-{}-{h:08x}", unsafe {
        libc::geteuid()
    }))
}

fn state_file(root: &Path) -> PathBuf {
    root.join("state.json")
}

fn link() -> PathBuf {
    crate::project_root().join(".lab/local")
}

/// The uid and gid PostgreSQL runs as: `postgres` when we are root (it refuses root), else ours.
fn pg_user() -> anyhow::Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .context("running as root needs the `postgres` user, which the postgresql package creates: run `cargo xtask deps`")?;
    let f: Vec<&str> = line.split(':').collect();
    Ok(Some((f[2].parse()?, f[3].parse()?)))
}

pub struct LocalLab {
    state: State,
    root: PathBuf,
}

impl LocalLab {
    /// The SPIRE server's CLI and the socket it answers on.
    pub fn server_cli(&self) -> (PathBuf, PathBuf) {
        (
            self.state.tools.spire_server.clone(),
            self.layout().server_socket(),
        )
    }
}

fn step(n: usize, total: usize, what: &str) {
    println!("[{n:>2}/{total}] {what}");
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

/// The lab, or the benchmark's plaintext baseline of the same topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    #[default]
    Mtls,
    /// No SPIRE, no TLS anywhere: only `cargo xtask bench` uses it, to price mTLS.
    Plaintext,
}

impl Profile {
    pub fn root(self) -> PathBuf {
        match self {
            Profile::Mtls => state_root(),
            Profile::Plaintext => PathBuf::from(format!("{}-plaintext", state_root().display())),
        }
    }

    pub fn components(self) -> Vec<Component> {
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

/// Starts the lab; returns the handle when every component is ready.
pub fn up(sh: &Shell, port_offset: u16) -> anyhow::Result<LocalLab> {
    up_profile(sh, port_offset, Profile::Mtls)
}

pub fn up_profile(sh: &Shell, port_offset: u16, profile: Profile) -> anyhow::Result<LocalLab> {
    let started = Instant::now();
    let root = profile.root();
    if state_file(&root).exists() {
        let lab = LocalLab::open_at(&root)?;
        let dead: Vec<String> = lab
            .state
            .components
            .iter()
            .filter(|c| !c.pid.is_some_and(|p| procs::is_ours(p, &c.spec.program)))
            .map(|c| c.name.clone())
            .collect();
        if dead.is_empty() && lab.state.components.len() == profile.components().len() {
            println!(
                "The local lab is already up ({} components running): {}\n`cargo xtask status --local` shows them; `cargo xtask down --local` stops them.",
                lab.state.components.len(),
                lab.frontend_url()
            );
            return Ok(lab);
        }
        println!(
            "Recovering from an earlier run ({} not running): stopping what is left and starting again.",
            dead.join(", ")
        );
        down_at(&root)?;
    }

    let pins = Pins::load(&crate::project_root())?;
    let tools = deps::find(&pins).context("the local runtime needs its binaries")?;
    let ports = Ports::with_offset(port_offset);
    for (port, name) in ports.named() {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} ({name}) is in use: stop what uses it, or pass --port-offset N to shift every port"
            );
        }
    }

    step(
        1,
        2 + if profile == Profile::Mtls { 5 } else { 2 },
        "building frontend and backend (release)",
    );
    cmd!(sh, "cargo build --release --quiet -p frontend -p backend")
        .run()
        .context("build the services")?;

    let layout = Layout {
        root: root.clone(),
        ports,
    };
    let pg_user = pg_user()?;
    prepare_dirs(&layout, pg_user)?;
    render::write_local_configs(&crate::project_root().join("manifests"), &layout)?;
    if profile == Profile::Plaintext {
        render::write_plaintext_profile(&layout)?;
    }
    std::fs::copy(
        crate::project_root().join("manifests/backend/config/rbac.yaml"),
        layout.rbac_dir().join("rbac.yaml"),
    )?;
    let mut lab = LocalLab {
        root: root.clone(),
        state: State {
            layout,
            tools: ToolPaths::from(&tools),
            pg_user,
            profile,
            components: Vec::new(),
            entries: Vec::new(),
        },
    };
    lab.save()?;
    if pg_user.is_some() && profile == Profile::Mtls {
        let bin = lab.layout().p("bin");
        std::fs::create_dir_all(&bin)?;
        chmod(&bin, 0o755)?;
        std::fs::copy(&tools.spiffe_helper, lab.pg_helper())?;
    }
    if profile == Profile::Mtls {
        if let Some(parent) = link().parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(link());
        std::os::unix::fs::symlink(&root, link())?;
    }

    // Independent components start together; each is then awaited where the next needs it.
    use Component::*;
    let plan: Vec<(&[Component], &[Component])> = match profile {
        Profile::Mtls => vec![
            (&[SpireServer], &[SpireServer]),
            (
                &[Agent(0), Agent(1), Agent(2)],
                &[Agent(0), Agent(1), Agent(2)],
            ),
            // The first SVIDs appear once the server's entry cache has the new entries (about
            // 5 s); Envoys started later find their SDS secrets at once instead of backing off.
            (
                &[HelperPostgres, HelperBackend],
                &[HelperPostgres, HelperBackend],
            ),
            (
                &[Postgres, EnvoyBackend, EnvoyFrontend, Frontend],
                &[Postgres],
            ),
            (
                &[Backend],
                &[Backend, EnvoyBackend, EnvoyFrontend, Frontend],
            ),
        ],
        Profile::Plaintext => vec![
            (
                &[Postgres, EnvoyBackend, EnvoyFrontend, Frontend],
                &[Postgres],
            ),
            (
                &[Backend],
                &[Backend, EnvoyBackend, EnvoyFrontend, Frontend],
            ),
        ],
    };
    let total = plan.len() + 2;
    // initdb runs while SPIRE starts.
    let mut initdb = lab.start_initdb()?;
    let mut current = String::new();
    let result = (|| -> anyhow::Result<()> {
        let mut n = 1;
        for (start, wait) in plan {
            let names: Vec<String> = start.iter().map(|c| c.name()).collect();
            n += 1;
            step(n, total, &format!("start {}", names.join(", ")));
            for &c in start {
                current = c.name();
                if c == Postgres
                    && let Some(child) = initdb.take()
                {
                    finish_initdb(child)?;
                }
                lab.spawn(sh, c)?;
            }
            for &c in wait {
                current = c.name();
                let took = lab.wait_ready(sh, c)?;
                println!(
                    "        {:<20} ready ({:.1} s)",
                    c.name(),
                    took.as_secs_f64()
                );
            }
            if start == [SpireServer] {
                // Entries before the agents: each agent gets its workloads' entries on attesting.
                n += 1;
                step(
                    n,
                    total,
                    "registration entries (same SPIFFE IDs as on kind)",
                );
                lab.register(sh)?;
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let failed = current;
        eprintln!("\n✗ the local lab did not come up: {e:#}");
        let log = lab.layout().p(&format!("logs/{failed}.log"));
        eprintln!(
            "--- last lines of {failed} ({}):\n{}",
            log.display(),
            procs::tail(&log, 25)
        );
        eprintln!(
            "\nNext: `cargo xtask logs --local {failed}` for the whole log; `cargo xtask status --local`; \
             `cargo xtask down --local` cleans up before another `up --local`."
        );
        return Err(e);
    }
    println!(
        "\nThe lab is up in {:.1} s: open {}\nNext: cargo xtask status --local · cargo xtask scenario all --local · cargo xtask down --local",
        started.elapsed().as_secs_f64(),
        lab.frontend_url()
    );
    Ok(lab)
}

fn prepare_dirs(l: &Layout, pg: Option<(u32, u32)>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&l.root)?;
    chmod(&l.root, 0o755)?;
    for (dir, mode, owner) in [
        ("config", 0o755, None),
        ("logs", 0o755, None),
        ("spire-server", 0o700, None),
        ("spire-server/data", 0o700, None),
        ("agents", 0o755, None),
        ("certs", 0o755, None),
        ("certs/backend", 0o700, None),
        ("certs/postgres", 0o700, pg),
        ("postgres", 0o755, pg),
        ("postgres/data", 0o700, pg),
        ("postgres/run", 0o755, pg),
        ("envoy-rbac", 0o755, None),
    ] {
        let p = l.p(dir);
        std::fs::create_dir_all(&p)?;
        chmod(&p, mode)?;
        chown(&p, owner)?;
    }
    for node in NODES {
        // The Workload API socket is for every local user (the postgres user included).
        let d = l.p(&format!("agents/{node}"));
        std::fs::create_dir_all(d.join("data"))?;
        chmod(&d, 0o755)?;
        chmod(&d.join("data"), 0o700)?;
    }
    Ok(())
}

impl LocalLab {
    /// The running lab of this checkout.
    /// The backend's SVID directory and PostgreSQL's port (for the bench's direct connections).
    pub fn backend_svid_dir_and_db_port(&self) -> (PathBuf, u16) {
        (self.layout().certs("backend"), self.ports().postgres)
    }

    pub fn open() -> anyhow::Result<LocalLab> {
        Self::open_at(&state_root())
    }

    pub fn open_at(root: &Path) -> anyhow::Result<LocalLab> {
        let root = root.to_owned();
        let text = std::fs::read_to_string(state_file(&root)).map_err(|_| {
            anyhow::anyhow!(
                "the local lab is not up (no {}): run `cargo xtask up --local`",
                state_file(&root).display()
            )
        })?;
        let state: State = serde_json::from_str(&text).context("read the local lab's state")?;
        Ok(LocalLab { state, root })
    }

    fn save(&self) -> anyhow::Result<()> {
        std::fs::write(
            state_file(&self.root),
            serde_json::to_string_pretty(&self.state)?,
        )?;
        Ok(())
    }

    fn layout(&self) -> &Layout {
        &self.state.layout
    }

    fn ports(&self) -> &Ports {
        &self.state.layout.ports
    }

    fn spec(&self, c: Component) -> anyhow::Result<Spec> {
        let l = self.layout();
        let t = &self.state.tools;
        let cfg = |name: &str| l.config(name).display().to_string();
        let log = l.p(&format!("logs/{}.log", c.name()));
        let release = crate::project_root().join("target/release");
        let (program, args, user): (PathBuf, Vec<String>, Option<(u32, u32)>) = match c {
            Component::SpireServer => (
                t.spire_server.clone(),
                vec!["run".into(), "-config".into(), cfg("spire-server.conf")],
                None,
            ),
            Component::Agent(i) => {
                let node = NODES[i];
                let token = std::fs::read_to_string(l.p(&format!("agents/{node}/join-token")))
                    .context("the agent's join token is missing")?;
                (
                    t.spire_agent.clone(),
                    vec![
                        "run".into(),
                        "-config".into(),
                        cfg(&format!("agent-{node}.conf")),
                        "-joinToken".into(),
                        token.trim().into(),
                    ],
                    None,
                )
            }
            Component::HelperPostgres => (
                self.pg_helper(),
                vec!["-config".into(), cfg("helper-postgres.conf")],
                self.state.pg_user,
            ),
            Component::HelperBackend => (
                t.spiffe_helper.clone(),
                vec!["-config".into(), cfg("helper-backend.conf")],
                None,
            ),
            Component::Postgres => (
                t.pg_bin.join("postgres"),
                vec![
                    "-D".into(),
                    l.p("postgres/data").display().to_string(),
                    "-c".into(),
                    format!("config_file={}", cfg("postgresql.conf")),
                ],
                self.state.pg_user,
            ),
            Component::Backend => (
                release.join("backend"),
                vec![
                    "--listen".into(),
                    format!("127.0.0.1:{}", self.ports().backend),
                    "--svid-dir".into(),
                    l.certs("backend").display().to_string(),
                    "--db-host".into(),
                    "127.0.0.1".into(),
                    "--db-port".into(),
                    self.ports().postgres.to_string(),
                ]
                .into_iter()
                .chain(
                    (self.state.profile == Profile::Plaintext)
                        .then(|| "--db-insecure-plaintext".into()),
                )
                .collect(),
                None,
            ),
            Component::EnvoyBackend | Component::EnvoyFrontend => {
                let which = if c == Component::EnvoyBackend {
                    "backend"
                } else {
                    "frontend"
                };
                (
                    t.envoy.clone(),
                    vec![
                        "-c".into(),
                        cfg(&format!("envoy-{which}.yaml")),
                        "--disable-hot-restart".into(),
                        "--log-level".into(),
                        "info".into(),
                        "--drain-time-s".into(),
                        "1".into(),
                    ],
                    None,
                )
            }
            Component::Frontend => (
                release.join("frontend"),
                vec![
                    "--listen".into(),
                    format!("127.0.0.1:{}", self.ports().frontend),
                    "--backend-url".into(),
                    format!("http://127.0.0.1:{}", self.ports().frontend_envoy),
                    "--envoy-admin-url".into(),
                    self.envoy_admin_url(false),
                ],
                None,
            ),
        };
        Ok(Spec {
            program,
            args,
            env: vec![],
            user,
            log,
            stop_signal: (c == Component::Postgres).then_some(libc::SIGINT),
        })
    }

    /// The spiffe-helper the postgres user runs: a copy in the state directory when we are root,
    /// since the cache (under root's home) is not reachable by that user.
    fn pg_helper(&self) -> PathBuf {
        match self.state.pg_user {
            Some(_) => self.layout().p("bin/spiffe-helper"),
            None => self.state.tools.spiffe_helper.clone(),
        }
    }

    /// Starts one component (first-time setup included) and waits until it is ready.
    fn launch(&mut self, sh: &Shell, c: Component) -> anyhow::Result<Duration> {
        self.spawn(sh, c)?;
        self.wait_ready(sh, c)
    }

    /// Starts one component's process (first-time setup included), without waiting.
    fn spawn(&mut self, sh: &Shell, c: Component) -> anyhow::Result<()> {
        match c {
            Component::Agent(i) => self.join_token(sh, NODES[i])?,
            Component::Postgres => self.initdb()?,
            _ => {}
        }
        let spec = self.spec(c)?;
        let pid = procs::spawn(&spec)?;
        match self
            .state
            .components
            .iter_mut()
            .find(|r| r.name == c.name())
        {
            Some(r) => {
                r.pid = Some(pid);
                r.spec = spec;
            }
            None => self.state.components.push(Running {
                name: c.name(),
                spec,
                pid: Some(pid),
            }),
        }
        self.save()
    }

    /// Waits until a started component is ready, then does what follows its start once.
    fn wait_ready(&mut self, sh: &Shell, c: Component) -> anyhow::Result<Duration> {
        let limit = Duration::from_secs(if c == Component::SpireServer { 60 } else { 30 });
        let r = self.running(c).context("not started")?.clone();
        let pid = r.pid.context("not started")?;
        let (_, took) = wait_for(limit, || {
            if !procs::is_ours(pid, &r.spec.program) {
                bail!("{} exited", c.name());
            }
            self.ready(sh, c)
        })
        .with_context(|| format!("{} did not become ready", c.name()))?;
        if c == Component::SpireServer {
            let server = &self.state.tools.spire_server;
            let sock = self.layout().server_socket();
            let bundle = cmd!(sh, "{server} bundle show -socketPath {sock}")
                .quiet()
                .read()?;
            std::fs::write(self.layout().bundle(), bundle + "\n")?;
        }
        if c == Component::Postgres {
            self.init_database()?;
        }
        Ok(took)
    }

    /// One readiness check per component.
    fn ready(&self, sh: &Shell, c: Component) -> anyhow::Result<()> {
        let l = self.layout();
        let t = &self.state.tools;
        match c {
            Component::SpireServer => {
                let sock = l.server_socket();
                let server = &t.spire_server;
                cmd!(sh, "{server} healthcheck -socketPath {sock}")
                    .quiet()
                    .ignore_stderr()
                    .ignore_stdout()
                    .run()?;
            }
            Component::Agent(i) => {
                let sock = l.agent_socket(NODES[i]);
                let agent = &t.spire_agent;
                cmd!(sh, "{agent} healthcheck -socketPath {sock}")
                    .quiet()
                    .ignore_stderr()
                    .ignore_stdout()
                    .run()?;
            }
            Component::HelperPostgres => {
                svid::SvidFiles::in_dir(l.certs("postgres")).load()?;
            }
            Component::HelperBackend => {
                svid::SvidFiles::in_dir(l.certs("backend")).load()?;
            }
            Component::Postgres => {
                self.psql("postgres", "SELECT 1")?;
                if self.state.profile == Profile::Mtls {
                    probe::server_chain(&format!("127.0.0.1:{}", self.ports().postgres), true)?;
                }
            }
            Component::Backend => {
                expect_ok(&format!("http://127.0.0.1:{}/readyz", self.ports().backend))?
            }
            Component::EnvoyBackend | Component::EnvoyFrontend => {
                let backend = c == Component::EnvoyBackend;
                let admin = self.envoy_admin_url(backend);
                // Through the readiness listener the kubelet probes on kind.
                let p = self.ports();
                let ready = if backend {
                    p.backend_envoy_ready
                } else {
                    p.frontend_envoy_ready
                };
                expect_ok(&format!("http://127.0.0.1:{ready}/ready"))?;
                if self.state.profile == Profile::Mtls {
                    probe::envoy_cert(&admin)?;
                }
            }
            Component::Frontend => expect_ok(&format!("{}/readyz", self.frontend_url()))?,
        }
        Ok(())
    }

    fn join_token(&self, sh: &Shell, node: &str) -> anyhow::Result<()> {
        let sock = self.layout().server_socket();
        let id = node_id(node);
        let server = &self.state.tools.spire_server;
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
        let path = self.layout().p(&format!("agents/{node}/join-token"));
        std::fs::write(&path, token)?;
        chmod(&path, 0o600)
    }

    /// Entries with the same SPIFFE IDs as on kind; unix selectors (uid and binary path) here.
    fn register(&mut self, sh: &Shell) -> anyhow::Result<()> {
        let uid = unsafe { libc::geteuid() };
        let pg_uid = self.state.pg_user.map_or(uid, |(u, _)| u);
        let canon = |p: &Path| {
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.to_owned())
                .display()
                .to_string()
        };
        let envoy = canon(&self.state.tools.envoy);
        let helper = canon(&self.state.tools.spiffe_helper);
        let wanted = [
            ("frontend", "frontend-node", uid, envoy.clone(), None),
            (
                "backend",
                "backend-node",
                uid,
                envoy.clone(),
                Some("backend"),
            ),
            (
                "backend",
                "backend-node",
                uid,
                helper.clone(),
                Some("backend"),
            ),
            (
                "postgres",
                "postgres-node",
                pg_uid,
                canon(&self.pg_helper()),
                Some("postgres"),
            ),
        ];
        for (sa, node, uid, path, dns) in wanted {
            let entry = Entry {
                id: String::new(),
                spiffe_id: workload_id(sa),
                parent_id: node_id(node),
                selectors: vec![format!("unix:uid:{uid}"), format!("unix:path:{path}")],
                dns: dns.map(Into::into),
            };
            let id = self.entry_create(sh, &entry, None)?;
            println!(
                "        {} ← {} ({})",
                entry.spiffe_id,
                node,
                entry.selectors.join(", ")
            );
            self.state.entries.push(Entry { id, ..entry });
        }
        self.save()
    }

    /// The `spire-server entry create|update` arguments that describe `e`.
    fn entry_args(e: &Entry, ttl: Option<u32>) -> Vec<String> {
        let mut args = vec![
            "-parentID".to_owned(),
            e.parent_id.clone(),
            "-spiffeID".into(),
            e.spiffe_id.clone(),
        ];
        for s in &e.selectors {
            args.extend(["-selector".into(), s.clone()]);
        }
        if let Some(d) = &e.dns {
            args.extend(["-dns".into(), d.clone()]);
        }
        if let Some(t) = ttl {
            args.extend(["-x509SVIDTTL".into(), t.to_string()]);
        }
        args
    }

    pub fn entry_create(&self, sh: &Shell, e: &Entry, ttl: Option<u32>) -> anyhow::Result<String> {
        let sock = self.layout().server_socket();
        let args = Self::entry_args(e, ttl);
        let server = &self.state.tools.spire_server;
        let out = cmd!(
            sh,
            "{server} entry create -socketPath {sock} -output json {args...}"
        )
        .quiet()
        .read()
        .with_context(|| format!("create the entry for {}", e.spiffe_id))?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["results"][0]["entry"]["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no entry id in {out}"))
    }

    /// Sets the entry's X.509-SVID TTL (`None`: the server's default).
    fn entry_update(&self, sh: &Shell, e: &Entry, ttl: Option<u32>) -> anyhow::Result<()> {
        let sock = self.layout().server_socket();
        let id = &e.id;
        let args = Self::entry_args(e, Some(ttl.unwrap_or(0)));
        let server = &self.state.tools.spire_server;
        cmd!(
            sh,
            "{server} entry update -socketPath {sock} -entryID {id} {args...}"
        )
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("update the entry for {}", e.spiffe_id))
    }

    fn pg_command(&self, program: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new(self.state.tools.pg_bin.join(program));
        if let Some((uid, gid)) = self.state.pg_user {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// psql as the database superuser over the Unix socket (peer authentication), with `input`
    /// (`-c SQL` or `-f FILE`); its unaligned output.
    fn psql_run(&self, db: &str, input: [&std::ffi::OsStr; 2]) -> anyhow::Result<String> {
        let out = self
            .pg_command("psql")
            .arg("-h")
            .arg(self.layout().pg_run())
            .args([
                "-p",
                &self.ports().postgres.to_string(),
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-AtXq",
            ])
            .args(input)
            .output()?;
        if !out.status.success() {
            bail!("psql: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// SQL as the database superuser.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        self.psql_run(db, ["-c".as_ref(), sql.as_ref()])
    }

    /// Starts `initdb` for a new data directory (None when it exists); wait on the child.
    fn start_initdb(&self) -> anyhow::Result<Option<std::process::Child>> {
        let data = self.layout().p("postgres/data");
        if data.join("PG_VERSION").exists() {
            return Ok(None);
        }
        let child = self
            .pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["--auth=peer", "-E", "UTF8", "--locale=C", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("start initdb")?;
        Ok(Some(child))
    }

    fn initdb(&self) -> anyhow::Result<()> {
        if let Some(child) = self.start_initdb()? {
            finish_initdb(child)?;
        }
        Ok(())
    }

    /// The demo database from manifests/postgres/config/init.sql, the first time only.
    fn init_database(&self) -> anyhow::Result<()> {
        if self.psql(
            "postgres",
            "SELECT 1 FROM pg_database WHERE datname = 'demo'",
        )? == "1"
        {
            return Ok(());
        }
        self.psql("postgres", "CREATE DATABASE demo")?;
        let init = self.layout().config("init.sql");
        self.psql_run("demo", ["-f".as_ref(), init.as_os_str()])
            .context("init.sql")?;
        if self.state.profile == Profile::Plaintext {
            // No client certificate, no SPIFFE ID: the baseline reads without the identity check.
            self.psql("demo", "ALTER TABLE orders DISABLE ROW LEVEL SECURITY")?;
        }
        Ok(())
    }

    fn running(&self, c: Component) -> Option<&Running> {
        self.state.components.iter().find(|r| r.name == c.name())
    }

    pub fn pid(&self, c: Component) -> Option<u32> {
        self.running(c)
            .and_then(|r| r.pid.filter(|p| procs::is_ours(*p, &r.spec.program)))
    }

    pub fn print_status(&self) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let p = self.ports();
        println!(
            "Local lab in {} (linked from .lab/local)\n",
            self.root.display()
        );
        println!("COMPONENT                   PID   RSS MB  ADDRESS                         READY");
        for c in Component::ALL {
            let address = match c {
                Component::SpireServer => format!("127.0.0.1:{}", p.spire_server),
                Component::Agent(i) => self
                    .layout()
                    .agent_socket(NODES[i])
                    .file_name()
                    .map(|_| format!("agents/{}/api.sock", NODES[i]))
                    .unwrap_or_default(),
                Component::Postgres => format!("127.0.0.1:{}", p.postgres),
                Component::Backend => format!("127.0.0.1:{}", p.backend),
                Component::EnvoyBackend => format!(
                    "127.0.0.1:{} (admin {})",
                    p.backend_envoy, p.backend_envoy_admin
                ),
                Component::EnvoyFrontend => format!(
                    "127.0.0.1:{} (admin {})",
                    p.frontend_envoy, p.frontend_envoy_admin
                ),
                Component::Frontend => format!("127.0.0.1:{}", p.frontend),
                Component::HelperBackend => "certs/backend".into(),
                Component::HelperPostgres => "certs/postgres".into(),
            };
            let (pid, ready) = match self.pid(c) {
                Some(pid) => (
                    pid.to_string(),
                    match self.ready(&sh, c) {
                        Ok(()) => "yes".to_owned(),
                        Err(e) => format!("no: {e:#}"),
                    },
                ),
                None => ("-".into(), "not running".into()),
            };
            let rss = self
                .pid(c)
                .and_then(procs::rss_kib)
                .map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0));
            println!(
                "{:<22} {:>8} {:>8}  {:<30} {}",
                c.name(),
                pid,
                rss,
                address,
                ready
            );
        }
        println!(
            "\nSVID HOLDER                SPIFFE ID                                  SERIAL                             EXPIRES IN"
        );
        for h in self.holdings() {
            match h {
                Ok(h) => println!(
                    "{:<26} {:<42} {:<34} {}",
                    h.holder,
                    h.spiffe_id.unwrap_or_else(|| "?".into()),
                    h.serial,
                    h.seconds_left.map_or("?".into(), |s| format!("{s} s"))
                ),
                Err(e) => println!("{e:#}"),
            }
        }
        Ok(())
    }
}

fn finish_initdb(child: std::process::Child) -> anyhow::Result<()> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn expect_ok(url: &str) -> anyhow::Result<()> {
    let (status, body) = probe::get(url)?;
    if status != 200 {
        bail!("{url} answered HTTP {status}: {}", body.trim());
    }
    Ok(())
}

/// Stops every component of this checkout's lab by pid, then removes its state.
pub fn down() -> anyhow::Result<()> {
    down_at(&state_root())
}

/// Stops the lab whose state is in `root` (the lab, or the bench's plaintext profile).
pub fn down_at(root: &Path) -> anyhow::Result<()> {
    let root = root.to_owned();
    let Ok(lab) = LocalLab::open_at(&root) else {
        println!("The local lab is not up; nothing to stop.");
        if root == state_root() {
            let _ = std::fs::remove_file(link());
        }
        return Ok(());
    };
    let mut stopped = 0;
    let mut left = Vec::new();
    for r in lab.state.components.iter().rev() {
        if let Some(pid) = r.pid
            && procs::is_ours(pid, &r.spec.program)
        {
            {
                if procs::stop(pid, &r.spec, Duration::from_secs(5)) {
                    println!("stopped {:<20} pid {pid}", r.name);
                    stopped += 1;
                } else {
                    left.push(format!("{} (pid {pid})", r.name));
                }
            }
        }
    }
    if !left.is_empty() {
        bail!(
            "could not stop: {}; the state stays in {}",
            left.join(", "),
            root.display()
        );
    }
    std::fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    if root == state_root() {
        let _ = std::fs::remove_file(link());
    }
    println!("The local lab is down: {stopped} processes stopped, state removed.");
    Ok(())
}

impl Lab for LocalLab {
    fn runtime(&self) -> &'static str {
        "local"
    }

    fn frontend_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports().frontend)
    }

    fn envoy_admin_url(&self, backend: bool) -> String {
        let p = if backend {
            self.ports().backend_envoy_admin
        } else {
            self.ports().frontend_envoy_admin
        };
        format!("http://127.0.0.1:{p}")
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
        self.launch(&sh, c).map(|_| ())
    }

    fn instance(&self, c: Component) -> Option<String> {
        self.pid(c).map(|p| format!("pid {p}"))
    }

    fn set_policy(&mut self, p: Policy) -> anyhow::Result<()> {
        let file = match p {
            Policy::AllowFrontend => "rbac.yaml",
            Policy::Deny => "rbac-deny.yaml",
        };
        // Written beside, then renamed over: Envoy sees one whole file change.
        let dir = self.layout().rbac_dir();
        let tmp = dir.join(".rbac.yaml.new");
        std::fs::copy(
            crate::project_root()
                .join("manifests/backend/config")
                .join(file),
            &tmp,
        )?;
        std::fs::rename(&tmp, dir.join("rbac.yaml"))?;
        Ok(())
    }

    fn set_svid_ttl(&mut self, ttl: Option<u32>) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        for e in &self.state.entries {
            if e.spiffe_id
                .starts_with(&format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/"))
                && !e.spiffe_id.ends_with("/rogue")
            {
                self.entry_update(&sh, e, ttl)?;
            }
        }
        Ok(())
    }

    fn log(&self, c: Component) -> anyhow::Result<String> {
        let path = self.layout().p(&format!("logs/{}.log", c.name()));
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }

    fn trust_bundle(&self) -> anyhow::Result<Vec<openssl::x509::X509>> {
        let sh = Shell::new()?;
        let sock = self.layout().server_socket();
        let server = &self.state.tools.spire_server;
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
                holder: "backend files",
                seconds_left: Some(s.seconds_left()),
                spiffe_id: Some(s.spiffe_id.to_string()),
                serial: s.serial,
            })
        };
        vec![
            Holding::of_envoy("frontend Envoy", &self.envoy_admin_url(false)),
            Holding::of_envoy("backend Envoy", &self.envoy_admin_url(true)),
            files(),
            Holding::of_postgres(&format!("127.0.0.1:{}", self.ports().postgres)),
        ]
    }

    fn presented_chains(&self) -> Vec<(&'static str, anyhow::Result<Vec<openssl::x509::X509>>)> {
        let files = svid::SvidFiles::in_dir(self.layout().certs("backend"));
        vec![
            (
                "backend Envoy (served on its mTLS listener)",
                probe::server_chain(&format!("127.0.0.1:{}", self.ports().backend_envoy), false),
            ),
            (
                "PostgreSQL (served to TLS clients)",
                probe::server_chain(&format!("127.0.0.1:{}", self.ports().postgres), true),
            ),
            (
                "backend files (svid.pem)",
                files.load().map(|s| s.chain).map_err(Into::into),
            ),
        ]
    }

    fn backend_readyz(&self) -> anyhow::Result<(u16, serde_json::Value)> {
        let (status, body) =
            probe::get(&format!("http://127.0.0.1:{}/readyz", self.ports().backend))?;
        Ok((
            status,
            serde_json::from_str(&body).context("/readyz answered non-JSON")?,
        ))
    }

    fn backend_envoy_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports().backend_envoy)
    }

    fn fetch_svid_unregistered(&self) -> anyhow::Result<String> {
        let sh = Shell::new()?;
        let agent = &self.state.tools.spire_agent;
        let sock = self.layout().agent_socket("backend-node");
        // spire-agent itself is no registered workload: its binary path matches no entry.
        let out = cmd!(sh, "{agent} api fetch x509 -socketPath {sock} -timeout 3s")
            .quiet()
            .ignore_status()
            .output()?;
        let text = crate::procs::printed(&out);
        if out.status.success() {
            Ok(text)
        } else {
            bail!("{}", text.trim())
        }
    }

    fn issue_rogue_svid(&mut self) -> anyhow::Result<PathBuf> {
        let sh = Shell::new()?;
        let agent = std::fs::canonicalize(&self.state.tools.spire_agent)?;
        let uid = unsafe { libc::geteuid() };
        let entry = Entry {
            id: String::new(),
            spiffe_id: workload_id("rogue"),
            parent_id: node_id("backend-node"),
            selectors: vec![
                format!("unix:uid:{uid}"),
                format!("unix:path:{}", agent.display()),
            ],
            dns: Some("backend".into()),
        };
        let id = self.entry_create(&sh, &entry, None)?;
        self.state.entries.push(Entry { id, ..entry });
        self.save()?;
        let dir = self.layout().p("rogue");
        std::fs::create_dir_all(&dir)?;
        chmod(&dir, 0o700)?;
        let sock = self.layout().agent_socket("backend-node");
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

    fn remove_rogue(&mut self) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let server = &self.state.tools.spire_server;
        let sock = self.layout().server_socket();
        let rogue = workload_id("rogue");
        for e in self.state.entries.iter().filter(|e| e.spiffe_id == rogue) {
            let id = &e.id;
            cmd!(sh, "{server} entry delete -socketPath {sock} -entryID {id}")
                .quiet()
                .ignore_stdout()
                .run()?;
        }
        self.state.entries.retain(|e| e.spiffe_id != rogue);
        let _ = std::fs::remove_dir_all(self.layout().p("rogue"));
        self.save()
    }

    fn query_postgres_with(&self, dir: &Path) -> anyhow::Result<String> {
        let conninfo = format!(
            "host=127.0.0.1 port={} dbname=demo user=backend sslmode=verify-ca sslcert={} sslkey={} sslrootcert={}",
            self.ports().postgres,
            dir.join("svid.0.pem").display(),
            dir.join("svid.0.key").display(),
            dir.join("bundle.0.pem").display()
        );
        let out = std::process::Command::new(self.state.tools.pg_bin.join("psql"))
            .args([conninfo.as_str(), "-AtXc", "SELECT count(*) FROM orders"])
            .output()?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
