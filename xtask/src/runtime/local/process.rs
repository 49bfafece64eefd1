//! One component of the local runtime as a process: how it is started (its `Spec`), first-time
//! setup before it starts, and the one readiness check each component has.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use contract::Workload;
use xshell::{Shell, cmd};

use super::layout::{SPIRE_OIDC_UID, node_of, pod_of, workload_uid};
use super::pods::Pod;
use super::postgres::Server;
use super::state::Running;
use super::{LocalLab, Profile};
use crate::lab::{Component, Lab};
use crate::probe;
use crate::procs::{self, Spec, wait_for};

impl LocalLab {
    /// The uid and gid a component runs as: its workload's with pods (PostgreSQL's pod as the
    /// `postgres` user whenever we are root, since it refuses root); SPIRE as the lab's user.
    pub(super) fn user_of(&self, c: Component) -> Option<(u32, u32)> {
        let pods = self.layout().network.is_pods();
        let uid = |w: Workload| pods.then(|| (workload_uid(w), workload_uid(w)));
        match pod_of(c) {
            Pod::Postgres | Pod::SpireDb => self.state.pg_user,
            Pod::Frontend => uid(Workload::Frontend),
            Pod::Backend => uid(Workload::Backend),
            Pod::Ledger => uid(Workload::Ledger),
            Pod::OpenBao => uid(Workload::OpenBao),
            Pod::SpireOidc => pods.then_some((SPIRE_OIDC_UID, SPIRE_OIDC_UID)),
            Pod::SpireServer(_) | Pod::SpireService | Pod::Node(_) | Pod::Insider => None,
        }
    }

    /// A program as a component runs it: the copy in the state directory where another uid
    /// must reach it (root's cache and checkout are not), else where it is.
    pub(super) fn program(&self, name: &str, original: &std::path::Path) -> PathBuf {
        if self.state.staged.iter().any(|s| s == name) {
            self.layout().bin(name)
        } else {
            original.to_owned()
        }
    }

    pub(super) fn spec(&self, c: Component) -> anyhow::Result<Spec> {
        let l = self.layout();
        let t = &self.state.tools;
        let cfg = |name: &str| l.config(name).display().to_string();
        let log = l.p(&format!("logs/{}.log", c.name()));
        let release = crate::project_root().join("target/release");
        let user = self.user_of(c);
        let mut env = vec![];
        let (program, args): (PathBuf, Vec<String>) = match c {
            Component::SpireDatastore => (
                t.pg_bin.join("postgres"),
                vec![
                    "-D".into(),
                    l.spire_db("data").display().to_string(),
                    "-c".into(),
                    format!("config_file={}", cfg("datastore.conf")),
                ],
            ),
            Component::SpireServer(r) => {
                // Read at each start, never kept in the state file (`Spec::env` is not saved).
                env.push(("SPIRE_DB_PASSWORD".to_owned(), self.datastore_password()?));
                (
                    t.spire_server.clone(),
                    vec![
                        "run".into(),
                        "-config".into(),
                        cfg(&format!("spire-server-{r}.conf")),
                        "-expandEnv".into(),
                    ],
                )
            }
            Component::Agent(w) => {
                let node = node_of(w);
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
                )
            }
            Component::HelperPostgres => (
                self.program("spiffe-helper", &t.spiffe_helper),
                vec!["-config".into(), cfg("helper-postgres.conf")],
            ),
            Component::HelperBackend => (
                self.program("spiffe-helper", &t.spiffe_helper),
                vec!["-config".into(), cfg("helper-backend.conf")],
            ),
            Component::Postgres => (
                t.pg_bin.join("postgres"),
                vec![
                    "-D".into(),
                    l.p("postgres/data").display().to_string(),
                    "-c".into(),
                    format!("config_file={}", cfg("postgresql.conf")),
                ],
            ),
            Component::Backend => (
                self.program("backend", &release.join("backend")),
                vec![
                    "--listen".into(),
                    format!("127.0.0.1:{}", self.ports().backend),
                    "--health-listen".into(),
                    format!(
                        "{}:{}",
                        l.network.public_bind(),
                        self.ports().backend_health
                    ),
                    "--svid-dir".into(),
                    l.certs("backend").display().to_string(),
                    "--db-host".into(),
                    l.addr(Pod::Postgres).to_string(),
                    "--db-port".into(),
                    self.ports().postgres.to_string(),
                    "--log-format".into(),
                    "json".into(),
                ]
                .into_iter()
                .chain(match self.state.profile {
                    // The baseline has no ledger and no OpenBao (no SPIRE): the bench skips
                    // those hops.
                    Profile::Plaintext => vec!["--db-insecure-plaintext".into()],
                    Profile::Mtls => vec![
                        "--ledger-addr".into(),
                        format!("{}:{}", l.addr(Pod::Ledger), self.ports().ledger),
                        "--openbao-addr".into(),
                        format!("{}:{}", l.addr(Pod::OpenBao), self.ports().openbao),
                    ],
                })
                .collect(),
            ),
            Component::Ledger => (
                self.program("ledger", &release.join("ledger")),
                vec![
                    "--listen".into(),
                    format!("{}:{}", l.network.public_bind(), self.ports().ledger),
                    "--health-listen".into(),
                    format!("{}:{}", l.network.public_bind(), self.ports().ledger_health),
                    "--workload-api".into(),
                    format!(
                        "unix://{}",
                        l.agent_socket(node_of(Workload::Ledger)).display()
                    ),
                    "--log-format".into(),
                    "json".into(),
                ],
            ),
            Component::SpireOidc => (
                self.program("oidc-discovery-provider", &t.oidc_provider),
                vec!["-config".into(), cfg("spire-oidc.conf")],
            ),
            Component::HelperOpenBao => (
                self.program("spiffe-helper", &t.spiffe_helper),
                vec!["-config".into(), cfg("helper-openbao.conf")],
            ),
            Component::OpenBao => (
                self.program("bao", &t.bao),
                vec!["server".into(), format!("-config={}", cfg("openbao.hcl"))],
            ),
            Component::EnvoyBackend | Component::EnvoyFrontend => {
                let which = if c == Component::EnvoyBackend {
                    "backend"
                } else {
                    "frontend"
                };
                (
                    self.program("envoy", &t.envoy),
                    vec![
                        "-c".into(),
                        cfg(&format!("envoy-{which}.yaml")),
                        "--disable-hot-restart".into(),
                        "--log-level".into(),
                        "info".into(),
                        "--drain-time-s".into(),
                        "1".into(),
                        // Access log lines reach the log within a second (default: ten).
                        "--file-flush-interval-msec".into(),
                        "1000".into(),
                    ],
                )
            }
            Component::Frontend => (
                self.program("frontend", &release.join("frontend")),
                vec![
                    "--listen".into(),
                    format!("127.0.0.1:{}", self.ports().frontend),
                    "--backend-url".into(),
                    format!("http://127.0.0.1:{}", self.ports().frontend_envoy),
                    "--envoy-admin-url".into(),
                    format!("http://127.0.0.1:{}", self.ports().frontend_envoy_admin),
                    "--log-format".into(),
                    "json".into(),
                ],
            ),
        };
        Ok(Spec {
            program,
            args,
            env,
            user,
            log,
            stop_signal: matches!(c, Component::Postgres | Component::SpireDatastore)
                .then_some(libc::SIGINT),
            netns: l.network.netns(pod_of(c)),
        })
    }

    /// Starts one component (first-time setup included) and waits until it is ready.
    pub(super) fn launch(&mut self, sh: &Shell, c: Component) -> anyhow::Result<Duration> {
        self.spawn(sh, c)?;
        self.wait_ready(sh, c)
    }

    /// Starts one component's process (first-time setup included), without waiting.
    pub(super) fn spawn(&mut self, sh: &Shell, c: Component) -> anyhow::Result<()> {
        match c {
            // A token made at registration is used once; a restarted agent gets a new one, and
            // the agent it replaces (which cannot attest again) is evicted, as an operator
            // evicts a node that is gone.
            Component::Agent(w) if !self.has_join_token(node_of(w)) => {
                self.evict_previous_agent(sh, node_of(w))?;
                self.join_token(sh, node_of(w))?
            }
            Component::Postgres => self.initdb(Server::Demo)?,
            Component::SpireOidc => self.spire_oidc_cert()?,
            Component::SpireDatastore => {
                self.datastore_credentials()?;
                self.initdb(Server::Datastore)?
            }
            _ => {}
        }
        let spec = self.spec(c)?;
        let pid = procs::spawn(&spec)?;
        if let Component::Agent(w) = c {
            self.forget_join_token(node_of(w))?;
        }
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
    pub(super) fn wait_ready(&mut self, sh: &Shell, c: Component) -> anyhow::Result<Duration> {
        let limit = Duration::from_secs(if matches!(c, Component::SpireServer(_)) {
            60
        } else {
            30
        });
        let r = self.running(c).context("not started")?.clone();
        let pid = r.pid.context("not started")?;
        let (_, took) = wait_for(limit, || {
            if !procs::is_ours(pid, &r.spec.program) {
                bail!("{} exited", c.name());
            }
            self.ready(sh, c)
        })
        .with_context(|| format!("{} did not become ready", c.name()))?;
        if c == Component::Postgres {
            self.init_database()?;
        }
        if c == Component::OpenBao {
            // Sealed at every start: unsealed with the key kept in the state directory, and
            // (again) configured.
            let (_, more) = wait_for(limit, || self.unseal_and_configure_openbao())
                .context("OpenBao did not become ready")?;
            return Ok(took + more);
        }
        Ok(took)
    }

    /// One readiness check per component.
    pub(super) fn ready(&self, sh: &Shell, c: Component) -> anyhow::Result<()> {
        let l = self.layout();
        let t = &self.state.tools;
        match c {
            Component::SpireDatastore => {
                self.psql(Server::Datastore, "spire", "SELECT 1")?;
            }
            Component::SpireServer(r) => {
                let sock = l.server_socket(r);
                let server = &t.spire_server;
                cmd!(sh, "{server} healthcheck -socketPath {sock}")
                    .quiet()
                    .ignore_stderr()
                    .ignore_stdout()
                    .run()?;
            }
            Component::Agent(w) => {
                let sock = l.agent_socket(node_of(w));
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
            Component::HelperOpenBao => {
                svid::SvidFiles::in_dir(l.certs("openbao")).load()?;
            }
            Component::SpireOidc => expect_ok(&format!(
                "http://{}/ready",
                self.reach(Pod::SpireOidc, self.ports().spire_oidc_health)?
            ))?,
            // Answering at all (sealed or not); unsealing follows in `wait_ready`.
            Component::OpenBao => {
                self.openbao_status()?;
            }
            Component::Postgres => {
                self.psql(Server::Demo, "postgres", "SELECT 1")?;
                if self.state.profile == Profile::Mtls {
                    probe::server_chain(&self.postgres_addr(), true)?;
                }
            }
            Component::Backend => expect_ok(&format!(
                "http://{}/readyz",
                self.reach(Pod::Backend, self.ports().backend)?
            ))?,
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
                expect_ok(&format!("http://{}/ready", self.reach(pod_of(c), ready)?))?;
                if self.state.profile == Profile::Mtls {
                    probe::envoy_certs(&admin)?
                        .leaf()
                        .context("Envoy holds no certificate yet")?;
                }
            }
            Component::Frontend => expect_ok(&format!(
                "http://{}/readyz",
                self.reach(Pod::Frontend, self.ports().frontend)?
            ))?,
            Component::Ledger => expect_ok(&format!(
                "http://{}/readyz",
                self.reach(Pod::Ledger, self.ports().ledger_health)?
            ))?,
        }
        Ok(())
    }
}

fn expect_ok(url: &str) -> anyhow::Result<()> {
    let (status, body) = probe::get(url)?;
    if status != 200 {
        bail!("{url} answered HTTP {status}: {}", body.trim());
    }
    Ok(())
}
