//! SPDK's JSON writer, as the bdev callbacks that write JSON get it.

use ilog_sys as sys;
use std::ffi::CStr;

/// A live `spdk_json_write_ctx`, borrowed for one callback.
pub(crate) struct JsonWriter(*mut sys::spdk_json_write_ctx);

impl JsonWriter {
    /// # Safety
    /// `w` is a live write context for as long as the writer is used.
    pub(super) unsafe fn new(w: *mut sys::spdk_json_write_ctx) -> JsonWriter {
        JsonWriter(w)
    }

    /// Writes `"name": <raw JSON>` into the object the writer is in.
    pub fn named_raw(&mut self, name: &CStr, raw: &str) {
        // SAFETY: a live context (see `new`); SPDK copies both.
        unsafe {
            sys::spdk_json_write_name(self.0, name.as_ptr());
            sys::spdk_json_write_val_raw(self.0, raw.as_ptr().cast(), raw.len());
        }
    }

    /// Writes `{"method": method, "params": <raw JSON>}`, one config entry.
    pub fn method_call(&mut self, method: &CStr, params: &str) {
        // SAFETY: a live context (see `new`) inside an array.
        unsafe {
            sys::spdk_json_write_object_begin(self.0);
            sys::spdk_json_write_named_string(self.0, c"method".as_ptr(), method.as_ptr());
        }
        self.named_raw(c"params", params);
        // SAFETY: closes the object begun above.
        unsafe { sys::spdk_json_write_object_end(self.0) };
    }
}
