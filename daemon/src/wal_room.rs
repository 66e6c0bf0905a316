//! Room for the WAL to grow into while checkpoints are held, written ahead
//! of it and read back into the page cache.
//!
//! Held checkpoints (a live backup) make the WAL grow into new blocks, from
//! an empty file. On ext4 (default `dioread_nolock`) the writeback of a
//! buffered write into a new block allocates it *unwritten*, and a kernel
//! worker converts it after the I/O, in one ordered queue per file system:
//! each commit's fsync then waits for that worker, which a busy CPU can
//! keep waiting. Traced here under load: 110–330 ms commits during a live
//! copy, and never outside one, where the WAL cycles through blocks already
//! written.
//!
//! So, while checkpoints are held, the writer thread keeps [`AHEAD`] bytes
//! of zeros past the WAL's end, written with `O_DIRECT`: a direct write past
//! a file's end allocates *written* blocks and completes in the writer, and
//! leaves no page of the WAL in writeback for a commit's fsync to wait on.
//! The commits then write over written blocks, which needs no conversion,
//! and within the file's size, which needs no journal commit either.
//!
//! A direct write leaves its pages out of the cache, and a frame (a 24-byte
//! header and a page) covers parts of two pages: SQLite writing into a page
//! that is not cached makes the kernel read it first, synchronously, in the
//! writer (traced: about 80,000 4 KiB reads in a 4 GiB upgrade). So each
//! step of room is also read back ahead (`POSIX_FADV_WILLNEED`, which starts
//! the reads and does not wait for them), seconds before a frame reaches it.
//!
//! Zeros past the WAL's last frame are what SQLite already ignores: its
//! recovery (and the backup's copy, `waiaas_shared::backup`) stops at the
//! first frame whose salts or checksum do not match, and a zero frame has
//! neither (nor a page number). The room is only ever written past the
//! file's end, on the writer thread, between two transactions: no frame
//! SQLite wrote, or will write before the next transaction, is there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::Connection;

/// How far ahead of the WAL's end the room reaches: at the bench's 8 MB/s
/// of WAL during a live copy, two seconds.
const AHEAD: u64 = 16 << 20;
/// One direct write of zeros. The writer waits for it between two
/// transactions, on the inode's lock too: small, so a write request barely
/// notices.
const STEP: usize = 512 << 10;
/// Steps at most between two transactions, so that a burst of large
/// transactions delays the next by a few steps at worst; the room catches up
/// over the following ones.
const STEPS_PER_TURN: usize = 4;
/// The alignment `O_DIRECT` asks of an offset, a length and a buffer.
const ALIGN: u64 = 4096;
/// The WAL's header, before its first frame.
const HEADER: u64 = 32;
/// A frame's header, before its page.
const FRAME_HEADER: u64 = 24;

/// The room of one WAL, kept by the writer thread.
pub struct Room {
    /// The WAL, opened for direct writes.
    wal: File,
    /// Frames in the WAL after the last commit, as SQLite's WAL hook says.
    frames: Arc<AtomicU64>,
    /// A frame's size: its header and a page.
    frame: u64,
    /// `STEP` zeros at an aligned address, in `zeros[at..at + STEP]`.
    zeros: Vec<u8>,
    at: usize,
}

impl Room {
    /// The room of `conn`'s WAL (the writer, its checkpoints held). `None`,
    /// with a warning, where the file system refuses direct writes (tmpfs):
    /// the WAL then grows as it did.
    pub fn open(conn: &mut Connection) -> Option<Self> {
        match Self::try_open(conn) {
            Ok(room) => Some(room),
            Err(e) => {
                tracing::warn!("the WAL grows without room written ahead of it: {e}");
                None
            }
        }
    }

    fn try_open(conn: &mut Connection) -> io::Result<Self> {
        let to_io = |e: rusqlite::Error| io::Error::other(e.to_string());
        let page: u32 = conn
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .map_err(to_io)?;
        let path = format!("{}-wal", conn.path().unwrap_or_default());
        let wal = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW)
            .open(&path)?;
        let frames = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&frames);
        // Held checkpoints leave no autocheckpoint to replace (it is the
        // same hook).
        conn.wal_hook(Some(move |_: &mut _, count: i32| {
            seen.store(u64::try_from(count).unwrap_or(0), Ordering::Relaxed);
            Ok(())
        }))
        .map_err(to_io)?;
        let zeros = vec![0u8; STEP + ALIGN as usize];
        let at = zeros.as_ptr().align_offset(ALIGN as usize);
        Ok(Self {
            wal,
            frames,
            frame: FRAME_HEADER + u64::from(page),
            zeros,
            at,
        })
    }

    /// Between two transactions: extends the room up to [`AHEAD`] past the
    /// WAL's end, a few steps at most. A failure (a full disk) ends the room
    /// with a warning; the commits do not depend on it.
    pub fn keep_ahead(room: &mut Option<Self>) {
        let Some(this) = room else { return };
        if let Err(e) = this.extend() {
            tracing::warn!("stopped writing room ahead of the WAL: {e}");
            *room = None;
        }
    }

    fn extend(&mut self) -> io::Result<()> {
        let frames = self.frames.load(Ordering::Relaxed);
        // Not before SQLite has begun the log: its header comes first.
        if frames == 0 {
            return Ok(());
        }
        let end = HEADER + frames * self.frame;
        for _ in 0..STEPS_PER_TURN {
            let size = self.wal.metadata()?.len();
            if size >= end + AHEAD {
                break;
            }
            let zeros = &self.zeros[self.at..self.at + STEP];
            let offset = size.next_multiple_of(ALIGN);
            self.wal.write_all_at(zeros, offset)?;
            self.read_ahead(offset)?;
        }
        Ok(())
    }

    /// Starts reading one step of room back into the page cache.
    fn read_ahead(&self, offset: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(STEP))
        else {
            return Err(io::Error::other("the WAL is past the largest file offset"));
        };
        // SAFETY: a plain system call on a descriptor this `File` owns.
        let err = unsafe {
            libc::posix_fadvise(self.wal.as_raw_fd(), offset, len, libc::POSIX_FADV_WILLNEED)
        };
        match err {
            0 => Ok(()),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap()
    }

    /// A database with one table, its checkpoints held, and its WAL's room.
    fn held() -> (tempfile::TempDir, Connection, Option<Room>) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::db::open(&dir.path().join("waiaas.db")).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        crate::db::hold_checkpoints(&conn).unwrap();
        let room = Room::open(&mut conn);
        assert!(
            room.is_some(),
            "a WAL on {} takes direct writes",
            dir.path().display()
        );
        (dir, conn, room)
    }

    #[test]
    fn the_room_stays_ahead_of_a_held_wal_allocated_and_what_was_committed_is_all_recovered() {
        let (dir, conn, mut room) = held();
        let wal = dir.path().join("waiaas.db-wal");
        // Nothing before SQLite's own header.
        Room::keep_ahead(&mut room);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        let mut committed = 0;
        for turn in 0..200 {
            conn.execute("INSERT INTO t VALUES (hex(randomblob(3000)))", [])
                .unwrap();
            committed += 1;
            Room::keep_ahead(&mut room);
            let frames = room.as_ref().unwrap().frames.load(Ordering::Relaxed);
            let end = HEADER + frames * room.as_ref().unwrap().frame;
            let meta = std::fs::metadata(&wal).unwrap();
            assert!(meta.len() > end, "turn {turn}: room past the end {end}");
            if turn >= 40 {
                assert!(
                    meta.len() >= end + AHEAD,
                    "turn {turn}: {} < {end} + AHEAD",
                    meta.len()
                );
            }
            // Written, not a hole the next commit would allocate.
            assert!(
                meta.blocks() * 512 >= meta.len() - ALIGN,
                "turn {turn}: holes in the room"
            );
        }
        // Recovered from the files alone (no wal-index), as after a kill:
        // SQLite reads the log up to its last frame and ignores the zeros.
        let copy = tempfile::tempdir().unwrap();
        for name in ["waiaas.db", "waiaas.db-wal"] {
            std::fs::copy(dir.path().join(name), copy.path().join(name)).unwrap();
        }
        let recovered = Connection::open(copy.path().join("waiaas.db")).unwrap();
        assert_eq!(count(&recovered), committed);
        assert_eq!(count(&conn), committed);
    }

    /// Pages of `file` in `[from, to)` that are not in the page cache.
    fn uncached_pages(file: &File, from: u64, to: u64) -> usize {
        let page = 4096u64;
        let (from, to) = (from / page * page, to.next_multiple_of(page));
        let len = usize::try_from(to - from).unwrap();
        // SAFETY: a read-only shared mapping of a file this test owns, only
        // passed to mincore and unmapped before return; never dereferenced.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                libc::off_t::try_from(from).unwrap(),
            );
            assert_ne!(map, libc::MAP_FAILED, "{}", io::Error::last_os_error());
            let mut resident = vec![0u8; len / 4096];
            let rc = libc::mincore(map, len, resident.as_mut_ptr());
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            libc::munmap(map, len);
            resident.iter().filter(|r| *r & 1 == 0).count()
        }
    }

    #[test]
    fn the_room_is_read_back_into_the_page_cache_so_no_frame_write_reads_from_the_disk() {
        let (dir, conn, mut room) = held();
        for _ in 0..20 {
            conn.execute("INSERT INTO t VALUES (hex(randomblob(3000)))", [])
                .unwrap();
            Room::keep_ahead(&mut room);
        }
        let this = room.as_ref().unwrap();
        let end = HEADER + this.frames.load(Ordering::Relaxed) * this.frame;
        let wal = File::open(dir.path().join("waiaas.db-wal")).unwrap();
        let size = wal.metadata().unwrap().len();
        assert!(
            size >= end + AHEAD,
            "the room is {size} bytes, the WAL {end}"
        );
        // The reads were started, not awaited: give them a bounded while.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let uncached = uncached_pages(&wal, end, size);
            if uncached == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{uncached} pages of room past the WAL's end are still not cached after 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
