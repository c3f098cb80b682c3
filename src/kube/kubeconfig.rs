//! Where the Kubernetes API is and how to authenticate to it: a kubeconfig's current context
//! resolved as client-go's `clientcmd` resolves it (the original was a client-go program, so a
//! kubeconfig it accepted must mean the same here), or the in-cluster configuration of a pod's
//! service account when no kubeconfig is given, as `BuildConfigFromFlags("", "")` falls back.
//!
//! Files the kubeconfig names (CA, client certificate and key) are read at load; the token
//! file is only resolved, because it rotates and its reader re-reads it.

use std::fmt;
use std::fs;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use super::yaml::{self, Kind, Node};
use super::{base64, json};

/// The service account mount every pod gets, read by [`in_cluster`].
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Clone, Default)]
pub struct ApiConfig {
    /// The kubeconfig's path, or "in-cluster".
    pub origin: String,
    /// Names of the context, cluster and user entries used; empty in-cluster.
    pub context: String,
    pub cluster: String,
    pub user: String,
    /// Host name or IP address; an IPv6 address without brackets (see [`ApiConfig::authority`]).
    pub host: String,
    pub port: u16,
    /// The server URL's path without a trailing `/` ("" for none), put before every API path.
    pub base_path: String,
    /// PEM roots to verify the server with; `None`: the system's (webpki) roots.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure: bool,
    /// The name to verify the server certificate against (and send as SNI), instead of `host`.
    pub tls_server_name: Option<String>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// A bearer token given inline (or read in-cluster at start).
    pub token: Option<String>,
    /// The file a bearer token is re-read from, already resolved against the kubeconfig's
    /// directory. With both set, the file's token replaces `token` once read (client-go's
    /// file token source does the same).
    pub token_file: Option<PathBuf>,
    /// Basic authentication (username, password).
    pub basic: Option<(String, String)>,
}

impl ApiConfig {
    /// `host:port` as the Host header and CONNECT take it, an IPv6 address in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Says which credentials are present without printing them, so a logged config leaks nothing.
impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |present: bool| if present { "<set>" } else { "<none>" };
        f.debug_struct("ApiConfig")
            .field("origin", &self.origin)
            .field("context", &self.context)
            .field("cluster", &self.cluster)
            .field("user", &self.user)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("base_path", &self.base_path)
            .field("ca_pem", &set(self.ca_pem.is_some()))
            .field("insecure", &self.insecure)
            .field("tls_server_name", &self.tls_server_name)
            .field("client_cert_pem", &set(self.client_cert_pem.is_some()))
            .field("client_key_pem", &set(self.client_key_pem.is_some()))
            .field("token", &set(self.token.is_some()))
            .field("token_file", &self.token_file)
            .field("basic", &set(self.basic.is_some()))
            .finish()
    }
}

/// Reads the kubeconfig at `path`; every error starts with the path.
pub fn load(path: &Path) -> Result<ApiConfig, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text =
        String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8 text: {e}", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    from_text(&text, dir, &path.display().to_string())
}

/// Resolves the current context of the kubeconfig `text` (YAML, or JSON when its first
/// non-space byte is `{`). Relative file names resolve against `dir`; errors start with
/// `origin`.
pub fn from_text(text: &str, dir: &Path, origin: &str) -> Result<ApiConfig, String> {
    resolve(text, dir, origin).map_err(|e| format!("{origin}: {e}"))
}

fn resolve(text: &str, dir: &Path, origin: &str) -> Result<ApiConfig, String> {
    let root = if text.trim_start().starts_with('{') {
        from_json(&json::parse(text.as_bytes()).map_err(|e| format!("reading JSON: {e}"))?)
    } else {
        yaml::parse(text)?
    };
    if root.kind == Kind::Null {
        return Err("the kubeconfig is empty".into());
    }
    let top = Fields::of("the kubeconfig".into(), &root)?;
    let context = top.string("current-context")?.ok_or(
        "no current-context is set (`kubectl config use-context NAME` sets one); the context \
         decides which cluster and user to use",
    )?;
    let (_, ctx) = named(&root, "contexts", "context", context)?.ok_or_else(|| {
        format!("current-context {context:?} is not among the contexts") + &names(&root, "contexts")
    })?;
    let ctx = Fields::of(format!("context {context:?}"), ctx)?;
    let cluster = ctx
        .string("cluster")?
        .ok_or_else(|| format!("context {context:?} names no cluster"))?;
    let (cluster_item, cluster_node) =
        named(&root, "clusters", "cluster", cluster)?.ok_or_else(|| {
            format!(
                "context {context:?} names cluster {cluster:?}, which is not among the clusters"
            ) + &names(&root, "clusters")
        })?;
    // No user is anonymous access, as in client-go; a user that is named must exist.
    let user = ctx.string("user")?.unwrap_or("");
    let user_node = match user {
        "" => &NULL,
        _ => {
            named(&root, "users", "user", user)?
                .ok_or_else(|| {
                    format!("context {context:?} names user {user:?}, which is not among the users")
                        + &names(&root, "users")
                })?
                .1
        }
    };

    let mut api = ApiConfig {
        origin: origin.to_string(),
        context: context.to_string(),
        cluster: cluster.to_string(),
        user: user.to_string(),
        ..ApiConfig::default()
    };
    read_user(
        &mut api,
        &Fields::of(format!("user {user:?}"), user_node)?,
        dir,
    )?;
    let cl = Fields::of(format!("cluster {cluster:?}"), cluster_node)?;
    read_cluster(&mut api, &cl, cluster_item, dir)?;
    Ok(api)
}

/// The user entry's credentials into `api`.
fn read_user(api: &mut ApiConfig, us: &Fields, dir: &Path) -> Result<(), String> {
    let what = &us.what;
    if us.present("exec") {
        return Err(format!(
            "{what}: exec credential plugins are not supported; give the user a token, a \
             tokenFile or a client certificate instead (for example a ServiceAccount token)"
        ));
    }
    if let Some(ap) = us.get("auth-provider") {
        let name = ap.get("name").and_then(Node::as_str).unwrap_or("?");
        return Err(format!(
            "{what}: auth-provider plugins (here {name:?}) are not supported; give the user a \
             token, a tokenFile or a client certificate instead"
        ));
    }
    if let Some(key) = ["as", "as-uid", "as-groups", "as-user-extra"]
        .into_iter()
        .find(|k| us.present(k))
    {
        return Err(format!("{what}: impersonation ({key}) is not supported"));
    }
    api.client_cert_pem = us.pem("client-certificate-data", "client-certificate", dir)?;
    api.client_key_pem = us.pem("client-key-data", "client-key", dir)?;
    match (&api.client_cert_pem, &api.client_key_pem) {
        (Some(_), None) => {
            return Err(format!(
                "{what}: client-key-data or client-key must be given with the client certificate"
            ))
        }
        (None, Some(_)) => {
            return Err(format!(
                "{what}: a client key without client-certificate-data or client-certificate"
            ))
        }
        _ => {}
    }
    api.token = us.string("token")?.map(str::to_string);
    api.token_file = us.string("tokenFile")?.map(|p| dir.join(p));
    api.basic = match (us.string("username")?, us.string("password")?) {
        (None, None) => None,
        (u, p) => Some((u.unwrap_or("").to_string(), p.unwrap_or("").to_string())),
    };
    if api.basic.is_some() && (api.token.is_some() || api.token_file.is_some()) {
        return Err(format!(
            "{what}: username/password and a bearer token (token or tokenFile) are both set; \
             client-go refuses this too, keep one"
        ));
    }
    Ok(())
}

/// The cluster entry (the list item `item` holding `cl`) into `api`: where the server is and
/// how to verify it. Read after the user, whose client certificate counts as a TLS setting.
fn read_cluster(api: &mut ApiConfig, cl: &Fields, item: &Node, dir: &Path) -> Result<(), String> {
    let what = &cl.what;
    if cl.present("proxy-url") {
        return Err(format!(
            "{what}: proxy-url is not supported; use --proxy-host and --proxy-port"
        ));
    }
    api.ca_pem = cl.pem("certificate-authority-data", "certificate-authority", dir)?;
    api.insecure = cl.flag("insecure-skip-tls-verify")?;
    if api.insecure && api.ca_pem.is_some() {
        return Err(format!(
            "{what}: insecure-skip-tls-verify is set together with a certificate authority; \
             client-go refuses this (\"specifying a root certificates file with the insecure \
             flag is not allowed\"), keep one"
        ));
    }
    api.tls_server_name = cl.string("tls-server-name")?.map(str::to_string);
    let server_node = cl.get("server");
    let server = cl
        .string("server")?
        .ok_or_else(|| format!("{what}{} has no server", item.at()))?;
    let has_tls = api.ca_pem.is_some() || api.insecure || api.client_cert_pem.is_some();
    (api.host, api.port, api.base_path) = parse_server(server, has_tls).map_err(|e| {
        let at = server_node.map(Node::at).unwrap_or_default();
        format!("{what}: server {server:?}{at}: {e}")
    })?;
    Ok(())
}

/// The configuration of a pod's service account (client-go's `rest.InClusterConfig`): the API
/// at `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT`, its token and CA from
/// [`SERVICE_ACCOUNT_DIR`], both read now so a missing mount is reported at start.
pub fn in_cluster(env: &dyn Fn(&str) -> Option<String>) -> Result<ApiConfig, String> {
    in_cluster_from(env, Path::new(SERVICE_ACCOUNT_DIR))
}

fn in_cluster_from(env: &dyn Fn(&str) -> Option<String>, sa: &Path) -> Result<ApiConfig, String> {
    let var = |k: &str| env(k).filter(|v| !v.is_empty());
    let (Some(host), Some(port)) = (
        var("KUBERNETES_SERVICE_HOST"),
        var("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Err(
            "in-cluster: no kubeconfig given (--kubecfg) and not running in a pod: \
                    KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not both set"
                .into(),
        );
    };
    check_host(&host).map_err(|e| format!("in-cluster: KUBERNETES_SERVICE_HOST: {e}"))?;
    let port =
        parse_port(&port).map_err(|e| format!("in-cluster: KUBERNETES_SERVICE_PORT: {e}"))?;
    let token_file = sa.join("token");
    let token = fs::read_to_string(&token_file)
        .map_err(|e| format!("in-cluster: {}: {e}", token_file.display()))?;
    let ca_file = sa.join("ca.crt");
    let ca = fs::read(&ca_file).map_err(|e| format!("in-cluster: {}: {e}", ca_file.display()))?;
    let ca = pem(ca).map_err(|e| format!("in-cluster: {}: {e}", ca_file.display()))?;
    let token = token.trim();
    Ok(ApiConfig {
        origin: "in-cluster".into(),
        host,
        port,
        ca_pem: Some(ca),
        token: (!token.is_empty()).then(|| token.to_string()),
        token_file: Some(token_file),
        ..ApiConfig::default()
    })
}

/// Splits an API server URL into host, port and path prefix. Only https: the API carries
/// bearer tokens and Secrets, so it is never spoken to in the clear. Without a scheme
/// client-go picks https when the cluster has TLS settings and http otherwise; the same here,
/// and http is refused.
fn parse_server(server: &str, has_tls: bool) -> Result<(String, u16, String), String> {
    let rest = match server.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("http") => {
            return Err(
                "plain http:// is not supported: the API must be reached over TLS \
                        (https://)"
                    .into(),
            )
        }
        Some((scheme, _)) => return Err(format!("unsupported scheme {scheme:?}; use https://")),
        None if has_tls => server,
        None => {
            return Err(
                "no scheme, and without TLS settings client-go would use plain \
                        http://; write https://"
                    .into(),
            )
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    // client-go drops the query and fragment too.
    let path = tail
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/');
    if authority.contains('@') {
        return Err("user information in the server URL is not supported".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(r) => r
            .split_once(']')
            .ok_or("an IPv6 address without its closing `]`")?,
        None => match authority.find(':') {
            Some(i) => (&authority[..i], &authority[i..]),
            None => (authority, ""),
        },
    };
    check_host(host)?;
    let port = match port {
        "" => 443,
        p => parse_port(p.strip_prefix(':').unwrap_or(p))?,
    };
    Ok((host.to_string(), port, path.to_string()))
}

fn check_host(host: &str) -> Result<(), String> {
    let name_like = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if host.is_empty() {
        Err("no host".into())
    } else if host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
        Err(format!("{host:?} is not an IPv6 address"))
    } else if !host.contains(':') && !name_like {
        Err(format!("{host:?} is not a host name or IP address"))
    } else {
        Ok(())
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(port) if port > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
        _ => Err(format!("{p:?} is not a port number")),
    }
}

/// Refuses bytes that cannot be PEM now, rather than as a TLS error at the first request.
fn pem(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        Ok(bytes)
    } else {
        Err("not PEM (no -----BEGIN line)".into())
    }
}

static NULL: Node = Node {
    line: 0,
    kind: Kind::Null,
};

/// A mapping entry of the kubeconfig (a cluster, a user, a context) read field by field, with
/// client-go's reading of empty values: an empty string is the same as no value.
struct Fields<'a> {
    /// `cluster "name"`, for messages.
    what: String,
    entries: &'a [(String, Node)],
}

impl<'a> Fields<'a> {
    fn of(what: String, node: &'a Node) -> Result<Fields<'a>, String> {
        match &node.kind {
            Kind::Map(entries) => Ok(Fields { what, entries }),
            Kind::Null => Ok(Fields { what, entries: &[] }),
            _ => Err(format!(
                "{what}{} must be a mapping, not {}",
                node.at(),
                node.kind_name()
            )),
        }
    }

    /// The value of `key`, if present and not null.
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, v)| k == key && v.kind != Kind::Null)
            .map(|(_, v)| v)
    }

    /// Whether `key` has a value that is not empty.
    fn present(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| match &v.kind {
            Kind::Scalar(s) => !s.is_empty(),
            Kind::Seq(items) => !items.is_empty(),
            Kind::Map(m) => !m.is_empty(),
            Kind::Null => false,
        })
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Node {
                kind: Kind::Scalar(s),
                ..
            }) => Ok((!s.is_empty()).then_some(s.as_str())),
            Some(v) => Err(format!(
                "{}: {key} must be a string, not {}{}",
                self.what,
                v.kind_name(),
                v.at()
            )),
        }
    }

    fn flag(&self, key: &str) -> Result<bool, String> {
        match self.string(key)? {
            None | Some("false" | "False" | "FALSE") => Ok(false),
            Some("true" | "True" | "TRUE") => Ok(true),
            Some(other) => Err(format!(
                "{}: {key} must be true or false, not {other:?}{}",
                self.what,
                self.get(key).map(Node::at).unwrap_or_default()
            )),
        }
    }

    /// PEM given inline as base64 (`data_key`) or as a file (`file_key`, relative to `dir`).
    /// Both at once is refused, as client-go's validation refuses it.
    fn pem(&self, data_key: &str, file_key: &str, dir: &Path) -> Result<Option<Vec<u8>>, String> {
        let what = &self.what;
        let at = |key: &str| self.get(key).map(Node::at).unwrap_or_default();
        match (self.string(data_key)?, self.string(file_key)?) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(format!(
                "{what}: {data_key} and {file_key} are both given; client-go refuses this too, \
                 keep one"
            )),
            (Some(data), None) => base64::decode(data.as_bytes())
                .and_then(pem)
                .map(Some)
                .map_err(|e| format!("{what}: {data_key}{}: {e}", at(data_key))),
            (None, Some(file)) => {
                let path = dir.join(file);
                fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(pem)
                    .map(Some)
                    .map_err(|e| format!("{what}: {file_key} {}: {e}", path.display()))
            }
        }
    }
}

/// The entry named `name` in the list `list` of the kubeconfig (`clusters`, `contexts`,
/// `users`, items shaped `{name: N, <inner>: {...}}`): the item and its inner mapping. A name
/// that appears twice is refused, as client-go's conversion refuses it.
fn named<'a>(
    root: &'a Node,
    list: &str,
    inner: &str,
    name: &str,
) -> Result<Option<(&'a Node, &'a Node)>, String> {
    let items: &[Node] = match root.get(list).map(|l| &l.kind) {
        None | Some(Kind::Null) => &[],
        Some(Kind::Seq(items)) => items,
        Some(_) => {
            let l = root.get(list).unwrap_or(&NULL);
            return Err(format!(
                "{list}{} must be a list, not {}",
                l.at(),
                l.kind_name()
            ));
        }
    };
    let mut found: Option<(&Node, &Node)> = None;
    for item in items {
        let fields = Fields::of(format!("an entry of {list}"), item)?;
        let Some(n) = fields.string("name")? else {
            return Err(format!("an entry of {list}{} has no name", item.at()));
        };
        if n != name {
            continue;
        }
        if let Some((first, _)) = found {
            return Err(format!(
                "{list}: the name {name:?} appears twice{}{}",
                first.at(),
                item.at()
            ));
        }
        found = Some((item, fields.get(inner).unwrap_or(&NULL)));
    }
    Ok(found)
}

/// " (found: "a", "b")" for a message about a name missing from `list`.
fn names(root: &Node, list: &str) -> String {
    let found: Vec<String> = match root.get(list).map(|l| &l.kind) {
        Some(Kind::Seq(items)) => items
            .iter()
            .filter_map(|i| i.get("name").and_then(Node::as_str))
            .map(|n| format!("{n:?}"))
            .collect(),
        _ => Vec::new(),
    };
    if found.is_empty() {
        format!(" (there are no {list})")
    } else {
        format!(" (found: {})", found.join(", "))
    }
}

/// A JSON kubeconfig as the YAML tree, so one reader serves both; lines are unknown (0).
fn from_json(v: &json::Value) -> Node {
    let kind = match v {
        json::Value::Null => Kind::Null,
        json::Value::Bool(b) => Kind::Scalar(b.to_string()),
        json::Value::Int(i) => Kind::Scalar(i.to_string()),
        json::Value::Float(f) => Kind::Scalar(f.to_string()),
        json::Value::Str(s) => Kind::Scalar(s.clone()),
        json::Value::Array(a) => Kind::Seq(a.iter().map(from_json).collect()),
        json::Value::Object(m) => {
            Kind::Map(m.iter().map(|(k, v)| (k.clone(), from_json(v))).collect())
        }
    };
    Node { line: 0, kind }
}

#[cfg(test)]
mod tests {
    use super::{from_text, in_cluster_from, load, ApiConfig};
    use std::fs;
    use std::path::{Path, PathBuf};

    const CA: &str = "-----BEGIN CERTIFICATE-----\nY2E=\n-----END CERTIFICATE-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nY2VydA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\na2V5\n-----END EC PRIVATE KEY-----\n";

    fn b64(data: &str) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.as_bytes().chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, &b| n << 8 | u32::from(b)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("af-kubeconfig-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test's temp dir");
        dir
    }

    /// The fields a test checks, on one line; PEM shown by which test constant it is.
    fn summary(c: &ApiConfig) -> String {
        let pem = |p: &Option<Vec<u8>>| match p.as_deref() {
            None => "-",
            Some(b) if b == CA.as_bytes() => "CA",
            Some(b) if b == CERT.as_bytes() => "CERT",
            Some(b) if b == KEY.as_bytes() => "KEY",
            Some(_) => "?",
        };
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        format!(
            "{}/{}/{} {} {} ca={} insecure={} sni={} cert={} key={} token={} file={} basic={}",
            c.context,
            c.cluster,
            c.user,
            c.authority(),
            if c.base_path.is_empty() {
                "-"
            } else {
                &c.base_path
            },
            pem(&c.ca_pem),
            c.insecure,
            opt(&c.tls_server_name),
            pem(&c.client_cert_pem),
            pem(&c.client_key_pem),
            opt(&c.token),
            c.token_file
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string()),
            c.basic
                .as_ref()
                .map_or("-".into(), |(u, p)| format!("{u}:{p}")),
        )
    }

    /// `kind get kubeconfig`, byte for byte in shape.
    fn kind_config() -> String {
        format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    \
             server: https://127.0.0.1:36433\n  name: kind-kind\ncontexts:\n- context:\n    \
             cluster: kind-kind\n    user: kind-kind\n  name: kind-kind\ncurrent-context: \
             kind-kind\nkind: Config\npreferences: {{}}\nusers:\n- name: kind-kind\n  user:\n    \
             client-certificate-data: {}\n    client-key-data: {}\n",
            b64(CA),
            b64(CERT),
            b64(KEY)
        )
    }

    #[test]
    fn resolves_the_shapes_real_writers_produce() {
        let table: Vec<(&str, String, &str)> = vec![
            (
                "kind",
                kind_config(),
                "kind-kind/kind-kind/kind-kind 127.0.0.1:36433 - ca=CA insecure=false sni=- \
                 cert=CERT key=KEY token=- file=- basic=-",
            ),
            (
                "gardener generic token kubeconfig",
                format!(
                    "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    \
                     server: https://kube-apiserver\n  name: shoot--p--c\ncontexts:\n- context:\n    \
                     cluster: shoot--p--c\n    user: shoot--p--c\n  name: shoot--p--c\n\
                     current-context: shoot--p--c\nkind: Config\npreferences: {{}}\nusers:\n\
                     - name: shoot--p--c\n  user:\n    tokenFile: \
                     /var/run/secrets/gardener.cloud/shoot/token/token\n",
                    b64(CA)
                ),
                "shoot--p--c/shoot--p--c/shoot--p--c kube-apiserver:443 - ca=CA insecure=false \
                 sni=- cert=- key=- token=- file=/var/run/secrets/gardener.cloud/shoot/token/token \
                 basic=-",
            ),
            (
                "token with insecure-skip-tls-verify, a path prefix, a context namespace",
                "clusters:\n- name: c\n  cluster:\n    server: https://10.0.0.1:6443/k8s/api/?x=1\n    \
                 insecure-skip-tls-verify: true\ncontexts:\n- name: x\n  context: {cluster: c, \
                 user: u, namespace: other}\ncurrent-context: x\nusers:\n- name: u\n  user:\n    \
                 token: abc.def\n"
                    .into(),
                "x/c/u 10.0.0.1:6443 /k8s/api ca=- insecure=true sni=- cert=- key=- token=abc.def \
                 file=- basic=-",
            ),
            (
                "JSON, as kubectl config view -o json writes it",
                format!(
                    r#"  {{"kind":"Config","apiVersion":"v1","preferences":{{}},
                    "clusters":[{{"name":"j","cluster":{{"server":"https://[fd00::1]:6443",
                    "certificate-authority-data":"{}","tls-server-name":"api.example"}}}}],
                    "users":[{{"name":"j","user":{{"token":"t0k"}}}}],
                    "contexts":[{{"name":"j","context":{{"cluster":"j","user":"j"}}}}],
                    "current-context":"j"}}"#,
                    b64(CA)
                ),
                "j/j/j [fd00::1]:6443 - ca=CA insecure=false sni=api.example cert=- key=- \
                 token=t0k file=- basic=-",
            ),
            (
                "several contexts, the current one chosen; comments, quoting, ---",
                "# written by hand\n---\ncurrent-context: \"prod\"   # the one in use\n\
                 contexts:   # two of them\n  - name: dev\n    context:\n      cluster: dev\n      \
                 user: dev\n  - name: 'prod'\n    context:\n      # comment inside\n      \
                 \"cluster\": prod\n      'user': \"admin\"\nclusters:\n  - name: dev\n    \
                 cluster: {server: 'https://dev:1'}\n  - name: prod\n    cluster:\n      \
                 server: \"https://prod.example:8443\" # trailing\n      insecure-skip-tls-verify: \
                 'True'\nusers:\n  - name: dev\n    user: {token: d}\n  - name: admin\n    \
                 user:\n      username: 'adm # not a comment'\n      password: \"p\\u00e4ss\"\n"
                    .into(),
                "prod/prod/admin prod.example:8443 - ca=- insecure=true sni=- cert=- key=- \
                 token=- file=- basic=adm # not a comment:p\u{e4}ss",
            ),
            (
                "no scheme with TLS settings is https; no user is anonymous",
                "current-context: a\ncontexts:\n- name: a\n  context:\n    cluster: a\nclusters:\n\
                 - name: a\n  cluster:\n    server: api.local:6443\n    insecure-skip-tls-verify: \
                 true\n"
                    .into(),
                "a/a/ api.local:6443 - ca=- insecure=true sni=- cert=- key=- token=- file=- basic=-",
            ),
        ];
        for (name, text, want) in table {
            let got = from_text(&text, Path::new("/nowhere"), "kc")
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(summary(&got), want, "{name}");
            assert_eq!(got.origin, "kc", "{name}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_kubeconfig_dir() {
        let dir = scratch("paths");
        fs::create_dir_all(dir.join("pki")).expect("mkdir");
        fs::write(dir.join("ca.crt"), CA).expect("write");
        fs::write(dir.join("pki/client.crt"), CERT).expect("write");
        fs::write(dir.join("pki/client.key"), KEY).expect("write");
        let text = format!(
            "current-context: c\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\n\
             clusters:\n- name: c\n  cluster:\n    server: https://h\n    certificate-authority: \
             ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: pki/client.crt\n    \
             client-key: {}\n    tokenFile: token\n",
            dir.join("pki/client.key").display()
        );
        let path = dir.join("kubeconfig");
        fs::write(&path, text).expect("write");
        let got = load(&path).expect("loads");
        assert_eq!(
            summary(&got),
            format!(
                "c/c/u h:443 - ca=CA insecure=false sni=- cert=CERT key=KEY token=- file={}/token \
                 basic=-",
                dir.display()
            )
        );
        assert_eq!(got.origin, path.display().to_string());

        // minikube's shape: absolute file names, extension lists with a date that has `:`s.
        let d = dir.display();
        let minikube = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority: {d}/ca.crt\n    \
             extensions:\n    - extension:\n        last-update: Mon, 01 Jan 2024 10:00:00 CET\n\
             \x20       provider: minikube.sigs.k8s.io\n        version: v1.32.0\n      name: \
             cluster_info\n    server: https://192.168.49.2:8443\n  name: minikube\ncontexts:\n\
             - context:\n    cluster: minikube\n    extensions:\n    - extension:\n        \
             provider: minikube.sigs.k8s.io\n      name: context_info\n    namespace: default\n    \
             user: minikube\n  name: minikube\ncurrent-context: minikube\nkind: Config\n\
             preferences: {{}}\nusers:\n- name: minikube\n  user:\n    client-certificate: \
             {d}/pki/client.crt\n    client-key: {d}/pki/client.key\n"
        );
        let got = from_text(&minikube, Path::new("/elsewhere"), "kc").expect("minikube");
        assert_eq!(
            summary(&got),
            "minikube/minikube/minikube 192.168.49.2:8443 - ca=CA insecure=false sni=- cert=CERT \
             key=KEY token=- file=- basic=-"
        );

        fs::remove_file(dir.join("ca.crt")).expect("rm");
        let err = load(&path).expect_err("CA gone");
        let want = format!(
            "{}: cluster \"c\": certificate-authority {}/ca.crt: No such file",
            path.display(),
            dir.display()
        );
        assert!(err.starts_with(&want), "{err}");
        let missing = dir.join("absent");
        let err = load(&missing).expect_err("no file");
        assert!(
            err.starts_with(&format!("{}: No such file", missing.display())),
            "{err}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn refuses_each_error_naming_the_entry_or_line() {
        let kind = kind_config();
        let with = |from: &str, to: &str| {
            assert!(kind.contains(from), "{from}");
            kind.replacen(from, to, 1)
        };
        let ca = format!("certificate-authority-data: {}", b64(CA));
        let key = format!("client-key-data: {}", b64(KEY));
        let user = "- name: kind-kind\n  user:\n";
        let table: Vec<(&str, String, &str)> = vec![
            ("empty", "# nothing\n".into(), "kc: the kubeconfig is empty"),
            ("no current-context", with("current-context: kind-kind\n", ""), "kc: no current-context is set"),
            ("empty current-context", with("current-context: kind-kind", "current-context: \"\""), "kc: no current-context is set"),
            ("unknown context", with("current-context: kind-kind", "current-context: other"), "kc: current-context \"other\" is not among the contexts (found: \"kind-kind\")"),
            ("unknown cluster", with("    cluster: kind-kind\n", "    cluster: gone\n"), "kc: context \"kind-kind\" names cluster \"gone\", which is not among the clusters (found: \"kind-kind\")"),
            ("unknown user", with("    user: kind-kind\n", "    user: gone\n"), "kc: context \"kind-kind\" names user \"gone\", which is not among the users"),
            ("exec", with(user, &format!("{user}    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: gke-gcloud-auth-plugin\n")), "kc: user \"kind-kind\": exec credential plugins are not supported"),
            ("auth-provider", with(user, &format!("{user}    auth-provider:\n      name: oidc\n")), "kc: user \"kind-kind\": auth-provider plugins (here \"oidc\") are not supported"),
            ("block scalar", with("kind: Config\n", "kind: Config\nextra: |\n  text\n"), "kc: line 14: block scalars (| or >) are not supported"),
            ("tab indentation", with("    server:", "\tserver:"), "kc: line 5: a tab in the indentation"),
            ("duplicate key", with("kind: Config\n", "kind: Config\nkind: Config\n"), "kc: line 14: duplicate key \"kind\" (first on line 13)"),
            ("bad base64", with(&key, "client-key-data: LS0t!"), "kc: user \"kind-kind\": client-key-data (line 19): not base64: byte 0x21 at offset 4"),
            ("not PEM", with(&ca, "certificate-authority-data: aGVsbG8="), "kc: cluster \"kind-kind\": certificate-authority-data (line 4): not PEM"),
            ("http server", with("https://127.0.0.1", "http://127.0.0.1"), "kc: cluster \"kind-kind\": server \"http://127.0.0.1:36433\" (line 5): plain http:// is not supported"),
            ("CA and insecure", with(&ca, &format!("{ca}\n    insecure-skip-tls-verify: true")), "kc: cluster \"kind-kind\": insecure-skip-tls-verify is set together with a certificate authority"),
            ("CA data and file", with(&ca, &format!("{ca}\n    certificate-authority: /ca.crt")), "kc: cluster \"kind-kind\": certificate-authority-data and certificate-authority are both given"),
            ("cert without key", with(&format!("\n    {key}"), ""), "kc: user \"kind-kind\": client-key-data or client-key must be given"),
            ("token and basic auth", with(user, &format!("{user}    token: t\n    username: u\n")), "kc: user \"kind-kind\": username/password and a bearer token"),
            ("no server", with("    server: https://127.0.0.1:36433\n", ""), "kc: cluster \"kind-kind\" (line 3) has no server"),
            ("bad port", with(":36433", ":99999"), "kc: cluster \"kind-kind\": server \"https://127.0.0.1:99999\" (line 5): \"99999\" is not a port number"),
            ("userinfo", with("https://127.0.0.1", "https://me@127.0.0.1"), "kc: cluster \"kind-kind\": server \"https://me@127.0.0.1:36433\" (line 5): user information in the server URL"),
            ("duplicate cluster", with("contexts:\n", "- name: kind-kind\n  cluster: {server: https://x}\ncontexts:\n"), "kc: clusters: the name \"kind-kind\" appears twice (line 3) (line 7)"),
            ("clusters not a list", with("clusters:\n- cluster:", "clusters: {}\nx:\n- cluster:"), "kc: clusters (line 2) must be a list, not a mapping"),
            ("token not a string", with(user, &format!("{user}    token: [a]\n")), "kc: user \"kind-kind\": token must be a string, not a list (line 18)"),
            ("insecure not a bool", with("    server:", "    insecure-skip-tls-verify: yes\n    server:"), "kc: cluster \"kind-kind\": insecure-skip-tls-verify must be true or false, not \"yes\" (line 5)"),
            ("proxy-url", with("    server:", "    proxy-url: http://proxy:3128\n    server:"), "kc: cluster \"kind-kind\": proxy-url is not supported"),
            ("impersonation", with(user, &format!("{user}    as: admin\n")), "kc: user \"kind-kind\": impersonation (as) is not supported"),
            ("bad JSON", "{\"current-context\": }".into(), "kc: reading JSON:"),
        ];
        for (name, text, want) in table {
            let err = from_text(&text, Path::new("/nowhere"), "kc").expect_err(name);
            assert!(err.starts_with(want), "{name}: {err}\n--- text:\n{text}");
        }
    }

    #[test]
    fn in_cluster_reads_the_service_account_mount() {
        let sa = scratch("sa");
        fs::write(sa.join("token"), "sa-token\n").expect("write");
        fs::write(sa.join("ca.crt"), CA).expect("write");
        let env = |host: &'static str| {
            move |k: &str| match k {
                "KUBERNETES_SERVICE_HOST" => Some(host.to_string()),
                "KUBERNETES_SERVICE_PORT" => Some("443".to_string()),
                _ => None,
            }
        };
        let got = in_cluster_from(&env("10.96.0.1"), &sa).expect("in cluster");
        assert_eq!(
            summary(&got),
            format!(
                "// 10.96.0.1:443 - ca=CA insecure=false sni=- cert=- key=- token=sa-token \
                 file={}/token basic=-",
                sa.display()
            )
        );
        assert_eq!(got.origin, "in-cluster");
        let v6 = in_cluster_from(&env("fd00::1"), &sa).expect("in cluster");
        assert_eq!(v6.authority(), "[fd00::1]:443");

        let err = in_cluster_from(&|_: &str| None, &sa).expect_err("no env");
        assert!(
            err.contains("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT"),
            "{err}"
        );
        let err = in_cluster_from(&env("a b"), &sa).expect_err("bad host");
        assert!(err.contains("\"a b\" is not a host name"), "{err}");
        fs::remove_file(sa.join("ca.crt")).expect("rm");
        let err = in_cluster_from(&env("10.96.0.1"), &sa).expect_err("no CA");
        assert!(
            err.starts_with(&format!(
                "in-cluster: {}/ca.crt: No such file",
                sa.display()
            )),
            "{err}"
        );
        let _ = fs::remove_dir_all(&sa);
    }

    #[test]
    fn debug_output_hides_credentials() {
        let got = from_text(&kind_config(), Path::new("/"), "kc").expect("valid");
        let shown = format!("{got:?}");
        assert!(shown.contains("client_key_pem: \"<set>\""), "{shown}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("45, 45"),
            "{shown}"
        );
    }
}
