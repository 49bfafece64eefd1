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

/// A `/metrics` endpoint, read: it must answer 200.
pub fn scrape(url: &str) -> anyhow::Result<contract::metrics::Scrape> {
    let (status, body) = get(url)?;
    anyhow::ensure!(status == 200, "GET {url} answered HTTP {status}: {body}");
    Ok(contract::metrics::Scrape::parse(&body))
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

/// A client's certificate chain and private key, held in memory.
pub struct ClientIdentity {
    pub chain: Vec<X509>,
    pub key: openssl::pkey::PKey<openssl::pkey::Private>,
}

impl ClientIdentity {
    /// spiffe-helper's files: `svid.pem` (the chain) and `svid_key.pem` in `dir`.
    pub fn from_helper_files(dir: &Path) -> anyhow::Result<ClientIdentity> {
        let chain = X509::stack_from_pem(&std::fs::read(dir.join("svid.pem"))?)?;
        let key =
            openssl::pkey::PKey::private_key_from_pem(&std::fs::read(dir.join("svid_key.pem"))?)?;
        anyhow::ensure!(!chain.is_empty(), "{}: no certificate", dir.display());
        Ok(ClientIdentity { chain, key })
    }

    fn present(&self, b: &mut openssl::ssl::SslConnectorBuilder) -> anyhow::Result<()> {
        b.set_certificate(&self.chain[0])?;
        for c in &self.chain[1..] {
            b.add_extra_chain_cert(c.clone())?;
        }
        b.set_private_key(&self.key)?;
        Ok(())
    }
}

/// What a server did with an attempt.
#[derive(Clone, Debug)]
pub enum Answer {
    /// It answered (an HTTP status and body, or PostgreSQL's rows).
    Served(String),
    /// It refused: the TLS alert, the HTTP error status, or PostgreSQL's error.
    Refused(String),
}

/// A TLS client that presents `id` (if any) and accepts only a server that chains to `trust`
/// and proves `server_id` (its URI SAN).
fn tls_client(
    id: Option<&ClientIdentity>,
    trust: &[X509],
    server_id: &str,
) -> anyhow::Result<openssl::ssl::SslConnectorBuilder> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(id) = id {
        id.present(&mut b)?;
    }
    let mut store = X509StoreBuilder::new()?;
    for ca in trust {
        store.add_cert(ca.clone())?;
    }
    b.set_verify_cert_store(store.build())?;
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
    Ok(b)
}

/// GET `path` over TLS as `id`: the HTTP answer, or the refusal (with TLS 1.3 a refused client
/// certificate arrives as an alert on the first read, after the handshake). An address that
/// cannot be connected to at all is an error, not a refusal.
pub fn https_get_as(
    addr: &str,
    path: &str,
    id: Option<&ClientIdentity>,
    trust: &[X509],
    server_id: &str,
) -> anyhow::Result<(Option<u16>, Answer)> {
    let mut conf = tls_client(id, trust, server_id)?.build().configure()?;
    conf.set_verify_hostname(false);
    let tcp = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = match conf.connect("backend", tcp) {
        Ok(tls) => tls,
        Err(e) => return Ok((None, Answer::Refused(format!("TLS: {e}")))),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n");
    if let Err(e) = tls.ssl_write(request.as_bytes()) {
        // The server closed after its alert (TLS 1.3 checks our certificate after the
        // handshake): the alert is still there to read.
        let mut buf = [0u8; 64];
        let why = match tls.ssl_read(&mut buf) {
            Err(alert) if alert.ssl_error().is_some() => alert.to_string(),
            _ => e.to_string(),
        };
        return Ok((None, Answer::Refused(format!("TLS: {why}"))));
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.ssl_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Ok((None, Answer::Refused(format!("TLS: {e}")))),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some(status) = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
    else {
        return Ok((
            None,
            Answer::Refused("connection closed without an answer".into()),
        ));
    };
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    let line = format!("HTTP {status}: {body}");
    Ok((
        Some(status),
        if status < 400 {
            Answer::Served(line)
        } else {
            Answer::Refused(line)
        },
    ))
}

/// A plaintext HTTP request to a listener that expects TLS: whatever came back. An HTTP answer
/// means plaintext was served.
pub fn plaintext_http(addr: &str, path: &str) -> anyhow::Result<Answer> {
    let mut tcp = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let sent = write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n"
    );
    let mut raw = Vec::new();
    let read = tcp.read_to_end(&mut raw);
    if let Err(e) = sent
        && raw.is_empty()
    {
        return Ok(Answer::Refused(format!(
            "closed before the request was written ({e})"
        )));
    }
    if raw.starts_with(b"HTTP/") {
        let line = String::from_utf8_lossy(&raw);
        return Ok(Answer::Served(
            line.lines().next().unwrap_or_default().to_owned(),
        ));
    }
    Ok(Answer::Refused(match (read, raw.len()) {
        (_, 0) => "connection closed, no HTTP answer".into(),
        (_, n) => format!("{n} bytes that are no HTTP (a TLS alert), then closed"),
    }))
}

/// PostgreSQL's TLS for a client presenting `id`, accepting only a server that proves
/// `server_id`.
pub fn postgres_tls(
    id: &ClientIdentity,
    trust: &[X509],
    server_id: &str,
) -> anyhow::Result<postgres_openssl::MakeTlsConnector> {
    let mut tls =
        postgres_openssl::MakeTlsConnector::new(tls_client(Some(id), trust, server_id)?.build());
    tls.set_callback(|c, _| {
        c.set_verify_hostname(false);
        Ok(())
    });
    Ok(tls)
}

/// Logs in to PostgreSQL at `addr` as role `backend` of database demo — over TLS as `id`, or in
/// plaintext with None — and runs `sql`: its rows, or PostgreSQL's refusal (severity, SQLSTATE
/// and message; or the TLS failure). An address that cannot be connected to is an error.
/// Whether the TCP connection itself was refused, anywhere in `e`'s sources.
fn connection_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

pub fn postgres_as(
    addr: &str,
    id: Option<&ClientIdentity>,
    trust: &[X509],
    server_id: &str,
    sql: &str,
) -> anyhow::Result<Answer> {
    TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let (host, port) = addr.rsplit_once(':').context("host:port")?;
    let mut config = postgres::Config::new();
    config
        .host(host)
        .port(port.parse()?)
        .dbname("demo")
        .user("backend")
        .connect_timeout(Duration::from_secs(5));
    let client = match id {
        Some(id) => config
            .ssl_mode(postgres::config::SslMode::Require)
            .connect(postgres_tls(id, trust, server_id)?),
        None => config
            .ssl_mode(postgres::config::SslMode::Disable)
            .connect(postgres::NoTls),
    };
    let refusal = |e: postgres::Error| match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text += &format!(": {s_text}");
                }
                source = s.source();
            }
            text
        }
    };
    let mut client = match client {
        Ok(c) => c,
        // Not PostgreSQL's answer: nothing listened any more (on kind, the port-forward ended
        // between the check above and this connection). The caller may try again.
        Err(e) if connection_refused(&e) => bail!("connect {addr}: {}", refusal(e)),
        Err(e) => return Ok(Answer::Refused(refusal(e))),
    };
    Ok(match client.simple_query(sql) {
        Ok(messages) => {
            let rows: Vec<String> = messages
                .iter()
                .filter_map(|m| match m {
                    postgres::SimpleQueryMessage::Row(r) => Some(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or(""))
                            .collect::<Vec<_>>()
                            .join("|"),
                    ),
                    _ => None,
                })
                .collect();
            Answer::Served(format!("rows: {}", rows.join("; ")))
        }
        Err(e) => Answer::Refused(refusal(e)),
    })
}
