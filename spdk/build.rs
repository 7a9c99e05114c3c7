//! Links the shared library against SPDK's env and system libraries without
//! `--as-needed`: `spdk_bdev.pc` does not pull them in, and a library the
//! module does not call directly must still be loaded (see ilog-sys).

fn main() {
    if std::env::var_os("CARGO_FEATURE_SPDK").is_none() {
        return;
    }
    let libs = std::env::var("DEP_SPDK_LIBS").expect("ilog-sys exports SPDK's libraries");
    println!("cargo:rustc-link-arg-cdylib=-Wl,--no-as-needed");
    for lib in libs
        .split_whitespace()
        .filter(|l| l.starts_with("spdk_env_dpdk") || l.starts_with("rte_") || !l.starts_with("spdk_"))
    {
        println!("cargo:rustc-link-arg-cdylib=-l{lib}");
    }
    println!("cargo:rustc-link-arg-cdylib=-Wl,--as-needed");
}
