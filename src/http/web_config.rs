//! `server.web_config_file`: the web configuration file of Prometheus's
//! exporter-toolkit (the file postgres_exporter takes with
//! `--web.config.file`), read strictly: a field dbwarden does not know is
//! an error naming it, and a value rustls cannot honour (a cipher suite,
//! a curve, TLS 1.0 or 1.1 as the highest version) is refused by name.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths: from this file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   client_allowed_sans: [prometheus.monitoring.svc]
//!   min_version: TLS12
//!   max_version: TLS13
//!   cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
//!   curve_preferences: [X25519, CurveP256]
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$...        # bcrypt hashes
//! ```
//!
//! Loading also builds the TLS configuration once, so that a missing or
//! unreadable certificate, a key that does not parse or does not match the
//! certificate, is reported at start-up (or refuses a reload) rather than
//! at the first handshake.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;

/// A web configuration file, read and checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WebConfig {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    pub tls: Option<TlsSettings>,
    /// User name → bcrypt hash. Hashes never print.
    pub users: BTreeMap<String, Secret>,
    /// Headers added to every response.
    pub headers: Vec<(String, String)>,
    /// The file's modification time, size and inode when it was read: a
    /// change is seen at the next connection.
    pub stamp: super::tls::Stamp,
}

impl WebConfig {
    /// Whether a client must authenticate somehow: a basic-auth user is
    /// configured, or client certificates are verified against a CA.
    pub fn authentication(&self) -> bool {
        !self.users.is_empty() || self.tls.as_ref().is_some_and(|t| t.client_auth.verifies())
    }
}

/// `tls_server_config`, checked; paths resolved against the file's directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    /// DNS names or IP addresses, one of which the client certificate must hold.
    pub client_allowed_sans: Vec<String>,
    /// The protocol versions allowed: TLS 1.2 and/or 1.3.
    pub tls12: bool,
    pub tls13: bool,
    /// TLS 1.2 cipher suites by their Go name; empty: rustls's defaults.
    /// (As with Go, TLS 1.3 suites are not configurable.)
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups by their Go name, in order; empty: rustls's defaults.
    pub curve_preferences: Vec<String>,
}

/// `client_auth_type`: exporter-toolkit's five values (Go's `tls.ClientAuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClientAuth {
    NoClientCert,
    /// Asks for a certificate; neither requires nor verifies it.
    RequestClientCert,
    /// Requires a certificate but does not verify it (`RequireClientCert`
    /// is exporter-toolkit's older spelling).
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    /// Verifies a certificate against `client_ca_file` when one is sent.
    VerifyClientCertIfGiven,
    /// Requires a certificate verified against `client_ca_file`.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    /// Whether certificates are verified against the client CA.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// The file as written (exporter-toolkit's field names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    http_server_config: RawHttp,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
    /// exporter-toolkit's request rate limit: refused with a message.
    rate_limit: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    client_auth_type: Option<ClientAuth>,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
    min_version: Option<String>,
    max_version: Option<String>,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    /// Deprecated in Go (it has no effect there since Go 1.18): accepted.
    #[allow(dead_code)]
    prefer_server_cipher_suites: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// dbwarden serves HTTP/1.1 only; `true` (Go's default) is accepted and
    /// means nothing more here, as Prometheus scrapes over HTTP/1.1.
    #[allow(dead_code)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The TLS 1.2 cipher suites rustls (ring) implements, by their Go names.
pub const CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Go's names of the TLS 1.3 suites: accepted and, as in Go, without effect.
const TLS13_SUITES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The curves (key-exchange groups) rustls (ring) implements, by their Go names.
pub const CURVES: &[&str] = &["X25519", "CurveP256", "CurveP384"];

/// The headers exporter-toolkit lets a web configuration set.
const HEADERS: &[&str] = &[
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
];

/// Reads and checks the file at `path`. Every problem is a sentence that
/// names the field; none quotes a hash or a key.
pub fn load(path: &Path) -> Result<WebConfig, Vec<String>> {
    // Looked at before reading: a change while reading is seen later.
    let stamp = super::tls::stamp(path);
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
    let mut config = parse(&text, path.parent().unwrap_or(Path::new(".")))?;
    config.path = path.to_path_buf();
    config.stamp = stamp;
    if let Some(tls) = &config.tls {
        super::tls::build(tls).map_err(|e| vec![e])?;
    }
    Ok(config)
}

/// Parses the file's text; relative paths are resolved against `dir`.
/// Reads no file.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig, Vec<String>> {
    let raw: RawFile = if text.trim().is_empty() {
        RawFile::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| vec![yaml_error(&e)])?
    };
    let mut errors = Vec::new();
    if raw.rate_limit.is_some() {
        errors.push("rate_limit: not supported by dbwarden; remove it".to_string());
    }
    let tls = raw
        .tls_server_config
        .and_then(|t| tls_settings(t, dir, &mut errors));
    let mut users = BTreeMap::new();
    for (user, hash) in raw.basic_auth_users {
        if user.is_empty() || user.contains(':') {
            errors.push(format!(
                "basic_auth_users: {user:?} is not a valid user name (not empty, no ':')"
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            errors.push(format!(
                "basic_auth_users.{user}: not a bcrypt hash (make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)"
            ));
        }
        users.insert(user, Secret::new(hash));
    }
    let mut headers = Vec::new();
    for (name, value) in raw.http_server_config.headers {
        match header_error(&name, &value) {
            Some(e) => errors.push(format!("http_server_config.headers.{name}: {e}")),
            None => headers.push((name, value)),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(WebConfig {
        path: PathBuf::new(),
        tls,
        users,
        headers,
        stamp: None,
    })
}

/// serde_yaml_ng's message names the field path and the position; it never
/// quotes the offending value's text beyond the field's name.
fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    format!("invalid web configuration: {e}")
}

fn header_error(name: &str, value: &str) -> Option<String> {
    let Some(known) = HEADERS.iter().find(|h| h.eq_ignore_ascii_case(name)) else {
        return Some(format!(
            "this header cannot be configured: the web configuration may set {}",
            HEADERS.join(", ")
        ));
    };
    let ok = match *known {
        "X-Content-Type-Options" => value == "nosniff",
        "X-Frame-Options" => {
            value.eq_ignore_ascii_case("deny") || value.eq_ignore_ascii_case("sameorigin")
        }
        _ => axum::http::HeaderValue::from_str(value).is_ok(),
    };
    if ok {
        return None;
    }
    Some(match *known {
        "X-Content-Type-Options" => "must be \"nosniff\"".into(),
        "X-Frame-Options" => "must be \"deny\" or \"sameorigin\"".into(),
        _ => "not a valid header value".into(),
    })
}

fn tls_settings(t: RawTls, dir: &Path, errors: &mut Vec<String>) -> Option<TlsSettings> {
    let before = errors.len();
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    let mut file = |value: Option<PathBuf>, key: &str| -> PathBuf {
        match value {
            Some(p) if !p.as_os_str().is_empty() => resolve(p),
            _ => {
                errors.push(format!("tls_server_config.{key}: required"));
                PathBuf::new()
            }
        }
    };
    let cert_file = file(t.cert_file, "cert_file");
    let key_file = file(t.key_file, "key_file");
    let client_auth = t.client_auth_type.unwrap_or(ClientAuth::NoClientCert);
    let client_ca_file = t
        .client_ca_file
        .filter(|p| !p.as_os_str().is_empty())
        .map(resolve);
    match (&client_ca_file, client_auth.verifies()) {
        (None, true) => errors.push(format!(
            "tls_server_config.client_ca_file: required with client_auth_type {client_auth:?}"
        )),
        (Some(_), false) => errors.push(format!(
            "tls_server_config.client_ca_file: set, but client_auth_type {client_auth:?} verifies no client certificate (use VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
        )),
        _ => {}
    }
    if !t.client_allowed_sans.is_empty() && !client_auth.verifies() {
        errors.push(format!(
            "tls_server_config.client_allowed_sans: set, but client_auth_type {client_auth:?} verifies no client certificate"
        ));
    }
    for san in &t.client_allowed_sans {
        if rustls_pki_types::ServerName::try_from(san.as_str()).is_err() {
            errors.push(format!(
                "tls_server_config.client_allowed_sans: {san:?} is neither a DNS name nor an IP address (the only SANs dbwarden checks)"
            ));
        }
    }
    let version = |v: &Option<String>, key: &str, errors: &mut Vec<String>| -> Option<u8> {
        match v.as_deref() {
            None | Some("") => None,
            Some("TLS10") => Some(10),
            Some("TLS11") => Some(11),
            Some("TLS12") => Some(12),
            Some("TLS13") => Some(13),
            Some(other) => {
                errors.push(format!(
                    "tls_server_config.{key}: unknown TLS version {other:?}: TLS10, TLS11, TLS12 or TLS13"
                ));
                None
            }
        }
    };
    // Go's default minimum is TLS 1.2; rustls implements 1.2 and 1.3 only,
    // so a lower minimum allows the same two.
    let min = version(&t.min_version, "min_version", errors).unwrap_or(12);
    let max = version(&t.max_version, "max_version", errors).unwrap_or(13);
    if max < 12 {
        errors.push(format!(
            "tls_server_config.max_version: {}: rustls implements TLS 1.2 and 1.3 only",
            t.max_version.as_deref().unwrap_or_default()
        ));
    } else if min > max {
        errors.push("tls_server_config.min_version: higher than max_version".to_string());
    }
    let mut cipher_suites = Vec::new();
    for s in t.cipher_suites {
        // Go also names the ChaCha20 suites without their hash.
        let name = if s.ends_with("CHACHA20_POLY1305") {
            format!("{s}_SHA256")
        } else {
            s.clone()
        };
        if CIPHER_SUITES.contains(&name.as_str()) {
            cipher_suites.push(name);
        } else if TLS13_SUITES.contains(&name.as_str()) {
            // Not configurable in Go either: TLS 1.3 always offers its suites.
        } else {
            errors.push(format!(
                "tls_server_config.cipher_suites: {s} is not supported by rustls; it implements {}",
                CIPHER_SUITES.join(", ")
            ));
        }
    }
    let mut curve_preferences = Vec::new();
    for c in t.curve_preferences {
        if CURVES.contains(&c.as_str()) {
            curve_preferences.push(c);
        } else {
            errors.push(format!(
                "tls_server_config.curve_preferences: {c} is not supported by rustls; it implements {}",
                CURVES.join(", ")
            ));
        }
    }
    if errors.len() > before {
        return None;
    }
    Some(TlsSettings {
        cert_file,
        key_file,
        client_auth,
        client_ca_file,
        client_allowed_sans: t.client_allowed_sans,
        tls12: min <= 12,
        tls13: max >= 13,
        cipher_suites,
        curve_preferences,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$2a9Mu8n7jTq3W2VqYj6D8O7NKtjRRKCzHs2D7jGiwvOXzFyu8Tb7a";

    fn parse_ok(text: &str) -> WebConfig {
        parse(text, Path::new("/etc/dbwarden")).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn errors(text: &str) -> String {
        parse(text, Path::new("/etc/dbwarden"))
            .expect_err("must be refused")
            .join("\n")
    }

    #[test]
    fn reads_every_field_and_resolves_paths() {
        let c = parse_ok(&format!(
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             client_allowed_sans: [prom.example, 10.0.0.1]\n  min_version: TLS12\n  max_version: TLS13\n  \
             cipher_suites: [TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305, TLS_AES_128_GCM_SHA256]\n  \
             curve_preferences: [X25519]\n  prefer_server_cipher_suites: true\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n\
             basic_auth_users:\n  prometheus: \"{HASH}\"\n"
        ));
        let tls = c.tls.as_ref().expect("tls");
        assert_eq!(tls.cert_file, Path::new("/etc/dbwarden/tls/server.crt"));
        assert_eq!(tls.key_file, Path::new("/abs/server.key"));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(
            tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/dbwarden/ca.crt"))
        );
        assert_eq!(
            tls.cipher_suites,
            vec!["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"]
        );
        assert!(tls.tls12 && tls.tls13);
        assert_eq!(c.headers, vec![("X-Frame-Options".into(), "deny".into())]);
        assert!(c.authentication());
        assert!(!format!("{c:?}").contains("$2y$"), "hashes never print");
    }

    #[test]
    fn an_empty_file_configures_nothing() {
        let c = parse_ok("");
        assert!(c.tls.is_none() && c.users.is_empty() && !c.authentication());
    }

    #[test]
    fn every_client_auth_type_is_read() {
        for (name, verifies) in [
            ("NoClientCert", false),
            ("RequestClientCert", false),
            ("RequireAnyClientCert", false),
            ("RequireClientCert", false),
            ("VerifyClientCertIfGiven", true),
            ("RequireAndVerifyClientCert", true),
        ] {
            let ca = if verifies {
                "\n  client_ca_file: ca.crt"
            } else {
                ""
            };
            let c = parse_ok(&format!(
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: {name}{ca}\n"
            ));
            assert_eq!(c.tls.unwrap().client_auth.verifies(), verifies, "{name}");
        }
        assert!(
            errors(
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n"
            )
            .contains("unknown variant `Sometimes`")
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = errors("tls_server_config:\n  cert_file: a\n  key_file: b\n  cert_fil: c\n");
        assert!(
            e.contains("tls_server_config") && e.contains("cert_fil"),
            "{e}"
        );
        let e = errors("basic_auth:\n  a: b\n");
        assert!(e.contains("unknown field `basic_auth`"), "{e}");
    }

    #[test]
    fn what_rustls_cannot_do_is_refused_by_name() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let e = errors(&format!(
            "{base}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"
        ));
        assert!(
            e.contains("TLS_RSA_WITH_AES_128_CBC_SHA is not supported by rustls"),
            "{e}"
        );
        let e = errors(&format!("{base}  curve_preferences: [CurveP521]\n"));
        assert!(e.contains("CurveP521 is not supported"), "{e}");
        let e = errors(&format!("{base}  max_version: TLS11\n"));
        assert!(e.contains("max_version: TLS11"), "{e}");
        let e = errors(&format!(
            "{base}  min_version: TLS13\n  max_version: TLS12\n"
        ));
        assert!(e.contains("higher than max_version"), "{e}");
        let c = parse_ok(&format!("{base}  min_version: TLS10\n"));
        assert!(c.tls.unwrap().tls12);
        let e = errors("rate_limit:\n  interval: 1s\n");
        assert!(e.contains("rate_limit: not supported"), "{e}");
    }

    #[test]
    fn client_auth_needs_its_ca_and_sans_need_verification() {
        let base = "tls_server_config:\n  cert_file: a\n  key_file: b\n";
        let e = errors(&format!(
            "{base}  client_auth_type: RequireAndVerifyClientCert\n"
        ));
        assert!(e.contains("client_ca_file: required"), "{e}");
        let e = errors(&format!("{base}  client_ca_file: ca.crt\n"));
        assert!(e.contains("verifies no client certificate"), "{e}");
        let e = errors(&format!("{base}  client_allowed_sans: [a.example]\n"));
        assert!(e.contains("client_allowed_sans: set"), "{e}");
        let e = errors("tls_server_config:\n  key_file: b\n");
        assert!(e.contains("cert_file: required"), "{e}");
    }

    #[test]
    fn users_and_headers_are_checked() {
        let e = errors("basic_auth_users:\n  prometheus: secret-in-clear\n");
        assert!(
            e.contains("basic_auth_users.prometheus: not a bcrypt hash"),
            "{e}"
        );
        assert!(!e.contains("secret-in-clear"), "{e}");
        let e = errors("http_server_config:\n  headers:\n    X-Powered-By: me\n");
        assert!(
            e.contains("X-Powered-By: this header cannot be configured"),
            "{e}"
        );
        let e = errors("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n");
        assert!(e.contains("must be \"nosniff\""), "{e}");
    }
}
