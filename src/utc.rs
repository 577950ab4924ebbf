//! UTC calendar arithmetic without a date-time crate: Unix seconds to and from the civil date
//! (Howard Hinnant's `civil_from_days` / `days_from_civil`), and RFC 3339 as the API server,
//! AWS and the flow log write it. Proleptic Gregorian calendar, no leap seconds.

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Civil {
    /// The date and time of a Unix time.
    pub fn from_unix(seconds: i64) -> Civil {
        let (days, rest) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Civil {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: (rest / 3600) as u32,
            minute: (rest % 3600 / 60) as u32,
            second: (rest % 60) as u32,
        }
    }

    /// The Unix time of this date and time.
    pub fn to_unix(self) -> i64 {
        let (month, day) = (i64::from(self.month), i64::from(self.day));
        let y = if month <= 2 { self.year - 1 } else { self.year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// `YYYY-MM-DDTHH:MM:SS` (without fraction or zone).
    pub fn date_time(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// The Unix time of an RFC 3339 timestamp (`2024-05-01T12:00:00Z`, with or without a
/// fraction, which is ignored, and with `Z` or a numeric offset such as `+02:00`).
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| digits(text.get(range)?);
    let civil = Civil {
        year: i64::from(number(0..4)?),
        month: number(5..7)?,
        day: number(8..10)?,
        hour: number(11..13)?,
        minute: number(14..16)?,
        second: number(17..19)?,
    };
    if !(1..=12).contains(&civil.month)
        || !(1..=31).contains(&civil.day)
        || civil.hour > 23
        || civil.minute > 59
        || civil.second > 60
    {
        return None;
    }
    let mut seconds = civil.to_unix();
    let zone = text.get(19..)?;
    let zone = match zone.strip_prefix('.') {
        Some(fraction) => {
            let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return None;
            }
            &fraction[digits..]
        }
        None => zone,
    };
    match zone.as_bytes() {
        b"Z" | b"z" => {}
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let offset =
                i64::from(digits(&zone[1..3])?) * 3600 + i64::from(digits(&zone[4..6])?) * 60;
            seconds -= if *sign == b'+' { offset } else { -offset };
        }
        _ => return None,
    }
    Some(seconds)
}

/// A run of ASCII digits as a number (no sign, no spaces).
fn digits(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_convert_both_ways() {
        for (seconds, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (951_868_801, "2000-03-01T00:00:01"),
            (1_714_564_800, "2024-05-01T12:00:00"),
            (1_798_761_599, "2026-12-31T23:59:59"),
            (4_107_542_400, "2100-03-01T00:00:00"),
            (-86_400, "1969-12-31T00:00:00"),
        ] {
            let civil = Civil::from_unix(seconds);
            assert_eq!(civil.date_time(), text);
            assert_eq!(civil.to_unix(), seconds, "{text}");
            assert_eq!(parse_rfc3339(&format!("{text}Z")), Some(seconds), "{text}");
        }
        for day in (0..200_000).step_by(37) {
            let seconds = day * 86_400 + 3_723;
            assert_eq!(Civil::from_unix(seconds).to_unix(), seconds);
        }
    }

    #[test]
    fn timestamps_parse_as_the_api_server_and_aws_write_them() {
        assert_eq!(parse_rfc3339("2024-05-01T12:00:00.123456Z"), Some(1_714_564_800));
        assert_eq!(parse_rfc3339("2024-05-01T14:00:00+02:00"), Some(1_714_564_800));
        assert_eq!(parse_rfc3339("2024-05-01T10:30:00.5-01:30"), Some(1_714_564_800));
        assert_eq!(parse_rfc3339("2015-08-30T12:36:00.123Z"), Some(1_440_938_160));
        for bad in [
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00+0200",
            "2024-05-01 12:00:00Z",
            "+024-05-01T12:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
