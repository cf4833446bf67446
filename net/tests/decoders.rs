//! The session decoders of untrusted bytes on stable: the fuzz targets (compiled from
//! `net/fuzz/src/lib.rs`) over their seeds and the committed corpus, plus property tests — frames
//! split arbitrarily across reads decode the same, and a `Hello` or `Heartbeat` naming any node but
//! the certificate's is refused.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use caravel_model::codec;
use caravel_model::execution::{Execution, ExecutionUpdate};
use caravel_model::node::NodeInfo;
use caravel_model::spec::Job;
use caravel_model::states::ExecutionStateType;
use caravel_model::wire::{ToCompute, ToOrchestrator};
use caravel_net::frame::{self, Frame};
use caravel_net::session::{self, Channel, check_claim, check_hello};
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("frames", targets::frames),
    ("to_orchestrator", targets::to_orchestrator),
    ("to_compute", targets::to_compute),
    ("hello", targets::hello),
];

fn info(id: &str) -> Box<NodeInfo> {
    let mut labels = BTreeMap::new();
    labels.insert("zone".to_string(), "eu-1".to_string());
    Box::new(NodeInfo {
        node_id: id.into(),
        node_type: "Compute".into(),
        labels,
        ..Default::default()
    })
}

fn update() -> ExecutionUpdate {
    ExecutionUpdate {
        execution_id: "e-1".into(),
        state: ExecutionStateType::Completed,
        message: "done".into(),
        run_output: None,
        published_result: None,
        topic: "Execution Completed".into(),
        time: 1_700_000_000_000_000_000,
    }
}

/// One message of every node → orchestrator variant.
fn orchestrator_messages() -> Vec<ToOrchestrator> {
    vec![
        ToOrchestrator::Hello {
            info: info(targets::CERT_NODE),
            last_seq: 41,
        },
        ToOrchestrator::Report {
            seq: 42,
            update: update(),
        },
        ToOrchestrator::Heartbeat {
            info: info(targets::CERT_NODE),
        },
        ToOrchestrator::LogLine {
            request_id: 7,
            stream: 1,
            line: "hello".into(),
        },
        ToOrchestrator::LogEnd {
            request_id: 7,
            error: String::new(),
        },
        ToOrchestrator::ResultChunk {
            request_id: 8,
            data: vec![0x1f, 0x8b, 8, 0],
        },
        ToOrchestrator::ResultEnd {
            request_id: 8,
            error: "no result".into(),
        },
        ToOrchestrator::Inventory {
            running: vec!["e-1".into(), "e-2".into()],
        },
        ToOrchestrator::LogLineAt {
            request_id: 9,
            stream: 2,
            line: "warn".into(),
            end_offset: 4096,
        },
    ]
}

/// One message of every orchestrator → node variant.
fn compute_messages() -> Vec<ToCompute> {
    vec![
        ToCompute::Run {
            execution: Box::new(Execution {
                id: "e-1".into(),
                node_id: "node-a".into(),
                ..Default::default()
            }),
            job: Box::new(Job {
                id: "j-1".into(),
                name: "wordcount".into(),
                ..Default::default()
            }),
        },
        ToCompute::Cancel {
            execution_id: "e-1".into(),
            reason: "stopped".into(),
        },
        ToCompute::Ack { seq: 42 },
        ToCompute::Logs {
            request_id: 7,
            execution_id: "e-1".into(),
            follow: true,
            tail: false,
        },
        ToCompute::FetchResult {
            request_id: 8,
            execution_id: "e-1".into(),
        },
        ToCompute::CancelRequest { request_id: 7 },
        ToCompute::LogsFrom {
            request_id: 9,
            execution_id: "e-1".into(),
            follow: false,
            stdout_offset: 10,
            stderr_offset: 20,
        },
    ]
}

fn channel_index(c: Channel) -> u8 {
    Channel::ALL.iter().position(|x| *x == c).unwrap() as u8
}

/// Seeds per target: valid inputs that reach deep into each decoder.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stream = Vec::new();
    for (i, m) in orchestrator_messages().iter().enumerate() {
        let (channel, framed) = session::encode_to_orchestrator(m).unwrap();
        let payload = &framed[frame::HEADER_LEN..];
        let mut input = vec![channel_index(channel)];
        input.extend_from_slice(payload);
        out.push(("to_orchestrator", format!("seed-{i}"), input));
        stream.extend_from_slice(&framed);
        if let ToOrchestrator::Hello { .. } = m {
            let mut input = vec![targets::CERT_NODE.len() as u8];
            input.extend_from_slice(targets::CERT_NODE.as_bytes());
            input.extend_from_slice(payload);
            out.push(("hello", "seed-own".into(), input.clone()));
            // The same Hello against another certificate.
            input[1] = b'N';
            out.push(("hello", "seed-other".into(), input));
        }
    }
    for (i, m) in compute_messages().iter().enumerate() {
        let (channel, framed) = session::encode_to_compute(m).unwrap();
        let mut input = vec![channel_index(channel)];
        input.extend_from_slice(&framed[frame::HEADER_LEN..]);
        out.push(("to_compute", format!("seed-{i}"), input));
        stream.extend_from_slice(&framed);
    }
    // A stream of every message, read in 5-byte pieces; then the same with a bad tail each way.
    let mut whole = vec![4u8];
    whole.extend_from_slice(&stream);
    out.push(("frames", "seed-stream".into(), whole.clone()));
    let mut oversized = whole.clone();
    oversized.extend_from_slice(&frame::encode(1, &vec![0u8; targets::FRAME_LIMIT + 1]));
    out.push(("frames", "seed-oversized".into(), oversized));
    let mut cut = whole.clone();
    cut.extend_from_slice(&frame::encode(3, b"cut short")[..15]);
    out.push(("frames", "seed-cut".into(), cut));
    let mut corrupt = whole;
    corrupt.extend_from_slice(&frame::encode(2, b"corrupt"));
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    out.push(("frames", "seed-corrupt".into(), corrupt));
    out
}

fn target(name: &str) -> Target {
    TARGETS.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn every_seed_passes_its_target_and_valid_messages_decode() {
    let seeds = seeds();
    for (name, _, input) in &seeds {
        target(name)(input);
    }
    // The seeds are meaningful: the valid ones decode (the targets return early otherwise).
    for (name, _, input) in seeds.iter().filter(|(n, _, _)| *n == "to_orchestrator") {
        let on = Channel::ALL[usize::from(input[0])];
        let f = Frame {
            kind: on.kind(),
            payload: Bytes::copy_from_slice(&input[1..]),
        };
        assert!(
            session::decode_to_orchestrator(on, &f).is_ok(),
            "{name} seed does not decode"
        );
    }
    assert_eq!(
        seeds.iter().filter(|(n, _, _)| *n == "to_compute").count(),
        compute_messages().len()
    );
    // CARAVEL_FUZZ_SEEDS_OUT=net/fuzz/corpus writes the seeds where `cargo fuzz run` starts from.
    if let Some(dir) = std::env::var_os("CARAVEL_FUZZ_SEEDS_OUT") {
        for (name, file, input) in &seeds {
            let d = PathBuf::from(&dir).join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), input).unwrap();
        }
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn the_committed_fuzz_corpus_passes_every_target() {
    for (name, run) in TARGETS {
        let dir = corpus_dir(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "the fuzz corpus {} is missing ({e}); it is committed with the repository",
                dir.display()
            )
        });
        let mut inputs = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let input = std::fs::read(&path).unwrap();
            // A panic names the input, so it can be replayed with `cargo fuzz run NAME PATH`.
            let outcome = std::panic::catch_unwind(|| run(&input));
            assert!(outcome.is_ok(), "{name} fails on {}", path.display());
            inputs += 1;
        }
        assert!(inputs > 0, "the fuzz corpus {} is empty", dir.display());
    }
}

/// A reader whose reads return the given piece sizes in turn (cycling).
struct Pieces {
    data: Vec<u8>,
    at: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let size = self.sizes[self.turn % self.sizes.len()];
        self.turn += 1;
        let n = size.min(self.data.len() - self.at).min(buf.remaining());
        let start = self.at;
        buf.put_slice(&self.data[start..start + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn node_id() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9.-]{0,20}"
}

/// A claimed id near `cert`: equal, or changed in one of the ways a forger would try.
fn near(cert: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(cert.clone()),
        Just(cert.to_uppercase()),
        Just(format!("{cert} ")),
        Just(format!("{cert}\0")),
        Just(cert.chars().skip(1).collect::<String>()),
        Just(format!("{cert}.evil")),
        any::<String>(),
        node_id(),
    ]
}

proptest! {
    /// Any sequence of frames, read through reads of arbitrary sizes, decodes to the same frames,
    /// and a stream cut anywhere inside its last frame is `Truncated`, never a different frame.
    #[test]
    fn frames_split_arbitrarily_across_reads_decode_the_same(
        frames in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..8),
        sizes in proptest::collection::vec(1usize..40, 1..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut stream = Vec::new();
        for (kind, payload) in &frames {
            stream.extend_from_slice(&frame::encode(*kind, payload));
        }
        let read_all = |data: Vec<u8>| {
            let mut r = Pieces { data, at: 0, sizes: sizes.clone(), turn: 0 };
            let mut got = Vec::new();
            let end = loop {
                match futures::executor::block_on(frame::read(&mut r, 1 << 10)) {
                    Ok(Some(f)) => got.push((f.kind, f.payload.to_vec())),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            (got, end)
        };
        let (got, end) = read_all(stream.clone());
        prop_assert!(end.is_none(), "{end:?}");
        prop_assert_eq!(&got, &frames);

        let last_len = frame::HEADER_LEN + frames.last().unwrap().1.len();
        let keep = stream.len() - last_len + cut.index(last_len);
        let (got, end) = read_all(stream[..keep].to_vec());
        prop_assert_eq!(&got[..], &frames[..frames.len() - 1]);
        if keep == stream.len() - last_len {
            prop_assert!(end.is_none(), "{end:?}");
        } else {
            prop_assert!(matches!(end, Some(frame::Error::Truncated)), "{end:?}");
        }
        // And the fuzz target's own cross-checks agree.
        let mut input = vec![sizes[0] as u8];
        input.extend_from_slice(&stream[..keep]);
        targets::frames(&input);
    }

    /// The orchestrator accepts a session's first frame only if it is a `Hello` naming the node of
    /// the certificate; a `Hello` claiming any other id is refused with both ids named, and so is a
    /// later `Heartbeat`.
    #[test]
    fn a_hello_or_heartbeat_naming_another_node_than_the_certificate_is_refused(
        (cert, claimed) in node_id().prop_flat_map(|c| (Just(c.clone()), near(c))),
        last_seq in any::<u64>(),
    ) {
        let hello = ToOrchestrator::Hello { info: info(&claimed), last_seq };
        let f = Frame {
            kind: Channel::Control.kind(),
            payload: Bytes::from(codec::encode(&hello).unwrap()),
        };
        let checked = check_hello(&cert, &f);
        let heartbeat = check_claim(&cert, &ToOrchestrator::Heartbeat { info: info(&claimed) });
        if claimed == cert {
            prop_assert_eq!(checked.unwrap(), hello);
            prop_assert!(heartbeat.is_ok());
        } else {
            match checked {
                Err(e @ session::Error::IdentityMismatch { .. }) => {
                    prop_assert_eq!(e.close_code(), session::CLOSE_REFUSED);
                    prop_assert_eq!(
                        e.to_string(),
                        format!("certificate is for {cert}, Hello claims {claimed}")
                    );
                }
                other => prop_assert!(false, "a Hello for {claimed:?} with a certificate for {cert:?} gave {other:?}"),
            }
            prop_assert!(
                matches!(heartbeat, Err(session::Error::IdentityMismatch { .. })),
                "{heartbeat:?}"
            );
        }
    }

    /// Arbitrary bytes never panic any target (and with the real corpus they run in CI).
    #[test]
    fn arbitrary_bytes_pass_every_target(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        for (_, run) in TARGETS {
            run(&data);
        }
    }
}

#[test]
fn a_first_message_other_than_hello_is_refused_as_not_hello() {
    for m in orchestrator_messages() {
        let (channel, framed) = session::encode_to_orchestrator(&m).unwrap();
        let f = Frame {
            kind: Channel::Control.kind(),
            payload: Bytes::copy_from_slice(&framed[frame::HEADER_LEN..]),
        };
        let checked = check_hello(targets::CERT_NODE, &f);
        match (&m, channel) {
            (ToOrchestrator::Hello { .. }, _) => assert_eq!(checked.unwrap(), m),
            (_, Channel::Control) => assert!(
                matches!(checked, Err(session::Error::NotHello(_))),
                "{m:?} gave {checked:?}"
            ),
            // Messages of other channels are refused before the Hello check, as on the wire.
            _ => assert!(
                matches!(checked, Err(session::Error::WrongChannel { .. })),
                "{m:?} gave {checked:?}"
            ),
        }
    }
}
