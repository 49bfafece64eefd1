//! How the services log: one line per event, JSON for machines (each request with the peer's
//! SPIFFE ID in [`PEER`]) or pretty for a person at a terminal. `RUST_LOG` filters as usual.

use std::str::FromStr;

/// The field that carries the SPIFFE ID of the other end of a request.
pub const PEER: &str = "peer_spiffe_id";

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line: what Kubernetes and `cargo xtask logs` collect.
    Json,
    /// For a person: colours when the output is a terminal.
    #[default]
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            other => Err(format!("{other:?} is no log format: json or pretty")),
        }
    }
}

/// Sets the process's logger; `info` unless `RUST_LOG` says otherwise.
#[cfg(feature = "logs")]
pub fn init(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_and_others_are_refused_with_the_choices() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("pretty".parse(), Ok(LogFormat::Pretty));
        let e = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("json or pretty"), "{e}");
    }
}
