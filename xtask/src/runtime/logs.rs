//! `cargo xtask logs`: one component's log as it is, or several, each line after its
//! component's name; with `-f`, new lines of all of them interleaved as they come. The same
//! printer on both runtimes: files on the local one, `kubectl logs` streams on kind.

use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use crate::lab::Component;

/// Prints lines, each after its component's name when there are several.
pub struct Printer {
    width: Option<usize>,
    /// Lines kept instead of printed (tests).
    kept: Option<Mutex<Vec<String>>>,
}

impl Printer {
    pub fn new(components: &[Component]) -> Printer {
        Printer {
            width: (components.len() > 1)
                .then(|| components.iter().map(|c| c.name().len()).max().unwrap_or(0)),
            kept: None,
        }
    }

    pub fn line(&self, c: Component, line: &str) {
        let text = match self.width {
            Some(w) => format!("{:<w$} │ {line}", c.name()),
            None => line.to_owned(),
        };
        match &self.kept {
            Some(kept) => kept.lock().unwrap_or_else(|e| e.into_inner()).push(text),
            None => {
                let _ = writeln!(std::io::stdout().lock(), "{text}");
            }
        }
    }

    /// A component's last lines, under its name when there are several.
    pub fn block(&self, c: Component, text: &str) {
        if self.width.is_some() {
            println!("── {}", c.name());
        }
        for l in text.lines() {
            self.line(c, l);
        }
    }

    /// Said once, not a log line: a stream that ended, a file not there yet.
    pub fn note(&self, c: Component, what: &str) {
        eprintln!("── {}: {what}", c.name());
    }
}

/// Follows log files: their last `lines` lines (per file), then new lines of any of them as
/// they are written, each whole line once. A file that is not there yet is waited for; one that
/// shrinks (a restarted component truncates it) is read from its start again.
pub fn follow_files(
    out: &Printer,
    files: &[(Component, PathBuf)],
    lines: usize,
) -> anyhow::Result<()> {
    follow_files_until(out, files, lines, &AtomicBool::new(false))
}

fn follow_files_until(
    out: &Printer,
    files: &[(Component, PathBuf)],
    lines: usize,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut at: Vec<Option<u64>> = vec![None; files.len()];
    let mut partial: Vec<String> = vec![String::new(); files.len()];
    for (i, (c, path)) in files.iter().enumerate() {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                for l in crate::procs::last_lines(&text, lines).lines() {
                    out.line(*c, l);
                }
                at[i] = Some(text.len() as u64);
            }
            Err(_) => out.note(*c, &format!("no log yet at {}", path.display())),
        }
    }
    while !stop.load(Ordering::Relaxed) {
        for (i, (c, path)) in files.iter().enumerate() {
            let Ok(mut f) = std::fs::File::open(path) else {
                continue;
            };
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let from = match at[i] {
                Some(pos) if pos <= len => pos,
                Some(_) => {
                    out.note(*c, "its log started over (restarted)");
                    partial[i].clear();
                    0
                }
                None => 0,
            };
            if from == len {
                at[i] = Some(len);
                continue;
            }
            let mut buf = String::new();
            if f.seek(SeekFrom::Start(from)).is_err() || f.read_to_string(&mut buf).is_err() {
                continue;
            }
            at[i] = Some(from + buf.len() as u64);
            let text = std::mem::take(&mut partial[i]) + &buf;
            let (whole, rest) = match text.rfind('\n') {
                Some(end) => text.split_at(end + 1),
                None => ("", text.as_str()),
            };
            for l in whole.lines() {
                out.line(*c, l);
            }
            partial[i] = rest.to_owned();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Follows commands that print a log and keep printing (`kubectl logs -f`), one per component,
/// interleaved as lines come. `command(c, first)` makes the command; a stream that ends (its
/// pod was replaced) is started again with `first` false, so that it does not repeat lines.
pub fn follow_streams(
    out: &Printer,
    components: &[Component],
    command: impl Fn(Component, bool) -> std::process::Command + Send + Sync + Clone + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<(Component, Result<String, String>)>();
    for &c in components {
        let (tx, command) = (tx.clone(), command.clone());
        std::thread::spawn(move || {
            let mut first = true;
            loop {
                let child = command(c, first)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn();
                let mut child = match child {
                    Ok(ch) => ch,
                    Err(e) => {
                        let _ = tx.send((c, Err(format!("cannot follow: {e}"))));
                        return;
                    }
                };
                if let Some(stdout) = child.stdout.take() {
                    for line in std::io::BufReader::new(stdout)
                        .lines()
                        .map_while(Result::ok)
                    {
                        if tx.send((c, Ok(line))).is_err() {
                            let _ = child.kill();
                            return;
                        }
                    }
                }
                let mut why = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut why);
                }
                let _ = child.wait();
                let why = why.lines().last().unwrap_or("").trim().to_owned();
                let _ = tx.send((
                    c,
                    Err(format!(
                        "its log stream ended{}; following again",
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(" ({why})")
                        }
                    )),
                ));
                first = false;
                std::thread::sleep(Duration::from_secs(2));
            }
        });
    }
    drop(tx);
    for (c, line) in rx {
        match line {
            Ok(l) => out.line(c, &l),
            Err(note) => out.note(c, &note),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last lines of each file, then lines written later, whole and once each, across a
    /// partial write, a file that appears late and one that starts over.
    #[test]
    fn followed_files_give_each_whole_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        std::fs::write(&a, "old 1\nold 2\n").unwrap();
        let files = vec![
            (Component::Backend, a.clone()),
            (Component::Frontend, b.clone()),
        ];
        let printer = Printer {
            kept: Some(Mutex::default()),
            ..Printer::new(&[Component::Backend, Component::Frontend])
        };
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| follow_files_until(&printer, &files, 1, &stop));
            let pause = || std::thread::sleep(Duration::from_millis(350));
            pause();
            let mut f = std::fs::OpenOptions::new().append(true).open(&a).unwrap();
            write!(f, "new, half").unwrap();
            pause();
            writeln!(f, " and whole").unwrap();
            std::fs::write(&b, "late\n").unwrap();
            pause();
            std::fs::write(&a, "again\n").unwrap();
            pause();
            stop.store(true, Ordering::Relaxed);
        });
        let kept = printer.kept.unwrap().into_inner().unwrap();
        assert_eq!(
            kept,
            [
                "backend  │ old 2",
                "backend  │ new, half and whole",
                "frontend │ late",
                "backend  │ again",
            ]
        );
    }
}
