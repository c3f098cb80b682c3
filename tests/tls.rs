//! End-to-end tests of TLS delivery: the real forwarder against the tailer's TLS (or, with
//! AF_TEST_TLS_SERVER=openssl, against OpenSSL through socat), with certificates made by the
//! openssl command at test time. Each failure case checks that nothing arrives, that the log names
//! the cause, and that after the fix (files replaced on disk, or a restart) every record arrives
//! exactly once. Also: shared-key handshake, gzip over TLS, and a python3-msgpack decode of a
//! raw CompressedPackedForward frame.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Ceiling for "everything arrives"; polling makes passing tests finish long before it.
const DELIVERY: Duration = Duration::from_secs(30);
/// Ceiling for a failure to show up in a log (the first attempt fails within a second).
const LOG_WAIT: Duration = Duration::from_secs(15);

/// Waits until every expected record reached the tailer; stops early if the forwarder died.
fn expect_all(t: &Tailer, f: &mut Forwarder, expected: &[String], what: &str) {
    expect_all_within(t, f, expected, what, DELIVERY);
}

/// Every record of `expected` arrived exactly once and in order, and nothing else arrived. The
/// pause lets late duplicates show up before the check.
fn expect_exactly_once(t: &Tailer, f: &mut Forwarder, expected: &[String], what: &str) {
    expect_all(t, f, expected, what);
    thread::sleep(Duration::from_millis(400));
    assert_delivered(expected, &t.records(), false);
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(8000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Waits for a line of `text()` holding every word of `all` and one of `any` (lower case).
fn wait_line(text: impl Fn() -> String, all: &[&str], any: &[&str]) -> Result<String, String> {
    let mut found = None;
    wait_until(LOG_WAIT, || {
        found = lines_mentioning(&text(), all, any)
            .first()
            .map(|l| l.to_string());
        found.is_some()
    });
    found.ok_or_else(|| tail(&text()).to_string())
}

/// The forwarder logged a line with all of `all` and one of `any` (lower case) within LOG_WAIT.
fn expect_fwd_log(f: &Forwarder, all: &[&str], any: &[&str], what: &str) -> String {
    wait_line(|| f.stderr_text(), all, any).unwrap_or_else(|log| {
        panic!(
            "{what}: no forwarder log line with all of {all:?} and one of {any:?} within \
             {LOG_WAIT:?}; stderr (tail):\n{log}"
        )
    })
}

/// The forwarder's log says which TLS version it negotiated (at debug level).
fn expect_tls_version(f: &Forwarder, version: &str) {
    let (a, b) = match version {
        "1.3" => ("tlsv1_3", "tlsv1.3"),
        "1.2" => ("tlsv1_2", "tlsv1.2"),
        other => panic!("unknown TLS version {other}"),
    };
    expect_fwd_log(
        f,
        &["tls", "established"],
        &[a, b],
        &format!("negotiated TLS {version}"),
    );
    let other = if version == "1.3" {
        "tlsv1_2"
    } else {
        "tlsv1_3"
    };
    let wrong = lines_mentioning(&f.stderr_text(), &["tls", "established", other], &[])
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>();
    assert!(wrong.is_empty(), "want only TLS {version}, but: {wrong:?}");
}

/// The client side of the forwarder's --tls-basedir: (PKI file, name in the dir).
fn client_files(
    ca: &'static str,
    crt: &'static str,
    key: &'static str,
) -> [(&'static str, &'static str); 3] {
    [(ca, "ca.crt"), (crt, "client.crt"), (key, "client.key")]
}

/// Receiver arguments: server certificate and key, client CA, then `extra`.
fn server_args(cert: &str, key: &str, client_ca: Option<&str>, extra: &[&str]) -> Vec<String> {
    let ca = client_ca.map(|c| pki().arg(c));
    let mut more: Vec<&str> = Vec::new();
    if let Some(ca) = &ca {
        more.extend(["--client-ca", ca.as_str()]);
    }
    more.extend(extra);
    tailer_tls_args(cert, key, &more)
}

// 1 ------------------------------------------------------------------------------------------

#[test]
fn t01_tls13_with_client_certificate_delivers_every_record() {
    let dir = TempDir::new("tls01");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..2000);
    w.write_lines(&lines[..1200]);

    let port = free_port();
    let rx = TlsReceiver::start(
        port,
        server_args("server.crt", "server-rsa.key", Some("ca1.crt"), &[]),
    );
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &["--log-level", "debug"],
    ));
    expect_all(
        &rx.tailer,
        &mut fwd,
        &lines[..1200],
        "pre-written lines over TLS 1.3",
    );
    // Appended while connected: the same TLS session carries them.
    w.write_lines(&lines[1200..]);
    expect_exactly_once(&rx.tailer, &mut fwd, &lines, "all lines over TLS 1.3");
    expect_tls_version(&fwd, "1.3");
    fwd.term_ok();
}

// 2 ------------------------------------------------------------------------------------------

#[test]
fn t02_tailer_limited_to_tls12_gets_every_record() {
    let dir = TempDir::new("tls02");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client.crt", "client-rsa.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..1500);
    w.write_lines(&lines[..700]);

    let port = free_port();
    let rx = TlsReceiver::start(
        port,
        server_args(
            "server-ec.crt",
            "server-ec.key",
            Some("ca1.crt"),
            &["--tls-max-version", "1.2"],
        ),
    );
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &["--log-level", "debug"],
    ));
    expect_all(
        &rx.tailer,
        &mut fwd,
        &lines[..700],
        "pre-written lines over TLS 1.2",
    );
    w.write_lines(&lines[700..]);
    expect_exactly_once(&rx.tailer, &mut fwd, &lines, "all lines over TLS 1.2");
    expect_tls_version(&fwd, "1.2");
    fwd.term_ok();
}

/// The same through OpenSSL as the server (socat in front of a plain tailer), whatever
/// AF_TEST_TLS_SERVER says: a TLS stack other than rustls on the other end.
#[test]
fn t02b_openssl_server_limited_to_tls12_gets_every_record() {
    let dir = TempDir::new("tls02b");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..1500);
    w.write_lines(&lines[..700]);

    let backend = free_port();
    let tailer = Tailer::start(backend);
    let port = free_port();
    let (front, rest) = SocatTls::start(
        port,
        backend,
        &server_args(
            "server.crt",
            "server-rsa.key",
            Some("ca1.crt"),
            &["--tls-max-version", "1.2"],
        ),
    );
    assert!(rest.is_empty(), "socat took every flag: {rest:?}");
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &["--log-level", "debug"],
    ));
    expect_all(
        &tailer,
        &mut fwd,
        &lines[..700],
        "pre-written lines through OpenSSL",
    );
    w.write_lines(&lines[700..]);
    expect_exactly_once(
        &tailer,
        &mut fwd,
        &lines,
        "all lines through OpenSSL TLS 1.2",
    );
    expect_tls_version(&fwd, "1.2");
    fwd.term_ok();
    drop(front);
}

// 3 ------------------------------------------------------------------------------------------

/// How a broken setup is repaired.
enum Fix {
    /// `cp` PKI files over files in --tls-basedir (PKI name, name in the dir); no restart.
    ReplaceFiles(&'static [(&'static str, &'static str)]),
    /// Restart the receiver with (cert, key, client CA).
    RestartReceiver(&'static str, &'static str, Option<&'static str>),
    /// Restart the forwarder with these extra arguments instead of the broken ones.
    RestartForwarder(&'static [&'static str]),
}

struct Broken {
    name: &'static str,
    /// What the forwarder starts with in --tls-basedir.
    client: [(&'static str, &'static str); 3],
    fwd_extra: &'static [&'static str],
    /// The receiver's (cert, key, client CA).
    server: (&'static str, &'static str, Option<&'static str>),
    /// A forwarder warn line holds all of these (lower case).
    log_all: &'static [&'static str],
    /// A line of the tailer's log (not socat's) holds all of the first words and one of the
    /// second (lower case), if given. The wording is the tailer's (rustls' error names or
    /// tls::explain_client_failure); the test needs the cause named.
    tailer_log: Option<(&'static [&'static str], &'static [&'static str])>,
    fix: Fix,
}

/// The tailer refused a client certificate of a CA it does not trust.
const UNKNOWN_CLIENT_ISSUER: &[&str] = &["client", "certificate"];

/// Nothing arrives while broken and the log names the cause; lines written before and during
/// the breakage and after the fix all arrive exactly once once it is fixed.
fn broken_then_fixed(case: Broken) {
    let dir = TempDir::new(&format!("tls03-{}", case.name));
    let basedir = dir.join("tls");
    install_pki_files(&basedir, &case.client);
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..1500);
    w.write_lines(&lines[..500]);

    let port = free_port();
    let (cert, key, ca) = case.server;
    let mut rx = TlsReceiver::start(port, server_args(cert, key, ca, &[]));
    let mut fwd = Forwarder::start(fwd_tls_args(&w.log_path(), port, &basedir, case.fwd_extra));

    let mut all = vec!["warn"];
    all.extend(case.log_all);
    let cause = expect_fwd_log(&fwd, &all, &[], case.name);
    eprintln!("[{}] forwarder: {cause}", case.name);
    if let (Some((all, any)), None) = (case.tailer_log, &rx.front) {
        let line = wait_line(|| rx.tailer.stderr_text(), all, any).unwrap_or_else(|log| {
            panic!(
                "{}: no tailer log line with all of {all:?} and one of {any:?}; stderr \
                 (tail):\n{log}",
                case.name
            )
        });
        eprintln!("[{}] tailer: {line}", case.name);
    }

    // Written while broken; the forwarder keeps retrying (at most 1 s apart) meanwhile.
    w.write_lines(&lines[500..1000]);
    thread::sleep(Duration::from_millis(2500));
    fwd.assert_alive(case.name);
    assert_eq!(
        rx.tailer.line_count(),
        0,
        "{}: records arrived although the TLS setup is broken: {:?}",
        case.name,
        rx.tailer.lines().iter().take(2).collect::<Vec<_>>()
    );

    match case.fix {
        Fix::ReplaceFiles(files) => {
            install_pki_files(&basedir, files);
            expect_fwd_log(&fwd, &["tls material reloaded"], &[], case.name);
        }
        Fix::RestartReceiver(cert, key, ca) => rx.restart_with(server_args(cert, key, ca, &[])),
        Fix::RestartForwarder(extra) => {
            // Nothing was acked, so a SIGKILL loses nothing: the position file is unchanged.
            fwd.kill9();
            fwd = Forwarder::start(fwd_tls_args(&w.log_path(), port, &basedir, extra));
        }
    }
    expect_all(&rx.tailer, &mut fwd, &lines[..1000], case.name);
    w.write_lines(&lines[1000..]);
    expect_exactly_once(&rx.tailer, &mut fwd, &lines, case.name);
    expect_fwd_log(&fwd, &["connected to"], &[], case.name);
    fwd.term_ok();
}

#[test]
fn t03a_wrong_ca_file_then_replaced() {
    broken_then_fixed(Broken {
        name: "wrong-ca",
        client: client_files("ca2.crt", "client-ec.crt", "client-ec.key"),
        fwd_extra: &[],
        server: ("server.crt", "server-rsa.key", Some("ca1.crt")),
        log_all: &[
            "the server certificate (issued by \"audit-test-ca1\") is not signed by the ca in --tls-ca-file",
            "unknown issuer",
        ],
        tailer_log: None,
        fix: Fix::ReplaceFiles(&[("ca1.crt", "ca.crt")]),
    });
}

#[test]
fn t03b_expired_server_certificate_then_renewed() {
    broken_then_fixed(Broken {
        name: "expired",
        client: client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
        fwd_extra: &[],
        server: ("expired.crt", "server-ec.key", Some("ca1.crt")),
        log_all: &["expired at 2020-02-01t00:00:00z", "renew"],
        tailer_log: None,
        fix: Fix::RestartReceiver("server-ec.crt", "server-ec.key", Some("ca1.crt")),
    });
}

#[test]
fn t03c_wrong_vhost_then_forwarder_restarted_with_the_right_one() {
    broken_then_fixed(Broken {
        name: "wrong-vhost",
        client: client_files("ca1.crt", "client.crt", "client-rsa.key"),
        fwd_extra: &["--tls-vhost", "audit.example.org"],
        server: ("server.crt", "server-rsa.key", Some("ca1.crt")),
        log_all: &[
            "the server certificate is not valid for \"audit.example.org\"",
            "its names: dns:kubernetes-audit-tailer",
        ],
        tailer_log: None,
        fix: Fix::RestartForwarder(&[]),
    });
}

#[test]
fn t03d_client_certificate_from_another_ca_then_replaced() {
    broken_then_fixed(Broken {
        name: "client-cert-ca2",
        client: client_files("ca1.crt", "client-ca2.crt", "client-ca2.key"),
        fwd_extra: &[],
        server: ("server.crt", "server-rsa.key", Some("ca1.crt")),
        log_all: &["the server refused our client certificate", "tls alert"],
        tailer_log: Some((UNKNOWN_CLIENT_ISSUER, &["unknown issuer", "unknownissuer"])),
        fix: Fix::ReplaceFiles(&[
            ("client-ec.crt", "client.crt"),
            ("client-ec.key", "client.key"),
        ]),
    });
}

#[test]
fn t03e_tailer_trusting_another_client_ca_then_restarted() {
    broken_then_fixed(Broken {
        name: "tailer-client-ca2",
        client: client_files("ca1.crt", "client.crt", "client-rsa.key"),
        fwd_extra: &[],
        server: ("server-ec.crt", "server-ec.key", Some("ca2.crt")),
        log_all: &["the server refused our client certificate", "tls alert"],
        tailer_log: Some((UNKNOWN_CLIENT_ISSUER, &["unknown issuer", "unknownissuer"])),
        fix: Fix::RestartReceiver("server-ec.crt", "server-ec.key", Some("ca1.crt")),
    });
}

/// The forwarder always sends a certificate (its files are required), so "no client
/// certificate" is provoked with `openssl s_client` without -cert: the tailer must name the
/// cause, print nothing, and still serve a forwarder with a certificate afterwards.
#[test]
fn t03f_tailer_refuses_a_client_without_certificate() {
    let p = pki();
    let port = free_port();
    // The tailer itself: this checks its log, which socat would not write.
    let tailer = Tailer::start_with(
        port,
        server_args("server.crt", "server-rsa.key", Some("ca1.crt"), &[]),
    );
    let mut s_client = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", VHOST, "-CAfile", &p.arg("ca1.crt")])
        .arg("-verify_return_error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl s_client");
    // stdin stays open, so s_client ends only when the tailer's alert (or close) arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        match s_client.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waitpid(s_client): {e}"),
        }
    };
    if status.is_none() {
        let _ = s_client.kill();
        let _ = s_client.wait();
    }
    drop(s_client.stdin.take());
    let mut client_out = String::new();
    for r in [
        s_client.stdout.take().map(|o| Box::new(o) as Box<dyn Read>),
        s_client.stderr.take().map(|e| Box::new(e) as Box<dyn Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut r = r;
        let _ = r.read_to_string(&mut client_out);
    }
    let line = wait_line(
        || tailer.stderr_text(),
        &["client"],
        &[
            "presented no certificate",
            "no certificate",
            "none was sent",
            "certificate required",
            "certificaterequired",
        ],
    )
    .unwrap_or_else(|log| {
        panic!(
            "the tailer did not log why it refused a client without certificate; stderr \
             (tail):\n{log}\ns_client ({status:?}):\n{}",
            tail(&client_out)
        )
    });
    eprintln!("tailer: {line}");
    assert!(
        status.is_some(),
        "s_client was still connected 10 s after its handshake: the tailer kept a client \
         without certificate; s_client output:\n{}",
        tail(&client_out)
    );
    // The refusal is the TLS 1.3 certificate_required alert (what the forwarder explains as
    // "none was sent"), after s_client itself accepted the tailer's certificate.
    assert!(
        client_out.contains("Verify return code: 0 (ok)"),
        "s_client did not accept the tailer's certificate:\n{}",
        tail(&client_out)
    );
    assert!(
        client_out.contains("alert certificate required"),
        "s_client did not get a certificate_required alert:\n{}",
        tail(&client_out)
    );
    assert_eq!(tailer.line_count(), 0, "records from a refused client");

    // The tailer is still serving: a forwarder with a client certificate gets through.
    let dir = TempDir::new("tls03f");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..300);
    w.write_lines(&lines);
    let mut fwd = Forwarder::start(fwd_tls_args(&w.log_path(), port, &basedir, &[]));
    expect_exactly_once(
        &tailer,
        &mut fwd,
        &lines,
        "forwarder after the refused client",
    );
    fwd.term_ok();
}

// 4 ------------------------------------------------------------------------------------------

/// A v3 certificate with the name only in its CN: refused by default with an explanation that
/// points at --tls-verify-hostname=false, accepted with it.
#[test]
fn t04a_verify_hostname_false_accepts_a_cn_only_certificate() {
    let dir = TempDir::new("tls04a");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..1000);
    w.write_lines(&lines[..400]);

    let port = free_port();
    let rx = TlsReceiver::start(
        port,
        server_args("cn-only.crt", "server-ec.key", Some("ca1.crt"), &[]),
    );
    let mut fwd = Forwarder::start(fwd_tls_args(&w.log_path(), port, &basedir, &[]));
    expect_fwd_log(
        &fwd,
        &[
            "warn",
            "the server certificate has no subject alternative names (only the cn \"kubernetes-audit-tailer\")",
            "--tls-verify-hostname=false",
        ],
        &[],
        "CN-only certificate with the name check on",
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        rx.tailer.line_count(),
        0,
        "records arrived past a failed name check"
    );

    fwd.kill9();
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &["--tls-verify-hostname=false"],
    ));
    expect_fwd_log(
        &fwd,
        &["warn", "--tls-verify-hostname=false", "not checked"],
        &[],
        "start-up warning about the skipped name check",
    );
    expect_all(
        &rx.tailer,
        &mut fwd,
        &lines[..400],
        "CN-only certificate, no name check",
    );
    w.write_lines(&lines[400..]);
    expect_exactly_once(
        &rx.tailer,
        &mut fwd,
        &lines,
        "CN-only certificate, no name check",
    );
    fwd.term_ok();
}

/// --tls-verify-hostname=false keeps the chain verification: a CN-only certificate of another
/// CA is refused as unknown issuer, until that CA is put into --tls-ca-file.
#[test]
fn t04b_verify_hostname_false_still_rejects_a_foreign_ca() {
    let dir = TempDir::new("tls04b");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..1000);
    w.write_lines(&lines[..400]);

    let port = free_port();
    let rx = TlsReceiver::start(
        port,
        server_args("cn-only-ca2.crt", "server-ec.key", Some("ca1.crt"), &[]),
    );
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &["--tls-verify-hostname=false"],
    ));
    expect_fwd_log(
        &fwd,
        &["warn", "issued by \"audit-test-ca2\"", "unknown issuer"],
        &[],
        "CN-only certificate from CA2 without name check",
    );
    w.write_lines(&lines[400..700]);
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        rx.tailer.line_count(),
        0,
        "records arrived although the certificate's CA is not trusted"
    );

    install_pki_files(&basedir, &[("ca2.crt", "ca.crt")]);
    expect_fwd_log(&fwd, &["tls material reloaded"], &[], "CA file replaced");
    expect_all(&rx.tailer, &mut fwd, &lines[..700], "after trusting CA2");
    w.write_lines(&lines[700..]);
    expect_exactly_once(&rx.tailer, &mut fwd, &lines, "after trusting CA2");
    fwd.term_ok();
}

// 5 ------------------------------------------------------------------------------------------

/// Shared-key handshake over TLS: a wrong key gets the tailer's reason in the log and delivers
/// nothing; restarted with the right key (from a file, with the usual trailing newline) every
/// record arrives exactly once.
#[test]
fn t05_shared_key_wrong_then_right() {
    let dir = TempDir::new("tls05");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
    );
    let key_file = dir.join("shared-key");
    fs::write(&key_file, "s3cret-Key/42\n").expect("write shared key file");
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..1200);
    w.write_lines(&lines[..500]);

    let port = free_port();
    let rx = TlsReceiver::start(
        port,
        server_args(
            "server.crt",
            "server-rsa.key",
            Some("ca1.crt"),
            &[
                "--shared-key",
                "s3cret-Key/42",
                "--self-hostname",
                "tailer-test",
            ],
        ),
    );
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &[
            "--shared-key",
            "s3cret-Key/43",
            "--self-hostname",
            "forwarder-test",
        ],
    ));
    let line = expect_fwd_log(
        &fwd,
        &["warn", "shared_key mismatch"],
        &[],
        "wrong shared key",
    );
    eprintln!("forwarder: {line}");
    w.write_lines(&lines[500..800]);
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        rx.tailer.line_count(),
        0,
        "records accepted with a wrong shared key"
    );

    fwd.kill9();
    let key_arg = key_file.display().to_string();
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &[
            "--shared-key-file",
            &key_arg,
            "--self-hostname",
            "forwarder-test",
        ],
    ));
    expect_all(&rx.tailer, &mut fwd, &lines[..800], "right shared key");
    w.write_lines(&lines[800..]);
    expect_exactly_once(&rx.tailer, &mut fwd, &lines, "right shared key");
    // A new Forwarder value: its log is this run's only.
    let refused = lines_mentioning(&fwd.stderr_text(), &["mismatch"], &[])
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>();
    assert!(refused.is_empty(), "the right key was refused: {refused:?}");
    fwd.term_ok();
}

/// A receiver's refusal reason is the peer's text: it reaches the log escaped, so a receiver
/// cannot forge log lines or drive the terminal of whoever reads the log.
#[test]
fn t05_refusal_reason_is_logged_escaped() {
    let dir = TempDir::new("tls05-reason");
    let mut w = AuditWriter::create(dir.path());
    w.write_line(&audit_event(0));
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let reason = "nope\nFORGED ERROR line\x1b[2J\u{202e}evil";
    // ["HELO", {"nonce": 16 bytes, "auth": "", "keepalive": true}]
    let mut helo = b"\x92\xa4HELO\x83\xa5nonce\xc4\x10".to_vec();
    helo.extend_from_slice(&[7; 16]);
    helo.extend_from_slice(b"\xa4auth\xa0\xa9keepalive\xc3");
    // ["PONG", false, reason, "", ""]
    let mut pong = b"\x95\xa4PONG\xc2\xd9".to_vec();
    pong.push(reason.len() as u8);
    pong.extend_from_slice(reason.as_bytes());
    pong.extend_from_slice(b"\xa0\xa0");
    // Serves a few attempts; the thread ends with the test process.
    thread::spawn(move || {
        for conn in listener.incoming().take(3) {
            let Ok(mut s) = conn else { continue };
            let mut ping = [0u8; 512];
            let _ = s.write_all(&helo);
            let _ = s.read(&mut ping);
            let _ = s.write_all(&pong);
        }
    });
    let mut fwd = Forwarder::start(fwd_args(
        &w.log_path(),
        port,
        &["--shared-key", "k", "--shutdown-timeout", "1s"],
    ));
    let escaped = r"server rejected the handshake: nope\nFORGED ERROR line\x1b[2J\u{202e}evil";
    assert!(
        fwd.wait_log(escaped, LOG_WAIT),
        "no escaped refusal in the log:\n{}",
        fwd.stderr_text()
    );
    let text = fwd.stderr_text();
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED")),
        "a forged line:\n{text}"
    );
    assert!(
        !text.contains(['\x1b', '\u{202e}']),
        "raw control characters:\n{text}"
    );
    fwd.term_ok();
}

// 6 ------------------------------------------------------------------------------------------

#[test]
fn t06_gzip_over_tls_every_record_intact() {
    let dir = TempDir::new("tls06");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client.crt", "client-rsa.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..3000);
    w.write_lines(&lines[..1000]);

    let port = free_port();
    let rx = TlsReceiver::start(
        port,
        server_args("server-ec.crt", "server-ec.key", Some("ca1.crt"), &[]),
    );
    let mut fwd = Forwarder::start(fwd_tls_args(
        &w.log_path(),
        port,
        &basedir,
        &["--compress", "gzip"],
    ));
    expect_all(&rx.tailer, &mut fwd, &lines[..1000], "gzip over TLS");
    for burst in lines[1000..].chunks(400) {
        w.write_lines(burst);
        thread::sleep(Duration::from_millis(100));
    }
    expect_exactly_once(&rx.tailer, &mut fwd, &lines, "gzip over TLS");
    fwd.term_ok();
}

// 7 ------------------------------------------------------------------------------------------

/// Decodes one Forward message with python3-msgpack, inflating gzip entries when the option
/// says so, and prints what it found as JSON.
const PY_DECODE_GZIP: &str = r#"
import gzip, json, sys, msgpack
data = open(sys.argv[1], 'rb').read()
u = msgpack.Unpacker(raw=False, strict_map_key=False)
u.feed(data)
msg = u.unpack()
out = {'trailing_bytes': len(data) - u.tell()}
out['top_type'] = type(msg).__name__
out['top_len'] = len(msg)
tag, entries, option = msg
out['tag'] = tag
out['tag_type'] = type(tag).__name__
out['entries_type'] = type(entries).__name__
out['entries_magic'] = entries[:2].hex()
out['option_types'] = {str(k): type(v).__name__ for k, v in option.items()}
out['option'] = {str(k): (v if isinstance(v, (str, int)) else repr(v)) for k, v in option.items()}
plain = gzip.decompress(entries) if option.get('compressed') == 'gzip' else entries
out['plain_len'] = len(plain)
times, records = [], []
u = msgpack.Unpacker(raw=False, strict_map_key=False)
u.feed(plain)
for t, rec in u:
    if isinstance(t, msgpack.ExtType):
        times.append({'ext': t.code, 'len': len(t.data),
                      'sec': int.from_bytes(t.data[:4], 'big'),
                      'nsec': int.from_bytes(t.data[4:8], 'big')})
    else:
        times.append({'other': repr(t)})
    records.append(rec)
out['plain_consumed'] = u.tell()
out['times'] = times
out['records'] = records
print(json.dumps(out, default=lambda o: {'__not_json__': repr(o)}))
"#;

/// An independent check of --compress gzip: the first raw frame a fake receiver captured,
/// inflated and decoded by python's gzip and msgpack modules, holds the source lines.
#[test]
fn t07_gzip_frame_decodes_with_python_gzip_and_msgpack() {
    let dir = TempDir::new("tls07");
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..400);
    w.write_lines(&lines);
    let port = free_port();
    let mut fake = FakeReceiver::start(port, FakeMode::Ack, None);
    let mut fwd = Forwarder::start(fwd_args(&w.log_path(), port, &["--compress", "gzip"]));
    let mut cov = Coverage::new(&lines);
    let all = wait_until(DELIVERY, || {
        cov.feed_all(&fake.records());
        fwd.exited() || cov.is_complete()
    });
    fwd.assert_alive("gzip to the acking fake receiver");
    assert!(all, "not all records acked by the fake: {}", fake.summary());
    assert!(
        fake.errors().is_empty(),
        "protocol errors: {}",
        fake.summary()
    );
    assert_delivered(&lines, &fake.records(), false);
    fwd.term_ok();
    fake.stop();

    let frame = fake.first_frame().expect("a captured frame");
    let frame_path = dir.join("frame.bin");
    fs::write(&frame_path, &frame).expect("write frame.bin");
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PY_DECODE_GZIP)
        .arg(&frame_path)
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        out.status.success(),
        "python could not decode the first frame ({} bytes): {}",
        frame.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).expect("python printed JSON");
    assert_eq!(d["trailing_bytes"], 0, "the frame is exactly one message");
    assert_eq!(d["top_type"], "list", "{d}");
    assert_eq!(
        d["top_len"], 3,
        "CompressedPackedForward is [tag, entries, option]"
    );
    assert_eq!(d["tag"], "audit", "tag");
    assert_eq!(d["tag_type"], "str", "tag type");
    assert_eq!(d["entries_type"], "bytes", "entries must be msgpack bin");
    assert_eq!(d["entries_magic"], "1f8b", "entries must be a gzip stream");
    assert_eq!(d["option"]["compressed"], "gzip", "option: {}", d["option"]);
    assert_eq!(
        d["option_types"]["compressed"], "str",
        "{}",
        d["option_types"]
    );
    assert_eq!(
        d["option_types"]["chunk"], "str",
        "chunk must be a str: {}",
        d["option"]
    );
    assert!(
        d["option"]["chunk"].as_str().is_some_and(|c| !c.is_empty()),
        "chunk: {}",
        d["option"]
    );
    assert_eq!(
        d["plain_consumed"], d["plain_len"],
        "the inflated entries end with a complete entry"
    );
    let records = d["records"].as_array().expect("records array");
    let times = d["times"].as_array().expect("times array");
    assert!(!records.is_empty(), "the first frame has no entries");
    assert!(records.len() <= lines.len());
    assert_eq!(d["option"]["size"], json!(records.len()), "size == entries");
    for (i, (rec, t)) in records.iter().zip(times).enumerate() {
        let want: Value = serde_json::from_str(&lines[i]).expect("source line");
        assert_eq!(rec, &want, "record {i} differs from source line {i}");
        let stage = want["stageTimestamp"].as_str().expect("stageTimestamp");
        let (sec, nsec) = parse_rfc3339(stage).expect("parse stageTimestamp");
        assert_eq!(
            t,
            &json!({"ext": 0, "len": 8, "sec": sec, "nsec": nsec}),
            "entry {i}: EventTime must equal stageTimestamp {stage}"
        );
    }
}

// 8 ------------------------------------------------------------------------------------------

/// A broken replacement file is logged and ignored: the forwarder keeps the old material, so
/// after the receiver drops the connection it reconnects with it and delivery goes on.
#[test]
fn t08_bad_replacement_key_keeps_the_old_material() {
    let dir = TempDir::new("tls08");
    let basedir = dir.join("tls");
    install_pki_files(
        &basedir,
        &client_files("ca1.crt", "client-ec.crt", "client-ec.key"),
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..1000);
    w.write_lines(&lines[..400]);

    let port = free_port();
    let args = server_args("server.crt", "server-rsa.key", Some("ca1.crt"), &[]);
    let mut rx = TlsReceiver::start(port, args.clone());
    let mut fwd = Forwarder::start(fwd_tls_args(&w.log_path(), port, &basedir, &[]));
    expect_exactly_once(&rx.tailer, &mut fwd, &lines[..400], "before the bad key");

    fs::write(
        basedir.join("client.key"),
        "-----BEGIN EC PRIVATE KEY-----\nnot a key\n-----END EC PRIVATE KEY-----\n",
    )
    .expect("overwrite client.key");
    let line = expect_fwd_log(
        &fwd,
        &["client.key", "keeping the previous"],
        &[],
        "bad replacement key",
    );
    eprintln!("forwarder: {line}");
    // A new connection must use the old, good material.
    rx.restart_with(args);
    w.write_lines(&lines[400..]);
    expect_exactly_once(&rx.tailer, &mut fwd, &lines, "after the bad key");
    let log = fwd.stderr_text();
    let reloaded = lines_mentioning(&log, &["tls material reloaded"], &[]);
    assert!(reloaded.is_empty(), "the bad key was loaded: {reloaded:?}");
    fwd.term_ok();
}

// Harness self-check (no binary needed) ------------------------------------------------------

/// The generated PKI is what the tests assume: v3 certificates with the intended issuers, names
/// and dates, and keys in the intended PEM forms.
#[test]
fn harness_pki_has_the_intended_certificates() {
    let p = pki();
    let x509 = |name: &str| -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(p.path(name))
            .output()
            .expect("openssl x509");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // (file, issuer CN, has SAN DNS:kubernetes-audit-tailer, extendedKeyUsage, expired)
    let cases = [
        (
            "server.crt",
            CA1_CN,
            true,
            "TLS Web Server Authentication",
            false,
        ),
        (
            "server-ec.crt",
            CA1_CN,
            true,
            "TLS Web Server Authentication",
            false,
        ),
        (
            "cn-only.crt",
            CA1_CN,
            false,
            "TLS Web Server Authentication",
            false,
        ),
        (
            "cn-only-ca2.crt",
            CA2_CN,
            false,
            "TLS Web Server Authentication",
            false,
        ),
        (
            "expired.crt",
            CA1_CN,
            true,
            "TLS Web Server Authentication",
            true,
        ),
        (
            "client.crt",
            CA1_CN,
            false,
            "TLS Web Client Authentication",
            false,
        ),
        (
            "client-ec.crt",
            CA1_CN,
            false,
            "TLS Web Client Authentication",
            false,
        ),
        (
            "client-ca2.crt",
            CA2_CN,
            false,
            "TLS Web Client Authentication",
            false,
        ),
    ];
    for (name, issuer, san, eku, expired) in cases {
        let text = x509(name);
        assert!(
            text.contains("Version: 3 (0x2)"),
            "{name} is not v3:\n{text}"
        );
        assert!(
            text.contains(&format!("Issuer: CN = {issuer}")),
            "{name} issuer:\n{text}"
        );
        assert_eq!(
            text.contains("DNS:kubernetes-audit-tailer"),
            san,
            "{name} SAN:\n{text}"
        );
        assert!(text.contains(eku), "{name} lacks {eku}:\n{text}");
        assert_eq!(
            text.contains("Not After : Feb  1 00:00:00 2020 GMT"),
            expired,
            "{name} dates:\n{text}"
        );
    }
    // PEM forms of the keys (what the loaders must accept).
    let keys = [
        ("server-rsa.key", "-----BEGIN RSA PRIVATE KEY-----"),
        ("client-rsa.key", "-----BEGIN RSA PRIVATE KEY-----"),
        ("server-ec.key", "-----BEGIN EC PARAMETERS-----"),
        ("client-ec.key", "-----BEGIN EC PARAMETERS-----"),
        ("client-ca2.key", "-----BEGIN PRIVATE KEY-----"),
    ];
    for (name, head) in keys {
        let text = fs::read_to_string(p.path(name)).expect("read key");
        assert!(
            text.starts_with(head),
            "{name} starts with {:?}",
            text.lines().next()
        );
    }
    let ec = fs::read_to_string(p.path("client-ec.key")).unwrap();
    assert!(
        ec.contains("-----BEGIN EC PRIVATE KEY-----"),
        "SEC1 key follows the parameters"
    );
    // Chains: each leaf verifies against its own CA and not against the other.
    for (leaf, good, bad) in [
        ("server.crt", "ca1.crt", "ca2.crt"),
        ("cn-only-ca2.crt", "ca2.crt", "ca1.crt"),
        ("client-ca2.crt", "ca2.crt", "ca1.crt"),
    ] {
        let verify = |ca: &str| {
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(p.path(ca))
                .arg(p.path(leaf))
                .output()
                .expect("openssl verify")
                .status
                .success()
        };
        assert!(verify(good), "{leaf} does not verify against {good}");
        assert!(!verify(bad), "{leaf} verifies against {bad}");
    }
}

#[test]
fn harness_socat_front_translates_tailer_flags() {
    let p = pki();
    let key = format!("--tls-key-file={}", p.arg("server-ec.key"));
    let args: Vec<String> = [
        "--tls-crt-file",
        &p.arg("server-ec.crt"),
        &key,
        "--client-ca",
        &p.arg("ca1.crt"),
        "--tls-max-version",
        "1.2",
        "--shared-key",
        "k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let backend = free_port();
    let port = free_port();
    let (front, rest) = SocatTls::start(port, backend, &args);
    assert_eq!(rest, vec!["--shared-key".to_string(), "k".to_string()]);
    assert!(port_listening(port), "socat listens on {port}");
    drop(front);
    assert!(
        wait_until(Duration::from_secs(5), || !port_listening(port)),
        "socat still listening after kill"
    );
}
