//! A Bolt 4.x test server that neo4rs talks to over real TCP, standing in
//! for Neo4j (which cannot be installed where the tests run).
//!
//! - [`packstream`]: the [`Value`] model, encoder and decoder.
//! - [`server`]: [`BoltServer`] (handshake, chunking, the Bolt 4 message
//!   state machine, faults).
//! - [`persona`]: which Neo4j it pretends to be (4.3, 4.4, 5.x) and the exact
//!   statements it answers, with that version's result shapes.
//! - [`state`]: [`ServerState`], the world a test controls (transactions,
//!   indexes, counts, databases, cluster members, users, [`Fault`]s) and the
//!   record of what the server received and terminated.
//!
//! ```ignore
//! let server = BoltServer::start(Persona::neo4j_4_4(), ServerState::shared());
//! server.state().transactions.push(Tx::running("neo4j-transaction-42", "query-614", "alice", "MATCH (n) RETURN n"));
//! let graph = neo4rs::Graph::new(server.uri(), "neo4j", "secret")?;
//! ```

#![allow(dead_code, unused_imports)]

pub mod packstream;
pub mod persona;
pub mod server;
pub mod state;

pub use packstream::Value;
pub use persona::{Edition, Generation, Persona};
pub use server::{BoltServer, BoltVersion};
pub use state::{
    Canned, ClusterMember, ConnectionRecord, Db, Fault, Index, KillMethod, Request, ServerState,
    Statement, Termination, Tx,
};
