//! The Bolt side of Neo4j observation: the neo4rs client, the observer, and
//! the parsing of each statement's rows into [`super::snapshot`] data.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use neo4rs::{BoltType, ConfigBuilder, Graph, Query, Row};

use super::METADATA_APP_KEY;
use super::Neo4jTarget;
use super::snapshot::*;
use super::statements::*;
use crate::observe::{APPLICATION_NAME, TargetSettings};
use crate::observe::{PollError, PollErrorKind};

/// Rows fetched per PULL: 1,000 transactions take two round trips.
const FETCH_SIZE: usize = 500;

/// A Bolt client for one target with at most one connection: the observer
/// holds one, remediation's actor another.
#[derive(Clone)]
pub struct Neo4jClient {
    graph: Graph,
    /// Why this client exists (`observe` or `remediate`), in the metadata.
    purpose: &'static str,
}

impl Neo4jClient {
    pub fn new(target: &Neo4jTarget, purpose: &'static str) -> Result<Self, PollError> {
        crate::observe::tls::ensure_provider();
        let config = ConfigBuilder::default()
            .uri(target.uri())
            .user(target.user())
            .password(target.password.as_ref().map_or("", |p| p.expose()))
            .fetch_size(FETCH_SIZE)
            .max_connections(1)
            // Never before ours: a slow statement must be reported as a
            // timeout at poll_timeout, not cut short at connect_timeout.
            .connection_timeout(neo4rs_timeout(&target.settings))
            .build()
            .map_err(|e| PollError::new(PollErrorKind::Connect, e.to_string()))?;
        let graph = Graph::connect(config).map_err(classify)?;
        Ok(Neo4jClient { graph, purpose })
    }

    /// A statement tagged with dbwarden's transaction metadata.
    pub fn query(&self, text: &str) -> Query {
        neo4rs::query(text).extra(
            "tx_metadata",
            HashMap::from([
                (METADATA_APP_KEY, APPLICATION_NAME),
                ("purpose", self.purpose),
            ]),
        )
    }

    /// Runs `q` on `db` in a read-access session (Bolt `mode: "r"`: the
    /// server refuses a write) and returns its rows as they come.
    pub async fn read(
        &self,
        db: &str,
        q: Query,
    ) -> Result<neo4rs::DetachedRowStream, neo4rs::Error> {
        self.graph.execute_read(q.extra("db", db)).await
    }

    /// Runs `q` (on `db`, or the server's default database) and collects every row.
    pub async fn rows(&self, db: Option<&str>, q: Query) -> Result<Vec<Row>, neo4rs::Error> {
        let mut stream = match db {
            Some(db) => self.graph.execute_on(db, q).await?,
            None => self.graph.execute(q).await?,
        };
        let mut rows = Vec::new();
        while let Some(row) = stream.next().await? {
            rows.push(row);
        }
        Ok(rows)
    }
}

/// The timeout handed to neo4rs, which applies it to the connect and to
/// every read: longer than dbwarden's own bounds, so that those fire first.
fn neo4rs_timeout(s: &TargetSettings) -> std::time::Duration {
    s.poll_timeout().max(s.connect_timeout()) + std::time::Duration::from_secs(1)
}

/// Polls one Neo4j target.
pub struct Neo4jObserver {
    target: Neo4jTarget,
    client: Option<Neo4jClient>,
    /// The client has completed a statement: its connection is established.
    established: bool,
    /// When each probe last started.
    probes: crate::observe::probes::Schedule,
}

impl Neo4jObserver {
    pub fn new(target: Neo4jTarget) -> Self {
        Neo4jObserver {
            target,
            client: None,
            established: false,
            probes: Default::default(),
        }
    }

    /// Runs the probes that are due, one after the other, on the polling
    /// client, between polls, as `PostgresObserver::run_probes` does: a
    /// probe starts only if it ends before `deadline`; `all` runs every
    /// probe. Without an established client (the poll failed) nothing runs;
    /// a probe that timed out or broke the connection drops the client, and
    /// the next poll rebuilds it.
    pub async fn run_probes(
        &mut self,
        deadline: std::time::Instant,
        all: bool,
    ) -> Vec<crate::observe::probes::ProbeRun> {
        let mut runs = Vec::new();
        self.probes.retain(&self.target.active_probes);
        let poll_interval = self.target.settings.poll_interval();
        let target_dbs = self.target.databases();
        let names: Vec<String> = self.target.active_probes.keys().cloned().collect();
        for name in names {
            let Some(client) = self.client.clone().filter(|_| self.established) else {
                break;
            };
            let p = self.target.active_probes[&name].clone();
            if !self.probes.start(&name, &p, poll_interval, deadline, all) {
                continue;
            }
            let dbs = p.databases_or(&target_dbs).to_vec();
            let labelled = p.labels_database(&target_dbs);
            let ran =
                super::probes::run(&client, &name, &p, &dbs, labelled, p.timeout(poll_interval))
                    .await;
            if ran.connection_lost {
                self.client = None;
                self.established = false;
            }
            runs.push(ran.run);
        }
        runs
    }

    /// Takes settings a reload changed in place; the connection stays (the
    /// caller checked `same_connection`).
    pub fn update(&mut self, target: Neo4jTarget) {
        self.target = target;
    }

    pub fn target(&self) -> &Neo4jTarget {
        &self.target
    }

    /// At most one: the pool is sized to one connection.
    pub fn open_connections(&self) -> u32 {
        u32::from(self.client.is_some())
    }

    pub async fn close(&mut self) {
        self.client = None;
        self.established = false;
    }

    /// One poll, bounded by `poll_timeout`. After a failure that may have
    /// left the connection mid-exchange, the client is dropped and rebuilt
    /// on the next poll.
    pub async fn poll(&mut self) -> Result<Neo4jSnapshot, PollError> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = Neo4jClient::new(&self.target, "observe")?;
                self.client = Some(c.clone());
                self.established = false;
                c
            }
        };
        let timeout = self.target.settings.poll_timeout();
        let connect_within = (!self.established).then_some(self.target.settings.connect_timeout());
        let poll = observe_within(&client, &self.target, connect_within);
        let result = match tokio::time::timeout(timeout, poll).await {
            Ok(r) => r,
            Err(_) => Err(PollError::new(
                PollErrorKind::Timeout,
                format!(
                    "the poll did not finish within poll_timeout {}",
                    humantime::format_duration(timeout)
                ),
            )),
        };
        match &result {
            Ok(_) => {
                // After an outage every probe runs at the first successful poll.
                if !self.established {
                    self.probes.clear();
                }
                self.established = true;
            }
            Err(e) if e.kind != PollErrorKind::Query => {
                self.client = None;
                self.established = false;
            }
            Err(_) => {}
        }
        result
    }
}

/// [`observe`], with the first statement bounded by `connect_within` when
/// the client has no established connection yet: connecting, the Bolt
/// handshake and logging in all happen inside it.
async fn observe_within(
    client: &Neo4jClient,
    target: &Neo4jTarget,
    connect_within: Option<std::time::Duration>,
) -> Result<Neo4jSnapshot, PollError> {
    if let Some(limit) = connect_within {
        match tokio::time::timeout(limit, run(client, None, PING)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(PollError::new(
                    PollErrorKind::Connect,
                    format!(
                        "could not connect and log in within connect_timeout {}",
                        humantime::format_duration(limit)
                    ),
                ));
            }
        }
    }
    observe(client, target).await
}

/// Reads one snapshot over `client`.
pub async fn observe(
    client: &Neo4jClient,
    target: &Neo4jTarget,
) -> Result<Neo4jSnapshot, PollError> {
    let observed_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let rows = run(client, None, COMPONENTS).await?;
    let (version, edition) = components(&rows)?;
    let generation = Generation::of_version(&version).ok_or_else(|| {
        PollError::new(
            PollErrorKind::Unsupported,
            format!("Neo4j {version} is not supported: dbwarden needs Neo4j 4.0 or later"),
        )
    })?;

    let started = Instant::now();
    run(client, None, PING).await?;
    let ping_seconds = started.elapsed().as_secs_f64();

    let transactions = match generation {
        Generation::Procedures => run(client, None, LIST_QUERIES)
            .await?
            .iter()
            .map(listed_query)
            .collect::<Result<Vec<_>, _>>()?,
        _ => run(client, None, SHOW_TRANSACTIONS)
            .await?
            .iter()
            .map(shown_transaction)
            .collect::<Result<Vec<_>, _>>()?,
    };

    let databases = match generation {
        Generation::Procedures => Vec::new(),
        _ => run(client, Some("system"), SHOW_DATABASES)
            .await?
            .iter()
            .map(database)
            .collect::<Result<Vec<_>, _>>()?,
    };

    let cluster = if edition == "enterprise" {
        cluster(client, generation).await?
    } else {
        None
    };

    let mut indexes = Vec::new();
    let mut counts = Vec::new();
    for db in &target.databases() {
        let statement = match generation {
            Generation::Procedures => DB_INDEXES,
            Generation::Show44 => SHOW_INDEXES,
            Generation::Show5 => SHOW_INDEXES_5,
        };
        for row in run(client, Some(db), statement).await? {
            indexes.push(index(db, &row)?);
        }
        let nodes = single_int(&run(client, Some(db), NODE_COUNT).await?, "nodes")?;
        let relationships = single_int(
            &run(client, Some(db), RELATIONSHIP_COUNT).await?,
            "relationships",
        )?;
        counts.push(Neo4jCounts {
            database: db.clone(),
            nodes,
            relationships,
        });
    }

    Ok(Neo4jSnapshot {
        observed_at,
        version,
        edition,
        generation,
        ping_seconds,
        transactions,
        indexes,
        counts,
        databases,
        cluster,
    })
}

/// Runs one statement and collects its rows; the error names the statement.
async fn run(client: &Neo4jClient, db: Option<&str>, text: &str) -> Result<Vec<Row>, PollError> {
    client
        .rows(db, client.query(text))
        .await
        .map_err(|e| classify(e).context(text))
}

async fn cluster(
    client: &Neo4jClient,
    generation: Generation,
) -> Result<Option<Vec<Neo4jMember>>, PollError> {
    match generation {
        Generation::Show5 => {
            let rows = run(client, None, SHOW_SERVERS).await?;
            let members = rows.iter().map(server).collect::<Result<Vec<_>, _>>()?;
            // A standalone server lists itself alone: not a cluster.
            Ok((members.len() > 1).then_some(members))
        }
        _ => match run(client, None, CLUSTER_OVERVIEW).await {
            Ok(rows) => Ok(Some(
                rows.iter()
                    .map(overview_member)
                    .collect::<Result<Vec<_>, _>>()?,
            )),
            // A standalone Enterprise server has no cluster procedures.
            Err(e) if e.message.contains("ProcedureNotFound") => Ok(None),
            Err(e) => Err(e),
        },
    }
}

impl PollError {
    /// Names the statement that failed.
    fn context(mut self, statement: &str) -> Self {
        let short: String = statement.chars().take(48).collect();
        let ellipsis = if statement.chars().count() > 48 {
            "…"
        } else {
            ""
        };
        self.message = format!("{} (statement: {short}{ellipsis})", self.message);
        self
    }
}

/// Sorts a neo4rs error into a poll error kind.
pub fn classify(e: neo4rs::Error) -> PollError {
    use neo4rs::Error as E;
    let kind = match &e {
        E::AuthenticationError(_) => PollErrorKind::Auth,
        E::Neo4j(n) if n.code().starts_with("Neo.ClientError.Security.") => PollErrorKind::Auth,
        E::Neo4j(n) if n.code().starts_with("Neo.TransientError.") => PollErrorKind::Io,
        E::Neo4j(_) => PollErrorKind::Query,
        E::IOError { detail } => match detail.kind() {
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::NotFound
            | std::io::ErrorKind::AddrNotAvailable
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable => PollErrorKind::Connect,
            _ => PollErrorKind::Io,
        },
        // Reached only past dbwarden's own bounds (see `neo4rs_timeout`).
        E::ConnectionTimedOut => PollErrorKind::Timeout,
        E::ConnectionError
        | E::UrlParseError(_)
        | E::UnsupportedScheme(_)
        | E::InvalidDnsName(_)
        | E::ServerUnavailableError(_)
        | E::RoutingTableError(_)
        | E::RoutingTableRefreshFailed(_) => PollErrorKind::Connect,
        E::UnsupportedVersion(..) | E::ProtocolMismatch(_) => PollErrorKind::Unsupported,
        E::DeserializationError(_) | E::UnknownType(_) | E::InvalidTypeMarker(_) => {
            PollErrorKind::Decode
        }
        _ => PollErrorKind::Io,
    };
    let message = match &e {
        // Keep the Neo4j code: it tells ProcedureNotFound from a permission error.
        E::Neo4j(n) => format!("{}: {}", n.code(), n.message()),
        other => other.to_string(),
    };
    PollError::new(kind, message)
}

fn decode(what: &str, e: impl std::fmt::Display) -> PollError {
    PollError::new(PollErrorKind::Decode, format!("cannot read {what}: {e}"))
}

fn get<T: serde::de::DeserializeOwned>(row: &Row, column: &str) -> Result<T, PollError> {
    row.get::<T>(column)
        .map_err(|e| decode(&format!("column {column}"), e))
}

fn components(rows: &[Row]) -> Result<(String, String), PollError> {
    let kernel = rows
        .iter()
        .find(|r| get::<String>(r, "name").is_ok_and(|n| n == "Neo4j Kernel"))
        .or(rows.first())
        .ok_or_else(|| decode("dbms.components()", "no rows"))?;
    let versions: Vec<String> = get(kernel, "versions")?;
    let version = versions
        .into_iter()
        .next()
        .ok_or_else(|| decode("dbms.components()", "no version"))?;
    let edition: String = get(kernel, "edition")?;
    Ok((version, edition.to_ascii_lowercase()))
}

/// dbwarden's own transactions carry `app = "dbwarden"` in their metadata.
fn is_own(row: &Row) -> bool {
    row.get::<Option<HashMap<String, BoltType>>>("metaData")
        .ok()
        .flatten()
        .and_then(|m| m.get(METADATA_APP_KEY).cloned())
        .is_some_and(|v| matches!(v, BoltType::String(s) if s.value == APPLICATION_NAME))
}

/// "No current query" is `""` on 4.4 and null on 5.x.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

pub fn shown_transaction(row: &Row) -> Result<Neo4jTransaction, PollError> {
    Ok(Neo4jTransaction {
        database: get(row, "database")?,
        id: get(row, "transactionId")?,
        query_id: non_empty(get(row, "currentQueryId")?),
        username: get::<Option<String>>(row, "username")?.unwrap_or_default(),
        query: non_empty(get(row, "currentQuery")?),
        status: get(row, "status")?,
        elapsed_ms: get(row, "elapsedMs")?,
        own: is_own(row),
    })
}

pub fn listed_query(row: &Row) -> Result<Neo4jTransaction, PollError> {
    let query_id: String = get(row, "queryId")?;
    Ok(Neo4jTransaction {
        database: get::<Option<String>>(row, "database")?.unwrap_or_default(),
        id: query_id.clone(),
        query_id: Some(query_id),
        username: get::<Option<String>>(row, "username")?.unwrap_or_default(),
        query: non_empty(get(row, "query")?),
        status: query_status(&get::<String>(row, "status")?),
        elapsed_ms: get(row, "elapsedTimeMillis")?,
        own: is_own(row),
    })
}

/// `dbms.listQueries()` says "running", "planning", "waiting ..." in lower
/// case; SHOW TRANSACTIONS says Running and Blocked. Metrics and policies
/// use the latter on every version.
fn query_status(status: &str) -> String {
    if status.starts_with("waiting") {
        return "Blocked".to_string();
    }
    let mut c = status.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// One row of `SHOW INDEXES` (either generation's) or `db.indexes()`.
pub fn index(database: &str, row: &Row) -> Result<Neo4jIndex, PollError> {
    let name: String = get(row, "name")?;
    // 5.x names the owning constraint; 4.4 says UNIQUE, and there the
    // constraint has the index's name; db.indexes() says neither.
    let owning_constraint = match row.get::<Option<String>>("owningConstraint") {
        Ok(owner) => non_empty(owner),
        Err(_) => row
            .get::<Option<String>>("uniqueness")
            .ok()
            .flatten()
            .filter(|u| u.eq_ignore_ascii_case("UNIQUE"))
            .map(|_| name.clone()),
    };
    Ok(Neo4jIndex {
        database: database.to_string(),
        create_statement: non_empty(row.get::<Option<String>>("createStatement").ok().flatten()),
        owning_constraint,
        name,
        state: get(row, "state")?,
        population_percent: get(row, "populationPercent")?,
        index_type: get(row, "type")?,
        entity_type: get(row, "entityType")?,
        labels_or_types: get::<Option<Vec<String>>>(row, "labelsOrTypes")?.unwrap_or_default(),
        properties: get::<Option<Vec<String>>>(row, "properties")?.unwrap_or_default(),
        // db.indexes() (before 4.4) has no failure message column.
        failure_message: non_empty(row.get::<Option<String>>("failureMessage").ok().flatten()),
    })
}

fn single_int(rows: &[Row], column: &str) -> Result<i64, PollError> {
    let row = rows.first().ok_or_else(|| decode(column, "no rows"))?;
    get(row, column)
}

fn database(row: &Row) -> Result<Neo4jDatabase, PollError> {
    Ok(Neo4jDatabase {
        name: get(row, "name")?,
        requested_status: get(row, "requestedStatus")?,
        current_status: get(row, "currentStatus")?,
        role: get(row, "role")?,
    })
}

fn overview_member(row: &Row) -> Result<Neo4jMember, PollError> {
    let addresses: Vec<String> = get(row, "addresses")?;
    let roles: HashMap<String, String> = get(row, "databases")?;
    let mut roles: Vec<String> = roles
        .into_iter()
        .map(|(db, r)| format!("{db}: {r}"))
        .collect();
    roles.sort();
    let healthy = !roles.is_empty();
    Ok(Neo4jMember {
        id: get(row, "id")?,
        address: addresses.into_iter().next().unwrap_or_default(),
        role: roles.join(", "),
        health: if healthy { "Available" } else { "Unavailable" }.to_string(),
        healthy,
    })
}

fn server(row: &Row) -> Result<Neo4jMember, PollError> {
    let state: String = get(row, "state")?;
    let health: String = get(row, "health")?;
    Ok(Neo4jMember {
        id: get(row, "name")?,
        address: get(row, "address")?,
        healthy: health == "Available" && state == "Enabled",
        role: state,
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_statuses_read_like_show_transactions() {
        assert_eq!(query_status("running"), "Running");
        assert_eq!(query_status("waiting"), "Blocked");
        assert_eq!(query_status("waiting for lock"), "Blocked");
        assert_eq!(query_status("planning"), "Planning");
        assert_eq!(query_status(""), "");
    }
}
