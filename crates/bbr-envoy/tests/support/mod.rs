//! Shared helpers of the integration tests: the ext_proc tests' Envoy,
//! HTTP client and simulated pools, and what loading the module takes.
#![allow(dead_code, unreachable_pub, missing_docs)]

#[path = "../../../bbr-extproc/tests/support/envoy.rs"]
pub mod envoy;
#[path = "../../../bbr-extproc/tests/support/http.rs"]
pub mod http;
#[path = "../../../bbr-extproc/tests/support/upstream.rs"]
pub mod upstream;

use std::{path::PathBuf, time::Duration};

/// Upper bound on any single wait, so that a broken test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// The directory of the `libbbr_envoy.so` cargo built with these tests
/// (the test binary's `deps/` or its parent).
pub fn module_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    for dir in [deps, deps.parent().unwrap_or(deps)] {
        if dir.join("libbbr_envoy.so").is_file() {
            return dir.to_path_buf();
        }
    }
    panic!(
        "libbbr_envoy.so not found beside {}: cargo builds it with the crate",
        exe.display()
    );
}
