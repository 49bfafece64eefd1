//! Every setting is a flag with an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "frontend",
    about = "The lab's UI: Run Demo through the frontend's Envoy"
)]
pub struct Config {
    #[arg(long, env = "FRONTEND_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The backend as the frontend reaches it: through its local Envoy, which adds mTLS.
    #[arg(
        long,
        env = "FRONTEND_BACKEND_URL",
        default_value = "http://127.0.0.1:8001"
    )]
    pub backend_url: String,
    /// The admin interface of the frontend's Envoy, for its certificate (`/certs`).
    #[arg(
        long,
        env = "FRONTEND_ENVOY_ADMIN_URL",
        default_value = "http://127.0.0.1:9901"
    )]
    pub envoy_admin_url: String,
    /// Upper bound for one call to the backend, in milliseconds (both statuses show within it).
    #[arg(long, env = "FRONTEND_TIMEOUT_MS", default_value_t = 1800)]
    pub timeout_ms: u64,
    /// `json` (one object a line, each request with the peer's SPIFFE ID) or `pretty`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: contract::logs::LogFormat,
}

impl Config {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(100))
    }
}
