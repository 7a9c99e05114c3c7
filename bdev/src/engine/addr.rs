//! Log addresses: a block's position in the log region, as the index and
//! the partition tables store it (4 bytes).

/// Block number relative to the start of the log region.
pub type LogAddr = u32;

/// The block reads as zeros (unmapped or write-zeroed) in this version.
pub const ZERO: LogAddr = u32::MAX - 1;
/// No version: never stored as a mapping.
pub const NONE: LogAddr = u32::MAX;
