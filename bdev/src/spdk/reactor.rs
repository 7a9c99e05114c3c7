//! The shard pollers: one SPDK thread per app core ("ilog_<core>", pinned
//! to it by its cpumask), whose poller polls shard `i` of every ilog bdev on
//! the `i`-th core. Shared by all ilog bdevs of the process, created with
//! the first one, stopped at module fini.

use super::io::Returns;
use super::thread::{self, Thread};
use crate::engine::{Reply, Shard};
use crate::error::Result;
use ilog_sys as sys;
use std::ffi::{c_void, CString};
use std::sync::OnceLock;

/// Where an engine completion goes: a bdev I/O (back to its thread through
/// `Returns`), or a control call's callback.
pub(crate) type Sink = fn(u64, Result<Reply>, &mut Returns);

struct Attached {
    id: u64,
    shard: Shard,
    detach: Option<Box<dyn FnOnce() + Send>>,
}

/// A reactor thread's state; only touched on that thread.
struct Poller {
    shards: Vec<Attached>,
    poller: *mut sys::spdk_poller,
    sink: Sink,
    returns: Returns,
    /// Shards waiting to be dropped once idle.
    detaching: usize,
}

struct Reactor {
    thread: Thread,
    state: *mut Poller,
}

pub(crate) struct Reactors {
    reactors: Vec<Reactor>,
    /// Shard index by SPDK core id.
    index_of_core: Vec<u32>,
}

// SAFETY: `state` is only dereferenced by messages run on its thread.
unsafe impl Send for Reactors {}
// SAFETY: as above.
unsafe impl Sync for Reactors {}

static REACTORS: OnceLock<Reactors> = OnceLock::new();

unsafe extern "C" fn poll(arg: *mut c_void) -> i32 {
    // SAFETY: `arg` is this thread's `Poller`, alive until `stop`.
    let p = unsafe { &mut *arg.cast::<Poller>() };
    let sink = p.sink;
    let mut work = 0;
    for a in &mut p.shards {
        work += a.shard.poll(&mut |token, result| sink(token, result, &mut p.returns));
    }
    p.returns.send();
    if p.detaching == 0 {
        return i32::from(work > 0);
    }
    let mut detached = 0;
    p.shards.retain_mut(|a| {
        if a.detach.is_some() && a.shard.is_idle() {
            (a.detach.take().expect("checked"))();
            detached += 1;
            return false;
        }
        true
    });
    p.detaching -= detached;
    i32::from(work > 0)
}

impl Reactors {
    /// The reactors, started on first use (on the app thread).
    pub fn get(sink: Sink) -> &'static Reactors {
        REACTORS.get_or_init(|| Reactors::start(sink))
    }

    pub fn running() -> Option<&'static Reactors> {
        REACTORS.get()
    }

    fn start(sink: Sink) -> Reactors {
        let cores = thread::cores();
        let mut index_of_core = vec![0; cores.iter().max().map_or(1, |&m| m as usize + 1)];
        let mut reactors = Vec::new();
        for (i, &core) in cores.iter().enumerate() {
            index_of_core[core as usize] = i as u32;
            let name = CString::new(format!("ilog_{core}")).expect("no NUL");
            let mut mask = sys::spdk_cpuset::default();
            // SAFETY: a zeroed cpuset and valid arguments.
            let t = unsafe {
                sys::spdk_cpuset_zero(&mut mask);
                sys::spdk_cpuset_set_cpu(&mut mask, core, true);
                sys::spdk_thread_create(name.as_ptr(), &mask)
            };
            assert!(!t.is_null(), "cannot create SPDK thread {name:?}");
            let state = Box::into_raw(Box::new(Poller {
                shards: Vec::new(),
                poller: std::ptr::null_mut(),
                sink,
                returns: Returns::default(),
                detaching: 0,
            }));
            let r = Reactor { thread: Thread(t), state };
            let addr = state as usize;
            r.thread.send(move || {
                let state = addr as *mut Poller;
                // SAFETY: on the reactor's thread; state lives until `stop`.
                unsafe {
                    (*state).poller = sys::spdk_poller_register(Some(poll), state.cast(), 0);
                }
            });
            reactors.push(r);
        }
        log::info!("ilog: {} shard reactor threads on cores {cores:?}", reactors.len());
        Reactors { reactors, index_of_core }
    }

    pub fn cores(&self) -> u32 {
        self.reactors.len() as u32
    }

    /// The shard (and engine core) that requests from the calling thread go to.
    pub fn local_index(&self) -> u32 {
        let core = thread::current_core() as usize;
        self.index_of_core.get(core).copied().unwrap_or(0)
    }

    /// Hands shard `i` to reactor `i`.
    pub fn attach(&self, id: u64, shards: Vec<Shard>) {
        for (r, shard) in self.reactors.iter().zip(shards) {
            let addr = r.state as usize;
            let shard = Box::new(shard);
            r.thread.send(move || {
                // SAFETY: on the reactor's thread.
                let p = unsafe { &mut *(addr as *mut Poller) };
                let mut shard = *shard;
                shard.prepare();
                p.shards.push(Attached { id, shard, detach: None });
            });
        }
    }

    /// Drops bdev `id`'s shards once idle; `done` runs on the app thread
    /// after the last one.
    pub fn detach(&self, id: u64, done: impl FnOnce() + Send + 'static) {
        let left = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(self.cores()));
        let done = std::sync::Arc::new(std::sync::Mutex::new(Some(done)));
        for r in &self.reactors {
            let addr = r.state as usize;
            let (left, done) = (left.clone(), done.clone());
            r.thread.send(move || {
                // SAFETY: on the reactor's thread.
                let p = unsafe { &mut *(addr as *mut Poller) };
                let Some(a) = p.shards.iter_mut().find(|a| a.id == id) else { return };
                p.detaching += 1;
                a.detach = Some(Box::new(move || {
                    if left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                        if let Some(done) = done.lock().expect("detach").take() {
                            Thread::app().send(done);
                        }
                    }
                }));
            });
        }
    }

    /// Unregisters the pollers and exits the threads (module fini).
    pub fn stop(&self) {
        for r in &self.reactors {
            let addr = r.state as usize;
            r.thread.send(move || {
                // SAFETY: on the reactor's thread; nothing uses the state after.
                let mut p = unsafe { Box::from_raw(addr as *mut Poller) };
                // SAFETY: registered on this thread.
                unsafe {
                    sys::spdk_poller_unregister(&mut p.poller);
                    sys::spdk_thread_exit(sys::spdk_get_thread());
                }
            });
        }
    }
}
