//! The client side of mTLS with the backend's SVID, for both peers it calls (PostgreSQL and the
//! ledger): present the SVID of this moment, trust only the bundle beside it, TLS 1.3 only, and
//! accept the server only if its leaf carries the one expected SPIFFE ID (checked in the verify
//! callback, not by hostname).

use std::sync::{Arc, Mutex};

use contract::PeerCert;
use openssl::error::ErrorStack;
use openssl::ssl::{SslConnector, SslConnectorBuilder, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use svid::{SpiffeId, Svid, spiffe_id_of};

/// What the verify callback saw of the server's leaf certificate during one handshake.
#[derive(Default)]
pub struct Seen {
    pub leaf: Option<PeerCert>,
    pub chain_error: Option<String>,
}

impl Seen {
    /// Why the handshake was refused on our side, if it was: the server's chain or its ID.
    pub fn refusal(&self, peer: &str, expected: &SpiffeId) -> Option<String> {
        let leaf = self.leaf.as_ref()?;
        let shown = leaf.spiffe_id.as_deref().unwrap_or("no SPIFFE ID");
        if let Some(chain) = &self.chain_error {
            return Some(format!(
                "{peer}'s certificate ({shown}, serial {}) does not chain to our trust bundle: {chain}",
                leaf.serial
            ));
        }
        (leaf.spiffe_id.as_deref() != Some(expected.as_str())).then(|| {
            format!(
                "{peer} presented SPIFFE ID {shown} (serial {}), expected {expected}",
                leaf.serial
            )
        })
    }
}

/// A connector presenting `svid` that accepts only a server with SPIFFE ID `expected`, noting
/// what it saw in `seen`.
pub fn connector(
    svid: &Svid,
    expected: SpiffeId,
    seen: Arc<Mutex<Seen>>,
) -> Result<SslConnectorBuilder, ErrorStack> {
    let mut b = presenting(svid)?;
    b.set_verify_callback(SslVerifyMode::PEER, check_peer(expected, seen));
    Ok(b)
}

/// A connector presenting `svid`, trusting only the bundle beside it, TLS 1.3 only; the
/// server's ID is checked per connection ([`check_peer`]). Building one reads the system's CA
/// paths (OpenSSL's defaults, then replaced by the bundle): worth keeping per SVID where
/// connections are made often.
pub fn presenting(svid: &Svid) -> Result<SslConnectorBuilder, ErrorStack> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))?;
    b.set_certificate(svid.leaf())?;
    for intermediate in &svid.chain[1..] {
        b.add_extra_chain_cert(intermediate.clone())?;
    }
    b.set_private_key(&svid.key)?;
    let mut store = X509StoreBuilder::new()?;
    for ca in &svid.bundle {
        store.add_cert(ca.clone())?;
    }
    b.set_verify_cert_store(store.build())?;
    Ok(b)
}

/// The verify callback: the chain as OpenSSL found it, and the leaf's SPIFFE ID exactly
/// `expected`; what it saw goes to `seen`.
pub fn check_peer(
    expected: SpiffeId,
    seen: Arc<Mutex<Seen>>,
) -> impl Fn(bool, &mut openssl::x509::X509StoreContextRef) -> bool + Send + Sync + 'static {
    move |chain_ok, ctx| {
        if ctx.error_depth() != 0 {
            return chain_ok;
        }
        let mut seen = seen.lock().unwrap();
        let Some(cert) = ctx.current_cert() else {
            return false;
        };
        let id = spiffe_id_of(cert).ok();
        seen.leaf = Some(PeerCert {
            spiffe_id: id.as_ref().map(|i| i.to_string()),
            serial: svid::serial_hex(cert),
            not_after: svid::unix_time(cert.not_after()),
        });
        if !chain_ok {
            seen.chain_error = Some(ctx.error().to_string());
        }
        chain_ok && id.as_ref() == Some(&expected)
    }
}

/// How one HTTPS exchange with a peer checked by SPIFFE ID went wrong; each caller says it in
/// its own words and decides what is worth another try.
#[derive(Debug)]
pub enum CallError {
    /// Setting TLS up on our side failed.
    Setup(String),
    /// Nothing accepted the connection.
    Unreachable(String),
    /// Our own check refused the peer: its chain or its SPIFFE ID (the reason says which).
    Refused(String),
    /// The handshake failed otherwise: the peer may have refused it.
    Handshake(String),
    /// HTTP over the connection failed to start.
    Http(String),
    /// The peer ended the connection before answering; `alert`: with a TLS alert (with TLS
    /// 1.3 the server checks our certificate after our side of the handshake is done, so a
    /// refusal of our SVID arrives on the first read).
    Dropped { why: String, alert: bool },
    /// Reading the answer failed.
    Read(String),
}

/// One HTTP/1.1 request over a new TLS connection from `connector` to `host:port`, the peer
/// accepted only with SPIFFE ID `expected` (what was seen of it goes to `seen`): the answer's
/// status and body.
pub async fn call(
    connector: &SslConnector,
    (host, port): (&str, u16),
    expected: &SpiffeId,
    seen: Arc<Mutex<Seen>>,
    peer: &str,
    req: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> Result<(u16, hyper::body::Bytes), CallError> {
    use http_body_util::BodyExt;
    let setup = |e: &dyn std::fmt::Display| CallError::Setup(e.to_string());
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| CallError::Unreachable(e.to_string()))?;
    // A request goes out in more than one write (TLS records, headers and body): without
    // this, Nagle's algorithm holds the later ones for the peer's delayed ACK, ~40 ms each.
    let _ = tcp.set_nodelay(true);
    // The peer is identified by its SPIFFE ID (the verify callback), not by a hostname.
    let ssl = connector
        .configure()
        .and_then(|mut c| {
            c.set_verify_hostname(false);
            c.set_verify_callback(
                SslVerifyMode::PEER,
                check_peer(expected.clone(), seen.clone()),
            );
            c.into_ssl(host)
        })
        .map_err(|e| setup(&e))?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| setup(&e))?;
    if let Err(e) = std::pin::Pin::new(&mut stream).connect().await {
        if let Some(refused) = seen.lock().unwrap().refusal(peer, expected) {
            return Err(CallError::Refused(refused));
        }
        let detail = e
            .ssl_error()
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        return Err(CallError::Handshake(detail));
    }
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| CallError::Http(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let res = match sender.send_request(req).await {
        Ok(res) => res,
        Err(e) => {
            // The connection's own error says why; the request only learns it was cancelled.
            let why = match conn.await {
                Ok(Err(conn_error)) => chain(&conn_error),
                _ => chain(&e),
            };
            let alert = why.contains("alert") || why.contains("SSL");
            return Err(CallError::Dropped { why, alert });
        }
    };
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| CallError::Read(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s = format!("{s}: {cause}");
        source = cause.source();
    }
    s
}

/// A connector presenting an SVID and trusting its bundle, built once per load of the files (a
/// new load, a new `Arc`: a rotated SVID, or a bundle gaining or losing a CA): building one costs
/// tens of milliseconds (OpenSSL reads the system's CA paths).
#[derive(Default)]
pub struct ConnectorCache(Mutex<Option<(Arc<Svid>, SslConnector)>>);

impl ConnectorCache {
    pub fn get(&self, svid: &Arc<Svid>) -> Result<SslConnector, ErrorStack> {
        let mut cached = self.0.lock().unwrap();
        if let Some((loaded, c)) = cached.as_ref()
            && Arc::ptr_eq(loaded, svid)
        {
            return Ok(c.clone());
        }
        let c = presenting(svid)?.build();
        *cached = Some((svid.clone(), c.clone()));
        Ok(c)
    }
}
