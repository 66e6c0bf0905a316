//! Local state the launcher reads back: `upgrade.json` (the journal, through
//! `Journal::load` on a data dir) and `backup.json` (its serde, and the two
//! readers of a backup folder: `backup::list` and `restore::open`). Both read
//! the same input; the corpus holds both kinds of file.
//!
//! The data dir is `data` relative to a temp folder the process works in, so
//! that a journal's `backup` can name a folder of it (`data/backups/…`).
//!
//! Invariants: a journal that loads names semver versions and backup folders
//! of `backups/` (`backup`, `restoring`), and saves and loads back as itself.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waiaas_launcher::upgrade::journal::Journal;
use waiaas_launcher::upgrade::restore;
use waiaas_shared::backup::{self, MANIFEST, Manifest};
use waiaas_shared::layout::DataDir;

struct Setup {
    _temp: tempfile::TempDir,
    dir: DataDir,
    backup: PathBuf,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let temp = tempfile::tempdir().expect("a temp dir");
        std::env::set_current_dir(temp.path()).expect("work in the temp dir");
        let dir = DataDir::new("data");
        let backup = dir.backups().join("pre-upgrade-1.8.1-20260101T000000Z");
        std::fs::create_dir_all(&backup).expect("the backup folder");
        Setup {
            _temp: temp,
            dir,
            backup,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let s = setup();

    std::fs::write(s.dir.upgrade_journal(), data).expect("write upgrade.json");
    match Journal::load(&s.dir) {
        Ok(Some(journal)) => {
            semver::Version::parse(&journal.from).expect("from is checked");
            semver::Version::parse(&journal.to).expect("to is checked");
            for backup in [&journal.backup, &journal.restoring].into_iter().flatten() {
                assert_eq!(backup.parent(), Some(s.dir.backups().as_path()));
            }
            journal.save(&s.dir).expect("save the journal");
            let back = Journal::load(&s.dir).expect("load it back");
            assert_eq!(back.as_ref(), Some(&journal));
        }
        Ok(None) => panic!("a journal file that exists is never \"no journal\""),
        Err(e) => {
            let _ = e.to_string();
        }
    }

    if let Ok(manifest) = serde_json::from_slice::<Manifest>(data) {
        let _ = manifest.created();
        let again = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let back: Manifest = serde_json::from_slice(&again).expect("and reads back");
        assert_eq!(back, manifest);
    }
    std::fs::write(s.backup.join(MANIFEST), data).expect("write backup.json");
    let listed = backup::list(&s.dir).expect("list backups");
    let opened = restore::open(&s.backup);
    assert_eq!(listed.len(), usize::from(opened.is_ok()));
    if let (Some(listed), Ok(opened)) = (listed.first(), opened) {
        assert_eq!(listed, &opened);
    }
});
