//! The `current` symlink: which installed version runs. It is only ever
//! replaced atomically (a new link renamed over the old), so a reader — or a
//! crash — sees either the old target or the new one.

use std::io;
use std::path::Path;

use waiaas_shared::fsutil::fsync_dir;
use waiaas_shared::layout::DataDir;

/// The version `current` points at (the name of its `versions/<v>` target).
pub fn current_version(dir: &DataDir) -> io::Result<Option<String>> {
    match std::fs::read_link(dir.current()) {
        Ok(target) => Ok(target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Points `current` at `versions/<version>` (relative, so the data dir can move).
pub fn point_current(dir: &DataDir, version: &str) -> io::Result<()> {
    if !dir.version(version).join("waiaas-daemon").is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no waiaas-daemon", dir.version(version).display()),
        ));
    }
    let staged = dir.root().join(".current.swap");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(Path::new("versions").join(version), &staged)?;
    std::fs::rename(&staged, dir.current())?;
    fsync_dir(dir.root())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_are_atomic_renames_of_relative_links() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        for v in ["1.9.0", "1.10.0"] {
            std::fs::create_dir_all(dir.version(v)).unwrap();
            std::fs::write(dir.version(v).join("waiaas-daemon"), b"").unwrap();
        }
        assert_eq!(current_version(&dir).unwrap(), None);
        point_current(&dir, "1.9.0").unwrap();
        point_current(&dir, "1.10.0").unwrap();
        assert_eq!(current_version(&dir).unwrap().as_deref(), Some("1.10.0"));
        assert_eq!(
            std::fs::read_link(dir.current()).unwrap(),
            Path::new("versions/1.10.0")
        );
        assert!(point_current(&dir, "2.0.0").is_err(), "no such version");
        assert_eq!(current_version(&dir).unwrap().as_deref(), Some("1.10.0"));
    }
}
