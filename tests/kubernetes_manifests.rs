//! Static checks of dbwarden's Kubernetes deployment (deploy/kubernetes), its
//! Dockerfile and .dockerignore. No cluster and no container runtime:
//!
//! - every YAML document under deploy/kubernetes parses into its typed
//!   Kubernetes object (k8s-openapi) by kind, and carries no field the type
//!   does not know (k8s-openapi ignores unknown fields, so each object is
//!   serialized back and compared: a misspelt `securityContex` fails here
//!   instead of being dropped by the API server); ServiceMonitors,
//!   PrometheusRules and kustomize's own files are checked field by field;
//! - `kubectl kustomize` (kustomize built into kubectl) renders the base, the
//!   base with each component alone, and the example overlay, and every
//!   rendered object goes through the same parsing and through the
//!   invariants: securityContext, probes on the named port, resources, an
//!   explicit image tag, least-privilege RBAC, no committed Secret values,
//!   Service/ServiceMonitor/NetworkPolicy/PDB wiring;
//! - the rendered dbwarden.toml loads with `Config::from_toml_with_env`, with
//!   the Deployment's environment (fake values for Secret references) and
//!   each volume mount of the pod replaced by a temporary directory holding
//!   fake files for the Secret keys it mounts: a password_file that no
//!   mounted Secret provides fails to load, as it would in the pod;
//! - the Dockerfile is multi-stage, builds with --locked, ends as a non-root
//!   USER.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component as PathComponent, Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, PersistentVolumeClaim, PodSpec, Secret, Service, ServiceAccount, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use dbwarden::config::Config;

const APP: &str = "dbwarden";
const PORT_NAME: &str = "http-metrics";
const PORT: i32 = 9641;
const UID: i64 = 65532;
const CONFIG_PATH: &str = "/etc/dbwarden/dbwarden.toml";
/// The generated files (scripts/generate-deploy.sh) and the components they are written into.
const GENERATED: [(&str, &str); 2] = [
    ("prometheusrule.yaml", "components/prometheus-operator"),
    ("grafana-dashboards.yaml", "components/grafana-dashboards"),
];
/// Stands for the pod's HOSTNAME when the config is loaded.
const FAKE_HOSTNAME: &str = "dbwarden-5f8d9c7b6d-x7k2p";
const FAKE_URL: &str =
    "postgres://dbwarden@db-primary.database.svc:5432/postgres?sslmode=verify-full";

const KUBECTL_MISSING: &str = "kubectl is not installed: these tests run `kubectl kustomize` \
     (kustomize v5, built into kubectl 1.27+). The machine image provides it as the package \
     `kubectl` (google-cloud-sdk); Debian's `kubernetes-client` (1.20) is too old: its kustomize \
     has no Components";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

fn fail_on(errors: Vec<String>) {
    if !errors.is_empty() {
        panic!(
            "{} problem(s):\n  - {}",
            errors.len(),
            errors.join("\n  - ")
        );
    }
}

// ---------------------------------------------------------------------------
// Documents and their typed objects

#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Obj {
    Deployment(Deployment),
    Service(Service),
    ServiceAccount(ServiceAccount),
    ConfigMap(ConfigMap),
    Secret(Secret),
    NetworkPolicy(NetworkPolicy),
    PodDisruptionBudget(PodDisruptionBudget),
    Role(Role),
    RoleBinding(RoleBinding),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    PersistentVolumeClaim(PersistentVolumeClaim),
    ServiceMonitor(Value),
    PrometheusRule(Value),
    Certificate(Value),
    Kustomization,
    Component,
}

#[derive(Debug)]
struct Doc {
    /// File (and document number) or render it came from.
    origin: String,
    obj: Obj,
}

/// The non-empty YAML documents of `text`, as JSON values.
fn yaml_documents(text: &str, origin: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(de)
            .map_err(|e| format!("{origin}, document {}: not valid YAML: {e}", i + 1))?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

/// Every field of `orig` must come back in `back` with the same value.
fn lost_fields(orig: &Value, back: &Value, path: &str, lost: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (k, v) in o {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => lost_fields(v, bv, &p, lost),
                    None if v.is_null() => {}
                    None => lost.push(format!("`{p}`")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) if o.len() == b.len() => {
            for (i, (ov, bv)) in o.iter().zip(b).enumerate() {
                lost_fields(ov, bv, &format!("{path}[{i}]"), lost);
            }
        }
        (o, b) if o == b => {}
        (o, b) => lost.push(format!("`{path}` ({o} read as {b})")),
    }
}

fn typed<T: Resource + DeserializeOwned + Serialize>(v: &Value, origin: &str) -> Result<T, String> {
    let api = v["apiVersion"].as_str().unwrap_or_default();
    if api != T::API_VERSION {
        return Err(format!(
            "{origin}: {} has apiVersion {api:?}, expected {:?}",
            T::KIND,
            T::API_VERSION
        ));
    }
    let obj: T = serde_json::from_value(v.clone())
        .map_err(|e| format!("{origin}: not a valid {}: {e}", T::KIND))?;
    let back = serde_json::to_value(&obj).expect("serializes");
    let mut lost = Vec::new();
    lost_fields(v, &back, "", &mut lost);
    if !lost.is_empty() {
        return Err(format!(
            "{origin}: fields a {} does not have (misspelt or misplaced?): {}",
            T::KIND,
            lost.join(", ")
        ));
    }
    Ok(obj)
}

fn to_obj(v: Value, origin: &str, dir: Option<&Path>) -> Result<Obj, String> {
    let kind = v["kind"].as_str().unwrap_or_default().to_string();
    Ok(match kind.as_str() {
        "Deployment" => Obj::Deployment(typed(&v, origin)?),
        "Service" => Obj::Service(typed(&v, origin)?),
        "ServiceAccount" => Obj::ServiceAccount(typed(&v, origin)?),
        "ConfigMap" => Obj::ConfigMap(typed(&v, origin)?),
        "Secret" => Obj::Secret(typed(&v, origin)?),
        "NetworkPolicy" => Obj::NetworkPolicy(typed(&v, origin)?),
        "PodDisruptionBudget" => Obj::PodDisruptionBudget(typed(&v, origin)?),
        "Role" => Obj::Role(typed(&v, origin)?),
        "RoleBinding" => Obj::RoleBinding(typed(&v, origin)?),
        "ClusterRole" => Obj::ClusterRole(typed(&v, origin)?),
        "ClusterRoleBinding" => Obj::ClusterRoleBinding(typed(&v, origin)?),
        "PersistentVolumeClaim" => Obj::PersistentVolumeClaim(typed(&v, origin)?),
        "ServiceMonitor" => {
            check_service_monitor(&v).map_err(|e| format!("{origin}: ServiceMonitor: {e}"))?;
            Obj::ServiceMonitor(v)
        }
        "PrometheusRule" => {
            check_prometheus_rule(&v).map_err(|e| format!("{origin}: PrometheusRule: {e}"))?;
            Obj::PrometheusRule(v)
        }
        "Certificate" => {
            check_certificate(&v).map_err(|e| format!("{origin}: Certificate: {e}"))?;
            Obj::Certificate(v)
        }
        "Kustomization" | "Component" => {
            let Some(dir) = dir else {
                return Err(format!("{origin}: a {kind} in rendered output"));
            };
            check_kustomization(&v, dir).map_err(|e| format!("{origin}: {e}"))?;
            if kind == "Component" {
                Obj::Component
            } else {
                Obj::Kustomization
            }
        }
        other => {
            return Err(format!(
                "{origin}: kind {other:?} is not one this test knows: add it to to_obj"
            ));
        }
    })
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

fn only_keys(v: &Value, allowed: &[&str], what: &str) -> Result<(), String> {
    let Some(map) = v.as_object() else {
        return Err(format!("{what} is not a mapping"));
    };
    let unknown: Vec<&String> = map
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: unknown field(s) {unknown:?}"))
    }
}

fn check_metadata(v: &Value) -> Result<(), String> {
    match str_at(v, &["metadata", "name"]) {
        Some(n) if !n.is_empty() => Ok(()),
        _ => Err("metadata.name is missing".into()),
    }
}

/// The fields dbwarden's ServiceMonitor may use (monitoring.coreos.com/v1).
fn check_service_monitor(v: &Value) -> Result<(), String> {
    if v["apiVersion"] != "monitoring.coreos.com/v1" {
        return Err(format!("apiVersion {}", v["apiVersion"]));
    }
    check_metadata(v)?;
    only_keys(v, &["apiVersion", "kind", "metadata", "spec"], "the object")?;
    let spec = &v["spec"];
    only_keys(
        spec,
        &[
            "selector",
            "endpoints",
            "namespaceSelector",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
            "attachMetadata",
        ],
        "spec",
    )?;
    match spec["selector"]["matchLabels"].as_object() {
        Some(m) if !m.is_empty() => {}
        _ => return Err("spec.selector.matchLabels is missing or empty".into()),
    }
    let endpoints = spec["endpoints"].as_array().filter(|e| !e.is_empty());
    let Some(endpoints) = endpoints else {
        return Err("spec.endpoints is missing or empty".into());
    };
    for (i, e) in endpoints.iter().enumerate() {
        only_keys(
            e,
            &[
                "port",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "honorTimestamps",
                "relabelings",
                "metricRelabelings",
                "params",
                "followRedirects",
                "enableHttp2",
                "tlsConfig",
                "authorization",
                "basicAuth",
            ],
            &format!("spec.endpoints[{i}]"),
        )?;
        if !e["port"].is_string() {
            return Err(format!(
                "spec.endpoints[{i}].port: a named Service port is required"
            ));
        }
    }
    Ok(())
}

/// A cert-manager Certificate: the fields dbwarden's component uses, each
/// known to cert-manager.io/v1.
fn check_certificate(v: &Value) -> Result<(), String> {
    if v["apiVersion"] != "cert-manager.io/v1" {
        return Err(format!("apiVersion {}", v["apiVersion"]));
    }
    check_metadata(v)?;
    only_keys(v, &["apiVersion", "kind", "metadata", "spec"], "the object")?;
    let spec = &v["spec"];
    only_keys(
        spec,
        &[
            "secretName",
            "duration",
            "renewBefore",
            "privateKey",
            "dnsNames",
            "ipAddresses",
            "commonName",
            "usages",
            "issuerRef",
            "secretTemplate",
        ],
        "spec",
    )?;
    only_keys(
        &spec["privateKey"],
        &["algorithm", "size", "encoding", "rotationPolicy"],
        "spec.privateKey",
    )?;
    only_keys(
        &spec["issuerRef"],
        &["name", "kind", "group"],
        "spec.issuerRef",
    )?;
    if !spec["secretName"].is_string() || !spec["issuerRef"]["name"].is_string() {
        return Err("spec.secretName and spec.issuerRef.name are required".into());
    }
    if spec["dnsNames"].as_array().is_none_or(|d| d.is_empty()) {
        return Err("spec.dnsNames is missing or empty".into());
    }
    Ok(())
}

/// A PrometheusRule's spec has the rule file's schema.
fn check_prometheus_rule(v: &Value) -> Result<(), String> {
    if v["apiVersion"] != "monitoring.coreos.com/v1" {
        return Err(format!("apiVersion {}", v["apiVersion"]));
    }
    check_metadata(v)?;
    only_keys(v, &["apiVersion", "kind", "metadata", "spec"], "the object")?;
    only_keys(&v["spec"], &["groups"], "spec")?;
    let groups = v["spec"]["groups"].as_array().filter(|g| !g.is_empty());
    let Some(groups) = groups else {
        return Err("spec.groups is missing or empty".into());
    };
    for (gi, g) in groups.iter().enumerate() {
        let at = format!("spec.groups[{gi}]");
        only_keys(
            g,
            &[
                "name",
                "interval",
                "rules",
                "limit",
                "query_offset",
                "labels",
            ],
            &at,
        )?;
        if g["name"].as_str().is_none_or(str::is_empty) {
            return Err(format!("{at}.name is missing"));
        }
        let rules = g["rules"].as_array().filter(|r| !r.is_empty());
        let Some(rules) = rules else {
            return Err(format!("{at}.rules is missing or empty"));
        };
        for (ri, r) in rules.iter().enumerate() {
            let at = format!("{at}.rules[{ri}]");
            only_keys(
                r,
                &[
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ],
                &at,
            )?;
            if r["alert"].is_string() == r["record"].is_string() {
                return Err(format!("{at}: exactly one of `alert` and `record`"));
            }
            if r["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                return Err(format!("{at}.expr is missing"));
            }
        }
    }
    Ok(())
}

const KUSTOMIZATION_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "resources",
    "components",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "labels",
    "commonLabels",
    "commonAnnotations",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patches",
    "images",
    "replicas",
    "replacements",
];

fn kustomization_file(dir: &Path) -> Option<PathBuf> {
    ["kustomization.yaml", "kustomization.yml", "Kustomization"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}

/// A path written in a kustomization for a file: relative, inside its directory
/// (kustomize's load restrictor refuses anything else).
fn inside(dir: &Path, entry: &str) -> Result<PathBuf, String> {
    let p = Path::new(entry);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, PathComponent::ParentDir))
    {
        return Err(format!(
            "{entry:?} is outside the kustomization's directory: kustomize refuses to load it"
        ));
    }
    let full = dir.join(p);
    if full.is_file() {
        Ok(full)
    } else {
        Err(format!("{entry:?} does not exist"))
    }
}

/// A directory written in a kustomization: it holds a kustomization of the
/// expected kind, and is not the directory itself or one above it (a cycle
/// for kustomize).
fn kustomization_dir(dir: &Path, entry: &str, kind: &str) -> Result<(), String> {
    let target = dir.join(entry);
    let (Ok(target), Ok(here)) = (target.canonicalize(), dir.canonicalize()) else {
        return Err(format!("{entry:?} does not exist"));
    };
    if here.starts_with(&target) {
        return Err(format!(
            "{entry:?} contains this kustomization: kustomize reports a cycle"
        ));
    }
    let Some(file) = kustomization_file(&target) else {
        return Err(format!("{entry:?} has no kustomization.yaml"));
    };
    let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
    let docs = yaml_documents(&text, &rel(&file))?;
    match docs.first().and_then(|d| d["kind"].as_str()) {
        Some(k) if k == kind => Ok(()),
        other => Err(format!("{entry:?} is a {other:?}, expected a {kind}")),
    }
}

fn strings<'a>(v: &'a Value, key: &str) -> Result<Vec<&'a str>, String> {
    match &v[key] {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().ok_or(format!("{key}: {s} is not a string")))
            .collect(),
        other => Err(format!("{key}: {other} is not a list")),
    }
}

fn check_kustomization(v: &Value, dir: &Path) -> Result<(), String> {
    let kind = v["kind"].as_str().unwrap_or_default();
    let api = match kind {
        "Kustomization" => "kustomize.config.k8s.io/v1beta1",
        _ => "kustomize.config.k8s.io/v1alpha1",
    };
    if v["apiVersion"] != api {
        return Err(format!(
            "a {kind} has apiVersion {}, expected {api:?}",
            v["apiVersion"]
        ));
    }
    only_keys(v, KUSTOMIZATION_KEYS, kind)?;
    if !v["secretGenerator"].is_null() {
        return Err(
            "secretGenerator: it would commit secret values; document `kubectl create secret` instead"
                .into(),
        );
    }
    for r in strings(v, "resources")? {
        let full = dir.join(r);
        let res = if full.is_dir() {
            kustomization_dir(dir, r, "Kustomization")
        } else {
            inside(dir, r).and_then(|f| {
                let text = std::fs::read_to_string(&f).map_err(|e| e.to_string())?;
                let docs = yaml_documents(&text, &rel(&f))?;
                if docs.is_empty() {
                    return Err(format!("{r:?} holds no object"));
                }
                Ok(())
            })
        };
        res.map_err(|e| format!("resources: {e}"))?;
    }
    for c in strings(v, "components")? {
        kustomization_dir(dir, c, "Component").map_err(|e| format!("components: {e}"))?;
    }
    if let Some(gens) = v["configMapGenerator"].as_array() {
        for (i, g) in gens.iter().enumerate() {
            only_keys(
                g,
                &[
                    "name",
                    "namespace",
                    "behavior",
                    "files",
                    "literals",
                    "envs",
                    "options",
                ],
                &format!("configMapGenerator[{i}]"),
            )?;
            if g["name"].as_str().is_none() {
                return Err(format!("configMapGenerator[{i}].name is missing"));
            }
            for f in strings(g, "files")? {
                let path = f.split_once('=').map_or(f, |(_, p)| p);
                inside(dir, path).map_err(|e| format!("configMapGenerator[{i}].files: {e}"))?;
            }
        }
    }
    if let Some(patches) = v["patches"].as_array() {
        for (i, p) in patches.iter().enumerate() {
            let at = format!("patches[{i}]");
            only_keys(p, &["patch", "path", "target", "options"], &at)?;
            let text = match (&p["patch"], &p["path"]) {
                (Value::String(s), Value::Null) => s.clone(),
                (Value::Null, Value::String(f)) => {
                    let f = inside(dir, f).map_err(|e| format!("{at}.path: {e}"))?;
                    std::fs::read_to_string(f).map_err(|e| e.to_string())?
                }
                _ => return Err(format!("{at}: exactly one of `patch` and `path`")),
            };
            if !p["target"].is_null() {
                only_keys(
                    &p["target"],
                    &[
                        "group",
                        "version",
                        "kind",
                        "name",
                        "namespace",
                        "labelSelector",
                        "annotationSelector",
                    ],
                    &format!("{at}.target"),
                )?;
            }
            // A JSON 6902 patch is a list of operations; a strategic merge
            // patch names the object it patches.
            for d in yaml_documents(&text, &at)? {
                if d.is_array() {
                    continue;
                }
                if d["apiVersion"].as_str().is_none()
                    || d["kind"].as_str().is_none()
                    || str_at(&d, &["metadata", "name"]).is_none()
                {
                    return Err(format!(
                        "{at}: a strategic merge patch needs apiVersion, kind and metadata.name"
                    ));
                }
                if let Some(k) = p["target"]["kind"].as_str()
                    && d["kind"] != k
                {
                    return Err(format!("{at}: patches a {} but targets a {k}", d["kind"]));
                }
            }
        }
    }
    // Every manifest next to the kustomization is one of its resources, and
    // every TOML file one of its generator's files: nothing silently left out.
    let mut listed: BTreeSet<String> = strings(v, "resources")?
        .into_iter()
        .map(String::from)
        .collect();
    if let Some(gens) = v["configMapGenerator"].as_array() {
        for g in gens {
            for f in strings(g, "files")? {
                listed.insert(f.split_once('=').map_or(f, |(_, p)| p).to_string());
            }
        }
    }
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let name = entry.map_err(|e| e.to_string())?.file_name();
        let name = name.to_string_lossy().to_string();
        let manifest = name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".toml");
        if manifest && !name.starts_with("kustomization.") && !listed.contains(&name) {
            return Err(format!(
                "{name} is in the directory but not listed: kustomize would leave it out"
            ));
        }
    }
    Ok(())
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

/// Every document of every YAML file under deploy/kubernetes, typed.
fn source_docs() -> Result<Vec<(PathBuf, Doc)>, Vec<String>> {
    let mut files = Vec::new();
    yaml_files(&k8s_dir(), &mut files);
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let origin = rel(&f);
        let values = match yaml_documents(&text, &origin) {
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if values.is_empty() {
            errors.push(format!("{origin}: holds no document"));
        }
        let n = values.len();
        for (i, v) in values.into_iter().enumerate() {
            let origin = if n > 1 {
                format!("{origin} (document {})", i + 1)
            } else {
                origin.clone()
            };
            match to_obj(v, &origin, f.parent()) {
                Ok(obj) => docs.push((f.clone(), Doc { origin, obj })),
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------
// Renders with kubectl kustomize

struct Render {
    /// "base", "example", or "base + <component>".
    name: String,
    /// The components it includes.
    components: BTreeSet<String>,
    docs: Vec<Doc>,
}

macro_rules! kinds {
    ($($variant:ident => $method:ident),* $(,)?) => {
        impl Render {
            $(
                fn $method(&self) -> Vec<&$variant> {
                    self.docs
                        .iter()
                        .filter_map(|d| match &d.obj {
                            Obj::$variant(x) => Some(x),
                            _ => None,
                        })
                        .collect()
                }
            )*
        }
    };
}

kinds!(
    Deployment => deployments,
    Service => services,
    ServiceAccount => service_accounts,
    ConfigMap => config_maps,
    Secret => secrets,
    NetworkPolicy => network_policies,
    PodDisruptionBudget => pod_disruption_budgets,
    Role => roles,
    RoleBinding => role_bindings,
    ClusterRole => cluster_roles,
    ClusterRoleBinding => cluster_role_bindings,
    PersistentVolumeClaim => persistent_volume_claims,
);

impl Render {
    fn has(&self, component: &str) -> bool {
        self.components.contains(component)
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs
            .iter()
            .filter_map(|d| match (&d.obj, kind) {
                (Obj::ServiceMonitor(v), "ServiceMonitor") => Some(v),
                (Obj::PrometheusRule(v), "PrometheusRule") => Some(v),
                (Obj::Certificate(v), "Certificate") => Some(v),
                _ => None,
            })
            .collect()
    }

    fn deployment(&self) -> &Deployment {
        let d = self.deployments();
        assert_eq!(d.len(), 1, "{}: expected one Deployment", self.name);
        d[0]
    }

    fn pod(&self) -> &PodSpec {
        self.deployment()
            .spec
            .template
            .spec
            .as_ref()
            .unwrap_or_else(|| panic!("{}: the Deployment has no pod spec", self.name))
    }

    fn container(&self) -> &Container {
        self.pod()
            .containers
            .iter()
            .find(|c| c.name == APP)
            .unwrap_or_else(|| panic!("{}: no container named {APP}", self.name))
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.deployment()
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }
}

fn component_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(k8s_dir().join("components"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

fn kubectl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("kubectl").args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            KUBECTL_MISSING.to_string()
        } else {
            format!("kubectl {}: {e}", args.join(" "))
        }
    })?;
    if !out.status.success() {
        return Err(format!(
            "`kubectl {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8(out.stdout).expect("kubectl prints UTF-8"))
}

/// kustomize v5 or later: Components, `labels`, inline `patches`.
fn check_kustomize_version() -> Result<(), String> {
    let v = kubectl(&["version", "--client"])?;
    let line = v
        .lines()
        .find_map(|l| l.strip_prefix("Kustomize Version: v"))
        .ok_or(format!(
            "`kubectl version --client` names no kustomize version:\n{v}\n{KUBECTL_MISSING}"
        ))?;
    let major: u32 = line
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or(format!("unreadable kustomize version {line:?}"))?;
    if major < 5 {
        return Err(format!(
            "kubectl's kustomize is v{line}, these manifests need v5 or later (kubectl 1.27+)"
        ));
    }
    Ok(())
}

fn render(name: &str, dir: &Path, components: BTreeSet<String>) -> Result<Render, String> {
    let out = kubectl(&["kustomize", dir.to_str().unwrap()])
        .map_err(|e| format!("rendering {name}: {e}"))?;
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for v in yaml_documents(&out, name)? {
        let origin = format!(
            "{name}: {} {}",
            v["kind"].as_str().unwrap_or("?"),
            str_at(&v, &["metadata", "name"]).unwrap_or("?")
        );
        match to_obj(v, &origin, None) {
            Ok(obj) => docs.push(Doc { origin, obj }),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    Ok(Render {
        name: name.to_string(),
        components,
        docs,
    })
}

/// The base, the base with each component alone (through a temporary
/// overlay), and the example overlay, rendered once for all tests.
fn renders() -> &'static [Render] {
    static RENDERS: OnceLock<Result<Vec<Render>, String>> = OnceLock::new();
    let result = RENDERS.get_or_init(|| {
        check_kustomize_version()?;
        let base = k8s_dir().join("base");
        let mut out = vec![render("base", &base, BTreeSet::new())?];
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        for c in component_names() {
            let overlay = tmp.path().join(&c);
            std::fs::create_dir(&overlay).unwrap();
            let comp = k8s_dir().join("components").join(&c);
            std::fs::write(
                overlay.join("kustomization.yaml"),
                format!(
                    "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
                     namespace: dbwarden-test\nresources:\n  - {:?}\ncomponents:\n  - {:?}\n",
                    relative(&overlay, &base),
                    relative(&overlay, &comp)
                ),
            )
            .unwrap();
            out.push(render(
                &format!("base + {c}"),
                &overlay,
                BTreeSet::from([c.clone()]),
            )?);
        }
        out.push(render(
            "overlays/example",
            &k8s_dir().join("overlays/example"),
            component_names().into_iter().collect(),
        )?);
        out.push(render(
            "overlays/sharded",
            &k8s_dir().join("overlays/sharded"),
            ["shards", "prometheus-operator"]
                .into_iter()
                .map(String::from)
                .collect(),
        )?);
        Ok(out)
    });
    match result {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

/// `to` relative to the directory `from` (kustomize takes no absolute path).
fn relative(from: &Path, to: &Path) -> String {
    let from = from.canonicalize().unwrap();
    let to = to.canonicalize().unwrap();
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = PathBuf::new();
    for _ in from.components().skip(common) {
        out.push("..");
    }
    for c in to.components().skip(common) {
        out.push(c);
    }
    out.display().to_string()
}

fn render_named(name: &str) -> &'static Render {
    renders()
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no render {name}"))
}

// ---------------------------------------------------------------------------
// (a) parsing

#[test]
fn every_manifest_parses_into_its_typed_object() {
    let docs = source_docs().unwrap_or_else(|e| {
        fail_on(e);
        unreachable!()
    });
    // The layout the README describes.
    let dirs: BTreeSet<String> = docs
        .iter()
        .filter(|(_, d)| matches!(d.obj, Obj::Kustomization | Obj::Component))
        .map(|(f, _)| rel(f.parent().unwrap()))
        .collect();
    let mut expected: BTreeSet<String> = ["base", "overlays/example", "overlays/sharded"]
        .iter()
        .map(|d| format!("deploy/kubernetes/{d}"))
        .collect();
    for c in [
        "remediation",
        "prometheus-operator",
        "grafana-dashboards",
        "kubernetes-observation",
        "eviction",
        "lag-routing",
        "volume-stats",
        "tls",
        "shards",
    ] {
        expected.insert(format!("deploy/kubernetes/components/{c}"));
    }
    assert_eq!(dirs, expected, "the kustomizations under deploy/kubernetes");
    let mut errors = Vec::new();
    for (f, d) in &docs {
        let in_components = rel(f).starts_with("deploy/kubernetes/components/");
        match &d.obj {
            Obj::Component if !in_components => {
                errors.push(format!("{}: a Component outside components/", d.origin))
            }
            Obj::Kustomization if in_components => {
                errors.push(format!("{}: components/ holds Components", d.origin))
            }
            _ => {}
        }
    }
    fail_on(errors);
}

#[test]
fn the_components_hold_the_generated_files() {
    // scripts/generate-deploy.sh writes them there (tests/interface.rs checks
    // they are up to date); no stale copy may stay beside them.
    for (file, component) in GENERATED {
        let generated = k8s_dir().join(component).join(file);
        let text = std::fs::read_to_string(&generated)
            .unwrap_or_else(|e| panic!("{}: {e}", rel(&generated)));
        assert!(
            text.starts_with("# Generated by scripts/generate-deploy.sh"),
            "{} is not the generated file",
            rel(&generated)
        );
        assert!(
            !k8s_dir().join(file).exists(),
            "a stale copy of {file} lies in deploy/kubernetes/"
        );
    }
}

// ---------------------------------------------------------------------------
// (b) invariants of the sources

/// (apiGroup, resource) -> verbs, over all rules.
fn grants(rules: &[PolicyRule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for r in rules {
        for g in r.api_groups.clone().unwrap_or_default() {
            for res in r.resources.clone().unwrap_or_default() {
                out.entry((g.clone(), res))
                    .or_default()
                    .extend(r.verbs.iter().cloned());
            }
        }
    }
    out
}

fn grant_set(entries: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    entries
        .iter()
        .map(|(g, r, verbs)| {
            (
                (g.to_string(), r.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

fn rule_problems(origin: &str, rules: &[PolicyRule], errors: &mut Vec<String>) {
    for r in rules {
        let all = r
            .api_groups
            .iter()
            .chain(r.resources.iter())
            .flatten()
            .chain(r.verbs.iter());
        if all.clone().any(|s| s == "*") {
            errors.push(format!("{origin}: a wildcard in {r:?}"));
        }
        if r.non_resource_urls.is_some() {
            errors.push(format!("{origin}: nonResourceURLs in {r:?}"));
        }
        if r.resources.as_ref().is_none_or(Vec::is_empty) {
            errors.push(format!("{origin}: a rule without resources"));
        }
    }
}

#[test]
fn rbac_is_least_privilege_and_opt_in() {
    let docs = source_docs().unwrap_or_else(|e| {
        fail_on(e);
        unreachable!()
    });
    let mut errors = Vec::new();
    let dir_of = |f: &Path| {
        rel(f.parent().unwrap())
            .trim_start_matches("deploy/kubernetes/")
            .to_string()
    };
    let mut roles: BTreeMap<String, Vec<(String, &[PolicyRule])>> = BTreeMap::new();
    for (f, d) in &docs {
        let dir = dir_of(f);
        let rules: Option<&[PolicyRule]> = match &d.obj {
            Obj::Role(r) => Some(r.rules.as_deref().unwrap_or_default()),
            Obj::ClusterRole(r) => {
                if dir != "components/volume-stats" {
                    errors.push(format!(
                        "{}: a ClusterRole outside components/volume-stats",
                        d.origin
                    ));
                }
                Some(r.rules.as_deref().unwrap_or_default())
            }
            Obj::ClusterRoleBinding(_) if dir != "components/volume-stats" => {
                errors.push(format!(
                    "{}: a ClusterRoleBinding outside components/volume-stats",
                    d.origin
                ));
                None
            }
            Obj::RoleBinding(_) | Obj::ClusterRoleBinding(_) if dir == "base" => {
                errors.push(format!(
                    "{}: the base needs no Kubernetes API access",
                    d.origin
                ));
                None
            }
            _ => None,
        };
        if let Some(rules) = rules {
            rule_problems(&d.origin, rules, &mut errors);
            roles
                .entry(dir)
                .or_default()
                .push((d.origin.clone(), rules));
        }
        // Bindings name a role of their own directory, for dbwarden's account.
        let binding = match &d.obj {
            Obj::RoleBinding(b) => Some((&b.role_ref, b.subjects.as_deref())),
            Obj::ClusterRoleBinding(b) => Some((&b.role_ref, b.subjects.as_deref())),
            _ => None,
        };
        if let Some((role_ref, subjects)) = binding {
            let subjects = subjects.unwrap_or_default();
            if subjects.len() != 1
                || subjects[0].kind != "ServiceAccount"
                || subjects[0].name != APP
            {
                errors.push(format!(
                    "{}: binds {subjects:?}, expected dbwarden's ServiceAccount only",
                    d.origin
                ));
            }
            let found = docs.iter().any(|(g, o)| {
                g.parent() == f.parent()
                    && match &o.obj {
                        Obj::Role(r) => {
                            role_ref.kind == "Role"
                                && r.metadata.name.as_deref() == Some(&role_ref.name)
                        }
                        Obj::ClusterRole(r) => {
                            role_ref.kind == "ClusterRole"
                                && r.metadata.name.as_deref() == Some(&role_ref.name)
                        }
                        _ => false,
                    }
            });
            if !found {
                errors.push(format!(
                    "{}: roleRef {} {} is not defined next to it",
                    d.origin, role_ref.kind, role_ref.name
                ));
            }
        }
    }
    if roles.contains_key("base") {
        errors.push("the base has a Role: it needs no Kubernetes API access".into());
    }
    let expected = [
        (
            "components/kubernetes-observation",
            grant_set(&[
                ("", "pods", &["get", "list", "watch"]),
                ("apps", "statefulsets", &["get", "list", "watch"]),
                ("events.k8s.io", "events", &["create"]),
            ]),
        ),
        (
            "components/eviction",
            grant_set(&[
                ("", "pods/eviction", &["create"]),
                (
                    "coordination.k8s.io",
                    "leases",
                    &["get", "create", "update"],
                ),
            ]),
        ),
        (
            "components/volume-stats",
            grant_set(&[("", "nodes/proxy", &["get"])]),
        ),
        (
            "components/shards",
            grant_set(&[(
                "coordination.k8s.io",
                "leases",
                &["get", "list", "create", "update", "delete"],
            )]),
        ),
        (
            "components/lag-routing",
            grant_set(&[("", "pods/status", &["patch"]), ("", "services", &["get"])]),
        ),
    ];
    for (dir, want) in &expected {
        let got: Vec<PolicyRule> = roles
            .get(*dir)
            .map(|v| v.iter().flat_map(|(_, r)| r.iter().cloned()).collect())
            .unwrap_or_default();
        let got = grants(&got);
        if &got != want {
            errors.push(format!("{dir}: grants {got:?}, expected exactly {want:?}"));
        }
    }
    for dir in roles.keys() {
        if !expected.iter().any(|(d, _)| d == dir) {
            errors.push(format!("{dir}: RBAC outside the five RBAC components"));
        }
    }
    // Eviction, leases and nodes appear nowhere else.
    for (dir, list) in &roles {
        for (origin, rules) in list {
            for ((_, res), _) in grants(rules) {
                let eviction =
                    res == "pods/eviction" || (res == "leases" && dir != "components/shards");
                let routing = res == "pods/status" || res == "services";
                if routing && dir != "components/lag-routing" {
                    errors.push(format!("{origin}: {res} outside components/lag-routing"));
                }
                let nodes = res == "nodes" || res.starts_with("nodes/");
                if eviction && dir != "components/eviction" {
                    errors.push(format!("{origin}: {res} outside components/eviction"));
                }
                if nodes && dir != "components/volume-stats" {
                    errors.push(format!("{origin}: {res} outside components/volume-stats"));
                }
            }
        }
    }
    fail_on(errors);
}

#[test]
fn no_secret_values_are_committed() {
    let docs = source_docs().unwrap_or_else(|e| {
        fail_on(e);
        unreachable!()
    });
    let mut errors = Vec::new();
    for (_, d) in &docs {
        if let Obj::Secret(s) = &d.obj {
            errors.push(format!(
                "{}: a Secret is committed (data: {}, stringData: {}); document `kubectl create secret` in deploy/kubernetes/README.md instead",
                d.origin,
                s.data.as_ref().is_some_and(|m| !m.is_empty()),
                s.string_data.as_ref().is_some_and(|m| !m.is_empty())
            ));
        }
    }
    // secretGenerator is refused by check_kustomization; the renders have no Secret.
    for r in renders() {
        for s in r.secrets() {
            errors.push(format!(
                "{}: renders a Secret {:?}",
                r.name, s.metadata.name
            ));
        }
    }
    // No password in a URL of a committed config.
    let mut tomls = Vec::new();
    collect_ext(&k8s_dir(), "toml", &mut tomls);
    for f in tomls {
        let text = std::fs::read_to_string(&f).unwrap();
        let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", rel(&f)));
        if let Some(pg) = table.get("postgres").and_then(|p| p.as_table()) {
            for (name, t) in pg {
                if let Some(url) = t.get("url").and_then(|u| u.as_str())
                    && (url.contains("password=")
                        || url
                            .split_once("://")
                            .and_then(|(_, rest)| rest.split_once('@'))
                            .is_some_and(|(userinfo, _)| userinfo.contains(':')))
                {
                    errors.push(format!("{}: postgres.{name}.url holds a password", rel(&f)));
                }
            }
        }
    }
    fail_on(errors);
}

fn collect_ext(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_ext(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
}

// ---------------------------------------------------------------------------
// (c) renders, and (b) invariants of what they render

#[test]
fn kubectl_kustomize_renders_the_base_every_component_and_the_example() {
    let r = renders();
    let names: Vec<&str> = r.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names.len(), component_names().len() + 3, "{names:?}");
    for r in r {
        assert!(!r.docs.is_empty(), "{}: renders nothing", r.name);
        // What each render must (not) contain.
        let has_kind = |k: &str| !r.of_kind(k).is_empty();
        let checks = [
            (
                "a ServiceMonitor",
                has_kind("ServiceMonitor"),
                r.has("prometheus-operator"),
            ),
            (
                "a PrometheusRule",
                has_kind("PrometheusRule"),
                r.has("prometheus-operator"),
            ),
            (
                "the dashboards ConfigMaps",
                r.config_maps().iter().any(|c| {
                    c.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with("dbwarden-dashboard-"))
                }),
                r.has("grafana-dashboards"),
            ),
            (
                "a PersistentVolumeClaim",
                !r.persistent_volume_claims().is_empty(),
                r.has("remediation"),
            ),
            (
                "a ClusterRole",
                !r.cluster_roles().is_empty(),
                r.has("volume-stats"),
            ),
        ];
        for (what, present, expected) in checks {
            assert_eq!(
                present, expected,
                "{}: {what} present: {present}, expected {expected}",
                r.name
            );
        }
        // Everything but cluster-scoped objects lands in the overlay's namespace.
        if r.name != "base" {
            for d in &r.docs {
                let ns = match &d.obj {
                    Obj::ClusterRole(_) | Obj::ClusterRoleBinding(_) => continue,
                    Obj::Deployment(x) => x.metadata.namespace.clone(),
                    Obj::Service(x) => x.metadata.namespace.clone(),
                    Obj::ConfigMap(x) => x.metadata.namespace.clone(),
                    _ => continue,
                };
                assert!(ns.is_some(), "{}: no namespace", d.origin);
            }
        }
    }
    // `kubectl apply` (client-side) keeps each object's JSON in its
    // last-applied-configuration annotation, and annotations hold at most
    // 256 KiB: the dashboards ConfigMap grows with every dashboard.
    for r in r {
        for d in &r.docs {
            let size = match &d.obj {
                Obj::ConfigMap(c) => serde_json::to_string(c).unwrap().len(),
                Obj::PrometheusRule(v) => v.to_string().len(),
                _ => continue,
            };
            assert!(
                size < 200 * 1024,
                "{}: {size} bytes of JSON, near the 256 KiB that `kubectl apply` can annotate: \
                 split it, or document `kubectl apply --server-side`",
                d.origin
            );
        }
    }
    let base = render_named("base");
    assert!(
        base.roles().is_empty()
            && base.role_bindings().is_empty()
            && base.cluster_roles().is_empty()
            && base.cluster_role_bindings().is_empty(),
        "the base renders RBAC"
    );
}

fn security_context_problems(c: &Container) -> Vec<String> {
    let mut e = Vec::new();
    let Some(sc) = &c.security_context else {
        return vec![format!("container {}: no securityContext", c.name)];
    };
    let mut want = |ok: bool, what: &str| {
        if !ok {
            e.push(format!("container {}: securityContext {what}", c.name));
        }
    };
    want(sc.run_as_non_root == Some(true), "runAsNonRoot: true");
    want(sc.run_as_user == Some(UID), "runAsUser: 65532");
    want(
        sc.read_only_root_filesystem == Some(true),
        "readOnlyRootFilesystem: true",
    );
    want(
        sc.allow_privilege_escalation == Some(false),
        "allowPrivilegeEscalation: false",
    );
    want(sc.privileged != Some(true), "not privileged");
    let caps = sc.capabilities.as_ref();
    want(
        caps.and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|d| d == "ALL")),
        "capabilities.drop: [ALL]",
    );
    want(
        caps.and_then(|c| c.add.as_ref()).is_none_or(Vec::is_empty),
        "no capabilities.add",
    );
    want(
        sc.seccomp_profile
            .as_ref()
            .is_some_and(|s| s.type_ == "RuntimeDefault"),
        "seccompProfile.type: RuntimeDefault",
    );
    e
}

/// A quantity of bytes ("32Mi", "1Gi", "64M", "1000").
fn bytes(q: &str) -> Option<f64> {
    let units = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ];
    for (suffix, mult) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|n| n * mult);
        }
    }
    q.parse().ok()
}

fn image_tag_problem(image: &str) -> Option<String> {
    if image.contains("@sha256:") {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some(format!("image {image:?} has no tag")),
        Some((_, "latest")) => Some(format!("image {image:?} is tagged latest")),
        Some((_, "")) => Some(format!("image {image:?} has an empty tag")),
        Some(_) => None,
    }
}

fn labels_match(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[test]
fn rendered_pods_are_hardened_probed_and_bounded() {
    let mut errors = Vec::new();
    for r in renders() {
        let mut err = |m: String| errors.push(format!("{}: {m}", r.name));
        let d = r.deployment();
        let spec = &d.spec;
        let pod = r.pod();
        let labels = r.pod_labels();
        if !labels_match(spec.selector.match_labels.as_ref(), &labels) {
            err("the Deployment's selector does not match its pod labels".into());
        }
        // One replica by default; the sharded variant runs three.
        let replicas = if r.name == "overlays/sharded" { 3 } else { 1 };
        if spec.replicas != Some(replicas) {
            err(format!("replicas {:?}: {replicas}", spec.replicas));
        }
        // The pod.
        match &pod.security_context {
            Some(p) => {
                if p.run_as_non_root != Some(true) || p.run_as_user != Some(UID) {
                    err("pod securityContext: runAsNonRoot true, runAsUser 65532".into());
                }
                if p.seccomp_profile.as_ref().map(|s| s.type_.as_str()) != Some("RuntimeDefault") {
                    err("pod securityContext: seccompProfile RuntimeDefault".into());
                }
            }
            None => err("no pod securityContext".into()),
        }
        if pod.host_network == Some(true)
            || pod.host_pid == Some(true)
            || pod.host_ipc == Some(true)
        {
            err("host namespaces".into());
        }
        // Every container.
        let all = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        for c in all {
            for e in security_context_problems(c) {
                err(e);
            }
            match c.image.as_deref() {
                Some(i) => {
                    if let Some(e) = image_tag_problem(i) {
                        err(e);
                    }
                }
                None => err(format!("container {}: no image", c.name)),
            }
            let res = c.resources.as_ref();
            let req = res.and_then(|r| r.requests.as_ref());
            let lim = res.and_then(|r| r.limits.as_ref());
            for k in ["cpu", "memory"] {
                if req.is_none_or(|r| !r.contains_key(k)) {
                    err(format!("container {}: no {k} request", c.name));
                }
            }
            let mem = |m: Option<
                &BTreeMap<_, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >| { m.and_then(|m| m.get("memory")).and_then(|q| bytes(&q.0)) };
            match (mem(req), mem(lim)) {
                (Some(rq), Some(l)) if rq <= l && l <= 256.0 * 1024.0 * 1024.0 => {}
                (rq, l) => err(format!(
                    "container {}: memory request {rq:?} and limit {l:?}: a limit at least the request, and small",
                    c.name
                )),
            }
        }
        // dbwarden's container.
        let c = r.container();
        let ports = c.ports.clone().unwrap_or_default();
        let named: Vec<_> = ports
            .iter()
            .filter(|p| p.name.as_deref() == Some(PORT_NAME))
            .collect();
        if named.len() != 1
            || named[0].container_port != PORT
            || named[0].protocol.as_deref().is_some_and(|p| p != "TCP")
        {
            err(format!(
                "one TCP container port named {PORT_NAME}, {PORT}: {ports:?}"
            ));
        }
        for (what, probe, path) in [
            ("livenessProbe", &c.liveness_probe, "/livez"),
            ("readinessProbe", &c.readiness_probe, "/readyz"),
        ] {
            let get = probe.as_ref().and_then(|p| p.http_get.as_ref());
            // With the tls component dbwarden serves HTTPS only.
            let scheme = if r.has("tls") { "HTTPS" } else { "HTTP" };
            match get {
                Some(g)
                    if g.path.as_deref() == Some(path)
                        && g.port == IntOrString::String(PORT_NAME.into())
                        && g.scheme.as_deref().unwrap_or("HTTP") == scheme => {}
                _ => err(format!(
                    "{what}: httpGet {path} on the port named {PORT_NAME} over {scheme}, got {probe:?}"
                )),
            }
        }
        let args = c.args.clone().unwrap_or_default();
        if args != ["run", "--config", CONFIG_PATH, "--watch-config"] {
            err(format!(
                "args {args:?}, expected run --config {CONFIG_PATH} --watch-config"
            ));
        }
        if c.command.is_some() {
            err("command overrides the image's ENTRYPOINT".into());
        }
        // Mounts name volumes; volumes name objects that exist or are documented.
        let volumes: BTreeMap<&str, &Volume> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        for m in c.volume_mounts.iter().flatten() {
            if !volumes.contains_key(m.name.as_str()) {
                err(format!("volumeMount {} names no volume", m.name));
            }
        }
        for v in volumes.values() {
            if v.host_path.is_some() {
                err(format!("volume {}: hostPath", v.name));
            }
            if let Some(cm) = &v.config_map
                && cm.optional != Some(true)
                && !r
                    .config_maps()
                    .iter()
                    .any(|m| m.metadata.name.as_deref() == Some(&cm.name))
            {
                err(format!(
                    "volume {}: ConfigMap {} is not rendered",
                    v.name, cm.name
                ));
            }
            if let Some(pvc) = &v.persistent_volume_claim
                && !r
                    .persistent_volume_claims()
                    .iter()
                    .any(|p| p.metadata.name.as_deref() == Some(&pvc.claim_name))
            {
                err(format!(
                    "volume {}: PersistentVolumeClaim {} is not rendered",
                    v.name, pvc.claim_name
                ));
            }
        }
        // The state volume: an emptyDir in the base, the claim with remediation.
        let state = volumes.get("state");
        let pvc = state.and_then(|v| v.persistent_volume_claim.as_ref());
        let empty = state.and_then(|v| v.empty_dir.as_ref());
        match (r.has("remediation"), pvc.is_some(), empty.is_some()) {
            (true, true, false) | (false, false, true) => {}
            other => err(format!(
                "the state volume (remediation, claim, emptyDir) = {other:?}"
            )),
        }
        if r.has("remediation")
            && spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) != Some("Recreate")
        {
            err("a ReadWriteOnce claim needs the Recreate strategy".into());
        }
        // The token is mounted exactly when a binding grants it something.
        let sa_name = pod.service_account_name.as_deref().unwrap_or("default");
        let sas = r.service_accounts();
        let Some(sa) = sas
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(sa_name))
        else {
            err(format!("serviceAccountName {sa_name} is not rendered"));
            continue;
        };
        if sa.automount_service_account_token != Some(false) {
            err("the ServiceAccount must not automount its token".into());
        }
        let bound = r
            .role_bindings()
            .iter()
            .flat_map(|b| b.subjects.iter().flatten())
            .chain(
                r.cluster_role_bindings()
                    .iter()
                    .flat_map(|b| b.subjects.iter().flatten()),
            )
            .any(|s| s.kind == "ServiceAccount" && s.name == sa_name);
        let token = pod.automount_service_account_token.unwrap_or(false);
        if bound != token {
            err(format!(
                "the pod mounts the token: {token}, the ServiceAccount is bound: {bound}"
            ));
        }
        for b in r.cluster_role_bindings() {
            for s in b.subjects.iter().flatten() {
                if s.kind == "ServiceAccount" && s.namespace.is_none() {
                    err(format!(
                        "ClusterRoleBinding {:?}: subject without namespace",
                        b.metadata.name
                    ));
                }
            }
        }
    }
    fail_on(errors);
}

#[test]
fn rendered_rbac_appears_only_with_its_component() {
    let mut errors = Vec::new();
    for r in renders() {
        let mut rules: Vec<PolicyRule> = Vec::new();
        for role in r.roles() {
            rules.extend(role.rules.iter().flatten().cloned());
        }
        for role in r.cluster_roles() {
            rules.extend(role.rules.iter().flatten().cloned());
        }
        rule_problems(&r.name, &rules, &mut errors);
        let g = grants(&rules);
        let has = |res: &str| g.keys().any(|(_, x)| x == res);
        let leases = r.has("eviction") || r.has("shards");
        for (res, component, with) in [
            (
                "pods",
                "kubernetes-observation",
                r.has("kubernetes-observation"),
            ),
            ("pods/eviction", "eviction", r.has("eviction")),
            ("leases", "eviction or shards", leases),
            ("nodes/proxy", "volume-stats", r.has("volume-stats")),
            ("pods/status", "lag-routing", r.has("lag-routing")),
            ("services", "lag-routing", r.has("lag-routing")),
        ] {
            if has(res) != with {
                errors.push(format!(
                    "{}: {res} granted: {}, component {component} included: {with}",
                    r.name,
                    has(res),
                ));
            }
        }
        if g.keys()
            .any(|(_, x)| x == "secrets" || x == "pods/exec" || x == "nodes")
        {
            errors.push(format!("{}: grants {g:?}", r.name));
        }
        for b in r.role_bindings() {
            let ok = r
                .roles()
                .iter()
                .any(|x| x.metadata.name.as_deref() == Some(&b.role_ref.name));
            if b.role_ref.kind != "Role" || !ok {
                errors.push(format!(
                    "{}: RoleBinding {:?} refers to {:?}, not a rendered Role",
                    r.name, b.metadata.name, b.role_ref
                ));
            }
        }
        for b in r.cluster_role_bindings() {
            let ok = r
                .cluster_roles()
                .iter()
                .any(|x| x.metadata.name.as_deref() == Some(&b.role_ref.name));
            if b.role_ref.kind != "ClusterRole" || !ok {
                errors.push(format!(
                    "{}: ClusterRoleBinding {:?} refers to {:?}, not a rendered ClusterRole",
                    r.name, b.metadata.name, b.role_ref
                ));
            }
        }
    }
    fail_on(errors);
}

#[test]
fn rendered_services_monitors_policies_and_budgets_select_the_pods() {
    let mut errors = Vec::new();
    for r in renders() {
        let mut err = |m: String| errors.push(format!("{}: {m}", r.name));
        let labels = r.pod_labels();
        // The Service: the named port.
        let services = r.services();
        let [svc] = services.as_slice() else {
            err(format!("{} Services, expected one", services.len()));
            continue;
        };
        let spec = svc.spec.as_ref().unwrap();
        if !labels_match(spec.selector.as_ref(), &labels) {
            err("the Service's selector does not match the pod labels".into());
        }
        let port = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(PORT_NAME));
        match port {
            Some(p)
                if p.port == PORT
                    && p.target_port == Some(IntOrString::String(PORT_NAME.into())) => {}
            other => err(format!(
                "Service port {PORT_NAME}: {PORT}, targetPort {PORT_NAME}; got {other:?}"
            )),
        }
        let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
        // The ServiceMonitor selects it by labels, and scrapes the named port.
        for sm in r.of_kind("ServiceMonitor") {
            let sel: BTreeMap<String, String> =
                serde_json::from_value(sm["spec"]["selector"]["matchLabels"].clone())
                    .unwrap_or_default();
            if !labels_match(Some(&sel), &svc_labels) {
                err("the ServiceMonitor does not select the Service".into());
            }
            for e in sm["spec"]["endpoints"].as_array().into_iter().flatten() {
                if e["port"] != PORT_NAME {
                    err(format!("ServiceMonitor endpoint port {}", e["port"]));
                }
            }
            if let Some(ns) = sm["spec"]["namespaceSelector"].as_object()
                && !ns.is_empty()
            {
                err("the ServiceMonitor looks outside its namespace".into());
            }
        }
        // The release label an overlay adds reaches the prometheus-operator objects.
        if r.name == "overlays/example" {
            for kind in ["ServiceMonitor", "PrometheusRule"] {
                for o in r.of_kind(kind) {
                    if o["metadata"]["labels"]["release"].as_str().is_none() {
                        err(format!("{kind} without the overlay's release label"));
                    }
                }
            }
        }
        // Dashboards: one ConfigMap each, the sidecar's label, JSON content.
        let dashboard_maps: Vec<_> = r
            .config_maps()
            .into_iter()
            .filter(|c| {
                c.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("dbwarden-dashboard-"))
            })
            .collect();
        if r.has("grafana-dashboards") {
            let shipped = std::fs::read_dir(repo().join("dashboards"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                })
                .count();
            if dashboard_maps.len() != shipped {
                err(format!(
                    "{} dashboard ConfigMaps for {shipped} dashboards",
                    dashboard_maps.len()
                ));
            }
        }
        for cm in dashboard_maps {
            if cm.data.as_ref().map_or(0, |d| d.len()) != 1 {
                err("a dashboard ConfigMap holds more than one dashboard".into());
            }
            let l = cm.metadata.labels.clone().unwrap_or_default();
            if l.get("grafana_dashboard").map(String::as_str) != Some("1") {
                err("the dashboards ConfigMap lacks grafana_dashboard: \"1\"".into());
            }
            for (k, v) in cm.data.iter().flatten() {
                if !k.ends_with(".json") || serde_json::from_str::<Value>(v).is_err() {
                    err(format!("dashboard {k} is not a JSON file"));
                }
            }
        }
        // The PodDisruptionBudget never blocks a drain of the default single replica.
        let pdbs = r.pod_disruption_budgets();
        if pdbs.len() != 1 {
            err(format!("{} PodDisruptionBudgets, expected one", pdbs.len()));
        }
        for p in pdbs {
            let s = p.spec.as_ref().unwrap();
            let sel = s.selector.as_ref().and_then(|s| s.match_labels.as_ref());
            if !labels_match(sel, &labels) {
                err("the PodDisruptionBudget does not select the pods".into());
            }
            match (&s.max_unavailable, &s.min_available) {
                (Some(IntOrString::Int(n)), None) if *n >= 1 => {}
                other => err(format!(
                    "PodDisruptionBudget {other:?}: maxUnavailable >= 1, so that one replica can be drained"
                )),
            }
        }
        // NetworkPolicies: select the pods; ingress only to the metrics port,
        // from named peers; egress to PostgreSQL and DNS.
        let policies = r.network_policies();
        let mut egress: BTreeSet<(String, String)> = BTreeSet::new();
        let mut ingress_sources = 0;
        for np in &policies {
            let s = np.spec.as_ref().unwrap();
            if !labels_match(
                s.pod_selector
                    .as_ref()
                    .and_then(|p| p.match_labels.as_ref()),
                &labels,
            ) {
                err(format!(
                    "NetworkPolicy {:?} does not select the pods",
                    np.metadata.name
                ));
            }
            for rule in s.ingress.iter().flatten() {
                let from = rule.from.clone().unwrap_or_default();
                if from.is_empty() {
                    err("an ingress rule open to every source".into());
                }
                ingress_sources += from.len();
                for peer in &from {
                    if peer.ip_block.is_some()
                        || peer.pod_selector.is_none()
                        || peer.namespace_selector.is_none()
                    {
                        err(format!("ingress peer {peer:?}: name a namespace and pods"));
                    }
                }
                let ports = rule.ports.clone().unwrap_or_default();
                let only_metrics = !ports.is_empty()
                    && ports.iter().all(|p| {
                        matches!(&p.port, Some(IntOrString::String(n)) if n == PORT_NAME)
                            || p.port == Some(IntOrString::Int(PORT))
                    });
                if !only_metrics {
                    err(format!("ingress to ports {ports:?}: only {PORT_NAME}"));
                }
            }
            for rule in s.egress.iter().flatten() {
                for p in rule.ports.iter().flatten() {
                    let port = match &p.port {
                        Some(IntOrString::Int(n)) => n.to_string(),
                        Some(IntOrString::String(n)) => n.clone(),
                        None => "any".into(),
                    };
                    egress.insert((port, p.protocol.clone().unwrap_or("TCP".into())));
                }
                if rule.ports.as_ref().is_none_or(Vec::is_empty) {
                    err("an egress rule to every port".into());
                }
            }
        }
        let base_policy = policies
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(APP));
        match base_policy.and_then(|p| p.spec.as_ref()?.policy_types.clone()) {
            Some(t) if t.contains(&"Ingress".into()) && t.contains(&"Egress".into()) => {}
            other => err(format!("NetworkPolicy dbwarden policyTypes {other:?}")),
        }
        if ingress_sources < 2 {
            err("ingress from Prometheus and from Alertmanager".into());
        }
        for want in [("5432", "TCP"), ("53", "UDP"), ("53", "TCP")] {
            if !egress.contains(&(want.0.into(), want.1.into())) {
                err(format!("no egress to {}/{}", want.0, want.1));
            }
        }
        let api = egress.contains(&("443".into(), "TCP".into()));
        let calls_api = r.has("kubernetes-observation") || r.has("shards");
        if api != calls_api {
            err(format!(
                "egress to the API server: {api}, with kubernetes-observation or shards: {calls_api}"
            ));
        }
    }
    fail_on(errors);
}

// ---------------------------------------------------------------------------
// The configuration, as the pod would load it

struct Loaded {
    config: Config,
    /// The effective configuration without [remediation], with the temporary
    /// directory written as <pod>.
    json: String,
}

/// The Secrets the pod references: name -> keys.
fn referenced_secrets(r: &Render) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let pod = r.pod();
    for v in pod.volumes.iter().flatten() {
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let keys = out.entry(name).or_default();
            keys.extend(s.items.iter().flatten().map(|i| i.key.clone()));
        }
        let projected = v.projected.iter().flat_map(|p| p.sources.iter().flatten());
        for s in projected.filter_map(|s| s.secret.as_ref()) {
            let keys = out.entry(s.name.clone()).or_default();
            keys.extend(s.items.iter().flatten().map(|i| i.key.clone()));
        }
    }
    for c in &pod.containers {
        for e in c.env.iter().flatten() {
            if let Some(s) = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                out.entry(s.name.clone()).or_default().insert(s.key.clone());
            }
        }
    }
    out
}

/// The mount that holds `path`: the longest mountPath above it.
fn mount_of<'a>(mounts: &'a [VolumeMount], path: &str) -> Option<&'a VolumeMount> {
    mounts
        .iter()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
}

/// The content the test gives a Secret's key: for a Secret a rendered
/// cert-manager Certificate writes, a real certificate, key and CA made
/// here; for a web configuration, one that uses them and a basic-auth user;
/// otherwise a fake value.
fn secret_file(r: &Render, secret: &str, key: &str) -> String {
    static PKI: OnceLock<(String, String, String)> = OnceLock::new();
    let (ca, cert, key_pem) = PKI.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["dbwarden".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        (ca.pem(), leaf.pem(), leaf_key.serialize_pem())
    });
    let issued = r
        .of_kind("Certificate")
        .iter()
        .any(|c| c["spec"]["secretName"] == secret);
    match (issued, key) {
        (true, "tls.crt") => cert.clone(),
        (true, "tls.key") => key_pem.clone(),
        (true, "ca.crt") => ca.clone(),
        (_, k) if k.ends_with("web-config.yml") => format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\n\
             basic_auth_users:\n  prometheus: \"{}\"\n",
            bcrypt::hash("fake-password", 4).unwrap()
        ),
        _ => format!("fake-{secret}-{key}\n"),
    }
}

fn load_config(r: &Render, root: &Path) -> Result<Loaded, String> {
    let pod = r.pod();
    let c = r.container();
    let volumes: BTreeMap<&str, &Volume> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let mounts: Vec<VolumeMount> = c.volume_mounts.clone().unwrap_or_default();

    // The file named by --config, from its ConfigMap.
    let config_path = Path::new(CONFIG_PATH);
    let cm_mount = mounts
        .iter()
        .find(|m| Path::new(&m.mount_path) == config_path.parent().unwrap())
        .ok_or(format!(
            "nothing is mounted at {}",
            config_path.parent().unwrap().display()
        ))?;
    let cm_name = volumes
        .get(cm_mount.name.as_str())
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone())
        .ok_or(format!("volume {} is not a ConfigMap", cm_mount.name))?;
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let text = r
        .config_maps()
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some(&cm_name))
        .and_then(|m| m.data.as_ref()?.get(key).cloned())
        .ok_or(format!("ConfigMap {cm_name} has no key {key}"))?;

    // The paths the config names lie on the pod's volumes: the root
    // filesystem is read-only and holds none of them.
    let table: toml::Table = text.parse().map_err(|e| format!("{key}: {e}"))?;
    let mut paths: Vec<(String, String)> = Vec::new();
    for (name, t) in table
        .get("postgres")
        .and_then(|p| p.as_table())
        .into_iter()
        .flatten()
    {
        for k in ["password_file", "ssl_root_cert"] {
            if let Some(p) = t.get(k).and_then(|v| v.as_str()) {
                paths.push((format!("postgres.{name}.{k}"), p.to_string()));
            }
        }
    }
    if let Some(rem) = table.get("remediation").and_then(|r| r.as_table()) {
        for k in ["audit_file", "state_dir", "sentinel_file", "api_token_file"] {
            if let Some(p) = rem.get(k).and_then(|v| v.as_str()) {
                paths.push((format!("remediation.{k}"), p.to_string()));
            }
        }
    }
    for (k, p) in &paths {
        let Some(m) = mount_of(&mounts, p) else {
            return Err(format!("{k} = {p:?} is on no volume of the pod"));
        };
        let v = volumes[m.name.as_str()];
        let writable = m.read_only != Some(true)
            && (v.empty_dir.is_some() || v.persistent_volume_claim.is_some());
        let wants_writable = k.ends_with("audit_file") || k.ends_with("state_dir");
        if wants_writable && !writable {
            return Err(format!(
                "{k} = {p:?} is on volume {}, not writable storage",
                m.name
            ));
        }
        let secret_file = k.ends_with("password_file") || k.ends_with("api_token_file");
        if secret_file && v.secret.is_none() {
            return Err(format!("{k} = {p:?} is on volume {}, not a Secret", m.name));
        }
    }

    // Each mount becomes a directory under root, with the files its Secret
    // or ConfigMap provides (fake values for Secrets).
    let mut rewrites: Vec<(String, String)> = Vec::new();
    for m in &mounts {
        if m.name == cm_mount.name {
            continue;
        }
        let dir = root.join(&m.name);
        std::fs::create_dir_all(&dir).unwrap();
        let v = volumes[m.name.as_str()];
        if let Some(p) = &v.projected {
            for source in p.sources.iter().flatten() {
                let Some(s) = &source.secret else {
                    return Err(format!(
                        "volume {}: a projected source other than a Secret",
                        m.name
                    ));
                };
                let items = s.items.as_ref().ok_or(format!(
                    "volume {}: list the Secret's keys as items, so the files are explicit",
                    m.name
                ))?;
                for i in items {
                    std::fs::write(dir.join(&i.path), secret_file(r, &s.name, &i.key)).unwrap();
                }
            }
        } else if let Some(s) = &v.secret {
            let items = s.items.as_ref().ok_or(format!(
                "volume {}: list the Secret's keys as items, so the files are explicit",
                m.name
            ))?;
            for i in items {
                let f = dir.join(&i.path);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(&f, format!("fake-{}-{}\n", m.name, i.key)).unwrap();
            }
        } else if let Some(cm) = &v.config_map {
            let rendered = r
                .config_maps()
                .into_iter()
                .find(|c| c.metadata.name.as_deref() == Some(&cm.name));
            for (k, val) in rendered.and_then(|c| c.data.as_ref()).into_iter().flatten() {
                std::fs::write(dir.join(k), val).unwrap();
            }
        }
        rewrites.push((m.mount_path.clone(), dir.display().to_string()));
    }
    rewrites.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let mut text = text;
    for (from, to) in &rewrites {
        text = text
            .replace(&format!("\"{from}/"), &format!("\"{to}/"))
            .replace(&format!("\"{from}\""), &format!("\"{to}\""));
    }

    // The container's environment; Secret references get fake values.
    let mut env = vec![("HOSTNAME".to_string(), FAKE_HOSTNAME.to_string())];
    if c.env_from.is_some() {
        return Err("envFrom: list each variable".into());
    }
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            // A path on a volume of the pod: where the test put that volume.
            (Some(v), _) => rewrites
                .iter()
                .find(|(from, _)| v.starts_with(&format!("{from}/")))
                .map_or(v.clone(), |(from, to)| v.replacen(from, to, 1)),
            (None, Some(from)) if from.secret_key_ref.is_some() => {
                if e.name.ends_with("__URL") {
                    FAKE_URL.to_string()
                } else {
                    format!("fake-{}", e.name)
                }
            }
            // The downward API: the pod's namespace.
            (None, Some(from))
                if from
                    .field_ref
                    .as_ref()
                    .is_some_and(|f| f.field_path == "metadata.namespace") =>
            {
                "dbwarden-test".to_string()
            }
            (None, Some(_)) => format!("fake-{}", e.name),
            (None, None) => String::new(),
        };
        env.push((e.name.clone(), value));
    }
    let config = Config::from_toml_with_env(&text, env).map_err(|e| e.to_string())?;
    // [remediation] is compared apart: the component adds it; so is
    // [kubernetes], which the shards component adds.
    let mut value = serde_json::to_value(&config).unwrap();
    value.as_object_mut().unwrap().remove("remediation");
    value.as_object_mut().unwrap().remove("kubernetes");
    // So is the web configuration: the tls component adds it.
    value["server"]
        .as_object_mut()
        .unwrap()
        .remove("web_config_file");
    let json = value
        .to_string()
        .replace(&root.display().to_string(), "<pod>");
    Ok(Loaded { config, json })
}

#[test]
fn the_rendered_config_loads_as_the_pod_would_load_it() {
    let mut base_json: Option<String> = None;
    let mut errors = Vec::new();
    for r in renders() {
        let root = tempfile::tempdir().unwrap();
        let loaded = match load_config(r, root.path()) {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("{}: the config does not load: {e}", r.name));
                continue;
            }
        };
        let mut err = |m: String| errors.push(format!("{}: {m}", r.name));
        let cfg = &loaded.config;
        if !cfg.server.listen.ip().is_unspecified() || cfg.server.listen.port() != PORT as u16 {
            err(format!(
                "server.listen {}: 0.0.0.0:{PORT}, on every interface of the pod",
                cfg.server.listen
            ));
        }
        let names: Vec<&str> = cfg
            .postgres
            .iter()
            .map(|t| t.target.name.as_str())
            .collect();
        if names != ["main"] {
            err(format!("targets {names:?}, expected one, main"));
        }
        for t in &cfg.postgres {
            if t.target.password_file.is_none() || t.target.password_env.is_some() {
                err(format!(
                    "postgres.{}: the password from a mounted Secret (password_file), got password_env {:?}, password_file {:?}",
                    t.target.name, t.target.password_env, t.target.password_file
                ));
            }
        }
        match (&cfg.remediation, r.has("remediation")) {
            (None, false) => {}
            (Some(rem), true) => {
                if rem.mode != dbwarden::remediate::Mode::DryRun {
                    err(format!("remediation mode {:?}: ship dry-run", rem.mode));
                }
                if rem.api_token.is_none() {
                    err("remediation without the pause API token".into());
                }
                if rem.sentinel_file.is_none() {
                    err("remediation without the sentinel file".into());
                }
                if rem.instance() != FAKE_HOSTNAME {
                    err(format!("instance {:?}: the pod's name", rem.instance()));
                }
            }
            (rem, with) => err(format!(
                "remediation configured: {}, component included: {with}",
                rem.is_some()
            )),
        }
        // The shards component: [kubernetes.shards] in the pod's namespace,
        // the pod's name as the identity.
        let shards = cfg.kubernetes.as_ref().and_then(|k| k.shards.as_ref());
        match (shards, r.has("shards")) {
            (None, false) => {}
            (Some(s), true) if s.identity == FAKE_HOSTNAME => {}
            (s, with) => err(format!(
                "shards {s:?} with the shards component included: {with}"
            )),
        }
        // The tls component: TLS and basic auth from the web configuration.
        let web = cfg.server.web.as_ref();
        match (web, r.has("tls")) {
            (None, false) => {}
            (Some(w), true) if w.tls.is_some() && !w.users.is_empty() => {}
            (w, with) => err(format!(
                "web configuration {w:?} with the tls component included: {with}"
            )),
        }
        // With TLS, the ServiceMonitor verifies the certificate and authenticates.
        if r.has("tls") {
            for sm in r.of_kind("ServiceMonitor") {
                for e in sm["spec"]["endpoints"].as_array().into_iter().flatten() {
                    if e["scheme"] != "https"
                        || !e["tlsConfig"]["ca"]["secret"]["name"].is_string()
                        || !e["basicAuth"]["password"]["name"].is_string()
                    {
                        err(format!(
                            "ServiceMonitor endpoint without https, its CA or basicAuth: {e}"
                        ));
                    }
                }
            }
        }
        // Apart from [remediation], every render runs the base's config.
        match &base_json {
            None => base_json = Some(loaded.json),
            Some(b) if *b == loaded.json => {}
            Some(b) => err(format!(
                "its [server], [log] or [postgres] differ from the base's:\n{}\nvs the base's\n{b}",
                loaded.json
            )),
        }
    }
    fail_on(errors);
}

#[test]
fn every_referenced_secret_is_documented() {
    let readme = std::fs::read_to_string(k8s_dir().join("README.md")).unwrap();
    // Each `kubectl create secret generic NAME` command, continuation lines joined.
    let mut commands: BTreeMap<String, String> = BTreeMap::new();
    let lines: Vec<&str> = readme.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if let Some((_, rest)) = l.split_once("create secret generic ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            let mut cmd = l.to_string();
            let mut j = i;
            while lines[j].trim_end().ends_with('\\') && j + 1 < lines.len() {
                j += 1;
                cmd.push('\n');
                cmd.push_str(lines[j]);
            }
            commands.insert(name, cmd);
        }
    }
    let mut errors = Vec::new();
    for r in renders() {
        // Secrets a rendered cert-manager Certificate writes.
        let issued: BTreeSet<&str> = r
            .of_kind("Certificate")
            .iter()
            .filter_map(|c| c["spec"]["secretName"].as_str())
            .collect();
        for (name, keys) in referenced_secrets(r) {
            if issued.contains(name.as_str()) {
                continue;
            }
            let Some(cmd) = commands.get(&name) else {
                errors.push(format!(
                    "{}: Secret {name} is referenced but deploy/kubernetes/README.md has no `kubectl create secret generic {name}`",
                    r.name
                ));
                continue;
            };
            for k in keys {
                if !cmd.contains(&format!("--from-literal={k}="))
                    && !cmd.contains(&format!("--from-file={k}="))
                {
                    errors.push(format!(
                        "{}: the README's command for Secret {name} does not create key {k}",
                        r.name
                    ));
                }
            }
        }
    }
    fail_on(errors);
}

// ---------------------------------------------------------------------------
// (d) the Dockerfile

/// Instructions (keyword, arguments), continuation lines joined, comments out.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(stripped) = t.strip_suffix('\\') {
            current.push_str(stripped);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (k, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((k.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn the_dockerfile_is_multi_stage_locked_and_non_root() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).expect("a top-level Dockerfile");
    let ins = dockerfile_instructions(&text);
    let stages: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {} FROM", stages.len());
    let last = *stages.last().unwrap();
    let (build, runtime) = (&ins[..last], &ins[last..]);

    // The build: named, from a Rust at least the crate's rust-version, locked.
    let build_from = &build[stages[stages.len() - 2]].1;
    let (build_image, stage_name) = build_from
        .split_once(" AS ")
        .or_else(|| build_from.split_once(" as "))
        .expect("the build stage is named (FROM ... AS build)");
    let cargo: toml::Table = std::fs::read_to_string(repo().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let msrv = cargo["package"]["rust-version"].as_str().unwrap();
    let rust_tag = build_image
        .strip_prefix("rust:")
        .expect("the build stage is FROM rust:<version>");
    let version =
        |v: &str| -> Vec<u32> { v.split(['.', '-']).map_while(|p| p.parse().ok()).collect() };
    assert!(
        version(rust_tag) >= version(msrv) && !version(rust_tag).is_empty(),
        "rust:{rust_tag} is older than rust-version {msrv}"
    );
    let runs: Vec<&String> = build
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, a)| a)
        .collect();
    assert!(
        runs.iter().any(|r| r.contains("cargo build")
            && r.contains("--release")
            && r.contains("--locked")
            && r.contains("--bin dbwarden")),
        "cargo build --release --locked --bin dbwarden: {runs:?}"
    );
    // What it copies exists and is not ignored.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).expect("a .dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(
        ignored.iter().any(|l| l.trim_end_matches('/') == "target"),
        ".dockerignore keeps target/ out"
    );
    for (k, a) in build {
        if k != "COPY" || a.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = a
            .split_whitespace()
            .filter(|p| !p.starts_with("--"))
            .collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: no such path");
            let src = src.trim_end_matches('/');
            assert!(
                !ignored.iter().any(|l| l.trim_end_matches('/') == src),
                "COPY {src}, which .dockerignore excludes"
            );
        }
    }

    // The runtime: a pinned image with a glibc no older than the build's,
    // only the binary, a non-root numeric USER (what runAsNonRoot can verify).
    let runtime_image = runtime[0].1.split_whitespace().next().unwrap();
    assert!(
        image_tag_problem(runtime_image).is_none(),
        "{runtime_image}: pin a tag"
    );
    if build_image.contains("bookworm") {
        assert!(
            runtime_image.contains("debian12") || runtime_image.contains("bookworm"),
            "built on bookworm, run on {runtime_image}: the glibc must match"
        );
    }
    for (k, a) in runtime {
        if k == "COPY" || k == "ADD" {
            assert!(
                k == "COPY" && a.starts_with(&format!("--from={stage_name} ")),
                "the runtime stage copies only from the build: {k} {a}"
            );
            let src = a.split_whitespace().nth(1).unwrap();
            assert!(src.ends_with("/dbwarden"), "copies only the binary: {a}");
        }
        assert!(k != "RUN", "the runtime stage runs nothing: RUN {a}");
    }
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert_eq!(
        uid.parse::<i64>().ok(),
        Some(UID),
        "USER {user}: numeric 65532, as the manifests' runAsUser"
    );
    let last_user = runtime.iter().rposition(|(k, _)| k == "USER").unwrap();
    assert!(
        !runtime[last_user..]
            .iter()
            .any(|(k, _)| k == "COPY" || k == "RUN"),
        "USER comes last"
    );
    assert!(
        runtime
            .iter()
            .any(|(k, a)| k == "EXPOSE"
                && a.split_whitespace().any(|p| p == "9641" || p == "9641/tcp")),
        "EXPOSE 9641"
    );
    let entrypoint = runtime
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, a)| a.clone())
        .expect("an ENTRYPOINT");
    assert!(
        entrypoint.contains("dbwarden"),
        "ENTRYPOINT {entrypoint}: the dbwarden binary"
    );
}
