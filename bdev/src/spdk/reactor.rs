//! The shard pollers: one SPDK thread per app core ("ilog_<core>", pinned
//! to it by its cpumask), whose poller polls shard `i` of every ilog bdev on
//! the `i`-th core. Shared by all ilog bdevs of the process, created with
//! the first one, stopped at module fini.

use super::ffi::engine_io::poll_shard;
use super::ffi::poller::Poller;
use super::ffi::thread::{self, Bound, Thread};
use super::io::Returns;
use crate::engine::Shard;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

struct Attached {
    id: u64,
    shard: Shard,
    detach: Option<Box<dyn FnOnce() + Send>>,
}

/// A reactor thread's state.
#[derive(Default)]
struct State {
    shards: Vec<Attached>,
    poller: Option<Poller>,
    returns: Returns,
    /// Shards waiting to be dropped once idle.
    detaching: usize,
}

pub(crate) struct Reactors {
    reactors: Vec<Arc<Bound<State>>>,
    /// Shard index by SPDK core id.
    index_of_core: Vec<u32>,
}

static REACTORS: OnceLock<Reactors> = OnceLock::new();

fn poll(p: &mut State) -> bool {
    let mut work = 0;
    let returns = &mut p.returns;
    for a in &mut p.shards {
        work += poll_shard(&mut a.shard, &mut |io| returns.push(io));
    }
    p.returns.send();
    if p.detaching > 0 {
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
    }
    work > 0
}

impl Reactors {
    /// The reactors, started on first use (on the app thread).
    pub fn get() -> &'static Reactors {
        REACTORS.get_or_init(Reactors::start)
    }

    pub fn running() -> Option<&'static Reactors> {
        REACTORS.get()
    }

    fn start() -> Reactors {
        let cores = thread::cores();
        let mut index_of_core = vec![0; cores.iter().max().map_or(1, |&m| m as usize + 1)];
        let mut reactors = Vec::new();
        for (i, &core) in cores.iter().enumerate() {
            index_of_core[core as usize] = i as u32;
            let name = format!("ilog_{core}");
            let t = Thread::create(&name, core).unwrap_or_else(|| panic!("cannot create SPDK thread {name}"));
            let state = Arc::new(Bound::new(t, State::default()));
            let polled = state.clone();
            t.send(move || {
                let poller = Poller::every(c"ilog_shards", 0, {
                    let state = polled.clone();
                    move || state.with(poll)
                });
                polled.with(|p| p.poller = Some(poller));
            });
            reactors.push(state);
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
        for (r, mut shard) in self.reactors.iter().zip(shards) {
            let state = r.clone();
            r.thread().send(move || {
                shard.prepare();
                state.with(|p| p.shards.push(Attached { id, shard, detach: None }));
            });
        }
    }

    /// Drops bdev `id`'s shards once idle; `done` runs on the app thread
    /// after the last one.
    pub fn detach(&self, id: u64, done: impl FnOnce() + Send + 'static) {
        let left = Arc::new(AtomicU32::new(self.cores()));
        let done = Arc::new(Mutex::new(Some(done)));
        for r in &self.reactors {
            let (state, left, done) = (r.clone(), left.clone(), done.clone());
            r.thread().send(move || {
                state.with(|p| {
                    let Some(a) = p.shards.iter_mut().find(|a| a.id == id) else { return };
                    p.detaching += 1;
                    a.detach = Some(Box::new(move || {
                        if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                            if let Some(done) = done.lock().expect("detach").take() {
                                Thread::app().send(done);
                            }
                        }
                    }));
                })
            });
        }
    }

    /// Unregisters the pollers and exits the threads (module fini).
    pub fn stop(&self) {
        for r in &self.reactors {
            let state = r.clone();
            r.thread().send(move || {
                drop(state.with(|p| p.poller.take()));
                Thread::exit_current();
            });
        }
    }
}
