//! What the Bolt test server knows and records: the world a test sets up
//! (transactions, indexes, counts, databases, cluster members, users), the
//! faults it injects, and what the server saw (connections, requests,
//! statements, terminations).
//!
//! A test shares one `Arc<Mutex<ServerState>>` with the server and may change
//! anything at any time; the server reads it per request and never holds the
//! lock across I/O.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::packstream::Value;

/// Locks `state`, ignoring poisoning: a panicking test thread must not make
/// the server (or the next assertion) panic too.
pub fn lock(state: &Mutex<ServerState>) -> MutexGuard<'_, ServerState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the server answers from and records into.
#[derive(Debug, Clone)]
pub struct ServerState {
    /// Accepted `(principal, credentials)` for HELLO's basic scheme; empty
    /// accepts anyone.
    pub users: Vec<(String, String)>,
    /// Transactions listed by SHOW TRANSACTIONS / dbms.listQueries (those
    /// with a current query) and removed by TERMINATE / killQuery.
    pub transactions: Vec<Tx>,
    pub indexes: Vec<Index>,
    pub node_count: i64,
    pub relationship_count: i64,
    pub databases: Vec<Db>,
    /// Members for `dbms.cluster.overview()` (4.x, clustered personas) and
    /// `SHOW SERVERS` (5.x; when empty, one row for this server).
    pub cluster_members: Vec<ClusterMember>,
    /// Like Neo4j, list the transaction that runs SHOW TRANSACTIONS (or
    /// dbms.listQueries) in its own result, carrying the client's
    /// `tx_metadata` as `metaData`. On by default.
    pub show_own_transaction: bool,
    /// Active faults; see [`Fault`]. Change them at any time.
    pub faults: Vec<Fault>,
    /// The answers to statements no persona knows (a user's Cypher probes):
    /// matched on the normalized text and the database; see [`Canned`].
    pub canned: Vec<Canned>,

    // ---- records
    /// Every accepted TCP connection, in order.
    pub connections: Vec<ConnectionRecord>,
    /// Connections currently open.
    pub active_connections: usize,
    /// Every Bolt request message received (HELLO credentials redacted).
    pub requests: Vec<Request>,
    /// Every RUN received, before faults apply.
    pub statements: Vec<Statement>,
    /// Every transaction removed by TERMINATE TRANSACTIONS or killQuery.
    pub terminated: Vec<Termination>,
    /// Indexes removed by DROP INDEX / DROP CONSTRAINT, in order; a CREATE
    /// equal to one's createStatement brings it back, POPULATING at 0%.
    pub dropped_indexes: Vec<Index>,

    next_transaction: u64,
    next_query: u64,
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState {
            users: vec![("neo4j".into(), "secret".into())],
            transactions: Vec::new(),
            indexes: Vec::new(),
            node_count: 0,
            relationship_count: 0,
            databases: vec![Db::online("neo4j"), Db::online("system")],
            cluster_members: Vec::new(),
            show_own_transaction: true,
            faults: Vec::new(),
            canned: Vec::new(),
            connections: Vec::new(),
            active_connections: 0,
            requests: Vec::new(),
            statements: Vec::new(),
            terminated: Vec::new(),
            dropped_indexes: Vec::new(),
            next_transaction: 1000,
            next_query: 5000,
        }
    }
}

impl ServerState {
    /// A default state (user `neo4j`/`secret`, databases `neo4j` and
    /// `system` online) behind the `Arc<Mutex<_>>` the server takes.
    pub fn shared() -> Arc<Mutex<ServerState>> {
        Arc::new(Mutex::new(ServerState::default()))
    }

    pub fn into_shared(self) -> Arc<Mutex<ServerState>> {
        Arc::new(Mutex::new(self))
    }

    pub fn inject(&mut self, fault: Fault) {
        self.faults.push(fault);
    }

    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }

    /// Removes the faults for which `pred` is true.
    pub fn remove_faults(&mut self, pred: impl Fn(&Fault) -> bool) {
        self.faults.retain(|f| !pred(f));
    }

    /// The statements received whose text contains `needle`.
    pub fn statements_containing(&self, needle: &str) -> Vec<&Statement> {
        self.statements
            .iter()
            .filter(|s| s.query.contains(needle))
            .collect()
    }

    /// How many requests named `message` ("PULL", "RESET", ...) arrived.
    pub fn count_requests(&self, message: &str) -> usize {
        self.requests
            .iter()
            .filter(|r| r.message == message)
            .count()
    }

    /// The index called `name`, if the state holds it.
    pub fn index(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.name == name)
    }

    /// Moves a POPULATING index's progress to `percent`; at 100 it is ONLINE.
    pub fn advance_population(&mut self, name: &str, percent: f64) {
        let i = self
            .indexes
            .iter_mut()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no index {name:?}"));
        i.population_percent = percent.min(100.0);
        if percent >= 100.0 {
            i.state = "ONLINE".into();
        }
    }

    /// The statements received that change the schema (DROP ..., CREATE ...), in order.
    pub fn schema_statements(&self) -> Vec<String> {
        self.statements
            .iter()
            .map(|s| s.query.trim().to_string())
            .filter(|q| q.starts_with("DROP ") || q.starts_with("CREATE "))
            .collect()
    }

    /// The transaction with this id, if the state still holds it.
    pub fn transaction(&self, id: &str) -> Option<&Tx> {
        self.transactions.iter().find(|t| t.id == id)
    }

    pub(crate) fn next_transaction_id(&mut self, database: &str) -> String {
        self.next_transaction += 1;
        format!("{database}-transaction-{}", self.next_transaction)
    }

    pub(crate) fn next_query_id(&mut self) -> String {
        self.next_query += 1;
        format!("query-{}", self.next_query)
    }
}

/// A fault the server injects while it is in [`ServerState::faults`].
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// HELLO gets FAILURE `Neo.ClientError.Security.Unauthorized` and the
    /// connection is closed, whatever the credentials.
    AuthFailure,
    /// A statement calling this procedure (`"dbms.listQueries"`, matched as
    /// `CALL <name>(`) gets FAILURE `Neo.ClientError.Procedure.ProcedureNotFound`.
    ProcedureNotFound { procedure: String },
    /// Every RUN waits this long before it is executed and answered.
    Slow { delay: Duration },
    /// RUNs whose text starts with `starts_with` get FAILURE `code`,
    /// `message`, and change nothing.
    FailMatching {
        starts_with: String,
        code: String,
        message: String,
    },
    /// RUNs whose text contains `contains` wait this long.
    SlowMatching { contains: String, delay: Duration },
    /// A result streamed by PULL: the socket is closed after this many
    /// RECORDs (or after the last one, if fewer), before the summary.
    /// Applies to results whose RUN arrived while the fault was active.
    DropMidStream { after_records: usize },
}

/// A scripted answer to one statement in one database: its rows, or, for a
/// statement that writes, the refusal a read-access session gets (Neo4j's
/// `Neo.ClientError.Statement.AccessMode`) and, in a write session, no rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Canned {
    pub query: String,
    /// `None`: every database.
    pub database: Option<String>,
    pub fields: Vec<String>,
    pub records: Vec<Vec<Value>>,
    pub writes: bool,
}

impl Canned {
    pub fn rows(query: &str, fields: &[&str], records: Vec<Vec<Value>>) -> Canned {
        Canned {
            query: query.to_string(),
            database: None,
            fields: fields.iter().map(|f| f.to_string()).collect(),
            records,
            writes: false,
        }
    }

    /// A statement that writes (CREATE, MERGE, SET, DELETE, ...).
    pub fn write(query: &str) -> Canned {
        Canned {
            writes: true,
            ..Canned::rows(query, &[], Vec::new())
        }
    }

    pub fn in_database(mut self, database: &str) -> Canned {
        self.database = Some(database.to_string());
        self
    }
}

/// One transaction as SHOW TRANSACTIONS lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tx {
    /// `neo4j-transaction-42`
    pub id: String,
    pub database: String,
    /// `query-614`; `None` when the transaction runs no query now.
    pub query_id: Option<String>,
    pub username: String,
    /// The current query; `None` when idle (4.4 shows "", 5.x null).
    pub query: Option<String>,
    /// `Running`, `Blocked`, `Closing`, `Terminated`, ...
    pub status: String,
    pub elapsed_ms: i64,
    /// The `tx_metadata` the client set: a map.
    pub metadata: Value,
    pub connection_id: String,
    pub client_address: String,
    pub start_time: String,
}

impl Tx {
    /// A running transaction with a current query; the database is taken
    /// from the id (`<database>-transaction-<n>`), else `neo4j`.
    pub fn running(id: &str, query_id: &str, username: &str, query: &str) -> Tx {
        let mut tx = Tx::idle(id, username);
        tx.query_id = Some(query_id.into());
        tx.query = Some(query.into());
        tx
    }

    /// An open transaction that runs no query right now.
    pub fn idle(id: &str, username: &str) -> Tx {
        let database = id
            .split_once("-transaction-")
            .map_or("neo4j", |(db, _)| db)
            .to_string();
        Tx {
            id: id.into(),
            database,
            query_id: None,
            username: username.into(),
            query: None,
            status: "Running".into(),
            elapsed_ms: 0,
            metadata: Value::empty_map(),
            connection_id: "bolt-1".into(),
            client_address: "127.0.0.1:50000".into(),
            start_time: "2024-01-01T00:00:00Z".into(),
        }
    }

    pub fn status(mut self, status: &str) -> Tx {
        self.status = status.into();
        self
    }

    pub fn elapsed_ms(mut self, ms: i64) -> Tx {
        self.elapsed_ms = ms;
        self
    }

    pub fn database(mut self, database: &str) -> Tx {
        self.database = database.into();
        self
    }

    /// `metaData` as string pairs.
    pub fn metadata<'a>(mut self, entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Tx {
        self.metadata = Value::map(entries);
        self
    }
}

/// One index as SHOW INDEXES / db.indexes() lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Index {
    pub id: i64,
    pub name: String,
    /// `ONLINE`, `POPULATING`, `FAILED`
    pub state: String,
    pub population_percent: f64,
    /// `None`: the persona's default (`BTREE` on 4.x, `RANGE` on 5.x).
    pub index_type: Option<String>,
    /// `NODE` or `RELATIONSHIP`
    pub entity_type: String,
    pub labels: Vec<String>,
    pub properties: Vec<String>,
    /// `None` shows as "".
    pub failure_message: Option<String>,
    /// SHOW INDEXES' `createStatement` (4.4+); `None` shows as null.
    pub create_statement: Option<String>,
    /// The constraint that owns the index: `owningConstraint` on 5.x,
    /// `uniqueness = "UNIQUE"` on 4.4 (where it must be the index's name).
    pub owning_constraint: Option<String>,
}

impl Index {
    pub fn online(name: &str, label: &str, property: &str) -> Index {
        Index {
            id: 1,
            name: name.into(),
            state: "ONLINE".into(),
            population_percent: 100.0,
            index_type: None,
            entity_type: "NODE".into(),
            labels: vec![label.into()],
            properties: vec![property.into()],
            failure_message: None,
            create_statement: Some(format!(
                "CREATE RANGE INDEX `{name}` FOR (n:`{label}`) ON (n.`{property}`)"
            )),
            owning_constraint: None,
        }
    }

    /// The index of a uniqueness constraint named `constraint`; its
    /// createStatement creates the constraint.
    pub fn of_constraint(mut self, constraint: &str) -> Index {
        let (label, property) = (self.labels[0].clone(), self.properties[0].clone());
        self.owning_constraint = Some(constraint.into());
        self.create_statement = Some(format!(
            "CREATE CONSTRAINT `{constraint}` FOR (n:`{label}`) REQUIRE (n.`{property}`) IS UNIQUE"
        ));
        self
    }

    pub fn create_statement(mut self, statement: Option<&str>) -> Index {
        self.create_statement = statement.map(String::from);
        self
    }

    pub fn populating(name: &str, label: &str, property: &str, percent: f64) -> Index {
        Index {
            state: "POPULATING".into(),
            population_percent: percent,
            ..Index::online(name, label, property)
        }
    }

    pub fn failed(name: &str, label: &str, property: &str, message: &str) -> Index {
        Index {
            state: "FAILED".into(),
            population_percent: 0.0,
            failure_message: Some(message.into()),
            ..Index::online(name, label, property)
        }
    }

    pub fn with_type(mut self, index_type: &str) -> Index {
        self.index_type = Some(index_type.into());
        self
    }

    pub fn on_relationships(mut self) -> Index {
        self.entity_type = "RELATIONSHIP".into();
        self
    }

    pub fn with_id(mut self, id: i64) -> Index {
        self.id = id;
        self
    }
}

/// One database as SHOW DATABASES lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Db {
    pub name: String,
    pub requested_status: String,
    pub current_status: String,
    /// `None`: the persona's default (`standalone` on 4.x, `primary` on 5.x).
    pub role: Option<String>,
}

impl Db {
    pub fn online(name: &str) -> Db {
        Db::new(name, "online", "online")
    }

    pub fn new(name: &str, requested: &str, current: &str) -> Db {
        Db {
            name: name.into(),
            requested_status: requested.into(),
            current_status: current.into(),
            role: None,
        }
    }

    pub fn role(mut self, role: &str) -> Db {
        self.role = Some(role.into());
        self
    }
}

/// One member of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterMember {
    /// Server id (4.x `id`, 5.x `name`).
    pub id: String,
    /// `host:port` of its Bolt connector.
    pub address: String,
    /// 4.x role per hosted database: `LEADER`, `FOLLOWER`, `READ_REPLICA`.
    pub role: String,
    /// 5.x `state`: `Enabled`, `Cordoned`, `Deallocating`, ...
    pub state: String,
    /// 5.x `health`: `Available`, `Unavailable`.
    pub health: String,
    pub databases: Vec<String>,
    pub groups: Vec<String>,
}

impl ClusterMember {
    pub fn new(id: &str, address: &str, role: &str) -> ClusterMember {
        ClusterMember {
            id: id.into(),
            address: address.into(),
            role: role.into(),
            state: "Enabled".into(),
            health: "Available".into(),
            databases: vec!["neo4j".into(), "system".into()],
            groups: Vec::new(),
        }
    }

    pub fn health(mut self, health: &str) -> ClusterMember {
        self.health = health.into();
        self
    }
}

/// One TCP connection the server accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    /// 1, 2, ... in accept order; `bolt-<id>` is its `connection_id`.
    pub id: u64,
    pub peer: SocketAddr,
    /// The negotiated Bolt version `(major, minor)`; `None` if none was.
    pub bolt_version: Option<(u8, u8)>,
    pub user_agent: Option<String>,
    pub principal: Option<String>,
    pub authenticated: bool,
}

/// One request message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub connection: u64,
    /// `HELLO`, `RUN`, `PULL`, `DISCARD`, `BEGIN`, `COMMIT`, `ROLLBACK`,
    /// `RESET`, `GOODBYE`, or `0xNN` for an unknown tag.
    pub message: String,
    pub fields: Vec<Value>,
}

/// One RUN.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub connection: u64,
    /// As sent (not normalized).
    pub query: String,
    /// The parameter map.
    pub params: Value,
    /// RUN's extra map (`mode`, `db`, `tx_metadata`, `imp_user`, ...).
    pub extra: Value,
    /// BEGIN's extra map when the RUN was inside an explicit transaction.
    pub begin_extra: Option<Value>,
    /// The id the server gave the statement's own transaction.
    pub transaction_id: String,
    pub query_id: String,
    /// The principal of the connection.
    pub username: String,
}

impl Statement {
    /// `tx_metadata` from RUN's extra, else from BEGIN's extra.
    pub fn tx_metadata(&self) -> Option<&Value> {
        self.extra
            .get("tx_metadata")
            .or_else(|| self.begin_extra.as_ref()?.get("tx_metadata"))
    }

    pub fn param(&self, name: &str) -> Option<&Value> {
        self.params.get(name)
    }
}

/// How a transaction was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillMethod {
    /// `TERMINATE TRANSACTIONS` (4.4+)
    TerminateTransactions,
    /// `dbms.killQuery` / `dbms.killQueries` (< 5)
    KillQuery,
}

/// One transaction removed by a kill.
#[derive(Debug, Clone, PartialEq)]
pub struct Termination {
    /// The transaction as it was when removed.
    pub tx: Tx,
    pub via: KillMethod,
    /// The connection that sent the kill.
    pub by_connection: u64,
}
