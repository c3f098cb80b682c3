//! The byte pipe under a connection: a nonblocking TCP or Unix socket, optionally TLS to an mTLS
//! proxy (`outer`), optionally TLS to the receiver (`inner`), stacked so that the receiver's TLS
//! records travel as plaintext of the proxy's TLS. Every method is nonblocking: `WouldBlock`
//! means "wait for readiness", never "lost".

use std::io::{self, Read, Write};

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::{ClientConnection, ConnectionCommon};

/// How many bytes of what the tunnel delivered first we keep, to describe a peer that answered
/// with something other than TLS.
const FIRST_BYTES: usize = 128;

pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Socket {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.register(r, t, i),
            Socket::Unix(s) => s.register(r, t, i),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.reregister(r, t, i),
            Socket::Unix(s) => s.reregister(r, t, i),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.deregister(r),
            Socket::Unix(s) => s.deregister(r),
        }
    }
}

impl Socket {
    /// Whether a nonblocking connect has finished; `Err` if it failed.
    pub fn connected(&self) -> io::Result<bool> {
        let (err, peer) = match self {
            Socket::Tcp(s) => (s.take_error(), s.peer_addr().map(|_| ())),
            Socket::Unix(s) => (s.take_error(), s.peer_addr().map(|_| ())),
        };
        if let Some(e) = err? {
            return Err(e);
        }
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A TLS failure carried through `io::Error` so that callers can explain it.
#[derive(Debug)]
pub struct TlsFailure(pub rustls::Error);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

impl std::error::Error for TlsFailure {}

pub fn tls_failure(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsFailure>())
        .map(|t| &t.0)
}

pub struct Transport {
    pub sock: Socket,
    pub outer: Option<ClientConnection>,
    pub inner: Option<ClientConnection>,
    /// Tunnel bytes that arrived together with the proxy's CONNECT answer.
    pending: Vec<u8>,
    /// The first bytes the tunnel delivered (recorded once `record_first` is set).
    pub first: Vec<u8>,
    record_first: bool,
    /// Bytes the socket accepted, TLS records included.
    sent: u64,
}

impl Transport {
    pub fn new(sock: Socket) -> Transport {
        Transport {
            sock,
            outer: None,
            inner: None,
            pending: Vec::new(),
            first: Vec::new(),
            record_first: false,
            sent: 0,
        }
    }

    /// Starts recording what the tunnel delivers, beginning with `leftover` (bytes that came
    /// after the CONNECT answer's header).
    pub fn open_tunnel(&mut self, leftover: &[u8]) {
        self.pending.extend_from_slice(leftover);
        self.record_first = true;
        self.first
            .extend_from_slice(&leftover[..leftover.len().min(FIRST_BYTES)]);
    }

    /// Bytes written to the socket so far: the measure of write progress, which the plaintext
    /// accepted by a TLS layer is not (rustls takes a record before the socket has room for it).
    pub fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Whether any layer holds bytes it could not write yet.
    pub fn wants_write(&self) -> bool {
        self.outer.as_ref().is_some_and(|c| c.wants_write())
            || self.inner.as_ref().is_some_and(|c| c.wants_write())
    }

    /// The receiver-TLS layer (if any) and the stream beneath it, borrowed together.
    fn split(&mut self) -> (Option<&mut ClientConnection>, Lower<'_>) {
        let lower = Lower {
            sock: Counted {
                sock: &mut self.sock,
                sent: &mut self.sent,
            },
            outer: self.outer.as_mut(),
            pending: &mut self.pending,
            first: &mut self.first,
            record_first: self.record_first,
        };
        (self.inner.as_mut(), lower)
    }

    /// Advances the TLS handshakes and flushes queued records. Returns true once the topmost
    /// TLS layer (if any) has finished its handshake.
    pub fn handshake(&mut self) -> io::Result<bool> {
        let (inner, mut lower) = self.split();
        if let Some(outer) = lower.outer.as_deref_mut() {
            pump(outer, &mut lower.sock)?;
        }
        match inner {
            Some(inner) => {
                pump(inner, &mut lower)?;
                Ok(!inner.is_handshaking())
            }
            None => Ok(lower.outer.is_none_or(|c| !c.is_handshaking())),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.split() {
            (Some(inner), mut lower) => tls_read(inner, &mut lower, buf),
            (None, mut lower) => lower.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.split() {
            (Some(inner), mut lower) => tls_write(inner, &mut lower, buf),
            (None, mut lower) => lower.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The stream a receiver-TLS layer (or the plaintext protocol) runs on: the socket itself or the
/// plaintext side of the proxy's TLS.
struct Lower<'a> {
    sock: Counted<'a>,
    outer: Option<&'a mut ClientConnection>,
    pending: &'a mut Vec<u8>,
    first: &'a mut Vec<u8>,
    record_first: bool,
}

impl Read for Lower<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.pending.is_empty() {
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Ok(n);
        }
        let n = match self.outer.as_deref_mut() {
            Some(outer) => tls_read(outer, &mut self.sock, buf)?,
            None => self.sock.read(buf)?,
        };
        if self.record_first && self.first.len() < FIRST_BYTES {
            let take = n.min(FIRST_BYTES - self.first.len());
            self.first.extend_from_slice(&buf[..take]);
        }
        Ok(n)
    }
}

impl Write for Lower<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.outer.as_deref_mut() {
            Some(outer) => tls_write(outer, &mut self.sock, buf),
            None => self.sock.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket, counting what it accepts.
struct Counted<'a> {
    sock: &'a mut Socket,
    sent: &'a mut u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read(buf)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sock.write(buf)?;
        *self.sent += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::other(TlsFailure(e))
}

/// Writes queued TLS records and reads whatever the peer sent, until neither makes progress.
fn pump(conn: &mut ClientConnection, lower: &mut (impl Read + Write)) -> io::Result<()> {
    loop {
        let mut progress = false;
        while conn.wants_write() {
            match conn.write_tls(lower) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "connection accepted no bytes",
                    ))
                }
                Ok(_) => progress = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if conn.wants_read() {
            match conn.read_tls(lower) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection during TLS",
                    ))
                }
                Ok(_) => {
                    conn.process_new_packets().map_err(tls_err)?;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if !progress {
            return Ok(());
        }
    }
}

fn tls_read(
    conn: &mut ClientConnection,
    lower: &mut (impl Read + Write),
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        // Alerts, key updates and session tickets need answers too.
        flush_tls(conn, lower)?;
        match conn.read_tls(lower)? {
            0 => return Ok(0),
            _ => {
                conn.process_new_packets().map_err(tls_err)?;
            }
        }
    }
}

/// Writes `buf` into a TLS connection (client or server side) over `lower`. Keeps at most one
/// write's worth of records inside rustls: when the socket is full, say so instead of buffering
/// the whole outbox a second time.
pub fn tls_write<D>(
    conn: &mut ConnectionCommon<D>,
    lower: &mut impl Write,
    buf: &[u8],
) -> io::Result<usize> {
    flush_tls(conn, lower)?;
    if conn.wants_write() {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    let n = conn
        .writer()
        .write(buf.get(..buf.len().min(64 * 1024)).unwrap_or(buf))?;
    match flush_tls(conn, lower) {
        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
        _ => Ok(n),
    }
}

/// Writes queued TLS records until done or `lower` would block (not an error: the caller's
/// interest includes WRITABLE while `wants_write` stays true).
pub fn flush_tls<D>(conn: &mut ConnectionCommon<D>, lower: &mut impl Write) -> io::Result<()> {
    while conn.wants_write() {
        match conn.write_tls(lower) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection accepted no bytes",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
