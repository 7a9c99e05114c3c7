//! Writes the seed corpus, `fuzz/corpus/<target>/`: metadata blocks made by
//! the project's own encoders, and a few NBD conversations and JSON-RPC
//! requests. Deterministic, so rerunning it after a format change only
//! changes what changed:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds
//! ```

use ilog_bdev::copy::stream::{Header, StreamWriter};
use ilog_bdev::format::{
    Checkpoint, EntryKind, FormatOptions, Geometry, SegmentHeader, SegmentId, SegmentRecord, SummaryBlock,
    SummaryEntry, SummaryKey, Superblock, VolumeRecord,
};
use ilog_fuzz::{mode, NBD_EXPORT, NBD_READ_ONLY};
use ilog_rpc::ilog::METHODS;
use ilog_tgt::nbd::{
    CMD_DISC, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES,
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, IHAVEOPT, INFO_BLOCK_SIZE, INFO_NAME, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO,
    OPT_INFO, OPT_LIST, REQUEST_MAGIC,
};
use serde_json::{json, Value};
use std::path::Path;

const UUID: [u8; 16] = *b"ilog-fuzz-seeds!";

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let seeds = [
        ("superblock", superblock()),
        ("segment", segment()),
        ("checkpoint", checkpoint()),
        ("nbd", nbd()),
        ("rpc_server", rpc_server()),
        ("rpc_params", rpc_params()),
        ("copy_stream", copy_stream()),
    ];
    for (target, seeds) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
    }
    Ok(())
}

type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Copy streams as `bdev_ilog_copy` writes them: a full one and an
/// incremental with zeros.
fn copy_stream() -> Seeds {
    let header = |base: Option<&str>, data_blocks| Header {
        source_uuid: UUID,
        block_size: 512,
        volume_blocks: 1 << 14,
        lba_start: 0,
        lba_count: 1 << 14,
        created_unix_s: 1_700_000_000,
        volume: "snap-2".into(),
        base_volume: base.map(str::to_owned),
        data_blocks,
    };
    let mut full = StreamWriter::new(Vec::new(), header(None, 5)).expect("in memory");
    full.data(8, &[0x5a; 3 * 512]).expect("in memory");
    full.data(100, &[0xa5; 2 * 512]).expect("in memory");
    let mut incr = StreamWriter::new(Vec::new(), header(Some("snap-1"), 1)).expect("in memory");
    incr.zero(0, 64).expect("in memory");
    incr.data(4000, &[0x11; 512]).expect("in memory");
    incr.zero(9000, 7).expect("in memory");
    vec![
        ("full", full.finish().expect("in memory").0),
        ("incremental", incr.finish().expect("in memory").0),
        ("empty", StreamWriter::new(Vec::new(), header(None, 0)).expect("in memory").finish().expect("in memory").0),
    ]
}

/// `[mode] block`.
fn with_mode(flags: u8, block: &[u8]) -> Vec<u8> {
    [&[flags][..], block].concat()
}

fn superblock() -> Seeds {
    let small = FormatOptions { stripe_bytes: 64 << 10, segment_bytes: 256 << 10, ..FormatOptions::default() };
    let geometries = [Geometry::plan(4096, 1 << 15, &FormatOptions::default()), Geometry::plan(512, 1 << 16, &small)];
    let [g4k, g512] = geometries.map(|g| {
        let mut block = vec![0; 128];
        Superblock { uuid: UUID, generation: 3, geometry: g.expect("a geometry") }.encode(&mut block);
        block
    });
    vec![
        ("4k-sealed", with_mode(mode::SEAL, &g4k)),
        ("4k", with_mode(0, &g4k)),
        ("512-sealed", with_mode(mode::SEAL, &g512)),
    ]
}

fn segment() -> Seeds {
    let base = 5u32;
    // `[mode] [base partition] block`.
    let seed = |flags, block: &[u8]| [&[flags][..], &base.to_le_bytes(), block].concat();
    let mut header = vec![0; 64];
    SegmentHeader { uuid: UUID, seq: 42, epoch: 3, stream: 1, partition: base }.encode(&mut header);
    let key = SummaryKey { id: SegmentId { epoch: 3, seq: 42 }, base };
    let entry = |i: u32, kind| SummaryEntry {
        lba: u64::from(i) * 8,
        blocks: i % 4 + 1,
        data_offset: if kind == EntryKind::Zero { u32::MAX } else { 1 + i * 4 },
        data_crc: i.wrapping_mul(0x9e37_79b9),
        kind,
        partition: base + i % 3,
    };
    let summary = |group, entries: &[SummaryEntry]| {
        let mut block = vec![0; 512];
        SummaryBlock::encode(&UUID, key, group, 1, entries, &mut block);
        block
    };
    let few = [entry(0, EntryKind::Data), entry(1, EntryKind::Zero), entry(2, EntryKind::Hole)];
    // A 512-byte block holds 19 entries: a full group, so a chain goes on.
    let full: Vec<_> = (0..19).map(|i| entry(i, EntryKind::Data)).collect();
    vec![
        ("header-sealed", seed(mode::SEAL, &header)),
        ("header", seed(0, &header)),
        ("summary-sealed", seed(mode::SEAL | mode::SUMMARY, &summary(0, &few))),
        ("summary", seed(mode::SUMMARY, &summary(0, &few))),
        ("summary-full", seed(mode::SEAL | mode::SUMMARY, &summary(0, &full))),
        ("summary-group-1", seed(mode::SEAL | mode::SUMMARY, &summary(1, &few[..1]))),
    ]
}

fn checkpoint() -> Seeds {
    let full = Checkpoint {
        generation: 9,
        uuid: UUID,
        seq_high: 77,
        epoch: 3,
        next_partition: 5,
        next_snapshot_number: 4,
        clean: true,
        baseline_partition: 2,
        draining: Some(3),
        drained_below: 5 << 20 | 17,
        window: Some(vec![9, 4]),
        replay_window_kib: 1024,
        policy: policy().to_string(),
        baseline_stripes: vec![0b101, 0, 0x80],
        volumes: vec![
            VolumeRecord { name: "snap-1".into(), partition: 1, created_unix_s: 1_700_000_000 },
            VolumeRecord { name: "before-upgrade".into(), partition: 4, created_unix_s: 1_700_000_600 },
        ],
        segments: vec![
            SegmentRecord { segno: 3, seq: 70, stream: 1, epoch: 2, partition: 4, trusted_entries: 12, open: true },
            SegmentRecord { segno: 7, seq: 71, stream: 0, epoch: 3, partition: 5, trusted_entries: 0, open: false },
        ],
    };
    let empty = Checkpoint { uuid: UUID, window: Some(Vec::new()), ..Checkpoint::default() };
    let [full, empty] = [full, empty].map(|c| {
        let mut slot = vec![0; c.encoded_len()];
        c.encode(&mut slot);
        slot
    });
    vec![
        ("full-sealed", with_mode(mode::SEAL, &full)),
        ("full", with_mode(0, &full)),
        ("empty-sealed", with_mode(mode::SEAL, &empty)),
    ]
}

/// The policy document of `bdev/src/engine/policy.rs`.
fn policy() -> Value {
    json!({
        "snapshot": {"interval_s": 3600},
        "retention": {"keep_last": 24, "max_age_s": 604800, "action": "baseline", "on_full": "delete_oldest"},
        "compaction": {"log_used_pct": 80, "max_partitions": 64, "garbage_pct": 50},
        "events": {"on_snapshot": ["compact_oldest_into_baseline"], "on_delete": [], "on": {"backup-done": ["snapshot"]}},
        "volume_id": {"scheme": "template", "template": "nightly-%Y%m%d"}
    })
}

/// The one option value the server does not define: it refuses it.
const OPT_STRUCTURED_REPLY: u32 = 8;

fn option(opt: u32, data: &[u8]) -> Vec<u8> {
    [&IHAVEOPT.to_be_bytes()[..], &opt.to_be_bytes(), &(data.len() as u32).to_be_bytes(), data].concat()
}

/// NBD_OPT_INFO/NBD_OPT_GO data.
fn info_request(name: &str, infos: &[u16]) -> Vec<u8> {
    let infos: Vec<u8> = infos.iter().flat_map(|i| i.to_be_bytes()).collect();
    let count = (infos.len() / 2) as u16;
    [&(name.len() as u32).to_be_bytes()[..], name.as_bytes(), &count.to_be_bytes(), &infos].concat()
}

fn request(cmd: u16, flags: u16, offset: u64, len: u32) -> Vec<u8> {
    let handle = u64::from(cmd) << 32 | offset;
    let header =
        [&REQUEST_MAGIC.to_be_bytes()[..], &flags.to_be_bytes(), &cmd.to_be_bytes(), &handle.to_be_bytes()].concat();
    let mut bytes = [header, offset.to_be_bytes().to_vec(), len.to_be_bytes().to_vec()].concat();
    if cmd == CMD_WRITE {
        bytes.extend((0..len).map(|i| i as u8));
    }
    bytes
}

fn nbd() -> Seeds {
    let newstyle = (FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes();
    let transmission = [
        request(CMD_WRITE, CMD_FLAG_FUA, 0, 1024),
        request(CMD_READ, 0, 0, 1024),
        request(CMD_FLUSH, 0, 0, 0),
        request(CMD_TRIM, 0, 512, 512),
        request(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 1024, 512),
        request(CMD_READ, 0, 32 << 10, 512),
        request(CMD_DISC, 0, 0, 0),
    ]
    .concat();
    let go =
        [&[0][..], &newstyle, &option(OPT_GO, &info_request(NBD_EXPORT, &[INFO_NAME, INFO_BLOCK_SIZE])), &transmission]
            .concat();
    let haggle = [
        &[0][..],
        &FLAG_C_FIXED_NEWSTYLE.to_be_bytes(),
        &option(OPT_LIST, &[]),
        &option(OPT_INFO, &info_request("", &[])),
        &option(OPT_INFO, &info_request("other", &[])),
        &option(OPT_GO, &[0, 0, 0, 9]),
        &option(OPT_STRUCTURED_REPLY, &[]),
        &option(OPT_EXPORT_NAME, NBD_EXPORT.as_bytes()),
        &request(CMD_READ, 0, 512, 512),
        &request(CMD_DISC, 0, 0, 0),
    ]
    .concat();
    let read_only = [&[NBD_READ_ONLY][..], &newstyle, &option(OPT_GO, &info_request("", &[])), &transmission].concat();
    let abort = [&[0][..], &newstyle, &option(OPT_ABORT, &[])].concat();
    vec![("go", go), ("haggle", haggle), ("read-only", read_only), ("abort", abort)]
}

/// Valid params of every method, as `METHODS` lists them.
fn params() -> Vec<(&'static str, Value)> {
    let params = vec![
        (
            "bdev_ilog_create",
            json!({"name": "ilog0", "base_bdev_name": "Malloc0", "stripe_size_kib": 1024, "segment_size_kib": 4096,
                   "log_percent": 18, "max_volumes": 1024, "replay_window_mib": 1024}),
        ),
        ("bdev_ilog_delete", json!({"name": "ilog0"})),
        ("bdev_ilog_get_bdevs", json!({"name": "ilog0"})),
        ("bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": "before-upgrade"})),
        ("bdev_ilog_get_volumes", json!({"name": "ilog0"})),
        ("bdev_ilog_delete_volume", json!({"name": "ilog0", "volume": "snap-1"})),
        ("bdev_ilog_log_read", json!({"name": "ilog0", "cursor": 77, "count": 4096, "with_data": true})),
        ("bdev_ilog_get_stats", json!({"name": "ilog0"})),
        ("bdev_ilog_compact", json!({"name": "ilog0", "volume": "snap-1", "mode": "baseline", "background": true})),
        ("bdev_ilog_set_policy", json!({"name": "ilog0", "policy": policy()})),
        ("bdev_ilog_get_policy", json!({"name": "ilog0"})),
        ("bdev_ilog_event", json!({"name": "ilog0", "event": "backup-done"})),
        (
            "bdev_ilog_diff",
            json!({"name": "ilog0", "volume": "snap-2", "base_volume": "snap-1", "lba_start": 0, "lba_count": 8}),
        ),
        (
            "bdev_ilog_copy",
            json!({"name": "ilog0", "volume": "snap-2", "base_volume": "snap-1", "target": "/var/tmp/s", "resume_token": "00"}),
        ),
        ("bdev_ilog_restore", json!({"name": "ilog1", "source": "Malloc3", "resume_token": "00"})),
        ("bdev_ilog_get_jobs", json!({"name": "ilog0"})),
    ];
    assert!(params.iter().map(|(m, _)| *m).eq(METHODS.iter().copied()), "METHODS changed: update the seeds");
    params
}

fn rpc_params() -> Seeds {
    let mut seeds: Seeds = params()
        .into_iter()
        .enumerate()
        .map(|(i, (method, params))| (method, [vec![i as u8], params.to_string().into_bytes()].concat()))
        .collect();
    seeds.push(("no-params", vec![2]));
    seeds
}

fn rpc_server() -> Seeds {
    let requests: String = params()
        .into_iter()
        .enumerate()
        .map(|(id, (method, params))| json!({"jsonrpc": "2.0", "method": method, "id": id, "params": params}))
        .map(|request| format!("{request}\n"))
        .collect();
    let batch = json!([
        {"jsonrpc": "2.0", "method": "bdev_ilog_get_bdevs", "id": "a"},
        {"jsonrpc": "2.0", "method": "bdev_ilog_snapshot", "params": {"name": "ilog0"}},
        {"method": "bdev_malloc_create", "id": 2, "params": [1, 2]}
    ]);
    let invalid = concat!(
        r#"[]{"jsonrpc":"1.0","method":"bdev_ilog_delete","id":1}"#,
        r#"{"method":7,"id":[1]} {"method":"bdev_ilog_delete","params":"ilog0","id":null}"#,
        r#"{"method":"bdev_ilog_delete","id":2,"extra":true}"#,
        "\n{\"method\":\"bdev_ilog_delete\",\"id\":3,",
    );
    vec![
        ("requests", requests.into_bytes()),
        ("batch", batch.to_string().into_bytes()),
        ("invalid", invalid.as_bytes().to_vec()),
        ("parse-error", br#"{"method":"bdev_ilog_get_stats","id":1}{"id":}"#.to_vec()),
    ]
}
