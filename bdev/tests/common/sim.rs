//! A small simulated ilog bdev for the engine tests that drive the
//! simulator by hand.

use ilog_bdev::engine::{Reply, Request};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::runtime::sim::Sim;
use ilog_bdev::Result;

/// A small bdev's format: 16-block stripes, 64-block segments, half of the
/// device log.
pub fn small_format(block_size: u32) -> FormatOptions {
    let bs = u64::from(block_size);
    FormatOptions {
        stripe_bytes: 16 * bs,
        segment_bytes: 64 * bs,
        log_percent: 50,
        max_volumes: 16,
        ..FormatOptions::default()
    }
}

/// Formats ([`small_format`]) and mounts a simulated device of
/// `device_blocks` blocks of `block_size` bytes on `cores` cores.
pub fn small_bdev(seed: u64, device_blocks: u64, block_size: u32, cores: u32) -> Sim {
    let mut sim = Sim::new(seed, device_blocks, block_size);
    sim.format(&small_format(block_size)).unwrap_or_else(|e| panic!("seed {seed}: format: {e}"));
    sim.mount(cores).unwrap_or_else(|e| panic!("seed {seed}: mount: {e}"));
    sim
}

/// Submits `req` on core 0 and runs the simulation until every core is
/// idle; returns the last answer (the request's, when nothing else is in
/// flight).
/// A buffer `req` points at must outlive the call.
pub fn call(sim: &mut Sim, req: Request) -> Result<Reply> {
    // The run ends with every core idle, the request completed,
    // before the call returns, and the caller's buffer outlives the call.
    sim.submit(0, 0, req).expect("submit");
    let mut out = None;
    sim.run_until_idle(&mut |_, r| out = Some(r));
    out.expect("an answer")
}
