//! A bucket: one disk page of small entries, so that entries of a few hundred bytes do not take
//! a 4 KiB page each (foyer's block engine aligns every entry it stores to a page).
//!
//! The disk tier hashes a small entry's key to one of its buckets (set-associative, as
//! CacheLib's small-object cache does) and stores the bucket as one page of its pages file
//! ([`super::pages`]), rewritten in place when an entry of it changes. A full bucket makes room by dropping its least popular
//! entries (by the admission sketch's counts; the oldest among equals), so a key read often
//! stays on disk even when its neighbours churn.
//!
//! The encoding: a version byte, then per entry its key length (u16), key, value length (u16)
//! and value, oldest first. A bucket that does not decode is empty (and counted as a read
//! error by the tier).

/// The encoding's version: a bucket of another version reads as empty.
const VERSION: u8 = 1;

/// Bytes a bucket's encoding may take: a page less the page's header.
pub const BUCKET_BYTES: usize = super::DISK_PAGE as usize - super::pages::PAGE_HEADER;

/// The largest entry (key and value) kept in a bucket: a quarter of it, so a bucket holds at
/// least four. Larger entries are stored on their own.
pub const SMALL_ENTRY_BYTES: usize = BUCKET_BYTES / 4;

/// Framing bytes per entry: the two lengths.
const FRAMING: usize = 4;

/// The entries of one bucket, oldest first.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Bucket {
    entries: Vec<(String, Vec<u8>)>,
}

/// Whether an entry of `key` and `value` is small enough for a bucket.
pub fn is_small(key: &str, value_len: usize) -> bool {
    key.len() + value_len + FRAMING <= SMALL_ENTRY_BYTES
}

impl Bucket {
    /// The bucket `bytes` encode; empty when they do not decode (`None`).
    pub fn decode(bytes: &[u8]) -> Option<Bucket> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let mut entries = Vec::new();
        while !rest.is_empty() {
            let (key, r) = take(rest)?;
            let (value, r) = take(r)?;
            entries.push((String::from_utf8(key.to_vec()).ok()?, value.to_vec()));
            rest = r;
        }
        Some(Bucket { entries })
    }

    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(VERSION);
        for (key, value) in &self.entries {
            out.extend_from_slice(&(key.len() as u16).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(&(value.len() as u16).to_le_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    fn encoded_len(&self) -> usize {
        1 + self
            .entries
            .iter()
            .map(|(k, v)| k.len() + v.len() + FRAMING)
            .sum::<usize>()
    }

    /// The value kept for `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The keys it holds.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Whether the bucket holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an entry of `key` and a value of `value_len` bytes fits without pushing
    /// another entry out (in place of `key`'s own, if it has one).
    pub fn has_room(&self, key: &str, value_len: usize) -> bool {
        let own = self
            .entries
            .iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(k, v)| k.len() + v.len() + FRAMING);
        self.encoded_len() - own + key.len() + value_len + FRAMING <= BUCKET_BYTES
    }

    /// Removes `key`'s entry and hands back its value.
    pub fn take(&mut self, key: &str) -> Option<Vec<u8>> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// Removes `key`'s entry; whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        self.entries.len() != before
    }

    /// Puts `key`'s entry (replacing the one it had) as the newest, then drops the least
    /// popular others (by `popularity`, the oldest first among equals) until the bucket fits.
    /// `key` must be small ([`is_small`]). Returns how many entries were dropped.
    pub fn insert(&mut self, key: &str, value: Vec<u8>, popularity: impl Fn(&str) -> u8) -> usize {
        self.remove(key);
        self.entries.push((key.to_owned(), value));
        let mut dropped = 0;
        while self.encoded_len() > BUCKET_BYTES && self.entries.len() > 1 {
            let others = &self.entries[..self.entries.len() - 1];
            let victim = (0..others.len())
                .min_by_key(|&i| popularity(&others[i].0))
                .unwrap_or(0);
            self.entries.remove(victim);
            dropped += 1;
        }
        dropped
    }
}

/// The value `bytes` (a bucket's encoding) hold for `key`, found without decoding the rest:
/// what a disk hit reads. `None` also when the bucket does not decode as far as the key.
pub fn find<'a>(bytes: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let (&version, mut rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    while !rest.is_empty() {
        let (k, r) = take(rest)?;
        let (value, r) = take(r)?;
        if k == key.as_bytes() {
            return Some(value);
        }
        rest = r;
    }
    None
}

/// A u16-length-prefixed slice and what follows it.
fn take(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<2>()?;
    let len = u16::from_le_bytes(*len) as usize;
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut b = Bucket::default();
        b.insert("a", b"one".to_vec(), |_| 0);
        b.insert("b", vec![7; 300], |_| 0);
        b.insert("a", b"two".to_vec(), |_| 0);
        let back = Bucket::decode(&b.encode()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.get("a"), Some(&b"two"[..]));
        assert_eq!(back.get("c"), None);
        assert_eq!(find(&b.encode(), "a"), Some(&b"two"[..]));
        assert_eq!(find(&b.encode(), "b").map(<[u8]>::len), Some(300));
        assert_eq!(find(&b.encode(), "c"), None);
        let mut bytes = b.encode();
        bytes.truncate(bytes.len() - 1);
        assert_eq!(Bucket::decode(&bytes), None);
        assert_eq!(Bucket::decode(&[9, 0, 0]), None);
        assert_eq!(Bucket::decode(&[]), None);
    }

    #[test]
    fn a_full_bucket_drops_its_least_popular_entries_first() {
        let mut b = Bucket::default();
        let value = vec![0; SMALL_ENTRY_BYTES - 10];
        // "hot" is the oldest but the most popular: the other old ones go first.
        for key in ["hot", "k1", "k2", "k3"] {
            assert_eq!(
                b.insert(key, value.clone(), |k| if k == "hot" { 9 } else { 1 }),
                0
            );
        }
        assert_eq!(
            b.insert("k4", value.clone(), |k| if k == "hot" { 9 } else { 1 }),
            1
        );
        assert!(b.get("hot").is_some() && b.get("k1").is_none() && b.get("k4").is_some());
        assert!(b.encode().len() <= BUCKET_BYTES);
        assert!(is_small("k", SMALL_ENTRY_BYTES - 5) && !is_small("k", SMALL_ENTRY_BYTES - 4));
    }
}
