//! The archive unpacker: `package::install_file_with_limits` with the input as
//! the tarball, on a data dir, with small caps (64 KiB tarball, 256 KiB
//! unpacked). Twice per input: with the version given (straight to the
//! unpacker) and without (the version is read from the tarball first).
//!
//! Nothing unsigned can be accepted (the config trusts a key whose secret half
//! is thrown away), so every input must be refused, and a refused package
//! must leave `versions/` empty and nothing outside the data dir.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use semver::Version;
use waiaas_launcher::package::{self, Limits};
use waiaas_packaging::generate_keypair;
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;

struct Setup {
    temp: tempfile::TempDir,
    config: Config,
    dir: DataDir,
    tarball: PathBuf,
    limits: Limits,
    version: Version,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let temp = tempfile::tempdir().expect("a temp dir");
        let key_dir = temp.path().join("key");
        let (_, public) = generate_keypair(&key_dir).expect("a key");
        std::fs::remove_dir_all(&key_dir).expect("drop the key");
        let mut config = Config::default();
        config.update.trusted_keys = vec![public];
        let dir = DataDir::new(temp.path().join("data"));
        std::fs::create_dir_all(dir.root()).expect("the data dir");
        let limits = Limits {
            tarball_bytes: 64 << 10,
            unpacked_bytes: 256 << 10,
            ..Limits::default()
        };
        Setup {
            tarball: temp.path().join("package.tgz"),
            temp,
            config,
            dir,
            limits,
            version: Version::new(1, 9, 0),
        }
    })
}

/// Every name under `root`, recursively.
fn tree(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries {
            let path = entry.expect("an entry").path();
            out.extend(tree(&path));
            out.push(path);
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    std::fs::write(&s.tarball, data).expect("write the tarball");
    for expected in [Some(&s.version), None] {
        let result =
            package::install_file_with_limits(&s.dir, &s.config, &s.tarball, expected, &s.limits);
        match result {
            Ok(installed) => panic!("an unsigned package was installed: {installed:?}"),
            Err(e) => {
                let _ = e.to_string();
            }
        }
        let versions = tree(&s.dir.versions());
        assert!(versions.is_empty(), "a refused package left {versions:?}");
        // Only the data dir's own folders and the tarball, nothing beside them.
        let outside: Vec<PathBuf> = tree(s.temp.path())
            .into_iter()
            .filter(|p| !p.starts_with(s.dir.root()) && *p != s.tarball)
            .collect();
        assert!(
            outside.is_empty(),
            "unpacked outside the data dir: {outside:?}"
        );
    }
});
