//! The fuzz targets of the model's text decoders, as plain functions: each takes arbitrary bytes,
//! must never panic on its own, and panics (a finding) only when a decoder breaks one of its
//! promises:
//!
//! - `job_spec`: the API's decoder (a JSON body's job, `job_from_value` in server mode) and the
//!   CLI's (`parse_job`, YAML or JSON, both modes). A job either decoder accepts is valid, fits the
//!   replicated size limit once encoded (the API checks it next), encodes and decodes to itself, and
//!   parses again, from its own JSON, to the same job (defaults are applied once).
//! - `config`: a config file (YAML) and a `-c Key=Value` / `CARAVEL_<KEY>` assignment. A config
//!   either accepts passes its own validation, reads back from its own JSON as the same config,
//!   lists its keys, and its redacted form shows no secret it holds.
//!
//! The cargo-fuzz binaries in `fuzz_targets/` call these, and `model/tests/decoders.rs` compiles
//! this very file (`#[path]`) to run the committed corpus and the seeds through them in every
//! `cargo test`, on stable.
//!
//! Running the fuzzer (cargo-fuzz needs nightly flags; on the pinned stable toolchain
//! `RUSTC_BOOTSTRAP=1` unlocks them), from `model/fuzz`:
//!
//! ```text
//! cargo install cargo-fuzz --locked            # once
//! export CARGO_TARGET_DIR=$HOME/.cache/caravel-target
//! RUSTC_BOOTSTRAP=1 cargo fuzz run job_spec corpus/job_spec -- -max_total_time=60
//! RUSTC_BOOTSTRAP=1 cargo fuzz run config corpus/config -- -max_total_time=60
//! RUSTC_BOOTSTRAP=1 cargo fuzz cmin <target> corpus/<target>     # before committing new inputs
//! ```
//!
//! The seeds (every example spec and config of the repository, and the shapes the spec tests use)
//! are written into `corpus/` by
//! `CARAVEL_FUZZ_SEEDS_OUT=$PWD/model/fuzz/corpus cargo test -p caravel-model --test decoders`
//! (from the repository root).

use caravel_model::codec;
use caravel_model::config::{Config, REDACTED, set_in};
use caravel_model::parse::{Mode, Parsed, job_from_value, parse_job};
use caravel_model::spec::Job;
use caravel_model::validate::{SpecErrors, check_job_size};
use serde_json::Value;

/// The job-spec decoders: the API's (JSON body) and the CLI's (YAML or JSON text).
pub fn job_spec(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        accepted_job(job_from_value(v, Mode::Server), "the API's decoder");
    }
    accepted_job(parse_job(data, Mode::Server), "parse_job (server)");
    accepted_job(parse_job(data, Mode::Client), "parse_job (client)");
}

fn accepted_job(parsed: Result<Parsed, SpecErrors>, by: &str) {
    let Ok(Parsed { job, .. }) = parsed else {
        return;
    };
    // The API refuses an over-large job after decoding; nothing below depends on its size.
    let fits = check_job_size(&job).is_ok();
    let encoded = codec::encode(&job)
        .unwrap_or_else(|e| panic!("{by} accepted a job that does not encode: {e}"));
    if fits {
        let decoded: Job = codec::decode(&encoded)
            .unwrap_or_else(|e| panic!("{by} accepted a job whose encoding does not decode: {e}"));
        assert_eq!(
            decoded, job,
            "{by}: the codec does not round-trip an accepted job"
        );
    }
    let json = serde_json::to_value(&job).expect("a job serialises to JSON");
    let again = job_from_value(json, Mode::Server).unwrap_or_else(|e| {
        panic!("{by} accepted a job that does not parse again from its own JSON: {e}")
    });
    assert_eq!(
        again.job, job,
        "{by}: parsing an accepted job again changes it"
    );
}

/// The config parser: a YAML file, or `Key=Value` (the first `=` splits) as `-c` and the
/// environment give it.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = serde_norway::from_str::<Value>(text) {
        accepted_config(Config::from_value(doc), "a config file");
    }
    if let Some((key, raw)) = text.split_once('=') {
        let mut doc = serde_json::json!({});
        if set_in(&mut doc, key, raw).is_ok() {
            accepted_config(Config::from_value(doc), "an assignment");
        }
    }
}

fn accepted_config(c: Result<Config, caravel_model::config::Error>, by: &str) {
    let Ok(c) = c else {
        return;
    };
    if let Err(e) = c.validate() {
        panic!("{by} was accepted but fails validation: {e}");
    }
    let json = serde_json::to_value(&c).expect("a config serialises to JSON");
    let again = Config::from_value(json).unwrap_or_else(|e| {
        panic!("{by} was accepted but does not read back from its own JSON: {e}")
    });
    assert_eq!(again, c, "{by}: reading an accepted config back changes it");
    let _ = c.list();
    let shown = serde_json::to_value(c.redacted()).expect("a redacted config serialises");
    let users = shown["API"]["Auth"]["Users"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let secrets = users
        .iter()
        .flat_map(|u| {
            [
                ("a user's Password", &u["Password"]),
                ("a user's APIKey", &u["APIKey"]),
            ]
        })
        .chain([("Compute.Auth.Token", &shown["Compute"]["Auth"]["Token"])]);
    for (what, v) in secrets {
        let s = v.as_str().unwrap_or_default();
        assert!(
            s.is_empty() || s == REDACTED,
            "{by}: the redacted config still shows {what}"
        );
    }
}
