//! The deployment side: every Kubernetes manifest under deploy/ and the output of
//! `kubectl kustomize deploy/` validated with kubernetes-validate (Kubernetes 1.33, strict), the
//! Prometheus Operator objects checked field by field, the shipped configs validated by etcdsafe
//! itself against the mounts that carry them, the Grafana dashboard's queries checked against a
//! real scrape and run on a real Prometheus, the Dockerfile linted, the static binary proved in
//! an empty root (scripts/check-static.sh), and the restore runbook's commands run on real etcd.
//!
//! A missing tool fails its test with the fix (`scripts/install-deps.sh`); nothing is skipped.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::service::{http, ServiceProcess};
use common::*;
use serde::Deserialize;
use serde_yaml::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document in `text`, empty ones left out.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn is_manifest(doc: &Value) -> bool {
    doc.get("apiVersion").is_some() && doc.get("kind").is_some()
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    walk(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

/// `a.b.0.c` into a YAML value; Null when absent.
fn walk<'a>(v: &'a Value, path: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    let mut cur = v;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) => cur.get(i),
            Err(_) => cur.get(part),
        }
        .unwrap_or(&NULL);
    }
    cur
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a Vec<Value> {
    walk(v, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

/// Every .yaml/.yml file under deploy/, relative to the repository.
fn deploy_yaml_files() -> Vec<String> {
    fn visit(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                visit(&path, out);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    visit(&repo().join("deploy"), &mut files);
    let mut files: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    files.sort();
    files
}

/// YAML files under deploy/ that are not Kubernetes objects: the kustomization and etcdsafe's
/// own config files (checked by `shipped_configs_validate_against_their_mounts`).
const NOT_MANIFESTS: [&str; 3] = [
    "deploy/config/etcdsafe.yaml",
    "deploy/kustomization.yaml",
    "deploy/static-pod/config.yaml",
];

/// Kinds that kubernetes-validate has no schema for (Prometheus Operator CRDs); they are checked
/// by `prometheus_operator_objects_use_known_fields` instead.
const CRD_KINDS: [(&str, &str); 2] = [
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
];

fn manifest_files() -> Vec<String> {
    let files = deploy_yaml_files();
    for name in NOT_MANIFESTS {
        assert!(files.iter().any(|f| f == name), "{name} is missing");
    }
    let manifests: Vec<String> = files
        .into_iter()
        .filter(|f| !NOT_MANIFESTS.contains(&f.as_str()))
        .collect();
    for file in &manifests {
        let docs = documents(&read(file));
        assert!(!docs.is_empty(), "{file} holds no YAML document");
        for doc in &docs {
            assert!(
                is_manifest(doc),
                "{file}: a document without apiVersion and kind: {doc:?}"
            );
        }
    }
    manifests
}

fn kustomize_build() -> String {
    let kubectl = system_tool("kubectl");
    let out = Command::new(&kubectl)
        .args(["kustomize", "deploy/"])
        .current_dir(repo())
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `kubernetes-validate --strict -k 1.33.0` on files and checks its verdict for every
/// object: passed, or (only for the Prometheus Operator kinds) no schema.
fn kubernetes_validate(files: &[PathBuf], cwd: &Path) {
    let tool = system_tool("kubernetes-validate");
    let out = Command::new(&tool)
        .args(["--strict", "-k", KUBERNETES_VERSION])
        .args(files)
        .current_dir(cwd)
        .output()
        .expect("run kubernetes-validate");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "kubernetes-validate failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let mut expected = 0;
    for file in files {
        let text = std::fs::read_to_string(cwd.join(file)).unwrap();
        for doc in documents(&text) {
            expected += 1;
            let kind = s(&doc, "kind");
            let api = s(&doc, "apiVersion");
            let name = s(&doc, "metadata.name");
            let file = file.display().to_string();
            if CRD_KINDS.contains(&(api, kind)) {
                let line = format!(
                    "WARN {file} Couldn't find schema for kind {kind} with api version {api}"
                );
                assert!(stdout.contains(&line), "no verdict `{line}` in:\n{stdout}");
            } else {
                let line = format!(
                    "INFO {file} passed for resource {}/{name} against version 1.33",
                    kind.to_lowercase()
                );
                assert!(stdout.contains(&line), "no verdict `{line}` in:\n{stdout}");
            }
        }
    }
    let verdicts = stdout
        .lines()
        .filter(|l| l.starts_with("INFO ") || l.starts_with("WARN "))
        .count();
    assert_eq!(verdicts, expected, "one verdict per object:\n{stdout}");
    // Anything else on stdout (ERROR, FATAL) is a failure even if the exit code missed it.
    for line in stdout.lines() {
        assert!(
            line.starts_with("INFO ") || line.starts_with("WARN "),
            "unexpected kubernetes-validate output: {line}\n{stderr}"
        );
    }
}

#[test]
fn every_manifest_file_validates_with_kubernetes_validate() {
    let files: Vec<PathBuf> = manifest_files().into_iter().map(PathBuf::from).collect();
    for needed in [
        "deploy/daemonset.yaml",
        "deploy/prometheus-rules.yaml",
        "deploy/static-pod/etcdsafe.yaml",
        "deploy/examples/restore-drill-cronjob.yaml",
        "deploy/secrets.example.yaml",
    ] {
        assert!(files.contains(&PathBuf::from(needed)), "{needed} not found");
    }
    kubernetes_validate(&files, repo());
}

#[test]
fn kustomize_output_validates_and_is_complete() {
    let rendered = kustomize_build();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rendered.yaml"), &rendered).unwrap();
    kubernetes_validate(&[PathBuf::from("rendered.yaml")], dir.path());

    let docs = documents(&rendered);
    let objects: BTreeSet<(String, String)> = docs
        .iter()
        .map(|d| (s(d, "kind").to_string(), s(d, "metadata.name").to_string()))
        .collect();
    let config_map = objects
        .iter()
        .find(|(k, n)| k == "ConfigMap" && n.starts_with("etcdsafe-config-"))
        .expect("the config ConfigMap, with its content hash")
        .1
        .clone();
    let expected: BTreeSet<(String, String)> = [
        ("Namespace", "etcdsafe"),
        ("ServiceAccount", "etcdsafe"),
        ("Role", "etcdsafe"),
        ("RoleBinding", "etcdsafe"),
        ("ClusterRole", "etcdsafe"),
        ("ClusterRoleBinding", "etcdsafe"),
        ("ResourceQuota", "etcdsafe-critical-pods"),
        ("ConfigMap", config_map.as_str()),
        ("ConfigMap", "etcdsafe-grafana-dashboard"),
        ("DaemonSet", "etcdsafe"),
        ("Service", "etcdsafe"),
        ("ServiceMonitor", "etcdsafe"),
        ("PrometheusRule", "etcdsafe"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    assert_eq!(objects, expected);
    // No placeholder credentials in what `kubectl apply -k` applies.
    assert!(
        !docs.iter().any(|d| s(d, "kind") == "Secret"),
        "the base must not carry Secrets"
    );
    for doc in &docs {
        let kind = s(doc, "kind");
        if !["Namespace", "ClusterRole", "ClusterRoleBinding"].contains(&kind) {
            assert_eq!(
                walk(doc, "metadata.namespace").as_str(),
                Some("etcdsafe"),
                "{kind}"
            );
        }
    }

    // The DaemonSet uses the generated ConfigMap and the image set in the kustomization.
    let ds = docs.iter().find(|d| s(d, "kind") == "DaemonSet").unwrap();
    let volumes = seq(ds, "spec.template.spec.volumes");
    let config_volume = volumes.iter().find(|v| s(v, "name") == "config").unwrap();
    assert_eq!(s(config_volume, "configMap.name"), config_map);
    assert_eq!(
        s(ds, "spec.template.spec.containers.0.image"),
        "registry.example.com/etcdsafe:0.1.0"
    );
    // The config ConfigMap holds deploy/config/etcdsafe.yaml verbatim.
    let cm = docs
        .iter()
        .find(|d| s(d, "kind") == "ConfigMap" && s(d, "metadata.name") == config_map)
        .unwrap();
    assert_eq!(
        cm["data"]["config.yaml"].as_str(),
        Some(read("deploy/config/etcdsafe.yaml").as_str())
    );
    // The dashboard ConfigMap carries the sidecar label and the JSON verbatim.
    let dash = docs
        .iter()
        .find(|d| s(d, "metadata.name") == "etcdsafe-grafana-dashboard")
        .unwrap();
    assert_eq!(s(dash, "metadata.labels.grafana_dashboard"), "1");
    assert_eq!(
        dash["data"]["etcdsafe.json"].as_str(),
        Some(read("deploy/grafana-dashboard.json").as_str())
    );
    // The rules are deploy/prometheus-rules.yaml unchanged.
    let rule = docs
        .iter()
        .find(|d| s(d, "kind") == "PrometheusRule")
        .unwrap();
    assert_eq!(rule, &documents(&read("deploy/prometheus-rules.yaml"))[0]);
}

fn rendered_object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| s(d, "kind") == kind && s(d, "metadata.name") == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

#[test]
fn rbac_is_exactly_least_privilege() {
    let docs = documents(&kustomize_build());
    let rules = |kind: &str| -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
        let strings = |v: &Value| -> Vec<String> {
            v.as_sequence()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect()
        };
        seq(rendered_object(&docs, kind, "etcdsafe"), "rules")
            .iter()
            .map(|r| {
                let mut keys: Vec<&str> = r
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                keys.sort();
                assert_eq!(
                    keys,
                    ["apiGroups", "resources", "verbs"],
                    "{kind}: only plain rules"
                );
                (
                    strings(&r["apiGroups"]),
                    strings(&r["resources"]),
                    strings(&r["verbs"]),
                )
            })
            .collect()
    };
    let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules("Role"),
        vec![
            (
                v(&["coordination.k8s.io"]),
                v(&["leases"]),
                v(&["get", "create", "update"])
            ),
            (v(&[""]), v(&["events"]), v(&["create", "patch"])),
        ]
    );
    assert_eq!(
        rules("ClusterRole"),
        vec![(v(&[""]), v(&["nodes"]), v(&["get"]))]
    );
    for (binding, role) in [
        ("RoleBinding", "Role"),
        ("ClusterRoleBinding", "ClusterRole"),
    ] {
        let b = rendered_object(&docs, binding, "etcdsafe");
        assert_eq!(s(b, "roleRef.kind"), role);
        assert_eq!(s(b, "roleRef.name"), "etcdsafe");
        let subjects = seq(b, "subjects");
        assert_eq!(subjects.len(), 1, "{binding}");
        assert_eq!(s(&subjects[0], "kind"), "ServiceAccount");
        assert_eq!(s(&subjects[0], "name"), "etcdsafe");
        assert_eq!(s(&subjects[0], "namespace"), "etcdsafe");
    }
    // Nothing else in the tree grants anything.
    for file in manifest_files() {
        for doc in documents(&read(&file)) {
            let kind = s(&doc, "kind");
            if kind.ends_with("Role") || kind.ends_with("RoleBinding") {
                assert_eq!(file, "deploy/rbac.yaml", "{kind} outside deploy/rbac.yaml");
            }
        }
    }
}

// The Prometheus Operator's objects, as far as these manifests use them: the field names and
// types of monitoring.coreos.com/v1 (Prometheus Operator API reference), unknown fields refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ServiceMonitor {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: ServiceMonitorSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Metadata {
    name: String,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    namespace_selector: NamespaceSelector,
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSelector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceSelector {
    match_names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    port: String,
    path: String,
    scheme: String,
    interval: String,
    scrape_timeout: String,
    relabelings: Vec<Relabeling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Relabeling {
    source_labels: Vec<String>,
    target_label: String,
    action: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PrometheusRule {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: PrometheusRuleSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrometheusRuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The operator's Duration pattern: number-unit pairs in the order y, w, d, h, m, s, ms
/// (`30s`, `1m30s`, `1h`).
fn is_prometheus_duration(text: &str) -> bool {
    const UNITS: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    let mut rest = text;
    let mut last = None;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        let letters = rest[digits..]
            .chars()
            .take_while(|c| c.is_ascii_alphabetic())
            .count();
        let Some(unit) = UNITS
            .iter()
            .position(|u| *u == &rest[digits..digits + letters])
        else {
            return false;
        };
        if digits == 0 || last.is_some_and(|l| l >= unit) {
            return false;
        }
        last = Some(unit);
        rest = &rest[digits + letters..];
    }
    last.is_some()
}

#[test]
fn prometheus_operator_objects_use_known_fields() {
    let docs = documents(&kustomize_build());
    let sm: ServiceMonitor =
        serde_yaml::from_value(rendered_object(&docs, "ServiceMonitor", "etcdsafe").clone())
            .expect("ServiceMonitor fields");
    assert_eq!(sm.kind, "ServiceMonitor");
    let service = rendered_object(&docs, "Service", "etcdsafe");
    let service_labels: BTreeMap<String, String> =
        serde_yaml::from_value(walk(service, "metadata.labels").clone()).unwrap();
    for (k, v) in &sm.spec.selector.match_labels {
        assert_eq!(
            service_labels.get(k),
            Some(v),
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(sm.spec.namespace_selector.match_names, ["etcdsafe"]);
    let port_names: Vec<&str> = seq(service, "spec.ports")
        .iter()
        .map(|p| s(p, "name"))
        .collect();
    for endpoint in &sm.spec.endpoints {
        assert!(
            port_names.contains(&endpoint.port.as_str()),
            "endpoint port {}",
            endpoint.port
        );
        assert_eq!(endpoint.path, "/metrics");
        assert_eq!(endpoint.scheme, "http");
        for d in [&endpoint.interval, &endpoint.scrape_timeout] {
            assert!(
                is_prometheus_duration(d),
                "{d} is not a Prometheus duration"
            );
        }
        for r in &endpoint.relabelings {
            assert!(r
                .source_labels
                .iter()
                .all(|l| l.starts_with("__meta_kubernetes_")));
            assert!(["replace", "keep", "drop", "labelmap"].contains(&r.action.as_str()));
        }
    }
    // Headless, publishing not-ready pods: a failing instance is still scraped.
    assert_eq!(s(service, "spec.clusterIP"), "None");
    assert_eq!(
        walk(service, "spec.publishNotReadyAddresses").as_bool(),
        Some(true)
    );

    let pr: PrometheusRule =
        serde_yaml::from_value(rendered_object(&docs, "PrometheusRule", "etcdsafe").clone())
            .expect("PrometheusRule fields");
    for group in &pr.spec.groups {
        assert!(!group.name.is_empty());
        for rule in &group.rules {
            assert!(rule.alert.is_some() != rule.record.is_some());
            if let Some(d) = &rule.for_ {
                assert!(is_prometheus_duration(d), "for: {d}");
            }
        }
    }
}

/// A config file's text with every absolute path moved under `root`.
fn rooted(text: &str, root: &Path) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut line = line.to_string();
        for prefix in ["/etc/", "/var/lib/"] {
            line = line.replace(
                &format!(" {prefix}"),
                &format!(" {}{prefix}", root.display()),
            );
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Every absolute path a config names (values of keys, not comments).
fn config_paths(text: &str) -> Vec<String> {
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.starts_with('/') => out.push(s.clone()),
            Value::Mapping(m) => m.values().for_each(|v| collect(v, out)),
            Value::Sequence(xs) => xs.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    collect(&serde_yaml::from_str(text).unwrap(), &mut out);
    out
}

/// Creates, under `root`, the files a pod would see at `paths`, with Secret-like modes.
fn materialize(root: &Path, paths: &[String], recipient: &str) {
    for path in paths {
        let file = root.join(path.trim_start_matches('/'));
        if path.ends_with("/spool") {
            std::fs::create_dir_all(&file).unwrap();
            continue;
        }
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let (content, mode) = if path.ends_with("recipients.txt") {
            (format!("# test\n{recipient}\n"), 0o644)
        } else if path.ends_with("etcd.yaml") {
            (read("tests/fixtures/deploy/kubeadm-etcd.yaml"), 0o600)
        } else {
            ("placeholder\n".to_string(), 0o400)
        };
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Mounts of the first container of a pod spec: path -> (volume, read-only).
fn mounts(pod: &Value) -> Vec<(String, String, bool)> {
    seq(pod, "containers.0.volumeMounts")
        .iter()
        .map(|m| {
            (
                s(m, "mountPath").to_string(),
                s(m, "name").to_string(),
                walk(m, "readOnly").as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn quantity_bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "" => 1,
        other => panic!("unit {other}"),
    }
}

#[test]
fn shipped_configs_validate_against_their_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let docs = documents(&kustomize_build());
    let ds = rendered_object(&docs, "DaemonSet", "etcdsafe");
    let pod = walk(ds, "spec.template.spec");
    let static_pod = &documents(&read("deploy/static-pod/etcdsafe.yaml"))[0];
    let static_spec = walk(static_pod, "spec");
    let drill = documents(&read("deploy/examples/restore-drill-cronjob.yaml"));
    let drill_config = drill
        .iter()
        .find(|d| s(d, "kind") == "ConfigMap")
        .map(|d| d["data"]["config.yaml"].as_str().unwrap().to_string())
        .unwrap();
    // The drill's recipient is a placeholder that must fail loudly until it is replaced.
    let placeholder = "CHANGE-ME-age1-public-key-of-the-identity-below";
    assert!(drill_config.contains(placeholder));
    let err = etcdsafe::config::Config::from_yaml(Path::new("drill.yaml"), &drill_config)
        .expect_err("the placeholder recipient is refused");
    assert!(err.to_string().contains(placeholder), "{err}");
    let drill_config = drill_config.replace(placeholder, &recipient);

    for (name, text, spec) in [
        (
            "deploy/config/etcdsafe.yaml",
            read("deploy/config/etcdsafe.yaml"),
            Some(pod),
        ),
        (
            "deploy/static-pod/config.yaml",
            read("deploy/static-pod/config.yaml"),
            Some(static_spec),
        ),
        ("the drill's ConfigMap", drill_config, None),
    ] {
        let root = dir.path().join(name.replace('/', "_"));
        let paths = config_paths(&text);
        materialize(&root, &paths, &recipient);
        let config =
            etcdsafe::config::Config::from_yaml(&root.join("config.yaml"), &rooted(&text, &root))
                .unwrap_or_else(|e| panic!("{name} does not validate: {e}"));

        let Some(spec) = spec else { continue };
        // Every path the config names is inside a mount of the pod; only the spool is writable.
        let mounts = mounts(spec);
        for path in &paths {
            let (mount, _, read_only) = mounts
                .iter()
                .filter(|(m, _, _)| path == m || path.starts_with(&format!("{m}/")))
                .max_by_key(|(m, _, _)| m.len())
                .unwrap_or_else(|| panic!("{name}: {path} is on no mount of the pod"));
            assert_eq!(
                *read_only,
                !path.ends_with("/spool"),
                "{name}: {path} on {mount}"
            );
        }
        // Secret volumes are 0400: etcdsafe refuses secret files that others can read.
        for volume in seq(spec, "volumes") {
            if walk(volume, "secret").is_mapping() {
                assert_eq!(
                    walk(volume, "secret.defaultMode").as_u64(),
                    Some(0o400),
                    "{volume:?}"
                );
            }
        }
        // The probes reach the server where it listens.
        let container = walk(spec, "containers.0");
        let listen = config.service.listen;
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let get = walk(container, &format!("{probe}.httpGet"));
            let port = match walk(get, "port") {
                Value::Number(n) => n.as_u64().unwrap() as u16,
                Value::String(named) => {
                    let p = seq(container, "ports")
                        .iter()
                        .find(|p| s(p, "name") == named)
                        .unwrap();
                    walk(p, "containerPort").as_u64().unwrap() as u16
                }
                other => panic!("{probe}: port {other:?}"),
            };
            assert_eq!(port, listen.port(), "{name}: {probe}");
            let path = s(get, "path");
            assert_eq!(
                path,
                if probe == "readinessProbe" {
                    "/readyz"
                } else {
                    "/healthz"
                }
            );
            match walk(get, "host").as_str() {
                // hostNetwork: the kubelet probes the node's address, so the server listens on all.
                None => assert!(
                    listen.ip().is_unspecified(),
                    "{name}: {probe} needs 0.0.0.0"
                ),
                Some(host) => assert_eq!(host, listen.ip().to_string(), "{name}: {probe}"),
            }
        }
        if !listen.ip().is_loopback() {
            assert!(
                config.service.token_file.is_some(),
                "{name}: a token guards /v1"
            );
        }
        // SIGTERM waits shutdown-timeout for a backup, then 5s for the runtime: less than the grace.
        let grace = walk(spec, "terminationGracePeriodSeconds")
            .as_u64()
            .unwrap();
        assert!(
            grace > config.service.shutdown_timeout.as_secs() + 5,
            "{name}: terminationGracePeriodSeconds {grace} vs shutdown-timeout {:?}",
            config.service.shutdown_timeout
        );
        // The memory limit covers the pipeline (~64 MiB), the S3 buffers and ~64 MiB of the rest.
        let limit = quantity_bytes(s(container, "resources.limits.memory"));
        let buffers = match &config.storage {
            etcdsafe::config::StorageConfig::S3(s3) => (s3.part_size * s3.concurrency) as u64,
            _ => 0,
        };
        assert!(
            limit >= (128 << 20) + buffers,
            "{name}: memory limit {limit} for {buffers} of S3 buffers"
        );
        assert!(
            limit <= 512 << 20,
            "{name}: memory limit {limit} is more than the design needs"
        );
        // A control-plane pod on the node's network, reaching etcd on 127.0.0.1.
        assert_eq!(walk(spec, "hostNetwork").as_bool(), Some(true), "{name}");
        assert_eq!(
            s(spec, "priorityClassName"),
            "system-node-critical",
            "{name}"
        );
        assert_eq!(
            walk(spec, "securityContext.runAsUser").as_u64(),
            Some(0),
            "{name}"
        );
        let sc = walk(container, "securityContext");
        assert_eq!(
            walk(sc, "allowPrivilegeEscalation").as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            walk(sc, "readOnlyRootFilesystem").as_bool(),
            Some(true),
            "{name}"
        );
        assert_eq!(
            seq(sc, "capabilities.drop"),
            &vec![Value::from("ALL")],
            "{name}"
        );
        assert!(walk(sc, "capabilities.add").is_null(), "{name}");
        for volume in seq(spec, "volumes") {
            if walk(volume, "hostPath").is_mapping() {
                let path = s(volume, "hostPath.path");
                assert!(
                    [
                        "/etc/kubernetes/pki/etcd",
                        "/etc/kubernetes/manifests",
                        "/var/lib/etcdsafe/spool",
                        "/etc/etcdsafe"
                    ]
                    .contains(&path),
                    "{name}: unexpected hostPath {path}"
                );
            }
        }
    }

    // The DaemonSet resolves cluster names from the host network.
    assert_eq!(s(pod, "dnsPolicy"), "ClusterFirstWithHostNet");

    // The example recipients ConfigMap holds no key: applied as it is, etcdsafe refuses to start
    // instead of encrypting to a key nobody has.
    let example = documents(&read("deploy/secrets.example.yaml"));
    let recipients = example
        .iter()
        .find(|d| s(d, "kind") == "ConfigMap" && s(d, "metadata.name") == "etcdsafe-recipients")
        .map(|d| d["data"]["recipients.txt"].as_str().unwrap().to_string())
        .unwrap();
    let root = dir.path().join("example");
    let text = read("deploy/config/etcdsafe.yaml");
    materialize(&root, &config_paths(&text), &recipient);
    std::fs::write(
        root.join("etc/etcdsafe/recipients/recipients.txt"),
        recipients,
    )
    .unwrap();
    let err = etcdsafe::config::Config::from_yaml(&root.join("config.yaml"), &rooted(&text, &root))
        .expect_err("no recipient in the example");
    assert!(err.to_string().contains("recipient"), "{err}");
}

#[test]
fn daemonset_schedules_on_control_plane_nodes_only() {
    let docs = documents(&kustomize_build());
    let pod = walk(
        rendered_object(&docs, "DaemonSet", "etcdsafe"),
        "spec.template.spec",
    );
    let selector = walk(pod, "nodeSelector").as_mapping().unwrap();
    assert_eq!(selector.len(), 1);
    assert_eq!(
        selector
            .get("node-role.kubernetes.io/control-plane")
            .and_then(|v| v.as_str()),
        Some("")
    );
    let tolerations = seq(pod, "tolerations");
    assert!(tolerations
        .iter()
        .any(|t| s(t, "key") == "node-role.kubernetes.io/control-plane"
            && s(t, "operator") == "Exists"
            && s(t, "effect") == "NoSchedule"));
    let env = seq(pod, "containers.0.env");
    assert!(env
        .iter()
        .any(|e| s(e, "name") == "NODE_NAME"
            && s(e, "valueFrom.fieldRef.fieldPath") == "spec.nodeName"));
}

/// `etcdsafe_*` metric names a PromQL expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("etcdsafe_") {
        let start = i + pos;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        if before_ok {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

fn dashboard_queries() -> Vec<(String, String)> {
    let dash: serde_json::Value = serde_json::from_str(&read("deploy/grafana-dashboard.json"))
        .expect("the dashboard is JSON");
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap().to_string();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            out.push((title.clone(), t["expr"].as_str().expect("expr").to_string()));
        }
    }
    out
}

/// Grafana's variables, as a person would pick them.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$window", "1h")
        .replace("$job", ".*")
}

#[test]
fn dashboard_queries_use_exported_metrics_and_answer_on_prometheus() {
    let queries = dashboard_queries();
    // The panels the dashboard promises.
    let all: BTreeSet<String> = queries.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for needed in [
        "etcdsafe_last_success_timestamp_seconds",
        "etcdsafe_backup_duration_seconds_bucket",
        "etcdsafe_backup_bytes",
        "etcdsafe_backup_failures_total",
        "etcdsafe_retention_deleted_total",
        "etcdsafe_retention_failures_total",
        "etcdsafe_backups_stored",
        "etcdsafe_is_snapshot_leader",
    ] {
        assert!(all.contains(needed), "no panel uses {needed}");
    }
    assert!(queries
        .iter()
        .any(|(_, e)| e.contains("time() - ")
            && e.contains("etcdsafe_last_success_timestamp_seconds")));
    assert!(queries
        .iter()
        .any(|(_, e)| e.contains("histogram_quantile") && e.contains("by (le, stage)")));
    assert!(queries.iter().any(
        |(_, e)| e.contains("rate(etcdsafe_backup_failures_total") && e.contains("by (stage)")
    ));
    assert!(queries
        .iter()
        .any(|(_, e)| e.contains("etcdsafe_backup_bytes") && e.contains("by (kind)")));
    assert!(queries
        .iter()
        .any(|(_, e)| e.contains("etcdsafe_backups_stored") && e.contains("by (reason)")));

    // A real run: backups every 2 seconds with retention, then its /metrics.
    let cluster = EtcdCluster::start(EtcdVersion::V3_5);
    cluster.ctl(&["put", "k", "v"]);
    let dir = tempfile::tempdir().unwrap();
    let (_, recipient) = age_keypair(dir.path(), "key.txt");
    let cfg = write_config(dir.path(), &cluster, &recipient);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("schedule: \"*/2 * * * * *\"\nretention: { keep-last: 2 }\n");
    std::fs::write(&cfg, text).unwrap();
    let service = ServiceProcess::start(&cfg, &dir.path().join("run.log"));
    service.wait_for("three backups", Duration::from_secs(60), |s| {
        s.metric("etcdsafe_backup_runs_total{result=\"success\"}")
            .unwrap_or(0.0)
            >= 3.0
    });
    let (status, scrape) = http(service.port, "GET", "/metrics", None, "").unwrap();
    assert_eq!(status, 200);
    let exported: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "panel {title:?} uses {name}, which etcdsafe does not export:\n{scrape}"
            );
        }
    }

    // Every query, as Grafana would send it, runs on Prometheus and returns data.
    let prometheus = Prometheus::start(dir.path(), service.port, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<(String, String)> = queries.clone();
    while !pending.is_empty() {
        pending.retain(|(_, expr)| {
            let v = prometheus.query(&substitute(expr));
            v["data"]["result"].as_array().is_none_or(|r| r.is_empty())
                || v["data"]["result"][0]["value"][1] == "NaN"
        });
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries without data after 60s: {pending:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn dockerfile_lints_clean_and_builds_like_check_static() {
    let dockerfile = read("Dockerfile");
    let out = Command::new(system_tool("hadolint"))
        .args(["--failure-threshold", "info", "Dockerfile"])
        .current_dir(repo())
        .output()
        .expect("run hadolint");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The image's binary is built exactly as scripts/check-static.sh builds and proves it.
    let script = read("scripts/check-static.sh");
    assert!(dockerfile.contains("ENV RUSTFLAGS=\"-C target-feature=+crt-static\""));
    assert!(script.contains("RUSTFLAGS=\"-C target-feature=+crt-static\""));
    assert!(dockerfile.contains("cargo build --release --locked --target x86_64-unknown-linux-gnu"));
    assert!(script.contains("cargo build --release --locked --target \"$target\""));
    assert!(script.contains("target=x86_64-unknown-linux-gnu"));
    assert!(dockerfile.contains("&& strip --strip-debug /out/etcdsafe"));
    assert!(script.contains("strip --strip-debug -o \"$bin\" \"$built\""));
    // Pinned bases, the etcd tools, non-root by default, the entrypoint.
    for pinned in [
        "ARG RUST_IMAGE=rust:1.95.0-bookworm",
        "ARG ETCD_IMAGE=gcr.io/etcd-development/etcd:v3.5.21",
        "ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot",
        "COPY --from=etcd /usr/local/bin/etcdutl /usr/local/bin/etcdctl /usr/local/bin/",
        "USER 65532:65532",
        "ENTRYPOINT [\"/etcdsafe\"]",
        "CMD [\"run\"]",
    ] {
        assert!(
            dockerfile.lines().any(|l| l == pinned),
            "Dockerfile lacks `{pinned}`"
        );
    }
    assert!(!dockerfile.contains(":latest"));
    // The build context holds what the builder copies, and nothing else.
    let ignore = read(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(patterns, ["*", "!Cargo.toml", "!Cargo.lock", "!src/"]);
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        for source in line
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .split_last()
            .unwrap()
            .1
        {
            assert!(
                repo().join(source).exists(),
                "COPY {source}: not in the repository"
            );
        }
    }
}

/// The packages an `apt-get install` in `text` names (shell line continuations joined).
fn apt_installed(text: &str) -> BTreeSet<String> {
    let joined = text.replace("\\\n", " ");
    let mut packages = BTreeSet::new();
    for line in joined.lines() {
        for command in line.split("&&") {
            let words: Vec<&str> = command.split_whitespace().collect();
            if let Some(at) = words.windows(2).position(|w| w == ["apt-get", "install"]) {
                packages.extend(
                    words[at + 2..]
                        .iter()
                        .take_while(|w| !w.starts_with('>') && !w.starts_with('|'))
                        .filter(|w| !w.starts_with('-') && !w.starts_with('"'))
                        .map(|w| w.to_string()),
                );
            }
        }
    }
    packages
}

#[test]
fn dockerfile_builder_installs_what_the_build_needs() {
    // No image can be pulled here, so the builder stage is read: with --no-install-recommends,
    // protoc's includes (google/protobuf/descriptor.proto, in libprotobuf-dev) must be named,
    // or etcd-client's build script fails on a bare machine.
    let dockerfile = read("Dockerfile");
    let builder: String = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.lines().next().unwrap_or("").ends_with(" AS builder"))
        .expect("a builder stage")
        .to_string();
    let installed = apt_installed(&builder);
    assert!(builder.contains("--no-install-recommends"));
    for needed in ["protobuf-compiler", "libprotobuf-dev"] {
        assert!(
            installed.contains(needed),
            "the Dockerfile's builder does not install {needed}: {installed:?}"
        );
    }
    // The same packages are in what `make demo` installs on a bare Debian (the demo builds
    // etcdsafe too), so the two cannot drift apart.
    let script = read("scripts/install-deps.sh");
    let demo_set = script
        .lines()
        .find(|l| l.starts_with("apt_packages=("))
        .expect("install-deps.sh's demo package list");
    for needed in ["protobuf-compiler", "libprotobuf-dev"] {
        assert!(
            demo_set.split(['(', ')', ' ']).any(|w| w == needed),
            "install-deps.sh's demo set lacks {needed}: {demo_set}"
        );
    }
    assert_eq!(
        apt_installed("RUN apt-get update \\\n && apt-get install -y --no-install-recommends a b \\\n c >/dev/null"),
        BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()])
    );
}

#[test]
fn static_binary_runs_in_an_empty_root() {
    // Slow: a release build of its own (target/static), then the checks the script lists.
    for tool in [
        "file", "ldd", "readelf", "chroot", "unshare", "ip", "python3",
    ] {
        system_tool(tool);
    }
    let out = Command::new("bash")
        .arg(repo().join("scripts/check-static.sh"))
        .current_dir(repo())
        .output()
        .expect("run scripts/check-static.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/check-static.sh failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("check-static: ok"), "{stdout}");
    assert!(
        stdout.contains("names resolve from /etc/hosts and from DNS"),
        "{stdout}"
    );
}

/// The fenced ```sh block of a Markdown file whose first line starts with `first`.
fn code_block(markdown: &str, first: &str) -> String {
    let mut blocks = markdown.split("```sh\n").skip(1);
    let block = blocks
        .find(|b| b.starts_with(first))
        .unwrap_or_else(|| panic!("no ```sh block starting with {first:?}"));
    block.split("```").next().unwrap().to_string()
}

#[test]
fn runbook_sed_points_etcd_data_at_the_restored_directory() {
    let runbook = read("docs/RESTORE-RUNBOOK.md");
    let block = code_block(&runbook, "sed -i");
    let sed = block.lines().next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stopped = dir.path().join("etc/kubernetes/manifests-stopped");
    std::fs::create_dir_all(&stopped).unwrap();
    let manifest = stopped.join("etcd.yaml");
    std::fs::write(&manifest, read("tests/fixtures/deploy/kubeadm-etcd.yaml")).unwrap();
    let script = sed.replace(
        "/etc/kubernetes/manifests-stopped/",
        &format!("{}/", stopped.display()),
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("RESTORE_DIR", "/var/lib/etcd-restored-20261124")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pod = &documents(&std::fs::read_to_string(&manifest).unwrap())[0];
    let host_paths: BTreeMap<String, String> = seq(pod, "spec.volumes")
        .iter()
        .map(|v| (s(v, "name").to_string(), s(v, "hostPath.path").to_string()))
        .collect();
    assert_eq!(host_paths["etcd-data"], "/var/lib/etcd-restored-20261124");
    assert_eq!(host_paths["etcd-certs"], "/etc/kubernetes/pki/etcd");
    let container = walk(pod, "spec.containers.0");
    assert!(seq(container, "command").contains(&Value::from("--data-dir=/var/lib/etcd")));
    let mount_paths: Vec<&str> = seq(container, "volumeMounts")
        .iter()
        .map(|m| s(m, "mountPath"))
        .collect();
    assert!(mount_paths.contains(&"/var/lib/etcd"));
}

/// etcd members started from restored data directories; killed on drop.
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The runbook's step 4 for three members, exactly as written there, from one backup fetched
/// with `backups fetch`; then the three members start from the restored directories and serve
/// the data.
fn runbook_restore(version: EtcdVersion) {
    let cluster = EtcdCluster::start(version);
    cluster.ctl(&["put", "/registry/namespaces/restored", "before-the-backup"]);
    let dir = tempfile::tempdir().unwrap();
    let (identity, recipient) = age_keypair(dir.path(), "key.txt");
    let cfg = write_config(dir.path(), &cluster, &recipient);
    run_ok(
        etcdsafe()
            .arg("--config")
            .arg(&cfg)
            .args(["snapshot", "save"]),
    );
    cluster.ctl(&["put", "/registry/namespaces/lost", "after-the-backup"]);
    run_ok(
        etcdsafe()
            .arg("--config")
            .arg(&cfg)
            .args([
                "backups",
                "fetch",
                "latest",
                "-o",
                "snapshot.db",
                "--identity",
            ])
            .arg(&identity)
            .current_dir(dir.path()),
    );

    let runbook = read("docs/RESTORE-RUNBOOK.md");
    let restore = match version {
        EtcdVersion::V3_5 => code_block(&runbook, "etcdutl snapshot restore snapshot.db"),
        EtcdVersion::V3_4 => code_block(
            &runbook,
            "ETCDCTL_API=3 etcdctl snapshot restore snapshot.db",
        ),
    };
    let names = ["cp1", "cp2", "cp3"];
    let peers: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let clients: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let initial_cluster = names
        .iter()
        .zip(&peers)
        .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let path = format!(
        "{}:{}",
        version.dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (i, name) in names.iter().enumerate() {
        let out = Command::new("bash")
            .args(["-euc", &restore])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("NAME", name)
            .env("PEER_URL", format!("http://127.0.0.1:{}", peers[i]))
            .env("INITIAL_CLUSTER", &initial_cluster)
            .env("TOKEN", "etcd-restore-test")
            .env("RESTORE_DIR", dir.path().join(format!("restored-{name}")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the runbook's restore for {name} failed:\n{restore}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut members = Members(Vec::new());
    for (i, name) in names.iter().enumerate() {
        let peer = format!("http://127.0.0.1:{}", peers[i]);
        let client = format!("http://127.0.0.1:{}", clients[i]);
        members.0.push(
            Command::new(version.bin("etcd"))
                .arg(format!("--name={name}"))
                .arg(format!(
                    "--data-dir={}",
                    dir.path().join(format!("restored-{name}")).display()
                ))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster={initial_cluster}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap())
                .spawn()
                .expect("start a restored member"),
        );
    }
    let endpoints = clients
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let etcdctl = |args: &[&str]| {
        Command::new(version.bin("etcdctl"))
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = etcdctl(&["endpoint", "health"]);
        if health.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restored members not healthy: {}{}",
            String::from_utf8_lossy(&health.stdout),
            String::from_utf8_lossy(&health.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let list = String::from_utf8(etcdctl(&["member", "list"]).stdout).unwrap();
    for name in names {
        assert!(
            list.contains(&format!(", started, {name}, ")),
            "{name} not started: {list}"
        );
    }
    let got =
        String::from_utf8(etcdctl(&["get", "--prefix", "/registry/namespaces/"]).stdout).unwrap();
    assert!(got.contains("before-the-backup"), "{got}");
    assert!(
        !got.contains("after-the-backup"),
        "the restore did not rewind: {got}"
    );
}

#[test]
fn runbook_restores_three_members_with_etcd_3_5() {
    runbook_restore(EtcdVersion::V3_5);
}

#[test]
fn runbook_restores_three_members_with_etcd_3_4() {
    runbook_restore(EtcdVersion::V3_4);
}

#[test]
fn docs_name_files_that_exist() {
    for doc in ["docs/INSTALL.md", "docs/RESTORE-RUNBOOK.md"] {
        let text = read(doc);
        for word in text.split(|c: char| c.is_whitespace() || "`()[],:".contains(c)) {
            let word = word.trim_end_matches(['.', ';']);
            if (word.starts_with("deploy/")
                || word.starts_with("scripts/")
                || word.starts_with("docs/"))
                && !word.contains('*')
            {
                assert!(
                    repo().join(word).exists(),
                    "{doc} names {word}, which does not exist"
                );
            }
        }
    }
}
