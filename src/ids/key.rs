//! Ids as hash-map keys, and the hasher for them.
//!
//! Replaying millions of changes is mostly hash-map work on ids (is this song
//! in this playlist, which playlist is this). Two things make that fast:
//!
//! - [`IdKey`] packs an id of up to 15 bytes (nearly all ids) into an integer
//!   with its length, so a key needs no allocation and comparing keys reads no
//!   memory outside the table (a `String` or `&str` key costs a pointer chase,
//!   a likely cache miss, at every probe);
//! - [`FxMap`] hashes with FxHash (one multiply per word, as rustc does) and a
//!   final mix, instead of the standard library's DoS-resistant SipHash: the
//!   inputs are the user's own files, and the mix keeps ids that differ only in
//!   their last bytes from sharing buckets.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::json;

/// See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IdKey<'a> {
    Packed(u128),
    Long(Cow<'a, str>),
}

impl<'a> IdKey<'a> {
    /// The key of id text `text`.
    pub fn of(text: Cow<'a, str>) -> IdKey<'a> {
        match pack(text.as_bytes()) {
            Some(packed) => IdKey::Packed(packed),
            None => IdKey::Long(text),
        }
    }

    /// The key of the raw id token `raw` (a JSON string or integer that the
    /// scanner validated): a string without escapes, or an integer, is packed
    /// straight from the token, without decoding.
    pub fn raw(raw: &'a [u8]) -> IdKey<'a> {
        let inner = match raw {
            [b'"', inner @ .., b'"'] => inner,
            [b'-' | b'0'..=b'9', ..] => raw,
            _ => return IdKey::of(json::id_text(raw).unwrap_or_default()),
        };
        // Packed in one pass that also looks for escapes (a byte loop: the
        // ids are short, and a call to memchr or memcpy per id cost more).
        if inner.len() < 16 {
            let mut packed = (inner.len() as u128) << 120;
            let mut escaped = false;
            for (i, &b) in inner.iter().enumerate() {
                escaped |= b == b'\\';
                packed |= u128::from(b) << (8 * i);
            }
            if !escaped {
                return IdKey::Packed(packed);
            }
        }
        IdKey::of(json::id_text(raw).unwrap_or_default())
    }

    /// The key of `raw`, owning its text: for maps that outlive the text (a
    /// long id then costs an allocation, a packed one nothing).
    pub fn owned(raw: &[u8]) -> IdKey<'static> {
        IdKey::raw(raw).into_owned()
    }

    /// The same key, owning its text.
    pub fn into_owned(self) -> IdKey<'static> {
        match self {
            IdKey::Packed(p) => IdKey::Packed(p),
            IdKey::Long(text) => IdKey::Long(Cow::Owned(text.into_owned())),
        }
    }
}

fn pack(bytes: &[u8]) -> Option<u128> {
    if bytes.len() >= 16 {
        return None;
    }
    let mut packed = [0u8; 16];
    packed[..bytes.len()].copy_from_slice(bytes);
    packed[15] = bytes.len() as u8;
    Some(u128::from_le_bytes(packed))
}

/// FxHash with a final mix (see the module docs).
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u8(&mut self, b: u8) {
        self.write(&[b]);
    }

    fn finish(&self) -> u64 {
        // A multiply only carries upwards: without this mix, the low bits that
        // pick a bucket would depend on a key's first bytes alone.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
}

/// A hash map with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A hash set with [`FxHasher`].
pub type FxSet<K> = std::collections::HashSet<K, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_and_an_integer_with_the_same_text_are_one_key() {
        assert_eq!(IdKey::raw(b"\"7\""), IdKey::raw(b"7"));
        assert_eq!(IdKey::raw(b"\"\\u0037\""), IdKey::raw(b"7"));
        assert_ne!(IdKey::raw(b"\"7\""), IdKey::raw(b"\"70\""));
        // Lengths are part of the key: trailing NULs do not collide.
        assert_ne!(IdKey::raw(b"\"a\""), IdKey::raw(b"\"a\\u0000\""));
        let long = b"\"1234567890123456\"";
        assert_eq!(IdKey::raw(long), IdKey::of("1234567890123456".into()));
        assert!(matches!(IdKey::raw(long), IdKey::Long(_)));
    }

    /// A key packed straight from the token is the key of its decoded text,
    /// for every length around the packing limit, escaped or not.
    #[test]
    fn a_token_packs_as_its_text() {
        for len in 0..20 {
            let text: String = (0..len).map(|i| char::from(b'a' + i as u8 % 26)).collect();
            let digits: String = (0..len.max(1))
                .map(|i| char::from(b'1' + i as u8 % 9))
                .collect();
            let mut tokens = vec![
                format!("\"{text}\""),
                digits.clone(),
                format!("\"{digits}\""),
            ];
            if len > 0 {
                tokens.push(format!("\"\\u0041{}\"", &text[1..]));
                tokens.push(format!("\"{}\\n\"", &text[1..]));
            }
            for token in tokens {
                let decoded = json::id_text(token.as_bytes()).unwrap();
                assert_eq!(IdKey::raw(token.as_bytes()), IdKey::of(decoded), "{token}");
            }
        }
    }

    #[test]
    fn ids_that_differ_late_spread_over_buckets() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let build = BuildHasherDefault::<FxHasher>::default();
        let low_bits: std::collections::HashSet<u64> = (0..1000)
            .map(|i| build.hash_one(IdKey::of(format!("1000{i:03}").into())) & 1023)
            .collect();
        assert!(low_bits.len() > 500, "{}", low_bits.len());
    }
}
