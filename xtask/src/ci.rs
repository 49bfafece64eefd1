//! `cargo xtask ci`: what CI runs.

use xshell::Shell;

#[derive(clap::Args)]
pub struct Ci {}

impl Ci {
    pub fn run(self, _sh: &Shell) -> anyhow::Result<()> {
        anyhow::bail!("not yet")
    }
}
