//! Where automatic upgrades read the time: the system's clock and zone, or,
//! in tests, a clock that moves only when told.

use std::sync::Mutex;

use jiff::Timestamp;
use jiff::tz::TimeZone;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// The zone of a window that names none.
    fn zone(&self) -> TimeZone;
}

/// The system's clock, and its zone (`TZ`, else `/etc/localtime`, else UTC).
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn zone(&self) -> TimeZone {
        TimeZone::try_system().unwrap_or(TimeZone::UTC)
    }
}

/// A clock that stands still until [`FakeClock::set`] or
/// [`FakeClock::advance`]; also usable from integration tests.
pub struct FakeClock {
    now: Mutex<Timestamp>,
    zone: TimeZone,
}

impl FakeClock {
    pub fn at(now: Timestamp, zone: TimeZone) -> Self {
        Self {
            now: Mutex::new(now),
            zone,
        }
    }

    pub fn set(&self, now: Timestamp) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = now;
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now = now.checked_add(by).unwrap_or(Timestamp::MAX);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn zone(&self) -> TimeZone {
        self.zone.clone()
    }
}
