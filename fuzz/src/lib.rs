//! Fuzz targets for `bbr-core`. The targets are thin: the checks live in
//! [`oracle`], which the stable tests of `bbr-core` also use to replay the
//! checked-in corpus (`crates/bbr-core/tests/fuzz_corpus.rs`).

pub mod oracle;
