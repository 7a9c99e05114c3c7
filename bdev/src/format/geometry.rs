//! Where each region lies on the base device, fixed at format time.

use super::checkpoint::MAX_PRIMARIES;
use super::Checkpoint;
use crate::error::{Error, Result};

/// Choices made when formatting a base device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatOptions {
    /// Bytes of LBA space owned by one core (rounded to blocks).
    pub stripe_bytes: u64,
    /// Bytes per log segment (rounded to blocks).
    pub segment_bytes: u64,
    /// Share of the usable device given to the log (percent); the rest is
    /// the baseline, whose size is the exported volume size.
    pub log_percent: u8,
    /// Most snapshot volumes that can exist at once.
    pub max_volumes: u32,
    /// How much log a mount after a crash replays at most (bytes, rounded
    /// to KiB): a checkpoint comes before more is written. Kept in the
    /// checkpoint.
    pub replay_window_bytes: u64,
}

impl Default for FormatOptions {
    fn default() -> Self {
        // The log is the room for snapshot deltas plus a write buffer: it
        // drains into the baseline, so the user gets at least 80 % of the
        // device as volume.
        FormatOptions {
            stripe_bytes: 1 << 20,
            segment_bytes: 4 << 20,
            log_percent: 18,
            max_volumes: 1024,
            replay_window_bytes: DEFAULT_REPLAY_WINDOW_KIB << 10,
        }
    }
}

impl FormatOptions {
    /// The checks that do not depend on the device: what a create on a base
    /// already formatted (whose options are on media) must still pass, so a
    /// saved config never records options that could not format.
    pub fn validate(&self) -> Result<()> {
        if self.stripe_bytes == 0 || self.segment_bytes == 0 {
            return Err(Error::InvalidArgument("stripe and segment sizes must not be zero".into()));
        }
        if !(1..=95).contains(&self.log_percent) {
            return Err(Error::InvalidArgument("log_percent must be in 1..=95".into()));
        }
        if self.max_volumes == 0 || self.max_volumes > MAX_VOLUMES {
            return Err(Error::InvalidArgument(format!("max_volumes must be in 1..={MAX_VOLUMES}")));
        }
        if !(1 << 10..=u64::from(u32::MAX) << 10).contains(&self.replay_window_bytes) {
            return Err(Error::InvalidArgument("the replay window must be 1 KiB to 4 TiB".into()));
        }
        Ok(())
    }
}

/// Block sizes ilog formats and serves: powers of two in 512..=65536.
pub fn valid_block_size(block_size: u32) -> bool {
    (512..=65536).contains(&block_size) && block_size.is_power_of_two()
}

/// Log segments that `log_percent` of `usable` blocks hold.
fn log_segments(usable: u64, log_percent: u8, segment_blocks: u64) -> u64 {
    usable * u64::from(log_percent) / 100 / segment_blocks
}

/// The layout of a formatted device, in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub device_blocks: u64,
    pub volume_blocks: u64,
    pub baseline_start: u64,
    pub ckpt_start: u64,
    pub ckpt_slot_blocks: u32,
    pub max_volumes: u32,
    pub log_start: u64,
    pub segment_blocks: u32,
    pub segment_count: u32,
    pub stripe_blocks: u32,
}

/// The replay window when none is set (see `FormatOptions`): 256 MiB, what
/// a crash mount reads in well under a second from a device that reads
/// 500 MB/s; a checkpoint comes every 128 MiB written.
pub const DEFAULT_REPLAY_WINDOW_KIB: u64 = 256 << 10;

/// Superblock A and B.
pub(crate) const SUPERBLOCK_BLOCKS: u64 = 2;
/// Summary entries address segment offsets and cursors pack them in 20 bits.
pub const MAX_SEGMENT_BLOCKS: u32 = 1 << 20;
/// Bounds the checkpoint slot.
pub const MAX_VOLUMES: u32 = 1 << 16;
/// Index entries hold 32-bit LBAs and log addresses (two address values
/// reserved), which bounds the volume and the log.
pub const MAX_VOLUME_BLOCKS: u64 = u32::MAX as u64;
pub const MAX_LOG_BLOCKS: u64 = u32::MAX as u64 - 2;

impl Geometry {
    /// Lays out a device of `device_blocks` blocks of `block_size` bytes.
    pub fn plan(block_size: u32, device_blocks: u64, opts: &FormatOptions) -> Result<Geometry> {
        if !valid_block_size(block_size) {
            return Err(Error::InvalidArgument(format!(
                "block size {block_size} is not a power of two in 512..=65536"
            )));
        }
        opts.validate()?;
        let bs = u64::from(block_size);
        let stripe_blocks = opts.stripe_bytes / bs;
        let segment_blocks = opts.segment_bytes / bs;
        if stripe_blocks == 0 || opts.stripe_bytes % bs != 0 {
            return Err(Error::InvalidArgument("stripe size must be a non-zero multiple of the block size".into()));
        }
        if opts.segment_bytes % bs != 0 || segment_blocks > u64::from(MAX_SEGMENT_BLOCKS) {
            return Err(Error::InvalidArgument(
                "segment size must be a multiple of the block size, at most 2^20 blocks".into(),
            ));
        }
        // Any piece of an I/O (at most one stripe) must fit an empty segment
        // next to its header and one summary pair.
        if segment_blocks < stripe_blocks + 3 {
            return Err(Error::InvalidArgument("a segment must hold a whole stripe plus 3 metadata blocks".into()));
        }
        // The checkpoint slot is sized for the most segments the device could hold.
        let ckpt_slot_blocks = |device_blocks: u64| {
            let max_segments = device_blocks / segment_blocks;
            let max_stripes = device_blocks.div_ceil(stripe_blocks);
            let slot_bytes = Checkpoint::max_encoded_len(opts.max_volumes as usize, max_segments as usize, max_stripes)
                + Checkpoint::primaries_len(MAX_PRIMARIES, max_stripes);
            slot_bytes.div_ceil(bs as usize) as u64
        };
        let ckpt_start = SUPERBLOCK_BLOCKS;
        let meta_end = |device_blocks: u64| ckpt_start + 2 * ckpt_slot_blocks(device_blocks);
        let segments_in = |device_blocks: u64| {
            log_segments(device_blocks.saturating_sub(meta_end(device_blocks)), opts.log_percent, segment_blocks)
        };
        let segment_count = segments_in(device_blocks);
        if segment_count < 2 {
            // The smallest device with two log segments: the checkpoint
            // slot grows a little with the device, so search for it.
            let mut hi = device_blocks.max(1);
            while segments_in(hi) < 2 {
                hi *= 2;
            }
            let mut lo = device_blocks;
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if segments_in(mid) < 2 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let min = hi;
            return Err(Error::DeviceTooSmall(format!(
                "{device_blocks} blocks of {block_size} bytes leave room for {segment_count} log segments of {segment_blocks} blocks \
                 (2 needed): the base must have at least {min} blocks ({} KiB) with these options",
                min * bs / 1024
            )));
        }
        let meta_end = meta_end(device_blocks);
        let usable = device_blocks - meta_end;
        let log_blocks = segment_count * segment_blocks;
        let volume_blocks = usable - log_blocks;
        // Index entries hold 32-bit LBAs and log addresses: say so here,
        // before `validate` would call the plan corrupt.
        if volume_blocks > MAX_VOLUME_BLOCKS || log_blocks > MAX_LOG_BLOCKS {
            return Err(Error::DeviceTooLarge(format!(
                "{device_blocks} blocks of {block_size} bytes with log_percent {} give a volume of {volume_blocks} blocks \
                 and a log of {log_blocks}; at most {MAX_VOLUME_BLOCKS} and {MAX_LOG_BLOCKS} are addressable \
                 ({} GiB each at this block size): use a larger block size, a smaller base, or another log_percent",
                opts.log_percent,
                (MAX_LOG_BLOCKS * bs) >> 30
            )));
        }
        let g = Geometry {
            block_size,
            device_blocks,
            volume_blocks,
            baseline_start: meta_end,
            ckpt_start,
            ckpt_slot_blocks: u32::try_from(ckpt_slot_blocks(device_blocks))
                .map_err(|_| Error::InvalidArgument("checkpoint too large".into()))?,
            max_volumes: opts.max_volumes,
            log_start: meta_end + volume_blocks,
            segment_blocks: segment_blocks as u32,
            segment_count: u32::try_from(segment_count)
                .map_err(|_| Error::InvalidArgument("too many segments".into()))?,
            stripe_blocks: stripe_blocks as u32,
        };
        g.validate(device_blocks)?;
        Ok(g)
    }

    /// Whether formatting with `log_percent` (and the other options this
    /// layout was formatted with) gives this log.
    pub fn has_log_percent(&self, log_percent: u8) -> bool {
        let usable = self.device_blocks - self.baseline_start;
        log_segments(usable, log_percent, u64::from(self.segment_blocks)) == u64::from(self.segment_count)
    }

    /// Checks that a geometry read from media is self-consistent and fits
    /// a device of `device_blocks`.
    pub fn validate(&self, device_blocks: u64) -> Result<()> {
        let bad = |why: &str| Err(Error::Corrupt(format!("superblock geometry: {why}")));
        if !valid_block_size(self.block_size) {
            return bad("block size");
        }
        // Fields come from media: every sum is checked, nothing may wrap.
        if self.stripe_blocks == 0
            || u64::from(self.segment_blocks) < u64::from(self.stripe_blocks) + 3
            || self.segment_blocks > MAX_SEGMENT_BLOCKS
        {
            return bad("stripe/segment sizes");
        }
        if self.segment_count < 2 || self.max_volumes == 0 || self.max_volumes > MAX_VOLUMES {
            return bad("segment count or volume limit");
        }
        let log_blocks = u64::from(self.segment_count) * u64::from(self.segment_blocks);
        if self.volume_blocks == 0 || self.volume_blocks > MAX_VOLUME_BLOCKS || log_blocks > MAX_LOG_BLOCKS {
            return bad("volume or log size");
        }
        let slot_needed =
            Checkpoint::max_encoded_len(self.max_volumes as usize, self.segment_count as usize, self.stripe_count())
                as u64;
        if u64::from(self.ckpt_slot_blocks) * u64::from(self.block_size) < slot_needed {
            return bad("checkpoint slot too small");
        }
        let ckpt_end = u64::from(self.ckpt_slot_blocks).checked_mul(2).and_then(|n| n.checked_add(self.ckpt_start));
        let baseline_end = self.baseline_start.checked_add(self.volume_blocks);
        let log_end = self.log_start.checked_add(log_blocks);
        let ordered = self.ckpt_start >= SUPERBLOCK_BLOCKS
            && ckpt_end.is_some_and(|e| self.baseline_start >= e)
            && baseline_end.is_some_and(|e| self.log_start >= e)
            && log_end.is_some_and(|end| end <= self.device_blocks);
        if !ordered {
            return bad("regions overlap or exceed the device");
        }
        if self.device_blocks > device_blocks {
            return Err(Error::DeviceTooSmall(format!(
                "formatted for {} blocks, the device has {device_blocks}",
                self.device_blocks
            )));
        }
        Ok(())
    }

    /// First device block of checkpoint slot `slot` (0 or 1).
    pub fn ckpt_slot_start(&self, slot: u32) -> u64 {
        self.ckpt_start + u64::from(slot) * u64::from(self.ckpt_slot_blocks)
    }

    /// First device block of segment `segno`.
    pub fn segment_start(&self, segno: u32) -> u64 {
        self.log_start + u64::from(segno) * u64::from(self.segment_blocks)
    }

    /// Device block of slot `slot` (0 or 1) of summary group `group` of
    /// segment `segno`: groups grow down from the segment's end.
    pub fn summary_slot(&self, segno: u32, group: u32, slot: u32) -> u64 {
        self.segment_start(segno) + u64::from(self.segment_blocks - 2 * group - 2 + slot)
    }

    /// Stripes of the volume (the last one may be partial).
    pub fn stripe_count(&self) -> u64 {
        self.volume_blocks.div_ceil(u64::from(self.stripe_blocks))
    }

    /// Summary entries one summary block holds.
    pub fn entries_per_summary(&self) -> u32 {
        ((self.block_size as usize - super::SUMMARY_HEADER_LEN) / super::SUMMARY_ENTRY_LEN) as u32
    }

    /// Segments a replay window of `kib` holds (0: the default): at least
    /// two, at most the log.
    pub fn window_segments(&self, kib: u32) -> usize {
        let kib = if kib == 0 { DEFAULT_REPLAY_WINDOW_KIB } else { u64::from(kib) };
        let segment_bytes = u64::from(self.segment_blocks) * u64::from(self.block_size);
        ((kib << 10) / segment_bytes).clamp(2, u64::from(self.segment_count)) as usize
    }

    /// How many primaries the checkpoint slots have room for (bases
    /// formatted before primaries existed may have none).
    pub fn primaries_room(&self) -> usize {
        let stripes = self.stripe_count();
        let needed = Checkpoint::max_encoded_len(self.max_volumes as usize, self.segment_count as usize, stripes);
        let spare = self.ckpt_slot_bytes().saturating_sub(needed);
        (0..=MAX_PRIMARIES).rev().find(|&n| Checkpoint::primaries_len(n, stripes) <= spare).unwrap_or(0)
    }

    /// Room checked by `checkpoint` for encoding.
    pub(crate) fn ckpt_slot_bytes(&self) -> usize {
        self.ckpt_slot_blocks as usize * self.block_size as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_splits_device_into_ordered_regions() {
        let g = Geometry::plan(4096, 1 << 16, &FormatOptions::default()).unwrap();
        assert!(g.baseline_start >= g.ckpt_start + 2 * u64::from(g.ckpt_slot_blocks));
        assert_eq!(g.log_start, g.baseline_start + g.volume_blocks);
        assert!(g.log_start + u64::from(g.segment_count) * u64::from(g.segment_blocks) <= g.device_blocks);
        assert!(g.volume_blocks > 0);
    }

    #[test]
    fn plan_refuses_a_device_too_small_for_two_segments_and_names_the_minimum() {
        for (blocks, opts) in [
            (0, FormatOptions::default()),
            (1500, FormatOptions::default()),
            (100, FormatOptions { log_percent: 95, ..FormatOptions::default() }),
        ] {
            let Err(Error::DeviceTooSmall(why)) = Geometry::plan(4096, blocks, &opts) else {
                panic!("{blocks} blocks")
            };
            let min: u64 = why
                .split("at least ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no minimum named: {why}"));
            assert!(Geometry::plan(4096, min, &opts).is_ok(), "{min} blocks: {why}");
            assert!(Geometry::plan(4096, min - 1, &opts).is_err(), "{min} is not the least: {why}");
        }
    }

    #[test]
    fn plan_refuses_a_device_beyond_the_addressable_blocks_by_its_size_not_as_corrupt() {
        let log95 = FormatOptions { log_percent: 95, ..FormatOptions::default() };
        let tib = |n: u64| n << 40 >> 12;
        for (blocks, opts) in [(tib(64), &log95), (tib(64), &FormatOptions::default()), (tib(17), &log95)] {
            let got = Geometry::plan(4096, blocks, opts);
            let Err(Error::DeviceTooLarge(why)) = &got else { panic!("{blocks} blocks: {got:?}") };
            assert!(why.contains("at most"), "{why}");
        }
        // The largest that fit: 16 TiB of volume or of log at 4 KiB blocks.
        assert!(Geometry::plan(4096, tib(16), &log95).is_ok());
        assert!(Geometry::plan(4096, tib(19), &FormatOptions::default()).is_ok());
    }

    #[test]
    fn plan_refuses_stripes_larger_than_segments() {
        let opts = FormatOptions { stripe_bytes: 4 << 20, ..FormatOptions::default() };
        assert!(matches!(Geometry::plan(4096, 1 << 16, &opts), Err(Error::InvalidArgument(_))));
    }
}
