//! Every setting is a flag with an environment variable, for Kubernetes and the local runtime alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use svid::SpiffeId;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "backend",
    about = "Orders API reading PostgreSQL over SVID-based mTLS"
)]
pub struct Config {
    /// Address to serve the API on (only its Envoy should reach it).
    #[arg(long, env = "BACKEND_LISTEN", default_value = "127.0.0.1:9090")]
    pub listen: SocketAddr,
    /// Where to serve only `/healthz` and `/readyz` for the kubelet's probes (the API itself
    /// stays on the loopback address behind Envoy); none by default.
    #[arg(long, env = "BACKEND_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Directory where spiffe-helper writes svid.pem, svid_key.pem and svid_bundle.pem.
    #[arg(long, env = "BACKEND_SVID_DIR", default_value = "/spiffe-certs")]
    pub svid_dir: PathBuf,
    /// How often to look for rotated SVID files, in milliseconds.
    #[arg(long, env = "BACKEND_SVID_POLL_MS", default_value_t = 1000)]
    pub svid_poll_ms: u64,
    #[arg(long, env = "BACKEND_DB_HOST", default_value = "postgres")]
    pub db_host: String,
    #[arg(long, env = "BACKEND_DB_PORT", default_value_t = 5432)]
    pub db_port: u16,
    #[arg(long, env = "BACKEND_DB_NAME", default_value = "demo")]
    pub db_name: String,
    /// The database user; PostgreSQL maps it to the certificate's CN.
    #[arg(long, env = "BACKEND_DB_USER", default_value = "backend")]
    pub db_user: String,
    /// The SPIFFE ID PostgreSQL's server certificate must carry.
    #[arg(
        long,
        env = "BACKEND_DB_SPIFFE_ID",
        default_value_t = contract::Workload::Postgres.spiffe_id().parse().expect("a SPIFFE ID")
    )]
    pub db_spiffe_id: SpiffeId,
    /// Upper bound for getting a connection and running one query, in milliseconds.
    #[arg(long, env = "BACKEND_DB_TIMEOUT_MS", default_value_t = 1500)]
    pub db_timeout_ms: u64,
    #[arg(long, env = "BACKEND_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: usize,
    /// The ledger, `host:port`, where each Run Demo is recorded (`POST /api/runs`); none: Run
    /// Demo's third link says the backend has no ledger.
    #[arg(long, env = "BACKEND_LEDGER_ADDR")]
    pub ledger_addr: Option<String>,
    /// The SPIFFE ID the ledger's server certificate must carry.
    #[arg(
        long,
        env = "BACKEND_LEDGER_SPIFFE_ID",
        default_value_t = contract::Workload::Ledger.spiffe_id().parse().expect("a SPIFFE ID")
    )]
    pub ledger_spiffe_id: SpiffeId,
    /// Upper bound for recording one entry in the ledger, handshake included, in milliseconds.
    #[arg(long, env = "BACKEND_LEDGER_TIMEOUT_MS", default_value_t = 1500)]
    pub ledger_timeout_ms: u64,
    /// OpenBao, `host:port`, where the backend logs in with its JWT-SVID and gets short-lived
    /// PostgreSQL users for `GET /api/reports`; none: the reports say the backend has no OpenBao.
    #[arg(long, env = "BACKEND_OPENBAO_ADDR")]
    pub openbao_addr: Option<String>,
    /// The SPIFFE ID OpenBao's server certificate must carry.
    #[arg(
        long,
        env = "BACKEND_OPENBAO_SPIFFE_ID",
        default_value_t = contract::Workload::OpenBao.spiffe_id().parse().expect("a SPIFFE ID")
    )]
    pub openbao_spiffe_id: SpiffeId,
    /// OpenBao's jwt auth role the backend logs in with.
    #[arg(long, env = "BACKEND_OPENBAO_ROLE", default_value = "backend")]
    pub openbao_role: String,
    /// The JWT-SVID spiffe-helper writes for OpenBao (default: openbao.jwt in --svid-dir).
    #[arg(long, env = "BACKEND_OPENBAO_JWT_FILE")]
    pub openbao_jwt_file: Option<PathBuf>,
    /// Upper bound for one call to OpenBao, handshake included, in milliseconds.
    #[arg(long, env = "BACKEND_OPENBAO_TIMEOUT_MS", default_value_t = 3000)]
    pub openbao_timeout_ms: u64,
    /// For the benchmark's plaintext baseline only (`cargo xtask bench`): talk to PostgreSQL
    /// without TLS and without an SVID. Never use it elsewhere; the lab refuses plaintext.
    #[arg(long, hide = true)]
    pub db_insecure_plaintext: bool,
    /// `json` (one object a line, each request with the caller's SPIFFE ID) or `pretty`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: contract::logs::LogFormat,
}

impl Config {
    pub fn svid_poll(&self) -> Duration {
        Duration::from_millis(self.svid_poll_ms.max(50))
    }

    pub fn ledger_timeout(&self) -> Duration {
        Duration::from_millis(self.ledger_timeout_ms.max(100))
    }

    /// The ledger's host and port, or why they cannot be read.
    pub fn ledger(&self) -> anyhow::Result<Option<(String, u16)>> {
        host_port("--ledger-addr", self.ledger_addr.as_deref())
    }

    /// OpenBao's host and port, or why they cannot be read.
    pub fn openbao(&self) -> anyhow::Result<Option<(String, u16)>> {
        host_port("--openbao-addr", self.openbao_addr.as_deref())
    }

    pub fn openbao_timeout(&self) -> Duration {
        Duration::from_millis(self.openbao_timeout_ms.max(100))
    }

    pub fn openbao_jwt_file(&self) -> PathBuf {
        self.openbao_jwt_file
            .clone()
            .unwrap_or_else(|| self.svid_dir.join("openbao.jwt"))
    }

    pub fn db_timeout(&self) -> Duration {
        Duration::from_millis(self.db_timeout_ms.max(100))
    }
}

/// `host:port` from a flag, or why it does not read.
fn host_port(flag: &str, addr: Option<&str>) -> anyhow::Result<Option<(String, u16)>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| anyhow::anyhow!("{flag} {addr:?}: expected host:port"))?;
    let port = port
        .parse()
        .map_err(|e| anyhow::anyhow!("{flag} {addr:?}: the port: {e}"))?;
    Ok(Some((host.to_owned(), port)))
}
