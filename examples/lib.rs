//! Runnable examples of bbr: see `examples/`.
