//! Methods served by SPDK's JSON-RPC server. Upstream
//! `spdk_rpc_register_method` passes the handler no context pointer, so
//! each method gets its own `extern "C"` trampoline: `trampoline::<I>`
//! serves the `I`-th registered method.

use super::thread::Thread;
use ilog_sys as sys;
use std::ffi::{c_int, c_void, CString};
use std::sync::OnceLock;

/// A request to answer, once, on the app thread.
pub struct RpcRequest(*mut sys::spdk_jsonrpc_request);

// SAFETY: answering checks that it runs on the app thread (every RPC
// handler and module callback runs there); it merely travels elsewhere.
unsafe impl Send for RpcRequest {}

impl RpcRequest {
    /// Answers with `result`, JSON text.
    pub fn ok(self, result: &str) {
        assert!(Thread::app().is_current(), "RPCs are answered on the app thread");
        // SAFETY: a live request, answered once (the handle is consumed).
        unsafe {
            let w = sys::spdk_jsonrpc_begin_result(self.0);
            if w.is_null() {
                return; // a notification: no answer expected
            }
            sys::spdk_json_write_val_raw(w, result.as_ptr().cast(), result.len());
            sys::spdk_jsonrpc_end_result(self.0, w);
        }
    }

    pub fn error(self, code: i32, message: &str) {
        assert!(Thread::app().is_current(), "RPCs are answered on the app thread");
        let msg = CString::new(message.replace('\0', " ")).expect("NULs replaced");
        // SAFETY: a live request, answered once (the handle is consumed).
        unsafe { sys::spdk_jsonrpc_send_error_response(self.0, code, msg.as_ptr()) };
    }
}

/// Serves one call: the method, its params as JSON text (`None` without
/// params), and the request to answer.
pub type RpcHandler = fn(&'static str, Option<Vec<u8>>, RpcRequest);

/// Most methods the trampolines serve.
pub const MAX_METHODS: usize = 24;

static METHODS: OnceLock<(&'static [&'static str], RpcHandler)> = OnceLock::new();

type Trampoline = unsafe extern "C" fn(*mut sys::spdk_jsonrpc_request, *const sys::spdk_json_val);

const TRAMPOLINES: [Trampoline; MAX_METHODS] = [
    trampoline::<0>,
    trampoline::<1>,
    trampoline::<2>,
    trampoline::<3>,
    trampoline::<4>,
    trampoline::<5>,
    trampoline::<6>,
    trampoline::<7>,
    trampoline::<8>,
    trampoline::<9>,
    trampoline::<10>,
    trampoline::<11>,
    trampoline::<12>,
    trampoline::<13>,
    trampoline::<14>,
    trampoline::<15>,
    trampoline::<16>,
    trampoline::<17>,
    trampoline::<18>,
    trampoline::<19>,
    trampoline::<20>,
    trampoline::<21>,
    trampoline::<22>,
    trampoline::<23>,
];

unsafe extern "C" fn trampoline<const I: usize>(
    request: *mut sys::spdk_jsonrpc_request,
    params: *const sys::spdk_json_val,
) {
    let (methods, handler) = METHODS.get().expect("methods registered before they are served");
    // SAFETY: SPDK hands a live params value (or NULL) for this call.
    let params = unsafe { params_text(params) };
    handler(methods[I], params, RpcRequest(request));
}

unsafe extern "C" fn append(ctx: *mut c_void, data: *const c_void, size: usize) -> c_int {
    // SAFETY: ctx is the Vec passed to spdk_json_write_begin; data/size a valid slice.
    unsafe { (*ctx.cast::<Vec<u8>>()).extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), size)) };
    0
}

/// SPDK's parsed params back as JSON text.
///
/// # Safety
/// `params` is NULL or a live decoded value.
unsafe fn params_text(params: *const sys::spdk_json_val) -> Option<Vec<u8>> {
    if params.is_null() {
        return None;
    }
    let mut text: Vec<u8> = Vec::new();
    // SAFETY: the caller's params; `append` writes into `text`.
    unsafe {
        let w = sys::spdk_json_write_begin(Some(append), (&mut text as *mut Vec<u8>).cast(), 0);
        sys::spdk_json_write_val(w, params);
        sys::spdk_json_write_end(w);
    }
    Some(text)
}

/// Registers `methods` (what `SPDK_RPC_REGISTER` does), each served by
/// `handler`; once, at load time. Runtime only, like SPDK's own bdev
/// methods: a JSON config runs them after the subsystems are up.
pub fn register_rpc_methods(methods: &'static [&'static str], handler: RpcHandler) {
    assert!(methods.len() <= MAX_METHODS, "more methods than trampolines");
    assert!(METHODS.set((methods, handler)).is_ok(), "methods registered once");
    for (&method, &trampoline) in methods.iter().zip(&TRAMPOLINES) {
        let name = CString::new(method).expect("method names have no NUL");
        // SAFETY: SPDK copies the name; the trampoline serves this method.
        unsafe { sys::spdk_rpc_register_method(name.as_ptr(), Some(trampoline), sys::SPDK_RPC_RUNTIME) };
    }
}
