//! The hash map the state's indexes use: std's map with a faster hasher than SipHash.
//!
//! Its keys are ids and channel names, short texts hashed on every command; SipHash was a
//! visible share of a routing decision. foldhash is seeded per process, so keys chosen by a
//! client still cannot be aimed at one bucket in advance.

pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
