//! `libilog_spdk.so`: loads into stock SPDK applications (`LD_PRELOAD` into
//! apps built `--with-shared`) and registers, from constructors as SPDK's own
//! modules do, the ilog bdev module and every `bdev_ilog_*` RPC method.
//!
//! Without feature `spdk` the library is empty.

#[cfg(feature = "spdk")]
mod register {
    /// What `SPDK_BDEV_MODULE_REGISTER` and `SPDK_RPC_REGISTER` do in C: run
    /// at load time, before the app initialises its subsystems.
    extern "C" fn register() {
        ilog_bdev::spdk::register_module();
        ilog_rpc::spdk::register_methods();
    }

    #[used]
    #[unsafe(link_section = ".init_array")]
    static REGISTER: extern "C" fn() = register;
}
