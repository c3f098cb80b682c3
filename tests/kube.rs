//! End-to-end tests of discovery through the Kubernetes API: the real forwarder, configured the
//! way Gardener deploys it (environment variables only, a generic token kubeconfig, no
//! `--target`, no certificate files), against the in-process test kube-apiserver
//! (tests/common/kubeapi.rs) and real TLS tailers whose client CA is the one the Secret holds.
//! Each test changes the API's answers while records flow and checks that every record arrived.

mod common;

use common::kubeapi::*;
use common::proxy::{TinyProxy, UdsFront};
use common::*;
use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

const DELIVERY: Duration = Duration::from_secs(40);
const LOG_WAIT: Duration = Duration::from_secs(20);
const NS: &str = "audit";
const SERVICE: &str = "audittailer";
const SECRET: &str = "audittailer-client";

/// The Secret's data: CA, client certificate and key from the test PKI under the Gardener keys.
fn secret_data(ca: &str, crt: &str, key: &str) -> Vec<(&'static str, Vec<u8>)> {
    let read = |name: &str| fs::read(pki().path(name)).expect("PKI file");
    vec![
        ("ca.crt", read(ca)),
        ("tls.crt", read(crt)),
        ("tls.key", read(key)),
    ]
}

fn set_secret(api: &KubeApi, rv: &str, data: &[(&'static str, Vec<u8>)]) {
    let d: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    api.set_secret(SECRET, NS, rv, &d);
}

/// A TLS tailer that requires a client certificate issued by `client_ca`.
fn tls_tailer(port: u16, client_ca: &str) -> Tailer {
    let ca = pki().arg(client_ca);
    Tailer::start_with(
        port,
        tailer_tls_args("server.crt", "server-rsa.key", &["--client-ca", &ca]),
    )
}

/// The Gardener environment of the issue, with the test's paths and a fast schedule.
fn gardener_env(kubeconfig: &Path, log: &Path, basedir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("AUDIT_KUBECFG", kubeconfig.display().to_string()),
        ("AUDIT_NAMESPACE", NS.into()),
        ("AUDIT_SERVICE_NAME", SERVICE.into()),
        ("AUDIT_SECRET_NAME", SECRET.into()),
        ("AUDIT_TLS_CA_FILE", "ca.crt".into()),
        ("AUDIT_TLS_CRT_FILE", "tls.crt".into()),
        ("AUDIT_TLS_KEY_FILE", "tls.key".into()),
        ("AUDIT_TLS_VHOST", VHOST.into()),
        ("AUDIT_TLS_BASEDIR", basedir.display().to_string()),
        ("AUDIT_AUDIT_LOG_PATH", log.display().to_string()),
        ("AUDIT_CHECK_SCHEDULE", "@every 1s".into()),
        ("AUDIT_BACKOFF_TIMER", "1s".into()),
        ("AUDIT_LOG_LEVEL", "debug".into()),
    ]
}

fn start_env(env: &[(&'static str, String)]) -> Forwarder {
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Forwarder::start_env(Vec::new(), &e)
}

fn expect_log(f: &Forwarder, all: &[&str], what: &str) -> String {
    let mut found = None;
    wait_until(LOG_WAIT, || {
        found = lines_mentioning(&f.stderr_text(), all, &[])
            .first()
            .map(|l| l.to_string());
        found.is_some()
    });
    found.unwrap_or_else(|| {
        let text = f.stderr_text();
        let tail = &text[text.len().saturating_sub(6000)..];
        panic!("{what}: no forwarder log line with all of {all:?}; stderr (tail):\n{tail}")
    })
}

/// Every line of `expected` arrived at one of the tailers, in order within each, none lost.
fn expect_all_at(tailers: &[&Tailer], f: &mut Forwarder, expected: &[String], what: &str) {
    let mut cov = Coverage::new(expected);
    let ok = wait_until(DELIVERY, || {
        cov = Coverage::new(expected);
        for t in tailers {
            cov.feed_all(&t.records());
        }
        cov.is_complete() || f.exited()
    });
    assert!(
        ok && cov.is_complete(),
        "{what}: {} of {} lines missing; forwarder log tail:\n{}",
        cov.remaining(),
        expected.len(),
        {
            let t = f.stderr_text();
            t[t.len().saturating_sub(6000)..].to_string()
        }
    );
}

struct Setup {
    dir: TempDir,
    api: KubeApi,
    tokens: SecretVolume,
    kubeconfig: std::path::PathBuf,
    writer: AuditWriter,
    basedir: std::path::PathBuf,
}

/// A running test API with one valid token in a kubelet-style Secret volume, a Gardener
/// generic token kubeconfig, the client Secret (client certificates of ca1), and an audit log.
fn setup(label: &str) -> Setup {
    let dir = TempDir::new(label);
    let api = KubeApi::start(free_port());
    api.add_token(
        "token-1",
        "system:serviceaccount:kube-system:audit-forwarder",
    );
    let tokens = SecretVolume::token(&dir.join("token-volume"), "token-1");
    let kubeconfig =
        Kubeconfig::gardener(api_port(&api), &tokens.path("token")).write(&dir.join("kubeconfig"));
    set_secret(
        &api,
        "100",
        &secret_data("ca1.crt", "client.crt", "client-rsa.key"),
    );
    let writer = AuditWriter::create(&dir.join("log"));
    // The original wrote the Secret's keys here; this one must not need it at all.
    let basedir = dir.join("empty-tls-basedir");
    fs::create_dir_all(&basedir).expect("mkdir");
    Setup {
        dir,
        api,
        tokens,
        kubeconfig,
        writer,
        basedir,
    }
}

fn api_port(api: &KubeApi) -> u16 {
    api.url()
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .expect("port in the API URL")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn k01_gardener_environment_only_delivers_and_follows_a_rotated_token() {
    let mut s = setup("kube01");
    let port = free_port();
    let rx = tls_tailer(port, "ca1.crt");
    s.api.set_service(SERVICE, NS, "127.0.0.1", &[port], "1");
    let lines = audit_events(0..3000);
    s.writer.write_lines(&lines[..1500]);

    let env = gardener_env(&s.kubeconfig, &s.writer.log_path(), &s.basedir);
    let mut fwd = start_env(&env);
    expect_all_at(&[&rx], &mut fwd, &lines[..1500], "first half via discovery");
    for (all, what) in [
        (
            &["kubernetes api https://127.0.0.1", "checking service"][..],
            "start",
        ),
        (
            &["secret audit/audittailer-client", "resourceversion 100"][..],
            "secret read",
        ),
        (
            &["service audit/audittailer", "receiver 127.0.0.1"][..],
            "service read",
        ),
        (&["receiver is 127.0.0.1"][..], "receiver announced"),
    ] {
        eprintln!("[k01] {}", expect_log(&fwd, all, what));
    }
    assert_eq!(
        fs::read_dir(&s.basedir).expect("basedir").count(),
        0,
        "nothing may be written to --tls-basedir"
    );

    // Gardener rotates the token: the kubelet swaps `..data`, the API accepts only the new one.
    s.tokens.update(&[("token", b"token-2")]);
    s.api.add_token(
        "token-2",
        "system:serviceaccount:kube-system:audit-forwarder",
    );
    s.api.remove_token("token-1");
    s.api.clear_requests();
    let used_new = wait_until(LOG_WAIT, || {
        s.api
            .requests()
            .iter()
            .any(|r| r.token.as_deref() == Some("token-2") && r.status == 200)
    });
    assert!(
        used_new,
        "the rotated token was not used: {}",
        s.api.summary()
    );
    let old_after: Vec<u16> = s
        .api
        .requests()
        .iter()
        .filter(|r| r.token.as_deref() == Some("token-1"))
        .map(|r| r.status)
        .collect();
    assert!(
        old_after.len() <= 2,
        "the old token kept being sent after the rotation: {old_after:?}"
    );

    s.writer.write_lines(&lines[1500..]);
    expect_all_at(
        &[&rx],
        &mut fwd,
        &lines,
        "all lines after the token rotation",
    );
    thread::sleep(Duration::from_millis(400));
    assert_delivered(&lines, &rx.records(), false);
    fwd.term_ok();
    drop(s.dir);
}

#[test]
fn k02_service_port_change_then_deletion_and_recreation_lose_nothing() {
    let mut s = setup("kube02");
    let (port_a, port_b) = (free_port(), free_port());
    let rx_a = tls_tailer(port_a, "ca1.crt");
    s.api.set_service(SERVICE, NS, "127.0.0.1", &[port_a], "1");
    let lines = audit_events(0..6000);
    s.writer.write_lines(&lines[..2000]);
    let env = gardener_env(&s.kubeconfig, &s.writer.log_path(), &s.basedir);
    let mut fwd = start_env(&env);
    expect_all_at(&[&rx_a], &mut fwd, &lines[..2000], "before the change");

    // The Service moves to another port (a second tailer) while lines keep coming.
    let rx_b = tls_tailer(port_b, "ca1.crt");
    s.writer.write_lines(&lines[2000..3000]);
    s.api.set_service(SERVICE, NS, "127.0.0.1", &[port_b], "2");
    let line = expect_log(
        &fwd,
        &["receiver changed from", &port_b.to_string()],
        "switch",
    );
    eprintln!("[k02] {line}");
    s.writer.write_lines(&lines[3000..4000]);
    expect_all_at(
        &[&rx_a, &rx_b],
        &mut fwd,
        &lines[..4000],
        "across the port change",
    );
    assert!(
        rx_b.line_count() > 0,
        "the new port got nothing; it was never used"
    );

    // The Service goes away: delivery pauses, nothing is lost, and it resumes on return.
    s.api.delete_service(SERVICE, NS);
    let line = expect_log(&fwd, &["service audit/audittailer", "not found"], "gone");
    eprintln!("[k02] {line}");
    let before = rx_a.line_count() + rx_b.line_count();
    s.writer.write_lines(&lines[4000..5000]);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        rx_a.line_count() + rx_b.line_count(),
        before,
        "records were sent while the Service was gone"
    );
    s.api.set_service(SERVICE, NS, "127.0.0.1", &[port_b], "3");
    s.writer.write_lines(&lines[5000..]);
    expect_all_at(
        &[&rx_a, &rx_b],
        &mut fwd,
        &lines,
        "after the Service returned",
    );
    fwd.term_ok();
}

#[test]
fn k03_rotated_secret_brings_a_new_client_certificate() {
    let mut s = setup("kube03");
    let port = free_port();
    let mut rx = tls_tailer(port, "ca1.crt");
    s.api.set_service(SERVICE, NS, "127.0.0.1", &[port], "1");
    let lines = audit_events(0..2000);
    s.writer.write_lines(&lines[..1000]);
    let env = gardener_env(&s.kubeconfig, &s.writer.log_path(), &s.basedir);
    let mut fwd = start_env(&env);
    expect_all_at(
        &[&rx],
        &mut fwd,
        &lines[..1000],
        "with the first certificate",
    );

    // The tailer now trusts only clients of ca2: the old certificate is refused until the
    // Secret brings one from ca2.
    let ca2 = pki().arg("ca2.crt");
    rx.restart_with(tailer_tls_args(
        "server.crt",
        "server-rsa.key",
        &["--client-ca", &ca2],
    ));
    s.writer.write_lines(&lines[1000..1500]);
    thread::sleep(Duration::from_secs(2));
    set_secret(
        &s.api,
        "101",
        &secret_data("ca1.crt", "client-ca2.crt", "client-ca2.key"),
    );
    let line = expect_log(
        &fwd,
        &["secret audit/audittailer-client", "resourceversion 101"],
        "new secret",
    );
    eprintln!("[k03] {line}");
    s.writer.write_lines(&lines[1500..]);
    expect_all_at(&[&rx], &mut fwd, &lines, "with the rotated certificate");
    fwd.term_ok();
}

#[test]
fn k04_discovered_cluster_ip_is_reached_through_konnectivity_with_tls_files() {
    let mut s = setup("kube04");
    let port = free_port();
    let rx = tls_tailer(port, "ca1.crt");
    s.api.set_service(SERVICE, NS, "127.0.0.1", &[port], "1");
    // `--secret-name ""`: the client material comes from --tls-basedir, not from the Secret.
    install_pki_files(
        &s.basedir,
        &[
            ("ca1.crt", "ca.crt"),
            ("client.crt", "tls.crt"),
            ("client-rsa.key", "tls.key"),
        ],
    );
    let mut proxy = TinyProxy::new(s.dir.path(), free_port());
    proxy.start(port);
    let mut front = UdsFront::new(s.dir.path(), proxy.port);
    front.start();
    let lines = audit_events(0..1000);
    s.writer.write_lines(&lines);
    let mut env = gardener_env(&s.kubeconfig, &s.writer.log_path(), &s.basedir);
    env.retain(|(k, _)| *k != "AUDIT_SECRET_NAME");
    env.push(("AUDIT_SECRET_NAME", String::new()));
    env.push((
        "AUDIT_KONNECTIVITY_UDS_SOCKET",
        front.path.display().to_string(),
    ));
    let mut fwd = start_env(&env);
    expect_all_at(
        &[&rx],
        &mut fwd,
        &lines,
        "through the tunnel to the ClusterIP",
    );
    let connects = proxy.connect_requests();
    assert!(
        connects
            .iter()
            .any(|c| c.starts_with(&format!("CONNECT 127.0.0.1:{port}"))),
        "the tunnel was not asked for the Service's ClusterIP and port: {connects:?}"
    );
    assert!(
        s.api
            .requests()
            .iter()
            .all(|r| !r.path.contains("/secrets/")),
        "the Secret was read although --secret-name is empty: {}",
        s.api.summary()
    );
    fwd.term_ok();
    front.stop();
    proxy.stop();
}
