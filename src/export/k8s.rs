//! `windlass export k8s`: Kubernetes manifests that run the project's apps on a cluster.
//!
//! One Deployment per app: `replicas` is the app's `instances` and each pod runs one instance
//! under windlass (`windlass up --instances 1 APP`, so restarts, logs and metrics work as on a
//! server); probes come from `health` (startup, readiness, liveness), the grace period from
//! `stop.timeout` plus a `preStop` pause that lets the endpoints controller take the pod out of
//! the Service before windlass starts draining. A Service and a PodDisruptionBudget per app
//! with a port, a ConfigMap of the app's `env`, a Secret *reference* for its `env_file` (the
//! values stay out of every generated file: the Secret is made with `kubectl create secret
//! --from-env-file`), and a Prometheus Operator ServiceMonitor for the admin listener's
//! `/metrics` when that listens beyond loopback. The image is the one `windlass pack --format
//! oci` builds, referred to by tag.
//!
//! Manifests are built as JSON values and written as YAML by [`to_yaml`] (block style, every
//! string double-quoted, which YAML reads as JSON does).

use serde_json::{Map, Value, json};

use super::{Generated, inline_env, project_name};
use crate::config::{AppConfig, Config};

/// What the manifests need beyond the config.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: Option<String>,
    /// The image reference; default `<project>:latest`.
    pub image: Option<String>,
}

/// The seconds of the `preStop` pause: endpoints controllers and kube-proxy take a few
/// seconds to stop sending new connections to a terminating pod.
pub const PRESTOP_SECS: u64 = 5;
/// The pod's user: the same fixed uid as the Docker export.
const UID: u64 = 10001;

fn secs(d: std::time::Duration) -> u64 {
    (d.as_secs_f64().ceil() as u64).max(1)
}

/// `name` of app `app` in project `project`: `project-app`, as a DNS label.
fn object_name(project: &str, app: &str) -> String {
    super::dns_label(&format!("{project}-{app}")).unwrap_or_else(|| project.to_owned())
}

fn labels(project: &str, app: &str) -> Value {
    json!({
        "app.kubernetes.io/name": project,
        "app.kubernetes.io/component": super::dns_label(app).unwrap_or_else(|| "app".into()),
        "app.kubernetes.io/managed-by": "windlass",
    })
}

fn selector(project: &str, app: &str) -> Value {
    json!({
        "app.kubernetes.io/name": project,
        "app.kubernetes.io/component": super::dns_label(app).unwrap_or_else(|| "app".into()),
    })
}

fn metadata(name: &str, labels: Value, ns: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    if let Some(ns) = ns {
        m.insert("namespace".into(), json!(ns));
    }
    m.insert("labels".into(), labels);
    Value::Object(m)
}

/// The admin port Prometheus can scrape: the admin listener's, when it listens on more than
/// loopback (a pod's loopback is out of Prometheus's reach).
pub fn scrapable_admin_port(config: &Config) -> Option<u16> {
    config
        .admin
        .listen
        .filter(|a| !a.ip().is_loopback() && a.port() != 0)
        .map(|a| a.port())
}

/// The Secret an app's `env_file` is expected in.
pub fn env_secret_name(config: &Config, app: &AppConfig) -> String {
    format!("{}-env", object_name(&project_name(config), &app.name))
}

/// The Secret the ServiceMonitor reads the admin token from.
pub fn admin_secret_name(config: &Config) -> String {
    format!("{}-admin", project_name(config))
}

fn probe(app: &AppConfig, failure_threshold: u64, period: u64) -> Option<Value> {
    app.port?;
    let mut p = match &app.health.path {
        Some(path) => json!({ "httpGet": { "path": path, "port": "http" } }),
        None => json!({ "tcpSocket": { "port": "http" } }),
    };
    let o = p.as_object_mut().expect("a probe is an object");
    o.insert("periodSeconds".into(), json!(period));
    o.insert("timeoutSeconds".into(), json!(secs(app.health.timeout)));
    o.insert("failureThreshold".into(), json!(failure_threshold));
    Some(p)
}

fn deployment(config: &Config, app: &AppConfig, opts: &Options, image: &str) -> Value {
    let project = project_name(config);
    let name = object_name(&project, &app.name);
    let ns = opts.namespace.as_deref();
    let interval = secs(app.health.interval);
    let mut container = Map::new();
    container.insert(
        "name".into(),
        json!(super::dns_label(&app.name).unwrap_or_else(|| "app".into())),
    );
    container.insert("image".into(), json!(image));
    container.insert("args".into(), json!(["up", "--instances", "1", app.name]));
    let mut ports = Vec::new();
    if let Some(p) = app.port {
        ports.push(json!({ "name": "http", "containerPort": p, "protocol": "TCP" }));
    }
    if let Some(p) = scrapable_admin_port(config) {
        ports.push(json!({ "name": "admin", "containerPort": p, "protocol": "TCP" }));
    }
    if !ports.is_empty() {
        container.insert("ports".into(), Value::Array(ports));
    }
    let mut env_from = Vec::new();
    if !inline_env(app).is_empty() {
        env_from.push(json!({ "configMapRef": { "name": format!("{name}-config") } }));
    }
    if app.env_file.is_some() {
        env_from.push(json!({ "secretRef": { "name": env_secret_name(config, app) } }));
    }
    if !env_from.is_empty() {
        container.insert("envFrom".into(), Value::Array(env_from));
    }
    let start_failures = secs(app.health.start_timeout).div_ceil(interval).max(1);
    if let Some(p) = probe(app, start_failures, interval) {
        container.insert("startupProbe".into(), p);
    }
    if let Some(p) = probe(app, 1, interval) {
        container.insert("readinessProbe".into(), p);
    }
    if let Some(p) = probe(app, 3, interval.max(10)) {
        container.insert("livenessProbe".into(), p);
    }
    container.insert(
        "lifecycle".into(),
        json!({ "preStop": { "sleep": { "seconds": PRESTOP_SECS } } }),
    );
    let memory = if app.lisp.is_some() { "256Mi" } else { "128Mi" };
    container.insert(
        "resources".into(),
        json!({ "requests": { "cpu": "100m", "memory": memory } }),
    );
    container.insert(
        "securityContext".into(),
        json!({
            "allowPrivilegeEscalation": false,
            "runAsNonRoot": true,
            "runAsUser": UID,
        }),
    );
    // windlass's own stop (the app's timeout) after the pause, and a margin for its exit.
    let grace = PRESTOP_SECS + secs(app.stop.timeout) + 10;
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(&name, labels(&project, &app.name), ns),
        "spec": {
            "replicas": app.instances,
            "selector": { "matchLabels": selector(&project, &app.name) },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 },
            },
            "template": {
                "metadata": { "labels": labels(&project, &app.name) },
                "spec": {
                    "terminationGracePeriodSeconds": grace,
                    "containers": [Value::Object(container)],
                },
            },
        },
    })
}

fn service(config: &Config, app: &AppConfig, port: u16, ns: Option<&str>) -> Value {
    let project = project_name(config);
    let mut ports =
        vec![json!({ "name": "http", "port": port, "targetPort": "http", "protocol": "TCP" })];
    if let Some(p) = scrapable_admin_port(config) {
        ports.push(json!({ "name": "admin", "port": p, "targetPort": "admin", "protocol": "TCP" }));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&object_name(&project, &app.name), labels(&project, &app.name), ns),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(&project, &app.name),
            "ports": ports,
        },
    })
}

fn pdb(config: &Config, app: &AppConfig, ns: Option<&str>) -> Value {
    let project = project_name(config);
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(&object_name(&project, &app.name), labels(&project, &app.name), ns),
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": selector(&project, &app.name) },
        },
    })
}

fn config_map(config: &Config, app: &AppConfig, ns: Option<&str>) -> Option<Value> {
    let env = inline_env(app);
    if env.is_empty() {
        return None;
    }
    let project = project_name(config);
    let data: Map<String, Value> = env.into_iter().map(|(k, v)| (k, json!(v))).collect();
    Some(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(&format!("{}-config", object_name(&project, &app.name)), labels(&project, &app.name), ns),
        "data": data,
    }))
}

fn service_monitor(config: &Config, app: &AppConfig, ns: Option<&str>) -> Value {
    let project = project_name(config);
    let mut endpoint = json!({ "port": "admin", "path": "/metrics", "interval": "30s" });
    if config.admin.token.is_some() {
        endpoint["bearerTokenSecret"] =
            json!({ "name": admin_secret_name(config), "key": "token" });
    }
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(&object_name(&project, &app.name), labels(&project, &app.name), ns),
        "spec": {
            "selector": { "matchLabels": selector(&project, &app.name) },
            "endpoints": [endpoint],
        },
    })
}

/// Every manifest, one file per kind (a document per app in each).
pub fn generate(config: &Config, opts: &Options) -> Vec<Generated> {
    let ns = opts.namespace.as_deref();
    let image = opts
        .image
        .clone()
        .unwrap_or_else(|| format!("{}:latest", project_name(config)));
    let mut deployments = Vec::new();
    let mut services = Vec::new();
    let mut pdbs = Vec::new();
    let mut maps = Vec::new();
    let mut monitors = Vec::new();
    for app in &config.apps {
        deployments.push(deployment(config, app, opts, &image));
        if let Some(c) = config_map(config, app, ns) {
            maps.push(c);
        }
        if let Some(port) = app.port {
            services.push(service(config, app, port, ns));
            pdbs.push(pdb(config, app, ns));
            if scrapable_admin_port(config).is_some() {
                monitors.push(service_monitor(config, app, ns));
            }
        }
    }
    let mut files = Vec::new();
    for (name, docs) in [
        ("configmap.yaml", maps),
        ("deployment.yaml", deployments),
        ("service.yaml", services),
        ("poddisruptionbudget.yaml", pdbs),
        ("servicemonitor.yaml", monitors),
    ] {
        if docs.is_empty() {
            continue;
        }
        let mut text = format!(
            "# Generated by `windlass export k8s` from {}.\n",
            config
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                text.push_str("---\n");
            }
            text.push_str(&to_yaml(d));
        }
        files.push(Generated {
            name: name.into(),
            contents: text,
        });
    }
    files
}

/// `value` as a YAML document in block style. Strings are written double-quoted with JSON's
/// escapes (valid YAML), keys bare when they are plain words.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    emit(value, 0, &mut out);
    out
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some("null".into()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(Value::String(s.clone()).to_string()),
        Value::Array(a) if a.is_empty() => Some("[]".into()),
        Value::Object(o) if o.is_empty() => Some("{}".into()),
        _ => None,
    }
}

fn key(k: &str) -> String {
    let plain = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'))
        && k.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if plain {
        k.to_owned()
    } else {
        Value::String(k.to_owned()).to_string()
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                match scalar(v) {
                    Some(s) => out.push_str(&format!("{pad}{}: {s}\n", key(k))),
                    None => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        let child = if v.is_array() { indent } else { indent + 2 };
                        emit(v, child, out);
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for item in a {
                match scalar(item) {
                    Some(s) => out.push_str(&format!("{pad}- {s}\n")),
                    None => {
                        // The first line of the item goes after the dash.
                        let mut inner = String::new();
                        emit(item, indent + 2, &mut inner);
                        let trimmed = inner.trim_start_matches(' ');
                        out.push_str(&format!("{pad}- {trimmed}"));
                    }
                }
            }
        }
        other => {
            let s = scalar(other).unwrap_or_default();
            out.push_str(&format!("{pad}{s}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_nests_maps_and_lists() {
        let v = json!({"a": 1, "b": {"c": "x y", "d": [1, {"e": true, "f": []}]}, "g": [[1]]});
        assert_eq!(
            to_yaml(&v),
            "a: 1\nb:\n  c: \"x y\"\n  d:\n  - 1\n  - e: true\n    f: []\ng:\n- - 1\n"
        );
    }
}
