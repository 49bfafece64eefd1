//! Forwarders, the local runtime's stand-ins for what Kubernetes networking does:
//! - from the host's loopback into a pod, as kind's port mapping and `kubectl port-forward`
//!   do: a listener on 127.0.0.1, and for each connection one made from inside the pod's
//!   network namespace. The UI's runs as a process for as long as the lab is up; what xtask
//!   looks at inside pods (Envoy admins, the backend's `/readyz`, PostgreSQL) is forwarded only
//!   while an xtask command needs it;
//! - the SPIRE server's Service: one address for the agents, each connection to whichever
//!   replica answers, taking turns (as kube-proxy spreads connections over a Service's pods).
//!
//! The processes are `cargo xtask forward` (hidden).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use super::pods;

/// Copies one direction until it ends, then closes the other side's write half.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// A connection to the first of `targets` that answers, from `turn` on; made inside `netns`
/// when given.
fn connect(netns: Option<&Path>, targets: &[SocketAddr], turn: usize) -> Option<TcpStream> {
    (0..targets.len())
        .map(|i| targets[(turn + i) % targets.len()])
        .find_map(|t| match netns {
            Some(ns) => pods::connect_in(ns, t).ok(),
            None => TcpStream::connect_timeout(&t, Duration::from_secs(2)).ok(),
        })
}

/// Relays one accepted connection; none of the targets answering closes it.
fn relay(client: TcpStream, netns: Option<&Path>, targets: &[SocketAddr], turn: usize) {
    let Some(upstream) = connect(netns, targets, turn) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || pipe(u2, c2));
    pipe(client, upstream);
    let _ = back.join();
}

fn accept_loop(
    listener: TcpListener,
    netns: Option<PathBuf>,
    targets: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
) {
    let targets = Arc::new(targets);
    let mut turn = 0;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let (netns, targets) = (netns.clone(), targets.clone());
                std::thread::spawn(move || relay(client, netns.as_deref(), &targets, turn));
                turn += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A forward inside this process, for as long as it is held.
pub struct Forward {
    pub local: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Forwards an ephemeral port on 127.0.0.1 to `target` inside `netns`.
pub fn start(netns: &Path, target: SocketAddr) -> anyhow::Result<Forward> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (netns, flag) = (netns.to_owned(), stop.clone());
    std::thread::spawn(move || accept_loop(listener, Some(netns), vec![target], flag));
    Ok(Forward { local, stop })
}

impl crate::flags::Forward {
    /// A forwarder process: serves until it is stopped.
    pub fn run(self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.to.is_empty(), "--to names no target");
        let listener =
            TcpListener::bind(self.listen).with_context(|| format!("listen on {}", self.listen))?;
        let to: Vec<String> = self.to.iter().map(|t| t.to_string()).collect();
        println!(
            "forwarding {} to {}{}",
            self.listen,
            to.join(" or "),
            self.netns
                .as_ref()
                .map(|n| format!(" in {}", n.display()))
                .unwrap_or_default()
        );
        accept_loop(
            listener,
            self.netns,
            self.to,
            Arc::new(AtomicBool::new(false)),
        );
        Ok(())
    }
}
