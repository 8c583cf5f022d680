//! Shards across replicas: each dbwarden replica holds its own
//! `coordination.k8s.io` Lease (labelled with the shard group) as its
//! membership, and each target belongs to one live member by rendezvous
//! (highest-random-weight) hashing, so that a member joining or leaving moves
//! only its own share of the targets.
//!
//! Who may act on a target is decided here, purely ([`decide`]); the daemon
//! starts and stops the targets' loops as reload does (`daemon::shards`).
//!
//! The handover, so that two replicas never act on one target at once:
//!
//! - Each member writes into its Lease the member set it acts under (its
//!   *view*, annotation [`VIEW_ANNOTATION`]). A member *claims* a target when
//!   the target's owner under its own published view is itself.
//! - A member acts only on targets it claims, and only while no other live
//!   member claims them too. Every tick it first stops the targets that its
//!   new view gives away, then publishes the new view (a write, with the
//!   read `resourceVersion`), then reads every Lease again and starts what
//!   it claims and nobody else does. Two members that claim one target at
//!   the same time have both written their claim before reading the
//!   other's, so at least one of them sees the other and waits.
//! - A member is live while its Lease is unexpired: renewed within its
//!   `leaseDurationSeconds` *and* changed within that long on the reader's
//!   own clock (client-go's rule, [`super::lease::expired`]). A member that
//!   cannot renew stops every target one renewal period before its own
//!   Lease could expire, counted from the moment it sent its last
//!   successful renewal; so by the time another member sees it expired and
//!   ignores its claims, it has stopped acting.
//! - Two processes given one identity would share one Lease: each marks its
//!   writes ([`PROCESS_ANNOTATION`]), and one that finds its live Lease
//!   written by another since its own last write acts on nothing until that
//!   Lease expires.
//! - The PostgreSQL advisory lock stays the last guard against two actors.
//!
//! A replica leaves by deleting its Lease once its targets have stopped; the
//! Lease of a replica that died (a pod name that will not come back) is
//! deleted by any member once it has been expired for [`SWEEP_AFTER`] Lease
//! durations.
//!
//! RBAC: leases get, list, create, update, delete in the namespace.

#[cfg(feature = "kubernetes")]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The label every member's Lease carries: `dbwarden.io/shard-group=<group>`.
pub const GROUP_LABEL: &str = "dbwarden.io/shard-group";
/// The annotation holding a member's view: the members it acts under,
/// comma-separated.
pub const VIEW_ANNOTATION: &str = "dbwarden.io/shard-view";

/// The annotation naming the process that last wrote a member's Lease, so
/// that two processes given one identity notice each other.
pub const PROCESS_ANNOTATION: &str = "dbwarden.io/shard-process";

/// A member's Lease expired for this many Lease durations is deleted.
pub const SWEEP_AFTER: u64 = 10;

/// `[kubernetes.shards]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardSettings {
    /// The shard group: the label value that makes a Lease a member, and the
    /// prefix of each member's Lease name (`<group>-<identity>`).
    pub group: String,
    /// This replica's identity: `remediation.instance`, else `$HOSTNAME`
    /// (the pod name); unique per replica. Resolved at load.
    #[serde(skip)]
    pub identity: String,
    /// `leaseDurationSeconds` of each member's Lease.
    #[serde(with = "crate::settings::duration")]
    pub duration: Duration,
    /// How often a member renews its Lease and reads the others'.
    #[serde(with = "crate::settings::duration")]
    pub renew_every: Duration,
}

impl Default for ShardSettings {
    fn default() -> Self {
        ShardSettings {
            group: "dbwarden".to_string(),
            identity: String::new(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

impl ShardSettings {
    /// This member's Lease: `<group>-<identity>`.
    pub fn lease_name(&self) -> String {
        format!("{}-{}", self.group, self.identity)
    }

    /// The label selector of the group's Leases.
    pub fn selector(&self) -> String {
        format!("{GROUP_LABEL}={}", self.group)
    }

    /// How long a member keeps acting after its last successful renewal was
    /// sent: one renewal period less than the Lease lasts, so that it has
    /// stopped before anyone may see its Lease expired.
    pub fn act_for(&self) -> Duration {
        self.duration.saturating_sub(self.renew_every)
    }
}

/// The rendezvous weight of `target` on `member`: the first 8 bytes of
/// SHA-256 over both (a stable hash: every process computes the same).
pub fn weight(member: &str, target: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0u8]);
    h.update(target.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// The owner of `target` among `members`: the highest weight (ties, which
/// a 64-bit hash makes vanishingly rare, go to the greater identity).
/// `None` when there is no member.
pub fn owner<'a>(target: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| (weight(m, target), m.as_str()))
        .map(String::as_str)
}

/// A member of the group as read from its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub identity: String,
    /// Its Lease is unexpired.
    pub live: bool,
    /// The members it published that it acts under (`None`: none yet).
    pub view: Option<Vec<String>>,
}

impl Member {
    /// Whether this member claims `target`: it owns it under its own view.
    pub fn claims(&self, target: &str) -> bool {
        self.view
            .as_deref()
            .is_some_and(|v| owner(target, v) == Some(self.identity.as_str()))
    }
}

/// A view written as the annotation's value.
pub fn view_text(view: &[String]) -> String {
    view.join(",")
}

/// A view read back from the annotation (`None`: absent).
pub fn parse_view(text: Option<&str>) -> Option<Vec<String>> {
    text.map(|t| {
        let mut v: Vec<String> = t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        v.sort();
        v.dedup();
        v
    })
}

/// The view `me` should act under: the live members, and itself.
pub fn view(me: &str, members: &[Member]) -> Vec<String> {
    let mut v: BTreeSet<String> = members
        .iter()
        .filter(|m| m.live)
        .map(|m| m.identity.clone())
        .collect();
    v.insert(me.to_string());
    v.into_iter().collect()
}

/// The targets `me` owns under `view`.
pub fn owned(me: &str, view: &[String], targets: &[String]) -> BTreeSet<String> {
    targets
        .iter()
        .filter(|t| owner(t, view) == Some(me))
        .cloned()
        .collect()
}

/// The targets `me` may act on now: those its published view gives it and
/// that no other live member claims.
pub fn decide(
    me: &str,
    published: &[String],
    members: &[Member],
    targets: &[String],
) -> BTreeSet<String> {
    owned(me, published, targets)
        .into_iter()
        .filter(|t| {
            !members
                .iter()
                .any(|m| m.live && m.identity != me && m.claims(t))
        })
        .collect()
}

/// What the group looks like from one member: for the metrics and the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupReport {
    /// Live members.
    pub members: usize,
    /// Targets claimed by each live member (by its published view).
    pub claimed: Vec<(String, usize)>,
    /// Configured targets no live member claims.
    pub unowned: Vec<String>,
}

/// The report over what was read: claims of live members only.
pub fn report(members: &[Member], targets: &[String]) -> GroupReport {
    let live: Vec<&Member> = members.iter().filter(|m| m.live).collect();
    let claimed = live
        .iter()
        .map(|m| {
            let n = targets.iter().filter(|t| m.claims(t)).count();
            (m.identity.clone(), n)
        })
        .collect();
    let unowned = targets
        .iter()
        .filter(|t| !live.iter().any(|m| m.claims(t)))
        .cloned()
        .collect();
    GroupReport {
        members: live.len(),
        claimed,
        unowned,
    }
}

// ------------------------------------------------------------ the API side

#[cfg(feature = "kubernetes")]
pub use api::{Reading, ShardLeases};

#[cfg(feature = "kubernetes")]
mod api {
    use std::sync::Mutex;

    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
    use kube::{Api, Client};

    use super::super::lease::{Sightings, expired, micro, micro_ms};
    use super::super::{KubeError, duration_ms};
    use super::*;

    /// The group's Leases as this member reads and writes them.
    #[derive(Debug)]
    pub struct ShardLeases {
        api: Api<Lease>,
        settings: ShardSettings,
        sightings: Mutex<Sightings>,
        /// Leases of the group long expired (name, resourceVersion), as last read.
        stale: Mutex<Vec<(String, String)>>,
        /// This process, among any others given the same identity.
        process: String,
        /// The `resourceVersion` of our Lease as we last wrote it.
        written: Mutex<Option<String>>,
    }

    /// The group as one reading found it.
    #[derive(Debug)]
    pub struct Reading {
        pub members: Vec<Member>,
        /// Our Lease, to renew it.
        pub own: Option<Lease>,
        /// Another process wrote our live Lease since we did: it was given
        /// our identity. We must not act (see [`ShardLeases::members`]).
        pub twin: Option<String>,
    }

    impl ShardLeases {
        pub fn new(client: Client, namespace: &str, settings: ShardSettings) -> Self {
            ShardLeases {
                api: Api::namespaced(client, namespace),
                settings,
                sightings: Mutex::default(),
                stale: Mutex::default(),
                process: format!("{}-{}", std::process::id(), super::super::now_ms()),
                written: Mutex::default(),
            }
        }

        pub fn settings(&self) -> &ShardSettings {
            &self.settings
        }

        pub fn identity(&self) -> &str {
            &self.settings.identity
        }

        /// Reads the group's Leases: every member but an empty holder
        /// (released), with its liveness judged at `now_ms`, and our own
        /// Lease. When another process has written our live Lease since we
        /// last did, it runs with our identity (a misconfiguration): the
        /// reading says so, and we stay out until that Lease expires, so
        /// that the last writer alone acts.
        pub async fn members(&self, now_ms: u64) -> Result<Reading, KubeError> {
            let list = self
                .api
                .list(&ListParams::default().labels(&self.settings.selector()))
                .await?;
            let mut sightings = self.sightings.lock().unwrap_or_else(|e| e.into_inner());
            let mut members = Vec::new();
            let mut stale = Vec::new();
            let mut own = None;
            let mut names = BTreeSet::new();
            let me = self.settings.lease_name();
            for lease in list.items {
                let name = lease.metadata.name.clone().unwrap_or_default();
                names.insert(name.clone());
                if name == me {
                    own = Some(lease.clone());
                }
                let spec = lease.spec.clone().unwrap_or_default();
                let rv = lease.metadata.resource_version.clone().unwrap_or_default();
                let since = sightings.since(&name, &rv, now_ms);
                let lease_ms = spec
                    .lease_duration_seconds
                    .map(|s| u64::from(s.max(0).unsigned_abs()) * 1000)
                    .unwrap_or_else(|| duration_ms(self.settings.duration));
                let renewed = spec.renew_time.as_ref().and_then(micro_ms);
                if name != me
                    && expired(renewed, lease_ms.saturating_mul(SWEEP_AFTER), since, now_ms)
                {
                    stale.push((name.clone(), rv.clone()));
                }
                let Some(holder) = spec.holder_identity.clone().filter(|h| !h.is_empty()) else {
                    continue;
                };
                let view = parse_view(
                    lease
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(VIEW_ANNOTATION))
                        .map(String::as_str),
                );
                members.push(Member {
                    identity: holder,
                    live: !expired(renewed, lease_ms, since, now_ms),
                    view,
                });
            }
            sightings.retain(&names);
            *self.stale.lock().unwrap_or_else(|e| e.into_inner()) = stale;
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let mine_live = members
                .iter()
                .any(|m| m.identity == self.identity() && m.live);
            if !mine_live {
                // Expired or gone: whoever wrote it last is not acting.
                *written = None;
            }
            let twin = own.as_ref().and_then(|l| {
                let rv = l.metadata.resource_version.as_deref();
                let by = l
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(PROCESS_ANNOTATION))
                    .cloned()
                    .unwrap_or_default();
                (written.is_some() && rv != written.as_deref() && by != self.process).then_some(by)
            });
            Ok(Reading { members, own, twin })
        }

        fn lease(&self, now_ms: u64, view: &[String], base: Option<Lease>) -> Lease {
            let mut lease = base.unwrap_or_default();
            let meta = &mut lease.metadata;
            meta.name = Some(self.settings.lease_name());
            meta.labels
                .get_or_insert_with(BTreeMap::new)
                .insert(GROUP_LABEL.to_string(), self.settings.group.clone());
            let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
            annotations.insert(VIEW_ANNOTATION.to_string(), view_text(view));
            annotations.insert(PROCESS_ANNOTATION.to_string(), self.process.clone());
            let old = lease.spec.take().unwrap_or_default();
            let ours = old.holder_identity.as_deref() == Some(self.identity());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX),
                ),
                acquire_time: if ours { old.acquire_time } else { None }.or_else(|| micro(now_ms)),
                renew_time: micro(now_ms),
                lease_transitions: Some(old.lease_transitions.unwrap_or(0)),
                ..LeaseSpec::default()
            });
            lease
        }

        /// Renews our Lease (creating it when absent) with `view` as the
        /// view we act under. `own` is our Lease as last read: its
        /// `resourceVersion` makes the write conditional.
        pub async fn renew(
            &self,
            now_ms: u64,
            view: &[String],
            own: Option<Lease>,
        ) -> Result<(), KubeError> {
            let name = self.settings.lease_name();
            let written = match own {
                None => {
                    let lease = self.lease(now_ms, view, None);
                    let created = self.api.create(&PostParams::default(), &lease).await?;
                    tracing::info!(lease = %name, "joined the shard group (created our Lease)");
                    created
                }
                Some(own) => {
                    let lease = self.lease(now_ms, view, Some(own));
                    self.api
                        .replace(&name, &PostParams::default(), &lease)
                        .await?
                }
            };
            *self.written.lock().unwrap_or_else(|e| e.into_inner()) =
                written.metadata.resource_version;
            Ok(())
        }

        /// Leaves the group at once (on shutdown, after every target
        /// stopped): deletes our Lease, so the others take our targets
        /// without waiting for it to expire; only as we last wrote it (not
        /// a twin's). Best effort.
        pub async fn release(&self) -> Result<(), KubeError> {
            let name = self.settings.lease_name();
            let Some(rv) = self
                .written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            else {
                return Ok(());
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(rv),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match self.api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(lease = %name, "left the shard group (deleted our Lease)");
            Ok(())
        }

        /// Deletes the Leases of members long gone (expired for
        /// [`SWEEP_AFTER`] durations at the last reading), each only at the
        /// version read. Best effort: another member may be doing the same.
        pub async fn sweep(&self) {
            let stale = std::mem::take(&mut *self.stale.lock().unwrap_or_else(|e| e.into_inner()));
            for (name, rv) in stale {
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        resource_version: Some(rv),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                match self.api.delete(&name, &params).await {
                    Ok(_) => {
                        tracing::info!(lease = %name, "deleted the Lease of a member long gone")
                    }
                    Err(e) => {
                        tracing::debug!(lease = %name, error = %e, "could not delete a stale Lease")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i:02}")).collect()
    }

    fn live(identity: &str, view: &[String]) -> Member {
        Member {
            identity: identity.to_string(),
            live: true,
            view: Some(view.to_vec()),
        }
    }

    /// The weights are fixed values, the same in every process and build.
    #[test]
    fn the_hash_is_stable() {
        assert_eq!(weight("a", "t"), weight("a", "t"));
        assert_ne!(weight("a", "t"), weight("b", "t"));
        // SHA-256("a\0t")'s first 8 bytes, computed once.
        let d = Sha256::digest(b"a\0t");
        assert_eq!(
            weight("a", "t"),
            u64::from_be_bytes(d[..8].try_into().unwrap())
        );
        assert_eq!(owner("t", &[]), None);
    }

    /// Converged views: every target acted on by exactly one member.
    #[test]
    fn converged_members_split_every_target_once() {
        let members = names("m", 3);
        let targets = names("t", 12);
        let all: Vec<Member> = members.iter().map(|m| live(m, &members)).collect();
        let mut seen = BTreeSet::new();
        for m in &members {
            for t in decide(m, &members, &all, &targets) {
                assert!(seen.insert(t.clone()), "{t} acted on twice");
            }
        }
        assert_eq!(seen.len(), targets.len());
        let r = report(&all, &targets);
        assert_eq!(r.members, 3);
        assert!(r.unowned.is_empty());
        assert_eq!(r.claimed.iter().map(|(_, n)| n).sum::<usize>(), 12);
    }

    /// A joining member waits while the previous owner still claims a
    /// target, and takes it once the previous owner published the new view.
    #[test]
    fn a_joiner_waits_for_the_previous_owner_to_let_go() {
        let old: Vec<String> = names("m", 2);
        let new: Vec<String> = names("m", 3);
        let targets = names("t", 40);
        let joiner = "m02";
        let moving: BTreeSet<String> = owned(joiner, &new, &targets);
        assert!(!moving.is_empty());
        // m00 and m01 still act under the old view.
        let before = vec![live("m00", &old), live("m01", &old), live(joiner, &new)];
        let mine = decide(joiner, &new, &before, &targets);
        assert!(mine.is_empty(), "took {mine:?} while still claimed");
        // Both published the new view.
        let after = vec![live("m00", &new), live("m01", &new), live(joiner, &new)];
        assert_eq!(decide(joiner, &new, &after, &targets), moving);
        // An expired member's claims do not count.
        let mut dead = before.clone();
        dead[0].live = false;
        dead[1].live = false;
        assert_eq!(decide(joiner, &new, &dead, &targets), moving);
    }

    #[test]
    fn views_round_trip() {
        let v = names("m", 3);
        assert_eq!(parse_view(Some(&view_text(&v))), Some(v));
        assert_eq!(parse_view(None), None);
        assert_eq!(parse_view(Some("")), Some(vec![]));
    }

    fn set() -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z]{1,6}", 1..8).prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        /// Each target has exactly one owner among the members, and that
        /// owner is a member.
        #[test]
        fn one_owner_per_target(members in set(), targets in set()) {
            for t in &targets {
                let o = owner(t, &members).unwrap();
                prop_assert!(members.iter().any(|m| m == o));
                let owning = members.iter().filter(|m| owned(m, &members, &targets).contains(t)).count();
                prop_assert_eq!(owning, 1);
            }
        }

        /// Removing a member moves only that member's targets; adding one
        /// moves targets only to it.
        #[test]
        fn only_the_changed_member_share_moves(members in set(), targets in set(), extra in "[A-Z]{1,4}") {
            let mut more = members.clone();
            more.push(extra.clone());
            more.sort();
            for t in &targets {
                let before = owner(t, &members).unwrap();
                let after = owner(t, &more).unwrap();
                prop_assert!(after == before || after == extra, "{} moved from {} to {}", t, before, after);
            }
            // Removing `extra` again: only its targets move.
            for t in &targets {
                let with = owner(t, &more).unwrap();
                let without = owner(t, &members).unwrap();
                prop_assert!(with == extra || with == without);
            }
        }

        /// Whatever views the members published (converged or not), no
        /// target is acted on by two live members that each decided on
        /// the others' published claims.
        #[test]
        fn never_two_actors(ids in set(), views in prop::collection::vec(set(), 8), targets in set()) {
            let members: Vec<Member> = ids.iter().enumerate().map(|(i, id)| {
                let mut v = views[i % views.len()].clone();
                v.push(id.clone());
                v.sort();
                v.dedup();
                Member { identity: id.clone(), live: true, view: Some(v) }
            }).collect();
            let mut acting: BTreeSet<&String> = BTreeSet::new();
            for m in &members {
                let published = m.view.clone().unwrap();
                for t in decide(&m.identity, &published, &members, &targets) {
                    prop_assert!(targets.contains(&t));
                    let t = targets.iter().find(|x| **x == t).unwrap();
                    prop_assert!(acting.insert(t), "{} acted on twice", t);
                }
            }
        }

        /// Deterministic: the same inputs give the same owner in any order.
        #[test]
        fn order_does_not_matter(mut members in set(), t in "[a-z]{1,6}") {
            let a = owner(&t, &members).map(String::from);
            members.reverse();
            prop_assert_eq!(a.as_deref(), owner(&t, &members));
        }
    }
}
