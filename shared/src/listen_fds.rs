//! Handing a bound listening socket to a child process with systemd's
//! `LISTEN_FDS` convention (the socket at fd 3). The launcher keeps one listener
//! for its whole life and gives it to each daemon it starts, so clients wait in
//! the kernel's backlog instead of being refused while a daemon is replaced.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first passed descriptor, by convention.
pub const FIRST_FD: RawFd = 3;

/// Arranges for `listener` to be fd 3 in the child that `command` spawns.
pub fn pass_listener(command: &mut Command, listener: &TcpListener) {
    pass(command, &[listener.as_raw_fd()]);
}

/// Places `fds` at 3, 4, … in the child, in order, and announces the first
/// as a listener (`LISTEN_FDS=1`); the others are for the caller to name.
pub fn pass(command: &mut Command, fds: &[RawFd]) {
    let fds: Vec<RawFd> = fds.to_vec();
    // LISTEN_PID cannot be set safely between fork and exec; the daemon accepts
    // its absence, and an inherited LISTEN_PID from our own parent must not leak.
    command.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close) run between fork
    // and exec, and the vector was allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // Duplicate every source above the target range first, so placing
            // one descriptor can never clobber another that is still to be placed.
            let above = FIRST_FD + fds.len() as RawFd;
            let mut moved = [0 as RawFd; 8];
            if fds.len() > moved.len() {
                return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
            }
            for (slot, &fd) in moved.iter_mut().zip(&fds) {
                *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above);
                if *slot < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in moved[..fds.len()].iter().enumerate() {
                // dup2 clears close-on-exec on the target: it survives the exec.
                if libc::dup2(fd, FIRST_FD + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
            close_on_exec_from(above);
            Ok(())
        });
    }
}

/// Marks every descriptor from `first` up close-on-exec, so nothing the
/// launcher inherited (a descriptor its own parent leaked) reaches the
/// daemon. Marked, not closed: the spawner's own error pipe must live until
/// the exec. Async-signal-safe (called between fork and exec).
fn close_on_exec_from(first: RawFd) {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range(2) only changes descriptor flags.
        let done = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        } == 0;
        if done {
            return;
        }
    }
    // Older kernels and other systems: one fcntl per possible descriptor.
    // SAFETY: sysconf and fcntl are async-signal-safe; fcntl on a closed
    // descriptor fails harmlessly.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(0, 1 << 16) as RawFd;
    for fd in first..max {
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// Hands `listener` over `channel` (`SCM_RIGHTS`, with one byte of data):
/// how a daemon started on probation gets the public listener once its
/// upgrade is committed, and not a moment before (SPEC §13).
pub fn send_listener(channel: &UnixStream, listener: &TcpListener) -> std::io::Result<()> {
    let fd = listener.as_raw_fd();
    let mut byte = [b'L'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // u64s: the control buffer must be aligned for a cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_* compute sizes and pointers inside `control`, which is
    // large enough for one descriptor (CMSG_SPACE(4) is 24 bytes on Linux);
    // sendmsg only reads the message.
    let sent = unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        debug_assert!(space <= std::mem::size_of_val(&control));
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(channel.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    match sent {
        1 => Ok(()),
        n if n < 0 => Err(std::io::Error::last_os_error()),
        _ => Err(std::io::Error::other(
            "the listener's message was not sent whole",
        )),
    }
}

/// Receives a listener [`send_listener`] handed over `channel`: `Ok(None)`
/// when the other end closed without one; `WouldBlock` on a non-blocking
/// channel with nothing yet. The descriptor arrives close-on-exec.
pub fn recv_listener(channel: &UnixStream) -> std::io::Result<Option<TcpListener>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    // SAFETY: recvmsg writes at most `msg_controllen` bytes into `control`
    // and one byte into `byte`; the cmsg walk stays inside what it wrote.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(channel.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(std::io::Error::other(
                "the launcher's message carried no listener",
            ));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(Some(TcpListener::from_raw_fd(fd)))
    }
}

/// Why an inherited listener could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("LISTEN_FDS={0:?} is not a count of descriptors")]
    BadCount(String),
    #[error("LISTEN_FDS names fd {FIRST_FD}, but it is not a listening TCP socket")]
    NotASocket,
}

/// The listener passed at fd 3, if `LISTEN_FDS` says there is one for this
/// process (`LISTEN_PID`, when present, must be our pid). The descriptor is
/// marked close-on-exec so it does not leak into our own children.
///
/// Call this before any thread is started: it clears the variables.
pub fn take_listener() -> Result<Option<TcpListener>, InheritError> {
    let count = std::env::var("LISTEN_FDS").ok();
    let pid = std::env::var("LISTEN_PID").ok();
    // SAFETY: documented precondition: no other thread exists yet.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    let Some(count) = count else { return Ok(None) };
    if let Some(pid) = pid
        && pid.trim() != std::process::id().to_string()
    {
        return Ok(None);
    }
    match count.trim().parse::<u32>() {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(_) => return Err(InheritError::BadCount(count)),
    }
    // SAFETY: fstat/getsockopt/fcntl on a descriptor number only inspect it.
    let is_listening_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let mut accepting: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::fstat(FIRST_FD, &mut st) == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
            && libc::getsockopt(
                FIRST_FD,
                libc::SOL_SOCKET,
                libc::SO_ACCEPTCONN,
                (&mut accepting as *mut libc::c_int).cast(),
                &mut len,
            ) == 0
            && accepting == 1
    };
    if !is_listening_socket {
        return Err(InheritError::NotASocket);
    }
    // SAFETY: fd 3 is an open listening socket handed to us and owned by nobody else.
    let listener = unsafe {
        libc::fcntl(FIRST_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        TcpListener::from_raw_fd(FIRST_FD)
    };
    Ok(Some(listener))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_listener_handed_over_a_socketpair_accepts_what_queued_before() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // A client queued in the backlog before the hand-over is answered after it.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"hi").unwrap();
        send_listener(&ours, &listener).unwrap();
        drop(listener);
        let received = recv_listener(&theirs).unwrap().expect("a listener");
        assert_eq!(received.local_addr().unwrap(), addr);
        let (mut accepted, _) = received.accept().unwrap();
        let mut got = [0u8; 2];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        // SAFETY: F_GETFD only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(received.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }

    #[test]
    fn a_channel_closed_without_a_listener_is_none_and_data_alone_is_an_error() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (&ours).write_all(b"x").unwrap();
        assert!(recv_listener(&theirs).is_err());
        drop(ours);
        assert!(recv_listener(&theirs).unwrap().is_none());
        let (ours, theirs) = UnixStream::pair().unwrap();
        theirs.set_nonblocking(true).unwrap();
        let e = recv_listener(&theirs).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        drop(ours);
    }
}
