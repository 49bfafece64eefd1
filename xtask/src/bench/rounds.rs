//! Closed-loop throughput, mTLS against plaintext. Each profile has the machine alone, but the
//! two take turns every half second inside each round (A B B A A B …, `SLICE`): this machine's
//! speed moves over seconds (one client's rounds once fell from 500 to 220 Run Demos/s for ten
//! seconds, both profiles alike), and rounds seconds apart let such a dip land on one profile and
//! not the other, moving a round's ratio by as much as the effect measured. Sliced finely, a dip
//! lands on both alike and divides out of the ratio. Each profile's median over the rounds, and
//! the median of the per-round ratios with its spread.
//!
//! At a turn, the requests each worker has in flight finish on the profile they were sent to
//! (counted for it, in the other's time): at most `concurrency` requests of a few ms in 500 ms,
//! and both profiles alike.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::demo::{Caller, Ledger};
use crate::procs::Snapshot;

/// The CPU key of this process, which generates the load for both profiles.
pub const GENERATOR: &str = "xtask (the load generator)";

/// How long one profile has the machine before the other takes it.
pub const SLICE: Duration = Duration::from_millis(500);

/// One profile's share of one round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    pub requests: usize,
    pub errors: usize,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU each process used per answered request, in µs (`Target::cpu`, and the generator).
    pub cpu_us: BTreeMap<String, f64>,
}

/// One profile under load: where to send Run Demo, and its processes whose CPU is counted, by
/// the name they are reported under (several may share one; a name with none counts 0).
pub struct Target {
    pub url: String,
    pub processes: BTreeMap<String, Vec<u32>>,
}

impl Target {
    /// The CPU seconds each name's processes (and their descendants) have used so far.
    fn cpu(&self, now: &Snapshot) -> BTreeMap<String, f64> {
        self.processes
            .iter()
            .map(|(name, pids)| {
                let secs = pids.iter().filter_map(|p| now.tree_cpu_seconds(*p)).sum();
                (name.clone(), secs)
            })
            .collect()
    }
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

/// What the workers saw of one profile.
#[derive(Default)]
struct Side {
    ok: usize,
    failed: usize,
    latencies: Vec<Duration>,
}

/// Which profile has the machine in slice `i`: A B B A, repeated, so that neither always goes
/// first or last.
fn turn(i: usize) -> usize {
    [0, 1, 1, 0][i % 4]
}

/// Whose turn it is, for the workers; `STOP` ends them.
const STOP: usize = usize::MAX;

/// `concurrency` workers calling Run Demo, each over a keep-alive connection to either profile,
/// on whichever profile has the turn; each profile gets `length` in slices of `SLICE`. A call
/// counts only when both links succeeded.
pub fn alternating(targets: [&Target; 2], concurrency: usize, length: Duration) -> [Run; 2] {
    let slices = (length.as_secs_f64() / SLICE.as_secs_f64())
        .round()
        .max(1.0) as usize;
    // Both profiles' CPU so far, from one snapshot; the generator's counts for whichever has
    // the turn.
    let cpu = || {
        let now = Snapshot::take();
        let generator = crate::procs::own_cpu_seconds();
        targets.map(|t| {
            let mut cpu = t.cpu(&now);
            cpu.insert(GENERATOR.into(), generator);
            cpu
        })
    };
    let phase = AtomicUsize::new(turn(0));
    let urls = targets.map(|t| t.url.as_str());
    let mut time = [Duration::ZERO; 2];
    let mut used: [BTreeMap<String, f64>; 2] = Default::default();
    let sides: Vec<[Side; 2]> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let phase = &phase;
                s.spawn(move || {
                    let callers = urls.map(|u| Caller::new(u, Ledger::Skip));
                    let mut sides: [Side; 2] = Default::default();
                    loop {
                        let p = phase.load(Ordering::Relaxed);
                        if p == STOP {
                            break;
                        }
                        let t = Instant::now();
                        let ok = callers[p].call().is_ok_and(|d| d.ok());
                        let side = &mut sides[p];
                        if ok {
                            side.ok += 1;
                            side.latencies.push(t.elapsed());
                        } else {
                            side.failed += 1;
                        }
                    }
                    sides
                })
            })
            .collect();
        let mut before = cpu();
        let mut started = Instant::now();
        for i in 0..2 * slices {
            let p = turn(i);
            std::thread::sleep(SLICE);
            let next = if i + 1 < 2 * slices {
                turn(i + 1)
            } else {
                STOP
            };
            phase.store(next, Ordering::Relaxed);
            let now = Instant::now();
            time[p] += now - started;
            started = now;
            let after = cpu();
            for (k, a) in &after[p] {
                if let Some(b) = before[p].get(k) {
                    *used[p].entry(k.clone()).or_insert(0.0) += (a - b).max(0.0);
                }
            }
            before = after;
        }
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    [0, 1].map(|p| {
        let mut side = Side::default();
        for s in &sides {
            side.ok += s[p].ok;
            side.failed += s[p].failed;
            side.latencies.extend(&s[p].latencies);
        }
        side.latencies.sort();
        Run {
            requests: side.ok + side.failed,
            errors: side.failed,
            rps: side.ok as f64 / time[p].as_secs_f64(),
            p50_ms: percentile(&side.latencies, 0.50),
            p99_ms: percentile(&side.latencies, 0.99),
            cpu_us: used[p]
                .iter()
                .map(|(k, secs)| (k.clone(), secs * 1e6 / side.ok.max(1) as f64))
                .collect(),
        }
    })
}

impl Rounds {
    /// A warm-up, then `rounds` rounds of `length` per profile, the two taking turns within each.
    pub fn measure(
        mtls: &Target,
        plaintext: &Target,
        concurrency: usize,
        rounds: usize,
        length: Duration,
        warmup: Duration,
    ) -> Rounds {
        alternating([mtls, plaintext], concurrency, warmup);
        let mut r = Rounds {
            concurrency,
            ..Rounds::default()
        };
        for _ in 0..rounds {
            let [m, p] = alternating([mtls, plaintext], concurrency, length);
            r.mtls.push(m);
            r.plaintext.push(p);
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
    fn turns_are_balanced() {
        let firsts: Vec<usize> = (0..8).map(turn).collect();
        assert_eq!(firsts, vec![0, 1, 1, 0, 0, 1, 1, 0]);
        assert_eq!((0..12).filter(|&i| turn(i) == 0).count(), 6);
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
