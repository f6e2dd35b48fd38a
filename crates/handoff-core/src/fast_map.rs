//! The hash maps the state's indexes use: std's map with a faster hasher than SipHash, and a
//! variant that still iterates in key order.
//!
//! Its keys are ids and channel names, short texts hashed on every command; SipHash was a
//! visible share of a routing decision. foldhash is seeded per process, so keys chosen by a
//! client still cannot be aimed at one bucket in advance.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hash};
use std::ops::Index;
use std::sync::atomic::{AtomicBool, Ordering};

pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;

/// Set once by `fix_hash_seeds`; read when a map is made, never when it hashes.
static FIXED_SEEDS: AtomicBool = AtomicBool::new(false);

/// Makes every map made from now on hash with the same fixed seeds, in this process and in
/// every run of it. Only for the instruction-count benchmarks (`crates/handoff/benches`): with
/// random seeds the probes of a hash table, and so the instructions a lookup takes, change from
/// run to run. A server must never call it: with seeds anyone can know, keys chosen by a
/// client could be aimed at one bucket.
pub fn fix_hash_seeds() {
    FIXED_SEEDS.store(true, Ordering::Relaxed);
}

/// The hasher of `FastMap`: foldhash, seeded at random per map unless `fix_hash_seeds` ran.
#[derive(Clone, Debug)]
pub struct FastState(foldhash::fast::SeedableRandomState);

impl Default for FastState {
    fn default() -> Self {
        FastState(if FIXED_SEEDS.load(Ordering::Relaxed) {
            foldhash::fast::SeedableRandomState::fixed()
        } else {
            foldhash::fast::SeedableRandomState::random()
        })
    }
}

impl BuildHasher for FastState {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline(always)]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A hash map for lookups that iterates in key order, for the agents and the queues: a routing
/// decision looks them up a dozen times, and a B-tree of 10,000 ids costs about fourteen text
/// comparisons a lookup, while listings and recomputations must still come out sorted. The
/// order is a second set of the keys, changed only when an entry comes or goes, which is rare.
#[derive(Debug, Clone)]
pub struct OrderedFastMap<K, V> {
    entries: FastMap<K, V>,
    order: BTreeSet<K>,
}

impl<K, V> Default for OrderedFastMap<K, V> {
    fn default() -> Self {
        OrderedFastMap {
            entries: FastMap::default(),
            order: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Hash + Clone, V> OrderedFastMap<K, V> {
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_mut(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.contains_key(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let previous = self.entries.insert(key.clone(), value);
        if previous.is_none() {
            self.order.insert(key);
        }
        previous
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + Ord + ?Sized,
    {
        let removed = self.entries.remove(key)?;
        self.order.remove(key);
        Some(removed)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + Clone {
        self.order.iter()
    }

    /// The values, in the order of their keys.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.order.iter().map(|key| &self.entries[key])
    }
}

impl<K, Q, V> Index<&Q> for OrderedFastMap<K, V>
where
    K: Ord + Hash + Clone + Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("no entry for this key")
    }
}

#[cfg(test)]
mod tests {
    use super::OrderedFastMap;

    #[test]
    fn lookups_find_what_was_inserted_and_iteration_follows_key_order() {
        let mut map = OrderedFastMap::default();
        for key in ["m", "c", "x", "a"] {
            assert_eq!(map.insert(key.to_owned(), key.len()), None);
        }
        assert_eq!(map.insert("c".to_owned(), 7), Some(1));
        assert_eq!(map.remove("x"), Some(1));
        assert_eq!(map.remove("x"), None);
        assert_eq!(map.get("c"), Some(&7));
        assert!(!map.contains_key("x"));
        assert_eq!(
            map.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "c", "m"]
        );
        assert_eq!(map.values().copied().collect::<Vec<_>>(), [1, 7, 1]);
        *map.get_mut("a").unwrap() = 3;
        assert_eq!(map["a"], 3);
        assert_eq!(map.values().copied().collect::<Vec<_>>(), [3, 7, 1]);
    }
}
