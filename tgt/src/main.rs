//! `ilog_tgt`: the standalone ilog target. Native reactors serve ilog bdevs;
//! a JSON-RPC server on a Unix socket speaks SPDK's protocol (so SPDK's
//! `rpc.py` / `spdk-rpc` drive it); NBD exports serve the data to real
//! clients. Flags follow SPDK's apps.

use clap::Parser;
use ilog_rpc::{Handler, Server};
use ilog_tgt::target::Target;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "ilog_tgt", version, about = "ilog standalone target: JSON-RPC control, NBD data path")]
struct Args {
    /// Reactor cores, as a hex mask (0x3), a decimal mask, or a list ([0,1]).
    #[arg(short = 'm', long = "cpumask", default_value = "0x1")]
    cpumask: String,
    /// Unix socket of the JSON-RPC server.
    #[arg(short = 'r', long = "rpc-socket", default_value = "/var/tmp/ilog.sock")]
    rpc_socket: PathBuf,
    /// SPDK-format JSON config to load at start-up ({"subsystems": [...]}).
    #[arg(short = 'c', long = "json")]
    json: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace) or an env_logger filter.
    #[arg(short = 'L', long = "log-level", default_value = "info")]
    log_level: String,
}

/// Number of reactor cores a cpumask names.
fn cores_of(mask: &str) -> Result<u32, String> {
    let mask = mask.trim();
    let count = if let Some(list) = mask.strip_prefix('[').and_then(|m| m.strip_suffix(']')) {
        let mut cores = std::collections::BTreeSet::new();
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (u32, u32) = (
                a.trim().parse().map_err(|_| format!("bad core {a:?}"))?,
                b.trim().parse().map_err(|_| format!("bad core {b:?}"))?,
            );
            cores.extend(a..=b);
        }
        cores.len() as u32
    } else {
        let bits = match mask.strip_prefix("0x").or_else(|| mask.strip_prefix("0X")) {
            Some(hex) => u128::from_str_radix(hex, 16),
            None => mask.parse::<u128>(),
        }
        .map_err(|_| format!("bad cpumask {mask:?}"))?;
        bits.count_ones()
    };
    if count == 0 {
        return Err(format!("cpumask {mask:?} names no core"));
    }
    Ok(count)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    env_logger::Builder::new().parse_filters(&args.log_level).format_timestamp_millis().init();
    let cores = match cores_of(&args.cpumask) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ilog_tgt: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let target = Arc::new(Target::new(cores));
    log::info!("ilog_tgt v{} on {cores} reactor core(s)", env!("CARGO_PKG_VERSION"));

    if let Some(path) = &args.json {
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
            .and_then(|config| target.load_config(&config));
        if let Err(e) = loaded {
            log::error!("config {}: {e}", path.display());
            target.shutdown();
            return std::process::ExitCode::FAILURE;
        }
    }

    let handler: Arc<dyn Handler> = target.clone();
    let server = match Server::start(&args.rpc_socket, handler) {
        Ok(s) => s,
        Err(e) => {
            log::error!("RPC socket {}: {e}", args.rpc_socket.display());
            target.shutdown();
            return std::process::ExitCode::FAILURE;
        }
    };
    log::info!("JSON-RPC listening on {}", args.rpc_socket.display());

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            log::error!("cannot handle signal {signal}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        target.stop_exports_of_retired_volumes();
    }
    log::info!("shutting down");
    server.stop();
    target.shutdown();
    log::info!("bye");
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::cores_of;

    #[test]
    fn cpumasks_count_their_cores() {
        assert_eq!(cores_of("0x1"), Ok(1));
        assert_eq!(cores_of("0xF"), Ok(4));
        assert_eq!(cores_of("6"), Ok(2));
        assert_eq!(cores_of("[0,1,2]"), Ok(3));
        assert_eq!(cores_of("[0-3,8]"), Ok(5));
        assert!(cores_of("0x0").is_err());
        assert!(cores_of("zz").is_err());
    }
}
