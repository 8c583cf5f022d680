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
