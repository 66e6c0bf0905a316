//! UTC timestamps in the two forms the data dir uses: compact for folder names
//! (`20261126T062009Z`) and RFC 3339 with milliseconds inside `backup.json`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A UTC instant with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UtcTime {
    unix_ms: u64,
}

impl UtcTime {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self::from_unix_ms(since.as_millis() as u64)
    }

    pub fn from_unix_ms(unix_ms: u64) -> Self {
        Self { unix_ms }
    }

    pub fn unix_ms(self) -> u64 {
        self.unix_ms
    }

    pub fn unix_seconds(self) -> u64 {
        self.unix_ms / 1000
    }

    fn parts(self) -> (i64, u32, u32, u64, u64, u64, u64) {
        let secs = self.unix_ms / 1000;
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        (
            y,
            m,
            d,
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            self.unix_ms % 1000,
        )
    }

    /// `yyyymmddThhmmssZ`.
    pub fn compact(self) -> String {
        let (y, mo, d, h, mi, s, _) = self.parts();
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
    }

    /// `yyyy-mm-ddThh:mm:ss.mmmZ`.
    pub fn rfc3339(self) -> String {
        let (y, mo, d, h, mi, s, ms) = self.parts();
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }

    /// Parses what [`rfc3339`](Self::rfc3339) writes (milliseconds optional).
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let text = text.strip_suffix('Z')?;
        let (date, time) = text.split_once('T')?;
        let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
        let (y, mo, d) = (date.next()??, date.next()??, date.next()??);
        let (hms, ms) = match time.split_once('.') {
            Some((hms, frac)) if frac.len() == 3 => (hms, frac.parse::<u64>().ok()?),
            Some(_) => return None,
            None => (time, 0),
        };
        let mut hms = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
        let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
            return None;
        }
        let days = u64::try_from(days_from_civil(y, mo as u32, d as u32)).ok()?;
        Some(Self::from_unix_ms(
            ((days * 86_400) + h * 3600 + mi * 60 + s) * 1000 + ms,
        ))
    }
}

// Howard Hinnant's civil calendar algorithms (public domain).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_known_instant() {
        let t = UtcTime::from_unix_ms(1_739_750_400_123);
        assert_eq!(t.rfc3339(), "2025-02-17T00:00:00.123Z");
        assert_eq!(t.compact(), "20250217T000000Z");
        assert_eq!(t.unix_seconds(), 1_739_750_400);
    }

    #[test]
    fn round_trips_and_rejects_garbage() {
        for ms in [0, 951_782_400_999, 1_739_750_400_123, 4_102_444_800_000] {
            let t = UtcTime::from_unix_ms(ms);
            assert_eq!(UtcTime::parse_rfc3339(&t.rfc3339()), Some(t));
        }
        assert_eq!(
            UtcTime::parse_rfc3339("2025-02-17T00:00:00Z"),
            Some(UtcTime::from_unix_ms(1_739_750_400_000))
        );
        for bad in [
            "",
            "2025-02-17",
            "2025-13-01T00:00:00Z",
            "2025-02-17T00:00:00.1Z",
            "x",
        ] {
            assert_eq!(UtcTime::parse_rfc3339(bad), None, "{bad}");
        }
    }
}
