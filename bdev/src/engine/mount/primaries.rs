//! The primaries a mount hands the shards: those the checkpoint records,
//! on the devices the runtime opened, and new ones the runtime adds. After
//! a crash the ones that were taking writes are rebuilt whole (see
//! `mirror/`), and a degraded one adds the replayed entries' stripes.

use super::io::SyncIo;
use super::load::{read_checkpoint, Loaded};
use crate::device::BlockDevice;
use crate::engine::mirror::Primary;
use crate::error::{Error, Result};
use crate::format::{Checkpoint, Geometry, PrimaryRecord, PrimaryState, Superblock, MAX_PRIMARY_NAME};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A primary the runtime names: its device, or `None` when it could not
/// open it (a recorded primary then starts degraded).
pub type PrimaryOpen = (String, Option<Arc<dyn BlockDevice>>);

/// The names of the primaries a formatted device's checkpoint records, for
/// a runtime to open before it mounts.
pub fn recorded_primaries(dev: &dyn BlockDevice) -> Result<Vec<String>> {
    if dev.num_blocks() < 2 {
        // No room for the two superblock copies: never formatted.
        return Err(Error::NotFormatted);
    }
    let mut io = SyncIo::new(dev)?;
    let (a, b) = (io.read(0, 1)?, io.read(1, 1)?);
    let sb = Superblock::choose(&a, &b, dev.num_blocks(), dev.block_size())?;
    let ckpt = read_checkpoint(&mut io, &sb.geometry, &sb.uuid)?;
    Ok(ckpt.primaries.into_iter().map(|p| p.name).collect())
}

/// The mounted primaries, recorded ones first.
pub(super) fn mount_primaries(
    geo: &Geometry,
    ckpt: &Checkpoint,
    loaded: &BTreeMap<u32, Loaded>,
    crashed: bool,
    given: Vec<PrimaryOpen>,
) -> Result<Vec<Primary>> {
    let mut given: BTreeMap<String, Option<Arc<dyn BlockDevice>>> = given.into_iter().collect();
    for dev in given.values().flatten() {
        check_device(geo, dev.as_ref())?;
    }
    let replayed = replayed_stripes(geo, ckpt, loaded);
    let mut primaries = Vec::new();
    for record in &ckpt.primaries {
        let dev = given.remove(&record.name).flatten();
        if dev.is_none() {
            log::warn!("primary {}: not opened, degraded", record.name);
        }
        let p = Primary::new(record, dev, geo.volume_blocks);
        p.dirty.mark_stripes(&record.dirty_stripes, geo.stripe_blocks);
        if crashed && p.in_service() {
            p.set_rebuilding(true);
        } else if crashed {
            p.dirty.mark_stripes(&replayed, geo.stripe_blocks);
        }
        primaries.push(p);
    }
    for (name, dev) in given {
        let Some(dev) = dev else { return Err(Error::InvalidArgument(format!("primary {name} is not open"))) };
        if name.is_empty() || name.len() > MAX_PRIMARY_NAME {
            return Err(Error::InvalidArgument(format!("primary name {name:?}: 1 to {MAX_PRIMARY_NAME} bytes")));
        }
        let record = PrimaryRecord { name: name.clone(), state: PrimaryState::Rebuilding, dirty_stripes: Vec::new() };
        let p = Primary::new(&record, Some(dev), geo.volume_blocks);
        log::info!("primary {name}: added, synced whole from the current image");
        p.set_rebuilding(true);
        primaries.push(p);
    }
    if primaries.len() > geo.primaries_room() {
        return Err(Error::InvalidArgument(format!(
            "{} primaries: this base's checkpoint has room for {} (bases formatted before primaries existed have \
             none)",
            primaries.len(),
            geo.primaries_room()
        )));
    }
    Ok(primaries)
}

fn check_device(geo: &Geometry, dev: &dyn BlockDevice) -> Result<()> {
    if dev.block_size() != geo.block_size || dev.num_blocks() < geo.volume_blocks {
        return Err(Error::InvalidArgument(format!(
            "a primary of {} blocks of {} bytes: it needs {} blocks of {}",
            dev.num_blocks(),
            dev.block_size(),
            geo.volume_blocks,
            geo.block_size
        )));
    }
    Ok(())
}

/// The stripes the entries past the checkpoint write, a bit each.
fn replayed_stripes(geo: &Geometry, ckpt: &Checkpoint, loaded: &BTreeMap<u32, Loaded>) -> Vec<u8> {
    let mut bitmap = vec![0u8; geo.stripe_count().div_ceil(8) as usize];
    let trusted: BTreeMap<u32, u32> = ckpt.segments.iter().map(|s| (s.segno, s.trusted_entries)).collect();
    for l in loaded.values() {
        let from = trusted.get(&l.record.segno).copied().unwrap_or(0) as usize;
        for e in l.entries.iter().skip(from) {
            let stripe = u64::from(geo.stripe_blocks);
            for s in e.lba / stripe..=(e.lba + u64::from(e.blocks) - 1) / stripe {
                bitmap[(s / 8) as usize] |= 1 << (s % 8);
            }
        }
    }
    bitmap
}
