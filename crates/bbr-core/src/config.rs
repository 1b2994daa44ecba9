//! Extraction configuration: policy and limits.

use std::{fmt, str::FromStr, sync::Arc};

/// How much of the body is checked once the model is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Policy {
    /// Keep scanning every chunk after the decision, before it is released:
    /// the whole body must be valid JSON and `model` must appear once.
    /// The default, and the only policy safe against duplicate-key smuggling.
    #[default]
    Strict,
    /// Decide at the model and stop scanning. Faster, but a body such as
    /// `{"model":"a",…,"model":"b"}` is routed by `a` while a backend that
    /// keeps the last key serves `b`: do not use where pools differ in trust.
    Fast,
}

impl Policy {
    /// `"strict"` or `"fast"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::Strict => "strict",
            Policy::Fast => "fast",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Policy`] from text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?} (expected \"strict\" or \"fast\")")]
pub struct ParsePolicyError(String);

impl FromStr for Policy {
    type Err = ParsePolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(Policy::Strict),
            "fast" => Ok(Policy::Fast),
            other => Err(ParsePolicyError(other.to_owned())),
        }
    }
}

/// Default limit on the bytes scanned before a decision: 32 MiB.
pub const DEFAULT_MAX_BODY: u64 = 32 << 20;
/// Default deepest nesting accepted, counting the top-level object: 127,
/// exactly what `serde_json` accepts (it refuses 128).
pub const DEFAULT_MAX_DEPTH: usize = 127;
/// Default longest model name in bytes: 256, the InferenceModel `modelName` limit.
pub const DEFAULT_MAX_MODEL_LEN: usize = 256;
/// The longest name an extra requested field may have, in bytes.
pub const MAX_FIELD_NAME_LEN: usize = 64;
/// Default cap on how many times larger than its compressed form a body may
/// decode to: 100 (JSON compresses 5 to 20 times; a decompression bomb
/// thousands of times). See [`ExtractorConfig::with_max_expansion_ratio`].
pub const DEFAULT_MAX_EXPANSION_RATIO: u32 = 100;
/// Default decoded bytes allowed on top of the expansion ratio: 1 MiB, so
/// that a small, very repetitive body still decodes.
pub const DEFAULT_EXPANSION_SLACK: u64 = 1 << 20;

/// Policy and limits for extraction. Cheap to clone.
///
/// ```
/// use bbr_core::{ExtractorConfig, Policy};
///
/// let config = ExtractorConfig::new()
///     .with_policy(Policy::Strict)
///     .with_max_body(8 << 20)
///     .with_field("stream");
/// assert_eq!(config.max_model_len(), 256);
/// assert_eq!(config.fields().len(), 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractorConfig {
    policy: Policy,
    max_body: u64,
    max_depth: usize,
    max_model_len: usize,
    /// `None` when no field is requested: a clone then costs no atomic operation.
    fields: Option<Arc<[Box<str>]>>,
    decompression: bool,
    max_expansion_ratio: u32,
    expansion_slack: u64,
    numeric_model: bool,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        ExtractorConfig {
            policy: Policy::Strict,
            max_body: DEFAULT_MAX_BODY,
            max_depth: DEFAULT_MAX_DEPTH,
            max_model_len: DEFAULT_MAX_MODEL_LEN,
            fields: None,
            decompression: cfg!(feature = "decompress"),
            max_expansion_ratio: DEFAULT_MAX_EXPANSION_RATIO,
            expansion_slack: DEFAULT_EXPANSION_SLACK,
            numeric_model: false,
        }
    }
}

impl ExtractorConfig {
    /// The defaults: strict policy, 32 MiB, depth 127, model up to 256 bytes;
    /// compressed bodies decoded (with the `decompress` feature) up to 100
    /// times their compressed size plus 1 MiB.
    pub fn new() -> ExtractorConfig {
        ExtractorConfig::default()
    }

    /// Sets the policy.
    #[must_use]
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the most bytes scanned before a decision; past it the body is
    /// refused with [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge).
    #[must_use]
    pub fn with_max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sets the deepest nesting accepted (the top-level object counts as 1).
    /// Values above 127 are clamped to 127 so that bbr never accepts a body
    /// its backends' parsers refuse.
    #[must_use]
    pub fn with_max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth.clamp(1, DEFAULT_MAX_DEPTH);
        self
    }

    /// Sets the longest model name accepted, in bytes (at least 1).
    #[must_use]
    pub fn with_max_model_len(mut self, bytes: usize) -> Self {
        self.max_model_len = bytes.max(1);
        self
    }

    /// Asks for another top-level field to be extracted in the same pass
    /// (for example `stream`). With extra fields the decision waits until
    /// every requested field has been seen or the top-level object closes.
    /// Names longer than [`MAX_FIELD_NAME_LEN`] bytes, and `model`, are ignored.
    #[must_use]
    pub fn with_field(mut self, name: &str) -> Self {
        if name.len() <= MAX_FIELD_NAME_LEN
            && name != "model"
            && !self.fields().iter().any(|f| &**f == name)
        {
            let mut fields: Vec<Box<str>> = self.fields().to_vec();
            fields.push(name.into());
            self.fields = Some(fields.into());
        }
        self
    }

    /// Sets whether compressed bodies (`Content-Encoding` `gzip`, `deflate`,
    /// `br`, `zstd`) are decoded for the scan. Off, or without the
    /// `decompress` feature, a compressed body is refused with
    /// [`ErrorKind::UnsupportedContentType`](crate::ErrorKind::UnsupportedContentType)
    /// (415), which the failure policy may let through unrouted. Default: on
    /// with the feature.
    #[must_use]
    pub fn with_decompression(mut self, enabled: bool) -> Self {
        self.decompression = enabled;
        self
    }

    /// Sets how many times its compressed size a body may decode to, plus
    /// the [slack](Self::with_expansion_slack). A body that expands more is
    /// refused as a decompression bomb with
    /// [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) (413), before or
    /// after the decision, and decoding stops there. At least 1.
    #[must_use]
    pub fn with_max_expansion_ratio(mut self, ratio: u32) -> Self {
        self.max_expansion_ratio = ratio.max(1);
        self
    }

    /// Sets the decoded bytes allowed on top of the
    /// [expansion ratio](Self::with_max_expansion_ratio).
    #[must_use]
    pub fn with_expansion_slack(mut self, bytes: u64) -> Self {
        self.expansion_slack = bytes;
        self
    }

    /// Sets whether a number in `model` (`"model": 1`) is read as the model
    /// named by its JSON text (`1`), as the Go router v1.5 does, instead of
    /// being refused with
    /// [`ErrorKind::ModelNotString`](crate::ErrorKind::ModelNotString).
    /// Default: off (no OpenAI-compatible server serves a number as a
    /// model name).
    #[must_use]
    pub fn with_numeric_model(mut self, enabled: bool) -> Self {
        self.numeric_model = enabled;
        self
    }

    /// Whether a number in `model` is read as a model name.
    pub fn numeric_model(&self) -> bool {
        self.numeric_model
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The most bytes scanned before a decision.
    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    /// The deepest nesting accepted.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// The longest model name accepted, in bytes.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// The extra top-level fields requested.
    pub fn fields(&self) -> &[Box<str>] {
        self.fields.as_deref().unwrap_or(&[])
    }

    /// Whether compressed bodies are decoded for the scan.
    pub fn decompression(&self) -> bool {
        self.decompression
    }

    /// How many times its compressed size a body may decode to.
    pub fn max_expansion_ratio(&self) -> u32 {
        self.max_expansion_ratio
    }

    /// The decoded bytes allowed on top of the expansion ratio.
    pub fn expansion_slack(&self) -> u64 {
        self.expansion_slack
    }
}
