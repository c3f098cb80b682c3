//! The few Linux facilities std does not wrap: inotify, signalfd and getrandom. Every `unsafe`
//! block of the crate lives here; callers get owned file descriptors and safe methods.

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
}
