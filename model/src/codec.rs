//! The one binary codec for everything persisted (Raft log entries, snapshots, state-machine records)
//! and sent between nodes: postcard 1.x behind a two-byte format version (see
//! docs/adr/0001-postcard-codec.md). Postcard is not self-describing, so the rules are: enums only
//! gain variants at the end, struct fields never change (add a variant or a V2 type), no
//! `skip_serializing_if`/`flatten`/untagged enums in encoded types.

use serde::{Serialize, de::DeserializeOwned};

/// The format version written in front of every encoded value.
pub const FORMAT_VERSION: u16 = 1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("encoded data is empty or shorter than its 2-byte header")]
    Truncated,
    #[error(
        "data was written with format version {found}; this build reads version {expected}: upgrade Caravel to read it"
    )]
    Version { found: u16, expected: u16 },
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        source: postcard::Error,
    },
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
}

/// Encodes a value with the format header.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    postcard::to_extend(v, FORMAT_VERSION.to_le_bytes().to_vec()).map_err(|source| Error::Encode {
        what: std::any::type_name::<T>(),
        source,
    })
}

/// What [`encode`] makes of a value whose postcard encoding (`body`) is already at hand.
pub fn with_header(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Decodes a value written by [`encode`], refusing other format versions with a clear error.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Error> {
    if b.len() < 2 {
        return Err(Error::Truncated);
    }
    let found = u16::from_le_bytes([b[0], b[1]]);
    if found != FORMAT_VERSION {
        return Err(Error::Version {
            found,
            expected: FORMAT_VERSION,
        });
    }
    postcard::from_bytes(&b[2..]).map_err(|source| Error::Decode {
        what: std::any::type_name::<T>(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SpecConfig;

    #[test]
    fn params_survive_the_binary_codec() {
        let s = SpecConfig::new("docker")
            .with("Image", "busybox")
            .with("Parameters", serde_json::json!(["-c", 1, {"a": null}]));
        let back: SpecConfig = decode(&encode(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn other_format_versions_are_refused_with_both_versions_named() {
        let mut b = encode(&42u32).unwrap();
        b[0] = 9;
        let e = decode::<u32>(&b).unwrap_err().to_string();
        assert!(e.contains("version 9") && e.contains("version 1"), "{e}");
        assert!(matches!(decode::<u32>(&[1]), Err(Error::Truncated)));
    }

    #[test]
    fn a_body_with_the_header_is_what_encode_makes() {
        let v = ("job", 7u64, vec![1u8, 2, 3]);
        let body = postcard::to_allocvec(&v).unwrap();
        assert_eq!(with_header(&body), encode(&v).unwrap());
    }

    #[test]
    fn golden_bytes_of_a_command_do_not_change() {
        let c = crate::command::Command::StopJob {
            job_id: "j-1".into(),
            reason: "r".into(),
            evaluation_id: "e".into(),
            now: 5,
        };
        assert_eq!(
            encode(&c).unwrap(),
            vec![1, 0, 1, 3, b'j', b'-', b'1', 1, b'r', 1, b'e', 10]
        );
    }
}
