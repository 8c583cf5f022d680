//! What one poll of a Neo4j server saw: plain data, no client types.

use serde::{Deserialize, Serialize};

/// The statement families a Neo4j version answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    /// Before 4.4: `dbms.listQueries()` / `dbms.killQuery()`, `db.indexes()`.
    Procedures,
    /// 4.4: `SHOW TRANSACTIONS` / `TERMINATE TRANSACTIONS`, `SHOW INDEXES`,
    /// `dbms.cluster.overview()`.
    Show44,
    /// 5.x and calendar versions (2025.x): the same, with `SHOW SERVERS`.
    Show5,
}

impl Generation {
    /// From the kernel version `dbms.components()` reports ("4.3.23",
    /// "4.4.40", "5.26.1", "2025.01.0"); `None` when it does not parse or is
    /// older than 4.0, which dbwarden does not support.
    pub fn of_version(version: &str) -> Option<Generation> {
        let mut parts = version.split(['.', '-']);
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        match (major, minor) {
            (4, 0..=3) => Some(Generation::Procedures),
            (4, _) => Some(Generation::Show44),
            (m, _) if m >= 5 => Some(Generation::Show5),
            _ => None,
        }
    }
}

/// One running transaction (4.4+), or one running query (before 4.4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neo4jTransaction {
    pub database: String,
    /// `neo4j-transaction-42` (4.4+), or the query id `query-614` before 4.4:
    /// what the kill statement takes.
    pub id: String,
    pub query_id: Option<String>,
    /// Empty when the server does not say (a transaction of another user
    /// seen without the SHOW TRANSACTION privilege is not listed at all).
    pub username: String,
    /// The current query; `None` when the transaction runs none right now
    /// (an empty string on 4.4, null on 5.x).
    pub query: Option<String>,
    /// Running, Blocked, Closing, Terminated, ... as the server says it.
    pub status: String,
    pub elapsed_ms: i64,
    /// Tagged by dbwarden itself (transaction metadata `app = "dbwarden"`):
    /// never counted as slow, never acted on.
    pub own: bool,
}

/// An index that is not ONLINE, or a summary count of those that are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neo4jIndex {
    pub database: String,
    pub name: String,
    /// ONLINE, POPULATING, FAILED (as the server says it).
    pub state: String,
    pub population_percent: f64,
    pub index_type: Option<String>,
    pub entity_type: String,
    pub labels_or_types: Vec<String>,
    pub properties: Vec<String>,
    pub failure_message: Option<String>,
    /// The statement that creates the index (or its constraint) again, as
    /// the server reports it (`createStatement`, 4.4+); `None` before 4.4.
    #[serde(default)]
    pub create_statement: Option<String>,
    /// The constraint that owns the index: `owningConstraint` on 5.x; on
    /// 4.4 the index's own name when its `uniqueness` is `UNIQUE` (a
    /// constraint and its index share the name there). `None` for a plain index.
    #[serde(default)]
    pub owning_constraint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neo4jCounts {
    pub database: String,
    pub nodes: i64,
    pub relationships: i64,
}

/// A row of `SHOW DATABASES` (4.4+). In a cluster there is one per member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neo4jDatabase {
    pub name: String,
    pub requested_status: String,
    pub current_status: String,
    pub role: Option<String>,
}

/// A cluster member, from `dbms.cluster.overview()` (4.x) or `SHOW SERVERS` (5.x).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neo4jMember {
    pub id: String,
    pub address: String,
    /// 4.x: the member's roles by database ("neo4j: LEADER"); 5.x: the
    /// server's state (Enabled, Cordoned, ...).
    pub role: String,
    /// 5.x: Available / Unavailable; 4.x: "Available" when it reports roles.
    pub health: String,
    pub healthy: bool,
}

/// Everything one poll of a Neo4j target observed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neo4jSnapshot {
    /// Seconds since the epoch at the start of the poll.
    pub observed_at: f64,
    pub version: String,
    pub edition: String,
    pub generation: Generation,
    /// The round trip of `RETURN 1`, in seconds.
    pub ping_seconds: f64,
    /// Every transaction the server listed, dbwarden's own included (flagged).
    pub transactions: Vec<Neo4jTransaction>,
    /// Indexes of the configured databases.
    pub indexes: Vec<Neo4jIndex>,
    pub counts: Vec<Neo4jCounts>,
    /// Empty before 4.4.
    pub databases: Vec<Neo4jDatabase>,
    /// `None` when the server is not clustered (Community, or a standalone
    /// Enterprise server).
    pub cluster: Option<Vec<Neo4jMember>>,
}

impl Neo4jSnapshot {
    /// Transactions other than dbwarden's own.
    pub fn others(&self) -> impl Iterator<Item = &Neo4jTransaction> {
        self.transactions.iter().filter(|t| !t.own)
    }

    pub fn indexes_not_online(&self) -> impl Iterator<Item = &Neo4jIndex> {
        self.indexes.iter().filter(|i| i.state != "ONLINE")
    }

    /// Databases whose current status is not the requested one (a database
    /// stopped on purpose is requested "offline" and passes).
    pub fn databases_not_as_requested(&self) -> impl Iterator<Item = &Neo4jDatabase> {
        self.databases
            .iter()
            .filter(|d| !d.current_status.eq_ignore_ascii_case(&d.requested_status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_by_version() {
        for (v, g) in [
            ("4.0.12", Some(Generation::Procedures)),
            ("4.3.23", Some(Generation::Procedures)),
            ("4.4.0", Some(Generation::Show44)),
            ("4.4.40-enterprise", Some(Generation::Show44)),
            ("5.26.1", Some(Generation::Show5)),
            ("2025.01.0", Some(Generation::Show5)),
            ("3.5.35", None),
            ("x", None),
        ] {
            assert_eq!(Generation::of_version(v), g, "{v}");
        }
    }
}
