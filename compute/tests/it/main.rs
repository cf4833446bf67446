//! Integration tests of the compute crate: real wasm modules (built from
//! `examples/test-modules` for wasm32-wasip1) run through the node runtime over channels.

mod support;

mod executor;
mod inputs;
mod node;
