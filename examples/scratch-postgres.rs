//! Starts a scratch PostgreSQL cluster (the tests' harness), writes its URL to
//! the file named by the first argument, and keeps it until killed.
//! Used by `scripts/run-local.sh` when no local PostgreSQL is running.

use dbwarden::scratch::{ClusterOptions, ScratchCluster};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: scratch-postgres URL_FILE")?;
    let cluster = ScratchCluster::start_primary(ClusterOptions::default())?;
    std::fs::write(&out, cluster.url("postgres"))?;
    eprintln!(
        "scratch PostgreSQL at {} (data in {})",
        cluster.url("postgres"),
        cluster.data_dir().display()
    );
    // Wait for SIGTERM/SIGINT; the cluster's Drop stops the server and removes its files.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(dbwarden::daemon::shutdown_signal());
    drop(cluster);
    Ok(())
}
