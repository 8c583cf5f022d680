//! Secrets that never print.
//!
//! A [`Secret`] holds a password or token. Its `Debug` and `Display` print
//! `<redacted>`, and it does not implement `Serialize`, so it cannot leak
//! through logs, errors or the `dbwarden config` output by accident.

use std::fmt;

/// A secret value: readable only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call this only where the value is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What [`redact_url`] puts where a password was.
pub const REDACTED: &str = "<redacted>";

/// Replaces every password in a connection string with `<redacted>`: the
/// password of a `scheme://user:password@host/...` URL, and the value of any
/// `password=...` parameter (URL query or libpq `key=value` form).
///
/// Works on any string: text without a password comes back unchanged, so it
/// is safe to pass every string value an error message may echo.
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    if let Some((userinfo_password, _)) = userinfo_password_span(url) {
        out.push_str(&url[..userinfo_password.start]);
        out.push_str(REDACTED);
        rest = &url[userinfo_password.end..];
    }
    let mut at = 0;
    for span in password_param_spans(rest) {
        out.push_str(&rest[at..span.start]);
        out.push_str(REDACTED);
        at = span.end;
    }
    out.push_str(&rest[at..]);
    out
}

/// The password written in a connection string (URL userinfo, or a
/// `password=` parameter), exactly as written: still percent-encoded.
pub fn url_password(url: &str) -> Option<&str> {
    if let Some((span, _)) = userinfo_password_span(url) {
        return Some(&url[span]);
    }
    password_param_spans(url)
        .into_iter()
        .next()
        .map(|span| &url[span])
}

/// The byte range of the password in `scheme://user:password@host`, and the
/// end of the authority.
fn userinfo_password_span(url: &str) -> Option<(std::ops::Range<usize>, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The last '@' ends the userinfo: passwords may contain '@' only
    // percent-encoded, but be generous and take the last one.
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some((start + colon + 1..start + at, start + authority_end))
}

/// The byte ranges of the values of `password=` parameters, at the start of
/// the text or after `?`, `&`, `;` or whitespace. A value ends at `&`, `#`
/// or whitespace, or at the closing quote when it starts with `'`.
fn password_param_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    const KEY: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find(KEY) {
        let key_start = from + found;
        let value_start = key_start + KEY.len();
        from = value_start;
        let boundary = text[..key_start]
            .chars()
            .next_back()
            .is_none_or(|c| matches!(c, '?' | '&' | ';') || c.is_whitespace());
        if !boundary {
            continue;
        }
        let value = &text[value_start..];
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            // libpq quoting: backslash escapes, a quote ends the value.
            let mut escaped = false;
            let mut end = quoted.len();
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            value
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .unwrap_or(value.len())
        };
        if len > 0 {
            spans.push(value_start..value_start + len);
        }
        from = value_start + len;
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cr%40t@db:5432/x?sslmode=require"),
            "postgres://app:<redacted>@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("postgres://app:pw@db/x?user=a&password=p%40ss&sslmode=require"),
            "postgres://app:<redacted>@db/x?user=a&password=<redacted>&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/x?PASSWORD=hunter2#frag"),
            "postgres://db/x?PASSWORD=<redacted>#frag"
        );
        assert_eq!(
            redact_url("host=db password='a b\\' c' user=x"),
            "host=db password=<redacted> user=x"
        );
        assert_eq!(redact_url("sslpassword=x"), "sslpassword=x");
        assert_eq!(redact_url("password="), "password=");
    }

    #[test]
    fn url_password_finds_either_form() {
        assert_eq!(url_password("postgres://a:b%40c@h/d"), Some("b%40c"));
        assert_eq!(url_password("postgres://a@h/d?password=x&y=1"), Some("x"));
        assert_eq!(url_password("postgres://a@h/d"), None);
        assert_eq!(url_password("postgres://a:@h/d"), Some(""));
    }
}
