//! The primaries' state changes, decided on core 0 and made durable by a
//! checkpoint: a failure a core saw, a rebuild asked for, a rebuild that
//! ended.

use super::{Op, Shard};
use crate::engine::msg::Msg;
use crate::engine::request::PrimaryDevice;
use crate::error::{Error, Result};
use crate::format::PrimaryState;

impl Shard {
    /// Primary `primary` failed: every core marks dirty what it wrote to
    /// it since its last flush, then a checkpoint (after a barrier, which
    /// follows those messages) records its state and dirty map.
    pub(in crate::engine) fn primary_failed_everywhere(&mut self, primary: usize) {
        for core in 0..self.shared.cores {
            self.send(core, Msg::PrimaryUnflushed { primary });
        }
        self.record_primaries();
    }

    /// A checkpoint records the primaries' state.
    fn record_primaries(&mut self) {
        let core = self.core;
        self.ctl_mut().enqueue_background(core, Op::Checkpoint);
    }

    /// A core found nothing left to copy to `primary`: once no core has,
    /// its rebuild ends.
    pub(in crate::engine) fn primary_synced(&mut self, primary: usize) {
        if self.shared.primaries[primary].finish_rebuild() {
            self.record_primaries();
        }
    }

    /// Primary `name`'s device is gone (see `Request::ReleasePrimary`):
    /// degraded, dropped, and every core told to let go of its channel.
    pub(super) fn release_primary(&mut self, name: &str) -> Result<()> {
        let primaries = &self.shared.primaries;
        let Some(p) = primaries.iter().position(|p| p.name() == name) else {
            return Err(Error::InvalidArgument(format!("{name} is not a primary")));
        };
        primaries[p].release();
        for core in 0..self.shared.cores {
            self.send(core, Msg::PrimaryUnflushed { primary: p });
        }
        Ok(())
    }

    /// Starts the rebuild of primary `name` on `device` (see
    /// `Request::RebuildPrimary`) and sets every core's walk going.
    pub(super) fn start_rebuild(&mut self, name: &str, device: PrimaryDevice, full: bool) -> Result<()> {
        let primaries = &self.shared.primaries;
        let p = match primaries.iter().position(|p| p.name() == name) {
            Some(p) => p,
            None => {
                let degraded: Vec<usize> =
                    (0..primaries.len()).filter(|&p| primaries[p].state() == PrimaryState::Degraded).collect();
                match degraded[..] {
                    [p] => p,
                    _ => {
                        let names: Vec<String> = primaries.iter().map(|p| p.name()).collect();
                        return Err(Error::InvalidArgument(format!(
                            "{name} is not a primary ({}) and {} primaries are degraded: a new device replaces \
                             the one degraded primary",
                            names.join(", "),
                            degraded.len()
                        )));
                    }
                }
            }
        };
        let geo = self.shared.geo;
        let dev = device.0;
        if dev.block_size() != geo.block_size || dev.num_blocks() < geo.volume_blocks {
            return Err(Error::InvalidArgument(format!(
                "{name}: {} blocks of {} bytes; a primary needs {} blocks of {}",
                dev.num_blocks(),
                dev.block_size(),
                geo.volume_blocks,
                geo.block_size
            )));
        }
        primaries[p].start_rebuild(name, dev, full);
        for core in 0..self.shared.cores {
            self.send(core, Msg::PrimarySync { primary: p });
        }
        Ok(())
    }
}
