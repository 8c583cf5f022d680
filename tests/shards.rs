//! Shards across replicas: three `dbwarden` processes (the real binary)
//! share twelve targets through the fake Kubernetes API server's Leases
//! (`[kubernetes.shards]`, Lease duration 3 s, renewed every 500 ms) and
//! poll a scratch PostgreSQL primary, one database per target.
//!
//! Who polls what is read from the server: dbwarden's backends
//! (`application_name = 'dbwarden'`) by database (one per target), each
//! attributed to the process holding its client port (`/proc`). A monitor
//! samples the server all along and records the longest time any target had
//! backends of two processes at once.
//!
//! 1. Every target is polled by exactly one replica, each replica by its
//!    rendezvous share, and every replica sees three members, none unowned.
//! 2. `kill -9` of one replica: its targets are polled by the others within
//!    the Lease duration, two renewal periods (the survivors' reading
//!    granularity) and one poll interval.
//! 3. Started again, it takes back exactly its share.
//! 4. One replica cut off from the API server (its requests hang) stops
//!    polling within one Lease duration; the others take its targets.
//! 5. A replica stopped with SIGTERM deletes its Lease once its targets
//!    have stopped, and the others take them within a Lease duration.
//! 6. Throughout: no target polled by two replicas for longer than one poll
//!    interval, and the fake saw no request it does not serve.
//!
//! 7. Two processes given one identity: one acts, the other says so and
//!    polls nothing.
//! 8. A Lease is deleted only at the version read: not by a member leaving
//!    after a twin wrote it, not by a sweep after its member renewed it
//!    (`ShardLeases` directly against the fake).
//!
//! Needs Linux and the Debian package `postgresql-15`; about 30 s.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbwarden::kubernetes::shards::owner;
use dbwarden::scratch::ScratchCluster;
use sqlx::PgConnection;
use support::kube_fake::{FakeCluster, KubeFake};
use support::{DaemonProcess, metric_value, psql, tcp_ports_of, wait_until};
use tokio_util::sync::CancellationToken;

const TARGETS: usize = 12;
const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];
const LEASE: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_millis(500);
const INTERVAL: Duration = Duration::from_secs(1);
/// Start-up and settling, where no bound of the issue applies.
const SETTLE: Duration = Duration::from_secs(30);

fn target_names() -> Vec<String> {
    (1..=TARGETS).map(|i| format!("shard{i:02}")).collect()
}

fn config(pg: &ScratchCluster, kube: &KubeFake, replica: &str, dir: &Path) -> String {
    config_as(pg, kube, replica, replica, dir, TARGETS)
}

/// The configuration of process `process` with shard identity `identity`
/// (`remediation.instance`) and the first `targets` targets.
fn config_as(
    pg: &ScratchCluster,
    kube: &KubeFake,
    identity: &str,
    process: &str,
    dir: &Path,
    targets: usize,
) -> String {
    let mut toml = format!(
        "[remediation]\nmode = \"observe\"\ninstance = \"{identity}\"\naudit_file = \"{}\"\nstate_dir = \"{}\"\n\n",
        dir.join(format!("audit-{process}.jsonl")).display(),
        dir.join(format!("state-{process}")).display(),
    );
    toml.push_str(&kube.config_section_for(
        process,
        &format!(
            "\n[kubernetes.shards]\ngroup = \"dbwarden\"\nduration = \"{}s\"\nrenew_every = \"{}ms\"\n",
            LEASE.as_secs(),
            RENEW.as_millis()
        ),
    ));
    for name in target_names().into_iter().take(targets) {
        toml.push_str(&format!(
            "\n[postgres.{name}]\nurl = \"{}\"\nsslmode = \"disable\"\npoll_interval = \"1s\"\n\
             poll_timeout = \"1s\"\nstatement_timeout = \"500ms\"\nconnect_timeout = \"1s\"\n\
             backoff_max = \"1s\"\n",
            pg.url(&name)
        ));
    }
    toml
}

/// dbwarden's backends now: by database, the replicas (by name) holding them.
async fn pollers(
    conn: &mut PgConnection,
    procs: &[(String, u32)],
) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT datname::text, client_port FROM pg_stat_activity
         WHERE application_name = 'dbwarden' AND datname LIKE 'shard%'",
    )
    .fetch_all(conn)
    .await
    .map_err(|e| format!("pg_stat_activity: {e}"))?;
    let ports: Vec<(String, BTreeSet<u16>)> = procs
        .iter()
        .map(|(n, pid)| (n.clone(), tcp_ports_of(*pid)))
        .collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (db, port) in rows {
        let who = ports
            .iter()
            .find(|(_, p)| u16::try_from(port).is_ok_and(|port| p.contains(&port)))
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("unknown port {port}"));
        out.entry(db).or_default().insert(who);
    }
    Ok(out)
}

/// The expected owner of each target among `members`.
fn expected(members: &[&str]) -> BTreeMap<String, BTreeSet<String>> {
    let members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    target_names()
        .into_iter()
        .map(|t| {
            let o = owner(&t, &members).unwrap().to_string();
            (t, BTreeSet::from([o]))
        })
        .collect()
}

/// Samples the server every 50 ms; records per target how long it was
/// polled by two replicas at once (the longest stretch).
struct Monitor {
    longest: Arc<Mutex<(Duration, String)>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    async fn start(pg: &ScratchCluster) -> Monitor {
        let mut conn = support::connect(pg, "shard-monitor").await;
        let longest = Arc::new(Mutex::new((Duration::ZERO, String::new())));
        let stop = CancellationToken::new();
        let (l, s) = (longest.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut since: BTreeMap<String, Instant> = BTreeMap::new();
            while !s.is_cancelled() {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT datname::text, count(*) FROM pg_stat_activity
                     WHERE application_name = 'dbwarden' AND datname LIKE 'shard%' GROUP BY 1",
                )
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                let now = Instant::now();
                let doubled: BTreeSet<String> = rows
                    .into_iter()
                    .filter(|(_, n)| *n > 1)
                    .map(|(d, _)| d)
                    .collect();
                since.retain(|d, _| doubled.contains(d));
                for d in doubled {
                    let start = *since.entry(d.clone()).or_insert(now);
                    let mut g = l.lock().unwrap();
                    if now - start > g.0 {
                        *g = (now - start, d);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Monitor {
            longest,
            stop,
            task,
        }
    }

    async fn finish(self) -> (Duration, String) {
        self.stop.cancel();
        let _ = self.task.await;
        self.longest.lock().unwrap().clone()
    }
}

/// Waits until the targets are polled exactly as `want` says.
async fn wait_for(
    conn: &mut PgConnection,
    procs: &[(String, u32)],
    want: &BTreeMap<String, BTreeSet<String>>,
    within: Duration,
    desc: &str,
) -> Duration {
    let started = Instant::now();
    wait_until(within, desc, async || {
        let got = pollers(conn, procs).await?;
        if &got == want {
            Ok(())
        } else {
            Err(format!("polled by {got:?}\nwanted {want:?}"))
        }
    })
    .await;
    started.elapsed()
}

fn procs(replicas: &BTreeMap<&str, DaemonProcess>) -> Vec<(String, u32)> {
    replicas
        .iter()
        .map(|(n, p)| (n.to_string(), p.pid()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_targets_through_leases() {
    support::init_logging();
    let pg = support::primary();
    for t in target_names() {
        psql(&pg, &format!("CREATE DATABASE {t}"));
    }
    let kube = KubeFake::start(FakeCluster {
        namespace: "db".into(),
        pods: Vec::new(),
        statefulsets: Vec::new(),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conn = support::connect(&pg, "shard-test").await;
    let monitor = Monitor::start(&pg).await;

    // 1. Three replicas: one poller per target, by rendezvous.
    let mut replicas = BTreeMap::new();
    for r in REPLICAS {
        let p = DaemonProcess::spawn(r, dir.path(), &config(&pg, &kube, r, dir.path())).await;
        replicas.insert(r, p);
    }
    let all = expected(&REPLICAS);
    for r in REPLICAS {
        assert!(
            all.values().any(|o| o.contains(r)),
            "the test needs every replica to own a target: {all:?}"
        );
    }
    wait_for(
        &mut conn,
        &procs(&replicas),
        &all,
        SETTLE,
        "every target polled by its one owner",
    )
    .await;
    for (name, p) in &replicas {
        // The claims others publish reach this replica's metrics a round later.
        let text = wait_until(SETTLE, "the shard metrics to settle", async || {
            let text = p.try_metrics().await?;
            let m = |n: &str, l: &[(&str, &str)]| metric_value(&text, n, l);
            let mut got = vec![
                m("dbwarden_shard_members", &[]),
                m("dbwarden_shard_unowned_targets", &[]),
            ];
            let mut want = vec![Some(3.0), Some(0.0)];
            for r in REPLICAS {
                got.push(m("dbwarden_shard_targets", &[("member", r)]));
                want.push(Some(all.values().filter(|o| o.contains(r)).count() as f64));
            }
            if got == want {
                Ok(text)
            } else {
                Err(format!(
                    "{name}: members, unowned, shares {got:?}, wanted {want:?}"
                ))
            }
        })
        .await;
        // It exports only its own targets.
        for t in target_names() {
            let own = all[&t].contains(*name);
            let polled = metric_value(&text, "dbwarden_polls_total", &[("target", &t)]).is_some();
            assert_eq!(polled, own, "{name} exports {t}: {polled}, owns it: {own}");
        }
    }

    // Each replica's Lease says who holds it, for how long, and since when
    // (what other members and `kubectl get lease` read), in the group.
    let leases = kube.leases();
    for r in REPLICAS {
        let lease = leases
            .iter()
            .find(|l| l["metadata"]["name"] == format!("dbwarden-{r}"))
            .unwrap_or_else(|| panic!("no Lease for {r}: {leases:#?}"));
        let spec = &lease["spec"];
        assert_eq!(spec["holderIdentity"], *r, "{lease:#}");
        assert_eq!(spec["leaseDurationSeconds"], LEASE.as_secs(), "{lease:#}");
        assert_eq!(spec["leaseTransitions"], 0, "{lease:#}");
        for field in ["acquireTime", "renewTime"] {
            assert!(spec[field].is_string(), "{field} missing: {lease:#}");
        }
        assert_eq!(
            lease["metadata"]["labels"]["dbwarden.io/shard-group"], "dbwarden",
            "{lease:#}"
        );
    }

    // 2. kill -9 of replica-c: the others take its targets.
    let victim = "replica-c";
    replicas.get_mut(victim).unwrap().kill9();
    let killed = Instant::now();
    let survivors = expected(&["replica-a", "replica-b"]);
    let limit = LEASE + 2 * RENEW + INTERVAL;
    let live = procs(&replicas);
    wait_for(
        &mut conn,
        &live,
        &survivors,
        limit + Duration::from_secs(1),
        "the survivors polling the killed replica's targets",
    )
    .await;
    let took = killed.elapsed();
    assert!(
        took <= limit,
        "the killed replica's targets were polled again after {took:?}, over {limit:?}"
    );

    // 3. Started again: it takes back its share.
    let file = replicas[victim].config_file.clone();
    let addr = replicas[victim].addr().to_string();
    drop(replicas.remove(victim));
    let again = DaemonProcess::start(victim, dir.path(), &file, &addr, &[]).await;
    replicas.insert(victim, again);
    wait_for(
        &mut conn,
        &procs(&replicas),
        &all,
        SETTLE,
        "the restarted replica polling its share again",
    )
    .await;

    // 4. replica-b cut off from the API server: it stops within a Lease duration.
    let cut = "replica-b";
    kube.cut_off(cut);
    let cut_at = Instant::now();
    let everyone = procs(&replicas);
    wait_until(
        LEASE + Duration::from_secs(1),
        "the cut-off replica to stop polling",
        async || {
            let got = pollers(&mut conn, &everyone).await?;
            let still: Vec<&String> = got
                .iter()
                .filter(|(_, w)| w.contains(cut))
                .map(|(t, _)| t)
                .collect();
            if still.is_empty() {
                Ok(())
            } else {
                Err(format!("{cut} still polls {still:?}"))
            }
        },
    )
    .await;
    let stopped = cut_at.elapsed();
    assert!(
        stopped <= LEASE,
        "{cut} stopped polling {stopped:?} after losing the API server, over {LEASE:?}"
    );
    wait_for(
        &mut conn,
        &everyone,
        &expected(&["replica-a", "replica-c"]),
        SETTLE,
        "the others taking the cut-off replica's targets",
    )
    .await;
    kube.restore(cut);
    wait_for(
        &mut conn,
        &everyone,
        &all,
        SETTLE,
        "the reconnected replica polling its share again",
    )
    .await;

    // 5. A replica stopped with SIGTERM deletes its Lease after its
    //    targets stopped: the others take them without waiting for expiry.
    let leaving = "replica-a";
    let pid = replicas[leaving].pid().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let termed = Instant::now();
    wait_until(
        SETTLE,
        "replica-a to exit and delete its Lease",
        async || {
            let gone = !replicas.get_mut(leaving).unwrap().is_running();
            let lease = kube
                .leases()
                .iter()
                .any(|l| l["metadata"]["name"] == "dbwarden-replica-a");
            if gone && !lease {
                Ok(())
            } else {
                Err(format!("running {}, Lease {lease}", !gone))
            }
        },
    )
    .await;
    let remaining = procs(&replicas);
    wait_for(
        &mut conn,
        &remaining,
        &expected(&["replica-b", "replica-c"]),
        LEASE,
        "the others taking the targets of the replica that left",
    )
    .await;
    let handed = termed.elapsed();

    // 6. Never two pollers for longer than an interval.
    let (longest, db) = monitor.finish().await;
    assert!(
        longest <= INTERVAL,
        "{db} was polled by two replicas at once for {longest:?}, over {INTERVAL:?}"
    );
    assert!(kube.unexpected().is_empty(), "{:?}", kube.unexpected());
    eprintln!(
        "killed replica's targets re-polled after {took:?}; cut-off replica stopped after \
         {stopped:?}; a replica leaving on SIGTERM handed over in {handed:?}; longest double \
         poll {longest:?} ({db})"
    );
}

/// Two processes given one identity (a shared `remediation.instance`): the
/// one that wrote the Lease last acts, the other notices the foreign writes
/// to its Lease, says so, and polls nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_with_one_identity_never_both_act() {
    support::init_logging();
    const N: usize = 4;
    let pg = support::primary();
    for t in target_names().into_iter().take(N) {
        psql(&pg, &format!("CREATE DATABASE {t}"));
    }
    let kube = KubeFake::start(FakeCluster {
        namespace: "db".into(),
        pods: Vec::new(),
        statefulsets: Vec::new(),
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut conn = support::connect(&pg, "shard-test").await;
    let monitor = Monitor::start(&pg).await;
    let mut twins = BTreeMap::new();
    for p in ["twin-1", "twin-2"] {
        let toml = config_as(&pg, &kube, "twin", p, dir.path(), N);
        twins.insert(p, DaemonProcess::spawn(p, dir.path(), &toml).await);
    }
    let all = procs(&twins);
    let active = wait_until(
        SETTLE,
        "one of the twins polling every target",
        async || {
            let got = pollers(&mut conn, &all).await?;
            let who: BTreeSet<&String> = got.values().flatten().collect();
            let each_once = got.len() == N && got.values().all(|w| w.len() == 1);
            let warned: Vec<&str> = twins
                .iter()
                .filter(|(_, p)| {
                    p.log().contains(
                        "another dbwarden process runs with this replica's shard identity",
                    )
                })
                .map(|(n, _)| *n)
                .collect();
            match (each_once, who.len(), warned.as_slice()) {
                (true, 1, [passive]) if !who.contains(&passive.to_string()) => {
                    Ok(who.into_iter().next().unwrap().clone())
                }
                _ => Err(format!("polled by {got:?}, warned: {warned:?}")),
            }
        },
    )
    .await;
    // It stays that way for a few Lease durations.
    let until = Instant::now() + 2 * LEASE;
    while Instant::now() < until {
        let got = pollers(&mut conn, &all).await.unwrap();
        for (t, w) in &got {
            assert_eq!(w, &BTreeSet::from([active.clone()]), "{t}: {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (longest, db) = monitor.finish().await;
    assert!(
        longest <= INTERVAL,
        "{db} was polled by both twins for {longest:?}"
    );
}

/// A member deletes a Lease only as it read it (a DELETE with the read
/// `resourceVersion` as its precondition), so that it never removes a Lease
/// someone wrote since: leaving, not the Lease a twin (a second process
/// given its identity) wrote after it; sweeping, not the Lease of a member
/// that came back after it read it long expired.
#[cfg(feature = "kubernetes")]
#[tokio::test]
async fn a_lease_is_deleted_only_as_it_was_read() {
    use dbwarden::kubernetes::now_ms;
    use dbwarden::kubernetes::shards::{SWEEP_AFTER, ShardLeases, ShardSettings};
    use kube::config::{KubeConfigOptions, Kubeconfig};

    // What the daemon's client builder does first (rustls has two providers compiled in).
    dbwarden::observe::tls::ensure_provider();
    let kube = KubeFake::start(FakeCluster::databases());
    let member = async |client: &str, identity: &str| {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(kube.kubeconfig_for(client)).expect("the fake's kubeconfig"),
            &KubeConfigOptions::default(),
        )
        .await
        .expect("a client configuration");
        let settings = ShardSettings {
            identity: identity.to_string(),
            ..ShardSettings::default()
        };
        ShardLeases::new(
            kube::Client::try_from(config).expect("a client"),
            kube.namespace(),
            settings,
        )
    };
    let holders = || -> BTreeMap<String, String> {
        kube.leases()
            .iter()
            .map(|l| {
                let name = l["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let holder = l["spec"]["holderIdentity"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (name, holder)
            })
            .collect()
    };
    let renew = async |m: &ShardLeases, at: u64| {
        let reading = m.members(at).await.expect("a reading");
        m.renew(at, &["a".to_string(), "b".to_string()], reading.own)
            .await
            .expect("a renewal");
    };
    let (a, b, twin) = (
        member("a", "a").await,
        member("b", "b").await,
        member("twin", "a").await,
    );
    let lease = ShardSettings::default().duration.as_millis() as u64;
    let t = now_ms();
    renew(&a, t).await;
    renew(&b, t).await;
    let both = BTreeMap::from([
        ("dbwarden-a".to_string(), "a".to_string()),
        ("dbwarden-b".to_string(), "b".to_string()),
    ]);
    assert_eq!(holders(), both);

    // Leaving: the twin wrote a's Lease after a did; a's delete is refused
    // and the Lease stays; the twin, its last writer, deletes it.
    renew(&twin, t + 1_000).await;
    assert!(
        a.release().await.is_err(),
        "a deleted a Lease the twin wrote"
    );
    assert_eq!(holders(), both);
    twin.release().await.expect("the last writer leaves");
    assert_eq!(holders().keys().collect::<Vec<_>>(), ["dbwarden-b"]);

    // Sweeping: a sees b's Lease unchanged for SWEEP_AFTER Lease durations,
    // but b renews before a deletes it: the delete is refused.
    let gone_for = SWEEP_AFTER * lease + 1_000;
    a.members(t).await.expect("a reading");
    a.members(t + gone_for).await.expect("a reading");
    renew(&b, t).await;
    a.sweep().await;
    assert_eq!(holders().get("dbwarden-b").map(String::as_str), Some("b"));
    // Read again and still unchanged that long later: deleted.
    a.members(t + gone_for).await.expect("a reading");
    a.sweep().await;
    assert!(
        holders().contains_key("dbwarden-b"),
        "swept on its first sighting"
    );
    a.members(t + 2 * gone_for).await.expect("a reading");
    a.sweep().await;
    assert!(holders().is_empty(), "{:?}", holders());
    assert_eq!(kube.unexpected(), Vec::<String>::new());
}
