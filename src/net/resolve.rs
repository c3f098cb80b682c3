//! Name resolution off the event loop. `getaddrinfo` blocks for as long as the nameservers take
//! (seconds per try when one is unreachable); on the loop that would stall reading, acks,
//! signals and position saves. One long-lived thread does the lookups, one at a time, and wakes
//! the loop through a `mio::Waker` when an answer is there; the connection collects it on its
//! next turn. Literal addresses are answered at once, without the thread.
//!
//! The lookup itself is one replaceable function ([`system_lookup`]): our own reader of
//! `/etc/hosts` and `/etc/resolv.conf` (`dns`), not the C library's, so that the static binary
//! in a scratch image needs no NSS modules; tests inject lookups that block or return chosen
//! addresses.

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use mio::Waker;

use crate::net::dns;

/// Every address `host` has, in the order they should be tried; an error names the host.
pub type Lookup = Arc<dyn Fn(&str, u16) -> Result<Vec<SocketAddr>, String> + Send + Sync>;

/// `/etc/hosts`, then the nameservers of `/etc/resolv.conf` (see `dns`): IPv4 addresses first.
pub fn system_lookup(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let ips = dns::lookup(host)?;
    if ips.is_empty() {
        return Err(format!("resolve {host}: no addresses"));
    }
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// A lookup that was asked for; its answer is collected with [`Resolver::answer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

type Answer = Result<Vec<SocketAddr>, String>;

struct Worker {
    tx: Sender<(u64, String, u16)>,
    rx: Receiver<(u64, Answer)>,
}

pub struct Resolver {
    lookup: Lookup,
    waker: Arc<Waker>,
    /// Started at the first name that needs a lookup: a forwarder given an IP address never
    /// has the thread.
    worker: Option<Worker>,
    next_id: u64,
    /// Lookups sent to the worker and not answered yet. A lookup that outlived the caller's
    /// deadline is joined by the next ask for the same name instead of being queued again, so
    /// a resolver that hangs holds at most one request per name.
    asked: Vec<(u64, String, u16)>,
    /// Answers not collected yet. A late answer to an abandoned ask is kept for the next ask
    /// of the same name: a resolver slower than the caller's deadline still gets through.
    answers: Vec<(u64, String, u16, Answer)>,
}

impl Resolver {
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn new(lookup: Lookup, waker: Waker) -> Resolver {
        Resolver::sharing(lookup, Arc::new(waker))
    }

    /// A resolver whose answers wake the loop through a waker shared with other resolvers: mio
    /// allows one waker per poll, and the receiver connection and the Kubernetes client each
    /// resolve their own names.
    pub fn sharing(lookup: Lookup, waker: Arc<Waker>) -> Resolver {
        Resolver {
            lookup,
            waker,
            worker: None,
            next_id: 0,
            asked: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// Starts resolving `host` (or answers at once for an IP address). The caller holds one
    /// ticket at a time: answers to earlier tickets for other names are dropped here.
    pub fn ask(&mut self, host: &str, port: u16) -> Ticket {
        self.collect();
        let known = self
            .answers
            .iter()
            .map(|a| (a.0, &a.1, a.2))
            .chain(self.asked.iter().map(|a| (a.0, &a.1, a.2)))
            .find(|(_, h, p)| h.as_str() == host && *p == port)
            .map(|(id, ..)| id);
        if let Some(id) = known {
            self.answers.retain(|a| a.0 == id);
            return Ticket(id);
        }
        self.answers.clear();
        self.next_id += 1;
        let id = self.next_id;
        // `[::1]` arrives without brackets from the command line; a literal needs no lookup.
        if let Ok(ip) = host.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, port);
            self.answers
                .push((id, host.to_string(), port, Ok(vec![addr])));
            return Ticket(id);
        }
        match self.send(id, host, port) {
            Ok(()) => self.asked.push((id, host.to_string(), port)),
            Err(e) => self.answers.push((
                id,
                host.to_string(),
                port,
                Err(format!("resolve {host}: {e}")),
            )),
        }
        Ticket(id)
    }

    /// The answer to `ticket`, once it is there.
    pub fn answer(&mut self, ticket: Ticket) -> Option<Answer> {
        self.collect();
        let i = self.answers.iter().position(|a| a.0 == ticket.0)?;
        Some(self.answers.swap_remove(i).3)
    }

    fn send(&mut self, id: u64, host: &str, port: u16) -> Result<(), String> {
        if self.worker.is_none() {
            self.worker = Some(self.spawn()?);
        }
        let sent = match &self.worker {
            Some(w) => w.tx.send((id, host.to_string(), port)).is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread is gone (it only ends when we drop the channel, so this is unexpected):
        // start a new one for the next attempt.
        self.worker = None;
        self.asked.clear();
        Err("the resolver thread stopped".to_string())
    }

    fn spawn(&self) -> Result<Worker, String> {
        let (tx, requests) = mpsc::channel::<(u64, String, u16)>();
        let (answers, rx) = mpsc::channel();
        let lookup = Arc::clone(&self.lookup);
        let waker = Arc::clone(&self.waker);
        std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || {
                // Ends when the Resolver (the sending side) is dropped.
                for (id, host, port) in requests {
                    let answer = lookup(&host, port);
                    if answers.send((id, answer)).is_err() {
                        return;
                    }
                    // A failed wake only delays the answer to the next timer of the loop.
                    let _ = waker.wake();
                }
            })
            .map_err(|e| format!("cannot start the resolver thread: {e}"))?;
        Ok(Worker { tx, rx })
    }

    fn collect(&mut self) {
        let Some(w) = &self.worker else { return };
        while let Ok((id, answer)) = w.rx.try_recv() {
            if let Some(i) = self.asked.iter().position(|a| a.0 == id) {
                let (id, host, port) = self.asked.swap_remove(i);
                self.answers.push((id, host, port, answer));
            }
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    /// A lookup that blocks until the test releases it with the addresses to answer.
    pub struct Gate {
        pub calls: Mutex<Vec<String>>,
        answer: Mutex<Option<Answer>>,
        cond: std::sync::Condvar,
    }

    impl Gate {
        pub fn new() -> Arc<Gate> {
            Arc::new(Gate {
                calls: Mutex::new(Vec::new()),
                answer: Mutex::new(None),
                cond: std::sync::Condvar::new(),
            })
        }

        pub fn lookup(self: &Arc<Gate>) -> Lookup {
            let gate = Arc::clone(self);
            Arc::new(move |host: &str, _port: u16| {
                gate.calls.lock().unwrap().push(host.to_string());
                let mut a = gate.answer.lock().unwrap();
                while a.is_none() {
                    a = gate.cond.wait(a).unwrap();
                }
                a.clone().unwrap()
            })
        }

        pub fn release(&self, answer: Answer) {
            *self.answer.lock().unwrap() = Some(answer);
            self.cond.notify_all();
        }
    }

    /// Polls until the waker fires (or 10 s pass); true if it fired.
    pub fn woken(poll: &mut Poll, token: Token) -> bool {
        let mut events = Events::with_capacity(8);
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            poll.poll(&mut events, Some(Duration::from_millis(100)))
                .unwrap();
            if events.iter().any(|e| e.token() == token) {
                return true;
            }
        }
        false
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A resolver whose lookups wait for the gate, waking Token(9) of the poll.
    fn gated() -> (Poll, Arc<Gate>, Resolver) {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(9)).unwrap();
        let gate = Gate::new();
        let r = Resolver::new(gate.lookup(), waker);
        (poll, gate, r)
    }

    #[test]
    fn literal_addresses_need_no_lookup() {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(9)).unwrap();
        let never: Lookup = Arc::new(|h: &str, _| panic!("looked up {h}"));
        let mut r = Resolver::new(never, waker);
        for (host, want) in [
            ("127.0.0.1", "127.0.0.1:24224"),
            ("::1", "[::1]:24224"),
            ("fd00::5", "[fd00::5]:24224"),
        ] {
            let t = r.ask(host, 24224);
            assert_eq!(r.answer(t), Some(Ok(vec![addr(want)])), "{host}");
        }
        assert!(r.worker.is_none(), "a thread was started for literals");
    }

    #[test]
    fn a_blocked_lookup_does_not_block_the_caller_and_wakes_it_when_done() {
        let (mut poll, gate, mut r) = gated();
        let t = r.ask("receiver.example", 24224);
        assert_eq!(r.answer(t), None);
        // Asking again while the lookup hangs joins it instead of queueing a second one.
        assert_eq!(r.ask("receiver.example", 24224), t);
        let want = vec![addr("10.0.0.1:24224"), addr("10.0.0.2:24224")];
        gate.release(Ok(want.clone()));
        assert!(woken(&mut poll, Token(9)), "the waker never fired");
        assert_eq!(r.answer(t), Some(Ok(want)));
        assert_eq!(gate.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_late_answer_serves_the_next_ask_for_the_same_name() {
        let (mut poll, gate, mut r) = gated();
        let first = r.ask("slow.example", 1);
        // The caller gives up (deadline) and asks for a literal meanwhile.
        let lit = r.ask("10.1.1.1", 1);
        assert_eq!(r.answer(lit), Some(Ok(vec![addr("10.1.1.1:1")])));
        gate.release(Err("resolve slow.example: timeout".into()));
        assert!(woken(&mut poll, Token(9)));
        let again = r.ask("slow.example", 1);
        assert_eq!(again, first);
        assert_eq!(
            r.answer(again),
            Some(Err("resolve slow.example: timeout".into()))
        );
        assert_eq!(gate.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn system_lookup_reads_the_hosts_file() {
        // /etc/hosts only: no test depends on a nameserver.
        let got = system_lookup("localhost", 24224).unwrap();
        assert!(
            got.iter()
                .all(|a| a.ip().is_loopback() && a.port() == 24224),
            "{got:?}"
        );
    }
}
