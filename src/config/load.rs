//! From text and environment to a [`Config`]: figment merges the file and
//! the `DBWARDEN_*` overrides; each section is read into its owner's serde
//! type; every mistake serde finds is recorded with its key path and the
//! offending key taken out, and the section read again, until it reads; then
//! each part validates its own settings.
//!
//! The file is parsed here, not by figment's `Toml` provider, for two
//! reasons: `toml`'s own syntax messages quote the offending line, which
//! may hold a password, and figment keeps tables sorted by key, which would
//! lose the order of the policies (the first policy to select a session
//! acts). The environment is read here too, from the variables handed in
//! (tests pass their own), as strings that figment's lossy extraction turns
//! into numbers and booleans where a number or a boolean is expected.

use std::collections::{BTreeMap, BTreeSet};

use figment::error::{Actual, Kind};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

use super::{Config, TargetConfig};
use crate::evaluate::{BackupThresholds, Neo4jThresholds, SessionCheck, Thresholds};
use crate::http::ServerSettings;
use crate::kubernetes::{EvictionPolicy, KubernetesSettings, LeaseSettings};
use crate::observe::backups::BackupLocation;
use crate::observe::neo4j::Neo4jTarget;
use crate::observe::{PostgresTarget, TargetSettings};
use crate::remediate::RemediationSettings;
use crate::remediate::policy::{Conditions, Policy};
use crate::remediate::settings::Budget;
use crate::secret::redact_url;
use crate::settings::{Context, Issue, Issues, Origin, field_names, join};
use crate::telemetry::logging::LogSettings;

/// The environment variable prefix; nested keys are separated by `__`,
/// e.g. `DBWARDEN_SERVER__LISTEN=0.0.0.0:9641`. Variables without `__` (such
/// as `DBWARDEN_CONFIG`, the config file's path) are not overrides.
pub const ENV_PREFIX: &str = "DBWARDEN_";
/// Separates nested keys in an override's name.
pub const ENV_SEPARATOR: &str = "__";

/// The file's sections, in the order issues are reported.
const SECTIONS: [&str; 9] = [
    "server",
    "log",
    "defaults",
    "thresholds",
    "postgres",
    "neo4j",
    "backups",
    "kubernetes",
    "remediation",
];

/// One layer of the configuration for figment: the file, or the environment.
struct Layer(&'static str, Dict);

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.0)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.1.clone()))
    }
}

#[derive(Default)]
struct Loader {
    ctx: Context,
    /// What serde refused, at the key paths of the file.
    parse: Issues,
    /// What the parts' validation found.
    issues: Issues,
    /// The key paths set by environment variables, and their variables.
    env_vars: BTreeMap<String, String>,
}

/// What the sections read into, before the parts validate them: the
/// configuration, and what only validation needs (`[defaults]` and
/// `[thresholds]` as read on their own).
struct Read {
    config: Config,
    defaults: TargetSettings,
    thresholds: (Thresholds, Neo4jThresholds),
}

pub(super) fn load(text: &str, env: Vec<(String, String)>) -> Result<Config, Vec<Issue>> {
    let table: toml::Table = toml::from_str(text).map_err(|e| vec![syntax_issue(text, &e)])?;
    let mut l = Loader::default();
    l.ctx.env = env;
    let root = l.merge(&table);
    let mut read = l.read_sections(root);
    order_policies(&mut read.config, &table);
    l.validate(&mut read);
    let issues = l.finish();
    if issues.is_empty() {
        Ok(read.config)
    } else {
        Err(issues)
    }
}

/// Keeps the policies in the file's order (the first to select a session
/// acts); policies only the environment adds come last, by name.
fn order_policies(config: &mut Config, table: &toml::Table) {
    let Some(r) = &mut config.remediation else {
        return;
    };
    let order = |section: &str| -> Vec<String> {
        table
            .get("remediation")
            .and_then(|r| r.get(section))
            .and_then(|p| p.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    let rank = |order: &[String], name: &str| {
        let at = order.iter().position(|n| n == name);
        (at.unwrap_or(usize::MAX), name.to_string())
    };
    let (pg, neo4j) = (order("policies"), order("neo4j_policies"));
    r.policies.sort_by_cached_key(|name, _| rank(&pg, name));
    r.neo4j_policies
        .sort_by_cached_key(|name, _| rank(&neo4j, name));
}

impl Loader {
    /// The file and the environment merged with figment (the environment
    /// wins), unknown sections reported.
    fn merge(&mut self, table: &toml::Table) -> Dict {
        let overrides = self.overrides();
        let file = match Value::serialize(table) {
            Ok(Value::Dict(_, d)) => d,
            _ => Dict::new(),
        };
        let merged =
            Figment::from(Layer("config file", file)).merge(Layer("environment", overrides));
        let root = merged
            .data()
            .ok()
            .and_then(|mut m| m.remove(&Profile::Default))
            .unwrap_or_default();
        for (key, v) in &root {
            if !SECTIONS.contains(&key.as_str()) {
                let is_table = matches!(v, Value::Dict(..));
                self.parse.push(key, unknown("", key, &SECTIONS, is_table));
            }
        }
        root
    }

    /// A section's table; anything else is reported.
    fn section(&mut self, root: &mut Dict, name: &str) -> Option<Dict> {
        match root.remove(name)? {
            Value::Dict(_, d) => Some(d),
            other => {
                let found = describe(&other);
                self.parse
                    .push(name, format!("expected a table, found {found}"));
                None
            }
        }
    }

    /// Every section read into its owner's type.
    fn read_sections(&mut self, mut root: Dict) -> Read {
        let mut section = |name| self.section(&mut root, name);
        let (server, log) = (section("server"), section("log"));
        let (defaults, thresholds) = (section("defaults"), section("thresholds"));
        let (postgres, neo4j) = (section("postgres"), section("neo4j"));
        let (kubernetes, remediation) = (section("kubernetes"), section("remediation"));
        let backups = section("backups").unwrap_or_default();
        let defaults = defaults.unwrap_or_default();
        let (postgres, neo4j) = (postgres.unwrap_or_default(), neo4j.unwrap_or_default());
        self.ctx.postgres = postgres.keys().cloned().collect();
        self.ctx.neo4j = neo4j.keys().cloned().collect();
        self.ctx.remediation = remediation.is_some();
        self.ctx.instance = remediation
            .as_ref()
            .and_then(|r| r.get("instance"))
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let (global_pg, global_neo4j) = self.global_thresholds(thresholds.unwrap_or_default());
        let mut pg_targets = Vec::new();
        for (name, t) in postgres {
            let path = join("postgres", &name);
            let (t, th) = self.target(&path, t, &defaults, &global_pg.0);
            let mut target: PostgresTarget = self.read(t, &path, true);
            target.name = name;
            let thresholds: Thresholds = self.thresholds(th, &path);
            pg_targets.push(TargetConfig { target, thresholds });
        }
        let mut neo4j_targets = Vec::new();
        for (name, t) in neo4j {
            let path = join("neo4j", &name);
            let (t, th) = self.target(&path, t, &defaults, &global_neo4j.0);
            let mut target: Neo4jTarget = self.read(t, &path, true);
            target.name = name;
            let thresholds: Neo4jThresholds = self.thresholds(th, &path);
            neo4j_targets.push(TargetConfig { target, thresholds });
        }
        let mut backup_locations = Vec::new();
        for (name, b) in backups {
            let path = join("backups", &name);
            let (b, th) = self.backup(&path, b);
            let mut target: BackupLocation = self.read(b, &path, false);
            target.name = name;
            let thresholds: BackupThresholds = self.thresholds(th, &path);
            backup_locations.push(TargetConfig { target, thresholds });
        }
        Read {
            config: Config {
                server: self.read(server.unwrap_or_default(), "server", false),
                log: self.read(log.unwrap_or_default(), "log", false),
                postgres: pg_targets,
                neo4j: neo4j_targets,
                backups: backup_locations,
                kubernetes: kubernetes.map(|k| self.read(k, "kubernetes", false)),
                remediation: remediation.map(|r| self.read(r, "remediation", false)),
            },
            defaults: self.read(defaults, "defaults", false),
            thresholds: (global_pg.1, global_neo4j.1),
        }
    }

    /// Each part validates its own settings; what spans parts is checked here.
    fn validate(&mut self, read: &mut Read) {
        let (ctx, issues) = (&self.ctx, &mut self.issues);
        let c = &mut read.config;
        c.server.validate(ctx, issues);
        c.log.validate(ctx, issues);
        read.defaults.validate("defaults", ctx, issues);
        read.thresholds.0.validate("thresholds", ctx, issues);
        read.thresholds.1.validate("thresholds", ctx, issues);
        if c.postgres.is_empty() && c.neo4j.is_empty() {
            issues.push(
                "postgres",
                "no targets configured: add a [postgres.<name>] table with a url (or a [neo4j.<name>] table with a uri)",
            );
        }
        for name in ctx.neo4j.iter().filter(|n| ctx.postgres.contains(n)) {
            issues.push(
                join("neo4j", name),
                format!(
                    "the name {name:?} is also a PostgreSQL target: target names must be unique"
                ),
            );
        }
        for t in &mut c.postgres {
            let path = join("postgres", &t.target.name);
            t.target.validate(&path, ctx, issues);
            t.thresholds
                .validate(&join(&path, "thresholds"), ctx, issues);
        }
        for t in &mut c.neo4j {
            let path = join("neo4j", &t.target.name);
            t.target.validate(&path, ctx, issues);
            t.thresholds
                .validate(&join(&path, "thresholds"), ctx, issues);
        }
        for b in &mut c.backups {
            let path = join("backups", &b.target.name);
            b.target.validate(&path, ctx, issues);
            b.thresholds
                .validate(&join(&path, "thresholds"), ctx, issues);
        }
        let pods: Vec<(&str, &str, &str)> = c
            .postgres
            .iter()
            .map(|t| ("postgres", &t.target.name, &t.target.pods))
            .chain(
                c.neo4j
                    .iter()
                    .map(|t| ("neo4j", &t.target.name, &t.target.pods)),
            )
            .filter_map(|(kind, name, pods)| Some((kind, name.as_str(), pods.as_deref()?)))
            .collect();
        match &mut c.kubernetes {
            Some(k) => k.validate(&pods, read.thresholds.0.disk_free.value, ctx, issues),
            None => {
                crate::kubernetes::settings::targets(&pods, false, issues);
            }
        }
        if let Some(r) = &mut c.remediation {
            let targets: Vec<&PostgresTarget> = c.postgres.iter().map(|t| &t.target).collect();
            let probe_checks = c
                .postgres
                .iter()
                .map(|t| (t.target.name.clone(), t.target.probe_check_names()))
                .chain(
                    c.neo4j
                        .iter()
                        .map(|t| (t.target.name.clone(), t.target.probe_check_names())),
                )
                .collect();
            r.validate(&targets, &probe_checks, ctx, issues);
        }
    }

    /// The `DBWARDEN_A__B=value` variables as a tree of strings (an array
    /// when the value is written as one, `["a", "b"]`). A malformed name is
    /// an issue.
    fn overrides(&mut self) -> Dict {
        let mut vars: Vec<(String, String)> = self
            .ctx
            .env
            .iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains(ENV_SEPARATOR))
            .cloned()
            .collect();
        vars.sort();
        let mut root = Dict::new();
        for (var, value) in vars {
            let name = var[ENV_PREFIX.len()..].to_ascii_lowercase();
            let parts: Vec<&str> = name.split(ENV_SEPARATOR).collect();
            if parts.iter().any(|p| p.is_empty()) {
                self.parse.push(
                    "",
                    format!(
                        "environment variable {var} does not name a key: separate nested keys with one \"__\", e.g. DBWARDEN_SERVER__LISTEN"
                    ),
                );
                continue;
            }
            let value = if value.trim_start().starts_with('[') {
                value.parse().unwrap_or_else(|_| Value::from(value.clone()))
            } else {
                Value::from(value.clone())
            };
            let mut table = &mut root;
            for part in &parts[..parts.len() - 1] {
                let entry = table
                    .entry(part.to_string())
                    .or_insert_with(|| Value::from(Dict::new()));
                if !matches!(entry, Value::Dict(..)) {
                    *entry = Value::from(Dict::new());
                }
                let Value::Dict(_, inner) = entry else {
                    unreachable!("just made a table")
                };
                table = inner;
            }
            table.insert(parts[parts.len() - 1].to_string(), value);
            let path = parts.iter().fold(String::new(), |p, k| join(&p, k));
            self.env_vars.insert(path, var);
        }
        root
    }

    /// `[thresholds]`: its PostgreSQL and its Neo4j checks, each over the
    /// runbook's defaults (what targets inherit is the part as written).
    fn global_thresholds(&mut self, t: Dict) -> ((Dict, Thresholds), (Dict, Neo4jThresholds)) {
        let pg_checks = field_names::<Thresholds>();
        let neo4j_checks = field_names::<Neo4jThresholds>();
        let (mut pg, mut neo4j) = (Dict::new(), Dict::new());
        let all: Vec<&str> = pg_checks.iter().chain(neo4j_checks).copied().collect();
        for (k, v) in t {
            if pg_checks.contains(&k.as_str()) {
                pg.insert(k, v);
            } else if neo4j_checks.contains(&k.as_str()) {
                neo4j.insert(k, v);
            } else {
                let is_table = matches!(v, Value::Dict(..));
                self.parse.push(
                    join("thresholds", &k),
                    unknown("thresholds", &k, &all, is_table),
                );
            }
        }
        let mut read = |written: &Dict, base: Dict| -> Dict {
            let mut full = written.clone();
            self.inherit(&mut full, &base, "thresholds", None);
            full
        };
        let (pg_base, neo4j_base) = (
            defaults_of::<Thresholds>(),
            defaults_of::<Neo4jThresholds>(),
        );
        let pg_full = read(&pg, pg_base.clone());
        let neo4j_full = read(&neo4j, neo4j_base.clone());
        let pg_read = self
            .read_over(pg_full, &pg_base, "thresholds", false)
            .unwrap_or_default();
        let neo4j_read = self
            .read_over(neo4j_full, &neo4j_base, "thresholds", false)
            .unwrap_or_default();
        ((pg, pg_read), (neo4j, neo4j_read))
    }

    /// A target's table as its types read it: its settings nested under
    /// `settings`, over `[defaults]`; and apart, its thresholds over the
    /// global ones as written. Where each inherited value came from is
    /// remembered for messages.
    fn target(&mut self, path: &str, t: Value, defaults: &Dict, global: &Dict) -> (Dict, Dict) {
        let path = path.to_string();
        let mut t = match t {
            Value::Dict(_, d) => d,
            other => {
                // Reported, and read as an empty table so that the target exists.
                self.parse.push(
                    &path,
                    format!("expected a table, found {}", describe(&other)),
                );
                self.ctx.rejected.insert(path.clone());
                Dict::new()
            }
        };
        let setting_keys = field_names::<TargetSettings>();
        let mut settings = Dict::new();
        for k in setting_keys {
            if let Some(v) = t.remove(*k) {
                settings.insert(k.to_string(), v);
            }
        }
        for (k, v) in defaults {
            if setting_keys.contains(&k.as_str()) && !settings.contains_key(k) {
                settings.insert(k.clone(), v.clone());
                self.ctx
                    .origins
                    .insert(join(&path, k), Origin::Inherited(join("defaults", k)));
            }
        }
        t.insert("settings".into(), Value::from(settings));
        let th_path = join(&path, "thresholds");
        let mut th = match t.remove("thresholds") {
            Some(Value::Dict(_, d)) => d,
            Some(other) => {
                self.parse.push(
                    &th_path,
                    format!("expected a table, found {}", describe(&other)),
                );
                Dict::new()
            }
            None => Dict::new(),
        };
        self.inherit(&mut th, global, &th_path, Some("thresholds"));
        (t, th)
    }

    /// A `[backups.<name>]` table, and apart its `thresholds` table.
    fn backup(&mut self, path: &str, b: Value) -> (Dict, Dict) {
        let mut b = match b {
            Value::Dict(_, d) => d,
            other => {
                self.parse.push(
                    path,
                    format!("expected a table, found {}", describe(&other)),
                );
                self.ctx.rejected.insert(path.to_string());
                Dict::new()
            }
        };
        let th = match b.remove("thresholds") {
            Some(Value::Dict(_, d)) => d,
            Some(other) => {
                self.parse.push(
                    join(path, "thresholds"),
                    format!("expected a table, found {}", describe(&other)),
                );
                Dict::new()
            }
            None => Dict::new(),
        };
        (b, th)
    }

    /// A target's thresholds over the runbook's defaults, on which a
    /// refused value also falls back (they are always valid).
    fn thresholds<Th>(&mut self, mut th: Dict, target: &str) -> Th
    where
        Th: DeserializeOwned + Default + serde::Serialize,
    {
        let path = join(target, "thresholds");
        let base = defaults_of::<Th>();
        self.inherit(&mut th, &base, &path, None);
        self.read_over(th, &base, &path, false).unwrap_or_default()
    }

    /// Copies into `dst` (at `path`) what it lacks of `src`, table by table,
    /// recording each copied value as inherited from `from` (or as a default).
    fn inherit(&mut self, dst: &mut Dict, src: &Dict, path: &str, from: Option<&str>) {
        for (k, v) in src {
            let at = join(path, k);
            let origin = from.map(|f| join(f, k));
            match (dst.get_mut(k), v) {
                (Some(Value::Dict(_, d)), Value::Dict(_, s)) => {
                    self.inherit(d, s, &at, origin.as_deref());
                }
                (Some(_), _) => {}
                (None, _) => {
                    dst.insert(k.clone(), v.clone());
                    self.mark(&at, v, origin.as_deref());
                }
            }
        }
    }

    /// Records where the values under `at` came from.
    fn mark(&mut self, at: &str, v: &Value, from: Option<&str>) {
        match v {
            Value::Dict(_, d) => {
                for (k, v) in d {
                    self.mark(&join(at, k), v, from.map(|f| join(f, k)).as_deref());
                }
            }
            _ => {
                let origin = match from {
                    Some(f) => Origin::Inherited(f.to_string()),
                    None => Origin::Default,
                };
                self.ctx.origins.entry(at.to_string()).or_insert(origin);
            }
        }
    }

    /// Reads `dict` (the table at `path`) into `T`, recording every mistake
    /// serde finds and reading again without the offending key, so that all
    /// of them are reported. `target`: the table is a target's, whose
    /// `settings` are inline in the file.
    fn read<T: DeserializeOwned + Default>(&mut self, dict: Dict, path: &str, target: bool) -> T {
        self.read_over(dict, &Dict::new(), path, target)
            .unwrap_or_default()
    }

    /// Like `read`; a refused value is replaced by what `fallback` has at
    /// its key (what the table inherits), else taken out.
    fn read_over<T: DeserializeOwned>(
        &mut self,
        mut dict: Dict,
        fallback: &Dict,
        path: &str,
        target: bool,
    ) -> Option<T> {
        let file_path = |segs: &[String]| -> String {
            segs.iter()
                .enumerate()
                .filter(|(i, s)| !(target && *i == 0 && *s == "settings"))
                .fold(path.to_string(), |p, (_, s)| join(&p, s))
        };
        // Each round takes out or replaces a refused value: the loop ends.
        loop {
            let error = match Figment::from(Layer("configuration", dict.clone())).extract::<T>() {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let mut segs = error.path.clone();
            if let Kind::MissingField(f) = &error.kind {
                let here = file_path(&segs);
                self.ctx.rejected.insert(here.clone());
                // A table a target inherited is reported where it was written.
                let at = self.inherited_table(&here).unwrap_or(here);
                self.parse.push(
                    join(&at, f),
                    format!("missing: `{f}` is required in [{at}]"),
                );
                self.ctx.rejected.insert(at);
                if !remove(&mut dict, &segs) {
                    return None;
                }
                continue;
            }
            // An element of an array: the array is the key that was written.
            while segs.len() > 1 && segs.last().is_some_and(|s| s.parse::<usize>().is_ok()) {
                let parent = &segs[..segs.len() - 1];
                if matches!(lookup(&dict, parent), Some(Value::Array(..))) {
                    segs.pop();
                } else {
                    break;
                }
            }
            // A value the table inherited is reported where it was written.
            let at = match self.ctx.origins.get(&file_path(&segs)) {
                Some(Origin::Inherited(from)) => from.clone(),
                _ => file_path(&segs),
            };
            // The environment's values arrive as text: read as the type expects.
            if self.env_vars.contains_key(&at)
                && let Kind::InvalidType(Actual::Str(text), expected) = &error.kind
                && let Some(v) = lookup_mut(&mut dict, &segs)
            {
                let typed: Value = text.parse().unwrap_or_else(|_| v.clone());
                if expected == "a sequence" && !matches!(typed, Value::Array(..)) {
                    *v = Value::from(vec![v.clone()]);
                    continue;
                }
                if !matches!(typed, Value::String(..)) {
                    *v = typed;
                    continue;
                }
            }
            let message = match &error.kind {
                Kind::UnknownField(key, expected) => {
                    let table = file_path(&segs[..segs.len().saturating_sub(1)]);
                    let is_table = matches!(lookup(&dict, &segs), Some(Value::Dict(..)));
                    let mut known: Vec<&str> = expected.to_vec();
                    // The target's own table also takes its settings'
                    // keys (nested as `settings` in the type); its sub-tables do not.
                    if target && segs.len() == 1 {
                        known.retain(|k| *k != "settings");
                        known.extend(field_names::<TargetSettings>());
                    }
                    unknown(&table, key, &known, is_table)
                }
                kind => message(kind),
            };
            self.parse.push(&at, message);
            self.ctx.rejected.insert(at);
            let replaced = match (lookup(fallback, &segs), lookup_mut(&mut dict, &segs)) {
                (Some(f), Some(v)) if !matches!(error.kind, Kind::UnknownField(..)) && f != v => {
                    *v = f.clone();
                    true
                }
                _ => false,
            };
            if !replaced && (segs.is_empty() || !remove(&mut dict, &segs)) {
                return None;
            }
        }
    }

    /// Where the table at `path` was written, when a target inherited it
    /// (each of its values records where it came from).
    fn inherited_table(&self, path: &str) -> Option<String> {
        let prefix = format!("{path}.");
        self.ctx.origins.iter().find_map(|(key, origin)| {
            let rest = key.strip_prefix(&prefix)?;
            match origin {
                Origin::Inherited(from) => from
                    .strip_suffix(rest)
                    .and_then(|t| t.strip_suffix('.'))
                    .map(str::to_string),
                Origin::Default => None,
            }
        })
    }

    /// Every issue once, validation's minus those about keys serde already
    /// refused, in the order of the file's sections, each naming the
    /// environment variable that set its key, if one did.
    fn finish(self) -> Vec<Issue> {
        let rejected = &self.ctx.rejected;
        let refused = |p: &str| {
            rejected
                .iter()
                .any(|r| p == r || p.starts_with(&format!("{r}.")))
        };
        let mut issues = self.parse.0;
        issues.extend(self.issues.0.into_iter().filter(|i| !refused(&i.path)));
        let mut seen = BTreeSet::new();
        issues.retain(|i| seen.insert((i.path.clone(), i.message.clone())));
        issues.sort_by_cached_key(|i| {
            let section = i.path.split('.').next().unwrap_or_default();
            let rank = match i.path.as_str() {
                "" => 0,
                _ => {
                    1 + SECTIONS
                        .iter()
                        .position(|k| *k == section)
                        .unwrap_or(SECTIONS.len())
                }
            };
            (rank, i.path.clone())
        });
        for issue in &mut issues {
            let set_by = self
                .env_vars
                .iter()
                .find(|(p, _)| issue.path == **p || issue.path.starts_with(&format!("{p}.")));
            if let Some((_, var)) = set_by {
                issue
                    .message
                    .push_str(&format!(" (set by environment variable {var})"));
            }
        }
        issues
    }
}

/// A type's defaults as a table of values, to read partial tables over.
fn defaults_of<T: Default + serde::Serialize>() -> Dict {
    match Value::serialize(T::default()) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    }
}

fn lookup<'a>(dict: &'a Dict, segs: &[String]) -> Option<&'a Value> {
    let (first, rest) = segs.split_first()?;
    let v = dict.get(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Value::Dict(_, d) => lookup(d, rest),
        _ => None,
    }
}

fn lookup_mut<'a>(dict: &'a mut Dict, segs: &[String]) -> Option<&'a mut Value> {
    let (first, rest) = segs.split_first()?;
    let v = dict.get_mut(first)?;
    if rest.is_empty() {
        return Some(v);
    }
    match v {
        Value::Dict(_, d) => lookup_mut(d, rest),
        _ => None,
    }
}

/// Removes the key at `segs`; false when there is none.
fn remove(dict: &mut Dict, segs: &[String]) -> bool {
    match segs {
        [] => false,
        [key] => dict.remove(key).is_some(),
        [first, rest @ ..] => match dict.get_mut(first) {
            Some(Value::Dict(_, d)) => remove(d, rest),
            _ => false,
        },
    }
}

/// Serde's complaint in the configuration's words.
fn message(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.clone(),
        Kind::InvalidType(actual, expected) => {
            format!(
                "expected {}, found {}",
                expected_text(expected),
                actual_text(actual)
            )
        }
        Kind::InvalidValue(actual, expected) => format!(
            "invalid value {}: expected {}",
            actual_text(actual),
            expected_text(expected)
        ),
        Kind::InvalidLength(n, expected) => format!("{n} elements: expected {expected}"),
        Kind::UnknownVariant(v, expected) => format!(
            "invalid value {:?}: expected {}",
            redact_url(v),
            one_of(expected)
        ),
        Kind::UnknownField(f, expected) => unknown("", f, expected, false),
        Kind::MissingField(f) => format!("missing: `{f}` is required"),
        Kind::DuplicateField(f) => format!("`{f}` is written twice"),
        Kind::ISizeOutOfRange(n) => format!("{n} is out of range"),
        Kind::USizeOutOfRange(n) => format!("{n} is out of range"),
        Kind::Unsupported(actual) => format!("unsupported value {}", actual_text(actual)),
        Kind::UnsupportedKey(actual, _) => format!("unsupported key {}", actual_text(actual)),
    }
}

/// What serde calls a type, as the configuration would.
fn expected_text(expected: &str) -> String {
    match expected {
        "a string" => "a string".into(),
        "a boolean" => "true or false".into(),
        "a sequence" => "an array of strings, e.g. [\"a\", \"b\"]".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        e if e.starts_with("struct ") || e.starts_with("a map") || e == "map" => "a table".into(),
        e => e.to_string(),
    }
}

/// A value serde saw, quoted as written (URLs redacted).
fn actual_text(actual: &Actual) -> String {
    match actual {
        Actual::Bool(b) => b.to_string(),
        Actual::Unsigned(n) => n.to_string(),
        Actual::Signed(n) => n.to_string(),
        Actual::Float(f) => f.to_string(),
        Actual::Char(c) => format!("{c:?}"),
        Actual::Str(s) => format!("{:?}", redact_url(s)),
        Actual::Seq => "an array".into(),
        Actual::Map => "a table".into(),
        Actual::Unit | Actual::Option => "nothing".into(),
        other => other.to_string(),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(_, s) => format!("{:?}", redact_url(s)),
        Value::Char(_, c) => format!("{c:?}"),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => match n.to_f64() {
            Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
            Some(f) => f.to_string(),
            None => "a number".into(),
        },
        Value::Empty(..) => "nothing".into(),
        Value::Dict(..) => "a table".into(),
        Value::Array(..) => "an array".into(),
    }
}

fn one_of(expected: &[&str]) -> String {
    let quoted: Vec<String> = expected.iter().map(|e| format!("{e:?}")).collect();
    match quoted.as_slice() {
        [] => "nothing".into(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// An unknown key at `table`: the home it belongs in when it is a known
/// key written in the wrong table, else the closest known key.
fn unknown(table: &str, key: &str, known: &[&str], is_table: bool) -> String {
    let segs: Vec<&str> = table.split('.').collect();
    let other_kind = match segs.as_slice() {
        ["neo4j", _, "thresholds"] if field_names::<Thresholds>().contains(&key) => {
            Some("PostgreSQL")
        }
        ["postgres", _, "thresholds"] if field_names::<Neo4jThresholds>().contains(&key) => {
            Some("Neo4j")
        }
        _ => None,
    };
    if let Some(kind) = other_kind {
        return format!("is a check of {kind} targets: it does not apply here");
    }
    // A session list or exceptions on a check that is not over sessions.
    let session_check = field_names::<SessionCheck>().contains(&key)
        && (key == "exceptions" || key.starts_with("match_") || key.starts_with("ignore_"));
    match segs.as_slice() {
        [.., "thresholds", check] if session_check => {
            return format!(
                "unknown key `{key}`: only the checks over sessions (long_running_query, idle_session, idle_in_transaction) take session lists and exceptions, not {check}"
            );
        }
        [.., "thresholds", _, "exceptions", _] if key == "for" => {
            return "unknown key `for`: an exception has no `for` of its own; the check's `for` applies to every session it judges".to_string();
        }
        _ => {}
    }
    let hint = if table == "remediation" && matches!(key, "api_token" | "token") {
        "the token is never written in the file: name the file holding it (api_token_file) or the environment variable (api_token_env)".to_string()
    } else if let Some(home) = misplaced(table, key) {
        format!("it belongs in {home}")
    } else if let Some(k) = closest(key, known) {
        format!("did you mean `{k}`?")
    } else {
        format!("expected one of: {}", known.join(", "))
    };
    let what = if is_table {
        "unknown table"
    } else {
        "unknown key"
    };
    format!("{what} `{key}`: {hint}")
}

/// Where a known key written in the wrong table belongs, e.g. `listen` at
/// the top level belongs in `[server]`.
fn misplaced(table: &str, key: &str) -> Option<String> {
    let is = |fields: &[&str]| fields.contains(&key);
    let check = field_names::<Thresholds>()
        .iter()
        .chain(field_names::<Neo4jThresholds>())
        .any(|c| *c == key);
    let target_keys = || {
        field_names::<PostgresTarget>()
            .iter()
            .chain(field_names::<Neo4jTarget>())
            .any(|k| *k == key && !matches!(key, "settings" | "thresholds"))
    };
    let segs: Vec<&str> = table.split('.').collect();
    let home = match segs.as_slice() {
        ["remediation", "policies", name] if is(field_names::<Conditions>()) => {
            format!("[remediation.policies.{name}.when]")
        }
        ["remediation", "policies", name, "when"] if is(field_names::<Policy>()) => {
            format!("[remediation.policies.{name}]")
        }
        [kind @ ("postgres" | "neo4j"), name] if check => {
            format!("[{kind}.{name}.thresholds.{key}]")
        }
        ["" | "kubernetes"] if key == "pods" => {
            "a [postgres.<name>] or [neo4j.<name>] table".into()
        }
        ["" | "kubernetes"] if is(field_names::<EvictionPolicy>()) => {
            "[kubernetes.eviction]".into()
        }
        ["" | "kubernetes"] if is(field_names::<LeaseSettings>()) => "[kubernetes.lease]".into(),
        ["remediation"] if key == "eviction" => "[kubernetes.eviction]".into(),
        ["" | "remediation"] if is(field_names::<Budget>()) => "[remediation.budget]".into(),
        ["" | "remediation"] if is(field_names::<Policy>()) => {
            "a [remediation.policies.<name>] table".into()
        }
        ["" | "remediation"] if is(field_names::<Conditions>()) => {
            "a [remediation.policies.<name>.when] table".into()
        }
        ["" | "defaults"] if check => format!("[thresholds.{key}]"),
        ["" | "defaults"] if target_keys() => "a [postgres.<name>] table".into(),
        [""] if is(field_names::<ServerSettings>()) => "[server]".into(),
        [""] if is(field_names::<LogSettings>()) => "[log]".into(),
        [""] if is(field_names::<TargetSettings>()) => {
            "[defaults] or a [postgres.<name>] table".into()
        }
        [""] if is(field_names::<RemediationSettings>()) => "[remediation]".into(),
        [""] if is(field_names::<KubernetesSettings>()) => "[kubernetes]".into(),
        _ => return None,
    };
    Some(home)
}

fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A TOML syntax error, located by line and column. toml's own message
/// quotes the offending line, which may hold a password: we do not.
fn syntax_issue(text: &str, e: &toml::de::Error) -> Issue {
    let at = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .unwrap_or_default()
                .chars()
                .count()
                + 1;
            format!(" at line {line}, column {column}")
        }
        None => String::new(),
    };
    let message = e.message().trim().replace('\n', "; ");
    Issue {
        path: String::new(),
        message: format!("TOML syntax error{at}: {}", redact_url(&message)),
    }
}
