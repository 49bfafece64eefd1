//! What the SPIRE servers' datastore is reached with, made at `up` by either runtime and never
//! kept in the repository: the password of role `spire`, and a TLS certificate for the datastore
//! from a CA of its own (the servers check it, `sslmode=verify-full`). The CA's key is used once
//! and dropped.

/// The datastore's DNS name on Kubernetes (its Service), which its certificate always names.
pub const SERVICE_NAME: &str = "spire-db.spire-system.svc";

/// The password, and the datastore's certificate, key and CA (PEM).
pub struct Credentials {
    pub password: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A fresh password (32 hex digits: no character the connection string would need quoted) and
/// a certificate valid for the Service name and `ips`, for a year.
pub fn credentials(ips: &[std::net::Ipv4Addr]) -> anyhow::Result<Credentials> {
    let mut secret = [0u8; 16];
    openssl::rand::rand_bytes(&mut secret)?;
    let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let c = crate::tls::server_cert("SPIRE lab datastore", &[SERVICE_NAME, "spire-db"], ips)?;
    Ok(Credentials {
        password,
        ca_pem: c.ca_pem,
        cert_pem: c.cert_pem,
        key_pem: c.key_pem,
    })
}

#[cfg(test)]
mod tests {
    use openssl::x509::X509;

    use super::*;

    /// The certificate names the Service and the given addresses, chains to its CA, and the
    /// password needs no quoting.
    #[test]
    fn credentials_are_fresh_and_name_the_datastore() {
        let ip = std::net::Ipv4Addr::new(10, 89, 0, 7);
        let a = credentials(&[ip]).unwrap();
        let b = credentials(&[ip]).unwrap();
        assert_ne!(a.password, b.password);
        assert!(a.password.len() == 32 && a.password.chars().all(|c| c.is_ascii_hexdigit()));
        let cert = X509::from_pem(&a.cert_pem).unwrap();
        let ca = X509::from_pem(&a.ca_pem).unwrap();
        assert!(cert.verify(&ca.public_key().unwrap()).unwrap());
        let sans = cert.subject_alt_names().unwrap();
        assert!(sans.iter().any(|n| n.dnsname() == Some(SERVICE_NAME)));
        assert!(sans.iter().any(|n| n.ipaddress() == Some(&ip.octets()[..])));
    }
}
