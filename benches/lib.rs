//! Benchmarks of bbr against its peers (see `benches/`).
