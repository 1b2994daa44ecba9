//! The model servers of InferencePools, read through the Kubernetes API,
//! for model discovery (`--discover-inference-pools`).
//!
//! An InferencePool (`inference.networking.k8s.io/v1`, the Gateway API
//! Inference Extension's) selects its model server pods by label and names
//! the port they serve on:
//!
//! ```yaml
//! apiVersion: inference.networking.k8s.io/v1
//! kind: InferencePool
//! metadata: { name: qwen-pool }
//! spec:
//!   selector: { matchLabels: { app: vllm-qwen } }
//!   targetPorts: [{ number: 8000 }]
//!   endpointPickerRef: { name: qwen-epp, port: { number: 9002 } }
//! ```
//!
//! [`watch_inference_pools`] lists the InferencePools every period, then
//! each pool's pods by its selector, and publishes every pool with one
//! endpoint `http://POD_IP:PORT` per running pod and target port, whenever
//! that set changes. A pod counts once it has an IP and runs (phase
//! `Running`), and stops counting once it is being deleted; readiness is
//! not asked for, since a server that is not ready (busy, or draining)
//! still lists what it serves, and one that does not answer simply adds
//! nothing. A pool is named by its name when one namespace is read (the
//! `NAMESPACE` environment variable, as for ConfigMaps), `namespace/name`
//! when all are.
//!
//! A round that fails (the API server unreachable, a permission missing)
//! is logged and publishes nothing: the last endpoints stay until a round
//! succeeds. An InferencePool without `matchLabels` or target ports is
//! skipped with a log line. The client needs `list` on `inferencepools`
//! (group `inference.networking.k8s.io`) and on `pods`.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
};
use tokio::{sync::watch, task::JoinHandle};

use crate::kubernetes::Scope;

/// The API group of the InferencePools read.
pub const GROUP: &str = "inference.networking.k8s.io";
/// The version read.
pub const VERSION: &str = "v1";

/// A pool and the base URLs of its model servers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolEndpoints {
    /// The InferencePool's name (`namespace/name` when every namespace is
    /// read).
    pub name: String,
    /// `http://POD_IP:PORT`, one per running pod and target port, sorted.
    pub endpoints: Vec<String>,
}

/// What an InferencePool says about where its servers are.
#[derive(Debug, PartialEq, Eq)]
struct Selection {
    /// `key=value,…` for a label selector.
    labels: String,
    ports: Vec<u16>,
}

/// The selector and target ports of an InferencePool's spec, or why there
/// are none.
fn selection(spec: &serde_json::Value) -> Result<Selection, &'static str> {
    let labels = spec
        .pointer("/selector/matchLabels")
        .and_then(serde_json::Value::as_object)
        .filter(|m| !m.is_empty())
        .ok_or("no spec.selector.matchLabels")?;
    let mut pairs = Vec::with_capacity(labels.len());
    for (key, value) in labels {
        let value = value.as_str().ok_or("a label value that is not a string")?;
        pairs.push(format!("{key}={value}"));
    }
    let ports: Vec<u16> = spec
        .get("targetPorts")
        .and_then(serde_json::Value::as_array)
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p.get("number")?.as_u64())
                .filter_map(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
                .collect()
        })
        .unwrap_or_default();
    if ports.is_empty() {
        return Err("no spec.targetPorts");
    }
    Ok(Selection {
        labels: pairs.join(","),
        ports,
    })
}

/// The base URLs of the pods that serve: running, with an IP, not being
/// deleted; one per target port.
fn endpoints(pods: &[Pod], ports: &[u16]) -> Vec<String> {
    let mut urls = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = &pod.status else { continue };
        if status.phase.as_deref() != Some("Running") {
            continue;
        }
        let Some(ip) = status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        else {
            continue;
        };
        for port in ports {
            urls.push(format!("http://{}", std::net::SocketAddr::new(ip, *port)));
        }
    }
    urls.sort();
    urls.dedup();
    urls
}

/// One round: every InferencePool in `scope` and its serving pods.
async fn read(client: &Client, scope: &Scope) -> Result<Vec<PoolEndpoints>, kube::Error> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, VERSION, "InferencePool"));
    let pools: Api<DynamicObject> = match scope {
        Scope::Namespace(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        Scope::AllNamespaces => Api::all_with(client.clone(), &resource),
    };
    let mut found = Vec::new();
    for pool in pools.list(&ListParams::default()).await? {
        let namespace = pool.namespace().unwrap_or_default();
        let name = match scope {
            Scope::Namespace(_) => pool.name_any(),
            Scope::AllNamespaces => format!("{namespace}/{}", pool.name_any()),
        };
        let spec = pool.data.get("spec").cloned().unwrap_or_default();
        let selection = match selection(&spec) {
            Ok(selection) => selection,
            Err(why) => {
                tracing::warn!(pool = %name, why, "InferencePool skipped for model discovery");
                continue;
            }
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let listed = pods
            .list(&ListParams::default().labels(&selection.labels))
            .await?;
        found.push(PoolEndpoints {
            name,
            endpoints: endpoints(&listed.items, &selection.ports),
        });
    }
    found.sort();
    Ok(found)
}

/// Reads the InferencePools of `scope` and their pods every `period` (the
/// first round at once) and publishes the pools whenever they change. The
/// receiver starts empty.
pub fn watch_inference_pools(
    client: Client,
    scope: Scope,
    period: Duration,
) -> (JoinHandle<()>, watch::Receiver<Vec<PoolEndpoints>>) {
    let (tx, rx) = watch::channel(Vec::new());
    let task = tokio::spawn(async move {
        tracing::info!(?scope, "reading InferencePools for model discovery");
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match read(&client, &scope).await {
                Ok(pools) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("InferencePools read again");
                    }
                    tx.send_if_modified(|last| {
                        if *last == pools {
                            return false;
                        }
                        let counts: BTreeMap<&str, usize> = pools
                            .iter()
                            .map(|p| (p.name.as_str(), p.endpoints.len()))
                            .collect();
                        tracing::info!(?counts, "InferencePool endpoints changed");
                        *last = pools;
                        true
                    });
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e,
                            "reading InferencePools failed; the last endpoints stay; retrying each period");
                    }
                }
            }
        }
    });
    (task, rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::PodStatus, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
    };
    use kube::api::ObjectMeta;
    use serde_json::json;

    #[test]
    fn the_selector_and_ports_come_from_the_v1_spec() {
        let spec = json!({
            "selector": {"matchLabels": {"app": "vllm", "tier": "gpu"}},
            "targetPorts": [{"number": 8000}, {"number": 8001}],
        });
        assert_eq!(
            selection(&spec),
            Ok(Selection {
                labels: "app=vllm,tier=gpu".into(),
                ports: vec![8000, 8001],
            })
        );
        let no_labels = json!({"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]});
        assert_eq!(selection(&no_labels), Err("no spec.selector.matchLabels"));
        // v1alpha2's shape (a flat selector, targetPortNumber) is not v1's.
        let alpha = json!({"selector": {"app": "vllm"}, "targetPortNumber": 8000});
        assert!(selection(&alpha).is_err());
        let bad_port =
            json!({"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 70000}]});
        assert_eq!(selection(&bad_port), Err("no spec.targetPorts"));
    }

    fn pod(ip: Option<&str>, phase: &str, deleting: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                deletion_timestamp: deleting.then_some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            status: Some(PodStatus {
                pod_ip: ip.map(str::to_owned),
                phase: Some(phase.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_pods_with_an_ip_serve_on_every_target_port() {
        let pods = [
            pod(Some("10.0.0.2"), "Running", false),
            pod(Some("fd00::5"), "Running", false),
            pod(Some("10.0.0.3"), "Pending", false),
            pod(None, "Running", false),
            pod(Some("10.0.0.4"), "Running", true),
            pod(Some("not-an-ip"), "Running", false),
        ];
        assert_eq!(
            endpoints(&pods, &[8000, 8001]),
            [
                "http://10.0.0.2:8000",
                "http://10.0.0.2:8001",
                "http://[fd00::5]:8000",
                "http://[fd00::5]:8001",
            ]
        );
    }
}
