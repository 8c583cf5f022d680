//! How each check measures a snapshot. Pure functions.

use super::Thresholds;
use super::sessions;
use super::{CheckId, Measurement};
use crate::observe::{PgSnapshot, Role, XID_WRAP};

/// Measures one check on a snapshot: its value and whether the condition is violated.
pub fn measure(check: CheckId, s: &PgSnapshot, t: &Thresholds) -> Measurement {
    match check {
        CheckId::Connection => Measurement {
            value: 1.0,
            violated: false,
            detail: "connected".into(),
        },
        CheckId::SlowQueries
        | CheckId::IndexesOnline
        | CheckId::DatabasesOnline
        | CheckId::ClusterHealthy
        | CheckId::NodeCount
        | CheckId::RelationshipCount
        | CheckId::BackupStore
        | CheckId::BackupFresh
        | CheckId::BackupSize
        | CheckId::BackupIntegrity => Measurement {
            value: 0.0,
            violated: false,
            detail: "not a PostgreSQL check".into(),
        },
        CheckId::DiskFree => disk_free(s, t.disk_free.value),
        CheckId::ConnectionsUsed => {
            let used = s.connections_used();
            let usable = s.server.usable_connections();
            let ratio = used as f64 / f64::from(usable);
            Measurement {
                value: ratio,
                violated: ratio > t.connections_used.value,
                detail: format!(
                    "{used} of {usable} usable connections ({}), threshold {}",
                    fmt_pct(ratio, t.connections_used.value).0,
                    fmt_pct(ratio, t.connections_used.value).1
                ),
            }
        }
        CheckId::ReplicationLag => replication_lag(s, t.replication_lag.value),
        CheckId::ReplicationStreaming => replication_streaming(s, t.replication_streaming.value),
        CheckId::ReplicationSlots => replication_slots(s, t.replication_slot_retained_wal.value),
        CheckId::ReplicationSlotAtRisk => {
            replication_slot_at_risk(s, t.replication_slot_at_risk.value)
        }
        CheckId::LongRunningQuery => {
            sessions::measure(&sessions::LONG_RUNNING, s, &t.long_running_query).measurement
        }
        CheckId::IdleSession => sessions::measure(&sessions::IDLE, s, &t.idle_session).measurement,
        CheckId::IdleInTransaction => {
            sessions::measure(&sessions::IDLE_IN_TRANSACTION, s, &t.idle_in_transaction).measurement
        }
        CheckId::ChecksumFailures => {
            let n: i64 = s.databases.iter().filter_map(|d| d.checksum_failures).sum();
            let detail = if !s.server.data_checksums {
                "data checksums are disabled on this cluster: corruption cannot be detected"
                    .to_string()
            } else {
                format!("{n} checksum failures")
            };
            Measurement {
                value: n as f64,
                violated: n > 0,
                detail,
            }
        }
        CheckId::WalArchiving => {
            let a = &s.archiver;
            let detail = if !a.archive_mode {
                "archive_mode is off".to_string()
            } else if a.failing {
                format!(
                    "the last archive attempt failed ({} failures in all)",
                    a.failed_count
                )
            } else {
                match a.last_archived_age_seconds {
                    Some(age) => format!("last segment archived {} ago", fmt_secs(age)),
                    None => "no segment archived yet".to_string(),
                }
            };
            Measurement {
                value: if a.failing { 1.0 } else { 0.0 },
                violated: a.failing,
                detail,
            }
        }
        CheckId::Wraparound => {
            let worst = s.databases.iter().max_by_key(|d| d.xid_age);
            let age = worst.map_or(0, |d| d.xid_age);
            let ratio = age as f64 / XID_WRAP;
            Measurement {
                value: ratio,
                violated: ratio > t.wraparound.value,
                detail: match worst {
                    Some(d) => format!(
                        "oldest XID age {age} in database {:?} ({} of wraparound), threshold {}",
                        d.name,
                        fmt_pct(ratio, t.wraparound.value).0,
                        fmt_pct(ratio, t.wraparound.value).1
                    ),
                    None => "no databases visible".to_string(),
                },
            }
        }
        CheckId::InvalidIndexes => Measurement {
            value: s.invalid_indexes as f64,
            violated: s.invalid_indexes > 0,
            detail: format!(
                "{} invalid indexes in database {:?}",
                s.invalid_indexes, s.server.database
            ),
        },
    }
}

fn disk_free(s: &PgSnapshot, min: f64) -> Measurement {
    if s.disks.is_empty() {
        return Measurement {
            value: 1.0,
            violated: false,
            detail: "no paths configured to watch".into(),
        };
    }
    let mut worst: Option<(f64, &str)> = None;
    let mut errors = Vec::new();
    for d in &s.disks {
        match d.free_ratio() {
            Some(r) if worst.is_none_or(|(w, _)| r < w) => worst = Some((r, &d.volume)),
            Some(_) => {}
            None => errors.push(
                d.error
                    .clone()
                    .unwrap_or_else(|| format!("{}: size 0", d.volume)),
            ),
        }
    }
    let (value, mut detail) = match worst {
        Some((r, vol)) => (
            r,
            format!(
                "volume {vol:?} has {} free, threshold {}",
                fmt_pct(r, min).0,
                fmt_pct(r, min).1
            ),
        ),
        None => (0.0, "no watched volume could be measured".to_string()),
    };
    if !errors.is_empty() {
        detail.push_str(&format!("; {}", errors.join("; ")));
    }
    // A volume we cannot measure fails the check: silence is not free space.
    Measurement {
        value,
        violated: value < min || !errors.is_empty(),
        detail,
    }
}

/// How far a standby is behind, as `replication_lag` measures it: its replay
/// delay (0 when the receiver streams and everything received is replayed,
/// so an idle primary is not lag; otherwise the age of the last replayed
/// transaction). `None` on a primary, or when nothing was replayed yet. The
/// health endpoints (`/health/<target>/replica`) judge by the same figure.
pub fn standby_lag_seconds(s: &PgSnapshot) -> Option<f64> {
    s.recovery.as_ref().and_then(|r| r.replay_delay_seconds)
}

fn replication_lag(s: &PgSnapshot, max: f64) -> Measurement {
    match s.server.role() {
        Role::Standby => match standby_lag_seconds(s) {
            Some(d) => Measurement {
                value: d,
                violated: d > max,
                detail: format!("replay delay {} (threshold {})", fmt_secs(d), fmt_secs(max)),
            },
            None => Measurement {
                value: 0.0,
                violated: false,
                detail: "nothing replayed yet: replay delay unknown".into(),
            },
        },
        Role::Primary => {
            let worst = s
                .standbys
                .iter()
                .map(|x| (x.replay_lag_seconds.unwrap_or(0.0), x.name.as_str()))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            match worst {
                Some((lag, name)) => Measurement {
                    value: lag,
                    violated: lag > max,
                    detail: format!(
                        "standby {name:?} replay lag {} (threshold {})",
                        fmt_secs(lag),
                        fmt_secs(max)
                    ),
                },
                None => Measurement {
                    value: 0.0,
                    violated: false,
                    detail: "no standbys connected".into(),
                },
            }
        }
    }
}

fn replication_streaming(s: &PgSnapshot, min_standbys: f64) -> Measurement {
    match s.server.role() {
        Role::Standby => {
            let r = s.recovery.as_ref();
            let streaming = r.is_some_and(|r| r.is_streaming());
            let status = r
                .and_then(|r| r.receiver_status.clone())
                .unwrap_or_else(|| "no WAL receiver".into());
            Measurement {
                value: if streaming { 1.0 } else { 0.0 },
                violated: !streaming,
                detail: format!("WAL receiver: {status}"),
            }
        }
        Role::Primary => {
            let streaming = s.standbys.iter().filter(|x| x.state == "streaming").count();
            let not: Vec<String> = s
                .standbys
                .iter()
                .filter(|x| x.state != "streaming")
                .map(|x| format!("{:?} is {}", x.name, x.state))
                .collect();
            let mut detail =
                format!("{streaming} standbys streaming, at least {min_standbys} expected");
            if !not.is_empty() {
                detail.push_str(&format!("; {}", not.join(", ")));
            }
            Measurement {
                value: streaming as f64,
                violated: (streaming as f64) < min_standbys || !not.is_empty(),
                detail,
            }
        }
    }
}

fn replication_slots(s: &PgSnapshot, max_bytes: f64) -> Measurement {
    let worst = s
        .slots
        .iter()
        .map(|x| (x.retained_bytes.unwrap_or(0.0), x))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let inactive: Vec<&str> = s
        .slots
        .iter()
        .filter(|x| !x.active)
        .map(|x| x.name.as_str())
        .collect();
    match worst {
        None => Measurement {
            value: 0.0,
            violated: false,
            detail: "no replication slots".into(),
        },
        Some((bytes, slot)) => {
            let mut detail = format!(
                "slot {:?} retains {} bytes of WAL (threshold {max_bytes})",
                slot.name, bytes
            );
            if !inactive.is_empty() {
                detail.push_str(&format!("; inactive: {}", inactive.join(", ")));
            }
            Measurement {
                value: bytes,
                violated: bytes > max_bytes || !inactive.is_empty(),
                detail,
            }
        }
    }
}

/// Slots whose WAL is `unreserved` or `lost`, or whose `safe_wal_size`
/// is below `min_bytes`: the value is how many.
fn replication_slot_at_risk(s: &PgSnapshot, min_bytes: f64) -> Measurement {
    let mut at_risk = Vec::new();
    for slot in &s.slots {
        let safe = slot.safe_wal_bytes.map(|b| b as f64);
        if slot.wal_lost_or_unreserved() {
            at_risk.push(format!(
                "slot {:?} is {}",
                slot.name,
                slot.wal_status.as_deref().unwrap_or_default()
            ));
        } else if let Some(b) = safe.filter(|b| *b < min_bytes) {
            at_risk.push(format!(
                "slot {:?} can lose its WAL after {} more bytes (min_safe_wal_bytes {min_bytes})",
                slot.name, b
            ));
        }
    }
    let detail = if s.slots.is_empty() {
        "no replication slots".to_string()
    } else if !at_risk.is_empty() {
        at_risk.join("; ")
    } else {
        match s
            .slots
            .iter()
            .filter_map(|x| x.safe_wal_bytes.map(|b| (b, x)))
            .min_by_key(|(b, _)| *b)
        {
            Some((b, slot)) => format!(
                "every slot's WAL is reserved; the least safe, {:?}, can take {b} more bytes",
                slot.name
            ),
            None => {
                "every slot's WAL is reserved (max_slot_wal_keep_size is -1: no limit)".to_string()
            }
        }
    };
    Measurement {
        value: at_risk.len() as f64,
        violated: !at_risk.is_empty(),
        detail,
    }
}

/// Seconds as a short human duration ("5m 3s").
///
/// Under a minute it keeps milliseconds, so a failing value never prints
/// the same as its threshold ("5.5s", not "5s").
pub fn fmt_secs(secs: f64) -> String {
    let secs = if secs.is_nan() { 0.0 } else { secs.max(0.0) };
    let d = std::time::Duration::try_from_secs_f64(secs).unwrap_or(std::time::Duration::MAX);
    if d.as_secs() >= 60 {
        humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
    } else if d.as_millis() >= 1000 {
        let s = format!("{secs:.3}");
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A ratio and its threshold as percentages, with as many decimals as it
/// takes for different values to print differently ("80.4%" vs "80.0%").
pub fn fmt_pct(value: f64, threshold: f64) -> (String, String) {
    let mut out = (String::new(), String::new());
    for prec in 1..=9 {
        out = (
            format!("{:.*}%", prec, value * 100.0),
            format!("{:.*}%", prec, threshold * 100.0),
        );
        if out.0 != out.1 || value == threshold {
            break;
        }
    }
    out
}
