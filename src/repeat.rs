//! Logging a failure that repeats, without I/O and without a clock of its own: [`RepeatLog`]
//! decides, for each failed attempt of one thing (connecting to the receiver, asking the
//! Kubernetes API, opening the audit log, writing the position file), whether the caller logs
//! it in full, at debug, or as a summary with a count; and, when the thing works again, how
//! many attempts failed before. An operator then sees the first failure with its whole message
//! at WARN or ERROR, a reminder at most every [`SUMMARY_EVERY`] while it lasts, and one INFO
//! line when it is over, instead of a line per retry.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest a repeating failure goes without a line above debug.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(300);

/// What the caller logs for a failed attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Say {
    /// The first failure, or one whose message differs from the last: in full, at WARN/ERROR.
    First,
    /// The same message again, said not long ago: at debug only.
    Quiet,
    /// The same message again, time for a reminder ([`summary`]) at WARN/ERROR: `repeats`
    /// identical failures after the first, which happened at `since`.
    Summary { repeats: u64, since: SystemTime },
}

/// A failure that was over: how many attempts failed, over how long.
#[derive(Debug, PartialEq, Eq)]
pub struct Recovered {
    pub failures: u64,
    pub lasted: Duration,
}

/// The failures of one thing since it last worked.
struct Outage {
    /// When the first failure of the outage happened.
    started: Instant,
    /// Failed attempts of the outage, whatever their messages.
    failures: u64,
    /// The message of the last failure; a different one is logged in full again.
    text: String,
    /// When (wall clock, for the summary) this message first came, and how often since.
    text_since: SystemTime,
    repeats: u64,
    /// When a line above debug was last logged about it.
    said: Instant,
}

/// See the module documentation. Times are passed in, so tests drive it with explicit instants.
pub struct RepeatLog {
    every: Duration,
    outage: Option<Outage>,
}

impl Default for RepeatLog {
    fn default() -> Self {
        RepeatLog::new(SUMMARY_EVERY)
    }
}

impl RepeatLog {
    pub fn new(every: Duration) -> RepeatLog {
        RepeatLog {
            every,
            outage: None,
        }
    }

    /// Counts a failed attempt with message `text`.
    pub fn failed(&mut self, text: &str, now: Instant, wall: SystemTime) -> Say {
        let Some(o) = &mut self.outage else {
            self.outage = Some(Outage {
                started: now,
                failures: 1,
                text: text.to_string(),
                text_since: wall,
                repeats: 0,
                said: now,
            });
            return Say::First;
        };
        o.failures += 1;
        if o.text != text {
            o.text = text.to_string();
            o.text_since = wall;
            o.repeats = 0;
            o.said = now;
            return Say::First;
        }
        o.repeats += 1;
        if now.saturating_duration_since(o.said) < self.every {
            return Say::Quiet;
        }
        o.said = now;
        Say::Summary {
            repeats: o.repeats,
            since: o.text_since,
        }
    }

    /// The thing worked: the outage, if there was one, is over.
    pub fn recovered(&mut self, now: Instant) -> Option<Recovered> {
        self.outage.take().map(|o| Recovered {
            failures: o.failures,
            lasted: now.saturating_duration_since(o.started),
        })
    }

    /// Forgets a failure without calling it over (the thing itself changed).
    pub fn reset(&mut self) {
        self.outage = None;
    }

    /// The message of the last failure while the outage lasts.
    pub fn text(&self) -> Option<&str> {
        self.outage.as_ref().map(|o| o.text.as_str())
    }
}

/// `repeated N times since HH:MM:SS UTC (last: <msg>)`.
pub fn summary(repeats: u64, since: SystemTime, last: &str) -> String {
    format!(
        "repeated {repeats} times since {} (last: {last})",
        clock(since)
    )
}

/// The UTC time of day, as the log's timestamps (which are UTC) show it.
pub fn clock(t: SystemTime) -> String {
    let s = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 86_400);
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_log_table() {
        let t0 = Instant::now();
        let w0 = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 3600 * 10 + 62);
        let s = Duration::from_secs;
        // (seconds after the first failure, message or None for a success, expected).
        enum Want {
            Say(Say),
            Over(Option<Recovered>),
        }
        let summary = |repeats, at: u64| {
            Want::Say(Say::Summary {
                repeats,
                since: w0 + s(at),
            })
        };
        let cases: Vec<(u64, Option<&str>, Want)> = vec![
            (0, Some("refused"), Want::Say(Say::First)),
            (1, Some("refused"), Want::Say(Say::Quiet)),
            (299, Some("refused"), Want::Say(Say::Quiet)),
            (300, Some("refused"), summary(3, 0)),
            (301, Some("refused"), Want::Say(Say::Quiet)),
            (600, Some("refused"), summary(5, 0)),
            // Another message is a new failure, said in full, its repeats counted anew.
            (601, Some("timed out"), Want::Say(Say::First)),
            (602, Some("timed out"), Want::Say(Say::Quiet)),
            (901, Some("timed out"), summary(2, 601)),
            (
                905,
                None,
                Want::Over(Some(Recovered {
                    failures: 9,
                    lasted: s(905),
                })),
            ),
            (906, None, Want::Over(None)),
            // After a recovery the same message is new again.
            (907, Some("refused"), Want::Say(Say::First)),
            (908, Some("refused"), Want::Say(Say::Quiet)),
        ];
        let mut log = RepeatLog::default();
        for (at, text, want) in cases {
            let now = t0 + s(at);
            match (text, want) {
                (Some(text), Want::Say(want)) => {
                    assert_eq!(log.failed(text, now, w0 + s(at)), want, "at {at} s");
                    assert_eq!(log.text(), Some(text));
                }
                (None, Want::Over(want)) => {
                    assert_eq!(log.recovered(now), want, "at {at} s");
                    assert_eq!(log.text(), None);
                }
                _ => unreachable!("a case is a failure with a Say or a success with an Over"),
            }
        }
        // A reset (the thing itself changed, e.g. another receiver) forgets the failure without
        // a recovery: no "recovered" line, and the next failure is said in full.
        let now = t0 + s(909);
        log.reset();
        assert_eq!(log.text(), None);
        assert_eq!(log.recovered(now), None);
        assert_eq!(log.failed("refused", now, w0 + s(909)), Say::First);
    }

    #[test]
    fn repeat_summary_line() {
        let since = UNIX_EPOCH + Duration::from_secs(86_400 * 20_000 + 3600 * 9 + 60 * 5 + 7);
        assert_eq!(
            summary(41, since, "connect to 127.0.0.1:9: Connection refused"),
            "repeated 41 times since 09:05:07 UTC (last: connect to 127.0.0.1:9: Connection refused)"
        );
    }
}
