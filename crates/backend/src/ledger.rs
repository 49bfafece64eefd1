//! The backend's client of the ledger: each Run Demo recorded with `POST /entries` over mTLS,
//! presenting the SVID of that moment (spiffe-helper's files) and accepting the ledger only by
//! its SPIFFE ID. One connection per entry: a Run Demo is a person's click, and a fresh handshake
//! shows each rotation on either side at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::ledger::{Entry, LedgerCause, LedgerError, LedgerWrite, NewEntry};
use contract::{Cause, Link};
use http_body_util::Full;
use hyper::body::Bytes;
use svid::SpiffeId;

use crate::SvidSource;

/// How long before the one retry of a failure that may pass.
const RETRY_AFTER: Duration = Duration::from_millis(100);
use crate::mtls::{CallError, ConnectorCache, Seen};

pub struct LedgerClient {
    host: String,
    port: u16,
    expected: SpiffeId,
    svids: Arc<SvidSource>,
    timeout: Duration,
    connectors: ConnectorCache,
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
            connectors: ConnectorCache::default(),
        }
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
        let connector = self.connectors.get(&svid).map_err(|e| tls(&e))?;
        let body = serde_json::to_vec(new).expect("an entry serializes");
        let req = hyper::Request::post("/entries")
            .header("host", self.address())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request");
        let peer = (self.host.as_str(), self.port);
        let (status, bytes) =
            crate::mtls::call(&connector, peer, &self.expected, seen, "the ledger", req)
                .await
                .map_err(|e| match e {
                    CallError::Setup(e) => tls(&e),
                    CallError::Unreachable(e) => Failure(
                        Cause::LedgerUnreachable,
                        format!("the ledger at {} is unreachable: {e}", self.address()),
                        Transient::Yes,
                    ),
                    CallError::Refused(refused) => {
                        Failure(Cause::LedgerTls, refused, Transient::No)
                    }
                    CallError::Handshake(detail) => Failure(
                        Cause::LedgerTls,
                        format!(
                            "the ledger refused the handshake ({detail}); does it trust our SVID?"
                        ),
                        Transient::Yes,
                    ),
                    CallError::Http(e) => Failure(
                        Cause::LedgerUnreachable,
                        format!("HTTP to the ledger: {e}"),
                        Transient::Yes,
                    ),
                    CallError::Dropped { why, alert: true } => Failure(
                        Cause::LedgerTls,
                        format!("the ledger refused our SVID ({why}); does it trust our CA?"),
                        Transient::Yes,
                    ),
                    CallError::Dropped { why, alert: false } => Failure(
                        Cause::LedgerUnreachable,
                        format!("the ledger dropped the request: {why}"),
                        Transient::Yes,
                    ),
                    CallError::Read(e) => Failure(
                        Cause::LedgerUnreachable,
                        format!("reading the ledger's answer: {e}"),
                        Transient::Yes,
                    ),
                })?;
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
