//! `ilog_tgt`'s NBD server as a client drives it: one connection's bytes
//! from the client (the option haggling of the handshake, then requests),
//! input `[export] bytes` (`ilog_fuzz::NBD_READ_ONLY`). The exports are RAM
//! that checks every I/O against the server's contract. The servers listen
//! on unix sockets in the temporary directory (`TMPDIR`), left there when
//! the process ends.

#![no_main]

use ilog_fuzz::{NBD_EXPORT, NBD_READ_ONLY};
use ilog_tgt::nbd::{Export, ExportIo, Listen, NbdServer};
use libfuzzer_sys::fuzz_target;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

const BLOCK_SIZE: u32 = 512;
const BLOCKS: u64 = 64;
/// Request buffers must be this aligned: the server allocates them so.
const ALIGN: usize = 4096;

struct MemExport {
    read_only: bool,
    data: Mutex<Vec<u8>>,
}

impl Export for MemExport {
    fn block_size(&self) -> u32 {
        BLOCK_SIZE
    }
    fn num_blocks(&self) -> u64 {
        BLOCKS
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn buf_align(&self) -> usize {
        ALIGN
    }
    fn submit(&self, io: ExportIo, done: Box<dyn FnOnce(Result<(), i32>) + Send>) {
        let mut data = self.data.lock().unwrap();
        // Panics (a crash) when the server breaks the contract: an empty
        // range, one beyond the end, a misaligned buffer, a change to a
        // read-only export.
        let range = |lba: u64, blocks: u32| {
            assert!(blocks > 0, "an empty I/O");
            let start = usize::try_from(lba).unwrap() * BLOCK_SIZE as usize;
            start..start + blocks as usize * BLOCK_SIZE as usize
        };
        let aligned = |buf: usize| assert_eq!(buf % ALIGN, 0, "a misaligned buffer");
        if !matches!(io, ExportIo::Read { .. } | ExportIo::Flush) {
            assert!(!self.read_only, "{io:?} on a read-only export");
        }
        match io {
            ExportIo::Read { lba, blocks, buf } => {
                aligned(buf.as_ptr() as usize);
                buf.copy_from(&data[range(lba, blocks)]);
            }
            ExportIo::Write { lba, blocks, buf } => {
                aligned(buf.as_ptr() as usize);
                data[range(lba, blocks)].copy_from_slice(buf.as_slice());
            }
            ExportIo::Flush => {}
            ExportIo::Trim { lba, blocks } | ExportIo::WriteZeroes { lba, blocks } => data[range(lba, blocks)].fill(0),
        }
        drop(data);
        done(Ok(()));
    }
}

/// The read-only or the writable export's server, started at the first
/// call.
fn server(read_only: bool) -> &'static NbdServer {
    static SERVERS: OnceLock<[NbdServer; 2]> = OnceLock::new();
    let servers = SERVERS.get_or_init(|| {
        // libFuzzer's `main`, unlike Rust's, leaves SIGPIPE killing the
        // process: a client writing after the server hung up must get EPIPE.
        // SAFETY: ignoring a signal installs no handler to run.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        [false, true].map(start)
    });
    &servers[usize::from(read_only)]
}

fn start(read_only: bool) -> NbdServer {
    let name = format!("ilog-fuzz-nbd-{}-{}.sock", std::process::id(), if read_only { "ro" } else { "rw" });
    let listen = Listen::Unix(std::env::temp_dir().join(name));
    let data = Mutex::new(vec![0; (BLOCKS * u64::from(BLOCK_SIZE)) as usize]);
    NbdServer::start(listen, NBD_EXPORT.into(), Arc::new(MemExport { read_only, data })).expect("an NBD server")
}

fuzz_target!(|data: &[u8]| {
    let Some((&export, input)) = data.split_first() else { return };
    let server = server(export & NBD_READ_ONLY != 0);
    let Listen::Unix(path) = server.listen() else { unreachable!("the servers listen on unix sockets") };
    let mut conn = UnixStream::connect(path).expect("a connection");
    let mut client = conn.try_clone().expect("a second handle");
    // Sending beside receiving: a client that only sends could fill the
    // socket both ways and wait on the server, which waits on it.
    thread::scope(|s| {
        s.spawn(move || {
            // The server may hang up first (a protocol violation).
            let _ = client.write_all(input);
            let _ = client.shutdown(Shutdown::Write);
        });
        // Every way through the server ends with it closing the connection.
        let _ = io::copy(&mut conn, &mut io::sink());
    });
    // The input's work ends with the input: what a crash or a leak comes
    // from is known, and nothing is left running at exit.
    while server.connections() > 0 {
        thread::yield_now();
    }
});
