//! The model of a `multipart/form-data` body (audio transcriptions): the
//! content of the form field named `model`. (Implementation in progress.)

use bytes::Bytes;

use crate::{Error, Extraction, ExtractorConfig, Status};

/// Finds the form field `model` in a streamed `multipart/form-data` body.
#[derive(Debug)]
pub struct MultipartExtractor {
    config: ExtractorConfig,
}

impl MultipartExtractor {
    /// An extractor for a body with the given boundary.
    pub fn new(boundary: &str, config: ExtractorConfig) -> Result<MultipartExtractor, Error> {
        let _ = boundary;
        Ok(MultipartExtractor { config })
    }

    /// Scans the next chunk.
    pub fn feed(&mut self, chunk: &Bytes) -> Result<Status, Error> {
        let _ = (chunk, &self.config);
        unimplemented!()
    }

    /// Ends the body.
    pub fn finish(&mut self) -> Result<&Extraction, Error> {
        unimplemented!()
    }

    /// The decision, once made.
    pub fn extraction(&self) -> Option<&Extraction> {
        unimplemented!()
    }

    /// Whether later chunks still need scanning.
    pub fn needs_scanning(&self) -> bool {
        unimplemented!()
    }

    /// Bytes scanned so far.
    pub fn bytes_scanned(&self) -> u64 {
        unimplemented!()
    }
}
