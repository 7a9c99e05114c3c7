//! Links the shared library, and only it, against SPDK (ilog-sys finds
//! the libraries but links nothing, so that the binaries never do). SPDK's
//! env and system libraries go in without `--as-needed`: `spdk_bdev.pc`
//! does not pull them in, and a library the module does not call directly
//! must still be loaded.

fn main() {
    if std::env::var_os("CARGO_FEATURE_SPDK").is_none() {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("ilog-sys exports {name}"));
    let (dirs, libs) = (var("DEP_SPDK_LIB_DIRS"), var("DEP_SPDK_LIBS"));
    let libs: Vec<&str> = libs.split_whitespace().collect();
    for dir in dirs.split_whitespace() {
        println!("cargo:rustc-link-arg-cdylib=-L{dir}");
    }
    let always_loaded = |l: &&&str| l.starts_with("spdk_env_dpdk") || l.starts_with("rte_") || !l.starts_with("spdk_");
    println!("cargo:rustc-link-arg-cdylib=-Wl,--no-as-needed");
    for lib in libs.iter().filter(always_loaded) {
        println!("cargo:rustc-link-arg-cdylib=-l{lib}");
    }
    println!("cargo:rustc-link-arg-cdylib=-Wl,--as-needed");
    for lib in libs.iter().filter(|l| !always_loaded(l)) {
        println!("cargo:rustc-link-arg-cdylib=-l{lib}");
    }
}
