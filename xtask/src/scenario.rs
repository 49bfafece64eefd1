//! Scenarios, written once against the runtime-neutral `Lab` handle.

use xshell::Shell;

#[derive(clap::Args)]
pub struct Scenario {
    #[command(flatten)]
    pub runtime: crate::lab::RuntimeArgs,
    pub name: String,
}

impl Scenario {
    pub fn run(self, _sh: &Shell) -> anyhow::Result<()> {
        anyhow::bail!("scenarios are not written yet")
    }
}

/// Seconds from now until an RFC 3339 UTC time (`2026-11-22T06:11:08Z`).
pub fn rfc3339_left(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time
        .split('.')
        .next()?
        .split(':')
        .map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - crate::local::now())
}
