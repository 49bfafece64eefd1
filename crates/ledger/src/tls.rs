//! The ledger's own mTLS listener: the handshake (rustls, via `spiffe-rustls`) proves the caller
//! holds an X.509-SVID of the trust domain and presents the ledger's current SVID; each request
//! then carries the caller's SPIFFE ID ([`Caller`]) for the routes to authorize by.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use spiffe::X509Source;
use spiffe_rustls::{LocalOnly, authorizer, mtls_server};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The SPIFFE ID in the client certificate of this request's connection.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

/// The server side of mTLS: any SVID of the lab's trust domain may connect (the routes decide by
/// exact ID), only the lab's trust domain's bundle is used, no session resumption (a resumed
/// session would skip the check of the client's SVID). With it, the status of its material.
pub fn server_config(
    x509: X509Source,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, spiffe_rustls::TlsStatus)> {
    let td: spiffe::TrustDomain = contract::TRUST_DOMAIN.try_into()?;
    let config = mtls_server(x509)
        .authorize(authorizer::trust_domains([contract::TRUST_DOMAIN])?)
        .trust_domain_policy(LocalOnly(td))
        .with_alpn_protocols([b"h2".as_slice(), b"http/1.1".as_slice()])
        .build_with_status()?;
    Ok((Arc::new(config.0), config.1))
}

/// The longest a handshake waits for a rotated SVID or bundle to be ready for TLS.
const MATERIAL_WAIT: Duration = Duration::from_millis(500);

/// Waits while a new SVID or bundle from the Workload API is being turned into TLS material:
/// `spiffe-rustls` refuses every handshake in that moment (it never verifies against material
/// the source has moved past), so one arriving then waits its turn instead of failing. Any
/// other reason not to serve (no SVID at all) fails the handshake at once, as it should.
async fn material_ready(status: &mut spiffe_rustls::TlsStatus) {
    let deadline = tokio::time::Instant::now() + MATERIAL_WAIT;
    loop {
        let pending = matches!(
            status.current().error.as_deref(),
            Some(spiffe_rustls::Error::PendingRevision { .. })
        );
        if !pending {
            return;
        }
        if tokio::time::timeout_at(deadline, status.changed())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Accepts connections until `stop` changes: the handshake, then TLS 1.3 only, then HTTP/1.1 or
/// HTTP/2 with the caller's SPIFFE ID attached to every request.
pub async fn serve(
    listener: TcpListener,
    (config, status): (Arc<rustls::ServerConfig>, spiffe_rustls::TlsStatus),
    app: Router,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        // Answers go out in more than one write: not held back for the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut status = status.clone();
        tokio::spawn(async move {
            material_ready(&mut status).await;
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %addr, error = %e, "mTLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(peer = %addr, "mTLS handshake did not finish within 10 s");
                        return;
                    }
                };
            let (_, conn) = tls.get_ref();
            if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
                tracing::info!(peer = %addr, version = ?conn.protocol_version(), "refused: TLS 1.3 only");
                return;
            }
            let caller = conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| spiffe::Certificate::try_from(leaf.as_ref()).ok())
                .and_then(|leaf| leaf.spiffe_id().ok());
            let Some(caller) = caller else {
                // The verifier admits only SVIDs, so this does not happen; refuse if it does.
                tracing::warn!(peer = %addr, "refused: no SPIFFE ID in the client certificate");
                return;
            };
            let app = app.layer(axum::Extension(Caller(caller.to_string())));
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                .await;
            if let Err(e) = served {
                tracing::debug!(peer = %addr, error = %e, "connection ended");
            }
        });
    }
}
