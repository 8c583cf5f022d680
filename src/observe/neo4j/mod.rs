//! Neo4j over Bolt: the observer and its plain snapshot data.
