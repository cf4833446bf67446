//! Decoders of untrusted bytes never panic: the binary codec (Raft log, snapshots, wire) and the job
//! spec parser (API bodies, CLI files).

use caravel_model::codec;
use caravel_model::command::Command;
use caravel_model::parse::{Mode, parse_job};
use caravel_model::state::ClusterState;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_codec_rejects_garbage_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Command>(&bytes);
        let _ = codec::decode::<ToCompute>(&bytes);
        let _ = codec::decode::<ToOrchestrator>(&bytes);
        let _ = ClusterState::from_snapshot(&bytes);
    }

    #[test]
    fn the_codec_rejects_corrupted_commands_without_panicking(flip in 0usize..64, bit in 0u8..8) {
        let c = Command::StopJob { job_id: "j-1234".into(), reason: "because".into(), evaluation_id: "ev".into(), now: 42 };
        let mut b = codec::encode(&c).unwrap();
        let i = flip % b.len();
        b[i] ^= 1 << bit;
        let _ = codec::decode::<Command>(&b);
    }

    #[test]
    fn the_spec_parser_rejects_garbage_without_panicking(text in "\\PC{0,300}") {
        let _ = parse_job(text.as_bytes(), Mode::Server);
    }

    #[test]
    fn the_spec_parser_survives_arbitrary_yaml_shapes(key in "[A-Za-z]{1,12}", val in "[ -~]{0,20}") {
        let spec = format!("Name: x\nTasks:\n  - Name: main\n    {key}: {val:?}\n    Engine: {{Type: wasm, Params: {{{key}: {val:?}}}}}\n");
        let _ = parse_job(spec.as_bytes(), Mode::Client);
    }
}
