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
