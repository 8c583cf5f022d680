//! Probes: statements the user writes (`[postgres.<target>.probes.<name>]`),
//! run on the target's polling connection, each in a `READ ONLY`
//! transaction with its own `statement_timeout` and `lock_timeout`, and read
//! into plain data ([`ProbeRun`]) that `evaluate::probes` judges.
//!
//! Columns are read by their type, never guessed from their values: numbers
//! (`int2`/`int4`/`int8`/`oid`/`float4`/`float8`/`numeric`/`bool`) and
//! timestamps (`timestamptz`, `timestamp` read as UTC; as Unix seconds) are
//! values; the columns named in `labels` must be text and become labels.
//! Any other column fails the probe with a message naming it.

pub mod queries_file;
pub mod settings;

use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use serde::Serialize;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{Column, Connection, PgConnection, Row, TypeInfo, ValueRef};

pub use settings::{Bound, ProbeCheck, ProbeSettings};

/// Why a probe run failed, as a small closed set usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeErrorKind {
    /// The statement ran past the probe's `statement_timeout`.
    Timeout,
    /// The statement waited on a lock past the probe's `lock_timeout`.
    LockTimeout,
    /// The statement tried to write (the transaction is READ ONLY).
    ReadOnly,
    /// The server refused the statement (syntax, permissions, ...).
    Query,
    /// A column has a type a probe cannot export, or a label is undeclared.
    Columns,
    /// More series than `max_series`, or two rows with the same labels.
    Series,
    /// The connection broke, or was not there.
    Connection,
}

impl ProbeErrorKind {
    pub const ALL: [ProbeErrorKind; 7] = [
        ProbeErrorKind::Timeout,
        ProbeErrorKind::LockTimeout,
        ProbeErrorKind::ReadOnly,
        ProbeErrorKind::Query,
        ProbeErrorKind::Columns,
        ProbeErrorKind::Series,
        ProbeErrorKind::Connection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeErrorKind::Timeout => "timeout",
            ProbeErrorKind::LockTimeout => "lock_timeout",
            ProbeErrorKind::ReadOnly => "read_only",
            ProbeErrorKind::Query => "query",
            ProbeErrorKind::Columns => "columns",
            ProbeErrorKind::Series => "series",
            ProbeErrorKind::Connection => "connection",
        }
    }
}

/// A failed run: a bounded kind for metrics, a message for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeError {
    pub kind: ProbeErrorKind,
    pub message: String,
}

impl ProbeError {
    pub(crate) fn new(kind: ProbeErrorKind, message: impl Into<String>) -> Self {
        ProbeError {
            kind,
            message: message.into(),
        }
    }

    fn from_sqlx(e: sqlx::Error, timeout: Duration) -> Self {
        if let sqlx::Error::Database(db) = &e {
            let kind = match db.code().as_deref() {
                Some("57014") => {
                    return ProbeError::new(
                        ProbeErrorKind::Timeout,
                        format!(
                            "the statement ran longer than the probe's timeout {} and was cancelled",
                            humantime::format_duration(timeout)
                        ),
                    );
                }
                Some("55P03") => ProbeErrorKind::LockTimeout,
                Some("25006") => {
                    return ProbeError::new(
                        ProbeErrorKind::ReadOnly,
                        format!(
                            "the statement tries to write, and probes run read-only: {}",
                            db.message()
                        ),
                    );
                }
                Some(c) if c.starts_with("08") || c.starts_with("57P") => {
                    ProbeErrorKind::Connection
                }
                _ => ProbeErrorKind::Query,
            };
            return ProbeError::new(kind, db.message().to_string());
        }
        let kind = match e {
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => {
                ProbeErrorKind::Connection
            }
            _ => ProbeErrorKind::Query,
        };
        ProbeError::new(kind, e.to_string())
    }
}

/// What a column holds, by its SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    Number,
    /// Unix seconds.
    Timestamp,
    Label,
    /// Read and dropped (a queries file's `DISCARD`).
    Discard,
}

/// One row: its label values (in the order of `ProbeRows::labels`) and its
/// values (in the order of `ProbeRows::values`; `None` is SQL NULL).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeRow {
    pub labels: Vec<String>,
    pub values: Vec<Option<f64>>,
}

/// A successful run's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeRows {
    /// The label columns, in result order.
    pub labels: Vec<String>,
    /// The value columns and their kinds, in result order.
    pub values: Vec<(String, ColumnKind)>,
    pub rows: Vec<ProbeRow>,
    /// The server's clock at the start of the run, Unix seconds (ages of
    /// timestamp columns are measured against it).
    pub server_now: f64,
}

impl ProbeRows {
    /// Series the result exports: rows × value columns.
    pub fn series(&self) -> usize {
        self.rows.len() * self.values.len()
    }
}

/// One run of one probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeRun {
    pub probe: String,
    #[serde(serialize_with = "unix")]
    pub at: SystemTime,
    pub duration_seconds: f64,
    pub result: Result<ProbeRows, ProbeError>,
}

fn unix<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    )
}

/// How a run went on the connection: whether the connection can be used again.
pub struct Ran {
    pub run: ProbeRun,
    /// The client gave up waiting: the connection's state is unknown, drop it.
    pub connection_lost: bool,
}

/// Slack on the client's side over the server's `statement_timeout`: a
/// quarter of it, between 50 ms and 1 s.
pub fn client_grace(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// When each of a target's probes last started, and which are due: what
/// both kinds of observer keep between polls.
#[derive(Debug, Default)]
pub struct Schedule {
    started: std::collections::BTreeMap<String, std::time::Instant>,
}

impl Schedule {
    /// After an outage every probe runs at the first successful poll.
    pub fn clear(&mut self) {
        self.started.clear();
    }

    /// Forgets probes a reload removed.
    pub fn retain(&mut self, probes: &std::collections::BTreeMap<String, ProbeSettings>) {
        self.started.retain(|n, _| probes.contains_key(n));
    }

    /// Whether `name` runs now, and if so records its start: it is due
    /// (its interval has passed, with half a poll of slack, so that a probe
    /// is due on the poll after its interval) and its timeout and the
    /// client's grace end before `deadline`, the next poll's start, so that
    /// probes never delay a poll. `all` (`dbwarden check`): every probe, now.
    pub fn start(
        &mut self,
        name: &str,
        probe: &ProbeSettings,
        poll_interval: Duration,
        deadline: std::time::Instant,
        all: bool,
    ) -> bool {
        let (interval, timeout) = (probe.interval(poll_interval), probe.timeout(poll_interval));
        let now = std::time::Instant::now();
        let due = all
            || self
                .started
                .get(name)
                .is_none_or(|at| now.duration_since(*at) + poll_interval / 2 >= interval);
        if !due {
            return false;
        }
        if !all && now + timeout + client_grace(timeout) > deadline {
            tracing::debug!(probe = %name, "probe does not fit before the next poll: it waits");
            return false;
        }
        self.started.insert(name.to_string(), now);
        true
    }
}

/// The databases a probe runs in this time: the server's databases that a
/// `databases` entry matches, in name order, and every named one (a name
/// the server lacks then fails the run by its own error). At most
/// [`MAX_DATABASES`].
pub fn resolve_databases(entries: &[String], server: &[String]) -> Result<Vec<String>, ProbeError> {
    let mut out: Vec<String> = server
        .iter()
        .filter(|d| entries.iter().any(|e| settings::database_matches(e, d)))
        .cloned()
        .collect();
    for e in entries {
        if !settings::is_pattern(e) && !out.contains(e) {
            out.push(e.clone());
        }
    }
    if out.len() > MAX_DATABASES {
        return Err(ProbeError::new(
            ProbeErrorKind::Series,
            format!(
                "its databases match {} databases, more than {MAX_DATABASES}: narrow the pattern",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// The most databases one probe run visits.
pub const MAX_DATABASES: usize = 64;

/// One probe's results from several databases, as one result whose rows
/// carry the `database` label first. Every database must return the same
/// columns (one that returned no row says nothing of its columns).
pub fn merge_databases(
    per_db: Vec<(String, ProbeRows)>,
    max_series: usize,
) -> Result<ProbeRows, ProbeError> {
    let mut merged = ProbeRows {
        labels: Vec::new(),
        values: Vec::new(),
        rows: Vec::new(),
        server_now: per_db.first().map_or(0.0, |(_, r)| r.server_now),
    };
    let mut shaped = false;
    for (db, rows) in per_db {
        if rows.rows.is_empty() {
            continue;
        }
        if !shaped {
            merged.labels = std::iter::once(settings::DATABASE_LABEL.to_string())
                .chain(rows.labels.iter().cloned())
                .collect();
            merged.values = rows.values.clone();
            shaped = true;
        } else if merged.labels[1..] != rows.labels[..] || merged.values != rows.values {
            return Err(columns_error(format!(
                "database {db:?} returns other columns than the databases before it: the statement must return the same columns in each"
            )));
        }
        for mut r in rows.rows {
            r.labels.insert(0, db.clone());
            merged.rows.push(r);
        }
        if merged.series() > max_series {
            return Err(series_error(max_series, merged.values.len()));
        }
    }
    Ok(merged)
}

/// More rows than `max_series` allows.
pub(crate) fn series_error(max_series: usize, value_columns: usize) -> ProbeError {
    ProbeError::new(
        ProbeErrorKind::Series,
        format!(
            "more than max_series = {max_series} series ({value_columns} value columns per row): aggregate in the statement, or raise max_series"
        ),
    )
}

/// Each row must differ in a label column.
pub(crate) fn unique_labels(rows: &[ProbeRow]) -> Result<(), ProbeError> {
    let mut seen = std::collections::BTreeSet::new();
    for r in rows {
        if !seen.insert(&r.labels) {
            return Err(ProbeError::new(
                ProbeErrorKind::Series,
                format!(
                    "two rows have the same labels ({}): each row must differ in a label column",
                    r.labels.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Runs one probe on `conn`: `BEGIN READ ONLY`, its timeouts set for this
/// transaction only, the statement (extended protocol: one statement, no
/// `;`-separated second one), rows read up to the series cap, `ROLLBACK`.
pub async fn run(
    conn: &mut PgConnection,
    name: &str,
    probe: &ProbeSettings,
    timeout: Duration,
    lock_timeout: Duration,
) -> Ran {
    bounded(name, timeout, run_inner(conn, probe, timeout, lock_timeout)).await
}

/// One run of `name`, bounded by `timeout` and the client's grace: a run
/// that breaks the connection or gets no answer in time costs it (both
/// kinds of probe).
pub(crate) async fn bounded(
    name: &str,
    timeout: Duration,
    run: impl Future<Output = Result<ProbeRows, ProbeError>>,
) -> Ran {
    let at = SystemTime::now();
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(timeout + client_grace(timeout), run).await;
    let (result, connection_lost) = match result {
        Ok(r) => {
            let lost = matches!(&r, Err(e) if e.kind == ProbeErrorKind::Connection);
            (r, lost)
        }
        Err(_) => (
            Err(ProbeError::new(
                ProbeErrorKind::Timeout,
                format!(
                    "no answer within the probe's timeout {} (and {} grace): the connection is reopened",
                    humantime::format_duration(timeout),
                    humantime::format_duration(client_grace(timeout))
                ),
            )),
            true,
        ),
    };
    Ran {
        run: ProbeRun {
            probe: name.to_string(),
            at,
            duration_seconds: started.elapsed().as_secs_f64(),
            result,
        },
        connection_lost,
    }
}

async fn run_inner(
    conn: &mut PgConnection,
    probe: &ProbeSettings,
    timeout: Duration,
    lock_timeout: Duration,
) -> Result<ProbeRows, ProbeError> {
    let err = |e| ProbeError::from_sqlx(e, timeout);
    let mut tx = conn.begin_with("BEGIN READ ONLY").await.map_err(err)?;
    // Nothing kept prepared on the poll's connection (`postgres::unprepared`).
    let server_now: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM now())::float8
         FROM (SELECT set_config('statement_timeout', $1, true),
                      set_config('lock_timeout', $2, true)) s",
    )
    .persistent(false)
    .bind(timeout.as_millis().to_string())
    .bind(lock_timeout.as_millis().to_string())
    .fetch_one(&mut *tx)
    .await
    .map_err(err)?;
    let max_series = probe.max_series() as usize;
    let mut shape: Option<Shape> = None;
    let mut rows = Vec::new();
    {
        let mut stream = super::postgres::unprepared(sqlx::AssertSqlSafe(probe.sql().to_owned()))
            .fetch(&mut *tx);
        while let Some(row) = stream.try_next().await.map_err(err)? {
            let shape = match &mut shape {
                Some(s) => s,
                None => shape.insert(Shape::of(&row, &probe.labels, &probe.discard)?),
            };
            rows.push(shape.read(&row)?);
            if rows.len() * shape.values.len().max(1) > max_series {
                return Err(series_error(max_series, shape.values.len()));
            }
        }
    }
    tx.rollback().await.map_err(err)?;
    let shape = match shape {
        Some(s) => s,
        // No row: the columns are still known from the statement's description.
        None => Shape {
            labels: Vec::new(),
            values: Vec::new(),
            columns: Vec::new(),
        },
    };
    unique_labels(&rows)?;
    Ok(ProbeRows {
        labels: shape.labels,
        values: shape.values,
        rows,
        server_now,
    })
}

/// The result's columns, read from its first row.
struct Shape {
    labels: Vec<String>,
    values: Vec<(String, ColumnKind)>,
    /// Per result column: its kind and its index among labels or values.
    columns: Vec<(ColumnKind, Ty)>,
}

/// The SQL types a probe reads, by `pg_type.oid` (fixed in the catalog).
#[derive(Debug, Clone, Copy)]
enum Ty {
    Bool,
    Int2,
    Int4,
    Int8,
    Oid,
    Float4,
    Float8,
    Numeric,
    /// timestamptz and timestamp: microseconds since 2000-01-01.
    Timestamp,
    Text,
}

impl Ty {
    fn of(oid: u32) -> Option<Ty> {
        Some(match oid {
            16 => Ty::Bool,
            21 => Ty::Int2,
            23 => Ty::Int4,
            20 => Ty::Int8,
            26 => Ty::Oid,
            700 => Ty::Float4,
            701 => Ty::Float8,
            1700 => Ty::Numeric,
            1184 | 1114 => Ty::Timestamp,
            25 | 1043 | 19 | 1042 | 18 => Ty::Text,
            _ => return None,
        })
    }
}

impl Shape {
    fn of(row: &PgRow, declared: &[String], discard: &[String]) -> Result<Shape, ProbeError> {
        let mut shape = Shape {
            labels: Vec::new(),
            values: Vec::new(),
            columns: Vec::new(),
        };
        let mut names = std::collections::BTreeSet::new();
        for c in row.columns() {
            let name = c.name().to_string();
            if discard.contains(&name) {
                shape.columns.push((ColumnKind::Discard, Ty::Text));
                continue;
            }
            let type_name = c.type_info().name().to_lowercase();
            if !names.insert(name.clone()) {
                return Err(columns_error(format!(
                    "two columns are named {name:?}: name each once (AS ...)"
                )));
            }
            if !settings::valid_metric_word(&name) {
                return Err(columns_error(format!(
                    "column {name:?} cannot name a metric or a label: use lowercase letters, digits and '_', starting with a letter (AS ...)"
                )));
            }
            let ty = c.type_info().oid().and_then(|o| Ty::of(o.0));
            let is_label = declared.contains(&name);
            let kind = match (ty, is_label) {
                (Some(Ty::Text), true) => ColumnKind::Label,
                (_, true) => {
                    return Err(columns_error(format!(
                        "label column {name:?} is {type_name}, not text: cast it ({name}::text) or take it out of labels"
                    )));
                }
                (Some(Ty::Text), false) => {
                    return Err(columns_error(format!(
                        "column {name:?} is text but not declared in labels: add it to labels, or leave it out of the SQL"
                    )));
                }
                (Some(Ty::Timestamp), false) => ColumnKind::Timestamp,
                (Some(_), false) => ColumnKind::Number,
                (None, false) => {
                    return Err(columns_error(format!(
                        "column {name:?} is {type_name}, which a probe cannot export: use a number, boolean or timestamp, or text declared in labels (cast it, e.g. {name}::float8)"
                    )));
                }
            };
            match kind {
                ColumnKind::Label => shape.labels.push(name),
                _ => shape.values.push((name, kind)),
            }
            shape.columns.push((kind, ty.expect("known type")));
        }
        if let Some(missing) = declared.iter().find(|l| !names.contains(*l)) {
            return Err(columns_error(format!(
                "label column {missing:?} is not in the result"
            )));
        }
        Ok(shape)
    }

    fn read(&self, row: &PgRow) -> Result<ProbeRow, ProbeError> {
        let mut out = ProbeRow {
            labels: Vec::with_capacity(self.labels.len()),
            values: Vec::with_capacity(self.values.len()),
        };
        for (i, (kind, ty)) in self.columns.iter().enumerate() {
            if *kind == ColumnKind::Discard {
                continue;
            }
            let name = row.columns()[i].name();
            let raw = row
                .try_get_raw(i)
                .map_err(|e| columns_error(format!("column {name:?}: {e}")))?;
            if raw.is_null() {
                match kind {
                    ColumnKind::Label => out.labels.push(String::new()),
                    _ => out.values.push(None),
                }
                continue;
            }
            if raw.format() != PgValueFormat::Binary {
                return Err(columns_error(format!(
                    "column {name:?} came in text format"
                )));
            }
            let bytes = raw
                .as_bytes()
                .map_err(|e| columns_error(format!("column {name:?}: {e}")))?;
            let bad = || columns_error(format!("column {name:?}: unexpected binary value"));
            match ty {
                Ty::Text => out
                    .labels
                    .push(String::from_utf8(bytes.to_vec()).map_err(|_| bad())?),
                _ => out.values.push(Some(number(*ty, bytes).ok_or_else(bad)?)),
            }
        }
        Ok(out)
    }
}

pub(crate) fn columns_error(message: String) -> ProbeError {
    ProbeError::new(ProbeErrorKind::Columns, message)
}

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;

/// A binary value of a numeric or timestamp type, as f64 (timestamps in Unix seconds).
fn number(ty: Ty, b: &[u8]) -> Option<f64> {
    let fixed = |n: usize| -> Option<&[u8]> { (b.len() == n).then_some(b) };
    Some(match ty {
        Ty::Bool => f64::from(u8::from(*fixed(1)?.first()? != 0)),
        Ty::Int2 => f64::from(i16::from_be_bytes(fixed(2)?.try_into().ok()?)),
        Ty::Int4 => f64::from(i32::from_be_bytes(fixed(4)?.try_into().ok()?)),
        Ty::Oid => f64::from(u32::from_be_bytes(fixed(4)?.try_into().ok()?)),
        Ty::Int8 => i64::from_be_bytes(fixed(8)?.try_into().ok()?) as f64,
        Ty::Float4 => f64::from(f32::from_be_bytes(fixed(4)?.try_into().ok()?)),
        Ty::Float8 => f64::from_be_bytes(fixed(8)?.try_into().ok()?),
        Ty::Timestamp => match i64::from_be_bytes(fixed(8)?.try_into().ok()?) {
            i64::MIN => f64::NEG_INFINITY,
            i64::MAX => f64::INFINITY,
            us => (us as f64 + PG_EPOCH_UNIX_US as f64) / 1e6,
        },
        Ty::Numeric => numeric(b)?,
        Ty::Text => return None,
    })
}

/// PostgreSQL's binary `numeric`: ndigits, weight, sign, dscale (i16 each),
/// then ndigits base-10000 digits; the first has weight `weight`.
fn numeric(b: &[u8]) -> Option<f64> {
    let word = |i: usize| -> Option<i16> { Some(i16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let (ndigits, weight, sign) = (word(0)?, word(2)?, word(4)? as u16);
    match sign {
        0xC000 => return Some(f64::NAN),
        0xD000 => return Some(f64::INFINITY),
        0xF000 => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let mut v = 0f64;
    for d in 0..ndigits.max(0) as usize {
        let digit = f64::from(word(8 + 2 * d)?);
        v += digit * 10000f64.powi(i32::from(weight) - d as i32);
    }
    Some(if sign == 0x4000 { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary() {
        // 12345.678 = digits [1, 2345, 6780], weight 1, dscale 3.
        let mut b = Vec::new();
        for w in [3i16, 1, 0, 3, 1, 2345, 6780] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert!((numeric(&b).unwrap() - 12345.678).abs() < 1e-9);
        // -0.5: digits [5000], weight -1, sign negative.
        let mut b = Vec::new();
        for w in [1i16, -1, 0x4000u16 as i16, 1, 5000] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(numeric(&b), Some(-0.5));
        // 0: no digits.
        let b = [0u8; 8];
        assert_eq!(numeric(&b), Some(0.0));
    }

    #[test]
    fn database_patterns() {
        use settings::database_matches as m;
        assert!(m("app", "app") && !m("app", "app2"));
        assert!(m("*", "anything") && m("tenant_*", "tenant_a") && !m("tenant_*", "tenant"));
        assert!(m("*_prod", "billing_prod") && !m("*_prod", "billing_prod2"));
        assert!(m("a*b*c", "aXbYc") && m("a*b*c", "abc") && !m("a*b*c", "acb"));
        assert!(!m("ab*ba", "aba"), "prefix and suffix may not overlap");
        let server: Vec<String> = ["postgres", "tenant_a", "tenant_b", "other"]
            .map(String::from)
            .to_vec();
        let got = resolve_databases(&["tenant_*".into(), "missing".into()], &server).unwrap();
        assert_eq!(got, ["tenant_a", "tenant_b", "missing"]);
        let many: Vec<String> = (0..65).map(|i| format!("db{i}")).collect();
        let e = resolve_databases(&["db*".into()], &many).unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Series);
    }

    #[test]
    fn results_of_several_databases_merge_under_a_database_label() {
        let rows = |kind: &str, n: f64| ProbeRows {
            labels: vec!["kind".into()],
            values: vec![("rows".into(), ColumnKind::Number)],
            rows: vec![ProbeRow {
                labels: vec![kind.into()],
                values: vec![Some(n)],
            }],
            server_now: 7.0,
        };
        let empty = ProbeRows {
            labels: vec![],
            values: vec![],
            rows: vec![],
            server_now: 8.0,
        };
        let m = merge_databases(
            vec![
                ("a".into(), rows("x", 1.0)),
                ("b".into(), empty),
                ("c".into(), rows("x", 3.0)),
            ],
            10,
        )
        .unwrap();
        assert_eq!(m.labels, ["database", "kind"]);
        assert_eq!(m.rows.len(), 2);
        assert_eq!(m.rows[1].labels, ["c", "x"]);
        assert_eq!(m.server_now, 7.0);
        let e = merge_databases(
            vec![("a".into(), rows("x", 1.0)), ("c".into(), rows("x", 3.0))],
            1,
        )
        .unwrap_err();
        assert_eq!(e.kind, ProbeErrorKind::Series);
        let mut other = rows("x", 1.0);
        other.values[0].0 = "count".into();
        let e = merge_databases(vec![("a".into(), rows("x", 1.0)), ("b".into(), other)], 10)
            .unwrap_err();
        assert!(
            e.message.contains("database \"b\" returns other columns"),
            "{}",
            e.message
        );
    }

    #[test]
    fn timestamps_are_unix_seconds() {
        // 2000-01-01 00:00:01 UTC
        let b = 1_000_000i64.to_be_bytes();
        assert_eq!(number(Ty::Timestamp, &b), Some(946_684_801.0));
    }
}
