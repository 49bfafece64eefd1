//! What the lab's parts say to each other, defined once: the trust domain and the workloads'
//! SPIFFE IDs (`ids`), the JSON bodies the backend and frontend serve and the scenarios and bench
//! read (`api`), Envoy's admin `/certs` as the lab reads it (`envoy`), the services' metric names
//! and a reader of their text format (`metrics`), the page as programs read it (`page`), and one
//! clock (`time`).
//!
//! Programs decide on these fields, never on a sentence meant for a person.

pub mod api;
pub mod envoy;
pub mod ids;
pub mod ledger;
pub mod logs;
pub mod metrics;
pub mod openbao;
pub mod page;
#[cfg(feature = "service")]
pub mod shutdown;
pub mod time;

pub use api::{
    BackendIdentity, Cause, CertHolder, ErrorBody, Holder, Hop, IdentityPanel, LIVE_REFRESH_MS,
    Link, LinkStatus, Order, Orders, PeerCert, Readiness, Run, RunDemo, SvidState,
};
pub use ids::{NAMESPACE, TRUST_DOMAIN, Workload, workload_id};
