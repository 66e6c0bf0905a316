//! Durable file operations: a crash at any instant leaves either the old or
//! the new content, never a torn file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

/// Flushes a directory's entries (a rename is durable only after this).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` through a temp file in the same folder, fsynced and
/// renamed into place, then fsyncs the folder. The temp file is this
/// process's own (its pid in the name), created new (`O_EXCL`) without
/// following a link, so nothing planted at that name is written through.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(temp_name(&name.to_string_lossy()));
    // A leftover of this pid (a crash, then pid reuse) goes; a link goes
    // itself, not its target; a folder there is an error.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// Copies `from` to `to` (made or replaced), sets `mode` and fsyncs the
/// copy; the caller fsyncs the folder once its files are all there.
pub fn copy_synced(from: &Path, to: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(from, to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    File::open(to)?.sync_all()
}

/// The temp file [`write_atomic`] uses for `name` in this process.
pub fn temp_name(name: &str) -> String {
    format!(".{name}.{}.tmp", std::process::id())
}

/// The SHA-256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    Hashing::open(path)?
        .run(&crate::background::Watch::default())
        .expect("a hash no one takes over ends")
}

/// [`sha256_file`] beside a serving daemon: at idle priority, in bounded
/// time (see [`crate::background`]). A rollback's replaced database is
/// hashed while the restored one serves: seconds of CPU at 4 GiB.
pub fn sha256_file_beside(path: &Path) -> io::Result<String> {
    let hashing = Hashing::open(path)?;
    crate::background::run(hashing, crate::background::STARVED, Hashing::run)
}

/// A file's hash taken a step at a time, so that it can stop between two
/// and go on on another thread. A step is as long as the copy's beside the
/// daemon, a few milliseconds of CPU: the watcher of
/// [`crate::background::run`] counts steps, and steps much shorter could
/// keep coming, however slowly the hash goes, and never let it take over.
struct Hashing {
    file: File,
    hasher: Sha256,
    buf: Vec<u8>,
}

impl Hashing {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            file: File::open(path)?,
            hasher: Sha256::new(),
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Hashes up to the end (`Some`), or until `watch` takes the rest over.
    fn run(&mut self, watch: &crate::background::Watch) -> Option<io::Result<String>> {
        watch.until_done(|| self.step())
    }

    /// Hashes the next step; the hash once the file has ended.
    fn step(&mut self) -> Option<io::Result<String>> {
        let mut hashed = 0;
        while hashed < Pace::Beside.step() {
            match self.file.read(&mut self.buf) {
                Ok(0) => {
                    return Some(Ok(hex::encode(std::mem::take(&mut self.hasher).finalize())));
                }
                Ok(n) => {
                    self.hasher.update(&self.buf[..n]);
                    hashed += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

/// Which side of [`copy_hashed`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading: {0}")]
    Read(#[source] io::Error),
    #[error("writing: {0}")]
    Write(#[source] io::Error),
}

/// What [`copy_hashed`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// SHA-256 of the bytes written, lowercase hex.
    pub sha256: String,
    pub len: u64,
}

/// How a copy shares the disk: alone, four steps may be on their way to it
/// at once, each step's writeback started as soon as it is copied and the
/// hash one step behind ([`write_behind`]); beside a daemon, one step at a
/// time, written past the page cache ([`copy_direct`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Nothing waits on the disk beside the copy: 8 MiB steps, at the
    /// disk's speed.
    Alone,
    /// Beside a daemon that serves, whose every commit waits for a fsync:
    /// 2 MiB steps. (A 4 GiB live copy here, through the page cache: the
    /// worst write beside it 22–1204 ms over 16 copies, median about
    /// 40 ms; with 8 MiB steps 50–1019 ms over 10, median 113 ms.)
    Beside,
}

impl Pace {
    fn step(self) -> usize {
        match self {
            Pace::Alone => 8 << 20,
            Pace::Beside => 2 << 20,
        }
    }

    fn in_flight(self) -> u64 {
        4 * self.step() as u64
    }
}

/// Copies `source` to the new file `dest` (created with `mode`, never over
/// an existing file), then fsyncs it. Alone, the kernel copies
/// (`copy_file_range`, no pass through user space) while another thread
/// hashes the copy right behind it, from the page cache; each step's
/// writeback starts as soon as it is copied, and little is in flight at
/// once, so the final fsync finds little left. Where the kernel cannot
/// copy (another file system, a FUSE mount), the bytes go through a buffer
/// instead. Beside a daemon, the bytes go through a buffer, hashed there,
/// and are written past the page cache where the file system allows it, on
/// a thread that gives way to the daemon ([`crate::background`]).
pub fn copy_hashed(source: &Path, dest: &Path, mode: u32, pace: Pace) -> Result<Copied, CopyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut from = File::open(source).map_err(CopyError::Read)?;
    let mut to = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(dest)
        .map_err(CopyError::Write)?;
    if pace == Pace::Beside && direct(&to, true) {
        let copy = DirectCopy::new(&mut from, &mut to);
        let copied = crate::background::run(copy, crate::background::STARVED, DirectCopy::run)?;
        to.sync_all().map_err(CopyError::Write)?;
        return Ok(copied);
    }
    // The hasher's own descriptor: it reads what was written, not the source.
    let written = to.try_clone().map_err(CopyError::Write)?;
    let (len, sha256) = std::thread::scope(|scope| {
        let (copied, progress) = std::sync::mpsc::channel();
        let hasher = scope.spawn(move || hash_behind(&written, progress));
        let len = copy_steps(&mut from, &mut to, pace, &copied);
        drop(copied);
        let sha256 = hasher.join().expect("hashing does not panic");
        (len, sha256)
    });
    let len = len?;
    let sha256 = sha256.map_err(CopyError::Write)?;
    to.sync_all().map_err(CopyError::Write)?;
    Ok(Copied { sha256, len })
}

/// The alignment `O_DIRECT` asks of a buffer, an offset and a length: a
/// page, which covers every logical block size of a disk.
const DIRECT_ALIGN: usize = 4096;

/// Turns `O_DIRECT` on or off for `file`; whether it is now as asked (a
/// file system without direct I/O, such as tmpfs, refuses it).
fn direct(file: &File, on: bool) -> bool {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: an open descriptor; F_GETFL and F_SETFL touch only its flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

/// A copy of `from` into `to` (in `O_DIRECT` mode) through one aligned
/// buffer, hashing each step as it is written, that may stop between
/// steps and go on later, on another thread ([`crate::background::run`]).
/// Beside a serving daemon, a copy
/// through the page cache leaves its writeback to the kernel's workers —
/// on ext4, the conversion of each newly allocated extent, in one ordered
/// queue per file system that the daemon's commits wait on too; here, a
/// commit waited 100–330 ms behind it on 2 busy CPUs. A direct write past
/// the end allocates written extents and waits for its own I/O, so the
/// copy keeps at most one step on its way to the disk and nothing in that
/// queue. A last step shorter than the alignment goes through the page
/// cache, as does everything if the file system refuses a direct write.
struct DirectCopy<'f> {
    from: &'f mut File,
    to: &'f mut File,
    raw: Vec<u8>,
    hasher: Sha256,
    len: u64,
    is_direct: bool,
}

impl<'f> DirectCopy<'f> {
    fn new(from: &'f mut File, to: &'f mut File) -> Self {
        Self {
            from,
            to,
            raw: vec![0u8; Pace::Beside.step() + DIRECT_ALIGN],
            hasher: Sha256::new(),
            len: 0,
            is_direct: true,
        }
    }

    /// Copies step after step until the end (`Some`), or until `watch`
    /// takes the rest over (`None`).
    fn run(&mut self, watch: &crate::background::Watch) -> Option<Result<Copied, CopyError>> {
        watch.until_done(|| match self.step() {
            Ok(true) => None,
            Ok(false) => Some(Ok(Copied {
                sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
                len: self.len,
            })),
            Err(e) => Some(Err(e)),
        })
    }

    /// Copies the next step; whether there was one.
    fn step(&mut self) -> Result<bool, CopyError> {
        let step = Pace::Beside.step();
        let start = self.raw.as_ptr().align_offset(DIRECT_ALIGN);
        let buf = &mut self.raw[start..start + step];
        let (from, to) = (&mut *self.from, &mut *self.to);
        let mut n = 0;
        while n < step {
            match from.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(read) => n += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if n == 0 {
            return Ok(false);
        }
        self.hasher.update(&buf[..n]);
        let aligned = n - n % DIRECT_ALIGN;
        if self.is_direct && aligned > 0 {
            match to.write_all(&buf[..aligned]) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && direct(to, false) => {
                    self.is_direct = false;
                    // The refused write may have moved the offset part way.
                    to.seek(io::SeekFrom::Start(self.len))
                        .map_err(CopyError::Write)?;
                    to.write_all(&buf[..aligned]).map_err(CopyError::Write)?;
                }
                Err(e) => return Err(CopyError::Write(e)),
            }
        } else {
            to.write_all(&buf[..aligned]).map_err(CopyError::Write)?;
        }
        if aligned < n {
            if self.is_direct {
                self.is_direct = !direct(to, false);
            }
            to.write_all(&buf[aligned..n]).map_err(CopyError::Write)?;
        }
        self.len += n as u64;
        if !self.is_direct {
            write_behind(to, self.len - n as u64, self.len, Pace::Beside);
        }
        Ok(true)
    }
}

/// Copies `from` into `to` by steps of `pace`, announcing on `copied` how
/// far the copy has come; returns its length.
fn copy_steps(
    from: &mut File,
    to: &mut File,
    pace: Pace,
    copied: &std::sync::mpsc::Sender<u64>,
) -> Result<u64, CopyError> {
    use std::os::fd::AsRawFd;
    let (mut len, mut in_kernel, mut buf) = (0u64, true, Vec::new());
    loop {
        let n = if in_kernel {
            // SAFETY: two open descriptors; null offsets use and advance theirs.
            let n = unsafe {
                libc::copy_file_range(
                    from.as_raw_fd(),
                    std::ptr::null_mut(),
                    to.as_raw_fd(),
                    std::ptr::null_mut(),
                    pace.step(),
                    0,
                )
            };
            // An error, or an end the kernel may report early (files that
            // claim no size, as in /proc): the rest through user space, from
            // where the kernel stopped, where a read or write error names
            // its side and a read of 0 is the end.
            if n <= 0 {
                in_kernel = false;
                continue;
            }
            n as usize
        } else {
            buf.resize(pace.step(), 0);
            let n = match from.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            to.write_all(&buf[..n]).map_err(CopyError::Write)?;
            n
        };
        if n == 0 {
            return Ok(len);
        }
        len += n as u64;
        write_behind(to, len - n as u64, len, pace);
        // The hasher stops only after the copy (its receiver outlives this).
        let _ = copied.send(len);
    }
}

/// Starts the writeback of `file`'s bytes `from..to`, just written, and
/// waits until all but the last bytes `pace` keeps in flight before `to`
/// are on the disk. A database's fsyncs beside the copy then never wait behind more
/// than that: its writes queue behind the copy's, and on a disk that serves
/// requests in order and makes a cache flush sync what came before it (a
/// virtual disk such as this machine's), its flush waits for all the copy
/// has in flight. And the copy runs at the
/// disk's pace instead of filling the page cache with dirty pages the
/// kernel then throttles (unbounded, a copy of 1 GiB took 0.6 to 2.7 s
/// here; bounded, 0.5 to 0.55 s).
pub(crate) fn write_behind(file: &File, from: u64, to: u64, pace: Pace) {
    use std::os::fd::AsRawFd;
    // SAFETY: an open descriptor; writeback has no other effect. Its
    // errors come back from the fsync that ends every copy.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
        if to > pace.in_flight() {
            libc::sync_file_range(
                file.as_raw_fd(),
                0,
                (to - pace.in_flight()) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
    }
}

/// Starts and waits for the writeback of `file`'s dirty pages, a step of
/// [`Pace::Beside`] at a time: a fsync that finds them all dirty
/// at once puts every page in the disk's queue together, where a database's
/// own fsyncs beside it wait behind them. Not a fsync: the disk's cache is
/// not flushed, and the file's metadata is not written.
pub fn write_back(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = file.metadata()?.len();
    let mut at = 0u64;
    while at < len {
        // SAFETY: an open descriptor; writeback has no other effect.
        let done = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                at as libc::off64_t,
                Pace::Beside.step() as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        at += Pace::Beside.step() as u64;
    }
    Ok(())
}

/// SHA-256 of `file`'s bytes, read up to each length announced on
/// `progress` as it comes, to the last one.
fn hash_behind(file: &File, progress: std::sync::mpsc::Receiver<u64>) -> io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut hashed = 0u64;
    for end in progress {
        while hashed < end {
            let want = buf.len().min((end - hashed) as usize);
            let n = match file.read_at(&mut buf[..want], hashed) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            hashed += n as u64;
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file `source` of `len` bytes in `dir` that no two steps repeat; its bytes.
    fn patterned(dir: &Path, len: usize) -> (std::path::PathBuf, Vec<u8>) {
        let source = dir.join("source");
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&source, &bytes).unwrap();
        (source, bytes)
    }

    /// The copy is the source, byte for byte, and its hash the copy's, when
    /// the kernel copies (a file of several steps) and when it cannot (a
    /// file in /proc, whose size the kernel reports as 0).
    #[test]
    fn a_copy_is_the_source_and_its_hash_is_the_copys() {
        let dir = tempfile::tempdir().unwrap();
        let (source, bytes) = patterned(dir.path(), 2 * Pace::Alone.step() + 12_345);
        for (from, name, pace) in [
            (source.as_path(), "copy", Pace::Alone),
            (Path::new("/proc/self/mounts"), "proc", Pace::Alone),
            (source.as_path(), "copy-direct", Pace::Beside),
            (Path::new("/proc/self/mounts"), "proc-direct", Pace::Beside),
        ] {
            let dest = dir.path().join(name);
            let copied = copy_hashed(from, &dest, 0o600, pace).unwrap();
            let written = std::fs::read(&dest).unwrap();
            assert!(!written.is_empty(), "{name}: nothing copied");
            assert_eq!(copied.len, written.len() as u64, "{name}");
            assert_eq!(copied.sha256, sha256_file(&dest).unwrap(), "{name}");
            if name.starts_with("copy") {
                assert_eq!(written, bytes);
            }
        }
    }

    /// Beside a daemon, the copy's bytes go past the page cache: none of its
    /// whole steps are left cached (so none were dirty for the kernel's
    /// writeback), where the file system takes direct I/O.
    #[test]
    fn a_copy_beside_a_daemon_leaves_its_steps_out_of_the_page_cache() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let probe = File::create(dir.path().join("probe")).unwrap();
        if !direct(&probe, true) {
            eprintln!("skipped: {} takes no direct I/O", dir.path().display());
            return;
        }
        let source = dir.path().join("source");
        let len = 3 * Pace::Beside.step() + 100;
        std::fs::write(&source, vec![7u8; len]).unwrap();
        let dest = dir.path().join("copy");
        let copied = copy_hashed(&source, &dest, 0o600, Pace::Beside).unwrap();
        assert_eq!(copied.len, len as u64);
        let file = File::open(&dest).unwrap();
        // SAFETY: a shared read-only mapping of an open file of `len` bytes,
        // unmapped below; mincore only reports which pages are resident.
        let resident = unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut pages = vec![0u8; len.div_ceil(4096)];
            assert_eq!(libc::mincore(map, len, pages.as_mut_ptr()), 0);
            libc::munmap(map, len);
            pages.iter().filter(|p| *p & 1 == 1).count()
        };
        assert!(
            resident <= 1,
            "{resident} pages of the copy are cached; only the short tail may be"
        );
    }

    /// A direct copy taken over between steps goes on, on another thread,
    /// from where it stopped: the same bytes and hash as one in one go.
    #[test]
    fn a_direct_copy_goes_on_from_where_it_stopped_on_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (source, bytes) = patterned(dir.path(), 3 * Pace::Beside.step() + 5_000);
        let dest = dir.path().join("copy");
        let mut from = File::open(&source).unwrap();
        let mut to = File::create(&dest).unwrap();
        direct(&to, true);
        let mut copy = DirectCopy::new(&mut from, &mut to);
        assert!(copy.step().unwrap(), "a first step, here");
        let long = std::time::Duration::from_secs(30);
        let copied = crate::background::run(copy, long, DirectCopy::run).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        assert_eq!(copied.len, bytes.len() as u64);
        assert_eq!(copied.sha256, sha256_file(&source).unwrap());
    }

    /// A hash taken over between two steps stops at once, then goes on,
    /// on another thread, from where it stopped: what the first step read
    /// is not read again (the test changes it after), and the hash is the
    /// whole file's as it was.
    #[test]
    fn a_hash_goes_on_from_where_it_stopped_on_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bytes) = patterned(dir.path(), 3 * Pace::Beside.step() + 5_000);
        let mut hashing = Hashing::open(&path).unwrap();
        assert!(hashing.step().is_none(), "a first step, here");
        let taken = crate::background::Watch::taken();
        assert!(hashing.run(&taken).is_none(), "taken over: no result");
        let mut changed = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        changed.write_all(&[0u8; 4096]).unwrap();
        let long = std::time::Duration::from_secs(30);
        let sha256 = crate::background::run(hashing, long, Hashing::run).unwrap();
        assert_eq!(sha256, hex::encode(Sha256::digest(&bytes)));
    }

    /// A read that fails ends the hash with its error, watched or not (a
    /// folder opens, and every read of it fails).
    #[test]
    fn a_hash_that_cannot_read_says_why() {
        let dir = tempfile::tempdir().unwrap();
        for hashed in [sha256_file(dir.path()), sha256_file_beside(dir.path())] {
            let e = hashed.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EISDIR), "{e}");
        }
    }

    #[test]
    fn atomic_write_replaces_and_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"abc", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"abc");
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.json"], "no temp file left behind");
    }

    #[test]
    fn a_link_planted_at_the_temp_name_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let path = dir.path().join("a.json");
        std::os::unix::fs::symlink(&victim, dir.path().join(temp_name("a.json"))).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
