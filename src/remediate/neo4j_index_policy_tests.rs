use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::observe::neo4j::Generation;

fn index(name: &str, state: &str, constraint: Option<&str>) -> Neo4jIndex {
    let create = match constraint {
        Some(c) => {
            format!("CREATE CONSTRAINT `{c}` FOR (n:`Person`) REQUIRE (n.`{name}`) IS UNIQUE")
        }
        None => format!("CREATE RANGE INDEX `{name}` FOR (n:`Person`) ON (n.`{name}`)"),
    };
    Neo4jIndex {
        database: "neo4j".into(),
        name: name.into(),
        state: state.into(),
        population_percent: if state == "ONLINE" { 100.0 } else { 0.0 },
        index_type: Some("RANGE".into()),
        entity_type: "NODE".into(),
        labels_or_types: vec!["Person".into()],
        properties: vec![name.into()],
        failure_message: (state == "FAILED").then(|| "boom\nat stack".to_string()),
        create_statement: Some(create),
        owning_constraint: constraint.map(String::from),
    }
}

fn snapshot(at: f64, generation: Generation, indexes: Vec<Neo4jIndex>) -> Neo4jSnapshot {
    Neo4jSnapshot {
        observed_at: at,
        version: match generation {
            Generation::Procedures => "4.3.24",
            Generation::Show44 => "4.4.26",
            Generation::Show5 => "5.26.0",
        }
        .into(),
        edition: "community".into(),
        generation,
        ping_seconds: 0.0,
        transactions: vec![],
        indexes,
        counts: vec![],
        databases: vec![],
        cluster: None,
    }
}

fn settings() -> IndexRebuildSettings {
    IndexRebuildSettings::default()
}

fn since(entries: &[(&str, f64)]) -> BTreeMap<IndexKey, f64> {
    entries
        .iter()
        .map(|(n, t)| (("neo4j".to_string(), n.to_string()), *t))
        .collect()
}

fn names(c: &[IndexCandidate]) -> Vec<&str> {
    c.iter().map(|c| c.index.name.as_str()).collect()
}

#[test]
fn a_failed_index_is_rebuilt_from_its_create_statement_once_failed_long_enough() {
    let s = snapshot(
        1_000.0,
        Generation::Show5,
        vec![index("email", "FAILED", None), index("ok", "ONLINE", None)],
    );
    // Seen FAILED 9m59s ago: not yet.
    let young = select(&settings(), &s, &since(&[("email", 1_000.0 - 599.0)]), None);
    assert!(young.eligible.is_empty());
    assert_eq!(young.held_counts()[&Held::TooRecent], 1);
    // 10 minutes: chosen, with the exact statements.
    let old = select(&settings(), &s, &since(&[("email", 400.0)]), None);
    assert_eq!(names(&old.eligible), ["email"]);
    let c = &old.eligible[0];
    assert_eq!(
        c.statements,
        Some(Statements {
            drop: "DROP INDEX `email`".into(),
            create: "CREATE RANGE INDEX `email` FOR (n:`Person`) ON (n.`email`)".into(),
        })
    );
    assert_eq!(c.failed_for_ms, 600_000);
    assert_eq!(c.reason, "FAILED for 10m (>= 10m): boom");
    assert_eq!(old.failed, 1);
}

#[test]
fn constraint_backed_indexes_only_when_named() {
    let s = snapshot(
        1_000.0,
        Generation::Show5,
        vec![index("uniq_email", "FAILED", Some("person_email"))],
    );
    let long = since(&[("uniq_email", 0.0)]);
    let r = select(&settings(), &s, &long, None);
    assert!(r.eligible.is_empty());
    assert_eq!(r.held, vec![(s.indexes[0].clone(), Held::Constraint)]);
    assert!(r.refused.is_empty(), "held quietly, not refused");

    let named = IndexRebuildSettings {
        constraints: vec!["person_email".into()],
        ..settings()
    };
    let r = select(&named, &s, &long, None);
    assert_eq!(
        r.eligible[0].statements.as_ref().unwrap().drop,
        "DROP CONSTRAINT `person_email`"
    );
    assert!(
        r.eligible[0]
            .statements
            .as_ref()
            .unwrap()
            .create
            .starts_with("CREATE CONSTRAINT `person_email`")
    );
    let all = IndexRebuildSettings {
        include_constraints: true,
        ..settings()
    };
    assert_eq!(select(&all, &s, &long, None).eligible.len(), 1);
    let other = IndexRebuildSettings {
        constraints: vec!["another".into()],
        ..settings()
    };
    assert!(select(&other, &s, &long, None).eligible.is_empty());
}

#[test]
fn before_4_4_the_rebuild_is_refused_with_the_reason() {
    let mut i = index("email", "FAILED", None);
    i.create_statement = None;
    let s = snapshot(1_000.0, Generation::Procedures, vec![i]);
    let r = select(&settings(), &s, &since(&[("email", 0.0)]), None);
    assert!(r.eligible.is_empty());
    assert_eq!(r.held_counts()[&Held::UnsupportedVersion], 1);
    let (c, why) = &r.refused[0];
    assert_eq!(c.index.name, "email");
    assert_eq!(c.statements, None);
    assert!(why.contains("older than 4.4"), "{why}");
    assert!(why.contains("4.3.24"), "{why}");
    // Not before failed_for, though: too recent first.
    let r = select(&settings(), &s, &since(&[("email", 999.0)]), None);
    assert!(r.refused.is_empty());
}

#[test]
fn a_definition_that_does_not_create_the_same_kind_of_thing_is_refused() {
    let mut plain = index("email", "FAILED", None);
    plain.create_statement = Some("CREATE CONSTRAINT x FOR (n:P) REQUIRE n.e IS UNIQUE".into());
    assert!(statements(&plain).is_err());
    plain.create_statement = Some("  ".into());
    assert!(statements(&plain).is_err());
    plain.create_statement = None;
    assert!(statements(&plain).is_err());
    let mut backed = index("uniq", "FAILED", Some("c"));
    backed.create_statement = Some("CREATE INDEX uniq FOR (n:P) ON (n.e)".into());
    assert!(statements(&backed).is_err());
    let all = IndexRebuildSettings {
        include_constraints: true,
        ..settings()
    };
    let s = snapshot(1_000.0, Generation::Show44, vec![backed]);
    let r = select(&all, &s, &since(&[("uniq", 0.0)]), None);
    assert_eq!(r.held_counts()[&Held::NoDefinition], 1);
    assert!(r.refused[0].1.contains("does not create its constraint"));
}

#[test]
fn names_are_quoted() {
    assert_eq!(quote("a`b c"), "`a``b c`");
    let mut i = index("we`ird", "FAILED", None);
    i.create_statement = Some("CREATE INDEX `we``ird` FOR (n:P) ON (n.e)".into());
    assert_eq!(statements(&i).unwrap().drop, "DROP INDEX `we``ird`");
}

#[test]
fn one_at_a_time_and_longest_failed_first() {
    let s = snapshot(
        10_000.0,
        Generation::Show5,
        vec![index("b", "FAILED", None), index("a", "FAILED", None)],
    );
    let long = since(&[("a", 5_000.0), ("b", 1_000.0)]);
    let r = select(&settings(), &s, &long, None);
    assert_eq!(names(&r.eligible), ["b", "a"], "longest FAILED first");
    let rebuilding = ("neo4j".to_string(), "c".to_string());
    let r = select(&settings(), &s, &long, Some(&rebuilding));
    assert!(r.eligible.is_empty());
    assert_eq!(r.held_counts()[&Held::OneAtATime], 2);
    // An index populating (not ours) holds them too.
    let mut busy = s.clone();
    busy.indexes.push(index("c", "POPULATING", None));
    let r = select(&settings(), &busy, &long, None);
    assert!(r.eligible.is_empty());
    assert_eq!(r.held_counts()[&Held::OneAtATime], 2);
}

#[test]
fn tracking_keeps_first_sightings_and_forgets_the_rest() {
    let s1 = snapshot(
        100.0,
        Generation::Show5,
        vec![index("a", "FAILED", None), index("b", "ONLINE", None)],
    );
    let t1 = track(&BTreeMap::new(), &s1, None);
    assert_eq!(t1, since(&[("a", 100.0)]));
    let s2 = snapshot(
        200.0,
        Generation::Show5,
        vec![index("a", "FAILED", None), index("b", "FAILED", None)],
    );
    let t2 = track(&t1, &s2, None);
    assert_eq!(t2, since(&[("a", 100.0), ("b", 200.0)]));
    // a recovers, then fails again: its clock starts over.
    let s3 = snapshot(300.0, Generation::Show5, vec![index("a", "ONLINE", None)]);
    let t3 = track(&t2, &s3, None);
    assert!(t3.is_empty());
    let t4 = track(&t3, &s2, None);
    assert_eq!(t4[&("neo4j".to_string(), "a".to_string())], 200.0);
    // The index being rebuilt is not tracked.
    let skip = ("neo4j".to_string(), "a".to_string());
    assert_eq!(track(&t2, &s2, Some(&skip)), since(&[("b", 200.0)]));
}

#[test]
fn progress_of_a_rebuild() {
    let k = ("neo4j".to_string(), "a".to_string());
    let mut p = index("a", "POPULATING", None);
    p.population_percent = 40.0;
    assert_eq!(
        progress(&k, 150.0, &snapshot(100.0, Generation::Show5, vec![])),
        Progress::Stale
    );
    assert_eq!(
        progress(&k, 150.0, &snapshot(200.0, Generation::Show5, vec![p])),
        Progress::Populating(40.0)
    );
    assert_eq!(
        progress(
            &k,
            150.0,
            &snapshot(200.0, Generation::Show5, vec![index("a", "ONLINE", None)])
        ),
        Progress::Online
    );
    assert_eq!(
        progress(
            &k,
            150.0,
            &snapshot(200.0, Generation::Show5, vec![index("a", "FAILED", None)])
        ),
        Progress::Failed
    );
    assert_eq!(
        progress(&k, 150.0, &snapshot(200.0, Generation::Show5, vec![])),
        Progress::Missing
    );
}

#[test]
fn the_recheck_names_what_changed() {
    let s = settings();
    let before = index("email", "FAILED", None);
    assert_eq!(recheck(&before, Some(&before), &s), None);
    assert_eq!(
        recheck(&before, None, &s).as_deref(),
        Some("the index is gone")
    );
    assert_eq!(
        recheck(&before, Some(&index("email", "POPULATING", None)), &s).as_deref(),
        Some("it is POPULATING now")
    );
    let mut redefined = before.clone();
    redefined.create_statement =
        Some("CREATE TEXT INDEX `email` FOR (n:Person) ON (n.email)".into());
    assert!(
        recheck(&before, Some(&redefined), &s)
            .unwrap()
            .starts_with("its definition changed")
    );
    let mut backed = before.clone();
    backed.owning_constraint = Some("c".into());
    assert_eq!(
        recheck(&before, Some(&backed), &s).as_deref(),
        Some("it is now backed by constraint \"c\", which the settings do not name")
    );
    // A constraint the settings name: still a change, said as such.
    let named = IndexRebuildSettings {
        constraints: vec!["c".into()],
        ..settings()
    };
    assert_eq!(
        recheck(&before, Some(&backed), &named).as_deref(),
        Some("its owning constraint changed")
    );
}

/// Each part of the definition alone, with the same createStatement (as a
/// server older than its own report could show it), refuses the rebuild.
#[test]
fn the_recheck_refuses_any_one_part_of_the_definition_changed() {
    let s = settings();
    let before = index("email", "FAILED", None);
    type Change = fn(&mut Neo4jIndex);
    let changes: [(&str, Change); 4] = [
        ("labels", |i| i.labels_or_types = vec!["Company".into()]),
        ("properties", |i| i.properties = vec!["mail".into()]),
        ("index type", |i| i.index_type = Some("TEXT".into())),
        ("entity type", |i| i.entity_type = "RELATIONSHIP".into()),
    ];
    for (what, change) in changes {
        let mut now = before.clone();
        change(&mut now);
        assert_ne!(now, before, "{what}");
        assert_eq!(
            recheck(&before, Some(&now), &s).as_deref(),
            Some("its definition changed (labels, properties or type)"),
            "{what}"
        );
    }
}

fn arb_index() -> impl Strategy<Value = (Neo4jIndex, f64)> {
    (
        0u8..6,
        prop_oneof!["ONLINE", "POPULATING", "FAILED", "FAILED"],
        prop::option::of(prop_oneof!["c1", "c2"]),
        prop::bool::weighted(0.85),
        0u32..2_000,
    )
        .prop_map(|(n, state, constraint, has_create, age)| {
            let name = format!("i{n}");
            let mut i = index(&name, &state, constraint.as_deref());
            if !has_create {
                i.create_statement = None;
            }
            (i, age as f64)
        })
}

proptest! {
    /// Whatever the snapshot: at most one index is rebuilt at a time (none
    /// while another is rebuilt or populating), only a FAILED one, FAILED
    /// for at least failed_for, never one backed by a constraint the
    /// settings do not name, never before 4.4; every FAILED index is
    /// eligible, held or refused, exactly once; and the chosen statements
    /// are its DROP and its own createStatement.
    #[test]
    fn selection_keeps_its_promises(
        entries in prop::collection::vec(arb_index(), 0..8),
        generation in prop_oneof![Just(Generation::Procedures), Just(Generation::Show44), Just(Generation::Show5)],
        failed_for in 1u64..1_500,
        named in prop::option::of(prop_oneof!["c1", "c2"]),
        include_constraints in any::<bool>(),
        rebuilding in prop::option::of(0u8..6),
    ) {
        // One row per name, as a server lists them.
        let mut seen = std::collections::BTreeSet::new();
        let entries: Vec<(Neo4jIndex, f64)> =
            entries.into_iter().filter(|(i, _)| seen.insert(i.name.clone())).collect();
        let now = 10_000.0;
        let s = snapshot(now, generation, entries.iter().map(|(i, _)| i.clone()).collect());
        let failed_since: BTreeMap<IndexKey, f64> = entries
            .iter()
            .filter(|(i, _)| is_failed(i))
            .map(|(i, age)| (key_of(i), now - age))
            .collect();
        let settings = IndexRebuildSettings {
            failed_for: Duration::from_secs(failed_for),
            include_constraints,
            constraints: named.clone().into_iter().collect(),
            ..IndexRebuildSettings::default()
        };
        let rebuilding = rebuilding.map(|n| ("neo4j".to_string(), format!("i{n}")));
        let r = select(&settings, &s, &failed_since, rebuilding.as_ref());

        let failed = s.indexes.iter().filter(|i| is_failed(i)).count();
        prop_assert_eq!(r.failed, failed);
        prop_assert_eq!(r.eligible.len() + r.held.len(), failed);
        let busy = rebuilding.is_some() || s.indexes.iter().any(|i| i.state == "POPULATING");
        if busy {
            prop_assert!(r.eligible.is_empty());
        }
        for c in &r.eligible {
            prop_assert!(is_failed(&c.index));
            prop_assert!(generation != Generation::Procedures);
            prop_assert!(Duration::from_millis(c.failed_for_ms) >= settings.failed_for);
            if let Some(owner) = &c.index.owning_constraint {
                prop_assert!(include_constraints || named.as_deref() == Some(owner.as_str()));
            }
            let st = c.statements.as_ref().unwrap();
            prop_assert_eq!(Some(&st.create), c.index.create_statement.as_ref());
            let expected_drop = match &c.index.owning_constraint {
                Some(owner) => format!("DROP CONSTRAINT {}", quote(owner)),
                None => format!("DROP INDEX {}", quote(&c.index.name)),
            };
            prop_assert_eq!(&st.drop, &expected_drop);
        }
        for w in r.eligible.windows(2) {
            prop_assert!(w[0].failed_for_ms >= w[1].failed_for_ms);
        }
        for (c, _) in &r.refused {
            prop_assert!(c.statements.is_none());
            prop_assert!(r.held.iter().any(|(i, h)| i.name == c.index.name && h.refuses()));
        }
        prop_assert_eq!(
            r.refused.len(),
            r.held.iter().filter(|(_, h)| h.refuses()).count()
        );
    }
}
