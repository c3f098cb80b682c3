//! audit-forwarder: follows kube-apiserver audit logs and delivers every line, at least once and
//! in order, as Fluent Forward records. `main` only wires the modules together and maps errors to
//! exit codes: 2 for usage and configuration errors, 1 for a fatal runtime error.

use audit_forwarder::{cli, config, event_loop, kube, tailer};

use std::path::Path;
use std::process::ExitCode;

fn init_logging(level: log::LevelFilter) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level);
    // RUST_LOG may refine the level per module (e.g. `rustls=debug`).
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.format_timestamp_millis()
        .target(env_logger::Target::Stderr)
        .init();
}

/// Reads the original's `-c/--config` YAML file as flat `key: value` pairs.
fn read_flat_config(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    kube::yaml::flat_config(&text)
}

fn main() -> ExitCode {
    let env = |k: &str| std::env::var_os(k);
    let cmd = match cli::parse(std::env::args_os().skip(1), &env, &read_flat_config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("audit-forwarder: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cmd {
        cli::Command::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        cli::Command::Version => {
            println!("{}", cli::VERSION);
            return ExitCode::SUCCESS;
        }
        cli::Command::Forward(args) => {
            init_logging(args.log_level);
            if let Some(level) = &args.fluent_log_level {
                log::info!(
                    "--fluent-log-level={level} is ignored: there is no fluent-bit, this process \
                     delivers the records itself (use --log-level)"
                );
            }
            let cfg = match config::load(&args, &|k: &str| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("{e}");
                    return ExitCode::from(2);
                }
            };
            event_loop::run(&args, cfg)
        }
        cli::Command::Tailer(args) => {
            init_logging(args.log_level);
            let run = tailer::run(&tailer::TailerArgs {
                listen: args.listen.clone(),
                discard: args.discard,
                tls: args.tls.clone(),
                shared_key: args.shared_key.clone(),
                self_hostname: args.self_hostname.clone(),
                limits: tailer::ClientLimits {
                    max_clients: args.max_clients,
                    client_timeout: args.client_timeout,
                    idle_timeout: args.idle_timeout,
                    // A budget beyond the address space cannot be reached anyway.
                    mem_budget: usize::try_from(args.mem_budget).unwrap_or(usize::MAX),
                },
                metrics_address: args.metrics_address.clone(),
            });
            match run {
                Err(e) if e.is_config() => {
                    log::error!("{e}");
                    return ExitCode::from(2);
                }
                other => other.map_err(|e| e.to_string()),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
