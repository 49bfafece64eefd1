//! What of the flake can be checked without nixpkgs: every `.nix` file parses, `flake.lock` locks
//! nixpkgs and crane, and the pins evaluate through Nix to exactly what xtask reads.

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use xshell::{Shell, cmd};

/// The `.nix` files of the repository.
fn nix_files() -> anyhow::Result<Vec<std::path::PathBuf>> {
    let root = crate::project_root();
    let mut files = vec![root.join("flake.nix")];
    for e in std::fs::read_dir(root.join("nix"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "nix") {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Checks `flake.lock`: version 7, the root's inputs, and each input locked by rev and narHash.
pub fn check_lock(text: &str) -> anyhow::Result<Vec<String>> {
    let lock: Value = serde_json::from_str(text).context("flake.lock is not JSON")?;
    ensure!(
        lock["version"] == 7,
        "flake.lock version is {}, expected 7",
        lock["version"]
    );
    let root = lock["root"].as_str().context("flake.lock has no root")?;
    let inputs = lock["nodes"][root]["inputs"]
        .as_object()
        .context("the root node has no inputs")?;
    let mut seen = Vec::new();
    for name in ["nixpkgs", "crane"] {
        let node_name = inputs
            .get(name)
            .and_then(Value::as_str)
            .with_context(|| format!("the root has no input {name}"))?;
        let locked = &lock["nodes"][node_name]["locked"];
        let rev = locked["rev"].as_str().unwrap_or_default();
        let nar = locked["narHash"].as_str().unwrap_or_default();
        ensure!(
            rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
            "{name}: rev {rev:?} is not a commit"
        );
        ensure!(
            nar.starts_with("sha256-") && nar.ends_with('=') && nar.len() == 51,
            "{name}: narHash {nar:?} is not an SRI sha256"
        );
        ensure!(
            locked["type"] == "github",
            "{name}: locked type is not github"
        );
        seen.push(format!(
            "{name} {}/{}@{rev}",
            locked["owner"].as_str().unwrap_or("?"),
            locked["repo"].as_str().unwrap_or("?")
        ));
    }
    ensure!(
        lock["nodes"][inputs["nixpkgs"].as_str().unwrap_or_default()]["original"]["ref"]
            == "nixos-25.11",
        "nixpkgs does not follow nixos-25.11"
    );
    Ok(seen)
}

/// Parses every `.nix` file, checks the lock, and evaluates the pins through Nix.
pub fn check(sh: &Shell) -> anyhow::Result<()> {
    if cmd!(sh, "nix-instantiate --version")
        .quiet()
        .ignore_stdout()
        .run()
        .is_err()
    {
        bail!(
            "nix-instantiate is not installed: run `cargo xtask deps` (Debian: apt-get install nix-bin)"
        );
    }
    for f in nix_files()? {
        cmd!(sh, "nix-instantiate --parse {f}")
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("{} does not parse", f.display()))?;
        println!(
            "  parses: {}",
            f.strip_prefix(crate::project_root())?.display()
        );
    }
    let root = crate::project_root();
    for locked in check_lock(&std::fs::read_to_string(root.join("flake.lock"))?)? {
        println!("  locked: {locked}");
    }
    let pins_nix = root.join("nix/pins.nix");
    let through_nix: Value = serde_json::from_str(
        &cmd!(sh, "nix-instantiate --eval --strict --json {pins_nix}")
            .quiet()
            .read()?,
    )?;
    let direct: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("nix/pins.json"))?)?;
    ensure!(
        through_nix == direct,
        "nix/pins.nix evaluates to something else than nix/pins.json"
    );
    crate::pins::Pins::load(&root)?;
    println!(
        "  pins: Nix and xtask read the same {} entries",
        direct.as_object().map_or(0, |o| o.len())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_lock_locks_nixpkgs_and_crane() {
        let text = std::fs::read_to_string(crate::project_root().join("flake.lock")).unwrap();
        let seen = check_lock(&text).unwrap();
        assert_eq!(seen.len(), 2);
        let broken = text.replace("\"version\": 7", "\"version\": 6");
        assert!(check_lock(&broken).is_err());
        let unlocked = text.replace("8fd9daa3db09ced9700431c5b7ad0e8ba199b575", "main");
        assert!(check_lock(&unlocked).is_err());
    }

    #[test]
    fn the_flake_reads_the_same_pins_file() {
        let flake = std::fs::read_to_string(crate::project_root().join("flake.nix")).unwrap();
        assert!(flake.contains("import ./nix/pins.nix"));
        let pins_nix = std::fs::read_to_string(crate::project_root().join("nix/pins.nix")).unwrap();
        assert!(pins_nix.contains("builtins.readFile ./pins.json"));
    }
}
