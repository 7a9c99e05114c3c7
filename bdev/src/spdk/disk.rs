//! One registered bdev: the ilog bdev itself (`View::Current`) or one of
//! its snapshot volumes. What SPDK calls on it (I/O, JSON, destruct) goes
//! to the data path or to its [`Owner`], the ilog bdev it belongs to.

use super::ffi::bdev::{Bdev, BdevOps, BdevSpec, Destructing};
use super::ffi::bdev_io::{BdevIo, IoKind};
use super::ffi::engine_io::Target;
use super::ffi::json::JsonWriter;
use super::io;
use super::reactor::Reactors;
use crate::device::spdk::SpdkDevice;
use crate::engine::{Submitter, View};
use std::sync::Arc;

/// A registered disk; its memory lives while a handle does.
pub(crate) type DiskRef = Arc<Bdev<Disk>>;

/// The ilog bdev a disk belongs to: what its control callbacks need.
pub(crate) trait Owner: Send + Sync {
    /// The ilog bdev's name.
    fn name(&self) -> &str;
    /// `bdev_ilog_create`'s params as JSON, for save_config.
    fn config(&self) -> &str;
    /// SPDK destructs `disk`; `done` ends it.
    fn destruct(self: Arc<Self>, disk: &Disk, done: Destructing<Disk>);
}

pub(crate) struct Disk {
    pub view: View,
    block_size: u32,
    align: usize,
    submitter: Submitter,
    reactors: &'static Reactors,
    base: Arc<SpdkDevice>,
    owner: Arc<dyn Owner>,
}

impl Disk {
    fn target(&self) -> Target<'_> {
        Target {
            submitter: &self.submitter,
            core: self.reactors.local_index(),
            view: self.view,
            block_size: self.block_size,
            align: self.align,
        }
    }
}

/// Registers the disk `name` showing `view` of the ilog bdev `owner`, whose
/// engine is `submitter` on base `base`. On the app thread.
pub(crate) fn register(
    owner: Arc<dyn Owner>,
    base: &Arc<SpdkDevice>,
    submitter: &Submitter,
    name: &str,
    view: View,
    reactors: &'static Reactors,
) -> Result<DiskRef, (i32, String)> {
    use crate::device::BlockDevice;
    let align = base.buf_align();
    let spec = BdevSpec {
        name,
        product: if view == View::Current { c"ilog disk" } else { c"ilog snapshot volume" },
        block_size: submitter.block_size(),
        num_blocks: submitter.volume_blocks(),
        align,
    };
    let disk = Disk {
        view,
        block_size: submitter.block_size(),
        align,
        submitter: submitter.clone(),
        reactors,
        base: base.clone(),
        owner,
    };
    Bdev::register(spec, disk).map_err(|errno| (errno, format!("cannot register bdev {name}")))
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl BdevOps for Disk {
    fn submit(&self, io: BdevIo) {
        io::submit::<Disk>(io, &self.target(), &self.base);
    }

    fn got_buf(&self, io: BdevIo, success: bool) {
        io::got_buf(io, &self.target(), success);
    }

    fn supports(&self, kind: IoKind) -> bool {
        match kind {
            IoKind::Read | IoKind::Reset => true,
            IoKind::Write | IoKind::Flush | IoKind::Unmap | IoKind::WriteZeroes => self.view == View::Current,
            IoKind::Other => false,
        }
    }

    fn dump_info_json(&self, w: &mut JsonWriter) {
        match self.view {
            View::Current => w.named_raw(
                c"ilog",
                &format!(
                    "{{\"base_bdev_name\": {}, \"cores\": {}}}",
                    json_string(&self.base.name),
                    self.submitter.cores()
                ),
            ),
            View::Volume(p) => w.named_raw(
                c"ilog_volume",
                &format!("{{\"ilog_bdev\": {}, \"partition\": {p}}}", json_string(self.owner.name())),
            ),
        }
    }

    /// `save_config`: the create call that brings the bdev (and, through
    /// the base's contents, its volumes) back.
    fn write_config_json(&self, w: &mut JsonWriter) {
        if self.view == View::Current {
            w.method_call(c"bdev_ilog_create", self.owner.config());
        }
    }

    fn destruct(&self, done: Destructing<Disk>) {
        self.owner.clone().destruct(self, done);
    }
}
