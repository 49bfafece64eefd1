//! The backend service: `GET /api/orders` from PostgreSQL over mTLS with the workload's X.509-SVID.
//!
//! The SVID comes from files spiffe-helper keeps fresh; the backend never talks to the Workload API.
//! PostgreSQL is checked by its SPIFFE ID (URI SAN), not by hostname.

mod api;
mod config;
mod db;
mod error;
mod ledger;
mod metrics;
mod mtls;
mod openbao;
mod svid_source;

use std::future::Future;
use std::sync::Arc;

pub use api::{AppState, app, health_app};
pub use config::Config;
pub use db::{Database, DbError};
pub use error::AppError;
pub use ledger::LedgerClient;
pub use metrics::Metrics;
pub use openbao::OpenBao;
pub use svid_source::{SvidSource, Unusable};

/// Loads the SVID, starts watching its files, and sets up the database pool (no connection yet).
pub async fn start(config: &Config) -> anyhow::Result<AppState> {
    let svids = Arc::new(SvidSource::new(svid::SvidFiles::in_dir(&config.svid_dir)));
    svids.refresh().await;
    tokio::spawn(svids.clone().watch(config.svid_poll()));
    let db = Database::new(config, svids.clone())?;
    if config.db_insecure_plaintext {
        tracing::warn!("PLAINTEXT to PostgreSQL and no SVID: a benchmark baseline, not the lab");
    }
    let ledger = config.ledger()?.map(|(host, port)| {
        Arc::new(LedgerClient::new(
            host,
            port,
            config.ledger_spiffe_id.clone(),
            svids.clone(),
            config.ledger_timeout(),
        ))
    });
    let openbao = OpenBao::new(config, svids.clone())?;
    if let Some(openbao) = &openbao {
        openbao.clone().spawn();
    }
    Ok(AppState::new(svids, db, config.db_insecure_plaintext)
        .with_ledger(ledger)
        .with_openbao(openbao))
}

/// Runs the API until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = start(&config).await?;
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
    };
    let listener = bind(config.listen).await?;
    // One shutdown signal for both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(());
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    if let Some(addr) = config.health_listen {
        let health = bind(addr).await?;
        tracing::info!(listen = %addr, "health endpoints for probes");
        let serve = axum::serve(health, health_app(state.clone()))
            .with_graceful_shutdown(until_stopped(stopped.clone()));
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "health listener failed");
            }
        });
    }
    tracing::info!(listen = %config.listen, svid_dir = %config.svid_dir.display(), "backend ready to serve");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(until_stopped(stopped))
        .await?;
    Ok(())
}
