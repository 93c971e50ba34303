//! Where rvmm's log goes and how much of it: stderr or `--log-path` from the
//! start, and another file or level later when the API's `PUT /logger`
//! asks. env_logger writes through [`LogWriter`], which follows the target.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

static TARGET: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Writes to the current target: the file set last, or stderr.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match crate::sync::lock(&TARGET).as_mut() {
            Some(file) => file.write(buf),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match crate::sync::lock(&TARGET).as_mut() {
            Some(file) => file.flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Appends the log to `path` from now on (created if missing).
pub fn set_path(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *crate::sync::lock(&TARGET) = Some(file);
    Ok(())
}

/// A level as Firecracker's API and rvmm's `--log-level` name them.
pub fn parse_level(level: &str) -> Option<log::LevelFilter> {
    match level.to_ascii_lowercase().as_str() {
        "warning" => Some(log::LevelFilter::Warn),
        other => other.parse().ok(),
    }
}

/// Firecracker's `PUT /logger`: a new file and a new level, as given.
pub fn configure(path: Option<&Path>, level: Option<&str>) -> Result<(), String> {
    let level = level
        .map(|l| {
            parse_level(l).ok_or_else(|| {
                format!("Logger error: '{l}' is not a level; use Off, Error, Warning, Info, Debug or Trace")
            })
        })
        .transpose()?;
    if let Some(path) = path {
        set_path(path).map_err(|e| {
            format!(
                "Logger error: cannot open the log file {}: {e}",
                path.display()
            )
        })?;
    }
    if let Some(level) = level {
        log::set_max_level(level);
    }
    Ok(())
}
