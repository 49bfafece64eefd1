//! What the SPIRE servers' datastore is reached with, made at `up` by either runtime and never
//! kept in the repository: the password of role `spire`, and a TLS certificate for the datastore
//! from a CA of its own (the servers check it, `sslmode=verify-full`). The CA's key is used once
//! and dropped.

use anyhow::Context;
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};

/// The datastore's DNS name on Kubernetes (its Service), which its certificate always names.
pub const SERVICE_NAME: &str = "spire-db.spire-system.svc";

/// The password, and the datastore's certificate, key and CA (PEM).
pub struct Credentials {
    pub password: String,
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

fn key() -> anyhow::Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn serial() -> anyhow::Result<openssl::asn1::Asn1Integer> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(bn.to_asn1_integer()?)
}

fn name(cn: &str) -> anyhow::Result<openssl::x509::X509Name> {
    let mut n = X509NameBuilder::new()?;
    n.append_entry_by_text("O", "SPIRE lab")?;
    n.append_entry_by_text("CN", cn)?;
    Ok(n.build())
}

/// A fresh password (32 hex digits: no character the connection string would need quoted) and
/// a certificate valid for the Service name and `ips`, for a year.
pub fn credentials(ips: &[std::net::Ipv4Addr]) -> anyhow::Result<Credentials> {
    let mut secret = [0u8; 16];
    openssl::rand::rand_bytes(&mut secret)?;
    let password: String = secret.iter().map(|b| format!("{b:02x}")).collect();

    let (now, year) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(365)?);
    let ca_key = key()?;
    let ca_name = name("SPIRE lab datastore CA")?;
    let mut ca = X509Builder::new()?;
    ca.set_version(2)?;
    let ca_serial = serial()?;
    ca.set_serial_number(&ca_serial)?;
    ca.set_subject_name(&ca_name)?;
    ca.set_issuer_name(&ca_name)?;
    ca.set_pubkey(&ca_key)?;
    ca.set_not_before(&now)?;
    ca.set_not_after(&year)?;
    ca.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    ca.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    ca.sign(&ca_key, MessageDigest::sha256())?;
    let ca = ca.build();

    let leaf_key = key()?;
    let mut leaf = X509Builder::new()?;
    leaf.set_version(2)?;
    let leaf_serial = serial()?;
    leaf.set_serial_number(&leaf_serial)?;
    let leaf_name = name("spire-db")?;
    leaf.set_subject_name(&leaf_name)?;
    leaf.set_issuer_name(ca.subject_name())?;
    leaf.set_pubkey(&leaf_key)?;
    leaf.set_not_before(&now)?;
    leaf.set_not_after(&year)?;
    leaf.append_extension(BasicConstraints::new().critical().build()?)?;
    leaf.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    leaf.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    san.dns(SERVICE_NAME).dns("spire-db");
    for ip in ips {
        san.ip(&ip.to_string());
    }
    let san = san.build(&leaf.x509v3_context(Some(&ca), None))?;
    leaf.append_extension(san)?;
    leaf.sign(&ca_key, MessageDigest::sha256())?;
    let leaf: X509 = leaf.build();

    Ok(Credentials {
        password,
        ca_pem: ca.to_pem()?,
        cert_pem: leaf.to_pem()?,
        key_pem: leaf_key
            .private_key_to_pem_pkcs8()
            .context("the datastore's key")?,
    })
}

#[cfg(test)]
mod tests {
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
