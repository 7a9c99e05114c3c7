//! The target: the bdevs it holds (malloc and aio bases, SPDK's error bdevs
//! on them, ilog bdevs and their snapshot volumes), its NBD exports, and the
//! JSON-RPC methods that manage them. SPDK's own methods keep SPDK's names,
//! params and results; every `bdev_ilog_*` method is parsed and answered by
//! `ilog-rpc`.

use crate::error_bdev::{self, ErrorDevice, ErrorType, IoType};
use crate::export::{BaseExport, IlogExport};
use crate::nbd::{Export, Listen, NbdServer};
use ilog_bdev::copy::{self, Destination};
use ilog_bdev::device::{BlockDevice, FileDevice, MallocDevice};
use ilog_bdev::engine::{BdevInfo, CompactMode, PrimaryOpen};
use ilog_bdev::engine::{Request, View};
use ilog_bdev::format::valid_block_size;
use ilog_bdev::runtime::native::{Callback, Ilog, Reactors};
use ilog_bdev::Error;
use ilog_rpc::ilog::{self as methods, Command, CreateParams, StreamTarget};
use ilog_rpc::jobs::{self, Jobs};
use ilog_rpc::{Handler, RpcError};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The target's subsystems, in initialization order, with their dependencies.
/// How long `bdev_ilog_delete` waits for other RPCs using the bdev to end
/// before it answers busy.
const DELETE_WAIT: Duration = Duration::from_secs(2);

const SUBSYSTEMS: &[(&str, &[&str])] = &[("bdev", &[]), ("nbd", &["bdev"])];

/// SPDK's methods this target serves besides the `bdev_ilog_*` ones.
const SPDK_METHODS: &[&str] = &[
    "bdev_aio_create",
    "bdev_aio_delete",
    "bdev_error_create",
    "bdev_error_delete",
    "bdev_error_inject_error",
    "bdev_get_bdevs",
    "bdev_malloc_create",
    "bdev_malloc_delete",
    "framework_get_config",
    "framework_get_reactors",
    "framework_get_subsystems",
    "nbd_get_disks",
    "nbd_start_disk",
    "nbd_stop_disk",
    "rpc_get_methods",
    "save_config",
    "spdk_get_version",
];

enum BaseKind {
    Malloc,
    Aio {
        filename: PathBuf,
    },
    /// SPDK's error bdev (`EE_<base>`) on base bdev `base`, which it claims.
    Error {
        base: String,
        dev: Arc<ErrorDevice>,
    },
}

impl BaseKind {
    /// The module whose `bdev_<module>_delete` deletes it.
    fn module(&self) -> &'static str {
        match self {
            BaseKind::Malloc => "malloc",
            BaseKind::Aio { .. } => "aio",
            BaseKind::Error { .. } => "error",
        }
    }
}

struct Base {
    kind: BaseKind,
    dev: Arc<dyn BlockDevice>,
    uuid: String,
    /// The ilog bdev that claimed it.
    claimed_by: Option<String>,
}

struct IlogBdev {
    ilog: Arc<Ilog>,
    params: CreateParams,
    /// The volumes generation its exports were last checked at.
    volumes_seen: u64,
}

struct NbdDisk {
    bdev: String,
    server: NbdServer,
}

#[derive(Default)]
struct State {
    bases: BTreeMap<String, Base>,
    ilogs: BTreeMap<String, IlogBdev>,
    /// By `nbd_device` (where the server listens).
    nbd: BTreeMap<String, NbdDisk>,
    /// Creation order, for `save_config`.
    order: Vec<String>,
}

pub struct Target {
    reactors: Arc<Reactors>,
    state: Mutex<State>,
    jobs: Arc<Mutex<Jobs>>,
}

/// Decodes a method's params as SPDK does: by name only (an object, or
/// none), never positionally.
fn decode<T: for<'de> Deserialize<'de>>(params: Option<Value>) -> Result<T, RpcError> {
    if params.as_ref().is_some_and(|p| !p.is_object()) {
        return Err(RpcError::invalid_params("Invalid parameters: params must be an object"));
    }
    serde_json::from_value(params.unwrap_or_else(|| json!({}))).map_err(|e| RpcError::invalid_params(e.to_string()))
}

/// Methods that take no params refuse any, as SPDK's do.
fn no_params(params: Option<Value>) -> Result<(), RpcError> {
    match params {
        None => Ok(()),
        Some(_) => Err(RpcError::invalid_params("Invalid parameters: this method takes none")),
    }
}

/// `rpc_get_methods`'s params: every method serves in every state here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetMethods {
    #[serde(default, rename = "current")]
    _current: bool,
    #[serde(default, rename = "include_aliases")]
    _include_aliases: bool,
}

/// The canonical text form of a uuid (8-4-4-4-12 hex digits), as SPDK
/// parses one.
fn valid_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn no_such_bdev(name: &str) -> RpcError {
    RpcError::errno(libc::ENODEV, format!("bdev {name} not found"))
}

fn busy(what: String) -> RpcError {
    RpcError::errno(libc::EBUSY, what)
}

fn uuid_string(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// SPDK's `bdev_malloc_create` params: all accepted, those asking for
/// what a plain RAM bdev here lacks (metadata, DIF) refused when set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MallocCreate {
    name: Option<String>,
    num_blocks: u64,
    block_size: u32,
    uuid: Option<String>,
    physical_block_size: Option<u32>,
    optimal_io_boundary: Option<u32>,
    md_size: Option<u32>,
    md_interleave: Option<bool>,
    dif_type: Option<u32>,
    dif_is_head_of_md: Option<bool>,
    dif_pi_format: Option<u32>,
    numa_id: Option<i32>,
}

impl MallocCreate {
    fn check_unsupported(&self) -> Result<(), RpcError> {
        let metadata =
            self.md_size.unwrap_or(0) != 0 || self.md_interleave == Some(true) || self.dif_is_head_of_md == Some(true);
        if metadata || self.dif_type.unwrap_or(0) != 0 || self.dif_pi_format.unwrap_or(0) != 0 {
            return Err(RpcError::errno(
                libc::ENOTSUP,
                "metadata and DIF are not supported by this target's malloc bdevs",
            ));
        }
        if self.physical_block_size.is_some_and(|p| p != 0 && (p < self.block_size || !p.is_power_of_two())) {
            return Err(RpcError::invalid_params("physical_block_size must be a power of two at least block_size"));
        }
        Ok(())
    }
}

/// SPDK's `bdev_aio_create` params (served through io_uring here).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AioCreate {
    name: String,
    filename: PathBuf,
    #[serde(default)]
    block_size: Option<u32>,
    readonly: Option<bool>,
    fallocate: Option<bool>,
    uuid: Option<String>,
    nowait: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByName {
    name: String,
}

/// SPDK's `bdev_error_create` params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorCreate {
    base_name: String,
    uuid: Option<String>,
}

/// SPDK's `bdev_error_inject_error` params: `num` defaults to 1 and
/// `queue_depth` to 0, as there; the NVMe status and the corruption's
/// offset and value go with error types not served here.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErrorInject {
    name: String,
    io_type: IoType,
    error_type: ErrorType,
    nvme_sct: Option<u32>,
    nvme_sc: Option<u32>,
    num: Option<u32>,
    queue_depth: Option<u64>,
    corrupt_offset: Option<u64>,
    corrupt_value: Option<u8>,
}

/// `framework_get_config` params. Batches (one `bdev_wait_for_examine`
/// split per batch) do not exist here: the config is the same either way.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetConfig {
    name: String,
    #[serde(default, rename = "with_batches")]
    _with_batches: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaybeName {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NbdStart {
    bdev_name: String,
    nbd_device: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NbdDevice {
    nbd_device: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaybeNbdDevice {
    nbd_device: Option<String>,
}

impl Target {
    pub fn new(cores: u32) -> Target {
        Target { reactors: Reactors::start(cores), state: Mutex::new(State::default()), jobs: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops every NBD export and closes every ilog bdev cleanly.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        let disks = std::mem::take(&mut st.nbd);
        log::info!("stopping {} NBD export(s)", disks.len());
        NbdServer::stop_all(disks.into_values().map(|d| d.server));
        for (name, bdev) in std::mem::take(&mut st.ilogs) {
            match Arc::try_unwrap(bdev.ilog) {
                Ok(ilog) => match ilog.close() {
                    Ok(()) => log::info!("closed {name} cleanly"),
                    Err(e) => log::error!("closing {name}: {e}"),
                },
                Err(_) => log::error!("{name} still in use at shutdown; not closed cleanly"),
            }
        }
    }

    fn malloc_create(&self, p: MallocCreate) -> Result<Value, RpcError> {
        p.check_unsupported()?;
        check_uuid(p.uuid.as_deref())?;
        // Placement hints with no effect on a RAM bdev here.
        let _ = (p.optimal_io_boundary, p.numa_id);
        let mut st = self.lock();
        let name = match p.name {
            Some(n) => n,
            None => (0..)
                .map(|i| format!("Malloc{i}"))
                .find(|n| !st.bases.contains_key(n) && !st.ilogs.contains_key(n))
                .expect("a free name"),
        };
        check_new_name(&st, &name)?;
        if p.num_blocks == 0 || !valid_block_size(p.block_size) {
            return Err(RpcError::invalid_params(
                "num_blocks must be > 0 and block_size a power of two in 512..=65536",
            ));
        }
        let bytes = p.num_blocks.checked_mul(u64::from(p.block_size)).filter(|&b| b <= 1 << 40);
        let Some(bytes) = bytes else {
            return Err(RpcError::errno(libc::ENOMEM, "malloc bdev larger than 1 TiB"));
        };
        let host = host_memory_bytes();
        if bytes > host {
            return Err(RpcError::errno(
                libc::ENOMEM,
                format!("malloc bdev of {bytes} bytes is larger than the host's memory ({host} bytes)"),
            ));
        }
        let Some(dev) = MallocDevice::try_new(p.num_blocks, p.block_size) else {
            return Err(RpcError::errno(libc::ENOMEM, format!("cannot allocate {bytes} bytes for a malloc bdev")));
        };
        let dev: Arc<dyn BlockDevice> = Arc::new(dev);
        let uuid = p.uuid.unwrap_or_else(|| uuid_string(&ilog_bdev::format::random_uuid()));
        st.bases.insert(name.clone(), Base { kind: BaseKind::Malloc, dev, uuid, claimed_by: None });
        st.order.push(name.clone());
        log::info!("created malloc bdev {name}: {} blocks of {}", p.num_blocks, p.block_size);
        Ok(json!(name))
    }

    fn aio_create(&self, p: AioCreate) -> Result<Value, RpcError> {
        if p.readonly == Some(true) {
            return Err(RpcError::errno(libc::ENOTSUP, "read-only aio bdevs are not supported"));
        }
        // fallocate and nowait tune Linux AIO; io_uring needs neither.
        let _ = (p.fallocate, p.nowait);
        check_uuid(p.uuid.as_deref())?;
        let mut st = self.lock();
        check_new_name(&st, &p.name)?;
        let bs = p.block_size.filter(|&b| b != 0).unwrap_or(4096);
        if !valid_block_size(bs) {
            return Err(RpcError::invalid_params(format!("block_size {bs} must be a power of two in 512..=65536")));
        }
        let dev = FileDevice::open(&p.filename, bs).map_err(|e| {
            RpcError::errno(e.raw_os_error().unwrap_or(libc::EINVAL), format!("{}: {e}", p.filename.display()))
        })?;
        if dev.num_blocks() == 0 {
            return Err(RpcError::errno(
                libc::EINVAL,
                format!("{} is smaller than one block of {bs} bytes", p.filename.display()),
            ));
        }
        log::info!("created aio bdev {} on {} (O_DIRECT: {})", p.name, p.filename.display(), dev.is_direct());
        let uuid = p.uuid.unwrap_or_else(|| uuid_string(&ilog_bdev::format::random_uuid()));
        let base = Base { kind: BaseKind::Aio { filename: p.filename }, dev: Arc::new(dev), uuid, claimed_by: None };
        st.bases.insert(p.name.clone(), base);
        st.order.push(p.name.clone());
        Ok(json!(p.name))
    }

    /// `bdev_<module>_delete`: only a bdev of that module, unclaimed and
    /// not exported.
    fn base_delete(&self, name: &str, module: &str) -> Result<Value, RpcError> {
        let mut st = self.lock();
        let base = st.bases.get(name).ok_or_else(|| no_such_bdev(name))?;
        if base.kind.module() != module {
            return Err(no_such_bdev(name));
        }
        if let Some(owner) = &base.claimed_by {
            return Err(busy(format!("bdev {name} is claimed by {owner}")));
        }
        if let Some(dev) = st.nbd.iter().find(|(_, d)| d.bdev == name).map(|(k, _)| k.clone()) {
            return Err(busy(format!("bdev {name} is exported at {dev}")));
        }
        if let Some(Base { kind: BaseKind::Error { base, .. }, .. }) = st.bases.remove(name) {
            if let Some(b) = st.bases.get_mut(&base) {
                b.claimed_by = None;
            }
            log::info!("deleted error bdev {name}; {base} is free");
        }
        st.order.retain(|n| n != name);
        Ok(json!(true))
    }

    /// SPDK's `bdev_error_create`: `EE_<base_name>` on an unclaimed base
    /// bdev, which it claims.
    fn error_create(&self, p: ErrorCreate) -> Result<Value, RpcError> {
        check_uuid(p.uuid.as_deref())?;
        let mut st = self.lock();
        let name = error_bdev::error_bdev_name(&p.base_name);
        let base = st.bases.get(&p.base_name).ok_or_else(|| no_such_bdev(&p.base_name))?;
        if let Some(owner) = &base.claimed_by {
            return Err(busy(format!("bdev {} is already claimed by {owner}", p.base_name)));
        }
        if st.nbd.values().any(|d| d.bdev == p.base_name) {
            return Err(busy(format!("bdev {} is exported over NBD", p.base_name)));
        }
        check_new_name(&st, &name)?;
        let dev = Arc::new(ErrorDevice::new(base.dev.clone()));
        let uuid = p.uuid.unwrap_or_else(|| uuid_string(&ilog_bdev::format::random_uuid()));
        let kind = BaseKind::Error { base: p.base_name.clone(), dev: dev.clone() };
        st.bases.insert(name.clone(), Base { kind, dev, uuid, claimed_by: None });
        st.bases.get_mut(&p.base_name).expect("checked").claimed_by = Some(name.clone());
        st.order.push(name.clone());
        log::info!("created error bdev {name} on {}", p.base_name);
        Ok(json!(true))
    }

    /// SPDK's `bdev_error_inject_error`.
    fn error_inject(&self, p: ErrorInject) -> Result<Value, RpcError> {
        let nvme_status = p.nvme_sct.unwrap_or(0) != 0 || p.nvme_sc.unwrap_or(0) != 0;
        if (p.error_type == ErrorType::NvmeFailure) != nvme_status {
            return Err(RpcError::errno(
                libc::EINVAL,
                "nvme_sct or nvme_sc should be specified for NVMe error injection",
            ));
        }
        if p.error_type == ErrorType::CorruptData && p.corrupt_value.unwrap_or(0) == 0 {
            return Err(RpcError::errno(libc::EINVAL, "corrupt_value should be non-zero"));
        }
        // Only corrupt_data, refused below, would use it.
        let _ = p.corrupt_offset;
        let st = self.lock();
        let Some(Base { kind: BaseKind::Error { dev, .. }, .. }) = st.bases.get(&p.name) else {
            return Err(RpcError::errno(libc::ENODEV, format!("{} is not an error bdev", p.name)));
        };
        dev.inject(p.io_type, p.error_type, p.num.unwrap_or(1), p.queue_depth.unwrap_or(0))
            .map_err(|r| RpcError::errno(r.errno, r.message))?;
        log::info!(
            "{}: injected {:?} {:?} x{} (queue depth {})",
            p.name,
            p.io_type,
            p.error_type,
            p.num.unwrap_or(1),
            p.queue_depth.unwrap_or(0)
        );
        Ok(json!(true))
    }

    fn ilog_create(&self, p: CreateParams) -> Result<Value, RpcError> {
        let mut st = self.lock();
        check_new_name(&st, &p.name)?;
        let base = st.bases.get(&p.base_bdev_name).ok_or_else(|| no_such_bdev(&p.base_bdev_name))?;
        if let Some(owner) = &base.claimed_by {
            return Err(busy(format!("bdev {} is already claimed by {owner}", p.base_bdev_name)));
        }
        if st.nbd.values().any(|d| d.bdev == p.base_bdev_name) {
            return Err(busy(format!("bdev {} is exported over NBD", p.base_bdev_name)));
        }
        let dev = base.dev.clone();
        let given = p.primary_bdev_names.clone().unwrap_or_default();
        let mut primaries: Vec<PrimaryOpen> = Vec::new();
        for name in &given {
            primaries.push((name.clone(), Some(Target::primary_bdev(&st, &p.name, name)?)));
        }
        let formatted = match ilog_bdev::engine::recorded_primaries(dev.as_ref()) {
            Err(Error::NotFormatted) => {
                ilog_bdev::engine::format(dev.as_ref(), &p.format_options(), ilog_bdev::format::random_uuid())?;
                log::info!("formatted {} for {}", p.base_bdev_name, p.name);
                false
            }
            recorded => {
                // Recorded primaries the call does not name are found by
                // name; one that is not there (or is taken) degrades.
                for name in recorded?.into_iter().filter(|n| !given.contains(n)) {
                    primaries.push((name.clone(), Target::primary_bdev(&st, &p.name, &name).ok()));
                }
                true
            }
        };
        let claims: Vec<String> = primaries.iter().filter(|(_, d)| d.is_some()).map(|(n, _)| n.clone()).collect();
        let ilog = Ilog::attach(dev, &self.reactors, primaries)?;
        if formatted {
            p.warn_ignored(ilog.submitter());
        }
        log::info!("created ilog bdev {} on {}", p.name, p.base_bdev_name);
        for name in claims.iter().chain([&p.base_bdev_name]) {
            st.bases.get_mut(name).expect("checked").claimed_by = Some(p.name.clone());
        }
        st.order.push(p.name.clone());
        let name = p.name.clone();
        st.ilogs.insert(name.clone(), IlogBdev { ilog: Arc::new(ilog), params: p, volumes_seen: 0 });
        Ok(methods::create_result(&name))
    }

    fn ilog(&self, st: &State, name: &str) -> Result<Arc<Ilog>, RpcError> {
        st.ilogs.get(name).map(|b| b.ilog.clone()).ok_or_else(|| no_such_bdev(name))
    }

    fn exported(st: &State, bdev: &str) -> Option<String> {
        st.nbd
            .iter()
            .find(|(_, d)| d.bdev == bdev || d.bdev.split_once('@').is_some_and(|(b, _)| b == bdev))
            .map(|(k, _)| k.clone())
    }

    fn execute(&self, cmd: Command) -> Result<Value, RpcError> {
        match cmd {
            Command::Create(p) => self.ilog_create(p),
            Command::Delete { name } => self.ilog_delete(name),
            Command::GetBdevs { name } => self.ilog_bdevs(name),
            Command::Snapshot { name, snapshot_name } => {
                let ilog = self.ilog(&self.lock(), &name)?;
                let v = ilog.snapshot(snapshot_name.as_deref())?;
                Ok(methods::snapshot_result(&name, &v))
            }
            Command::GetVolumes { name } => {
                let ilog = self.ilog(&self.lock(), &name)?;
                Ok(methods::volumes_result(&name, &ilog.volumes()?))
            }
            Command::DeleteVolume { name, volume } => {
                let st = self.lock();
                let ilog = self.ilog(&st, &name)?;
                let bdev = ilog_bdev::engine::volume_bdev_name(&name, &volume);
                if let Some((dev, _)) = st.nbd.iter().find(|(_, d)| d.bdev == bdev) {
                    return Err(busy(format!("volume bdev {bdev} is exported at {dev}")));
                }
                ilog.delete_volume(&volume)?;
                Ok(methods::done_result())
            }
            Command::LogRead { name, cursor, count, with_data } => {
                let ilog = self.ilog(&self.lock(), &name)?;
                Ok(methods::log_result(&ilog.log_read(cursor, count, with_data)?))
            }
            Command::GetStats { name } => {
                let ilog = self.ilog(&self.lock(), &name)?;
                let mut stats = methods::stats_result(&name, &ilog.stats()?);
                stats["jobs"] = self.jobs.lock().expect("job table").of(Some(&name));
                Ok(stats)
            }
            Command::Compact { name, volume, mode, background } => self.compact(name, volume, mode, background),
            Command::SetPolicy { name, policy } => {
                self.ilog(&self.lock(), &name)?.set_policy(&policy)?;
                Ok(methods::done_result())
            }
            Command::GetPolicy { name } => {
                let ilog = self.ilog(&self.lock(), &name)?;
                Ok(methods::policy_result(&ilog.policy()?))
            }
            Command::Event { name, event } => {
                self.ilog(&self.lock(), &name)?.event(&event)?;
                Ok(methods::done_result())
            }
            Command::Diff { name, volume, base_volume, lba_start, lba_count } => {
                let ilog = self.ilog(&self.lock(), &name)?;
                let start = lba_start.unwrap_or(0);
                let count = lba_count.unwrap_or(ilog.volume_blocks().saturating_sub(start));
                Ok(methods::diff_result(&ilog.diff(&volume, base_volume.as_deref(), start, count)?))
            }
            Command::Copy { name, spec, target } => {
                let (ilog, target) = {
                    let st = self.lock();
                    (self.ilog(&st, &name)?, jobs::stream_store(&target, |b| Target::plain_bdev(&st, b))?)
                };
                let plan = copy::plan(ilog.as_ref(), &spec)?;
                Ok(methods::job_result(jobs::start_copy(&self.jobs, &name, ilog, plan, target)))
            }
            Command::Restore { name, source, resume_token } => self.restore(name, source, resume_token),
            Command::RebuildPrimary { name, primary_bdev_name, full } => {
                self.rebuild_primary(name, primary_bdev_name, full)
            }
            Command::GetJobs { name } => {
                if let Some(name) = &name {
                    let st = self.lock();
                    if !st.ilogs.contains_key(name) && !st.bases.contains_key(name) {
                        return Err(no_such_bdev(name));
                    }
                }
                Ok(self.jobs.lock().expect("job table").of(name.as_deref()))
            }
        }
    }

    /// `bdev_ilog_delete`: a clean close, once no export and no other call holds the bdev.
    fn ilog_delete(&self, name: String) -> Result<Value, RpcError> {
        let mut st = self.lock();
        if !st.ilogs.contains_key(&name) {
            return Err(no_such_bdev(&name));
        }
        if let Some(dev) = Target::exported(&st, &name) {
            return Err(busy(format!("bdev {name} or one of its volumes is exported at {dev}")));
        }
        // Other RPCs hold the bdev only for their call, and cannot
        // reach it again while the state is locked: wait for them.
        // Nothing changes until the engine is ours alone, so a busy
        // answer leaves the bdev and its base claim as they were.
        let deadline = Instant::now() + DELETE_WAIT;
        while Arc::strong_count(&st.ilogs[&name].ilog) > 1 {
            if Instant::now() >= deadline {
                return Err(busy(format!("bdev {name} has I/O in flight")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let bdev = st.ilogs.remove(&name).expect("checked");
        let ilog = Arc::try_unwrap(bdev.ilog).unwrap_or_else(|_| unreachable!("no other holder, state locked"));
        st.order.retain(|n| n != &name);
        for base in st.bases.values_mut().filter(|b| b.claimed_by.as_deref() == Some(name.as_str())) {
            base.claimed_by = None;
        }
        ilog.close()?;
        Ok(methods::done_result())
    }

    /// `bdev_ilog_get_bdevs`: every ilog bdev, or the one named.
    fn ilog_bdevs(&self, name: Option<String>) -> Result<Value, RpcError> {
        let st = self.lock();
        let infos = st
            .ilogs
            .iter()
            .filter(|(n, _)| name.as_ref().is_none_or(|want| want == *n))
            .map(|(n, b)| {
                Ok(BdevInfo {
                    name: n.clone(),
                    base_bdev_name: b.params.base_bdev_name.clone(),
                    block_size: b.ilog.block_size(),
                    num_blocks: b.ilog.volume_blocks(),
                    cores: self.reactors.cores(),
                    volumes: b.ilog.volumes()?,
                    primaries: b.ilog.submitter().primaries(),
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if let Some(want) = &name {
            if infos.is_empty() {
                return Err(no_such_bdev(want));
            }
        }
        Ok(methods::bdevs_result(&infos))
    }

    /// `bdev_ilog_compact`: at once, or as a job when `background`.
    fn compact(
        &self,
        name: String,
        volume: Option<String>,
        mode: CompactMode,
        background: bool,
    ) -> Result<Value, RpcError> {
        let ilog = self.ilog(&self.lock(), &name)?;
        if !background {
            ilog.compact(volume.as_deref(), mode)?;
            return Ok(methods::compact_result(None));
        }
        let id = self.jobs.lock().expect("job table").start(&name);
        let table = self.jobs.clone();
        let req = Request::Compact { volume, mode };
        let done: Callback = Box::new(move |result| {
            let state = match result {
                Ok(_) => "done".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            log::info!("compaction job {id}: {state}");
            table.lock().expect("job table").finish(id, state);
        });
        if let Err(refused) = ilog.submit(None, req, done) {
            self.jobs.lock().expect("job table").forget(id);
            return Err(refused.error.into());
        }
        Ok(methods::compact_result(Some(id)))
    }

    /// `bdev_ilog_restore`: a job applying stream `source` to ilog bdev `name`, or to a plain bdev.
    fn restore(&self, name: String, source: StreamTarget, resume_token: Option<String>) -> Result<Value, RpcError> {
        let (dst, source) = {
            let st = self.lock();
            let dst = match st.ilogs.get(&name) {
                Some(b) => Destination::Ilog(b.ilog.clone()),
                None => Destination::Device { name: name.clone(), dev: Target::plain_bdev(&st, &name)? },
            };
            (dst, jobs::stream_store(&source, |b| Target::plain_bdev(&st, b))?)
        };
        let plan = copy::plan_restore(&dst, &source, resume_token.as_deref())?;
        Ok(methods::job_result(jobs::start_restore(&self.jobs, &name, dst, source, plan)))
    }

    /// `bdev_ilog_rebuild_primary`: the rebuilt bdev is claimed; one it replaced is let go.
    fn rebuild_primary(&self, name: String, primary_bdev_name: String, full: bool) -> Result<Value, RpcError> {
        let (ilog, dev) = {
            let st = self.lock();
            (self.ilog(&st, &name)?, Target::primary_bdev(&st, &name, &primary_bdev_name)?)
        };
        ilog.rebuild_primary(&primary_bdev_name, dev, full)?;
        // The rebuilt bdev is claimed; one it replaced is let go.
        let mut st = self.lock();
        let base = st.ilogs.get(&name).map(|b| b.params.base_bdev_name.clone()).unwrap_or_default();
        let primaries: Vec<String> = ilog.submitter().primaries().into_iter().map(|p| p.name).collect();
        for (n, b) in st.bases.iter_mut() {
            if primaries.contains(n) {
                b.claimed_by = Some(name.clone());
            } else if b.claimed_by.as_deref() == Some(name.as_str()) && *n != base {
                b.claimed_by = None;
            }
        }
        Ok(methods::done_result())
    }

    /// A base bdev to be a primary of ilog bdev `ilog`: unclaimed, or one
    /// of its own (a primary that returns).
    fn primary_bdev(st: &State, ilog: &str, name: &str) -> Result<Arc<dyn BlockDevice>, RpcError> {
        let base = st.bases.get(name).ok_or_else(|| no_such_bdev(name))?;
        if st.ilogs.get(ilog).is_some_and(|b| b.params.base_bdev_name == name) {
            return Err(RpcError::errno(
                libc::EINVAL,
                format!("bdev {name} is the base bdev of {ilog}, not a primary"),
            ));
        }
        match &base.claimed_by {
            Some(owner) if owner != ilog => Err(busy(format!("bdev {name} is claimed by {owner}"))),
            _ if st.nbd.values().any(|d| d.bdev == name) => Err(busy(format!("bdev {name} is exported over NBD"))),
            _ => Ok(base.dev.clone()),
        }
    }

    /// A base bdev no ilog bdev claimed, for a copy stream or a restored
    /// image.
    fn plain_bdev(st: &State, name: &str) -> Result<Arc<dyn BlockDevice>, RpcError> {
        if st.ilogs.contains_key(name) || name.contains('@') {
            return Err(RpcError::errno(
                libc::EINVAL,
                format!("bdev {name} is an ilog bdev or volume: a stream goes to a plain bdev or a file"),
            ));
        }
        let base = st.bases.get(name).ok_or_else(|| no_such_bdev(name))?;
        if let Some(owner) = &base.claimed_by {
            return Err(busy(format!("bdev {name} is claimed by {owner}")));
        }
        Ok(base.dev.clone())
    }

    /// SPDK-style description of every bdev (bases, ilog bdevs, volumes).
    fn get_bdevs(&self, name: Option<String>) -> Result<Value, RpcError> {
        let st = self.lock();
        let io_types = |write: bool| json!({"read": true, "write": write, "unmap": write, "write_zeroes": write, "flush": write, "reset": true});
        let mut out = Vec::new();
        for (n, b) in &st.bases {
            let product = match b.kind {
                BaseKind::Malloc => "Malloc disk",
                BaseKind::Aio { .. } => "AIO disk",
                BaseKind::Error { .. } => "Error Injection Disk",
            };
            let mut d = json!({
                "name": n, "aliases": [], "product_name": product, "block_size": b.dev.block_size(),
                "num_blocks": b.dev.num_blocks(), "uuid": b.uuid, "claimed": b.claimed_by.is_some(),
                "supported_io_types": io_types(true), "driver_specific": {},
            });
            match &b.kind {
                BaseKind::Aio { filename } => d["driver_specific"] = json!({"aio": {"filename": filename}}),
                BaseKind::Error { base, .. } => d["driver_specific"] = json!({"error_disk": {"base_bdev": base}}),
                BaseKind::Malloc => {}
            }
            out.push(d);
        }
        for (n, b) in &st.ilogs {
            let (bs, blocks) = (b.ilog.block_size(), b.ilog.volume_blocks());
            out.push(json!({
                "name": n, "aliases": [], "product_name": "ilog disk", "block_size": bs, "num_blocks": blocks,
                "claimed": false, "supported_io_types": io_types(true),
                "driver_specific": {"ilog": {"base_bdev_name": b.params.base_bdev_name}},
            }));
            for v in b.ilog.volumes()? {
                out.push(json!({
                    "name": ilog_bdev::engine::volume_bdev_name(n, &v.name), "aliases": [], "product_name": "ilog snapshot volume",
                    "block_size": bs, "num_blocks": blocks, "claimed": false, "supported_io_types": io_types(false),
                    "driver_specific": {"ilog_volume": {"ilog_bdev": n, "volume_id": v.name, "partition": v.partition}},
                }));
            }
        }
        match name {
            Some(want) => {
                let found: Vec<Value> = out.into_iter().filter(|d| d["name"] == want.as_str()).collect();
                if found.is_empty() {
                    return Err(no_such_bdev(&want));
                }
                Ok(Value::Array(found))
            }
            None => Ok(Value::Array(out)),
        }
    }

    /// The export behind a bdev name: an ilog bdev, one of its volumes
    /// (`<ilog>@<volume>`, read-only) or an unclaimed base bdev.
    fn export_of(&self, st: &State, bdev: &str) -> Result<Arc<dyn Export>, RpcError> {
        if let Some((ilog_name, volume)) = bdev.split_once('@') {
            let ilog = self.ilog(st, ilog_name)?;
            let v = ilog.volume(volume)?;
            return Ok(Arc::new(IlogExport::new(ilog, View::Volume(v.partition))));
        }
        if let Some(b) = st.ilogs.get(bdev) {
            return Ok(Arc::new(IlogExport::new(b.ilog.clone(), View::Current)));
        }
        let base = st.bases.get(bdev).ok_or_else(|| no_such_bdev(bdev))?;
        if let Some(owner) = &base.claimed_by {
            return Err(busy(format!("bdev {bdev} is claimed by {owner}")));
        }
        let export = BaseExport::new(base.dev.clone())
            .map_err(|e| RpcError::errno(e.raw_os_error().unwrap_or(libc::EIO), e.to_string()))?;
        Ok(Arc::new(export))
    }

    fn nbd_start(&self, p: NbdStart) -> Result<Value, RpcError> {
        let mut st = self.lock();
        if st.nbd.contains_key(&p.nbd_device) {
            return Err(busy(format!("{} is already exporting a bdev", p.nbd_device)));
        }
        let listen = Listen::parse(&p.nbd_device).map_err(RpcError::invalid_params)?;
        let export = self.export_of(&st, &p.bdev_name)?;
        let server = NbdServer::start(listen, p.bdev_name.clone(), export)
            .map_err(|e| RpcError::errno(e.raw_os_error().unwrap_or(libc::EIO), format!("{}: {e}", p.nbd_device)))?;
        // Known by where it really listens (a TCP port 0 is chosen now): the
        // address every other method and the saved config use.
        let at = server.listen().to_string();
        log::info!("exporting {} over NBD at {at}", p.bdev_name);
        st.nbd.insert(at.clone(), NbdDisk { bdev: p.bdev_name, server });
        Ok(json!(at))
    }

    /// Stops the NBD exports of volumes that are gone: retired by a baseline
    /// compaction or a retention policy, which do not ask about exports. The
    /// export leaves the saved config with them, so a restart does not fail
    /// on it. Cheap when nothing changed: one atomic load per ilog bdev.
    pub fn stop_exports_of_retired_volumes(&self) {
        let mut st = self.lock();
        let State { ilogs, nbd, .. } = &mut *st;
        let mut gone = Vec::new();
        for (name, b) in ilogs.iter_mut() {
            // Read before listing: a change after this moves it again.
            let generation = b.ilog.volumes_generation();
            if generation == b.volumes_seen {
                continue;
            }
            let Ok(volumes) = b.ilog.volumes() else { continue };
            b.volumes_seen = generation;
            let exported = nbd.iter().filter_map(|(dev, d)| Some((dev, d.bdev.split_once('@')?)));
            for (dev, _) in exported.filter(|(_, (of, v))| of == name && !volumes.iter().any(|x| x.name == *v)) {
                gone.push(dev.clone());
            }
        }
        let disks: Vec<(String, NbdDisk)> =
            gone.into_iter().filter_map(|dev| Some((dev.clone(), nbd.remove(&dev)?))).collect();
        drop(st);
        for (dev, disk) in disks {
            log::warn!("{} was retired: stopping its NBD export at {dev}", disk.bdev);
            disk.server.stop();
        }
    }

    fn nbd_stop(&self, p: NbdDevice) -> Result<Value, RpcError> {
        let disk = self.lock().nbd.remove(&p.nbd_device);
        let disk = disk.ok_or_else(|| RpcError::errno(libc::ENODEV, format!("no NBD export at {}", p.nbd_device)))?;
        disk.server.stop();
        Ok(json!(true))
    }

    fn nbd_disks(&self, p: MaybeNbdDevice) -> Result<Value, RpcError> {
        let st = self.lock();
        let disks: Vec<Value> = st
            .nbd
            .iter()
            .filter(|(dev, _)| p.nbd_device.as_ref().is_none_or(|want| want == *dev))
            .map(|(_, d)| {
                json!({"nbd_device": d.server.listen().to_string(), "bdev_name": d.server.name(),
                    "connections": d.server.connections()})
            })
            .collect();
        if let (Some(want), true) = (&p.nbd_device, disks.is_empty()) {
            return Err(RpcError::errno(libc::ENODEV, format!("no NBD export at {want}")));
        }
        Ok(Value::Array(disks))
    }

    /// One subsystem's part of the running configuration, as the methods
    /// that recreate it (SPDK's `framework_get_config`).
    fn subsystem_config(&self, subsystem: &str) -> Option<Vec<Value>> {
        let st = self.lock();
        match subsystem {
            "bdev" => Some(
                st.order
                    .iter()
                    .filter_map(|name| {
                        if let Some(b) = st.bases.get(name) {
                            let (bs, blocks) = (b.dev.block_size(), b.dev.num_blocks());
                            Some(match &b.kind {
                                BaseKind::Malloc => json!({"method": "bdev_malloc_create",
                                    "params": {"name": name, "num_blocks": blocks, "block_size": bs, "uuid": b.uuid}}),
                                BaseKind::Aio { filename } => json!({"method": "bdev_aio_create",
                                    "params": {"name": name, "filename": filename, "block_size": bs, "uuid": b.uuid}}),
                                BaseKind::Error { base, .. } => json!({"method": "bdev_error_create",
                                    "params": {"base_name": base, "uuid": b.uuid}}),
                            })
                        } else {
                            st.ilogs.get(name).map(|i| json!({"method": "bdev_ilog_create", "params": i.params}))
                        }
                    })
                    .collect(),
            ),
            "nbd" => Some(
                st.nbd
                    .iter()
                    .map(|(dev, d)| json!({"method": "nbd_start_disk", "params": {"bdev_name": d.bdev, "nbd_device": dev}}))
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The running configuration as an SPDK JSON config: loading it with
    /// `-c` recreates the same bdevs and exports.
    fn save_config(&self) -> Value {
        let subsystems: Vec<Value> = SUBSYSTEMS
            .iter()
            .map(|(name, _)| json!({"subsystem": name, "config": self.subsystem_config(name).unwrap_or_default()}))
            .collect();
        json!({ "subsystems": subsystems })
    }

    /// Applies an SPDK JSON config (`{"subsystems": [...]}`), in order.
    pub fn load_config(&self, config: &Value) -> Result<(), String> {
        let subsystems = config["subsystems"].as_array().ok_or("the config has no \"subsystems\" array")?;
        for sub in subsystems {
            let name = sub["subsystem"].as_str().unwrap_or("?");
            let Some(entries) = sub["config"].as_array() else { continue };
            for entry in entries {
                let method =
                    entry["method"].as_str().ok_or_else(|| format!("subsystem {name}: an entry has no method"))?;
                let params = entry.get("params").cloned();
                self.call(method, params).map_err(|e| format!("{method}: {} (code {})", e.message, e.code))?;
            }
        }
        Ok(())
    }
}

/// Physical memory: no malloc bdev can be larger.
fn host_memory_bytes() -> u64 {
    // "MemTotal:       24596516 kB"
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.map_or(u64::MAX, |k| k.saturating_mul(1024))
}

fn check_uuid(uuid: Option<&str>) -> Result<(), RpcError> {
    match uuid {
        Some(u) if !valid_uuid(u) => Err(RpcError::invalid_params(format!(
            "Invalid parameters: uuid {u:?} is not of the form 8-4-4-4-12 hex digits"
        ))),
        _ => Ok(()),
    }
}

fn check_new_name(st: &State, name: &str) -> Result<(), RpcError> {
    if name.is_empty() || name.contains(['@', '/', '\0']) {
        return Err(RpcError::invalid_params(format!("bdev name {name:?} must be non-empty, without '@', '/' or NUL")));
    }
    if st.bases.contains_key(name) || st.ilogs.contains_key(name) {
        return Err(RpcError::errno(libc::EEXIST, format!("bdev {name} already exists")));
    }
    Ok(())
}

impl Handler for Target {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        if let Some(cmd) = methods::parse(method, params.as_ref()) {
            return self.execute(cmd?);
        }
        match method {
            "spdk_get_version" => no_params(params).map(|()| {
                json!({
                    "version": concat!("ilog_tgt v", env!("CARGO_PKG_VERSION")),
                    "fields": {"major": 0, "minor": 1, "patch": 0, "suffix": ""},
                })
            }),
            "rpc_get_methods" => {
                decode::<GetMethods>(params)?;
                let mut all: Vec<&str> = SPDK_METHODS.iter().chain(methods::METHODS).copied().collect();
                all.sort_unstable();
                Ok(json!(all))
            }
            "framework_get_reactors" => {
                no_params(params)?;
                let reactors: Vec<Value> = (0..self.reactors.cores())
                    .map(|i| json!({"lcore": i, "busy": 0, "idle": 0, "in_interrupt": false, "lw_threads": []}))
                    .collect();
                Ok(json!({"tick_rate": 1_000_000_000u64, "reactors": reactors}))
            }
            "bdev_malloc_create" => self.malloc_create(decode(params)?),
            "bdev_malloc_delete" => self.base_delete(&decode::<ByName>(params)?.name, "malloc"),
            "bdev_aio_create" => self.aio_create(decode(params)?),
            "bdev_aio_delete" => self.base_delete(&decode::<ByName>(params)?.name, "aio"),
            "bdev_error_create" => self.error_create(decode(params)?),
            "bdev_error_delete" => self.base_delete(&decode::<ByName>(params)?.name, "error"),
            "bdev_error_inject_error" => self.error_inject(decode(params)?),
            "bdev_get_bdevs" => self.get_bdevs(decode::<MaybeName>(params)?.name),
            "nbd_start_disk" => self.nbd_start(decode(params)?),
            "nbd_stop_disk" => self.nbd_stop(decode(params)?),
            "nbd_get_disks" => self.nbd_disks(decode(params)?),
            "save_config" => no_params(params).map(|()| self.save_config()),
            "framework_get_subsystems" => {
                no_params(params)?;
                let list: Vec<Value> =
                    SUBSYSTEMS.iter().map(|(n, deps)| json!({"subsystem": n, "depends_on": deps})).collect();
                Ok(Value::Array(list))
            }
            "framework_get_config" => {
                let GetConfig { name, .. } = decode(params)?;
                let config = self
                    .subsystem_config(&name)
                    .ok_or_else(|| RpcError::invalid_params(format!("no subsystem {name}")))?;
                Ok(Value::Array(config))
            }
            _ => Err(RpcError::method_not_found(method)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn call(t: &Target, method: &str, params: Value) -> Result<Value, RpcError> {
        t.call(method, Some(params))
    }

    fn target_with_malloc() -> Target {
        let t = Target::new(1);
        call(&t, "bdev_malloc_create", json!({"name": "Malloc0", "num_blocks": 65536, "block_size": 4096})).unwrap();
        t
    }

    fn create(t: &Target, name: &str) -> Result<Value, RpcError> {
        call(t, "bdev_ilog_create", json!({"name": name, "base_bdev_name": "Malloc0"}))
    }

    #[test]
    fn delete_waits_for_rpcs_that_use_the_bdev_and_then_frees_its_base() {
        let t = target_with_malloc();
        create(&t, "ilog0").unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = call(&t, "bdev_ilog_get_volumes", json!({"name": "ilog0"}));
                }
            });
            let rounds: Vec<Result<(), String>> = (0..20)
                .map(|round| {
                    call(&t, "bdev_ilog_delete", json!({"name": "ilog0"}))
                        .map_err(|e| format!("round {round}: delete: {}", e.message))?;
                    create(&t, "ilog0").map_err(|e| format!("round {round}: create: {}", e.message))?;
                    Ok(())
                })
                .collect();
            stop.store(true, Ordering::Relaxed);
            let failed: Vec<&String> = rounds.iter().filter_map(|r| r.as_ref().err()).collect();
            assert!(failed.is_empty(), "{failed:?}");
        });
    }

    #[test]
    fn a_malloc_bdev_larger_than_the_host_fails_with_enomem_and_the_target_serves_on() {
        let t = target_with_malloc();
        let blocks = (host_memory_bytes() / 4096 + 1).min((1 << 28) + 1);
        let err = call(&t, "bdev_malloc_create", json!({"name": "Huge", "num_blocks": blocks, "block_size": 4096}))
            .unwrap_err();
        assert_eq!(err.code, -libc::ENOMEM, "{}", err.message);
        create(&t, "ilog0").expect("the target serves on");
    }

    #[test]
    fn an_aio_bdev_with_a_block_size_not_a_power_of_two_is_refused() {
        let t = Target::new(1);
        let path = std::env::temp_dir().join(format!("ilog-aio-bs-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        for bs in [1000, 3072, 256, 131072] {
            let err =
                call(&t, "bdev_aio_create", json!({"name": "Aio0", "filename": path, "block_size": bs})).unwrap_err();
            assert_eq!(err.code, -32602, "block_size {bs}: {}", err.message);
        }
        call(&t, "bdev_aio_create", json!({"name": "Aio0", "filename": path, "block_size": 512})).unwrap();
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_ilog_bdev_on_a_base_too_small_names_the_minimum() {
        let t = Target::new(1);
        for blocks in [1, 16] {
            let name = format!("Tiny{blocks}");
            call(&t, "bdev_malloc_create", json!({"name": name, "num_blocks": blocks, "block_size": 4096})).unwrap();
            let err = call(&t, "bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": name})).unwrap_err();
            assert!(err.message.contains("too small") && err.message.contains("at least"), "{}", err.message);
        }
    }

    #[test]
    fn the_export_of_a_volume_retired_by_a_baseline_compaction_is_stopped_and_leaves_the_config() {
        let t = target_with_malloc();
        create(&t, "ilog0").unwrap();
        for s in ["s1", "s2"] {
            call(&t, "bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": s})).unwrap();
        }
        let dir = std::env::temp_dir();
        let sock = |v: &str| dir.join(format!("ilog-retired-{}-{v}.sock", std::process::id())).display().to_string();
        for v in ["s1", "s2"] {
            call(&t, "nbd_start_disk", json!({"bdev_name": format!("ilog0@{v}"), "nbd_device": sock(v)})).unwrap();
        }
        t.stop_exports_of_retired_volumes();
        assert_eq!(call(&t, "nbd_get_disks", json!({})).unwrap().as_array().unwrap().len(), 2, "nothing retired yet");
        // Draining up to s2 retires s1.
        call(&t, "bdev_ilog_compact", json!({"name": "ilog0", "volume": "s2", "mode": "baseline"})).unwrap();
        t.stop_exports_of_retired_volumes();
        let disks = call(&t, "nbd_get_disks", json!({})).unwrap();
        let exported: Vec<&str> = disks.as_array().unwrap().iter().map(|d| d["bdev_name"].as_str().unwrap()).collect();
        assert_eq!(exported, ["ilog0@s2"]);
        let config = t.save_config().to_string();
        assert!(!config.contains("ilog0@s1") && config.contains("ilog0@s2"), "{config}");
        call(&t, "nbd_stop_disk", json!({"nbd_device": sock("s2")})).unwrap();
    }

    #[test]
    fn tcp_exports_on_port_0_are_known_by_the_port_they_got() {
        let t = target_with_malloc();
        create(&t, "ilog0").unwrap();
        call(&t, "bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": "s1"})).unwrap();
        let mut at = Vec::new();
        for bdev in ["ilog0", "ilog0@s1"] {
            let got = call(&t, "nbd_start_disk", json!({"bdev_name": bdev, "nbd_device": "127.0.0.1:0"})).unwrap();
            let got = got.as_str().unwrap().to_owned();
            assert!(got.starts_with("127.0.0.1:") && !got.ends_with(":0"), "{got}");
            at.push(got);
        }
        let disks = call(&t, "nbd_get_disks", json!({})).unwrap();
        let listed: Vec<&str> = disks.as_array().unwrap().iter().map(|d| d["nbd_device"].as_str().unwrap()).collect();
        assert_eq!(listed.len(), 2);
        assert!(at.iter().all(|a| listed.contains(&a.as_str())), "{listed:?} {at:?}");
        let config = t.save_config().to_string();
        assert!(at.iter().all(|a| config.contains(a.as_str())) && !config.contains("127.0.0.1:0\""), "{config}");
        for a in &at {
            call(&t, "nbd_stop_disk", json!({"nbd_device": a})).unwrap_or_else(|e| panic!("stop {a}: {}", e.message));
        }
        assert_eq!(call(&t, "nbd_get_disks", json!({})).unwrap(), json!([]));
    }

    #[test]
    fn an_error_bdev_claims_its_base_shows_in_get_bdevs_and_save_config_and_is_deleted_only_when_free() {
        let t = target_with_malloc();
        assert_eq!(call(&t, "bdev_error_create", json!({"base_name": "Malloc0"})).unwrap(), json!(true));
        let err = call(&t, "bdev_error_create", json!({"base_name": "Malloc0"})).unwrap_err();
        assert_eq!(err.code, -libc::EBUSY, "the base is claimed: {}", err.message);
        let err = call(&t, "bdev_error_create", json!({"base_name": "Nope"})).unwrap_err();
        assert_eq!(err.code, -libc::ENODEV, "{}", err.message);
        let err = call(&t, "bdev_malloc_delete", json!({"name": "Malloc0"})).unwrap_err();
        assert_eq!(err.code, -libc::EBUSY, "{}", err.message);
        for module in ["malloc", "aio"] {
            let err = call(&t, &format!("bdev_{module}_delete"), json!({"name": "EE_Malloc0"})).unwrap_err();
            assert_eq!(err.code, -libc::ENODEV, "bdev_{module}_delete of an error bdev: {}", err.message);
        }
        let b = &call(&t, "bdev_get_bdevs", json!({"name": "EE_Malloc0"})).unwrap()[0];
        assert_eq!((b["product_name"].clone(), b["num_blocks"].clone()), (json!("Error Injection Disk"), json!(65536)));
        assert_eq!(b["driver_specific"], json!({"error_disk": {"base_bdev": "Malloc0"}}));
        assert_eq!(call(&t, "bdev_get_bdevs", json!({"name": "Malloc0"})).unwrap()[0]["claimed"], json!(true));

        call(&t, "bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "EE_Malloc0"})).unwrap();
        let err = call(&t, "bdev_error_delete", json!({"name": "EE_Malloc0"})).unwrap_err();
        assert_eq!(err.code, -libc::EBUSY, "claimed by ilog0: {}", err.message);
        let config = t.save_config();
        let methods: Vec<&str> = config["subsystems"][0]["config"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["method"].as_str().unwrap())
            .collect();
        assert_eq!(methods, ["bdev_malloc_create", "bdev_error_create", "bdev_ilog_create"]);
        assert_eq!(config["subsystems"][0]["config"][1]["params"]["base_name"], json!("Malloc0"));

        call(&t, "bdev_ilog_delete", json!({"name": "ilog0"})).unwrap();
        assert_eq!(call(&t, "bdev_error_delete", json!({"name": "EE_Malloc0"})).unwrap(), json!(true));
        assert_eq!(call(&t, "bdev_get_bdevs", json!({"name": "Malloc0"})).unwrap()[0]["claimed"], json!(false));
        let err = call(&t, "bdev_error_delete", json!({"name": "Malloc0"})).unwrap_err();
        assert_eq!(err.code, -libc::ENODEV, "not an error bdev: {}", err.message);
        call(&t, "bdev_malloc_delete", json!({"name": "Malloc0"})).unwrap();
    }

    #[test]
    fn a_saved_config_with_an_error_bdev_as_a_primary_restarts_into_the_same_bdevs() {
        let dir = std::env::temp_dir().join(format!("ilog-error-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (base, primary) = (dir.join("base.img"), dir.join("primary.img"));
        for f in [&base, &primary] {
            std::fs::File::create(f).unwrap().set_len(64 << 20).unwrap();
        }
        let t = Target::new(1);
        call(&t, "bdev_aio_create", json!({"name": "Aio0", "filename": base})).unwrap();
        call(&t, "bdev_aio_create", json!({"name": "Aio1", "filename": primary})).unwrap();
        call(&t, "bdev_error_create", json!({"base_name": "Aio1"})).unwrap();
        let p = json!({"name": "ilog0", "base_bdev_name": "Aio0", "primary_bdev_names": ["EE_Aio1"]});
        call(&t, "bdev_ilog_create", p).unwrap();
        let saved = t.save_config();
        let uuid = call(&t, "bdev_get_bdevs", json!({"name": "EE_Aio1"})).unwrap()[0]["uuid"].clone();
        t.shutdown();
        drop(t);

        let t = Target::new(1);
        t.load_config(&saved).unwrap();
        let ee = &call(&t, "bdev_get_bdevs", json!({"name": "EE_Aio1"})).unwrap()[0];
        assert_eq!((ee["claimed"].clone(), ee["uuid"].clone()), (json!(true), uuid), "{ee}");
        let ilog = &call(&t, "bdev_ilog_get_bdevs", json!({"name": "ilog0"})).unwrap()[0];
        assert_eq!(ilog["primaries"][0]["name"], json!("EE_Aio1"), "{ilog}");
        assert_eq!(t.save_config(), saved);
        t.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn injections_take_spdk_params_and_fail_the_primary_that_the_ilog_bdev_then_degrades() {
        let t = target_with_malloc();
        call(&t, "bdev_malloc_create", json!({"name": "Malloc1", "num_blocks": 65536, "block_size": 4096})).unwrap();
        call(&t, "bdev_error_create", json!({"base_name": "Malloc1"})).unwrap();
        let inject = |p: Value| call(&t, "bdev_error_inject_error", p);
        let bad: Vec<(Value, i32)> = vec![
            (json!({"name": "Malloc1", "io_type": "all", "error_type": "failure"}), libc::ENODEV),
            (json!({"name": "EE_Malloc1", "io_type": "all", "error_type": "pending"}), libc::ENOTSUP),
            (json!({"name": "EE_Malloc1", "io_type": "read", "error_type": "failure", "nvme_sc": 2}), libc::EINVAL),
            (json!({"name": "EE_Malloc1", "io_type": "read", "error_type": "nvme_failure"}), libc::EINVAL),
            (json!({"name": "EE_Malloc1", "io_type": "read", "error_type": "corrupt_data"}), libc::EINVAL),
        ];
        for (p, errno) in bad {
            assert_eq!(inject(p.clone()).unwrap_err().code, -errno, "{p}");
        }
        for p in [
            json!({"name": "EE_Malloc1", "io_type": "erase", "error_type": "failure"}),
            json!({"name": "EE_Malloc1", "io_type": "read", "error_type": "clear"}),
            json!({"name": "EE_Malloc1", "io_type": "read"}),
        ] {
            assert_eq!(inject(p.clone()).unwrap_err().code, -32602, "{p}");
        }
        let primaries = || call(&t, "bdev_ilog_get_stats", json!({"name": "ilog0"})).unwrap()["primaries"].clone();
        let p = json!({"name": "ilog0", "base_bdev_name": "Malloc0", "primary_bdev_names": ["EE_Malloc1"]});
        call(&t, "bdev_ilog_create", p).unwrap();
        // A new primary is synced whole first.
        let deadline = Instant::now() + Duration::from_secs(60);
        while primaries()[0]["state"] != json!("healthy") {
            assert!(Instant::now() < deadline, "the first sync did not end: {}", primaries());
            std::thread::sleep(Duration::from_millis(20));
        }
        let ilog = t.lock().ilogs["ilog0"].ilog.clone();
        let data = vec![0x3cu8; 8192];
        ilog.write(0, &data).unwrap();
        assert_eq!(primaries()[0]["state"], json!("healthy"));
        inject(json!({"name": "EE_Malloc1", "io_type": "write", "error_type": "failure", "num": 5})).unwrap();
        ilog.write(8, &data).expect("a write goes on when a primary fails");
        let p = primaries();
        assert_eq!(p[0]["state"], json!("degraded"), "{p}");
        assert!(p[0]["write_errors"].as_u64().unwrap() >= 1, "{p}");
        assert!(p[0]["dirty_blocks"].as_u64().unwrap() >= 2, "{p}");
        let mut back = vec![0u8; 8192];
        ilog.read(8, &mut back).unwrap();
        assert_eq!(back, data);
        inject(json!({"name": "EE_Malloc1", "io_type": "clear", "error_type": "failure"})).unwrap();
        drop(ilog);
    }

    #[test]
    fn a_busy_delete_leaves_the_bdev_and_its_base_claim_as_they_were() {
        let t = target_with_malloc();
        create(&t, "ilog0").unwrap();
        let held = t.lock().ilogs["ilog0"].ilog.clone();
        let err = call(&t, "bdev_ilog_delete", json!({"name": "ilog0"})).unwrap_err();
        assert_eq!(err.code, -libc::EBUSY, "{}", err.message);
        let err = create(&t, "ilog1").unwrap_err();
        assert!(err.message.contains("Malloc0"), "a second engine on the same base: {}", err.message);
        call(&t, "bdev_ilog_get_volumes", json!({"name": "ilog0"})).expect("ilog0 still serves");
        drop(held);
        call(&t, "bdev_ilog_delete", json!({"name": "ilog0"})).unwrap();
        create(&t, "ilog1").expect("the base is free once the bdev is deleted");
    }
}
