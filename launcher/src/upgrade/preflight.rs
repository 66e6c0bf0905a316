//! Step 1 of an upgrade, and the checks a rollback makes before it starts:
//! everything that can fail without any downtime and without changing
//! anything but a verified new folder under `versions/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use semver::Version;

use waiaas_shared::admin::{Bytes, UpgradeAction};
use waiaas_shared::compat::Verdict;
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

use super::{Engine, Host, Refusal, UPGRADE_STEPS, blocking};
use crate::daemon_binary;
use crate::package::{self, Downloaded, Installed};
use crate::swap;

pub(super) enum Preflight {
    /// At the target already, or the channel's newest is older (`Some`):
    /// following a channel never moves back.
    UpToDate {
        installed: String,
        channel_older: Option<String>,
    },
    Go(Plan),
}

/// What the preflight established.
pub(super) struct Plan {
    pub target: Installed,
    /// The database's schema before the upgrade; `None` when there is no
    /// database yet (never started).
    pub database_schema: Option<u32>,
}

/// How often a download's progress is reported.
const BYTES_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl<H: Host> Engine<'_, H> {
    /// The version `current` points at, or why there is none.
    pub(super) fn current_version(&self) -> Result<String, Refusal> {
        match swap::current_version(self.dir) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(Refusal::NotInitialised(self.dir.root().to_path_buf())),
            Err(source) => Err(Refusal::Current {
                path: self.dir.current(),
                source,
            }),
        }
    }

    /// Resolves, fetches and judges the target. A release older than the
    /// installed one is never the target of a channel, and of `--to`/`--from`
    /// only with `allow_downgrade`.
    pub(super) async fn preflight(
        &mut self,
        action: &UpgradeAction,
        allow_downgrade: bool,
        from: &str,
    ) -> Result<Preflight, Refusal> {
        // The operator's own build beside a launcher run from it: accepted,
        // unsigned, saying so (`package::install_local_build`).
        let mut local = None;
        let target = match action {
            UpgradeAction::FromFile(path) if package::is_local_build(path) => {
                let message = format!(
                    "{} has no signed release.json: accepting it as your own build \
                     (its files' hashes are recorded in installed.json)",
                    path.display()
                );
                tracing::warn!("{message}");
                self.announce(&UPGRADE_STEPS, 1, message);
                let installed = package::install_local_build(self.dir, path).await?;
                let version = installed.version.clone();
                local = Some(installed);
                version
            }
            UpgradeAction::Latest => package::latest(self.config).await?,
            UpgradeAction::To(text) => {
                Version::parse(text.trim_start_matches('v')).map_err(|source| {
                    Refusal::NotAVersion {
                        given: text.clone(),
                        source,
                    }
                })?
            }
            UpgradeAction::FromFile(path) => {
                // Unpacking and hashing a release is blocking work. A folder is
                // an unpacked release (the npm package beside a launcher).
                let (dir, config, path) = (self.dir.clone(), self.config.clone(), path.clone());
                blocking(move || match path.is_dir() {
                    true => package::install_folder(&dir, &config, &path),
                    false => package::install_file(&dir, &config, &path, None),
                })
                .await?
                .version
            }
            UpgradeAction::Rollback => unreachable!("rollback has its own path"),
        };
        let installed = Version::parse(from).ok();
        if target.to_string() == from {
            return Ok(Preflight::UpToDate {
                installed: from.to_string(),
                channel_older: None,
            });
        }
        if installed
            .as_ref()
            .is_some_and(|installed| target < *installed)
        {
            if matches!(action, UpgradeAction::Latest) {
                return Ok(Preflight::UpToDate {
                    installed: from.to_string(),
                    channel_older: Some(target.to_string()),
                });
            }
            if !allow_downgrade {
                return Err(Refusal::Downgrade {
                    from: from.to_string(),
                    to: target.to_string(),
                });
            }
        }
        let installed = match (local, action) {
            (Some(local), _) => local,
            (None, UpgradeAction::FromFile(_)) => {
                let (dir, config, target) = (self.dir.clone(), self.config.clone(), target.clone());
                blocking(move || package::verify_installed(&dir, &config, &target)).await?
            }
            (None, _) => self.download(&target).await?,
        };
        let reported = daemon_binary::version_of(&installed.path).await?.version;
        if reported != installed.version.to_string() {
            return Err(Refusal::VersionMismatch {
                path: installed.path.clone(),
                reported,
                expected: installed.version.to_string(),
            });
        }
        // The new binary judges the database: a downgrade below its schema is refused here.
        let database_schema = if self.dir.database().exists() {
            let report = daemon_binary::check(&installed.path, self.dir).await?;
            match report.verdict {
                Verdict::TooNew => {
                    return Err(Refusal::DatabaseTooNew {
                        version: installed.version.to_string(),
                        database: report.database_version,
                        latest: report.latest,
                    });
                }
                Verdict::TooOld { .. } | Verdict::ChecksumMismatch { .. } => {
                    return Err(Refusal::Incompatible(report.message));
                }
                _ => Some(report.database_version),
            }
        } else {
            None
        };
        check_free_space(self.dir)?;
        Ok(Preflight::Go(Plan {
            target: installed,
            database_schema,
        }))
    }

    /// Downloads and installs `version`, reporting the bytes as they arrive
    /// (at most every [`BYTES_EVERY`], and the last).
    async fn download(&mut self, version: &Version) -> Result<Installed, Refusal> {
        let progress = &mut *self.progress;
        let message = format!("downloading {version}");
        let mut last: Option<Instant> = None;
        let mut on_bytes = |bytes: Downloaded| {
            let finished = bytes.total == Some(bytes.done);
            if last.is_some_and(|t| t.elapsed() < BYTES_EVERY) && !finished {
                return;
            }
            last = Some(Instant::now());
            let bytes = Bytes {
                done: bytes.done,
                total: bytes.total,
            };
            progress(super::progress(
                &UPGRADE_STEPS,
                1,
                message.clone(),
                Some(bytes),
            ));
        };
        Ok(package::fetch(self.dir, self.config, version, &mut on_bytes).await?)
    }
}

/// Whether `versions/<version>` can be gone back to: a signed release is
/// verified again; a folder `init` installed from a local build (no
/// `release.json`) must still hold the files `init` recorded, and be the
/// version it claims.
pub(super) async fn usable_version(
    dir: &DataDir,
    config: &Config,
    version: &str,
) -> Result<(), String> {
    let path = dir.version(version);
    if path.join(waiaas_shared::release::MANIFEST).exists() {
        let parsed =
            Version::parse(version).map_err(|e| format!("{version} is not a version: {e}"))?;
        let (dir, config) = (dir.clone(), config.clone());
        return blocking(move || package::verify_installed(&dir, &config, &parsed))
            .await
            .map(drop)
            .map_err(|e| e.to_string());
    }
    match crate::install_record::verify(&path, version) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "{} has no signed release.json and no record of what init installed; \
             checking only the version it reports",
            path.display()
        ),
        Err(problem) => return Err(problem),
    }
    match daemon_binary::version_of(&path).await {
        Ok(info) if info.version == version => Ok(()),
        Ok(info) => Err(format!(
            "{}/waiaas-daemon reports {}",
            path.display(),
            info.version
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Free space for a backup: the database (with its WAL) and config, plus a margin.
pub(super) fn check_free_space(dir: &DataDir) -> Result<(), Refusal> {
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let db = dir.database();
    let needed = size(&db)
        + size(&PathBuf::from(format!("{}-wal", db.display())))
        + size(&dir.config())
        + (16 << 20);
    let backups = dir.backups();
    let unreadable = |reason: String| Refusal::FreeSpace {
        path: backups.clone(),
        reason,
    };
    std::fs::create_dir_all(&backups).map_err(|e| unreadable(e.to_string()))?;
    let stat = nix::sys::statvfs::statvfs(&backups).map_err(|e| unreadable(e.to_string()))?;
    let free = stat.blocks_available() as u64 * stat.fragment_size() as u64;
    if free < needed {
        return Err(Refusal::NoSpace {
            path: backups,
            free_mib: free >> 20,
            needed_mib: needed.div_ceil(1 << 20),
        });
    }
    Ok(())
}
