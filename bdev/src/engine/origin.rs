//! The origin's side of a client request: the core it was submitted to
//! checks it, cuts it at stripe boundaries into pieces for the stripes'
//! owners (`DataRequest`), and holds a slot until every piece answered
//! (`Slots`). The shard sends the pieces and completes the request.

use super::msg::{Piece, PieceOp};
use super::request::{Request, View};
use crate::device::IoBuf;
use crate::error::{Error, Result};
use crate::format::Geometry;

struct Slot {
    token: u64,
    pending: u32,
    status: Result<()>,
}

/// The requests this core took whose pieces have not all answered.
pub(super) struct Slots {
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
}

impl Slots {
    pub(super) fn new(n: usize) -> Slots {
        let mut slots = Vec::with_capacity(n);
        slots.resize_with(n, || None);
        Slots { slots, free: (0..n as u32).rev().collect() }
    }

    /// Slots left: client intake stops when they run out.
    pub(super) fn free(&self) -> usize {
        self.free.len()
    }

    /// A slot for request `token`, answered once `pending` pieces have.
    pub(super) fn alloc(&mut self, token: u64, pending: u32) -> u32 {
        let slot = self.free.pop().expect("client intake stops when slots run out");
        self.slots[slot as usize] = Some(Slot { token, pending, status: Ok(()) });
        slot
    }

    /// A piece of `slot`'s request answered: the request's token and
    /// status (the first failure) once it was the last.
    pub(super) fn piece_done(&mut self, slot: u32, status: Result<()>) -> Option<(u64, Result<()>)> {
        let s = self.slots[slot as usize].as_mut().expect("live slot");
        if s.status.is_ok() {
            s.status = status;
        }
        s.pending -= 1;
        if s.pending > 0 {
            return None;
        }
        let s = self.slots[slot as usize].take().expect("live slot");
        self.free.push(slot);
        Some((s.token, s.status))
    }
}

/// A client's read, write, write-zeroes or unmap.
#[derive(Clone, Copy)]
pub(super) struct DataRequest {
    op: PieceOp,
    lba: u64,
    blocks: u32,
    buf: IoBuf,
    view: View,
}

impl DataRequest {
    /// The data request `req` is, or `req` back when it is a control one.
    pub(super) fn of(req: Request) -> std::result::Result<DataRequest, Request> {
        let (op, lba, blocks, buf, view) = match req {
            Request::Read { lba, blocks, buf, view } => (PieceOp::Read, lba, blocks, buf, view),
            Request::Write { lba, blocks, buf } => (PieceOp::Write, lba, blocks, buf, View::Current),
            Request::WriteZeroes { lba, blocks } | Request::Unmap { lba, blocks } => {
                (PieceOp::Zero, lba, blocks, IoBuf::EMPTY, View::Current)
            }
            other => return Err(other),
        };
        Ok(DataRequest { op, lba, blocks, buf, view })
    }

    /// Whether the request fits the volume and its buffer, and reads a
    /// live view.
    pub(super) fn check(&self, geo: &Geometry, live_volumes: &[u32]) -> Result<()> {
        let (lba, blocks, volume_blocks) = (self.lba, self.blocks, geo.volume_blocks);
        if blocks == 0 {
            return Err(Error::InvalidArgument("an I/O needs at least one block".into()));
        }
        let bytes = blocks as usize * geo.block_size as usize;
        if self.op != PieceOp::Zero && self.buf.len() < bytes {
            let len = self.buf.len();
            return Err(Error::InvalidArgument(format!("a buffer of {len} bytes for {blocks} blocks")));
        }
        if lba.checked_add(u64::from(blocks)).is_none_or(|end| end > volume_blocks) {
            return Err(Error::OutOfRange { lba, blocks: u64::from(blocks), volume_blocks });
        }
        if let View::Volume(p) = self.view {
            if !live_volumes.contains(&p) {
                return Err(Error::NoSuchVolume(format!("partition {p}")));
            }
        }
        Ok(())
    }

    /// The stripes it touches: its pieces.
    pub(super) fn piece_count(&self, geo: &Geometry) -> u32 {
        let stripe = u64::from(geo.stripe_blocks);
        ((self.lba + u64::from(self.blocks) - 1) / stripe - self.lba / stripe + 1) as u32
    }

    /// Its pieces, cut at stripe boundaries, for slot `slot` of `origin`.
    pub(super) fn pieces(self, origin: u32, slot: u32, geo: &Geometry) -> impl Iterator<Item = Piece> {
        let (stripe, bs) = (u64::from(geo.stripe_blocks), geo.block_size as usize);
        let (mut lba, mut done) = (self.lba, 0);
        std::iter::from_fn(move || {
            if done == self.blocks {
                return None;
            }
            let n = (self.blocks - done).min((stripe - lba % stripe) as u32);
            let buf = if self.op == PieceOp::Zero { IoBuf::EMPTY } else { self.buf.blocks(done, n, bs) };
            let piece = Piece { origin, slot, op: self.op, lba, blocks: n, buf, view: self.view, primaries_tried: 0 };
            lba += u64::from(n);
            done += n;
            Some(piece)
        })
    }
}
