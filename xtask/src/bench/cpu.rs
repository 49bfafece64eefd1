//! What the machine's CPUs did while a phase ran: how busy they were, how long work waited for a
//! core (the kernel's pressure stall information), and how much time the hypervisor took away
//! (steal). Beside an open-loop p99 this says whether a tail is the lab's path or a queue for a
//! core — in the lab, or on the host under it.

use std::time::Instant;

/// The machine's CPU counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    at: Instant,
    /// From `/proc/stat`'s first line, in clock ticks: (busy, all, steal).
    ticks: Option<(u64, u64, u64)>,
    /// `/proc/pressure/cpu`'s `some total=` (µs with at least one task waiting for a core).
    waited_us: Option<u64>,
}

/// Shares of a span of time (0–1); None where this kernel does not tell.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shares {
    /// Of all CPU time, what ran (user, nice, system, interrupts).
    pub busy: Option<f64>,
    /// Of the wall time, how long at least one task was ready but waited for a core.
    pub waiting: Option<f64>,
    /// Of all CPU time, what the hypervisor gave to others.
    pub stolen: Option<f64>,
}

impl Counters {
    pub fn read() -> Counters {
        let file = |p: &str| std::fs::read_to_string(p).ok();
        Counters {
            at: Instant::now(),
            ticks: file("/proc/stat").and_then(|s| ticks(&s)),
            waited_us: file("/proc/pressure/cpu").and_then(|s| waited_us(&s)),
        }
    }

    /// What happened between `self` and the `later` reading.
    pub fn until(&self, later: &Counters) -> Shares {
        let wall_us = later.at.duration_since(self.at).as_secs_f64() * 1e6;
        let ticks = match (self.ticks, later.ticks) {
            (Some(a), Some(b)) if b.1 > a.1 => {
                Some(((b.0 - a.0) as f64, (b.1 - a.1) as f64, (b.2 - a.2) as f64))
            }
            _ => None,
        };
        Shares {
            busy: ticks.map(|(busy, all, _)| busy / all),
            stolen: ticks.map(|(_, all, steal)| steal / all),
            waiting: match (self.waited_us, later.waited_us) {
                (Some(a), Some(b)) if wall_us > 0.0 => {
                    Some((b.saturating_sub(a) as f64 / wall_us).min(1.0))
                }
                _ => None,
            },
        }
    }
}

/// (busy, all, steal) ticks from `/proc/stat`'s aggregate `cpu` line: user nice system idle
/// iowait irq softirq steal (guest time is already inside user and nice).
fn ticks(stat: &str) -> Option<(u64, u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq;
    Some((busy, busy + idle + iowait + steal, steal))
}

/// The `some` line's `total=` of `/proc/pressure/cpu`.
fn waited_us(pressure: &str) -> Option<u64> {
    pressure
        .lines()
        .find(|l| l.starts_with("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// A share as a percentage for a table, "n/a" when the kernel does not tell.
pub fn percent(share: Option<f64>) -> String {
    share.map_or("n/a".into(), |s| format!("{:.0} %", s * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_stat_and_pressure() {
        let stat = "cpu  100 20 30 800 10 5 5 40 0 0\ncpu0 50 10 15 400 5 2 3 20 0 0\n";
        assert_eq!(ticks(stat), Some((160, 1010, 40)));
        assert_eq!(ticks("cpu  1 2 3\n"), None);
        assert_eq!(ticks("intr 5\n"), None);
        let psi = "some avg10=5.56 avg60=4.88 avg300=3.78 total=1943305280\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(waited_us(psi), Some(1_943_305_280));
        assert_eq!(waited_us("full avg10=0.00 total=9\n"), None);
    }

    #[test]
    fn shares_of_a_span() {
        let start = Instant::now();
        let a = Counters {
            at: start,
            ticks: Some((100, 1000, 0)),
            waited_us: Some(1_000),
        };
        let b = Counters {
            at: start + std::time::Duration::from_secs(2),
            ticks: Some((250, 1200, 20)),
            waited_us: Some(501_000),
        };
        let s = a.until(&b);
        assert_eq!(s.busy, Some(0.75));
        assert_eq!(s.stolen, Some(0.1));
        assert_eq!(s.waiting, Some(0.25));
        let blind = Counters {
            ticks: None,
            waited_us: None,
            ..b
        };
        assert_eq!(a.until(&blind), Shares::default());
        assert_eq!(percent(Some(0.254)), "25 %");
        assert_eq!(percent(None), "n/a");
    }
}
