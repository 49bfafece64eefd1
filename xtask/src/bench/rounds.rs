//! Closed-loop throughput, mTLS against plaintext in interleaved rounds (A B B A A B …) so that
//! whatever else the machine does lands on both profiles alike; each profile's median, and the
//! median of the per-round ratios with its spread.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::demo::{Load, Tally};

/// One profile's run of one round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    pub requests: usize,
    pub errors: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU each process used per answered request, in µs (`Target::cpu`).
    pub cpu_us: BTreeMap<String, f64>,
}

/// One profile under load: where to send Run Demo, and the CPU seconds its processes have used
/// so far (read before and after each round).
pub struct Target<'a> {
    pub url: String,
    pub cpu: &'a dyn Fn() -> BTreeMap<String, f64>,
}

/// Every round at one concurrency.
#[derive(Debug, Default, Serialize)]
pub struct Rounds {
    pub concurrency: usize,
    pub mtls: Vec<Run>,
    pub plaintext: Vec<Run>,
}

pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// The median of some figures (the mean of the middle two for an even count).
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest and largest.
pub fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

/// `concurrency` workers calling Run Demo for `length`; a call counts only when both links
/// succeeded.
pub fn run(target: &Target, concurrency: usize, length: Duration) -> Run {
    let before = (target.cpu)();
    let (
        Tally {
            ok,
            failed,
            mut latencies,
            ..
        },
        seconds,
    ) = Load::run_for(&target.url, crate::demo::Ledger::Skip, concurrency, length);
    let after = (target.cpu)();
    latencies.sort();
    let cpu_us = after
        .iter()
        .filter_map(|(k, a)| {
            let b = before.get(k)?;
            Some((k.clone(), (a - b).max(0.0) * 1e6 / ok.max(1) as f64))
        })
        .collect();
    Run {
        cpu_us,
        requests: ok + failed,
        errors: failed,
        rps: ok as f64 / seconds,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    }
}

impl Rounds {
    /// A warm-up of both profiles, then `rounds` rounds, taking turns at going first.
    pub fn measure(
        mtls: &Target,
        plaintext: &Target,
        concurrency: usize,
        rounds: usize,
        length: Duration,
        warmup: Duration,
    ) -> Rounds {
        run(mtls, concurrency, warmup);
        run(plaintext, concurrency, warmup);
        let mut r = Rounds {
            concurrency,
            ..Rounds::default()
        };
        // A B, then B A: a drift of the machine over a pair of rounds lands on both alike.
        for round in 0..rounds {
            if round % 2 == 0 {
                r.mtls.push(run(mtls, concurrency, length));
                r.plaintext.push(run(plaintext, concurrency, length));
            } else {
                r.plaintext.push(run(plaintext, concurrency, length));
                r.mtls.push(run(mtls, concurrency, length));
            }
        }
        r
    }

    /// mTLS throughput over plaintext's, round by round.
    pub fn ratios(&self) -> Vec<f64> {
        self.mtls
            .iter()
            .zip(&self.plaintext)
            .map(|(m, p)| m.rps / p.rps)
            .collect()
    }

    pub fn errors(&self) -> usize {
        self.mtls
            .iter()
            .chain(&self.plaintext)
            .map(|r| r.errors)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spreads() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median([]).is_nan());
        assert_eq!(spread([0.8, 0.7, 0.9]), (0.7, 0.9));
    }

    #[test]
    fn ratios_pair_each_round() {
        let run = |rps| Run {
            rps,
            ..Run::default()
        };
        let r = Rounds {
            concurrency: 1,
            mtls: vec![run(80.0), run(90.0)],
            plaintext: vec![run(100.0), run(100.0)],
        };
        assert_eq!(r.ratios(), vec![0.8, 0.9]);
    }
}
