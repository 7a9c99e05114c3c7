//! Helpers shared by integration tests. Each test crate uses some of them,
//! so the rest are dead code there.

#[allow(dead_code)]
pub mod blocks;
#[allow(dead_code)]
pub mod io;
#[allow(dead_code)]
pub mod sim;
