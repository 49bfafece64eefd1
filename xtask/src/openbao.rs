//! What both runtimes do to OpenBao at each start, whatever runs its `bao`: initialize it the
//! first time (one unseal key; it and the root token into a 0600 file outside OpenBao) and
//! unseal it. Each runtime then runs the lab's `configure.sh` its own way.

use std::path::Path;

use anyhow::Context;

/// `bao ARGS…` with a standard input, as a runtime runs it: what it printed.
pub type Bao<'a> = &'a dyn Fn(&[&str], Option<&str>) -> anyhow::Result<String>;

/// The unseal key and root token `bao operator init` printed, as kept.
pub struct Init {
    pub unseal_key: String,
    pub root_token: String,
}

/// Reads the kept init file.
pub fn read_init(path: &Path) -> anyhow::Result<Init> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} does not read", path.display()))?;
    let field = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Ok(Init {
        unseal_key: field(&v["unseal_keys_b64"][0]).context("no unseal key kept")?,
        root_token: field(&v["root_token"]).context("no root token kept")?,
    })
}

/// Initializes OpenBao unless `initialized` (its keys into `init_file`, 0600), then unseals it
/// if `sealed`: the key on standard input, never on a command line.
pub fn init_and_unseal(
    bao: Bao,
    initialized: bool,
    sealed: bool,
    init_file: &Path,
) -> anyhow::Result<()> {
    if !initialized {
        let out = bao(
            &[
                "operator",
                "init",
                "-format=json",
                "-key-shares=1",
                "-key-threshold=1",
            ],
            None,
        )?;
        std::fs::create_dir_all(init_file.parent().context("a directory")?)?;
        let _ = std::fs::remove_file(init_file);
        crate::procs::create_with_mode(init_file, out.as_bytes(), 0o600)?;
    }
    if sealed || !initialized {
        let key = read_init(init_file)?.unseal_key;
        bao(
            &["write", "-format=json", "sys/unseal", "key=-"],
            Some(&key),
        )?;
    }
    Ok(())
}
