//! Routes the engine's `log` records into SPDK's log, so that they appear
//! where the app's own messages do (and obey its `-L`/log level flags).

use ilog_sys as sys;
use std::ffi::CString;

struct SpdkLogger;

static LOGGER: SpdkLogger = SpdkLogger;

impl log::Log for SpdkLogger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => sys::SPDK_LOG_ERROR,
            log::Level::Warn => sys::SPDK_LOG_WARN,
            _ => sys::SPDK_LOG_NOTICE,
        };
        let msg = CString::new(format!("{}\n", record.args()).replace('\0', " ")).expect("NULs replaced");
        let file = CString::new(record.file().unwrap_or("ilog")).unwrap_or_default();
        // SAFETY: a "%s" format with one C string argument.
        unsafe {
            sys::spdk_log(
                level,
                file.as_ptr(),
                record.line().unwrap_or(0) as i32,
                c"ilog".as_ptr(),
                c"%s".as_ptr(),
                msg.as_ptr(),
            )
        };
    }

    fn flush(&self) {}
}

/// Installs the logger unless the process already has one.
pub(crate) fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
