//! How much a fetch may download and unpack, and how long it may take.

use std::time::Duration;

use waiaas_shared::registry;

pub(super) const KIB: u64 = 1 << 10;
pub(super) const MIB: u64 = 1 << 20;

/// Sizes and timeouts of a fetch. [`Limits::default`] is what `upgrade` uses;
/// tests pass smaller caps to [`fetch_with_limits`] and [`install_file_with_limits`].
///
/// [`fetch_with_limits`]: super::fetch_with_limits
/// [`install_file_with_limits`]: super::install_file_with_limits
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest packument read.
    pub packument_bytes: u64,
    /// Largest tarball downloaded (also refused early on a larger Content-Length).
    pub tarball_bytes: u64,
    /// Largest total of the unpacked files (a small gzip can unpack to a lot).
    pub unpacked_bytes: u64,
    /// Most tar entries (files and folders) in a package; a release has a handful.
    pub entries: u64,
    /// Longest entry name, in bytes.
    pub entry_name_bytes: usize,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout: Duration,
    /// A packument request in all, connection to last byte.
    pub packument_timeout: Duration,
    /// The tarball download in all, connection to last byte.
    pub download_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            packument_bytes: registry::PACKUMENT_BODY_CAP,
            tarball_bytes: 512 * MIB,
            unpacked_bytes: 2048 * MIB,
            entries: 1024,
            entry_name_bytes: 256,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            packument_timeout: Duration::from_secs(120),
            download_timeout: Duration::from_secs(600),
        }
    }
}

/// A cap as messages name it: `512 MiB`, `1 KiB`, `1000 bytes`.
pub(super) fn human(bytes: u64) -> String {
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_named_in_whole_units() {
        assert_eq!(human(512 * MIB), "512 MiB");
        assert_eq!(human(4 * KIB), "4 KiB");
        assert_eq!(human(1000), "1000 bytes");
        // Whole units only: not rounded down into a larger unit.
        assert_eq!(human(1536 * KIB), "1536 KiB");
        assert_eq!(human(1500), "1500 bytes");
        assert_eq!(human(0), "0 bytes");
    }
}
