//! The messages cores send each other: the pieces of client requests, on
//! their way to a stripe's owner and back, and core 0's control traffic
//! (barriers, volume changes, victims' moves, drains). Every exchange between
//! cores is a `Msg`, so the protocol reads in one place, apart from the
//! shard that handles it.

use super::registry::SegmentInfo;
use super::request::{Extent, Reply, Request, View};
use crate::device::IoBuf;
use crate::error::Result;
use crate::format::SummaryEntry;
use crossbeam_queue::ArrayQueue;
use std::collections::VecDeque;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PieceOp {
    Read,
    Write,
    Zero,
}

/// The part of a request that falls in one stripe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub(super) origin: u32,
    pub(super) slot: u32,
    pub(super) op: PieceOp,
    pub(super) lba: u64,
    pub(super) blocks: u32,
    /// Its blocks of the request's buffer (empty for zeroes).
    pub(super) buf: IoBuf,
    pub(super) view: View,
    /// Primaries that failed to serve this read (bit `p`), or all bits: a
    /// read the log must serve.
    pub(super) primaries_tried: u8,
}

/// Where a control request's answer goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReplyTo {
    /// A client request's token, completed on the origin core.
    Client(u64),
    /// An origin slot (a flush forwarded by the data path).
    Slot(u32),
    /// Work the bdev started itself (reclaiming space, merging a deleted
    /// volume): nobody waits for it.
    Nobody,
}

/// What a diff asks of every core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiffQuery {
    /// Partitions in `(lo, hi]`.
    pub lo: u32,
    pub hi: u32,
    /// Blocks `lba_start..lba_end`.
    pub lba_start: u64,
    pub lba_end: u64,
}

pub(crate) enum Msg {
    Piece(Piece),
    PieceDone {
        slot: u32,
        status: Result<()>,
    },
    /// From core 0: drain writes issued so far, make their summaries
    /// durable, flush; optionally seal the open partition (a snapshot or a
    /// cut), close every segment (so a drain can free them all), and take
    /// no more writes (shutdown). Answered with `BarrierDone`.
    Barrier {
        id: u64,
        seal: Option<u32>,
        close: bool,
        shutdown: bool,
    },
    BarrierDone {
        id: u64,
        segments: Vec<SegmentInfo>,
        status: Result<()>,
    },
    /// The partitions that are live snapshot volumes, after a change.
    /// Answered with `VolumesAck`: a volume is announced only once every
    /// core serves it, and gone only once none does.
    Volumes(Arc<Vec<u32>>),
    VolumesAck,
    Control {
        origin: u32,
        reply: ReplyTo,
        req: Request,
    },
    ControlDone {
        reply: ReplyTo,
        result: Result<Reply>,
    },
    /// From core 0: move this core's live blocks out of segment `segno`,
    /// each into its partition's canonical one. Answered with
    /// `MovesDone` once every move retired.
    MoveLive {
        segno: u32,
        entries: Vec<SummaryEntry>,
    },
    MovesDone {
        segno: u32,
        status: Result<()>,
    },
    /// Write the version as of partition `target` of every owned block
    /// that partitions up to it hold into the baseline (see `drain.rs`).
    /// Answered with `DrainCopied`.
    DrainCopy {
        target: u32,
    },
    DrainCopied {
        status: Result<()>,
    },
    /// The baseline holds partition `target`'s image: forget the
    /// partitions up to it. Answered with `DrainForgot`.
    DrainForget {
        target: u32,
    },
    DrainForgot {
        /// Log cursor positions at or above this hold no client entry of
        /// the drained partitions.
        drained_below: u64,
    },
    /// From core 0: which owned blocks partitions in the query's range
    /// hold (see `diff.rs`). Answered with `DiffDone`.
    Diff(DiffQuery),
    DiffDone {
        extents: Vec<Extent>,
    },
    /// To core 0: primary `primary` failed.
    PrimaryFailed {
        primary: usize,
    },
    /// From core 0: primary `primary` failed; what this core wrote to it
    /// since its last flush may be lost with its cache: dirty. A channel
    /// to a device it no longer has is let go.
    PrimaryUnflushed {
        primary: usize,
    },
    /// From core 0: sync primary `primary` (a rebuild started; its device
    /// may be new).
    PrimarySync {
        primary: usize,
    },
    /// To core 0: a core's walk found primary `primary` with nothing dirty.
    PrimarySynced {
        primary: usize,
    },
}

/// A core's messages to other cores that their inboxes could not take yet
/// (full), in the order they were sent. Under the simulator it holds every
/// message until the simulator delivers it, so messages arrive late and
/// interleaved across senders, each pair of cores still in order, as
/// `spdk_thread_send_msg` keeps them.
pub(super) struct Outbox {
    queue: VecDeque<(u32, Msg)>,
    held: bool,
}

impl Outbox {
    pub(super) fn new() -> Outbox {
        Outbox { queue: VecDeque::with_capacity(1024), held: false }
    }

    /// Holds messages for [`Outbox::deliver_one`] from now on.
    pub(super) fn hold(&mut self) {
        self.held = true;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends `msg` to `core`'s inbox, after the messages still waiting.
    pub(super) fn send(&mut self, inboxes: &[ArrayQueue<Msg>], core: u32, msg: Msg) {
        if !self.queue.is_empty() || self.held {
            self.queue.push_back((core, msg));
        } else if let Err(msg) = inboxes[core as usize].push(msg) {
            self.queue.push_back((core, msg));
        }
    }

    /// Passes waiting messages on while inboxes take them; how many went.
    pub(super) fn flush(&mut self, inboxes: &[ArrayQueue<Msg>]) -> usize {
        if self.held {
            return 0;
        }
        let mut n = 0;
        while let Some((core, msg)) = self.queue.pop_front() {
            if let Err(msg) = inboxes[core as usize].push(msg) {
                self.queue.push_front((core, msg));
                break;
            }
            n += 1;
        }
        n
    }

    /// Delivers the oldest held message to one of the cores messages wait
    /// for, the `pick`-th of them (modulo their number); whether one went.
    pub(super) fn deliver_one(&mut self, inboxes: &[ArrayQueue<Msg>], pick: u64) -> bool {
        let mut cores: Vec<u32> = Vec::new();
        for &(core, _) in &self.queue {
            if !cores.contains(&core) {
                cores.push(core);
            }
        }
        if cores.is_empty() {
            return false;
        }
        let core = cores[(pick % cores.len() as u64) as usize];
        let at = self.queue.iter().position(|&(c, _)| c == core).expect("a message to that core");
        let (_, msg) = self.queue.remove(at).expect("in the queue");
        match inboxes[core as usize].push(msg) {
            Ok(()) => true,
            Err(msg) => {
                self.queue.insert(at, (core, msg));
                false
            }
        }
    }
}
