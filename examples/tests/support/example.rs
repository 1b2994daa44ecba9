//! An example of this crate as a process of its own: its binary, built on
//! first use.

use std::{path::PathBuf, process::Command, sync::Mutex};

/// The binary of example `name`, built on first use in the profile of this
/// test binary (a no-op when it is up to date): `cargo test` builds the
/// examples, but not when one test is selected (`--test NAME`). It is built
/// with the whole workspace's features, as `cargo test --workspace` builds
/// the crates it depends on: `-p bbr-examples` alone would turn off
/// features other members turn on, and build those crates again.
pub fn example_binary(name: &'static str) -> PathBuf {
    static BUILT: Mutex<Vec<(&str, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, path)) = built.iter().find(|(n, _)| *n == name) {
        return path.clone();
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/examples/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a target directory");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "-q", "--workspace", "--example", name]);
    if dir.file_name().is_some_and(|p| p == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("cargo runs");
    assert!(status.success(), "the {name} example does not build");
    let path = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is not built", path.display());
    built.push((name, path.clone()));
    path
}
