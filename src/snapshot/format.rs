//! The snapshot state file: a header (magic, format version, checksum and
//! length of the body), then the body, JSON. Every way a file can be wrong
//! (another file, another format, cut short, changed) is refused with a
//! line that says which.

const MAGIC: &[u8; 8] = b"RVMMSNAP";
/// Bump when the body's meaning changes; older files are refused.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8;
/// No state file of a VM rvmm can build comes near this.
const MAX_BODY: u64 = 64 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("is not an rvmm snapshot (no RVMMSNAP header)")]
    NotASnapshot,
    #[error("is a snapshot of format {found}; this rvmm reads format {FORMAT_VERSION}: take the snapshot again with this rvmm")]
    Version { found: u32 },
    #[error("is cut short ({have} of {want} bytes): the file was not written whole")]
    Truncated { have: u64, want: u64 },
    #[error("is corrupt: its checksum does not match its contents")]
    Checksum,
}

/// The file for `body`.
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of `file`, once its header holds.
pub fn decode(file: &[u8]) -> Result<&[u8], FormatError> {
    if file.len() < HEADER_LEN || &file[..8] != MAGIC {
        return Err(FormatError::NotASnapshot);
    }
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().expect("4 bytes"));
    let found = u32_at(8);
    if found != FORMAT_VERSION {
        return Err(FormatError::Version { found });
    }
    let checksum = u32_at(12);
    let want = u64::from_le_bytes(file[16..24].try_into().expect("8 bytes"));
    let have = (file.len() - HEADER_LEN) as u64;
    if want > MAX_BODY || have < want {
        return Err(FormatError::Truncated { have, want });
    }
    let body = &file[HEADER_LEN..HEADER_LEN + want as usize];
    if crc32fast::hash(body) != checksum {
        return Err(FormatError::Checksum);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips_and_every_damage_is_named() {
        let file = encode(b"{\"a\":1}");
        assert_eq!(decode(&file), Ok(&b"{\"a\":1}"[..]));
        assert_eq!(decode(b"hello"), Err(FormatError::NotASnapshot));
        let mut other = file.clone();
        other[8] = 9;
        assert_eq!(decode(&other), Err(FormatError::Version { found: 9 }));
        assert_eq!(
            decode(&file[..file.len() - 2]),
            Err(FormatError::Truncated { have: 5, want: 7 })
        );
        let mut flipped = file.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped), Err(FormatError::Checksum));
        let mut huge = file;
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(FormatError::Truncated { .. })));
    }
}
