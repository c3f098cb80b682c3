//! Records which commit the binary was built from, for `--version`. Std only (no build
//! dependencies): `AUDIT_FORWARDER_COMMIT` when set (the Containerfile passes it, since the
//! image build has no `.git`), else `git rev-parse --short HEAD`, else a note that git was not
//! available.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=AUDIT_FORWARDER_COMMIT");
    let commit = match std::env::var("AUDIT_FORWARDER_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => match git(&["rev-parse", "--short", "HEAD"]) {
            Some(c) => {
                // Build again when HEAD moves: HEAD itself (branch switch), the branch's ref
                // and packed-refs (commits). Only existing files: a missing one would make cargo
                // run this script on every build.
                let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
                if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    watch.push(r);
                }
                for f in watch {
                    if let Some(p) = git(&["rev-parse", "--git-path", &f]) {
                        if std::path::Path::new(&p).exists() {
                            println!("cargo:rerun-if-changed={p}");
                        }
                    }
                }
                c
            }
            None => "unknown (built without git)".to_string(),
        },
    };
    println!("cargo:rustc-env=AUDIT_FORWARDER_COMMIT_ID={commit}");
}
