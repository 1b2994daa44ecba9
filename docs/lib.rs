//! The Rust code blocks of the README and of `docs/`, compiled and run as
//! this crate's doc tests (`cargo test --workspace --doc`, or
//! `cargo test -p bbr-docs --doc`): a snippet that stops compiling fails the
//! tests. The crate has no code of its own; its dev-dependencies are what
//! the snippets' `Cargo.toml` lines name (`scripts/check-snippets.sh`
//! checks each snippet against its own lines). Its integration tests check
//! the rule tables the documents show (`tests/rules.rs`).

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct Readme;

#[cfg(doctest)]
#[doc = include_str!("core.md")]
pub struct Core;

#[cfg(doctest)]
#[doc = include_str!("tower.md")]
pub struct Tower;

#[cfg(doctest)]
#[doc = include_str!("extproc.md")]
pub struct ExtProc;

#[cfg(doctest)]
#[doc = include_str!("rules.md")]
pub struct Rules;

#[cfg(doctest)]
#[doc = include_str!("gateway.md")]
pub struct Gateway;
