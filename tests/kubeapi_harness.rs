//! Self-tests of the test Kubernetes API server (tests/common/kubeapi.rs): the bodies are the
//! real shapes, authentication and faults behave as kube-apiserver does, the server survives
//! stop and start on one port, and the kubeconfigs and Secret volume it writes are read by
//! kubectl (when installed) and laid out as the kubelet lays them out. The client here is a
//! minimal HTTP/1.1 client over rustls that decodes all three body framings.

mod common;

use common::kubeapi::*;
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;

/// The Service exactly as kube-apiserver answers it.
const SERVICE: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"audittailer","namespace":"audit","uid":"6d1f7c1e-3b7a-4c57-9a38-1f0b7c2e9d11","resourceVersion":"12345","creationTimestamp":"2025-09-30T15:35:08Z","labels":{"app":"audittailer"},"managedFields":[{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"v1","time":"2025-09-30T15:35:08Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:internalTrafficPolicy":{},"f:ports":{".":{},"k:{\"port\":24224,\"protocol\":\"TCP\"}":{".":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:type":{}}}}]},"spec":{"ports":[{"protocol":"TCP","port":24224,"targetPort":24224}],"selector":{"app":"audittailer"},"clusterIP":"10.96.12.34","clusterIPs":["10.96.12.34"],"type":"ClusterIP","sessionAffinity":"None","ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;
const STATUS_401: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;
const STATUS_404: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"services \"audittailer\" not found","reason":"NotFound","details":{"name":"audittailer","kind":"services"},"code":404}"#;
const STATUS_403: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"audittailer-client\" is forbidden: User \"system:serviceaccount:kube-system:audittailer-client\" cannot get resource \"secrets\" in API group \"\" in the namespace \"audit\"","reason":"Forbidden","details":{"name":"audittailer-client","kind":"secrets"},"code":403}"#;

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

struct Client {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16, cert: Option<&ClientCert>) -> io::Result<Client> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_file_iter(kube_pki().ca_cert())
            .expect("CA")
            .flatten()
        {
            roots.add(der).expect("CA is a trust anchor");
        }
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let config = match cert {
            None => builder.with_no_client_auth(),
            Some(c) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(&c.cert)
                        .expect("cert")
                        .flatten()
                        .collect(),
                    PrivateKeyDer::from_pem_file(&c.key).expect("key"),
                )
                .expect("client cert"),
        };
        let name = ServerName::try_from("127.0.0.1").expect("IP server name");
        let conn = ClientConnection::new(Arc::new(config), name).expect("client connection");
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(secs(10)))?;
        Ok(Client {
            tls: StreamOwned::new(conn, sock),
            buf: Vec::new(),
        })
    }

    /// Reads until `buf` holds `n` bytes; false at EOF.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        while self.buf.len() < n {
            match self.tls.read(&mut chunk)? {
                0 => return Ok(false),
                k => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        Ok(true)
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if !self.fill(self.buf.len() + 1)? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        if !self.fill(n)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn get(&mut self, path: &str, token: Option<&str>) -> io::Result<Response> {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Accept: application/json\r\n\r\n"
        );
        self.tls.write_all(req.as_bytes())?;
        self.tls.flush()?;
        let status_line = self.line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let l = self.line()?;
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header line");
            headers.push((k.to_string(), v.trim().to_string()));
        }
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if resp.header("transfer-encoding") == Some("chunked") {
            loop {
                let l = self.line()?;
                let size = l.split(';').next().unwrap_or("");
                let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
                if n == 0 {
                    while !self.line()?.is_empty() {} // trailers
                    break;
                }
                let data = self.take(n)?;
                resp.body.extend_from_slice(&data);
                assert_eq!(self.take(2)?, b"\r\n");
            }
        } else if let Some(n) = resp.header("content-length") {
            let n = n.parse().expect("Content-Length");
            resp.body = self.take(n)?;
        } else {
            while self.fill(self.buf.len() + 1)? {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }
}

#[test]
fn bodies_have_the_real_shapes() {
    assert_eq!(
        service_json("audittailer", "audit", "10.96.12.34", &[24224], "12345"),
        SERVICE
    );
    let two: Value =
        serde_json::from_str(&service_json("a", "b", "10.0.0.1", &[24224, 24225], "7")).unwrap();
    assert_eq!(two["spec"]["ports"][1]["name"], "port-24225");
    assert_eq!(two["spec"]["ports"][1]["port"], 24225);
    let cases: [(&[u8], &str); 5] = [
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foobar", "Zm9vYmFy"),
    ];
    for (input, want) in cases {
        assert_eq!(base64(input), want);
    }
    let secret = secret_json("s", "audit", "6789", &[("tls.key", b"k"), ("ca.crt", b"c")]);
    assert!(
        secret.contains(r#""data":{"ca.crt":"Yw==","tls.key":"aw=="},"type":"Opaque"}"#),
        "{secret}"
    );
    let padded: Value = serde_json::from_str(&with_padding(SERVICE, 1000)).unwrap();
    assert_eq!(
        padded["metadata"]["annotations"]["pad"]
            .as_str()
            .map(str::len),
        Some(1000)
    );
    for (s, want) in [
        ("kind-kind", "kind-kind"),
        ("true", "\"true\""),
        ("123", "\"123\""),
        ("", "\"\""),
        ("*x", "'*x'"),
    ] {
        assert_eq!(yaml_str(s), want);
    }
}

/// One connection carries several requests; an unknown token gets the exact 401, a rotated one
/// is accepted, a deleted Service gets the exact 404, and the log shows all of it.
#[test]
fn tokens_keep_alive_and_not_found() {
    let api = KubeApi::start(free_port());
    api.set_tokens(&["token-1"]);
    api.set_service("audittailer", "audit", "10.96.12.34", &[24224], "12345");
    let path = service_path("audit", "audittailer");
    let mut c = Client::connect(api.port, None).expect("connect");

    let r = c.get(&path, Some("token-1")).expect("GET 1");
    assert_eq!((r.status, r.text()), (200, SERVICE));
    assert!(r.header("content-length").is_some());
    let r = c.get(&path, Some("token-2")).expect("GET 2");
    assert_eq!((r.status, r.text()), (401, STATUS_401));
    api.set_tokens(&["token-2"]);
    let r = c.get(&path, Some("token-2")).expect("GET 3");
    assert_eq!(r.status, 200);
    api.delete_service("audittailer", "audit");
    let r = c.get(&path, Some("token-2")).expect("GET 4");
    assert_eq!((r.status, r.text()), (404, STATUS_404));
    let r = c.get(&path, None).expect("GET 5");
    assert_eq!(r.status, 401);

    let reqs = api.requests();
    let seen: Vec<(usize, Option<&str>, &Auth, u16)> = reqs
        .iter()
        .map(|r| (r.conn, r.token.as_deref(), &r.auth, r.status))
        .collect();
    let (t1, t2) = (Auth::Token("token-1".into()), Auth::Token("token-2".into()));
    let want = vec![
        (1, Some("token-1"), &t1, 200),
        (1, Some("token-2"), &Auth::None, 401),
        (1, Some("token-2"), &t2, 200),
        (1, Some("token-2"), &t2, 404),
        (1, None, &Auth::None, 401),
    ];
    assert_eq!(seen, want, "{}", api.summary());
}

/// A client certificate authenticates (its CN is the user); chunked bodies with extensions and
/// trailers decode to the object; 403 and forced statuses have the real bodies; an untrusted
/// certificate fails the handshake; the server stops and starts again on its port.
#[test]
fn client_certs_chunked_faults_and_restart() {
    let pki = kube_pki();
    let mut api = KubeApi::start(free_port());
    let cert = pki.client_cert("system:serviceaccount:audit:forwarder", KeyKind::Ec);
    let data: [(&str, &[u8]); 2] = [
        ("tls.crt", b"-----BEGIN CERTIFICATE-----\n"),
        ("ca.crt", b"ca"),
    ];
    api.set_secret("audittailer-client", "audit", "6789", &data);
    let path = secret_path("audit", "audittailer-client");
    api.set_framing(Framing::ChunkedWithTrailers);
    let mut c = Client::connect(api.port, Some(&cert)).expect("connect");
    let r = c.get(&path, None).expect("chunked GET");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        r.text(),
        secret_json("audittailer-client", "audit", "6789", &data)
    );

    api.set_framing(Framing::ContentLength);
    api.forbid(&path);
    let r = c.get(&path, Some("no-such-token")).expect("forbidden GET");
    let want = STATUS_403.replace(
        "system:serviceaccount:kube-system:audittailer-client",
        &cert.cn,
    );
    assert_eq!((r.status, r.text()), (403, want.as_str()));
    api.force_status(&path, 500);
    let r = c.get(&path, None).expect("forced 500");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (r.status, body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    assert_eq!(
        api.requests()
            .iter()
            .map(|r| r.auth.clone())
            .collect::<Vec<_>>(),
        vec![Auth::Cert(cert.cn.clone()); 3]
    );

    let rogue = pki.untrusted_client_cert("rogue");
    let refused = Client::connect(api.port, Some(&rogue)).and_then(|mut c| c.get(&path, None));
    assert!(
        refused.is_err(),
        "an untrusted client certificate was accepted"
    );
    assert!(
        wait_until(secs(10), || !api.tls_errors().is_empty()),
        "{}",
        api.summary()
    );

    api.stop();
    assert!(
        Client::connect(api.port, None).is_err(),
        "still listening after stop"
    );
    api.listen();
    api.clear_forced(&path);
    api.allow(&path);
    let r = Client::connect(api.port, Some(&cert))
        .and_then(|mut c| c.get(&path, None))
        .expect("GET after restart");
    assert_eq!(r.status, 200);
}

/// kubectl (if installed) reads each kubeconfig shape and gets the Service through it; the
/// token volume is laid out and rotated like the kubelet's, and kubectl follows the rotation.
#[test]
fn kubeconfigs_and_token_volume() {
    let tmp = TempDir::new("kubeapi");
    let api = KubeApi::start(free_port());
    api.set_tokens(&["first-token"]);
    api.set_service("audittailer", "audit", "10.96.12.34", &[24224], "12345");
    let mut vol = SecretVolume::token(&tmp.join("sa"), "first-token");
    let first = vol.data_dir().expect("..data");
    let name = |p: &std::path::Path| p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name(&first).starts_with("..20"), "{}", first.display());
    assert_eq!(
        fs::read_link(vol.path("token")).unwrap(),
        std::path::Path::new("..data/token")
    );
    vol.update(&[("token", b"second-token")]);
    assert!(!first.exists(), "old data dir left behind");
    assert!(!tmp.join("sa/..data_tmp").exists());
    assert_eq!(
        fs::read_to_string(vol.path("token")).unwrap(),
        "second-token"
    );
    api.set_tokens(&["second-token"]);

    let cert = kube_pki().client_cert("kubernetes-admin", KeyKind::Rsa);
    let configs = [
        (
            "kind",
            Kubeconfig::kind(api.port, &cert),
            Auth::Cert(cert.cn.clone()),
        ),
        (
            "gardener",
            Kubeconfig::gardener(api.port, &vol.path("token")),
            Auth::Token("second-token".into()),
        ),
        (
            "insecure",
            Kubeconfig::insecure_token(api.port, "second-token"),
            Auth::Token("second-token".into()),
        ),
        (
            "json",
            Kubeconfig::kind(api.port, &cert).into_json(),
            Auth::Cert(cert.cn.clone()),
        ),
    ];
    let kind_yaml = configs[0].1.render();
    assert!(kind_yaml.starts_with(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: LS0t"
    ));
    assert!(kind_yaml.contains("\ncurrent-context: kind-kind\nkind: Config\npreferences: {}\nusers:\n- name: kind-kind\n  user:\n    client-certificate-data: LS0t"));
    if !std::path::Path::new("/usr/bin/kubectl").exists() {
        eprintln!("kubectl not installed: kubeconfigs not cross-checked");
        return;
    }
    for (what, kc, auth) in configs {
        let file = kc.write(&tmp.join(&format!("{what}.kubeconfig")));
        api.clear_requests();
        let out = Command::new("/usr/bin/kubectl")
            .args(["--kubeconfig", &file.display().to_string(), "get", "--raw"])
            .arg(service_path("audit", "audittailer"))
            .env("HOME", tmp.path())
            .output()
            .expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout.trim(),
            SERVICE,
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // kubectl asks for /version first.
        let seen: Vec<Auth> = api
            .requests_to(&service_path("audit", "audittailer"))
            .into_iter()
            .map(|r| r.auth)
            .collect();
        assert_eq!(seen, vec![auth], "{what}: {}", api.summary());
    }
}

/// A stop cuts a slow answer short and frees the port; close-delimited and plain chunked bodies
/// decode; a forced hang-up closes the connection and is logged with status 0.
#[test]
fn slow_answers_hangups_and_framings() {
    let mut api = KubeApi::start(free_port());
    api.set_tokens(&["t"]);
    api.set_service("audittailer", "audit", "10.96.12.34", &[24224, 24225], "1");
    let path = service_path("audit", "audittailer");
    api.set_delay(secs(600));
    let port = api.port;
    let (p, started) = (path.clone(), std::time::Instant::now());
    let waiting = std::thread::spawn(move || {
        Client::connect(port, None).and_then(|mut c| c.get(&p, Some("t")))
    });
    assert!(
        wait_until(secs(10), || api.requests().len() == 1),
        "{}",
        api.summary()
    );
    api.stop();
    assert!(
        waiting.join().unwrap().is_err(),
        "a stopped server answered"
    );
    assert!(started.elapsed() < secs(60), "stop waited for the delay");

    api.set_delay(ms(0));
    api.listen();
    for framing in [Framing::CloseDelimited, Framing::Chunked] {
        api.set_framing(framing);
        let r = Client::connect(port, None)
            .and_then(|mut c| c.get(&path, Some("t")))
            .expect("GET");
        let body: Value = serde_json::from_slice(&r.body).expect("JSON body");
        assert_eq!(body["spec"]["ports"][1]["port"], 24225, "{framing:?}");
    }
    api.force_hangup(&path);
    let hung = Client::connect(port, None).and_then(|mut c| c.get(&path, Some("t")));
    assert!(hung.is_err(), "a forced hang-up answered");
    assert_eq!(api.requests().last().map(|r| r.status), Some(0));
}
