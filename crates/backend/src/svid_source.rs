//! Keeps the latest good X.509-SVID from disk and a generation number that grows on each rotation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use contract::Cause;
use svid::{Svid, SvidFiles};

/// Why there is no SVID to present right now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unusable {
    /// `NoSvid` or `SvidExpired`.
    pub cause: Cause,
    pub reason: String,
}

pub struct SvidSource {
    files: SvidFiles,
    state: RwLock<State>,
    generation: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The bytes of the three files when they last loaded (or failed to), to notice changes.
    seen: Vec<u8>,
    good: Option<Arc<Svid>>,
    /// Why the files on disk are not usable right now, if they are not.
    problem: Option<Unusable>,
}

/// How many times a pair that looks half written is read again before it counts as broken.
const RETRIES: u32 = 10;
const RETRY_PAUSE: Duration = Duration::from_millis(50);

impl SvidSource {
    pub fn new(files: SvidFiles) -> Self {
        SvidSource {
            files,
            state: RwLock::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// The SVID to present now: the latest that loaded whole and is unexpired.
    pub fn current(&self) -> Result<Arc<Svid>, Unusable> {
        let state = self.state.read().unwrap();
        let no_svid = |reason: String| Unusable {
            cause: Cause::NoSvid,
            reason,
        };
        match (&state.good, &state.problem) {
            (Some(svid), _) if svid.seconds_left() > 0 => Ok(svid.clone()),
            (Some(svid), _) => Err(Unusable {
                cause: Cause::SvidExpired,
                reason: format!(
                    "SVID {} (serial {}) expired {} s ago and no newer one was written",
                    svid.spiffe_id,
                    svid.serial,
                    -svid.seconds_left()
                ),
            }),
            (None, Some(problem)) => Err(problem.clone()),
            (None, None) => Err(no_svid("no SVID loaded yet".into())),
        }
    }

    /// Why the files on disk are not usable, if they are not.
    pub fn problem(&self) -> Option<String> {
        let state = self.state.read().unwrap();
        state.problem.as_ref().map(|p| p.reason.clone())
    }

    /// Grows each time a different SVID is loaded; connections made with an older one are recycled.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the files again; a changed, whole, valid SVID replaces the current one.
    pub async fn refresh(&self) {
        let mut attempt = 0;
        loop {
            let bytes = self.snapshot();
            if self.state.read().unwrap().seen == bytes {
                return;
            }
            match self.files.load() {
                Ok(svid) => {
                    let mut state = self.state.write().unwrap();
                    tracing::info!(spiffe_id = %svid.spiffe_id, serial = %svid.serial, seconds_left = svid.seconds_left(), "SVID loaded");
                    state.seen = bytes;
                    state.good = Some(Arc::new(svid));
                    state.problem = None;
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Err(e) if e.is_transient() && attempt < RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => {
                    let mut state = self.state.write().unwrap();
                    let problem = Unusable {
                        cause: match e {
                            svid::SvidError::Expired { .. } => Cause::SvidExpired,
                            _ => Cause::NoSvid,
                        },
                        reason: e.to_string(),
                    };
                    if state.problem.as_ref() != Some(&problem) {
                        tracing::warn!(error = %e, "SVID files not usable; keeping the last good SVID while it is valid");
                    }
                    state.seen = bytes;
                    state.problem = Some(problem);
                    return;
                }
            }
        }
    }

    /// Polls the files forever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.refresh().await;
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for path in [&self.files.cert, &self.files.key, &self.files.bundle] {
            match std::fs::read(path) {
                Ok(b) => all.extend_from_slice(&b),
                Err(e) => all.extend_from_slice(e.to_string().as_bytes()),
            }
            all.push(0);
        }
        all
    }
}
