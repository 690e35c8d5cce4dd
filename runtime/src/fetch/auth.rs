//! Registry credentials: the form the agent passes to [`super::ModuleStore::fetch`], read
//! from pods' imagePullSecrets (`kubernetes.io/dockerconfigjson` and the older
//! `kubernetes.io/dockercfg`), and how a credential is matched to a registry.

use base64::Engine as _;
use serde::Deserialize;

use super::FetchError;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry as written in the docker config: `host[:port]`, possibly with a scheme
    /// and path (`https://index.docker.io/v1/`).
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RegistryAuth {
    /// True when this credential is meant for `registry` (`host[:port]` of a reference).
    pub(crate) fn matches(&self, registry: &str) -> bool {
        normalize_registry(&self.registry) == normalize_registry(registry)
    }
}

/// Reduces the ways a registry is written in docker configs to `host[:port]`, with all
/// Docker Hub aliases as `docker.io`.
pub(crate) fn normalize_registry(registry: &str) -> String {
    let s = registry.trim();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

#[derive(Deserialize)]
struct DockerConfigEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Parses a `.dockerconfigjson` document (`{"auths": {"<registry>": {...}}}`) or the older
/// `.dockercfg` one (the same map without the `auths` wrapper). Each entry gives either
/// `auth` (base64 of `user:password`) or `username` and `password`; entries with neither
/// (identity tokens, credential helpers) are skipped, as the kubelet does.
pub fn auths_from_docker_config(json: &[u8]) -> Result<Vec<RegistryAuth>, FetchError> {
    let doc: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| FetchError::DockerConfig(e.to_string()))?;
    let map = match doc.get("auths") {
        Some(auths) => auths,
        None => &doc,
    };
    let map = map.as_object().ok_or_else(|| {
        FetchError::DockerConfig("expected an object mapping registries to credentials".into())
    })?;
    let mut out = Vec::new();
    for (registry, value) in map {
        let entry: DockerConfigEntry = serde_json::from_value(value.clone())
            .map_err(|e| FetchError::DockerConfig(format!("entry for {registry:?}: {e}")))?;
        let from_auth = match entry.auth.as_deref().filter(|a| !a.is_empty()) {
            Some(encoded) => Some(decode_auth(registry, encoded)?),
            None => None,
        };
        let creds = match (from_auth, entry.username, entry.password) {
            (Some(pair), _, _) => Some(pair),
            (None, Some(user), Some(pass)) if !user.is_empty() => Some((user, pass)),
            _ => None,
        };
        match creds {
            Some((username, password)) => out.push(RegistryAuth {
                registry: registry.clone(),
                username,
                password,
            }),
            None => {
                tracing::debug!(%registry, "docker config entry without usable credentials skipped")
            }
        }
    }
    Ok(out)
}

fn decode_auth(registry: &str, encoded: &str) -> Result<(String, String), FetchError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| {
            FetchError::DockerConfig(format!("auth for {registry:?} is not base64: {e}"))
        })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| FetchError::DockerConfig(format!("auth for {registry:?} is not UTF-8")))?;
    let (user, pass) = text.split_once(':').ok_or_else(|| {
        FetchError::DockerConfig(format!(
            "auth for {registry:?} is not of the form user:password"
        ))
    })?;
    Ok((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dockerconfigjson_auth_and_fields() {
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:pa:ss");
        let json = format!(
            r#"{{"auths": {{
                "127.0.0.1:5000": {{"auth": "{auth}"}},
                "https://index.docker.io/v1/": {{"username": "bob", "password": "pw"}},
                "helper.example": {{"identitytoken": "x"}}
            }}}}"#
        );
        let mut auths = auths_from_docker_config(json.as_bytes()).expect("parse");
        auths.sort_by(|a, b| a.registry.cmp(&b.registry));
        assert_eq!(auths.len(), 2);
        assert_eq!(auths[0].registry, "127.0.0.1:5000");
        assert_eq!(auths[0].username, "alice");
        assert_eq!(auths[0].password, "pa:ss");
        assert_eq!(auths[1].username, "bob");
        assert!(auths[1].matches("docker.io"));
        assert!(auths[0].matches("127.0.0.1:5000"));
        assert!(!auths[0].matches("127.0.0.1:5001"));
        assert!(!format!("{:?}", auths[0]).contains("pa:ss"));
    }

    #[test]
    fn parses_legacy_dockercfg() {
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p");
        let json = format!(r#"{{"registry.example:443": {{"auth": "{auth}", "email": "e"}}}}"#);
        let auths = auths_from_docker_config(json.as_bytes()).expect("parse");
        assert_eq!(auths.len(), 1);
        assert_eq!(auths[0].username, "u");
    }

    #[test]
    fn rejects_malformed_configs() {
        assert!(auths_from_docker_config(b"not json").is_err());
        assert!(auths_from_docker_config(br#"{"auths": {"r": {"auth": "!!!"}}}"#).is_err());
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        let json = format!(r#"{{"auths": {{"r": {{"auth": "{no_colon}"}}}}}}"#);
        let err = auths_from_docker_config(json.as_bytes()).expect_err("no colon");
        assert!(err.to_string().contains("user:password"), "{err}");
        assert!(auths_from_docker_config(br#"{"auths": []}"#).is_err());
    }
}
