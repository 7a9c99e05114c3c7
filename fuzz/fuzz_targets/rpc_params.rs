//! `ilog_rpc::ilog::parse`, every method with any JSON params, and what
//! the target does next with what it accepts: input `[method] params`, the
//! first byte picking one of `METHODS` or a name none has; empty params
//! stand for none.

#![no_main]

use ilog_bdev::format::Geometry;
use ilog_fuzz::check_policy;
use ilog_rpc::ilog::{parse, Command, METHODS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, params)) = data.split_first() else { return };
    let method = METHODS.get(usize::from(pick) % (METHODS.len() + 1)).copied().unwrap_or("bdev_ilog_nope");
    let params = match serde_json::from_slice::<Value>(params) {
        Ok(params) => Some(params),
        Err(_) if params.is_empty() => None,
        Err(_) => return,
    };
    match parse(method, params.as_ref()) {
        None => assert!(!METHODS.contains(&method), "{method} is not parsed"),
        Some(Ok(Command::Create(create))) => {
            // Formatting a base bdev with the options: 1 GiB of 512-byte
            // blocks, 1 TiB of 4 KiB blocks.
            let options = create.format_options();
            let _ = Geometry::plan(512, 1 << 21, &options);
            let _ = Geometry::plan(4096, 1 << 28, &options);
        }
        Some(Ok(Command::SetPolicy { policy, .. })) => check_policy(&policy),
        Some(_) => {}
    }
});
