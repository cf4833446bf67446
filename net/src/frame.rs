//! Frames: how every Caravel message crosses a QUIC stream.
//!
//! ```text
//!   0        4        6      7        11
//!   ┌────────┬────────┬──────┬────────┬──────────────┐
//!   │ len u32│ ver u16│kind u8│crc32 u32│ payload (len) │   all integers big-endian
//!   └────────┴────────┴──────┴────────┴──────────────┘
//! ```
//!
//! `len` is the payload length and is checked against the reader's limit *before* anything is
//! allocated; `ver` is [`PROTOCOL_VERSION`] (a peer speaking another version is refused with both
//! numbers in the message); `crc32` (IEEE) covers `kind` and the payload, so a corrupted or truncated
//! frame is an error, never a wrong message. A frame that does not decode ends that stream (and the
//! caller closes that one connection); it never panics.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The version of Caravel's wire protocol (frames and the messages inside them).
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 11;
/// Default cap of one frame's payload (a Raft append batch or a 3 MiB snapshot chunk fits).
pub const DEFAULT_MAX_FRAME: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("frame of {len} bytes is larger than the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error(
        "peer speaks Caravel protocol version {theirs}, this node speaks version {ours}: upgrade the older side"
    )]
    Version { theirs: u16, ours: u16 },
    #[error("frame checksum mismatch (corrupted frame)")]
    Checksum,
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Bytes,
}

fn checksum(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Encodes one frame.
pub fn encode(kind: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(HEADER_LEN + payload.len());
    b.put_u32(payload.len() as u32);
    b.put_u16(PROTOCOL_VERSION);
    b.put_u8(kind);
    b.put_u32(checksum(kind, payload));
    b.put_slice(payload);
    b.freeze()
}

/// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are needed; on success
/// the frame's bytes are consumed.
pub fn decode(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, Error> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut h = &buf[..HEADER_LEN];
    let len = h.get_u32() as usize;
    let ver = h.get_u16();
    let kind = h.get_u8();
    let crc = h.get_u32();
    if ver != PROTOCOL_VERSION {
        return Err(Error::Version {
            theirs: ver,
            ours: PROTOCOL_VERSION,
        });
    }
    if len > limit {
        return Err(Error::TooLarge { len, limit });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let payload = buf.split_to(len).freeze();
    if checksum(kind, &payload) != crc {
        return Err(Error::Checksum);
    }
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> Result<(), Error> {
    w.write_all(&encode(kind, payload)).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, limit: usize) -> Result<Option<Frame>, Error> {
    let Some(header) = read_header(r, limit).await? else {
        return Ok(None);
    };
    read_payload(r, header, limit).await.map(Some)
}

/// Like [`read`], but the payload is read only once `budget` grants as many permits as the header
/// announces (bytes shared by every stream of one connection); the permit comes back with the
/// frame, to be held while the frame is handled. A peer cannot make the reader hold more payload
/// bytes in all its streams together than the budget, however many streams it opens.
pub async fn read_budgeted<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<Option<(Frame, tokio::sync::OwnedSemaphorePermit)>, Error> {
    let Some(header) = read_header(r, limit).await? else {
        return Ok(None);
    };
    let want = u32::try_from(header.len().max(1)).unwrap_or(u32::MAX);
    let permit = budget
        .clone()
        .acquire_many_owned(want)
        .await
        .map_err(|_| Error::Io(std::io::Error::other("the connection is closing")))?;
    let frame = read_payload(r, header, limit).await?;
    Ok(Some((frame, permit)))
}

/// A frame's header, its version and announced size checked.
#[derive(Debug, Clone, Copy)]
struct Header([u8; HEADER_LEN]);

impl Header {
    fn len(&self) -> usize {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]]) as usize
    }
}

async fn read_header<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<Header>, Error> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(Error::Truncated)
            };
        }
        got += n;
    }
    // Checks version and size from the header alone (an empty payload decodes at once; that is
    // left to `read_payload`).
    let mut probe = BytesMut::from(&header[..]);
    decode(&mut probe, limit)?;
    Ok(Some(Header(header)))
}

async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    header: Header,
    limit: usize,
) -> Result<Frame, Error> {
    let mut buf = BytesMut::from(&header.0[..]);
    // The buffer grows as bytes arrive, never from the announced length alone: a peer that
    // announces 16 MiB and sends nothing costs a few kilobytes, not 16 MiB of zeroes.
    let mut remaining = header.len();
    // On the heap: a 64 KiB array would live in every future that reads a frame (and be copied
    // across stack frames each time one is spawned in a debug build).
    let mut chunk = vec![0u8; remaining.min(READ_CHUNK)];
    while remaining > 0 {
        let want = remaining.min(READ_CHUNK);
        let n = r.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(Error::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
        remaining -= n;
    }
    decode(&mut buf, limit)?.ok_or(Error::Truncated)
}

/// How much of a frame's payload is read at a time.
const READ_CHUNK: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips() {
        let mut b = BytesMut::from(&encode(7, b"hello")[..]);
        let f = decode(&mut b, 100).unwrap().unwrap();
        assert_eq!((f.kind, &f.payload[..]), (7, &b"hello"[..]));
        assert!(b.is_empty());
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_error() {
        let mut raw = encode(1, b"payload").to_vec();
        raw[HEADER_LEN + 2] ^= 0x10;
        let err = decode(&mut BytesMut::from(&raw[..]), 100).unwrap_err();
        assert!(matches!(err, Error::Checksum), "{err}");
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let mut raw = encode(1, b"x").to_vec();
        raw[4..6].copy_from_slice(&9u16.to_be_bytes());
        let err = decode(&mut BytesMut::from(&raw[..]), 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer speaks Caravel protocol version 9, this node speaks version 1: upgrade the older side"
        );
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading_the_payload() {
        let mut raw = encode(1, b"x").to_vec();
        raw[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = decode(&mut BytesMut::from(&raw[..HEADER_LEN]), 1024).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn reading_a_truncated_stream_is_an_error_and_an_empty_one_is_the_end() {
        let raw = encode(3, b"abcdef");
        let mut short = &raw[..raw.len() - 2];
        assert!(matches!(read(&mut short, 100).await, Err(Error::Truncated)));
        let mut empty: &[u8] = &[];
        assert!(read(&mut empty, 100).await.unwrap().is_none());
        let mut whole = &raw[..];
        assert_eq!(read(&mut whole, 100).await.unwrap().unwrap().kind, 3);
    }

    #[tokio::test]
    async fn a_budgeted_read_waits_for_its_bytes_and_holds_them() {
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(10));
        let raw = encode(1, b"eight by");
        let (f, permit) = read_budgeted(&mut &raw[..], 100, &budget)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&f.payload[..], b"eight by");
        assert_eq!(budget.available_permits(), 2);
        // A second frame of 8 bytes waits until the first is released.
        let raw2 = encode(2, b"8 bytes!");
        let mut r2 = &raw2[..];
        let mut second = std::pin::pin!(read_budgeted(&mut r2, 100, &budget));
        assert!(futures_poll_once(second.as_mut()).await.is_none());
        drop(permit);
        let (f2, _p) = second.await.unwrap().unwrap();
        assert_eq!(f2.kind, 2);
        // An oversized announcement is refused before any budget is taken.
        let mut big = encode(1, b"x").to_vec();
        big[0..4].copy_from_slice(&1000u32.to_be_bytes());
        let err = read_budgeted(&mut &big[..], 100, &budget)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    /// Polls a future once: `Some` if it finished.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes to the same bytes.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut b = BytesMut::from(&data[..]);
            if let Ok(Some(f)) = decode(&mut b, 1 << 10) {
                let again = encode(f.kind, &f.payload);
                prop_assert_eq!(&again[..], &data[..HEADER_LEN + f.payload.len()]);
            }
        }

        #[test]
        fn any_frame_round_trips_even_split_into_pieces(kind: u8, payload in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..320) {
            let raw = encode(kind, &payload);
            let cut = cut.min(raw.len());
            let mut b = BytesMut::from(&raw[..cut]);
            let first = decode(&mut b, 1 << 10).unwrap();
            if cut < raw.len() {
                prop_assert!(first.is_none());
                b.extend_from_slice(&raw[cut..]);
                let f = decode(&mut b, 1 << 10).unwrap().unwrap();
                prop_assert_eq!(f.payload.to_vec(), payload);
            } else {
                prop_assert_eq!(first.unwrap().payload.to_vec(), payload);
            }
        }
    }
}
