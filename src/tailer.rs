//! The receiving side (`audit-forwarder tailer`): a Fluent Forward server that prints each record
//! it receives as one JSON line on stdout and acks a chunk only after its records reached stdout.
//! Owns the listening socket, its clients and the stdout writer; decoding is `forward`'s job.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::forward;
use crate::msgpack::{self, Limits, Scanner};

#[allow(dead_code)]
pub struct TailerArgs {
    /// `host:port`; host may be a name, an IPv4 address or a bracketed IPv6 address.
    pub listen: String,
    /// Count records instead of printing them (for benchmarks).
    pub discard: bool,
}

/// Largest single Forward message we buffer; fluentd's default chunk limit is 8 MiB and
/// fluent-bit's is smaller, so this leaves room without letting a peer take unbounded memory.
const MAX_MESSAGE: usize = 64 << 20;
const READ_STEP: usize = 64 << 10;
/// Cap on the entries of one CompressedPackedForward message once inflated.
const MAX_DECOMPRESSED: usize = 256 << 20;
/// Acks a client has not read yet; a client this far behind is not reading at all.
const MAX_PENDING_ACKS: usize = 1 << 20;
/// Buffer capacity kept between messages; more is returned to the allocator.
const KEEP_CAPACITY: usize = 1 << 20;
const STATS_EVERY: Duration = Duration::from_secs(1);
const LIMITS: Limits = Limits {
    max_len: MAX_MESSAGE,
    max_depth: msgpack::DEFAULT_MAX_DEPTH,
};
const LISTENER: Token = Token(0);

#[derive(Debug)]
pub enum Error {
    Resolve {
        addr: String,
        source: io::Error,
    },
    NoAddress {
        addr: String,
    },
    Bind {
        addr: SocketAddr,
        source: io::Error,
    },
    Poll(io::Error),
    /// Writing records to stdout failed (EPIPE when the reader went away).
    Output(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Resolve { addr, source } => {
                write!(f, "tailer: resolving --listen {addr}: {source}")
            }
            Error::NoAddress { addr } => {
                write!(f, "tailer: --listen {addr} resolves to no address")
            }
            Error::Bind { addr, source } => write!(f, "tailer: listening on {addr}: {source}"),
            Error::Poll(e) => write!(f, "tailer: poll: {e}"),
            Error::Output(e) => write!(f, "tailer: writing records to stdout: {e}"),
        }
    }
}

impl std::error::Error for Error {}

#[allow(dead_code)]
/// Binds the first address `args.listen` resolves to and serves until stdout fails.
pub fn run(args: &TailerArgs) -> Result<(), Error> {
    let addr = args
        .listen
        .to_socket_addrs()
        .map_err(|source| Error::Resolve {
            addr: args.listen.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| Error::NoAddress {
            addr: args.listen.clone(),
        })?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
    info!("tailer: listening on {addr}");
    let out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    serve(listener, args.discard, out)
}

/// The event loop. Returns only on a fatal error: poll failure or an unwritable `out`.
pub fn serve(listener: std::net::TcpListener, discard: bool, out: impl Write) -> Result<(), Error> {
    listener.set_nonblocking(true).map_err(Error::Poll)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new().map_err(Error::Poll)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .map_err(Error::Poll)?;
    let mut events = Events::with_capacity(256);
    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut sink = Sink {
        out,
        discard,
        scratch: Vec::new(),
        line: Vec::new(),
        acks: Vec::new(),
        read_buf: vec![0; READ_STEP].into_boxed_slice(),
        records: 0,
        bytes: 0,
    };
    let mut next_stats = Instant::now() + STATS_EVERY;
    let mut logged = (0, 0);

    loop {
        let timeout = discard.then(|| next_stats.saturating_duration_since(Instant::now()));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::Poll(e)),
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, &mut clients);
                continue;
            }
            let idx = event.token().0 - 1;
            let Some(client) = clients.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            let mut verdict = Verdict::Keep;
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                verdict = client.on_readable(&mut sink)?;
            }
            if let Verdict::Keep = verdict {
                verdict = client.write_acks();
            }
            if let Verdict::Keep = verdict {
                verdict = client.update_interest(&poll, event.token());
            }
            if let Verdict::Keep = verdict {
                continue;
            }
            if let Some(mut client) = clients[idx].take() {
                client.close(&poll, verdict);
            }
        }
        if discard && Instant::now() >= next_stats {
            if (sink.records, sink.bytes) != logged {
                logged = (sink.records, sink.bytes);
                info!("tailer: records={} bytes={}", sink.records, sink.bytes);
            }
            next_stats = Instant::now() + STATS_EVERY;
        }
    }
}

fn accept_all(listener: &TcpListener, poll: &Poll, clients: &mut Vec<Option<Client>>) {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: the connection stays queued and is retried on the next
                // readiness of the listener.
                warn!("tailer: accept failed: {e}");
                return;
            }
        };
        // Acks are tiny writes the sender waits for; Nagle would hold them back.
        if let Err(e) = stream.set_nodelay(true) {
            warn!("tailer: client {peer}: TCP_NODELAY: {e}");
        }
        let idx = clients.iter().position(Option::is_none).unwrap_or_else(|| {
            clients.push(None);
            clients.len() - 1
        });
        let token = Token(idx + 1);
        if let Err(e) = poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            warn!("tailer: client {peer}: cannot register: {e}");
            continue;
        }
        info!("tailer: client {peer} connected");
        clients[idx] = Some(Client {
            stream,
            peer,
            rbuf: Vec::new(),
            scanner: Scanner::new(),
            wbuf: Vec::new(),
            wpos: 0,
            eof: false,
            interest: Interest::READABLE,
        });
    }
}

/// What happens to a client after an event.
enum Verdict {
    Keep,
    /// Ordinary end of a connection (logged at info).
    Done(String),
    /// The peer broke the protocol or the socket failed (logged as a warning).
    Fail(String),
}

struct Client {
    stream: TcpStream,
    peer: SocketAddr,
    /// Received bytes; starts at a message boundary.
    rbuf: Vec<u8>,
    scanner: Scanner,
    /// Encoded acks; `wbuf[wpos..]` is still to be sent.
    wbuf: Vec<u8>,
    wpos: usize,
    /// The peer shut down its sending side; we stay only to deliver pending acks.
    eof: bool,
    interest: Interest,
}

/// Where records go, plus the buffers reused across messages.
struct Sink<W> {
    out: W,
    discard: bool,
    scratch: Vec<u8>,
    line: Vec<u8>,
    acks: Vec<u8>,
    read_buf: Box<[u8]>,
    records: u64,
    /// Bytes received from all clients.
    bytes: u64,
}

impl Client {
    /// Drains the socket until WouldBlock, delivering complete messages as they pile up.
    fn on_readable<W: Write>(&mut self, sink: &mut Sink<W>) -> Result<Verdict, Error> {
        loop {
            if self.rbuf.len() >= MAX_MESSAGE {
                let verdict = self.deliver(sink)?;
                if !matches!(verdict, Verdict::Keep) {
                    return Ok(verdict);
                }
                if self.rbuf.len() >= MAX_MESSAGE {
                    return Ok(Verdict::Fail(format!(
                        "message larger than {MAX_MESSAGE} bytes"
                    )));
                }
            }
            match self.stream.read(&mut sink.read_buf) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&sink.read_buf[..n]);
                    sink.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Acks for what we already printed are still worth trying to deliver.
                    self.deliver(sink)?;
                    return Ok(Verdict::Fail(format!("read: {e}")));
                }
            }
        }
        let verdict = self.deliver(sink)?;
        if !matches!(verdict, Verdict::Keep) || !self.eof {
            return Ok(verdict);
        }
        if !self.rbuf.is_empty() {
            return Ok(Verdict::Fail(format!(
                "closed the connection inside a message ({} bytes pending)",
                self.rbuf.len()
            )));
        }
        Ok(Verdict::Keep)
    }

    /// Prints the records of every complete message in `rbuf`, flushes them, and only then
    /// queues the acks, so an acked chunk is on stdout even if we die right after.
    fn deliver<W: Write>(&mut self, sink: &mut Sink<W>) -> Result<Verdict, Error> {
        let mut start = 0;
        let mut verdict = Verdict::Keep;
        let mut printed = false;
        sink.acks.clear();
        loop {
            match self.scanner.scan(&self.rbuf[start..], &LIMITS) {
                Ok(Some(n)) => {
                    let msg = &self.rbuf[start..start + n];
                    start += n;
                    match sink.message(msg)? {
                        Ok(any) => printed |= any,
                        Err(why) => {
                            verdict = Verdict::Fail(why);
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    verdict = Verdict::Fail(format!("not a msgpack message: {e}"));
                    break;
                }
            }
        }
        self.rbuf.drain(..start);
        // A single large message must not pin its buffers for the life of the connection.
        self.rbuf.shrink_to(KEEP_CAPACITY);
        sink.scratch.clear();
        sink.scratch.shrink_to(KEEP_CAPACITY);
        if printed {
            sink.out.flush().map_err(Error::Output)?;
        }
        self.wbuf.extend_from_slice(&sink.acks);
        if self.wbuf.len() - self.wpos > MAX_PENDING_ACKS {
            return Ok(Verdict::Fail(format!(
                "not reading its acks ({} bytes pending)",
                self.wbuf.len() - self.wpos
            )));
        }
        Ok(verdict)
    }

    fn write_acks(&mut self) -> Verdict {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Verdict::Fail("write: connection accepts no more bytes".into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Verdict::Keep,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Verdict::Fail(format!("write: {e}")),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.eof {
            return Verdict::Done("closed by peer".into());
        }
        Verdict::Keep
    }

    /// WRITABLE only while acks wait for socket space; READABLE until the peer's EOF.
    fn update_interest(&mut self, poll: &Poll, token: Token) -> Verdict {
        let pending = self.wpos < self.wbuf.len();
        let want = match (self.eof, pending) {
            (false, false) => Interest::READABLE,
            (false, true) => Interest::READABLE | Interest::WRITABLE,
            (true, true) => Interest::WRITABLE,
            (true, false) => return Verdict::Done("closed by peer".into()),
        };
        if want != self.interest {
            if let Err(e) = poll.registry().reregister(&mut self.stream, token, want) {
                return Verdict::Fail(format!("reregister: {e}"));
            }
            self.interest = want;
        }
        Verdict::Keep
    }

    fn close(&mut self, poll: &Poll, verdict: Verdict) {
        // One last non-blocking attempt for acks of records already printed; the peer resends
        // whatever it does not see acked, so a failure here costs duplicates, not loss.
        if self.wpos < self.wbuf.len() {
            let _ = self.stream.write(&self.wbuf[self.wpos..]);
        }
        // Dropping the stream closes it, which also removes it from the poll set.
        let _ = poll.registry().deregister(&mut self.stream);
        match verdict {
            Verdict::Keep => info!("tailer: client {} disconnected", self.peer),
            Verdict::Done(why) => info!("tailer: client {} disconnected: {why}", self.peer),
            Verdict::Fail(why) => warn!("tailer: client {} disconnected: {why}", self.peer),
        }
    }
}

impl<W: Write> Sink<W> {
    /// Handles one complete message: `Ok(Err(why))` if the peer sent something invalid,
    /// `Ok(Ok(printed_any))` otherwise; `Err` only when `out` fails.
    fn message(&mut self, msg: &[u8]) -> Result<Result<bool, String>, Error> {
        let Sink {
            out,
            discard,
            scratch,
            line,
            acks,
            records,
            ..
        } = self;
        let req = match forward::decode_request(msg, MAX_DECOMPRESSED, scratch) {
            Ok(req) => req,
            Err(e) => return Ok(Err(format!("invalid Forward message: {e}"))),
        };
        for (_time, record) in req.entries() {
            *records += 1;
            if *discard {
                continue;
            }
            line.clear();
            if let Err(e) = msgpack::write_json(record, line) {
                return Ok(Err(format!("record: {e}")));
            }
            line.push(b'\n');
            out.write_all(line).map_err(Error::Output)?;
        }
        if let Some(chunk) = req.chunk {
            forward::encode_ack(chunk, acks);
        }
        Ok(Ok(!*discard && req.count > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpStream as StdStream};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            let out = self.0.lock().unwrap();
            std::str::from_utf8(&out)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn start(
        discard: bool,
        out: impl Write + Send + 'static,
    ) -> (SocketAddr, std::thread::JoinHandle<Result<(), Error>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (
            addr,
            std::thread::spawn(move || serve(listener, discard, out)),
        )
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Audit events from the shared samples (the lines that are JSON objects).
    fn sample_events(n: usize) -> Vec<serde_json::Value> {
        let dir = [
            concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"),
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared"),
        ]
        .iter()
        .map(|d| std::path::Path::new(d).join("samples/falco-k8s-audit"))
        .find(|d| d.is_dir())
        .expect("shared/samples/falco-k8s-audit not found next to the checkout");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        let mut events = Vec::new();
        for p in paths {
            for line in std::fs::read_to_string(p).unwrap().lines() {
                if let Ok(v @ serde_json::Value::Object(_)) = serde_json::from_str(line) {
                    events.push(v);
                }
            }
        }
        assert!(events.len() >= n);
        events.truncate(n);
        events
    }

    fn packed(events: &[serde_json::Value], chunk: &str, compressed: bool) -> Vec<u8> {
        let mut entries = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            rmp::encode::write_array_len(&mut entries, 2).unwrap();
            rmp::encode::write_uint(&mut entries, 1_700_000_000 + i as u64).unwrap();
            msgpack::tests::encode_json(ev, &mut entries);
        }
        if compressed {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            g.write_all(&entries).unwrap();
            entries = g.finish().unwrap();
        }
        let mut msg = Vec::new();
        forward::encode_packed_forward(
            "audit",
            &entries,
            events.len(),
            chunk,
            compressed,
            &mut msg,
        );
        msg
    }

    fn read_ack(s: &mut StdStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            if let Some((id, _)) = forward::parse_ack(&buf).unwrap() {
                return id.to_vec();
            }
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before the ack");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The server closed the connection: EOF or a reset, never data or a timeout.
    fn assert_closed(s: &mut StdStream) {
        let mut b = [0u8; 16];
        match s.read(&mut b) {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the server to close, got {other:?}"),
        }
    }

    #[test]
    fn prints_records_acks_chunks_and_survives_garbage() {
        let out = Shared::default();
        let (addr, _server) = start(false, out.clone());
        let events = sample_events(12);

        // A message split across two writes, then a compressed one on the same connection.
        let mut c1 = connect(addr);
        let msg = packed(&events[..5], "Y2h1bmstMQ==", false);
        c1.write_all(&msg[..msg.len() / 2]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        c1.write_all(&msg[msg.len() / 2..]).unwrap();
        assert_eq!(read_ack(&mut c1), b"Y2h1bmstMQ==");
        assert_eq!(
            out.lines(),
            events[..5],
            "records are on stdout before the ack"
        );
        c1.write_all(&packed(&events[5..8], "Y2h1bmstMg==", true))
            .unwrap();
        assert_eq!(read_ack(&mut c1), b"Y2h1bmstMg==");
        assert_eq!(out.lines(), events[..8]);

        // Garbage: the server drops this client only.
        let mut c2 = connect(addr);
        c2.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_closed(&mut c2);

        // A third client is served; it half-closes and still gets its ack before EOF.
        let mut c3 = connect(addr);
        c3.write_all(&packed(&events[8..12], "Y2h1bmstMw==", false))
            .unwrap();
        c3.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_ack(&mut c3), b"Y2h1bmstMw==");
        assert_closed(&mut c3);
        assert_eq!(out.lines(), events[..12]);

        // The first connection is still alive after all that.
        c1.write_all(&packed(&events[..1], "Y2h1bmstNA==", false))
            .unwrap();
        assert_eq!(read_ack(&mut c1), b"Y2h1bmstNA==");
        assert_eq!(out.lines().len(), 13);
    }

    #[test]
    fn pipelined_messages_get_acks_in_order() {
        let out = Shared::default();
        let (addr, _server) = start(false, out.clone());
        let events = sample_events(3);
        let mut c = connect(addr);
        let mut all = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            all.extend_from_slice(&packed(std::slice::from_ref(ev), &format!("id-{i}"), false));
        }
        c.write_all(&all).unwrap();
        for i in 0..3 {
            assert_eq!(read_ack_buffered(&mut c), format!("id-{i}").into_bytes());
        }
        assert_eq!(out.lines(), events);
    }

    /// Like `read_ack` but reads exactly one ack's bytes so pipelined acks are not swallowed:
    /// every ack here is `{"ack": "id-N"}`, 10 bytes.
    fn read_ack_buffered(s: &mut StdStream) -> Vec<u8> {
        let mut buf = [0u8; 10];
        s.read_exact(&mut buf).unwrap();
        let (id, used) = forward::parse_ack(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        id.to_vec()
    }

    #[test]
    fn discard_counts_and_still_acks() {
        let out = Shared::default();
        let (addr, _server) = start(true, out.clone());
        let mut c = connect(addr);
        c.write_all(&packed(&sample_events(4), "ZGlzY2FyZA==", false))
            .unwrap();
        assert_eq!(read_ack(&mut c), b"ZGlzY2FyZA==");
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn stdout_failure_stops_the_server() {
        let (addr, server) = start(false, Broken);
        let mut c = connect(addr);
        c.write_all(&packed(&sample_events(1), "ZXBpcGU=", false))
            .unwrap();
        assert_closed(&mut c);
        match server.join().unwrap() {
            Err(Error::Output(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected an output error, got {other:?}"),
        }
    }

    #[test]
    fn run_reports_unusable_listen_addresses() {
        let cases = [
            (
                "no port",
                "127.0.0.1",
                "tailer: resolving --listen 127.0.0.1:",
            ),
            (
                "bad port",
                "127.0.0.1:http",
                "tailer: resolving --listen 127.0.0.1:http:",
            ),
            (
                "not local",
                "192.0.2.1:0",
                "tailer: listening on 192.0.2.1:0:",
            ),
        ];
        for (name, listen, want) in cases {
            let args = TailerArgs {
                listen: listen.into(),
                discard: true,
            };
            let err = run(&args).expect_err(name);
            assert!(err.to_string().starts_with(want), "{name}: {err}");
        }
    }
}
