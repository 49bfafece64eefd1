//! What the backend times, served at `/metrics` on its health listener (Prometheus text
//! format), never through its Envoy's RBAC-protected path: one `GET /api/orders`, and the
//! database part of it. Names: `contract::metrics`.

use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    orders: Histogram,
    db_query: Histogram,
}

/// 50 µs to about 1.6 s, doubling.
fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let (orders, db_query) = (latency_buckets(), latency_buckets());
        registry.register(
            contract::metrics::ORDERS_SECONDS,
            "One GET /api/orders in the backend, in seconds",
            orders.clone(),
        );
        registry.register(
            contract::metrics::DB_QUERY_SECONDS,
            "The database part of it (a pooled connection, the query, the rows), in seconds",
            db_query.clone(),
        );
        Metrics {
            registry,
            orders,
            db_query,
        }
    }
}

impl Metrics {
    pub fn orders(&self, took: Duration) {
        self.orders.observe(took.as_secs_f64());
    }

    pub fn db_query(&self, took: Duration) {
        self.db_query.observe(took.as_secs_f64());
    }

    /// The text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
