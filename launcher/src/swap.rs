//! The `current` symlink: which installed version runs. It is only ever
//! replaced atomically (a new link renamed over the old), so a reader — or a
//! crash — sees either the old target or the new one.

use std::io;
use std::path::Path;

use waiaas_shared::fsutil::fsync_dir;
use waiaas_shared::layout::DataDir;

/// The version `current` points at. The link must name `versions/<version>`
/// (as [`point_current`] writes it, or absolute under this data dir): a link
/// anywhere else is refused, never followed.
pub fn current_version(dir: &DataDir) -> io::Result<Option<String>> {
    let target = match std::fs::read_link(dir.current()) {
        Ok(target) => target,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned());
    let inside = target
        .parent()
        .is_some_and(|parent| parent == Path::new("versions") || parent == dir.versions());
    match name {
        Some(name) if inside && waiaas_shared::version::parse_local(&name).is_ok() => {
            Ok(Some(name))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} points at {}, not at versions/<version>; point it at an installed version \
                 (ln -sfn versions/<version> {})",
                dir.current().display(),
                target.display(),
                dir.current().display()
            ),
        )),
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

    #[test]
    fn a_current_pointing_outside_versions_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        for target in [
            "../../evil/1.9.0",
            "/tmp/1.9.0",
            "versions/../..",
            "versions/evil",
        ] {
            let _ = std::fs::remove_file(dir.current());
            std::os::unix::fs::symlink(target, dir.current()).unwrap();
            let e = current_version(&dir).unwrap_err();
            assert!(e.to_string().contains("not at versions/"), "{target}: {e}");
        }
    }

    #[test]
    fn no_current_is_none_but_a_current_that_is_not_a_link_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        assert_eq!(current_version(&dir).unwrap(), None, "never installed");
        // A folder where the link belongs (hostile or hand-made state):
        // not taken for "nothing installed".
        std::fs::create_dir(dir.current()).unwrap();
        let e = current_version(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
}
