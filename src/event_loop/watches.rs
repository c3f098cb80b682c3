//! The small sources: termination signals, and the directories of certificate files (the
//! receiver's TLS material and the mTLS proxy's), re-read when Kubernetes swaps a mounted
//! Secret's `..data` symlink so the next connection uses the new material without a restart.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::{Effect, Source, CERTS, PROXY_CERTS, SIGNALS};
use crate::cli::{ForwardArgs, Proxy};
use crate::config;
use crate::sys;

pub struct Signals {
    fd: sys::Signals,
    stopping: bool,
}

impl Signals {
    pub fn new(registry: &Registry) -> Result<Signals, String> {
        let fd = sys::Signals::new().map_err(|e| format!("signalfd: {e}"))?;
        registry
            .register(&mut SourceFd(&fd.as_raw_fd()), SIGNALS, Interest::READABLE)
            .map_err(|e| format!("register signalfd: {e}"))?;
        Ok(Signals {
            fd,
            stopping: false,
        })
    }
}

impl Source for Signals {
    fn owns(&self, token: Token) -> bool {
        token == SIGNALS
    }

    fn on_event(&mut self, _token: Token, _registry: &Registry, out: &mut Vec<Effect>) {
        match self.fd.drain() {
            Ok(got) if !got.is_empty() && !self.stopping => {
                self.stopping = true;
                out.push(Effect::Stop(got[0].to_string()));
            }
            Ok(_) => {}
            // A signalfd that cannot be read would leave the process unstoppable but by
            // SIGKILL; stopping cleanly is the safe reading.
            Err(e) => {
                if !self.stopping {
                    self.stopping = true;
                    out.push(Effect::Stop(format!("signalfd error ({e})")));
                }
            }
        }
    }

    fn on_time(&mut self, _now: Instant, _registry: &Registry, _out: &mut Vec<Effect>) {}

    fn deadline(&self) -> Option<Instant> {
        None
    }
}

/// The directories of one set of certificate files, and how to turn them into an [`Effect`].
pub struct CertWatch {
    watch: config::Watch,
    token: Token,
    reload: Box<dyn Fn() -> Option<Effect>>,
}

/// The watches this configuration needs: the receiver's certificate files unless the TLS
/// material comes from a Secret (or there is no TLS), and the mTLS proxy's files.
pub fn certificate_watches(
    args: &ForwardArgs,
    registry: &Registry,
) -> Result<Vec<Box<dyn Source>>, String> {
    let mut out: Vec<Box<dyn Source>> = Vec::new();
    if !args.plaintext && !args.tls_from_secret() {
        let t = args.tls.clone();
        let files = vec![t.ca.clone(), t.cert.clone(), t.key.clone()];
        let reload = Box::new(move || config::reload_tls(&t).map(Effect::ReceiverTls));
        out.push(Box::new(CertWatch::new(registry, &files, CERTS, reload)?));
    }
    if let Some(p @ Proxy::Mtls { ca, cert, key, .. }) = &args.proxy {
        let files = vec![ca.clone(), cert.clone(), key.clone()];
        let p = p.clone();
        let reload = Box::new(move || config::reload_proxy_tls(&p).map(Effect::ProxyTls));
        out.push(Box::new(CertWatch::new(
            registry,
            &files,
            PROXY_CERTS,
            reload,
        )?));
    }
    Ok(out)
}

impl CertWatch {
    fn new(
        registry: &Registry,
        files: &[PathBuf],
        token: Token,
        reload: Box<dyn Fn() -> Option<Effect>>,
    ) -> Result<CertWatch, String> {
        let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
        let watch =
            config::Watch::new(&paths).map_err(|e| format!("inotify for certificates: {e}"))?;
        registry
            .register(
                &mut SourceFd(&watch.inotify().as_raw_fd()),
                token,
                Interest::READABLE,
            )
            .map_err(|e| format!("register inotify: {e}"))?;
        Ok(CertWatch {
            watch,
            token,
            reload,
        })
    }
}

impl Source for CertWatch {
    fn owns(&self, token: Token) -> bool {
        token == self.token
    }

    fn on_event(&mut self, _token: Token, _registry: &Registry, out: &mut Vec<Effect>) {
        if self.watch.changed() {
            out.extend((self.reload)());
        }
    }

    fn on_time(&mut self, _now: Instant, _registry: &Registry, _out: &mut Vec<Effect>) {}

    fn deadline(&self) -> Option<Instant> {
        None
    }
}
