//! What the frontend counts and times, served at `/metrics` (Prometheus text format): Run Demo
//! outcomes by both links' status and the first failure's cause, the whole Run Demo, and the
//! call through its Envoy; and each certificate holder it reads (seconds left, which
//! certificate, rotations seen). Names: `contract::metrics`.

use std::time::Duration;

use contract::{LinkStatus, RunDemo};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    frontend_to_backend: String,
    backend_to_db: String,
    cause: String,
}

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    outcomes: Family<Outcome, Counter>,
    run_demo: Histogram,
    backend_call: Histogram,
    cert_seconds_left: Family<Labels, Gauge>,
    cert_info: Family<Labels, Gauge>,
    cert_rotations: Family<Labels, Counter>,
}

/// 50 µs to about 1.6 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let outcomes = Family::<Outcome, Counter>::default();
        let (run_demo, backend_call) = (latency_buckets(), latency_buckets());
        registry.register(
            contract::metrics::RUN_DEMO,
            "Run Demo outcomes by link status and the first failure's cause",
            outcomes.clone(),
        );
        registry.register(
            contract::metrics::RUN_DEMO_SECONDS,
            "One Run Demo in the frontend, in seconds",
            run_demo.clone(),
        );
        registry.register(
            contract::metrics::BACKEND_CALL_SECONDS,
            "The call through the frontend's Envoy to the backend and back, in seconds",
            backend_call.clone(),
        );
        let cert_seconds_left = Family::<Labels, Gauge>::default();
        let cert_info = Family::<Labels, Gauge>::default();
        let cert_rotations = Family::<Labels, Counter>::default();
        registry.register(
            contract::metrics::FRONTEND_CERT_SECONDS_LEFT,
            "Seconds until each holder's certificate expires, as the frontend last read it",
            cert_seconds_left.clone(),
        );
        registry.register(
            contract::metrics::FRONTEND_CERT_INFO,
            "The certificate each holder has, as the frontend last read it (always 1)",
            cert_info.clone(),
        );
        registry.register(
            contract::metrics::FRONTEND_CERT_ROTATIONS,
            "New certificates the frontend saw each holder take after the first",
            cert_rotations.clone(),
        );
        Metrics {
            registry,
            outcomes,
            run_demo,
            backend_call,
            cert_seconds_left,
            cert_info,
            cert_rotations,
        }
    }
}

fn label(s: LinkStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Metrics {
    pub fn backend_call(&self, took: Duration) {
        self.backend_call.observe(took.as_secs_f64());
    }

    pub fn run_demo(&self, result: &RunDemo, took: Duration) {
        let cause = [&result.frontend_to_backend, &result.backend_to_db]
            .into_iter()
            .find_map(|l| l.cause)
            .and_then(|c| serde_json::to_value(c).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        self.outcomes
            .get_or_create(&Outcome {
                frontend_to_backend: label(result.frontend_to_backend.status),
                backend_to_db: label(result.backend_to_db.status),
                cause,
            })
            .inc();
        self.run_demo.observe(took.as_secs_f64());
    }

    /// The text format, with the holders as the frontend last read them (and the rotations it
    /// saw each make).
    pub fn render(&self, holders: &[(contract::CertHolder, u64)]) -> String {
        self.cert_seconds_left.clear();
        self.cert_info.clear();
        for (h, rotations) in holders {
            let holder = h.holder.key().to_owned();
            let key = vec![("holder", holder.clone())];
            let counted = self.cert_rotations.get_or_create(&key).get();
            if *rotations > counted {
                self.cert_rotations
                    .get_or_create(&key)
                    .inc_by(rotations - counted);
            }
            let (Some(serial), Some(left)) = (&h.serial, h.seconds_left) else {
                continue;
            };
            self.cert_seconds_left.get_or_create(&key).set(left);
            self.cert_info
                .get_or_create(&vec![
                    ("holder", holder),
                    ("spiffe_id", h.spiffe_id.clone().unwrap_or_default()),
                    ("serial", serial.clone()),
                ])
                .set(1);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
