//! Power loss for tests: a pass-through FUSE filesystem that can lose power
//! the way LazyFS does.
//!
//! [`PowerCut::mount`] mounts a backing folder at a mount point. Every
//! operation goes through to the backing folder at once, so reads always see
//! the latest data. For each file changed since its last `fsync` or
//! `fdatasync`, the filesystem also keeps what the changes overwrote: the
//! file's length at that sync and each 4 KiB page as it was then (an undo
//! log, kept in memory). [`PowerCut::cut`] "loses power": every such file goes
//! back to its content at its last sync, and from then on every operation on
//! the mount, open handles included, fails with `EIO`.
//! [`PowerCut::unmount`] then detaches it; mounting the backing folder again
//! is the reboot.
//!
//! What it models: file data — writes, truncations and extensions — is
//! durable only once the file is fsynced (through any handle). With
//! [`Options::fsync_latency`], each fsync also takes that long to answer, as
//! on a disk whose cache flush does: what the file held when the fsync came
//! in is durable from then on, and the answer (`EIO` if the power was cut
//! meanwhile) waits on a thread of its own, so other operations go on.
//!
//! What it does not model:
//! - directory entries: creations, renames, unlinks and `mkdir` are durable
//!   as soon as they return, as in LazyFS (so a rename not followed by an
//!   fsync of its folder survives any cut);
//! - torn or reordered writes within one sync interval: a cut keeps, per
//!   file, all or nothing of what was written since its last sync;
//! - the backing folder's own durability: it never loses power.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

/// The undo log's unit.
const PAGE: u64 = 4096;
/// How long the kernel may cache entries and attributes: every change goes
/// through this mount, so its caches stay right.
const TTL: Duration = Duration::from_secs(1);
/// The longest an unmount may wait for the kernel to let the mount go.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether this machine can mount a [`PowerCut`]: root and `/dev/fuse`.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("root (it mounts a FUSE filesystem)".into());
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("/dev/fuse ({e})"))
}

/// For the power-loss tier's tests: `true` if [`available`]; otherwise prints
/// why `test` is skipped and returns `false` — except in CI (`CI` set), where
/// a missing prerequisite fails the test unless the job turns the tier off by
/// name (`WAIAAS_POWER_LOSS_TIER=off`).
pub fn tier_ready(test: &str) -> bool {
    let turned_off = std::env::var_os("WAIAAS_POWER_LOSS_TIER").is_some_and(|v| v == "off");
    let message = match available() {
        Ok(()) if !turned_off => return true,
        Ok(()) => format!("the power-loss tier ({test}) is off (WAIAAS_POWER_LOSS_TIER=off)"),
        Err(missing) => format!("the power-loss tier ({test}) needs {missing}"),
    };
    assert!(std::env::var_os("CI").is_none() || turned_off, "{message}");
    eprintln!("SKIPPED: {message}");
    false
}

/// What a [`PowerCut::cut`] dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Each file put back to its content at its last sync, by its path in
    /// the mount (as last known) → the bytes written or truncated away since.
    pub files: BTreeMap<PathBuf, u64>,
}

impl CutReport {
    /// All the bytes the cut dropped.
    pub fn bytes(&self) -> u64 {
        self.files.values().sum()
    }
}

/// How a [`PowerCut`] behaves beyond passing through. The default is a
/// disk that flushes at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// How long each fsync, fdatasync and directory fsync takes to answer:
    /// a disk's cache flush (a consumer SSD's about 1-3 ms, an HDD's about
    /// 8 ms). Flushes overlap, as on a disk with a queue, and other
    /// operations go on meanwhile — except writes to the file being synced:
    /// the kernel's FUSE client holds the file's inode lock until the fsync
    /// answers (seen on Linux 6.18), which ext4 does not.
    pub fsync_latency: Duration,
}

/// A mounted power-loss filesystem. Dropping it unmounts it without a cut.
pub struct PowerCut {
    session: Option<BackgroundSession>,
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
}

impl PowerCut {
    /// Mounts `backing` (a folder) at `mountpoint` (an empty folder), with
    /// the default [`Options`].
    pub fn mount(backing: &Path, mountpoint: &Path) -> io::Result<Self> {
        Self::mount_with(backing, mountpoint, &Options::default())
    }

    /// Mounts `backing` (a folder) at `mountpoint` (an empty folder).
    pub fn mount_with(backing: &Path, mountpoint: &Path, options: &Options) -> io::Result<Self> {
        let root = fs::canonicalize(backing)?;
        let md = fs::metadata(&root)?;
        let state = Arc::new(Mutex::new(State {
            cut: false,
            paths: HashMap::from([(INodeNo::ROOT.0, root.clone())]),
            inodes: HashMap::from([((md.dev(), md.ino()), INodeNo::ROOT.0)]),
            next_ino: INodeNo::ROOT.0 + 1,
            handles: HashMap::new(),
            next_fh: 1,
            unsynced: HashMap::new(),
            root,
        }));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powercut".into())];
        let flusher = match options.fsync_latency {
            Duration::ZERO => None,
            latency => Some(Flusher::start(Arc::clone(&state), latency)?),
        };
        let fs = PowerCutFs {
            state: Arc::clone(&state),
            flusher,
        };
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(Self {
            session: Some(session),
            state,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    /// Makes everything written so far durable, as `sync(1)` would: for
    /// setting up what has long been on disk before the part under test.
    pub fn sync(&self) {
        lock(&self.state).unsynced.clear();
    }

    /// Loses power: every file goes back to its content at its last sync, and
    /// every later operation on the mount fails with `EIO`. The mount stays
    /// until [`PowerCut::unmount`], so that the caller can end the processes
    /// using it first.
    pub fn cut(&self) -> io::Result<CutReport> {
        let mut state = lock(&self.state);
        state.cut = true;
        state.handles.clear();
        let mut report = CutReport::default();
        for (ino, undo) in std::mem::take(&mut state.unsynced) {
            let path = state.paths.get(&ino).map_or_else(
                || PathBuf::from(format!("(inode {ino})")),
                |p| p.strip_prefix(&state.root).unwrap_or(p).to_path_buf(),
            );
            *report.files.entry(path).or_default() += undo.changed;
            undo.revert()?;
        }
        Ok(report)
    }

    /// Detaches the mount and waits, bounded, until the kernel lets it go
    /// (every process that had a file open on it has closed it or ended).
    pub fn unmount(mut self) -> io::Result<()> {
        self.detach()
    }

    fn detach(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + UNMOUNT_TIMEOUT;
        let busy = || {
            io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!(
                    "{} was still in use {UNMOUNT_TIMEOUT:?} after its unmount began",
                    self.mountpoint.display()
                ),
            )
        };
        let path = cstring(&self.mountpoint)?;
        // Not lazily: a process just killed may still hold a file for a
        // moment, and a remount must find the backing folder let go.
        // SAFETY: a NUL-terminated path.
        while let Err(e) = check(unsafe { libc::umount2(path.as_ptr(), 0) }) {
            match e.raw_os_error() {
                Some(libc::EBUSY) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Some(libc::EBUSY) => {
                    // Still failing, but never left mounted: detached, it goes
                    // once its last user does.
                    // SAFETY: a NUL-terminated path.
                    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
                    return Err(busy());
                }
                _ => return Err(e),
            }
        }
        // Unmounted: the session's loop ends, and so does its thread.
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(session.join());
        });
        let left = deadline.saturating_duration_since(Instant::now());
        wait.recv_timeout(left).map_err(|_| busy())?
    }
}

impl Drop for PowerCut {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a file was at its last sync, as far as changes since have overwritten it.
struct Undo {
    /// The file itself (a handle of its own: the file may be renamed or
    /// unlinked since).
    file: File,
    synced_len: u64,
    /// Page index → the page's bytes at the last sync (shorter at the end).
    pages: BTreeMap<u64, Vec<u8>>,
    /// Bytes written or truncated away since the sync.
    changed: u64,
}

impl Undo {
    fn open(file: File) -> io::Result<Self> {
        let synced_len = file.metadata()?.len();
        Ok(Self {
            file,
            synced_len,
            pages: BTreeMap::new(),
            changed: 0,
        })
    }

    /// Saves each page of `start..end` that existed at the sync and is not
    /// saved yet: an unsaved page still holds its synced bytes.
    fn save(&mut self, start: u64, end: u64) -> io::Result<()> {
        let end = end.min(self.synced_len);
        if start >= end {
            return Ok(());
        }
        for page in start / PAGE..=(end - 1) / PAGE {
            if self.pages.contains_key(&page) {
                continue;
            }
            let len = PAGE.min(self.synced_len - page * PAGE) as usize;
            let mut bytes = vec![0; len];
            read_full(&self.file, &mut bytes, page * PAGE)?;
            self.pages.insert(page, bytes);
        }
        Ok(())
    }

    fn revert(self) -> io::Result<()> {
        for (page, bytes) in &self.pages {
            self.file.write_all_at(bytes, page * PAGE)?;
        }
        self.file.set_len(self.synced_len)
    }
}

/// Reads up to `buf.len()` bytes at `offset`; what lies past the end stays
/// as it is. Returns how many were read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

struct State {
    /// Power is off: everything fails.
    cut: bool,
    root: PathBuf,
    /// FUSE inode → its path in the backing folder (the latest known).
    paths: HashMap<u64, PathBuf>,
    /// Backing (device, inode) → FUSE inode.
    inodes: HashMap<(u64, u64), u64>,
    next_ino: u64,
    handles: HashMap<u64, File>,
    next_fh: u64,
    /// FUSE inode → its undo log, for files changed since their last sync.
    unsynced: HashMap<u64, Undo>,
}

fn errno(e: io::Error) -> Errno {
    match e.raw_os_error() {
        Some(_) => e.into(),
        None => Errno::EIO,
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH
    }
}

fn timespec(time: Option<TimeOrNow>) -> libc::timespec {
    let (tv_sec, tv_nsec) = match time {
        None => (0, libc::UTIME_OMIT),
        Some(TimeOrNow::Now) => (0, libc::UTIME_NOW),
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            (
                d.as_secs() as libc::time_t,
                d.subsec_nanos() as libc::c_long,
            )
        }
    };
    libc::timespec { tv_sec, tv_nsec }
}

impl State {
    fn path(&self, ino: INodeNo) -> io::Result<PathBuf> {
        self.paths
            .get(&ino.0)
            .cloned()
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> io::Result<PathBuf> {
        Ok(self.path(parent)?.join(name))
    }

    fn handle(&self, fh: FileHandle) -> io::Result<&File> {
        self.handles
            .get(&fh.0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// The FUSE inode of `md`, now known to be at `path`.
    fn ino(&mut self, md: &fs::Metadata, path: PathBuf) -> u64 {
        let key = (md.dev(), md.ino());
        let ino = match self.inodes.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.inodes.insert(key, ino);
                ino
            }
        };
        self.paths.insert(ino, path);
        ino
    }

    fn attr(&mut self, path: PathBuf) -> io::Result<FileAttr> {
        let md = fs::symlink_metadata(&path)?;
        let ino = self.ino(&md, path);
        Ok(attr(ino, &md))
    }

    /// The undo log of `ino`, started now if the file is unchanged since its
    /// last sync. `file` is an open handle of it, if there is one.
    fn undo(&mut self, ino: u64, file: Option<&File>) -> io::Result<&mut Undo> {
        if !self.unsynced.contains_key(&ino) {
            // Through /proc: the very file the handle has, even if renamed.
            let path = match file {
                Some(file) => PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd())),
                None => self.path(INodeNo(ino))?,
            };
            let own = OpenOptions::new().read(true).write(true).open(path)?;
            self.unsynced.insert(ino, Undo::open(own)?);
        }
        Ok(self.unsynced.get_mut(&ino).expect("inserted above"))
    }

    /// Sets the length of `ino` (open as `file`, if it is), through its undo log.
    fn truncate(&mut self, ino: u64, file: Option<&File>, len: u64) -> io::Result<()> {
        let undo = self.undo(ino, file)?;
        let current = undo.file.metadata()?.len();
        undo.save(len, current)?;
        undo.changed += current.abs_diff(len);
        undo.file.set_len(len)
    }

    fn open_handle(&mut self, file: File) -> FileHandle {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, file);
        FileHandle(fh)
    }

    /// The backing file opened as `flags` ask, less what this layer does
    /// itself: `O_TRUNC` (through the undo log) and `O_APPEND` (the kernel
    /// passes the end as the offset; a backing `O_APPEND` would ignore it).
    fn open_backing(&mut self, ino: u64, path: &Path, flags: i32) -> io::Result<File> {
        let access = flags & libc::O_ACCMODE;
        let mut options = OpenOptions::new();
        options
            .read(access == libc::O_RDONLY || access == libc::O_RDWR)
            .write(access == libc::O_WRONLY || access == libc::O_RDWR)
            .custom_flags(
                flags
                    & !(libc::O_ACCMODE
                        | libc::O_TRUNC
                        | libc::O_APPEND
                        | libc::O_CREAT
                        | libc::O_EXCL),
            );
        let file = options.open(path)?;
        if flags & libc::O_TRUNC != 0 && access != libc::O_RDONLY {
            self.truncate(ino, Some(&file), 0)?;
        }
        Ok(file)
    }

    /// Forgets the FUSE inode of `md`, a backing file whose last name is
    /// gone: the backing filesystem reuses its number for a new file, which
    /// must not get the old file's FUSE inode (the kernel may still cache it,
    /// with another type).
    fn forget_if_gone(&mut self, md: &fs::Metadata) {
        if md.is_dir() || md.nlink() <= 1 {
            self.inodes.remove(&(md.dev(), md.ino()));
        }
    }

    fn remove(&mut self, path: &Path, op: fn(&Path) -> io::Result<()>) -> io::Result<()> {
        let md = fs::symlink_metadata(path)?;
        op(path)?;
        self.forget_if_gone(&md);
        Ok(())
    }

    fn rename(&mut self, from: PathBuf, to: PathBuf, flags: RenameFlags) -> io::Result<()> {
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let moved = fs::symlink_metadata(&from)?;
        let replaced = fs::symlink_metadata(&to)
            .ok()
            .filter(|md| !exchange && (md.dev(), md.ino()) != (moved.dev(), moved.ino()));
        let (a, b) = (cstring(&from)?, cstring(&to)?);
        // SAFETY: both are NUL-terminated paths that outlive the call.
        check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                flags.bits(),
            )
        })?;
        if let Some(md) = replaced {
            self.forget_if_gone(&md);
        }
        // (Not `join` of an empty rest: that adds a trailing `/`, which
        // readlink would follow.)
        let moved_to = |rest: &Path, base: &Path| match rest.as_os_str().is_empty() {
            true => base.to_path_buf(),
            false => base.join(rest),
        };
        for path in self.paths.values_mut() {
            if let Ok(rest) = path.strip_prefix(&from) {
                *path = moved_to(rest, &to);
            } else if exchange && let Ok(rest) = path.strip_prefix(&to) {
                *path = moved_to(rest, &from);
            }
        }
        Ok(())
    }
}

fn attr(ino: u64, md: &fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: md.len(),
        blocks: md.blocks(),
        atime: system_time(md.atime(), md.atime_nsec()),
        mtime: system_time(md.mtime(), md.mtime_nsec()),
        ctime: system_time(md.ctime(), md.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev() as u32,
        blksize: PAGE as u32,
        flags: 0,
    }
}

/// The `fuser` filesystem: every operation under the one lock, so a cut
/// falls between two operations, never inside one.
struct PowerCutFs {
    state: Arc<Mutex<State>>,
    /// Answers the syncs late, if they take time.
    flusher: Option<Flusher>,
}

/// A sync waiting for its answer.
struct Flush {
    due: Instant,
    reply: ReplyEmpty,
}

/// The thread that answers each sync once its latency has passed. `fuser`
/// runs every operation on one thread (its default `n_threads`), so a sync
/// sleeping there would stall the whole mount; its replies may be sent from
/// any thread instead. One thread for all: every sync takes the same time,
/// so they fall due in the order they came.
struct Flusher {
    latency: Duration,
    /// `None` only while dropping, which ends the thread.
    queue: Option<mpsc::Sender<Flush>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(state: Arc<Mutex<State>>, latency: Duration) -> io::Result<Self> {
        let (queue, flushes) = mpsc::channel::<Flush>();
        let thread = std::thread::Builder::new()
            .name("powercut-flush".into())
            .spawn(move || {
                for Flush { due, reply } in flushes {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    // The power went while the disk was flushing.
                    match lock(&state).cut {
                        true => reply.error(Errno::EIO),
                        false => reply.ok(),
                    }
                }
            })?;
        Ok(Self {
            latency,
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Answers `reply` once the latency has passed from now.
    fn answer(&self, reply: ReplyEmpty) {
        let flush = Flush {
            due: Instant::now() + self.latency,
            reply,
        };
        let sent = self.queue.as_ref().map(|queue| queue.send(flush));
        if let Some(Err(mpsc::SendError(flush))) = sent {
            // The thread is gone (it panicked): fail rather than hang.
            flush.reply.error(Errno::EIO);
        }
    }
}

impl Drop for Flusher {
    /// Ends the thread once it has answered what is queued (each within the
    /// latency): the session is over, so no more syncs come.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl PowerCutFs {
    /// Runs `op` on the state unless the power is off.
    fn with<T>(&self, op: impl FnOnce(&mut State) -> io::Result<T>) -> Result<T, Errno> {
        let mut state = lock(&self.state);
        if state.cut {
            return Err(Errno::EIO);
        }
        op(&mut state).map_err(errno)
    }

    /// Answers a sync that succeeded after the latency, if there is one.
    fn synced(&self, reply: ReplyEmpty, result: Result<(), Errno>) {
        match (&self.flusher, result) {
            (Some(flusher), Ok(())) => flusher.answer(reply),
            (_, result) => empty(reply, result),
        }
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

impl fuser::Filesystem for PowerCutFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(parent, name)?;
                s.attr(path)
            }),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let result = self.with(|s| match fh.map(|fh| s.handle(fh)) {
            Some(Ok(file)) => Ok(attr(ino.0, &file.metadata()?)),
            _ => Ok(attr(ino.0, &fs::symlink_metadata(s.path(ino)?)?)),
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.with(|s| {
            let path = s.path(ino)?;
            if let Some(mode) = mode {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if let Some(len) = size {
                let file = match fh {
                    Some(fh) => Some(s.handle(fh)?.try_clone()?),
                    None => None,
                };
                s.truncate(ino.0, file.as_ref(), len)?;
            }
            if atime.is_some() || mtime.is_some() {
                let times = [timespec(atime), timespec(mtime)];
                let c = cstring(&path)?;
                // SAFETY: a NUL-terminated path and two timespecs, as utimensat takes.
                check(unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                })?;
            }
            Ok(attr(ino.0, &fs::symlink_metadata(&path)?))
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|s| fs::read_link(s.path(ino)?)) {
            Ok(target) => reply.data(target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    /// Sockets and FIFOs (regular files come through `create`).
    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(parent, name)?;
                let c = cstring(&path)?;
                // SAFETY: a NUL-terminated path.
                check(unsafe {
                    libc::mknod(c.as_ptr(), mode as libc::mode_t, libc::dev_t::from(rdev))
                })?;
                s.attr(path)
            }),
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(parent, name)?;
                let c = cstring(&path)?;
                // SAFETY: a NUL-terminated path.
                check(unsafe { libc::mkdir(c.as_ptr(), mode as libc::mode_t) })?;
                s.attr(path)
            }),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with(|s| {
                let path = s.child(parent, name)?;
                s.remove(&path, |p| fs::remove_file(p))
            }),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            reply,
            self.with(|s| {
                let path = s.child(parent, name)?;
                s.remove(&path, |p| fs::remove_dir(p))
            }),
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(parent, link_name)?;
                std::os::unix::fs::symlink(target, &path)?;
                s.attr(path)
            }),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.with(|s| {
                let (from, to) = (s.child(parent, name)?, s.child(newparent, newname)?);
                s.rename(from, to, flags)
            }),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.with(|s| {
                let path = s.child(newparent, newname)?;
                fs::hard_link(s.path(ino)?, &path)?;
                // The new name becomes the inode's path: linking a temp file
                // into place, then unlinking the temp name, is common.
                s.attr(path)
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|s| {
            let path = s.path(ino)?;
            let file = s.open_backing(ino.0, &path, flags.0)?;
            Ok(s.open_handle(file))
        }) {
            Ok(fh) => reply.opened(fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.with(|s| {
            let path = s.child(parent, name)?;
            let access = flags & libc::O_ACCMODE;
            let file = OpenOptions::new()
                .read(access == libc::O_RDONLY || access == libc::O_RDWR)
                .write(access == libc::O_WRONLY || access == libc::O_RDWR)
                .create(true)
                .mode(mode)
                .custom_flags(flags & libc::O_EXCL)
                .open(&path)?;
            let attr = s.attr(path)?;
            if flags & libc::O_TRUNC != 0 && attr.size > 0 {
                s.truncate(attr.ino.0, Some(&file), 0)?;
            }
            let fh = s.open_handle(file);
            Ok((attr, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|s| {
            let mut buf = vec![0; size as usize];
            let n = read_full(s.handle(fh)?, &mut buf, offset)?;
            buf.truncate(n);
            Ok(buf)
        }) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|s| {
            let file = s.handle(fh)?.try_clone()?;
            let undo = s.undo(ino.0, Some(&file))?;
            undo.save(offset, offset + data.len() as u64)?;
            undo.changed += data.len() as u64;
            file.write_all_at(data, offset)
        }) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.with(|_| Ok(())));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        lock(&self.state).handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The sync point: what the file holds now survives a cut.
        let result = self.with(|s| {
            s.unsynced.remove(&ino.0);
            Ok(())
        });
        self.synced(reply, result);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.with(|s| {
            let dir = s.path(ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
                (ino.0, FileType::Directory, OsStr::new("..").to_owned()),
            ];
            for item in fs::read_dir(&dir)? {
                let item = item?;
                let md = item.metadata()?;
                let child = s.ino(&md, item.path());
                let kind = FileType::from_std(md.file_type()).unwrap_or(FileType::RegularFile);
                entries.push((child, kind, item.file_name()));
            }
            Ok(entries)
        });
        match result {
            Ok(entries) => {
                for (i, (child, kind, name)) in
                    entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory entries are durable at once (see the module's doc); the
        // flush still takes its time.
        let result = self.with(|_| Ok(()));
        self.synced(reply, result);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let result = self.with(|s| {
            let c = cstring(&s.root)?;
            // SAFETY: a NUL-terminated path and a zeroed statvfs to fill.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            check(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
            Ok(st)
        });
        match result {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                st.f_bsize as u32,
                st.f_namemax as u32,
                st.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
    }
}
