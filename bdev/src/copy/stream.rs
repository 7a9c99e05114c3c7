//! The copy stream: what `bdev_ilog_copy` writes to a tertiary volume and
//! `bdev_ilog_restore` reads back. A self-describing byte stream of a
//! volume's blocks (a full copy) or of what changed between two volumes (an
//! incremental), checksummed record by record and as a whole, so a restore
//! trusts nothing it has not verified. Integers are little-endian.
//!
//! ```text
//! header (512 bytes)
//!   0  magic "ILOGSTRM"                     8
//!   8  version (1)                          u32
//!  12  header length (512)                  u32
//!  16  source uuid (the ilog format's)      16
//!  32  block size                           u32
//!  36  flags: bit 0 incremental             u32
//!  40  volume size, blocks                  u64
//!  48  range: first lba                     u64
//!  56  range: blocks                        u64
//!  64  the volume's creation, Unix seconds  u64
//!  72  volume id: length u8, 79 bytes
//! 152  base volume id (incremental): length u8, 79 bytes
//! 232  data blocks the records carry       u64
//! 240  zero
//! 508  CRC32C of bytes 0..508               u32
//!
//! record (32-byte header; a data record's blocks follow it)
//!   0  kind: 1 data, 2 zero, 3 trailer      u32
//!   4  blocks                               u32
//!   8  lba                                  u64
//!  16  zero                                 12
//!  28  CRC32C of bytes 0..28 and the blocks u32
//!
//! trailer (a 64-byte record of kind 3, last)
//!   0  kind (3)                             u32
//!   4  zero                                 u32
//!   8  data records, zero records           u64, u64
//!  24  data blocks, zero blocks             u64, u64
//!  40  stream bytes before the trailer      u64
//!  48  CRC32C of those bytes                u32
//!  52  zero                                 8
//!  60  CRC32C of bytes 0..60                u32
//! ```
//!
//! Records are in LBA order and inside the range; a data record holds at
//! most [`MAX_RECORD_BYTES`]. A zero record means the blocks read as zeros
//! (written zeroes, unmapped). A full stream maps every block of the range
//! it has no record for to zeros too; an incremental leaves them as the base
//! volume has them.
//!
//! A stream is written and read in one pass: the writer's and the reader's
//! [`Position`] (offset, counts, the running CRC) is what a resume token
//! carries, so an interrupted copy or restore goes on where it stopped.

use crate::engine::LogEntryKind;
use crate::error::{Error, Result};
use crate::format::codec::{Reader, Writer};
use crate::format::{crc32c, MAX_VOLUME_NAME};

pub const MAGIC: &[u8; 8] = b"ILOGSTRM";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 512;
pub const RECORD_HEADER_LEN: usize = 32;
pub const TRAILER_LEN: usize = 64;
/// Most data one record carries: bounds what a reader holds at once.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

const KIND_DATA: u32 = 1;
const KIND_ZERO: u32 = 2;
const KIND_TRAILER: u32 = 3;
const FLAG_INCREMENTAL: u32 = 1;
const NAME_FIELD: usize = 80;
const HEADER_CRC_AT: usize = HEADER_LEN - 4;
const RECORD_CRC_AT: usize = RECORD_HEADER_LEN - 4;
const TRAILER_CRC_AT: usize = TRAILER_LEN - 4;

/// What a stream holds: the header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub source_uuid: [u8; 16],
    pub block_size: u32,
    pub volume_blocks: u64,
    pub lba_start: u64,
    pub lba_count: u64,
    pub created_unix_s: u64,
    pub volume: String,
    /// The volume an incremental applies on top of; `None` for a full copy.
    pub base_volume: Option<String>,
    /// Blocks the data records carry in all: a restore's progress, and
    /// checked against the trailer.
    pub data_blocks: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        let mut w = Writer::new(&mut buf);
        w.bytes(MAGIC);
        w.u32(VERSION);
        w.u32(HEADER_LEN as u32);
        w.bytes(&self.source_uuid);
        w.u32(self.block_size);
        w.u32(if self.base_volume.is_some() { FLAG_INCREMENTAL } else { 0 });
        w.u64(self.volume_blocks);
        w.u64(self.lba_start);
        w.u64(self.lba_count);
        w.u64(self.created_unix_s);
        for name in [Some(self.volume.as_str()), self.base_volume.as_deref()] {
            let name = name.unwrap_or_default().as_bytes();
            w.u8(name.len() as u8);
            w.bytes(name);
            w.skip(NAME_FIELD - 1 - name.len());
        }
        w.u64(self.data_blocks);
        let crc = crc32c(&buf[..HEADER_CRC_AT]);
        buf[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8]) -> Result<Header> {
        let mut r = Reader::new(buf, "copy stream header");
        if r.bytes(8)? != MAGIC {
            return Err(bad("not a copy stream (no ILOGSTRM magic)".into()));
        }
        let version = r.u32()?;
        if version != VERSION {
            return Err(bad(format!("version {version}; this build reads version {VERSION}")));
        }
        let len = r.u32()? as usize;
        if len != HEADER_LEN || buf.len() < HEADER_LEN {
            return Err(bad(format!("header of {len} bytes, expected {HEADER_LEN}")));
        }
        let stored = u32::from_le_bytes(buf[HEADER_CRC_AT..HEADER_LEN].try_into().expect("4 bytes"));
        if crc32c(&buf[..HEADER_CRC_AT]) != stored {
            return Err(bad("header CRC mismatch".into()));
        }
        let mut source_uuid = [0u8; 16];
        source_uuid.copy_from_slice(r.bytes(16)?);
        let block_size = r.u32()?;
        let flags = r.u32()?;
        let (volume_blocks, lba_start, lba_count, created_unix_s) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let mut name = || -> Result<String> {
            let len = r.u8()? as usize;
            let field = r.bytes(NAME_FIELD - 1)?;
            if len > MAX_VOLUME_NAME {
                return Err(bad(format!("a volume id of {len} bytes")));
            }
            String::from_utf8(field[..len].to_vec()).map_err(|_| bad("a volume id is not UTF-8".into()))
        };
        let volume = name()?;
        let base = name()?;
        let data_blocks = r.u64()?;

        let header = Header {
            source_uuid,
            block_size,
            volume_blocks,
            lba_start,
            lba_count,
            created_unix_s,
            volume,
            base_volume: (flags & FLAG_INCREMENTAL != 0).then_some(base),
            data_blocks,
        };
        header.check()?;
        // Reserved bytes are zero (a later version may give them a
        // meaning): the header is exactly what its fields encode to.
        if header.encode()[..] != buf[..HEADER_LEN] {
            return Err(bad("header: bytes this version reserves are not zero".into()));
        }
        Ok(header)
    }

    fn check(&self) -> Result<()> {
        if !crate::format::valid_block_size(self.block_size) {
            return Err(bad(format!("block size {}", self.block_size)));
        }
        let end = self.lba_start.checked_add(self.lba_count);
        if end.is_none_or(|end| end > self.volume_blocks) {
            return Err(bad(format!(
                "range {}+{} outside a volume of {} blocks",
                self.lba_start, self.lba_count, self.volume_blocks
            )));
        }
        crate::engine::check_volume_name(&self.volume).map_err(|_| bad(format!("volume id {:?}", self.volume)))?;
        if let Some(base) = &self.base_volume {
            crate::engine::check_volume_name(base).map_err(|_| bad(format!("base volume id {base:?}")))?;
        }
        Ok(())
    }

    /// Names the stream in a resume token: the header's CRC (a CRC over
    /// the encoding with its CRC in it would be the same for every header).
    fn id(&self) -> u32 {
        crc32c(&self.encode()[..HEADER_CRC_AT])
    }

    /// Most blocks one data record may carry.
    pub fn max_record_blocks(&self) -> u32 {
        (MAX_RECORD_BYTES / self.block_size as usize) as u32
    }
}

/// One record of the stream, as the reader returns it (a data record's
/// blocks go to the caller's buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub lba: u64,
    pub blocks: u32,
    pub kind: LogEntryKind,
}

/// The trailer's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub data_records: u64,
    pub zero_records: u64,
    pub data_blocks: u64,
    pub zero_blocks: u64,
}

impl Counts {
    fn add(&mut self, r: &Record) {
        match r.kind {
            LogEntryKind::Data => (self.data_records += 1, self.data_blocks += u64::from(r.blocks)),
            LogEntryKind::Zero => (self.zero_records += 1, self.zero_blocks += u64::from(r.blocks)),
        };
    }
}

/// Where a writer or a reader stands in a stream: enough to go on from
/// there in another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Bytes of the stream before the next record.
    pub offset: u64,
    /// The blocks before this lba are done (the next record starts at or
    /// after it).
    pub next_lba: u64,
    pub counts: Counts,
    /// The running CRC32C of the stream's bytes before `offset`.
    crc_state: u64,
}

fn new_digest() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi)
}

impl Position {
    fn start(header: &[u8; HEADER_LEN], lba_start: u64) -> Position {
        let mut d = new_digest();
        d.update(header);
        Position { offset: HEADER_LEN as u64, next_lba: lba_start, counts: Counts::default(), crc_state: d.get_state() }
    }

    fn digest(&self) -> crc_fast::Digest {
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, self.crc_state)
    }

    fn advance(&mut self, d: &crc_fast::Digest, bytes: usize, record: &Record) {
        self.offset += bytes as u64;
        self.next_lba = record.lba + u64::from(record.blocks);
        self.counts.add(record);
        self.crc_state = d.get_state();
    }

    fn stream_crc(&self) -> u32 {
        self.digest().finalize() as u32
    }

    /// The resume token: this position and the header it belongs to, as
    /// hex, with a CRC of its own.
    pub fn token(&self, header: &Header) -> String {
        let mut buf = [0u8; TOKEN_LEN];
        let mut w = Writer::new(&mut buf);
        w.u32(header.id());
        for v in [self.offset, self.next_lba, self.crc_state] {
            w.u64(v);
        }
        let c = &self.counts;
        for v in [c.data_records, c.zero_records, c.data_blocks, c.zero_blocks] {
            w.u64(v);
        }
        let crc = crc32c(&buf[..TOKEN_LEN - 4]);
        buf[TOKEN_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        buf.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads back a token [`Position::token`] made for a stream with this
    /// header; a token of another stream, or a damaged one, is refused.
    pub fn from_token(token: &str, header: &Header) -> Result<Position> {
        let invalid = |why: &str| Error::InvalidArgument(format!("resume_token: {why}"));
        let hex = token.as_bytes();
        if hex.len() != 2 * TOKEN_LEN {
            return Err(invalid("not a token this build wrote"));
        }
        let mut buf = [0u8; TOKEN_LEN];
        for (i, b) in buf.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).map_err(|_| invalid("not hex"))?;
            *b = u8::from_str_radix(pair, 16).map_err(|_| invalid("not hex"))?;
        }
        let stored = u32::from_le_bytes(buf[TOKEN_LEN - 4..].try_into().expect("4 bytes"));
        if crc32c(&buf[..TOKEN_LEN - 4]) != stored {
            return Err(invalid("damaged (CRC mismatch)"));
        }
        let mut r = Reader::new(&buf, "resume token");
        if r.u32()? != header.id() {
            return Err(invalid("it belongs to another stream (a different volume, range or source)"));
        }
        let (offset, next_lba, crc_state) = (r.u64()?, r.u64()?, r.u64()?);
        let counts =
            Counts { data_records: r.u64()?, zero_records: r.u64()?, data_blocks: r.u64()?, zero_blocks: r.u64()? };
        let end = header.lba_start + header.lba_count;
        if offset < HEADER_LEN as u64 || !(header.lba_start..=end).contains(&next_lba) {
            return Err(invalid("its position is outside the stream"));
        }
        Ok(Position { offset, next_lba, counts, crc_state })
    }
}

const TOKEN_LEN: usize = 4 + 3 * 8 + 4 * 8 + 4;

fn bad(why: String) -> Error {
    Error::Corrupt(format!("copy stream: {why}"))
}

/// Encodes a stream into any [`std::io::Write`]: the header at
/// [`StreamWriter::new`], then records, then the trailer at
/// [`StreamWriter::finish`].
pub struct StreamWriter<W> {
    out: W,
    header: Header,
    at: Position,
}

impl<W: std::io::Write> StreamWriter<W> {
    pub fn new(mut out: W, header: Header) -> Result<Self> {
        let encoded = header.encode();
        out.write_all(&encoded).map_err(io_error)?;
        let at = Position::start(&encoded, header.lba_start);
        Ok(StreamWriter { out, header, at })
    }

    /// Goes on writing a stream at `at` (a position a writer of the same
    /// header reported): `out` is positioned there already.
    pub fn resume(out: W, header: Header, at: Position) -> Self {
        StreamWriter { out, header, at }
    }

    pub fn position(&self) -> Position {
        self.at
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// A data record: `data` holds `blocks` blocks, at most
    /// [`MAX_RECORD_BYTES`].
    pub fn data(&mut self, lba: u64, data: &[u8]) -> Result<()> {
        let bs = self.header.block_size as usize;
        assert!(data.len() % bs == 0 && !data.is_empty() && data.len() <= MAX_RECORD_BYTES, "whole blocks");
        self.record(Record { lba, blocks: (data.len() / bs) as u32, kind: LogEntryKind::Data }, data)
    }

    pub fn zero(&mut self, lba: u64, blocks: u32) -> Result<()> {
        assert!(blocks > 0, "an empty zero record");
        self.record(Record { lba, blocks, kind: LogEntryKind::Zero }, &[])
    }

    fn record(&mut self, rec: Record, data: &[u8]) -> Result<()> {
        let end = self.header.lba_start + self.header.lba_count;
        assert!(
            rec.lba >= self.at.next_lba && rec.lba + u64::from(rec.blocks) <= end,
            "records in lba order, in range"
        );
        let head = encode_record_header(&rec, data);
        let mut d = self.at.digest();
        d.update(&head);
        d.update(data);
        self.out.write_all(&head).and_then(|()| self.out.write_all(data)).map_err(io_error)?;
        self.at.advance(&d, head.len() + data.len(), &rec);
        Ok(())
    }

    /// Writes the trailer; the stream is complete.
    pub fn finish(mut self) -> Result<(W, Counts)> {
        let trailer = encode_trailer(&self.at);
        self.out.write_all(&trailer).map_err(io_error)?;
        self.out.flush().map_err(io_error)?;
        Ok((self.out, self.at.counts))
    }
}

pub(super) fn io_error(e: std::io::Error) -> Error {
    Error::Io(e.raw_os_error().unwrap_or(libc::EIO))
}

fn encode_record_header(rec: &Record, data: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    let mut head = [0u8; RECORD_HEADER_LEN];
    let mut w = Writer::new(&mut head);
    w.u32(match rec.kind {
        LogEntryKind::Data => KIND_DATA,
        LogEntryKind::Zero => KIND_ZERO,
    });
    w.u32(rec.blocks);
    w.u64(rec.lba);
    let mut d = new_digest();
    d.update(&head[..RECORD_CRC_AT]);
    d.update(data);
    head[RECORD_CRC_AT..].copy_from_slice(&(d.finalize() as u32).to_le_bytes());
    head
}

fn encode_trailer(at: &Position) -> [u8; TRAILER_LEN] {
    let mut t = [0u8; TRAILER_LEN];
    let mut w = Writer::new(&mut t);
    w.u32(KIND_TRAILER);
    w.u32(0);
    let c = &at.counts;
    for v in [c.data_records, c.zero_records, c.data_blocks, c.zero_blocks, at.offset] {
        w.u64(v);
    }
    w.u32(at.stream_crc());
    let crc = crc32c(&t[..TRAILER_CRC_AT]);
    t[TRAILER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    t
}

/// Decodes and verifies a stream from any [`std::io::Read`], record by
/// record. Nothing is returned before its CRC holds; the end is returned
/// only once the trailer's counts and whole-stream CRC hold.
pub struct StreamReader<R> {
    input: R,
    header: Header,
    at: Position,
    done: bool,
}

impl<R: std::io::Read> StreamReader<R> {
    pub fn new(mut input: R) -> Result<Self> {
        let mut buf = [0u8; HEADER_LEN];
        read_exact(&mut input, &mut buf, 0)?;
        let header = Header::decode(&buf)?;
        let at = Position::start(&buf, header.lba_start);
        Ok(StreamReader { input, header, at, done: false })
    }

    /// Goes on reading at `at` (from a token of this stream): `input` is
    /// positioned there already.
    pub fn resume(input: R, header: Header, at: Position) -> Self {
        StreamReader { input, header, at, done: false }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn position(&self) -> Position {
        self.at
    }

    /// The next record, its blocks in `data` for a data record; `None` at
    /// the verified end.
    pub fn next_record(&mut self, data: &mut Vec<u8>) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let offset = self.at.offset;
        let mut head = [0u8; RECORD_HEADER_LEN];
        read_exact(&mut self.input, &mut head, offset)?;
        let kind = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        if kind == KIND_TRAILER {
            let mut t = [0u8; TRAILER_LEN];
            t[..RECORD_HEADER_LEN].copy_from_slice(&head);
            read_exact(&mut self.input, &mut t[RECORD_HEADER_LEN..], offset)?;
            self.check_trailer(&t)?;
            self.done = true;
            return Ok(None);
        }
        let mut r = Reader::new(&head, "copy stream record");
        r.skip(4)?;
        let (blocks, lba) = (r.u32()?, r.u64()?);
        if head[16..RECORD_CRC_AT].iter().any(|&b| b != 0) {
            return Err(bad(format!("record at byte {offset}: bytes this version reserves are not zero")));
        }
        let kind = match kind {
            KIND_DATA => LogEntryKind::Data,
            KIND_ZERO => LogEntryKind::Zero,
            other => return Err(bad(format!("record at byte {offset}: unknown kind {other}"))),
        };
        let rec = Record { lba, blocks, kind };
        let end = self.header.lba_start + self.header.lba_count;
        let fits = lba >= self.at.next_lba && lba.checked_add(u64::from(blocks)).is_some_and(|e| e <= end);
        if blocks == 0 || !fits {
            return Err(bad(format!("record at byte {offset}: blocks {lba}+{blocks} out of order or out of range")));
        }
        data.clear();
        if kind == LogEntryKind::Data {
            if blocks > self.header.max_record_blocks() {
                return Err(bad(format!("record at byte {offset}: {blocks} blocks, more than a record holds")));
            }
            data.resize(blocks as usize * self.header.block_size as usize, 0);
            read_exact(&mut self.input, data, offset)?;
        }
        let mut d = new_digest();
        d.update(&head[..RECORD_CRC_AT]);
        d.update(data);
        if d.finalize() as u32 != u32::from_le_bytes(head[RECORD_CRC_AT..].try_into().expect("4 bytes")) {
            return Err(bad(format!("record at byte {offset} (lba {lba}, {blocks} blocks): CRC mismatch")));
        }
        let mut d = self.at.digest();
        d.update(&head);
        d.update(data);
        self.at.advance(&d, head.len() + data.len(), &rec);
        Ok(Some(rec))
    }

    fn check_trailer(&self, t: &[u8; TRAILER_LEN]) -> Result<()> {
        let at = self.at.offset;
        if crc32c(&t[..TRAILER_CRC_AT]) != u32::from_le_bytes(t[TRAILER_CRC_AT..].try_into().expect("4 bytes")) {
            return Err(bad(format!("trailer at byte {at}: CRC mismatch")));
        }
        if t[..] != encode_trailer(&self.at)[..] || self.at.counts.data_blocks != self.header.data_blocks {
            return Err(bad(format!(
                "trailer at byte {at}: its counts or stream CRC do not match the records read ({:?})",
                self.at.counts
            )));
        }
        Ok(())
    }
}

fn read_exact(input: &mut impl std::io::Read, buf: &mut [u8], offset: u64) -> Result<()> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad(format!("truncated at byte {offset} (no trailer)")),
        _ => io_error(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(base: Option<&str>) -> Header {
        Header {
            source_uuid: [7; 16],
            block_size: 512,
            volume_blocks: 4096,
            lba_start: 0,
            lba_count: 4096,
            created_unix_s: 1_700_000_000,
            volume: "snap-2".into(),
            base_volume: base.map(str::to_owned),
            data_blocks: 98,
        }
    }

    fn sample(base: Option<&str>) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), header(base)).unwrap();
        w.data(3, &[0xab; 1024]).unwrap();
        w.zero(10, 100).unwrap();
        w.data(4000, &vec![0xcd; 512 * 96]).unwrap();
        w.finish().unwrap().0
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<(Record, Vec<u8>)>> {
        let mut r = StreamReader::new(bytes)?;
        let mut out = Vec::new();
        let mut data = Vec::new();
        while let Some(rec) = r.next_record(&mut data)? {
            out.push((rec, data.clone()));
        }
        Ok(out)
    }

    #[test]
    fn a_stream_reads_back_as_written() {
        for base in [None, Some("snap-1")] {
            let bytes = sample(base);
            let mut r = StreamReader::new(&bytes[..]).unwrap();
            assert_eq!(r.header(), &header(base));
            let recs = read_all(&bytes).unwrap();
            assert_eq!(recs.len(), 3);
            assert_eq!(recs[0].0, Record { lba: 3, blocks: 2, kind: LogEntryKind::Data });
            assert_eq!(recs[0].1, vec![0xab; 1024]);
            assert_eq!(recs[1].0, Record { lba: 10, blocks: 100, kind: LogEntryKind::Zero });
            assert!(recs[1].1.is_empty());
            assert_eq!(recs[2].0.blocks, 96);
            let mut data = Vec::new();
            while r.next_record(&mut data).unwrap().is_some() {}
            let c = r.position().counts;
            assert_eq!((c.data_records, c.zero_records, c.data_blocks, c.zero_blocks), (2, 1, 98, 100));
        }
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let bytes = sample(Some("snap-1"));
        // Every byte of the headers and the trailer, and a sample of data bytes.
        let data_at = HEADER_LEN + RECORD_HEADER_LEN;
        let positions =
            (0..bytes.len()).filter(|&i| !(data_at + 16..bytes.len() - TRAILER_LEN - 64).contains(&i) || i % 97 == 0);
        for i in positions {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(read_all(&bad).is_err(), "a flip at byte {i} went unnoticed");
        }
        for len in (0..bytes.len()).step_by(61) {
            let err = read_all(&bytes[..len]).unwrap_err();
            assert_eq!(err.errno(), libc::EUCLEAN, "{err}");
        }
    }

    #[test]
    fn a_dropped_or_repeated_record_fails_the_trailer_or_the_order() {
        let bytes = sample(None);
        let first = HEADER_LEN..HEADER_LEN + RECORD_HEADER_LEN + 1024;
        let mut dropped = bytes[..first.start].to_vec();
        dropped.extend_from_slice(&bytes[first.end..]);
        assert!(read_all(&dropped).unwrap_err().to_string().contains("trailer"));
        let mut repeated = bytes[..first.end].to_vec();
        repeated.extend_from_slice(&bytes[first.clone()]);
        repeated.extend_from_slice(&bytes[first.end..]);
        assert!(read_all(&repeated).unwrap_err().to_string().contains("out of order"));
    }

    #[test]
    fn a_resumed_writer_writes_the_same_stream() {
        let whole = sample(None);
        let mut w = StreamWriter::new(Vec::new(), header(None)).unwrap();
        w.data(3, &[0xab; 1024]).unwrap();
        let token = w.position().token(&header(None));
        let mut prefix = w.get_mut().clone();
        // Bytes past the token's position (a record half written) are
        // written over.
        prefix.extend_from_slice(&[1, 2, 3]);
        let at = Position::from_token(&token, &header(None)).unwrap();
        prefix.truncate(at.offset as usize);
        let mut w = StreamWriter::resume(prefix, header(None), at);
        w.zero(10, 100).unwrap();
        w.data(4000, &vec![0xcd; 512 * 96]).unwrap();
        assert_eq!(w.finish().unwrap().0, whole);
    }

    #[test]
    fn a_resumed_reader_verifies_the_rest() {
        let bytes = sample(None);
        let mut r = StreamReader::new(&bytes[..]).unwrap();
        r.next_record(&mut Vec::new()).unwrap();
        let token = r.position().token(r.header());
        let at = Position::from_token(&token, &header(None)).unwrap();
        assert_eq!(at.next_lba, 5);
        let rest = &bytes[at.offset as usize..];
        let mut r = StreamReader::resume(rest, header(None), at);
        let mut data = Vec::new();
        assert_eq!(r.next_record(&mut data).unwrap().unwrap().lba, 10);
        assert_eq!(r.next_record(&mut data).unwrap().unwrap().lba, 4000);
        assert_eq!(r.next_record(&mut data).unwrap(), None);
    }

    #[test]
    fn tokens_of_another_stream_or_damaged_ones_are_refused() {
        let w = StreamWriter::new(Vec::new(), header(None)).unwrap();
        let token = w.position().token(&header(None));
        let other = Position::from_token(&token, &header(Some("snap-1"))).unwrap_err();
        assert!(other.to_string().contains("another stream"), "{other}");
        let mut damaged = token.clone().into_bytes();
        damaged[10] = if damaged[10] == b'0' { b'1' } else { b'0' };
        let damaged = Position::from_token(std::str::from_utf8(&damaged).unwrap(), &header(None)).unwrap_err();
        assert!(damaged.to_string().contains("damaged"), "{damaged}");
        for junk in ["", "zz", &"g".repeat(token.len())] {
            assert_eq!(Position::from_token(junk, &header(None)).unwrap_err().errno(), libc::EINVAL);
        }
    }

    #[test]
    fn reserved_bytes_must_be_zero_even_under_a_valid_crc() {
        let mut enc = header(None).encode();
        enc[300] = 1;
        let crc = crc32c(&enc[..HEADER_CRC_AT]);
        enc[HEADER_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        assert!(Header::decode(&enc).unwrap_err().to_string().contains("reserve"));
        let mut bytes = sample(None);
        let rec = HEADER_LEN;
        bytes[rec + 20] = 1;
        let mut d = new_digest();
        d.update(&bytes[rec..rec + RECORD_CRC_AT]);
        d.update(&bytes[rec + RECORD_HEADER_LEN..rec + RECORD_HEADER_LEN + 1024]);
        bytes[rec + RECORD_CRC_AT..rec + RECORD_HEADER_LEN].copy_from_slice(&(d.finalize() as u32).to_le_bytes());
        assert!(read_all(&bytes).unwrap_err().to_string().contains("reserve"));
    }

    #[test]
    fn headers_that_cannot_describe_a_volume_are_refused() {
        let mut h = header(None);
        h.lba_count = 4097;
        let mut enc = h.encode();
        assert!(Header::decode(&enc).unwrap_err().to_string().contains("range"));
        h.lba_count = 1;
        h.block_size = 1000;
        enc = h.encode();
        assert!(Header::decode(&enc).unwrap_err().to_string().contains("block size"));
    }
}
