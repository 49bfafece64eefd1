//! The offline path's own Docker engine: Debian's dockerd with its own data root (in the lab
//! cache, so built images survive), its own run directory and socket, no iptables, no IP
//! forwarding, no masquerading and no default bridge — nothing it starts can route off the
//! machine, and the host's firewall is never touched. kind's port mappings still work through
//! docker's userland proxy.
//!
//! Where the capability bounding set lacks CAP_SYS_RESOURCE (some CI sandboxes), privileged
//! containers (kind nodes) fail in runc; the engine then runs them through `capless-runc`
//! (xtask/kind-node). A privileged kind node also rewrites host-wide kernel settings (systemd
//! and the kubelet set `kernel.panic`, `vm.overcommit_memory`, `fs.*`…): the engine records them
//! before its first start and puts back every one that changed when it stops, and removes what
//! dockerd and kind leave on the host (`/etc/docker/key.json`, an empty `/lib/modules`).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use serde::{Deserialize, Serialize};

use crate::procs;

/// The engine's run directory: its socket, pid file, log and the host snapshot.
fn run_dir() -> PathBuf {
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/tmp/kind-lab-engine-{uid}"))
}

fn data_root() -> PathBuf {
    crate::deps::cache_dir().join("docker")
}

/// `DOCKER_HOST` for the engine.
fn host() -> String {
    format!("unix://{}/docker.sock", run_dir().display())
}

/// What the host looked like before the engine's first start.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HostSnapshot {
    sysctls: BTreeMap<String, String>,
    had_lib_modules: bool,
    had_docker_key: bool,
    had_etc_docker: bool,
}

const SNAPSHOT: &str = "host-before.json";
/// The kernel settings a privileged node can change for the whole host (the network ones it
/// changes live in its own network namespace).
const SYSCTL_TREES: &[&str] = &["kernel", "vm", "fs", "net/core", "net/netfilter"];
/// Counters and one-shot triggers, not settings: never written back.
const NOT_SETTINGS: &[&str] = &[
    "/proc/sys/kernel/ns_last_pid",
    "/proc/sys/kernel/random/",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/vm/compact_memory",
    "/proc/sys/fs/binfmt_misc/",
];

fn sysctls() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = SYSCTL_TREES
        .iter()
        .map(|t| Path::new("/proc/sys").join(t))
        .collect();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
            continue;
        }
        use std::os::unix::fs::PermissionsExt;
        let path = p.display().to_string();
        if meta.permissions().mode() & 0o200 == 0
            || NOT_SETTINGS.iter().any(|n| path.starts_with(n))
        {
            continue;
        }
        if let Ok(value) = std::fs::read_to_string(&p) {
            out.insert(path, value.trim().to_owned());
        }
    }
    out
}

impl HostSnapshot {
    fn take() -> HostSnapshot {
        HostSnapshot {
            sysctls: sysctls(),
            had_lib_modules: Path::new("/lib/modules").exists(),
            had_docker_key: Path::new("/etc/docker/key.json").exists(),
            had_etc_docker: Path::new("/etc/docker").exists(),
        }
    }

    /// Puts back every setting that changed; removes what was not there before. Returns what it
    /// changed back, for the log.
    fn restore(&self) -> Vec<String> {
        let mut restored = Vec::new();
        let now = sysctls();
        for (path, before) in &self.sysctls {
            let Some(current) = now.get(path) else {
                continue;
            };
            if current == before {
                continue;
            }
            let name = path.trim_start_matches("/proc/sys/").replace('/', ".");
            match std::fs::write(path, before) {
                Ok(()) => restored.push(format!("{name} {current} → {before}")),
                Err(e) => restored.push(format!(
                    "{name} stays {current} (could not write {before}: {e})"
                )),
            }
        }
        if !self.had_docker_key {
            let _ = std::fs::remove_file("/etc/docker/key.json");
        }
        if !self.had_etc_docker {
            let _ = std::fs::remove_dir("/etc/docker");
        }
        if !self.had_lib_modules {
            // kind mounts /lib/modules into its nodes; docker creates it empty when absent.
            let _ = std::fs::remove_dir("/lib/modules");
        }
        restored
    }
}

/// CAP_SYS_RESOURCE is capability 24.
fn bounding_set_lacks_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 24) == 0)
}

/// The engine, when it runs: its `DOCKER_HOST`.
pub fn running() -> Option<String> {
    let pid: u32 = std::fs::read_to_string(run_dir().join("docker.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (procs::is_ours(pid, Path::new("dockerd")) && run_dir().join("docker.sock").exists()).then(host)
}

/// Starts the engine unless it runs; its `DOCKER_HOST`. `capless_runc` is the runtime wrapper
/// used where the sandbox needs it.
pub fn start(capless_runc: &Path) -> anyhow::Result<String> {
    if let Some(host) = running() {
        return Ok(host);
    }
    let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("dockerd is not installed: run `cargo xtask deps --kind-offline`")?;
    let run = run_dir();
    std::fs::create_dir_all(&run)?;
    std::fs::create_dir_all(data_root())?;
    let snapshot = run.join(SNAPSHOT);
    if !snapshot.exists() {
        std::fs::write(&snapshot, serde_json::to_string(&HostSnapshot::take())?)?;
    }
    let mut args: Vec<String> = vec![
        format!("--data-root={}", data_root().display()),
        format!("--exec-root={}", run.join("exec").display()),
        format!("--pidfile={}", run.join("docker.pid").display()),
        format!("--host={}", host()),
        "--iptables=false".into(),
        "--ip6tables=false".into(),
        "--ip-forward=false".into(),
        "--ip-masq=false".into(),
        "--bridge=none".into(),
        "--storage-driver=overlay2".into(),
    ];
    if bounding_set_lacks_sys_resource() {
        println!(
            "this machine's capability bounding set lacks CAP_SYS_RESOURCE: privileged containers run through capless-runc"
        );
        args.push(format!("--add-runtime=capless={}", capless_runc.display()));
        args.push("--default-runtime=capless".into());
    }
    let log = std::fs::File::create(run.join("dockerd.log"))?;
    std::process::Command::new(&dockerd)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("start {}", dockerd.display()))?;
    let host = host();
    procs::wait_for(Duration::from_secs(60), || {
        let out = std::process::Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .env("DOCKER_HOST", &host)
            .output()?;
        ensure!(out.status.success(), "{}", procs::printed(&out).trim());
        Ok(())
    })
    .with_context(|| {
        format!(
            "the lab's Docker engine did not start; its log ends:\n{}",
            procs::tail(&run.join("dockerd.log"), 15)
        )
    })?;
    println!("the lab's own Docker engine runs ({host})");
    Ok(host)
}

/// Stops the engine, then puts the host back as it was before its first start.
pub fn stop() -> anyhow::Result<()> {
    let run = run_dir();
    if let Some(pid) = std::fs::read_to_string(run.join("docker.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        && procs::is_ours(pid, Path::new("dockerd"))
    {
        procs::signal(pid, libc::SIGTERM);
        let gone = procs::wait_for(Duration::from_secs(30), || {
            ensure!(
                !procs::is_ours(pid, Path::new("dockerd")),
                "dockerd still runs"
            );
            Ok(())
        });
        if gone.is_err() {
            procs::signal(pid, libc::SIGKILL);
        }
        println!("stopped the lab's Docker engine (pid {pid})");
    }
    unmount_below(&run);
    unmount_below(&data_root());
    if let Ok(text) = std::fs::read_to_string(run.join(SNAPSHOT)) {
        let snapshot: HostSnapshot = serde_json::from_str(&text)?;
        let restored = snapshot.restore();
        if restored.is_empty() {
            println!("host kernel settings: none changed");
        } else {
            println!("host kernel settings put back: {}", restored.join("; "));
        }
    }
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("remove {}", run.display()))?;
    }
    Ok(())
}

/// Lazily unmounts whatever is still mounted below `dir` (dockerd normally leaves nothing).
fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Ok(c) = std::ffi::CString::new(t) {
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// After `down`: the engine does not run, nothing it started runs, nothing of it stays mounted,
/// its run directory is gone.
pub fn ensure_nothing_left() -> anyhow::Result<()> {
    let run = run_dir();
    let needles = [run.display().to_string(), data_root().display().to_string()];
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if needles.iter().any(|n| cmdline.contains(n.as_str())) {
                left.push(format!("{pid}: {cmdline}"));
            }
        }
    }
    ensure!(
        left.is_empty(),
        "processes of the lab's Docker engine still run after down:\n{}",
        left.join("\n")
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounted: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| needles.iter().any(|n| m.starts_with(n.as_str())))
        .collect();
    ensure!(
        mounted.is_empty(),
        "still mounted after down: {}",
        mounted.join(", ")
    );
    ensure!(!run.exists(), "{} still exists after down", run.display());
    println!(
        "after down: the lab's Docker engine and all it started are gone, nothing stays mounted"
    );
    Ok(())
}
