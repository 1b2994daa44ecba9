//! Runnable examples of bbr: see `examples/`.
//!
//! - [`pool`]: a simulated OpenAI-compatible model pool.
//! - [`gateway`]: the demo's multi-model gateway (the tower layer in front of
//!   one HTTP upstream per pool).

pub mod gateway;
pub mod pool;
