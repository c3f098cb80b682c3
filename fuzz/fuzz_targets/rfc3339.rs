//! `parse_rfc3339` against an independent reading of its documented grammar
//! (`YYYY-MM-DD(T|t| )HH:MM:SS[.digits](Z|z|+HH:MM|-HH:MM)`, fraction truncated to nanoseconds,
//! `:60` as the next minute's first second, `None` outside 1970..=u32 seconds) that counts days
//! year by year instead of with the civil-date formula.
#![no_main]

use audit_forwarder::forward::transcode::{parse_rfc3339, EventTime};
use libfuzzer_sys::fuzz_target;

fn num(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn reference(s: &[u8]) -> Option<EventTime> {
    let s = std::str::from_utf8(s).ok()?;
    let (date, rest) = (s.get(..10)?, s.get(11..)?);
    if !matches!(s.as_bytes()[10], b'T' | b't' | b' ') {
        return None;
    }
    let d: Vec<&str> = date.split('-').collect();
    let [y, mo, da] = d[..] else { return None };
    if (y.len(), mo.len(), da.len()) != (4, 2, 2) {
        return None;
    }
    let (y, mo, da) = (num(y)?, num(mo)?, num(da)?);
    let clock = rest.get(..8)?;
    let c: Vec<&str> = clock.split(':').collect();
    let [h, mi, se] = c[..] else { return None };
    if (h.len(), mi.len(), se.len()) != (2, 2, 2) {
        return None;
    }
    let (h, mi, se) = (num(h)?, num(mi)?, num(se)?);
    let month_days = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo) || da < 1 || da > month_days[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut tail = &rest[8..];
    let mut nanos = 0i64;
    if let Some(f) = tail.strip_prefix('.') {
        let n = f.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let mut digits: String = f[..n].chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        nanos = num(&digits)?;
        tail = &f[n..];
    }
    let offset = match tail {
        "Z" | "z" => 0,
        _ => {
            let sign = match tail.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (tail.get(1..3)?, tail.get(4..6)?);
            if tail.len() != 6 || tail.get(3..4) != Some(":") {
                return None;
            }
            let (oh, om) = (num(oh)?, num(om)?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let mut days = 0i64;
    if y >= 1970 {
        days += (1970..y)
            .map(|yy| if leap(yy) { 366 } else { 365 })
            .sum::<i64>();
    } else {
        days -= (y..1970)
            .map(|yy| if leap(yy) { 366 } else { 365 })
            .sum::<i64>();
    }
    days += month_days[..(mo - 1) as usize].iter().sum::<i64>() + da - 1;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    Some(EventTime {
        secs: u32::try_from(secs).ok()?,
        nanos: nanos as u32,
    })
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        parse_rfc3339(data),
        reference(data),
        "{:?}",
        String::from_utf8_lossy(data)
    );
});
