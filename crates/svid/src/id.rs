//! The SPIFFE ID: `spiffe://<trust domain>/<path>`, checked as the SPIFFE standard says.

use std::fmt;
use std::str::FromStr;

/// A syntactically valid SPIFFE ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    #[error("{0:?} is not a SPIFFE ID: the trust domain may hold only a-z, 0-9, '.', '-' and '_'")]
    TrustDomain(String),
    #[error(
        "{0:?} is not a SPIFFE ID: path segments must be non-empty, not '.' or '..', of a-z A-Z 0-9 '.' '-' '_'"
    )]
    Path(String),
}

impl SpiffeId {
    pub fn trust_domain(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        rest.split('/').next().unwrap_or(rest)
    }

    pub fn path(&self) -> &str {
        let rest = &self.0["spiffe://".len()..];
        rest.find('/').map_or("", |i| &rest[i..])
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (td, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        let td_ok = !td.is_empty()
            && td
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
        if !td_ok {
            return Err(SpiffeIdError::TrustDomain(s.to_owned()));
        }
        if !path.is_empty() {
            let ok = path[1..].split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            });
            if !ok {
                return Err(SpiffeIdError::Path(s.to_owned()));
            }
        }
        Ok(SpiffeId(s.to_owned()))
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.0
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_ids() {
        let id: SpiffeId = "spiffe://example.org/ns/demo/sa/backend".parse().unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/demo/sa/backend");
        let td: SpiffeId = "spiffe://example.org".parse().unwrap();
        assert_eq!(td.path(), "");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "https://example.org/x",
            "spiffe://",
            "spiffe://Example.org/x",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a b",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} was accepted");
        }
    }
}
