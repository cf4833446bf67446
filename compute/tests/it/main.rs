//! Integration tests of the compute crate: real wasm modules (built from
//! `examples/test-modules` for wasm32-wasip1) run through the node runtime over channels; the
//! docker executor against the machine's Docker engine (`docker::`, image from
//! `scripts/test-image.sh`); S3 inputs and publishing against a real S3-compatible server
//! (`s3::`, `CARAVEL_TEST_S3_ENDPOINT`). Missing engines or servers fail the tests with a message.

mod support;

mod docker;
mod executor;
mod inputs;
mod node;
mod s3;
