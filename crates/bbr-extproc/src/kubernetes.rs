//! Base models from ConfigMaps, watched through the Kubernetes API, as the
//! Go body-based router (v1.5) reads them.
//!
//! A ConfigMap labelled `inference.networking.k8s.io/bbr-managed: "true"`
//! (the Go router's label) or `inference.llm-d.ai/ipp-managed: "true"` (the
//! llm-d inference payload processor's) maps LoRA adapters to their base
//! model:
//!
//! ```yaml
//! apiVersion: v1
//! kind: ConfigMap
//! metadata:
//!   name: llama-adapters
//!   labels: { inference.networking.k8s.io/bbr-managed: "true" }
//! data:
//!   baseModel: meta-llama/Llama-3.1-8B-Instruct
//!   adapters: |
//!     - sql-lora
//!     - chat-lora
//! ```
//!
//! A request naming `sql-lora` then gets `X-Gateway-Base-Model-Name:
//! meta-llama/Llama-3.1-8B-Instruct` (and one naming the base model, the
//! base model itself).
//!
//! [`watch_base_models`] lists and watches those ConfigMaps (the `kube`
//! crate's watcher: a real watch, re-listed after a disconnect; one per
//! label, since a label selector cannot say "either") in one namespace or
//! in all, and feeds each change to [`TableSources`], which
//! rebuilds the rule table and swaps it in atomically, with no restart. A
//! deleted ConfigMap (or one that loses the label) removes its mappings. A
//! ConfigMap that does not compile — no `baseModel`, `adapters` that is not
//! a YAML list, an adapter another ConfigMap maps to a different base
//! model — is refused with an error log line and
//! [`CONFIGMAPS_REFUSED_TOTAL`], and its previous data (if any) stays in
//! force, as do all the others.
//!
//! Readiness: the returned receiver turns `true` after the first full list
//! has been applied; the binary answers grpc.health.v1 `NOT_SERVING` until
//! then.
//!
//! The client is configured as `kube::Client::try_default` does it: from
//! `KUBECONFIG` (or `~/.kube/config`) outside a cluster, from the pod's
//! service account inside one. It needs `get`, `list` and `watch` on
//! `configmaps`, nothing else.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use tokio::{sync::watch, task::JoinHandle};

use crate::sources::TableSources;

/// The Go router's label that marks a base-model ConfigMap (value `"true"`).
pub const MANAGED_LABEL: &str = "inference.networking.k8s.io/bbr-managed";
/// The llm-d inference payload processor's label for the same ConfigMaps.
pub const IPP_MANAGED_LABEL: &str = "inference.llm-d.ai/ipp-managed";
/// The labels watched, each with value `"true"`.
pub const MANAGED_LABELS: [&str; 2] = [MANAGED_LABEL, IPP_MANAGED_LABEL];

/// What tells the keys of ConfigMaps seen through [`IPP_MANAGED_LABEL`]
/// apart from those seen through [`MANAGED_LABEL`]: a ConfigMap may carry
/// both, and each watch replaces only its own keys when it lists again.
const IPP_KEY_SUFFIX: &str = " (ipp-managed)";
/// The data key holding the base model.
pub const BASE_MODEL_KEY: &str = "baseModel";
/// The data key holding the adapters, a YAML list.
pub const ADAPTERS_KEY: &str = "adapters";

/// Base-model ConfigMaps refused (labels `namespace`, `name`); the previous
/// data of each stays in force.
pub const CONFIGMAPS_REFUSED_TOTAL: &str = "bbr_base_model_configmaps_refused_total";
/// Base-model ConfigMaps whose mappings are in force.
pub const CONFIGMAPS_IN_FORCE: &str = "bbr_base_model_configmaps";
/// Changes of base-model ConfigMaps applied to the table.
pub const CONFIGMAP_UPDATES_TOTAL: &str = "bbr_base_model_configmap_updates_total";

/// Registers the help text of this module's metrics with the installed
/// recorder.
pub fn describe_metrics() {
    describe_counter!(
        CONFIGMAPS_REFUSED_TOTAL,
        "Base-model ConfigMaps refused; their previous data stays in force."
    );
    describe_gauge!(
        CONFIGMAPS_IN_FORCE,
        "Base-model ConfigMaps whose mappings are in force."
    );
    describe_counter!(
        CONFIGMAP_UPDATES_TOTAL,
        "Changes of base-model ConfigMaps applied to the rule table."
    );
}

/// Where to watch: one namespace or all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The ConfigMaps of one namespace (the Go router's `NAMESPACE`).
    Namespace(String),
    /// The ConfigMaps of every namespace (needs a ClusterRole).
    AllNamespaces,
}

impl Scope {
    /// The Go router's choice: the namespace in `NAMESPACE` when it is set
    /// and not empty, every namespace otherwise.
    pub fn from_env() -> Scope {
        match std::env::var("NAMESPACE") {
            Ok(ns) if !ns.trim().is_empty() => Scope::Namespace(ns.trim().to_owned()),
            _ => Scope::AllNamespaces,
        }
    }
}

/// `namespace/name`, the key of a ConfigMap seen through `label` in
/// [`TableSources`] (with [`IPP_KEY_SUFFIX`] for the payload processor's).
fn key_of(cm: &ConfigMap, label: &str) -> String {
    let suffix = if label == IPP_MANAGED_LABEL {
        IPP_KEY_SUFFIX
    } else {
        ""
    };
    format!(
        "{}/{}{suffix}",
        cm.namespace().unwrap_or_default(),
        cm.name_any()
    )
}

/// Whether `key` is one the watch of `label` owns.
fn owned_by(key: &str, label: &str) -> bool {
    key.ends_with(IPP_KEY_SUFFIX) == (label == IPP_MANAGED_LABEL)
}

/// The ConfigMap's `baseModel` and `adapters` as JSON text for
/// [`TableSources::apply_base_models`]; other data keys are ignored.
fn data_of(cm: &ConfigMap) -> String {
    let mut data = serde_json::Map::new();
    if let Some(all) = &cm.data {
        for key in [BASE_MODEL_KEY, ADAPTERS_KEY] {
            if let Some(value) = all.get(key) {
                data.insert(key.to_owned(), serde_json::Value::String(value.clone()));
            }
        }
    }
    serde_json::Value::Object(data).to_string()
}

fn refused(key: &str, error: &dyn std::fmt::Display) {
    let (namespace, name) = key.split_once('/').unwrap_or(("", key));
    let name = name.trim_end_matches(IPP_KEY_SUFFIX);
    counter!(CONFIGMAPS_REFUSED_TOTAL, "namespace" => namespace.to_owned(), "name" => name.to_owned())
        .increment(1);
    tracing::error!(configmap = key, error = %error,
        "base-model ConfigMap refused; its previous mappings (if any) stay in force");
}

/// Applies one event of the watch of `label` to `sources`. `listing`
/// collects a (re-)list until it is done. Returns `true` when a full list
/// was just applied.
fn apply_event(
    sources: &TableSources,
    label: &str,
    listing: &mut Option<BTreeMap<String, String>>,
    event: watcher::Event<ConfigMap>,
) -> bool {
    match event {
        watcher::Event::Init => {
            *listing = Some(BTreeMap::new());
            false
        }
        watcher::Event::InitApply(cm) => {
            listing
                .get_or_insert_with(BTreeMap::new)
                .insert(key_of(&cm, label), data_of(&cm));
            false
        }
        watcher::Event::InitDone => {
            let listed = listing.take().unwrap_or_default();
            let count = listed.len();
            let owned = |key: &str| owned_by(key, label);
            for (key, error) in sources.replace_base_models_where(owned, listed) {
                refused(&key, &error);
            }
            counter!(CONFIGMAP_UPDATES_TOTAL).increment(1);
            gauge!(CONFIGMAPS_IN_FORCE).set(sources.base_model_keys().len() as f64);
            tracing::info!(
                listed = count,
                in_force = sources.base_model_keys().len(),
                "base-model ConfigMaps listed"
            );
            true
        }
        watcher::Event::Apply(cm) => {
            let key = key_of(&cm, label);
            match sources.apply_base_models(&key, &data_of(&cm)) {
                Ok(()) => {
                    counter!(CONFIGMAP_UPDATES_TOTAL).increment(1);
                    tracing::info!(configmap = %key, "base-model ConfigMap applied");
                }
                Err(e) => refused(&key, &e),
            }
            gauge!(CONFIGMAPS_IN_FORCE).set(sources.base_model_keys().len() as f64);
            false
        }
        watcher::Event::Delete(cm) => {
            let key = key_of(&cm, label);
            if sources.remove_base_models(&key) {
                counter!(CONFIGMAP_UPDATES_TOTAL).increment(1);
                tracing::info!(configmap = %key, "base-model ConfigMap removed");
            }
            gauge!(CONFIGMAPS_IN_FORCE).set(sources.base_model_keys().len() as f64);
            false
        }
    }
}

/// Starts watching the base-model ConfigMaps in `scope` with `client` (one
/// watch per label of [`MANAGED_LABELS`]), feeding every change to
/// `sources`. Returns the tasks and a receiver that turns `true` once the
/// first full list of every watch is applied (and stays so).
///
/// Errors of the watch (the API server unreachable, a permission missing)
/// are logged and retried with a backoff; the table in force keeps serving
/// meanwhile.
pub fn watch_base_models(
    client: Client,
    scope: Scope,
    sources: TableSources,
) -> (JoinHandle<()>, watch::Receiver<bool>) {
    let (synced_tx, synced_rx) = watch::channel(false);
    let synced_tx = std::sync::Arc::new(synced_tx);
    let listed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for label in MANAGED_LABELS {
        let api: Api<ConfigMap> = match &scope {
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
            Scope::AllNamespaces => Api::all(client.clone()),
        };
        let config = watcher::Config::default().labels(&format!("{label}=true"));
        let (sources, scope) = (sources.clone(), scope.clone());
        let (synced_tx, listed) = (synced_tx.clone(), listed.clone());
        tasks.push(tokio::spawn(async move {
            tracing::info!(?scope, label, "watching base-model ConfigMaps");
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            let (mut listing, mut first) = (None, true);
            while let Some(event) = events.next().await {
                match event {
                    Ok(event) => {
                        if apply_event(&sources, label, &mut listing, event)
                            && std::mem::take(&mut first)
                        {
                            let done = listed.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
                            if done == MANAGED_LABELS.len() {
                                synced_tx.send_replace(true);
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, label,
                        "watching base-model ConfigMaps failed; retrying"),
                }
            }
        }));
    }
    let task = tokio::spawn(async move {
        for task in tasks {
            let _ = task.await;
        }
    });
    (task, synced_rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("ns".to_owned()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn base(sources: &TableSources, model: &str) -> Option<String> {
        sources.rules().load().base_model(model).map(str::to_owned)
    }

    #[test]
    fn events_follow_the_go_routers_configmaps() {
        let sources = TableSources::new(None).unwrap();
        let mut listing = None;
        let llama = configmap(
            "llama",
            &[
                ("baseModel", " llama-3 \n"),
                ("adapters", "- sql\n- chat\n"),
                ("note", "ignored"),
            ],
        );
        assert!(!apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::Init
        ));
        assert!(!apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::InitApply(llama.clone())
        ));
        assert_eq!(base(&sources, "sql"), None, "not before the list is done");
        assert!(apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::InitDone
        ));
        assert_eq!(base(&sources, "sql").as_deref(), Some("llama-3"));

        // A malformed one is refused; the rest keeps serving.
        let bad = configmap("bad", &[("adapters", "- x\n")]);
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::Apply(bad.clone()),
        );
        let not_a_list = configmap("worse", &[("baseModel", "m"), ("adapters", "a: b")]);
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::Apply(not_a_list),
        );
        assert_eq!(sources.base_model_keys(), ["ns/llama"]);
        assert_eq!(base(&sources, "chat").as_deref(), Some("llama-3"));

        let changed = configmap(
            "llama",
            &[("baseModel", "llama-3"), ("adapters", "- sql\n")],
        );
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::Apply(changed),
        );
        assert_eq!(base(&sources, "chat"), None);
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::Delete(bad),
        );
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::Delete(llama),
        );
        assert_eq!(base(&sources, "sql"), None);
        assert!(sources.base_model_keys().is_empty());
    }

    #[test]
    fn only_base_model_and_adapters_are_read() {
        let data = data_of(&configmap("x", &[("baseModel", "b"), ("other", "o")]));
        assert_eq!(data, r#"{"baseModel":"b"}"#);
        assert_eq!(data_of(&ConfigMap::default()), "{}");
        assert_eq!(key_of(&configmap("x", &[]), MANAGED_LABEL), "ns/x");
        assert_eq!(
            key_of(&configmap("x", &[]), IPP_MANAGED_LABEL),
            "ns/x (ipp-managed)"
        );
    }

    /// The Go router's label and the payload processor's are watched
    /// apart: a list of one leaves the other's ConfigMaps in force.
    #[test]
    fn either_label_maps_and_a_relist_keeps_the_others() {
        let sources = TableSources::new(None).unwrap();
        let go = configmap("go", &[("baseModel", "llama-3"), ("adapters", "- sql\n")]);
        let ipp = configmap(
            "ipp",
            &[("baseModel", "qwen"), ("adapters", "- summarizer\n")],
        );
        for (label, cm) in [(MANAGED_LABEL, &go), (IPP_MANAGED_LABEL, &ipp)] {
            let mut listing = None;
            apply_event(&sources, label, &mut listing, watcher::Event::Init);
            apply_event(
                &sources,
                label,
                &mut listing,
                watcher::Event::InitApply(cm.clone()),
            );
            assert!(apply_event(
                &sources,
                label,
                &mut listing,
                watcher::Event::InitDone
            ));
        }
        assert_eq!(base(&sources, "sql").as_deref(), Some("llama-3"));
        assert_eq!(base(&sources, "summarizer").as_deref(), Some("qwen"));
        // The Go label's watch lists again, empty: only its ConfigMap goes.
        let mut listing = None;
        apply_event(&sources, MANAGED_LABEL, &mut listing, watcher::Event::Init);
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::InitDone,
        );
        assert_eq!(base(&sources, "sql"), None);
        assert_eq!(base(&sources, "summarizer").as_deref(), Some("qwen"));
        assert_eq!(sources.base_model_keys(), ["ns/ipp (ipp-managed)"]);
        // A ConfigMap carrying both labels maps the same way through both.
        let mut listing = None;
        apply_event(&sources, MANAGED_LABEL, &mut listing, watcher::Event::Init);
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::InitApply(ipp.clone()),
        );
        apply_event(
            &sources,
            MANAGED_LABEL,
            &mut listing,
            watcher::Event::InitDone,
        );
        assert_eq!(sources.base_model_keys().len(), 2);
        assert_eq!(base(&sources, "summarizer").as_deref(), Some("qwen"));
        apply_event(
            &sources,
            IPP_MANAGED_LABEL,
            &mut None,
            watcher::Event::Delete(ipp),
        );
        assert_eq!(base(&sources, "summarizer").as_deref(), Some("qwen"));
    }
}
