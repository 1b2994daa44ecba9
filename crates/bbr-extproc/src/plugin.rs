//! The Go router's `--plugin TYPE:NAME[:JSON]` flags (v1.5 and the
//! inference payload processor), read into the built-in behaviour they
//! stand for.

use bbr_core::{BodyFieldHeader, rules::MODEL_NAME_HEADER};

/// The plugin types `--plugin` accepts.
pub(crate) const TYPES: [&str; 2] = [BODY_FIELD_TO_HEADER, BASE_MODEL_TO_HEADER];
const BODY_FIELD_TO_HEADER: &str = "body-field-to-header";
const BASE_MODEL_TO_HEADER: &str = "base-model-to-header";

/// One `--plugin` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plugin {
    /// The plugin type, one of [`TYPES`].
    pub(crate) kind_name: &'static str,
    /// The instance name.
    pub(crate) name: String,
    pub(crate) kind: Kind,
}

/// What a plugin does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Copy `model` into `X-Gateway-Model-Name`: what bbr-extproc always
    /// does.
    ModelHeader,
    /// Copy another body field into a header.
    BodyField(BodyFieldHeader),
    /// Set X-Gateway-Base-Model-Name from the adapter ConfigMaps.
    BaseModel,
}

/// Parses `TYPE:NAME[:JSON]` as the Go router does: the JSON is whatever
/// follows the second colon.
pub(crate) fn parse(text: &str) -> Result<Plugin, String> {
    let mut parts = text.splitn(3, ':');
    let (Some(kind), Some(name)) = (parts.next(), parts.next()) else {
        return Err("usage: --plugin <type>:<name>[:<json>]".to_owned());
    };
    let (kind, name, json) = (kind.trim(), name.trim(), parts.next().unwrap_or("").trim());
    if kind.is_empty() {
        return Err("the plugin type cannot be empty".to_owned());
    }
    if name.is_empty() {
        return Err("the plugin name cannot be empty".to_owned());
    }
    let params: serde_json::Value = serde_json::from_str(if json.is_empty() { "{}" } else { json })
        .map_err(|e| format!("the parameters of the '{kind}' plugin: {e}"))?;
    build(kind, name, &params)
}

/// The plugin of type `kind` named `name` with its `params` (a JSON
/// object; `{}` for none), as `--plugin` and a `PayloadProcessorConfig`
/// give them.
pub(crate) fn build(kind: &str, name: &str, params: &serde_json::Value) -> Result<Plugin, String> {
    let (kind_name, kind) = match kind {
        BODY_FIELD_TO_HEADER => {
            let param = |key: &str| match params.get(key) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
                _ => Err(format!("{key} is required for plugin '{kind}'")),
            };
            let (field, header) = (param("fieldName")?, param("headerName")?);
            if field == "model" && header.eq_ignore_ascii_case(MODEL_NAME_HEADER) {
                (BODY_FIELD_TO_HEADER, Kind::ModelHeader)
            } else {
                let copy = BodyFieldHeader::new(field, header)
                    .map_err(|e| format!("plugin '{kind}': {e}"))?;
                (BODY_FIELD_TO_HEADER, Kind::BodyField(copy))
            }
        }
        BASE_MODEL_TO_HEADER => (BASE_MODEL_TO_HEADER, Kind::BaseModel),
        other => {
            return Err(format!(
                "unknown plugin type {other:?} (supported: {})",
                TYPES.join(", ")
            ));
        }
    };
    Ok(Plugin {
        kind_name,
        name: name.to_owned(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v1_5_chart_defaults_parse() {
        let p = parse(
            r#"body-field-to-header:model-extractor:{"fieldName":"model","headerName":"X-Gateway-Model-Name"}"#,
        )
        .unwrap();
        assert_eq!(
            (p.kind_name, p.name.as_str()),
            ("body-field-to-header", "model-extractor")
        );
        assert_eq!(p.kind, Kind::ModelHeader);
        let p = parse("base-model-to-header:base-model-mapper").unwrap();
        assert_eq!(p.kind, Kind::BaseModel);
    }

    #[test]
    fn another_field_is_a_body_field_copy() {
        let p = parse(r#"body-field-to-header:user:{"fieldName":"user","headerName":"X-User"}"#)
            .unwrap();
        let Kind::BodyField(copy) = &p.kind else {
            panic!("{p:?}")
        };
        assert_eq!((copy.field(), copy.header().as_str()), ("user", "x-user"));
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let unknown = parse("prefix-cache-scorer:x").unwrap_err();
        assert!(
            unknown.contains("unknown plugin type \"prefix-cache-scorer\""),
            "{unknown}"
        );
        assert!(
            unknown.contains("body-field-to-header, base-model-to-header"),
            "{unknown}"
        );
        assert!(parse("body-field-to-header").unwrap_err().contains("usage"));
        assert!(parse(":x").unwrap_err().contains("type cannot be empty"));
        assert!(
            parse("base-model-to-header: ")
                .unwrap_err()
                .contains("name cannot be empty")
        );
        let missing = parse(r#"body-field-to-header:x:{"headerName":"X-A"}"#).unwrap_err();
        assert!(missing.contains("fieldName is required"), "{missing}");
        let json = parse("body-field-to-header:x:{not json").unwrap_err();
        assert!(json.contains("parameters"), "{json}");
        let header = parse(r#"body-field-to-header:x:{"fieldName":"a","headerName":"bad header"}"#)
            .unwrap_err();
        assert!(header.contains("plugin 'body-field-to-header'"), "{header}");
    }
}
