//! What the lab's components say of themselves at `/metrics`, read the same way on both
//! runtimes: each certificate holder's seconds left and rotations (from the frontend, which reads
//! them all, and the backend, which holds its own), Run Demo outcomes, the backend's database
//! pool, and the SPIRE servers' and agents' telemetry. `cargo xtask status` prints it; the
//! `console` scenario checks it against the holders themselves.

use std::collections::BTreeMap;

use contract::metrics::{self as names, Scrape};
use contract::{Holder, Workload};

use crate::lab::{Component, Lab};

/// One holder's certificate, as a service's metrics tell it.
#[derive(Clone, Debug, PartialEq)]
pub struct Cert {
    pub spiffe_id: String,
    pub serial: String,
    pub seconds_left: f64,
    pub rotations: f64,
}

/// Everything read, each part or why it could not be.
pub struct Telemetry {
    /// Each holder the frontend reads.
    pub frontend: anyhow::Result<BTreeMap<Holder, Cert>>,
    /// Run Demo outcomes by (link statuses and cause) as the frontend counted them.
    pub run_demos: BTreeMap<String, f64>,
    /// The backend's own SVID.
    pub backend: anyhow::Result<Cert>,
    /// (in use, idle, largest) connections of the backend's database pool.
    pub pool: Option<(f64, f64, f64)>,
    /// Each SPIRE server replica and agent, as its own telemetry tells it.
    pub spire: Vec<(Component, anyhow::Result<Scrape>)>,
}

/// The holders in the frontend's metrics.
pub fn frontend_certs(s: &Scrape) -> BTreeMap<Holder, Cert> {
    let mut out = BTreeMap::new();
    for (labels, _) in s.samples(names::FRONTEND_CERT_INFO) {
        let Some(key) = labels.get("holder") else {
            continue;
        };
        let Some(holder) = Holder::from_key(key) else {
            continue;
        };
        let with = [("holder", key)];
        out.insert(
            holder,
            Cert {
                spiffe_id: labels.get("spiffe_id").unwrap_or_default().to_owned(),
                serial: labels.get("serial").unwrap_or_default().to_owned(),
                seconds_left: s
                    .find(names::FRONTEND_CERT_SECONDS_LEFT, &with)
                    .unwrap_or(f64::NAN),
                rotations: s
                    .find(&format!("{}_total", names::FRONTEND_CERT_ROTATIONS), &with)
                    .unwrap_or(0.0),
            },
        );
    }
    out
}

/// The backend's SVID in its metrics.
pub fn backend_cert(s: &Scrape) -> anyhow::Result<Cert> {
    let labels = s.labels(names::BACKEND_SVID_INFO, &[]).ok_or_else(|| {
        anyhow::anyhow!("the backend reports no SVID ({})", names::BACKEND_SVID_INFO)
    })?;
    Ok(Cert {
        spiffe_id: labels.get("spiffe_id").unwrap_or_default().to_owned(),
        serial: labels.get("serial").unwrap_or_default().to_owned(),
        seconds_left: s.get(names::BACKEND_SVID_SECONDS_LEFT).unwrap_or(f64::NAN),
        rotations: s
            .get(&format!("{}_total", names::BACKEND_SVID_ROTATIONS))
            .unwrap_or(0.0),
    })
}

/// Reads every component's metrics.
pub fn read(lab: &dyn Lab) -> Telemetry {
    let front = lab.metrics(Workload::Frontend);
    let back = lab.metrics(Workload::Backend);
    let run_demos = front
        .as_ref()
        .map(|s| {
            s.samples(&format!("{}_total", names::RUN_DEMO))
                .map(|(l, v)| {
                    let key = match l.get("cause") {
                        Some("") | None => "passed".to_owned(),
                        Some(cause) => cause.to_owned(),
                    };
                    (key, v)
                })
                .fold(BTreeMap::new(), |mut m, (k, v)| {
                    *m.entry(k).or_insert(0.0) += v;
                    m
                })
        })
        .unwrap_or_default();
    let pool = back.as_ref().ok().and_then(|s| {
        Some((
            s.find(names::BACKEND_DB_POOL, &[("state", "in_use")])?,
            s.find(names::BACKEND_DB_POOL, &[("state", "idle")])?,
            s.get(names::BACKEND_DB_POOL_MAX)?,
        ))
    });
    let spire = Component::ALL
        .into_iter()
        .filter(|c| matches!(c, Component::SpireServer(_) | Component::Agent(_)))
        .map(|c| (c, lab.spire_metrics(c)))
        .collect();
    Telemetry {
        frontend: front.map(|s| frontend_certs(&s)),
        run_demos,
        backend: back.and_then(|s| backend_cert(&s)),
        pool,
        spire,
    }
}

fn left(s: f64) -> String {
    if s.is_nan() {
        "?".into()
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", (s / 60.0).floor())
    } else {
        format!("{:.0} h", (s / 3600.0).floor())
    }
}

/// A SPIRE component's figures that matter to a person watching the lab.
fn spire_line(c: Component, s: &Scrape) -> String {
    match c {
        Component::SpireServer(_) => {
            let signed = s.total("spire_server_server_ca_sign_x509_svid");
            let ca = s
                .samples("spire_server_manager_x509_ca_rotate_expiration")
                .map(|(_, v)| v)
                .next()
                .map(|exp| left(exp - contract::time::unix_now() as f64))
                .unwrap_or_else(|| "?".into());
            format!("{signed:.0} X.509-SVIDs signed; its CA expires in {ca}")
        }
        _ => {
            let fetched = s.total("spire_agent_manager_sync_fetch_svids_updates");
            let sds = s.total("spire_agent_sds_api_connection");
            let rotated = s.total("spire_agent_agent_svid_rotate");
            format!(
                "{fetched:.0} SVID updates fetched from the server; {sds:.0} SDS connections; own SVID rotated {rotated:.0} times"
            )
        }
    }
}

impl Telemetry {
    pub fn print(&self) {
        println!("\nMETRICS (what each component serves at /metrics)");
        match &self.frontend {
            Ok(certs) => {
                let demos: Vec<String> = self
                    .run_demos
                    .iter()
                    .map(|(k, v)| format!("{v:.0} {k}"))
                    .collect();
                println!(
                    "{:<22} Run Demo: {}",
                    "frontend",
                    if demos.is_empty() {
                        "none yet".to_owned()
                    } else {
                        demos.join(", ")
                    }
                );
                for (h, c) in certs {
                    println!(
                        "{:<22}   {:<24} {:<34} {:>8} left, {:.0} rotations seen",
                        "",
                        h.to_string(),
                        c.serial,
                        left(c.seconds_left),
                        c.rotations
                    );
                }
            }
            Err(e) => println!("{:<22} {e:#}", "frontend"),
        }
        match &self.backend {
            Ok(c) => {
                let pool = self.pool.map_or("?".into(), |(used, idle, max)| {
                    format!("{used:.0} in use, {idle:.0} idle, at most {max:.0}")
                });
                println!(
                    "{:<22} SVID {} {} left, {:.0} rotations; database pool {pool}",
                    "backend",
                    c.serial,
                    left(c.seconds_left),
                    c.rotations
                );
            }
            Err(e) => println!("{:<22} {e:#}", "backend"),
        }
        for (c, s) in &self.spire {
            match s {
                Ok(s) => println!("{:<22} {}", c.name(), spire_line(*c, s)),
                Err(e) => println!("{:<22} {e:#}", c.name()),
            }
        }
    }
}
