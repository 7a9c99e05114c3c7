//! `StreamReader` on a copy stream from a tertiary volume (damaged,
//! truncated or foreign): input the stream's bytes. What it accepts must
//! be a stream the writer makes from the same records, byte for byte.

#![no_main]

use ilog_bdev::copy::stream::{StreamReader, StreamWriter};
use ilog_bdev::engine::LogEntryKind;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = StreamReader::new(data) else { return };
    let header = reader.header().clone();
    let end = header.lba_start + header.lba_count;
    let mut records = Vec::new();
    let mut blocks = Vec::new();
    loop {
        match reader.next_record(&mut blocks) {
            Ok(Some(r)) => {
                assert!(r.lba >= header.lba_start && r.lba + u64::from(r.blocks) <= end, "{r:?} outside the range");
                let want =
                    if r.kind == LogEntryKind::Data { r.blocks as usize * header.block_size as usize } else { 0 };
                assert_eq!(blocks.len(), want);
                records.push((r, blocks.clone()));
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    let mut writer = StreamWriter::new(Vec::new(), header).expect("a header that decoded encodes");
    for (r, blocks) in &records {
        match r.kind {
            LogEntryKind::Data => writer.data(r.lba, blocks).unwrap(),
            LogEntryKind::Zero => writer.zero(r.lba, r.blocks).unwrap(),
        }
    }
    let (again, _) = writer.finish().unwrap();
    assert_eq!(&data[..again.len()], &again[..], "an accepted stream is the one its records make");
});
