//! Runtimes that drive the engine's shards.

pub mod native;
pub mod sim;
