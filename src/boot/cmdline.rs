//! Assembling the kernel command line: the user's (or the default), then what
//! rvmm itself must add, bounded by the limit the kernel states.

use linux_loader::cmdline::Cmdline;

/// What rvmm passes when `--cmdline` is not given: console on COM1, reset
/// through the i8042 (which rvmm turns into a clean exit), no PCI probing, and
/// no keyboard or mouse probing on an i8042 that has neither.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd";

#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("it is {len} bytes with what rvmm adds, but this kernel accepts at most {max}; shorten --cmdline")]
    TooLong { len: usize, max: usize },
    #[error("'{text}' is not valid ({reason}); use printable ASCII only")]
    Invalid { text: String, reason: String },
}

/// Builds the command line from `base` plus `extra` arguments. `max_len` is
/// the kernel's limit in bytes, not counting the terminating NUL.
pub fn build_cmdline(
    base: &str,
    extra: &[String],
    max_len: usize,
) -> Result<Cmdline, CmdlineError> {
    let invalid = |text: &str, e: linux_loader::cmdline::Error| CmdlineError::Invalid {
        text: text.to_string(),
        reason: e.to_string(),
    };
    for text in std::iter::once(base).chain(extra.iter().map(String::as_str)) {
        if let Some(bad) = text.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(CmdlineError::Invalid {
                text: text.escape_default().to_string(),
                reason: format!("it contains {:?}", bad),
            });
        }
    }
    let total: usize = base.trim().len() + extra.iter().map(|e| e.len() + 1).sum::<usize>();
    if total > max_len {
        return Err(CmdlineError::TooLong {
            len: total,
            max: max_len,
        });
    }
    let mut cmdline = Cmdline::try_from(base.trim(), max_len + 1).map_err(|e| invalid(base, e))?;
    for arg in extra {
        cmdline.insert_str(arg).map_err(|e| invalid(arg, e))?;
    }
    Ok(cmdline)
}

/// The command line as the kernel will see it.
pub fn to_string(cmdline: &Cmdline) -> String {
    cmdline
        .as_cstring()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extras_follow_the_base() {
        let c = build_cmdline("console=ttyS0", &["noxsave".into(), "a=b".into()], 100).unwrap();
        assert_eq!(to_string(&c), "console=ttyS0 noxsave a=b");
    }

    #[test]
    fn extras_go_before_init_arguments() {
        let c = build_cmdline("quiet -- single", &["noxsave".into()], 100).unwrap();
        assert_eq!(to_string(&c), "quiet noxsave -- single");
    }

    #[test]
    fn the_limit_counts_everything_but_the_nul() {
        assert!(build_cmdline("abcd", &[], 4).is_ok());
        assert!(matches!(
            build_cmdline("abcd", &["e".into()], 5),
            Err(CmdlineError::TooLong { len: 6, max: 5 })
        ));
        let long = "x".repeat(3000);
        assert!(matches!(
            build_cmdline(&long, &[], 2047),
            Err(CmdlineError::TooLong { .. })
        ));
    }

    #[test]
    fn rejects_control_characters() {
        assert!(matches!(
            build_cmdline("a\u{7}b", &[], 100),
            Err(CmdlineError::Invalid { .. })
        ));
    }
}
