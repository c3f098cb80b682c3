//! Test-data tool: generates realistic kube-apiserver audit.k8s.io/v1 event lines, writes them to
//! an audit log the way kube-apiserver (lumberjack) does, including rotation and gzip of backups,
//! and runs the end-to-end demo. `bench.rs` includes this file as a module to share the generator
//! and the child-process helpers, so everything here except `main` is written as a library.
//!
//! Every event carries its sequence number in the last 12 digits of its auditID (`seq_of` reads it
//! back), which is how the bench and the demo match received records to written lines.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Randomness and time
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic per seed, fast enough that it never shows up next to formatting.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 step so that small seeds (0, 1, 2) still give well-mixed states; never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough value in `lo..hi` (modulo bias is irrelevant for test data).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }

    pub fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = (y - era * 400) as u64;
    let mp = if m > 2 { m - 3 } else { m + 9 } as u64;
    let doy = (153 * mp + 2) / 5 + d as u64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe as i64 - 719_468
}

/// Inverse of `days_from_civil`.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = (z - era * 146_097) as u64;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe as i64 + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2006-01-02T15:04:05` for a Unix second, in UTC.
pub fn format_second(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

pub fn now_us() -> u64 {
    // A clock before 1970 is a broken machine, not a case the tool has to handle.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The corpus clock starts here so that generated files are byte-identical for one seed.
pub fn corpus_epoch_us() -> u64 {
    let day = days_from_civil(2025, 7, 16) as u64;
    (day * 86_400 + 10 * 3600 + 12 * 60 + 56) * 1_000_000 + 525_137
}

/// Formats `2025-07-16T10:12:56.525137Z`, caching the second part because consecutive events
/// almost always share it and date arithmetic per event would dominate corpus generation.
struct TsCache {
    sec: u64,
    text: String,
}

impl TsCache {
    fn push(&mut self, out: &mut String, us: u64) {
        let sec = us / 1_000_000;
        if sec != self.sec || self.text.is_empty() {
            self.sec = sec;
            self.text = format_second(sec);
        }
        out.push_str(&self.text);
        out.push('.');
        let frac = us % 1_000_000;
        let mut digits = [b'0'; 6];
        let mut f = frac;
        for slot in digits.iter_mut().rev() {
            *slot = b'0' + (f % 10) as u8;
            f /= 10;
        }
        // Only ASCII digits were written.
        out.push_str(std::str::from_utf8(&digits).unwrap());
        out.push('Z');
    }
}

// ---------------------------------------------------------------------------------------------
// Event generator
// ---------------------------------------------------------------------------------------------

const UA_KUBELET: &str = "kubelet/v1.31.4 (linux/amd64) kubernetes/a78aa47";
const UA_KCM: &str = "kube-controller-manager/v1.31.4 (linux/amd64) kubernetes/a78aa47";
const UA_KUBECTL: &str = "kubectl/v1.31.4 (linux/amd64) kubernetes/a78aa47";
const UA_GO: &str = "Go-http-client/2.0";

const NAMESPACES: &[&str] = &[
    "shop",
    "payments",
    "monitoring",
    "ingress-nginx",
    "cert-manager",
    "default",
];
const CONTROLLERS: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "endpointslice-controller",
    "namespace-controller",
    "generic-garbage-collector",
    "horizontal-pod-autoscaler",
];

/// Per-app data for RequestResponse events: containers and their managedFields are precomputed
/// once per size variant, so producing a 3-8 KB event is a handful of string copies.
struct App {
    name: &'static str,
    ns: &'static str,
    image: &'static str,
    port: u32,
    hash: &'static str,
    rs_uid: String,
    deploy_uid: String,
}

struct Variant {
    /// 0: Pod create, 1: Deployment status update.
    kind: usize,
    app: usize,
    containers: String,
    container_fields: String,
    replicas: u32,
    /// ConfigMap only: the data value and the last-applied annotation, both Go-escaped.
    conf: String,
    last_applied: String,
}

struct User {
    json: String,
    ip: String,
    ua: &'static str,
    reason: String,
}

pub struct Generator {
    rng: Rng,
    clock_us: u64,
    last_received_us: u64,
    wall_clock: bool,
    ts: TsCache,
    apps: Vec<App>,
    variants: Vec<Variant>,
    /// Indices into `variants` per kind, filled once sizes are checked.
    by_kind: [Vec<usize>; 3],
    nodes: Vec<User>,
    controllers: Vec<User>,
    pod_sas: Vec<User>,
    admin: User,
    anonymous: User,
    object_uids: Vec<String>,
    resource_version: u64,
}

fn node_user(rng: &mut Rng, n: u32) -> User {
    User {
        json: format!(
            r#"{{"username":"system:node:worker-{n}","groups":["system:nodes","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["X509SHA256={:016x}{:016x}{:016x}{:016x}"]}}}}"#,
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64(),
            rng.next_u64()
        ),
        ip: format!("10.0.1.{}", 10 + n),
        ua: UA_KUBELET,
        reason: String::new(),
    }
}

fn controller_user(rng: &mut Rng, name: &str) -> User {
    User {
        json: format!(
            r#"{{"username":"system:serviceaccount:kube-system:{name}","uid":"{}","groups":["system:serviceaccounts","system:serviceaccounts:kube-system","system:authenticated"]}}"#,
            rng.uuid()
        ),
        ip: "10.0.0.5".to_string(),
        ua: UA_KCM,
        reason: format!(
            r#"RBAC: allowed by ClusterRoleBinding \"system:controller:{name}\" of ClusterRole \"system:controller:{name}\" to ServiceAccount \"{name}/kube-system\""#
        ),
    }
}

fn pod_sa_user(rng: &mut Rng, app: &App, node: u32) -> User {
    let sa = app.name;
    let ns = app.ns;
    User {
        json: format!(
            r#"{{"username":"system:serviceaccount:{ns}:{sa}","uid":"{}","groups":["system:serviceaccounts","system:serviceaccounts:{ns}","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["JTI={}"],"authentication.kubernetes.io/node-name":["worker-{node}"],"authentication.kubernetes.io/node-uid":["{}"],"authentication.kubernetes.io/pod-name":["{sa}-{}-{}"],"authentication.kubernetes.io/pod-uid":["{}"]}}}}"#,
            rng.uuid(),
            rng.uuid(),
            rng.uuid(),
            app.hash,
            pod_suffix(rng.next_u64()),
            rng.uuid()
        ),
        ip: format!("10.244.{}.{}", node, 2 + rng.range(0, 200)),
        ua: UA_GO,
        reason: format!(
            r#"RBAC: allowed by RoleBinding \"{sa}-reader/{ns}\" of Role \"{sa}-reader\" to ServiceAccount \"{sa}/{ns}\""#
        ),
    }
}

/// Five characters from the alphabet Kubernetes uses for generated name suffixes.
fn pod_suffix(x: u64) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut s = String::with_capacity(5);
    let mut v = x;
    for _ in 0..5 {
        s.push(ALPHA[(v % ALPHA.len() as u64) as usize] as char);
        v /= ALPHA.len() as u64;
    }
    s
}

const ENV_NAMES: &[&str] = &[
    "LOG_LEVEL",
    "HTTP_PORT",
    "DATABASE_URL",
    "CACHE_TTL_SECONDS",
    "FEATURE_FLAGS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_SERVICE_NAME",
    "GOMAXPROCS",
    "REDIS_ADDR",
    "UPSTREAM_TIMEOUT",
    "TLS_MIN_VERSION",
    "REGION",
];

fn env_value(i: usize, app: &App) -> String {
    match i {
        0 => "info".to_string(),
        1 => app.port.to_string(),
        // Go's encoder escapes & in every string: URLs with query strings are where it shows.
        2 => format!(
            "postgres://{0}@db.{1}.svc:5432/{0}?sslmode=require\\u0026pool_max_conns=20",
            app.name, app.ns
        ),
        3 => "300".to_string(),
        4 => "checkout-v2,search-beta".to_string(),
        5 => "http://otel-collector.monitoring.svc:4317".to_string(),
        6 => app.name.to_string(),
        7 => "2".to_string(),
        8 => format!("redis.{}.svc:6379", app.ns),
        9 => "15s".to_string(),
        10 => "1.2".to_string(),
        _ => "eu-west-1".to_string(),
    }
}

fn container_name(app: &App, idx: usize) -> String {
    if idx == 0 {
        app.name.to_string()
    } else {
        format!("{}-sidecar-{idx}", app.name)
    }
}

/// One container; `rich` adds the probe, mount and security context a main container carries.
fn container_json(app: &App, idx: usize, envs: usize, rich: bool) -> String {
    let name = container_name(app, idx);
    let port = app.port + idx as u32;
    let mut env = String::new();
    for i in 0..envs {
        if i > 0 {
            env.push(',');
        }
        let _ = write!(
            env,
            r#"{{"name":"{}","value":"{}"}}"#,
            ENV_NAMES[i % ENV_NAMES.len()],
            env_value(i % ENV_NAMES.len(), app)
        );
    }
    let env = if envs > 0 {
        format!(r#""env":[{env}],"#)
    } else {
        String::new()
    };
    let extra = if rich {
        format!(
            r#""volumeMounts":[{{"name":"kube-api-access","readOnly":true,"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}}],"livenessProbe":{{"httpGet":{{"path":"/healthz","port":{port},"scheme":"HTTP"}},"timeoutSeconds":1,"periodSeconds":10,"successThreshold":1,"failureThreshold":3}},"securityContext":{{"capabilities":{{"drop":["ALL"]}},"runAsNonRoot":true,"allowPrivilegeEscalation":false}},"#
        )
    } else {
        String::new()
    };
    // The command has a shell redirect and && so that Go's \u003e and \u0026 escapes appear.
    format!(
        r#"{{"name":"{name}","image":"{}","command":["/bin/sh","-c","exec /app/{} --port={port} 2\u003e\u00261 | tee /tmp/{name}.log \u0026\u0026 echo done \u003e /tmp/exit"],"ports":[{{"name":"http","containerPort":{port},"protocol":"TCP"}}],{env}"resources":{{"limits":{{"cpu":"500m","memory":"256Mi"}},"requests":{{"cpu":"100m","memory":"128Mi"}}}},{extra}"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File","imagePullPolicy":"IfNotPresent"}}"#,
        app.image, app.name
    )
}

/// The managedFields (FieldsV1) entry matching `container_json` with the same arguments.
fn container_fields_json(app: &App, idx: usize, envs: usize, rich: bool) -> String {
    let name = container_name(app, idx);
    let mut env = String::new();
    for i in 0..envs {
        let _ = write!(
            env,
            r#","k:{{\"name\":\"{}\"}}":{{".":{{}},"f:name":{{}},"f:value":{{}}}}"#,
            ENV_NAMES[i % ENV_NAMES.len()]
        );
    }
    let env = if envs > 0 {
        format!(r#""f:env":{{".":{{}}{env}}},"#)
    } else {
        String::new()
    };
    let (probe, security) = if rich {
        (
            r#""f:livenessProbe":{".":{},"f:failureThreshold":{},"f:httpGet":{".":{},"f:path":{},"f:port":{},"f:scheme":{}},"f:periodSeconds":{},"f:successThreshold":{},"f:timeoutSeconds":{}},"#,
            r#""f:securityContext":{".":{},"f:allowPrivilegeEscalation":{},"f:capabilities":{".":{},"f:drop":{}},"f:runAsNonRoot":{}},"f:volumeMounts":{".":{},"k:{\"mountPath\":\"/var/run/secrets/kubernetes.io/serviceaccount\"}":{".":{},"f:mountPath":{},"f:name":{},"f:readOnly":{}}},"#,
        )
    } else {
        ("", "")
    };
    format!(
        r#""k:{{\"name\":\"{name}\"}}":{{".":{{}},"f:command":{{}},{env}"f:image":{{}},"f:imagePullPolicy":{{}},{probe}"f:name":{{}},"f:ports":{{".":{{}},"k:{{\"containerPort\":{},\"protocol\":\"TCP\"}}":{{".":{{}},"f:containerPort":{{}},"f:name":{{}},"f:protocol":{{}}}}}},"f:resources":{{".":{{}},"f:limits":{{".":{{}},"f:cpu":{{}},"f:memory":{{}}}},"f:requests":{{".":{{}},"f:cpu":{{}},"f:memory":{{}}}}}},{security}"f:terminationMessagePath":{{}},"f:terminationMessagePolicy":{{}}}}"#,
        app.port + idx as u32
    )
}

/// Escapes a string the way Go's encoding/json does by default, HTML-safe characters included.
pub fn go_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// An nginx config of about `size` bytes for a ConfigMap, returned Go-escaped as the data value
/// and as kubectl's last-applied-configuration annotation (JSON inside a JSON string, so the
/// config is escaped twice there, as in real audit logs).
fn configmap_texts(app: &App, size: usize) -> (String, String) {
    let (name, ns, port) = (app.name, app.ns, app.port);
    let mut text = String::new();
    let mut block = 0;
    while text.len() < size {
        let _ = write!(
            text,
            "# upstream {block}: retries \u{26}\u{26} timeouts, 5xx > 2 per <minute> triggers eject\n\
             location /api/v{block}/ {{\n\
             \tproxy_pass http://127.0.0.1:{port};\n\
             \tproxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \tif ($http_user_agent ~* \"(bot|crawler)\") {{ return 403; }}\n\
             \taccess_log /var/log/nginx/{name}.log main if=$loggable;\n\
             }}\n"
        );
        block += 1;
    }
    let inner = format!(
        r#"{{"apiVersion":"v1","data":{{"nginx.conf":"{}"}},"kind":"ConfigMap","metadata":{{"annotations":{{}},"labels":{{"app.kubernetes.io/name":"{name}"}},"name":"{name}-config","namespace":"{ns}"}}}}"#,
        go_escape(&text)
    ) + "\n";
    (go_escape(&text), go_escape(&inner))
}

impl Generator {
    /// A generator on the fixed corpus clock: same seed, same bytes.
    pub fn new(seed: u64) -> Generator {
        let mut rng = Rng::new(seed);
        let specs: [(&str, &str, &str, u32, &str); 5] = [
            (
                "web",
                "shop",
                "registry.example.com/shop/web:1.14.2",
                8080,
                "7d9f8b6c5",
            ),
            (
                "checkout",
                "payments",
                "registry.example.com/pay/checkout:3.2.0",
                8443,
                "5c6b9d7f48",
            ),
            (
                "search",
                "shop",
                "registry.example.com/shop/search:0.9.7",
                9200,
                "68b7c9d5f",
            ),
            (
                "prometheus",
                "monitoring",
                "quay.io/prometheus/prometheus:v2.53.1",
                9090,
                "84d5f6c7b9",
            ),
            (
                "controller",
                "ingress-nginx",
                "registry.k8s.io/ingress-nginx/controller:v1.11.2",
                10254,
                "6f8d4b9c57",
            ),
        ];
        let apps: Vec<App> = specs
            .iter()
            .map(|&(name, ns, image, port, hash)| App {
                name,
                ns,
                image,
                port,
                hash,
                rs_uid: rng.uuid(),
                deploy_uid: rng.uuid(),
            })
            .collect();
        let mut variants = Vec::new();
        for (ai, app) in apps.iter().enumerate() {
            for size in [300usize, 500, 700, 900, 1100, 1300, 1500] {
                let (conf, last_applied) = configmap_texts(app, size);
                variants.push(Variant {
                    kind: 2,
                    app: ai,
                    containers: String::new(),
                    container_fields: String::new(),
                    replicas: 0,
                    conf,
                    last_applied,
                });
            }
        }
        for kind in 0..2usize {
            for (ai, app) in apps.iter().enumerate() {
                for containers in 1..=3usize {
                    for envs in [0usize, 2, 5, 9] {
                        for rich in [false, true] {
                            let mut c = String::from("[");
                            let mut f = String::new();
                            for idx in 0..containers {
                                if idx > 0 {
                                    c.push(',');
                                    f.push(',');
                                }
                                // Sidecars stay plain: only the main container is rich.
                                let rich = rich && idx == 0;
                                let envs = if idx == 0 { envs } else { envs.min(2) };
                                c.push_str(&container_json(app, idx, envs, rich));
                                f.push_str(&container_fields_json(app, idx, envs, rich));
                            }
                            c.push(']');
                            variants.push(Variant {
                                kind,
                                app: ai,
                                containers: c,
                                container_fields: f,
                                replicas: 1 + (envs as u32 % 4),
                                conf: String::new(),
                                last_applied: String::new(),
                            });
                        }
                    }
                }
            }
        }
        let nodes = (1..=6).map(|n| node_user(&mut rng, n)).collect();
        let controllers = CONTROLLERS
            .iter()
            .map(|c| controller_user(&mut rng, c))
            .collect();
        let pod_sas = apps
            .iter()
            .enumerate()
            .map(|(i, a)| pod_sa_user(&mut rng, a, 1 + i as u32 % 6))
            .collect();
        let admin = User {
            json: format!(
                r#"{{"username":"kubernetes-admin","groups":["kubeadm:cluster-admins","system:authenticated"],"extra":{{"authentication.kubernetes.io/credential-id":["X509SHA256={:016x}{:016x}{:016x}{:016x}"]}}}}"#,
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64(),
                rng.next_u64()
            ),
            ip: "203.0.113.42".to_string(),
            ua: UA_KUBECTL,
            reason: r#"RBAC: allowed by ClusterRoleBinding \"kubeadm:cluster-admins\" of ClusterRole \"cluster-admin\" to Group \"kubeadm:cluster-admins\""#.to_string(),
        };
        let anonymous = User {
            json: r#"{"username":"system:anonymous","groups":["system:unauthenticated"]}"#
                .to_string(),
            ip: "198.51.100.77".to_string(),
            ua: "python-requests/2.32.3",
            reason: String::new(),
        };
        let object_uids = (0..64).map(|_| rng.uuid()).collect();
        let mut generator = Generator {
            rng,
            clock_us: corpus_epoch_us(),
            last_received_us: 0,
            wall_clock: false,
            ts: TsCache {
                sec: 0,
                text: String::new(),
            },
            apps,
            variants,
            by_kind: [Vec::new(), Vec::new(), Vec::new()],
            nodes,
            controllers,
            pod_sas,
            admin,
            anonymous,
            object_uids,
            resource_version: 48_213_907,
        };
        generator.keep_sized_variants();
        generator
    }

    /// Timestamps from the system clock instead of the corpus clock (for live writing).
    pub fn with_wall_clock(mut self) -> Generator {
        self.wall_clock = true;
        self
    }

    /// Drops the container variants whose events would fall outside 3-8 KB, measured by
    /// rendering each one, so the size promise holds whatever the templates look like.
    fn keep_sized_variants(&mut self) {
        let saved_rng = Rng(self.rng.0);
        let saved_clock = self.clock_us;
        let mut keep = vec![false; self.variants.len()];
        let mut line = String::new();
        for (i, k) in keep.iter_mut().enumerate() {
            let mut max = 0;
            let mut min = usize::MAX;
            for _ in 0..4 {
                line.clear();
                self.request_response(999_999_999_999, i, &mut line);
                max = max.max(line.len());
                min = min.min(line.len());
            }
            *k = min >= 3000 && max <= 8000;
        }
        let mut i = 0;
        self.variants.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        // Templates are fixed, so an empty set is a programming error, not an input problem.
        assert!(
            !self.variants.is_empty(),
            "no RequestResponse variant is 3-8 KB"
        );
        for (i, v) in self.variants.iter().enumerate() {
            self.by_kind[v.kind].push(i);
        }
        self.rng = saved_rng;
        self.clock_us = saved_clock;
        self.last_received_us = 0;
    }

    /// Appends one event line (with its trailing newline) for sequence number `seq`.
    pub fn event(&mut self, seq: u64, out: &mut String) {
        if self.wall_clock {
            self.clock_us = now_us().max(self.clock_us + 1);
        } else {
            self.clock_us += self.rng.range(20, 400);
        }
        if self.rng.range(0, 100) < 20 {
            // Pods 50%, ConfigMaps 35%, Deployments 15% of RequestResponse events.
            let roll = self.rng.range(0, 100);
            let kind = if roll < 50 {
                0
            } else if roll < 85 {
                2
            } else {
                1
            };
            let pool = &self.by_kind[kind];
            let v = if pool.is_empty() {
                self.rng.range(0, self.variants.len() as u64) as usize
            } else {
                pool[self.rng.range(0, pool.len() as u64) as usize]
            };
            self.request_response(seq, v, out);
        } else {
            self.metadata(seq, out);
        }
        out.push('\n');
    }

    fn next_rv(&mut self) -> u64 {
        self.resource_version += self.rng.range(1, 40);
        self.resource_version
    }

    /// `"auditID":"…"`, with the sequence number as the last 12 decimal digits.
    fn head(&mut self, level: &str, stage: &str, seq: u64, out: &mut String) {
        let a = self.rng.next_u64();
        let _ = write!(
            out,
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"{level}","auditID":"{:08x}-{:04x}-4{:03x}-{:04x}-{:012}","stage":"{stage}","requestURI":""#,
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (a >> 3) & 0x3fff,
            seq % 1_000_000_000_000
        );
    }

    /// Writes requestReceivedTimestamp and stageTimestamp so both increase line by line: the
    /// line is written at stage time, and the receive time is the request's latency earlier.
    fn times(&mut self, out: &mut String) {
        let stage = self.clock_us;
        let latency = self.rng.range(300, 25_000);
        let received = stage
            .saturating_sub(latency)
            .max(self.last_received_us + 1)
            .min(stage);
        self.last_received_us = received;
        out.push_str(r#""requestReceivedTimestamp":""#);
        self.ts.push(out, received);
        out.push_str(r#"","stageTimestamp":""#);
        self.ts.push(out, stage);
        out.push_str(r#"","#);
    }

    fn metadata(&mut self, seq: u64, out: &mut String) {
        let shape = self.rng.range(0, 8);
        let rv = self.next_rv();
        let uid_idx = self.rng.range(0, self.object_uids.len() as u64) as usize;
        let stage = if shape == 3 && seq.is_multiple_of(2) {
            "ResponseStarted"
        } else {
            "ResponseComplete"
        };
        self.head("Metadata", stage, seq, out);
        // Each arm writes: URI","verb":..,"user":..,"sourceIPs":..,"userAgent":..,"objectRef":..,
        // "responseStatus":.., leaving the annotations' reason to the tail below.
        let (user, code_ok): (&User, bool) = match shape {
            0 => {
                let n = self.rng.range(0, self.nodes.len() as u64) as usize;
                let u = &self.nodes[n];
                let _ = write!(
                    out,
                    r#"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/worker-{0}?timeout=10s","verb":"update","user":{1},"sourceIPs":["{2}"],"userAgent":"{3}","objectRef":{{"resource":"leases","namespace":"kube-node-lease","name":"worker-{0}","uid":"{4}","apiGroup":"coordination.k8s.io","apiVersion":"v1","resourceVersion":"{5}"}},"responseStatus":{{"metadata":{{}},"code":200}},"#,
                    n + 1,
                    u.json,
                    u.ip,
                    u.ua,
                    self.object_uids[uid_idx],
                    rv
                );
                (u, true)
            }
            1 => {
                let c = self.rng.range(0, self.controllers.len() as u64) as usize;
                let ns = *self.rng.pick(NAMESPACES);
                let u = &self.controllers[c];
                let _ = write!(
                    out,
                    r#"/api/v1/namespaces/{ns}/configmaps/kube-root-ca.crt","verb":"get","user":{},"sourceIPs":["{}"],"userAgent":"{}/system:serviceaccount:kube-system:{}","objectRef":{{"resource":"configmaps","namespace":"{ns}","name":"kube-root-ca.crt","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"#,
                    u.json, u.ip, u.ua, CONTROLLERS[c]
                );
                (u, true)
            }
            2 => {
                let a = self.rng.range(0, self.apps.len() as u64) as usize;
                let app = &self.apps[a];
                let u = &self.pod_sas[a];
                let _ = write!(
                    out,
                    r#"/api/v1/namespaces/{0}/pods?labelSelector=app.kubernetes.io%2Fname%3D{1}\u0026limit=500\u0026resourceVersion=0","verb":"list","user":{2},"sourceIPs":["{3}"],"userAgent":"{4}","objectRef":{{"resource":"pods","namespace":"{0}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"#,
                    app.ns, app.name, u.json, u.ip, u.ua
                );
                (u, true)
            }
            3 => {
                let c = self.rng.range(0, self.controllers.len() as u64) as usize;
                let ns = *self.rng.pick(NAMESPACES);
                let timeout = self.rng.range(300, 600);
                let u = &self.controllers[c];
                let _ = write!(
                    out,
                    r#"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?allowWatchBookmarks=true\u0026resourceVersion={rv}\u0026timeout={}m{}s\u0026timeoutSeconds={timeout}\u0026watch=true","verb":"watch","user":{},"sourceIPs":["{}"],"userAgent":"{}/system:serviceaccount:kube-system:{}","objectRef":{{"resource":"endpointslices","namespace":"{ns}","apiGroup":"discovery.k8s.io","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"#,
                    timeout / 60,
                    timeout % 60,
                    u.json,
                    u.ip,
                    u.ua,
                    CONTROLLERS[c]
                );
                (u, true)
            }
            4 => {
                let a = self.rng.range(0, self.apps.len() as u64) as usize;
                let app = &self.apps[a];
                let u = &self.pod_sas[a];
                let _ = write!(
                    out,
                    r#"/api/v1/namespaces/{0}/secrets/{1}-tls-{2}","verb":"get","user":{3},"sourceIPs":["{4}"],"userAgent":"{5}","objectRef":{{"resource":"secrets","namespace":"{0}","name":"{1}-tls-{2}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"status":"Failure","message":"secrets \"{1}-tls-{2}\" not found","reason":"NotFound","details":{{"name":"{1}-tls-{2}","kind":"secrets"}},"code":404}},"#,
                    app.ns,
                    app.name,
                    rv % 97,
                    u.json,
                    u.ip,
                    u.ua
                );
                (u, true)
            }
            5 => {
                let ns = *self.rng.pick(NAMESPACES);
                let u = &self.admin;
                let _ = write!(
                    out,
                    r#"/api/v1/namespaces/{ns}/pods?limit=500","verb":"list","user":{},"sourceIPs":["{}"],"userAgent":"{}","objectRef":{{"resource":"pods","namespace":"{ns}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"#,
                    u.json, u.ip, u.ua
                );
                (u, true)
            }
            6 => {
                let u = &self.anonymous;
                let _ = write!(
                    out,
                    r#"/api/v1/namespaces/kube-system/secrets?limit=100","verb":"list","user":{},"sourceIPs":["{}"],"userAgent":"{}","objectRef":{{"resource":"secrets","namespace":"kube-system","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"status":"Failure","message":"secrets is forbidden: User \"system:anonymous\" cannot list resource \"secrets\" in API group \"\" in the namespace \"kube-system\"","reason":"Forbidden","details":{{"kind":"secrets"}},"code":403}},"#,
                    u.json, u.ip, u.ua
                );
                (u, false)
            }
            _ => {
                let n = self.rng.range(0, self.nodes.len() as u64) as usize;
                let a = self.rng.range(0, self.apps.len() as u64) as usize;
                let app = &self.apps[a];
                let suffix = pod_suffix(rv);
                let u = &self.nodes[n];
                let _ = write!(
                    out,
                    r#"/api/v1/namespaces/{0}/pods/{1}-{2}-{3}/status","verb":"patch","user":{4},"sourceIPs":["{5}"],"userAgent":"{6}","objectRef":{{"resource":"pods","namespace":"{0}","name":"{1}-{2}-{3}","apiVersion":"v1","subresource":"status"}},"responseStatus":{{"metadata":{{}},"code":200}},"#,
                    app.ns, app.name, app.hash, suffix, u.json, u.ip, u.ua
                );
                (u, true)
            }
        };
        let reason = user.reason.clone();
        self.times(out);
        if code_ok {
            let _ = write!(
                out,
                r#""annotations":{{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"{reason}"}}}}"#
            );
        } else {
            out.push_str(r#""annotations":{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}"#);
        }
    }

    /// kind 0: a ReplicaSet controller creating a Pod; kind 1: the deployment controller
    /// updating a Deployment's status. Both carry full request and response objects.
    fn request_response(&mut self, seq: u64, v: usize, out: &mut String) {
        let rv = self.next_rv();
        let obj_uid = self.rng.uuid();
        let variant = &self.variants[v];
        let kind = variant.kind;
        let app = &self.apps[variant.app];
        let created =
            format_second(self.clock_us / 1_000_000 - if kind == 0 { 0 } else { 86_400 * 12 });
        let (ctrl, ctrl_idx) = match kind {
            0 => (&self.controllers[0], 0),
            1 => (&self.controllers[1], 1),
            _ => (&self.admin, 0),
        };
        let user_json = ctrl.json.clone();
        let reason = ctrl.reason.clone();
        let ip = ctrl.ip.clone();
        let containers = variant.containers.clone();
        let fields = variant.container_fields.clone();
        let replicas = variant.replicas;
        let conf = variant.conf.clone();
        let last_applied = variant.last_applied.clone();
        let (name, ns, image_hash) = (app.name, app.ns, app.hash);
        let rs_uid = app.rs_uid.clone();
        let deploy_uid = app.deploy_uid.clone();
        self.head("RequestResponse", "ResponseComplete", seq, out);
        let labels = format!(
            r#"{{"app.kubernetes.io/name":"{name}","app.kubernetes.io/part-of":"{ns}","app.kubernetes.io/version":"{image_hash}"}}"#
        );
        if kind == 0 {
            let pod = format!("{name}-{image_hash}-{}", pod_suffix(self.rng.next_u64()));
            let pod_labels = format!(
                r#"{{"app.kubernetes.io/name":"{name}","app.kubernetes.io/part-of":"{ns}","pod-template-hash":"{image_hash}"}}"#
            );
            let owner = format!(
                r#"[{{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"{name}-{image_hash}","uid":"{rs_uid}","controller":true,"blockOwnerDeletion":true}}]"#
            );
            let spec = format!(
                r#"{{"containers":{containers},"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"{name}","serviceAccount":"{name}","securityContext":{{"runAsNonRoot":true,"seccompProfile":{{"type":"RuntimeDefault"}}}},"schedulerName":"default-scheduler""#
            );
            // Admission adds the default tolerations and priority: only the response has them.
            let req_spec = format!("{spec}}}");
            let resp_spec = format!(
                r#"{spec},"tolerations":[{{"key":"node.kubernetes.io/not-ready","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}},{{"key":"node.kubernetes.io/unreachable","operator":"Exists","effect":"NoExecute","tolerationSeconds":300}}],"priority":0,"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"}}"#
            );
            let _ = write!(
                out,
                r#"/api/v1/namespaces/{ns}/pods","verb":"create","user":{user_json},"sourceIPs":["{ip}"],"userAgent":"{UA_KCM}/system:serviceaccount:kube-system:{}","objectRef":{{"resource":"pods","namespace":"{ns}","name":"{pod}","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":201}},"requestObject":{{"kind":"Pod","apiVersion":"v1","metadata":{{"generateName":"{name}-{image_hash}-","namespace":"{ns}","creationTimestamp":null,"labels":{pod_labels},"ownerReferences":{owner}}},"spec":{req_spec},"status":{{}}}},"responseObject":{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{pod}","generateName":"{name}-{image_hash}-","namespace":"{ns}","uid":"{obj_uid}","resourceVersion":"{rv}","creationTimestamp":"{created}Z","labels":{pod_labels},"ownerReferences":{owner},"managedFields":[{{"manager":"kube-controller-manager","operation":"Update","apiVersion":"v1","time":"{created}Z","fieldsType":"FieldsV1","fieldsV1":{{"f:metadata":{{"f:generateName":{{}},"f:labels":{{".":{{}},"f:app.kubernetes.io/name":{{}},"f:app.kubernetes.io/part-of":{{}},"f:pod-template-hash":{{}}}},"f:ownerReferences":{{".":{{}},"k:{{\"uid\":\"{rs_uid}\"}}":{{}}}}}},"f:spec":{{"f:containers":{{{fields}}},"f:dnsPolicy":{{}},"f:enableServiceLinks":{{}},"f:restartPolicy":{{}},"f:schedulerName":{{}},"f:securityContext":{{".":{{}},"f:runAsNonRoot":{{}},"f:seccompProfile":{{".":{{}},"f:type":{{}}}}}},"f:terminationGracePeriodSeconds":{{}}}}}}}}]}},"spec":{resp_spec},"status":{{"phase":"Pending","qosClass":"Burstable"}}}},"#,
                CONTROLLERS[ctrl_idx]
            );
        } else if kind == 2 {
            let now = format_second(self.clock_us / 1_000_000);
            let _ = write!(
                out,
                r#"/api/v1/namespaces/{ns}/configmaps/{name}-config?fieldManager=kubectl-client-side-apply\u0026fieldValidation=Strict","verb":"patch","user":{user_json},"sourceIPs":["{ip}"],"userAgent":"{UA_KUBECTL}","objectRef":{{"resource":"configmaps","namespace":"{ns}","name":"{name}-config","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{{"data":{{"nginx.conf":"{conf}"}},"metadata":{{"annotations":{{"kubectl.kubernetes.io/last-applied-configuration":"{last_applied}"}}}}}},"responseObject":{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"{name}-config","namespace":"{ns}","uid":"{deploy_uid}","resourceVersion":"{rv}","creationTimestamp":"{created}Z","labels":{{"app.kubernetes.io/name":"{name}"}},"annotations":{{"kubectl.kubernetes.io/last-applied-configuration":"{last_applied}"}},"managedFields":[{{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"v1","time":"{now}Z","fieldsType":"FieldsV1","fieldsV1":{{"f:data":{{".":{{}},"f:nginx.conf":{{}}}},"f:metadata":{{"f:annotations":{{".":{{}},"f:kubectl.kubernetes.io/last-applied-configuration":{{}}}},"f:labels":{{".":{{}},"f:app.kubernetes.io/name":{{}}}}}}}}}}]}},"data":{{"nginx.conf":"{conf}"}}}},"#
            );
        } else {
            let generation = 3 + rv % 40;
            let ready = self.rng.range(0, replicas as u64 + 1);
            let transition = format_second(self.clock_us / 1_000_000 - self.rng.range(1, 3600));
            let template = format!(
                r#"{{"replicas":{replicas},"selector":{{"matchLabels":{{"app.kubernetes.io/name":"{name}"}}}},"template":{{"metadata":{{"creationTimestamp":null,"labels":{{"app.kubernetes.io/name":"{name}","app.kubernetes.io/part-of":"{ns}"}},"annotations":{{"kubectl.kubernetes.io/restartedAt":"2025-07-01T08:00:00Z"}}}},"spec":{{"containers":{containers},"restartPolicy":"Always","terminationGracePeriodSeconds":30,"dnsPolicy":"ClusterFirst","serviceAccountName":"{name}","securityContext":{{"runAsNonRoot":true}},"schedulerName":"default-scheduler"}}}},"strategy":{{"type":"RollingUpdate","rollingUpdate":{{"maxUnavailable":"25%","maxSurge":"25%"}}}},"revisionHistoryLimit":10,"progressDeadlineSeconds":600}}"#
            );
            let meta = |rv: u64| {
                format!(
                    r#"{{"name":"{name}","namespace":"{ns}","uid":"{deploy_uid}","resourceVersion":"{rv}","generation":{generation},"creationTimestamp":"{created}Z","labels":{labels},"annotations":{{"deployment.kubernetes.io/revision":"{}"}},"managedFields":[{{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"apps/v1","time":"{created}Z","fieldsType":"FieldsV1","fieldsV1":{{"f:spec":{{"f:replicas":{{}},"f:template":{{"f:spec":{{"f:containers":{{{fields}}}}}}}}}}}}},{{"manager":"kube-controller-manager","operation":"Update","apiVersion":"apps/v1","time":"{transition}Z","fieldsType":"FieldsV1","fieldsV1":{{"f:status":{{"f:availableReplicas":{{}},"f:conditions":{{}},"f:observedGeneration":{{}},"f:readyReplicas":{{}},"f:replicas":{{}},"f:updatedReplicas":{{}}}}}},"subresource":"status"}}]}}"#,
                    generation - 2
                )
            };
            let status = |observed: u64, ready: u64| {
                format!(
                    r#"{{"observedGeneration":{observed},"replicas":{replicas},"updatedReplicas":{replicas},"readyReplicas":{ready},"availableReplicas":{ready},"conditions":[{{"type":"Available","status":"True","lastUpdateTime":"{transition}Z","lastTransitionTime":"{transition}Z","reason":"MinimumReplicasAvailable","message":"Deployment has minimum availability."}},{{"type":"Progressing","status":"True","lastUpdateTime":"{transition}Z","lastTransitionTime":"{created}Z","reason":"NewReplicaSetAvailable","message":"ReplicaSet \"{name}-{image_hash}\" has successfully progressed."}}]}}"#
                )
            };
            let _ = write!(
                out,
                r#"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status","verb":"update","user":{user_json},"sourceIPs":["{ip}"],"userAgent":"{UA_KCM}/system:serviceaccount:kube-system:{}","objectRef":{{"resource":"deployments","namespace":"{ns}","name":"{name}","uid":"{deploy_uid}","apiGroup":"apps","apiVersion":"v1","resourceVersion":"{}","subresource":"status"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{{"kind":"Deployment","apiVersion":"apps/v1","metadata":{},"spec":{template},"status":{}}},"responseObject":{{"kind":"Deployment","apiVersion":"apps/v1","metadata":{},"spec":{template},"status":{}}},"#,
                CONTROLLERS[ctrl_idx],
                rv - 1,
                meta(rv - 1),
                status(generation, ready),
                meta(rv),
                status(generation, ready)
            );
        }
        self.times(out);
        let _ = write!(
            out,
            r#""annotations":{{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"{reason}","pod-security.kubernetes.io/enforce-policy":"restricted:latest"}}}}"#
        );
    }
}

/// The sequence number of a generated event: the last 12 digits of its auditID.
pub fn seq_of(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"auditID\":\"";
    let start = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = line[start..].iter().position(|&b| b == b'"')?;
    let id = &line[start..start + len];
    let digits = &id[id.iter().rposition(|&b| b == b'-')? + 1..];
    std::str::from_utf8(digits).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Corpus and live writing
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub struct CorpusStats {
    pub lines: u64,
    pub bytes: u64,
}

/// Writes events 1, 2, … to `path` (truncating it) until at least `bytes` bytes are written.
pub fn write_corpus(path: &Path, bytes: u64, seed: u64) -> io::Result<CorpusStats> {
    let file = File::create(path)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", path.display())))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut generator = Generator::new(seed);
    let mut line = String::with_capacity(16 * 1024);
    let mut stats = CorpusStats { lines: 0, bytes: 0 };
    while stats.bytes < bytes {
        line.clear();
        generator.event(stats.lines + 1, &mut line);
        w.write_all(line.as_bytes())?;
        stats.lines += 1;
        stats.bytes += line.len() as u64;
    }
    w.flush()?;
    Ok(stats)
}

pub struct WriteOpts {
    pub dir: PathBuf,
    pub lines: u64,
    /// Lines per second; 0 writes as fast as possible.
    pub rate: f64,
    /// Rotate after every this many lines of this run; 0: not by count.
    pub rotate_every: u64,
    /// Rotate before a line would take audit.log past this many bytes, as lumberjack's
    /// MaxSize does; 0: not by size.
    pub rotate_bytes: u64,
    pub compress: bool,
    /// Backups to keep; 0 keeps all (lumberjack's MaxBackups semantics).
    pub max_backups: usize,
    pub first_seq: u64,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct WriteStats {
    pub lines: u64,
    pub bytes: u64,
    pub rotations: u64,
}

/// Opens audit.log the way lumberjack does when it finds an existing file: append, 0600 if new.
pub fn open_log_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))
}

/// Appends `opts.lines` events to DIR/audit.log, one write() per line, paced to `opts.rate`.
pub fn write_log(opts: &WriteOpts) -> io::Result<WriteStats> {
    fs::create_dir_all(&opts.dir)?;
    let log = opts.dir.join("audit.log");
    let mut file = open_log_append(&log)?;
    let mut generator = Generator::new(opts.seed ^ opts.first_seq).with_wall_clock();
    let mut line = String::with_capacity(16 * 1024);
    let mut stats = WriteStats::default();
    let mut size = file.metadata()?.len();
    let start = Instant::now();
    for i in 0..opts.lines {
        if opts.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / opts.rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        line.clear();
        generator.event(opts.first_seq + i, &mut line);
        let by_count = opts.rotate_every > 0 && i > 0 && i % opts.rotate_every == 0;
        let by_size =
            opts.rotate_bytes > 0 && size > 0 && size + line.len() as u64 > opts.rotate_bytes;
        if by_count || by_size {
            rotate(&opts.dir, &mut file, opts.compress, opts.max_backups)?;
            stats.rotations += 1;
            size = 0;
        }
        // A regular file takes the whole buffer in one write(); write_all only loops on the
        // partial writes a full disk would cause.
        file.write_all(line.as_bytes())?;
        stats.lines += 1;
        stats.bytes += line.len() as u64;
        size += line.len() as u64;
    }
    Ok(stats)
}

/// lumberjack's backup name: `audit-2006-01-02T15-04-05.000.log`, UTC.
pub fn backup_name(now_us: u64) -> String {
    let t = format_second(now_us / 1_000_000).replace(':', "-");
    format!("audit-{t}.{:03}.log", now_us / 1000 % 1000)
}

/// Rename audit.log to its backup name, open a fresh audit.log (O_TRUNC, 0600), then prune and
/// compress backups, in lumberjack's order (it mills right after opening the new file).
pub fn rotate(dir: &Path, file: &mut File, compress: bool, max_backups: usize) -> io::Result<()> {
    let log = dir.join("audit.log");
    // lumberjack would silently overwrite a backup rotated in the same millisecond; a test tool
    // must not lose lines, so wait for a fresh name instead.
    let backup = loop {
        let name = backup_name(now_us());
        let plain = dir.join(&name);
        let gz = dir.join(format!("{name}.gz"));
        if !plain.exists() && !gz.exists() {
            break plain;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    fs::rename(&log, &backup)?;
    *file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&log)?;
    mill(dir, compress, max_backups)
}

fn mill(dir: &Path, compress: bool, max_backups: usize) -> io::Result<()> {
    let mut backups: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("audit-") && (n.ends_with(".log") || n.ends_with(".log.gz")))
        .collect();
    // The timestamp format sorts lexicographically; newest first like lumberjack.
    backups.sort_by(|a, b| b.cmp(a));
    if max_backups > 0 {
        let mut kept: Vec<String> = Vec::new();
        let mut remaining = Vec::new();
        for name in backups {
            let base = name.trim_end_matches(".gz").to_string();
            if kept.contains(&base) || kept.len() < max_backups {
                if !kept.contains(&base) {
                    kept.push(base);
                }
                remaining.push(name);
            } else {
                fs::remove_file(dir.join(&name))?;
            }
        }
        backups = remaining;
    }
    if compress {
        for name in backups.iter().filter(|n| n.ends_with(".log")) {
            let src = dir.join(name);
            let dst = dir.join(format!("{name}.gz"));
            let mut input = File::open(&src)?;
            let out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&dst)?;
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            io::copy(&mut input, &mut gz)?;
            gz.finish()?.sync_all()?;
            fs::remove_file(&src)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS certificates and the konnectivity tunnel's proxies (shared with bench.rs and soak.rs)
// ---------------------------------------------------------------------------------------------

/// A CA, a server certificate for kubernetes-audit-tailer and a client certificate, with the
/// `openssl` command (X.509 v3, EC P-256 keys).
pub fn make_certs(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl: {e} (TLS needs the openssl command)"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=bench-ca",
    ]);
    run(&a)?;
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:kubernetes-audit-tailer\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        let ext = format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}");
        fs::write(dir.join(format!("{name}.ext")), ext).map_err(|e| e.to_string())?;
        let (key, csr, crt, extf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let mut a = vec!["req"];
        a.extend(ec);
        a.extend([
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=kubernetes-audit-tailer",
        ]);
        run(&a)?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &extf,
        ])?;
    }
    Ok(())
}

/// The arguments that make the forwarder and the tailer talk TLS with the certificates
/// `make_certs` wrote to `certs`: (forwarder's, tailer's). The tailer asks for a client
/// certificate signed by the same CA.
pub fn tls_args(certs: &Path) -> (Vec<String>, Vec<String>) {
    let p = |f: &str| certs.join(f).display().to_string();
    let forwarder = vec![
        "--tls-basedir".to_string(),
        certs.display().to_string(),
        "--tls-ca-file=ca.crt".to_string(),
        "--tls-crt-file=client.crt".to_string(),
        "--tls-key-file=client.key".to_string(),
    ];
    let tailer = vec![
        "--tls-crt-file".to_string(),
        p("server.crt"),
        "--tls-key-file".to_string(),
        p("server.key"),
        "--client-ca".to_string(),
        p("ca.crt"),
    ];
    (forwarder, tailer)
}

/// A konnectivity server stand-in: socat listening on a Unix socket in front of tinyproxy, which
/// answers HTTP CONNECT. Each runs in its own process group so that killing the group also ends
/// the connections its children (socat forks per connection) still relay, as a dying
/// konnectivity server ends its tunnels.
pub struct Tunnel {
    pub socket: PathBuf,
    pub proxy_port: u16,
    /// tinyproxy's configuration and log.
    pub dir: PathBuf,
}

impl Tunnel {
    pub fn new(dir: &Path) -> io::Result<Tunnel> {
        Ok(Tunnel {
            socket: dir.join("konnectivity.sock"),
            proxy_port: procs::free_port()?,
            dir: dir.join("tunnel"),
        })
    }

    /// tinyproxy, allowing CONNECT to `tailer_port` only.
    pub fn start_proxy(&self, tailer_port: u16) -> Result<procs::Proc, String> {
        fs::create_dir_all(&self.dir).map_err(|e| format!("create {}: {e}", self.dir.display()))?;
        let conf = self.dir.join("tinyproxy.conf");
        fs::write(
            &conf,
            format!(
                "User root\nGroup root\nPort {}\nListen 127.0.0.1\nTimeout 600\nAllow 127.0.0.1\nConnectPort {tailer_port}\nMaxClients 100\nLogLevel Warning\nLogFile \"{}\"\n",
                self.proxy_port,
                self.dir.join("tinyproxy.log").display()
            ),
        )
        .map_err(|e| format!("write {}: {e}", conf.display()))?;
        procs::Proc::spawn(
            "tinyproxy",
            std::process::Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
        .map_err(|e| format!("{e} (the tunnel needs tinyproxy)"))
    }

    /// socat on the Unix socket, relaying each connection to tinyproxy.
    pub fn start_front(&self) -> Result<procs::Proc, String> {
        let _ = fs::remove_file(&self.socket);
        procs::Proc::spawn(
            "socat",
            std::process::Command::new("socat")
                .arg(format!("UNIX-LISTEN:{},fork", self.socket.display()))
                .arg(format!("TCP:127.0.0.1:{}", self.proxy_port))
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        )
        .map_err(|e| format!("{e} (the tunnel needs socat)"))
    }

    /// Waits until both listen.
    pub fn wait_up(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !(self.socket.exists()
            && std::net::TcpStream::connect(("127.0.0.1", self.proxy_port)).is_ok())
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "the tunnel (tinyproxy + socat) did not come up within {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes (shared with bench.rs and soak.rs)
// ---------------------------------------------------------------------------------------------

pub mod procs {
    //! Spawning the binary under test, signalling it, and reaping it with its resource usage.

    use std::collections::VecDeque;
    use std::io::{self, BufRead, BufReader, Read};
    use std::net::{TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// The release binary next to this example: examples live in `<target>/release/examples/`,
    /// which also honours CARGO_TARGET_DIR without having to read it.
    pub fn default_binary() -> PathBuf {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("."));
        match exe.parent().and_then(|p| p.parent()) {
            Some(profile_dir) => profile_dir.join("audit-forwarder"),
            None => PathBuf::from("target/release/audit-forwarder"),
        }
    }

    /// A loopback port that was free a moment ago (the child binds it right after).
    pub fn free_port() -> io::Result<u16> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        Ok(l.local_addr()?.port())
    }

    /// Waits until something accepts on the port (the probe connection is closed unused),
    /// failing at once if `server` exits instead.
    pub fn wait_listening(port: u16, timeout: Duration, server: &mut Proc) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(u) = server.try_reap()? {
                return Err(io::Error::other(format!(
                    "{} exited ({}) instead of listening on 127.0.0.1:{port}",
                    server.name,
                    u.describe()
                )));
            }
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("nothing listens on 127.0.0.1:{port} after {timeout:?}: {e}"),
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub struct Usage {
        /// Exit code, or None if killed by a signal.
        pub code: Option<i32>,
        pub signal: Option<i32>,
        pub user_s: f64,
        pub sys_s: f64,
        pub max_rss_kib: i64,
    }

    impl Usage {
        pub fn cpu_s(&self) -> f64 {
            self.user_s + self.sys_s
        }

        pub fn describe(&self) -> String {
            match (self.code, self.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(s)) => format!("killed by signal {s}"),
                _ => "unknown status".to_string(),
            }
        }
    }

    /// A spawned child that is reaped with wait4 (for its rusage) and killed if dropped alive,
    /// so an error path in a tool never leaves a forwarder running.
    pub struct Proc {
        pub name: String,
        pub child: Child,
        usage: Option<Usage>,
    }

    impl Proc {
        pub fn spawn(name: &str, cmd: &mut Command) -> io::Result<Proc> {
            let child = cmd.spawn().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("spawn {name} ({:?}): {e}", cmd.get_program()),
                )
            })?;
            Ok(Proc {
                name: name.to_string(),
                child,
                usage: None,
            })
        }

        pub fn pid(&self) -> libc::pid_t {
            self.child.id() as libc::pid_t
        }

        fn wait4(&mut self, flags: libc::c_int) -> io::Result<Option<Usage>> {
            if let Some(u) = self.usage {
                return Ok(Some(u));
            }
            let mut status: libc::c_int = 0;
            // SAFETY: zeroed rusage is a valid out-parameter for wait4.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: pid is our own unreaped child; both pointers are valid for the call.
            let r = unsafe { libc::wait4(self.pid(), &mut status, flags, &mut ru) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            if r == 0 {
                return Ok(None);
            }
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            let usage = Usage {
                code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
                signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
                user_s: tv(ru.ru_utime),
                sys_s: tv(ru.ru_stime),
                max_rss_kib: ru.ru_maxrss,
            };
            self.usage = Some(usage);
            Ok(Some(usage))
        }

        /// Some(usage) once the child has exited (it is reaped then).
        pub fn try_reap(&mut self) -> io::Result<Option<Usage>> {
            self.wait4(libc::WNOHANG)
        }

        pub fn signal(&self, sig: libc::c_int) {
            if self.usage.is_none() {
                // SAFETY: plain kill(2) on our own unreaped child's pid.
                unsafe { libc::kill(self.pid(), sig) };
            }
        }

        /// SIGKILL to the child's process group (it was spawned as its leader with
        /// `process_group(0)`), so the children it forked die with it; then reaps it.
        pub fn kill_group(&mut self) -> io::Result<Usage> {
            if self.usage.is_none() {
                // SAFETY: kill(2) on the process group our own unreaped child leads.
                unsafe { libc::kill(-self.pid(), libc::SIGKILL) };
            }
            self.wait4(0)?
                .ok_or_else(|| io::Error::other("wait4 returned no child"))
        }

        /// SIGTERM, wait up to `grace`, then SIGKILL; returns the child's usage.
        pub fn terminate(&mut self, grace: Duration) -> io::Result<Usage> {
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + grace;
            loop {
                if let Some(u) = self.try_reap()? {
                    return Ok(u);
                }
                if Instant::now() >= deadline {
                    eprintln!(
                        "{}: no exit {grace:?} after SIGTERM, sending SIGKILL",
                        self.name
                    );
                    self.signal(libc::SIGKILL);
                    return self
                        .wait4(0)?
                        .ok_or_else(|| io::Error::other("wait4 returned no child"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            if self.usage.is_none() {
                self.signal(libc::SIGKILL);
                let _ = self.wait4(0);
            }
        }
    }

    /// The last lines a child wrote, for error messages.
    pub type Tail = Arc<Mutex<VecDeque<String>>>;

    /// Reads `r` line by line on a thread, calls `f(line, arrival)` and keeps the last 30 lines.
    pub fn read_lines<R, F>(r: R, mut f: F) -> Tail
    where
        R: Read + Send + 'static,
        F: FnMut(&str, Instant) + Send + 'static,
    {
        let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
        let keep = tail.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::with_capacity(1 << 16, r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let now = Instant::now();
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches('\n');
                f(line, now);
                if let Ok(mut t) = keep.lock() {
                    if t.len() == 30 {
                        t.pop_front();
                    }
                    t.push_back(line.to_string());
                }
            }
        });
        tail
    }

    pub fn tail_text(t: &Tail) -> String {
        match t.lock() {
            Ok(t) => t.iter().map(|l| format!("    {l}\n")).collect(),
            Err(_) => String::new(),
        }
    }

    /// The number after `key=` in a `k=v k=v` log line, where `key` starts a word.
    pub fn field_u64(line: &str, key: &str) -> Option<u64> {
        let pat = format!("{key}=");
        let mut from = 0;
        while let Some(p) = line[from..].find(&pat) {
            let at = from + p;
            let starts_word =
                at == 0 || matches!(line.as_bytes()[at - 1], b' ' | b':' | b',' | b'\t' | b'{');
            if starts_word {
                let rest = &line[at + pat.len()..];
                let end = rest
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                return rest[..end].parse().ok();
            }
            from = at + pat.len();
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers shared by the command line tools
// ---------------------------------------------------------------------------------------------

/// `500M`, `2G`, `64K`, `1000`: binary multiples, so `500M` is at least 500 MB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("size {s:?}: unknown suffix {c:?} (K, M or G)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|e| format!("size {s:?}: {e}"))
}

/// `--help` or `-h` anywhere: `just demo --help` reaches a tool as `demo --help`, after the
/// subcommand, where [`Args::parse`] would take it for a flag missing its value.
pub fn asks_for_help(argv: &[String]) -> bool {
    argv.iter().any(|a| a == "--help" || a == "-h")
}

/// Minimal `--name value` / `--name=value` / `--flag` parser; `flags` lists the valueless ones.
pub struct Args {
    pairs: Vec<(String, Option<String>)>,
}

impl Args {
    pub fn parse(args: &[String], flags: &[&str]) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            if let Some((n, v)) = name.split_once('=') {
                pairs.push((n.to_string(), Some(v.to_string())));
            } else if flags.contains(&name) {
                pairs.push((name.to_string(), None));
            } else {
                let v = it.next().ok_or(format!("--{name} needs a value"))?;
                pairs.push((name.to_string(), Some(v.clone())));
            }
        }
        Ok(Args { pairs })
    }

    /// This process's arguments for a tool whose valueless flags are `flags`; `--help` or `-h`
    /// prints `usage` and exits.
    pub fn from_env(usage: &str, flags: &[&str]) -> Result<Args, String> {
        let argv: Vec<String> = std::env::args().skip(1).collect();
        if asks_for_help(&argv) {
            println!("{usage}");
            std::process::exit(0);
        }
        Args::parse(&argv, flags)
    }

    /// `--bin PATH`, by default the release binary beside this tool.
    pub fn binary(&mut self) -> PathBuf {
        self.value("bin")
            .map(PathBuf::from)
            .unwrap_or_else(procs::default_binary)
    }

    /// Removes and returns every value given for `name`, in order.
    pub fn all(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.pairs.retain(|(n, v)| {
            if n == name {
                out.push(v.clone().unwrap_or_default());
                false
            } else {
                true
            }
        });
        out
    }

    pub fn value(&mut self, name: &str) -> Option<String> {
        self.all(name).pop()
    }

    pub fn flag(&mut self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    pub fn parsed<T: std::str::FromStr>(&mut self, name: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| format!("--{name} {v:?}: {e}")),
        }
    }

    /// Errors on anything the command did not ask for.
    pub fn finish(self) -> Result<(), String> {
        match self.pairs.first() {
            None => Ok(()),
            Some((n, _)) => Err(format!("unknown option --{n}")),
        }
    }
}

/// Indents one compact JSON value for display (strings and escapes are copied untouched).
pub fn pretty_json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let chars: Vec<char> = s.trim().chars().collect();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else {
            match c {
                '"' => {
                    in_str = true;
                    out.push(c);
                }
                '{' | '[' => {
                    let close = if c == '{' { '}' } else { ']' };
                    if chars.get(i + 1) == Some(&close) {
                        out.push(c);
                        out.push(close);
                        i += 1;
                    } else {
                        out.push(c);
                        depth += 1;
                        newline(&mut out, depth);
                    }
                }
                '}' | ']' => {
                    depth = depth.saturating_sub(1);
                    newline(&mut out, depth);
                    out.push(c);
                }
                ',' => {
                    out.push(c);
                    newline(&mut out, depth);
                }
                ':' => out.push_str(": "),
                c if c.is_whitespace() => {}
                c => out.push(c),
            }
        }
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Demo
// ---------------------------------------------------------------------------------------------

fn count_lines(path: &Path) -> u64 {
    let mut buf = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut buf)) {
        Ok(_) => buf.iter().filter(|&&b| b == b'\n').count() as u64,
        Err(_) => 0,
    }
}

fn wait_records(
    records: &Path,
    want: u64,
    timeout: Duration,
    fwd: &mut procs::Proc,
    tailer: &mut procs::Proc,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let have = count_lines(records);
        if have >= want {
            println!("   tailer has {have} records");
            return Ok(());
        }
        for p in [&mut *fwd, &mut *tailer] {
            if let Ok(Some(u)) = p.try_reap() {
                return Err(format!("{} exited early: {}", p.name, u.describe()));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "only {have} of {want} records arrived within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn demo(mut args: Args) -> Result<(), String> {
    let bin = args
        .value("bin")
        .map(PathBuf::from)
        .unwrap_or_else(procs::default_binary);
    let keep = args.flag("keep");
    args.finish()?;
    if !bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        ));
    }
    let dir = std::env::temp_dir().join(format!("audit-forwarder-demo-{}", std::process::id()));
    let result = run_demo(&bin, &dir);
    if result.is_err() {
        for name in ["tailer.stderr", "forwarder.stderr"] {
            let mut text = String::new();
            if File::open(dir.join(name))
                .and_then(|mut f| f.read_to_string(&mut text))
                .is_ok()
            {
                let lines: Vec<&str> = text.lines().collect();
                println!("-- last lines of {name}:");
                for l in &lines[lines.len().saturating_sub(20)..] {
                    println!("   {l}");
                }
            }
        }
    }
    if keep || result.is_err() {
        println!("files kept in {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    result
}

fn run_demo(bin: &Path, dir: &Path) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: io::Error| format!("{what}: {err}")
    };
    let logdir = dir.join("auditlog");
    fs::create_dir_all(&logdir).map_err(e("create demo dir"))?;
    let log = logdir.join("audit.log");
    let records = dir.join("records.jsonl");
    let fwd_log = dir.join("forwarder.stderr");
    let tailer_log = dir.join("tailer.stderr");
    let opts = |lines, rate, rotate_every, first_seq| WriteOpts {
        dir: logdir.clone(),
        lines,
        rate,
        rotate_every,
        rotate_bytes: 0,
        compress: true,
        max_backups: 5,
        first_seq,
        seed: 7,
    };

    println!(
        "== 1. kube-apiserver (simulated) writes 500 events to {}",
        log.display()
    );
    write_log(&opts(500, 0.0, 0, 1)).map_err(e("write audit.log"))?;

    let port = procs::free_port().map_err(e("find a free port"))?;
    println!(
        "== 2. tailer on 127.0.0.1:{port} (records -> {})",
        records.display()
    );
    let out = File::create(&records).map_err(e("create records file"))?;
    let err = File::create(&tailer_log).map_err(e("create tailer log"))?;
    let mut tailer = procs::Proc::spawn(
        "tailer",
        std::process::Command::new(bin)
            .args(["tailer", "--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err),
    )
    .map_err(|e| e.to_string())?;
    procs::wait_listening(port, Duration::from_secs(10), &mut tailer).map_err(|e| e.to_string())?;

    println!("== 3. forwarder reads audit.log from the head and follows it");
    let err = File::create(&fwd_log).map_err(e("create forwarder log"))?;
    let mut fwd = procs::Proc::spawn(
        "forwarder",
        std::process::Command::new(bin)
            .arg("--audit-log-path")
            .arg(&log)
            .args(["--target", &format!("127.0.0.1:{port}"), "--plaintext"])
            .args(["--stats-interval", "1s", "--log-level", "info"])
            .arg("--read-from-head=true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err),
    )
    .map_err(|e| e.to_string())?;

    println!("== 4. 1500 more events at 500 lines/s, rotating (and gzipping) after 500 of them");
    write_log(&opts(1500, 500.0, 500, 501)).map_err(e("write audit.log"))?;
    wait_records(
        &records,
        2000,
        Duration::from_secs(30),
        &mut fwd,
        &mut tailer,
    )?;

    println!("== 5. 200 more events with one more rotation while running");
    write_log(&opts(200, 200.0, 100, 2001)).map_err(e("write audit.log"))?;
    let total_lines = 2200;
    wait_records(
        &records,
        total_lines,
        Duration::from_secs(30),
        &mut fwd,
        &mut tailer,
    )?;

    println!("== 6. audit log directory now:");
    let mut names: Vec<(String, u64)> = fs::read_dir(&logdir)
        .map_err(e("list log dir"))?
        .filter_map(|e| e.ok())
        .map(|e| {
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    names.sort();
    for (n, len) in &names {
        println!("   {len:>10}  {n}");
    }

    println!("== 7. SIGTERM forwarder, then tailer");
    let fu = fwd
        .terminate(Duration::from_secs(15))
        .map_err(|e| e.to_string())?;
    println!("   forwarder: {}", fu.describe());
    let tu = tailer
        .terminate(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    println!("   tailer:    {}", tu.describe());

    let mut text = String::new();
    File::open(&records)
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(e("read records"))?;
    println!("== 8. first 3 records:");
    for rec in text.lines().take(3) {
        // RequestResponse events run to hundreds of lines once indented: show their start.
        let pretty = pretty_json(rec);
        let lines: Vec<&str> = pretty.lines().collect();
        for l in lines.iter().take(45) {
            println!("{l}");
        }
        if lines.len() > 45 {
            println!("  ... ({} more lines)", lines.len() - 45);
        }
    }

    let seqs: Vec<Option<u64>> = text.lines().map(|l| seq_of(l.as_bytes())).collect();
    let mut seen = vec![false; total_lines as usize + 1];
    let mut dups = 0;
    let mut unparsed = 0;
    let mut backwards = 0;
    let mut prev = 0;
    for s in &seqs {
        match s {
            Some(s) if (*s as usize) < seen.len() => {
                if seen[*s as usize] {
                    dups += 1;
                }
                seen[*s as usize] = true;
                if *s < prev {
                    backwards += 1;
                }
                prev = *s;
            }
            _ => unparsed += 1,
        }
    }
    let missing = seen[1..].iter().filter(|&&b| !b).count();
    println!("== 9. records vs lines");
    println!("   lines written    {total_lines}");
    println!("   records received {}", seqs.len());
    println!(
        "   missing {missing}, duplicates {dups}, out of order {backwards}, without seq {unparsed}"
    );

    println!("== 10. forwarder stats lines:");
    let mut flog = String::new();
    let _ = File::open(&fwd_log).and_then(|mut f| f.read_to_string(&mut flog));
    let stats: Vec<&str> = flog.lines().filter(|l| l.contains("stats:")).collect();
    if stats.len() > 8 {
        println!("   ({} earlier lines omitted)", stats.len() - 8);
    }
    for l in stats.iter().skip(stats.len().saturating_sub(8)) {
        println!("   {l}");
    }
    if fu.code != Some(0) {
        return Err(format!(
            "forwarder did not exit 0 on SIGTERM: {}",
            fu.describe()
        ));
    }
    if missing > 0 || unparsed > 0 {
        return Err(format!(
            "{missing} lines never arrived, {unparsed} records unrecognised"
        ));
    }
    println!("== demo OK");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

const USAGE: &str = "usage:
  gen corpus --out FILE --bytes N[K|M|G] [--seed S]
  gen write --dir DIR --lines N [--rate R] [--rotate-every M] [--rotate-size 1M] [--compress]
            [--maxbackup K] [--first-seq N] [--seed S]
  gen line --seq N
  gen demo [--bin PATH] [--keep]";

fn run(argv: &[String]) -> Result<(), String> {
    let Some(cmd) = argv.first() else {
        return Err(USAGE.to_string());
    };
    if asks_for_help(argv) {
        println!("{USAGE}");
        return Ok(());
    }
    let mut args = Args::parse(&argv[1..], &["compress", "keep"])?;
    match cmd.as_str() {
        "corpus" => {
            let out = args.value("out").ok_or("corpus needs --out FILE")?;
            let bytes = parse_size(&args.value("bytes").ok_or("corpus needs --bytes N")?)?;
            let seed = args.parsed("seed", 1u64)?;
            args.finish()?;
            let t = Instant::now();
            let s = write_corpus(Path::new(&out), bytes, seed).map_err(|e| e.to_string())?;
            let secs = t.elapsed().as_secs_f64();
            println!(
                "lines={} bytes={} seconds={secs:.2} MB/s={:.0}",
                s.lines,
                s.bytes,
                s.bytes as f64 / 1e6 / secs
            );
            Ok(())
        }
        "write" => {
            let opts = WriteOpts {
                dir: PathBuf::from(args.value("dir").ok_or("write needs --dir DIR")?),
                lines: args.parsed("lines", 0u64)?,
                rate: args.parsed("rate", 0.0f64)?,
                rotate_every: args.parsed("rotate-every", 0u64)?,
                rotate_bytes: parse_size(&args.value("rotate-size").unwrap_or_else(|| "0".into()))?,
                compress: args.flag("compress"),
                max_backups: args.parsed("maxbackup", 0usize)?,
                first_seq: args.parsed("first-seq", 1u64)?,
                seed: args.parsed("seed", 1u64)?,
            };
            args.finish()?;
            if opts.lines == 0 {
                return Err("write needs --lines N (N > 0)".to_string());
            }
            let s = write_log(&opts).map_err(|e| e.to_string())?;
            println!(
                "lines={} bytes={} rotations={}",
                s.lines, s.bytes, s.rotations
            );
            Ok(())
        }
        "line" => {
            let seq = args
                .value("seq")
                .ok_or("line needs --seq N")?
                .parse::<u64>()
                .map_err(|e| format!("--seq: {e}"))?;
            let seed = args.parsed("seed", 1u64)?;
            args.finish()?;
            let mut line = String::new();
            Generator::new(seed ^ seq)
                .with_wall_clock()
                .event(seq, &mut line);
            io::stdout()
                .write_all(line.as_bytes())
                .map_err(|e| e.to_string())
        }
        "demo" => demo(args),
        "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&argv) {
        eprintln!("gen: {e}");
        std::process::exit(1);
    }
}
