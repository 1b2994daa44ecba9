//! The configuration file as written (`docs/rules.md`): serde types, not yet
//! validated. [`compile`](super::compile) turns them into a [`RuleTable`](super::RuleTable).

use std::fmt;

use serde::{
    Deserialize, Deserializer,
    de::{self, MapAccess, Visitor},
};

/// A rules file: `rules`, `base_models`, `default`. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RulesFile {
    #[serde(default)]
    pub(crate) rules: Vec<RuleSpec>,
    #[serde(default)]
    pub(crate) base_models: Vec<BaseModelSpec>,
    #[serde(default)]
    pub(crate) default: Option<DefaultSpec>,
}

/// One entry of `rules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub(crate) name: String,
    #[serde(rename = "match")]
    pub(crate) matcher: MatchSpec,
    #[serde(default)]
    pub(crate) pool: Option<String>,
    #[serde(default)]
    pub(crate) criticality: Option<String>,
    #[serde(default)]
    pub(crate) priority: Option<i32>,
    #[serde(default)]
    pub(crate) targets: Option<Vec<TargetSpec>>,
    #[serde(default)]
    pub(crate) set_headers: HeaderList,
}

/// `match:` — what a rule matches on. Only the model today.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MatchSpec {
    #[serde(default)]
    pub(crate) model: Option<ModelMatchSpec>,
}

/// `match: { model: {...} }` — exactly one of the four kinds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelMatchSpec {
    #[serde(default)]
    pub(crate) exact: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) glob: Option<String>,
    #[serde(default)]
    pub(crate) regex: Option<String>,
}

/// One weighted rewrite target.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TargetSpec {
    pub(crate) model: String,
    #[serde(default)]
    pub(crate) weight: Option<u32>,
}

/// One entry of `base_models`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BaseModelSpec {
    pub(crate) base_model: String,
    #[serde(default)]
    pub(crate) adapters: Vec<String>,
}

/// `default:` — `{action: reject}`, `{action: pass}`, or a route:
/// `{pool: NAME}` / `{action: route, pool: NAME}` (pool optional), with the
/// same optional `criticality`, `priority` and `set_headers` as a rule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DefaultSpec {
    #[serde(default)]
    pub(crate) action: Option<String>,
    #[serde(default)]
    pub(crate) pool: Option<String>,
    #[serde(default)]
    pub(crate) criticality: Option<String>,
    #[serde(default)]
    pub(crate) priority: Option<i32>,
    #[serde(default)]
    pub(crate) set_headers: HeaderList,
}

/// `set_headers`: a map kept in file order, values given as strings, numbers
/// or booleans (YAML writes `x-tier: 1` without quotes). Duplicate keys are
/// kept so that validation can name them.
#[derive(Debug, Default)]
pub(crate) struct HeaderList(pub(crate) Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = HeaderList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<HeaderList, E> {
                Ok(HeaderList::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderList, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Scalar>()? {
                    out.push((k, v.0));
                }
                Ok(HeaderList(out))
            }
        }
        deserializer.deserialize_map(ListVisitor)
    }
}

/// A scalar written as text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The Go router's base-model ConfigMap data: `baseModel`, and `adapters`
/// as a YAML list (in a ConfigMap every value is a string, so the list is
/// usually a block string holding YAML; a plain list is accepted too).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConfigMapData {
    pub(crate) base_model: String,
    #[serde(default)]
    pub(crate) adapters: Option<AdapterList>,
}

/// `adapters`: a YAML list, or a string holding one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum AdapterList {
    List(Vec<String>),
    Text(String),
}
