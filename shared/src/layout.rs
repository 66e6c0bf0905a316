//! Where everything lives inside a data dir (SPEC §2). Both processes resolve
//! paths only through [`DataDir`], so the layout is written down once.

use std::path::{Path, PathBuf};

/// Environment variable naming the data dir when `--data-dir` is not given.
pub const DATA_DIR_ENV: &str = "WAIAAS_DATA_DIR";

/// A WAIaaS installation's data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// A data dir at `root` (not created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `--data-dir`, else `WAIAAS_DATA_DIR`, else `~/.waiaas`.
    pub fn resolve(flag: Option<&Path>) -> Result<Self, String> {
        if let Some(dir) = flag {
            return Ok(Self::new(dir));
        }
        if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
            return Ok(Self::new(dir));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => Ok(Self::new(Path::new(&home).join(".waiaas"))),
            None => Err(format!(
                "cannot find the data dir: pass --data-dir, or set {DATA_DIR_ENV} or HOME"
            )),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Forces the data dir and its private folders (`data/`, `run/`,
    /// `logs/`, `backups/`) that exist to 0700: called at every start, so a
    /// folder left or made wider (by hand, an image, an older release) is
    /// narrowed again. Links are not followed.
    pub fn make_private(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for folder in [
            self.root.clone(),
            self.data(),
            self.run(),
            self.logs(),
            self.backups(),
        ] {
            match std::fs::symlink_metadata(&folder) {
                Ok(meta) if meta.is_dir() && meta.permissions().mode() & 0o777 != 0o700 => {
                    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o700))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `data/`, holding the database and the API token.
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn database(&self) -> PathBuf {
        self.data().join("waiaas.db")
    }
    /// The database's write-ahead log (WAL mode), beside it.
    pub fn wal(&self) -> PathBuf {
        self.data().join("waiaas.db-wal")
    }
    pub fn master_token(&self) -> PathBuf {
        self.data().join("master.token")
    }
    pub fn versions(&self) -> PathBuf {
        self.root.join("versions")
    }
    pub fn version(&self, version: &str) -> PathBuf {
        self.versions().join(version)
    }
    /// The launcher a release brings: `versions/<v>/waiaas-launcher`.
    pub fn launcher_of(&self, version: &str) -> PathBuf {
        self.version(version).join("waiaas-launcher")
    }
    /// The `current` symlink to the active `versions/<v>`.
    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }
    pub fn backups(&self) -> PathBuf {
        self.root.join("backups")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn launcher_socket(&self) -> PathBuf {
        self.run().join("launcher.sock")
    }
    pub fn launcher_pid(&self) -> PathBuf {
        self.run().join("launcher.pid")
    }
    /// Locked by a serving daemon for its whole life, its pid inside
    /// ([`crate::runlock`]): how a launcher finds a daemon it did not start.
    pub fn daemon_pid(&self) -> PathBuf {
        self.run().join("daemon.pid")
    }
    pub fn upgrade_journal(&self) -> PathBuf {
        self.root.join("upgrade.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Automatic upgrades' quarantine and last attempt (SPEC §13).
    pub fn auto_state(&self) -> PathBuf {
        self.root.join("auto-upgrade.json")
    }
    /// This installation's random id: its place in staged rollouts.
    pub fn install_id(&self) -> PathBuf {
        self.root.join("install-id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_wins_and_paths_follow_the_spec() {
        let dir = DataDir::resolve(Some(Path::new("/srv/w"))).unwrap();
        assert_eq!(dir.database(), Path::new("/srv/w/data/waiaas.db"));
        assert_eq!(dir.master_token(), Path::new("/srv/w/data/master.token"));
        assert_eq!(dir.launcher_socket(), Path::new("/srv/w/run/launcher.sock"));
        assert_eq!(dir.version("1.9.0"), Path::new("/srv/w/versions/1.9.0"));
        assert_eq!(dir.upgrade_journal(), Path::new("/srv/w/upgrade.json"));
    }
}
