//! Turns parsed arguments into what the forwarder runs with: reads the shared-key file, builds
//! the rustls client configuration from the certificate files (naming the file on any error), and
//! re-reads that material when the files change on disk (Kubernetes swaps a mounted Secret's
//! `..data` symlink, so the directories are watched, not the files).

use std::fs;
use std::path::{Path, PathBuf};

use log::{error, info, warn};

use crate::cli::{ForwardArgs, KubeArgs, Proxy, SharedKey, TlsArgs};
use crate::forward::handshake;
use crate::kube;
use crate::net::conn;
use crate::net::tls;
use crate::sys::{self, Inotify};

pub struct Config {
    /// The Kubernetes client's settings, when the Service or the Secret is read from the API.
    pub kube: Option<kube::client::Settings>,
    pub route: conn::Route,
    pub tls: Option<tls::ClientTls>,
    pub handshake: Option<handshake::ClientConfig>,
}

/// Start-up: any error here is a configuration error (exit 2).
pub fn load(args: &ForwardArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, String> {
    let kube = match &args.kube {
        None => None,
        Some(k) => Some(kube_settings(args, k, env)?),
    };
    let tls = if args.plaintext || args.tls_from_secret() {
        // From the Secret: the material arrives with the first check, before any connection.
        None
    } else {
        if !args.tls.verify_hostname {
            warn!(
                "--tls-verify-hostname=false: the receiver's certificate chain is verified but its name is not checked against {:?}",
                args.tls.vhost
            );
        }
        Some(tls::client_tls(&client_settings(&args.tls)).map_err(|e| e.to_string())?)
    };
    let handshake = match &args.shared_key {
        None => None,
        Some(key) => Some(handshake::ClientConfig {
            shared_key: read_shared_key(key)?,
            self_hostname: match &args.self_hostname {
                Some(h) => h.clone(),
                None => sys::hostname().map_err(|e| {
                    format!("--self-hostname not set and the hostname is unknown: {e}")
                })?,
            },
            username: args.user_auth.as_ref().map(|u| u.username.clone()),
            password: args.user_auth.as_ref().map(|u| u.password.clone()),
        }),
    };
    let route = match &args.proxy {
        None => conn::Route::Direct,
        Some(Proxy::Uds { socket }) => conn::Route::Uds(socket.clone()),
        Some(p @ Proxy::Mtls { host, port, .. }) => conn::Route::Mtls {
            host: host.clone(),
            port: *port,
            tls: tls::client_tls(&proxy_settings(p).ok_or("proxy settings")?)
                .map_err(|e| format!("proxy TLS: {e}"))?,
        },
    };
    Ok(Config {
        kube,
        route,
        tls,
        handshake,
    })
}

/// The kubeconfig (or the in-cluster service account with `--kubecfg ""`), the schedule and
/// what to look up. Errors name the flag or the file.
fn kube_settings(
    args: &ForwardArgs,
    k: &KubeArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<kube::client::Settings, String> {
    let schedule = kube::schedule::parse(&k.check_schedule)
        .map_err(|e| format!("--check-schedule {:?}: {e}", k.check_schedule))?;
    let api = if k.kubecfg.as_os_str().is_empty() {
        kube::kubeconfig::in_cluster(env)
            .map_err(|e| format!("--kubecfg \"\" (in-cluster): {e}"))?
    } else {
        kube::kubeconfig::load(&k.kubecfg).map_err(|e| format!("--kubecfg {e}"))?
    };
    Ok(kube::client::Settings {
        api,
        namespace: k.namespace.clone(),
        service: k.service_name.clone(),
        fixed_target: args.target.clone(),
        secret: match (&k.secret_name, args.plaintext) {
            (Some(name), false) => Some(kube::client::SecretRef {
                name: name.clone(),
                ca_key: k.secret_keys.ca.clone(),
                crt_key: k.secret_keys.cert.clone(),
                key_key: k.secret_keys.key.clone(),
            }),
            _ => None,
        },
        vhost: args.tls.vhost.clone(),
        verify_hostname: args.tls.verify_hostname,
        schedule,
        schedule_text: k.check_schedule.clone(),
    })
}

/// The mTLS proxy is checked like any TLS server: its certificate must chain to
/// `--proxy-ca-file` and carry `--proxy-host` as a SAN.
fn proxy_settings(p: &Proxy) -> Option<tls::ClientSettings> {
    match p {
        Proxy::Mtls {
            host,
            ca,
            cert,
            key,
            ..
        } => Some(tls::ClientSettings {
            files: tls::ClientFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            },
            vhost: host.clone(),
            verify_hostname: true,
        }),
        Proxy::Uds { .. } => None,
    }
}

/// Proxy TLS material after a change; a bad new file is logged and the old material kept.
pub fn reload_proxy_tls(p: &Proxy) -> Option<tls::ClientTls> {
    let s = proxy_settings(p)?;
    match tls::client_tls(&s) {
        Ok(t) => {
            info!("proxy TLS material reloaded");
            Some(t)
        }
        Err(e) => {
            error!("proxy TLS material changed but cannot be used ({e}); keeping the previous one");
            None
        }
    }
}

pub fn read_shared_key(key: &SharedKey) -> Result<Vec<u8>, String> {
    match key {
        SharedKey::Value(v) => Ok(v.as_bytes().to_vec()),
        SharedKey::File(p) => {
            let text =
                fs::read(p).map_err(|e| format!("--shared-key-file {}: {e}", p.display()))?;
            // Secrets mounted from files usually end in a newline that is not part of the key.
            let key = text.strip_suffix(b"\n").unwrap_or(&text);
            let key = key.strip_suffix(b"\r").unwrap_or(key);
            if key.is_empty() {
                return Err(format!(
                    "--shared-key-file {}: the file is empty",
                    p.display()
                ));
            }
            Ok(key.to_vec())
        }
    }
}

pub fn client_settings(t: &TlsArgs) -> tls::ClientSettings {
    tls::ClientSettings {
        files: tls::ClientFiles {
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
        },
        vhost: t.vhost.clone(),
        verify_hostname: t.verify_hostname,
    }
}

/// Watches the directories of a set of files and tells when their contents changed.
pub struct Watch {
    inotify: Inotify,
    files: Vec<PathBuf>,
    last: Vec<Option<Vec<u8>>>,
}

impl Watch {
    pub fn new(files: &[&Path]) -> std::io::Result<Watch> {
        let inotify = Inotify::new()?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        for f in files {
            let dir = match f.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                let mask = libc::IN_CLOSE_WRITE
                    | libc::IN_MOVED_TO
                    | libc::IN_CREATE
                    | libc::IN_DELETE
                    | libc::IN_ATTRIB
                    | libc::IN_MOVED_FROM;
                if let Err(e) = inotify.add_watch(&dir, mask) {
                    warn!(
                        "cannot watch {} for certificate changes: {e}",
                        dir.display()
                    );
                }
                dirs.push(dir);
            }
        }
        let files: Vec<PathBuf> = files.iter().map(|f| f.to_path_buf()).collect();
        let last = files.iter().map(|f| fs::read(f).ok()).collect();
        Ok(Watch {
            inotify,
            files,
            last,
        })
    }

    pub fn inotify(&self) -> &Inotify {
        &self.inotify
    }

    /// Drains the events; true when any watched file now reads differently.
    pub fn changed(&mut self) -> bool {
        let mut ev = Vec::new();
        if let Err(e) = self.inotify.drain(&mut ev) {
            error!("inotify on certificate directories: {e}");
        }
        if ev.is_empty() {
            return false;
        }
        let now: Vec<Option<Vec<u8>>> = self.files.iter().map(|f| fs::read(f).ok()).collect();
        if now == self.last {
            return false;
        }
        self.last = now;
        true
    }
}

/// Builds the client TLS configuration again after a change; a bad new file is logged and the
/// old material kept.
pub fn reload_tls(args: &TlsArgs) -> Option<tls::ClientTls> {
    match tls::client_tls(&client_settings(args)) {
        Ok(t) => {
            info!(
                "TLS material reloaded from {}, {}, {}",
                args.ca.display(),
                args.cert.display(),
                args.key.display()
            );
            Some(t)
        }
        Err(e) => {
            error!("TLS material changed but cannot be used ({e}); keeping the previous one");
            None
        }
    }
}

impl ForwardArgs {
    /// The receiver's client TLS material comes from a Secret, not from files.
    pub fn tls_from_secret(&self) -> bool {
        !self.plaintext && self.kube.as_ref().is_some_and(|k| k.secret_name.is_some())
    }
}
