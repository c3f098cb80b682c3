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
    audit-forwarder --target HOST:PORT --plaintext [OPTIONS]
    audit-forwarder tailer --listen ADDR [OPTIONS]   (see: audit-forwarder tailer --help)

Every flag can also be set with the environment variable shown in brackets; a flag given on
the command line wins over the environment.

OPTIONS:
    --target HOST:PORT            [AUDIT_TARGET] required
        The in_forward to deliver to. HOST is a DNS name, an IPv4 address or an IPv6 address
        in brackets ([::1]:24224); PORT is 1-65535.
    --plaintext[=BOOL]            [AUDIT_PLAINTEXT] required
        Deliver over plain TCP. Required for now: TLS delivery is not built yet.
    --audit-log-path PATH         [AUDIT_AUDIT_LOG_PATH] default: /auditlog/audit.log
        The audit log file kube-apiserver writes.
    --position-file PATH          [AUDIT_POSITION_FILE]
                                  default: .audit-forwarder.pos in the audit log's directory
        Where the position of the last acknowledged line is kept across restarts.
    --read-from-head[=BOOL]       [AUDIT_READ_FROM_HEAD] default: true
        Without a position file, start at the beginning of the log (false: at its end).
    --tag TAG                     [AUDIT_TAG] default: audit
        The Fluent tag of every record; must not be empty.
    --mem-buf-limit SIZE          [AUDIT_MEM_BUF_LIMIT] default: 200M
        Memory for lines read but not yet acknowledged. Must be at least
        2 x --max-line-size + 1 MiB (a partial line and a whole record are kept besides
        the in-flight window).
    --max-line-size SIZE          [AUDIT_MAX_LINE_SIZE] default: 10M
        The longest audit line (one event) handled; greater than 0.
    --ack-timeout DURATION        [AUDIT_ACK_TIMEOUT] default: 60s
        How long to wait for the ack of a chunk; greater than 0.
    --backoff-timer DURATION      [AUDIT_BACKOFF_TIMER] default: 10s
        The longest wait between reconnection attempts; greater than 0.
    --shutdown-timeout DURATION   [AUDIT_SHUTDOWN_TIMEOUT] default: 10s
        On shutdown, how long to keep waiting for outstanding acks.
    --stats-interval DURATION     [AUDIT_STATS_INTERVAL] default: 60s
        How often the stats line is logged; greater than 0.
    --log-level LEVEL             [AUDIT_LOG_LEVEL] default: info
        One of error, warn, info, debug, trace.
    -h, --help                    Print this help.
    -V, --version                 Print the version.

VALUES:
    BOOL      true, false, 1 or 0, in any case. A boolean flag alone means true; a value is
              given only with '=': --read-from-head=false.
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
    audit-forwarder tailer --listen ADDR [--discard] [--log-level LEVEL]

`tailer` must be the first argument. Every flag can also be set with the environment variable
shown in brackets; a flag given on the command line wins over the environment.

OPTIONS:
    --listen ADDR                 [AUDIT_LISTEN] required
        HOST:PORT to listen on: HOST is a DNS name, an IPv4 address or an IPv6 address in
        brackets ([::1]:24224); PORT 0 picks a free port.
    --discard[=BOOL]              [AUDIT_DISCARD] default: false
        Acknowledge records without printing them.
    --log-level LEVEL             [AUDIT_LOG_LEVEL] default: info
        One of error, warn, info, debug, trace.
    -h, --help                    Print this help.
    -V, --version                 Print the version.

VALUES:
    BOOL      true, false, 1 or 0, in any case. A boolean flag alone means true; a value is
              given only with '=': --discard=false.
";

const DEFAULT_AUDIT_LOG_PATH: &str = "/auditlog/audit.log";
const POSITION_FILE_NAME: &str = ".audit-forwarder.pos";
const DEFAULT_TAG: &str = "audit";
const DEFAULT_MEM_BUF_LIMIT: u64 = 200_000_000;
const DEFAULT_MAX_LINE_SIZE: u64 = 10_000_000;
const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(10);
const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// What the process was asked to do.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Forward(ForwardArgs),
    Tailer(TailerArgs),
    /// Print this text on stdout and exit 0.
    Help(&'static str),
    /// Print `audit-forwarder <version>` and exit 0.
    Version,
}

/// Settings of the forwarding mode, validated against each other.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardArgs {
    pub audit_log_path: PathBuf,
    pub mem_buf_limit: u64,
    pub log_level: LevelFilter,
    pub backoff_max: Duration,
    pub target: Target,
    pub plaintext: bool,
    pub position_file: PathBuf,
    pub tag: String,
    pub read_from_head: bool,
    pub max_line_size: u64,
    pub ack_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub stats_interval: Duration,
}

/// Settings of `audit-forwarder tailer`.
#[allow(dead_code)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailerArgs {
    /// HOST:PORT as given (checked by the same rules as `--target`, port 0 allowed), so the
    /// caller can hand it to the resolver unchanged.
    pub listen: String,
    pub discard: bool,
    pub log_level: LevelFilter,
}

/// Where to deliver. `host` is a DNS name, an IPv4 address, or an IPv6 address without its
/// brackets.
#[allow(dead_code)]
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

/// Parses the arguments after argv[0], falling back to `AUDIT_*` variables from `env`.
#[allow(dead_code)]
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Command, UsageError> {
    let mut args = args.into_iter().peekable();
    if args.peek().is_some_and(|first| first == "tailer") {
        args.next();
        return parse_tailer(lexopt::Parser::from_args(args), env);
    }
    parse_forward(lexopt::Parser::from_args(args), env)
}

fn parse_forward(mut parser: lexopt::Parser, env: Env) -> Result<Command, UsageError> {
    use lexopt::prelude::*;

    // Raw values only: they are parsed after the loop, once it is known whether each comes
    // from the command line or the environment, so an error can name the right one.
    let mut audit_log_path = None;
    let mut mem_buf_limit = None;
    let mut log_level = None;
    let mut backoff_timer = None;
    let mut target = None;
    let mut plaintext = None;
    let mut position_file = None;
    let mut tag = None;
    let mut read_from_head = None;
    let mut max_line_size = None;
    let mut ack_timeout = None;
    let mut shutdown_timeout = None;
    let mut stats_interval = None;

    while let Some(arg) = parser.next()? {
        match arg {
            Long("audit-log-path") => audit_log_path = Some(parser.value()?),
            Long("mem-buf-limit") => mem_buf_limit = Some(parser.value()?),
            Long("log-level") => log_level = Some(parser.value()?),
            Long("backoff-timer") => backoff_timer = Some(parser.value()?),
            Long("target") => target = Some(parser.value()?),
            Long("plaintext") => plaintext = Some(bool_value(&mut parser)),
            Long("position-file") => position_file = Some(parser.value()?),
            Long("tag") => tag = Some(parser.value()?),
            Long("read-from-head") => read_from_head = Some(bool_value(&mut parser)),
            Long("max-line-size") => max_line_size = Some(parser.value()?),
            Long("ack-timeout") => ack_timeout = Some(parser.value()?),
            Long("shutdown-timeout") => shutdown_timeout = Some(parser.value()?),
            Long("stats-interval") => stats_interval = Some(parser.value()?),
            Short('h') | Long("help") => return Ok(Command::Help(HELP)),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(value) if value == "tailer" => {
                return Err(UsageError(
                    "tailer: the subcommand must be the first argument".to_string(),
                ))
            }
            _ => return Err(arg.unexpected().into()),
        }
    }

    let audit_log_path = resolve(audit_log_path, "audit-log-path", env, parse_log_path)?
        .map_or_else(|| PathBuf::from(DEFAULT_AUDIT_LOG_PATH), |s| s.value);
    let mem_buf_limit = resolve(mem_buf_limit, "mem-buf-limit", env, text(parse_size))?
        .unwrap_or_else(|| Setting::default("mem-buf-limit", DEFAULT_MEM_BUF_LIMIT));
    let log_level = resolve(log_level, "log-level", env, text(parse_log_level))?
        .map_or(DEFAULT_LOG_LEVEL, |s| s.value);
    let backoff_max = resolve(backoff_timer, "backoff-timer", env, text(positive_duration))?
        .map_or(DEFAULT_BACKOFF_MAX, |s| s.value);
    let target = resolve(target, "target", env, text(parse_target))?
        .ok_or_else(|| {
            UsageError(
                "--target is required: HOST:PORT of the fluentd/fluent-bit in_forward \
                 (or set AUDIT_TARGET)"
                    .to_string(),
            )
        })?
        .value;
    let plaintext = resolve(plaintext, "plaintext", env, text(parse_bool))?;
    match plaintext {
        Some(Setting { value: true, .. }) => {}
        Some(Setting { label, .. }) if !label.starts_with("--") => {
            return Err(UsageError(format!(
                "{label}: --plaintext is required: TLS delivery is not built yet"
            )))
        }
        _ => {
            return Err(UsageError(
                "--plaintext is required: TLS delivery is not built yet".to_string(),
            ))
        }
    }
    let position_file = resolve(position_file, "position-file", env, parse_path)?
        .map_or_else(|| default_position_file(&audit_log_path), |s| s.value);
    let tag = resolve(tag, "tag", env, text(parse_tag))?
        .map_or_else(|| DEFAULT_TAG.to_string(), |s| s.value);
    let read_from_head =
        resolve(read_from_head, "read-from-head", env, text(parse_bool))?.is_none_or(|s| s.value);
    let max_line_size = resolve(max_line_size, "max-line-size", env, text(positive_size))?
        .unwrap_or_else(|| Setting::default("max-line-size", DEFAULT_MAX_LINE_SIZE));
    let ack_timeout = resolve(ack_timeout, "ack-timeout", env, text(positive_duration))?
        .map_or(DEFAULT_ACK_TIMEOUT, |s| s.value);
    let shutdown_timeout = resolve(
        shutdown_timeout,
        "shutdown-timeout",
        env,
        text(parse_duration),
    )?
    .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |s| s.value);
    let stats_interval = resolve(
        stats_interval,
        "stats-interval",
        env,
        text(positive_duration),
    )?
    .map_or(DEFAULT_STATS_INTERVAL, |s| s.value);

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
        plaintext: true,
        position_file,
        tag,
        read_from_head,
        max_line_size: max_line_size.value,
        ack_timeout,
        shutdown_timeout,
        stats_interval,
    }))
}

fn parse_tailer(mut parser: lexopt::Parser, env: Env) -> Result<Command, UsageError> {
    use lexopt::prelude::*;

    let mut listen = None;
    let mut discard = None;
    let mut log_level = None;

    while let Some(arg) = parser.next()? {
        match arg {
            Long("listen") => listen = Some(parser.value()?),
            Long("discard") => discard = Some(bool_value(&mut parser)),
            Long("log-level") => log_level = Some(parser.value()?),
            Short('h') | Long("help") => return Ok(Command::Help(TAILER_HELP)),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(arg.unexpected().into()),
        }
    }

    let listen = resolve(listen, "listen", env, text(parse_listen))?
        .ok_or_else(|| {
            UsageError(
                "--listen is required: HOST:PORT to accept Forward connections on \
                 (or set AUDIT_LISTEN)"
                    .to_string(),
            )
        })?
        .value;
    let discard = resolve(discard, "discard", env, text(parse_bool))?.is_some_and(|s| s.value);
    let log_level = resolve(log_level, "log-level", env, text(parse_log_level))?
        .map_or(DEFAULT_LOG_LEVEL, |s| s.value);
    Ok(Command::Tailer(TailerArgs {
        listen,
        discard,
        log_level,
    }))
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
    /// `--flag` or `AUDIT_FLAG`.
    label: String,
    flag: &'static str,
}

impl<T> Setting<T> {
    fn default(flag: &'static str, value: T) -> Self {
        Setting {
            value,
            label: format!("--{flag}"),
            flag,
        }
    }

    /// The label, with the flag added when the value came from the environment, for errors
    /// that involve several settings.
    fn describe(&self) -> String {
        if self.label.starts_with("--") {
            self.label.clone()
        } else {
            format!("{} (--{})", self.label, self.flag)
        }
    }
}

/// `--some-flag` -> `AUDIT_SOME_FLAG`.
fn env_name(flag: &str) -> String {
    format!("AUDIT_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Picks the command-line value if given, else the environment's, and parses it; an error is
/// prefixed with the flag or variable it came from.
fn resolve<T>(
    cli: Option<OsString>,
    flag: &'static str,
    env: Env,
    parse: impl Fn(OsString) -> Result<T, String>,
) -> Result<Option<Setting<T>>, UsageError> {
    let (raw, label) = match cli {
        Some(raw) => (raw, format!("--{flag}")),
        None => {
            let name = env_name(flag);
            match env(&name) {
                Some(raw) => (raw, name),
                None => return Ok(None),
            }
        }
    };
    match parse(raw) {
        Ok(value) => Ok(Some(Setting { value, label, flag })),
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

fn parse_tag(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s.to_string())
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
#[allow(dead_code)]
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
#[allow(dead_code)]
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
#[allow(dead_code)]
pub fn parse_target(s: &str) -> Result<Target, String> {
    parse_host_port(s, 1)
}

/// Like `parse_target` but port 0 is allowed (the kernel picks a free port), and the address is
/// kept as given.
fn parse_listen(s: &str) -> Result<String, String> {
    parse_host_port(s, 0).map(|_| s.to_string())
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
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("invalid port {port:?}")));
    }
    match port.parse::<u16>() {
        Ok(port) if port >= min_port => Ok(Target {
            host: host.to_string(),
            port,
        }),
        _ => Err(invalid(format!(
            "port {port} is out of range {min_port}-65535"
        ))),
    }
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

    /// Arguments and environment of one table row.
    type Args = &'static [&'static str];
    type EnvTable = &'static [(&'static str, &'static str)];

    /// Runs `parse` over string arguments and an environment table.
    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Command, UsageError> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        parse(args.iter().map(OsString::from), &lookup)
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
            target: Target {
                host: "fluentd".to_string(),
                port: 24224,
            },
            plaintext: true,
            position_file: PathBuf::from("/auditlog/.audit-forwarder.pos"),
            tag: "audit".to_string(),
            read_from_head: true,
            max_line_size: 10_000_000,
            ack_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            stats_interval: Duration::from_secs(60),
        }
    }

    const REQUIRED: &[&str] = &["--target", "fluentd:24224", "--plaintext"];

    #[test]
    fn cli_defaults() {
        assert_eq!(forward(REQUIRED, &[]), defaults());
        // The required settings from the environment alone.
        let env = [
            ("AUDIT_TARGET", "fluentd:24224"),
            ("AUDIT_PLAINTEXT", "true"),
        ];
        assert_eq!(forward(&[], &env), defaults());
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
            f.target = Target {
                host: "::1".to_string(),
                port: 9880,
            }
        }),
        ("plaintext", "1", |_| {}),
        ("position-file", "/data/pos", |f| {
            f.position_file = "/data/pos".into()
        }),
        ("tag", "k8s.audit", |f| f.tag = "k8s.audit".to_string()),
        ("read-from-head", "FALSE", |f| f.read_from_head = false),
        ("max-line-size", "1.5m", |f| f.max_line_size = 1_500_000),
        ("ack-timeout", "2.5s", |f| {
            f.ack_timeout = Duration::from_millis(2500)
        }),
        ("shutdown-timeout", "0", |f| {
            f.shutdown_timeout = Duration::ZERO
        }),
        ("stats-interval", "300ms", |f| {
            f.stats_interval = Duration::from_millis(300)
        }),
    ];

    #[test]
    fn cli_every_setting_from_flag_and_env() {
        for &(flag, value, edit) in SETTINGS {
            let mut want = defaults();
            edit(&mut want);

            // Boolean flags take a value only with '=' (see cli_boolean_flags).
            if !matches!(flag, "plaintext" | "read-from-head") {
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
            let mut env = vec![("AUDIT_TARGET", "fluentd:24224"), ("AUDIT_PLAINTEXT", "1")];
            env.retain(|(k, _)| *k != var);
            env.push((&var, value));
            assert_eq!(forward(&[], &env), want, "{var}={value}");
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
        let args = [REQUIRED, &["--mem-buf-limit", "100M"]].concat();
        let mut want = defaults();
        want.mem_buf_limit = 100_000_000;
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
        match parse(args("--audit-log-path"), &env) {
            Ok(Command::Forward(f)) => assert_eq!(f.audit_log_path, PathBuf::from(bad())),
            other => panic!("{other:?}"),
        }
        // ... everything else must be, and the error names the flag.
        let err = parse(args("--tag"), &env).unwrap_err().to_string();
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
                &["tailer"],
                &[],
                "tailer: the subcommand must be the first argument",
            ),
        ];
        for &(extra, env, want) in cases {
            // The target comes from the environment unless a case sets it, so that cases
            // about AUDIT_TARGET are not shadowed by a --target flag.
            let args = [&["--plaintext"], extra].concat();
            let env = [env, &[("AUDIT_TARGET", "fluentd:24224")]].concat();
            match run(&args, &env) {
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
    fn cli_required_settings() {
        let cases: &[(Args, EnvTable, &str)] = &[
            (&["--plaintext"], &[], "--target is required"),
            (&[], &[("AUDIT_PLAINTEXT", "1")], "--target is required"),
            (
                &["--target=f:1"],
                &[],
                "--plaintext is required: TLS delivery is not built yet",
            ),
            (
                &["--target=f:1", "--plaintext=false"],
                &[],
                "--plaintext is required: TLS delivery is not built yet",
            ),
            (
                &["--target=f:1"],
                &[("AUDIT_PLAINTEXT", "0")],
                "AUDIT_PLAINTEXT: --plaintext is required: TLS delivery is not built yet",
            ),
            // A later --plaintext=false undoes an earlier --plaintext.
            (
                &["--target=f:1", "--plaintext", "--plaintext=0"],
                &[],
                "--plaintext is required",
            ),
        ];
        for &(args, env, want) in cases {
            match run(args, env) {
                Err(e) => assert!(e.to_string().starts_with(want), "{args:?}: {e}"),
                Ok(c) => panic!("{args:?} parsed as {c:?}"),
            }
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
    }

    #[test]
    fn cli_help_lists_every_flag_default_and_variable() {
        let forward: &[(&str, &str)] = &[
            ("target", "required"),
            ("plaintext", "required"),
            ("audit-log-path", "default: /auditlog/audit.log"),
            ("position-file", "default: .audit-forwarder.pos"),
            ("read-from-head", "default: true"),
            ("tag", "default: audit"),
            ("mem-buf-limit", "default: 200M"),
            ("max-line-size", "default: 10M"),
            ("ack-timeout", "default: 60s"),
            ("backoff-timer", "default: 10s"),
            ("shutdown-timeout", "default: 10s"),
            ("stats-interval", "default: 60s"),
            ("log-level", "default: info"),
        ];
        let tailer: &[(&str, &str)] = &[
            ("listen", "required"),
            ("discard", "default: false"),
            ("log-level", "default: info"),
        ];
        for (help, flags) in [(HELP, forward), (TAILER_HELP, tailer)] {
            for &(flag, default) in flags {
                let line = help
                    .lines()
                    .find(|l| l.trim_start().starts_with(&format!("--{flag}")))
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
    }

    #[test]
    fn cli_tailer() {
        let t = |listen: &str, discard, log_level| {
            Ok(Command::Tailer(TailerArgs {
                listen: listen.to_string(),
                discard,
                log_level,
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
        ];
        for &(args, env, want) in err {
            match run(args, env) {
                Err(e) => assert!(e.to_string().starts_with(want), "{args:?}: {e}"),
                Ok(c) => panic!("{args:?} parsed as {c:?}"),
            }
        }
    }
}
