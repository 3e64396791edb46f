//! A span's stored attributes: keys and JSON-encoded values in one text buffer, in insertion
//! order, behaving as the Python dict MLflow keeps them in.
//!
//! An `IndexMap` of compact strings spent a hash table, an entry vector and a heap block for
//! every long value on each span, and hashed every key it was asked for: a fifth of the
//! instructions of normalization. Here a span's attributes take two allocations, a lookup scans
//! a few dozen entries comparing lengths first, and a value can be shared by two keys (MLflow
//! copies a convention's input messages into `mlflow.spanInputs`) without being copied.
//!
//! Text is only ever appended: replacing a value writes the new one at the end and leaves the
//! old bytes unused, so a range handed out stays valid while the map lives. A map that grows past
//! a few dozen entries also gets a hash index, so that a span with thousands of attributes costs
//! linear time to build and constant time to probe.

use std::fmt;

use hashbrown::HashTable;
use serde::ser::{Serialize, SerializeMap, Serializer};

/// From this many entries on, keys are found through a hash index rather than by a scan.
const SCAN_LIMIT: usize = 32;

/// Stored span attributes: key → JSON-encoded value, in MLflow's insertion order.
#[derive(Clone, Default)]
pub struct Attributes {
    text: String,
    entries: Vec<Entry>,
    /// Entry indexes by key hash, once there are [`SCAN_LIMIT`] entries.
    index: Option<HashTable<usize>>,
    /// The [`filter_bit`]s of the keys added: a key whose bit is clear is absent, found so
    /// without a scan (most lookups, and the check for a repeated key on every insert, miss).
    /// A removed key's bit may stay set.
    filter: u64,
}

/// Where one attribute's key and value sit in the text.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: Slice,
    value: Slice,
}

#[derive(Clone, Copy, Debug)]
struct Slice {
    start: usize,
    len: usize,
}

/// What [`Attributes::rewrite`] does with one attribute.
#[derive(Debug)]
pub enum Rewrite {
    /// Leaves it as it is.
    Keep,
    /// Removes it.
    Drop,
    /// Stores this value instead, in the same position.
    Replace(String),
}

impl Attributes {
    /// An empty map with room for `entries` attributes of `text` bytes of keys and values.
    pub fn with_capacity(entries: usize, text: usize) -> Self {
        Self {
            text: String::with_capacity(text),
            entries: Vec::with_capacity(entries),
            index: None,
            filter: 0,
        }
    }

    /// A map of `pairs`; a repeated key keeps its first position and its last value, as a
    /// Python dict built from them does.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        let mut map = Self::default();
        for (key, value) in pairs {
            map.insert(key.as_ref(), value.as_ref());
        }
        map
    }

    /// The number of attributes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The index of `key`.
    pub fn position(&self, key: &str) -> Option<usize> {
        if self.filter & filter_bit(key.as_bytes()) == 0 {
            return None;
        }
        // Lengths first: a span's keys mostly differ in length, and hashing the key cost more
        // than the scan it would save.
        let same = |e: &Entry| e.key.len == key.len() && self.bytes(e.key) == key.as_bytes();
        match &self.index {
            Some(index) => index
                .find(hash(key.as_bytes()), |&i| same(&self.entries[i]))
                .copied(),
            None => self.entries.iter().position(same),
        }
    }

    /// The stored value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).map(|i| self.value(i))
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// The stored value of the attribute at `index`.
    ///
    /// # Panics
    /// If `index` is out of bounds.
    pub fn value(&self, index: usize) -> &str {
        self.slice(self.entries[index].value)
    }

    /// Sets `key` to `value`: in place when present, else last.
    pub fn insert(&mut self, key: &str, value: &str) {
        self.insert_with(key, |text| text.push_str(value));
    }

    /// Sets `key` to the value that `write` appends to the text, without an intermediate copy:
    /// in place when present, else last.
    pub fn insert_with(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        let value = self.append_with(write);
        match self.position(key) {
            Some(i) => self.entries[i].value = value,
            None => {
                let key = self.append(key);
                self.push_entry(Entry { key, value });
            }
        }
    }

    /// Adds `key` last, without looking for it: `key` must be absent.
    pub fn push(&mut self, key: &str, value: &str) {
        self.push_with(key, |text| text.push_str(value));
    }

    /// Adds `key` last with the value that `write` appends to the text, without looking for
    /// the key: `key` must be absent.
    pub fn push_with(&mut self, key: &str, write: impl FnOnce(&mut String)) {
        debug_assert!(!self.contains_key(key), "{key} is already present");
        let key = self.append(key);
        let value = self.append_with(write);
        self.push_entry(Entry { key, value });
    }

    /// Adds `key` last with the value of the attribute at `index`, which is shared, not copied.
    /// `key` must be absent.
    ///
    /// # Panics
    /// If `index` is out of bounds.
    pub fn push_copy_of(&mut self, key: &str, index: usize) {
        debug_assert!(!self.contains_key(key), "{key} is already present");
        let value = self.entries[index].value;
        let key = self.append(key);
        self.push_entry(Entry { key, value });
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| self.slice(e.key))
    }

    /// The keys and values, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (self.slice(e.key), self.slice(e.value)))
    }

    /// Keeps, drops or replaces each attribute as `f` decides from its key and stored value;
    /// returns how many were dropped or replaced.
    pub fn rewrite(&mut self, mut f: impl FnMut(&str, &str) -> Rewrite) -> usize {
        let mut changed = 0;
        let mut kept = Vec::with_capacity(self.entries.len());
        for i in 0..self.entries.len() {
            let entry = self.entries[i];
            match f(self.slice(entry.key), self.slice(entry.value)) {
                Rewrite::Keep => kept.push(entry),
                Rewrite::Drop => changed += 1,
                Rewrite::Replace(value) => {
                    let value = self.append(&value);
                    kept.push(Entry { value, ..entry });
                    changed += 1;
                }
            }
        }
        self.entries = kept;
        self.index = None;
        self.reindex();
        changed
    }

    fn push_entry(&mut self, entry: Entry) {
        self.filter |= filter_bit(self.bytes(entry.key));
        self.entries.push(entry);
        let i = self.entries.len() - 1;
        match &mut self.index {
            Some(index) => {
                let key_hash = |&j: &usize| hash(bytes(&self.text, self.entries[j].key));
                index.insert_unique(key_hash(&i), i, key_hash);
            }
            None if self.entries.len() >= SCAN_LIMIT => self.reindex(),
            None => {}
        }
    }

    /// Builds the hash index once the map has [`SCAN_LIMIT`] entries.
    fn reindex(&mut self) {
        if self.index.is_some() || self.entries.len() < SCAN_LIMIT {
            return;
        }
        let key_hash = |&j: &usize| hash(bytes(&self.text, self.entries[j].key));
        let mut index = HashTable::with_capacity(self.entries.len() * 2);
        for i in 0..self.entries.len() {
            index.insert_unique(key_hash(&i), i, key_hash);
        }
        self.index = Some(index);
    }

    fn append(&mut self, s: &str) -> Slice {
        self.append_with(|text| text.push_str(s))
    }

    /// The slice of what `write` appends to the text.
    fn append_with(&mut self, write: impl FnOnce(&mut String)) -> Slice {
        let start = self.text.len();
        write(&mut self.text);
        Slice {
            start,
            len: self.text.len() - start,
        }
    }

    fn slice(&self, s: Slice) -> &str {
        // Slices are made by `append`, so they fall on the character boundaries of whole strings.
        &self.text[s.start..s.start + s.len]
    }

    fn bytes(&self, s: Slice) -> &[u8] {
        bytes(&self.text, s)
    }
}

fn bytes(text: &str, s: Slice) -> &[u8] {
    &text.as_bytes()[s.start..s.start + s.len]
}

/// One of 64 bits for a key, from its length and last byte, which tell a span's keys apart far
/// more often than their shared prefixes (`gen_ai.`, `mlflow.`) do.
fn filter_bit(key: &[u8]) -> u64 {
    let last = u32::from(key.last().copied().unwrap_or(0));
    // Truncating the length is harmless: the bit only has to be the same for equal keys.
    1 << (((key.len() as u32).wrapping_mul(7) ^ last) % 64)
}

fn hash(key: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        Self::from_pairs(pairs)
    }
}

/// The stored value of a key that is present, as a dict subscript reads it.
impl std::ops::Index<&str> for Attributes {
    type Output = str;

    /// # Panics
    /// If `key` is absent.
    fn index(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("no attribute {key:?}"))
    }
}

/// Equal when they hold the same keys with the same values, in any order, as dicts compare.
impl PartialEq for Attributes {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl fmt::Debug for Attributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn behaves_as_an_insertion_ordered_dict() {
        let mut a = Attributes::with_capacity(4, 64);
        a.insert("b", "1");
        a.insert("a", "\"x\"");
        a.insert("b", "2");
        assert_eq!(a.iter().collect::<Vec<_>>(), [("b", "2"), ("a", "\"x\"")]);
        assert_eq!(a.get("a"), Some("\"x\""));
        assert_eq!(a.get("c"), None);
        assert!(a.contains_key("b") && !a.contains_key("bb"));
        a.push_copy_of("c", 1);
        assert_eq!(a.get("c"), Some("\"x\""));
        // Replacing the shared value of one key leaves the other's.
        a.insert("a", "3");
        assert_eq!((a.get("a"), a.get("c")), (Some("3"), Some("\"x\"")));
        a.push("d", "4");
        assert_eq!(a.keys().collect::<Vec<_>>(), ["b", "a", "c", "d"]);
        assert_eq!(a.get("d"), Some("4"));
    }

    #[test]
    fn rewrite_keeps_order_and_counts_changes() {
        let mut a: Attributes = [("k1", "1"), ("secret", "2"), ("k3", "3"), ("drop", "4")]
            .into_iter()
            .collect();
        let changed = a.rewrite(|k, v| match k {
            "secret" => Rewrite::Replace(format!("\"<{v}>\"")),
            "drop" => Rewrite::Drop,
            _ => Rewrite::Keep,
        });
        assert_eq!(changed, 2);
        let pairs: Vec<_> = a.iter().collect();
        assert_eq!(pairs, [("k1", "1"), ("secret", "\"<2>\""), ("k3", "3")]);
    }

    #[test]
    fn equality_and_serialization_are_a_dicts() {
        let a: Attributes = [("x", "1"), ("y", "2")].into_iter().collect();
        let b: Attributes = [("y", "2"), ("x", "1")].into_iter().collect();
        assert_eq!(a, b);
        assert_ne!(a, [("x", "1")].into_iter().collect());
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"x":"1","y":"2"}"#);
        assert_eq!(format!("{a:?}"), r#"{"x": "1", "y": "2"}"#);
    }

    fn same(
        map: &Attributes,
        expected: &indexmap::IndexMap<String, String>,
    ) -> Result<(), TestCaseError> {
        let got: Vec<(&str, &str)> = map.iter().collect();
        let want: Vec<(&str, &str)> = expected.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        prop_assert_eq!(got, want);
        for (k, v) in expected {
            prop_assert_eq!(map.get(k), Some(&v[..]));
        }
        prop_assert_eq!(map.get("absent"), None);
        Ok(())
    }

    proptest! {
        /// Built from pairs, below and above the size where keys are found by hashing, and then
        /// rewritten, the map holds what an `IndexMap` (a Python dict) does.
        #[test]
        fn from_pairs_matches_a_dict(
            pairs in proptest::collection::vec(("[a-z][a-f]?", "[0-9]{0,3}"), 0..120),
        ) {
            let mut expected = indexmap::IndexMap::new();
            for (k, v) in &pairs {
                expected.insert(k.clone(), v.clone());
            }
            let mut map = Attributes::from_pairs(pairs.iter().map(|(k, v)| (k, v)));
            same(&map, &expected)?;
            map.rewrite(|k, v| match k.as_bytes()[0] {
                b'a'..=b'h' => Rewrite::Drop,
                b'i'..=b'p' => Rewrite::Replace(format!("{v}!")),
                _ => Rewrite::Keep,
            });
            expected.retain(|k, _| k.as_bytes()[0] > b'h');
            for (k, v) in expected.iter_mut() {
                if k.as_bytes()[0] <= b'p' {
                    v.push('!');
                }
            }
            same(&map, &expected)?;
            for (k, _) in &pairs {
                prop_assert_eq!(map.get(k).is_some(), expected.contains_key(k), "{}", k);
            }
            map.insert("new", "1");
            expected.insert("new".into(), "1".into());
            same(&map, &expected)?;
        }
    }
}
