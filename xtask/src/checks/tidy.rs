//! The repository's own rules, as tests (after rust-analyzer's `xtask/src/tidy.rs`): the README
//! names every command, every module says what it is for, and the runtime boundary holds —
//! only the kind runtime (and the checks that exercise it, and `pins` asking registries for
//! digests) runs docker, kind or kubectl; only the local runtime names its ports, nodes and
//! state paths; scenarios, the bench and the demo load never ask which runtime they have; the
//! runtimes never reach into the checks.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

/// Every `.rs` file under `xtask/src`, as (path relative to it, text).
fn xtask_sources() -> Vec<(String, String)> {
    let root = crate::project_root().join("xtask/src");
    let mut files = Vec::new();
    for p in rust_files(&root) {
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        files.push((rel, std::fs::read_to_string(&p).unwrap()));
    }
    files.sort();
    files
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() && !p.ends_with("target") {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

/// The code of a file: comment lines blanked, and nothing from its `#[cfg(test)]` module on
/// (tests may name anything they check). Line numbers stay those of the file.
fn code(text: &str) -> String {
    let end = text
        .find("#[cfg(test)]\nmod tests")
        .or_else(|| text.find("#[cfg(test)]\npub(crate) mod tests"))
        .unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The line without its string literals (each replaced by `""`), and the literals.
fn split_strings(line: &str) -> (String, Vec<String>) {
    let mut code = String::new();
    let mut strings = Vec::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            code.push(c);
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => s.extend(chars.next()),
                '"' => break,
                c => s.push(c),
            }
        }
        code.push_str("\"\"");
        strings.push(s);
    }
    (code, strings)
}

/// The programs a file runs: `cmd!(sh, "PROGRAM …")`, `Command::new("PROGRAM")`,
/// `.cmd("PROGRAM")`, or an argv `["PROGRAM", …]`, with the line each starts on.
fn programs_run(code: &str) -> Vec<(usize, String)> {
    let line_of = |at: usize| code[..at].lines().count().max(1);
    let word = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for (at, _) in code.match_indices("cmd!(") {
        let rest = code[at + 5..].trim_start();
        let rest = rest.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
        if let Some(rest) = rest.trim_start().strip_prefix(',')
            && let Some(program) = rest.trim_start().strip_prefix('"')
        {
            found.push((line_of(at), word(program)));
        }
    }
    for opener in ["Command::new(\"", ".cmd(\"", "[\""] {
        for (at, _) in code.match_indices(opener) {
            let program = word(&code[at + opener.len()..]);
            let closes = code[at + opener.len() + program.len()..]
                .starts_with(if opener == "[\"" { "\"," } else { "\")" });
            if closes {
                found.push((line_of(at), program));
            }
        }
    }
    found
}

/// Number literals of a line (digits not inside an identifier).
fn numbers(line: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if let Ok(n) = line[start..i].parse() {
                out.push(n);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Where a file sits with respect to the runtime boundary.
fn in_dir(path: &str, dir: &str) -> bool {
    path.starts_with(dir)
}

/// Every breach of the runtime boundary in `files` (paths relative to `xtask/src`).
fn boundary_violations(
    files: &[(String, String)],
    local_nodes: &[&str],
    local_ports: &[u16],
    local_paths: &[&str],
) -> Vec<String> {
    // Who may run docker, kind or kubectl.
    let may_run_kind = |p: &str| {
        in_dir(p, "runtime/kind/")
            || [
                "checks/kind_layer.rs",
                "checks/attestation.rs",
                "checks/kind_cli.rs",
                "checks/apiserver.rs",
                "pins.rs",
            ]
            .contains(&p)
    };
    let mut found = Vec::new();
    // This file names what it looks for.
    for (path, text) in files.iter().filter(|(p, _)| p != "checks/tidy.rs") {
        let code = code(text);
        if !may_run_kind(path) {
            for (n, program) in programs_run(&code) {
                if ["docker", "kind", "kubectl"].contains(&program.as_str()) {
                    found.push(format!(
                        "xtask/src/{path}:{n} runs {program}: only runtime/kind (and the checks of the kind layer) may"
                    ));
                }
            }
        }
        for (n, line) in code.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            let at = format!("xtask/src/{path}:{n}");
            let (bare, strings) = split_strings(line);
            if !in_dir(path, "runtime/local/") {
                for node in local_nodes {
                    if line.contains(&format!("\"{node}")) {
                        found.push(format!("{at} names the local node {node}"));
                    }
                }
                for p in local_paths {
                    if line.contains(p) {
                        found.push(format!("{at} names the local runtime's path {p}"));
                    }
                }
                // The kind runtime's own ports are the pods' container ports, which the local
                // runtime's defaults were chosen to equal; every other module names none.
                // A port is a number in the code, or `:PORT` in a string (an address).
                if !in_dir(path, "runtime/kind/") {
                    let in_addresses = strings.iter().flat_map(|s| {
                        s.match_indices(':')
                            .filter(|(i, _)| s[i + 1..].starts_with(|c: char| c.is_ascii_digit()))
                            .flat_map(|(i, _)| numbers(&s[i + 1..]).into_iter().take(1))
                            .collect::<Vec<_>>()
                    });
                    for port in numbers(&bare).into_iter().chain(in_addresses) {
                        if local_ports.iter().any(|p| u64::from(*p) == port) {
                            found.push(format!("{at} names the local port {port}"));
                        }
                    }
                }
            }
            let runtime_neutral =
                in_dir(path, "scenario/") || in_dir(path, "bench/") || path == "demo.rs";
            if runtime_neutral {
                for asks in ["KindLab", "runtime::kind", "Runtime::", ".label() =="] {
                    if line.contains(asks) {
                        found.push(format!("{at} asks which runtime it is on ({asks})"));
                    }
                }
            }
            if in_dir(path, "scenario/") && line.contains("runtime::local") {
                found.push(format!("{at} asks which runtime it is on (runtime::local)"));
            }
            if in_dir(path, "runtime/") && line.contains("checks::") {
                found.push(format!(
                    "{at} reaches into the checks: the checks use the runtimes, never the reverse"
                ));
            }
        }
    }
    found
}

#[test]
fn the_runtime_boundary_holds() {
    let (nodes, ports, paths) = crate::runtime::local::private_names();
    let found = boundary_violations(&xtask_sources(), &nodes, &ports, &paths);
    assert!(
        found.is_empty(),
        "the runtime boundary is breached:\n{}",
        found.join("\n")
    );
}

/// The rule catches what it is for: each planted breach is named.
#[test]
fn the_boundary_check_catches_planted_breaches() {
    let (nodes, ports, paths) = crate::runtime::local::private_names();
    let planted = |path: &str, line: &str| {
        vec![(
            path.to_owned(),
            format!("//! a module\nfn f() {{\n    {line}\n}}\n"),
        )]
    };
    for (path, line, says) in [
        (
            "scenario/cases.rs",
            r#"cmd!(sh, "kubectl get pods").run()?;"#,
            "runs kubectl",
        ),
        (
            "ci.rs",
            r#"std::process::Command::new("docker").arg("ps");"#,
            "runs docker",
        ),
        (
            "bench/mod.rs",
            r#"let url = format!("http://127.0.0.1:{}", 15432);"#,
            "local port 15432",
        ),
        (
            "runtime/kind/lab.rs",
            r#"let node = "backend-node";"#,
            "local node backend-node",
        ),
        (
            "lab.rs",
            r#"let root = "/tmp/spire-lab-0";"#,
            "path /tmp/spire-lab",
        ),
        (
            "scenario/mod.rs",
            r#"let lab = crate::runtime::local::LocalLab::open()?;"#,
            "runtime::local",
        ),
        (
            "bench/hops.rs",
            r#"if lab.label() == "kind runtime" { return Ok(()); }"#,
            "asks which runtime",
        ),
        (
            "runtime/kind/plan.rs",
            r#"crate::checks::kind_cli::check_kind_commands(k)?;"#,
            "reaches into the checks",
        ),
    ] {
        let found = boundary_violations(&planted(path, line), &nodes, &ports, &paths);
        assert!(
            found.iter().any(|f| f.contains(says)),
            "{path}: `{line}` was not caught as {says:?}: {found:?}"
        );
    }
    // And allowed places stay allowed.
    for (path, line) in [
        (
            "runtime/kind/mod.rs",
            r#"cmd!(sh, "kubectl version --client").run()?;"#,
        ),
        ("runtime/local/layout.rs", r#"postgres: p(15432),"#),
        (
            "pins.rs",
            r#"cmd!(sh, "docker buildx imagetools inspect {r}")"#,
        ),
    ] {
        let found = boundary_violations(&planted(path, line), &nodes, &ports, &paths);
        assert!(found.is_empty(), "{path}: {found:?}");
    }
}

/// The README names every xtask command.
#[test]
fn readme_mentions_every_command() {
    let readme = std::fs::read_to_string(crate::project_root().join("README.md")).unwrap();
    for sub in crate::flags::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
    {
        let name = sub.get_name();
        assert!(
            readme.contains(&format!("cargo xtask {name}")),
            "README.md does not mention `cargo xtask {name}`"
        );
    }
}

/// Every Rust module starts with a `//!` line saying what it is for.
#[test]
fn every_module_says_what_it_is_for() {
    let root = crate::project_root();
    let missing: Vec<String> = [root.join("crates"), root.join("xtask")]
        .iter()
        .flat_map(|d| rust_files(d))
        .filter(|p| {
            !std::fs::read_to_string(p)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a //! line: {missing:?}"
    );
}

#[test]
fn numbers_are_read_as_tokens() {
    assert_eq!(
        numbers("p(15432), x9090, 8080u16, 1.5"),
        vec![15432, 8080, 1, 5]
    );
}
