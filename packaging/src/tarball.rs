//! npm package tarballs: gzip'd ustar archives, every entry under `package/`.
//!
//! Entries are written exactly as given — in order, with the given path, type
//! and mode, owner 0:0, and a fixed mtime — so the same entries always give
//! the same bytes. Nothing here checks that a path is safe: [`crate::pack`]
//! only writes fixed, known-good paths, and tests use [`Entry`] to build
//! hostile packages (`../` paths, absolute paths, links, FIFOs) on purpose.

use std::fs;
use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::{Compression, GzBuilder};
use sha2::{Digest as _, Sha512};
use tar::{EntryType, Header};

use crate::PackError;

/// The mtime of every entry: the one `npm pack` uses (1985-10-26T08:15:00Z),
/// so tarballs are reproducible.
pub const NPM_MTIME: u64 = 499_162_500;

/// One member of a package tarball. Test and tooling helper; see [`write_package_tarball`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path stored in the archive, byte for byte (normally `package/…`;
    /// `../x` or `/etc/x` are written as given).
    pub path: String,
    pub kind: EntryKind,
}

/// What an [`Entry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file with its contents and permission bits (e.g. `0o755`).
    File { contents: Vec<u8>, mode: u32 },
    /// A directory (`npm pack` writes none; extractors must cope anyway).
    Dir { mode: u32 },
    /// A symbolic link to `target`.
    Symlink { target: String },
    /// A hard link to the archive member `target`.
    Hardlink { target: String },
    /// A named pipe — a "special file" an extractor must refuse.
    Fifo,
}

impl Entry {
    /// A regular file.
    pub fn file(path: impl Into<String>, contents: impl Into<Vec<u8>>, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                contents: contents.into(),
                mode,
            },
        }
    }

    /// A directory.
    pub fn dir(path: impl Into<String>, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode },
        }
    }

    /// A symbolic link `path -> target`.
    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        }
    }

    /// A hard link `path` to the member `target`.
    pub fn hardlink(path: impl Into<String>, target: impl Into<String>) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Hardlink {
                target: target.into(),
            },
        }
    }

    /// A named pipe.
    pub fn fifo(path: impl Into<String>) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Fifo,
        }
    }
}

/// The gzip'd tarball of `entries`, in memory.
pub fn tarball_bytes(entries: &[Entry]) -> Result<Vec<u8>, PackError> {
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::default());
    let mut builder = tar::Builder::new(gz);
    for entry in entries {
        let (header, data) = header_for(entry)?;
        builder
            .append(&header, data)
            .map_err(|e| bad(entry, &e.to_string()))?;
    }
    let gz = builder
        .into_inner()
        .map_err(|e| PackError::Signature(format!("tar: {e}")))?;
    gz.finish()
        .map_err(|e| PackError::Signature(format!("gzip: {e}")))
}

/// Writes the gzip'd tarball of `entries` to `path` (atomically: a temporary
/// file beside it, then a rename).
///
/// Test and tooling helper: the launcher's security tests use it to build bad
/// packages; [`crate::pack`] uses it for the real ones.
pub fn write_package_tarball(path: &Path, entries: &[Entry]) -> Result<(), PackError> {
    write_atomically(path, &tarball_bytes(entries)?)
}

/// `sha512-<base64>`: the Subresource Integrity string npm records as a
/// package version's `dist.integrity`.
pub fn sri_sha512(bytes: &[u8]) -> String {
    format!("sha512-{}", BASE64.encode(Sha512::digest(bytes)))
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PackError> {
    let name = path
        .file_name()
        .ok_or_else(|| PackError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("not a file path"),
        })?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        PackError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    })
}

fn bad(entry: &Entry, reason: &str) -> PackError {
    PackError::BadEntry {
        path: entry.path.clone(),
        reason: reason.to_string(),
    }
}

fn header_for(entry: &Entry) -> Result<(Header, &[u8]), PackError> {
    let mut header = Header::new_ustar();
    put_path(&mut header, entry)?;
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(NPM_MTIME);
    let mut data: &[u8] = &[];
    match &entry.kind {
        EntryKind::File { contents, mode } => {
            header.set_entry_type(EntryType::Regular);
            header.set_mode(*mode);
            data = contents;
        }
        EntryKind::Dir { mode } => {
            header.set_entry_type(EntryType::Directory);
            header.set_mode(*mode);
        }
        EntryKind::Symlink { target } | EntryKind::Hardlink { target } => {
            header.set_entry_type(if matches!(entry.kind, EntryKind::Symlink { .. }) {
                EntryType::Symlink
            } else {
                EntryType::Link
            });
            header.set_mode(0o777);
            put_field(&mut header.as_old_mut().linkname, target)
                .map_err(|reason| bad(entry, &format!("link target: {reason}")))?;
        }
        EntryKind::Fifo => {
            header.set_entry_type(EntryType::Fifo);
            header.set_mode(0o644);
        }
    }
    header.set_size(data.len() as u64);
    header.set_cksum();
    Ok((header, data))
}

/// Stores the path verbatim (no normalisation, so hostile paths survive),
/// using ustar's prefix field for paths over 100 bytes.
fn put_path(header: &mut Header, entry: &Entry) -> Result<(), PackError> {
    let path = entry.path.as_str();
    if path.len() <= 100 {
        return put_field(&mut header.as_old_mut().name, path).map_err(|r| bad(entry, &r));
    }
    let split = path
        .char_indices()
        .filter(|&(i, c)| c == '/' && i <= 155 && path.len() - i - 1 <= 100)
        .map(|(i, _)| i)
        .next()
        .ok_or_else(|| {
            bad(
                entry,
                "longer than ustar allows (155 + 100 bytes split at a '/')",
            )
        })?;
    let ustar = header.as_ustar_mut().expect("a ustar header");
    put_field(&mut ustar.prefix, &path[..split]).map_err(|r| bad(entry, &r))?;
    put_field(&mut ustar.name, &path[split + 1..]).map_err(|r| bad(entry, &r))
}

fn put_field(field: &mut [u8], value: &str) -> Result<(), String> {
    if value.is_empty() || value.contains('\0') {
        return Err("must be non-empty and free of NUL bytes".into());
    }
    if value.len() > field.len() {
        return Err(format!("longer than {} bytes", field.len()));
    }
    field.fill(0);
    field[..value.len()].copy_from_slice(value.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Path, type, mode, contents, link target.
    type Member = (String, EntryType, u32, Vec<u8>, Option<String>);

    fn read_back(bytes: &[u8]) -> Vec<Member> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let kind = e.header().entry_type();
                let mode = e.header().mode().unwrap();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).unwrap());
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                (path, kind, mode, data, link)
            })
            .collect()
    }

    #[test]
    fn hostile_entries_are_written_verbatim() {
        let long = format!("package/{}/file", "d".repeat(120));
        let entries = [
            Entry::file("package/a", b"x".to_vec(), 0o755),
            Entry::file("../escape", b"y".to_vec(), 0o644),
            Entry::file("/etc/evil", b"z".to_vec(), 0o644),
            Entry::symlink("package/bin/waiaas-daemon", "/bin/sh"),
            Entry::hardlink("package/h", "/etc/passwd"),
            Entry::dir("package/d/", 0o755),
            Entry::fifo("package/p"),
            Entry::file(long.clone(), b"l".to_vec(), 0o644),
        ];
        let bytes = tarball_bytes(&entries).unwrap();
        assert_eq!(bytes, tarball_bytes(&entries).unwrap(), "reproducible");
        let got = read_back(&bytes);
        let paths: Vec<_> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "package/a",
                "../escape",
                "/etc/evil",
                "package/bin/waiaas-daemon",
                "package/h",
                "package/d/",
                "package/p",
                long.as_str()
            ]
        );
        assert_eq!(got[0].1, EntryType::Regular);
        assert_eq!(got[0].2, 0o755);
        assert_eq!(got[0].3, b"x");
        assert_eq!(got[3].1, EntryType::Symlink);
        assert_eq!(got[3].4.as_deref(), Some("/bin/sh"));
        assert_eq!(got[4].1, EntryType::Link);
        assert_eq!(got[6].1, EntryType::Fifo);
    }

    #[test]
    fn sri_matches_a_known_value() {
        // printf '' | openssl dgst -sha512 -binary | base64
        assert_eq!(
            sri_sha512(b""),
            "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="
        );
    }
}
