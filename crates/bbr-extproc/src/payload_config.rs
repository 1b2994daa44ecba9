//! The llm-d inference payload processor's configuration
//! (`--config-file`, `--config-text`): a `PayloadProcessorConfig`
//! (`apiVersion: llm-d.ai/v1alpha1`), read into the built-in behaviour its
//! plugins stand for, as `--plugin` is.
//!
//! The payload processor declares plugin instances once under `plugins`
//! (`type`, `name` defaulting to the type, `parameters`) and runs those a
//! profile references (`profiles[].plugins.request` and `.response`, plus
//! `preProcessing` and `postProcessing` around every profile). bbr does
//! what these do:
//!
//! - `body-field-to-header`: `model` into `X-Gateway-Model-Name` is what
//!   bbr always does; another field or header is `--body-field F=H`;
//! - `base-model-to-header`: `--base-model-configmaps`;
//! - `model-name-to-header` (a response plugin echoing the model the
//!   payload processor's `model-selector` chose): accepted; with no model
//!   selector, which bbr has not, it sets nothing, as in the payload
//!   processor;
//! - `single-profile-picker`: the one profile runs for every request.
//!
//! Anything else — another plugin type (model selection, scorers,
//! pickers, data-layer plugins), a second profile, a reference to an
//! undeclared plugin, an unknown field — is refused with its name and the
//! supported list, so that a configuration never runs with part of it
//! silently left out.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::plugin::{self, Plugin};

/// The `apiVersion` a configuration must have.
pub(crate) const API_VERSION: &str = "llm-d.ai/v1alpha1";
/// The `kind` a configuration must have.
pub(crate) const KIND: &str = "PayloadProcessorConfig";

const BODY_FIELD_TO_HEADER: &str = "body-field-to-header";
const BASE_MODEL_TO_HEADER: &str = "base-model-to-header";
const MODEL_NAME_TO_HEADER: &str = "model-name-to-header";
const SINGLE_PROFILE_PICKER: &str = "single-profile-picker";

/// The plugin types a configuration may declare.
pub(crate) const SUPPORTED: [&str; 4] = [
    BODY_FIELD_TO_HEADER,
    BASE_MODEL_TO_HEADER,
    MODEL_NAME_TO_HEADER,
    SINGLE_PROFILE_PICKER,
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    api_version: String,
    kind: String,
    #[serde(default)]
    plugins: Vec<Spec>,
    #[serde(default)]
    pre_processing: Option<RefList>,
    #[serde(default)]
    profile_picker: Option<Ref>,
    #[serde(default)]
    profiles: Vec<Profile>,
    #[serde(default)]
    post_processing: Option<RefList>,
    #[serde(default)]
    datalayer: Option<Datalayer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    parameters: Option<serde_yaml_ng::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Ref {
    plugin_ref: String,
    // A scorer's weight: no scorer is supported, but the field is valid.
    #[serde(default)]
    #[allow(dead_code)]
    weight: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RefList {
    #[serde(default)]
    plugins: Vec<Ref>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    name: String,
    #[serde(default)]
    plugins: ProfilePlugins,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ProfilePlugins {
    #[serde(default)]
    request: Vec<Ref>,
    #[serde(default)]
    response: Vec<Ref>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Datalayer {
    #[serde(default)]
    collectors: Vec<Ref>,
    #[serde(default)]
    extractors: Vec<Ref>,
    #[serde(default)]
    datasources: Vec<Ref>,
}

/// One declared plugin instance.
struct Declared {
    kind: String,
    parameters: serde_json::Value,
}

/// The request plugins `text` runs, in order, as `--plugin` gives them;
/// or why the configuration is refused.
pub(crate) fn load(text: &str) -> Result<Vec<Plugin>, String> {
    let config: Config =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not a {KIND} ({API_VERSION}): {e}"))?;
    if config.api_version != API_VERSION || config.kind != KIND {
        return Err(format!(
            "apiVersion {:?}, kind {:?}: expected apiVersion {API_VERSION}, kind {KIND}",
            config.api_version, config.kind
        ));
    }
    let supported = SUPPORTED.join(", ");

    let mut declared: BTreeMap<String, Declared> = BTreeMap::new();
    for spec in config.plugins {
        let name = spec
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| spec.kind.clone());
        if !SUPPORTED.contains(&spec.kind.as_str()) {
            return Err(format!(
                "plugin {name:?} of type {:?} is not supported (supported: {supported})",
                spec.kind
            ));
        }
        let parameters = match spec.parameters {
            None => serde_json::Value::Object(Default::default()),
            Some(yaml) => serde_json::to_value(yaml)
                .map_err(|e| format!("plugin {name:?}: parameters: {e}"))?,
        };
        if declared
            .insert(
                name.clone(),
                Declared {
                    kind: spec.kind,
                    parameters,
                },
            )
            .is_some()
        {
            return Err(format!("plugin {name:?} is declared twice"));
        }
    }
    let resolve = |r: &Ref, place: &str| {
        declared.get(&r.plugin_ref).ok_or_else(|| {
            format!(
                "{place} references plugin {:?}, which `plugins` does not declare",
                r.plugin_ref
            )
        })
    };

    let profile = match config.profiles.as_slice() {
        [] => return Err("no profile: one is needed".to_owned()),
        [one] => one,
        [_, more @ ..] => {
            return Err(format!(
                "profile {:?}: bbr runs one profile for every request \
                 (single-profile-picker); only one may be given",
                more[0].name
            ));
        }
    };
    if let Some(picker) = &config.profile_picker {
        let kind = &resolve(picker, "profilePicker")?.kind;
        if kind != SINGLE_PROFILE_PICKER {
            return Err(format!(
                "profilePicker {:?} of type {kind:?} is not supported (supported: {SINGLE_PROFILE_PICKER})",
                picker.plugin_ref
            ));
        }
    }
    if let Some(datalayer) = &config.datalayer
        && let Some(r) = datalayer
            .collectors
            .iter()
            .chain(&datalayer.extractors)
            .chain(&datalayer.datasources)
            .next()
    {
        return Err(format!(
            "datalayer plugin {:?} is not supported: bbr has no data layer (supported: {supported})",
            r.plugin_ref
        ));
    }

    let mut request = Vec::new();
    let pre = config.pre_processing.unwrap_or_default();
    let requests = pre.plugins.iter().map(|r| (r, "preProcessing".to_owned()));
    let in_profile = format!("profile {:?}: request", profile.name);
    let requests = requests.chain(
        profile
            .plugins
            .request
            .iter()
            .map(|r| (r, in_profile.clone())),
    );
    for (r, place) in requests {
        let d = resolve(r, &place)?;
        match d.kind.as_str() {
            BODY_FIELD_TO_HEADER | BASE_MODEL_TO_HEADER => {
                let built = plugin::build(&d.kind, &r.plugin_ref, &d.parameters)
                    .map_err(|e| format!("plugin {:?}: {e}", r.plugin_ref))?;
                request.push(built);
            }
            other => {
                return Err(format!(
                    "{place}: plugin {:?} of type {other:?} is not a request plugin \
                     (request plugins: {BODY_FIELD_TO_HEADER}, {BASE_MODEL_TO_HEADER})",
                    r.plugin_ref
                ));
            }
        }
    }
    let post = config.post_processing.unwrap_or_default();
    let in_response = format!("profile {:?}: response", profile.name);
    let responses = profile
        .plugins
        .response
        .iter()
        .map(|r| (r, in_response.clone()))
        .chain(
            post.plugins
                .iter()
                .map(|r| (r, "postProcessing".to_owned())),
        );
    for (r, place) in responses {
        let d = resolve(r, &place)?;
        if d.kind != MODEL_NAME_TO_HEADER {
            return Err(format!(
                "{place}: plugin {:?} of type {:?} is not a response plugin \
                 (response plugins: {MODEL_NAME_TO_HEADER})",
                r.plugin_ref, d.kind
            ));
        }
        if let Some(header) = d.parameters.get("headerName") {
            let valid = header
                .as_str()
                .is_some_and(|h| http::HeaderName::from_bytes(h.as_bytes()).is_ok());
            if !valid {
                return Err(format!(
                    "plugin {:?}: headerName {header} is not a header name",
                    r.plugin_ref
                ));
            }
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::Kind;

    /// The payload processor's documented default: model and base model.
    const DEFAULT: &str = r#"
apiVersion: llm-d.ai/v1alpha1
kind: PayloadProcessorConfig
plugins:
- type: body-field-to-header
  parameters:
    fieldName: model
    headerName: X-Gateway-Model-Name
- type: base-model-to-header
profiles:
- name: default
  plugins:
    request:
    - pluginRef: body-field-to-header
    - pluginRef: base-model-to-header
    response: []
"#;

    fn kinds(plugins: &[Plugin]) -> Vec<(&str, &str, &Kind)> {
        plugins
            .iter()
            .map(|p| (p.kind_name, p.name.as_str(), &p.kind))
            .collect()
    }

    #[test]
    fn the_documented_default_maps_to_the_model_and_base_model_headers() {
        let plugins = load(DEFAULT).unwrap();
        assert_eq!(
            kinds(&plugins),
            [
                (
                    "body-field-to-header",
                    "body-field-to-header",
                    &Kind::ModelHeader
                ),
                (
                    "base-model-to-header",
                    "base-model-to-header",
                    &Kind::BaseModel
                ),
            ]
        );
    }

    #[test]
    fn named_instances_copy_fields_and_echo_the_model() {
        let text = r#"
apiVersion: llm-d.ai/v1alpha1
kind: PayloadProcessorConfig
plugins:
- type: body-field-to-header
  name: user
  parameters: {fieldName: user, headerName: X-User}
- type: body-field-to-header
  name: unused
  parameters: {fieldName: tier, headerName: X-Tier}
- type: model-name-to-header
  parameters: {headerName: X-Served-Model}
- type: single-profile-picker
profilePicker: {pluginRef: single-profile-picker}
profiles:
- name: only
  plugins:
    request: [{pluginRef: user}]
postProcessing:
  plugins: [{pluginRef: model-name-to-header}]
"#;
        let plugins = load(text).unwrap();
        // Declared but not referenced: not run, as in the payload processor.
        assert_eq!(plugins.len(), 1);
        let Kind::BodyField(copy) = &plugins[0].kind else {
            panic!("{:?}", plugins[0])
        };
        assert_eq!((copy.field(), copy.header().as_str()), ("user", "x-user"));
        assert_eq!(plugins[0].name, "user");
    }

    #[test]
    fn what_bbr_does_not_do_is_refused_by_name() {
        let with = |extra: &str| format!("{DEFAULT}{extra}");
        for (text, needles) in [
            (
                DEFAULT.replace("- type: base-model-to-header", "- type: model-selector"),
                &["\"model-selector\"", "supported: body-field-to-header"][..],
            ),
            (
                with("- name: second\n  plugins: {request: []}\n"),
                &["profile \"second\"", "one profile"],
            ),
            (
                with("datalayer:\n  extractors: [{pluginRef: base-model-to-header}]\n"),
                &["datalayer plugin \"base-model-to-header\""],
            ),
            (
                with("postProcessing:\n  plugins: [{pluginRef: nowhere}]\n"),
                &["postProcessing references plugin \"nowhere\""],
            ),
            (
                with("postProcessing:\n  plugins: [{pluginRef: body-field-to-header}]\n"),
                &["not a response plugin"],
            ),
            (with("unknownField: 1\n"), &["unknownField"]),
            (
                DEFAULT.replace("v1alpha1", "v1"),
                &["expected apiVersion llm-d.ai/v1alpha1"],
            ),
            (
                DEFAULT.replace("fieldName: model", "fieldName: \"\""),
                &["fieldName is required"],
            ),
            (DEFAULT.replace("profiles:", "profilesX:"), &["profilesX"]),
        ] {
            let e = load(&text).unwrap_err();
            for needle in needles {
                assert!(e.contains(needle), "{needle:?} not in {e:?}");
            }
        }
        let none = "apiVersion: llm-d.ai/v1alpha1\nkind: PayloadProcessorConfig\nplugins: []\n";
        assert!(load(none).unwrap_err().contains("no profile"));
    }
}
