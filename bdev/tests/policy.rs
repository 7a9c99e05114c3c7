//! Storage-management policies in the simulator, on its clock: temporal
//! snapshots and retention, status compaction, events, volume ids, and
//! the policy document's validation and persistence.

mod common;

use common::io::{lend, lend_mut};
use common::sim::small_bdev;
use ilog_bdev::engine::{CompactMode, Reply, Request, View};
use ilog_bdev::runtime::sim::Sim;
use ilog_bdev::Error;

const BS: usize = 4096;

struct Bdev {
    sim: Sim,
    cores: u32,
    next_token: u64,
}

impl Bdev {
    fn new(seed: u64, cores: u32) -> Bdev {
        Bdev { sim: small_bdev(seed, 4096, BS as u32, cores), cores, next_token: 1 }
    }

    /// Submits and runs until every core is idle; polls some more first so
    /// core 0 consults the policy at the current simulated time.
    /// A buffer `req` points at must outlive the call.
    fn call(&mut self, req: Request) -> Result<Reply, Error> {
        let token = self.next_token;
        self.next_token += 1;
        // The run ends with every core idle, the request completed,
        // before the call returns; the caller's buffer outlives the call.
        self.sim.submit(token as u32 % self.cores, token, req).unwrap();
        let mut out = None;
        self.sim.run_until_idle(&mut |t, r| {
            if t == token {
                out = Some(r);
            }
        });
        out.expect("completed")
    }

    /// Lets simulated time pass, `secs` at a time, `times` times.
    fn wait(&mut self, secs: u64, times: u32) {
        for _ in 0..times {
            self.sim.clock.advance(secs);
            for _ in 0..16 * self.cores {
                self.sim.step(&mut |_, r| r.map(drop).expect("no client request is in flight"));
            }
            self.sim.run_until_idle(&mut |_, r| r.map(drop).expect("no client request is in flight"));
        }
    }

    fn write(&mut self, lba: u64, fill: u8) {
        let buf = vec![fill; BS];
        self.call(Request::Write { lba, blocks: 1, buf: lend(&buf) }).unwrap();
    }

    fn read(&mut self, lba: u64, view: View) -> u8 {
        let mut buf = vec![0xee; BS];
        self.call(Request::Read { lba, blocks: 1, buf: lend_mut(&mut buf), view }).unwrap();
        assert!(buf.iter().all(|&b| b == buf[0]), "block {lba} is not one fill byte");
        buf[0]
    }

    fn set_policy(&mut self, json: &str) -> Result<Reply, Error> {
        self.call(Request::SetPolicy { policy: json.into() })
    }

    /// (name, partition) of every volume, oldest first.
    fn volumes(&mut self) -> Vec<(String, u32)> {
        let Ok(Reply::Volumes(mut v)) = self.call(Request::ListVolumes) else { panic!("list") };
        v.sort_by_key(|v| v.partition);
        v.into_iter().map(|v| (v.name, v.partition)).collect()
    }

    fn names(&mut self) -> Vec<String> {
        self.volumes().into_iter().map(|v| v.0).collect()
    }

    fn partition(&mut self, name: &str) -> u32 {
        self.volumes().into_iter().find(|v| v.0 == name).unwrap_or_else(|| panic!("no volume {name}")).1
    }

    fn stats(&mut self) -> ilog_bdev::engine::Stats {
        let Ok(Reply::Stats(s)) = self.call(Request::Stats) else { panic!("stats") };
        s
    }

    fn remount(&mut self) {
        self.call(Request::Close).unwrap();
        self.sim.unmount();
        self.sim.mount(self.cores).unwrap();
    }
}

#[test]
fn interval_snapshots_keep_the_last_k() {
    let mut b = Bdev::new(1, 2);
    b.set_policy(r#"{"snapshot": {"interval_s": 60}, "retention": {"keep_last": 3}}"#).unwrap();
    b.wait(30, 1);
    assert!(b.names().is_empty(), "no snapshot before the interval");
    for i in 1..=5u8 {
        b.write(7, i);
        b.wait(60, 1);
        let names = b.names();
        let expect: Vec<String> = (i.saturating_sub(2).max(1)..=i).map(|n| format!("snap-{n}")).collect();
        assert_eq!(names, expect, "after {i} intervals");
    }
    // Each kept volume holds what was current when it was taken.
    for n in 3..=5u8 {
        let p = b.partition(&format!("snap-{n}"));
        assert_eq!(b.read(7, View::Volume(p)), n);
    }
    assert!(b.stats().policy_actions >= 7, "5 snapshots and 2 deletes were policy actions");
}

#[test]
fn expired_volumes_fold_into_the_baseline() {
    let mut b = Bdev::new(2, 1);
    b.set_policy(r#"{"snapshot": {"interval_s": 10}, "retention": {"max_age_s": 35, "action": "baseline"}}"#).unwrap();
    for i in 1..=6u8 {
        b.write(u64::from(i), i);
        b.write(100, i);
        b.wait(10, 1);
    }
    // Taken at 10, 20, .., 60 s; at 60 s those of 10 and 20 are expired: the
    // newest of them (snap-2) went to the baseline, snap-1 was retired.
    let names = b.names();
    assert_eq!(names, ["snap-2", "snap-3", "snap-4", "snap-5", "snap-6"]);
    let p2 = b.partition("snap-2");
    assert_eq!((b.read(1, View::Volume(p2)), b.read(2, View::Volume(p2)), b.read(3, View::Volume(p2))), (1, 2, 0));
    assert_eq!(b.read(100, View::Volume(p2)), 2);
    let p4 = b.partition("snap-4");
    assert_eq!((b.read(1, View::Volume(p4)), b.read(4, View::Volume(p4)), b.read(100, View::Volume(p4))), (1, 4, 4));
    assert_eq!((b.read(1, View::Current), b.read(6, View::Current), b.read(100, View::Current)), (1, 6, 6));
    let s = b.stats();
    assert!(s.drains > 0 && s.baseline_partition >= p2, "snap-2 and what is older drained into the baseline: {s:?}");
    // Time passes with no new snapshots due to expire: the baseline volume
    // stays, others fold in turn, and contents survive a remount.
    b.set_policy(r#"{"retention": {"max_age_s": 35, "action": "baseline"}}"#).unwrap();
    b.wait(10, 2);
    assert_eq!(b.names(), ["snap-4", "snap-5", "snap-6"]);
    b.remount();
    let p4 = b.partition("snap-4");
    assert_eq!((b.read(1, View::Volume(p4)), b.read(4, View::Volume(p4)), b.read(5, View::Volume(p4))), (1, 4, 0));
    assert_eq!((b.read(2, View::Current), b.read(6, View::Current)), (2, 6));
}

#[test]
fn named_events_and_snapshot_events_run_their_actions() {
    let mut b = Bdev::new(3, 2);
    let policy = r#"{"events": {"on": {"backup-done": ["snapshot"]},
                                 "on_snapshot": ["compact_oldest_into_baseline"]}}"#;
    b.set_policy(policy).unwrap();
    b.write(5, 1);
    b.call(Request::Event { name: "backup-done".into() }).unwrap();
    b.wait(1, 1);
    assert_eq!(b.names(), ["snap-1"]);
    b.write(5, 2);
    b.call(Request::Event { name: "backup-done".into() }).unwrap();
    b.wait(1, 1);
    // Each snapshot folds the oldest volume above the baseline: snap-2 is
    // the baseline volume now, snap-1 retired.
    assert_eq!(b.names(), ["snap-2"]);
    let p = b.partition("snap-2");
    assert_eq!((b.read(5, View::Volume(p)), b.read(5, View::Current)), (2, 2));
    let err = b.call(Request::Event { name: "backup-failed".into() }).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("backup-failed")), "{err}");
}

#[test]
fn a_storm_of_one_event_runs_its_actions_once_while_they_are_queued() {
    let mut b = Bdev::new(14, 2);
    b.set_policy(r#"{"events": {"on": {"backup-done": ["snapshot"]}}}"#).unwrap();
    // A snapshot in flight keeps the actions queued behind it.
    b.sim.submit(0, 900, Request::Snapshot { name: Some("by-hand".into()) }).unwrap();
    for token in 1000..1500 {
        b.sim.submit(token as u32 % 2, token, Request::Event { name: "backup-done".into() }).unwrap();
    }
    b.sim.run_until_idle(&mut |t, r| assert!(r.is_ok(), "request {t}: {r:?}"));
    let names = b.names();
    assert!(names.len() <= 3 && names.len() >= 2, "500 events took {} snapshots: {names:?}", names.len() - 1);
    assert!(b.stats().policy_actions <= 2, "{} policy actions", b.stats().policy_actions);
    // Once they ran, the event runs them again.
    b.call(Request::Event { name: "backup-done".into() }).unwrap();
    b.wait(1, 1);
    assert_eq!(b.names().len(), names.len() + 1);
}

#[test]
fn volume_ids_follow_the_scheme() {
    let mut b = Bdev::new(4, 1);
    b.set_policy(r#"{"volume_id": {"scheme": "timestamp"}}"#).unwrap();
    b.call(Request::Snapshot { name: None }).unwrap();
    b.call(Request::Snapshot { name: None }).unwrap();
    assert_eq!(b.names(), ["20231114T221320Z", "20231114T221320Z-2"], "same second: made unique");
    b.set_policy(r#"{"volume_id": {"scheme": "template", "template": "nightly-%Y%m%d-%n"}}"#).unwrap();
    b.wait(86_400, 1);
    b.call(Request::Snapshot { name: Some("by-hand".into()) }).unwrap();
    b.call(Request::Snapshot { name: None }).unwrap();
    assert_eq!(b.names()[2..], ["by-hand", "nightly-20231115-3"]);
}

#[test]
fn a_generated_id_too_long_with_its_suffix_fails_that_snapshot_alone() {
    let mut b = Bdev::new(11, 2);
    let longest = "a".repeat(ilog_bdev::format::MAX_VOLUME_NAME);
    b.set_policy(&format!(r#"{{"volume_id": {{"scheme": "template", "template": "{longest}"}}}}"#)).unwrap();
    b.write(3, 1);
    b.call(Request::Snapshot { name: None }).unwrap();
    // The second id needs the suffix "-2": one character too many.
    let err = b.call(Request::Snapshot { name: None }).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("volume id")), "{err}");
    // Nothing sealed, the bdev serves on, and a named snapshot still works.
    b.write(3, 2);
    b.call(Request::Snapshot { name: Some("by-hand".into()) }).unwrap();
    assert_eq!(b.names(), [longest.as_str(), "by-hand"]);
    let (first, second) = (b.partition(&longest), b.partition("by-hand"));
    assert_eq!(second, first + 1, "the failed snapshot sealed no partition");
    assert_eq!((b.read(3, View::Volume(first)), b.read(3, View::Volume(second))), (1, 2));
    b.remount();
    assert_eq!(b.names(), [longest.as_str(), "by-hand"], "the checkpoint encodes the longest id");
    // %n at the 10th snapshot: 77 characters plus two digits.
    b.set_policy(&format!(r#"{{"volume_id": {{"scheme": "template", "template": "{}%n"}}}}"#, "b".repeat(77))).unwrap();
    // Numbers 2 to 9 fit; the failed snapshot took no number.
    let results: Vec<bool> = (0..9).map(|_| b.call(Request::Snapshot { name: None }).is_ok()).collect();
    assert_eq!(results, [[true; 8].as_slice(), &[false]].concat(), "only the 10th id is too long");
    b.write(4, 3);
    assert_eq!(b.read(4, View::Current), 3);
}

#[test]
fn a_template_too_long_once_its_timestamp_expands_is_refused() {
    let mut b = Bdev::new(12, 1);
    let template = format!("{}%s", "c".repeat(70));
    let err =
        b.set_policy(&format!(r#"{{"volume_id": {{"scheme": "template", "template": "{template}"}}}}"#)).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("volume_id.template")), "{err}");
}

#[test]
fn the_volume_limit_is_its_own_error_naming_the_limit() {
    let mut b = Bdev::new(13, 1);
    let max = common::sim::small_format(BS as u32).max_volumes;
    for i in 0..max {
        b.call(Request::Snapshot { name: Some(format!("v{i}")) }).unwrap();
    }
    let err = b.call(Request::Snapshot { name: None }).unwrap_err();
    assert!(matches!(err, Error::TooManyVolumes { max: m } if m == max), "{err}");
    assert_eq!(err.errno(), libc::EDQUOT);
    assert!(err.to_string().contains(&max.to_string()), "{err}");
}

#[test]
fn an_invalid_policy_is_refused_and_changes_nothing() {
    let mut b = Bdev::new(5, 1);
    let good = r#"{"snapshot":{"interval_s":3600}}"#;
    b.set_policy(good).unwrap();
    for (bad, field) in [
        (r#"{"snapshot": {"interval_s": "hourly"}}"#, "snapshot.interval_s"),
        (r#"{"retention": {"keep": 3}}"#, "retention.keep"),
        (r#"{"events": {"on_snapshot": ["snapshot"]}}"#, "events.on_snapshot"),
        ("{not json", "not JSON"),
    ] {
        let err = b.set_policy(bad).unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains(field)), "{bad}: {err}");
    }
    assert_eq!(b.call(Request::GetPolicy).unwrap(), Reply::Policy(good.into()));
    b.remount();
    assert_eq!(b.call(Request::GetPolicy).unwrap(), Reply::Policy(good.into()), "the policy is in the checkpoint");
    b.set_policy("").unwrap();
    assert_eq!(b.call(Request::GetPolicy).unwrap(), Reply::Policy("{}".into()));
}

#[test]
fn a_garbage_ratio_policy_compacts_partitions() {
    let mut b = Bdev::new(6, 2);
    // The oldest volume drains into the baseline; what is written after it
    // stays in the log.
    b.write(100, 1);
    b.call(Request::Snapshot { name: Some("base".into()) }).unwrap();
    // Overwrite a small range many times: most of the log is garbage.
    for round in 0..40u8 {
        for lba in 0..32 {
            b.write(lba, round);
        }
    }
    b.call(Request::Snapshot { name: Some("s".into()) }).unwrap();
    let before = b.stats();
    assert!(before.garbage_bytes > before.live_bytes, "the workload made garbage");
    b.set_policy(r#"{"compaction": {"garbage_pct": 50}}"#).unwrap();
    b.wait(1, 5);
    let after = b.stats();
    assert!(after.compactions > before.compactions && after.policy_actions > 0, "{after:?}");
    assert!(after.garbage_bytes * 2 < before.garbage_bytes, "{before:?} -> {after:?}");
    let p = b.partition("s");
    for lba in 0..32 {
        assert_eq!((b.read(lba, View::Volume(p)), b.read(lba, View::Current)), (39, 39));
    }
}

#[test]
fn baseline_compaction_by_request() {
    let mut b = Bdev::new(7, 2);
    b.write(1, 1);
    b.call(Request::Snapshot { name: Some("a".into()) }).unwrap();
    b.write(1, 2);
    b.write(2, 2);
    b.call(Request::Snapshot { name: Some("b".into()) }).unwrap();
    b.write(2, 3);
    b.call(Request::Compact { volume: None, mode: CompactMode::Baseline }).unwrap();
    assert_eq!(b.names(), ["a", "b"], "the oldest volume folds; none is older");
    b.call(Request::Compact { volume: Some("b".into()), mode: CompactMode::Baseline }).unwrap();
    assert_eq!(b.names(), ["b"], "folding b retires a");
    let p = b.partition("b");
    assert_eq!((b.read(1, View::Volume(p)), b.read(2, View::Volume(p))), (2, 2));
    assert_eq!((b.read(1, View::Current), b.read(2, View::Current)), (2, 3));
    // The oldest volume is in the baseline already: nothing to do.
    b.call(Request::Compact { volume: None, mode: CompactMode::Baseline }).unwrap();
    assert_eq!(b.names(), ["b"]);
    // Without volumes, a baseline compaction drains the whole log.
    b.call(Request::DeleteVolume { name: "b".into() }).unwrap();
    b.write(3, 4);
    b.call(Request::Compact { volume: None, mode: CompactMode::Baseline }).unwrap();
    let s = b.stats();
    assert_eq!(s.baseline_partition + 1, s.open_partition, "everything written drained: {s:?}");
    assert_eq!((b.read(1, View::Current), b.read(2, View::Current), b.read(3, View::Current)), (2, 3, 4));
}

#[test]
fn the_volumes_generation_moves_with_every_change_of_the_table() {
    let mut b = Bdev::new(8, 2);
    let generation = |b: &Bdev| b.sim.submitter().volumes_generation();
    let g = generation(&b);
    b.call(Request::Snapshot { name: Some("a".into()) }).unwrap();
    assert_eq!(generation(&b), g + 1, "a snapshot by request");
    b.write(3, 1);
    b.call(Request::Compact { volume: None, mode: CompactMode::InPlace }).unwrap();
    b.call(Request::Flush).unwrap();
    b.stats();
    assert_eq!(generation(&b), g + 1, "nothing else changes the table");
    b.set_policy(r#"{"events": {"on": {"backup-done": ["snapshot"]}}, "retention": {"keep_last": 1}}"#).unwrap();
    b.call(Request::Event { name: "backup-done".into() }).unwrap();
    b.wait(1, 1);
    assert_eq!(b.names(), ["snap-1"]);
    assert_eq!(generation(&b), g + 3, "the policy's snapshot, then its retention delete");
}

/// Lists the volumes after every simulator step while `req` runs: no list
/// may show its change before `req` completes, every list after it must.
fn listed_only_once_published(b: &mut Bdev, req: Request, name: &str, added: bool) {
    assert!(!req.has_buffer(), "a volume change");
    b.sim.submit(0, 1, req).unwrap();
    let (mut done, mut token) = (false, 2);
    while !done {
        b.sim.submit(1, token, Request::ListVolumes).unwrap();
        token += 1;
        b.sim.step(&mut |t, r| match r {
            _ if t == 1 => done = true,
            Ok(Reply::Volumes(_)) if done => {}
            Ok(Reply::Volumes(vs)) => {
                let listed = vs.iter().any(|v| v.name == name);
                assert_eq!(listed, !added, "{name} listed before its change was published");
            }
            other => panic!("{other:?}"),
        });
    }
    b.sim.run_until_idle(&mut |_, r| assert!(matches!(r, Ok(Reply::Volumes(_))), "{r:?}"));
    assert_eq!(b.names().contains(&name.to_owned()), added);
}

#[test]
fn volumes_are_listed_once_every_core_reads_by_them() {
    for seed in 0..8 {
        let mut b = Bdev::new(100 + seed, 2);
        b.write(1, 1);
        listed_only_once_published(&mut b, Request::Snapshot { name: Some("s".into()) }, "s", true);
        listed_only_once_published(&mut b, Request::DeleteVolume { name: "s".into() }, "s", false);
    }
}
