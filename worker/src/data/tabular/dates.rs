//! Dates of tabular data: parsing `YYYY-MM-DD` (or `YYYY/MM/DD`, optionally followed by a time,
//! or `YYYY-MM` for the first of the month) and the parts fastai's `add_datepart` makes of a date:
//! year, month, ISO week, day of the week (Monday 0), day of the month, and whether it is the last
//! day of its month. Proleptic Gregorian calendar, arithmetic on day numbers (Hinnant's
//! `days_from_civil`), no time zones.

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: i64,
    pub month: u32,
    pub day: u32,
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days in `month` (1-12) of `year`.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

impl Date {
    /// `text` as a date, `None` when it is not one (or not a real day, like 2023-02-30).
    pub fn parse(text: &str) -> Option<Date> {
        let text = text.trim();
        // a time after the date ("2015-07-31 00:00:00", "2015-07-31T12:00") is ignored
        let date = text.split(['T', ' ']).next()?;
        let mut parts = date.split(['-', '/']);
        let year: i64 = parts.next()?.parse().ok()?;
        let month: u32 = parts.next()?.parse().ok()?;
        let day: u32 = match parts.next() {
            Some(d) => d.parse().ok()?,
            None => 1,
        };
        if parts.next().is_some() || !(1..=9999).contains(&year) || !(1..=12).contains(&month) {
            return None;
        }
        (1..=days_in_month(year, month)).contains(&day).then_some(Date { year, month, day })
    }

    /// Days since 1970-01-01.
    pub fn days(&self) -> i64 {
        let y = if self.month <= 2 { self.year - 1 } else { self.year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// Day of the week, Monday 0 to Sunday 6 (pandas' `dayofweek`).
    pub fn weekday(&self) -> u32 {
        // 1970-01-01 was a Thursday (3)
        (self.days() + 3).rem_euclid(7) as u32
    }

    /// Day of the year, 1 for January 1.
    fn ordinal(&self) -> i64 {
        self.days() - Date { year: self.year, month: 1, day: 1 }.days() + 1
    }

    /// ISO 8601 week number (1-53; the days of early January may belong to the last week of
    /// the year before, late December to week 1).
    pub fn iso_week(&self) -> u32 {
        let weeks_in = |year: i64| {
            let jan1 = Date { year, month: 1, day: 1 }.weekday();
            if jan1 == 3 || (jan1 == 2 && is_leap(year)) {
                53
            } else {
                52
            }
        };
        let week = (self.ordinal() - i64::from(self.weekday()) + 9) / 7;
        if week < 1 {
            weeks_in(self.year - 1)
        } else if week > i64::from(weeks_in(self.year)) {
            1
        } else {
            week as u32
        }
    }

    /// The date's parts as levels, in the order of `cyclotron_core::spec::DATE_PARTS`.
    pub fn parts(&self) -> [String; 6] {
        [
            self.year.to_string(),
            self.month.to_string(),
            self.iso_week().to_string(),
            self.weekday().to_string(),
            self.day.to_string(),
            (self.day == days_in_month(self.year, self.month)).to_string(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Date {
        Date::parse(s).unwrap_or_else(|| panic!("{s} is a date"))
    }

    #[test]
    fn parses_common_forms_and_refuses_non_dates() {
        assert_eq!(d("2015-07-31"), Date { year: 2015, month: 7, day: 31 });
        assert_eq!(d("2015/7/31 00:00:00"), d("2015-07-31"));
        assert_eq!(d("2015-07-31T12:30"), d("2015-07-31"));
        assert_eq!(d("2014-01"), d("2014-01-01"));
        for bad in ["", "2015", "2015-13-01", "2015-02-29", "x-1-1", "2015-01-01-01", "31.07.2015"] {
            assert_eq!(Date::parse(bad), None, "{bad}");
        }
        assert_eq!(d("2016-02-29").day, 29);
    }

    #[test]
    fn day_numbers_and_weekdays_match_the_calendar() {
        assert_eq!(d("1970-01-01").days(), 0);
        assert_eq!(d("2000-03-01").days(), 11_017);
        assert_eq!(d("1969-12-31").days(), -1);
        assert_eq!(d("2015-07-31").weekday(), 4); // a Friday
        assert_eq!(d("2024-01-01").weekday(), 0); // a Monday
    }

    #[test]
    fn iso_weeks_and_the_parts_of_a_date() {
        // checked against Python's date.isocalendar()
        for (date, week) in [
            ("2015-07-31", 31),
            ("2021-01-03", 53), // belongs to 2020's week 53
            ("2020-12-31", 53),
            ("2019-12-30", 1), // belongs to 2020's week 1
            ("2018-01-01", 1),
            ("2016-01-01", 53),
            ("2015-12-31", 53),
        ] {
            assert_eq!(d(date).iso_week(), week, "{date}");
        }
        assert_eq!(d("2015-07-31").parts(), ["2015", "7", "31", "4", "31", "true"].map(String::from));
        assert_eq!(d("2016-02-28").parts()[5], "false");
        assert_eq!(d("2016-02-29").parts()[5], "true");
    }
}
