//! Runnable examples of bbr: see `examples/`.
//!
//! - [`pool`]: a simulated OpenAI-compatible model pool.
//! - [`gateway`]: the demo's multi-model gateway (the tower layer in front of
//!   one HTTP upstream per pool).
//! - [`log`]: the gateway's log line format.

pub mod gateway;
pub mod log;
pub mod pool;

/// The Rust code blocks of the README and of `docs/`, compiled and run as
/// this crate's doc tests (`cargo test --workspace --doc`, or
/// `cargo test -p bbr-examples --features axum --doc`): a snippet that stops
/// compiling fails the tests. This crate depends on what the snippets'
/// `Cargo.toml` lines name.
#[cfg(doctest)]
pub mod snippets {
    // The README's axum example needs axum; the workspace build turns the
    // feature on (benches depend on it).
    #[cfg(feature = "axum")]
    #[doc = include_str!("../README.md")]
    pub struct Readme;

    #[doc = include_str!("../docs/core.md")]
    pub struct Core;

    #[doc = include_str!("../docs/tower.md")]
    pub struct Tower;

    #[doc = include_str!("../docs/extproc.md")]
    pub struct ExtProc;

    #[doc = include_str!("../docs/rules.md")]
    pub struct Rules;
}
