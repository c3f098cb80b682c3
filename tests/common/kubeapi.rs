//! A Kubernetes API server inside the test process, for the end-to-end tests of Service and
//! Secret discovery. Owns: its PKI (a server CA, a client CA the server trusts and an untrusted
//! third CA, made with the openssl command below the harness's test PKI), the HTTPS server
//! itself (std threads, blocking sockets, rustls with the ring provider), its object store and
//! the faults it can be told to show, the record of every request it answered, the kubeconfig
//! files a client reads to find it (kind, Gardener generic token, insecure token, JSON), and a
//! Secret volume laid out and rotated the way the kubelet does it.
//!
//! What it copies from kube-apiserver, because the forwarder's client must cope with it:
//! - object and Status bodies byte for byte as the real server writes them (compact JSON, map
//!   keys sorted, `managedFields` included);
//! - authentication as its union authenticator does it: a client certificate from the client CA
//!   wins, else a bearer token from the valid set, else 401; an invalid certificate fails the
//!   TLS handshake (Go's `VerifyClientCertIfGiven`, here rustls' `allow_unauthenticated`);
//! - HTTP/1.1 with keep-alive, `Content-Length` bodies by default, chunked or close-delimited
//!   bodies on request.
//!
//! The state (tokens, objects, faults, request log) lives across `stop()` and `listen()`, so a
//! test can prepare the server before it is up and keep asserting after it went down.

use super::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::net::Shutdown;
use std::os::unix::fs::symlink;

// ---------------------------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------------------------

/// Subject CNs of the three CAs (files `server-ca.crt`, `client-ca.crt`, `other-ca.crt`).
pub const KUBE_CA_CN: &str = "kube-test-server-ca";
pub const KUBE_CLIENT_CA_CN: &str = "kube-test-client-ca";
pub const KUBE_OTHER_CA_CN: &str = "kube-test-other-ca";

/// The server certificate's extensions, appended to the CA's `openssl ca` config: kubeconfigs
/// name the server by IP (kind) or by `localhost`, so both go into the SAN.
const KUBE_SERVER_EXT: &str = "
[kube_server]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
";

/// The key type of a client certificate. kind writes RSA keys in PKCS#1 (`RSA PRIVATE KEY`);
/// EC keys come as SEC1 (`EC PRIVATE KEY`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyKind {
    Rsa,
    Ec,
}

/// A client certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cn: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The API server's certificates, made once per test process in `<test PKI>/kube`:
///
/// | file | issuer | what |
/// |---|---|---|
/// | server-ca.crt | self | the CA clients must trust (kubeconfig `certificate-authority-data`) |
/// | client-ca.crt | self | the CA the server verifies client certificates with |
/// | other-ca.crt | self | trusted by nobody |
/// | server.crt + server.key | server CA | SAN IP:127.0.0.1, DNS:localhost |
/// | untrusted-server.crt | other CA | same SAN and key, for "wrong CA" tests |
/// | client-N.crt + client-N.key | client CA or other CA | from [`KubePki::client_cert`] |
pub struct KubePki {
    dir: PathBuf,
    /// `openssl ca` keeps its serial and index in files: one issue at a time. Counts the issued
    /// client certificates for their file names.
    issue: Mutex<u64>,
    /// DER of every issued client certificate -> its CN, so the server can name the user.
    issued: Mutex<HashMap<Vec<u8>, String>>,
}

static KUBE_PKI: std::sync::OnceLock<KubePki> = std::sync::OnceLock::new();

/// The API server's PKI (see [`KubePki`]), generated on first use inside the harness's test PKI
/// directory, so it is removed with it when the process exits.
pub fn kube_pki() -> &'static KubePki {
    KUBE_PKI.get_or_init(|| {
        let dir = pki().dir().join("kube");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let d = dir.as_path();
        for (name, cn) in [
            ("server-ca", KUBE_CA_CN),
            ("client-ca", KUBE_CLIENT_CA_CN),
            ("other-ca", KUBE_OTHER_CA_CN),
        ] {
            pki_make_ca(d, name, cn);
            let cnf = d.join(name).join("ca.cnf");
            let mut f = OpenOptions::new()
                .append(true)
                .open(&cnf)
                .unwrap_or_else(|e| panic!("open {}: {e}", cnf.display()));
            f.write_all(KUBE_SERVER_EXT.as_bytes())
                .unwrap_or_else(|e| panic!("write {}: {e}", cnf.display()));
        }
        openssl(d, "ecparam -name prime256v1 -genkey -noout -out server.key");
        for (ca, out) in [
            ("server-ca", "server.crt"),
            ("other-ca", "untrusted-server.crt"),
        ] {
            pki_issue(
                d,
                ca,
                "server.key",
                "kube-apiserver",
                "kube_server",
                PKI_VALID,
                out,
            );
        }
        KubePki {
            dir,
            issue: Mutex::new(0),
            issued: Mutex::new(HashMap::new()),
        }
    })
}

impl KubePki {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA a client must trust to accept the server's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("server-ca.crt")
    }

    /// The CA the server verifies client certificates with.
    pub fn client_ca_cert(&self) -> PathBuf {
        self.dir.join("client-ca.crt")
    }

    /// A CA nobody trusts (for a kubeconfig whose CA does not match the server).
    pub fn other_ca_cert(&self) -> PathBuf {
        self.dir.join("other-ca.crt")
    }

    /// A new client certificate with subject CN `cn` (no whitespace or `/`), signed by the
    /// client CA the server trusts; `cn` is the user the server records.
    pub fn client_cert(&self, cn: &str, key: KeyKind) -> ClientCert {
        self.issue_client(cn, key, "client-ca")
    }

    /// As [`KubePki::client_cert`], but signed by the other CA: the server rejects it in the
    /// TLS handshake.
    pub fn untrusted_client_cert(&self, cn: &str) -> ClientCert {
        self.issue_client(cn, KeyKind::Ec, "other-ca")
    }

    fn issue_client(&self, cn: &str, key: KeyKind, ca: &str) -> ClientCert {
        let mut n = lock(&self.issue);
        *n += 1;
        let (crt, key_file) = (format!("client-{n}.crt"), format!("client-{n}.key"));
        let d = self.dir.as_path();
        match key {
            KeyKind::Rsa => openssl(d, &format!("genrsa -traditional -out {key_file} 2048")),
            KeyKind::Ec => openssl(
                d,
                &format!("ecparam -name prime256v1 -genkey -noout -out {key_file}"),
            ),
        }
        pki_issue(d, ca, &key_file, cn, "client", PKI_VALID, &crt);
        let cert = d.join(&crt);
        for der in CertificateDer::pem_file_iter(&cert)
            .unwrap_or_else(|e| panic!("read {}: {e:?}", cert.display()))
            .flatten()
        {
            lock(&self.issued).insert(der.to_vec(), cn.to_string());
        }
        ClientCert {
            cn: cn.to_string(),
            cert,
            key: d.join(&key_file),
        }
    }

    /// The CN of a certificate this PKI issued.
    fn cn_of(&self, der: &[u8]) -> Option<String> {
        lock(&self.issued).get(der).cloned()
    }

    fn server_config(&self, untrusted: bool) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let client_ca = self.client_ca_cert();
        for der in CertificateDer::pem_file_iter(&client_ca)
            .unwrap_or_else(|e| panic!("read {}: {e:?}", client_ca.display()))
        {
            let der = der.unwrap_or_else(|e| panic!("{}: {e:?}", client_ca.display()));
            roots
                .add(der)
                .expect("the client CA is a valid trust anchor");
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .expect("client verifier");
        let cert = self.dir.join(if untrusted {
            "untrusted-server.crt"
        } else {
            "server.crt"
        });
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap_or_else(|e| panic!("read {}: {e:?}", cert.display()))
            .flatten()
            .collect();
        let key = PrivateKeyDer::from_pem_file(self.dir.join("server.key")).expect("server.key");
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server certificate and key match");
        // kube-apiserver offers h2 as well; a client that asks for ALPN gets HTTP/1.1 here.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

// ---------------------------------------------------------------------------------------------
// Objects and Status bodies, as kube-apiserver writes them
// ---------------------------------------------------------------------------------------------

/// The user kube-apiserver names for a valid bearer token in a 403 message (the tokens here
/// stand for that ServiceAccount's tokens).
pub const TOKEN_USER: &str = "system:serviceaccount:kube-system:audittailer-client";

/// A real Service GET response; NAME, NS, RV, IP, PORTS and FPORTS are filled in.
const SERVICE_TEMPLATE: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"$NAME","namespace":"$NS","uid":"6d1f7c1e-3b7a-4c57-9a38-1f0b7c2e9d11","resourceVersion":"$RV","creationTimestamp":"2025-09-30T15:35:08Z","labels":{"app":"$NAME"},"managedFields":[{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"v1","time":"2025-09-30T15:35:08Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:internalTrafficPolicy":{},"f:ports":{".":{},$FPORTS},"f:selector":{},"f:sessionAffinity":{},"f:type":{}}}}]},"spec":{"ports":[$PORTS],"selector":{"app":"$NAME"},"clusterIP":"$IP","clusterIPs":["$IP"],"type":"ClusterIP","sessionAffinity":"None","ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;

/// A real Secret GET response; $NAME, $NS, $RV and $DATA are filled in.
const SECRET_TEMPLATE: &str = r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"$NAME","namespace":"$NS","uid":"0b5c2a7e-8f4d-4e0a-9d55-3c6f1e2a7b90","resourceVersion":"$RV","creationTimestamp":"2025-09-30T15:35:08Z","labels":{"name":"$NAME"}},"data":$DATA,"type":"Opaque"}"#;

pub fn service_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/services/{name}")
}

pub fn secret_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/secrets/{name}")
}

/// The body of `GET` on a ClusterIP Service with TCP `ports` (target port = port). With more
/// than one port each is named `port-<n>`, as the API requires.
pub fn service_json(name: &str, ns: &str, cluster_ip: &str, ports: &[u16], rv: &str) -> String {
    let named = ports.len() > 1;
    let spec: Vec<String> = ports
        .iter()
        .map(|p| {
            let name = if named {
                format!(r#""name":"port-{p}","#)
            } else {
                String::new()
            };
            format!(r#"{{{name}"protocol":"TCP","port":{p},"targetPort":{p}}}"#)
        })
        .collect();
    let fields: Vec<String> = ports
        .iter()
        .map(|p| {
            let name = if named { r#""f:name":{},"# } else { "" };
            format!(
                r#""k:{{\"port\":{p},\"protocol\":\"TCP\"}}":{{".":{{}},{name}"f:port":{{}},"f:protocol":{{}},"f:targetPort":{{}}}}"#
            )
        })
        .collect();
    SERVICE_TEMPLATE
        .replace("$NAME", name)
        .replace("$NS", ns)
        .replace("$RV", rv)
        .replace("$FPORTS", &fields.join(","))
        .replace("$PORTS", &spec.join(","))
        .replace("$IP", cluster_ip)
}

/// The body of `GET` on an Opaque Secret; `data` values are base64-encoded and, as Go encodes
/// maps, the keys come out sorted.
pub fn secret_json(name: &str, ns: &str, rv: &str, data: &[(&str, &[u8])]) -> String {
    let mut sorted: Vec<&(&str, &[u8])> = data.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    let entries: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!(r#""{k}":"{}""#, base64(v)))
        .collect();
    SECRET_TEMPLATE
        .replace("$NAME", name)
        .replace("$NS", ns)
        .replace("$RV", rv)
        .replace("$DATA", &format!("{{{}}}", entries.join(",")))
}

/// `json` (an object body) with `metadata.annotations.pad` of `pad` bytes: a valid object as
/// large as a test wants, for body caps.
pub fn with_padding(json: &str, pad: usize) -> String {
    let annotation = format!(r#""annotations":{{"pad":"{}"}},"labels":"#, "x".repeat(pad));
    json.replacen(r#""labels":"#, &annotation, 1)
}

/// Standard base64 with padding (Secret `data`, kubeconfig `*-data`).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// A `Status` body; `details` is the JSON object or None (401 has none).
fn status_json(code: u16, reason: &str, message: &str, details: Option<&str>) -> String {
    let details = details
        .map(|d| format!(r#""details":{d},"#))
        .unwrap_or_default();
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":{},"reason":"{reason}",{details}"code":{code}}}"#,
        json_str(message)
    )
}

/// `(namespace, resource, name)` of `/api/v1/namespaces/{ns}/{resource}/{name}`.
fn object_of(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(res), Some(name), None) if !name.is_empty() => Some((ns, res, name)),
        _ => None,
    }
}

/// The Status kube-apiserver answers with `code` for `method path` by `user`.
fn status_for(code: u16, method: &str, path: &str, user: &str) -> String {
    let obj = object_of(path);
    let details =
        obj.map(|(_, res, name)| format!(r#"{{"name":{},"kind":"{res}"}}"#, json_str(name)));
    match (code, obj) {
        (401, _) => status_json(401, "Unauthorized", "Unauthorized", None),
        (403, Some((ns, res, name))) => {
            let verb = method.to_ascii_lowercase();
            let message = format!(
                r#"{res} "{name}" is forbidden: User "{user}" cannot {verb} resource "{res}" in API group "" in the namespace "{ns}""#
            );
            status_json(403, "Forbidden", &message, details.as_deref())
        }
        (404, Some((_, res, name))) => {
            let message = format!(r#"{res} "{name}" not found"#);
            status_json(404, "NotFound", &message, details.as_deref())
        }
        (404, None) => status_json(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some("{}"),
        ),
        (405, _) => status_json(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            Some("{}"),
        ),
        (429, _) => status_json(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            Some(r#"{"retryAfterSeconds":1}"#),
        ),
        (500, _) => status_json(
            500,
            "InternalError",
            "Internal error occurred: injected by the test",
            Some(r#"{"causes":[{"message":"injected by the test"}]}"#),
        ),
        (503, _) => status_json(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            Some("{}"),
        ),
        (code, _) => status_json(code, "Unknown", "injected by the test", Some("{}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// Who a request was authenticated as.
#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    /// Neither a client certificate nor a valid token: answered 401 (unless forced otherwise).
    None,
    /// A valid bearer token (the token itself).
    Token(String),
    /// A client certificate from the client CA (its CN).
    Cert(String),
}

/// One request the server answered (or hung up on).
#[derive(Clone, Debug)]
pub struct Request {
    /// Connection number, from 1 in accept order over the server's life: equal numbers mean
    /// the client reused the connection.
    pub conn: usize,
    pub method: String,
    /// The request target as sent (query included).
    pub path: String,
    pub http10: bool,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The bearer token presented, valid or not.
    pub token: Option<String>,
    /// The CN of the client certificate presented in the handshake.
    pub cert_cn: Option<String>,
    pub auth: Auth,
    /// The status answered; 0 for a forced hang-up.
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Framing {
    /// `Content-Length` (what kube-apiserver does for small objects).
    ContentLength,
    /// `Transfer-Encoding: chunked` in several chunks of varying size, the first with a chunk
    /// extension, one size in upper-case hex with leading zeros.
    Chunked,
    /// As `Chunked`, announced `Trailer:` and a trailer field after the last chunk.
    ChunkedWithTrailers,
    /// No length: the body ends when the server closes the connection (after close_notify).
    CloseDelimited,
}

/// A fault forced on one path.
#[derive(Clone, Debug, PartialEq)]
enum Forced {
    /// Answer this status with the Status body kube-apiserver sends for it.
    Status(u16),
    /// Read the request, then close the connection without answering.
    HangUp,
}

struct State {
    /// Valid bearer tokens -> the user they stand for.
    tokens: HashMap<String, String>,
    /// Request path -> (status, body) of a GET.
    objects: HashMap<String, (u16, Vec<u8>)>,
    forbidden: HashSet<String>,
    forced: HashMap<String, Forced>,
    delay: Duration,
    framing: Framing,
    keep_alive: bool,
    untrusted_cert: bool,
    requests: Vec<Request>,
    tls_errors: Vec<String>,
    connections: usize,
}

/// A test Kubernetes API server on https://127.0.0.1:`port` (see the module docs).
pub struct KubeApi {
    pub port: u16,
    state: Arc<Mutex<State>>,
    server: Option<Server>,
}

struct Server {
    stop: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
}

/// Longest request head the server reads (kube-apiserver's Go server allows 1 MiB; tests need
/// no more than a few KiB, and a cap keeps a broken client from growing the buffer forever).
const MAX_HEAD: usize = 64 * 1024;

impl KubeApi {
    /// A server for `port` that is not listening yet: prepare objects and tokens, write
    /// kubeconfigs, start the forwarder, then [`KubeApi::listen`].
    pub fn new(port: u16) -> KubeApi {
        kube_pki();
        KubeApi {
            port,
            state: Arc::new(Mutex::new(State {
                tokens: HashMap::new(),
                objects: HashMap::new(),
                forbidden: HashSet::new(),
                forced: HashMap::new(),
                delay: Duration::ZERO,
                framing: Framing::ContentLength,
                keep_alive: true,
                untrusted_cert: false,
                requests: Vec::new(),
                tls_errors: Vec::new(),
                connections: 0,
            })),
            server: None,
        }
    }

    /// A server listening on 127.0.0.1:`port`.
    pub fn start(port: u16) -> KubeApi {
        let mut api = KubeApi::new(port);
        api.listen();
        api
    }

    /// Binds the port (retrying for a while if it is still taken) and serves; no-op if already
    /// listening. The state from before a `stop()` is kept.
    pub fn listen(&mut self) {
        if self.server.is_some() {
            return;
        }
        let deadline = Instant::now() + secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "[harness] kube-api bind 127.0.0.1:{}: {e}; retrying",
                        self.port
                    );
                    thread::sleep(ms(100));
                }
                Err(e) => panic!("kube-api cannot bind 127.0.0.1:{}: {e}", self.port),
            }
        };
        listener
            .set_nonblocking(true)
            .expect("set_nonblocking on listener");
        let config = kube_pki().server_config(lock(&self.state).untrusted_cert);
        let stop = Arc::new(AtomicBool::new(false));
        let (st, state) = (stop.clone(), self.state.clone());
        let acceptor = thread::spawn(move || accept_loop(listener, config, state, st));
        self.server = Some(Server { stop, acceptor });
    }

    /// Closes the listener and every connection (without close_notify, like a crashed server)
    /// and waits for the threads.
    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop.store(true, Ordering::SeqCst);
            let _ = s.acceptor.join();
        }
    }

    pub fn is_listening(&self) -> bool {
        self.server.is_some()
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut lock(&self.state))
    }

    // --- authentication

    /// Replaces the valid bearer tokens (each standing for [`TOKEN_USER`]).
    pub fn set_tokens(&self, tokens: &[&str]) {
        self.with(|s| {
            s.tokens = tokens
                .iter()
                .map(|t| (t.to_string(), TOKEN_USER.to_string()))
                .collect()
        });
    }

    /// Adds a valid token standing for `user` (named in 403 messages).
    pub fn add_token(&self, token: &str, user: &str) {
        self.with(|s| s.tokens.insert(token.to_string(), user.to_string()));
    }

    pub fn remove_token(&self, token: &str) {
        self.with(|s| s.tokens.remove(token));
    }

    // --- objects

    pub fn set_service(&self, name: &str, ns: &str, cluster_ip: &str, ports: &[u16], rv: &str) {
        let body = service_json(name, ns, cluster_ip, ports, rv);
        self.set_raw(&service_path(ns, name), 200, body.into_bytes());
    }

    pub fn set_secret(&self, name: &str, ns: &str, rv: &str, data: &[(&str, &[u8])]) {
        let body = secret_json(name, ns, rv, data);
        self.set_raw(&secret_path(ns, name), 200, body.into_bytes());
    }

    /// Any answer for a GET of `path` (query excluded): a huge or broken body, an odd status.
    pub fn set_raw(&self, path: &str, status: u16, body: Vec<u8>) {
        self.with(|s| s.objects.insert(path.to_string(), (status, body)));
    }

    /// Later GETs answer 404 `services "name" not found`.
    pub fn delete_service(&self, name: &str, ns: &str) {
        self.with(|s| s.objects.remove(&service_path(ns, name)));
    }

    pub fn delete_secret(&self, name: &str, ns: &str) {
        self.with(|s| s.objects.remove(&secret_path(ns, name)));
    }

    /// GETs of `path` by an authenticated user answer 403 `... is forbidden: User ...`.
    pub fn forbid(&self, path: &str) {
        self.with(|s| s.forbidden.insert(path.to_string()));
    }

    pub fn allow(&self, path: &str) {
        self.with(|s| s.forbidden.remove(path));
    }

    // --- faults

    /// Every request for `path`, authenticated or not, answers `code` with kube-apiserver's
    /// Status body for it (401, 403, 404, 429, 500, 503 have the real messages).
    pub fn force_status(&self, path: &str, code: u16) {
        self.with(|s| s.forced.insert(path.to_string(), Forced::Status(code)));
    }

    /// Requests for `path` are read, recorded with status 0, and answered by closing the
    /// connection.
    pub fn force_hangup(&self, path: &str) {
        self.with(|s| s.forced.insert(path.to_string(), Forced::HangUp));
    }

    pub fn clear_forced(&self, path: &str) {
        self.with(|s| s.forced.remove(path));
    }

    /// Waits this long before each answer (a stop cuts the wait short).
    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    pub fn set_framing(&self, framing: Framing) {
        self.with(|s| s.framing = framing);
    }

    /// false: answer `Connection: close` and close after every response.
    pub fn set_keep_alive(&self, keep_alive: bool) {
        self.with(|s| s.keep_alive = keep_alive);
    }

    /// true: from the next `listen()` on, serve a certificate from the untrusted other CA.
    pub fn set_untrusted_cert(&self, untrusted: bool) {
        self.with(|s| s.untrusted_cert = untrusted);
    }

    // --- what happened

    pub fn requests(&self) -> Vec<Request> {
        self.with(|s| s.requests.clone())
    }

    /// The requests whose path (query excluded) is `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Request> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.path.split('?').next() == Some(path))
                .cloned()
                .collect()
        })
    }

    pub fn clear_requests(&self) {
        self.with(|s| s.requests.clear());
    }

    /// TLS handshake failures (e.g. a client certificate from the wrong CA), as rustls words them.
    pub fn tls_errors(&self) -> Vec<String> {
        self.with(|s| s.tls_errors.clone())
    }

    /// Connections accepted over the server's life.
    pub fn connections(&self) -> usize {
        self.with(|s| s.connections)
    }

    /// One line per request, for failure messages.
    pub fn summary(&self) -> String {
        let reqs = self.requests();
        let mut out = format!(
            "kube-api on {}: {} connections, {} requests, tls errors {:?}",
            self.port,
            self.connections(),
            reqs.len(),
            self.tls_errors()
        );
        for r in reqs {
            out.push_str(&format!(
                "\n  conn {} {} {} auth {:?} -> {}",
                r.conn, r.method, r.path, r.auth, r.status
            ));
        }
        out
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
        if thread::panicking() {
            eprintln!("[harness] {}", self.summary());
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
) {
    let mut conns: Vec<(TcpStream, JoinHandle<()>)> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                let Ok(handle) = s.try_clone() else { continue };
                let _ = s.set_nonblocking(false);
                let id = {
                    let mut st = lock(&state);
                    st.connections += 1;
                    st.connections
                };
                let (cfg, state, stop) = (config.clone(), state.clone(), stop.clone());
                let t = thread::spawn(move || serve_conn(s, cfg, &state, &stop, id));
                conns.retain(|(_, t)| !t.is_finished());
                conns.push((handle, t));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(ms(5)),
            Err(_) => thread::sleep(ms(50)),
        }
    }
    drop(listener);
    // A shutdown wakes a thread blocked in read or write; the delay loop watches `stop`.
    for (s, _) in &conns {
        let _ = s.shutdown(Shutdown::Both);
    }
    for (_, t) in conns {
        let _ = t.join();
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

/// Reads more bytes into `buf`; false at EOF or on an error (recorded if it is a TLS one).
fn read_more(tls: &mut Tls, buf: &mut Vec<u8>, state: &Mutex<State>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    lock(state).tls_errors.push(e.to_string());
                }
                return false;
            }
        }
    }
}

struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only with `keep-alive`.
    fn wants_keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let has = |t: &str| conn.split(',').any(|x| x.trim() == t);
        if self.http10 {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return None,
    };
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn serve_conn(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    state: &Mutex<State>,
    stop: &AtomicBool,
    id: usize,
) {
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, stream);
    serve_requests(&mut tls, state, stop, id);
    // The acceptor holds a duplicate of this socket (to cut it on stop), so dropping ours would
    // not close the connection: the client would wait for an EOF that never comes.
    let _ = tls.sock.shutdown(Shutdown::Both);
}

/// Answers requests on one connection until either side closes it.
fn serve_requests(tls: &mut Tls, state: &Mutex<State>, stop: &AtomicBool, id: usize) {
    let mut buf = Vec::new();
    loop {
        let head_len = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                refuse(tls, 431, "request header too large", id);
                return;
            }
            if !read_more(tls, &mut buf, state) {
                return;
            }
        };
        let Some(head) = parse_head(&buf[..head_len - 4]) else {
            refuse(tls, 400, "malformed request", id);
            return;
        };
        buf.drain(..head_len);
        // GETs carry no body; drop one if a client sends it anyway.
        let body_len: usize = head
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < body_len {
            if !read_more(tls, &mut buf, state) {
                return;
            }
        }
        buf.drain(..body_len);

        let cert_cn = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|der| {
                kube_pki()
                    .cn_of(der)
                    .unwrap_or_else(|| "<unknown>".to_string())
            });
        let (answer, delay, framing, keep_alive) = answer(&head, cert_cn, id, state);
        let deadline = Instant::now() + delay;
        while Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(ms(10).min(deadline.saturating_duration_since(Instant::now())));
        }
        let Some((status, body)) = answer else {
            return; // forced hang-up
        };
        // A body without length cannot be followed by another response, and HTTP/1.0 has no
        // chunked encoding.
        let framing = match framing {
            Framing::Chunked | Framing::ChunkedWithTrailers if head.http10 => {
                Framing::CloseDelimited
            }
            f => f,
        };
        let keep = keep_alive && head.wants_keep_alive() && framing != Framing::CloseDelimited;
        let connection = match (keep, head.http10) {
            (false, _) => Some("close"),
            (true, true) => Some("keep-alive"),
            (true, false) => None,
        };
        if write_head_and_body(tls, status, &body, framing, connection, id).is_err() || !keep {
            tls.conn.send_close_notify();
            let _ = tls.flush();
            return;
        }
    }
}

/// Decides the answer to one request and records it: (status and body, or None to hang up),
/// then the delay, framing and keep-alive setting in force.
fn answer(
    head: &Head,
    cert_cn: Option<String>,
    conn: usize,
    state: &Mutex<State>,
) -> (Option<(u16, Vec<u8>)>, Duration, Framing, bool) {
    let mut st = lock(state);
    let token = head.header("authorization").and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string())
    });
    // kube-apiserver's union authenticator tries x509 before tokens and takes the first success.
    let (auth, user) = match (&cert_cn, &token) {
        (Some(cn), _) => (Auth::Cert(cn.clone()), cn.clone()),
        (None, Some(t)) if st.tokens.contains_key(t) => {
            (Auth::Token(t.clone()), st.tokens[t].clone())
        }
        _ => (Auth::None, "system:anonymous".to_string()),
    };
    let path = head.target.split('?').next().unwrap_or("").to_string();
    let status_body = |code: u16| {
        Some((
            code,
            status_for(code, &head.method, &path, &user).into_bytes(),
        ))
    };
    let answer = match st.forced.get(&path) {
        Some(Forced::HangUp) => None,
        Some(Forced::Status(code)) => status_body(*code),
        None if auth == Auth::None => status_body(401),
        None if head.method != "GET" => status_body(405),
        None if st.forbidden.contains(&path) => status_body(403),
        None => match st.objects.get(&path) {
            Some((code, body)) => Some((*code, body.clone())),
            None => status_body(404),
        },
    };
    st.requests.push(Request {
        conn,
        method: head.method.clone(),
        path: head.target.clone(),
        http10: head.http10,
        headers: head.headers.clone(),
        token,
        cert_cn,
        auth,
        status: answer.as_ref().map_or(0, |(c, _)| *c),
    });
    (answer, st.delay, st.framing, st.keep_alive)
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `Tue, 30 Sep 2025 15:35:08 GMT`
fn http_date(epoch: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = split_epoch(epoch);
    let wd = DAYS[epoch.div_euclid(86_400).rem_euclid(7) as usize];
    let mon = MONTHS[(mo - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {h:02}:{mi:02}:{s:02} GMT")
}

/// Answers a request the server cannot read with a Status and closes.
fn refuse(tls: &mut Tls, code: u16, message: &str, seed: usize) {
    let body = status_json(code, "BadRequest", message, None);
    let _ = write_head_and_body(
        tls,
        code,
        body.as_bytes(),
        Framing::ContentLength,
        Some("close"),
        seed,
    );
}

/// Writes a response with kube-apiserver's headers. Chunks go out as separate writes (separate
/// TLS records), so a client sees the body arrive in pieces.
fn write_head_and_body(
    w: &mut impl Write,
    status: u16,
    body: &[u8],
    framing: Framing,
    connection: Option<&str>,
    seed: usize,
) -> io::Result<()> {
    let mut rng = Rng::new(seed as u64 * 7919 + body.len() as u64);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let audit_id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        rng.next_u64() as u32,
        rng.next_u64() as u16,
        rng.next_u64() & 0xfff,
        rng.next_u64() & 0xfff,
        rng.next_u64() & 0xffff_ffff_ffff
    );
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nAudit-Id: {audit_id}\r\nCache-Control: no-cache, private\r\nContent-Type: application/json\r\nX-Kubernetes-Pf-Flowschema-Uid: 2b1c8e0e-5a3f-4c5e-8d3a-0c1f9a8b7e61\r\nX-Kubernetes-Pf-Prioritylevel-Uid: 9e4d2f7a-1b6c-4a8e-b3d5-7f0e2c9a4b18\r\nDate: {}\r\n",
        reason_phrase(status),
        http_date(now)
    );
    if let Some(c) = connection {
        head.push_str(&format!("Connection: {c}\r\n"));
    }
    match framing {
        Framing::ContentLength => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
        Framing::ChunkedWithTrailers => {
            head.push_str("Trailer: X-Test-Trailer\r\nTransfer-Encoding: chunked\r\n")
        }
        Framing::CloseDelimited => {}
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if !matches!(framing, Framing::Chunked | Framing::ChunkedWithTrailers) {
        w.write_all(body)?;
        return w.flush();
    }
    w.flush()?;
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        // At least three chunks for any body of three bytes or more.
        let most = (body.len() / 3).max(1).min(rest.len());
        let n = rng.range(1, most as u64 + 1) as usize;
        let size = match i {
            0 => format!("{n:x};kube=\"test chunk\""),
            1 => format!("00{n:X}"),
            _ => format!("{n:x}"),
        };
        w.write_all(format!("{size}\r\n").as_bytes())?;
        w.write_all(&rest[..n])?;
        w.write_all(b"\r\n")?;
        w.flush()?;
        rest = &rest[n..];
        i += 1;
    }
    if framing == Framing::ChunkedWithTrailers {
        w.write_all(b"0\r\nX-Test-Trailer: done\r\n\r\n")?;
    } else {
        w.write_all(b"0\r\n\r\n")?;
    }
    w.flush()
}

// ---------------------------------------------------------------------------------------------
// kubeconfig files
// ---------------------------------------------------------------------------------------------

/// How a kubeconfig authenticates.
#[derive(Clone, Debug)]
pub enum KubeUser {
    /// `client-certificate-data` + `client-key-data` (kind).
    CertData(ClientCert),
    /// `token: ...`
    Token(String),
    /// `tokenFile: /path` (Gardener's generic token kubeconfig).
    TokenFile(PathBuf),
}

/// How a kubeconfig trusts the server.
#[derive(Clone, Debug)]
pub enum KubeTrust {
    /// `certificate-authority-data` of this CA file.
    CaData(PathBuf),
    /// `certificate-authority: /path`
    CaFile(PathBuf),
    /// `insecure-skip-tls-verify: true`
    Insecure,
}

/// A kubeconfig with one cluster, one user and one context, all named `name`. `render` writes
/// it as kubectl does: YAML with sorted keys and go-yaml's quoting, or JSON in Go field order
/// with kubectl's four-space indentation.
#[derive(Clone, Debug)]
pub struct Kubeconfig {
    pub name: String,
    pub server: String,
    pub trust: KubeTrust,
    pub user: KubeUser,
    pub namespace: Option<String>,
    pub json: bool,
}

impl Kubeconfig {
    /// One cluster, user and context named `name`, for https://127.0.0.1:`port`, as YAML.
    pub fn new(name: &str, port: u16, trust: KubeTrust, user: KubeUser) -> Kubeconfig {
        Kubeconfig {
            name: name.to_string(),
            server: format!("https://127.0.0.1:{port}"),
            trust,
            user,
            namespace: None,
            json: false,
        }
    }

    /// What `kind create cluster` writes: cluster, context and user `kind-kind`.
    pub fn kind(port: u16, cert: &ClientCert) -> Kubeconfig {
        let trust = KubeTrust::CaData(kube_pki().ca_cert());
        Kubeconfig::new("kind-kind", port, trust, KubeUser::CertData(cert.clone()))
    }

    /// Gardener's generic token kubeconfig: `tokenFile` plus `certificate-authority-data`.
    pub fn gardener(port: u16, token_file: &Path) -> Kubeconfig {
        let trust = KubeTrust::CaData(kube_pki().ca_cert());
        let user = KubeUser::TokenFile(token_file.to_path_buf());
        Kubeconfig::new("shoot--audit--local", port, trust, user)
    }

    /// An inline token and `insecure-skip-tls-verify: true`.
    pub fn insecure_token(port: u16, token: &str) -> Kubeconfig {
        let user = KubeUser::Token(token.to_string());
        Kubeconfig::new("insecure", port, KubeTrust::Insecure, user)
    }

    /// The same kubeconfig as JSON.
    pub fn into_json(mut self) -> Kubeconfig {
        self.json = true;
        self
    }

    pub fn render(&self) -> String {
        if self.json {
            self.render_json()
        } else {
            self.render_yaml()
        }
    }

    /// Writes `render()` to `path` and returns it.
    pub fn write(&self, path: &Path) -> PathBuf {
        fs::write(path, self.render()).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.to_path_buf()
    }

    /// (key, YAML value, JSON value) of the cluster, in Go field order.
    fn cluster_fields(&self) -> Vec<(&'static str, String, String)> {
        let mut v = vec![("server", yaml_str(&self.server), json_str(&self.server))];
        match &self.trust {
            KubeTrust::Insecure => {
                v.push(("insecure-skip-tls-verify", "true".into(), "true".into()))
            }
            KubeTrust::CaFile(p) => {
                let p = p.display().to_string();
                v.push(("certificate-authority", yaml_str(&p), json_str(&p)));
            }
            KubeTrust::CaData(p) => {
                let b = base64(&read_file(p));
                v.push(("certificate-authority-data", b.clone(), json_str(&b)));
            }
        }
        v
    }

    fn user_fields(&self) -> Vec<(&'static str, String, String)> {
        match &self.user {
            KubeUser::CertData(c) => {
                let (crt, key) = (base64(&read_file(&c.cert)), base64(&read_file(&c.key)));
                vec![
                    ("client-certificate-data", crt.clone(), json_str(&crt)),
                    ("client-key-data", key.clone(), json_str(&key)),
                ]
            }
            KubeUser::Token(t) => vec![("token", yaml_str(t), json_str(t))],
            KubeUser::TokenFile(p) => {
                let p = p.display().to_string();
                vec![("tokenFile", yaml_str(&p), json_str(&p))]
            }
        }
    }

    fn context_fields(&self) -> Vec<(&'static str, String, String)> {
        let mut v = vec![
            ("cluster", yaml_str(&self.name), json_str(&self.name)),
            ("user", yaml_str(&self.name), json_str(&self.name)),
        ];
        if let Some(ns) = &self.namespace {
            v.push(("namespace", yaml_str(ns), json_str(ns)));
        }
        v
    }

    fn render_yaml(&self) -> String {
        // kubectl goes through JSON, so YAML keys come out sorted.
        let block = |mut fields: Vec<(&'static str, String, String)>| {
            fields.sort_by_key(|f| f.0);
            fields
                .iter()
                .map(|(k, y, _)| format!("    {k}: {y}\n"))
                .collect::<String>()
        };
        let name = yaml_str(&self.name);
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n{}  name: {name}\ncontexts:\n- context:\n{}  name: {name}\ncurrent-context: {name}\nkind: Config\npreferences: {{}}\nusers:\n- name: {name}\n  user:\n{}",
            block(self.cluster_fields()),
            block(self.context_fields()),
            block(self.user_fields()),
        )
    }

    fn render_json(&self) -> String {
        let object = |fields: Vec<(&'static str, String, String)>| {
            fields
                .iter()
                .map(|(k, _, j)| format!("                \"{k}\": {j}"))
                .collect::<Vec<_>>()
                .join(",\n")
        };
        let entry = |kind: &str, fields| {
            format!(
                "    \"{kind}s\": [\n        {{\n            \"name\": {},\n            \"{kind}\": {{\n{}\n            }}\n        }}\n    ],\n",
                json_str(&self.name),
                object(fields)
            )
        };
        format!(
            "{{\n    \"kind\": \"Config\",\n    \"apiVersion\": \"v1\",\n    \"preferences\": {{}},\n{}{}{}    \"current-context\": {}\n}}\n",
            entry("cluster", self.cluster_fields()),
            entry("user", self.user_fields()),
            entry("context", self.context_fields()),
            json_str(&self.name)
        )
    }
}

fn read_file(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A YAML string scalar the way go-yaml v2 (behind kubectl) writes it: double quotes for what
/// would read as another type (bool, null, number, empty), single quotes for what plain style
/// cannot hold (leading indicator, `: `, ` #`, outer spaces), else plain.
pub fn yaml_str(s: &str) -> String {
    const OTHER_TYPES: [&str; 28] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "~", "null", "Null", "NULL",
        ".inf", ".nan",
    ];
    let numeric = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || "+-._eE".contains(c))
        && s.chars().any(|c| c.is_ascii_digit())
        && (s.parse::<f64>().is_ok() || s.replace('_', "").parse::<f64>().is_ok());
    let hex = s
        .strip_prefix("0x")
        .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()));
    if s.is_empty() || OTHER_TYPES.contains(&s) || numeric || hex {
        return json_str(s);
    }
    let indicator = s.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c));
    if indicator
        || s.contains(": ")
        || s.contains(" #")
        || s.ends_with(':')
        || s.starts_with(' ')
        || s.ends_with(' ')
    {
        return format!("'{}'", s.replace('\'', "''"));
    }
    s.to_string()
}

// ---------------------------------------------------------------------------------------------
// Secret volumes, as the kubelet writes them
// ---------------------------------------------------------------------------------------------

/// A directory laid out like a mounted Secret or projected token volume:
/// `..2026_01_01_00_00_00.123456789/<key>` holds the data, `..data` -> that directory, and
/// each `<key>` -> `..data/<key>`. `update` swaps `..data` atomically, as the kubelet's
/// AtomicWriter does, so a reader of `<key>` sees either the old or the new content, and a
/// watcher of the file sees a rename over `..data`, never a write to `<key>`.
pub struct SecretVolume {
    dir: PathBuf,
    keys: Vec<String>,
}

impl SecretVolume {
    pub fn create(dir: &Path, files: &[(&str, &[u8])]) -> SecretVolume {
        fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let mut v = SecretVolume {
            dir: dir.to_path_buf(),
            keys: Vec::new(),
        };
        v.update(files);
        v
    }

    /// A volume with one file `token`.
    pub fn token(dir: &Path, token: &str) -> SecretVolume {
        SecretVolume::create(dir, &[("token", token.as_bytes())])
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The user-visible path of `key` (`<dir>/<key>`, a symlink).
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The timestamped directory `..data` points at now.
    pub fn data_dir(&self) -> Option<PathBuf> {
        fs::read_link(self.dir.join("..data"))
            .ok()
            .map(|p| self.dir.join(p))
    }

    /// Replaces the content, in AtomicWriter's order: write a new timestamped dir, point
    /// `..data_tmp` at it, rename that over `..data`, add missing `<key>` links, remove links
    /// of keys that went away, remove the old dir.
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        static N: AtomicU64 = AtomicU64::new(0);
        let old = fs::read_link(self.dir.join("..data")).ok();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let (y, mo, d, h, mi, s) = split_epoch(now.as_secs() as i64);
        // os.MkdirTemp appends random digits to the timestamp prefix.
        let ts = format!(
            "..{y:04}_{mo:02}_{d:02}_{h:02}_{mi:02}_{s:02}.{}{}",
            now.subsec_nanos(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let ts_dir = self.dir.join(&ts);
        fs::create_dir(&ts_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", ts_dir.display()));
        for (key, bytes) in files {
            let p = ts_dir.join(key);
            fs::write(&p, bytes).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        }
        let tmp = self.dir.join("..data_tmp");
        symlink(&ts, &tmp).unwrap_or_else(|e| panic!("symlink {}: {e}", tmp.display()));
        fs::rename(&tmp, self.dir.join("..data"))
            .unwrap_or_else(|e| panic!("rename ..data_tmp in {}: {e}", self.dir.display()));
        for (key, _) in files {
            let link = self.dir.join(key);
            if fs::symlink_metadata(&link).is_err() {
                symlink(Path::new("..data").join(key), &link)
                    .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
            }
        }
        let new_keys: Vec<String> = files.iter().map(|(k, _)| k.to_string()).collect();
        for gone in self.keys.iter().filter(|k| !new_keys.contains(k)) {
            let _ = fs::remove_file(self.dir.join(gone));
        }
        self.keys = new_keys;
        if let Some(old) = old {
            let _ = fs::remove_dir_all(self.dir.join(old));
        }
    }
}
