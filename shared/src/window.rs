//! `[update] window`: when automatic upgrades may start (SPEC §13). Part of
//! the configuration contract, so both processes validate it the same way.
//!
//! Forms, several joined by `;`:
//! - `always`;
//! - `<days> HH:MM-HH:MM [ZONE]`: days as a range (`Mon..Fri`, wrapping
//!   `Fri..Mon`), a list (`Sat,Sun`), a mix (`Mon,Wed..Fri`), or `*` /
//!   `daily`; a range whose end is not after its start crosses midnight
//!   (`22:00-02:00` starts on the named day, ends the next). ZONE is an IANA
//!   name (`UTC`, `Europe/Berlin`); without one, the machine's local time.
//!
//! Times are wall-clock times in the zone, resolved the way `jiff`'s
//! "compatible" disambiguation does (RFC 5545): a time skipped by a DST
//! change is moved forward by the gap (so on the spring-forward day,
//! `02:00-04:00` in Europe/Berlin opens at 03:00 and is one hour long), and
//! a repeated time means its first occurrence (on the fall-back day the
//! same window opens at the first 02:00 and lasts three hours).
//!
//! Zones come from the system's tz database when it has one, else from the
//! copy built in (`tzdb-bundle-always`): a minimal host without
//! `/usr/share/zoneinfo` still understands a named zone, and a host that
//! has one gets its updates.

use std::fmt;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed window; compares and prints as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    text: String,
    ranges: Vec<Range>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    /// Monday first.
    days: [bool; 7],
    start: (i8, i8),
    end: (i8, i8),
    /// An IANA name, checked when parsed; `None` is local time.
    zone: Option<String>,
}

/// One stretch of time the window is open: `start` (at or before `now` if
/// it is open now) to `end` (`None` for `always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

/// Why a window was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("is empty")]
    Empty,
    #[error("`{0}` is not `<days> HH:MM-HH:MM [ZONE]`")]
    Shape(String),
    #[error("`{0}` is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun, a range Mon..Fri, or *)")]
    Day(String),
    #[error("`{0}` is not a time range HH:MM-HH:MM (00:00 to 23:59)")]
    Times(String),
    #[error("`{0}` opens and closes at the same time")]
    Zero(String),
    #[error("`{0}` is not a known time zone (an IANA name such as UTC or Europe/Berlin)")]
    Zone(String),
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Window {
    pub fn always() -> Window {
        Window {
            text: "always".into(),
            ranges: Vec::new(),
        }
    }

    pub fn is_always(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(WindowError::Empty);
        }
        if trimmed.eq_ignore_ascii_case("always") {
            return Ok(Window::always());
        }
        let ranges = trimmed
            .split(';')
            .map(|part| parse_range(part.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Window {
            text: trimmed.to_string(),
            ranges,
        })
    }

    /// The opening that contains `now`, or else the next one. `local` is
    /// the zone of a range that names none.
    pub fn opening(&self, now: Timestamp, local: &TimeZone) -> Opening {
        let mut open_now: Option<Opening> = None;
        let mut next: Option<Opening> = None;
        for range in &self.ranges {
            for o in range.openings_around(now, local) {
                if o.start <= now && o.end.is_none_or(|e| now < e) {
                    // Open now: the one that stays open longest.
                    if open_now.is_none_or(|c| o.end > c.end) {
                        open_now = Some(o);
                    }
                } else if o.start > now && next.is_none_or(|c| o.start < c.start) {
                    next = Some(o);
                }
            }
        }
        open_now.or(next).unwrap_or(Opening {
            start: now,
            end: None,
        })
    }
}

impl Default for Window {
    fn default() -> Self {
        Window::always()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Range {
    fn zone(&self, local: &TimeZone) -> TimeZone {
        match &self.zone {
            // Checked when parsed; the database cannot lose it meanwhile
            // short of a broken installation, where UTC is the safe reading.
            Some(name) => TimeZone::get(name).unwrap_or(TimeZone::UTC),
            None => local.clone(),
        }
    }

    /// The openings that start from the day before `now` to a week after.
    fn openings_around(&self, now: Timestamp, local: &TimeZone) -> Vec<Opening> {
        let zone = self.zone(local);
        let today = now.to_zoned_datetime(zone.clone()).date();
        let crosses = self.end <= self.start;
        (-1i64..=8)
            .filter_map(|offset| {
                let date = today.checked_add(offset.days()).ok()?;
                if !self.days[weekday_index(date.weekday())] {
                    return None;
                }
                let end_date = if crosses {
                    date.checked_add(1.day()).ok()?
                } else {
                    date
                };
                let start = instant(date, self.start, &zone)?;
                let end = instant(end_date, self.end, &zone)?;
                (end > start).then_some(Opening {
                    start,
                    end: Some(end),
                })
            })
            .collect()
    }
}

fn instant(date: Date, (h, m): (i8, i8), zone: &TimeZone) -> Option<Timestamp> {
    let time = Time::new(h, m, 0, 0).ok()?;
    zone.to_ambiguous_timestamp(date.to_datetime(time))
        .compatible()
        .ok()
}

fn weekday_index(day: Weekday) -> usize {
    day.to_monday_zero_offset() as usize
}

fn parse_range(text: &str) -> Result<Range, WindowError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (days, times, zone) = match words.as_slice() {
        [days, times] => (*days, *times, None),
        [days, times, zone] => (*days, *times, Some(*zone)),
        _ => return Err(WindowError::Shape(text.to_string())),
    };
    let days = parse_days(days)?;
    let (start, end) = times
        .split_once('-')
        .and_then(|(a, b)| Some((parse_time(a)?, parse_time(b)?)))
        .ok_or_else(|| WindowError::Times(times.to_string()))?;
    if start == end {
        return Err(WindowError::Zero(times.to_string()));
    }
    let zone = match zone {
        None => None,
        Some(name) => {
            TimeZone::get(name).map_err(|_| WindowError::Zone(name.to_string()))?;
            Some(name.to_string())
        }
    };
    Ok(Range {
        days,
        start,
        end,
        zone,
    })
}

fn parse_days(text: &str) -> Result<[bool; 7], WindowError> {
    let mut days = [false; 7];
    if text == "*" || text.eq_ignore_ascii_case("daily") {
        return Ok([true; 7]);
    }
    let day = |name: &str| {
        DAYS.iter()
            .position(|d| d.eq_ignore_ascii_case(name))
            .ok_or_else(|| WindowError::Day(name.to_string()))
    };
    for item in text.split(',') {
        match item.split_once("..") {
            Some((from, to)) => {
                let (from, to) = (day(from)?, day(to)?);
                let mut d = from;
                loop {
                    days[d] = true;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(item)?] = true,
        }
    }
    Ok(days)
}

fn parse_time(text: &str) -> Option<(i8, i8)> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some((h, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn opening(window: &str, now: &str, local: &TimeZone) -> (String, Option<String>) {
        let o = Window::parse(window).unwrap().opening(ts(now), local);
        (o.start.to_string(), o.end.map(|e| e.to_string()))
    }

    fn pair(start: &str, end: &str) -> (String, Option<String>) {
        (start.to_string(), Some(end.to_string()))
    }

    #[test]
    fn always_is_open_from_now_without_end() {
        let w = Window::parse("always").unwrap();
        assert!(w.is_always());
        let now = ts("2026-12-06T10:00:00Z");
        assert_eq!(
            w.opening(now, &TimeZone::UTC),
            Opening {
                start: now,
                end: None
            }
        );
        assert_eq!(Window::parse(" ALWAYS ").unwrap(), Window::always());
    }

    #[test]
    fn a_weekday_range_in_utc() {
        let w = "Mon..Fri 02:00-04:00 UTC";
        // 2026-12-05 is a Saturday: next is Monday 02:00.
        assert_eq!(
            opening(w, "2026-12-05T12:00:00Z", &TimeZone::UTC),
            pair("2026-12-07T02:00:00Z", "2026-12-07T04:00:00Z")
        );
        // Inside Tuesday's opening: it, with its start in the past.
        assert_eq!(
            opening(w, "2026-12-08T03:30:00Z", &TimeZone::UTC),
            pair("2026-12-08T02:00:00Z", "2026-12-08T04:00:00Z")
        );
        // At its end exactly: the next day's.
        assert_eq!(
            opening(w, "2026-12-08T04:00:00Z", &TimeZone::UTC),
            pair("2026-12-09T02:00:00Z", "2026-12-09T04:00:00Z")
        );
        // Friday after the window: Monday.
        assert_eq!(
            opening(w, "2026-12-11T05:00:00Z", &TimeZone::UTC),
            pair("2026-12-14T02:00:00Z", "2026-12-14T04:00:00Z")
        );
    }

    #[test]
    fn lists_wraps_mixes_and_every_day() {
        let utc = TimeZone::UTC;
        // Saturday noon, "Sat,Sun": open now.
        assert_eq!(
            opening("Sat,Sun 01:00-23:00 UTC", "2026-12-05T12:00:00Z", &utc),
            pair("2026-12-05T01:00:00Z", "2026-12-05T23:00:00Z")
        );
        // A wrapping range Fri..Mon on a Wednesday: Friday.
        assert_eq!(
            opening("Fri..Mon 10:00-11:00 UTC", "2026-12-09T12:00:00Z", &utc),
            pair("2026-12-11T10:00:00Z", "2026-12-11T11:00:00Z")
        );
        // Fri..Mon on a Monday morning: that Monday.
        assert_eq!(
            opening("fri..mon 10:00-11:00 UTC", "2026-12-07T09:00:00Z", &utc),
            pair("2026-12-07T10:00:00Z", "2026-12-07T11:00:00Z")
        );
        // A mix: Mon,Wed..Fri on a Tuesday: Wednesday.
        assert_eq!(
            opening("Mon,Wed..Fri 10:00-11:00 UTC", "2026-12-08T12:00:00Z", &utc),
            pair("2026-12-09T10:00:00Z", "2026-12-09T11:00:00Z")
        );
        for every in ["* 10:00-11:00 UTC", "daily 10:00-11:00 UTC"] {
            assert_eq!(
                opening(every, "2026-12-08T12:00:00Z", &utc),
                pair("2026-12-09T10:00:00Z", "2026-12-09T11:00:00Z")
            );
        }
        // Several windows joined by `;`: the nearest.
        assert_eq!(
            opening(
                "Mon 10:00-11:00 UTC; Wed 08:00-09:00 UTC",
                "2026-12-08T12:00:00Z",
                &utc
            ),
            pair("2026-12-09T08:00:00Z", "2026-12-09T09:00:00Z")
        );
    }

    #[test]
    fn a_range_crossing_midnight_starts_on_the_named_day() {
        let utc = TimeZone::UTC;
        // Friday 22:00 to Saturday 02:00; at Saturday 01:00 it is open.
        assert_eq!(
            opening("Fri 22:00-02:00 UTC", "2026-12-12T01:00:00Z", &utc),
            pair("2026-12-11T22:00:00Z", "2026-12-12T02:00:00Z")
        );
        // Saturday 03:00: next Friday.
        assert_eq!(
            opening("Fri 22:00-02:00 UTC", "2026-12-12T03:00:00Z", &utc),
            pair("2026-12-18T22:00:00Z", "2026-12-19T02:00:00Z")
        );
    }

    #[test]
    fn local_time_unless_a_zone_is_named() {
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        // 02:00 local in Tokyo is 17:00 UTC the day before.
        assert_eq!(
            opening("* 02:00-04:00", "2026-12-08T12:00:00Z", &tokyo),
            pair("2026-12-08T17:00:00Z", "2026-12-08T19:00:00Z")
        );
        // A named zone wins over local time.
        assert_eq!(
            opening("* 02:00-04:00 UTC", "2026-12-08T12:00:00Z", &tokyo),
            pair("2026-12-09T02:00:00Z", "2026-12-09T04:00:00Z")
        );
    }

    #[test]
    fn dst_changes_in_a_named_zone() {
        let utc = TimeZone::UTC;
        // Europe/Berlin springs forward on 2026-03-29 at 02:00 (to 03:00):
        // 02:00-04:00 opens at 03:00 CEST (01:00 UTC), one hour long.
        assert_eq!(
            opening("* 02:00-04:00 Europe/Berlin", "2026-03-28T23:30:00Z", &utc),
            pair("2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z")
        );
        // The day before: 01:00-03:00 UTC (CET), two hours.
        assert_eq!(
            opening("* 02:00-04:00 Europe/Berlin", "2026-03-27T23:30:00Z", &utc),
            pair("2026-03-28T01:00:00Z", "2026-03-28T03:00:00Z")
        );
        // It falls back on 2026-10-25 at 03:00 (to 02:00): the first 02:00
        // is 00:00 UTC, 04:00 CET is 03:00 UTC: three hours.
        assert_eq!(
            opening("* 02:00-04:00 Europe/Berlin", "2026-10-24T23:00:00Z", &utc),
            pair("2026-10-25T00:00:00Z", "2026-10-25T03:00:00Z")
        );
        // New York springs forward on 2026-03-08 at 02:00: 02:30 does not
        // exist and becomes 03:30 EDT (07:30 UTC).
        assert_eq!(
            opening(
                "Sun 02:30-05:00 America/New_York",
                "2026-03-08T00:00:00Z",
                &utc
            ),
            pair("2026-03-08T07:30:00Z", "2026-03-08T09:00:00Z")
        );
    }

    #[test]
    fn malformed_windows_say_what_is_wrong() {
        let cases = [
            ("", WindowError::Empty),
            ("Mon", WindowError::Shape("Mon".into())),
            (
                "Mon 02:00-04:00 UTC extra",
                WindowError::Shape("Mon 02:00-04:00 UTC extra".into()),
            ),
            ("Mun 02:00-04:00", WindowError::Day("Mun".into())),
            ("Mon..Fry 02:00-04:00", WindowError::Day("Fry".into())),
            ("Mon 2:00-04:00", WindowError::Times("2:00-04:00".into())),
            ("Mon 24:00-04:00", WindowError::Times("24:00-04:00".into())),
            ("Mon 02:00", WindowError::Times("02:00".into())),
            ("Mon 02:00-02:00", WindowError::Zero("02:00-02:00".into())),
            (
                "Mon 02:00-04:00 Mars/Olympus",
                WindowError::Zone("Mars/Olympus".into()),
            ),
            ("Mon 02:00-04:00; ", WindowError::Shape("".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(Window::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn it_prints_as_written() {
        let text = "Mon..Fri 02:00-04:00 Europe/Berlin";
        assert_eq!(Window::parse(text).unwrap().to_string(), text);
    }
}
