//! postgres_exporter's custom queries (`queries.yaml`), read as probes, so
//! a team moves its queries over without rewriting them:
//!
//! ```yaml
//! pg_postmaster:
//!   query: "SELECT pg_postmaster_start_time() AS start_time_seconds"
//!   master: true
//!   cache_seconds: 60
//!   metrics:
//!     - start_time_seconds:
//!         usage: "GAUGE"
//!         description: "Time at which postmaster started"
//! ```
//!
//! Each query becomes the probe of its name: `LABEL` columns are its
//! labels, `GAUGE`, `COUNTER` and `DURATION` columns its values (exported
//! as `dbwarden_probe_<query>_<column>`, all as gauges), `DISCARD` columns
//! are dropped. `master` is accepted (a probe always runs in the target's
//! own database), `cache_seconds` is the probe's interval, `runonserver` is
//! accepted and not applied (a query the server cannot run fails visibly,
//! `query`). `MAPPEDMETRIC` and `HISTOGRAM` are refused with a message:
//! not supported yet. An imported probe may export up to the series cap's
//! limit (10000), as a postgres_exporter query has no cap of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::settings::{MAX_SERIES_LIMIT, ProbeSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    query: String,
    #[serde(default)]
    #[allow(dead_code)]
    master: bool,
    #[serde(default)]
    cache_seconds: Option<u64>,
    #[serde(default)]
    #[allow(dead_code)]
    runonserver: Option<String>,
    metrics: Vec<BTreeMap<String, Column>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Column {
    usage: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    mapping: Option<serde_yaml_ng::Value>,
}

/// Reads `path` into probes by query name, or every mistake found, each as
/// `(query name or "", message)`.
pub fn read(path: &Path) -> Result<BTreeMap<String, ProbeSettings>, Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![(
            String::new(),
            format!("cannot read {:?}: {e}", path.display().to_string()),
        )]
    })?;
    parse(&text)
}

/// Parses the text of a queries file (see [`read`]).
pub fn parse(text: &str) -> Result<BTreeMap<String, ProbeSettings>, Vec<(String, String)>> {
    let queries: BTreeMap<String, Query> = serde_yaml_ng::from_str(text).map_err(|e| {
        vec![(
            String::new(),
            format!("not postgres_exporter's queries.yaml format: {e}"),
        )]
    })?;
    let mut errors = Vec::new();
    let mut probes = BTreeMap::new();
    for (name, q) in queries {
        let mut p = ProbeSettings {
            sql: Some(q.query.trim().trim_end_matches(';').to_string()),
            interval: q.cache_seconds.map(Duration::from_secs),
            max_series: Some(MAX_SERIES_LIMIT),
            ..Default::default()
        };
        if q.metrics.is_empty() {
            errors.push((name.clone(), "no metrics: list the query's columns".into()));
        }
        for (column, c) in q.metrics.iter().flatten() {
            match c.usage.to_ascii_uppercase().as_str() {
                "LABEL" => p.labels.push(column.clone()),
                "GAUGE" | "COUNTER" | "DURATION" => {}
                "DISCARD" => p.discard.push(column.clone()),
                u @ ("MAPPEDMETRIC" | "HISTOGRAM") => errors.push((
                    name.clone(),
                    format!("column {column:?}: usage {u} is not supported yet; map the value in the SQL (CASE ... END) and use GAUGE"),
                )),
                other => errors.push((
                    name.clone(),
                    format!("column {column:?}: unknown usage {other:?} (LABEL, GAUGE, COUNTER, DURATION, DISCARD)"),
                )),
            }
        }
        probes.insert(name, p);
    }
    if errors.is_empty() {
        Ok(probes)
    } else {
        Err(errors)
    }
}
