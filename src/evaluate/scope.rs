//! Which sessions a list of names, networks and query patterns keeps: the
//! one matcher that both remediation policies (`[remediation.policies.<name>.when]`)
//! and the session checks (`[thresholds.<check>]` and their exceptions)
//! use, so that the same lists mean the same sessions in both. Pure.
//!
//! The keys are declared once, by [`with_scope!`]: a settings type that
//! takes them gets every one, with the same types, messages and printing,
//! and its `scope()` view for [`Scope::excludes`].
//!
//! Semantics: each `match_*` list that is set must name the session, and no
//! `ignore_*` list may: an ignore always wins over a match. Users and
//! databases are exact names; applications are whole-name regular
//! expressions; client addresses are networks; the query is searched.

use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::observe::Session;
use crate::settings::{Pattern, non_empty, regex_reason};

/// Matches a text by exact names or by full-match regular expressions.
/// Built only through [`NameSet::new`], which anchors every pattern, so
/// `psql` never matches `billing-psql-loader`. Written as a list of
/// patterns; compared and printed by them.
#[derive(Debug, Clone, Default)]
pub struct NameSet {
    pub(crate) exact: Vec<String>,
    written: Vec<String>,
    pub(crate) patterns: Vec<Regex>,
}

impl NameSet {
    /// Exact names and regular expressions; each expression must match the whole name.
    pub fn new<S: AsRef<str>>(exact: Vec<String>, patterns: &[S]) -> Result<Self, regex::Error> {
        let written: Vec<String> = patterns.iter().map(|p| p.as_ref().to_string()).collect();
        let patterns = written
            .iter()
            .map(|p| Regex::new(&format!("^(?:{p})$")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NameSet {
            exact,
            written,
            patterns,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.patterns.is_empty()
    }

    pub fn contains(&self, value: &str) -> bool {
        self.exact.iter().any(|e| e == value) || self.patterns.iter().any(|p| p.is_match(value))
    }
}

impl PartialEq for NameSet {
    fn eq(&self, other: &Self) -> bool {
        self.exact == other.exact && self.written == other.written
    }
}

impl Serialize for NameSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.written.serialize(s)
    }
}

impl<'de> Deserialize<'de> for NameSet {
    /// Every pattern checked; the first bad one is named with the regex
    /// crate's reason.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let list: Vec<String> = non_empty(d)?;
        for p in &list {
            if let Err(e) = Regex::new(p) {
                return Err(D::Error::custom(format!(
                    "invalid regex {p:?}: {}",
                    regex_reason(&e)
                )));
            }
        }
        NameSet::new(Vec::new(), &list).map_err(|e| {
            let shown: Vec<String> = list.iter().map(|p| format!("{p:?}")).collect();
            D::Error::custom(format!(
                "{} cannot be matched as a whole name: {}",
                shown.join(", "),
                regex_reason(&e)
            ))
        })
    }
}

/// A list of client networks as written: CIDR, or a bare address as a
/// single-host network (/32, /128). An IPv4-mapped IPv6 network is kept as
/// the IPv4 network it maps, since sessions' addresses are compared in
/// canonical form.
pub mod networks {
    use ipnet::{IpNet, Ipv4Net};
    use serde::{Deserializer, Serialize, Serializer, de};
    use std::net::IpAddr;

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        let shown: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        shown.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        crate::settings::non_empty::<_, String>(d)?
            .iter()
            .map(|text| {
                network(text).ok_or_else(|| {
                    de::Error::custom(format!(
                        "invalid network {text:?}: expected CIDR notation such as \"10.0.0.0/8\" or \"fd00::/8\", or an IP address"
                    ))
                })
            })
            .collect()
    }

    fn network(text: &str) -> Option<IpNet> {
        let net = text
            .parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))?;
        if let IpNet::V6(v6) = net
            && v6.prefix_len() >= 96
            && let Some(v4) = v6.addr().to_ipv4_mapped()
            && let Ok(n) = Ipv4Net::new(v4, v6.prefix_len() - 96)
        {
            return Some(IpNet::V4(n));
        }
        Some(net)
    }
}

/// Declares a settings struct with its own fields followed by the scope's
/// keys (`match_users`, `ignore_users`, ... `match_query`, `ignore_query`),
/// and its [`Scope`] view. Every type that selects sessions by these lists
/// is declared through it, so the keys exist once.
macro_rules! with_scope {
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $( $(#[$fattr:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$attr])*
        pub struct $name {
            $( $(#[$fattr])* pub $field: $ty, )*
            #[serde(default, deserialize_with = "crate::settings::non_empty", skip_serializing_if = "Vec::is_empty")]
            pub match_users: Vec<String>,
            #[serde(default, deserialize_with = "crate::settings::non_empty", skip_serializing_if = "Vec::is_empty")]
            pub ignore_users: Vec<String>,
            #[serde(default, deserialize_with = "crate::settings::non_empty", skip_serializing_if = "Vec::is_empty")]
            pub match_databases: Vec<String>,
            #[serde(default, deserialize_with = "crate::settings::non_empty", skip_serializing_if = "Vec::is_empty")]
            pub ignore_databases: Vec<String>,
            #[serde(default, skip_serializing_if = "crate::evaluate::NameSet::is_empty")]
            pub match_applications: crate::evaluate::NameSet,
            #[serde(default, skip_serializing_if = "crate::evaluate::NameSet::is_empty")]
            pub ignore_applications: crate::evaluate::NameSet,
            #[serde(default, with = "crate::evaluate::scope::networks", skip_serializing_if = "Vec::is_empty")]
            pub match_client_addrs: Vec<ipnet::IpNet>,
            #[serde(default, with = "crate::evaluate::scope::networks", skip_serializing_if = "Vec::is_empty")]
            pub ignore_client_addrs: Vec<ipnet::IpNet>,
            /// Searched in the query text (not anchored).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub match_query: Option<crate::settings::Pattern>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub ignore_query: Option<crate::settings::Pattern>,
        }

        impl $name {
            /// The scope's lists, for [`crate::evaluate::Scope::excludes`].
            pub fn scope(&self) -> crate::evaluate::Scope<'_> {
                crate::evaluate::Scope {
                    match_users: &self.match_users,
                    ignore_users: &self.ignore_users,
                    match_databases: &self.match_databases,
                    ignore_databases: &self.ignore_databases,
                    match_applications: &self.match_applications,
                    ignore_applications: &self.ignore_applications,
                    match_client_addrs: &self.match_client_addrs,
                    ignore_client_addrs: &self.ignore_client_addrs,
                    match_query: self.match_query.as_ref(),
                    ignore_query: self.ignore_query.as_ref(),
                }
            }
        }
    };
}
pub(crate) use with_scope;

/// The lists of one settings table, borrowed: what [`Scope::excludes`] reads.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub match_users: &'a [String],
    pub ignore_users: &'a [String],
    pub match_databases: &'a [String],
    pub ignore_databases: &'a [String],
    pub match_applications: &'a NameSet,
    pub ignore_applications: &'a NameSet,
    pub match_client_addrs: &'a [IpNet],
    pub ignore_client_addrs: &'a [IpNet],
    pub match_query: Option<&'a Pattern>,
    pub ignore_query: Option<&'a Pattern>,
}

/// Why a scope leaves a session out: the key that did. A bounded set, used
/// as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    IgnoreUsers,
    MatchUsers,
    IgnoreDatabases,
    MatchDatabases,
    IgnoreApplications,
    MatchApplications,
    IgnoreClientAddrs,
    MatchClientAddrs,
    IgnoreQuery,
    MatchQuery,
}

impl Exclusion {
    pub const ALL: [Exclusion; 10] = [
        Exclusion::IgnoreUsers,
        Exclusion::MatchUsers,
        Exclusion::IgnoreDatabases,
        Exclusion::MatchDatabases,
        Exclusion::IgnoreApplications,
        Exclusion::MatchApplications,
        Exclusion::IgnoreClientAddrs,
        Exclusion::MatchClientAddrs,
        Exclusion::IgnoreQuery,
        Exclusion::MatchQuery,
    ];

    /// The key that excluded the session.
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::IgnoreUsers => "ignore_users",
            Exclusion::MatchUsers => "match_users",
            Exclusion::IgnoreDatabases => "ignore_databases",
            Exclusion::MatchDatabases => "match_databases",
            Exclusion::IgnoreApplications => "ignore_applications",
            Exclusion::MatchApplications => "match_applications",
            Exclusion::IgnoreClientAddrs => "ignore_client_addrs",
            Exclusion::MatchClientAddrs => "match_client_addrs",
            Exclusion::IgnoreQuery => "ignore_query",
            Exclusion::MatchQuery => "match_query",
        }
    }
}

impl Scope<'_> {
    /// True when no list is set: every session is in scope.
    pub fn is_empty(&self) -> bool {
        self.keys_set().is_empty()
    }

    /// The keys that are set, in the order of [`Exclusion::ALL`].
    pub fn keys_set(&self) -> Vec<Exclusion> {
        let set = [
            !self.ignore_users.is_empty(),
            !self.match_users.is_empty(),
            !self.ignore_databases.is_empty(),
            !self.match_databases.is_empty(),
            !self.ignore_applications.is_empty(),
            !self.match_applications.is_empty(),
            !self.ignore_client_addrs.is_empty(),
            !self.match_client_addrs.is_empty(),
            self.ignore_query.is_some(),
            self.match_query.is_some(),
        ];
        Exclusion::ALL
            .into_iter()
            .zip(set)
            .filter(|(_, set)| *set)
            .map(|(k, _)| k)
            .collect()
    }

    /// How many `match_*` lists are set: how narrowly the scope selects.
    pub fn match_lists(&self) -> usize {
        [
            !self.match_users.is_empty(),
            !self.match_databases.is_empty(),
            !self.match_applications.is_empty(),
            !self.match_client_addrs.is_empty(),
            self.match_query.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }

    /// The first key, in the order of [`Exclusion::ALL`], that leaves the
    /// session out; `None` when the session is in scope. An ignore wins
    /// over a match: a session both named and ignored is left out (by the
    /// ignore). A session without a client address (a Unix socket) is
    /// never in a `match_client_addrs`; query text the role may not read
    /// (`<insufficient privilege>`) is matched as shown.
    pub fn excludes(&self, s: &Session) -> Option<Exclusion> {
        let user = s.user.as_deref().unwrap_or("");
        if self.ignore_users.iter().any(|u| u == user) {
            return Some(Exclusion::IgnoreUsers);
        }
        if !self.match_users.is_empty() && !self.match_users.iter().any(|u| u == user) {
            return Some(Exclusion::MatchUsers);
        }
        let db = s.database.as_deref().unwrap_or("");
        if self.ignore_databases.iter().any(|d| d == db) {
            return Some(Exclusion::IgnoreDatabases);
        }
        if !self.match_databases.is_empty() && !self.match_databases.iter().any(|d| d == db) {
            return Some(Exclusion::MatchDatabases);
        }
        if self.ignore_applications.contains(&s.application_name) {
            return Some(Exclusion::IgnoreApplications);
        }
        if !self.match_applications.is_empty()
            && !self.match_applications.contains(&s.application_name)
        {
            return Some(Exclusion::MatchApplications);
        }
        let addr = client_addr(s);
        if addr.is_some_and(|a| self.ignore_client_addrs.iter().any(|n| n.contains(&a))) {
            return Some(Exclusion::IgnoreClientAddrs);
        }
        if !self.match_client_addrs.is_empty()
            && !addr.is_some_and(|a| self.match_client_addrs.iter().any(|n| n.contains(&a)))
        {
            return Some(Exclusion::MatchClientAddrs);
        }
        if self.ignore_query.is_some_and(|r| r.is_match(&s.query)) {
            return Some(Exclusion::IgnoreQuery);
        }
        if self.match_query.is_some_and(|r| !r.is_match(&s.query)) {
            return Some(Exclusion::MatchQuery);
        }
        None
    }
}

/// The session's client address in canonical form: an IPv4-mapped IPv6
/// address compares as IPv4.
pub fn client_addr(s: &Session) -> Option<IpAddr> {
    s.client_addr
        .as_deref()
        .and_then(|a| a.parse::<IpAddr>().ok())
        .map(|a| a.to_canonical())
}
