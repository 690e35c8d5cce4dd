//! Writing kubeconfig files (the admin kubeconfig `wasmkube server` and `up` leave in
//! the data directory, and any other credential handed to a user).
//!
//! The file holds one cluster, one user and one context joining them, with all
//! certificates and keys inline (base64), so it works from any directory. It is written
//! with mode 0600 and atomically: tests and scripts poll for the file to know the
//! server is up, and must never read half of it.
//!
//! The YAML is written by hand: a fixed shape, every free-form string double-quoted.

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine;

/// How the user authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate and its key, both PEM.
    ClientCert {
        /// The certificate, PEM.
        cert_pem: String,
        /// The private key, PEM.
        key_pem: String,
    },
    /// A bearer token.
    Token(String),
}

impl std::fmt::Debug for Credential {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ClientCert { .. } => f.write_str("ClientCert(..)"),
            Credential::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// Writes a kubeconfig for `user_name` at `server_url` (trusting `ca_pem`) to `path`,
/// creating its directory if needed. The context is named `<user>@<cluster>` and is
/// the current one.
pub fn write(
    path: &Path,
    cluster_name: &str,
    server_url: &str,
    ca_pem: &str,
    user_name: &str,
    credential: &Credential,
) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let text = render(cluster_name, server_url, ca_pem, user_name, credential);
    crate::pki::write_file_atomically(path, text.as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), cluster = cluster_name, user = user_name, "wrote kubeconfig");
    Ok(())
}

fn render(
    cluster_name: &str,
    server_url: &str,
    ca_pem: &str,
    user_name: &str,
    credential: &Credential,
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let context_name = format!("{user_name}@{cluster_name}");
    let mut out = String::new();
    // `writeln!` into a String cannot fail.
    let _ = writeln!(out, "apiVersion: v1");
    let _ = writeln!(out, "kind: Config");
    let _ = writeln!(out, "preferences: {{}}");
    let _ = writeln!(out, "clusters:");
    let _ = writeln!(out, "- name: {}", quote(cluster_name));
    let _ = writeln!(out, "  cluster:");
    let _ = writeln!(out, "    server: {}", quote(server_url));
    let _ = writeln!(out, "    certificate-authority-data: {}", b64(ca_pem));
    let _ = writeln!(out, "users:");
    let _ = writeln!(out, "- name: {}", quote(user_name));
    let _ = writeln!(out, "  user:");
    match credential {
        Credential::ClientCert { cert_pem, key_pem } => {
            let _ = writeln!(out, "    client-certificate-data: {}", b64(cert_pem));
            let _ = writeln!(out, "    client-key-data: {}", b64(key_pem));
        }
        Credential::Token(token) => {
            let _ = writeln!(out, "    token: {}", quote(token));
        }
    }
    let _ = writeln!(out, "contexts:");
    let _ = writeln!(out, "- name: {}", quote(&context_name));
    let _ = writeln!(out, "  context:");
    let _ = writeln!(out, "    cluster: {}", quote(cluster_name));
    let _ = writeln!(out, "    user: {}", quote(user_name));
    let _ = writeln!(out, "current-context: {}", quote(&context_name));
    out
}

/// A YAML double-quoted scalar: the only style in which any string can be written
/// without knowing what it contains.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            // YAML forbids raw C0/C1 controls and DEL in any scalar.
            c if c.is_control() || c == '\u{feff}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nQ0E=\n-----END CERTIFICATE-----\n";

    fn decode(b64: &str) -> String {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn client_cert_kubeconfig_parses_with_kube_rs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("sub/dir/kubeconfig");
        let credential = Credential::ClientCert {
            cert_pem: "CERT PEM\n".into(),
            key_pem: "KEY PEM\n".into(),
        };
        write(
            &path,
            "wasmkube",
            "https://127.0.0.1:6443",
            CA,
            "admin",
            &credential,
        )
        .expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let kc = kube::config::Kubeconfig::read_from(&path).expect("kube-rs reads it");
        assert_eq!(kc.current_context.as_deref(), Some("admin@wasmkube"));
        let cluster = kc.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(kc.clusters[0].name, "wasmkube");
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(
            decode(cluster.certificate_authority_data.as_deref().expect("ca")),
            CA
        );
        let auth = kc.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(kc.auth_infos[0].name, "admin");
        assert_eq!(
            decode(auth.client_certificate_data.as_deref().expect("cert")),
            "CERT PEM\n"
        );
        let json = serde_json::to_value(auth).expect("json");
        assert_eq!(
            decode(json["client-key-data"].as_str().expect("key")),
            "KEY PEM\n"
        );
        let ctx = kc.contexts[0].context.as_ref().expect("context");
        assert_eq!(
            (ctx.cluster.as_str(), ctx.user.as_deref()),
            ("wasmkube", Some("admin"))
        );
        // No temporary file is left behind.
        let entries = std::fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .count();
        assert_eq!(entries, 1);
    }

    #[test]
    fn token_kubeconfig_with_awkward_names_round_trips() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("kubeconfig");
        let user = "we:ird \"user\" # not a comment\\";
        write(
            &path,
            "c: 1",
            "https://[::1]:6443",
            CA,
            user,
            &Credential::Token("t0k:en #x".into()),
        )
        .expect("write");
        // Rewriting replaces the file.
        write(
            &path,
            "c: 1",
            "https://[::1]:6443",
            CA,
            user,
            &Credential::Token("t0k:en #x".into()),
        )
        .expect("rewrite");
        let kc = kube::config::Kubeconfig::read_from(&path).expect("kube-rs reads it");
        assert_eq!(kc.clusters[0].name, "c: 1");
        assert_eq!(kc.auth_infos[0].name, user);
        let json =
            serde_json::to_value(kc.auth_infos[0].auth_info.as_ref().expect("user")).expect("json");
        assert_eq!(json["token"], "t0k:en #x");
        assert!(json.get("client-certificate-data").is_none());
        assert_eq!(
            kc.current_context.as_deref(),
            Some(format!("{user}@c: 1").as_str())
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(quote("a\u{7f}b\u{1}\n"), "\"a\\u007fb\\u0001\\n\"");
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", Credential::Token("hunter2".into()));
        assert!(!shown.contains("hunter2"));
    }
}
