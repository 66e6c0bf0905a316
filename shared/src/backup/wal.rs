//! Copying a WAL while the daemon still writes to it. With checkpoints held
//! the WAL only grows: a committed frame is never written again until a
//! checkpoint restarts the log. So the committed frames are copied while the
//! daemon serves, pass after pass ([`WalCopy::catch_up`]), and only what was
//! appended since the last pass is copied once it has stopped
//! ([`WalCopy::finish`]) — the downtime holds a small tail, not the whole log.
//!
//! Frames of a transaction still open may be rewritten in place, so a pass
//! stops at the last commit frame, and only at one the checksum chain
//! reaches, as SQLite's own recovery does. The layout read here is SQLite's
//! WAL format (sqlite.org/fileformat2.html#walformat): a 32-byte header, then
//! frames of a 24-byte header and one page.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fsutil::{Copied, Pace};

const HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;
const MAGIC: [u32; 2] = [0x377f_0682, 0x377f_0683];

/// The log's 32-byte header.
type Header = [u8; HEADER as usize];
/// A value of the checksum chain: two 32-bit words.
type Chain = [u32; 2];

/// Why a WAL could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The log is not the one being copied: it was restarted (after a
    /// checkpoint), or is not a WAL at all.
    #[error("{0} was restarted or replaced while it was copied")]
    Restarted(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A WAL being copied to `dest`: its first `len` bytes so far, the header
/// and whole transactions whose frames follow SQLite's checksum chain.
#[derive(Debug)]
pub struct WalCopy {
    dest: PathBuf,
    file: File,
    /// The hash of the first `len` bytes of `dest`.
    hasher: Sha256,
    len: u64,
    /// The log's header as copied: a restarted log has other salts.
    header: Option<Header>,
    /// The checksum chain's value at `len`: where the next frame's starts.
    chain: Chain,
}

impl WalCopy {
    /// Creates `dest` (new, the owner's alone), nothing copied yet.
    pub fn create(dest: &Path) -> Result<Self, WalError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(dest)
            .map_err(io_at(dest))?;
        Ok(Self {
            dest: dest.to_path_buf(),
            file,
            hasher: Sha256::new(),
            len: 0,
            header: None,
            chain: [0; 2],
        })
    }

    /// Copies the committed frames of `wal` not copied yet, fsynced; returns
    /// how many bytes that was (0 when nothing new was committed).
    pub fn catch_up(&mut self, wal: &Path) -> Result<u64, WalError> {
        let Some(source) = open(wal)? else {
            return Ok(0);
        };
        let end = source.metadata().map_err(io_at(wal))?.len();
        let (header, chain) = match self.header {
            Some(header) => (header, self.chain),
            None => match read_header(&source, wal, end)? {
                Some(read) => read,
                None => return Ok(0),
            },
        };
        self.copy_committed(&source, wal, end, header, chain)
    }

    /// Once nothing writes the log any more: checks it is the one copied so
    /// far, copies the rest of its committed frames, and fsyncs. What was
    /// copied in all.
    pub fn finish(mut self, wal: &Path) -> Result<Copied, WalError> {
        if let Some(source) = open(wal)? {
            let end = source.metadata().map_err(io_at(wal))?.len();
            if let Some(copied) = self.header {
                let now = read_header(&source, wal, end)?.map(|(header, _)| header);
                if end < self.len || now != Some(copied) {
                    return Err(WalError::Restarted(wal.to_path_buf()));
                }
            }
            self.catch_up(wal)?;
        } else if self.len > 0 {
            return Err(WalError::Restarted(wal.to_path_buf()));
        }
        Ok(Copied {
            sha256: hex::encode(self.hasher.finalize()),
            len: self.len,
        })
    }

    /// Reads the frames of `source` after `len` (up to `end`) once, and
    /// copies those bytes up to the last commit frame the chain reaches: a
    /// frame is the log's while its salts are the header's and its checksum,
    /// seeded by the one before, matches — what SQLite's recovery keeps. Past
    /// that (a frame of another generation, a page rewritten after its header,
    /// a torn write) SQLite ignores the rest, and so does the copy: reading
    /// each byte once means what is checked is what is copied.
    fn copy_committed(
        &mut self,
        source: &File,
        wal: &Path,
        end: u64,
        header: Header,
        mut chain: Chain,
    ) -> Result<u64, WalError> {
        let page_size = u64::from(u32::from_be_bytes(header[8..12].try_into().unwrap()));
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::Restarted(wal.to_path_buf()));
        }
        let big_endian = u32::from_be_bytes(header[0..4].try_into().unwrap()) == MAGIC[1];
        let frame = usize::try_from(FRAME_HEADER + page_size).expect("a frame fits in memory");
        let mut tentative = self.hasher.clone();
        let mut at = self.len;
        if at == 0 {
            self.file
                .write_all_at(&header, 0)
                .map_err(io_at(&self.dest))?;
            tentative.update(header);
            at = HEADER;
        }
        let mut committed = None;
        let mut buf = vec![0u8; frame * frames_per_read(frame)];
        while at + frame as u64 <= end {
            let frames = usize::try_from((end - at) / frame as u64)
                .unwrap_or(usize::MAX)
                .min(buf.len() / frame);
            let chunk = &mut buf[..frames * frame];
            source
                .read_exact_at(chunk, at)
                .map_err(|e| match e.kind() {
                    // Shorter than measured: only a replaced log shrinks.
                    io::ErrorKind::UnexpectedEof => WalError::Restarted(wal.to_path_buf()),
                    _ => io_at(wal)(e),
                })?;
            let (from, mut valid, mut ended) = (at, 0, false);
            for one in chunk.chunks_exact(frame) {
                let salts_match = one[8..16] == header[16..24];
                let page_number = u32::from_be_bytes(one[0..4].try_into().unwrap());
                let next = checksum(
                    big_endian,
                    checksum(big_endian, chain, &one[..8]),
                    &one[24..],
                );
                if !salts_match || page_number == 0 || one[16..24] != chain_bytes(next) {
                    ended = true;
                    break;
                }
                tentative.update(one);
                chain = next;
                valid += frame;
                at += frame as u64;
                if one[4..8] != [0; 4] {
                    committed = Some((at, tentative.clone(), chain));
                }
            }
            self.file
                .write_all_at(&chunk[..valid], from)
                .map_err(io_at(&self.dest))?;
            // A pass may copy hundreds of MB: written back as it goes, not
            // all at its fsync, where the daemon's commits would wait for it.
            crate::fsutil::write_behind(&self.file, from, from + valid as u64, Pace::Beside);
            if ended {
                break;
            }
        }
        let Some((len, hasher, chain)) = committed else {
            // Frames of no commit, or only a header, may have been written: dropped.
            self.file.set_len(self.len).map_err(io_at(&self.dest))?;
            return Ok(0);
        };
        self.file.set_len(len).map_err(io_at(&self.dest))?;
        self.file.sync_all().map_err(io_at(&self.dest))?;
        let copied = len - self.len;
        (self.len, self.hasher, self.chain) = (len, hasher, chain);
        self.header = Some(header);
        Ok(copied)
    }
}

/// Bytes of frames read at once.
const COPY_CHUNK: usize = 1 << 20;

/// Frames of `frame` bytes read at once: about [`COPY_CHUNK`], at least one.
fn frames_per_read(frame: usize) -> usize {
    (COPY_CHUNK / frame).max(1)
}

/// SQLite's WAL checksum (`walChecksumBytes`) of `data`, seeded by `seed`:
/// 32-bit words in the byte order the header's magic names, two by two.
fn checksum(big_endian: bool, seed: Chain, data: &[u8]) -> Chain {
    let word = |bytes: &[u8]| {
        let bytes: [u8; 4] = bytes.try_into().unwrap();
        if big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        }
    };
    let [mut s1, mut s2] = seed;
    for pair in data.chunks_exact(8) {
        s1 = s1.wrapping_add(word(&pair[0..4])).wrapping_add(s2);
        s2 = s2.wrapping_add(word(&pair[4..8])).wrapping_add(s1);
    }
    [s1, s2]
}

/// A checksum as SQLite stores it: two big-endian words.
fn chain_bytes([s1, s2]: Chain) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&s1.to_be_bytes());
    bytes[4..].copy_from_slice(&s2.to_be_bytes());
    bytes
}

fn open(wal: &Path) -> Result<Option<File>, WalError> {
    match File::open(wal) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(wal)(e)),
    }
}

/// The log's header and its checksum (the chain's seed); `None` while it has
/// no valid one yet (empty after a checkpoint, or being written), when
/// SQLite reads the log as empty too.
fn read_header(source: &File, wal: &Path, end: u64) -> Result<Option<(Header, Chain)>, WalError> {
    if end < HEADER {
        return Ok(None);
    }
    let mut header = [0u8; HEADER as usize];
    source.read_exact_at(&mut header, 0).map_err(io_at(wal))?;
    let magic = u32::from_be_bytes(header[0..4].try_into().unwrap());
    if !MAGIC.contains(&magic) {
        return Err(WalError::Restarted(wal.to_path_buf()));
    }
    let sum = checksum(magic == MAGIC[1], [0; 2], &header[..24]);
    Ok((header[24..32] == chain_bytes(sum)).then_some((header, sum)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use rusqlite::config::DbConfig;

    /// A database in WAL mode whose writer never checkpoints, as a daemon
    /// holding its checkpoints.
    fn held(dir: &Path) -> Connection {
        let conn = Connection::open(dir.join("x.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        conn
    }

    fn insert(conn: &Connection, rows: u32) {
        for _ in 0..rows {
            conn.execute("INSERT INTO t VALUES (hex(randomblob(500)))", [])
                .unwrap();
        }
    }

    fn count(db: &Path) -> i64 {
        Connection::open(db)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_growing_log_is_copied_in_passes_and_whole_at_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        let main = tmp.path().join("main-copy");
        std::fs::copy(tmp.path().join("x.db"), &main).unwrap();
        let wal = tmp.path().join("x.db-wal");
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        insert(&conn, 100);
        let first = copy.catch_up(&wal).unwrap();
        assert!(first > 0);
        assert_eq!(copy.catch_up(&wal).unwrap(), 0, "nothing new");
        insert(&conn, 100);
        assert!(copy.catch_up(&wal).unwrap() > 0);
        insert(&conn, 7);
        drop(conn);
        let copied = copy.finish(&wal).unwrap();
        let original = std::fs::read(&wal).unwrap();
        assert_eq!(copied.len, original.len() as u64);
        assert_eq!(copied.sha256, hex::encode(Sha256::digest(&original)));
        // The main file as it was before the writes, and the copied log:
        // every row.
        let restored = tempfile::tempdir().unwrap();
        std::fs::copy(&main, restored.path().join("y.db")).unwrap();
        std::fs::copy(tmp.path().join("copy"), restored.path().join("y.db-wal")).unwrap();
        assert_eq!(count(&restored.path().join("y.db")), 207);
    }

    #[test]
    fn frames_of_an_open_transaction_wait_for_its_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        insert(&conn, 10);
        let wal = tmp.path().join("x.db-wal");
        let committed = std::fs::metadata(&wal).unwrap().len();
        // A small cache spills the open transaction's pages into the log.
        conn.pragma_update(None, "cache_size", 2).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        insert(&conn, 300);
        assert!(
            std::fs::metadata(&wal).unwrap().len() > committed,
            "spilled"
        );
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        assert_eq!(copy.catch_up(&wal).unwrap(), committed);
        conn.execute_batch("COMMIT").unwrap();
        assert!(copy.catch_up(&wal).unwrap() > 0);
    }

    /// A log whose later frames keep their salts but fail the checksum chain
    /// (here a commit frame's header over the page of an earlier frame, as a
    /// daemon restarted mid-copy can leave): SQLite's recovery stops at the
    /// first such frame, and the copy stops at the last commit before it.
    #[test]
    fn a_stale_tail_is_not_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        let main = tmp.path().join("main-copy");
        std::fs::copy(tmp.path().join("x.db"), &main).unwrap();
        let wal = tmp.path().join("x.db-wal");
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        insert(&conn, 3);
        assert!(copy.catch_up(&wal).unwrap() > 0);
        insert(&conn, 2);
        let good = std::fs::metadata(&wal).unwrap().len();
        insert(&conn, 5);
        drop(conn);
        let mut log = std::fs::read(&wal).unwrap();
        let page_size = u32::from_be_bytes(log[8..12].try_into().unwrap()) as usize;
        let frame = FRAME_HEADER as usize + page_size;
        let good = usize::try_from(good).unwrap();
        assert!(log.len() > good + frame, "frames after the fifth commit");
        // The next frame's own header (salts and all) over the page of the
        // last frame before it: stale.
        let stale = log[good - page_size..good].to_vec();
        assert_ne!(stale, log[good + 24..good + frame], "the page changed");
        log[good + 24..good + frame].copy_from_slice(&stale);
        std::fs::write(&wal, &log).unwrap();

        let copied = copy.finish(&wal).unwrap();
        assert_eq!(
            copied.len, good as u64,
            "copied up to the last valid commit"
        );
        assert_eq!(copied.sha256, hex::encode(Sha256::digest(&log[..good])));
        assert_eq!(std::fs::read(tmp.path().join("copy")).unwrap(), log[..good]);
        let restored = tempfile::tempdir().unwrap();
        std::fs::copy(&main, restored.path().join("y.db")).unwrap();
        std::fs::copy(tmp.path().join("copy"), restored.path().join("y.db-wal")).unwrap();
        assert_eq!(count(&restored.path().join("y.db")), 5);
    }

    /// `finish` with nothing written since the last pass copies nothing
    /// more; a log gone or shorter than what was copied is another log.
    #[test]
    fn the_end_of_a_copy_checks_the_log_is_still_the_one_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        insert(&conn, 20);
        drop(conn);
        let wal = tmp.path().join("x.db-wal");
        let original = std::fs::read(&wal).unwrap();
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        assert_eq!(copy.catch_up(&wal).unwrap(), original.len() as u64);
        let copied = copy.finish(&wal).unwrap();
        assert_eq!(copied.len, original.len() as u64, "nothing new: the same");

        for (name, change) in [("gone", None), ("shorter", Some(original.len() - 1))] {
            std::fs::write(&wal, &original).unwrap();
            let mut copy = WalCopy::create(&tmp.path().join(name)).unwrap();
            assert!(copy.catch_up(&wal).unwrap() > 0);
            match change {
                None => std::fs::remove_file(&wal).unwrap(),
                Some(len) => std::fs::write(&wal, &original[..len]).unwrap(),
            }
            assert!(
                matches!(copy.finish(&wal), Err(WalError::Restarted(_))),
                "{name}"
            );
        }
        // Nothing copied and no log: an empty copy.
        std::fs::remove_file(&wal).unwrap();
        let copy = WalCopy::create(&tmp.path().join("none")).unwrap();
        assert_eq!(copy.finish(&wal).unwrap().len, 0);
    }

    /// A frame with other salts is of another generation of the log (one
    /// written before a restart): it ends the log even where its checksum
    /// happens to follow the chain (the checksum does not cover the salts).
    #[test]
    fn a_frame_with_other_salts_ends_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        insert(&conn, 4);
        drop(conn);
        let wal = tmp.path().join("x.db-wal");
        let mut log = std::fs::read(&wal).unwrap();
        let page_size = u32::from_be_bytes(log[8..12].try_into().unwrap()) as usize;
        let frame = FRAME_HEADER as usize + page_size;
        let last = log.len() - frame;
        assert_ne!(log[last + 4..last + 8], [0; 4], "the last frame commits");
        log[last + 8] ^= 0xff;
        std::fs::write(&wal, &log).unwrap();
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        let copied = copy.catch_up(&wal).unwrap();
        assert!(copied <= last as u64, "{copied} of {}", log.len());
    }

    /// A log shorter than it measured (replaced while it was read) is
    /// another log, not a failure to read.
    #[test]
    fn a_log_that_shrinks_while_it_is_read_is_another_log() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        insert(&conn, 4);
        drop(conn);
        let wal = tmp.path().join("x.db-wal");
        let source = std::fs::File::open(&wal).unwrap();
        let len = source.metadata().unwrap().len();
        let (header, chain) = read_header(&source, &wal, len).unwrap().unwrap();
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        // As measured before it shrank: two frames longer than it is.
        let page_size = u64::from(u32::from_be_bytes(header[8..12].try_into().unwrap()));
        let measured = len + 2 * (FRAME_HEADER + page_size);
        assert!(matches!(
            copy.copy_committed(&source, &wal, measured, header, chain),
            Err(WalError::Restarted(_))
        ));
    }

    #[test]
    fn each_pass_returns_what_it_copied() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        let wal = tmp.path().join("x.db-wal");
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        let mut copied = 0;
        for _ in 0..3 {
            insert(&conn, 5);
            let len = std::fs::metadata(&wal).unwrap().len();
            assert_eq!(copy.catch_up(&wal).unwrap(), len - copied);
            copied = len;
        }
    }

    /// No log is nothing to copy; a log that cannot be opened is an error.
    #[test]
    fn a_missing_log_is_empty_and_an_unreadable_one_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(open(&tmp.path().join("x.db-wal")).unwrap().is_none());
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        // ENOTDIR: a path below a file.
        assert!(matches!(
            open(&file.join("x.db-wal")),
            Err(WalError::Io { .. })
        ));
    }

    /// A log of more frames than one read holds is copied in several reads.
    #[test]
    fn a_log_larger_than_a_read_is_copied_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        insert(&conn, 600);
        drop(conn);
        let wal = tmp.path().join("x.db-wal");
        let len = std::fs::metadata(&wal).unwrap().len();
        assert!(
            len > COPY_CHUNK as u64 + HEADER,
            "{len}: more than one read"
        );
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        assert_eq!(copy.catch_up(&wal).unwrap(), len);
        assert_eq!(
            std::fs::read(tmp.path().join("copy")).unwrap(),
            std::fs::read(&wal).unwrap()
        );
    }

    /// A file of a header's size that is not a WAL's header is not a log.
    #[test]
    fn a_header_sized_file_that_is_not_a_log_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let wal = tmp.path().join("x.db-wal");
        std::fs::write(&wal, [0xab; HEADER as usize]).unwrap();
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        assert!(matches!(copy.catch_up(&wal), Err(WalError::Restarted(_))));
    }

    #[test]
    fn frames_are_read_about_a_mebibyte_at_a_time() {
        assert_eq!(frames_per_read(24 + 4096), 254);
        assert_eq!(frames_per_read(24 + 65536), 15);
        assert_eq!(frames_per_read(2 << 20), 1, "at least one");
    }

    /// A header with a valid checksum but a page size SQLite never writes
    /// (not a power of two, or past 64 KiB) is not a log to copy.
    #[test]
    fn a_header_with_an_impossible_page_size_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        insert(&conn, 3);
        drop(conn);
        let wal = tmp.path().join("x.db-wal");
        let original = std::fs::read(&wal).unwrap();
        for page_size in [1000u32, 1 << 17] {
            let mut log = original.clone();
            log[8..12].copy_from_slice(&page_size.to_be_bytes());
            let big_endian = u32::from_be_bytes(log[0..4].try_into().unwrap()) == MAGIC[1];
            let sum = checksum(big_endian, [0; 2], &log[..24]);
            log[24..32].copy_from_slice(&chain_bytes(sum));
            std::fs::write(&wal, &log).unwrap();
            let mut copy = WalCopy::create(&tmp.path().join(format!("copy-{page_size}"))).unwrap();
            assert!(
                matches!(copy.catch_up(&wal), Err(WalError::Restarted(_))),
                "{page_size}"
            );
        }
    }

    #[test]
    fn a_log_restarted_after_a_checkpoint_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = held(tmp.path());
        insert(&conn, 20);
        let wal = tmp.path().join("x.db-wal");
        let mut copy = WalCopy::create(&tmp.path().join("copy")).unwrap();
        assert!(copy.catch_up(&wal).unwrap() > 0);
        // A daemon that did not hold its checkpoints: the log starts over.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        insert(&conn, 30);
        drop(conn);
        assert!(matches!(copy.finish(&wal), Err(WalError::Restarted(_))));
    }
}
