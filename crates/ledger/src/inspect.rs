//! Identity inspection: certificates decoded, the bundle in SPIFFE bundle format, and validation of
//! a posted JWT-SVID (against the JWT bundle) or X.509-SVID chain (against the X.509 bundle), each
//! with a precise reason when it is not valid.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use contract::ledger::{CertInfo, Problem, Validation};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde_json::{Value, json};
use spiffe::{
    BundleSource, JwtSvid, JwtSvidError, JwtVerificationErrorKind, SpiffeId, TrustDomain,
};
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

/// One DER certificate, decoded.
pub fn decode(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut uri_sans = Vec::new();
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uri_sans.push((*u).to_owned()),
                GeneralName::DNSName(d) => dns_sans.push((*d).to_owned()),
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: serial_hex(cert.raw_serial()),
        not_before: rfc3339(cert.validity().not_before.timestamp()),
        not_after: rfc3339(not_after),
        seconds_left: not_after - contract::time::unix_now(),
        key_type: key_type(cert.public_key()),
        is_ca: cert.is_ca(),
        uri_sans,
        dns_sans,
    })
}

/// A serial as the rest of the lab writes it (OpenSSL's `BN_bn2hex`): upper-case hex, two digits
/// a byte, without the leading zero byte DER adds when the high bit is set.
pub fn serial_hex(der: &[u8]) -> String {
    let first = der.iter().position(|&b| b != 0).unwrap_or(der.len());
    if first == der.len() {
        return "0".into();
    }
    der[first..].iter().map(|b| format!("{b:02X}")).collect()
}

fn rfc3339(unix: i64) -> String {
    contract::time::rfc3339(unix)
}

fn key_type(spki: &SubjectPublicKeyInfo) -> String {
    match spki.parsed() {
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                })
                .unwrap_or_else(|| format!("{} bits", point.key_size()));
            format!("EC {curve}")
        }
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(PublicKey::Unknown(_)) | Ok(_) => spki.algorithm.algorithm.to_id_string(),
        Err(e) => format!("unreadable ({e})"),
    }
}

/// One X.509 authority as a JWK of the SPIFFE bundle format (`use: x509-svid`, `x5c`).
fn x509_jwk(der: &[u8]) -> Result<Value, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut jwk = match cert.public_key().parsed().map_err(|e| e.to_string())? {
        PublicKey::EC(point) => {
            // An uncompressed point: 0x04, then X and Y of equal length.
            let raw = point.data();
            let n = (raw.len().saturating_sub(1)) / 2;
            let crv = match n {
                32 => "P-256",
                48 => "P-384",
                _ => "P-521",
            };
            json!({"kty": "EC", "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..1 + n]),
                "y": URL_SAFE_NO_PAD.encode(&raw[1 + n..])})
        }
        PublicKey::RSA(rsa) => json!({"kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(trim_zeros(rsa.modulus)),
            "e": URL_SAFE_NO_PAD.encode(trim_zeros(rsa.exponent))}),
        _ => return Err("a key type the SPIFFE bundle format has no JWK for".into()),
    };
    jwk["use"] = json!("x509-svid");
    jwk["x5c"] = json!([STANDARD.encode(der)]);
    Ok(jwk)
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// The trust domain's bundle in SPIFFE bundle format: one JWK Set of both kinds of authority.
pub fn spiffe_bundle(x509_authorities: &[&[u8]], jwt_authorities: &[&[u8]]) -> Value {
    let mut keys: Vec<Value> = x509_authorities
        .iter()
        .filter_map(|der| x509_jwk(der).ok())
        .collect();
    for jwk in jwt_authorities {
        if let Ok(mut v) = serde_json::from_slice::<Value>(jwk) {
            v["use"] = json!("jwt-svid");
            keys.push(v);
        }
    }
    json!({ "keys": keys })
}

/// Decodes a JWT's header and claims without trusting them (for showing a minted token).
pub fn jwt_parts(token: &str) -> Result<(Value, Value), String> {
    let mut parts = token.split('.');
    let mut part = |name: &str| -> Result<Value, String> {
        let raw = parts.next().ok_or_else(|| format!("no {name}"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(raw)
            .map_err(|e| format!("{name} is not base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{name} is not JSON: {e}"))
    };
    Ok((part("header")?, part("claims")?))
}

fn invalid(problem: Problem, reason: impl Into<String>, expires_at: Option<i64>) -> Validation {
    Validation {
        valid: false,
        spiffe_id: None,
        problem: Some(problem),
        reason: Some(reason.into()),
        expires_at,
    }
}

/// A posted JWT-SVID checked as a relying party would: signature against the JWT bundle of its
/// trust domain, audience, expiry.
pub fn validate_jwt<B>(token: &str, audience: &str, bundles: &B) -> Validation
where
    B: BundleSource<Item = spiffe::JwtBundle>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let token = token.trim();
    let untrusted = JwtSvid::parse_insecure(token).ok();
    let expires_at = untrusted.as_ref().map(|t| t.claims().exp());
    let sub = untrusted.as_ref().map(|t| t.spiffe_id().to_string());
    match JwtSvid::parse_and_validate(token, bundles, &[audience]) {
        Ok(svid) => Validation {
            valid: true,
            spiffe_id: Some(svid.spiffe_id().to_string()),
            problem: None,
            reason: None,
            expires_at: Some(svid.claims().exp()),
        },
        Err(e) => {
            let (problem, reason) = explain_jwt(&e, audience, untrusted.as_ref());
            let mut v = invalid(problem, reason, expires_at);
            v.spiffe_id = sub;
            v
        }
    }
}

fn explain_jwt(e: &JwtSvidError, audience: &str, token: Option<&JwtSvid>) -> (Problem, String) {
    let aud = || token.map(|t| t.audience().join(", ")).unwrap_or_default();
    match e {
        JwtSvidError::InvalidToken(v) => match v.kind() {
            JwtVerificationErrorKind::Expired => (Problem::Expired, expired_reason(token)),
            JwtVerificationErrorKind::NotYetValid => {
                (Problem::NotYetValid, "the token is not valid yet (nbf)".into())
            }
            JwtVerificationErrorKind::AudienceMismatch => (
                Problem::WrongAudience,
                format!("the token is for audience [{}], not for \"{audience}\"", aud()),
            ),
            JwtVerificationErrorKind::InvalidSignature => (
                Problem::BadSignature,
                "the signature does not verify with the trust domain's JWT authority named by its key ID: the token was altered or signed by another key".into(),
            ),
            _ => (Problem::Refused, format!("refused: {v}")),
        },
        JwtSvidError::InvalidAudience(..) => (
            Problem::WrongAudience,
            format!("the token is for audience [{}], not for \"{audience}\"", aud()),
        ),
        JwtSvidError::BundleNotFound(td) => (
            Problem::ForeignTrustDomain,
            format!("no JWT bundle for trust domain \"{td}\": the ledger trusts only {}", contract::TRUST_DOMAIN),
        ),
        JwtSvidError::AuthorityNotFound(kid) => (
            Problem::UnknownAuthority,
            format!("signed with key ID \"{kid}\", which the trust domain's JWT bundle does not hold"),
        ),
        JwtSvidError::InvalidVerificationTime | JwtSvidError::InvalidExpiration
            if token.is_some_and(|t| t.claims().exp() < contract::time::unix_now()) =>
        {
            (Problem::Expired, expired_reason(token))
        }
        JwtSvidError::InvalidJwtFormat
        | JwtSvidError::InvalidBase64
        | JwtSvidError::InvalidJson(_)
        | JwtSvidError::InvalidJoseHeader(_)
        | JwtSvidError::InvalidSubject(_)
        | JwtSvidError::MissingKeyId
        | JwtSvidError::InvalidTyp
        | JwtSvidError::UnsupportedAlgorithm
        | JwtSvidError::InvalidExpiration => {
            (Problem::Malformed, format!("not a JWT-SVID: {}", crate::identity::error_chain(e)))
        }
        other => (Problem::Refused, format!("refused: {}", crate::identity::error_chain(other))),
    }
}

fn expired_reason(token: Option<&JwtSvid>) -> String {
    match token {
        Some(t) => format!(
            "the token expired {} s ago (exp {})",
            contract::time::unix_now() - t.claims().exp(),
            rfc3339(t.claims().exp())
        ),
        None => "the token has expired".into(),
    }
}

/// A posted PEM chain (leaf first) checked against the X.509 bundle of the leaf's trust domain,
/// as a server checks a client: chain, validity, and one SPIFFE ID in the leaf.
pub fn validate_x509<F>(pem: &str, bundle_for: F) -> Validation
where
    F: Fn(&TrustDomain) -> Option<Vec<Vec<u8>>>,
{
    let ders: Vec<CertificateDer<'static>> =
        match rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<Vec<_>, _>>() {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return invalid(Problem::Malformed, "no PEM certificate found", None),
            Err(e) => return invalid(Problem::Malformed, format!("not PEM: {e}"), None),
        };
    let leaf = match decode(&ders[0]) {
        Ok(l) => l,
        Err(e) => return invalid(Problem::Malformed, format!("the leaf: {e}"), None),
    };
    let expires_at = contract::time::parse_rfc3339(&leaf.not_after);
    let id = match leaf.uri_sans.as_slice() {
        [one] => match SpiffeId::new(one) {
            Ok(id) => id,
            Err(e) => {
                return invalid(
                    Problem::Malformed,
                    format!("the leaf's URI SAN \"{one}\" is not a SPIFFE ID: {e}"),
                    expires_at,
                );
            }
        },
        [] => {
            return invalid(
                Problem::Malformed,
                "the leaf has no URI SAN, so no SPIFFE ID",
                expires_at,
            );
        }
        many => {
            return invalid(
                Problem::Malformed,
                format!(
                    "the leaf has {} URI SANs; an X.509-SVID has exactly one",
                    many.len()
                ),
                expires_at,
            );
        }
    };
    let mut v = check_chain(&ders, id.trust_domain(), &bundle_for, &leaf);
    v.spiffe_id = Some(id.to_string());
    v.expires_at = expires_at;
    v
}

fn check_chain<F>(
    ders: &[CertificateDer<'static>],
    td: &TrustDomain,
    bundle_for: &F,
    leaf: &CertInfo,
) -> Validation
where
    F: Fn(&TrustDomain) -> Option<Vec<Vec<u8>>>,
{
    let Some(authorities) = bundle_for(td) else {
        return invalid(
            Problem::ForeignTrustDomain,
            format!(
                "no X.509 bundle for trust domain \"{td}\": the ledger trusts only {}",
                contract::TRUST_DOMAIN
            ),
            None,
        );
    };
    let mut roots = rustls::RootCertStore::empty();
    for a in authorities {
        let _ = roots.add(CertificateDer::from(a));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        match rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
            .build()
        {
            Ok(v) => v,
            Err(e) => {
                return invalid(
                    Problem::Refused,
                    format!("the bundle cannot verify: {e}"),
                    None,
                );
            }
        };
    match verifier.verify_client_cert(&ders[0], &ders[1..], UnixTime::now()) {
        Ok(_) => Validation {
            valid: true,
            spiffe_id: None,
            problem: None,
            reason: None,
            expires_at: None,
        },
        Err(rustls::Error::InvalidCertificate(e)) => {
            use rustls::CertificateError as C;
            let (problem, reason) = match e {
                C::Expired | C::ExpiredContext { .. } => (
                    Problem::Expired,
                    format!(
                        "the leaf expired {} s ago ({})",
                        -leaf.seconds_left, leaf.not_after
                    ),
                ),
                C::NotValidYet | C::NotValidYetContext { .. } => (
                    Problem::NotYetValid,
                    format!("the leaf is not valid before {}", leaf.not_before),
                ),
                C::UnknownIssuer => (
                    Problem::UnknownAuthority,
                    format!(
                        "the chain does not lead to any CA in the trust bundle of {td} (issuer: {})",
                        leaf.issuer
                    ),
                ),
                C::BadSignature => (
                    Problem::BadSignature,
                    "a signature in the chain does not verify: the certificate was altered".into(),
                ),
                other => (Problem::Refused, format!("refused: {other:?}")),
            };
            invalid(problem, reason, None)
        }
        Err(e) => invalid(Problem::Refused, format!("refused: {e}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_read_as_openssl_writes_them() {
        assert_eq!(serial_hex(&[0x00, 0xAD, 0x7A]), "AD7A");
        assert_eq!(serial_hex(&[0x0A, 0xBC]), "0ABC");
        assert_eq!(serial_hex(&[0x00]), "0");
    }

    #[test]
    fn malformed_inputs_say_why() {
        let v = validate_x509("hello", |_| None);
        assert_eq!(v.problem, Some(Problem::Malformed));
        assert!(!v.valid);
        assert!(jwt_parts("a.b").is_err());
    }
}
