//! The vsock device (`--vsock cid=N,uds=PATH`): its host socket is bound
//! before anything else is built, so a bad path stops rvmm first;
//! `virtio_devices` attaches it after the disks and network cards.

use rvmm_devices::virtio::vsock::Vsock;
pub use rvmm_devices::virtio::vsock::RX_QUEUE;

use crate::config::VsockConfig;
use crate::unix_listener::{self, ListenError};

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot set up the vsock device: {0}")]
    Create(std::io::Error),
}

/// Binds `uds` and makes the device for guest `cid`.
pub fn open_vsock(config: &VsockConfig) -> Result<Vsock, VsockError> {
    let listener = unix_listener::listen(&config.uds, "--vsock uds")?;
    let vsock = Vsock::new(config.cid, listener, config.uds.clone()).map_err(VsockError::Create)?;
    log::info!(
        "vsock: guest CID {}, host connections on {} (CONNECT <port>), guest connections to {}_<port>",
        config.cid,
        config.uds.display(),
        config.uds.display()
    );
    Ok(vsock)
}
