//! The cluster CA, the API server's serving certificate and client certificates.
//!
//! Everything lives in one directory (the server uses `<data-dir>/pki`):
//!
//! | file             | what                                              | mode |
//! |------------------|---------------------------------------------------|------|
//! | `ca.crt`         | the self-signed cluster CA (CN `wasmkube-ca`)     | 0644 |
//! | `ca.key`         | its private key                                   | 0600 |
//! | `apiserver.crt`  | the serving certificate, signed by the CA         | 0644 |
//! | `apiserver.key`  | its private key                                   | 0600 |
//!
//! The CA is created once and reused forever after: every kubeconfig and node trusts it.
//! The serving certificate is cheap to replace, so it is re-issued whenever it no longer
//! covers an address or name the server should answer to (a new `--tls-san`, a new
//! interface address), is close to expiry, or was not issued by the current CA.
//!
//! Client certificates carry the user in the subject's CN and the groups in its O
//! attributes, which is how Kubernetes reads them. rcgen can put only one value of a
//! kind in a name, so for the groups the subject is rewritten in the DER rcgen produces
//! and the certificate re-signed with the CA key (see [`Pki::issue_client_cert`]).

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SigningKey,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The CA's subject common name.
pub const CA_COMMON_NAME: &str = "wasmkube-ca";
/// The serving certificate's subject common name (as kube-apiserver's).
const SERVING_COMMON_NAME: &str = "kube-apiserver";

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const SERVING_CERT_FILE: &str = "apiserver.crt";
const SERVING_KEY_FILE: &str = "apiserver.key";

/// The CA outlives many serving certificates; replacing it means redistributing trust.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Serving and client certificates follow kubeadm's one year.
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// A serving certificate with less than this left is re-issued on start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Backdating tolerates clients whose clocks are slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory of the PKI could not be read or written.
    #[error("i/o error on {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold the PEM data expected.
    #[error("{path} does not contain a valid {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was expected in it ("certificate", "private key").
        what: &'static str,
    },
    /// A private key file could not be parsed.
    #[error("cannot parse the private key in {path}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why rcgen rejected it.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate could not be parsed as X.509.
    #[error("cannot parse the certificate in {path}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// `ca.crt` exists but `ca.key` does not, so nothing can be signed.
    #[error("the CA certificate exists but its key {path} is missing")]
    MissingCaKey {
        /// The missing key file.
        path: PathBuf,
    },
    /// `ca.key` is not the key of `ca.crt`.
    #[error("the CA key {key} does not belong to the certificate {cert}")]
    CaKeyMismatch {
        /// The CA certificate.
        cert: PathBuf,
        /// The CA key.
        key: PathBuf,
    },
    /// `ca.crt` was not made by wasmkube, so certificates issued here would not chain to it.
    #[error("the CA certificate {path} was not created by wasmkube (subject must be CN={CA_COMMON_NAME})")]
    ForeignCa {
        /// The CA certificate.
        path: PathBuf,
    },
    /// An extra subject alternative name is neither an IP address nor a DNS name.
    #[error("invalid subject alternative name {san:?}: {reason}")]
    InvalidSan {
        /// The name as given.
        san: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A client certificate's user or group name is unusable.
    #[error("invalid client certificate subject: {0}")]
    InvalidSubject(&'static str),
    /// Generating a key or certificate failed.
    #[error("certificate generation failed")]
    Generate(#[from] rcgen::Error),
    /// A certificate rcgen produced did not have the expected DER structure.
    #[error("unexpected certificate encoding: {0}")]
    Encoding(&'static str),
    /// rustls refused the certificate or key.
    #[error("tls configuration failed")]
    Tls(#[from] rustls::Error),
    /// rustls refused to build the client certificate verifier.
    #[error("client certificate verifier configuration failed")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
}

/// A subject alternative name the serving certificate should carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum San {
    Ip(IpAddr),
    /// Lowercased: DNS names compare case-insensitively.
    Dns(String),
}

impl San {
    fn to_rcgen(&self) -> Result<SanType, PkiError> {
        Ok(match self {
            San::Ip(ip) => SanType::IpAddress(*ip),
            San::Dns(name) => SanType::DnsName(name.clone().try_into()?),
        })
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Ip(ip) => ip.fmt(f),
            San::Dns(name) => f.write_str(name),
        }
    }
}

/// The cluster PKI: the CA (able to sign) and the API server's serving certificate.
pub struct Pki {
    dir: PathBuf,
    ca_cert_pem: String,
    ca_cert_der: CertificateDer<'static>,
    /// The CA's name, key identifier and signing key, for issuing certificates.
    ca: Issuer<'static, KeyPair>,
    serving_cert_der: CertificateDer<'static>,
    serving_key_der: PrivatePkcs8KeyDer<'static>,
}

impl fmt::Debug for Pki {
    // Keys stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// Loads the PKI from `dir`, creating whatever is missing.
    ///
    /// The serving certificate covers 127.0.0.1, ::1, localhost, the host name, every
    /// interface address and each of `extra_sans` (an IP address if it parses as one,
    /// else a DNS name); it is re-issued when any of these is missing from it.
    pub fn load_or_create(dir: &Path, extra_sans: &[String]) -> Result<Pki, PkiError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| io_error(dir, source))?;
        let wanted = wanted_sans(extra_sans)?;

        let (ca_cert_pem, ca_cert_der, ca) = load_or_create_ca(dir)?;
        let ca_subject = subject_raw(&ca_cert_der, &dir.join(CA_CERT_FILE))?;
        let ca_key_id = ca_params().key_identifier(ca.key());

        let cert_path = dir.join(SERVING_CERT_FILE);
        let key_path = dir.join(SERVING_KEY_FILE);
        let (serving_cert_der, serving_key_der) = match reusable_serving_cert(
            &cert_path,
            &key_path,
            &ca_subject,
            &ca_key_id,
            &wanted,
        )? {
            Ok(existing) => existing,
            Err(reason) => {
                tracing::info!(path = %cert_path.display(), reason, "issuing the serving certificate");
                issue_serving_cert(&ca, &wanted, &cert_path, &key_path)?
            }
        };

        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            ca_cert_der,
            ca,
            serving_cert_der,
            serving_key_der,
        })
    }

    /// The CA certificate, PEM-encoded (for kubeconfigs and nodes).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The CA certificate, DER-encoded.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert_der
    }

    /// The directory holding the PKI files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the CA certificate is stored.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Where the serving certificate is stored.
    pub fn serving_cert_path(&self) -> PathBuf {
        self.dir.join(SERVING_CERT_FILE)
    }

    /// Where the serving certificate's key is stored.
    pub fn serving_key_path(&self) -> PathBuf {
        self.dir.join(SERVING_KEY_FILE)
    }

    /// Issues a TLS client certificate for user `common_name` in the groups
    /// `organizations`; returns (certificate PEM, PKCS#8 key PEM).
    pub fn issue_client_cert(
        &self,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<(String, String), PkiError> {
        if common_name.is_empty() {
            return Err(PkiError::InvalidSubject("the user name is empty"));
        }
        if organizations.iter().any(|o| o.is_empty()) {
            return Err(PkiError::InvalidSubject("a group name is empty"));
        }
        let key = KeyPair::generate()?;
        let mut params = leaf_params(LEAF_VALIDITY);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca)?;
        let der = if organizations.is_empty() {
            cert.der().to_vec()
        } else {
            let subject = encode_subject(common_name, organizations);
            replace_subject_and_resign(cert.der(), &subject, self.ca.key())?
        };
        tracing::info!(user = common_name, groups = ?organizations, "issued a client certificate");
        Ok((pem_encode("CERTIFICATE", &der), key.serialize_pem()))
    }

    /// Issues a TLS serving certificate for a node agent, valid for `names` (IP
    /// addresses or DNS names); returns (certificate PEM, PKCS#8 key PEM).
    pub fn issue_node_serving_cert(
        &self,
        node_name: &str,
        names: &[String],
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = leaf_params(LEAF_VALIDITY);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("system:node:{node_name}"));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let sans: BTreeSet<San> = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => San::Ip(ip),
                Err(_) => San::Dns(n.clone()),
            })
            .collect();
        params.subject_alt_names = sans.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
        let cert = params.signed_by(&key, &self.ca)?;
        tracing::info!(node = node_name, sans = ?names, "issued a node serving certificate");
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A rustls server configuration presenting the serving certificate, offering
    /// `h2` and `http/1.1`, and accepting clients with or without a certificate; a
    /// certificate that is presented must chain to the cluster CA.
    pub fn server_tls_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_cert_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![self.serving_cert_der.clone()],
                PrivateKeyDer::Pkcs8(self.serving_key_der.clone_key()),
            )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// The CA's parameters. Also used when reloading the CA: the issuer name written into
/// new certificates comes from here, so it must match what `ca.crt` says.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Parameters shared by every certificate the CA signs.
fn leaf_params(validity: Duration) -> CertificateParams {
    let now = SystemTime::now();
    let mut params = CertificateParams::default();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + validity).into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    params
}

/// A random positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped by DER's minimal integer encoding.
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn load_or_create_ca(
    dir: &Path,
) -> Result<(String, CertificateDer<'static>, Issuer<'static, KeyPair>), PkiError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match read_optional(&cert_path)? {
        Some(cert_pem) => {
            let Some(key_pem) = read_optional(&key_path)? else {
                return Err(PkiError::MissingCaKey { path: key_path });
            };
            let cert_der = parse_cert_pem(&cert_pem, &cert_path)?;
            let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::BadKey {
                path: key_path.clone(),
                source,
            })?;
            let (_, cert) = parse_x509(&cert_der, &cert_path)?;
            if cert.public_key().raw != key.subject_public_key_info().as_slice() {
                return Err(PkiError::CaKeyMismatch {
                    cert: cert_path,
                    key: key_path,
                });
            }
            // Certificates name their issuer with the bytes of `ca_params()`'s subject,
            // so only a CA with exactly that subject can be reused.
            let ours = cert.subject().as_raw() == encode_subject(CA_COMMON_NAME, &[]).as_slice();
            if !ours {
                return Err(PkiError::ForeignCa { path: cert_path });
            }
            tracing::debug!(path = %cert_path.display(), "reusing the cluster CA");
            Ok((cert_pem, cert_der, Issuer::new(ca_params(), key)))
        }
        None => {
            let key = KeyPair::generate()?;
            let mut params = ca_params();
            let now = SystemTime::now();
            params.not_before = (now - BACKDATE).into();
            params.not_after = (now + CA_VALIDITY).into();
            params.serial_number = Some(random_serial());
            let cert = params.self_signed(&key)?;
            // Key first: a crash in between leaves no ca.crt, so the next start
            // simply creates a new CA.
            write_file_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600)
                .map_err(|source| io_error(&key_path, source))?;
            let cert_pem = cert.pem();
            write_file_atomically(&cert_path, cert_pem.as_bytes(), 0o644)
                .map_err(|source| io_error(&cert_path, source))?;
            tracing::info!(path = %cert_path.display(), "created the cluster CA");
            Ok((cert_pem, cert.der().clone(), Issuer::new(ca_params(), key)))
        }
    }
}

/// The existing serving certificate and key if they can be kept, else why not.
#[allow(clippy::type_complexity)]
fn reusable_serving_cert(
    cert_path: &Path,
    key_path: &Path,
    ca_subject: &[u8],
    ca_key_id: &[u8],
    wanted: &BTreeSet<San>,
) -> Result<Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), &'static str>, PkiError>
{
    let (Some(cert_pem), Some(key_pem)) = (read_optional(cert_path)?, read_optional(key_path)?)
    else {
        return Ok(Err("missing"));
    };
    let Ok(cert_der) = parse_cert_pem(&cert_pem, cert_path) else {
        return Ok(Err("unreadable certificate"));
    };
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return Ok(Err("unreadable key"));
    };
    let Ok((_, cert)) = X509Certificate::from_der(&cert_der) else {
        return Ok(Err("unparsable certificate"));
    };
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Ok(Err("key does not match certificate"));
    }
    if cert.issuer().as_raw() != ca_subject || authority_key_id(&cert) != Some(ca_key_id) {
        return Ok(Err("not issued by the current CA"));
    }
    let now = unix_now();
    let not_after = cert.validity().not_after.timestamp();
    if not_after < now.saturating_add(RENEW_BEFORE.as_secs() as i64) {
        return Ok(Err("expires soon"));
    }
    let present = cert_sans(&cert);
    if let Some(missing) = wanted.iter().find(|san| !present.contains(san)) {
        tracing::info!(san = %missing, "serving certificate lacks a wanted name");
        return Ok(Err("a wanted subject alternative name is missing"));
    }
    let key_der = PrivatePkcs8KeyDer::from(key.serialize_der());
    Ok(Ok((CertificateDer::from(cert_der.to_vec()), key_der)))
}

fn issue_serving_cert(
    ca: &Issuer<'static, KeyPair>,
    wanted: &BTreeSet<San>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = leaf_params(LEAF_VALIDITY);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, SERVING_COMMON_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.subject_alt_names = wanted.iter().map(San::to_rcgen).collect::<Result<_, _>>()?;
    let cert = params.signed_by(&key, ca)?;
    write_file_atomically(key_path, key.serialize_pem().as_bytes(), 0o600)
        .map_err(|source| io_error(key_path, source))?;
    write_file_atomically(cert_path, cert.pem().as_bytes(), 0o644)
        .map_err(|source| io_error(cert_path, source))?;
    tracing::info!(
        path = %cert_path.display(),
        sans = %wanted.iter().map(San::to_string).collect::<Vec<_>>().join(","),
        "issued the serving certificate"
    );
    Ok((
        cert.der().clone(),
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    ))
}

/// Every name the serving certificate must carry.
fn wanted_sans(extra_sans: &[String]) -> Result<BTreeSet<San>, PkiError> {
    let mut sans = BTreeSet::from([
        San::Ip(IpAddr::from([127, 0, 0, 1])),
        San::Ip(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        San::Dns("localhost".to_string()),
    ]);
    if let Some(host) = host_name() {
        sans.insert(San::Dns(host));
    }
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => sans.extend(interfaces.iter().map(|i| San::Ip(i.ip()))),
        Err(error) => {
            tracing::warn!(%error, "cannot list interface addresses for the serving certificate")
        }
    }
    for extra in extra_sans {
        sans.insert(parse_san(extra)?);
    }
    Ok(sans)
}

fn parse_san(raw: &str) -> Result<San, PkiError> {
    let trimmed = raw.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(San::Ip(ip));
    }
    let invalid = |reason| PkiError::InvalidSan {
        san: raw.to_string(),
        reason,
    };
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    if trimmed.len() > 253 {
        return Err(invalid("longer than 253 characters"));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut labels = trimmed.split('.');
    // A wildcard is allowed as the whole leftmost label only.
    let first_ok = labels.next().is_some_and(|l| l == "*" || valid_label(l));
    if !first_ok || !labels.all(valid_label) {
        return Err(invalid("not an IP address or a DNS name"));
    }
    Ok(San::Dns(trimmed.to_ascii_lowercase()))
}

/// The host name, if it is usable as a DNS name.
fn host_name() -> Option<String> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    match parse_san(raw.trim()) {
        Ok(San::Dns(name)) => Some(name),
        _ => {
            tracing::warn!(
                host = raw.trim(),
                "host name is not a DNS name; not adding it to the serving certificate"
            );
            None
        }
    }
}

fn cert_sans(cert: &X509Certificate<'_>) -> BTreeSet<San> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return BTreeSet::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(San::Dns(dns.to_ascii_lowercase())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| San::Ip(IpAddr::from(b))),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| San::Ip(IpAddr::from(b))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn authority_key_id<'a>(cert: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0)
            }
            _ => None,
        })
}

fn subject_raw(der: &[u8], path: &Path) -> Result<Vec<u8>, PkiError> {
    let (_, cert) = parse_x509(der, path)?;
    Ok(cert.subject().as_raw().to_vec())
}

fn parse_x509<'a>(der: &'a [u8], path: &Path) -> Result<(&'a [u8], X509Certificate<'a>), PkiError> {
    X509Certificate::from_der(der).map_err(|source| PkiError::BadCertificate {
        path: path.to_path_buf(),
        source,
    })
}

/// The first certificate in a PEM file.
fn parse_cert_pem(pem: &str, path: &Path) -> Result<CertificateDer<'static>, PkiError> {
    let bad = || PkiError::BadPem {
        path: path.to_path_buf(),
        what: "certificate",
    };
    match rustls_pemfile::certs(&mut pem.as_bytes()).next() {
        Some(Ok(der)) => Ok(der),
        _ => Err(bad()),
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_error(path, source)),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Writes `contents` to `path` through a temporary file in the same directory and a
/// rename, so readers see either the old file or the complete new one, never a
/// partial write. The file gets `mode` from the start (keys are never world-readable,
/// not even briefly).
pub(crate) fn write_file_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(
        ".tmp-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let tmp_path = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp_path)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp_path, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp_path);
    }
    result
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// --- Minimal DER handling for client certificate subjects ---------------------------

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_VERSION: u8 = 0xa0;
/// DER of the OIDs 2.5.4.3 (commonName) and 2.5.4.10 (organizationName).
const OID_COMMON_NAME: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
const OID_ORGANIZATION: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x0a];

fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Splits the first DER element off `buf`: (tag, header length, whole element, rest).
fn der_split(buf: &[u8]) -> Option<(u8, usize, &[u8], &[u8])> {
    let tag = *buf.first()?;
    let first = *buf.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = buf
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, len)
    };
    let end = header.checked_add(len)?;
    if buf.len() < end {
        return None;
    }
    let (element, rest) = buf.split_at(end);
    Some((tag, header, element, rest))
}

/// The subject Kubernetes reads: O=<group> for each group, then CN=<user>.
fn encode_subject(common_name: &str, organizations: &[&str]) -> Vec<u8> {
    let rdn = |oid: &[u8], value: &str| {
        let mut atv = oid.to_vec();
        atv.extend(der_encode(TAG_UTF8_STRING, value.as_bytes()));
        der_encode(TAG_SET, &der_encode(TAG_SEQUENCE, &atv))
    };
    let mut rdns = Vec::new();
    for org in organizations {
        rdns.extend(rdn(OID_ORGANIZATION, org));
    }
    rdns.extend(rdn(OID_COMMON_NAME, common_name));
    der_encode(TAG_SEQUENCE, &rdns)
}

/// Rebuilds `cert` (DER, as rcgen made it) with `subject` in place of its subject and
/// signs it again with `ca_key`; everything else is kept byte for byte.
fn replace_subject_and_resign(
    cert: &[u8],
    subject: &[u8],
    ca_key: &KeyPair,
) -> Result<Vec<u8>, PkiError> {
    let malformed = || PkiError::Encoding("certificate structure");
    let (tag, header, whole, _) = der_split(cert).ok_or_else(malformed)?;
    if tag != TAG_SEQUENCE {
        return Err(malformed());
    }
    let cert_content = &whole[header..];
    let (_, tbs_header, tbs, after_tbs) = der_split(cert_content).ok_or_else(malformed)?;
    let (_, _, signature_algorithm, _) = der_split(after_tbs).ok_or_else(malformed)?;

    // TBSCertificate: version, serial, signature, issuer, validity, subject, ...
    let mut rest = &tbs[tbs_header..];
    let mut new_tbs_content = Vec::with_capacity(tbs.len() + subject.len());
    for index in 0..5 {
        let (tag, _, element, remaining) = der_split(rest).ok_or_else(malformed)?;
        if index == 0 && tag != TAG_VERSION {
            return Err(PkiError::Encoding("certificate without a version field"));
        }
        new_tbs_content.extend_from_slice(element);
        rest = remaining;
    }
    let (old_subject_tag, _, _, after_subject) = der_split(rest).ok_or_else(malformed)?;
    if old_subject_tag != TAG_SEQUENCE {
        return Err(malformed());
    }
    new_tbs_content.extend_from_slice(subject);
    new_tbs_content.extend_from_slice(after_subject);
    let new_tbs = der_encode(TAG_SEQUENCE, &new_tbs_content);

    let signature = ca_key.sign(&new_tbs)?;
    let mut bit_string = vec![0u8];
    bit_string.extend(signature);
    let mut new_cert = new_tbs;
    new_cert.extend_from_slice(signature_algorithm);
    new_cert.extend(der_encode(TAG_BIT_STRING, &bit_string));
    Ok(der_encode(TAG_SEQUENCE, &new_cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn read(dir: &Path, file: &str) -> Vec<u8> {
        std::fs::read(dir.join(file)).expect("read pki file")
    }

    fn serving_sans(dir: &Path) -> BTreeSet<San> {
        let pem = std::fs::read_to_string(dir.join(SERVING_CERT_FILE)).expect("read cert");
        let der = parse_cert_pem(&pem, dir).expect("pem");
        let (_, cert) = X509Certificate::from_der(&der).expect("x509");
        cert_sans(&cert)
    }

    #[test]
    fn create_then_reload_reuses_ca_and_serving_cert() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("pki");
        let first = Pki::load_or_create(&dir, &[]).expect("create");
        let files = [
            CA_CERT_FILE,
            CA_KEY_FILE,
            SERVING_CERT_FILE,
            SERVING_KEY_FILE,
        ];
        let before: Vec<_> = files.iter().map(|f| read(&dir, f)).collect();

        let second = Pki::load_or_create(&dir, &[]).expect("reload");
        let after: Vec<_> = files.iter().map(|f| read(&dir, f)).collect();
        assert_eq!(before, after, "nothing is rewritten on restart");
        assert_eq!(first.ca_cert_pem(), second.ca_cert_pem());
        assert_eq!(
            second.ca_cert_pem().as_bytes(),
            before[0].as_slice(),
            "ca_cert_pem is the file"
        );
    }

    #[test]
    fn key_files_are_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(tmp.path(), &[]).expect("create");
        for key in [CA_KEY_FILE, SERVING_KEY_FILE] {
            let mode = std::fs::metadata(tmp.path().join(key))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        assert!(pki.serving_key_path().ends_with(SERVING_KEY_FILE));
        assert!(pki.serving_cert_path().exists());
        assert!(pki.ca_cert_path().exists());
    }

    #[test]
    fn serving_cert_covers_loopback_localhost_and_host() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Pki::load_or_create(tmp.path(), &[]).expect("create");
        let sans = serving_sans(tmp.path());
        assert!(
            sans.contains(&San::Ip("127.0.0.1".parse().expect("ip"))),
            "{sans:?}"
        );
        assert!(
            sans.contains(&San::Ip("::1".parse().expect("ip"))),
            "{sans:?}"
        );
        assert!(sans.contains(&San::Dns("localhost".into())), "{sans:?}");
        if let Some(host) = host_name() {
            assert!(sans.contains(&San::Dns(host)), "{sans:?}");
        }
    }

    #[test]
    fn extra_san_reissues_only_the_serving_cert() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        Pki::load_or_create(dir, &[]).expect("create");
        let (ca, ca_key, serving) = (
            read(dir, CA_CERT_FILE),
            read(dir, CA_KEY_FILE),
            read(dir, SERVING_CERT_FILE),
        );

        let extras = vec![
            "10.96.0.1".to_string(),
            "Kubernetes.Default.svc".to_string(),
            "[fd00::1]".to_string(),
        ];
        Pki::load_or_create(dir, &extras).expect("reload with extra SANs");
        assert_eq!(read(dir, CA_CERT_FILE), ca);
        assert_eq!(read(dir, CA_KEY_FILE), ca_key);
        let reissued = read(dir, SERVING_CERT_FILE);
        assert_ne!(reissued, serving, "serving cert re-issued");
        let sans = serving_sans(dir);
        assert!(sans.contains(&San::Ip("10.96.0.1".parse().expect("ip"))));
        assert!(sans.contains(&San::Ip("fd00::1".parse().expect("ip"))));
        assert!(sans.contains(&San::Dns("kubernetes.default.svc".into())));

        // A subset of what the certificate covers needs no new certificate.
        Pki::load_or_create(dir, &extras[..1]).expect("reload with fewer SANs");
        assert_eq!(read(dir, SERVING_CERT_FILE), reissued);
    }

    #[test]
    fn serving_cert_from_another_ca_is_replaced() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        Pki::load_or_create(a.path(), &[]).expect("create a");
        Pki::load_or_create(b.path(), &[]).expect("create b");
        for file in [SERVING_CERT_FILE, SERVING_KEY_FILE] {
            std::fs::copy(b.path().join(file), a.path().join(file)).expect("copy");
        }
        let foreign = read(a.path(), SERVING_CERT_FILE);
        Pki::load_or_create(a.path(), &[]).expect("reload a");
        assert_ne!(read(a.path(), SERVING_CERT_FILE), foreign);
    }

    #[test]
    fn missing_or_mismatched_ca_key_is_an_error() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        Pki::load_or_create(a.path(), &[]).expect("create a");
        Pki::load_or_create(b.path(), &[]).expect("create b");

        std::fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).expect("copy");
        let err = Pki::load_or_create(a.path(), &[]).expect_err("mismatched key");
        assert!(matches!(err, PkiError::CaKeyMismatch { .. }), "{err:?}");

        std::fs::remove_file(a.path().join(CA_KEY_FILE)).expect("rm");
        let err = Pki::load_or_create(a.path(), &[]).expect_err("missing key");
        assert!(matches!(err, PkiError::MissingCaKey { .. }), "{err:?}");

        std::fs::write(a.path().join(CA_KEY_FILE), "not a key").expect("write");
        let err = Pki::load_or_create(a.path(), &[]).expect_err("bad key");
        assert!(matches!(err, PkiError::BadKey { .. }), "{err:?}");

        std::fs::write(a.path().join(CA_CERT_FILE), "garbage").expect("write");
        let err = Pki::load_or_create(a.path(), &[]).expect_err("bad cert");
        assert!(matches!(err, PkiError::BadPem { .. }), "{err:?}");
    }

    #[test]
    fn invalid_extra_san_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        for bad in ["", "has space", "a..b", "ünicode.example"] {
            let err = Pki::load_or_create(tmp.path(), &[bad.to_string()]).expect_err(bad);
            assert!(
                matches!(err, PkiError::InvalidSan { .. }),
                "{bad:?}: {err:?}"
            );
        }
        assert_eq!(
            parse_san("*.example.com").ok(),
            Some(San::Dns("*.example.com".into()))
        );
    }

    #[test]
    fn client_cert_carries_user_and_every_group() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(tmp.path(), &[]).expect("create");
        let (cert_pem, key_pem) = pki
            .issue_client_cert("jane", &["system:masters", "devs", "ops"])
            .expect("issue");
        assert!(key_pem.contains("PRIVATE KEY"));
        let der = parse_cert_pem(&cert_pem, tmp.path()).expect("pem");
        let (_, cert) = X509Certificate::from_der(&der).expect("x509");
        let cns: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().ok())
            .collect();
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|a| a.as_str().ok())
            .collect();
        assert_eq!(cns, [Some("jane")]);
        assert_eq!(orgs, [Some("system:masters"), Some("devs"), Some("ops")]);
        assert_eq!(
            cert.issuer().as_raw(),
            subject_raw(pki.ca_cert_der(), tmp.path()).expect("ca")
        );

        assert!(matches!(
            pki.issue_client_cert("", &[]),
            Err(PkiError::InvalidSubject(_))
        ));
    }

    // --- TLS handshakes ---------------------------------------------------------------

    fn client_config(ca: &Pki, client: Option<(String, String)>) -> rustls::ClientConfig {
        let mut roots = RootCertStore::empty();
        roots.add(ca.ca_cert_der().clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
        let mut config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_pem, key_pem)) => {
                let certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certs");
                let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
                    .expect("key pem")
                    .expect("a key");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client auth")
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        config
    }

    /// What the server saw of one connection.
    struct Seen {
        peer_certs: Option<Vec<CertificateDer<'static>>>,
        alpn: Option<Vec<u8>>,
    }

    /// Runs one TLS connection to a server using `server`; the server's view, or its
    /// handshake error.
    async fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
        server_name: &str,
    ) -> Result<Seen, std::io::Error> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let (_, conn) = tls.get_ref();
            let seen = Seen {
                peer_certs: conn.peer_certificates().map(|c| c.to_vec()),
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            };
            tls.write_all(b"ok").await?;
            tls.shutdown().await?;
            Ok::<_, std::io::Error>(seen)
        });

        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("name");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let client_result = async {
            let mut tls = connector.connect(name, tcp).await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        }
        .await;
        let seen = server_task.await.expect("server task")?;
        assert_eq!(client_result.expect("client side"), b"ok");
        Ok(seen)
    }

    #[tokio::test]
    async fn tls_with_and_without_client_cert() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Pki::load_or_create(tmp.path(), &[]).expect("create");
        // Everything below uses a reloaded PKI: certificates issued after a restart
        // must chain to the CA created before it.
        let pki = Pki::load_or_create(tmp.path(), &[]).expect("reload");

        let client_cert = pki
            .issue_client_cert("admin", &["system:masters"])
            .expect("issue");
        let seen = handshake(
            pki.server_tls_config().expect("server config"),
            client_config(&pki, Some(client_cert)),
            "127.0.0.1",
        )
        .await
        .expect("handshake with a client cert");
        let certs = seen.peer_certs.expect("server sees the client certificate");
        assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
        let user = crate::apiserver::authn::Authenticator::new()
            .authenticate(certs.first(), None)
            .expect("authenticated by certificate");
        assert_eq!(user.name, "admin");
        assert_eq!(user.groups, ["system:masters", "system:authenticated"]);

        let seen = handshake(
            pki.server_tls_config().expect("server config"),
            client_config(&pki, None),
            "localhost",
        )
        .await
        .expect("handshake without a client cert");
        assert!(seen.peer_certs.is_none());
    }

    #[tokio::test]
    async fn client_cert_from_another_ca_is_rejected() {
        let ours = tempfile::tempdir().expect("tempdir");
        let theirs = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(ours.path(), &[]).expect("create");
        let other = Pki::load_or_create(theirs.path(), &[]).expect("create other");
        let foreign = other
            .issue_client_cert("mallory", &["system:masters"])
            .expect("issue");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor =
            tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_tls_config().expect("config")));
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            acceptor.accept(tcp).await.map(|_| ())
        });
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(client_config(&pki, Some(foreign))));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        // The client may finish its side before the server rejects it; what matters is
        // the server's verdict.
        let _ = connector.connect(name, tcp).await;
        let verdict = server_task.await.expect("server task");
        assert!(
            verdict.is_err(),
            "a certificate from a foreign CA must be refused"
        );
    }

    #[test]
    fn subject_rewrite_keeps_der_lengths_right() {
        // Long names push lengths past the one-byte form.
        let long = "g".repeat(300);
        let subject = encode_subject(&"u".repeat(200), &[&long, "x"]);
        let (_, name) = x509_parser::x509::X509Name::from_der(&subject).expect("parses as a name");
        assert_eq!(name.iter_organization().count(), 2);
        let tmp = tempfile::tempdir().expect("tempdir");
        let pki = Pki::load_or_create(tmp.path(), &[]).expect("create");
        let (cert_pem, _) = pki
            .issue_client_cert(&"u".repeat(200), &[&long])
            .expect("issue");
        let der = parse_cert_pem(&cert_pem, tmp.path()).expect("pem");
        let (rest, cert) = X509Certificate::from_der(&der).expect("x509");
        assert!(rest.is_empty());
        assert_eq!(
            cert.subject()
                .iter_organization()
                .next()
                .and_then(|o| o.as_str().ok()),
            Some(long.as_str())
        );
    }
}
