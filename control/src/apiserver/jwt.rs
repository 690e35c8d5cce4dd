//! JSON Web Tokens (RFC 7519) signed with ES256: ECDSA on P-256 with SHA-256 (RFC 7518
//! §3.4), the format of ServiceAccount tokens.
//!
//! Kubernetes signs its tokens with RS256 or ES256 depending on the key it is given; ring
//! (through rcgen) can generate P-256 keys but not RSA ones, so ours are ES256. Signing
//! goes through rcgen's key pair and verification through the signature algorithms of
//! rustls' ring provider, the two crypto entry points this crate already has. Both speak
//! ASN.1 DER signatures, while JWS carries `r || s` as two fixed 32-byte integers, hence
//! the small conversions at the bottom.
//!
//! The key lives in a PKCS#8 PEM file (`<data-dir>/pki/sa.key` unless
//! `--service-account-signing-key-file` names another), created on first start with
//! create-if-absent semantics so that two control planes pointed at one file agree on it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{KeyPair, PublicKeyData as _, SigningKey as _};
use rustls::pki_types::{alg_id, SignatureVerificationAlgorithm};
use serde_json::{json, Value};

/// The JWS algorithm of every token signed here.
pub const ALGORITHM: &str = "ES256";

/// Length of one ECDSA P-256 integer (r or s) in a JWS signature.
const SCALAR_LEN: usize = 32;

/// Why a key could not be loaded or a token not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The key file could not be read or written.
    #[error("i/o error on the service account key {path}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold a PKCS#8 P-256 private key.
    #[error("{path} does not hold a PKCS#8 PEM P-256 private key: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating a key or a signature failed.
    #[error("signing failed")]
    Crypto(#[from] rcgen::Error),
    /// The token is not a compact JWS of three base64url parts with JSON inside.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The token's header names an algorithm other than ES256 (or none at all).
    #[error("unsupported signing algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify with our key.
    #[error("invalid token signature")]
    BadSignature,
}

/// The ServiceAccount signing key: signs tokens and verifies the ones it signed.
pub struct SigningKey {
    key: KeyPair,
    /// `kid` of every token signed: base64url of the key's SHA-256 key identifier, so
    /// verifiers holding several keys can tell which one signed a token.
    key_id: String,
    /// ring's ECDSA P-256/SHA-256 verifier, taken from the rustls provider.
    verifier: &'static dyn SignatureVerificationAlgorithm,
}

impl std::fmt::Debug for SigningKey {
    // The private key stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random P-256 key (not stored anywhere).
    pub fn generate() -> Result<SigningKey, JwtError> {
        let key = KeyPair::generate()?;
        Self::from_key_pair(key).map_err(|reason| JwtError::BadKey {
            path: PathBuf::new(),
            reason,
        })
    }

    /// Loads the key from `path`, or creates it there when the file does not exist.
    ///
    /// Creation is create-if-absent (a hard link of a complete temporary file), so when
    /// two processes start at once both end up with the same key.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, JwtError> {
        let io = |source| JwtError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => return Self::from_pem(&pem, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let key = KeyPair::generate()?;
        let tmp = temporary_sibling(path);
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(key.serialize_pem().as_bytes())?;
            file.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created the service account signing key");
                Self::from_key_pair(key).map_err(|reason| JwtError::BadKey {
                    path: path.to_path_buf(),
                    reason,
                })
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let pem = std::fs::read_to_string(path).map_err(io)?;
                Self::from_pem(&pem, path)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Parses a PKCS#8 PEM P-256 private key; `path` only names it in errors.
    pub fn from_pem(pem: &str, path: &Path) -> Result<SigningKey, JwtError> {
        let bad = |reason: String| JwtError::BadKey {
            path: path.to_path_buf(),
            reason,
        };
        let key = KeyPair::from_pem(pem).map_err(|e| bad(e.to_string()))?;
        Self::from_key_pair(key).map_err(bad)
    }

    fn from_key_pair(key: KeyPair) -> Result<SigningKey, String> {
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("the key is not an ECDSA P-256 key".to_string());
        }
        let verifier = rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all
            .iter()
            .copied()
            .find(|alg| {
                alg.public_key_alg_id() == alg_id::ECDSA_P256
                    && alg.signature_alg_id() == alg_id::ECDSA_SHA256
            })
            .ok_or_else(|| "the crypto provider has no ECDSA P-256 verifier".to_string())?;
        let key_id = rcgen::CertificateParams::default().key_identifier(&key);
        Ok(SigningKey {
            key_id: b64(&key_id),
            key,
            verifier,
        })
    }

    /// The `kid` header of tokens signed with this key.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public key as PEM (`PUBLIC KEY`, SubjectPublicKeyInfo), what Kubernetes'
    /// `--service-account-key-file` takes.
    pub fn public_key_pem(&self) -> String {
        self.key.public_key_pem()
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        let header = json!({"alg": ALGORITHM, "kid": self.key_id});
        let mut token = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let der = self.key.sign(token.as_bytes())?;
        let raw = der_signature_to_raw(&der).ok_or(JwtError::BadSignature)?;
        token.push('.');
        token.push_str(&b64(&raw));
        Ok(token)
    }

    /// Checks the token's signature and returns its claims. Times, issuer and audience
    /// are the caller's business.
    pub fn verify(&self, token: &str) -> Result<Value, JwtError> {
        let parts = split(token)?;
        let header = parts.header()?;
        match header.get("alg").and_then(Value::as_str) {
            Some(ALGORITHM) => {}
            other => {
                return Err(JwtError::UnsupportedAlgorithm(
                    other.unwrap_or("").to_string(),
                ))
            }
        }
        let raw = unb64(parts.signature)?;
        let der = raw_signature_to_der(&raw).ok_or(JwtError::BadSignature)?;
        self.verifier
            .verify_signature(self.key.der_bytes(), parts.signed.as_bytes(), &der)
            .map_err(|_| JwtError::BadSignature)?;
        parts.claims()
    }
}

/// The claims of a compact JWS, unverified: for choosing who should verify a token (by
/// its issuer) before doing so. `None` when it is not a JWT at all.
pub fn unverified_claims(token: &str) -> Option<Value> {
    split(token).ok()?.claims().ok()
}

/// A compact JWS cut into its parts.
struct Parts<'a> {
    /// `header.payload`, the signed text.
    signed: &'a str,
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, JwtError> {
    let mut it = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };
    Ok(Parts {
        signed: &token[..header.len() + 1 + payload.len()],
        header,
        payload,
        signature,
    })
}

impl Parts<'_> {
    fn header(&self) -> Result<Value, JwtError> {
        json_object(&unb64(self.header)?, "the header is not a JSON object")
    }

    fn claims(&self) -> Result<Value, JwtError> {
        json_object(&unb64(self.payload)?, "the payload is not a JSON object")
    }
}

fn json_object(bytes: &[u8], what: &'static str) -> Result<Value, JwtError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(JwtError::Malformed(what)),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JwtError::Malformed("a part is not base64url"))
}

fn temporary_sibling(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    path.with_file_name(name)
}

/// `SEQUENCE { INTEGER r, INTEGER s }` → `r || s`, each left-padded to 32 bytes.
fn der_signature_to_raw(der: &[u8]) -> Option<Vec<u8>> {
    let body = der_element(der, 0x30)?.0;
    let (r, rest) = der_element(body, 0x02)?;
    let (s, rest) = der_element(rest, 0x02)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(2 * SCALAR_LEN);
    for int in [r, s] {
        let digits = strip_leading_zeros(int);
        if digits.len() > SCALAR_LEN {
            return None;
        }
        out.extend(std::iter::repeat_n(0, SCALAR_LEN - digits.len()));
        out.extend_from_slice(digits);
    }
    Some(out)
}

/// `r || s` → `SEQUENCE { INTEGER r, INTEGER s }` (minimal DER integers).
fn raw_signature_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 2 * SCALAR_LEN {
        return None;
    }
    let mut body = Vec::with_capacity(2 * (SCALAR_LEN + 3));
    for int in raw.chunks(SCALAR_LEN) {
        let digits = strip_leading_zeros(int);
        let digits = if digits.is_empty() {
            &[0u8][..]
        } else {
            digits
        };
        // A set high bit would read as negative: DER needs a zero byte in front.
        let pad = digits[0] & 0x80 != 0;
        body.push(0x02);
        body.push((digits.len() + usize::from(pad)) as u8);
        if pad {
            body.push(0);
        }
        body.extend_from_slice(digits);
    }
    // At most 2 × 35 bytes: the short length form always fits.
    let mut der = vec![0x30, body.len() as u8];
    der.extend(body);
    Some(der)
}

fn strip_leading_zeros(int: &[u8]) -> &[u8] {
    let first = int.iter().position(|&b| b != 0).unwrap_or(int.len());
    &int[first..]
}

/// One DER element with the short length form (all that ECDSA P-256 signatures use):
/// its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    let (&len, rest) = rest.split_first()?;
    if t != tag || len & 0x80 != 0 || rest.len() < len as usize {
        return None;
    }
    Some(rest.split_at(len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Value {
        json!({"iss": "https://example", "sub": "system:serviceaccount:ns:sa", "exp": 42})
    }

    #[test]
    fn signed_token_verifies_and_returns_claims() {
        let key = SigningKey::generate().expect("key");
        let token = key.sign(&claims()).expect("sign");
        assert_eq!(token.split('.').count(), 3);
        assert_eq!(key.verify(&token).expect("verify"), claims());
        assert_eq!(unverified_claims(&token), Some(claims()));
        let header = split(&token).expect("parts").header().expect("header");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.key_id());
    }

    #[test]
    fn tampered_payload_or_signature_is_rejected() {
        let key = SigningKey::generate().expect("key");
        let token = key.sign(&claims()).expect("sign");
        let parts: Vec<&str> = token.split('.').collect();

        let mut forged_claims = claims();
        forged_claims["sub"] = json!("system:serviceaccount:kube-system:admin");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(forged_claims.to_string().as_bytes()),
            parts[2]
        );
        assert!(matches!(key.verify(&forged), Err(JwtError::BadSignature)));

        let mut sig = unb64(parts[2]).expect("sig");
        sig[10] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
        assert!(matches!(key.verify(&flipped), Err(JwtError::BadSignature)));
    }

    #[test]
    fn another_key_does_not_verify() {
        let ours = SigningKey::generate().expect("key");
        let theirs = SigningKey::generate().expect("key");
        let token = theirs.sign(&claims()).expect("sign");
        assert!(matches!(ours.verify(&token), Err(JwtError::BadSignature)));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let key = SigningKey::generate().expect("key");
        let payload = b64(claims().to_string().as_bytes());
        for alg in ["none", "HS256", "RS256"] {
            let header = b64(json!({"alg": alg}).to_string().as_bytes());
            let token = format!("{header}.{payload}.");
            assert!(
                matches!(key.verify(&token), Err(JwtError::UnsupportedAlgorithm(a)) if a == alg),
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let key = SigningKey::generate().expect("key");
        for bad in ["", "abc", "a.b", "a.b.c.d", "!!.??.**", "e30.e30"] {
            assert!(
                matches!(key.verify(bad), Err(JwtError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(unverified_claims("not-a-jwt"), None);
        // Valid base64 of a non-object payload.
        let token = format!("{}.{}.x", b64(b"{}"), b64(b"[1]"));
        assert_eq!(unverified_claims(&token), None);
    }

    #[test]
    fn signature_conversions_round_trip() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // high bit: DER needs padding
        raw[40] = 0x01; // s with leading zeros: DER strips them
        raw[63] = 0xff;
        let der = raw_signature_to_der(&raw).expect("der");
        assert_eq!(der[0], 0x30);
        assert_eq!(der_signature_to_raw(&der).expect("raw"), raw);
        // Zero r and s survive too.
        let zero = vec![0u8; 64];
        assert_eq!(
            der_signature_to_raw(&raw_signature_to_der(&zero).expect("der")).expect("raw"),
            zero
        );
        assert_eq!(raw_signature_to_der(&[0u8; 63]), None);
        assert_eq!(der_signature_to_raw(&[0x30, 0x02, 0x02, 0x00]), None);
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("pki").join("sa.key");
        let first = SigningKey::load_or_create(&path).expect("create");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let second = SigningKey::load_or_create(&path).expect("reload");
        assert_eq!(first.key_id(), second.key_id());
        let token = first.sign(&claims()).expect("sign");
        assert_eq!(second.verify(&token).expect("verify"), claims());
        assert!(second.public_key_pem().contains("PUBLIC KEY"));
        // No temporary files are left behind.
        let entries = std::fs::read_dir(tmp.path().join("pki"))
            .expect("dir")
            .count();
        assert_eq!(entries, 1);
    }

    #[test]
    fn unusable_key_files_are_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("sa.key");
        std::fs::write(&path, "not a key").expect("write");
        assert!(matches!(
            SigningKey::load_or_create(&path),
            Err(JwtError::BadKey { .. })
        ));
        let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key");
        std::fs::write(&path, ed25519.serialize_pem()).expect("write");
        let err = SigningKey::load_or_create(&path).expect_err("not P-256");
        assert!(err.to_string().contains("P-256"), "{err}");
    }
}
