//! Copying a WAL while the daemon still writes to it. With checkpoints held
//! the WAL only grows: a committed frame is never written again until a
//! checkpoint restarts the log. So the committed frames are copied while the
//! daemon serves, pass after pass ([`WalCopy::catch_up`]), and only what was
//! appended since the last pass is copied once it has stopped
//! ([`WalCopy::finish`]) — the downtime holds a small tail, not the whole log.
//!
//! Frames of a transaction still open may be rewritten in place, so a pass
//! stops at the last commit frame. The layout read here is SQLite's WAL
//! format (sqlite.org/fileformat2.html#walformat): a 32-byte header, then
//! frames of a 24-byte header and one page.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::fsutil::Copied;

const HEADER: u64 = 32;
const FRAME_HEADER: u64 = 24;
const MAGIC: [u32; 2] = [0x377f_0682, 0x377f_0683];

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

/// A WAL being copied to `dest`: its first `len` bytes so far, all of them
/// committed frames.
#[derive(Debug)]
pub struct WalCopy {
    dest: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
    /// The log's header as copied: a restarted log has other salts.
    header: Option<[u8; HEADER as usize]>,
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
        })
    }

    /// Copies the committed frames of `wal` not copied yet, fsynced; returns
    /// how many bytes that was (0 when nothing new was committed).
    pub fn catch_up(&mut self, wal: &Path) -> Result<u64, WalError> {
        let Some(source) = open(wal)? else {
            return Ok(0);
        };
        let end = source.metadata().map_err(io_at(wal))?.len();
        let header = match self.header {
            Some(header) => header,
            None => match read_header(&source, wal, end)? {
                Some(header) => header,
                None => return Ok(0),
            },
        };
        let page_size = u64::from(u32::from_be_bytes(header[8..12].try_into().unwrap()));
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::Restarted(wal.to_path_buf()));
        }
        let frame = FRAME_HEADER + page_size;
        let mut at = self.len.max(HEADER);
        let mut committed = self.len;
        let mut frame_header = [0u8; FRAME_HEADER as usize];
        while at + frame <= end {
            source
                .read_exact_at(&mut frame_header, at)
                .map_err(io_at(wal))?;
            // A frame of another generation of the log ends this one.
            if frame_header[8..16] != header[16..24] {
                break;
            }
            at += frame;
            if frame_header[4..8] != [0; 4] {
                committed = at;
            }
        }
        if committed <= self.len {
            return Ok(0);
        }
        let copied = self.append(source, wal, committed - self.len)?;
        self.header = Some(header);
        Ok(copied)
    }

    /// Once nothing writes the log any more: checks it is the one copied so
    /// far, copies the rest, and fsyncs. What was copied in all.
    pub fn finish(mut self, wal: &Path) -> Result<Copied, WalError> {
        if let Some(source) = open(wal)? {
            let end = source.metadata().map_err(io_at(wal))?.len();
            if let Some(copied) = self.header {
                if end < self.len || read_header(&source, wal, end)? != Some(copied) {
                    return Err(WalError::Restarted(wal.to_path_buf()));
                }
            }
            self.append(source, wal, end - self.len)?;
        } else if self.len > 0 {
            return Err(WalError::Restarted(wal.to_path_buf()));
        }
        Ok(Copied {
            sha256: hex::encode(self.hasher.finalize()),
            len: self.len,
        })
    }

    /// Appends `count` bytes of `source` from where the copy ends, fsynced.
    fn append(&mut self, mut source: File, wal: &Path, count: u64) -> Result<u64, WalError> {
        source.seek(SeekFrom::Start(self.len)).map_err(io_at(wal))?;
        let mut left = count;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = source.read(&mut buf[..want]).map_err(io_at(wal))?;
            if n == 0 {
                // Shorter than measured: only a replaced log shrinks.
                return Err(WalError::Restarted(wal.to_path_buf()));
            }
            self.hasher.update(&buf[..n]);
            self.file.write_all(&buf[..n]).map_err(io_at(&self.dest))?;
            left -= n as u64;
        }
        self.file.sync_all().map_err(io_at(&self.dest))?;
        self.len += count;
        Ok(count)
    }
}

fn open(wal: &Path) -> Result<Option<File>, WalError> {
    match File::open(wal) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(wal)(e)),
    }
}

/// The log's header, `None` while it has none yet (empty after a checkpoint).
fn read_header(
    source: &File,
    wal: &Path,
    end: u64,
) -> Result<Option<[u8; HEADER as usize]>, WalError> {
    if end < HEADER {
        return Ok(None);
    }
    let mut header = [0u8; HEADER as usize];
    source.read_exact_at(&mut header, 0).map_err(io_at(wal))?;
    let magic = u32::from_be_bytes(header[0..4].try_into().unwrap());
    if !MAGIC.contains(&magic) {
        return Err(WalError::Restarted(wal.to_path_buf()));
    }
    Ok(Some(header))
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
