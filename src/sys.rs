//! The few Linux facilities std does not wrap: inotify, signalfd and getrandom, plus the one CPU
//! instruction sequence safe Rust cannot name (the SSE2 byte classifier of the JSON string
//! scanner). Every `unsafe` block of the crate lives here; callers get owned file descriptors and
//! safe functions.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Calls a libc function and turns `-1` into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: callers pass valid pointers/lengths for the duration of the call.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// One decoded inotify event: the watch it belongs to, the mask and the file name (empty for
/// events on the watched object itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyEvent {
    pub wd: i32,
    pub mask: u32,
    pub name: Vec<u8>,
}

/// A nonblocking inotify instance, usable as a mio source through `SourceFd`.
pub struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    pub fn new() -> io::Result<Inotify> {
        let fd = syscall!(inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC))?;
        // SAFETY: inotify_init1 returned a fresh descriptor that nothing else owns.
        Ok(Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn add_watch(&self, path: &Path, mask: u32) -> io::Result<i32> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))?;
        syscall!(inotify_add_watch(self.fd.as_raw_fd(), c.as_ptr(), mask))
    }

    pub fn rm_watch(&self, wd: i32) -> io::Result<()> {
        syscall!(inotify_rm_watch(self.fd.as_raw_fd(), wd)).map(|_| ())
    }

    /// Reads every queued event until the kernel says `EAGAIN`. An overflowed queue shows up as
    /// an event with `IN_Q_OVERFLOW`, which callers treat as "rescan everything".
    pub fn drain(&self, out: &mut Vec<InotifyEvent>) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let n = match syscall!(read(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len()
            )) {
                Ok(n) => n as usize,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            parse_inotify(&buf[..n], out);
        }
    }
}

impl AsRawFd for Inotify {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Decodes the kernel's `struct inotify_event` records (wd, mask, cookie, len, name[len]).
fn parse_inotify(mut buf: &[u8], out: &mut Vec<InotifyEvent>) {
    const HDR: usize = 16;
    while buf.len() >= HDR {
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let wd = word(0) as i32;
        let mask = word(4);
        let len = word(12) as usize;
        let end = (HDR + len).min(buf.len());
        let raw = &buf[HDR..end];
        // The name is NUL-padded to an alignment boundary.
        let name = raw.split(|&b| b == 0).next().unwrap_or(&[]).to_vec();
        out.push(InotifyEvent { wd, mask, name });
        buf = &buf[end..];
    }
}

/// A signalfd for SIGTERM and SIGINT; the signals are blocked for the process so they are only
/// ever delivered through this descriptor and the event loop can shut down in order.
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    pub fn new() -> io::Result<Signals> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        syscall!(sigemptyset(&mut set))?;
        syscall!(sigaddset(&mut set, libc::SIGTERM))?;
        syscall!(sigaddset(&mut set, libc::SIGINT))?;
        // SAFETY: set is initialised; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let fd = syscall!(signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC))?;
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        Ok(Signals {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Returns the signals received since the last call.
    pub fn drain(&self) -> io::Result<Vec<i32>> {
        let mut got = Vec::new();
        loop {
            // SAFETY: signalfd_siginfo is plain data.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            match syscall!(read(
                self.fd.as_raw_fd(),
                &mut info as *mut _ as *mut libc::c_void,
                size
            )) {
                Ok(n) if n as usize == size => got.push(info.ssi_signo as i32),
                Ok(_) => return Ok(got),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Fills `buf` from the kernel's CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        match syscall!(getrandom(
            rest.as_mut_ptr() as *mut libc::c_void,
            rest.len(),
            0
        )) {
            Ok(n) => done += n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The machine's hostname (the default `--self-hostname`).
/// The effective uid and gid this process runs as, for messages about permissions.
pub fn ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid take no arguments, cannot fail and touch no memory of ours.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Who may do what with `path`: "owner UID:GID mode 0NNN", or why that is unknown.
pub fn describe_access(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "owner {}:{} mode {:04o}",
            m.uid(),
            m.gid(),
            m.mode() & 0o7777
        ),
        Err(e) => format!("not inspectable: {e}"),
    }
}

pub fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    syscall!(gethostname(
        buf.as_mut_ptr() as *mut libc::c_char,
        buf.len()
    ))?;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Process CPU time (user, system) in seconds, for the stats line.
pub fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data filled by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if syscall!(getrusage(libc::RUSAGE_SELF, &mut ru)).is_err() {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Bit `k` of the result is set when `block[k]` is `"`, `\\` or below 0x20: the bytes at which
/// a JSON string body stops being a plain copy. Its lowest set bit is where the transcoder's string
/// scanner stops, so the result must be exact (see `json_special_mask_scalar`, which it equals).
///
/// On x86-64, SSE2 is part of the baseline ABI, so it is always there: an xor, two byte compares
/// and one `pmovmskb` classify sixteen bytes and put the answer straight in a general
/// register. Written
/// portably, LLVM either tests a byte at a time or routes the vector compare's result through
/// memory; word-at-a-time (SWAR) arithmetic costs three to four times the instructions.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn json_special_mask(block: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_xor_si128,
    };
    // SAFETY: the intrinsics need only SSE2, which every x86-64 CPU has (it is enabled for the
    // target by default, so these compile to plain instructions). The unaligned load reads exactly
    // the 16 bytes `block` borrows.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // Flipping bit 1 maps `"` (0x22) to 0x20 and keeps every control byte below 0x20, while
        // no other byte lands at or below 0x20; flipping bit 7 as well turns that unsigned
        // `x <= 0x20` into the signed `x < 0xa1` (-95) that SSE2 has a compare for. One xor and
        // one compare find both kinds, where `min(x, 0x20) == x` took a third operation and a
        // register copy.
        let x = _mm_xor_si128(v, _mm_set1_epi8(0x82u8 as i8));
        let quote_or_control = _mm_cmplt_epi8(x, _mm_set1_epi8(0xa1u8 as i8));
        _mm_movemask_epi8(_mm_or_si128(quote_or_control, backslash)) as u32
    }
}

/// `json_special_mask` for CPUs without SSE2.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub fn json_special_mask(block: &[u8; 16]) -> u32 {
    json_special_mask_scalar(block)
}

/// The portable definition of `json_special_mask`, one byte at a time; on x86-64 only the tests
/// use it, as the reference the SSE2 version must equal.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
pub fn json_special_mask_scalar(block: &[u8; 16]) -> u32 {
    let mut mask = 0;
    for (k, &c) in block.iter().enumerate() {
        mask |= u32::from(c == b'"' || c == b'\\' || c < 0x20) << k;
    }
    mask
}

/// Lowers this process's soft limit on open files, so that a test run in a child process can
/// make `accept` fail with EMFILE.
#[cfg(test)]
pub fn limit_open_files(n: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    lim.rlim_cur = n.min(lim.rlim_max);
    syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_packed_inotify_records() {
        let mut buf = Vec::new();
        for (wd, mask, name) in [
            (1i32, libc::IN_CREATE, &b"audit.log"[..]),
            (2, libc::IN_MODIFY, b""),
        ] {
            let padded = if name.is_empty() {
                0
            } else {
                (name.len() + 1 + 15) / 16 * 16
            };
            buf.extend_from_slice(&wd.to_ne_bytes());
            buf.extend_from_slice(&mask.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(padded, 0);
            buf.extend_from_slice(&n);
        }
        let mut out = Vec::new();
        parse_inotify(&buf, &mut out);
        assert_eq!(
            out,
            vec![
                InotifyEvent {
                    wd: 1,
                    mask: libc::IN_CREATE,
                    name: b"audit.log".to_vec()
                },
                InotifyEvent {
                    wd: 2,
                    mask: libc::IN_MODIFY,
                    name: vec![]
                },
            ]
        );
    }

    #[test]
    fn inotify_sees_a_created_file() {
        let dir = std::env::temp_dir().join(format!("af-sys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ino = Inotify::new().unwrap();
        ino.add_watch(&dir, libc::IN_CREATE).unwrap();
        std::fs::write(dir.join("x.log"), b"1\n").unwrap();
        let mut ev = Vec::new();
        ino.drain(&mut ev).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(ev
            .iter()
            .any(|e| e.name == b"x.log" && e.mask & libc::IN_CREATE != 0));
    }

    #[test]
    fn json_special_mask_is_exact_for_every_byte_at_every_offset() {
        // Every byte value at every position of a block of plain bytes, and of a block of
        // non-ASCII bytes (which must never count as control bytes, though they are negative as
        // signed bytes), against the byte-at-a-time definition.
        for fill in [b'a', 0x80, 0xff, 0x20, 0x7f] {
            for at in 0..16 {
                for c in 0..=255u8 {
                    let mut block = [fill; 16];
                    block[at] = c;
                    let special = c == b'"' || c == b'\\' || c < 0x20;
                    let want = u32::from(special) << at;
                    assert_eq!(json_special_mask(&block), want, "{fill:#x} {at} {c:#x}");
                    assert_eq!(
                        json_special_mask_scalar(&block),
                        want,
                        "{fill:#x} {at} {c:#x}"
                    );
                }
            }
        }
        // Several at once: each sets its own bit, whatever else is in the block.
        let block = *b"\"\\\x00\x1f \xe2\x82\xacab\\c\"\x7f\x80\n";
        let want = 0b1001_0100_0000_1111;
        assert_eq!(json_special_mask(&block), want);
        assert_eq!(json_special_mask_scalar(&block), want);
    }
}
