//! Tertiary copy end to end on the native runtime: the diff between
//! volumes, full and incremental copies to a file and to a device, restores
//! into a fresh ilog bdev and onto a plain device that read back byte for
//! byte as the source's volumes, and a copy that fails midway and resumes
//! from its token without sending again what landed.

use ilog_bdev::copy::{self, CopySpec, Destination, Progress, StreamStore};
use ilog_bdev::device::{BlockDevice, DevChannel, DevOp, DevRequest, DevStatus, MallocDevice, QueueFull};
use ilog_bdev::engine::{format, CompactMode, Extent, LogEntryKind};
use ilog_bdev::format::FormatOptions;
use ilog_bdev::runtime::native::Ilog;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const BS: usize = 4096;
const BLOCKS: u64 = 64 * 1024;

fn bdev(cores: u32) -> Arc<Ilog> {
    let dev = Arc::new(MallocDevice::new(BLOCKS, BS as u32));
    format(dev.as_ref(), &FormatOptions::default(), [cores as u8; 16]).unwrap();
    Arc::new(Ilog::start(dev, cores).unwrap())
}

fn pattern(lba: u64, round: u8, blocks: usize) -> Vec<u8> {
    let mut v = vec![0u8; blocks * BS];
    for (i, b) in v.iter_mut().enumerate() {
        *b = (lba as usize * 7 + i / 512 + round as usize * 13) as u8 | 1;
    }
    v
}

/// The whole image of `volume` (the current one for `None`).
fn image(ilog: &Ilog, volume: Option<&str>) -> Vec<u8> {
    let mut all = vec![0u8; ilog.volume_blocks() as usize * BS];
    for (i, chunk) in all.chunks_mut(256 * BS).enumerate() {
        let lba = (i * 256) as u64;
        match volume {
            Some(v) => ilog.read_volume(v, lba, chunk).unwrap(),
            None => ilog.read(lba, chunk).unwrap(),
        }
    }
    all
}

/// v1: scattered writes; v2: overwrites, new writes, zeroes and an unmap;
/// then more writes the volumes do not see.
fn source(cores: u32) -> Arc<Ilog> {
    let ilog = bdev(cores);
    for lba in (0..ilog.volume_blocks()).step_by(997) {
        ilog.write(lba, &pattern(lba, 1, 3)).unwrap();
    }
    ilog.snapshot(Some("v1")).unwrap();
    for lba in (0..ilog.volume_blocks()).step_by(1994) {
        ilog.write(lba, &pattern(lba, 2, 1)).unwrap();
    }
    ilog.write(5000, &pattern(5000, 2, 40)).unwrap();
    ilog.write_zeroes(997 * 3, 3).unwrap();
    ilog.unmap(997 * 5, 2).unwrap();
    ilog.snapshot(Some("v2")).unwrap();
    ilog.write(100, &pattern(100, 3, 8)).unwrap();
    ilog
}

fn extent(lba: u64, blocks: u64, kind: LogEntryKind) -> Extent {
    Extent { lba, blocks, kind }
}

#[test]
fn the_diff_is_what_changed_between_two_volumes() {
    for cores in [1, 2] {
        let ilog = source(cores);
        // Every block v1 maps: what was written, and the stripes of the
        // baseline the log may have drained into meanwhile, whole.
        let full = ilog.diff("v1", None, 0, ilog.volume_blocks()).unwrap();
        let covered = |lba: u64| full.iter().any(|e| (e.lba..e.lba + e.blocks).contains(&lba));
        let written: Vec<u64> =
            (0..ilog.volume_blocks()).step_by(997).flat_map(|lba| lba..(lba + 3).min(ilog.volume_blocks())).collect();
        assert!(written.iter().all(|&lba| covered(lba)), "{cores} cores: {full:?}");
        let stripe = |lba: u64| lba / 256;
        for e in &full {
            assert_eq!(e.kind, LogEntryKind::Data);
            let touched = |lba: u64| written.iter().any(|&w| stripe(w) == stripe(lba));
            assert!(touched(e.lba) && touched(e.lba + e.blocks - 1), "{e:?} holds nothing written");
        }
        let incr = ilog.diff("v2", Some("v1"), 0, ilog.volume_blocks()).unwrap();
        let zero = LogEntryKind::Zero;
        for probe in [extent(997 * 3, 3, zero), extent(997 * 5, 2, zero), extent(5000, 40, LogEntryKind::Data)] {
            assert!(incr.contains(&probe), "{probe:?} missing from {incr:?}");
        }
        let written: u64 = incr.iter().map(|e| e.blocks).sum();
        let overwrites = (0..ilog.volume_blocks()).step_by(1994).count() as u64;
        // Overwrites (one block each; 997 * 4 among them, inside no other
        // extent), the 40-block run, 3 zeroed and 2 unmapped blocks.
        assert_eq!(written, overwrites + 40 + 3 + 2, "{cores} cores");
        let ranged = ilog.diff("v2", Some("v1"), 4990, 20).unwrap();
        assert_eq!(ranged, vec![extent(5000, 10, LogEntryKind::Data)]);
        let refusals = [
            ilog.diff("v1", Some("v2"), 0, 10).unwrap_err(),
            ilog.diff("v9", None, 0, 10).unwrap_err(),
            ilog.diff("v2", None, ilog.volume_blocks() - 1, 2).unwrap_err(),
            ilog.diff("v2", None, 0, 0).unwrap_err(),
        ];
        let errnos: Vec<_> = refusals.iter().map(|e| e.errno()).collect();
        assert_eq!(errnos, [libc::EINVAL, libc::ENOENT, libc::EINVAL, libc::EINVAL]);
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ilog-copy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn run_copy(src: &Ilog, spec: &CopySpec, target: &StreamStore, progress: &Progress) -> ilog_bdev::Result<()> {
    copy::copy(src, &copy::plan(src, spec)?, target, progress)
}

fn run_restore(
    dst: &Destination,
    source: &StreamStore,
    token: Option<&str>,
    progress: &Progress,
) -> ilog_bdev::Result<Option<ilog_bdev::engine::VolumeInfo>> {
    copy::restore(dst, source, &copy::plan_restore(dst, source, token)?, progress)
}

fn spec(volume: &str, base: Option<&str>) -> CopySpec {
    CopySpec { volume: volume.into(), base_volume: base.map(Into::into), ..Default::default() }
}

#[test]
fn full_and_incremental_streams_restore_each_volume_byte_for_byte() {
    let src = source(2);
    let (full, incr) = (StreamStore::File(scratch("full")), StreamStore::File(scratch("incr")));
    run_copy(src.as_ref(), &spec("v1", None), &full, &Progress::default()).unwrap();
    let progress = Progress::default();
    run_copy(src.as_ref(), &spec("v2", Some("v1")), &incr, &progress).unwrap();
    assert_eq!(progress.bytes_done(), progress.bytes_total());
    assert!(progress.bytes_total() > 0);
    // The incremental costs the change: far less than the volume.
    let StreamStore::File(path) = &incr else { unreachable!() };
    assert!(std::fs::metadata(path).unwrap().len() < 1 << 20);

    let dst = bdev(1);
    // Garbage in the head that the full stream's gaps must clear.
    dst.write(1, &pattern(1, 9, 4)).unwrap();
    let into: Destination = Destination::Ilog(dst.clone());
    let out_of_order = run_restore(&into, &incr, None, &Progress::default()).unwrap_err();
    assert!(out_of_order.to_string().contains("in order"), "{out_of_order}");
    let v1 = run_restore(&into, &full, None, &Progress::default()).unwrap().unwrap();
    assert_eq!(v1.name, "v1");
    assert!(image(&dst, Some("v1")) == image(&src, Some("v1")), "dst@v1 differs from src@v1");
    run_restore(&into, &incr, None, &Progress::default()).unwrap();
    assert!(image(&dst, Some("v2")) == image(&src, Some("v2")), "dst@v2 differs from src@v2");
    assert!(image(&dst, None) == image(&src, Some("v2")), "the head is not the newest volume");
    assert!(image(&dst, Some("v1")) == image(&src, Some("v1")), "dst@v1 changed");
    let again = run_restore(&into, &full, None, &Progress::default()).unwrap_err();
    assert_eq!(again.errno(), libc::EEXIST);

    // Onto a plain device: the image of the newest volume applied.
    let plain: Arc<dyn BlockDevice> = Arc::new(MallocDevice::new(BLOCKS, BS as u32));
    let onto = Destination::Device { name: "Malloc1".into(), dev: plain.clone() };
    assert!(run_restore(&onto, &full, None, &Progress::default()).unwrap().is_none());
    run_restore(&onto, &incr, None, &Progress::default()).unwrap();
    let mut got = vec![0u8; src.volume_blocks() as usize * BS];
    let mut io = Reader::new(plain);
    io.read(0, &mut got);
    assert!(got == image(&src, Some("v2")), "the plain device differs from src@v2");
}

#[test]
fn a_full_copy_includes_what_drained_into_the_baseline() {
    let src = bdev(2);
    for lba in (0..src.volume_blocks()).step_by(3001) {
        src.write(lba, &pattern(lba, 4, 2)).unwrap();
    }
    src.compact(None, CompactMode::Baseline).unwrap();
    assert!(src.stats().unwrap().drains > 0);
    src.write(3001, &pattern(3001, 5, 1)).unwrap();
    src.write_zeroes(6002, 1).unwrap();
    src.snapshot(Some("b1")).unwrap();
    let store = StreamStore::File(scratch("baseline"));
    run_copy(src.as_ref(), &spec("b1", None), &store, &Progress::default()).unwrap();
    let dst = bdev(1);
    run_restore(&Destination::Ilog(dst.clone()), &store, None, &Progress::default()).unwrap();
    assert!(image(&dst, Some("b1")) == image(&src, Some("b1")), "dst@b1 differs from src@b1");
}

/// A device whose writes fail with EIO once `fail_after` bytes went in.
struct Flaky {
    inner: MallocDevice,
    written: Arc<AtomicU64>,
    fail_after: Arc<AtomicU64>,
}

struct FlakyChannel {
    inner: Box<dyn DevChannel>,
    written: Arc<AtomicU64>,
    fail_after: Arc<AtomicU64>,
    failed: Vec<u64>,
}

impl BlockDevice for Flaky {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn num_blocks(&self) -> u64 {
        self.inner.num_blocks()
    }
    fn channel(&self) -> std::io::Result<Box<dyn DevChannel>> {
        Ok(Box::new(FlakyChannel {
            inner: self.inner.channel()?,
            written: self.written.clone(),
            fail_after: self.fail_after.clone(),
            failed: Vec::new(),
        }))
    }
}

impl DevChannel for FlakyChannel {
    fn submit(&mut self, req: DevRequest) -> Result<(), QueueFull> {
        if req.op == DevOp::Write {
            let bytes = u64::from(req.nblocks) * BS as u64;
            if self.written.fetch_add(bytes, Ordering::Relaxed) + bytes > self.fail_after.load(Ordering::Relaxed) {
                self.failed.push(req.tag);
                return Ok(());
            }
        }
        self.inner.submit(req)
    }
    fn poll(&mut self, done: &mut dyn FnMut(u64, DevStatus)) -> usize {
        let failed = self.failed.len();
        for tag in self.failed.drain(..) {
            done(tag, Err(libc::EIO));
        }
        failed + self.inner.poll(done)
    }
    fn outstanding(&self) -> usize {
        self.failed.len() + self.inner.outstanding()
    }
}

/// Blocking reads of a device, for checking what a restore wrote.
struct Reader {
    dev: Arc<dyn BlockDevice>,
}

impl Reader {
    fn new(dev: Arc<dyn BlockDevice>) -> Reader {
        Reader { dev }
    }
    fn read(&mut self, lba: u64, out: &mut [u8]) {
        // Through a stream store: its reader is a blocking device reader.
        let store = StreamStore::Device { name: "check".into(), dev: self.dev.clone() };
        let mut r = store.reader_at(lba * BS as u64).unwrap();
        std::io::Read::read_exact(&mut r, out).unwrap();
    }
}

#[test]
fn a_copy_that_failed_resumes_from_its_token_without_sending_again() {
    let src = bdev(2);
    for lba in (0..12288).step_by(16) {
        src.write(lba, &pattern(lba, 6, 16)).unwrap();
    }
    src.snapshot(Some("big")).unwrap();
    let (written, fail_after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(40 << 20)));
    let dev =
        Flaky { inner: MallocDevice::new(16384, BS as u32), written: written.clone(), fail_after: fail_after.clone() };
    let store = StreamStore::Device { name: "Flaky0".into(), dev: Arc::new(dev) };
    let progress = Progress::default();
    let err = run_copy(src.as_ref(), &spec("big", None), &store, &progress).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let token = progress.resume_token().expect("a token");
    assert!(progress.bytes_done() > 0 && progress.bytes_done() < progress.bytes_total());
    let total = progress.bytes_total();
    fail_after.store(u64::MAX, Ordering::Relaxed);
    let before = written.load(Ordering::Relaxed);
    let resumed = CopySpec { resume_token: Some(token.clone()), ..spec("big", None) };
    let progress = Progress::default();
    run_copy(src.as_ref(), &resumed, &store, &progress).unwrap();
    let sent_again = written.load(Ordering::Relaxed) - before;
    assert!(sent_again < total * 3 / 4, "the resumed copy wrote {sent_again} of {total} bytes");
    // A token of another stream is refused, and so is a damaged one.
    let other = CopySpec { resume_token: Some(token), ..spec("big", None) };
    let other = CopySpec { lba_count: Some(100), ..other };
    assert_eq!(run_copy(src.as_ref(), &other, &store, &Progress::default()).unwrap_err().errno(), libc::EINVAL);
    let dst = bdev(1);
    run_restore(&Destination::Ilog(dst.clone()), &store, None, &Progress::default()).unwrap();
    assert!(image(&dst, Some("big")) == image(&src, Some("big")), "dst@big differs from src@big");
}

#[test]
fn a_copy_that_failed_before_its_first_sync_leaves_no_token() {
    let src = source(1);
    // v1 is less than a chunk: the store's first write is the final sync.
    let (written, fail_after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let dev = Flaky { inner: MallocDevice::new(BLOCKS, BS as u32), written, fail_after };
    let store = StreamStore::Device { name: "Flaky2".into(), dev: Arc::new(dev) };
    let progress = Progress::default();
    assert_eq!(run_copy(src.as_ref(), &spec("v1", None), &store, &progress).unwrap_err().errno(), libc::EIO);
    // A token would vouch for a header the store never made durable.
    assert_eq!(progress.resume_token(), None);
}

#[test]
fn a_damaged_or_truncated_stream_is_refused_and_changes_nothing() {
    let src = source(1);
    let path = scratch("damaged");
    let store = StreamStore::File(path.clone());
    run_copy(src.as_ref(), &spec("v1", None), &store, &Progress::default()).unwrap();
    let good = std::fs::read(&path).unwrap();
    let dst = bdev(1);
    dst.write(7, &pattern(7, 8, 2)).unwrap();
    let before = image(&dst, None);
    let into = Destination::Ilog(dst.clone());
    let mut flipped = good.clone();
    flipped[good.len() - 5000] ^= 1;
    for (what, bytes) in [("a flipped bit", flipped), ("a truncation", good[..good.len() - 100].to_vec())] {
        std::fs::write(&path, &bytes).unwrap();
        let err = run_restore(&into, &store, None, &Progress::default()).unwrap_err();
        assert_eq!(err.errno(), libc::EUCLEAN, "{what}: {err}");
        assert!(dst.volumes().unwrap().is_empty(), "{what}: a volume made of a damaged stream");
        assert!(image(&dst, None) == before, "{what}: the destination changed");
    }
}

#[test]
fn a_restore_that_failed_resumes_from_its_token() {
    let src = source(2);
    let store = StreamStore::File(scratch("restore-resume"));
    run_copy(src.as_ref(), &spec("v1", None), &store, &Progress::default()).unwrap();
    let (written, fail_after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(100 << 20)));
    let dev =
        Flaky { inner: MallocDevice::new(BLOCKS, BS as u32), written: written.clone(), fail_after: fail_after.clone() };
    let dev: Arc<dyn BlockDevice> = Arc::new(dev);
    let onto = Destination::Device { name: "Flaky1".into(), dev: dev.clone() };
    let progress = Progress::default();
    assert_eq!(run_restore(&onto, &store, None, &progress).unwrap_err().errno(), libc::EIO);
    let token = progress.resume_token().expect("a token");
    fail_after.store(u64::MAX, Ordering::Relaxed);
    let before = written.load(Ordering::Relaxed);
    run_restore(&onto, &store, Some(&token), &Progress::default()).unwrap();
    let again = written.load(Ordering::Relaxed) - before;
    let volume_bytes = src.volume_blocks() * BS as u64;
    assert!(again < volume_bytes, "the resumed restore wrote {again} of {volume_bytes} bytes");
    let mut got = vec![0u8; src.volume_blocks() as usize * BS];
    Reader::new(dev).read(0, &mut got);
    assert!(got == image(&src, Some("v1")), "the device differs from src@v1");
}
