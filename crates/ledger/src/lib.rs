//! The ledger: the lab's third pattern. It talks to the SPIRE Workload API itself (the `spiffe`
//! crate: an `X509Source` rotated in memory, a `JwtSource`), serves mTLS with its own SVID and no
//! sidecar, and authorizes each route by the caller's SPIFFE ID. The backend records every Run
//! Demo in it; the frontend reads it, and inspects identities with it, through its Envoy.

mod api;
mod identity;
mod inspect;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use api::{AppState, app, health_app};
pub use identity::Identity;
pub use inspect::{decode, validate_jwt, validate_x509};
pub use tls::Caller;

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "ledger",
    about = "Records Run Demos and inspects SVIDs; its identity comes from the Workload API"
)]
pub struct Config {
    /// Where to serve the API over mTLS.
    #[arg(long, env = "LEDGER_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Where to serve `/healthz` and `/readyz` in plain HTTP for probes; none by default.
    #[arg(long, env = "LEDGER_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// The Workload API, e.g. `unix:///run/spire/agent-sockets/spire-agent.sock`.
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    pub workload_api: String,
    /// `json` (one object a line, each request with the caller's SPIFFE ID) or `pretty`.
    #[arg(long, env = "LOG_FORMAT", default_value = "pretty")]
    pub log_format: contract::logs::LogFormat,
}

/// Runs until `shutdown` resolves: the health listener at once, the mTLS listener as soon as the
/// Workload API has given an SVID (before that there is nothing to serve TLS with).
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let identity = Identity::new(config.workload_api.clone());
    tokio::spawn(identity.clone().connect());
    let state = AppState::new(identity.clone());
    let (stop, stopped) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(());
    });
    let bind = |addr: SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    if let Some(addr) = config.health_listen {
        let health = bind(addr).await?;
        tracing::info!(listen = %addr, "health endpoints for probes");
        let mut rx = stopped.clone();
        let serve =
            axum::serve(health, health_app(state.clone())).with_graceful_shutdown(async move {
                let _ = rx.changed().await;
            });
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "health listener failed");
            }
        });
    }
    let mut rx = stopped.clone();
    let sources = loop {
        if let Some(s) = identity.sources() {
            break s;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = rx.changed() => return Ok(()),
        }
    };
    let tls = tls::server_config(sources.x509.clone())?;
    let listener = bind(config.listen).await?;
    tracing::info!(listen = %config.listen, workload_api = %config.workload_api, "ledger serving mTLS");
    tls::serve(listener, tls, app(state), stopped).await;
    Ok(())
}

/// A ledger serving in this process on free loopback ports, as tests run it; it stops when
/// dropped.
pub struct InProcess {
    pub api: SocketAddr,
    pub health: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl InProcess {
    /// Starts serving (inside a Tokio runtime) with the Workload API at `workload_api`.
    pub fn start(workload_api: String) -> InProcess {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
        };
        let (api, health) = (free(), free());
        let config = Config {
            listen: api,
            health_listen: Some(health),
            workload_api,
            log_format: contract::logs::LogFormat::Pretty,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(e) = serve(config, async move {
                let _ = stopped.await;
            })
            .await
            {
                tracing::error!(error = %e, "the ledger stopped");
            }
        });
        InProcess {
            api,
            health,
            stop: Some(stop),
        }
    }

    /// Waits until the mTLS listener accepts connections (it binds once there is an SVID).
    pub async fn wait_listening(&self, within: Duration) -> anyhow::Result<()> {
        let start = std::time::Instant::now();
        while tokio::net::TcpStream::connect(self.api).await.is_err() {
            anyhow::ensure!(
                start.elapsed() < within,
                "the ledger did not listen on {} within {within:?}",
                self.api
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
