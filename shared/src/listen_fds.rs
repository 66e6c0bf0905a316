//! Handing a bound listening socket to a child process with systemd's
//! `LISTEN_FDS` convention (the socket at fd 3). The launcher keeps one listener
//! for its whole life and gives it to each daemon it starts, so clients wait in
//! the kernel's backlog instead of being refused while a daemon is replaced.

use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

/// The first passed descriptor, by convention.
pub const FIRST_FD: RawFd = 3;

/// Arranges for `listener` to be fd 3 in the child that `command` spawns.
pub fn pass_listener(command: &mut Command, listener: &TcpListener) {
    let fd = listener.as_raw_fd();
    // LISTEN_PID cannot be set safely between fork and exec; the daemon accepts
    // its absence, and an inherited LISTEN_PID from our own parent must not leak.
    command.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    // SAFETY: only async-signal-safe calls (dup2, fcntl) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if fd == FIRST_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, FIRST_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
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
