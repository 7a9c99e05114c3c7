//! The JSON-RPC server against raw-socket clients: framing, notifications,
//! batches, error codes, isolation of connections, and stop.

use ilog_rpc::{Handler, RpcError, Server};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// Records every call; `echo` returns its params, `fail` an errno error,
/// `block` waits for [`Fake::release`], `panic` panics, anything else is not
/// found.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(String, Option<Value>)>>,
    called: Condvar,
    released: Mutex<bool>,
    release: Condvar,
}

impl Handler for Fake {
    fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let mut calls = self.calls.lock().unwrap();
        calls.push((method.to_owned(), params.clone()));
        self.called.notify_all();
        drop(calls);
        match method {
            "echo" => Ok(params.unwrap_or(Value::Null)),
            "fail" => Err(RpcError::errno(19, "No such device")),
            "block" => {
                let released = self.released.lock().unwrap();
                let (_released, timeout) =
                    self.release.wait_timeout_while(released, Duration::from_secs(10), |released| !*released).unwrap();
                Ok(json!(if timeout.timed_out() { "never released" } else { "released" }))
            }
            "panic" => panic!("the fake handler panics on purpose"),
            _ => Err(RpcError::method_not_found(method)),
        }
    }
}

impl Fake {
    fn release(&self) {
        *self.released.lock().unwrap() = true;
        self.release.notify_all();
    }

    /// Waits until `n` calls have been made, and returns them.
    fn wait_calls(&self, n: usize) -> Vec<(String, Option<Value>)> {
        let calls = self.calls.lock().unwrap();
        let (calls, timeout) =
            self.called.wait_timeout_while(calls, Duration::from_secs(5), |calls| calls.len() < n).unwrap();
        assert!(!timeout.timed_out(), "only {} calls: {:?}", calls.len(), *calls);
        calls.clone()
    }
}

struct Fixture {
    server: Server,
    fake: Arc<Fake>,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "ilog-rpc-server-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start() -> Fixture {
    let dir = temp_dir();
    let fake = Arc::new(Fake::default());
    let server = Server::start(&dir.join("rpc.sock"), fake.clone()).unwrap();
    Fixture { server, fake, dir }
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(f: &Fixture) -> Client {
        let stream = UnixStream::connect(f.server.path()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &str) {
        self.stream.write_all(bytes.as_bytes()).unwrap();
    }

    /// The next response: exactly one line holding one JSON value.
    fn recv(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("response {:?} is not one JSON value: {e}", String::from_utf8_lossy(&line))
                });
            }
            let mut chunk = [0; 4096];
            let n = self.stream.read(&mut chunk).expect("a response in time");
            assert!(n > 0, "closed with {:?} pending", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn call(&mut self, request: &Value) -> Value {
        self.send(&request.to_string());
        self.recv()
    }

    /// Whether nothing arrives within `wait`.
    fn silent_for(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0; 4096];
        let silent = match self.stream.read(&mut chunk) {
            Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        silent && self.buf.is_empty()
    }

    /// Asserts the server closed the connection (a Unix socket closed with
    /// unread input reads as reset rather than end of file).
    fn assert_closed(&mut self) {
        let mut chunk = [0; 64];
        match self.stream.read(&mut chunk) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("connection still open: {other:?}"),
        }
    }
}

fn result(id: Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn error_code(response: &Value) -> i64 {
    response["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error: {response}"))
}

#[test]
fn answers_a_request_with_a_newline_terminated_response() {
    let f = start();
    let mut c = Client::connect(&f);
    c.send(r#"{"jsonrpc":"2.0","method":"echo","params":{"name":"ilog0"},"id":1}"#);
    let raw = recv_raw(&mut c);
    assert_eq!(raw.matches('\n').count(), 1);
    let response: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(response, result(json!(1), json!({"name": "ilog0"})));
}

/// The raw line of the next response, without parsing it.
fn recv_raw(c: &mut Client) -> String {
    let mut raw = Vec::new();
    while !raw.ends_with(b"\n") {
        let mut chunk = [0; 4096];
        let n = c.stream.read(&mut chunk).unwrap();
        assert!(n > 0);
        raw.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(raw).unwrap()
}

#[test]
fn a_numeric_id_comes_back_exactly_as_sent() {
    let f = start();
    let mut c = Client::connect(&f);
    // Beyond u64 and beyond f64's 53 bits: a client matches its responses
    // by these digits, so they must not come back as a rounded float.
    for id in ["123456789012345678901234567890", "18446744073709551617", "9007199254740993", "-12", "1.5"] {
        c.send(&format!(r#"{{"jsonrpc":"2.0","method":"echo","id":{id}}}"#));
        let raw = recv_raw(&mut c);
        assert!(
            raw.contains(&format!(r#""id":{id},"#)) || raw.contains(&format!(r#""id":{id}}}"#)),
            "id {id} came back as {raw}"
        );
    }
}

#[test]
fn two_requests_in_one_write_get_two_responses_in_order() {
    let f = start();
    let mut c = Client::connect(&f);
    c.send(concat!(
        r#"{"jsonrpc":"2.0","method":"echo","params":{"a":1},"id":1}"#,
        r#"{"jsonrpc":"2.0","method":"echo","params":[2],"id":"two"}"#
    ));
    assert_eq!(c.recv(), result(json!(1), json!({"a": 1})));
    assert_eq!(c.recv(), result(json!("two"), json!([2])));
    // Whitespace between requests, as rpc.py's indented requests have.
    c.send("\n  {\n \"jsonrpc\": \"2.0\",\n \"method\": \"echo\",\n \"id\": 3\n}\n\n");
    assert_eq!(c.recv(), result(json!(3), Value::Null));
}

#[test]
fn a_request_split_across_writes_is_reassembled() {
    let f = start();
    let mut c = Client::connect(&f);
    let request = r#"{"jsonrpc":"2.0","method":"echo","params":{"name":"ilog0","count":7},"id":42}"#;
    let (head, tail) = request.split_at(25);
    c.send(head);
    assert!(c.silent_for(Duration::from_millis(100)), "answered half a request");
    c.send(tail);
    assert_eq!(c.recv(), result(json!(42), json!({"name": "ilog0", "count": 7})));
    // One byte per write.
    for b in request.replace("42", "43").bytes() {
        c.stream.write_all(&[b]).unwrap();
    }
    assert_eq!(c.recv(), result(json!(43), json!({"name": "ilog0", "count": 7})));
}

#[test]
fn notifications_run_and_are_not_answered() {
    let f = start();
    let mut c = Client::connect(&f);
    c.send(r#"{"jsonrpc":"2.0","method":"echo","params":{"n":1}}"#);
    c.send(r#"{"jsonrpc":"2.0","method":"fail"}"#);
    c.send(r#"{"jsonrpc":"2.0","method":"echo","params":{"n":2},"id":9}"#);
    assert_eq!(c.recv(), result(json!(9), json!({"n": 2})));
    let calls = f.fake.wait_calls(3);
    assert_eq!(calls[0], ("echo".to_owned(), Some(json!({"n": 1}))));
    assert_eq!(calls[1], ("fail".to_owned(), None));
    assert!(c.silent_for(Duration::from_millis(100)));
}

#[test]
fn an_explicit_null_id_is_a_request() {
    let f = start();
    let mut c = Client::connect(&f);
    let response = c.call(&json!({"jsonrpc": "2.0", "method": "echo", "params": null, "id": null}));
    assert_eq!(response, result(Value::Null, Value::Null));
    assert_eq!(f.fake.wait_calls(1)[0], ("echo".to_owned(), None));
}

#[test]
fn malformed_json_is_a_parse_error_that_closes_only_that_connection() {
    let f = start();
    let mut good = Client::connect(&f);
    assert_eq!(good.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 1})), result(json!(1), Value::Null));

    for garbage in [r#"{"jsonrpc":"2.0",,"method":"echo","id":2}"#, "]", "{\"a\": tru }", "\"\u{1}\""] {
        let mut bad = Client::connect(&f);
        bad.send(garbage);
        let response = bad.recv();
        assert_eq!(error_code(&response), -32700, "{garbage}: {response}");
        assert_eq!(response["id"], Value::Null);
        assert_eq!(response["jsonrpc"], "2.0");
        bad.assert_closed();
    }

    // Well-formed, but nested deeper than the parser follows (serde_json
    // stops at 128): a parse error, and the connection goes on.
    good.send(&format!(r#"{{"method":"echo","id":2,"params":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000)));
    assert_eq!(error_code(&good.recv()), -32700);
    assert_eq!(good.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 3})), result(json!(3), Value::Null));
    let mut fresh = Client::connect(&f);
    assert_eq!(fresh.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 4})), result(json!(4), Value::Null));
}

#[test]
fn a_request_too_long_is_a_parse_error() {
    let f = start();
    let mut c = Client::connect(&f);
    let mut writer = c.stream.try_clone().unwrap();
    let request = json!({"jsonrpc": "2.0", "method": "echo", "params": {"pad": "x".repeat(2 << 20)}, "id": 1});
    // The server stops reading mid-request: write from another thread.
    let sender = thread::spawn(move || {
        let _ = writer.write_all(request.to_string().as_bytes());
    });
    let response = c.recv();
    assert_eq!(error_code(&response), -32700, "{response}");
    assert!(response["error"]["message"].as_str().unwrap().contains("longer than"), "{response}");
    c.assert_closed();
    sender.join().unwrap();
}

#[test]
fn invalid_requests_are_answered_with_invalid_request() {
    let f = start();
    let mut c = Client::connect(&f);
    let cases = [
        (json!(42), Value::Null),
        (json!("bdev_ilog_get_bdevs"), Value::Null),
        (json!([]), Value::Null),
        (json!({"jsonrpc": "2.0", "id": 1}), json!(1)),
        (json!({"jsonrpc": "2.0", "method": 7, "id": 2}), json!(2)),
        (json!({"jsonrpc": "1.0", "method": "echo", "id": 3}), json!(3)),
        (json!({"jsonrpc": 2.0, "method": "echo", "id": 4}), json!(4)),
        (json!({"jsonrpc": "2.0", "method": "echo", "params": 5, "id": 5}), json!(5)),
        (json!({"jsonrpc": "2.0", "method": "echo", "params": "x", "id": "six"}), json!("six")),
        (json!({"jsonrpc": "2.0", "method": "echo", "id": {"seven": 7}}), Value::Null),
        (json!({"jsonrpc": "2.0", "method": "echo", "id": true}), Value::Null),
        (json!({"jsonrpc": "2.0", "method": "echo", "extra": 1, "id": 8}), json!(8)),
        // Without an id: still answered, as the request cannot be trusted to be a notification.
        (json!({"jsonrpc": "2.0", "method": 9}), Value::Null),
    ];
    for (request, id) in cases {
        // A top-level number ends only where something follows it.
        c.send(&format!("{request}\n"));
        let response = c.recv();
        assert_eq!(
            response,
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32600, "message": "Invalid request"}}),
            "{request}"
        );
    }
    // The connection is still good, and nothing invalid reached the handler.
    assert_eq!(c.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 10})), result(json!(10), Value::Null));
    assert_eq!(f.fake.wait_calls(1).len(), 1);
}

#[test]
fn a_missing_jsonrpc_member_is_tolerated_as_by_spdk() {
    let f = start();
    let mut c = Client::connect(&f);
    assert_eq!(c.call(&json!({"method": "echo", "params": {"a": 1}, "id": 1})), result(json!(1), json!({"a": 1})));
}

#[test]
fn method_errors_are_passed_through() {
    let f = start();
    let mut c = Client::connect(&f);
    assert_eq!(
        c.call(&json!({"jsonrpc": "2.0", "method": "fail", "id": 1})),
        json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -19, "message": "No such device"}})
    );
    let response = c.call(&json!({"jsonrpc": "2.0", "method": "bdev_nope", "id": 2}));
    assert_eq!(error_code(&response), -32601);
    assert!(response["error"]["message"].as_str().unwrap().contains("bdev_nope"));
    // A panicking handler is an internal error, and the connection lives on.
    let response = c.call(&json!({"jsonrpc": "2.0", "method": "panic", "id": 3}));
    assert_eq!(response, json!({"jsonrpc": "2.0", "id": 3, "error": {"code": -32603, "message": "Internal error"}}));
    assert_eq!(c.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 4})), result(json!(4), Value::Null));
}

#[test]
fn a_batch_gets_one_array_of_its_responses() {
    let f = start();
    let mut c = Client::connect(&f);
    let response = c.call(&json!([
        {"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}, "id": 1},
        {"jsonrpc": "2.0", "method": "echo", "params": {"n": 2}},
        {"jsonrpc": "2.0", "method": "fail", "id": 3},
        5,
    ]));
    assert_eq!(
        response,
        json!([
            {"jsonrpc": "2.0", "id": 1, "result": {"n": 1}},
            {"jsonrpc": "2.0", "id": 3, "error": {"code": -19, "message": "No such device"}},
            {"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid request"}},
        ])
    );
    // Only notifications: nothing.
    c.send(r#"[{"jsonrpc":"2.0","method":"echo"},{"jsonrpc":"2.0","method":"echo"}]"#);
    assert!(c.silent_for(Duration::from_millis(100)));
    assert_eq!(f.fake.wait_calls(5).len(), 5);
}

#[test]
fn connections_are_served_concurrently() {
    let f = start();
    let mut blocked = Client::connect(&f);
    blocked.send(r#"{"jsonrpc":"2.0","method":"block","id":1}"#);
    f.fake.wait_calls(1);
    // Answered while the other connection's call is still in the handler.
    let mut quick = Client::connect(&f);
    assert_eq!(quick.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 2})), result(json!(2), Value::Null));
    f.fake.release();
    assert_eq!(blocked.recv(), result(json!(1), json!("released")));
}

#[test]
fn many_clients_at_once() {
    let f = start();
    let path = f.server.path().to_owned();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let stream = UnixStream::connect(&path).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut c = Client { stream, buf: Vec::new() };
                for j in 0..50 {
                    let id = json!(format!("{i}-{j}"));
                    let response = c.call(&json!({"jsonrpc": "2.0", "method": "echo", "params": [i, j], "id": id}));
                    assert_eq!(response, result(id, json!([i, j])));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn stop_closes_connections_and_removes_the_socket() {
    let dir = temp_dir();
    let path = dir.join("rpc.sock");
    let connect = || {
        let stream = UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client { stream, buf: Vec::new() }
    };
    let fake = Arc::new(Fake::default());
    let server = Server::start(&path, fake.clone()).unwrap();
    let mut c = connect();
    assert_eq!(c.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 1})), result(json!(1), Value::Null));
    server.stop();
    c.assert_closed();
    assert!(!path.exists());
    assert!(UnixStream::connect(&path).is_err());
    // The same path can be served again; dropping the server stops it too.
    let server = Server::start(&path, fake).unwrap();
    let mut c = connect();
    assert_eq!(c.call(&json!({"jsonrpc": "2.0", "method": "echo", "id": 2})), result(json!(2), Value::Null));
    drop(server);
    c.assert_closed();
    assert!(!path.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn start_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
    let dir = temp_dir();
    let path = dir.join("rpc.sock");
    // A listener that is gone leaves its socket file behind.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = Server::start(&path, Arc::new(Fake::default())).unwrap();
    let err = Server::start(&path, Arc::new(Fake::default())).err().expect("a second server on a live socket");
    assert_eq!(err.kind(), ErrorKind::AddrInUse);
    // The failed start left the live server's socket alone.
    assert!(UnixStream::connect(&path).is_ok());
    server.stop();

    let file = dir.join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    assert!(Server::start(&file, Arc::new(Fake::default())).is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    std::fs::remove_dir_all(dir).unwrap();
}
