//! The Kubernetes rendering: one multi-document `kubernetes.yaml` for `kubectl apply -f`.
//!
//! The nodes are a StatefulSet: a node's id is its pod's name (`plexichat-0`, …), stable
//! across restarts, so that membership lists the same N nodes rather than a new one per
//! pod ever scheduled. Readiness is `/ready` (the database is reachable), liveness
//! `/health`; termination waits for the server's drain. The profile's server section is a
//! ConfigMap, the database URL a Secret. PostgreSQL and NATS are bundled as StatefulSets
//! of their official images unless external URLs are given.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{Deployment, DATABASE, NATS_PORT, POSTGRES_PORT, PROFILE_PATH};

pub(crate) const FILE: &str = "kubernetes.yaml";
const APP: &str = "plexichat";
const POSTGRES: &str = "plexichat-postgres";
const NATS: &str = "plexichat-nats";
const CONFIG_MAP: &str = "plexichat-profile";
const DATABASE_SECRET: &str = "plexichat-database";
const DNS_PORT: u16 = 53;

fn labels(component: &str) -> Value {
    json!({ "app.kubernetes.io/name": APP, "app.kubernetes.io/component": component })
}

fn metadata(name: &str, component: &str) -> Value {
    json!({ "name": name, "labels": labels(component) })
}

/// The objects of `deployment`, one YAML document each; `password` is the bundled
/// PostgreSQL's (unused with an external database).
pub(crate) fn render(deployment: &Deployment, password: &str) -> Result<String> {
    let mut objects = Vec::new();
    let database_url = deployment
        .external_database_url
        .clone()
        .unwrap_or_else(|| format!("postgres://{DATABASE}:{password}@{POSTGRES}:{POSTGRES_PORT}/{DATABASE}"));
    let nats_url = deployment
        .external_nats_url
        .clone()
        .unwrap_or_else(|| format!("nats://{NATS}:{NATS_PORT}"));
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(CONFIG_MAP, "server"),
        "data": { "profile.yaml": deployment.server_profile },
    }));
    let mut secret = json!({ "url": database_url });
    if deployment.external_database_url.is_none() {
        secret["password"] = password.into();
    }
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(DATABASE_SECRET, "server"),
        "type": "Opaque",
        "stringData": secret,
    }));
    objects.extend(server(deployment, &nats_url));
    if deployment.external_database_url.is_none() {
        objects.extend(postgres(deployment));
    }
    if deployment.external_nats_url.is_none() {
        objects.extend(nats(deployment));
    }
    let mut text =
        format!(
        "# PlexiChat: {} node(s){}{}, rendered by `cargo xtask deploy render`.\n# Apply it: kubectl apply -f {FILE}\n",
        deployment.nodes,
        if deployment.external_database_url.is_some() { ", an external PostgreSQL" } else { ", PostgreSQL" },
        if deployment.external_nats_url.is_some() { ", an external NATS" } else { ", NATS" },
    );
    for object in &objects {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(object).context("writing a Kubernetes object")?);
    }
    Ok(text)
}

fn server(deployment: &Deployment, nats_url: &str) -> Vec<Value> {
    let port = deployment.port;
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": { "path": path, "port": "http" },
            "periodSeconds": period,
            "timeoutSeconds": 4,
            "failureThreshold": failures,
        })
    };
    let statefulset = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(APP, "server"),
        "spec": {
            "serviceName": format!("{APP}-nodes"),
            "replicas": deployment.nodes,
            // Nodes join on their own: none waits for another to be ready.
            "podManagementPolicy": "Parallel",
            "selector": { "matchLabels": labels("server") },
            "template": {
                "metadata": { "labels": labels("server") },
                "spec": {
                    "terminationGracePeriodSeconds": deployment.termination_grace.as_secs(),
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                    },
                    "containers": [{
                        "name": "plexichat",
                        "image": deployment.server_image,
                        "ports": [{ "name": "http", "containerPort": port }],
                        "env": [
                            { "name": "PLEXICHAT_CONFIG", "value": PROFILE_PATH },
                            { "name": "PLEXICHAT_LISTEN", "value": format!("0.0.0.0:{port}") },
                            { "name": "PLEXICHAT_NODE_ID", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            { "name": "PLEXICHAT_DATABASE_URL", "valueFrom": { "secretKeyRef": { "name": DATABASE_SECRET, "key": "url" } } },
                            { "name": "PLEXICHAT_NATS_URL", "value": nats_url },
                        ],
                        "readinessProbe": probe("/ready", 2, 2),
                        "livenessProbe": probe("/health", 10, 3),
                        "startupProbe": probe("/health", 2, 30),
                        "resources": {
                            "requests": { "cpu": "250m", "memory": "64Mi" },
                            "limits": { "cpu": "1", "memory": "256Mi" },
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": { "drop": ["ALL"] },
                        },
                        "volumeMounts": [
                            { "name": "profile", "mountPath": PROFILE_PATH, "subPath": "profile.yaml", "readOnly": true },
                            { "name": "data", "mountPath": crate::docker::DATA },
                        ],
                    }],
                    "volumes": [
                        { "name": "profile", "configMap": { "name": CONFIG_MAP } },
                        // PostgreSQL holds the data; /data only takes what the server writes beside it.
                        { "name": "data", "emptyDir": {} },
                    ],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(APP, "server"),
        "spec": {
            "selector": labels("server"),
            "ports": [{ "name": "http", "port": 80, "targetPort": "http" }],
        },
    });
    // The StatefulSet's governing service: each pod gets a stable DNS name.
    let nodes = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&format!("{APP}-nodes"), "server"),
        "spec": {
            "clusterIP": "None",
            "selector": labels("server"),
            "ports": [{ "name": "http", "port": port, "targetPort": "http" }],
        },
    });
    let budget = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(APP, "server"),
        "spec": { "maxUnavailable": 1, "selector": { "matchLabels": labels("server") } },
    });
    vec![statefulset, service, nodes, budget, network_policy(deployment)]
}

/// The nodes take HTTP from anyone and reach only DNS, PostgreSQL and NATS (the bundled
/// pods, or any address on an external URL's port).
fn network_policy(deployment: &Deployment) -> Value {
    let to = |external: Option<&str>, component: &str, default_port: u16| {
        let port = external.and_then(url_port).unwrap_or(default_port);
        match external {
            Some(_) => json!({ "ports": [{ "protocol": "TCP", "port": port }] }),
            None => json!({
                "to": [{ "podSelector": { "matchLabels": labels(component) } }],
                "ports": [{ "protocol": "TCP", "port": port }],
            }),
        }
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(APP, "server"),
        "spec": {
            "podSelector": { "matchLabels": labels("server") },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{ "ports": [{ "protocol": "TCP", "port": deployment.port }] }],
            "egress": [
                { "ports": [{ "protocol": "UDP", "port": DNS_PORT }, { "protocol": "TCP", "port": DNS_PORT }] },
                to(deployment.external_database_url.as_deref(), "postgres", POSTGRES_PORT),
                to(deployment.external_nats_url.as_deref(), "nats", NATS_PORT),
            ],
        },
    })
}

/// The port of `scheme://[user@]host:port/…`, when it names one.
fn url_port(url: &str) -> Option<u16> {
    url::Url::parse(url).ok()?.port()
}

fn postgres(deployment: &Deployment) -> Vec<Value> {
    let container = json!({
        "name": "postgres",
        "image": deployment.postgres_image,
        "ports": [{ "name": "postgres", "containerPort": POSTGRES_PORT }],
        "env": [
            { "name": "POSTGRES_USER", "value": DATABASE },
            { "name": "POSTGRES_DB", "value": DATABASE },
            { "name": "POSTGRES_PASSWORD", "valueFrom": { "secretKeyRef": { "name": DATABASE_SECRET, "key": "password" } } },
            // A volume's root holds lost+found: the cluster goes below it.
            { "name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata" },
        ],
        "readinessProbe": {
            "exec": { "command": ["pg_isready", "--host", "127.0.0.1", "--username", DATABASE, "--dbname", DATABASE] },
            "periodSeconds": 2,
        },
        "resources": {
            "requests": { "cpu": "250m", "memory": "256Mi" },
            "limits": { "cpu": "1", "memory": "512Mi" },
        },
        "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/postgresql/data" }],
    });
    let mut statefulset = dependency(POSTGRES, "postgres", container);
    statefulset["spec"]["volumeClaimTemplates"] = json!([{
        "metadata": { "name": "data" },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "1Gi" } },
        },
    }]);
    vec![statefulset, service(POSTGRES, "postgres", POSTGRES_PORT)]
}

fn nats(deployment: &Deployment) -> Vec<Value> {
    let container = json!({
        "name": "nats",
        "image": deployment.nats_image,
        "args": ["--port", NATS_PORT.to_string()],
        "ports": [{ "name": "nats", "containerPort": NATS_PORT }],
        "readinessProbe": { "tcpSocket": { "port": "nats" }, "periodSeconds": 2 },
        "resources": {
            "requests": { "cpu": "100m", "memory": "32Mi" },
            "limits": { "cpu": "500m", "memory": "128Mi" },
        },
    });
    vec![dependency(NATS, "nats", container), service(NATS, "nats", NATS_PORT)]
}

/// A bundled dependency: a StatefulSet of one pod running `container`.
fn dependency(name: &str, component: &str, container: Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name, component),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": { "matchLabels": labels(component) },
            "template": {
                "metadata": { "labels": labels(component) },
                "spec": { "containers": [container] },
            },
        },
    })
}

fn service(name: &str, component: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, component),
        "spec": {
            "selector": labels(component),
            "ports": [{ "name": component, "port": port, "targetPort": component }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::compose::tests::deployment;

    fn objects(text: &str) -> Vec<serde_yaml::Value> {
        text.split("\n---\n")
            .skip(1)
            .map(|document| serde_yaml::from_str(document).unwrap())
            .collect()
    }

    fn kinds(objects: &[serde_yaml::Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn bundled_dependencies_are_statefulsets_beside_the_nodes() {
        let all = objects(&render(&deployment(3), "secret").unwrap());
        assert_eq!(
            kinds(&all),
            [
                "ConfigMap/plexichat-profile",
                "Secret/plexichat-database",
                "StatefulSet/plexichat",
                "Service/plexichat",
                "Service/plexichat-nodes",
                "PodDisruptionBudget/plexichat",
                "NetworkPolicy/plexichat",
                "StatefulSet/plexichat-postgres",
                "Service/plexichat-postgres",
                "StatefulSet/plexichat-nats",
                "Service/plexichat-nats",
            ]
        );
        let nodes = &all[2]["spec"];
        assert_eq!(nodes["replicas"], 3);
        assert_eq!(nodes["template"]["spec"]["terminationGracePeriodSeconds"], 40);
        let container = &nodes["template"]["spec"]["containers"][0];
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(
            all[1]["stringData"]["url"],
            "postgres://plexichat:secret@plexichat-postgres:5432/plexichat"
        );
    }

    #[test]
    fn external_urls_replace_the_bundled_services_and_open_their_ports() {
        let mut external = deployment(2);
        external.external_database_url = Some("postgres://chat:pw@db.example.com:6432/chat".into());
        external.external_nats_url = Some("nats://bus.example.com:4333".into());
        let all = objects(&render(&external, "unused").unwrap());
        assert!(
            !kinds(&all).iter().any(|k| k.contains("postgres") || k.contains("nats")),
            "{:?}",
            kinds(&all)
        );
        assert_eq!(
            all[1]["stringData"]["url"],
            "postgres://chat:pw@db.example.com:6432/chat"
        );
        assert!(all[1]["stringData"]["password"].is_null());
        let egress = &all[6]["spec"]["egress"];
        assert_eq!(egress[1]["ports"][0]["port"], 6432);
        assert_eq!(egress[2]["ports"][0]["port"], 4333);
        assert!(egress[1]["to"].is_null(), "any address may hold a managed database");
    }

    #[test]
    fn a_urls_port_is_found_after_credentials_and_before_the_path() {
        assert_eq!(url_port("postgres://u:p@h:6432/db?x=1"), Some(6432));
        assert_eq!(url_port("nats://h:4333"), Some(4333));
        assert_eq!(url_port("postgres://u:p@h/db"), None);
        assert_eq!(url_port("postgres://u:p@[::1]:5433/db"), Some(5433));
    }
}
