//! The vocabulary every part's settings share. Each part owns the types of
//! its own settings (thresholds in `evaluate`, targets in `observe`,
//! policies in `remediate`, ...), derives serde for them, and validates
//! them with what is here:
//!
//! - [`duration`], [`ratio`]: how durations (`"5s"`, `"1h 30m"`) and ratios
//!   (0.0 to 1.0) are read and written, with messages that say what to write;
//! - [`Issues`]: every mistake found, each at its key path as the user wrote
//!   it, so that all of them are reported at once;
//! - [`Context`]: what validation may look at beyond the value itself (the
//!   environment, the configured targets, where an inherited value was written).
//!
//! Nothing here reads files or the process environment: [`crate::config`]
//! loads and hands them over.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

/// One mistake in the configuration, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The key path as written in the file (`postgres.main.poll_interval`);
    /// empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects issues while validating, so that the user sees every mistake at once.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Where a value a target uses was written, when not in its own table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Written at this other key path (`defaults.poll_interval`,
    /// `thresholds.disk_free.min_ratio`) and inherited.
    Inherited(String),
    /// Written nowhere: the built-in default.
    Default,
}

/// What validation may read besides the values themselves.
#[derive(Debug, Default)]
pub struct Context {
    /// The process environment (tests pass their own): password and token
    /// variables are read from it, and `HOSTNAME`.
    pub env: Vec<(String, String)>,
    /// The PostgreSQL and the Neo4j targets' names.
    pub postgres: Vec<String>,
    pub neo4j: Vec<String>,
    /// Whether `[remediation]` is configured (evictions need it).
    pub remediation: bool,
    /// `remediation.instance` as written, if it is.
    pub instance: Option<String>,
    /// For values a target inherited, by the key path in the target's table.
    pub origins: BTreeMap<String, Origin>,
    /// The key paths whose values serde refused (already reported).
    pub rejected: BTreeSet<String>,
}

impl Context {
    /// An environment variable's value, if set.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Where the value at `path` was written: `path` itself, the key it was
    /// inherited from, or `None` for a built-in default.
    pub fn written_at(&self, path: &str) -> Option<String> {
        match self.origins.get(path) {
            None => Some(path.to_string()),
            Some(Origin::Inherited(from)) => Some(from.clone()),
            Some(Origin::Default) => None,
        }
    }

    /// Whether a value at or under `path` was refused (and reported):
    /// validation need not say more about it.
    pub fn rejected_under(&self, path: &str) -> bool {
        self.rejected
            .iter()
            .any(|r| r == path || r.starts_with(&format!("{path}.")))
    }

    /// Whether the value at `path` was written in that very table.
    pub fn written_here(&self, path: &str) -> bool {
        !self.origins.contains_key(path)
    }
}

/// `parent.key`: a key path. Keys that are not bare TOML keys are quoted.
pub fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// `"5s"`: a duration as the user would write it, quoted.
pub fn q(d: Duration) -> String {
    format!("{:?}", humantime::format_duration(d).to_string())
}

/// A name of a target, a policy or a volume: 1-63 lowercase letters, digits, '_' or '-'.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An environment variable's name: letters, digits and '_', not starting with a digit.
pub fn valid_env_name(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Reports `path` unless `p` is absolute.
pub fn absolute(p: &Path, path: &str, issues: &mut Issues) {
    if !p.is_absolute() {
        issues.push(
            path,
            format!("{:?} must be an absolute path", p.display().to_string()),
        );
    }
}

/// Reports `path` unless `min <= v <= max`.
pub fn within(v: Duration, min: Duration, max: Duration, path: &str, issues: &mut Issues) {
    if v < min {
        issues.push(path, format!("{} is too short: at least {}", q(v), q(min)));
    } else if v > max {
        issues.push(path, format!("{} is too long: at most {}", q(v), q(max)));
    }
}

/// How a secret read from a file or a variable is trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    /// Passwords: only the line ending an editor or `echo` adds (a password
    /// may end in spaces).
    LineEnd,
    /// Tokens: surrounding whitespace.
    Whitespace,
}

/// Reads a secret from the environment variable named at `var_key`, or
/// from the file named at `file_key` (one of the two). Problems are
/// reported at those keys without ever echoing a value that may be the
/// secret itself.
pub fn read_secret(
    what: &str,
    table: &str,
    (var_key, var): (&str, Option<&str>),
    (file_key, file): (&str, Option<&Path>),
    trim: Trim,
    ctx: &Context,
    issues: &mut Issues,
) -> Option<Secret> {
    let trimmed = |v: &str| -> String {
        match trim {
            Trim::Whitespace => v.trim().to_string(),
            Trim::LineEnd => {
                let v = v.strip_suffix('\n').unwrap_or(v);
                v.strip_suffix('\r').unwrap_or(v).to_string()
            }
        }
    };
    if let (Some(var), Some(file)) = (var, file) {
        // Not echoed unless it is a variable's name: it may be the secret itself.
        let var = if valid_env_name(var) {
            format!(" = {var:?}")
        } else {
            String::new()
        };
        issues.push(
            table,
            format!(
                "two {what} sources ({var_key}{var}, {file_key} = {:?}): use only one",
                file.display().to_string()
            ),
        );
        return None;
    }
    if let Some(var) = var {
        let at = join(table, var_key);
        if !valid_env_name(var) {
            issues.push(
                at,
                "is not an environment variable name (letters, digits and '_', not starting with a digit): write the name of the variable that holds the secret, never the secret itself",
            );
            return None;
        }
        return match ctx.var(var).map(trimmed) {
            Some(v) if !v.is_empty() => Some(Secret::new(v)),
            Some(_) => {
                issues.push(at, format!("environment variable {var:?} is empty"));
                None
            }
            None => {
                issues.push(at, format!("environment variable {var:?} is not set"));
                None
            }
        };
    }
    let file = file?;
    let at = join(table, file_key);
    let shown = file.display().to_string();
    match std::fs::read_to_string(file) {
        Ok(v) if !trimmed(&v).is_empty() => Some(Secret::new(trimmed(&v))),
        Ok(_) => {
            issues.push(at, format!("file {shown:?} is empty"));
            None
        }
        Err(e) => {
            issues.push(at, format!("cannot read {shown:?}: {e}"));
            None
        }
    }
}

/// Durations as the configuration writes them: strings such as `"500ms"`,
/// `"5s"`, `"1h 30m"` or `"1day"` (humantime). Use with
/// `#[serde(with = "crate::settings::duration")]`, or `duration::option`
/// for an `Option<Duration>`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de};

    /// What a duration looks like, for messages.
    pub const EXPECTED: &str = "a duration such as \"5s\", \"10m\" or \"1h 30m\"";

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v.trim()).map_err(|e| {
                    E::custom(format!(
                        "invalid duration {v:?}: {e}; write e.g. \"5s\", \"10m\" or \"1h 30m\""
                    ))
                })
            }
        }
        d.deserialize_str(Visitor)
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// Ratios from 0.0 to 1.0 (0.3 means 30%), refused outside that range.
pub mod ratio {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(r: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*r)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && (0.0..=1.0).contains(&v) {
            Ok(v)
        } else {
            Err(de::Error::custom(format!(
                "{v} is out of range: a ratio from 0.0 to 1.0 (0.3 means 30%)"
            )))
        }
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(r: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match r {
                Some(r) => s.serialize_f64(*r),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] f64);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// A list that, when written, names at least one thing: an empty
/// `match_users = []` would read as "no restriction", the opposite of what
/// it seems to say. Use with `#[serde(default, deserialize_with = ...)]`.
pub fn non_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    let list = Vec::<T>::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom(
            "empty: name at least one, or leave the key out",
        ));
    }
    Ok(list)
}

/// The field names serde knows for a struct `T`, read from its derived
/// `Deserialize` (for messages that point a misplaced key to its table).
pub fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Deserializer, Visitor};

    #[derive(Debug)]
    struct Found(&'static [&'static str]);
    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("field names")
        }
    }
    impl std::error::Error for Found {}
    impl de::Error for Found {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Found(&[])
        }
    }
    struct Names;
    impl<'de> Deserializer<'de> for Names {
        type Error = Found;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Found> {
            Err(Found(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Found> {
            Err(Found(fields))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    match T::deserialize(Names) {
        Err(Found(fields)) => fields,
        Ok(_) => &[],
    }
}

/// A regular expression as written, compiled once; compared and printed by its text.
#[derive(Clone)]
pub struct Pattern(pub regex::Regex);

impl Pattern {
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0.as_str())
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        regex::Regex::new(&text).map(Pattern).map_err(|e| {
            serde::de::Error::custom(format!("invalid regex {text:?}: {}", regex_reason(&e)))
        })
    }
}

/// The regex crate's message without its multi-line diagram: the line
/// after `error: `, e.g. "unclosed group".
pub fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        assert_eq!(join("", "server"), "server");
        assert_eq!(join("postgres", "main"), "postgres.main");
        assert_eq!(join("postgres", "my db"), "postgres.\"my db\"");
        assert_eq!(join("postgres", ""), "postgres.\"\"");
    }

    #[test]
    fn field_names_come_from_the_derived_deserialize() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct S {
            a: u32,
            #[serde(rename = "for")]
            b: u32,
        }
        assert_eq!(field_names::<S>(), ["a", "for"]);
        assert!(field_names::<u32>().is_empty());
    }
}
