//! Server certificates for the lab's TLS that is not SPIFFE's: the SPIRE servers' datastore and
//! SPIRE's OIDC discovery provider, whose clients (the SPIRE servers, OpenBao) check a hostname
//! or address against a CA they are given. Made at `up` by either runtime from a CA used once
//! and dropped; never kept in the repository or an image.

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

/// A server's certificate, its key and the CA that signed it (PEM).
pub struct ServerCert {
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

/// A certificate for `dns` (the first is its CN) and `ips`, valid for a year, from a new CA
/// named after `what` whose key is dropped here.
pub fn server_cert(
    what: &str,
    dns: &[&str],
    ips: &[std::net::Ipv4Addr],
) -> anyhow::Result<ServerCert> {
    let (now, year) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(365)?);
    let ca_key = key()?;
    let ca_name = name(&format!("{what} CA"))?;
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
    let leaf_name = name(dns.first().copied().unwrap_or(what))?;
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
    for d in dns {
        san.dns(d);
    }
    for ip in ips {
        san.ip(&ip.to_string());
    }
    let san = san.build(&leaf.x509v3_context(Some(&ca), None))?;
    leaf.append_extension(san)?;
    leaf.sign(&ca_key, MessageDigest::sha256())?;
    let leaf: X509 = leaf.build();

    Ok(ServerCert {
        ca_pem: ca.to_pem()?,
        cert_pem: leaf.to_pem()?,
        key_pem: leaf_key
            .private_key_to_pem_pkcs8()
            .with_context(|| format!("the key of {what}"))?,
    })
}
