//! A small simulated ilog bdev for the engine tests that drive the
//! simulator by hand.

use ilog_bdev::format::FormatOptions;
use ilog_bdev::runtime::sim::Sim;

/// Formats and mounts a simulated device of `device_blocks` blocks of
/// `block_size` bytes on `cores` cores: 16-block stripes, 64-block
/// segments, half of it log.
pub fn small_bdev(seed: u64, device_blocks: u64, block_size: u32, cores: u32) -> Sim {
    let bs = u64::from(block_size);
    let mut sim = Sim::new(seed, device_blocks, block_size);
    let opts = FormatOptions { stripe_bytes: 16 * bs, segment_bytes: 64 * bs, log_percent: 50, max_volumes: 16 };
    sim.format(&opts).unwrap_or_else(|e| panic!("seed {seed}: format: {e}"));
    sim.mount(cores).unwrap_or_else(|e| panic!("seed {seed}: mount: {e}"));
    sim
}
