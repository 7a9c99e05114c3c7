//! The superblock: identity and geometry of a formatted device, in two
//! copies (blocks 0 and 1). Written at format time; the copy with the
//! highest valid generation wins, so a torn write of one copy is harmless.
//!
//! ```text
//! off  size  field
//!   0     8  magic "ILOGSUPR"
//!   8     4  format version
//!  12     4  block size
//!  16    16  uuid
//!  32     8  generation
//!  40     8  device blocks        48  8  volume blocks     56  8  baseline start
//!  64     8  checkpoint start     72  4  ckpt slot blocks  76  4  max volumes
//!  80     8  log start            88  4  segment blocks    92  4  segment count
//!  96     4  stripe blocks
//! 100     4  CRC32C of bytes 0..100
//! ```

use super::codec::{Reader, Writer};
use super::{record_crc, Geometry, FORMAT_VERSION};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ILOGSUPR";
const CRC_AT: usize = 100;
const LEN: usize = CRC_AT + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub generation: u64,
    pub geometry: Geometry,
}

impl Superblock {
    /// Encodes into `block` (one device block, zero-padded).
    pub fn encode(&self, block: &mut [u8]) {
        block.fill(0);
        let g = &self.geometry;
        let mut w = Writer::new(block);
        w.bytes(MAGIC);
        w.u32(FORMAT_VERSION);
        w.u32(g.block_size);
        w.bytes(&self.uuid);
        w.u64(self.generation);
        w.u64(g.device_blocks);
        w.u64(g.volume_blocks);
        w.u64(g.baseline_start);
        w.u64(g.ckpt_start);
        w.u32(g.ckpt_slot_blocks);
        w.u32(g.max_volumes);
        w.u64(g.log_start);
        w.u32(g.segment_blocks);
        w.u32(g.segment_count);
        w.u32(g.stripe_blocks);
        debug_assert_eq!(w.pos(), CRC_AT);
        let crc = record_crc(&block[..LEN], CRC_AT);
        block[CRC_AT..LEN].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one copy. `Ok(None)`: no ilog magic at all (blank or foreign).
    pub fn decode(block: &[u8]) -> Result<Option<Superblock>> {
        if block.len() < LEN || &block[..8] != MAGIC {
            return Ok(None);
        }
        let stored = u32::from_le_bytes(block[CRC_AT..LEN].try_into().expect("4 bytes"));
        if record_crc(&block[..LEN], CRC_AT) != stored {
            return Err(Error::Corrupt("superblock CRC mismatch".into()));
        }
        let mut r = Reader::new(&block[8..CRC_AT], "superblock");
        let version = r.u32()?;
        // Version 1 devices open as they are: their metadata is a subset.
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(Error::Corrupt(format!(
                "unsupported format version {version} (this build reads {FORMAT_VERSION})"
            )));
        }
        let block_size = r.u32()?;
        let uuid = r.bytes(16)?.try_into().expect("16 bytes");
        let generation = r.u64()?;
        let geometry = Geometry {
            block_size,
            device_blocks: r.u64()?,
            volume_blocks: r.u64()?,
            baseline_start: r.u64()?,
            ckpt_start: r.u64()?,
            ckpt_slot_blocks: r.u32()?,
            max_volumes: r.u32()?,
            log_start: r.u64()?,
            segment_blocks: r.u32()?,
            segment_count: r.u32()?,
            stripe_blocks: r.u32()?,
        };
        Ok(Some(Superblock { uuid, generation, geometry }))
    }

    /// Picks the newest valid copy of A and B, and checks it against the
    /// device it was read from.
    pub fn choose(a: &[u8], b: &[u8], device_blocks: u64, device_block_size: u32) -> Result<Superblock> {
        let (ra, rb) = (Superblock::decode(a), Superblock::decode(b));
        let sb = match (ra, rb) {
            (Ok(Some(x)), Ok(Some(y))) => {
                if x.generation >= y.generation {
                    x
                } else {
                    y
                }
            }
            (Ok(Some(x)), _) | (_, Ok(Some(x))) => x,
            (Ok(None), Ok(None)) => return Err(Error::NotFormatted),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        if sb.geometry.block_size != device_block_size {
            return Err(Error::Corrupt(format!(
                "formatted with {}-byte blocks, the device has {device_block_size}-byte blocks",
                sb.geometry.block_size
            )));
        }
        sb.geometry.validate(device_blocks)?;
        Ok(sb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::FormatOptions;

    fn sample() -> Superblock {
        let geometry = Geometry::plan(4096, 1 << 15, &FormatOptions::default()).unwrap();
        Superblock { uuid: [7; 16], generation: 3, geometry }
    }

    #[test]
    fn round_trips() {
        let mut b = vec![0u8; 4096];
        sample().encode(&mut b);
        assert_eq!(Superblock::decode(&b).unwrap(), Some(sample()));
    }

    #[test]
    fn a_torn_copy_falls_back_to_the_other() {
        let (mut a, mut b) = (vec![0u8; 4096], vec![0u8; 4096]);
        sample().encode(&mut a);
        sample().encode(&mut b);
        a[50] ^= 1;
        assert_eq!(Superblock::choose(&a, &b, 1 << 15, 4096).unwrap(), sample());
    }

    #[test]
    fn blank_device_is_not_formatted_and_flipped_bits_are_corrupt() {
        let z = vec![0u8; 4096];
        assert_eq!(Superblock::choose(&z, &z, 1 << 15, 4096), Err(Error::NotFormatted));
        let mut a = vec![0u8; 4096];
        sample().encode(&mut a);
        a[12] ^= 0x10;
        assert!(matches!(Superblock::choose(&a, &a, 1 << 15, 4096), Err(Error::Corrupt(_))));
    }
}
