//! The JSON-RPC server's handling of one connection's bytes (framing,
//! batches, request validation), with a handler that parses every
//! `bdev_ilog_*` call's params and executes nothing. Every response must be
//! one line of JSON.

#![no_main]

use ilog_rpc::ilog::parse;
use ilog_rpc::server::serve_stream;
use ilog_rpc::{Handler, RpcError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

struct ParseOnly;

impl Handler for ParseOnly {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        match parse(method, params.as_ref()) {
            Some(Ok(_)) => Ok(Value::Bool(true)),
            Some(Err(e)) => Err(e),
            None => Err(RpcError::method_not_found(method)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    serve_stream(data, &mut out, &ParseOnly);
    for line in out.split_inclusive(|&b| b == b'\n') {
        let response = line.strip_suffix(b"\n").expect("a response ends its line");
        serde_json::from_slice::<Value>(response).expect("a response is JSON");
    }
});
