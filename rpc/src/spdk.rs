//! The `bdev_ilog_*` methods served by SPDK's own RPC server (feature
//! `spdk`): params are decoded and results encoded by [`crate::ilog`], as
//! for the standalone target; only the execution differs. SPDK's side
//! (one trampoline per method, the request to answer) is
//! `ilog_bdev::spdk::ffi::rpc`.

use crate::ilog::{self as methods, Command, CreateParams, StreamTarget};
use crate::jobs::{self, Jobs};
use crate::RpcError;
use ilog_bdev::copy::{self, CopySpec, Destination, StreamStore};
use ilog_bdev::engine::{volume_bdev_name, CompactMode, Reply, Request};
use ilog_bdev::spdk::ffi::rpc::{register_rpc_methods, RpcRequest, MAX_METHODS};
use ilog_bdev::spdk::{self as module, SpdkError};
use serde_json::Value;
use std::sync::{Arc, Mutex};

// A method past the trampolines would be left out at run time; catch it
// when building instead.
const _: () = assert!(methods::METHODS.len() <= MAX_METHODS);

/// Registers every method of [`methods::METHODS`] (what
/// `SPDK_RPC_REGISTER` does); call once, at load time.
pub fn register_methods() {
    register_rpc_methods(methods::METHODS, dispatch);
}

/// Answers one request, on the app thread, exactly once.
struct Responder(RpcRequest);

impl Responder {
    fn answer(self, result: Result<Value, RpcError>) {
        match result {
            Ok(v) => self.ok(&v),
            Err(e) => self.err(&e),
        }
    }

    fn ok(self, v: &Value) {
        self.0.ok(&v.to_string());
    }

    fn err(self, e: &RpcError) {
        self.0.error(e.code, &e.message);
    }
}

fn rpc_error(e: SpdkError) -> RpcError {
    RpcError::errno(e.errno, e.message)
}

fn dispatch(method: &'static str, params: Option<Vec<u8>>, request: RpcRequest) {
    let r = Responder(request);
    let params = match params.map(|p| serde_json::from_slice::<Value>(&p)).transpose() {
        Ok(p) => p,
        Err(e) => return r.err(&RpcError::new(RpcError::PARSE_ERROR, e.to_string())),
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
        Command::Create(p) => create(p, r),
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
                stats["jobs"] = jobs().lock().expect("job table").of(Some(bdev));
                stats
            }
            other => unreachable!("stats answered {other:?}"),
        }),
        Command::Compact { name, volume, mode, background } => compact(name, volume, mode, background, r),
        Command::SetPolicy { name, policy } => {
            engine_call(name, Request::SetPolicy { policy }, r, |_, _| methods::done_result())
        }
        Command::GetPolicy { name } => engine_call(name, Request::GetPolicy, r, |_, reply| match reply {
            Reply::Policy(p) => methods::policy_result(&p),
            other => unreachable!("get policy answered {other:?}"),
        }),
        Command::Diff { name, volume, base_volume, lba_start, lba_count } => {
            let Some(bdev) = module::bdevs().into_iter().find(|b| b.name == name) else {
                return r.err(&RpcError::errno(libc::ENODEV, format!("No such ilog bdev: {name}")));
            };
            let lba_start = lba_start.unwrap_or(0);
            let lba_count = lba_count.unwrap_or(bdev.num_blocks.saturating_sub(lba_start));
            let req = Request::Diff { volume, base_volume, lba_start, lba_count };
            engine_call(name, req, r, |_, reply| match reply {
                Reply::Extents(e) => methods::diff_result(&e),
                other => unreachable!("diff answered {other:?}"),
            })
        }
        Command::Copy { name, spec, target } => copy(name, spec, target, r),
        Command::Restore { name, source, resume_token } => restore(name, source, resume_token, r),
        Command::GetJobs { name } => match name {
            Some(name) if !module::bdev_exists(&name) => {
                r.err(&RpcError::errno(libc::ENODEV, format!("No such bdev: {name}")))
            }
            name => r.ok(&jobs().lock().expect("job table").of(name.as_deref())),
        },
        Command::Event { name, event } => {
            engine_call(name, Request::Event { name: event }, r, |_, _| methods::done_result())
        }
        Command::RebuildPrimary { name, primary_bdev_name, full } => {
            module::rebuild_primary(&name, &primary_bdev_name, full, move |res| {
                r.answer(res.map(|()| methods::done_result()).map_err(rpc_error))
            })
        }
    }
}

/// `bdev_ilog_create`: answered once the bdev and its volumes are registered.
fn create(p: CreateParams, r: Responder) {
    let config = serde_json::to_string(&p).expect("params serialize");
    let (name, base) = (p.name.clone(), p.base_bdev_name.clone());
    let primaries = p.primary_bdev_names.clone().unwrap_or_default();
    module::create(&name, &base, &primaries, p.format_options(), config, move |res| {
        let created = res.map(|formatted| {
            p.warn_ignored(&formatted);
            methods::create_result(&p.name)
        });
        r.answer(created.map_err(rpc_error))
    });
}

/// `bdev_ilog_compact`: answered when done, or at once with a job id when `background`.
fn compact(name: String, volume: Option<String>, mode: CompactMode, background: bool, r: Responder) {
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

/// `bdev_ilog_copy`: answered with the job id once the copy is planned.
fn copy(name: String, spec: CopySpec, target: StreamTarget, r: Responder) {
    let opened = module::copy::volumes(&name).map_err(rpc_error).and_then(|src| Ok((src, stream_store(&target)?)));
    let (src, store) = match opened {
        Ok(v) => v,
        Err(e) => return r.err(&e),
    };
    // Planning reads the engine (the diff): off the app thread.
    let work = move || {
        let plan = copy::plan(src.as_ref(), &spec)?;
        Ok(jobs::start_copy(jobs(), &name, src, plan, store))
    };
    module::copy::off_thread(work, move |id: Result<u64, ilog_bdev::Error>| {
        r.answer(id.map(methods::job_result).map_err(RpcError::from))
    })
}

/// `bdev_ilog_restore`: answered with the job id once the stream's header is read.
fn restore(name: String, source: StreamTarget, resume_token: Option<String>, r: Responder) {
    let dst = if module::copy::is_ilog(&name) {
        module::copy::volumes(&name).map(Destination::Ilog)
    } else {
        module::copy::open_bdev(&name).map(|dev| Destination::Device { name: name.clone(), dev })
    };
    let opened = dst.map_err(rpc_error).and_then(|dst| Ok((dst, stream_store(&source)?)));
    let (dst, source) = match opened {
        Ok(v) => v,
        Err(e) => return r.err(&e),
    };
    // Planning reads the stream's header: off the app thread.
    let work = move || {
        let plan = copy::plan_restore(&dst, &source, resume_token.as_deref())?;
        Ok(jobs::start_restore(jobs(), &name, dst, source, plan))
    };
    module::copy::off_thread(work, move |id: Result<u64, ilog_bdev::Error>| {
        r.answer(id.map(methods::job_result).map_err(RpcError::from))
    })
}

fn jobs() -> &'static Arc<Mutex<Jobs>> {
    static JOBS: std::sync::OnceLock<Arc<Mutex<Jobs>>> = std::sync::OnceLock::new();
    JOBS.get_or_init(Default::default)
}

/// Where a stream goes or comes from: a file, or a bdev opened (and
/// claimed) here, on the app thread.
fn stream_store(target: &StreamTarget) -> Result<StreamStore, RpcError> {
    jobs::stream_store(target, |b| {
        if module::copy::is_ilog(b) {
            let why = format!("bdev {b} is an ilog bdev: a stream goes to another bdev or a file");
            return Err(RpcError::errno(libc::EINVAL, why));
        }
        module::copy::open_bdev(b).map_err(rpc_error)
    })
}
