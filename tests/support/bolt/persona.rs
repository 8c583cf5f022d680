//! Personas: which Neo4j the Bolt test server pretends to be (4.3, 4.4 or
//! 5.x; Community or Enterprise; standalone or clustered), and its answers to
//! the statements dbwarden sends, with the result shapes (column names and
//! value types) of that version.
//!
//! # Supported statements
//!
//! Statements are matched on their text after [`normalize`]: whitespace
//! runs collapse, whitespace next to `( ) { } [ ] , : = .` disappears, a
//! trailing `;` is dropped. Matching is case-sensitive (column aliases are).
//! Parameter names are part of the statement. dbwarden uses exactly these:
//!
//! | constant | statement | 4.3 | 4.4 | 5.x |
//! |---|---|---|---|---|
//! | [`COMPONENTS`] | `CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition` | ✓ | ✓ | ✓ |
//! | [`PING`] | `RETURN 1` (column `1`) | ✓ | ✓ | ✓ |
//! | [`SHOW_TRANSACTIONS`] | `SHOW TRANSACTIONS YIELD database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime, metaData RETURN database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime.milliseconds AS elapsedMs, metaData` | SyntaxError | ✓ (`""` when no query) | ✓ (null when no query) |
//! | [`SHOW_TRANSACTION`] | the same with `WHERE transactionId = $id` between the YIELD and RETURN parts | SyntaxError | ✓ | ✓ |
//! | [`SHOW_TRANSACTIONS_DEFAULT`] | `SHOW TRANSACTIONS`: default columns, `elapsedTime` a Duration | SyntaxError | ✓ | ✓ |
//! | [`TERMINATE_TRANSACTIONS`] | `TERMINATE TRANSACTIONS $ids` (list of strings, or one string) → transactionId, username, message | SyntaxError | ✓ | ✓ |
//! | [`LIST_QUERIES`] | `CALL dbms.listQueries() YIELD queryId, username, query, status, elapsedTimeMillis, metaData, database RETURN queryId, username, query, status, elapsedTimeMillis, metaData, database` | ✓ | ✓ | ProcedureNotFound |
//! | [`LIST_QUERIES_WITH_TRANSACTION`] | the same with `transactionId` after `queryId` in both lists | SyntaxError (no such output) | ✓ | ProcedureNotFound |
//! | [`KILL_QUERY`] | `CALL dbms.killQuery($id) YIELD queryId, username, message RETURN queryId, username, message` | ✓ | ✓ | ProcedureNotFound |
//! | [`KILL_QUERY_BARE`] | `CALL dbms.killQuery($id)` | ✓ | ✓ | ProcedureNotFound |
//! | [`KILL_QUERIES`] | `CALL dbms.killQueries($ids) YIELD queryId, username, message RETURN queryId, username, message` | ✓ | ✓ | ProcedureNotFound |
//! | [`DB_INDEXES`] | `CALL db.indexes() YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties` | ✓ | ✓ | ProcedureNotFound |
//! | [`DB_INDEXES_BARE`] | `CALL db.indexes()`: id, name, state, populationPercent, uniqueness, type, entityType, labelsOrTypes, properties, provider | ✓ | ✓ | ProcedureNotFound |
//! | [`SHOW_INDEXES`] | `SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement RETURN` the same | SyntaxError (see below) | ✓ | SyntaxError (no `uniqueness`) |
//! | [`SHOW_INDEXES_5`] | the same with `owningConstraint` instead of `uniqueness` | SyntaxError | SyntaxError (no such column) | ✓ |
//! | [`SHOW_INDEX`] / [`SHOW_INDEX_5`] | the same two with `WHERE name = $name` between the YIELD and RETURN parts | SyntaxError | as above | as above |
//! | — | `DROP INDEX <name>` / `DROP CONSTRAINT <name>` (bare or in backticks): removes the index (an index owned by a constraint only by its constraint) | ✓ | ✓ | ✓ |
//! | — | a `CREATE ...` equal to a dropped index's `createStatement`: the index is back, POPULATING at 0% ([`ServerState::advance_population`](super::state::ServerState::advance_population) moves it on, to ONLINE at 100) | ✓ | ✓ | ✓ |
//! | [`NODE_COUNT`] | `MATCH (n) RETURN count(n) AS nodes` | ✓ | ✓ | ✓ |
//! | [`RELATIONSHIP_COUNT`] | `MATCH ()-[r]->() RETURN count(r) AS relationships` | ✓ | ✓ | ✓ |
//! | [`SHOW_DATABASES`] | `SHOW DATABASES YIELD name, requestedStatus, currentStatus, role RETURN name, requestedStatus, currentStatus, role` | ✓ | ✓ | ✓ |
//! | [`CLUSTER_OVERVIEW`] | `CALL dbms.cluster.overview() YIELD id, addresses, databases, groups RETURN id, addresses, databases, groups` | clustered only | clustered only | ProcedureNotFound |
//! | [`SHOW_SERVERS`] | `SHOW SERVERS YIELD name, address, state, health, hosting RETURN name, address, state, health, hosting` | SyntaxError | SyntaxError | ✓ |
//! | — | `RETURN duration({seconds: 1, nanoseconds: 5}) AS d` (any of months, days, seconds, nanoseconds as integer literals) → a Duration structure | ✓ | ✓ | ✓ |
//!
//! Then the state's [`Canned`](super::state::Canned) statements (a user's
//! Cypher probes): their rows, or for one that writes, in a read-access
//! session (`mode: "r"`), FAILURE `Neo.ClientError.Statement.AccessMode`.
//! A RUN whose `tx_timeout` (ms) is shorter than its fault delay gets
//! FAILURE `Neo.ClientError.Transaction.TransactionTimedOut` at that time.
//!
//! Anything else gets FAILURE `Neo.ClientError.Statement.SyntaxError` whose
//! message names the statement.
//!
//! # Value types
//!
//! Strings, except: `versions`, `labelsOrTypes`, `properties`, `addresses`,
//! `groups`, `hosting`: lists of strings; `elapsedMs`, `elapsedTimeMillis`,
//! `nodes`, `relationships`, `id` (db.indexes): integers;
//! `populationPercent`: float; `metaData`: map; `databases`
//! (cluster overview): map of database name to role; `username` of a
//! "Transaction not found." row: null; `elapsedTime`
//! (bare SHOW TRANSACTIONS): Duration.
//!
//! # Deliberate simplifications
//!
//! - The 4.3 persona rejects `SHOW INDEXES ... YIELD` so that a client
//!   must take the `db.indexes()` path below 4.4; the 5.x persona reports
//!   `dbms.cluster.overview` as not found so that it must take `SHOW SERVERS`.
//! - `dbms.listQueries` lists transactions that have a current query; its
//!   `status` is the transaction status in lower case, `Blocked…` as `waiting`.
//! - killQuery answers "Query found" / "No Query found with this id" (with
//!   username "n/a"), as 4.x does.
//! - The statement's own transaction (see
//!   [`ServerState::show_own_transaction`](super::state::ServerState::show_own_transaction))
//!   is listed after the state's transactions, with elapsed time 0.

use super::packstream::Value;
use super::server::BoltVersion;
use super::state::{ClusterMember, Index, KillMethod, ServerState, Termination, Tx};

pub const COMPONENTS: &str =
    "CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition";
pub const PING: &str = "RETURN 1";
pub const SHOW_TRANSACTIONS: &str = "SHOW TRANSACTIONS YIELD database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime, metaData RETURN database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime.milliseconds AS elapsedMs, metaData";
pub const SHOW_TRANSACTION: &str = "SHOW TRANSACTIONS YIELD database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime, metaData WHERE transactionId = $id RETURN database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime.milliseconds AS elapsedMs, metaData";
pub const SHOW_TRANSACTIONS_DEFAULT: &str = "SHOW TRANSACTIONS";
pub const TERMINATE_TRANSACTIONS: &str = "TERMINATE TRANSACTIONS $ids";
pub const LIST_QUERIES: &str = "CALL dbms.listQueries() YIELD queryId, username, query, status, elapsedTimeMillis, metaData, database RETURN queryId, username, query, status, elapsedTimeMillis, metaData, database";
pub const LIST_QUERIES_WITH_TRANSACTION: &str = "CALL dbms.listQueries() YIELD queryId, transactionId, username, query, status, elapsedTimeMillis, metaData, database RETURN queryId, transactionId, username, query, status, elapsedTimeMillis, metaData, database";
pub const KILL_QUERY: &str =
    "CALL dbms.killQuery($id) YIELD queryId, username, message RETURN queryId, username, message";
pub const KILL_QUERY_BARE: &str = "CALL dbms.killQuery($id)";
pub const KILL_QUERIES: &str = "CALL dbms.killQueries($ids) YIELD queryId, username, message RETURN queryId, username, message";
pub const DB_INDEXES: &str = "CALL db.indexes() YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties";
pub const DB_INDEXES_BARE: &str = "CALL db.indexes()";
pub const SHOW_INDEXES: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement";
pub const SHOW_INDEXES_5: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement";
pub const SHOW_INDEX: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement WHERE name = $name RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement";
pub const SHOW_INDEX_5: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement WHERE name = $name RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement";
pub const NODE_COUNT: &str = "MATCH (n) RETURN count(n) AS nodes";
pub const RELATIONSHIP_COUNT: &str = "MATCH ()-[r]->() RETURN count(r) AS relationships";
pub const SHOW_DATABASES: &str = "SHOW DATABASES YIELD name, requestedStatus, currentStatus, role RETURN name, requestedStatus, currentStatus, role";
pub const CLUSTER_OVERVIEW: &str = "CALL dbms.cluster.overview() YIELD id, addresses, databases, groups RETURN id, addresses, databases, groups";
pub const SHOW_SERVERS: &str = "SHOW SERVERS YIELD name, address, state, health, hosting RETURN name, address, state, health, hosting";

/// The failure codes the personas and faults use.
pub const SYNTAX_ERROR: &str = "Neo.ClientError.Statement.SyntaxError";
pub const PROCEDURE_NOT_FOUND: &str = "Neo.ClientError.Procedure.ProcedureNotFound";
pub const PARAMETER_MISSING: &str = "Neo.ClientError.Statement.ParameterMissing";
pub const TYPE_ERROR: &str = "Neo.ClientError.Statement.TypeError";
pub const UNAUTHORIZED: &str = "Neo.ClientError.Security.Unauthorized";
pub const REQUEST_INVALID: &str = "Neo.ClientError.Request.Invalid";
pub const ACCESS_MODE: &str = "Neo.ClientError.Statement.AccessMode";
pub const TRANSACTION_TIMED_OUT: &str = "Neo.ClientError.Transaction.TransactionTimedOut";

/// Whitespace-insensitive form of a statement (see the module docs).
pub fn normalize(query: &str) -> String {
    const TIGHT: &[char] = &['(', ')', '{', '}', '[', ']', ',', ':', '=', '.'];
    let query = query.trim().trim_end_matches(';').trim_end();
    let mut out = String::with_capacity(query.len());
    let mut space = false;
    for c in query.chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !out.is_empty() && !TIGHT.contains(&c) && !out.ends_with(TIGHT) {
            out.push(' ');
        }
        space = false;
        out.push(c);
    }
    out
}

/// The Neo4j release line a persona imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Generation {
    V4_3,
    V4_4,
    V5,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edition {
    Community,
    Enterprise,
}

/// Which Neo4j the server pretends to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Persona {
    pub generation: Generation,
    /// Reported by dbms.components() and as `Neo4j/<version>` in HELLO.
    pub version: String,
    pub edition: Edition,
    /// Answers dbms.cluster.overview() (4.x; needs Enterprise).
    pub clustered: bool,
    /// Bolt versions accepted in the handshake; the default is 4.4, 4.1 and
    /// 4.0 for every persona (what neo4rs 0.8 and 0.9 propose, minus 4.3).
    pub bolt_versions: Vec<BoltVersion>,
}

impl Persona {
    fn new(generation: Generation, version: &str) -> Persona {
        Persona {
            generation,
            version: version.into(),
            edition: Edition::Community,
            clustered: false,
            bolt_versions: vec![
                BoltVersion::new(4, 4),
                BoltVersion::new(4, 1),
                BoltVersion::new(4, 0),
            ],
        }
    }

    /// Neo4j 4.3 Community.
    pub fn neo4j_4_3() -> Persona {
        Persona::new(Generation::V4_3, "4.3.24")
    }

    /// Neo4j 4.4 Community.
    pub fn neo4j_4_4() -> Persona {
        Persona::new(Generation::V4_4, "4.4.26")
    }

    /// Neo4j 5.x Community.
    pub fn neo4j_5() -> Persona {
        Persona::new(Generation::V5, "5.26.0")
    }

    pub fn enterprise(mut self) -> Persona {
        self.edition = Edition::Enterprise;
        self
    }

    /// A clustered Enterprise member.
    pub fn clustered(mut self) -> Persona {
        self.edition = Edition::Enterprise;
        self.clustered = true;
        self
    }

    pub fn with_version(mut self, version: &str) -> Persona {
        self.version = version.into();
        self
    }

    pub fn with_bolt_versions(mut self, versions: &[(u8, u8)]) -> Persona {
        self.bolt_versions = versions
            .iter()
            .map(|&(major, minor)| BoltVersion::new(major, minor))
            .collect();
        self
    }

    /// HELLO's `server` field.
    pub fn server_agent(&self) -> String {
        format!("Neo4j/{}", self.version)
    }

    fn edition_name(&self) -> &'static str {
        match self.edition {
            Edition::Community => "community",
            Edition::Enterprise => "enterprise",
        }
    }

    /// Executes one statement against `state`: the result, or the failure a
    /// Neo4j of this persona would give.
    pub fn run(&self, state: &mut ServerState, ctx: &RunContext<'_>) -> Result<Rows, Failure> {
        let q = normalize(ctx.query);
        let is = |s: &str| q == normalize(s);
        let v5 = self.generation >= Generation::V5;
        let v44 = self.generation >= Generation::V4_4;

        if is(COMPONENTS) {
            return Ok(Rows::new(
                &["name", "versions", "edition"],
                vec![vec![
                    "Neo4j Kernel".into(),
                    Value::list([self.version.as_str()]),
                    self.edition_name().into(),
                ]],
            ));
        }
        if is(PING) {
            return Ok(Rows::new(&["1"], vec![vec![1.into()]]));
        }
        if is(SHOW_TRANSACTIONS) || is(SHOW_TRANSACTION) || is(SHOW_TRANSACTIONS_DEFAULT) {
            if !v44 {
                return Err(syntax_error_at(ctx.query, "TRANSACTIONS"));
            }
            let only = if is(SHOW_TRANSACTION) {
                Some(string_param(ctx.params, "id")?)
            } else {
                None
            };
            let txs = listed_transactions(state, ctx)
                .filter(|t| only.as_ref().is_none_or(|id| &t.id == id));
            if is(SHOW_TRANSACTIONS_DEFAULT) {
                return Ok(self.show_transactions_default(txs));
            }
            let rows = txs
                .map(|t| {
                    vec![
                        t.database.as_str().into(),
                        t.id.as_str().into(),
                        self.optional_text(&t.query_id),
                        t.username.as_str().into(),
                        self.optional_text(&t.query),
                        t.status.as_str().into(),
                        t.elapsed_ms.into(),
                        t.metadata.clone(),
                    ]
                })
                .collect();
            return Ok(Rows::new(
                &[
                    "database",
                    "transactionId",
                    "currentQueryId",
                    "username",
                    "currentQuery",
                    "status",
                    "elapsedMs",
                    "metaData",
                ],
                rows,
            ));
        }
        if is(TERMINATE_TRANSACTIONS) {
            if !v44 {
                return Err(syntax_error_at(ctx.query, "TERMINATE"));
            }
            let ids = string_list_param(ctx.params, "ids")?;
            let rows = ids
                .into_iter()
                .map(|id| match take_transaction(state, |t| t.id == id) {
                    Some(tx) => {
                        let row = vec![
                            id.as_str().into(),
                            tx.username.as_str().into(),
                            "Transaction terminated.".into(),
                        ];
                        state.terminated.push(Termination {
                            tx,
                            via: KillMethod::TerminateTransactions,
                            by_connection: ctx.connection,
                        });
                        row
                    }
                    None => vec![id.into(), Value::Null, "Transaction not found.".into()],
                })
                .collect();
            return Ok(Rows::new(&["transactionId", "username", "message"], rows));
        }
        if is(LIST_QUERIES) || is(LIST_QUERIES_WITH_TRANSACTION) {
            if v5 {
                return Err(procedure_not_found("dbms.listQueries"));
            }
            let with_tx = is(LIST_QUERIES_WITH_TRANSACTION);
            if with_tx && !v44 {
                return Err(Failure::new(
                    SYNTAX_ERROR,
                    "Unknown procedure output: `transactionId` (line 1, column 40 (offset: 39))",
                ));
            }
            let rows = listed_transactions(state, ctx)
                .filter(|t| t.query.is_some())
                .map(|t| {
                    let mut row: Vec<Value> = vec![t.query_id.as_deref().into()];
                    if with_tx {
                        row.push(t.id.as_str().into());
                    }
                    row.extend([
                        t.username.as_str().into(),
                        t.query.as_deref().into(),
                        list_queries_status(&t.status).into(),
                        t.elapsed_ms.into(),
                        t.metadata.clone(),
                        t.database.as_str().into(),
                    ]);
                    row
                })
                .collect();
            let mut fields = vec!["queryId"];
            if with_tx {
                fields.push("transactionId");
            }
            fields.extend([
                "username",
                "query",
                "status",
                "elapsedTimeMillis",
                "metaData",
                "database",
            ]);
            return Ok(Rows::new(&fields, rows));
        }
        if is(KILL_QUERY) || is(KILL_QUERY_BARE) || is(KILL_QUERIES) {
            let (procedure, ids) = if is(KILL_QUERIES) {
                ("dbms.killQueries", string_list_param(ctx.params, "ids"))
            } else {
                (
                    "dbms.killQuery",
                    string_param(ctx.params, "id").map(|id| vec![id]),
                )
            };
            if v5 {
                return Err(procedure_not_found(procedure));
            }
            let rows = ids?
                .into_iter()
                .map(|id| {
                    match take_transaction(state, |t| t.query_id.as_deref() == Some(id.as_str())) {
                        Some(tx) => {
                            let row = vec![
                                id.as_str().into(),
                                tx.username.as_str().into(),
                                "Query found".into(),
                            ];
                            state.terminated.push(Termination {
                                tx,
                                via: KillMethod::KillQuery,
                                by_connection: ctx.connection,
                            });
                            row
                        }
                        None => vec![
                            id.into(),
                            "n/a".into(),
                            "No Query found with this id".into(),
                        ],
                    }
                })
                .collect();
            return Ok(Rows::new(&["queryId", "username", "message"], rows));
        }
        if is(DB_INDEXES) || is(DB_INDEXES_BARE) {
            if v5 {
                return Err(procedure_not_found("db.indexes"));
            }
            if is(DB_INDEXES_BARE) {
                let rows = state
                    .indexes
                    .iter()
                    .map(|i| {
                        let mut row = vec![i.id.into()];
                        row.extend(self.index_columns(i, false));
                        row.insert(4, "NONUNIQUE".into());
                        row.push("native-btree-1.0".into());
                        row
                    })
                    .collect();
                return Ok(Rows::new(
                    &[
                        "id",
                        "name",
                        "state",
                        "populationPercent",
                        "uniqueness",
                        "type",
                        "entityType",
                        "labelsOrTypes",
                        "properties",
                        "provider",
                    ],
                    rows,
                ));
            }
            let rows = state
                .indexes
                .iter()
                .map(|i| self.index_columns(i, false))
                .collect();
            return Ok(Rows::new(&INDEX_FIELDS[..7], rows));
        }
        if is(SHOW_INDEXES) || is(SHOW_INDEXES_5) || is(SHOW_INDEX) || is(SHOW_INDEX_5) {
            if !v44 {
                return Err(syntax_error_at(ctx.query, "YIELD"));
            }
            let five = is(SHOW_INDEXES_5) || is(SHOW_INDEX_5);
            // 4.4 has no owningConstraint, 5.x no uniqueness.
            if five != v5 {
                let column = if five {
                    "owningConstraint"
                } else {
                    "uniqueness"
                };
                return Err(Failure::new(
                    SYNTAX_ERROR,
                    format!("Variable `{column}` not defined (line 1, column 1 (offset: 0))"),
                ));
            }
            let only = if is(SHOW_INDEX) || is(SHOW_INDEX_5) {
                Some(string_param(ctx.params, "name")?)
            } else {
                None
            };
            let rows = state
                .indexes
                .iter()
                .filter(|i| only.as_ref().is_none_or(|n| &i.name == n))
                .map(|i| {
                    let mut row = self.index_columns(i, true);
                    row.push(if five {
                        i.owning_constraint.as_deref().into()
                    } else if i.owning_constraint.is_some() {
                        "UNIQUE".into()
                    } else {
                        "NONUNIQUE".into()
                    });
                    row.push(i.create_statement.as_deref().into());
                    row
                })
                .collect();
            let mut fields = INDEX_FIELDS.to_vec();
            fields.push(if five {
                "owningConstraint"
            } else {
                "uniqueness"
            });
            fields.push("createStatement");
            return Ok(Rows::new(&fields, rows));
        }
        if let Some(rows) = schema_change(state, ctx.query, &q) {
            return rows;
        }
        if is(NODE_COUNT) {
            return Ok(Rows::new(&["nodes"], vec![vec![state.node_count.into()]]));
        }
        if is(RELATIONSHIP_COUNT) {
            return Ok(Rows::new(
                &["relationships"],
                vec![vec![state.relationship_count.into()]],
            ));
        }
        if is(SHOW_DATABASES) {
            let default_role = if v5 { "primary" } else { "standalone" };
            let rows = state
                .databases
                .iter()
                .map(|d| {
                    vec![
                        d.name.as_str().into(),
                        d.requested_status.as_str().into(),
                        d.current_status.as_str().into(),
                        d.role.as_deref().unwrap_or(default_role).into(),
                    ]
                })
                .collect();
            return Ok(Rows::new(
                &["name", "requestedStatus", "currentStatus", "role"],
                rows,
            ));
        }
        if is(CLUSTER_OVERVIEW) {
            if v5 || !self.clustered {
                return Err(procedure_not_found("dbms.cluster.overview"));
            }
            let rows = state
                .cluster_members
                .iter()
                .map(|m| {
                    vec![
                        m.id.as_str().into(),
                        Value::list([format!("bolt://{}", m.address)]),
                        Value::map(m.databases.iter().map(|d| (d.as_str(), m.role.as_str()))),
                        Value::list(m.groups.iter()),
                    ]
                })
                .collect();
            return Ok(Rows::new(&["id", "addresses", "databases", "groups"], rows));
        }
        if is(SHOW_SERVERS) {
            if !v5 {
                return Err(syntax_error_at(ctx.query, "SERVERS"));
            }
            let this_server;
            let members: &[ClusterMember] = if state.cluster_members.is_empty() {
                this_server = [ClusterMember::new(
                    "8c3a4f51-0000-4000-8000-000000000001",
                    "localhost:7687",
                    "PRIMARY",
                )];
                &this_server
            } else {
                &state.cluster_members
            };
            let rows = members
                .iter()
                .map(|m| {
                    vec![
                        m.id.as_str().into(),
                        m.address.as_str().into(),
                        m.state.as_str().into(),
                        m.health.as_str().into(),
                        Value::list(m.databases.iter()),
                    ]
                })
                .collect();
            return Ok(Rows::new(
                &["name", "address", "state", "health", "hosting"],
                rows,
            ));
        }
        if let Some(d) = parse_duration_literal(&q) {
            return Ok(Rows::new(&["d"], vec![vec![d]]));
        }
        let database = ctx.own.database.as_str();
        if let Some(c) = state.canned.iter().find(|c| {
            normalize(&c.query) == q && c.database.as_deref().is_none_or(|d| d == database)
        }) {
            if c.writes && ctx.read_only {
                return Err(Failure::new(
                    ACCESS_MODE,
                    format!(
                        "Writing in read access mode not allowed. Attempted write to internal graph 0 ({database})"
                    ),
                ));
            }
            return Ok(Rows {
                fields: c.fields.clone(),
                records: c.records.clone(),
            });
        }
        Err(Failure::new(
            SYNTAX_ERROR,
            format!(
                "The dbwarden Bolt test server does not support this statement \
                 (see tests/support/bolt/persona.rs): {}",
                ctx.query
            ),
        ))
    }

    /// "No current query": an empty string on 4.4, null on 5.x.
    fn optional_text(&self, text: &Option<String>) -> Value {
        match (text, self.generation) {
            (Some(t), _) => t.as_str().into(),
            (None, Generation::V5) => Value::Null,
            (None, _) => "".into(),
        }
    }

    fn show_transactions_default<'a>(&self, txs: impl Iterator<Item = &'a Tx>) -> Rows {
        let v44 = self.generation == Generation::V4_4;
        let rows = txs
            .map(|t| {
                let ms = t.elapsed_ms;
                let mut row = vec![
                    t.database.as_str().into(),
                    t.id.as_str().into(),
                    self.optional_text(&t.query_id),
                    t.connection_id.as_str().into(),
                    t.client_address.as_str().into(),
                    t.username.as_str().into(),
                    self.optional_text(&t.query),
                    t.start_time.as_str().into(),
                    t.status.as_str().into(),
                    Value::duration(0, 0, ms.div_euclid(1000), ms.rem_euclid(1000) * 1_000_000),
                ];
                if v44 {
                    row.push(0.into());
                }
                row
            })
            .collect();
        let mut fields = vec![
            "database",
            "transactionId",
            "currentQueryId",
            "connectionId",
            "clientAddress",
            "username",
            "currentQuery",
            "startTime",
            "status",
            "elapsedTime",
        ];
        if v44 {
            fields.push("allocatedBytes");
        }
        Rows::new(&fields, rows)
    }

    /// name, state, populationPercent, type, entityType, labelsOrTypes,
    /// properties[, failureMessage]
    fn index_columns(&self, i: &Index, with_failure: bool) -> Vec<Value> {
        let default_type = if self.generation >= Generation::V5 {
            "RANGE"
        } else {
            "BTREE"
        };
        let mut row = vec![
            i.name.as_str().into(),
            i.state.as_str().into(),
            i.population_percent.into(),
            i.index_type.as_deref().unwrap_or(default_type).into(),
            i.entity_type.as_str().into(),
            Value::list(i.labels.iter()),
            Value::list(i.properties.iter()),
        ];
        if with_failure {
            row.push(i.failure_message.as_deref().unwrap_or("").into());
        }
        row
    }
}

const INDEX_FIELDS: [&str; 8] = [
    "name",
    "state",
    "populationPercent",
    "type",
    "entityType",
    "labelsOrTypes",
    "properties",
    "failureMessage",
];

/// `DROP INDEX name`, `DROP CONSTRAINT name` (names bare or in backticks)
/// and a CREATE equal to a dropped index's createStatement, which brings it
/// back POPULATING at 0% (a test advances it with
/// [`ServerState::advance_population`]); `None` for any other statement.
fn schema_change(state: &mut ServerState, query: &str, q: &str) -> Option<Result<Rows, Failure>> {
    let name_of = |rest: &str| -> String {
        let rest = rest.trim();
        match rest.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
            Some(quoted) => quoted.replace("``", "`"),
            None => rest.to_string(),
        }
    };
    let empty = || Ok(Rows::new(&[], Vec::new()));
    if let Some(rest) = q.strip_prefix("DROP INDEX ") {
        let name = name_of(rest);
        let Some(at) = state.indexes.iter().position(|i| i.name == name) else {
            return Some(Err(Failure::new(
                "Neo.DatabaseError.Schema.IndexDropFailed",
                format!("Unable to drop index called `{name}`. There is no such index."),
            )));
        };
        if let Some(c) = &state.indexes[at].owning_constraint {
            return Some(Err(Failure::new(
                "Neo.ClientError.Schema.DropIndexFailed",
                format!("Unable to drop index: Index belongs to constraint: `{c}`"),
            )));
        }
        let dropped = state.indexes.remove(at);
        state.dropped_indexes.push(dropped);
        return Some(empty());
    }
    if let Some(rest) = q.strip_prefix("DROP CONSTRAINT ") {
        let name = name_of(rest);
        let Some(at) = state
            .indexes
            .iter()
            .position(|i| i.owning_constraint.as_deref() == Some(name.as_str()))
        else {
            return Some(Err(Failure::new(
                "Neo.DatabaseError.Schema.ConstraintDropFailed",
                format!("Unable to drop constraint `{name}`: No such constraint {name}."),
            )));
        };
        let dropped = state.indexes.remove(at);
        state.dropped_indexes.push(dropped);
        return Some(empty());
    }
    if q.starts_with("CREATE ") {
        let at = state.dropped_indexes.iter().position(|i| {
            i.create_statement
                .as_deref()
                .is_some_and(|c| normalize(c) == q)
        })?;
        let mut back = state.dropped_indexes.remove(at);
        if state.indexes.iter().any(|i| i.name == back.name) {
            return Some(Err(Failure::new(
                "Neo.ClientError.Schema.EquivalentSchemaRuleAlreadyExists",
                format!("An equivalent index already exists: {query}"),
            )));
        }
        back.state = "POPULATING".into();
        back.population_percent = 0.0;
        back.failure_message = None;
        back.id += 1000;
        state.indexes.push(back);
        return Some(empty());
    }
    None
}

/// What a statement runs in: the connection, its parameters and the
/// statement's own transaction.
#[derive(Debug, Clone)]
pub struct RunContext<'a> {
    pub connection: u64,
    pub query: &'a str,
    pub params: &'a Value,
    /// The transaction this statement runs in, as SHOW TRANSACTIONS would
    /// list it (current query = this statement, metaData = tx_metadata).
    pub own: Tx,
    /// The session's access mode is read (`mode: "r"`): writes are refused.
    pub read_only: bool,
}

/// A result: column names and rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub fields: Vec<String>,
    pub records: Vec<Vec<Value>>,
}

impl Rows {
    pub fn new(fields: &[&str], records: Vec<Vec<Value>>) -> Rows {
        debug_assert!(records.iter().all(|r| r.len() == fields.len()));
        Rows {
            fields: fields.iter().map(|f| f.to_string()).collect(),
            records,
        }
    }
}

/// A FAILURE's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>) -> Failure {
        Failure {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The FAILURE Neo4j gives for a procedure it does not have.
pub fn procedure_not_found(procedure: &str) -> Failure {
    Failure::new(
        PROCEDURE_NOT_FOUND,
        format!(
            "There is no procedure with the name `{procedure}` registered for this database \
             instance. Please ensure you've spelled the procedure name correctly and that the \
             procedure is properly deployed."
        ),
    )
}

/// A parser error pointing at `token`, in the style of Neo4j's messages.
fn syntax_error_at(query: &str, token: &str) -> Failure {
    let offset = query.find(token).unwrap_or(0);
    Failure::new(
        SYNTAX_ERROR,
        format!(
            "Invalid input '{token}': expected <init> (line 1, column {} (offset: {offset}))\n\"{query}\"",
            offset + 1
        ),
    )
}

fn listed_transactions<'a>(
    state: &'a ServerState,
    ctx: &'a RunContext<'_>,
) -> impl Iterator<Item = &'a Tx> {
    let own = state.show_own_transaction.then_some(&ctx.own);
    state.transactions.iter().chain(own)
}

fn take_transaction(state: &mut ServerState, pred: impl Fn(&Tx) -> bool) -> Option<Tx> {
    let at = state.transactions.iter().position(pred)?;
    Some(state.transactions.remove(at))
}

fn list_queries_status(status: &str) -> String {
    if status.starts_with("Blocked") {
        "waiting".into()
    } else {
        status.to_lowercase()
    }
}

fn param<'a>(params: &'a Value, name: &str) -> Result<&'a Value, Failure> {
    params
        .get(name)
        .ok_or_else(|| Failure::new(PARAMETER_MISSING, format!("Expected parameter(s): {name}")))
}

fn string_param(params: &Value, name: &str) -> Result<String, Failure> {
    match param(params, name)? {
        Value::String(s) => Ok(s.clone()),
        other => Err(Failure::new(
            TYPE_ERROR,
            format!("Parameter ${name} must be a String, got a {}", other.kind()),
        )),
    }
}

/// A list of strings, or one string (TERMINATE TRANSACTIONS takes both).
fn string_list_param(params: &Value, name: &str) -> Result<Vec<String>, Failure> {
    let type_error = |kind: &str| {
        Failure::new(
            TYPE_ERROR,
            format!("Parameter ${name} must be a String or a List<String>, got a {kind}"),
        )
    };
    match param(params, name)? {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::List(items) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_error(i.kind()))
            })
            .collect(),
        other => Err(type_error(other.kind())),
    }
}

/// `RETURN duration({seconds:1,nanoseconds:5})AS d` (normalized) as a
/// Duration value.
fn parse_duration_literal(normalized: &str) -> Option<Value> {
    let body = normalized
        .strip_prefix("RETURN duration({")?
        .strip_suffix("})AS d")?;
    let (mut months, mut days, mut seconds, mut nanos) = (0, 0, 0, 0);
    for part in body.split(',') {
        let (key, value) = part.split_once(':')?;
        let value: i64 = value.parse().ok()?;
        match key {
            "months" => months = value,
            "days" => days = value,
            "seconds" => seconds = value,
            "nanoseconds" => nanos = value,
            _ => return None,
        }
    }
    Some(Value::duration(months, days, seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_ignores_layout_only() {
        assert_eq!(
            normalize("  MATCH ( n )\n\tRETURN count( n )  AS  nodes ;"),
            "MATCH(n)RETURN count(n)AS nodes"
        );
        assert_eq!(
            normalize("MATCH(n) RETURN count(n) AS nodes"),
            normalize(NODE_COUNT)
        );
        assert_eq!(
            normalize("YIELD a , b WHERE x = $id"),
            normalize("YIELD a,b WHERE x=$id")
        );
        assert_ne!(
            normalize("RETURN 1 AS elapsedMs"),
            normalize("RETURN 1 AS elapsedms")
        );
        assert_eq!(
            normalize("RETURN duration({seconds: 1, nanoseconds: 5}) AS d"),
            "RETURN duration({seconds:1,nanoseconds:5})AS d"
        );
    }

    #[test]
    fn duration_literals() {
        let d = |q: &str| parse_duration_literal(&normalize(q));
        assert_eq!(
            d("RETURN duration({seconds: 1, nanoseconds: 5}) AS d"),
            Some(Value::duration(0, 0, 1, 5))
        );
        assert_eq!(
            d("RETURN duration({months: 2, days: -3}) AS d"),
            Some(Value::duration(2, -3, 0, 0))
        );
        assert_eq!(d("RETURN duration({hours: 1}) AS d"), None);
        assert_eq!(d("RETURN duration({seconds: x}) AS d"), None);
    }

    fn ctx<'a>(query: &'a str, params: &'a Value) -> RunContext<'a> {
        RunContext {
            connection: 1,
            query,
            params,
            own: Tx::running("neo4j-transaction-7", "query-9", "neo4j", query),
            read_only: false,
        }
    }

    #[test]
    fn version_gates() {
        let mut state = ServerState::default();
        let none = Value::empty_map();
        let code = |p: &Persona, state: &mut ServerState, q: &str| {
            p.run(state, &ctx(q, &none)).err().map(|f| f.code)
        };
        let (v43, v44, v5) = (
            Persona::neo4j_4_3(),
            Persona::neo4j_4_4(),
            Persona::neo4j_5(),
        );
        assert_eq!(
            code(&v43, &mut state, SHOW_TRANSACTIONS).as_deref(),
            Some(SYNTAX_ERROR)
        );
        assert_eq!(code(&v44, &mut state, SHOW_TRANSACTIONS), None);
        assert_eq!(
            code(&v5, &mut state, LIST_QUERIES).as_deref(),
            Some(PROCEDURE_NOT_FOUND)
        );
        assert_eq!(code(&v43, &mut state, LIST_QUERIES), None);
        assert_eq!(
            code(&v43, &mut state, LIST_QUERIES_WITH_TRANSACTION).as_deref(),
            Some(SYNTAX_ERROR)
        );
        assert_eq!(
            code(&v5, &mut state, DB_INDEXES).as_deref(),
            Some(PROCEDURE_NOT_FOUND)
        );
        assert_eq!(
            code(&v43, &mut state, SHOW_INDEXES).as_deref(),
            Some(SYNTAX_ERROR)
        );
        assert_eq!(
            code(&v44, &mut state, SHOW_SERVERS).as_deref(),
            Some(SYNTAX_ERROR)
        );
        assert_eq!(
            code(&v44, &mut state, CLUSTER_OVERVIEW).as_deref(),
            Some(PROCEDURE_NOT_FOUND)
        );
        assert_eq!(
            code(&v44.clone().clustered(), &mut state, CLUSTER_OVERVIEW),
            None
        );
        assert_eq!(
            code(&v5, &mut state, "MATCH (n) DETACH DELETE n").as_deref(),
            Some(SYNTAX_ERROR)
        );
        assert_eq!(
            code(&v5, &mut state, TERMINATE_TRANSACTIONS).as_deref(),
            Some(PARAMETER_MISSING)
        );
    }

    #[test]
    fn every_documented_statement_has_a_constant_that_matches() {
        // A statement constant that no branch answers would be a doc lie.
        let params = Value::map([("id", Value::from("x")), ("ids", Value::list(["x"]))]);
        let mut state = ServerState::default();
        for q in [
            COMPONENTS,
            PING,
            SHOW_TRANSACTIONS,
            SHOW_TRANSACTION,
            SHOW_TRANSACTIONS_DEFAULT,
            TERMINATE_TRANSACTIONS,
            LIST_QUERIES,
            LIST_QUERIES_WITH_TRANSACTION,
            KILL_QUERY,
            KILL_QUERY_BARE,
            KILL_QUERIES,
            DB_INDEXES,
            DB_INDEXES_BARE,
            NODE_COUNT,
            RELATIONSHIP_COUNT,
            SHOW_DATABASES,
            CLUSTER_OVERVIEW,
        ] {
            let r = Persona::neo4j_4_4()
                .clustered()
                .run(&mut state, &ctx(q, &params));
            assert!(r.is_ok(), "{q}: {r:?}");
        }
        let params = Value::map([("id", Value::from("x")), ("name", Value::from("x"))]);
        for q in [SHOW_INDEXES, SHOW_INDEX] {
            let r = Persona::neo4j_4_4().run(&mut state, &ctx(q, &params));
            assert!(r.is_ok(), "{q}: {r:?}");
        }
        for q in [SHOW_INDEXES_5, SHOW_INDEX_5, SHOW_SERVERS] {
            let r = Persona::neo4j_5().run(&mut state, &ctx(q, &params));
            assert!(r.is_ok(), "{q}: {r:?}");
        }
    }
}
