//! State every core of one ilog bdev shares: the geometry, the free segment
//! pool and sequence counter (lock-free), and each core's inbound queues.

use super::baseline::BaselineMap;
use super::free::FreeSegments;
use super::msg::Msg;
use super::request::{MountReport, PrimaryInfo, Request};
use super::space::{Counters, SegmentSpace};
use crate::error::{Error, Result};
use crate::format::Geometry;
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// Inbound queue depth per core, for core-to-core messages and for clients.
pub(crate) const QUEUE_DEPTH: usize = 16384;

pub(crate) struct Shared {
    pub geo: Geometry,
    pub uuid: [u8; 16],
    pub epoch: u32,
    pub cores: u32,
    pub free: FreeSegments,
    pub next_seq: AtomicU64,
    pub inbox: Vec<ArrayQueue<Msg>>,
    pub clients: Vec<ArrayQueue<(u64, Request)>>,
    /// Set once the bdev is closed: submitters are refused.
    pub closed: AtomicBool,
    /// Per segment: used and live data blocks.
    pub space: Vec<SegmentSpace>,
    pub counters: Counters,
    /// `SpaceState`: whether writes wait for compaction.
    pub space_state: AtomicU8,
    /// Stripes of the baseline region that hold data.
    pub baseline: BaselineMap,
    pub clock: Arc<dyn Clock>,
    /// Counts changes of the volume table (snapshots and deletes, whoever
    /// asked), each once every core reads by it.
    pub volumes_generation: AtomicU64,
    /// The device copies blocks itself: compaction moves whole entries
    /// with [`DevOp::Copy`](crate::device::DevOp::Copy).
    pub copy_offload: bool,
    /// What the mount of this bdev did.
    pub mount: MountReport,
    /// How much log a crash mount replays at most (fixed at format).
    pub replay_window_kib: u32,
    /// The devices mirroring the current image (see `mirror/`).
    pub primaries: Vec<super::mirror::Primary>,
}

/// Wall-clock time for policies and volume creation times: real in the
/// native and SPDK runtimes, simulated in the simulator.
pub trait Clock: Send + Sync {
    fn now_unix_s(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    /// Core 0 reads it on every poll for the policy: a vDSO call, tens of
    /// nanoseconds, where a second's precision is all it needs.
    fn now_unix_s(&self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// Whether the log has room for client writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpaceState {
    Ok = 0,
    /// A core's writes wait for compaction to free segments.
    Wanted = 1,
    /// Neither the drain nor compaction can make room (the log holds only
    /// versions volumes need): writes needing room fail with ENOSPC.
    Exhausted = 2,
    /// The drain keeps failing (the device does): writes needing room fail
    /// with EIO until a drain succeeds.
    Failed = 3,
}

impl Shared {
    pub fn owner(&self, lba: u64) -> u32 {
        ((lba / u64::from(self.geo.stripe_blocks)) % u64::from(self.cores)) as u32
    }

    pub fn segment_of(&self, addr: super::addr::LogAddr) -> &SegmentSpace {
        &self.space[(addr / self.geo.segment_blocks) as usize]
    }

    /// Free segments kept for compaction: it needs room to move live data
    /// before it can free anything (two segments per core), as a volume's
    /// delete does to free what it held. At most half of what the cores'
    /// open segments leave, so that writes always have room once the log
    /// drains.
    pub fn reserve(&self) -> usize {
        let cores = self.cores as usize;
        (2 * cores).min((self.geo.segment_count as usize).saturating_sub(cores) / 2)
    }

    pub fn space_state(&self) -> SpaceState {
        match self.space_state.load(Ordering::Acquire) {
            1 => SpaceState::Wanted,
            2 => SpaceState::Exhausted,
            3 => SpaceState::Failed,
            _ => SpaceState::Ok,
        }
    }

    pub fn set_space_state(&self, state: SpaceState) {
        self.space_state.store(state as u8, Ordering::Release);
    }

    /// Asks compaction for space (unless it already gave up).
    pub fn want_space(&self) {
        let _ = self.space_state.compare_exchange(0, SpaceState::Wanted as u8, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Once the log was found exhausted, writes may have turned data into
    /// garbage since: while compaction still has room to work, ask it again
    /// when a segment's worth is there to reclaim.
    pub fn rearm_compaction(&self) {
        let free = self.free.len();
        if free > self.reserve() || free <= self.cores as usize {
            return;
        }
        let garbage: u64 =
            self.space.iter().map(|s| u64::from(s.used.load(Ordering::Relaxed).saturating_sub(s.live()))).sum();
        if garbage >= u64::from(self.geo.segment_blocks) * u64::from(self.cores) {
            let (from, to) = (SpaceState::Exhausted as u8, SpaceState::Wanted as u8);
            let _ = self.space_state.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    pub fn alloc_seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// Hands client requests to a core. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Submitter {
    pub(crate) shared: Arc<Shared>,
}

impl Submitter {
    pub fn cores(&self) -> u32 {
        self.shared.cores
    }

    pub fn block_size(&self) -> u32 {
        self.shared.geo.block_size
    }

    pub fn volume_blocks(&self) -> u64 {
        self.shared.geo.volume_blocks
    }

    /// The format's uuid.
    pub fn uuid(&self) -> [u8; 16] {
        self.shared.uuid
    }

    /// The layout the base was formatted with.
    pub fn geometry(&self) -> Geometry {
        self.shared.geo
    }

    /// How much log a crash mount replays at most (fixed at format).
    pub fn replay_window_kib(&self) -> u32 {
        self.shared.replay_window_kib
    }

    /// Each primary's state and rebuild progress.
    pub fn primaries(&self) -> Vec<PrimaryInfo> {
        self.shared.primaries.iter().map(|p| p.info()).collect()
    }

    /// The alignment client buffers of current-image I/O need beyond the
    /// base device's: a write goes to the primaries from the client's
    /// buffer as it is, and a primary may be a file opened O_DIRECT (a
    /// page, whatever its block size), given later by a rebuild too. 1
    /// without primaries.
    pub fn primaries_align(&self) -> usize {
        if self.shared.primaries.is_empty() {
            return 1;
        }
        let devices = self.shared.primaries.iter().filter_map(|p| p.device()).map(|d| d.buf_align());
        devices.fold(super::mirror::primary_align(self.shared.geo.block_size as usize), usize::max)
    }

    /// Changes whenever the volume table did: a runtime that exports the
    /// volumes polls it (one atomic load) and lists them again when it moved.
    pub fn volumes_generation(&self) -> u64 {
        self.shared.volumes_generation.load(Ordering::Acquire)
    }

    /// The core that takes `req` submitted to `core`, and completes it.
    pub fn origin(&self, core: u32, req: &Request) -> u32 {
        if req.is_io() {
            core % self.shared.cores
        } else {
            0
        }
    }

    /// Queues `req` on `core`; its completion will come out of that core's
    /// poll with `token`. Control requests go to core 0 whatever `core` is.
    /// `Err` (with the request dropped) when the queue is full or the bdev
    /// closed. A `Read` or `Write` lends its buffer until then (see
    /// [`IoBuf`](crate::device::IoBuf)).
    pub fn submit(&self, core: u32, token: u64, req: Request) -> Result<()> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        let core = self.origin(core, &req);
        self.shared.clients[core as usize].push((token, req)).map_err(|_| Error::Io(libc::EAGAIN))
    }
}
