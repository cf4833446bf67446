//! caravel-cli's integration tests, one binary (see docs: tests/it per crate).

mod examples;
mod s3;
