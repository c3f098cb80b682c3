//! How many bytes may be in flight (sent, not yet acked). Throughput is at most the window per
//! ack round trip, so a receiver far away needs a window of its pace times the round trip (the
//! bandwidth-delay product) or the link idles while acks travel; a receiver nearby needs far
//! less, and every byte of window is memory the forwarder holds. [`Pace`] estimates both factors
//! from the acks, the way BBR does: the pace as the highest ack rate of the last few intervals,
//! the round trip as the shortest time from a chunk's last byte written to its ack in the last
//! ten seconds, and allows twice their product (the headroom lets a window-limited rate grow:
//! each round trip the window can double until the link, not the window, limits), never less
//! than a floor that a nearby receiver runs at full speed with, never more than the cap
//! `--mem-buf-limit` allows.

use std::time::{Duration, Instant};

/// Ack-rate samples kept; the window follows the highest.
const RATE_SAMPLES: usize = 8;
/// A rate sample covers at least this long (and at least one round trip), so one ack that
/// happens to arrive alone does not make a rate.
const INTERVAL_MIN: Duration = Duration::from_millis(5);
/// The shortest round trip seen is trusted this long; after that a longer one replaces it (a
/// path that got slower, a receiver that moved).
const RTT_EXPIRY: Duration = Duration::from_secs(10);
/// Headroom over the estimated bandwidth-delay product.
const GAIN: f64 = 2.0;

pub struct Pace {
    floor: usize,
    cap: usize,
    /// Shortest write-to-ack time and when it was seen.
    min_rtt: Option<(Duration, Instant)>,
    /// The interval being measured: since when, bytes acked in it.
    interval: Option<(Instant, u64)>,
    /// Bytes per second of the last intervals, a ring whose oldest is at `next_rate`.
    rates: [f64; RATE_SAMPLES],
    next_rate: usize,
}

impl Pace {
    /// A window between `floor` and `cap` bytes (`floor` is lowered to `cap` if above it).
    pub fn new(floor: usize, cap: usize) -> Pace {
        Pace {
            floor: floor.min(cap),
            cap,
            min_rtt: None,
            interval: None,
            rates: [0.0; RATE_SAMPLES],
            next_rate: 0,
        }
    }

    /// The bytes that may be in flight now.
    pub fn window(&self) -> usize {
        let Some((rtt, _)) = self.min_rtt else {
            return self.floor;
        };
        let rate = self.rates.iter().copied().fold(0.0, f64::max);
        let bdp = GAIN * rate * rtt.as_secs_f64();
        // `as` saturates: an absurd estimate is held by the cap.
        (bdp as usize).clamp(self.floor, self.cap)
    }

    /// A chunk of `bytes` whose last byte was written at `sent` was acked at `now`.
    pub fn on_ack(&mut self, bytes: usize, sent: Instant, now: Instant) {
        let rtt = now.saturating_duration_since(sent);
        self.min_rtt = match self.min_rtt {
            Some((m, at)) if m < rtt && now.saturating_duration_since(at) < RTT_EXPIRY => {
                Some((m, at))
            }
            _ => Some((rtt, now)),
        };
        let span = self
            .min_rtt
            .map_or(INTERVAL_MIN, |(m, _)| m.max(INTERVAL_MIN));
        let (start, acked) = self.interval.get_or_insert((sent.min(now), 0));
        *acked = acked.saturating_add(bytes as u64);
        let elapsed = now.saturating_duration_since(*start);
        if elapsed >= span {
            self.rates[self.next_rate] = *acked as f64 / elapsed.as_secs_f64();
            self.next_rate = (self.next_rate + 1) % RATE_SAMPLES;
            self.interval = Some((now, 0));
        }
    }

    /// Forgets the rates: called when the files ran dry, so the window a burst earned does not
    /// outlive it (the round trip is a property of the path and is kept).
    pub fn idle(&mut self) {
        self.rates = [0.0; RATE_SAMPLES];
        self.interval = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Acks `chunks` chunks of `size` bytes: one written every `gap`, each acked `rtt` after it
    /// was written. Returns the window after the last ack.
    fn run(
        p: &mut Pace,
        t0: Instant,
        chunks: u64,
        size: usize,
        gap: Duration,
        rtt: Duration,
    ) -> usize {
        for k in 0..chunks {
            let sent = t0 + gap * k as u32;
            p.on_ack(size, sent, sent + rtt);
        }
        p.window()
    }

    #[test]
    fn window_is_twice_the_bandwidth_delay_product_between_floor_and_cap() {
        let t0 = Instant::now();
        // (what the acks show: chunk size, one chunk every .., round trip; window expected)
        let cases = [
            // Nearby and fast: 512 KiB per ms = 512 MiB/s, 1 ms round trip -> 1 MiB x 2,
            // under the floor.
            (512 * 1024, ms(1), ms(1), 8 * MIB),
            // 50 ms each way at 80 MiB/s (512 KiB every 6.25 ms): 8 MiB x 2 = 16 MiB.
            (512 * 1024, Duration::from_micros(6250), ms(100), 16 * MIB),
            // At 320 MiB/s the same round trip needs 64 MiB x 2: the cap.
            (512 * 1024, Duration::from_micros(1562), ms(100), 32 * MIB),
            // A slow receiver nearby (fluentd, ~10 MB/s) stays at the floor whatever it
            // takes to ack: 10 MiB/s x 200 ms x 2 = 4 MiB.
            (512 * 1024, ms(50), ms(200), 8 * MIB),
        ];
        for (size, gap, rtt, want) in cases {
            let mut p = Pace::new(8 * MIB, 32 * MIB);
            let got = run(&mut p, t0, 200, size, gap, rtt);
            // Rates are measured over whole intervals: within 5% of the exact product.
            let diff = (got as f64 - want as f64).abs() / want as f64;
            assert!(
                diff < 0.05,
                "{size} every {gap:?}, rtt {rtt:?}: window {got}, want {want}"
            );
        }
    }

    #[test]
    fn starts_at_the_floor_and_a_cap_below_it_wins() {
        assert_eq!(Pace::new(8 * MIB, 32 * MIB).window(), 8 * MIB);
        let mut p = Pace::new(8 * MIB, 2 * MIB);
        assert_eq!(p.window(), 2 * MIB);
        let t0 = Instant::now();
        assert_eq!(run(&mut p, t0, 100, 512 * 1024, ms(6), ms(100)), 2 * MIB);
    }

    #[test]
    fn a_window_limited_rate_grows_the_window_round_by_round() {
        // The receiver is 100 ms away and the link carries 320 MiB/s (512 KiB per 1.5625 ms),
        // but the window lets only `window` bytes out per round trip. Chunks go out as acks
        // free room (ack-clocked, as the pipeline sends), one at a time through the link.
        let (chunk, link, rtt) = (512 * 1024, Duration::from_micros(1562), ms(100));
        let t0 = Instant::now();
        let mut p = Pace::new(8 * MIB, 32 * MIB);
        let mut in_flight = std::collections::VecDeque::new();
        let (mut now, mut link_free) = (t0, t0);
        let mut sizes = vec![];
        let mut next_look = t0;
        while now < t0 + Duration::from_secs(2) {
            while (in_flight.len() + 1) * chunk <= p.window() {
                let sent = now.max(link_free) + link;
                link_free = sent;
                in_flight.push_back(sent);
            }
            let Some(sent) = in_flight.pop_front() else {
                break;
            };
            now = sent + rtt;
            p.on_ack(chunk, sent, now);
            if now >= next_look {
                sizes.push(p.window() / MIB);
                next_look += rtt;
            }
        }
        assert!(sizes.windows(2).all(|w| w[0] <= w[1]), "{sizes:?}");
        // Within a second (ten round trips) the window is the cap; it stays there.
        assert!(sizes.len() >= 15, "{sizes:?}");
        assert!(sizes[10..].iter().all(|&w| w == 32), "{sizes:?}");
        assert_eq!(sizes[0], 8, "{sizes:?}");
    }

    #[test]
    fn idle_forgets_the_rate_and_an_old_round_trip_expires() {
        let t0 = Instant::now();
        let mut p = Pace::new(8 * MIB, 32 * MIB);
        assert_eq!(
            run(
                &mut p,
                t0,
                200,
                512 * 1024,
                Duration::from_micros(6250),
                ms(100)
            ),
            16 * MIB
        );
        p.idle();
        assert_eq!(p.window(), 8 * MIB);
        // The path gets longer: 200 ms. Within ten seconds the 100 ms minimum holds (16 MiB at
        // the same rate); after, the new round trip counts (32 MiB).
        let t1 = t0 + ms(2000);
        assert_eq!(
            run(
                &mut p,
                t1,
                200,
                512 * 1024,
                Duration::from_micros(6250),
                ms(200)
            ),
            16 * MIB
        );
        let t2 = t0 + Duration::from_secs(12);
        assert_eq!(
            run(
                &mut p,
                t2,
                200,
                512 * 1024,
                Duration::from_micros(6250),
                ms(200)
            ),
            32 * MIB
        );
    }

    #[test]
    fn clock_oddities_do_not_panic_or_explode() {
        let t0 = Instant::now();
        let mut p = Pace::new(8 * MIB, 32 * MIB);
        // An ack "before" its write (never happens with a monotonic clock, but must not
        // panic), and a zero round trip: the floor holds.
        p.on_ack(512 * 1024, t0 + ms(5), t0);
        p.on_ack(usize::MAX, t0, t0);
        assert_eq!(p.window(), 8 * MIB);
        // The zero round trip seen stays the minimum: whatever the rate, the floor.
        p.on_ack(usize::MAX, t0, t0 + ms(10));
        assert_eq!(p.window(), 8 * MIB);
        // An absurd rate over a real round trip saturates, and the cap holds it.
        let mut p = Pace::new(8 * MIB, 32 * MIB);
        p.on_ack(usize::MAX, t0, t0 + ms(10));
        assert_eq!(p.window(), 32 * MIB);
    }
}
