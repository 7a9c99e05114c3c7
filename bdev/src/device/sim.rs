//! `sim`: the simulator's device. Deterministic for a seed: it completes
//! requests in a random order, keeps completed writes in a volatile cache
//! until a flush, and on a power cut keeps, drops or tears (512-byte sector
//! granularity) each write that was not flushed. It can also fail requests
//! with EIO, and copy blocks itself ([`SimDisk::set_copy`]), a copy being a
//! write whose data is read from the disk when it runs.

use super::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, QueueFull};
use crate::rng::Rng;
use std::sync::{Arc, Mutex, MutexGuard};

const QUEUE_DEPTH: usize = 4096;
const SECTOR: usize = 512;

/// Fault rates, in parts per million of requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub read_eio_ppm: u32,
    pub write_eio_ppm: u32,
}

struct InFlight {
    channel: u64,
    req: DevRequest,
    /// Completion stamp a flush must cover (set for flushes at submit).
    flush_covers: u64,
}

struct Unflushed {
    stamp: u64,
    block: u64,
    data: Vec<u8>,
}

struct State {
    rng: Rng,
    faults: Faults,
    block_size: usize,
    /// What reads see.
    current: Vec<u8>,
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    unflushed: Vec<Unflushed>,
    in_flight: Vec<InFlight>,
    next_stamp: u64,
    /// Channels opened before the last power cut are dead.
    power_epoch: u64,
    next_channel: u64,
    copy: bool,
}

impl State {
    /// What write or copy `r` puts on the disk, read now; `None` for other
    /// requests and for ranges outside the disk's `blocks`.
    fn written_by(&self, r: &DevRequest, blocks: u64) -> Option<Vec<u8>> {
        let inside = |b: u64| b.checked_add(u64::from(r.nblocks)).is_some_and(|end| end <= blocks);
        let len = r.nblocks as usize * self.block_size;
        match r.op {
            // The engine keeps write buffers valid until completion, and
            // through a power cut.
            DevOp::Write if inside(r.block) => Some(r.buf.blocks(0, r.nblocks, self.block_size).as_slice().to_vec()),
            DevOp::Copy { src } if inside(r.block) && inside(src) => {
                let at = src as usize * self.block_size;
                Some(self.current[at..at + len].to_vec())
            }
            _ => None,
        }
    }
}

/// A simulated disk shared by every core of a simulated run.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
    num_blocks: u64,
    block_size: u32,
}

impl SimDisk {
    pub fn new(num_blocks: u64, block_size: u32, seed: u64) -> SimDisk {
        let len = (num_blocks * u64::from(block_size)) as usize;
        let state = State {
            rng: Rng::new(seed ^ 0x5eed_d15c),
            faults: Faults::default(),
            block_size: block_size as usize,
            current: vec![0; len],
            durable: vec![0; len],
            unflushed: Vec::new(),
            in_flight: Vec::new(),
            next_stamp: 1,
            power_epoch: 0,
            next_channel: 0,
            copy: false,
        };
        SimDisk { state: Arc::new(Mutex::new(state)), num_blocks, block_size }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("the simulation is single-threaded")
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Whether the disk offers [`DevOp::Copy`] (read at mount).
    pub fn set_copy(&self, copy: bool) {
        self.lock().copy = copy;
    }

    /// Cuts power: requests in flight and unflushed writes each reach the
    /// media whole, not at all, or torn. Channels opened before are dead.
    ///
    /// In-flight write buffers are read here, so they must still be valid.
    pub fn power_cut(&self) {
        let mut s = self.lock();
        let s = &mut *s;
        let bs = s.block_size;
        let mut writes: Vec<(u64, Vec<u8>)> =
            std::mem::take(&mut s.unflushed).into_iter().map(|u| (u.block, u.data)).collect();
        for f in std::mem::take(&mut s.in_flight) {
            let blocks = (s.current.len() / bs) as u64;
            if let Some(data) = s.written_by(&f.req, blocks) {
                writes.push((f.req.block, data));
            }
        }
        for (block, data) in writes {
            let start = block as usize * bs;
            match s.rng.below(4) {
                0 => {} // lost
                1 => {
                    // torn: a random subset of sectors
                    for sec in 0..data.len() / SECTOR {
                        if s.rng.below(2) == 0 {
                            let r = sec * SECTOR..(sec + 1) * SECTOR;
                            s.durable[start + r.start..start + r.end].copy_from_slice(&data[r]);
                        }
                    }
                }
                _ => s.durable[start..start + data.len()].copy_from_slice(&data),
            }
        }
        s.current.copy_from_slice(&s.durable);
        s.power_epoch += 1;
    }

    /// Flips bits of block `block` on the media (both current and durable).
    pub fn corrupt(&self, block: u64, byte: usize, mask: u8) {
        let mut s = self.lock();
        let at = block as usize * s.block_size + byte;
        s.current[at] ^= mask;
        s.durable[at] ^= mask;
    }

    /// A copy of block `block` as reads see it.
    pub fn peek(&self, block: u64) -> Vec<u8> {
        let s = self.lock();
        let at = block as usize * s.block_size;
        s.current[at..at + s.block_size].to_vec()
    }
}

impl BlockDevice for SimDisk {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn buf_align(&self) -> usize {
        1
    }
    fn supports_copy(&self) -> bool {
        self.lock().copy
    }
    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        let mut s = self.lock();
        s.next_channel += 1;
        let id = s.next_channel;
        let epoch = s.power_epoch;
        Ok(Box::new(SimChannel { disk: self.clone(), id, epoch, outstanding: 0 }))
    }
}

struct SimChannel {
    disk: SimDisk,
    id: u64,
    epoch: u64,
    outstanding: usize,
}

impl DevChannel for SimChannel {
    fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull> {
        let mut s = self.disk.lock();
        if s.power_epoch != self.epoch {
            return Ok(()); // a dead channel's requests vanish with the power
        }
        if self.outstanding == QUEUE_DEPTH {
            return Err(QueueFull);
        }
        let flush_covers = s.next_stamp;
        s.in_flight.push(InFlight { channel: self.id, req, flush_covers });
        self.outstanding += 1;
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let mut s = self.disk.lock();
        if s.power_epoch != self.epoch {
            return 0;
        }
        let s = &mut *s;
        let bs = s.block_size;
        let blocks = (s.current.len() / bs) as u64;
        let mut completed = 0;
        // Each request of this channel completes now with probability 1/2, in
        // a shuffled order: completions arrive reordered and late.
        let mut mine: Vec<usize> = (0..s.in_flight.len()).filter(|&i| s.in_flight[i].channel == self.id).collect();
        s.rng.shuffle(&mut mine);
        let mut take: Vec<usize> = mine.into_iter().filter(|_| s.rng.below(2) == 0).collect();
        take.sort_unstable_by(|a, b| b.cmp(a));
        let mut batch: Vec<InFlight> = take.into_iter().map(|i| s.in_flight.swap_remove(i)).collect();
        s.rng.shuffle(&mut batch);
        for f in batch {
            let r = f.req;
            let in_range = r.block.checked_add(u64::from(r.nblocks)).is_some_and(|end| end <= blocks);
            let status = match r.op {
                _ if r.op != DevOp::Flush && !in_range => Err(libc::EINVAL),
                DevOp::Read if s.rng.chance_ppm(s.faults.read_eio_ppm) => Err(libc::EIO),
                DevOp::Write | DevOp::Copy { .. } if s.rng.chance_ppm(s.faults.write_eio_ppm) => Err(libc::EIO),
                DevOp::Read => {
                    let (at, len) = (r.block as usize * bs, r.nblocks as usize * bs);
                    r.buf.blocks(0, r.nblocks, bs).copy_from(&s.current[at..at + len]);
                    Ok(())
                }
                DevOp::Copy { src } if src.checked_add(u64::from(r.nblocks)).is_none_or(|end| end > blocks) => {
                    Err(libc::EINVAL)
                }
                DevOp::Write | DevOp::Copy { .. } => {
                    let data = s.written_by(&r, blocks).expect("in range");
                    let at = r.block as usize * bs;
                    s.current[at..at + data.len()].copy_from_slice(&data);
                    let stamp = s.next_stamp;
                    s.next_stamp += 1;
                    s.unflushed.push(Unflushed { stamp, block: r.block, data });
                    Ok(())
                }
                DevOp::Flush => {
                    let covered: Vec<Unflushed> = {
                        let (yes, no) =
                            std::mem::take(&mut s.unflushed).into_iter().partition(|u| u.stamp < f.flush_covers);
                        s.unflushed = no;
                        yes
                    };
                    for u in covered {
                        let at = u.block as usize * bs;
                        s.durable[at..at + u.data.len()].copy_from_slice(&u.data);
                    }
                    Ok(())
                }
            };
            self.outstanding -= 1;
            completed += 1;
            done(r.tag, status);
        }
        completed
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }
}
