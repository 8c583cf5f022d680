//! The configuration loader through its public API: the example
//! configurations, the file's shape when printed and loaded back, and the
//! messages for every kind of mistake, in every section.

use std::path::Path;
use std::time::Duration;

use dbwarden::config::{Config, ConfigError, ConfigIssue};
use dbwarden::evaluate::{CheckId, CheckName, Thresholds};
use dbwarden::observe::{SessionState, SslMode};
use dbwarden::remediate::Mode;
use dbwarden::remediate::policy::{Action, Blocking, Policy, Victims};

const EXAMPLE: &str = include_str!("../config/dbwarden.example.toml");
const LOCAL: &str = include_str!("../config/local.toml");
const EXAMPLE_ENV: [(&str, &str); 2] = [
    ("PG_PRIMARY_PASSWORD", "primary-secret-1"),
    ("PG_STANDBY_PASSWORD", "standby-secret-2"),
];

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(toml, env(vars))
}

#[track_caller]
fn ok(toml: &str, vars: &[(&str, &str)]) -> Config {
    load(toml, vars).unwrap_or_else(|e| panic!("{e}"))
}

#[track_caller]
fn issues(toml: &str, vars: &[(&str, &str)]) -> Vec<ConfigIssue> {
    match load(toml, vars) {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(ConfigError::Invalid(issues)) => issues,
        Err(e) => panic!("expected ConfigError::Invalid, got {e}"),
    }
}

/// The one issue at `path`, whose message must contain every one of `needles`.
#[track_caller]
fn assert_issue(issues: &[ConfigIssue], path: &str, needles: &[&str]) {
    let at: Vec<_> = issues.iter().filter(|i| i.path == path).collect();
    assert_eq!(at.len(), 1, "one issue at {path} expected in {issues:#?}");
    for n in needles {
        assert!(at[0].message.contains(n), "{:?} lacks {n:?}", at[0].message);
    }
}

const MIN: &str = "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n";

#[test]
fn the_example_loads_with_the_runbook_defaults_and_its_overrides() {
    let c = ok(EXAMPLE, &EXAMPLE_ENV);
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9641");
    let names: Vec<_> = c.postgres.iter().map(|t| t.target.name.as_str()).collect();
    assert_eq!(names, ["primary", "standby"]);
    let (primary, standby) = (&c.postgres[0], &c.postgres[1]);
    assert_eq!(
        primary.target.password_env.as_deref(),
        Some("PG_PRIMARY_PASSWORD")
    );
    assert_eq!(primary.target.effective_sslmode(), SslMode::VerifyFull);
    assert_eq!(
        standby.target.effective_sslmode(),
        SslMode::Require,
        "from the url"
    );
    assert_eq!(
        primary.target.settings.poll_interval(),
        Duration::from_secs(5)
    );
    assert_eq!(
        standby.target.settings.poll_interval(),
        Duration::from_secs(15)
    );
    assert_eq!(
        standby.target.settings.poll_timeout(),
        Duration::from_secs(5)
    );
    assert_eq!(primary.target.settings.max_connections().get(), 3);
    assert_eq!(primary.target.paths.len(), 2);

    // The file's [thresholds] are the built-in defaults, which are the runbook's.
    let d = Thresholds::default();
    assert_eq!(d.disk_free.value, 0.30);
    assert_eq!(d.connections_used.value, 0.80);
    assert_eq!(d.replication_lag.value, 5.0);
    assert_eq!(d.long_running_query.limit().value, 5.0 * 60.0);
    assert_eq!(d.idle_session.limit().value, 10.0 * 60.0);
    assert_eq!(ok(MIN, &[]).postgres[0].thresholds, d);
    let mut standby_expected = d.clone();
    standby_expected.replication_lag.hold = Duration::from_secs(300);
    assert_eq!(standby.thresholds, standby_expected);
    assert_eq!(primary.thresholds.disk_free.value, 0.15);
    assert_eq!(primary.thresholds.disk_free.hold, d.disk_free.hold);
    assert_eq!(primary.thresholds.replication_streaming.value, 1.0);

    // Remediation: the runbook's two mitigations, ready, in dry-run.
    let r = c
        .remediation
        .as_ref()
        .expect("the example configures remediation");
    assert_eq!(r.mode, dbwarden::remediate::Mode::DryRun);
    assert_eq!(
        r.instance(),
        "dbwarden",
        "no HOSTNAME in the test's environment"
    );
    assert_eq!(r.audit_file, Path::new("/var/lib/dbwarden/audit.jsonl"));
    assert_eq!(
        r.pause_state_file(),
        Path::new("/var/lib/dbwarden/paused.json")
    );
    assert_eq!(
        (r.sentinel_file.as_ref(), r.api_token.as_ref()),
        (None, None)
    );
    assert_eq!(r.target_budget(), (10, Duration::from_secs(600)));
    assert_eq!(r.global_budget(), (30, Duration::from_secs(600)));
    let names: Vec<_> = r.policies.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "runbook-idle-sessions",
            "runbook-long-queries",
            "lock-chain-roots"
        ]
    );
    let (idle, long, roots) = (&r.policies[0], &r.policies[1], &r.policies[2]);
    assert_eq!(idle.conditions.states, [SessionState::Idle]);
    assert_eq!(idle.conditions.idle_for, Some(Duration::from_secs(600)));
    assert_eq!(idle.action(), Action::Terminate);
    assert_eq!(long.conditions.states, [SessionState::Active]);
    assert_eq!(
        long.conditions.query_running_for,
        Some(Duration::from_secs(300))
    );
    assert!(idle.targets.is_none() && long.targets.is_none());
    assert_eq!(
        idle.only_while_failing,
        [CheckName::Builtin(CheckId::ConnectionsUsed)]
    );
    assert_eq!(
        roots.conditions.blocking(),
        Some(Blocking {
            min_waiters: 3,
            waited_for: Duration::from_secs(30)
        })
    );
    assert_eq!(roots.victims, Victims::Oldest);
    assert!(ok(LOCAL, &[]).remediation.is_none());
    assert!(!LOCAL.contains("remediation"));
}

#[test]
fn the_printed_config_loads_back_into_the_same_config() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "  tok-file-Wd4\n").unwrap();
    let every_remediation_key = format!(
        "{MIN}max_connections = 2\n[postgres.other]\nurl = \"postgres://h/d\"\n{}",
        every_remediation_key(&token)
    );
    let mut vars = EXAMPLE_ENV.to_vec();
    vars.push(("HOSTNAME", "host-7.example"));
    for (name, text) in [
        ("example", EXAMPLE),
        ("local", LOCAL),
        ("remediation", every_remediation_key.as_str()),
    ] {
        let first = ok(text, &vars).to_redacted_toml();
        assert!(!first.contains("tok-file-Wd4"), "{first}");
        let second = load(&first, &vars)
            .unwrap_or_else(|e| panic!("{name}: the printed config does not load: {e}\n{first}"))
            .to_redacted_toml();
        assert_eq!(first, second, "{name}");
        // The file's shape, not the internal structs.
        assert!(!first.contains("[[postgres"), "{first}");
        assert!(!first.contains("value ="), "{first}");
        assert!(!first.contains("\n[defaults]"), "{first}");
        assert!(!first.contains("\n[thresholds"), "{first}");
        assert!(!first.contains(".settings]"), "{first}");
        // The same remediation, not only the same text.
        let (a, b) = (ok(text, &vars), ok(&first, &vars));
        assert_eq!(
            format!("{:?}", a.remediation),
            format!("{:?}", b.remediation),
            "{name}"
        );
    }
    let printed = ok(&every_remediation_key, &vars).to_redacted_toml();
    for needle in [
        "[remediation]\nmode = \"enforce\"\ninstance = \"dbwarden-1\"\n",
        "state_dir = \"/srv/dbwarden\"\n",
        "sentinel_file = \"/etc/dbwarden/PAUSE\"\n",
        &format!("api_token_file = {:?}\n", token.display().to_string()),
        "query_max_chars = 100\nredact_queries = true\npacing = \"0s\"\n",
        "[remediation.budget]\nper_target = 0\nglobal = 5\nwindow = \"1h\"\n",
        "[remediation.policies.zz-first]\ntargets = [\"main\"]\naction = \"cancel_then_terminate\"\ngrace = \"15s\"\nvictims = \"oldest\"\nmax_per_cycle = 3\n",
        "match_applications = [\"web-.*\"]\n",
        "\"10.0.0.0/8\",\n    \"192.168.1.5/32\",\n",
        "match_query = \"(?i)^select\"\n",
        "blocking_waiters = 2\nblocking_for = \"30s\"\n",
        "[remediation.policies.aa-second]\naction = \"cancel\"\n",
    ] {
        assert!(printed.contains(needle), "{needle:?} not in\n{printed}");
    }
    assert!(
        printed.find("[remediation.policies.zz-first]")
            < printed.find("[remediation.policies.aa-second]"),
        "{printed}"
    );
    // An unset condition is no condition: not printed.
    let second = printed
        .split("[remediation.policies.aa-second.when]")
        .nth(1)
        .unwrap();
    assert_eq!(second.trim(), "connected_for = \"1day\"", "{printed}");
    let printed = ok(EXAMPLE, &EXAMPLE_ENV).to_redacted_toml();
    for needle in [
        "[server]\n",
        "[log]\n",
        "[postgres.primary]\n",
        "password_env = \"PG_PRIMARY_PASSWORD\"\n",
        "poll_interval = \"5s\"\n",
        "[postgres.primary.paths]\n",
        "[postgres.primary.thresholds.disk_free]\nmin_ratio = 0.15\nfor = \"5m\"\n",
        "[postgres.primary.thresholds.connections_used]\nmax_ratio = 0.8\n",
        "[postgres.standby.thresholds.replication_lag]\nmax = \"5s\"\nfor = \"5m\"\n",
        "[postgres.primary.thresholds.replication_streaming]\nmin_standbys = 1\n",
        "max_bytes = 1073741824\n",
        "[postgres.standby.thresholds.invalid_indexes]\nfor = \"0s\"\n",
    ] {
        assert!(printed.contains(needle), "{needle:?} not in\n{printed}");
    }
    for secret in ["primary-secret-1", "standby-secret-2"] {
        assert!(!printed.contains(secret));
    }
}

#[test]
fn a_password_file_is_printed_by_path_and_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "file-secret-3\n").unwrap();
    let toml = format!("{MIN}password_file = {:?}\n", file.display().to_string());
    let c = ok(&toml, &[]);
    assert_eq!(
        c.postgres[0].target.password_file.as_deref(),
        Some(file.as_path())
    );
    let printed = c.to_redacted_toml();
    assert!(printed.contains(&format!("password_file = {:?}", file.display().to_string())));
    assert!(!printed.contains("file-secret-3"));
    assert_eq!(ok(&printed, &[]).to_redacted_toml(), printed);
}

#[test]
fn unknown_keys_are_errors_naming_the_full_path() {
    let toml = format!(
        "[serverr]\nlisten = \"x\"\n{MIN}pol_interval = \"5s\"\n\
         [postgres.main.thresholds.disk_free]\nmin_ratoi = 0.2\n\
         [thresholds.bogus]\nfor = \"1s\"\n"
    );
    let issues = issues(&toml, &[]);
    assert_issue(&issues, "serverr", &["unknown", "`server`"]);
    assert_issue(
        &issues,
        "postgres.main.pol_interval",
        &["unknown key", "poll_interval"],
    );
    assert_issue(
        &issues,
        "postgres.main.thresholds.disk_free.min_ratoi",
        &["unknown key", "min_ratio"],
    );
    assert_issue(&issues, "thresholds.bogus", &["unknown table `bogus`"]);
    assert_eq!(issues.len(), 4, "{issues:#?}");
}

#[test]
fn a_bad_duration_names_its_path_and_value() {
    let issues = issues(&format!("{MIN}poll_interval = \"5x\"\n"), &[]);
    assert_issue(
        &issues,
        "postgres.main.poll_interval",
        &["\"5x\"", "duration"],
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
    let issues = self::issues(&format!("{MIN}poll_interval = 5\n"), &[]);
    assert_issue(
        &issues,
        "postgres.main.poll_interval",
        &["duration", "found 5"],
    );
}

#[test]
fn a_ratio_out_of_range_is_an_error() {
    let issues = issues(
        &format!("{MIN}[postgres.main.thresholds.disk_free]\nmin_ratio = 1.5\n"),
        &[],
    );
    assert_issue(
        &issues,
        "postgres.main.thresholds.disk_free.min_ratio",
        &["1.5", "out of range"],
    );
    let issues = self::issues(
        "[thresholds.connections_used]\nmax_ratio = -0.1\n[postgres.a]\nurl = \"postgres://h/d\"\n",
        &[],
    );
    assert_issue(&issues, "thresholds.connections_used.max_ratio", &["-0.1"]);
}

/// `[postgres.<name>.statistics]`: the defaults, the cap on top
/// statements, the interval's range, and Neo4j targets refuse the table.
#[test]
fn statistics_settings_are_checked_at_their_keys() {
    let c = ok(MIN, &[]);
    let s = &c.postgres[0].target.statistics;
    assert!(s.enabled());
    assert_eq!(s.statements_top(), None);
    let c = ok(
        &format!(
            "{MIN}[postgres.main.statistics]\ninterval = \"1m\"\n[postgres.main.statistics.statements]\ntop = 100\n"
        ),
        &[],
    );
    let s = &c.postgres[0].target.statistics;
    assert_eq!(
        s.interval(std::time::Duration::from_secs(10)),
        std::time::Duration::from_secs(60)
    );
    assert_eq!(s.statements_top(), Some(100));
    for top in ["0", "101"] {
        let issues = issues(
            &format!("{MIN}[postgres.main.statistics.statements]\ntop = {top}\n"),
            &[],
        );
        assert_issue(
            &issues,
            "postgres.main.statistics.statements.top",
            &[top, "1 to 100"],
        );
    }
    let issues = self::issues(
        &format!("{MIN}[postgres.main.statistics]\ninterval = \"10ms\"\n"),
        &[],
    );
    assert_issue(
        &issues,
        "postgres.main.statistics.interval",
        &["\"10ms\"", "out of range"],
    );
    let issues = self::issues(
        "[neo4j.graph]\nuri = \"bolt://h:7687\"\n[neo4j.graph.statistics]\nenabled = false\n",
        &[],
    );
    assert!(
        issues
            .iter()
            .any(|i| i.path.starts_with("neo4j.graph.statistics")),
        "{issues:#?}"
    );
}

#[test]
fn a_target_without_url_is_an_error() {
    let issues = issues("[postgres.main]\nsslmode = \"require\"\n", &[]);
    assert_issue(&issues, "postgres.main.url", &["missing"]);
    let issues = self::issues("[server]\n", &[]);
    assert_issue(&issues, "postgres", &["no targets"]);
    let issues = self::issues("[postgres.main]\nurl = \"mysql://u@h/d\"\n", &[]);
    assert_issue(&issues, "postgres.main.url", &["\"mysql://u@h/d\""]);
}

#[test]
fn two_password_sources_are_an_error() {
    let toml =
        "[postgres.main]\nurl = \"postgres://app:pw-in-url@db/app\"\npassword_env = \"PGPW\"\n";
    let issues = issues(toml, &[("PGPW", "x")]);
    assert_issue(
        &issues,
        "postgres.main",
        &[
            "more than one password source",
            "url",
            "password_env = \"PGPW\"",
        ],
    );
    assert!(!format!("{issues:?}").contains("pw-in-url"));
}

#[test]
fn an_unset_password_env_is_an_error() {
    let toml = format!("{MIN}password_env = \"MAIN_PW\"\n");
    let issues = issues(&toml, &[]);
    assert_issue(
        &issues,
        "postgres.main.password_env",
        &["\"MAIN_PW\"", "not set"],
    );
    let issues = self::issues(&toml, &[("MAIN_PW", "")]);
    assert_issue(
        &issues,
        "postgres.main.password_env",
        &["\"MAIN_PW\"", "empty"],
    );
    let c = ok(&toml, &[("MAIN_PW", "pw")]);
    assert_eq!(c.postgres[0].target.connect_options().get_username(), "app");
}

#[test]
fn a_missing_password_file_is_an_error() {
    let toml = format!("{MIN}password_file = \"/nonexistent/dbwarden/pw\"\n");
    let issues = issues(&toml, &[]);
    assert_issue(
        &issues,
        "postgres.main.password_file",
        &["\"/nonexistent/dbwarden/pw\"", "cannot read"],
    );
}

#[test]
fn environment_variables_override_the_file() {
    let c = ok(
        MIN,
        &[
            ("DBWARDEN_POSTGRES__MAIN__POLL_INTERVAL", "2s"),
            ("DBWARDEN_SERVER__LISTEN", "0.0.0.0:9999"),
            ("DBWARDEN_POSTGRES__MAIN__MAX_CONNECTIONS", "3"),
            ("DBWARDEN_THRESHOLDS__DISK_FREE__MIN_RATIO", "0.25"),
            // The config file's path, read by the CLI: not an override.
            ("DBWARDEN_CONFIG", "/etc/dbwarden.toml"),
            ("OTHER__VAR", "x"),
        ],
    );
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:9999");
    let t = &c.postgres[0];
    assert_eq!(t.target.settings.poll_interval(), Duration::from_secs(2));
    // Unset, the timeouts shrink to fit a short interval.
    assert_eq!(t.target.settings.poll_timeout(), Duration::from_secs(2));
    assert_eq!(
        t.target.settings.statement_timeout(),
        Duration::from_secs(2)
    );
    assert_eq!(t.target.settings.max_connections().get(), 3);
    assert_eq!(t.thresholds.disk_free.value, 0.25);
    // An override replaces a value written in the file.
    let c = ok(
        "[server]\nlisten = \"127.0.0.1:1\"\n[postgres.main]\nurl = \"postgres://h/d\"\n",
        &[("DBWARDEN_SERVER__LISTEN", "127.0.0.1:2")],
    );
    assert_eq!(c.server.listen.port(), 2);
}

#[test]
fn a_bad_override_names_its_variable() {
    let issues = issues(
        MIN,
        &[
            ("DBWARDEN_POSTGRES__MAIN__POLL_INTERVAL", "5x"),
            ("DBWARDEN_POSTGRES__MAIN__MAX_CONNECTIONS", "three"),
            ("DBWARDEN_POSTGRES__MAIN__POL_INTERVAL", "5s"),
        ],
    );
    assert_issue(
        &issues,
        "postgres.main.poll_interval",
        &["\"5x\"", "DBWARDEN_POSTGRES__MAIN__POLL_INTERVAL"],
    );
    assert_issue(
        &issues,
        "postgres.main.max_connections",
        &["\"three\"", "DBWARDEN_POSTGRES__MAIN__MAX_CONNECTIONS"],
    );
    assert_issue(
        &issues,
        "postgres.main.pol_interval",
        &["unknown key", "DBWARDEN_POSTGRES__MAIN__POL_INTERVAL"],
    );
    assert_eq!(issues.len(), 3, "{issues:#?}");
}

#[test]
fn target_thresholds_merge_field_by_field_over_the_global_ones() {
    let toml = "\
        [thresholds.disk_free]\nmin_ratio = 0.2\nfor = \"10m\"\n\
        [thresholds.replication_lag]\nmax = \"30s\"\n\
        [postgres.a]\nurl = \"postgres://h/d\"\n\
        [postgres.a.thresholds.disk_free]\nfor = \"1m\"\n\
        [postgres.a.thresholds.replication_lag]\nfor = \"2m\"\n\
        [postgres.b]\nurl = \"postgres://h/d\"\n\
        [postgres.b.thresholds.disk_free]\nmin_ratio = 0.1\n";
    let c = ok(toml, &[]);
    let (a, b) = (&c.postgres[0].thresholds, &c.postgres[1].thresholds);
    let d = Thresholds::default();
    assert_eq!(
        (a.disk_free.value, a.disk_free.hold),
        (0.2, Duration::from_secs(60))
    );
    assert_eq!(
        (b.disk_free.value, b.disk_free.hold),
        (0.1, Duration::from_secs(600))
    );
    assert_eq!(
        (a.replication_lag.value, a.replication_lag.hold),
        (30.0, Duration::from_secs(120))
    );
    assert_eq!(b.replication_lag.value, 30.0);
    assert_eq!(b.replication_lag.hold, d.replication_lag.hold);
    assert_eq!(a.connections_used, d.connections_used);
}

#[test]
fn every_mistake_is_reported_at_once() {
    let toml = "\
        [server]\nlisten = \"localhost\"\n\
        [postgres.main]\nurl = \"postgres://h/d\"\npoll_interval = \"5x\"\n\
        [postgres.main.thresholds.connections_used]\nmax_ratio = 1.5\n";
    let issues = issues(toml, &[]);
    assert_eq!(issues.len(), 3, "{issues:#?}");
    assert_issue(&issues, "server.listen", &["\"localhost\""]);
    assert_issue(&issues, "postgres.main.poll_interval", &["\"5x\""]);
    assert_issue(
        &issues,
        "postgres.main.thresholds.connections_used.max_ratio",
        &["1.5"],
    );
}

#[test]
fn a_mistake_in_defaults_is_reported_once_where_it_was_written() {
    let toml = "\
        [defaults]\npoll_interval = \"10ms\"\npoll_timeout = \"20s\"\n\
        [postgres.a]\nurl = \"postgres://h/d\"\n\
        [postgres.b]\nurl = \"postgres://h/d\"\n";
    let issues = issues(toml, &[]);
    assert_issue(
        &issues,
        "defaults.poll_interval",
        &["\"10ms\"", "too short"],
    );
    assert_issue(
        &issues,
        "defaults.poll_timeout",
        &[
            "\"20s\"",
            "longer than poll_interval \"10ms\": a poll must end",
        ],
    );
    assert_eq!(issues.len(), 2, "{issues:#?}");
    // Inherited by a target whose own value makes it wrong: reported where
    // the inherited value was written, naming the target's.
    let toml = "\
        [defaults]\npoll_timeout = \"8s\"\n\
        [postgres.a]\nurl = \"postgres://h/d\"\npoll_interval = \"5s\"\n";
    let issues = self::issues(toml, &[]);
    assert_issue(
        &issues,
        "defaults.poll_timeout",
        &["\"8s\" is longer than poll_interval \"5s\" (postgres.a.poll_interval)"],
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
}

#[test]
fn a_type_error_is_not_also_reported_as_missing() {
    let issues = issues("[postgres.main]\nurl = 5\n", &[]);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_issue(
        &issues,
        "postgres.main.url",
        &["expected a string, found 5"],
    );
    let issues = self::issues("[postgres]\nmain = \"postgres://u:pw9@h/d\"\n", &[]);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    assert_issue(
        &issues,
        "postgres.main",
        &["expected a table", "<redacted>"],
    );
    assert!(!format!("{issues:?}").contains("pw9"));
}

#[test]
fn sslmode_comes_from_the_key_or_the_url_and_they_must_agree() {
    let c = ok(
        "[postgres.a]\nurl = \"postgres://h/d?sslmode=verify-full\"\n",
        &[],
    );
    assert_eq!(
        c.postgres[0].target.effective_sslmode(),
        SslMode::VerifyFull
    );
    let c = ok(MIN, &[]);
    assert_eq!(c.postgres[0].target.effective_sslmode(), SslMode::Prefer);
    let issues = issues(
        "[postgres.a]\nurl = \"postgres://h/d?sslmode=verify-full\"\nsslmode = \"disable\"\n",
        &[],
    );
    assert_issue(
        &issues,
        "postgres.a.sslmode",
        &["\"disable\"", "verify-full"],
    );
    let issues = self::issues(&format!("{MIN}sslmode = \"on\"\n"), &[]);
    assert_issue(&issues, "postgres.main.sslmode", &["\"on\""]);
}

#[test]
fn url_parameters_sqlx_would_ignore_are_errors() {
    let issues = issues(
        "[postgres.a]\nurl = \"postgres://h/d?connect_timeout=10&passwd=pw-Lk3&sslmode=require\"\n\
         [postgres.b]\nurl = \"postgres://h/d?application_name=x\"\n",
        &[],
    );
    let a: Vec<_> = issues
        .iter()
        .filter(|i| i.path == "postgres.a.url")
        .collect();
    assert_eq!(a.len(), 2, "{issues:#?}");
    assert!(a[0].message.contains("`connect_timeout`"), "{a:?}");
    assert!(a[1].message.contains("`passwd`"), "{a:?}");
    assert!(!format!("{issues:?}").contains("pw-Lk3"));
    assert_issue(&issues, "postgres.b.url", &["application_name"]);
    let c = ok(
        "[postgres.a]\nurl = \"postgres://h/d?options[search_path]=x&sslrootcert=/x\"\n",
        &[],
    );
    assert_eq!(c.postgres[0].target.effective_sslmode(), SslMode::Prefer);
}

#[test]
fn the_redaction_placeholder_is_not_a_password() {
    let issues = issues("[postgres.a]\nurl = \"postgres://u:<redacted>@h/d\"\n", &[]);
    assert_issue(&issues, "postgres.a.url", &["placeholder"]);
}

#[test]
fn a_syntax_error_does_not_quote_the_line() {
    let issues = issues("[postgres.a]\nurl = \"postgres://u:pw7@h/d\n", &[]);
    assert_eq!(issues.len(), 1);
    assert!(issues[0].message.contains("line 2"), "{issues:?}");
    assert!(!issues[0].message.contains("pw7"), "{issues:?}");
}

#[test]
fn passwords_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "secret-from-file\n").unwrap();
    let toml = format!(
        "[postgres.url]\nurl = \"postgres://u:secret-in-url@h/d\"\n\
         [postgres.query]\nurl = \"postgres://u@h/d?password=secret-in-query\"\n\
         [postgres.env]\nurl = \"postgres://u@h/d\"\npassword_env = \"PW\"\n\
         [postgres.file]\nurl = \"postgres://u@h/d\"\npassword_file = {:?}\n",
        file.display().to_string()
    );
    let vars = [("PW", "secret-from-env")];
    let secrets = [
        "secret-in-url",
        "secret-in-query",
        "secret-from-env",
        "secret-from-file",
    ];
    let c = ok(&toml, &vars);
    // The secrets did reach the connect options.
    assert_eq!(c.postgres.len(), 4);
    let shown = [
        format!("{c:?}"),
        format!("{c:#?}"),
        c.to_redacted_toml(),
        serde_json::to_string(&c).unwrap(),
    ];
    // And every error about these targets.
    let broken = format!(
        "{toml}poll_interval = \"5x\"\n[postgres.url.thresholds.disk_free]\nmin_ratio = 2.0\n"
    );
    let err = load(&broken, &vars).unwrap_err();
    let errors = [err.to_string(), format!("{err:?}")];
    for text in shown.iter().chain(&errors) {
        for s in secrets {
            assert!(!text.contains(s), "{s} printed in:\n{text}");
        }
    }
    // Two sources for one target: the error names them, not the password.
    let both = format!(
        "{toml}[postgres.both]\nurl = \"postgres://u:secret-in-url@h/d\"\npassword_env = \"PW\"\n"
    );
    let err = load(&both, &vars).unwrap_err().to_string();
    for s in secrets {
        assert!(!err.contains(s), "{s} printed in:\n{err}");
    }
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, MIN).unwrap();
    assert_eq!(Config::load(&file).unwrap().postgres[0].target.name, "main");
    let missing = dir.path().join("none.toml");
    assert!(matches!(
        Config::load(&missing),
        Err(ConfigError::Read { .. })
    ));
}

// Remediation.

/// Every `[remediation]` key, with values other than the defaults.
fn every_remediation_key(token: &Path) -> String {
    format!(
        "[remediation]\n\
         mode = \"enforce\"\ninstance = \"dbwarden-1\"\n\
         audit_file = \"/srv/dbwarden/audit.jsonl\"\nstate_dir = \"/srv/dbwarden\"\n\
         sentinel_file = \"/etc/dbwarden/PAUSE\"\napi_token_file = {:?}\n\
         query_max_chars = 100\nredact_queries = true\npacing = \"0s\"\n\
         [remediation.budget]\nper_target = 0\nglobal = 5\nwindow = \"1h\"\n\
         [remediation.policies.zz-first]\n\
         targets = [\"main\"]\naction = \"cancel_then_terminate\"\ngrace = \"15s\"\n\
         victims = \"oldest\"\nmax_per_cycle = 3\n\
         only_while_failing = [\"connections_used\", \"long_running_query\"]\n\
         [remediation.policies.zz-first.when]\n\
         state = [\"active\", \"idle_in_transaction\"]\n\
         query_running_for = \"5m\"\ntransaction_open_for = \"1h\"\nconnected_for = \"1day\"\n\
         match_users = [\"app\"]\nignore_users = [\"batch\"]\n\
         match_databases = [\"intelgraph\"]\nignore_databases = [\"postgres\"]\n\
         match_applications = [\"web-.*\"]\nignore_applications = [\"pg_dump\", \"psql\"]\n\
         match_client_addrs = [\"10.0.0.0/8\", \"192.168.1.5\"]\n\
         ignore_client_addrs = [\"10.1.0.0/16\"]\n\
         match_query = \"(?i)^select\"\nignore_query = \"(?i)vacuum\"\n\
         blocking_waiters = 2\nblocking_for = \"30s\"\n\
         [remediation.policies.aa-second]\naction = \"cancel\"\n\
         [remediation.policies.aa-second.when]\nconnected_for = \"1day\"\n",
        token.display().to_string()
    )
}

/// MIN with `[remediation]` and one policy `p` whose extra policy keys
/// and `when` keys are given.
fn with_policy(policy: &str, when: &str) -> String {
    format!(
        "{MIN}[remediation]\n[remediation.policies.p]\naction = \"terminate\"\n{policy}\
         [remediation.policies.p.when]\n{when}"
    )
}

fn policy(c: &Config) -> &Policy {
    &c.remediation.as_ref().unwrap().policies[0]
}

#[test]
fn without_a_remediation_section_there_is_no_remediation() {
    assert!(ok(MIN, &[]).remediation.is_none());
    assert!(!ok(MIN, &[]).to_redacted_toml().contains("[remediation"));
}

#[test]
fn an_empty_remediation_section_takes_the_defaults() {
    let c = ok(&format!("{MIN}[remediation]\n"), &[]);
    let r = c.remediation.unwrap();
    assert_eq!(r.mode, Mode::DryRun);
    assert_eq!(r.instance(), "dbwarden");
    assert_eq!(r.audit_file, Path::new("/var/lib/dbwarden/audit.jsonl"));
    assert_eq!(
        r.pause_state_file(),
        Path::new("/var/lib/dbwarden/paused.json")
    );
    assert_eq!(r.sentinel_file, None);
    assert!(r.api_token.is_none());
    assert_eq!(r.query_max_chars, 256);
    assert!(!r.redact_queries);
    assert_eq!(r.pacing, Duration::from_secs(1));
    assert_eq!(r.batch_size, 100);
    assert_eq!(r.target_budget(), (10, Duration::from_secs(600)));
    assert_eq!(r.global_budget(), (30, Duration::from_secs(600)));
    assert!(r.policies.is_empty());
    // The instance defaults to HOSTNAME, when that is a valid name.
    let c = ok(
        &format!("{MIN}[remediation]\n"),
        &[("HOSTNAME", "dbwarden-7f9c")],
    );
    assert_eq!(c.remediation.unwrap().instance(), "dbwarden-7f9c");
    let long = "a".repeat(41);
    let issues = issues(&format!("{MIN}[remediation]\n"), &[("HOSTNAME", &long)]);
    assert_issue(
        &issues,
        "remediation.instance",
        &["not set", "HOSTNAME", &long],
    );
    let issues = self::issues(&format!("{MIN}[remediation]\ninstance = \"a b\"\n"), &[]);
    assert_issue(&issues, "remediation.instance", &["\"a b\"", "1-40"]);
}

#[test]
fn every_remediation_mistake_is_reported_at_once() {
    let toml = format!(
        "{MIN}[remediation]\n\
         mode = \"dry_run\"\naudit_file = \"audit.jsonl\"\nquery_max_chars = 0\n\
         redact_queries = \"yes\"\nstate = [\"idle\"]\npacing = \"1x\"\nbatch_size = 0\n\
         [remediation.budget]\nwindow = \"0s\"\nper_targte = 1\n\
         [remediation.policies.a]\naction = \"kill\"\ntargets = [\"main\", \"nope\"]\n\
         max_per_cycle = 0\nonly_while_failing = [\"pool\"]\nidle_for = \"1m\"\n\
         [remediation.policies.a.when]\nstate = [\"idle\", \"sleeping\"]\n\
         match_applications = [\"web-(\"]\nmatch_client_addrs = [\"10.0.0.0/33\"]\n\
         match_query = \"[\"\nblocking_for = \"5s\"\n\
         [remediation.policies.B]\naction = \"cancel_then_terminate\"\n\
         [remediation.policies.B.when]\nmatch_users = [\"app\"]\n\
         [remediation.policies.c]\naction = \"terminate\"\ngrace = \"5s\"\nvictims = \"some\"\n\
         [remediation.policies.c.when]\nstate = [\"active\"]\nidle_for = \"10m\"\n\
         [remediation.policies.d]\naction = \"cancel\"\n\
         [remediation.policies.d.when]\nstate = [\"active\"]\nquery_running_for = \"0s\"\n"
    );
    let issues = issues(&toml, &[]);
    let expect: &[(&str, &[&str])] = &[
        ("remediation.mode", &["\"dry_run\"", "\"dry-run\""]),
        ("remediation.audit_file", &["\"audit.jsonl\"", "absolute"]),
        ("remediation.query_max_chars", &["0", "1 to 10000"]),
        ("remediation.redact_queries", &["true or false", "\"yes\""]),
        (
            "remediation.state",
            &["unknown key", "a [remediation.policies.<name>.when] table"],
        ),
        ("remediation.pacing", &["\"1x\""]),
        ("remediation.batch_size", &["0", "1 to 1000"]),
        ("remediation.budget.window", &["\"0s\"", "at least \"1s\""]),
        (
            "remediation.budget.per_targte",
            &["did you mean `per_target`?"],
        ),
        (
            "remediation.policies.a.action",
            &["\"kill\"", "cancel_then_terminate"],
        ),
        (
            "remediation.policies.a.targets",
            &["\"nope\" is not a configured PostgreSQL target", "\"main\""],
        ),
        ("remediation.policies.a.max_per_cycle", &["0", "1 to 1000"]),
        (
            "remediation.policies.a.only_while_failing",
            &["\"pool\"", "connections_used"],
        ),
        (
            "remediation.policies.a.idle_for",
            &["it belongs in [remediation.policies.a.when]"],
        ),
        (
            "remediation.policies.a.when.state",
            &["\"sleeping\"", "idle_in_transaction_aborted"],
        ),
        (
            "remediation.policies.a.when.match_applications",
            &["\"web-(\"", "unclosed group"],
        ),
        (
            "remediation.policies.a.when.match_client_addrs",
            &["\"10.0.0.0/33\"", "CIDR"],
        ),
        (
            "remediation.policies.a.when.match_query",
            &["\"[\"", "unclosed character class"],
        ),
        (
            "remediation.policies.a.when.blocking_for",
            &["\"5s\"", "without blocking_waiters"],
        ),
        ("remediation.policies.B", &["\"B\"", "lowercase"]),
        (
            "remediation.policies.B.grace",
            &["missing", "cancel_then_terminate"],
        ),
        (
            "remediation.policies.B.when",
            &["no condition", "every client session"],
        ),
        (
            "remediation.policies.c.grace",
            &["\"5s\"", "only used with", "\"terminate\""],
        ),
        (
            "remediation.policies.c.victims",
            &["\"some\"", "\"oldest\""],
        ),
        (
            "remediation.policies.c.when.idle_for",
            &["\"10m\"", "never hold", "[\"active\"]"],
        ),
        (
            "remediation.policies.d.when.query_running_for",
            &["\"0s\"", "positive"],
        ),
    ];
    for (path, needles) in expect {
        assert_issue(&issues, path, needles);
    }
    assert_eq!(issues.len(), expect.len(), "{issues:#?}");
    // A regex error is one line, not the regex crate's diagram.
    assert!(
        issues.iter().all(|i| !i.message.contains('\n')),
        "{issues:#?}"
    );
    // The other sections' issues come first, remediation's last, in key order.
    let paths: Vec<_> = issues.iter().map(|i| i.path.clone()).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

#[test]
fn a_policy_must_select_by_state_duration_or_blocking() {
    // Identity filters alone would select every session of a user.
    for when in [
        "match_users = [\"app\"]\nmatch_databases = [\"x\"]\n",
        "state = []\nmatch_query = \"x\"\n",
        "",
    ] {
        let issues = issues(&with_policy("", when), &[]);
        assert_issue(&issues, "remediation.policies.p.when", &["no condition"]);
        assert_eq!(issues.len(), 1, "{issues:#?}");
    }
    // Without a when table at all.
    let toml = format!("{MIN}[remediation.policies.p]\naction = \"cancel\"\n");
    assert_issue(
        &issues(&toml, &[]),
        "remediation.policies.p.when",
        &["no condition"],
    );
    // A when that is not a table is a type error, not also "no condition".
    let issues = issues(
        &with_policy("when = 5\n", "").replace("[remediation.policies.p.when]\n", ""),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.when",
        &["expected a table, found 5"],
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
    // So is a condition written in the policy's table instead of its when.
    let issues = self::issues(
        &format!("{MIN}[remediation.policies.p]\naction = \"cancel\"\nidle_for = \"10m\"\n"),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.idle_for",
        &["it belongs in [remediation.policies.p.when]"],
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
    // A rejected condition is reported once, as itself.
    let issues = self::issues(&with_policy("", "idle_for = \"10x\"\n"), &[]);
    assert_issue(
        &issues,
        "remediation.policies.p.when.idle_for",
        &["\"10x\""],
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
    // Each selecting condition is enough on its own.
    for when in [
        "state = [\"idle\"]\n",
        "idle_for = \"10m\"\n",
        "query_running_for = \"5m\"\n",
        "transaction_open_for = \"1h\"\n",
        "connected_for = \"1day\"\n",
        "blocking_waiters = 1\n",
    ] {
        ok(&with_policy("", when), &[]);
    }
    let issues = self::issues(&with_policy("", "blocking_waiters = 0\n"), &[]);
    assert_issue(
        &issues,
        "remediation.policies.p.when.blocking_waiters",
        &["0", "at least 1"],
    );
}

#[test]
fn durations_must_fit_the_states() {
    let issues = issues(
        &with_policy("", "state = [\"active\"]\nidle_for = \"10m\"\n"),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.when.idle_for",
        &["never hold"],
    );
    let issues = self::issues(
        &with_policy(
            "",
            "state = [\"idle\", \"idle_in_transaction\"]\nquery_running_for = \"5m\"\n",
        ),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.when.query_running_for",
        &[
            "\"5m\"",
            "[\"idle\", \"idle_in_transaction\"]",
            "add \"active\"",
        ],
    );
    let issues = self::issues(
        &with_policy("", "idle_for = \"1m\"\nquery_running_for = \"5m\"\n"),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.when",
        &["never hold together"],
    );
    // Fitting combinations load.
    let c = ok(
        &with_policy(
            "",
            "state = [\"active\", \"idle_in_transaction\"]\nidle_for = \"1m\"\n",
        ),
        &[],
    );
    assert_eq!(
        policy(&c).conditions.states,
        [SessionState::Active, SessionState::IdleInTransaction]
    );
    ok(
        &with_policy("", "state = [\"active\"]\nquery_running_for = \"5m\"\n"),
        &[],
    );
    ok(&with_policy("", "query_running_for = \"5m\"\n"), &[]);
}

#[test]
fn actions_victims_and_gates_map_to_the_policy() {
    let c = ok(
        &with_policy(
            "grace = \"20s\"\nvictims = \"oldest\"\nmax_per_cycle = 1000\n\
             only_while_failing = [\"connections_used\", \"idle_session\"]\n",
            "idle_for = \"10m\"\nblocking_waiters = 3\n",
        )
        .replace("\"terminate\"", "\"cancel_then_terminate\""),
        &[],
    );
    let p = policy(&c);
    assert_eq!(p.name, "p");
    assert_eq!(
        p.action(),
        Action::CancelThenTerminate {
            grace: Duration::from_secs(20)
        }
    );
    assert_eq!(p.victims, Victims::Oldest);
    assert_eq!(p.max_per_cycle, 1000);
    assert_eq!(
        p.only_while_failing,
        [CheckId::ConnectionsUsed.into(), CheckId::IdleSession.into()] as [CheckName; 2]
    );
    assert_eq!(
        p.conditions.blocking(),
        Some(Blocking {
            min_waiters: 3,
            waited_for: Duration::ZERO
        })
    );
    let c = ok(&with_policy("", "state = [\"idle\"]\n"), &[]);
    let p = policy(&c);
    assert_eq!(
        (p.action(), p.victims, p.max_per_cycle),
        (Action::Terminate, Victims::All, 10)
    );
    assert!(p.only_while_failing.is_empty() && p.targets.is_none());
    let issues = issues(
        &format!("{MIN}[remediation.policies.p.when]\nstate = [\"idle\"]\n"),
        &[],
    );
    assert_issue(&issues, "remediation.policies.p.action", &["missing"]);
}

#[test]
fn alertmanager_token_comes_from_env_or_file_and_never_prints() {
    let toml = format!("[server]\nalertmanager_token_env = \"AM_TOKEN\"\n{MIN}");
    let c = ok(&toml, &[("AM_TOKEN", "s3cret-am")]);
    assert_eq!(
        c.server.alertmanager_token.as_ref().map(|t| t.expose()),
        Some("s3cret-am")
    );
    let printed = c.to_redacted_toml();
    assert!(
        printed.contains("alertmanager_token_env = \"AM_TOKEN\""),
        "{printed}"
    );
    assert!(!printed.contains("s3cret-am") && !format!("{c:?}").contains("s3cret-am"));
    let issues = issues(&toml, &[]);
    assert_issue(
        &issues,
        "server.alertmanager_token_env",
        &["\"AM_TOKEN\"", "not set"],
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("am-token");
    std::fs::write(&f, "from-file\n").unwrap();
    let c = ok(
        &format!(
            "[server]\nalertmanager_token_file = {:?}\n{MIN}",
            f.display().to_string()
        ),
        &[],
    );
    assert_eq!(
        c.server.alertmanager_token.as_ref().map(|t| t.expose()),
        Some("from-file")
    );
}

#[test]
fn alert_gate_is_read_and_alert_names_are_checked() {
    let c = ok(
        &with_policy(
            "only_while_alerts = [\"DbWardenConnectionsHigh\"]\n",
            "idle_for = \"10m\"\n",
        ),
        &[],
    );
    assert_eq!(policy(&c).only_while_alerts, ["DbWardenConnectionsHigh"]);
    let printed = c.to_redacted_toml();
    assert!(
        printed.contains("only_while_alerts = [\"DbWardenConnectionsHigh\"]"),
        "{printed}"
    );
    let issues = issues(
        &with_policy(
            "only_while_alerts = [\"not an alert\"]\n",
            "idle_for = \"10m\"\n",
        ),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.only_while_alerts",
        &["\"not an alert\"", "alert name"],
    );
}

#[test]
fn application_patterns_match_whole_names() {
    let c = ok(
        &with_policy(
            "",
            "state = [\"idle\"]\nmatch_applications = [\"web-.*\", \"api\"]\n\
             ignore_applications = [\"psql\", \"pg_dump|pg_basebackup\"]\n",
        ),
        &[],
    );
    let w = &policy(&c).conditions;
    assert!(w.match_applications.contains("web-1"));
    assert!(w.match_applications.contains("api"));
    assert!(!w.match_applications.contains("legacy-web-1"));
    assert!(!w.match_applications.contains("api-2"));
    assert!(w.ignore_applications.contains("psql"));
    assert!(!w.ignore_applications.contains("billing-psql-loader"));
    assert!(w.ignore_applications.contains("pg_basebackup"));
    assert!(!w.ignore_applications.contains("pg_dumpall"));
    // The query regexes search.
    let c = ok(
        &with_policy(
            "",
            "state = [\"active\"]\nmatch_query = \"(?i)select\"\nignore_query = \"vacuum\"\n",
        ),
        &[],
    );
    let w = &policy(&c).conditions;
    assert!(
        w.match_query
            .as_ref()
            .unwrap()
            .is_match("with x as (SELECT 1) select")
    );
    assert!(
        w.ignore_query
            .as_ref()
            .unwrap()
            .is_match("analyze; vacuum t")
    );
    // Each bad pattern is named with the regex crate's reason.
    let issues = issues(
        &with_policy(
            "",
            "state = [\"idle\"]\nignore_applications = [\"ok\", \"a)\", \"(?x)b # c\"]\n",
        ),
        &[],
    );
    let at: Vec<_> = issues
        .iter()
        .filter(|i| i.path == "remediation.policies.p.when.ignore_applications")
        .collect();
    assert_eq!(at.len(), 1, "{issues:#?}");
    assert!(
        at[0].message.contains("\"a)\"") && at[0].message.contains("unopened group"),
        "{at:?}"
    );
    // A pattern valid alone that anchoring would break is refused too.
    let issues = self::issues(
        &with_policy(
            "",
            "state = [\"idle\"]\nignore_applications = [\"(?x)b # c\"]\n",
        ),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.when.ignore_applications",
        &["(?x)b # c", "whole name"],
    );
}

#[test]
fn client_addresses_are_networks_or_single_addresses() {
    let c = ok(
        &with_policy(
            "",
            "state = [\"idle\"]\nmatch_client_addrs = [\"10.0.0.0/8\", \"192.168.1.5\", \"fd00::/8\", \"::1\"]\n\
             ignore_client_addrs = [\"::ffff:10.1.0.0/112\"]\n",
        ),
        &[],
    );
    let w = &policy(&c).conditions;
    let shown: Vec<String> = w.match_client_addrs.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        shown,
        ["10.0.0.0/8", "192.168.1.5/32", "fd00::/8", "::1/128"]
    );
    // Sessions' addresses are compared canonically: a mapped network is its IPv4 one.
    assert_eq!(w.ignore_client_addrs[0].to_string(), "10.1.0.0/16");
    for bad in ["10.0.0.0/33", "10.0.0", "db.internal", "10.0.0.0/8 "] {
        let issues = issues(
            &with_policy(
                "",
                &format!("state = [\"idle\"]\nignore_client_addrs = [{bad:?}]\n"),
            ),
            &[],
        );
        assert_issue(
            &issues,
            "remediation.policies.p.when.ignore_client_addrs",
            &[&format!("{bad:?}"), "CIDR"],
        );
    }
}

#[test]
fn policies_keep_the_order_of_the_file() {
    let toml = format!(
        "{MIN}[remediation.policies.zeta]\naction = \"cancel\"\n\
         [remediation.policies.zeta.when]\nstate = [\"idle\"]\n\
         [remediation.policies.alpha.when]\nstate = [\"idle\"]\n\
         [remediation.policies.alpha]\naction = \"cancel\"\n\
         [remediation.policies.mid]\naction = \"cancel\"\nwhen.state = [\"idle\"]\n"
    );
    let names = |c: &Config| -> Vec<String> {
        c.remediation
            .as_ref()
            .unwrap()
            .policies
            .keys()
            .cloned()
            .collect()
    };
    let c = ok(&toml, &[]);
    assert_eq!(names(&c), ["zeta", "alpha", "mid"]);
    // And the printed configuration keeps it.
    let printed = c.to_redacted_toml();
    assert_eq!(names(&ok(&printed, &[])), ["zeta", "alpha", "mid"]);
    // A policy only the environment adds comes last.
    let c = ok(
        &toml,
        &[
            ("DBWARDEN_REMEDIATION__POLICIES__ENV__ACTION", "cancel"),
            ("DBWARDEN_REMEDIATION__POLICIES__ENV__WHEN__STATE", "idle"),
            ("DBWARDEN_REMEDIATION__POLICIES__ALPHA__ACTION", "terminate"),
        ],
    );
    assert_eq!(names(&c), ["zeta", "alpha", "mid", "env"]);
    assert_eq!(
        c.remediation.unwrap().policies[1].action(),
        Action::Terminate
    );
}

#[test]
fn remediation_keys_can_be_overridden_from_the_environment() {
    let c = ok(
        &with_policy("", "state = [\"idle\"]\n"),
        &[
            ("DBWARDEN_REMEDIATION__MODE", "enforce"),
            ("DBWARDEN_REMEDIATION__REDACT_QUERIES", "true"),
            ("DBWARDEN_REMEDIATION__QUERY_MAX_CHARS", "100"),
            ("DBWARDEN_REMEDIATION__BUDGET__GLOBAL", "3"),
            (
                "DBWARDEN_REMEDIATION__POLICIES__P__WHEN__STATE",
                "[\"idle\", \"active\"]",
            ),
            ("DBWARDEN_REMEDIATION__POLICIES__P__TARGETS", "main"),
        ],
    );
    let r = c.remediation.unwrap();
    assert_eq!(r.mode, Mode::Enforce);
    assert!(r.redact_queries);
    assert_eq!(r.query_max_chars, 100);
    assert_eq!(r.global_budget().0, 3);
    assert_eq!(
        r.policies[0].conditions.states,
        [SessionState::Idle, SessionState::Active]
    );
    assert_eq!(
        r.policies[0].targets.as_deref(),
        Some(&["main".to_string()][..])
    );
    let issues = issues(
        &with_policy("", "state = [\"idle\"]\n"),
        &[("DBWARDEN_REMEDIATION__REDACT_QUERIES", "yes")],
    );
    assert_issue(
        &issues,
        "remediation.redact_queries",
        &["\"yes\"", "DBWARDEN_REMEDIATION__REDACT_QUERIES"],
    );
}

#[test]
fn acted_on_targets_need_two_connections() {
    let two = "[postgres.other]\nurl = \"postgres://h/d\"\nmax_connections = 1\n";
    let toml = format!(
        "{MIN}max_connections = 1\n{two}{}",
        &with_policy("", "state = [\"idle\"]\n")[MIN.len()..]
    );
    let issues = issues(&toml, &[]);
    for target in ["main", "other"] {
        assert_issue(
            &issues,
            &format!("postgres.{target}.max_connections"),
            &[
                "1 is too few",
                &format!("target {target:?}"),
                "policy p, remediation.policies.p.targets",
                "\"dry-run\"",
                "actor lock",
            ],
        );
    }
    assert_eq!(issues.len(), 2, "{issues:#?}");
    // A target no policy acts on may keep one connection.
    let only_main = toml.replace(
        "action = \"terminate\"\n",
        "action = \"terminate\"\ntargets = [\"other\"]\n",
    );
    let issues = self::issues(&only_main, &[]);
    assert_issue(&issues, "postgres.other.max_connections", &["1 is too few"]);
    assert_eq!(issues.len(), 1, "{issues:#?}");
    // In observe mode nothing acts.
    ok(
        &toml.replace("[remediation]\n", "[remediation]\nmode = \"observe\"\n"),
        &[],
    );
    // Set in [defaults], it is reported there, for each target.
    let toml = format!(
        "[defaults]\nmax_connections = 1\n{}",
        with_policy("", "state = [\"idle\"]\n")
    );
    let issues = self::issues(&toml, &[]);
    assert_issue(&issues, "defaults.max_connections", &["target \"main\""]);
    // Targets named by a policy must exist; an empty list is refused.
    let issues = self::issues(
        &with_policy("targets = [\"mian\"]\n", "state = [\"idle\"]\n"),
        &[],
    );
    assert_issue(
        &issues,
        "remediation.policies.p.targets",
        &["\"mian\"", "configured are \"main\""],
    );
    let issues = self::issues(&with_policy("targets = []\n", "state = [\"idle\"]\n"), &[]);
    assert_issue(&issues, "remediation.policies.p.targets", &["empty"]);
}

#[test]
fn the_api_token_is_read_from_env_or_file_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "\n tok-from-file-Q8 \r\n").unwrap();
    let from_file = format!(
        "{MIN}[remediation]\napi_token_file = {:?}\n",
        file.display().to_string()
    );
    let from_env = format!("{MIN}[remediation]\napi_token_env = \"API_TOKEN\"\n");
    let vars = [("API_TOKEN", " tok-from-env-R3\n")];
    let secrets = ["tok-from-file-Q8", "tok-from-env-R3", "tok-inline-Z1"];

    let a = ok(&from_file, &[]);
    let b = ok(&from_env, &vars);
    let token = |c: &Config| c.remediation.as_ref().unwrap().api_token.clone().unwrap();
    assert_eq!(token(&a).expose(), "tok-from-file-Q8");
    assert_eq!(token(&b).expose(), "tok-from-env-R3");
    assert!(a.to_redacted_toml().contains(&format!(
        "api_token_file = {:?}",
        file.display().to_string()
    )));
    assert!(
        b.to_redacted_toml()
            .contains("api_token_env = \"API_TOKEN\"")
    );
    // Printed by source, the configuration loads back with the same token.
    assert_eq!(
        token(&ok(&b.to_redacted_toml(), &vars)).expose(),
        "tok-from-env-R3"
    );

    let both = format!(
        "{from_env}api_token_file = {:?}\n",
        file.display().to_string()
    );
    let issues = issues(&both, &vars);
    assert_issue(
        &issues,
        "remediation",
        &["two token sources", "api_token_file", "\"API_TOKEN\""],
    );
    let issues = self::issues(&from_env, &[]);
    assert_issue(
        &issues,
        "remediation.api_token_env",
        &["\"API_TOKEN\"", "not set"],
    );
    let issues = self::issues(&from_env, &[("API_TOKEN", " \n")]);
    assert_issue(&issues, "remediation.api_token_env", &["empty"]);
    std::fs::write(dir.path().join("empty"), "\n").unwrap();
    let issues = self::issues(&from_file.replace("token\"", "empty\""), &[]);
    assert_issue(&issues, "remediation.api_token_file", &["is empty"]);
    let issues = self::issues(&from_file.replace("token\"", "missing\""), &[]);
    assert_issue(
        &issues,
        "remediation.api_token_file",
        &["cannot read", "missing"],
    );
    // The token itself written where a name belongs, or as a key of its
    // own: an error that does not quote it.
    let inline = [
        format!("{MIN}[remediation]\napi_token_env = \"tok-inline-Z1\"\n"),
        format!("{MIN}[remediation]\napi_token = \"tok-inline-Z1\"\n"),
        format!("{MIN}[remediation]\napi_token_env = \"tok-inline-Z1\"\napi_token_file = \"/x\"\n"),
    ];
    let mut shown = vec![
        format!("{a:?}"),
        format!("{b:#?}"),
        a.to_redacted_toml(),
        b.to_redacted_toml(),
        serde_json::to_string(&b).unwrap(),
    ];
    for toml in &inline {
        let err = load(toml, &vars).unwrap_err();
        shown.push(err.to_string());
        shown.push(format!("{err:?}"));
    }
    let err = load(&inline[1], &vars).unwrap_err().to_string();
    assert!(
        err.contains("api_token_file") && err.contains("api_token_env"),
        "{err}"
    );
    for text in &shown {
        for s in secrets {
            assert!(!text.contains(s), "{s} printed in:\n{text}");
        }
    }
}

#[cfg(feature = "neo4j")]
mod neo4j {
    use std::time::Duration;

    use dbwarden::config::{Config, ConfigError, ConfigIssue};
    use dbwarden::evaluate::{CheckId, CheckName, Neo4jThresholds};

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            toml,
            [("NEO4J_PASSWORD".to_string(), "s3cret-pw".to_string())],
        )
    }

    #[track_caller]
    fn issues(toml: &str) -> Vec<ConfigIssue> {
        match load(toml) {
            Ok(c) => panic!("expected errors, got {c:#?}"),
            Err(ConfigError::Invalid(i)) => i,
            Err(e) => panic!("{e}"),
        }
    }

    #[track_caller]
    fn at<'a>(issues: &'a [ConfigIssue], path: &str) -> &'a str {
        let found: Vec<_> = issues.iter().filter(|i| i.path == path).collect();
        assert_eq!(found.len(), 1, "one issue at {path} in {issues:#?}");
        &found[0].message
    }

    const GRAPH: &str =
        "[neo4j.graph]\nuri = \"bolt://neo4j:7687\"\npassword_env = \"NEO4J_PASSWORD\"\n";

    #[cfg(feature = "neo4j")]
    #[test]
    fn a_neo4j_only_config_loads_with_the_runbook_defaults() {
        let c = load(GRAPH).unwrap();
        assert!(c.postgres.is_empty());
        let t = &c.neo4j[0];
        assert_eq!(t.target.user(), "neo4j");
        assert_eq!(t.target.databases(), ["neo4j"]);
        assert_eq!(
            t.target.password.as_ref().map(|p| p.expose()),
            Some("s3cret-pw")
        );
        assert_eq!(t.thresholds, Neo4jThresholds::default());
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("s3cret-pw"), "{printed}");
        assert_eq!(load(&printed).unwrap().to_redacted_toml(), printed);
    }

    #[cfg(feature = "neo4j")]
    #[test]
    fn every_mistake_in_a_neo4j_target_is_reported_at_its_key() {
        let i = issues(
            "[neo4j.Graph]\nuri = \"http://neo4j:s3cret@db:7474\"\npassword_env = \"UNSET\"\n\
             databases = [\"neo4j\", \"neo4j\", \"x\"]\nstatement_timeout = \"1s\"\n\
             [neo4j.Graph.thresholds]\nslow_queries = { max = \"0s\" }\n\
             node_count = { min = 10, max = 5 }\ndisk_free = { min_ratio = 0.2 }\n",
        );
        assert!(at(&i, "neo4j.Graph").contains("invalid target name"));
        let uri = at(&i, "neo4j.Graph.uri");
        assert!(uri.contains("unsupported scheme \"http\""), "{uri}");
        assert!(!uri.contains("s3cret"), "the password leaked: {uri}");
        assert!(at(&i, "neo4j.Graph.password_env").contains("\"UNSET\" is not set"));
        let dbs: Vec<&str> = i
            .iter()
            .filter(|x| x.path == "neo4j.Graph.databases")
            .map(|x| x.message.as_str())
            .collect();
        assert_eq!(dbs.len(), 2, "{dbs:?}");
        assert!(at(&i, "neo4j.Graph.statement_timeout").contains("PostgreSQL targets only"));
        assert!(at(&i, "neo4j.Graph.thresholds.slow_queries.max").contains("\"0s\""));
        assert!(
            at(&i, "neo4j.Graph.thresholds.node_count").contains("min 10 is greater than max 5")
        );
        assert!(at(&i, "neo4j.Graph.thresholds.disk_free").contains("PostgreSQL targets"));
    }

    #[cfg(feature = "neo4j")]
    #[test]
    fn names_are_unique_across_kinds() {
        let i = issues(&format!(
            "{GRAPH}[postgres.graph]\nurl = \"postgres://app@db/app\"\n"
        ));
        assert!(at(&i, "neo4j.graph").contains("also a PostgreSQL target"));
    }

    #[cfg(feature = "neo4j")]
    #[test]
    fn neo4j_policies_are_validated_and_kept_in_file_order() {
        let c = load(&format!(
            "{GRAPH}[remediation]\nmode = \"enforce\"\naudit_file = \"/tmp/a.jsonl\"\nstate_dir = \"/tmp\"\n\
             [remediation.neo4j_policies.zeta]\nwhen.running_for = \"5m\"\n\
             [remediation.neo4j_policies.alpha]\nonly_while_failing = [\"slow_queries\"]\n\
             when.status = [\"blocked\"]\nwhen.ignore_users = [\"etl\"]\nwhen.match_query = \"MATCH\"\n"
        ))
        .unwrap();
        let r = c.remediation.as_ref().unwrap();
        let names: Vec<&str> = r.neo4j_policies.keys().map(String::as_str).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        let alpha = &r.neo4j_policies[1];
        assert_eq!(alpha.conditions.statuses, ["Blocked"]);
        assert_eq!(
            alpha.only_while_failing,
            [CheckName::Builtin(CheckId::SlowQueries)]
        );
        let printed = c.to_redacted_toml();
        assert_eq!(load(&printed).unwrap().to_redacted_toml(), printed);

        let i = issues(&format!(
            "{GRAPH}[postgres.db]\nurl = \"postgres://app@db/app\"\n\
             [remediation]\naudit_file = \"/tmp/a.jsonl\"\nstate_dir = \"/tmp\"\n\
             [remediation.neo4j_policies.p]\ntargets = [\"db\", \"nope\"]\naction = \"cancel\"\n\
             only_while_failing = [\"connections_used\"]\nwhen.status = [\"Terminated\"]\n\
             when.match_query = \"(\"\nwhen.match_users = []\n\
             [remediation.neo4j_policies.q]\nwhen.match_users = [\"alice\"]\n\
             [remediation.policies.r]\ntargets = [\"graph\"]\naction = \"cancel\"\nwhen.idle_for = \"1m\"\n"
        ));
        let targets: Vec<&str> = i
            .iter()
            .filter(|x| x.path == "remediation.neo4j_policies.p.targets")
            .map(|x| x.message.as_str())
            .collect();
        assert!(
            targets
                .iter()
                .any(|m| m.contains("\"db\" is a PostgreSQL target")),
            "{targets:?}"
        );
        assert!(
            targets
                .iter()
                .any(|m| m.contains("\"nope\" is not a configured Neo4j target")),
            "{targets:?}"
        );
        assert!(at(&i, "remediation.neo4j_policies.p.action").contains("can only \"terminate\""));
        assert!(
            at(&i, "remediation.neo4j_policies.p.only_while_failing")
                .contains("\"connections_used\" is not a check of Neo4j targets")
        );
        assert!(
            at(&i, "remediation.neo4j_policies.p.when.status")
                .contains("invalid status \"Terminated\"")
        );
        assert!(at(&i, "remediation.neo4j_policies.p.when.match_query").contains("invalid regex"));
        assert!(at(&i, "remediation.neo4j_policies.p.when.match_users").contains("empty"));
        assert!(at(&i, "remediation.neo4j_policies.q.when").contains("add running_for"));
        assert!(at(&i, "remediation.policies.r.targets").contains("\"graph\" is a Neo4j target"));
    }

    #[test]
    fn the_index_rebuild_is_opt_in_and_validated() {
        let base =
            format!("{GRAPH}[remediation]\naudit_file = \"/tmp/a.jsonl\"\nstate_dir = \"/tmp\"\n");
        assert_eq!(
            load(&base)
                .unwrap()
                .remediation
                .unwrap()
                .neo4j_index_rebuild,
            None,
            "absent: off"
        );
        let c = load(&format!("{base}[remediation.neo4j_index_rebuild]\n")).unwrap();
        let r = c
            .remediation
            .as_ref()
            .unwrap()
            .neo4j_index_rebuild
            .clone()
            .unwrap();
        assert_eq!(r.failed_for, Duration::from_secs(600));
        assert!(!r.include_constraints && r.constraints.is_empty() && r.targets.is_none());
        let printed = c.to_redacted_toml();
        assert_eq!(load(&printed).unwrap().to_redacted_toml(), printed);

        let i = issues(&format!(
            "{base}[postgres.db]\nurl = \"postgres://app@db/app\"\n\
             [remediation.neo4j_index_rebuild]\ntargets = [\"db\", \"nope\"]\nfailed_for = \"0s\"\n\
             include_constraints = true\nconstraints = [\"c\"]\n"
        ));
        let targets: Vec<&str> = i
            .iter()
            .filter(|x| x.path == "remediation.neo4j_index_rebuild.targets")
            .map(|x| x.message.as_str())
            .collect();
        assert!(
            targets
                .iter()
                .any(|m| m.contains("\"db\" is a PostgreSQL target")),
            "{targets:?}"
        );
        assert!(
            targets
                .iter()
                .any(|m| m.contains("\"nope\" is not a configured Neo4j target")),
            "{targets:?}"
        );
        assert!(at(&i, "remediation.neo4j_index_rebuild.failed_for").contains("\"0s\""));
        assert!(
            at(&i, "remediation.neo4j_index_rebuild.constraints")
                .contains("include_constraints = true already includes")
        );
        let i = issues(&format!(
            "{base}[remediation.neo4j_index_rebuild]\nfailed_for = \"soon\"\nconstraint = [\"c\"]\n"
        ));
        assert!(!at(&i, "remediation.neo4j_index_rebuild.failed_for").is_empty());
        assert!(
            i.iter()
                .any(|x| x.path.starts_with("remediation.neo4j_index_rebuild")
                    && x.message.contains("constraint")),
            "{i:?}"
        );
    }
}

#[cfg(feature = "kubernetes")]
mod kubernetes {
    use std::time::Duration;

    use dbwarden::config::{Config, ConfigError, ConfigIssue};
    use dbwarden::kubernetes::Credentials;

    const TARGETS: &str = "\
[postgres.main]
url = \"postgres://app@db:5432/app\"
pods = \"app=postgres,role in (primary,replica)\"

[neo4j.graph]
uri = \"bolt://neo4j:7687\"
user = \"neo4j\"
pods = \"app=neo4j\"
";

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            toml,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[track_caller]
    fn issues(toml: &str) -> Vec<ConfigIssue> {
        match load(toml, &[]) {
            Ok(c) => panic!("expected errors, got {:#?}", c.kubernetes),
            Err(ConfigError::Invalid(i)) => i,
            Err(e) => panic!("{e}"),
        }
    }

    #[track_caller]
    fn assert_issue(issues: &[ConfigIssue], path: &str, needles: &[&str]) {
        let at: Vec<_> = issues.iter().filter(|i| i.path == path).collect();
        assert_eq!(at.len(), 1, "one issue at {path} expected in {issues:#?}");
        for n in needles {
            assert!(at[0].message.contains(n), "{:?} lacks {n:?}", at[0].message);
        }
    }

    #[test]
    fn without_a_section_there_is_no_kubernetes() {
        let c = load(
            "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n",
            &[],
        )
        .unwrap();
        assert!(c.kubernetes.is_none());
    }

    #[test]
    fn a_minimal_section_takes_the_defaults_and_prints_back() {
        let toml = format!("{TARGETS}\n[kubernetes]\nnamespace = \"databases\"\n");
        let c = load(&toml, &[("HOSTNAME", "dbwarden-0")]).unwrap();
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(k.credentials(), Credentials::InCluster);
        assert_eq!(k.namespace, "databases");
        let sel: Vec<_> = k
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.label_selector.as_str()))
            .collect();
        assert_eq!(
            sel,
            [
                ("main", "app=postgres,role in (primary,replica)"),
                ("graph", "app=neo4j")
            ]
        );
        assert!(k.statefulsets && !k.volume_stats);
        assert!(k.eviction.is_none(), "eviction is off by default");
        assert!(k.lease.is_none());
        assert_eq!(k.thresholds().max_restarts_last_hour, 3);
        assert_eq!(k.thresholds().oom_window, Duration::from_secs(3600));
        assert_eq!(k.thresholds().min_volume_free_ratio, 0.30);
        assert_eq!(k.interval, Duration::from_secs(10));
        let printed = c.to_redacted_toml();
        assert!(printed.contains("[kubernetes]"), "{printed}");
        assert!(printed.contains("pods = \"app=neo4j\""), "{printed}");
        let again = load(&printed, &[("HOSTNAME", "dbwarden-0")]).unwrap();
        assert_eq!(again.kubernetes, c.kubernetes);
        assert_eq!(again.to_redacted_toml(), printed);
    }

    #[test]
    fn every_key_is_applied_and_the_printed_config_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(&kc, "apiVersion: v1\n").unwrap();
        let toml = format!(
            "{TARGETS}
[thresholds.disk_free]
min_ratio = 0.25

[remediation]
mode = \"enforce\"
instance = \"warden-a\"
audit_file = \"/var/lib/dbwarden/audit.jsonl\"

[kubernetes]
credentials = \"kubeconfig\"
kubeconfig = {kc:?}
context = \"kind-db\"
namespace = \"db\"
statefulsets = false
volume_stats = true
volume_stats_interval = \"2m\"
interval = \"5s\"
max_restarts_last_hour = 5
oom_window = \"30m\"

[kubernetes.lease]
name = \"dbwarden-actor\"
duration = \"20s\"
renew_every = \"5s\"

[kubernetes.eviction]
targets = [\"main\"]
not_ready_for = \"5m\"
cooldown = \"20m\"
"
        );
        let c = load(&toml, &[("HOSTNAME", "ignored")]).unwrap();
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(
            k.credentials(),
            Credentials::Kubeconfig {
                path: Some(kc.clone()),
                context: Some("kind-db".into())
            }
        );
        assert!(!k.statefulsets && k.volume_stats);
        assert_eq!(k.volume_stats_interval, Duration::from_secs(120));
        assert_eq!(k.interval, Duration::from_secs(5));
        assert_eq!(k.thresholds().max_restarts_last_hour, 5);
        assert_eq!(k.thresholds().oom_window, Duration::from_secs(1800));
        // Unset here: the disk-free check's threshold.
        assert_eq!(k.thresholds().min_volume_free_ratio, 0.25);
        let lease = k.lease.as_ref().unwrap();
        assert_eq!(lease.name, "dbwarden-actor");
        assert_eq!(
            lease.holder_identity, "warden-a",
            "remediation.instance first"
        );
        assert_eq!(lease.duration, Duration::from_secs(20));
        let e = k.eviction.as_ref().unwrap();
        assert_eq!(e.targets, ["main"]);
        assert_eq!(e.not_ready_for, Duration::from_secs(300));
        assert_eq!(e.cooldown, Duration::from_secs(1200));
        assert_eq!(e.name, dbwarden::kubernetes::settings::EVICTION_POLICY_NAME);
        let printed = c.to_redacted_toml();
        let again = load(&printed, &[("HOSTNAME", "ignored")]).unwrap();
        assert_eq!(again.kubernetes, c.kubernetes, "{printed}");
    }

    #[test]
    fn the_lease_holder_defaults_to_the_hostname() {
        let toml = format!("{TARGETS}\n[kubernetes]\nnamespace = \"db\"\n[kubernetes.lease]\n");
        let c = load(&toml, &[("HOSTNAME", "dbwarden-1")]).unwrap();
        let lease = c.kubernetes.unwrap().lease.unwrap();
        assert_eq!(lease.holder_identity, "dbwarden-1");
        assert_eq!(lease.name, "dbwarden");
        assert_eq!(lease.duration, Duration::from_secs(15));
        assert_eq!(lease.renew_every, Duration::from_secs(5));
    }

    #[test]
    fn environment_variables_override_the_section() {
        let toml = format!("{TARGETS}\n[kubernetes]\nnamespace = \"db\"\n");
        let c = load(
            &toml,
            &[
                ("DBWARDEN_KUBERNETES__NAMESPACE", "other"),
                ("DBWARDEN_KUBERNETES__VOLUME_STATS", "true"),
            ],
        )
        .unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(k.namespace, "other");
        assert!(k.volume_stats);
    }

    #[test]
    fn every_mistake_is_reported_at_once_with_its_path() {
        let toml = "\
[postgres.main]
url = \"postgres://app@db:5432/app\"
pods = \"app in (postgres\"

[postgres.other]
url = \"postgres://app@db2:5432/app\"

[neo4j.graph]
uri = \"bolt://neo4j:7687\"
user = \"neo4j\"
pods = \"\"

[kubernetes]
credentials = \"token\"
namespce = \"db\"
context = \"x\"
oom_window = \"1s\"
min_volume_free_ratio = 1.5

[kubernetes.lease]
name = \"Not_A_Name\"
duration = \"10s\"
renew_every = \"8s\"

[kubernetes.eviction]
targets = [\"other\", \"nope\"]
not_ready_for = \"5s\"
max_per_cycle = 2
";
        let i = issues(toml);
        assert_issue(
            &i,
            "postgres.main.pods",
            &["invalid label selector", "app=postgres"],
        );
        assert_issue(&i, "neo4j.graph.pods", &["empty selector"]);
        assert_issue(
            &i,
            "kubernetes.credentials",
            &["\"in-cluster\"", "\"kubeconfig\""],
        );
        assert_issue(&i, "kubernetes.namespce", &["unknown key", "namespace"]);
        assert_issue(&i, "kubernetes.namespace", &["missing"]);
        assert_issue(&i, "kubernetes.oom_window", &["too short"]);
        assert_issue(&i, "kubernetes.min_volume_free_ratio", &["out of range"]);
        assert_issue(&i, "kubernetes.lease.name", &["invalid Lease name"]);
        assert_issue(&i, "kubernetes.lease.renew_every", &["twice per duration"]);
        assert_issue(
            &i,
            "kubernetes.eviction",
            &["needs a [remediation] section"],
        );
        assert_issue(&i, "kubernetes.eviction.max_per_cycle", &["unknown key"]);
        assert_issue(&i, "kubernetes.eviction.not_ready_for", &["too short"]);
        let t: Vec<_> = i
            .iter()
            .filter(|x| x.path == "kubernetes.eviction.targets")
            .map(|x| x.message.as_str())
            .collect();
        assert_eq!(t.len(), 2, "{i:#?}");
        assert!(t[0].contains("\"other\" has no pods selector"), "{t:?}");
        assert!(
            t[1].contains("\"nope\" is not a configured target"),
            "{t:?}"
        );
    }

    #[test]
    fn lag_routing_mistakes_are_reported_at_their_keys() {
        let toml = "\
[postgres.main]
url = \"postgres://app@db:5432/app\"
pods = \"statefulset.kubernetes.io/pod-name=pg-1\"

[postgres.other]
url = \"postgres://app@db2:5432/app\"

[neo4j.graph]
uri = \"bolt://neo4j:7687\"
user = \"neo4j\"
pods = \"app=neo4j\"

[kubernetes]
namespace = \"db\"

[kubernetes.lag_routing]
service = \"Pg_Read\"
targets = [\"main\", \"other\", \"graph\", \"nope\"]
restore_after = \"1s\"
max_lag = \"5s\"
";
        let i = issues(toml);
        assert_issue(
            &i,
            "kubernetes.lag_routing",
            &["needs a [remediation] section"],
        );
        assert_issue(
            &i,
            "kubernetes.lag_routing.service",
            &["invalid Service name"],
        );
        assert_issue(&i, "kubernetes.lag_routing.restore_after", &["too short"]);
        assert_issue(&i, "kubernetes.lag_routing.max_lag", &["unknown key"]);
        let t: Vec<_> = i
            .iter()
            .filter(|x| x.path == "kubernetes.lag_routing.targets")
            .map(|x| x.message.as_str())
            .collect();
        assert_eq!(t.len(), 3, "{i:#?}");
        assert!(t[0].contains("\"other\" has no pods selector"), "{t:?}");
        assert!(t[1].contains("\"graph\" is a Neo4j target"), "{t:?}");
        assert!(
            t[2].contains("\"nope\" is not a configured target"),
            "{t:?}"
        );
        // A service is required.
        let i = issues(
            "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\npods = \"app=pg\"\n\
             [kubernetes]\nnamespace = \"db\"\n[kubernetes.lag_routing]\n",
        );
        assert_issue(
            &i,
            "kubernetes.lag_routing.service",
            &["missing", "postgres-replica"],
        );
    }

    /// `[kubernetes.shards]`: no `pods` needed, the identity names the
    /// Lease, and every mistake at its key.
    #[test]
    fn shards_take_their_identity_and_refuse_bad_values() {
        let plain = "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n";
        let c = load(
            &format!("{plain}[kubernetes]\nnamespace = \"db\"\n[kubernetes.shards]\n"),
            &[("HOSTNAME", "dbwarden-1")],
        )
        .unwrap();
        let s = c.kubernetes.unwrap().shards.unwrap();
        assert_eq!(s.identity, "dbwarden-1");
        assert_eq!(s.lease_name(), "dbwarden-dbwarden-1");
        assert_eq!(s.selector(), "dbwarden.io/shard-group=dbwarden");
        assert_eq!(
            (s.duration, s.renew_every),
            (Duration::from_secs(15), Duration::from_secs(5))
        );
        let i = issues(&format!(
            "{plain}[kubernetes]\nnamespace = \"db\"\n[kubernetes.shards]\ngroup = \"Shards\"\nduration = \"3s\"\nrenew_every = \"2s\"\nmembers = 3\n"
        ));
        assert_issue(
            &i,
            "kubernetes.shards.group",
            &["invalid shard group", "label value"],
        );
        assert_issue(
            &i,
            "kubernetes.shards.renew_every",
            &["three times per duration"],
        );
        assert_issue(&i, "kubernetes.shards.members", &["unknown key"]);
        let i = load(
            &format!("{plain}[kubernetes]\nnamespace = \"db\"\n[kubernetes.shards]\nduration = \"2500ms\"\n"),
            &[("HOSTNAME", "Pod_1")],
        )
        .unwrap_err();
        let ConfigError::Invalid(i) = i else {
            panic!("{i}")
        };
        assert_issue(
            &i,
            "kubernetes.shards",
            &["\"dbwarden-Pod_1\"", "$HOSTNAME"],
        );
        assert_issue(&i, "kubernetes.shards.duration", &["whole seconds"]);
    }

    #[test]
    fn pods_without_a_section_and_a_section_without_pods_are_errors() {
        let i = issues(
            "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\npods = \"app=postgres\"\n",
        );
        assert_issue(&i, "postgres.main.pods", &["needs a [kubernetes] section"]);
        let i = issues(
            "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n[kubernetes]\nnamespace = \"db\"\n",
        );
        assert_issue(&i, "kubernetes", &["no target names its pods"]);
        // In-cluster credentials take no kubeconfig; a misplaced key is pointed home.
        let i = issues(&format!(
            "{TARGETS}\n[kubernetes]\nnamespace = \"db\"\nkubeconfig = \"/x\"\nnot_ready_for = \"5m\"\n"
        ));
        assert_issue(
            &i,
            "kubernetes.kubeconfig",
            &["credentials = \"kubeconfig\""],
        );
        assert_issue(&i, "kubernetes.not_ready_for", &["[kubernetes.eviction]"]);
        let i = issues(&format!(
            "{TARGETS}\n[kubernetes]\ncredentials = \"kubeconfig\"\nkubeconfig = \"/nonexistent/kubeconfig\"\nnamespace = \"db\"\n"
        ));
        assert_issue(&i, "kubernetes.kubeconfig", &["not a readable file"]);
    }
}

/// Every key the schema accepts is in docs/configuration.md (in its table's
/// section) and in config/dbwarden.example.toml (after its table's header,
/// commented or not).
#[test]
fn every_key_is_documented_and_in_the_example() {
    let root = env!("CARGO_MANIFEST_DIR");
    let docs = std::fs::read_to_string(format!("{root}/docs/configuration.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/config/dbwarden.example.toml")).unwrap();
    let keys = schema::all();
    let settings: Vec<&str> = keys
        .iter()
        .filter_map(|k| k.strip_prefix("defaults."))
        .collect();
    let mut missing = Vec::new();
    for key in &keys {
        let Some((table, leaf)) = key.rsplit_once('.') else {
            continue;
        };
        let is_table = keys.iter().any(|k| k.starts_with(&format!("{key}.")));
        if leaf == "<name>" || is_table {
            continue; // checked through its keys
        }
        // A target's thresholds are documented with the global ones, and
        // exemplified there or in a target.
        let (doc_table, check) = match table
            .split_once(".thresholds.")
            .map(|(_, c)| c)
            .or(table.strip_prefix("thresholds."))
        {
            Some(check) => ("thresholds.<check>".to_string(), Some(check)),
            None => (table.to_string(), None),
        };
        let section = doc_section(&docs, &doc_table);
        // A check's exceptions are documented with the check.
        let check_name = check.map(|c| c.split('.').next().unwrap_or(c));
        for word in check_name.into_iter().chain([leaf]) {
            if !section.is_some_and(|s| s.contains(&format!("`{word}`"))) {
                missing.push(format!(
                    "docs/configuration.md: `{word}` in the section of [{doc_table}] ({key})"
                ));
            }
        }
        let target = table.starts_with("postgres.") || table.starts_with("neo4j.");
        let headers: Vec<String> = match check {
            Some(check) => vec![format!("thresholds.{check}"), table.to_string()],
            // A target's settings are exemplified in [defaults].
            None if target && settings.contains(&leaf) => vec!["defaults".to_string()],
            None => vec![table.to_string()],
        };
        if !headers.iter().any(|h| in_example(&example, h, leaf)) {
            missing.push(format!(
                "config/dbwarden.example.toml: {leaf} under [{}] ({key})",
                headers.join("] or [")
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} missing:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// The text under the heading that names `[table]`, to the next heading.
fn doc_section<'d>(docs: &'d str, table: &str) -> Option<&'d str> {
    let heading = format!("`[{table}]`");
    let start = docs
        .lines()
        .position(|l| l.starts_with('#') && l.contains(&heading))?;
    let lines: Vec<&str> = docs.lines().collect();
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('#'))
        .map_or(lines.len(), |n| start + 1 + n);
    let from = docs.find(lines[start])?;
    let to = if end < lines.len() {
        docs[from..]
            .find(lines[end])
            .map_or(docs.len(), |n| from + n)
    } else {
        docs.len()
    };
    Some(&docs[from..to])
}

/// `key = ...` (commented or not) after a `[table]` header, `<name>` standing
/// for any name.
fn in_example(example: &str, table: &str, key: &str) -> bool {
    let header = regex::Regex::new(&format!(
        r"^#?\s*\[{}\]\s*$",
        regex::escape(table).replace("<name>", "[a-z0-9_-]+")
    ))
    .unwrap();
    let line = regex::Regex::new(&format!(r"^[#\s]*{}\s*=", regex::escape(key))).unwrap();
    let lines: Vec<&str> = example.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        header.is_match(l)
            && lines[i + 1..]
                .iter()
                .take_while(|l| !header_like(l) || header.is_match(l))
                .any(|l| line.is_match(l))
    })
}

fn header_like(line: &str) -> bool {
    let l = line.trim_start_matches(['#', ' ']);
    l.starts_with('[') && l.trim_end().ends_with(']') && !l.contains('=')
}

/// Printing the effective configuration and loading it again gives the same
/// configuration, for random configurations of every section.
mod round_trip {
    use dbwarden::config::Config;
    use proptest::prelude::*;

    fn pick<T: Clone + std::fmt::Debug + 'static>(v: &[T]) -> impl Strategy<Value = T> + use<T> {
        prop::sample::select(v.to_vec())
    }

    /// `key = value` lines, each present or not.
    fn some_lines(
        choices: Vec<(&'static str, Vec<&'static str>)>,
    ) -> impl Strategy<Value = String> {
        choices
            .into_iter()
            .map(|(k, vs)| {
                prop::option::of(pick(&vs))
                    .prop_map(move |v| v.map(|v| format!("{k} = {v}\n")).unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .prop_map(|lines| lines.concat())
    }

    /// Settings that always fit together (timeouts within the intervals).
    fn settings() -> impl Strategy<Value = String> {
        some_lines(vec![
            ("poll_interval", vec!["\"10s\"", "\"1m\"", "\"1h 30m\""]),
            ("poll_timeout", vec!["\"5s\"", "\"9s\""]),
            ("connect_timeout", vec!["\"1s\"", "\"2m\""]),
            ("statement_timeout", vec!["\"500ms\"", "\"4s\""]),
            ("lock_timeout", vec!["\"100ms\"", "\"1s\""]),
            ("max_connections", vec!["2", "10"]),
            ("database_sizes_interval", vec!["\"1day\"", "\"5m\""]),
            ("backoff_max", vec!["\"1m\"", "\"2h\""]),
        ])
    }

    fn thresholds(prefix: &'static str, neo4j: bool) -> impl Strategy<Value = String> {
        type Keys = Vec<(&'static str, Vec<&'static str>)>;
        let checks: Vec<(&str, Keys)> = if neo4j {
            vec![
                (
                    "slow_queries",
                    vec![
                        ("max", vec!["\"1s\"", "\"30s\""]),
                        ("for", vec!["\"0s\"", "\"1m\""]),
                    ],
                ),
                ("indexes_online", vec![("for", vec!["\"5m\""])]),
                (
                    "node_count",
                    vec![("min", vec!["0", "1000"]), ("for", vec!["\"1m\""])],
                ),
                ("relationship_count", vec![("max", vec!["100000000"])]),
            ]
        } else {
            vec![
                (
                    "disk_free",
                    vec![("min_ratio", vec!["0.15", "0.3"]), ("for", vec!["\"5m\""])],
                ),
                ("connections_used", vec![("max_ratio", vec!["0.8", "1.0"])]),
                (
                    "replication_lag",
                    vec![
                        ("max", vec!["\"5s\"", "\"1h 30m\""]),
                        ("for", vec!["\"2m\""]),
                    ],
                ),
                (
                    "replication_streaming",
                    vec![("min_standbys", vec!["0", "2"])],
                ),
                (
                    "replication_slot_retained_wal",
                    vec![("max_bytes", vec!["1073741824"])],
                ),
                (
                    "idle_session",
                    vec![
                        ("max", vec!["\"10m\""]),
                        ("for", vec!["\"0s\""]),
                        ("ignore_applications", vec!["[\"psql\", \"pg_.*\"]"]),
                        ("match_users", vec!["[\"app\"]"]),
                        ("ignore_client_addrs", vec!["[\"10.0.0.0/8\", \"::1\"]"]),
                        ("ignore_query", vec!["\"(?i)^listen\""]),
                    ],
                ),
                (
                    "long_running_query",
                    vec![
                        ("max", vec!["\"5m\""]),
                        ("ignore_databases", vec!["[\"scratch\"]"]),
                    ],
                ),
                ("invalid_indexes", vec![("for", vec!["\"1m\""])]),
            ]
        };
        checks
            .into_iter()
            .map(move |(check, keys)| {
                prop::option::of(some_lines(keys)).prop_map(move |b| {
                    b.map(|b| format!("[{prefix}.{check}]\n{b}"))
                        .unwrap_or_default()
                })
            })
            .collect::<Vec<_>>()
            .prop_map(|t| t.concat())
            .prop_flat_map(move |t| {
                // An exception, merged by name over the global one.
                let exception = format!(
                    "[{prefix}.long_running_query.exceptions.backup]\nmax = \"6h\"\nmatch_applications = [\"pg_dump\"]\n"
                );
                prop::bool::ANY.prop_map(move |with| {
                    if with && !neo4j {
                        format!("{t}{exception}")
                    } else {
                        t.clone()
                    }
                })
            })
    }

    fn policy(i: usize) -> impl Strategy<Value = String> {
        (
            pick(&[
                "action = \"terminate\"",
                "action = \"cancel\"",
                "action = \"cancel_then_terminate\"\ngrace = \"15s\"",
            ]),
            pick(&[
                "state = [\"idle\"]\nidle_for = \"10m\"",
                "state = [\"active\"]\nquery_running_for = \"5m\"",
                "connected_for = \"1day\"\nmatch_client_addrs = [\"10.0.0.0/8\", \"::1\"]",
                "blocking_waiters = 3\nblocking_for = \"30s\"\nstate = [\"idle_in_transaction\"]",
            ]),
            some_lines(vec![
                ("victims", vec!["\"all\"", "\"oldest\""]),
                ("max_per_cycle", vec!["1", "1000"]),
                ("only_while_failing", vec!["[\"connections_used\"]", "[]"]),
                ("only_while_alerts", vec!["[\"DbWardenConnectionsHigh\"]"]),
                ("targets", vec!["[\"pg0\"]"]),
            ]),
            some_lines(vec![
                ("ignore_applications", vec!["[\"psql\", \"pg_dump|pg_basebackup\"]"]),
                ("match_users", vec!["[\"app\"]"]),
                ("ignore_query", vec!["\"(?i)vacuum\""]),
            ]),
        )
            .prop_map(move |(action, when, more, narrow)| {
                format!("[remediation.policies.p{i}]\n{action}\n{more}[remediation.policies.p{i}.when]\n{when}\n{narrow}")
            })
    }

    fn config() -> impl Strategy<Value = String> {
        (
            some_lines(vec![
                ("listen", vec!["\"0.0.0.0:9641\"", "\"[::1]:1\""]),
                ("shutdown_grace", vec!["\"1h\"", "\"0s\""]),
            ]),
            settings(),
            thresholds("thresholds", false),
            thresholds("thresholds", true),
            (1usize..3, settings(), thresholds("postgres.pg0.thresholds", false)),
            (
                prop::option::of(settings().prop_map(|s| {
                    s.lines()
                        .filter(|l| !["statement", "lock", "max_conn", "database"].iter().any(|p| l.starts_with(p)))
                        .map(|l| format!("{l}\n"))
                        .collect::<String>()
                })),
                thresholds("neo4j.graph.thresholds", true),
            ),
            prop::option::of((
                some_lines(vec![
                    ("mode", vec!["\"observe\"", "\"dry-run\"", "\"enforce\""]),
                    ("instance", vec!["\"dbwarden-0\""]),
                    ("pacing", vec!["\"0s\"", "\"1s\""]),
                    ("redact_queries", vec!["true"]),
                    ("api_token_env", vec!["\"API_TOKEN\""]),
                ]),
                prop::collection::vec(0usize..4, 0..4),
            )),
        )
            .prop_flat_map(|(server, defaults, th, neo4j_th, (n, own, own_th), (graph, graph_th), remediation)| {
                let policies: Vec<_> = remediation
                    .as_ref()
                    .map(|(_, ps)| ps.iter().enumerate().map(|(i, _)| policy(i).boxed()).collect())
                    .unwrap_or_default();
                (Just((server, defaults, th, neo4j_th, n, own, own_th, graph, graph_th, remediation)), policies)
            })
            .prop_map(|((server, defaults, th, neo4j_th, n, own, own_th, graph, graph_th, remediation), policies)| {
                let mut t = format!("[server]\n{server}[defaults]\n{defaults}{th}{neo4j_th}");
                for i in 0..n {
                    t += &format!("[postgres.pg{i}]\nurl = \"postgres://app:pw-{i}@db{i}:5432/app?sslmode=require\"\n");
                    if i == 0 {
                        t += &own;
                        t += "[postgres.pg0.paths]\ndata = \"/var/lib/pg\"\n";
                        t += &own_th;
                    }
                }
                if let Some(g) = graph {
                    t += &format!("[neo4j.graph]\nuri = \"bolt://neo4j:7687\"\npassword_env = \"NEO4J_PASSWORD\"\n{g}{graph_th}");
                }
                if let Some((r, _)) = remediation {
                    t += &format!("[remediation]\n{r}");
                    t += &policies.concat();
                }
                t
            })
    }

    fn env() -> Vec<(String, String)> {
        [
            ("API_TOKEN", "tok-9"),
            ("NEO4J_PASSWORD", "n-pw"),
            ("HOSTNAME", "host-1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .to_vec()
    }

    /// What a configuration means: a target with a default written out is
    /// the same target.
    fn meaning(c: &Config) -> Config {
        let mut c = c.clone();
        for t in &mut c.postgres {
            t.target = t.target.resolved();
        }
        for t in &mut c.neo4j {
            t.target = t.target.resolved();
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn printing_and_loading_again_gives_the_same_configuration(text in config()) {
            let first = Config::from_toml_with_env(&text, env())
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let printed = first.to_redacted_toml();
            // The URL's password is redacted: load it back with the same one.
            let reloadable = (0..3).fold(printed.clone(), |p, i| {
                p.replace(&format!("app:<redacted>@db{i}"), &format!("app:pw-{i}@db{i}"))
            });
            let second = Config::from_toml_with_env(&reloadable, env())
                .unwrap_or_else(|e| panic!("the printed configuration does not load: {e}\n{printed}"));
            prop_assert_eq!(meaning(&first), meaning(&second));
            prop_assert_eq!(second.to_redacted_toml(), printed);
        }
    }
}

/// Every key the configuration accepts, read from the parts' derived
/// `Deserialize` (a walk that answers every struct with the keys it has not
/// explored yet): what the documentation must cover.
mod schema {
    use std::collections::{BTreeMap, BTreeSet};

    /// Every key path the configuration file accepts, from the parts' own
    /// types; the names of targets, policies and volumes show as `<name>`.
    /// A target's settings sit in its own table, as in the file.
    fn keys() -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut add = |prefix: &str, keys: BTreeSet<String>| {
            for k in keys {
                let k = k.strip_prefix("settings.").unwrap_or(&k);
                if k != "settings" {
                    out.insert(format!("{prefix}.{k}"));
                }
            }
        };
        add("server", key_paths::<dbwarden::config::ServerSettings>());
        add("log", key_paths::<dbwarden::config::LogSettings>());
        add("defaults", key_paths::<dbwarden::config::TargetSettings>());
        add("thresholds", key_paths::<dbwarden::evaluate::Thresholds>());
        add(
            "thresholds",
            key_paths::<dbwarden::evaluate::Neo4jThresholds>(),
        );
        add(
            "postgres.<name>",
            key_paths::<dbwarden::config::PostgresTarget>(),
        );
        add(
            "postgres.<name>.thresholds",
            key_paths::<dbwarden::evaluate::Thresholds>(),
        );
        add("neo4j.<name>", key_paths::<dbwarden::config::Neo4jTarget>());
        add(
            "neo4j.<name>.thresholds",
            key_paths::<dbwarden::evaluate::Neo4jThresholds>(),
        );
        add(
            "backups.<name>",
            key_paths::<dbwarden::config::BackupLocation>(),
        );
        add(
            "backups.<name>.thresholds",
            key_paths::<dbwarden::evaluate::BackupThresholds>(),
        );
        add(
            "kubernetes",
            key_paths::<dbwarden::config::KubernetesSettings>(),
        );
        add(
            "remediation",
            key_paths::<dbwarden::config::RemediationSettings>(),
        );
        out
    }

    /// Every key path a settings type accepts, read from its derived
    /// `Deserialize`: `listen`, `budget.window`, `policies.<name>.when.state`
    /// (a map's keys show as `<name>`). The documentation's completeness is
    /// checked against it.
    fn key_paths<T: serde::de::DeserializeOwned>() -> BTreeSet<String> {
        let walk = walk::Walk::default();
        // Each pass explores at least one key it had not, until none is left.
        for _ in 0..10_000 {
            let _ = T::deserialize(walk::Walker {
                walk: &walk,
                path: String::new(),
            });
            if walk.done.borrow().contains("") {
                break;
            }
        }
        walk.keys.into_inner()
    }

    /// A deserializer that answers every struct with the keys it has not yet
    /// explored and every leaf with a made-up value: it records the keys it is
    /// asked for, not what they hold.
    mod walk {
        use std::cell::RefCell;
        use std::collections::{BTreeMap, BTreeSet};

        use serde::de::{
            self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
        };

        /// `parent.key`, unquoted (`<name>` stands for a map's keys).
        fn join(parent: &str, key: &str) -> String {
            if parent.is_empty() {
                key.to_string()
            } else {
                format!("{parent}.{key}")
            }
        }

        #[derive(Default)]
        pub(super) struct Walk {
            /// Every table's fields, by its path.
            tables: RefCell<BTreeMap<String, Vec<&'static str>>>,
            /// The paths explored to the end.
            pub(super) done: RefCell<BTreeSet<String>>,
            pub(super) keys: RefCell<BTreeSet<String>>,
        }

        #[derive(Debug)]
        pub(super) struct Stop;
        impl std::fmt::Display for Stop {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("stop")
            }
        }
        impl std::error::Error for Stop {}
        impl de::Error for Stop {
            fn custom<M: std::fmt::Display>(_: M) -> Self {
                Stop
            }
        }

        pub(super) struct Walker<'w> {
            pub(super) walk: &'w Walk,
            pub(super) path: String,
        }

        impl Walk {
            fn finish(&self, path: &str) {
                let complete = match self.tables.borrow().get(path) {
                    Some(fields) => {
                        let done = self.done.borrow();
                        fields.iter().all(|f| done.contains(&join(path, f)))
                    }
                    None => true,
                };
                if complete {
                    self.done.borrow_mut().insert(path.to_string());
                }
            }
        }

        /// The keys of one table still to explore, or a map's one `<name>`.
        struct Entries<'w> {
            walk: &'w Walk,
            path: String,
            pending: Vec<&'static str>,
            current: Option<String>,
        }

        impl<'de> MapAccess<'de> for Entries<'_> {
            type Error = Stop;
            fn next_key_seed<K: DeserializeSeed<'de>>(
                &mut self,
                seed: K,
            ) -> Result<Option<K::Value>, Stop> {
                let Some(key) = self.pending.pop() else {
                    return Ok(None);
                };
                let child = join(&self.path, key);
                self.walk.keys.borrow_mut().insert(child.clone());
                self.current = Some(child);
                seed.deserialize(key.into_deserializer()).map(Some)
            }
            fn next_value_seed<V: DeserializeSeed<'de>>(
                &mut self,
                seed: V,
            ) -> Result<V::Value, Stop> {
                let child = self.current.take().unwrap_or_default();
                let r = seed.deserialize(Walker {
                    walk: self.walk,
                    path: child.clone(),
                });
                self.walk.finish(&child);
                r
            }
        }

        struct One<'w>(Option<Walker<'w>>);

        impl<'de> SeqAccess<'de> for One<'_> {
            type Error = Stop;
            fn next_element_seed<T: DeserializeSeed<'de>>(
                &mut self,
                seed: T,
            ) -> Result<Option<T::Value>, Stop> {
                match self.0.take() {
                    Some(w) => seed.deserialize(w).map(Some),
                    None => Ok(None),
                }
            }
        }

        impl<'de> Deserializer<'de> for Walker<'_> {
            type Error = Stop;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
                Err(Stop)
            }
            fn deserialize_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                fields: &'static [&'static str],
                v: V,
            ) -> Result<V::Value, Stop> {
                self.walk
                    .tables
                    .borrow_mut()
                    .insert(self.path.clone(), fields.to_vec());
                let done = self.walk.done.borrow().clone();
                let mut pending: Vec<&'static str> = fields
                    .iter()
                    .filter(|f| !done.contains(&join(&self.path, f)))
                    .copied()
                    .collect();
                pending.reverse();
                let r = v.visit_map(Entries {
                    walk: self.walk,
                    path: self.path.clone(),
                    pending,
                    current: None,
                });
                self.walk.finish(&self.path);
                r
            }
            fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                self.walk
                    .tables
                    .borrow_mut()
                    .insert(self.path.clone(), vec!["<name>"]);
                let r = v.visit_map(Entries {
                    walk: self.walk,
                    path: self.path.clone(),
                    pending: vec!["<name>"],
                    current: None,
                });
                self.walk.finish(&self.path);
                r
            }
            fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_some(self)
            }
            fn deserialize_newtype_struct<V: Visitor<'de>>(
                self,
                _: &'static str,
                v: V,
            ) -> Result<V::Value, Stop> {
                v.visit_newtype_struct(self)
            }
            fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_seq(One(Some(self)))
            }
            fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_str("")
            }
            fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_str("")
            }
            fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_bool(false)
            }
            fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_u32(1)
            }
            fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_u64(1)
            }
            fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Stop> {
                v.visit_f64(0.5)
            }
            serde::forward_to_deserialize_any! {
                i8 i16 i32 i64 i128 u8 u16 u128 f32 char bytes byte_buf unit
                unit_struct tuple tuple_struct enum identifier ignored_any
            }
        }
    }

    pub(super) fn all() -> BTreeSet<String> {
        keys()
    }

    #[test]
    fn key_paths_walk_nested_tables_options_lists_and_maps() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            #[serde(with = "dbwarden::settings::duration")]
            every: std::time::Duration,
            names: Vec<String>,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            a: u32,
            inner: Option<Inner>,
            #[serde(rename = "for")]
            hold: bool,
            by_name: BTreeMap<String, Inner>,
        }
        let keys: Vec<String> = key_paths::<Outer>().into_iter().collect();
        assert_eq!(
            keys,
            [
                "a",
                "by_name",
                "by_name.<name>",
                "by_name.<name>.every",
                "by_name.<name>.names",
                "for",
                "inner",
                "inner.every",
                "inner.names",
            ]
        );
    }
}

/// The session checks' lists and exceptions: merged over the global ones
/// field by field (a target's list replaces the global one; an exception
/// is merged by name), read with the policies' own types.
#[test]
fn session_check_scopes_and_exceptions_merge_like_thresholds() {
    let toml = "\
        [thresholds.long_running_query]\nmax = \"5m\"\nignore_users = [\"etl\"]\n\
        [thresholds.long_running_query.exceptions.backup]\nmax = \"6h\"\nmatch_applications = [\"pg_dump\"]\n\
        [thresholds.idle_session]\nignore_applications = [\"psql\"]\n\
        [postgres.a]\nurl = \"postgres://h/d\"\n\
        [postgres.a.thresholds.long_running_query]\nignore_users = [\"batch\"]\n\
        [postgres.a.thresholds.long_running_query.exceptions.backup]\nmax = \"8h\"\n\
        [postgres.a.thresholds.long_running_query.exceptions.reports]\nmax = \"1h\"\nmatch_users = [\"reporting\"]\n\
        [postgres.b]\nurl = \"postgres://h/d\"\n";
    let c = ok(toml, &[]);
    let (a, b) = (&c.postgres[0].thresholds, &c.postgres[1].thresholds);
    assert_eq!(a.long_running_query.ignore_users, ["batch"]);
    assert_eq!(b.long_running_query.ignore_users, ["etl"]);
    let backup = &a.long_running_query.exceptions["backup"];
    assert_eq!(backup.max, Duration::from_secs(8 * 3600));
    assert!(backup.match_applications.contains("pg_dump"));
    assert!(!backup.match_applications.contains("pg_dumpall"));
    assert_eq!(
        a.long_running_query.exceptions["reports"].match_users,
        ["reporting"]
    );
    assert_eq!(
        b.long_running_query.exceptions["backup"].max,
        Duration::from_secs(6 * 3600)
    );
    assert!(!b.long_running_query.exceptions.contains_key("reports"));
    for t in [a, b] {
        assert!(t.idle_session.ignore_applications.contains("psql"));
        assert_eq!(t.idle_session.max, Duration::from_secs(600));
    }
    assert!(
        Thresholds::default()
            .long_running_query
            .exceptions
            .is_empty()
    );
    // Printed and loaded again: the same.
    let printed = c.to_redacted_toml();
    assert_eq!(ok(&printed, &[]).to_redacted_toml(), printed);
}

#[test]
fn bad_session_lists_and_exceptions_are_errors_naming_their_keys() {
    let toml = format!(
        "[thresholds.long_running_query]\nignore_users = []\nignore_applications = [\"(pg_dump\"]\n\
         [thresholds.long_running_query.exceptions.backup]\nmax = \"6h\"\nignore_users = [\"x\"]\n\
         [thresholds.long_running_query.exceptions.nightly]\nmatch_users = [\"backup\"]\n\
         [thresholds.long_running_query.exceptions.zero]\nmax = \"0s\"\nmatch_users = [\"z\"]\n\
         [thresholds.long_running_query.exceptions.slow]\nmax = \"1h\"\nfor = \"1m\"\nmatch_users = [\"s\"]\n\
         [thresholds.long_running_query.exceptions.Bad_Name]\nmax = \"1h\"\nmatch_users = [\"b\"]\n\
         [thresholds.idle_session]\nignore_client_addrs = [\"10.0.0.0/33\"]\nmatch_query = \"[\"\n\
         [thresholds.disk_free]\nignore_users = [\"backup\"]\n\
         [thresholds.wraparound]\nmax = \"1h\"\n\
         {MIN}[postgres.main.thresholds.idle_in_transaction.exceptions.etl]\nmax = \"1h\"\nmatch_applications = [\"etl\"]\nmatch_usres = [\"x\"]\n"
    );
    let issues = issues(&toml, &[]);
    let p = "thresholds.long_running_query";
    assert_issue(
        &issues,
        &format!("{p}.ignore_users"),
        &["empty", "leave the key out"],
    );
    assert_issue(
        &issues,
        &format!("{p}.ignore_applications"),
        &["invalid regex \"(pg_dump\"", "unclosed group"],
    );
    assert_issue(
        &issues,
        &format!("{p}.exceptions.backup"),
        &["no match_ list", "match_users", "change the check's max"],
    );
    assert_issue(
        &issues,
        &format!("{p}.exceptions.nightly.max"),
        &["missing", "`max` is required"],
    );
    assert_issue(
        &issues,
        &format!("{p}.exceptions.zero.max"),
        &["\"0s\"", "positive duration"],
    );
    assert_issue(
        &issues,
        &format!("{p}.exceptions.slow.for"),
        &["no `for` of its own", "the check's `for`"],
    );
    assert_issue(
        &issues,
        &format!("{p}.exceptions.Bad_Name"),
        &["invalid exception name \"Bad_Name\"", "lowercase"],
    );
    assert_issue(
        &issues,
        "thresholds.idle_session.ignore_client_addrs",
        &["invalid network \"10.0.0.0/33\"", "CIDR"],
    );
    assert_issue(
        &issues,
        "thresholds.idle_session.match_query",
        &["invalid regex \"[\""],
    );
    assert_issue(
        &issues,
        "thresholds.disk_free.ignore_users",
        &[
            "unknown key `ignore_users`",
            "only the checks over sessions",
            "not disk_free",
        ],
    );
    assert_issue(
        &issues,
        "thresholds.wraparound.max",
        &["unknown key `max`", "max_ratio, for"],
    );
    assert_issue(
        &issues,
        "postgres.main.thresholds.idle_in_transaction.exceptions.etl.match_usres",
        &["unknown key `match_usres`", "did you mean `match_users`?"],
    );
    assert_eq!(issues.len(), 12, "{issues:#?}");
}

/// A mistake in an exception every target inherits is reported once, where it was written.
#[test]
fn a_mistake_in_an_inherited_exception_is_reported_where_it_was_written() {
    let toml = format!(
        "[thresholds.idle_session.exceptions.pool]\nmax = \"1h\"\nignore_users = [\"dba\"]\n\
         {MIN}[postgres.other]\nurl = \"postgres://h/d\"\n"
    );
    let issues = issues(&toml, &[]);
    assert_issue(
        &issues,
        "thresholds.idle_session.exceptions.pool",
        &["no match_ list"],
    );
    assert_eq!(issues.len(), 1, "{issues:#?}");
}

/// `[backups.<name>]`: read with its defaults and thresholds, printed
/// without credentials, and every mistake reported at its key.
mod backups {
    use super::*;

    const AWS: [(&str, &str); 3] = [
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "backup-secret-9"),
        ("AWS_ALLOW_HTTP", "true"),
    ];

    #[test]
    fn a_location_reads_with_defaults_and_its_thresholds() {
        let toml = format!(
            "{MIN}\n[backups.pg-nightly]\ntarget = \"main\"\nurl = \"s3://intelgraph-backups/database/\"\npattern = \"postgres_backup_*.dump\"\nendpoint = \"http://127.0.0.1:9000\"\n\n[backups.pg-nightly.thresholds]\nmin_bytes = 1048576\n"
        );
        let c = ok(&toml, &AWS);
        let b = &c.backups[0];
        assert_eq!(b.target.name, "pg-nightly");
        assert_eq!(b.target.interval, Duration::from_secs(300));
        assert!(b.target.allow_http(), "http:// written in endpoint");
        assert_eq!(b.thresholds.max_age, Duration::from_secs(26 * 3600));
        assert_eq!(b.thresholds.min_bytes, 1048576);
        assert_eq!(b.thresholds.max_shrink, 0.5);
        let vars: Vec<&str> = b.target.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(vars, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]);
        // Never printed: not in the effective configuration, not in Debug.
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("backup-secret-9"), "{printed}");
        assert!(!format!("{c:?}").contains("backup-secret-9"));
        assert!(
            printed.contains("[backups.pg-nightly.thresholds]"),
            "{printed}"
        );
        assert_eq!(ok(&printed, &AWS).backups, c.backups, "loads back");
    }

    #[test]
    fn every_mistake_is_reported_at_its_key() {
        let toml = format!(
            "{MIN}\n[backups.a]\ntarget = \"nope\"\nurl = \"ftp://x/\"\npattern = \"a/b*\"\ninterval = \"500ms\"\nintegrity_bytes = 1\n\n[backups.a.thresholds]\nmax_shrink = 1.0\n\n[backups.b]\ntarget = \"main\"\nurl = \"gs://bucket/x/\"\nendpoint = \"http://x:1\"\nregion = \"eu\"\n\n[backups.c]\ntarget = \"main\"\nurl = \"s3://key:secret@bucket/\"\n\n[backups.d]\ntarget = \"main\"\nurl = \"file://relative/dir\"\n"
        );
        let i = issues(&toml, &[]);
        assert_issue(
            &i,
            "backups.a.target",
            &["\"nope\" is not a configured target", "main"],
        );
        assert_issue(&i, "backups.a.url", &["not a supported location", "s3://"]);
        assert_issue(&i, "backups.a.pattern", &["contains '/'"]);
        assert_issue(&i, "backups.a.interval", &["too short"]);
        assert_issue(&i, "backups.a.integrity_bytes", &["out of range"]);
        assert_issue(&i, "backups.a.thresholds.max_shrink", &["below 1"]);
        assert_issue(&i, "backups.b.endpoint", &["s3:// locations only"]);
        assert_issue(&i, "backups.b.region", &["unknown key"]);
        assert_issue(&i, "backups.c.url", &["credentials are never written"]);
        assert!(
            !i.iter().any(|x| x.message.contains("key:secret")),
            "{i:#?}"
        );
        assert_issue(&i, "backups.d.url", &["absolute path"]);
        let missing = issues(&format!("{MIN}\n[backups.x]\npattern = \"*\"\n"), &[]);
        assert_issue(&missing, "backups.x.target", &["missing"]);
        assert_issue(&missing, "backups.x.url", &["missing"]);
    }
}

#[test]
fn a_policy_may_wait_on_a_probe_check_that_every_one_of_its_targets_has() {
    let base = "[postgres.main]\nurl = \"postgres://app@db:5432/app\"\n\
         [postgres.main.probes.entities]\nsql = \"SELECT count(*) AS rows FROM entities\"\n\
         checks.rows = { min = 1000 }\n\
         [postgres.other]\nurl = \"postgres://app@db2:5432/app\"\n\
         [remediation]\nmode = \"observe\"\n\
         [remediation.policies.a]\naction = \"cancel\"\nwhen.query_running_for = \"5m\"\n";
    let c = ok(
        &format!(
            "{base}targets = [\"main\"]\n\
             only_while_failing = [\"connections_used\", \"probe:entities:rows\", \"probe:entities\"]\n"
        ),
        &[],
    );
    let p = &c.remediation.as_ref().unwrap().policies["a"];
    assert_eq!(
        p.only_while_failing,
        [
            CheckName::Builtin(CheckId::ConnectionsUsed),
            CheckName::Probe("probe:entities:rows".into()),
            CheckName::Probe("probe:entities".into()),
        ]
    );
    // Without targets the policy acts on "other" too, which has no such probe.
    let found = issues(
        &format!("{base}only_while_failing = [\"probe:entities:rows\"]\n"),
        &[],
    );
    assert_issue(
        &found,
        "remediation.policies.a.only_while_failing",
        &["\"probe:entities:rows\"", "target \"other\""],
    );
    // A column without a check, and a name that is not a probe check's.
    let found = issues(
        &format!("{base}targets = [\"main\"]\nonly_while_failing = [\"probe:entities:newest\"]\n"),
        &[],
    );
    assert_issue(
        &found,
        "remediation.policies.a.only_while_failing",
        &["\"probe:entities:newest\"", "target \"main\""],
    );
    let found = issues(
        &format!("{base}targets = [\"main\"]\nonly_while_failing = [\"probe:Entities\"]\n"),
        &[],
    );
    assert_issue(
        &found,
        "remediation.policies.a.only_while_failing",
        &["\"probe:Entities\" is not a probe check's name"],
    );
}

#[test]
fn an_unknown_key_in_a_target_s_sub_table_lists_that_table_s_keys() {
    let found = issues(
        &format!("{MIN}[postgres.main.probes.p]\nsql = \"SELECT 1 AS one\"\nzzz = 1\n"),
        &[],
    );
    let at: Vec<_> = found
        .iter()
        .filter(|i| i.path == "postgres.main.probes.p.zzz")
        .collect();
    assert_eq!(at.len(), 1, "{found:#?}");
    assert!(
        at[0].message.contains("sql, databases"),
        "{}",
        at[0].message
    );
    assert!(
        !at[0].message.contains("poll_interval"),
        "{}",
        at[0].message
    );
    // At the target's own level its settings are keys too.
    let found = issues(&format!("{MIN}poll_intervall = \"1s\"\n"), &[]);
    assert_issue(
        &found,
        "postgres.main.poll_intervall",
        &["did you mean `poll_interval`?"],
    );
}
