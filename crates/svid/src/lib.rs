//! SPIFFE IDs and X.509-SVIDs as files on disk (`svid.pem`, `svid_key.pem`, `svid_bundle.pem`).
//!
//! This crate never talks to the Workload API: spiffe-helper writes the files, and readers here
//! load them, check that the pair matches, and name the SPIFFE ID a certificate carries.

mod files;
mod id;
#[cfg(feature = "test-ca")]
pub mod test_ca;

pub use files::{
    Svid, SvidError, SvidFiles, describe_certificate, serial_hex, spiffe_id_of, unix_time,
};
pub use id::{SpiffeId, SpiffeIdError};
