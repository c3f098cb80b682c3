//! The most common deployment mistake: kube-apiserver writes its audit log 0600 as root (or as
//! its own uid) and the sidecar runs as another uid. The real binary is started as uid 65532
//! with `setpriv` on a 0600 log owned by root and must say so once, at error level, naming the
//! file, its owner and mode, the uid it runs as and what fixes it; keep retrying without
//! repeating itself; and, once the mode or owner is fixed, deliver every record without a
//! restart. Needs root (to own the log and switch uid) and util-linux `setpriv`: without
//! either, each case says so and passes.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::thread;

/// The uid and gid the sidecar runs as (Gardener's nonroot).
const UID: u32 = 65532;

/// Why these cases cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: owning the log as root and switching uid need it".into());
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !setpriv.is_ok_and(|o| o.status.success()) {
        return Some("no setpriv command (util-linux)".into());
    }
    None
}

/// The forwarder started as `UID` with no supplementary groups.
fn as_other_uid() -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".into(),
        bin(),
    ]
}

/// Lines of the forwarder's output that report `log` as unreadable.
fn denied_lines<'a>(text: &'a str, log: &Path) -> Vec<&'a str> {
    let path = log.display().to_string().to_lowercase();
    lines_mentioning(text, &["cannot open", &path], &[])
}

/// Starts the forwarder as `UID` on a 0600 root-owned log, checks the one error line and that
/// nothing is delivered, applies `fix` to the log and checks that every record arrives.
fn unreadable_then_fixed(tag: &str, fix: fn(&Path)) {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED {tag}: {why}");
        return;
    }
    let dir = TempDir::new(tag);
    let logs = dir.join("log");
    let mut w = AuditWriter::create(&logs);
    // The position file goes next to the log: that directory is the sidecar's to write.
    chown(&logs, Some(UID), Some(UID)).expect("chown the log directory");
    let log = w.log_path();
    let mode = fs::metadata(&log)
        .expect("stat audit.log")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(
        mode, 0o600,
        "the writer creates the log the way kube-apiserver does"
    );
    let mut all = audit_events(0..300);
    w.write_lines(&all);

    let port = free_port();
    let tailer = Tailer::start(port);
    let mut fwd = Forwarder::start_launched(fwd_args(&log, port, &[]), &[], as_other_uid());

    let hint = |l: &&str| {
        let low = l.to_lowercase();
        l.contains("ERROR")
            && l.contains("owner 0:0 mode 0600")
            && l.contains(&format!("uid {UID}"))
            && low.contains("runasuser")
            && low.contains("fsgroup")
    };
    let found = wait_until(secs(10), || {
        denied_lines(&fwd.stderr_text(), &log).iter().any(hint)
    });
    fwd.assert_alive("unreadable log");
    assert!(
        found,
        "no ERROR naming {}, its owner and mode, uid {UID} and the fix; output:\n{}",
        log.display(),
        fwd.stderr_text()
    );
    // Retried every second meanwhile; still only the one line. Lines written now must arrive
    // too once the file is readable.
    let more = audit_events(300..400);
    w.write_lines(&more);
    all.extend(more);
    thread::sleep(secs(3));
    let text = fwd.stderr_text();
    let denied = denied_lines(&text, &log);
    assert_eq!(denied.len(), 1, "the failure is said once: {denied:#?}");
    assert_eq!(tailer.line_count(), 0, "nothing is readable, nothing sent");
    eprintln!("[{tag}] {}", denied[0]);

    fix(&log);
    expect_all_within(&tailer, &mut fwd, &all, "after the fix", secs(20));
    let readable = format!("{} is readable again", log.display());
    assert!(
        fwd.wait_log(&readable, secs(5)),
        "no INFO '{readable}'; output:\n{}",
        fwd.stderr_text()
    );
    let text = fwd.stderr_text();
    let again = lines_mentioning(&text, &[&readable.to_lowercase()], &[]);
    assert!(
        again.len() == 1 && again[0].contains("INFO"),
        "one INFO line: {again:#?}"
    );
    eprintln!("[{tag}] {}", again[0]);
    assert_eq!(denied_lines(&text, &log).len(), 1, "no further error");
    thread::sleep(ms(300));
    assert_delivered(&all, &tailer.records(), false);
    fwd.term_ok();
}

#[test]
fn unreadable_log_is_reported_once_and_chmod_is_picked_up_without_restart() {
    unreadable_then_fixed("perm-chmod", |log| {
        fs::set_permissions(log, fs::Permissions::from_mode(0o644)).expect("chmod 0644");
    });
}

#[test]
fn unreadable_log_is_reported_once_and_chown_is_picked_up_without_restart() {
    unreadable_then_fixed("perm-chown", |log| {
        chown(log, Some(UID), Some(UID)).expect("chown the log");
    });
}
