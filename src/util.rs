//! Small serde helpers shared by several modules.

use std::time::Duration;

/// Serializes a duration as a humantime string ("5m 30s").
pub fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}
