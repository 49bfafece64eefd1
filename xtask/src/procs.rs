//! Background processes of the local runtime: started detached with their output in a log file,
//! stopped by pid (checked against the program recorded at start, never looked up by name).

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// How to start one component, kept in the state file so it can be stopped and started again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Never saved in the state file (it may carry a password): rebuilt at each start.
    #[serde(default, skip_serializing)]
    pub env: Vec<(String, String)>,
    /// uid and gid to run as (PostgreSQL and its helper when the lab runs as root).
    pub user: Option<(u32, u32)>,
    pub log: PathBuf,
    /// The signal that asks it to stop (SIGTERM when unset; PostgreSQL's fast shutdown is SIGINT).
    #[serde(default)]
    pub stop_signal: Option<i32>,
    /// The network namespace (a file under /run/netns) it runs in: its pod's.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

pub fn spawn(spec: &Spec) -> anyhow::Result<u32> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("open log {}", spec.log.display()))?;
    if let Some((uid, gid)) = spec.user {
        std::os::unix::fs::chown(&spec.log, Some(uid), Some(gid))?;
    }
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C on xtask leaves the lab running.
        .process_group(0);
    match &spec.netns {
        None => {
            if let Some((uid, gid)) = spec.user {
                cmd.uid(uid).gid(gid);
            }
        }
        Some(netns) => {
            // Entering a network namespace needs root: the child enters its pod first, then
            // becomes its user (std would switch the user before any pre_exec hook).
            use std::os::fd::AsRawFd;
            let ns = std::fs::File::open(netns)
                .with_context(|| format!("open the pod's network namespace {}", netns.display()))?;
            let fd = ns.as_raw_fd();
            let user = spec.user;
            // SAFETY: only async-signal-safe calls (setns, setgroups, setgid, setuid) between
            // fork and exec; `ns` outlives the spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if let Some((uid, gid)) = user
                        && (libc::setgroups(0, std::ptr::null()) != 0
                            || libc::setgid(gid) != 0
                            || libc::setuid(uid) != 0)
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("start {} in its pod", spec.program.display()))?;
            drop(ns);
            return Ok(child.id());
        }
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", spec.program.display()))?;
    Ok(child.id())
}

/// True when `pid` runs `program` (so a recycled pid is never mistaken for ours).
pub fn is_ours(pid: u32, program: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie (state Z) has exited; it is only waiting to be reaped.
        if stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        {
            return false;
        }
    }
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = program
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    argv0 == program.as_os_str().as_encoded_bytes() || argv0.ends_with(name)
}

/// The spec's stop signal, then SIGKILL after `grace`; true when the process is gone.
pub fn stop(pid: u32, spec: &Spec, grace: Duration) -> bool {
    let program = &spec.program;
    if !is_ours(pid, program) {
        return true;
    }
    signal(pid, spec.stop_signal.unwrap_or(libc::SIGTERM));
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        reap(pid);
        if !is_ours(pid, program) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(pid, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
    reap(pid);
    !is_ours(pid, program)
}

pub fn signal(pid: u32, sig: i32) {
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Collects a child that ended (a no-op for any other process).
pub fn reap(pid: u32) {
    unsafe {
        libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
    }
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    last_lines(&text, n).trim_end().to_owned()
}

/// The last `n` lines of `text` (all of it for 0).
pub fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return text;
    }
    let ends: Vec<usize> = text.match_indices('\n').map(|(i, _)| i).collect();
    let trailing = usize::from(text.ends_with('\n'));
    match ends.len().checked_sub(n + trailing) {
        Some(i) => &text[ends[i] + 1..],
        None => text,
    }
}

/// Proportional memory (PSS) of a process, in KiB: shared pages split among their sharers.
fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The fields of `/proc/PID/stat` after the command's closing parenthesis: the state first,
/// the parent's pid second, utime the 12th.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    )
}

/// Every living process at one moment, read from `/proc` once: its children and the CPU ticks
/// it and its reaped children used. Reading it once for a whole lab, rather than once per
/// process, keeps the bench's own CPU off the rounds it measures.
pub struct Snapshot {
    /// pid → utime + stime + cutime + cstime.
    ticks: std::collections::HashMap<u32, u64>,
    /// pid → its children.
    children: std::collections::HashMap<u32, Vec<u32>>,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut now = Snapshot {
            ticks: Default::default(),
            children: Default::default(),
        };
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Some(f) = stat_fields(p) else { continue };
            if let Some(parent) = f.get(1).and_then(|x| x.parse().ok()) {
                now.children.entry(parent).or_default().push(p);
            }
            let ticks: Option<u64> = f
                .get(11..15)
                .and_then(|t| t.iter().map(|t| t.parse::<u64>().ok()).sum());
            now.ticks.insert(p, ticks.unwrap_or(0));
        }
        now
    }

    /// A process and all its living descendants (empty when it is gone).
    fn tree(&self, pid: u32) -> Vec<u32> {
        if !self.ticks.contains_key(&pid) {
            return Vec::new();
        }
        let (mut all, mut stack) = (Vec::new(), vec![pid]);
        while let Some(p) = stack.pop() {
            all.push(p);
            stack.extend(self.children.get(&p).into_iter().flatten());
        }
        all
    }

    /// CPU time (user + system, in seconds) a process and its descendants used, the children
    /// it already reaped included (PostgreSQL forks a process per connection).
    pub fn tree_cpu_seconds(&self, pid: u32) -> Option<f64> {
        self.ticks.get(&pid)?;
        let total: u64 = self.tree(pid).iter().map(|p| self.ticks[p]).sum();
        // SAFETY: sysconf only reads a constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        Some(total as f64 / hz as f64)
    }

    /// Memory of a process and all its descendants, in KiB (PostgreSQL forks a process per
    /// connection, all sharing its buffers): the sum of their PSS, so shared pages count once.
    pub fn tree_memory_kib(&self, pid: u32) -> Option<u64> {
        let total: u64 = self
            .tree(pid)
            .into_iter()
            .map(|p| pss_kib(p).or_else(|| rss_kib(p)).unwrap_or(0))
            .sum();
        (total > 0).then_some(total)
    }
}

/// CPU time (user + system, in seconds) this process used, all its threads included.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// What a finished command printed, stdout then stderr, as text.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `check` every 100 ms until it succeeds or `limit` passes; the last error names why.
pub fn wait_for<T>(
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok((v, started.elapsed())),
            Err(e) if started.elapsed() >= limit => {
                return Err(e.context(format!("not ready after {} s", limit.as_secs())));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Child processes killed, last started first, when this goes out of scope.
#[derive(Default)]
pub struct Children(pub Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Creates `path` (it must not exist) with `mode` from the start, so a key is never readable by
/// others even for a moment.
pub fn create_with_mode(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut o = OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, mode);
    let mut f = o
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    std::io::Write::write_all(&mut f, data)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A child's CPU counts for its parent's tree, even once it has exited and been reaped.
    #[test]
    fn tree_cpu_counts_reaped_children() {
        let me = std::process::id();
        let before = super::Snapshot::take().tree_cpu_seconds(me).unwrap();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let used = super::Snapshot::take().tree_cpu_seconds(me).unwrap() - before;
        assert!(used >= 0.05, "the child's CPU was not counted: {used} s");
        assert!(super::own_cpu_seconds() > 0.0);
        assert_eq!(super::Snapshot::take().tree_cpu_seconds(u32::MAX), None);
    }

    #[test]
    fn last_lines() {
        assert_eq!(super::last_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(super::last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(super::last_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(super::last_lines("a\nb\n", 0), "a\nb\n");
    }
}
