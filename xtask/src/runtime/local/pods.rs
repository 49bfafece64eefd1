//! Pods on the local runtime. Run as root, each pod (the SPIRE server, each node's agent, the
//! frontend with its Envoy, the backend with its Envoy and helper, PostgreSQL with its helper)
//! gets a network namespace of its own, so its loopback is its own as in Kubernetes. The pods are
//! wired by a bridge that lives in one more namespace of the lab's: the host gains no interface,
//! address, route or firewall rule, pods have no default route, and nothing can leave the
//! machine. `down` deletes the namespaces, and with them every veth and the bridge.
//!
//! Without root the lab keeps one shared loopback (`Network::SharedLoopback`), and says so.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use contract::Workload;
use serde::{Deserialize, Serialize};
use xshell::{Shell, cmd};

/// The pods of the local runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pod {
    /// One replica of the SPIRE server.
    SpireServer(u8),
    /// The replicas' Service: a forwarder to whichever replica answers.
    SpireService,
    /// The SPIRE servers' datastore.
    SpireDb,
    /// A node, where its SPIRE agent runs (as on Kubernetes, beside the node's pods).
    Node(Workload),
    Frontend,
    Backend,
    Postgres,
    Ledger,
    /// SPIRE's OIDC discovery provider.
    SpireOidc,
    /// OpenBao with its spiffe-helper.
    OpenBao,
    /// A pod of no workload, made only while the `security` scenario tries what an insider
    /// could reach from another pod.
    Insider,
}

impl Pod {
    pub const ALL: [Pod; 13] = [
        Pod::SpireServer(0),
        Pod::SpireServer(1),
        Pod::SpireService,
        Pod::SpireDb,
        Pod::Node(Workload::Frontend),
        Pod::Node(Workload::Backend),
        Pod::Node(Workload::Postgres),
        Pod::Frontend,
        Pod::Backend,
        Pod::Postgres,
        Pod::Ledger,
        Pod::SpireOidc,
        Pod::OpenBao,
    ];

    pub fn name(self) -> String {
        match self {
            Pod::SpireServer(r) => format!("spire-server-{r}"),
            Pod::SpireService => "spire-service".into(),
            Pod::SpireDb => "spire-db".into(),
            Pod::Node(w) => format!("node-{}", w.service_account()),
            Pod::Frontend => "frontend".into(),
            Pod::Backend => "backend".into(),
            Pod::Postgres => "postgres".into(),
            Pod::Ledger => "ledger".into(),
            Pod::SpireOidc => "spire-oidc".into(),
            Pod::OpenBao => "openbao".into(),
            Pod::Insider => "insider".into(),
        }
    }

    /// The last byte of its address, and the number of its veth on the bridge.
    fn index(self) -> u8 {
        match self {
            Pod::SpireServer(0) => 2,
            Pod::SpireServer(_) => 6,
            Pod::SpireService => 20,
            Pod::SpireDb => 7,
            Pod::Node(Workload::Frontend) => 3,
            Pod::Node(Workload::Backend) => 4,
            Pod::Node(Workload::Postgres) => 5,
            // Never made: the ledger and OpenBao run on other workloads' nodes.
            Pod::Node(Workload::Ledger) => 8,
            Pod::Node(Workload::OpenBao) => 9,
            Pod::Frontend => 10,
            Pod::Backend => 11,
            Pod::Postgres => 12,
            Pod::Ledger => 13,
            Pod::SpireOidc => 14,
            Pod::OpenBao => 15,
            Pod::Insider => 99,
        }
    }
}

/// The pods' subnet: it exists only on the lab's bridge, inside the lab's namespaces.
const SUBNET: [u8; 3] = [10, 89, 0];
pub const SUBNET_CIDR: &str = "10.89.0.0/24";

/// How the local runtime's processes are connected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// Every process on the host's loopback (without root).
    SharedLoopback,
    /// A network namespace per pod, named `<prefix>-<pod>`; the bridge's is `<prefix>-net`.
    Pods { prefix: String },
}

/// Why the lab cannot make pods here, or None when it can.
pub fn why_no_pods() -> Option<&'static str> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("pods need root (network namespaces)");
    }
    if !Path::new("/usr/sbin/ip").is_file() && !Path::new("/sbin/ip").is_file() {
        return Some("pods need iproute2's `ip` (apt-get install iproute2)");
    }
    None
}

impl Network {
    pub fn is_pods(&self) -> bool {
        matches!(self, Network::Pods { .. })
    }

    /// Where peers in other pods reach `pod` (127.0.0.1 on the shared loopback).
    pub fn addr(&self, pod: Pod) -> Ipv4Addr {
        match self {
            Network::SharedLoopback => Ipv4Addr::LOCALHOST,
            Network::Pods { .. } => Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], pod.index()),
        }
    }

    /// What a listener that other pods reach binds: every address of its pod, or the shared
    /// loopback.
    pub fn public_bind(&self) -> &'static str {
        match self {
            Network::SharedLoopback => "127.0.0.1",
            Network::Pods { .. } => "0.0.0.0",
        }
    }

    fn name(prefix: &str, what: &str) -> String {
        format!("{prefix}-{what}")
    }

    /// The namespace file a process of `pod` enters, or None on the shared loopback.
    pub fn netns(&self, pod: Pod) -> Option<PathBuf> {
        match self {
            Network::SharedLoopback => None,
            Network::Pods { prefix } => {
                Some(Path::new("/run/netns").join(Self::name(prefix, &pod.name())))
            }
        }
    }

    /// Makes the bridge's namespace and one namespace per pod (removing any left by a crash).
    pub fn create(&self, sh: &Shell) -> anyhow::Result<()> {
        let Network::Pods { prefix } = self else {
            return Ok(());
        };
        self.remove(sh)?;
        let net = Self::name(prefix, "net");
        cmd!(sh, "ip netns add {net}")
            .quiet()
            .run()
            .context("ip netns add")?;
        cmd!(sh, "ip -n {net} link add br0 type bridge")
            .quiet()
            .run()?;
        cmd!(sh, "ip -n {net} link set br0 up").quiet().run()?;
        for pod in Pod::ALL {
            self.attach(sh, pod)?;
        }
        Ok(())
    }

    /// One pod's namespace with a veth to the bridge and its address; no default route.
    fn attach(&self, sh: &Shell, pod: Pod) -> anyhow::Result<()> {
        let Network::Pods { prefix } = self else {
            return Ok(());
        };
        let net = Self::name(prefix, "net");
        let ns = Self::name(prefix, &pod.name());
        let veth = format!("v{}", pod.index());
        let addr = format!("{}/24", self.addr(pod));
        cmd!(sh, "ip netns add {ns}").quiet().run()?;
        cmd!(
            sh,
            "ip -n {net} link add {veth} type veth peer name eth0 netns {ns}"
        )
        .quiet()
        .run()
        .with_context(|| format!("veth for pod {}", pod.name()))?;
        cmd!(sh, "ip -n {net} link set {veth} master br0 up")
            .quiet()
            .run()?;
        cmd!(sh, "ip -n {ns} addr add {addr} dev eth0")
            .quiet()
            .run()?;
        cmd!(sh, "ip -n {ns} link set eth0 up").quiet().run()?;
        cmd!(sh, "ip -n {ns} link set lo up").quiet().run()?;
        Ok(())
    }

    fn detach(&self, sh: &Shell, pod: Pod) -> anyhow::Result<()> {
        if let Network::Pods { prefix } = self {
            let ns = Self::name(prefix, &pod.name());
            cmd!(sh, "ip netns delete {ns}").quiet().run()?;
        }
        Ok(())
    }

    /// Deletes every namespace of this prefix (their veths and the bridge go with them).
    pub fn remove(&self, sh: &Shell) -> anyhow::Result<()> {
        let Network::Pods { prefix } = self else {
            return Ok(());
        };
        for ns in namespaces(prefix) {
            cmd!(sh, "ip netns delete {ns}")
                .quiet()
                .run()
                .with_context(|| format!("ip netns delete {ns}"))?;
        }
        Ok(())
    }

    /// Runs `f` in a pod of no workload on the bridge, made for it and removed after.
    pub fn with_insider<T>(&self, f: impl FnOnce(&Path) -> T) -> anyhow::Result<T> {
        let Some(netns) = self.netns(Pod::Insider) else {
            bail!("the shared loopback has no pods");
        };
        let sh = Shell::new()?;
        self.attach(&sh, Pod::Insider)?;
        let out = f(&netns);
        self.detach(&sh, Pod::Insider)?;
        Ok(out)
    }
}

/// Whether a host interface has a name the lab gives its veths (never made on the host: each
/// is created inside the lab's namespace, its peer inside a pod's).
pub fn is_lab_interface(name: &str) -> bool {
    Pod::ALL
        .into_iter()
        .chain([Pod::Insider])
        .any(|p| name == format!("v{}", p.index()))
}

/// The namespaces under /run/netns whose names start with `prefix-`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    let start = format!("{prefix}-");
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&start))
        .collect();
    v.sort();
    v
}

/// Moves the calling thread into the network namespace `netns` (only this thread: a
/// network namespace is per thread).
pub fn enter(netns: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(netns)?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A TCP connection to `addr` made from inside `netns` (a thread enters it, connects and ends;
/// the socket stays in that namespace).
pub fn connect_in(
    netns: &Path,
    addr: std::net::SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        enter(&netns)?;
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
    })
    .join()
    .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
}
