//! Firecracker's API and configuration file, for what rvmm has, so that a
//! tool written for Firecracker can drive rvmm: `--api-sock PATH` serves the
//! REST API (`server`), `--config-file FILE` takes its JSON configuration
//! (`config` turns either into a `VmConfig`).

pub mod config;
pub mod http;
pub mod model;
pub mod server;

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc;

use crate::config::VmConfig;
pub use server::StartRequest;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot read --config-file {path}: {source}")]
    ReadConfig {
        path: String,
        source: std::io::Error,
    },
    #[error("--config-file {path} is not a Firecracker configuration: {reason}")]
    ParseConfig { path: String, reason: String },
    #[error("cannot start the API thread: {0}")]
    Thread(std::io::Error),
}

/// Reads a Firecracker configuration file.
pub fn read_config_file(path: &Path) -> Result<model::FullConfig, ApiError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| ApiError::ReadConfig {
        path: shown.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| ApiError::ParseConfig {
        path: shown,
        reason: e.to_string(),
    })
}

/// Starts the API thread (`rvmm-api`) on `listener`, configured as
/// `preset`, under its own seccomp filter when `sandbox`. With `autostart`
/// it starts the VM at once, as Firecracker does with a config file and an
/// API socket. The VMs to run arrive on the returned channel; it closes when
/// the thread has gone.
pub fn spawn(
    listener: UnixListener,
    base: VmConfig,
    preset: model::FullConfig,
    autostart: bool,
) -> Result<mpsc::Receiver<StartRequest>, ApiError> {
    let (start, starts) = mpsc::channel();
    let sandbox = base.seccomp;
    std::thread::Builder::new()
        .name("rvmm-api".into())
        .spawn(move || {
            if sandbox {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Api) {
                    log::error!("{e}");
                    return;
                }
            }
            let mut api = server::Api::new(base, preset, start);
            if autostart {
                let response = api.start_vm();
                if response.status != 204 {
                    // The main thread has said why already.
                    return;
                }
            }
            server::serve(listener, api);
        })
        .map_err(ApiError::Thread)?;
    Ok(starts)
}
