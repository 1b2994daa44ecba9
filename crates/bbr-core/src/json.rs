//! The JSON state machine behind [`ModelExtractor`]. (Implementation in progress.)

use bytes::Bytes;

use crate::{Error, Extraction, ExtractorConfig, Status};

/// Finds the top-level `model` of a JSON body fed in chunks.
///
/// ```
/// use bytes::Bytes;
/// use bbr_core::{ExtractorConfig, ModelExtractor, Status};
///
/// let mut extractor = ModelExtractor::new(ExtractorConfig::new());
/// assert_eq!(extractor.feed(&Bytes::from_static(b"{\"max_tokens\":100,\"model\":\"sql-lo")).unwrap(), Status::Pending);
/// assert_eq!(extractor.feed(&Bytes::from_static(b"ra-sheddable\",\"prompt\":\"test\"}")).unwrap(), Status::Decided);
/// let extraction = extractor.finish().unwrap();
/// assert_eq!(extraction.model().unwrap().as_str(), "sql-lora-sheddable");
/// ```
#[derive(Debug)]
pub struct ModelExtractor {
    config: ExtractorConfig,
}

impl ModelExtractor {
    /// A fresh extractor for one body.
    pub fn new(config: ExtractorConfig) -> ModelExtractor {
        ModelExtractor { config }
    }

    /// Scans the next chunk. After an error, every call returns that error.
    pub fn feed(&mut self, chunk: &Bytes) -> Result<Status, Error> {
        let _ = (chunk, &self.config);
        unimplemented!()
    }

    /// Ends the body: checks it is complete and returns the decision.
    pub fn finish(&mut self) -> Result<&Extraction, Error> {
        unimplemented!()
    }

    /// The decision, once made.
    pub fn extraction(&self) -> Option<&Extraction> {
        unimplemented!()
    }

    /// Whether later chunks still need [`feed`](Self::feed) (strict policy
    /// after the decision); `false` once the body needs no more scanning.
    pub fn needs_scanning(&self) -> bool {
        unimplemented!()
    }

    /// Bytes scanned so far.
    pub fn bytes_scanned(&self) -> u64 {
        unimplemented!()
    }
}
