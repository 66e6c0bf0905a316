//! Installing a release: verify the tarball's `release.json` and listing
//! (a first pass that writes nothing), write the files it lists into a fresh
//! `versions/<v>.partial`, and only then rename it to `versions/<v>` — or
//! remove it and leave `versions/` as it was. Also the re-check of an installed `versions/<v>`,
//! which decides whether a fetch reuses it, replaces it, or (if `current`
//! points at it) refuses to touch it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use semver::Version;
use waiaas_shared::fsutil::{self, CopyError, fsync_dir, sha256_file};
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{MANIFEST, ReleaseManifest, SIGNATURE};

use super::archive::{Scanned, scan, unpack};
use super::error::{PackageError, io_error};
use super::keys::KeyRing;
use super::limits::{Limits, human};
use super::manifest::{
    MANIFEST_CAP, check_listing, check_manifest, compare_hash, installed_path, mode_for,
};

/// A verified release in `versions/<version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: Version,
    /// `versions/<version>`.
    pub path: PathBuf,
    /// Its verified `release.json`.
    pub manifest: ReleaseManifest,
}

/// Paths removed when dropped, unless disarmed: every way out of a failed
/// install (errors, panics, a cancelled future) leaves nothing behind.
#[derive(Default)]
pub(super) struct Leftovers(Vec<PathBuf>);

impl Leftovers {
    pub(super) fn add(&mut self, path: PathBuf) {
        self.0.push(path);
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = remove_path(path);
        }
    }
}

/// Removes a file or folder tree if it exists (never following a link).
pub(super) fn remove_path(path: &Path) -> Result<(), PackageError> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.map_err(io_error("remove", path))
}

pub(super) fn ensure_versions_dir(dir: &DataDir) -> Result<PathBuf, PackageError> {
    let versions = dir.versions();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&versions)
        .map_err(io_error("create", &versions))?;
    Ok(versions)
}

/// What `versions/<v>` holds now.
pub(super) enum Existing {
    Absent,
    Good(Installed),
    Bad(String),
}

pub(super) fn existing(
    dir: &DataDir,
    ring: &KeyRing,
    version: &Version,
    target: &str,
) -> Result<Existing, PackageError> {
    let path = dir.version(&version.to_string());
    match fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(io_error("read", &path)(e)),
        Ok(meta) if !meta.is_dir() => {
            return bad_unless_current(dir, &path, "not a folder".into());
        }
        Ok(_) => {}
    }
    match verify_dir(&path, ring, version, target) {
        Ok(installed) => Ok(Existing::Good(installed)),
        Err(problem) => bad_unless_current(dir, &path, problem.to_string()),
    }
}

/// A bad `versions/<v>` may be replaced, unless it is the one running.
fn bad_unless_current(
    dir: &DataDir,
    path: &Path,
    problem: String,
) -> Result<Existing, PackageError> {
    let current = fs::canonicalize(dir.current()).ok();
    if current.is_some() && current == fs::canonicalize(path).ok() {
        return Err(PackageError::CurrentIsBad {
            path: path.to_path_buf(),
            problem,
        });
    }
    Ok(Existing::Bad(problem))
}

/// Verifies `tarball`'s `release.json`, signature and listing, writes what
/// it lists into `versions/<v>.partial`, and renames that to `versions/<v>`
/// (replacing a bad one, reusing a good one). Without `asked`, the version is
/// the one the verified `release.json` names.
pub(super) fn install_tarball(
    dir: &DataDir,
    ring: &KeyRing,
    tarball: &Path,
    asked: Option<&Version>,
    target: &str,
    limits: &Limits,
) -> Result<Installed, PackageError> {
    let Checked {
        scanned,
        version,
        manifest,
    } = check_tarball(ring, tarball, asked, target, limits)?;
    let fill = |partial: &Path| unpack(tarball, partial, &scanned, &manifest, limits);
    place(dir, ring, version, manifest.clone(), target, fill)
}

/// A tarball whose first pass passed: signed, naming what was asked, and
/// listing exactly the files it holds.
pub(super) struct Checked {
    scanned: Scanned,
    pub(super) version: Version,
    pub(super) manifest: ReleaseManifest,
}

/// The first pass over `tarball` and every check that needs nothing written:
/// the signature, what `release.json` names, and its listing.
pub(super) fn check_tarball(
    ring: &KeyRing,
    tarball: &Path,
    asked: Option<&Version>,
    target: &str,
    limits: &Limits,
) -> Result<Checked, PackageError> {
    let scanned = scan(tarball, limits)?;
    let manifest_bytes = scanned
        .manifest
        .as_deref()
        .ok_or_else(|| PackageError::NoManifest {
            place: "the package".into(),
        })?;
    ring.verify(manifest_bytes, scanned.signature.as_deref())?;
    let (version, manifest) = check_manifest(manifest_bytes, asked, target)?;
    check_listing(&manifest, &scanned.files)?;
    Ok(Checked {
        scanned,
        version,
        manifest,
    })
}

/// Installs an unpacked release folder — an npm-installed platform package:
/// `release.json`, its signature, `bin/…` — verified like a tarball: the
/// signature and manifest first, then each listed file copied and hashed as
/// it is written.
pub(super) fn install_folder(
    dir: &DataDir,
    ring: &KeyRing,
    folder: &Path,
    target: &str,
) -> Result<Installed, PackageError> {
    let manifest_bytes =
        read_small(&folder.join(MANIFEST))?.ok_or_else(|| PackageError::NoManifest {
            place: folder.display().to_string(),
        })?;
    let signature = read_small(&folder.join(SIGNATURE))?;
    ring.verify(&manifest_bytes, signature.as_deref())?;
    let (version, manifest) = check_manifest(&manifest_bytes, None, target)?;
    let fill = |partial: &Path| {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(partial)
            .map_err(io_error("create", partial))?;
        for (package_path, hash) in &manifest.files {
            let Some(dest_rel) = installed_path(package_path) else {
                continue;
            };
            let source = folder.join(package_path);
            let dest = partial.join(&dest_rel);
            let actual = copy_hashed(&source, &dest, mode_for(package_path))?;
            compare_hash(&dest_rel, &actual, hash)?;
        }
        fs::write(partial.join(MANIFEST), &manifest_bytes).map_err(io_error("write", partial))?;
        if let Some(signature) = &signature {
            fs::write(partial.join(SIGNATURE), signature).map_err(io_error("write", partial))?;
        }
        Ok(())
    };
    place(dir, ring, version, manifest.clone(), target, fill)
}

/// Copies `source` to the new file `dest` with `mode`, returning the sha256
/// of what was written.
fn copy_hashed(source: &Path, dest: &Path, mode: u32) -> Result<String, PackageError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_error("create", parent))?;
    }
    match fsutil::copy_hashed(source, dest, mode, fsutil::Pace::Alone) {
        Ok(copied) => Ok(copied.sha256),
        Err(CopyError::Read(e)) => Err(io_error("read", source)(e)),
        Err(CopyError::Write(e)) => Err(io_error("write", dest)(e)),
    }
}

/// Fills a fresh `versions/<v>.partial` with `fill` and renames it to
/// `versions/<v>` (replacing a bad one, reusing a good one); on any failure
/// nothing is left behind.
fn place(
    dir: &DataDir,
    ring: &KeyRing,
    version: Version,
    manifest: ReleaseManifest,
    target: &str,
    fill: impl FnOnce(&Path) -> Result<(), PackageError>,
) -> Result<Installed, PackageError> {
    let name = version.to_string();
    let versions = ensure_versions_dir(dir)?;
    let partial = versions.join(format!("{name}.partial"));
    let aside = versions.join(format!("{name}.replaced"));
    remove_path(&partial)?;
    remove_path(&aside)?;
    let mut leftovers = Leftovers::default();
    leftovers.add(partial.clone());
    fill(&partial)?;

    let final_dir = dir.version(&name);
    match existing(dir, ring, &version, target)? {
        // Verified already (a second run, or `--from` of what is installed).
        Existing::Good(installed) => return Ok(installed),
        Existing::Absent => {
            fs::rename(&partial, &final_dir).map_err(io_error("rename", &partial))?;
        }
        Existing::Bad(problem) => {
            tracing::warn!(
                "{} fails verification ({problem}); replacing it with the verified package",
                final_dir.display()
            );
            leftovers.add(aside.clone());
            fs::rename(&final_dir, &aside).map_err(io_error("move aside", &final_dir))?;
            if let Err(e) = fs::rename(&partial, &final_dir) {
                let _ = fs::rename(&aside, &final_dir);
                return Err(io_error("rename", &partial)(e));
            }
        }
    }
    leftovers.0.retain(|path| *path != partial);
    fsync_dir(&versions).map_err(io_error("sync", &versions))?;
    Ok(Installed {
        version,
        path: final_dir,
        manifest,
    })
}

/// Verifies an installed folder: signature, manifest, every file's hash and
/// mode, and no file the manifest does not account for.
pub(super) fn verify_dir(
    path: &Path,
    ring: &KeyRing,
    version: &Version,
    target: &str,
) -> Result<Installed, PackageError> {
    let manifest_path = path.join(MANIFEST);
    let manifest_bytes = read_small(&manifest_path)?.ok_or_else(|| PackageError::NoManifest {
        place: path.display().to_string(),
    })?;
    let signature = read_small(&path.join(SIGNATURE))?;
    if signature.is_none() {
        return Err(PackageError::Signature(format!(
            "{} has no {SIGNATURE}: its {MANIFEST} is unsigned",
            path.display()
        )));
    }
    ring.verify(&manifest_bytes, signature.as_deref())?;
    let (_, manifest) = check_manifest(&manifest_bytes, Some(version), target)?;

    let mut expected: BTreeSet<String> = [MANIFEST.to_string(), SIGNATURE.to_string()].into();
    for (package_path, hash) in &manifest.files {
        let Some(dest_rel) = installed_path(package_path) else {
            continue;
        };
        let dest = path.join(&dest_rel);
        let meta = fs::symlink_metadata(&dest).map_err(|_| {
            PackageError::Files(format!("{dest_rel} is missing from {}", path.display()))
        })?;
        if !meta.is_file() {
            return Err(PackageError::Files(format!(
                "{dest_rel} in {} is not a plain file",
                path.display()
            )));
        }
        if mode_for(package_path) & 0o111 != 0 && meta.permissions().mode() & 0o111 == 0 {
            return Err(PackageError::Files(format!(
                "{dest_rel} in {} is not executable",
                path.display()
            )));
        }
        let actual = sha256_file(&dest).map_err(io_error("read", &dest))?;
        compare_hash(&dest_rel, &actual, hash)?;
        expected.insert(dest_rel);
    }
    let mut found = Vec::new();
    list_files(path, "", &mut found)?;
    for (rel, plain) in found {
        if !plain {
            return Err(PackageError::Files(format!(
                "{rel} in {} is a link or special file",
                path.display()
            )));
        }
        if !expected.contains(&rel) {
            return Err(PackageError::Files(format!(
                "{} holds {rel}, which {MANIFEST} does not list",
                path.display()
            )));
        }
    }
    Ok(Installed {
        version: version.clone(),
        path: path.to_path_buf(),
        manifest,
    })
}

/// Every non-folder below `dir`, by relative path, and whether it is a plain file.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<(String, bool)>) -> Result<(), PackageError> {
    for entry in fs::read_dir(dir).map_err(io_error("read", dir))? {
        let entry = entry.map_err(io_error("read", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type().map_err(io_error("read", &entry.path()))?;
        if kind.is_dir() {
            list_files(&entry.path(), &rel, out)?;
        } else {
            out.push((rel, kind.is_file()));
        }
    }
    Ok(())
}

/// A small file's bytes, `None` if it does not exist.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, PackageError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", path)(e)),
    };
    let mut bytes = Vec::new();
    file.take(MANIFEST_CAP + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error("read", path))?;
    if bytes.len() as u64 > MANIFEST_CAP {
        return Err(PackageError::Manifest(format!(
            "{} is larger than {}",
            path.display(),
            human(MANIFEST_CAP)
        )));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Site, package_folder, site, target};
    use super::*;

    fn installed(site: &Site) -> Installed {
        install_folder(&site.dir, &site.ring, &package_folder(site), target()).unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_release_folder_is_installed_flat_with_our_modes_and_verifies_again() {
        let site = site();
        let done = installed(&site);
        assert_eq!(done.path, site.dir.version("1.9.0"));
        let mut names: Vec<_> = fs::read_dir(&done.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "LICENSE",
                MANIFEST,
                SIGNATURE,
                "waiaas-daemon",
                "waiaas-launcher"
            ]
        );
        assert_eq!(mode(&done.path.join("waiaas-daemon")), 0o755);
        assert_eq!(mode(&done.path.join("LICENSE")), 0o644);
        assert_eq!(mode(&site.dir.versions()), 0o755);
        let again = verify_dir(&done.path, &site.ring, &site.version, target()).unwrap();
        assert_eq!(again, done);
        assert!(matches!(
            existing(&site.dir, &site.ring, &site.version, target()).unwrap(),
            Existing::Good(good) if good == done
        ));
        // Installing what is installed reuses it; nothing is left aside.
        assert_eq!(installed(&site), done);
        let mut left: Vec<_> = fs::read_dir(site.dir.versions())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["1.9.0"]);
    }

    /// Every way an installed folder can differ from its signed manifest is
    /// named; such a folder is replaced by the next install, unless it is the
    /// one `current` runs.
    #[test]
    fn an_installed_folder_that_differs_from_its_manifest_is_bad() {
        type Damage = fn(&Path);
        let cases: [(Damage, &str); 9] = [
            (
                |p| fs::write(p.join("extra"), "x").unwrap(),
                "holds extra, which release.json does not list",
            ),
            (
                |p| {
                    fs::create_dir_all(p.join("sub")).unwrap();
                    fs::write(p.join("sub/extra"), "x").unwrap();
                },
                "holds sub/extra, which",
            ),
            (
                |p| fs::remove_file(p.join("LICENSE")).unwrap(),
                "LICENSE is missing from",
            ),
            (
                |p| fs::write(p.join("LICENSE"), "GPL").unwrap(),
                "LICENSE has sha256",
            ),
            (
                |p| {
                    let path = p.join("waiaas-daemon");
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
                },
                "waiaas-daemon in",
            ),
            (
                |p| {
                    fs::remove_file(p.join("LICENSE")).unwrap();
                    fs::create_dir(p.join("LICENSE")).unwrap();
                },
                "LICENSE in",
            ),
            (
                |p| std::os::unix::fs::symlink("LICENSE", p.join("link")).unwrap(),
                "link in",
            ),
            (
                |p| fs::remove_file(p.join(SIGNATURE)).unwrap(),
                "is unsigned",
            ),
            (
                |p| fs::remove_file(p.join(MANIFEST)).unwrap(),
                "release.json",
            ),
        ];
        let kinds = [
            "",
            "",
            "",
            "",
            "is not executable",
            "is not a plain file",
            "is a link or special file",
            "",
            "",
        ];
        for ((damage, expected), kind) in cases.into_iter().zip(kinds) {
            let site = site();
            let path = installed(&site).path;
            damage(&path);
            let problem = verify_dir(&path, &site.ring, &site.version, target())
                .unwrap_err()
                .to_string();
            assert!(
                problem.contains(expected) && problem.contains(kind),
                "{problem}"
            );
            match existing(&site.dir, &site.ring, &site.version, target()).unwrap() {
                Existing::Bad(said) => assert_eq!(said, problem),
                _ => panic!("{expected}: not bad"),
            }
            // The one running is never touched.
            crate::swap::point_current(&site.dir, "1.9.0").unwrap();
            let refused = existing(&site.dir, &site.ring, &site.version, target());
            assert!(
                matches!(&refused, Err(PackageError::CurrentIsBad { problem: said, .. }) if *said == problem),
                "{expected}"
            );
            fs::remove_file(site.dir.current()).unwrap();
            // Any other is replaced by a verified install.
            let fresh = installed(&site);
            verify_dir(&fresh.path, &site.ring, &site.version, target()).unwrap();
            assert!(!site.dir.versions().join("1.9.0.replaced").exists());
            assert!(!site.dir.versions().join("1.9.0.partial").exists());
        }
    }

    #[test]
    fn a_version_that_is_not_a_folder_is_bad_and_an_absent_one_absent() {
        let site = site();
        assert!(matches!(
            existing(&site.dir, &site.ring, &site.version, target()).unwrap(),
            Existing::Absent
        ));
        fs::create_dir_all(site.dir.versions()).unwrap();
        fs::write(site.dir.version("1.9.0"), "a file").unwrap();
        assert!(matches!(
            existing(&site.dir, &site.ring, &site.version, target()).unwrap(),
            Existing::Bad(problem) if problem == "not a folder"
        ));
        // `current` at another release: a bad 1.9.0 is still replaceable.
        fs::create_dir_all(site.dir.version("1.8.0")).unwrap();
        fs::write(site.dir.version("1.8.0").join("waiaas-daemon"), "").unwrap();
        crate::swap::point_current(&site.dir, "1.8.0").unwrap();
        assert!(matches!(
            existing(&site.dir, &site.ring, &site.version, target()).unwrap(),
            Existing::Bad(problem) if problem == "not a folder"
        ));
        installed(&site);
        assert!(site.dir.version("1.9.0").is_dir());
        // A versions/ that cannot be looked into is an error, not "absent".
        let unreadable = DataDir::new(site.tmp.path().join("other"));
        fs::create_dir_all(unreadable.root()).unwrap();
        fs::write(unreadable.versions(), "a file").unwrap();
        let refused = existing(&unreadable, &site.ring, &site.version, target());
        assert!(matches!(refused, Err(PackageError::Io { .. })));
    }

    /// `release.json` and its signature are read whole, up to a cap.
    #[test]
    fn a_small_file_is_read_up_to_its_cap() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(MANIFEST);
        assert_eq!(read_small(&path).unwrap(), None);
        let cap = usize::try_from(MANIFEST_CAP).unwrap();
        fs::write(&path, vec![b'x'; cap]).unwrap();
        assert_eq!(read_small(&path).unwrap().map(|b| b.len()), Some(cap));
        fs::write(&path, vec![b'x'; cap + 1]).unwrap();
        let refused = read_small(&path).unwrap_err().to_string();
        assert!(refused.contains("is larger than 1 MiB"), "{refused}");
        // There, but not a file that can be read: an error, not "none".
        let refused = read_small(tmp.path()).unwrap_err();
        assert!(!matches!(refused, PackageError::Manifest(_)), "{refused}");
        let refused = read_small(&path.join("below")).unwrap_err();
        assert!(matches!(refused, PackageError::Io { .. }), "{refused}");
    }

    #[test]
    fn remove_path_removes_files_trees_and_links_never_their_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let (file, tree, link) = (
            tmp.path().join("file"),
            tmp.path().join("tree"),
            tmp.path().join("link"),
        );
        fs::write(&file, "x").unwrap();
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/c"), "x").unwrap();
        std::os::unix::fs::symlink(&tree, &link).unwrap();
        remove_path(&link).unwrap();
        assert!(tree.join("a/b/c").exists(), "the link's target stays");
        remove_path(&tree).unwrap();
        remove_path(&file).unwrap();
        remove_path(&tmp.path().join("absent")).unwrap();
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
        // A path below a file cannot be looked at: an error, not "absent".
        fs::write(&file, "x").unwrap();
        assert!(remove_path(&file.join("below")).is_err());
    }
}
