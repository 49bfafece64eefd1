//! The ledger's identity, from the Workload API only: an `X509Source` (its X.509-SVID and the
//! bundle, pushed by the agent and rotated in memory) and a `JwtSource` (JWT-SVIDs on demand and
//! the JWT bundle). Until the agent answers, the ledger has no identity and says why.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use spiffe::{JwtSource, X509Source, X509Svid};

use crate::inspect;

/// Both sources, once the agent has answered.
pub struct Sources {
    pub x509: X509Source,
    pub jwt: JwtSource,
}

/// An SVID the ledger can serve with: present and unexpired.
pub struct Held {
    pub svid: Arc<X509Svid>,
    pub leaf: contract::ledger::CertInfo,
}

pub struct Identity {
    endpoint: String,
    sources: OnceLock<Sources>,
    last_error: Mutex<Option<String>>,
    rotations: AtomicU64,
}

impl Identity {
    pub fn new(endpoint: String) -> Arc<Identity> {
        Arc::new(Identity {
            endpoint,
            sources: OnceLock::new(),
            last_error: Mutex::new(None),
            rotations: AtomicU64::new(0),
        })
    }

    /// Where the ledger reaches the Workload API.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn sources(&self) -> Option<&Sources> {
        self.sources.get()
    }

    /// Times a new SVID (another serial) arrived after the first.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// The SVID to serve with, or why there is none.
    pub fn held(&self) -> Result<Held, String> {
        let Some(sources) = self.sources.get() else {
            let why = self.last_error.lock().unwrap().clone();
            return Err(match why {
                Some(e) => format!(
                    "no SVID: the Workload API at {} gave none yet ({e})",
                    self.endpoint
                ),
                None => format!("no SVID yet: asking the Workload API at {}", self.endpoint),
            });
        };
        let svid = match sources.x509.svid() {
            Ok(svid) => svid,
            Err(e) => {
                // The source withholds an expired SVID; its last context still tells which.
                let last = sources.x509.state().context().ok();
                let expired = last
                    .as_ref()
                    .and_then(|ctx| ctx.default_svid())
                    .and_then(|svid| inspect::decode(svid.leaf().as_bytes()).ok())
                    .filter(|leaf| leaf.seconds_left <= 0);
                return Err(match expired {
                    Some(leaf) => expired_reason(&leaf),
                    None => format!("no SVID from the Workload API: {}", error_chain(&e)),
                });
            }
        };
        let leaf = inspect::decode(svid.leaf().as_bytes())
            .map_err(|e| format!("the SVID's leaf cannot be read: {e}"))?;
        if leaf.seconds_left <= 0 {
            return Err(expired_reason(&leaf));
        }
        Ok(Held { svid, leaf })
    }

    /// Connects to the Workload API until both sources answer, then counts rotations; runs for
    /// the life of the process.
    pub async fn connect(self: Arc<Self>) {
        let sources = loop {
            match self.try_connect().await {
                Ok(sources) => break sources,
                Err(e) => {
                    let mut last = self.last_error.lock().unwrap();
                    if last.as_deref() != Some(e.as_str()) {
                        tracing::warn!(endpoint = %self.endpoint, error = %e, "no SVID yet; retrying");
                    }
                    *last = Some(e);
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let mut updates = sources.x509.updated();
        if self.sources.set(sources).is_err() {
            return;
        }
        let mut serial = self.held().map(|h| h.leaf.serial).ok();
        tracing::info!(
            serial = serial.as_deref().unwrap_or("-"),
            "SVID from the Workload API"
        );
        while updates.changed().await.is_ok() {
            let now = self.held().map(|h| (h.leaf.serial, h.leaf.seconds_left));
            if let Ok((new, left)) = now
                && serial.as_deref() != Some(new.as_str())
            {
                self.rotations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(serial = %new, seconds_left = left, "new SVID from the Workload API");
                serial = Some(new);
            }
        }
    }

    async fn try_connect(&self) -> Result<Sources, String> {
        let wait = Duration::from_secs(5);
        let x509 = X509Source::builder()
            .endpoint(&self.endpoint)
            .initial_sync_timeout(wait)
            .build()
            .await
            .map_err(|e| error_chain(&e))?;
        let jwt = JwtSource::builder()
            .endpoint(&self.endpoint)
            .initial_sync_timeout(wait)
            .build()
            .await
            .map_err(|e| error_chain(&e))?;
        Ok(Sources { x509, jwt })
    }
}

fn expired_reason(leaf: &contract::ledger::CertInfo) -> String {
    format!(
        "SVID expired {} s ago (serial {}) and the Workload API sent no newer one",
        -leaf.seconds_left, leaf.serial
    )
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}
