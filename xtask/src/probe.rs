//! Looking at the running lab from outside: HTTP endpoints, Envoy's admin `/certs`, and the
//! certificate a TLS server (PostgreSQL included) really presents.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use openssl::stack::Stack;
use openssl::x509::X509;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509StoreContext, X509VerifyResult};

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// GET a URL: the status and the body.
pub fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let mut res = agent(Duration::from_secs(3))
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let body = res.body_mut().read_to_string().unwrap_or_default();
    Ok((res.status().as_u16(), body))
}

/// POST with an empty body: the status and the body.
pub fn post(url: &str) -> anyhow::Result<(u16, String)> {
    let mut res = agent(Duration::from_secs(5))
        .post(url)
        .send_empty()
        .with_context(|| format!("POST {url}"))?;
    let body = res.body_mut().read_to_string().unwrap_or_default();
    Ok((res.status().as_u16(), body))
}

/// An Envoy's admin `/certs`: the leaf it holds and the CAs it validates peers with.
pub fn envoy_certs(admin: &str) -> anyhow::Result<contract::envoy::Certs> {
    let (status, body) = get(&format!("{admin}/certs"))?;
    if status != 200 {
        bail!("{admin}/certs answered HTTP {status}");
    }
    serde_json::from_str(&body).with_context(|| format!("{admin}/certs answered {body:?}"))
}

/// The certificate chain a TLS server presents (no client certificate is offered; with TLS 1.3
/// the server's certificate arrives before it asks for ours). With `postgres`, PostgreSQL's
/// SSLRequest is sent first.
pub fn server_chain(addr: &str, postgres: bool) -> anyhow::Result<Vec<X509>> {
    let mut tcp = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
    if postgres {
        // SSLRequest: length 8, code 80877103.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)?;
        if answer[0] != b'S' {
            bail!("PostgreSQL at {addr} does not offer TLS");
        }
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    let record = seen.clone();
    b.set_verify_callback(SslVerifyMode::PEER, move |_, ctx| {
        if let Some(chain) = ctx.chain() {
            *record.lock().unwrap() = chain.iter().map(|c| c.to_owned()).collect();
        }
        true
    });
    let mut conf = b.build().configure()?;
    conf.set_verify_hostname(false);
    let _ = conf.connect("localhost", tcp);
    let chain = seen.lock().unwrap().clone();
    if chain.is_empty() {
        bail!("{addr} presented no certificate");
    }
    Ok(chain)
}

/// Checks that `chain[0]` chains to one of `bundle` (a SPIRE trust bundle).
pub fn chains_to(chain: &[X509], bundle: &[X509]) -> anyhow::Result<()> {
    let mut store = X509StoreBuilder::new()?;
    for ca in bundle {
        store.add_cert(ca.clone())?;
    }
    let store = store.build();
    let mut untrusted = Stack::new()?;
    for c in &chain[1..] {
        untrusted.push(c.clone())?;
    }
    let mut ctx = X509StoreContext::new()?;
    let result = ctx.init(&store, &chain[0], &untrusted, |c| {
        c.verify_cert()?;
        Ok(c.error())
    })?;
    if result != X509VerifyResult::OK {
        bail!("{}", result.error_string());
    }
    Ok(())
}

/// One HTTPS request with a client certificate; the server must prove `server_id`.
pub fn https_get_with_cert(
    addr: &str,
    path: &str,
    cert: &Path,
    key: &Path,
    bundle: &Path,
    server_id: &str,
) -> anyhow::Result<(u16, String)> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_certificate_chain_file(cert)?;
    b.set_private_key_file(key, openssl::ssl::SslFiletype::PEM)?;
    b.set_ca_file(bundle)?;
    let expected = server_id.to_owned();
    b.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
        if ctx.error_depth() != 0 {
            return ok;
        }
        ok && ctx
            .current_cert()
            .and_then(|c| svid::spiffe_id_of(c).ok())
            .is_some_and(|id| id.as_str() == expected)
    });
    let mut conf = b.build().configure()?;
    conf.set_verify_hostname(false);
    let tcp = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = conf
        .connect("backend", tcp)
        .map_err(|e| anyhow::anyhow!("TLS with {addr}: {e}"))?;
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A TLS handshake with no client certificate: the error the server answers with.
pub fn tls_without_client_cert(addr: &str) -> anyhow::Result<String> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    let conf = b.build().configure()?;
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
    match conf.verify_hostname(false).connect("backend", tcp) {
        Ok(mut tls) => {
            // With TLS 1.3 the refusal arrives after the handshake, on the first read.
            let _ = write!(tls, "GET / HTTP/1.1\r\nHost: backend\r\n\r\n");
            let mut buf = [0u8; 256];
            match tls.ssl_read(&mut buf) {
                Ok(n) if n > 0 => bail!(
                    "the server answered without a client certificate: {}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Ok(_) => Ok("connection closed without an answer".into()),
                Err(e) => Ok(e.to_string()),
            }
        }
        Err(e) => Ok(e.to_string()),
    }
}
