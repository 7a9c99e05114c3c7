//! The log cursor with data: a batch carries at most
//! `MAX_LOG_READ_DATA_BYTES` of data, says when that ended it, and the
//! batches that follow from `next_cursor` return every entry once.

mod common;

use common::io::lend;
use common::sim::{call, small_bdev};
use ilog_bdev::engine::{LogBatch, LogEntryKind, Reply, Request, MAX_LOG_READ_DATA_BYTES};

const BS: usize = 4096;
/// A stripe of the small format: the largest entry.
const ENTRY_BLOCKS: u32 = 16;

fn log_read(sim: &mut ilog_bdev::runtime::sim::Sim, cursor: u64) -> LogBatch {
    match call(sim, Request::LogRead { cursor, count: 4096, with_data: true }) {
        Ok(Reply::Log(batch)) => batch,
        other => panic!("log read at {cursor}: {other:?}"),
    }
}

#[test]
fn a_batch_with_data_stops_at_its_byte_budget_and_the_next_goes_on() {
    let mut sim = small_bdev(1, 16384, BS as u32, 1);
    let entry_bytes = u64::from(ENTRY_BLOCKS) * BS as u64;
    let writes = (MAX_LOG_READ_DATA_BYTES / entry_bytes) * 3 / 2;
    for i in 0..writes {
        let buf = vec![i as u8; ENTRY_BLOCKS as usize * BS];
        let lba = i * u64::from(ENTRY_BLOCKS);
        call(&mut sim, Request::Write { lba, blocks: ENTRY_BLOCKS, buf: lend(&buf) }).unwrap();
    }
    let first = log_read(&mut sim, 0);
    let data = |b: &LogBatch| b.entries.iter().filter_map(|e| e.data.as_ref()).map(|d| d.len() as u64).sum::<u64>();
    assert!(first.bytes_limited, "{} entries, {} bytes", first.entries.len(), data(&first));
    assert!(data(&first) <= MAX_LOG_READ_DATA_BYTES && data(&first) + entry_bytes > MAX_LOG_READ_DATA_BYTES);
    let second = log_read(&mut sim, first.next_cursor);
    assert!(!second.bytes_limited, "the rest fits one batch");
    assert!(log_read(&mut sim, second.next_cursor).entries.is_empty());
    let all: Vec<_> = first.entries.iter().chain(&second.entries).collect();
    assert_eq!(all.len() as u64, writes, "every entry once");
    for (i, e) in all.iter().enumerate() {
        assert_eq!((e.kind, e.lba, e.blocks), (LogEntryKind::Data, i as u64 * u64::from(ENTRY_BLOCKS), ENTRY_BLOCKS));
        assert!(e.data.as_ref().is_some_and(|d| d.iter().all(|&b| b == i as u8)), "entry {i}'s data");
    }
}
