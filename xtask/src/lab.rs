//! The runtime-neutral side of the lab: choosing a runtime, and the small handle scenarios use.

use anyhow::bail;
use clap::ValueEnum;
use xshell::{Shell, cmd};

use crate::local::{self, LocalLab};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// kind when a Docker engine answers, else local.
    Auto,
    /// A kind cluster named spire-demo (laptops with Docker).
    Kind,
    /// Every component as a process on this machine.
    Local,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RuntimeArgs {
    /// Where the lab runs.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Auto)]
    pub runtime: RuntimeChoice,
    /// Shorthand for `--runtime local`.
    #[arg(long)]
    pub local: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Kind,
    Local,
}

impl RuntimeArgs {
    pub fn resolve(&self, sh: &Shell) -> anyhow::Result<Runtime> {
        let choice = if self.local {
            RuntimeChoice::Local
        } else {
            self.runtime
        };
        let runtime = match choice {
            RuntimeChoice::Local => Runtime::Local,
            RuntimeChoice::Kind => Runtime::Kind,
            RuntimeChoice::Auto => {
                let format = "{{.ServerVersion}}";
                let docker = cmd!(sh, "docker info --format {format}")
                    .quiet()
                    .ignore_stderr()
                    .read();
                match docker {
                    Ok(v) if !v.trim().is_empty() => {
                        println!(
                            "runtime: kind (a Docker engine {} answers; --local to run as processes)",
                            v.trim()
                        );
                        Runtime::Kind
                    }
                    _ => {
                        println!(
                            "runtime: local (no Docker engine answers `docker info`; --runtime kind to insist)"
                        );
                        Runtime::Local
                    }
                }
            }
        };
        Ok(runtime)
    }
}

#[derive(clap::Args)]
pub struct Up {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Shift every local port by this much (to run beside something on the default ports).
    #[arg(long, default_value_t = 0)]
    pub port_offset: u16,
    /// Print the plan of commands (kind runtime) without running them.
    #[arg(long)]
    pub dry_run: bool,
    /// Deploy to this existing cluster (a kubeconfig context) instead of kind; needs --registry.
    #[arg(long, requires = "registry")]
    pub context: Option<String>,
    /// Where to push the services' images for --context, e.g. registry.example.com/lab.
    #[arg(long, requires = "context")]
    pub registry: Option<String>,
    /// The benchmark's plaintext baseline instead of the lab (for debugging `cargo xtask bench`).
    #[arg(long, hide = true)]
    pub bench_plaintext: bool,
}

impl Up {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        // An existing cluster is the Kubernetes path whatever this machine runs.
        let runtime = if self.context.is_some() {
            Runtime::Kind
        } else {
            self.runtime.resolve(sh)?
        };
        match runtime {
            Runtime::Local if self.bench_plaintext => {
                local::up_profile(sh, self.port_offset, local::Profile::Plaintext).map(|_| ())
            }
            Runtime::Local if self.dry_run => {
                bail!(
                    "--dry-run prints the kind runtime's plan: cargo xtask up --runtime kind --dry-run"
                )
            }
            Runtime::Local => local::up(sh, self.port_offset).map(|_| ()),
            Runtime::Kind => {
                let target = match (self.context, self.registry) {
                    (Some(context), Some(registry)) => {
                        crate::kind::Target::Existing { context, registry }
                    }
                    _ => crate::kind::Target::Kind,
                };
                crate::kind::up(sh, self.dry_run, target)
            }
        }
    }
}

pub fn down(sh: &Shell, args: &RuntimeArgs) -> anyhow::Result<()> {
    match args.resolve(sh)? {
        Runtime::Local => {
            // A plaintext baseline left by an interrupted `cargo xtask bench` goes too.
            let plaintext = local::Profile::Plaintext.root();
            if plaintext.exists() {
                local::down_at(&plaintext)?;
            }
            local::down()
        }
        Runtime::Kind => crate::kind::down(sh),
    }
}

pub fn status(sh: &Shell, args: &RuntimeArgs) -> anyhow::Result<()> {
    match args.resolve(sh)? {
        Runtime::Local => LocalLab::open()?.print_status(),
        Runtime::Kind => crate::kind::status(sh),
    }
}

#[derive(clap::Args)]
pub struct Logs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// The component, e.g. backend, envoy-backend, postgres, spire-server, agent-backend-node.
    pub component: String,
    /// How many lines from the end (0: all).
    #[arg(long, short = 'n', default_value_t = 200)]
    pub lines: usize,
}

impl Logs {
    pub fn run(self, sh: &Shell) -> anyhow::Result<()> {
        match self.runtime.resolve(sh)? {
            Runtime::Local => {
                let lab = LocalLab::open()?;
                let c = Component::parse(&self.component)?;
                let text = lab.log(c)?;
                let lines: Vec<&str> = text.lines().collect();
                let from = if self.lines == 0 {
                    0
                } else {
                    lines.len().saturating_sub(self.lines)
                };
                println!("{}", lines[from..].join("\n"));
                Ok(())
            }
            Runtime::Kind => crate::kind::logs(sh, Component::parse(&self.component)?, self.lines),
        }
    }
}

/// The lab's components, named the same on both runtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    SpireServer,
    Agent(usize),
    HelperPostgres,
    Postgres,
    HelperBackend,
    Backend,
    EnvoyBackend,
    EnvoyFrontend,
    Frontend,
}

impl Component {
    pub const ALL: [Component; 11] = [
        Component::SpireServer,
        Component::Agent(0),
        Component::Agent(1),
        Component::Agent(2),
        Component::HelperPostgres,
        Component::Postgres,
        Component::HelperBackend,
        Component::Backend,
        Component::EnvoyBackend,
        Component::EnvoyFrontend,
        Component::Frontend,
    ];

    pub fn name(self) -> String {
        match self {
            Component::SpireServer => "spire-server".into(),
            Component::Agent(i) => format!("agent-{}", crate::render::NODES[i]),
            Component::HelperPostgres => "helper-postgres".into(),
            Component::Postgres => "postgres".into(),
            Component::HelperBackend => "helper-backend".into(),
            Component::Backend => "backend".into(),
            Component::EnvoyBackend => "envoy-backend".into(),
            Component::EnvoyFrontend => "envoy-frontend".into(),
            Component::Frontend => "frontend".into(),
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Component> {
        Component::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Component::ALL.iter().map(|c| c.name()).collect();
                anyhow::anyhow!(
                    "no component {s:?}; the components are: {}",
                    names.join(", ")
                )
            })
    }
}

/// The backend Envoy's RBAC policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Only the frontend's SPIFFE ID may call (manifests/backend/config/rbac.yaml).
    AllowFrontend,
    /// Nobody may call (manifests/backend/config/rbac-deny.yaml).
    Deny,
}

/// One certificate holder's current certificate.
#[derive(Clone, Debug)]
pub struct Holding {
    pub holder: &'static str,
    pub spiffe_id: Option<String>,
    pub serial: String,
    pub seconds_left: Option<i64>,
}

impl Holding {
    /// The leaf an Envoy holds, from its admin `/certs`.
    pub fn of_envoy(holder: &'static str, admin: &str) -> anyhow::Result<Holding> {
        use anyhow::Context;
        let c = crate::probe::envoy_cert(admin).context(holder)?;
        Ok(Holding {
            holder,
            spiffe_id: c.spiffe_id,
            serial: c.serial,
            seconds_left: c
                .expiration
                .as_deref()
                .and_then(crate::scenario::rfc3339_left),
        })
    }

    /// The certificate PostgreSQL really presents at `addr` (host:port).
    pub fn of_postgres(addr: &str) -> anyhow::Result<Holding> {
        use anyhow::Context;
        let chain = crate::probe::server_chain(addr, true).context("PostgreSQL server")?;
        Ok(Holding {
            holder: "PostgreSQL server cert",
            spiffe_id: svid::spiffe_id_of(&chain[0]).ok().map(|i| i.to_string()),
            serial: crate::probe::serial(&chain[0]),
            seconds_left: Some(svid::unix_time(chain[0].not_after()) - crate::local::now()),
        })
    }
}

/// What a scenario may do to a running lab, on either runtime.
pub trait Lab {
    fn runtime(&self) -> &'static str;
    fn frontend_url(&self) -> String;
    fn envoy_admin_url(&self, backend: bool) -> String;
    fn stop(&mut self, c: Component) -> anyhow::Result<()>;
    fn start(&mut self, c: Component) -> anyhow::Result<()>;
    /// An identifier of the running instance (a pid locally), to prove what was not restarted.
    fn instance(&self, c: Component) -> Option<String>;
    fn set_policy(&mut self, p: Policy) -> anyhow::Result<()>;
    /// A short X.509-SVID TTL (seconds) for the three workloads, or back to the default.
    fn set_svid_ttl(&mut self, ttl: Option<u32>) -> anyhow::Result<()>;
    fn log(&self, c: Component) -> anyhow::Result<String>;
    /// The SPIRE server's current X.509 trust bundle.
    fn trust_bundle(&self) -> anyhow::Result<Vec<openssl::x509::X509>>;
    /// The four certificate holders: frontend Envoy, backend Envoy, backend files, PostgreSQL.
    fn holdings(&self) -> Vec<anyhow::Result<Holding>>;
    /// The chains the backend Envoy and PostgreSQL present, and the backend's files.
    fn presented_chains(&self) -> Vec<(&'static str, anyhow::Result<Vec<openssl::x509::X509>>)>;
    /// The backend's `/readyz`: status and body.
    fn backend_readyz(&self) -> anyhow::Result<(u16, serde_json::Value)>;
    /// host:port of the backend Envoy's mTLS listener, reachable from here.
    fn backend_envoy_addr(&self) -> String;
    /// Asks the Workload API for an SVID from a workload no entry describes (locally a process
    /// on the backend's node, on kind a pod with service account `rogue`).
    fn fetch_svid_unregistered(&self) -> anyhow::Result<String>;
    /// Registers `spiffe://example.org/ns/demo/sa/rogue` (DNS name `backend`, so its CN passes
    /// PostgreSQL's `cert` check) and fetches its SVID: the directory with svid.0.pem,
    /// svid.0.key and bundle.0.pem.
    fn issue_rogue_svid(&mut self) -> anyhow::Result<std::path::PathBuf>;
    fn remove_rogue(&mut self) -> anyhow::Result<()>;
    /// Connects to PostgreSQL as user `backend` with the rogue's certificate (`dir`, or on kind
    /// the same files inside the rogue pod) and reads orders.
    fn query_postgres_with(&self, dir: &std::path::Path) -> anyhow::Result<String>;
    /// Whether a pod that fails its readiness probe leaves its Service (Kubernetes), so that
    /// callers stop reaching it at all.
    fn readiness_gates_traffic(&self) -> bool {
        false
    }
}
