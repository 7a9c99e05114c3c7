//! A JSON-RPC 2.0 server on a Unix socket that speaks SPDK's protocol
//! (`lib/jsonrpc`), so that SPDK's `scripts/rpc.py` and the PyPI `spdk-rpc`
//! work against it unchanged. It owns the socket, its connections and the
//! framing; what a method does is the [`Handler`]'s.
//!
//! The protocol, as SPDK implements it:
//! - requests are JSON values sent back to back on the stream, with or
//!   without whitespace between them, in as many reads as it takes;
//! - each response is one JSON object followed by a newline:
//!   `{"jsonrpc":"2.0","id":<the request's id>,"result":..}` or
//!   `{"jsonrpc":"2.0","id":..,"error":{"code":..,"message":..}}`,
//!   in the order of the requests on that connection;
//! - a request without `id` is a notification: it runs, nothing is sent
//!   (as the JSON-RPC spec says; SPDK answers a failed notification with
//!   its error and `"id": null`, which no SPDK client relies on, as they
//!   all send ids);
//! - an invalid request (not an object; `jsonrpc` present but not `"2.0"`;
//!   `method` missing or not a string; `params` not an object, array or
//!   null; `id` not a string, number or null; any other member) is
//!   answered with `-32600`, with its id when one could be read and `null`
//!   otherwise. SPDK has accepted a missing `jsonrpc` since 2018 and a null
//!   `params` (as none) since 2019; so does this server;
//! - the response's `id` is the request's as written, so an integer past
//!   what u64 or f64 holds comes back digit for digit;
//! - malformed JSON is answered with `-32700` and the connection is closed,
//!   as the stream has no point to resynchronise at; well-formed JSON
//!   nested deeper than 128 levels is answered with `-32700` too, and the
//!   connection stays;
//! - an array is a batch (as in SPDK since v26.05, for `spdk-rpc
//!   --batch-mode`): one array of the responses that are not to
//!   notifications, nothing if there are none, `-32600` if it is empty.
//!
//! Every connection has its own thread and serves its requests in order; a
//! slow or misbehaving client holds up only its own connection.

use crate::error::RpcError;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Executes the methods. Called from the connections' threads, several at
/// once; a panic is answered with Internal error and does not take the
/// server down.
pub trait Handler: Send + Sync + 'static {
    /// `params`: the request's `params` (an object or an array), `None`
    /// when it had none or `null`.
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError>;
}

/// How often the accept thread looks for new connections and for
/// [`Server::stop`]. SPDK polls its RPC socket every 4 ms; a blocking
/// `accept` could only be woken by connecting to the socket's path, which
/// fails once someone else has removed or replaced the file.
const ACCEPT_POLL: Duration = Duration::from_millis(10);

/// Longest request accepted: a client cannot make the server buffer
/// without bound. Every ilog request is a few hundred bytes; this leaves
/// room for batches of thousands.
const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A running server. Stops (as [`Server::stop`]) when dropped.
pub struct Server {
    path: PathBuf,
    /// Device and inode of the socket file bound: stop removes the file only
    /// while it is still this server's.
    socket_file: Option<(u64, u64)>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    conns: Mutex<HashMap<u64, Conn>>,
}

/// A live connection, for stop to shut down and join.
struct Conn {
    stream: UnixStream,
    thread: JoinHandle<()>,
}

impl Server {
    /// Listens on `path` and serves every connection with `handler`. A
    /// socket file left at `path` by a server that is gone is replaced; a
    /// live server's socket, or a file that is not a socket, is an error.
    pub fn start(path: &Path, handler: Arc<dyn Handler>) -> io::Result<Server> {
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)?;
        let socket_file = std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let shared = Arc::new(Shared { stopping: AtomicBool::new(false), conns: Mutex::new(HashMap::new()) });
        // From here on, an early return drops `server`, which removes the
        // socket file.
        let mut server = Server { path: path.to_owned(), socket_file, shared: shared.clone(), accept: None };
        listener.set_nonblocking(true)?;
        server.accept = Some(
            thread::Builder::new()
                .name("ilog-rpc-accept".into())
                .spawn(move || accept_loop(&listener, &shared, &handler))?,
        );
        Ok(server)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, shuts every connection down, waits for their threads
    /// (a handler call in progress finishes first) and removes the socket
    /// file.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        // The listener closes with its thread: no connection is accepted
        // after this, so none is missed below.
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        // Shutting the socket down ends the connection thread's blocking
        // read; it then finishes the request it is serving, if any.
        for conn in conns.values() {
            let _ = conn.stream.shutdown(Shutdown::Both);
        }
        for conn in conns.into_values() {
            // A handler may stop the server (a kill RPC): its own thread
            // cannot be joined, and ends once the handler returns.
            if conn.thread.thread().id() != thread::current().id() {
                let _ = conn.thread.join();
            }
        }
        let still_ours = std::fs::symlink_metadata(&self.path).ok().map(|m| (m.dev(), m.ino()));
        if still_ours.is_some() && still_ours == self.socket_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent whatever panicked while holding it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("a server is already listening on {}", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>, handler: &Arc<dyn Handler>) {
    let mut next_id = 0u64;
    while !shared.stopping.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                next_id += 1;
                spawn_connection(shared, next_id, stream, handler.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors, or a connection that died in the
                // backlog: retry after a pause rather than spin.
                log::warn!("JSON-RPC accept failed: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn spawn_connection(shared: &Arc<Shared>, id: u64, stream: UnixStream, handler: Arc<dyn Handler>) {
    // Accepted sockets are blocking on Linux, but not everywhere.
    let registered = match stream.set_nonblocking(false).and_then(|()| stream.try_clone()) {
        Ok(registered) => registered,
        Err(e) => {
            log::warn!("JSON-RPC connection dropped: {e}");
            return;
        }
    };
    // Held across the spawn: the thread's deregistration must come after
    // its registration.
    let mut conns = lock(&shared.conns);
    let deregister = Deregister { shared: shared.clone(), id };
    let spawned = thread::Builder::new().name("ilog-rpc-conn".into()).spawn(move || {
        let _deregister = deregister;
        serve(stream, handler.as_ref());
    });
    match spawned {
        Ok(thread) => {
            conns.insert(id, Conn { stream: registered, thread });
        }
        Err(e) => log::warn!("JSON-RPC connection dropped: cannot start its thread: {e}"),
    }
}

/// Drops a connection's registration when its thread ends, however it ends:
/// the registered clone of the socket would otherwise keep it open, and the
/// client would wait for a close that never comes.
struct Deregister {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let conn = lock(&self.shared.conns).remove(&self.id);
        drop(conn);
    }
}

/// Counts the bytes the parser takes, to bound one request.
struct Counted<R> {
    inner: R,
    taken: Rc<Cell<usize>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.taken.get() >= MAX_REQUEST_BYTES {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request too long"));
        }
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n);
        Ok(n)
    }
}

/// Serves one connection until the client closes it, it fails, or it sends
/// something that is not JSON.
fn serve(stream: UnixStream, handler: &dyn Handler) {
    let writer = match stream.try_clone() {
        Ok(writer) => writer,
        Err(e) => {
            log::warn!("JSON-RPC connection dropped: {e}");
            return;
        }
    };
    // Buffered: the parser reads a byte at a time.
    serve_stream(BufReader::new(stream), writer, handler);
}

/// A connection's protocol, apart from its socket: answers the requests read
/// from `input` on `writer` until `input` ends or fails, or sends something
/// that is not JSON. Public so that the fuzz targets can feed it bytes.
pub fn serve_stream(input: impl Read, mut writer: impl Write, handler: &dyn Handler) {
    let taken = Rc::new(Cell::new(0));
    let reader = Counted { inner: input, taken: taken.clone() };
    // Waits for more bytes whenever a value is incomplete; a value that
    // ends in a brace or bracket is returned without reading past it.
    let mut requests = serde_json::Deserializer::from_reader(reader).into_iter::<Box<RawValue>>();
    loop {
        taken.set(0);
        let reply = match requests.next() {
            None => return,
            Some(Ok(request)) => dispatch(handler, &request),
            Some(Err(e)) => {
                let too_long = taken.get() >= MAX_REQUEST_BYTES;
                if !too_long && !matches!(e.classify(), Category::Syntax | Category::Data) {
                    // Closed mid-request, a socket error, or stop.
                    return;
                }
                let why =
                    if too_long { format!("request longer than {MAX_REQUEST_BYTES} bytes") } else { e.to_string() };
                log::warn!("JSON-RPC parse error, closing the connection: {why}");
                let error = RpcError::new(RpcError::PARSE_ERROR, format!("Parse error: {why}"));
                let _ = writer.write_all(&line(&Response::error(null(), &error)));
                return;
            }
        };
        if let Some(reply) = reply {
            if writer.write_all(&reply).is_err() {
                return;
            }
        }
    }
}

/// The bytes to send for one top-level request or batch, if any.
fn dispatch(handler: &dyn Handler, request: &RawValue) -> Option<Vec<u8>> {
    if !request.get().starts_with('[') {
        return call(handler, request).map(|response| line(&response));
    }
    match serde_json::from_str::<Vec<&RawValue>>(request.get()) {
        Ok(batch) if batch.is_empty() => Some(line(&invalid_request(null()))),
        Ok(batch) => {
            let responses: Vec<Response> = batch.into_iter().filter_map(|r| call(handler, r)).collect();
            (!responses.is_empty()).then(|| line(&responses))
        }
        Err(_) => Some(line(&invalid_request(null()))),
    }
}

/// Runs one request; its response, unless it is a notification.
fn call(handler: &dyn Handler, raw: &RawValue) -> Option<Response> {
    let mut fields = match serde_json::from_str::<Value>(raw.get()) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return Some(invalid_request(null())),
        // Well-formed but nested past the parser's depth limit: the stream
        // is still in step, so the connection stays.
        Err(e) => {
            return Some(Response::error(null(), &RpcError::new(RpcError::PARSE_ERROR, format!("Parse error: {e}"))))
        }
    };
    let id = fields.remove("id");
    // The id goes back as its client wrote it: a number past what u64 or
    // f64 holds must come back digit for digit.
    let reply_id = match &id {
        Some(Value::String(_) | Value::Number(_)) => raw_id(raw).unwrap_or_else(null),
        _ => null(),
    };
    let id_valid = matches!(id, None | Some(Value::Null | Value::String(_) | Value::Number(_)));
    let version_valid = match fields.remove("jsonrpc") {
        None => true,
        Some(version) => version == "2.0",
    };
    let method = match fields.remove("method") {
        Some(Value::String(method)) => Some(method),
        _ => None,
    };
    let params = match fields.remove("params") {
        None | Some(Value::Null) => Ok(None),
        Some(params @ (Value::Object(_) | Value::Array(_))) => Ok(Some(params)),
        Some(_) => Err(()),
    };
    // SPDK decodes the request object strictly: any other member is invalid.
    let (true, true, true, Some(method), Ok(params)) = (id_valid, version_valid, fields.is_empty(), method, params)
    else {
        return Some(invalid_request(reply_id));
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| handler.call(&method, params))).unwrap_or_else(|_| {
        log::error!("JSON-RPC method {method} panicked");
        Err(RpcError::new(RpcError::INTERNAL_ERROR, "Internal error"))
    });
    // A notification's outcome, error or not, is not sent.
    id.as_ref()?;
    Some(match outcome {
        Ok(result) => Response { jsonrpc: "2.0", id: reply_id, result: Some(result), error: None },
        Err(error) => Response::error(reply_id, &error),
    })
}

/// A request's `id` member as it was written.
fn raw_id(request: &RawValue) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
    }
    serde_json::from_str::<Id>(request.get()).ok().map(|r| r.id.to_owned())
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("valid JSON")
}

/// One response, in SPDK's member order.
#[derive(Serialize)]
struct Response {
    jsonrpc: &'static str,
    id: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

impl Response {
    fn error(id: Box<RawValue>, error: &RpcError) -> Response {
        let error = json!({ "code": error.code, "message": error.message });
        Response { jsonrpc: "2.0", id, result: None, error: Some(error) }
    }
}

fn invalid_request(id: Box<RawValue>) -> Response {
    Response::error(id, &RpcError::new(RpcError::INVALID_REQUEST, "Invalid request"))
}

/// A response as sent: the JSON and a newline, as SPDK ends each one.
fn line(response: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(response).expect("responses serialize");
    bytes.push(b'\n');
    bytes
}
