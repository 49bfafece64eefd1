//! `cargo xtask status --local`: every component (pid, memory, address, readiness) and the
//! certificate each holder has now.

use xshell::Shell;

use super::LocalLab;
use super::layout::node_of;
use super::pods::{Network, Pod};
use crate::lab::{Component, Lab};
use crate::procs;

impl LocalLab {
    pub fn print_status(&self) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let p = self.ports();
        let l = self.layout();
        println!(
            "Local lab in {} (linked from .lab/local); {}\n",
            self.root.display(),
            match &l.network {
                Network::Pods { .. } => "each pod in its own network namespace",
                Network::SharedLoopback => "no pods: every component on this machine's loopback",
            }
        );
        let at = |pod: Pod, port: u16| format!("{}:{port}", l.addr(pod));
        println!("COMPONENT                   PID   RSS MB  ADDRESS                         READY");
        for c in Component::ALL {
            let address = match c {
                Component::SpireDatastore => at(Pod::SpireDb, p.spire_db),
                Component::SpireServer(r) => format!(
                    "{} (Service {})",
                    at(Pod::SpireServer(r), p.spire_server_replicas[usize::from(r)]),
                    at(Pod::SpireService, p.spire_server)
                ),
                Component::Agent(w) => format!("agents/{}/api.sock", node_of(w)),
                Component::Postgres => at(Pod::Postgres, p.postgres),
                Component::Backend => format!("127.0.0.1:{} in its pod", p.backend),
                Component::EnvoyBackend => format!(
                    "{} (admin {} in its pod)",
                    at(Pod::Backend, p.backend_envoy),
                    p.backend_envoy_admin
                ),
                Component::EnvoyFrontend => format!(
                    "127.0.0.1:{} (admin {}) in its pod",
                    p.frontend_envoy, p.frontend_envoy_admin
                ),
                Component::Frontend => self.frontend_url(),
                Component::HelperBackend => "certs/backend".into(),
                Component::HelperPostgres => "certs/postgres".into(),
                Component::Ledger => {
                    format!("{} (health {})", at(Pod::Ledger, p.ledger), p.ledger_health)
                }
                Component::SpireOidc => format!(
                    "{} (health {})",
                    at(Pod::SpireOidc, p.spire_oidc),
                    p.spire_oidc_health
                ),
                Component::HelperOpenBao => "certs/openbao".into(),
                Component::OpenBao => at(Pod::OpenBao, p.openbao),
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
                    h.holder.to_string(),
                    h.spiffe_id.unwrap_or_else(|| "?".into()),
                    h.serial,
                    h.seconds_left.map_or("?".into(), |s| format!("{s} s"))
                ),
                Err(e) => println!("{e:#}"),
            }
        }
        crate::telemetry::read(self).print();
        Ok(())
    }
}
