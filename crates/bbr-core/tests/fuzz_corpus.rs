//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same checks the fuzz targets run, on the stable toolchain.

#[allow(dead_code, unreachable_pub)]
#[path = "../../../fuzz/src/oracle.rs"]
mod oracle;

use std::{fs, path::PathBuf};

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for file in files {
        let data = fs::read(&file).expect("a corpus file");
        if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
            eprintln!("failing corpus file: {}", file.display());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn extract_differential_corpus() {
    replay("extract_differential", oracle::differential);
}

#[test]
fn extract_fast_vs_strict_corpus() {
    replay("extract_fast_vs_strict", oracle::fast_vs_strict);
}

#[test]
fn multipart_corpus() {
    replay("multipart", oracle::multipart);
}
