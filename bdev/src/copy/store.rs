//! Where a copy stream lives: a file, or a block device from its first
//! block on. Both give the stream's bytes as `std::io` readers and writers,
//! so the stream's encoder and decoder know nothing of where they go.

use crate::device::{BlockDevice, DevChannel, DevOp, DevRequest, DmaBuf};
use crate::error::{Error, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes a device stream reads or writes at once.
const CHUNK: usize = 1 << 20;

/// A copy's target or a restore's source.
#[derive(Clone)]
pub enum StreamStore {
    File(PathBuf),
    /// `name` says which device in messages.
    Device {
        name: String,
        dev: Arc<dyn BlockDevice>,
    },
}

/// A stream being written: bytes, and a way to make them durable.
pub trait Sink: Write + Send {
    fn sync(&mut self) -> std::io::Result<()>;
}

impl StreamStore {
    pub(super) fn name(&self) -> String {
        match self {
            StreamStore::File(path) => path.display().to_string(),
            StreamStore::Device { name, .. } => name.clone(),
        }
    }

    /// `e` from `doing` something with the stream, logged with its name.
    pub(super) fn error(&self, doing: &str, e: std::io::Error) -> Error {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        log::error!("copy stream {}: {doing}: {e}", self.name());
        match errno {
            libc::ENOSPC => Error::DeviceTooSmall(format!("the stream does not fit in {}", self.name())),
            errno => Error::Io(errno),
        }
    }

    /// A writer at byte `offset` of the stream: 0 starts a new stream (a
    /// file is truncated), more goes on with one whose first `offset`
    /// bytes are in place.
    pub fn writer_at(&self, offset: u64) -> Result<Box<dyn Sink>> {
        match self {
            StreamStore::File(path) => {
                let open = || -> std::io::Result<std::fs::File> {
                    let mut f = std::fs::OpenOptions::new().write(true).create(offset == 0).open(path)?;
                    if f.metadata()?.len() < offset {
                        // Shorter than what a resume token vouched for.
                        return Err(std::io::Error::from_raw_os_error(libc::ENODATA));
                    }
                    f.set_len(offset)?;
                    f.seek(SeekFrom::Start(offset))?;
                    Ok(f)
                };
                Ok(Box::new(open().map_err(|e| self.error("open for writing", e))?))
            }
            StreamStore::Device { dev, .. } => {
                let w = DeviceWriter::at(dev.clone(), offset).map_err(|e| self.error("read the last block", e))?;
                Ok(Box::new(w))
            }
        }
    }

    /// A reader from byte `offset` of the stream on.
    pub fn reader_at(&self, offset: u64) -> Result<Box<dyn Read + Send>> {
        match self {
            StreamStore::File(path) => {
                let open = || -> std::io::Result<std::fs::File> {
                    let mut f = std::fs::File::open(path)?;
                    f.seek(SeekFrom::Start(offset))?;
                    Ok(f)
                };
                let f = open().map_err(|e| self.error("open for reading", e))?;
                Ok(Box::new(std::io::BufReader::with_capacity(CHUNK, f)))
            }
            StreamStore::Device { dev, .. } => {
                Ok(Box::new(DeviceReader::at(dev.clone(), offset).map_err(|e| self.error("open", e))?))
            }
        }
    }

    /// The stream's first `len` bytes.
    pub fn read_prefix(&self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.reader_at(0)?.read_exact(&mut buf).map_err(|e| self.error("read the header", e))?;
        Ok(buf)
    }
}

impl Sink for std::fs::File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.sync_data()
    }
}

/// Blocking I/O on a device channel of the calling thread, through one
/// chunk buffer.
pub(super) struct DeviceIo {
    dev: Arc<dyn BlockDevice>,
    chan: Box<dyn DevChannel>,
    buf: DmaBuf,
}

impl DeviceIo {
    pub(super) fn new(dev: Arc<dyn BlockDevice>) -> std::io::Result<DeviceIo> {
        let chan = dev.channel()?;
        let buf = DmaBuf::new(CHUNK, dev.buf_align());
        Ok(DeviceIo { dev, chan, buf })
    }

    /// Writes `data` (whole blocks) at device byte `at`.
    pub(super) fn write(&mut self, at: u64, data: &[u8]) -> std::io::Result<()> {
        for (i, piece) in data.chunks(CHUNK).enumerate() {
            self.buf[..piece.len()].copy_from_slice(piece);
            self.io(DevOp::Write, at + (i * CHUNK) as u64, piece.len())?;
        }
        Ok(())
    }

    /// Writes `len` bytes (whole blocks) of zeros at device byte `at`.
    pub(super) fn write_zeroes(&mut self, at: u64, len: usize) -> std::io::Result<()> {
        self.buf.fill(0);
        for done in (0..len).step_by(CHUNK) {
            self.io(DevOp::Write, at + done as u64, CHUNK.min(len - done))?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        self.io(DevOp::Flush, 0, 0)
    }

    fn bs(&self) -> u64 {
        u64::from(self.dev.block_size())
    }

    fn capacity(&self) -> u64 {
        self.dev.num_blocks() * self.bs()
    }

    /// Reads or writes `len` bytes (whole blocks) of the buffer at device
    /// byte `at`, or flushes; returns once the device completed it.
    fn io(&mut self, op: DevOp, at: u64, len: usize) -> std::io::Result<()> {
        let bs = self.bs();
        let req = DevRequest { op, block: at / bs, nblocks: (len as u64 / bs) as u32, buf: self.buf.io_buf(), tag: 0 };
        // The buffer is ours and outlives the request: this call returns
        // only once the completion was polled.
        while self.chan.submit(req).is_err() {
            self.chan.poll(&mut |_, _| {});
            std::thread::yield_now();
        }
        let mut status = None;
        while status.is_none() {
            if self.chan.poll(&mut |_, s| status = Some(s)) == 0 {
                std::thread::yield_now();
            }
        }
        status.expect("polled").map_err(std::io::Error::from_raw_os_error)
    }
}

/// Writes a stream to a device through one chunk buffer: whole chunks as
/// they fill, the partial last one (padded with zeros to a block) at each
/// sync, written again as it grows.
struct DeviceWriter {
    io: DeviceIo,
    /// Device byte offset of the buffer's first byte (a block boundary).
    chunk_at: u64,
    filled: usize,
}

impl DeviceWriter {
    fn at(dev: Arc<dyn BlockDevice>, offset: u64) -> std::io::Result<DeviceWriter> {
        let mut io = DeviceIo::new(dev)?;
        let bs = io.bs();
        let chunk_at = offset / bs * bs;
        let filled = (offset - chunk_at) as usize;
        if filled > 0 {
            io.io(DevOp::Read, chunk_at, bs as usize)?;
        }
        Ok(DeviceWriter { io, chunk_at, filled })
    }

    /// Writes the buffer's filled blocks (the last one padded).
    fn write_out(&mut self) -> std::io::Result<()> {
        let bs = self.io.bs() as usize;
        let len = self.filled.div_ceil(bs) * bs;
        self.io.buf[self.filled..len].fill(0);
        if len > 0 {
            self.io.io(DevOp::Write, self.chunk_at, len)?;
        }
        Ok(())
    }
}

impl Write for DeviceWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.chunk_at + (self.filled + bytes.len()) as u64 > self.io.capacity() {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = bytes.len().min(CHUNK - self.filled);
        self.io.buf[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
        self.filled += n;
        if self.filled == CHUNK {
            self.write_out()?;
            self.chunk_at += CHUNK as u64;
            self.filled = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink for DeviceWriter {
    fn sync(&mut self) -> std::io::Result<()> {
        self.write_out()?;
        self.io.flush()
    }
}

/// Reads a stream from a device, a chunk at a time, up to its end.
struct DeviceReader {
    io: DeviceIo,
    /// Device byte offset of the next chunk to read.
    next_at: u64,
    /// The unread part of the buffer.
    pos: usize,
    end: usize,
}

impl DeviceReader {
    fn at(dev: Arc<dyn BlockDevice>, offset: u64) -> std::io::Result<DeviceReader> {
        let io = DeviceIo::new(dev)?;
        let bs = io.bs();
        let mut r = DeviceReader { io, next_at: offset / bs * bs, pos: 0, end: 0 };
        r.refill()?;
        r.pos = (offset % bs) as usize;
        Ok(r)
    }

    fn refill(&mut self) -> std::io::Result<()> {
        let len = (self.io.capacity() - self.next_at).min(CHUNK as u64) as usize;
        if len > 0 {
            self.io.io(DevOp::Read, self.next_at, len)?;
        }
        self.next_at += len as u64;
        (self.pos, self.end) = (0, len);
        Ok(())
    }
}

impl Read for DeviceReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.end {
            self.refill()?;
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.io.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MallocDevice;

    fn stores() -> Vec<StreamStore> {
        let dir = std::env::temp_dir().join(format!("ilog-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dev: Arc<dyn BlockDevice> = Arc::new(MallocDevice::new(8192, 512));
        vec![StreamStore::File(dir.join("stream")), StreamStore::Device { name: "Malloc9".into(), dev }]
    }

    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    #[test]
    fn a_stream_written_in_pieces_with_syncs_reads_back_whole() {
        for store in stores() {
            let mut w = store.writer_at(0).unwrap();
            let (a, b) = (bytes(700, 1), bytes(CHUNK + 333, 2));
            w.write_all(&a).unwrap();
            w.sync().unwrap();
            w.write_all(&b).unwrap();
            w.sync().unwrap();
            drop(w);
            // Resumed in the middle of a block, over bytes written past it.
            let mut w = store.writer_at(500).unwrap();
            let c = bytes(5000, 3);
            w.write_all(&c).unwrap();
            w.sync().unwrap();
            let mut want = a[..500].to_vec();
            want.extend_from_slice(&c);
            assert_eq!(store.read_prefix(want.len()).unwrap(), want);
            let mut tail = vec![0; 4000];
            store.reader_at(1500).unwrap().read_exact(&mut tail).unwrap();
            assert_eq!(tail, want[1500..5500]);
        }
    }

    #[test]
    fn a_stream_larger_than_the_device_fails_with_enospc() {
        let dev: Arc<dyn BlockDevice> = Arc::new(MallocDevice::new(16, 512));
        let store = StreamStore::Device { name: "Malloc9".into(), dev };
        let mut w = store.writer_at(0).unwrap();
        let err = w.write_all(&vec![1; 16 * 512 + 1]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        assert!(store.error("write", err).to_string().contains("does not fit in Malloc9"));
    }
}
