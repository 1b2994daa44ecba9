//! Core extraction: bbr (strict and fast, fed in 16 KiB chunks) against the
//! Rust JSON parsers a gateway could use instead, on the same bodies.
//!
//! `benches/extract.sh` runs this with modest settings and prints a GB/s
//! table with the ratio of bbr to the best peer (and Go's `encoding/json`).

use std::{borrow::Cow, hint::black_box, time::Duration};

use bbr_benches::{CHUNK, MODEL, chunks, extract_cases};
use bbr_core::{ExtractorConfig, ModelExtractor, Policy};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use simd_json::prelude::ValueObjectAccessAsScalar;
use sonic_rs::JsonValueTrait;

/// What a gateway needs from a body: only the model, borrowed when it can be.
#[derive(Deserialize)]
struct ModelOnly<'a> {
    #[serde(borrow)]
    model: Cow<'a, str>,
}

/// bbr: the chunks fed one by one as they would arrive; stops feeding once
/// no more scanning is needed (the fast policy after the model).
fn bbr(chunks: &[Bytes], config: &ExtractorConfig) -> usize {
    let mut extractor = ModelExtractor::new(config.clone());
    for chunk in chunks {
        if !extractor.needs_scanning() {
            break;
        }
        extractor.feed(chunk).expect("a valid body");
    }
    let extraction = extractor.finish().expect("a valid body");
    extraction.model().expect("a model").as_str().len()
}

fn serde_json_struct(body: &[u8]) -> usize {
    let parsed: ModelOnly<'_> = serde_json::from_slice(body).expect("a valid body");
    parsed.model.len()
}

fn serde_json_value(body: &[u8]) -> usize {
    let value: serde_json::Value = serde_json::from_slice(body).expect("a valid body");
    value["model"].as_str().expect("a model").len()
}

/// simd-json parses in place: the copy of the body it needs is counted.
fn simd_json_struct(body: &[u8]) -> usize {
    let mut copy = body.to_vec();
    let parsed: ModelOnly<'_> = simd_json::serde::from_slice(&mut copy).expect("a valid body");
    parsed.model.len()
}

fn simd_json_value(body: &[u8]) -> usize {
    let mut copy = body.to_vec();
    let value = simd_json::to_borrowed_value(&mut copy).expect("a valid body");
    value.get_str("model").expect("a model").len()
}

/// sonic-rs finds the field without building a tree (and without
/// validating what it skips).
fn sonic_rs_get(body: &[u8]) -> usize {
    let value = sonic_rs::get_from_slice(body, &["model"]).expect("a model");
    value.as_str().expect("a string").len()
}

/// jiter's iterator: top-level keys, skipping every other value.
fn jiter_keys(body: &[u8]) -> usize {
    let mut jiter = jiter::Jiter::new(body);
    let mut len = None;
    let mut key = jiter
        .next_object_bytes()
        .expect("an object")
        .map(|k| k == b"model");
    while let Some(is_model) = key {
        if is_model {
            len = Some(jiter.next_str().expect("a string").len());
        } else {
            jiter.next_skip().expect("a value");
        }
        key = jiter
            .next_key_bytes()
            .expect("a key")
            .map(|k| k == b"model");
    }
    jiter.finish().expect("the end");
    len.expect("a model")
}

fn extract(c: &mut Criterion) {
    let strict = ExtractorConfig::new().with_max_body(u64::MAX);
    let fast = strict.clone().with_policy(Policy::Fast);
    for case in extract_cases() {
        let body = case.body.as_slice();
        let chunks = chunks(body, CHUNK);
        // Every contender must find the model before it is timed.
        let expected = MODEL.len();
        assert_eq!(bbr(&chunks, &strict), expected);
        assert_eq!(bbr(&chunks, &fast), expected);
        assert_eq!(serde_json_struct(body), expected);
        assert_eq!(serde_json_value(body), expected);
        assert_eq!(simd_json_struct(body), expected);
        assert_eq!(simd_json_value(body), expected);
        assert_eq!(sonic_rs_get(body), expected);
        assert_eq!(jiter_keys(body), expected);

        let mut group = c.benchmark_group(format!("extract-{}", case.name));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function("bbr-strict", |b| {
            b.iter(|| bbr(black_box(&chunks), &strict))
        });
        group.bench_function("bbr-fast", |b| b.iter(|| bbr(black_box(&chunks), &fast)));
        group.bench_function("serde_json-struct", |b| {
            b.iter(|| serde_json_struct(black_box(body)))
        });
        group.bench_function("serde_json-value", |b| {
            b.iter(|| serde_json_value(black_box(body)))
        });
        group.bench_function("simd-json-struct", |b| {
            b.iter(|| simd_json_struct(black_box(body)))
        });
        group.bench_function("simd-json-value", |b| {
            b.iter(|| simd_json_value(black_box(body)))
        });
        group.bench_function("sonic-rs-get", |b| b.iter(|| sonic_rs_get(black_box(body))));
        group.bench_function("jiter", |b| b.iter(|| jiter_keys(black_box(body))));
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = extract
}
criterion_main!(benches);
