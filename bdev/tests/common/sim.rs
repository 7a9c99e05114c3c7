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

/// Runs `run(seed)` for the seeds the environment asks for:
/// `ILOG_SIM_SEED=S` alone, else `ILOG_SIM_SEEDS` (200) from
/// `ILOG_SIM_FIRST` (0). A failure prints its seed and how to rerun it;
/// returns how many seeds ran.
pub fn for_each_seed(test: &str, run: impl Fn(u64) + std::panic::RefUnwindSafe) -> usize {
    let seeds: Vec<u64> = match std::env::var("ILOG_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("ILOG_SIM_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("ILOG_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
            let first: u64 = std::env::var("ILOG_SIM_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            (first..first + n).collect()
        }
    };
    for &seed in &seeds {
        if let Err(panic) = std::panic::catch_unwind(|| run(seed)) {
            eprintln!(
                "sim seed {seed} failed; reproduce with: ILOG_SIM_SEED={seed} cargo test --release --test {test}"
            );
            std::panic::resume_unwind(panic);
        }
    }
    seeds.len()
}

/// Block `lba` holding value `v` (0: zeros): (v, lba) repeated, so a torn
/// or misplaced block never decodes as a valid value.
pub fn fill(buf: &mut [u8], v: u64, lba: u64) {
    if v == 0 {
        buf.fill(0);
        return;
    }
    for pair in buf.chunks_exact_mut(16) {
        pair[..8].copy_from_slice(&v.to_le_bytes());
        pair[8..].copy_from_slice(&lba.to_le_bytes());
    }
}

/// The value block `lba` holds, or `None` for bytes no [`fill`] produced.
pub fn decode(buf: &[u8], lba: u64) -> Option<u64> {
    if buf.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let v = u64::from_le_bytes(buf[..8].try_into().unwrap());
    let mut pair = [0u8; 16];
    fill(&mut pair, v, lba);
    buf.chunks_exact(16).all(|p| p == pair).then_some(v)
}
