//! Envoy's admin `/certs`, as the lab reads it: the leaf an Envoy holds and the CAs it validates
//! peers with. Fields the lab does not use are ignored; missing ones read as absent.

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Certs {
    #[serde(default)]
    pub certificates: Vec<CertSet>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CertSet {
    #[serde(default)]
    pub ca_cert: Vec<CertDetails>,
    #[serde(default)]
    pub cert_chain: Vec<CertDetails>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct CertDetails {
    #[serde(default)]
    pub serial_number: String,
    #[serde(default)]
    pub subject_alt_names: Vec<SubjectAltName>,
    #[serde(default)]
    pub expiration_time: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SubjectAltName {
    #[serde(default)]
    pub uri: Option<String>,
}

/// The leaf certificate an Envoy holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    pub spiffe_id: Option<String>,
    /// Upper-case hexadecimal (Envoy prints lower case).
    pub serial: String,
    /// Unix seconds.
    pub not_after: Option<i64>,
}

impl Certs {
    /// The newest leaf Envoy holds: of the chains it lists, the one that expires last (None
    /// before SDS has answered). Envoy lists a TLS context for as long as something uses it —
    /// an upstream connection opened before a rotation keeps the previous one — in no set order.
    pub fn leaf(&self) -> Option<Leaf> {
        self.certificates
            .iter()
            .filter_map(|c| c.cert_chain.first())
            .map(|leaf| Leaf {
                spiffe_id: leaf.subject_alt_names.iter().find_map(|s| s.uri.clone()),
                serial: leaf.serial_number.to_uppercase(),
                not_after: leaf
                    .expiration_time
                    .as_deref()
                    .and_then(crate::time::parse_rfc3339),
            })
            .max_by_key(|l| l.not_after)
    }

    /// Serials (upper case) of the CA certificates Envoy validates peers with.
    pub fn ca_serials(&self) -> Vec<String> {
        self.certificates
            .iter()
            .flat_map(|c| &c.ca_cert)
            .map(|ca| ca.serial_number.to_uppercase())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leaf_and_the_cas() {
        let certs: Certs = serde_json::from_str(
            r#"{"certificates": [{
                "ca_cert": [{"serial_number": "01", "subject_alt_names": [{"uri": "spiffe://example.org"}]}],
                "cert_chain": [{"serial_number": "ab12", "subject_alt_names": [{"uri": "spiffe://example.org/ns/demo/sa/frontend"}],
                                "expiration_time": "2999-01-01T00:00:00Z", "days_until_expiration": "1"}]
            }]}"#,
        )
        .unwrap();
        let leaf = certs.leaf().unwrap();
        assert_eq!(
            leaf.spiffe_id.as_deref(),
            Some("spiffe://example.org/ns/demo/sa/frontend")
        );
        assert_eq!(leaf.serial, "AB12");
        assert!(leaf.not_after.unwrap() > crate::time::unix_now());
        assert_eq!(certs.ca_serials(), ["01"]);
        // A context kept by an older connection, listed after the current one.
        let both: Certs = serde_json::from_str(
            r#"{"certificates": [
                {"cert_chain": [{"serial_number": "02", "expiration_time": "2999-01-01T00:10:00Z"}]},
                {"cert_chain": [{"serial_number": "01", "expiration_time": "2999-01-01T00:00:00Z"}]}
            ]}"#,
        )
        .unwrap();
        assert_eq!(both.leaf().unwrap().serial, "02");
        let empty: Certs = serde_json::from_str(r#"{"certificates": []}"#).unwrap();
        assert!(empty.leaf().is_none());
    }
}
