//! Run Demo from outside, the way a person presses the button: one call (`run_demo`), or
//! continuous calls from several workers (`Load`), for the scenarios and the bench alike. A call
//! counts as a success only when the frontend's typed answer says both links succeeded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use contract::{Link, RunDemo};

/// One Run Demo and how long it took.
#[derive(Debug)]
pub struct Demo {
    pub result: RunDemo,
    pub took: Duration,
}

impl Demo {
    pub fn ok(&self) -> bool {
        self.result.succeeded()
    }

    /// One line for people: both links, their reasons, the orders.
    pub fn line(&self) -> String {
        let link = |name: &str, l: &Link| {
            let status = serde_json::to_value(l.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            match &l.reason {
                Some(r) => format!("{name}: {status} — {r}"),
                None => format!("{name}: {status}"),
            }
        };
        let r = &self.result;
        let mut s = format!(
            "{} | {}",
            link("Frontend to Backend", &r.frontend_to_backend),
            link("Backend to DB", &r.backend_to_db)
        );
        if let Some(ledger) = &r.backend_to_ledger {
            s += &format!(" | {}", link("Backend to Ledger", ledger));
        }
        if let Some(openbao) = &r.backend_to_openbao {
            s += &format!(" | {}", link("Backend to OpenBao", openbao));
        }
        if !r.orders.is_empty() {
            s += &format!(" | {} orders", r.orders.len());
        }
        s
    }
}

/// `POST /api/run-demo` on the frontend at `frontend_url`.
pub fn run_demo(frontend_url: &str) -> anyhow::Result<Demo> {
    let started = Instant::now();
    let (status, body) = crate::probe::post(&format!("{frontend_url}/api/run-demo"))?;
    let took = started.elapsed();
    ensure!(status == 200, "the frontend answered HTTP {status}: {body}");
    let result = serde_json::from_str(&body)
        .with_context(|| format!("the frontend's Run Demo answer does not read: {body}"))?;
    Ok(Demo { result, took })
}

/// Whether a Run Demo records itself in the ledger. The bench skips it on both profiles: the
/// plaintext baseline has no ledger, and each profile must do the same work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ledger {
    Record,
    Skip,
}

impl Ledger {
    /// The frontend's Run Demo path for it.
    pub fn path(self) -> &'static str {
        match self {
            Ledger::Record => "/api/run-demo",
            Ledger::Skip => "/api/run-demo?ledger=skip",
        }
    }
}

/// Run Demo calls one after the other over one keep-alive connection.
pub struct Caller {
    agent: ureq::Agent,
    target: String,
}

impl Caller {
    pub fn new(frontend_url: &str, ledger: Ledger) -> Caller {
        Caller {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into(),
            target: format!("{frontend_url}{}", ledger.path()),
        }
    }

    /// One Run Demo: its typed answer, or what came back instead, in words.
    pub fn call(&self) -> Result<Demo, String> {
        let started = Instant::now();
        let mut res = self
            .agent
            .post(&self.target)
            .send_empty()
            .map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let body = res.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let took = started.elapsed();
        match serde_json::from_str::<RunDemo>(&body) {
            Ok(result) if status == 200 => Ok(Demo { result, took }),
            _ => Err(format!("HTTP {status}: {body}")),
        }
    }
}

/// What a run of continuous Run Demo calls saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    /// The first few failures, in words.
    pub failures: Vec<String>,
    /// The latency of every successful call.
    pub latencies: Vec<Duration>,
    /// When each successful call ended.
    pub successes: Vec<Instant>,
}

impl Tally {
    pub fn requests(&self) -> usize {
        self.ok + self.failed
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        let room = KEPT_FAILURES.saturating_sub(self.failures.len());
        self.failures.extend(other.failures.into_iter().take(room));
        self.latencies.extend(other.latencies);
        self.successes.extend(other.successes);
    }

    /// The longest time without a successful call, from `since` to `until` (all workers
    /// together).
    pub fn longest_gap(&self, since: Instant, until: Instant) -> Duration {
        let mut at = self.successes.clone();
        at.sort();
        let mut last = since;
        let mut longest = Duration::ZERO;
        for t in at.into_iter().chain([until]) {
            longest = longest.max(t.saturating_duration_since(last));
            last = last.max(t);
        }
        longest
    }
}

const KEPT_FAILURES: usize = 20;

/// Continuous Run Demo calls from `workers` threads (each with its own keep-alive connection),
/// `pause` apart, until `finish`.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Tally>>,
}

impl Load {
    pub fn start(frontend_url: &str, ledger: Ledger, workers: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (stop, url) = (stop.clone(), frontend_url.to_owned());
                std::thread::spawn(move || worker(&url, ledger, &stop, pause))
            })
            .collect();
        Load { stop, workers }
    }

    /// Stops the workers and adds up what they saw.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut tally = Tally::default();
        for w in self.workers {
            if let Ok(t) = w.join() {
                tally.merge(t);
            }
        }
        tally
    }

    /// Calls for `length` with no pause; the tally and the seconds it really took.
    pub fn run_for(
        frontend_url: &str,
        ledger: Ledger,
        workers: usize,
        length: Duration,
    ) -> (Tally, f64) {
        let started = Instant::now();
        let load = Load::start(frontend_url, ledger, workers, Duration::ZERO);
        std::thread::sleep(length);
        let tally = load.finish();
        (tally, started.elapsed().as_secs_f64())
    }
}

fn worker(frontend_url: &str, ledger: Ledger, stop: &AtomicBool, pause: Duration) -> Tally {
    let caller = Caller::new(frontend_url, ledger);
    let mut tally = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let outcome = caller
            .call()
            .and_then(|d| if d.ok() { Ok(()) } else { Err(d.line()) });
        match outcome {
            Ok(()) => {
                tally.ok += 1;
                tally.latencies.push(t.elapsed());
                tally.successes.push(Instant::now());
            }
            Err(e) => {
                tally.failed += 1;
                if tally.failures.len() < KEPT_FAILURES {
                    tally.failures.push(e);
                }
            }
        }
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
    tally
}
