//! Device request tags: the top byte says which part of a shard a
//! completion belongs to, the rest is that part's own value.

pub(super) const TAG_WRITE: u64 = 1 << 56;
pub(super) const TAG_READ: u64 = 2 << 56;
pub(super) const TAG_META: u64 = 3 << 56;
pub(super) const TAG_FLUSH: u64 = 4 << 56;
pub(super) const TAG_CONTROL: u64 = 5 << 56;
pub(super) const TAG_COMPACT_READ: u64 = 6 << 56;
pub(super) const TAG_DRAIN: u64 = 7 << 56;
/// On a primary's channel.
pub(super) const TAG_PRIMARY_WRITE: u64 = 8 << 56;
pub(super) const TAG_PRIMARY_READ: u64 = 9 << 56;
pub(super) const TAG_PRIMARY_SYNC: u64 = 10 << 56;
pub(super) const TAG_KIND: u64 = 0xff << 56;
