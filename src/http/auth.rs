//! Bearer-token checks, compared in constant time.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use subtle::ConstantTimeEq;

use crate::secret::Secret;

/// True when the request carries `Authorization: Bearer <token>` with the
/// expected token. The comparison takes the same time wherever the tokens
/// differ (only their lengths may be told apart).
pub fn bearer_ok(headers: &HeaderMap, expected: &Secret) -> bool {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    token_ok(token.trim(), expected)
}

/// True when `token` (from a form, say) is the expected one, compared in
/// constant time like [`bearer_ok`].
pub fn token_ok(token: &str, expected: &Secret) -> bool {
    bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn accepts_only_the_right_bearer_token() {
        let s = Secret::new("t0ken");
        assert!(bearer_ok(&headers("Bearer t0ken"), &s));
        assert!(!bearer_ok(&headers("Bearer t0kem"), &s));
        assert!(!bearer_ok(&headers("Bearer t0ken2"), &s));
        assert!(!bearer_ok(&headers("Basic t0ken"), &s));
        assert!(!bearer_ok(&HeaderMap::new(), &s));
    }
}

/// How a request was refused: the `reason` label of
/// `dbwarden_http_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No (or malformed) credentials where authentication is required.
    Unauthenticated,
    /// A basic-auth user or password that does not match.
    WrongCredentials,
    /// A wrong or missing bearer token on an operator endpoint.
    BearerToken,
    /// A client certificate missing, not verified by the client CA, or
    /// without an allowed SAN.
    ClientCertificate,
    /// Any other failed TLS handshake (plain HTTP on the TLS port, a client
    /// that does not trust the certificate, no common version or suite).
    TlsHandshake,
    /// The connection bound was reached: the connection was closed at once.
    ConnectionLimit,
    /// Request headers not received within the header read timeout (or a
    /// TLS handshake not finished within it).
    HeaderTimeout,
    /// Request headers larger than the limit: answered 431.
    HeaderTooLarge,
    /// A request (its body included) that took longer than the request
    /// timeout: answered 503.
    RequestTimeout,
}

impl Rejection {
    pub const ALL: [Rejection; 9] = [
        Rejection::Unauthenticated,
        Rejection::WrongCredentials,
        Rejection::BearerToken,
        Rejection::ClientCertificate,
        Rejection::TlsHandshake,
        Rejection::ConnectionLimit,
        Rejection::HeaderTimeout,
        Rejection::HeaderTooLarge,
        Rejection::RequestTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Unauthenticated => "unauthenticated",
            Rejection::WrongCredentials => "wrong_credentials",
            Rejection::BearerToken => "bearer_token",
            Rejection::ClientCertificate => "client_certificate",
            Rejection::TlsHandshake => "tls_handshake",
            Rejection::ConnectionLimit => "connection_limit",
            Rejection::HeaderTimeout => "header_timeout",
            Rejection::HeaderTooLarge => "header_too_large",
            Rejection::RequestTimeout => "request_timeout",
        }
    }
}

/// A bcrypt hash (cost 10) of a random password nobody knows: unknown users
/// are checked against it, so that they take as long as known ones.
const DUMMY_HASH: &str = "$2b$10$2a9Mu8n7jTq3W2VqYj6D8O7NKtjRRKCzHs2D7jGiwvOXzFyu8Tb7a";

/// How many successful checks are remembered (exporter-toolkit keeps 100).
const CACHE_SIZE: usize = 100;

/// `basic_auth_users`: bcrypt-checked passwords. A bcrypt check costs tens
/// of milliseconds by design, so successful checks are remembered (by a
/// SHA-256 of user, hash and password; never the password itself) and
/// checks run one at a time: a client guessing passwords occupies one
/// blocking thread, never the runtime.
#[derive(Debug, Default)]
pub struct BasicAuth {
    users: std::collections::BTreeMap<String, Secret>,
    verified: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl BasicAuth {
    pub fn new(users: std::collections::BTreeMap<String, Secret>) -> Self {
        BasicAuth {
            users,
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks `Authorization: Basic ...` against the users.
    pub async fn check(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        let (user, password) = basic_credentials(headers).ok_or(Rejection::Unauthenticated)?;
        let hash = self.users.get(&user);
        let key = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            for part in [
                user.as_bytes(),
                hash.map_or(&[][..], |h| h.expose().as_bytes()),
                password.as_bytes(),
            ] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
            <[u8; 32]>::from(h.finalize())
        };
        let cached = |v: &Self| {
            v.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
        };
        if hash.is_some() && cached(self) {
            return Ok(());
        }
        let _one = self.one_at_a_time.lock().await;
        if hash.is_some() && cached(self) {
            return Ok(());
        }
        let known = hash.is_some();
        let hash = hash.map_or_else(|| DUMMY_HASH.to_string(), |h| h.expose().to_string());
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if !(ok && known) {
            return Err(Rejection::WrongCredentials);
        }
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHE_SIZE {
            verified.clear();
        }
        verified.insert(key);
        Ok(())
    }
}

/// The user and password of `Authorization: Basic base64(user:password)`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod basic_tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderMap {
        use base64::Engine;
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        h.insert(AUTHORIZATION, format!("Basic {v}").parse().unwrap());
        h
    }

    #[tokio::test]
    async fn checks_users_and_remembers_only_successes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new([("prom".to_string(), Secret::new(hash))].into());
        assert_eq!(auth.check(&basic("prom", "s3cret")).await, Ok(()));
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        assert_eq!(auth.check(&basic("prom", "s3cret")).await, Ok(()));
        assert_eq!(
            auth.check(&basic("prom", "wrong")).await,
            Err(Rejection::WrongCredentials)
        );
        assert_eq!(
            auth.check(&basic("nobody", "s3cret")).await,
            Err(Rejection::WrongCredentials)
        );
        assert_eq!(auth.verified.lock().unwrap().len(), 1);
        assert_eq!(
            auth.check(&HeaderMap::new()).await,
            Err(Rejection::Unauthenticated)
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(auth.check(&bearer).await, Err(Rejection::Unauthenticated));
    }

    #[test]
    fn every_rejection_is_a_label_value_of_the_metric() {
        let reasons: Vec<&str> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            reasons,
            crate::telemetry::metrics::HTTP_REJECTION_REASONS.to_vec()
        );
    }

    #[test]
    fn the_dummy_hash_is_a_cost_10_bcrypt_hash() {
        let parts: bcrypt::HashParts = DUMMY_HASH.parse().unwrap();
        assert_eq!(parts.get_cost(), 10);
    }
}
