//! Starting the local lab in dependency order with progress, and stopping it by pid.
//!
//! `up` is a few named phases: reuse a lab that runs (or clear one that half runs), check that
//! the ports are free, build the services, prepare the state directory, then start the
//! components wave by wave, each awaited where the next needs it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use xshell::{Shell, cmd};

use super::layout::{Layout, NODES, Ports, link};
use super::state::{State, ToolPaths};
use super::{LocalLab, Profile, chmod, chown, configs, plaintext, postgres};
use crate::deps;
use crate::lab::{Component, Lab};
use crate::pins::Pins;
use crate::procs;

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
    let ports = free_ports(profile.port_offset() + port_offset)?;
    let waves = waves(profile);
    let total = 1 + waves.len() + usize::from(profile == Profile::Mtls);
    step(1, total, "building frontend and backend (release)");
    cmd!(sh, "cargo build --release --quiet -p frontend -p backend")
        .run()
        .context("build the services")?;
    let mut lab = prepare(profile, ToolPaths::from(&tools), ports)?;
    let mut current = Component::SpireServer;
    if let Err(e) = start_in_waves(sh, &mut lab, &waves, total, &mut current) {
        report_failure(&lab, current, &e);
        return Err(e);
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

/// The lab's ports, shifted by `offset`, each checked free.
fn free_ports(offset: u16) -> anyhow::Result<Ports> {
    let ports = Ports::with_offset(offset);
    for (port, name) in ports.named() {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!(
                "port {port} ({name}) is in use: stop what uses it, or pass --port-offset N to shift every port"
            );
        }
    }
    Ok(ports)
}

/// The state directory with its configs, its (empty) state file and the link to it.
fn prepare(profile: Profile, tools: ToolPaths, ports: Ports) -> anyhow::Result<LocalLab> {
    let root = profile.root();
    let layout = Layout {
        root: root.clone(),
        ports,
    };
    let pg_user = postgres::pg_user()?;
    prepare_dirs(&layout, pg_user)?;
    configs::write_local_configs(&layout)?;
    if profile == Profile::Plaintext {
        plaintext::write_plaintext_profile(&layout)?;
    }
    std::fs::copy(
        crate::project_root().join("manifests/backend/config/rbac.yaml"),
        layout.rbac_dir().join("rbac.yaml"),
    )?;
    let lab = LocalLab {
        root: root.clone(),
        state: State {
            layout,
            tools,
            pg_user,
            profile,
            components: Vec::new(),
            entries: Vec::new(),
        },
    };
    lab.save()?;
    if pg_user.is_some() && profile == Profile::Mtls {
        // The postgres user cannot reach the cache under root's home: its helper is a copy.
        let bin = lab.layout().p("bin");
        std::fs::create_dir_all(&bin)?;
        chmod(&bin, 0o755)?;
        std::fs::copy(&lab.state.tools.spiffe_helper, lab.pg_helper())?;
    }
    if profile == Profile::Mtls {
        if let Some(parent) = link().parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(link());
        std::os::unix::fs::symlink(&root, link())?;
    }
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

/// Which components start together, and which of them are then awaited.
type Wave = (&'static [Component], &'static [Component]);

/// Independent components start together; each is awaited where the next needs it.
fn waves(profile: Profile) -> Vec<Wave> {
    use Component::*;
    use contract::Workload::{Backend as B, Frontend as F, Postgres as P};
    const AGENTS: &[Component] = &[Agent(F), Agent(B), Agent(P)];
    const HELPERS: &[Component] = &[HelperPostgres, HelperBackend];
    const DATA_AND_PROXIES: &[Component] = &[Postgres, EnvoyBackend, EnvoyFrontend, Frontend];
    const REST: &[Component] = &[Backend, EnvoyBackend, EnvoyFrontend, Frontend];
    let plaintext: [Wave; 2] = [(DATA_AND_PROXIES, &[Postgres]), (&[Backend], REST)];
    match profile {
        Profile::Mtls => [
            (&[SpireServer][..], &[SpireServer][..]),
            (AGENTS, AGENTS),
            // The first SVIDs appear once the server's entry cache has the new entries (about
            // 5 s); Envoys started later find their SDS secrets at once instead of backing off.
            (HELPERS, HELPERS),
        ]
        .into_iter()
        .chain(plaintext)
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
    // initdb runs while SPIRE starts.
    let mut initdb = lab.start_initdb()?;
    let mut n = 1;
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
        if *start == [Component::SpireServer] {
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
    for r in lab.state.components.iter().rev() {
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
    println!("after down: no process of the lab remains, state removed");
    Ok(())
}
