//! What the backend times and holds, served at `/metrics` on its health listener (Prometheus
//! text format), never through its Envoy's RBAC-protected path: one `GET /api/orders` and the
//! database part of it; its SVID (seconds left, which one, rotations seen); its database pool.
//! Names: `contract::metrics`.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

pub struct Metrics {
    registry: Registry,
    orders: Histogram,
    db_query: Histogram,
    svid_seconds_left: Gauge,
    svid_info: Family<Labels, Gauge>,
    svid_rotations: Counter,
    pool: Family<Labels, Gauge>,
    pool_max: Gauge,
}

/// What the backend holds at the moment of a scrape.
pub struct Holding {
    /// (SPIFFE ID, serial, seconds left) of the SVID it presents, if it has one.
    pub svid: Option<(String, String, i64)>,
    /// New SVIDs loaded after the first.
    pub rotations: u64,
    pub pool_in_use: usize,
    pub pool_idle: usize,
    pub pool_max: usize,
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
        let svid_seconds_left = Gauge::default();
        let svid_info = Family::<Labels, Gauge>::default();
        let svid_rotations = Counter::default();
        let pool = Family::<Labels, Gauge>::default();
        let pool_max = Gauge::default();
        registry.register(
            contract::metrics::BACKEND_SVID_SECONDS_LEFT,
            "Seconds until the backend's X.509-SVID expires",
            svid_seconds_left.clone(),
        );
        registry.register(
            contract::metrics::BACKEND_SVID_INFO,
            "The X.509-SVID the backend presents (always 1)",
            svid_info.clone(),
        );
        registry.register(
            contract::metrics::BACKEND_SVID_ROTATIONS,
            "New X.509-SVIDs the backend loaded after its first",
            svid_rotations.clone(),
        );
        registry.register(
            contract::metrics::BACKEND_DB_POOL,
            "The backend's PostgreSQL connections by state",
            pool.clone(),
        );
        registry.register(
            contract::metrics::BACKEND_DB_POOL_MAX,
            "The largest the backend's PostgreSQL pool grows",
            pool_max.clone(),
        );
        Metrics {
            registry,
            orders,
            db_query,
            svid_seconds_left,
            svid_info,
            svid_rotations,
            pool,
            pool_max,
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

    /// The text format, with what the backend holds now.
    pub fn render(&self, now: &Holding) -> String {
        self.svid_info.clear();
        match &now.svid {
            Some((id, serial, left)) => {
                self.svid_seconds_left.set(*left);
                self.svid_info
                    .get_or_create(&vec![("spiffe_id", id.clone()), ("serial", serial.clone())])
                    .set(1);
            }
            None => {
                self.svid_seconds_left.set(0);
            }
        }
        let counted = self.svid_rotations.get();
        if now.rotations > counted {
            self.svid_rotations.inc_by(now.rotations - counted);
        }
        for (state, n) in [("in_use", now.pool_in_use), ("idle", now.pool_idle)] {
            self.pool
                .get_or_create(&vec![("state", state.to_owned())])
                .set(n as i64);
        }
        self.pool_max.set(now.pool_max as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
