//! Time formats signers use, from the host-given [`Datetime`].
//!
//! The calendar arithmetic is Howard Hinnant's `civil_from_days`, a dozen lines;
//! pulling a date crate into every plugin for it would cost more code size than
//! it saves.

use crate::Datetime;

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// Year, e.g. 2015.
    pub year: i64,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of month, 1..=31.
    pub day: u32,
    /// Hour, 0..=23.
    pub hour: u32,
    /// Minute, 0..=59.
    pub minute: u32,
    /// Second, 0..=59.
    pub second: u32,
}

impl Utc {
    /// Convert seconds since the Unix epoch.
    pub fn from_unix(secs: i64) -> Utc {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Utc { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60 }
    }

    /// `YYYYMMDD`, as in an AWS credential scope.
    pub fn date_stamp(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `YYYY-MM-DD`, as in a Tencent credential scope.
    pub fn date_dashed(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// `YYYYMMDDTHHMMSSZ`, the AWS `x-amz-date` format.
    pub fn amz_date(&self) -> String {
        format!("{}T{:02}{:02}{:02}Z", self.date_stamp(), self.hour, self.minute, self.second)
    }

    /// `YYYY-MM-DDTHH:MM:SSZ`, RFC 3339 / ISO 8601 in UTC.
    pub fn rfc3339(&self) -> String {
        format!("{}T{:02}:{:02}:{:02}Z", self.date_dashed(), self.hour, self.minute, self.second)
    }
}

impl From<Datetime> for Utc {
    fn from(d: Datetime) -> Utc {
        Utc::from_unix(d.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let t = Utc::from_unix(1_440_938_160); // 2015-08-30T12:36:00Z
        assert_eq!(t.amz_date(), "20150830T123600Z");
        assert_eq!(Utc::from_unix(1_551_113_065).date_dashed(), "2019-02-25");
        assert_eq!(Utc::from_unix(0).rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(Utc::from_unix(951_782_400).date_dashed(), "2000-02-29");
        assert_eq!(Utc::from_unix(-1).rfc3339(), "1969-12-31T23:59:59Z");
    }
}
