//! The JSON-RPC error every method and the server report: a code and a
//! message, with the codes SPDK uses (JSON-RPC 2.0's reserved codes, and
//! `-errno` for failures of the operation itself).

use std::fmt;

/// A JSON-RPC error object, as `{"code": .., "message": ..}` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i32,
    pub message: String,
}

impl RpcError {
    pub const PARSE_ERROR: i32 = -32700;
    pub const INVALID_REQUEST: i32 = -32600;
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL_ERROR: i32 = -32603;

    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(Self::INVALID_PARAMS, message)
    }

    /// SPDK answers "Method not found"; the name is added so that a typo is
    /// obvious from the client's output alone.
    pub fn method_not_found(method: &str) -> Self {
        RpcError::new(Self::METHOD_NOT_FOUND, format!("Method not found: {method}"))
    }

    /// A failed operation, as SPDK's
    /// `spdk_jsonrpc_send_error_response(request, rc, spdk_strerror(-rc))`
    /// reports it: the code is the negative errno.
    pub fn errno(errno: i32, message: impl Into<String>) -> Self {
        RpcError::new(errno.saturating_neg(), message)
    }
}

impl From<ilog_bdev::Error> for RpcError {
    fn from(e: ilog_bdev::Error) -> Self {
        RpcError::errno(e.errno(), e.to_string())
    }
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

impl std::error::Error for RpcError {}

#[cfg(test)]
mod tests {
    use super::*;
    use ilog_bdev::Error;

    #[test]
    fn engine_errors_become_negative_errno_codes() {
        // Linux errno values.
        let cases = [
            (Error::InvalidArgument("x".into()), -22),
            (Error::NoSuchVolume("snap-9".into()), -2),
            (Error::VolumeExists("a".into()), -17),
            (Error::ReadOnly, -30),
            (Error::NoSpace, -28),
            (Error::Io(5), -5),
            (Error::NotFormatted, -19),
            (Error::ShuttingDown, -108),
        ];
        for (e, code) in cases {
            let message = e.to_string();
            assert_eq!(RpcError::from(e), RpcError { code, message });
        }
    }

    #[test]
    fn constructors_set_codes() {
        assert_eq!(RpcError::invalid_params("bad").code, -32602);
        let e = RpcError::method_not_found("bdev_nope");
        assert_eq!(e.code, -32601);
        assert!(e.message.starts_with("Method not found") && e.message.contains("bdev_nope"));
        assert_eq!(RpcError::errno(2, "No such file or directory").code, -2);
        assert_eq!(RpcError::new(-1, "m").to_string(), "m (code -1)");
    }
}
