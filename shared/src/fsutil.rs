//! Durable file operations: a crash at any instant leaves either the old or
//! the new content, never a torn file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Flushes a directory's entries (a rename is durable only after this).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` through a temp file in the same folder, fsynced and
/// renamed into place, then fsyncs the folder. The temp file is this
/// process's own (its pid in the name), created new (`O_EXCL`) without
/// following a link, so nothing planted at that name is written through.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(temp_name(&name.to_string_lossy()));
    // A leftover of this pid (a crash, then pid reuse) goes; a link goes
    // itself, not its target; a folder there is an error.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Copies `from` to `to` (made or replaced), sets `mode` and fsyncs the
/// copy; the caller fsyncs the folder once its files are all there.
pub fn copy_synced(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    File::open(to)?.sync_all()
}

/// The temp file [`write_atomic`] uses for `name` in this process.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.{}.tmp", std::process::id())
}

/// The SHA-256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Which side of [`copy_hashed`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading: {0}")]
    Read(#[source] io::Error),
    #[error("writing: {0}")]
    Write(#[source] io::Error),
}

/// What [`copy_hashed`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// SHA-256 of the bytes written, lowercase hex.
    pub sha256: String,
    pub len: u64,
}

/// Copies `source` to the new file `dest` (created with `mode`, never over
/// an existing file), hashing as it goes — one read of the data — then
/// fsyncs it.
pub fn copy_hashed(source: &Path, dest: &Path, mode: u32) -> Result<Copied, CopyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = File::open(source).map_err(CopyError::Read)?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(dest)
        .map_err(CopyError::Write)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        len += n as u64;
    }
    to.sync_all().map_err(CopyError::Write)?;
    Ok(Copied {
        sha256: hex::encode(hasher.finalize()),
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"abc", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"], "no temp file left behind");
    }

    #[test]
    fn a_link_planted_at_the_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("a.json");
        std::os::unix::fs::symlink(&victim, dir.path().join(temp_name("a.json"))).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
