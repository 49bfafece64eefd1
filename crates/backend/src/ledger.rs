//! The backend's client of the ledger: each Run Demo recorded with `POST /entries` over mTLS,
//! presenting the SVID of that moment (spiffe-helper's files) and accepting the ledger only by
//! its SPIFFE ID. One connection per entry: a Run Demo is a person's click, and a fresh handshake
//! shows each rotation on either side at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::ledger::{Entry, LedgerCause, LedgerError, LedgerWrite, NewEntry};
use contract::{Cause, Link};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use openssl::ssl::{SslConnector, SslVerifyMode};
use svid::SpiffeId;

use crate::SvidSource;

/// How long before the one retry of a failure that may pass.
const RETRY_AFTER: Duration = Duration::from_millis(100);
use crate::mtls::Seen;

pub struct LedgerClient {
    host: String,
    port: u16,
    expected: SpiffeId,
    svids: Arc<SvidSource>,
    timeout: Duration,
    /// The connector for this SVID and its bundle as last loaded (a new load, a new `Arc`: a
    /// rotated SVID or a bundle gaining or losing a CA), built once: building one costs tens
    /// of milliseconds (OpenSSL reads the system's CA paths).
    cached: Mutex<Option<(Arc<svid::Svid>, SslConnector)>>,
}

/// Why an entry was not recorded, and whether trying once more may change that: the ledger not
/// answering or ending a handshake (it may have been between two SVIDs), not a refusal the
/// answer or our own check of its ID made plain.
struct Failure(Cause, String, Transient);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transient {
    Yes,
    No,
}

impl LedgerClient {
    pub fn new(
        host: String,
        port: u16,
        expected: SpiffeId,
        svids: Arc<SvidSource>,
        timeout: Duration,
    ) -> LedgerClient {
        LedgerClient {
            host,
            port,
            expected,
            svids,
            timeout,
            cached: Mutex::new(None),
        }
    }

    /// The connector presenting `svid` and trusting its bundle, built once per load of the files.
    fn connector(
        &self,
        svid: &Arc<svid::Svid>,
    ) -> Result<SslConnector, openssl::error::ErrorStack> {
        let mut cached = self.cached.lock().unwrap();
        if let Some((loaded, c)) = cached.as_ref()
            && Arc::ptr_eq(loaded, svid)
        {
            return Ok(c.clone());
        }
        let c = crate::mtls::presenting(svid)?.build();
        *cached = Some((svid.clone(), c.clone()));
        Ok(c)
    }

    fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Records one Run Demo; the link says how it went, in words a person understands. A failure
    /// that may pass (the ledger ended a handshake or did not answer) is tried once more: the
    /// ledger refuses handshakes in the moment it takes up a new SVID or bundle.
    pub async fn record(&self, new: &NewEntry) -> LedgerWrite {
        let (mut outcome, mut ledger_spiffe_id) = self.attempt(new).await;
        if let Err(Failure(_, reason, Transient::Yes)) = &outcome {
            tracing::info!(reason = %reason, "recording in the ledger failed; trying once more");
            tokio::time::sleep(RETRY_AFTER).await;
            (outcome, ledger_spiffe_id) = self.attempt(new).await;
        }
        match outcome {
            Ok(entry) => LedgerWrite {
                link: Link::success(),
                entry: Some(entry),
                ledger_spiffe_id,
            },
            Err(Failure(cause, reason, _)) => LedgerWrite {
                link: Link::failed(cause, reason),
                entry: None,
                ledger_spiffe_id,
            },
        }
    }

    /// One try, within the timeout; with the ledger's SPIFFE ID if its certificate was seen.
    async fn attempt(&self, new: &NewEntry) -> (Result<Entry, Failure>, Option<String>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let outcome = tokio::time::timeout(self.timeout, self.post(new, seen.clone()))
            .await
            .unwrap_or_else(|_| {
                Err(Failure(
                    Cause::LedgerUnreachable,
                    format!(
                        "the ledger at {} did not answer within {} ms",
                        self.address(),
                        self.timeout.as_millis()
                    ),
                    Transient::No,
                ))
            });
        let id = seen
            .lock()
            .unwrap()
            .leaf
            .as_ref()
            .and_then(|l| l.spiffe_id.clone());
        (outcome, id)
    }

    async fn post(&self, new: &NewEntry, seen: Arc<Mutex<Seen>>) -> Result<Entry, Failure> {
        let svid = self.svids.current().map_err(|u| {
            Failure(
                u.cause,
                format!("no usable SVID to present to the ledger: {u}"),
                Transient::No,
            )
        })?;
        let tls = |e: &dyn std::fmt::Display| {
            Failure(
                Cause::LedgerTls,
                format!("TLS with the ledger failed: {e}"),
                Transient::No,
            )
        };
        let connector = self.connector(&svid).map_err(|e| tls(&e))?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| {
                Failure(
                    Cause::LedgerUnreachable,
                    format!("the ledger at {} is unreachable: {e}", self.address()),
                    Transient::Yes,
                )
            })?;
        // A request goes out in more than one write (TLS records, headers and body): without
        // this, Nagle's algorithm holds the later ones for the peer's delayed ACK, ~40 ms each.
        let _ = tcp.set_nodelay(true);
        // The ledger is identified by its SPIFFE ID (the verify callback), not by a hostname.
        let ssl = connector
            .configure()
            .and_then(|mut c| {
                c.set_verify_hostname(false);
                c.set_verify_callback(
                    SslVerifyMode::PEER,
                    crate::mtls::check_peer(self.expected.clone(), seen.clone()),
                );
                c.into_ssl(&self.host)
            })
            .map_err(|e| tls(&e))?;
        let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| tls(&e))?;
        if let Err(e) = std::pin::Pin::new(&mut stream).connect().await {
            let seen = seen.lock().unwrap();
            if let Some(refused) = seen.refusal("the ledger", &self.expected) {
                return Err(Failure(Cause::LedgerTls, refused, Transient::No));
            }
            let detail = e
                .ssl_error()
                .map(|s| s.to_string())
                .unwrap_or_else(|| e.to_string());
            return Err(Failure(
                Cause::LedgerTls,
                format!("the ledger refused the handshake ({detail}); does it trust our SVID?"),
                Transient::Yes,
            ));
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                Failure(
                    Cause::LedgerUnreachable,
                    format!("HTTP to the ledger: {e}"),
                    Transient::Yes,
                )
            })?;
        let conn = tokio::spawn(conn);
        let body = serde_json::to_vec(new).expect("an entry serializes");
        let req = hyper::Request::post("/entries")
            .header("host", self.address())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let res = match sender.send_request(req).await {
            Ok(res) => res,
            Err(e) => {
                // The connection's own error says why; the request only learns it was cancelled.
                let why = match conn.await {
                    Ok(Err(conn_error)) => chain(&conn_error),
                    _ => chain(&e),
                };
                // With TLS 1.3 the server checks our certificate after our side of the
                // handshake is done: a refusal arrives as an alert on the first read.
                return Err(if why.contains("alert") || why.contains("SSL") {
                    Failure(
                        Cause::LedgerTls,
                        format!("the ledger refused our SVID ({why}); does it trust our CA?"),
                        Transient::Yes,
                    )
                } else {
                    Failure(
                        Cause::LedgerUnreachable,
                        format!("the ledger dropped the request: {why}"),
                        Transient::Yes,
                    )
                });
            }
        };
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| {
                Failure(
                    Cause::LedgerUnreachable,
                    format!("reading the ledger's answer: {e}"),
                    Transient::Yes,
                )
            })?
            .to_bytes();
        if status == 201 {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Failure(
                    Cause::Unexpected,
                    format!("the ledger answered something unreadable: {e}"),
                    Transient::No,
                )
            });
        }
        Err(match serde_json::from_slice::<LedgerError>(&bytes) {
            Ok(e) if e.error == LedgerCause::IdNotAllowed => Failure(
                Cause::LedgerRefused,
                format!("refused by the ledger: {}", e.reason),
                Transient::No,
            ),
            Ok(e) => Failure(
                Cause::Unexpected,
                format!("the ledger answered {status}: {}", e.reason),
                Transient::No,
            ),
            Err(_) => Failure(
                Cause::Unexpected,
                format!(
                    "the ledger answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
                Transient::No,
            ),
        })
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s = format!("{s}: {cause}");
        source = cause.source();
    }
    s
}
