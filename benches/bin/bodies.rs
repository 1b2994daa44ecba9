//! Writes every body of the extraction benchmark to `DIR/<case>.json`, so
//! that peers outside Rust (the Go program in `benches/go`) measure exactly
//! the same bytes.

use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let Some(dir) = env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: bench-bodies DIR");
        return ExitCode::from(2);
    };
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for case in bbr_benches::extract_cases() {
        let path = dir.join(format!("{}.json", case.name));
        if let Err(e) = fs::write(&path, &case.body) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
