//! Runnable examples of bbr, in `examples/`:
//!
//! - `axum_layer`: the tower layer in an axum app (feature `axum`);
//! - `extract`: bbr-core's extractor and rule table on a body from a file
//!   or stdin, one JSON line out;
//! - `pools`: the gateway demo's simulated model pools on given ports, for
//!   other gateways (the Envoy demo points its clusters at them);
//! - `gateway`: a gateway of one's own from the `bbr-gateway` library.
//!
//! The `bbr-gateway` crate is the gateway itself; this crate has no code of
//! its own.
