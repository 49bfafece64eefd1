//! A certificate authority shaped like SPIRE's, for tests that cannot run SPIRE.
//!
//! The leaf certificates it issues look like X.509-SVIDs: subject `C=US, O=SPIRE, CN=<first DNS
//! name>`, one URI SAN (the SPIFFE ID), EC P-256 keys, server and client auth. Real SPIRE-issued
//! SVIDs are covered by the local runtime (`cargo xtask up --local`, `cargo xtask scenario`).

use std::path::Path;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509Builder, X509NameBuilder};

use crate::SvidFiles;

pub struct TestCa {
    pub cert: X509,
    key: PKey<Private>,
}

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub spiffe_id: String,
    pub dns: Option<String>,
    /// Validity start relative to now, in seconds (negative: in the past).
    pub not_before: i64,
    /// Validity end relative to now, in seconds (negative: already expired).
    pub not_after: i64,
}

impl Leaf {
    pub fn new(spiffe_id: &str, dns: Option<&str>) -> Leaf {
        Leaf {
            spiffe_id: spiffe_id.into(),
            dns: dns.map(Into::into),
            not_before: -60,
            not_after: 3600,
        }
    }

    pub fn expired(mut self) -> Leaf {
        self.not_before = -7200;
        self.not_after = -3600;
        self
    }
}

/// One issued leaf: certificate and key, as PEM.
pub struct Issued {
    pub cert: X509,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl Issued {
    pub fn serial(&self) -> String {
        self.cert
            .serial_number()
            .to_bn()
            .unwrap()
            .to_hex_str()
            .unwrap()
            .to_string()
    }
}

fn ec_key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn random_serial() -> Asn1Integer {
    let mut bn = BigNum::new().unwrap();
    bn.rand(127, MsbOption::MAYBE_ZERO, false).unwrap();
    bn.to_asn1_integer().unwrap()
}

fn time_from_now(secs: i64) -> Asn1Time {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Asn1Time::from_unix(now + secs).unwrap()
}

impl TestCa {
    pub fn new(trust_domain: &str) -> TestCa {
        let key = ec_key();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("C", "US").unwrap();
        name.append_entry_by_text("O", "SPIFFE").unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&random_serial()).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&time_from_now(-3600)).unwrap();
        b.set_not_after(&time_from_now(86_400)).unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        let san = SubjectAlternativeName::new()
            .uri(&format!("spiffe://{trust_domain}"))
            .build(&b.x509v3_context(None, None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        TestCa {
            cert: b.build(),
            key,
        }
    }

    pub fn bundle_pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap()
    }

    pub fn issue(&self, leaf: &Leaf) -> Issued {
        let key = ec_key();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("C", "US").unwrap();
        name.append_entry_by_text("O", "SPIRE").unwrap();
        if let Some(dns) = &leaf.dns {
            name.append_entry_by_text("CN", dns).unwrap();
        }
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&random_serial()).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(self.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&time_from_now(leaf.not_before)).unwrap();
        b.set_not_after(&time_from_now(leaf.not_after)).unwrap();
        b.append_extension(BasicConstraints::new().critical().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .key_agreement()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()
                .unwrap(),
        )
        .unwrap();
        let mut san = SubjectAlternativeName::new();
        san.uri(&leaf.spiffe_id);
        if let Some(dns) = &leaf.dns {
            san.dns(dns);
        }
        let san = san
            .build(&b.x509v3_context(Some(&self.cert), None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        let cert = b.build();
        Issued {
            cert_pem: cert.to_pem().unwrap(),
            key_pem: key.private_key_to_pem_pkcs8().unwrap(),
            cert,
        }
    }

    /// Issues a leaf and writes it as spiffe-helper would: certificate 0644, key 0600, bundle.
    pub fn write_svid(&self, dir: &Path, leaf: &Leaf) -> Issued {
        let issued = self.issue(leaf);
        write_files(dir, &issued.cert_pem, &issued.key_pem, &self.bundle_pem());
        issued
    }
}

/// Writes the three SVID files with the modes spiffe-helper uses.
pub fn write_files(dir: &Path, cert_pem: &[u8], key_pem: &[u8], bundle_pem: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let files = SvidFiles::in_dir(dir);
    std::fs::create_dir_all(dir).unwrap();
    for (path, data, mode) in [
        (&files.cert, cert_pem, 0o644),
        (&files.key, key_pem, 0o600),
        (&files.bundle, bundle_pem, 0o644),
    ] {
        std::fs::write(path, data).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_svid_loads_and_names_its_spiffe_id() {
        let dir = tempdir();
        let ca = TestCa::new("example.org");
        let issued = ca.write_svid(
            &dir,
            &Leaf::new("spiffe://example.org/ns/demo/sa/backend", Some("backend")),
        );
        let svid = SvidFiles::in_dir(&dir).load().unwrap();
        assert_eq!(
            svid.spiffe_id.as_str(),
            "spiffe://example.org/ns/demo/sa/backend"
        );
        assert_eq!(svid.serial, issued.serial());
        assert!(svid.seconds_left() > 3500 && svid.seconds_left() <= 3600);
    }

    #[test]
    fn mismatched_pair_and_expired_certificate_are_refused() {
        let dir = tempdir();
        let ca = TestCa::new("example.org");
        let a = ca.issue(&Leaf::new("spiffe://example.org/a", None));
        let b = ca.issue(&Leaf::new("spiffe://example.org/b", None));
        write_files(&dir, &a.cert_pem, &b.key_pem, &ca.bundle_pem());
        let err = SvidFiles::in_dir(&dir).load().unwrap_err();
        assert!(matches!(err, crate::SvidError::KeyMismatch { .. }), "{err}");
        assert!(err.is_transient());

        ca.write_svid(&dir, &Leaf::new("spiffe://example.org/a", None).expired());
        let err = SvidFiles::in_dir(&dir).load().unwrap_err();
        assert!(matches!(err, crate::SvidError::Expired { .. }), "{err}");
        assert!(err.to_string().contains("spiffe://example.org/a"));
    }

    #[test]
    fn missing_and_garbled_files_are_named() {
        let dir = tempdir();
        let err = SvidFiles::in_dir(&dir).load().unwrap_err();
        assert!(err.to_string().contains("svid.pem is missing"), "{err}");
        std::fs::write(
            dir.join("svid.pem"),
            b"-----BEGIN CERTIFICATE-----\ngarbage\n",
        )
        .unwrap();
        let err = SvidFiles::in_dir(&dir).load().unwrap_err();
        assert!(matches!(err, crate::SvidError::Garbled { .. }), "{err}");
    }

    fn tempdir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "svid-test-{}-{}",
            std::process::id(),
            random_serial().to_bn().unwrap().to_hex_str().unwrap()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
