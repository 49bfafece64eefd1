//! From the host's loopback into a pod, the way kind's port mappings and `kubectl port-forward`
//! do it: a listener on 127.0.0.1, and for each connection one made from inside the pod's
//! network namespace to a port of the pod. The UI's runs as a process for as long as the lab is
//! up (`cargo xtask forward`, hidden); what xtask looks at inside pods (Envoy admins, the
//! backend's `/readyz`, PostgreSQL) is forwarded only while an xtask command needs it.

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

/// Relays one accepted connection to `target` inside `netns`; a refused target closes it.
fn relay(client: TcpStream, netns: &Path, target: SocketAddr) {
    let Ok(upstream) = pods::connect_in(netns, target) else {
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

fn accept_loop(listener: TcpListener, netns: PathBuf, target: SocketAddr, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let netns = netns.clone();
                std::thread::spawn(move || relay(client, &netns, target));
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
    std::thread::spawn(move || accept_loop(listener, netns, target, flag));
    Ok(Forward { local, stop })
}

impl crate::flags::Forward {
    /// The UI's forwarder: serves until it is stopped.
    pub fn run(self) -> anyhow::Result<()> {
        let listener =
            TcpListener::bind(self.listen).with_context(|| format!("listen on {}", self.listen))?;
        println!(
            "forwarding {} to {} in {}",
            self.listen,
            self.to,
            self.netns.display()
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
