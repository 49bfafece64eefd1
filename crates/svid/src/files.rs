//! Loading the three files spiffe-helper writes, and checking them before anyone uses them.

use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::pkey::{PKey, Private};
use openssl::x509::{X509, X509Ref};

use crate::SpiffeId;

/// Where an X.509-SVID lives on disk: a directory and the three file names.
#[derive(Clone, Debug)]
pub struct SvidFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

/// A loaded X.509-SVID whose key matches its certificate and which is valid now.
#[derive(Clone)]
pub struct Svid {
    /// The leaf first, then any intermediates.
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
    /// The trust bundle: the CA certificates peers are checked against.
    pub bundle: Vec<X509>,
    pub spiffe_id: SpiffeId,
    /// Upper-case hexadecimal, as Envoy's admin `/certs` and `openssl x509 -serial` print it.
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub not_after: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("SVID file {0} is missing (is spiffe-helper running and registered?)")]
    Missing(PathBuf),
    #[error("SVID file {path} could not be read: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("SVID file {path} is not valid PEM of the expected kind: {detail}")]
    Garbled { path: PathBuf, detail: String },
    #[error(
        "the private key in {key} does not match the certificate in {cert} (a rotation half written?)"
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate {serial} in {path} has no usable SPIFFE ID: {detail}")]
    NoSpiffeId {
        path: PathBuf,
        serial: String,
        detail: String,
    },
    #[error("SVID {spiffe_id} (serial {serial}) expired {ago} s ago")]
    Expired {
        spiffe_id: SpiffeId,
        serial: String,
        ago: i64,
    },
}

impl SvidError {
    /// True when reading again shortly may succeed (the writer may be between two files).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SvidError::KeyMismatch { .. } | SvidError::Garbled { .. } | SvidError::Missing(_)
        )
    }
}

impl SvidFiles {
    /// The names spiffe-helper is configured with in this lab.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        SvidFiles {
            cert: dir.join("svid.pem"),
            key: dir.join("svid_key.pem"),
            bundle: dir.join("svid_bundle.pem"),
        }
    }

    /// Reads and checks the three files: parseable, key matching the leaf, one SPIFFE ID, unexpired.
    pub fn load(&self) -> Result<Svid, SvidError> {
        let chain = X509::stack_from_pem(&read(&self.cert)?).map_err(|e| garbled(&self.cert, e))?;
        let leaf = chain
            .first()
            .ok_or_else(|| garbled(&self.cert, "no certificate in the file"))?;
        let key =
            PKey::private_key_from_pem(&read(&self.key)?).map_err(|e| garbled(&self.key, e))?;
        let bundle =
            X509::stack_from_pem(&read(&self.bundle)?).map_err(|e| garbled(&self.bundle, e))?;
        if bundle.is_empty() {
            return Err(garbled(&self.bundle, "no CA certificate in the bundle"));
        }
        let leaf_key = leaf.public_key().map_err(|e| garbled(&self.cert, e))?;
        if !key.public_eq(&leaf_key) {
            return Err(SvidError::KeyMismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            });
        }
        let serial = serial_hex(leaf);
        let spiffe_id = spiffe_id_of(leaf).map_err(|detail| SvidError::NoSpiffeId {
            path: self.cert.clone(),
            serial: serial.clone(),
            detail,
        })?;
        let not_after = unix_time(leaf.not_after());
        let now = contract::time::unix_now();
        if not_after <= now {
            return Err(SvidError::Expired {
                spiffe_id,
                serial,
                ago: now - not_after,
            });
        }
        Ok(Svid {
            chain,
            key,
            bundle,
            spiffe_id,
            serial,
            not_after,
        })
    }
}

impl Svid {
    pub fn seconds_left(&self) -> i64 {
        self.not_after - contract::time::unix_now()
    }

    pub fn leaf(&self) -> &X509Ref {
        &self.chain[0]
    }
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The SPIFFE ID of an X.509-SVID: its one URI SAN, which must be a valid SPIFFE ID.
pub fn spiffe_id_of(cert: &X509Ref) -> Result<SpiffeId, String> {
    let uris: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.uri().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [one] => one.parse().map_err(|e: crate::SpiffeIdError| e.to_string()),
        [] => Err("the certificate has no URI SAN".into()),
        many => Err(format!(
            "an X.509-SVID has exactly one URI SAN, this one has {}",
            many.len()
        )),
    }
}

/// A one-line description of a certificate for logs and error messages.
pub fn describe_certificate(cert: &X509Ref) -> String {
    let id = spiffe_id_of(cert)
        .map(|id| id.to_string())
        .unwrap_or_else(|e| format!("<{e}>"));
    format!("{id} (serial {})", serial_hex(cert))
}

/// A certificate's serial in upper-case hexadecimal, as Envoy's admin `/certs` (upper-cased) and
/// `openssl x509 -serial` print it.
pub fn serial_hex(cert: &X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "?".into())
}

/// An ASN.1 time as seconds since the Unix epoch.
pub fn unix_time(t: &Asn1TimeRef) -> i64 {
    let epoch = Asn1Time::from_unix(0).expect("the epoch is a valid time");
    match epoch.diff(t) {
        Ok(d) => i64::from(d.days) * 86_400 + i64::from(d.secs),
        Err(_) => 0,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SvidError> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SvidError::Missing(path.to_owned()),
        _ => SvidError::Unreadable {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    })
}

fn garbled(path: &Path, detail: impl std::fmt::Display) -> SvidError {
    SvidError::Garbled {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}
