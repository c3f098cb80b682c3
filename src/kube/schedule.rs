//! Cron schedules for `--check-schedule`: parsing a spec and computing its next activation,
//! without I/O or clocks (the caller passes the time in).
//!
//! Deployments of the Go original passed this flag to robfig/cron v3's default parser
//! (`cron.New()`: five fields plus descriptors), so this module accepts exactly what that parser
//! accepts and computes the same next times:
//! - five fields `minute hour day-of-month month day-of-week`; each a comma list of `*` or `?`,
//!   `N`, `A-B`, any of those followed by `/STEP`, where `N/STEP` means `N-max/STEP`; months may
//!   be JAN-DEC and weekdays SUN-SAT (any case); weekdays are 0-6 (7 is refused, as robfig does);
//! - descriptors `@yearly` `@annually` `@monthly` `@weekly` `@daily` `@midnight` `@hourly` and
//!   `@every DURATION` (Go duration syntax);
//! - a `TZ=ZONE ` or `CRON_TZ=ZONE ` prefix, where only UTC is supported (see below).
//!
//! The day rule is robfig's: when day-of-month or day-of-week starts with `*` or `?` (and has no
//! step above 1), a day must match both fields; otherwise either field suffices, so
//! `0 0 1,15 * SUN` fires on the 1st, the 15th and every Sunday.
//!
//! Times are evaluated in UTC. The image is built from scratch and carries no time zone
//! database, and containers run with UTC as local time; the Go original in the same image saw
//! UTC as `time.Local` too, so its schedules fired at the same instants. Rather than silently
//! reading another zone as UTC, a prefix naming one is refused.
//!
//! robfig quirks kept so that every spec the Go original accepted still starts: empty list items
//! are skipped (`1,,2` is `1,2`), anything after `*-` is ignored (`*-5` is `*`), numbers may
//! carry a `+`, and a spec that never fires (`0 0 30 2 *`) is accepted; `next_after` returns
//! `None` for it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::parse_duration;

/// A parsed schedule: either calendar fields or a fixed delay (`@every`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Calendar(Calendar),
    /// `@every`: whole seconds, at least one.
    Every {
        secs: u64,
    },
}

/// One bit per allowed value (bit n set: value n allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Calendar {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    day_rule: DayRule,
}

/// How day-of-month and day-of-week combine (robfig's `starBit` in `dayMatches`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DayRule {
    /// One of the two fields is unrestricted (`*` or `?`): a day must match both.
    Both,
    /// Both fields are restricted: a day matching either fires, as in classic cron.
    Either,
}

/// The range of one field and the names it accepts (the first name stands for `min`).
struct Bounds {
    field: &'static str,
    min: u64,
    max: u64,
    names: &'static [&'static str],
}

const MINUTE: Bounds = Bounds {
    field: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Bounds = Bounds {
    field: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: Bounds = Bounds {
    field: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Bounds = Bounds {
    field: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const DAY_OF_WEEK: Bounds = Bounds {
    field: "day-of-week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

const FIELDS_HINT: &str = "5 fields (minute hour day-of-month month day-of-week)";
const DESCRIPTORS: &str =
    "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>";

/// Parses a cron spec as robfig/cron v3's default parser does. Errors carry no flag name (the
/// caller adds it) but name the field and the offending item.
#[allow(dead_code)] // called by --check-schedule once the lead wires it up
pub fn parse(spec: &str) -> Result<Schedule, String> {
    if spec.is_empty() {
        return Err(format!(
            "empty schedule (expected {FIELDS_HINT} or one of {DESCRIPTORS})"
        ));
    }
    let spec = strip_time_zone(spec)?;
    if spec.starts_with('@') {
        return parse_descriptor(spec);
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    let [minute, hour, dom, month, dow] = fields[..] else {
        // robfig's `cron.New()` takes no seconds field; say so for the common 6-field mistake.
        let seconds = if fields.len() == 6 {
            "; a seconds field is not supported"
        } else {
            ""
        };
        return Err(format!(
            "{spec:?}: expected {FIELDS_HINT}, found {}{seconds}",
            fields.len()
        ));
    };
    // In field order, so the first bad field is the one reported (as robfig does).
    let minutes = parse_field(minute, &MINUTE)?.bits;
    let hours = parse_field(hour, &HOUR)?.bits;
    let dom = parse_field(dom, &DAY_OF_MONTH)?;
    let months = parse_field(month, &MONTH)?.bits;
    let dow = parse_field(dow, &DAY_OF_WEEK)?;
    Ok(Schedule(Kind::Calendar(Calendar {
        minutes,
        hours,
        months,
        day_rule: if dom.star || dow.star {
            DayRule::Both
        } else {
            DayRule::Either
        },
        days_of_month: dom.bits,
        days_of_week: dow.bits,
    })))
}

impl Schedule {
    /// The first activation strictly after `t`, on a whole second (calendar schedules: on a
    /// whole minute, as the standard parser fixes seconds at 0). `None` when a calendar
    /// schedule has no activation before the end of the fifth year after `t` (robfig's limit),
    /// or the result would not fit a `SystemTime`.
    #[allow(dead_code)] // called by the check loop once the lead wires it up
    pub fn next_after(&self, t: SystemTime) -> Option<SystemTime> {
        let secs = unix_floor(t)?;
        let next = match &self.0 {
            // robfig's ConstantDelaySchedule: drop t's fraction of a second, add the delay.
            Kind::Every { secs: delay } => secs.checked_add(i64::try_from(*delay).ok()?)?,
            Kind::Calendar(calendar) => calendar.first_at_or_after(secs.checked_add(1)?)?,
        };
        from_unix(next)
    }
}

/// Strips robfig's `TZ=ZONE ` / `CRON_TZ=ZONE ` prefix, accepting only the zones that are UTC.
fn strip_time_zone(spec: &str) -> Result<&str, String> {
    if !(spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=")) {
        return Ok(spec);
    }
    // As robfig: the zone runs from the first '=' to the first space.
    let Some(space) = spec.find(' ') else {
        return Err(format!(
            "{spec:?}: a time zone prefix must be followed by a space and the schedule"
        ));
    };
    let zone_start = spec.find('=').map_or(0, |eq| eq + 1);
    let zone = spec.get(zone_start..space).unwrap_or_default();
    match zone {
        // Go's time.LoadLocation reads "" as UTC.
        "" | "UTC" | "Etc/UTC" => Ok(spec[space..].trim()),
        _ => Err(format!(
            "time zone {zone:?} is not supported: schedules run in UTC only (the image has no \
             time zone database); drop the prefix or use TZ=UTC"
        )),
    }
}

fn parse_descriptor(spec: &str) -> Result<Schedule, String> {
    // Each calendar descriptor is robfig's bit pattern written as fields, including which
    // day field counts as `*`, so the day rule comes out the same.
    let fields = match spec {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        _ => {
            let Some(text) = spec.strip_prefix("@every ") else {
                return Err(format!("unknown descriptor {spec:?} (use {DESCRIPTORS})"));
            };
            // Go's ParseDuration takes a sign and robfig rounds anything under a second, a
            // negative delay included, up to one second.
            let delay = match text.strip_prefix('-') {
                Some(magnitude) => parse_duration(magnitude).map(|_| Duration::ZERO),
                None => parse_duration(text),
            }
            .map_err(|e| format!("{spec:?}: {e}"))?;
            let secs = delay.as_secs().max(1);
            return Ok(Schedule(Kind::Every { secs }));
        }
    };
    parse(fields)
}

/// A field's allowed values, and whether it counts as unrestricted for the day rule.
struct FieldSet {
    bits: u64,
    star: bool,
}

fn parse_field(text: &str, bounds: &Bounds) -> Result<FieldSet, String> {
    let mut set = FieldSet {
        bits: 0,
        star: false,
    };
    for item in text.split(',').filter(|item| !item.is_empty()) {
        let (bits, star) = parse_item(item, bounds).map_err(|problem| {
            let field = bounds.field;
            if item == text {
                format!("{field} field {text:?}: {problem}")
            } else {
                format!("{field} field {text:?} at {item:?}: {problem}")
            }
        })?;
        set.bits |= bits;
        set.star |= star;
    }
    Ok(set)
}

/// One list item: `*`, `?`, `N`, `A-B`, each optionally with `/STEP`.
fn parse_item(item: &str, bounds: &Bounds) -> Result<(u64, bool), String> {
    let mut slashes = item.split('/');
    let range = slashes.next().unwrap_or_default();
    let step = slashes.next();
    if slashes.next().is_some() {
        return Err("too many '/' (use one, as in */5 or 0-30/5)".to_string());
    }
    let mut ends = range.split('-');
    let low = ends.next().unwrap_or_default();
    let (start, mut end, mut star, single) = if low == "*" || low == "?" {
        // robfig never looks past "*-", so "*-5" is "*"; kept so such specs still parse.
        (bounds.min, bounds.max, true, true)
    } else {
        let start = value(low, bounds)?;
        match (ends.next(), ends.next()) {
            (None, _) => (start, start, false, true),
            (Some(high), None) => (start, value(high, bounds)?, false, false),
            (Some(_), Some(_)) => {
                return Err("too many '-' (a range is A-B)".to_string());
            }
        }
    };
    let step = match step {
        None => 1,
        Some(text) => {
            let step = number(text).map_err(|()| {
                format!("step {text:?} is not a number (use a whole number of at least 1)")
            })?;
            if single {
                // robfig: "N/STEP" means "N-max/STEP".
                end = bounds.max;
            }
            // A thinned-out "*" restricts the field, so it no longer counts as "*" for days.
            if step > 1 {
                star = false;
            }
            step
        }
    };
    if start < bounds.min {
        return Err(format!("{start} is below the minimum {}", bounds.min));
    }
    if end > bounds.max {
        let hint = if bounds.field == DAY_OF_WEEK.field {
            " (Sunday is 0)"
        } else {
            ""
        };
        return Err(format!("{end} is above the maximum {}{hint}", bounds.max));
    }
    if start > end {
        return Err(format!("range start {start} is after its end {end}"));
    }
    if step == 0 {
        return Err("step must be at least 1".to_string());
    }
    let step = usize::try_from(step).unwrap_or(usize::MAX);
    let bits = (start..=end).step_by(step).fold(0, |bits, v| bits | 1 << v);
    Ok((bits, star))
}

/// A number or, in fields that have them, a three-letter name.
fn value(text: &str, bounds: &Bounds) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(index) = bounds.names.iter().position(|&name| name == lower) {
        return Ok(bounds.min + index as u64);
    }
    number(text).map_err(|()| match (bounds.names.first(), bounds.names.last()) {
        (Some(first), Some(last)) => format!(
            "{text:?} is not a number or a {} name ({}-{})",
            bounds.field,
            first.to_ascii_uppercase(),
            last.to_ascii_uppercase()
        ),
        _ => format!("{text:?} is not a number"),
    })
}

/// Go's `strconv.Atoi` as robfig uses it: optional sign, decimal digits, fits an int64; then
/// negatives are refused.
fn number(text: &str) -> Result<u64, ()> {
    let n: i64 = text.parse().map_err(|_| ())?;
    u64::try_from(n).map_err(|_| ())
}

impl Calendar {
    /// The first activation at or after `start` (Unix seconds), searching through the end of
    /// the fifth year after `start`'s year as robfig does.
    fn first_at_or_after(&self, start: i64) -> Option<i64> {
        // Activations fall on whole minutes: round up to the next one.
        let first_minute = start.div_euclid(60) + i64::from(start.rem_euclid(60) > 0);
        let mut day = first_minute.div_euclid(MINUTES_PER_DAY);
        let mut minute_of_day = first_minute.rem_euclid(MINUTES_PER_DAY);
        let last_year = civil_from_days(start.div_euclid(SECONDS_PER_DAY)).0 + 5;
        loop {
            let (year, month, day_of_month) = civil_from_days(day);
            if year > last_year {
                return None;
            }
            if self.months & (1 << month) != 0 && self.day_matches(day_of_month, weekday(day)) {
                if let Some(minute) = self.first_time_of_day(minute_of_day) {
                    return day.checked_mul(SECONDS_PER_DAY)?.checked_add(minute * 60);
                }
            }
            day += 1;
            minute_of_day = 0;
        }
    }

    fn day_matches(&self, day_of_month: i64, weekday: i64) -> bool {
        let dom = self.days_of_month & (1 << day_of_month) != 0;
        let dow = self.days_of_week & (1 << weekday) != 0;
        match self.day_rule {
            DayRule::Both => dom && dow,
            DayRule::Either => dom || dow,
        }
    }

    /// The first allowed minute of a day at or after `from` (minutes since midnight).
    fn first_time_of_day(&self, from: i64) -> Option<i64> {
        let (first_hour, first_minute) = (from / 60, from % 60);
        (first_hour..24)
            .filter(|&hour| self.hours & (1 << hour) != 0)
            .find_map(|hour| {
                let skip = if hour == first_hour { first_minute } else { 0 };
                let later = self.minutes >> skip;
                (later != 0).then(|| hour * 60 + skip + i64::from(later.trailing_zeros()))
            })
    }
}

const SECONDS_PER_DAY: i64 = 86_400;
const MINUTES_PER_DAY: i64 = 1_440;

/// 0 = Sunday, as cron counts; day 0 (1970-01-01) was a Thursday.
fn weekday(days: i64) -> i64 {
    (days + 4).rem_euclid(7)
}

/// The proleptic Gregorian (year, month 1-12, day 1-31) of a count of days since 1970-01-01:
/// the inverse of `transcode::days_from_civil` (Howard Hinnant's `civil_from_days`). Years are
/// counted from March so that the leap day comes last and month lengths follow a formula.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097; // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whole Unix seconds of `t`, rounded down (also before 1970).
fn unix_floor(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).ok()?;
            Some(-secs - i64::from(before.subsec_nanos() > 0))
        }
    }
}

fn from_unix(secs: i64) -> Option<SystemTime> {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::transcode::days_from_civil;

    /// "YYYY-MM-DD HH:MM:SS" (optionally ".mmm") in UTC.
    fn utc(text: &str) -> SystemTime {
        let (date, time) = text.split_once(' ').expect("date and time");
        let date: Vec<i64> = date.split('-').map(|p| p.parse().expect("date")).collect();
        let (time, millis) = time.split_once('.').unwrap_or((time, "0"));
        let time: Vec<i64> = time.split(':').map(|p| p.parse().expect("time")).collect();
        let days = days_from_civil(date[0], date[1], date[2]);
        let secs = days * SECONDS_PER_DAY + time[0] * 3600 + time[1] * 60 + time[2];
        let millis: u64 = millis.parse().expect("millis");
        from_unix(secs).expect("in range") + Duration::from_millis(millis)
    }

    fn show(t: SystemTime) -> String {
        let secs = unix_floor(t).expect("in range");
        let (y, mo, d) = civil_from_days(secs.div_euclid(SECONDS_PER_DAY));
        let s = secs.rem_euclid(SECONDS_PER_DAY);
        let (h, mi, se) = (s / 3600, s / 60 % 60, s % 60);
        format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{se:02}")
    }

    fn next(spec: &str, from: &str) -> Option<String> {
        let schedule = parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
        schedule.next_after(utc(from)).map(show)
    }

    fn values(bits: u64) -> Vec<u64> {
        (0..64).filter(|v| bits & (1 << v) != 0).collect()
    }

    #[test]
    fn schedule_field_table() {
        // (bounds, text, values, counts as "*" for the day rule), after robfig's TestRange
        // and TestField.
        #[rustfmt::skip]
        let ok: &[(&Bounds, &str, &[u64], bool)] = &[
            (&MINUTE, "5", &[5], false),
            (&MINUTE, "0", &[0], false),
            (&MINUTE, "59", &[59], false),
            (&MINUTE, "05", &[5], false),
            (&MINUTE, "+5", &[5], false),
            (&MINUTE, "5-5", &[5], false),
            (&MINUTE, "5-7", &[5, 6, 7], false),
            (&MINUTE, "5-6/2", &[5], false),
            (&MINUTE, "5-7/2", &[5, 7], false),
            (&MINUTE, "5-7/1", &[5, 6, 7], false),
            (&MINUTE, "50/3", &[50, 53, 56, 59], false),
            (&MINUTE, "*/15", &[0, 15, 30, 45], false),
            (&MINUTE, "*/59", &[0, 59], false),
            (&MINUTE, "*/100", &[0], false),
            (&MINUTE, "0/30", &[0, 30], false),
            (&MINUTE, "1,5-7/2,3", &[1, 3, 5, 7], false),
            (&MINUTE, "1,,2,", &[1, 2], false),
            (&MINUTE, ",", &[], false),
            (&HOUR, "*", &(0..24).collect::<Vec<_>>(), true),
            (&HOUR, "?", &(0..24).collect::<Vec<_>>(), true),
            (&HOUR, "*/1", &(0..24).collect::<Vec<_>>(), true),
            (&HOUR, "*-5", &(0..24).collect::<Vec<_>>(), true),
            (&HOUR, "*/12", &[0, 12], false),
            (&HOUR, "?/12", &[0, 12], false),
            (&HOUR, "22-23,*/12", &[0, 12, 22, 23], false),
            (&HOUR, "1,*", &(0..24).collect::<Vec<_>>(), true),
            (&DAY_OF_MONTH, "*", &(1..32).collect::<Vec<_>>(), true),
            (&DAY_OF_MONTH, "*/10", &[1, 11, 21, 31], false),
            (&DAY_OF_MONTH, "31", &[31], false),
            (&MONTH, "jan", &[1], false),
            (&MONTH, "DEC", &[12], false),
            (&MONTH, "Apr-Oct", &[4, 5, 6, 7, 8, 9, 10], false),
            (&MONTH, "apr,AUG,oct", &[4, 8, 10], false),
            (&MONTH, "jan/3", &[1, 4, 7, 10], false),
            (&MONTH, "feb-4", &[2, 3, 4], false),
            (&DAY_OF_WEEK, "sun", &[0], false),
            (&DAY_OF_WEEK, "SAT", &[6], false),
            (&DAY_OF_WEEK, "Mon-Fri", &[1, 2, 3, 4, 5], false),
            (&DAY_OF_WEEK, "mon/2", &[1, 3, 5], false),
            (&DAY_OF_WEEK, "0-6", &[0, 1, 2, 3, 4, 5, 6], false),
        ];
        for &(bounds, text, want, want_star) in ok {
            let set = parse_field(text, bounds).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(values(set.bits), want, "{} {text:?}", bounds.field);
            assert_eq!(set.star, want_star, "{} {text:?} star", bounds.field);
        }
    }

    #[test]
    fn schedule_parse_equivalents_table() {
        #[rustfmt::skip]
        let same: &[(&str, &str)] = &[
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 jan ?"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * sun"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("*/1 * * * *", "* * * * *"),
            ("? ? ? ? ?", "* * * * *"),
            ("0-59 0-23 * 1-12 *", "* * * * *"),
            ("0 0 * JAN-mar Sun", "0 0 * 1-3 0"),
            ("0 0 * * mon-fri", "0 0 * * 1-5"),
            ("TZ=UTC 5 * * * *", "5 * * * *"),
            ("CRON_TZ=UTC  5 * * * *", "5 * * * *"),
            ("CRON_TZ=Etc/UTC 5 * * * *", "5 * * * *"),
            ("TZ= 5 * * * *", "5 * * * *"),
            ("TZ=UTC  @midnight", "0 0 * * *"),
            ("  5\t*  * * *\n", "5 * * * *"),
            ("@every 1m", "@every 60s"),
            ("@every 500ms", "@every 1s"),
            ("@every 1.9s", "@every 1s"),
            ("@every 0", "@every 1s"),
            ("@every -5m", "@every 1s"),
            ("@every 1h30m", "@every 5400s"),
            ("@every 1h0.5m", "@every 3630s"),
        ];
        for &(spec, equivalent) in same {
            let got = parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert_eq!(Ok(got), parse(equivalent), "{spec:?} vs {equivalent:?}");
        }
        // The day rule: restricted on both sides is "either", a "*" on one side is "both".
        #[rustfmt::skip]
        let rules: &[(&str, DayRule)] = &[
            ("* * 1,15 * sun", DayRule::Either),
            ("* * */10 * sun", DayRule::Either),
            ("* * */2 * 0", DayRule::Either),
            ("* * * * sun", DayRule::Both),
            ("* * 1,15 * *", DayRule::Both),
            ("* * ? * mon", DayRule::Both),
            ("* * */1 * mon", DayRule::Both),
            ("* * 1 * 1,*", DayRule::Both),
        ];
        for &(spec, rule) in rules {
            match parse(spec) {
                Ok(Schedule(Kind::Calendar(c))) => assert_eq!(c.day_rule, rule, "{spec:?}"),
                other => panic!("{spec:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn schedule_parse_rejects_table() {
        #[rustfmt::skip]
        let err: &[(&str, &str)] = &[
            ("", "empty schedule (expected 5 fields (minute hour day-of-month month day-of-week) or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>)"),
            ("   ", "\"   \": expected 5 fields (minute hour day-of-month month day-of-week), found 0"),
            ("xyz", "\"xyz\": expected 5 fields (minute hour day-of-month month day-of-week), found 1"),
            ("* * * *", "\"* * * *\": expected 5 fields (minute hour day-of-month month day-of-week), found 4"),
            ("0 * * * * *", "\"0 * * * * *\": expected 5 fields (minute hour day-of-month month day-of-week), found 6; a seconds field is not supported"),
            ("*/0 * * * *", "minute field \"*/0\": step must be at least 1"),
            ("1,*/0 * * * *", "minute field \"1,*/0\" at \"*/0\": step must be at least 1"),
            ("*/ * * * *", "minute field \"*/\": step \"\" is not a number (use a whole number of at least 1)"),
            ("*/-12 * * * *", "minute field \"*/-12\": step \"-12\" is not a number (use a whole number of at least 1)"),
            ("*//2 * * * *", "minute field \"*//2\": too many '/' (use one, as in */5 or 0-30/5)"),
            ("5--5 * * * *", "minute field \"5--5\": too many '-' (a range is A-B)"),
            ("-5 * * * *", "minute field \"-5\": \"\" is not a number"),
            ("5- * * * *", "minute field \"5-\": \"\" is not a number"),
            ("60 0 * * *", "minute field \"60\": 60 is above the maximum 59"),
            ("0 60 * * *", "hour field \"60\": 60 is above the maximum 23"),
            ("0 24 * * *", "hour field \"24\": 24 is above the maximum 23"),
            ("0 0-24 * * *", "hour field \"0-24\": 24 is above the maximum 23"),
            ("0 5 j * *", "day-of-month field \"j\": \"j\" is not a number"),
            ("0 0 0 * *", "day-of-month field \"0\": 0 is below the minimum 1"),
            ("0 0 32 * *", "day-of-month field \"32\": 32 is above the maximum 31"),
            ("0 0 5-3 * *", "day-of-month field \"5-3\": range start 5 is after its end 3"),
            ("0 0 * 0 *", "month field \"0\": 0 is below the minimum 1"),
            ("0 0 * 13 *", "month field \"13\": 13 is above the maximum 12"),
            ("0 0 * jan-x *", "month field \"jan-x\": \"x\" is not a number or a month name (JAN-DEC)"),
            ("0 0 * january *", "month field \"january\": \"january\" is not a number or a month name (JAN-DEC)"),
            ("0 0 * * XYZ", "day-of-week field \"XYZ\": \"XYZ\" is not a number or a day-of-week name (SUN-SAT)"),
            ("0 0 * * 7", "day-of-week field \"7\": 7 is above the maximum 6 (Sunday is 0)"),
            ("0 0 * * 1-7", "day-of-week field \"1-7\": 7 is above the maximum 6 (Sunday is 0)"),
            ("0 0 * * 99999999999999999999", "day-of-week field \"99999999999999999999\": \"99999999999999999999\" is not a number or a day-of-week name (SUN-SAT)"),
            ("1.5 * * * *", "minute field \"1.5\": \"1.5\" is not a number"),
            ("60 * 0 * 7", "minute field \"60\": 60 is above the maximum 59"),
            ("@unrecognized", "unknown descriptor \"@unrecognized\" (use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>)"),
            ("@Hourly", "unknown descriptor \"@Hourly\""),
            ("@hourly ", "unknown descriptor \"@hourly \""),
            ("@every", "unknown descriptor \"@every\""),
            ("@every Xm", "\"@every Xm\": invalid duration \"Xm\""),
            ("@every 5", "\"@every 5\": missing unit in duration \"5\""),
            ("@every  5m", "\"@every  5m\": invalid duration \" 5m\""),
            ("TZ=UTC", "\"TZ=UTC\": a time zone prefix must be followed by a space and the schedule"),
            ("TZ=Asia/Tokyo @midnight", "time zone \"Asia/Tokyo\" is not supported: schedules run in UTC only (the image has no time zone database); drop the prefix or use TZ=UTC"),
            ("CRON_TZ=Europe/Berlin 0 5 * * *", "time zone \"Europe/Berlin\" is not supported"),
            ("CRON_TZ=utc 0 5 * * *", "time zone \"utc\" is not supported"),
            ("TZ=UTC ", "\"\": expected 5 fields (minute hour day-of-month month day-of-week), found 0"),
        ];
        for &(spec, want) in err {
            match parse(spec) {
                Err(got) => assert!(
                    got.starts_with(want),
                    "{spec:?}: got {got:?}, want {want:?}"
                ),
                Ok(schedule) => panic!("{spec:?} accepted as {schedule:?}"),
            }
        }
    }

    #[test]
    fn schedule_next_after_table() {
        // (spec, from, first activation strictly after), in UTC. Many after robfig's
        // spec_test.go TestNext, without its seconds field.
        #[rustfmt::skip]
        let cases: &[(&str, &str, Option<&str>)] = &[
            // The Go original's default: every minute, strictly after, on the minute.
            ("*/1 * * * *", "2024-05-01 10:00:00", Some("2024-05-01 10:01:00")),
            ("*/1 * * * *", "2024-05-01 10:00:59.999", Some("2024-05-01 10:01:00")),
            ("*/1 * * * *", "2024-05-01 10:00:00.001", Some("2024-05-01 10:01:00")),
            ("* * * * *", "2024-05-01 10:00:30", Some("2024-05-01 10:01:00")),
            // Steps and ranges, wrapping hours and days.
            ("0/15 * * * *", "2012-07-09 14:45:00", Some("2012-07-09 15:00:00")),
            ("0/15 * * * *", "2012-07-09 14:59:00", Some("2012-07-09 15:00:00")),
            ("0/15 * * * *", "2012-07-09 14:59:59", Some("2012-07-09 15:00:00")),
            ("20-35/15 * * * *", "2012-07-09 15:45:00", Some("2012-07-09 16:20:00")),
            ("*/15 * * * *", "2012-07-09 23:46:00", Some("2012-07-10 00:00:00")),
            ("20-35/15 * * * *", "2012-07-09 23:45:00", Some("2012-07-10 00:20:00")),
            ("20-35/15 1/2 * * *", "2012-07-09 23:35:51", Some("2012-07-10 01:20:00")),
            ("20-35/15 10-12 * * *", "2012-07-09 23:35:51", Some("2012-07-10 10:20:00")),
            ("20-35/15 1/2 */2 * *", "2012-07-09 23:35:51", Some("2012-07-11 01:20:00")),
            ("20-35/15 * 9-20 jul *", "2012-07-09 23:35:51", Some("2012-07-10 00:20:00")),
            // Months and years.
            ("0 0 9 Apr-Oct ?", "2012-07-09 23:35:00", Some("2012-08-09 00:00:00")),
            ("0 0 */5 Apr,Aug,Oct Mon", "2012-07-09 23:35:00", Some("2012-08-01 00:00:00")),
            ("0 0 */5 Oct Mon", "2012-07-09 23:35:00", Some("2012-10-01 00:00:00")),
            ("0 0 * Feb Mon", "2012-07-09 23:35:00", Some("2013-02-04 00:00:00")),
            ("0 0 * Feb Mon/2", "2012-07-09 23:35:00", Some("2013-02-01 00:00:00")),
            ("* * * * *", "2012-12-31 23:59:45", Some("2013-01-01 00:00:00")),
            ("0 0 31 * *", "2024-04-15 00:00:00", Some("2024-05-31 00:00:00")),
            ("0 12 30 * *", "2024-01-30 12:00:00", Some("2024-03-30 12:00:00")),
            ("@yearly", "2024-12-31 23:59:59", Some("2025-01-01 00:00:00")),
            ("@yearly", "2025-01-01 00:00:00", Some("2026-01-01 00:00:00")),
            ("@monthly", "2024-01-31 12:00:00", Some("2024-02-01 00:00:00")),
            ("@monthly", "2024-12-01 00:00:00", Some("2025-01-01 00:00:00")),
            ("@weekly", "2012-07-09 00:00:00", Some("2012-07-15 00:00:00")),
            ("@weekly", "2012-07-08 00:00:00", Some("2012-07-15 00:00:00")),
            ("@daily", "2024-02-28 00:00:00", Some("2024-02-29 00:00:00")),
            ("@midnight", "2023-02-28 23:59:59.5", Some("2023-03-01 00:00:00")),
            ("@hourly", "2024-05-01 10:00:00", Some("2024-05-01 11:00:00")),
            ("@hourly", "2024-05-01 10:59:59.999", Some("2024-05-01 11:00:00")),
            ("@hourly", "2024-12-31 23:30:00", Some("2025-01-01 00:00:00")),
            // Leap days: 2100 is not a leap year, 2000 was.
            ("0 0 29 Feb ?", "2012-07-09 23:35:00", Some("2016-02-29 00:00:00")),
            ("0 0 29 2 *", "2024-02-29 00:00:00", Some("2028-02-29 00:00:00")),
            ("0 0 29 2 *", "1999-03-01 00:00:00", Some("2000-02-29 00:00:00")),
            ("0 0 29 2 *", "2099-03-01 00:00:00", Some("2104-02-29 00:00:00")),
            ("0 0 * 2 *", "2024-02-28 23:59:00", Some("2024-02-29 00:00:00")),
            ("0 0 * 2 *", "2023-02-28 23:59:00", Some("2024-02-01 00:00:00")),
            // Day-of-month OR day-of-week when both are restricted (robfig TestActivation).
            ("0 0 1,15 * Sun", "2012-07-14 00:00:00", Some("2012-07-15 00:00:00")),
            ("0 0 1,15 * Sun", "2012-06-14 12:00:00", Some("2012-06-15 00:00:00")),
            ("0 0 1,15 * Sun", "2012-07-29 00:00:00", Some("2012-08-01 00:00:00")),
            ("0 0 1,15 * Sun", "2012-07-09 00:00:00", Some("2012-07-15 00:00:00")),
            ("0 0 */10 * Sun", "2012-07-12 00:00:00", Some("2012-07-15 00:00:00")),
            ("0 0 13 * Fri", "2024-09-10 00:00:00", Some("2024-09-13 00:00:00")),
            ("0 0 13 * Fri", "2024-09-13 00:00:00", Some("2024-09-20 00:00:00")),
            // ... and AND when one of them is "*" or "?".
            ("0 0 * * Mon", "2012-07-15 00:00:00", Some("2012-07-16 00:00:00")),
            ("0 0 1,15 * *", "2012-07-09 00:00:00", Some("2012-07-15 00:00:00")),
            ("30 08 ? Jul Sun", "2012-07-09 00:00:00", Some("2012-07-15 08:30:00")),
            ("30 08 15 Jul ?", "2012-07-16 00:00:00", Some("2013-07-15 08:30:00")),
            ("0 0 13 * */1", "2024-09-13 00:00:00", Some("2024-10-13 00:00:00")),
            // Never, or not within the five years robfig searches.
            ("0 0 30 Feb ?", "2012-07-09 23:35:00", None),
            ("0 0 31 Apr ?", "2012-07-09 23:35:00", None),
            ("0 0 29 2 *", "2097-03-01 00:00:00", None),
            (", * * * *", "2024-01-01 00:00:00", None),
            // Before 1970.
            ("@daily", "1969-12-31 12:00:00.5", Some("1970-01-01 00:00:00")),
            ("*/1 * * * *", "1960-01-01 00:00:00.5", Some("1960-01-01 00:01:00")),
        ];
        for &(spec, from, want) in cases {
            assert_eq!(next(spec, from).as_deref(), want, "{spec:?} after {from}");
        }
    }

    #[test]
    fn schedule_every_table() {
        // robfig's ConstantDelaySchedule: t's fraction of a second dropped, then the delay
        // (under 1s counts as 1s; fractions of a second in the delay are dropped).
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            ("@every 90s", "2024-05-01 10:00:00", "2024-05-01 10:01:30"),
            ("@every 90s", "2024-05-01 10:00:00.700", "2024-05-01 10:01:30"),
            ("@every 500ms", "2024-05-01 10:00:00", "2024-05-01 10:00:01"),
            ("@every 500ms", "2024-05-01 10:00:00.999", "2024-05-01 10:00:01"),
            ("@every 15m", "2012-07-09 14:59:59", "2012-07-09 15:14:59"),
            ("@every 15m0.00000005s", "2012-07-09 14:45:00.005", "2012-07-09 15:00:00"),
            ("@every 35m", "2012-07-09 15:45:00", "2012-07-09 16:20:00"),
            ("@every 25h44m24s", "2012-07-09 23:35:51", "2012-07-11 01:20:15"),
            ("@every 15s", "2012-12-31 23:59:45", "2013-01-01 00:00:00"),
            ("@every 2184h25m", "2012-07-09 23:35:00", "2012-10-09 00:00:00"),
            ("TZ=UTC @every 1h", "2024-02-28 23:30:00", "2024-02-29 00:30:00"),
        ];
        for &(spec, from, want) in cases {
            assert_eq!(
                next(spec, from).as_deref(),
                Some(want),
                "{spec:?} after {from}"
            );
        }
    }

    #[test]
    fn schedule_next_after_is_strictly_later_and_repeats() {
        // Following the activations one by one visits each of them, in order.
        let schedule = parse("0,30 9-10 * * mon-fri").expect("valid");
        let mut t = utc("2024-05-03 09:30:00"); // a Friday, on an activation
        let mut seen = Vec::new();
        for _ in 0..5 {
            t = schedule.next_after(t).expect("activation");
            seen.push(show(t));
        }
        assert_eq!(
            seen,
            [
                "2024-05-03 10:00:00",
                "2024-05-03 10:30:00",
                "2024-05-06 09:00:00",
                "2024-05-06 09:30:00",
                "2024-05-06 10:00:00",
            ]
        );
    }

    #[test]
    fn schedule_civil_from_days_inverts_days_from_civil() {
        // Every day from 1900 to 2200 plus a few far away: round trip and weekday.
        let first = days_from_civil(1900, 1, 1);
        let last = days_from_civil(2200, 12, 31);
        for days in (first..=last).chain([-1_000_000, 1_000_000, 0, -1]) {
            let (y, m, d) = civil_from_days(days);
            assert!(
                (1..=12).contains(&m) && (1..=31).contains(&d),
                "{days}: {y}-{m}-{d}"
            );
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        assert_eq!(weekday(0), 4); // Thursday
        assert_eq!(weekday(days_from_civil(2012, 7, 15)), 0); // Sunday
        assert_eq!(weekday(days_from_civil(1969, 12, 28)), 0); // Sunday
    }
}
