//! What NBD exports: an ilog bdev's current image or one of its snapshot
//! volumes (through the reactors), or an unclaimed base bdev (synchronously,
//! on the connection's thread).

use crate::nbd::{Export, ExportIo};
use ilog_bdev::device::{BlockDevice, DevChannel, DevOp, DevRequest, IoBuf};
use ilog_bdev::engine::{Request, View};
use ilog_bdev::runtime::native::Ilog;
use std::sync::{Arc, Mutex};

pub struct IlogExport {
    ilog: Arc<Ilog>,
    view: View,
    align: usize,
}

impl IlogExport {
    /// An export whose request buffers are aligned as the engine needs
    /// (for its base and its primaries).
    pub fn new(ilog: Arc<Ilog>, view: View) -> IlogExport {
        let align = ilog.buf_align();
        IlogExport { ilog, view, align }
    }
}

impl Export for IlogExport {
    fn block_size(&self) -> u32 {
        self.ilog.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.ilog.volume_blocks()
    }
    fn read_only(&self) -> bool {
        self.view != View::Current
    }
    fn buf_align(&self) -> usize {
        self.align
    }
    fn submit(&self, io: ExportIo, done: Box<dyn FnOnce(Result<(), i32>) + Send>) {
        let req = match io {
            ExportIo::Read { lba, blocks, buf } => Request::Read { lba, blocks, buf, view: self.view },
            ExportIo::Flush => Request::Flush,
            _ if self.read_only() => return done(Err(libc::EROFS)),
            ExportIo::Write { lba, blocks, buf } => Request::Write { lba, blocks, buf },
            ExportIo::Trim { lba, blocks } => Request::Unmap { lba, blocks },
            ExportIo::WriteZeroes { lba, blocks } => Request::WriteZeroes { lba, blocks },
        };
        let callback = Box::new(move |result: ilog_bdev::Result<ilog_bdev::engine::Reply>| {
            done(result.map(drop).map_err(|e| e.errno()));
        });
        if let Err(refused) = self.ilog.submit(None, req, callback) {
            (refused.done)(Err(refused.error));
        }
    }
}

/// A base bdev nobody claimed, served with one device channel.
pub struct BaseExport {
    dev: Arc<dyn BlockDevice>,
    chan: Mutex<Box<dyn DevChannel>>,
}

impl BaseExport {
    pub fn new(dev: Arc<dyn BlockDevice>) -> std::io::Result<BaseExport> {
        let chan = dev.channel()?;
        Ok(BaseExport { dev, chan: Mutex::new(chan) })
    }

    /// Runs one request to completion.
    fn run(&self, op: DevOp, block: u64, nblocks: u32, buf: IoBuf) -> Result<(), i32> {
        let mut chan = self.chan.lock().expect("device channel");
        let req = DevRequest { op, block, nblocks, buf, tag: 0 };
        while chan.submit(req).is_err() {
            chan.poll(&mut |_, _| {});
        }
        let mut status = None;
        while status.is_none() {
            chan.poll(&mut |_, s| status = Some(s));
        }
        status.expect("polled to completion")
    }
}

impl Export for BaseExport {
    fn block_size(&self) -> u32 {
        self.dev.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.dev.num_blocks()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn buf_align(&self) -> usize {
        self.dev.buf_align()
    }
    fn submit(&self, io: ExportIo, done: Box<dyn FnOnce(Result<(), i32>) + Send>) {
        let result = match io {
            ExportIo::Read { lba, blocks, buf } => self.run(DevOp::Read, lba, blocks, buf),
            ExportIo::Write { lba, blocks, buf } => self.run(DevOp::Write, lba, blocks, buf),
            ExportIo::Flush => self.run(DevOp::Flush, 0, 0, IoBuf::EMPTY),
            // A raw device has no unmap: write zeroes, a bounded chunk at a time.
            ExportIo::Trim { lba, blocks } | ExportIo::WriteZeroes { lba, blocks } => {
                let bs = self.dev.block_size() as u64;
                let chunk = (1u64 << 20) / bs;
                let mut zeros = ilog_bdev::device::DmaBuf::new((chunk * bs) as usize, self.dev.buf_align());
                let mut at = lba;
                let end = lba + u64::from(blocks);
                let mut result = Ok(());
                while at < end && result.is_ok() {
                    let n = (end - at).min(chunk) as u32;
                    result = self.run(DevOp::Write, at, n, zeros.io_buf());
                    at += u64::from(n);
                }
                result
            }
        };
        done(result);
    }
}
