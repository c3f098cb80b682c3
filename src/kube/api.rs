//! The two Kubernetes objects discovery reads, from the apiserver's answers: the tailer's
//! Service (where to send) and the client-certificate Secret (how to authenticate), with the
//! rules the original audit-forwarder applied to them. Answers that are not the object (401,
//! 403, 404, 5xx) become an [`Answer`] carrying the apiserver's `Status` message, so one log
//! line says what the cluster said. No I/O here: a [`Response`] in, values out.

use std::fmt;
use std::net::IpAddr;

use super::base64;
use super::http::Response;
use super::json::{parse, Value};
use crate::escape;

/// Characters of a message from the apiserver kept for a log line.
const MESSAGE_CHARS: usize = 400;

/// Characters of a body that is not a `Status` quoted in an error.
const BODY_CHARS: usize = 200;

/// `GET` path of a Service. `base` is the path of the kubeconfig's `server` URL (empty for most;
/// Rancher-style proxies serve the API under a prefix such as `/k8s/clusters/c-xyz`).
pub fn service_path(base: &str, namespace: &str, name: &str) -> String {
    object_path(base, namespace, "services", name)
}

/// `GET` path of a Secret; `base` as for [`service_path`].
pub fn secret_path(base: &str, namespace: &str, name: &str) -> String {
    object_path(base, namespace, "secrets", name)
}

fn object_path(base: &str, namespace: &str, resource: &str, name: &str) -> String {
    format!(
        "{}/api/v1/namespaces/{}/{resource}/{}",
        base.trim_end_matches('/'),
        segment(namespace),
        segment(name)
    )
}

/// `text` as one path segment: valid Kubernetes names need no escaping, anything else (a `/`
/// or `?` from a mistyped flag) is percent-encoded so that it cannot change which object is
/// asked for.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the apiserver said about one object. The messages are escaped for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// 200 with an object of the expected kind.
    Found(T),
    /// 404: the object does not exist (now).
    NotFound(String),
    /// 401 or 403: the credentials are wrong, expired, or not allowed to read the object.
    Denied { code: u16, message: String },
    /// Anything else, including a 200 that is not the object: worth retrying later.
    Failed(String),
}

/// Where the tailer listens, as its Service says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    /// `spec.clusterIP` as written: an address, `None` for a headless Service, or empty.
    pub cluster_ip: String,
    /// `spec.ports[*].port`, in order.
    pub ports: Vec<u16>,
}

/// The client-certificate Secret, its `data` values decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub namespace: String,
    pub name: String,
    pub resource_version: String,
    pub data: Vec<(String, Vec<u8>)>,
}

// Key material never reaches a log through `{:?}`: keys and sizes only.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data: Vec<String> = self
            .data
            .iter()
            .map(|(k, v)| format!("{k}: <{} bytes>", v.len()))
            .collect();
        f.debug_struct("Secret")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("resource_version", &self.resource_version)
            .field("data", &data)
            .finish()
    }
}

/// The Service in an answer to [`service_path`].
pub fn service(response: &Response) -> Answer<Service> {
    answer(response, "Service", |object, (namespace, name)| {
        let spec = object.get("spec");
        let cluster_ip = match spec.and_then(|s| s.get("clusterIP")) {
            None | Some(Value::Null) => String::new(),
            Some(Value::Str(ip)) => ip.clone(),
            Some(_) => return Err("spec.clusterIP is not a string".into()),
        };
        let mut ports = Vec::new();
        let listed = match spec.and_then(|s| s.get("ports")) {
            None | Some(Value::Null) => &[][..],
            Some(v) => v
                .as_array()
                .ok_or_else(|| "spec.ports is not a list".to_string())?,
        };
        for (i, p) in listed.iter().enumerate() {
            let port = p
                .get("port")
                .and_then(Value::as_i64)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|&n| n != 0)
                .ok_or_else(|| format!("spec.ports[{i}].port is not a port number"))?;
            ports.push(port);
        }
        Ok(Service {
            namespace,
            name,
            resource_version: resource_version(object)?,
            cluster_ip,
            ports,
        })
    })
}

/// The Secret in an answer to [`secret_path`]. A value that is not base64 is an error naming
/// its key; values are never quoted.
pub fn secret(response: &Response) -> Answer<Secret> {
    answer(response, "Secret", |object, (namespace, name)| {
        let members = match object.get("data") {
            // An empty Secret has no `data` at all.
            None | Some(Value::Null) => &[][..],
            Some(v) => v
                .as_object()
                .ok_or_else(|| "data is not an object".to_string())?,
        };
        let mut data = Vec::with_capacity(members.len());
        for (key, value) in members {
            let shown = escape::for_log(key.as_bytes(), MESSAGE_CHARS);
            let text = value
                .as_str()
                .ok_or_else(|| format!("data[\"{shown}\"] is not a string"))?;
            let bytes =
                base64::decode(text.as_bytes()).map_err(|e| format!("data[\"{shown}\"] is {e}"))?;
            data.push((key.clone(), bytes));
        }
        Ok(Secret {
            namespace,
            name,
            resource_version: resource_version(object)?,
            data,
        })
    })
}

/// The address and port to deliver to: the Service's cluster IP and its only port.
pub fn target(service: &Service) -> Result<(String, u16), String> {
    let who = format!("service {}/{}", service.namespace, service.name);
    let port = match service.ports.as_slice() {
        [port] => *port,
        ports => {
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            return Err(format!(
                "{who} has {} ports ({}); it must have exactly one",
                ports.len(),
                list.join(", ")
            ));
        }
    };
    let ip = match service.cluster_ip.as_str() {
        "" => {
            return Err(format!(
                "{who} has no cluster IP (an ExternalName service?)"
            ))
        }
        "None" => {
            return Err(format!(
                "{who} is headless (clusterIP None); it needs a cluster IP"
            ))
        }
        ip => ip.parse::<IpAddr>().map_err(|_| {
            format!(
                "{who} has clusterIP \"{}\", which is not an IP address",
                escape::for_log(ip.as_bytes(), MESSAGE_CHARS)
            )
        })?,
    };
    Ok((ip.to_string(), port))
}

/// The client TLS material from a Secret, PEM as stored in it.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

// The private key never reaches a log through `{:?}`.
impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Material {{ ca: <{} bytes>, cert: <{} bytes>, key: <{} bytes> }}",
            self.ca.len(),
            self.cert.len(),
            self.key.len()
        )
    }
}

/// The CA certificate, client certificate and client key, from the Secret's keys named by
/// `--tls-ca-file`, `--tls-crt-file` and `--tls-key-file`.
pub fn material(
    secret: &Secret,
    ca_key: &str,
    crt_key: &str,
    key_key: &str,
) -> Result<Material, String> {
    let get = |key: &str| -> Result<Vec<u8>, String> {
        let who = format!("secret {}/{}", secret.namespace, secret.name);
        match secret.data.iter().find(|(k, _)| k == key) {
            Some((_, v)) if v.is_empty() => Err(format!("{who} has an empty \"{key}\"")),
            Some((_, v)) => Ok(v.clone()),
            None => {
                let keys: Vec<&str> = secret.data.iter().map(|(k, _)| k.as_str()).collect();
                Err(format!(
                    "{who} has no key \"{key}\" (keys: {})",
                    escape::for_log(keys.join(", ").as_bytes(), MESSAGE_CHARS)
                ))
            }
        }
    };
    Ok(Material {
        ca: get(ca_key)?,
        cert: get(crt_key)?,
        key: get(key_key)?,
    })
}

/// The answer for an object of `kind`; `read` gets the object with its namespace and name.
fn answer<T>(
    response: &Response,
    kind: &str,
    read: impl FnOnce(&Value, (String, String)) -> Result<T, String>,
) -> Answer<T> {
    let code = response.status;
    if code != 200 {
        let message = status_message(response);
        return match code {
            401 | 403 => Answer::Denied { code, message },
            404 => Answer::NotFound(message),
            _ => Answer::Failed(format!(
                "the apiserver answered {}: {message}",
                response.status_line()
            )),
        };
    }
    let failed = |e: String| Answer::Failed(format!("the apiserver's {kind}: {e}"));
    let object = match parse(&response.body) {
        Ok(v) => v,
        Err(e) => return failed(format!("{e} ({})", body_start(&response.body))),
    };
    match object.get("kind").and_then(Value::as_str) {
        Some(k) if k == kind => {}
        Some(k) => {
            return failed(format!(
                "the answer is a \"{}\"",
                escape::for_log(k.as_bytes(), MESSAGE_CHARS)
            ))
        }
        None => return failed("the answer has no kind".into()),
    }
    let meta = |field: &str| {
        object
            .at(&["metadata", field])
            .and_then(Value::as_str)
            .map(|s| escape::for_log(s.as_bytes(), MESSAGE_CHARS))
            .ok_or_else(|| format!("metadata.{field} is missing"))
    };
    let names = match (meta("namespace"), meta("name")) {
        (Ok(ns), Ok(name)) => (ns, name),
        (Err(e), _) | (_, Err(e)) => return failed(e),
    };
    match read(&object, names) {
        Ok(t) => Answer::Found(t),
        Err(e) => failed(e),
    }
}

fn resource_version(object: &Value) -> Result<String, String> {
    object
        .at(&["metadata", "resourceVersion"])
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| "metadata.resourceVersion is missing".into())
}

/// The `message` of a `Status` body, else the status line and the start of the body.
fn status_message(response: &Response) -> String {
    let status = parse(&response.body)
        .ok()
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some("Status"));
    match status
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
    {
        Some(m) if !m.is_empty() => escape::for_log(m.as_bytes(), MESSAGE_CHARS),
        _ if response.body.is_empty() => response.status_line(),
        _ => format!(
            "{} ({})",
            response.status_line(),
            body_start(&response.body)
        ),
    }
}

/// A body for an error: whitespace runs as one space, escaped, cut to [`BODY_CHARS`].
fn body_start(body: &[u8]) -> String {
    let words: Vec<&[u8]> = body
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return "empty body".into();
    }
    format!(
        "body \"{}\"",
        escape::for_log(&words.join(&b' '), BODY_CHARS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Service exactly as `kubectl get -o json` shows it, `managedFields` included (its
    /// `k:{"port":...}` keys must not be mistaken for ports).
    const SERVICE: &str = r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"audittailer","namespace":"audit","uid":"6d1f7c1e-3b7a-4c57-9a38-1f0b7c2e9d11","resourceVersion":"12345","creationTimestamp":"2025-09-30T15:35:08Z","labels":{"app":"audittailer"},"managedFields":[{"manager":"kubectl-client-side-apply","operation":"Update","apiVersion":"v1","time":"2025-09-30T15:35:08Z","fieldsType":"FieldsV1","fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:internalTrafficPolicy":{},"f:ports":{".":{},"k:{\"port\":24224,\"protocol\":\"TCP\"}":{".":{},"f:port":{},"f:protocol":{},"f:targetPort":{}}},"f:selector":{},"f:sessionAffinity":{},"f:type":{}}}}]},"spec":{"ports":[{"protocol":"TCP","port":24224,"targetPort":24224}],"selector":{"app":"audittailer"},"clusterIP":"10.96.12.34","clusterIPs":["10.96.12.34"],"type":"ClusterIP","sessionAffinity":"None","ipFamilies":["IPv4"],"ipFamilyPolicy":"SingleStack","internalTrafficPolicy":"Cluster"},"status":{"loadBalancer":{}}}"#;

    /// The real Secret shape; the values are base64 of short PEM-like texts.
    const SECRET: &str = r#"{"kind":"Secret","apiVersion":"v1","metadata":{"name":"audittailer-client","namespace":"audit","uid":"0b5c2a7e-8f4d-4e0a-9d55-3c6f1e2a7b90","resourceVersion":"6789","creationTimestamp":"2025-09-30T15:35:08Z","labels":{"name":"audittailer-client"}},"data":{"ca.crt":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkNBCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K","tls.crt":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkNMSUVOVAotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==","tls.key":"LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCktFWQotLS0tLUVORCBQUklWQVRFIEtFWS0tLS0tCg=="},"type":"Opaque"}"#;

    const STATUS_401: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

    const STATUS_403: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"secrets \"audittailer-client\" is forbidden: User \"system:serviceaccount:kube-system:audittailer-client\" cannot get resource \"secrets\" in API group \"\" in the namespace \"audit\"","reason":"Forbidden","details":{"name":"audittailer-client","kind":"secrets"},"code":403}"#;

    const STATUS_404: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"services \"audittailer\" not found","reason":"NotFound","details":{"name":"audittailer","kind":"services"},"code":404}"#;

    const STATUS_429: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Too many requests, please try again later.","reason":"TooManyRequests","details":{"retryAfterSeconds":1},"code":429}"#;

    fn response(status: u16, reason: &str, body: &str) -> Response {
        Response {
            status,
            reason: reason.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    fn ok(body: &str) -> Response {
        response(200, "OK", body)
    }

    /// `SERVICE` with `from` replaced by `to` (which must occur).
    fn service_with(from: &str, to: &str) -> Service {
        assert!(SERVICE.contains(from), "{from}");
        match service(&ok(&SERVICE.replace(from, to))) {
            Answer::Found(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn builds_object_paths() {
        let table: &[(String, &str)] = &[
            (
                service_path("", "audit", "audittailer"),
                "/api/v1/namespaces/audit/services/audittailer",
            ),
            (
                secret_path("", "audit", "audittailer-client"),
                "/api/v1/namespaces/audit/secrets/audittailer-client",
            ),
            (
                service_path("/k8s/clusters/c-m-1/", "kube-system", "kubernetes-audit-tailer"),
                "/k8s/clusters/c-m-1/api/v1/namespaces/kube-system/services/kubernetes-audit-tailer",
            ),
            (
                secret_path("/", "a/b", "x?y z"),
                "/api/v1/namespaces/a%2Fb/secrets/x%3Fy%20z",
            ),
        ];
        for (got, want) in table {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn reads_the_real_service_and_ignores_managed_fields() {
        let Answer::Found(s) = service(&ok(SERVICE)) else {
            panic!("not found");
        };
        assert_eq!(
            s,
            Service {
                namespace: "audit".into(),
                name: "audittailer".into(),
                resource_version: "12345".into(),
                cluster_ip: "10.96.12.34".into(),
                ports: vec![24224],
            }
        );
        assert_eq!(target(&s), Ok(("10.96.12.34".to_string(), 24224)));
    }

    #[test]
    fn target_needs_one_port_and_a_cluster_ip() {
        let one_port = r#""ports":[{"protocol":"TCP","port":24224,"targetPort":24224}]"#;
        let ip = r#""clusterIP":"10.96.12.34","clusterIPs":["10.96.12.34"]"#;
        type Case<'a> = (&'a str, &'a str, Result<(&'a str, u16), &'a str>);
        let table: &[Case] = &[
            (
                one_port,
                r#""ports":[{"name":"a","protocol":"TCP","port":24224,"targetPort":24224},{"name":"b","protocol":"TCP","port":24225,"targetPort":24225}]"#,
                Err("service audit/audittailer has 2 ports (24224, 24225); it must have exactly one"),
            ),
            (
                one_port,
                r#""ports":[]"#,
                Err("service audit/audittailer has 0 ports (); it must have exactly one"),
            ),
            (
                ip,
                r#""clusterIP":"None","clusterIPs":["None"]"#,
                Err("service audit/audittailer is headless (clusterIP None); it needs a cluster IP"),
            ),
            (
                ip,
                r#""clusterIP":"""#,
                Err("service audit/audittailer has no cluster IP (an ExternalName service?)"),
            ),
            (
                ip,
                r#""clusterIP":"10.96.12""#,
                Err("service audit/audittailer has clusterIP \"10.96.12\", which is not an IP address"),
            ),
            (
                ip,
                r#""clusterIP":"fd00:10:96::c","clusterIPs":["fd00:10:96::c"]"#,
                Ok(("fd00:10:96::c", 24224)),
            ),
            (
                ip,
                r#""clusterIP":"FD00:10:96:0:0:0:0:c""#,
                Ok(("fd00:10:96::c", 24224)),
            ),
        ];
        for (from, to, want) in table {
            let got = target(&service_with(from, to));
            let want = want
                .map(|(ip, port)| (ip.to_string(), port))
                .map_err(str::to_string);
            assert_eq!(got, want, "{to}");
        }
    }

    #[test]
    fn refuses_services_it_cannot_read() {
        let table: &[(&str, &str, &str)] = &[
            (
                r#""port":24224,"targetPort""#,
                r#""port":70000,"targetPort""#,
                "spec.ports[0].port is not a port number",
            ),
            (
                r#""port":24224,"targetPort""#,
                r#""port":"x","targetPort""#,
                "spec.ports[0].port is not a port number",
            ),
            (
                r#""clusterIP":"10.96.12.34""#,
                r#""clusterIP":7"#,
                "spec.clusterIP is not a string",
            ),
            (
                r#""resourceVersion":"12345","#,
                "",
                "metadata.resourceVersion is missing",
            ),
            (
                r#""kind":"Service""#,
                r#""kind":"Endpoints""#,
                "the apiserver's Service: the answer is a \"Endpoints\"",
            ),
        ];
        for (from, to, want) in table {
            assert!(SERVICE.contains(from), "{from}");
            match service(&ok(&SERVICE.replace(from, to))) {
                Answer::Failed(e) => assert!(e.contains(want), "{e}"),
                other => panic!("{to}: {other:?}"),
            }
        }
    }

    #[test]
    fn reads_the_real_secret_and_its_material() {
        let Answer::Found(s) = secret(&ok(SECRET)) else {
            panic!("not found");
        };
        assert_eq!(s.resource_version, "6789");
        let keys: Vec<&str> = s.data.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
        let m = material(&s, "ca.crt", "tls.crt", "tls.key").expect("all there");
        assert_eq!(
            m.ca,
            b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(
            m.cert,
            b"-----BEGIN CERTIFICATE-----\nCLIENT\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(
            m.key,
            b"-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(
            format!("{m:?}"),
            "Material { ca: <57 bytes>, cert: <61 bytes>, key: <58 bytes> }"
        );
        let shown = format!("{s:?}");
        assert!(shown.contains("tls.key: <58 bytes>"), "{shown}");
        assert!(
            !shown.contains("KEY\\n") && !shown.contains("45, 45"),
            "{shown}"
        );
    }

    #[test]
    fn names_what_is_wrong_with_a_secret_without_quoting_values() {
        let without_crt = SECRET.replace(
            r#""tls.crt":"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCkNMSUVOVAotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==","#,
            "",
        );
        let Answer::Found(s) = secret(&ok(&without_crt)) else {
            panic!("not found");
        };
        assert_eq!(
            material(&s, "ca.crt", "tls.crt", "tls.key"),
            Err(
                r#"secret audit/audittailer-client has no key "tls.crt" (keys: ca.crt, tls.key)"#
                    .into()
            )
        );

        let empty = SECRET.replace(
            "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0tCktFWQotLS0tLUVORCBQUklWQVRFIEtFWS0tLS0tCg==",
            "",
        );
        let Answer::Found(s) = secret(&ok(&empty)) else {
            panic!("not found");
        };
        assert_eq!(
            material(&s, "ca.crt", "tls.crt", "tls.key"),
            Err(r#"secret audit/audittailer-client has an empty "tls.key""#.into())
        );

        let no_data = SECRET.replace(r#""data":{"#, r#""other":{"#);
        let Answer::Found(s) = secret(&ok(&no_data)) else {
            panic!("not found");
        };
        assert_eq!(
            material(&s, "ca.crt", "tls.crt", "tls.key"),
            Err(r#"secret audit/audittailer-client has no key "ca.crt" (keys: )"#.into())
        );

        let bad = SECRET.replace(
            "LS0tLS1CRUdJTiBQUklWQVRF",
            "LS0tLS1CRUdJTiBQUklWQVRF!!SECRETBYTES",
        );
        match secret(&ok(&bad)) {
            Answer::Failed(e) => {
                assert_eq!(
                    e,
                    "the apiserver's Secret: data[\"tls.key\"] is not base64: byte 0x21 at offset 24"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn turns_refusals_into_answers_with_the_status_message() {
        let table: &[(Response, Answer<()>)] = &[
            (
                response(401, "Unauthorized", STATUS_401),
                Answer::Denied { code: 401, message: "Unauthorized".into() },
            ),
            (
                response(403, "Forbidden", STATUS_403),
                Answer::Denied {
                    code: 403,
                    message: r#"secrets "audittailer-client" is forbidden: User "system:serviceaccount:kube-system:audittailer-client" cannot get resource "secrets" in API group "" in the namespace "audit""#.into(),
                },
            ),
            (
                response(404, "Not Found", STATUS_404),
                Answer::NotFound(r#"services "audittailer" not found"#.into()),
            ),
            (
                response(429, "Too Many Requests", STATUS_429),
                Answer::Failed(
                    "the apiserver answered 429 Too Many Requests: Too many requests, please try \
                     again later."
                        .into(),
                ),
            ),
            (
                response(500, "Internal Server Error", "etcdserver: request timed out\n\n"),
                Answer::Failed(
                    "the apiserver answered 500 Internal Server Error: 500 Internal Server Error \
                     (body \"etcdserver: request timed out\")"
                        .into(),
                ),
            ),
            (
                response(503, "Service Unavailable", ""),
                Answer::Failed(
                    "the apiserver answered 503 Service Unavailable: 503 Service Unavailable".into(),
                ),
            ),
            (
                response(
                    403,
                    "Forbidden",
                    "<html>\n  <body>\x1b[31mdenied by proxy</body>\n</html>",
                ),
                Answer::Denied {
                    code: 403,
                    message: "403 Forbidden (body \"<html> <body>\\x1b[31mdenied by proxy</body> \
                              </html>\")"
                        .into(),
                },
            ),
            (
                // A JSON body that is not a Status says nothing we can trust as a message.
                response(404, "Not Found", r#"{"kind":"Service","message":"x"}"#),
                Answer::NotFound(
                    "404 Not Found (body \"{\"kind\":\"Service\",\"message\":\"x\"}\")".into(),
                ),
            ),
            (
                response(
                    403,
                    "Forbidden",
                    r#"{"kind":"Status","message":"a\nforged log line \u202e"}"#,
                ),
                Answer::Denied {
                    code: 403,
                    message: "a\\nforged log line \\u{202e}".into(),
                },
            ),
            (
                ok(STATUS_404),
                Answer::Failed("the apiserver's Service: the answer is a \"Status\"".into()),
            ),
            (
                ok("<html>hi</html>"),
                Answer::Failed(
                    "the apiserver's Service: not a valid JSON object (NotObject) (body \"<html>hi</html>\")"
                        .into(),
                ),
            ),
        ];
        for (response, want) in table {
            let got = match service(response) {
                Answer::Found(s) => panic!("{s:?}"),
                Answer::NotFound(m) => Answer::NotFound(m),
                Answer::Denied { code, message } => Answer::Denied { code, message },
                Answer::Failed(m) => Answer::Failed(m),
            };
            assert_eq!(&got, want, "{}", response.status_line());
        }
    }
}
