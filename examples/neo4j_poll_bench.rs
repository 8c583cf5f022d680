//! Benchmark: the cost of one Neo4j poll as the number of running
//! transactions the server reports grows (10, 100, 1,000).
//!
//! The Bolt test server (tests/support/bolt) plays Neo4j 5.x in a child
//! process, so that what is measured here is dbwarden's side only: the
//! poller's wall time per poll and its CPU time per poll (from
//! /proc/self/schedstat, nanoseconds). The server answers from memory, so
//! this measures dbwarden's protocol handling, decoding and evaluation, not
//! the cost of SHOW TRANSACTIONS inside a real Neo4j.
//!
//! Run: `bash bench/neo4j_poll.sh` (builds in release mode, prints a table).

#![cfg_attr(not(feature = "neo4j"), allow(dead_code, unused_imports))]

#[path = "../tests/support/bolt/mod.rs"]
mod bolt;

/// Without the `neo4j` feature there is no Neo4j observer to measure.
#[cfg(not(feature = "neo4j"))]
fn main() {
    eprintln!("neo4j_poll_bench needs the `neo4j` feature (a default build)");
    std::process::exit(2);
}

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bolt::{BoltServer, Index, Persona, ServerState, Tx};
use dbwarden::config::Config;
use dbwarden::evaluate;
#[cfg(feature = "neo4j")]
use dbwarden::observe::neo4j::Neo4jObserver;

#[cfg(feature = "neo4j")]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(args[2].parse().expect("transactions")),
        _ => bench(
            std::env::var("POLLS")
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or(300),
        ),
    }
}

/// The child: a Bolt server with `n` running transactions; prints its URI.
#[cfg(feature = "neo4j")]
fn serve(n: usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let mut state = ServerState::default();
        state.transactions = (0..n)
            .map(|i| {
                Tx::running(
                    &format!("neo4j-transaction-{i}"),
                    &format!("query-{i}"),
                    if i % 2 == 0 { "alice" } else { "bob" },
                    "MATCH (p:Person)-[:KNOWS]->(f) WHERE p.name = $name RETURN f LIMIT 10",
                )
                .status(if i % 10 == 0 { "Blocked" } else { "Running" })
                .elapsed_ms((i as i64 * 37) % 120_000)
            })
            .collect();
        state.indexes = (0..20)
            .map(|i| Index::online(&format!("idx{i}"), "Person", &format!("p{i}")))
            .collect();
        state.node_count = 1_000_000;
        state.relationship_count = 5_000_000;
        let state = state.into_shared();
        let server = BoltServer::start(Persona::neo4j_5(), state.clone());
        println!("{}", server.uri());
        std::io::stdout().flush().ok();
        // Serve until the parent closes stdin; trim the request log meanwhile.
        let stdin = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        });
        let trim = async {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let mut s = bolt::state::lock(&state);
                s.requests.clear();
                s.statements.clear();
            }
        };
        tokio::select! {
            _ = stdin => {}
            _ = trim => {}
        }
        server.shutdown().await;
    });
}

/// Nanoseconds this process has run on a CPU.
#[cfg(feature = "neo4j")]
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[cfg(feature = "neo4j")]
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[cfg(feature = "neo4j")]
fn bench(polls: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("password"), "secret").expect("password");
    println!(
        "| transactions | polls | wall median | wall p99 | CPU per poll | transactions seen |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in [10usize, 100, 1000] {
        let exe = std::env::current_exe().expect("current exe");
        let mut child = Command::new(exe)
            .args(["serve", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the Bolt server");
        let mut uri = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut uri)
            .expect("the server's URI");
        let toml = format!(
            "[neo4j.bench]\nuri = \"{}\"\npassword_file = \"{}\"\npoll_interval = \"10s\"\npoll_timeout = \"5s\"\n",
            uri.trim(),
            dir.path().join("password").display()
        );
        let target = Config::from_toml_with_env(&toml, std::iter::empty())
            .expect("config")
            .neo4j
            .remove(0);
        let (walls, cpu, seen) = rt.block_on(async {
            let mut observer = Neo4jObserver::new(target.target.clone());
            // Warm up: connect, first allocations.
            for _ in 0..10 {
                observer.poll().await.expect("poll");
            }
            let mut walls = Vec::with_capacity(polls);
            let mut seen = 0;
            let cpu_before = cpu_ns();
            for _ in 0..polls {
                let started = Instant::now();
                let snapshot = observer.poll().await.expect("poll");
                // What the daemon does with it after each poll.
                let _ = evaluate::evaluate_neo4j(
                    &snapshot,
                    &target.thresholds,
                    &evaluate::HoldState::default(),
                    0,
                );
                let _ = evaluate::summarize_neo4j(&snapshot, &target.thresholds);
                walls.push(started.elapsed().as_secs_f64() * 1000.0);
                seen = snapshot.others().count();
            }
            let cpu = (cpu_ns() - cpu_before) as f64 / polls as f64 / 1e6;
            (walls, cpu, seen)
        });
        drop(child.stdin.take());
        let _ = child.wait();
        let mut sorted = walls.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "| {n} | {polls} | {:.2} ms | {:.2} ms | {:.2} ms | {seen} |",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            cpu
        );
    }
}
