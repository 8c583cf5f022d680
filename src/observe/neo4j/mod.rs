//! Neo4j over Bolt (neo4rs): the observer and its plain [`snapshot`] data.
//!
//! One poll reads, in this order: `dbms.components()` (version and edition,
//! which choose the statements), `RETURN 1` (timed), the running
//! transactions (`SHOW TRANSACTIONS` on 4.4+, `dbms.listQueries()` before),
//! `SHOW DATABASES` (4.4+), the cluster members where clustered, then per
//! configured database its indexes (`SHOW INDEXES` / `db.indexes()`) and its
//! node and relationship counts (answered from the count store). On 4.4+
//! the indexes come with the statement that created them and the
//! constraint that owns them, which the index rebuild
//! (`remediate::neo4j_index`) needs.
//!
//! Durations are projected to milliseconds on the server. Every statement
//! carries transaction metadata `{app: "dbwarden"}`, so dbwarden recognises
//! its own transactions in `SHOW TRANSACTIONS` and never acts on them.
//!
//! neo4rs bounds every read, not only the connect, by its one
//! `connection_timeout`, and retries transient errors for up to a minute.
//! dbwarden keeps its own bounds instead: neo4rs gets a timeout longer than
//! any of ours, a fresh client's first statement (connect, handshake, log
//! in, `dbms.components()`) is bounded by `connect_timeout` and reported as
//! `connect` when it overruns, and the whole poll by `poll_timeout`
//! (`timeout`). After a timeout or a broken connection the client is
//! rebuilt, so the next poll starts clean.

pub mod settings;
pub mod snapshot;

pub use settings::Neo4jTarget;
pub use snapshot::*;

/// The statements, by generation. Each is matched verbatim by the Bolt test
/// server's personas (tests/support/bolt/persona.rs).
pub mod statements {
    pub const COMPONENTS: &str =
        "CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition";
    pub const PING: &str = "RETURN 1";
    pub const SHOW_TRANSACTIONS: &str = "SHOW TRANSACTIONS YIELD database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime, metaData RETURN database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime.milliseconds AS elapsedMs, metaData";
    pub const SHOW_TRANSACTION: &str = "SHOW TRANSACTIONS YIELD database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime, metaData WHERE transactionId = $id RETURN database, transactionId, currentQueryId, username, currentQuery, status, elapsedTime.milliseconds AS elapsedMs, metaData";
    pub const TERMINATE_TRANSACTIONS: &str = "TERMINATE TRANSACTIONS $ids";
    pub const LIST_QUERIES: &str = "CALL dbms.listQueries() YIELD queryId, username, query, status, elapsedTimeMillis, metaData, database RETURN queryId, username, query, status, elapsedTimeMillis, metaData, database";
    pub const KILL_QUERY: &str = "CALL dbms.killQuery($id) YIELD queryId, username, message RETURN queryId, username, message";
    pub const DB_INDEXES: &str = "CALL db.indexes() YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties";
    /// 4.4: `uniqueness` tells a constraint-backed index (whose name is its
    /// constraint's); `createStatement` is what a rebuild runs again.
    pub const SHOW_INDEXES: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement";
    /// 5.x: `owningConstraint` names the constraint that owns the index.
    pub const SHOW_INDEXES_5: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement";
    /// One index by name: the index rebuild's re-check right before the DROP.
    pub const SHOW_INDEX: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement WHERE name = $name RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, uniqueness, createStatement";
    pub const SHOW_INDEX_5: &str = "SHOW INDEXES YIELD name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement WHERE name = $name RETURN name, state, populationPercent, type, entityType, labelsOrTypes, properties, failureMessage, owningConstraint, createStatement";
    pub const NODE_COUNT: &str = "MATCH (n) RETURN count(n) AS nodes";
    pub const RELATIONSHIP_COUNT: &str = "MATCH ()-[r]->() RETURN count(r) AS relationships";
    pub const SHOW_DATABASES: &str = "SHOW DATABASES YIELD name, requestedStatus, currentStatus, role RETURN name, requestedStatus, currentStatus, role";
    pub const CLUSTER_OVERVIEW: &str = "CALL dbms.cluster.overview() YIELD id, addresses, databases, groups RETURN id, addresses, databases, groups";
    pub const SHOW_SERVERS: &str = "SHOW SERVERS YIELD name, address, state, health, hosting RETURN name, address, state, health, hosting";
}

/// The metadata key that marks dbwarden's own transactions (its value is
/// [`crate::observe::APPLICATION_NAME`]).
pub const METADATA_APP_KEY: &str = "app";

/// The Bolt client and observer (neo4rs): only in builds with the `neo4j`
/// feature (the default).
#[cfg(feature = "neo4j")]
mod bolt;
#[cfg(feature = "neo4j")]
pub use bolt::*;
/// Cypher probes over the observer's client.
#[cfg(feature = "neo4j")]
pub mod probes;
