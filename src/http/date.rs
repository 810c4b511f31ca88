//! The `Date` header, formatted once a second per loop (each loop owns its
//! cache, so there is nothing to share and no race).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// IMF-fixdate of the current second, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`,
/// and the start of a `200 OK` response with it, written in one copy.
#[derive(Debug)]
pub(crate) struct DateCache {
    secs: u64,
    /// When, on the monotonic clock, the second of `secs` is over (see
    /// `refresh_at`).
    next_second: Option<Instant>,
    text: [u8; 29],
    preamble_200: [u8; PREAMBLE_200_LEN],
}

const PREAMBLE_200_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: vigil\r\nDate: ";
const PREAMBLE_200_TAIL: &[u8] = b"\r\nContent-Length: ";
const PREAMBLE_200_LEN: usize = PREAMBLE_200_HEAD.len() + 29 + PREAMBLE_200_TAIL.len();

/// 9999-12-31T23:59:59Z: the last second whose year fits the fixed four digits.
const MAX_SECS: u64 = 253_402_300_799;

const DAY_NAMES: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
const MONTH_NAMES: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

impl DateCache {
    pub(crate) fn new() -> DateCache {
        let mut cache = DateCache {
            secs: u64::MAX,
            next_second: None,
            text: [b' '; 29],
            preamble_200: [b' '; PREAMBLE_200_LEN],
        };
        cache.refresh(SystemTime::now());
        cache
    }

    /// Re-formats when `now` is in a later second than the cached text.
    ///
    /// Any other second (a clock stepped backwards) re-formats too, so the
    /// header always names the clock's current second. Times before 1970
    /// are shown as the epoch.
    pub(crate) fn refresh(&mut self, now: SystemTime) {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).min(MAX_SECS);
        if secs != self.secs {
            self.secs = secs;
            self.text = format_imf_fixdate(secs);
            let (head, rest) = self.preamble_200.split_at_mut(PREAMBLE_200_HEAD.len());
            let (date, tail) = rest.split_at_mut(29);
            head.copy_from_slice(PREAMBLE_200_HEAD);
            date.copy_from_slice(&self.text);
            tail.copy_from_slice(PREAMBLE_200_TAIL);
        }
    }

    /// Refreshes from the wall clock only once the second last read may be
    /// over, `now` being a monotonic reading a loop has taken anyway: most
    /// wake-ups then read no clock for the date. Measured (make
    /// bench-instructions): 75 fewer instructions per keep-alive request.
    /// A step of the wall clock shows within a second.
    pub(crate) fn refresh_at(&mut self, now: Instant) {
        if self.next_second.is_some_and(|next| now < next) {
            return;
        }
        let wall = SystemTime::now();
        self.refresh(wall);
        let into_second = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        self.next_second = Some(now + Duration::from_nanos(u64::from(1_000_000_000 - into_second)));
    }

    /// The second the date text stands for: equal seconds, equal text.
    pub(crate) fn secs(&self) -> u64 {
        self.secs
    }

    /// The 29 bytes of the current date.
    pub(crate) fn bytes(&self) -> &[u8; 29] {
        &self.text
    }

    /// `HTTP/1.1 200 OK`, `Server`, `Date` and the name of
    /// `Content-Length`, up to its value: most responses start so, and one
    /// copy of it costs less than four (about 100 instructions a response).
    pub(crate) fn preamble_200(&self) -> &[u8] {
        &self.preamble_200
    }
}

/// Formats `secs` since the Unix epoch (at most [`MAX_SECS`]) as IMF-fixdate.
pub(crate) fn format_imf_fixdate(secs: u64) -> [u8; 29] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 4 with Sunday = 0).
    let weekday = ((days + 4) % 7) as usize;

    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAY_NAMES[weekday]);
    two_digits(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTH_NAMES[(month - 1) as usize]);
    two_digits(&mut out[12..14], year / 100);
    two_digits(&mut out[14..16], year % 100);
    two_digits(&mut out[17..19], (rem / 3600) as u32);
    two_digits(&mut out[20..22], (rem / 60 % 60) as u32);
    two_digits(&mut out[23..25], (rem % 60) as u32);
    out
}

fn two_digits(out: &mut [u8], n: u32) {
    out[0] = b'0' + (n / 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31) in the proleptic
/// Gregorian calendar: Howard Hinnant's `civil_from_days`, for unsigned days.
/// Eras are 400-year cycles counted from 0000-03-01, so leap days fall at
/// the end of each era-year.
pub(crate) fn civil_from_days(days: u64) -> (u32, u32, u32) {
    // 719_468 days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1, [0, 365]
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year as u32, month as u32, day as u32)
}

/// Seconds since the Unix epoch of an IMF-fixdate (`Sun, 06 Nov 1994
/// 08:49:37 GMT`), the form RFC 9110 has senders use; `None` for anything
/// else (the obsolete forms included: a condition that cannot be read is
/// one not given).
pub(crate) fn parse_imf_fixdate(text: &[u8]) -> Option<u64> {
    if text.len() != 29 || &text[3..5] != b", " || &text[25..] != b" GMT" {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = &text[range];
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let day = number(5..7)?;
    let month = MONTH_NAMES.iter().position(|name| name[..] == text[8..11])? as u64 + 1;
    let year = number(12..16)?;
    let (hour, minute, second) = (number(17..19)?, number(20..22)?, number(23..25)?);
    if text[7] != b' '
        || text[11] != b' '
        || text[16] != b' '
        || text[19] != b':'
        || text[22] != b':'
    {
        return None;
    }
    if year < 1970 || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// The inverse of [`civil_from_days`] (Hinnant's `days_from_civil`), for
/// dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_loop_reads_the_wall_clock_once_per_second() {
        let mut date = DateCache::new();
        let start = Instant::now();
        date.refresh_at(start);
        let next = date.next_second.expect("a second boundary");
        assert!(next > start && next <= start + Duration::from_secs(1), "{next:?} vs {start:?}");
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(date.secs() + 1 >= wall && date.secs() <= wall);
        // Before the boundary nothing is read; at it, the boundary moves on.
        date.refresh_at(next - Duration::from_nanos(1));
        assert_eq!(date.next_second, Some(next));
        let later = next + Duration::from_millis(1);
        date.refresh_at(later);
        assert!(date.next_second.unwrap() > later);
    }

    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> String {
        let mut cache = DateCache::new();
        cache.refresh(UNIX_EPOCH + Duration::from_secs(secs));
        String::from_utf8(cache.bytes().to_vec()).unwrap()
    }

    #[test]
    fn known_dates() {
        let table: &[(u64, &str)] = &[
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"), // leap day of a /400 year
            (1_709_164_799, "Wed, 28 Feb 2024 23:59:59 GMT"),
            (1_709_164_800, "Thu, 29 Feb 2024 00:00:00 GMT"),
            (1_709_251_200, "Fri, 01 Mar 2024 00:00:00 GMT"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"), // 2100 is not leap
            (1_704_067_199, "Sun, 31 Dec 2023 23:59:59 GMT"),
            (MAX_SECS, "Fri, 31 Dec 9999 23:59:59 GMT"),
            (u64::MAX / 2, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for &(secs, want) in table {
            assert_eq!(at(secs), want, "secs = {secs}");
        }
    }

    #[test]
    fn before_epoch_is_epoch() {
        let mut cache = DateCache::new();
        cache.refresh(UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(cache.bytes(), b"Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn refresh_only_when_second_changes() {
        let mut cache = DateCache::new();
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        cache.refresh(t);
        // Scribble on the text: a refresh within the same second must keep it.
        cache.text[0] = b'X';
        cache.refresh(t + Duration::from_millis(999));
        assert_eq!(cache.bytes()[0], b'X');
        cache.refresh(t + Duration::from_secs(1));
        assert_eq!(cache.bytes(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }

    #[test]
    fn fixdates_parse_back_to_their_seconds() {
        for secs in [0, 784_111_777, 951_782_400, 4_102_444_799] {
            assert_eq!(parse_imf_fixdate(&format_imf_fixdate(secs)), Some(secs), "{secs}");
        }
        assert_eq!(parse_imf_fixdate(b"Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_imf_fixdate(b"Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(parse_imf_fixdate(b"Sun, 06 Xyz 1994 08:49:37 GMT"), None);
    }

    #[test]
    fn every_day_round_trips() {
        // Walk 1970..2400 day by day: dates must advance by exactly one day.
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..(430 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "days = {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
            d += 1;
            if d > len[(m - 1) as usize] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
