//! The kind/ end-to-end setup, checked where no container engine or kind runs: every YAML file
//! parses (python3-yaml, every document), the names that must agree across manifests, scripts
//! and the binary's `--help` do, the apiserver patches apply with `kubectl patch --local` and
//! leave no volume mount dangling, the certificates kind/gencerts.sh makes carry a real
//! delivery from the forwarder to our tailer, the scripts pass shellcheck, and the
//! Containerfile builds the scratch image the manifests assume.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGE: &str = "localhost/audit-forwarder:dev";
const NAMESPACE: &str = "audit";
const SERVICE: &str = "audittailer";
const PORT: u64 = 24224;
const SERVER_SECRET: &str = "audittailer-server";
const CLIENT_SECRET: &str = "audittailer-client";
/// Where kind/e2e.sh writes the sidecar's kubeconfig, token and CA inside the node.
const NODE_KUBECFG_DIR: &str = "/etc/kubernetes/audit-forwarder";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kind_dir() -> PathBuf {
    repo().join("kind")
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn files_with(ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(kind_dir())
        .expect("kind/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Parses with python3-yaml (the system python, which .ci/run gives python3-yaml): every
/// document of every file, as JSON. The kubeadm patches a kind Cluster carries as strings are
/// parsed too. None (and a message) when python3-yaml is missing here.
fn parse_yaml(files: &[PathBuf]) -> Option<Vec<(String, Vec<Value>)>> {
    const PY: &str = r#"
import json, sys, yaml
out = []
for p in sys.argv[1:]:
    with open(p) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "Cluster":
            d["kubeadmConfigPatches"] = [yaml.safe_load(s) for s in d.get("kubeadmConfigPatches", [])]
    out.append([p, docs])
print(json.dumps(out))
"#;
    let probe = Command::new("/usr/bin/python3")
        .args(["-c", "import yaml"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED: /usr/bin/python3 with the yaml module (python3-yaml) is missing; .ci/run installs it");
        return None;
    }
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(PY)
        .args(files)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python3-yaml could not parse kind/: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<(String, Vec<Value>)> = serde_json::from_slice(&out.stdout).expect("python's JSON");
    Some(
        v.into_iter()
            .map(|(p, d)| {
                let name = Path::new(&p).file_name().unwrap().to_string_lossy().into();
                (name, d)
            })
            .collect(),
    )
}

struct Kind {
    files: Vec<(String, Vec<Value>)>,
}

impl Kind {
    fn load() -> Option<Kind> {
        let files = parse_yaml(&files_with("yaml"))?;
        Some(Kind { files })
    }

    fn docs(&self, file: &str) -> &[Value] {
        &self
            .files
            .iter()
            .find(|(n, _)| n == file)
            .unwrap_or_else(|| panic!("kind/{file} is missing"))
            .1
    }

    fn object(&self, file: &str, kind: &str, name: &str) -> &Value {
        self.docs(file)
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("kind/{file} has no {kind} {name}"))
    }

    /// The containers and volumes a JSON patch adds to the apiserver pod.
    fn patch_adds(&self, file: &str, path: &str) -> Vec<Value> {
        let ops = self.docs(file)[0]
            .as_array()
            .expect("a JSON patch is a list");
        ops.iter()
            .filter(|op| op["op"] == "add" && op["path"] == path)
            .map(|op| op["value"].clone())
            .collect()
    }

    fn sidecar(&self, file: &str) -> Value {
        self.patch_adds(file, "/spec/containers/-")
            .into_iter()
            .find(|c| c["name"] == "audit-forwarder")
            .unwrap_or_else(|| panic!("kind/{file} adds no audit-forwarder container"))
    }

    /// The kubeadm ClusterConfiguration's apiServer section of a kind cluster config.
    fn api_server(&self, file: &str) -> Value {
        let cluster = &self.docs(file)[0];
        assert_eq!(cluster["kind"], "Cluster", "kind/{file}");
        cluster["kubeadmConfigPatches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == "ClusterConfiguration")
            .unwrap_or_else(|| panic!("kind/{file}: no ClusterConfiguration patch"))["apiServer"]
            .clone()
    }
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e["value"].as_str().unwrap_or_else(|| panic!("{e}: value"));
            (e["name"].as_str().unwrap().to_string(), v.to_string())
        })
        .collect()
}

fn env(container: &Value, name: &str) -> String {
    env_of(container)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("the sidecar sets no {name}"))
        .1
}

fn mount_path<'a>(container: &'a Value, volume: &str) -> &'a str {
    container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("{}: no mount of {volume}", container["name"]))["mountPath"]
        .as_str()
        .unwrap()
}

fn parent(p: &str) -> String {
    Path::new(p).parent().unwrap().display().to_string()
}

fn extra_volume<'a>(api: &'a Value, name: &str) -> &'a Value {
    api["extraVolumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no kubeadm extraVolume {name}"))
}

/// Every `[AUDIT_X]` the binary's help (forwarder and tailer) names.
fn help_env_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for args in [&["--help"][..], &["tailer", "--help"][..]] {
        let out = Command::new(bin()).args(args).output().expect("run --help");
        assert!(out.status.success(), "{args:?} failed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for part in text.split('[').skip(1) {
            if let Some(name) = part.split(']').next() {
                if name.starts_with("AUDIT_") {
                    names.insert(name.to_string());
                }
            }
        }
    }
    assert!(names.len() > 20, "help names too few variables: {names:?}");
    names
}

#[test]
fn tailer_service_secrets_and_sidecar_agree() {
    let Some(k) = Kind::load() else { return };
    let help = help_env_names();
    let certs = TempDir::new("kind-certs");
    let secrets = gencerts(certs.path());

    for tailer_file in ["tailer.yaml", "tailer-fluentd.yaml"] {
        let svc = k.object(tailer_file, "Service", SERVICE);
        assert_eq!(svc["metadata"]["namespace"], NAMESPACE, "{tailer_file}");
        let ports = svc["spec"]["ports"].as_array().unwrap();
        assert_eq!(
            ports.len(),
            1,
            "{tailer_file}: the sidecar takes exactly one port"
        );
        assert_eq!(ports[0]["port"], PORT, "{tailer_file}");
        let dep = k.object(tailer_file, "Deployment", SERVICE);
        let pod = &dep["spec"]["template"];
        assert_eq!(
            svc["spec"]["selector"], pod["metadata"]["labels"],
            "{tailer_file}: the Service selects the tailer pods"
        );
        let c = &pod["spec"]["containers"][0];
        let cport = &c["ports"][0];
        assert_eq!(cport["containerPort"], PORT, "{tailer_file}");
        assert_eq!(cport["name"], ports[0]["targetPort"], "{tailer_file}");
        let vol = &pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["secret"]["secretName"] == SERVER_SECRET)
            .unwrap_or_else(|| panic!("{tailer_file}: no {SERVER_SECRET} volume"));
        let tls_dir = mount_path(c, vol["name"].as_str().unwrap()).to_string();
        // The files the tailer reads are the Secret's keys under its mount.
        let files: Vec<String> = if tailer_file == "tailer.yaml" {
            assert_eq!(c["image"], IMAGE);
            let args: Vec<&str> = c["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(args[0], "tailer");
            let flag = |f: &str| {
                let i = args
                    .iter()
                    .position(|a| *a == f)
                    .unwrap_or_else(|| panic!("no {f}"));
                args[i + 1].to_string()
            };
            assert!(flag("--listen").ends_with(&format!(":{PORT}")));
            vec![
                flag("--tls-crt-file"),
                flag("--tls-key-file"),
                flag("--client-ca"),
            ]
        } else {
            let cm = k.object(tailer_file, "ConfigMap", "audittailer-fluentd");
            let conf = cm["data"]["fluent.conf"].as_str().unwrap();
            assert!(conf.contains(&format!("port {PORT}")), "{conf}");
            assert!(conf.contains("client_cert_auth true"), "{conf}");
            assert!(conf.contains("<transport tls>"), "{conf}");
            ["cert_path", "private_key_path", "ca_path"]
                .iter()
                .map(|key| {
                    let line = conf
                        .lines()
                        .find(|l| l.trim_start().starts_with(key))
                        .unwrap_or_else(|| panic!("fluent.conf: no {key}"));
                    line.split_whitespace().nth(1).unwrap().to_string()
                })
                .collect()
        };
        let server_keys = secret_keys(&secrets, SERVER_SECRET);
        for f in files {
            assert_eq!(
                parent(&f),
                tls_dir,
                "{tailer_file}: {f} outside the Secret mount"
            );
            let key = Path::new(&f)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            assert!(
                server_keys.contains(&key),
                "{tailer_file}: {key} not in {server_keys:?}"
            );
        }
    }

    // RBAC: the sidecar's ServiceAccount may get exactly what it reads.
    let role = k.object("rbac.yaml", "Role", "audit-forwarder");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let mut allowed = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for res in rule["resources"].as_array().unwrap() {
            for n in rule["resourceNames"].as_array().unwrap() {
                allowed.insert(format!("{}/{}", res.as_str().unwrap(), n.as_str().unwrap()));
            }
        }
    }
    let binding = k.object("rbac.yaml", "RoleBinding", "audit-forwarder");
    assert_eq!(binding["subjects"][0]["name"], "audit-forwarder");
    assert_eq!(
        k.object("namespace.yaml", "Namespace", NAMESPACE)["kind"],
        "Namespace"
    );

    let client_keys = secret_keys(&secrets, CLIENT_SECRET);
    let san = cert_sans(&certs.join("server.crt"));
    for patch in ["apiserver-patch.yaml", "apiserver-patch-konnectivity.yaml"] {
        let s = k.sidecar(patch);
        assert_eq!(s["image"], IMAGE, "{patch}");
        for (name, _) in env_of(&s) {
            assert!(help.contains(&name), "{patch}: {name} is not in --help");
        }
        assert_eq!(env(&s, "AUDIT_NAMESPACE"), NAMESPACE, "{patch}");
        assert_eq!(env(&s, "AUDIT_SERVICE_NAME"), SERVICE, "{patch}");
        assert_eq!(env(&s, "AUDIT_SECRET_NAME"), CLIENT_SECRET, "{patch}");
        for var in [
            "AUDIT_TLS_CA_FILE",
            "AUDIT_TLS_CRT_FILE",
            "AUDIT_TLS_KEY_FILE",
        ] {
            let key = env(&s, var);
            assert!(
                client_keys.contains(&key),
                "{patch}: {var}={key} not in {client_keys:?}"
            );
        }
        let vhost = env(&s, "AUDIT_TLS_VHOST");
        assert!(
            san.contains(&format!("DNS:{vhost}")),
            "{patch}: {vhost} not in {san}"
        );
        assert!(
            allowed.contains(&format!("services/{SERVICE}")),
            "{allowed:?}"
        );
        assert!(
            allowed.contains(&format!("secrets/{CLIENT_SECRET}")),
            "{allowed:?}"
        );
        assert!(
            s.get("args").is_none() && s.get("command").is_none(),
            "{patch}: configured by environment alone"
        );
    }
}

/// Names, paths and mounts between the kind cluster configs, the apiserver patches, the
/// egress selector, the kubeconfig template and kind/e2e.sh.
#[test]
fn cluster_config_patches_and_paths_agree() {
    let Some(k) = Kind::load() else { return };
    let e2e = read("kind/e2e.sh");
    for (cluster, patch) in [
        ("cluster.yaml", "apiserver-patch.yaml"),
        (
            "cluster-konnectivity.yaml",
            "apiserver-patch-konnectivity.yaml",
        ),
    ] {
        assert!(
            e2e.contains(cluster) && e2e.contains(patch),
            "e2e.sh uses {cluster}, {patch}"
        );
        let api = k.api_server(cluster);
        let args = &api["extraArgs"];
        let node = &k.docs(cluster)[0]["nodes"][0];
        let extra_mounts = node["extraMounts"].as_array().unwrap();
        let host_mount = |container_path: &str| -> String {
            extra_mounts
                .iter()
                .find(|m| m["containerPath"] == container_path)
                .unwrap_or_else(|| panic!("{cluster}: nothing mounted at {container_path}"))
                ["hostPath"]
                .as_str()
                .unwrap()
                .to_string()
        };
        // Each file an apiserver flag names is a kubeadm volume, filled from the host.
        let mut flag_files = vec!["audit-policy-file"];
        if cluster == "cluster-konnectivity.yaml" {
            flag_files.push("egress-selector-config-file");
        }
        for flag in flag_files {
            let path = args[flag]
                .as_str()
                .unwrap_or_else(|| panic!("{cluster}: {flag}"));
            let vol = api["extraVolumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["mountPath"] == path)
                .unwrap_or_else(|| panic!("{cluster}: no volume for {flag} {path}"));
            let host = host_mount(vol["hostPath"].as_str().unwrap());
            let local = kind_dir().join(host.trim_start_matches("./"));
            assert!(local.is_file(), "{cluster}: {} missing", local.display());
            assert!(
                e2e.contains(host.trim_start_matches("./")),
                "e2e.sh copies {host}"
            );
        }
        let log_path = args["audit-log-path"].as_str().unwrap();
        let auditlog = extra_volume(&api, "auditlog");
        assert_eq!(auditlog["mountPath"].as_str().unwrap(), parent(log_path));
        assert_eq!(
            host_mount(auditlog["hostPath"].as_str().unwrap()),
            "./auditlog"
        );
        assert!(e2e.contains("$work/auditlog"));

        let s = k.sidecar(patch);
        assert_eq!(env(&s, "AUDIT_AUDIT_LOG_PATH"), log_path, "{patch}");
        assert_eq!(mount_path(&s, "auditlog"), parent(log_path), "{patch}");
        let kubecfg = env(&s, "AUDIT_KUBECFG");
        assert_eq!(
            mount_path(&s, "audit-forwarder-kubeconfig"),
            parent(&kubecfg)
        );
        let vol = k
            .patch_adds(patch, "/spec/volumes/-")
            .into_iter()
            .find(|v| v["name"] == "audit-forwarder-kubeconfig")
            .unwrap_or_else(|| panic!("{patch}: no kubeconfig volume"));
        assert_eq!(vol["hostPath"]["path"], NODE_KUBECFG_DIR);
        let kubecfg_name = Path::new(&kubecfg).file_name().unwrap().to_string_lossy();
        assert!(
            e2e.contains(&format!("{NODE_KUBECFG_DIR}/{kubecfg_name}")),
            "e2e writes {kubecfg}"
        );

        if cluster == "cluster-konnectivity.yaml" {
            let socket = env(&s, "AUDIT_KONNECTIVITY_UDS_SOCKET");
            let egress = &k.docs("egress-selector.yaml")[0];
            let sel = &egress["egressSelections"][0];
            assert_eq!(sel["name"], "cluster");
            assert_eq!(sel["connection"]["proxyProtocol"], "HTTPConnect");
            assert_eq!(
                sel["connection"]["transport"]["uds"]["udsName"],
                socket.as_str()
            );
            let server = k
                .patch_adds(patch, "/spec/containers/-")
                .into_iter()
                .find(|c| c["name"] == "konnectivity-server")
                .expect("konnectivity-server container");
            let sargs: Vec<&str> = server["args"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert!(
                sargs.contains(&format!("--uds-name={socket}").as_str()),
                "{sargs:?}"
            );
            assert!(sargs.contains(&"--mode=http-connect"), "{sargs:?}");
            let uds = extra_volume(&api, "konnectivity-uds");
            assert_eq!(uds["mountPath"].as_str().unwrap(), parent(&socket));
            assert_eq!(mount_path(&s, "konnectivity-uds"), parent(&socket));
            assert_eq!(mount_path(&server, "konnectivity-uds"), parent(&socket));
            // The agent authenticates with the audience and account the server checks.
            let ds = k.object("konnectivity-agent.yaml", "DaemonSet", "konnectivity-agent");
            let pod = &ds["spec"]["template"]["spec"];
            assert_eq!(pod["serviceAccountName"], "konnectivity-agent");
            assert!(sargs.contains(&"--agent-service-account=konnectivity-agent"));
            let aud =
                &pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"];
            assert!(sargs.contains(
                &format!("--authentication-audience={}", aud.as_str().unwrap()).as_str()
            ));
            let agent_args = pod["containers"][0]["args"].to_string();
            let agent_port = sargs
                .iter()
                .find(|a| a.starts_with("--agent-port="))
                .unwrap();
            assert!(agent_args.contains(&agent_port.replace("agent-port", "proxy-server-port")));
        }
    }

    // The two sidecars differ only in the tunnel.
    let strip = |mut c: Value| {
        let env: Vec<Value> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] != "AUDIT_KONNECTIVITY_UDS_SOCKET")
            .cloned()
            .collect();
        let mounts: Vec<Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["name"] != "konnectivity-uds")
            .cloned()
            .collect();
        c["env"] = json!(env);
        c["volumeMounts"] = json!(mounts);
        c
    };
    assert_eq!(
        strip(k.sidecar("apiserver-patch.yaml")),
        strip(k.sidecar("apiserver-patch-konnectivity.yaml")),
        "the two sidecars differ beyond the konnectivity socket"
    );

    // The kubeconfig template: the files it names are the ones e2e.sh writes beside it.
    let kc = &k.docs("sidecar-kubeconfig.yaml")[0];
    assert_eq!(kc["clusters"][0]["cluster"]["server"], "APISERVER");
    assert!(e2e.contains("APISERVER"), "e2e.sh fills in the server");
    for (file, value) in [
        ("token", &kc["users"][0]["user"]["tokenFile"]),
        (
            "ca.crt",
            &kc["clusters"][0]["cluster"]["certificate-authority"],
        ),
    ] {
        assert_eq!(value, file);
        assert!(
            e2e.contains(&format!("{NODE_KUBECFG_DIR}/{file}")),
            "e2e.sh writes {file}"
        );
    }
}

/// One image name everywhere: manifests, the scripts' library, the justfile's recipes.
#[test]
fn image_name_agrees_everywhere() {
    let Some(k) = Kind::load() else { return };
    let mut ours = 0;
    for (file, docs) in &k.files {
        let text = serde_json::to_string(docs).unwrap();
        for part in text.split("\"image\":\"").skip(1) {
            let image = part.split('"').next().unwrap();
            if image.contains("audit-forwarder") {
                assert_eq!(image, IMAGE, "kind/{file}");
                ours += 1;
            }
        }
    }
    assert_eq!(ours, 3, "tailer, sidecar, konnectivity sidecar");
    assert!(read("kind/lib.sh").contains(&format!("AF_IMAGE={IMAGE}\n")));
    assert!(read("kind/image.sh").contains("-t \"$AF_IMAGE\""));
    assert!(read("kind/e2e.sh").contains("save -o \"$work/image.tar\" \"$AF_IMAGE\""));
    let just = read("justfile");
    for recipe in ["image:\n    kind/image.sh", "kind-e2e:\n    kind/e2e.sh\n"] {
        assert!(just.contains(recipe), "justfile: {recipe}");
    }
    assert!(just.contains("kind-e2e-konnectivity:\n    kind/e2e.sh --konnectivity"));
    assert!(read("Containerfile").contains(IMAGE));
}

/// The patches apply to a kube-apiserver manifest shaped like kubeadm's (its volumes plus
/// the cluster config's extraVolumes), with the same `kubectl patch --local` e2e.sh runs, and
/// every volume mount of the result names a volume of the pod.
#[test]
fn apiserver_patches_apply_and_leave_no_dangling_mount() {
    let Some(k) = Kind::load() else { return };
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: kubectl is not installed here");
        return;
    }
    let dir = TempDir::new("kind-patch");
    for (cluster, patch) in [
        ("cluster.yaml", "apiserver-patch.yaml"),
        (
            "cluster-konnectivity.yaml",
            "apiserver-patch-konnectivity.yaml",
        ),
    ] {
        let api = k.api_server(cluster);
        let mut volumes = vec![
            json!({"name": "ca-certs", "hostPath": {"path": "/etc/ssl/certs", "type": "DirectoryOrCreate"}}),
            json!({"name": "k8s-certs", "hostPath": {"path": "/etc/kubernetes/pki", "type": "DirectoryOrCreate"}}),
        ];
        let mut mounts = vec![
            json!({"name": "ca-certs", "mountPath": "/etc/ssl/certs", "readOnly": true}),
            json!({"name": "k8s-certs", "mountPath": "/etc/kubernetes/pki", "readOnly": true}),
        ];
        for v in api["extraVolumes"].as_array().unwrap() {
            volumes.push(json!({"name": v["name"], "hostPath": {"path": v["hostPath"], "type": v["pathType"]}}));
            mounts.push(json!({"name": v["name"], "mountPath": v["mountPath"]}));
        }
        let manifest = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "kube-apiserver", "namespace": "kube-system"},
            "spec": {
                "hostNetwork": true,
                "containers": [{"name": "kube-apiserver", "image": "registry.k8s.io/kube-apiserver:v1.32.0",
                                "command": ["kube-apiserver"], "volumeMounts": mounts}],
                "volumes": volumes,
            }
        });
        let input = dir.join(&format!("{cluster}.json"));
        fs::write(&input, manifest.to_string()).unwrap();
        let out = Command::new("kubectl")
            .args(["patch", "--local", "--type=json", "-o", "json", "-f"])
            .arg(&input)
            .arg("--patch-file")
            .arg(kind_dir().join(patch))
            .env("KUBECONFIG", dir.join("none"))
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "{patch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pod: Value = serde_json::from_slice(&out.stdout).expect("patched pod as JSON");
        let names: BTreeSet<&str> = pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        let containers = pod["spec"]["containers"].as_array().unwrap();
        assert_eq!(
            containers[0]["name"], "kube-apiserver",
            "{patch}: apiserver stays first"
        );
        assert!(
            containers.iter().any(|c| c["name"] == "audit-forwarder"),
            "{patch}"
        );
        for c in containers {
            for m in c["volumeMounts"].as_array().unwrap() {
                let n = m["name"].as_str().unwrap();
                assert!(
                    names.contains(n),
                    "{patch}: {} mounts unknown volume {n}",
                    c["name"]
                );
            }
        }
    }
}

/// Runs kind/gencerts.sh into `dir` (namespace audit, Service audittailer).
fn run_gencerts(dir: &Path) {
    let out = Command::new("bash")
        .arg(kind_dir().join("gencerts.sh"))
        .arg(dir)
        .args([NAMESPACE, SERVICE])
        .output()
        .expect("run gencerts.sh");
    assert!(
        out.status.success(),
        "gencerts.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs kind/gencerts.sh into `dir`; returns its secrets.yaml parsed.
fn gencerts(dir: &Path) -> Vec<Value> {
    run_gencerts(dir);
    let parsed = parse_yaml(&[dir.join("secrets.yaml")]).expect("python3-yaml checked before");
    parsed.into_iter().next().unwrap().1
}

fn secret_keys(secrets: &[Value], name: &str) -> BTreeSet<String> {
    let s = secrets
        .iter()
        .find(|s| s["kind"] == "Secret" && s["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("gencerts.sh made no Secret {name}"));
    assert_eq!(s["metadata"]["namespace"], NAMESPACE);
    s["data"].as_object().unwrap().keys().cloned().collect()
}

fn cert_sans(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(cert)
        .output()
        .expect("run openssl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The certificates kind/gencerts.sh makes carry a delivery: our tailer with the server pair
/// and `--client-ca`, as kind/tailer.yaml runs it, and the forwarder with the client pair
/// and the vhost the sidecar uses. Every record arrives.
#[test]
fn gencerts_certificates_carry_a_tls_delivery() {
    let dir = TempDir::new("kind-gencerts");
    let certs = dir.join("certs");
    run_gencerts(&certs);
    let c = |f: &str| certs.join(f).display().to_string();
    let port = free_port();
    let tailer = Tailer::start_with(
        port,
        vec![
            "--tls-crt-file".into(),
            c("server.crt"),
            "--tls-key-file".into(),
            c("server.key"),
            "--client-ca".into(),
            c("ca.crt"),
        ],
    );
    let mut w = AuditWriter::create(&dir.join("log"));
    let lines = audit_events(0..50);
    w.write_lines(&lines);
    let mut args = fwd_args(&w.log_path(), port, &[]);
    args.retain(|a| a != "--plaintext");
    args.extend(
        [
            "--tls-ca-file",
            &c("ca.crt"),
            "--tls-crt-file",
            &c("client.crt"),
            "--tls-key-file",
            &c("client.key"),
            "--tls-vhost",
            SERVICE,
        ]
        .map(String::from),
    );
    let fwd = Forwarder::start(args);
    let ok = tailer.wait_all_lines(&lines, secs(30));
    assert!(
        ok,
        "not every record arrived over TLS with gencerts.sh's certificates\nforwarder:\n{}\ntailer:\n{}",
        fwd.stderr_text(),
        tailer.stderr_text()
    );
}

#[test]
fn scripts_pass_bash_n_and_shellcheck() {
    let scripts = files_with("sh");
    assert!(scripts.len() >= 4, "{scripts:?}");
    for s in &scripts {
        let out = Command::new("bash")
            .arg("-n")
            .arg(s)
            .output()
            .expect("bash -n");
        assert!(
            out.status.success(),
            "bash -n {}: {}",
            s.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED shellcheck: not installed here (.ci/run installs it)");
        return;
    }
    // From the repository root, so `# shellcheck source=kind/lib.sh` resolves.
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(&scripts)
        .current_dir(repo())
        .output()
        .expect("run shellcheck");
    assert!(
        out.status.success(),
        "shellcheck:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The Containerfile builds what the manifests assume: the musl binary alone in a scratch
/// image, uid 65532, the binary as entrypoint, the commit passed to the build.
#[test]
fn containerfile_is_scratch_uid_65532_with_the_binary_as_entrypoint() {
    let cf = read("Containerfile");
    let instr: Vec<&str> = cf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = instr.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert_eq!(*froms[1], "FROM scratch");
    let last = &instr[instr.iter().position(|l| *l == "FROM scratch").unwrap()..];
    assert!(last.contains(&"USER 65532:65532"), "{last:?}");
    assert!(
        last.contains(&r#"ENTRYPOINT ["/audit-forwarder"]"#),
        "{last:?}"
    );
    let copies: Vec<&&str> = last.iter().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(copies.len(), 1, "only the binary: {copies:?}");
    assert!(copies[0].ends_with(" /audit-forwarder"), "{copies:?}");
    assert!(cf.contains("--target x86_64-unknown-linux-musl --bin audit-forwarder"));
    assert!(cf.contains("rustup target add x86_64-unknown-linux-musl"));
    assert!(cf.contains("ENV AUDIT_FORWARDER_COMMIT=${AUDIT_FORWARDER_COMMIT}"));
    assert!(read("kind/image.sh").contains("--build-arg \"AUDIT_FORWARDER_COMMIT=$commit\""));
}
