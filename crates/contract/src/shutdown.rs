//! How the services stop: on SIGTERM (Kubernetes, the local runtime's `down`) or Ctrl-C, each
//! finishing what it is serving.

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
