//! NBD server: exports one asynchronous block device ([`Export`]) over the Network Block Device protocol, on a
//! unix socket or a loopback TCP address.
//!
//! This module owns everything NBD in `ilog_tgt`: the listening socket (and its socket file), the fixed-newstyle
//! handshake, the transmission phase (simple replies only) and the threads that serve each connection. It knows
//! nothing of the engine: the target adapts a volume to [`Export`].
//!
//! Threads: one accepts connections; each connection has a reader (handshake, then parses requests, allocates the
//! request buffer and submits it to the export) and a writer (receives completions over a channel and writes the
//! replies, in completion order). The export's completion callback only sends on that channel, so it may run on a
//! busy-polling reactor. A request buffer travels inside its completion callback, so it lives until the export has
//! finished with it, whatever happens to the connection meanwhile.
//!
//! Protocol reference: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use ilog_bdev::device::{DmaBuf, IoBuf};
use log::{debug, error, info, warn};

// The protocol's values
// (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>);
// those a client sends are public, for clients such as the fuzz seeds.

// Handshake.
const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054; // "IHAVEOPT"
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_INVALID: u32 = 0x8000_0003;
const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
const REP_ERR_TOO_BIG: u32 = 0x8000_0009;

const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
const TFLAG_HAS_FLAGS: u16 = 1 << 0;
const TFLAG_READ_ONLY: u16 = 1 << 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_FUA: u16 = 1 << 3;
const TFLAG_SEND_TRIM: u16 = 1 << 5;
const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Transmission.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

// Error values of the protocol. They equal Linux errnos, but the protocol defines only these.
const NBD_EPERM: u32 = 1;
const NBD_EIO: u32 = 5;
const NBD_ENOMEM: u32 = 12;
const NBD_EINVAL: u32 = 22;
const NBD_ENOSPC: u32 = 28;
const NBD_EOVERFLOW: u32 = 75;
const NBD_ENOTSUP: u32 = 95;
const NBD_ESHUTDOWN: u32 = 108;

/// Largest READ/WRITE (advertised as the maximum block size); a client sending more is dropped.
const MAX_REQUEST: u32 = 32 << 20;
/// Requests a connection may have between reading them and sending their replies; the reader waits beyond.
const MAX_IN_FLIGHT: usize = 128;
/// Request-buffer bytes a connection may have in flight, so 128 maximal requests cannot pin 4 GiB.
const MAX_IN_FLIGHT_BYTES: u64 = 256 << 20;
const _: () = assert!(MAX_REQUEST as u64 <= MAX_IN_FLIGHT_BYTES, "a lone maximal request must fit the byte budget");
/// Request-buffer bytes every connection of the process together may have in flight: a few clients that send large
/// reads and never take the replies cannot exhaust memory; readers wait for room (back-pressure) beyond it.
const MAX_PROCESS_IN_FLIGHT_BYTES: u64 = 1 << 30;
static PROCESS_BYTES: ByteBudget = ByteBudget::new(MAX_PROCESS_IN_FLIGHT_BYTES);
/// Connections one export serves at once; more are closed as they come.
const MAX_CONNECTIONS: usize = 256;
/// Longest option data accepted in the handshake (a name is at most 4096 bytes).
const MAX_OPTION_LEN: u32 = 16 << 10;
/// Longest export name the protocol allows.
const MAX_NAME_LEN: usize = 4096;
/// How long `stop` lets connections send the replies of their in-flight requests before cutting them off.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) so the accept thread does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Socket buffering of each connection's reader and writer.
const READ_BUF: usize = 64 << 10;
const WRITE_BUF: usize = 64 << 10;

/// What the NBD server exports: an asynchronous block device.
pub trait Export: Send + Sync + 'static {
    /// Bytes per block, a power of two: NBD offsets and lengths must be multiples of it.
    fn block_size(&self) -> u32;
    /// Size in blocks; read again for every new connection.
    fn num_blocks(&self) -> u64;
    /// Whether the export refuses changes. The server then answers writes, trims and zeroes with EPERM and
    /// acknowledges flushes itself: only reads reach the export.
    fn read_only(&self) -> bool;
    /// Buffer alignment zero-copy I/O needs (the server allocates request buffers with it): a power of two.
    fn buf_align(&self) -> usize;
    /// Starts `io`; `done` runs exactly once, on any thread (often a busy-polling reactor: it must only hand the
    /// result over, never block). `Err` carries a positive errno. Dropping `done` uncalled counts as an EIO
    /// completion, after which the buffers are freed: until then the export may use the buffer in `io`.
    fn submit(&self, io: ExportIo, done: Box<dyn FnOnce(Result<(), i32>) + Send>);
}

/// One I/O the server asks of an [`Export`]. Ranges are in blocks, non-empty and inside the export; buffers hold
/// `blocks * block_size` bytes aligned to `buf_align`.
#[derive(Debug)]
pub enum ExportIo {
    Read {
        lba: u64,
        blocks: u32,
        buf: IoBuf,
    },
    Write {
        lba: u64,
        blocks: u32,
        buf: IoBuf,
    },
    /// Make every write completed before it durable.
    Flush,
    /// The client no longer needs the range's contents.
    Trim {
        lba: u64,
        blocks: u32,
    },
    WriteZeroes {
        lba: u64,
        blocks: u32,
    },
}

/// Where the NBD server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Unix(PathBuf),
    /// A loopback address only: NBD has no authentication, so the export must not be reachable from the network.
    Tcp(SocketAddr),
}

impl Listen {
    /// `127.0.0.1:10809` or `[::1]:10809` (loopback addresses only) is TCP; anything else is a unix socket path,
    /// except strings that look like a host and port or a bare IP address, which are refused rather than taken for
    /// a file name (write `./name` for such a socket file).
    pub fn parse(s: &str) -> Result<Listen, String> {
        if s.is_empty() {
            return Err("empty NBD listen address".to_string());
        }
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return if addr.ip().is_loopback() {
                Ok(Listen::Tcp(addr))
            } else {
                Err(format!("NBD over TCP is only served on loopback addresses (127.0.0.1, [::1]), not {addr}"))
            };
        }
        // An empty port too: `127.0.0.1:` is a TCP address missing its port, not a file name.
        let host_port =
            s.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()));
        if !s.contains('/') && (host_port || s.starts_with('[') || s.parse::<IpAddr>().is_ok()) {
            return Err(format!(
                "`{s}` is neither a loopback IP address with a port (e.g. 127.0.0.1:10809) nor a unix socket path \
                 (a socket file with such a name needs a directory, e.g. ./{s})"
            ));
        }
        Ok(Listen::Unix(PathBuf::from(s)))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "{}", path.display()),
            Listen::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// A running NBD server for one export.
pub struct NbdServer {
    listen: Listen,
    shared: Arc<Shared>,
    listener: Arc<Listener>,
    accept: Option<JoinHandle<()>>,
    /// (device, inode) of the socket file this server bound, so stopping removes its own file and no other.
    socket_file: Option<(u64, u64)>,
}

impl NbdServer {
    /// Binds `listen` (replacing a stale unix socket file, refusing one a server still answers on, and any file that
    /// is not a socket) and starts accepting connections for the export `name` (clients may also ask for "").
    pub fn start(listen: Listen, name: String, export: Arc<dyn Export>) -> io::Result<NbdServer> {
        Geometry::of(&*export).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if name.len() > MAX_NAME_LEN || name.contains('\0') {
            let msg = "NBD export names are at most 4096 bytes, without NUL";
            return Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        }
        let (listener, listen, socket_file) = match listen {
            Listen::Unix(path) => {
                remove_stale_socket(&path)?;
                let listener = UnixListener::bind(&path)?;
                let meta = fs::symlink_metadata(&path)?;
                (Listener::Unix(listener), Listen::Unix(path), Some((meta.dev(), meta.ino())))
            }
            Listen::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                // Report the bound port when asked for port 0.
                let addr = listener.local_addr()?;
                (Listener::Tcp(listener), Listen::Tcp(addr), None)
            }
        };
        let shared = Arc::new(Shared {
            name,
            export,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            live: Mutex::new(0),
            live_changed: Condvar::new(),
        });
        let mut server = NbdServer { listen, shared, listener: Arc::new(listener), accept: None, socket_file };
        let (listener, shared) = (Arc::clone(&server.listener), Arc::clone(&server.shared));
        // On failure `server` is dropped, which removes the socket file again.
        let accept =
            thread::Builder::new().name("nbd-accept".to_string()).spawn(move || accept_loop(&listener, &shared))?;
        server.accept = Some(accept);
        info!("NBD: serving export '{}' on {}", server.shared.name, server.listen);
        Ok(server)
    }

    /// The address served; for TCP the bound port (which differs from the requested one when that was 0).
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Connections open now (handshaking or transmitting).
    pub fn connections(&self) -> usize {
        *lock(&self.shared.live)
    }

    /// Stops accepting; stops reading requests on every connection, lets their in-flight requests complete and their
    /// replies go out (cutting off, after a grace period, clients that do not read them), closes them, joins every
    /// thread and removes the unix socket file. In-flight I/O is always waited for, so the export must keep
    /// completing I/O until this returns. Dropping the server does the same.
    pub fn stop(self) {
        // `Drop` does the work, so a server dropped without `stop` shuts down just as cleanly.
    }

    /// Stops `servers` at once: their grace periods for clients that do not
    /// read overlap, so the whole takes about one.
    pub fn stop_all(servers: impl IntoIterator<Item = NbdServer>) {
        thread::scope(|s| {
            for server in servers {
                s.spawn(move || server.stop());
            }
        });
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            self.listener.wake_accept();
            if accept.join().is_err() {
                error!("NBD: the accept thread panicked");
            }
        }
        // The accept thread is gone, so no connection is added after this.
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for conn in &conns {
            // The reader sees end-of-stream and winds its connection down; the writer can still send replies.
            let _ = conn.stream.shutdown(Shutdown::Read);
        }
        let live = lock(&self.shared.live);
        let (live, wait) = self
            .shared
            .live_changed
            .wait_timeout_while(live, STOP_GRACE, |live| *live > 0)
            .unwrap_or_else(PoisonError::into_inner);
        drop(live);
        if wait.timed_out() {
            warn!("NBD: clients on {} did not take their last replies; cutting them off", self.listen);
            for conn in &conns {
                let _ = conn.stream.shutdown(Shutdown::Both);
            }
        }
        for conn in conns {
            // Returns once the connection's in-flight I/O has completed.
            if conn.thread.join().is_err() {
                error!("NBD: a connection thread panicked");
            }
        }
        if let (Listen::Unix(path), Some(id)) = (&self.listen, self.socket_file.take()) {
            // Leave alone a file that another process has put at the path since.
            let ours = fs::symlink_metadata(path).is_ok_and(|meta| (meta.dev(), meta.ino()) == id);
            if ours {
                if let Err(e) = fs::remove_file(path) {
                    warn!("NBD: cannot remove socket file {}: {e}", path.display());
                }
            }
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Makes `path` free for binding: removes a socket file nobody answers on; refuses a live socket or another file.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        let msg = format!("{} exists and is not a socket", path.display());
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, msg));
    }
    if UnixStream::connect(path).is_ok() {
        let msg = format!("a server is already listening on {}", path.display());
        return Err(io::Error::new(io::ErrorKind::AddrInUse, msg));
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// State shared by the server handle, the accept thread and the connection threads.
struct Shared {
    name: String,
    export: Arc<dyn Export>,
    stopping: AtomicBool,
    /// Connection threads not yet joined.
    conns: Mutex<Vec<ConnHandle>>,
    /// Connection threads still running.
    live: Mutex<usize>,
    live_changed: Condvar,
}

struct ConnHandle {
    /// A second handle on the socket, to shut it down from `stop`.
    stream: Stream,
    thread: JoinHandle<()>,
}

/// Counts a connection thread as live until it ends, even by a panic.
struct LiveGuard<'a>(&'a Shared);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.live) -= 1;
        self.0.live_changed.notify_all();
    }
}

fn accept_loop(listener: &Listener, shared: &Arc<Shared>) {
    let mut next_id = 0u64;
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match accepted {
            Ok(stream) => {
                next_id += 1;
                spawn_connection(shared, next_id, stream);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("NBD: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, id: u64, stream: Stream) {
    let handle = match stream.try_clone() {
        Ok(handle) => handle,
        Err(e) => {
            warn!("NBD connection {id}: refused: {e}");
            return;
        }
    };
    let mut conns = lock(&shared.conns);
    // Join the connections that have ended, so their threads and sockets do not pile up.
    let mut i = 0;
    while i < conns.len() {
        if conns[i].thread.is_finished() {
            if conns.swap_remove(i).thread.join().is_err() {
                error!("NBD: a connection thread panicked");
            }
        } else {
            i += 1;
        }
    }
    if conns.len() >= MAX_CONNECTIONS {
        warn!("NBD connection {id}: refused: {} serves {MAX_CONNECTIONS} connections already", shared.name);
        let _ = handle.shutdown(Shutdown::Both);
        return;
    }
    *lock(&shared.live) += 1;
    let thread_shared = Arc::clone(shared);
    let spawned = thread::Builder::new().name(format!("nbd-conn-{id}")).spawn(move || {
        let _live = LiveGuard(&thread_shared);
        serve_connection(id, stream, &thread_shared);
    });
    match spawned {
        Ok(thread) => conns.push(ConnHandle { stream: handle, thread }),
        Err(e) => {
            // The closure was dropped unrun, so no guard will undo the count: undo it here.
            *lock(&shared.live) -= 1;
            shared.live_changed.notify_all();
            warn!("NBD connection {id}: refused: cannot start its thread: {e}");
        }
    }
}

/// Runs one connection to its end: handshake, then transmission with a writer thread beside this one.
fn serve_connection(id: u64, stream: Stream, shared: &Shared) {
    let mut input = BufReader::with_capacity(READ_BUF, stream);
    let geo = match handshake(&mut input, shared) {
        Ok(Some(geo)) => geo,
        Ok(None) => {
            let _ = input.get_ref().shutdown(Shutdown::Both);
            debug!("NBD connection {id}: ended during the handshake");
            return;
        }
        Err(e) => {
            let _ = input.get_ref().shutdown(Shutdown::Both);
            debug!("NBD connection {id}: handshake failed: {e}");
            return;
        }
    };
    info!(
        "NBD connection {id}: transmission: {} bytes in {}-byte blocks{}",
        geo.size,
        geo.block_size,
        if geo.read_only { ", read-only" } else { "" }
    );
    let output = match input.get_ref().try_clone() {
        Ok(output) => output,
        Err(e) => {
            let _ = input.get_ref().shutdown(Shutdown::Both);
            warn!("NBD connection {id}: closed: {e}");
            return;
        }
    };
    let (tx, rx) = crossbeam_channel::unbounded();
    let inflight = InFlight::default();
    let export: &dyn Export = &*shared.export;
    let end = thread::scope(|scope| {
        let (writer_tx, inflight) = (tx.clone(), &inflight);
        let writer = thread::Builder::new()
            .name(format!("nbd-reply-{id}"))
            .spawn_scoped(scope, move || reply_loop(&rx, output, export, inflight, &writer_tx));
        if let Err(e) = writer {
            return End::Io(e);
        }
        let stopping = &shared.stopping;
        let end = Session { input: &mut input, export, geo, tx: &tx, inflight, stopping }.serve();
        if matches!(end, End::Violation(_) | End::Io(_)) {
            // Drop the client now; what is in flight still completes before the buffers go.
            let _ = input.get_ref().shutdown(Shutdown::Both);
        }
        inflight.wait_idle();
        // The writer has sent every reply (or given up on the socket); no completion can follow this.
        let _ = tx.send(Msg::Stop);
        end
    });
    let _ = input.get_ref().shutdown(Shutdown::Both);
    match end {
        End::Disconnect | End::Eof | End::Stopping => info!("NBD connection {id}: closed: {end}"),
        End::Violation(_) | End::Io(_) => warn!("NBD connection {id}: dropped: {end}"),
    }
}

/// What the export looks like to one connection.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    block_size: u32,
    size: u64,
    read_only: bool,
    align: usize,
}

impl Geometry {
    fn of(export: &dyn Export) -> Result<Geometry, String> {
        let block_size = export.block_size();
        if !block_size.is_power_of_two() || block_size > MAX_REQUEST {
            return Err(format!("export block size {block_size} is not a power of two of at most 32 MiB"));
        }
        let size = export
            .num_blocks()
            .checked_mul(u64::from(block_size))
            .ok_or_else(|| "export size overflows 64 bits".to_string())?;
        let align = export.buf_align().max(1);
        if !align.is_power_of_two() {
            return Err(format!("export buffer alignment {align} is not a power of two"));
        }
        Ok(Geometry { block_size, size, read_only: export.read_only(), align })
    }

    fn transmission_flags(&self) -> u16 {
        let flags = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_CAN_MULTI_CONN;
        if self.read_only {
            flags | TFLAG_READ_ONLY
        } else {
            flags
        }
    }
}

/// The handshake: returns the geometry to serve, or None when it ends without transmission (the client aborted, or
/// asked NBD_OPT_EXPORT_NAME for an export this server lacks, which can only be answered by hanging up, or the
/// server is stopping).
fn handshake(conn: &mut BufReader<Stream>, shared: &Shared) -> io::Result<Option<Geometry>> {
    let (name, export) = (shared.name.as_str(), &*shared.export);
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBD_MAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    conn.get_mut().write_all(&hello)?;
    let client_flags = u32::from_be_bytes(read_be(conn)?);
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        warn!("NBD: client sent unknown handshake flags {client_flags:#x}; dropping it");
        return Ok(None);
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let magic = u64::from_be_bytes(read_be(conn)?);
        let opt = u32::from_be_bytes(read_be(conn)?);
        let len = u32::from_be_bytes(read_be(conn)?);
        if magic != IHAVEOPT {
            warn!("NBD: bad option magic {magic:#x}; dropping the client");
            return Ok(None);
        }
        if len > MAX_OPTION_LEN {
            discard(conn, u64::from(len))?;
            if opt == OPT_EXPORT_NAME {
                return Ok(None);
            }
            option_reply(conn.get_mut(), opt, REP_ERR_TOO_BIG, b"option data too long")?;
            continue;
        }
        let mut data = vec![0; len as usize];
        conn.read_exact(&mut data)?;
        let out = conn.get_mut();
        match opt {
            OPT_EXPORT_NAME => {
                if !serves(name, &data) {
                    warn!("NBD: client asked for unknown export '{}'", String::from_utf8_lossy(&data));
                    return Ok(None);
                }
                let geo = match Geometry::of(export) {
                    Ok(geo) => geo,
                    Err(e) => {
                        error!("NBD: export '{name}' unavailable: {e}");
                        return Ok(None);
                    }
                };
                let mut msg = Vec::with_capacity(10 + 124);
                msg.extend_from_slice(&geo.size.to_be_bytes());
                msg.extend_from_slice(&geo.transmission_flags().to_be_bytes());
                if !no_zeroes {
                    msg.resize(msg.len() + 124, 0);
                }
                out.write_all(&msg)?;
                return Ok(Some(geo));
            }
            OPT_ABORT => {
                // The client may already have hung up: whether the acknowledgement arrives does not matter.
                let _ = option_reply(out, opt, REP_ACK, &[]);
                return Ok(None);
            }
            OPT_LIST if !data.is_empty() => option_reply(out, opt, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?,
            OPT_LIST => {
                let mut server = Vec::with_capacity(4 + name.len());
                // The length fits: names are at most 4096 bytes (checked in `start`).
                server.extend_from_slice(&(name.len() as u32).to_be_bytes());
                server.extend_from_slice(name.as_bytes());
                option_reply(out, opt, REP_SERVER, &server)?;
                option_reply(out, opt, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((wanted, infos)) = parse_info_request(&data) else {
                    option_reply(out, opt, REP_ERR_INVALID, b"malformed NBD_OPT_INFO/NBD_OPT_GO data")?;
                    continue;
                };
                if !serves(name, wanted) {
                    let msg =
                        format!("no export '{}' here (this server exports '{name}')", String::from_utf8_lossy(wanted));
                    option_reply(out, opt, REP_ERR_UNKNOWN, msg.as_bytes())?;
                    continue;
                }
                let geo = match Geometry::of(export) {
                    Ok(geo) => geo,
                    Err(e) => {
                        error!("NBD: export '{name}' unavailable: {e}");
                        option_reply(out, opt, REP_ERR_UNKNOWN, format!("export unavailable: {e}").as_bytes())?;
                        continue;
                    }
                };
                let mut export_info = Vec::with_capacity(10);
                export_info.extend_from_slice(&geo.size.to_be_bytes());
                export_info.extend_from_slice(&geo.transmission_flags().to_be_bytes());
                info_reply(out, opt, INFO_EXPORT, &export_info)?;
                // Sent even when not asked for (the protocol allows it), so every client can learn the constraints.
                let mut sizes = Vec::with_capacity(12);
                sizes.extend_from_slice(&geo.block_size.to_be_bytes());
                sizes.extend_from_slice(&geo.block_size.max(4096).to_be_bytes());
                sizes.extend_from_slice(&MAX_REQUEST.to_be_bytes());
                info_reply(out, opt, INFO_BLOCK_SIZE, &sizes)?;
                if infos.chunks_exact(2).any(|info| info == INFO_NAME.to_be_bytes()) {
                    info_reply(out, opt, INFO_NAME, name.as_bytes())?;
                }
                option_reply(out, opt, REP_ACK, &[])?;
                if opt == OPT_GO {
                    return Ok(Some(geo));
                }
            }
            // Including NBD_OPT_STRUCTURED_REPLY: this server sends simple replies only.
            _ => option_reply(out, opt, REP_ERR_UNSUP, &[])?,
        }
    }
}

/// Whether a client asking for export `wanted` gets this server's export: its name, or "" (the default export).
fn serves(name: &str, wanted: &[u8]) -> bool {
    wanted.is_empty() || wanted == name.as_bytes()
}

/// Splits NBD_OPT_INFO/NBD_OPT_GO data into the export name and the requested info types (2 bytes each), or None
/// when the lengths do not add up.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name_len, rest) = data.split_first_chunk::<4>()?;
    let name_len = usize::try_from(u32::from_be_bytes(*name_len)).ok()?;
    if rest.len() < name_len {
        return None;
    }
    let (name, rest) = rest.split_at(name_len);
    let (count, infos) = rest.split_first_chunk::<2>()?;
    (infos.len() == 2 * usize::from(u16::from_be_bytes(*count))).then_some((name, infos))
}

fn option_reply(out: &mut impl Write, opt: u32, reply: u32, data: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(20 + data.len());
    msg.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    msg.extend_from_slice(&opt.to_be_bytes());
    msg.extend_from_slice(&reply.to_be_bytes());
    // Replies are built here and stay far below 4 GiB.
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    out.write_all(&msg)
}

fn info_reply(out: &mut impl Write, opt: u32, info: u16, body: &[u8]) -> io::Result<()> {
    let mut data = Vec::with_capacity(2 + body.len());
    data.extend_from_slice(&info.to_be_bytes());
    data.extend_from_slice(body);
    option_reply(out, opt, REP_INFO, &data)
}

fn read_be<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0; N];
    r.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Reads and drops `len` bytes the server refuses, to stay in step with the client's stream.
fn discard(r: &mut impl Read, len: u64) -> io::Result<()> {
    if io::copy(&mut r.by_ref().take(len), &mut io::sink())? < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Why a connection's transmission phase ended.
#[derive(Debug)]
enum End {
    /// NBD_CMD_DISC.
    Disconnect,
    /// The client closed its side between requests.
    Eof,
    /// The server is stopping.
    Stopping,
    /// The client broke the protocol in a way that loses track of the stream.
    Violation(String),
    Io(io::Error),
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Disconnect => write!(f, "client disconnected"),
            End::Eof => write!(f, "client closed the connection"),
            End::Stopping => write!(f, "server stopping"),
            End::Violation(why) => write!(f, "protocol violation: {why}"),
            End::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A request header.
struct Request {
    flags: u16,
    cmd: u16,
    handle: u64,
    offset: u64,
    len: u32,
}

/// The reader side of a connection in transmission.
struct Session<'a> {
    input: &'a mut BufReader<Stream>,
    export: &'a dyn Export,
    geo: Geometry,
    tx: &'a Sender<Msg>,
    inflight: &'a InFlight,
    /// Checked between requests: after `stop` has shut the socket's receiving side down, a TCP socket still takes in
    /// what the client keeps sending.
    stopping: &'a AtomicBool,
}

impl Session<'_> {
    fn serve(&mut self) -> End {
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return End::Stopping;
            }
            let req = match self.read_request() {
                Ok(Some(req)) => req,
                Ok(None) => return End::Eof,
                Err(End::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return End::Violation("connection closed inside a request header".to_string())
                }
                Err(end) => return end,
            };
            if req.cmd == CMD_DISC {
                return End::Disconnect;
            }
            if matches!(req.cmd, CMD_READ | CMD_WRITE) && req.len > MAX_REQUEST {
                return End::Violation(format!("{}-byte request exceeds the 32 MiB maximum", req.len));
            }
            // Charge what the request may allocate before allocating it.
            let cost = if matches!(req.cmd, CMD_READ | CMD_WRITE) { req.len } else { 0 };
            self.inflight.acquire(cost);
            if let Err(e) = self.handle(&req, cost) {
                // `handle` fails only before submitting or answering, so the request holds nothing else.
                self.inflight.release(cost);
                return End::Io(e);
            }
        }
    }

    /// The next request header, or None at a clean end of stream between requests.
    fn read_request(&mut self) -> Result<Option<Request>, End> {
        loop {
            match self.input.fill_buf() {
                Ok([]) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
        let input = &mut *self.input;
        let magic = u32::from_be_bytes(read_be(input).map_err(End::Io)?);
        if magic != REQUEST_MAGIC {
            return Err(End::Violation(format!("bad request magic {magic:#010x}")));
        }
        let flags = u16::from_be_bytes(read_be(input).map_err(End::Io)?);
        let cmd = u16::from_be_bytes(read_be(input).map_err(End::Io)?);
        let handle = u64::from_be_bytes(read_be(input).map_err(End::Io)?);
        let offset = u64::from_be_bytes(read_be(input).map_err(End::Io)?);
        let len = u32::from_be_bytes(read_be(input).map_err(End::Io)?);
        Ok(Some(Request { flags, cmd, handle, offset, len }))
    }

    /// Submits or answers one request (`cost` already acquired). Errors only while reading a write's payload, before
    /// anything was submitted or answered for it.
    fn handle(&mut self, req: &Request, cost: u32) -> io::Result<()> {
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let reply = Reply { handle: req.handle, cost, buf: None, send_data: false, flush_first: false };
        match req.cmd {
            CMD_READ => match self.allowed(req.flags, CMD_FLAG_FUA).and_then(|()| self.blocks(req, NBD_EINVAL)) {
                Ok((lba, blocks)) => {
                    let mut buf = DmaBuf::new(req.len as usize, self.geo.align);
                    let io = ExportIo::Read { lba, blocks, buf: buf.io_buf() };
                    self.submit(io, Reply { buf: Some(buf), send_data: true, ..reply });
                }
                Err(e) => self.answer(reply, Err(e)),
            },
            CMD_WRITE => match self.modifiable_blocks(req, CMD_FLAG_FUA, NBD_ENOSPC) {
                Ok((lba, blocks)) => {
                    let mut buf = DmaBuf::new(req.len as usize, self.geo.align);
                    self.input.read_exact(&mut buf)?;
                    let io = ExportIo::Write { lba, blocks, buf: buf.io_buf() };
                    self.submit(io, Reply { buf: Some(buf), flush_first: fua, ..reply });
                }
                Err(e) => {
                    discard(self.input, u64::from(req.len))?;
                    self.answer(reply, Err(e));
                }
            },
            CMD_FLUSH => match self.allowed(req.flags, CMD_FLAG_FUA) {
                // Nothing was written through a read-only export, so there is nothing to flush.
                Ok(()) if self.geo.read_only => self.answer(reply, Ok(())),
                Ok(()) => self.submit(ExportIo::Flush, reply),
                Err(e) => self.answer(reply, Err(e)),
            },
            CMD_TRIM => match self.modifiable_blocks(req, CMD_FLAG_FUA, NBD_EINVAL) {
                Ok((lba, blocks)) => self.submit(ExportIo::Trim { lba, blocks }, Reply { flush_first: fua, ..reply }),
                Err(e) => self.answer(reply, Err(e)),
            },
            CMD_WRITE_ZEROES => {
                // NBD_CMD_FLAG_NO_HOLE needs nothing: how the export stores zeroes is its business.
                match self.modifiable_blocks(req, CMD_FLAG_FUA | CMD_FLAG_NO_HOLE, NBD_ENOSPC) {
                    Ok((lba, blocks)) => {
                        self.submit(ExportIo::WriteZeroes { lba, blocks }, Reply { flush_first: fua, ..reply })
                    }
                    Err(e) => self.answer(reply, Err(e)),
                }
            }
            _ => self.answer(reply, Err(NBD_EINVAL)),
        }
        Ok(())
    }

    /// EINVAL for a command flag the command does not take (as the protocol asks).
    fn allowed(&self, flags: u16, allowed: u16) -> Result<(), u32> {
        if flags & !allowed == 0 {
            Ok(())
        } else {
            Err(NBD_EINVAL)
        }
    }

    fn writable(&self) -> Result<(), u32> {
        if self.geo.read_only {
            Err(NBD_EPERM)
        } else {
            Ok(())
        }
    }

    /// The range of a request that changes blocks (write, trim, write zeroes): its flags within `allowed`, the export
    /// writable, the range checked as `blocks` does.
    fn modifiable_blocks(&self, req: &Request, allowed: u16, beyond_end: u32) -> Result<(u64, u32), u32> {
        self.allowed(req.flags, allowed).and_then(|()| self.writable()).and_then(|()| self.blocks(req, beyond_end))
    }

    /// The request's range in blocks: EINVAL when empty or not block-aligned, `beyond_end` when past the end (the
    /// protocol asks ENOSPC for writes there).
    fn blocks(&self, req: &Request, beyond_end: u32) -> Result<(u64, u32), u32> {
        let block_size = self.geo.block_size;
        if req.len == 0 || req.len % block_size != 0 || req.offset % u64::from(block_size) != 0 {
            return Err(NBD_EINVAL);
        }
        match req.offset.checked_add(u64::from(req.len)) {
            Some(end) if end <= self.geo.size => Ok((req.offset / u64::from(block_size), req.len / block_size)),
            _ => Err(beyond_end),
        }
    }

    fn submit(&self, io: ExportIo, reply: Reply) {
        submit(self.export, io, Pending::new(self.tx.clone(), reply));
    }

    /// Replies without involving the export (through the writer, which owns the socket's sending side).
    fn answer(&self, reply: Reply, result: Result<(), u32>) {
        let _ = self.tx.send(Msg::Done(reply, result));
    }
}

/// A request on its way to its reply.
struct Reply {
    handle: u64,
    /// Buffer bytes charged to the connection's in-flight budget.
    cost: u32,
    /// The request buffer: kept alive until the export has completed, and the data of a read's reply.
    buf: Option<DmaBuf>,
    send_data: bool,
    /// FUA: once the I/O succeeded, flush before replying.
    flush_first: bool,
}

/// What the writer receives. `Done` carries the NBD error value on failure.
enum Msg {
    Done(Reply, Result<(), u32>),
    /// Every request has been answered and the reader is finished: the writer ends.
    Stop,
}

/// The state a completion callback carries. Sends the completion to the writer when called, and an EIO completion
/// when dropped uncalled, so a connection never waits for a reply that cannot come.
struct Pending {
    tx: Sender<Msg>,
    reply: Option<Reply>,
}

impl Pending {
    fn new(tx: Sender<Msg>, reply: Reply) -> Pending {
        Pending { tx, reply: Some(reply) }
    }

    fn finish(&mut self, result: Result<(), u32>) {
        if let Some(reply) = self.reply.take() {
            // If the writer is gone the message, and with it the buffer, is dropped here: the export is done with it.
            let _ = self.tx.send(Msg::Done(reply, result));
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(Err(NBD_EIO));
    }
}

/// Submits `io`, whose buffer `pending`'s reply holds: it lives until the completion (or the completion's drop)
/// hands the reply on.
fn submit(export: &dyn Export, io: ExportIo, mut pending: Pending) {
    export.submit(io, Box::new(move |result| pending.finish(result.map_err(nbd_error))));
}

/// Maps an export's errno to the protocol's error values.
fn nbd_error(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS | libc::EACCES => NBD_EPERM,
        libc::ENOMEM => NBD_ENOMEM,
        libc::EINVAL => NBD_EINVAL,
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG => NBD_ENOSPC,
        libc::EOVERFLOW => NBD_EOVERFLOW,
        libc::ENOTSUP => NBD_ENOTSUP,
        libc::ESHUTDOWN => NBD_ESHUTDOWN,
        _ => NBD_EIO,
    }
}

/// The writer: sends the replies of completed requests (performing the flush of FUA requests first) and returns
/// their in-flight budget. After a send error it keeps draining completions without sending.
fn reply_loop(rx: &Receiver<Msg>, out: Stream, export: &dyn Export, inflight: &InFlight, tx: &Sender<Msg>) {
    let mut out = Some(BufWriter::with_capacity(WRITE_BUF, out));
    while let Ok(Msg::Done(mut reply, result)) = rx.recv() {
        if reply.flush_first && result.is_ok() && out.is_some() {
            reply.flush_first = false;
            // The data is written; its buffer is no longer needed.
            reply.buf = None;
            submit(export, ExportIo::Flush, Pending::new(tx.clone(), reply));
            continue;
        }
        if let Some(w) = &mut out {
            // Batch the replies that are ready into few writes.
            let sent = send_reply(w, &reply, result).and_then(|()| if rx.is_empty() { w.flush() } else { Ok(()) });
            if let Err(e) = sent {
                debug!("NBD: cannot send a reply: {e}");
                // Make the reader notice too.
                let _ = w.get_ref().shutdown(Shutdown::Both);
                out = None;
            }
        }
        let cost = reply.cost;
        drop(reply);
        inflight.release(cost);
    }
    if let Some(w) = &mut out {
        let _ = w.flush();
    }
}

fn send_reply(w: &mut impl Write, reply: &Reply, result: Result<(), u32>) -> io::Result<()> {
    let error = result.err().unwrap_or(0);
    w.write_all(&SIMPLE_REPLY_MAGIC.to_be_bytes())?;
    w.write_all(&error.to_be_bytes())?;
    w.write_all(&reply.handle.to_be_bytes())?;
    // A failed read sends no data (simple replies).
    match &reply.buf {
        Some(buf) if error == 0 && reply.send_data => w.write_all(buf),
        _ => Ok(()),
    }
}

/// Bounds what a connection has between reading requests and sending their replies.
#[derive(Default)]
struct InFlight {
    state: Mutex<InFlightState>,
    changed: Condvar,
}

#[derive(Default)]
struct InFlightState {
    requests: usize,
    bytes: u64,
}

impl InFlight {
    /// Takes room for a request of `cost` bytes: the connection's, then the process's.
    fn acquire(&self, cost: u32) {
        let mut state = lock(&self.state);
        while state.requests >= MAX_IN_FLIGHT || state.bytes + u64::from(cost) > MAX_IN_FLIGHT_BYTES {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        state.requests += 1;
        state.bytes += u64::from(cost);
        drop(state);
        PROCESS_BYTES.acquire(u64::from(cost));
    }

    fn release(&self, cost: u32) {
        PROCESS_BYTES.release(u64::from(cost));
        let mut state = lock(&self.state);
        state.requests -= 1;
        state.bytes -= u64::from(cost);
        self.changed.notify_all();
    }

    fn wait_idle(&self) {
        let mut state = lock(&self.state);
        while state.requests > 0 {
            state = self.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Bytes shared by many takers, who wait for room.
struct ByteBudget {
    used: Mutex<u64>,
    changed: Condvar,
    limit: u64,
}

impl ByteBudget {
    const fn new(limit: u64) -> ByteBudget {
        ByteBudget { used: Mutex::new(0), changed: Condvar::new(), limit }
    }

    fn acquire(&self, n: u64) {
        let mut used = lock(&self.used);
        while *used + n > self.limit {
            used = self.changed.wait(used).unwrap_or_else(PoisonError::into_inner);
        }
        *used += n;
    }

    fn release(&self, n: u64) {
        *lock(&self.used) -= n;
        self.changed.notify_all();
    }
}

/// Locks, ignoring poisoning: the guarded counters stay consistent whatever panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(listener) => Ok(Stream::Unix(listener.accept()?.0)),
            Listener::Tcp(listener) => {
                let stream = listener.accept()?.0;
                // Replies are batched already; Nagle would only delay them.
                if let Err(e) = stream.set_nodelay(true) {
                    debug!("NBD: cannot set TCP_NODELAY: {e}");
                }
                Ok(Stream::Tcp(stream))
            }
        }
    }

    /// Makes a blocked (or the next) `accept` return at once, so the accept thread can see `stopping`.
    fn wake_accept(&self) {
        // On Linux, shutdown(2) makes accept(2) on a listening socket fail with EINVAL, waking a thread blocked in it.
        let woken = match self {
            Listener::Unix(listener) => rustix::net::shutdown(listener, rustix::net::Shutdown::Both),
            Listener::Tcp(listener) => rustix::net::shutdown(listener, rustix::net::Shutdown::Both),
        };
        if let Err(e) = woken {
            warn!("NBD: shutting the listening socket down failed: {}", io::Error::from(e));
        }
    }
}

/// An accepted connection.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        match self {
            Stream::Unix(s) => s.try_clone().map(Stream::Unix),
            Stream::Tcp(s) => s.try_clone().map(Stream::Tcp),
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Tcp(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::process::Command;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    const ALIGN: usize = 4096;

    type Job = (ExportIo, Box<dyn FnOnce(Result<(), i32>) + Send>);

    /// RAM behind a mutex. Two worker threads complete its I/O, as a reactor would: on another thread than the
    /// submitter's, and not necessarily in order.
    struct MemExport {
        block_size: u32,
        read_only: bool,
        data: Arc<Mutex<Vec<u8>>>,
        jobs: Sender<Job>,
        flushes: Arc<AtomicUsize>,
        submitted: AtomicUsize,
    }

    impl MemExport {
        fn new(block_size: u32, num_blocks: usize) -> Arc<MemExport> {
            MemExport::build(block_size, num_blocks, false, Duration::ZERO)
        }

        /// `delay`: how long each I/O takes.
        fn build(block_size: u32, num_blocks: usize, read_only: bool, delay: Duration) -> Arc<MemExport> {
            let data = Arc::new(Mutex::new(vec![0; block_size as usize * num_blocks]));
            let flushes = Arc::new(AtomicUsize::new(0));
            let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
            for _ in 0..2 {
                let (queue, data, flushes) = (queue.clone(), Arc::clone(&data), Arc::clone(&flushes));
                // Ends when the export (the only sender) is dropped.
                thread::spawn(move || {
                    for (io, done) in queue {
                        thread::sleep(delay);
                        done(apply(&data, block_size, &flushes, io));
                    }
                });
            }
            let submitted = AtomicUsize::new(0);
            Arc::new(MemExport { block_size, read_only, data, jobs, flushes, submitted })
        }

        fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
            lock(&self.data)[offset..offset + len].to_vec()
        }

        fn fill(&self, offset: usize, bytes: &[u8]) {
            lock(&self.data)[offset..offset + bytes.len()].copy_from_slice(bytes);
        }

        fn flushes(&self) -> usize {
            self.flushes.load(Ordering::SeqCst)
        }
    }

    /// Performs one I/O on the RAM, refusing anything the server should never send.
    fn apply(data: &Mutex<Vec<u8>>, block_size: u32, flushes: &AtomicUsize, io: ExportIo) -> Result<(), i32> {
        let mut data = lock(data);
        let bytes = |lba: u64, blocks: u32| {
            let start = lba as usize * block_size as usize;
            start..start + blocks as usize * block_size as usize
        };
        match io {
            ExportIo::Read { lba, blocks, buf } => {
                let src = data.get(bytes(lba, blocks)).ok_or(libc::EIO)?;
                if blocks == 0 || buf.as_ptr() as usize % ALIGN != 0 {
                    return Err(libc::EINVAL);
                }
                buf.blocks(0, blocks, block_size as usize).copy_from(src);
            }
            ExportIo::Write { lba, blocks, buf } => {
                let dst = data.get_mut(bytes(lba, blocks)).ok_or(libc::EIO)?;
                if blocks == 0 || buf.as_ptr() as usize % ALIGN != 0 {
                    return Err(libc::EINVAL);
                }
                dst.copy_from_slice(buf.blocks(0, blocks, block_size as usize).as_slice());
            }
            ExportIo::Flush => {
                flushes.fetch_add(1, Ordering::SeqCst);
            }
            ExportIo::Trim { lba, blocks } | ExportIo::WriteZeroes { lba, blocks } => {
                data.get_mut(bytes(lba, blocks)).ok_or(libc::EIO)?.fill(0)
            }
        }
        Ok(())
    }

    impl Export for MemExport {
        fn block_size(&self) -> u32 {
            self.block_size
        }
        fn num_blocks(&self) -> u64 {
            (lock(&self.data).len() / self.block_size as usize) as u64
        }
        fn read_only(&self) -> bool {
            self.read_only
        }
        fn buf_align(&self) -> usize {
            ALIGN
        }
        fn submit(&self, io: ExportIo, done: Box<dyn FnOnce(Result<(), i32>) + Send>) {
            self.submitted.fetch_add(1, Ordering::SeqCst);
            self.jobs.send((io, done)).expect("the workers live as long as the export");
        }
    }

    /// An export that loses every completion callback.
    struct DroppingExport;

    impl Export for DroppingExport {
        fn block_size(&self) -> u32 {
            512
        }
        fn num_blocks(&self) -> u64 {
            8
        }
        fn read_only(&self) -> bool {
            false
        }
        fn buf_align(&self) -> usize {
            1
        }
        fn submit(&self, _: ExportIo, done: Box<dyn FnOnce(Result<(), i32>) + Send>) {
            drop(done);
        }
    }

    fn socket_path() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        std::env::temp_dir().join(format!("ilog-nbd-test-{}-{n}.sock", std::process::id()))
    }

    /// A server for `export` named "vol" on a fresh unix socket.
    fn serve(export: Arc<dyn Export>) -> (NbdServer, PathBuf) {
        let path = socket_path();
        let server =
            NbdServer::start(Listen::Unix(path.clone()), "vol".to_string(), export).expect("NBD server starts");
        (server, path)
    }

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    fn be16(b: &[u8]) -> u16 {
        u16::from_be_bytes(b.try_into().unwrap())
    }
    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b.try_into().unwrap())
    }
    fn be64(b: &[u8]) -> u64 {
        u64::from_be_bytes(b.try_into().unwrap())
    }

    /// A raw-socket NBD client.
    struct Client(UnixStream);

    impl Client {
        fn connect(path: &Path) -> Client {
            let stream = UnixStream::connect(path).expect("connects");
            stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Client(stream)
        }

        /// Connects and enters transmission with NBD_OPT_GO for the default export: (client, size, flags).
        fn go(path: &Path) -> (Client, u64, u16) {
            let mut client = Client::connect(path);
            client.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
            let infos = client.info(OPT_GO, "").expect("NBD_OPT_GO succeeds");
            let export = &infos[&INFO_EXPORT];
            (client, be64(&export[..8]), be16(&export[8..]))
        }

        fn send(&mut self, bytes: &[u8]) {
            self.0.write_all(bytes).unwrap();
        }

        fn recv(&mut self, len: usize) -> Vec<u8> {
            let mut bytes = vec![0; len];
            self.0.read_exact(&mut bytes).unwrap();
            bytes
        }

        /// Whether the server has hung up.
        fn closed(&mut self) -> bool {
            match self.0.read(&mut [0]) {
                Ok(0) => true,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => true,
                other => panic!("expected the server to hang up, got {other:?}"),
            }
        }

        /// Checks the server's greeting and answers with `flags`.
        fn greet(&mut self, flags: u32) {
            let hello = self.recv(18);
            assert_eq!(be64(&hello[..8]), NBD_MAGIC);
            assert_eq!(be64(&hello[8..16]), IHAVEOPT);
            assert_eq!(be16(&hello[16..]), FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            self.send(&flags.to_be_bytes());
        }

        fn option(&mut self, opt: u32, data: &[u8]) {
            let mut msg = IHAVEOPT.to_be_bytes().to_vec();
            msg.extend_from_slice(&opt.to_be_bytes());
            msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
            msg.extend_from_slice(data);
            self.send(&msg);
        }

        /// One option reply: (option, reply type, data).
        fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
            let header = self.recv(20);
            assert_eq!(be64(&header[..8]), OPT_REPLY_MAGIC);
            let len = be32(&header[16..]) as usize;
            (be32(&header[8..12]), be32(&header[12..16]), self.recv(len))
        }

        /// NBD_OPT_INFO or NBD_OPT_GO for `name`, asking for block sizes and the name: the infos by type, or the
        /// error reply.
        fn info(&mut self, opt: u32, name: &str) -> Result<HashMap<u16, Vec<u8>>, u32> {
            let mut data = (name.len() as u32).to_be_bytes().to_vec();
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(&2u16.to_be_bytes());
            data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
            data.extend_from_slice(&INFO_NAME.to_be_bytes());
            self.option(opt, &data);
            let mut infos = HashMap::new();
            loop {
                let (replied, reply, data) = self.option_reply();
                assert_eq!(replied, opt);
                match reply {
                    REP_INFO => assert!(infos.insert(be16(&data[..2]), data[2..].to_vec()).is_none()),
                    REP_ACK => return Ok(infos),
                    error => return Err(error),
                }
            }
        }

        fn request(&mut self, cmd: u16, flags: u16, handle: u64, offset: u64, len: u32, payload: &[u8]) {
            let mut msg = REQUEST_MAGIC.to_be_bytes().to_vec();
            msg.extend_from_slice(&flags.to_be_bytes());
            msg.extend_from_slice(&cmd.to_be_bytes());
            msg.extend_from_slice(&handle.to_be_bytes());
            msg.extend_from_slice(&offset.to_be_bytes());
            msg.extend_from_slice(&len.to_be_bytes());
            msg.extend_from_slice(payload);
            self.send(&msg);
        }

        /// A simple reply's (error, handle).
        fn reply(&mut self) -> (u32, u64) {
            let header = self.recv(16);
            assert_eq!(be32(&header[..4]), SIMPLE_REPLY_MAGIC);
            (be32(&header[4..8]), be64(&header[8..]))
        }

        fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
            self.request(CMD_READ, 0, 0x1111, offset, len, &[]);
            match self.reply() {
                (0, 0x1111) => Ok(self.recv(len as usize)),
                (error, 0x1111) => Err(error),
                (_, handle) => panic!("reply for unknown handle {handle:#x}"),
            }
        }

        /// A write: its error value.
        fn write(&mut self, flags: u16, offset: u64, data: &[u8]) -> u32 {
            self.request(CMD_WRITE, flags, 0x2222, offset, data.len() as u32, data);
            let (error, handle) = self.reply();
            assert_eq!(handle, 0x2222);
            error
        }

        /// A command without payload in either direction: its error value.
        fn command(&mut self, cmd: u16, flags: u16, offset: u64, len: u32) -> u32 {
            self.request(cmd, flags, 0x3333, offset, len, &[]);
            let (error, handle) = self.reply();
            assert_eq!(handle, 0x3333);
            error
        }
    }

    #[test]
    fn listen_addresses() {
        let tcp = |s: &str| Ok(Listen::Tcp(s.parse().unwrap()));
        assert_eq!(Listen::parse("127.0.0.1:10809"), tcp("127.0.0.1:10809"));
        assert_eq!(Listen::parse("127.0.0.2:0"), tcp("127.0.0.2:0"));
        assert_eq!(Listen::parse("[::1]:10809"), tcp("[::1]:10809"));
        assert_eq!(Listen::parse("/var/tmp/nbd.sock"), Ok(Listen::Unix("/var/tmp/nbd.sock".into())));
        assert_eq!(Listen::parse("nbd.sock"), Ok(Listen::Unix("nbd.sock".into())));
        assert_eq!(Listen::parse("./localhost:10809"), Ok(Listen::Unix("./localhost:10809".into())));
        for bad in [
            "",
            "0.0.0.0:10809",
            "192.168.1.2:10809",
            "[::]:10809",
            "localhost:10809",
            "127.0.0.1",
            "[::1]",
            "127.0.0.1:",
        ] {
            assert!(Listen::parse(bad).is_err(), "{bad:?} must be refused");
        }
        for s in ["127.0.0.1:10809", "[::1]:10809", "/tmp/x.sock"] {
            assert_eq!(Listen::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn go_then_pipelined_writes_and_reads() {
        let export = MemExport::new(512, 2048);
        let (server, path) = serve(export.clone());
        assert_eq!(server.name(), "vol");
        assert_eq!(server.listen(), &Listen::Unix(path.clone()));

        let mut c = Client::connect(&path);
        c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        let infos = c.info(OPT_GO, "vol").unwrap();
        let export_info = &infos[&INFO_EXPORT];
        assert_eq!(be64(&export_info[..8]), 1 << 20);
        let flags = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_CAN_MULTI_CONN;
        assert_eq!(be16(&export_info[8..]), flags);
        let sizes = &infos[&INFO_BLOCK_SIZE];
        assert_eq!((be32(&sizes[..4]), be32(&sizes[4..8]), be32(&sizes[8..])), (512, 4096, 32 << 20));
        assert_eq!(infos[&INFO_NAME], b"vol");
        wait_for("the connection to count", || server.connections() == 1);

        // Many requests in flight; the replies may come in any order.
        for i in 0..64u64 {
            c.request(CMD_WRITE, 0, 100 + i, i * 8192, 8192, &[i as u8 + 1; 8192]);
        }
        let handles: HashSet<u64> = (0..64)
            .map(|_| {
                let (error, handle) = c.reply();
                assert_eq!(error, 0);
                handle
            })
            .collect();
        assert_eq!(handles, (100..164).collect());
        for i in 0..64u64 {
            c.request(CMD_READ, 0, 200 + i, i * 8192, 8192, &[]);
        }
        for _ in 0..64 {
            let (error, handle) = c.reply();
            assert_eq!(error, 0);
            assert_eq!(c.recv(8192), vec![(handle - 200) as u8 + 1; 8192]);
        }
        assert_eq!(export.bytes(63 * 8192, 8192), vec![64; 8192]);
        server.stop();
        assert!(c.closed());
        assert!(!path.exists(), "stop removes the socket file");
    }

    #[test]
    fn handshake_options() {
        let (server, path) = serve(MemExport::new(4096, 16));
        let mut c = Client::connect(&path);
        // Without NBD_FLAG_C_NO_ZEROES: NBD_OPT_EXPORT_NAME's answer is padded.
        c.greet(FLAG_C_FIXED_NEWSTYLE);
        c.option(OPT_LIST, &[]);
        assert_eq!(c.option_reply(), (OPT_LIST, REP_SERVER, b"\0\0\0\x03vol".to_vec()));
        assert_eq!(c.option_reply(), (OPT_LIST, REP_ACK, vec![]));
        c.option(OPT_LIST, b"x");
        assert_eq!(c.option_reply().1, REP_ERR_INVALID);
        assert_eq!(c.info(OPT_INFO, "other"), Err(REP_ERR_UNKNOWN));
        assert_eq!(c.info(OPT_GO, "other"), Err(REP_ERR_UNKNOWN));
        let infos = c.info(OPT_INFO, "vol").unwrap();
        assert_eq!(be64(&infos[&INFO_EXPORT][..8]), 64 << 10);
        assert_eq!(be32(&infos[&INFO_BLOCK_SIZE][..4]), 4096);
        const OPT_STRUCTURED_REPLY: u32 = 8;
        c.option(OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(c.option_reply(), (OPT_STRUCTURED_REPLY, REP_ERR_UNSUP, vec![]));
        c.option(999, b"junk");
        assert_eq!(c.option_reply(), (999, REP_ERR_UNSUP, vec![]));
        c.option(OPT_GO, &[0, 0, 0, 9, b'v']);
        assert_eq!(c.option_reply().1, REP_ERR_INVALID);
        c.option(OPT_INFO, &vec![0; MAX_OPTION_LEN as usize + 1]);
        assert_eq!(c.option_reply().1, REP_ERR_TOO_BIG);
        c.option(OPT_EXPORT_NAME, b"vol");
        let answer = c.recv(8 + 2 + 124);
        assert_eq!(be64(&answer[..8]), 64 << 10);
        assert_eq!(be16(&answer[8..10]) & TFLAG_READ_ONLY, 0);
        assert!(answer[10..].iter().all(|&b| b == 0));
        assert_eq!(c.write(0, 0, &[5; 4096]), 0);
        assert_eq!(c.read(0, 4096), Ok(vec![5; 4096]));

        // NBD_OPT_EXPORT_NAME for an export not served can only be refused by hanging up.
        let mut c = Client::connect(&path);
        c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        c.option(OPT_EXPORT_NAME, b"other");
        assert!(c.closed());
        // NBD_OPT_ABORT is acknowledged.
        let mut c = Client::connect(&path);
        c.greet(FLAG_C_FIXED_NEWSTYLE);
        c.option(OPT_ABORT, &[]);
        assert_eq!(c.option_reply(), (OPT_ABORT, REP_ACK, vec![]));
        assert!(c.closed());
        // Unknown client flags, and options without their magic, end the handshake.
        let mut c = Client::connect(&path);
        c.greet(1 << 7);
        assert!(c.closed());
        let mut c = Client::connect(&path);
        c.greet(FLAG_C_FIXED_NEWSTYLE);
        c.send(&[0; 16]);
        assert!(c.closed());
        // NBD_OPT_EXPORT_NAME with the server's name (NBD_OPT_GO with it is in the test above).
        let mut c = Client::connect(&path);
        c.greet(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
        c.option(OPT_EXPORT_NAME, b"");
        assert_eq!(be64(&c.recv(10)[..8]), 64 << 10);
        assert_eq!(c.read(0, 4096), Ok(vec![5; 4096]));
        server.stop();
    }

    #[test]
    fn invalid_requests_get_errors_and_the_connection_goes_on() {
        let (server, path) = serve(MemExport::new(4096, 16));
        let (mut c, size, _) = Client::go(&path);
        assert_eq!(size, 64 << 10);
        assert_eq!(c.read(512, 4096), Err(NBD_EINVAL), "unaligned offset");
        assert_eq!(c.read(0, 1000), Err(NBD_EINVAL), "unaligned length");
        assert_eq!(c.read(0, 0), Err(NBD_EINVAL), "empty");
        assert_eq!(c.read(60 << 10, 8192), Err(NBD_EINVAL), "past the end");
        assert_eq!(c.read(u64::MAX - 4095, 4096), Err(NBD_EINVAL), "wrapping around");
        assert_eq!(c.command(CMD_READ, 1 << 2, 0, 4096), NBD_EINVAL, "NBD_CMD_FLAG_DF without structured replies");
        // Refused writes still have their payload read.
        assert_eq!(c.write(0, 60 << 10, &[1; 8192]), NBD_ENOSPC, "writing past the end");
        assert_eq!(c.write(0, 100, &[1; 4096]), NBD_EINVAL);
        assert_eq!(c.write(CMD_FLAG_NO_HOLE, 0, &[1; 4096]), NBD_EINVAL, "a flag writes do not take");
        assert_eq!(c.command(CMD_TRIM, 0, 64 << 10, 4096), NBD_EINVAL);
        assert_eq!(c.command(CMD_WRITE_ZEROES, 0, 64 << 10, 4096), NBD_ENOSPC);
        assert_eq!(c.command(CMD_WRITE_ZEROES, 0, 0, 0), NBD_EINVAL);
        assert_eq!(c.command(42, 0, 0, 0), NBD_EINVAL, "unknown command");
        assert_eq!(c.write(0, 4096, &[9; 4096]), 0);
        assert_eq!(c.read(4096, 4096), Ok(vec![9; 4096]));
        server.stop();
    }

    #[test]
    fn protocol_violations_drop_only_that_connection() {
        let (server, path) = serve(MemExport::new(512, 64));
        let (mut healthy, ..) = Client::go(&path);
        let (mut bad_magic, ..) = Client::go(&path);
        let mut request = vec![0; 28];
        request[..4].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        bad_magic.send(&request);
        assert!(bad_magic.closed());
        let (mut too_big, ..) = Client::go(&path);
        too_big.request(CMD_READ, 0, 1, 0, MAX_REQUEST + 512, &[]);
        assert!(too_big.closed());
        let (mut truncated, ..) = Client::go(&path);
        truncated.request(CMD_WRITE, 0, 1, 0, 4096, &[1; 100]);
        truncated.0.shutdown(Shutdown::Write).unwrap();
        assert!(truncated.closed());

        assert_eq!(healthy.write(0, 0, &[3; 512]), 0);
        let (mut fresh, ..) = Client::go(&path);
        assert_eq!(fresh.read(0, 512), Ok(vec![3; 512]));
        wait_for("the dropped connections to end", || server.connections() == 2);
        server.stop();
    }

    #[test]
    fn read_only_export_refuses_changes() {
        let export = MemExport::build(512, 64, true, Duration::ZERO);
        export.fill(0, &[7; 512]);
        let (server, path) = serve(export.clone());
        let (mut c, _, flags) = Client::go(&path);
        assert_ne!(flags & TFLAG_READ_ONLY, 0);
        assert_eq!(c.write(0, 0, &[1; 512]), NBD_EPERM);
        assert_eq!(c.command(CMD_TRIM, 0, 0, 512), NBD_EPERM);
        assert_eq!(c.command(CMD_WRITE_ZEROES, 0, 0, 512), NBD_EPERM);
        assert_eq!(c.command(CMD_FLUSH, 0, 0, 0), 0);
        assert_eq!(c.read(0, 512), Ok(vec![7; 512]));
        assert_eq!(export.submitted.load(Ordering::SeqCst), 1, "only the read reaches the export");
        server.stop();
    }

    #[test]
    fn trim_zeroes_flush_and_fua() {
        let export = MemExport::new(512, 48 << 11);
        let (server, path) = serve(export.clone());
        let (mut c, ..) = Client::go(&path);
        assert_eq!(c.write(0, 0, &[0xaa; 8192]), 0);
        assert_eq!(c.command(CMD_TRIM, 0, 0, 2048), 0);
        assert_eq!(c.command(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 4096, 1024), 0);
        let data = c.read(0, 8192).unwrap();
        assert!(data[..2048].iter().all(|&b| b == 0));
        assert!(data[2048..4096].iter().all(|&b| b == 0xaa));
        assert!(data[4096..5120].iter().all(|&b| b == 0));
        assert!(data[5120..].iter().all(|&b| b == 0xaa));

        // FUA: the reply comes after a flush that followed the write.
        assert_eq!(export.flushes(), 0);
        assert_eq!(c.write(CMD_FLAG_FUA, 0, &[1; 512]), 0);
        assert_eq!(export.flushes(), 1);
        assert_eq!(c.command(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 512, 512), 0);
        assert_eq!(c.command(CMD_TRIM, CMD_FLAG_FUA, 1024, 512), 0);
        assert_eq!(export.flushes(), 3);
        assert_eq!(c.command(CMD_FLUSH, 0, 0, 0), 0);
        assert_eq!(export.flushes(), 4);
        assert_eq!(export.bytes(0, 1024), [vec![1; 512], vec![0; 512]].concat());

        // Requests without payload may exceed the 32 MiB maximum block size (qemu sends such discards).
        export.fill(39 << 20, &[0xbb; 512]);
        assert_eq!(c.command(CMD_WRITE_ZEROES, 0, 1 << 20, 40 << 20), 0);
        assert_eq!(c.command(CMD_TRIM, 0, 1 << 20, 40 << 20), 0);
        assert_eq!(export.bytes(39 << 20, 512), vec![0; 512]);
        server.stop();
    }

    #[test]
    fn disc_answers_outstanding_requests_then_closes() {
        let export = MemExport::build(512, 64, false, Duration::from_millis(50));
        let (server, path) = serve(export.clone());
        let (mut c, ..) = Client::go(&path);
        c.request(CMD_WRITE, 0, 1, 0, 512, &[4; 512]);
        c.request(CMD_DISC, 0, 2, 0, 0, &[]);
        assert_eq!(c.reply(), (0, 1));
        assert!(c.closed());
        assert_eq!(export.bytes(0, 512), vec![4; 512]);
        wait_for("the connection to end", || server.connections() == 0);
        server.stop();
    }

    #[test]
    fn stop_lets_in_flight_io_finish_and_answers_it() {
        let export = MemExport::build(512, 64, false, Duration::from_millis(200));
        export.fill(0, &[6; 512]);
        let (server, path) = serve(export.clone());
        let (mut busy, ..) = Client::go(&path);
        let mut handshaking = Client::connect(&path);
        handshaking.greet(FLAG_C_FIXED_NEWSTYLE);
        busy.request(CMD_READ, 0, 9, 0, 512, &[]);
        wait_for("the read to reach the export", || export.submitted.load(Ordering::SeqCst) == 1);
        assert_eq!(server.connections(), 2);
        server.stop();
        // Everything was sent before `stop` returned.
        assert_eq!(busy.reply(), (0, 9));
        assert_eq!(busy.recv(512), vec![6; 512]);
        assert!(busy.closed());
        assert!(handshaking.closed());
        assert!(!path.exists());
    }

    #[test]
    fn stopping_exports_whose_clients_do_not_read_takes_one_grace_period_for_all() {
        let servers: Vec<(NbdServer, Client)> = (0..4)
            .map(|_| {
                let (server, path) = serve(MemExport::build(512, 65536, false, Duration::ZERO));
                let (mut c, ..) = Client::go(&path);
                for handle in 0..8 {
                    c.request(CMD_READ, 0, handle, 0, 4 << 20, &[]);
                }
                (server, c)
            })
            .collect();
        let (servers, clients): (Vec<NbdServer>, Vec<Client>) = servers.into_iter().unzip();
        let start = Instant::now();
        NbdServer::stop_all(servers);
        let took = start.elapsed();
        assert!(took < STOP_GRACE * 2, "4 stuck exports took {took:?} to stop (one grace period is {STOP_GRACE:?})");
        drop(clients);
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_as_they_come() {
        let (server, path) = serve(MemExport::build(512, 64, false, Duration::ZERO));
        let mut held: Vec<Client> = (0..MAX_CONNECTIONS).map(|_| Client::connect(&path)).collect();
        wait_for("every connection to be served", || server.connections() == MAX_CONNECTIONS);
        let mut extra = Client::connect(&path);
        assert!(extra.closed(), "connection {} was served", MAX_CONNECTIONS + 1);
        // One leaves: room for the next.
        held.pop();
        wait_for("the connection to end", || server.connections() < MAX_CONNECTIONS);
        let (mut c, ..) = Client::go(&path);
        assert_eq!(c.read(0, 512), Ok(vec![0; 512]));
        drop(held);
        server.stop();
    }

    /// Resident memory of this process.
    fn rss_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        pages * 4096
    }

    #[test]
    fn clients_that_send_large_reads_and_never_take_the_replies_cannot_exhaust_memory() {
        let export = MemExport::build(512, 65536, false, Duration::ZERO);
        export.fill(0, &[7; 512]);
        let (server, path) = serve(export);
        let before = rss_bytes();
        // 12 connections, 9 reads of 32 MiB each: 3.4 GiB asked for, 3 GiB within each connection's own budget.
        let clients: Vec<Client> = (0..12)
            .map(|_| {
                let (mut c, ..) = Client::go(&path);
                for handle in 0..9 {
                    c.request(CMD_READ, 0, handle, 0, MAX_REQUEST, &[]);
                }
                c
            })
            .collect();
        wait_for("the process budget to fill", || {
            *lock(&PROCESS_BYTES.used) + u64::from(MAX_REQUEST) > MAX_PROCESS_IN_FLIGHT_BYTES
        });
        thread::sleep(Duration::from_millis(200));
        let grown = rss_bytes().saturating_sub(before);
        // Room for what tests running beside this one hold; without the process budget it may grow by 3 GiB
        // (12 connections of 256 MiB).
        assert!(grown < MAX_PROCESS_IN_FLIGHT_BYTES + (512 << 20), "resident memory grew by {} MiB", grown >> 20);
        drop(clients);
        server.stop();
        wait_for("the budget to be returned", || *lock(&PROCESS_BYTES.used) == 0);
    }

    #[test]
    fn lost_completions_answer_eio() {
        let (server, path) = serve(Arc::new(DroppingExport));
        let (mut c, ..) = Client::go(&path);
        assert_eq!(c.read(0, 512), Err(NBD_EIO));
        assert_eq!(c.write(CMD_FLAG_FUA, 0, &[1; 512]), NBD_EIO);
        server.stop();
    }

    #[test]
    fn socket_files_and_bad_parameters() {
        let path = socket_path();
        // A stale socket file (nobody listening) is replaced.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let start = |name: &str| NbdServer::start(Listen::Unix(path.clone()), name.to_string(), MemExport::new(512, 8));
        let server = start("vol").expect("replaces a stale socket");
        // A live one is not.
        assert_eq!(start("vol").err().map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
        server.stop();
        assert!(!path.exists());
        // Nor is a file that is not a socket.
        fs::write(&path, b"precious").unwrap();
        assert_eq!(start("vol").err().map(|e| e.kind()), Some(io::ErrorKind::AlreadyExists));
        assert_eq!(fs::read(&path).unwrap(), b"precious");
        fs::remove_file(&path).unwrap();
        assert_eq!(start("a\0b").err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        let bad_block_size = MemExport::new(3, 8);
        let refused = NbdServer::start(Listen::Unix(path.clone()), "vol".to_string(), bad_block_size);
        assert_eq!(refused.err().map(|e| e.kind()), Some(io::ErrorKind::InvalidInput));
        assert!(!path.exists());
    }

    /// Runs an interoperability tool, failing (not skipping) when it is missing: CI installs them.
    fn run_tool(tool: &str, package: &str, args: &[&str]) -> String {
        let out = match Command::new(tool).args(args).output() {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("`{tool}` is not installed: install {package} to run the NBD interoperability tests")
            }
            Err(e) => panic!("cannot run {tool}: {e}"),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tool} {args:?} failed ({}):\n{stdout}{stderr}", out.status);
        stdout
    }

    #[test]
    fn qemu_io_over_a_unix_socket() {
        let export = MemExport::new(512, 96 << 11);
        export.fill(256 << 10, &[0x55; 64 << 10]);
        export.fill(40 << 20, &[0x77; 512]);
        let (server, path) = serve(export.clone());
        let uri = format!("nbd+unix:///vol?socket={}", path.display());
        // Each command, and what qemu-io prints when it succeeds.
        let commands = [
            ("write -P 0xab 0 64k", "wrote 65536/65536 bytes at offset 0"),
            ("read -P 0xab 0 64k", "read 65536/65536 bytes at offset 0"),
            ("write -P 0xcd -f 64k 64k", "wrote 65536/65536 bytes at offset 65536"),
            ("write -z 128k 64k", "wrote 65536/65536 bytes at offset 131072"),
            ("discard 192k 64k", "discard 65536/65536 bytes at offset 196608"),
            ("discard 32M 64M", "discard 67108864/67108864 bytes at offset 33554432"),
            ("flush", ""),
            ("read -P 0x55 256k 64k", "read 65536/65536 bytes at offset 262144"),
        ];
        let mut args = vec!["-f", "raw"];
        for (command, _) in &commands {
            args.extend(["-c", command]);
        }
        args.push(&uri);
        let out = run_tool("qemu-io", "qemu-utils", &args);
        assert!(!out.contains("fail") && !out.contains("error"), "qemu-io reported a failure:\n{out}");
        for (command, printed) in commands {
            assert!(out.contains(printed), "`{command}` did not print `{printed}`:\n{out}");
        }
        assert_eq!(export.bytes(40 << 20, 512), vec![0; 512]);
        assert_eq!(export.bytes(0, 64 << 10), vec![0xab; 64 << 10]);
        assert_eq!(export.bytes(64 << 10, 64 << 10), vec![0xcd; 64 << 10]);
        assert_eq!(export.bytes(128 << 10, 128 << 10), vec![0; 128 << 10]);
        assert!(export.flushes() >= 2, "FUA write and flush");
        server.stop();
    }

    #[test]
    fn nbdinfo_over_a_unix_socket() {
        let (server, path) = serve(MemExport::new(4096, 256));
        let info = |args: &[&str]| -> serde_json::Value {
            let out = run_tool("nbdinfo", "libnbd-bin", args);
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("nbdinfo output is not JSON ({e}):\n{out}"))
        };
        let default = format!("nbd+unix:///?socket={}", path.display());
        let details = info(&["--json", &default]);
        let export = &details["exports"][0];
        assert_eq!(details["structured"], false, "{details}");
        assert_eq!(export["export-size"], 1 << 20, "{details}");
        assert_eq!(export["block_size_minimum"], 4096, "{details}");
        assert_eq!(export["block_size_preferred"], 4096, "{details}");
        assert_eq!(export["block_size_maximum"], 32 << 20, "{details}");
        for (key, value) in [
            ("is_read_only", false),
            ("can_flush", true),
            ("can_fua", true),
            ("can_trim", true),
            ("can_zero", true),
            ("can_multi_conn", true),
            ("can_cache", false),
        ] {
            assert_eq!(export[key], value, "{key} in {details}");
        }
        let list = info(&["--list", "--json", &default]);
        assert_eq!(list["exports"][0]["export-name"], "vol", "{list}");
        assert_eq!(list["exports"].as_array().map(Vec::len), Some(1), "{list}");
        server.stop();
    }

    #[test]
    fn nbdcopy_over_loopback_tcp() {
        let export = MemExport::new(512, 8192);
        // Stale contents that nbdcopy's zero requests for the source's hole must clear.
        export.fill(0, &[0xee; 4 << 20]);
        let server =
            NbdServer::start(Listen::parse("127.0.0.1:0").unwrap(), "vol".to_string(), export.clone()).unwrap();
        let Listen::Tcp(addr) = *server.listen() else { panic!("listening on {}", server.listen()) };
        assert_ne!(addr.port(), 0);
        let uri = format!("nbd://{addr}/vol");
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
        let source = socket_path().with_extension("src");
        let copy = socket_path().with_extension("dst");
        let mut file = fs::File::create(&source).unwrap();
        file.write_all(&data).unwrap();
        file.set_len(4 << 20).unwrap();
        drop(file);

        let (source_name, copy_name) = (source.to_str().unwrap(), copy.to_str().unwrap());
        run_tool("nbdcopy", "libnbd-bin", &[source_name, &uri]);
        assert!(export.bytes(0, 2 << 20) == data, "the data arrived");
        assert!(export.bytes(2 << 20, 2 << 20).iter().all(|&b| b == 0), "the hole arrived");
        // Back again, over several connections at once (the export allows multi-conn).
        let most_connections = AtomicUsize::new(0);
        let copying = AtomicBool::new(true);
        thread::scope(|scope| {
            scope.spawn(|| {
                while copying.load(Ordering::SeqCst) {
                    most_connections.fetch_max(server.connections(), Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(1));
                }
            });
            run_tool("nbdcopy", "libnbd-bin", &["--connections=4", &uri, copy_name]);
            copying.store(false, Ordering::SeqCst);
        });
        assert!(most_connections.into_inner() > 1, "nbdcopy used several connections");
        let copied = fs::read(&copy).unwrap();
        fs::remove_file(&source).unwrap();
        fs::remove_file(&copy).unwrap();
        assert!(copied[..2 << 20] == data[..] && copied[2 << 20..].iter().all(|&b| b == 0), "the copy matches");
        server.stop();
    }
}
