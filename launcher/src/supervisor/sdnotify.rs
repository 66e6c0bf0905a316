//! systemd's notify protocol: `READY=1`, `STATUS=…`, `STOPPING=1` and watchdog
//! pings on the datagram socket named by `NOTIFY_SOCKET`. Without that
//! variable every call is a no-op, so the supervisor can call it unconditionally
//! (and on macOS, which has no systemd, it always is).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// The notify socket, if systemd gave us one.
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<Duration>,
    /// The variables as systemd set them, for a launcher this one hands over to.
    env: Vec<(&'static str, String)>,
    /// `READY=1` was sent, by this process or the one that handed over.
    ready_sent: bool,
}

impl Notifier {
    /// Reads and clears `NOTIFY_SOCKET`/`WATCHDOG_*` (so the daemon we spawn
    /// does not talk to systemd on our behalf). Call before threads start.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let env = [
            (
                "NOTIFY_SOCKET",
                socket.as_ref().map(|s| s.to_string_lossy().into_owned()),
            ),
            ("WATCHDOG_USEC", usec.clone()),
            ("WATCHDOG_PID", pid.clone()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect();
        // SAFETY: called before any other thread exists.
        unsafe {
            for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
                std::env::remove_var(var);
            }
        }
        let target = socket.and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => abstract_address(name)?,
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let ours = pid.is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            // Ping at half the deadline, as sd_watchdog_enabled(3) advises.
            .map(|u| Duration::from_micros(u / 2));
        Self {
            target,
            watchdog,
            env,
            ready_sent: false,
        }
    }

    /// systemd's variables as this process received them (the same PID
    /// keeps them valid across an exec).
    pub fn env(&self) -> &[(&'static str, String)] {
        &self.env
    }

    /// Whether systemd gave us a notify socket (we run as a `Type=notify` service).
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Whether `READY=1` was sent: systemd knows the service started.
    pub fn ready_sent(&self) -> bool {
        self.ready_sent
    }

    /// The launcher that handed over sent `READY=1` already, or not.
    pub fn handed_over(&mut self, ready_sent: bool) {
        self.ready_sent = ready_sent;
    }

    /// A daemon serves: `READY=1` the first time, then `status` alone.
    pub fn serving(&mut self, status: &str) {
        if self.ready_sent {
            self.notify(status);
        } else {
            self.ready_sent = true;
            self.notify(&format!("READY=1\n{status}"));
        }
    }

    /// How often to send `WATCHDOG=1`, if systemd asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (e.g. `"READY=1\nSTATUS=serving"`); failures are ignored:
    /// systemd being gone must not take the service down.
    pub fn notify(&self, state: &str) {
        if let Some((socket, addr)) = &self.target {
            let _ = socket.send_to_addr(state.as_bytes(), addr);
        }
    }
}

/// An abstract socket address (`@name`): Linux only, as systemd is.
#[cfg(target_os = "linux")]
fn abstract_address(name: &str) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()
}

#[cfg(not(target_os = "linux"))]
fn abstract_address(_name: &str) -> Option<std::os::unix::net::SocketAddr> {
    None
}
