//! The record of an upload in progress: one object per upload, rewritten by every append.
//!
//! It holds the multipart upload the bytes go to, the ETags of the parts written so far, and
//! the tail: the bytes received since the last part, too few to be a part of their own (S3
//! wants 5 MiB for every part but the last). Keeping tail and part list in one object makes an
//! append a single PUT, so an append is all or nothing and any replica can continue from the
//! record alone.
//!
//! ```text
//! berth-upload 1 <size> <header length>\n
//! <header: JSON {"multipart": …, "parts": [ETag, …], "parts_bytes": …}>
//! <tail bytes>
//! ```
//!
//! The first line carries the size, so [`upload_size`](super::S3BlobStore) reads a few bytes
//! instead of the whole record.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

const MAGIC: &str = "berth-upload 1";
/// Enough of the record's start to hold its first line.
pub const FIRST_LINE_MAX: u64 = 64;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// The S3 multipart upload, once the upload outgrew its first part.
    pub multipart: Option<String>,
    /// ETags of the parts written, in part-number order (part `n` is `parts[n - 1]`).
    pub parts: Vec<String>,
    /// Bytes in those parts.
    pub parts_bytes: u64,
    /// The hash state over every byte of the upload (hex of `Hasher::state`), written in the
    /// same PUT as the bytes it covers: a commit checks the digest against it, so the blob's
    /// bytes hash to its name even if two replicas raced on one upload on a server that
    /// ignores conditional writes.
    #[serde(default)]
    pub hash_state: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct UploadRecord {
    pub header: Header,
    /// Bytes after the last part.
    pub tail: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("the upload record is damaged: {0}")]
pub struct Damaged(&'static str);

impl UploadRecord {
    /// Bytes the upload holds.
    pub fn size(&self) -> u64 {
        self.header.parts_bytes + self.tail.len() as u64
    }

    pub fn encode(&self) -> Bytes {
        // Serializing a struct of strings and integers cannot fail.
        let header = serde_json::to_vec(&self.header).unwrap_or_default();
        let first = format!("{MAGIC} {} {}\n", self.size(), header.len());
        let mut out = BytesMut::with_capacity(first.len() + header.len() + self.tail.len());
        out.extend_from_slice(first.as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.tail);
        out.freeze()
    }

    pub fn decode(bytes: Bytes) -> Result<UploadRecord, Damaged> {
        let (size, header_len, start) = first_line(&bytes)?;
        let header_end = start
            .checked_add(header_len)
            .filter(|&end| end <= bytes.len())
            .ok_or(Damaged("header cut short"))?;
        let header: Header = serde_json::from_slice(&bytes[start..header_end])
            .map_err(|_| Damaged("header is not JSON"))?;
        let record = UploadRecord {
            header,
            tail: bytes.slice(header_end..),
        };
        if record.size() != size {
            return Err(Damaged("size does not match its parts and tail"));
        }
        Ok(record)
    }
}

/// The size an encoded record states, from its first bytes.
pub fn stated_size(start: &[u8]) -> Result<u64, Damaged> {
    first_line(start).map(|(size, _, _)| size)
}

/// `(size, header length, offset of the header)`.
fn first_line(bytes: &[u8]) -> Result<(u64, usize, usize), Damaged> {
    let newline = bytes
        .iter()
        .take(FIRST_LINE_MAX as usize)
        .position(|&b| b == b'\n')
        .ok_or(Damaged("no first line"))?;
    let line = std::str::from_utf8(&bytes[..newline]).map_err(|_| Damaged("first line"))?;
    let rest = line
        .strip_prefix(MAGIC)
        .ok_or(Damaged("not an upload record"))?;
    let mut fields = rest.split_ascii_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(size)), Some(Ok(header)), None) => {
            let header = usize::try_from(header).map_err(|_| Damaged("header length"))?;
            Ok((size, header, newline + 1))
        }
        _ => Err(Damaged("first line fields")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_states_its_size_up_front() {
        let record = UploadRecord {
            header: Header {
                multipart: Some("mp-1".into()),
                parts: vec!["\"e1\"".into(), "\"e2\"".into()],
                parts_bytes: 20 << 20,
                hash_state: Some("00ff".into()),
            },
            tail: Bytes::from_static(b"tail bytes\nwith a newline"),
        };
        let bytes = record.encode();
        assert_eq!(UploadRecord::decode(bytes.clone()).unwrap(), record);
        let start = &bytes[..FIRST_LINE_MAX as usize];
        assert_eq!(stated_size(start).unwrap(), record.size());
        let empty = UploadRecord::default();
        assert_eq!(UploadRecord::decode(empty.encode()).unwrap(), empty);
    }

    #[test]
    fn damage_is_detected() {
        let mut bytes = UploadRecord::default().encode().to_vec();
        bytes.extend_from_slice(b"extra");
        assert!(
            UploadRecord::decode(Bytes::from(bytes)).is_err(),
            "size check"
        );
        assert!(UploadRecord::decode(Bytes::from_static(b"<html>")).is_err());
        assert!(stated_size(b"berth-upload 1 12\n").is_err());
    }
}
