//! The Unix sockets rvmm listens on (`--serial socket=PATH`, `--vsock
//! uds=PATH`), bound before the VM is built so that a bad path gets its own
//! message. The socket file stays after rvmm exits (its seccomp filter
//! allows no unlink); a later rvmm replaces a stale one that nobody listens
//! on, and refuses one that somebody does.

use std::io::ErrorKind;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{option}={path}: another process listens there; give another path")]
    InUse { option: &'static str, path: PathBuf },
    #[error("{option}={path}: {source}; give a path in a writable directory")]
    Bind {
        option: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds a non-blocking listening socket at `path` (given as `option`, e.g.
/// "--serial socket"), replacing a stale socket file.
pub fn listen(path: &Path, option: &'static str) -> Result<UnixListener, ListenError> {
    let bind_error = |source| ListenError::Bind {
        option,
        path: path.to_path_buf(),
        source,
    };
    let listener = match UnixListener::bind(path) {
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            let is_socket = std::fs::metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false);
            if !is_socket {
                return Err(bind_error(e));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse {
                    option,
                    path: path.to_path_buf(),
                });
            }
            log::info!("replacing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(bind_error)?;
            UnixListener::bind(path).map_err(bind_error)?
        }
        other => other.map_err(bind_error)?,
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    Ok(listener)
}
