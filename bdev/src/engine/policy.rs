//! Storage-management policies: the document (JSON, kept in the checkpoint),
//! its validation, and the decisions core 0 takes from it.
//!
//! ```json
//! {"snapshot":   {"interval_s": 3600},
//!  "retention":  {"keep_last": 24, "max_age_s": 604800, "action": "baseline" | "delete",
//!                 "on_full": "fail" | "delete_oldest"},
//!  "compaction": {"log_used_pct": 80, "max_partitions": 64, "garbage_pct": 50},
//!  "events":     {"on_snapshot": ["compact_oldest_into_baseline"], "on_delete": [],
//!                 "on": {"backup-done": ["snapshot"]}},
//!  "volume_id":  {"scheme": "sequential" | "timestamp" | "template", "template": "nightly-%Y%m%d"}}
//! ```
//!
//! Every section and key is optional. A document with an unknown key or a
//! value of the wrong kind is refused with a message naming the field.

use crate::error::{Error, Result};
use crate::format::VolumeRecord;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// What the retention rules do with a volume they no longer keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetentionAction {
    /// Delete it (its partition merges into the next).
    #[default]
    Delete,
    /// Fold it into the baseline region: the newest of the volumes let go
    /// stays readable from the baseline, older ones are retired.
    Baseline,
}

/// What happens when the log is full of versions that volumes need (the
/// drain and compaction can free nothing more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFull {
    /// Writes that need new room fail with ENOSPC; nothing written is
    /// harmed, and deleting a volume makes room again.
    #[default]
    Fail,
    /// The oldest volume is retired, its space drained, and writes go on.
    DeleteOldest,
}

/// An action a snapshot, a delete or a named event triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Snapshot,
    /// In-place compaction of every partition.
    Compact,
    CompactOldestIntoBaseline,
    DeleteOldest,
}

impl Action {
    const NAMES: [(&'static str, Action); 4] = [
        ("snapshot", Action::Snapshot),
        ("compact", Action::Compact),
        ("compact_oldest_into_baseline", Action::CompactOldestIntoBaseline),
        ("delete_oldest", Action::DeleteOldest),
    ];

    pub fn name(self) -> &'static str {
        Action::NAMES.iter().find(|(_, a)| *a == self).map(|(n, _)| *n).expect("every action is named")
    }

    /// The operation this action asks for now, if there is one to do.
    fn decide(self, s: &Situation) -> Option<Decision> {
        match self {
            Action::Snapshot => Some(Decision::Snapshot),
            Action::Compact => Some(Decision::CompactAll),
            Action::CompactOldestIntoBaseline => s.oldest_above_baseline().map(|v| Decision::Fold(v.name.clone())),
            Action::DeleteOldest => s.volumes.first().map(|v| Decision::Delete(v.name.clone())),
        }
    }
}

/// What core 0 knows when it consults the policy.
pub(crate) struct Situation {
    pub now: u64,
    pub last_snapshot: u64,
    /// Ascending by partition.
    pub volumes: Vec<VolumeRecord>,
    pub baseline_partition: u32,
    /// Partitions holding log segments.
    pub partitions: u32,
    pub log_used_pct: u64,
    /// Per partition holding closed segments: (partition, used, live) blocks.
    pub partition_space: Vec<(u32, u64, u64)>,
    /// Blocks worth compacting for: below this, a compaction cannot gain.
    pub min_garbage: u64,
}

impl Situation {
    fn oldest_above_baseline(&self) -> Option<&VolumeRecord> {
        self.volumes.iter().find(|v| v.partition > self.baseline_partition)
    }

    fn garbage(&self) -> u64 {
        self.partition_space.iter().map(|(_, used, live)| used - live).sum()
    }
}

/// An operation a policy asks core 0 for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Snapshot,
    Delete(String),
    /// Baseline compaction of this volume.
    Fold(String),
    CompactAll,
    CompactPartition(u32),
}

/// How snapshots without a caller-given name are named.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum VolumeIdScheme {
    /// `snap-<n>`.
    #[default]
    Sequential,
    /// UTC time, `%Y%m%dT%H%M%SZ`.
    Timestamp,
    /// A template: `%Y %m %d %H %M %S` (UTC), `%s` (unix seconds), `%n`
    /// (the snapshot number), `%%`.
    Template(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub snapshot_interval_s: Option<u64>,
    pub keep_last: Option<u32>,
    pub max_age_s: Option<u64>,
    pub retention_action: RetentionAction,
    pub on_full: OnFull,
    pub log_used_pct: Option<u8>,
    pub max_partitions: Option<u32>,
    pub garbage_pct: Option<u8>,
    pub on_snapshot: Vec<Action>,
    pub on_delete: Vec<Action>,
    pub on_event: BTreeMap<String, Vec<Action>>,
    pub volume_id: VolumeIdScheme,
    /// The document as given (normalized), for `get_policy` and the checkpoint.
    pub json: String,
}

fn invalid(field: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("policy field {field}: {why}"))
}

/// The keys of `obj` must all be in `known`.
fn object<'a>(v: &'a Value, field: &str, known: &[&str]) -> Result<&'a Map<String, Value>> {
    let obj = v.as_object().ok_or_else(|| invalid(field, "must be an object"))?;
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(&format!("{field}.{k}"), &format!("unknown key (known: {})", known.join(", "))));
    }
    Ok(obj)
}

fn uint(obj: &Map<String, Value>, field: &str, key: &str, min: u64, max: u64) -> Result<Option<u64>> {
    let Some(v) = obj.get(key) else { return Ok(None) };
    let name = format!("{field}.{key}");
    let n = v.as_u64().ok_or_else(|| invalid(&name, "must be a non-negative integer"))?;
    if !(min..=max).contains(&n) {
        return Err(invalid(&name, &format!("must be in {min}..={max}")));
    }
    Ok(Some(n))
}

fn actions(v: &Value, field: &str) -> Result<Vec<Action>> {
    let list = v.as_array().ok_or_else(|| invalid(field, "must be a list of actions"))?;
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let name = a.as_str().unwrap_or_default();
            Action::NAMES.iter().find(|(n, _)| *n == name).map(|(_, a)| *a).ok_or_else(|| {
                let known: Vec<&str> = Action::NAMES.iter().map(|(n, _)| *n).collect();
                invalid(&format!("{field}[{i}]"), &format!("unknown action {a} (known: {})", known.join(", ")))
            })
        })
        .collect()
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(json: &str) -> Result<Policy> {
        if json.trim().is_empty() {
            return Ok(Policy::default());
        }
        let doc: Value =
            serde_json::from_str(json).map_err(|e| Error::InvalidArgument(format!("policy is not JSON: {e}")))?;
        Policy::from_value(&doc)
    }

    pub fn from_value(doc: &Value) -> Result<Policy> {
        let top = object(doc, "policy", &["snapshot", "retention", "compaction", "events", "volume_id"])?;
        let mut p = Policy::default();
        if let Some(v) = top.get("snapshot") {
            let o = object(v, "snapshot", &["interval_s"])?;
            p.snapshot_interval_s = uint(o, "snapshot", "interval_s", 1, u64::from(u32::MAX))?;
        }
        if let Some(v) = top.get("retention") {
            let o = object(v, "retention", &["keep_last", "max_age_s", "action", "on_full"])?;
            p.keep_last = uint(o, "retention", "keep_last", 0, u64::from(u32::MAX))?.map(|n| n as u32);
            p.max_age_s = uint(o, "retention", "max_age_s", 1, u64::MAX)?;
            p.retention_action = match o.get("action").map(|a| a.as_str()) {
                None | Some(Some("delete")) => RetentionAction::Delete,
                Some(Some("baseline")) => RetentionAction::Baseline,
                Some(_) => return Err(invalid("retention.action", "must be \"delete\" or \"baseline\"")),
            };
            p.on_full = match o.get("on_full").map(|a| a.as_str()) {
                None | Some(Some("fail")) => OnFull::Fail,
                Some(Some("delete_oldest")) => OnFull::DeleteOldest,
                Some(_) => return Err(invalid("retention.on_full", "must be \"fail\" or \"delete_oldest\"")),
            };
        }
        if let Some(v) = top.get("compaction") {
            let o = object(v, "compaction", &["log_used_pct", "max_partitions", "garbage_pct"])?;
            p.log_used_pct = uint(o, "compaction", "log_used_pct", 1, 100)?.map(|n| n as u8);
            p.max_partitions = uint(o, "compaction", "max_partitions", 1, u64::from(u32::MAX))?.map(|n| n as u32);
            p.garbage_pct = uint(o, "compaction", "garbage_pct", 1, 100)?.map(|n| n as u8);
        }
        if let Some(v) = top.get("events") {
            let o = object(v, "events", &["on_snapshot", "on_delete", "on"])?;
            if let Some(a) = o.get("on_snapshot") {
                p.on_snapshot = actions(a, "events.on_snapshot")?;
                if p.on_snapshot.contains(&Action::Snapshot) {
                    return Err(invalid("events.on_snapshot", "a snapshot may not trigger another (an endless loop)"));
                }
            }
            if let Some(a) = o.get("on_delete") {
                p.on_delete = actions(a, "events.on_delete")?;
                if p.on_delete.contains(&Action::DeleteOldest) {
                    return Err(invalid("events.on_delete", "a delete may not trigger another (an endless loop)"));
                }
            }
            if let Some(on) = o.get("on") {
                let named = on.as_object().ok_or_else(|| invalid("events.on", "must be an object"))?;
                for (name, a) in named {
                    if name.is_empty() {
                        return Err(invalid("events.on", "event names must not be empty"));
                    }
                    p.on_event.insert(name.clone(), actions(a, &format!("events.on.{name}"))?);
                }
            }
        }
        if let Some(v) = top.get("volume_id") {
            let o = object(v, "volume_id", &["scheme", "template"])?;
            let template = match o.get("template") {
                None => None,
                Some(t) => Some(t.as_str().ok_or_else(|| invalid("volume_id.template", "must be a string"))?),
            };
            p.volume_id = match o.get("scheme").map(|s| s.as_str()) {
                None | Some(Some("sequential")) => VolumeIdScheme::Sequential,
                Some(Some("timestamp")) => VolumeIdScheme::Timestamp,
                Some(Some("template")) => {
                    let t = template.ok_or_else(|| invalid("volume_id.template", "the template scheme needs one"))?;
                    // A template must expand to a valid volume id, with a
                    // timestamp as wide as they come (10 digits until 2286).
                    super::request::check_volume_name(&expand(t, WIDEST_UNIX_S, 1))
                        .map_err(|_| invalid("volume_id.template", "does not expand to a valid volume id"))?;
                    VolumeIdScheme::Template(t.to_owned())
                }
                Some(_) => {
                    return Err(invalid("volume_id.scheme", "must be \"sequential\", \"timestamp\" or \"template\""))
                }
            };
        }
        p.json = doc.to_string();
        if p.json.len() > crate::format::MAX_POLICY_LEN {
            return Err(Error::InvalidArgument(format!(
                "policy is {} bytes, at most {} are kept",
                p.json.len(),
                crate::format::MAX_POLICY_LEN
            )));
        }
        Ok(p)
    }

    /// The next operation the temporal and status rules ask for, with why.
    pub(crate) fn decide(&self, s: &Situation) -> Option<(Decision, String)> {
        if let Some(every) = self.snapshot_interval_s.filter(|&i| s.now >= s.last_snapshot.saturating_add(i)) {
            return Some((Decision::Snapshot, format!("snapshot interval of {every} s elapsed")));
        }
        let let_go = |v: &VolumeRecord, why: String| match self.retention_action {
            RetentionAction::Delete => Some((Decision::Delete(v.name.clone()), why)),
            // Already the baseline volume: nothing left to fold.
            RetentionAction::Baseline if v.partition <= s.baseline_partition => None,
            RetentionAction::Baseline => Some((Decision::Fold(v.name.clone()), why)),
        };
        if let Some(keep) = self.keep_last {
            let excess = s.volumes.len().saturating_sub(keep as usize);
            if excess > 0 {
                // Folding the first volume kept retires every older one.
                let v = match self.retention_action {
                    RetentionAction::Delete => &s.volumes[0],
                    RetentionAction::Baseline => &s.volumes[excess.min(s.volumes.len() - 1)],
                };
                let why = format!("{} volumes, keep_last is {keep}", s.volumes.len());
                if let Some(d) = let_go(v, why) {
                    return Some(d);
                }
            }
        }
        if let Some(max_age) = self.max_age_s {
            let expired: Vec<&VolumeRecord> =
                s.volumes.iter().filter(|v| v.created_unix_s.saturating_add(max_age) <= s.now).collect();
            let v = match self.retention_action {
                RetentionAction::Delete => expired.first(),
                RetentionAction::Baseline => expired.last(),
            };
            if let Some(d) = v.and_then(|v| let_go(v, format!("volume {} is older than {max_age} s", v.name))) {
                return Some(d);
            }
        }
        if let Some(max) = self.max_partitions.filter(|&m| s.partitions > m) {
            if let Some(v) = s.oldest_above_baseline() {
                let why = format!("{} partitions hold log segments, max_partitions is {max}", s.partitions);
                return Some((Decision::Fold(v.name.clone()), why));
            }
        }
        if let Some(pct) = self.log_used_pct.filter(|&p| s.log_used_pct > u64::from(p)) {
            if s.garbage() >= s.min_garbage {
                return Some((Decision::CompactAll, format!("log {} % used, log_used_pct is {pct}", s.log_used_pct)));
            }
        }
        if let Some(pct) = self.garbage_pct {
            for &(p, used, live) in &s.partition_space {
                if used - live >= s.min_garbage && (used - live) * 100 > used * u64::from(pct) {
                    let why =
                        format!("partition {p} is {} % garbage, garbage_pct is {pct}", (used - live) * 100 / used);
                    return Some((Decision::CompactPartition(p), why));
                }
            }
        }
        None
    }

    /// The operations `actions` ask for now.
    pub(crate) fn decide_actions(actions: &[Action], s: &Situation) -> Vec<Decision> {
        actions.iter().filter_map(|a| a.decide(s)).collect()
    }

    /// The id of snapshot number `n` taken at `now` (unix seconds), before
    /// any collision is resolved.
    pub fn volume_id(&self, now: u64, n: u64) -> String {
        match &self.volume_id {
            VolumeIdScheme::Sequential => format!("snap-{n}"),
            VolumeIdScheme::Timestamp => expand("%Y%m%dT%H%M%SZ", now, n),
            VolumeIdScheme::Template(t) => expand(t, now, n),
        }
    }
}

/// 2099-12-31T23:59:59Z: what a template is checked with.
const WIDEST_UNIX_S: u64 = 4_102_444_799;

/// Expands a volume id template at `now` (UTC) for snapshot number `n`.
pub fn expand(template: &str, now: u64, n: u64) -> String {
    let (y, mo, d) = civil_from_days((now / 86_400) as i64);
    let secs = now % 86_400;
    let mut out = String::new();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &format!("{y:04}"),
            Some('m') => out += &format!("{mo:02}"),
            Some('d') => out += &format!("{d:02}"),
            Some('H') => out += &format!("{:02}", secs / 3600),
            Some('M') => out += &format!("{:02}", secs / 60 % 60),
            Some('S') => out += &format!("{:02}", secs % 60),
            Some('s') => out += &now.to_string(),
            Some('n') => out += &n.to_string(),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let p = Policy::parse(
            r#"{"snapshot": {"interval_s": 3600}, "retention": {"keep_last": 24, "max_age_s": 604800, "action": "baseline", "on_full": "delete_oldest"},
                "compaction": {"log_used_pct": 80, "max_partitions": 64, "garbage_pct": 50},
                "events": {"on_snapshot": ["compact_oldest_into_baseline"], "on": {"backup-done": ["snapshot"]}},
                "volume_id": {"scheme": "template", "template": "nightly-%Y%m%d"}}"#,
        )
        .unwrap();
        assert_eq!(p.snapshot_interval_s, Some(3600));
        assert_eq!((p.keep_last, p.max_age_s, p.retention_action), (Some(24), Some(604800), RetentionAction::Baseline));
        assert_eq!(p.on_full, OnFull::DeleteOldest);
        assert_eq!((p.log_used_pct, p.max_partitions, p.garbage_pct), (Some(80), Some(64), Some(50)));
        assert_eq!(p.on_snapshot, [Action::CompactOldestIntoBaseline]);
        assert_eq!(p.on_event["backup-done"], [Action::Snapshot]);
        assert_eq!(p.volume_id(1_700_000_000, 7), "nightly-20231114");
        assert_eq!(Policy::parse(&p.json).unwrap(), p, "the stored form parses back");
    }

    #[test]
    fn invalid_documents_name_the_field() {
        for (doc, field) in [
            (r#"{"snapshot": {"interval_s": -1}}"#, "snapshot.interval_s"),
            (r#"{"snapshot": {"every": 5}}"#, "snapshot.every"),
            (r#"{"retention": {"action": "shred"}}"#, "retention.action"),
            (r#"{"retention": {"on_full": "panic"}}"#, "retention.on_full"),
            (r#"{"compaction": {"log_used_pct": 150}}"#, "compaction.log_used_pct"),
            (r#"{"events": {"on": {"x": ["reboot"]}}}"#, "events.on.x[0]"),
            (r#"{"volume_id": {"scheme": "template"}}"#, "volume_id.template"),
            (r#"{"volume_id": {"scheme": "template", "template": "a b"}}"#, "volume_id.template"),
            (r#"{"colour": 1}"#, "policy.colour"),
            (r#"[1]"#, "policy"),
        ] {
            let e = Policy::parse(doc).unwrap_err().to_string();
            assert!(e.contains(field), "{doc}: {e} does not name {field}");
        }
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(expand("%Y%m%dT%H%M%SZ", 0, 1), "19700101T000000Z");
        assert_eq!(expand("%Y-%m-%d %H:%M:%S", 951_827_696, 1), "2000-02-29 12:34:56");
        assert_eq!(expand("s%n-%s%%", 5, 3), "s3-5%");
    }
}
