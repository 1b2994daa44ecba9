//! Runnable examples of bbr: see `examples/`.
//!
//! - [`pool`]: a simulated OpenAI-compatible model pool.

pub mod pool;
