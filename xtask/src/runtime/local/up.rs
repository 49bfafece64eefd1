//! Starting the local lab in dependency order with progress, and stopping it by pid.
//!
//! `up` is a few named phases: reuse a lab that runs (or clear one that half runs), check that
//! the ports are free, build the services, prepare the state directory, then start the
//! components wave by wave, each awaited where the next needs it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use super::layout::{self, Layout, NODES, Ports, link, netns_prefix, workload_uid};
use super::pods::{self, Network, Pod};
use super::state::{Running, State, ToolPaths};
use super::{LocalLab, Profile, chmod, chown, configs, plaintext, postgres};
use crate::deps;
use crate::lab::{Component, Lab};
use crate::pins::Pins;
use crate::procs::{self, Spec, wait_for};
use contract::Workload;

fn step(n: usize, total: usize, what: &str) {
    println!("[{n:>2}/{total}] {what}");
}

/// Starts the lab (or the bench's plaintext baseline) with every port shifted by
/// `port_offset`; returns the handle when every component is ready.
pub fn up(sh: &Shell, profile: Profile, port_offset: u16) -> anyhow::Result<LocalLab> {
    let started = Instant::now();
    if let Some(lab) = already_up(profile)? {
        return Ok(lab);
    }
    let pins = Pins::load(&crate::project_root())?;
    let tools = deps::find(&pins).context("the local runtime needs its binaries")?;
    let network = match pods::why_no_pods() {
        None => Network::Pods {
            prefix: netns_prefix(profile == Profile::Plaintext),
        },
        Some(why) => {
            println!(
                "not isolated: {why}, so every component shares this machine's loopback and any local process can reach the backend's API, both Envoys' admins and the frontend Envoy's outbound listener"
            );
            Network::SharedLoopback
        }
    };
    let ports = free_ports(profile.port_offset() + port_offset, &network)?;
    let waves = waves(profile);
    let total = 2 + waves.len() + usize::from(profile == Profile::Mtls);
    step(1, total, "building frontend, backend and ledger (release)");
    cmd!(
        sh,
        "cargo build --release --quiet -p frontend -p backend -p ledger"
    )
    .run()
    .context("build the services")?;
    step(2, total, &describe(&network));
    let t = Instant::now();
    let mut lab = prepare(sh, profile, ToolPaths::from(&tools), ports, network)?;
    println!(
        "        state, configs and pods ready ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let mut current = Component::SpireDatastore;
    if let Err(e) = start_in_waves(sh, &mut lab, &waves, total, &mut current) {
        report_failure(&lab, current, &e);
        return Err(e);
    }
    let t = Instant::now();
    lab.start_forwarder()
        .context("the UI's forwarder into the frontend's pod")?;
    if lab.layout().network.is_pods() {
        println!(
            "        UI forwarded from {} ({:.1} s)",
            lab.frontend_url(),
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "\nThe lab is up in {:.1} s: open {}\nNext: cargo xtask status --local · cargo xtask scenario all --local · cargo xtask down --local",
        started.elapsed().as_secs_f64(),
        lab.frontend_url()
    );
    Ok(lab)
}

/// The lab of this profile when all of it runs already; a half-running one is stopped first.
fn already_up(profile: Profile) -> anyhow::Result<Option<LocalLab>> {
    let root = profile.root();
    if !State::exists(&root) {
        return Ok(None);
    }
    let lab = LocalLab::open_at(&root)?;
    let dead: Vec<String> = lab
        .state
        .components
        .iter()
        .chain(&lab.state.forwarders)
        .filter(|c| !c.pid.is_some_and(|p| procs::is_ours(p, &c.spec.program)))
        .map(|c| c.name.clone())
        .collect();
    if dead.is_empty() && lab.state.components.len() == profile.components().len() {
        println!(
            "The local lab is already up ({} components running): {}\n`cargo xtask status --local` shows them; `cargo xtask down --local` stops them.",
            lab.state.components.len(),
            lab.frontend_url()
        );
        return Ok(Some(lab));
    }
    println!(
        "Recovering from an earlier run ({} not running): stopping what is left and starting again.",
        dead.join(", ")
    );
    down_at(&root)?;
    Ok(None)
}

/// How the pods are made, in a line.
fn describe(network: &Network) -> String {
    match network {
        Network::Pods { .. } => format!(
            "pods: {} network namespaces on a bridge inside the lab's own ({} there only; no route off the machine), a uid per workload",
            Pod::ALL.len(),
            pods::SUBNET_CIDR
        ),
        Network::SharedLoopback => "no pods: one shared loopback".into(),
    }
}

/// The lab's ports, shifted by `offset`, each checked free where it is bound on this machine's
/// loopback: all of them without pods; with pods only the UI's (the rest are inside pods).
fn free_ports(offset: u16, network: &Network) -> anyhow::Result<Ports> {
    let ports = Ports::with_offset(offset);
    let on_host = ports
        .named()
        .into_iter()
        .filter(|(p, _)| !network.is_pods() || *p == ports.frontend);
    for (port, name) in on_host {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} ({name}) is in use: stop what uses it, or pass --port-offset N to shift every port"
            );
        }
    }
    Ok(ports)
}

/// The state directory with its configs, its (empty) state file, the programs other uids run,
/// the pods, and the link to it.
fn prepare(
    sh: &Shell,
    profile: Profile,
    tools: ToolPaths,
    ports: Ports,
    network: Network,
) -> anyhow::Result<LocalLab> {
    let root = profile.root();
    let layout = Layout {
        root: root.clone(),
        ports,
        network,
    };
    let pg_user = postgres::pg_user()?;
    let backend_user = layout.network.is_pods().then(|| {
        (
            workload_uid(Workload::Backend),
            workload_uid(Workload::Backend),
        )
    });
    let openbao_user = layout.network.is_pods().then(|| {
        (
            workload_uid(Workload::OpenBao),
            workload_uid(Workload::OpenBao),
        )
    });
    let oidc_user = layout
        .network
        .is_pods()
        .then_some((layout::SPIRE_OIDC_UID, layout::SPIRE_OIDC_UID));
    prepare_dirs(
        &layout,
        Owners {
            pg: pg_user,
            backend: backend_user,
            openbao: openbao_user,
            oidc: oidc_user,
        },
    )?;
    configs::write_local_configs(&layout)?;
    if profile == Profile::Plaintext {
        plaintext::write_plaintext_profile(&layout)?;
    }
    std::fs::copy(
        crate::project_root().join("manifests/backend/config/rbac.yaml"),
        layout.rbac_dir().join("rbac.yaml"),
    )?;
    let mut lab = LocalLab {
        root: root.clone(),
        state: State {
            layout,
            tools,
            pg_user,
            profile,
            components: Vec::new(),
            entries: Vec::new(),
            staged: Vec::new(),
            forwarders: Vec::new(),
        },
        forwards: Default::default(),
    };
    lab.stage()?;
    lab.save()?;
    lab.layout().network.create(sh).context("make the pods")?;
    if profile == Profile::Mtls {
        if let Some(parent) = link().parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(link());
        std::os::unix::fs::symlink(&root, link())?;
    }
    Ok(lab)
}

impl LocalLab {
    /// Copies into `bin/` what another uid runs: with pods, every workload's program and xtask
    /// (the UI's forwarder); as root without pods, PostgreSQL's spiffe-helper. Root's cache and
    /// a checkout under its home are out of their reach. A hard link where it can be.
    fn stage(&mut self) -> anyhow::Result<()> {
        let release = crate::project_root().join("target/release");
        let t = &self.state.tools;
        let mut wanted = Vec::new();
        if self.layout().network.is_pods() {
            wanted.extend([
                ("envoy", t.envoy.clone()),
                ("backend", release.join("backend")),
                ("frontend", release.join("frontend")),
                ("ledger", release.join("ledger")),
                ("oidc-discovery-provider", t.oidc_provider.clone()),
                ("bao", t.bao.clone()),
                ("xtask", std::env::current_exe()?),
            ]);
        }
        if self.layout().network.is_pods() || self.state.pg_user.is_some() {
            wanted.push(("spiffe-helper", t.spiffe_helper.clone()));
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let bin = self.layout().p("bin");
        std::fs::create_dir_all(&bin)?;
        chmod(&bin, 0o755)?;
        for (name, src) in wanted {
            let dst = bin.join(name);
            let _ = std::fs::remove_file(&dst);
            if std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst)
                    .with_context(|| format!("copy {} into {}", src.display(), bin.display()))?;
                chmod(&dst, 0o755)?;
            }
            self.state.staged.push(name.to_owned());
        }
        Ok(())
    }

    /// Starts a forwarder process (`cargo xtask forward`) and records it.
    fn spawn_forwarder(
        &mut self,
        name: &str,
        netns: Option<&Path>,
        listen: String,
        targets: &[String],
        inside: Option<std::path::PathBuf>,
    ) -> anyhow::Result<()> {
        let mut args = vec!["forward".to_owned(), "--listen".into(), listen];
        if let Some(ns) = netns {
            args.extend(["--netns".into(), ns.display().to_string()]);
        }
        for t in targets {
            args.extend(["--to".into(), t.clone()]);
        }
        let program = if self.state.staged.iter().any(|s| s == "xtask") {
            self.layout().bin("xtask")
        } else {
            std::env::current_exe()?
        };
        let spec = Spec {
            program,
            args,
            env: vec![],
            user: None,
            log: self.layout().p(&format!("logs/{name}.log")),
            stop_signal: None,
            netns: inside,
        };
        let pid = procs::spawn(&spec)?;
        self.state.forwarders.push(Running {
            name: name.into(),
            spec,
            pid: Some(pid),
        });
        self.save()
    }

    /// The SPIRE server's Service: one address the agents dial, forwarding each connection to
    /// whichever replica answers (with pods, from a pod of its own).
    fn start_server_service(&mut self) -> anyhow::Result<()> {
        let l = self.layout().clone();
        let targets: Vec<String> = (0..crate::lab::SERVER_REPLICAS)
            .map(|r| {
                format!(
                    "{}:{}",
                    l.addr(Pod::SpireServer(r)),
                    l.ports.spire_server_replicas[usize::from(r)]
                )
            })
            .collect();
        let listen = format!("{}:{}", l.network.public_bind(), l.ports.spire_server);
        self.spawn_forwarder(
            "spire-server-service",
            None,
            listen,
            &targets,
            l.network.netns(Pod::SpireService),
        )?;
        // Ready when a replica answers through it.
        let probe = format!("{}:{}", l.addr(Pod::SpireService), l.ports.spire_server);
        let probe: std::net::SocketAddr = probe.parse()?;
        wait_for(Duration::from_secs(10), || {
            match l.network.netns(Pod::Node(Workload::Backend)) {
                Some(ns) => pods::connect_in(&ns, probe).map(drop)?,
                None => std::net::TcpStream::connect_timeout(&probe, Duration::from_secs(1))
                    .map(drop)?,
            }
            Ok(())
        })
        .context("the SPIRE server's Service does not answer")?;
        Ok(())
    }

    /// With pods, the UI at `frontend_url` on this machine's loopback: a forwarder process into
    /// the frontend's pod, as kind's port mapping is.
    fn start_forwarder(&mut self) -> anyhow::Result<()> {
        let Some(netns) = self.layout().network.netns(Pod::Frontend) else {
            return Ok(());
        };
        let port = self.ports().frontend;
        self.spawn_forwarder(
            "ui-forward",
            Some(&netns),
            format!("127.0.0.1:{port}"),
            &[format!("127.0.0.1:{port}")],
            None,
        )?;
        let url = format!("{}/readyz", self.frontend_url());
        wait_for(Duration::from_secs(10), || {
            let (status, _) = crate::probe::get(&url)?;
            anyhow::ensure!(status == 200, "{url} answered HTTP {status}");
            Ok(())
        })?;
        Ok(())
    }
}

/// Who owns the directories of the workloads that run as their own uids (None: the lab's user).
struct Owners {
    pg: Option<(u32, u32)>,
    backend: Option<(u32, u32)>,
    openbao: Option<(u32, u32)>,
    oidc: Option<(u32, u32)>,
}

fn prepare_dirs(l: &Layout, owners: Owners) -> anyhow::Result<()> {
    let Owners {
        pg,
        backend,
        openbao,
        oidc,
    } = owners;
    std::fs::create_dir_all(&l.root)?;
    chmod(&l.root, 0o755)?;
    for (dir, mode, owner) in [
        ("config", 0o755, None),
        ("logs", 0o755, None),
        ("spire-server", 0o700, None),
        ("spire-server/0", 0o700, None),
        ("spire-server/0/data", 0o700, None),
        ("spire-server/1", 0o700, None),
        ("spire-server/1/data", 0o700, None),
        ("spire-server/datastore", 0o700, None),
        ("spire-db", 0o755, pg),
        ("spire-db/data", 0o700, pg),
        ("spire-db/run", 0o755, pg),
        ("spire-db/tls", 0o700, pg),
        ("agents", 0o755, None),
        ("certs", 0o755, None),
        ("certs/backend", 0o700, backend),
        ("certs/postgres", 0o700, pg),
        ("postgres", 0o755, pg),
        ("postgres/data", 0o700, pg),
        ("postgres/run", 0o755, pg),
        ("envoy-rbac", 0o755, None),
        ("certs/openbao", 0o700, openbao),
        ("openbao", 0o755, None),
        ("openbao/data", 0o700, openbao),
        ("openbao/run", 0o700, openbao),
        ("openbao/audit", 0o700, openbao),
        ("spire-oidc", 0o755, None),
        ("spire-oidc/tls", 0o700, oidc),
    ] {
        let p = l.p(dir);
        std::fs::create_dir_all(&p)?;
        chmod(&p, mode)?;
        chown(&p, owner)?;
    }
    for node in NODES {
        // The Workload API socket is for every local user (the workloads' uids included).
        let d = l.p(&format!("agents/{node}"));
        std::fs::create_dir_all(d.join("data"))?;
        chmod(&d, 0o755)?;
        chmod(&d.join("data"), 0o700)?;
    }
    Ok(())
}

/// Which components start together, and which of them are then awaited.
type Wave = (&'static [Component], &'static [Component]);

/// Independent components start together; each is awaited where the next needs it.
fn waves(profile: Profile) -> Vec<Wave> {
    use Component::*;
    use contract::Workload::{Backend as B, Frontend as F, Postgres as P};
    const AGENTS: &[Component] = &[Agent(F), Agent(B), Agent(P)];
    // The workloads that fetch their own SVIDs: the helpers, and the ledger.
    const HELPERS: &[Component] = &[
        HelperPostgres,
        HelperBackend,
        Ledger,
        SpireOidc,
        HelperOpenBao,
    ];
    const DATA_AND_PROXIES: &[Component] = &[Postgres, EnvoyBackend, EnvoyFrontend, Frontend];
    // OpenBao is unsealed and configured once PostgreSQL is ready (its database secrets engine
    // connects at once).
    const DATA_PROXIES_BROKER: &[Component] =
        &[Postgres, EnvoyBackend, EnvoyFrontend, Frontend, OpenBao];
    const REST: &[Component] = &[Backend, EnvoyBackend, EnvoyFrontend, Frontend];
    let plaintext: [Wave; 2] = [(DATA_AND_PROXIES, &[Postgres]), (&[Backend], REST)];
    match profile {
        Profile::Mtls => [
            (&[SpireDatastore][..], &[SpireDatastore][..]),
            // One after the other, as a StatefulSet starts them: the first creates the
            // datastore's schema, which two at once would both try to.
            (&[SpireServer(0)], &[SpireServer(0)]),
            (&[SpireServer(1)], &[SpireServer(1)]),
            (AGENTS, AGENTS),
            // The first SVIDs appear once the server's entry cache has the new entries (about
            // 5 s); Envoys started later find their SDS secrets at once instead of backing off.
            (HELPERS, HELPERS),
            (DATA_PROXIES_BROKER, &[Postgres, OpenBao]),
            (&[Backend], REST),
        ]
        .into_iter()
        .collect(),
        Profile::Plaintext => plaintext.to_vec(),
    }
}

/// Starts every wave; `current` names the component being started or awaited, for the report
/// of a failure. Registration comes right after the SPIRE server, before any agent attests.
fn start_in_waves(
    sh: &Shell,
    lab: &mut LocalLab,
    waves: &[Wave],
    total: usize,
    current: &mut Component,
) -> anyhow::Result<()> {
    // The demo's initdb runs while SPIRE starts.
    let mut initdb = lab.start_initdb(postgres::Server::Demo)?;
    // Steps 1 and 2 were the build and the pods.
    let mut n = 2;
    for (start, wait) in waves {
        let names: Vec<String> = start.iter().map(|c| c.name()).collect();
        n += 1;
        step(n, total, &format!("start {}", names.join(", ")));
        for &c in *start {
            *current = c;
            if c == Component::Postgres
                && let Some(child) = initdb.take()
            {
                postgres::finish_initdb(child)?;
            }
            lab.spawn(sh, c)?;
        }
        for &c in *wait {
            *current = c;
            let took = lab.wait_ready(sh, c)?;
            println!(
                "        {:<20} ready ({:.1} s)",
                c.name(),
                took.as_secs_f64()
            );
        }
        if start.contains(&Component::SpireServer(crate::lab::SERVER_REPLICAS - 1)) {
            n += 1;
            step(
                n,
                total,
                "the replicas' Service; registration entries (same SPIFFE IDs as on kind)",
            );
            lab.start_server_service()?;
            lab.write_bootstrap_bundle(sh)?;
            lab.register(sh)?;
        }
    }
    Ok(())
}

fn report_failure(lab: &LocalLab, failed: Component, e: &anyhow::Error) {
    let failed = failed.name();
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
}

/// Stops the lab and a plaintext baseline left by an interrupted `cargo xtask bench`.
pub fn down_all() -> anyhow::Result<()> {
    let plaintext = Profile::Plaintext.root();
    if plaintext.exists() {
        down_at(&plaintext)?;
    }
    down(Profile::Mtls)
}

/// Stops every component of this profile by pid, then removes its state.
pub fn down(profile: Profile) -> anyhow::Result<()> {
    down_at(&profile.root())
}

fn down_at(root: &Path) -> anyhow::Result<()> {
    let is_lab = root == Profile::Mtls.root();
    let Ok(lab) = LocalLab::open_at(root) else {
        println!("The local lab is not up; nothing to stop.");
        if is_lab {
            let _ = std::fs::remove_file(link());
        }
        return Ok(());
    };
    let mut stopped = 0;
    let mut left = Vec::new();
    for r in lab
        .state
        .forwarders
        .iter()
        .chain(lab.state.components.iter().rev())
    {
        if let Some(pid) = r.pid
            && procs::is_ours(pid, &r.spec.program)
        {
            if procs::stop(pid, &r.spec, Duration::from_secs(5)) {
                println!("stopped {:<20} pid {pid}", r.name);
                stopped += 1;
            } else {
                left.push(format!("{} (pid {pid})", r.name));
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
    let sh = Shell::new()?;
    lab.layout()
        .network
        .remove(&sh)
        .context("remove the pods' network namespaces")?;
    std::fs::remove_dir_all(root).with_context(|| format!("remove {}", root.display()))?;
    if is_lab {
        let _ = std::fs::remove_file(link());
    }
    println!("The local lab is down: {stopped} processes stopped, state removed.");
    Ok(())
}

/// After `down`, no process may still run from the lab's state directory, and it is gone.
pub fn ensure_nothing_left() -> anyhow::Result<()> {
    let root = Profile::Mtls.root();
    let needle = root.display().to_string();
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                left.push(format!("{pid}: {cmdline}"));
            }
        }
    }
    ensure!(
        left.is_empty(),
        "processes of the lab still run after down:\n{}",
        left.join("\n")
    );
    ensure!(!root.exists(), "{} still exists after down", root.display());
    let namespaces: Vec<String> = [false, true]
        .into_iter()
        .flat_map(|plaintext| pods::namespaces(&netns_prefix(plaintext)))
        .collect();
    ensure!(
        namespaces.is_empty(),
        "network namespaces of the lab remain after down: {}",
        namespaces.join(", ")
    );
    let host_links: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| pods::is_lab_interface(n))
        .collect();
    ensure!(
        host_links.is_empty(),
        "interfaces of the lab's pods on the host after down: {}",
        host_links.join(", ")
    );
    println!(
        "after down: no process of the lab remains, no network namespace, bridge or veth of its pods, state removed"
    );
    Ok(())
}
