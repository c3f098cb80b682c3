//! The kubeconfig reader (`kube::kubeconfig::from_text`: YAML or JSON, current context resolved
//! as client-go does). Files it names resolve against a directory that does not exist, so no
//! relative name reads anything; inputs naming a file with a `/` in it are skipped so the
//! fuzzer never reads the machine's files (a device could block it).
#![no_main]

use audit_forwarder::kube::kubeconfig::from_text;
use audit_forwarder::kube::{json, yaml};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const FILE_KEYS: [&str; 3] = ["certificate-authority", "client-certificate", "client-key"];

fn yaml_names_a_path(node: &yaml::Node) -> bool {
    match &node.kind {
        yaml::Kind::Map(entries) => entries.iter().any(|(k, v)| {
            (FILE_KEYS.contains(&k.as_str()) && v.as_str().is_some_and(|s| s.contains('/')))
                || yaml_names_a_path(v)
        }),
        yaml::Kind::Seq(items) => items.iter().any(yaml_names_a_path),
        _ => false,
    }
}

fn json_names_a_path(value: &json::Value) -> bool {
    if let Some(entries) = value.as_object() {
        return entries.iter().any(|(k, v)| {
            (FILE_KEYS.contains(&k.as_str()) && v.as_str().is_some_and(|s| s.contains('/')))
                || json_names_a_path(v)
        });
    }
    value
        .as_array()
        .is_some_and(|items| items.iter().any(json_names_a_path))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names_a_path = if text.trim_start().starts_with('{') {
        json::parse(data).is_ok_and(|v| json_names_a_path(&v))
    } else {
        yaml::parse(text).is_ok_and(|n| yaml_names_a_path(&n))
    };
    if names_a_path {
        return;
    }
    let dir = Path::new("/nonexistent-fuzz-kubeconfig-dir");
    match from_text(text, dir, "fuzz") {
        Ok(api) => {
            assert!(!api.host.is_empty());
            let _ = (api.authority(), format!("{api:?}"));
        }
        Err(e) => assert!(e.starts_with("fuzz: "), "{e}"),
    }
    let _ = yaml::flat_config(text);
});
