//! The release tarball, read safely and in two passes, so that nothing of a
//! package is written before its `release.json` is verified (SPEC §12):
//!
//! 1. [`scan`] reads the whole archive and writes nothing: it keeps
//!    `release.json` and `release.json.minisig` in memory, skips every other
//!    file's contents and notes its path;
//! 2. once the caller has verified those, [`unpack`] reads the archive again
//!    and writes only the files `release.json` lists, each hashed as it is
//!    written; any other file is refused before a byte of it is written.
//!
//! Both passes check every entry alike: the caps on entry count, entry name
//! length and unpacked size ([`Limits`]), and a plain file or folder under
//! `package/` — absolute paths, `..`, links, devices, fifos and duplicate
//! paths are refused. The archive's order proves nothing (a hostile one puts
//! `release.json` last), and the decompressed stream is capped too, so a
//! small gzip cannot fill the disk or the memory. `package/bin/<name>` is
//! written as `<name>` (mode 0755) and any other `package/<path>` keeps its
//! path (mode 0644); `package.json` is hashed but not written.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use sha2::{Digest, Sha256};
use waiaas_shared::fsutil::fsync_dir;
use waiaas_shared::release::{MANIFEST, ReleaseManifest, SIGNATURE};

use super::error::{PackageError, io_error};
use super::limits::{Limits, MIB, human};
use super::manifest::{
    MANIFEST_CAP, check_listing, compare_hash, installed_path, listed_hash, mode_for,
};

/// The folder every npm tarball keeps its files in.
const PACKAGE_ROOT: &str = "package";
/// How much of an over-long entry name a refusal quotes.
const NAME_QUOTED: usize = 64;

/// What the first pass found: the bytes of `release.json` and its signature,
/// and the package-relative path of every other file.
#[derive(Debug, Default)]
pub(super) struct Scanned {
    pub(super) manifest: Option<Vec<u8>>,
    pub(super) signature: Option<Vec<u8>>,
    pub(super) files: BTreeSet<String>,
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

/// The checks both passes make of each entry, and what they have seen.
struct Checker<'a> {
    limits: &'a Limits,
    entries: u64,
    total: u64,
    seen: BTreeSet<String>,
    destinations: BTreeSet<String>,
}

/// A file entry that passed the checks.
struct FileEntry<'a> {
    /// Its path relative to `package/`.
    rel: String,
    size: u64,
    data: &'a mut dyn Read,
}

impl<'a> Checker<'a> {
    fn new(limits: &'a Limits) -> Self {
        Self {
            limits,
            entries: 0,
            total: 0,
            seen: BTreeSet::new(),
            destinations: BTreeSet::new(),
        }
    }

    /// Checks one entry: its package-relative path if it is a file, `None`
    /// for a folder.
    fn check<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
    ) -> Result<Option<String>, PackageError> {
        let limits = self.limits;
        self.entries += 1;
        if self.entries > limits.entries {
            return Err(PackageError::TooManyEntries {
                cap: limits.entries,
            });
        }
        let bytes = entry.path_bytes();
        if bytes.len() > limits.entry_name_bytes {
            let quoted = &bytes[..NAME_QUOTED.min(bytes.len())];
            return Err(PackageError::EntryNameTooLong {
                cap: limits.entry_name_bytes,
                start: String::from_utf8_lossy(quoted).into_owned(),
            });
        }
        let raw = match String::from_utf8(bytes.into_owned()) {
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
        if !self.seen.insert(rel.clone()) {
            return Err(unsafe_entry("the path appears twice in the archive"));
        }
        use tar::EntryType;
        match entry.header().entry_type() {
            EntryType::Directory => return Ok(None),
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
        // The size the reader will yield (a PAX header may override the ustar one).
        self.total = self.total.saturating_add(entry.size());
        if self.total > limits.unpacked_bytes {
            return Err(PackageError::UnpackedTooLarge {
                cap: limits.unpacked_bytes,
            });
        }
        if let Some(dest_rel) = installed_path(&rel)
            && !self.destinations.insert(dest_rel.clone())
        {
            return Err(unsafe_entry(&format!("it would overwrite {dest_rel}")));
        }
        Ok(Some(rel))
    }
}

/// Reads the archive once, checking every entry, and hands each file to
/// `visit` with the error mapping of the archive's read errors. Contents
/// `visit` does not read are skipped.
fn each_file(
    tarball: &Path,
    limits: &Limits,
    mut visit: impl FnMut(FileEntry<'_>, &dyn Fn(io::Error) -> PackageError) -> Result<(), PackageError>,
) -> Result<(), PackageError> {
    let (mut archive, hit) = open_archive(tarball, limits)?;
    let archive_error = read_error(&hit, limits);
    let mut checker = Checker::new(limits);
    for entry in archive.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let Some(rel) = checker.check(&entry)? else {
            continue;
        };
        let size = entry.size();
        visit(
            FileEntry {
                rel,
                size,
                data: &mut entry,
            },
            &archive_error,
        )?;
    }
    Ok(())
}

/// The first pass: checks every entry and keeps `release.json` and its
/// signature; writes nothing and reads no other file's contents.
pub(super) fn scan(tarball: &Path, limits: &Limits) -> Result<Scanned, PackageError> {
    let mut scanned = Scanned::default();
    each_file(tarball, limits, |file, archive_error| {
        let slot = match file.rel.as_str() {
            MANIFEST => &mut scanned.manifest,
            SIGNATURE => &mut scanned.signature,
            _ => {
                scanned.files.insert(file.rel);
                return Ok(());
            }
        };
        if file.size > MANIFEST_CAP {
            return Err(PackageError::Manifest(format!(
                "{} is larger than {}",
                file.rel,
                human(MANIFEST_CAP)
            )));
        }
        let mut bytes = Vec::new();
        file.data
            .take(MANIFEST_CAP)
            .read_to_end(&mut bytes)
            .map_err(archive_error)?;
        *slot = Some(bytes);
        Ok(())
    })?;
    Ok(scanned)
}

/// The second pass, after `scanned`'s `release.json` and signature were
/// verified and `manifest` checked: writes those two from memory into the new
/// folder `partial`, then reads the archive again and writes each file
/// `manifest` lists, hashed as it is written. A file it does not list is
/// refused before anything of it is written, one whose hash differs as soon
/// as it is.
pub(super) fn unpack(
    tarball: &Path,
    partial: &Path,
    scanned: &Scanned,
    manifest: &ReleaseManifest,
    limits: &Limits,
) -> Result<(), PackageError> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(partial)
        .map_err(io_error("create", partial))?;
    let mut writer = Writer {
        root: partial,
        dirs: BTreeSet::from([partial.to_path_buf()]),
    };
    // Reading bytes in memory cannot fail; the mapping is only for the type.
    let from_memory = |e| PackageError::Internal(format!("reading memory failed: {e}"));
    for (name, bytes) in [
        (MANIFEST, &scanned.manifest),
        (SIGNATURE, &scanned.signature),
    ] {
        if let Some(bytes) = bytes {
            writer.write(name, mode_for(name), &mut &bytes[..], &from_memory)?;
        }
    }

    let mut written = BTreeSet::new();
    each_file(tarball, limits, |file, archive_error| {
        if file.rel == MANIFEST || file.rel == SIGNATURE {
            // Written above, from the bytes that were verified.
            return Ok(());
        }
        let Some(expected) = listed_hash(manifest, &file.rel)? else {
            // npm's own package.json, unlisted: neither checked nor written.
            return Ok(());
        };
        let hash = match installed_path(&file.rel) {
            None => hash_reader(file.data, io::sink()).map_err(archive_error)?,
            Some(dest_rel) => {
                writer.write(&dest_rel, mode_for(&file.rel), file.data, archive_error)?
            }
        };
        compare_hash(&file.rel, &hash, expected)?;
        written.insert(file.rel);
        Ok(())
    })?;
    check_listing(manifest, &written)?;
    // Deepest first, so each folder's entry is durable in its parent.
    for dir in writer.dirs.iter().rev() {
        fsync_dir(dir).map_err(io_error("sync", dir))?;
    }
    Ok(())
}

/// Writes files below `root`, creating their folders and noting them for
/// the final sync.
struct Writer<'a> {
    root: &'a Path,
    dirs: BTreeSet<PathBuf>,
}

impl Writer<'_> {
    /// Writes `data` as the new file `rel` with `mode`, synced; returns its
    /// sha256 (hex). `read_error` maps a failure to read `data`.
    fn write(
        &mut self,
        rel: &str,
        mode: u32,
        data: &mut dyn Read,
        read_error: &dyn Fn(io::Error) -> PackageError,
    ) -> Result<String, PackageError> {
        let dest = self.root.join(rel);
        if let Some(parent) = dest.parent().filter(|p| *p != self.root) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io_error("create", parent))?;
            self.dirs.extend(
                parent
                    .ancestors()
                    .take_while(|dir| *dir != self.root)
                    .map(Path::to_path_buf),
            );
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&dest)
            .map_err(io_error("create", &dest))?;
        let hash = hash_reader(data, Tee(&mut file)).map_err(|e| {
            if e.get_ref().is_some_and(|inner| inner.is::<WriteFailed>()) {
                io_error("write", &dest)(e)
            } else {
                read_error(e)
            }
        })?;
        // Not what the archive says, nor what the umask allows: what we decide.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error("set the mode of", &dest))?;
        file.sync_all().map_err(io_error("sync", &dest))?;
        Ok(hash)
    }
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
fn hash_reader(reader: &mut (impl Read + ?Sized), mut writer: impl Write) -> io::Result<String> {
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

    fn scan_of(entries: &[Raw<'_>], limits: &Limits) -> Result<Scanned, PackageError> {
        let tmp = tempfile::tempdir().unwrap();
        scan(&tarball(tmp.path(), entries), limits)
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    use tar::EntryType as T;

    /// A package of a program, a licence, npm's package.json and
    /// `release.json` last, as a hostile packer may order it.
    const PLAIN: &[Raw<'static>] = &[
        Raw("package/", T::Directory, b""),
        Raw("package/package.json", T::Regular, b"{}"),
        Raw("package/bin/waiaas-daemon", T::Regular, b"d"),
        Raw("package/LICENSE", T::Regular, b"MIT"),
        Raw("package/release.json.minisig", T::Regular, b"sig"),
        Raw("package/release.json", T::Regular, b"{\"m\":1}"),
    ];

    fn listing(files: &[(&str, &[u8])]) -> ReleaseManifest {
        ReleaseManifest {
            name: "x".into(),
            version: "1.0.0".into(),
            target: "x".into(),
            schema_version: 1,
            min_compatible_schema_version: 1,
            files: files
                .iter()
                .map(|(path, bytes)| (path.to_string(), sha256_hex(bytes)))
                .collect(),
            rollout_seconds: None,
        }
    }

    #[test]
    fn the_first_pass_keeps_the_manifest_and_signature_and_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tarball(tmp.path(), PLAIN);
        let scanned = scan(&tgz, &Limits::default()).unwrap();
        assert_eq!(scanned.manifest.as_deref(), Some(&b"{\"m\":1}"[..]));
        assert_eq!(scanned.signature.as_deref(), Some(&b"sig"[..]));
        assert_eq!(
            scanned.files.iter().collect::<Vec<_>>(),
            ["LICENSE", "bin/waiaas-daemon", "package.json"]
        );
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the tarball: {left:?}");
    }

    #[test]
    fn the_second_pass_writes_the_listed_files_flat_with_our_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let tgz = tarball(tmp.path(), PLAIN);
        let scanned = scan(&tgz, &Limits::default()).unwrap();
        let manifest = listing(&[("bin/waiaas-daemon", b"d"), ("LICENSE", b"MIT")]);
        let out = tmp.path().join("out.partial");
        unpack(&tgz, &out, &scanned, &manifest, &Limits::default()).unwrap();
        let mode = |name: &str| fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("waiaas-daemon"), 0o755);
        assert_eq!(mode("LICENSE"), 0o644);
        assert_eq!(mode("release.json"), 0o644);
        assert_eq!(fs::read(out.join("release.json.minisig")).unwrap(), b"sig");
        assert!(!out.join("package.json").exists() && !out.join("bin").exists());
    }

    /// A file below folders is written there, and each folder made for it
    /// is noted for the final sync (deepest first), never the root itself.
    #[test]
    fn a_nested_file_is_written_with_its_folders_noted_for_the_sync() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out.partial");
        fs::create_dir(&root).unwrap();
        let mut writer = Writer {
            root: &root,
            dirs: BTreeSet::from([root.clone()]),
        };
        let unreadable = |e| PackageError::Archive(format!("{e}"));
        let hash = writer
            .write("docs/en/README", 0o644, &mut &b"read me"[..], &unreadable)
            .unwrap();
        assert_eq!(hash, sha256_hex(b"read me"));
        assert_eq!(fs::read(root.join("docs/en/README")).unwrap(), b"read me");
        writer
            .write("LICENSE", 0o644, &mut &b"MIT"[..], &unreadable)
            .unwrap();
        assert_eq!(
            writer.dirs,
            BTreeSet::from([root.clone(), root.join("docs"), root.join("docs/en")])
        );
    }

    /// A failure to write is the destination's, named with the system's
    /// reason (here a full device).
    #[test]
    fn a_failed_write_is_marked_as_the_destination_s() {
        let mut full = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let failed = Tee(&mut full).write(b"x").unwrap_err();
        assert!(
            failed
                .get_ref()
                .is_some_and(|inner| inner.is::<WriteFailed>())
        );
        assert!(
            failed.to_string().contains("No space left on device"),
            "{failed}"
        );
    }

    #[test]
    fn the_second_pass_refuses_an_unlisted_or_altered_file_before_writing_it() {
        let cases: [(ReleaseManifest, &str); 2] = [
            (
                listing(&[("bin/waiaas-daemon", b"d")]),
                "file check failed: the package holds LICENSE, which release.json does not list",
            ),
            (
                listing(&[("bin/waiaas-daemon", b"d"), ("LICENSE", b"GPL")]),
                "file check failed: LICENSE has sha256",
            ),
        ];
        for (manifest, expected) in cases {
            let tmp = tempfile::tempdir().unwrap();
            let tgz = tarball(tmp.path(), PLAIN);
            let scanned = scan(&tgz, &Limits::default()).unwrap();
            let out = tmp.path().join("out.partial");
            let msg = unpack(&tgz, &out, &scanned, &manifest, &Limits::default())
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(expected), "{msg}");
            // An unlisted file is never opened; an altered one is the caller's to remove.
            assert_eq!(out.join("LICENSE").exists(), expected.contains("sha256"));
        }
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
            let msg = scan_of(entries, &Limits::default())
                .unwrap_err()
                .to_string();
            assert!(
                msg.starts_with("unsafe entry in the package: ") && msg.contains(expected),
                "{msg}"
            );
        }
    }

    #[test]
    fn each_cap_is_named_when_it_is_reached() {
        let big = vec![0u8; 256 * 1024];
        let long = format!("package/{}", "n".repeat(80));
        let many: Vec<String> = (0..9).map(|i| format!("package/f{i}")).collect();
        let many: Vec<Raw<'_>> = many.iter().map(|n| Raw(n, T::Regular, b"")).collect();
        let limits = Limits {
            unpacked_bytes: 64 * 1024,
            entries: 8,
            entry_name_bytes: 64,
            ..Limits::default()
        };
        let cases: [(&[Raw<'_>], &str); 3] = [
            (
                &[Raw("package/bin/x", T::Regular, &big)],
                "the unpacked package is larger than the 64 KiB cap",
            ),
            (
                &many,
                "the package has more than 8 entries (the cap on the number of entries)",
            ),
            (
                &[Raw(&long, T::Regular, b"")],
                "an entry's name is longer than the 64-byte cap on entry names: package/nnn",
            ),
        ];
        for (entries, expected) in cases {
            let msg = scan_of(entries, &limits).unwrap_err().to_string();
            assert!(msg.starts_with(expected), "{msg}");
        }
        // At the caps exactly, all is well.
        assert!(scan_of(&many[..8], &limits).is_ok());
        let at_cap = format!("package/{}", "n".repeat(64 - "package/".len()));
        assert!(scan_of(&[Raw(&at_cap, T::Regular, b"")], &limits).is_ok());
        let content = vec![0u8; 64 * 1024];
        assert!(scan_of(&[Raw("package/bin/x", T::Regular, &content)], &limits).is_ok());
    }

    /// The decompressed stream may exceed the unpacked cap by the tar
    /// headers and padding (up to 4 MiB): many empty files within the caps
    /// are read; the stream is cut past that.
    #[test]
    fn the_stream_cap_leaves_room_for_the_tar_headers() {
        // 3,000 headers of 512 bytes: 1.5 MiB of stream, no file content.
        let names: Vec<String> = (0..3000).map(|i| format!("package/f{i}")).collect();
        let entries: Vec<Raw<'_>> = names.iter().map(|n| Raw(n, T::Regular, b"")).collect();
        let limits = Limits {
            unpacked_bytes: 0,
            entries: 3000,
            ..Limits::default()
        };
        assert_eq!(scan_of(&entries, &limits).unwrap().files.len(), 3000);
    }

    /// `release.json` and its signature are read into memory, up to 1 MiB.
    #[test]
    fn the_manifest_is_read_up_to_its_cap() {
        let cap = usize::try_from(MANIFEST_CAP).unwrap();
        let (at_cap, over) = (vec![b' '; cap], vec![b' '; cap + 1]);
        let limits = Limits::default();
        let scanned = scan_of(&[Raw("package/release.json", T::Regular, &at_cap)], &limits);
        assert_eq!(scanned.unwrap().manifest.map(|m| m.len()), Some(cap));
        let refused = scan_of(
            &[Raw("package/release.json.minisig", T::Regular, &over)],
            &limits,
        )
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("release.json.minisig is larger than 1 MiB"),
            "{refused}"
        );
    }

    /// What the decompressor yields is counted across reads, up to the cap
    /// exactly.
    #[test]
    fn the_decompressed_stream_is_capped_across_reads() {
        let read_all = |left: u64| {
            let hit = Rc::new(Cell::new(false));
            let mut capped = Capped {
                inner: &[7u8; 20][..],
                left,
                hit: hit.clone(),
            };
            let (mut total, mut buf) = (0, [0u8; 10]);
            let result = loop {
                match capped.read(&mut buf) {
                    Ok(0) => break Ok(total),
                    Ok(n) => total += n,
                    Err(e) => break Err(e),
                }
            };
            (result.ok(), hit.get())
        };
        assert_eq!(read_all(20), (Some(20), false), "exactly the cap");
        assert_eq!(read_all(15), (None, true), "past it on the second read");
        assert_eq!(read_all(9), (None, true), "past it on the first");
    }

    #[test]
    fn garbage_is_not_an_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.tgz");
        fs::write(&path, b"<html>not found</html>").unwrap();
        let msg = scan(&path, &Limits::default()).unwrap_err().to_string();
        assert!(msg.contains("not a readable .tgz"), "{msg}");
    }
}
