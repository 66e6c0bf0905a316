//! The power-loss filesystem's own contract: what survives a cut and what
//! does not. Root tier: skipped, saying why, without root or `/dev/fuse`;
//! failed instead in CI.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use waiaas_powercut::{CutReport, Options, PowerCut, tier_ready};

/// A backing folder and its mount, in one temp folder.
struct Rig {
    _tmp: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    options: Options,
    fs: Option<PowerCut>,
}

impl Rig {
    fn new() -> Self {
        Self::with(Options::default())
    }

    fn with(options: Options) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let backing = tmp.path().join("backing");
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&backing).unwrap();
        fs::create_dir(&mnt).unwrap();
        let fs = Some(PowerCut::mount_with(&backing, &mnt, &options).expect("mount"));
        Self {
            _tmp: tmp,
            backing,
            mnt,
            options,
            fs,
        }
    }

    fn at(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    /// Cuts the power and remounts: what the files hold now survived.
    fn cut_and_remount(&mut self) -> CutReport {
        let fs = self.fs.take().expect("mounted");
        let report = fs.cut().expect("cut");
        fs.unmount().expect("unmount");
        self.fs =
            Some(PowerCut::mount_with(&self.backing, &self.mnt, &self.options).expect("remount"));
        report
    }
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_write_fsynced_survives_a_cut_and_one_not_fsynced_is_gone() {
    if !tier_ready("a_write_fsynced_survives_a_cut_and_one_not_fsynced_is_gone") {
        return;
    }
    let mut rig = Rig::new();
    write_synced(&rig.at("synced"), b"kept");
    let mut unsynced = File::create(rig.at("unsynced")).unwrap();
    unsynced.write_all(b"lost").unwrap();
    drop(unsynced);
    // fdatasync is a sync point too.
    let mut data = File::create(rig.at("datasynced")).unwrap();
    data.write_all(b"kept too").unwrap();
    data.sync_data().unwrap();
    drop(data);
    // Reads see the latest data, synced or not.
    assert_eq!(read(&rig.at("unsynced")), b"lost");

    let report = rig.cut_and_remount();

    assert_eq!(read(&rig.at("synced")), b"kept");
    assert_eq!(read(&rig.at("datasynced")), b"kept too");
    // Its creation is durable (directory entries are), its data is not.
    assert_eq!(read(&rig.at("unsynced")), b"");
    assert_eq!(
        report.files,
        BTreeMap::from([(PathBuf::from("unsynced"), 4)])
    );
}

#[test]
fn a_cut_puts_overwrites_truncations_and_appends_back_to_the_last_sync() {
    if !tier_ready("a_cut_puts_overwrites_truncations_and_appends_back_to_the_last_sync") {
        return;
    }
    let mut rig = Rig::new();
    // Three pages and a bit: the undo log works by 4 KiB page.
    let original: Vec<u8> = (0..13_000u32).map(|i| (i % 251) as u8).collect();
    for name in ["overwritten", "truncated", "appended", "regrown"] {
        write_synced(&rig.at(name), &original);
    }
    let open = |name| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(rig.at(name))
            .unwrap()
    };
    open("overwritten")
        .write_all_at(&[0xAA; 5000], 4000)
        .unwrap();
    open("truncated").set_len(100).unwrap();
    OpenOptions::new()
        .append(true)
        .open(rig.at("appended"))
        .unwrap()
        .write_all(b"tail")
        .unwrap();
    // Shrunk, then grown back: the bytes in between read as zeros until the cut.
    let regrown = open("regrown");
    regrown.set_len(10).unwrap();
    regrown.set_len(13_000).unwrap();
    assert_eq!(read(&rig.at("regrown"))[10..20], [0; 10]);
    drop(regrown);
    let mut expect = original.clone();
    expect[4000..9000].fill(0xAA);
    assert_eq!(read(&rig.at("overwritten")), expect);

    rig.cut_and_remount();

    for name in ["overwritten", "truncated", "appended", "regrown"] {
        assert!(
            read(&rig.at(name)) == original,
            "{name} is not back to its last sync"
        );
    }
}

#[test]
fn only_what_was_written_since_the_last_sync_is_lost() {
    if !tier_ready("only_what_was_written_since_the_last_sync_is_lost") {
        return;
    }
    let mut rig = Rig::new();
    let mut file = File::create(rig.at("log")).unwrap();
    file.write_all(b"one,").unwrap();
    file.sync_all().unwrap();
    file.write_all(b"two,").unwrap();
    file.sync_all().unwrap();
    file.write_all(b"three").unwrap();
    drop(file);

    rig.cut_and_remount();

    assert_eq!(read(&rig.at("log")), b"one,two,");
}

#[test]
fn after_a_cut_every_open_handle_fails_with_eio() {
    if !tier_ready("after_a_cut_every_open_handle_fails_with_eio") {
        return;
    }
    let rig = Rig::new();
    let mut file = File::create(rig.at("open")).unwrap();
    file.write_all(b"x").unwrap();
    let mut reader = File::open(rig.at("open")).unwrap();

    rig.fs.as_ref().unwrap().cut().unwrap();

    let eio = Some(libc::EIO);
    assert_eq!(file.write_all(b"y").unwrap_err().raw_os_error(), eio);
    assert_eq!(file.sync_all().unwrap_err().raw_os_error(), eio);
    assert_eq!(reader.read(&mut [0; 8]).unwrap_err().raw_os_error(), eio);
    assert_eq!(File::create(rig.at("new")).unwrap_err().raw_os_error(), eio);
    drop((file, reader));
    rig.fs.unwrap().unmount().unwrap();
}

#[test]
fn renames_are_durable_at_once_and_carry_what_was_synced() {
    if !tier_ready("renames_are_durable_at_once_and_carry_what_was_synced") {
        return;
    }
    let mut rig = Rig::new();
    fs::create_dir(rig.at("dir")).unwrap();
    write_synced(&rig.at("target"), b"old");
    // The atomic-replace pattern done right: fsync, then rename.
    write_synced(&rig.at("dir/synced.tmp"), b"new");
    fs::rename(rig.at("dir/synced.tmp"), rig.at("target")).unwrap();
    // And done wrong: renamed without an fsync of the data.
    write_synced(&rig.at("other"), b"old");
    fs::write(rig.at("other.tmp"), b"new").unwrap();
    fs::rename(rig.at("other.tmp"), rig.at("other")).unwrap();
    // A folder renamed with a file in it written after the rename.
    fs::create_dir(rig.at("a")).unwrap();
    fs::rename(rig.at("a"), rig.at("b")).unwrap();
    write_synced(&rig.at("b/inside"), b"synced after the rename");
    let mut unsynced = File::create(rig.at("b/unsynced")).unwrap();
    fs::rename(rig.at("b"), rig.at("c")).unwrap();
    unsynced.write_all(b"lost").unwrap();
    drop(unsynced);

    rig.cut_and_remount();

    assert_eq!(read(&rig.at("target")), b"new");
    assert!(!rig.at("dir/synced.tmp").exists());
    // The rename survived, the data it carried did not: the file is empty.
    assert_eq!(read(&rig.at("other")), b"");
    assert_eq!(read(&rig.at("c/inside")), b"synced after the rename");
    assert_eq!(read(&rig.at("c/unsynced")), b"");
    assert!(!rig.at("b").exists());
}

#[test]
fn a_name_linked_into_place_then_unlinked_elsewhere_stays_reachable() {
    if !tier_ready("a_name_linked_into_place_then_unlinked_elsewhere_stays_reachable") {
        return;
    }
    let rig = Rig::new();
    // `init`'s no-clobber pattern: link a temp file into place, drop the temp name.
    write_synced(&rig.at(".config.tmp"), b"first");
    fs::hard_link(rig.at(".config.tmp"), rig.at("config")).unwrap();
    fs::remove_file(rig.at(".config.tmp")).unwrap();
    fs::write(rig.at("config"), b"second").unwrap();
    assert_eq!(read(&rig.at("config")), b"second");
}

#[test]
fn a_symlink_swapped_into_place_again_and_again_resolves_each_time() {
    if !tier_ready("a_symlink_swapped_into_place_again_and_again_resolves_each_time") {
        return;
    }
    let rig = Rig::new();
    // `current`'s pattern: files come and go (the backing folder may hand a
    // freed inode number to the next new file), and a new symlink is renamed
    // over the old one each time.
    for i in 0..50 {
        let dir = format!("v{i}");
        fs::create_dir(rig.at(&dir)).unwrap();
        fs::write(rig.at(&format!("{dir}/file")), b"x").unwrap();
        fs::write(rig.at("temp"), b"y").unwrap();
        assert!(fs::metadata(rig.at("temp")).unwrap().is_file());
        fs::remove_file(rig.at("temp")).unwrap();
        std::os::unix::fs::symlink(&dir, rig.at(".swap")).unwrap();
        fs::rename(rig.at(".swap"), rig.at("current")).unwrap();
        assert_eq!(read(&rig.at("current/file")), b"x", "round {i}");
    }
}

#[test]
fn sync_makes_everything_written_so_far_durable() {
    if !tier_ready("sync_makes_everything_written_so_far_durable") {
        return;
    }
    let mut rig = Rig::new();
    fs::write(rig.at("before"), b"kept").unwrap();
    rig.fs.as_ref().unwrap().sync();
    fs::write(rig.at("after"), b"lost").unwrap();

    rig.cut_and_remount();

    assert_eq!(read(&rig.at("before")), b"kept");
    assert_eq!(read(&rig.at("after")), b"");
}

/// The fsync latency of the slow-disk tests: long next to a write through
/// FUSE (well under a millisecond, if a loaded machine lets it), short
/// enough for a test.
const SLOW_FSYNC: Duration = Duration::from_millis(600);

/// Syncs `file` on a thread of its own: its result and how long it took
/// come on the channel.
fn sync_in_background(file: File) -> mpsc::Receiver<(std::io::Result<()>, Duration)> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let synced = file.sync_all();
        let _ = done.send((synced, started.elapsed()));
    });
    result
}

#[test]
fn a_slow_fsync_takes_its_latency_while_writes_to_other_files_go_on() {
    if !tier_ready("a_slow_fsync_takes_its_latency_while_writes_to_other_files_go_on") {
        return;
    }
    let mut rig = Rig::with(Options {
        fsync_latency: SLOW_FSYNC,
    });
    let mut slow = File::create(rig.at("slow")).unwrap();
    slow.write_all(b"flushing").unwrap();
    let mut other = File::create(rig.at("other")).unwrap();

    let synced = sync_in_background(slow);
    // Writes on the other handle, back to back until the sync answers: most
    // fall inside it, and none waits for it.
    let deadline = Instant::now() + 20 * SLOW_FSYNC;
    let (mut writes, mut slowest) = (0, Duration::ZERO);
    let (result, took) = loop {
        assert!(Instant::now() < deadline, "the fsync never answered");
        if let Ok(done) = synced.try_recv() {
            break done;
        }
        let started = Instant::now();
        other.write_all(b"meanwhile").unwrap();
        slowest = slowest.max(started.elapsed());
        writes += 1;
    };
    result.expect("the slow fsync");
    assert!(
        took >= SLOW_FSYNC,
        "the fsync took {took:?}, under {SLOW_FSYNC:?}"
    );
    assert!(writes > 1, "only {writes} write(s) during the fsync");
    assert!(
        slowest < SLOW_FSYNC / 2,
        "a write during the fsync took {slowest:?}: it waited for the flush"
    );

    // fdatasync costs the same, and the data is durable once it returns.
    let mut data = File::create(rig.at("data")).unwrap();
    data.write_all(b"kept").unwrap();
    let started = Instant::now();
    data.sync_data().unwrap();
    assert!(
        started.elapsed() >= SLOW_FSYNC,
        "fdatasync took {:?}",
        started.elapsed()
    );
    drop((data, other));
    rig.cut_and_remount();
    assert_eq!(read(&rig.at("data")), b"kept");
}

#[test]
fn a_cut_while_an_fsync_flushes_fails_it_with_eio() {
    if !tier_ready("a_cut_while_an_fsync_flushes_fails_it_with_eio") {
        return;
    }
    let mut rig = Rig::with(Options {
        fsync_latency: SLOW_FSYNC,
    });
    let mut file = File::create(rig.at("file")).unwrap();
    file.write_all(b"in flight").unwrap();
    let synced = sync_in_background(file);
    // Well inside the flush (the write before it is long done).
    std::thread::sleep(SLOW_FSYNC / 3);
    rig.fs.as_ref().unwrap().cut().expect("cut");

    let (result, _) = synced
        .recv_timeout(20 * SLOW_FSYNC)
        .expect("the fsync answers within its latency");
    let e = result.expect_err("an fsync the power cut short");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let fs = rig.fs.take().unwrap();
    fs.unmount().expect("unmount");
}
