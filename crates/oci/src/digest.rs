//! Content digests (`<algorithm>:<hex>`) and the streaming hashers that produce them.

use std::fmt;
use std::str::FromStr;

/// The digest algorithms the registry accepts end to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the lowercase hex encoding of a digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn hasher(self) -> Hasher {
        Hasher::new(self)
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(DigestError::UnsupportedAlgorithm(s.to_owned())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form <algorithm>:<hex>")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("digest {0:?} has an encoded part of the wrong length or with characters other than lowercase hex")]
    BadEncoding(String),
}

/// A validated content digest. The string form is kept so that formatting is free.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    text: String,
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded (hex) part after the colon.
    pub fn hex(&self) -> &str {
        &self.text[self.algorithm.as_str().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Digest of a complete byte slice (manifests, tests).
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut h = algorithm.hasher();
        h.update(bytes);
        h.finish()
    }

    pub fn sha256_of(bytes: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, bytes)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        if alg.is_empty() || hex.is_empty() {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        let algorithm: Algorithm = alg.parse()?;
        let hex_ok = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(DigestError::BadEncoding(s.to_owned()));
        }
        Ok(Digest {
            algorithm,
            text: s.to_owned(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A streaming hasher for one of the supported algorithms whose state can be saved and
/// restored ([`Hasher::state`], [`Hasher::from_state`]): an upload continues on another
/// replica, or after a restart, without reading back the bytes already received.
///
/// The compression functions are `sha2`'s (with SHA-NI where the CPU has it); only the
/// buffering and the final padding (FIPS 180-4) are done here, so the state is ours to keep.
#[derive(Clone)]
pub struct Hasher {
    state: State,
    /// Bytes of an incomplete block.
    buffer: [u8; 128],
    buffered: usize,
    /// Bytes hashed so far.
    length: u64,
}

#[derive(Clone, PartialEq, Eq)]
enum State {
    Sha256([u32; 8]),
    Sha512([u64; 8]),
}

const SHA256_INIT: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];
const SHA512_INIT: [u64; 8] = [
    0x6a09e667f3bcc908,
    0xbb67ae8584caa73b,
    0x3c6ef372fe94f82b,
    0xa54ff53a5f1d36f1,
    0x510e527fade682d1,
    0x9b05688c2b3e6c1f,
    0x1f83d9abfb41bd6b,
    0x5be0cd19137e2179,
];

/// A saved hasher state that cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("saved hash state is not valid: {0}")]
pub struct HashStateError(&'static str);

/// Compresses whole blocks of `B` bytes.
fn compress(state: &mut State, blocks: &[u8]) {
    use sha2::digest::generic_array::typenum::{U128, U64};
    use sha2::digest::generic_array::GenericArray;
    match state {
        State::Sha256(s) => {
            let (blocks, rest) = blocks.as_chunks::<64>();
            debug_assert!(rest.is_empty());
            // SAFETY: GenericArray<u8, U64> is #[repr(transparent)] over [u8; 64] (as sha2
            // itself relies on in the opposite direction), so the slices have one layout.
            let blocks = unsafe {
                std::slice::from_raw_parts(
                    blocks.as_ptr().cast::<GenericArray<u8, U64>>(),
                    blocks.len(),
                )
            };
            sha2::compress256(s, blocks);
        }
        State::Sha512(s) => {
            let (blocks, rest) = blocks.as_chunks::<128>();
            debug_assert!(rest.is_empty());
            // SAFETY: as above, for GenericArray<u8, U128> over [u8; 128].
            let blocks = unsafe {
                std::slice::from_raw_parts(
                    blocks.as_ptr().cast::<GenericArray<u8, U128>>(),
                    blocks.len(),
                )
            };
            sha2::compress512(s, blocks);
        }
    }
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Hasher {
        let state = match algorithm {
            Algorithm::Sha256 => State::Sha256(SHA256_INIT),
            Algorithm::Sha512 => State::Sha512(SHA512_INIT),
        };
        Hasher {
            state,
            buffer: [0; 128],
            buffered: 0,
            length: 0,
        }
    }

    fn block_len(&self) -> usize {
        match self.state {
            State::Sha256(_) => 64,
            State::Sha512(_) => 128,
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        let block = self.block_len();
        self.length += bytes.len() as u64;
        if self.buffered > 0 {
            let take = (block - self.buffered).min(bytes.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&bytes[..take]);
            self.buffered += take;
            bytes = &bytes[take..];
            if self.buffered < block {
                return;
            }
            let full = self.buffer;
            compress(&mut self.state, &full[..block]);
            self.buffered = 0;
        }
        let whole = bytes.len() / block * block;
        if whole > 0 {
            compress(&mut self.state, &bytes[..whole]);
        }
        let rest = &bytes[whole..];
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.state {
            State::Sha256(_) => Algorithm::Sha256,
            State::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    pub fn finish(mut self) -> Digest {
        let block = self.block_len();
        let length_field = if block == 64 { 8 } else { 16 };
        let bits = u128::from(self.length) * 8;
        let mut tail = [0u8; 256];
        let used = self.buffered;
        tail[..used].copy_from_slice(&self.buffer[..used]);
        tail[used] = 0x80;
        let total = if used + 1 + length_field <= block {
            block
        } else {
            2 * block
        };
        let bits_be = bits.to_be_bytes();
        tail[total - length_field..total].copy_from_slice(&bits_be[16 - length_field..]);
        compress(&mut self.state, &tail[..total]);
        let (algorithm, hex) = match &self.state {
            State::Sha256(s) => (
                Algorithm::Sha256,
                s.iter().map(|w| format!("{w:08x}")).collect::<String>(),
            ),
            State::Sha512(s) => (
                Algorithm::Sha512,
                s.iter().map(|w| format!("{w:016x}")).collect::<String>(),
            ),
        };
        Digest {
            algorithm,
            text: format!("{algorithm}:{hex}"),
        }
    }

    /// The state to save: algorithm, length, chaining values, the incomplete block.
    pub fn state(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 8 + 64 + self.buffered);
        match &self.state {
            State::Sha256(s) => {
                out.push(1);
                out.extend_from_slice(&self.length.to_be_bytes());
                s.iter()
                    .for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
            }
            State::Sha512(s) => {
                out.push(2);
                out.extend_from_slice(&self.length.to_be_bytes());
                s.iter()
                    .for_each(|w| out.extend_from_slice(&w.to_be_bytes()));
            }
        }
        out.extend_from_slice(&self.buffer[..self.buffered]);
        out
    }

    /// Restores a hasher from [`Hasher::state`].
    pub fn from_state(saved: &[u8]) -> Result<Hasher, HashStateError> {
        let (&kind, rest) = saved.split_first().ok_or(HashStateError("empty"))?;
        if rest.len() < 8 {
            return Err(HashStateError("too short"));
        }
        let (length, rest) = rest.split_at(8);
        let length = u64::from_be_bytes(length.try_into().map_err(|_| HashStateError("length"))?);
        let mut h = match kind {
            1 => Hasher::new(Algorithm::Sha256),
            2 => Hasher::new(Algorithm::Sha512),
            _ => return Err(HashStateError("unknown algorithm")),
        };
        let words = match &mut h.state {
            State::Sha256(s) => {
                let (words, _) = rest.as_chunks::<4>();
                for (w, chunk) in s.iter_mut().zip(words) {
                    *w = u32::from_be_bytes(*chunk);
                }
                32
            }
            State::Sha512(s) => {
                let (words, _) = rest.as_chunks::<8>();
                for (w, chunk) in s.iter_mut().zip(words) {
                    *w = u64::from_be_bytes(*chunk);
                }
                64
            }
        };
        if rest.len() < words {
            return Err(HashStateError("too short"));
        }
        let buffered = &rest[words..];
        if buffered.len() >= h.block_len()
            || (length % h.block_len() as u64) as usize != buffered.len()
        {
            return Err(HashStateError(
                "the incomplete block does not match the length",
            ));
        }
        h.buffer[..buffered.len()].copy_from_slice(buffered);
        h.buffered = buffered.len();
        h.length = length;
        Ok(h)
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hasher({}, {} bytes)", self.algorithm(), self.length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_formats_sha256() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string(), EMPTY_SHA256);
        assert_eq!(Digest::sha256_of(b""), d);
    }

    #[test]
    fn hashes_sha512() {
        let d = Digest::of(Algorithm::Sha512, b"");
        assert!(d.as_str().starts_with("sha512:cf83e135"));
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} accepted");
        }
    }

    /// Against sha2's own implementation, at every split of awkward lengths, for both
    /// algorithms; and through a save and restore at each split.
    #[test]
    fn matches_sha2_and_survives_save_and_restore() {
        use sha2::Digest as _;
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        for len in [
            0, 1, 55, 56, 63, 64, 65, 111, 112, 119, 127, 128, 129, 300, 1000,
        ] {
            let input = &data[..len];
            let want256 = format!("sha256:{}", hex::encode(sha2::Sha256::digest(input)));
            let want512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(input)));
            for (alg, want) in [(Algorithm::Sha256, &want256), (Algorithm::Sha512, &want512)] {
                assert_eq!(
                    Digest::of(alg, input).as_str(),
                    want.as_str(),
                    "{alg} {len}"
                );
                for split in [0, 1.min(len), len / 3, len / 2, len.saturating_sub(1), len] {
                    let mut h = alg.hasher();
                    h.update(&input[..split]);
                    let mut resumed = Hasher::from_state(&h.state()).unwrap();
                    assert_eq!(resumed.len(), split as u64);
                    resumed.update(&input[split..]);
                    assert_eq!(
                        resumed.finish().as_str(),
                        want.as_str(),
                        "{alg} {len} at {split}"
                    );
                }
            }
        }
        assert!(Hasher::from_state(&[]).is_err());
        assert!(Hasher::from_state(&[9; 50]).is_err());
        let mut h = Algorithm::Sha256.hasher();
        h.update(b"abc");
        let mut broken = h.state();
        broken.pop();
        assert!(
            Hasher::from_state(&broken).is_err(),
            "the tail must match the length"
        );
    }

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut h = Algorithm::Sha256.hasher();
        for chunk in data.chunks(777) {
            h.update(chunk);
        }
        assert_eq!(h.finish(), Digest::sha256_of(&data));
    }
}
