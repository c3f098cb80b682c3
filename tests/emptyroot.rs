//! The scratch image without a container engine: the static binary (built here the way
//! `just static` builds it) runs as uid 65532 in an empty root, a fresh directory holding only
//! the binary, the certificates, the audit log directory, a socket directory and the two files
//! Kubernetes mounts into every container, `etc/hosts` and `etc/resolv.conf`; entered with
//! `chroot --userspec=65532:65532`. If anything in the program needed another file of an image
//! (NSS modules, /etc/passwd, a CA bundle, a timezone database), these cases would fail.
//!
//! The binary is built by this test (`cargo build --release --target <triple>`, musl when
//! installed, else glibc with `+crt-static`) into the same target directory, so `cargo test`
//! stays self-contained and reuses what `just static` built. Needs root (chroot, chown to 65532):
//! without it, or without the chroot command, each case says so and passes.

mod common;

use common::proxy::{TinyProxy, UdsFront};
use common::*;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The apiserver's uid and gid under Gardener: the audit log is 0600 and theirs.
const UID: u32 = 65532;
/// A name only the root's etc/hosts knows.
const TAILER_NAME: &str = "audittailer.test";
const DELIVERY: Duration = Duration::from_secs(30);

/// The pod's resolv.conf: search list and ndots of a kube-apiserver pod in a shoot namespace,
/// and a nameserver nobody answers on, so that a name the hosts file did not answer would show
/// up as a timeout instead of passing by accident.
const RESOLV_CONF: &str = "search shoot--p--c.svc.cluster.local svc.cluster.local cluster.local\n\
                           nameserver 127.0.0.1\noptions ndots:5\n";

fn triple() -> &'static str {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if installed
        .lines()
        .any(|l| l.trim() == "x86_64-unknown-linux-musl")
    {
        "x86_64-unknown-linux-musl"
    } else {
        "x86_64-unknown-linux-gnu"
    }
}

/// The static binary, built once per test process (a no-op when `just static` or an earlier
/// run built it), or why it could not be.
fn static_binary() -> &'static Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/release/audit-forwarder -> target
        let target_dir = Path::new(env!("CARGO_BIN_EXE_audit-forwarder"))
            .parent()
            .and_then(Path::parent)
            .ok_or("no target directory above the test binary")?
            .to_path_buf();
        let triple = triple();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(&cargo);
        cmd.args([
            "build",
            "--release",
            "--bin",
            "audit-forwarder",
            "--target",
            triple,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
        // The test process carries cargo's variables for this crate (CARGO_PKG_*, OUT_DIR,
        // ...); build scripts (ring's) rerun when one of them differs from the last build, so
        // passed on they would rebuild everything here and again in the next `just static`.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if (k.starts_with("CARGO_") && k != "CARGO_HOME")
                || k.contains("RUSTFLAGS")
                || k == "OUT_DIR"
            {
                cmd.env_remove(&*k);
            }
        }
        if triple.ends_with("-gnu") {
            cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {cargo}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build --target {triple} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(target_dir
            .join(triple)
            .join("release")
            .join("audit-forwarder"))
    })
}

/// Why the empty-root cases cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: chroot and chown to 65532 need it".into());
    }
    if !Path::new("/usr/sbin/chroot").exists() && !Path::new("/usr/bin/chroot").exists() {
        return Some("no chroot command".into());
    }
    None
}

macro_rules! require_root {
    ($name:expr) => {
        if let Some(why) = skip_reason() {
            eprintln!("SKIPPED {}: {why}", $name);
            return;
        }
    };
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn give(path: &Path, mode: u32) {
    chown(path, Some(UID), Some(UID))
        .unwrap_or_else(|e| panic!("chown {UID} {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// The empty root: `/audit-forwarder`, `/certs` (ca.crt, client.crt/key, server.crt/key, keys
/// 0600 owned by 65532), `/log` (65532, 0700), `/run` (the socket directory), `/etc/hosts`,
/// `/etc/resolv.conf`. Nothing else.
struct EmptyRoot {
    dir: TempDir,
}

impl EmptyRoot {
    fn new(label: &str) -> EmptyRoot {
        let bin = match static_binary() {
            Ok(b) => b,
            Err(e) => panic!("{e}"),
        };
        let dir = TempDir::new(label);
        let root = dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod root");
        fs::copy(bin, root.join("audit-forwarder")).expect("copy the static binary");
        install_pki_files(
            &root.join("certs"),
            &[
                ("ca1.crt", "ca.crt"),
                ("client.crt", "client.crt"),
                ("client-rsa.key", "client.key"),
                ("server.crt", "server.crt"),
                ("server-rsa.key", "server.key"),
            ],
        );
        for f in ["ca.crt", "client.crt", "server.crt"] {
            give(&root.join("certs").join(f), 0o644);
        }
        for f in ["client.key", "server.key"] {
            give(&root.join("certs").join(f), 0o600);
        }
        fs::create_dir_all(root.join("log")).expect("mkdir log");
        give(&root.join("log"), 0o700);
        fs::create_dir_all(root.join("run")).expect("mkdir run");
        fs::create_dir_all(root.join("etc")).expect("mkdir etc");
        fs::write(
            root.join("etc/hosts"),
            format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.0.1\t{TAILER_NAME}\n"),
        )
        .expect("write etc/hosts");
        fs::write(root.join("etc/resolv.conf"), RESOLV_CONF).expect("write etc/resolv.conf");
        EmptyRoot { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// `chroot --userspec=65532:65532 ROOT /audit-forwarder`.
    fn launcher(&self) -> Vec<String> {
        vec![
            "chroot".into(),
            format!("--userspec={UID}:{UID}"),
            self.dir.path().display().to_string(),
            "/audit-forwarder".into(),
        ]
    }

    /// An audit log in /log written like kube-apiserver's: 0600, owned by 65532.
    fn audit_log(&self, lines: &[String]) -> AuditWriter {
        let mut w = AuditWriter::create(&self.path("log"));
        w.write_lines(lines);
        give(&w.log_path(), 0o600);
        w
    }

    /// Every entry of the root, relative, sorted: what the image would hold.
    fn listing(&self) -> Vec<String> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).expect("read_dir").flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.is_dir() && !p.is_symlink() {
                    walk(base, &p, out);
                }
            }
        }
        let mut v = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut v);
        v.sort();
        v
    }
}

/// The uid the process `pid` runs as (from /proc): chroot's --userspec took effect.
fn assert_uid(pid: u32, what: &str) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("?");
    assert_eq!(uid, UID.to_string(), "{what} runs as uid {uid}");
}

/// Forwarder arguments inside the root: TLS files from /certs, the log in /log, `target`
/// instead of 127.0.0.1.
fn fwd_in_root(target: &str, port: u16, extra: &[&str]) -> Vec<String> {
    let mut v = fwd_tls_args(
        Path::new("/log/audit.log"),
        port,
        Path::new("/certs"),
        extra,
    );
    if let Some(i) = v.iter().position(|a| a == "--target") {
        v[i + 1] = format!("{target}:{port}");
    }
    v
}

/// The tailer outside the root: TLS, client certificates from ca1 required.
fn tls_tailer(port: u16) -> Tailer {
    let ca = pki().arg("ca1.crt");
    Tailer::start_with(
        port,
        tailer_tls_args("server.crt", "server-rsa.key", &["--client-ca", &ca]),
    )
}

#[test]
fn static_binary_has_no_dynamic_dependencies_and_names_its_commit() {
    let bin = match static_binary() {
        Ok(b) => b.clone(),
        Err(e) => panic!("{e}"),
    };
    let path = bin.display().to_string();
    let file = run("file", &[&path]);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "file says it is dynamic: {file}"
    );
    assert!(
        file.contains("stripped") && !file.contains("not stripped"),
        "{file}"
    );
    let ldd = run("ldd", &[&path]);
    assert!(
        ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
        "ldd lists dependencies: {ldd}"
    );
    let size = fs::metadata(&bin).expect("stat").len();
    assert!(size < 4 << 20, "{path} is {size} bytes, over 4 MB");
    let version = run(&path, &["--version"]);
    assert_eq!(
        version.trim_end(),
        format!(
            "audit-forwarder {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            env!("AUDIT_FORWARDER_COMMIT_ID")
        )
    );
    eprintln!("{path}: {size} bytes\n{file}{ldd}{version}");
}

/// Case A: TLS to a tailer outside the root, by a name only the root's /etc/hosts knows (the
/// nameserver in its resolv.conf is dead): every record arrives once, in order.
#[test]
fn forwards_over_tls_by_a_name_from_the_roots_hosts_file() {
    require_root!("emptyroot A");
    let root = EmptyRoot::new("emptyroot-a");
    let lines = audit_events(0..1500);
    let mut w = root.audit_log(&lines[..1000]);
    let port = free_port();
    let tailer = tls_tailer(port);
    let mut fwd =
        Forwarder::start_launched(fwd_in_root(TAILER_NAME, port, &[]), &[], root.launcher());
    w.write_lines(&lines[1000..]);
    let ok = tailer.wait_all_lines(&lines, DELIVERY);
    fwd.assert_alive("empty root, TLS by name");
    assert_uid(fwd.pid() as u32, "the forwarder");
    assert!(ok, "not every record arrived:\n{}", fwd.stderr_text());
    assert_delivered(&lines, &tailer.records(), false);
    fwd.term_ok();
    // The position file is the only thing the forwarder added to the root.
    let added: Vec<String> = root
        .listing()
        .into_iter()
        .filter(|p| p.starts_with("log/") && p != "log/audit.log")
        .collect();
    assert_eq!(added, ["log/.audit-forwarder.pos"], "files written in /log");
}

/// Case B: through the konnectivity Unix socket in the root's /run (socat in front of
/// tinyproxy, both outside the root), TLS inside the tunnel: every record arrives.
#[test]
fn forwards_through_a_unix_socket_tunnel() {
    require_root!("emptyroot B");
    let root = EmptyRoot::new("emptyroot-b");
    let outside = TempDir::new("emptyroot-b-proxy");
    let lines = audit_events(0..1500);
    let mut w = root.audit_log(&lines[..1000]);
    let port = free_port();
    let tailer = tls_tailer(port);
    let proxy_port = free_port();
    let mut proxy = TinyProxy::new(outside.path(), proxy_port);
    proxy.start(port);
    let mut front = UdsFront::new(&root.path("run"), proxy_port);
    front.start();
    // socat creates the socket with its umask (0755); connecting needs write permission.
    fs::set_permissions(&front.path, fs::Permissions::from_mode(0o777)).expect("chmod socket");
    // The proxy, not the forwarder, resolves the target (as the konnectivity server does).
    let tunnel = ["--konnectivity-uds-socket", "/run/konnectivity.sock"];
    let mut fwd = Forwarder::start_launched(
        fwd_in_root("127.0.0.1", port, &tunnel),
        &[],
        root.launcher(),
    );
    w.write_lines(&lines[1000..]);
    let ok = tailer.wait_all_lines(&lines, DELIVERY);
    fwd.assert_alive("empty root, Unix socket tunnel");
    assert!(
        ok,
        "not every record arrived:\n{}\n{}\n{}",
        fwd.stderr_text(),
        front.report(),
        proxy.report()
    );
    assert_delivered(&lines, &tailer.records(), false);
    assert!(
        proxy.established() >= 1,
        "no tunnel through tinyproxy:\n{}",
        proxy.report()
    );
    fwd.term_ok();
}

/// Case C: the tailer mode in the empty root (TLS listener, certificate files in /certs,
/// client certificates required) receives every record from a forwarder outside.
#[test]
fn the_tailer_runs_in_the_empty_root() {
    require_root!("emptyroot C");
    let root = EmptyRoot::new("emptyroot-c");
    let outside = TempDir::new("emptyroot-c-fwd");
    let basedir = outside.join("tls");
    install_pki_files(
        &basedir,
        &[
            ("ca1.crt", "ca.crt"),
            ("client.crt", "client.crt"),
            ("client-rsa.key", "client.key"),
        ],
    );
    let port = free_port();
    let tailer = Tailer::start_launched(
        port,
        [
            "--tls-crt-file",
            "/certs/server.crt",
            "--tls-key-file",
            "/certs/server.key",
            "--client-ca",
            "/certs/ca.crt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        root.launcher(),
    );
    assert_uid(tailer.pid(), "the tailer");
    let mut w = AuditWriter::create(&outside.join("log"));
    let lines = audit_events(0..1500);
    w.write_lines(&lines);
    let mut fwd = Forwarder::start(fwd_tls_args(&w.log_path(), port, &basedir, &[]));
    let ok = tailer.wait_all_lines(&lines, DELIVERY);
    assert!(
        ok,
        "not every record arrived:\n{}\ntailer:\n{}",
        fwd.stderr_text(),
        tailer.stderr_text()
    );
    assert_delivered(&lines, &tailer.records(), false);
    fwd.term_ok();
}
