//! The release tarball, read safely. The archive is read entry by entry and
//! every file is written by this module (never by `tar`'s own unpacking):
//! each entry must be a plain file or folder under `package/` — absolute
//! paths, `..`, links, devices, fifos and duplicate paths are refused — and
//! the decompressed stream is capped, so a small gzip cannot fill the disk.
//! `package/bin/<name>` is written as `<name>` (mode 0755) and any other
//! `package/<path>` keeps its path (mode 0644); `package.json` is hashed but
//! not written. Nothing is verified here: [`Unpacked`] is what was found.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::rc::Rc;

use semver::Version;
use sha2::{Digest, Sha256};
use waiaas_shared::fsutil::fsync_dir;
use waiaas_shared::release::{MANIFEST, SIGNATURE};

use super::error::{PackageError, io_error};
use super::limits::{Limits, MIB, human};
use super::manifest::{MANIFEST_CAP, installed_path, mode_for};

/// The folder every npm tarball keeps its files in.
const PACKAGE_ROOT: &str = "package";

/// What the archive held: the hash of every file (by package-relative path),
/// and the manifest and signature bytes.
#[derive(Debug, Default)]
pub(super) struct Unpacked {
    pub(super) files: BTreeMap<String, String>,
    pub(super) manifest: Option<Vec<u8>>,
    pub(super) signature: Option<Vec<u8>>,
}

/// A tar entry's path relative to `package/`, or why it is unsafe.
fn package_relative(raw: &str) -> Result<String, PackageError> {
    let unsafe_entry = |why: &str| PackageError::UnsafeEntry {
        path: raw.to_string(),
        why: why.to_string(),
    };
    if raw.starts_with('/') {
        return Err(unsafe_entry("absolute path"));
    }
    let parts: Vec<&str> = raw
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(unsafe_entry("path escapes the package"));
    }
    if parts.first() != Some(&PACKAGE_ROOT) {
        return Err(unsafe_entry("outside the package/ folder"));
    }
    Ok(parts[1..].join("/"))
}

/// Counts what the decompressor yields and fails past the cap, so a small
/// gzip cannot unpack into an endless stream.
struct Capped<R> {
    inner: R,
    left: u64,
    hit: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.hit.set(true);
            return Err(io::Error::other("the unpacked size cap was reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn open_archive(
    tarball: &Path,
    limits: &Limits,
) -> Result<(tar::Archive<impl Read + use<>>, Rc<Cell<bool>>), PackageError> {
    let file = File::open(tarball).map_err(io_error("open", tarball))?;
    let hit = Rc::new(Cell::new(false));
    let reader = Capped {
        inner: flate2::read::GzDecoder::new(BufReader::new(file)),
        // The tar stream also holds headers and padding.
        left: limits.unpacked_bytes.saturating_add(4 * MIB),
        hit: hit.clone(),
    };
    Ok((tar::Archive::new(reader), hit))
}

/// Maps a read error of the archive to the cap, if hitting it caused the
/// error, or else to an unreadable archive.
fn read_error<'a>(
    hit: &'a Cell<bool>,
    limits: &'a Limits,
) -> impl Fn(io::Error) -> PackageError + Copy + 'a {
    move |e| {
        if hit.get() {
            PackageError::UnpackedTooLarge {
                cap: limits.unpacked_bytes,
            }
        } else {
            PackageError::Archive(e.to_string())
        }
    }
}

/// The version a tarball's `release.json` names (for `--from` without a
/// version): only to name the partial folder; everything is checked later.
pub(super) fn peek_version(tarball: &Path, limits: &Limits) -> Result<Version, PackageError> {
    let (mut archive, hit) = open_archive(tarball, limits)?;
    let archive_error = read_error(&hit, limits);
    for entry in archive.entries().map_err(archive_error)? {
        let entry = entry.map_err(archive_error)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if package_relative(&raw).ok().as_deref() != Some(MANIFEST)
            || entry.header().entry_type() != tar::EntryType::Regular
        {
            continue;
        }
        let mut bytes = Vec::new();
        entry
            .take(MANIFEST_CAP + 1)
            .read_to_end(&mut bytes)
            .map_err(archive_error)?;
        #[derive(serde::Deserialize)]
        struct VersionOnly {
            version: String,
        }
        let named: VersionOnly =
            serde_json::from_slice(&bytes).map_err(|e| PackageError::Manifest(e.to_string()))?;
        return Version::parse(&named.version).map_err(|_| {
            PackageError::Manifest(format!("version `{}` is not semver", named.version))
        });
    }
    Err(PackageError::NoManifest {
        place: "the package".into(),
    })
}

/// Writes every file of the archive into the new folder `partial`, checking
/// each entry first; returns what was found. Nothing is verified yet.
pub(super) fn unpack(
    tarball: &Path,
    partial: &Path,
    limits: &Limits,
) -> Result<Unpacked, PackageError> {
    let (mut archive, hit) = open_archive(tarball, limits)?;
    let archive_error = read_error(&hit, limits);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(partial)
        .map_err(io_error("create", partial))?;

    let mut unpacked = Unpacked::default();
    let mut seen = BTreeSet::new();
    let mut destinations = BTreeSet::new();
    let mut dirs = BTreeSet::from([partial.to_path_buf()]);
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let raw = match String::from_utf8(entry.path_bytes().into_owned()) {
            Ok(raw) => raw,
            Err(e) => {
                return Err(PackageError::UnsafeEntry {
                    path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    why: "the path is not UTF-8".into(),
                });
            }
        };
        let unsafe_entry = |why: &str| PackageError::UnsafeEntry {
            path: raw.clone(),
            why: why.to_string(),
        };
        let rel = package_relative(&raw)?;
        if !seen.insert(rel.clone()) {
            return Err(unsafe_entry("the path appears twice in the archive"));
        }
        use tar::EntryType;
        match entry.header().entry_type() {
            EntryType::Directory => continue,
            EntryType::Regular => {}
            EntryType::Symlink | EntryType::Link => {
                return Err(unsafe_entry("links are not allowed"));
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(unsafe_entry("special files are not allowed"));
            }
            other => {
                return Err(unsafe_entry(&format!(
                    "tar entry type {:?} is not allowed",
                    other.as_byte() as char
                )));
            }
        }
        if rel.is_empty() {
            return Err(unsafe_entry("a file in place of the package/ folder"));
        }
        let size = entry.header().size().map_err(archive_error)?;
        total = total.saturating_add(size);
        if total > limits.unpacked_bytes {
            return Err(PackageError::UnpackedTooLarge {
                cap: limits.unpacked_bytes,
            });
        }

        let memorised = rel == MANIFEST || rel == SIGNATURE;
        if memorised && size > MANIFEST_CAP {
            return Err(PackageError::Manifest(format!(
                "{rel} is larger than {}",
                human(MANIFEST_CAP)
            )));
        }
        let Some(dest_rel) = installed_path(&rel) else {
            // package.json: hashed for the file check, not installed.
            let hash = hash_reader(&mut entry, io::sink()).map_err(archive_error)?;
            unpacked.files.insert(rel, hash);
            continue;
        };
        if !destinations.insert(dest_rel.clone()) {
            return Err(unsafe_entry(&format!("it would overwrite {dest_rel}")));
        }
        let dest = partial.join(&dest_rel);
        if let Some(parent) = dest.parent().filter(|p| *p != partial) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_error("create", parent))?;
            let mut dir = parent;
            while dir != partial {
                dirs.insert(dir.to_path_buf());
                match dir.parent() {
                    Some(up) => dir = up,
                    None => break,
                }
            }
        }
        let mode = mode_for(&rel);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&dest)
            .map_err(io_error("create", &dest))?;
        let mut kept = Vec::new();
        let hash = if memorised {
            entry.read_to_end(&mut kept).map_err(archive_error)?;
            file.write_all(&kept).map_err(io_error("write", &dest))?;
            sha256_hex(&kept)
        } else {
            hash_reader(&mut entry, Tee(&mut file)).map_err(|e| {
                let ours = e.get_ref().is_some_and(|inner| inner.is::<WriteFailed>());
                if ours && !hit.get() {
                    io_error("write", &dest)(e)
                } else {
                    archive_error(e)
                }
            })?
        };
        // Not what the archive says, nor what the umask allows: what we decide.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", &dest))?;
        file.sync_all().map_err(io_error("sync", &dest))?;
        match rel.as_str() {
            MANIFEST => unpacked.manifest = Some(kept),
            SIGNATURE => unpacked.signature = Some(kept),
            _ => {}
        }
        unpacked.files.insert(rel, hash);
    }
    // Deepest first, so each folder's entry is durable in its parent.
    for dir in dirs.iter().rev() {
        fsync_dir(dir).map_err(io_error("sync", dir))?;
    }
    unpacked.files.remove(MANIFEST);
    unpacked.files.remove(SIGNATURE);
    Ok(unpacked)
}

/// Marks an error as the destination's, not the archive's.
#[derive(Debug)]
struct WriteFailed(io::Error);

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for WriteFailed {}

/// A writer whose errors are wrapped in [`WriteFailed`].
struct Tee<'a>(&'a mut File);

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .write(buf)
            .map_err(|e| io::Error::new(e.kind(), WriteFailed(e)))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0
            .flush()
            .map_err(|e| io::Error::new(e.kind(), WriteFailed(e)))
    }
}

/// Copies `reader` into `writer`, returning the sha256 (hex) of the bytes.
fn hash_reader(reader: &mut impl Read, mut writer: impl Write) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
    }
    writer.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn entry_paths_are_checked() {
        assert_eq!(package_relative("package/bin/x").unwrap(), "bin/x");
        assert_eq!(package_relative("./package//bin/./x").unwrap(), "bin/x");
        assert_eq!(package_relative("package/").unwrap(), "");
        for (raw, why) in [
            ("/etc/passwd", "absolute path"),
            ("../evil", "escapes"),
            ("package/../../evil", "escapes"),
            ("package/bin/../../x", "escapes"),
            ("other/x", "outside"),
            ("x", "outside"),
        ] {
            let msg = package_relative(raw).unwrap_err().to_string();
            assert!(
                msg.starts_with("unsafe entry in the package: ") && msg.contains(why),
                "{raw}: {msg}"
            );
        }
    }

    /// What a test archive holds: a path (written raw, so unsafe ones can be
    /// made), an entry type, and the content.
    struct Raw<'a>(&'a str, tar::EntryType, &'a [u8]);

    fn tarball(dir: &Path, entries: &[Raw<'_>]) -> PathBuf {
        let path = dir.join("t.tgz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut builder = tar::Builder::new(gz);
        for Raw(name, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            let bytes = name.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o777);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    fn unpack_in(
        entries: &[Raw<'_>],
        limits: &Limits,
    ) -> (tempfile::TempDir, Result<Unpacked, PackageError>) {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tarball(tmp.path(), entries);
        let result = unpack(&tgz, &tmp.path().join("out.partial"), limits);
        (tmp, result)
    }

    use tar::EntryType as T;

    #[test]
    fn a_plain_archive_is_unpacked_flat_with_our_modes() {
        let (tmp, result) = unpack_in(
            &[
                Raw("package/", T::Directory, b""),
                Raw("package/package.json", T::Regular, b"{}"),
                Raw("package/bin/waiaas-daemon", T::Regular, b"d"),
                Raw("package/release.json", T::Regular, b"{\"m\":1}"),
                Raw("package/release.json.minisig", T::Regular, b"sig"),
                Raw("package/LICENSE", T::Regular, b"MIT"),
            ],
            &Limits::default(),
        );
        let unpacked = result.unwrap();
        let out = tmp.path().join("out.partial");
        assert_eq!(unpacked.manifest.as_deref(), Some(&b"{\"m\":1}"[..]));
        assert_eq!(unpacked.signature.as_deref(), Some(&b"sig"[..]));
        assert_eq!(
            unpacked.files.keys().collect::<Vec<_>>(),
            ["LICENSE", "bin/waiaas-daemon", "package.json"]
        );
        assert_eq!(unpacked.files["LICENSE"], sha256_hex(b"MIT"));
        let mode = |name: &str| fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("waiaas-daemon"), 0o755);
        assert_eq!(mode("LICENSE"), 0o644);
        assert_eq!(mode("release.json"), 0o644);
        assert!(!out.join("package.json").exists() && !out.join("bin").exists());
    }

    #[test]
    fn unsafe_entries_are_refused() {
        let cases: &[(&[Raw<'_>], &str)] = &[
            (
                &[Raw("../evil", T::Regular, b"x")],
                "../evil (path escapes the package)",
            ),
            (
                &[Raw("/tmp/evil", T::Regular, b"x")],
                "/tmp/evil (absolute path)",
            ),
            (
                &[Raw("package/bin/x", T::Symlink, b"")],
                "links are not allowed",
            ),
            (
                &[Raw("package/bin/x", T::Link, b"")],
                "links are not allowed",
            ),
            (&[Raw("package/bin/x", T::Fifo, b"")], "special files"),
            (&[Raw("package/bin/x", T::Char, b"")], "special files"),
            (&[Raw("package/x", T::Continuous, b"")], "entry type '7'"),
            (
                &[
                    Raw("package/a", T::Regular, b"1"),
                    Raw("package/./a", T::Regular, b"2"),
                ],
                "appears twice",
            ),
            (
                &[
                    Raw("package/release.json", T::Regular, b"1"),
                    Raw("package/bin/release.json", T::Regular, b"2"),
                ],
                "would overwrite release.json",
            ),
        ];
        for (entries, expected) in cases {
            let (_tmp, result) = unpack_in(entries, &Limits::default());
            let msg = result.unwrap_err().to_string();
            assert!(
                msg.starts_with("unsafe entry in the package: ") && msg.contains(expected),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_package_that_unpacks_too_large_is_refused() {
        let big = vec![0u8; 256 * 1024];
        let limits = Limits {
            unpacked_bytes: 64 * 1024,
            ..Limits::default()
        };
        let (_tmp, result) = unpack_in(&[Raw("package/bin/x", T::Regular, &big)], &limits);
        let msg = result.unwrap_err().to_string();
        assert_eq!(msg, "the unpacked package is larger than the 64 KiB cap");
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.tgz");
        fs::write(&path, b"<html>not found</html>").unwrap();
        let msg = unpack(&path, &tmp.path().join("p"), &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not a readable .tgz"), "{msg}");
    }
}
