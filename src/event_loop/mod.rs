//! The forwarder's one `mio::Poll`, as a dispatcher. Each source of events owns its tokens and
//! its next deadline: the data path ([`pipeline`]: files, chunks, the receiver connection,
//! the position file), the signals, the certificate-file watches ([`watches`]) and the
//! Kubernetes client (`kube::client`). `run` only polls, hands each event to the source that
//! owns its token, asks every source for its deadline, and passes what one source learned
//! (stop, new TLS material, a new receiver address) to the data path as an [`Effect`]. The
//! metrics endpoint is a source too, and after each turn answers its pending requests with the
//! data path's [`Pipeline::snapshot`].

mod pipeline;
mod watches;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token};

use crate::cli::{ForwardArgs, Target};
use crate::config::Config;
use crate::kube;
use crate::metrics;
use crate::net::resolve::{self, Resolver};
use crate::net::tls;

pub use pipeline::Pipeline;

/// What a source tells the data path.
pub enum Effect {
    /// A signal: stop reading, wait for outstanding acks, save the position, exit.
    Stop(String),
    /// New TLS material for the next connection to the receiver.
    ReceiverTls(tls::ClientTls),
    /// New TLS material for the next connection to the mTLS proxy.
    ProxyTls(tls::ClientTls),
    /// Where the receiver is now; `None` while it is unknown or gone (delivery pauses, the
    /// position stays where the acks put it).
    Receiver(Option<Target>),
    /// A request to the Kubernetes API failed (not reached, or it could not serve): counted
    /// among the connection failures of the metrics, with reason `api`.
    ApiFailed,
}

/// An owner of tokens on the loop other than the data path.
pub trait Source {
    fn owns(&self, token: Token) -> bool;
    /// A readiness event for one of its tokens.
    fn on_event(&mut self, token: Token, registry: &Registry, out: &mut Vec<Effect>);
    /// Called every turn after the events: timers and work not tied to one event.
    fn on_time(&mut self, now: Instant, registry: &Registry, out: &mut Vec<Effect>);
    /// The next moment this source needs a turn without an event.
    fn deadline(&self) -> Option<Instant>;
}

/// Tokens by owner; the Kubernetes client takes the range from `KUBE`, the metrics endpoint
/// the range from `METRICS` (its listener, then one per client).
pub const SIGNALS: Token = Token(0);
pub const INOTIFY: Token = Token(1);
pub const CONN: Token = Token(2);
pub const CERTS: Token = Token(3);
pub const PROXY_CERTS: Token = Token(4);
/// The helper threads' shared wake-up (the resolver's lookups, the position file's writer):
/// their results are collected by their owners every turn.
pub const RESOLVER: Token = Token(5);
pub const KUBE: Token = Token(16);
pub const METRICS: Token = Token(32);

pub fn run(args: &ForwardArgs, mut cfg: Config) -> Result<(), String> {
    let mut poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
    let registry = poll
        .registry()
        .try_clone()
        .map_err(|e| format!("epoll: {e}"))?;
    let waker = Arc::new(mio::Waker::new(&registry, RESOLVER).map_err(|e| format!("epoll: {e}"))?);
    let lookup: resolve::Lookup = Arc::new(resolve::system_lookup);
    let resolver = Resolver::sharing(lookup.clone(), waker.clone());
    let pipeline_waker = waker.clone();

    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(watches::Signals::new(&registry)?)];
    sources.extend(watches::certificate_watches(args, &registry)?);
    if let Some(settings) = cfg.kube.take() {
        let resolver = Resolver::sharing(lookup, waker);
        sources.push(Box::new(kube::client::Kube::new(
            settings, resolver, &registry, KUBE,
        )?));
    }
    let mut pipeline = Pipeline::new(args, cfg, &registry, resolver, pipeline_waker)?;
    // Kept apart from `sources` because it alone also reads the data path's figures.
    let mut metrics = match &args.metrics_address {
        Some(addr) => Some(metrics::Server::new(addr, &registry, METRICS)?),
        None => None,
    };

    let mut events = Events::with_capacity(64);
    let mut effects = Vec::new();
    loop {
        let now = Instant::now();
        let wake = sources
            .iter()
            .map(|s| s.as_ref())
            .chain(metrics.as_ref().map(|m| m as &dyn Source))
            .filter_map(|s| s.deadline())
            .chain(pipeline.deadline(now))
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        if let Err(e) = poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("epoll: {e}"));
            }
        }
        for ev in events.iter() {
            let token = ev.token();
            let all = sources.iter_mut().map(|s| s.as_mut());
            for s in all.chain(metrics.as_mut().map(|m| m as &mut dyn Source)) {
                if s.owns(token) {
                    s.on_event(token, &registry, &mut effects);
                }
            }
            pipeline.on_event(token);
        }
        let now = Instant::now();
        let all = sources.iter_mut().map(|s| s.as_mut());
        for s in all.chain(metrics.as_mut().map(|m| m as &mut dyn Source)) {
            s.on_time(now, &registry, &mut effects);
        }
        for e in effects.drain(..) {
            pipeline.apply(e, &registry);
        }
        if pipeline.turn(&registry)? {
            return Ok(());
        }
        if let Some(m) = metrics.as_mut().filter(|m| m.has_pending()) {
            m.answer_pending(&pipeline.snapshot(), &registry);
        }
    }
}
