//! Fetch errors, shaped so the agent can show them the way Kubernetes does: a reason
//! (`InvalidImageName`, `ErrImageNeverPull`, `ErrImagePull`) and a message that says
//! what went wrong with which module.

use std::path::PathBuf;

use oci_client::errors::{DigestError, OciDistributionError, OciEnvelope, OciErrorCode};

/// Why a module could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The image string is none of the accepted forms (OCI reference, http(s) URL, file URL).
    #[error("invalid image name {image:?}: {reason}")]
    InvalidImageName {
        /// The image as written in the pod.
        image: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pull policy is Never and the module is not in the node's store.
    #[error("module {image:?} is not present on the node and imagePullPolicy is Never")]
    NeverPull {
        /// The image as written in the pod.
        image: String,
    },
    /// The registry, web server or node has no such module.
    #[error("module {image} not found: {detail}")]
    NotFound {
        /// The image as written in the pod.
        image: String,
        /// Where it was looked for (status and URL, or the missing path).
        detail: String,
    },
    /// The registry or web server refused the credentials (or their absence).
    #[error("unauthorized to pull {image}: {detail}")]
    Unauthorized {
        /// The image as written in the pod.
        image: String,
        /// What the server answered.
        detail: String,
    },
    /// The bytes received do not have the digest they were pinned to.
    #[error("digest mismatch for {image}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The image as written in the pod.
        image: String,
        /// The digest the reference or manifest promised.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The bytes are not a WebAssembly binary (no `\0asm` magic).
    #[error("{image} is not a wasm module: it {looks_like}")]
    NotWasm {
        /// The image (or file) as given.
        image: String,
        /// What the bytes look like instead, e.g. "starts with 7f 45 4c 46 (an ELF binary)".
        looks_like: String,
    },
    /// The OCI manifest has no wasm layer: most likely an ordinary container image.
    #[error(
        "{image} is not a wasm artifact: it has no {} or {} layer (config {config_media_type}, layers {layer_media_types:?})",
        super::oci::WASM_LAYER_WASM_TO_OCI,
        super::oci::WASM_LAYER_CNCF
    )]
    NotWasmArtifact {
        /// The image as written in the pod.
        image: String,
        /// The manifest's config media type.
        config_media_type: String,
        /// The media types of the manifest's layers.
        layer_media_types: Vec<String>,
    },
    /// The module is larger than the store accepts.
    #[error("{image} is larger than the module size limit of {limit} bytes")]
    TooLarge {
        /// The image as written in the pod.
        image: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The registry or web server could not be reached, or the transfer broke off.
    #[error("network error fetching {image}: {cause}")]
    Network {
        /// The image as written in the pod.
        image: String,
        /// The underlying error chain.
        cause: String,
    },
    /// A web server answered with an unexpected HTTP status.
    #[error("fetching {image}: {url} answered {status}")]
    HttpStatus {
        /// The image as written in the pod.
        image: String,
        /// The URL requested.
        url: String,
        /// The HTTP status line.
        status: String,
    },
    /// The registry answered something this client cannot use.
    #[error("registry error for {image}: {detail}")]
    Registry {
        /// The image as written in the pod.
        image: String,
        /// What the registry said or did.
        detail: String,
    },
    /// A `file://` module exists but cannot be read.
    #[error("cannot read module file {path}: {source}")]
    ReadFile {
        /// The path on the node.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The node's module store could not be read or written.
    #[error("module store at {path}: {source}")]
    Store {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An HTTP or registry client could not be built.
    #[error("cannot set up the {what} client: {detail}")]
    Client {
        /// Which client.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A `.dockerconfigjson` (or `.dockercfg`) document could not be understood.
    #[error("invalid docker config: {0}")]
    DockerConfig(String),
}

impl FetchError {
    /// The Kubernetes waiting reason for a container whose module could not be fetched.
    pub fn reason(&self) -> &'static str {
        match self {
            FetchError::InvalidImageName { .. } => "InvalidImageName",
            FetchError::NeverPull { .. } => "ErrImageNeverPull",
            _ => "ErrImagePull",
        }
    }

    /// True when the credentials were refused, so the next candidate credential may work.
    pub(crate) fn is_unauthorized(&self) -> bool {
        matches!(self, FetchError::Unauthorized { .. })
    }

    pub(crate) fn store(path: impl Into<PathBuf>, source: std::io::Error) -> FetchError {
        FetchError::Store {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn network(image: &str, err: &(dyn std::error::Error + 'static)) -> FetchError {
        FetchError::Network {
            image: image.to_string(),
            cause: error_chain(err),
        }
    }

    /// Maps an oci-client error to the variant that tells the user most.
    pub(crate) fn from_oci(image: &str, err: OciDistributionError) -> FetchError {
        let image_s = image.to_string();
        match err {
            OciDistributionError::RegistryError { envelope, url } => {
                let detail = format!("{} ({url})", envelope_messages(&envelope));
                let has = |codes: &[OciErrorCode]| {
                    envelope.errors.iter().any(|e| codes.contains(&e.code))
                };
                if has(&[
                    OciErrorCode::ManifestUnknown,
                    OciErrorCode::NameUnknown,
                    OciErrorCode::NotFound,
                    OciErrorCode::BlobUnknown,
                    OciErrorCode::ManifestBlobUnknown,
                ]) {
                    FetchError::NotFound {
                        image: image_s,
                        detail,
                    }
                } else if has(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]) {
                    FetchError::Unauthorized {
                        image: image_s,
                        detail,
                    }
                } else {
                    FetchError::Registry {
                        image: image_s,
                        detail,
                    }
                }
            }
            OciDistributionError::ServerError { code, url, message } => {
                let message = message.trim();
                let detail = if message.is_empty() {
                    format!("{url} answered {code}")
                } else {
                    format!("{url} answered {code}: {}", truncate(message, 200))
                };
                match code {
                    404 | 410 => FetchError::NotFound {
                        image: image_s,
                        detail,
                    },
                    401 | 403 => FetchError::Unauthorized {
                        image: image_s,
                        detail,
                    },
                    _ => FetchError::Registry {
                        image: image_s,
                        detail,
                    },
                }
            }
            OciDistributionError::UnauthorizedError { url } => FetchError::Unauthorized {
                image: image_s,
                detail: format!("{url} answered 401; check the pod's imagePullSecrets"),
            },
            OciDistributionError::AuthenticationFailure(reason) => FetchError::Unauthorized {
                image: image_s,
                detail: format!("authentication failed: {}", truncate(reason.trim(), 200)),
            },
            // Some oci-client calls turn HTTP statuses into reqwest errors.
            OciDistributionError::RequestError(e) => match e.status().map(|s| s.as_u16()) {
                Some(401 | 403) => FetchError::Unauthorized {
                    image: image_s,
                    detail: error_chain(&e),
                },
                Some(404 | 410) => FetchError::NotFound {
                    image: image_s,
                    detail: error_chain(&e),
                },
                Some(_) => FetchError::Registry {
                    image: image_s,
                    detail: error_chain(&e),
                },
                None => FetchError::network(image, &e),
            },
            OciDistributionError::IoError(e) => FetchError::from_io_in_transfer(image, e),
            OciDistributionError::DigestError(DigestError::VerificationError {
                expected,
                actual,
            }) => FetchError::DigestMismatch {
                image: image_s,
                expected,
                actual,
            },
            OciDistributionError::ImageManifestNotFoundError(detail) => FetchError::NotFound {
                image: image_s,
                detail,
            },
            other => FetchError::Registry {
                image: image_s,
                detail: error_chain(&other),
            },
        }
    }

    /// An I/O error while streaming a blob: a digest check or a broken connection.
    pub(crate) fn from_io_in_transfer(image: &str, err: std::io::Error) -> FetchError {
        if let Some(DigestError::VerificationError { expected, actual }) =
            err.get_ref().and_then(|e| e.downcast_ref::<DigestError>())
        {
            return FetchError::DigestMismatch {
                image: image.to_string(),
                expected: expected.clone(),
                actual: actual.clone(),
            };
        }
        FetchError::network(image, &err)
    }
}

fn envelope_messages(envelope: &OciEnvelope) -> String {
    let parts: Vec<String> = envelope
        .errors
        .iter()
        .map(|e| {
            if e.message.is_empty() {
                format!("{:?}", e.code)
            } else {
                e.message.clone()
            }
        })
        .collect();
    if parts.is_empty() {
        "error without details".to_string()
    } else {
        parts.join("; ")
    }
}

/// The error and its sources joined with ": ", skipping repeats (reqwest and hyper often
/// repeat their inner error's text in their own).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_match_kubernetes() {
        let invalid = FetchError::InvalidImageName {
            image: "x".into(),
            reason: "r".into(),
        };
        assert_eq!(invalid.reason(), "InvalidImageName");
        let never = FetchError::NeverPull { image: "x".into() };
        assert_eq!(never.reason(), "ErrImageNeverPull");
        let nf = FetchError::NotFound {
            image: "x".into(),
            detail: "d".into(),
        };
        assert_eq!(nf.reason(), "ErrImagePull");
    }

    #[test]
    fn error_chain_skips_repeated_text() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "connection refused");
    }
}
