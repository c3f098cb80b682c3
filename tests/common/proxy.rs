//! Tunnels for the end-to-end tests: real proxies started and stopped by the tests (tinyproxy
//! answering HTTP CONNECT, socat as the konnectivity Unix socket in front of it, stunnel as the
//! mutual-TLS front), a fake proxy for the misbehaviours real ones do not show on demand, the
//! certificates they all need (made with the openssl command line), and a tailer started with
//! extra arguments (TLS).
//!
//! Every proxy runs in its own process group, with its output appended to a log file in the
//! test's temp dir, and is killed (the whole group, so socat's forked children too) by its
//! guard's `stop` or Drop. When a test fails, the guards print the tails of those logs.

use super::*;
use std::os::unix::process::CommandExt;

pub const TINYPROXY: &str = "/usr/bin/tinyproxy";
pub const SOCAT: &str = "/usr/bin/socat";
pub const STUNNEL: &str = "/usr/bin/stunnel4";

/// The server name the tailer's certificate is made for (the forwarder's default vhost).
pub const TAILER_VHOST: &str = "kubernetes-audit-tailer";

/// The first line of the CONNECT request the forwarder must send for a tailer on `port`.
pub fn connect_line(port: u16) -> String {
    format!("CONNECT 127.0.0.1:{port} HTTP/1.1")
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Process groups
// ---------------------------------------------------------------------------------------------

/// Starts `program` as the leader of a new process group, stdout and stderr appended to `log`.
fn spawn_group(program: &str, args: &[String], log: &Path) -> Child {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|e| panic!("dup {}: {e}", log.display()));
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program} {args:?}: {e}"))
}

/// SIGKILL to the child's whole process group, then reap the leader.
fn kill_group(child: &mut Child) {
    // SAFETY: kill(2) with the negated pid of a child we have not reaped yet: that pid is the
    // id of the group it leads (spawned with process_group(0)), which cannot have been reused.
    let rc = unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            panic!("kill(-{}, SIGKILL): {e}", child.id());
        }
    }
    let _ = child.wait();
}

/// Spawns until `ready()` holds; a start that exits at once (a port still held by a dying
/// predecessor) is retried a few times.
fn start_daemon(
    what: &str,
    program: &str,
    args: &[String],
    log: &Path,
    ready: &dyn Fn() -> bool,
) -> Child {
    for attempt in 0..5 {
        let mut child = spawn_group(program, args, log);
        let mut exited = None;
        let up = wait_until(secs(15), || {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                return true;
            }
            ready()
        });
        // Someone else's listener on the port also reads as ready while ours fails to bind
        // and exits: look once more before trusting it.
        if up && exited.is_none() {
            thread::sleep(ms(100));
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
            }
        }
        match exited {
            None if up => return child,
            None => {
                kill_group(&mut child);
                panic!(
                    "{what} did not get ready within 15 s; {} (tail):\n{}",
                    log.display(),
                    tail_of(&read_lossy(log), 4000)
                );
            }
            Some(st) => {
                eprintln!("[harness] {what} exited at start ({st}), attempt {attempt}");
                thread::sleep(ms(300));
            }
        }
    }
    panic!(
        "{what} could not start; {} (tail):\n{}",
        log.display(),
        tail_of(&read_lossy(log), 4000)
    );
}

/// True if a Unix stream socket is listening at `path` (read from /proc/net/unix, so that
/// checking makes no connection through the proxy chain).
pub fn unix_listening(path: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/net/unix") else {
        return false;
    };
    let want = path.to_string_lossy();
    text.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Flags 00010000 is __SO_ACCEPTCON: the socket is in listen(2).
        f.len() >= 8 && f[3] == "00010000" && f[7] == want
    })
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// Runs `openssl` with `args` in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("the openssl command is needed to make certificates: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const CA_CNF: &str = "\
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = NAME
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
";

const SERVER_EXT: &str = "\
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:kubernetes-audit-tailer, DNS:localhost, IP:127.0.0.1
";

const CLIENT_EXT: &str = "\
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// X.509 v3 certificates (P-256 keys) for one test, in `<dir>/pki`:
/// - `tailer-ca`: signs `tailer` (server: DNS kubernetes-audit-tailer, IP 127.0.0.1) and
///   `forwarder` (client), the TLS between the forwarder and the tailer;
/// - `proxy-ca`: signs `proxy` (server, IP 127.0.0.1) and `proxy-client` (client), the mTLS
///   between the forwarder and stunnel;
/// - `rogue-ca`: signs `rogue-client`, a client certificate with the right name from the wrong
///   CA.
///
/// Each NAME has `NAME.crt` and `NAME.key`.
pub struct ProxyPki {
    pub dir: PathBuf,
}

impl ProxyPki {
    pub fn create(parent: &Path) -> ProxyPki {
        let dir = parent.join("pki");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let d = dir.as_path();
        fs::write(d.join("server.ext"), SERVER_EXT).expect("write server.ext");
        fs::write(d.join("client.ext"), CLIENT_EXT).expect("write client.ext");
        for ca in ["tailer-ca", "proxy-ca", "rogue-ca"] {
            let cnf = format!("{ca}.cnf");
            fs::write(d.join(&cnf), CA_CNF.replace("NAME", ca)).expect("write CA config");
            let (key, crt) = (format!("{ca}.key"), format!("{ca}.crt"));
            openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &key,
                ],
            );
            openssl(
                d,
                &[
                    "req", "-x509", "-new", "-config", &cnf, "-key", &key, "-days", "3650", "-out",
                    &crt,
                ],
            );
        }
        let leaves = [
            ("tailer", "tailer-ca", "server.ext", TAILER_VHOST),
            (
                "forwarder",
                "tailer-ca",
                "client.ext",
                "kubernetes-audit-forwarder",
            ),
            ("proxy", "proxy-ca", "server.ext", "konnectivity-server"),
            ("proxy-client", "proxy-ca", "client.ext", "audit-forwarder"),
            ("rogue-client", "rogue-ca", "client.ext", "audit-forwarder"),
        ];
        for (name, ca, ext, cn) in leaves {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let subj = format!("/CN={cn}");
            openssl(
                d,
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    &key,
                ],
            );
            openssl(
                d,
                &[
                    "req",
                    "-new",
                    "-config",
                    &format!("{ca}.cnf"),
                    "-key",
                    &key,
                    "-subj",
                    &subj,
                    "-out",
                    &csr,
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &format!("{ca}.crt"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "3650",
                    "-extfile",
                    ext,
                    "-out",
                    &crt,
                ],
            );
        }
        ProxyPki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn path_str(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// Arguments that make the tailer listen with TLS and require a client certificate from
    /// tailer-ca.
    pub fn tailer_args(&self) -> Vec<String> {
        vec![
            "--tls-crt-file".into(),
            self.path_str("tailer.crt"),
            "--tls-key-file".into(),
            self.path_str("tailer.key"),
            "--client-ca".into(),
            self.path_str("tailer-ca.crt"),
        ]
    }

    /// The forwarder's TLS settings for the tailer (names relative to --tls-basedir).
    pub fn forwarder_tls_args(&self) -> Vec<String> {
        vec![
            "--tls-basedir".into(),
            self.dir.display().to_string(),
            "--tls-ca-file".into(),
            "tailer-ca.crt".into(),
            "--tls-crt-file".into(),
            "forwarder.crt".into(),
            "--tls-key-file".into(),
            "forwarder.key".into(),
            "--tls-vhost".into(),
            TAILER_VHOST.into(),
        ]
    }
}

/// Replaces `dst` with a copy of `src` the way a Secret update does: written next to it, then
/// renamed over it, so a reader never sees half a file.
pub fn replace_file(src: &Path, dst: &Path) {
    let tmp = dst.with_extension("swap-tmp");
    fs::copy(src, &tmp)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", src.display(), tmp.display()));
    fs::rename(&tmp, dst)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), dst.display()));
}

// ---------------------------------------------------------------------------------------------
// tinyproxy: the HTTP CONNECT proxy
// ---------------------------------------------------------------------------------------------

/// tinyproxy in the foreground on 127.0.0.1:`port`, allowing CONNECT to one port only (any
/// other gets a real `403 Access violation`). Restarts keep the port and append to the same
/// log, so the log counts every request this proxy ever saw.
pub struct TinyProxy {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    starts: usize,
}

impl TinyProxy {
    /// A stopped proxy whose files live in `dir`.
    pub fn new(dir: &Path, port: u16) -> TinyProxy {
        TinyProxy {
            port,
            dir: dir.to_path_buf(),
            child: None,
            starts: 0,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("tinyproxy.log")
    }

    fn out_path(&self) -> PathBuf {
        self.dir.join("tinyproxy.out")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts (stopping a running instance first) with CONNECT allowed to `connect_port` only.
    pub fn start(&mut self, connect_port: u16) {
        self.stop();
        let conf = self.dir.join("tinyproxy.conf");
        let text = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\nConnectPort {connect_port}\n\
             MaxClients 100\nLogLevel Info\nLogFile \"{}\"\nPidFile \"{}\"\n",
            self.port,
            self.log_path().display(),
            self.dir.join("tinyproxy.pid").display()
        );
        fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        self.starts += 1;
        let mark = format!(
            "--- harness: tinyproxy start #{} (ConnectPort {connect_port}) ---\n",
            self.starts
        );
        append(&self.log_path(), &mark);
        let port = self.port;
        self.child = Some(start_daemon(
            &format!("tinyproxy on 127.0.0.1:{port}"),
            TINYPROXY,
            &["-d".into(), "-c".into(), conf.display().to_string()],
            &self.out_path(),
            &|| port_listening(port),
        ));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// The request line of every CONNECT the proxy received (`CONNECT host:port HTTP/1.1`).
    pub fn connect_requests(&self) -> Vec<String> {
        self.log_text()
            .lines()
            .filter_map(|l| l.split_once("): CONNECT "))
            .filter(|(head, _)| head.contains("Request (file descriptor"))
            .map(|(_, rest)| format!("CONNECT {}", rest.trim_end()))
            .collect()
    }

    /// Tunnels opened to the allowed port.
    pub fn established(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("Established connection to host"))
            .count()
    }

    /// CONNECTs answered 403 because of the port.
    pub fn refused(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("Refused CONNECT method on port"))
            .count()
    }

    pub fn report(&self) -> String {
        format!(
            "tinyproxy 127.0.0.1:{} log (tail):\n{}\ntinyproxy output (tail):\n{}",
            self.port,
            tail_of(&self.log_text(), 6000),
            tail_of(&read_lossy(&self.out_path()), 2000)
        )
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn append(path: &Path, text: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// Front ends: socat (konnectivity Unix socket) and stunnel (mTLS)
// ---------------------------------------------------------------------------------------------

/// `socat UNIX-LISTEN:<path>,fork,unlink-early TCP:127.0.0.1:<port>`: a Unix socket in front
/// of the proxy, like konnectivity's `--uds-name` socket in a kube-apiserver pod.
pub struct UdsFront {
    pub path: PathBuf,
    to_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl UdsFront {
    pub fn new(dir: &Path, to_port: u16) -> UdsFront {
        UdsFront {
            path: dir.join("konnectivity.sock"),
            to_port,
            log: dir.join("socat.log"),
            child: None,
        }
    }

    pub fn start(&mut self) {
        self.stop();
        append(&self.log, "--- harness: socat start ---\n");
        let path = self.path.clone();
        self.child = Some(start_daemon(
            &format!("socat on {}", self.path.display()),
            SOCAT,
            &[
                "-d".into(),
                "-d".into(),
                format!("UNIX-LISTEN:{},fork,unlink-early", self.path.display()),
                format!("TCP:127.0.0.1:{}", self.to_port),
            ],
            &self.log,
            &|| unix_listening(&path),
        ));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    pub fn report(&self) -> String {
        format!(
            "socat {} log (tail):\n{}",
            self.path.display(),
            tail_of(&read_lossy(&self.log), 3000)
        )
    }
}

impl Drop for UdsFront {
    fn drop(&mut self) {
        self.stop();
    }
}

/// stunnel in server mode on 127.0.0.1:`port`: TLS with the `proxy` certificate, a client
/// certificate from proxy-ca required (`verify = 2`), plaintext on to the proxy.
pub struct StunnelFront {
    pub port: u16,
    to_port: u16,
    conf: PathBuf,
    log: PathBuf,
    pki: PathBuf,
    child: Option<Child>,
}

impl StunnelFront {
    pub fn new(dir: &Path, pki: &ProxyPki, port: u16, to_port: u16) -> StunnelFront {
        StunnelFront {
            port,
            to_port,
            conf: dir.join("stunnel.conf"),
            log: dir.join("stunnel.log"),
            pki: pki.dir.clone(),
            child: None,
        }
    }

    pub fn start(&mut self) {
        self.stop();
        let p = |f: &str| self.pki.join(f).display().to_string();
        let text = format!(
            "foreground = yes\npid =\ndebug = info\n\n[connect-proxy]\naccept = 127.0.0.1:{}\n\
             connect = 127.0.0.1:{}\ncert = {}\nkey = {}\nCAfile = {}\nverify = 2\n",
            self.port,
            self.to_port,
            p("proxy.crt"),
            p("proxy.key"),
            p("proxy-ca.crt")
        );
        fs::write(&self.conf, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", self.conf.display()));
        append(&self.log, "--- harness: stunnel start ---\n");
        let port = self.port;
        self.child = Some(start_daemon(
            &format!("stunnel on 127.0.0.1:{port}"),
            STUNNEL,
            &[self.conf.display().to_string()],
            &self.log,
            &|| port_listening(port),
        ));
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    pub fn log_text(&self) -> String {
        read_lossy(&self.log)
    }

    /// Client certificates stunnel rejected.
    pub fn rejected_certs(&self) -> usize {
        self.log_text()
            .lines()
            .filter(|l| l.contains("Rejected by CERT"))
            .count()
    }

    pub fn report(&self) -> String {
        format!(
            "stunnel 127.0.0.1:{} log (tail):\n{}",
            self.port,
            tail_of(&self.log_text(), 4000)
        )
    }
}

impl Drop for StunnelFront {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// The chain: front end + proxy
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TunnelKind {
    /// The forwarder connects to a Unix socket (socat) in front of the proxy.
    Uds,
    /// The forwarder connects over mutual TLS (stunnel) in front of the proxy.
    Mtls,
}

pub enum Front {
    Uds(UdsFront),
    Mtls(StunnelFront),
}

/// What the forwarder reaches: `front` (socat or stunnel) passing bytes to 127.0.0.1:
/// `proxy_port`, where tinyproxy (or a `FakeProxy`) answers the CONNECT. Nothing runs until
/// started; Drop stops everything.
pub struct Chain {
    pub kind: TunnelKind,
    pub proxy_port: u16,
    pub front: Front,
    pub proxy: TinyProxy,
    pki: PathBuf,
}

impl Chain {
    pub fn new(kind: TunnelKind, dir: &Path, pki: &ProxyPki) -> Chain {
        let proxy_port = free_port();
        let front = match kind {
            TunnelKind::Uds => Front::Uds(UdsFront::new(dir, proxy_port)),
            TunnelKind::Mtls => Front::Mtls(StunnelFront::new(dir, pki, free_port(), proxy_port)),
        };
        Chain {
            kind,
            proxy_port,
            front,
            proxy: TinyProxy::new(dir, proxy_port),
            pki: pki.dir.clone(),
        }
    }

    /// Proxy first, then the front end, CONNECT allowed to `connect_port` only.
    pub fn start(&mut self, connect_port: u16) {
        self.proxy.start(connect_port);
        self.start_front();
    }

    pub fn start_front(&mut self) {
        match &mut self.front {
            Front::Uds(f) => f.start(),
            Front::Mtls(f) => f.start(),
        }
    }

    pub fn stop_front(&mut self) {
        match &mut self.front {
            Front::Uds(f) => f.stop(),
            Front::Mtls(f) => f.stop(),
        }
    }

    /// Both killed at once, as when the konnectivity server pod dies.
    pub fn stop(&mut self) {
        self.stop_front();
        self.proxy.stop();
    }

    /// What the forwarder's log should name when it cannot reach the front end: the socket
    /// path or the proxy's address.
    pub fn address(&self) -> String {
        match &self.front {
            Front::Uds(f) => f.path.display().to_string(),
            Front::Mtls(f) => format!("127.0.0.1:{}", f.port),
        }
    }

    pub fn stunnel(&self) -> Option<&StunnelFront> {
        match &self.front {
            Front::Mtls(f) => Some(f),
            Front::Uds(_) => None,
        }
    }

    /// The forwarder's proxy flags, with the proxy client certificate from the PKI.
    pub fn forwarder_args(&self) -> Vec<String> {
        self.forwarder_args_with_client(
            &self.pki.join("proxy-client.crt"),
            &self.pki.join("proxy-client.key"),
        )
    }

    /// The forwarder's proxy flags with a given client certificate and key (mTLS only; the
    /// files are ignored for the Unix socket).
    pub fn forwarder_args_with_client(&self, crt: &Path, key: &Path) -> Vec<String> {
        match &self.front {
            Front::Uds(f) => vec![
                "--konnectivity-uds-socket".into(),
                f.path.display().to_string(),
            ],
            Front::Mtls(f) => vec![
                "--proxy-host".into(),
                "127.0.0.1".into(),
                "--proxy-port".into(),
                f.port.to_string(),
                "--proxy-ca-file".into(),
                self.pki.join("proxy-ca.crt").display().to_string(),
                "--proxy-client-crt-file".into(),
                crt.display().to_string(),
                "--proxy-client-key-file".into(),
                key.display().to_string(),
            ],
        }
    }

    pub fn report(&self) -> String {
        let front = match &self.front {
            Front::Uds(f) => f.report(),
            Front::Mtls(f) => f.report(),
        };
        format!("{front}\n{}", self.proxy.report())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("[harness] {:?} tunnel:\n{}", self.kind, self.report());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A fake proxy
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FakeProxyMode {
    /// Answers `HTTP/1.1 200 Connection Established` and closes at once.
    CloseAfter200,
    /// Answers 200, then writes `HTTP/1.1 503 Service Unavailable ... currently no tunnels
    /// available` into the tunnel (what some konnectivity versions do when no agent is
    /// connected) and keeps the connection open until the client closes it.
    Answer503InTunnel,
}

pub const FAKE_503: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\ncurrently no tunnels available";

/// A proxy in the test process on 127.0.0.1:`port` (behind the chain's front end, in place of
/// tinyproxy) that reads the CONNECT request and misbehaves as `mode` says. `stop()` frees
/// the port.
pub struct FakeProxy {
    pub port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeProxy {
    pub fn start(port: u16, mode: FakeProxyMode) -> FakeProxy {
        let deadline = Instant::now() + secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[harness] fake proxy bind 127.0.0.1:{port}: {e}; retrying");
                    thread::sleep(ms(100));
                }
                Err(e) => panic!("fake proxy cannot bind 127.0.0.1:{port}: {e}"),
            }
        };
        listener
            .set_nonblocking(true)
            .expect("set_nonblocking on listener");
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (st, reqs) = (stop.clone(), requests.clone());
        let acceptor = thread::spawn(move || {
            let mut conns = Vec::new();
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (st2, reqs2) = (st.clone(), reqs.clone());
                        conns.push(thread::spawn(move || {
                            fake_proxy_conn(s, mode, &reqs2, &st2)
                        }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ms(5)),
                    Err(_) => thread::sleep(ms(50)),
                }
            }
            drop(listener);
            for c in conns {
                let _ = c.join();
            }
        });
        FakeProxy {
            port,
            stop,
            requests,
            acceptor: Some(acceptor),
        }
    }

    /// The request head (up to the empty line) of every connection, in arrival order; a
    /// connection that sent no complete head is recorded as what it sent, prefixed `partial:`.
    pub fn requests(&self) -> Vec<String> {
        lock(&self.requests).clone()
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!(
                "[harness] fake proxy 127.0.0.1:{} saw requests: {:?}",
                self.port,
                self.requests()
            );
        }
    }
}

/// The cap on a CONNECT request head; a real request is well under 200 bytes.
const MAX_HEAD: usize = 8192;

fn fake_proxy_conn(
    mut s: TcpStream,
    mode: FakeProxyMode,
    reqs: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    if s.set_nonblocking(false)
        .and_then(|_| s.set_read_timeout(Some(ms(50))))
        .is_err()
    {
        return;
    }
    let deadline = Instant::now() + secs(10);
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let complete = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(end);
            break true;
        }
        if head.len() > MAX_HEAD || stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break false;
        }
        match s.read(&mut buf) {
            Ok(0) => break false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break false,
        }
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    lock(reqs).push(if complete {
        text
    } else {
        format!("partial:{text}")
    });
    if !complete {
        return;
    }
    let mut answer = b"HTTP/1.1 200 Connection Established\r\n\r\n".to_vec();
    if mode == FakeProxyMode::Answer503InTunnel {
        answer.extend_from_slice(FAKE_503);
    }
    if s.write_all(&answer).is_err() {
        return;
    }
    match mode {
        FakeProxyMode::CloseAfter200 => {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        FakeProxyMode::Answer503InTunnel => {
            // Keep the tunnel open: the client must judge the bytes, not a close.
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A tailer with extra arguments
// ---------------------------------------------------------------------------------------------

/// `audit-forwarder tailer --listen 127.0.0.1:PORT <extra>` (e.g. the TLS flags of
/// `ProxyPki::tailer_args`), like `Tailer` otherwise: what it prints is kept across kills and
/// restarts, so `records()` is everything received on this port.
pub struct TlsTailer {
    pub port: u16,
    extra: Vec<String>,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    threads: Vec<JoinHandle<()>>,
    starts: usize,
}

impl TlsTailer {
    pub fn start(port: u16, extra: Vec<String>) -> TlsTailer {
        let mut t = TlsTailer {
            port,
            extra,
            child: None,
            lines: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
            starts: 0,
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let mut args = vec![
            "tailer".to_string(),
            "--listen".to_string(),
            format!("127.0.0.1:{}", self.port),
        ];
        args.extend(self.extra.iter().cloned());
        for attempt in 0..6 {
            self.starts += 1;
            lock(&self.stderr)
                .extend_from_slice(format!("--- tailer start #{} ---\n", self.starts).as_bytes());
            let mut child = base_command(&args)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {} tailer: {e}", bin()));
            let (out, err) = take_pipes(&mut child);
            self.threads.push(collect_stdout_lines(
                out,
                self.lines.clone(),
                self.stderr.clone(),
            ));
            self.threads.push(capture(
                BufReader::new(err),
                self.stderr.clone(),
                format!("tailer {}", child.id()),
                None,
            ));
            let mut exited = None;
            let up = wait_until(secs(20), || {
                if let Ok(Some(st)) = child.try_wait() {
                    exited = Some(st);
                    return true;
                }
                port_listening(self.port)
            });
            match exited {
                None if up => {
                    self.child = Some(child);
                    return;
                }
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.join_threads();
                    panic!(
                        "tailer {args:?} did not listen within 20 s; stderr:\n{}",
                        self.stderr_text()
                    );
                }
                Some(st) => {
                    self.join_threads();
                    eprintln!(
                        "[harness] tailer on port {} exited at start ({st}), attempt {attempt}",
                        self.port
                    );
                    thread::sleep(ms(300));
                }
            }
        }
        panic!(
            "tailer {args:?} could not start; stderr:\n{}",
            self.stderr_text()
        );
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// SIGKILL, reap, and collect everything it printed before dying.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
        self.join_threads();
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn line_count(&self) -> usize {
        lock(&self.lines).len()
    }

    pub fn records(&self) -> Vec<Value> {
        lock(&self.lines).iter().map(|l| parse_printed(l)).collect()
    }

    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.line_count() >= n)
    }

    /// Waits until every expected record has arrived at least once.
    pub fn wait_all(&self, cov: &mut Coverage, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let new: Vec<String> = {
                let lines = lock(&self.lines);
                lines[cov.cursor.min(lines.len())..].to_vec()
            };
            cov.cursor += new.len();
            for l in &new {
                cov.feed(&parse_printed(l));
            }
            cov.is_complete()
        })
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.stderr)).into_owned()
    }
}

impl Drop for TlsTailer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "[harness] tailer {:?} port {}: {} lines received; stderr (tail):\n{}",
                self.extra,
                self.port,
                self.line_count(),
                tail_of(&self.stderr_text(), 20_000)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the forwarder's log
// ---------------------------------------------------------------------------------------------

/// The message part of each env_logger line (`[<time> <LEVEL> <module>] <message>`), lower
/// case; the timestamp is cut off so that its digits never match a status code.
pub fn log_messages(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split_once("] "))
        .map(|(_, msg)| msg.to_lowercase())
        .collect()
}

/// Messages of connection failures (`<target>: <reason>; retrying in <d>`).
pub fn failure_messages(text: &str) -> Vec<String> {
    log_messages(text)
        .into_iter()
        .filter(|m| m.contains("retrying"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A client of the chain (for checking the harness itself)
// ---------------------------------------------------------------------------------------------

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A rustls client configuration trusting `ca` and presenting `crt`/`key`.
pub fn rustls_client(ca: &Path, crt: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap_or_else(|e| panic!("{}: {e}", ca.display())) {
        roots
            .add(c.unwrap_or_else(|e| panic!("{}: {e}", ca.display())))
            .unwrap_or_else(|e| panic!("{}: {e}", ca.display()));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(crt)
        .and_then(|it| it.collect())
        .unwrap_or_else(|e| panic!("{}: {e}", crt.display()));
    let key =
        PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap_or_else(|e| panic!("client certificate {}: {e}", crt.display()));
    Arc::new(cfg)
}

impl Chain {
    /// A connection to the front end, as the forwarder makes it: the Unix socket, or TLS to
    /// stunnel presenting `client` (a NAME of the PKI, e.g. `proxy-client`).
    pub fn open(&self, client: &str) -> io::Result<Box<dyn ReadWrite>> {
        match &self.front {
            Front::Uds(f) => {
                let s = std::os::unix::net::UnixStream::connect(&f.path)?;
                s.set_read_timeout(Some(secs(5)))?;
                Ok(Box::new(s))
            }
            Front::Mtls(f) => {
                let cfg = rustls_client(
                    &self.pki.join("proxy-ca.crt"),
                    &self.pki.join(format!("{client}.crt")),
                    &self.pki.join(format!("{client}.key")),
                );
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1")
                    .expect("an IP address is a valid server name");
                let conn = rustls::ClientConnection::new(cfg, name).map_err(io::Error::other)?;
                let sock = TcpStream::connect(("127.0.0.1", f.port))?;
                sock.set_read_timeout(Some(secs(5)))?;
                Ok(Box::new(rustls::StreamOwned::new(conn, sock)))
            }
        }
    }
}

/// Sends `CONNECT 127.0.0.1:<port>` on `s` and reads the answer's head (through the empty
/// line); the head without the empty line.
pub fn send_connect(s: &mut dyn ReadWrite, port: u16) -> io::Result<String> {
    let req = format!("{}\r\nHost: 127.0.0.1:{port}\r\n\r\n", connect_line(port));
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(io::Error::other("answer head too long"));
        }
        match s.read(&mut b)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("closed after {:?}", String::from_utf8_lossy(&head)),
                ))
            }
            _ => head.push(b[0]),
        }
    }
    head.truncate(head.len() - 4);
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Reads until EOF (or an error, returned with what came before it).
pub fn read_to_close(s: &mut dyn ReadWrite) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (out, Some(e)),
        }
    }
}
