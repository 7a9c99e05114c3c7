//! The checkpoint: the volume table and the segment table, written to the
//! older of two slots with a higher generation. Mount reads the newest valid
//! slot, then rebuilds the index from the summaries of the segments listed
//! (trusted up to `trusted_entries`), and replays segments with a sequence
//! above `seq_high` found by scanning segment headers.
//!
//! ```text
//! header (128 bytes; version 1 had 96, its CRC at 92)
//!   0  8 magic "ILOGCKPT"     8  4 version       12  4 flags (bit 0: clean)
//!  16  8 generation          24 16 uuid          40  8 seq_high
//!  48  4 epoch               52  4 next partition
//!  56  8 next snapshot number
//!  64  4 volume count        68  4 segment count 72  4 payload CRC32C
//!  76  4 baseline partition (partitions up to it live in the baseline)
//!  80  4 draining (partition being drained into the baseline, or 2^32-1)
//!  84  4 policy length       88  4 baseline bitmap length
//!  92  8 drained below: log cursor positions below it may have drained
//! 100  4 window length       104  4 replay window (KiB)
//! 108  4 primaries (version 3; a checkpoint with none is version 2, so a
//!        build that knows no primaries refuses one that has them)
//! 112  4 primary bitmap length (version 3)
//! 116  8 zero
//! 124  4 header CRC32C (of bytes 0..124)
//! payload
//!   volume records (96 bytes): partition u32, zero u32, created (unix s) u64,
//!                              name length u16, name (UTF-8, zero-padded to 78)
//!   segment records (32 bytes): segno u32, stream u32, epoch u32, partition u32,
//!                               seq u64, trusted entries u32, flags u32 (bit 0: open)
//!   policy: the storage-management policy, JSON (UTF-8)
//!   baseline bitmap: bit s set when stripe s of the baseline region holds
//!                    data (unset stripes read as zeros)
//!   window: segno u32 each: the free segments client writes may open
//!           before the next checkpoint (mount after a crash reads their
//!           headers, and no others)
//!   primary records (96 bytes + the primary bitmap length): state u32,
//!                   zero u32, name length u16, name (UTF-8, zero-padded
//!                   to 86), then a bitmap of the stripes it may lack
//! ```

use super::codec::{Reader, Writer};
use super::segment::{SegmentId, SummaryKey};
use super::{record_crc, FORMAT_VERSION};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ILOGCKPT";
const HEADER_LEN: usize = 128;
const HEADER_CRC_AT: usize = 124;
/// Version 1's header: no `drained_below`.
const V1_HEADER_LEN: usize = 96;
const V1_HEADER_CRC_AT: usize = 92;
pub(super) const VOLUME_RECORD_LEN: usize = 96;
const SEGMENT_RECORD_LEN: usize = 32;
const WINDOW_ENTRY_LEN: usize = 4;
const PRIMARY_RECORD_LEN: usize = 96;
/// Longest primary device name, in bytes.
pub const MAX_PRIMARY_NAME: usize = 86;
/// Primaries a new format leaves room for in its checkpoint slots.
pub const MAX_PRIMARIES: usize = 4;
/// The version of a checkpoint that lists primaries.
const PRIMARIES_VERSION: u32 = 3;
/// Longest volume id, in bytes.
pub const MAX_VOLUME_NAME: usize = 78;
const FLAG_OPEN: u32 = 1;
/// Longest policy document, in bytes.
pub const MAX_POLICY_LEN: usize = 8192;
const NOT_DRAINING: u32 = u32::MAX;

/// A snapshot volume: a name for a sealed partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRecord {
    pub name: String,
    pub partition: u32,
    pub created_unix_s: u64,
}

/// The state of a primary device, as the checkpoint records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryState {
    /// Holds the current image: serves reads, takes every write.
    Healthy = 0,
    /// Failed: takes nothing; what it lacks is its dirty map.
    Degraded = 1,
    /// Takes every write while the blocks it lacks are copied to it; no
    /// reads until that ends.
    Rebuilding = 2,
}

/// A primary: a device mirroring the current image, by its bdev name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryRecord {
    pub name: String,
    pub state: PrimaryState,
    /// Bit `s` set: stripe `s` may differ from the current image.
    pub dirty_stripes: Vec<u8>,
}

/// A segment in use, as of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRecord {
    pub segno: u32,
    pub seq: u64,
    pub stream: u32,
    pub epoch: u32,
    pub partition: u32,
    /// Summary entries known durable and valid when the checkpoint was taken.
    pub trusted_entries: u32,
    /// Still being appended to at checkpoint time: entries past
    /// `trusted_entries` are replayed with their data CRC checked.
    pub open: bool,
}

impl SegmentRecord {
    /// What this incarnation's summaries are keyed by.
    pub fn summary_key(&self) -> SummaryKey {
        SummaryKey { id: SegmentId { epoch: self.epoch, seq: self.seq }, base: self.partition }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub generation: u64,
    pub uuid: [u8; 16],
    /// Every segment with a sequence at or below this is either listed here
    /// or dead.
    pub seq_high: u64,
    /// Mount counter: streams are identified by (epoch, core).
    pub epoch: u32,
    pub next_partition: u32,
    /// Next `n` for default `snap-<n>` ids; never reused.
    pub next_snapshot_number: u64,
    /// Written by a clean close: no segment was opened after it, so mount
    /// needs neither a header scan nor data CRC checks.
    pub clean: bool,
    /// Partitions up to this one were drained into the baseline region (0:
    /// none; partitions are numbered from 1).
    pub baseline_partition: u32,
    /// A drain into the baseline that started: mount finishes it.
    pub draining: Option<u32>,
    /// Log cursor positions below this may belong to entries that drained
    /// into the baseline and left the log.
    pub drained_below: u64,
    /// The segments that may have been opened after this checkpoint; `None`
    /// (format version 1): any free segment.
    pub window: Option<Vec<u32>>,
    /// How much log (KiB) a crash mount replays at most: the window's size.
    /// 0 (format version 1): the default.
    pub replay_window_kib: u32,
    /// The storage-management policy (JSON; empty for none).
    pub policy: String,
    /// Stripes of the baseline region that hold data, a bit each.
    pub baseline_stripes: Vec<u8>,
    pub volumes: Vec<VolumeRecord>,
    pub segments: Vec<SegmentRecord>,
    /// Their bitmaps all of one length.
    pub primaries: Vec<PrimaryRecord>,
}

impl Checkpoint {
    pub fn max_encoded_len(max_volumes: usize, max_segments: usize, stripes: u64) -> usize {
        let bitmap = stripes.div_ceil(8) as usize;
        // A segment is listed or in the window, not both, and a window
        // entry is shorter than a record: the records' bound holds both.
        Checkpoint::len_of(HEADER_LEN, max_volumes, max_segments, MAX_POLICY_LEN, bitmap, 0)
    }

    /// Room `primaries` primaries take in a checkpoint of a volume of
    /// `stripes` stripes (beyond `max_encoded_len`).
    pub fn primaries_len(primaries: usize, stripes: u64) -> usize {
        Checkpoint::primaries_of(primaries, stripes.div_ceil(8) as usize)
    }

    fn len_of(header: usize, volumes: usize, segments: usize, policy: usize, bitmap: usize, window: usize) -> usize {
        header
            + volumes * VOLUME_RECORD_LEN
            + segments * SEGMENT_RECORD_LEN
            + policy
            + bitmap
            + window * WINDOW_ENTRY_LEN
    }

    fn primaries_of(primaries: usize, bitmap: usize) -> usize {
        primaries * (PRIMARY_RECORD_LEN + bitmap)
    }

    pub fn encoded_len(&self) -> usize {
        let (v, s, p, b) = (self.volumes.len(), self.segments.len(), self.policy.len(), self.baseline_stripes.len());
        Checkpoint::len_of(HEADER_LEN, v, s, p, b, self.window.as_ref().map_or(0, Vec::len))
            + Checkpoint::primaries_of(self.primaries.len(), self.primary_bitmap_len())
    }

    fn primary_bitmap_len(&self) -> usize {
        self.primaries.first().map_or(0, |p| p.dirty_stripes.len())
    }

    /// Encodes into `buf` (at least `encoded_len` bytes).
    pub fn encode(&self, buf: &mut [u8]) {
        let len = self.encoded_len();
        let (header, payload) = buf[..len].split_at_mut(HEADER_LEN);
        let mut w = Writer::new(payload);
        for v in &self.volumes {
            w.u32(v.partition);
            w.u32(0);
            w.u64(v.created_unix_s);
            w.u16(v.name.len() as u16);
            w.bytes(v.name.as_bytes());
            w.skip(MAX_VOLUME_NAME - v.name.len());
        }
        for s in &self.segments {
            w.u32(s.segno);
            w.u32(s.stream);
            w.u32(s.epoch);
            w.u32(s.partition);
            w.u64(s.seq);
            w.u32(s.trusted_entries);
            w.u32(if s.open { FLAG_OPEN } else { 0 });
        }
        w.bytes(self.policy.as_bytes());
        w.bytes(&self.baseline_stripes);
        let window = self.window.as_deref().unwrap_or_default();
        for &segno in window {
            w.u32(segno);
        }
        for p in &self.primaries {
            debug_assert_eq!(p.dirty_stripes.len(), self.primary_bitmap_len(), "one bitmap length");
            w.u32(p.state as u32);
            w.u32(0);
            w.u16(p.name.len() as u16);
            w.bytes(p.name.as_bytes());
            w.skip(MAX_PRIMARY_NAME - p.name.len());
            w.bytes(&p.dirty_stripes);
        }
        let payload_crc = super::crc32c(payload);
        let mut w = Writer::new(header);
        w.bytes(MAGIC);
        w.u32(if self.primaries.is_empty() { FORMAT_VERSION } else { PRIMARIES_VERSION });
        w.u32(u32::from(self.clean));
        w.u64(self.generation);
        w.bytes(&self.uuid);
        w.u64(self.seq_high);
        w.u32(self.epoch);
        w.u32(self.next_partition);
        w.u64(self.next_snapshot_number);
        w.u32(self.volumes.len() as u32);
        w.u32(self.segments.len() as u32);
        w.u32(payload_crc);
        w.u32(self.baseline_partition);
        w.u32(self.draining.unwrap_or(NOT_DRAINING));
        w.u32(self.policy.len() as u32);
        w.u32(self.baseline_stripes.len() as u32);
        w.u64(self.drained_below);
        w.u32(window.len() as u32);
        w.u32(self.replay_window_kib);
        w.u32(self.primaries.len() as u32);
        w.u32(self.primary_bitmap_len() as u32);
        let crc = record_crc(header, HEADER_CRC_AT);
        header[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }

    /// The header's declared total length, to know how much of a slot to
    /// read. `Ok(None)`: no checkpoint in this slot.
    pub fn peek_len(first_block: &[u8]) -> Result<Option<usize>> {
        Ok(Checkpoint::header(first_block)?.map(|h| h.len()))
    }

    /// The counts of a valid header, of either version.
    fn header(buf: &[u8]) -> Result<Option<Header>> {
        if buf.len() < V1_HEADER_LEN || &buf[..8] != MAGIC {
            return Ok(None);
        }
        let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let (len, crc_at) = match word(8) {
            1 => (V1_HEADER_LEN, V1_HEADER_CRC_AT),
            FORMAT_VERSION | PRIMARIES_VERSION if buf.len() >= HEADER_LEN => (HEADER_LEN, HEADER_CRC_AT),
            v => return Err(Error::Corrupt(format!("unsupported checkpoint version {v}"))),
        };
        let window = if len == HEADER_LEN { word(100) } else { 0 };
        let (primaries, primary_bitmap) = if word(8) == PRIMARIES_VERSION { (word(108), word(112)) } else { (0, 0) };
        if record_crc(&buf[..len], crc_at) != word(crc_at) {
            return Err(Error::Corrupt("checkpoint header CRC mismatch".into()));
        }
        if word(84) as usize > MAX_POLICY_LEN {
            return Err(Error::Corrupt("checkpoint policy too long".into()));
        }
        if primaries as usize > MAX_PRIMARIES {
            return Err(Error::Corrupt(format!("checkpoint lists {primaries} primaries")));
        }
        let (volumes, segments, policy, bitmap) = (word(64), word(68), word(84), word(88));
        Ok(Some(Header { len, volumes, segments, policy, bitmap, window, primaries, primary_bitmap }))
    }

    /// Decodes a slot. `Ok(None)`: the slot holds no checkpoint.
    pub fn decode(buf: &[u8]) -> Result<Option<Checkpoint>> {
        let Some(h) = Checkpoint::header(buf)? else { return Ok(None) };
        let len = h.len();
        if len > buf.len() {
            return Err(Error::Corrupt("checkpoint is longer than its slot".into()));
        }
        let mut r = Reader::new(&buf[12..h.len], "checkpoint header");
        let clean = r.u32()? & 1 != 0;
        let mut c = Checkpoint {
            clean,
            generation: r.u64()?,
            uuid: r.bytes(16)?.try_into().expect("16 bytes"),
            seq_high: r.u64()?,
            epoch: r.u32()?,
            next_partition: r.u32()?,
            next_snapshot_number: r.u64()?,
            ..Checkpoint::default()
        };
        r.skip(8)?;
        let payload_crc = r.u32()?;
        c.baseline_partition = r.u32()?;
        c.draining = Some(r.u32()?).filter(|&p| p != NOT_DRAINING);
        r.skip(8)?;
        if h.len == HEADER_LEN {
            c.drained_below = r.u64()?;
            r.skip(4)?;
            c.replay_window_kib = r.u32()?;
        }
        let payload = &buf[h.len..len];
        if super::crc32c(payload) != payload_crc {
            return Err(Error::Corrupt("checkpoint payload CRC mismatch".into()));
        }
        let mut r = Reader::new(payload, "checkpoint payload");
        for _ in 0..h.volumes {
            let partition = r.u32()?;
            r.skip(4)?;
            let created_unix_s = r.u64()?;
            let name_len = r.u16()? as usize;
            let name = r.bytes(MAX_VOLUME_NAME)?;
            let name = name
                .get(..name_len)
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| Error::Corrupt("checkpoint volume name".into()))?;
            c.volumes.push(VolumeRecord { name: name.to_owned(), partition, created_unix_s });
        }
        for _ in 0..h.segments {
            c.segments.push(SegmentRecord {
                segno: r.u32()?,
                stream: r.u32()?,
                epoch: r.u32()?,
                partition: r.u32()?,
                seq: r.u64()?,
                trusted_entries: r.u32()?,
                open: r.u32()? & FLAG_OPEN != 0,
            });
        }
        c.policy = std::str::from_utf8(r.bytes(h.policy as usize)?)
            .map_err(|_| Error::Corrupt("checkpoint policy is not UTF-8".into()))?
            .to_owned();
        c.baseline_stripes = r.bytes(h.bitmap as usize)?.to_vec();
        if h.len == HEADER_LEN {
            c.window = Some((0..h.window).map(|_| r.u32()).collect::<Result<_>>()?);
        }
        for _ in 0..h.primaries {
            let state = match r.u32()? {
                0 => PrimaryState::Healthy,
                1 => PrimaryState::Degraded,
                2 => PrimaryState::Rebuilding,
                s => return Err(Error::Corrupt(format!("checkpoint primary state {s}"))),
            };
            r.skip(4)?;
            let name_len = r.u16()? as usize;
            let name = r.bytes(MAX_PRIMARY_NAME)?;
            let name = name
                .get(..name_len)
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| Error::Corrupt("checkpoint primary name".into()))?;
            let dirty_stripes = r.bytes(h.primary_bitmap as usize)?.to_vec();
            c.primaries.push(PrimaryRecord { name: name.to_owned(), state, dirty_stripes });
        }
        Ok(Some(c))
    }
}

/// What a header says of the checkpoint's size.
struct Header {
    /// The header's own length (by its version).
    len: usize,
    volumes: u32,
    segments: u32,
    policy: u32,
    bitmap: u32,
    window: u32,
    primaries: u32,
    primary_bitmap: u32,
}

impl Header {
    fn len(&self) -> usize {
        let (v, s, p, b) = (self.volumes as usize, self.segments as usize, self.policy as usize, self.bitmap as usize);
        Checkpoint::len_of(self.len, v, s, p, b, self.window as usize)
            + Checkpoint::primaries_of(self.primaries as usize, self.primary_bitmap as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            generation: 9,
            uuid: [1; 16],
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
            policy: r#"{"snapshot":{"interval_s":60}}"#.into(),
            baseline_stripes: vec![0b101, 0, 0x80],
            volumes: vec![VolumeRecord { name: "snap-1".into(), partition: 1, created_unix_s: 1_700_000_000 }],
            segments: vec![SegmentRecord {
                segno: 3,
                seq: 70,
                stream: 1,
                epoch: 2,
                partition: 4,
                trusted_entries: 12,
                open: true,
            }],
            primaries: Vec::new(),
        }
    }

    #[test]
    fn primaries_round_trip_as_version_3() {
        let mut c = sample();
        c.primaries = vec![
            PrimaryRecord { name: "Malloc1".into(), state: PrimaryState::Healthy, dirty_stripes: vec![0; 3] },
            PrimaryRecord { name: "nvme0n1".into(), state: PrimaryState::Degraded, dirty_stripes: vec![1, 0, 0x40] },
        ];
        let mut buf = vec![0u8; c.encoded_len() + 100];
        c.encode(&mut buf);
        assert_eq!(u32::from_le_bytes(buf[8..12].try_into().unwrap()), PRIMARIES_VERSION);
        assert_eq!(Checkpoint::peek_len(&buf).unwrap(), Some(c.encoded_len()));
        assert_eq!(Checkpoint::decode(&buf).unwrap(), Some(c));
        // None: the version a build without primaries reads.
        let plain = sample();
        plain.encode(&mut buf);
        assert_eq!(u32::from_le_bytes(buf[8..12].try_into().unwrap()), FORMAT_VERSION);
    }

    #[test]
    fn round_trips() {
        let c = sample();
        let mut buf = vec![0u8; 4096];
        c.encode(&mut buf);
        assert_eq!(Checkpoint::peek_len(&buf).unwrap(), Some(c.encoded_len()));
        assert_eq!(Checkpoint::decode(&buf).unwrap(), Some(c));
    }

    #[test]
    fn a_version_1_checkpoint_decodes() {
        // Version 1: a 96-byte header without `drained_below`, its CRC at 92.
        let c = Checkpoint { drained_below: 0, window: None, replay_window_kib: 0, ..sample() };
        let mut v2 = vec![0u8; 4096];
        c.encode(&mut v2);
        let mut v1 = vec![0u8; 4096];
        v1[..V1_HEADER_CRC_AT].copy_from_slice(&v2[..V1_HEADER_CRC_AT]);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let payload = c.encoded_len() - HEADER_LEN;
        v1[V1_HEADER_LEN..V1_HEADER_LEN + payload].copy_from_slice(&v2[HEADER_LEN..HEADER_LEN + payload]);
        let crc = record_crc(&v1[..V1_HEADER_LEN], V1_HEADER_CRC_AT);
        v1[V1_HEADER_CRC_AT..V1_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Checkpoint::peek_len(&v1).unwrap(), Some(c.encoded_len() - (HEADER_LEN - V1_HEADER_LEN)));
        assert_eq!(Checkpoint::decode(&v1).unwrap(), Some(c));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let c = sample();
        let mut buf = vec![0u8; 4096];
        c.encode(&mut buf);
        for byte in 8..c.encoded_len() {
            let mut b = buf.clone();
            b[byte] ^= 0x04;
            assert!(Checkpoint::decode(&b).is_err(), "flip at byte {byte} went unnoticed");
        }
    }
}
