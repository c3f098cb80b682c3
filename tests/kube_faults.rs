//! End-to-end tests of discovery through the Kubernetes API when the API misbehaves or the
//! configuration is wrong: the real forwarder with a kubeconfig from the harness, the in-process
//! test kube-apiserver (tests/common/kubeapi.rs) and a real TLS tailer that requires a client
//! certificate from the CA the Secret holds. Each test checks the outcome (every record arrived,
//! or nothing arrived while it must not) and the log line an operator sees; the matched lines
//! are printed with `eprintln!` (`cargo test -- --nocapture` shows them).

mod common;

use common::kubeapi::*;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

const DELIVERY: Duration = Duration::from_secs(40);
const LOG_WAIT: Duration = Duration::from_secs(30);
const NS: &str = "audit";
const SERVICE: &str = "audittailer";
const SECRET: &str = "audittailer-client";
const TOKEN: &str = "token-faults";
const USER: &str = "system:serviceaccount:kube-system:audit-forwarder";

/// One test's world: an API (maybe not listening yet) holding the client Secret (client
/// certificates of ca1) and a Service naming a TLS tailer, a token kubeconfig, an audit log.
struct World {
    dir: TempDir,
    api: KubeApi,
    tailer: Tailer,
    tailer_port: u16,
    kubeconfig: PathBuf,
    writer: AuditWriter,
    basedir: PathBuf,
}

fn world(label: &str, listening: bool) -> World {
    let dir = TempDir::new(label);
    let mut api = KubeApi::new(free_port());
    api.add_token(TOKEN, USER);
    let data = secret_data();
    let d: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (*k, v.as_slice())).collect();
    api.set_secret(SECRET, NS, "100", &d);
    let tailer_port = free_port();
    let ca = pki().arg("ca1.crt");
    let tailer = Tailer::start_with(
        tailer_port,
        tailer_tls_args("server.crt", "server-rsa.key", &["--client-ca", &ca]),
    );
    api.set_service(SERVICE, NS, "127.0.0.1", &[tailer_port], "1");
    if listening {
        api.listen();
    }
    let kubeconfig = Kubeconfig::new(
        "faults",
        api.port,
        KubeTrust::CaData(kube_pki().ca_cert()),
        KubeUser::Token(TOKEN.into()),
    )
    .write(&dir.join("kubeconfig"));
    let writer = AuditWriter::create(&dir.join("log"));
    let basedir = dir.join("empty-tls-basedir");
    fs::create_dir_all(&basedir).expect("mkdir");
    World {
        dir,
        api,
        tailer,
        tailer_port,
        kubeconfig,
        writer,
        basedir,
    }
}

/// The Secret's data: CA, client certificate and key from the test PKI under Gardener's keys.
fn secret_data() -> Vec<(&'static str, Vec<u8>)> {
    let read = |name: &str| fs::read(pki().path(name)).expect("PKI file");
    vec![
        ("ca.crt", read("ca1.crt")),
        ("tls.crt", read("client.crt")),
        ("tls.key", read("client-rsa.key")),
    ]
}

/// Discovery flags for `kubeconfig`: no `--target`, no certificate files, a 1 s schedule.
fn kube_args(w: &World, kubeconfig: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--audit-log-path",
        &w.writer.log_path().display().to_string(),
        "--kubecfg",
        &kubeconfig.display().to_string(),
        "--namespace",
        NS,
        "--service-name",
        SERVICE,
        "--secret-name",
        SECRET,
        "--tls-basedir",
        &w.basedir.display().to_string(),
        "--tls-ca-file",
        "ca.crt",
        "--tls-crt-file",
        "tls.crt",
        "--tls-key-file",
        "tls.key",
        "--check-schedule",
        "@every 1s",
        "--backoff-timer",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn start(w: &World, extra: &[&str]) -> Forwarder {
    Forwarder::start(kube_args(w, &w.kubeconfig, extra))
}

fn log_tail(f: &Forwarder) -> String {
    let t = f.stderr_text();
    let mut start = t.len().saturating_sub(6000);
    while !t.is_char_boundary(start) {
        start += 1;
    }
    t[start..].to_string()
}

/// Waits for forwarder log lines containing every word of `all` (lower case); prints and
/// returns them.
fn expect_log(f: &Forwarder, all: &[&str], what: &str) -> Vec<String> {
    let mut found = Vec::new();
    wait_until(LOG_WAIT, || {
        found = lines_mentioning(&f.stderr_text(), all, &[])
            .iter()
            .map(|l| l.to_string())
            .collect();
        !found.is_empty()
    });
    assert!(
        !found.is_empty(),
        "{what}: no forwarder log line with all of {all:?}; stderr (tail):\n{}",
        log_tail(f)
    );
    for l in &found {
        eprintln!("[{what}] {l}");
    }
    found
}

/// Every line of `expected` arrived at the tailer, in order, without duplicates.
fn expect_all(w: &World, f: &mut Forwarder, expected: &[String], what: &str) {
    let mut cov = Coverage::new(expected);
    let ok = wait_until(DELIVERY, || {
        cov = Coverage::new(expected);
        cov.feed_all(&w.tailer.records());
        cov.is_complete() || f.exited()
    });
    assert!(
        ok && cov.is_complete(),
        "{what}: {} of {} lines missing; api: {}\nforwarder log tail:\n{}",
        cov.remaining(),
        expected.len(),
        w.api.summary(),
        log_tail(f)
    );
    thread::sleep(ms(300));
    assert_delivered(expected, &w.tailer.records(), false);
}

/// Nothing reaches the tailer for `d` while the forwarder keeps running.
fn expect_nothing_for(w: &World, f: &mut Forwarder, d: Duration, what: &str) {
    thread::sleep(d);
    f.assert_alive(what);
    assert_eq!(
        w.tailer.line_count(),
        0,
        "{what}: records arrived although they must not; forwarder log tail:\n{}",
        log_tail(f)
    );
}

/// The file offset of the forwarder's open descriptor of `path` (from /proc/PID/fdinfo): how
/// far it has read the file.
fn read_offset(f: &Forwarder, path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let want = fs::metadata(path).ok()?;
    let fds = fs::read_dir(format!("/proc/{}/fd", f.pid())).ok()?;
    fds.filter_map(|e| e.ok()).find_map(|e| {
        let m = fs::metadata(e.path()).ok()?;
        if m.dev() != want.dev() || m.ino() != want.ino() {
            return None;
        }
        let info = fs::read_to_string(format!(
            "/proc/{}/fdinfo/{}",
            f.pid(),
            e.file_name().to_string_lossy()
        ))
        .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("pos:"))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Lines at `level` (as the logger prints it, e.g. "ERROR") that contain every word of `all`.
fn count_at(f: &Forwarder, level: &str, all: &[&str]) -> Vec<String> {
    lines_mentioning(&f.stderr_text(), all, &[])
        .into_iter()
        .filter(|l| l.contains(level))
        .map(|l| l.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. The API is not up yet
// ---------------------------------------------------------------------------------------------

#[test]
fn f01_api_not_up_yet_retries_with_backoff_then_delivers() {
    let mut w = world("kf01", false);
    let lines = audit_events(0..800);
    w.writer.write_lines(&lines);
    let mut fwd = start(&w, &[]);
    let url = w.api.url();

    let seen = expect_log(
        &fwd,
        &[&url.to_lowercase(), "connect", "retrying in"],
        "api down",
    );
    expect_nothing_for(&w, &mut fwd, secs(4), "API down");
    assert_eq!(
        read_offset(&fwd, &w.writer.log_path()),
        Some(0),
        "the audit log is read although there is no receiver yet"
    );
    let retries = count_at(&fwd, "WARN", &[&url.to_lowercase(), "retrying in"]);
    assert_eq!(
        retries.len(),
        1,
        "the unreachable API must be logged once, not per retry: {retries:#?}"
    );
    assert_eq!(seen.len(), 1);

    w.api.listen();
    expect_all(&w, &mut fwd, &lines, "after the API came up");
    expect_log(&fwd, &[&url.to_lowercase(), "answers again"], "api up");
    fwd.term_ok();
}

// ---------------------------------------------------------------------------------------------
// 2. A Service with two ports
// ---------------------------------------------------------------------------------------------

#[test]
fn f02_service_with_two_ports_is_refused_until_fixed() {
    let mut w = world("kf02", true);
    let other = free_port();
    w.api
        .set_service(SERVICE, NS, "127.0.0.1", &[w.tailer_port, other], "2");
    let lines = audit_events(0..600);
    w.writer.write_lines(&lines);
    let mut fwd = start(&w, &[]);

    let ports = format!("({}, {})", w.tailer_port, other);
    let seen = expect_log(
        &fwd,
        &[
            "service audit/audittailer has 2 ports",
            &ports,
            "exactly one",
        ],
        "two ports",
    );
    assert!(
        seen.iter()
            .all(|l| l.matches("service audit/audittailer").count() == 1),
        "the Service is named once per line: {seen:#?}"
    );
    expect_nothing_for(&w, &mut fwd, secs(3), "two ports");
    let errors = count_at(&fwd, "ERROR", &["has 2 ports"]);
    assert_eq!(errors.len(), 1, "logged once per fault: {errors:#?}");

    w.api
        .set_service(SERVICE, NS, "127.0.0.1", &[w.tailer_port], "3");
    expect_all(&w, &mut fwd, &lines, "after the Service got one port");
    expect_log(
        &fwd,
        &[
            "service audit/audittailer",
            &format!("receiver 127.0.0.1:{}", w.tailer_port),
        ],
        "fixed service",
    );
    fwd.term_ok();
}

// ---------------------------------------------------------------------------------------------
// 3. 403 on the Secret
// ---------------------------------------------------------------------------------------------

#[test]
fn f03_forbidden_secret_logs_the_status_message_then_recovers() {
    let mut w = world("kf03", true);
    let path = secret_path(NS, SECRET);
    w.api.forbid(&path);
    let lines = audit_events(0..600);
    w.writer.write_lines(&lines);
    let mut fwd = start(&w, &[]);

    expect_log(
        &fwd,
        &[
            "403",
            r#"secrets "audittailer-client" is forbidden: user "system:serviceaccount:kube-system:audit-forwarder""#,
        ],
        "403 secret",
    );
    expect_nothing_for(&w, &mut fwd, secs(3), "secret forbidden");
    let errors = count_at(&fwd, "ERROR", &["is forbidden"]);
    assert_eq!(errors.len(), 1, "logged once: {errors:#?}");
    assert!(
        w.api.requests_to(&path).len() >= 2,
        "the Secret is checked again at each tick: {}",
        w.api.summary()
    );

    w.api.allow(&path);
    expect_all(&w, &mut fwd, &lines, "after the Secret was allowed");
    expect_log(
        &fwd,
        &["secret audit/audittailer-client", "resourceversion 100"],
        "secret read",
    );
    fwd.term_ok();
}

// ---------------------------------------------------------------------------------------------
// 4. 401 with a token that is never accepted
// ---------------------------------------------------------------------------------------------

#[test]
fn f04_rejected_token_logs_401_once_and_sends_nothing() {
    let mut w = world("kf04", true);
    let lines = audit_events(0..200);
    w.writer.write_lines(&lines);
    // An inline token, and a token file that never changes: the 401 re-read finds nothing new.
    let inline = Kubeconfig::new(
        "wrong-inline",
        w.api.port,
        KubeTrust::CaData(kube_pki().ca_cert()),
        KubeUser::Token("not-a-valid-token".into()),
    )
    .write(&w.dir.join("kubeconfig-inline"));
    let tokens = SecretVolume::token(&w.dir.join("token-volume"), "also-not-valid");
    let file = Kubeconfig::gardener(w.api.port, &tokens.path("token"))
        .write(&w.dir.join("kubeconfig-file"));
    let mut fwds: Vec<Forwarder> = [&inline, &file]
        .iter()
        .map(|k| Forwarder::start(kube_args(&w, k, &[])))
        .collect();

    for (f, what) in fwds.iter().zip(["401 inline token", "401 token file"]) {
        expect_log(
            f,
            &["secret audit/audittailer-client", "401", "unauthorized"],
            what,
        );
    }
    for f in fwds.iter_mut() {
        expect_nothing_for(&w, f, secs(5), "token rejected");
    }
    let rejected = w
        .api
        .requests_to(&secret_path(NS, SECRET))
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert!(
        rejected >= 6,
        "both forwarders keep checking each second: {}",
        w.api.summary()
    );
    for f in fwds.iter_mut() {
        // One line per object (the Secret, then the Service), however many checks failed.
        for object in [
            "secret audit/audittailer-client:",
            "service audit/audittailer:",
        ] {
            let errors = count_at(f, "ERROR", &[object, "401"]);
            assert_eq!(
                errors.len(),
                1,
                "the 401 must be logged once, not every second: {errors:#?}"
            );
        }
        f.term_ok();
    }
}

// ---------------------------------------------------------------------------------------------
// 5. kubeconfig variants end to end
// ---------------------------------------------------------------------------------------------

fn deliver_with(w: &mut World, kubeconfig: &Path, what: &str) -> Forwarder {
    let lines = audit_events(0..400);
    w.writer.write_lines(&lines);
    let mut fwd = Forwarder::start(kube_args(w, kubeconfig, &[]));
    expect_all(w, &mut fwd, &lines, what);
    fwd
}

#[test]
fn f05a_kind_kubeconfig_authenticates_by_client_certificate() {
    let mut w = world("kf05a", true);
    let cert = kube_pki().client_cert("kind-admin", KeyKind::Rsa);
    let kc = Kubeconfig::kind(w.api.port, &cert).write(&w.dir.join("kind-kubeconfig"));
    let mut fwd = deliver_with(&mut w, &kc, "kind kubeconfig");
    let reqs = w.api.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(
            r.auth,
            Auth::Cert("kind-admin".into()),
            "every request authenticated by the client certificate: {}",
            w.api.summary()
        );
        assert_eq!(r.token, None, "no bearer token with a kind kubeconfig");
    }
    expect_log(&fwd, &["kubernetes api", "context \"kind-kind\""], "kind");
    fwd.term_ok();
}

#[test]
fn f05b_json_kubeconfig_delivers() {
    let mut w = world("kf05b", true);
    let kc = Kubeconfig::new(
        "json",
        w.api.port,
        KubeTrust::CaData(kube_pki().ca_cert()),
        KubeUser::Token(TOKEN.into()),
    )
    .into_json()
    .write(&w.dir.join("kubeconfig.json"));
    assert!(fs::read_to_string(&kc).expect("read").starts_with('{'));
    let mut fwd = deliver_with(&mut w, &kc, "JSON kubeconfig");
    assert!(w
        .api
        .requests()
        .iter()
        .all(|r| r.auth == Auth::Token(TOKEN.into())));
    expect_log(&fwd, &["kubernetes api", "context \"json\""], "json");
    fwd.term_ok();
}

#[test]
fn f05c_insecure_token_kubeconfig_warns_and_delivers() {
    let mut w = world("kf05c", true);
    let kc = Kubeconfig::insecure_token(w.api.port, TOKEN).write(&w.dir.join("kubeconfig"));
    let mut fwd = deliver_with(&mut w, &kc, "insecure kubeconfig");
    let warn = expect_log(
        &fwd,
        &["insecure-skip-tls-verify", "not checked"],
        "insecure",
    );
    assert!(warn.iter().all(|l| l.contains("WARN")), "{warn:#?}");
    fwd.term_ok();
}

// ---------------------------------------------------------------------------------------------
// 6. Slow, chunked, failing and oversized answers
// ---------------------------------------------------------------------------------------------

#[test]
fn f06a_slow_and_chunked_answers_still_deliver() {
    let mut w = world("kf06a", true);
    w.api.set_delay(secs(2));
    w.api.set_framing(Framing::ChunkedWithTrailers);
    let kc = w.kubeconfig.clone();
    let mut fwd = deliver_with(&mut w, &kc, "slow chunked API");
    assert!(
        w.api.requests().iter().all(|r| r.status == 200),
        "{}",
        w.api.summary()
    );
    expect_log(
        &fwd,
        &["service audit/audittailer", "receiver 127.0.0.1"],
        "slow chunked",
    );
    fwd.term_ok();
}

#[test]
fn f06b_internal_error_is_logged_once_then_recovers() {
    let mut w = world("kf06b", true);
    let path = service_path(NS, SERVICE);
    w.api.force_status(&path, 500);
    let lines = audit_events(0..500);
    w.writer.write_lines(&lines);
    let mut fwd = start(&w, &[]);

    expect_log(
        &fwd,
        &["service audit/audittailer", "500", "retrying in"],
        "500",
    );
    expect_nothing_for(&w, &mut fwd, secs(4), "500 on the Service");
    let warns = count_at(&fwd, "WARN", &["500", "retrying in"]);
    assert_eq!(warns.len(), 1, "logged once, not per retry: {warns:#?}");
    assert!(
        w.api
            .requests_to(&path)
            .iter()
            .filter(|r| r.status == 500)
            .count()
            >= 2,
        "retried: {}",
        w.api.summary()
    );

    w.api.clear_forced(&path);
    expect_all(&w, &mut fwd, &lines, "after the 500s stopped");
    expect_log(&fwd, &["answers again"], "500 over");
    fwd.term_ok();
}

#[test]
fn f06c_body_over_the_cap_is_refused_naming_its_size() {
    let mut w = world("kf06c", true);
    let path = service_path(NS, SERVICE);
    let huge = with_padding(
        &service_json(SERVICE, NS, "127.0.0.1", &[w.tailer_port], "7"),
        5 << 20,
    );
    let size = huge.len();
    w.api.set_raw(&path, 200, huge.into_bytes());
    let lines = audit_events(0..300);
    w.writer.write_lines(&lines);
    let mut fwd = start(&w, &[]);

    expect_log(
        &fwd,
        &[&format!("content-length {size}"), "cap of 4194304 bytes"],
        "body cap",
    );
    expect_nothing_for(&w, &mut fwd, secs(3), "oversized Service");
    let warns = count_at(&fwd, "WARN", &["exceeds the cap"]);
    assert_eq!(warns.len(), 1, "logged once, not per retry: {warns:#?}");

    w.api
        .set_service(SERVICE, NS, "127.0.0.1", &[w.tailer_port], "8");
    expect_all(&w, &mut fwd, &lines, "after the Service shrank");
    fwd.term_ok();
}

// ---------------------------------------------------------------------------------------------
// 7. Start-up configuration errors
// ---------------------------------------------------------------------------------------------

/// Runs the forwarder until it exits on its own; returns its exit code and output.
fn run_to_exit(args: Vec<String>) -> (Option<i32>, String) {
    let mut f = Forwarder::start(args);
    let mut status = None;
    wait_until(secs(20), || {
        status = f.exit_status();
        status.is_some()
    });
    let status = status.unwrap_or_else(|| {
        panic!(
            "the forwarder did not exit on a configuration error; output:\n{}",
            f.stderr_text()
        )
    });
    wait_until(secs(5), || f.exited());
    (status.code(), f.stderr_text())
}

fn expect_config_error(w: &World, kubeconfig: &Path, extra: &[&str], want: &[&str]) {
    let (code, out) = run_to_exit(kube_args(w, kubeconfig, extra));
    let found = lines_mentioning(&out, want, &[]);
    assert!(
        code == Some(2) && !found.is_empty(),
        "want exit 2 and a line with all of {want:?}; got {code:?}, output:\n{out}"
    );
    for l in found {
        eprintln!("[exit 2] {l}");
    }
}

#[test]
fn f07_startup_configuration_errors_exit_2_with_a_clear_message() {
    let w = world("kf07", true);
    let kc = w.kubeconfig.clone();

    expect_config_error(
        &w,
        &kc,
        &["--check-schedule", "*/0 * * * *"],
        &["--check-schedule \"*/0 * * * *\""],
    );
    expect_config_error(
        &w,
        &kc,
        &["--check-schedule", "CRON_TZ=Europe/Berlin 0 * * * *"],
        &["--check-schedule", "europe/berlin", "utc"],
    );

    let missing = w.dir.join("no-such-kubeconfig");
    expect_config_error(
        &w,
        &missing,
        &[],
        &["--kubecfg", &missing.display().to_string().to_lowercase()],
    );

    let good = fs::read_to_string(&kc).expect("read kubeconfig");
    let exec = good.replace(
        &format!("    token: {TOKEN}\n"),
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: gke-gcloud-auth-plugin\n",
    );
    assert_ne!(exec, good, "the token line was replaced");
    let exec_kc = w.dir.join("exec-kubeconfig");
    fs::write(&exec_kc, exec).expect("write");
    expect_config_error(
        &w,
        &exec_kc,
        &[],
        &[
            "user \"faults\"",
            "exec credential plugins are not supported",
        ],
    );

    let block = good.replace(
        &format!("    token: {TOKEN}\n"),
        &format!("    token: |\n      {TOKEN}\n"),
    );
    let block_line = block
        .lines()
        .position(|l| l.ends_with("token: |"))
        .expect("block scalar line")
        + 1;
    let block_kc = w.dir.join("block-kubeconfig");
    fs::write(&block_kc, block).expect("write");
    expect_config_error(
        &w,
        &block_kc,
        &[],
        &[
            &format!("line {block_line}:"),
            "block scalars (| or >) are not supported",
        ],
    );
    assert_eq!(w.tailer.line_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 8. The original's config file
// ---------------------------------------------------------------------------------------------

#[test]
fn f08_config_file_with_the_original_keys_and_a_flag_that_wins() {
    let mut w = world("kf08", true);
    let lines = audit_events(0..500);
    w.writer.write_lines(&lines);
    let config = w.dir.join("audit-forwarder.yaml");
    fs::write(
        &config,
        format!(
            "# the original's keys, as viper read them\n\
             audit-log-path: {}\n\
             kubecfg: {}\n\
             namespace: elsewhere\n\
             service-name: {SERVICE}\n\
             secret-name: {SECRET}\n\
             tls-basedir: {}\n\
             tls-ca-file: ca.crt\n\
             tls-crt-file: tls.crt\n\
             tls-key-file: tls.key\n\
             check-schedule: \"@every 1s\"\n\
             backoff-timer: 1s\n",
            w.writer.log_path().display(),
            w.kubeconfig.display(),
            w.basedir.display(),
        ),
    )
    .expect("write config");
    let cfg = config.display().to_string();

    // The config file alone: its namespace is asked for (and not found there).
    let mut alone = Forwarder::start(vec!["-c".into(), cfg.clone()]);
    expect_log(
        &alone,
        &[r#"services "audittailer" not found"#],
        "config namespace",
    );
    assert!(
        w.api
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/api/v1/namespaces/elsewhere/")),
        "{}",
        w.api.summary()
    );
    expect_nothing_for(&w, &mut alone, secs(2), "namespace from the config file");
    alone.term_ok();

    // The flag wins over the config file: everything arrives via discovery in `audit`.
    w.api.clear_requests();
    let mut fwd = Forwarder::start(vec!["-c".into(), cfg, "--namespace".into(), NS.into()]);
    expect_all(&w, &mut fwd, &lines, "config file with --namespace");
    expect_log(&fwd, &["kubernetes api", "in namespace audit"], "flag wins");
    assert!(
        w.api
            .requests()
            .iter()
            .all(|r| r.path.starts_with("/api/v1/namespaces/audit/")),
        "only the flag's namespace is asked: {}",
        w.api.summary()
    );
    fwd.term_ok();
}
