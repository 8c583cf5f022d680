//! Which FAILED Neo4j index to rebuild, and with which statements. Pure,
//! like [`super::neo4j_policy`]: a snapshot, the settings and what the loop
//! remembers (since when each index is FAILED, which one is being rebuilt)
//! in; a decision out.
//!
//! An index is rebuilt (dropped, then created again from the
//! `createStatement` the server reports) only when all of these hold:
//! it is FAILED and has been for at least `failed_for` (counted from the
//! first poll that saw it FAILED); the server reports how to create it
//! again (4.4 and later; before 4.4 `db.indexes()` does not, and the
//! rebuild is refused with that reason); it is not backed by a constraint,
//! unless the settings name that constraint (or include every one); and no
//! other index of the target is being rebuilt or populating. Then the one
//! that has been FAILED longest is chosen: one index per target at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observe::neo4j::{Generation, Neo4jIndex, Neo4jSnapshot};
use crate::settings::{Context, Issues, duration, join};

/// The name the rebuild goes by where a policy's name would be: metric
/// labels (`policy`), audit records, log lines.
pub const POLICY: &str = "neo4j_index_rebuild";

/// The default of `failed_for`.
pub const DEFAULT_FAILED_FOR: Duration = Duration::from_secs(600);

/// `[remediation.neo4j_index_rebuild]`: present, the rebuild is on for its
/// targets (under `[remediation] mode`, like every action).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexRebuildSettings {
    /// The Neo4j targets it applies to; `None` means every Neo4j target.
    pub targets: Option<Vec<String>>,
    /// How long an index must have been FAILED before it is rebuilt.
    #[serde(with = "duration")]
    pub failed_for: Duration,
    /// Also rebuild every constraint-backed index (DROP CONSTRAINT, then the
    /// constraint's CREATE): the constraint is not enforced in between.
    pub include_constraints: bool,
    /// The constraints whose FAILED index may be rebuilt, by name (the
    /// `owningConstraint` of `SHOW INDEXES`; on 4.4 the index's name).
    pub constraints: Vec<String>,
}

impl Default for IndexRebuildSettings {
    fn default() -> Self {
        IndexRebuildSettings {
            targets: None,
            failed_for: DEFAULT_FAILED_FOR,
            include_constraints: false,
            constraints: Vec::new(),
        }
    }
}

impl IndexRebuildSettings {
    pub fn applies_to(&self, target: &str) -> bool {
        self.targets
            .as_ref()
            .is_none_or(|ts| ts.iter().any(|t| t == target))
    }

    /// Whether the settings allow rebuilding the index of this constraint.
    pub fn names_constraint(&self, constraint: &str) -> bool {
        self.include_constraints || self.constraints.iter().any(|c| c == constraint)
    }

    /// `path` is `remediation.neo4j_index_rebuild`.
    pub fn validate(&self, path: &str, ctx: &Context, issues: &mut Issues) {
        let key = |k: &str| join(path, k);
        match &self.targets {
            Some(ts) if ts.is_empty() => issues.push(
                key("targets"),
                "empty: name the Neo4j targets, or leave targets out to rebuild on every Neo4j target",
            ),
            Some(ts) => {
                for t in ts {
                    if ctx.postgres.contains(t) {
                        issues.push(
                            key("targets"),
                            format!("{t:?} is a PostgreSQL target: the index rebuild acts on Neo4j targets"),
                        );
                    } else if !ctx.neo4j.contains(t) {
                        let known: Vec<String> =
                            ctx.neo4j.iter().map(|k| format!("{k:?}")).collect();
                        issues.push(
                            key("targets"),
                            format!(
                                "{t:?} is not a configured Neo4j target: configured are {}",
                                if known.is_empty() {
                                    "none".to_string()
                                } else {
                                    known.join(", ")
                                }
                            ),
                        );
                    }
                }
            }
            None => {}
        }
        if self.failed_for.is_zero() {
            issues.push(
                key("failed_for"),
                "\"0s\" would rebuild an index the moment it is seen FAILED: use a positive duration, e.g. \"10m\"",
            );
        }
        if self.include_constraints && !self.constraints.is_empty() {
            issues.push(
                key("constraints"),
                format!(
                    "{} named while include_constraints = true already includes every constraint-backed index: keep one of the two",
                    self.constraints.len()
                ),
            );
        }
        for c in &self.constraints {
            if c.trim().is_empty() {
                issues.push(
                    key("constraints"),
                    "an empty name: name each constraint as SHOW CONSTRAINTS lists it",
                );
            }
        }
    }
}

/// Why a FAILED index is left alone in this cycle (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Held {
    /// FAILED for less than `failed_for`.
    TooRecent,
    /// Backed by a constraint the settings do not name.
    Constraint,
    /// The server is older than 4.4: it does not report how to create the index again.
    UnsupportedVersion,
    /// The server reports no usable `createStatement` for it.
    NoDefinition,
    /// Another index of the target is being rebuilt or is populating.
    OneAtATime,
}

impl Held {
    pub const ALL: [Held; 5] = [
        Held::TooRecent,
        Held::Constraint,
        Held::UnsupportedVersion,
        Held::NoDefinition,
        Held::OneAtATime,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Held::TooRecent => "too_recent",
            Held::Constraint => "constraint",
            Held::UnsupportedVersion => "unsupported_version",
            Held::NoDefinition => "no_definition",
            Held::OneAtATime => "one_at_a_time",
        }
    }

    /// Refused outright (audited once, counted as `refused`), rather than
    /// waited on.
    pub fn refuses(self) -> bool {
        matches!(self, Held::UnsupportedVersion | Held::NoDefinition)
    }
}

/// The exact statements of one rebuild, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statements {
    /// `DROP INDEX `name`` or, for a named constraint, `DROP CONSTRAINT `name``.
    pub drop: String,
    /// The server's `createStatement`, verbatim.
    pub create: String,
}

/// A FAILED index and the sentence that explains the decision about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexCandidate {
    pub index: Neo4jIndex,
    /// How long it has been seen FAILED, in ms.
    pub failed_for_ms: u64,
    /// `None` only for a refused index (no definition to create it from).
    pub statements: Option<Statements>,
    pub reason: String,
}

/// What one cycle decided.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct IndexSelection {
    /// FAILED indexes of the target.
    pub failed: usize,
    /// Those that qualify now, longest FAILED first; the loop acts on the first.
    pub eligible: Vec<IndexCandidate>,
    /// Refused, with the sentence why (never acted on).
    pub refused: Vec<(IndexCandidate, String)>,
    /// Left alone for now, and why.
    pub held: Vec<(Neo4jIndex, Held)>,
}

impl IndexSelection {
    /// How many FAILED indexes are held (or refused) for each reason, every
    /// reason present (0 when none).
    pub fn held_counts(&self) -> BTreeMap<Held, usize> {
        let mut counts: BTreeMap<Held, usize> = Held::ALL.iter().map(|h| (*h, 0)).collect();
        for (_, h) in &self.held {
            *counts.entry(*h).or_default() += 1;
        }
        counts
    }
}

/// The key an index is remembered by: its database and name.
pub type IndexKey = (String, String);

pub fn key_of(i: &Neo4jIndex) -> IndexKey {
    (i.database.clone(), i.name.clone())
}

pub fn is_failed(i: &Neo4jIndex) -> bool {
    i.state.eq_ignore_ascii_case("FAILED")
}

/// A name quoted for Cypher: in backticks, a backtick doubled.
pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The statements that rebuild `i`, or why there are none: the DROP of the
/// index (or of its constraint) and the server's CREATE, which must create
/// the same kind of thing (an index for an index, a constraint for a
/// constraint-backed one).
pub fn statements(i: &Neo4jIndex) -> Result<Statements, String> {
    let Some(create) = i.create_statement.as_deref().map(str::trim) else {
        return Err("the server reported no createStatement for it".into());
    };
    let upper = create.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    let creates_constraint = words.first() == Some(&"CREATE") && words.contains(&"CONSTRAINT");
    let creates_index = words.first() == Some(&"CREATE") && words.contains(&"INDEX");
    match &i.owning_constraint {
        Some(c) if creates_constraint => Ok(Statements {
            drop: format!("DROP CONSTRAINT {}", quote(c)),
            create: create.to_string(),
        }),
        None if creates_index && !creates_constraint => Ok(Statements {
            drop: format!("DROP INDEX {}", quote(&i.name)),
            create: create.to_string(),
        }),
        _ => Err(format!(
            "its createStatement does not create {} (it reads {create:?})",
            if i.owning_constraint.is_some() {
                "its constraint"
            } else {
                "an index"
            }
        )),
    }
}

/// The FAILED indexes' first sighting, carried over from the previous
/// cycle: an index seen FAILED keeps its time (a new one gets the
/// snapshot's), one seen in any other state (or gone) is forgotten, and so
/// is the one `skip` names (being rebuilt: its clock starts again when it
/// is seen FAILED after the rebuild).
pub fn track(
    before: &BTreeMap<IndexKey, f64>,
    snapshot: &Neo4jSnapshot,
    skip: Option<&IndexKey>,
) -> BTreeMap<IndexKey, f64> {
    snapshot
        .indexes
        .iter()
        .filter(|i| is_failed(i))
        .map(key_of)
        .filter(|k| Some(k) != skip)
        .map(|k| {
            let since = before.get(&k).copied().unwrap_or(snapshot.observed_at);
            (k, since)
        })
        .collect()
}

/// Where a rebuilt index stands in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    /// The snapshot was taken before the rebuild: it says nothing yet.
    Stale,
    Online,
    Populating(f64),
    /// FAILED again after the rebuild.
    Failed,
    /// Not listed: dropped, and not created again (yet).
    Missing,
}

/// Where the index `key`, rebuilt at `started_at` (seconds since the
/// epoch, the snapshot's clock), stands in `snapshot`.
pub fn progress(key: &IndexKey, started_at: f64, snapshot: &Neo4jSnapshot) -> Progress {
    if snapshot.observed_at < started_at {
        return Progress::Stale;
    }
    match snapshot.indexes.iter().find(|i| &key_of(i) == key) {
        None => Progress::Missing,
        Some(i) if i.state.eq_ignore_ascii_case("ONLINE") => Progress::Online,
        Some(i) if is_failed(i) => Progress::Failed,
        Some(i) => Progress::Populating(i.population_percent),
    }
}

/// The decision of one cycle. `failed_since` is [`track`]'s result for
/// this snapshot; `rebuilding` the index being rebuilt, if any.
pub fn select(
    settings: &IndexRebuildSettings,
    snapshot: &Neo4jSnapshot,
    failed_since: &BTreeMap<IndexKey, f64>,
    rebuilding: Option<&IndexKey>,
) -> IndexSelection {
    let mut out = IndexSelection::default();
    // One population at a time: ours, or one the server runs anyway.
    let busy = rebuilding.is_some()
        || snapshot
            .indexes
            .iter()
            .any(|i| i.state.eq_ignore_ascii_case("POPULATING"));
    for i in snapshot.indexes.iter().filter(|i| is_failed(i)) {
        out.failed += 1;
        let k = key_of(i);
        let since = failed_since
            .get(&k)
            .copied()
            .unwrap_or(snapshot.observed_at);
        let failed_for_ms = ((snapshot.observed_at - since).max(0.0) * 1000.0) as u64;
        if Duration::from_millis(failed_for_ms) < settings.failed_for || Some(&k) == rebuilding {
            out.held.push((i.clone(), Held::TooRecent));
            continue;
        }
        let reason = format!(
            "FAILED for {} (>= {}){}",
            humantime::format_duration(Duration::from_secs(failed_for_ms / 1000)),
            humantime::format_duration(settings.failed_for),
            i.failure_message
                .as_deref()
                .and_then(|m| m.lines().next())
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        );
        let candidate = |statements| IndexCandidate {
            index: i.clone(),
            failed_for_ms,
            statements,
            reason: reason.clone(),
        };
        if let Some(c) = &i.owning_constraint
            && !settings.names_constraint(c)
        {
            out.held.push((i.clone(), Held::Constraint));
            continue;
        }
        if snapshot.generation == Generation::Procedures {
            out.held.push((i.clone(), Held::UnsupportedVersion));
            out.refused.push((
                candidate(None),
                format!(
                    "refused: Neo4j {} is older than 4.4, and db.indexes() does not report the statement that creates the index, so dbwarden cannot create it again; rebuild it by hand (DROP INDEX, then CREATE INDEX with the same definition)",
                    snapshot.version
                ),
            ));
            continue;
        }
        let statements = match statements(i) {
            Ok(s) => s,
            Err(why) => {
                out.held.push((i.clone(), Held::NoDefinition));
                out.refused.push((
                    candidate(None),
                    format!("refused: {why}; rebuild it by hand"),
                ));
                continue;
            }
        };
        if busy {
            out.held.push((i.clone(), Held::OneAtATime));
            continue;
        }
        out.eligible.push(candidate(Some(statements)));
    }
    // Longest FAILED first; the key breaks ties so the order is total.
    out.eligible.sort_by(|a, b| {
        b.failed_for_ms
            .cmp(&a.failed_for_ms)
            .then_with(|| key_of(&a.index).cmp(&key_of(&b.index)))
    });
    out
}

/// Why the index as re-read right before the DROP no longer qualifies, if
/// it does not: gone, no longer FAILED, a different definition, or now
/// backed by a constraint the settings do not name.
pub fn recheck(
    before: &Neo4jIndex,
    now: Option<&Neo4jIndex>,
    settings: &IndexRebuildSettings,
) -> Option<String> {
    let Some(now) = now else {
        return Some("the index is gone".into());
    };
    if !is_failed(now) {
        return Some(format!("it is {} now", now.state));
    }
    if now.create_statement != before.create_statement {
        return Some(format!(
            "its definition changed (createStatement {:?}, was {:?})",
            now.create_statement.as_deref().unwrap_or(""),
            before.create_statement.as_deref().unwrap_or("")
        ));
    }
    if now.labels_or_types != before.labels_or_types
        || now.properties != before.properties
        || now.index_type != before.index_type
        || now.entity_type != before.entity_type
    {
        return Some("its definition changed (labels, properties or type)".into());
    }
    if now.owning_constraint != before.owning_constraint {
        return match &now.owning_constraint {
            Some(c) if !settings.names_constraint(c) => Some(format!(
                "it is now backed by constraint {c:?}, which the settings do not name"
            )),
            _ => Some("its owning constraint changed".into()),
        };
    }
    None
}

#[cfg(test)]
#[path = "neo4j_index_policy_tests.rs"]
mod tests;
