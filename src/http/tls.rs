//! TLS of the HTTP surface: the rustls configuration built from the web
//! configuration's `tls_server_config` (ring provider, no OpenSSL), and
//! [`TlsReloader`], which hands each new connection the configuration of
//! the certificate, key and client CA files as they are now: when one
//! changes (cert-manager rotates a Secret's files in place), the next
//! handshake uses the new files, without a restart.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, NamedGroup, RootCertStore,
    SignatureScheme, SupportedCipherSuite,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::web_config::{ClientAuth, TlsSettings};

/// Builds the server configuration; the error names the field and file.
pub fn build(t: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(provider(t));
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (t.tls12, &rustls::version::TLS12),
        (t.tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter_map(|(on, v)| on.then_some(v))
    .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    let algorithms = provider.signature_verification_algorithms;
    let builder = match t.client_auth {
        ClientAuth::NoClientCert => builder.with_no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => builder
            .with_client_cert_verifier(Arc::new(AnyClientCert {
                mandatory: t.client_auth == ClientAuth::RequireAnyClientCert,
                algorithms,
            })),
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = t.client_ca_file.as_deref().unwrap_or(Path::new(""));
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca, "client_ca_file")? {
                roots.add(cert).map_err(|e| {
                    format!(
                        "tls_server_config.client_ca_file: {}: not a usable CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if t.client_auth == ClientAuth::VerifyClientCertIfGiven {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("tls_server_config.client_ca_file: {e}"))?;
            if t.client_allowed_sans.is_empty() {
                builder.with_client_cert_verifier(verifier)
            } else {
                builder.with_client_cert_verifier(Arc::new(AllowedSans {
                    inner: verifier,
                    sans: t.client_allowed_sans.clone(),
                }))
            }
        }
    };
    let certs = certificates(&t.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&t.key_file).map_err(|e| {
        format!(
            "tls_server_config.key_file: {}: no private key read: {e}",
            t.key_file.display()
        )
    })?;
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!(
            "tls_server_config: the key {} does not go with the certificate {}: {e}",
            t.key_file.display(),
            t.cert_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// ring, with the cipher suites and groups the settings allow.
fn provider(t: &TlsSettings) -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.retain(|s| match s {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(_) => {
            t.cipher_suites.is_empty()
                || s.suite()
                    .as_str()
                    .is_some_and(|n| t.cipher_suites.iter().any(|c| c == n))
        }
    });
    if !t.curve_preferences.is_empty() {
        let all = std::mem::take(&mut p.kx_groups);
        for name in &t.curve_preferences {
            let group = match name.as_str() {
                "X25519" => NamedGroup::X25519,
                "CurveP256" => NamedGroup::secp256r1,
                _ => NamedGroup::secp384r1,
            };
            p.kx_groups
                .extend(all.iter().filter(|g| g.name() == group).copied());
        }
    }
    p
}

fn certificates(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "tls_server_config.{key}: {}: cannot read certificates: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "tls_server_config.{key}: {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// `RequestClientCert`, `RequireAnyClientCert`: a certificate is asked for
/// (and required by the second) but not verified against a CA; the client
/// still proves it holds the certificate's key.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `client_allowed_sans`: after the CA verified the certificate, it must be
/// valid for one of the listed DNS names or IP addresses.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<String>,
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let allowed = self.sans.iter().any(|san| {
            ServerName::try_from(san.as_str())
                .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
        });
        if allowed {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What identifies a file's content without reading it: modification
/// time, size and inode (a Kubernetes Secret volume swaps a symlink, so
/// the inode changes even when the time does not).
pub(crate) type Stamp = Option<(SystemTime, u64, u64)>;

pub(crate) fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// The TLS configuration in force, rebuilt when its files change.
#[derive(Debug)]
pub struct TlsReloader {
    settings: TlsSettings,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: Vec<Stamp>,
    config: Arc<ServerConfig>,
    /// The stamps of files that did not build (e.g. a new certificate
    /// whose key is not written yet): not retried until they change again.
    failed: Option<Vec<Stamp>>,
}

impl TlsReloader {
    pub fn new(settings: TlsSettings) -> Result<Self, String> {
        let stamps = Self::stamps_of(&settings);
        let config = Arc::new(build(&settings)?);
        Ok(TlsReloader {
            settings,
            loaded: Mutex::new(Loaded {
                stamps,
                config,
                failed: None,
            }),
        })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    fn stamps_of(t: &TlsSettings) -> Vec<Stamp> {
        let mut s = vec![stamp(&t.cert_file), stamp(&t.key_file)];
        if let Some(ca) = &t.client_ca_file {
            s.push(stamp(ca));
        }
        s
    }

    /// The configuration for the next handshake: the files are looked at
    /// (three `stat`s) and read again only when one changed. Files that do
    /// not build keep the previous configuration, with a warning.
    pub fn current(&self) -> Arc<ServerConfig> {
        let now = Self::stamps_of(&self.settings);
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if now != loaded.stamps && loaded.failed.as_ref() != Some(&now) {
            match build(&self.settings) {
                Ok(config) => {
                    tracing::info!(
                        cert_file = %self.settings.cert_file.display(),
                        "TLS files changed: new connections use them"
                    );
                    loaded.config = Arc::new(config);
                    loaded.stamps = now;
                    loaded.failed = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS files changed but cannot be used: new connections keep the previous certificate");
                    loaded.failed = Some(now);
                }
            }
        }
        loaded.config.clone()
    }
}
