//! Finds SPDK (`SPDK_DIR`, else pkg-config), generates bindings for the
//! functions and types ilog uses, and emits link flags from SPDK's
//! pkg-config files. Does nothing without feature `spdk`.

fn main() {
    #[cfg(feature = "spdk")]
    spdk::build();
}

#[cfg(feature = "spdk")]
mod spdk {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// SPDK libraries ilog calls into directly. The env and system libraries
    /// are not pulled in by `spdk_bdev.pc`: they are added explicitly.
    const PACKAGES: &[&str] = &[
        "spdk_bdev",
        "spdk_rpc",
        "spdk_jsonrpc",
        "spdk_json",
        "spdk_thread",
        "spdk_log",
        "spdk_util",
        "spdk_env_dpdk",
        "spdk_syslibs",
    ];

    const FUNCTIONS: &[&str] = &[
        "spdk_bdev_.*",
        "spdk_get_io_channel",
        "spdk_put_io_channel",
        "spdk_io_channel_.*",
        "spdk_io_device_.*",
        "spdk_thread_.*",
        "spdk_get_thread",
        "spdk_set_thread",
        "spdk_poller_.*",
        "spdk_env_get_.*",
        "spdk_cpuset_.*",
        "spdk_dma_.*",
        "spdk_zmalloc",
        "spdk_free",
        "spdk_json_.*",
        "spdk_jsonrpc_.*",
        "spdk_rpc_.*",
        "spdk_strerror",
        "spdk_log",
    ];

    pub fn build() {
        println!("cargo:rerun-if-env-changed=SPDK_DIR");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
        println!("cargo:rerun-if-changed=wrapper.h");
        let mut pkg_path: Vec<String> = Vec::new();
        if let Ok(dir) = env::var("SPDK_DIR") {
            pkg_path.push(format!("{dir}/build/lib/pkgconfig"));
        }
        if let Ok(p) = env::var("PKG_CONFIG_PATH") {
            pkg_path.push(p);
        }
        let pkg_path = pkg_path.join(":");
        let pkg = |args: &[&str]| -> String {
            let out = Command::new("pkg-config")
                .env("PKG_CONFIG_PATH", &pkg_path)
                .args(args)
                .args(PACKAGES)
                .output()
                .expect("running pkg-config");
            if !out.status.success() {
                panic!(
                    "pkg-config cannot find SPDK ({}): set SPDK_DIR to an SPDK tree built with --with-shared, \
                     or PKG_CONFIG_PATH to its build/lib/pkgconfig",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            String::from_utf8(out.stdout).expect("pkg-config output is UTF-8")
        };

        let cflags = pkg(&["--cflags"]);
        let include_args: Vec<String> = cflags
            .split_whitespace()
            .filter(|f| f.starts_with("-I") || f.starts_with("-D"))
            .map(str::to_owned)
            .collect();
        let mut builder = bindgen::Builder::default()
            .header("wrapper.h")
            .clang_args(&include_args)
            .allowlist_var("SPDK_.*")
            // Packed with aligned members: Rust cannot express it; ilog never touches it.
            .opaque_type("spdk_bdev_nvme_cdw13")
            .opaque_type("spdk_bdev_ext_io_opts")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .prepend_enum_name(false)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
        for f in FUNCTIONS {
            builder = builder.allowlist_function(f);
        }
        let bindings = builder.generate().expect("generating SPDK bindings");
        let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("spdk.rs");
        bindings.write_to_file(&out).expect("writing SPDK bindings");

        // Link flags are not ours to emit: every binary depending on this
        // crate would link SPDK then (cargo unifies features, so a
        // `--workspace --features spdk` build would put SPDK into
        // ilog_tgt). The shared library, ilog-spdk, links it alone, from
        // the search paths and libraries (in pkg-config's order) exported
        // here as DEP_SPDK_LIB_DIRS and DEP_SPDK_LIBS.
        let libs = pkg(&["--libs"]);
        let (mut dirs, mut names) = (Vec::new(), Vec::new());
        for flag in libs.split_whitespace() {
            if let Some(dir) = flag.strip_prefix("-L") {
                dirs.push(dir.to_owned());
            } else if let Some(lib) = flag.strip_prefix("-l") {
                names.push(lib.to_owned());
            }
        }
        println!("cargo:lib_dirs={}", dirs.join(" "));
        println!("cargo:libs={}", names.join(" "));
    }
}
