//! The fuzz targets of the compute session decoders, as plain functions: each takes arbitrary bytes,
//! must never panic on its own, and panics (a finding) only when a decoder breaks one of its
//! promises — a frame larger than the limit accepted or waited for, a frame stream that decodes
//! differently when split across reads, a decoded message that does not re-encode to itself, a
//! message accepted on the wrong channel, a `Hello` accepted for another node than the
//! certificate's.
//!
//! The cargo-fuzz binaries in `fuzz_targets/` call these, and `net/tests/decoders.rs` compiles this
//! very file (`#[path]`) to run the committed corpus and the seeds through them in every
//! `cargo test`, on stable.
//!
//! Running the fuzzer (cargo-fuzz needs nightly flags; on the pinned stable toolchain
//! `RUSTC_BOOTSTRAP=1` unlocks them), from `net/fuzz`:
//!
//! ```text
//! cargo install cargo-fuzz --locked            # once
//! export CARGO_TARGET_DIR=$HOME/.cache/caravel-target
//! RUSTC_BOOTSTRAP=1 cargo fuzz run frames corpus/frames -- -max_total_time=60
//! RUSTC_BOOTSTRAP=1 cargo fuzz run to_orchestrator corpus/to_orchestrator -- -max_total_time=60
//! RUSTC_BOOTSTRAP=1 cargo fuzz run to_compute corpus/to_compute -- -max_total_time=60
//! RUSTC_BOOTSTRAP=1 cargo fuzz run hello corpus/hello -- -max_total_time=60
//! RUSTC_BOOTSTRAP=1 cargo fuzz cmin <target> corpus/<target>     # before committing new inputs
//! ```
//!
//! The seeds (a valid encoding of every message variant, per target) are written into `corpus/` by
//! `CARAVEL_FUZZ_SEEDS_OUT=$PWD/net/fuzz/corpus cargo test -p caravel-net --test decoders` (from the
//! repository root; the test runs in `net/`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use caravel_model::wire::ToOrchestrator;
use caravel_net::frame::{self, Frame};
use caravel_net::session::{
    self, Channel, check_claim, check_hello, compute_channel, decode_to_compute,
    decode_to_orchestrator, encode_to_compute, encode_to_orchestrator, orchestrator_channel,
};
use tokio::io::{AsyncRead, ReadBuf};

/// The frame limit the `frames` target decodes with: small, so oversized frames are easy to reach.
pub const FRAME_LIMIT: usize = 1024;

/// The node id of the certificate in the `to_orchestrator` target's claim check.
pub const CERT_NODE: &str = "node-a";

/// How decoding a whole byte stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every byte was consumed by whole frames.
    Clean,
    /// This many bytes of an incomplete frame were left.
    Partial(usize),
    /// A frame was refused.
    Refused(Refusal),
}

/// A decoder error, without the parts (I/O sources) that do not compare.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    TooLarge { len: usize, limit: usize },
    Version { theirs: u16 },
    Checksum,
    Truncated,
    Io,
}

fn refusal(e: &frame::Error) -> Refusal {
    match e {
        frame::Error::TooLarge { len, limit } => Refusal::TooLarge {
            len: *len,
            limit: *limit,
        },
        frame::Error::Version { theirs, .. } => Refusal::Version { theirs: *theirs },
        frame::Error::Checksum => Refusal::Checksum,
        frame::Error::Truncated => Refusal::Truncated,
        frame::Error::Io(_) => Refusal::Io,
    }
}

/// The length a complete header announces.
fn announced(header: &[u8]) -> usize {
    u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize
}

/// Decodes `stream` fed to [`frame::decode`] in pieces of `piece` bytes (`usize::MAX`: all at once),
/// checking on the way that every frame is within the limit and re-encodes to the bytes it came
/// from, and that the decoder never waits for the payload of an oversized frame.
fn decode_fed(stream: &[u8], piece: usize) -> (Vec<Frame>, End) {
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    loop {
        let take = piece.min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + take]);
        fed += take;
        loop {
            let before = buf.clone();
            match frame::decode(&mut buf, FRAME_LIMIT) {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= FRAME_LIMIT, "a frame over the limit");
                    let used = before.len() - buf.len();
                    assert_eq!(
                        &frame::encode(f.kind, &f.payload)[..],
                        &before[..used],
                        "a decoded frame does not re-encode to its bytes"
                    );
                    frames.push(f);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before.len(), "waiting consumed bytes");
                    if buf.len() >= frame::HEADER_LEN {
                        assert!(
                            announced(&buf) <= FRAME_LIMIT,
                            "the decoder waits for the payload of an oversized frame"
                        );
                    }
                    break;
                }
                Err(e) => return (frames, End::Refused(refusal(&e))),
            }
        }
        if fed == stream.len() {
            let end = if buf.is_empty() {
                End::Clean
            } else {
                End::Partial(buf.len())
            };
            return (frames, end);
        }
    }
}

/// An async reader that hands out at most `piece` bytes per read.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.piece.min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// Reads `stream` with [`frame::read`] through reads of at most `piece` bytes.
fn read_fed(stream: &[u8], piece: usize) -> (Vec<Frame>, End) {
    let mut r = Pieces {
        data: stream,
        piece,
    };
    let mut frames = Vec::new();
    loop {
        match futures::executor::block_on(frame::read(&mut r, FRAME_LIMIT)) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, End::Clean),
            Err(e) => return (frames, End::Refused(refusal(&e))),
        }
    }
}

/// Target `frames`: the first byte picks a piece size, the rest is a byte stream of frames.
/// Decoding it whole, fed in pieces, and read through short reads must give the same frames and
/// the same ending.
pub fn frames(data: &[u8]) {
    let Some((&p, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(p % 23) + 1;
    let whole = decode_fed(stream, usize::MAX);
    let fed = decode_fed(stream, piece);
    assert_eq!(
        whole, fed,
        "split across feeds, the stream decodes differently"
    );
    let (frames, end) = whole;
    let read = read_fed(stream, piece);
    // `read` reports a stream cut inside a frame as `Truncated`, and stops at the first error.
    let expected_end = match end {
        End::Clean => End::Clean,
        End::Partial(_) => End::Refused(Refusal::Truncated),
        refused => refused,
    };
    assert_eq!(
        read,
        (frames, expected_end),
        "frame::read disagrees with frame::decode"
    );
}

/// The frame a selector byte and a payload make: the low bits pick the channel read on; with the
/// high bit set, the next bits pick the frame's kind byte (which may name another channel or none).
fn framed(sel: u8, payload: &[u8]) -> (Channel, Frame) {
    let on = Channel::ALL[usize::from(sel & 0x7) % Channel::ALL.len()];
    let kind = if sel & 0x80 != 0 {
        (sel >> 3) & 0x7
    } else {
        on.kind()
    };
    let f = Frame {
        kind,
        payload: Bytes::copy_from_slice(payload),
    };
    (on, f)
}

/// Encoding a message decoded from untrusted bytes, then decoding and encoding it again, gives the
/// same bytes (the decoder accepts nothing the encoder cannot write).
fn reencodes<M>(
    m: &M,
    on: Channel,
    encode: impl Fn(&M) -> Result<(Channel, Bytes), session::Error>,
    decode: impl Fn(Channel, &Frame) -> Result<M, session::Error>,
) {
    let (channel, first) = encode(m).expect("a decoded message encodes");
    assert_eq!(channel, on, "re-encoded onto another channel");
    let mut b = BytesMut::from(&first[..]);
    let f = frame::decode(&mut b, usize::MAX)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is complete");
    let again = decode(on, &f).expect("an encoded message decodes");
    let (_, second) = encode(&again).expect("a decoded message encodes");
    assert_eq!(first, second, "a message does not survive a round trip");
}

/// Target `to_orchestrator`: node → orchestrator decoding (first byte: channel and kind, rest: the
/// payload). Whatever decodes belongs on the channel it was read on, carried that channel's kind,
/// re-encodes to itself, and a `Hello`/`Heartbeat` passes the claim check only for its own node.
pub fn to_orchestrator(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let (on, f) = framed(sel, payload);
    let Ok(m) = decode_to_orchestrator(on, &f) else {
        return;
    };
    assert_eq!(
        orchestrator_channel(&m),
        on,
        "accepted on the wrong channel"
    );
    assert_eq!(f.kind, on.kind(), "accepted with another channel's kind");
    reencodes(&m, on, encode_to_orchestrator, decode_to_orchestrator);
    let claimed = match &m {
        ToOrchestrator::Hello { info, .. } | ToOrchestrator::Heartbeat { info } => {
            Some(info.node_id.as_str())
        }
        _ => None,
    };
    match (claimed, check_claim(CERT_NODE, &m)) {
        (Some(id), Ok(())) => assert_eq!(id, CERT_NODE, "another node's claim accepted"),
        (Some(id), Err(session::Error::IdentityMismatch { .. })) => {
            assert_ne!(id, CERT_NODE, "the certificate's own node refused")
        }
        (None, Ok(())) => {}
        (claimed, r) => panic!("claim check of {claimed:?} gave {r:?}"),
    }
}

/// Target `to_compute`: orchestrator → node decoding, same promises as [`to_orchestrator`].
pub fn to_compute(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let (on, f) = framed(sel, payload);
    let Ok(m) = decode_to_compute(on, &f) else {
        return;
    };
    assert_eq!(compute_channel(&m), on, "accepted on the wrong channel");
    assert_eq!(f.kind, on.kind(), "accepted with another channel's kind");
    reencodes(&m, on, encode_to_compute, decode_to_compute);
}

/// Target `hello`: the orchestrator's check of a session's first control frame. The first byte is
/// the length of the certificate's node id that follows; the rest is the frame's payload. Accepted
/// means a `Hello` of exactly that node; a `Hello` of any other node is refused as an identity
/// mismatch, any other message as "not Hello", and undecodable bytes as a protocol error.
pub fn hello(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (cert, payload) = rest.split_at(n);
    let cert = String::from_utf8_lossy(cert);
    let f = Frame {
        kind: Channel::Control.kind(),
        payload: Bytes::copy_from_slice(payload),
    };
    let checked = check_hello(&cert, &f);
    match decode_to_orchestrator(Channel::Control, &f) {
        Ok(ToOrchestrator::Hello { info, .. }) if info.node_id == cert => {
            assert!(
                checked.is_ok(),
                "the certificate's own Hello refused: {checked:?}"
            )
        }
        Ok(ToOrchestrator::Hello { .. }) => assert!(
            matches!(checked, Err(session::Error::IdentityMismatch { .. })),
            "a Hello for another node gave {checked:?}"
        ),
        Ok(_) => assert!(
            matches!(checked, Err(session::Error::NotHello(_))),
            "a first message other than Hello gave {checked:?}"
        ),
        Err(_) => assert!(
            matches!(
                checked,
                Err(session::Error::Decode { .. } | session::Error::WrongChannel { .. })
            ),
            "undecodable bytes gave {checked:?}"
        ),
    }
}
