//! `file`: a device backed by a regular file or a block device (SPDK's uring
//! bdev). Each channel owns an io_uring; data bypasses the page cache
//! (O_DIRECT) wherever the file system allows it.

use super::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, QueueFull};
use io_uring::{opcode, types, IoUring};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

/// Requests a channel may have in flight, and the size of its submission
/// queue. The completion queue is twice as large, so it never overflows.
const QUEUE_DEPTH: usize = 256;

/// Buffer alignment O_DIRECT needs: a page satisfies every logical block
/// size Linux supports.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A device stored in a file or on a block device.
pub struct FileDevice {
    file: Arc<File>,
    block_size: u32,
    num_blocks: u64,
    direct: bool,
}

impl FileDevice {
    /// Opens an existing file or block device, whose size must be a whole
    /// number of blocks.
    pub fn open(path: &Path, block_size: u32) -> io::Result<FileDevice> {
        if block_size == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "block size is 0"));
        }
        let (mut file, direct) = open_read_write(path)?;
        // Unlike the metadata's length, the end offset is also a block
        // device's size.
        let size = file.seek(SeekFrom::End(0))?;
        if size % u64::from(block_size) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: size {size} is not a multiple of the block size {block_size}", path.display()),
            ));
        }
        Ok(FileDevice { file: Arc::new(file), block_size, num_blocks: size / u64::from(block_size), direct })
    }

    /// Creates, or truncates, a regular file `num_blocks` blocks long. The
    /// file is sparse: blocks never written read as zeroes.
    pub fn create(path: &Path, num_blocks: u64, block_size: u32) -> io::Result<FileDevice> {
        let size = num_blocks
            .checked_mul(u64::from(block_size))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "device size overflows u64"))?;
        OpenOptions::new().write(true).create(true).truncate(true).open(path)?.set_len(size)?;
        FileDevice::open(path, block_size)
    }

    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

/// Opens `path` with O_DIRECT, or without it where the file system refuses
/// direct I/O (EINVAL), as tmpfs and some network file systems do.
fn open_read_write(path: &Path) -> io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    match options.clone().custom_flags(libc::O_DIRECT).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((options.open(path)?, false)),
        Err(e) => Err(e),
    }
}

impl BlockDevice for FileDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    fn buf_align(&self) -> usize {
        if self.direct {
            DIRECT_ALIGN.max(self.block_size as usize)
        } else {
            1
        }
    }
    fn channel(&self) -> io::Result<Box<dyn DevChannel>> {
        Ok(Box::new(FileChannel {
            ring: IoUring::new(QUEUE_DEPTH as u32)?,
            file: self.file.clone(),
            block_size: u64::from(self.block_size),
            num_blocks: self.num_blocks,
            slots: vec![Slot::default(); QUEUE_DEPTH].into_boxed_slice(),
            free: (0..QUEUE_DEPTH).collect(),
            rejected: Vec::with_capacity(QUEUE_DEPTH),
        }))
    }
}

/// What a channel keeps of a request until its completion is polled.
#[derive(Clone, Copy, Default)]
struct Slot {
    tag: u64,
    /// Bytes the request transfers; the kernel reporting fewer is an error.
    len: u32,
}

/// A core's io_uring. SQEs carry the index of their request's slot rather
/// than its tag, so that a completion can be checked against the length the
/// request asked for; the slots also bound the requests in flight.
struct FileChannel {
    ring: IoUring,
    /// Keeps the descriptor the SQEs name open.
    file: Arc<File>,
    block_size: u64,
    num_blocks: u64,
    slots: Box<[Slot]>,
    /// Indices of unused slots; empty when the channel is at queue depth.
    free: Vec<usize>,
    /// Slots of out-of-range requests, failed on the next poll without
    /// reaching the kernel.
    rejected: Vec<usize>,
}

impl FileChannel {
    /// The byte offset and length of a read or write, or `None` if it ends
    /// past the device (or is too long for one SQE).
    fn extent(&self, req: &DevRequest) -> Option<(u64, u32)> {
        let end = req.block.checked_add(u64::from(req.nblocks))?;
        if end > self.num_blocks {
            return None;
        }
        let len = u32::try_from(u64::from(req.nblocks) * self.block_size).ok()?;
        Some((req.block * self.block_size, len))
    }
}

impl DevChannel for FileChannel {
    fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull> {
        let slot = *self.free.last().ok_or(QueueFull)?;
        let extent = match req.op {
            DevOp::Flush => Some((0, 0)),
            DevOp::Read | DevOp::Write => self.extent(&req),
            // io_uring has no block copy: `supports_copy` says no.
            DevOp::Copy { .. } => None,
        };
        let len = match extent {
            None => {
                self.rejected.push(slot);
                0
            }
            Some((offset, len)) => {
                let fd = types::Fd(self.file.as_raw_fd());
                let sqe = match req.op {
                    DevOp::Read => {
                        opcode::Read::new(fd, req.data(self.block_size as usize), len).offset(offset).build()
                    }
                    DevOp::Write => {
                        opcode::Write::new(fd, req.data(self.block_size as usize), len).offset(offset).build()
                    }
                    DevOp::Flush => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build(),
                    DevOp::Copy { .. } => unreachable!("refused above"),
                };
                // SAFETY: `req.buf` holds `len` bytes (`data` checked) and
                // stays valid until this request's completion is polled, as
                // its maker promised; `Drop` waits out the kernel if the
                // channel goes first.
                if unsafe { self.ring.submission().push(&sqe.user_data(slot as u64)) }.is_err() {
                    return Err(QueueFull);
                }
                len
            }
        };
        self.free.pop();
        self.slots[slot] = Slot { tag: req.tag, len };
        Ok(())
    }

    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let mut n = self.rejected.len();
        for slot in self.rejected.drain(..) {
            self.free.push(slot);
            done(self.slots[slot].tag, Err(libc::EINVAL));
        }
        if !self.ring.submission().is_empty() {
            // Submission fails only transiently (EAGAIN, EBUSY, EINTR); the
            // SQEs stay queued and the next poll tries again.
            let _ = self.ring.submit();
        }
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            let Slot { tag, len } = self.slots[slot];
            self.free.push(slot);
            done(tag, status(cqe.result(), len));
            n += 1;
        }
        n
    }

    fn outstanding(&self) -> usize {
        QUEUE_DEPTH - self.free.len()
    }
}

impl Drop for FileChannel {
    /// Waits for the requests the kernel still holds: it would otherwise go
    /// on using their buffers after the engine frees them.
    fn drop(&mut self) {
        let mut in_flight = self.outstanding() - self.rejected.len();
        while in_flight > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.kind() != io::ErrorKind::Interrupted {
                    break;
                }
            }
            in_flight -= self.ring.completion().count();
        }
    }
}

/// A request's status from the kernel's result: the bytes transferred, or a
/// negated errno.
fn status(result: i32, len: u32) -> DevStatus {
    match u32::try_from(result) {
        Err(_) => Err(-result),
        Ok(n) if n == len => Ok(()),
        // The file ended early (it shrank under us): the engine must not
        // take a partial block for a whole one.
        Ok(_) => Err(libc::EIO),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DmaBuf, IoBuf};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    const BS: u32 = 4096;

    /// A uniquely named path in the temp directory, removed on drop.
    struct TempPath(PathBuf);

    impl TempPath {
        fn new() -> TempPath {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let name = format!("ilog-file-dev-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            TempPath(std::env::temp_dir().join(name))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn request(op: DevOp, block: u64, nblocks: u32, buf: IoBuf, tag: u64) -> DevRequest {
        DevRequest { op, block, nblocks, buf, tag }
    }

    /// Polls until nothing is outstanding; returns the completions in order.
    fn drain(ch: &mut dyn DevChannel) -> Vec<(u64, DevStatus)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while ch.outstanding() > 0 {
            assert!(Instant::now() < deadline, "I/O did not complete");
            ch.poll(&mut |tag, status| out.push((tag, status)));
        }
        out
    }

    /// Submits one request and waits for its status.
    fn run(ch: &mut dyn DevChannel, req: DevRequest) -> DevStatus {
        ch.submit(req).expect("queue has room");
        let out = drain(ch);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, req.tag);
        out[0].1
    }

    fn pattern(buf: &mut [u8], seed: u8) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
    }

    fn read_blocks(dev: &FileDevice, ch: &mut dyn DevChannel, block: u64, nblocks: u32) -> DmaBuf {
        let mut buf = DmaBuf::new((nblocks * dev.block_size()) as usize, dev.buf_align());
        assert_eq!(run(ch, request(DevOp::Read, block, nblocks, buf.io_buf(), 1)), Ok(()));
        buf
    }

    #[test]
    fn write_read_round_trip_and_flush() {
        let path = TempPath::new();
        let dev = FileDevice::create(&path.0, 64, BS).unwrap();
        assert_eq!((dev.block_size(), dev.num_blocks()), (BS, 64));
        if dev.is_direct() {
            assert_eq!(dev.buf_align(), 4096);
        }
        let mut ch = dev.channel().unwrap();

        let mut data = DmaBuf::new(3 * BS as usize, dev.buf_align());
        pattern(&mut data, 5);
        assert_eq!(run(&mut *ch, request(DevOp::Write, 10, 3, data.io_buf(), 42)), Ok(()));
        assert_eq!(run(&mut *ch, request(DevOp::Flush, 0, 0, IoBuf::EMPTY, 43)), Ok(()));

        assert_eq!(&read_blocks(&dev, &mut *ch, 10, 3)[..], &data[..]);
        // Never written: the sparse file reads as zeroes.
        assert!(read_blocks(&dev, &mut *ch, 0, 2).iter().all(|&b| b == 0));
        assert_eq!(ch.outstanding(), 0);
    }

    #[test]
    fn channels_on_two_threads() {
        const PER_THREAD: u32 = 32;
        let path = TempPath::new();
        let dev = FileDevice::create(&path.0, 2 * u64::from(PER_THREAD), BS).unwrap();
        std::thread::scope(|s| {
            for t in 0..2u32 {
                let dev = &dev;
                s.spawn(move || {
                    let mut ch = dev.channel().unwrap();
                    let first = u64::from(t * PER_THREAD);
                    let mut bufs: Vec<DmaBuf> = (0..PER_THREAD)
                        .map(|i| {
                            let mut buf = DmaBuf::new(BS as usize, dev.buf_align());
                            pattern(&mut buf, (t * PER_THREAD + i) as u8);
                            buf
                        })
                        .collect();
                    // All writes in flight at once, completing in any order.
                    for (i, buf) in bufs.iter_mut().enumerate() {
                        let req = request(DevOp::Write, first + i as u64, 1, buf.io_buf(), i as u64);
                        ch.submit(req).unwrap();
                    }
                    let mut done = drain(&mut *ch);
                    done.sort_by_key(|&(tag, _)| tag);
                    assert_eq!(done, (0..u64::from(PER_THREAD)).map(|tag| (tag, Ok(()))).collect::<Vec<_>>());

                    let back = read_blocks(dev, &mut *ch, first, PER_THREAD);
                    for (i, buf) in bufs.iter().enumerate() {
                        assert_eq!(&back[i * BS as usize..][..BS as usize], &buf[..]);
                    }
                });
            }
        });
    }

    #[test]
    fn out_of_range_fails_with_einval() {
        let path = TempPath::new();
        let dev = FileDevice::create(&path.0, 8, BS).unwrap();
        let mut ch = dev.channel().unwrap();
        let mut buf = DmaBuf::new(2 * BS as usize, dev.buf_align());
        for (block, nblocks) in [(7, 2), (8, 1), (u64::MAX, 1)] {
            ch.submit(request(DevOp::Read, block, nblocks, buf.io_buf(), block)).unwrap();
            assert_eq!(ch.outstanding(), 1);
            let mut got = Vec::new();
            assert_eq!(ch.poll(&mut |tag, status| got.push((tag, status))), 1);
            assert_eq!(got, [(block, Err(libc::EINVAL))]);
        }
        assert_eq!(run(&mut *ch, request(DevOp::Write, 7, 1, buf.io_buf(), 1)), Ok(()));
    }

    #[test]
    fn queue_full_at_depth() {
        let path = TempPath::new();
        let dev = FileDevice::create(&path.0, 1, BS).unwrap();
        let mut ch = dev.channel().unwrap();
        let flush = |tag| request(DevOp::Flush, 0, 0, IoBuf::EMPTY, tag);
        for tag in 0..QUEUE_DEPTH as u64 {
            ch.submit(flush(tag)).unwrap();
        }
        assert_eq!(ch.submit(flush(u64::MAX)), Err(QueueFull));
        assert_eq!(ch.outstanding(), QUEUE_DEPTH);
        let done = drain(&mut *ch);
        assert_eq!(done.len(), QUEUE_DEPTH);
        assert!(done.iter().all(|&(_, status)| status == Ok(())));
    }

    #[test]
    fn reopen_sees_data() {
        let path = TempPath::new();
        let mut data = DmaBuf::new(BS as usize, 4096);
        pattern(&mut data, 9);
        {
            let dev = FileDevice::create(&path.0, 16, BS).unwrap();
            let mut ch = dev.channel().unwrap();
            assert_eq!(run(&mut *ch, request(DevOp::Write, 15, 1, data.io_buf(), 1)), Ok(()));
            assert_eq!(run(&mut *ch, request(DevOp::Flush, 0, 0, IoBuf::EMPTY, 2)), Ok(()));
        }
        let dev = FileDevice::open(&path.0, BS).unwrap();
        assert_eq!(dev.num_blocks(), 16);
        let mut ch = dev.channel().unwrap();
        assert_eq!(&read_blocks(&dev, &mut *ch, 15, 1)[..], &data[..]);
    }

    #[test]
    fn open_needs_whole_blocks() {
        let path = TempPath::new();
        std::fs::write(&path.0, vec![0u8; 2 * BS as usize + 512]).unwrap();
        let err = FileDevice::open(&path.0, BS).err().expect("size is not a multiple of 4096");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(FileDevice::open(&path.0, 512).unwrap().num_blocks(), 17);
        assert_eq!(FileDevice::open(&path.0, 0).err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
    }

    #[test]
    fn short_read_is_eio() {
        let path = TempPath::new();
        let dev = FileDevice::create(&path.0, 4, BS).unwrap();
        // Shrink the file under the open device: reading its last two
        // blocks now returns one, or nothing.
        OpenOptions::new().write(true).open(&path.0).unwrap().set_len(3 * u64::from(BS)).unwrap();
        let mut ch = dev.channel().unwrap();
        let mut buf = DmaBuf::new(2 * BS as usize, dev.buf_align());
        assert_eq!(run(&mut *ch, request(DevOp::Read, 2, 2, buf.io_buf(), 1)), Err(libc::EIO));
        assert_eq!(run(&mut *ch, request(DevOp::Read, 3, 1, buf.io_buf(), 2)), Err(libc::EIO));
    }
}
