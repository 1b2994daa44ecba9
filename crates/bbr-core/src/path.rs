//! The model named in the URL path, for APIs that put it there
//! (Gemini-style `/v1beta/models/{model}:generateContent`).

use std::fmt;

/// A path template with one `{model}` placeholder.
///
/// The placeholder matches one or more bytes up to the literal text that
/// follows it (or the end of the path); a `/` never matches inside it.
///
/// ```
/// use bbr_core::PathTemplate;
///
/// let template = PathTemplate::parse("/v1beta/models/{model}:generateContent").unwrap();
/// assert_eq!(template.model("/v1beta/models/gemini-2.5-pro:generateContent"), Some("gemini-2.5-pro"));
/// assert_eq!(template.model("/v1/chat/completions"), None);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PathTemplate {
    prefix: Box<str>,
    suffix: Box<str>,
}

/// The error of parsing a [`PathTemplate`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("path template {template:?} must contain `{{model}}` exactly once")]
pub struct PathTemplateError {
    template: String,
}

const PLACEHOLDER: &str = "{model}";

impl PathTemplate {
    /// Parses a template holding `{model}` exactly once.
    pub fn parse(template: &str) -> Result<PathTemplate, PathTemplateError> {
        let err = || PathTemplateError {
            template: template.to_owned(),
        };
        let at = template.find(PLACEHOLDER).ok_or_else(err)?;
        let (prefix, rest) = template.split_at(at);
        let suffix = &rest[PLACEHOLDER.len()..];
        if suffix.contains(PLACEHOLDER) {
            return Err(err());
        }
        Ok(PathTemplate {
            prefix: prefix.into(),
            suffix: suffix.into(),
        })
    }

    /// The model named by `path` (the query string, if any, is ignored), or
    /// `None` when the path does not fit the template or the model would be
    /// empty or hold a `/`, a `%` escape or a control character.
    pub fn model<'a>(&self, path: &'a str) -> Option<&'a str> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let rest = path.strip_prefix(&*self.prefix)?;
        let model = rest.strip_suffix(&*self.suffix)?;
        let bad = |c: char| c == '/' || c == '%' || c.is_control();
        if model.is_empty() || model.contains(bad) {
            return None;
        }
        Some(model)
    }
}

impl fmt::Debug for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PathTemplate({}{PLACEHOLDER}{})",
            self.prefix, self.suffix
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_paths() {
        let t = PathTemplate::parse("/v1beta/models/{model}:generateContent").unwrap();
        assert_eq!(
            t.model("/v1beta/models/m:generateContent?alt=sse"),
            Some("m")
        );
        assert_eq!(t.model("/v1beta/models/:generateContent"), None);
        assert_eq!(t.model("/v1beta/models/a/b:generateContent"), None);
        assert_eq!(t.model("/v1beta/models/a%0d:generateContent"), None);
        assert_eq!(t.model("/v1beta/models/m:streamGenerateContent"), None);
    }

    #[test]
    fn placeholder_at_the_end() {
        let t = PathTemplate::parse("/models/{model}").unwrap();
        assert_eq!(t.model("/models/llama"), Some("llama"));
        assert_eq!(t.model("/models/"), None);
    }

    #[test]
    fn template_must_hold_one_placeholder() {
        assert!(PathTemplate::parse("/v1/models").is_err());
        assert!(PathTemplate::parse("/{model}/{model}").is_err());
    }
}
