//! The `bdev_ilog_*` methods served by SPDK's own RPC server (feature
//! `spdk`): params are decoded and results encoded by [`crate::ilog`], as
//! for the standalone target; only the execution differs.
//!
//! Upstream `spdk_rpc_register_method` passes no context pointer to the
//! handler, so each method gets its own `extern "C"` trampoline, generated
//! by `trampolines!`, that names the method to [`dispatch`].

use crate::ilog::{self as methods, Command};
use crate::jobs::Jobs;
use crate::RpcError;
use ilog_bdev::engine::{volume_bdev_name, Reply, Request};
use ilog_bdev::spdk::{self as module, SpdkError};
use ilog_sys as sys;
use serde_json::Value;
use std::ffi::{c_int, c_void, CString};

type Handler = unsafe extern "C" fn(*mut sys::spdk_jsonrpc_request, *const sys::spdk_json_val);

macro_rules! trampolines {
    ($($method:literal => $f:ident),* $(,)?) => {
        $(
            unsafe extern "C" fn $f(request: *mut sys::spdk_jsonrpc_request, params: *const sys::spdk_json_val) {
                // SAFETY: SPDK hands a live request and params (or NULL).
                unsafe { dispatch($method, request, params) }
            }
        )*
        const TRAMPOLINES: &[(&str, Handler)] = &[$(($method, $f)),*];
    };
}

trampolines! {
    "bdev_ilog_create" => rpc_bdev_ilog_create,
    "bdev_ilog_delete" => rpc_bdev_ilog_delete,
    "bdev_ilog_get_bdevs" => rpc_bdev_ilog_get_bdevs,
    "bdev_ilog_snapshot" => rpc_bdev_ilog_snapshot,
    "bdev_ilog_get_volumes" => rpc_bdev_ilog_get_volumes,
    "bdev_ilog_delete_volume" => rpc_bdev_ilog_delete_volume,
    "bdev_ilog_log_read" => rpc_bdev_ilog_log_read,
    "bdev_ilog_get_stats" => rpc_bdev_ilog_get_stats,
    "bdev_ilog_compact" => rpc_bdev_ilog_compact,
    "bdev_ilog_set_policy" => rpc_bdev_ilog_set_policy,
    "bdev_ilog_get_policy" => rpc_bdev_ilog_get_policy,
    "bdev_ilog_event" => rpc_bdev_ilog_event,
}

// A method added to METHODS without a trampoline would be left out at run
// time; catch it when building instead.
const _: () = assert!(TRAMPOLINES.len() == methods::METHODS.len());

/// Registers every method of [`methods::METHODS`] (what `SPDK_RPC_REGISTER`
/// does); call once, at load time. A method without a trampoline is logged
/// and left out rather than registered wrong.
pub fn register_methods() {
    for &method in methods::METHODS {
        let Some(&(_, handler)) = TRAMPOLINES.iter().find(|(m, _)| *m == method) else {
            eprintln!("ilog: no SPDK trampoline for {method}: not registered");
            continue;
        };
        let name = CString::new(method).expect("method names have no NUL");
        // SAFETY: SPDK copies the name; the handler is a valid trampoline.
        // Runtime only, like SPDK's own bdev methods: a JSON config runs them
        // after the subsystems (and the base bdevs' modules) are up.
        unsafe { sys::spdk_rpc_register_method(name.as_ptr(), Some(handler), sys::SPDK_RPC_RUNTIME) };
    }
}

/// Answers one request, on the app thread, exactly once.
struct Responder(*mut sys::spdk_jsonrpc_request);

// SAFETY: the request is only answered on the app thread (every module
// callback runs there); it merely travels through other threads.
unsafe impl Send for Responder {}

impl Responder {
    fn answer(self, result: Result<Value, RpcError>) {
        match result {
            Ok(v) => self.ok(&v),
            Err(e) => self.err(&e),
        }
    }

    fn ok(self, v: &Value) {
        let text = v.to_string();
        // SAFETY: a live request, answered once.
        unsafe {
            let w = sys::spdk_jsonrpc_begin_result(self.0);
            if w.is_null() {
                return; // a notification: no answer expected
            }
            sys::spdk_json_write_val_raw(w, text.as_ptr().cast(), text.len());
            sys::spdk_jsonrpc_end_result(self.0, w);
        }
    }

    fn err(self, e: &RpcError) {
        let msg = CString::new(e.message.replace('\0', " ")).expect("NULs replaced");
        // SAFETY: a live request, answered once.
        unsafe { sys::spdk_jsonrpc_send_error_response(self.0, e.code, msg.as_ptr()) };
    }
}

fn rpc_error(e: SpdkError) -> RpcError {
    RpcError::errno(e.errno, e.message)
}

unsafe extern "C" fn append(ctx: *mut c_void, data: *const c_void, size: usize) -> c_int {
    // SAFETY: ctx is the Vec passed to spdk_json_write_begin; data/size a valid slice.
    unsafe { (*ctx.cast::<Vec<u8>>()).extend_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), size)) };
    0
}

/// SPDK's parsed params back as JSON text, then as a serde value.
unsafe fn params_value(params: *const sys::spdk_json_val) -> Result<Option<Value>, RpcError> {
    if params.is_null() {
        return Ok(None);
    }
    let mut text: Vec<u8> = Vec::new();
    // SAFETY: params is SPDK's decoded value; `append` writes into `text`.
    unsafe {
        let w = sys::spdk_json_write_begin(Some(append), (&mut text as *mut Vec<u8>).cast(), 0);
        sys::spdk_json_write_val(w, params);
        sys::spdk_json_write_end(w);
    }
    serde_json::from_slice(&text).map(Some).map_err(|e| RpcError::new(RpcError::PARSE_ERROR, e.to_string()))
}

unsafe fn dispatch(method: &str, request: *mut sys::spdk_jsonrpc_request, params: *const sys::spdk_json_val) {
    let r = Responder(request);
    // SAFETY: the caller's params.
    let params = match unsafe { params_value(params) } {
        Ok(p) => p,
        Err(e) => return r.err(&e),
    };
    match methods::parse(method, params.as_ref()) {
        None => r.err(&RpcError::method_not_found(method)),
        Some(Err(e)) => r.err(&e),
        Some(Ok(cmd)) => execute(cmd, r),
    }
}

/// Runs an engine request on `name` and answers with `encode(reply)`.
fn engine_call(name: String, req: Request, r: Responder, encode: impl FnOnce(&str, Reply) -> Value + Send + 'static) {
    let bdev = name.clone();
    let answer = std::sync::Arc::new(std::sync::Mutex::new(Some(r)));
    let on_done = answer.clone();
    let submitted = module::call(&name, req, move |result| {
        if let Some(r) = on_done.lock().expect("responder").take() {
            r.answer(result.map(|reply| encode(&bdev, reply)).map_err(RpcError::from));
        }
    });
    if let Err(e) = submitted {
        if let Some(r) = answer.lock().expect("responder").take() {
            r.err(&rpc_error(e));
        }
    }
}

/// A volume whose bdev name another module's bdev has (a generated id can
/// meet one) is not exported: its `"bdev"` is null, never the other bdev.
fn unexported_as_null(bdev: &str, mut result: Value) -> Value {
    let fix = |v: &mut Value| {
        if v["volume_id"].as_str().is_some_and(|id| module::foreign_volume_bdev(bdev, id)) {
            v["bdev"] = Value::Null;
        }
    };
    match &mut result {
        Value::Array(volumes) => volumes.iter_mut().for_each(fix),
        volume => fix(volume),
    }
    result
}

fn execute(cmd: Command, r: Responder) {
    match cmd {
        Command::Create(p) => {
            let config = serde_json::to_string(&p).expect("params serialize");
            let (name, base) = (p.name.clone(), p.base_bdev_name.clone());
            module::create(&name, &base, p.format_options(), config, move |res| {
                let created = res.map(|formatted| {
                    p.warn_ignored(&formatted);
                    methods::create_result(&p.name)
                });
                r.answer(created.map_err(rpc_error))
            });
        }
        Command::Delete { name } => {
            module::delete(&name, move |res| r.answer(res.map(|()| methods::done_result()).map_err(rpc_error)))
        }
        Command::GetBdevs { name } => {
            let infos: Vec<_> =
                module::bdevs().into_iter().filter(|b| name.as_ref().is_none_or(|want| *want == b.name)).collect();
            match name {
                Some(want) if infos.is_empty() => {
                    r.err(&RpcError::errno(libc::ENODEV, format!("No such ilog bdev: {want}")))
                }
                _ => r.ok(&methods::bdevs_result(&infos)),
            }
        }
        Command::Snapshot { name, snapshot_name } => {
            if let Some(taken) =
                snapshot_name.as_deref().map(|v| volume_bdev_name(&name, v)).filter(|b| module::bdev_exists(b))
            {
                // Refused before anything seals: the volume could not be exported.
                return r.err(&RpcError::errno(libc::EEXIST, format!("bdev {taken} already exists")));
            }
            engine_call(name, Request::Snapshot { name: snapshot_name }, r, |bdev, reply| match reply {
                Reply::Volume(v) => unexported_as_null(bdev, methods::snapshot_result(bdev, &v)),
                other => unreachable!("snapshot answered {other:?}"),
            })
        }
        Command::GetVolumes { name } => engine_call(name, Request::ListVolumes, r, |bdev, reply| match reply {
            Reply::Volumes(vs) => unexported_as_null(bdev, methods::volumes_result(bdev, &vs)),
            other => unreachable!("list volumes answered {other:?}"),
        }),
        Command::DeleteVolume { name, volume } => module::delete_volume(&name, &volume, move |res| {
            r.answer(res.map(|()| methods::done_result()).map_err(rpc_error))
        }),
        Command::LogRead { name, cursor, count, with_data } => {
            engine_call(name, Request::LogRead { cursor, count, with_data }, r, |_, reply| match reply {
                Reply::Log(batch) => methods::log_result(&batch),
                other => unreachable!("log read answered {other:?}"),
            })
        }
        Command::GetStats { name } => engine_call(name, Request::Stats, r, |bdev, reply| match reply {
            Reply::Stats(s) => {
                let mut stats = methods::stats_result(bdev, &s);
                stats["jobs"] = jobs().lock().expect("job table").of(bdev);
                stats
            }
            other => unreachable!("stats answered {other:?}"),
        }),
        Command::Compact { name, volume, mode, background } => {
            let req = Request::Compact { volume, mode };
            if !background {
                return engine_call(name, req, r, |_, _| methods::compact_result(None));
            }
            let id = jobs().lock().expect("job table").start(&name);
            let submitted = module::call(&name, req, move |result| {
                let state = match result {
                    Ok(_) => "done".to_owned(),
                    Err(e) => format!("failed: {e}"),
                };
                jobs().lock().expect("job table").finish(id, state);
            });
            match submitted {
                Ok(()) => r.ok(&methods::compact_result(Some(id))),
                Err(e) => {
                    jobs().lock().expect("job table").forget(id);
                    r.err(&rpc_error(e))
                }
            }
        }
        Command::SetPolicy { name, policy } => {
            engine_call(name, Request::SetPolicy { policy }, r, |_, _| methods::done_result())
        }
        Command::GetPolicy { name } => engine_call(name, Request::GetPolicy, r, |_, reply| match reply {
            Reply::Policy(p) => methods::policy_result(&p),
            other => unreachable!("get policy answered {other:?}"),
        }),
        Command::Event { name, event } => {
            engine_call(name, Request::Event { name: event }, r, |_, _| methods::done_result())
        }
    }
}

fn jobs() -> &'static std::sync::Mutex<Jobs> {
    static JOBS: std::sync::OnceLock<std::sync::Mutex<Jobs>> = std::sync::OnceLock::new();
    JOBS.get_or_init(Default::default)
}
