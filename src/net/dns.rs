//! Name resolution without the C library. A static glibc `getaddrinfo` goes through NSS, which
//! dlopens `libnss_*.so` and reads `/etc/nsswitch.conf`: neither exists in a scratch image, where
//! the only files are the two Kubernetes mounts into every container, `/etc/hosts` and
//! `/etc/resolv.conf`. This module owns reading those two files and asking the nameservers they
//! name, the way glibc does with `hosts: files dns`:
//!
//! 1. `/etc/hosts` first, for the name as given;
//! 2. then DNS, trying the name with each search domain (before or after the name alone,
//!    depending on `ndots`), asking for A and AAAA records of each candidate at once;
//! 3. the first candidate with any address wins; NXDOMAIN and "no records" move to the next.
//!
//! Everything but [`lookup`] and [`Query::exchange`] is sans-IO (text in, values out; bytes
//! in, bytes out) and table-tested. The driver blocks (UDP with a timeout per try, TCP when an
//! answer is truncated); it runs on the resolver thread of `resolve`, never on the event loop.
//!
//! IPv4 addresses come before IPv6 ones. glibc sorts by RFC 6724, which puts IPv6 first only
//! when the host has a global IPv6 source address; cluster Services are IPv4 in most clusters
//! (single-stack or dual-stack with IPv4 primary), and the connection tries the addresses in
//! order, so IPv4 first reaches the tailer on the first try where the two orders differ.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

pub const HOSTS: &str = "/etc/hosts";
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// glibc's MAXNS: further `nameserver` lines are ignored.
const MAX_NAMESERVERS: usize = 3;
/// Largest UDP answer we accept (EDNS is not offered, so a server sends at most 512 bytes; a
/// bigger buffer only guards against servers that ignore that).
const UDP_MAX: usize = 4096;
/// A CNAME chain longer than this is a loop or an attack.
const MAX_CNAME_HOPS: usize = 16;

/// What `/etc/resolv.conf` says, with glibc's defaults and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: usize,
}

impl Default for ResolvConf {
    fn default() -> ResolvConf {
        ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Parses resolv.conf(5): `nameserver`, `search`/`domain` (the last one wins, as in glibc) and
/// `options ndots:N timeout:N attempts:N` (capped at glibc's 15, 30 and 5). Unknown lines and
/// options are ignored, as the C library does.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // An IPv6 link-local server may carry a zone (`fe80::1%eth0`); std cannot
                // parse it, and a pod's resolv.conf never has one.
                let ip = words.next().and_then(|w| w.parse::<IpAddr>().ok());
                if let (Some(ip), true) = (ip, conf.nameservers.len() < MAX_NAMESERVERS) {
                    conf.nameservers.push(SocketAddr::new(ip, 53));
                }
            }
            Some("search") => conf.search = words.map(absolute_name).collect(),
            Some("domain") => conf.search = words.next().map(absolute_name).into_iter().collect(),
            Some("options") => {
                for opt in words {
                    let Some((k, v)) = opt.split_once(':') else {
                        continue;
                    };
                    let Ok(n) = v.parse::<usize>() else { continue };
                    match k {
                        "ndots" => conf.ndots = n.min(15),
                        "timeout" => conf.timeout = Duration::from_secs(n.clamp(1, 30) as u64),
                        "attempts" => conf.attempts = n.clamp(1, 5),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    conf
}

fn absolute_name(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

/// The addresses `/etc/hosts` gives `name` (case-insensitive, trailing dot ignored), IPv4
/// first, each in file order.
pub fn hosts_lookup(text: &str, name: &str) -> Vec<IpAddr> {
    let want = absolute_name(name);
    let mut found: Vec<IpAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        if words.any(|w| absolute_name(w) == want) && !found.contains(&ip) {
            found.push(ip);
        }
    }
    found.sort_by_key(|ip| ip.is_ipv6());
    found
}

/// The names to ask the nameservers for, in glibc's order: a name with a trailing dot as is;
/// a name with at least `ndots` dots as is, then with each search domain; a shorter one with
/// each search domain first, then as is. `audittailer` in a pod (ndots:5) is first asked as
/// `audittailer.<namespace>.svc.cluster.local`.
pub fn candidates(name: &str, conf: &ResolvConf) -> Vec<String> {
    if let Some(abs) = name.strip_suffix('.') {
        return vec![abs.to_ascii_lowercase()];
    }
    let name = name.to_ascii_lowercase();
    let searched = conf
        .search
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| format!("{name}.{d}"));
    let dots = name.matches('.').count();
    if dots >= conf.ndots {
        std::iter::once(name.clone()).chain(searched).collect()
    } else {
        searched.chain(std::iter::once(name.clone())).collect()
    }
}

/// A DNS query packet (RFC 1035 4.1): recursion desired, one question `name` IN `qtype`.
pub fn build_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut p = Vec::with_capacity(18 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00]); // RD
    p.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QDCOUNT 1
    if name.len() > 253 {
        return Err(format!("name {name:?} is longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "name {name:?} has an empty label or one longer than 63 characters"
            ));
        }
        p.push(label.len() as u8);
        p.extend_from_slice(label.as_bytes());
    }
    p.push(0);
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(p)
}

/// What one answer says about one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The addresses of `qtype` at the end of the CNAME chain (may be empty: the name exists
    /// but has no record of that type).
    Addrs(Vec<IpAddr>),
    /// RCODE 3: the name does not exist.
    NxDomain,
    /// TC set: ask again over TCP.
    Truncated,
    /// Any other RCODE (SERVFAIL, REFUSED, ...): ask the next nameserver.
    Failed(u8),
}

/// Parses the answer to the question (`id`, `name`, `qtype`); an answer to something else
/// (another id, another question) or a malformed packet is an error.
pub fn parse_reply(buf: &[u8], id: u16, name: &str, qtype: u16) -> Result<Reply, String> {
    if buf.len() < 12 {
        return Err(format!(
            "answer of {} bytes is shorter than a header",
            buf.len()
        ));
    }
    if u16::from_be_bytes([buf[0], buf[1]]) != id {
        return Err("answer has another id".into());
    }
    if buf[2] & 0x80 == 0 {
        return Err("packet is a query, not an answer".into());
    }
    if buf[2] & 0x02 != 0 {
        return Ok(Reply::Truncated);
    }
    let rcode = buf[3] & 0x0f;
    let qdcount = u16::from_be_bytes([buf[4], buf[5]]);
    let ancount = u16::from_be_bytes([buf[6], buf[7]]);
    let mut at = 12;
    if qdcount != 1 {
        // RFC 1035 allows an error answer without the question; a success must echo it.
        if rcode != 0 && qdcount == 0 {
            return Ok(rcode_reply(rcode));
        }
        return Err(format!("answer has {qdcount} questions, want 1"));
    }
    let (qname, next) = read_name(buf, at)?;
    let fixed = buf
        .get(next..next + 4)
        .ok_or("answer ends inside the question")?;
    if !qname.eq_ignore_ascii_case(name) || u16::from_be_bytes([fixed[0], fixed[1]]) != qtype {
        return Err(format!("answer is for {qname:?}, not {name:?}"));
    }
    at = next + 4;
    if rcode != 0 {
        return Ok(rcode_reply(rcode));
    }
    let mut records = Vec::with_capacity(usize::from(ancount).min(64));
    for _ in 0..ancount {
        let (owner, next) = read_name(buf, at)?;
        let fixed = buf
            .get(next..next + 10)
            .ok_or("answer ends inside a record")?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let class = u16::from_be_bytes([fixed[2], fixed[3]]);
        let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let start = next + 10;
        let data = buf
            .get(start..start + len)
            .ok_or("answer ends inside record data")?;
        if class == CLASS_IN {
            records.push((owner, rtype, start, data));
        }
        at = start + len;
    }
    // Follow the chain from the question's name: resolvers put CNAMEs before the addresses,
    // but RFC 1034 does not require an order, so look the current name up again each hop.
    let mut current = name.to_ascii_lowercase();
    for _ in 0..MAX_CNAME_HOPS {
        let next = records.iter().find_map(|(owner, rtype, start, _)| {
            (*rtype == TYPE_CNAME && owner.eq_ignore_ascii_case(&current)).then_some(*start)
        });
        match next {
            Some(start) => current = read_name(buf, start)?.0.to_ascii_lowercase(),
            None => break,
        }
    }
    let mut addrs = Vec::new();
    for (owner, rtype, _, data) in &records {
        if *rtype != qtype || !owner.eq_ignore_ascii_case(&current) {
            continue;
        }
        let ip = match (qtype, data.len()) {
            (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (TYPE_AAAA, 16) => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(format!("record of type {rtype} has {} bytes", data.len())),
        };
        addrs.push(ip);
    }
    Ok(Reply::Addrs(addrs))
}

fn rcode_reply(rcode: u8) -> Reply {
    match rcode {
        3 => Reply::NxDomain,
        n => Reply::Failed(n),
    }
}

/// Reads a (possibly compressed, RFC 1035 4.1.4) name at `at`; returns it without the
/// trailing dot and the offset after it in the packet. Pointers must go backwards, so a
/// packet cannot make us loop.
fn read_name(buf: &[u8], mut at: usize) -> Result<(String, usize), String> {
    let mut name = String::new();
    let mut after = None;
    let mut limit = at;
    loop {
        let len = *buf.get(at).ok_or("answer ends inside a name")?;
        match len & 0xc0 {
            0xc0 => {
                let low = *buf.get(at + 1).ok_or("answer ends inside a name pointer")?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                if target >= limit {
                    return Err("name pointer does not point backwards".into());
                }
                after.get_or_insert(at + 2);
                limit = target;
                at = target;
            }
            0x00 if len == 0 => {
                return Ok((name, after.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = buf
                    .get(at + 1..at + 1 + usize::from(len))
                    .ok_or("answer ends inside a label")?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                if name.len() > 255 {
                    return Err("name longer than 255 bytes".into());
                }
                at += 1 + usize::from(len);
            }
            _ => return Err(format!("unknown label type {len:#04x}")),
        }
    }
}

/// The answer of one nameserver to one candidate name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Addrs(Vec<IpAddr>),
    NxDomain,
}

/// The A and AAAA questions for one candidate name, asked of one nameserver at a time.
struct Query {
    name: String,
    ids: [u16; 2],
    packets: [Vec<u8>; 2],
}

const QTYPES: [u16; 2] = [TYPE_A, TYPE_AAAA];

impl Query {
    fn new(name: &str) -> Result<Query, String> {
        let mut r = [0u8; 4];
        if crate::sys::random_bytes(&mut r).is_err() {
            // Without getrandom (never on Linux >= 3.17) the ids are only less surprising.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            r = t.to_le_bytes();
        }
        let ids = [
            u16::from_be_bytes([r[0], r[1]]),
            u16::from_be_bytes([r[2], r[3]]),
        ];
        Ok(Query {
            name: name.to_string(),
            packets: [
                build_query(ids[0], name, TYPE_A)?,
                build_query(ids[1], name, TYPE_AAAA)?,
            ],
            ids,
        })
    }

    /// Both questions over UDP to `server`, waiting `timeout` for both answers; a truncated
    /// answer is asked again over TCP. IPv4 addresses first.
    fn exchange(&self, server: SocketAddr, timeout: Duration) -> Result<Outcome, String> {
        let bind: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(bind).map_err(|e| format!("UDP socket: {e}"))?;
        // connect() makes the kernel drop datagrams from anyone but the server.
        sock.connect(server)
            .map_err(|e| format!("UDP to {server}: {e}"))?;
        for p in &self.packets {
            sock.send(p).map_err(|e| format!("send to {server}: {e}"))?;
        }
        let deadline = Instant::now() + timeout;
        let mut replies: [Option<Reply>; 2] = [None, None];
        let mut buf = vec![0u8; UDP_MAX];
        while replies.iter().any(Option::is_none) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timeout".into());
            }
            sock.set_read_timeout(Some(left))
                .map_err(|e| format!("UDP timeout: {e}"))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("timeout".into())
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP port unreachable: nothing listens on the server's port 53.
                Err(e) => return Err(format!("receive from {server}: {e}")),
            };
            for i in 0..2 {
                if replies[i].is_some() {
                    continue;
                }
                // An answer for another id (a late one to an earlier try) is skipped.
                if let Ok(r) = parse_reply(&buf[..n], self.ids[i], &self.name, QTYPES[i]) {
                    replies[i] = Some(r);
                    break;
                }
            }
        }
        let mut addrs = Vec::new();
        let mut nx = 0;
        for (i, reply) in replies.into_iter().enumerate() {
            let reply = match reply {
                Some(Reply::Truncated) => self.over_tcp(server, i, timeout)?,
                Some(r) => r,
                None => unreachable!("the loop above ends only with both answers"),
            };
            match reply {
                Reply::Addrs(a) => addrs.extend(a),
                Reply::NxDomain => nx += 1,
                Reply::Failed(rcode) => {
                    return Err(format!("{} (rcode {rcode})", rcode_name(rcode)))
                }
                Reply::Truncated => return Err("truncated answer over TCP".into()),
            }
        }
        if addrs.is_empty() && nx > 0 {
            return Ok(Outcome::NxDomain);
        }
        Ok(Outcome::Addrs(addrs))
    }

    /// RFC 1035 4.2.2: the same question with a two-byte length in front.
    fn over_tcp(&self, server: SocketAddr, i: usize, timeout: Duration) -> Result<Reply, String> {
        let fail = |e: io::Error| format!("TCP to {server} after a truncated answer: {e}");
        let mut s = TcpStream::connect_timeout(&server, timeout).map_err(fail)?;
        s.set_read_timeout(Some(timeout)).map_err(fail)?;
        s.set_write_timeout(Some(timeout)).map_err(fail)?;
        let p = &self.packets[i];
        let mut msg = (p.len() as u16).to_be_bytes().to_vec();
        msg.extend_from_slice(p);
        s.write_all(&msg).map_err(fail)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(fail)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).map_err(fail)?;
        parse_reply(&buf, self.ids[i], &self.name, QTYPES[i])
    }
}

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "error",
    }
}

/// Resolves `host` from the contents of the hosts file and a parsed resolv.conf (tests pass
/// their own; [`lookup`] reads the files). Errors name the host and what failed.
pub fn resolve(host: &str, hosts: &str, conf: Option<&ResolvConf>) -> Result<Vec<IpAddr>, String> {
    let found = hosts_lookup(hosts, host);
    if !found.is_empty() {
        return Ok(found);
    }
    let conf =
        conf.ok_or_else(|| format!("resolve {host}: not in {HOSTS}, and no {RESOLV_CONF}"))?;
    if conf.nameservers.is_empty() {
        return Err(format!(
            "resolve {host}: not in {HOSTS}, and no nameserver in {RESOLV_CONF}"
        ));
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut last_error = None;
    for name in candidates(host, conf) {
        let query = Query::new(&name).map_err(|e| format!("resolve {host}: {e}"))?;
        match ask_servers(&query, conf) {
            Ok(Outcome::Addrs(a)) if !a.is_empty() => {
                for ip in a {
                    if ip.is_ipv4() {
                        v4.push(ip)
                    } else {
                        v6.push(ip)
                    }
                }
                v4.extend(v6);
                return Ok(v4);
            }
            // NXDOMAIN or no address records: glibc goes on with the next search domain.
            Ok(_) => {}
            Err(e) => {
                let e = if name == host {
                    e
                } else {
                    format!("{name}: {e}")
                };
                // Nameservers that do not answer for one name will not for the next: stop
                // instead of waiting out every search domain.
                if e.contains("timeout after") {
                    return Err(format!("resolve {host}: {e}"));
                }
                last_error = Some(e);
            }
        }
    }
    let tried = candidates(host, conf).join(", ");
    Err(match last_error {
        Some(e) => format!("resolve {host}: {e}"),
        None => format!("resolve {host}: NXDOMAIN or no address (asked {tried})"),
    })
}

/// glibc's loop: `attempts` rounds over the nameservers, each try waiting `timeout`.
fn ask_servers(query: &Query, conf: &ResolvConf) -> Result<Outcome, String> {
    let mut errors: Vec<String> = Vec::new();
    let mut timeouts = 0;
    for _ in 0..conf.attempts {
        for &server in &conf.nameservers {
            match query.exchange(server, conf.timeout) {
                Ok(o) => return Ok(o),
                Err(e) if e == "timeout" => timeouts += 1,
                Err(e) => errors.push(format!("{e} from {server}")),
            }
        }
    }
    if let Some(e) = errors.pop() {
        return Err(e);
    }
    let servers: Vec<String> = conf.nameservers.iter().map(|s| s.to_string()).collect();
    Err(format!(
        "timeout after {timeouts} attempts to {} ({}s each)",
        servers.join(", "),
        conf.timeout.as_secs()
    ))
}

/// Reads `/etc/hosts` and `/etc/resolv.conf` and resolves `host`; a missing hosts file is an
/// empty one (glibc's behaviour), a missing resolv.conf only matters when hosts has no answer.
pub fn lookup(host: &str) -> Result<Vec<IpAddr>, String> {
    let hosts = std::fs::read_to_string(HOSTS).unwrap_or_default();
    let conf = std::fs::read_to_string(RESOLV_CONF)
        .ok()
        .map(|t| parse_resolv_conf(&t));
    resolve(host, &hosts, conf.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::thread;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolv_conf_table() {
        let pod = "search kube-system.svc.cluster.local svc.cluster.local cluster.local\n\
                   nameserver 10.96.0.10\noptions ndots:5\n";
        let cases: &[(&str, ResolvConf)] = &[
            ("", ResolvConf::default()),
            (
                pod,
                ResolvConf {
                    nameservers: vec!["10.96.0.10:53".parse().unwrap()],
                    search: vec![
                        "kube-system.svc.cluster.local".into(),
                        "svc.cluster.local".into(),
                        "cluster.local".into(),
                    ],
                    ndots: 5,
                    ..ResolvConf::default()
                },
            ),
            (
                // More than three servers, comments, v6, a bad address, options capped.
                "# c\nnameserver 1.1.1.1 # x\nnameserver bogus\nnameserver ::1\n\
                 nameserver 2.2.2.2\nnameserver 3.3.3.3\n\
                 options rotate ndots:20 timeout:0 attempts:9 edns0\n",
                ResolvConf {
                    nameservers: vec![
                        "1.1.1.1:53".parse().unwrap(),
                        "[::1]:53".parse().unwrap(),
                        "2.2.2.2:53".parse().unwrap(),
                    ],
                    ndots: 15,
                    timeout: Duration::from_secs(1),
                    attempts: 5,
                    ..ResolvConf::default()
                },
            ),
            (
                // The last of search/domain wins; trailing dots and case do not matter.
                "search a.example b.example\ndomain Corp.Example.\noptions timeout:2 attempts:3\n",
                ResolvConf {
                    search: vec!["corp.example".into()],
                    timeout: Duration::from_secs(2),
                    attempts: 3,
                    ..ResolvConf::default()
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(&parse_resolv_conf(text), want, "{text:?}");
        }
    }

    #[test]
    fn hosts_table() {
        let hosts = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost # v6\n\
                     # 10.0.0.1 audittailer.test\n10.0.0.2 AuditTailer.Test other\n\
                     10.0.0.3 audittailer.test\nbogus line\n10.0.0.2 audittailer.test\n";
        let cases: &[(&str, &[&str])] = &[
            ("localhost", &["127.0.0.1", "::1"]),
            ("LOCALHOST.", &["127.0.0.1", "::1"]),
            ("ip6-localhost", &["::1"]),
            ("audittailer.test", &["10.0.0.2", "10.0.0.3"]),
            ("other", &["10.0.0.2"]),
            ("line", &[]),
            ("missing", &[]),
        ];
        for (name, want) in cases {
            let want: Vec<IpAddr> = want.iter().map(|s| ip(s)).collect();
            assert_eq!(hosts_lookup(hosts, name), want, "{name}");
        }
    }

    #[test]
    fn candidates_table() {
        let pod =
            parse_resolv_conf("search ns.svc.cluster.local svc.cluster.local\noptions ndots:5");
        let one = parse_resolv_conf("search corp.example");
        let cases: &[(&str, &ResolvConf, &[&str])] = &[
            (
                "audittailer",
                &pod,
                &[
                    "audittailer.ns.svc.cluster.local",
                    "audittailer.svc.cluster.local",
                    "audittailer",
                ],
            ),
            (
                "tailer.garden.svc",
                &pod,
                &[
                    "tailer.garden.svc.ns.svc.cluster.local",
                    "tailer.garden.svc.svc.cluster.local",
                    "tailer.garden.svc",
                ],
            ),
            (
                "a.b.c.d.e.f",
                &pod,
                &[
                    "a.b.c.d.e.f",
                    "a.b.c.d.e.f.ns.svc.cluster.local",
                    "a.b.c.d.e.f.svc.cluster.local",
                ],
            ),
            ("Tailer.Example.", &pod, &["tailer.example"]),
            ("host", &one, &["host.corp.example", "host"]),
            (
                "host.example",
                &one,
                &["host.example", "host.example.corp.example"],
            ),
        ];
        for (name, conf, want) in cases {
            assert_eq!(candidates(name, conf), *want, "{name}");
        }
    }

    #[test]
    fn query_packet() {
        let q = build_query(0xbeef, "ab.c", TYPE_AAAA).unwrap();
        assert_eq!(
            q,
            [
                0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'a', b'b', 1, b'c', 0, 0, 28,
                0, 1
            ]
        );
        for bad in ["", "a..b", ".a", &"x".repeat(64), &["abc"; 70].join(".")] {
            assert!(build_query(1, bad, TYPE_A).is_err(), "{bad:?}");
        }
    }

    /// An answer packet builder for the parser tests (and the fake server).
    struct Answer {
        p: Vec<u8>,
    }

    impl Answer {
        /// Header with `flags`, the question as built by `build_query`, `an` answers to come.
        fn new(id: u16, flags: u16, name: &str, qtype: u16, an: u16) -> Answer {
            let q = build_query(id, name, qtype).unwrap();
            let mut p = q.clone();
            p[2..4].copy_from_slice(&flags.to_be_bytes());
            p[6..8].copy_from_slice(&an.to_be_bytes());
            Answer { p }
        }

        /// A record whose owner is `owner` (raw name bytes, maybe a pointer).
        fn record(mut self, owner: &[u8], rtype: u16, data: &[u8]) -> Answer {
            self.p.extend_from_slice(owner);
            self.p.extend_from_slice(&rtype.to_be_bytes());
            self.p.extend_from_slice(&CLASS_IN.to_be_bytes());
            self.p.extend_from_slice(&[0, 0, 0, 30]);
            self.p.extend_from_slice(&(data.len() as u16).to_be_bytes());
            self.p.extend_from_slice(data);
            self
        }
    }

    /// The question's name starts at offset 12: a pointer to it is 0xc0 0x0c.
    const QNAME: &[u8] = &[0xc0, 12];

    fn wire(name: &str) -> Vec<u8> {
        let mut q = build_query(0, name, 1).unwrap();
        q.drain(..12);
        q.truncate(q.len() - 4);
        q
    }

    #[test]
    fn reply_table() {
        const OK: u16 = 0x8180;
        let name = "tailer.ns.svc";
        // tailer.ns.svc CNAME real.ns.svc (with "ns.svc" compressed to the question's tail),
        // then real.ns.svc A 10.0.0.7 (owner pointing at the CNAME's data).
        let cname_start = 12 + wire(name).len() + 4 + 2 + 10;
        let mut cname_data = vec![4];
        cname_data.extend_from_slice(b"real");
        cname_data.extend_from_slice(&[0xc0, 12 + 7]);
        let chain = Answer::new(7, OK, name, TYPE_A, 2)
            .record(QNAME, TYPE_CNAME, &cname_data)
            .record(&[0xc0, cname_start as u8], TYPE_A, &[10, 0, 0, 7]);
        // The same records in the other order.
        let a_first = {
            let mut a = Answer::new(7, OK, name, TYPE_A, 2);
            let a_owner_at = a.p.len();
            a = a.record(&wire("real.ns.svc"), TYPE_A, &[10, 0, 0, 8]);
            a.record(QNAME, TYPE_CNAME, &[0xc0, a_owner_at as u8])
        };
        let v6 = Answer::new(9, OK, name, TYPE_AAAA, 2)
            .record(
                QNAME,
                TYPE_AAAA,
                &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            )
            .record(
                QNAME,
                TYPE_AAAA,
                &[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            );
        let two = Answer::new(7, OK, name, TYPE_A, 3)
            .record(QNAME, TYPE_A, &[10, 0, 0, 1])
            .record(&wire("other.example"), TYPE_A, &[10, 9, 9, 9])
            .record(QNAME, TYPE_A, &[10, 0, 0, 2]);
        let mut loop_ptr = Answer::new(7, OK, name, TYPE_A, 1).p;
        let at = loop_ptr.len();
        loop_ptr.extend_from_slice(&[0xc0, at as u8]);
        let mut short = Answer::new(7, OK, name, TYPE_A, 1)
            .record(QNAME, TYPE_A, &[10, 0, 0, 1])
            .p;
        short.pop();
        let mut no_question = Answer::new(7, 0x8183, name, TYPE_A, 0).p;
        no_question[5] = 0;
        no_question.truncate(12);
        type Case = (&'static str, Vec<u8>, u16, u16, Result<Reply, ()>);
        let cases: Vec<Case> = vec![
            (
                "cname chain",
                chain.p,
                7,
                TYPE_A,
                Ok(Reply::Addrs(vec![ip("10.0.0.7")])),
            ),
            (
                "cname after address",
                a_first.p,
                7,
                TYPE_A,
                Ok(Reply::Addrs(vec![ip("10.0.0.8")])),
            ),
            (
                "aaaa",
                v6.p,
                9,
                TYPE_AAAA,
                Ok(Reply::Addrs(vec![ip("fd00::1"), ip("fd00::2")])),
            ),
            (
                "other owners skipped",
                two.p,
                7,
                TYPE_A,
                Ok(Reply::Addrs(vec![ip("10.0.0.1"), ip("10.0.0.2")])),
            ),
            (
                "no data",
                Answer::new(7, OK, name, TYPE_A, 0).p,
                7,
                TYPE_A,
                Ok(Reply::Addrs(vec![])),
            ),
            (
                "nxdomain",
                Answer::new(7, 0x8183, name, TYPE_A, 0).p,
                7,
                TYPE_A,
                Ok(Reply::NxDomain),
            ),
            (
                "nxdomain without question",
                no_question,
                7,
                TYPE_A,
                Ok(Reply::NxDomain),
            ),
            (
                "servfail",
                Answer::new(7, 0x8182, name, TYPE_A, 0).p,
                7,
                TYPE_A,
                Ok(Reply::Failed(2)),
            ),
            (
                "truncated",
                Answer::new(7, 0x8380, name, TYPE_A, 0).p,
                7,
                TYPE_A,
                Ok(Reply::Truncated),
            ),
            (
                "wrong id",
                Answer::new(8, OK, name, TYPE_A, 0).p,
                7,
                TYPE_A,
                Err(()),
            ),
            (
                "wrong type",
                Answer::new(7, OK, name, TYPE_AAAA, 0).p,
                7,
                TYPE_A,
                Err(()),
            ),
            (
                "wrong name",
                Answer::new(7, OK, "x.ns.svc", TYPE_A, 0).p,
                7,
                TYPE_A,
                Err(()),
            ),
            (
                "a query",
                Answer::new(7, 0x0100, name, TYPE_A, 0).p,
                7,
                TYPE_A,
                Err(()),
            ),
            ("pointer loop", loop_ptr, 7, TYPE_A, Err(())),
            ("cut record", short, 7, TYPE_A, Err(())),
            ("header only", vec![0, 7, 0x81, 0x80], 7, TYPE_A, Err(())),
        ];
        for (what, packet, id, qtype, want) in cases {
            let got = parse_reply(&packet, id, name, qtype).map_err(|_| ());
            assert_eq!(got, want, "{what}");
        }
    }

    /// A UDP DNS server in the test: answers each question with `answer(name, qtype)` until
    /// `n` questions were answered; returns its address.
    fn fake_server(
        n: usize,
        answer: impl Fn(&str, u16) -> (u16, Vec<[u8; 4]>) + Send + 'static,
    ) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 512];
            for _ in 0..n {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    return;
                };
                let q = &buf[..len];
                let id = u16::from_be_bytes([q[0], q[1]]);
                let (name, end) = read_name(q, 12).unwrap();
                let qtype = u16::from_be_bytes([q[end], q[end + 1]]);
                let (flags, ips) = answer(&name, qtype);
                let mut a = Answer::new(id, flags, &name, qtype, ips.len() as u16);
                for ip in &ips {
                    a = a.record(QNAME, TYPE_A, ip);
                }
                sock.send_to(&a.p, from).unwrap();
            }
        });
        addr
    }

    #[test]
    fn resolve_walks_hosts_then_search_list() {
        // NXDOMAIN for the first search domain, no data for the second, addresses for the name
        // itself: every candidate is asked in order, A and AAAA each.
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = asked.clone();
        let server = fake_server(6, move |name, qtype| {
            log.lock().unwrap().push(format!("{name}/{qtype}"));
            match (name, qtype) {
                ("tailer.ns.svc.cluster.local", _) => (0x8183, vec![]),
                ("tailer", TYPE_A) => (0x8180, vec![[10, 0, 0, 5]]),
                _ => (0x8180, vec![]),
            }
        });
        let conf = ResolvConf {
            nameservers: vec![server],
            search: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            ndots: 5,
            timeout: Duration::from_secs(5),
            attempts: 1,
        };
        let got = resolve("tailer", "127.0.0.1 localhost\n", Some(&conf)).unwrap();
        assert_eq!(got, vec![ip("10.0.0.5")]);
        let mut asked = asked.lock().unwrap().clone();
        asked.sort();
        assert_eq!(
            asked,
            [
                "tailer.ns.svc.cluster.local/1",
                "tailer.ns.svc.cluster.local/28",
                "tailer.svc.cluster.local/1",
                "tailer.svc.cluster.local/28",
                "tailer/1",
                "tailer/28"
            ]
        );
        // /etc/hosts answers without a nameserver.
        let got = resolve("localhost", "127.0.0.1 localhost\n", None).unwrap();
        assert_eq!(got, vec![ip("127.0.0.1")]);
    }

    #[test]
    fn resolve_errors_name_host_and_cause() {
        let none = ResolvConf::default();
        let err = resolve("tailer", "", Some(&none)).unwrap_err();
        assert_eq!(
            err,
            "resolve tailer: not in /etc/hosts, and no nameserver in /etc/resolv.conf"
        );
        let err = resolve("tailer", "", None).unwrap_err();
        assert!(err.contains("no /etc/resolv.conf"), "{err}");

        let nx = fake_server(4, |_, _| (0x8183, vec![]));
        let conf = ResolvConf {
            nameservers: vec![nx],
            search: vec!["corp".into()],
            attempts: 1,
            ..ResolvConf::default()
        };
        let err = resolve("tailer", "", Some(&conf)).unwrap_err();
        assert_eq!(
            err,
            "resolve tailer: NXDOMAIN or no address (asked tailer.corp, tailer)"
        );

        // A server that never answers: two attempts, a one-second timeout each.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let conf = ResolvConf {
            nameservers: vec![silent.local_addr().unwrap()],
            timeout: Duration::from_secs(1),
            attempts: 2,
            ..ResolvConf::default()
        };
        let err = resolve("tailer.example", "", Some(&conf)).unwrap_err();
        let want = format!(
            "resolve tailer.example: timeout after 2 attempts to {} (1s each)",
            silent.local_addr().unwrap()
        );
        assert_eq!(err, want);
    }
}
