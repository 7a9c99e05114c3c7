//! Every JSON-RPC method of `ilog_tgt` is sent a table of bad inputs over a
//! raw Unix socket (so that exact, malformed bytes go out): wrong types for
//! each param, missing required params, unknown params, positional params,
//! huge and out-of-range numbers, unknown and over-long names. Each must be
//! answered with a JSON-RPC error object (an integer code and a message):
//! never a result, a dropped connection or a hang. Then racing calls
//! (deletes of one bdev, creates and deletes, snapshots during deletes,
//! ...) must each be answered and leave the target consistent. After each
//! part, the target still serves: its bdevs are as they were, and the data
//! written over NBD before reads back the same.
//!
//! The method list comes from the target itself (`rpc_get_methods`): a
//! method it serves that the table lacks fails the test.
mod common;

use common::scratch_dir;

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Longest a call may take to be answered before it counts as a hang
/// (`bdev_ilog_delete` waits up to 2 s for other calls by design).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const INVALID_PARAMS: i64 = -32602;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const PARSE_ERROR: i64 = -32700;
const ENOENT: i64 = -2;
const EBUSY: i64 = -16;
const EEXIST: i64 = -17;
const ENODEV: i64 = -19;
const EINVAL: i64 = -22;
const ENOTSUP: i64 = -95;
const EUCLEAN: i64 = -117;
/// The base bdevs every test creates: 64 MiB each.
const BASE_BLOCKS: u64 = 16384;
const LONG: usize = 10_000;

// ---------------------------------------------------------------- target

/// A running `ilog_tgt`; its output goes to `tgt.log` in the scratch dir.
struct Tgt {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Tgt {
    fn start(dir: &Path) -> Tgt {
        let sock = dir.join("rpc.sock");
        let log = dir.join("tgt.log");
        let out = File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ilog_tgt"))
            .args(["-m", "0x3", "-r"])
            .arg(&sock)
            .args(["-L", "warn"])
            // Where a relative socket path would land.
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start ilog_tgt");
        let tgt = Tgt { child, sock, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = Conn::try_open(&tgt.sock) {
                if let Outcome::Answer(_) = c.send("spdk_get_version", None) {
                    return tgt;
                }
            }
            assert!(Instant::now() < deadline, "ilog_tgt did not answer on {}", tgt.sock.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn conn(&self) -> Conn {
        Conn::try_open(&self.sock)
            .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", self.sock.display(), self.tail()))
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("--- ilog_tgt log (last lines) ---\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- JSON-RPC

/// What came back for one request.
#[derive(Debug)]
enum Outcome {
    Answer(Value),
    /// The server closed the connection without answering.
    Dropped,
    /// No answer within [`ANSWER_TIMEOUT`].
    Hang,
    /// Bytes that are not one JSON value on a line.
    Garbled(String),
}

/// One client connection: requests go out as raw bytes, answers come back
/// one line each.
struct Conn {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl Conn {
    fn try_open(sock: &Path) -> std::io::Result<Conn> {
        let s = UnixStream::connect(sock)?;
        s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        s.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(Conn { writer: s.try_clone()?, reader: BufReader::new(s), next_id: 1000 })
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Outcome {
        // A server that stops reading (a request too long) may still have
        // answered: read whatever came back.
        let _ = self.writer.write_all(bytes);
        self.read_answer()
    }

    fn read_answer(&mut self) -> Outcome {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Outcome::Dropped,
            Ok(_) => serde_json::from_str(&line).map_or_else(|_| Outcome::Garbled(line.clone()), Outcome::Answer),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Outcome::Hang
            }
            Err(_) => Outcome::Dropped,
        }
    }

    /// A request with a fresh id and `params` (JSON text, or no member).
    fn send(&mut self, method: &str, params: Option<&str>) -> Outcome {
        self.next_id += 1;
        let mut text = format!(r#"{{"jsonrpc":"2.0","id":{},"method":{}"#, self.next_id, Value::from(method));
        if let Some(p) = params {
            text += r#","params":"#;
            text += p;
        }
        text += "}\n";
        match self.send_bytes(text.as_bytes()) {
            Outcome::Answer(a) if a["id"] != json!(self.next_id) => {
                Outcome::Garbled(format!("answer for another id (sent {}): {a}", self.next_id))
            }
            other => other,
        }
    }

    /// A call that must be answered: its result, or its error object.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let params = (!params.is_null()).then(|| params.to_string());
        match self.send(method, params.as_deref()) {
            Outcome::Answer(Value::Object(mut a)) => match (a.remove("result"), a.remove("error")) {
                (Some(r), None) => Ok(r),
                (None, Some(e)) => Err(e),
                _ => panic!("{method}: not a JSON-RPC response: {a:?}"),
            },
            other => panic!("{method} {params:?}: {other:?}"),
        }
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        let shown = params.to_string();
        self.call(method, params).unwrap_or_else(|e| panic!("{method} {shown}: {e}"))
    }
}

/// A value serde_json's `Value` cannot hold (2^64 as an integer literal),
/// written into the request text in place of this marker.
fn raw(literal: &str) -> Value {
    Value::String(format!("@@RAW:{literal}@@"))
}

fn render(v: &Value) -> String {
    let mut text = v.to_string();
    while let Some(at) = text.find("\"@@RAW:") {
        let end = at + text[at..].find("@@\"").expect("marker end") + 3;
        let literal = text[at + 7..end - 3].to_owned();
        text.replace_range(at..end, &literal);
    }
    text
}

const U64_MAX_PLUS_1: &str = "18446744073709551616";

// ---------------------------------------------------------------- the table

#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Str,
    U8,
    U32,
    U64,
    I32,
    Bool,
    Object,
    /// `bdev_ilog_compact`'s `mode`.
    Mode,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Presence {
    Required,
    /// `Option<T>`: null means absent.
    Optional,
    /// Has a default, but null is not a value of its type.
    Defaulted,
}
use Presence::{Defaulted, Optional, Required};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Invalid params (-32602): the params cannot be decoded.
    Invalid,
    Code(i64),
    /// Any error object.
    Error,
    /// An answer, result or error (a cursor past the end, ...).
    Answer,
}

struct Field {
    name: &'static str,
    kind: Kind,
    presence: Presence,
}

/// A method as the table knows it: its params and a harmless valid value
/// for each (executed, they fail or only read), and its own semantic cases.
struct Spec {
    method: &'static str,
    fields: Vec<Field>,
    /// Valid params whose execution changes nothing (an unknown bdev, a
    /// name taken): a server that wrongly accepted a bad case built on
    /// them answers with an error other than -32602, or reads.
    base: Value,
}

#[derive(Clone)]
struct Case {
    method: String,
    label: String,
    /// JSON text of `params`; `None`: no params member.
    params: Option<String>,
    expect: Expect,
}

fn field(name: &'static str, kind: Kind, presence: Presence) -> Field {
    Field { name, kind, presence }
}

fn specs(dir: &Path) -> Vec<Spec> {
    use Kind::*;
    let never_nbd = dir.join("never.nbd").display().to_string();
    let never_stream = dir.join("never.stream").display().to_string();
    let s = |method, fields, base| Spec { method, fields, base };
    vec![
        s(
            "bdev_ilog_create",
            vec![
                field("name", Str, Required),
                field("base_bdev_name", Str, Required),
                field("stripe_size_kib", U64, Optional),
                field("segment_size_kib", U64, Optional),
                field("log_percent", U8, Optional),
                field("max_volumes", U32, Optional),
                field("replay_window_mib", U64, Optional),
            ],
            json!({"name": "ilog9", "base_bdev_name": "NoSuchBase"}),
        ),
        s("bdev_ilog_delete", vec![field("name", Str, Required)], json!({"name": "NoSuchBdev"})),
        s("bdev_ilog_get_bdevs", vec![field("name", Str, Optional)], json!({"name": "NoSuchBdev"})),
        s(
            "bdev_ilog_snapshot",
            vec![field("name", Str, Required), field("snapshot_name", Str, Optional)],
            json!({"name": "NoSuchBdev"}),
        ),
        s("bdev_ilog_get_volumes", vec![field("name", Str, Required)], json!({"name": "NoSuchBdev"})),
        s(
            "bdev_ilog_delete_volume",
            vec![field("name", Str, Required), field("volume", Str, Required)],
            json!({"name": "NoSuchBdev", "volume": "snap-1"}),
        ),
        s(
            "bdev_ilog_log_read",
            vec![
                field("name", Str, Required),
                field("cursor", U64, Defaulted),
                field("count", U32, Required),
                field("with_data", Bool, Defaulted),
            ],
            json!({"name": "NoSuchBdev", "count": 1}),
        ),
        s("bdev_ilog_get_stats", vec![field("name", Str, Required)], json!({"name": "NoSuchBdev"})),
        s(
            "bdev_ilog_compact",
            vec![
                field("name", Str, Required),
                field("volume", Str, Optional),
                field("mode", Mode, Defaulted),
                field("background", Bool, Defaulted),
            ],
            json!({"name": "NoSuchBdev"}),
        ),
        s(
            "bdev_ilog_set_policy",
            vec![field("name", Str, Required), field("policy", Object, Required)],
            json!({"name": "NoSuchBdev", "policy": {}}),
        ),
        s("bdev_ilog_get_policy", vec![field("name", Str, Required)], json!({"name": "NoSuchBdev"})),
        s(
            "bdev_ilog_event",
            vec![field("name", Str, Required), field("event", Str, Required)],
            json!({"name": "NoSuchBdev", "event": "e"}),
        ),
        s(
            "bdev_ilog_diff",
            vec![
                field("name", Str, Required),
                field("volume", Str, Required),
                field("base_volume", Str, Optional),
                field("lba_start", U64, Optional),
                field("lba_count", U64, Optional),
            ],
            json!({"name": "NoSuchBdev", "volume": "keep"}),
        ),
        s(
            "bdev_ilog_copy",
            vec![
                field("name", Str, Required),
                field("volume", Str, Required),
                field("base_volume", Str, Optional),
                field("lba_start", U64, Optional),
                field("lba_count", U64, Optional),
                field("target", Str, Required),
                field("resume_token", Str, Optional),
            ],
            json!({"name": "NoSuchBdev", "volume": "keep", "target": never_stream}),
        ),
        s(
            "bdev_ilog_restore",
            vec![field("name", Str, Required), field("source", Str, Required), field("resume_token", Str, Optional)],
            json!({"name": "NoSuchBdev", "source": never_stream}),
        ),
        s("bdev_ilog_get_jobs", vec![field("name", Str, Optional)], json!({"name": "NoSuchBdev"})),
        s(
            "bdev_ilog_rebuild_primary",
            vec![
                field("name", Str, Required),
                field("primary_bdev_name", Str, Required),
                field("full", Bool, Defaulted),
            ],
            json!({"name": "NoSuchBdev", "primary_bdev_name": "Malloc1"}),
        ),
        s(
            "bdev_error_create",
            vec![field("base_name", Str, Required), field("uuid", Str, Optional)],
            json!({"base_name": "NoSuchBase"}),
        ),
        s("bdev_error_delete", vec![field("name", Str, Required)], json!({"name": "NoSuchBdev"})),
        s(
            "bdev_error_inject_error",
            vec![
                field("name", Str, Required),
                field("io_type", Str, Required),
                field("error_type", Str, Required),
                field("nvme_sct", U32, Optional),
                field("nvme_sc", U32, Optional),
                field("num", U32, Optional),
                field("queue_depth", U64, Optional),
                field("corrupt_offset", U64, Optional),
                field("corrupt_value", U8, Optional),
            ],
            json!({"name": "NoSuchBdev", "io_type": "all", "error_type": "failure"}),
        ),
        s(
            "bdev_malloc_create",
            vec![
                field("name", Str, Optional),
                field("num_blocks", U64, Required),
                field("block_size", U32, Required),
                field("uuid", Str, Optional),
                field("physical_block_size", U32, Optional),
                field("optimal_io_boundary", U32, Optional),
                field("md_size", U32, Optional),
                field("md_interleave", Bool, Optional),
                field("dif_type", U32, Optional),
                field("dif_is_head_of_md", Bool, Optional),
                field("dif_pi_format", U32, Optional),
                field("numa_id", I32, Optional),
            ],
            // Executed, this fails (-95: metadata is not supported) before
            // it looks at the name, so that a new name fails too.
            json!({"name": "Malloc0", "num_blocks": 16, "block_size": 4096, "md_size": 8}),
        ),
        s("bdev_malloc_delete", vec![field("name", Str, Required)], json!({"name": "NoSuchBdev"})),
        s(
            "bdev_aio_create",
            vec![
                field("name", Str, Required),
                field("filename", Str, Required),
                field("block_size", U32, Optional),
                field("readonly", Bool, Optional),
                field("fallocate", Bool, Optional),
                field("uuid", Str, Optional),
                field("nowait", Bool, Optional),
            ],
            json!({"name": "Malloc0", "filename": "/nonexistent/ilog-bad-inputs.img"}),
        ),
        s("bdev_aio_delete", vec![field("name", Str, Required)], json!({"name": "NoSuchBdev"})),
        s("bdev_get_bdevs", vec![field("name", Str, Optional)], json!({"name": "NoSuchBdev"})),
        s(
            "nbd_start_disk",
            vec![field("bdev_name", Str, Required), field("nbd_device", Str, Required)],
            json!({"bdev_name": "NoSuchBdev", "nbd_device": never_nbd}),
        ),
        s("nbd_stop_disk", vec![field("nbd_device", Str, Required)], json!({"nbd_device": "/nowhere.nbd"})),
        s("nbd_get_disks", vec![field("nbd_device", Str, Optional)], json!({"nbd_device": "/nowhere.nbd"})),
        s(
            "framework_get_config",
            vec![field("name", Str, Required), field("with_batches", Bool, Defaulted)],
            json!({"name": "bdev"}),
        ),
        // SPDK's rpc_get_methods takes these two.
        s(
            "rpc_get_methods",
            vec![field("current", Bool, Optional), field("include_aliases", Bool, Optional)],
            json!({}),
        ),
        // SPDK answers these "requires no parameters" when given any.
        s("spdk_get_version", vec![], Value::Null),
        s("save_config", vec![], Value::Null),
        s("framework_get_subsystems", vec![], Value::Null),
        s("framework_get_reactors", vec![], Value::Null),
    ]
}

/// Values of the wrong type (or out of range) for a param of `kind`.
fn wrong_values(kind: Kind, presence: Presence) -> Vec<(String, Value)> {
    let mut v: Vec<(&str, Value)> = match kind {
        Kind::Str => vec![
            ("number", json!(7)),
            ("negative number", json!(-1)),
            ("float", json!(1.5)),
            ("1e300", json!(1e300)),
            ("2^64 literal", raw(U64_MAX_PLUS_1)),
            ("bool", json!(true)),
            ("array", json!(["x"])),
            ("empty array", json!([])),
            ("object", json!({"a": "b"})),
        ],
        Kind::U8 | Kind::U32 | Kind::U64 | Kind::I32 => {
            let mut v = vec![
                ("string", json!("12")),
                ("empty string", json!("")),
                ("float", json!(1.5)),
                ("1e300", json!(1e300)),
                ("-1e300", json!(-1e300)),
                ("2^64 literal", raw(U64_MAX_PLUS_1)),
                ("2^64 as a float", raw("1.8446744073709552e19")),
                ("huge literal", raw("123456789012345678901234567890123456789")),
                ("bool", json!(true)),
                ("array", json!([1])),
                ("object", json!({})),
            ];
            match kind {
                Kind::U8 => v.extend([("-1", json!(-1)), ("256", json!(256))]),
                Kind::U32 => v.extend([("-1", json!(-1)), ("2^32", json!(1u64 << 32))]),
                Kind::U64 => v.push(("-1", json!(-1))),
                _ => v.extend([("2^31", json!(1u64 << 31)), ("-2^31-1", json!(-(1i64 << 31) - 1))]),
            }
            v
        }
        Kind::Bool => vec![
            ("string", json!("true")),
            ("number 1", json!(1)),
            ("number 0", json!(0)),
            ("array", json!([true])),
            ("object", json!({})),
        ],
        Kind::Object => {
            vec![("string", json!("{}")), ("number", json!(7)), ("array", json!([])), ("bool", json!(true))]
        }
        Kind::Mode => vec![
            ("unknown mode", json!("defrag")),
            ("empty string", json!("")),
            ("upper case", json!("IN_PLACE")),
            ("number", json!(0)),
            ("array", json!(["in_place"])),
        ],
    };
    if presence != Optional {
        v.push(("null", Value::Null));
    }
    v.into_iter().map(|(l, v)| (l.to_owned(), v)).collect()
}

/// The cases every method gets from its params alone.
fn generic_cases(spec: &Spec) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |label: String, params: Option<String>, expect| {
        cases.push(Case { method: spec.method.to_owned(), label, params, expect })
    };
    let base = spec.base.as_object().cloned().unwrap_or_default();
    let with = |name: &str, value: Value| {
        let mut p = base.clone();
        p.insert(name.to_owned(), value);
        Some(render(&Value::Object(p)))
    };
    // Not an object, array or null: an invalid request, whatever the method.
    add("params: a string".into(), Some(r#""ilog0""#.into()), Expect::Code(INVALID_REQUEST));
    add("params: a number".into(), Some("7".into()), Expect::Code(INVALID_REQUEST));
    add("params: a bool".into(), Some("true".into()), Expect::Code(INVALID_REQUEST));
    // SPDK's methods take named params only.
    add("params: an empty array".into(), Some("[]".into()), Expect::Invalid);
    // In field order, null for the optional ones the base leaves out, up
    // to one that null is no value of.
    let positional: Vec<Value> = spec
        .fields
        .iter()
        .map_while(|f| match base.get(f.name) {
            Some(v) => Some(v.clone()),
            None => (f.presence == Optional).then_some(Value::Null),
        })
        .collect();
    add("params: positional".into(), Some(render(&json!(positional))), Expect::Invalid);
    add("unknown field".into(), with("bogus", json!(1)), Expect::Invalid);
    add("unknown field: empty key".into(), with("", json!(0)), Expect::Invalid);
    add("unknown field: upper-case twin".into(), with("NAME", json!("x")), Expect::Invalid);
    if spec.fields.iter().any(|f| f.presence == Required) {
        add("params: absent".into(), None, Expect::Invalid);
        add("params: null".into(), Some("null".into()), Expect::Invalid);
        add("params: {}".into(), Some("{}".into()), Expect::Invalid);
    }
    for f in &spec.fields {
        if f.presence == Required {
            let mut p = base.clone();
            p.remove(f.name);
            add(format!("missing {}", f.name), Some(render(&Value::Object(p))), Expect::Invalid);
        }
        for (what, value) in wrong_values(f.kind, f.presence) {
            add(format!("{}: {what}", f.name), with(f.name, value), Expect::Invalid);
        }
        if f.kind == Kind::Str {
            // Semantically wrong on the harmless base: still an error.
            add(format!("{}: {LONG} chars", f.name), with(f.name, json!("n".repeat(LONG))), Expect::Error);
            add(format!("{}: with a NUL", f.name), with(f.name, json!("No\u{0}Such")), Expect::Error);
            add(format!("{}: empty", f.name), with(f.name, json!("")), Expect::Error);
        }
    }
    cases
}

/// Bad inputs that need the target's state: Malloc0 claimed by ilog0
/// (exported at `ilog0.nbd`, with volume `keep` exported at `keep.nbd`),
/// Malloc1 and Tiny (16 blocks) free, Aio0 on `aio.img`.
fn semantic_cases(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    let path = |name: &str| dir.join(name).display().to_string();
    let mut add = |method: &str, label: &str, params: Value, expect: Expect| {
        let params = Some(render(&params));
        cases.push(Case { method: method.to_owned(), label: format!("state: {label}"), params, expect })
    };
    let long = "n".repeat(LONG);

    let m = "bdev_ilog_create";
    add(m, "unknown base", json!({"name": "ilog9", "base_bdev_name": "NoSuchBase"}), Expect::Code(ENODEV));
    add(m, "claimed base", json!({"name": "ilog9", "base_bdev_name": "Malloc0"}), Expect::Code(EBUSY));
    add(m, "name taken by an ilog", json!({"name": "ilog0", "base_bdev_name": "Malloc1"}), Expect::Code(EEXIST));
    add(m, "name taken by its base", json!({"name": "Malloc1", "base_bdev_name": "Malloc1"}), Expect::Code(EEXIST));
    add(m, "name of a volume", json!({"name": "ilog0@keep", "base_bdev_name": "Malloc1"}), Expect::Invalid);
    add(m, "name with a '@'", json!({"name": "a@b", "base_bdev_name": "Malloc1"}), Expect::Invalid);
    add(m, "name with a NUL", json!({"name": "il\u{0}og", "base_bdev_name": "Malloc1"}), Expect::Invalid);
    add(m, "base an ilog bdev", json!({"name": "ilog9", "base_bdev_name": "ilog0"}), Expect::Error);
    add(m, "base a volume", json!({"name": "ilog9", "base_bdev_name": "ilog0@keep"}), Expect::Error);
    add(m, "base too small", json!({"name": "ilog9", "base_bdev_name": "Tiny"}), Expect::Error);
    // On the claimed base: accepted options would still fail (-16).
    for (field, value, expect) in [
        ("log_percent", json!(0), Expect::Invalid),
        ("log_percent", json!(96), Expect::Invalid),
        ("log_percent", json!(101), Expect::Invalid),
        ("log_percent", json!(255), Expect::Invalid),
        ("stripe_size_kib", json!(0), Expect::Invalid),
        ("stripe_size_kib", json!(3), Expect::Error),
        ("stripe_size_kib", json!(u64::MAX), Expect::Invalid),
        ("segment_size_kib", json!(0), Expect::Invalid),
        ("segment_size_kib", json!(u64::MAX), Expect::Invalid),
        ("max_volumes", json!(0), Expect::Invalid),
        ("max_volumes", json!(u32::MAX), Expect::Error),
        ("replay_window_mib", json!(0), Expect::Invalid),
        ("replay_window_mib", json!(u64::MAX), Expect::Error),
    ] {
        add(
            m,
            &format!("{field} {value}"),
            json!({"name": "ilog9", "base_bdev_name": "Malloc0", field: value}),
            expect,
        );
    }

    for (label, names, expect) in [
        ("not an array", json!("Malloc2"), Expect::Invalid),
        ("not strings", json!([7]), Expect::Invalid),
        ("the base", json!(["Malloc1"]), Expect::Invalid),
        ("one twice", json!(["Malloc2", "Malloc2"]), Expect::Invalid),
        ("unknown", json!(["NoSuchBdev"]), Expect::Code(ENODEV)),
        ("claimed", json!(["Malloc0"]), Expect::Code(EBUSY)),
        ("an ilog bdev", json!(["ilog0"]), Expect::Code(ENODEV)),
        ("a volume bdev", json!(["ilog0@keep"]), Expect::Code(ENODEV)),
    ] {
        let p = json!({"name": "ilog9", "base_bdev_name": "Malloc1", "primary_bdev_names": names});
        add(m, &format!("primary_bdev_names {label}"), p, expect);
    }

    let m = "bdev_ilog_rebuild_primary";
    let rebuild = |primary: &str| json!({"name": "ilog0", "primary_bdev_name": primary});
    add(m, "not a primary, none degraded", rebuild("Malloc1"), Expect::Code(EINVAL));
    add(m, "its own base", rebuild("Malloc0"), Expect::Code(EINVAL));
    add(m, "an unknown primary", rebuild("NoSuchBdev"), Expect::Code(ENODEV));
    add(m, "an ilog bdev", rebuild("ilog0"), Expect::Code(ENODEV));
    add(m, "of a volume bdev", json!({"name": "ilog0@keep", "primary_bdev_name": "Malloc1"}), Expect::Code(ENODEV));

    let m = "bdev_error_create";
    add(m, "claimed base", json!({"base_name": "Malloc0"}), Expect::Code(EBUSY));
    add(m, "an ilog bdev", json!({"base_name": "ilog0"}), Expect::Code(ENODEV));
    add(m, "a volume bdev", json!({"base_name": "ilog0@keep"}), Expect::Code(ENODEV));
    add(m, "uuid not a uuid", json!({"base_name": "Malloc1", "uuid": "not-a-uuid"}), Expect::Invalid);

    let m = "bdev_error_delete";
    add(m, "a malloc bdev", json!({"name": "Malloc1"}), Expect::Code(ENODEV));
    add(m, "an ilog bdev", json!({"name": "ilog0"}), Expect::Code(ENODEV));

    let m = "bdev_error_inject_error";
    let inject = |io: &str, error: &str| json!({"name": "Malloc1", "io_type": io, "error_type": error});
    add(m, "not an error bdev", inject("all", "failure"), Expect::Code(ENODEV));
    add(m, "an ilog bdev", json!({"name": "ilog0", "io_type": "all", "error_type": "failure"}), Expect::Code(ENODEV));
    add(m, "unknown io_type", inject("erase", "failure"), Expect::Invalid);
    add(m, "io_type upper case", inject("READ", "failure"), Expect::Invalid);
    add(m, "clear as error_type", inject("read", "clear"), Expect::Invalid);
    add(m, "unknown error_type", inject("read", "explode"), Expect::Invalid);
    add(m, "nvme_failure without a status", inject("read", "nvme_failure"), Expect::Code(EINVAL));
    let mut p = inject("read", "failure");
    p["nvme_sc"] = json!(1);
    add(m, "an NVMe status with failure", p, Expect::Code(EINVAL));
    add(m, "corrupt_data without a value", inject("read", "corrupt_data"), Expect::Code(EINVAL));

    let m = "bdev_ilog_delete";
    add(m, "exported", json!({"name": "ilog0"}), Expect::Code(EBUSY));
    add(m, "a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));
    add(m, "a base bdev", json!({"name": "Malloc0"}), Expect::Code(ENODEV));
    add(m, "other case", json!({"name": "ILOG0"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_get_bdevs";
    add(m, "a base bdev", json!({"name": "Malloc0"}), Expect::Code(ENODEV));
    add(m, "a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_snapshot";
    for (label, name) in [
        ("name taken", "keep".to_owned()),
        ("a '/'", "bad/name".into()),
        ("a space", "a b".into()),
        ("a '@'", "x@y".into()),
        ("79 chars", "v".repeat(79)),
        ("10000 chars", long.clone()),
        ("a NUL", "a\u{0}b".into()),
        ("non-ASCII", "caf\u{e9}".into()),
    ] {
        // A NUL is refused as it is decoded (no C string), the rest by the engine.
        let expect = match label {
            "name taken" => Expect::Code(EEXIST),
            "a NUL" => Expect::Invalid,
            _ => Expect::Code(EINVAL),
        };
        add(m, &format!("snapshot_name with {label}"), json!({"name": "ilog0", "snapshot_name": name}), expect);
    }
    add(m, "of a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));

    add("bdev_ilog_get_volumes", "of a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_delete_volume";
    add(m, "unknown volume", json!({"name": "ilog0", "volume": "nope"}), Expect::Code(ENOENT));
    add(m, "exported volume", json!({"name": "ilog0", "volume": "keep"}), Expect::Code(EBUSY));
    add(m, "10000-char volume", json!({"name": "ilog0", "volume": long}), Expect::Error);
    add(m, "volume given as its bdev", json!({"name": "ilog0", "volume": "ilog0@keep"}), Expect::Error);
    add(m, "of a volume bdev", json!({"name": "ilog0@keep", "volume": "keep"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_log_read";
    for count in [json!(0), json!(4097), json!(u32::MAX), json!(1u64 << 32)] {
        add(m, &format!("count {count}"), json!({"name": "ilog0", "count": count}), Expect::Invalid);
    }
    // A cursor no read handed out: no entries (or an error), but answered.
    add(m, "cursor u64::MAX", json!({"name": "ilog0", "count": 1, "cursor": u64::MAX}), Expect::Answer);
    add(m, "of a volume bdev", json!({"name": "ilog0@keep", "count": 1}), Expect::Code(ENODEV));

    add("bdev_ilog_get_stats", "of a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_compact";
    add(m, "unknown volume", json!({"name": "ilog0", "volume": "nope"}), Expect::Error);
    add(m, "unknown volume, baseline", json!({"name": "ilog0", "volume": "nope", "mode": "baseline"}), Expect::Error);
    add(m, "10000-char volume", json!({"name": "ilog0", "volume": long}), Expect::Error);
    add(m, "of a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_set_policy";
    let too_long: Map<String, Value> = (0..600).map(|i| (format!("event-{i}"), json!(["snapshot"]))).collect();
    for (label, policy) in [
        ("keep_last a string", json!({"retention": {"keep_last": "all"}})),
        ("keep_last -1", json!({"retention": {"keep_last": -1}})),
        ("an unknown key", json!({"snapshots": {"interval_s": 60}})),
        ("an unknown nested key", json!({"snapshot": {"every": 60}})),
        ("interval_s 0", json!({"snapshot": {"interval_s": 0}})),
        ("interval_s 1e300", json!({"snapshot": {"interval_s": 1e300}})),
        ("interval_s 2^64", json!({"snapshot": {"interval_s": raw(U64_MAX_PLUS_1)}})),
        ("interval_s a string", json!({"snapshot": {"interval_s": "60"}})),
        ("log_used_pct 0", json!({"compaction": {"log_used_pct": 0}})),
        ("log_used_pct 101", json!({"compaction": {"log_used_pct": 101}})),
        ("garbage_pct 101", json!({"compaction": {"garbage_pct": 101}})),
        ("an unknown action", json!({"events": {"on": {"x": ["explode"]}}})),
        ("an empty event name", json!({"events": {"on": {"": ["snapshot"]}}})),
        ("a snapshot loop", json!({"events": {"on_snapshot": ["snapshot"]}})),
        ("a retention action", json!({"retention": {"action": "shred"}})),
        ("an on_full", json!({"retention": {"on_full": "panic"}})),
        ("a template scheme without template", json!({"volume_id": {"scheme": "template"}})),
        ("a template with a '/'", json!({"volume_id": {"scheme": "template", "template": "a/%n"}})),
        ("a scheme number", json!({"volume_id": {"scheme": 7}})),
        ("over 8 KiB", json!({"events": {"on": too_long}})),
    ] {
        add(m, &format!("policy with {label}"), json!({"name": "ilog0", "policy": policy}), Expect::Code(EINVAL));
    }
    add(m, "of a volume bdev", json!({"name": "ilog0@keep", "policy": {}}), Expect::Code(ENODEV));

    add("bdev_ilog_get_policy", "of a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_event";
    add(m, "an event nothing binds", json!({"name": "ilog0", "event": "nope"}), Expect::Code(EINVAL));
    add(m, "a 10000-char event", json!({"name": "ilog0", "event": long}), Expect::Code(EINVAL));

    let m = "bdev_ilog_diff";
    add(m, "unknown volume", json!({"name": "ilog0", "volume": "nope"}), Expect::Code(ENOENT));
    add(
        m,
        "unknown base volume",
        json!({"name": "ilog0", "volume": "keep", "base_volume": "nope"}),
        Expect::Code(ENOENT),
    );
    add(m, "base same as volume", json!({"name": "ilog0", "volume": "keep", "base_volume": "keep"}), Expect::Invalid);
    add(
        m,
        "lba_start past the end",
        json!({"name": "ilog0", "volume": "keep", "lba_start": u64::MAX}),
        Expect::Code(EINVAL),
    );
    add(m, "lba_count 0", json!({"name": "ilog0", "volume": "keep", "lba_count": 0}), Expect::Code(EINVAL));
    add(
        m,
        "lba_count past the end",
        json!({"name": "ilog0", "volume": "keep", "lba_count": u64::MAX}),
        Expect::Code(EINVAL),
    );
    add(m, "of a volume bdev", json!({"name": "ilog0@keep", "volume": "keep"}), Expect::Code(ENODEV));

    let m = "bdev_ilog_copy";
    let stream = dir.join("bad.stream").display().to_string();
    let copy = |extra: Value| {
        let mut p = json!({"name": "ilog0", "volume": "keep", "target": stream});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    for (label, extra, expect) in [
        ("unknown volume", json!({"volume": "nope"}), Expect::Code(ENOENT)),
        ("a base not older", json!({"base_volume": "nope"}), Expect::Code(ENOENT)),
        ("a range past the end", json!({"lba_start": u64::MAX}), Expect::Code(EINVAL)),
        ("a claimed base as target", json!({"target": "Malloc0"}), Expect::Code(EBUSY)),
        ("an ilog bdev as target", json!({"target": "ilog0"}), Expect::Code(EINVAL)),
        ("a volume bdev as target", json!({"target": "ilog0@keep"}), Expect::Code(EINVAL)),
        ("an unknown bdev as target", json!({"target": "NoSuchBdev"}), Expect::Code(ENODEV)),
        ("a file in no directory", json!({"target": "/no/such/dir/s"}), Expect::Code(ENOENT)),
        ("a resume token of junk", json!({"resume_token": "zz"}), Expect::Code(EINVAL)),
        ("a long resume token", json!({"resume_token": long}), Expect::Code(EINVAL)),
    ] {
        add(m, label, copy(extra), expect);
    }
    add(m, "of a volume bdev", json!({"name": "ilog0@keep", "volume": "keep", "target": stream}), Expect::Code(ENODEV));

    let m = "bdev_ilog_restore";
    let not_a_stream = dir.join("not-a-stream").display().to_string();
    std::fs::write(&not_a_stream, vec![0x5a; 8192]).unwrap();
    add(m, "a missing file", json!({"name": "ilog0", "source": "/no/such/dir/s"}), Expect::Code(ENOENT));
    add(m, "a file that is no stream", json!({"name": "ilog0", "source": not_a_stream}), Expect::Code(EUCLEAN));
    add(m, "a bdev that holds no stream", json!({"name": "ilog0", "source": "Malloc1"}), Expect::Code(EUCLEAN));
    add(m, "into a volume bdev", json!({"name": "ilog0@keep", "source": not_a_stream}), Expect::Error);
    add(m, "into a claimed base", json!({"name": "Malloc0", "source": not_a_stream}), Expect::Code(EBUSY));

    add("bdev_ilog_get_jobs", "of an unknown bdev", json!({"name": "NoSuchBdev"}), Expect::Code(ENODEV));

    let m = "bdev_malloc_create";
    let mc = |extra: Value| {
        let mut p = json!({"name": "MallocBad", "num_blocks": 16, "block_size": 4096});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    for (label, extra, expect) in [
        ("num_blocks 0", json!({"num_blocks": 0}), Expect::Invalid),
        ("block_size 0", json!({"block_size": 0}), Expect::Invalid),
        ("block_size 1000", json!({"block_size": 1000}), Expect::Invalid),
        ("block_size 256", json!({"block_size": 256}), Expect::Invalid),
        ("block_size 131072", json!({"block_size": 131072}), Expect::Invalid),
        ("block_size u32::MAX", json!({"block_size": u32::MAX}), Expect::Invalid),
        ("num_blocks u64::MAX", json!({"num_blocks": u64::MAX}), Expect::Error),
        ("over 1 TiB", json!({"num_blocks": (1u64 << 28) + 1}), Expect::Error),
        ("name taken by a base", json!({"name": "Malloc0"}), Expect::Code(EEXIST)),
        ("name taken by an ilog", json!({"name": "ilog0"}), Expect::Code(EEXIST)),
        ("name of a volume", json!({"name": "ilog0@keep"}), Expect::Invalid),
        ("name with a '/'", json!({"name": "a/b"}), Expect::Invalid),
        ("md_size 8", json!({"md_size": 8}), Expect::Code(ENOTSUP)),
        ("md_interleave", json!({"md_interleave": true}), Expect::Code(ENOTSUP)),
        ("dif_type 1", json!({"dif_type": 1}), Expect::Code(ENOTSUP)),
        ("dif_pi_format 1", json!({"dif_pi_format": 1}), Expect::Code(ENOTSUP)),
        ("physical_block_size 1000", json!({"physical_block_size": 1000}), Expect::Invalid),
        ("physical_block_size under block_size", json!({"physical_block_size": 512}), Expect::Invalid),
        // SPDK parses the uuid and refuses one that is not.
        ("uuid not a uuid", json!({"name": "MallocUuid", "uuid": "not-a-uuid"}), Expect::Error),
        // SPDK's decoder refuses a string with a NUL: it is no C string.
        ("name with a NUL", json!({"name": "Mal\u{0}loc"}), Expect::Invalid),
    ] {
        add(m, label, mc(extra), expect);
    }

    let m = "bdev_malloc_delete";
    add(m, "claimed", json!({"name": "Malloc0"}), Expect::Code(EBUSY));
    add(m, "an ilog bdev", json!({"name": "ilog0"}), Expect::Code(ENODEV));
    add(m, "a volume bdev", json!({"name": "ilog0@keep"}), Expect::Code(ENODEV));
    add(m, "an aio bdev", json!({"name": "Aio0"}), Expect::Code(ENODEV));

    let m = "bdev_aio_create";
    let mut n = 0;
    let mut aio = |name: &str, filename: String| {
        n += 1;
        // A new name each time: one wrongly created must not hide the next.
        let name = if name == "AioBad" { format!("AioBad{n}") } else { name.to_owned() };
        json!({"name": name, "filename": filename})
    };
    add(m, "no such file", aio("AioBad", path("missing/none.img")), Expect::Error);
    add(m, "a directory", aio("AioBad", dir.display().to_string()), Expect::Error);
    add(m, "empty filename", aio("AioBad", String::new()), Expect::Error);
    add(m, "10000-char filename", aio("AioBad", format!("/tmp/{long}")), Expect::Error);
    add(m, "an empty file", aio("AioBad", path("empty.img")), Expect::Error);
    add(m, "a file under a block", aio("AioBad", path("short.img")), Expect::Error);
    add(m, "a FIFO", aio("AioBad", path("fifo")), Expect::Error);
    add(m, "the RPC socket", aio("AioBad", path("rpc.sock")), Expect::Error);
    add(m, "name taken", aio("Malloc0", path("aio2.img")), Expect::Code(EEXIST));
    add(m, "name empty", aio("", path("aio2.img")), Expect::Invalid);
    add(m, "name with a '@'", aio("a@b", path("aio2.img")), Expect::Invalid);
    add(m, "name with a NUL", aio("Ai\u{0}o", path("aio2.img")), Expect::Invalid);
    for (label, extra) in [
        ("block_size 1000", json!({"block_size": 1000})),
        ("block_size 131072", json!({"block_size": 131072})),
        ("readonly", json!({"readonly": true})),
    ] {
        let mut p = aio("AioBad", path("aio2.img"));
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        add(m, label, p, if label == "readonly" { Expect::Error } else { Expect::Invalid });
    }

    let m = "bdev_aio_delete";
    add(m, "a malloc bdev", json!({"name": "Malloc1"}), Expect::Code(ENODEV));
    add(m, "an ilog bdev", json!({"name": "ilog0"}), Expect::Code(ENODEV));

    add("bdev_get_bdevs", "other case", json!({"name": "MALLOC0"}), Expect::Code(ENODEV));

    let m = "nbd_start_disk";
    let nbd = |bdev: &str, device: String| json!({"bdev_name": bdev, "nbd_device": device});
    add(m, "claimed base", nbd("Malloc0", path("n1.nbd")), Expect::Code(EBUSY));
    add(m, "unknown volume", nbd("ilog0@nope", path("n1.nbd")), Expect::Error);
    add(m, "a 10000-char bdev", nbd(&long, path("n1.nbd")), Expect::Code(ENODEV));
    add(m, "device already exporting", nbd("ilog0", path("ilog0.nbd")), Expect::Code(EBUSY));
    add(m, "device not loopback", nbd("ilog0", "10.1.2.3:10809".into()), Expect::Invalid);
    add(m, "device port 99999", nbd("ilog0", "127.0.0.1:99999".into()), Expect::Error);
    add(m, "device port missing", nbd("ilog0", "127.0.0.1:".into()), Expect::Error);
    add(m, "device empty", nbd("ilog0", String::new()), Expect::Error);
    add(m, "device in no directory", nbd("ilog0", path("missing/n.nbd")), Expect::Error);
    add(m, "device 10000 chars", nbd("ilog0", format!("/tmp/{long}")), Expect::Error);
    add(m, "device a directory", nbd("ilog0", dir.display().to_string()), Expect::Error);
    add(m, "device a regular file", nbd("Malloc1", path("aio.img")), Expect::Error);
    add(m, "device the RPC socket", nbd("Malloc1", path("rpc.sock")), Expect::Error);

    let m = "nbd_stop_disk";
    add(m, "the RPC socket", json!({"nbd_device": path("rpc.sock")}), Expect::Code(ENODEV));
    add(m, "a bdev name", json!({"nbd_device": "ilog0"}), Expect::Code(ENODEV));

    add("nbd_get_disks", "a bdev name", json!({"nbd_device": "ilog0"}), Expect::Code(ENODEV));

    let m = "framework_get_config";
    add(m, "unknown subsystem", json!({"name": "nope"}), Expect::Invalid);
    add(m, "other case", json!({"name": "BDEV"}), Expect::Invalid);
    cases
}

/// Requests that are wrong as requests, whatever the method: (label, bytes,
/// the code, whether the server may close the connection after answering).
fn request_cases() -> Vec<(String, Vec<u8>, i64, bool)> {
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"bdev_ilog_set_policy","params":{{"name":"ilog0","policy":{}1{}}}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let huge_name = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs","params":{{"name":"{}"}}}}"#,
        "n".repeat(2 << 20)
    );
    let mut cases: Vec<(String, Vec<u8>, i64, bool)> = [
        ("method upper case", r#"{"jsonrpc":"2.0","id":1,"method":"BDEV_GET_BDEVS"}"#, METHOD_NOT_FOUND),
        ("method empty", r#"{"jsonrpc":"2.0","id":1,"method":""}"#, METHOD_NOT_FOUND),
        ("method unknown ilog", r#"{"jsonrpc":"2.0","id":1,"method":"bdev_ilog_nope"}"#, METHOD_NOT_FOUND),
        ("method with a NUL", r#"{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs\u0000"}"#, METHOD_NOT_FOUND),
        ("method a number", r#"{"jsonrpc":"2.0","id":1,"method":5}"#, INVALID_REQUEST),
        ("method null", r#"{"jsonrpc":"2.0","id":1,"method":null}"#, INVALID_REQUEST),
        ("method missing", r#"{"jsonrpc":"2.0","id":1}"#, INVALID_REQUEST),
        ("jsonrpc 1.0", r#"{"jsonrpc":"1.0","id":1,"method":"bdev_get_bdevs"}"#, INVALID_REQUEST),
        ("jsonrpc a number", r#"{"jsonrpc":2,"id":1,"method":"bdev_get_bdevs"}"#, INVALID_REQUEST),
        ("id an object", r#"{"jsonrpc":"2.0","id":{},"method":"bdev_get_bdevs"}"#, INVALID_REQUEST),
        ("id an array", r#"{"jsonrpc":"2.0","id":[1],"method":"bdev_get_bdevs"}"#, INVALID_REQUEST),
        ("id a bool", r#"{"jsonrpc":"2.0","id":true,"method":"bdev_get_bdevs"}"#, INVALID_REQUEST),
        ("an extra member", r#"{"jsonrpc":"2.0","id":1,"method":"bdev_get_bdevs","x":1}"#, INVALID_REQUEST),
        ("a number", "7", INVALID_REQUEST),
        ("a string", r#""bdev_get_bdevs""#, INVALID_REQUEST),
        ("null", "null", INVALID_REQUEST),
        ("an empty batch", "[]", INVALID_REQUEST),
    ]
    .into_iter()
    // Each ends in a newline: a bare number or literal is complete only
    // once a byte after it has come (it could go on), as for any streaming
    // JSON reader.
    .map(|(l, b, c)| (l.to_owned(), format!("{b}\n").into_bytes(), c, false))
    .collect();
    // Not JSON: answered -32700, then the connection may close (nothing on
    // the stream says where the next request would start).
    for (label, bytes) in [
        ("malformed JSON", br#"{"jsonrpc":"2.0","id":1,"method":}"#.to_vec()),
        ("invalid UTF-8", b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}".to_vec()),
        ("a lone surrogate", br#"{"jsonrpc":"2.0","id":1,"method":"\ud800"}"#.to_vec()),
        // Valid JSON, past what a double holds (SPDK's parser takes it).
        (
            "a number past f64",
            br#"{"jsonrpc":"2.0","id":1,"method":"bdev_ilog_log_read","params":{"name":"ilog0","count":1e400}}"#
                .to_vec(),
        ),
        ("nesting 200 deep", deep.into_bytes()),
        ("a request over 1 MiB", huge_name.into_bytes()),
    ] {
        cases.push((label.to_owned(), bytes, PARSE_ERROR, true));
    }
    cases
}

// ---------------------------------------------------------------- judging

/// Whether `answer` is a JSON-RPC error object meeting `expect`: `Err`
/// says what was wrong.
fn judge(expect: Expect, outcome: &Outcome) -> Result<(), String> {
    let a = match outcome {
        Outcome::Answer(a) => a,
        Outcome::Dropped => return Err("the connection was closed without an answer".into()),
        Outcome::Hang => return Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
        Outcome::Garbled(text) => return Err(format!("not a JSON-RPC answer: {text:.300}")),
    };
    if a["jsonrpc"] != "2.0" {
        return Err(format!("no \"jsonrpc\": \"2.0\": {a:.300}"));
    }
    match (a.get("result"), a.get("error")) {
        (Some(_), None) if expect == Expect::Answer => Ok(()),
        (Some(r), None) => Err(format!("answered with a result: {:.300}", r.to_string())),
        (None, Some(e)) => {
            let (Some(code), Some(message)) = (e["code"].as_i64(), e["message"].as_str()) else {
                return Err(format!("an error object without an integer code and a message: {e}"));
            };
            if message.is_empty() {
                return Err(format!("an error with an empty message (code {code})"));
            }
            match expect {
                Expect::Invalid if code != INVALID_PARAMS => {
                    Err(format!("code {code}, not {INVALID_PARAMS}: {message:.300}"))
                }
                Expect::Code(want) if code != want => Err(format!("code {code}, not {want}: {message:.300}")),
                _ => Ok(()),
            }
        }
        _ => Err(format!("neither a result nor an error: {a:.300}")),
    }
}

/// Runs `cases` on one connection (a fresh one after a failure that broke
/// it): the failures, as (method, label, what went wrong, request).
fn run_cases(tgt: &Tgt, cases: &[Case]) -> Vec<(String, String, String, String)> {
    let mut conn = tgt.conn();
    let mut failures = Vec::new();
    for c in cases {
        let outcome = conn.send(&c.method, c.params.as_deref());
        if let Err(why) = judge(c.expect, &outcome) {
            let request = format!("{} {}", c.method, c.params.as_deref().unwrap_or("(no params)"));
            failures.push((c.method.clone(), c.label.clone(), why, request));
        }
        if !matches!(outcome, Outcome::Answer(_)) {
            conn = tgt.conn();
        }
    }
    failures
}

/// A failed case, as a line to report: (method, case, what went wrong, request).
fn describe((method, label, why, request): (String, String, String, String)) -> String {
    format!("{method} [{label}]: {why}\n    request: {request:.400}")
}

// ---------------------------------------------------------------- NBD

/// A minimal NBD client (fixed newstyle, NBD_OPT_GO, simple replies).
struct Nbd {
    s: UnixStream,
    size: u64,
}

const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
const NBD_REPLY_MAGIC: u32 = 0x6744_6698;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;

impl Nbd {
    fn connect(path: &Path) -> Nbd {
        let mut s = UnixStream::connect(path).unwrap_or_else(|e| panic!("NBD connect {}: {e}", path.display()));
        s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        let mut hello = [0u8; 18];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
        // Fixed newstyle, no zeroes.
        s.write_all(&3u32.to_be_bytes()).unwrap();
        let mut opt = IHAVEOPT.to_be_bytes().to_vec();
        opt.extend_from_slice(&7u32.to_be_bytes()); // NBD_OPT_GO
        opt.extend_from_slice(&6u32.to_be_bytes());
        opt.extend_from_slice(&[0; 6]); // default export, no info requests
        s.write_all(&opt).unwrap();
        let mut size = None;
        loop {
            let mut header = [0u8; 20];
            s.read_exact(&mut header).unwrap();
            let reply = u32::from_be_bytes(header[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(header[16..20].try_into().unwrap()) as usize;
            let mut data = vec![0; len];
            s.read_exact(&mut data).unwrap();
            match reply {
                1 => break, // ACK
                3 if data[..2] == [0, 0] => size = Some(u64::from_be_bytes(data[2..10].try_into().unwrap())),
                3 => {}
                other => {
                    panic!("NBD_OPT_GO on {} refused: {other:#x} {}", path.display(), String::from_utf8_lossy(&data))
                }
            }
        }
        Nbd { s, size: size.expect("NBD_INFO_EXPORT") }
    }

    /// One command; its error value (and the data of a read).
    fn command(&mut self, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let mut msg = NBD_REQUEST_MAGIC.to_be_bytes().to_vec();
        msg.extend_from_slice(&0u16.to_be_bytes());
        msg.extend_from_slice(&cmd.to_be_bytes());
        msg.extend_from_slice(&7u64.to_be_bytes());
        msg.extend_from_slice(&offset.to_be_bytes());
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(payload);
        self.s.write_all(&msg).unwrap();
        let mut reply = [0u8; 16];
        self.s.read_exact(&mut reply).unwrap();
        assert_eq!(u32::from_be_bytes(reply[..4].try_into().unwrap()), NBD_REPLY_MAGIC);
        let error = u32::from_be_bytes(reply[4..8].try_into().unwrap());
        let mut data = Vec::new();
        if cmd == 0 && error == 0 {
            data = vec![0; len as usize];
            self.s.read_exact(&mut data).unwrap();
        }
        (error, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (error, _) = self.command(1, offset, data.len() as u32, data);
        assert_eq!(error, 0, "NBD write at {offset}");
        assert_eq!(self.command(3, 0, 0, &[]).0, 0, "NBD flush");
    }

    fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        let (error, data) = self.command(0, offset, len, &[]);
        assert_eq!(error, 0, "NBD read at {offset}");
        data
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed).collect()
}

/// What the test wrote over NBD, to read back at the end.
struct Written {
    current: Vec<(u64, Vec<u8>)>,
    keep: Vec<(u64, Vec<u8>)>,
}

/// Writes data to ilog0 (exported at `ilog0.nbd`), snapshots it as `keep`
/// (exported at `keep.nbd`), then overwrites part of it.
fn write_data(dir: &Path, conn: &mut Conn) -> Written {
    let cur = dir.join("ilog0.nbd");
    conn.ok("nbd_start_disk", json!({"bdev_name": "ilog0", "nbd_device": cur}));
    let mut nbd = Nbd::connect(&cur);
    let (a, b, c) = (pattern(0x11, 256 << 10), pattern(0x22, 128 << 10), pattern(0x33, 64 << 10));
    nbd.write(0, &a);
    nbd.write(8 << 20, &b);
    assert_eq!(conn.ok("bdev_ilog_snapshot", json!({"name": "ilog0", "snapshot_name": "keep"}))["volume_id"], "keep");
    nbd.write(64 << 10, &c);
    let keep = dir.join("keep.nbd");
    conn.ok("nbd_start_disk", json!({"bdev_name": "ilog0@keep", "nbd_device": keep}));
    let mut now = a.clone();
    now[64 << 10..128 << 10].copy_from_slice(&c);
    Written { current: vec![(0, now), (8 << 20, b.clone())], keep: vec![(0, a), (8 << 20, b)] }
}

/// The data reads back the same, on new connections; a read past the end
/// fails and the connection goes on serving.
fn check_data(dir: &Path, w: &Written) {
    for (export, regions) in [("ilog0.nbd", &w.current), ("keep.nbd", &w.keep)] {
        let mut nbd = Nbd::connect(&dir.join(export));
        for (offset, data) in regions {
            assert!(nbd.read(*offset, data.len() as u32) == *data, "{export}: data at {offset} changed");
        }
        let (error, _) = nbd.command(0, nbd.size, 4096, &[]);
        assert_ne!(error, 0, "{export}: a read past the end succeeded");
        let (error, _) = nbd.command(0, u64::MAX - 4095, 4096, &[]);
        assert_ne!(error, 0, "{export}: a read at 2^64 - 4096 succeeded");
        assert!(nbd.read(regions[0].0, 4096) == regions[0].1[..4096], "{export}: serves on after a bad read");
    }
}

// ---------------------------------------------------------------- consistency

/// The target's view of its bdevs agrees with itself: every ilog bdev is
/// listed with its volumes, its base claimed, unclaimed bases free, and
/// `save_config` recreates exactly these bdevs.
fn check_consistent(conn: &mut Conn) -> Result<BTreeSet<String>, String> {
    let bdevs = conn.ok("bdev_get_bdevs", Value::Null);
    let ilogs = conn.ok("bdev_ilog_get_bdevs", Value::Null);
    let bdevs: BTreeMap<String, Value> =
        bdevs.as_array().unwrap().iter().map(|b| (b["name"].as_str().unwrap().to_owned(), b.clone())).collect();
    let mut claimed = BTreeSet::new();
    for i in ilogs.as_array().unwrap() {
        let (name, base) = (i["name"].as_str().unwrap(), i["base_bdev_name"].as_str().unwrap());
        if bdevs.get(name).map(|b| b["product_name"].clone()) != Some(json!("ilog disk")) {
            return Err(format!("ilog bdev {name} is not in bdev_get_bdevs"));
        }
        if bdevs.get(base).map(|b| b["claimed"].clone()) != Some(json!(true)) {
            return Err(format!("the base {base} of {name} is not listed as claimed"));
        }
        if !claimed.insert(base.to_owned()) {
            return Err(format!("{base} is the base of two ilog bdevs"));
        }
        for p in i["primaries"].as_array().into_iter().flatten() {
            claimed.insert(p["name"].as_str().unwrap().to_owned());
        }
        for v in i["volumes"].as_array().unwrap() {
            let bdev = v["bdev"].as_str().unwrap();
            if !bdevs.contains_key(bdev) {
                return Err(format!("volume bdev {bdev} is not in bdev_get_bdevs"));
            }
        }
    }
    // An error bdev claims its base.
    for b in bdevs.values() {
        if let Some(base) = b["driver_specific"]["error_disk"]["base_bdev"].as_str() {
            if !claimed.insert(base.to_owned()) {
                return Err(format!("{base} is claimed twice"));
            }
        }
    }
    for (name, b) in &bdevs {
        if b["claimed"] == json!(true) && !claimed.contains(name) {
            return Err(format!("{name} is claimed by no ilog bdev"));
        }
    }
    let config = conn.ok("save_config", Value::Null);
    let mut created = BTreeSet::new();
    for sub in config["subsystems"].as_array().unwrap() {
        for e in sub["config"].as_array().unwrap() {
            let m = e["method"].as_str().unwrap();
            if m == "bdev_error_create" {
                created.insert(format!("EE_{}", e["params"]["base_name"].as_str().unwrap()));
            } else if m.ends_with("_create") {
                created.insert(e["params"]["name"].as_str().unwrap().to_owned());
            }
        }
    }
    let not_volumes: BTreeSet<String> = bdevs.keys().filter(|n| !n.contains('@')).cloned().collect();
    if created != not_volumes {
        return Err(format!("save_config creates {created:?}, the target has {not_volumes:?}"));
    }
    Ok(bdevs.into_keys().collect())
}

fn base_setup(dir: &Path, conn: &mut Conn) -> Written {
    for name in ["Malloc0", "Malloc1", "Malloc2"] {
        conn.ok("bdev_malloc_create", json!({"name": name, "num_blocks": BASE_BLOCKS, "block_size": 4096}));
    }
    conn.ok("bdev_malloc_create", json!({"name": "Tiny", "num_blocks": 16, "block_size": 4096}));
    std::fs::File::create(dir.join("aio.img")).unwrap().set_len(8 << 20).unwrap();
    conn.ok("bdev_aio_create", json!({"name": "Aio0", "filename": dir.join("aio.img"), "block_size": 4096}));
    assert_eq!(conn.ok("bdev_ilog_create", json!({"name": "ilog0", "base_bdev_name": "Malloc0"})), "ilog0");
    write_data(dir, conn)
}

// ---------------------------------------------------------------- tests

#[test]
fn every_method_answers_every_bad_input_with_an_error_and_the_target_keeps_serving() {
    let dir = scratch_dir("table");
    let mut tgt = Tgt::start(&dir);
    let mut conn = tgt.conn();
    let written = base_setup(&dir, &mut conn);
    std::fs::File::create(dir.join("empty.img")).unwrap();
    std::fs::File::create(dir.join("aio2.img")).unwrap().set_len(8 << 20).unwrap();
    std::fs::write(dir.join("short.img"), [0u8; 100]).unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo").display().to_string()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    let before = check_consistent(&mut conn).unwrap();

    // Every method the target serves is in the table, and no other.
    let served: BTreeSet<String> = conn
        .ok("rpc_get_methods", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    let specs = specs(&dir);
    let tabled: BTreeSet<String> = specs.iter().map(|s| s.method.to_owned()).collect();
    let missing: Vec<&String> = served.difference(&tabled).collect();
    assert!(missing.is_empty(), "methods served but not in the bad-input table: {missing:?}");
    let stale: Vec<&String> = tabled.difference(&served).collect();
    assert!(stale.is_empty(), "methods in the table the target does not serve: {stale:?}");

    let mut cases: Vec<Case> = specs.iter().flat_map(generic_cases).collect();
    let semantic = semantic_cases(&dir);
    let semantic_methods: BTreeSet<&str> = semantic.iter().map(|c| c.method.as_str()).collect();
    for m in &semantic_methods {
        assert!(tabled.contains(*m), "semantic case for unknown method {m}");
    }
    cases.extend(semantic);
    let per_method: BTreeMap<&str, usize> = cases.iter().fold(BTreeMap::new(), |mut n, c| {
        *n.entry(c.method.as_str()).or_default() += 1;
        n
    });
    let failures = run_cases(&tgt, &cases);
    let mut defects = Vec::new();
    defects.extend(failures.into_iter().map(describe));

    // Requests wrong as requests, each on a fresh connection.
    let requests = request_cases();
    for (label, bytes, code, may_close) in &requests {
        let mut c = tgt.conn();
        let outcome = c.send_bytes(bytes);
        // What a JSON reader refuses may be refused as a value instead
        // (-32600, a lone surrogate or deep nesting read as raw JSON).
        let judged = match (judge(Expect::Code(*code), &outcome), &outcome) {
            (Err(_), Outcome::Answer(a)) if *code == PARSE_ERROR && a["error"]["code"] == INVALID_REQUEST => {
                judge(Expect::Error, &outcome)
            }
            (judged, _) => judged,
        };
        if let Err(why) = judged {
            defects.push(format!("request [{label}]: {why}\n    request: {:.300}", String::from_utf8_lossy(bytes)));
            continue;
        }
        if let Outcome::Answer(a) = &outcome {
            if a["id"] != json!(1) && a["id"] != Value::Null {
                defects.push(format!("request [{label}]: answered with id {}", a["id"]));
            }
        }
        // Unless the stream is lost, the connection serves on.
        if !may_close {
            if let Err(why) = judge(Expect::Answer, &c.send("spdk_get_version", None)) {
                defects.push(format!("request [{label}]: the next request on the connection: {why}"));
            }
        }
    }
    // A batch answers each request in it, errors included.
    let mut c = tgt.conn();
    match c.send_bytes(br#"[{"jsonrpc":"2.0","id":1,"method":"nope"},{"jsonrpc":"2.0","id":2,"method":"bdev_ilog_delete","params":{"name":7}},{"jsonrpc":"2.0","id":3,"method":"spdk_get_version"}]"#) {
        Outcome::Answer(Value::Array(a))
            if a.len() == 3
                && a[0]["error"]["code"] == METHOD_NOT_FOUND
                && a[1]["error"]["code"] == INVALID_PARAMS
                && a[2]["result"].is_object() => {}
        other => defects.push(format!("a batch with bad requests: {other:?}")),
    }

    // Over-long names the target may take: if it does, it must list them,
    // refuse to export them over NBD when too long for NBD, and delete them
    // (on Malloc2: the NUL-named case above may hold Malloc1 until the cleanup).
    let long = "L".repeat(LONG);
    match conn.call("bdev_ilog_create", json!({"name": long, "base_bdev_name": "Malloc2"})) {
        Ok(r) => {
            eprintln!("note: a {LONG}-char ilog bdev name is accepted");
            assert_eq!(r, json!(long));
            let listed = conn.ok("bdev_ilog_get_bdevs", json!({"name": long}));
            assert_eq!(listed[0]["name"], json!(long));
            let dev = dir.join("long.nbd");
            match conn.call("nbd_start_disk", json!({"bdev_name": long, "nbd_device": dev})) {
                Ok(_) => {
                    defects.push(format!("nbd_start_disk of a {LONG}-char bdev name (NBD allows 4096) succeeded"));
                    let _ = conn.call("nbd_stop_disk", json!({"nbd_device": dev}));
                }
                Err(e) => assert!(e["code"].is_i64(), "{e}"),
            }
            conn.ok("bdev_ilog_delete", json!({"name": long}));
        }
        Err(e) => assert!(e["code"].is_i64() && e["message"].is_string(), "{e}"),
    }

    // Whatever a lenient case created goes (after reporting it).
    let after = check_consistent(&mut conn).unwrap_or_else(|e| panic!("inconsistent after the table: {e}"));
    for extra in after.difference(&before) {
        eprintln!("removing bdev {extra:.80}, created by a bad input");
        for m in ["bdev_malloc_delete", "bdev_aio_delete", "bdev_ilog_delete"] {
            let _ = conn.call(m, json!({"name": extra}));
        }
    }
    let lost: Vec<&String> = before.difference(&after).collect();
    assert!(lost.is_empty(), "bdevs lost to bad inputs: {lost:?}");

    // Still serving, with its state and data as they were.
    let stats = conn.ok("bdev_ilog_get_stats", json!({"name": "ilog0"}));
    assert_eq!(stats["block_size"], 4096, "{stats}");
    let volumes = conn.ok("bdev_ilog_get_volumes", json!({"name": "ilog0"}));
    let names: Vec<&str> = volumes.as_array().unwrap().iter().map(|v| v["volume_id"].as_str().unwrap()).collect();
    assert_eq!(names, ["keep"], "volumes after the table");
    assert_eq!(conn.ok("bdev_ilog_get_policy", json!({"name": "ilog0"})), json!({}), "a refused policy stuck");
    let disks = conn.ok("nbd_get_disks", Value::Null);
    if disks.as_array().unwrap().len() != 2 {
        defects.push(format!("exports after the table: {disks}"));
    }
    assert!(dir.join("aio.img").exists(), "nbd_start_disk on a regular file removed it");
    check_data(&dir, &written);
    assert!(tgt.alive(), "ilog_tgt exited\n{}", tgt.tail());

    let requests_n = requests.len() + 1;
    eprintln!(
        "{} (method, bad input) cases over {} methods, {} request-level cases",
        cases.len(),
        per_method.len(),
        requests_n
    );
    for (m, n) in &per_method {
        eprintln!("  {m}: {n}");
    }
    assert!(defects.is_empty(), "{} defect(s):\n{}\n{}", defects.len(), defects.join("\n"), tgt.tail());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `calls` at once, each on its own connection: every one answered.
fn race(tgt: &Tgt, calls: Vec<(&'static str, Value)>) -> Vec<Result<Value, Value>> {
    let barrier = Arc::new(Barrier::new(calls.len()));
    let handles: Vec<_> = calls
        .into_iter()
        .map(|(method, params)| {
            let mut conn = tgt.conn();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                conn.call(method, params)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a racing call was not answered")).collect()
}

fn code(r: &Result<Value, Value>) -> Option<i64> {
    r.as_ref().err().map(|e| e["code"].as_i64().expect("an integer code"))
}

fn exists(conn: &mut Conn, name: &str) -> bool {
    match conn.call("bdev_ilog_get_bdevs", json!({"name": name})) {
        Ok(_) => true,
        Err(e) if e["code"] == ENODEV => false,
        Err(e) => panic!("bdev_ilog_get_bdevs {name}: {e}"),
    }
}

fn volume_ids(conn: &mut Conn, name: &str) -> Vec<String> {
    let vs = conn.ok("bdev_ilog_get_volumes", json!({"name": name}));
    vs.as_array().unwrap().iter().map(|v| v["volume_id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn racing_calls_are_each_answered_and_leave_the_target_consistent() {
    let dir = scratch_dir("race");
    let mut tgt = Tgt::start(&dir);
    let mut conn = tgt.conn();
    let written = base_setup(&dir, &mut conn);
    let create_a = || ("bdev_ilog_create", json!({"name": "ilogA", "base_bdev_name": "Malloc1"}));
    let delete_a = || ("bdev_ilog_delete", json!({"name": "ilogA"}));

    // Two deletes of one bdev: one deletes it, the other finds it gone.
    for round in 0..5 {
        conn.ok(create_a().0, create_a().1);
        let r = race(&tgt, vec![delete_a(), delete_a()]);
        let ok = r.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "round {round}: two deletes: {r:?}");
        assert!(r.iter().filter_map(code).all(|c| c == ENODEV || c == EBUSY), "round {round}: {r:?}");
        assert!(!exists(&mut conn, "ilogA"));
        check_consistent(&mut conn).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }

    // Two creates of one name on two bases, and of two names on one base.
    let r = race(&tgt, vec![create_a(), ("bdev_ilog_create", json!({"name": "ilogA", "base_bdev_name": "Malloc2"}))]);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1, "one name, two bases: {r:?}");
    assert!(r.iter().filter_map(code).all(|c| c == EEXIST), "{r:?}");
    check_consistent(&mut conn).unwrap();
    conn.ok(delete_a().0, delete_a().1);
    let r = race(&tgt, vec![create_a(), ("bdev_ilog_create", json!({"name": "ilogB", "base_bdev_name": "Malloc1"}))]);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1, "two names, one base: {r:?}");
    assert!(r.iter().filter_map(code).all(|c| c == EBUSY), "{r:?}");
    check_consistent(&mut conn).unwrap();
    for name in ["ilogA", "ilogB"] {
        if exists(&mut conn, name) {
            conn.ok("bdev_ilog_delete", json!({"name": name}));
        }
    }

    // Create and delete racing.
    for round in 0..20 {
        let r = race(&tgt, vec![create_a(), delete_a()]);
        let there = exists(&mut conn, "ilogA");
        assert_eq!(there, r[0].is_ok() && r[1].is_err(), "round {round}: {r:?}");
        check_consistent(&mut conn).unwrap_or_else(|e| panic!("round {round}: {e}"));
        if there {
            conn.ok(delete_a().0, delete_a().1);
        }
    }

    // Snapshots (and every other ilog method) during a delete: a snapshot
    // that succeeded is on the base when it is opened again.
    let mut taken = Vec::new();
    for round in 0..8 {
        conn.ok(create_a().0, create_a().1);
        let snap = format!("race-{round}");
        let r = race(
            &tgt,
            vec![
                delete_a(),
                ("bdev_ilog_snapshot", json!({"name": "ilogA", "snapshot_name": snap})),
                ("bdev_ilog_get_volumes", json!({"name": "ilogA"})),
                ("bdev_ilog_get_stats", json!({"name": "ilogA"})),
                ("bdev_ilog_log_read", json!({"name": "ilogA", "count": 16, "with_data": true})),
                ("bdev_ilog_compact", json!({"name": "ilogA"})),
                ("bdev_ilog_set_policy", json!({"name": "ilogA", "policy": {}})),
                ("bdev_ilog_event", json!({"name": "ilogA", "event": "nope"})),
                ("bdev_ilog_get_bdevs", Value::Null),
            ],
        );
        if r[1].is_ok() {
            taken.push(snap);
        }
        let deleted = r[0].is_ok();
        assert_eq!(exists(&mut conn, "ilogA"), !deleted, "round {round}: {r:?}");
        check_consistent(&mut conn).unwrap_or_else(|e| panic!("round {round}: {e}"));
        if deleted {
            conn.ok(create_a().0, create_a().1);
        }
        assert_eq!(volume_ids(&mut conn, "ilogA"), taken, "round {round}: volumes after {r:?}");
        conn.ok(delete_a().0, delete_a().1);
    }

    // Two deletes of one volume; a volume deleted while being exported.
    conn.ok(create_a().0, create_a().1);
    conn.ok("bdev_ilog_snapshot", json!({"name": "ilogA", "snapshot_name": "dv"}));
    let dv = || ("bdev_ilog_delete_volume", json!({"name": "ilogA", "volume": "dv"}));
    let r = race(&tgt, vec![dv(), dv()]);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1, "two deletes of one volume: {r:?}");
    assert!(r.iter().filter_map(code).all(|c| c == ENOENT || c == EBUSY), "{r:?}");
    conn.ok("bdev_ilog_snapshot", json!({"name": "ilogA", "snapshot_name": "dv"}));
    let dev = dir.join("dv.nbd");
    let r = race(&tgt, vec![dv(), ("nbd_start_disk", json!({"bdev_name": "ilogA@dv", "nbd_device": dev}))]);
    let exported = r[1].is_ok();
    assert!(!(r[0].is_ok() && exported), "the volume was deleted and exported: {r:?}");
    if exported {
        conn.ok("nbd_stop_disk", json!({"nbd_device": dev}));
    }

    // Two exports at one place; two stops of one export.
    let dev = dir.join("twice.nbd");
    let start = |bdev: &str| ("nbd_start_disk", json!({"bdev_name": bdev, "nbd_device": dev}));
    let r = race(&tgt, vec![start("ilogA"), start("ilogA")]);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1, "two exports at one place: {r:?}");
    let stop = || ("nbd_stop_disk", json!({"nbd_device": dev}));
    let r = race(&tgt, vec![stop(), stop()]);
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1, "two stops of one export: {r:?}");
    assert!(r.iter().filter_map(code).all(|c| c == ENODEV), "{r:?}");
    // Deleting the bdev while it is being exported.
    let r = race(&tgt, vec![delete_a(), start("ilogA")]);
    assert!(!(r[0].is_ok() && r[1].is_ok()), "deleted and exported: {r:?}");
    if r[1].is_ok() {
        conn.ok(stop().0, stop().1);
    }
    check_consistent(&mut conn).unwrap();
    if exists(&mut conn, "ilogA") {
        conn.ok(delete_a().0, delete_a().1);
    }

    // A base deleted while an ilog bdev is created on it.
    let r = race(
        &tgt,
        vec![
            ("bdev_malloc_delete", json!({"name": "Malloc2"})),
            ("bdev_ilog_create", json!({"name": "ilogC", "base_bdev_name": "Malloc2"})),
        ],
    );
    assert!(!(r[0].is_ok() && r[1].is_ok()), "the base was deleted under a new ilog bdev: {r:?}");
    check_consistent(&mut conn).unwrap();

    // The bad-input table from three connections at once.
    let cases: Vec<Case> = specs(&dir).iter().flat_map(generic_cases).collect();
    let failures: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|k| {
                let mine: Vec<Case> = cases.iter().skip(k).step_by(3).cloned().collect();
                let tgt = &tgt;
                s.spawn(move || run_cases(tgt, &mine))
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    let real: Vec<String> = failures.into_iter().map(describe).collect();
    assert!(real.is_empty(), "concurrent bad inputs:\n{}", real.join("\n"));

    let names = check_consistent(&mut conn).unwrap_or_else(|e| panic!("inconsistent at the end: {e}"));
    assert!(names.contains("ilog0") && names.contains("ilog0@keep"), "{names:?}");
    let stats = conn.ok("bdev_ilog_get_stats", json!({"name": "ilog0"}));
    assert_eq!(stats["block_size"], 4096, "{stats}");
    check_data(&dir, &written);
    assert!(tgt.alive(), "ilog_tgt exited\n{}", tgt.tail());
    let _ = std::fs::remove_dir_all(&dir);
}
