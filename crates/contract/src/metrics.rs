//! The metrics the services serve at `/metrics` (Prometheus text format), named once for the
//! services that write them and for xtask, which reads them (`status`, the bench's per-hop
//! breakdown), and a reader of that text format.
//!
//! Durations are histograms in seconds: their `_sum` and `_count` give a mean over any window
//! (the difference of two scrapes), which is what the bench takes.

use std::collections::BTreeMap;

/// Run Demo outcomes, labelled by both links' status (`SUCCESS`, `FAILED`, `UNKNOWN`) and the
/// first failure's cause (empty when both succeeded). A counter (`_total`).
pub const RUN_DEMO: &str = "frontend_run_demo";
/// The whole of one Run Demo in the frontend (its handler).
pub const RUN_DEMO_SECONDS: &str = "frontend_run_demo_duration_seconds";
/// The frontend's call through its Envoy to the backend and back.
pub const BACKEND_CALL_SECONDS: &str = "frontend_backend_call_duration_seconds";
/// One `GET /api/orders` in the backend (its handler).
pub const ORDERS_SECONDS: &str = "backend_orders_duration_seconds";
/// The database part of it: a pooled connection, the query, the rows.
pub const DB_QUERY_SECONDS: &str = "backend_db_query_duration_seconds";

/// The backend's SVID (from spiffe-helper's files): seconds until it expires, a gauge.
pub const BACKEND_SVID_SECONDS_LEFT: &str = "backend_svid_seconds_left";
/// Always 1, labelled by the SVID's `spiffe_id` and `serial`: which SVID the backend holds.
pub const BACKEND_SVID_INFO: &str = "backend_svid_info";
/// New SVIDs the backend loaded after its first, a counter (`_total`).
pub const BACKEND_SVID_ROTATIONS: &str = "backend_svid_rotations";
/// The backend's PostgreSQL connections by `state` (`in_use`, `idle`), a gauge.
pub const BACKEND_DB_POOL: &str = "backend_db_pool_connections";
/// The pool's largest size.
pub const BACKEND_DB_POOL_MAX: &str = "backend_db_pool_max_connections";
/// Each certificate holder the frontend reads (`holder`: `frontend-envoy`, `backend-files`,
/// `postgres-server`): seconds until its certificate expires, a gauge.
pub const FRONTEND_CERT_SECONDS_LEFT: &str = "frontend_cert_seconds_left";
/// Always 1, labelled by `holder`, `spiffe_id` and `serial`.
pub const FRONTEND_CERT_INFO: &str = "frontend_cert_info";
/// New serials the frontend saw a holder take after the first, a counter (`_total`).
pub const FRONTEND_CERT_ROTATIONS: &str = "frontend_cert_rotations";

/// One scrape: every sample by its full name with labels as written (`name{a="b"}`), and the
/// value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape(pub BTreeMap<String, f64>);

impl Scrape {
    /// Reads the text format; comments and lines that do not read are left out.
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                // The name ends with its labels, if it has any; the value follows.
                let (name, rest) = match l.rfind('}') {
                    Some(i) => l.split_at(i + 1),
                    None => l.split_at(l.find(char::is_whitespace)?),
                };
                let value = rest.split_whitespace().next()?.parse().ok()?;
                Some((name.to_owned(), value))
            })
            .collect();
        Scrape(samples)
    }

    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// The sum over every sample of `name`, whatever its labels.
    pub fn total(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| *k == name || k.strip_prefix(name).is_some_and(|r| r.starts_with('{')))
            .map(|(_, v)| v)
            // An empty sum of floats is -0; no metric is.
            .sum::<f64>()
            + 0.0
    }

    /// Every sample of `name` with its labels, as (labels, value).
    pub fn samples<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (Labels, f64)> + 'a {
        self.0.iter().filter_map(move |(k, v)| {
            let rest = k.strip_prefix(name)?;
            if rest.is_empty() {
                return Some((Labels::default(), *v));
            }
            let inner = rest.strip_prefix('{')?.strip_suffix('}')?;
            Some((Labels::parse(inner), *v))
        })
    }

    /// The value of `name` whose labels include every pair of `with`.
    pub fn find(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        self.samples(name)
            .find(|(l, _)| with.iter().all(|(k, v)| l.get(k) == Some(v)))
            .map(|(_, v)| v)
    }

    /// The labels of the first sample of `name` whose labels include every pair of `with`.
    pub fn labels(&self, name: &str, with: &[(&str, &str)]) -> Option<Labels> {
        self.samples(name)
            .find(|(l, _)| with.iter().all(|(k, v)| l.get(k) == Some(v)))
            .map(|(l, _)| l)
    }

    /// A histogram's (sum, count) over all its label sets.
    pub fn histogram(&self, name: &str) -> (f64, f64) {
        (
            self.total(&format!("{name}_sum")),
            self.total(&format!("{name}_count")),
        )
    }

    /// The mean of a histogram between an earlier scrape and this one, in seconds; None when
    /// nothing was observed in between.
    pub fn mean_since(&self, earlier: &Scrape, name: &str) -> Option<f64> {
        let (s1, c1) = self.histogram(name);
        let (s0, c0) = earlier.histogram(name);
        (c1 > c0).then(|| (s1 - s0) / (c1 - c0))
    }
}

/// A sample's labels, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(pub BTreeMap<String, String>);

impl Labels {
    /// Reads `a="b",c="d"` (values hold no quotes or commas in what the lab writes; escapes
    /// are undone for `\\` and `\"`).
    fn parse(inner: &str) -> Labels {
        let mut out = BTreeMap::new();
        let mut rest = inner;
        while let Some((key, after)) = rest.split_once("=\"") {
            let mut value = String::new();
            let mut chars = after.char_indices();
            let mut end = after.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            out.insert(key.trim_start_matches(',').trim().to_owned(), value);
            rest = &after[end..];
        }
        Labels(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP frontend_run_demo Run Demo outcomes.
# TYPE frontend_run_demo counter
frontend_run_demo_total{frontend_to_backend="SUCCESS",backend_to_db="SUCCESS",cause=""} 7
frontend_run_demo_total{frontend_to_backend="FAILED",backend_to_db="UNKNOWN",cause="rbac_denied"} 2
# TYPE backend_db_query_duration_seconds histogram
backend_db_query_duration_seconds_sum 0.5
backend_db_query_duration_seconds_count 10
backend_db_query_duration_seconds_bucket{le="0.001"} 4
plain 3.5
# EOF
"#;

    #[test]
    fn reads_samples_with_and_without_labels() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.get("plain"), Some(3.5));
        assert_eq!(s.total("frontend_run_demo_total"), 9.0);
        assert_eq!(
            s.get(r#"frontend_run_demo_total{frontend_to_backend="FAILED",backend_to_db="UNKNOWN",cause="rbac_denied"}"#),
            Some(2.0)
        );
        assert_eq!(s.histogram(DB_QUERY_SECONDS), (0.5, 10.0));
        // A longer name that starts the same is another metric.
        assert_eq!(s.total("frontend_run_demo"), 0.0);
    }

    #[test]
    fn labels_are_read_and_matched() {
        let s = Scrape::parse(
            "frontend_cert_info{holder=\"backend-files\",serial=\"AB\",spiffe_id=\"spiffe://example.org/ns/demo/sa/backend\"} 1\nfrontend_cert_info{holder=\"frontend-envoy\",serial=\"CD\",spiffe_id=\"\"} 1\n",
        );
        let l = s
            .labels(FRONTEND_CERT_INFO, &[("holder", "backend-files")])
            .unwrap();
        assert_eq!(l.get("serial"), Some("AB"));
        assert_eq!(
            l.get("spiffe_id"),
            Some("spiffe://example.org/ns/demo/sa/backend")
        );
        assert_eq!(
            s.find(FRONTEND_CERT_INFO, &[("holder", "frontend-envoy")]),
            Some(1.0)
        );
        assert_eq!(s.find(FRONTEND_CERT_INFO, &[("holder", "nobody")]), None);
        assert_eq!(s.samples(FRONTEND_CERT_INFO).count(), 2);
    }

    #[test]
    fn the_mean_is_taken_between_two_scrapes() {
        let before = Scrape::parse(TEXT);
        let after = Scrape::parse(
            "backend_db_query_duration_seconds_sum 0.9\nbackend_db_query_duration_seconds_count 20\n",
        );
        let mean = after.mean_since(&before, DB_QUERY_SECONDS).unwrap();
        assert!((mean - 0.04).abs() < 1e-9, "{mean}");
        assert_eq!(before.mean_since(&before, DB_QUERY_SECONDS), None);
    }
}
