//! `audit-forwarder tailer --metrics-address`: the tailer seen from outside. Owns the counters the
//! tailer's loop keeps ([`Counters`]), the reasons a client is refused or dropped (small fixed
//! label sets, every value always listed, so a rate is never computed across a missing series),
//! and the rendering of a [`Snapshot`] into the Prometheus text format and the `/readyz` verdict.
//! Serving them is [`super::Server`]'s job, the same as for the forwarder.

use super::{label, one_line, Answers, Exposition};

/// An enum of reasons with its label values, in the order they are listed.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}

reasons! {
    /// Why a client's data was refused (and the client dropped) after its handshake.
    Decode {
        /// Bytes that are not msgpack, or nested deeper than the decoder allows.
        Msgpack = "msgpack",
        /// Well-formed msgpack that is not a Forward message.
        Protocol = "protocol",
        /// The gzip stream of a CompressedPackedForward message is corrupt.
        Gzip = "gzip",
        /// A message, its inflated entries or one record's JSON line over its cap.
        Oversized = "oversized",
        /// The message needs more buffer than `--mem-budget` has left.
        MemoryBudget = "memory_budget",
        /// The client closed the connection inside a message.
        Truncated = "truncated",
    }
}

reasons! {
    /// Why a client did not get through the TLS or shared-key handshake.
    Handshake {
        /// Its PING carried a wrong shared-key digest.
        SharedKey = "shared_key",
        /// Its PING was not a PING (or not msgpack, or too large).
        BadPing = "bad_ping",
        /// TLS failed: no common version, an untrusted or missing client certificate, an
        /// alert from the client.
        Tls = "tls",
        /// The handshakes were not over within `--client-timeout` (no TLS, no PING).
        Timeout = "timeout",
        /// The client closed with part of its PING sent.
        Closed = "closed",
    }
}

reasons! {
    /// Why a client's connection ended; every accepted client ends with exactly one.
    Closed {
        /// The client closed it (after its acks were delivered).
        Peer = "peer",
        /// Nothing in progress for `--idle-timeout`.
        Idle = "idle_timeout",
        /// A handshake, a message or reading acks took longer than `--client-timeout`.
        Timeout = "client_timeout",
        /// We dropped it: a decode error, a failed handshake, unread acks.
        Rejected = "rejected",
        /// The socket failed (reset, write error).
        IoError = "io_error",
    }
}

/// What the tailer's loop counts; all of it only grows.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Records printed (or, with `--discard`, counted).
    pub records: u64,
    /// Forward messages decoded and delivered.
    pub messages: u64,
    /// msgpack bytes of those messages.
    pub bytes: u64,
    /// Acks queued to clients, each after its chunk's records reached stdout.
    pub acks: u64,
    /// Connections taken into the client table.
    pub clients_accepted: u64,
    /// Connections closed at once because `--max-clients` were connected.
    pub clients_refused: u64,
    decode_errors: [u64; Decode::ALL.len()],
    handshake_failures: [u64; Handshake::ALL.len()],
    closed: [u64; Closed::ALL.len()],
}

impl Counters {
    pub fn decode_error(&mut self, why: Decode) {
        self.decode_errors[why as usize] += 1;
    }

    pub fn handshake_failure(&mut self, why: Handshake) {
        self.handshake_failures[why as usize] += 1;
    }

    pub fn closed(&mut self, why: Closed) {
        self.closed[why as usize] += 1;
    }
}

/// The tailer's figures at one moment, taken when a scrape or probe is answered.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub counters: Counters,
    pub clients_connected: u64,
    pub max_clients: u64,
    /// Capacity of all clients' input buffers, counted against `--mem-budget`.
    pub mem_used: u64,
    pub mem_budget: u64,
    /// The free budget a new client's first read needs.
    pub mem_min_free: u64,
    /// Why `accept` fails, while it does (EMFILE and the like).
    pub accept_failing: Option<String>,
}

/// `/readyz`: ready while a new client would be served; otherwise the one reason why not.
pub fn readiness(s: &Snapshot) -> Result<(), String> {
    if let Some(e) = &s.accept_failing {
        return Err(one_line(&format!(
            "cannot accept connections: {e} (retrying)"
        )));
    }
    if s.clients_connected >= s.max_clients {
        return Err(format!(
            "{} clients connected, as many as --max-clients allows: new connections are refused",
            s.clients_connected
        ));
    }
    if s.mem_budget.saturating_sub(s.mem_used) < s.mem_min_free {
        return Err(format!(
            "memory budget used up: client buffers hold {} of --mem-budget {} bytes",
            s.mem_used, s.mem_budget
        ));
    }
    Ok(())
}

/// The Prometheus text exposition format (version 0.0.4) of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let c = &s.counters;
    let mut out = Exposition::new("audit_tailer_");
    out.family(
        "build_info",
        "gauge",
        "Always 1; the version is a label.",
        &[(
            format!("{{version=\"{}\"}}", label(env!("CARGO_PKG_VERSION"))),
            1,
        )],
    );
    out.one(
        "records_received_total",
        "counter",
        "Records printed on stdout (with --discard: counted).",
        c.records,
    );
    out.one(
        "messages_received_total",
        "counter",
        "Forward messages decoded and delivered.",
        c.messages,
    );
    out.one(
        "bytes_received_total",
        "counter",
        "msgpack bytes of the Forward messages delivered.",
        c.bytes,
    );
    out.one(
        "acks_sent_total",
        "counter",
        "Acks queued to clients, each after its chunk's records reached stdout.",
        c.acks,
    );
    out.one(
        "clients_connected",
        "gauge",
        "Client connections open now.",
        s.clients_connected,
    );
    out.one(
        "clients_max",
        "gauge",
        "--max-clients: the bound of clients_connected.",
        s.max_clients,
    );
    out.one(
        "clients_accepted_total",
        "counter",
        "Client connections accepted.",
        c.clients_accepted,
    );
    out.one(
        "clients_refused_total",
        "counter",
        "Connections closed when accepted because --max-clients were connected.",
        c.clients_refused,
    );
    out.reasons(
        "clients_closed_total",
        "Client connections ended, by reason.",
        Closed::ALL
            .iter()
            .map(|r| (r.label(), c.closed[*r as usize])),
    );
    out.reasons(
        "decode_errors_total",
        "Clients dropped for what they sent after the handshake, by reason.",
        Decode::ALL
            .iter()
            .map(|r| (r.label(), c.decode_errors[*r as usize])),
    );
    out.reasons(
        "handshake_failures_total",
        "Clients that failed the TLS or shared-key handshake, by reason.",
        Handshake::ALL
            .iter()
            .map(|r| (r.label(), c.handshake_failures[*r as usize])),
    );
    out.one(
        "mem_used_bytes",
        "gauge",
        "Bytes of client input buffers, counted against --mem-budget.",
        s.mem_used,
    );
    out.one(
        "mem_budget_bytes",
        "gauge",
        "--mem-budget: the bound of mem_used_bytes.",
        s.mem_budget,
    );
    out.one(
        "ready",
        "gauge",
        "1 when /readyz answers 200, else 0.",
        u64::from(readiness(s).is_ok()),
    );
    out.finish()
}

impl Answers for Snapshot {
    fn render(&self) -> String {
        render(self)
    }

    fn readiness(&self) -> Result<(), String> {
        readiness(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Snapshot {
        Snapshot {
            max_clients: 256,
            mem_budget: 200_000_000,
            mem_min_free: 65_536,
            ..Snapshot::default()
        }
    }

    #[test]
    fn tailer_metrics_readiness_table() {
        type Edit = fn(&mut Snapshot);
        let cases: &[(Edit, Result<(), &str>)] = &[
            (|_| {}, Ok(())),
            (|s| s.clients_connected = 255, Ok(())),
            (|s| s.mem_used = 200_000_000 - 65_536, Ok(())),
            (
                |s| s.clients_connected = 256,
                Err(
                    "256 clients connected, as many as --max-clients allows: new connections \
                     are refused",
                ),
            ),
            (
                |s| s.mem_used = 200_000_000 - 65_535,
                Err(
                    "memory budget used up: client buffers hold 199934465 of --mem-budget \
                     200000000 bytes",
                ),
            ),
            (
                |s| {
                    s.mem_used = 200_000_000;
                    s.accept_failing = Some("Too many open files\n(os error 24)".into());
                },
                Err("cannot accept connections: Too many open files (os error 24) (retrying)"),
            ),
        ];
        for (edit, want) in cases {
            let mut s = healthy();
            edit(&mut s);
            assert_eq!(readiness(&s), want.map_err(str::to_string), "{s:?}");
        }
    }

    #[test]
    fn tailer_metrics_render_lists_every_reason() {
        let mut s = healthy();
        s.counters.records = 12;
        s.counters.decode_error(Decode::Gzip);
        s.counters.decode_error(Decode::Gzip);
        s.counters.handshake_failure(Handshake::SharedKey);
        s.counters.closed(Closed::Idle);
        s.clients_connected = 3;
        let text = render(&s);
        for want in [
            "audit_tailer_records_received_total 12\n",
            "audit_tailer_clients_connected 3\n",
            "audit_tailer_mem_budget_bytes 200000000\n",
            "audit_tailer_decode_errors_total{reason=\"gzip\"} 2\n",
            "audit_tailer_decode_errors_total{reason=\"msgpack\"} 0\n",
            "audit_tailer_handshake_failures_total{reason=\"shared_key\"} 1\n",
            "audit_tailer_clients_closed_total{reason=\"idle_timeout\"} 1\n",
            "audit_tailer_ready 1\n",
            "# TYPE audit_tailer_acks_sent_total counter\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let families: [(&str, &[&str]); 3] = [
            (
                "decode_errors_total",
                &Decode::ALL.iter().map(|r| r.label()).collect::<Vec<_>>(),
            ),
            (
                "handshake_failures_total",
                &Handshake::ALL.iter().map(|r| r.label()).collect::<Vec<_>>(),
            ),
            (
                "clients_closed_total",
                &Closed::ALL.iter().map(|r| r.label()).collect::<Vec<_>>(),
            ),
        ];
        for (family, labels) in families {
            let listed: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("audit_tailer_{family}{{reason=\"")))
                .filter_map(|rest| rest.split('"').next())
                .collect();
            assert_eq!(listed, labels, "{family}");
        }
        super::super::assert_well_formed(&text);
    }
}
