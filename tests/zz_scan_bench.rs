use audit_forwarder::forward::msgpack::{value_len, Limits};
use audit_forwarder::forward::transcode::{append_entry, now_event_time};
#[test]
#[ignore]
fn scan_bench() {
    let data = std::fs::read("/tmp/pf/small.log").unwrap();
    let now = now_event_time();
    let mut out = Vec::new();
    for l in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        append_entry(l, now, &mut out);
    }
    let limits = Limits {
        max_len: 64 << 20,
        max_depth: 512,
    };
    let mut best = f64::MAX;
    let mut n = 0;
    for _ in 0..15 {
        let t = cpu();
        let mut at = 0;
        n = 0;
        while at < out.len() {
            at += value_len(&out[at..], &limits).unwrap().unwrap();
            n += 1;
        }
        best = best.min(cpu() - t);
    }
    eprintln!(
        "SCAN {n} entries best {:.1} ms = {:.3} s/GB",
        best * 1e3,
        best / (out.len() as f64 / 1e9)
    );
}
fn cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
