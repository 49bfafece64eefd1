//! What the live page remembers between requests: the last Run Demo, and each holder's serials
//! over the last minutes (the rotation timeline), from the identity sources the frontend reads
//! anyway. A sampler keeps the timeline going while nobody looks; every page render adds to it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use contract::{Holder, IdentityPanel, RunDemo};

/// How far back the timeline reaches.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;
/// How often the sampler reads the holders' certificates.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// How often the page, with JavaScript, asks for a new view.
pub const REFRESH_MS: u64 = contract::LIVE_REFRESH_MS;

/// A serial, and when the frontend first saw it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub serial: String,
    pub seen_ms: i64,
    /// The first serial the frontend saw for this holder: not a rotation it watched.
    pub first: bool,
}

#[derive(Default)]
pub struct Console {
    last: Mutex<Option<RunDemo>>,
    lanes: Mutex<Lanes>,
}

#[derive(Default)]
struct Lanes {
    marks: BTreeMap<Holder, Vec<Mark>>,
    /// New serials seen after each holder's first, all along (marks leave the window).
    rotations: BTreeMap<Holder, u64>,
    /// The latest panel read, and when.
    latest: Option<(IdentityPanel, i64)>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

impl Console {
    pub fn set_last(&self, r: &RunDemo) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.clone());
    }

    pub fn last(&self) -> Option<RunDemo> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds each holder's serial, when it is not the one seen last, and forgets marks older
    /// than the window (except each lane's newest: the serial held now).
    pub fn record(&self, panel: &IdentityPanel, at_ms: i64) {
        let mut guard = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let Lanes {
            marks,
            rotations,
            latest,
        } = &mut *guard;
        *latest = Some((panel.clone(), at_ms));
        for h in &panel.holders {
            let Some(serial) = &h.serial else { continue };
            let lane = marks.entry(h.holder).or_default();
            if lane.last().is_some_and(|m| &m.serial == serial) {
                continue;
            }
            let first = lane.is_empty();
            if !first {
                *rotations.entry(h.holder).or_default() += 1;
            }
            lane.push(Mark {
                serial: serial.clone(),
                seen_ms: at_ms,
                first,
            });
        }
        for lane in marks.values_mut() {
            let keep_from = lane
                .iter()
                .position(|m| at_ms - m.seen_ms <= WINDOW_MS)
                .unwrap_or(lane.len())
                .min(lane.len().saturating_sub(1));
            lane.drain(..keep_from);
        }
    }

    /// Each holder's marks, oldest first.
    pub fn lanes(&self) -> BTreeMap<Holder, Vec<Mark>> {
        self.lanes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .marks
            .clone()
    }

    /// Each holder's certificate as last read, its seconds left counted down to `now_ms`, and
    /// the rotations the frontend saw it make.
    pub fn holders(&self, now_ms: i64) -> Vec<(contract::CertHolder, u64)> {
        let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        let Some((panel, at_ms)) = &lanes.latest else {
            return Vec::new();
        };
        let elapsed = (now_ms - at_ms).max(0) / 1000;
        panel
            .holders
            .iter()
            .map(|h| {
                let mut h = h.clone();
                h.seconds_left = h.seconds_left.map(|s| s - elapsed);
                let n = lanes.rotations.get(&h.holder).copied().unwrap_or(0);
                (h, n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contract::CertHolder;

    fn panel(serial: Option<&str>) -> IdentityPanel {
        IdentityPanel {
            holders: vec![match serial {
                Some(s) => CertHolder {
                    holder: Holder::FrontendEnvoy,
                    spiffe_id: None,
                    serial: Some(s.into()),
                    seconds_left: Some(10),
                    note: None,
                },
                None => CertHolder::unknown(Holder::FrontendEnvoy, "down"),
            }],
        }
    }

    #[test]
    fn a_mark_per_new_serial_and_old_ones_forgotten() {
        let c = Console::default();
        c.record(&panel(Some("A")), 0);
        c.record(&panel(Some("A")), 1_000);
        c.record(&panel(None), 2_000);
        c.record(&panel(Some("B")), 3_000);
        let lane = &c.lanes()[&Holder::FrontendEnvoy];
        assert_eq!(
            lane.iter()
                .map(|m| (m.serial.as_str(), m.seen_ms, m.first))
                .collect::<Vec<_>>(),
            [("A", 0, true), ("B", 3_000, false)]
        );
        // Long after: A leaves the window; B, held now, stays though it is older than it.
        c.record(&panel(Some("B")), 3_000 + WINDOW_MS + 1);
        let lane = &c.lanes()[&Holder::FrontendEnvoy];
        assert_eq!(lane.len(), 1);
        assert_eq!(lane[0].serial, "B");
        // One rotation, though its first mark has gone; seconds left count down from the read.
        let now = 3_000 + WINDOW_MS + 1 + 4_000;
        let (h, rotations) = &c.holders(now)[0];
        assert_eq!(*rotations, 1);
        assert_eq!(h.seconds_left, Some(6));
    }
}
