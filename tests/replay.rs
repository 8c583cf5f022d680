//! `dbwarden replay`: the policies against a snapshot recorded by
//! `dbwarden check --format json`, offline. Real sessions on a scratch
//! cluster make the snapshot; replay must name exactly the session a policy
//! selects, say why the others are left alone, and touch nothing.

mod support;

use std::process::Command;
use std::time::Duration;

use dbwarden::scratch::{ClusterOptions, ScratchCluster};
use support::*;

fn dbwarden(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run dbwarden");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_names_the_selected_session_and_why_the_others_are_spared() {
    let cluster =
        ScratchCluster::start_primary(ClusterOptions::default()).expect("scratch cluster");
    cluster
        .psql(
            "postgres",
            "CREATE ROLE app LOGIN; CREATE ROLE admin LOGIN SUPERUSER;",
        )
        .expect("roles");
    let mut victim = connect_as(&cluster, "app", "web").await;
    let mut ignored = connect_as(&cluster, "app", "psql").await;
    let mut superuser = connect_as(&cluster, "admin", "web").await;
    let (victim_pid, _) = backend_of(&mut victim).await;
    let (ignored_pid, _) = backend_of(&mut ignored).await;
    let (superuser_pid, _) = backend_of(&mut superuser).await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dbwarden.toml");
    std::fs::write(
        &config,
        format!(
            "[postgres.main]\nurl = {:?}\nsslmode = \"disable\"\n\n\
             [remediation]\nmode = \"enforce\"\naudit_file = {:?}\nstate_dir = {:?}\n\n\
             [remediation.policies.idle]\naction = \"terminate\"\n\
             [remediation.policies.idle.when]\nstate = [\"idle\"]\nidle_for = \"1s\"\n\
             ignore_applications = [\"psql\"]\n",
            cluster.url("postgres"),
            dir.path().join("audit.jsonl").display().to_string(),
            dir.path().display().to_string(),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();

    // Record a snapshot once every session has been idle past the threshold.
    let snapshot = dir.path().join("snapshot.json");
    wait_until(
        Duration::from_secs(20),
        "sessions idle for over 1 s in the recorded snapshot",
        async || {
            let (_, out, err) = dbwarden(&["check", "--config", &config, "--format", "json"]);
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("{e}: {err}"))?;
            let sessions = v["targets"][0]["snapshot"]["sessions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let now = v["targets"][0]["snapshot"]["server_now_us"]
                .as_i64()
                .unwrap_or(0);
            let idle_long = |pid: i32| {
                sessions.iter().any(|s| {
                    s["pid"] == pid
                        && s["state"] == "idle"
                        && now - s["state_change_us"].as_i64().unwrap_or(now) > 1_500_000
                })
            };
            if [victim_pid, ignored_pid, superuser_pid]
                .into_iter()
                .all(idle_long)
            {
                std::fs::write(&snapshot, &out).unwrap();
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .await;

    let (code, out, err) = dbwarden(&[
        "replay",
        "--config",
        &config,
        "--snapshot",
        snapshot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "replay failed: {err}\n{out}");
    let line_of = |pid: i32| {
        out.lines()
            .find(|l| l.contains(&format!("pid {pid} ")))
            .unwrap_or_else(|| panic!("replay does not mention pid {pid}:\n{out}"))
            .to_string()
    };
    assert!(line_of(victim_pid).contains("WOULD TERMINATE"), "{out}");
    assert!(
        line_of(victim_pid).contains("idle"),
        "the reason names the condition: {out}"
    );
    assert!(
        line_of(superuser_pid).contains("PROTECTED")
            && line_of(superuser_pid).contains("Superuser"),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.contains(&format!("pid {ignored_pid} "))),
        "an ignored application is no candidate at all:\n{out}"
    );
    assert!(out.contains("would act on 1 session(s)"), "{out}");

    // JSON output says the same.
    let (code, json, _) = dbwarden(&[
        "replay",
        "--config",
        &config,
        "--snapshot",
        snapshot.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let acted: Vec<i64> = v["targets"][0]["would_act_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["facts"]["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(acted, [i64::from(victim_pid)]);

    // Replay acted on nothing: every session is still there, and nothing was audited.
    for conn in [&mut victim, &mut ignored, &mut superuser] {
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .expect("session survives replay");
    }
    assert!(!dir.path().join("audit.jsonl").exists());

    // A file that is not a recorded snapshot is a usage error naming how to make one.
    let bogus = dir.path().join("bogus.json");
    std::fs::write(&bogus, "{\"nope\": 1}").unwrap();
    let (code, _, err) = dbwarden(&[
        "replay",
        "--config",
        &config,
        "--snapshot",
        bogus.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("check --format json"), "{err}");
}
