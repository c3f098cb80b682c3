//! The Kubernetes client as a source on the event loop. At start and then on every tick of
//! `--check-schedule` it reads the client-certificate Secret and the tailer's Service, one
//! HTTPS GET each on a nonblocking connection of its own, and tells the data path which TLS
//! material to use and where the receiver is. A tick that comes while a check is still running
//! is skipped, as the original's cron chain did.
//!
//! Faults are handled by kind: an API that cannot be reached (not up yet, connection refused,
//! TLS failure, timeout, 5xx) is retried with backoff; an answer the API meant (401, 403, 404,
//! a Service with two ports) is logged once with the Status message and checked again at the
//! next tick. A 401 first re-reads the token file, which Gardener rotates.
//!
//! The receiver is announced only once its TLS material is there (with a Secret), so the
//! connection never starts without it.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::{ClientConfig, ClientConnection};

use super::api::{self, Answer};
use super::http::{self, ResponseParser};
use super::kubeconfig::ApiConfig;
use super::schedule::Schedule;
use crate::cli::Target;
use crate::config;
use crate::event_loop::{Effect, Source};
use crate::net::resolve::{Resolver, Ticket};
use crate::net::tls;
use crate::net::transport::{Socket, Transport};
use crate::repeat::{self, RepeatLog, Say};

/// Longest time one GET may take, connect and TLS included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Secrets are at most 1 MiB; a Service is a few KiB.
const BODY_CAP: usize = 4 << 20;
/// client-go re-reads a token file every minute; so do we, besides on change and after a 401.
const TOKEN_MAX_AGE: Duration = Duration::from_secs(60);

/// Which keys of the Secret hold the client TLS material.
#[derive(Clone, Debug)]
pub struct SecretRef {
    pub name: String,
    pub ca_key: String,
    pub crt_key: String,
    pub key_key: String,
}

pub struct Settings {
    pub api: ApiConfig,
    pub namespace: String,
    /// The Service to discover; `None` with `--target`, which is then `fixed_target`.
    pub service: Option<String>,
    pub fixed_target: Option<Target>,
    /// The Secret with the client TLS material; `None` when the files or plaintext are used.
    pub secret: Option<SecretRef>,
    pub vhost: String,
    pub verify_hostname: bool,
    pub schedule: Schedule,
    /// `--check-schedule` as given, for the log.
    pub schedule_text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Object {
    Secret,
    Service,
}

enum Fetch {
    Resolving {
        ticket: Ticket,
        deadline: Instant,
    },
    Connecting {
        t: Transport,
        addrs: Vec<SocketAddr>,
        at: usize,
        deadline: Instant,
    },
    Exchange {
        t: Transport,
        out: Vec<u8>,
        sent: usize,
        parser: ResponseParser,
        deadline: Instant,
    },
}

/// A token file kept fresh: re-read when its directory changes, after a 401, and at least
/// every minute; a failed read keeps the last good token.
struct TokenFile {
    path: PathBuf,
    value: Option<String>,
    read_at: Instant,
    watch: Option<config::Watch>,
}

impl TokenFile {
    /// Re-reads the file; true when the token changed.
    fn reload(&mut self, now: Instant) -> bool {
        self.read_at = now;
        match std::fs::read_to_string(&self.path) {
            Ok(text) if !text.trim().is_empty() => {
                let token = text.trim().to_string();
                if self.value.as_deref() == Some(token.as_str()) {
                    return false;
                }
                if self.value.is_some() {
                    info!("token file {}: new token read", self.path.display());
                }
                self.value = Some(token);
                true
            }
            Ok(_) => {
                warn!(
                    "token file {}: empty; keeping the last token read",
                    self.path.display()
                );
                false
            }
            Err(e) => {
                warn!(
                    "token file {}: {e}; keeping the last token read",
                    self.path.display()
                );
                false
            }
        }
    }
}

pub struct Kube {
    s: Settings,
    tls: Arc<ClientConfig>,
    token: Option<TokenFile>,
    resolver: Resolver,
    sock_token: Token,
    watch_token: Token,
    next_check: Instant,
    /// Objects left to read in the current check, in order.
    queue: Vec<Object>,
    fetch: Option<Fetch>,
    /// Set after a failure to reach the API: the next attempt waits until then.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The receiver last told to the data path (`None` inside: told "no receiver").
    told: Option<Option<Target>>,
    /// The receiver the Service names, held back until the TLS material is there.
    found: Option<Target>,
    secret_version: Option<String>,
    /// The last line logged per object, so a fault that persists is logged once.
    last_log: [Option<String>; 2],
    /// Requests that did not reach the API or that it could not serve: logged once at warn,
    /// then summarised, and their end once at info.
    faults: RepeatLog,
    /// A 401 already led to a re-read of the token in this check.
    retried_401: bool,
}

impl Kube {
    pub fn new(
        s: Settings,
        resolver: Resolver,
        registry: &Registry,
        base: Token,
    ) -> Result<Kube, String> {
        let identity = match (&s.api.client_cert_pem, &s.api.client_key_pem) {
            (Some(c), Some(k)) => Some((
                tls::Pem {
                    origin: format!("{}: user {:?} client certificate", s.api.origin, s.api.user),
                    bytes: c.clone(),
                },
                tls::Pem {
                    origin: format!("{}: user {:?} client key", s.api.origin, s.api.user),
                    bytes: k.clone(),
                },
            )),
            _ => None,
        };
        let ca = s.api.ca_pem.as_ref().map(|b| tls::Pem {
            origin: format!(
                "{}: cluster {:?} certificate authority",
                s.api.origin, s.api.cluster
            ),
            bytes: b.clone(),
        });
        if s.api.insecure {
            warn!(
                "{}: insecure-skip-tls-verify is set: the Kubernetes API server's certificate is not checked",
                s.api.origin
            );
        }
        let tls = tls::api_client_config(
            ca.as_ref(),
            s.api.insecure,
            identity.as_ref().map(|(c, k)| (c, k)),
        )
        .map_err(|e| e.to_string())?;
        let sock_token = base;
        let watch_token = Token(base.0 + 1);
        let now = Instant::now();
        let token = match &s.api.token_file {
            None => None,
            Some(path) => {
                let watch = match config::Watch::new(&[path.as_path()]) {
                    Ok(w) => {
                        registry
                            .register(
                                &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(
                                    w.inotify(),
                                )),
                                watch_token,
                                Interest::READABLE,
                            )
                            .map_err(|e| format!("register inotify: {e}"))?;
                        Some(w)
                    }
                    Err(e) => {
                        warn!(
                            "cannot watch token file {} for changes ({e}); re-reading it every minute",
                            path.display()
                        );
                        None
                    }
                };
                let mut t = TokenFile {
                    path: path.clone(),
                    value: None,
                    read_at: now,
                    watch,
                };
                t.reload(now);
                Some(t)
            }
        };
        info!(
            "kubernetes API https://{}{} ({}, context {:?}); checking{}{} in namespace {} at start and on schedule {}",
            s.api.authority(),
            s.api.base_path,
            s.api.origin,
            s.api.context,
            s.service
                .as_ref()
                .map(|n| format!(" service {n}"))
                .unwrap_or_default(),
            s.secret
                .as_ref()
                .map(|r| format!(" secret {}", r.name))
                .unwrap_or_default(),
            s.namespace,
            s.schedule_text,
        );
        Ok(Kube {
            s,
            tls,
            token,
            resolver,
            sock_token,
            watch_token,
            next_check: now,
            queue: Vec::new(),
            fetch: None,
            retry_at: None,
            backoff: BACKOFF_START,
            told: None,
            found: None,
            secret_version: None,
            last_log: [None, None],
            faults: RepeatLog::default(),
            retried_401: false,
        })
    }

    fn name_of(&self, o: Object) -> String {
        let name = match o {
            Object::Secret => self.s.secret.as_ref().map(|r| r.name.as_str()),
            Object::Service => self.s.service.as_deref(),
        }
        .unwrap_or("");
        let kind = match o {
            Object::Secret => "secret",
            Object::Service => "service",
        };
        format!("{kind} {}/{name}", self.s.namespace)
    }

    fn path_of(&self, o: Object) -> String {
        let ns = &self.s.namespace;
        match o {
            Object::Secret => api::secret_path(
                &self.s.api.base_path,
                ns,
                self.s
                    .secret
                    .as_ref()
                    .map(|r| r.name.as_str())
                    .unwrap_or(""),
            ),
            Object::Service => api::service_path(
                &self.s.api.base_path,
                ns,
                self.s.service.as_deref().unwrap_or(""),
            ),
        }
    }

    /// Starts the GET of the object at the head of the queue.
    fn start(&mut self, now: Instant) {
        // The token is only sent here, so here is where it must be no older than a minute.
        if let Some(t) = self
            .token
            .as_mut()
            .filter(|t| now >= t.read_at + TOKEN_MAX_AGE)
        {
            t.reload(now);
        }
        let ticket = self.resolver.ask(&self.s.api.host, self.s.api.port);
        self.fetch = Some(Fetch::Resolving {
            ticket,
            deadline: now + REQUEST_TIMEOUT,
        });
    }

    /// Advances the request in flight; returns its answer or a fault once there is one.
    fn advance(
        &mut self,
        registry: &Registry,
        now: Instant,
    ) -> Option<Result<http::Response, String>> {
        loop {
            let fetch = self.fetch.take()?;
            match self.step(fetch, registry, now) {
                Ok(Step::Wait(f)) => {
                    self.fetch = Some(f);
                    return None;
                }
                Ok(Step::Next(f)) => self.fetch = Some(f),
                Ok(Step::Done(r)) => return Some(Ok(r)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn step(&mut self, fetch: Fetch, registry: &Registry, now: Instant) -> Result<Step, String> {
        match fetch {
            Fetch::Resolving { ticket, deadline } => match self.resolver.answer(ticket) {
                Some(Ok(addrs)) if !addrs.is_empty() => {
                    let t = self.dial(&addrs, 0, registry)?;
                    Ok(Step::Wait(Fetch::Connecting {
                        t,
                        addrs,
                        at: 0,
                        deadline,
                    }))
                }
                Some(Ok(_)) => Err(format!("resolve {}: no addresses", self.s.api.host)),
                Some(Err(e)) => Err(e),
                None if now >= deadline => Err(format!(
                    "resolve {}: no answer within {REQUEST_TIMEOUT:?}",
                    self.s.api.host
                )),
                None => Ok(Step::Wait(Fetch::Resolving { ticket, deadline })),
            },
            Fetch::Connecting {
                mut t,
                addrs,
                at,
                deadline,
            } => {
                let failed = match t.sock.connected() {
                    Ok(true) => None,
                    Ok(false) if now < deadline => {
                        return Ok(Step::Wait(Fetch::Connecting {
                            t,
                            addrs,
                            at,
                            deadline,
                        }))
                    }
                    Ok(false) => Some(format!("connect {}: timed out", addrs[at])),
                    Err(e) => Some(format!("connect {}: {e}", addrs[at])),
                };
                if let Some(why) = failed {
                    let _ = registry.deregister(&mut t.sock);
                    if at + 1 < addrs.len() {
                        debug!("kubernetes API: {why}; trying the next address");
                        let t = self.dial(&addrs, at + 1, registry)?;
                        return Ok(Step::Next(Fetch::Connecting {
                            t,
                            addrs,
                            at: at + 1,
                            deadline,
                        }));
                    }
                    return Err(why);
                }
                let name = self
                    .s
                    .api
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| self.s.api.host.clone());
                let server_name = tls::server_name(&name).map_err(|e| e.to_string())?;
                let conn = ClientConnection::new(Arc::clone(&self.tls), server_name)
                    .map_err(|e| format!("TLS setup: {e}"))?;
                t.inner = Some(conn);
                let object = self.queue.first().copied().unwrap_or(Object::Service);
                let out = http::request(&self.host_header(), &self.path_of(object), &self.auth())
                    .map_err(|e| e.to_string())?;
                Ok(Step::Next(Fetch::Exchange {
                    t,
                    out,
                    sent: 0,
                    parser: ResponseParser::new(BODY_CAP),
                    deadline,
                }))
            }
            Fetch::Exchange {
                mut t,
                out,
                mut sent,
                mut parser,
                deadline,
            } => {
                let peer = format!("https://{}", self.s.api.authority());
                let result = exchange(&mut t, &out, &mut sent, &mut parser);
                match result {
                    Ok(Some(resp)) => {
                        let _ = registry.deregister(&mut t.sock);
                        Ok(Step::Done(resp))
                    }
                    Ok(None) if now >= deadline => {
                        let _ = registry.deregister(&mut t.sock);
                        Err(format!("no complete answer within {REQUEST_TIMEOUT:?}"))
                    }
                    Ok(None) => Ok(Step::Wait(Fetch::Exchange {
                        t,
                        out,
                        sent,
                        parser,
                        deadline,
                    })),
                    Err(e) => {
                        let _ = registry.deregister(&mut t.sock);
                        let e = match crate::net::transport::tls_failure(&e) {
                            Some(te) => format!("TLS with {peer}: {te}"),
                            None => e.to_string(),
                        };
                        Err(e)
                    }
                }
            }
        }
    }

    fn dial(
        &self,
        addrs: &[SocketAddr],
        at: usize,
        registry: &Registry,
    ) -> Result<Transport, String> {
        let addr = addrs[at];
        let mut sock = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        registry
            .register(
                &mut sock,
                self.sock_token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register socket: {e}"))?;
        Ok(Transport::new(Socket::Tcp(sock)))
    }

    /// `host[:port]` as the Host header takes it (the port only when not 443).
    fn host_header(&self) -> String {
        match self.s.api.port {
            443 => self.s.api.authority().trim_end_matches(":443").to_string(),
            _ => self.s.api.authority(),
        }
    }

    fn auth(&self) -> http::Auth {
        if let Some(t) = self.token.as_ref().and_then(|t| t.value.clone()) {
            return http::Auth::Bearer(t);
        }
        if let Some(t) = &self.s.api.token {
            return http::Auth::Bearer(t.clone());
        }
        if let Some((u, p)) = &self.s.api.basic {
            return http::Auth::Basic {
                username: u.clone(),
                password: p.clone(),
            };
        }
        http::Auth::None
    }

    /// Logs `line` unless it is what was logged last for `o`.
    fn log_once(&mut self, o: Object, level: log::Level, line: String) {
        let slot = &mut self.last_log[o as usize];
        if slot.as_deref() == Some(line.as_str()) {
            debug!("{line}");
        } else {
            log::log!(level, "{line}");
            *slot = Some(line);
        }
    }

    /// What one answer means. Returns false when the same object must be asked again at once
    /// (a 401 after which the token changed).
    fn handle(&mut self, o: Object, resp: http::Response, out: &mut Vec<Effect>) -> bool {
        let what = self.name_of(o);
        let answer = match o {
            Object::Service => map(api::service(&resp), Thing::Service),
            Object::Secret => map(api::secret(&resp), Thing::Secret),
        };
        // A 5xx is an answer but not a recovery: counting it as one would log the fault again
        // on every retry and reset the backoff to its start.
        if !matches!(answer, Answer::Failed(_)) {
            self.recovered();
        }
        match answer {
            Answer::Found(Thing::Service(svc)) => match api::target(&svc) {
                Ok((ip, port)) => {
                    let target = Target { host: ip, port };
                    self.log_once(o, log::Level::Info, format!("{what}: receiver {target}"));
                    self.found = Some(target);
                    self.announce(out);
                }
                // `e` names the Service already.
                Err(e) => self.log_once(
                    o,
                    log::Level::Error,
                    format!("{e}; keeping the current receiver, checking again at the next tick"),
                ),
            },
            Answer::Found(Thing::Secret(secret)) => {
                if self.secret_version.as_deref() == Some(secret.resource_version.as_str()) {
                    return true;
                }
                let Some(r) = self.s.secret.clone() else {
                    return true;
                };
                let made =
                    api::material(&secret, &r.ca_key, &r.crt_key, &r.key_key).and_then(|m| {
                        let pem = |k: &str, bytes: Vec<u8>| tls::Pem {
                            origin: format!("{what} key {k:?}"),
                            bytes,
                        };
                        tls::client_tls_from_pem(
                            &pem(&r.ca_key, m.ca),
                            &pem(&r.crt_key, m.cert),
                            &pem(&r.key_key, m.key),
                            &self.s.vhost,
                            self.s.verify_hostname,
                        )
                        .map_err(|e| e.to_string())
                    });
                match made {
                    Ok(client) => {
                        self.log_once(
                            o,
                            log::Level::Info,
                            format!(
                                "{what} (resourceVersion {}): client TLS material for the next connection",
                                secret.resource_version
                            ),
                        );
                        self.secret_version = Some(secret.resource_version.clone());
                        out.push(Effect::ReceiverTls(client));
                        self.announce(out);
                    }
                    Err(e) => self.log_once(
                        o,
                        log::Level::Error,
                        format!(
                            "{what} (resourceVersion {}): {e}; {}",
                            secret.resource_version,
                            match self.secret_version {
                                Some(_) => "keeping the previous material",
                                None => "waiting for a usable secret before sending",
                            }
                        ),
                    ),
                }
            }
            Answer::NotFound(msg) => match o {
                Object::Service => {
                    self.log_once(
                        o,
                        log::Level::Warn,
                        format!("{what}: not found ({msg}); delivery paused, position kept, checking again at the next tick"),
                    );
                    self.found = None;
                    self.tell(None, out);
                }
                Object::Secret => self.log_once(
                    o,
                    log::Level::Error,
                    format!("{what}: not found ({msg}); {}", self.secret_wait()),
                ),
            },
            Answer::Denied { code, message } => {
                if code == 401 && !self.retried_401 {
                    self.retried_401 = true;
                    let now = Instant::now();
                    if self.token.as_mut().is_some_and(|t| t.reload(now)) {
                        info!("{what}: 401 Unauthorized; retrying with the new token from the token file");
                        return false;
                    }
                }
                let tail = match o {
                    Object::Service => "checking again at the next tick".to_string(),
                    Object::Secret => self.secret_wait(),
                };
                self.log_once(
                    o,
                    log::Level::Error,
                    format!("{what}: {code} from the Kubernetes API: {message}; {tail}"),
                );
            }
            Answer::Failed(msg) => {
                // The API answered but could not serve: like an unreachable API, retried soon.
                self.fault(format!("{what}: {msg}"), Instant::now(), out);
                return false;
            }
        }
        true
    }

    /// The API served a request: the fault logged before (if any) is over.
    fn recovered(&mut self) {
        if let Some(r) = self.faults.recovered(Instant::now()) {
            info!(
                "kubernetes API https://{} answers again after {} failed requests over {:.1}s",
                self.s.api.authority(),
                r.failures,
                r.lasted.as_secs_f64()
            );
        }
        self.backoff = BACKOFF_START;
    }

    fn secret_wait(&self) -> String {
        match self.secret_version {
            Some(_) => {
                "keeping the current client certificate, checking again at the next tick".into()
            }
            None => {
                "nothing is sent until a usable secret is read; checking again at the next tick"
                    .into()
            }
        }
    }

    /// Tells the data path the receiver, once its TLS material (if from a Secret) is there.
    fn announce(&mut self, out: &mut Vec<Effect>) {
        if self.s.secret.is_some() && self.secret_version.is_none() {
            return;
        }
        let target = match self.s.service {
            Some(_) => self.found.clone(),
            None => self.s.fixed_target.clone(),
        };
        if target.is_some() {
            self.tell(target, out);
        }
    }

    fn tell(&mut self, target: Option<Target>, out: &mut Vec<Effect>) {
        if self.told.as_ref() != Some(&target) {
            self.told = Some(target.clone());
            out.push(Effect::Receiver(target));
        }
    }

    /// The API could not be reached or could not serve: counted as a connection failure for
    /// the metrics, logged once, retried with backoff.
    fn fault(&mut self, why: String, now: Instant, out: &mut Vec<Effect>) {
        out.push(Effect::ApiFailed);
        let api = format!("kubernetes API https://{}", self.s.api.authority());
        let line = format!("{api}: {why}; retrying in {:.0?}", self.backoff);
        match self.faults.failed(&why, now, SystemTime::now()) {
            Say::First => warn!("{line}"),
            Say::Quiet => debug!("{line}"),
            Say::Summary { repeats, since } => warn!(
                "{api}: failed requests {}; retrying with backoff up to {BACKOFF_MAX:?}",
                repeat::summary(repeats, since, &why)
            ),
        }
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn schedule_next(&mut self, now: Instant) {
        let wall = SystemTime::now();
        self.next_check = match self.s.schedule.next_after(wall) {
            Some(at) => now + at.duration_since(wall).unwrap_or(Duration::ZERO),
            // A schedule that never fires again (`0 0 30 2 *`): the start-up check was the last.
            None => now + Duration::from_secs(365 * 24 * 3600),
        };
        debug!("next kubernetes check in {:?}", self.next_check - now);
    }

    fn pump(&mut self, registry: &Registry, out: &mut Vec<Effect>) {
        loop {
            let now = Instant::now();
            if self.fetch.is_none() {
                if self.queue.is_empty() || self.retry_at.is_some_and(|t| now < t) {
                    return;
                }
                self.retry_at = None;
                self.start(now);
            }
            let Some(result) = self.advance(registry, now) else {
                return;
            };
            let Some(&o) = self.queue.first() else {
                return;
            };
            match result {
                Ok(resp) => {
                    if self.handle(o, resp, out) {
                        self.queue.remove(0);
                        self.retried_401 = false;
                    }
                }
                Err(e) => self.fault(e, now, out),
            }
        }
    }
}

enum Step {
    /// Waiting for readiness or the resolver.
    Wait(Fetch),
    /// Moved on; try the next state at once.
    Next(Fetch),
    Done(http::Response),
}

enum Thing {
    Service(api::Service),
    Secret(api::Secret),
}

fn map<T>(a: Answer<T>, f: impl FnOnce(T) -> Thing) -> Answer<Thing> {
    match a {
        Answer::Found(t) => Answer::Found(f(t)),
        Answer::NotFound(m) => Answer::NotFound(m),
        Answer::Denied { code, message } => Answer::Denied { code, message },
        Answer::Failed(m) => Answer::Failed(m),
    }
}

/// Moves the request and the answer as far as the socket allows.
fn exchange(
    t: &mut Transport,
    out: &[u8],
    sent: &mut usize,
    parser: &mut ResponseParser,
) -> io::Result<Option<http::Response>> {
    if !t.handshake()? {
        return Ok(None);
    }
    while *sent < out.len() {
        match t.write(&out[*sent..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection closed",
                ))
            }
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    t.handshake()?;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match t.read(&mut buf) {
            Ok(0) => {
                return parser
                    .eof()
                    .map(Some)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
            }
            Ok(n) => {
                if let Some(resp) = parser
                    .feed(&buf[..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
                {
                    return Ok(Some(resp));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

impl Source for Kube {
    fn owns(&self, token: Token) -> bool {
        token == self.sock_token
            || token == self.watch_token
            || token == crate::event_loop::RESOLVER
    }

    fn on_event(&mut self, token: Token, registry: &Registry, out: &mut Vec<Effect>) {
        if token == self.watch_token {
            let now = Instant::now();
            if let Some(t) = self.token.as_mut() {
                if t.watch.as_mut().is_some_and(|w| w.changed()) {
                    t.reload(now);
                }
            }
            return;
        }
        self.pump(registry, out);
    }

    fn on_time(&mut self, now: Instant, registry: &Registry, out: &mut Vec<Effect>) {
        if now >= self.next_check {
            if self.queue.is_empty() {
                // The Secret first: the receiver is announced only with its material.
                self.queue = [
                    self.s.secret.as_ref().map(|_| Object::Secret),
                    self.s.service.as_ref().map(|_| Object::Service),
                ]
                .into_iter()
                .flatten()
                .collect();
                self.retry_at = None;
                self.backoff = BACKOFF_START;
            } else {
                debug!("kubernetes check still running at the next tick; skipping the tick");
            }
            self.schedule_next(now);
        }
        self.pump(registry, out);
    }

    fn deadline(&self) -> Option<Instant> {
        let fetch = match &self.fetch {
            Some(Fetch::Resolving { deadline, .. })
            | Some(Fetch::Connecting { deadline, .. })
            | Some(Fetch::Exchange { deadline, .. }) => Some(*deadline),
            None => self.retry_at,
        };
        [Some(self.next_check), fetch].into_iter().flatten().min()
    }
}
