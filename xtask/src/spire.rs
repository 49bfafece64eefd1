//! SPIRE registration, as both runtimes do it: one entry type and the `spire-server entry`
//! arguments that describe it. Each runtime chooses the parent and the selectors (unix on the
//! local runtime, k8s on kind); the SPIFFE IDs and DNS names come from `contract`.

use contract::Workload;

/// A registration entry: who gets which SPIFFE ID, below which parent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub spiffe_id: String,
    pub parent_id: String,
    pub selectors: Vec<String>,
    pub dns: Option<String>,
}

impl Entry {
    /// A workload's entry: its SPIFFE ID and DNS name, below `parent_id`, with `selectors`.
    pub fn workload(w: Workload, parent_id: &str, selectors: Vec<String>) -> Entry {
        Entry {
            spiffe_id: w.spiffe_id(),
            parent_id: parent_id.to_owned(),
            selectors,
            dns: w.dns_name().map(Into::into),
        }
    }

    /// The `unregistered` scenario's rogue: its own SPIFFE ID with the backend's DNS name (so
    /// that its CN passes PostgreSQL's `cert` check and only the SPIFFE ID check can refuse it).
    pub fn rogue(parent_id: &str, selectors: Vec<String>) -> Entry {
        Entry {
            spiffe_id: contract::workload_id(contract::ids::ROGUE),
            dns: Workload::Backend.dns_name().map(Into::into),
            ..Entry::workload(Workload::Backend, parent_id, selectors)
        }
    }

    /// The arguments of `spire-server entry create` (and `entry update`, after `-entryID`),
    /// with an X.509-SVID TTL when given (0: the server's default).
    pub fn args(&self, ttl: Option<u32>) -> Vec<String> {
        let mut args = vec![
            "-parentID".to_owned(),
            self.parent_id.clone(),
            "-spiffeID".into(),
            self.spiffe_id.clone(),
        ];
        for s in &self.selectors {
            args.extend(["-selector".into(), s.clone()]);
        }
        if let Some(d) = &self.dns {
            args.extend(["-dns".into(), d.clone()]);
        }
        if let Some(t) = ttl {
            args.extend(["-x509SVIDTTL".into(), t.to_string()]);
        }
        args
    }

    /// True for the demo's workloads (whose TTL scenarios shorten), false for the rogue.
    pub fn is_workload(&self) -> bool {
        Workload::ALL
            .iter()
            .any(|w| w.spiffe_id() == self.spiffe_id)
    }
}

/// The entry ids in `spire-server entry show -output json`.
pub fn entry_ids(json: &str) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    Ok(v["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["id"].as_str().map(str::to_owned))
        .collect())
}

/// Each agent's SPIFFE ID and the serial of the X.509-SVID it holds now, from
/// `spire-server agent list -output json`.
pub fn agent_svids(json: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    Ok(v["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let id = format!(
                "spiffe://{}{}",
                a["id"]["trust_domain"].as_str()?,
                a["id"]["path"].as_str()?
            );
            Some((id, a["x509svid_serial_number"].as_str()?.to_owned()))
        })
        .collect())
}

/// The id of the entry `spire-server entry create -output json` made. The command succeeds
/// even when the server could not create it: the result's status says so, and is an error here.
pub fn created_id(json: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    let v: serde_json::Value = serde_json::from_str(json)?;
    let result = &v["results"][0];
    if let Some(code) = result["status"]["code"].as_i64().filter(|c| *c != 0) {
        anyhow::bail!(
            "the entry was not created (code {code}): {}",
            result["status"]["message"].as_str().unwrap_or("no message")
        );
    }
    result["entry"]["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .with_context(|| format!("no entry id in {json}"))
}

/// SPIRE's JSON selectors (`[{"type": …, "value": …}]`) as `type:value`.
pub fn selector_strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}:{}",
                s["type"].as_str().unwrap_or(""),
                s["value"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// The arguments of `spire-server x509 mint` after its socket: an SVID for `spiffe_id` (with
/// `dns` as its first DNS name, so its CN) for `ttl`, printed as JSON.
pub fn mint_args(spiffe_id: &str, dns: Option<&str>, ttl: std::time::Duration) -> Vec<String> {
    let mut args = vec![
        "-spiffeID".to_owned(),
        spiffe_id.to_owned(),
        "-ttl".into(),
        format!("{}s", ttl.as_secs().max(1)),
        "-output".into(),
        "json".into(),
    ];
    if let Some(dns) = dns {
        args.extend(["-dns".to_owned(), dns.to_owned()]);
    }
    args
}

/// What `spire-server x509 mint -output json` printed: the SVID's chain and key (base64 DER)
/// and the root CAs.
pub fn minted(json: &str) -> anyhow::Result<crate::lab::Minted> {
    use anyhow::Context;
    use openssl::x509::X509;
    #[derive(serde::Deserialize)]
    struct Mint {
        x509_svid: Vec<String>,
        private_key: String,
        root_cas: Vec<String>,
    }
    let m: Mint = serde_json::from_str(json.trim())
        .with_context(|| format!("`x509 mint` printed something else: {json}"))?;
    let der = |b64: &str| openssl::base64::decode_block(b64).context("base64 in `x509 mint`");
    let certs = |list: &[String]| -> anyhow::Result<Vec<X509>> {
        list.iter().map(|c| Ok(X509::from_der(&der(c)?)?)).collect()
    };
    let chain = certs(&m.x509_svid)?;
    anyhow::ensure!(!chain.is_empty(), "`x509 mint` gave no certificate");
    Ok(crate::lab::Minted {
        identity: crate::probe::ClientIdentity {
            chain,
            key: openssl::pkey::PKey::private_key_from_der(&der(&m.private_key)?)?,
        },
        bundle: certs(&m.root_cas)?,
    })
}

#[cfg(test)]
mod created {
    /// A refused creation is an error that says why, though the command exits with 0.
    #[test]
    fn a_refused_creation_is_an_error_with_the_servers_reason() {
        let refused = r#"{"results":[{"entry":{"id":""},"status":{"code":13,"message":"failed to create entry: datastore-sql: dial tcp 192.0.2.1:5432: connect: connection refused"}}]}"#;
        let e = super::created_id(refused).unwrap_err().to_string();
        assert!(e.contains("code 13") && e.contains("datastore-sql"), "{e}");
        let made = r#"{"results":[{"entry":{"id":"abc"},"status":{"code":0,"message":"OK"}}]}"#;
        assert_eq!(super::created_id(made).unwrap(), "abc");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_arguments() {
        let e = Entry::workload(
            Workload::Backend,
            "spiffe://example.org/node",
            vec!["k8s:ns:demo".into(), "k8s:sa:backend".into()],
        );
        assert_eq!(
            e.args(Some(20)).join(" "),
            "-parentID spiffe://example.org/node -spiffeID spiffe://example.org/ns/demo/sa/backend -selector k8s:ns:demo -selector k8s:sa:backend -dns backend -x509SVIDTTL 20"
        );
        assert!(e.is_workload());
        let rogue = Entry::rogue("spiffe://example.org/node", vec![]);
        assert_eq!(rogue.spiffe_id, "spiffe://example.org/ns/demo/sa/rogue");
        assert_eq!(rogue.dns.as_deref(), Some("backend"));
        assert!(!rogue.is_workload());
    }
}
