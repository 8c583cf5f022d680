//! One actor in a cluster: a `coordination.k8s.io` Lease elects the dbwarden
//! replica that acts on Kubernetes objects (evictions).
//!
//! - Absent Lease: create it with ourselves as holder (a 409 means another
//!   replica created it first: it won).
//! - Held by us: renew (`renewTime = now`).
//! - Held by another replica: take it over only once it has expired, that is
//!   `renewTime + leaseDurationSeconds` has passed *and* the Lease has not
//!   changed for a whole lease duration on our own clock (as client-go does:
//!   a replica whose clock runs ahead cannot steal a live Lease).
//! - Every write is an update carrying the `resourceVersion` that was read,
//!   so of two replicas racing for the same Lease, the API server accepts one
//!   and answers 409 Conflict to the other, which then is not the leader.
//!
//! A leader that cannot renew stops being the leader once its last renewal is
//! a lease duration old, whether or not anyone else took over.
//! RBAC: leases get, create, update.

#[cfg(feature = "kubernetes")]
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[cfg(feature = "kubernetes")]
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
#[cfg(feature = "kubernetes")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
#[cfg(feature = "kubernetes")]
use kube::api::PostParams;
#[cfg(feature = "kubernetes")]
use kube::{Api, Client};
use serde::Serialize;
#[cfg(feature = "kubernetes")]
use tokio_util::sync::CancellationToken;

#[cfg(feature = "kubernetes")]
use super::{KubeError, duration_ms};

/// `[kubernetes.lease]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseSettings {
    /// The Lease's name, in the configured namespace.
    pub name: String,
    /// This replica's identity: `remediation.instance`, else `$HOSTNAME`
    /// (the pod name); unique per replica. Resolved at load.
    #[serde(skip)]
    pub holder_identity: String,
    /// `leaseDurationSeconds`.
    #[serde(with = "crate::settings::duration")]
    pub duration: Duration,
    /// How often to renew (well below `duration`, e.g. a third of it).
    #[serde(with = "crate::settings::duration")]
    pub renew_every: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            name: "dbwarden".to_string(),
            holder_identity: String::new(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// What the last election round found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseStatus {
    /// We hold the Lease.
    Leader,
    /// Another replica holds it (or nobody, after a lost race, until the next read).
    Follower { holder: Option<String> },
}

#[derive(Debug, Clone)]
#[cfg(feature = "kubernetes")]
struct Observed {
    resource_version: String,
    /// When we first saw this version, on our clock.
    since_ms: u64,
}

#[derive(Debug, Default)]
#[cfg(feature = "kubernetes")]
struct State {
    observed: Option<Observed>,
    holder: Option<String>,
    /// Our last successful acquire or renew.
    renewed_ms: Option<u64>,
    last_error: Option<String>,
}

/// Lease election for this replica.
#[derive(Debug)]
#[cfg(feature = "kubernetes")]
pub struct LeaseElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    state: Mutex<State>,
}

/// Whether a Lease has expired at `now_ms`: renewed (`renew_ms`) more
/// than `lease_ms` ago *and* unchanged on our own clock for as long
/// (`since_ms`: when we first saw its current version), as client-go judges
/// it, so that a reader whose clock runs ahead never sees a live Lease
/// expired. Shared by the eviction elector and the shard members.
pub fn expired(renew_ms: Option<u64>, lease_ms: u64, since_ms: u64, now_ms: u64) -> bool {
    renew_ms.is_none_or(|t| t.saturating_add(lease_ms) <= now_ms)
        && since_ms.saturating_add(lease_ms) <= now_ms
}

/// When we first saw each Lease's current `resourceVersion`, on our clock.
#[derive(Debug, Default)]
pub struct Sightings(std::collections::BTreeMap<String, (String, u64)>);

impl Sightings {
    /// When Lease `name` was first seen at version `rv` (now, if new).
    pub fn since(&mut self, name: &str, rv: &str, now_ms: u64) -> u64 {
        match self.0.get(name) {
            Some((seen, since)) if seen == rv => *since,
            _ => {
                self.0.insert(name.to_string(), (rv.to_string(), now_ms));
                now_ms
            }
        }
    }

    /// Forgets the Leases not in `names` (deleted).
    pub fn retain(&mut self, names: &std::collections::BTreeSet<String>) {
        self.0.retain(|k, _| names.contains(k));
    }
}

#[cfg(feature = "kubernetes")]
pub(crate) fn micro(ms: u64) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_millisecond(i64::try_from(ms).ok()?)
        .ok()
        .map(MicroTime)
}

#[cfg(feature = "kubernetes")]
pub(crate) fn micro_ms(t: &MicroTime) -> Option<u64> {
    u64::try_from(t.0.as_millisecond()).ok()
}

#[cfg(feature = "kubernetes")]
impl LeaseElector {
    pub fn new(client: Client, namespace: &str, settings: LeaseSettings) -> Self {
        LeaseElector {
            api: Api::namespaced(client, namespace),
            settings,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// Whether we may act now: we hold the Lease and renewed it less than a
    /// lease duration ago.
    pub fn is_leader(&self, now_ms: u64) -> bool {
        let s = self.state();
        s.holder.as_deref() == Some(self.settings.holder_identity.as_str())
            && s.renewed_ms
                .is_some_and(|t| t + duration_ms(self.settings.duration) > now_ms)
    }

    /// The holder as last seen (for the holder metric).
    pub fn holder(&self) -> Option<String> {
        self.state().holder.clone()
    }

    /// The last error talking to the API server, cleared by the next success.
    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    pub fn identity(&self) -> &str {
        &self.settings.holder_identity
    }

    /// A flag for [`super::evict::EvictionRunner`]: true while we are the leader.
    pub fn actor_flag(self: &Arc<Self>) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let me = self.clone();
        Arc::new(move || me.is_leader(super::now_ms()))
    }

    fn won(&self, lease: &Lease, now_ms: u64) -> LeaseStatus {
        let mut s = self.state();
        s.holder = Some(self.settings.holder_identity.clone());
        s.renewed_ms = Some(now_ms);
        s.last_error = None;
        s.observed = lease.metadata.resource_version.clone().map(|rv| Observed {
            resource_version: rv,
            since_ms: now_ms,
        });
        LeaseStatus::Leader
    }

    fn lost(&self, holder: Option<String>) -> LeaseStatus {
        let mut s = self.state();
        s.holder = holder.clone();
        s.renewed_ms = None;
        s.last_error = None;
        LeaseStatus::Follower { holder }
    }

    fn failed(&self, e: kube::Error) -> KubeError {
        let e = KubeError::from(e);
        self.state().last_error = Some(e.to_string());
        e
    }

    fn spec(&self, now_ms: u64, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.holder_identity.clone()),
            lease_duration_seconds: Some(self.duration_secs()),
            acquire_time: acquire.or_else(|| micro(now_ms)),
            renew_time: micro(now_ms),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One election round: read the Lease, then create, renew or take it over
    /// as its state allows. `Err` when the API server could not be asked
    /// (then [`LeaseElector::is_leader`] decays on its own).
    pub async fn tick(&self, now_ms: u64) -> Result<LeaseStatus, KubeError> {
        let name = self.settings.name.clone();
        let current = match self.api.get_opt(&name).await {
            Ok(c) => c,
            Err(e) => return Err(self.failed(e)),
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now_ms, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    tracing::info!(lease = %self.settings.name, "acquired the Lease (created it)");
                    Ok(self.won(&created, now_ms))
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.lost(None)),
                Err(e) => Err(self.failed(e)),
            };
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let since_ms = {
            let mut s = self.state();
            match &s.observed {
                Some(o) if o.resource_version == rv => o.since_ms,
                _ => {
                    s.observed = Some(Observed {
                        resource_version: rv.clone(),
                        since_ms: now_ms,
                    });
                    now_ms
                }
            }
        };
        let lease_ms = spec
            .lease_duration_seconds
            .map(|s| u64::from(s.max(0).unsigned_abs()) * 1000)
            .unwrap_or_else(|| duration_ms(self.settings.duration));
        let ours = holder.as_deref() == Some(self.settings.holder_identity.as_str());
        let expired = expired(
            spec.renew_time.as_ref().and_then(micro_ms),
            lease_ms,
            since_ms,
            now_ms,
        );
        if !ours && holder.is_some() && !expired {
            let mut s = self.state();
            s.holder = holder.clone();
            s.renewed_ms = None;
            s.last_error = None;
            return Ok(LeaseStatus::Follower { holder });
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(if ours {
            self.spec(now_ms, spec.acquire_time.clone(), transitions)
        } else {
            self.spec(now_ms, None, transitions.saturating_add(1))
        });
        // The read resourceVersion stays in the metadata: optimistic concurrency.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                if !ours {
                    tracing::warn!(lease = %self.settings.name, previous = ?holder, "took over the Lease");
                }
                Ok(self.won(&updated, now_ms))
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(lease = %self.settings.name, "lost the race for the Lease");
                Ok(self.lost(if ours { None } else { holder }))
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Gives the Lease up if we hold it, so another replica can take over at
    /// once (on shutdown). Best effort.
    pub async fn release(&self) -> Result<(), KubeError> {
        if self.holder().as_deref() != Some(self.settings.holder_identity.as_str()) {
            return Ok(());
        }
        let mut lease = match self.api.get_opt(&self.settings.name).await {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(()),
            Err(e) => return Err(self.failed(e)),
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.holder_identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.lost(None);
                Ok(())
            }
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Runs election rounds every `renew_every` until `cancel`, then releases
    /// the Lease. `on_change` is called with each round's holder (for the metric).
    pub async fn run(
        self: Arc<Self>,
        cancel: CancellationToken,
        on_change: impl Fn(Option<&str>) + Send,
    ) {
        let mut tick = tokio::time::interval(self.settings.renew_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.tick(super::now_ms()).await {
                tracing::warn!(error = %e, lease = %self.settings.name, "cannot renew or read the Lease");
            }
            on_change(self.holder().as_deref());
        }
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "cannot release the Lease; it expires on its own");
        }
    }
}
