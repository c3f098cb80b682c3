//! Command-line and environment parsing: turns argv (without argv[0]) and an environment lookup
//! into a validated [`Command`]. Pure: it reads neither the process environment nor the file
//! system, so `main` passes `std::env::var_os` in and tests pass a table.
//!
//! Every flag `--some-flag` can also come from the environment variable `AUDIT_SOME_FLAG`; the
//! command line wins. Errors are one line that starts with the flag or the variable the bad
//! value came from, so an operator knows which of the two to fix.

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

/// Help of the forwarding mode (the default command).
pub const HELP: &str = "\
audit-forwarder: follows a kube-apiserver audit log (across rotations) and delivers every line,
at least once and in order, as a Fluent Forward record to a fluentd or fluent-bit in_forward.

USAGE:
    audit-forwarder [--target HOST:PORT] [OPTIONS]
    audit-forwarder tailer --listen ADDR [OPTIONS]   (see: audit-forwarder tailer --help)

Without --target the in_forward is the tailer's Service, found through the Kubernetes API, and
the client certificate comes from a Secret (see KUBERNETES).

Every setting can be given in three places besides its default: as a flag, as the environment
variable shown in brackets, and in the --config file under the flag's long name. The first of
these that is set wins: command line, then environment, then config file, then the default.

OPTIONS:
    -c, --config FILE             default: none (not read from the environment)
        A YAML file of flat settings, keys named like the long flags, for example
            audit-log-path: /var/log/kube/audit.log
            tls-verify-hostname: false
        An unknown key is an error.
    --target HOST:PORT            [AUDIT_TARGET] default: none (discovery)
        The in_forward to deliver to. HOST is a DNS name, an IPv4 address or an IPv6 address
        in brackets ([::1]:24224); PORT is 1-65535. Without it the tailer's Service gives
        the target; with it the Service is not looked up.
    --plaintext[=BOOL]            [AUDIT_PLAINTEXT] default: false
        Deliver over plain TCP instead of TLS; the TLS settings below are then ignored.
    -l, --audit-log-path PATH     [AUDIT_AUDIT_LOG_PATH] default: /auditlog/audit.log
        The audit log file kube-apiserver writes.
    --position-file PATH          [AUDIT_POSITION_FILE]
                                  default: .audit-forwarder.pos in the audit log's directory
        Where the position of the last acknowledged line is kept across restarts.
    --read-from-head[=BOOL]       [AUDIT_READ_FROM_HEAD] default: true
        Without a position file, start at the beginning of the log (false: at its end).
    --tag TAG                     [AUDIT_TAG] default: audit
        The Fluent tag of every record; must not be empty.
    --compress none|gzip          [AUDIT_COMPRESS] default: none
        gzip sends each chunk as one CompressedPackedForward message (the entries
        gzipped, option compressed=gzip); the receiver must support that mode.
    -m, --mem-buf-limit SIZE      [AUDIT_MEM_BUF_LIMIT] default: 200M
        Memory for lines read but not yet acknowledged. Must be at least
        2 x --max-line-size + 1 MiB (a partial line and a whole record are kept besides
        the in-flight window).
    --max-line-size SIZE          [AUDIT_MAX_LINE_SIZE] default: 10M
        The longest audit line (one event) handled; greater than 0.
    --max-held-bytes SIZE         [AUDIT_MAX_HELD_BYTES] default: 1G
        Disk space of rotated files kube-apiserver already deleted that are kept open
        until their lines are delivered. Past it the oldest such file is released with an
        ERROR naming it and the bytes never delivered; greater than 0.
    --connect-timeout DURATION    [AUDIT_CONNECT_TIMEOUT] default: 10s
        How long one connection attempt may take, proxy and TLS handshakes included;
        greater than 0.
    --ack-timeout DURATION        [AUDIT_ACK_TIMEOUT] default: 60s
        How long to wait for the ack of a chunk, and for a receiver that stopped reading
        to take more bytes; greater than 0.
    -b, --backoff-timer DURATION  [AUDIT_BACKOFF_TIMER] default: 10s
        The longest wait between reconnection attempts; greater than 0.
    --shutdown-timeout DURATION   [AUDIT_SHUTDOWN_TIMEOUT] default: 10s
        On shutdown, how long to keep waiting for outstanding acks.
    --stats-interval DURATION     [AUDIT_STATS_INTERVAL] default: 60s
        How often the stats line is logged; greater than 0.
    --metrics-address HOST:PORT   [AUDIT_METRICS_ADDRESS] default: none (off)
        Serve /metrics (Prometheus text format), /healthz (the process runs) and /readyz
        (200 while connected to the receiver and acks come back, else 503 with the reason)
        over HTTP on this address, e.g. 0.0.0.0:9090; \"\" for none.
    -L, --log-level LEVEL         [AUDIT_LOG_LEVEL] default: info
        One of error, warn, info, debug, trace.
    -O, --fluent-log-level LEVEL  [AUDIT_FLUENT_LOG_LEVEL] default: info
        Accepted for deployments of the fluent-bit based original and otherwise ignored
        (logged once): one of off, error, warn, info, debug, trace.
    -h, --help                    Print this help.
    -V, --version                 Print the version.

KUBERNETES (finds the tailer and its client certificate; used without --target):
    The Service --service-name in --namespace gives the target: its clusterIP and its port,
    of which it must have exactly one. The Secret --secret-name in the same namespace holds
    the client TLS material under the keys --tls-ca-file, --tls-crt-file and --tls-key-file
    (names alone, without --tls-basedir), kept in memory. Both are read at start and again
    on --check-schedule; a change is followed.
    With --target the Service is not looked up, and the Secret is used only if its name is
    set (flag, environment or config file); otherwise the API is not used at all. An empty
    name (--secret-name \"\") means no Secret: the TLS files are read under --tls-basedir.
    With --plaintext neither is needed.
    -k, --kubecfg PATH            [AUDIT_KUBECFG] default: $HOME/.kube/config
        The kubeconfig that says where the API is and how to authenticate. Empty (also
        when HOME is unset and the flag is not given): none.
    -n, --namespace NAME          [AUDIT_NAMESPACE] default: kube-system
        The namespace of the Service and the Secret.
    -s, --service-name NAME       [AUDIT_SERVICE_NAME] default: kubernetes-audit-tailer
        The tailer's Service.
    -e, --secret-name NAME        [AUDIT_SECRET_NAME] default: audittailer-client
        The Secret with the client certificate, its key and the CA; \"\" for none.
    -S, --check-schedule CRON     [AUDIT_CHECK_SCHEDULE] default: */1 * * * *
        When to check the Service and the Secret again, in cron syntax: five fields
        (minute hour day-of-month month day-of-week) with lists, ranges, steps and names,
        a descriptor such as @hourly, or @every DURATION.

TLS (the default; ignored with --plaintext):
    -B, --tls-basedir PATH        [AUDIT_TLS_BASEDIR] default: /fluent-bit/etc/ssl
        The directory the three file names below are relative to; an absolute file name
        is used as it is. Not used with a Secret (see KUBERNETES).
    -C, --tls-ca-file FILE        [AUDIT_TLS_CA_FILE] default: ca.crt
        The CA certificates (PEM) the tailer's certificate must chain to.
    -R, --tls-crt-file FILE       [AUDIT_TLS_CRT_FILE] default: audittailer-client.crt
        The client certificate chain (PEM) presented to the tailer.
    -K, --tls-key-file FILE       [AUDIT_TLS_KEY_FILE] default: audittailer-client.key
        The private key (PEM) of the client certificate.
    -H, --tls-vhost NAME          [AUDIT_TLS_VHOST] default: kubernetes-audit-tailer
        The server name sent with SNI, which the tailer's certificate must be valid for:
        a DNS name or an IP address.
    --tls-verify-hostname[=BOOL]  [AUDIT_TLS_VERIFY_HOSTNAME] default: true
        false keeps the verification of the certificate chain against the CA file but
        skips the check that the certificate is valid for the vhost name: for old tailer
        certificates that carry their name only in the CN, without a subjectAltName.

SHARED KEY (Forward protocol handshake; none by default):
    --shared-key KEY              [AUDIT_SHARED_KEY] default: none
        The key shared with the receiver, which then authenticates this client.
    --shared-key-file PATH        [AUDIT_SHARED_KEY_FILE] default: none
        A file holding the shared key, read at startup; not together with the shared
        key itself.
    --self-hostname NAME          [AUDIT_SELF_HOSTNAME] default: this machine's hostname
        The hostname this client announces in the handshake.
    --username NAME               [AUDIT_USERNAME] default: none
    --password PASSWORD           [AUDIT_PASSWORD] default: none
        User authentication for receivers that ask for it: both or neither, and only
        with a shared key. Prefer the environment: arguments are visible to ps.

PROXY (reach the tailer through a konnectivity tunnel; direct by default):
    -u, --konnectivity-uds-socket PATH [AUDIT_KONNECTIVITY_UDS_SOCKET]
                                  default: none
        The Unix socket of a konnectivity server in HTTP CONNECT mode to tunnel through;
        not together with a proxy host.
    -p, --proxy-host HOST         [AUDIT_PROXY_HOST] default: none
        A konnectivity proxy reached over mutual TLS and asked with HTTP CONNECT: a DNS
        name, an IPv4 or an IPv6 address. The four settings below apply only with it.
    -P, --proxy-port PORT         [AUDIT_PROXY_PORT] default: 9443
        The port of the proxy, 1-65535.
    --proxy-ca-file PATH          [AUDIT_PROXY_CA_FILE] default: /proxy/ca/ca.crt
        The CA certificates (PEM) the proxy's certificate must chain to.
    --proxy-client-crt-file PATH  [AUDIT_PROXY_CLIENT_CRT_FILE]
                                  default: /proxy/client/tls.crt
        The client certificate chain (PEM) presented to the proxy.
    --proxy-client-key-file PATH  [AUDIT_PROXY_CLIENT_KEY_FILE]
                                  default: /proxy/client/tls.key
        The private key (PEM) of the proxy client certificate.

A short flag takes its value as the next argument (-l /x.log), attached (-l/x.log) or
after '=' (-l=/x.log); a long flag as the next argument or after '=' (--tag=audit).

VALUES:
    BOOL      true, false, 1 or 0, in any case. A boolean flag alone means true; a value is
              given only with '=': --read-from-head=false. In the config file:
              read-from-head: false.
    SIZE      bytes, optionally with a fraction and a suffix K, M, G, KB, MB or GB in any
              case. Decimal, like fluent-bit: K = KB = 1000, M = MB = 1000^2,
              G = GB = 1000^3; a fraction is truncated to whole bytes (1.5K = 1500).
    DURATION  Go syntax: one or more numbers, each with a unit ns, us (or µs), ms, s, m or h,
              fractions allowed: 500ms, 1m30s, 2.5s, 1h. The unit is required except for 0.
";

/// Help of the `tailer` subcommand.
pub const TAILER_HELP: &str = "\
audit-forwarder tailer: accepts Fluent Forward connections and prints each received record as
one JSON line on stdout.

USAGE:
    audit-forwarder tailer --listen ADDR [OPTIONS]

`tailer` must be the first argument. Every flag can also be set with the environment variable
shown in brackets; a flag given on the command line wins over the environment.

OPTIONS:
    --listen ADDR                 [AUDIT_LISTEN] required
        HOST:PORT to listen on: HOST is a DNS name, an IPv4 address or an IPv6 address in
        brackets ([::1]:24224); PORT 0 picks a free port.
    --discard[=BOOL]              [AUDIT_DISCARD] default: false
        Acknowledge records without printing them.
    --max-clients N               [AUDIT_MAX_CLIENTS] default: 256
        Connections served at once; a connection beyond it is closed when accepted, with
        a warning naming the peer. Greater than 0.
    --client-timeout DURATION     [AUDIT_CLIENT_TIMEOUT] default: 30s
        A client must finish its TLS and shared-key handshakes within this time of
        connecting, send each message in full within this time of its first byte, and
        read its acks; otherwise it is disconnected with a warning. Greater than 0.
    --idle-timeout DURATION       [AUDIT_IDLE_TIMEOUT] default: 10m
        A connection with no message in progress is closed after this long without
        traffic (a forwarder reconnects when it has records). Greater than 0.
    --mem-budget SIZE             [AUDIT_MEM_BUDGET] default: 200M
        Memory for the input buffers of all clients together: a client whose message
        would take more is disconnected with a warning naming it. It also caps what
        inflating one compressed message may take. At least 1M; a message is also
        never larger than 64 MiB, nor one record's JSON line.
    --metrics-address HOST:PORT   [AUDIT_METRICS_ADDRESS] default: none (off)
        Serve /metrics (Prometheus text format, audit_tailer_*), /healthz (the process
        runs) and /readyz (200 while a new client would be served, else 503 with the
        reason) over HTTP on this address, e.g. 0.0.0.0:9090; \"\" for none.
    --log-level LEVEL             [AUDIT_LOG_LEVEL] default: info
        One of error, warn, info, debug, trace.
    -h, --help                    Print this help.
    -V, --version                 Print the version.

TLS (plain TCP unless both the certificate and its key are given):
    --tls-crt-file PATH           [AUDIT_TLS_CRT_FILE] default: none
        The server certificate chain (PEM); with the key file, the tailer listens with TLS.
    --tls-key-file PATH           [AUDIT_TLS_KEY_FILE] default: none
        The private key (PEM) of the server certificate.
    --client-ca PATH              [AUDIT_CLIENT_CA] default: none
        CA certificates (PEM): every client must present a certificate that chains to
        them. Only with TLS.
    --tls-max-version 1.2|1.3     [AUDIT_TLS_MAX_VERSION] default: 1.3
        The highest TLS version offered; 1.2 limits the server to TLS 1.2, as fluentd's
        in_forward does by default. Only with TLS.

SHARED KEY (Forward protocol handshake; none by default):
    --shared-key KEY              [AUDIT_SHARED_KEY] default: none
        Clients must prove they know this key before sending records.
    --shared-key-file PATH        [AUDIT_SHARED_KEY_FILE] default: none
        A file holding the shared key, read at startup; not together with the shared
        key itself.
    --self-hostname NAME          [AUDIT_SELF_HOSTNAME] default: this machine's hostname
        The hostname this server announces in the handshake. A forwarder refuses a
        server that announces its own hostname, so on one machine set it on one side.

VALUES:
    BOOL      true, false, 1 or 0, in any case. A boolean flag alone means true; a value is
              given only with '=': --discard=false.
    SIZE      bytes, optionally with a fraction and a suffix K, M, G, KB, MB or GB in any
              case, decimal: K = KB = 1000, M = MB = 1000^2, G = GB = 1000^3.
    DURATION  Go syntax: one or more numbers, each with a unit ns, us (or µs), ms, s, m or h,
              fractions allowed: 500ms, 1m30s, 2.5s, 1h.
";

const DEFAULT_AUDIT_LOG_PATH: &str = "/auditlog/audit.log";
const POSITION_FILE_NAME: &str = ".audit-forwarder.pos";
const DEFAULT_TAG: &str = "audit";
const DEFAULT_MEM_BUF_LIMIT: u64 = 200_000_000;
/// Ten of kube-apiserver's customary 100 MB audit files.
const DEFAULT_MAX_HELD_BYTES: u64 = 1_000_000_000;
const DEFAULT_MAX_LINE_SIZE: u64 = 10_000_000;
const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MAX_CLIENTS: usize = 256;
const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_MEM_BUDGET: u64 = 200_000_000;
/// Below this the tailer could not buffer even the small messages of a single client.
const MIN_MEM_BUDGET: u64 = 1_000_000;
const MIB: u64 = 1 << 20;
// TLS and proxy defaults are those of metal-stack/audit-forwarder, so that its deployments
// (secrets mounted at these paths, the tailer's service name) work unchanged.
const DEFAULT_TLS_BASEDIR: &str = "/fluent-bit/etc/ssl";
const DEFAULT_TLS_CA_FILE: &str = "ca.crt";
const DEFAULT_TLS_CRT_FILE: &str = "audittailer-client.crt";
const DEFAULT_TLS_KEY_FILE: &str = "audittailer-client.key";
const DEFAULT_TLS_VHOST: &str = "kubernetes-audit-tailer";
const DEFAULT_PROXY_PORT: u16 = 9443;
const DEFAULT_PROXY_CA_FILE: &str = "/proxy/ca/ca.crt";
const DEFAULT_PROXY_CLIENT_CRT_FILE: &str = "/proxy/client/tls.crt";
const DEFAULT_PROXY_CLIENT_KEY_FILE: &str = "/proxy/client/tls.key";
// Kubernetes defaults of metal-stack/audit-forwarder, for the same reason.
const DEFAULT_NAMESPACE: &str = "kube-system";
const DEFAULT_SERVICE_NAME: &str = "kubernetes-audit-tailer";
const DEFAULT_SECRET_NAME: &str = "audittailer-client";
const DEFAULT_CHECK_SCHEDULE: &str = "*/1 * * * *";

/// What the process was asked to do.
/// What `--version` prints: the crate version and the commit it was built from (see build.rs;
/// "unknown (built without git)" when neither `AUDIT_FORWARDER_COMMIT` nor git was there).
pub const VERSION: &str = concat!(
    "audit-forwarder ",
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AUDIT_FORWARDER_COMMIT_ID"),
    ")"
);

// Built once at startup and moved once into the mode that runs: boxing would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Forward(ForwardArgs),
    Tailer(TailerArgs),
    /// Print this text on stdout and exit 0.
    Help(&'static str),
    /// Print [`VERSION`] and exit 0.
    Version,
}

/// Settings of the forwarding mode, validated against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardArgs {
    pub audit_log_path: PathBuf,
    pub mem_buf_limit: u64,
    pub log_level: LevelFilter,
    pub backoff_max: Duration,
    /// None: the target is the tailer's Service, found through the Kubernetes API (`kube`
    /// then says where).
    pub target: Option<Target>,
    /// Some: talk to the Kubernetes API, for the Service (without `target`), the Secret, or
    /// both. None: no API at all, as before discovery existed (`--target` and TLS files).
    pub kube: Option<KubeArgs>,
    /// Plain TCP; `tls` is then to be ignored.
    pub plaintext: bool,
    pub tls: TlsArgs,
    pub shared_key: Option<SharedKey>,
    /// None: the caller announces the machine's hostname.
    pub self_hostname: Option<String>,
    /// Only ever set together with `shared_key`.
    pub user_auth: Option<UserAuth>,
    pub compress: Compress,
    /// None: connect to the target directly.
    pub proxy: Option<Proxy>,
    pub connect_timeout: Duration,
    pub position_file: PathBuf,
    pub tag: String,
    pub read_from_head: bool,
    pub max_line_size: u64,
    /// Bytes of deleted files kept open for delivery before the oldest is given up.
    pub max_held_bytes: u64,
    pub ack_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub stats_interval: Duration,
    /// Where to serve /metrics, /healthz and /readyz; None: nowhere.
    pub metrics_address: Option<String>,
    /// Some: `--fluent-log-level` was set (valid, lowercase). Nothing uses it: it is kept
    /// only so that the caller can say once that it is ignored.
    pub fluent_log_level: Option<String>,
}

/// Where the Kubernetes API is and what to look up in it. Only built when it is used: without
/// `--target` (the Service gives the target), or with a Secret given explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeArgs {
    /// Empty: none (HOME unset and no `--kubecfg`, or `--kubecfg ""`).
    pub kubecfg: PathBuf,
    /// Of the Service and the Secret: a DNS-1123 label.
    pub namespace: String,
    /// Some (a DNS-1035 label) exactly when `target` is None.
    pub service_name: Option<String>,
    /// Some (a DNS-1123 subdomain): the client TLS material comes from this Secret's data,
    /// under the keys in `secret_keys`, instead of from the files in `tls`.
    pub secret_name: Option<String>,
    /// The cron schedule of the re-checks, as given (non-empty; parsed by the caller).
    pub check_schedule: String,
    /// `--tls-ca-file`, `--tls-crt-file` and `--tls-key-file` as given, without
    /// `--tls-basedir`: the Secret's data keys. Checked to be valid keys when `secret_name`
    /// is Some.
    pub secret_keys: SecretKeys,
}

/// The data keys of the client TLS material in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeys {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// The forwarder's TLS client settings, file names already joined to `--tls-basedir`. Nothing
/// is read here: a missing file is reported when the TLS configuration is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsArgs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SNI and the name the server certificate must be valid for: a DNS name or an IP
    /// address (IPv6 without brackets).
    pub vhost: String,
    /// false: verify the chain but not that the certificate is valid for `vhost`.
    pub verify_hostname: bool,
}

/// The Forward protocol shared key, or where to read it from.
#[derive(Clone, PartialEq, Eq)]
pub enum SharedKey {
    Value(String),
    File(PathBuf),
}

// The settings may well be logged at debug level: the secret must not be.
impl fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SharedKey::Value(_) => f.write_str("Value(<redacted>)"),
            SharedKey::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// Username and password of the Forward handshake's user authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct UserAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for UserAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How chunks are sent: PackedForward, or CompressedPackedForward with gzipped entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    None,
    Gzip,
}

/// A tunnel to the target through konnectivity: HTTP CONNECT either over a local Unix socket
/// or over a mutual-TLS connection to a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    Uds {
        socket: PathBuf,
    },
    Mtls {
        /// A DNS name or an IP address (IPv6 without brackets).
        host: String,
        port: u16,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Settings of `audit-forwarder tailer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailerArgs {
    /// HOST:PORT as given (checked by the same rules as `--target`, port 0 allowed), so the
    /// caller can hand it to the resolver unchanged.
    pub listen: String,
    pub discard: bool,
    pub log_level: LevelFilter,
    /// None: listen on plain TCP.
    pub tls: Option<TailerTls>,
    pub shared_key: Option<SharedKey>,
    pub self_hostname: Option<String>,
    pub max_clients: usize,
    pub client_timeout: Duration,
    pub idle_timeout: Duration,
    pub mem_budget: u64,
    /// Some: serve /metrics, /healthz and /readyz on this HOST:PORT.
    pub metrics_address: Option<String>,
}

/// The tailer's TLS server settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Some: require a client certificate that chains to these CAs.
    pub client_ca: Option<PathBuf>,
    /// Offer TLS 1.2 only, like fluentd's in_forward by default.
    pub max_version_12: bool,
}

/// Where to deliver. `host` is a DNS name, an IPv4 address, or an IPv6 address without its
/// brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only IPv6 hosts contain ':' (parse_target rejects it anywhere else), and they need
        // their brackets back to be read again as HOST:PORT.
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A bad command line or environment: one line that starts with the flag or environment
/// variable at fault. `main` prints it and exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

impl From<lexopt::Error> for UsageError {
    fn from(err: lexopt::Error) -> Self {
        use lexopt::Error::*;
        UsageError(match err {
            MissingValue {
                option: Some(option),
            } => format!("{option}: missing value"),
            MissingValue { option: None } => "missing value".to_string(),
            UnexpectedOption(option) => format!("{option}: unknown flag (see --help)"),
            UnexpectedArgument(arg) => format!(
                "unexpected argument {arg:?}: no positional arguments are taken \
                 (a boolean flag takes its value with '=', as in --read-from-head=false)"
            ),
            UnexpectedValue { option, value } => {
                format!("{option}: takes no value (got {value:?})")
            }
            NonUnicodeValue(value) => format!("argument {value:?} is not valid UTF-8"),
            other => other.to_string(),
        })
    }
}

/// The environment lookup: `std::env::var_os` in `main`, a table in tests.
type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// Reads the `--config` file into its flat key/value pairs: the YAML reader in `main`, a table in
/// tests. Its error should name the line; the flag and the path are added here.
pub type ConfigReader<'a> = &'a dyn Fn(&Path) -> Result<Vec<(String, String)>, String>;

/// Parses the arguments after argv[0], falling back to `AUDIT_*` variables from `env` and then
/// to the file of `-c/--config`, read with `config_file` (only when the flag is given).
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
    config_file: ConfigReader,
) -> Result<Command, UsageError> {
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|first| first == "tailer") {
        args.next();
        return parse_tailer(lexopt::Parser::from_args(args), env);
    }
    parse_forward(lexopt::Parser::from_args(args), env, config_file)
}

/// Every setting of the forwarding mode, by its long flag name: the keys a config file may
/// hold. `config` itself is not one of them.
const FORWARD_SETTINGS: &[&str] = &[
    "target",
    "plaintext",
    "audit-log-path",
    "position-file",
    "read-from-head",
    "tag",
    "compress",
    "mem-buf-limit",
    "max-line-size",
    "max-held-bytes",
    "connect-timeout",
    "ack-timeout",
    "backoff-timer",
    "shutdown-timeout",
    "stats-interval",
    "metrics-address",
    "log-level",
    "fluent-log-level",
    "tls-basedir",
    "tls-ca-file",
    "tls-crt-file",
    "tls-key-file",
    "tls-vhost",
    "tls-verify-hostname",
    "kubecfg",
    "namespace",
    "service-name",
    "secret-name",
    "check-schedule",
    "shared-key",
    "shared-key-file",
    "self-hostname",
    "username",
    "password",
    "konnectivity-uds-socket",
    "proxy-host",
    "proxy-port",
    "proxy-ca-file",
    "proxy-client-crt-file",
    "proxy-client-key-file",
];

/// Reads the `--config` file and checks its keys, so that a misspelt key is an error rather
/// than a setting silently left at its default. Keys are matched in any case, as viper did.
fn read_config(raw: OsString, config_file: ConfigReader) -> Result<ConfigFile, UsageError> {
    let path = parse_path(raw).map_err(|e| UsageError(format!("--config: {e}")))?;
    let at = |problem: String| UsageError(format!("--config {}: {problem}", path.display()));
    let pairs = config_file(&path).map_err(at)?;
    let mut values: Vec<(String, String)> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let key = key.to_ascii_lowercase();
        if key == "config" {
            return Err(at(
                "config: cannot be set in the config file itself (only with -c/--config)"
                    .to_string(),
            ));
        }
        if !FORWARD_SETTINGS.contains(&key.as_str()) {
            return Err(at(format!(
                "unknown key {key:?} (the keys are the long flag names, as in \
                 audit-log-path: /auditlog/audit.log)"
            )));
        }
        if values.iter().any(|(seen, _)| *seen == key) {
            return Err(at(format!("key {key:?} is given twice")));
        }
        values.push((key, value));
    }
    Ok(ConfigFile { path, values })
}

fn parse_forward(
    mut parser: lexopt::Parser,
    env: Env,
    config_file: ConfigReader,
) -> Result<Command, UsageError> {
    use lexopt::prelude::*;

    // Raw values only: they are parsed after the loop, once it is known whether each comes
    // from the command line, the environment or the config file, so an error can name the
    // right one.
    let mut config = None;
    let mut kubecfg = None;
    let mut namespace = None;
    let mut service_name = None;
    let mut secret_name = None;
    let mut check_schedule = None;
    let mut fluent_log_level = None;
    let mut audit_log_path = None;
    let mut mem_buf_limit = None;
    let mut log_level = None;
    let mut backoff_timer = None;
    let mut target = None;
    let mut plaintext = None;
    let mut tls_basedir = None;
    let mut tls_ca_file = None;
    let mut tls_crt_file = None;
    let mut tls_key_file = None;
    let mut tls_vhost = None;
    let mut tls_verify_hostname = None;
    let mut shared_key = None;
    let mut shared_key_file = None;
    let mut self_hostname = None;
    let mut username = None;
    let mut password = None;
    let mut compress = None;
    let mut konnectivity_uds_socket = None;
    let mut proxy_host = None;
    let mut proxy_port = None;
    let mut proxy_ca_file = None;
    let mut proxy_client_crt_file = None;
    let mut proxy_client_key_file = None;
    let mut connect_timeout = None;
    let mut position_file = None;
    let mut tag = None;
    let mut read_from_head = None;
    let mut max_line_size = None;
    let mut max_held_bytes = None;
    let mut ack_timeout = None;
    let mut shutdown_timeout = None;
    let mut stats_interval = None;
    let mut metrics_address = None;
    let mut last_secret = None;

    while let Some(arg) = parser.next()? {
        let after_secret = last_secret.take();
        match arg {
            Short('c') | Long("config") => config = Some(parser.value()?),
            Short('k') | Long("kubecfg") => kubecfg = Some(parser.value()?),
            Short('n') | Long("namespace") => namespace = Some(parser.value()?),
            Short('s') | Long("service-name") => service_name = Some(parser.value()?),
            Short('e') | Long("secret-name") => secret_name = Some(parser.value()?),
            Short('S') | Long("check-schedule") => check_schedule = Some(parser.value()?),
            Short('O') | Long("fluent-log-level") => fluent_log_level = Some(parser.value()?),
            Short('l') | Long("audit-log-path") => audit_log_path = Some(parser.value()?),
            Short('m') | Long("mem-buf-limit") => mem_buf_limit = Some(parser.value()?),
            Short('L') | Long("log-level") => log_level = Some(parser.value()?),
            Short('b') | Long("backoff-timer") => backoff_timer = Some(parser.value()?),
            Long("target") => target = Some(parser.value()?),
            Long("plaintext") => plaintext = Some(bool_value(&mut parser)),
            Short('B') | Long("tls-basedir") => tls_basedir = Some(parser.value()?),
            Short('C') | Long("tls-ca-file") => tls_ca_file = Some(parser.value()?),
            Short('R') | Long("tls-crt-file") => tls_crt_file = Some(parser.value()?),
            Short('K') | Long("tls-key-file") => tls_key_file = Some(parser.value()?),
            Short('H') | Long("tls-vhost") => tls_vhost = Some(parser.value()?),
            Long("tls-verify-hostname") => tls_verify_hostname = Some(bool_value(&mut parser)),
            Long("shared-key") => {
                shared_key = Some(parser.value()?);
                last_secret = Some("--shared-key");
            }
            Long("shared-key-file") => shared_key_file = Some(parser.value()?),
            Long("self-hostname") => self_hostname = Some(parser.value()?),
            Long("username") => username = Some(parser.value()?),
            Long("password") => {
                password = Some(parser.value()?);
                last_secret = Some("--password");
            }
            Long("compress") => compress = Some(parser.value()?),
            Short('u') | Long("konnectivity-uds-socket") => {
                konnectivity_uds_socket = Some(parser.value()?)
            }
            Short('p') | Long("proxy-host") => proxy_host = Some(parser.value()?),
            Short('P') | Long("proxy-port") => proxy_port = Some(parser.value()?),
            Long("proxy-ca-file") => proxy_ca_file = Some(parser.value()?),
            Long("proxy-client-crt-file") => proxy_client_crt_file = Some(parser.value()?),
            Long("proxy-client-key-file") => proxy_client_key_file = Some(parser.value()?),
            Long("connect-timeout") => connect_timeout = Some(parser.value()?),
            Long("position-file") => position_file = Some(parser.value()?),
            Long("tag") => tag = Some(parser.value()?),
            Long("read-from-head") => read_from_head = Some(bool_value(&mut parser)),
            Long("max-line-size") => max_line_size = Some(parser.value()?),
            Long("max-held-bytes") => max_held_bytes = Some(parser.value()?),
            Long("ack-timeout") => ack_timeout = Some(parser.value()?),
            Long("shutdown-timeout") => shutdown_timeout = Some(parser.value()?),
            Long("stats-interval") => stats_interval = Some(parser.value()?),
            Long("metrics-address") => metrics_address = Some(parser.value()?),
            Short('h') | Long("help") => return Ok(Command::Help(HELP)),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(value) if value == "tailer" && after_secret.is_none() => {
                return Err(UsageError(
                    "tailer: the subcommand must be the first argument".to_string(),
                ))
            }
            _ => return Err(unexpected(arg, after_secret)),
        }
    }

    let config = config
        .map(|raw| read_config(raw, config_file))
        .transpose()?;
    let src = &Sources { env, config };

    let audit_log_path = resolve(audit_log_path, "audit-log-path", src, parse_log_path)?
        .map_or_else(|| PathBuf::from(DEFAULT_AUDIT_LOG_PATH), |s| s.value);
    let mem_buf_limit = resolve(mem_buf_limit, "mem-buf-limit", src, text(parse_size))?
        .unwrap_or_else(|| Setting::default("mem-buf-limit", DEFAULT_MEM_BUF_LIMIT));
    let log_level = resolve(log_level, "log-level", src, text(parse_log_level))?
        .map_or(DEFAULT_LOG_LEVEL, |s| s.value);
    let backoff_max = resolve(backoff_timer, "backoff-timer", src, text(positive_duration))?
        .map_or(DEFAULT_BACKOFF_MAX, |s| s.value);
    let target = resolve(target, "target", src, text(parse_target))?.map(|s| s.value);
    let plaintext =
        resolve(plaintext, "plaintext", src, text(parse_bool))?.is_some_and(|s| s.value);

    // The TLS settings are checked even with --plaintext, so that a typo does not wait for
    // the day TLS is switched on.
    let tls_basedir = resolve(tls_basedir, "tls-basedir", src, parse_path)?
        .map_or_else(|| PathBuf::from(DEFAULT_TLS_BASEDIR), |s| s.value);
    let tls_name = |raw, flag, default: &str| -> Result<Setting<PathBuf>, UsageError> {
        Ok(resolve(raw, flag, src, parse_path)?
            .unwrap_or_else(|| Setting::default(flag, PathBuf::from(default))))
    };
    let ca_name = tls_name(tls_ca_file, "tls-ca-file", DEFAULT_TLS_CA_FILE)?;
    let cert_name = tls_name(tls_crt_file, "tls-crt-file", DEFAULT_TLS_CRT_FILE)?;
    let key_name = tls_name(tls_key_file, "tls-key-file", DEFAULT_TLS_KEY_FILE)?;
    // Path::join keeps an absolute name as it is, which is the documented rule.
    let tls = TlsArgs {
        ca: tls_basedir.join(&ca_name.value),
        cert: tls_basedir.join(&cert_name.value),
        key: tls_basedir.join(&key_name.value),
        vhost: resolve(tls_vhost, "tls-vhost", src, text(parse_host))?
            .map_or_else(|| DEFAULT_TLS_VHOST.to_string(), |s| s.value),
        verify_hostname: resolve(
            tls_verify_hostname,
            "tls-verify-hostname",
            src,
            text(parse_bool),
        )?
        .is_none_or(|s| s.value),
    };

    let kube = resolve_kube(
        KubeRaw {
            kubecfg,
            namespace,
            service_name,
            secret_name,
            check_schedule,
        },
        src,
        target.is_some(),
        plaintext,
        [&ca_name, &cert_name, &key_name],
    )?;
    let fluent_log_level = resolve(
        fluent_log_level,
        "fluent-log-level",
        src,
        text(parse_fluent_log_level),
    )?
    .map(|s| s.value);

    let shared_key = resolve_shared_key(shared_key, shared_key_file, src)?;
    let self_hostname =
        resolve(self_hostname, "self-hostname", src, text(parse_non_empty))?.map(|s| s.value);
    let username = resolve(username, "username", src, text(parse_non_empty))?;
    let password = resolve(password, "password", src, parse_secret)?;
    let user_auth = match (username, password) {
        (None, None) => None,
        (Some(username), None) => {
            return Err(UsageError(format!(
                "{}: needs --password too (or AUDIT_PASSWORD)",
                username.label
            )))
        }
        (None, Some(password)) => {
            return Err(UsageError(format!(
                "{}: needs --username too (or AUDIT_USERNAME)",
                password.label
            )))
        }
        // The user authentication is part of the shared-key handshake: without a key there
        // is no handshake to carry it, and the credentials would be silently dropped.
        (Some(username), Some(password)) if shared_key.is_none() => {
            return Err(UsageError(format!(
                "{} and {}: user authentication needs a shared key: set --shared-key or \
                 --shared-key-file too (or AUDIT_SHARED_KEY or AUDIT_SHARED_KEY_FILE)",
                username.describe(),
                password.describe()
            )))
        }
        (Some(username), Some(password)) => Some(UserAuth {
            username: username.value,
            password: password.value,
        }),
    };
    let compress = resolve(compress, "compress", src, text(parse_compress))?
        .map_or(Compress::None, |s| s.value);

    let socket = resolve(
        konnectivity_uds_socket,
        "konnectivity-uds-socket",
        src,
        parse_path,
    )?;
    let proxy_host = resolve(proxy_host, "proxy-host", src, text(parse_host))?;
    let proxy_port = resolve(proxy_port, "proxy-port", src, text(parse_port))?
        .map_or(DEFAULT_PROXY_PORT, |s| s.value);
    let proxy_file =
        |raw, flag, default| -> Result<PathBuf, UsageError> {
            Ok(resolve(raw, flag, src, parse_path)?
                .map_or_else(|| PathBuf::from(default), |s| s.value))
        };
    let proxy_ca = proxy_file(proxy_ca_file, "proxy-ca-file", DEFAULT_PROXY_CA_FILE)?;
    let proxy_cert = proxy_file(
        proxy_client_crt_file,
        "proxy-client-crt-file",
        DEFAULT_PROXY_CLIENT_CRT_FILE,
    )?;
    let proxy_key = proxy_file(
        proxy_client_key_file,
        "proxy-client-key-file",
        DEFAULT_PROXY_CLIENT_KEY_FILE,
    )?;
    let proxy = match (socket, proxy_host) {
        (Some(socket), Some(host)) => {
            return Err(UsageError(format!(
                "{} and {} are mutually exclusive: reach the target either through the local \
                 konnectivity socket or through the mTLS proxy",
                socket.describe(),
                host.describe()
            )))
        }
        (Some(socket), None) => Some(Proxy::Uds {
            socket: socket.value,
        }),
        (None, Some(host)) => Some(Proxy::Mtls {
            host: host.value,
            port: proxy_port,
            ca: proxy_ca,
            cert: proxy_cert,
            key: proxy_key,
        }),
        (None, None) => None,
    };
    let connect_timeout = resolve(
        connect_timeout,
        "connect-timeout",
        src,
        text(positive_duration),
    )?
    .map_or(DEFAULT_CONNECT_TIMEOUT, |s| s.value);

    let position_file = resolve(position_file, "position-file", src, parse_path)?
        .map_or_else(|| default_position_file(&audit_log_path), |s| s.value);
    let tag = resolve(tag, "tag", src, text(parse_non_empty))?
        .map_or_else(|| DEFAULT_TAG.to_string(), |s| s.value);
    let read_from_head =
        resolve(read_from_head, "read-from-head", src, text(parse_bool))?.is_none_or(|s| s.value);
    let max_line_size = resolve(max_line_size, "max-line-size", src, text(positive_size))?
        .unwrap_or_else(|| Setting::default("max-line-size", DEFAULT_MAX_LINE_SIZE));
    let max_held_bytes = resolve(max_held_bytes, "max-held-bytes", src, text(positive_size))?
        .map_or(DEFAULT_MAX_HELD_BYTES, |s| s.value);
    let ack_timeout = resolve(ack_timeout, "ack-timeout", src, text(positive_duration))?
        .map_or(DEFAULT_ACK_TIMEOUT, |s| s.value);
    let shutdown_timeout = resolve(
        shutdown_timeout,
        "shutdown-timeout",
        src,
        text(parse_duration),
    )?
    .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |s| s.value);
    let stats_interval = resolve(
        stats_interval,
        "stats-interval",
        src,
        text(positive_duration),
    )?
    .map_or(DEFAULT_STATS_INTERVAL, |s| s.value);
    let metrics_address = resolve_metrics_address(metrics_address, src)?;

    // Saturating: a max line size near u64::MAX must read as "needs more than any limit", not
    // wrap into a small minimum.
    let min_mem = max_line_size.value.saturating_mul(2).saturating_add(MIB);
    if mem_buf_limit.value < min_mem {
        return Err(UsageError(format!(
            "{}: {} bytes is too small: it must be at least 2 x {} ({}) + 1 MiB = {} bytes, \
             because a partial line and a whole record are kept besides the in-flight window",
            mem_buf_limit.describe(),
            mem_buf_limit.value,
            max_line_size.describe(),
            max_line_size.value,
            min_mem
        )));
    }

    Ok(Command::Forward(ForwardArgs {
        audit_log_path,
        mem_buf_limit: mem_buf_limit.value,
        log_level,
        backoff_max,
        target,
        kube,
        plaintext,
        tls,
        shared_key,
        self_hostname,
        user_auth,
        compress,
        proxy,
        connect_timeout,
        position_file,
        tag,
        read_from_head,
        max_line_size: max_line_size.value,
        max_held_bytes,
        ack_timeout,
        shutdown_timeout,
        stats_interval,
        metrics_address,
        fluent_log_level,
    }))
}

fn parse_tailer(mut parser: lexopt::Parser, env: Env) -> Result<Command, UsageError> {
    use lexopt::prelude::*;

    let mut listen = None;
    let mut discard = None;
    let mut log_level = None;
    let mut tls_crt_file = None;
    let mut tls_key_file = None;
    let mut client_ca = None;
    let mut tls_max_version = None;
    let mut shared_key = None;
    let mut shared_key_file = None;
    let mut self_hostname = None;
    let mut max_clients = None;
    let mut client_timeout = None;
    let mut idle_timeout = None;
    let mut mem_budget = None;
    let mut metrics_address = None;
    let mut last_secret = None;

    while let Some(arg) = parser.next()? {
        let after_secret = last_secret.take();
        match arg {
            Long("listen") => listen = Some(parser.value()?),
            Long("max-clients") => max_clients = Some(parser.value()?),
            Long("client-timeout") => client_timeout = Some(parser.value()?),
            Long("idle-timeout") => idle_timeout = Some(parser.value()?),
            Long("mem-budget") => mem_budget = Some(parser.value()?),
            Long("metrics-address") => metrics_address = Some(parser.value()?),
            Long("discard") => discard = Some(bool_value(&mut parser)),
            Long("log-level") => log_level = Some(parser.value()?),
            Long("tls-crt-file") => tls_crt_file = Some(parser.value()?),
            Long("tls-key-file") => tls_key_file = Some(parser.value()?),
            Long("client-ca") => client_ca = Some(parser.value()?),
            Long("tls-max-version") => tls_max_version = Some(parser.value()?),
            Long("shared-key") => {
                shared_key = Some(parser.value()?);
                last_secret = Some("--shared-key");
            }
            Long("shared-key-file") => shared_key_file = Some(parser.value()?),
            Long("self-hostname") => self_hostname = Some(parser.value()?),
            Short('h') | Long("help") => return Ok(Command::Help(TAILER_HELP)),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(unexpected(arg, after_secret)),
        }
    }

    let src = &Sources { env, config: None };
    let listen = resolve(listen, "listen", src, text(parse_listen))?
        .ok_or_else(|| {
            UsageError(
                "--listen is required: HOST:PORT to accept Forward connections on \
                 (or set AUDIT_LISTEN)"
                    .to_string(),
            )
        })?
        .value;
    let discard = resolve(discard, "discard", src, text(parse_bool))?.is_some_and(|s| s.value);
    let log_level = resolve(log_level, "log-level", src, text(parse_log_level))?
        .map_or(DEFAULT_LOG_LEVEL, |s| s.value);

    let cert = resolve(tls_crt_file, "tls-crt-file", src, parse_path)?;
    let key = resolve(tls_key_file, "tls-key-file", src, parse_path)?;
    let client_ca = resolve(client_ca, "client-ca", src, parse_path)?;
    let max_version = resolve(
        tls_max_version,
        "tls-max-version",
        src,
        text(parse_tls_version),
    )?;
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TailerTls {
            cert: cert.value,
            key: key.value,
            client_ca: client_ca.map(|s| s.value),
            max_version_12: max_version.is_some_and(|s| s.value == TlsVersion::V12),
        }),
        (Some(cert), None) => {
            return Err(UsageError(format!(
                "{}: needs --tls-key-file too (or AUDIT_TLS_KEY_FILE): set both to listen \
                 with TLS, or neither",
                cert.label
            )))
        }
        (None, Some(key)) => {
            return Err(UsageError(format!(
                "{}: needs --tls-crt-file too (or AUDIT_TLS_CRT_FILE): set both to listen \
                 with TLS, or neither",
                key.label
            )))
        }
        (None, None) => {
            // Refused rather than ignored: the operator asked for a check that plain TCP
            // cannot make, and would otherwise believe it is made.
            let tls_only = client_ca
                .map(|s| s.label)
                .or_else(|| max_version.map(|s| s.label));
            if let Some(label) = tls_only {
                return Err(UsageError(format!(
                    "{label}: only valid with TLS: set --tls-crt-file and --tls-key-file too \
                     (or AUDIT_TLS_CRT_FILE and AUDIT_TLS_KEY_FILE)"
                )));
            }
            None
        }
    };
    let shared_key = resolve_shared_key(shared_key, shared_key_file, src)?;
    let self_hostname =
        resolve(self_hostname, "self-hostname", src, text(parse_non_empty))?.map(|s| s.value);
    let max_clients = resolve(max_clients, "max-clients", src, text(positive_count))?
        .map_or(DEFAULT_MAX_CLIENTS, |s| s.value);
    let client_timeout = resolve(
        client_timeout,
        "client-timeout",
        src,
        text(positive_duration),
    )?
    .map_or(DEFAULT_CLIENT_TIMEOUT, |s| s.value);
    let idle_timeout = resolve(idle_timeout, "idle-timeout", src, text(positive_duration))?
        .map_or(DEFAULT_IDLE_TIMEOUT, |s| s.value);
    let mem_budget = match resolve(mem_budget, "mem-budget", src, text(parse_size))? {
        None => DEFAULT_MEM_BUDGET,
        Some(s) if s.value < MIN_MEM_BUDGET => {
            return Err(UsageError(format!(
                "{}: {} bytes is too small: it must be at least 1M ({MIN_MEM_BUDGET} bytes)",
                s.label, s.value
            )))
        }
        Some(s) => s.value,
    };
    let metrics_address = resolve_metrics_address(metrics_address, src)?;
    Ok(Command::Tailer(TailerArgs {
        listen,
        discard,
        log_level,
        tls,
        shared_key,
        self_hostname,
        max_clients,
        client_timeout,
        idle_timeout,
        mem_budget,
        metrics_address,
    }))
}

/// The shared key from `--shared-key` or `--shared-key-file`. Both given (on the command line
/// or in the environment, in any mix) is an error rather than a precedence rule: two sources
/// for one secret are a mistake, and picking one silently could lock out every client.
fn resolve_shared_key(
    value: Option<OsString>,
    file: Option<OsString>,
    src: &Sources,
) -> Result<Option<SharedKey>, UsageError> {
    let value = resolve(value, "shared-key", src, parse_secret)?;
    let file = resolve(file, "shared-key-file", src, parse_path)?;
    match (value, file) {
        (Some(value), Some(file)) => Err(UsageError(format!(
            "{} and {} are mutually exclusive: give the shared key or the file holding it",
            value.describe(),
            file.describe()
        ))),
        (Some(value), None) => Ok(Some(SharedKey::Value(value.value))),
        (None, Some(file)) => Ok(Some(SharedKey::File(file.value))),
        (None, None) => Ok(None),
    }
}

/// The Kubernetes settings as typed, before it is known which of them are used.
struct KubeRaw {
    kubecfg: Option<OsString>,
    namespace: Option<OsString>,
    service_name: Option<OsString>,
    secret_name: Option<OsString>,
    check_schedule: Option<OsString>,
}

/// Decides whether the Kubernetes API is used and for what. Without a target the Service is
/// looked up, and the Secret too unless it is switched off; with one the Secret is used only
/// when its name was given explicitly (flag, environment or config file), so that a
/// deployment that only ever passed `--target` keeps reading its TLS files and needs no API.
/// Every setting is checked even when unused, like the TLS ones with `--plaintext`.
fn resolve_kube(
    raw: KubeRaw,
    src: &Sources,
    has_target: bool,
    plaintext: bool,
    tls_names: [&Setting<PathBuf>; 3],
) -> Result<Option<KubeArgs>, UsageError> {
    // Empty is allowed: it means none, as an unset HOME does.
    let kubecfg = resolve(raw.kubecfg, "kubecfg", src, |raw| Ok(PathBuf::from(raw)))?
        .map_or_else(|| default_kubecfg(src.env), |s| s.value);
    let namespace = resolve(raw.namespace, "namespace", src, text(parse_namespace))?
        .map_or_else(|| DEFAULT_NAMESPACE.to_string(), |s| s.value);
    let service_name = resolve(
        raw.service_name,
        "service-name",
        src,
        text(parse_service_name),
    )?
    .map_or_else(|| DEFAULT_SERVICE_NAME.to_string(), |s| s.value);
    let secret_name = resolve(raw.secret_name, "secret-name", src, text(parse_secret_name))?;
    let check_schedule = resolve(
        raw.check_schedule,
        "check-schedule",
        src,
        text(parse_non_empty),
    )?
    .map_or_else(|| DEFAULT_CHECK_SCHEDULE.to_string(), |s| s.value);

    // Plain TCP needs no TLS material, and "" asks for the files under --tls-basedir.
    let secret = match secret_name {
        _ if plaintext => None,
        Some(setting) => setting.value.map(|name| (name, setting.described)),
        None if has_target => None,
        None => Some((DEFAULT_SECRET_NAME.to_string(), "--secret-name".to_string())),
    };
    let [ca, cert, key] = tls_names;
    let secret_keys = SecretKeys {
        ca: secret_key(ca, secret.as_ref())?,
        cert: secret_key(cert, secret.as_ref())?,
        key: secret_key(key, secret.as_ref())?,
    };
    let kube = |service_name, secret_name| KubeArgs {
        kubecfg,
        namespace,
        service_name,
        secret_name,
        check_schedule,
        secret_keys,
    };
    Ok(match (has_target, secret) {
        (false, secret) => Some(kube(Some(service_name), secret.map(|(name, _)| name))),
        (true, Some((name, _))) => Some(kube(None, Some(name))),
        (true, None) => None,
    })
}

/// `$HOME/.kube/config`, the original's default; without a HOME there is none.
fn default_kubecfg(env: Env) -> PathBuf {
    match env("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".kube/config"),
        _ => PathBuf::new(),
    }
}

/// A TLS file name as a key of the Secret's data, when a Secret (name, where it was set) is
/// used: the API only has keys of letters, digits, '-', '_' and '.', so a path there can only
/// be a mistake, and it is better named now than as a missing key at every check.
fn secret_key(
    name: &Setting<PathBuf>,
    secret: Option<&(String, String)>,
) -> Result<String, UsageError> {
    let Some((secret, secret_from)) = secret else {
        return Ok(name.value.to_string_lossy().into_owned());
    };
    match name.value.to_str() {
        Some(key) if check_secret_key(key) => Ok(key.to_string()),
        _ => Err(UsageError(format!(
            "{}: {:?} is not a valid key of the Secret {secret:?} ({secret_from}): the TLS \
             material is read from the Secret's data, whose keys are letters, digits, '-', \
             '_' and '.'; give the key alone, or set --secret-name \"\" to read the files \
             under --tls-basedir instead",
            name.label, name.value
        ))),
    }
}

/// Kubernetes' rule for the data keys of Secrets and ConfigMaps.
fn check_secret_key(key: &str) -> bool {
    (1..=253).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && !key.starts_with("..")
}

/// One label of a Kubernetes name (without the length rule, which differs): lowercase letters,
/// digits and '-', starting (and, with `first_letter`, beginning with a letter) and ending
/// with a letter or digit.
fn is_k8s_label(label: &str, first_letter: bool) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first)
                && (!first_letter || first.is_ascii_lowercase())
                && alnum(last)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

// The names are checked as the API server checks them, so that a typo is a usage error at
// start rather than a 404 at every check.

fn parse_namespace(s: &str) -> Result<String, String> {
    if s.len() <= 63 && is_k8s_label(s, false) {
        return Ok(s.to_string());
    }
    Err(format!(
        "invalid namespace {s:?}: a DNS-1123 label is 1-63 lowercase letters, digits and \
         '-', starting and ending with a letter or digit"
    ))
}

fn parse_service_name(s: &str) -> Result<String, String> {
    if s.len() <= 63 && is_k8s_label(s, true) {
        return Ok(s.to_string());
    }
    Err(format!(
        "invalid Service name {s:?}: a DNS-1035 label is 1-63 lowercase letters, digits and \
         '-', starting with a letter and ending with a letter or digit"
    ))
}

/// A Secret name, or "" for none: the TLS files are then read from `--tls-basedir`.
fn parse_secret_name(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() <= 253 && s.split('.').all(|label| is_k8s_label(label, false)) {
        return Ok(Some(s.to_string()));
    }
    Err(format!(
        "invalid Secret name {s:?}: a DNS-1123 subdomain is at most 253 lowercase letters, \
         digits, '-' and '.', each part between dots starting and ending with a letter or \
         digit (\"\" for no Secret)"
    ))
}

/// fluent-bit's log levels, read as fluent-bit read them (any case, `warning` too): the value
/// is not used, but a deployment of the fluent-bit based original may still set it.
fn parse_fluent_log_level(s: &str) -> Result<String, String> {
    let level = s.to_ascii_lowercase();
    match level.as_str() {
        "off" | "error" | "warn" | "warning" | "info" | "debug" | "trace" => Ok(level),
        _ => Err(format!(
            "invalid fluent-bit log level {s:?} (use off, error, warn, info, debug or trace)"
        )),
    }
}

/// The error for an argument the parse loop does not take. A stray positional argument right
/// after a secret flag is most likely the secret itself (`--password= hunter2`), so it is not
/// shown.
fn unexpected(arg: lexopt::Arg, after_secret: Option<&str>) -> UsageError {
    match (arg, after_secret) {
        (lexopt::Arg::Value(_), Some(flag)) => UsageError(format!(
            "unexpected argument after {flag} (not shown: it may be the secret): give the \
             value as {flag}=VALUE or {flag} VALUE"
        )),
        (arg, _) => arg.unexpected().into(),
    }
}

/// A boolean flag's value: only `--flag=value` carries one, because `--flag false` would be
/// ambiguous with a positional argument.
fn bool_value(parser: &mut lexopt::Parser) -> OsString {
    parser
        .optional_value()
        .unwrap_or_else(|| OsString::from("true"))
}

/// A parsed setting and the name of where it came from, for errors that involve it.
struct Setting<T> {
    value: T,
    /// What an error about this value alone starts with: `--flag`, `AUDIT_FLAG`, or
    /// `FILE: flag` for the config file.
    label: String,
    /// The same for errors that involve several settings (see `describe`).
    described: String,
}

impl<T> Setting<T> {
    fn default(flag: &'static str, value: T) -> Self {
        Setting {
            value,
            label: format!("--{flag}"),
            described: format!("--{flag}"),
        }
    }

    /// Where the value came from, with the flag added when that was the environment, for
    /// errors that involve several settings.
    fn describe(&self) -> String {
        self.described.clone()
    }
}

/// `--some-flag` -> `AUDIT_SOME_FLAG`.
fn env_name(flag: &str) -> String {
    format!("AUDIT_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Where a setting missing from the command line is looked up, in this order.
struct Sources<'a> {
    env: Env<'a>,
    config: Option<ConfigFile>,
}

/// The `--config` file's settings, keys checked against the flags and not repeated.
struct ConfigFile {
    path: PathBuf,
    values: Vec<(String, String)>,
}

/// Picks the command-line value if given, else the environment's, else the config file's, and
/// parses it; an error is prefixed with where the value came from.
fn resolve<T>(
    cli: Option<OsString>,
    flag: &'static str,
    src: &Sources,
    parse: impl Fn(OsString) -> Result<T, String>,
) -> Result<Option<Setting<T>>, UsageError> {
    let from_config = |config: &ConfigFile| {
        let (_, value) = config.values.iter().find(|(key, _)| key == flag)?;
        let path = config.path.display();
        Some((
            OsString::from(value),
            format!("{path}: {flag}"),
            format!("{flag} in {path}"),
        ))
    };
    let (raw, label, described) = match cli {
        Some(raw) => (raw, format!("--{flag}"), format!("--{flag}")),
        None => {
            let name = env_name(flag);
            match (src.env)(&name) {
                Some(raw) => (raw, name.clone(), format!("{name} (--{flag})")),
                None => match src.config.as_ref().and_then(from_config) {
                    Some(found) => found,
                    None => return Ok(None),
                },
            }
        }
    };
    match parse(raw) {
        Ok(value) => Ok(Some(Setting {
            value,
            label,
            described,
        })),
        Err(problem) => Err(UsageError(format!("{label}: {problem}"))),
    }
}

/// Adapts a `&str` parser to raw arguments, which need not be UTF-8.
fn text<T>(parse: fn(&str) -> Result<T, String>) -> impl Fn(OsString) -> Result<T, String> {
    move |raw| match raw.to_str() {
        Some(s) => parse(s),
        None => Err(format!("{raw:?} is not valid UTF-8")),
    }
}

/// A secret's value (shared key, password). Its errors never show the value: a usage error
/// ends up in terminals, CI logs and the pod's events.
fn parse_secret(raw: OsString) -> Result<String, String> {
    match raw.into_string() {
        Ok(s) if s.is_empty() => Err("must not be empty".to_string()),
        Ok(s) => Ok(s),
        Err(_) => Err("is not valid UTF-8 (value not shown: it is a secret)".to_string()),
    }
}

fn parse_path(raw: OsString) -> Result<PathBuf, String> {
    if raw.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(PathBuf::from(raw))
}

/// The audit log must name a file: its directory is where the position file goes by default,
/// and rotated siblings are looked for next to it.
fn parse_log_path(raw: OsString) -> Result<PathBuf, String> {
    let path = parse_path(raw)?;
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") || path.file_name().is_none() {
        return Err(format!("{path:?} must name a file, not a directory"));
    }
    Ok(path)
}

fn default_position_file(audit_log_path: &Path) -> PathBuf {
    match audit_log_path.parent() {
        Some(dir) => dir.join(POSITION_FILE_NAME),
        // parse_log_path only accepts paths with a file name, which all have a parent.
        None => PathBuf::from(POSITION_FILE_NAME),
    }
}

fn parse_non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s.to_string())
}

fn parse_compress(s: &str) -> Result<Compress, String> {
    match s.to_ascii_lowercase().as_str() {
        "none" => Ok(Compress::None),
        "gzip" => Ok(Compress::Gzip),
        _ => Err(format!("invalid compression {s:?} (use none or gzip)")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsVersion {
    V12,
    V13,
}

fn parse_tls_version(s: &str) -> Result<TlsVersion, String> {
    match s {
        "1.2" => Ok(TlsVersion::V12),
        "1.3" => Ok(TlsVersion::V13),
        _ => Err(format!("invalid TLS version {s:?} (use 1.2 or 1.3)")),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (use true, false, 1 or 0)")),
    }
}

fn parse_log_level(s: &str) -> Result<LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(format!(
            "invalid log level {s:?} (use error, warn, info, debug or trace)"
        )),
    }
}

fn positive_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("must be greater than 0 (got {s:?})")),
        n => Ok(n),
    }
}

fn positive_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err(format!("must be greater than 0 (got {s:?})")),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "invalid number {s:?} (use a whole number such as 100)"
        )),
    }
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("must be greater than 0 (got {s:?})")),
        d => Ok(d),
    }
}

/// Parses a size the way fluent-bit's `flb_utils_size_to_bytes` reads one: a decimal number,
/// optionally with a fraction, and an optional suffix K, M, G, KB, MB or GB in any case, all
/// decimal (K = KB = 1000, M = MB = 1000^2, G = GB = 1000^3), the result truncated to whole
/// bytes. Stricter than fluent-bit where it is lenient by accident (atof stops at the first bad
/// character, "false" means 0, negatives pass): those are errors here. The fraction is computed
/// exactly instead of through a double, so "4.35M" is 4350000 and not one byte less.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size {s:?} (use a number with K, M, G, KB, MB or GB)");
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_len);
    let multiplier: u64 = match suffix.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        _ => return Err(invalid()),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    let too_large = || format!("size {s:?} is too large");
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        // Only digits remain, so a parse failure can only be overflow.
        whole.parse().map_err(|_| too_large())?
    };
    // The multiplier is at most 10^9, so digits past the ninth cannot add a whole byte.
    let fraction = &fraction[..fraction.len().min(9)];
    let fraction_bytes = if fraction.is_empty() {
        0
    } else {
        // At most nine digits: fits, and the product stays below 10^18.
        let digits: u64 = fraction.parse().map_err(|_| invalid())?;
        digits * multiplier / 10u64.pow(fraction.len() as u32)
    };
    whole
        .checked_mul(multiplier)
        .and_then(|n| n.checked_add(fraction_bytes))
        .ok_or_else(too_large)
}

/// Parses a duration with Go's `time.ParseDuration` syntax: an optional sign, then one or more
/// decimal numbers (fraction allowed) each followed by a unit ns, us, µs, μs, ms, s, m or h;
/// "0" alone needs no unit. Units are case-sensitive as in Go. Negative durations are refused,
/// and so is anything over Go's limit (2^63-1 ns, about 292 years). Fractions are computed
/// exactly rather than through a float64 as Go does, so results can differ from Go's by at most
/// a nanosecond.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ns, us, ms, s, m or h";
    let invalid =
        || format!("invalid duration {s:?} (use numbers with a unit: {UNITS}; e.g. 1m30s)");
    let too_large = || format!("duration {s:?} is too large");

    let mut rest = s;
    if let Some(unsigned) = rest.strip_prefix('+') {
        rest = unsigned;
    } else if rest.starts_with('-') {
        return Err(format!("negative duration {s:?} is not allowed"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }

    let mut total_ns: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(whole_len);
        rest = after;
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (fraction, rest) = after_dot.split_at(len);
        }
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_len);
        rest = after;
        let unit_ns: u128 = match unit {
            "" => return Err(format!("missing unit in duration {s:?} (use {UNITS})")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {s:?} (use {UNITS})"
                ))
            }
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            // Only digits, so a failure can only be overflow.
            whole.parse().map_err(|_| too_large())?
        };
        // A unit is at most 3.6e12 ns: 24 digits keep the product far inside u128 and drop
        // only what is far below a nanosecond.
        let fraction = &fraction[..fraction.len().min(24)];
        let fraction_ns = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| invalid())?;
            digits * unit_ns / 10u128.pow(fraction.len() as u32)
        };
        total_ns = whole
            .checked_mul(unit_ns)
            .and_then(|n| n.checked_add(fraction_ns))
            .and_then(|n| n.checked_add(total_ns))
            .filter(|&n| n <= i64::MAX as u128)
            .ok_or_else(too_large)?;
    }
    // The filter above keeps the total within i64, hence within u64.
    Ok(Duration::from_nanos(total_ns as u64))
}

/// Parses HOST:PORT where HOST is a DNS name, an IPv4 address or a bracketed IPv6 address and
/// PORT is 1-65535. A bare IPv6 address is refused: its last group cannot be told from a port.
pub fn parse_target(s: &str) -> Result<Target, String> {
    parse_host_port(s, 1)
}

/// Like `parse_target` but port 0 is allowed (the kernel picks a free port), and the address is
/// kept as given.
fn parse_listen(s: &str) -> Result<String, String> {
    parse_host_port(s, 0).map(|_| s.to_string())
}

/// `--metrics-address` of either mode, from the command line, the environment or the config.
fn resolve_metrics_address(
    cli: Option<OsString>,
    src: &Sources,
) -> Result<Option<String>, UsageError> {
    let setting = resolve(cli, "metrics-address", src, text(parse_metrics_address))?;
    Ok(setting.and_then(|s| s.value))
}

/// A listen address, or "" for none (an empty variable in a manifest turns it off).
fn parse_metrics_address(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    parse_listen(s).map(Some)
}

fn parse_host_port(s: &str, min_port: u16) -> Result<Target, String> {
    let invalid = |problem: String| format!("invalid address {s:?}: {problem}");
    let (host, port) = if let Some(bracketed) = s.strip_prefix('[') {
        let (ip, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("missing ']' after the IPv6 address".to_string()))?;
        if ip.parse::<Ipv6Addr>().is_err() {
            return Err(invalid(format!("{ip:?} is not an IPv6 address")));
        }
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| invalid("missing port (use [IPv6]:PORT)".to_string()))?;
        (ip, port)
    } else {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| invalid("missing port (use HOST:PORT)".to_string()))?;
        if host.contains(':') {
            return Err(invalid(
                "an IPv6 address must be in brackets, as in [::1]:24224".to_string(),
            ));
        }
        check_host(host).map_err(invalid)?;
        (host, port)
    };
    if port.is_empty() {
        return Err(invalid("missing port (use HOST:PORT)".to_string()));
    }
    let port = check_port(port, min_port).map_err(invalid)?;
    Ok(Target {
        host: host.to_string(),
        port,
    })
}

/// A decimal port from `min_port` to 65535; no sign, no spaces.
fn check_port(port: &str, min_port: u16) -> Result<u16, String> {
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port {port:?}"));
    }
    match port.parse::<u16>() {
        Ok(port) if port >= min_port => Ok(port),
        _ => Err(format!("port {port} is out of range {min_port}-65535")),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    check_port(s, 1)
}

/// A host alone, without a port: a DNS name, an IPv4 address, or an IPv6 address with or
/// without brackets (kept without them, as in [`Target`]).
fn parse_host(s: &str) -> Result<String, String> {
    let invalid = |problem: String| format!("invalid host {s:?}: {problem}");
    if let Some(bracketed) = s.strip_prefix('[') {
        let ip = bracketed
            .strip_suffix(']')
            .ok_or_else(|| invalid("missing ']' after the IPv6 address".to_string()))?;
        return match ip.parse::<Ipv6Addr>() {
            Ok(_) => Ok(ip.to_string()),
            Err(_) => Err(invalid(format!("{ip:?} is not an IPv6 address"))),
        };
    }
    if s.contains(':') {
        // Most likely HOST:PORT given where only the host belongs.
        return match s.parse::<Ipv6Addr>() {
            Ok(_) => Ok(s.to_string()),
            Err(_) => Err(invalid(
                "not an IPv6 address; give the host alone, without a port".to_string(),
            )),
        };
    }
    check_host(s).map_err(invalid)?;
    Ok(s.to_string())
}

/// A DNS name (RFC 1123 labels; '_' tolerated as resolvers do) or a dotted IPv4 address.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    // All digits and dots can only be meant as IPv4: "999.1.1.1" is a typo, not a name.
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("{host:?} is not an IPv4 address")),
        };
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let bad = || {
        format!("{host:?} is not a valid host name (letters, digits, '-' and '.' between labels)")
    };
    if name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parse_size_table() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("1024", 1024),
            ("1k", 1_000),
            ("1K", 1_000),
            ("1kb", 1_000),
            ("1Kb", 1_000),
            ("1KB", 1_000),
            ("200M", 200_000_000),
            ("10m", 10_000_000),
            ("10MB", 10_000_000),
            ("2G", 2_000_000_000),
            ("2gb", 2_000_000_000),
            ("1.5K", 1_500),
            ("4.35M", 4_350_000),
            (".5M", 500_000),
            ("5.", 5),
            ("1.9", 1),
            ("0.0000000001G", 0),
            ("1.0000000019G", 1_000_000_001),
            ("18446744073709551615", u64::MAX),
            ("18446744073G", 18_446_744_073_000_000_000),
        ];
        for &(input, want) in ok {
            assert_eq!(parse_size(input), Ok(want), "input {input:?}");
        }
        let err: &[(&str, &str)] = &[
            ("", "invalid size \"\""),
            (
                "12Q",
                "invalid size \"12Q\" (use a number with K, M, G, KB, MB or GB)",
            ),
            ("K", "invalid size"),
            (".", "invalid size"),
            ("1KiB", "invalid size"),
            ("1T", "invalid size"),
            ("1 K", "invalid size"),
            (" 1", "invalid size"),
            ("-1", "invalid size"),
            ("+1", "invalid size"),
            ("1.2.3", "invalid size"),
            ("1e3", "invalid size"),
            ("false", "invalid size"),
            ("18446744073709551616", "is too large"),
            ("18446744074G", "is too large"),
            ("99999999999999999999999M", "is too large"),
        ];
        for &(input, want) in err {
            match parse_size(input) {
                Err(e) => assert!(e.contains(want), "input {input:?}: {e:?} lacks {want:?}"),
                Ok(v) => panic!("input {input:?} parsed as {v}"),
            }
        }
    }

    #[test]
    fn cli_parse_duration_table() {
        let ns = Duration::from_nanos;
        let ok: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("5s", Duration::from_secs(5)),
            ("+5s", Duration::from_secs(5)),
            ("500ms", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1h1h", Duration::from_secs(7200)),
            ("2.5s", Duration::from_millis(2500)),
            ("1.5h", Duration::from_secs(5400)),
            ("1.s", Duration::from_secs(1)),
            (".5s", Duration::from_millis(500)),
            ("300us", Duration::from_micros(300)),
            ("300µs", Duration::from_micros(300)),
            ("300μs", Duration::from_micros(300)),
            ("7ns", ns(7)),
            ("0.000000001s", ns(1)),
            ("1.0000000019s", ns(1_000_000_001)),
            ("1h2m3s4ms5us6ns", ns(3_723_004_005_006)),
            ("9223372036854775807ns", ns(i64::MAX as u64)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ];
        for &(input, want) in ok {
            assert_eq!(parse_duration(input), Ok(want), "input {input:?}");
        }
        let err: &[(&str, &str)] = &[
            ("", "invalid duration \"\""),
            ("+", "invalid duration"),
            ("5", "missing unit in duration \"5\""),
            ("1s5", "missing unit"),
            ("-1s", "negative duration \"-1s\" is not allowed"),
            ("-0", "negative duration"),
            ("1x", "unknown unit \"x\" in duration \"1x\""),
            ("1S", "unknown unit \"S\""),
            ("1 s", "unknown unit \" s\""),
            ("1sec", "unknown unit \"sec\""),
            ("s", "invalid duration"),
            (".s", "invalid duration"),
            ("1..5s", "missing unit"),
            ("9223372036854775808ns", "is too large"),
            ("2562048h", "is too large"),
            ("9999999999999999999999999999999999999999h", "is too large"),
        ];
        for &(input, want) in err {
            match parse_duration(input) {
                Err(e) => assert!(e.contains(want), "input {input:?}: {e:?} lacks {want:?}"),
                Ok(v) => panic!("input {input:?} parsed as {v:?}"),
            }
        }
    }

    #[test]
    fn cli_parse_target_table() {
        let ok: &[(&str, &str, u16)] = &[
            ("fluentd:24224", "fluentd", 24224),
            (
                "fluentd.logging.svc.cluster.local:24224",
                "fluentd.logging.svc.cluster.local",
                24224,
            ),
            ("fluentd.:1", "fluentd.", 1),
            ("my_host-1:65535", "my_host-1", 65535),
            ("10.0.0.1:24224", "10.0.0.1", 24224),
            ("127.0.0.1:1", "127.0.0.1", 1),
            ("[::1]:24224", "::1", 24224),
            ("[fe80::1:2]:80", "fe80::1:2", 80),
            ("[::ffff:1.2.3.4]:80", "::ffff:1.2.3.4", 80),
        ];
        for &(input, host, port) in ok {
            let want = Target {
                host: host.to_string(),
                port,
            };
            assert_eq!(parse_target(input), Ok(want.clone()), "input {input:?}");
            // Display gives back something parse_target reads as the same target.
            assert_eq!(want.to_string(), input, "display of {input:?}");
        }
        let long_label = format!("{}:1", "a".repeat(64));
        let err: &[(&str, &str)] = &[
            ("fluentd", "missing port (use HOST:PORT)"),
            ("fluentd:", "missing port"),
            ("[::1]", "missing port (use [IPv6]:PORT)"),
            ("[::1]:", "missing port"),
            ("fluentd:0", "port 0 is out of range 1-65535"),
            ("fluentd:70000", "port 70000 is out of range 1-65535"),
            ("fluentd:99999999999", "out of range"),
            ("fluentd:http", "invalid port \"http\""),
            ("fluentd:+80", "invalid port"),
            ("::1:24224", "an IPv6 address must be in brackets"),
            ("::1", "an IPv6 address must be in brackets"),
            ("fe80::1:24224", "must be in brackets"),
            ("[::1:24224", "missing ']'"),
            ("[fluentd]:24224", "\"fluentd\" is not an IPv6 address"),
            ("[1.2.3.4]:24224", "is not an IPv6 address"),
            (":24224", "missing host"),
            ("999.1.1.1:24224", "\"999.1.1.1\" is not an IPv4 address"),
            ("1.2.3:24224", "is not an IPv4 address"),
            ("bad host:1", "is not a valid host name"),
            ("-lead:1", "is not a valid host name"),
            ("trail-:1", "is not a valid host name"),
            ("a..b:1", "is not a valid host name"),
            ("http://x:1", "must be in brackets"),
            (&long_label, "is not a valid host name"),
            ("", "missing port"),
        ];
        for &(input, want) in err {
            match parse_target(input) {
                Err(e) => {
                    assert!(e.contains(want), "input {input:?}: {e:?} lacks {want:?}");
                    assert!(
                        e.starts_with(&format!("invalid address {input:?}: ")),
                        "{e:?}"
                    );
                }
                Ok(t) => panic!("input {input:?} parsed as {t:?}"),
            }
        }
    }

    /// Asserts that parsing failed with an error that starts with `want`.
    fn assert_usage_error(got: Result<Command, UsageError>, want: &str, case: &dyn fmt::Debug) {
        match got {
            Err(e) => assert!(e.to_string().starts_with(want), "{case:?}: {e}"),
            Ok(c) => panic!("{case:?} parsed as {c:?}"),
        }
    }

    /// Arguments and environment of one table row.
    type Args = &'static [&'static str];
    type EnvTable = &'static [(&'static str, &'static str)];

    /// Runs `parse` over string arguments and an environment table.
    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, UsageError> {
        run_with_config(args, env, Err("no config file in this test"))
    }

    /// A config reader for tests: every path reads as `file` (pairs, or the reader's error).
    fn reader(
        file: Result<&[(&str, &str)], &str>,
    ) -> impl Fn(&Path) -> Result<Vec<(String, String)>, String> {
        let file: Result<Vec<(String, String)>, String> = file
            .map(|pairs| {
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .map_err(str::to_string);
        move |_: &Path| file.clone()
    }

    /// `run`, with `file` as what any `--config` file reads as.
    fn run_with_config(
        args: &[&str],
        env: &[(&str, &str)],
        file: Result<&[(&str, &str)], &str>,
    ) -> Result<Command, UsageError> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        parse(args.iter().map(OsString::from), &lookup, &reader(file))
    }

    fn forward(args: &[&str], env: &[(&str, &str)]) -> ForwardArgs {
        match run(args, env) {
            Ok(Command::Forward(f)) => f,
            other => panic!("args {args:?} env {env:?}: {other:?}"),
        }
    }

    fn defaults() -> ForwardArgs {
        ForwardArgs {
            audit_log_path: PathBuf::from("/auditlog/audit.log"),
            mem_buf_limit: 200_000_000,
            log_level: LevelFilter::Info,
            backoff_max: Duration::from_secs(10),
            target: Some(Target {
                host: "fluentd".to_string(),
                port: 24224,
            }),
            kube: None,
            plaintext: false,
            tls: TlsArgs {
                ca: PathBuf::from("/fluent-bit/etc/ssl/ca.crt"),
                cert: PathBuf::from("/fluent-bit/etc/ssl/audittailer-client.crt"),
                key: PathBuf::from("/fluent-bit/etc/ssl/audittailer-client.key"),
                vhost: "kubernetes-audit-tailer".to_string(),
                verify_hostname: true,
            },
            shared_key: None,
            self_hostname: None,
            user_auth: None,
            compress: Compress::None,
            proxy: None,
            connect_timeout: Duration::from_secs(10),
            position_file: PathBuf::from("/auditlog/.audit-forwarder.pos"),
            tag: "audit".to_string(),
            read_from_head: true,
            max_line_size: 10_000_000,
            max_held_bytes: 1_000_000_000,
            ack_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(60),
            metrics_address: None,
            fluent_log_level: None,
        }
    }

    const REQUIRED: &[&str] = &["--target", "fluentd:24224"];

    #[test]
    fn cli_defaults() {
        let got = forward(REQUIRED, &[]);
        assert_eq!(got, defaults());
        // Spelled out, because defaults() is also the base of every other expectation: TLS
        // is on, with metal-stack's file layout, and nothing else is switched on.
        assert!(!got.plaintext);
        assert_eq!(got.tls.ca, Path::new("/fluent-bit/etc/ssl/ca.crt"));
        assert_eq!(
            got.tls.cert,
            Path::new("/fluent-bit/etc/ssl/audittailer-client.crt")
        );
        assert_eq!(
            got.tls.key,
            Path::new("/fluent-bit/etc/ssl/audittailer-client.key")
        );
        assert_eq!(got.tls.vhost, "kubernetes-audit-tailer");
        assert!(got.tls.verify_hostname);
        assert_eq!(got.compress, Compress::None);
        assert_eq!(got.proxy, None);
        assert_eq!(got.shared_key, None);
        assert_eq!(got.connect_timeout, Duration::from_secs(10));
        // The required setting from the environment alone.
        assert_eq!(
            forward(&[], &[("AUDIT_TARGET", "fluentd:24224")]),
            defaults()
        );
    }

    type Edit = fn(&mut ForwardArgs);

    /// One setting per row: its flag, a value, and what it changes. Each row is run as
    /// `--flag value`, `--flag=value`, and through the environment.
    const SETTINGS: &[(&str, &str, Edit)] = &[
        ("audit-log-path", "/var/log/kube/audit.log", |f| {
            f.audit_log_path = "/var/log/kube/audit.log".into();
            f.position_file = "/var/log/kube/.audit-forwarder.pos".into();
        }),
        ("mem-buf-limit", "64MB", |f| f.mem_buf_limit = 64_000_000),
        ("log-level", "DEBUG", |f| f.log_level = LevelFilter::Debug),
        ("backoff-timer", "1m30s", |f| {
            f.backoff_max = Duration::from_secs(90)
        }),
        ("target", "[::1]:9880", |f| {
            f.target = Some(Target {
                host: "::1".to_string(),
                port: 9880,
            })
        }),
        ("plaintext", "1", |f| f.plaintext = true),
        ("tls-basedir", "/etc/audit/tls", |f| {
            f.tls.ca = "/etc/audit/tls/ca.crt".into();
            f.tls.cert = "/etc/audit/tls/audittailer-client.crt".into();
            f.tls.key = "/etc/audit/tls/audittailer-client.key".into();
        }),
        ("tls-ca-file", "root.pem", |f| {
            f.tls.ca = "/fluent-bit/etc/ssl/root.pem".into()
        }),
        ("tls-crt-file", "/certs/client.pem", |f| {
            f.tls.cert = "/certs/client.pem".into()
        }),
        ("tls-key-file", "keys/client.key", |f| {
            f.tls.key = "/fluent-bit/etc/ssl/keys/client.key".into()
        }),
        ("tls-vhost", "tailer.example.org", |f| {
            f.tls.vhost = "tailer.example.org".to_string()
        }),
        ("tls-verify-hostname", "false", |f| {
            f.tls.verify_hostname = false
        }),
        ("shared-key", "s3cret", |f| {
            f.shared_key = Some(SharedKey::Value("s3cret".to_string()))
        }),
        ("shared-key-file", "/secrets/key", |f| {
            f.shared_key = Some(SharedKey::File("/secrets/key".into()))
        }),
        ("self-hostname", "apiserver-0", |f| {
            f.self_hostname = Some("apiserver-0".to_string())
        }),
        ("compress", "GZIP", |f| f.compress = Compress::Gzip),
        ("konnectivity-uds-socket", "/run/konnectivity.sock", |f| {
            f.proxy = Some(Proxy::Uds {
                socket: "/run/konnectivity.sock".into(),
            })
        }),
        ("proxy-host", "proxy.example.org", |f| {
            f.proxy = Some(Proxy::Mtls {
                host: "proxy.example.org".to_string(),
                port: 9443,
                ca: "/proxy/ca/ca.crt".into(),
                cert: "/proxy/client/tls.crt".into(),
                key: "/proxy/client/tls.key".into(),
            })
        }),
        ("connect-timeout", "1.5s", |f| {
            f.connect_timeout = Duration::from_millis(1500)
        }),
        ("position-file", "/data/pos", |f| {
            f.position_file = "/data/pos".into()
        }),
        ("tag", "k8s.audit", |f| f.tag = "k8s.audit".to_string()),
        ("read-from-head", "FALSE", |f| f.read_from_head = false),
        ("max-line-size", "1.5m", |f| f.max_line_size = 1_500_000),
        ("max-held-bytes", "300M", |f| f.max_held_bytes = 300_000_000),
        ("ack-timeout", "2.5s", |f| {
            f.ack_timeout = Duration::from_millis(2500)
        }),
        ("shutdown-timeout", "0", |f| {
            f.shutdown_timeout = Duration::ZERO
        }),
        ("stats-interval", "300ms", |f| {
            f.stats_interval = Duration::from_millis(300)
        }),
        ("metrics-address", "0.0.0.0:9090", |f| {
            f.metrics_address = Some("0.0.0.0:9090".to_string())
        }),
    ];

    #[test]
    fn cli_every_setting_from_flag_and_env() {
        for &(flag, value, edit) in SETTINGS {
            let mut want = defaults();
            edit(&mut want);

            // Boolean flags take a value only with '=' (see cli_boolean_flags).
            if !matches!(flag, "plaintext" | "read-from-head" | "tls-verify-hostname") {
                let mut args = REQUIRED.to_vec();
                let long = format!("--{flag}");
                args.extend([long.as_str(), value]);
                assert_eq!(forward(&args, &[]), want, "--{flag} {value}");
            }

            let mut args = REQUIRED.to_vec();
            let joined = format!("--{flag}={value}");
            args.push(&joined);
            assert_eq!(forward(&args, &[]), want, "{joined}");

            let var = env_name(flag);
            let mut env = vec![("AUDIT_TARGET", "fluentd:24224")];
            env.retain(|(k, _)| *k != var);
            env.push((&var, value));
            assert_eq!(forward(&[], &env), want, "{var}={value}");

            let mut file = vec![("target", "fluentd:24224")];
            file.retain(|(k, _)| *k != flag);
            file.push((flag, value));
            let got = run_with_config(&["-c", "/etc/af.yaml"], &[], Ok(&file));
            assert_eq!(got, Ok(Command::Forward(want)), "config {flag}: {value}");
        }
    }

    #[test]
    fn cli_flag_beats_env() {
        // A valid environment value is overridden ...
        let env = [
            ("AUDIT_TARGET", "other:1"),
            ("AUDIT_TAG", "from-env"),
            ("AUDIT_READ_FROM_HEAD", "true"),
        ];
        let args = [REQUIRED, &["--tag", "from-flag", "--read-from-head=false"]].concat();
        let mut want = defaults();
        want.tag = "from-flag".to_string();
        want.read_from_head = false;
        assert_eq!(forward(&args, &env), want);

        // ... and an invalid one is not even looked at.
        let env = [("AUDIT_MEM_BUF_LIMIT", "12Q"), ("AUDIT_PLAINTEXT", "no")];
        let args = [REQUIRED, &["--mem-buf-limit", "100M", "--plaintext"]].concat();
        let mut want = defaults();
        want.mem_buf_limit = 100_000_000;
        want.plaintext = true;
        assert_eq!(forward(&args, &env), want);

        // The last of repeated flags wins.
        let args = [REQUIRED, &["--tag", "a", "--tag=b"]].concat();
        assert_eq!(forward(&args, &[]).tag, "b");
    }

    #[test]
    fn cli_boolean_flags() {
        let cases: &[(&[&str], bool)] = &[
            (&["--read-from-head"], true),
            (&["--read-from-head=true"], true),
            (&["--read-from-head=TRUE"], true),
            (&["--read-from-head=1"], true),
            (&["--read-from-head=false"], false),
            (&["--read-from-head=False"], false),
            (&["--read-from-head=0"], false),
            (&["--read-from-head=0", "--read-from-head"], true),
        ];
        for &(extra, want) in cases {
            let args = [REQUIRED, extra].concat();
            assert_eq!(forward(&args, &[]).read_from_head, want, "{extra:?}");
        }
    }

    #[test]
    fn cli_position_file_default_follows_log_path() {
        let cases: &[(Args, EnvTable, &str)] = &[
            (&[], &[], "/auditlog/.audit-forwarder.pos"),
            (
                &["--audit-log-path", "/var/log/apiserver/audit.log"],
                &[],
                "/var/log/apiserver/.audit-forwarder.pos",
            ),
            (
                &[],
                &[("AUDIT_AUDIT_LOG_PATH", "/logs/a.json")],
                "/logs/.audit-forwarder.pos",
            ),
            (&["--audit-log-path=audit.log"], &[], ".audit-forwarder.pos"),
            (
                &["--audit-log-path=logs/audit.log"],
                &[],
                "logs/.audit-forwarder.pos",
            ),
            (
                &["--audit-log-path=/a/audit.log", "--position-file=/b/pos"],
                &[],
                "/b/pos",
            ),
            (
                &["--audit-log-path=/a/audit.log"],
                &[("AUDIT_POSITION_FILE", "/c/pos")],
                "/c/pos",
            ),
        ];
        for &(extra, env, want) in cases {
            let args = [REQUIRED, extra].concat();
            assert_eq!(
                forward(&args, env).position_file,
                PathBuf::from(want),
                "{extra:?} {env:?}"
            );
        }
    }

    /// Whatever is wrong around a secret flag or its variable, the error names the flag or
    /// variable and never shows the value.
    #[test]
    fn cli_secret_values_never_appear_in_errors() {
        use std::os::unix::ffi::OsStringExt;
        const SECRET: &str = "hunter2";
        let secret = || OsString::from(SECRET);
        let non_utf8 = || OsString::from_vec(b"hunter2\xfe".to_vec());
        // (mode, secret flag, its value, other arguments, other environment, error start)
        type Case = (
            &'static str,
            &'static str,
            fn() -> OsString,
            &'static [&'static str],
            EnvTable,
            &'static str,
        );
        let mut cases: Vec<Case> = Vec::new();
        for mode in ["forward", "tailer"] {
            cases.extend_from_slice(&[
                (
                    mode,
                    "shared-key",
                    non_utf8,
                    &[],
                    &[],
                    "{label}: is not valid UTF-8",
                ),
                (
                    mode,
                    "shared-key",
                    secret,
                    &["--shared-key-file=/k"],
                    &[],
                    "{label}",
                ),
            ]);
        }
        cases.extend_from_slice(&[
            (
                "forward",
                "password",
                non_utf8,
                &["--shared-key=k", "--username=u"],
                &[],
                "{label}: is not valid UTF-8",
            ),
            (
                "forward",
                "password",
                secret,
                &["--shared-key=k"],
                &[],
                "{label}: needs",
            ),
            (
                "forward",
                "password",
                secret,
                &["--username=u"],
                &[],
                "--username and {label}",
            ),
        ]);
        let mode_args = |mode: &str| -> Vec<OsString> {
            let args: &[&str] = match mode {
                "tailer" => &["tailer", "--listen=127.0.0.1:0"],
                _ => REQUIRED,
            };
            args.iter().map(OsString::from).collect()
        };
        for (mode, flag, value, extra, extra_env, want) in cases {
            for from_env in [false, true] {
                let mut args = mode_args(mode);
                args.extend(extra.iter().map(OsString::from));
                let mut env: Vec<(String, OsString)> = extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), OsString::from(v)))
                    .collect();
                let label = if from_env {
                    env.push((env_name(flag), value()));
                    env_name(flag)
                } else {
                    args.push(format!("--{flag}").into());
                    args.push(value());
                    format!("--{flag}")
                };
                let lookup =
                    |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                let err = match parse(args.clone(), &lookup, &reader(Err("none"))) {
                    Err(e) => e.to_string(),
                    Ok(c) => panic!("{args:?} {env:?}: parsed as {c:?}"),
                };
                let want = want.replace("{label}", &label);
                assert!(
                    err.starts_with(&want),
                    "{args:?} {env:?}: {err:?}, want {want:?}"
                );
                assert!(
                    !err.contains(SECRET),
                    "{args:?} {env:?}: the secret shows: {err:?}"
                );
            }
        }
        // A stray argument right after a secret flag is most likely the secret itself.
        let forward_args = |a: &[&'static str]| [REQUIRED, a].concat();
        let tailer_args = |a: &[&'static str]| [&["tailer", "--listen=:1"][..], a].concat();
        for (args, flag) in [
            (forward_args(&["--password=", SECRET]), "--password"),
            (forward_args(&["--shared-key=", SECRET]), "--shared-key"),
            (
                forward_args(&["--shared-key", "k", "tailer"]),
                "--shared-key",
            ),
            (tailer_args(&["--shared-key=", SECRET]), "--shared-key"),
        ] {
            let err = run(&args, &[]).unwrap_err().to_string();
            let want = format!("unexpected argument after {flag} (not shown");
            assert!(err.starts_with(&want), "{args:?}: {err:?}");
            assert!(!err.contains(SECRET), "{args:?}: {err:?}");
        }
    }

    #[test]
    fn cli_non_utf8_values() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'/', 0xff, b'.', b'l']);
        let env = |_: &str| None;
        let args = |flag: &str| {
            let mut v: Vec<OsString> = REQUIRED.iter().map(OsString::from).collect();
            v.push(flag.into());
            v.push(bad());
            v
        };
        // Paths need not be UTF-8 ...
        match parse(args("--audit-log-path"), &env, &reader(Err("none"))) {
            Ok(Command::Forward(f)) => assert_eq!(f.audit_log_path, PathBuf::from(bad())),
            other => panic!("{other:?}"),
        }
        // ... everything else must be, and the error names the flag.
        let err = parse(args("--tag"), &env, &reader(Err("none")))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--tag: ") && err.contains("not valid UTF-8"),
            "{err}"
        );
    }

    #[test]
    fn cli_errors_name_the_flag_or_variable() {
        let cases: &[(Args, EnvTable, &str)] = &[
            (
                &["--mem-buf-limit", "12Q"],
                &[],
                "--mem-buf-limit: invalid size \"12Q\" (use a number with K, M, G, KB, MB or GB)",
            ),
            (
                &[],
                &[("AUDIT_MEM_BUF_LIMIT", "12Q")],
                "AUDIT_MEM_BUF_LIMIT: invalid size \"12Q\"",
            ),
            (
                &["--max-line-size=0"],
                &[],
                "--max-line-size: must be greater than 0",
            ),
            (&["--max-line-size=x"], &[], "--max-line-size: invalid size"),
            (
                &["--log-level=loud"],
                &[],
                "--log-level: invalid log level \"loud\"",
            ),
            (
                &[],
                &[("AUDIT_LOG_LEVEL", "")],
                "AUDIT_LOG_LEVEL: invalid log level",
            ),
            (
                &["--backoff-timer", "10"],
                &[],
                "--backoff-timer: missing unit",
            ),
            (
                &["--backoff-timer=0s"],
                &[],
                "--backoff-timer: must be greater than 0",
            ),
            (
                &[],
                &[("AUDIT_BACKOFF_TIMER", "-1s")],
                "AUDIT_BACKOFF_TIMER: negative",
            ),
            (
                &["--ack-timeout=0"],
                &[],
                "--ack-timeout: must be greater than 0",
            ),
            (
                &[],
                &[("AUDIT_ACK_TIMEOUT", "1y")],
                "AUDIT_ACK_TIMEOUT: unknown unit \"y\"",
            ),
            (
                &["--shutdown-timeout=soon"],
                &[],
                "--shutdown-timeout: invalid duration",
            ),
            (
                &["--stats-interval=0ms"],
                &[],
                "--stats-interval: must be greater than 0",
            ),
            (
                &["--target=fluentd"],
                &[],
                "--target: invalid address \"fluentd\": missing port",
            ),
            (&["--target", "::1:24224"], &[], "--target: invalid address"),
            (
                &[],
                &[("AUDIT_TARGET", "x:0")],
                "AUDIT_TARGET: invalid address \"x:0\": port 0",
            ),
            (&["--tag="], &[], "--tag: must not be empty"),
            (&[], &[("AUDIT_TAG", "")], "AUDIT_TAG: must not be empty"),
            (
                &["--audit-log-path="],
                &[],
                "--audit-log-path: must not be empty",
            ),
            (
                &["--audit-log-path=/auditlog/"],
                &[],
                "--audit-log-path: \"/auditlog/\" must name a file",
            ),
            (
                &["--audit-log-path=/"],
                &[],
                "--audit-log-path: \"/\" must name a file",
            ),
            (
                &["--position-file="],
                &[],
                "--position-file: must not be empty",
            ),
            (
                &["--read-from-head=maybe"],
                &[],
                "--read-from-head: invalid boolean \"maybe\" (use true, false, 1 or 0)",
            ),
            (
                &[],
                &[("AUDIT_READ_FROM_HEAD", "yes")],
                "AUDIT_READ_FROM_HEAD: invalid boolean",
            ),
            (
                &["--plaintext=perhaps"],
                &[],
                "--plaintext: invalid boolean",
            ),
            (
                &["--tls-verify-hostname=no"],
                &[],
                "--tls-verify-hostname: invalid boolean \"no\"",
            ),
            (&["--tls-basedir="], &[], "--tls-basedir: must not be empty"),
            (
                &[],
                &[("AUDIT_TLS_CA_FILE", "")],
                "AUDIT_TLS_CA_FILE: must not be empty",
            ),
            (&["--tls-crt-file="], &[], "--tls-crt-file: must not be empty"),
            (&["--tls-key-file="], &[], "--tls-key-file: must not be empty"),
            (
                &["--tls-vhost=tailer:24224"],
                &[],
                "--tls-vhost: invalid host \"tailer:24224\": not an IPv6 address; give the \
                 host alone, without a port",
            ),
            (
                &[],
                &[("AUDIT_TLS_VHOST", "")],
                "AUDIT_TLS_VHOST: invalid host \"\": missing host",
            ),
            (
                &["--compress=zstd"],
                &[],
                "--compress: invalid compression \"zstd\" (use none or gzip)",
            ),
            (
                &[],
                &[("AUDIT_COMPRESS", "true")],
                "AUDIT_COMPRESS: invalid compression",
            ),
            (&["--shared-key="], &[], "--shared-key: must not be empty"),
            (
                &["--shared-key-file="],
                &[],
                "--shared-key-file: must not be empty",
            ),
            (
                &["--shared-key=k", "--shared-key-file=/k"],
                &[],
                "--shared-key and --shared-key-file are mutually exclusive",
            ),
            // Both sources of one secret are refused even when one is only in the
            // environment: the flag does not silently win over the other setting.
            (
                &["--shared-key-file=/k"],
                &[("AUDIT_SHARED_KEY", "k")],
                "AUDIT_SHARED_KEY (--shared-key) and --shared-key-file are mutually exclusive",
            ),
            (
                &[],
                &[("AUDIT_SHARED_KEY", "k"), ("AUDIT_SHARED_KEY_FILE", "/k")],
                "AUDIT_SHARED_KEY (--shared-key) and AUDIT_SHARED_KEY_FILE \
                 (--shared-key-file) are mutually exclusive",
            ),
            (&["--self-hostname="], &[], "--self-hostname: must not be empty"),
            (
                &["--shared-key=k", "--username=u"],
                &[],
                "--username: needs --password too (or AUDIT_PASSWORD)",
            ),
            (
                &["--shared-key=k"],
                &[("AUDIT_PASSWORD", "p")],
                "AUDIT_PASSWORD: needs --username too (or AUDIT_USERNAME)",
            ),
            (
                &["--username=u", "--password=p"],
                &[],
                "--username and --password: user authentication needs a shared key: set \
                 --shared-key or --shared-key-file too",
            ),
            (
                &["--password=p"],
                &[("AUDIT_USERNAME", "u")],
                "AUDIT_USERNAME (--username) and --password: user authentication needs a \
                 shared key",
            ),
            (
                &["--shared-key=k", "--username=", "--password=p"],
                &[],
                "--username: must not be empty",
            ),
            (
                &["--konnectivity-uds-socket=/s", "--proxy-host=p"],
                &[],
                "--konnectivity-uds-socket and --proxy-host are mutually exclusive",
            ),
            (
                &["--proxy-host=p"],
                &[("AUDIT_KONNECTIVITY_UDS_SOCKET", "/s")],
                "AUDIT_KONNECTIVITY_UDS_SOCKET (--konnectivity-uds-socket) and --proxy-host \
                 are mutually exclusive",
            ),
            (
                &["--konnectivity-uds-socket=/s"],
                &[("AUDIT_PROXY_HOST", "p")],
                "--konnectivity-uds-socket and AUDIT_PROXY_HOST (--proxy-host) are mutually \
                 exclusive",
            ),
            (
                &["--konnectivity-uds-socket="],
                &[],
                "--konnectivity-uds-socket: must not be empty",
            ),
            (
                &["--proxy-host=proxy:9443"],
                &[],
                "--proxy-host: invalid host \"proxy:9443\": not an IPv6 address",
            ),
            (
                &["--proxy-host=[::1"],
                &[],
                "--proxy-host: invalid host \"[::1\": missing ']'",
            ),
            (
                &["--proxy-host=[proxy]"],
                &[],
                "--proxy-host: invalid host \"[proxy]\": \"proxy\" is not an IPv6 address",
            ),
            (
                &[],
                &[("AUDIT_PROXY_HOST", "bad host")],
                "AUDIT_PROXY_HOST: invalid host \"bad host\": \"bad host\" is not a valid host name",
            ),
            (
                &["--proxy-port=0"],
                &[],
                "--proxy-port: port 0 is out of range 1-65535",
            ),
            (
                &[],
                &[("AUDIT_PROXY_PORT", "https")],
                "AUDIT_PROXY_PORT: invalid port \"https\"",
            ),
            (&["--proxy-port="], &[], "--proxy-port: invalid port \"\""),
            (
                &["--proxy-ca-file="],
                &[],
                "--proxy-ca-file: must not be empty",
            ),
            (
                &["--proxy-client-crt-file="],
                &[],
                "--proxy-client-crt-file: must not be empty",
            ),
            (
                &["--proxy-client-key-file="],
                &[],
                "--proxy-client-key-file: must not be empty",
            ),
            (
                &["--connect-timeout=0s"],
                &[],
                "--connect-timeout: must be greater than 0",
            ),
            (
                &[],
                &[("AUDIT_CONNECT_TIMEOUT", "10")],
                "AUDIT_CONNECT_TIMEOUT: missing unit",
            ),
            // Tailer-only flags are unknown to the forwarder.
            (&["--client-ca=/ca"], &[], "--client-ca: unknown flag"),
            (
                &["--tls-max-version=1.2"],
                &[],
                "--tls-max-version: unknown flag",
            ),
            (&["--bogus"], &[], "--bogus: unknown flag (see --help)"),
            (&["--bogus=1"], &[], "--bogus: unknown flag"),
            (&["-x"], &[], "-x: unknown flag"),
            (&["--listen=:1"], &[], "--listen: unknown flag"),
            (&["--tag"], &[], "--tag: missing value"),
            (&["extra"], &[], "unexpected argument \"extra\""),
            (
                &["--read-from-head", "false"],
                &[],
                "unexpected argument \"false\"",
            ),
            (
                &["--tag=x", "tailer"],
                &[],
                "tailer: the subcommand must be the first argument",
            ),
        ];
        for &(extra, env, want) in cases {
            // The target comes from the environment unless a case sets it, so that cases
            // about AUDIT_TARGET are not shadowed by a --target flag.
            let env = [env, &[("AUDIT_TARGET", "fluentd:24224")]].concat();
            match run(extra, &env) {
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.starts_with(want), "{extra:?} {env:?}: {e:?} vs {want:?}");
                    assert!(!e.contains('\n'), "{e:?}");
                }
                Ok(c) => panic!("{extra:?} {env:?} parsed as {c:?}"),
            }
        }
    }

    #[test]
    fn cli_target_errors() {
        // An empty target is a mistake, not a request for discovery.
        let cases: &[(Args, EnvTable, &str)] = &[
            (
                &["--tag=x"],
                &[("AUDIT_TARGET", "")],
                "AUDIT_TARGET: invalid address",
            ),
            (&["--target="], &[], "--target: invalid address \"\""),
        ];
        for &(args, env, want) in cases {
            assert_usage_error(run(args, env), want, &args);
        }
    }

    #[test]
    fn cli_tls_file_names_join_the_basedir_unless_absolute() {
        // (arguments, environment, ca, cert, key)
        let cases: &[(Args, EnvTable, &str, &str, &str)] = &[
            (
                &["--tls-basedir=/certs"],
                &[("AUDIT_TLS_CA_FILE", "/etc/ssl/ca.pem")],
                "/etc/ssl/ca.pem",
                "/certs/audittailer-client.crt",
                "/certs/audittailer-client.key",
            ),
            (
                &[],
                &[
                    ("AUDIT_TLS_BASEDIR", "/env/ssl/"),
                    ("AUDIT_TLS_CRT_FILE", "sub/c.crt"),
                    ("AUDIT_TLS_KEY_FILE", "/abs/c.key"),
                ],
                "/env/ssl/ca.crt",
                "/env/ssl/sub/c.crt",
                "/abs/c.key",
            ),
            // A relative base directory stays relative: it is the caller's working directory
            // that decides, not this parser.
            (
                &["--tls-basedir", "ssl", "--tls-ca-file", "my-ca.crt"],
                &[],
                "ssl/my-ca.crt",
                "ssl/audittailer-client.crt",
                "ssl/audittailer-client.key",
            ),
            // The flag wins over the environment for the base directory and for each name.
            (
                &["--tls-basedir=/flag", "--tls-key-file=k.pem"],
                &[
                    ("AUDIT_TLS_BASEDIR", "/env"),
                    ("AUDIT_TLS_KEY_FILE", "env.key"),
                ],
                "/flag/ca.crt",
                "/flag/audittailer-client.crt",
                "/flag/k.pem",
            ),
            // Resolved even with --plaintext, where they are not used.
            (
                &["--plaintext", "--tls-basedir=/p"],
                &[],
                "/p/ca.crt",
                "/p/audittailer-client.crt",
                "/p/audittailer-client.key",
            ),
        ];
        for &(extra, env, ca, cert, key) in cases {
            let args = [REQUIRED, extra].concat();
            let tls = forward(&args, env).tls;
            assert_eq!(
                (tls.ca.as_path(), tls.cert.as_path(), tls.key.as_path()),
                (Path::new(ca), Path::new(cert), Path::new(key)),
                "{extra:?} {env:?}"
            );
        }
    }

    #[test]
    fn cli_tls_vhost_and_plaintext_combinations() {
        let cases: &[(Args, EnvTable, Edit)] = &[
            (&["--tls-vhost=10.0.0.7"], &[], |f| {
                f.tls.vhost = "10.0.0.7".to_string()
            }),
            (&["--tls-vhost=[fd00::7]"], &[], |f| {
                f.tls.vhost = "fd00::7".to_string()
            }),
            (&["--tls-vhost=fd00::7"], &[], |f| {
                f.tls.vhost = "fd00::7".to_string()
            }),
            // TLS-only settings are accepted, and ignored by the caller, with --plaintext.
            (&["--plaintext", "--tls-verify-hostname=false"], &[], |f| {
                f.plaintext = true;
                f.tls.verify_hostname = false;
            }),
            (&["--plaintext", "--compress", "gzip"], &[], |f| {
                f.plaintext = true;
                f.compress = Compress::Gzip;
            }),
            (&["--compress=none"], &[("AUDIT_COMPRESS", "gzip")], |_| {}),
            // A later --plaintext=false undoes an earlier --plaintext.
            (&["--plaintext", "--plaintext=0"], &[], |_| {}),
            (
                &["--plaintext=false"],
                &[("AUDIT_PLAINTEXT", "true")],
                |_| {},
            ),
            (
                &["--tls-verify-hostname"],
                &[("AUDIT_TLS_VERIFY_HOSTNAME", "0")],
                |_| {},
            ),
            (&[], &[("AUDIT_TLS_VERIFY_HOSTNAME", "0")], |f| {
                f.tls.verify_hostname = false
            }),
        ];
        for &(extra, env, edit) in cases {
            let mut want = defaults();
            edit(&mut want);
            let args = [REQUIRED, extra].concat();
            assert_eq!(forward(&args, env), want, "{extra:?} {env:?}");
        }
    }

    #[test]
    fn cli_shared_key_and_user_auth() {
        let user = |username: &str, password: &str| {
            Some(UserAuth {
                username: username.to_string(),
                password: password.to_string(),
            })
        };
        let value = |k: &str| Some(SharedKey::Value(k.to_string()));
        let file = |p: &str| Some(SharedKey::File(PathBuf::from(p)));
        // (arguments, environment, shared key, user authentication)
        let cases: Vec<(Args, EnvTable, Option<SharedKey>, Option<UserAuth>)> = vec![
            (&[], &[], None, None),
            (&["--shared-key", "k1"], &[], value("k1"), None),
            (&[], &[("AUDIT_SHARED_KEY", "k2")], value("k2"), None),
            (
                &[],
                &[("AUDIT_SHARED_KEY_FILE", "/s/key")],
                file("/s/key"),
                None,
            ),
            (
                &["--shared-key=k", "--username=alice", "--password=pw"],
                &[],
                value("k"),
                user("alice", "pw"),
            ),
            // The secret parts from the environment, as the help recommends.
            (
                &["--shared-key-file=/s/key", "--username=bob"],
                &[("AUDIT_PASSWORD", "from-env")],
                file("/s/key"),
                user("bob", "from-env"),
            ),
            (
                &[],
                &[
                    ("AUDIT_SHARED_KEY", "k"),
                    ("AUDIT_USERNAME", "u"),
                    ("AUDIT_PASSWORD", "p"),
                ],
                value("k"),
                user("u", "p"),
            ),
            // A flag still wins over the same setting's variable.
            (
                &["--shared-key=flag", "--password=flag-pw"],
                &[
                    ("AUDIT_SHARED_KEY", "env"),
                    ("AUDIT_USERNAME", "u"),
                    ("AUDIT_PASSWORD", "env-pw"),
                ],
                value("flag"),
                user("u", "flag-pw"),
            ),
        ];
        for (extra, env, shared_key, user_auth) in cases {
            let args = [REQUIRED, extra].concat();
            let got = forward(&args, env);
            assert_eq!(
                (got.shared_key, got.user_auth),
                (shared_key, user_auth),
                "{extra:?} {env:?}"
            );
        }
    }

    #[test]
    fn cli_secrets_are_not_in_debug_output() {
        let args = [
            REQUIRED,
            &[
                "--shared-key=TOPSECRETKEY",
                "--username=alice",
                "--password=HUNTER2PW",
            ],
        ]
        .concat();
        let debug = format!("{:?}", forward(&args, &[]));
        assert!(!debug.contains("TOPSECRETKEY"), "{debug}");
        assert!(!debug.contains("HUNTER2PW"), "{debug}");
        // Redacted, not dropped: the settings are still visible as set.
        assert!(debug.contains("Value(<redacted>)"), "{debug}");
        assert!(debug.contains("alice"), "{debug}");
        // A key file's path is no secret.
        let args = [REQUIRED, &["--shared-key-file=/s/key"]].concat();
        let debug = format!("{:?}", forward(&args, &[]));
        assert!(debug.contains("File(\"/s/key\")"), "{debug}");
    }

    #[test]
    fn cli_proxy() {
        let mtls = |host: &str, port, ca: &str, cert: &str, key: &str| {
            Some(Proxy::Mtls {
                host: host.to_string(),
                port,
                ca: ca.into(),
                cert: cert.into(),
                key: key.into(),
            })
        };
        let uds = |socket: &str| {
            Some(Proxy::Uds {
                socket: socket.into(),
            })
        };
        let (ca, crt, key) = (
            "/proxy/ca/ca.crt",
            "/proxy/client/tls.crt",
            "/proxy/client/tls.key",
        );
        let cases: Vec<(Args, EnvTable, Option<Proxy>)> = vec![
            (&[], &[], None),
            // The proxy's own settings mean nothing without a proxy host.
            (&["--proxy-port=1", "--proxy-ca-file=/x"], &[], None),
            (
                &[
                    "--konnectivity-uds-socket",
                    "/etc/srv/konnectivity/uds.sock",
                ],
                &[],
                uds("/etc/srv/konnectivity/uds.sock"),
            ),
            (
                &[],
                &[("AUDIT_KONNECTIVITY_UDS_SOCKET", "/run/k.sock")],
                uds("/run/k.sock"),
            ),
            // The proxy host's file settings do not apply to the socket.
            (
                &["--konnectivity-uds-socket=/s", "--proxy-port=1"],
                &[],
                uds("/s"),
            ),
            (
                &["--proxy-host=konnectivity.example.org"],
                &[],
                mtls("konnectivity.example.org", 9443, ca, crt, key),
            ),
            (
                &["--proxy-host=[fd00::1]", "--proxy-port=8132"],
                &[],
                mtls("fd00::1", 8132, ca, crt, key),
            ),
            (
                &[
                    "--proxy-host=10.1.2.3",
                    "--proxy-ca-file=/p/ca.pem",
                    "--proxy-client-crt-file=c.pem",
                    "--proxy-client-key-file=/p/k.pem",
                ],
                &[],
                // Not joined to --tls-basedir: that one is for the target's certificates.
                mtls("10.1.2.3", 9443, "/p/ca.pem", "c.pem", "/p/k.pem"),
            ),
            (
                &[],
                &[
                    ("AUDIT_PROXY_HOST", "proxy"),
                    ("AUDIT_PROXY_PORT", "65535"),
                    ("AUDIT_PROXY_CA_FILE", "/e/ca"),
                    ("AUDIT_PROXY_CLIENT_CRT_FILE", "/e/crt"),
                    ("AUDIT_PROXY_CLIENT_KEY_FILE", "/e/key"),
                ],
                mtls("proxy", 65535, "/e/ca", "/e/crt", "/e/key"),
            ),
            (
                &["--proxy-host=flag", "--proxy-port=1"],
                &[("AUDIT_PROXY_HOST", "env"), ("AUDIT_PROXY_PORT", "2")],
                mtls("flag", 1, ca, crt, key),
            ),
        ];
        for (extra, env, want) in cases {
            let args = [REQUIRED, extra].concat();
            assert_eq!(forward(&args, env).proxy, want, "{extra:?} {env:?}");
        }
    }

    #[test]
    fn cli_mem_buf_limit_must_hold_two_lines() {
        // Defaults: 2 x 10M + 1 MiB = 21048576.
        let ok: &[&[&str]] = &[
            &["--mem-buf-limit=21048576"],
            &["--max-line-size=99M"],
            &["--mem-buf-limit=4M", "--max-line-size=1M"],
        ];
        for &extra in ok {
            let args = [REQUIRED, extra].concat();
            forward(&args, &[]);
        }
        let err: &[(Args, EnvTable, &str)] = &[
            (
                &["--mem-buf-limit=21048575"],
                &[],
                "--mem-buf-limit: 21048575 bytes is too small: it must be at least \
                 2 x --max-line-size (10000000) + 1 MiB = 21048576 bytes",
            ),
            (
                &["--max-line-size=100M"],
                &[],
                "--mem-buf-limit: 200000000 bytes is too small: it must be at least \
                 2 x --max-line-size (100000000) + 1 MiB = 201048576 bytes",
            ),
            (
                &[],
                &[("AUDIT_MEM_BUF_LIMIT", "1M"), ("AUDIT_MAX_LINE_SIZE", "1K")],
                "AUDIT_MEM_BUF_LIMIT (--mem-buf-limit): 1000000 bytes is too small: it must \
                 be at least 2 x AUDIT_MAX_LINE_SIZE (--max-line-size) (1000) + 1 MiB = \
                 1050576 bytes",
            ),
            (
                &["--max-line-size=18446744073709551615"],
                &[],
                "= 18446744073709551615 bytes",
            ),
        ];
        for &(extra, env, want) in err {
            let args = [REQUIRED, extra].concat();
            match run(&args, env) {
                Err(e) => assert!(e.to_string().contains(want), "{extra:?}: {e}"),
                Ok(c) => panic!("{extra:?} parsed as {c:?}"),
            }
        }
    }

    #[test]
    fn cli_help_and_version() {
        let cases: &[(&[&str], Command)] = &[
            (&["--help"], Command::Help(HELP)),
            (&["-h"], Command::Help(HELP)),
            // Help wins over missing required settings and anything after it.
            (&["--target=f:1", "-h", "--bogus"], Command::Help(HELP)),
            (&["--version"], Command::Version),
            (&["-V"], Command::Version),
            (&["tailer", "--help"], Command::Help(TAILER_HELP)),
            (&["tailer", "-h"], Command::Help(TAILER_HELP)),
            (&["tailer", "-V"], Command::Version),
        ];
        for (args, want) in cases {
            assert_eq!(run(args, &[]).as_ref(), Ok(want), "{args:?}");
        }
        let commit = env!("AUDIT_FORWARDER_COMMIT_ID");
        assert!(!commit.is_empty());
        assert_eq!(
            VERSION,
            format!(
                "audit-forwarder {} (commit {commit})",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    /// The text after `--` of a help line that documents a flag, with or without a short
    /// flag before it (`-l, --audit-log-path PATH`).
    fn long_flag(line: &str) -> Option<&str> {
        let line = line.trim_start();
        let line = match line.as_bytes() {
            [b'-', short, b',', b' ', ..] if short.is_ascii_alphabetic() => &line[4..],
            _ => line,
        };
        line.strip_prefix("--")
    }

    #[test]
    fn cli_help_lists_every_flag_default_and_variable() {
        let forward: &[(&str, &str)] = &[
            ("target", "default: none (discovery)"),
            ("kubecfg", "default: $HOME/.kube/config"),
            ("namespace", "default: kube-system"),
            ("service-name", "default: kubernetes-audit-tailer"),
            ("secret-name", "default: audittailer-client"),
            ("check-schedule", "default: */1 * * * *"),
            ("fluent-log-level", "default: info"),
            ("plaintext", "default: false"),
            ("tls-basedir", "default: /fluent-bit/etc/ssl"),
            ("tls-ca-file", "default: ca.crt"),
            ("tls-crt-file", "default: audittailer-client.crt"),
            ("tls-key-file", "default: audittailer-client.key"),
            ("tls-vhost", "default: kubernetes-audit-tailer"),
            ("tls-verify-hostname", "default: true"),
            ("shared-key", "default: none"),
            ("shared-key-file", "default: none"),
            ("self-hostname", "default: this machine's hostname"),
            ("username", "default: none"),
            ("password", "default: none"),
            ("compress", "default: none"),
            ("konnectivity-uds-socket", "default: none"),
            ("proxy-host", "default: none"),
            ("proxy-port", "default: 9443"),
            ("proxy-ca-file", "default: /proxy/ca/ca.crt"),
            ("proxy-client-crt-file", "default: /proxy/client/tls.crt"),
            ("proxy-client-key-file", "default: /proxy/client/tls.key"),
            ("connect-timeout", "default: 10s"),
            ("audit-log-path", "default: /auditlog/audit.log"),
            ("position-file", "default: .audit-forwarder.pos"),
            ("read-from-head", "default: true"),
            ("tag", "default: audit"),
            ("mem-buf-limit", "default: 200M"),
            ("max-line-size", "default: 10M"),
            ("max-held-bytes", "default: 1G"),
            ("ack-timeout", "default: 60s"),
            ("backoff-timer", "default: 10s"),
            ("shutdown-timeout", "default: 10s"),
            ("stats-interval", "default: 60s"),
            ("metrics-address", "default: none (off)"),
            ("log-level", "default: info"),
        ];
        let tailer: &[(&str, &str)] = &[
            ("listen", "required"),
            ("discard", "default: false"),
            ("log-level", "default: info"),
            ("tls-crt-file", "default: none"),
            ("tls-key-file", "default: none"),
            ("client-ca", "default: none"),
            ("tls-max-version", "default: 1.3"),
            ("shared-key", "default: none"),
            ("shared-key-file", "default: none"),
            ("self-hostname", "default: this machine's hostname"),
            ("max-clients", "default: 256"),
            ("client-timeout", "default: 30s"),
            ("idle-timeout", "default: 10m"),
            ("mem-budget", "default: 200M"),
            ("metrics-address", "default: none (off)"),
        ];
        for (help, flags) in [(HELP, forward), (TAILER_HELP, tailer)] {
            for &(flag, default) in flags {
                // The flag must be followed by its value or a space, so that --shared-key
                // does not find the line of --shared-key-file.
                let line = help
                    .lines()
                    .find(|l| {
                        let rest = long_flag(l).and_then(|l| l.strip_prefix(flag));
                        rest.is_some_and(|r| r.starts_with([' ', '[']))
                    })
                    .unwrap_or_else(|| panic!("no line for --{flag}"));
                let bracketed = format!("[{}]", env_name(flag));
                assert!(line.contains(&bracketed), "{line:?} lacks {bracketed}");
                // The default may wrap onto the next line.
                let at = help.find(line).expect("the line was found in help");
                let entry: String = help[at..].lines().take(2).collect();
                assert!(entry.contains(default), "{entry:?} lacks {default:?}");
            }
        }
        // The size rule names fluent-bit's decimal units.
        assert!(HELP.contains("K = KB = 1000"));
        // What the operator must know to pick these settings.
        let one_line = |help: &str| help.split_whitespace().collect::<Vec<_>>().join(" ");
        let forward_help = one_line(HELP);
        for phrase in [
            "keeps the verification of the certificate chain",
            "skips the check that the certificate is valid for the vhost name",
            "only in the CN",
            "gzip sends each chunk as one CompressedPackedForward message",
            "relative to; an absolute file name is used as it is",
        ] {
            assert!(forward_help.contains(phrase), "HELP lacks {phrase:?}");
        }
        let tailer_help = one_line(TAILER_HELP);
        assert!(tailer_help.contains("1.2 limits the server to TLS 1.2"));
        // Every flag the parsers accept is documented, and nothing more: the lists above
        // are complete.
        for (help, flags) in [(HELP, forward), (TAILER_HELP, tailer)] {
            let documented = help
                .lines()
                .filter_map(long_flag)
                .filter_map(|l| l.split([' ', '[', '=']).next())
                .filter(|f| !matches!(*f, "help" | "version" | "config"))
                .count();
            assert_eq!(documented, flags.len(), "{flags:?}");
        }
        // ... and each one listed is one the parser knows.
        let known = |args: &[&str]| match run(args, &[]) {
            Err(e) => !e.to_string().contains("unknown flag"),
            Ok(_) => true,
        };
        for &(flag, _) in forward {
            let arg = format!("--{flag}=x");
            assert!(known(&[REQUIRED, &[arg.as_str()]].concat()), "{arg}");
        }
        for &(flag, _) in tailer {
            let arg = format!("--{flag}=x");
            assert!(known(&["tailer", "--listen=a:1", &arg]), "tailer {arg}");
        }
        assert!(!known(&["tailer", "--listen=a:1", "--proxy-host=x"]));
    }

    #[test]
    fn cli_tailer() {
        let t = |listen: &str, discard, log_level| {
            Ok(Command::Tailer(TailerArgs {
                listen: listen.to_string(),
                discard,
                log_level,
                tls: None,
                shared_key: None,
                self_hostname: None,
                max_clients: 256,
                client_timeout: Duration::from_secs(30),
                idle_timeout: Duration::from_secs(600),
                mem_budget: 200_000_000,
                metrics_address: None,
            }))
        };
        let cases: &[(Args, EnvTable, Result<Command, UsageError>)] = &[
            (
                &["tailer", "--listen", "127.0.0.1:0"],
                &[],
                t("127.0.0.1:0", false, LevelFilter::Info),
            ),
            (
                &[
                    "tailer",
                    "--listen=[::1]:24224",
                    "--discard",
                    "--log-level=trace",
                ],
                &[],
                t("[::1]:24224", true, LevelFilter::Trace),
            ),
            (
                &["tailer"],
                &[
                    ("AUDIT_LISTEN", "localhost:24224"),
                    ("AUDIT_DISCARD", "TRUE"),
                    ("AUDIT_LOG_LEVEL", "warn"),
                ],
                t("localhost:24224", true, LevelFilter::Warn),
            ),
            (
                &["tailer", "--listen=a:1", "--discard=false"],
                &[("AUDIT_LISTEN", "b:2"), ("AUDIT_DISCARD", "1")],
                t("a:1", false, LevelFilter::Info),
            ),
        ];
        for (args, env, want) in cases {
            assert_eq!(&run(args, env), want, "{args:?} {env:?}");
        }

        let tls = |cert: &str, key: &str, client_ca: Option<&str>, max_version_12| {
            Some(TailerTls {
                cert: cert.into(),
                key: key.into(),
                client_ca: client_ca.map(PathBuf::from),
                max_version_12,
            })
        };
        // (arguments, environment, tls, shared key, self hostname)
        type TailerCase = (
            Args,
            EnvTable,
            Option<TailerTls>,
            Option<SharedKey>,
            Option<&'static str>,
        );
        let cases: Vec<TailerCase> = vec![
            (&[], &[], None, None, None),
            (
                &["--tls-crt-file=/t/tls.crt", "--tls-key-file", "/t/tls.key"],
                &[],
                tls("/t/tls.crt", "/t/tls.key", None, false),
                None,
                None,
            ),
            (
                &[],
                &[
                    ("AUDIT_TLS_CRT_FILE", "tls.crt"),
                    ("AUDIT_TLS_KEY_FILE", "tls.key"),
                    ("AUDIT_CLIENT_CA", "ca.crt"),
                    ("AUDIT_TLS_MAX_VERSION", "1.2"),
                ],
                // The tailer has no base directory: names are used as given.
                tls("tls.crt", "tls.key", Some("ca.crt"), true),
                None,
                None,
            ),
            (
                &[
                    "--tls-crt-file=/c",
                    "--tls-key-file=/k",
                    "--client-ca=/ca",
                    "--tls-max-version=1.3",
                ],
                &[("AUDIT_TLS_MAX_VERSION", "1.2")],
                tls("/c", "/k", Some("/ca"), false),
                None,
                None,
            ),
            (
                &[
                    "--tls-crt-file=/c",
                    "--tls-key-file=/k",
                    "--tls-max-version=1.2",
                ],
                &[],
                tls("/c", "/k", None, true),
                None,
                None,
            ),
            (
                &["--shared-key=k", "--self-hostname=tailer-0"],
                &[],
                None,
                Some(SharedKey::Value("k".to_string())),
                Some("tailer-0"),
            ),
            (
                &[],
                &[
                    ("AUDIT_SHARED_KEY_FILE", "/s/key"),
                    ("AUDIT_SELF_HOSTNAME", "env-host"),
                ],
                None,
                Some(SharedKey::File("/s/key".into())),
                Some("env-host"),
            ),
        ];
        for (extra, env, tls, shared_key, self_hostname) in cases {
            let args = [&["tailer", "--listen=a:1"], extra].concat();
            match run(&args, env) {
                Ok(Command::Tailer(got)) => {
                    assert_eq!(got.tls, tls, "{extra:?} {env:?}");
                    assert_eq!(got.shared_key, shared_key, "{extra:?} {env:?}");
                    assert_eq!(
                        got.self_hostname.as_deref(),
                        self_hostname,
                        "{extra:?} {env:?}"
                    );
                }
                other => panic!("{extra:?} {env:?}: {other:?}"),
            }
        }

        let err: &[(Args, EnvTable, &str)] = &[
            (&["tailer"], &[], "--listen is required"),
            (&["tailer", "--listen"], &[], "--listen: missing value"),
            (
                &["tailer", "--listen=nope"],
                &[],
                "--listen: invalid address \"nope\": missing port",
            ),
            (
                &["tailer", "--listen=::1:5"],
                &[],
                "--listen: invalid address",
            ),
            (
                &["tailer"],
                &[("AUDIT_LISTEN", "x:65536")],
                "AUDIT_LISTEN: invalid address \"x:65536\": port 65536 is out of range 0-65535",
            ),
            (
                &["tailer", "--listen=a:1", "--discard=2"],
                &[],
                "--discard: invalid boolean",
            ),
            (
                &["tailer", "--listen=a:1"],
                &[("AUDIT_DISCARD", "on")],
                "AUDIT_DISCARD: invalid boolean",
            ),
            (
                &["tailer", "--listen=a:1", "--log-level=verbose"],
                &[],
                "--log-level: invalid log level",
            ),
            (
                &["tailer", "--listen=a:1", "--target=f:1"],
                &[],
                "--target: unknown flag",
            ),
            (
                &["tailer", "--listen=a:1", "more"],
                &[],
                "unexpected argument \"more\"",
            ),
            (
                &["tailer", "--listen=a:1", "tailer"],
                &[],
                "unexpected argument \"tailer\"",
            ),
            (
                &["tailer", "--listen=a:1", "--tls-crt-file=/c"],
                &[],
                "--tls-crt-file: needs --tls-key-file too (or AUDIT_TLS_KEY_FILE): set both \
                 to listen with TLS, or neither",
            ),
            (
                &["tailer", "--listen=a:1"],
                &[("AUDIT_TLS_KEY_FILE", "/k")],
                "AUDIT_TLS_KEY_FILE: needs --tls-crt-file too (or AUDIT_TLS_CRT_FILE)",
            ),
            (
                &["tailer", "--listen=a:1", "--tls-crt-file="],
                &[],
                "--tls-crt-file: must not be empty",
            ),
            (
                &["tailer", "--listen=a:1", "--client-ca=/ca"],
                &[],
                "--client-ca: only valid with TLS: set --tls-crt-file and --tls-key-file too",
            ),
            (
                &["tailer", "--listen=a:1"],
                &[("AUDIT_CLIENT_CA", "/ca")],
                "AUDIT_CLIENT_CA: only valid with TLS",
            ),
            (
                &["tailer", "--listen=a:1", "--tls-max-version=1.2"],
                &[],
                "--tls-max-version: only valid with TLS",
            ),
            (
                &[
                    "tailer",
                    "--listen=a:1",
                    "--tls-crt-file=/c",
                    "--tls-key-file=/k",
                    "--tls-max-version=1.1",
                ],
                &[],
                "--tls-max-version: invalid TLS version \"1.1\" (use 1.2 or 1.3)",
            ),
            (
                &["tailer", "--listen=a:1", "--tls-max-version=TLSv1.3"],
                &[],
                "--tls-max-version: invalid TLS version",
            ),
            (
                &["tailer", "--listen=a:1"],
                &[("AUDIT_TLS_MAX_VERSION", "1")],
                "AUDIT_TLS_MAX_VERSION: invalid TLS version \"1\"",
            ),
            (
                &[
                    "tailer",
                    "--listen=a:1",
                    "--shared-key=k",
                    "--shared-key-file=/f",
                ],
                &[],
                "--shared-key and --shared-key-file are mutually exclusive",
            ),
            (
                &["tailer", "--listen=a:1", "--shared-key-file=/f"],
                &[("AUDIT_SHARED_KEY", "k")],
                "AUDIT_SHARED_KEY (--shared-key) and --shared-key-file are mutually exclusive",
            ),
            (
                &["tailer", "--listen=a:1", "--shared-key="],
                &[],
                "--shared-key: must not be empty",
            ),
            (
                &["tailer", "--listen=a:1"],
                &[("AUDIT_SELF_HOSTNAME", "")],
                "AUDIT_SELF_HOSTNAME: must not be empty",
            ),
            // Forwarder-only settings are unknown to the tailer.
            (
                &["tailer", "--listen=a:1", "--username=u"],
                &[],
                "--username: unknown flag",
            ),
            (
                &["tailer", "--listen=a:1", "--tls-basedir=/b"],
                &[],
                "--tls-basedir: unknown flag",
            ),
        ];
        for &(args, env, want) in err {
            assert_usage_error(run(args, env), want, &args);
        }
    }

    /// Short flag, long flag, a value, and arguments it needs to show an effect.
    const SHORT_FLAGS: &[(char, &str, &str, Args)] = &[
        ('k', "kubecfg", "/k/config", &[]),
        ('n', "namespace", "audit", &[]),
        ('s', "service-name", "audittailer", &[]),
        ('e', "secret-name", "client", &[]),
        ('l', "audit-log-path", "/x/audit.log", &[]),
        ('m', "mem-buf-limit", "64M", &[]),
        ('B', "tls-basedir", "/b", &[]),
        ('C', "tls-ca-file", "root.pem", &[]),
        ('R', "tls-crt-file", "c.pem", &[]),
        ('K', "tls-key-file", "k.pem", &[]),
        ('H', "tls-vhost", "tailer", &[]),
        ('S', "check-schedule", "@hourly", &[]),
        ('b', "backoff-timer", "3s", &[]),
        ('L', "log-level", "debug", &[]),
        ('O', "fluent-log-level", "warn", &[]),
        ('u', "konnectivity-uds-socket", "/run/k.sock", &[]),
        ('p', "proxy-host", "proxy", &[]),
        ('P', "proxy-port", "8132", &["--proxy-host=proxy"]),
    ];

    #[test]
    fn cli_short_flags() {
        // Without --target, so that the Kubernetes settings show in the result.
        let none = forward(&[], &[]);
        for &(short, long, value, extra) in SHORT_FLAGS {
            let long_arg = format!("--{long}");
            let want = forward(&[extra, &[long_arg.as_str(), value]].concat(), &[]);
            assert_ne!(want, none, "--{long} {value} changes nothing");
            let flag = format!("-{short}");
            let attached = format!("-{short}{value}");
            let equals = format!("-{short}={value}");
            let forms: [&[&str]; 3] = [&[&flag, value], &[&attached], &[&equals]];
            for form in forms {
                assert_eq!(forward(&[extra, form].concat(), &[]), want, "{form:?}");
            }
            // Help shows each short flag beside its long one.
            assert!(HELP.contains(&format!("-{short}, --{long} ")), "-{short}");
        }
        // -c reads the config file like --config.
        let file: &[(&str, &str)] = &[("tag", "from-file")];
        for args in [
            &["-c", "/f"][..],
            &["-c/f"],
            &["-c=/f"],
            &["--config", "/f"],
        ] {
            match run_with_config(args, &[], Ok(file)) {
                Ok(Command::Forward(f)) => assert_eq!(f.tag, "from-file", "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert!(HELP.contains("-c, --config FILE "));
        let err: &[(Args, &str)] = &[
            (&["-l"], "-l: missing value"),
            (&["-x", "1"], "-x: unknown flag (see --help)"),
            (&["-m", "12Q"], "--mem-buf-limit: invalid size \"12Q\""),
            // pflag's short flags are case-sensitive, and so are these.
            (&["-N", "audit"], "-N: unknown flag"),
        ];
        for &(args, want) in err {
            assert_usage_error(run(args, &[]), want, &args);
        }
    }

    /// Flag > environment > config file > default, for settings of each kind.
    #[test]
    fn cli_precedence_of_the_four_layers() {
        type Get = fn(&ForwardArgs) -> String;
        // (key, [flag, environment, config file] values, default, each value as read)
        type Row = (
            &'static str,
            [&'static str; 3],
            &'static str,
            [&'static str; 3],
            Get,
        );
        let rows: &[Row] = &[
            ("tag", ["f", "e", "c"], "audit", ["f", "e", "c"], |a| {
                a.tag.clone()
            }),
            (
                "mem-buf-limit",
                ["100M", "150M", "120M"],
                "200000000",
                ["100000000", "150000000", "120000000"],
                |a| a.mem_buf_limit.to_string(),
            ),
            (
                "read-from-head",
                ["false", "1", "FALSE"],
                "true",
                ["false", "true", "false"],
                |a| a.read_from_head.to_string(),
            ),
            (
                "target",
                ["a:1", "b:2", "c:3"],
                "none",
                ["a:1", "b:2", "c:3"],
                |a| {
                    a.target
                        .as_ref()
                        .map_or("none".to_string(), |t| t.to_string())
                },
            ),
            (
                "namespace",
                ["flag-ns", "env-ns", "file-ns"],
                "kube-system",
                ["flag-ns", "env-ns", "file-ns"],
                |a| {
                    a.kube
                        .as_ref()
                        .map_or("no kube".to_string(), |k| k.namespace.clone())
                },
            ),
        ];
        for &(key, given, default, read, get) in rows {
            // Every subset of the three layers: bit 0 flag, bit 1 environment, bit 2 file.
            for set in 0..8u8 {
                let flag = format!("--{key}={}", given[0]);
                let var = env_name(key);
                let mut args = vec!["--config=/etc/af.yaml"];
                let mut env = vec![];
                let mut file = vec![];
                if set & 1 != 0 {
                    args.push(&flag);
                }
                if set & 2 != 0 {
                    env.push((var.as_str(), given[1]));
                }
                if set & 4 != 0 {
                    file.push((key, given[2]));
                }
                let want = (0..3)
                    .find(|i| set & (1 << i) != 0)
                    .map_or(default, |i| read[i]);
                match run_with_config(&args, &env, Ok(&file)) {
                    Ok(Command::Forward(f)) => {
                        assert_eq!(get(&f), want, "{args:?} {env:?} {file:?}")
                    }
                    other => panic!("{args:?} {env:?} {file:?}: {other:?}"),
                }
            }
        }
        // A lower layer is not even parsed when a higher one is set.
        let file: &[(&str, &str)] = &[("tag", ""), ("mem-buf-limit", "12Q")];
        let got = run_with_config(
            &["-c", "/f", "--mem-buf-limit=100M"],
            &[("AUDIT_TAG", "e")],
            Ok(file),
        );
        match got {
            Ok(Command::Forward(f)) => {
                assert_eq!((f.tag.as_str(), f.mem_buf_limit), ("e", 100_000_000))
            }
            other => panic!("{other:?}"),
        }
        // --config itself is not read from the environment (as in the original).
        let got = run_with_config(&[], &[("AUDIT_CONFIG", "/f")], Err("must not be read"));
        assert!(matches!(got, Ok(Command::Forward(_))), "{got:?}");
        // Keys in any case, as viper matched them.
        let file: &[(&str, &str)] = &[("Audit-Log-Path", "/x/a.log")];
        match run_with_config(&["-c", "/f"], &[], Ok(file)) {
            Ok(Command::Forward(f)) => assert_eq!(f.audit_log_path, Path::new("/x/a.log")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cli_config_file_errors() {
        type Case = (
            Args,
            Result<&'static [(&'static str, &'static str)], &'static str>,
            &'static str,
        );
        let cases: &[Case] = &[
            (
                &["-c", "/etc/af.yaml"],
                Ok(&[("audit-log-paht", "/x")]),
                "--config /etc/af.yaml: unknown key \"audit-log-paht\" (the keys are the long \
                 flag names, as in audit-log-path: /auditlog/audit.log)",
            ),
            (
                &["-c", "/f"],
                Ok(&[("help", "true")]),
                "--config /f: unknown key \"help\"",
            ),
            (
                &["-c", "/f"],
                Ok(&[("listen", "a:1")]),
                "--config /f: unknown key \"listen\"",
            ),
            (
                &["-c", "/f"],
                Ok(&[("config", "/other.yaml")]),
                "--config /f: config: cannot be set in the config file itself",
            ),
            (
                &["-c", "/f"],
                Ok(&[("tag", "a"), ("TAG", "b")]),
                "--config /f: key \"tag\" is given twice",
            ),
            (
                &["--config", "/f"],
                Err("line 3: expected key: value"),
                "--config /f: line 3: expected key: value",
            ),
            (
                &["-c", "/etc/af.yaml"],
                Ok(&[("mem-buf-limit", "12Q")]),
                "/etc/af.yaml: mem-buf-limit: invalid size \"12Q\"",
            ),
            (
                &["-c", "/f"],
                Ok(&[("namespace", "Audit")]),
                "/f: namespace: invalid namespace \"Audit\"",
            ),
            (
                &["-c", "/f"],
                Ok(&[("shared-key", "k"), ("shared-key-file", "/k")]),
                "shared-key in /f and shared-key-file in /f are mutually exclusive",
            ),
            (
                &["-c", "/f", "--shared-key-file=/k"],
                Ok(&[("shared-key", "k")]),
                "shared-key in /f and --shared-key-file are mutually exclusive",
            ),
            (&["--config="], Ok(&[]), "--config: must not be empty"),
            (&["-c"], Ok(&[]), "-c: missing value"),
        ];
        for &(args, file, want) in cases {
            assert_usage_error(run_with_config(args, &[], file), want, &(args, file));
        }
        // A secret's value never shows, wherever it came from.
        let file: &[(&str, &str)] = &[("username", "u"), ("password", "hunter2")];
        let err = run_with_config(&["-c", "/f"], &[], Ok(file))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("username in /f and password in /f: user authentication needs"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        // Help and version do not read the file.
        assert_eq!(
            run_with_config(&["-c", "/f", "-h"], &[], Err("unread")),
            Ok(Command::Help(HELP))
        );
        // Every key the file may hold is a flag, documented in HELP.
        for &key in FORWARD_SETTINGS {
            let file = [(key, "x")];
            if let Err(e) = run_with_config(&["-c", "/f"], &[], Ok(&file)) {
                assert!(!e.to_string().contains("unknown key"), "{key}: {e}");
            }
            let arg = format!("--{key}=x");
            if let Err(e) = run(&[arg.as_str()], &[]) {
                assert!(!e.to_string().contains("unknown flag"), "{arg}: {e}");
            }
            assert!(
                HELP.lines()
                    .any(|l| long_flag(l).is_some_and(|f| f.starts_with(key))),
                "{key}"
            );
        }
    }

    fn kube_defaults() -> KubeArgs {
        KubeArgs {
            kubecfg: PathBuf::new(),
            namespace: "kube-system".to_string(),
            service_name: Some("kubernetes-audit-tailer".to_string()),
            secret_name: Some("audittailer-client".to_string()),
            check_schedule: "*/1 * * * *".to_string(),
            secret_keys: SecretKeys {
                ca: "ca.crt".to_string(),
                cert: "audittailer-client.crt".to_string(),
                key: "audittailer-client.key".to_string(),
            },
        }
    }

    /// Which of the Service and the Secret are used, by `--target`, the explicit secret name,
    /// `--secret-name ""` and `--plaintext`.
    #[test]
    fn cli_target_discovery_and_secret() {
        type KubeEdit = fn(&mut KubeArgs);
        // (arguments, environment, target, kube: None or the edit of kube_defaults())
        type Case = (Args, EnvTable, Option<&'static str>, Option<KubeEdit>);
        let cases: &[Case] = &[
            // Discovery: the Service and the default Secret.
            (&[], &[], None, Some(|_| {})),
            // Gardener's environment, unchanged from the original's deployments.
            (
                &[],
                &[
                    (
                        "AUDIT_KUBECFG",
                        "/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig/kubeconfig",
                    ),
                    ("AUDIT_NAMESPACE", "audit"),
                    ("AUDIT_SERVICE_NAME", "audittailer"),
                    ("AUDIT_SECRET_NAME", "audittailer-client"),
                    ("AUDIT_TLS_CA_FILE", "ca.crt"),
                    ("AUDIT_TLS_CRT_FILE", "tls.crt"),
                    ("AUDIT_TLS_KEY_FILE", "tls.key"),
                    ("AUDIT_TLS_VHOST", "audittailer"),
                ],
                None,
                Some(|k| {
                    k.kubecfg =
                        "/var/run/secrets/gardener.cloud/shoot/generic-kubeconfig/kubeconfig"
                            .into();
                    k.namespace = "audit".to_string();
                    k.service_name = Some("audittailer".to_string());
                    k.secret_keys.cert = "tls.crt".to_string();
                    k.secret_keys.key = "tls.key".to_string();
                }),
            ),
            // --target alone: no API at all, as before discovery existed.
            (&["--target=f:1"], &[], Some("f:1"), None),
            (
                &["--target=f:1"],
                &[("AUDIT_SERVICE_NAME", "audittailer")],
                Some("f:1"),
                None,
            ),
            // --target with an explicit Secret: the Secret, not the Service.
            (
                &["--target=f:1", "-e", "client"],
                &[],
                Some("f:1"),
                Some(|k| {
                    k.service_name = None;
                    k.secret_name = Some("client".to_string());
                }),
            ),
            (
                &["--target=f:1"],
                &[("AUDIT_SECRET_NAME", "client")],
                Some("f:1"),
                Some(|k| {
                    k.service_name = None;
                    k.secret_name = Some("client".to_string());
                }),
            ),
            // Explicit counts, even when it names the default.
            (
                &["--target=f:1", "--secret-name=audittailer-client"],
                &[],
                Some("f:1"),
                Some(|k| {
                    k.service_name = None;
                }),
            ),
            // No Secret: "" (from anywhere) or plain TCP.
            (
                &["--secret-name="],
                &[],
                None,
                Some(|k| k.secret_name = None),
            ),
            (
                &[],
                &[("AUDIT_SECRET_NAME", "")],
                None,
                Some(|k| k.secret_name = None),
            ),
            (
                &["--target=f:1", "--secret-name", ""],
                &[],
                Some("f:1"),
                None,
            ),
            (&["--plaintext"], &[], None, Some(|k| k.secret_name = None)),
            (
                &["--plaintext", "--target=f:1", "-e", "client"],
                &[],
                Some("f:1"),
                None,
            ),
            // Without a Secret the TLS file names may be paths.
            (
                &["-e", "", "--tls-crt-file=certs/tls.crt"],
                &[],
                None,
                Some(|k| {
                    k.secret_name = None;
                    k.secret_keys.cert = "certs/tls.crt".to_string();
                }),
            ),
            (
                &["--check-schedule=@every 30s", "--secret-name=a.b-c"],
                &[],
                None,
                Some(|k| {
                    k.check_schedule = "@every 30s".to_string();
                    k.secret_name = Some("a.b-c".to_string());
                }),
            ),
        ];
        for &(args, env, target, edit) in cases {
            let got = forward(args, env);
            assert_eq!(
                got.target.map(|t| t.to_string()).as_deref(),
                target,
                "{args:?} {env:?}"
            );
            let want = edit.map(|edit| {
                let mut k = kube_defaults();
                edit(&mut k);
                k
            });
            assert_eq!(got.kube, want, "{args:?} {env:?}");
        }
        // The target and the Secret from the config file.
        let file: &[(&str, &str)] = &[("target", "f:1"), ("secret-name", "client")];
        match run_with_config(&["-c", "/f"], &[], Ok(file)) {
            Ok(Command::Forward(f)) => {
                let k = f.kube.expect("an explicit Secret uses the API");
                assert_eq!(
                    (k.service_name, k.secret_name.as_deref()),
                    (None, Some("client"))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cli_kubecfg_default_is_under_home() {
        let cases: &[(Args, EnvTable, &str)] = &[
            (&[], &[("HOME", "/home/u")], "/home/u/.kube/config"),
            (&[], &[("HOME", "/")], "/.kube/config"),
            // No HOME: no kubeconfig (empty path), not "/.kube/config".
            (&[], &[], ""),
            (&[], &[("HOME", "")], ""),
            (&["-k", "/k"], &[("HOME", "/home/u")], "/k"),
            (
                &[],
                &[("HOME", "/home/u"), ("AUDIT_KUBECFG", "rel/kc")],
                "rel/kc",
            ),
            (&["--kubecfg="], &[("HOME", "/home/u")], ""),
            // Not expanded in a given value: the shell does that, as for the original.
            (&["--kubecfg=$HOME/kc"], &[("HOME", "/home/u")], "$HOME/kc"),
        ];
        for &(args, env, want) in cases {
            let kube = forward(args, env).kube.expect("discovery");
            assert_eq!(kube.kubecfg, Path::new(want), "{args:?} {env:?}");
        }
    }

    #[test]
    fn cli_metrics_address() {
        let cases: &[(Args, EnvTable, Option<&str>)] = &[
            (&[], &[], None),
            (
                &["--metrics-address=0.0.0.0:9090"],
                &[],
                Some("0.0.0.0:9090"),
            ),
            (&["--metrics-address", "[::]:9090"], &[], Some("[::]:9090")),
            (
                &["--metrics-address", "localhost:0"],
                &[],
                Some("localhost:0"),
            ),
            (
                &[],
                &[("AUDIT_METRICS_ADDRESS", "127.0.0.1:8080")],
                Some("127.0.0.1:8080"),
            ),
            // An empty variable (a manifest's default) means off.
            (&[], &[("AUDIT_METRICS_ADDRESS", "")], None),
            (
                &["--metrics-address="],
                &[("AUDIT_METRICS_ADDRESS", "a:1")],
                None,
            ),
        ];
        for &(args, env, want) in cases {
            let got = forward(&[REQUIRED, args].concat(), env);
            assert_eq!(got.metrics_address.as_deref(), want, "{args:?} {env:?}");
            assert_eq!(
                ForwardArgs {
                    metrics_address: None,
                    ..got
                },
                defaults()
            );
        }
        let err: &[(Args, EnvTable, &str)] = &[
            (
                &["--metrics-address=9090"],
                &[],
                "--metrics-address: invalid address \"9090\"",
            ),
            (
                &[],
                &[("AUDIT_METRICS_ADDRESS", ":9090")],
                "AUDIT_METRICS_ADDRESS: invalid",
            ),
            (
                &["--metrics-address", "::1:9090"],
                &[],
                "--metrics-address: invalid",
            ),
            (
                &["--metrics-address", "a:70000"],
                &[],
                "--metrics-address: invalid",
            ),
        ];
        for &(args, env, want) in err {
            let args = [REQUIRED, args].concat();
            assert_usage_error(run(&args, env), want, &args);
        }
    }

    #[test]
    fn cli_tailer_metrics_address() {
        // The address, or the start of the usage error.
        type Want = Result<Option<&'static str>, &'static str>;
        let cases: &[(Args, EnvTable, Want)] = &[
            (&[], &[], Ok(None)),
            (
                &["--metrics-address=0.0.0.0:9090"],
                &[],
                Ok(Some("0.0.0.0:9090")),
            ),
            (
                &[],
                &[("AUDIT_METRICS_ADDRESS", "[::1]:0")],
                Ok(Some("[::1]:0")),
            ),
            (
                &["--metrics-address="],
                &[("AUDIT_METRICS_ADDRESS", "a:1")],
                Ok(None),
            ),
            (
                &["--metrics-address=9090"],
                &[],
                Err("--metrics-address: invalid address \"9090\""),
            ),
        ];
        for &(extra, env, want) in cases {
            let args = [&["tailer", "--listen=a:1"][..], extra].concat();
            match (run(&args, env), want) {
                (Ok(Command::Tailer(t)), Ok(want)) => {
                    assert_eq!(t.metrics_address.as_deref(), want, "{args:?}")
                }
                (got, Err(want)) => assert_usage_error(got, want, &args),
                (got, Ok(_)) => panic!("{args:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn cli_fluent_log_level_is_validated_and_kept() {
        let cases: &[(Args, EnvTable, Option<&str>)] = &[
            (&[], &[], None),
            (&["--fluent-log-level=info"], &[], Some("info")),
            (&["-O", "off"], &[], Some("off")),
            (&["-O", "Error"], &[], Some("error")),
            (&["-O", "WARN"], &[], Some("warn")),
            (&["-O", "warning"], &[], Some("warning")),
            (&["-O", "debug"], &[], Some("debug")),
            (&[], &[("AUDIT_FLUENT_LOG_LEVEL", "trace")], Some("trace")),
        ];
        for &(args, env, want) in cases {
            let got = forward(&[REQUIRED, args].concat(), env);
            assert_eq!(got.fluent_log_level.as_deref(), want, "{args:?} {env:?}");
            // It changes nothing else.
            assert_eq!(
                ForwardArgs {
                    fluent_log_level: None,
                    ..got
                },
                defaults()
            );
        }
        let err: &[(Args, EnvTable, &str)] = &[
            (
                &["--fluent-log-level=verbose"],
                &[],
                "--fluent-log-level: invalid fluent-bit log level \"verbose\" (use off, \
                 error, warn, info, debug or trace)",
            ),
            (
                &[],
                &[("AUDIT_FLUENT_LOG_LEVEL", "")],
                "AUDIT_FLUENT_LOG_LEVEL: invalid",
            ),
            (&["-O", "fatal"], &[], "--fluent-log-level: invalid"),
        ];
        for &(args, env, want) in err {
            assert_usage_error(run(args, env), want, &args);
        }
    }

    #[test]
    fn cli_kubernetes_names_are_checked() {
        let long63 = "a".repeat(63);
        let long64 = format!("--namespace={}", "a".repeat(64));
        let label = "a".repeat(63);
        let sub253 = format!("--secret-name={label}.{label}.{label}.{}", "a".repeat(61));
        let sub254 = format!("--secret-name={label}.{label}.{label}.{}", "a".repeat(62));
        let ok: Vec<Vec<String>> = vec![
            vec!["--namespace=a".into()],
            vec![format!("--namespace={long63}")],
            vec!["-n".into(), "0-audit".into()],
            vec!["--service-name=t".into()],
            vec!["--service-name=tailer-0".into()],
            vec!["--secret-name=0.a-b.c".into()],
            vec![sub253.clone()],
        ];
        for args in ok {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert!(run(&args, &[]).is_ok(), "{args:?}: {:?}", run(&args, &[]));
        }
        let err: Vec<(Vec<&str>, EnvTable, &str)> = vec![
            (
                vec!["--namespace=Kube-System"],
                &[],
                "--namespace: invalid namespace \"Kube-System\": a DNS-1123 label is 1-63 \
                 lowercase letters, digits and '-', starting and ending with a letter or digit",
            ),
            (vec!["-n", ""], &[], "--namespace: invalid namespace \"\""),
            (vec![&long64], &[], "--namespace: invalid namespace"),
            (vec!["-n", "-a"], &[], "--namespace: invalid namespace"),
            (vec!["-n", "a-"], &[], "--namespace: invalid namespace"),
            (vec!["-n", "a.b"], &[], "--namespace: invalid namespace"),
            (
                vec![],
                &[("AUDIT_SERVICE_NAME", "1tailer")],
                "AUDIT_SERVICE_NAME: invalid Service name \"1tailer\": a DNS-1035 label is \
                 1-63 lowercase letters, digits and '-', starting with a letter",
            ),
            (
                vec!["-s", "tailer_0"],
                &[],
                "--service-name: invalid Service name",
            ),
            (
                vec!["-s", ""],
                &[],
                "--service-name: invalid Service name \"\"",
            ),
            (
                vec!["-e", "Client"],
                &[],
                "--secret-name: invalid Secret name \"Client\": a DNS-1123 subdomain",
            ),
            (
                vec!["-e", "a..b"],
                &[],
                "--secret-name: invalid Secret name",
            ),
            (vec!["-e", ".a"], &[], "--secret-name: invalid Secret name"),
            (vec!["-e", "a/b"], &[], "--secret-name: invalid Secret name"),
            (vec![&sub254], &[], "--secret-name: invalid Secret name"),
            (
                vec!["--check-schedule="],
                &[],
                "--check-schedule: must not be empty",
            ),
            // Checked even when unused, so that a typo does not wait for the day it is used.
            (
                vec!["--target=f:1", "-n", "A"],
                &[],
                "--namespace: invalid namespace",
            ),
            (
                vec!["--target=f:1", "-s", "A"],
                &[],
                "--service-name: invalid Service name",
            ),
            // With a Secret the TLS file names are its data keys.
            (
                vec!["-e", "client", "--tls-crt-file=certs/tls.crt"],
                &[],
                "--tls-crt-file: \"certs/tls.crt\" is not a valid key of the Secret \
                 \"client\" (--secret-name): the TLS material is read from the Secret's data, \
                 whose keys are letters, digits, '-', '_' and '.'; give the key alone, or set \
                 --secret-name \"\" to read the files under --tls-basedir instead",
            ),
            (
                vec![],
                &[("AUDIT_TLS_KEY_FILE", "/etc/tls.key")],
                "AUDIT_TLS_KEY_FILE: \"/etc/tls.key\" is not a valid key of the Secret \
                 \"audittailer-client\" (--secret-name)",
            ),
            (
                vec!["--target=f:1", "--tls-ca-file=.."],
                &[("AUDIT_SECRET_NAME", "client")],
                "--tls-ca-file: \"..\" is not a valid key of the Secret \"client\" \
                 (AUDIT_SECRET_NAME (--secret-name))",
            ),
        ];
        for (args, env, want) in err {
            assert_usage_error(run(&args, env), want, &args);
        }
    }
}
