//! Cypher probes: the user's statements (`[neo4j.<target>.probes.<name>]`),
//! run on the observer's Bolt connection between polls, each in a
//! read-access session (`mode: "r"`, so that Neo4j refuses a write) with
//! the probe's `timeout` as the server's transaction timeout, in each of
//! its databases; read into the same plain [`ProbeRun`] data as the SQL
//! probes, which `evaluate::probes` judges.
//!
//! Columns: Bolt has no column types, so a column's kind is read from its
//! first non-null value and every other row must agree: integers, floats
//! and booleans are numbers; `datetime`, `localdatetime` (read as UTC) are
//! timestamps (Unix seconds); strings only in the columns declared in
//! `labels`. Anything else (lists, maps, nodes, dates without a time)
//! fails the probe with a message naming the column. Rows come as maps,
//! so columns are taken in name order.

use std::time::{Duration, SystemTime};

use neo4rs::{BoltType, Row};

use super::bolt::Neo4jClient;
use crate::observe::probes::settings::{DATABASE_LABEL, valid_metric_word};
use crate::observe::probes::{
    ColumnKind, ProbeError, ProbeErrorKind, ProbeRow, ProbeRows, ProbeSettings, Ran, bounded,
    columns_error, series_error, unique_labels,
};

/// Runs one probe over `client` in each of `databases` (`labelled`: its
/// rows carry the database as the `database` label).
pub async fn run(
    client: &Neo4jClient,
    name: &str,
    probe: &ProbeSettings,
    databases: &[String],
    labelled: bool,
    timeout: Duration,
) -> Ran {
    bounded(
        name,
        timeout,
        run_inner(client, probe, databases, labelled, timeout),
    )
    .await
}

async fn run_inner(
    client: &Neo4jClient,
    probe: &ProbeSettings,
    databases: &[String],
    labelled: bool,
    timeout: Duration,
) -> Result<ProbeRows, ProbeError> {
    let server_now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let max_series = probe.max_series() as usize;
    let mut raw: Vec<(String, Row)> = Vec::new();
    for db in databases {
        let query = client
            .query(probe.cypher())
            .extra("tx_timeout", timeout.as_millis() as i64);
        let mut stream = client
            .read(db, query)
            .await
            .map_err(|e| from_neo4rs(e, timeout))?;
        while let Some(row) = stream.next().await.map_err(|e| from_neo4rs(e, timeout))? {
            raw.push((db.clone(), row));
            // Every row is at least one series; the exact count is checked below.
            if raw.len() > max_series {
                return Err(series_error(max_series, 1));
            }
        }
    }
    let rows = read_rows(&raw, probe, labelled)?;
    if rows.series() > max_series {
        return Err(series_error(max_series, rows.values.len()));
    }
    unique_labels(&rows.rows)?;
    Ok(ProbeRows { server_now, ..rows })
}

/// A column's value, as a probe reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Number(f64),
    /// Unix seconds.
    Timestamp(f64),
    Text(String),
    /// A type a probe cannot export, by its Cypher name.
    Other(&'static str),
}

fn cell(v: &BoltType) -> Cell {
    use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
    let secs = |ts: i64, nanos: u32| ts as f64 + f64::from(nanos) / 1e9;
    match v {
        BoltType::Null(_) => Cell::Null,
        BoltType::Integer(i) => Cell::Number(i.value as f64),
        BoltType::Float(f) => Cell::Number(f.value),
        BoltType::Boolean(b) => Cell::Number(f64::from(u8::from(b.value))),
        BoltType::String(s) => Cell::Text(s.value.clone()),
        BoltType::DateTime(d) => match DateTime::<Utc>::try_from(d) {
            Ok(t) => Cell::Timestamp(secs(t.timestamp(), t.timestamp_subsec_nanos())),
            Err(_) => Cell::Other("DATETIME out of range"),
        },
        BoltType::DateTimeZoneId(d) => match DateTime::<FixedOffset>::try_from(d) {
            Ok(t) => Cell::Timestamp(secs(t.timestamp(), t.timestamp_subsec_nanos())),
            Err(_) => Cell::Other("DATETIME out of range"),
        },
        BoltType::LocalDateTime(d) => match NaiveDateTime::try_from(d) {
            Ok(t) => {
                let t = t.and_utc();
                Cell::Timestamp(secs(t.timestamp(), t.timestamp_subsec_nanos()))
            }
            Err(_) => Cell::Other("LOCAL DATETIME out of range"),
        },
        BoltType::Map(_) => Cell::Other("MAP"),
        BoltType::List(_) => Cell::Other("LIST"),
        BoltType::Node(_) => Cell::Other("NODE"),
        BoltType::Relation(_) | BoltType::UnboundedRelation(_) => Cell::Other("RELATIONSHIP"),
        BoltType::Path(_) => Cell::Other("PATH"),
        BoltType::Point2D(_) | BoltType::Point3D(_) => Cell::Other("POINT"),
        BoltType::Bytes(_) => Cell::Other("BYTES"),
        BoltType::Duration(_) => Cell::Other("DURATION"),
        BoltType::Date(_) => Cell::Other("DATE"),
        BoltType::Time(_) => Cell::Other("ZONED TIME"),
        BoltType::LocalTime(_) => Cell::Other("LOCAL TIME"),
    }
}

fn read_rows(
    raw: &[(String, Row)],
    probe: &ProbeSettings,
    labelled: bool,
) -> Result<ProbeRows, ProbeError> {
    let mut table = Vec::with_capacity(raw.len());
    for (db, row) in raw {
        let mut names: Vec<String> = row.keys().iter().map(|k| k.value.clone()).collect();
        names.sort();
        let mut cells = Vec::with_capacity(names.len());
        for n in names {
            let v: BoltType = row
                .get(&n)
                .map_err(|e| columns_error(format!("column {n:?}: {e}")))?;
            cells.push((n, cell(&v)));
        }
        table.push((db.as_str(), cells));
    }
    shape(&table, &probe.labels, &probe.discard, labelled)
}

/// The pure part: rows of named cells (each row's columns in name order,
/// with its database) into [`ProbeRows`], the kinds read from the values.
pub fn shape(
    table: &[(&str, Vec<(String, Cell)>)],
    declared: &[String],
    discard: &[String],
    labelled: bool,
) -> Result<ProbeRows, ProbeError> {
    let Some((_, first)) = table.first() else {
        return Ok(ProbeRows {
            labels: Vec::new(),
            values: Vec::new(),
            rows: Vec::new(),
            server_now: 0.0,
        });
    };
    let columns: Vec<&str> = first
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !discard.iter().any(|d| d == n))
        .collect();
    for (_, row) in table {
        let names: Vec<&str> = row
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !discard.iter().any(|d| d == n))
            .collect();
        if names != columns {
            return Err(columns_error(format!(
                "rows have different columns ({} and {}): return the same columns from every row",
                columns.join(", "),
                names.join(", ")
            )));
        }
    }
    // Each column's kind: a declared label, else the first non-null value's.
    let mut kinds = Vec::with_capacity(columns.len());
    for (i, name) in columns.iter().enumerate() {
        if !valid_metric_word(name) {
            return Err(columns_error(format!(
                "column {name:?} cannot name a metric or a label: use lowercase letters, digits and '_', starting with a letter (AS ...)"
            )));
        }
        let cells = table.iter().map(|(_, r)| &value_at(r, discard, i).1);
        let kind = if declared.iter().any(|d| d == name) {
            if let Some(c) = cells
                .clone()
                .find(|c| !matches!(c, Cell::Text(_) | Cell::Null))
            {
                return Err(columns_error(format!(
                    "label column {name:?} holds {}, not a string: convert it (toString({name})) or take it out of labels",
                    describe(c)
                )));
            }
            ColumnKind::Label
        } else {
            let mut kind = None;
            for c in cells {
                let this = match c {
                    Cell::Null => continue,
                    Cell::Number(_) => ColumnKind::Number,
                    Cell::Timestamp(_) => ColumnKind::Timestamp,
                    Cell::Text(_) => {
                        return Err(columns_error(format!(
                            "column {name:?} holds strings but is not declared in labels: add it to labels, or leave it out of the statement"
                        )));
                    }
                    Cell::Other(t) => {
                        return Err(columns_error(format!(
                            "column {name:?} holds a {t}, which a probe cannot export: return a number, a boolean or a datetime, or a string declared in labels"
                        )));
                    }
                };
                match kind {
                    None => kind = Some(this),
                    Some(k) if k != this => {
                        return Err(columns_error(format!(
                            "column {name:?} holds both numbers and datetimes: return one kind of value"
                        )));
                    }
                    Some(_) => {}
                }
            }
            kind.unwrap_or(ColumnKind::Number)
        };
        kinds.push(kind);
    }
    if let Some(missing) = declared.iter().find(|l| !columns.contains(&l.as_str())) {
        return Err(columns_error(format!(
            "label column {missing:?} is not in the result"
        )));
    }
    let mut labels: Vec<String> = Vec::new();
    if labelled {
        labels.push(DATABASE_LABEL.to_string());
    }
    let mut values = Vec::new();
    for (name, kind) in columns.iter().zip(&kinds) {
        match kind {
            ColumnKind::Label => labels.push(name.to_string()),
            k => values.push((name.to_string(), *k)),
        }
    }
    let mut rows = Vec::with_capacity(table.len());
    for (db, row) in table {
        let mut out = ProbeRow {
            labels: Vec::with_capacity(labels.len()),
            values: Vec::with_capacity(values.len()),
        };
        if labelled {
            out.labels.push(db.to_string());
        }
        for (i, kind) in kinds.iter().enumerate() {
            let cell = &value_at(row, discard, i).1;
            match (kind, cell) {
                (ColumnKind::Label, Cell::Text(t)) => out.labels.push(t.clone()),
                (ColumnKind::Label, _) => out.labels.push(String::new()),
                (_, Cell::Number(v) | Cell::Timestamp(v)) => out.values.push(Some(*v)),
                _ => out.values.push(None),
            }
        }
        rows.push(out);
    }
    Ok(ProbeRows {
        labels,
        values,
        rows,
        server_now: 0.0,
    })
}

/// The `i`-th column of a row that is not discarded.
fn value_at<'a>(row: &'a [(String, Cell)], discard: &[String], i: usize) -> &'a (String, Cell) {
    row.iter()
        .filter(|(n, _)| !discard.iter().any(|d| d == n))
        .nth(i)
        .expect("every row has the first row's columns")
}

fn describe(c: &Cell) -> String {
    match c {
        Cell::Number(_) => "numbers".to_string(),
        Cell::Timestamp(_) => "datetimes".to_string(),
        Cell::Other(t) => format!("a {t}"),
        Cell::Text(_) | Cell::Null => "strings".to_string(),
    }
}

/// Sorts a neo4rs error into a probe error kind.
fn from_neo4rs(e: neo4rs::Error, timeout: Duration) -> ProbeError {
    use neo4rs::Error as E;
    match &e {
        E::Neo4j(n) => {
            let code = n.code();
            if code == "Neo.ClientError.Statement.AccessMode" {
                return ProbeError::new(
                    ProbeErrorKind::ReadOnly,
                    format!(
                        "the statement tries to write, and probes run in a read-access session: {}",
                        n.message()
                    ),
                );
            }
            if code.starts_with("Neo.ClientError.Transaction.TransactionTimedOut") {
                return ProbeError::new(
                    ProbeErrorKind::Timeout,
                    format!(
                        "the statement ran longer than the probe's timeout {} and was stopped by the server",
                        humantime::format_duration(timeout)
                    ),
                );
            }
            let kind = if code.starts_with("Neo.TransientError.") {
                ProbeErrorKind::Connection
            } else {
                ProbeErrorKind::Query
            };
            ProbeError::new(kind, format!("{code}: {}", n.message()))
        }
        E::DeserializationError(_) | E::UnknownType(_) | E::InvalidTypeMarker(_) => {
            ProbeError::new(ProbeErrorKind::Columns, e.to_string())
        }
        _ => ProbeError::new(ProbeErrorKind::Connection, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[(&str, Cell)]) -> Vec<(String, Cell)> {
        cells
            .iter()
            .map(|(n, c)| (n.to_string(), c.clone()))
            .collect()
    }

    #[test]
    fn kinds_come_from_the_first_non_null_value_and_labels_from_the_declaration() {
        let table = vec![
            (
                "neo4j",
                row(&[
                    ("label", Cell::Text("Person".into())),
                    ("n", Cell::Null),
                    ("newest", Cell::Timestamp(10.0)),
                ]),
            ),
            (
                "other",
                row(&[
                    ("label", Cell::Text("Movie".into())),
                    ("n", Cell::Number(3.0)),
                    ("newest", Cell::Null),
                ]),
            ),
        ];
        let r = shape(&table, &["label".into()], &[], true).unwrap();
        assert_eq!(r.labels, ["database", "label"]);
        assert_eq!(
            r.values,
            [
                ("n".to_string(), ColumnKind::Number),
                ("newest".to_string(), ColumnKind::Timestamp)
            ]
        );
        assert_eq!(r.rows[0].labels, ["neo4j", "Person"]);
        assert_eq!(r.rows[0].values, [None, Some(10.0)]);
        assert_eq!(r.rows[1].labels, ["other", "Movie"]);
        assert_eq!(r.rows[1].values, [Some(3.0), None]);
    }

    #[test]
    fn mistakes_name_the_column() {
        let err = |table: Vec<(&str, Vec<(String, Cell)>)>, labels: &[&str]| {
            let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
            shape(&table, &labels, &[], false).unwrap_err().message
        };
        let m = err(
            vec![("neo4j", row(&[("name", Cell::Text("x".into()))]))],
            &[],
        );
        assert!(
            m.contains("\"name\" holds strings but is not declared"),
            "{m}"
        );
        let m = err(vec![("neo4j", row(&[("n", Cell::Number(1.0))]))], &["n"]);
        assert!(m.contains("label column \"n\" holds numbers"), "{m}");
        let m = err(vec![("neo4j", row(&[("p", Cell::Other("NODE"))]))], &[]);
        assert!(m.contains("\"p\" holds a NODE"), "{m}");
        let m = err(
            vec![
                ("neo4j", row(&[("t", Cell::Number(1.0))])),
                ("neo4j", row(&[("t", Cell::Timestamp(1.0))])),
            ],
            &[],
        );
        assert!(m.contains("both numbers and datetimes"), "{m}");
        let m = err(vec![("neo4j", row(&[("Count", Cell::Number(1.0))]))], &[]);
        assert!(m.contains("\"Count\" cannot name a metric"), "{m}");
        let m = err(vec![("neo4j", row(&[("n", Cell::Number(1.0))]))], &["kind"]);
        assert!(
            m.contains("label column \"kind\" is not in the result"),
            "{m}"
        );
    }

    #[test]
    fn discarded_columns_are_left_out() {
        let table = vec![(
            "neo4j",
            row(&[("junk", Cell::Other("MAP")), ("n", Cell::Number(2.0))]),
        )];
        let r = shape(&table, &[], &["junk".into()], false).unwrap();
        assert_eq!(r.values, [("n".to_string(), ColumnKind::Number)]);
        assert_eq!(r.rows[0].values, [Some(2.0)]);
    }
}
