//! `release.json`: its deserialisation, and the launcher's check of what it
//! says (`package/manifest.rs`, private) through the public entry point that
//! runs it — `package::install_file` of a package whose `release.json` is the
//! input, signed with a key the config trusts, beside fixed files (so a
//! manifest listing their hashes can be installed).
//!
//! Invariants: an accepted package is this target's, names a semver version,
//! and lands in `versions/<that version>`; a refused one leaves `versions/`
//! empty.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use semver::Version;
use waiaas_launcher::package;
use waiaas_packaging::{Entry, generate_keypair, sign, write_package_tarball};
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{ReleaseManifest, platform_package, this_target};

/// The package's other files (their sha256 is in the seeds).
const FILES: [(&str, &[u8], u32); 4] = [
    (
        "package/package.json",
        b"{\"name\":\"@waiaas/cli-linux-x64\"}\n",
        0o644,
    ),
    (
        "package/bin/waiaas-launcher",
        b"#!/bin/sh\necho launcher\n",
        0o755,
    ),
    (
        "package/bin/waiaas-daemon",
        b"#!/bin/sh\necho daemon\n",
        0o755,
    ),
    ("package/LICENSE", b"MIT\n", 0o644),
];

struct Setup {
    _temp: tempfile::TempDir,
    secret_key: PathBuf,
    config: Config,
    dir: DataDir,
    tarball: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let temp = tempfile::tempdir().expect("a temp dir");
        let (secret_key, public) = generate_keypair(&temp.path().join("key")).expect("a key");
        let mut config = Config::default();
        config.update.trusted_keys = vec![public];
        let dir = DataDir::new(temp.path().join("data"));
        std::fs::create_dir_all(dir.root()).expect("the data dir");
        let tarball = temp.path().join("package.tgz");
        Setup {
            _temp: temp,
            secret_key,
            config,
            dir,
            tarball,
        }
    })
}

fn versions_left(dir: &DataDir) -> Vec<String> {
    match std::fs::read_dir(dir.versions()) {
        Ok(entries) => entries
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = serde_json::from_slice::<ReleaseManifest>(data) {
        let again = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let back: ReleaseManifest = serde_json::from_slice(&again).expect("and reads back");
        assert_eq!(back, manifest);
    }

    let s = setup();
    let signature = sign(&s.secret_key, data).expect("signing works");
    let mut entries = vec![
        Entry::file("package/release.json", data.to_vec(), 0o644),
        Entry::file("package/release.json.minisig", signature, 0o644),
    ];
    entries.extend(
        FILES
            .iter()
            .map(|(path, contents, mode)| Entry::file(*path, contents.to_vec(), *mode)),
    );
    write_package_tarball(&s.tarball, &entries).expect("a tarball");

    match package::install_file(&s.dir, &s.config, &s.tarball, None) {
        Ok(installed) => {
            let target = this_target().expect("a shipped target");
            assert_eq!(installed.manifest.target, target);
            assert_eq!(installed.manifest.name, platform_package(target));
            assert_eq!(
                Version::parse(&installed.manifest.version).ok(),
                Some(installed.version.clone())
            );
            assert_eq!(
                installed.path,
                s.dir.version(&installed.version.to_string())
            );
            assert_eq!(versions_left(&s.dir), [installed.version.to_string()]);
            std::fs::remove_dir_all(&installed.path).expect("remove the install");
        }
        Err(_) => {
            let left = versions_left(&s.dir);
            assert!(left.is_empty(), "a refused package left {left:?}");
        }
    }
});
