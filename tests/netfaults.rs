//! Network faults between the forwarder and the tailer, with real network namespaces: the
//! forwarder runs in namespace F, the tailer in namespace T (`ip netns exec`), a veth pair
//! between them (F 198.18.0.2, T 198.18.0.1, RFC 2544's benchmarking range; both ends live in
//! the two private namespaces, so the host's own network is never touched). Each case streams
//! events while the fault is on and asserts that every event reached the tailer, first
//! arrivals in order: 50 ms delay each way, 5% packet loss each way, a 60-second partition
//! mid-stream then healing, and the tailer's address disappearing and coming back.
//!
//! Faults use `tc netem` when the kernel has it. Without sch_netem (this is said on stderr,
//! uncaptured): delay comes from [`DelayRelay`], a userspace TCP relay in T that holds every
//! byte 50 ms before passing it on, each way, so the forwarder sees 100 ms between a chunk and
//! its ack but its TCP connection ends at the relay; loss comes from an nftables rule dropping
//! a random 5% of the packets on F's veth, each way. The partition is an nftables rule dropping
//! everything on F's veth (TCP sees silence, never a reset); without nft the veth is set down.
//! Without root or `ip netns`, every case prints SKIPPED with the reason and passes.
//!
//! `just netbench` runs the ignored `netbench_*` case: throughput over the veth with and without
//! the 50 ms delay, and their ratio. It prints numbers and asserts none.

mod common;

use common::*;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const TAILER_IP: &str = "198.18.0.1";
const FORWARDER_IP: &str = "198.18.0.2";
/// The veth ends: `VF` in F, `VT` in T (names are per namespace, so every case uses the same).
const VF: &str = "fwd0";
const VT: &str = "tlr0";
const DELAY: Duration = Duration::from_millis(50);
const PARTITION: Duration = Duration::from_secs(60);

/// Written to the process's stderr directly: the test harness captures `eprintln!` of passing
/// tests, and a skipped case or a substituted fault must be seen in CI's log.
fn loud(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

/// Runs `cmd`; Err with its stderr when it cannot start or fails.
fn run(cmd: &[&str]) -> Result<(), String> {
    run_input(cmd, "")
}

fn run_input(cmd: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{}: writing its input: {e}", cmd.join(" ")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", cmd.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            cmd.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn output(cmd: &[&str]) -> String {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The two namespaces and the veth between them; deleted on drop (also when a case panics).
struct Net {
    f: String,
    t: String,
}

impl Net {
    /// Err says why namespaces cannot be made here (the caller skips).
    fn new(label: &str) -> Result<Net, String> {
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: `ip netns add` needs CAP_SYS_ADMIN and CAP_NET_ADMIN".into());
        }
        let pid = std::process::id();
        let net = Net {
            f: format!("af-{label}-f-{pid}"),
            t: format!("af-{label}-t-{pid}"),
        };
        for ns in [&net.f, &net.t] {
            // A namespace of that name left by an earlier process with our pid.
            let _ = run(&["ip", "netns", "del", ns]);
            run(&["ip", "netns", "add", ns])?;
        }
        // Namespaces work: from here on a failure is the test's, not the machine's.
        let (f, t) = (net.f.as_str(), net.t.as_str());
        let must = |cmd: &[&str]| run(cmd).unwrap_or_else(|e| panic!("{e}"));
        must(&[
            "ip", "-n", f, "link", "add", VF, "type", "veth", "peer", "name", VT, "netns", t,
        ]);
        for (ns, dev, ip) in [(f, VF, FORWARDER_IP), (t, VT, TAILER_IP)] {
            let cidr = format!("{ip}/24");
            must(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
            must(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        Ok(net)
    }

    /// `ip netns exec NS <binary>`: a launcher for the harness (ip execs, so the child's pid is
    /// the binary's and the harness's signals reach it).
    fn exec_in(ns: &str) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), ns.into(), bin()]
    }

    fn nft(&self, ns: &str, script: &str) -> Result<(), String> {
        run_input(&["ip", "netns", "exec", ns, "nft", "-f", "-"], script)
    }

    /// `tc qdisc add dev DEV root netem ARGS` on both veth ends; Err (nothing left applied) when
    /// the kernel has no sch_netem.
    fn netem_both(&self, args: &[&str]) -> Result<(), String> {
        for (ns, dev) in [(&self.f, VF), (&self.t, VT)] {
            let mut cmd = vec!["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "netem"];
            cmd.extend(args);
            if let Err(e) = run(&cmd) {
                let _ = run(&["tc", "-n", &self.f, "qdisc", "del", "dev", VF, "root"]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Packets dropped so far by the counters of nft table `table` in F.
    fn nft_dropped(&self, table: &str) -> u64 {
        let text = output(&[
            "ip", "netns", "exec", &self.f, "nft", "list", "table", "inet", table,
        ]);
        text.split("packets ")
            .skip(1)
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Cuts F off: every packet on F's veth is dropped, both ways, so TCP sees silence (no
    /// reset, no unreachable). Returns how it was done, for the heal.
    fn partition(&self) -> Partition {
        let script = format!(
            "table inet af_partition {{\n\
             chain out {{ type filter hook output priority 0; oifname \"{VF}\" counter drop; }}\n\
             chain in {{ type filter hook input priority 0; iifname \"{VF}\" counter drop; }}\n\
             }}\n"
        );
        match self.nft(&self.f, &script) {
            Ok(()) => Partition::Nft,
            Err(e) => {
                loud(&format!(
                    "NOTE netfaults: no nftables ({e}); the partition is both veth ends set down \
                     instead of dropping packets"
                ));
                for (ns, dev) in [(&self.f, VF), (&self.t, VT)] {
                    run(&["ip", "-n", ns, "link", "set", dev, "down"]).expect("veth down");
                }
                Partition::LinkDown
            }
        }
    }

    fn heal(&self, how: Partition) {
        match how {
            Partition::Nft => self
                .nft(&self.f, "delete table inet af_partition\n")
                .expect("remove the partition rule"),
            Partition::LinkDown => {
                for (ns, dev, ip) in [(&self.f, VF, FORWARDER_IP), (&self.t, VT, TAILER_IP)] {
                    run(&["ip", "-n", ns, "link", "set", dev, "up"]).expect("veth up");
                    // Setting a link down keeps its addresses; re-adding is for kernels that
                    // dropped them and fails harmlessly otherwise.
                    let _ = run(&[
                        "ip",
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{ip}/24"),
                        "dev",
                        dev,
                    ]);
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace removes its veth end, and with it the peer.
        for ns in [&self.f, &self.t] {
            if let Err(e) = run(&["ip", "netns", "del", ns]) {
                eprintln!("[netfaults] {e}");
            }
        }
    }
}

enum Partition {
    Nft,
    LinkDown,
}

/// The namespaces for case `label`, or None after a SKIPPED line naming why.
fn net_or_skip(label: &str) -> Option<Net> {
    match Net::new(label) {
        Ok(n) => Some(n),
        Err(why) => {
            loud(&format!("SKIPPED netfaults {label}: {why}"));
            None
        }
    }
}

/// Moves the calling thread into namespace `name`; sockets it creates afterwards live there.
fn enter_netns(name: &str) -> io::Result<()> {
    let ns = File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns(2) on a namespace fd we hold open for the call; CLONE_NEWNET changes only
    // the calling thread's network namespace (the relay's own thread), never the test's.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The delay fallback for kernels without sch_netem: a TCP relay in namespace `ns` (the
/// tailer's) that accepts on `listen`, connects each client to `upstream`, and passes every
/// byte on `delay` after it was read, in each direction. Unlike netem, the forwarder's TCP
/// connection ends at the relay, so what is delayed is the data and its acks, not TCP's own
/// segments and ACKs.
struct DelayRelay {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl DelayRelay {
    fn start(ns: &str, listen: SocketAddr, upstream: SocketAddr, delay: Duration) -> DelayRelay {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let (ns, halt) = (ns.to_string(), stop.clone());
        let accept = thread::spawn(move || {
            let listener = enter_netns(&ns)
                .and_then(|()| TcpListener::bind(listen))
                .and_then(|l| l.set_nonblocking(true).map(|()| l));
            let listener = match listener {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("relay on {listen} in {ns}: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            while !halt.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        // Connected from this thread, so in the same namespace.
                        let Ok(up) = TcpStream::connect_timeout(&upstream, secs(5)) else {
                            continue;
                        };
                        let _ = down.set_nonblocking(false);
                        let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                            continue;
                        };
                        delay_line(down, up, delay);
                        delay_line(up2, down2, delay);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ms(10)),
                    Err(_) => thread::sleep(ms(10)),
                }
            }
        });
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("the relay thread died before listening"),
        }
        DelayRelay {
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One direction of the relay: a reader stamps what it reads, a writer sends it on at stamp +
/// `delay`. The end of `from` becomes a half close of `to`; a failed write closes both.
fn delay_line(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Option<Vec<u8>>)>();
    let Ok(from_for_writer) = from.try_clone() else {
        return;
    };
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let got = match from.read(&mut buf) {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            };
            let end = got.is_none();
            if tx.send((Instant::now(), got)).is_err() || end {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (at, data) in rx {
            let due = at + delay;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            match data {
                Some(d) => {
                    if to.write_all(&d).is_err() {
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from_for_writer.shutdown(Shutdown::Both);
                        break;
                    }
                }
                None => {
                    let _ = to.shutdown(Shutdown::Write);
                    break;
                }
            }
        }
    });
}

/// How the forwarder reaches the tailer in a case: straight over the veth (netem, nft or
/// nothing in between), or through a [`DelayRelay`] in T that must live as long.
struct Path {
    target: String,
    _relay: Option<DelayRelay>,
}

impl Path {
    fn direct(port: u16) -> Path {
        Path {
            target: format!("{TAILER_IP}:{port}"),
            _relay: None,
        }
    }

    fn relayed(net: &Net, port: u16, delay: Duration) -> Path {
        let relay_port = free_port();
        let listen: SocketAddr = format!("{TAILER_IP}:{relay_port}").parse().expect("addr");
        let upstream: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        Path {
            target: listen.to_string(),
            _relay: Some(DelayRelay::start(&net.t, listen, upstream, delay)),
        }
    }
}

/// 50 ms each way: netem on both veth ends, or the relay.
fn delayed_path(net: &Net, port: u16, delay: Duration) -> Path {
    let ms = format!("{}ms", delay.as_millis());
    // limit: packets netem may hold; the default 1000 is less than 100 ms of a fast stream.
    match net.netem_both(&["delay", &ms, "limit", "100000"]) {
        Ok(()) => Path::direct(port),
        Err(e) => {
            loud(&format!(
                "NOTE netfaults: no tc netem here ({e}); the {ms} delay each way is emulated by \
                 a userspace TCP relay in the tailer's namespace (data and acks delayed, not \
                 TCP segments)"
            ));
            Path::relayed(net, port, delay)
        }
    }
}

/// A thread appending `batch` events every `every` until stopped; returns what it wrote.
struct Stream {
    stop: Arc<AtomicBool>,
    writer: JoinHandle<Vec<String>>,
}

impl Stream {
    fn start(mut w: AuditWriter, batch: u64, every: Duration) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let writer = thread::spawn(move || {
            let mut written = Vec::new();
            let mut seq = 0;
            while !halt.load(Ordering::SeqCst) {
                let lines = audit_events(seq..seq + batch);
                w.write_lines(&lines);
                written.extend(lines);
                seq += batch;
                thread::sleep(every);
            }
            written
        });
        Stream { stop, writer }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.writer.join().expect("writer thread")
    }
}

/// The tailer in T listening on all of T's addresses (the later `--listen` wins).
fn tailer_in(net: &Net, port: u16, extra: &[&str]) -> Tailer {
    let mut args = vec!["--listen".to_string(), format!("0.0.0.0:{port}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    Tailer::start_launched(port, args, Net::exec_in(&net.t))
}

/// The forwarder in F with default timeouts (the faults must be survived as deployed), sending
/// to `target`.
fn forwarder_in(net: &Net, log: &std::path::Path, target: &str, extra: &[&str]) -> Forwarder {
    let mut more = vec!["--target", target];
    more.extend(extra);
    Forwarder::start_launched(fwd_args(log, 1, &more), &[], Net::exec_in(&net.f))
}

/// Streams events from a forwarder in F to a tailer in T over `path`; once records flow, runs
/// `fault` (which returns when the network is whole again), then stops the stream and asserts
/// that every event arrived, first arrivals in order.
fn stream_through(
    net: &Net,
    name: &str,
    path: impl FnOnce(u16) -> Path,
    batch: u64,
    fault: impl FnOnce(&Tailer),
) {
    let dir = TempDir::new(name);
    let w = AuditWriter::create(&dir.join("log"));
    let log = w.log_path();
    let port = free_port();
    let tailer = tailer_in(net, port, &[]);
    let path = path(port);
    let mut fwd = forwarder_in(net, &log, &path.target, &[]);
    let stream = Stream::start(w, batch, ms(100));
    assert!(
        tailer.wait_for(batch as usize * 5, secs(60)),
        "{name}: no records flowing before the fault ({} received)",
        tailer.line_count()
    );
    fault(&tailer);
    fwd.assert_alive(name);
    // Some events written after the network is whole again.
    thread::sleep(secs(2));
    let expected = stream.finish();
    expect_all_within(&tailer, &mut fwd, &expected, name, secs(150));
    assert_delivered(&expected, &tailer.records(), true);
    fwd.term_ok();
}

#[test]
fn delay_50ms_each_way() {
    let Some(net) = net_or_skip("delay") else {
        return;
    };
    stream_through(
        &net,
        "delay",
        |port| delayed_path(&net, port, DELAY),
        100,
        |_| thread::sleep(secs(10)),
    );
}

#[test]
fn loss_5_percent_each_way() {
    let Some(net) = net_or_skip("loss") else {
        return;
    };
    let counted = match net.netem_both(&["loss", "5%"]) {
        Ok(()) => false,
        Err(e) => {
            let script = format!(
                "table inet af_loss {{\n\
                 chain out {{ type filter hook output priority 0; oifname \"{VF}\" numgen random mod 100 < 5 counter drop; }}\n\
                 chain in {{ type filter hook input priority 0; iifname \"{VF}\" numgen random mod 100 < 5 counter drop; }}\n\
                 }}\n"
            );
            if let Err(nft) = net.nft(&net.f, &script) {
                loud(&format!(
                    "SKIPPED netfaults loss: neither tc netem ({e}) nor nftables ({nft}) can drop \
                     packets at random here"
                ));
                return;
            }
            loud(&format!(
                "NOTE netfaults: no tc netem here ({e}); 5% loss each way is an nftables \
                 `numgen random mod 100 < 5 drop` on the forwarder's veth"
            ));
            true
        }
    };
    stream_through(&net, "loss", Path::direct, 100, |_| thread::sleep(secs(10)));
    if counted {
        let dropped = net.nft_dropped("af_loss");
        assert!(
            dropped > 0,
            "the loss rule dropped no packet: nothing was tested"
        );
        eprintln!("[netfaults] loss: {dropped} packets dropped");
    }
}

#[test]
fn partition_of_60s_mid_stream_then_healed() {
    let Some(net) = net_or_skip("part") else {
        return;
    };
    stream_through(&net, "partition", Path::direct, 20, |tailer| {
        let how = net.partition();
        let started = Instant::now();
        // What was already in T's socket buffers may still come out; after that, nothing.
        thread::sleep(secs(3));
        let before = tailer.line_count();
        thread::sleep(PARTITION.saturating_sub(started.elapsed()));
        let after = tailer.line_count();
        net.heal(how);
        assert_eq!(
            before, after,
            "records reached the tailer through the partition: it was not one"
        );
    });
}

#[test]
fn tailer_address_disappears_then_returns() {
    let Some(net) = net_or_skip("addr") else {
        return;
    };
    let cidr = format!("{TAILER_IP}/24");
    stream_through(&net, "address", Path::direct, 50, |tailer| {
        run(&["ip", "-n", &net.t, "addr", "del", &cidr, "dev", VT]).expect("delete the address");
        thread::sleep(secs(3));
        let before = tailer.line_count();
        thread::sleep(secs(20));
        let after = tailer.line_count();
        run(&["ip", "-n", &net.t, "addr", "add", &cidr, "dev", VT]).expect("re-add the address");
        assert_eq!(
            before, after,
            "records reached the tailer while its address was gone"
        );
    });
}

/// `just netbench`: one corpus (AF_NETBENCH_MB, default 400) forwarded from F to a discarding
/// tailer in T, over the bare veth and with 50 ms each way (netem, or the relay; with the relay
/// also through the relay without delay, the fair baseline for it). Prints MB/s and ratios.
#[test]
#[ignore = "measurement, run by `just netbench`"]
fn netbench_throughput_with_and_without_50ms_delay() {
    let Some(net) = net_or_skip("bench") else {
        return;
    };
    let mb: u64 = std::env::var("AF_NETBENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let dir = TempDir::new("netbench");
    let mut w = AuditWriter::create(&dir.join("log"));
    let mut lines = 0u64;
    while w.offset < mb * 1_000_000 {
        w.write_lines(&audit_events(lines..lines + 1000));
        lines += 1000;
    }
    let bytes = w.offset;
    let runs: usize = std::env::var("AF_NETBENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let netem = net.netem_both(&["delay", "0ms"]).is_ok();
    // (what, delay each way, through the relay); the last two are the ratio's pair.
    let configs: &[(&str, Duration, bool)] = if netem {
        &[
            ("veth, no delay", Duration::ZERO, false),
            ("veth, netem 50 ms each way", DELAY, false),
        ]
    } else {
        &[
            ("veth, no delay", Duration::ZERO, false),
            ("relay, no delay", Duration::ZERO, true),
            ("relay, 50 ms each way", DELAY, true),
        ]
    };
    let port = free_port();
    let tailer = tailer_in(&net, port, &["--discard"]);
    let mut samples = vec![Vec::new(); configs.len()];
    // Interleaved, so that a change in the shared machine's load hits every configuration.
    for run_no in 0..runs {
        for (i, &(what, delay, relayed)) in configs.iter().enumerate() {
            let path = if relayed {
                Path::relayed(&net, port, delay)
            } else {
                if netem {
                    let d = format!("{}ms", delay.as_millis());
                    for (ns, dev) in [(&net.f, VF), (&net.t, VT)] {
                        run(&[
                            "tc", "-n", ns, "qdisc", "change", "dev", dev, "root", "netem",
                            "delay", &d, "limit", "100000",
                        ])
                        .expect("netem delay");
                    }
                }
                Path::direct(port)
            };
            let run_dir = dir.join(&format!("run-{run_no}-{i}"));
            std::fs::create_dir_all(&run_dir).expect("run dir");
            let log = run_dir.join("audit.log");
            std::fs::hard_link(w.log_path(), &log).expect("link the corpus");
            let mb_s = forward_corpus(&net, &log, &path, lines, bytes);
            loud(&format!("netbench: run {run_no}: {what}: {mb_s:.1} MB/s"));
            samples[i].push(mb_s);
        }
    }
    drop(tailer);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let medians: Vec<f64> = samples.iter_mut().map(median).collect();
    for (&(what, _, _), m) in configs.iter().zip(&medians) {
        loud(&format!("netbench: {what}: median {m:.1} MB/s"));
    }
    let n = medians.len();
    loud(&format!(
        "netbench: {} MB corpus ({lines} events), {runs} runs (medians): 50 ms delay / no \
         delay = {:.0}% ({})",
        bytes / 1_000_000,
        100.0 * medians[n - 1] / medians[n - 2],
        if netem {
            "netem"
        } else {
            "userspace relay both ways, no netem in this kernel"
        }
    ));
}

/// Forwards the corpus at `log` and returns MB/s between the acks of its first and its last
/// tenth: the steady rate, without the start-up and the last round trip, which on a
/// sub-second run would otherwise count as much as the window.
fn forward_corpus(net: &Net, log: &std::path::Path, path: &Path, lines: u64, bytes: u64) -> f64 {
    let mut fwd = forwarder_in(net, log, &path.target, &["--stats-interval", "20ms"]);
    let acked = |f: &Forwarder| {
        f.stats()
            .last()
            .and_then(|s| s.get("records_acked").copied())
            .unwrap_or(0)
    };
    let mut at = Vec::new();
    for tenths in [1, 9] {
        let done = wait_until(secs(600), || acked(&fwd) >= lines * tenths / 10);
        assert!(done, "{tenths}/10 of the corpus not acked within 600 s");
        at.push(Instant::now());
    }
    fwd.term_ok();
    0.8 * bytes as f64 / 1e6 / (at[1] - at[0]).as_secs_f64()
}
