//! The `--check-schedule` cron parser (`kube::schedule::parse`) and `next_after` from a
//! fuzzer-chosen instant (the first 12 bytes: signed seconds and nanoseconds): the next
//! activation is strictly later; for calendar schedules it is on a whole minute, nothing
//! between the start and it activates (asking again from one second before it gives it back),
//! and the one after it is later still.
#![no_main]

use audit_forwarder::kube::schedule::parse;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn instant(secs: i64, nanos: u32) -> Option<SystemTime> {
    let d = Duration::new(secs.unsigned_abs(), nanos % 1_000_000_000);
    if secs >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, spec)) = data.split_first_chunk::<12>() else {
        return;
    };
    let Ok(spec) = std::str::from_utf8(spec) else {
        return;
    };
    let Ok(schedule) = parse(spec) else {
        return;
    };
    let secs = i64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let nanos = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
    let Some(t) = instant(secs, nanos) else {
        return;
    };
    let Some(next) = schedule.next_after(t) else {
        return;
    };
    assert!(next > t, "{spec:?}: {next:?} is not after {t:?}");
    if !format!("{schedule:?}").contains("Calendar") {
        return;
    }
    let whole = next
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() % 60 == 0 && d.subsec_nanos() == 0)
        .unwrap_or_else(|e| e.duration().as_secs() % 60 == 0 && e.duration().subsec_nanos() == 0);
    assert!(whole, "{spec:?}: {next:?} is not on a whole minute");
    let before = next - Duration::from_secs(1);
    if before >= t {
        assert_eq!(
            schedule.next_after(before),
            Some(next),
            "{spec:?} from {before:?}"
        );
    }
    if let Some(after) = schedule.next_after(next) {
        assert!(after > next, "{spec:?}: {after:?} after {next:?}");
    }
});
